//! Server bootstrap: one glommio executor per shard, pinned to a CPU, joined
//! into a channel mesh (`shard::run` does the rest on each). Also the handle
//! the binary and the tests use to wait for and stop the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Instant, SystemTime};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_core::broker::{self, MeshMsg, SelfTestConfig};
use shardmq_core::limits::{ClientLimits, SESSION_SHARES};
use tracing::{error, info};

use crate::reload::{listener_infos, Reloader};
use crate::security::ListenerSecurity;
use crate::shard::{BufferReport, ShardReport, ShardSetup};
use crate::spill::BufferSpec;
use crate::telemetry::Telemetry;

/// Capacity of each shard-to-shard queue; a full queue pushes back on the
/// publishers of the sending shard.
const MESH_QUEUE_LEN: usize = 1024;

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
    /// `diagnostics.selfCheck`; `None`: no self-test.
    pub selftest: Option<SelfTestConfig>,
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
    /// Each shard's session figures, refreshed every tick (250 ms).
    pub shard_reports: Arc<Mutex<Vec<ShardReport>>>,
    /// Metrics, health and `$SYS` figures (`telemetry::http` serves them).
    pub telemetry: Arc<Telemetry>,
    reloader: Reloader,
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

    /// Sends live reconfigurations to the shards (for the SIGHUP handler).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
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
pub(crate) fn reserve_ports(
    listeners: &mut [ListenerSpec],
) -> Result<Vec<socket2::Socket>, ServerError> {
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
    let shard_reports = Arc::new(Mutex::new(vec![ShardReport::default(); n]));
    // Tells this run's broker-assigned client ids apart from other runs'.
    let instance = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let telemetry = Arc::new(Telemetry::new(n, listener_infos(&config.listeners)));
    let (reload_txs, reload_rxs): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            (tx, Some(rx))
        })
        .unzip();
    let setup = Arc::new(ShardSetup {
        broker: Arc::new(broker::ShardConfig {
            shards: n,
            instance,
            limits: Arc::new(derived_limits(&config)),
            retained_max: config.retained_max,
            retained_bytes_max: config.retained_bytes_max,
            partial_bytes_max: config.partial_bytes_max,
            selftest: config.selftest,
        }),
        memory_budget_bytes: config.memory_budget_bytes,
        listeners: config.listeners.clone(),
        buffer: config.disk_buffer.clone().map(|spec| BufferSetup {
            spec,
            encrypt: config.encrypt_internal_traffic,
            memory_budget_bytes: config.memory_budget_bytes,
            epoch: Instant::now(),
        }),
        shutdown: shutdown.clone(),
        probes_ok: probes_ok.clone(),
        buffer_reports: buffer_reports.clone(),
        shard_reports: shard_reports.clone(),
        telemetry: telemetry.clone(),
        reloads: Mutex::new(reload_rxs),
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
        let setup = setup.clone();
        let ready = ready_tx.clone();
        let builder = LocalExecutorBuilder::new(placement).name(&format!("shard-{id}"));
        let spawned = builder.spawn(move || async move {
            crate::shard::run(id, mesh, setup, ready).await;
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
        shard_reports,
        reloader: Reloader::new(n, reload_txs, config.listeners.clone(), telemetry.clone()),
        telemetry,
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
        .saturating_add(broker::PARTIAL_BYTES_FREE)
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
