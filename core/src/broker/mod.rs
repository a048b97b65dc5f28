//! One shard of the broker as a sans-io state machine (quinn-proto's
//! `Endpoint` to the session's `Connection`): it owns its connections'
//! protocol state, its sessions, its slice of the client-id registry, its
//! replica of the subscription index and its retained messages. The runtime
//! feeds it bytes, answers, mesh messages and ticks through `handle_*(now,
//! ..)` and drains `poll_*()`: bytes to write, outputs, mesh messages. No
//! sockets, no threads, no clock reads; every multi-step operation that
//! needs another shard or the runtime is a continuation keyed by a
//! `RequestId`, never an `.await`.

mod cluster;
mod connect;
mod durable;
pub mod ids;
mod index;
mod input;
pub mod mesh;
pub mod metrics;
mod moves;
pub mod output;
mod pending;
pub mod queue_record;
mod reconfig;
pub mod registry;
mod restore;
mod retain;
mod route;
mod selftest;
pub mod session_record;
mod session_write;
mod sessions;
pub mod sys;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use hashbrown::HashMap;

use crate::buffer::{ShardBuffer, Store};
use crate::codec::{Inbox, ReasonCode};
use crate::limits::ClientLimits;
use crate::retained::RetainedStore;
use crate::session::{Connection, Event, SharedMessage};

pub use cluster::{ClusterStats, StreamKey, CLUSTER_BATCH_MAX};
pub use durable::{PersistBatch, PersistOp, Snapshot};
pub use ids::{ConnId, RequestId, SessionId, ShardId};
pub use input::PARTIAL_BYTES_FREE;
pub use mesh::{MeshMsg, SubKey, SubVal};
pub use metrics::Gauges;
pub use output::{Admission, Notice, Output};
pub use queue_record::{QueueDone, QueuePut, QueueSent, QueueSnapshot, QueueState};
pub use registry::{Answer, Claim, Decision, PrincipalId, Registry};
pub use restore::{RestoreError, RestoredQueue, RestoredSession};
pub use selftest::SELFTEST_PREFIX;
pub use session_record::SessionRecord;
pub use sys::ReservedTopics;

use index::Index;
use moves::{Arriving, Leaving};
use pending::Pending;
use selftest::SelfTest;
use sessions::{BufferKeys, DelayedWill, Slot};

/// Broker-wide settings every shard reads.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shards: usize,
    /// Tells this broker run apart from others in the ids it assigns to
    /// clients that send none (the runtime picks it, e.g. from the clock).
    pub instance: u64,
    pub limits: Arc<ClientLimits>,
    /// Retained topics one shard keeps at most.
    pub retained_max: usize,
    /// Bytes of retained messages one shard keeps at most (its part of
    /// `retainedMessages.maxSize`).
    pub retained_bytes_max: u64,
    /// Bytes of partial packets the shard's connections may hold past
    /// `PARTIAL_BYTES_FREE` each (derived from `memoryProfile`).
    pub partial_bytes_max: u64,
    /// Self-test probes: how often shard 0 sends a round, and how long it
    /// waits for every shard to answer. `None`: no self-test.
    pub selftest: Option<SelfTestConfig>,
    /// `persistence`; `None`: nothing is written to disk to survive a
    /// restart.
    pub persistence: Option<Arc<crate::config::Persistence>>,
}

/// `diagnostics.selfCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfTestConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

/// What the reader of a connection should do after `handle_input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Read,
    /// Wait until the connection's writer has drained its control packets
    /// (a client that sends without reading must not grow the broker's
    /// memory), then read on.
    WaitForWriter,
    /// Wait until the mesh queues to other shards have drained (a slow
    /// peer pushes back on this shard's publishers), then read on.
    WaitForMesh,
    /// The connection is over: stop reading.
    Stop,
}

/// Control packets queued for a client before its reader stops reading.
const TRANSMIT_BACKLOG_MAX: usize = 4096;
/// Data messages queued for other shards before readers wait (`Flow::WaitForMesh`).
pub const MESH_BACKLOG_MAX: usize = 1024;
/// Readahead asked for when a session with spilled messages reconnects.
const PREFETCH_BYTES: usize = 4 * 1024 * 1024;

