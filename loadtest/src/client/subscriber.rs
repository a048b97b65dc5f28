//! One subscriber: acknowledges what it receives (QoS 1 PUBACK, QoS 2
//! PUBREC/PUBCOMP with exactly-once delivery to the tracker §4.3.3), records
//! end-to-end latency and per-publisher sequence accounting. For slow-sub it
//! goes offline and comes back on its persistent session; for slow-reader it
//! reads at a capped rate for a while (the socket backs up, so the broker
//! queues) and then at full speed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shardmq_core::codec::{Packet, PubResponse, Publish, QoS, ReasonCode};
use tokio::sync::watch;

use super::{ClientError, Conn, Timer, Wake};
use crate::ctx::{Counters, RunCtx};
use crate::payload;
use crate::tracker::SeqTracker;

/// Latencies buffered before taking the shared histogram's lock.
const LATENCY_BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct SubPlan {
    pub idx: usize,
    pub client_id: String,
    pub filter: String,
    pub qos: QoS,
    /// Offline from/until (ns since the run's epoch): slow-sub.
    pub offline: Option<(u64, u64)>,
    /// Read slowly for a while: slow-reader.
    pub throttle: Option<Throttle>,
}

/// Reads at most `rate_per_s` messages a second from `from_ns` until
/// `until_ns` (ns since the run's epoch), by not reading the socket while
/// ahead of that pace.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub from_ns: u64,
    pub until_ns: u64,
    pub rate_per_s: u32,
}

impl Throttle {
    /// When the next message may be read, after `read` of them in the span;
    /// `None` when reading is allowed now.
    fn hold_until(&self, now_ns: u64, read: u64) -> Option<u64> {
        if now_ns < self.from_ns || now_ns >= self.until_ns {
            return None;
        }
        let rate = u64::from(self.rate_per_s.max(1));
        let next_ns = self.from_ns + read.saturating_mul(1_000_000_000) / rate;
        (next_ns > now_ns).then_some(next_ns.min(self.until_ns))
    }
}

/// What the subscriber saw after coming back online (slow-sub), or after
/// going back to full speed (slow-reader: `session_present` is then true,
/// the session never left).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DrainStats {
    pub session_present: bool,
    /// Messages published before the reconnect and received after it.
    pub backlog: u64,
    /// From reconnect to the first message published after the reconnect
    /// (`None`: never caught up before the run ended).
    pub drain_s: Option<f64>,
    /// From reconnect to the first backlog message: how long the broker
    /// takes to start draining, as opposed to how fast it drains.
    pub first_s: Option<f64>,
}

#[derive(Debug, Default)]
pub struct SubOutcome {
    pub idx: usize,
    pub trackers: HashMap<u32, SeqTracker>,
    pub received: u64,
    pub received_in_window: u64,
    /// Payloads that carry no stamp (not sent by this run).
    pub foreign: u64,
    pub drain: Option<DrainStats>,
    pub error: Option<String>,
}

struct Subscriber<'a> {
    ctx: &'a RunCtx,
    plan: SubPlan,
    /// QoS 2 packet ids received and not yet released: a re-sent PUBLISH
    /// with one of these is the same message [MQTT-4.3.3-9].
    awaiting_rel: HashSet<u16>,
    /// Per publisher, what this connection received: a QoS 1 repeat with
    /// DUP is a redelivery only if it is new on this connection.
    this_conn: HashMap<u32, SeqTracker>,
    latencies: Vec<u64>,
    reconnect_ns: Option<u64>,
    /// Messages read while throttled.
    throttled: u64,
    out: SubOutcome,
}

