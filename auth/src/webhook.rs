//! Custom authentication: an HTTPS POST of the CONNECT credentials to the
//! operator's endpoint in AIO's custom authentication API 0.5.0 format
//! (`{"type":"connect","username","password"(base64),"certs"(PEM)}`),
//! answered 200 `{expiry?, attributes}` (allow) or 403 `{reason, message?}`
//! (deny). Blocking with a deadline ([`Webhook::new`]'s `timeout`): the
//! server runs [`WebhookRequest::send`] off its shard (a blocking thread).
//! Anything but a usable answer in time denies the client.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use shardmq_core::config::CustomSettings;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::files::{self, FileError, FileProblem};
use crate::identity::{AuthError, ConnectInfo, Identity, MethodKind};

/// The API version sent as `?api-version=`.
pub const API_VERSION: &str = "0.5.0";

/// A default deadline for the whole call (connect, TLS, request, answer):
/// well inside the client's CONNECT timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers bigger than this are not an authentication answer.
const RESPONSE_LEN_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("customSettings.caCertConfigMap {0}")]
    CaFile(FileError),
    #[error("customSettings.auth.x509.certFile {0}")]
    CertFile(FileError),
    #[error("customSettings.auth.x509.keyFile {0}")]
    KeyFile(FileError),
}

/// The Custom method of one authentication policy: endpoint, headers and
/// an HTTP agent with the endpoint's CA and the broker's client certificate.
pub struct Webhook {
    url: String,
    headers: Vec<(String, String)>,
    agent: ureq::Agent,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, _)| (k, "***"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn ureq_certs(pem: &[u8]) -> Result<Vec<Certificate<'static>>, FileProblem> {
    Ok(files::certs_from_pem(pem)?
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect())
}

impl Webhook {
    /// Reads the CA file (absent: Mozilla's root list, as shipped by
    /// `webpki-roots`) and the client certificate, if configured.
    pub fn new(settings: &CustomSettings, timeout: Duration) -> Result<Webhook, WebhookError> {
        let roots = match &settings.ca_cert_file {
            Some(path) => {
                let pem = files::read(path).map_err(WebhookError::CaFile)?;
                let certs = ureq_certs(&pem)
                    .map_err(|problem| WebhookError::CaFile(FileError::new(path, problem)))?;
                RootCerts::new_with_certs(&certs)
            }
            None => RootCerts::WebPki,
        };
        let client_cert = match &settings.client_cert {
            Some(files) => {
                let pem = files::read(&files.cert_file).map_err(WebhookError::CertFile)?;
                let chain = ureq_certs(&pem).map_err(|problem| {
                    WebhookError::CertFile(FileError::new(&files.cert_file, problem))
                })?;
                let key_pem = files::read(&files.key_file).map_err(WebhookError::KeyFile)?;
                let key = PrivateKey::from_pem(&key_pem).map_err(|e| {
                    WebhookError::KeyFile(FileError::new(
                        &files.key_file,
                        FileProblem::Invalid(e.to_string()),
                    ))
                })?;
                Some(ClientCert::new_with_certs(&chain, key))
            }
            None => None,
        };
        let tls = TlsConfig::builder()
            .root_certs(roots)
            .client_cert(client_cert)
            .build();
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .https_only(true)
            .max_redirects(0)
            .tls_config(tls)
            .build();
        let separator = if settings.endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(Webhook {
            url: format!("{}{separator}api-version={API_VERSION}", settings.endpoint),
            headers: settings
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            agent: config.into(),
        })
    }

    /// The request for `info`, owned so it can move to a blocking thread.
    /// The body carries AIO's fields plus `clientId` (shardmq addition;
    /// AIO's own servers ignore unknown fields).
    pub fn request(self: &Arc<Self>, info: &ConnectInfo<'_>) -> WebhookRequest {
        let certs: String = info
            .peer_certs
            .iter()
            .map(|der| pem_certificate(der))
            .collect();
        let mut body = serde_json::Map::new();
        body.insert("type".into(), "connect".into());
        body.insert("clientId".into(), info.client_id.into());
        if let Some(username) = info.username {
            body.insert("username".into(), username.into());
        }
        if let Some(password) = info.password {
            body.insert("password".into(), STANDARD.encode(password).into());
        }
        if !certs.is_empty() {
            body.insert("certs".into(), certs.into());
        }
        WebhookRequest {
            webhook: Arc::clone(self),
            body: serde_json::Value::Object(body).to_string(),
            username: info.username.map(str::to_owned),
        }
    }
}

