//! What comes in on a connection: socket bytes into packets (the inbox),
//! and the bounds on what a peer can make the shard hold while it does:
//! a small packet limit until the CONNECT is accepted (`CONNECT_SIZE_MAX`),
//! and a shard-wide budget for packets not yet whole.

use std::time::Instant;

use bytestring::ByteString;

use super::{Conn, ConnId, Flow, Notice, Shard};
use crate::buffer::Store;
use crate::codec::{Decoder, Inbox, ReasonCode};
use crate::limits::CONNECT_SIZE_MAX;
use crate::session::Connection;

/// Bytes of partial packets a connection holds without drawing on the
/// shard's budget for them (`ShardConfig::partial_bytes_max`): one read
/// chunk, which is all a connection sending whole small packets holds.
pub const PARTIAL_BYTES_FREE: u64 = 16 * 1024;

impl<S: Store> Shard<S> {
    /// A new network connection, waiting for CONNECT.
    pub fn accept(&mut self, now: Instant) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.stats.connections += 1;
        let limits = self.config.limits.clone();
        // Until the CONNECT is accepted, an unauthenticated peer may send
        // only a CONNECT-sized packet (docs/SECURITY.md).
        let connect_max = limits.packet_size_max.get().min(CONNECT_SIZE_MAX);
        self.conns.insert(
            id,
            Conn {
                machine: Connection::new(now, limits),
                inbox: Inbox::new(Decoder::new(connect_max)),
                partial: 0,
                session: None,
                hold: 0,
                durable_hold: 0,
                superseded: false,
                queue_opt_in: false,
                admission: None,
                principal: None,
                client_id: ByteString::new(),
                assigned: false,
                clean_start: true,
                buffer_owner: 0,
                woken: false,
                gathered: 0,
                closing: false,
                retained_wait: None,
            },
        );
        id
    }

    /// Bytes read from the connection: every whole packet is handled; a
    /// partial one waits for the next read.
    pub fn handle_input(&mut self, conn: ConnId, now: Instant, bytes: &[u8]) -> Flow {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inbox.push(bytes);
        }
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return Flow::Stop;
            };
            if c.machine.is_closed() {
                break;
            }
            // PERF: the 4-byte acknowledgements a draining subscriber sends
            // for every message skip building a `Packet` and its match.
            if let Some(ack) = c.inbox.decode_ack() {
                c.machine.handle_short_ack(now, ack);
            } else {
                match c.inbox.decode() {
                    Ok(Some(packet)) => c.machine.handle_packet(now, packet),
                    Ok(None) => break,
                    Err(e) => {
                        let version = c.inbox.decoder().version();
                        c.machine.handle_decode_error(&e, version);
                    }
                }
            }
            // PERF: acknowledgements raise no event; skip the call.
            if c.machine.has_events() || c.machine.is_closed() {
                self.process_events(conn, now);
            }
            self.wake(conn);
        }
        // The client's acknowledgements end persisted messages.
        self.log_conn_queue(conn);
        let held = self.conns.get(&conn).map_or(0, |c| c.inbox.partial_len());
        self.hold_partial(conn, held as u64, now);
        self.flow(conn)
    }

    /// The CONNECT is accepted: the peer may now send packets up to the
    /// broker's maximum packet size.
    pub(super) fn lift_connect_limit(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inbox
                .set_max_packet_size(self.config.limits.packet_size_max.get());
        }
    }

    /// A connection now holds `held` bytes of partial packets. What is past
    /// `PARTIAL_BYTES_FREE` is charged to the shard; past the shard's
    /// budget, the connections holding the most are closed (this one
    /// included) until it is met. Closing, not waiting: connections waiting
    /// for each other's budget would wait forever, and a partial packet
    /// only ever completes by reading more of it.
    fn hold_partial(&mut self, conn: ConnId, held: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let charge = held.saturating_sub(PARTIAL_BYTES_FREE);
        self.partial_bytes = self.partial_bytes - c.partial + charge;
        c.partial = charge;
        let max = self.config.partial_bytes_max;
        if self.partial_bytes <= max {
            return;
        }
        let mut holders: Vec<(u64, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.partial > 0)
            .map(|(id, c)| (c.partial, *id))
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (bytes, victim) in holders {
            if self.partial_bytes <= max {
                break;
            }
            let Some(c) = self.conns.get_mut(&victim) else {
                continue;
            };
            // Its bytes stop counting now; the runtime drops them with
            // the connection.
            c.partial = 0;
            self.partial_bytes -= bytes;
            self.stats.closed_partial += 1;
            c.machine.close(ReasonCode::QuotaExceeded);
            let client_id = c.machine.client_id().cloned().unwrap_or_default();
            self.notice(Notice::PartialPacketClosed {
                conn: victim,
                client_id,
                bytes: bytes + PARTIAL_BYTES_FREE,
                shard_max: max,
            });
            self.process_events(victim, now);
            self.wake(victim);
        }
    }
}
