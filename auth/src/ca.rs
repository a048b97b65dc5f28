//! The broker's internal CA and certificate manager (AIO `internalCerts`,
//! `tls.certManagerCertificateSpec`): a self-signed CA kept on disk, leaf
//! certificates with the configured SANs, lifetime, renewal point and key
//! rotation. Key generation: rcgen+ring for EC P-256/P-384 and Ed25519, the
//! `rsa` crate for RSA 2048/4096; P-521 and RSA 8192 are rejected because
//! ring cannot sign TLS handshakes with them. The clock is passed in.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use ring::rand::{SecureRandom, SystemRandom};
use shardmq_core::config::{AutomaticTls, CertPolicy, KeyAlgorithm, RotationPolicy};
use time::OffsetDateTime;

use crate::files::{self, FileError, FileProblem};
use crate::tls::{ReloadableCert, TlsError};

/// Lifetime of the internal CA certificate. Clients trust the CA file, so
/// it changes rarely: only when it cannot outlive one more leaf.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Certificates start this long before "now": clients whose clock is a
/// little behind still accept a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `privateKey.algorithm` names a key the broker cannot use; reported at
    /// config load by [`check_supported`].
    #[error("privateKey.algorithm {algorithm:?} is not supported: {reason}")]
    UnsupportedKeyAlgorithm {
        algorithm: KeyAlgorithm,
        reason: &'static str,
    },
    #[error("tls.certManagerCertificateSpec.san: at least one DNS name or IP address is needed, or clients cannot verify the server")]
    NoSubjectAltNames,
    #[error("tls.certManagerCertificateSpec.san.dns \"{0}\" is not a valid DNS name")]
    BadDnsName(String),
    #[error("internal CA {0}")]
    File(#[from] FileError),
    #[error("cannot generate a {algorithm:?} key: {reason}")]
    KeyGeneration {
        algorithm: KeyAlgorithm,
        reason: String,
    },
    #[error("cannot issue the certificate: {0}")]
    Issue(String),
    #[error("issued certificate unusable for TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Whether the certificate manager can generate and use `algorithm`; the
/// server calls it at config load for `advanced.internalCerts` and every
/// `certManagerCertificateSpec`.
pub fn check_supported(algorithm: KeyAlgorithm) -> Result<(), CaError> {
    let reason = match algorithm {
        KeyAlgorithm::Ec256
        | KeyAlgorithm::Ec384
        | KeyAlgorithm::Ed25519
        | KeyAlgorithm::Rsa2048
        | KeyAlgorithm::Rsa4096 => return Ok(()),
        KeyAlgorithm::Ec521 => {
            "ring (the TLS crypto provider) has no P-521 signing, so a P-521 server key could not sign handshakes; use Ec384 or Ec256"
        }
        KeyAlgorithm::Rsa8192 => {
            "ring (the TLS crypto provider) signs with RSA keys of at most 4096 bits; use Rsa4096"
        }
    };
    Err(CaError::UnsupportedKeyAlgorithm { algorithm, reason })
}

fn signature_algorithm(algorithm: KeyAlgorithm) -> &'static SignatureAlgorithm {
    match algorithm {
        KeyAlgorithm::Ec384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 | KeyAlgorithm::Rsa8192 => {
            &rcgen::PKCS_RSA_SHA256
        }
        KeyAlgorithm::Ec256 | KeyAlgorithm::Ec521 => &rcgen::PKCS_ECDSA_P256_SHA256,
    }
}

/// A new key pair of `algorithm` (PKCS#8 inside).
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<KeyPair, CaError> {
    check_supported(algorithm)?;
    let failed = |reason: String| CaError::KeyGeneration { algorithm, reason };
    let bits = match algorithm {
        KeyAlgorithm::Rsa2048 => 2048,
        KeyAlgorithm::Rsa4096 => 4096,
        _ => {
            return KeyPair::generate_for(signature_algorithm(algorithm))
                .map_err(|e| failed(e.to_string()))
        }
    };
    // ring cannot generate RSA keys; the `rsa` crate can. Only generation
    // uses it: signing is ring's (see docs/SECURITY.md).
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| failed(e.to_string()))?;
    let pkcs8 = key.to_pkcs8_der().map_err(|e| failed(e.to_string()))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| failed(e.to_string()))
}

