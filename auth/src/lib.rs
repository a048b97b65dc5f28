//! shardmq-auth: TLS server configs (rustls, ring), the internal CA and
//! certificate manager, client authentication (X509, service-account tokens,
//! Mosquitto password files, webhook) and AIO authorization rules compiled
//! per client. Library only: the server (io/) owns sockets, timers and
//! reloads; every function that needs the time takes it as `now`.

pub mod authn;
pub mod authz;
pub mod ca;
pub mod files;
pub mod identity;
pub mod jwt;
pub mod node_tls;
pub mod password;
pub mod tls;
pub mod webhook;
pub mod x509;

#[cfg(any(test, feature = "test-pki"))]
pub mod test_pki;

pub use authn::{AuthSetupError, Authenticator, Outcome};
pub use authz::{AuthorizationPolicy, AuthzError, CompiledPermissions, Principal};
pub use ca::{check_supported, CaError, CaOrigin, CertManager, InternalCa};
pub use files::{write_private, FileError};
pub use identity::{AuthError, ConnectInfo, Identity, MethodKind, EXPIRED_REASON};
pub use jwt::SAT_METHOD;
pub use tls::{server_config, ReloadableCert, TlsError};
pub use x509::ClientCa;

/// The permissions of a client: `AllowAll` without an authorization policy
/// on its port, else the policy compiled for `identity` and `client_id` (the
/// CONNECT client id, or the one the broker assigned).
pub fn permissions(
    policy: Option<&AuthorizationPolicy>,
    identity: &Identity,
    client_id: &str,
) -> CompiledPermissions {
    match policy {
        None => CompiledPermissions::allow_all(),
        Some(policy) => policy.compile(&identity.principal(client_id)),
    }
}
