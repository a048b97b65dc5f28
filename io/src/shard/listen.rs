//! Accepting clients on one shard: every listener port this shard serves is
//! bound here (SO_REUSEPORT: the kernel spreads connections over the shards
//! and a connection stays where it was accepted), and each accepted stream
//! gets its TLS handshake (with a deadline) before the connection is served.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::net::TcpListener;
use glommio::Task;
use tracing::warn;

use crate::client_log;
use crate::oplog::Category;
use crate::telemetry::counters::{tls_cause, ListenerCounters};

use crate::conn;
use crate::driver::Driver;
use crate::security::{ListenerSecurity, HANDSHAKE_TIMEOUT};
use crate::server::{ListenerSpec, ServerError};

/// A port bound on this shard: name, address, socket, security.
pub type Bound = (
    String,
    std::net::SocketAddr,
    TcpListener,
    Rc<ListenerSecurity>,
);

/// Binds every listener that runs on `shard`.
pub fn bind(shard: usize, listeners: &[ListenerSpec]) -> Result<Vec<Bound>, ServerError> {
    let mut bound = Vec::new();
    for l in listeners
        .iter()
        .filter(|l| l.shards.as_ref().is_none_or(|s| s.contains(&shard)))
    {
        match TcpListener::bind(l.addr) {
            Ok(listener) => bound.push((
                l.name.clone(),
                l.addr,
                listener,
                Rc::new(l.security.clone()),
            )),
            Err(e) => {
                return Err(ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.addr,
                    source: std::io::Error::other(e.to_string()),
                })
            }
        }
    }
    Ok(bound)
}

/// A listener's security as its accept loop reads it: a reload swaps the
/// inner `Rc` for the handshakes and CONNECTs that follow.
pub type SecurityCell = Rc<RefCell<Rc<ListenerSecurity>>>;

/// Accepts on one listener until cancelled.
pub fn accept_loop(
    driver: Rc<Driver>,
    name: String,
    listener: TcpListener,
    security: SecurityCell,
) -> Task<()> {
    glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let security = security.borrow().clone();
                    let _ = stream.set_nodelay(true);
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    glommio::spawn_local(accept_one(
                        driver.clone(),
                        stream,
                        name.clone(),
                        peer,
                        security.clone(),
                    ))
                    .detach();
                }
                Err(e) => {
                    // EMFILE and friends: keep serving existing clients.
                    warn!(shard = driver.id.index(), listener = %name, error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// Runs the TLS handshake if the port has TLS (with a deadline, so a client
/// that stalls or sends garbage costs only its own connection), then serves.
async fn accept_one(
    driver: Rc<Driver>,
    stream: glommio::net::TcpStream,
    listener: String,
    peer: String,
    security: Rc<ListenerSecurity>,
) {
    let Some(tls) = security.tls.clone() else {
        return conn::serve(driver, stream, listener, peer, security, Vec::new()).await;
    };
    let counters = driver.listener_counters(&listener);
    let acceptor = futures_rustls::TlsAcceptor::from(tls);
    let handshake = async { Some(acceptor.accept(stream).await) }
        .or(async {
            glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
            None
        })
        .await;
    match handshake {
        Some(Ok(tls_stream)) => {
            let certs = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            conn::serve(driver, tls_stream, listener, peer, security, certs).await;
        }
        Some(Err(e)) => {
            // Expired or unknown client certificates, clients that send
            // none, clients that distrust ours: all end here.
            let principal =
                shardmq_auth::x509::take_rejected_subject().unwrap_or_else(|| "unknown".to_owned());
            ListenerCounters::bump(&counters.tls_failed, tls_cause(&format!("{e:?} {e}")));
            client_log!(
                Category::TlsFailures,
                listener = %listener,
                %peer,
                principal = ?principal,
                error = ?e.to_string(),
                "TLS handshake failed"
            );
        }
        None => {
            ListenerCounters::bump(&counters.tls_failed, "timeout");
            client_log!(
                Category::TlsFailures,
                listener = %listener,
                %peer,
                timeout_s = HANDSHAKE_TIMEOUT.as_secs(),
                "TLS handshake timed out"
            )
        }
    }
}