fn key_algorithm_of(key: &KeyPair) -> Option<KeyAlgorithm> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some(KeyAlgorithm::Ec256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Some(KeyAlgorithm::Ec384)
    } else if alg == &rcgen::PKCS_ED25519 {
        Some(KeyAlgorithm::Ed25519)
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        // 2048 or 4096: the modulus size is in the public key's length.
        Some(if key.public_key_raw().len() > 300 {
            KeyAlgorithm::Rsa4096
        } else {
            KeyAlgorithm::Rsa2048
        })
    } else {
        None
    }
}

/// A unique, positive serial (RFC 5280 §4.1.2.2: at most 20 bytes). rcgen's
/// default derives it from the public key, which would repeat across
/// renewals that keep the key.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Issue("no randomness for the serial number".to_owned()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Up to a tenth of `renew_before`, at random.
fn renewal_jitter(renew_before: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    renew_before / 10 * u32::from(u16::from_le_bytes(bytes)) / u32::from(u16::MAX)
}

fn to_offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

fn to_system(time: OffsetDateTime) -> SystemTime {
    unix_seconds(time.unix_timestamp())
}

fn unix_seconds(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// The internal CA: signs the automatic listeners' certificates.
pub struct InternalCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
    cert_file: Option<PathBuf>,
}

impl fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalCa")
            .field("cert_file", &self.cert_file)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Whether [`InternalCa::load_or_create`] found the CA or made a new one
/// (then clients must be given the new CA file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    Loaded,
    Created,
}

