//! The validated config the rest of shardmq sees: typed values only
//! (`Duration`, `SocketAddr`, `NonZero*`, enums), every cross-reference
//! checked. Built only by `validate`; file paths are kept as written (the
//! server resolves and opens them, see `Config::with_base_dir`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::ClientLimits;

/// The whole broker config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub advanced: Advanced,
    pub cardinality: Cardinality,
    pub memory_profile: MemoryProfile,
    /// `diskBackedMessageBuffer`; `None`: no disk buffer.
    pub disk_buffer: Option<DiskBuffer>,
    /// `retainedMessages.maxSize` (shardmq addition): bytes of retained
    /// messages all shards keep together; `None`: derived from
    /// `memoryProfile` (`retained_size_max_bytes`).
    pub retained_size_max_bytes: Option<u64>,
    /// `persistence`; `None`: nothing survives a restart.
    pub persistence: Option<super::persistence::Persistence>,
    /// `cluster` (shardmq addition); `None`: a single node.
    pub cluster: Option<super::cluster::Cluster>,
    pub diagnostics: Diagnostics,
    /// `secretsDir` (shardmq addition); `secretRef`s are already resolved
    /// against it, kept for the server's messages.
    pub secrets_dir: Option<PathBuf>,
    /// `stateDir` (shardmq addition): where the broker writes what it keeps
    /// (internal CA, Automatic TLS keys, the disk buffer's default folder).
    /// `None`: the server's default (`$STATE_DIRECTORY`, then
    /// `/var/lib/shardmq`).
    pub state_dir: Option<PathBuf>,
    /// Never empty; names unique; no two ports share a bind address.
    pub listeners: Vec<Listener>,
    /// Names unique.
    pub authentications: Vec<Authentication>,
    /// Names unique.
    pub authorizations: Vec<Authorization>,
}

/// `advanced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advanced {
    pub clients: ClientLimits,
    /// `encryptInternalTraffic`: seal buffered data and use mutual TLS
    /// between broker processes.
    pub encrypt_internal_traffic: bool,
    pub internal_certs: CertPolicy,
}

/// Lifetime and key of a certificate the broker issues itself
/// (`internalCerts`, `tls.certManagerCertificateSpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPolicy {
    /// INVARIANT: `duration` non-zero, `renew_before < duration`.
    pub duration: Duration,
    pub renew_before: Duration,
    pub private_key: PrivateKeyPolicy,
}

impl CertPolicy {
    /// AIO's defaults: 720h lifetime, renewed 240h before expiry, Ec256, Always.
    pub fn aio_default() -> CertPolicy {
        CertPolicy {
            duration: Duration::from_secs(720 * 3600),
            renew_before: Duration::from_secs(240 * 3600),
            private_key: PrivateKeyPolicy::default(),
        }
    }
}

/// `privateKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrivateKeyPolicy {
    pub algorithm: KeyAlgorithm,
    pub rotation: RotationPolicy,
}

/// `privateKey.algorithm`. Which of these the certificate manager can
/// generate is decided there; the config accepts all of AIO's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    Ec256,
    Ec384,
    Ec521,
    Ed25519,
    Rsa2048,
    Rsa4096,
    Rsa8192,
}

/// `privateKey.rotationPolicy`: a new key on each renewal, or keep the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RotationPolicy {
    #[default]
    Always,
    Never,
}

/// `cardinality`. Only `frontend.workers` means something on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cardinality {
    /// `frontend.workers`: the number of shards; `None` = one per available
    /// core (the server decides).
    pub shards: Option<NonZeroUsize>,
}

/// `memoryProfile`: the in-memory budget class for queues and buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryProfile {
    Tiny,
    Low,
    #[default]
    Medium,
    High,
}

/// `diskBackedMessageBuffer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBuffer {
    /// `maxSize` in bytes.
    pub size_max_bytes: NonZeroU64,
    /// `dataDir` (shardmq addition); `None` = the server's default.
    pub data_dir: Option<PathBuf>,
}

/// `diagnostics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// `logs.level`: a tracing filter ("info", "info,shardmq=debug"),
    /// checked by the server when it builds the subscriber.
    pub log_filter: String,
    /// `metrics.prometheusPort`; `None` = no metrics endpoint.
    pub prometheus_port: Option<NonZeroU16>,
    /// `metrics.bindAddress` (shardmq addition): where the metrics and
    /// health endpoint listens; loopback unless the operator opens it.
    pub metrics_bind_address: IpAddr,
    pub self_check: SelfCheck,
    /// `sys.intervalSeconds` (shardmq addition): how often the `$SYS`
    /// topics are published; `None` (0) = no `$SYS` topics.
    pub sys_interval: Option<Duration>,
}

/// `diagnostics.metrics.bindAddress` when not set.
pub const METRICS_BIND_ADDRESS_DEFAULT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// `diagnostics.sys.intervalSeconds` when not set (Mosquitto's default).
pub const SYS_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

impl Default for Diagnostics {
    fn default() -> Diagnostics {
        Diagnostics {
            log_filter: "info".to_owned(),
            prometheus_port: None,
            metrics_bind_address: METRICS_BIND_ADDRESS_DEFAULT,
            self_check: SelfCheck::default(),
            sys_interval: Some(SYS_INTERVAL_DEFAULT),
        }
    }
}

