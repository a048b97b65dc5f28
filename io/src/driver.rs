//! The runtime side of one shard: it owns the sans-io `broker::Shard` and
//! the io handles of its connections, and turns the shard's outputs into
//! actions (write to a socket or wake its writer, close a socket, start an
//! authentication, wake a mesh sender, write a log line). Tasks borrow the
//! shard only inside `with`, never across an `.await`, and every call ends
//! by draining the outputs it caused.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
// PERF: looked up for every wake-up; std's SipHash costs more than the rest.
use hashbrown::HashMap;
use shardmq_core::broker::{ConnId, Notice, Output, Shard, ShardId};
use shardmq_core::session::{CloseReason, Denied};
use tracing::{debug, info, warn};

use crate::client_log;
use crate::oplog::Category;
use crate::persist::writer::ShardLog;

use crate::buffer::DiskBuffer;
use crate::conn::admit;
use crate::conn::handle::ConnHandle;
use crate::telemetry::counters::{ListenerCounters, ListenerCounts};

/// The shard type the runtime drives: its store is the `DiskBuffer`.
pub type BrokerShard = Shard<DiskBuffer>;

/// One shard's driver. `!Send`: it lives on its shard's executor.
pub struct Driver {
    pub id: ShardId,
    shard: RefCell<BrokerShard>,
    conns: RefCell<HashMap<ConnId, Rc<ConnHandle>>>,
    /// Wakes the sender task of each peer (`None` for this shard).
    peers: Vec<Option<LocalSender<()>>>,
    /// Readers waiting for room in the mesh queues (`Flow::WaitForMesh`).
    mesh_waiters: RefCell<Vec<LocalSender<()>>>,
    /// CONNECTs waiting for the peers' routes (`wait_for_routes`).
    routes_waiters: RefCell<Vec<LocalSender<()>>>,
    /// Authentication jobs started, for logs and shutdown.
    pub auth_jobs: Cell<u64>,
    /// Set while a read that found its socket empty first is handled
    /// (`with_direct_writes`): its output may be written at once.
    direct_writes: Cell<bool>,
    /// Accepts that failed (EMFILE and friends), all listeners of the shard.
    pub accept_failures: Cell<u64>,
    /// Connections closed at once because the process was out of file
    /// descriptors.
    pub shed: Cell<u64>,
    /// Per listener name: this shard's counters (metrics).
    counters: RefCell<HashMap<String, Rc<ListenerCounters>>>,
    /// The persisted retained log's writer (`persistence`).
    persist: RefCell<Option<Rc<ShardLog>>>,
    /// The cluster link tasks of this shard (`Output::Cluster` wakes them
    /// all; each polls its own work).
    cluster_tasks: RefCell<Vec<LocalSender<()>>>,
    /// The cluster's control plane: a CONNECT's client id is claimed there.
    control: RefCell<Option<std::sync::Arc<crate::cluster::control::Control>>>,
    /// The read scratch and spare write buffers the connections share.
    pub buffers: crate::conn::buffers::IoBuffers,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// The driver and, per peer, the receiver its mesh sender task waits on.
    pub fn new(shard: BrokerShard) -> (Rc<Driver>, Vec<(ShardId, LocalReceiver<()>)>) {
        let id = shard.id();
        let n = shard.config().shards;
        let mut peers = Vec::with_capacity(n);
        let mut wakeups = Vec::new();
        for peer in ShardId::all(n) {
            if peer == id {
                peers.push(None);
                continue;
            }
            let (tx, rx) = local_channel::new_bounded(1);
            peers.push(Some(tx));
            wakeups.push((peer, rx));
        }
        let driver = Rc::new(Driver {
            id,
            shard: RefCell::new(shard),
            conns: RefCell::new(HashMap::new()),
            peers,
            mesh_waiters: RefCell::new(Vec::new()),
            routes_waiters: RefCell::new(Vec::new()),
            auth_jobs: Cell::new(0),
            direct_writes: Cell::new(false),
            accept_failures: Cell::new(0),
            shed: Cell::new(0),
            counters: RefCell::new(HashMap::new()),
            persist: RefCell::new(None),
            cluster_tasks: RefCell::new(Vec::new()),
            control: RefCell::new(None),
            buffers: Default::default(),
        });
        (driver, wakeups)
    }

    /// Runs `f` on the shard, then acts on the outputs it caused.
    pub fn with<R>(self: &Rc<Self>, f: impl FnOnce(&mut BrokerShard) -> R) -> R {
        let r = f(&mut self.shard.borrow_mut());
        self.flush();
        r
    }

