//! TLS for the links between cluster nodes (issue 17, docs/CLUSTER.md). Each
//! node presents a leaf the cluster's internal CA issued for both ends of a
//! link (`InternalCa::issue_node`). A peer is accepted only if its leaf
//! chains to one of the trusted internal roots, never a public one; both
//! roots are trusted while the CA rotates, and the roots can be replaced
//! while links run ([`NodeTrust`]). TLS 1.3 only, with no resumption.
//! This module builds the configs and names the peer; it opens no sockets.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::files;
use crate::tls::{provider, ReloadableCert, TlsError};

/// The internal roots a node trusts (PEM, one or more certificates: the
/// current CA, and the next one during a rotation).
pub fn trusted_roots(pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let certs = files::certs_from_pem(pem.as_bytes())
        .map_err(|p| TlsError::Config(format!("internal CA roots: {p}")))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("internal CA root: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The roots node links are checked against, replaceable while the node
/// runs (a CA rotation on SIGHUP): each handshake checks against the roots
/// in force when it verifies, and links already up carry on.
#[derive(Debug)]
pub struct NodeTrust {
    provider: Arc<CryptoProvider>,
    /// Swapped whole, as the listeners' client CA is (`x509::ClientCa`).
    current: ArcSwap<Verifiers>,
}

#[derive(Debug)]
struct Verifiers {
    roots: Arc<RootCertStore>,
    /// Checks a dialling node's leaf (clientAuth).
    clients: Arc<dyn ClientCertVerifier>,
    /// Checks a dialled node's leaf (serverAuth, the dialled name).
    servers: Arc<dyn ServerCertVerifier>,
}

impl NodeTrust {
    pub fn new(roots: Arc<RootCertStore>) -> Result<Arc<NodeTrust>, TlsError> {
        let provider = Arc::new(provider());
        let current = ArcSwap::from_pointee(Self::verifiers(&provider, roots)?);
        Ok(Arc::new(NodeTrust { provider, current }))
    }

    fn verifiers(
        provider: &Arc<CryptoProvider>,
        roots: Arc<RootCertStore>,
    ) -> Result<Verifiers, TlsError> {
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Verifiers {
            roots,
            clients,
            servers,
        })
    }

    /// Trusts `roots` from the next handshake on.
    pub fn replace(&self, roots: Arc<RootCertStore>) -> Result<(), TlsError> {
        let next = Self::verifiers(&self.provider, roots)?;
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// The roots in force.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.now().roots.clone()
    }

    fn now(&self) -> Guard<Arc<Verifiers>> {
        self.current.load()
    }
}

/// [`NodeTrust`] as the accepting end's client verifier.
#[derive(Debug)]
struct ChecksClients(Arc<NodeTrust>);

impl ClientCertVerifier for ChecksClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 4.2.4) and a node presents its one
        // leaf whatever they say; the roots can change under a borrow.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .now()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .now()
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .now()
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.now().clients.supported_verify_schemes()
    }
}

/// [`NodeTrust`] as the dialling end's server verifier.
#[derive(Debug)]
struct ChecksServers(Arc<NodeTrust>);

impl ServerCertVerifier for ChecksServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.now().servers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .now()
            .servers
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .now()
            .servers
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.now().servers.supported_verify_schemes()
    }
}

/// The accepting end of node links: a client certificate is required and
/// must chain to `trust`'s roots with clientAuth.
pub fn node_server_config(
    cert: Arc<ReloadableCert>,
    trust: &Arc<NodeTrust>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(trust.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ChecksClients(trust.clone())))
        .with_cert_resolver(cert);
    // A resumed session would skip the current roots after a CA rotation.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The connecting end: presents `cert` and checks the server's leaf against
