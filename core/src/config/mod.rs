//! The broker config: one JSON document shaped like AIO's Broker spec plus
//! its BrokerListener / BrokerAuthentication / BrokerAuthorization specs
//! (docs/CONFIG.md is the field reference). Text in, validated `Config` or
//! every problem with its JSON path out. No I/O: the server reads the file
//! and later opens the certificate and key files named here.

mod access;
mod cluster;
mod error;
mod listeners;
mod load;
mod persistence;
mod raw;
mod types;
mod units;
mod validate;

use std::path::Path;

pub use cluster::{node_id, valid_node_name, CaFiles, Cluster, ClusterNode, CLUSTER_NODES_MAX};
pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use listeners::{BIND_ADDRESS_DEFAULT, DEFAULT_LISTENER_ADDR};
pub use persistence::{
    DynamicProperty, Persistence, QueuePolicy, RetainPolicy, DYNAMIC_KEY_DEFAULT,
    DYNAMIC_VALUE_DEFAULT,
};
pub use types::{
    Advanced, Authentication, AuthenticationMethod, Authorization, AuthorizationRule, AutomaticTls,
    BrokerAction, BrokerResource, Cardinality, CertKeyFiles, CertPolicy, Config, CustomSettings,
    Diagnostics, DiskBuffer, KeyAlgorithm, Listener, ListenerPort, ListenerTls, MemoryProfile,
    Principals, PrivateKeyPolicy, Protocol, RotationPolicy, SelfCheck, ServiceAccountTokenSettings,
    TokenKey, UsernamePasswordSettings, X509Attributes, X509Settings,
};
pub use units::{parse_duration, parse_quantity, DurationError, QuantityError};
pub use validate::{check_log_filter, SHARDS_MAX};

use crate::limits::ClientLimits;
use error::Report;
use raw::{
    RawAdvanced, RawCertPolicy, RawClients, RawConfig, RawDiagnostics, RawListener, RawLogs,
    RawPort, RawPrivateKey, RawSelfCheck, RawSys,
};

/// A config that loaded, with what it accepted but will not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// Parses and validates a config document. On failure every problem
    /// found is returned, each with its path.
    pub fn from_json_str(text: &str) -> Result<Loaded, ConfigErrors> {
        let mut report = Report::default();
        let raw = load::load_raw(text, &mut report);
        let config = validate::validate(&raw, &mut report);
        if report.errors.is_empty() {
            Ok(Loaded {
                config,
                warnings: report.warnings,
            })
        } else {
            Err(ConfigErrors(report.errors))
        }
    }

    /// The built-in default as a config document (what
    /// `--print-default-config` prints); loading it gives `Config::default()`.
    pub fn default_json() -> String {
        // Serializing plain structs of strings, integers and options into a
        // String cannot fail; an empty object would still load as the default.
        serde_json::to_string_pretty(&raw_default()).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The authentication policy a port's `authentication_ref` names.
    pub fn authentication(&self, name: &str) -> Option<&Authentication> {
        self.authentications.iter().find(|a| a.name == name)
    }

    /// The authorization policy a port's `authorization_ref` names.
    pub fn authorization(&self, name: &str) -> Option<&Authorization> {
        self.authorizations.iter().find(|a| a.name == name)
    }

    /// Resolves every relative file path against `base` (the server passes
    /// the config file's directory). Pure path joining, no file access.
    pub fn with_base_dir(mut self, base: &Path) -> Config {
        let join = |path: &mut std::path::PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        let join_pair = |files: &mut CertKeyFiles| {
            join(&mut files.cert_file);
            join(&mut files.key_file);
        };
        if let Some(dir) = self.secrets_dir.as_mut() {
            join(dir);
        }
        if let Some(dir) = self.state_dir.as_mut() {
            join(dir);
        }
        if let Some(dir) = self.disk_buffer.as_mut().and_then(|b| b.data_dir.as_mut()) {
            join(dir);
        }
        if let Some(p) = self.persistence.as_mut() {
            for file in [p.data_dir.as_mut(), p.key_file.as_mut()]
                .into_iter()
                .flatten()
            {
                join(file);
            }
        }
        if let Some(ca) = self.cluster.as_mut().and_then(|c| c.ca.as_mut()) {
            join(&mut ca.cert);
            join(&mut ca.key);
        }
        for port in self.listeners.iter_mut().flat_map(|l| l.ports.iter_mut()) {
            if let Some(ListenerTls::Manual(files)) = port.tls.as_mut() {
                join_pair(files);
            }
        }
        for method in self
            .authentications
            .iter_mut()
            .flat_map(|a| a.methods.iter_mut())
        {
            match method {
                AuthenticationMethod::X509(settings) => join(&mut settings.trusted_client_ca_cert),
                AuthenticationMethod::Custom(settings) => {
                    if let Some(file) = settings.ca_cert_file.as_mut() {
                        join(file);
                    }
                    if let Some(files) = settings.client_cert.as_mut() {
                        join_pair(files);
                    }
                }
                AuthenticationMethod::UsernamePassword(settings) => {
                    join(&mut settings.password_file);
                }
                AuthenticationMethod::ServiceAccountToken(settings) => {
                    for key in &mut settings.keys {
                        if let TokenKey::File(file) = key {
                            join(file);
                        }
                    }
                }
            }
        }
        self
    }
}

