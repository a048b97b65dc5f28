//! The cluster's control plane (docs/CLUSTER.md): openraft on a thread of
//! its own (a current-thread tokio runtime beside the shards: consensus is
//! a few messages per CONNECT, not the data path), with every configured
//! node a voter. It holds the client-id registry: a CONNECT's claim is
//! committed before CONNACK, so a client id lives on one node, a node
//! without a majority refuses new CONNECTs, and a node that loses an id
//! ends its session there. Storage in `store`, RPCs in `net`.

mod net;
mod store;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use shardmq_core::broker::owner_index;
use tokio::net::TcpListener;
use tracing::{info, warn};

use net::{read_frame, write_frame, Dialer, Rpc, RpcReply, Stream};
use shardmq_core::cluster::registry::Granted;
use types::{Command, Reply, TypeConfig};

use super::runtime::ClusterSetup;

/// How long a CONNECT waits for its claim to commit before it is refused
/// with Server unavailable (a node cut off from the majority).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(50);
/// How long a write forwarded to the leader may take before it is tried
/// again (through whichever leader there is by then).
const FORWARD_TIMEOUT: Duration = Duration::from_millis(750);

/// Why a claim did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("another principal holds this client id in the cluster")]
    Refused,
    #[error("the cluster registry did not commit the claim in time (no majority reachable)")]
    Unavailable,
}

/// Per shard: client ids another node took from this one, each with the
/// log index of the claim that took it.
type EvictionQueues = Vec<Mutex<Vec<(String, u64)>>>;

/// Per shard: ids another node took, with the claim that took them, and
/// whether the owner shard takes it as is (a lapsed claim of this life).
type TakenQueues = Vec<Mutex<Vec<(String, u64, bool)>>>;

/// The control plane as the shards see it.
pub struct Control {
    rt: tokio::runtime::Handle,
    raft: Raft<TypeConfig>,
    me: u32,
    dialer: Dialer,
    /// Node id -> control address.
    addrs: Arc<HashMap<u64, String>>,
    /// Per shard: ids another node took from this one, for the registry
    /// owner shard to end (`Shard::evict_client`).
    evictions: Arc<TakenQueues>,
    /// The registry as applied here.
    registry: Arc<Mutex<store::Applied>>,
    /// The next claim's nonce: from this life's start in microseconds, so
    /// a restart never repeats one an `Abandon` on record names.
    nonces: std::sync::atomic::AtomicU64,
    /// The first nonce of this life: claims below it are an earlier life's.
    floor: u64,
    /// The claims granted to this node in this life (evictions spare a
    /// session granted after the takeover that reaches it late).
    granted: Arc<Mutex<Granted>>,
    /// Per shard: ids this node holds under an earlier life's claim, for
    /// the registry owner shard to release unless a restored session
    /// holds them (`Shard::cluster_check_hold`).
    earlier: Arc<EvictionQueues>,
    /// Commands to commit again (`commit_until_done`).
    retries: Arc<Retries>,
}

/// Abandons and releases that did not commit (no majority), in order,
/// bounded: past `RETRIES_MAX` the oldest is dropped, with a warning (an
/// id it would have freed stays held until its client connects again or
/// another node takes it).
#[derive(Debug, Default)]
struct Retries(Mutex<std::collections::VecDeque<Command>>);

const RETRIES_MAX: usize = 100_000;

impl Retries {
    fn push(&self, cmd: Command) {
        let Ok(mut q) = self.0.lock() else {
            return;
        };
        q.push_back(cmd);
        if q.len() > RETRIES_MAX {
            if let Some(dropped) = q.pop_front() {
                warn!(?dropped, "cluster control: too many commands waiting for a majority; the oldest is dropped");
            }
        }
    }