/// `trust`'s roots and the node name it dials.
pub fn node_client_config(
    cert: Arc<ReloadableCert>,
    trust: &Arc<NodeTrust>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(trust.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChecksServers(trust.clone())))
        .with_client_cert_resolver(cert);
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The node name the peer's verified leaf carries (its first DNS name), to
/// tell which node connected. `None` before the handshake ends.
pub fn peer_node_name(conn: &CommonState) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let leaf: &CertificateDer<'_> = conn.peer_certificates()?.first()?;
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(name) => Some((*name).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{generate_key, InternalCa, SubjectAltNames};
    use crate::tls::tests::handshake;
    use shardmq_core::config::KeyAlgorithm;
    use std::io::{Read, Write};
    use std::time::{Duration, SystemTime};

    const HOUR: Duration = Duration::from_secs(3600);

    fn ca() -> InternalCa {
        InternalCa::create(KeyAlgorithm::Ec256, SystemTime::now()).unwrap()
    }

    fn node(ca: &InternalCa, name: &str) -> Arc<ReloadableCert> {
        let sans = SubjectAltNames::new(vec![name.to_owned()], vec![]).unwrap();
        let key = generate_key(KeyAlgorithm::Ec256).unwrap();
        let issued = ca.issue_node(&sans, &key, HOUR, SystemTime::now()).unwrap();
        Arc::new(ReloadableCert::from_pem(&issued.chain_pem, &issued.key_pem).unwrap())
    }

    fn link(
        client: &Arc<ReloadableCert>,
        server: &Arc<ReloadableCert>,
        roots: &str,
        name: &str,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        let trust = NodeTrust::new(trusted_roots(roots).unwrap()).unwrap();
        handshake(
            node_client_config(client.clone(), &trust).unwrap(),
            node_server_config(server.clone(), &trust).unwrap(),
            name,
        )
    }

    #[test]
    fn nodes_of_one_cluster_link_and_know_who_connected() {
        let ca = ca();
        let (n1, n2) = (node(&ca, "node-1"), node(&ca, "node-2"));
        let (c, s) = link(&n1, &n2, ca.cert_pem(), "node-2").unwrap();
        assert_eq!(peer_node_name(&s).as_deref(), Some("node-1"));
        assert_eq!(peer_node_name(&c).as_deref(), Some("node-2"));
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    }

    #[test]
    fn a_stranger_a_listener_certificate_or_a_wrong_name_is_refused() {
        let (ca, other) = (ca(), ca());
        let (n1, n2) = (node(&ca, "node-1"), node(&ca, "node-2"));
        let stranger = node(&other, "node-1");
        // Another cluster's node, on either end.
        assert!(link(&stranger, &n2, ca.cert_pem(), "node-2").is_err());
        assert!(link(&n1, &stranger, ca.cert_pem(), "node-1").is_err());
        // A listener certificate of the same CA (serverAuth only) cannot
        // pose as a node.
        let sans = SubjectAltNames::new(vec!["node-1".into()], vec![]).unwrap();
        let key = generate_key(KeyAlgorithm::Ec256).unwrap();
        let listener = ca.issue(&sans, &key, HOUR, SystemTime::now()).unwrap();
        let listener =
            Arc::new(ReloadableCert::from_pem(&listener.chain_pem, &listener.key_pem).unwrap());
        assert!(link(&listener, &n2, ca.cert_pem(), "node-2").is_err());
        // The dialled name must be the server's.
        assert!(link(&n1, &n2, ca.cert_pem(), "node-3").is_err());
        // No client certificate at all.
        let roots = trusted_roots(ca.cert_pem()).unwrap();
        let trust = NodeTrust::new(roots.clone()).unwrap();
        let anonymous = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let server = node_server_config(n2, &trust).unwrap();
        assert!(handshake(anonymous, server, "node-2").is_err());
    }

    #[test]
    fn a_renewed_certificate_serves_new_links_while_old_ones_carry_on() {
        let ca = ca();
        let (n1, n2) = (node(&ca, "node-1"), node(&ca, "node-2"));
        let (mut c, mut s) = link(&n1, &n2, ca.cert_pem(), "node-2").unwrap();
        let before = c.peer_certificates().unwrap()[0].clone();
        let sans = SubjectAltNames::new(vec!["node-2".into()], vec![]).unwrap();
        let key = generate_key(KeyAlgorithm::Ec256).unwrap();
        let renewed = ca.issue_node(&sans, &key, HOUR, SystemTime::now()).unwrap();
        n2.replace(&renewed.chain_pem, &renewed.key_pem).unwrap();
        // The established link still carries data, both ways.
        c.writer().write_all(b"route delta").unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut got = [0u8; 11];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"route delta");
        // A new link sees the renewed certificate.
        let (c2, _) = link(&n1, &n2, ca.cert_pem(), "node-2").unwrap();
        assert_ne!(c2.peer_certificates().unwrap()[0], before);
    }

    #[test]
    fn during_a_ca_rotation_old_and_new_leaves_link_both_ways() {
        let (old, new) = (ca(), ca());
        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        let (n1, n2) = (node(&old, "node-1"), node(&new, "node-2"));
        link(&n1, &n2, &both, "node-2").unwrap();
        link(&n2, &n1, &both, "node-1").unwrap();
        // Once the old root is dropped, a leaf it issued is refused.
        assert!(link(&n1, &n2, new.cert_pem(), "node-2").is_err());
    }

    #[test]
    fn roots_replaced_under_running_configs_take_effect_at_the_next_handshake() {
        let (old, new) = (ca(), ca());
        let (n1, n2) = (node(&old, "node-1"), node(&old, "node-2"));
        let trust = NodeTrust::new(trusted_roots(old.cert_pem()).unwrap()).unwrap();
        let client = node_client_config(n1.clone(), &trust).unwrap();
        let server = node_server_config(n2.clone(), &trust).unwrap();
        let (mut c, mut s) = handshake(client.clone(), server.clone(), "node-2").unwrap();
        // Step 1 of a rotation: both roots, then node 2's leaf from the new CA.
        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        trust.replace(trusted_roots(&both).unwrap()).unwrap();
        let sans = SubjectAltNames::new(vec!["node-2".into()], vec![]).unwrap();
        let issued = new
            .issue_node(
                &sans,
                &generate_key(KeyAlgorithm::Ec256).unwrap(),
                HOUR,
                SystemTime::now(),
            )
            .unwrap();
        n2.replace(&issued.chain_pem, &issued.key_pem).unwrap();
        handshake(client.clone(), server.clone(), "node-2").unwrap();
        // Only the new root: node 1's old leaf is refused by the same
        // configs, while the link made before still carries data.
        trust
            .replace(trusted_roots(new.cert_pem()).unwrap())
            .unwrap();
        assert_eq!(trust.roots().len(), 1);
        assert!(handshake(client, server, "node-2").is_err());
        c.writer().write_all(b"still up").unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut got = [0u8; 8];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still up");
    }
}
