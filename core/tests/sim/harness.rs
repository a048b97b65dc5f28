//! The deterministic simulator's machinery (FoundationDB / TigerBeetle
//! style): N `broker::Shard`s and scripted clients in one thread on a fake
//! clock. Every event the real runtime would race — a mesh message between
//! a pair of shards (each pair in order, pairs in any order), an
//! authentication answer, a writer flushing a connection, a socket closing,
//! time passing — is one schedulable step, chosen by a seeded RNG. Clients
//! speak MQTT 5 through the real codec. A failure prints its seed and the
//! last steps; the same seed replays it exactly.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq_core::broker::{
    Admission, ConnId, MeshMsg, Output, PersistOp, PrincipalId, SelfTestConfig, Shard, ShardConfig,
    ShardId,
};
use shardmq_core::buffer::{RecordRef, ShardBuffer, Store, StoreError};
use shardmq_core::codec::{
    self, Connect, Disconnect, Packet, PacketId, Properties, Props, ProtocolVersion, PubResponse,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};
use shardmq_core::limits::ClientLimits;
use shardmq_core::session::{AllowAll, Message};

/// The seeds a randomized test runs: `SHARDMQ_SIM_SEED=N` replays one,
/// `SHARDMQ_SIM_SEEDS=N` runs N, else `default` of them.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SHARDMQ_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("SHARDMQ_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect()
}

/// xorshift64*: small, fast, and the same sequence for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// An in-memory disk buffer, small enough that the simulation spills.
#[derive(Debug, Default)]
pub struct MemStore {
    records: std::collections::HashMap<u32, (u64, Message)>,
    next: u32,
    pub capacity: usize,
    /// Records ever stored: the simulation must really spill.
    pub appended: u64,
}

impl MemStore {
    pub fn live(&self) -> usize {
        self.records.len()
    }
}

impl Store for MemStore {
    fn append(&mut self, owner: u64, message: &Message) -> Result<RecordRef, StoreError> {
        if self.records.len() >= self.capacity {
            return Err(StoreError::Full);
        }
        self.next += 1;
        self.appended += 1;
        self.records.insert(self.next, (owner, message.clone()));
        Ok(RecordRef {
            segment: 0,
            block: 0,
            at: self.next,
            len: message.payload.len() as u32,
        })
    }

    fn read(&mut self, at: RecordRef, owner: u64) -> Result<Message, StoreError> {
        match self.records.get(&at.at) {
            Some((o, m)) if *o == owner => Ok(m.clone()),
            _ => Err(StoreError::Lost),
        }
    }

    fn release(&mut self, at: RecordRef) {
        let gone = self.records.remove(&at.at);
        assert!(gone.is_some(), "record {} released twice", at.at);
    }
}

/// What one client has seen, across all its connections.
#[derive(Debug, Default)]
pub struct Seen {
    /// (Session Present, reason) of every CONNACK.
    pub connacks: Vec<(bool, ReasonCode)>,
    /// (topic, payload, dup) of every PUBLISH received.
    pub publishes: Vec<(String, Bytes, bool)>,
    /// The Message Expiry Interval of each of `publishes`, in order.
    pub expiries: Vec<Option<u32>>,
    /// Payloads of this client's QoS 1 publishes the broker acknowledged.
    pub acked: Vec<Bytes>,
    /// SUBACKs received.
    pub subacks: usize,
    /// UNSUBACKs received, with how many PUBLISHes had arrived before each.
    pub unsubacks: Vec<usize>,
    pub disconnects: Vec<ReasonCode>,
}

#[derive(Debug)]
pub struct Client {
    pub client_id: String,
    pub principal: PrincipalId,
    /// The connection, while it is open: (shard, conn).
    pub conn: Option<(usize, ConnId)>,
    /// The protocol its connections speak: MQTT 5 unless `connect_with`
    /// sends another CONNECT.
    pub version: ProtocolVersion,
    inbuf: BytesMut,
    next_packet_id: u16,
    /// QoS 1 publishes sent and not yet acknowledged, by packet id.
    unacked: Vec<(u16, Bytes)>,
    pub seen: Seen,
}

impl Client {
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }
}

