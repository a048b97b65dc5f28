//! What one listener port demands of a client: its TLS config and its
//! authentication and authorization policies, shared by every shard, and the
//! CONNECT-time decision built from them. The policies themselves live in
//! `shardmq-auth`; this module only applies them to a connection.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytestring::ByteString;
use rustls_pki_types::CertificateDer;
use shardmq_auth::{
    AuthError, Authenticator, AuthorizationPolicy, CompiledPermissions, ConnectInfo, Identity,
    MethodKind, Outcome,
};
use shardmq_core::broker::PrincipalId;
use shardmq_core::codec::ReasonCode;
use shardmq_core::session::{ConnectRequest, Permissions};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The security of one listener port. `Default` is anonymous and allow-all.
#[derive(Debug, Clone, Default)]
pub struct ListenerSecurity {
    /// `None`: TLS off.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `None`: no `authenticationRef`, every client is anonymous.
    pub authenticator: Option<Arc<Authenticator>>,
    /// `None`: no `authorizationRef`, everything is allowed.
    pub authorization: Option<Arc<AuthorizationPolicy>>,
    /// The server certificate behind `tls`, for its not-after (metrics).
    pub cert: Option<Arc<shardmq_auth::ReloadableCert>>,
}

/// The broker's decision on a CONNECT.
#[derive(Debug)]
pub struct Admitted {
    pub permissions: CompiledPermissions,
    /// Who the client is, for binding its session (`sessionTakeover`).
    pub owner: PrincipalId,
    /// When the credential expires, on the shard's monotonic clock.
    pub expires_at: Option<Instant>,
    /// Who the client is, for the log: the certificate subject (X509), the
    /// user name or the token's `sub`, or "anonymous".
    pub principal: String,
    pub method: MethodKind,
    /// What the client proved, to compile its permissions again when the
    /// authorization policy changes (SIGHUP).
    pub identity: Identity,
}

/// Which policy refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Authentication,
    Authorization,
}

/// A refused CONNECT or re-authentication: the reason code the client
/// gets, and for the log the cause and who the client claimed to be.
#[derive(Debug)]
pub struct Refused {
    pub reason: ReasonCode,
    pub cause: String,
    pub principal: String,
    pub stage: Stage,
}

