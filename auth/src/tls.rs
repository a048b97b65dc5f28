//! TLS server configs for listener ports: rustls with the ring provider,
//! TLS 1.3 and 1.2, the certificate behind a [`ReloadableCert`] (an
//! `ArcSwap`) so a reload or renewal reaches the next handshake on every
//! shard without touching open connections. Session resumption is off (see
//! docs/SECURITY.md). No sockets here: the server drives the connections.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shardmq_core::config::CertKeyFiles;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{self, FileError, FileProblem};

/// Why a server certificate or TLS config cannot be used. File problems
/// name the file and the config field it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls certFile {0}")]
    CertFile(FileError),
    #[error("tls keyFile {0}")]
    KeyFile(FileError),
    #[error("{cert}: the first certificate must be the server's own (the leaf, then its intermediates), found {found}")]
    LeafNotFirst { cert: String, found: String },
    #[error("{key}: the key cannot sign TLS handshakes with rustls/ring: {reason} (supported: ECDSA P-256/P-384, Ed25519, RSA 2048-4096 bits)")]
    UnsupportedKey { key: String, reason: String },
    #[error("{key}: the private key does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("the certificate is not backed by files: it is replaced by the certificate manager, not reloaded")]
    NotFileBacked,
    #[error("cannot build the TLS server config: {0}")]
    Config(String),
}

/// Where a [`ReloadableCert`]'s certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Files(CertKeyFiles),
    /// Issued by the internal CA; replaced with [`ReloadableCert::replace`].
    Issued,
}

/// The certificate in use and its leaf's notAfter.
struct Current {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

/// A server certificate that can be swapped while the server runs: it is
/// the `ResolvesServerCert` of the listener's [`ServerConfig`], so every
/// shard's next handshake sees a new certificate as soon as it is stored.
/// Connections already established keep their session.
pub struct ReloadableCert {
    source: Source,
    current: ArcSwap<Current>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("source", &self.source)
            .field("not_after", &self.not_after())
            .finish()
    }
}

pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl ReloadableCert {
    /// `tls.mode: Manual`: a PEM chain (leaf first, then intermediates, as a
    /// `--bundle` file) and its key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub fn from_files(files: &CertKeyFiles) -> Result<ReloadableCert, TlsError> {
        let current = load_files(files)?;
        Ok(ReloadableCert {
            source: Source::Files(files.clone()),
            current: ArcSwap::from_pointee(current),
        })
    }

    /// A certificate issued in memory (internal CA, `tls.mode: Automatic`):
    /// the PEM chain and key as the certificate manager returns them.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<ReloadableCert, TlsError> {
        let current = from_pem(chain_pem, key_pem)?;
        Ok(ReloadableCert {
            source: Source::Issued,
            current: ArcSwap::from_pointee(current),
        })
    }

    /// Re-reads the files (on change or SIGHUP). On error the certificate in
    /// use stays; the error names the file.
    pub fn reload(&self) -> Result<(), TlsError> {
        match &self.source {
            Source::Files(files) => {
                self.current.store(Arc::new(load_files(files)?));
                Ok(())
            }
            Source::Issued => Err(TlsError::NotFileBacked),
        }
    }

    /// Puts a renewed certificate in place (internal CA renewals).
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        self.current.store(Arc::new(from_pem(chain_pem, key_pem)?));
        Ok(())
    }

    /// The leaf's notAfter, e.g. to warn before it expires.
    pub fn not_after(&self) -> SystemTime {
        self.current.load().not_after
    }

    /// The chain and key the next handshake uses.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.load().key)
    }

    /// The files it reloads from, if any.
    pub fn files(&self) -> Option<&CertKeyFiles> {
        match &self.source {
            Source::Files(files) => Some(files),
            Source::Issued => None,
        }
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A node link's client end presents the node certificate (`node_tls`).
impl rustls::client::ResolvesClientCert for ReloadableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn load_files(files: &CertKeyFiles) -> Result<Current, TlsError> {
    let chain = files::read_certs(&files.cert_file).map_err(TlsError::CertFile)?;
    let key = files::read_private_key(&files.key_file).map_err(TlsError::KeyFile)?;
    certified(chain, key, &files.cert_file, &files.key_file)
}

fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Current, TlsError> {
    let memory = Path::new("<issued certificate>");
    let chain = files::certs_from_pem(chain_pem.as_bytes())
        .map_err(|problem| TlsError::CertFile(FileError::new(memory, problem)))?;
    let key = files::private_key_from_pem(key_pem.as_bytes())
        .map_err(|problem| TlsError::KeyFile(FileError::new(memory, problem)))?;
    certified(chain, key, memory, memory)
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Current, TlsError> {
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let not_after = leaf_not_after(&chain, cert_path)?;
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                key: key_name.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public key; the handshake will.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_name,
                key: key_name,
            })
        }
    }
    Ok(Current {
        key: Arc::new(certified),
        not_after,
    })
}

