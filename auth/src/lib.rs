//! shardmq-auth: TLS server configs (rustls, ring), the internal CA and
//! certificate manager, client authentication (X509, service-account tokens,
//! Mosquitto password files, webhook) and AIO authorization rules compiled
//! per client. Library only: the server (io/) owns sockets, timers and reloads.

pub mod authz;
pub mod password;

pub use authz::{AuthorizationPolicy, AuthzError, CompiledPermissions, Principal};