/// The simulated broker and its clients.
pub struct Sim {
    pub seed: u64,
    pub rng: Rng,
    pub now: Instant,
    pub shards: Vec<Shard<MemStore>>,
    /// In-flight mesh messages per (from, to) pair: `from * n + to`.
    inflight: Vec<VecDeque<MeshMsg>>,
    auth_jobs: Vec<(usize, ConnId)>,
    /// Authenticated CONNECTs wait in `auth_jobs` for `admit` (a cluster's
    /// registry claim) instead of being answered by a step.
    pub hold_auth: bool,
    woken: BTreeSet<(usize, ConnId)>,
    closing: BTreeSet<(usize, ConnId)>,
    /// Shards with retained changes to persist (`Output::Persist`).
    persist_jobs: BTreeSet<usize>,
    /// The simulated disk: persisted retained payloads by topic.
    pub disk: std::collections::BTreeMap<String, Bytes>,
    /// The simulated disk's persisted sessions: client id to its filters.
    pub disk_sessions: std::collections::BTreeMap<String, Vec<String>>,
    /// Whether the disk's last record of each session says it is offline.
    pub disk_offline: std::collections::BTreeMap<String, bool>,
    /// The queue id each session record on disk names.
    pub disk_queue_ids: std::collections::BTreeMap<String, u64>,
    /// Per shard, the queue records of its log file: a rewrite replaces
    /// them (a queue that moved away is gone from this file then).
    pub disk_queue_files: Vec<Vec<QueueRec>>,
    pub clients: Vec<Client>,
    trace: VecDeque<String>,
    pub steps: u64,
    /// `Output::Flush`es seen, per (shard, conn).
    pub flushes: std::collections::BTreeMap<(usize, ConnId), u64>,
}

const TRACE_LEN: usize = 60;

/// The steps a failure prints: `SHARDMQ_SIM_TRACE=N`, else `default`
/// (read once: it is asked on every step).
pub fn trace_len(default: usize) -> usize {
    static LEN: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    LEN.get_or_init(|| {
        std::env::var("SHARDMQ_SIM_TRACE")
            .ok()
            .and_then(|s| s.parse().ok())
    })
    .unwrap_or(default)
}

impl Sim {
    pub fn new(seed: u64, shards: usize, limits: ClientLimits, store_capacity: usize) -> Sim {
        Sim::build(seed, shards, limits, store_capacity, None)
    }

    /// Shards that persist retained messages as `persistence` says; the
    /// disk write is a racy step like the others.
    pub fn new_persistent(
        seed: u64,
        shards: usize,
        persistence: shardmq_core::config::Persistence,
    ) -> Sim {
        Sim::build(
            seed,
            shards,
            ClientLimits::default(),
            10_000,
            Some(Arc::new(persistence)),
        )
    }

