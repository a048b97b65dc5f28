//! shardmq-auth: TLS server configs (rustls, ring), the internal CA and
//! certificate manager, client authentication (X509, service-account tokens,
//! Mosquitto password files, webhook) and AIO authorization rules compiled
//! per client. Library only: the server (io/) owns sockets, timers and reloads.

pub mod authz;
pub mod ca;
pub mod files;
pub mod identity;
pub mod jwt;
pub mod password;
pub mod tls;
pub mod webhook;
pub mod x509;

#[cfg(test)]
mod test_pki;

pub use authz::{AuthorizationPolicy, AuthzError, CompiledPermissions, Principal};
pub use files::{write_private, FileError};
pub use identity::{AuthError, Identity, MethodKind, EXPIRED_REASON};