    /// `poll_transmit` from inside `flush`, which acts on what it causes
    /// (elsewhere what it causes would wait for the next `flush`).
    pub(crate) fn transmit_in_flush(
        &self,
        conn: ConnId,
        buf: &mut bytes::BytesMut,
        max: usize,
    ) -> usize {
        self.shard
            .borrow_mut()
            .poll_transmit(conn, Instant::now(), buf, max)
    }

    /// [`Driver::with`], writing the output it causes at once where a
    /// connection's writer task is idle and no other task is ready
    /// (`conn::write_now`). For input that had to wait for its socket: at
    /// moderate load. Under load, when reads find data waiting, writer
    /// tasks run after the readers and send what several added in one
    /// write.
    pub fn with_direct_writes<R>(self: &Rc<Self>, f: impl FnOnce(&mut BrokerShard) -> R) -> R {
        self.direct_writes.set(true);
        let r = self.with(f);
        self.direct_writes.set(false);
        r
    }

    /// Reads the shard without acting on outputs (there are none to act on).
    pub fn peek<R>(&self, f: impl FnOnce(&BrokerShard) -> R) -> R {
        f(&self.shard.borrow())
    }

    pub fn set_control(&self, control: Option<std::sync::Arc<crate::cluster::control::Control>>) {
        *self.control.borrow_mut() = control;
    }

    pub fn set_persist(&self, log: Option<Rc<ShardLog>>) {
        *self.persist.borrow_mut() = log;
    }

    /// The persisted retained log's figures (zeros without one).
    pub fn persist_stats(&self) -> crate::persist::writer::LogStats {
        self.persist
            .borrow()
            .as_ref()
            .map(|l| l.stats())
            .unwrap_or_default()
    }

    pub fn register(&self, conn: ConnId, handle: Rc<ConnHandle>) {
        self.conns.borrow_mut().insert(conn, handle);
    }

    pub fn unregister(&self, conn: ConnId) {
        self.conns.borrow_mut().remove(&conn);
    }

    pub fn connections(&self) -> Vec<Rc<ConnHandle>> {
        self.conns.borrow().values().cloned().collect()
    }

