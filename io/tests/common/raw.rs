//! A v5 client on raw TCP with a small receive buffer, for tests of
//! clients that stop reading, read slowly or stop mid-packet, and the
//! codec helpers they use.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use shardmq_core::codec::{
    decode_packet, encode, Connect, Packet, PacketId, Props, ProtocolVersion, QoS, ReasonCode,
    RetainHandling, Subscribe, SubscriptionOptions,
};

use super::WAIT;

/// A v5 client on raw TCP (or TLS over it), for clients that stop reading
/// or stop mid-packet.
pub struct Raw<S: Read + Write = TcpStream> {
    pub stream: S,
    buf: BytesMut,
}

/// A TCP connection to the broker with a small receive buffer, so a client
/// that stops reading pushes back at once instead of into megabytes of
/// kernel buffers.
pub fn small_buffer_socket(port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

impl Raw {
    /// Connects (clean start) over a small-buffer socket.
    pub fn connect(port: u16, id: &str) -> Raw {
        Raw::over(small_buffer_socket(port), id)
    }

    /// A subscriber that subscribes, then never reads again.
    pub fn stuck_subscriber(port: u16, id: &str, filter: &str, qos: QoS) -> Raw {
        Raw::connect(port, id).subscribed(filter, qos)
    }
}

impl<S: Read + Write> Raw<S> {
    /// Connects (clean start) over `stream`.
    pub fn over(stream: S, id: &str) -> Raw<S> {
        Raw::over_with_keep_alive(stream, id, 60)
    }

    /// Connects (clean start) over `stream`, asking for `keep_alive` seconds.
    pub fn over_with_keep_alive(stream: S, id: &str, keep_alive: u16) -> Raw<S> {
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.send(&Packet::Connect(Box::new(Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive,
            properties: Props::default(),
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })));
        match raw.recv() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    /// Subscribes to `filter` and waits for the SUBACK.
    pub fn subscribed(mut self, filter: &str, qos: QoS) -> Raw<S> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: Props::default(),
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            )],
        }));
        match self.recv() {
            Some(Packet::SubAck(_)) => self,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, p: &Packet) {
        self.write(&wire(p));
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// The next packet; `None` once the broker closed the connection.
    pub fn recv(&mut self) -> Option<Packet> {
        recv(&mut self.stream, &mut self.buf)
    }
}

/// The next packet from any byte stream (raw TCP, or TLS over it); `None`
/// once the peer closed it.
pub fn recv(stream: &mut impl Read, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        if let Some(p) = decode_packet(buf, ProtocolVersion::V5, 1 << 20).unwrap() {
            return Some(p);
        }
        let mut chunk = [0u8; 4096];
        match super::read_some(stream, &mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

pub fn wire(p: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, ProtocolVersion::V5, &mut out).unwrap();
    out.to_vec()
}
