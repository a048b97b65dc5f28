//! From the validated `Config` to what the server runs: listeners with their
//! TLS configs and authentication/authorization policies loaded (every file
//! read and checked here, before any port is bound), the things to reload on
//! SIGHUP and the certificates to renew; and the start-up summary.

use shardmq_core::limits::SESSION_SHARES;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use shardmq_auth::{Authenticator, AuthorizationPolicy, CertManager, InternalCa, ReloadableCert};
use shardmq_core::config::{Config, ListenerTls};

use crate::buffer::{BufferSpec, SEGMENT_BYTES_DEFAULT};
use crate::cluster::runtime::{ClusterSetup, NodeTls};
use crate::persist::keys::{CREDENTIAL_NAME, KEY_ENV};
use crate::persist::{KeyRing, KeySource, PersistSpec};
use crate::security::ListenerSecurity;
use crate::setup::{ListenerSpec, ServerConfig};
use shardmq_auth::node_tls::{self, NodeTrust};
use shardmq_core::cluster::clock::NodeClock;
use shardmq_core::config::ClusterNode;

/// Retained topics the broker keeps (a limit on everything: TIGER_STYLE).
const RETAINED_MAX: usize = 1_000_000;

/// Where the broker keeps its state when neither `stateDir` nor systemd's
/// `$STATE_DIRECTORY` names a folder (what `StateDirectory=shardmq` gives).
pub const STATE_DIR_DEFAULT: &str = "/var/lib/shardmq";
/// The internal CA's folder in the state directory.
const CA_DIR: &str = "internal-ca";
/// `diskBackedMessageBuffer.dataDir` when not set: in the state directory.
const BUFFER_DIR: &str = "buffer";
/// Under the state directory: the cluster control plane's Raft state.
const CLUSTER_DIR: &str = "cluster";
/// Under the state directory when `persistence.dataDir` is not set.
const PERSISTENCE_DIR: &str = "persistence";

/// The state directory: `stateDir` (already resolved against the config
/// file's folder), else the first folder of `$STATE_DIRECTORY` (systemd
/// sets it from `StateDirectory=`, a colon-separated list of absolute
/// paths), else `STATE_DIR_DEFAULT`. Never the working directory, the
/// config folder or `secretsDir`, which a hardened unit keeps read-only.
pub fn state_dir(config: &Config, systemd: Option<&OsStr>) -> PathBuf {
    if let Some(dir) = &config.state_dir {
        return dir.clone();
    }
    let from_systemd = systemd
        .and_then(OsStr::to_str)
        .and_then(|list| list.split(':').find(|d| Path::new(d).is_absolute()));
    PathBuf::from(from_systemd.unwrap_or(STATE_DIR_DEFAULT))
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn invalid(path: impl Into<String>, e: impl std::fmt::Display) -> SetupError {
    SetupError::Invalid {
        path: path.into(),
        message: e.to_string(),
    }
}

/// What runs, plus what the binary keeps to reload and renew.
#[derive(Debug)]
pub struct Built {
    pub server: ServerConfig,
    /// Operator certificates (`tls.mode: Manual`): re-read on SIGHUP.
    pub certs: Vec<Arc<ReloadableCert>>,
    /// Authentication policies: their files re-read on SIGHUP.
    pub authenticators: Vec<Arc<Authenticator>>,
    /// Broker-issued certificates (`tls.mode: Automatic`): renewed before expiry.
    pub managed: Vec<CertManager>,
    /// The internal CA's certificate file, for clients to trust.
    pub ca_cert_file: Option<PathBuf>,
    /// The cluster node link's certificate (`cluster` with
    /// `encryptInternalTraffic` Enabled): renewed before expiry.
    pub node_cert: Option<CertManager>,
}

/// A port's name in logs, metrics and reloads: `listener:port`, or
/// `listener#index` for a port the kernel picks (port 0).
pub fn port_name(listener: &str, index: usize, addr: std::net::SocketAddr) -> String {
    match addr.port() {
        0 => format!("{listener}#{index}"),
        port => format!("{listener}:{port}"),
    }
}

/// Builds the server's config, loading every policy, certificate and key.
pub fn server_config(config: &Config) -> Result<Built, SetupError> {
    let internal = &config.advanced.internal_certs;
    // Reject unsupported key algorithms now, never at renewal time.
    shardmq_auth::check_supported(internal.private_key.algorithm)
        .map_err(|e| invalid("advanced.internalCerts.privateKey.algorithm", e))?;
    let (authenticators, authorizations) = policies(config)?;
    let mut tls = ListenerCerts {
        config,
        state_dir: state_dir(config, None),
        now: SystemTime::now(),
        ca: None,
        certs: Vec::new(),
        managed: Vec::new(),
    };
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        for (j, p) in l.ports.iter().enumerate() {
            let path = format!("listeners[{i}].ports[{j}]");
            // INVARIANT: the config checked that every reference resolves.
            let authenticator = p
                .authentication_ref
                .as_ref()
                .and_then(|r| authenticators.get(r))
                .cloned();
            let authorization = p
                .authorization_ref
                .as_ref()
                .and_then(|r| authorizations.get(r))
                .cloned();
            let cert = tls.cert(&path, &l.name, p)?;
            let server_tls = match cert.clone() {
                None => None,
                Some(cert) => {
                    let verifier = authenticator
                        .as_ref()
                        .and_then(|a| a.client_cert_verifier());
                    Some(
                        shardmq_auth::server_config(cert, verifier)
                            .map_err(|e| invalid(format!("{path}.tls"), e))?,
                    )
                }
            };
            listeners.push(ListenerSpec {
                name: port_name(&l.name, j, p.addr),
                addr: p.addr,
                shards: p.shards.clone(),
                security: ListenerSecurity {
                    tls: server_tls,
                    authenticator,
                    authorization,
                    cert,
                },
            });
        }
    }
    let mut server = settings(config, &tls.state_dir, listeners);
    server.persistence = persistence(config, &tls.state_dir)?;
    let (cluster, node_cert) = cluster(config, &tls.state_dir, tls.now)?;
    server.cluster = cluster;
    check_log_bound(&server)?;
    Ok(Built {
        server,
        certs: tls.certs,
        authenticators: authenticators.into_values().collect(),
        ca_cert_file: tls.ca.and_then(|c| c.cert_file().map(PathBuf::from)),
        managed: tls.managed,
        node_cert,
    })
}

