//! One shard: everything a core owns. Its sessions (online and offline), its
//! replica of the subscription index and of the retained store, its slice of
//! the client-id registry, and the routing of every PUBLISH its clients send.
//! Shard state is `!Send` and touched only by the shard's own tasks; other
//! shards are reached only through `MeshMsg`s.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use shardmq_core::codec::{QoS, ReasonCode};
use shardmq_core::limits::ClientLimits;
use shardmq_core::retained::RetainedStore;
use shardmq_core::session::{
    memory_cost, Connection, Delivery, Enqueued, PendingWill, SessionState, SharedMessage, SpillRef,
};
use shardmq_core::topic::{merge_overlapping, Filter, SubscriptionTrie, TopicFilter, TopicName};
use tracing::{debug, info, warn};

use crate::buffer::{BufferStats, DiskBuffer, SegmentFile};
use crate::mesh::{MeshMsg, SessionId, ShardId, SubKey, SubVal};
use crate::spill::{DiskSpill, ShardBuffer};

/// Readahead asked for when a session with spilled messages reconnects.
const PREFETCH_BYTES: usize = 4 * 1024 * 1024;
/// Reserved session id of each shard's built-in self-test subscriber.
const PROBE_SESSION: SessionId = u64::MAX;
/// Topic prefix of the self-test probes; `$` keeps them out of `#`.
pub const SELFTEST_PREFIX: &str = "$SYS/shardmq/selftest";

/// A live connection as the shard sees it: the protocol state machine plus
/// the means to wake its writer and reader tasks.
#[derive(Debug)]
pub struct ConnCell {
    pub conn: RefCell<Connection>,
    wake_tx: LocalSender<()>,
    pub wake_rx: LocalReceiver<()>,
    /// Raised when the connection is over, so the reader stops reading.
    pub closed: Cell<bool>,
    /// Wakes the timer task when a deadline may have moved earlier (CONNECT
    /// accepted, credential renewed): it otherwise sleeps to the old one.
    rearm_tx: LocalSender<()>,
    pub rearm_rx: LocalReceiver<()>,
    /// Signalled by the writer after each write, for a reader waiting on
    /// the transmit backlog.
    pub drained_tx: LocalSender<()>,
    pub drained_rx: LocalReceiver<()>,
    /// While non-zero the writer sends nothing: a SUBACK must not leave
    /// before every shard's index has the subscription.
    pub hold: Cell<u32>,
    pub closed_tx: LocalSender<()>,
    pub closed_rx: LocalReceiver<()>,
    /// The session's key in the shard's disk buffer, set by `attach`.
    pub spill_owner: Cell<u64>,
    /// Bytes of packets not yet whole this connection holds past
    /// `PARTIAL_BYTES_FREE`, charged to the shard (`Shard::hold_partial`).
    pub partial: Cell<u64>,
}

impl ConnCell {
    pub fn new(conn: Connection) -> ConnCell {
        let (wake_tx, wake_rx) = local_channel::new_bounded(1);
        let (closed_tx, closed_rx) = local_channel::new_bounded(1);
        let (drained_tx, drained_rx) = local_channel::new_bounded(1);
        let (rearm_tx, rearm_rx) = local_channel::new_bounded(1);
        ConnCell {
            conn: RefCell::new(conn),
            wake_tx,
            wake_rx,
            closed: Cell::new(false),
            drained_tx,
            drained_rx,
            rearm_tx,
            rearm_rx,
            hold: Cell::new(0),
            closed_tx,
            closed_rx,
            spill_owner: Cell::new(0),
            partial: Cell::new(0),
        }
    }

    /// Wakes the writer; a pending wake-up already covers this one.
    pub fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Makes the timer task look at `poll_timeout` again.
    pub fn rearm(&self) {
        let _ = self.rearm_tx.try_send(());
    }
}

#[derive(Debug)]
enum Slot {
    Online(Rc<ConnCell>),
    Offline {
        state: Box<SessionState>,
        expires_at: Option<Instant>,
    },
}

/// A will waiting for its delay [MQTT-3.1.3-9].
#[derive(Debug)]
struct DelayedWill {
    client_id: ByteString,
    message: SharedMessage,
    at: Instant,
}

/// A same-shard takeover's spilled records, until `attach` knows whether
/// the session was resumed (records stay, under their old key) or
/// discarded by a clean start (records are released).
#[derive(Debug)]
struct Adopting {
    owner: u64,
    refs: Vec<SpillRef>,
}

/// One shard's disk buffer figures, published every tick (logs, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferReport {
    /// The shard runs with a disk buffer (configured and opened).
    pub open: bool,
    pub encrypted: bool,
    pub disk: BufferStats,
    /// Queued bytes held in memory (`memory_cost`).
    pub memory_bytes: u64,
    /// Appends the buffer refused (full, no space, I/O).
    pub refused: u64,
    pub dropped_queue_full: u64,
}

/// Counters exported in logs (and later as metrics).
#[derive(Debug, Default)]
pub struct ShardStats {
    pub connections: Cell<u64>,
    pub messages_in: Cell<u64>,
    pub deliveries: Cell<u64>,
    pub dropped_queue_full: Cell<u64>,
    /// Retained messages the store refused (full).
    pub retained_refused: Cell<u64>,
    /// Connections closed for holding the most of the shard's budget for
    /// packets not yet whole.
    pub closed_partial: Cell<u64>,
}

/// Bytes of packets not yet whole a connection holds without drawing on
/// the shard's budget for them (`ShardConfig::partial_bytes_max`): one read
/// chunk, which is all a connection sending whole small packets ever holds.
pub const PARTIAL_BYTES_FREE: u64 = 16 * 1024;

