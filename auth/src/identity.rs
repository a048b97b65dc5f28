//! What authentication establishes ([`Identity`]) and why it fails
//! ([`AuthError`], one variant per cause, mapped to the CONNACK / AUTH /
//! DISCONNECT reason code by [`AuthError::reason_code`], MQTT 5.0 §3.2.2.2).

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use shardmq_core::codec::{PacketType, ReasonCode};

use crate::authz::Principal;

/// The credentials a client presented: its CONNECT fields and the
/// certificate chain of its TLS handshake (`peer_certificates()`, leaf
/// first; empty without TLS or without a client certificate). On MQTT v5
/// re-authentication, `auth_method` / `auth_data` come from the AUTH packet.
/// Debug prints the password and authentication data as `***`.
#[derive(Clone, Copy, Default)]
pub struct ConnectInfo<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer_certs: &'a [CertificateDer<'a>],
    pub auth_method: Option<&'a str>,
    pub auth_data: Option<&'a [u8]>,
}

impl fmt::Debug for ConnectInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "***"))
            .field("peer_certs", &self.peer_certs.len())
            .field("auth_method", &self.auth_method)
            .field("auth_data", &self.auth_data.map(|_| "***"))
            .finish()
    }
}

/// The authentication method that accepted a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// The listener has no authentication.
    Anonymous,
    X509,
    ServiceAccountToken,
    Custom,
    UsernamePassword,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub method: MethodKind,
    /// `{principal.username}` and `principals.usernames`: the CONNECT user
    /// name (password file, webhook), the leaf certificate's subject CN
    /// (X509), the token's `sub` claim (ServiceAccountToken); `None` for
    /// anonymous clients, whose user name nobody checked.
    pub username: Option<String>,
    /// `{principal.attributes.NAME}` and `principals.attributes`.
    pub attributes: BTreeMap<String, String>,
    /// When the credential stops being valid (certificate notAfter, token
    /// `exp`, webhook `expiry`): the server disconnects the client then with
    /// [`EXPIRED_REASON`]. `None`: it does not expire.
    pub expiry: Option<SystemTime>,
}

/// The DISCONNECT reason when a client's credential expires: MQTT 5.0 has
/// no "credential expired" code; 0x87 Not authorized says what happened.
pub const EXPIRED_REASON: ReasonCode = ReasonCode::NotAuthorized;

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            method: MethodKind::Anonymous,
            username: None,
            attributes: BTreeMap::new(),
            expiry: None,
        }
    }

    /// The principal authorization rules are matched against; `client_id`
    /// is the CONNECT client id, or the one the broker assigned.
    pub fn principal(&self, client_id: &str) -> Principal {
        Principal {
            client_id: client_id.to_owned(),
            username: self.username.clone(),
            attributes: self.attributes.clone(),
        }
    }

    /// Whether the credential has expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiry.is_some_and(|expiry| now >= expiry)
    }
}

/// Why a client is not authenticated. The strings are for the server's log
/// only: a client learns just the reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// CONNECT names an authentication method no configured method serves
    /// (MQTT 5.0 §4.12: "If the Server does not support the Authentication
    /// Method ... CONNACK with a Reason Code of 0x8C").
    #[error("authentication method \"{0}\" is not supported on this listener")]
    UnsupportedMethod(String),
    /// The client presented nothing any configured method applies to (no
    /// certificate, no user name, no token).
    #[error("no credentials for any of this listener's authentication methods")]
    NoCredentials,
    #[error("bad user name or password")]
    BadUsernameOrPassword,
    #[error("client certificate rejected: {0}")]
    Certificate(String),
    #[error("token rejected: {0}")]
    Token(String),
    /// The webhook answered 403 with this reason code.
    #[error("custom authentication denied (reason 0x{reason:02X}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    WebhookDenied { reason: u8, message: Option<String> },
    /// The webhook did not answer usably in time (timeout, connection or TLS
    /// failure, unexpected status or body): the client is denied.
    #[error("custom authentication failed: {0}")]
    WebhookFailed(String),
}

impl AuthError {
    /// The v5 reason code for CONNACK (or AUTH / DISCONNECT on
    /// re-authentication). For v3.1.1 use `ReasonCode::to_v311_connack`.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            AuthError::UnsupportedMethod(_) => ReasonCode::BadAuthenticationMethod,
            AuthError::BadUsernameOrPassword => ReasonCode::BadUserNameOrPassword,
            AuthError::NoCredentials
            | AuthError::Certificate(_)
            | AuthError::Token(_)
            | AuthError::WebhookFailed(_) => ReasonCode::NotAuthorized,
            AuthError::WebhookDenied { reason, .. } => webhook_reason(*reason),
        }
    }
}

/// A webhook's reason code if it is a CONNACK refusal (MQTT 5.0 §3.2.2.2:
/// 0x80 and up, allowed in CONNACK); anything else becomes 0x87 so a webhook cannot make a
/// denial look like success.
fn webhook_reason(reason: u8) -> ReasonCode {
    match ReasonCode::from_u8(reason) {
        Some(code) if reason >= 0x80 && code.valid_in(PacketType::ConnAck) => code,
        _ => ReasonCode::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_follow_mqtt5_connack() {
        assert_eq!(AuthError::BadUsernameOrPassword.reason_code().as_u8(), 0x86);
        assert_eq!(AuthError::NoCredentials.reason_code().as_u8(), 0x87);
        assert_eq!(AuthError::Token("exp".into()).reason_code().as_u8(), 0x87);
        assert_eq!(
            AuthError::UnsupportedMethod("SCRAM".into())
                .reason_code()
                .as_u8(),
            0x8C
        );
        let denied = |reason| AuthError::WebhookDenied {
            reason,
            message: None,
        };
        assert_eq!(denied(0x8A).reason_code(), ReasonCode::Banned);
        assert_eq!(denied(0x00).reason_code(), ReasonCode::NotAuthorized);
        assert_eq!(denied(0x42).reason_code(), ReasonCode::NotAuthorized);
    }

    #[test]
    fn connect_info_debug_hides_secrets() {
        let info = ConnectInfo {
            client_id: "c",
            username: Some("u"),
            password: Some(b"hunter2"),
            auth_data: Some(b"token"),
            ..ConnectInfo::default()
        };
        let debug = format!("{info:?}");
        assert!(
            !debug.contains("104") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert!(debug.contains("***"));
    }

    #[test]
    fn v311_clients_get_return_codes_4_and_5() {
        assert_eq!(
            AuthError::BadUsernameOrPassword
                .reason_code()
                .to_v311_connack(),
            4
        );
        assert_eq!(AuthError::NoCredentials.reason_code().to_v311_connack(), 5);
    }
}