/// `diagnostics.selfCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfCheck {
    pub enabled: bool,
    /// INVARIANT: `timeout <= interval`, both non-zero.
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for SelfCheck {
    fn default() -> SelfCheck {
        SelfCheck {
            enabled: true,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(15),
        }
    }
}

/// One entry of `listeners`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    /// Never empty.
    pub ports: Vec<ListenerPort>,
}

/// `listeners[].ports[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPort {
    /// `bindAddress` + `port`.
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// `authenticationRef`: the name of an entry of `Config::authentications`
    /// (checked); `None` = anonymous.
    pub authentication_ref: Option<String>,
    /// `authorizationRef`: the name of an entry of `Config::authorizations`
    /// (checked); `None` = everything allowed.
    pub authorization_ref: Option<String>,
    /// `None` = plain TCP.
    pub tls: Option<ListenerTls>,
    /// `shards` (shardmq addition): the shards that accept on this port;
    /// `None` = every shard. Checked against the shard count at start-up.
    pub shards: Option<Vec<usize>>,
}

/// `ports[].protocol`. AIO's `WebSockets` is rejected at load for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Mqtt,
}

/// `ports[].tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTls {
    /// `mode: Automatic`: the broker issues the server certificate from its
    /// own CA (`certManagerCertificateSpec`).
    Automatic(AutomaticTls),
    /// `mode: Manual`: the operator's certificate chain and key.
    Manual(CertKeyFiles),
}

/// `tls.certManagerCertificateSpec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutomaticTls {
    pub cert: CertPolicy,
    pub san_dns: Vec<String>,
    pub san_ip: Vec<IpAddr>,
}

/// A PEM certificate chain and its private key, as paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One entry of `authentications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    pub name: String,
    /// Tried in order until one accepts the client. Never empty.
    pub methods: Vec<AuthenticationMethod>,
}

/// `authenticationMethods[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthenticationMethod {
    X509(X509Settings),
    ServiceAccountToken(ServiceAccountTokenSettings),
    Custom(CustomSettings),
    /// shardmq addition.
    UsernamePassword(UsernamePasswordSettings),
}

/// `x509Settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Settings {
    /// `trustedClientCaCert`: PEM file of the CAs client certificates chain to.
    pub trusted_client_ca_cert: PathBuf,
    /// `authorizationAttributes`: keyed by the entry's name.
    pub authorization_attributes: BTreeMap<String, X509Attributes>,
}

/// `authorizationAttributes.<name>`: clients whose certificate subject
/// matches get these attributes for authorization rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Attributes {
    pub subject: String,
    pub attributes: BTreeMap<String, String>,
}

/// `serviceAccountTokenSettings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountTokenSettings {
    /// Never empty.
    pub audiences: Vec<String>,
    /// shardmq addition: token verification keys.
    pub keys: Vec<TokenKey>,
}

/// One entry of `serviceAccountTokenSettings.keys`, told apart at load: a
/// JWKS document written inline (starts with `{`), or a file holding a
/// JWKS or PEM public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKey {
    Inline(String),
    File(PathBuf),
}

impl TokenKey {
    /// An entry as written in the config.
    pub fn new(text: &str) -> TokenKey {
        if text.trim_start().starts_with('{') {
            TokenKey::Inline(text.to_owned())
        } else {
            TokenKey::File(PathBuf::from(text))
        }
    }
}

/// `customSettings`. Debug prints header values as `***`: they often carry
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomSettings {
    /// An `https://` URL.
    pub endpoint: String,
    /// `caCertConfigMap`: PEM file to verify the endpoint with; `None` = system roots.
    pub ca_cert_file: Option<PathBuf>,
    pub headers: BTreeMap<String, String>,
    /// `auth.x509`: client certificate presented to the endpoint.
    pub client_cert: Option<CertKeyFiles>,
}

impl fmt::Debug for CustomSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), "***"))
            .collect();
        f.debug_struct("CustomSettings")
            .field("endpoint", &self.endpoint)
            .field("ca_cert_file", &self.ca_cert_file)
            .field("headers", &headers)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// `usernamePasswordSettings` (shardmq addition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernamePasswordSettings {
    pub password_file: PathBuf,
}

/// One entry of `authorizations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub name: String,
    /// `authorizationPolicies.cache`.
    pub cache: bool,
    pub rules: Vec<AuthorizationRule>,
}

/// `authorizationPolicies.rules[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRule {
    pub principals: Principals,
    pub broker_resources: Vec<BrokerResource>,
}

/// `rules[].principals`: a client matches if any listed item matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principals {
    pub client_ids: Vec<String>,
    pub usernames: Vec<String>,
    /// Each map matches when all its attributes match.
    pub attributes: Vec<BTreeMap<String, String>>,
}

/// `rules[].brokerResources[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerResource {
    pub action: BrokerAction,
    /// Topic filters (may hold AIO `{principal...}` variables). Empty for Connect.
    pub topics: Vec<String>,
    /// Client ids allowed to connect; only for Connect, empty = any.
    pub client_ids: Vec<String>,
}

/// `brokerResources[].method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerAction {
    Connect,
    Publish,
    Subscribe,
}