/// Broker-wide settings every shard reads.
#[derive(Debug)]
pub struct ShardConfig {
    pub shards: usize,
    pub limits: Arc<ClientLimits>,
    pub retained_max: usize,
    /// Bytes of retained messages this shard keeps (its part of
    /// `retainedMessages.maxSize`).
    pub retained_bytes_max: u64,
    /// Bytes of queued messages the shard keeps in memory
    /// (`memory_budget_bytes(memoryProfile)`), with or without a disk buffer.
    pub memory_budget_bytes: u64,
    /// Bytes of packets not yet whole the shard's connections may hold
    /// beyond `PARTIAL_BYTES_FREE` each (`connection::Partial`).
    pub partial_bytes_max: u64,
    pub selftest_interval: Option<Duration>,
    /// One slot per shard, written every tick.
    pub buffer_reports: Arc<Mutex<Vec<BufferReport>>>,
    /// `None` without `diskBackedMessageBuffer`.
    pub buffer: Option<crate::server::BufferSetup>,
}

pub struct Shard {
    pub id: ShardId,
    pub config: Arc<ShardConfig>,
    senders: Senders<MeshMsg>,
    /// Per-peer FIFO for control messages that must not block the caller
    /// (mesh handlers must never await a full peer: that could deadlock).
    outbox: Vec<Option<LocalSender<MeshMsg>>>,
    index: RefCell<SubscriptionTrie<SubKey, SubVal>>,
    retained: RefCell<RetainedStore<SharedMessage>>,
    sessions: RefCell<HashMap<SessionId, Slot>>,
    /// What each session of this shard has in the index, by raw filter.
    indexed: RefCell<HashMap<SessionId, HashMap<ByteString, Filter>>>,
    /// client id -> where its session lives, for ids hashed to this shard.
    registry: RefCell<HashMap<ByteString, (ShardId, SessionId)>>,
    next_session: Cell<SessionId>,
    next_request: Cell<u64>,
    pending: RefCell<HashMap<u64, LocalSender<MeshMsg>>>,
    /// Round-robin position per share group (group, filter).
    share_rr: RefCell<HashMap<(ByteString, ByteString), usize>>,
    wills: RefCell<Vec<DelayedWill>>,
    pub stats: ShardStats,
    pub shutdown: Arc<AtomicBool>,
    pub conns: RefCell<Vec<std::rc::Weak<ConnCell>>>,
    probe_seq: Cell<u64>,
    probe_seen: RefCell<HashMap<u64, Vec<bool>>>,
    pub probes_ok: Arc<AtomicU64>,
    /// Sum of the connections' `ConnCell::partial`.
    partial_bytes: Cell<u64>,
    /// Highest queued, retained and partial bytes seen since the heap was
    /// last trimmed (`tick`).
    held_peak: Cell<u64>,
    /// The queues' memory accounting, and the disk buffer when there is one
    /// (`diskBackedMessageBuffer` configured and opened).
    buffer: RefCell<ShardBuffer>,
    /// Buffer keys that differ from the session id: a session resumed on
    /// this shard keeps the key its records were written under. Session ids
    /// are never reused, so a key stays unique among live sessions.
    spill_owners: RefCell<HashMap<SessionId, u64>>,
    adopting: RefCell<HashMap<SessionId, Adopting>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn hash_of(s: &str) -> u64 {
    // FNV-1a: stable across shards and runs, which the owner choice needs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Shard {
    pub fn new(
        id: ShardId,
        config: Arc<ShardConfig>,
        senders: Senders<MeshMsg>,
        shutdown: Arc<AtomicBool>,
        probes_ok: Arc<AtomicU64>,
    ) -> Rc<Shard> {
        let retained_max = config.retained_max;
        let retained_bytes_max = config.retained_bytes_max;
        let memory_budget_bytes = config.memory_budget_bytes;
        let shard = Rc::new(Shard {
            id,
            config,
            senders,
            outbox: Vec::new(),
            index: RefCell::new(SubscriptionTrie::new()),
            retained: RefCell::new(RetainedStore::new(retained_max, retained_bytes_max)),
            sessions: RefCell::new(HashMap::new()),
            indexed: RefCell::new(HashMap::new()),
            registry: RefCell::new(HashMap::new()),
            next_session: Cell::new(1),
            next_request: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
            share_rr: RefCell::new(HashMap::new()),
            wills: RefCell::new(Vec::new()),
            stats: ShardStats::default(),
            shutdown,
            conns: RefCell::new(Vec::new()),
            probe_seq: Cell::new(0),
            probe_seen: RefCell::new(HashMap::new()),
            probes_ok,
            partial_bytes: Cell::new(0),
            held_peak: Cell::new(0),
            buffer: RefCell::new(ShardBuffer::new(None, memory_budget_bytes)),
            spill_owners: RefCell::new(HashMap::new()),
            adopting: RefCell::new(HashMap::new()),
        });
        shard.install_probe_subscriber();
        shard
    }

    /// Starts one FIFO sender task per peer; call once inside the executor.
    pub fn start_outboxes(self: &mut Rc<Shard>) {
        let n = self.config.shards;
        let mut outbox = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for peer in 0..n {
            if peer == self.id {
                outbox.push(None);
                continue;
            }
            let (tx, rx) = local_channel::new_unbounded::<MeshMsg>();
            outbox.push(Some(tx));
            receivers.push((peer, rx));
        }
        if let Some(shard) = Rc::get_mut(self) {
            shard.outbox = outbox;
        }
        for (peer, rx) in receivers {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    if shard.senders.send_to(peer, msg).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    }

    /// Gives the shard its disk buffer; call before it has sessions.
    pub fn install_buffer(&self, buffer: DiskBuffer) {
        self.buffer.borrow_mut().disk = Some(DiskSpill { buffer, refused: 0 });
    }

    fn spill_owner(&self, session: SessionId) -> u64 {
        self.spill_owners
            .borrow()
            .get(&session)
            .copied()
            .unwrap_or(session)
    }

    /// `Connection::poll_transmit` with the shard's disk buffer, so a
    /// session drains what it spilled. The writer task calls this.
    pub fn poll_transmit(
        &self,
        cell: &ConnCell,
        now: Instant,
        buf: &mut bytes::BytesMut,
        bytes_max: usize,
    ) -> usize {
        let mut conn = cell.conn.borrow_mut();
        let mut b = self.buffer.borrow_mut();
        let mut ctx = b.ctx(cell.spill_owner.get());
        conn.poll_transmit_with(now, buf, bytes_max, Some(&mut ctx))
    }

    fn post(&self, peer: ShardId, msg: MeshMsg) {
        if let Some(Some(tx)) = self.outbox.get(peer) {
            let _ = tx.try_send(msg);
        }
    }

    /// Sends to a peer, waiting while its queue is full: this is how a
    /// publisher is pushed back, never by dropping a message.
    async fn send(&self, peer: ShardId, msg: MeshMsg) {
        if self.senders.send_to(peer, msg).await.is_err() {
            warn!(shard = self.id, peer, "mesh peer closed");
        }
    }

    fn broadcast(&self, make: impl Fn() -> MeshMsg) {
        for peer in 0..self.config.shards {
            if peer != self.id {
                self.post(peer, make());
            }
        }
    }

    fn registry_owner(&self, client_id: &str) -> ShardId {
        (hash_of(client_id) % self.config.shards as u64) as usize
    }

    fn retained_owner(&self, topic: &str) -> ShardId {
        (hash_of(topic) % self.config.shards as u64) as usize
    }

    fn new_session_id(&self) -> SessionId {
        let id = self.next_session.get();
        self.next_session.set(id + 1);
        id
    }

    fn new_request(&self) -> (u64, LocalReceiver<MeshMsg>) {
        let id = self.next_request.get();
        self.next_request.set(id + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        (id, rx)
    }

    fn complete_request(&self, request: u64, msg: MeshMsg) {
        if let Some(tx) = self.pending.borrow_mut().remove(&request) {
            let _ = tx.try_send(msg);
        }
    }

    // ---- sessions -----------------------------------------------------

    /// Decides a CONNECT: claims the client id broker-wide, takes the old
    /// session over wherever it lives, and returns it with the new id.
    pub async fn claim_session(
        self: &Rc<Shard>,
        client_id: &ByteString,
        now: Instant,
    ) -> (SessionId, Option<SessionState>) {
        let session = self.new_session_id();
        let owner = self.registry_owner(client_id);
        let previous = if owner == self.id {
            self.registry
                .borrow_mut()
                .insert(client_id.clone(), (self.id, session))
        } else {
            let (request, rx) = self.new_request();
            self.post(
                owner,
                MeshMsg::Claim {
                    client_id: client_id.clone(),
                    shard: self.id,
                    session,
                    request,
                },
            );
            match rx.recv().await {
                Some(MeshMsg::ClaimReply { previous, .. }) => previous,
                _ => None,
            }
        };
        let state = match previous {
            None => None,
            Some((shard, old)) if shard == self.id => {
                let state = self.take_local(old, true);
                if let Some(st) = state.as_ref().filter(|st| st.buffer_records() > 0) {
                    self.adopting.borrow_mut().insert(
                        session,
                        Adopting {
                            owner: self.spill_owner(old),
                            refs: st.spilled_refs(),
                        },
                    );
                }
                self.spill_owners.borrow_mut().remove(&old);
                state
            }
            Some((shard, old)) => {
                let (request, rx) = self.new_request();
                self.post(
                    shard,
                    MeshMsg::TakeOver {
                        session: old,
                        reply_to: self.id,
                        request,
                        at: now,
                    },
                );
                match rx.recv().await {
                    Some(MeshMsg::Handover { state, .. }) => state.map(|b| *b),
                    _ => None,
                }
            }
        };
        // A will with a delay is not sent if the session resumes in time
        // [MQTT-3.1.3-9]; the new connection cancels it wherever we are.
        self.wills.borrow_mut().retain(|w| w.client_id != client_id);
        (session, state)
    }

    /// Takes a session of this shard away from its connection (takeover)
    /// or from the offline store, removing its subscriptions from the index.
    /// For another shard (`stays` false) its spilled messages are read back
    /// into memory first: buffer keys and records are per shard.
    fn take_local(&self, session: SessionId, stays: bool) -> Option<SessionState> {
        let slot = self.sessions.borrow_mut().remove(&session)?;
        let (state, closed_will) = match slot {
            Slot::Online(cell) => {
                let mut conn = cell.conn.borrow_mut();
                conn.take_over();
                let mut state = None;
                let mut will = None;
                while let Some(ev) = conn.poll_event() {
                    if let shardmq_core::session::Event::Closed {
                        session, will: w, ..
                    } = ev
                    {
                        state = session;
                        will = w;
                    }
                }
                drop(conn);
                cell.closed.set(true);
                let _ = cell.closed_tx.try_send(());
                cell.wake();
                (state, will)
            }
            Slot::Offline { state, .. } => (Some(*state), None),
        };
        let mut state = state;
        if let Some(st) = state.as_mut() {
            let mut b = self.buffer.borrow_mut();
            if !stays {
                if st.buffer_records() > 0 {
                    info!(shard = self.id, client = %st.client_id, messages = st.buffer_records(),
                        "reading spilled messages back for a takeover by another shard");
                }
                st.unspill(&mut b.ctx(self.spill_owner(session)));
                self.spill_owners.borrow_mut().remove(&session);
            }
            // The state leaves this shard's accounting; `attach` adds it
            // back if it resumes here.
            b.memory_bytes = b.memory_bytes.saturating_sub(st.memory_bytes());
        }
        self.unindex_by_key(session);
        // [MQTT-3.1.4-3] the taken-over connection's will is published,
        // unless it has a delay and the session goes on (it does here).
        if let Some(will) = closed_will {
            if will.delay.is_zero() {
                self.publish_internal(will.message);
            }
        }
        state
    }

    /// Registers a connected session and indexes its subscriptions.
    pub fn attach(&self, session: SessionId, cell: Rc<ConnCell>) {
        self.attach_buffer(session, &cell);
        if let Some(state) = cell.conn.borrow().session() {
            for (raw, sub) in state.subscriptions() {
                self.index_add(
                    session,
                    &state.client_id,
                    raw,
                    &sub.filter,
                    sub.options,
                    sub.id,
                );
            }
        }
        self.sessions
            .borrow_mut()
            .insert(session, Slot::Online(cell));
    }

    /// Settles the buffer side of a session joining this shard: its key,
    /// its memory, and what a clean start threw away.
    fn attach_buffer(&self, session: SessionId, cell: &ConnCell) {
        let adopting = self.adopting.borrow_mut().remove(&session);
        let mut b = self.buffer.borrow_mut();
        let conn = cell.conn.borrow();
        let state = conn.session();
        let owner = match adopting {
            // INVARIANT: nothing runs between `take_local` and here, so a
            // resumed session holds exactly the adopted records (queued, in
            // flight and retired), under the key they were written with.
            Some(a) if conn.session_present() => {
                self.spill_owners.borrow_mut().insert(session, a.owner);
                a.owner
            }
            Some(a) => {
                // Clean start: the old session and its records are gone.
                for r in a.refs {
                    b.release(r);
                }
                session
            }
            None => session,
        };
        cell.spill_owner.set(owner);
        if let Some(state) = state {
            b.memory_bytes += state.memory_bytes();
            if let (Some(first), Some(disk)) = (state.first_spilled_ref(), b.disk.as_mut()) {
                // Readahead for the drain that is about to start.
                shardmq_core::session::Spill::prefetch(disk, first, PREFETCH_BYTES);
            }
        }
        drop(conn);
        if b.memory_bytes > b.memory_budget_bytes {
            // A session from another shard brought its whole queue in memory.
            let limit = self.config.limits.queue;
            if let Some(state) = cell.conn.borrow_mut().session_mut() {
                state.spill_excess(&limit, &mut b.ctx(owner));
            }
        }
    }

    /// A connection ended: keep its session offline, or end it.
    pub fn detach(
        &self,
        session: SessionId,
        client_id: &ByteString,
        state: Option<SessionState>,
        will: Option<PendingWill>,
        now: Instant,
    ) {
        let cell = match self.sessions.borrow().get(&session) {
            Some(Slot::Online(cell)) => cell.clone(),
            // Taken over: the new owner has the state; nothing to do here.
            _ => return,
        };
        if state.is_none() {
            let ended = cell.conn.borrow_mut().take_ended_session();
            self.end_session_buffer(session, ended);
        }
        let expiry = state.as_ref().map(|s| s.expiry_interval);
        match state {
            Some(mut state) => {
                // Records of exchanges acknowledged since the writer's last
                // turn: released now, not when the session comes back.
                state.release_retired(&mut self.buffer.borrow_mut().ctx(self.spill_owner(session)));
                let expires_at = now.checked_add(state.expiry_interval);
                self.sessions.borrow_mut().insert(
                    session,
                    Slot::Offline {
                        state: Box::new(state),
                        expires_at,
                    },
                );
            }
            None => {
                self.sessions.borrow_mut().remove(&session);
                self.unindex_by_key(session);
                self.release(client_id, session);
            }
        }
        if let Some(will) = will {
            // Published after its delay, or when the session ends if sooner.
            let delay = match expiry {
                Some(e) => will.delay.min(e),
                None => Duration::ZERO,
            };
            if delay.is_zero() {
                self.publish_internal(will.message);
            } else if let Some(at) = now.checked_add(delay) {
                self.wills.borrow_mut().push(DelayedWill {
                    client_id: client_id.clone(),
                    message: will.message,
                    at,
                });
            }
        }
    }

    fn release(&self, client_id: &ByteString, session: SessionId) {
        let owner = self.registry_owner(client_id);
        if owner == self.id {
            self.release_local(client_id, self.id, session);
        } else {
            self.post(
                owner,
                MeshMsg::Release {
                    client_id: client_id.clone(),
                    shard: self.id,
                    session,
                },
            );
        }
    }

    fn release_local(&self, client_id: &ByteString, shard: ShardId, session: SessionId) {
        let mut reg = self.registry.borrow_mut();
        if reg.get(client_id) == Some(&(shard, session)) {
            reg.remove(client_id);
        }
    }

    /// Expires offline sessions and fires delayed wills; called periodically.
    pub fn tick(&self, now: Instant) {
        self.conns.borrow_mut().retain(|w| w.strong_count() > 0);
        let expired: Vec<(SessionId, ByteString)> = self
            .sessions
            .borrow()
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Offline {
                    state,
                    expires_at: Some(at),
                } if *at <= now => Some((*id, state.client_id.clone())),
                _ => None,
            })
            .collect();
        for (id, client_id) in expired {
            debug!(shard = self.id, client = %client_id, "session expired");
            let slot = self.sessions.borrow_mut().remove(&id);
            if let Some(Slot::Offline { state, .. }) = slot {
                self.end_session_buffer(id, Some(*state));
            }
            self.unindex_by_key(id);
            self.release(&client_id, id);
        }
        let due: Vec<SharedMessage> = {
            let mut wills = self.wills.borrow_mut();
            let (due, keep): (Vec<_>, Vec<_>) = wills.drain(..).partition(|w| w.at <= now);
            *wills = keep;
            due.into_iter().map(|w| w.message).collect()
        };
        for message in due {
            self.publish_internal(message);
        }
        self.tick_buffer();
        self.trim_heap();
    }

    /// A connection now holds `held` bytes of packets not yet whole. What is
    /// past `PARTIAL_BYTES_FREE` is charged to the shard; past the shard's
    /// budget, the connections holding the most are closed (this one
    /// included) until it is met. Closing, not waiting: connections waiting
    /// for each other's budget would wait forever, and an unfinished packet
    /// only ever completes by reading more of it.
    pub fn hold_partial(&self, cell: &ConnCell, held: u64) {
        let charge = held.saturating_sub(PARTIAL_BYTES_FREE);
        let before = cell.partial.replace(charge);
        let mut total = self.partial_bytes.get() - before + charge;
        self.partial_bytes.set(total);
        let max = self.config.partial_bytes_max;
        if total <= max {
            return;
        }
        let mut holders: Vec<Rc<ConnCell>> = self
            .conns
            .borrow()
            .iter()
            .filter_map(std::rc::Weak::upgrade)
            .filter(|c| c.partial.get() > 0)
            .collect();
        holders.sort_by_key(|c| std::cmp::Reverse(c.partial.get()));
        for victim in holders {
            if total <= max {
                break;
            }
            // Its reader frees the bytes when it sees the close, soon;
            // they stop counting now, so they are not reclaimed twice.
            let bytes = victim.partial.replace(0);
            total -= bytes;
            let closed = &self.stats.closed_partial;
            closed.set(closed.get() + 1);
            warn!(
                shard = self.id,
                client = %victim.conn.borrow().client_id().map(|c| c.to_string()).unwrap_or_default(),
                partial_bytes = bytes + PARTIAL_BYTES_FREE,
                shard_partial_bytes_max = max,
                "closing the connection holding the most of a packet not yet received: \
                 the shard's budget for partial packets (memoryProfile) is used up"
            );
            victim.closed.set(true);
            let _ = victim.closed_tx.try_send(());
            victim.wake();
        }
        self.partial_bytes.set(total);
    }

    /// Gives freed heap back to the system once the shard's queues,
    /// retained store and partial packets shrank by `trim::TRIM_AFTER_BYTES`
    /// from their peak (sampled each tick).
    fn trim_heap(&self) {
        let held = self.buffer.borrow().memory_bytes
            + self.retained.borrow().bytes()
            + self.partial_bytes.get();
        let peak = self.held_peak.get().max(held);
        if peak - held >= crate::trim::TRIM_AFTER_BYTES {
            crate::trim::trim_soon(self.id, peak - held);
            self.held_peak.set(held);
        } else {
            self.held_peak.set(peak);
        }
    }

    /// Releases what an ending session holds in the buffer and in memory.
    fn end_session_buffer(&self, session: SessionId, state: Option<SessionState>) {
        let owner = self.spill_owner(session);
        self.spill_owners.borrow_mut().remove(&session);
        if let Some(mut state) = state {
            state.discard_queue(&mut self.buffer.borrow_mut().ctx(owner));
        }
    }

    /// Seals and flushes the pending block, asks for the next segment file
    /// off the shard, and publishes the buffer's figures.
    fn tick_buffer(&self) {
        let mut b = self.buffer.borrow_mut();
        let mut report = BufferReport {
            dropped_queue_full: self.stats.dropped_queue_full.get(),
            memory_bytes: b.memory_bytes,
            ..BufferReport::default()
        };
        if let Some(disk) = b.disk.as_mut() {
            if let Err(e) = disk.buffer.flush() {
                warn!(shard = self.id, error = %e, "disk buffer flush failed");
            }
            // Spares only once the buffer is in use: an idle broker keeps
            // no preallocated files.
            let in_use = disk.buffer.stats().segments > 0;
            if let Some(req) = in_use.then(|| disk.buffer.spare_request()).flatten() {
                let me = self.me();
                glommio::spawn_local(async move {
                    let file = glommio::executor()
                        .spawn_blocking(move || {
                            let file = SegmentFile::create(&req.path, req.bytes);
                            if let Ok(f) = &file {
                                f.prefault();
                            }
                            file
                        })
                        .await;
                    if let Some(me) = &me {
                        if let Some(disk) = me.buffer.borrow_mut().disk.as_mut() {
                            disk.buffer.install_spare(file);
                        }
                    }
                })
                .detach();
            }
            report.open = true;
            report.encrypted = disk.buffer.encrypted();
            report.disk = disk.buffer.stats();
            report.refused = disk.refused;
        }
        drop(b);
        if let Ok(mut reports) = self.config.buffer_reports.lock() {
            if let Some(slot) = reports.get_mut(self.id) {
                *slot = report;
            }
        }
    }

    // ---- subscription index -------------------------------------------

    fn sub_key(&self, session: SessionId, filter: &Filter) -> SubKey {
        SubKey {
            shard: self.id,
            session,
            group: match filter {
                Filter::Shared { group, .. } => Some(group.clone()),
                Filter::Plain(_) => None,
            },
        }
    }

    pub fn index_add(
        &self,
        session: SessionId,
        client_id: &ByteString,
        raw: &ByteString,
        filter: &Filter,
        options: shardmq_core::codec::SubscriptionOptions,
        id: Option<u32>,
    ) {
        let key = self.sub_key(session, filter);
        let val = SubVal {
            options,
            id,
            client_id: client_id.clone(),
            filter: raw.clone(),
        };
        let tf = filter.topic_filter().clone();
        self.indexed
            .borrow_mut()
            .entry(session)
            .or_default()
            .insert(raw.clone(), filter.clone());
        self.index
            .borrow_mut()
            .insert(&tf, key.clone(), val.clone());
        self.broadcast(|| MeshMsg::SubAdd {
            filter: tf.clone(),
            key: key.clone(),
            val: val.clone(),
        });
    }

    /// Removes one subscription (UNSUBSCRIBE).
    pub fn unsubscribe(&self, session: SessionId, raw: &ByteString, filter: &Filter) {
        if let Some(m) = self.indexed.borrow_mut().get_mut(&session) {
            m.remove(raw);
        }
        self.index_remove(session, filter);
    }

    fn index_remove(&self, session: SessionId, filter: &Filter) {
        let key = self.sub_key(session, filter);
        let tf = filter.topic_filter().clone();
        self.index.borrow_mut().remove(&tf, &key);
        self.broadcast(|| MeshMsg::SubRemove {
            filter: tf.clone(),
            key: key.clone(),
        });
    }

    /// Removes every subscription indexed for a session of this shard.
    fn unindex_by_key(&self, session: SessionId) {
        let filters = self
            .indexed
            .borrow_mut()
            .remove(&session)
            .unwrap_or_default();
        for filter in filters.into_values() {
            self.index_remove(session, &filter);
        }
    }

    fn install_probe_subscriber(&self) {
        let Ok(filter) = TopicFilter::new(format!("{SELFTEST_PREFIX}/{}", self.id).into()) else {
            return;
        };
        let key = SubKey {
            shard: self.id,
            session: PROBE_SESSION,
            group: None,
        };
        let val = SubVal {
            options: shardmq_core::codec::SubscriptionOptions::default(),
            id: None,
            client_id: ByteString::new(),
            filter: filter.as_byte_string().clone(),
        };
        // Every shard installs its own probe subscriber in every replica at
        // start-up (deterministic, so no delta is needed).
        for shard in 0..self.config.shards {
            let Ok(f) = TopicFilter::new(format!("{SELFTEST_PREFIX}/{shard}").into()) else {
                continue;
            };
            let mut k = key.clone();
            k.shard = shard;
            self.index.borrow_mut().insert(&f, k, val.clone());
        }
    }

    // ---- routing ------------------------------------------------------

    /// Routes a message to every matching subscriber on every shard and, if
    /// retained, to the retained owner. Waits while a peer's queue is full.
    /// Returns whether anyone matched (v5 0x10 No matching subscribers).
    pub async fn route(&self, message: &SharedMessage, now: Instant) -> ReasonCode {
        self.stats.messages_in.set(self.stats.messages_in.get() + 1);
        let mut retain_refused = false;
        if message.retain {
            let owner = self.retained_owner(message.topic.as_str());
            if owner == self.id {
                retain_refused = !self.apply_retained(message.clone());
            } else {
                let (request, rx) = self.new_request();
                self.post(
                    owner,
                    MeshMsg::RetainSet {
                        message: message.clone(),
                        reply_to: self.id,
                        request,
                    },
                );
                // Once the publisher is acknowledged, a new subscriber
                // anywhere must see it: wait until the owner has stored it,
                // and learn whether it did.
                retain_refused = matches!(
                    rx.recv().await,
                    Some(MeshMsg::RetainSetReply { stored: false, .. })
                );
            }
        }
        let mut per_shard: Vec<Vec<(SessionId, Delivery)>> = vec![Vec::new(); self.config.shards];
        let mut shared: Vec<(SubKey, SubVal)> = Vec::new();
        let mut matched = false;
        let mut rejected = false;
        {
            let index = self.index.borrow();
            index.for_each_match_grouped(&message.topic, |key, vals| {
                if key.group.is_some() {
                    for v in vals {
                        shared.push((key.clone(), (*v).clone()));
                    }
                    return;
                }
                // [MQTT-3.8.3-3] No Local: not back to the publisher.
                // PERF: filtered lazily; no allocation per subscriber.
                let vals = vals
                    .iter()
                    .copied()
                    .filter(|v| !(v.options.no_local && v.client_id == message.origin));
                if let Some(d) = merge_overlapping(vals) {
                    per_shard[key.shard].push((key.session, to_delivery(d)));
                    matched = true;
                }
            });
        }
        if !shared.is_empty() {
            self.pick_shared(&mut shared, &mut per_shard);
            matched = true;
        }
        for (shard, targets) in per_shard.into_iter().enumerate() {
            if targets.is_empty() {
                continue;
            }
            if shard == self.id {
                rejected |= self.deliver_local(message, &targets, now);
            } else {
                self.send(
                    shard,
                    MeshMsg::Deliver {
                        message: message.clone(),
                        targets,
                    },
                )
                .await;
            }
        }
        if rejected || retain_refused {
            // A subscriber's queue (memory and disk buffer) is full and its
            // strategy is None, or the retained store is full: push the v5
            // publisher back (v5 §3.4.2.1 0x97); current subscribers still
            // got the message. Subscribers' queues on other shards are not
            // counted here.
            ReasonCode::QuotaExceeded
        } else if matched {
            ReasonCode::Success
        } else {
            ReasonCode::NoMatchingSubscribers
        }
    }

    /// One member per share group, round-robin over the group's members on
    /// every shard (v5 §4.8.2).
    fn pick_shared(
        &self,
        shared: &mut [(SubKey, SubVal)],
        per_shard: &mut [Vec<(SessionId, Delivery)>],
    ) {
        shared.sort_by(|a, b| {
            (&a.0.group, &a.1.filter, a.0.shard, a.0.session).cmp(&(
                &b.0.group,
                &b.1.filter,
                b.0.shard,
                b.0.session,
            ))
        });
        let mut rr = self.share_rr.borrow_mut();
        let mut start = 0;
        while start < shared.len() {
            let group = shared[start].0.group.clone().unwrap_or_default();
            let filter = shared[start].1.filter.clone();
            let mut end = start;
            while end < shared.len()
                && shared[end].0.group.as_ref() == Some(&group)
                && shared[end].1.filter == filter
            {
                end += 1;
            }
            let counter = rr.entry((group, filter)).or_insert(0);
            let pick = &shared[start + (*counter % (end - start))];
            *counter = counter.wrapping_add(1);
            let d = Delivery {
                granted_qos: pick.1.options.qos,
                retain_as_published: pick.1.options.retain_as_published,
                from_retained: false,
                subscription_ids: pick.1.id.into_iter().collect(),
            };
            per_shard[pick.0.shard].push((pick.0.session, d));
            start = end;
        }
    }

    /// Offers `message` to this shard's targets; true if a queue refused it.
    fn deliver_local(
        &self,
        message: &SharedMessage,
        targets: &[(SessionId, Delivery)],
        now: Instant,
    ) -> bool {
        let mut sessions = self.sessions.borrow_mut();
        let mut b = self.buffer.borrow_mut();
        let limit = &self.config.limits.queue;
        let mut rejected = false;
        for (session, delivery) in targets {
            if *session == PROBE_SESSION {
                self.probe_arrived(message);
                continue;
            }
            // DropOldest may drop several messages for one arrival (bytes
            // come back one message, and disk space one segment, at a time).
            let mut extra_drops = 0;
            let outcome = match sessions.get_mut(session) {
                Some(Slot::Online(cell)) => {
                    let mut conn = cell.conn.borrow_mut();
                    let before = dropped_of(conn.session());
                    let mut ctx = b.ctx(cell.spill_owner.get());
                    let outcome = conn.deliver_with(now, message, delivery, Some(&mut ctx));
                    extra_drops = dropped_of(conn.session()) - before;
                    drop(conn);
                    cell.wake();
                    outcome
                }
                Some(Slot::Offline { state, .. }) => {
                    let before = state.stats.dropped_queue_full;
                    let mut ctx = b.ctx(self.spill_owner(*session));
                    let outcome =
                        state.enqueue_with(now, message, delivery, false, limit, Some(&mut ctx));
                    extra_drops = state.stats.dropped_queue_full - before;
                    outcome
                }
                // Gone since the publisher's shard matched it (taken over or
                // ended): the index delta is on its way.
                None => Enqueued::Discarded,
            };
            rejected |= outcome == Enqueued::RejectedQueueFull;
            self.count(outcome);
            if extra_drops > 1 {
                let d = &self.stats.dropped_queue_full;
                d.set(d.get() + extra_drops - 1);
            }
        }
        rejected
    }

    fn count(&self, outcome: Enqueued) {
        match outcome {
            Enqueued::Queued => self.stats.deliveries.set(self.stats.deliveries.get() + 1),
            Enqueued::DroppedOldest => {
                self.stats.deliveries.set(self.stats.deliveries.get() + 1);
                self.stats
                    .dropped_queue_full
                    .set(self.stats.dropped_queue_full.get() + 1);
            }
            Enqueued::RejectedQueueFull => self
                .stats
                .dropped_queue_full
                .set(self.stats.dropped_queue_full.get() + 1),
            Enqueued::Discarded => {}
        }
    }

    /// Routes a message the broker makes itself (wills, probes) without
    /// blocking the caller.
    fn publish_internal(&self, message: SharedMessage) {
        let shard = self.me();
        if let Some(shard) = shard {
            glommio::spawn_local(async move {
                shard.route(&message, Instant::now()).await;
            })
            .detach();
        }
    }

    fn me(&self) -> Option<Rc<Shard>> {
        SHARD.with(|s| s.borrow().clone())
    }

    // ---- retained -----------------------------------------------------

    /// Stores (or clears) a retained message of a topic this shard owns;
    /// false when the store refused it (full).
    fn apply_retained(&self, message: SharedMessage) -> bool {
        let mut store = self.retained.borrow_mut();
        // [MQTT-3.3.1-10/-11] an empty retained payload clears the topic.
        if message.payload.is_empty() {
            store.clear(&message.topic);
            return true;
        }
        let bytes = memory_cost(&message);
        let Err(e) = store.set(message.topic.clone(), message.clone(), bytes) else {
            return true;
        };
        let refused = &self.stats.retained_refused;
        refused.set(refused.get() + 1);
        // A publisher filling the store could fill the log too: the first
        // refusal, then one line per 1024.
        if refused.get() % 1024 == 1 {
            warn!(
                shard = self.id,
                topic = %message.topic,
                client = %message.origin,
                bytes,
                retained_bytes = store.bytes(),
                retained = store.len(),
                refused = refused.get(),
                error = %e,
                "retained message refused (retainedMessages.maxSize, docs/CONFIG.md)"
            );
        }
        false
    }

    fn retained_matches(&self, filter: &TopicFilter) -> Vec<SharedMessage> {
        let mut out = Vec::new();
        self.retained
            .borrow()
            .for_each_match(filter, |_, m| out.push(m.clone()));
        out
    }

    /// Delivers the retained messages matching a new subscription, asking
    /// every shard for the topics it owns.
    pub async fn send_retained(
        &self,
        cell: &ConnCell,
        filter: &TopicFilter,
        options: shardmq_core::codec::SubscriptionOptions,
        id: Option<u32>,
    ) {
        let mut matches = self.retained_matches(filter);
        let mut waits = Vec::new();
        for peer in (0..self.config.shards).filter(|p| *p != self.id) {
            let (request, rx) = self.new_request();
            self.post(
                peer,
                MeshMsg::RetainedQuery {
                    filter: filter.clone(),
                    reply_to: self.id,
                    request,
                },
            );
            waits.push(rx);
        }
        for rx in waits {
            if let Some(MeshMsg::RetainedReply { messages, .. }) = rx.recv().await {
                matches.extend(messages);
            }
        }
        if matches.is_empty() {
            return;
        }
        let delivery = Delivery {
            granted_qos: options.qos,
            retain_as_published: options.retain_as_published,
            from_retained: true,
            subscription_ids: id.into_iter().collect(),
        };
        let now = Instant::now();
        let mut conn = cell.conn.borrow_mut();
        let mut b = self.buffer.borrow_mut();
        for m in matches {
            let mut ctx = b.ctx(cell.spill_owner.get());
            conn.deliver_with(now, &m, &delivery, Some(&mut ctx));
        }
        drop(conn);
        cell.wake();
    }

    /// Returns once each peer has handled everything this shard posted to
    /// it before the call.
    pub async fn barrier(&self, peers: &[ShardId]) {
        let mut waits = Vec::new();
        for &peer in peers.iter().filter(|p| **p != self.id) {
            let (request, rx) = self.new_request();
            self.post(
                peer,
                MeshMsg::Ping {
                    reply_to: self.id,
                    request,
                },
            );
            waits.push(rx);
        }
        for rx in waits {
            let _ = rx.recv().await;
        }
    }

    /// A barrier with every other shard.
    pub async fn barrier_all(&self) {
        let peers: Vec<ShardId> = (0..self.config.shards).collect();
        self.barrier(&peers).await;
    }

    // ---- mesh ---------------------------------------------------------

    /// Handles one message from a peer. Never awaits a peer (see `outbox`).
    pub fn handle_mesh(self: &Rc<Shard>, msg: MeshMsg) {
        let now = Instant::now();
        match msg {
            MeshMsg::Deliver { message, targets } => {
                self.deliver_local(&message, &targets, now);
            }
            MeshMsg::SubAdd { filter, key, val } => {
                self.index.borrow_mut().insert(&filter, key, val);
            }
            MeshMsg::SubRemove { filter, key } => {
                self.index.borrow_mut().remove(&filter, &key);
            }
            MeshMsg::RetainSet {
                message,
                reply_to,
                request,
            } => {
                let stored = self.apply_retained(message);
                self.post(reply_to, MeshMsg::RetainSetReply { request, stored });
            }
            MeshMsg::RetainedQuery {
                filter,
                reply_to,
                request,
            } => {
                let messages = self.retained_matches(&filter);
                self.post(reply_to, MeshMsg::RetainedReply { request, messages });
            }
            MeshMsg::Ping { reply_to, request } => self.post(reply_to, MeshMsg::Pong { request }),
            MeshMsg::Claim {
                client_id,
                shard,
                session,
                request,
            } => {
                let previous = self
                    .registry
                    .borrow_mut()
                    .insert(client_id, (shard, session));
                self.post(shard, MeshMsg::ClaimReply { request, previous });
            }
            MeshMsg::ClaimReply { request, .. }
            | MeshMsg::RetainSetReply { request, .. }
            | MeshMsg::Handover { request, .. }
            | MeshMsg::RetainedReply { request, .. }
            | MeshMsg::Pong { request } => self.complete_request(request, msg),
            MeshMsg::Release {
                client_id,
                shard,
                session,
            } => self.release_local(&client_id, shard, session),
            MeshMsg::TakeOver {
                session,
                reply_to,
                request,
                ..
            } => {
                let state = self.take_local(session, false).map(Box::new);
                self.post(reply_to, MeshMsg::Handover { request, state });
            }
            MeshMsg::ProbeReply { from, seq } => self.probe_reply(from, seq),
        }
    }

    // ---- self-test ----------------------------------------------------

    /// Publishes one probe per shard through the normal routing path; each
    /// shard's built-in subscriber answers. Run on shard 0.
    pub async fn probe_round(self: &Rc<Shard>) -> bool {
        let seq = self.probe_seq.get() + 1;
        self.probe_seq.set(seq);
        let n = self.config.shards;
        self.probe_seen.borrow_mut().insert(seq, vec![false; n]);
        for shard in 0..n {
            let Ok(topic) = TopicName::new(format!("{SELFTEST_PREFIX}/{shard}").into()) else {
                continue;
            };
            let message = Arc::new(shardmq_core::session::Message {
                topic,
                payload: bytes::Bytes::from(seq.to_be_bytes().to_vec()),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                origin: ByteString::new(),
            });
            self.route(&message, Instant::now()).await;
        }
        glommio::timer::sleep(Duration::from_secs(2)).await;
        let seen = self
            .probe_seen
            .borrow_mut()
            .remove(&seq)
            .unwrap_or_default();
        let ok = !seen.is_empty() && seen.iter().all(|s| *s);
        if ok {
            self.probes_ok.fetch_add(1, Ordering::Relaxed);
            debug!(seq, "self-test: every shard answered");
        } else {
            let missing: Vec<usize> = seen
                .iter()
                .enumerate()
                .filter(|(_, s)| !**s)
                .map(|(i, _)| i)
                .collect();
            warn!(seq, ?missing, "self-test: shards did not answer within 2 s");
        }
        ok
    }

    fn probe_arrived(&self, message: &SharedMessage) {
        let Ok(bytes) = <[u8; 8]>::try_from(&message.payload[..]) else {
            return;
        };
        let seq = u64::from_be_bytes(bytes);
        if self.id == 0 {
            self.probe_reply(0, seq);
        } else {
            self.post(0, MeshMsg::ProbeReply { from: self.id, seq });
        }
    }

    fn probe_reply(&self, from: ShardId, seq: u64) {
        if let Some(seen) = self.probe_seen.borrow_mut().get_mut(&seq) {
            if let Some(s) = seen.get_mut(from) {
                *s = true;
            }
        }
    }

    pub fn log_stats(&self) {
        info!(
            shard = self.id,
            sessions = self.sessions.borrow().len(),
            subscriptions = self.index.borrow().len(),
            retained = self.retained.borrow().len(),
            retained_bytes = self.retained.borrow().bytes(),
            queued_memory_bytes = self.buffer.borrow().memory_bytes,
            partial_frame_bytes = self.partial_bytes.get(),
            messages_in = self.stats.messages_in.get(),
            deliveries = self.stats.deliveries.get(),
            dropped_queue_full = self.stats.dropped_queue_full.get(),
            "shard stats"
        );
        let b = self.buffer.borrow();
        if let Some(disk) = &b.disk {
            let d = b.stats();
            info!(
                shard = self.id,
                memory_bytes = b.memory_bytes,
                memory_budget_bytes = b.memory_budget_bytes,
                segments = d.segments,
                disk_bytes = d.bytes_used,
                live_records = d.live_records,
                appended = d.appended,
                read = d.read,
                lost = d.corrupt,
                refused = disk.refused,
                reclaimed_segments = d.reclaimed_segments,
                "disk buffer stats"
            );
        }
    }
}

thread_local! {
    /// The shard this executor thread runs, for tasks spawned from `&self`.
    pub static SHARD: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

fn dropped_of(state: Option<&SessionState>) -> u64 {
    state.map_or(0, |s| s.stats.dropped_queue_full)
}

fn to_delivery(d: shardmq_core::topic::Delivery) -> Delivery {
    Delivery {
        granted_qos: d.qos_max,
        retain_as_published: d.retain_as_published,
        from_retained: false,
        subscription_ids: d.subscription_ids.iter().map(|id| id.get()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::hash_of;

    #[test]
    fn owner_hash_is_stable() {
        // The registry owner of a client id must be the same on every shard.
        assert_eq!(hash_of("client-a"), hash_of("client-a"));
        assert_ne!(hash_of("client-a"), hash_of("client-b"));
    }
}
