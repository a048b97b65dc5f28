//! The byte stream under a client: plain TCP (TCP_NODELAY on) or TLS over it
//! (tokio-rustls, ring provider). Owns connecting and the TLS handshake;
//! knows nothing about MQTT.

use std::fs::File;
use std::io::BufReader;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::spec::TlsSpec;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no certificate in PEM file")]
    NoCertificate { path: String },
    #[error("{path}: no private key in PEM file")]
    NoKey { path: String },
    #[error("--tls-cert and --tls-key go together")]
    CertWithoutKey,
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS config: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
}

/// A ready TLS client setup: connector plus the name to verify.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn read_pem(path: &std::path::Path) -> Result<BufReader<File>, TlsSetupError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsSetupError::Read {
            path: path.display().to_string(),
            source,
        })
}

impl Tls {
    pub fn new(spec: &TlsSpec, host: &str) -> Result<Tls, TlsSetupError> {
        let ca_path = spec.ca_file.display().to_string();
        let mut roots = RootCertStore::empty();
        let mut found = false;
        for cert in rustls_pemfile::certs(&mut read_pem(&spec.ca_file)?) {
            let cert = cert.map_err(|source| TlsSetupError::Read {
                path: ca_path.clone(),
                source,
            })?;
            roots.add(cert)?;
            found = true;
        }
        if !found {
            return Err(TlsSetupError::NoCertificate { path: ca_path });
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match (&spec.cert_file, &spec.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let cert_path = cert.display().to_string();
                let certs = rustls_pemfile::certs(&mut read_pem(cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| TlsSetupError::Read {
                        path: cert_path.clone(),
                        source,
                    })?;
                if certs.is_empty() {
                    return Err(TlsSetupError::NoCertificate { path: cert_path });
                }
                let key_path = key.display().to_string();
                let key = rustls_pemfile::private_key(&mut read_pem(key)?)
                    .map_err(|source| TlsSetupError::Read {
                        path: key_path.clone(),
                        source,
                    })?
                    .ok_or(TlsSetupError::NoKey { path: key_path })?;
                builder.with_client_auth_cert(certs, key)?
            }
            _ => return Err(TlsSetupError::CertWithoutKey),
        };
        let name = spec.server_name.clone().unwrap_or_else(|| host.to_owned());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsSetupError::ServerName(name))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<Transport> {
        let stream = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        Ok(Transport::Tls(Box::new(stream)))
    }
}

#[derive(Debug)]
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
