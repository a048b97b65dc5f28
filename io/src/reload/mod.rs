//! Live reconfiguration (SIGHUP): the new config file is validated and
//! loaded with the start-up code (`Config::from_json_str`, `cli::server_config`),
//! compared with the running one port by port (identity: name and port),
//! and each shard is told what changed through a channel its tick polls
//! (`apply`). A config that fails anywhere is rejected whole and the
//! running one stays.

pub mod apply;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::SystemTime;

use shardmq_auth::node_tls::NodeTrust;
use shardmq_auth::CertManager;
use shardmq_core::config::{Authentication, Authorization, Config, ListenerTls};
use shardmq_core::limits::ClientLimits;
use tracing::{error, info, warn};

use crate::cli::{port_name, server_config, Built};
pub use crate::setup::Reconfig;
use crate::setup::{reserve_ports, ListenerSpec, ServerError};
use crate::telemetry::{ListenerInfo, Telemetry};

/// What a port demands of its clients, to tell which ports changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortPolicy {
    tls: Option<ListenerTls>,
    authentication: Option<Authentication>,
    authorization: Option<Authorization>,
}

fn policies(config: &Config) -> HashMap<String, PortPolicy> {
    let mut out = HashMap::new();
    for l in &config.listeners {
        for (j, p) in l.ports.iter().enumerate() {
            let find_authn = |r: &String| config.authentications.iter().find(|a| &a.name == r);
            let find_authz = |r: &String| config.authorizations.iter().find(|a| &a.name == r);
            out.insert(
                port_name(&l.name, j, p.addr),
                PortPolicy {
                    tls: p.tls.clone(),
                    authentication: p.authentication_ref.as_ref().and_then(find_authn).cloned(),
                    authorization: p.authorization_ref.as_ref().and_then(find_authz).cloned(),
                },
            );
        }
    }
    out
}

/// The server's side of reloads: one sender per shard and what runs now.
#[derive(Debug, Clone)]
pub struct Reloader {
    shards: usize,
    senders: Arc<Mutex<Vec<mpsc::Sender<Arc<Reconfig>>>>>,
    current: Arc<Mutex<Vec<ListenerSpec>>>,
    telemetry: Arc<Telemetry>,
}

impl Reloader {
    pub fn new(
        shards: usize,
        senders: Vec<mpsc::Sender<Arc<Reconfig>>>,
        current: Vec<ListenerSpec>,
        telemetry: Arc<Telemetry>,
    ) -> Reloader {
        Reloader {
            shards,
            senders: Arc::new(Mutex::new(senders)),
            current: Arc::new(Mutex::new(current)),
            telemetry,
        }
    }

    /// Sends the shards a new set of listeners and limits. New ports are
    /// reserved first (a port someone else holds fails here, before any
    /// shard changes anything). Returns the ports as resolved.
    pub fn apply(
        &self,
        mut listeners: Vec<ListenerSpec>,
        reconnect: HashSet<String>,
        recheck: HashSet<String>,
        limits: ClientLimits,
    ) -> Result<Vec<ListenerSpec>, ServerError> {
        for l in &listeners {
            for &s in l.shards.iter().flatten() {
                if s >= self.shards {
                    return Err(ServerError::NoSuchShard {
                        name: l.name.clone(),
                        shard: s,
                        shards: self.shards,
                    });
                }
            }
        }
        let current = self.current.lock().map(|c| c.clone()).unwrap_or_default();
        // A port kept by name keeps its address (port 0: the one the
        // kernel picked); only new ones are reserved.
        let mut fresh = Vec::new();
        for l in listeners.iter_mut() {
            let kept = current.iter().find(|c| {
                c.name == l.name
                    && (c.addr == l.addr || l.addr.port() == 0)
                    && c.addr.ip() == l.addr.ip()
            });
            match kept {
                Some(c) => l.addr = c.addr,
                None => fresh.push(l.clone()),
            }
        }
        let reservations = reserve_ports(&mut fresh)?;
        for l in listeners.iter_mut() {
            if let Some(f) = fresh.iter().find(|f| f.name == l.name) {
                l.addr = f.addr;
            }
        }
        let reconfig = Arc::new(Reconfig {
            listeners: listeners.clone(),
            reconnect,
            recheck,
            limits: Arc::new(limits),
            _reservations: Mutex::new(reservations),
        });
        if let Ok(senders) = self.senders.lock() {
            for tx in senders.iter() {
                let _ = tx.send(reconfig.clone());
            }
        }
        self.telemetry.set_listeners(listener_infos(&listeners));
        if let Ok(mut c) = self.current.lock() {
            *c = listeners.clone();
        }
        Ok(listeners)
    }
}

pub fn listener_infos(listeners: &[ListenerSpec]) -> Vec<ListenerInfo> {
    listeners
        .iter()
        .map(|l| ListenerInfo {
            name: l.name.clone(),
            shards: l.shards.clone(),
            cert: l.security.cert.clone(),
        })
        .collect()
}

/// Reads and validates a config file exactly as start-up does; every
/// problem is one line `FILE: path: message`.
pub fn load(path: &Path) -> Result<(Config, Vec<String>), Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read config {}: {e}", path.display())])?;
    match Config::from_json_str(&text) {
        Ok(loaded) => {
            // Absolute, so the paths the log shows say where they are.
            let base = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
            let warnings = loaded
                .warnings
                .iter()
                .map(|w| format!("{}: {}", w.path, w.message))
                .collect();
            Ok((loaded.config.with_base_dir(&base), warnings))
        }
        Err(errors) => Err(errors
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect()),
    }
}

