//! Test-only PKI made with rcgen: the seed scenario's server root and
//! intermediate, client root and intermediate, and leaves bundled with their
//! intermediate (as `step certificate create --bundle` writes them).
//! Exported with the `test-pki` feature for the server's integration tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// A validity that ends `n` days from now (negative: already expired).
pub fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// A certificate with its key, PEM, and the issuer chain above it (not the root).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// This certificate then its intermediates, PEM: a `--bundle` file.
    pub bundle_pem: String,
}

impl Issued {
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        crate::files::certs_from_pem(self.bundle_pem.as_bytes()).unwrap()
    }
}

pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - days(1);
    params.not_after = now + days(365);
    params
}

impl Ca {
    pub fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server leaf for an existing PKCS#8 key (from openssl); returns the bundle.
    pub fn leaf_with_key(&self, pkcs8_pem: &str, sans: &[&str]) -> String {
        let key = KeyPair::from_pem(pkcs8_pem).unwrap();
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        format!("{}{}", cert.pem(), self.cert_pem)
    }

    /// A leaf valid from a day ago until `valid_for` from now; `server`
    /// picks the serverAuth or clientAuth EKU; `sans` are DNS names or IPs.
    pub fn leaf(&self, cn: &str, sans: &[&str], valid_for: time::Duration, server: bool) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - days(2);
        params.not_after = now + valid_for;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            bundle_pem: format!("{}{}", cert.pem(), self.cert_pem),
        }
    }
}

/// The seed scenario's two PKIs and a directory to write files into.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub server_root: Ca,
    pub server_intermediate: Ca,
    pub client_root: Ca,
    pub client_intermediate: Ca,
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let server_root = Ca::root("server-root");
        let server_intermediate = server_root.intermediate("server-intermediate");
        let client_root = Ca::root("client-root");
        let client_intermediate = client_root.intermediate("client-intermediate");
        Pki {
            dir: tempfile::tempdir().unwrap(),
            server_root,
            server_intermediate,
            client_root,
            client_intermediate,
        }
    }

    pub fn client(&self, cn: &str, valid_for: time::Duration) -> Issued {
        self.client_intermediate.leaf(cn, &[], valid_for, false)
    }

    pub fn server(&self, sans: &[&str]) -> Issued {
        self.server_intermediate
            .leaf("broker", sans, days(30), true)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

// ---- a one-request HTTPS server, standing in for a webhook -------------

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::tls::{server_config, ReloadableCert};
use shardmq_core::config::CertKeyFiles;

/// What the test server does with one request.
pub enum Answer {
    Status(u16, &'static str),
    /// Accept, read the request, never answer (until the test ends).
    Stall,
}

/// A one-request HTTPS server on 127.0.0.1; sends back the request it
/// saw (head and body) on the returned channel.
pub fn serve_once(pki: &Pki, answer: Answer) -> (String, mpsc::Receiver<(String, String)>) {
    let leaf = pki.server(&["127.0.0.1"]);
    let files = CertKeyFiles {
        cert_file: pki.write("webhook.pem", &leaf.bundle_pem),
        key_file: pki.write("webhook.key", &leaf.key_pem),
    };
    let config =
        server_config(Arc::new(ReloadableCert::from_files(&files).unwrap()), None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/authenticate",
        listener.local_addr().unwrap().port()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
        let mut head = String::new();
        let mut content_len = 0;
        loop {
            let mut line = String::new();
            if tls.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; content_len];
        tls.read_exact(&mut body).unwrap();
        let _ = tx.send((head, String::from_utf8(body).unwrap()));
        match answer {
            Answer::Status(code, body) => {
                let response = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let stream = tls.get_mut();
                stream.write_all(response.as_bytes()).unwrap();
                stream.flush().unwrap();
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            Answer::Stall => std::thread::sleep(Duration::from_secs(5)),
        }
    });
    (url, rx)
}

/// A Mosquitto 1.x password-file line (`user:$6$salt$hash`, salted SHA-512)
/// for `user` and `password`, so tests need no `mosquitto_passwd`.
pub fn password_line(user: &str, password: &str) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let salt = format!("salt-of-{user}");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(password.as_bytes());
    ctx.update(salt.as_bytes());
    format!(
        "{user}:$6${}${}",
        STANDARD.encode(salt.as_bytes()),
        STANDARD.encode(ctx.finish().as_ref())
    )
}

/// An Ed25519 key pair for service-account tokens (`K8S-SAT`): the public
/// half goes in `serviceAccountTokenSettings.keys`.
pub struct SatKeys {
    pub private_pem: String,
    pub public_pem: String,
}

impl SatKeys {
    pub fn ed25519() -> SatKeys {
        let k = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        SatKeys {
            private_pem: k.serialize_pem(),
            public_pem: k.public_key_pem(),
        }
    }

    /// A token for audience `aio-internal` and subject `sub`, expiring
    /// `exp_from_now_s` seconds from now (negative: already expired).
    pub fn token(&self, sub: &str, exp_from_now_s: i64) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "aud": ["aio-internal"],
            "exp": now + exp_from_now_s,
            "nbf": now - 10,
            "sub": sub,
        });
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &key,
        )
        .unwrap()
    }
}