type Authenticators = HashMap<String, Arc<Authenticator>>;
type Authorizations = HashMap<String, Arc<AuthorizationPolicy>>;

/// Every authentication and authorization policy, by name.
fn policies(config: &Config) -> Result<(Authenticators, Authorizations), SetupError> {
    let mut authenticators = HashMap::new();
    for (i, a) in config.authentications.iter().enumerate() {
        let authn = Authenticator::new(a, shardmq_auth::webhook::DEFAULT_TIMEOUT)
            .map_err(|e| invalid(format!("authentications[{i}]"), e))?;
        authenticators.insert(a.name.clone(), Arc::new(authn));
    }
    let mut authorizations = HashMap::new();
    for (i, a) in config.authorizations.iter().enumerate() {
        let policy =
            AuthorizationPolicy::new(a).map_err(|e| invalid(format!("authorizations[{i}]"), e))?;
        authorizations.insert(a.name.clone(), Arc::new(policy));
    }
    Ok((authenticators, authorizations))
}

/// The listeners' certificates as they are built: the operator's files, or
/// ones the internal CA issues (the CA loaded or created on first use).
struct ListenerCerts<'a> {
    config: &'a Config,
    state_dir: PathBuf,
    now: SystemTime,
    ca: Option<Arc<InternalCa>>,
    certs: Vec<Arc<ReloadableCert>>,
    managed: Vec<CertManager>,
}

