//! Test support: packets as a client reads them. The session has one
//! PUBLISH builder, the encoder behind `poll_transmit`; tests that want
//! packets decode what it writes, one packet at a time.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Instant;

use bytes::BytesMut;
use shardmq_core::buffer::Lease;
use shardmq_core::codec::{decode_packet, Packet};
use shardmq_core::session::Connection;

pub trait PollPacket {
    /// The next packet the connection would send, decoded, with the
    /// shard's buffer lent through `lease`.
    fn poll_packet(&mut self, now: Instant, lease: &mut Lease<'_>) -> Option<Packet>;
}

impl PollPacket for Connection {
    fn poll_packet(&mut self, now: Instant, lease: &mut Lease<'_>) -> Option<Packet> {
        // A budget of one byte writes exactly one packet.
        let mut buf = BytesMut::new();
        self.poll_transmit(now, &mut buf, 1, lease);
        if buf.is_empty() {
            return None;
        }
        let packet = decode_packet(&mut buf, self.protocol_version(), u32::MAX)
            .unwrap()
            .expect("a whole packet");
        assert!(buf.is_empty(), "one packet per poll");
        Some(packet)
    }
}
