//! What the server starts from and what a reload tells a shard: the
//! resolved listeners and settings, the errors of starting, and the port
//! reservations that keep a second broker off our ports. Plain data below
//! the modules that use it (server, shard, reload, cli), so none of them
//! imports another to find a type.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shardmq_core::broker::SelfTestConfig;
use shardmq_core::limits::ClientLimits;

use crate::buffer::BufferSpec;
use crate::security::ListenerSecurity;

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
    /// `persistence`; `None`: nothing survives a restart.
    pub persistence: Option<crate::persist::PersistSpec>,
    /// `cluster`; `None`: a single node.
    pub cluster: Option<std::sync::Arc<crate::cluster::runtime::ClusterSetup>>,
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
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    #[error("shard {shard} stopped during start-up")]
    StartUp { shard: usize },
    #[error("listener {name}: shard {shard} does not exist (shards: {shards})")]
    NoSuchShard {
        name: String,
        shard: usize,
        shards: usize,
    },
}

/// What one shard is told.
#[derive(Debug)]
pub struct Reconfig {
    /// Every port of the new config, addresses resolved.
    pub listeners: Vec<ListenerSpec>,
    /// Ports whose TLS or authentication changed: their connections are
    /// closed (DISCONNECT 0x8B) so the clients come back under the new rules.
    pub reconnect: HashSet<String>,
    /// Ports whose authorization changed: their clients' permissions are
    /// compiled again and subscriptions no longer allowed revoked.
    pub recheck: HashSet<String>,
    pub limits: Arc<ClientLimits>,
    /// Port reservations, held until every shard has applied this.
    pub(crate) _reservations: Mutex<Vec<socket2::Socket>>,
}

/// How long a port still held is waited for. A broker killed with -9
/// leaves its listening sockets to the kernel's io_uring teardown, which
/// closes them asynchronously some milliseconds after the process is gone
/// (seen: 2 of 5 restarts right after kill -9 failed); a restart under
/// systemd or a crash test must not fail for that. A live broker on the
/// port is still refused, this much later.
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn bind_when_released(probe: &socket2::Socket, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    loop {
        match probe.bind(&addr.into()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
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
            bind_when_released(&probe, l.addr).map_err(bind_err)?;
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
