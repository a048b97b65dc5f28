//! From the validated `Config` to what the server runs, and the start-up
//! summary the binary logs. Refuses, with the config path, anything the
//! config may name but this build does not enforce yet: a listener that asks
//! for TLS or authentication must never silently run without it.

use shardmq_core::config::Config;

use crate::buffer::SEGMENT_BYTES_DEFAULT;
use crate::server::{ListenerSpec, ServerConfig};
use crate::spill::{BufferSpec, DATA_DIR_DEFAULT};

/// Retained topics the broker keeps (a limit on everything: TIGER_STYLE).
const RETAINED_MAX: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "{path}: {what} is not supported by this build yet; remove it or run a build that has it"
    )]
    NotYet { path: String, what: &'static str },
}

/// Builds the server's config; fails on features that are configured but not
/// built yet.
pub fn server_config(config: &Config) -> Result<ServerConfig, SetupError> {
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        for (j, p) in l.ports.iter().enumerate() {
            let path = format!("listeners[{i}].ports[{j}]");
            if p.tls.is_some() {
                return Err(SetupError::NotYet {
                    path: format!("{path}.tls"),
                    what: "TLS",
                });
            }
            if p.authentication_ref.is_some() {
                return Err(SetupError::NotYet {
                    path: format!("{path}.authenticationRef"),
                    what: "authentication",
                });
            }
            if p.authorization_ref.is_some() {
                return Err(SetupError::NotYet {
                    path: format!("{path}.authorizationRef"),
                    what: "authorization",
                });
            }
            let name = match p.addr.port() {
                0 => format!("{}#{j}", l.name),
                port => format!("{}:{port}", l.name),
            };
            listeners.push(ListenerSpec {
                name,
                addr: p.addr,
                shards: p.shards.clone(),
            });
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shards = config.cardinality.shards.map_or(cores, |n| n.get());
    let self_check = &config.diagnostics.self_check;
    Ok(ServerConfig {
        shards,
        pin_cpus: true,
        listeners,
        limits: config.advanced.clients.clone(),
        retained_max: RETAINED_MAX,
        selftest_interval: self_check.enabled.then_some(self_check.interval),
        disk_buffer: config.disk_buffer.as_ref().map(|b| BufferSpec {
            data_dir: b
                .data_dir
                .clone()
                .unwrap_or_else(|| DATA_DIR_DEFAULT.into()),
            size_max_bytes: b.size_max_bytes.get(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }),
        encrypt_internal_traffic: config.advanced.encrypt_internal_traffic,
        memory_budget_bytes: shardmq_core::buffer::memory_budget_bytes(config.memory_profile),
    })
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
    for l in &server.listeners {
        let shards = match &l.shards {
            Some(s) => format!("{s:?}"),
            None => "all".to_owned(),
        };
        lines.push(format!(
            "listener {} on {} (shards: {shards}, anonymous, plain TCP)",
            l.name, l.addr
        ));
    }
    lines
}