impl ListenerCerts<'_> {
    fn cert(
        &mut self,
        path: &str,
        listener: &str,
        port: &shardmq_core::config::ListenerPort,
    ) -> Result<Option<Arc<ReloadableCert>>, SetupError> {
        match &port.tls {
            None => Ok(None),
            Some(ListenerTls::Manual(files)) => {
                let cert = Arc::new(
                    ReloadableCert::from_files(files)
                        .map_err(|e| invalid(format!("{path}.tls.manual"), e))?,
                );
                self.certs.push(cert.clone());
                Ok(Some(cert))
            }
            Some(ListenerTls::Automatic(spec)) => {
                let ca = self.ca(path, spec.cert.duration)?;
                let key_file = self
                    .state_dir
                    .join(format!("listener-{listener}-{}.key", port.addr.port()));
                let manager = CertManager::new(ca, spec, Some(key_file), self.now)
                    .map_err(|e| invalid(format!("{path}.tls.certManagerCertificateSpec"), e))?;
                let cert = manager.cert();
                self.managed.push(manager);
                Ok(Some(cert))
            }
        }
    }

    /// The internal CA, loaded or created the first time a port needs it.
    fn ca(
        &mut self,
        path: &str,
        duration: std::time::Duration,
    ) -> Result<Arc<InternalCa>, SetupError> {
        if let Some(ca) = &self.ca {
            return Ok(ca.clone());
        }
        let (loaded, origin) = InternalCa::load_or_create(
            &self.state_dir.join(CA_DIR),
            self.config.advanced.internal_certs.private_key.algorithm,
            duration,
            self.now,
        )
        .map_err(|e| {
            invalid(
                format!(
                    "{path}.tls (internal CA in the state directory {}; \
                     set stateDir or run under systemd with StateDirectory=)",
                    self.state_dir.display()
                ),
                e,
            )
        })?;
        if origin == shardmq_auth::CaOrigin::Created {
            warn_about_an_older_ca(self.config, &self.state_dir);
        }
        let loaded = Arc::new(loaded);
        self.ca = Some(loaded.clone());
        Ok(loaded)
    }
}

/// `cluster`: this node's place, and with `encryptInternalTraffic` Enabled
/// its link certificate from the cluster CA (`advanced.internalCerts`).
fn cluster(
    config: &Config,
    state_dir: &Path,
    now: SystemTime,
) -> Result<(Option<Arc<ClusterSetup>>, Option<CertManager>), SetupError> {
    let Some(c) = &config.cluster else {
        return Ok((None, None));
    };
    let name = match &c.node {
        Some(n) => n.clone(),
        None => host_name()?,
    };
    let (tls, manager) = match &c.ca {
        None => (None, None),
        Some(files) => {
            let ca = InternalCa::load(&files.cert, &files.key)
                .map_err(|e| invalid("cluster.caCertFile", e))?;
            let policy = &config.advanced.internal_certs;
            let manager = CertManager::new_node(Arc::new(ca), &name, policy, now)
                .map_err(|e| invalid("advanced.internalCerts", e))?;
            // Every certificate of the CA file is trusted: the current CA
            // (first) and, during a rotation, the next or the previous one.
            let roots = shardmq_auth::node_tls::trusted_roots(manager.ca().cert_pem())
                .map_err(|e| invalid("cluster.caCertFile", e))?;
            let trust = NodeTrust::new(roots).map_err(|e| invalid("cluster.caCertFile", e))?;
            let server = node_tls::node_server_config(manager.cert(), &trust)
                .map_err(|e| invalid("cluster", e))?;
            let client = node_tls::node_client_config(manager.cert(), &trust)
                .map_err(|e| invalid("cluster", e))?;
            (
                Some(NodeTls {
                    server,
                    client,
                    trust,
                }),
                Some(manager),
            )
        }
    };
    let incarnation = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let me = ClusterNode {
        id: shardmq_core::config::node_id(&name),
        name,
        host: c.bind.ip().to_string(),
        port: c.bind.port(),
    };
    // One peer list serves every node: this node's own entry is skipped.
    let peers: Vec<ClusterNode> = c
        .peers
        .iter()
        .filter(|p| p.name != me.name)
        .cloned()
        .collect();
    if peers.is_empty() {
        return Err(invalid(
            "cluster.peers",
            format!("no node but this one ({})", me.name),
        ));
    }
    if let Some(p) = peers.iter().find(|p| p.id == me.id) {
        return Err(invalid(
            "cluster.peers",
            format!(
                "\"{}\" derives the same node id as this node \"{}\": rename one",
                p.name, me.name
            ),
        ));
    }
    let setup = ClusterSetup {
        me,
        bind: c.bind,
        peers,
        incarnation: shardmq_core::cluster::Incarnation(incarnation),
        clock: Arc::new(NodeClock::new(
            std::time::Instant::now(),
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )),
        tls,
        dir: state_dir.join(CLUSTER_DIR),
    };
    Ok((Some(Arc::new(setup)), manager))
}