    /// This shard's counters of listener `name` (made on first use).
    pub fn listener_counters(&self, name: &str) -> Rc<ListenerCounters> {
        self.counters
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// A copy of every listener's counters, for the metrics thread.
    pub fn listener_counts(&self) -> std::collections::BTreeMap<String, ListenerCounts> {
        self.counters
            .borrow()
            .iter()
            .map(|(name, c)| (name.clone(), c.counts()))
            .collect()
    }

    /// A receiver that fires when the shard has cluster work
    /// (`Output::Cluster`); it stops firing once dropped.
    pub fn cluster_wakeup(&self) -> LocalReceiver<()> {
        let (tx, rx) = local_channel::new_bounded(1);
        self.cluster_tasks.borrow_mut().push(tx);
        rx
    }

    fn wake_cluster_tasks(&self) {
        self.cluster_tasks
            .borrow_mut()
            .retain(|tx| !matches!(tx.try_send(()), Err(glommio::GlommioError::Closed(_))));
    }

    fn handle(&self, conn: ConnId) -> Option<Rc<ConnHandle>> {
        self.conns.borrow().get(&conn).cloned()
    }

    /// Acts on every pending output. Never holds the shard's borrow while
    /// acting: an action may start a task that calls back later.
    fn flush(self: &Rc<Self>) {
        loop {
            let Some(out) = self.shard.borrow_mut().poll_output() else {
                return;
            };
            match out {
                Output::Wake(conn) => {
                    if let Some(h) = self.handle(conn) {
                        // With other tasks ready (readers, under load), the
                        // writer task runs after them and sends what they
                        // add in the same write; alone, at once, unless
                        // this turn's time is up (a fan-out to many).
                        let ex = glommio::executor();
                        let direct =
                            self.direct_writes.get() && !ex.tasks_ready() && !ex.need_preempt();
                        if !(direct && crate::conn::write_now(self, &h)) {
                            h.wake();
                        }
                    }
                }
                // A batch gathered while the readers run: out now, when
                // the input behind it had to wait (a burst at moderate
                // load), not after every other ready reader.
                Output::Flush(conn) => {
                    if self.direct_writes.get() && !glommio::executor().need_preempt() {
                        if let Some(h) = self.handle(conn) {
                            crate::conn::write_now(self, &h);
                        }
                    }
                }
                Output::Close(conn) => {
                    if let Some(h) = self.handle(conn) {
                        h.close();
                    }
                }
                Output::Authenticate { conn, request } => {
                    if let Some(h) = self.handle(conn) {
                        self.auth_jobs.set(self.auth_jobs.get() + 1);
                        let driver = self.clone();
                        let control = self.control.borrow().clone();
                        let any = self.peek(|s| {
                            s.config().limits.session_takeover
                                == shardmq_core::limits::TakeoverPolicy::AnyPrincipal
                        });
                        glommio::spawn_local(async move {
                            let mut result = admit::admit(&h, &request).await;
                            // Closed while it was authenticated (its
                            // CONNECT deadline, or the client left): no
                            // claim, which would take the client id from
                            // the session that holds it on another node.
                            let gone = |driver: &Driver| {
                                driver.peek(|s| s.flow(h.id)) == shardmq_core::broker::Flow::Stop
                            };
                            if let Some(control) = control.filter(|_| !gone(&driver)) {
                                if let Ok(a) = result {
                                    // The claim commits while the shard
                                    // learns its peers' routes: a node that
                                    // just started waits for the slower.
                                    let (claimed, ()) = futures_lite::future::zip(
                                        admit::claim(&h, &request, a, &control, any),
                                        admit::routes_known(&driver),
                                    )
                                    .await;
                                    result = claimed;
                                    // The client left while its claim
                                    // committed: no session will hold it.
                                    if let (true, Ok(a)) = (gone(&driver), &result) {
                                        if let Some(claim) = a.cluster_claim {
                                            control.release(request.client_id.to_string(), claim);
                                        }
                                    }
                                }
                            }
                            driver.with(|s| s.handle_admitted(h.id, Instant::now(), result));
                        })
                        .detach();
                    }
                }
                Output::ReAuthenticate { conn, method, data } => {
                    if let Some(h) = self.handle(conn) {
                        let driver = self.clone();
                        let client_id = self.peek(|s| s.client_id(conn)).unwrap_or_default();
                        glommio::spawn_local(async move {
                            let result = admit::reauthenticate(&h, client_id, method, data).await;
                            driver.with(|s| s.handle_reauthenticated(h.id, Instant::now(), result));
                        })
                        .detach();
                    }
                }
                Output::Mesh(peer) => {
                    if let Some(Some(tx)) = self.peers.get(peer.index()) {
                        let _ = tx.try_send(());
                    }
                }
                Output::Cluster => self.wake_cluster_tasks(),
                Output::Persist => {
                    let log = self.persist.borrow().clone();
                    if let Some(log) = log {
                        log.kick(self);
                    }
                }
                Output::Notice(notice) => self.log(notice),
            }
        }
    }

    /// Lets readers waiting for the mesh go on once it has room.
    pub fn mesh_drained(&self) {
        if self.shard.borrow().mesh_has_room() {
            for tx in self.mesh_waiters.borrow_mut().drain(..) {
                let _ = tx.try_send(());
            }
        }
    }

    /// A receiver that fires once the mesh queues have room again.
    pub fn wait_for_mesh(&self) -> LocalReceiver<()> {
        let (tx, rx) = local_channel::new_bounded(1);
        if self.shard.borrow().mesh_has_room() {
            let _ = tx.try_send(());
        } else {
            self.mesh_waiters.borrow_mut().push(tx);
        }
        rx
    }

    /// A receiver that fires once the shard knows its peers' routes
    /// (`Shard::cluster_routes_ready`; at once on a single node).
    pub fn wait_for_routes(&self) -> LocalReceiver<()> {
        let (tx, rx) = local_channel::new_bounded(1);
        if self.peek(|s| s.cluster_routes_ready(Instant::now())) {
            let _ = tx.try_send(());
        } else {
            self.routes_waiters.borrow_mut().push(tx);
        }
        rx
    }

    /// Wakes the CONNECTs waiting for routes if the shard now knows them
    /// (after route frames, link ends and failures, and every tick).
    pub fn wake_routes_waiters(&self) {
        if self.routes_waiters.borrow().is_empty()
            || !self.peek(|s| s.cluster_routes_ready(Instant::now()))
        {
            return;
        }
        for tx in self.routes_waiters.borrow_mut().drain(..) {
            let _ = tx.try_send(());
        }
    }

    /// The shard's clock reading for a call that has none of its own.
    pub fn now() -> Instant {
        Instant::now()
    }

    /// The operator's line for a notice: who and where, then the line's
    /// own fields. Client-controlled values are written quoted (Debug), so a
    /// client id with a newline cannot forge a line; lines a client can
    /// trigger are rate-limited per shard (`oplog`).
    fn log(&self, notice: Notice) {
        let shard = self.id.index();
        let who = |conn: ConnId| {
            self.handle(conn)
                .map(|h| {
                    let principal = h.principal.borrow().clone();
                    (
                        h.listener.clone(),
                        h.peer.clone(),
                        principal,
                        *h.admitted.borrow(),
                    )
                })
                .unwrap_or_default()
        };
        match notice {
            Notice::Connected {
                conn,
                client_id,
                session_present,
                ..
            } => {
                let (listener, peer, principal, admitted) = who(conn);
                let (method, protocol, clean_start) = admitted
                    .map(|a| (Some(a.method), Some(a.protocol), a.clean_start))
                    .unwrap_or_default();
                client_log!(Category::Connections, shard, listener = %listener, peer = %peer,
                    client = ?client_id, principal = ?principal, method = ?method,
                    protocol = ?protocol, clean_start, session_present, "client connected");
            }
            Notice::TakeoverRefused {
                conn,
                client_id,
                principal: owner,
            } => {
                let (listener, peer, principal, _) = who(conn);
                self.count(conn, |c| &c.refused, "not_authorized");
                client_log!(Category::AuthFailures, shard, listener = %listener, peer = %peer,
                    client = ?client_id, principal = ?principal, owner = %owner,
                    reason = ?shardmq_core::codec::ReasonCode::NotAuthorized,
                    cause = "the client id's session belongs to another principal",
                    "client refused");
            }
            Notice::SubscriptionsRevoked {
                conn,
                client_id,
                filters,
            } => {
                let (listener, peer, principal, _) = who(conn);
                info!(shard, listener = %listener, peer = %peer, client = ?client_id,
                    principal = ?principal, ?filters,
                    "subscriptions no longer allowed were removed (resumed session or changed authorization)");
            }
            Notice::Denied {
                conn,
                client_id,
                denied,
            } => {
                let (listener, peer, principal, _) = who(conn);
                let (what, name, action) = match &denied {
                    Denied::Publish(topic) => ("publish denied", topic.as_str(), "publish"),
                    Denied::Subscribe(filter) => ("subscribe denied", &filter[..], "subscribe"),
                };
                self.count(conn, |c| &c.authz_denied, action);
                client_log!(Category::Denials, shard, listener = %listener, peer = %peer,
                    client = ?client_id, principal = ?principal, topic = ?name, "{what}");
            }
            Notice::Disconnected {
                conn,
                client_id,
                reason,
            } => {
                let (listener, peer, principal, _) = who(conn);
                client_log!(Category::Connections, shard, listener = %listener, peer = %peer,
                    client = ?client_id, principal = ?principal, reason = ?describe(&reason),
                    "client disconnected");
            }
            Notice::RetainedRefused {
                topic,
                bytes,
                stored_bytes,
                refused,
                reason,
            } => {
                warn!(shard, %topic, bytes, retained_bytes = stored_bytes, refused, ?reason,
                    "retained message refused (retainedMessages.maxSize, docs/CONFIG.md)");
            }
            Notice::RetainedStampAhead { stamp, count } => {
                warn!(shard, stamp, count,
                    "a retained message's cluster stamp is over a minute ahead of this node's clock: check the nodes' clocks (NTP); it keeps its place in the order but does not move this node's clock (docs/CLUSTER.md, \"Retained messages\")");
            }
            Notice::PartialPacketClosed {
                conn,
                client_id,
                bytes,
                shard_max,
            } => {
                let (listener, peer, principal, _) = who(conn);
                client_log!(Category::Limits, shard, listener = %listener, peer = %peer, client = ?client_id,
                    principal = ?principal, partial_bytes = bytes, shard_partial_bytes_max = shard_max,
                    "closing the connection holding the most of a packet not yet received: \
                     the shard's budget for partial packets (memoryProfile) is used up");
            }
            Notice::SelfTest { seq, missing } => log_self_test(seq, &missing),
        }
    }

    /// Bumps one of a connection's listener counters, if it is still here.
    fn count(
        &self,
        conn: ConnId,
        counter: impl Fn(&ListenerCounters) -> &RefCell<std::collections::BTreeMap<&'static str, u64>>,
        label: &'static str,
    ) {
        if let Some(h) = self.handle(conn) {
            ListenerCounters::bump(counter(&h.counters), label);
        }
    }
}

fn log_self_test(seq: u64, missing: &[ShardId]) {
    if missing.is_empty() {
        debug!(seq, "self-test: every shard answered");
    } else {
        let missing: Vec<usize> = missing.iter().map(|s| s.index()).collect();
        warn!(
            seq,
            ?missing,
            "self-test: shards did not answer within diagnostics.selfCheck.timeoutSeconds"
        );
    }
}

/// A close reason as the operator reads it.
fn describe(reason: &CloseReason) -> String {
    match reason {
        CloseReason::ClientDisconnect(code) => format!("client sent DISCONNECT ({code:?})"),
        CloseReason::ConnectionLost => "connection lost without DISCONNECT".to_owned(),
        CloseReason::Server(code) => format!("closed by the broker ({code:?})"),
        CloseReason::Violation(v) => format!("protocol violation: {v} ({:?})", v.reason_code()),
    }
}
