//! Accepting clients on one shard: every listener port this shard serves is
//! bound here (SO_REUSEPORT: the kernel spreads connections over the shards
//! and a connection stays where it was accepted; SO_REUSEADDR: a restart
//! does not wait for TIME_WAIT), and each accepted stream
//! gets its TLS handshake (with a deadline) before the connection is served.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
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
use crate::setup::{ListenerSpec, ServerError};

/// Pending connections the kernel queues per listening socket (per shard).
const LISTEN_BACKLOG: i32 = 1024;
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
        let listener = listen(l.addr).map_err(|source| ServerError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        })?;
        bound.push((
            l.name.clone(),
            l.addr,
            listener,
            Rc::new(l.security.clone()),
        ));
    }
    Ok(bound)
}

/// A listening socket with SO_REUSEPORT (every shard binds the port) and
/// SO_REUSEADDR: without it the connections a stopped broker left in
/// TIME_WAIT refuse a restart for a minute (glommio's own `bind` sets only
/// SO_REUSEPORT). Another live broker on the port is still refused, by the
/// probe in `server::reserve_ports`.
pub(crate) fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket this function just
    // created and gave up ownership of (`into_raw_fd`); glommio's listener
    // takes it over and closes it when dropped.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(listener)
}

/// A listener's security as its accept loop reads it: a reload swaps the
/// inner `Rc` for the handshakes and CONNECTs that follow.
pub type SecurityCell = Rc<RefCell<Rc<ListenerSecurity>>>;

/// First pause after a failed accept; doubles up to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one "accept failed" line per listener and shard this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts on one listener until cancelled. Past the file-descriptor limit
/// (EMFILE/ENFILE) a connection cannot be accepted and would wait in the
/// kernel's queue without a CONNACK: the loop gives back a spare descriptor
/// to accept it and close it at once (the client sees the close and can
/// retry elsewhere or later), backs off, and says so once per interval.
pub fn accept_loop(
    driver: Rc<Driver>,
    name: String,
    listener: TcpListener,
    security: SecurityCell,
) -> Task<()> {
    glommio::spawn_local(async move {
        let mut spare = std::fs::File::open("/dev/null").ok();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut failed = AcceptFailures::default();
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    backoff = ACCEPT_BACKOFF_MIN;
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
                    driver.accept_failures.set(driver.accept_failures.get() + 1);
                    let out_of_fds = matches!(e.raw_os_error(), Some(EMFILE | ENFILE));
                    let mut shed = false;
                    if out_of_fds {
                        if let Some(fd) = spare.take() {
                            drop(fd);
                            if let Ok(stream) = listener.accept().await {
                                drop(stream);
                                driver.shed.set(driver.shed.get() + 1);
                                shed = true;
                            }
                            spare = std::fs::File::open("/dev/null").ok();
                        }
                    }
                    failed.note(&driver, &name, &e.to_string(), out_of_fds);
                    // A client told and gone is progress: the next one in the
                    // queue gets the same promptly. Otherwise back off.
                    if shed {
                        backoff = ACCEPT_BACKOFF_MIN;
                    } else {
                        glommio::timer::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                }
            }
        }
    })
}

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Failed accepts since the last line about them.
#[derive(Debug, Default)]
struct AcceptFailures {
    since_line: u64,
    last_line: Option<std::time::Instant>,
}

impl AcceptFailures {
    fn note(&mut self, driver: &Driver, listener: &str, error: &str, out_of_fds: bool) {
        self.since_line += 1;
        let now = std::time::Instant::now();
        if self
            .last_line
            .is_some_and(|at| now.duration_since(at) < ACCEPT_LOG_EVERY)
        {
            return;
        }
        let hint = if out_of_fds {
            "out of file descriptors: raise LimitNOFILE= (systemd) or `ulimit -n`; \
             new clients are closed at once until some disconnect"
        } else {
            "existing clients are served; accepting again after a pause"
        };
        warn!(
            shard = driver.id.index(),
            %listener,
            failed = self.since_line,
            every_s = ACCEPT_LOG_EVERY.as_secs(),
            error,
            "accept failed: {hint}"
        );
        self.since_line = 0;
        self.last_line = Some(now);
    }
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
    // Boxed: the handshake's and the TLS stream's state is about 4 KB, and
    // inline it would be in every connection's task, plain TCP too.
    Box::pin(accept_tls(driver, stream, listener, peer, security, tls)).await;
}

/// The handshake (bounded by `HANDSHAKE_TIMEOUT`), then the connection over
/// TLS; a failed handshake is counted and logged.
async fn accept_tls(
    driver: Rc<Driver>,
    stream: glommio::net::TcpStream,
    listener: String,
    peer: String,
    security: Rc<ListenerSecurity>,
    tls: Arc<rustls::ServerConfig>,
) {
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
