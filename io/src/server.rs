//! Server bootstrap: one glommio executor per shard, pinned to a CPU, joined
//! into a channel mesh (`shard::run` does the rest on each). Also the handle
//! the binary and the tests use to wait for and stop the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Instant, SystemTime};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_core::broker::{self, MeshMsg};
use shardmq_core::limits::{ClientLimits, SESSION_SHARES};
use tracing::{error, info};

use crate::persist::{KeyRing, PersistRun};
use crate::reload::{listener_infos, Reloader};
use crate::shard::{BufferReport, ShardReport, ShardSetup};
use crate::telemetry::Telemetry;

use crate::setup::reserve_ports;
pub use crate::setup::{BufferSetup, ListenerSpec, ServerConfig, ServerError};

/// Capacity of each shard-to-shard queue; a full queue pushes back on the
/// publishers of the sending shard.
const MESH_QUEUE_LEN: usize = 1024;

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
    /// Persistence's key-encryption keys (re-read on SIGHUP to rotate).
    pub persist_keys: Option<Arc<KeyRing>>,
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

/// Starts the shards and returns once every listener is bound on every
/// shard that serves it (or the first error).
pub fn start(mut config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let n = config.shards.max(1);
    check_listener_shards(&config.listeners, n)?;
    let reservations = reserve_ports(&mut config.listeners)?;
    // After the ports: a second broker started by mistake fails on them
    // before it touches the files (and the directory lock stops it too).
    let persist = match &config.persistence {
        Some(spec) => Some(PersistRun::start(spec, n)?),
        None => None,
    };
    let persist_keys = config.persistence.as_ref().and_then(|p| p.keys.clone());
    let control = match &config.cluster {
        Some(c) => Some(
            crate::cluster::control::Control::start(c, &c.dir, n).map_err(|source| {
                ServerError::Bind {
                    name: "cluster control".to_owned(),
                    addr: crate::cluster::control::control_addr(c.bind),
                    source,
                }
            })?,
        ),
        None => None,
    };
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
    if let Some(run) = &persist {
        telemetry.set_recovery(run.recovered.clone());
    }
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
            persistence: config.persistence.as_ref().map(|p| p.policy.clone()),
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
        persist,
        cluster: config.cluster.clone(),
        control,
    });
    let joins = spawn_shards(n, config.pin_cpus, &setup, &shutdown)?;
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
        persist_keys,
    })
}

/// A listener may name only shards that exist.
fn check_listener_shards(listeners: &[ListenerSpec], n: usize) -> Result<(), ServerError> {
    for l in listeners {
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
    Ok(())
}

/// One pinned executor per shard; returns once each has bound its
/// listeners, or stops them all at the first that fails.
fn spawn_shards(
    n: usize,
    pin_cpus: bool,
    setup: &Arc<ShardSetup>,
    shutdown: &Arc<AtomicBool>,
) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, ServerError> {
    let cpus = allowed_cpus();
    let mesh = MeshBuilder::<MeshMsg, _>::full(n, MESH_QUEUE_LEN);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, ServerError>>();
    let mut joins = Vec::with_capacity(n);
    for id in 0..n {
        // Shard k goes to the k-th CPU the process may use, so `taskset` and
        // systemd's CPUAffinity= are honoured rather than overridden.
        let placement = match cpus.get(id) {
            Some(&cpu) if pin_cpus && n <= cpus.len() => Placement::Fixed(cpu),
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
    Ok(joins)
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