    fn build(
        seed: u64,
        shards: usize,
        limits: ClientLimits,
        store_capacity: usize,
        persistence: Option<Arc<shardmq_core::config::Persistence>>,
    ) -> Sim {
        // The fake clock's base instant; only offsets from it matter.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let config = Arc::new(ShardConfig {
            shards,
            instance: seed,
            limits: Arc::new(limits),
            retained_max: 1000,
            retained_bytes_max: 1 << 20,
            partial_bytes_max: 1 << 20,
            persistence,
            selftest: Some(SelfTestConfig {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
            }),
        });
        let shards = (0..shards)
            .map(|i| {
                let store = MemStore {
                    capacity: store_capacity,
                    ..MemStore::default()
                };
                // A tiny memory budget, so queues spill to the store.
                let buffer = ShardBuffer::new(Some(store), 300, 1 << 30);
                Shard::new(ShardId::new(i), config.clone(), buffer)
            })
            .collect::<Vec<_>>();
        let n = shards.len();
        Sim {
            seed,
            rng: Rng::new(seed),
            now,
            shards,
            inflight: (0..n * n).map(|_| VecDeque::new()).collect(),
            auth_jobs: Vec::new(),
            hold_auth: false,
            woken: BTreeSet::new(),
            closing: BTreeSet::new(),
            persist_jobs: BTreeSet::new(),
            disk: Default::default(),
            disk_sessions: Default::default(),
            disk_offline: Default::default(),
            disk_queue_ids: Default::default(),
            disk_queue_files: vec![Vec::new(); n],
            clients: Vec::new(),
            trace: VecDeque::new(),
            steps: 0,
            flushes: Default::default(),
        }
    }

    pub fn add_client(&mut self, client_id: &str, principal: &str) -> usize {
        self.clients.push(Client {
            client_id: client_id.to_owned(),
            principal: PrincipalId::authenticated("sim", "Test", principal),
            conn: None,
            version: ProtocolVersion::V5,
            inbuf: BytesMut::new(),
            next_packet_id: 0,
            unacked: Vec::new(),
            seen: Seen::default(),
        });
        self.clients.len() - 1
    }

    pub fn log(&mut self, line: String) {
        if self.trace.len() >= trace_len(TRACE_LEN) {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    /// Every shard becomes part of a cluster as node `me` of life `life`
    /// among `peers`, with one clock for the node (the runtime's wiring).
    pub fn enable_cluster(
        &mut self,
        me: shardmq_core::cluster::NodeId,
        life: u64,
        peers: &[shardmq_core::cluster::NodeId],
    ) {
        let clock = Arc::new(shardmq_core::cluster::clock::NodeClock::logical());
        for shard in &mut self.shards {
            let incarnation = shardmq_core::cluster::Incarnation(life);
            shard.enable_cluster(me, incarnation, peers, clock.clone(), self.now);
        }
    }

    /// The last steps, oldest first.
    pub fn trace(&self) -> impl Iterator<Item = &String> {
        self.trace.iter()
    }

    /// Panics with the seed and the last steps: the replay recipe.
    pub fn fail(&self, why: &str) -> ! {
        let trace: Vec<&String> = self.trace.iter().collect();
        panic!(
            "{why}\nseed {} (replay: SHARDMQ_SIM_SEED={}), step {}\nlast steps:\n  {}",
            self.seed,
            self.seed,
            self.steps,
            trace
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    // ---- clients ------------------------------------------------------

    fn send(&mut self, c: usize, packet: &Packet) {
        let Some((shard, conn)) = self.clients[c].conn else {
            return;
        };
        let mut buf = BytesMut::new();
        if codec::encode(packet, self.clients[c].version, &mut buf).is_err() {
            self.fail("the client encoded an invalid packet");
        }
        let now = self.now;
        self.shards[shard].handle_input(conn, now, &buf);
        self.drain(shard);
    }

    /// Bytes from client `c` as they are, for what the codec would refuse
    /// to encode.
    pub fn send_raw(&mut self, c: usize, bytes: &[u8]) {
        let Some((shard, conn)) = self.clients[c].conn else {
            return;
        };
        let now = self.now;
        self.shards[shard].handle_input(conn, now, bytes);
        self.drain(shard);
    }

    /// Opens a connection from client `c` to `shard`, nothing sent yet.
    pub fn open(&mut self, c: usize, shard: usize, version: ProtocolVersion) -> bool {
        if self.clients[c].conn.is_some() {
            return false;
        }
        let conn = self.shards[shard].accept(self.now);
        self.clients[c].conn = Some((shard, conn));
        self.clients[c].version = version;
        self.clients[c].inbuf.clear();
        self.clients[c].unacked.clear();
        let id = self.clients[c].client_id.clone();
        self.log(format!(
            "client {c} ({id}) connects to shard {shard} as conn {conn}"
        ));
        true
    }

    /// Opens a connection to `shard` and sends `connect` (in its protocol
    /// version; its client id is the client's).
    pub fn connect_with(&mut self, c: usize, shard: usize, mut connect: Connect) {
        if !self.open(c, shard, connect.protocol_version) {
            return;
        }
        connect.client_id = self.clients[c].client_id.as_str().into();
        self.send(c, &Packet::Connect(Box::new(connect)));
    }

    /// Opens a connection to `shard` and sends CONNECT (clean start and
    /// session expiry as given).
    pub fn connect(&mut self, c: usize, shard: usize, clean_start: bool, expiry: u32) {
        let properties = Properties {
            session_expiry_interval: Some(expiry),
            ..Properties::default()
        };
        self.connect_with(
            c,
            shard,
            Connect {
                protocol_version: ProtocolVersion::V5,
                clean_start,
                keep_alive: 60,
                properties: properties.into(),
                client_id: "".into(),
                will: None,
                username: None,
                password: None,
            },
        );
    }

    fn packet_id(&mut self, c: usize) -> PacketId {
        let client = &mut self.clients[c];
        client.next_packet_id = client.next_packet_id.checked_add(1).unwrap_or(1);
        PacketId::new(client.next_packet_id).expect("ids skip 0")
    }

    /// Recovery at start: `restored` goes to the shard owning its client id
    /// (what the runtime does before accepting connections).
    pub fn restore(
        &mut self,
        restored: shardmq_core::broker::RestoredSession,
    ) -> Result<(), shardmq_core::broker::RestoreError> {
        let n = self.shards.len();
        let shard = shardmq_core::broker::owner_index(&restored.client_id, n);
        self.log(format!("restore {:?} on shard {shard}", restored.client_id));
        let now = self.now;
        let result = self.shards[shard].restore_session(restored, now);
        self.drain(shard);
        result.map(|_| ())
    }

    pub fn subscribe(&mut self, c: usize, filter: &str, qos: QoS) {
        self.subscribe_all(c, &[filter], qos);
    }

    /// One SUBSCRIBE of `filters`, in order (repeats as given).
    pub fn subscribe_all(&mut self, c: usize, filters: &[&str], qos: QoS) {
        let packet_id = self.packet_id(c);
        self.log(format!("client {c} subscribes {filters:?}"));
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.send(
            c,
            &Packet::Subscribe(Subscribe {
                packet_id,
                properties: Props::default(),
                filters: filters.iter().map(|f| ((*f).into(), options)).collect(),
            }),
        );
    }

    pub fn unsubscribe(&mut self, c: usize, filter: &str) {
        let packet_id = self.packet_id(c);
        self.log(format!("client {c} unsubscribes {filter}"));
        self.send(
            c,
            &Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: Props::default(),
                filters: vec![filter.into()],
            }),
        );
    }

    pub fn publish(&mut self, c: usize, topic: &str, qos: QoS, retain: bool, payload: Bytes) {
        if !self.clients[c].connected() {
            return;
        }
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id(c));
        if let Some(id) = packet_id {
            self.clients[c].unacked.push((id.get(), payload.clone()));
        }
        self.log(format!("client {c} publishes {topic} {payload:?}"));
        self.send(
            c,
            &Packet::Publish(Publish {
                dup: false,
                qos,
                retain,
                topic: topic.into(),
                packet_id,
                properties: Props::default(),
                payload,
            }),
        );
    }

    /// DISCONNECT (normal), then the socket closes.
    pub fn disconnect(&mut self, c: usize) {
        if !self.clients[c].connected() {
            return;
        }
        self.log(format!("client {c} disconnects"));
        self.send(
            c,
            &Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        );
        self.drop_conn(c);
    }

    /// The socket goes away without DISCONNECT.
    pub fn drop_conn(&mut self, c: usize) {
        let Some((shard, conn)) = self.clients[c].conn.take() else {
            return;
        };
        self.log(format!("client {c} drops conn {conn} on shard {shard}"));
        let now = self.now;
        self.shards[shard].handle_closed(conn, now);
        self.drain(shard);
    }

    /// What the client does with a packet from the broker.
    fn receive(&mut self, c: usize, packet: Packet) {
        match packet {
            Packet::ConnAck(ack) => {
                self.log(format!(
                    "client {c} CONNACK sp={} {:?}",
                    ack.session_present, ack.reason
                ));
                self.clients[c]
                    .seen
                    .connacks
                    .push((ack.session_present, ack.reason));
                if ack.reason.is_error() {
                    self.clients[c].conn = None;
                }
            }
            Packet::Publish(p) => {
                self.log(format!(
                    "client {c} gets {} {:?} dup={}",
                    p.topic, p.payload, p.dup
                ));
                self.clients[c].seen.publishes.push((
                    p.topic.to_string(),
                    p.payload.clone(),
                    p.dup,
                ));
                let expiry = p.properties.message_expiry_interval;
                self.clients[c].seen.expiries.push(expiry);
                // QoS 2 answers PUBREC (then PUBCOMP to the PUBREL); the
                // client keeps no state: every arrival is recorded.
                match (p.packet_id, p.qos) {
                    (Some(id), QoS::ExactlyOnce) => self.send(
                        c,
                        &Packet::PubRec(PubResponse::new(id, ReasonCode::Success)),
                    ),
                    (Some(id), _) => self.send(
                        c,
                        &Packet::PubAck(PubResponse::new(id, ReasonCode::Success)),
                    ),
                    (None, _) => {}
                }
            }
            Packet::PubRel(r) => {
                self.send(
                    c,
                    &Packet::PubComp(PubResponse::new(r.packet_id, ReasonCode::Success)),
                );
            }
            Packet::PubRec(a) => {
                // The broker has the message (durably, with persistence):
                // it counts as acknowledged; the exchange goes on.
                self.publish_answered(c, &a);
                if !a.reason.is_error() {
                    self.send(
                        c,
                        &Packet::PubRel(PubResponse::new(a.packet_id, ReasonCode::Success)),
                    );
                }
            }
            Packet::PubAck(a) => self.publish_answered(c, &a),
            Packet::SubAck(_) => self.clients[c].seen.subacks += 1,
            Packet::UnsubAck(_) => {
                let seen = &mut self.clients[c].seen;
                seen.unsubacks.push(seen.publishes.len());
            }
            Packet::Disconnect(d) => {
                self.log(format!("client {c} DISCONNECT {:?}", d.reason));
                self.clients[c].seen.disconnects.push(d.reason);
            }
            _ => {}
        }
    }

    /// The broker answered client `c`'s QoS 1/2 publish (PUBACK or PUBREC).
    fn publish_answered(&mut self, c: usize, a: &PubResponse) {
        let client = &mut self.clients[c];
        if let Some(i) = client
            .unacked
            .iter()
            .position(|(id, _)| *id == a.packet_id.get())
        {
            let (_, payload) = client.unacked.remove(i);
            if !a.reason.is_error() {
                client.seen.acked.push(payload);
            }
        }
    }

    // ---- the runtime's side -------------------------------------------

    /// Acts on a shard's outputs the way the real runtime would, except
    /// that everything racy becomes a step for later.
    pub fn drain(&mut self, shard: usize) {
        while let Some(out) = self.shards[shard].poll_output() {
            match out {
                Output::Wake(conn) => {
                    self.woken.insert((shard, conn));
                }
                // The real runtime may write at once; here the writer's
                // step comes later, as for a Wake.
                Output::Flush(conn) => {
                    *self.flushes.entry((shard, conn)).or_default() += 1;
                    self.woken.insert((shard, conn));
                }
                Output::Close(conn) => {
                    self.closing.insert((shard, conn));
                }
                Output::Authenticate { conn, .. } => self.auth_jobs.push((shard, conn)),
                Output::ReAuthenticate { conn, .. } => {
                    let now = self.now;
                    self.shards[shard].handle_reauthenticated(conn, now, Ok(None));
                }
                Output::Mesh(peer) => {
                    let n = self.shards.len();
                    while let Some(msg) = self.shards[shard].poll_mesh(peer) {
                        self.inflight[shard * n + peer.index()].push_back(msg);
                    }
                }
                Output::Cluster => {}
                Output::Persist => {
                    self.persist_jobs.insert(shard);
                }
                Output::Notice(_) => {}
            }
        }
    }

    /// With `hold_auth`: the CONNECTs authenticated since the last call.
    pub fn take_auth_jobs(&mut self) -> Vec<(usize, ConnId)> {
        std::mem::take(&mut self.auth_jobs)
    }

    /// The runtime's answer to a held CONNECT: admitted under the
    /// registry's claim `Ok(claim)`, or refused.
    pub fn admit(&mut self, shard: usize, conn: ConnId, result: Result<u64, ReasonCode>) {
        let principal = match self.client_of(shard, conn) {
            Some(c) => self.clients[c].principal.clone(),
            None => PrincipalId::anonymous(),
        };
        self.log(format!(
            "registry answers conn {conn} on shard {shard}: {result:?}"
        ));
        let result = result.map(|claim| Admission {
            permissions: Box::new(AllowAll),
            principal,
            expires_at: None,
            cluster_claim: Some(claim),
        });
        let now = self.now;
        self.shards[shard].handle_admitted(conn, now, result);
        self.drain(shard);
    }

    pub fn client_of(&self, shard: usize, conn: ConnId) -> Option<usize> {
        self.clients
            .iter()
            .position(|c| c.conn == Some((shard, conn)))
    }

    /// A writer turn: what the connection has to send reaches its client.
    fn flush(&mut self, shard: usize, conn: ConnId) {
        let mut buf = BytesMut::new();
        let now = self.now;
        while self.shards[shard].poll_transmit(conn, now, &mut buf, 64 * 1024) > 0 {}
        let Some(c) = self.client_of(shard, conn) else {
            return;
        };
        self.clients[c].inbuf.extend_from_slice(&buf);
        loop {
            let version = self.clients[c].version;
            let decoded = codec::decode_packet(&mut self.clients[c].inbuf, version, 1 << 20);
            match decoded {
                Ok(Some(p)) => self.receive(c, p),
                Ok(None) => break,
                Err(e) => self.fail(&format!("broker sent bytes the client cannot decode: {e}")),
            }
        }
    }

    /// The runtime closes the socket after the last flush.
    fn finish_close(&mut self, shard: usize, conn: ConnId) {
        self.flush(shard, conn);
        if let Some(c) = self.client_of(shard, conn) {
            self.log(format!("client {c}: broker closed conn {conn}"));
            self.clients[c].conn = None;
        }
        self.shards[shard].release(conn);
    }

    /// One racy event, chosen by the seed. Returns false when none is left.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        let mesh: Vec<usize> = (0..self.inflight.len())
            .filter(|i| !self.inflight[*i].is_empty())
            .collect();
        let persists: Vec<usize> = self.persist_jobs.iter().copied().collect();
        let auths = if self.hold_auth {
            0
        } else {
            self.auth_jobs.len()
        };
        let choices = mesh.len() + auths + self.woken.len() + self.closing.len() + persists.len();
        if choices == 0 {
            return false;
        }
        let mut pick = self.rng.below(choices);
        let now = self.now;
        let n = self.shards.len();
        if pick < mesh.len() {
            let pair = mesh[pick];
            let (from, to) = (pair / n, pair % n);
            if let Some(msg) = self.inflight[pair].pop_front() {
                self.log(format!("mesh {from}->{to}: {}", short(&msg)));
                self.shards[to].handle_mesh(ShardId::new(from), msg, now);
                self.drain(to);
            }
            return true;
        }
        pick -= mesh.len();
        if pick < auths {
            let (shard, conn) = self.auth_jobs.remove(pick);
            let principal = match self.client_of(shard, conn) {
                Some(c) => self.clients[c].principal.clone(),
                None => PrincipalId::anonymous(),
            };
            self.log(format!("auth answers conn {conn} on shard {shard}"));
            let admission = Admission {
                permissions: Box::new(AllowAll),
                principal,
                expires_at: None,
                cluster_claim: None,
            };
            self.shards[shard].handle_admitted(conn, now, Ok(admission));
            self.drain(shard);
            return true;
        }
        pick -= auths;
        if pick < self.woken.len() {
            let Some(&(shard, conn)) = self.woken.iter().nth(pick) else {
                return true;
            };
            self.woken.remove(&(shard, conn));
            self.flush(shard, conn);
            self.drain(shard);
            return true;
        }
        pick -= self.woken.len();
        if pick < persists.len() {
            let shard = persists[pick];
            self.persist_jobs.remove(&shard);
            self.write_disk(shard);
            self.drain(shard);
            return true;
        }
        pick -= persists.len();
        if let Some(&(shard, conn)) = self.closing.iter().nth(pick) {
            self.closing.remove(&(shard, conn));
            self.woken.remove(&(shard, conn));
            self.finish_close(shard, conn);
            self.drain(shard);
        }
        true
    }

    /// One group commit: everything the shard asked to persist reaches the
    /// disk, then the shard hears it is durable. One time in four the
    /// runtime rewrites the shard's log as a snapshot instead (compaction,
    /// key rotation): the shard's topics on disk become the snapshot.
    fn write_disk(&mut self, shard: usize) {
        // A rewrite waits while a queue that moved away is not yet written
        // at its new shard (the runtime's writer does the same).
        if self.rng.below(4) == 0 && !self.shards[shard].persist_rewrite_deferred() {
            // Like recovery: the old file's records stay on the disk (its
            // deletion may fail), the snapshot's clears and messages apply
            // on top of them. Queue records are per file: replaced.
            // Every batch so far reached this file (the simulated disk does
            // not fail): spilled messages are copied from it, as the
            // runtime's writer does. A copy it does not hold is a message
            // the rewrite would lose.
            let snapshot = self.shards[shard].persist_snapshot(true);
            let old = std::mem::take(&mut self.disk_queue_files[shard]);
            let mut file = Vec::new();
            for q in &snapshot.queues {
                file.extend(q.state.clone().map(QueueRec::State));
                file.extend(q.puts.iter().map(QueueRec::put));
                let queue = q.state.as_ref().map_or(0, |s| s.queue_id);
                for &want in &q.copies {
                    let put = old.iter().find(|r| {
                        matches!(r, QueueRec::Put { queue_id, seq, .. } if *queue_id == queue && *seq == want)
                    });
                    match put {
                        Some(put) => file.push(put.clone()),
                        None => panic!(
                            "shard {shard}: spilled message {want} of queue {queue} is not in the log being replaced\n{}",
                            self.trace().cloned().collect::<Vec<_>>().join("\n")
                        ),
                    }
                }
                if let Some(w) = &q.sent {
                    file.extend(w.entries.iter().map(|e| QueueRec::Sent {
                        queue_id: w.queue_id,
                        seq: e.seq,
                        released: e.released,
                    }));
                }
            }
            self.disk_queue_files[shard] = file;
            let upto = snapshot.upto;
            for topic in snapshot.clears {
                self.disk.remove(topic.as_str());
            }
            for id in snapshot.deleted_sessions {
                self.disk_sessions.remove(&*id);
                self.disk_offline.remove(&*id);
            }
            for m in snapshot.messages {
                self.disk
                    .insert(m.topic.as_str().to_owned(), m.payload.clone());
            }
            for r in snapshot.sessions {
                self.disk_queue_ids
                    .insert(r.client_id.to_string(), r.queue_id);
                self.disk_sessions
                    .insert(r.client_id.to_string(), filters_of(&r));
                self.disk_offline
                    .insert(r.client_id.to_string(), r.offline_until.is_some());
            }
            self.log(format!(
                "shard {shard} rewrote its log, durable up to {upto}"
            ));
            self.shards[shard].handle_persisted(upto);
        }
        while let Some(batch) = self.shards[shard].poll_persist() {
            for op in batch.ops {
                match op {
                    PersistOp::Retain(m) => {
                        self.disk
                            .insert(m.topic.as_str().to_owned(), m.payload.clone());
                    }
                    PersistOp::Clear(topic) => {
                        self.disk.remove(topic.as_str());
                    }
                    PersistOp::SessionPut(r) => {
                        self.disk_queue_ids
                            .insert(r.client_id.to_string(), r.queue_id);
                        self.disk_sessions
                            .insert(r.client_id.to_string(), filters_of(&r));
                        self.disk_offline
                            .insert(r.client_id.to_string(), r.offline_until.is_some());
                    }
                    PersistOp::SessionDelete(id) => {
                        self.disk_queue_ids.remove(&*id);
                        self.disk_sessions.remove(&*id);
                        self.disk_offline.remove(&*id);
                    }
                    PersistOp::QueuePut(p) => self.disk_queue_files[shard].push(QueueRec::put(&p)),
                    PersistOp::QueueDone(d) => self.disk_queue_files[shard].push(QueueRec::Done {
                        queue_id: d.queue_id,
                        seqs: d.seqs,
                    }),
                    PersistOp::QueueState(s) => {
                        self.disk_queue_files[shard].push(QueueRec::State(s))
                    }
                    PersistOp::QueueSent(w) => {
                        self.disk_queue_files[shard].extend(w.entries.iter().map(|e| {
                            QueueRec::Sent {
                                queue_id: w.queue_id,
                                seq: e.seq,
                                released: e.released,
                            }
                        }))
                    }
                }
            }
            self.log(format!("shard {shard} durable up to {}", batch.upto));
            self.shards[shard].handle_persisted(batch.upto);
        }
    }

    /// Time passes; every shard ticks.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.log(format!("time +{by:?}"));
        for shard in 0..self.shards.len() {
            let now = self.now;
            self.shards[shard].handle_tick(now);
            self.drain(shard);
        }
    }

    /// Runs racy events until none is left (bounded: a livelock fails).
    pub fn quiesce(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step() {
                return;
            }
            self.check();
        }
        self.fail("no quiescence within a million steps");
    }

    // ---- invariants ---------------------------------------------------

    /// What must hold after every step.
    pub fn check(&self) {
        let mut ids: Vec<String> = Vec::new();
        for shard in &self.shards {
            let inv = shard.inventory();
            ids.extend(inv.online.iter().map(|s| s.to_string()));
            ids.extend(inv.offline.iter().map(|s| s.to_string()));
        }
        ids.sort();
        for pair in ids.windows(2) {
            if pair[0] == pair[1] {
                self.fail(&format!("two sessions for client id {}", pair[0]));
            }
        }
        if self.inflight.iter().all(VecDeque::is_empty) {
            let first = self.shards[0].index_digest();
            for shard in &self.shards[1..] {
                if shard.index_digest() != first {
                    self.fail(&format!(
                        "index replicas differ with the mesh quiet:\n{first:?}\n{:?}",
                        shard.index_digest()
                    ));
                }
            }
        }
    }
}