/// The leaf's notAfter, after checking the leaf comes first: a bundle with
/// the CA first is a common mistake that clients report as a bad chain.
fn leaf_not_after(chain: &[CertificateDer<'_>], cert_path: &Path) -> Result<SystemTime, TlsError> {
    let bad = |problem: FileProblem| TlsError::CertFile(FileError::new(cert_path, problem));
    let first = chain
        .first()
        .ok_or_else(|| bad(FileProblem::NoCertificate))?;
    let (_, leaf) = X509Certificate::from_der(first)
        .map_err(|e| bad(FileProblem::Invalid(format!("first certificate: {e}"))))?;
    if leaf.is_ca() {
        return Err(TlsError::LeafNotFirst {
            cert: cert_path.display().to_string(),
            found: format!("the CA certificate \"{}\"", leaf.subject()),
        });
    }
    let seconds = u64::try_from(leaf.validity().not_after.timestamp()).unwrap_or(0);
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The listener's TLS config: TLS 1.3 and 1.2 with ring, the certificate
/// from `cert`, and client certificates checked by `client_auth` (from
/// [`crate::x509::ClientCa`]) or not requested (`None`). Share the returned
/// config among the shards; build one per listener port.
pub fn server_config(
    cert: Arc<ReloadableCert>,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    // No resumption: a resumed session carries the client certificate of
    // its first handshake, which would skip the current CA file after a
    // reload. MQTT connections are long-lived, so full handshakes cost
    // little. rustls issues no stateless tickets unless a ticketer is set.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_pki::{days, Pki};
    use crate::x509::ClientCa;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
    use shardmq_core::config::X509Settings;
    use std::io::Write;

    /// Runs a handshake in memory; returns both ends or the first error.
    pub(crate) fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        name: &str,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut c = ClientConnection::new(client, name)?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((c, s));
            }
        }
        panic!("handshake did not finish");
    }

    fn client_config(
        trusted_pem: &str,
        identity: Option<(&str, &str)>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in files::certs_from_pem(trusted_pem.as_bytes()).unwrap() {
            roots.add(cert).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    files::certs_from_pem(chain.as_bytes()).unwrap(),
                    files::private_key_from_pem(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    fn manual(pki: &Pki, chain_pem: &str, key_pem: &str) -> CertKeyFiles {
        CertKeyFiles {
            cert_file: pki.write("server-chain.pem", chain_pem),
            key_file: pki.write("server.key", key_pem),
        }
    }

    #[test]
    fn a_bundled_server_chain_serves_tls13_and_tls12() {
        let pki = Pki::new();
        let leaf = pki.server(&["127.0.0.1", "broker.local"]);
        let cert = Arc::new(
            ReloadableCert::from_files(&manual(&pki, &leaf.bundle_pem, &leaf.key_pem)).unwrap(),
        );
        let server = server_config(cert, None).unwrap();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = client_config(&pki.server_root.cert_pem, None, version);
            let (c, _) = handshake(client.clone(), server.clone(), "127.0.0.1").unwrap();
            assert_eq!(c.protocol_version(), Some(version.version));
            assert_eq!(
                c.peer_certificates().unwrap().len(),
                2,
                "leaf + intermediate"
            );
            handshake(client, server.clone(), "broker.local").unwrap();
        }
    }

    #[test]
    fn a_client_refuses_a_server_name_not_in_the_sans() {
        let pki = Pki::new();
        let leaf = pki.server(&["127.0.0.1"]);
        let cert = Arc::new(
            ReloadableCert::from_files(&manual(&pki, &leaf.bundle_pem, &leaf.key_pem)).unwrap(),
        );
        let server = server_config(cert, None).unwrap();
        let client = client_config(&pki.server_root.cert_pem, None, &rustls::version::TLS13);
        let err = handshake(client, server, "other.example").unwrap_err();
        assert!(err.to_string().contains("not valid for name"), "{err}");
    }

    fn x509_server(pki: &Pki, mandatory: bool) -> (Arc<ServerConfig>, Arc<ClientCa>) {
        let leaf = pki.server(&["127.0.0.1"]);
        let cert = Arc::new(
            ReloadableCert::from_files(&manual(pki, &leaf.bundle_pem, &leaf.key_pem)).unwrap(),
        );
        let ca = Arc::new(
            ClientCa::load(
                &X509Settings {
                    trusted_client_ca_cert: pki.write("client-ca.pem", &pki.client_root.cert_pem),
                    authorization_attributes: Default::default(),
                },
                mandatory,
            )
            .unwrap(),
        );
        let server = server_config(cert, Some(ca.clone())).unwrap();
        (server, ca)
    }

    #[test]
    fn mutual_tls_accepts_a_client_chain_of_the_trusted_ca() {
        let pki = Pki::new();
        let (server, ca) = x509_server(&pki, true);
        let client_a = pki.client("clientA", days(30));
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = client_config(
                &pki.server_root.cert_pem,
                Some((&client_a.bundle_pem, &client_a.key_pem)),
                version,
            );
            let (_, s) = handshake(client, server.clone(), "127.0.0.1").unwrap();
            let chain = s.peer_certificates().unwrap();
            assert_eq!(chain.len(), 2, "leaf + the intermediate the client sent");
            let identity = ca.authenticate(chain, SystemTime::now()).unwrap();
            assert_eq!(identity.username.as_deref(), Some("clientA"));
        }
    }

    #[test]
    fn mutual_tls_rejects_no_certificate_another_ca_and_an_expired_certificate() {
        let pki = Pki::new();
        let (server, _) = x509_server(&pki, true);
        let root = &pki.server_root.cert_pem;
        let tls13 = &rustls::version::TLS13;

        let anonymous = client_config(root, None, tls13);
        let err = handshake(anonymous, server.clone(), "127.0.0.1").unwrap_err();
        assert!(
            matches!(err, rustls::Error::NoCertificatesPresented),
            "{err}"
        );

        let other = Pki::new();
        let stranger = other.client("clientA", days(30));
        let client = client_config(root, Some((&stranger.bundle_pem, &stranger.key_pem)), tls13);
        let err = handshake(client, server.clone(), "127.0.0.1").unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");

        let expired = pki.client("clientA", days(-1));
        let client = client_config(root, Some((&expired.bundle_pem, &expired.key_pem)), tls13);
        let err = handshake(client, server, "127.0.0.1").unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn optional_client_auth_lets_clients_without_a_certificate_in() {
        let pki = Pki::new();
        let (server, _) = x509_server(&pki, false);
        let client = client_config(&pki.server_root.cert_pem, None, &rustls::version::TLS13);
        let (_, s) = handshake(client, server, "127.0.0.1").unwrap();
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn reload_serves_the_new_certificate_and_a_bad_file_keeps_the_old_one() {
        let pki = Pki::new();
        let first = pki.server(&["127.0.0.1"]);
        let files = manual(&pki, &first.bundle_pem, &first.key_pem);
        let cert = Arc::new(ReloadableCert::from_files(&files).unwrap());
        let server = server_config(cert.clone(), None).unwrap();
        let client = client_config(&pki.server_root.cert_pem, None, &rustls::version::TLS13);
        let served = |server: &Arc<ServerConfig>| {
            let (c, _) = handshake(client.clone(), server.clone(), "127.0.0.1").unwrap();
            c.peer_certificates().unwrap()[0].clone()
        };
        let first_der = served(&server);
        // An established session is unaffected by what follows.
        let (mut established, _) = handshake(client.clone(), server.clone(), "127.0.0.1").unwrap();

        std::fs::write(&files.key_file, "not a key").unwrap();
        let err = cert.reload().unwrap_err().to_string();
        assert!(
            err.starts_with("tls keyFile ") && err.contains("server.key"),
            "{err}"
        );
        assert_eq!(served(&server), first_der);

        let second = pki.server(&["127.0.0.1"]);
        std::fs::write(&files.cert_file, &second.bundle_pem).unwrap();
        let err = cert.reload().unwrap_err().to_string();
        assert!(
            err.contains("not a key") || err.contains("no private key"),
            "{err}"
        );
        std::fs::write(&files.key_file, &second.key_pem).unwrap();
        cert.reload().unwrap();
        let second_der = served(&server);
        assert_ne!(second_der, first_der);
        assert_eq!(
            second_der,
            files::certs_from_pem(second.cert_pem.as_bytes()).unwrap()[0]
        );
        std::io::Write::write_all(&mut established.writer(), b"still open").unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_rejected() {
        let pki = Pki::new();
        let a = pki.server(&["127.0.0.1"]);
        let b = pki.server(&["127.0.0.1"]);
        let err = ReloadableCert::from_files(&manual(&pki, &a.bundle_pem, &b.key_pem))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong to the certificate"), "{err}");
    }

    #[test]
    fn a_bundle_with_the_ca_first_is_rejected() {
        let pki = Pki::new();
        let a = pki.server(&["127.0.0.1"]);
        let reversed = format!("{}{}", pki.server_intermediate.cert_pem, a.cert_pem);
        let err = ReloadableCert::from_files(&manual(&pki, &reversed, &a.key_pem))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the first certificate must be the server's own"),
            "{err}"
        );
    }

    /// OpenSSL clients (what mosquitto_pub/sub use) complete mutual TLS
    /// 1.2 and 1.3 handshakes, sending leaf and intermediate, although the
    /// server names no CAs in its CertificateRequest.
    #[test]
    fn openssl_clients_complete_mutual_tls() {
        let openssl = Path::new("/usr/bin/openssl");
        if !openssl.exists() {
            eprintln!("note: /usr/bin/openssl not installed; test skipped");
            return;
        }
        let pki = Pki::new();
        let (server, ca) = x509_server(&pki, true);
        let client = pki.client("clientA", days(30));
        let leaf = pki.write("clientA.crt", &client.cert_pem);
        let chain = pki.write("clientA-chain.crt", &pki.client_intermediate.cert_pem);
        let key = pki.write("clientA.key", &client.key_pem);
        let root = pki.write("server_root.crt", &pki.server_root.cert_pem);
        for version in ["-tls1_2", "-tls1_3"] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let config = server.clone();
            let accepted = std::thread::spawn(move || {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut conn = ServerConnection::new(config).unwrap();
                let mut tcp = tcp;
                while conn.is_handshaking() {
                    conn.complete_io(&mut tcp)?;
                }
                conn.writer().write_all(b"ok").unwrap();
                conn.send_close_notify();
                conn.complete_io(&mut tcp)?;
                Ok::<_, std::io::Error>(conn.peer_certificates().map(|c| c.to_vec()))
            });
            let out = std::process::Command::new(openssl)
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    version,
                ])
                .args(["-verify_return_error", "-verify_ip", "127.0.0.1"])
                .arg("-CAfile")
                .arg(&root)
                .arg("-cert")
                .arg(&leaf)
                .arg("-cert_chain")
                .arg(&chain)
                .arg("-key")
                .arg(&key)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let peer = accepted.join().unwrap().unwrap().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(peer.len(), 2, "{version}: leaf and intermediate");
            let identity = ca.authenticate(&peer, SystemTime::now()).unwrap();
            assert_eq!(identity.username.as_deref(), Some("clientA"));
        }
    }

    /// SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") keys, as
    /// `openssl` writes them, load like PKCS#8.
    #[test]
    fn sec1_and_pkcs1_keys_load() {
        let openssl = Path::new("/usr/bin/openssl");
        if !openssl.exists() {
            eprintln!("note: /usr/bin/openssl not installed; test skipped");
            return;
        }
        let pki = Pki::new();
        let run = |args: &[&str]| {
            let out = std::process::Command::new(openssl)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        for (genkey, marker) in [
            (
                vec![
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ],
                "EC PRIVATE KEY",
            ),
            (
                vec![
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ],
                "RSA PRIVATE KEY",
            ),
        ] {
            let pkcs8 = run(&genkey);
            let pkcs8_path = pki.write("k8.pem", &pkcs8);
            let traditional = run(&["pkey", "-in", pkcs8_path.to_str().unwrap(), "-traditional"]);
            assert!(traditional.contains(marker), "{traditional}");
            let chain = pki
                .server_intermediate
                .leaf_with_key(&pkcs8, &["127.0.0.1"]);
            let cert =
                Arc::new(ReloadableCert::from_files(&manual(&pki, &chain, &traditional)).unwrap());
            let server = server_config(cert, None).unwrap();
            let client = client_config(&pki.server_root.cert_pem, None, &rustls::version::TLS13);
            handshake(client, server, "127.0.0.1").unwrap();
        }
    }
}