/// `cluster.node` when absent: the host name (in a StatefulSet, the pod's
/// name, which the peer list names too).
fn host_name() -> Result<String, SetupError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| {
        invalid(
            "cluster.node",
            format!("not set, and the host name is unreadable: {e}"),
        )
    })?;
    let name = text.trim().to_ascii_lowercase();
    if !shardmq_core::config::valid_node_name(&name) {
        return Err(invalid(
            "cluster.node",
            format!("not set, and the host name {name:?} is no node name: set cluster.node"),
        ));
    }
    Ok(name)
}

/// `persistence`: the directory and, with encryption Enabled, the keys
/// (refused without one: a key generated beside the data would protect
/// nothing, docs/PERSISTENCE.md "The key").
fn persistence(config: &Config, state_dir: &Path) -> Result<Option<PersistSpec>, SetupError> {
    let Some(policy) = &config.persistence else {
        return Ok(None);
    };
    let keys = if policy.encrypt {
        let source = KeySource::find(policy.key_file.as_ref()).ok_or_else(|| {
            invalid(
                "persistence.keyFile",
                format!(
                    "encryption.mode is Enabled and no key is given: set persistence.keyFile to a \
                     file with mode 0600 holding 64 hexadecimal digits (`umask 077; openssl rand \
                     -hex 32 > /etc/shardmq/persistence.key`), or pass a systemd credential named \
                     {CREDENTIAL_NAME}, or set {KEY_ENV}"
                ),
            )
        })?;
        let ring = KeyRing::load(source).map_err(|e| invalid("persistence.keyFile", e))?;
        Some(Arc::new(ring))
    } else {
        None
    };
    Ok(Some(PersistSpec {
        policy: Arc::new(policy.clone()),
        dir: policy
            .data_dir
            .clone()
            .unwrap_or_else(|| state_dir.join(PERSISTENCE_DIR)),
        keys,
        stamped: config.cluster.is_some(),
    }))
}

/// A shard's persisted log holds up to twice its retained set before it is
/// compacted, and the log format addresses 4 GiB: with persisted retained
/// messages, a shard's share of `retainedMessages.maxSize` stays under
/// 1 GiB so a log can never outgrow its format (a write refused there would
/// hold acknowledgements for ever).
fn check_log_bound(server: &ServerConfig) -> Result<(), SetupError> {
    const MAX_PER_SHARD: u64 = 1 << 30;
    let persists = server
        .persistence
        .as_ref()
        .is_some_and(|p| p.policy.retain != shardmq_core::config::RetainPolicy::None);
    if persists && server.retained_bytes_max > MAX_PER_SHARD {
        return Err(invalid(
            "retainedMessages.maxSize",
            format!(
                "with persisted retained messages each shard's share may be at most 1 GiB (it \
                 is {} bytes over {} workers): a shard's log holds up to twice it and the log \
                 format addresses 4 GiB; lower it or add workers",
                server
                    .retained_bytes_max
                    .saturating_mul(server.shards as u64),
                server.shards
            ),
        ));
    }
    check_queue_log_bound(server, persists)
}

