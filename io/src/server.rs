//! Server bootstrap: one glommio executor per shard, pinned to a CPU, joined
//! into a channel mesh; every shard binds every listener it serves
//! (SO_REUSEPORT) and accepts connections that then stay on it. Also the
//! handle the binary and the tests use to wait for and stop the server.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_core::limits::{ClientLimits, SESSION_SHARES};
use tracing::{debug, error, info, warn};

use crate::buffer::{Deleter, DiskBuffer};
use crate::connection;
use crate::mesh::MeshMsg;
use crate::security::{ListenerSecurity, HANDSHAKE_TIMEOUT};
use crate::shard::{BufferReport, Shard, ShardConfig, SHARD};
use crate::spill::BufferSpec;

/// Capacity of each shard-to-shard queue; a full queue pushes back on the
/// publishers of the sending shard.
const MESH_QUEUE_LEN: usize = 1024;
/// How often shards expire sessions and fire delayed wills.
const TICK: Duration = Duration::from_millis(250);
/// How long shutdown waits for connections to flush their DISCONNECT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// One listening port, resolved.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Listener name and port index, for logs (`default:0`).
    pub name: String,
    pub addr: SocketAddr,
    /// Shards that accept on this port; `None` means all of them.
    pub shards: Option<Vec<usize>>,
    /// TLS, authentication and authorization of this port.
    pub security: ListenerSecurity,
}

impl ListenerSpec {
    /// A plain, anonymous, allow-all port.
    pub fn plain(
        name: impl Into<String>,
        addr: SocketAddr,
        shards: Option<Vec<usize>>,
    ) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            addr,
            shards,
            security: ListenerSecurity::default(),
        }
    }
}

/// Everything the server needs, validated by the caller.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub shards: usize,
    /// Pin shard k to CPU k (when there are at least as many CPUs).
    pub pin_cpus: bool,
    pub listeners: Vec<ListenerSpec>,
    pub limits: ClientLimits,
    pub retained_max: usize,
    pub selftest_interval: Option<Duration>,
    /// `diskBackedMessageBuffer`; `None`: queues never spill.
    pub disk_buffer: Option<BufferSpec>,
    /// `advanced.encryptInternalTraffic`.
    pub encrypt_internal_traffic: bool,
    /// Queued bytes a shard keeps in memory before spilling
    /// (`memory_budget_bytes(memoryProfile)`; tests set a tiny one). One
    /// session's share of it (`SESSION_SHARES`) becomes
    /// `limits.queue.bytes_max`.
    pub memory_budget_bytes: u64,
    /// Bytes of retained messages per shard (`retainedMessages.maxSize`
    /// divided between shards, or derived from `memoryProfile`).
    pub retained_bytes_max: u64,
    /// Bytes of packets not yet whole one shard's connections may hold
    /// beyond a read chunk each (derived from `memoryProfile`);
    /// `limits.packet_size_max` is lowered to what one connection can hold.
    pub partial_bytes_max: u64,
}

/// How each shard opens its disk buffer.
#[derive(Debug, Clone)]
pub struct BufferSetup {
    pub spec: BufferSpec,
    pub encrypt: bool,
    pub memory_budget_bytes: u64,
    /// Expiries in records are stored relative to this.
    pub epoch: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {name} ({addr}): cannot bind: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "shard {shard}: cannot start its executor: {message} (io_uring needs locked memory on kernels \
         before 5.12: raise `ulimit -l`, see docs/DEPLOYMENT.md)"
    )]
    Executor { shard: usize, message: String },
    #[error("shard {shard} stopped during start-up")]
    StartUp { shard: usize },
    #[error("listener {name}: shard {shard} does not exist (shards: {shards})")]
    NoSuchShard {
        name: String,
        shard: usize,
        shards: usize,
    },
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    shutdown: Arc<AtomicBool>,
    joins: Vec<glommio::ExecutorJoinHandle<()>>,
    /// Bound addresses, in the order of `ServerConfig::listeners`.
    pub addrs: Vec<(String, SocketAddr)>,
    /// Self-test rounds in which every shard answered.
    pub probes_ok: Arc<AtomicU64>,
    /// Each shard's disk buffer figures, refreshed every tick (250 ms).
    pub buffer_reports: Arc<Mutex<Vec<BufferReport>>>,
}