/// One connection as the shard holds it.
#[derive(Debug)]
pub(super) struct Conn {
    machine: Connection,
    /// Socket bytes not yet decoded (a partial packet at most).
    inbox: Inbox,
    /// Bytes of partial packets charged to the shard (past
    /// `PARTIAL_BYTES_FREE`).
    partial: u64,
    /// The session attached to this connection, once CONNECT was accepted.
    session: Option<SessionId>,
    /// While non-zero the writer sends nothing: a SUBACK must not leave
    /// before every shard's index has the subscription.
    hold: u32,
    /// While non-zero the writer sends nothing, even once the connection is
    /// closing: a CONNACK, SUBACK or UNSUBACK waits for its session's write
    /// to be durable, and a connection taken over meanwhile is closed
    /// without it rather than acknowledged early.
    durable_hold: u32,
    /// A held session write came back stale (the connection was taken over
    /// meanwhile): the hold stays, and the socket closes without waiting.
    superseded: bool,
    /// Its CONNECT carried persistence's dynamic opt-in (its session's
    /// queue is persisted under `subscriberQueue` Custom).
    queue_opt_in: bool,
    /// The answer to `Output::Authenticate`, kept until the claim completes.
    admission: Option<Admission>,
    /// Who the accepted client is, for its persisted session's record.
    principal: Option<PrincipalId>,
    /// The client id being claimed or held.
    client_id: ByteString,
    /// `client_id` was assigned by the broker (the client sent none).
    assigned: bool,
    /// The CONNECT asked for a clean start (the old session is not resumed).
    clean_start: bool,
    /// The session's key in the disk buffer.
    buffer_owner: u64,
    /// A `Wake` output is pending.
    woken: bool,
    /// Wake-ups since the pending `Wake` (each a delivery, usually).
    gathered: u32,
    /// `Output::Close` was emitted.
    closing: bool,
    /// While retained queries for its new subscriptions wait for other
    /// shards: the topics live messages brought it meanwhile.
    retained_wait: Option<Box<retain::RetainedWait>>,
}

/// Deliveries a connection's writer may gather while other tasks run
/// before the runtime is asked to write them at once (`Output::Flush`).
/// PERF: in a burst the writer runs after every ready reader, and the
/// burst's first delivery waited for its last read (docs/PERFORMANCE.md,
/// "The tail with the subscriber on its own thread").
const WAKE_BATCH: u32 = 16;

/// Counters for logs and metrics; only this shard writes them, in plain
/// fields (no atomics: the runtime copies them out once a second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub connections: u64,
    /// Messages routed: clients' PUBLISHes, wills, self-test probes, `$SYS`.
    pub messages_in: u64,
    pub deliveries: u64,
    /// Messages a full queue cost: refused (strategy None) or dropped
    /// (DropOldest, counted again in `dropped_oldest`).
    pub dropped_queue_full: u64,
    pub selftest_rounds_ok: u64,
    /// Retained messages the store refused (full).
    pub retained_refused: u64,
    /// Retained changes from across the cluster older than what their topic
    /// held (last writer wins): routed, not stored.
    pub retained_stale: u64,
    /// Retained stamps from peers or the disk too far ahead of this node's
    /// clock to move it (`cluster::clock::DRIFT_MAX`).
    pub retained_stamps_ahead: u64,
    /// Connections closed for holding the most of the shard's budget for
    /// partial packets.
    pub closed_partial: u64,
    /// Clients' PUBLISH packets by QoS, and their payload bytes by QoS.
    pub publish_in: [u64; 3],
    pub publish_in_bytes: [u64; 3],
    /// Messages queued for a subscriber by the QoS they go out with, and
    /// their payload bytes (`deliveries` by QoS).
    pub deliveries_qos: [u64; 3],
    pub delivered_bytes: [u64; 3],
    pub dropped_oldest: u64,
    /// Messages whose Message Expiry Interval ran out before delivery.
    pub dropped_expired: u64,
    /// Self-test rounds some shard did not answer in time, and how long
    /// the last complete round took.
    pub selftest_rounds_failed: u64,
    pub selftest_latency_ns: u64,
    /// Messages to and from other shards (data and control).
    pub mesh_sent: u64,
    pub mesh_received: u64,
}