    /// Commits what waits, oldest first, until one fails again (the
    /// cluster is still unreachable: wait, then go on).
    async fn run(
        self: Arc<Self>,
        raft: Raft<TypeConfig>,
        dialer: Dialer,
        addrs: Arc<HashMap<u64, String>>,
    ) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            loop {
                let next = self.0.lock().ok().and_then(|mut q| q.pop_front());
                let Some(cmd) = next else { break };
                if commit(&raft, &dialer, &addrs, cmd.clone()).await.is_none() {
                    if let Ok(mut q) = self.0.lock() {
                        q.push_front(cmd);
                    }
                    break;
                }
            }
        }
    }
}

/// How often the node looks for ids it holds under an earlier life's
/// claim (the node died with their sessions).
const EARLIER_SWEEP: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("me", &self.me).finish()
    }
}

/// A node's control port: its internal port + 1, on the same address.
pub fn control_addr(internal: SocketAddr) -> SocketAddr {
    SocketAddr::new(internal.ip(), internal.port().wrapping_add(1))
}

impl Control {
    /// Starts the control thread: opens the Raft state in `dir`, binds the
    /// control port, and on a first start proposes the configured nodes as
    /// the membership (every node proposes the same one, which Raft allows).
    pub fn start(setup: &ClusterSetup, dir: &Path, shards: usize) -> std::io::Result<Arc<Control>> {
        let me = setup.me.id.0;
        let mut names = HashMap::new();
        let mut addrs = HashMap::new();
        let mut members = BTreeMap::new();
        for n in std::iter::once(&setup.me).chain(setup.peers.iter()) {
            let addr = n.control_address();
            names.insert(u64::from(n.id.0), n.name.clone());
            addrs.insert(u64::from(n.id.0), addr.clone());
            members.insert(u64::from(n.id.0), BasicNode { addr });
        }
        let dialer = Dialer {
            me: u64::from(me),
            tls: setup.tls.as_ref().map(|t| t.client.clone()),
            names: Arc::new(names),
            idle: Arc::default(),
        };
        let server_tls = setup.tls.as_ref().map(|t| t.server.clone());
        let bind = control_addr(setup.bind);
        let log = store::LogStore::open(dir)?;
        let (evict_tx, mut evict_rx) = tokio::sync::mpsc::unbounded_channel();
        let granted: Arc<Mutex<Granted>> = Arc::default();
        let sm = store::StateMachine::open(dir, me, evict_tx, granted.clone())?;
        let registry = sm.registry.clone();
        let evictions: Arc<TakenQueues> =
            Arc::new((0..shards).map(|_| Mutex::new(Vec::new())).collect());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let dialer2 = dialer.clone();
        let evictions2 = evictions.clone();
        let earlier: Arc<EvictionQueues> =
            Arc::new((0..shards).map(|_| Mutex::new(Vec::new())).collect());
        let floor = setup.incarnation.0.max(1);
        let (earlier2, registry2) = (earlier.clone(), registry.clone());
        let retries: Arc<Retries> = Arc::default();
        let (retries2, dialer3) = (retries.clone(), dialer.clone());
        let addrs = Arc::new(addrs);
        let addrs2 = addrs.clone();
        std::thread::Builder::new()
            .name("shardmq-control".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let started = async {
                        let config = openraft::Config {
                            cluster_name: "shardmq".to_owned(),
                            heartbeat_interval: 150,
                            election_timeout_min: 600,
                            election_timeout_max: 1200,
                            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
                            max_in_snapshot_log_to_keep: 1000,
                            ..Default::default()
                        }
                        .validate()
                        .map_err(std::io::Error::other)?;
                        let raft = Raft::new(u64::from(me), Arc::new(config), dialer2, log, sm)
                            .await
                            .map_err(std::io::Error::other)?;
                        let listener = TcpListener::bind(bind).await?;
                        Ok::<_, std::io::Error>((raft, listener))
                    };
                    let (raft, listener) = match started.await {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    tokio::spawn(serve(
                        listener,
                        raft.clone(),
                        server_tls,
                        dialer_names(&members),
                    ));
                    tokio::spawn(async move {
                        while let Some((id, claim, lapsed)) = evict_rx.recv().await {
                            let shard = owner_index(&id, evictions2.len());
                            if let Some(q) = evictions2.get(shard) {
                                if let Ok(mut q) = q.lock() {
                                    q.push((id, claim, lapsed));
                                }
                            }
                        }
                    });
                    tokio::spawn(sweep_earlier(registry2, earlier2, me, floor));
                    tokio::spawn(retries2.run(raft.clone(), dialer3, addrs2));
                    if !raft.is_initialized().await.unwrap_or(true) {
                        // Every node proposes the same membership at index
                        // 0; Raft keeps one.
                        if let Err(e) = raft.initialize(members).await {
                            info!(error = %e, "cluster control: membership already set");
                        }
                    }
                    let _ = ready_tx.send(Ok((tokio::runtime::Handle::current(), raft)));
                    std::future::pending::<()>().await;
                });
            })?;
        let (rt, raft) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the control thread stopped at start"))??;
        info!(%bind, "cluster control plane up (openraft; every configured node votes)");
        Ok(Arc::new(Control {
            rt,
            raft,
            me,
            dialer,
            addrs,
            evictions,
            registry,
            nonces: std::sync::atomic::AtomicU64::new(floor),
            floor,
            granted,
            earlier,
            retries,
        }))
    }

    /// Commits `client_id`'s claim by this node for `principal` before its
    /// CONNACK. `Ok`: the id is this node's (the node that held it ends its
    /// session there).
    pub async fn claim(
        &self,
        client_id: &str,
        principal: &str,
        any_principal: bool,
    ) -> Result<u64, ClaimError> {
        let nonce = self
            .nonces
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cmd = Command::Claim {
            client_id: client_id.to_owned(),
            node: self.me,
            principal: principal.to_owned(),
            any_principal,
            nonce,
        };
        match self.write(cmd).await {
            Some(Reply::Granted { claim, .. }) => {
                let (Ok(registry), Ok(mut granted)) = (self.registry.lock(), self.granted.lock())
                else {
                    return Err(ClaimError::Unavailable);
                };
                let applied = registry.applied_index();
                if granted.admit(&registry.registry, applied, self.me, client_id, claim) {
                    Ok(claim)
                } else {
                    // Another node took the id after this claim, and that
                    // takeover was applied here before this answer came.
                    Err(ClaimError::Unavailable)
                }
            }
            Some(Reply::Refused) => Err(ClaimError::Refused),
            _ => {
                self.abandon(client_id.to_owned(), nonce);
                Err(ClaimError::Unavailable)
            }
        }
    }

    /// The claim `nonce` timed out and its CONNECT is refused; it may still
    /// commit (it was on its way to the leader): undo it or have it
    /// refused, in the background, retrying until the cluster answers
    /// (docs/CLUSTER.md).
    fn abandon(&self, client_id: String, nonce: u64) {
        self.commit_until_done(Command::Abandon {
            client_id,
            node: self.me,
            nonce,
        });
    }

    /// Commits `cmd` in the background, trying again until the cluster
    /// answers: a minority side keeps it until it heals. One try now; a
    /// command that fails joins `retries`, which one task works through in
    /// order, so a storm of refused CONNECTs on a minority side costs a
    /// queue entry each, not a task retrying each. For commands that are
    /// harmless late: an `Abandon`, a `Release` naming its claim.
    fn commit_until_done(&self, cmd: Command) {
        let (raft, dialer, addrs) = (self.raft.clone(), self.dialer.clone(), self.addrs.clone());
        let retries = self.retries.clone();
        self.rt.spawn(async move {
            if commit(&raft, &dialer, &addrs, cmd.clone()).await.is_none() {
                retries.push(cmd);
            }
        });
    }

    /// Frees `client_id` if this node still holds it under `claim` (the
    /// session that ended), in the background until the cluster answers:
    /// a release lost to a partition would leave the id held with no
    /// session (the registry simulator found it).
    pub fn release(&self, client_id: String, claim: u64) {
        if let Ok(mut g) = self.granted.lock() {
            g.released(&client_id, claim);
        }
        self.commit_until_done(Command::Release {
            client_id,
            node: self.me,
            claim,
            floor: self.floor,
        });
    }

    /// The ids another node took from this one whose registry owner is
    /// `shard`, since the last call, with the claims that took them.
    pub fn take_evictions(&self, shard: usize) -> Vec<(String, u64)> {
        let ids = self
            .evictions
            .get(shard)
            .and_then(|q| q.lock().ok().map(|mut q| std::mem::take(&mut *q)))
            .unwrap_or_default();
        if ids.is_empty() {
            return Vec::new();
        }
        // The owner shard ends the sessions older than the takeover, and
        // keeps one of a newer claim of this life; a session restored from
        // disk (no claim known) is spared if this node claimed the id again
        // after the takeover, as far as the registry here shows.
        let (Ok(registry), Ok(mut granted)) = (self.registry.lock(), self.granted.lock()) else {
            return ids.into_iter().map(|(id, taken, _)| (id, taken)).collect();
        };
        ids.into_iter()
            .filter(|(id, taken, lapsed)| {
                *lapsed || granted.evicts(&registry.registry, self.me, id, *taken)
            })
            .map(|(id, taken, _)| (id, taken))
            .collect()
    }

    /// Ids this node holds under an earlier life's claim whose registry
    /// owner is `shard`, with those claims, since the last call.
    pub fn take_earlier_holds(&self, shard: usize) -> Vec<(String, u64)> {
        self.earlier
            .get(shard)
            .and_then(|q| q.lock().ok().map(|mut q| std::mem::take(&mut *q)))
            .unwrap_or_default()
    }

    /// Runs `cmd` on the control thread and waits (from any runtime).
    async fn write(&self, cmd: Command) -> Option<Reply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let raft = self.raft.clone();
        let dialer = self.dialer.clone();
        let addrs = self.addrs.clone();
        self.rt.spawn(async move {
            let r = commit(&raft, &dialer, &addrs, cmd).await;
            let _ = tx.send(r);
        });
        rx.await.ok().flatten()
    }
}