/// With persisted queues a shard's log also holds what its sessions' queues
/// hold: at most its memory budget and its share of the disk buffer. With
/// its persisted retained share, that live state stays under 1.75 GiB, so a
/// log that holds up to twice it never outgrows the format's 4 GiB.
fn check_queue_log_bound(server: &ServerConfig, retained: bool) -> Result<(), SetupError> {
    const MAX_LIVE_PER_SHARD: u64 = 7 << 28;
    let queues = server
        .persistence
        .as_ref()
        .is_some_and(|p| p.policy.queues != shardmq_core::config::QueuePolicy::None);
    if !queues {
        return Ok(());
    }
    let shards = server.shards.max(1) as u64;
    let disk_share = server
        .disk_buffer
        .as_ref()
        .map_or(0, |b| b.size_max_bytes / shards);
    let retained_share = if retained {
        server.retained_bytes_max
    } else {
        0
    };
    let live = server.memory_budget_bytes + disk_share + retained_share;
    if live <= MAX_LIVE_PER_SHARD {
        let share = server
            .persistence
            .as_ref()
            .map_or(u64::MAX, |p| p.policy.size_max_bytes.get() / shards);
        // A shard's log is kept to half its share, so a rewrite's new file
        // fits beside it (docs/PERSISTENCE.md, "`maxSize`").
        let limit = share / 2;
        if retained_share >= limit {
            tracing::warn!(
                limit_mib = limit >> 20,
                retained_mib = retained_share >> 20,
                "persistence.maxSize: persisted retained messages alone may fill a shard's log \
                 (kept to half its share of maxSize); its persisted queues would then refuse \
                 every QoS 1/2 message: raise maxSize or lower retainedMessages.maxSize"
            );
        } else if live > limit {
            tracing::warn!(
                limit_mib = limit >> 20,
                live_mib = live >> 20,
                "persistence.maxSize: a shard's queues and persisted retained messages may hold \
                 more than its log may (half its share of maxSize): past that, persisted queues \
                 refuse new QoS 1/2 messages before their queue limits (docs/PERSISTENCE.md)"
            );
        }
        return Ok(());
    }
    Err(invalid(
        "persistence.subscriberQueue",
        format!(
            "with persisted queues a shard's log holds its queues (its memoryProfile budget, \
             {} MiB, and its share of diskBackedMessageBuffer.maxSize, {} MiB){} and may \
             hold at most 1792 MiB of them (twice that before compaction, and the log format \
             addresses 4 GiB); lower diskBackedMessageBuffer.maxSize or memoryProfile, or \
             add workers",
            server.memory_budget_bytes >> 20,
            disk_share >> 20,
            if retained {
                format!(
                    " and its persisted retained share ({} MiB)",
                    retained_share >> 20
                )
            } else {
                String::new()
            },
        ),
    ))
}