impl InternalCa {
    /// A new self-signed CA in memory, valid [`CA_LIFETIME`] from `now`.
    pub fn create(algorithm: KeyAlgorithm, now: SystemTime) -> Result<InternalCa, CaError> {
        let key = generate_key(algorithm)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "shardmq internal CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + CA_LIFETIME);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        Ok(InternalCa {
            cert_pem: cert.pem(),
            not_after: to_system(params.not_after),
            issuer: Issuer::new(params, key),
            cert_file: None,
        })
    }

    /// The CA of `dir` (`ca.crt`, readable by all, and `ca.key`, 0600):
    /// loaded when both exist and the CA outlives `now + leaf_lifetime`,
    /// otherwise created with `algorithm` and written there.
    pub fn load_or_create(
        dir: &Path,
        algorithm: KeyAlgorithm,
        leaf_lifetime: Duration,
        now: SystemTime,
    ) -> Result<(InternalCa, CaOrigin), CaError> {
        let cert_file = dir.join(CA_CERT_FILE);
        let key_file = dir.join(CA_KEY_FILE);
        if cert_file.exists() && key_file.exists() {
            let ca = InternalCa::load(&cert_file, &key_file)?;
            if ca.not_after > now + leaf_lifetime {
                return Ok((ca, CaOrigin::Loaded));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| FileError::new(dir, FileProblem::Io(e)))?;
        let mut ca = InternalCa::create(algorithm, now)?;
        // Key first: a crash in between leaves a key without a certificate,
        // which the next start replaces, never a certificate without its key.
        files::write_private(&key_file, ca.issuer.key().serialize_pem().as_bytes())?;
        files::write_public(&cert_file, ca.cert_pem.as_bytes())?;
        ca.cert_file = Some(cert_file);
        Ok((ca, CaOrigin::Created))
    }

    /// The CA in `cert_file` and `key_file` (PEM), as an operator gives it
    /// (a cluster's CA, docs/CLUSTER.md).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<InternalCa, CaError> {
        let invalid = |path: &Path, e: String| FileError::new(path, FileProblem::Invalid(e));
        let cert_pem = String::from_utf8(files::read(cert_file)?)
            .map_err(|e| invalid(cert_file, e.to_string()))?;
        let key_pem = String::from_utf8(files::read(key_file)?)
            .map_err(|e| invalid(key_file, e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(key_file, e.to_string()))?;
        let certs = files::certs_from_pem(cert_pem.as_bytes())
            .map_err(|problem| FileError::new(cert_file, problem))?;
        let not_after = {
            use x509_parser::prelude::{FromDer, X509Certificate};
            let (_, cert) = X509Certificate::from_der(&certs[0])
                .map_err(|e| invalid(cert_file, e.to_string()))?;
            // The first certificate signs: during a CA rotation the file
            // holds two, and the wrong one first would issue leaves no
            // peer can verify.
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(invalid(
                    cert_file,
                    format!(
                        "its first certificate is not the one {} is the key of \
                         (put the signing CA first, any other trusted CA after it)",
                        key_file.display()
                    ),
                )
                .into());
            }
            unix_seconds(cert.validity().not_after.timestamp())
        };
        let issuer = Issuer::from_ca_cert_der(&certs[0], key)
            .map_err(|e| invalid(cert_file, e.to_string()))?;
        Ok(InternalCa {
            cert_pem,
            issuer,
            not_after,
            cert_file: Some(cert_file.to_owned()),
        })
    }

    /// The CA certificate clients must trust (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate was written, if on disk.
    pub fn cert_file(&self) -> Option<&Path> {
        self.cert_file.as_deref()
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a server certificate for `key`: CN and SANs from `sans`,
    /// valid from `now` (minus a small backdate) for `lifetime`, never past
    /// the CA's own notAfter.
    pub fn issue(
        &self,
        sans: &SubjectAltNames,
        key: &KeyPair,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        self.issue_for(
            sans,
            key,
            lifetime,
            now,
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// Issues a cluster node's certificate (docs/CLUSTER.md): the same as
    /// [`InternalCa::issue`], for both ends of a node link (serverAuth and
    /// clientAuth), so a listener's certificate cannot pose as a node.
    pub fn issue_node(
        &self,
        sans: &SubjectAltNames,
        key: &KeyPair,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        self.issue_for(
            sans,
            key,
            lifetime,
            now,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn issue_for(
        &self,
        sans: &SubjectAltNames,
        key: &KeyPair,
        lifetime: Duration,
        now: SystemTime,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, sans.common_name());
        params.subject_alt_names = sans.to_rcgen()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset((now + lifetime).min(self.not_after));
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        Ok(Issued {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: to_system(params.not_after),
        })
    }
}

/// The names a server certificate is for (`san.dns`, `san.ip`); never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectAltNames {
    pub dns: Vec<String>,
    pub ip: Vec<IpAddr>,
}

impl SubjectAltNames {
    pub fn new(dns: Vec<String>, ip: Vec<IpAddr>) -> Result<SubjectAltNames, CaError> {
        if dns.is_empty() && ip.is_empty() {
            return Err(CaError::NoSubjectAltNames);
        }
        let sans = SubjectAltNames { dns, ip };
        sans.to_rcgen()?;
        Ok(sans)
    }

    fn common_name(&self) -> String {
        match (self.dns.first(), self.ip.first()) {
            (Some(dns), _) => dns.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => "shardmq".to_owned(),
        }
    }

    fn to_rcgen(&self) -> Result<Vec<SanType>, CaError> {
        let mut out = Vec::with_capacity(self.dns.len() + self.ip.len());
        for name in &self.dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| CaError::BadDnsName(name.clone()))?;
            out.push(SanType::DnsName(ia5));
        }
        out.extend(self.ip.iter().map(|ip| SanType::IpAddress(*ip)));
        Ok(out)
    }
}

/// A certificate the CA issued: the chain the server sends (the leaf; the
/// CA is what clients trust) and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .field("key_pem", &"***")
            .finish()
    }
}