impl Subscriber<'_> {
    fn on_publish(&mut self, conn: &mut Conn, p: Publish, now_ns: u64) -> Result<(), ClientError> {
        match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(pid)) => {
                conn.queue(&Packet::PubAck(PubResponse::new(pid, ReasonCode::Success)))?
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                conn.queue(&Packet::PubRec(PubResponse::new(pid, ReasonCode::Success)))?;
                if !self.awaiting_rel.insert(pid.get()) {
                    return Ok(());
                }
            }
            // The codec guarantees a packet id for QoS > 0 [MQTT-2.2.1-2].
            (_, None) => {}
        }
        let ctx = self.ctx;
        let Some(stamp) = payload::read(&p.payload) else {
            self.out.foreign += 1;
            return Ok(());
        };
        let tracker = self.out.trackers.entry(stamp.publisher).or_default();
        let unique = tracker.unique;
        if p.qos == QoS::AtLeastOnce {
            let here = self.this_conn.entry(stamp.publisher).or_default();
            let again_here = here.seen(stamp.seq);
            here.record(stamp.seq);
            tracker.record_at_least_once(stamp.seq, p.dup && !again_here);
        } else {
            tracker.record(stamp.seq);
        }
        if tracker.unique > unique {
            Counters::add(&ctx.counters.unique, 1);
        }
        self.out.received += 1;
        Counters::add(&ctx.counters.received, 1);
        if let Some(t) = &self.plan.throttle {
            if (t.from_ns..t.until_ns).contains(&now_ns) {
                self.throttled += 1;
            }
        }
        if ctx.in_window(now_ns) {
            self.out.received_in_window += 1;
        }
        if ctx.in_window(stamp.sent_ns) {
            self.latencies.push(now_ns.saturating_sub(stamp.sent_ns));
            if self.latencies.len() >= LATENCY_BATCH {
                ctx.record_latencies(&mut self.latencies);
            }
        }
        if let (Some(reconnect_ns), Some(drain)) = (self.reconnect_ns, self.out.drain.as_mut()) {
            if drain.drain_s.is_none() {
                if stamp.sent_ns >= reconnect_ns {
                    drain.drain_s = Some(now_ns.saturating_sub(reconnect_ns) as f64 / 1e9);
                } else {
                    drain.backlog += 1;
                    if drain.first_s.is_none() {
                        drain.first_s = Some(now_ns.saturating_sub(reconnect_ns) as f64 / 1e9);
                    }
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, conn: &mut Conn, packet: Packet, now_ns: u64) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(p) => self.on_publish(conn, p, now_ns)?,
            Packet::PubRel(r) => {
                self.awaiting_rel.remove(&r.packet_id.get());
                conn.queue(&Packet::PubComp(PubResponse::new(
                    r.packet_id,
                    ReasonCode::Success,
                )))?;
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason)),
            other => return Err(ClientError::Unexpected(other.packet_type())),
        }
        Ok(())
    }

    /// Reads and acknowledges until stopped, the connection fails, or (with
    /// `until`) the offline time comes.
    async fn drive(
        &mut self,
        conn: &mut Conn,
        stop: &mut watch::Receiver<bool>,
        until: Option<u64>,
    ) -> Result<Wake, ClientError> {
        loop {
            let now = tokio::time::Instant::now();
            if until.is_some_and(|t| self.ctx.now_ns() >= t) {
                return Ok(Wake::Timer);
            }
            if let Some(t) = self.plan.throttle {
                let now_ns = self.ctx.now_ns();
                if let Some(next_ns) = t.hold_until(now_ns, self.throttled) {
                    // Not reading is the point: the broker's writes back up.
                    tokio::select! {
                        () = tokio::time::sleep_until(self.ctx.at(next_ns)) => {}
                        _ = stop.changed() => return Ok(Wake::Stop),
                    }
                    continue;
                }
                if now_ns >= t.until_ns && self.reconnect_ns.is_none() {
                    self.reconnect_ns = Some(t.until_ns);
                    self.out.drain = Some(DrainStats {
                        session_present: true,
                        ..Default::default()
                    });
                }
            }
            conn.ping_if_due(now)?;
            let wake = [until.map(|t| self.ctx.at(t)), conn.ping_due()]
                .into_iter()
                .flatten()
                .min();
            match conn.pump(wake.map(Timer::Coarse), Some(stop)).await? {
                Wake::Read => {
                    let now_ns = self.ctx.now_ns();
                    while let Some(p) = conn.try_decode()? {
                        self.handle(conn, p, now_ns)?;
                    }
                }
                Wake::Stop => return Ok(Wake::Stop),
                Wake::Wrote | Wake::Timer => {}
            }
        }
    }

    async fn session(
        &mut self,
        mut conn: Conn,
        early: Vec<Publish>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ClientError> {
        let now_ns = self.ctx.now_ns();
        for p in early {
            self.on_publish(&mut conn, p, now_ns)?;
        }
        if let Some((from, until)) = self.plan.offline {
            if self.drive(&mut conn, stop, Some(from)).await? == Wake::Stop {
                conn.disconnect(Duration::from_millis(500)).await;
                return Ok(());
            }
            conn.disconnect(Duration::from_millis(500)).await;
            tokio::select! {
                () = tokio::time::sleep_until(self.ctx.at(until)) => {}
                _ = stop.changed() => return Ok(()),
            }
            conn = self
                .ctx
                .connector
                .connect(&self.plan.client_id, false)
                .await?;
            self.this_conn.clear();
            let session_present = conn.session_present;
            let early = if session_present {
                Vec::new()
            } else {
                // The broker lost the session: subscribe again so the rest
                // of the run is measured; what was queued shows up as loss.
                conn.subscribe(
                    &self.plan.filter,
                    self.plan.qos,
                    self.ctx.connector.connect_timeout,
                )
                .await?
            };
            let now_ns = self.ctx.now_ns();
            self.reconnect_ns = Some(now_ns);
            self.out.drain = Some(DrainStats {
                session_present,
                ..Default::default()
            });
            for p in early {
                self.on_publish(&mut conn, p, now_ns)?;
            }
        }
        self.drive(&mut conn, stop, None).await?;
        // Send the acks of the last reads before saying goodbye.
        conn.disconnect(Duration::from_millis(500)).await;
        Ok(())
    }
}

/// Runs one subscriber (already subscribed) until `stop` changes.
pub async fn run(
    conn: Conn,
    early: Vec<Publish>,
    ctx: Arc<RunCtx>,
    plan: SubPlan,
    mut stop: watch::Receiver<bool>,
) -> SubOutcome {
    let mut s = Subscriber {
        ctx: &ctx,
        out: SubOutcome {
            idx: plan.idx,
            ..Default::default()
        },
        plan,
        awaiting_rel: HashSet::new(),
        this_conn: HashMap::new(),
        latencies: Vec::with_capacity(LATENCY_BATCH),
        reconnect_ns: None,
        throttled: 0,
    };
    if let Err(e) = s.session(conn, early, &mut stop).await {
        ctx.error(&e);
        s.out.error = Some(e.to_string());
    }
    ctx.record_latencies(&mut s.latencies);
    s.out
}