/// What the shard holds, for tests, the simulator and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub connections: usize,
    /// Client ids of the sessions on this shard, online or offline.
    pub online: Vec<ByteString>,
    pub offline: Vec<ByteString>,
    /// Client ids in this shard's slice of the registry.
    pub client_ids: usize,
    /// Entries in this shard's replica of the subscription index.
    pub index_entries: usize,
    pub retained: usize,
    pub retained_bytes: u64,
    /// Bytes of partial packets charged to the shard.
    pub partial_bytes: u64,
    pub wills: usize,
    /// Continuations waiting for an answer.
    pub pending: usize,
    pub memory_bytes: u64,
}

/// One shard. `S` is the disk buffer's store, the runtime's.
#[derive(Debug)]
pub struct Shard<S> {
    id: ShardId,
    config: Arc<ShardConfig>,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    sessions: HashMap<SessionId, Slot>,
    next_session: u64,
    /// client id -> where its session lives, for ids hashed to this shard;
    /// answers go to (claimant shard, request).
    registry: Registry<(ShardId, SessionId), (ShardId, RequestId)>,
    index: Index,
    retained: RetainedStore<SharedMessage>,
    /// Round-robin position per share group (group, filter).
    share_rr: HashMap<(ByteString, ByteString), usize>,
    wills: Vec<DelayedWill>,
    /// Sessions moved away, forwarding until every peer switched.
    leaving: HashMap<SessionId, Leaving>,
    /// Sessions moving here, until every peer switched.
    arriving: HashMap<SessionId, Arriving>,
    pending: HashMap<RequestId, Pending>,
    next_request: u64,
    /// Per peer, in order: what this shard has to tell it.
    outbox: Vec<VecDeque<MeshMsg>>,
    /// `MeshMsg::Deliver`s in `outbox`, all peers together.
    outbox_data: usize,
    outputs: VecDeque<Output>,
    buffer: ShardBuffer<S>,
    buffer_keys: BufferKeys,
    /// Sum of the connections' `Conn::partial`.
    partial_bytes: u64,
    selftest: SelfTest,
    /// Persisted retained messages (`persistence`).
    durable: Option<durable::Durable>,
    /// `start_startup_barrier` completed.
    startup_synced: bool,
    /// `start_stop_barrier` completed.
    stop_synced: bool,
    /// Part of a cluster (`enable_cluster`); `None` on a single node.
    cluster: Option<Box<cluster::Cluster>>,
    stats: ShardStats,
}