/// Settings a running broker cannot change: named when a reload changes
/// them (they take effect at the next start).
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("cardinality", old.cardinality != new.cardinality);
    check("memoryProfile", old.memory_profile != new.memory_profile);
    check(
        "diskBackedMessageBuffer",
        old.disk_buffer != new.disk_buffer,
    );
    check("stateDir", old.state_dir != new.state_dir);
    // The keys rotate on SIGHUP (their source is re-read); the policy and
    // the directory are read at start only.
    check("persistence", old.persistence != new.persistence);
    check(
        "advanced.encryptInternalTraffic",
        old.advanced.encrypt_internal_traffic != new.advanced.encrypt_internal_traffic,
    );
    check(
        "advanced.internalCerts",
        old.advanced.internal_certs != new.advanced.internal_certs,
    );
    check(
        "advanced.clients.sessionTakeover",
        old.advanced.clients.session_takeover != new.advanced.clients.session_takeover,
    );
    // The CA files are re-read on SIGHUP (ClusterCa); the rest is not.
    let place = |c: &Option<shardmq_core::config::Cluster>| {
        c.as_ref()
            .map(|c| (c.node.clone(), c.bind, c.peers.clone(), c.ca.is_some()))
    };
    check(
        "cluster (node, address, peers)",
        place(&old.cluster) != place(&new.cluster),
    );
    let (od, nd) = (&old.diagnostics, &new.diagnostics);
    check("diagnostics.logs", od.log_filter != nd.log_filter);
    check(
        "diagnostics.metrics",
        (od.prometheus_port, od.metrics_bind_address)
            != (nd.prometheus_port, nd.metrics_bind_address),
    );
    check("diagnostics.selfCheck", od.self_check != nd.self_check);
    changed
}

/// The outcome of a reload the running broker took.
#[derive(Debug)]
pub struct Reloaded {
    pub config: Config,
    pub built: Built,
}

/// Re-reads `path` and applies it: the whole file is validated and every
/// policy, certificate and key loaded before anything changes. `Err` lists
/// each problem; the running config then stays in force.
pub fn reload(path: &Path, running: &Config, reloader: &Reloader) -> Result<Reloaded, Vec<String>> {
    let (mut config, warnings) = load(path)?;
    config.state_dir = running.state_dir.clone();
    for w in &warnings {
        warn!("config: {w}");
    }
    let built = server_config(&config).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let (old, new) = (policies(running), policies(&config));
    let mut reconnect = HashSet::new();
    let mut recheck = HashSet::new();
    for (name, policy) in &new {
        let Some(before) = old.get(name) else {
            continue;
        };
        if before.tls != policy.tls || before.authentication != policy.authentication {
            reconnect.insert(name.clone());
        } else if before.authorization != policy.authorization {
            recheck.insert(name.clone());
        }
    }
    let listeners = reloader
        .apply(
            built.server.listeners.clone(),
            reconnect.clone(),
            recheck.clone(),
            config.advanced.clients.clone(),
        )
        .map_err(|e| vec![format!("{}: {e}", path.display())])?;
    reloader
        .telemetry
        .set_sys_interval(config.diagnostics.sys_interval);
    let before: HashSet<&String> = old.keys().collect();
    let after: HashSet<&String> = new.keys().collect();
    let mut added: Vec<_> = after.difference(&before).collect();
    let mut removed: Vec<_> = before.difference(&after).collect();
    added.sort();
    removed.sort();
    info!(
        listeners = listeners.len(),
        ?added,
        ?removed,
        security_changed = ?sorted(&reconnect),
        authorization_changed = ?sorted(&recheck),
        "SIGHUP: configuration reloaded"
    );
    for setting in restart_only_changes(running, &config) {
        warn!(
            setting,
            "SIGHUP: this setting changed; it takes effect at the next restart"
        );
    }
    Ok(Reloaded { config, built })
}

/// A cluster node's link trust and certificate as they run, for a CA
/// rotation on SIGHUP (docs/CLUSTER.md, "Rotating the cluster CA").
#[derive(Debug, Clone)]
pub struct ClusterCa {
    pub trust: Arc<NodeTrust>,
    /// The node's certificate manager (one), shared with its renewal thread.
    pub cert: Arc<Mutex<Vec<CertManager>>>,
}

impl ClusterCa {
    /// Takes the CA files a reload read (`built`, already validated): when
    /// they changed, every root they hold is trusted from the next handshake
    /// on and this node's certificate is issued again under the first one.
    /// Links already up carry on; nothing else changes.
    pub fn rotate(&self, built: &Built, now: SystemTime) {
        let new_tls = built.server.cluster.as_ref().and_then(|c| c.tls.as_ref());
        let (Some(new_cert), Some(new_tls)) = (&built.node_cert, new_tls) else {
            return;
        };
        let Ok(mut managers) = self.cert.lock() else {
            return;
        };
        let Some(running) = managers.first_mut() else {
            return;
        };
        let ca = new_cert.ca();
        if ca.cert_pem() == running.ca().cert_pem() {
            return;
        }
        let roots = new_tls.trust.roots();
        if let Err(e) = self.trust.replace(roots.clone()) {
            error!(error = %e, "SIGHUP: the new cluster CA roots are unusable; the running ones stay");
            return;
        }
        match running.rebase(ca, now) {
            Ok(()) => info!(
                trusted_roots = roots.len(),
                "SIGHUP: cluster CA files changed: new node links trust their roots, and this \
                 node's certificate was issued again under the first; links up stay up"
            ),
            Err(e) => error!(error = %e,
                "SIGHUP: this node's certificate could not be issued under the new cluster CA; \
                 the new roots are trusted, the running certificate stays"),
        }
    }
}

fn sorted(set: &HashSet<String>) -> Vec<&String> {
    let mut v: Vec<_> = set.iter().collect();
    v.sort();
    v
}