fn short(msg: &MeshMsg) -> String {
    let text = format!("{msg:?}");
    text.chars().take(120).collect()
}

/// A persisted session's filters as subscribed, sorted.
/// One queue record in a shard's simulated log.
#[derive(Debug, Clone)]
pub enum QueueRec {
    Put {
        queue_id: u64,
        seq: u64,
        payload: Bytes,
    },
    Done {
        queue_id: u64,
        seqs: Vec<u64>,
    },
    State(shardmq_core::broker::QueueState),
    /// In flight; `released`: its PUBREC came (the message is delivered).
    Sent {
        queue_id: u64,
        seq: u64,
        released: bool,
    },
}

impl QueueRec {
    fn put(p: &shardmq_core::broker::QueuePut) -> QueueRec {
        QueueRec::Put {
            queue_id: p.queue_id,
            seq: p.seq,
            payload: p.queued.message.payload.clone(),
        }
    }
}

impl Sim {
    /// The payloads the disk owes `client_id`'s session, in order, as
    /// recovery would read them: the puts of the queue its record names,
    /// from every file, less every sequence number any record calls dead.
    pub fn disk_owed(&self, client_id: &str) -> Vec<Bytes> {
        let Some(&q) = self.disk_queue_ids.get(client_id) else {
            return Vec::new();
        };
        let mut puts = std::collections::BTreeMap::new();
        let mut done: BTreeSet<u64> = BTreeSet::new();
        let mut states = Vec::new();
        let mut released: BTreeSet<u64> = BTreeSet::new();
        for rec in self.disk_queue_files.iter().flatten() {
            match rec {
                QueueRec::Put {
                    queue_id,
                    seq,
                    payload,
                } if *queue_id == q => {
                    puts.insert(*seq, payload.clone());
                }
                QueueRec::Done { queue_id, seqs } if *queue_id == q => {
                    done.extend(seqs.iter().copied())
                }
                QueueRec::State(s) if s.queue_id == q => states.push(s),
                QueueRec::Sent {
                    queue_id,
                    seq,
                    released: true,
                } if *queue_id == q => {
                    released.insert(*seq);
                }
                _ => {}
            }
        }
        // A released exchange owes its PUBREL, not its message.
        puts.into_iter()
            .filter(|(seq, _)| {
                !done.contains(seq)
                    && !released.contains(seq)
                    && !states.iter().any(|s| s.is_dead(*seq))
            })
            .map(|(_, p)| p)
            .collect()
    }
}

fn filters_of(r: &shardmq_core::broker::SessionRecord) -> Vec<String> {
    r.subscriptions
        .iter()
        .map(|(raw, _)| raw.to_string())
        .collect()
}
