//! X509 client authentication: the handshake verifier built from
//! `trustedClientCaCert` (rustls `WebPkiClientVerifier`, swappable on reload)
//! and, after the handshake, [`ClientCa::authenticate`], which re-verifies
//! the presented chain at `now`, takes the identity from the leaf and maps
//! `authorizationAttributes` subjects along the verified path. No I/O except
//! reading the CA file in `load` / `reload`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use shardmq_core::config::X509Settings;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::files::{self, FileError};
use crate::identity::{AuthError, Identity, MethodKind};

/// Why the X509 settings cannot be used. Found at load or reload; a failed
/// reload keeps the previous CAs.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("x509Settings.trustedClientCaCert {0}")]
    File(#[from] FileError),
    #[error("x509Settings.trustedClientCaCert {path}: certificate {index} (0-based) is not a usable CA certificate: {reason}")]
    BadCaCert {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("x509Settings.authorizationAttributes.{name}.subject \"{subject}\": {reason}")]
    BadSubject {
        name: String,
        subject: String,
        reason: String,
    },
    #[error("x509Settings: cannot build the client certificate verifier: {0}")]
    Verifier(String),
}

/// A distinguished name as a sorted list of `(TYPE, value)` pairs: types
/// upper-cased with common aliases folded ("E", "Email" -> EMAILADDRESS),
/// values exact. Sorting makes "CN = a, O = b" equal to the certificate's
/// "O=b, CN=a": RFC 4514 strings list RDNs in reverse order of the DER, and
/// operators copy from both `openssl x509 -subject` and RFC 4514 tools.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dn(Vec<(String, String)>);

fn normalize_type(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    match upper.as_str() {
        "E" | "EMAIL" | "EMAILADDRESS" => "EMAILADDRESS".to_owned(),
        "S" => "ST".to_owned(),
        _ => upper,
    }
}

impl Dn {
    /// Parses "CN = smart-fan, O = Contoso" (`\,` escapes a comma in a value).
    fn parse(text: &str) -> Result<Dn, String> {
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ',' => parts.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        parts.push(current);
        let mut pairs = Vec::with_capacity(parts.len());
        for part in &parts {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!("\"{}\" is not TYPE=value", part.trim()));
            };
            let (name, value) = (normalize_type(name), value.trim().to_owned());
            if name.is_empty() {
                return Err(format!("\"{}\" has no attribute type", part.trim()));
            }
            pairs.push((name, value));
        }
        pairs.sort();
        Ok(Dn(pairs))
    }

    fn of_name(name: &X509Name<'_>) -> Dn {
        let registry = x509_parser::objects::oid_registry();
        let mut pairs: Vec<(String, String)> = name
            .iter_attributes()
            .map(|attribute| {
                let oid = attribute.attr_type();
                let kind = x509_parser::objects::oid2abbrev(oid, registry)
                    .map(normalize_type)
                    .unwrap_or_else(|_| oid.to_id_string());
                // Non-string values (rare) are compared as hex of their
                // bytes, so they can still be matched but never collide
                // with a string.
                let value = attribute.as_str().map(str::to_owned).unwrap_or_else(|_| {
                    let hex: String = attribute
                        .as_slice()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    format!("#{hex}")
                });
                (kind, value)
            })
            .collect();
        pairs.sort();
        Dn(pairs)
    }
}

/// What the path building needs from one certificate.
struct ParsedCert {
    subject: Dn,
    common_name: Option<String>,
    not_after: SystemTime,
}

impl ParsedCert {
    fn parse(der: &[u8]) -> Result<ParsedCert, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(ParsedCert {
            subject: Dn::of_name(cert.subject()),
            common_name,
            not_after: to_system_time(cert.validity().not_after.timestamp()),
        })
    }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    let seconds = u64::try_from(unix_seconds).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// Everything derived from the CA file; replaced whole on reload.
struct CaState {
    verifier: Arc<dyn ClientCertVerifier>,
    /// The ring provider's signature algorithms (a static list).
    algorithms: &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm],
    anchors: Vec<TrustAnchor<'static>>,
    /// Parallel to `anchors`.
    anchor_certs: Vec<ParsedCert>,
}

/// `authorizationAttributes`, parsed; in config (name) order, the first
/// subject that matches a certificate wins.
struct AttributeRule {
    subject: Dn,
    attributes: BTreeMap<String, String>,
}

