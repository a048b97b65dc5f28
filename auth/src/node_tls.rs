//! TLS for the links between cluster nodes (issue 17, docs/CLUSTER.md). Each
//! node presents a leaf the cluster's internal CA issued for both ends of a
//! link (`InternalCa::issue_node`). A peer is accepted only if its leaf
//! chains to one of the trusted internal roots, never a public one; both
//! roots are trusted while the CA rotates. TLS 1.3 only, with no resumption.
//! This module builds the configs and names the peer; it opens no sockets.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};

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

/// The accepting end of node links: a client certificate is required and
/// must chain to `roots` with clientAuth.
pub fn node_server_config(
    cert: Arc<ReloadableCert>,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    // A resumed session would skip the current roots after a CA rotation.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The connecting end: presents `cert` and checks the server's leaf against
/// `roots` and the node name it dials.
pub fn node_client_config(
    cert: Arc<ReloadableCert>,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
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
        let roots = trusted_roots(roots).unwrap();
        handshake(
            node_client_config(client.clone(), roots.clone()).unwrap(),
            node_server_config(server.clone(), roots).unwrap(),
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
        let anonymous = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let server = node_server_config(n2, roots).unwrap();
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
}
