//! The config file as written: serde mirrors of AIO's Broker, BrokerListener,
//! BrokerAuthentication and BrokerAuthorization specs (camelCase, unknown
//! fields denied). Nothing here is validated: enums, durations and sizes stay
//! strings and numbers stay `i64` so the validator can report every problem
//! with its path. Kubernetes-only fields are `Option<Value>`: accepted, unread.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The top level. The loader deserializes each section on its own (so one
/// bad section does not hide problems in the others); this struct is the
/// list of sections and the shape `Config::default_json` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advanced: Option<RawAdvanced>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cardinality: Option<RawCardinality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_backed_message_buffer: Option<RawDiskBuffer>,
    /// shardmq addition: bounds of the retained message store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained_messages: Option<RawRetained>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<RawDiagnostics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_resource_limits: Option<RawGenerateResourceLimits>,
    /// shardmq addition: where `secretRef: NAME` finds `NAME.crt` / `NAME.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_dir: Option<String>,
    /// shardmq addition: where the broker keeps its state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<super::persistence::RawPersistence>,
    /// shardmq addition: the node's place in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::cluster::RawCluster>,
    /// `None` entries did not deserialize (their errors are already reported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<Option<RawListener>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentications: Option<Vec<Option<RawAuthentication>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorizations: Option<Vec<Option<RawAuthorization>>>,
}

/// The top-level keys, for "did you mean" on unknown ones.
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "advanced",
    "cardinality",
    "memoryProfile",
    "diskBackedMessageBuffer",
    "retainedMessages",
    "diagnostics",
    "generateResourceLimits",
    "secretsDir",
    "stateDir",
    "persistence",
    "cluster",
    "listeners",
    "authentications",
    "authorizations",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAdvanced {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<RawClients>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypt_internal_traffic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_certs: Option<RawCertPolicy>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawClients {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_session_expiry_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_expiry_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_packet_size_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_receive_maximum: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keep_alive_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_queue_limit: Option<RawQueueLimit>,
    /// shardmq addition: who may take an existing session over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_takeover: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawQueueLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

/// `internalCerts`, and the same fields inside `certManagerCertificateSpec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCertPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<RawPrivateKey>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPrivateKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCardinality {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<RawFrontend>,
    /// Cluster-only: validated, then ignored with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_chain: Option<RawBackendChain>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawFrontend {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawBackendChain {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redundancy_factor: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRetained {
    /// A quantity string ("256Mi") or a plain number of bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDiskBuffer {
    /// A quantity string ("500M") or a plain number of bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_volume_claim_spec: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_spec: Option<Value>,
    /// shardmq addition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDiagnostics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<RawLogs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RawMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_check: Option<RawSelfCheck>,
    /// shardmq addition: `$SYS` topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sys: Option<RawSys>,
    /// Not supported yet: accepted and ignored with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawLogs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_port: Option<i64>,
    /// shardmq addition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSys {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSelfCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawGenerateResourceLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawListener {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_type: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// shardmq addition: the local IP address to listen on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// shardmq addition: accept on these shards only (default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual: Option<RawCertKey>,
    #[serde(alias = "automatic", skip_serializing_if = "Option::is_none")]
    pub cert_manager_certificate_spec: Option<RawCertManagerSpec>,
}

/// A certificate and its key: files, or AIO's `secretRef` (a name looked up
/// in `secretsDir`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCertKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCertManagerSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub san: Option<RawSan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<RawPrivateKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAuthentication {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_methods: Option<Vec<RawAuthenticationMethod>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAuthenticationMethod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509_settings: Option<RawX509Settings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_token_settings: Option<RawServiceAccountTokenSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_settings: Option<RawCustomSettings>,
    /// shardmq addition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username_password_settings: Option<RawUsernamePasswordSettings>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawX509Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_client_ca_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_attributes: Option<BTreeMap<String, RawX509Attributes>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawX509Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawServiceAccountTokenSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// shardmq addition: verification keys (file paths or inline JWKS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCustomSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert_config_map: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RawCustomAuth>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCustomAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509: Option<RawCertKey>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawUsernamePasswordSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAuthorization {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_policies: Option<RawAuthorizationPolicies>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAuthorizationPolicies {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principals: Option<RawPrincipals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_resources: Option<Vec<RawBrokerResource>>,
    /// Not supported: accepted and ignored with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_store_resources: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPrincipals {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usernames: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<BTreeMap<String, String>>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawBrokerResource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ids: Option<Vec<String>>,
}