impl ServerHandle {
    /// The bound address of the listener named `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Asks every shard to shut down gracefully (non-blocking).
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    /// A flag that, once set, shuts the server down (for signal handlers).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Shuts down and waits for every shard to finish.
    pub fn shutdown(self) {
        self.request_shutdown();
        self.join();
    }

    /// Waits for every shard to finish.
    pub fn join(self) {
        for j in self.joins {
            if let Err(e) = j.join() {
                error!(error = %e, "shard ended with an error");
            }
        }
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list` of
/// /proc/self/status, e.g. "0-3,6"), in order; empty when unknown.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("");
    parse_cpu_list(list.trim())
}

fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|x| x.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => cpus.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b => cpus.extend(a..=b),
            _ => return Vec::new(),
        }
    }
    cpus
}

/// Reserves every listener port before the shards bind it. The shards bind
/// with SO_REUSEPORT, which would let a second broker (or anything of the
/// same user) silently share a port and take a share of its clients; so the
/// port is first bound *without* SO_REUSEPORT, which fails if anyone holds
/// it. Port 0 is resolved here so every shard binds the same port: that
/// reservation is bound with SO_REUSEPORT but never listens, so the kernel
/// never hands it a connection; it is dropped once the shards are bound.
fn reserve_ports(listeners: &mut [ListenerSpec]) -> Result<Vec<socket2::Socket>, ServerError> {
    let mut held = Vec::new();
    for l in listeners.iter_mut() {
        let bind_err = |source| ServerError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        };
        let domain = socket2::Domain::for_address(l.addr);
        if l.addr.port() != 0 {
            let probe =
                socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(bind_err)?;
            // SO_REUSEADDR only skips TIME_WAIT leftovers of a restart.
            probe.set_reuse_address(true).map_err(bind_err)?;
            probe.bind(&l.addr.into()).map_err(bind_err)?;
            continue;
        }
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(bind_err)?;
        s.set_reuse_port(true).map_err(bind_err)?;
        s.bind(&l.addr.into()).map_err(bind_err)?;
        let local = s.local_addr().map_err(bind_err)?;
        if let Some(addr) = local.as_socket() {
            l.addr = addr;
        }
        held.push(s);
    }
    Ok(held)
}

/// Starts the shards and returns once every listener is bound on every
/// shard that serves it (or the first error).
pub fn start(mut config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let n = config.shards.max(1);
    for l in &config.listeners {
        for &s in l.shards.iter().flatten() {
            if s >= n {
                return Err(ServerError::NoSuchShard {
                    name: l.name.clone(),
                    shard: s,
                    shards: n,
                });
            }
        }
    }
    let reservations = reserve_ports(&mut config.listeners)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let probes_ok = Arc::new(AtomicU64::new(0));
    let buffer_reports = Arc::new(Mutex::new(vec![BufferReport::default(); n]));
    let limits = derived_limits(&config);
    let shard_config = Arc::new(ShardConfig {
        shards: n,
        limits: Arc::new(limits),
        retained_max: config.retained_max,
        retained_bytes_max: config.retained_bytes_max,
        memory_budget_bytes: config.memory_budget_bytes,
        partial_bytes_max: config.partial_bytes_max,
        selftest_interval: config.selftest_interval,
        buffer_reports: buffer_reports.clone(),
        buffer: config.disk_buffer.clone().map(|spec| BufferSetup {
            spec,
            encrypt: config.encrypt_internal_traffic,
            memory_budget_bytes: config.memory_budget_bytes,
            epoch: Instant::now(),
        }),
    });
    let cpus = allowed_cpus();
    let mesh = MeshBuilder::<MeshMsg, _>::full(n, MESH_QUEUE_LEN);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, ServerError>>();
    let mut joins = Vec::with_capacity(n);
    for id in 0..n {
        // Shard k goes to the k-th CPU the process may use, so `taskset` and
        // systemd's CPUAffinity= are honoured rather than overridden.
        let placement = match cpus.get(id) {
            Some(&cpu) if config.pin_cpus && n <= cpus.len() => Placement::Fixed(cpu),
            _ => Placement::Unbound,
        };
        let mesh = mesh.clone();
        let listeners = config.listeners.clone();
        let shard_config = shard_config.clone();
        let shard_shutdown = shutdown.clone();
        let probes_ok = probes_ok.clone();
        let ready = ready_tx.clone();
        let builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
        let spawned = builder.spawn(move || async move {
            run_shard(
                id,
                mesh,
                listeners,
                shard_config,
                shard_shutdown,
                probes_ok,
                ready,
            )
            .await;
        });
        match spawned {
            Ok(j) => joins.push(j),
            Err(e) => {
                shutdown.store(true, Ordering::SeqCst);
                return Err(ServerError::Executor {
                    shard: id,
                    message: e.to_string(),
                });
            }
        }
    }
    drop(ready_tx);
    for _ in 0..n {
        let result = ready_rx
            .recv()
            .unwrap_or(Err(ServerError::StartUp { shard: 0 }));
        if let Err(e) = result {
            shutdown.store(true, Ordering::SeqCst);
            for j in joins {
                let _ = j.join();
            }
            return Err(e);
        }
    }
    drop(reservations);
    let addrs = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.addr))
        .collect();
    Ok(ServerHandle {
        shutdown,
        joins,
        addrs,
        probes_ok,
        buffer_reports,
    })
}

/// The client limits with what the memory bounds imply: a session's share
/// of the shard's queue budget, and no packet larger than one connection
/// may hold while receiving it (announced in CONNACK, so v5 clients know).
fn derived_limits(config: &ServerConfig) -> ClientLimits {
    let mut limits = config.limits.clone();
    limits.queue.bytes_max = config.memory_budget_bytes / SESSION_SHARES;
    let receivable = config
        .partial_bytes_max
        .saturating_add(crate::shard::PARTIAL_BYTES_FREE)
        .min(u64::from(u32::MAX)) as u32;
    if receivable < limits.packet_size_max.get() {
        if let Some(max) = std::num::NonZeroU32::new(receivable) {
            info!(
                configured = limits.packet_size_max.get(),
                in_force = receivable,
                "maxPacketSizeBytes lowered to what a shard may hold of packets being \
                 received (memoryProfile, docs/CONFIG.md)"
            );
            limits.packet_size_max = max;
        }
    }
    limits
}

/// Opens shard `id`'s disk buffer; on failure the shard runs without one
/// (queues bounded by `subscriberQueueLimit`), which the log says plainly.
fn open_buffer(id: usize, shards: usize, setup: &BufferSetup) -> Option<DiskBuffer> {
    let share = setup.spec.size_max_bytes / shards as u64;
    // At least two segments per shard: the segment being written is never
    // reclaimed, so with one the buffer would stay full once it filled.
    let segment_bytes = setup
        .spec
        .segment_bytes
        .min(share / 2)
        .max(crate::buffer::SEGMENT_BYTES_MIN);
    match DiskBuffer::open(
        &setup.spec.data_dir,
        id,
        share,
        segment_bytes,
        setup.encrypt,
        setup.epoch,
    ) {
        Ok(mut disk) => {
            // Runs on the shard's executor: reclaimed segments are deleted on
            // its blocking pool, so the event loop never stalls on an unlink
            // (the pool's thread still shares the shard's CPU when pinned).
            disk.set_deleter(Deleter::new(|doomed| {
                glommio::spawn_local(async move {
                    glommio::executor()
                        .spawn_blocking(move || drop(doomed))
                        .await;
                })
                .detach();
            }));
            info!(
                shard = id,
                dir = %disk.dir().display(),
                max_bytes = share,
                memory_budget_bytes = setup.memory_budget_bytes,
                encryptInternalTraffic = if disk.encrypted() { "Enabled" } else { "Disabled" },
                leftover_segments_removed = disk.removed_at_open(),
                "disk buffer open"
            );
            Some(disk)
        }
        Err(e) => {
            error!(
                shard = id,
                error = %e,
                "disk buffer unavailable: this shard runs WITHOUT spilling \
                 (queues bounded by subscriberQueueLimit only)"
            );
            None
        }
    }
}

/// Runs the TLS handshake if the port has TLS (with a deadline, so a client
/// that stalls or sends garbage costs only its own connection), then serves.
async fn accept_one(
    shard: Rc<Shard>,
    stream: glommio::net::TcpStream,
    peer: String,
    security: Rc<ListenerSecurity>,
) {
    let Some(tls) = security.tls.clone() else {
        return connection::serve(shard, stream, peer, security, Vec::new()).await;
    };
    let acceptor = futures_rustls::TlsAcceptor::from(tls);
    let handshake = async { Some(acceptor.accept(stream).await) }
        .or(async {
            glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
            None
        })
        .await;
    match handshake {
        Some(Ok(tls_stream)) => {
            let certs = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            connection::serve(shard, tls_stream, peer, security, certs).await;
        }
        Some(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        None => debug!(%peer, "TLS handshake timed out"),
    }
}

async fn run_shard(
    id: usize,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    listeners: Vec<ListenerSpec>,
    config: Arc<ShardConfig>,
    shutdown: Arc<AtomicBool>,
    probes_ok: Arc<AtomicU64>,
    ready: mpsc::Sender<Result<usize, ServerError>>,
) {
    let Ok((senders, mut receivers)) = mesh.join().await else {
        let _ = ready.send(Err(ServerError::StartUp { shard: id }));
        return;
    };
    let mut shard = Shard::new(id, config.clone(), senders, shutdown.clone(), probes_ok);
    if let Some(b) = config
        .buffer
        .as_ref()
        .and_then(|b| open_buffer(id, config.shards, b))
    {
        shard.install_buffer(b);
    }
    shard.start_outboxes();
    SHARD.with(|s| *s.borrow_mut() = Some(shard.clone()));

    for (_peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.handle_mesh(msg);
            }
        })
        .detach();
    }

    let mut bound = Vec::new();
    for l in listeners
        .iter()
        .filter(|l| l.shards.as_ref().is_none_or(|s| s.contains(&id)))
    {
        match TcpListener::bind(l.addr) {
            Ok(listener) => bound.push((l.name.clone(), listener, Rc::new(l.security.clone()))),
            Err(e) => {
                let _ = ready.send(Err(ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.addr,
                    source: std::io::Error::other(e.to_string()),
                }));
                return;
            }
        }
    }
    let mut accept_tasks = Vec::new();
    for (name, listener, security) in bound {
        let shard = shard.clone();
        accept_tasks.push(glommio::spawn_local(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        glommio::spawn_local(accept_one(
                            shard.clone(),
                            stream,
                            peer,
                            security.clone(),
                        ))
                        .detach();
                    }
                    Err(e) => {
                        // EMFILE and friends: keep serving existing clients.
                        warn!(shard = shard.id, listener = %name, error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let _ = ready.send(Ok(id));
    info!(shard = id, "shard ready");

    if id == 0 {
        if let Some(interval) = config.selftest_interval {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(interval).await;
                    shard.probe_round().await;
                }
            })
            .detach();
        }
    }

    let mut last_stats = Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        glommio::timer::sleep(TICK).await;
        shard.tick(Instant::now());
        if last_stats.elapsed() >= Duration::from_secs(60) {
            shard.log_stats();
            last_stats = Instant::now();
        }
    }

    // Graceful shutdown: stop accepting, tell every client, let writers flush.
    for t in accept_tasks {
        t.cancel().await;
    }
    let conns: Vec<Rc<crate::shard::ConnCell>> = shard
        .conns
        .borrow()
        .iter()
        .filter_map(|w| w.upgrade())
        .collect();
    for cell in &conns {
        connection::shut_down(cell);
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < deadline && conns.iter().any(|c| Rc::strong_count(c) > 1) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shard.log_stats();
    SHARD.with(|s| *s.borrow_mut() = None);
    info!(shard = id, "shard stopped");
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,6"), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("3-1"), Vec::<usize>::new());
    }
}