impl Default for Config {
    /// One anonymous, allow-all, plain MQTT listener on 127.0.0.1:1883;
    /// internal traffic encrypted; AIO's defaults elsewhere.
    fn default() -> Config {
        Config {
            advanced: Advanced {
                clients: ClientLimits::default(),
                encrypt_internal_traffic: true,
                internal_certs: CertPolicy::aio_default(),
            },
            cardinality: Cardinality::default(),
            memory_profile: MemoryProfile::Medium,
            disk_buffer: None,
            retained_size_max_bytes: None,
            persistence: None,
            cluster: None,
            diagnostics: Diagnostics::default(),
            secrets_dir: None,
            state_dir: None,
            listeners: vec![listeners::default_listener()],
            authentications: Vec::new(),
            authorizations: Vec::new(),
        }
    }
}

/// `Config::default()` written out, defaults explicit so the printed file
/// documents them.
fn raw_default() -> RawConfig {
    let limits = ClientLimits::default();
    let certs = CertPolicy::aio_default();
    let self_check = SelfCheck::default();
    RawConfig {
        advanced: Some(RawAdvanced {
            clients: Some(RawClients {
                max_session_expiry_seconds: i64::try_from(limits.session_expiry_max.as_secs()).ok(),
                max_message_expiry_seconds: limits
                    .message_expiry_max
                    .and_then(|d| i64::try_from(d.as_secs()).ok()),
                max_packet_size_bytes: Some(limits.packet_size_max.get().into()),
                max_receive_maximum: Some(limits.receive_maximum_max.get().into()),
                max_keep_alive_seconds: Some(limits.keep_alive_max.get().into()),
                subscriber_queue_limit: None,
                session_takeover: Some("SamePrincipal".to_owned()),
            }),
            encrypt_internal_traffic: Some("Enabled".to_owned()),
            internal_certs: Some(RawCertPolicy {
                duration: Some(format!("{}h", certs.duration.as_secs() / 3600)),
                renew_before: Some(format!("{}h", certs.renew_before.as_secs() / 3600)),
                private_key: Some(RawPrivateKey {
                    algorithm: Some("Ec256".to_owned()),
                    rotation_policy: Some("Always".to_owned()),
                }),
            }),
        }),
        memory_profile: Some("Medium".to_owned()),
        diagnostics: Some(RawDiagnostics {
            logs: Some(RawLogs {
                level: Some("info".to_owned()),
            }),
            metrics: None,
            self_check: Some(RawSelfCheck {
                mode: Some("Enabled".to_owned()),
                interval_seconds: i64::try_from(self_check.interval.as_secs()).ok(),
                timeout_seconds: i64::try_from(self_check.timeout.as_secs()).ok(),
            }),
            sys: Some(RawSys {
                interval_seconds: i64::try_from(types::SYS_INTERVAL_DEFAULT.as_secs()).ok(),
            }),
            traces: None,
        }),
        listeners: Some(vec![Some(RawListener {
            name: Some("default".to_owned()),
            ports: Some(vec![RawPort {
                port: Some(DEFAULT_LISTENER_ADDR.port().into()),
                bind_address: Some(DEFAULT_LISTENER_ADDR.ip().to_string()),
                protocol: Some("Mqtt".to_owned()),
                ..RawPort::default()
            }]),
            ..RawListener::default()
        })]),
        ..RawConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_json_loads_back_to_the_default_config() {
        let loaded = Config::from_json_str(&Config::default_json()).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn an_empty_document_is_the_default_config() {
        let loaded = Config::from_json_str("{}").unwrap();
        assert_eq!(loaded.config, Config::default());
    }
}