/// The X509 method of one authentication policy: CA trust for the handshake
/// and identity mapping after it. Share one `Arc<ClientCa>` between the
/// server config (as its client verifier) and the authenticator.
pub struct ClientCa {
    ca_file: PathBuf,
    mandatory: bool,
    attribute_rules: Vec<AttributeRule>,
    state: ArcSwap<CaState>,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("ca_file", &self.ca_file)
            .field("mandatory", &self.mandatory)
            .field("anchors", &self.state.load().anchors.len())
            .finish()
    }
}

impl ClientCa {
    /// Reads `trustedClientCaCert` and parses the attribute subjects.
    /// `mandatory`: the handshake fails without a client certificate (X509
    /// is the policy's only method); otherwise a client may connect without
    /// one and authenticate by another method.
    pub fn load(settings: &X509Settings, mandatory: bool) -> Result<ClientCa, X509Error> {
        let mut attribute_rules = Vec::with_capacity(settings.authorization_attributes.len());
        for (name, entry) in &settings.authorization_attributes {
            let subject = Dn::parse(&entry.subject).map_err(|reason| X509Error::BadSubject {
                name: name.clone(),
                subject: entry.subject.clone(),
                reason,
            })?;
            attribute_rules.push(AttributeRule {
                subject,
                attributes: entry.attributes.clone(),
            });
        }
        let state = load_state(&settings.trusted_client_ca_cert, mandatory)?;
        Ok(ClientCa {
            ca_file: settings.trusted_client_ca_cert.clone(),
            mandatory,
            attribute_rules,
            state: ArcSwap::from_pointee(state),
        })
    }

    /// Re-reads the CA file. On error the previous CAs stay in use. New
    /// handshakes and authentications see the new CAs at once; connected
    /// clients are not re-checked (the server may disconnect those whose
    /// chain no longer verifies by calling [`ClientCa::authenticate`] again).
    pub fn reload(&self) -> Result<(), X509Error> {
        let state = load_state(&self.ca_file, self.mandatory)?;
        self.state.store(Arc::new(state));
        Ok(())
    }

    pub fn ca_file(&self) -> &std::path::Path {
        &self.ca_file
    }

    /// Identity of a client whose handshake presented `chain` (leaf first,
    /// then the intermediates it sent, as `peer_certificates()` returns it).
    /// The chain is verified again at `now` against the current CAs, so a
    /// resumed or stale session cannot skip verification.
    ///
    /// - `username`: the leaf subject's first CN (`None` without a CN);
    /// - `attributes`: of the first `authorizationAttributes` entry whose
    ///   subject equals a subject on the verified path, looked for from the
    ///   leaf up through the intermediates to the trust anchor (AIO: the
    ///   first certificate that matches decides; later ones add nothing);
    /// - `expiry`: the earliest notAfter on the path.
    pub fn authenticate(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<Identity, AuthError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AuthError::NoCredentials);
        };
        let state = self.state.load();
        let reject = |e: &dyn fmt::Display| AuthError::Certificate(e.to_string());
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| reject(&e))?;
        let unix_now =
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let path = end_entity
            .verify_for_usage(
                state.algorithms,
                &state.anchors,
                intermediates,
                unix_now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| reject(&e))?;

        let leaf_parsed = ParsedCert::parse(leaf).map_err(|e| reject(&e))?;
        let mut path_certs = vec![leaf_parsed];
        for intermediate in path.intermediate_certificates() {
            path_certs.push(ParsedCert::parse(&intermediate.der()).map_err(|e| reject(&e))?);
        }
        let anchor = path.anchor();
        let anchor_index = state
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, anchor))
            .ok_or_else(|| AuthError::Certificate("trust anchor not found".to_owned()))?;
        let anchor_cert = &state.anchor_certs[anchor_index];

        let attributes = path_certs
            .iter()
            .chain(std::iter::once(anchor_cert))
            .find_map(|cert| {
                self.attribute_rules
                    .iter()
                    .find(|rule| rule.subject == cert.subject)
            })
            .map(|rule| rule.attributes.clone())
            .unwrap_or_default();
        let expiry = path_certs
            .iter()
            .chain(std::iter::once(anchor_cert))
            .map(|cert| cert.not_after)
            .min();
        Ok(Identity {
            method: MethodKind::X509,
            username: path_certs.swap_remove(0).common_name,
            attributes,
            expiry,
        })
    }
}

