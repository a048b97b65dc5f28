//! One publisher: sends stamped messages on its topic on the open-loop
//! schedule (or as fast as its inflight window allows), runs the QoS 1/2
//! acknowledgement flows (§4.3.2, §4.3.3) and reports what it sent and
//! which of those the broker never confirmed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use shardmq_core::codec::{
    encode_publish, Packet, PacketId, Props, PubResponse, Publish, QoS, ReasonCode,
};

use super::{ClientError, Conn, Timer, Wake};
use crate::ctx::{Counters, RunCtx};
use crate::payload::{self, Stamp};
use crate::spec::StampMode;

/// Stop encoding new messages once this much is queued for the socket.
const WBUF_HIGH: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// QoS 1 PUBLISH sent.
    Ack,
    /// QoS 2 PUBLISH sent.
    Rec,
    /// PUBREL sent.
    Comp,
}

enum Produce {
    /// The schedule has passed the end of the measured window.
    Done,
    /// The next message is due at this time (ns since the epoch).
    At(u64),
    Blocked,
}

#[derive(Debug, Default)]
pub struct PubOutcome {
    pub id: u32,
    pub sent: u64,
    pub acked: u64,
    pub sent_in_window: u64,
    pub acked_in_window: u64,
    /// Sequence numbers sent but never confirmed (QoS 1/2): a broker may
    /// legitimately lose these, so they are not counted as lost.
    pub unconfirmed: Vec<u64>,
    pub error: Option<String>,
}

struct Publisher<'a> {
    ctx: &'a RunCtx,
    topic: ByteString,
    id: u32,
    seq: u64,
    /// Where this publisher's schedule starts within the first interval.
    phase_ns: u64,
    next_pid: u16,
    inflight: HashMap<u16, (u64, Awaiting)>,
    window: usize,
    arena: BytesMut,
    out: PubOutcome,
}