/// FNV-1a: stable across shards and runs, which the owner choice needs.
pub fn hash_of(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard that owns `key` (a client id, or a retained topic) among
/// `shards`; recovery uses it to hand persisted retained messages back.
pub fn owner_index(key: &str, shards: usize) -> usize {
    (hash_of(key) % shards.max(1) as u64) as usize
}

impl<S: Store> Shard<S> {
    pub fn new(id: ShardId, config: Arc<ShardConfig>, buffer: ShardBuffer<S>) -> Self {
        let takeover = config.limits.session_takeover;
        let mut shard = Shard {
            id,
            outbox: (0..config.shards).map(|_| VecDeque::new()).collect(),
            retained: RetainedStore::new(config.retained_max, config.retained_bytes_max),
            selftest: SelfTest::new(id, config.shards),
            durable: config.persistence.clone().map(durable::Durable::new),
            startup_synced: false,
            stop_synced: false,
            cluster: None,
            config,
            conns: HashMap::new(),
            next_conn: 1,
            sessions: HashMap::new(),
            next_session: 1,
            registry: Registry::new(takeover),
            index: Index::default(),
            share_rr: HashMap::new(),
            wills: Vec::new(),
            leaving: HashMap::new(),
            arriving: HashMap::new(),
            pending: HashMap::new(),
            next_request: 1,
            outbox_data: 0,
            outputs: VecDeque::new(),
            buffer,
            buffer_keys: BufferKeys::default(),
            partial_bytes: 0,
            stats: ShardStats::default(),
        };
        shard.install_probe_subscribers();
        shard
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    pub fn buffer(&self) -> &ShardBuffer<S> {
        &self.buffer
    }

    pub fn buffer_mut(&mut self) -> &mut ShardBuffer<S> {
        &mut self.buffer
    }

    // ---- connections: the runtime's side ------------------------------

    /// What the connection's reader should do now.
    pub fn flow(&self, conn: ConnId) -> Flow {
        match self.conns.get(&conn) {
            None => Flow::Stop,
            Some(c) if c.machine.is_closed() => Flow::Stop,
            Some(c) if c.machine.transmit_backlog() > TRANSMIT_BACKLOG_MAX => Flow::WaitForWriter,
            Some(_) if self.outbox_data + self.cluster_unsent() > MESH_BACKLOG_MAX => {
                Flow::WaitForMesh
            }
            Some(_) => Flow::Read,
        }
    }

    /// The network connection closed or failed.
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.machine.handle_connection_lost();
        self.log_conn_queue(conn);
        self.process_events(conn, now);
    }

    /// The broker is shutting down: DISCONNECT 0x8B to every client (v5).
    pub fn shut_down(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.machine.shut_down();
            }
            self.process_events(conn, now);
            self.wake(conn);
        }
    }

    /// The runtime is done with the connection (socket closed): forget it.
    pub fn release(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            self.partial_bytes -= c.partial;
        }
    }

    /// Encodes what the connection has to send into `buf`, up to about
    /// `bytes_max` (one write). Returns the number of packets written.
    pub fn poll_transmit(
        &mut self,
        conn: ConnId,
        now: Instant,
        buf: &mut BytesMut,
        bytes_max: usize,
    ) -> usize {
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        c.woken = false;
        if c.durable_hold > 0 {
            if !(c.superseded && c.machine.is_closed()) {
                return 0;
            }
            // Taken over while a held session write came back stale: the
            // held acknowledgements never leave, DISCONNECT 0x8E does.
            c.machine.discard_all_but_disconnect();
            c.superseded = false;
            c.durable_hold = 0;
        }
        if c.hold > 0 && !c.machine.is_closed() {
            return 0;
        }
        let expired_before = c.machine.session().map_or(0, |s| s.stats.dropped_expired);
        let mut lease = self.buffer.lease(c.buffer_owner);
        let n = c.machine.poll_transmit(now, buf, bytes_max, &mut lease);
        // Messages that expired in the queue are dropped while draining.
        let expired_after = c.machine.session().map_or(0, |s| s.stats.dropped_expired);
        self.stats.dropped_expired += expired_after.saturating_sub(expired_before);
        // Expired, lost or too large for the client: ends of persisted
        // messages.
        self.log_conn_queue(conn);
        n
    }

    /// The client id of a connection's session, once it has one.
    pub fn client_id(&self, conn: ConnId) -> Option<ByteString> {
        self.conns.get(&conn)?.machine.client_id().cloned()
    }

    /// Whether the connection's writer should keep going after a write.
    pub fn is_closing(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_none_or(|c| c.closing)
    }

    /// The next thing for the runtime to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next message for `peer`, in order.
    pub fn poll_mesh(&mut self, peer: ShardId) -> Option<MeshMsg> {
        let msg = self.outbox.get_mut(peer.index())?.pop_front()?;
        if msg.is_data() {
            self.outbox_data -= 1;
            self.release_routed_answers();
        }
        Some(msg)
    }

    /// Whether readers waiting for the mesh (`Flow::WaitForMesh`) may go on.
    pub fn mesh_has_room(&self) -> bool {
        self.outbox_data + self.cluster_unsent() <= MESH_BACKLOG_MAX / 2
    }

    /// Whether the mesh queues to other shards have room, links to other
    /// nodes aside: what a node link's reader waits for (what it routes
    /// never goes to another node, so waiting on links could deadlock two
    /// nodes that wait on each other).
    pub fn shard_mesh_has_room(&self) -> bool {
        self.outbox_data <= MESH_BACKLOG_MAX / 2
    }

    /// The earliest deadline of a connection or the shard (keep-alive,
    /// CONNECT timeout, session expiry, will delay, self-test), for a
    /// runtime that sleeps until then; `handle_tick` handles them all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self
            .conns
            .values()
            .filter_map(|c| c.machine.poll_timeout())
            .min();
        let sessions = self
            .sessions
            .values()
            .filter_map(|s| match s {
                Slot::Offline { expires_at, .. } => *expires_at,
                Slot::Online(_) => None,
            })
            .min();
        let wills = self.wills.iter().map(|w| w.at).min();
        [conns, sessions, wills, self.selftest.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: connection deadlines, session expiry, delayed wills,
    /// self-test rounds.
    pub fn handle_tick(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.machine.poll_timeout().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in due {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.machine.handle_timeout(now);
                self.process_events(conn, now);
                self.wake(conn);
            }
        }
        self.expire_sessions(now);
        self.fire_wills(now);
        self.tick_selftest(now);
        self.cluster_tick(now);
    }

    /// One message from a peer, in the order that peer sent them.
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        self.stats.mesh_received += 1;
        match msg {
            MeshMsg::Deliver {
                message,
                targets,
                request,
            } => {
                // Deliveries held for an arriving session, or forwarded after
                // one that left, answer later: the relay counts them.
                let relay = request.map(|request| {
                    self.new_request(Pending::Relay {
                        to: from,
                        request,
                        waiting: 1,
                    })
                });
                let (_, durable) = self.deliver_local(now, from, &message, &targets, false, relay);
                if let Some(relay) = relay {
                    self.answer_when_durable(durable, relay);
                }
            }
            MeshMsg::QueueSettled => self.queue_settled(),
            MeshMsg::Forward {
                message,
                targets,
                answer,
            } => {
                let (_, durable) = self.deliver_local(now, from, &message, &targets, true, None);
                if let Some(request) = answer {
                    let reason = ReasonCode::Success;
                    match durable {
                        Some(seq) => self.wait_durable_peer(seq, from, request, reason),
                        None => self.post(from, MeshMsg::PublishDone { request, reason }),
                    }
                }
            }
            MeshMsg::Moved { old, to, entries } => self.moved_arrived(from, old, to, entries),
            MeshMsg::MoveMark { session } => self.mark_arrived(from, session, now),
            MeshMsg::MarkForward { session, origin } => self.mark_forwarded(origin, session, now),
            MeshMsg::SubAdd { filter, key, val } => self.apply_sub_add(&filter, key, val),
            MeshMsg::SubRemove { filter, key } => self.apply_sub_remove(&filter, &key),
            MeshMsg::RetainSet { message, request } => {
                self.retain_set_arrived(from, message, request)
            }
            MeshMsg::RetainSync { message } => self.sync_retained(message),
            MeshMsg::ClusterPublish {
                link,
                stream,
                first_seq,
                messages,
            } => {
                let count = self.route_stream(now, link, from, stream, first_seq, messages);
                if count > 0 {
                    self.answer_routed(from, link, count);
                }
            }
            MeshMsg::ClusterRouted { link, count } => self.cluster_routed(link, count),
            MeshMsg::PublishDone { request, reason } => self.publish_answer(request, reason),
            MeshMsg::RetainedQuery { filter, request } => {
                let messages = self.retained_matches(&filter);
                self.post(from, MeshMsg::RetainedReply { request, messages });
            }
            MeshMsg::RetainedReply { request, messages } => {
                self.retained_reply(request, messages, now)
            }
            MeshMsg::Ping { request } => self.post(from, MeshMsg::Pong { request }),
            MeshMsg::Pong { request } => self.pong_arrived(request, now),
            MeshMsg::Claim {
                client_id,
                session,
                principal,
                request,
                cluster_claim,
            } => {
                let claim = Claim {
                    at: (from, session),
                    principal,
                    reply: (from, request),
                    cluster: cluster_claim,
                };
                self.claim_arrived(client_id, claim, now)
            }
            MeshMsg::ClaimReply { request, decision } => {
                self.claim_answered(request, decision, now)
            }
            MeshMsg::ClaimSettled { client_id, session } => {
                self.settle_arrived(from, &client_id, session, now)
            }
            MeshMsg::Release { client_id, session } => {
                self.session_ended_at_owner(&client_id, (from, session));
                self.registry.release(&client_id, (from, session))
            }
            MeshMsg::SessionWrite {
                client_id,
                session,
                record,
                request,
            } => {
                let reply =
                    request.map(|request| session_write::SessionReply::Peer { from, request });
                self.session_write_arrived(from, client_id, session, record, reply)
            }
            MeshMsg::WillPublished { client_id, session } => {
                self.will_published_at_owner(&client_id, (from, session))
            }
            MeshMsg::SessionWritten { request, stale } => self.session_written(request, stale),
            MeshMsg::TakeOver {
                session,
                request,
                resume_as,
            } => {
                let moving_to = resume_as.map(|s| (from, s));
                let state = self
                    .take_local(session, false, moving_to, now)
                    .map(Box::new);
                self.post(from, MeshMsg::Handover { request, state });
            }
            MeshMsg::Handover { request, state } => self.handover_arrived(request, state, now),
            MeshMsg::ProbeReply { seq } => self.probe_reply(from, seq, now),
        }
    }

    /// The runtime's answer to `Output::ReAuthenticate`: the new
    /// credential's expiry, or the reason to disconnect.
    pub fn handle_reauthenticated(
        &mut self,
        conn: ConnId,
        now: Instant,
        result: Result<Option<Instant>, ReasonCode>,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.machine.reauthenticate_done(result);
            self.process_events(conn, now);
            self.wake(conn);
        }
    }

    /// This replica of the subscription index as sorted lines
    /// (`shard/session/group filter`), to compare replicas.
    pub fn index_digest(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.index.len());
        self.index.trie.for_each(|k, v| {
            let group = k.group.as_deref().unwrap_or("-");
            lines.push(format!("{}/{}/{group} {}", k.shard, k.session, v.filter));
        });
        lines.sort();
        lines
    }

    /// Bytes the shard holds for clients: queued in memory, retained, and
    /// partial packets (cheap: for a trim decision every tick).
    pub fn held_bytes(&self) -> u64 {
        self.buffer.memory_bytes() + self.retained.bytes() + self.partial_bytes
    }

    /// What the shard holds right now.
    pub fn inventory(&self) -> Inventory {
        let mut inv = Inventory {
            connections: self.conns.len(),
            client_ids: self.registry.len(),
            index_entries: self.index.len(),
            retained: self.retained.len(),
            retained_bytes: self.retained.bytes(),
            partial_bytes: self.partial_bytes,
            wills: self.wills.len(),
            pending: self.pending.len() + self.leaving.len() + self.arriving.len(),
            memory_bytes: self.buffer.memory_bytes(),
            ..Inventory::default()
        };
        for slot in self.sessions.values() {
            match slot {
                Slot::Online(conn) => {
                    let id = self
                        .conns
                        .get(conn)
                        .and_then(|c| c.machine.client_id().cloned())
                        .unwrap_or_default();
                    inv.online.push(id);
                }
                Slot::Offline { state, .. } => inv.offline.push(state.client_id.clone()),
            }
        }
        inv
    }

    /// The sessions with expiry > 0 (those `persistence` writes): client id,
    /// whether offline, and their filters as subscribed, sorted. For tests
    /// that compare memory with the disk; not on the tick path.
    pub fn persistable_sessions(&self) -> Vec<(ByteString, bool, Vec<ByteString>)> {
        let mut out = Vec::new();
        for slot in self.sessions.values() {
            let (state, offline) = match slot {
                Slot::Online(conn) => (
                    self.conns.get(conn).and_then(|c| c.machine.session()),
                    false,
                ),
                Slot::Offline { state, .. } => (Some(&**state), true),
            };
            if let Some(state) = state.filter(|s| !s.expiry_interval.is_zero()) {
                let mut filters: Vec<ByteString> = state.subscriptions.keys().cloned().collect();
                filters.sort();
                out.push((state.client_id.clone(), offline, filters));
            }
        }
        out
    }

    // ---- internals shared by the submodules ---------------------------

    /// Acts on everything the connection's state machine asked of the broker.
    fn process_events(&mut self, conn: ConnId, now: Instant) {
        let mut subscribed = Vec::new();
        let mut unsubscribed = false;
        let mut session_changed = false;
        let mut opted_in = false;
        loop {
            let Some(event) = self
                .conns
                .get_mut(&conn)
                .and_then(|c| c.machine.poll_event())
            else {
                break;
            };
            match event {
                Event::Connect(request) => self.start_connect(conn, *request),
                Event::Publish { message, ack } => self.publish(conn, now, message, ack),
                Event::Subscribed {
                    key,
                    subscription,
                    send_retained,
                    user_properties,
                } => {
                    opted_in |= self.queue_opt_in(conn, &user_properties);
                    self.subscribed(conn, &key, &subscription);
                    if send_retained {
                        // From now on live messages may reach it: their
                        // topics are kept until its retained ones come.
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.retained_wait.get_or_insert_with(Default::default).queries += 1;
                        }
                    }
                    subscribed.push(pending::NewSubscription {
                        key,
                        subscription,
                        send_retained,
                    });
                    session_changed = true;
                }
                Event::Unsubscribed { key, filter } => {
                    self.unsubscribed(conn, &key, &filter);
                    unsubscribed = true;
                    session_changed = true;
                }
                Event::Denied(denied) => {
                    let client_id = self.client_id(conn).unwrap_or_default();
                    self.notice(Notice::Denied {
                        conn,
                        client_id,
                        denied,
                    });
                }
                Event::ReAuthenticate { method, data } => {
                    self.outputs
                        .push_back(Output::ReAuthenticate { conn, method, data });
                }
                Event::Closed {
                    reason,
                    session,
                    will,
                } => self.closed(conn, now, reason, session.map(|s| *s), will),
            }
        }
        if opted_in {
            // A queue newly selected by a SUBSCRIBE's opt-in: its id goes
            // into the session's record below, its messages to the log.
            if let Some(session) = self.conns.get(&conn).and_then(|c| c.session) {
                self.assign_queue_log(Some(conn), session);
                self.write_queue_here(Some(conn), session);
            }
        }
        if session_changed && self.session_persisted(conn) {
            // The SUBACK / UNSUBACK just queued waits for the disk.
            self.write_session(conn, true);
        }
        if !subscribed.is_empty() {
            let then = pending::AfterBarrier::Subscribed {
                conn,
                subscriptions: subscribed,
            };
            self.index_barrier(then, now);
        }
        if unsubscribed {
            self.index_barrier(pending::AfterBarrier::Unsubscribed { conn }, now);
        }
        if self.conns.get(&conn).is_some_and(|c| c.machine.is_closed()) {
            self.close(conn);
        }
    }

    /// Asks the runtime to run the connection's writer (once per turn),
    /// and to write now once `WAKE_BATCH` more wake-ups have gathered
    /// output behind the first (`Output::Flush`).
    fn wake(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.woken {
                c.woken = true;
                c.gathered = 0;
                self.outputs.push_back(Output::Wake(conn));
            } else {
                c.gathered += 1;
                if c.gathered >= WAKE_BATCH {
                    c.gathered = 0;
                    self.outputs.push_back(Output::Flush(conn));
                }
            }
        }
    }

    /// Tells the runtime the connection is over (once).
    fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.closing {
                c.closing = true;
                self.outputs.push_back(Output::Close(conn));
            }
        }
    }

    fn post(&mut self, peer: ShardId, msg: MeshMsg) {
        debug_assert_ne!(peer, self.id, "a shard never posts to itself");
        let Some(queue) = self.outbox.get_mut(peer.index()) else {
            return;
        };
        if msg.is_data() {
            self.outbox_data += 1;
        }
        self.stats.mesh_sent += 1;
        if queue.is_empty() {
            self.outputs.push_back(Output::Mesh(peer));
        }
        queue.push_back(msg);
    }

    fn peers(&self) -> impl Iterator<Item = ShardId> + 'static {
        let me = self.id;
        ShardId::all(self.config.shards).filter(move |p| *p != me)
    }

    fn new_request(&mut self, pending: Pending) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.pending.insert(id, pending);
        id
    }

    fn new_session_id(&mut self) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        id
    }

    fn owner_of(&self, key: &str) -> ShardId {
        ShardId::new(owner_index(key, self.config.shards))
    }

    fn notice(&mut self, notice: Notice) {
        self.outputs.push_back(Output::Notice(notice));
    }

    /// Sends a reason to a v5 publisher waiting for its acknowledgement.
    fn publish_done(&mut self, conn: ConnId, ack: crate::session::PublishAck, reason: ReasonCode) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.machine.publish_done(ack, reason);
        }
        self.wake(conn);
    }
}