/// One automatic listener's certificate: issues it, says when to renew it,
/// renews it (new key or the same per `rotationPolicy`) and swaps it into
/// the listener's [`ReloadableCert`].
pub struct CertManager {
    ca: Arc<InternalCa>,
    sans: SubjectAltNames,
    policy: CertPolicy,
    key: KeyPair,
    key_file: Option<PathBuf>,
    not_after: SystemTime,
    cert: Arc<ReloadableCert>,
    /// A node link's certificate (serverAuth and clientAuth).
    node: bool,
    /// Renewal comes this much earlier than `renewBefore` says: random per
    /// node certificate, so the nodes of a cluster started together do not
    /// all renew at once.
    jitter: Duration,
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManager")
            .field("sans", &self.sans)
            .field("policy", &self.policy)
            .field("key_file", &self.key_file)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl CertManager {
    /// Issues the first certificate for `spec`. With `key_file`, the key is
    /// kept there (0600): reused across restarts when `rotationPolicy` is
    /// Never and the file holds a key of the configured algorithm.
    pub fn new(
        ca: Arc<InternalCa>,
        spec: &AutomaticTls,
        key_file: Option<PathBuf>,
        now: SystemTime,
    ) -> Result<CertManager, CaError> {
        let sans = SubjectAltNames::new(spec.san_dns.clone(), spec.san_ip.clone())?;
        let algorithm = spec.cert.private_key.algorithm;
        check_supported(algorithm)?;
        let kept = match (&key_file, spec.cert.private_key.rotation) {
            (Some(path), RotationPolicy::Never) if path.exists() => {
                let pem = String::from_utf8(files::read(path)?).unwrap_or_default();
                KeyPair::from_pem(&pem)
                    .ok()
                    .filter(|key| key_algorithm_of(key) == Some(algorithm))
            }
            _ => None,
        };
        let key = match kept {
            Some(key) => key,
            None => {
                let key = generate_key(algorithm)?;
                if let Some(path) = &key_file {
                    files::write_private(path, key.serialize_pem().as_bytes())?;
                }
                key
            }
        };
        let issued = ca.issue(&sans, &key, spec.cert.duration, now)?;
        let mut manager = CertManager::issued(ca, sans, spec.cert.clone(), key, &issued)?;
        manager.key_file = key_file;
        Ok(manager)
    }

    /// A manager of `issued` (just issued for `key`), listener kind.
    fn issued(
        ca: Arc<InternalCa>,
        sans: SubjectAltNames,
        policy: CertPolicy,
        key: KeyPair,
        issued: &Issued,
    ) -> Result<CertManager, CaError> {
        let cert = Arc::new(ReloadableCert::from_pem(
            &issued.chain_pem,
            &issued.key_pem,
        )?);
        Ok(CertManager {
            ca,
            sans,
            policy,
            key,
            key_file: None,
            not_after: issued.not_after,
            cert,
            node: false,
            jitter: Duration::ZERO,
        })
    }

    /// Issues cluster node `name`'s link certificate under `policy`
    /// (`advanced.internalCerts`); the key lives in memory only, a new one
    /// each start.
    pub fn new_node(
        ca: Arc<InternalCa>,
        name: &str,
        policy: &CertPolicy,
        now: SystemTime,
    ) -> Result<CertManager, CaError> {
        let sans = SubjectAltNames::new(vec![name.to_owned()], Vec::new())?;
        check_supported(policy.private_key.algorithm)?;
        let key = generate_key(policy.private_key.algorithm)?;
        let issued = ca.issue_node(&sans, &key, policy.duration, now)?;
        let mut manager = CertManager::issued(ca, sans, policy.clone(), key, &issued)?;
        manager.node = true;
        manager.jitter = renewal_jitter(policy.renew_before);
        Ok(manager)
    }

    /// The CA this manager issues under.
    pub fn ca(&self) -> Arc<InternalCa> {
        Arc::clone(&self.ca)
    }

    /// The listener's certificate, for [`crate::tls::server_config`].
    pub fn cert(&self) -> Arc<ReloadableCert> {
        Arc::clone(&self.cert)
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to call [`CertManager::renew`]: `renewBefore` ahead of notAfter.
    pub fn next_renewal(&self) -> SystemTime {
        self.not_after
            .checked_sub(self.policy.renew_before + self.jitter)
            .unwrap_or(UNIX_EPOCH)
    }

    /// Moves to the CA `ca` (a cluster CA rotation) and issues the
    /// certificate under it at once; on error the current CA and
    /// certificate stay.
    pub fn rebase(&mut self, ca: Arc<InternalCa>, now: SystemTime) -> Result<(), CaError> {
        let before = std::mem::replace(&mut self.ca, ca);
        let renewed = self.renew(now);
        if renewed.is_err() {
            self.ca = before;
        }
        renewed
    }

    /// Issues a new certificate valid from `now` and swaps it in; with
    /// `rotationPolicy: Always` under a new key. On error the current
    /// certificate stays (retry later).
    pub fn renew(&mut self, now: SystemTime) -> Result<(), CaError> {
        let new_key = match self.policy.private_key.rotation {
            RotationPolicy::Always => Some(generate_key(self.policy.private_key.algorithm)?),
            RotationPolicy::Never => None,
        };
        let key = new_key.as_ref().unwrap_or(&self.key);
        let issued = if self.node {
            self.ca
                .issue_node(&self.sans, key, self.policy.duration, now)?
        } else {
            self.ca.issue(&self.sans, key, self.policy.duration, now)?
        };
        self.cert.replace(&issued.chain_pem, &issued.key_pem)?;
        if let (Some(path), Some(_)) = (&self.key_file, &new_key) {
            files::write_private(path, issued.key_pem.as_bytes())?;
        }
        if let Some(key) = new_key {
            self.key = key;
        }
        self.not_after = issued.not_after;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_core::config::PrivateKeyPolicy;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn spec(algorithm: KeyAlgorithm, rotation: RotationPolicy) -> AutomaticTls {
        AutomaticTls {
            cert: CertPolicy {
                duration: Duration::from_secs(48 * 3600),
                renew_before: Duration::from_secs(16 * 3600),
                private_key: PrivateKeyPolicy {
                    algorithm,
                    rotation,
                },
            },
            san_dns: vec!["broker.local".into()],
            san_ip: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    /// Whether `leaf` chains to the CA certificate `ca` for `usage`, now.
    fn chains_to(
        leaf: &rustls_pki_types::CertificateDer<'_>,
        ca: &rustls_pki_types::CertificateDer<'_>,
        usage: webpki::KeyUsage,
    ) -> bool {
        let anchor = webpki::anchor_from_trusted_cert(ca).unwrap();
        let ee = webpki::EndEntityCert::try_from(leaf).unwrap();
        ee.verify_for_usage(
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::now(),
            usage,
            None,
            None,
        )
        .is_ok()
    }

    fn public_key_of(cert: &ReloadableCert) -> Vec<u8> {
        let current = cert.current();
        let (_, parsed) = X509Certificate::from_der(current.end_entity_cert().unwrap()).unwrap();
        parsed.public_key().raw.to_vec()
    }

    #[test]
    fn p521_and_rsa8192_are_rejected_with_the_reason_and_the_rest_accepted() {
        for algorithm in [KeyAlgorithm::Ec521, KeyAlgorithm::Rsa8192] {
            let err = check_supported(algorithm).unwrap_err().to_string();
            assert!(err.starts_with("privateKey.algorithm"), "{err}");
            assert!(err.contains("ring"), "{err}");
        }
        for algorithm in [
            KeyAlgorithm::Ec256,
            KeyAlgorithm::Ec384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa4096,
        ] {
            check_supported(algorithm).unwrap();
        }
    }

    #[test]
    fn issued_certificates_have_the_sans_lifetime_and_renewal_point() {
        let now = SystemTime::now();
        let ca = Arc::new(InternalCa::create(KeyAlgorithm::Ec256, now).unwrap());
        let manager = CertManager::new(
            ca.clone(),
            &spec(KeyAlgorithm::Ec256, RotationPolicy::Always),
            None,
            now,
        )
        .unwrap();
        let current = manager.cert().current();
        let (_, leaf) = X509Certificate::from_der(current.end_entity_cert().unwrap()).unwrap();
        let sans = leaf.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", sans.general_names);
        assert!(
            text.contains("broker.local") && text.contains("[127, 0, 0, 1]"),
            "{text}"
        );
        let lifetime = manager.not_after().duration_since(now).unwrap();
        assert!(
            lifetime <= Duration::from_secs(48 * 3600) && lifetime > Duration::from_secs(47 * 3600)
        );
        assert_eq!(
            manager.next_renewal(),
            manager.not_after() - Duration::from_secs(16 * 3600)
        );
        assert!(!leaf.is_ca());
    }

    #[test]
    fn rotation_always_changes_the_key_and_never_keeps_it() {
        let now = SystemTime::now();
        let ca = Arc::new(InternalCa::create(KeyAlgorithm::Ec256, now).unwrap());
        for (rotation, same_key) in [
            (RotationPolicy::Always, false),
            (RotationPolicy::Never, true),
        ] {
            let mut manager =
                CertManager::new(ca.clone(), &spec(KeyAlgorithm::Ec384, rotation), None, now)
                    .unwrap();
            let cert = manager.cert();
            let before = public_key_of(&cert);
            let first_serial = cert.current().end_entity_cert().unwrap().to_vec();
            let later = manager.next_renewal();
            manager.renew(later).unwrap();
            assert_eq!(public_key_of(&cert) == before, same_key, "{rotation:?}");
            assert_ne!(
                cert.current().end_entity_cert().unwrap().to_vec(),
                first_serial
            );
            assert!(manager.not_after() > later + Duration::from_secs(47 * 3600));
        }
    }

    #[test]
    fn the_ca_is_written_with_an_owner_only_key_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let leaf_lifetime = Duration::from_secs(48 * 3600);
        let (ca, origin) =
            InternalCa::load_or_create(dir.path(), KeyAlgorithm::Ed25519, leaf_lifetime, now)
                .unwrap();
        assert_eq!(origin, CaOrigin::Created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| {
                std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode(CA_KEY_FILE), 0o600);
            assert_eq!(mode(CA_CERT_FILE), 0o644);
        }
        let (again, origin) =
            InternalCa::load_or_create(dir.path(), KeyAlgorithm::Ed25519, leaf_lifetime, now)
                .unwrap();
        assert_eq!(origin, CaOrigin::Loaded);
        assert_eq!(again.cert_pem(), ca.cert_pem());

        // A leaf issued by the reloaded CA verifies against the CA file.
        let sans = SubjectAltNames::new(vec![], vec!["127.0.0.1".parse().unwrap()]).unwrap();
        let key = generate_key(KeyAlgorithm::Ec256).unwrap();
        let issued = again.issue(&sans, &key, leaf_lifetime, now).unwrap();
        let leaf = files::certs_from_pem(issued.chain_pem.as_bytes()).unwrap();
        let ca_der = files::certs_from_pem(
            std::fs::read(dir.path().join(CA_CERT_FILE))
                .unwrap()
                .as_slice(),
        )
        .unwrap();
        assert!(chains_to(
            &leaf[0],
            &ca_der[0],
            webpki::KeyUsage::server_auth()
        ));

        // A CA that would expire before one more leaf is replaced.
        let far = now + CA_LIFETIME;
        let (_, origin) =
            InternalCa::load_or_create(dir.path(), KeyAlgorithm::Ec256, leaf_lifetime, far)
                .unwrap();
        assert_eq!(origin, CaOrigin::Created);
    }

    #[test]
    fn a_rotation_bundle_loads_with_the_signing_ca_first_and_a_node_rebases_onto_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let now = SystemTime::now();
        let life = Duration::from_secs(3600);
        let (old, _) =
            InternalCa::load_or_create(a.path(), KeyAlgorithm::Ec256, life, now).unwrap();
        let a_pem = old.cert_pem().to_owned();
        let (new, _) =
            InternalCa::load_or_create(b.path(), KeyAlgorithm::Ec256, life, now).unwrap();
        let bundle = a.path().join("bundle.crt");
        let (old_key, new_key) = (a.path().join(CA_KEY_FILE), b.path().join(CA_KEY_FILE));
        std::fs::write(&bundle, format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
        InternalCa::load(&bundle, &old_key).unwrap();
        let err = InternalCa::load(&bundle, &new_key).unwrap_err().to_string();
        assert!(err.contains("first certificate"), "{err}");
        std::fs::write(&bundle, format!("{}{}", new.cert_pem(), old.cert_pem())).unwrap();
        let next = Arc::new(InternalCa::load(&bundle, &new_key).unwrap());
        let policy = spec(KeyAlgorithm::Ec256, RotationPolicy::Always).cert;
        let mut node = CertManager::new_node(Arc::new(old), "node-1", &policy, now).unwrap();
        node.rebase(next.clone(), now).unwrap();
        assert_eq!(node.ca().cert_pem(), next.cert_pem());
        // The new leaf chains to the new CA, not the old.
        let current = node.cert().current();
        let leaf = current.end_entity_cert().unwrap();
        let verifies = |ca: &str| {
            let der = files::certs_from_pem(ca.as_bytes()).unwrap();
            chains_to(leaf, &der[0], webpki::KeyUsage::client_auth())
        };
        assert!(verifies(next.cert_pem()));
        assert!(!verifies(a_pem.as_str()));
    }

    #[test]
    fn a_kept_key_survives_a_restart_with_rotation_never() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Arc::new(InternalCa::create(KeyAlgorithm::Ec256, now).unwrap());
        let key_file = dir.path().join("listener.key");
        let spec = spec(KeyAlgorithm::Ec256, RotationPolicy::Never);
        let first = CertManager::new(ca.clone(), &spec, Some(key_file.clone()), now).unwrap();
        let second = CertManager::new(ca.clone(), &spec, Some(key_file.clone()), now).unwrap();
        assert_eq!(public_key_of(&first.cert()), public_key_of(&second.cert()));
        let always = self::spec(KeyAlgorithm::Ec256, RotationPolicy::Always);
        let third = CertManager::new(ca, &always, Some(key_file), now).unwrap();
        assert_ne!(public_key_of(&first.cert()), public_key_of(&third.cert()));
    }

    #[test]
    fn no_sans_or_a_bad_dns_name_is_an_error() {
        let now = SystemTime::now();
        let ca = Arc::new(InternalCa::create(KeyAlgorithm::Ec256, now).unwrap());
        let mut no_sans = spec(KeyAlgorithm::Ec256, RotationPolicy::Always);
        no_sans.san_dns.clear();
        no_sans.san_ip.clear();
        assert!(matches!(
            CertManager::new(ca.clone(), &no_sans, None, now),
            Err(CaError::NoSubjectAltNames)
        ));
        let mut bad = spec(KeyAlgorithm::Ec256, RotationPolicy::Always);
        bad.san_dns = vec!["bröker".into()];
        assert!(matches!(
            CertManager::new(ca, &bad, None, now),
            Err(CaError::BadDnsName(_))
        ));
    }

    /// The one RSA test (key generation is slow in debug builds): an RSA
    /// 2048 leaf from the `rsa` crate signs TLS handshakes through ring.
    #[test]
    fn an_rsa2048_leaf_is_issued_and_usable_by_rustls() {
        let now = SystemTime::now();
        let ca = Arc::new(InternalCa::create(KeyAlgorithm::Ec256, now).unwrap());
        let manager = CertManager::new(
            ca,
            &spec(KeyAlgorithm::Rsa2048, RotationPolicy::Never),
            None,
            now,
        )
        .unwrap();
        let current = manager.cert().current();
        let (_, leaf) = X509Certificate::from_der(current.end_entity_cert().unwrap()).unwrap();
        assert_eq!(leaf.public_key().parsed().unwrap().key_size(), 2048);
        assert!(rustls::sign::SigningKey::choose_scheme(
            current.key.as_ref(),
            &[rustls::SignatureScheme::RSA_PSS_SHA256]
        )
        .is_some());
    }

    #[test]
    fn ed25519_ca_and_p384_ca_sign_leaves() {
        let now = SystemTime::now();
        for algorithm in [KeyAlgorithm::Ed25519, KeyAlgorithm::Ec384] {
            let ca = Arc::new(InternalCa::create(algorithm, now).unwrap());
            CertManager::new(
                ca,
                &spec(KeyAlgorithm::Ed25519, RotationPolicy::Always),
                None,
                now,
            )
            .unwrap();
        }
    }
}