/// Who a client claims to be before anything is checked: its certificate
/// subject, else its CONNECT user name, else "anonymous".
pub fn presented(username: Option<&str>, peer_certs: &[CertificateDer<'static>]) -> String {
    peer_certs
        .first()
        .and_then(|leaf| shardmq_auth::x509::certificate_subject(leaf))
        .or_else(|| username.map(str::to_owned))
        .unwrap_or_else(|| ANONYMOUS.to_owned())
}

const ANONYMOUS: &str = "anonymous";

fn principal_of(identity: &Identity, peer_certs: &[CertificateDer<'static>]) -> String {
    match identity.method {
        MethodKind::Anonymous => ANONYMOUS.to_owned(),
        MethodKind::X509 => presented(identity.username.as_deref(), peer_certs),
        _ => identity
            .username
            .clone()
            .unwrap_or_else(|| ANONYMOUS.to_owned()),
    }
}

impl ListenerSecurity {
    /// Authenticates and authorizes a CONNECT. A webhook call runs on
    /// glommio's blocking pool, never on the shard.
    pub async fn admit(
        &self,
        request: &ConnectRequest,
        client_id: &ByteString,
        peer_certs: &[CertificateDer<'static>],
    ) -> Result<Admitted, Refused> {
        let refused = |reason, cause: String| Refused {
            reason,
            cause,
            principal: presented(request.username.as_deref(), peer_certs),
            stage: Stage::Authentication,
        };
        let (identity, owner) = match &self.authenticator {
            None if request.authentication_method.is_some() => {
                // [MQTT-4.12.0-1] a method this listener does not offer.
                return Err(refused(
                    ReasonCode::BadAuthenticationMethod,
                    "authentication method given on a listener without authentication".into(),
                ));
            }
            None => (Identity::anonymous(), PrincipalId::anonymous()),
            Some(authn) => {
                let info = ConnectInfo {
                    client_id,
                    username: request.username.as_deref(),
                    password: request.password.as_deref(),
                    peer_certs,
                    auth_method: request.authentication_method.as_deref(),
                    auth_data: request.authentication_data.as_deref(),
                };
                let identity = decide(authn.authenticate(&info, SystemTime::now()))
                    .await
                    .map_err(|e| refused(e.reason_code(), e.to_string()))?;
                let owner = owner_of(authn.name(), &identity);
                (identity, owner)
            }
        };
        let principal = principal_of(&identity, peer_certs);
        let denied = |cause: String| Refused {
            reason: ReasonCode::NotAuthorized,
            cause,
            principal: principal.clone(),
            stage: Stage::Authorization,
        };
        let permissions =
            shardmq_auth::permissions(self.authorization.as_deref(), &identity, client_id);
        if !permissions.can_connect() {
            return Err(denied("no Connect permission".into()));
        }
        // A will the client could not publish itself is refused at CONNECT.
        if let Some(topic) = &request.will_topic {
            if shardmq_core::broker::sys::is_sys_topic(topic.as_str()) {
                return Err(denied(format!(
                    "its will topic {topic} is the broker's ($SYS)"
                )));
            }
            if !permissions.can_publish(topic) {
                return Err(denied(format!(
                    "no Publish permission for its will topic {topic}"
                )));
            }
        }
        Ok(Admitted {
            permissions,
            owner,
            expires_at: identity.expiry.map(to_instant),
            principal,
            method: identity.method,
            identity,
        })
    }

    /// Re-authentication (AUTH 0x19): the same methods, new credential data.
    pub async fn reauthenticate(
        &self,
        client_id: &ByteString,
        method: &str,
        data: Option<&[u8]>,
        peer_certs: &[CertificateDer<'static>],
    ) -> Result<Option<Instant>, Refused> {
        let refused = |reason, cause: String| Refused {
            reason,
            cause,
            principal: presented(None, peer_certs),
            stage: Stage::Authentication,
        };
        let Some(authn) = &self.authenticator else {
            return Err(refused(
                ReasonCode::BadAuthenticationMethod,
                "re-authentication on a listener without authentication".into(),
            ));
        };
        let info = ConnectInfo {
            client_id,
            username: None,
            password: None,
            peer_certs,
            auth_method: Some(method),
            auth_data: data,
        };
        let identity = decide(authn.authenticate(&info, SystemTime::now()))
            .await
            .map_err(|e| refused(e.reason_code(), e.to_string()))?;
        Ok(identity.expiry.map(to_instant))
    }
}

/// The principal a session is bound to: the authentication policy, the
/// method that accepted the client and what it proved (certificate CN, user
/// name, token subject). A method that proves no name (an anonymous grant
/// by a webhook) makes all its clients one principal of that policy.
fn owner_of(policy: &str, identity: &Identity) -> PrincipalId {
    if identity.method == MethodKind::Anonymous {
        return PrincipalId::anonymous();
    }
    let method = format!("{:?}", identity.method);
    PrincipalId::authenticated(policy, &method, identity.username.as_deref().unwrap_or(""))
}

async fn decide(outcome: Result<Outcome, AuthError>) -> Result<Identity, AuthError> {
    match outcome? {
        Outcome::Authenticated(identity) => Ok(identity),
        // Not glommio's blocking pool: the shard's persistence runs there,
        // and would wait behind a slow webhook.
        Outcome::Webhook(request) => crate::webhook_pool::call(request).await,
    }
}

/// Converts a wall-clock expiry into the monotonic clock the session uses.
fn to_instant(at: SystemTime) -> Instant {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}