/// Commits `cmd` through the leader (this node, or forwarded to it), until
/// `CLAIM_TIMEOUT`.
async fn commit(
    raft: &Raft<TypeConfig>,
    dialer: &Dialer,
    addrs: &HashMap<u64, String>,
    cmd: Command,
) -> Option<Reply> {
    let deadline = tokio::time::Instant::now() + CLAIM_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        let leader = match tokio::time::timeout(left, raft.client_write(cmd.clone())).await {
            Err(_) => return None,
            Ok(Ok(resp)) => return Some(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f.leader_id,
            Ok(Err(_)) => None,
        };
        if let Some(leader) = leader.filter(|l| *l != dialer.me) {
            if let Some(addr) = addrs.get(&leader) {
                let rpc = Rpc::Write(cmd.clone());
                // A leader that stopped answering (paused, cut off) must not
                // take the whole wait: the others elect another meanwhile.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let limit = left.min(FORWARD_TIMEOUT);
                let mut conn = dialer.checkout(leader);
                let pooled = conn.is_some();
                let call = dialer.call(&mut conn, leader, addr, &rpc);
                let mut answer = tokio::time::timeout(limit, call).await;
                if pooled && matches!(answer, Ok(Err(_))) {
                    // The kept connection had gone (the leader restarted):
                    // a fresh one at once, not after a retry pause.
                    let call = dialer.call(&mut conn, leader, addr, &rpc);
                    answer = tokio::time::timeout(limit, call).await;
                }
                if let Ok(Ok(RpcReply::Write(Ok(reply)))) = answer {
                    dialer.checkin(leader, conn);
                    return Some(reply);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
    None
}

/// Every `EARLIER_SWEEP`: the ids this node holds under an earlier life's
/// claim go to their registry owner shards, which release those no
/// restored session holds. Without it an id whose session died with the
/// node stays held (another principal is refused it) until its client
/// connects again. The first sweep waits a period, past the shards'
/// restore; a release names the claim, so one that crosses a new claim
/// leaves the new claim alone.
async fn sweep_earlier(
    registry: Arc<Mutex<store::Applied>>,
    queues: Arc<EvictionQueues>,
    me: u32,
    floor: u64,
) {
    loop {
        tokio::time::sleep(EARLIER_SWEEP).await;
        let held = match registry.lock() {
            Ok(r) => r.registry.earlier_holds(me, floor),
            Err(_) => return,
        };
        for (id, claim) in held {
            let shard = owner_index(&id, queues.len());
            if let Some(Ok(mut q)) = queues.get(shard).map(|q| q.lock()) {
                q.push((id, claim));
            }
        }
    }
}

fn dialer_names(members: &BTreeMap<u64, BasicNode>) -> Vec<u64> {
    members.keys().copied().collect()
}

/// Accepts peers' control connections and answers their RPCs.
async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    members: Vec<u64>,
) {
    let members = Arc::new(members);
    loop {
        let Ok((tcp, from)) = listener.accept().await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let (raft, tls, members) = (raft.clone(), tls.clone(), members.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(tcp, raft, tls, &members).await {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    warn!(%from, error = %e, "cluster control: a peer connection ended");
                }
            }
        });
    }
}

async fn serve_one(
    tcp: tokio::net::TcpStream,
    raft: Raft<TypeConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    members: &[u64],
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let tls_on = tls.is_some();
    let (mut stream, cert_name): (Box<dyn Stream>, Option<String>) = match tls {
        None => (Box::new(tcp), None),
        Some(tls) => {
            let s = tokio::time::timeout(
                super::link::HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsAcceptor::from(tls).accept(tcp),
            )
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
            let name = shardmq_auth::node_tls::peer_node_name(s.get_ref().1);
            (Box::new(s), name)
        }
    };
    // A small, prompt Hello: nothing large is read from a peer not yet known.
    let hello = tokio::time::timeout(
        super::link::HANDSHAKE_TIMEOUT,
        net::read_frame_max::<Rpc>(&mut *stream, 64),
    )
    .await
    .map_err(|_| std::io::Error::other("no Hello in time"))??;
    let Rpc::Hello(id) = hello else {
        return Err(std::io::Error::other("no Hello"));
    };
    if !members.contains(&id) {
        return Err(std::io::Error::other(format!("unknown node id {id}")));
    }
    // With TLS the certificate's name must derive the id it claims; a
    // certificate naming no node is refused.
    if tls_on {
        let name = cert_name.ok_or_else(|| std::io::Error::other("certificate names no node"))?;
        if u64::from(shardmq_core::config::node_id(&name).0) != id {
            return Err(std::io::Error::other(format!(
                "certificate of {name:?} claims node id {id}"
            )));
        }
    }
    loop {
        let reply = match read_frame::<Rpc>(&mut *stream).await? {
            Rpc::Hello(_) => return Err(std::io::Error::other("a second Hello")),
            Rpc::Append(r) => RpcReply::Append(raft.append_entries(r).await),
            Rpc::Vote(r) => RpcReply::Vote(raft.vote(r).await),
            Rpc::Snapshot(r) => RpcReply::Snapshot(raft.install_snapshot(r).await),
            // A node writes for itself only.
            Rpc::Write(cmd) if cmd.node() != id => {
                RpcReply::Write(Err("a node claims and releases for itself only".to_owned()))
            }
            Rpc::Write(cmd) => RpcReply::Write(
                raft.client_write(cmd)
                    .await
                    .map(|r| r.data)
                    .map_err(|e| e.to_string()),
            ),
        };
        write_frame(&mut *stream, &reply).await?;
    }
}
