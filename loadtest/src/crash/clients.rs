//! The crash test's clients: QoS 1 publishers that reconnect (clean start)
//! after the broker dies and carry on with the next sequence number, and
//! persistent subscribers (fixed client id, Clean Start 0, v5 session
//! expiry) that reconnect and resume their session, recording every arrival
//! in the ledger.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use shardmq_core::codec::{
    encode_publish, Packet, PacketId, Props, PubResponse, Publish, QoS, ReasonCode,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ledger::{Arrival, Arrivals, Sent};
use crate::client::{ClientError, Conn, Connector, Timer, Wake};
use crate::payload::{self, Stamp};

/// Pause between connection attempts while the broker is down.
const RETRY: Duration = Duration::from_millis(50);

/// What every client of one crash run shares.
#[derive(Debug)]
pub struct Shared {
    pub connector: Connector,
    pub epoch: Instant,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn new(connector: Connector) -> Shared {
        Shared {
            connector,
            epoch: Instant::now(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn error(&self, key: String) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(key).or_default() += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Connects, retrying every [`RETRY`] until it works or `stop` is set.
    async fn connect(
        &self,
        who: &str,
        client_id: &str,
        clean: bool,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Conn> {
        loop {
            if *stop.borrow() {
                return None;
            }
            match self.connector.connect(client_id, clean).await {
                Ok(c) => return Some(c),
                Err(e) => self.error(format!("{who} connect: {}", e.reason())),
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubPlan {
    pub id: u32,
    pub client_id: String,
    pub topic: String,
    pub interval: Duration,
    pub inflight: u16,
    pub payload_bytes: usize,
    /// After `stop`, how long to wait for outstanding PUBACKs.
    pub ack_grace: Duration,
}

struct Publisher<'a> {
    shared: &'a Shared,
    plan: &'a PubPlan,
    sent: Sent,
    arena: BytesMut,
}

impl Publisher<'_> {
    /// One connection's life: publish on the schedule until `stop`, then
    /// wait for the acknowledgements.
    async fn session(
        &mut self,
        mut conn: Conn,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ClientError> {
        let window = usize::from(self.plan.inflight.min(conn.server_receive_max).max(1));
        let mut inflight: HashMap<u16, u64> = HashMap::with_capacity(window);
        let mut next_pid: u16 = 0;
        let mut next_due = Instant::now();
        let mut ack_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if ack_deadline.is_none() && *stop.borrow() {
                ack_deadline = Some(now + self.plan.ack_grace);
            }
            if let Some(d) = ack_deadline {
                if inflight.is_empty() || now >= d {
                    conn.disconnect(Duration::from_millis(500)).await;
                    return Ok(());
                }
            }
            while ack_deadline.is_none() && inflight.len() < window && now >= next_due {
                // INVARIANT: inflight.len() < window <= 65535: a free id exists.
                let pid = loop {
                    next_pid = next_pid.wrapping_add(1).max(1);
                    if !inflight.contains_key(&next_pid) {
                        break PacketId::new(next_pid);
                    }
                };
                let at_ns = self.shared.now_ns();
                let seq = self.sent.push(at_ns);
                payload::write(
                    &mut self.arena,
                    Stamp {
                        sent_ns: at_ns,
                        publisher: self.plan.id,
                        seq,
                    },
                    self.plan.payload_bytes,
                );
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: ByteString::from(self.plan.topic.as_str()),
                    packet_id: pid,
                    properties: Props::default(),
                    payload: self.arena.split().freeze(),
                };
                encode_publish(&publish, conn.version, &mut conn.wbuf)?;
                if let Some(pid) = pid {
                    inflight.insert(pid.get(), seq);
                }
                // Behind schedule (a reconnect, a full window): no burst.
                next_due = (next_due + self.plan.interval).max(now);
            }
            conn.ping_if_due(now)?;
            let due = if ack_deadline.is_some() || inflight.len() >= window {
                ack_deadline
            } else {
                Some(next_due)
            };
            let wake = [due, conn.ping_due()].into_iter().flatten().min();
            let stop_rx = ack_deadline.is_none().then_some(&mut *stop);
            if conn.pump(wake.map(Timer::Coarse), stop_rx).await? == Wake::Read {
                while let Some(p) = conn.try_decode()? {
                    match p {
                        Packet::PubAck(r) => match inflight.remove(&r.packet_id.get()) {
                            Some(seq) if !r.reason.is_error() => self.sent.ack(seq),
                            Some(_) => self.shared.error(format!("puback: {:?}", r.reason)),
                            None => self.shared.error("puback: unknown packet id".to_owned()),
                        },
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason)),
                        other => return Err(ClientError::Unexpected(other.packet_type())),
                    }
                }
            }
        }
    }
}

/// Publishes until `stop`, reconnecting after every broker death; what was
/// in flight on a dead connection stays unacknowledged (it may or may not
/// arrive). Returns what it sent.
pub async fn publisher(
    shared: Arc<Shared>,
    plan: PubPlan,
    mut stop: watch::Receiver<bool>,
) -> Sent {
    let mut p = Publisher {
        shared: &shared,
        plan: &plan,
        sent: Sent::default(),
        arena: BytesMut::new(),
    };
    while let Some(conn) = shared
        .connect("publisher", &plan.client_id, true, &mut stop)
        .await
    {
        match p.session(conn, &mut stop).await {
            Ok(()) => break,
            Err(e) => shared.error(format!("publisher: {}", e.reason())),
        }
    }
    p.sent
}

#[derive(Debug, Clone)]
pub struct SubPlan {
    pub idx: usize,
    pub client_id: String,
    pub filter: String,
    pub publishers: usize,
    /// Messages per second it reads at most (`None`: as fast as they come).
    pub rate_per_s: Option<u32>,
}

/// One subscriber's record, read by the orchestrator while it runs (the
/// drain stops once every acknowledged message arrived).
#[derive(Debug, Default)]
pub struct SubRecord {
    /// Per publisher.
    pub arrivals: Vec<Arrivals>,
    /// Every reconnect after the first connection: when (ns since the
    /// epoch) and whether the broker still had the session.
    pub reconnects: Vec<(u64, bool)>,
    pub foreign: u64,
    /// The first SUBACK came.
    pub subscribed: bool,
}

pub type SharedRecord = Arc<Mutex<SubRecord>>;

fn lock(r: &SharedRecord) -> MutexGuard<'_, SubRecord> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Snapshot of every subscriber's arrivals, `[subscriber][publisher]`.
pub fn arrivals(records: &[SharedRecord]) -> Vec<Vec<Arrivals>> {
    records.iter().map(|r| lock(r).arrivals.clone()).collect()
}

pub fn all_subscribed(records: &[SharedRecord]) -> bool {
    records.iter().all(|r| lock(r).subscribed)
}

/// Every subscriber's reconnects, `(when, session present)`.
pub fn reconnects(records: &[SharedRecord]) -> Vec<(u64, bool)> {
    records
        .iter()
        .flat_map(|r| lock(r).reconnects.clone())
        .collect()
}

pub fn foreign(records: &[SharedRecord]) -> u64 {
    records.iter().map(|r| lock(r).foreign).sum()
}

struct Subscriber<'a> {
    plan: &'a SubPlan,
    record: &'a SharedRecord,
    /// This connection's number (1-based).
    conn_no: u32,
    /// Received, PUBACK held back (throttled subscribers).
    unacked: VecDeque<PacketId>,
}

impl Subscriber<'_> {
    fn on_publish(&mut self, conn: &mut Conn, p: Publish) -> Result<(), ClientError> {
        if let (QoS::AtLeastOnce, Some(pid)) = (p.qos, p.packet_id) {
            if self.plan.rate_per_s.is_some() {
                self.unacked.push_back(pid);
            } else {
                conn.queue(&Packet::PubAck(PubResponse::new(pid, ReasonCode::Success)))?;
            }
        }
        let mut r = lock(self.record);
        let arrival = match payload::read(&p.payload) {
            Some(s) if (s.publisher as usize) < self.plan.publishers => {
                let n = self.plan.publishers;
                if r.arrivals.len() < n {
                    r.arrivals.resize_with(n, Arrivals::default);
                }
                r.arrivals[s.publisher as usize].record(s.seq, p.dup, self.conn_no)
            }
            _ => Arrival::Foreign,
        };
        if arrival == Arrival::Foreign {
            r.foreign += 1;
        }
        Ok(())
    }

    /// Reads and acknowledges until `stop`, going offline, or the
    /// connection dies.
    async fn session(
        &mut self,
        mut conn: Conn,
        early: Vec<Publish>,
        stop: &mut watch::Receiver<bool>,
        online: &mut watch::Receiver<bool>,
    ) -> Result<(), ClientError> {
        // Acknowledgements of a dead connection die with it: the broker
        // owes those messages again [MQTT-4.4.0-1].
        self.unacked.clear();
        for p in early {
            self.on_publish(&mut conn, p)?;
        }
        let mut ack_due = Instant::now();
        loop {
            if *stop.borrow() || !*online.borrow() {
                // DISCONNECT (normal): a Clean Start 0 session with an
                // expiry interval outlives the connection.
                conn.disconnect(Duration::from_millis(500)).await;
                return Ok(());
            }
            let now = Instant::now();
            // Throttled: PUBACKs go out at the rate, so the broker's
            // in-flight window (our Receive Maximum) fills and it queues the
            // rest. The socket is still read, so a dead broker is noticed.
            let mut next_ack = None;
            if let Some(rate) = self.plan.rate_per_s {
                let step = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
                while let Some(&pid) = self.unacked.front() {
                    if ack_due > now {
                        next_ack = Some(ack_due);
                        break;
                    }
                    self.unacked.pop_front();
                    conn.queue(&Packet::PubAck(PubResponse::new(pid, ReasonCode::Success)))?;
                    // Idle time does not bank acknowledgements for a burst.
                    ack_due = ack_due.max(now.checked_sub(step).unwrap_or(now)) + step;
                }
            }
            conn.ping_if_due(now)?;
            let wake = [conn.ping_due(), next_ack].into_iter().flatten().min();
            let woke = tokio::select! {
                w = conn.pump(wake.map(Timer::Coarse), Some(stop)) => w?,
                _ = online.changed() => Wake::Timer,
            };
            match woke {
                Wake::Read => {
                    while let Some(p) = conn.try_decode()? {
                        match p {
                            Packet::Publish(p) => {
                                self.on_publish(&mut conn, p)?;
                            }
                            Packet::PingResp => {}
                            Packet::Disconnect(d) => {
                                return Err(ClientError::Disconnected(d.reason))
                            }
                            other => return Err(ClientError::Unexpected(other.packet_type())),
                        }
                    }
                }
                Wake::Stop | Wake::Wrote | Wake::Timer => {}
            }
        }
    }
}

/// Subscribes on a persistent session and reads until `stop`, reconnecting
/// (Clean Start 0) after every broker death, and going offline (DISCONNECT,
/// session kept) while `online` is false. A broker that lost the
/// session gets the subscription again, so the rest of the run is still
/// measured; what it had queued shows up as loss.
pub async fn subscriber(
    shared: Arc<Shared>,
    plan: SubPlan,
    record: SharedRecord,
    mut stop: watch::Receiver<bool>,
    mut online: watch::Receiver<bool>,
) {
    let mut s = Subscriber {
        plan: &plan,
        record: &record,
        conn_no: 0,
        unacked: VecDeque::new(),
    };
    let mut subscribed = false;
    loop {
        // Offline (the orchestrator's choice): the broker queues for us.
        while !*online.borrow() && !*stop.borrow() {
            tokio::select! {
                r = online.changed() => if r.is_err() { break },
                _ = stop.changed() => {}
            }
        }
        let Some(mut conn) = shared
            .connect("subscriber", &plan.client_id, false, &mut stop)
            .await
        else {
            break;
        };
        s.conn_no += 1;
        if s.conn_no > 1 {
            let at = shared.now_ns();
            lock(&record).reconnects.push((at, conn.session_present));
        }
        let early = if conn.session_present && subscribed {
            Vec::new()
        } else {
            let wait = shared.connector.connect_timeout;
            match conn.subscribe(&plan.filter, QoS::AtLeastOnce, wait).await {
                Ok(early) => {
                    subscribed = true;
                    lock(&record).subscribed = true;
                    early
                }
                Err(e) => {
                    shared.error(format!("subscribe: {}", e.reason()));
                    continue;
                }
            }
        };
        match s.session(conn, early, &mut stop, &mut online).await {
            Ok(()) if *stop.borrow() => break,
            Ok(()) => {}
            Err(e) => shared.error(format!("subscriber: {}", e.reason())),
        }
    }
}