fn pem_certificate(der: &CertificateDer<'_>) -> String {
    let encoded = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// One call to the webhook, ready to send. Debug hides the body (it holds
/// the password).
pub struct WebhookRequest {
    webhook: Arc<Webhook>,
    body: String,
    username: Option<String>,
}

impl fmt::Debug for WebhookRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRequest")
            .field("url", &self.webhook.url)
            .field("username", &self.username)
            .finish()
    }
}

#[derive(Deserialize)]
struct Allowed {
    expiry: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Denied {
    reason: u8,
    message: Option<String>,
}

impl WebhookRequest {
    /// Sends the request and waits at most the webhook's timeout. Blocking:
    /// call it on a thread that may block, never on a shard.
    pub fn send(self) -> Result<Identity, AuthError> {
        let failed = |reason: String| AuthError::WebhookFailed(reason);
        let mut request = self
            .webhook
            .agent
            .post(&self.webhook.url)
            .header("content-type", "application/json");
        for (name, value) in &self.webhook.headers {
            request = request.header(name, value);
        }
        let mut response = request
            .send(self.body.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_LEN_MAX)
            .read_to_vec()
            .map_err(|e| failed(format!("reading the answer: {e}")))?;
        match status {
            200 => {
                let allowed: Allowed = serde_json::from_slice(&body)
                    .map_err(|e| failed(format!("200 answer is not AIO's format: {e}")))?;
                let expiry = allowed
                    .expiry
                    .as_deref()
                    .map(parse_rfc3339)
                    .transpose()
                    .map_err(failed)?;
                let mut attributes = BTreeMap::new();
                for (name, value) in allowed.attributes {
                    let text = match value {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Number(n) => n.to_string(),
                        serde_json::Value::Bool(b) => b.to_string(),
                        _ => return Err(failed(format!("attribute \"{name}\" is not a string"))),
                    };
                    attributes.insert(name, text);
                }
                Ok(Identity {
                    method: MethodKind::Custom,
                    username: self.username,
                    attributes,
                    expiry,
                })
            }
            403 => {
                let denied: Denied = serde_json::from_slice(&body)
                    .map_err(|e| failed(format!("403 answer is not AIO's format: {e}")))?;
                Err(AuthError::WebhookDenied {
                    reason: denied.reason,
                    message: denied.message,
                })
            }
            other => Err(failed(format!(
                "HTTP {other}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }
}

fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expiry \"{text}\" is not RFC 3339: {e}"))?;
    let seconds = u64::try_from(time.unix_timestamp()).unwrap_or(0);
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{days, serve_once, Answer, Pki};

    fn webhook(pki: &Pki, url: String, trusted_pem: &str, timeout: Duration) -> Arc<Webhook> {
        let settings = CustomSettings {
            endpoint: url,
            ca_cert_file: Some(pki.write("webhook-ca.pem", trusted_pem)),
            headers: [("authorization".to_string(), "Bearer s3cret".to_string())].into(),
            client_cert: None,
        };
        Arc::new(Webhook::new(&settings, timeout).unwrap())
    }

    fn info<'a>(certs: &'a [CertificateDer<'a>]) -> ConnectInfo<'a> {
        ConnectInfo {
            client_id: "dev1",
            username: Some("alice"),
            password: Some(b"password"),
            peer_certs: certs,
            ..ConnectInfo::default()
        }
    }

    #[test]
    fn an_allowing_webhook_gives_attributes_and_expiry_and_sees_the_credentials() {
        let pki = Pki::new();
        let (url, seen) = serve_once(
            &pki,
            Answer::Status(
                200,
                r#"{"expiry":"2030-05-08T20:04:16+00:00","attributes":{"group":"group1","floor":3}}"#,
            ),
        );
        let hook = webhook(&pki, url, &pki.server_root.cert_pem, DEFAULT_TIMEOUT);
        let client = pki.client("clientA", days(1));
        let chain = client.chain_der();
        let identity = hook.request(&info(&chain)).send().unwrap();
        assert_eq!(identity.method, MethodKind::Custom);
        assert_eq!(identity.username.as_deref(), Some("alice"));
        assert_eq!(
            identity.attributes.get("group").map(String::as_str),
            Some("group1")
        );
        assert_eq!(
            identity.attributes.get("floor").map(String::as_str),
            Some("3")
        );
        assert_eq!(
            identity.expiry,
            Some(UNIX_EPOCH + Duration::from_secs(1_904_501_056))
        );

        let (head, body) = seen.recv().unwrap();
        assert!(
            head.starts_with("POST /authenticate?api-version=0.5.0 HTTP/1.1"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer s3cret"),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["type"], "connect");
        assert_eq!(body["username"], "alice");
        assert_eq!(body["clientId"], "dev1");
        assert_eq!(body["password"], STANDARD.encode("password"));
        let certs = body["certs"].as_str().unwrap();
        assert_eq!(files::certs_from_pem(certs.as_bytes()).unwrap(), chain);
    }

    #[test]
    fn a_denying_webhook_gives_its_reason_code() {
        let pki = Pki::new();
        let (url, _seen) = serve_once(
            &pki,
            Answer::Status(403, r#"{"reason":138,"message":"banned"}"#),
        );
        let hook = webhook(&pki, url, &pki.server_root.cert_pem, DEFAULT_TIMEOUT);
        let err = hook.request(&info(&[])).send().unwrap_err();
        assert_eq!(err.reason_code().as_u8(), 0x8A, "{err}");
        assert!(err.to_string().contains("banned"));
    }

    #[test]
    fn a_webhook_that_does_not_answer_in_time_denies() {
        let pki = Pki::new();
        let (url, _seen) = serve_once(&pki, Answer::Stall);
        let hook = webhook(
            &pki,
            url,
            &pki.server_root.cert_pem,
            Duration::from_millis(300),
        );
        let err = hook.request(&info(&[])).send().unwrap_err();
        assert!(matches!(err, AuthError::WebhookFailed(_)), "{err}");
        assert_eq!(err.reason_code().as_u8(), 0x87);
    }

    #[test]
    fn an_untrusted_webhook_server_denies() {
        let pki = Pki::new();
        let other = Pki::new();
        let (url, _seen) = serve_once(&pki, Answer::Status(200, "{}"));
        let hook = webhook(&pki, url, &other.server_root.cert_pem, DEFAULT_TIMEOUT);
        let err = hook.request(&info(&[])).send().unwrap_err();
        assert!(matches!(err, AuthError::WebhookFailed(_)), "{err}");
    }

    #[test]
    fn odd_answers_deny() {
        let pki = Pki::new();
        for (status, body) in [
            (200, "not json"),
            (500, "oops"),
            (403, "{}"),
            (200, r#"{"expiry":"tomorrow"}"#),
        ] {
            let (url, _seen) = serve_once(&pki, Answer::Status(status, body));
            let hook = webhook(&pki, url, &pki.server_root.cert_pem, DEFAULT_TIMEOUT);
            let err = hook.request(&info(&[])).send().unwrap_err();
            assert!(
                matches!(err, AuthError::WebhookFailed(_)),
                "{status} {body}: {err}"
            );
        }
    }

    #[test]
    fn debug_hides_header_values_and_the_body() {
        let pki = Pki::new();
        let hook = webhook(
            &pki,
            "https://127.0.0.1:1/x".into(),
            &pki.server_root.cert_pem,
            DEFAULT_TIMEOUT,
        );
        assert!(!format!("{hook:?}").contains("s3cret"));
        assert!(!format!("{:?}", hook.request(&info(&[]))).contains("cGFzc3dvcmQ"));
    }
}