impl Publisher<'_> {
    fn alloc_pid(&mut self) -> Option<PacketId> {
        // INVARIANT: inflight.len() < window <= 65535, so a free id exists.
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pid) {
                return PacketId::new(self.next_pid);
            }
        }
    }

    /// Queues every message that is due.
    fn produce(&mut self, conn: &mut Conn, now_ns: u64) -> Result<Produce, ClientError> {
        let ctx = self.ctx;
        while conn.wbuf.len() < WBUF_HIGH
            && (ctx.qos == QoS::AtMostOnce || self.inflight.len() < self.window)
        {
            let scheduled = match ctx.interval_ns {
                Some(iv) => ctx.start_ns + self.phase_ns + self.seq * iv,
                None => now_ns,
            };
            if scheduled >= ctx.stop_ns {
                return Ok(Produce::Done);
            }
            if scheduled > now_ns {
                return Ok(Produce::At(scheduled));
            }
            let sent_ns = match ctx.stamp {
                StampMode::Scheduled => scheduled,
                StampMode::Actual => now_ns,
            };
            payload::write(
                &mut self.arena,
                Stamp {
                    sent_ns,
                    publisher: self.id,
                    seq: self.seq,
                },
                ctx.payload_bytes,
            );
            let packet_id = match ctx.qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce | QoS::ExactlyOnce => self.alloc_pid(),
            };
            let publish = Publish {
                dup: false,
                qos: ctx.qos,
                retain: ctx.retain,
                topic: self.topic.clone(),
                packet_id,
                properties: Props::default(),
                // PERF: the arena's allocation is reused once every frozen
                // payload has been copied into the write buffer and dropped.
                payload: self.arena.split().freeze(),
            };
            encode_publish(&publish, conn.version, &mut conn.wbuf)?;
            if let Some(pid) = packet_id {
                let awaiting = if ctx.qos == QoS::AtLeastOnce {
                    Awaiting::Ack
                } else {
                    Awaiting::Rec
                };
                self.inflight.insert(pid.get(), (self.seq, awaiting));
            }
            self.seq += 1;
            self.out.sent += 1;
            if ctx.in_window(scheduled) {
                self.out.sent_in_window += 1;
            }
            Counters::add(&ctx.counters.sent, 1);
        }
        // Window or write buffer full: an ack or a write wakes the pump.
        Ok(Produce::Blocked)
    }

    fn confirmed(&mut self, seq: u64) {
        self.out.acked += 1;
        let ctx = self.ctx;
        if ctx.interval_ns.map_or(ctx.in_window(ctx.now_ns()), |iv| {
            ctx.in_window(ctx.start_ns + seq * iv)
        }) {
            self.out.acked_in_window += 1;
        }
        Counters::add(&ctx.counters.acked, 1);
    }

    fn handle(&mut self, conn: &mut Conn, packet: Packet) -> Result<(), ClientError> {
        match packet {
            Packet::PubAck(r) => match self.inflight.get(&r.packet_id.get()) {
                Some(&(seq, Awaiting::Ack)) => {
                    self.inflight.remove(&r.packet_id.get());
                    if r.reason.is_error() {
                        // Refused: the message was not accepted; leave it unconfirmed.
                        self.ctx.error_key(format!("puback: {:?}", r.reason));
                        self.out.unconfirmed.push(seq);
                    } else {
                        self.confirmed(seq);
                    }
                }
                _ => self.ctx.error_key("puback: unknown packet id".to_owned()),
            },
            Packet::PubRec(r) => match self.inflight.get_mut(&r.packet_id.get()) {
                Some((seq, state @ Awaiting::Rec)) => {
                    if r.reason.is_error() {
                        let seq = *seq;
                        self.inflight.remove(&r.packet_id.get());
                        self.ctx.error_key(format!("pubrec: {:?}", r.reason));
                        self.out.unconfirmed.push(seq);
                    } else {
                        *state = Awaiting::Comp;
                        conn.queue(&Packet::PubRel(PubResponse::new(
                            r.packet_id,
                            ReasonCode::Success,
                        )))?;
                    }
                }
                // Not in flight, or already released: count it so a
                // misbehaving broker is visible.
                _ => self.ctx.error_key("pubrec: unknown packet id".to_owned()),
            },
            Packet::PubComp(r) => match self.inflight.get(&r.packet_id.get()) {
                Some(&(seq, Awaiting::Comp)) => {
                    self.inflight.remove(&r.packet_id.get());
                    self.confirmed(seq);
                }
                _ => self.ctx.error_key("pubcomp: unknown packet id".to_owned()),
            },
            Packet::PingResp => {}
            Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason)),
            other => return Err(ClientError::Unexpected(other.packet_type())),
        }
        Ok(())
    }

    async fn drive(&mut self, conn: &mut Conn) -> Result<(), ClientError> {
        let ctx = self.ctx;
        let mut producing = true;
        loop {
            let now_ns = ctx.now_ns();
            let mut wake = None;
            if producing {
                match self.produce(conn, now_ns)? {
                    Produce::Done => producing = false,
                    Produce::At(t) => wake = Some(ctx.at(t)),
                    Produce::Blocked => {}
                }
            }
            if !producing && self.inflight.is_empty() && conn.wbuf.is_empty() {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= ctx.ack_deadline {
                return Ok(());
            }
            conn.ping_if_due(now)?;
            let coarse = [conn.ping_due(), Some(ctx.ack_deadline)]
                .into_iter()
                .flatten()
                .min();
            let timer = match (wake, &ctx.pacer, coarse) {
                (Some(t), Some(pacer), Some(c)) if t < c => Some(Timer::Precise(pacer, t)),
                (Some(t), None, Some(c)) if t < c => Some(Timer::Coarse(t)),
                (_, _, c) => c.map(Timer::Coarse),
            };
            if conn.pump(timer, None).await? == Wake::Read {
                while let Some(p) = conn.try_decode()? {
                    self.handle(conn, p)?;
                }
            }
        }
    }
}

/// Runs one publisher to the end of the run.
pub async fn run(mut conn: Conn, ctx: Arc<RunCtx>, id: u32, topic: String) -> PubOutcome {
    let window = usize::from(ctx.inflight.min(conn.server_receive_max).max(1));
    let mut p = Publisher {
        ctx: &ctx,
        topic: ByteString::from(topic),
        id,
        seq: 0,
        phase_ns: match (ctx.interval_ns, ctx.stagger) {
            (Some(iv), Some(n)) => u64::from(id % n) * iv / u64::from(n),
            _ => 0,
        },
        next_pid: 0,
        inflight: HashMap::with_capacity(window),
        window,
        arena: BytesMut::new(),
        out: PubOutcome {
            id,
            ..Default::default()
        },
    };
    // Wait for the common start so every publisher's schedule lines up.
    tokio::time::sleep_until(ctx.at(ctx.start_ns)).await;
    let result = p.drive(&mut conn).await;
    let mut out = p.out;
    out.unconfirmed
        .extend(p.inflight.values().map(|&(seq, _)| seq));
    match result {
        Ok(()) => conn.disconnect(Duration::from_millis(500)).await,
        Err(e) => {
            ctx.error(&e);
            out.error = Some(e.to_string());
        }
    }
    out
}