fn load_state(path: &std::path::Path, mandatory: bool) -> Result<CaState, X509Error> {
    let certs = files::read_certs(path)?;
    let bad = |index: usize, reason: String| X509Error::BadCaCert {
        path: path.to_owned(),
        index,
        reason,
    };
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::with_capacity(certs.len());
    let mut anchor_certs = Vec::with_capacity(certs.len());
    for (index, der) in certs.iter().enumerate() {
        let anchor =
            webpki::anchor_from_trusted_cert(der).map_err(|e| bad(index, e.to_string()))?;
        anchors.push(anchor.to_owned());
        anchor_certs.push(ParsedCert::parse(der).map_err(|e| bad(index, e))?);
        roots
            .add(der.clone())
            .map_err(|e| bad(index, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms.all;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !mandatory {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder
        .build()
        .map_err(|e| X509Error::Verifier(e.to_string()))?;
    Ok(CaState {
        verifier,
        algorithms,
        anchors,
        anchor_certs,
    })
}

/// The subject of a certificate as `openssl x509 -subject` prints it
/// ("CN=clientA, O=Contoso"), for logs; `None` if it does not parse.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.subject().to_string())
}

thread_local! {
    /// The subject of the client certificate this thread's verifier last
    /// rejected: rustls's handshake error does not name the certificate,
    /// and the operator's log should.
    static REJECTED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes what `verify_client_cert` rejected on this thread. The server
/// calls it when a handshake fails: the verifier runs inside the
/// handshake's poll and the failure ends that same poll, so on a
/// thread-per-core server no other handshake ran in between.
pub fn take_rejected_subject() -> Option<String> {
    REJECTED.with(|r| r.borrow_mut().take())
}

/// The handshake side: each call delegates to the verifier of the current
/// CA file, so a reload applies to the next handshake on every shard.
impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No CA names are sent in CertificateRequest: they would have to be
    /// borrowed from the swappable state. Clients with one certificate (the
    /// usual MQTT device) send it regardless; TLS 1.3 §4.2.4 lets a client
    /// without hints pick any certificate.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified =
            self.state
                .load()
                .verifier
                .verify_client_cert(end_entity, intermediates, now);
        if verified.is_err() {
            let subject = certificate_subject(end_entity);
            REJECTED.with(|r| *r.borrow_mut() = subject);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.state
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.state
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.state.load().verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{days, Pki};
    use shardmq_core::config::X509Attributes;

    #[test]
    fn subjects_compare_by_type_and_value_in_any_order() {
        let a = Dn::parse("CN = smart-fan, O = Contoso").unwrap();
        let b = Dn::parse("o=Contoso,cn=smart-fan").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Dn::parse("CN = smart-fan").unwrap());
        assert_ne!(
            a,
            Dn::parse("CN = Smart-fan, O = Contoso").unwrap(),
            "values are exact"
        );
        assert_eq!(
            Dn::parse(r"CN = a\, b").unwrap(),
            Dn(vec![("CN".into(), "a, b".into())])
        );
        assert_eq!(
            Dn::parse("E = x@y").unwrap(),
            Dn::parse("emailAddress=x@y").unwrap()
        );
        assert!(Dn::parse("CN smart-fan").is_err());
        assert!(Dn::parse("= x").is_err());
    }

    /// `(entry name, subject, attributes)`.
    type AttributeEntry<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    fn settings(pki: &Pki, attributes: &[AttributeEntry<'_>]) -> X509Settings {
        X509Settings {
            trusted_client_ca_cert: pki.write("client-ca.pem", &pki.client_root.cert_pem),
            authorization_attributes: attributes
                .iter()
                .map(|(name, subject, attrs)| {
                    (
                        name.to_string(),
                        X509Attributes {
                            subject: subject.to_string(),
                            attributes: attrs
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_bundled_client_chain_authenticates_with_cn_attributes_and_expiry() {
        let pki = Pki::new();
        let ca = ClientCa::load(
            &settings(
                &pki,
                &[
                    ("leaf", "CN = clientA", &[("group", "testers")]),
                    (
                        "inter",
                        "CN = client-intermediate",
                        &[("group", "from-intermediate")],
                    ),
                ],
            ),
            true,
        )
        .unwrap();
        let client_a = pki.client("clientA", days(30));
        let identity = ca
            .authenticate(&client_a.chain_der(), SystemTime::now())
            .unwrap();
        assert_eq!(identity.method, MethodKind::X509);
        assert_eq!(identity.username.as_deref(), Some("clientA"));
        assert_eq!(
            identity.attributes.get("group").map(String::as_str),
            Some("testers")
        );
        let expiry = identity.expiry.unwrap();
        let expected = SystemTime::now() + Duration::from_secs(30 * 86400);
        assert!(expiry <= expected && expiry + Duration::from_secs(120) > expected);

        // Client B matches no leaf entry: the intermediate's subject decides.
        let client_b = pki.client("clientB", days(30));
        let identity = ca
            .authenticate(&client_b.chain_der(), SystemTime::now())
            .unwrap();
        assert_eq!(
            identity.attributes.get("group").map(String::as_str),
            Some("from-intermediate")
        );
    }

    #[test]
    fn the_trust_anchor_subject_maps_attributes_too() {
        let pki = Pki::new();
        let ca = ClientCa::load(
            &settings(&pki, &[("root", "CN = client-root", &[("org", "contoso")])]),
            true,
        )
        .unwrap();
        let client = pki.client("clientA", days(30));
        let identity = ca
            .authenticate(&client.chain_der(), SystemTime::now())
            .unwrap();
        assert_eq!(
            identity.attributes.get("org").map(String::as_str),
            Some("contoso")
        );
    }

    #[test]
    fn certificates_of_another_ca_are_rejected() {
        let pki = Pki::new();
        let other = Pki::new();
        let ca = ClientCa::load(&settings(&pki, &[]), true).unwrap();
        let stranger = other.client("clientA", days(30));
        let err = ca
            .authenticate(&stranger.chain_der(), SystemTime::now())
            .unwrap_err();
        assert!(matches!(err, AuthError::Certificate(_)), "{err}");
        let err = ca
            .verify_client_cert(
                &stranger.chain_der()[0],
                &stranger.chain_der()[1..],
                UnixTime::now(),
            )
            .unwrap_err();
        // Same CA names, other keys: BadSignature; other names: UnknownIssuer.
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[test]
    fn expired_certificates_are_rejected() {
        let pki = Pki::new();
        let ca = ClientCa::load(&settings(&pki, &[]), true).unwrap();
        let expired = pki.client("clientA", days(-1));
        let err = ca
            .authenticate(&expired.chain_der(), SystemTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("Expired"), "{err}");
        // Valid now, expired later: authentication is checked at `now`.
        let valid = pki.client("clientA", days(1));
        let later = SystemTime::now() + Duration::from_secs(2 * 86400);
        assert!(ca.authenticate(&valid.chain_der(), later).is_err());
    }

    #[test]
    fn no_certificate_is_no_credentials() {
        let pki = Pki::new();
        let ca = ClientCa::load(&settings(&pki, &[]), false).unwrap();
        assert_eq!(
            ca.authenticate(&[], SystemTime::now()).unwrap_err(),
            AuthError::NoCredentials
        );
        assert!(!ca.client_auth_mandatory());
    }

    #[test]
    fn reload_swaps_the_cas_and_a_failed_reload_keeps_the_old_ones() {
        let pki = Pki::new();
        let other = Pki::new();
        let settings = settings(&pki, &[]);
        let ca = ClientCa::load(&settings, true).unwrap();
        let ours = pki.client("a", days(1));
        let theirs = other.client("b", days(1));
        assert!(ca
            .authenticate(&ours.chain_der(), SystemTime::now())
            .is_ok());

        std::fs::write(&settings.trusted_client_ca_cert, "garbage").unwrap();
        let err = ca.reload().unwrap_err().to_string();
        assert!(err.contains("client-ca.pem: no \"CERTIFICATE\""), "{err}");
        assert!(ca
            .authenticate(&ours.chain_der(), SystemTime::now())
            .is_ok());

        std::fs::write(
            &settings.trusted_client_ca_cert,
            &other.client_root.cert_pem,
        )
        .unwrap();
        ca.reload().unwrap();
        assert!(ca
            .authenticate(&ours.chain_der(), SystemTime::now())
            .is_err());
        assert!(ca
            .authenticate(&theirs.chain_der(), SystemTime::now())
            .is_ok());
    }

    #[test]
    fn a_bad_attribute_subject_is_a_load_error_naming_the_entry() {
        let pki = Pki::new();
        let err = ClientCa::load(&settings(&pki, &[("fan", "smart-fan", &[])]), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x509Settings.authorizationAttributes.fan.subject \"smart-fan\""),
            "{err}"
        );
    }
}