/// Everything but the listeners: shards, limits, the buffer, budgets.
fn settings(config: &Config, state_dir: &Path, listeners: Vec<ListenerSpec>) -> ServerConfig {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shards = config.cardinality.shards.map_or(cores, |n| n.get());
    let self_check = &config.diagnostics.self_check;
    let memory_budget_bytes = shardmq_core::buffer::memory_budget_bytes(config.memory_profile);
    ServerConfig {
        shards,
        pin_cpus: true,
        listeners,
        limits: config.advanced.clients.clone(),
        retained_max: RETAINED_MAX,
        selftest: self_check
            .enabled
            .then_some(shardmq_core::broker::SelfTestConfig {
                interval: self_check.interval,
                timeout: self_check.timeout,
            }),
        disk_buffer: config.disk_buffer.as_ref().map(|b| BufferSpec {
            data_dir: b
                .data_dir
                .clone()
                .unwrap_or_else(|| state_dir.join(BUFFER_DIR)),
            size_max_bytes: b.size_max_bytes.get(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }),
        encrypt_internal_traffic: config.advanced.encrypt_internal_traffic,
        memory_budget_bytes,
        retained_bytes_max: config
            .retained_size_max_bytes
            .map_or(memory_budget_bytes / SESSION_SHARES, |b| b / shards as u64),
        partial_bytes_max: memory_budget_bytes / SESSION_SHARES,
        persistence: None,
        cluster: None,
    }
}

/// Versions before `stateDir` kept the internal CA in `secretsDir` or in
/// `./shardmq-data` of the working directory. A CA found there is not used
/// any more: say so, since clients trust the old one.
fn warn_about_an_older_ca(config: &Config, state_dir: &Path) {
    let old_homes = config
        .secrets_dir
        .iter()
        .cloned()
        .chain(std::env::current_dir().ok().map(|d| d.join("shardmq-data")));
    for old in old_homes.map(|d| d.join(CA_DIR)) {
        if old.join("ca.crt").exists() && old != state_dir.join(CA_DIR) {
            tracing::warn!(
                old = %old.display(),
                new = %state_dir.join(CA_DIR).display(),
                "a new internal CA was created in the state directory; the one an earlier \
                 version kept in `old` is not used. Clients that trusted it need the new \
                 ca.crt, or stop the broker and move the old folder's files to `new`"
            );
        }
    }
}

/// The start-up log lines: what runs, where, with which limits.
pub fn summary(config: &Config, server: &ServerConfig) -> Vec<String> {
    let limits = &config.advanced.clients;
    let mut lines = vec![
        format!(
            "shardmq {}: {} shard(s), pinned to CPUs: {}",
            env!("CARGO_PKG_VERSION"),
            server.shards,
            server.pin_cpus
        ),
        format!(
            "encryptInternalTraffic: {}",
            if config.advanced.encrypt_internal_traffic {
                "Enabled"
            } else {
                "Disabled"
            }
        ),
        format!(
            "limits: maxPacketSizeBytes={} maxReceiveMaximum={} maxKeepAliveSeconds={} \
             maxSessionExpirySeconds={} subscriberQueueLimit={:?}",
            limits.packet_size_max,
            limits.receive_maximum_max,
            limits.keep_alive_max,
            limits.session_expiry_max.as_secs(),
            limits.queue
        ),
        format!(
            "state directory: {} (internal CA, Automatic TLS keys, default disk buffer folder)",
            state_dir(config, None).display()
        ),
        format!(
            "memoryProfile: {:?} ({} MiB of queued messages in memory per shard)",
            config.memory_profile,
            server.memory_budget_bytes / (1024 * 1024)
        ),
        match &server.disk_buffer {
            Some(b) => format!(
                "diskBackedMessageBuffer: maxSize={} bytes in {}",
                b.size_max_bytes,
                b.data_dir.display()
            ),
            None => {
                "diskBackedMessageBuffer: none (queues bounded by subscriberQueueLimit)".to_owned()
            }
        },
    ];
    lines.push(match &server.persistence {
        Some(p) => {
            let key = p
                .keys
                .as_ref()
                .and_then(|k| k.keys().first().map(|k| k.name()))
                .map_or("none (encryption Disabled)".to_owned(), |name| {
                    format!("AES-256-GCM under key {name}")
                });
            format!(
                "persistence: retained messages ({:?}), sessions with expiry > 0 and their \
                 queued messages ({:?}) in {}, maxSize={} bytes, {key}",
                p.policy.retain,
                p.policy.queues,
                p.dir.display(),
                p.policy.size_max_bytes
            )
        }
        None => "persistence: none (nothing survives a restart)".to_owned(),
    });
    let check = &config.diagnostics.self_check;
    lines.push(if check.enabled {
        format!(
            "selfCheck: a probe through every shard every {} s, answers awaited up to {} s",
            check.interval.as_secs(),
            check.timeout.as_secs()
        )
    } else {
        "selfCheck: Disabled".to_owned()
    });
    for l in &server.listeners {
        let shards = match &l.shards {
            Some(s) => format!("{s:?}"),
            None => "all".to_owned(),
        };
        let sec = &l.security;
        lines.push(format!(
            "listener {} on {} (shards: {shards}, {}, {}, {})",
            l.name,
            l.addr,
            if sec.tls.is_some() {
                "TLS"
            } else {
                "plain TCP"
            },
            match &sec.authenticator {
                Some(a) => format!("authentication {}", a.name()),
                None => "anonymous".to_owned(),
            },
            match &sec.authorization {
                Some(a) => format!("authorization {}", a.name()),
                None => "no authorization policy".to_owned(),
            },
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_state_dir_then_systemds_then_the_default() {
        let mut config = Config::default();
        assert_eq!(state_dir(&config, None), Path::new(STATE_DIR_DEFAULT));
        let systemd = OsStr::new("/var/lib/shardmq:/var/lib/other");
        assert_eq!(
            state_dir(&config, Some(systemd)),
            Path::new("/var/lib/shardmq")
        );
        // systemd passes absolute paths; anything else is not trusted.
        assert_eq!(
            state_dir(&config, Some(OsStr::new("relative"))),
            Path::new(STATE_DIR_DEFAULT)
        );
        config.state_dir = Some("/srv/broker".into());
        assert_eq!(state_dir(&config, Some(systemd)), Path::new("/srv/broker"));
    }
}
