//! The operator's HTTP port (`diagnostics.metrics`): `/metrics` (Prometheus
//! text), `/healthz` (the process answers) and `/readyz` (every shard ticks
//! and every listener is bound). Plain std::net threads, no async runtime:
//! nothing here runs on a shard. Bounded in every way a stranger could push:
//! request size, concurrent connections, time per connection; garbage gets
//! a 400 and a closed socket, never a panic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::render::{render, Scrape};
use super::Telemetry;

/// Bytes of request head read at most; a longer one is refused.
const REQUEST_MAX: usize = 8 * 1024;
/// Connections served at once; more are answered 503 and closed.
const CONNECTIONS_MAX: usize = 8;
/// Connections served at once from one address: one peer cannot take
/// every slot and turn the health probes' answers into 503s.
const CONNECTIONS_PER_PEER_MAX: usize = CONNECTIONS_MAX / 2;
/// Time a client gets, in all, to send its request and to read the
/// answer: a client that trickles a byte per read timeout cannot hold a
/// slot for longer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("diagnostics.metrics: cannot listen on {addr}: {source}")]
pub struct HttpError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The running endpoint; dropping it does not stop it (the process does).
#[derive(Debug)]
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl MetricsServer {
    /// Stops accepting (the accept thread notices at its next connection).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// Binds `addr` and serves from a thread of its own.
pub fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<MetricsServer, HttpError> {
    let listener = TcpListener::bind(addr).map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicUsize::new(0));
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let stopping = stop.clone();
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else {
                    // EMFILE and friends: the broker matters more.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let deadline = Instant::now() + EXCHANGE_TIMEOUT;
                let _ = stream.set_read_timeout(Some(EXCHANGE_TIMEOUT));
                let _ = stream.set_write_timeout(Some(EXCHANGE_TIMEOUT));
                let Some(slot) = Slot::take(&busy, &peers, &stream) else {
                    let _ = respond(&stream, 503, "text/plain", "busy\n", false, deadline);
                    continue;
                };
                let telemetry = telemetry.clone();
                // A thread that cannot start drops the closure, and with it
                // the slot.
                let _ = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        handle(stream, &telemetry, deadline);
                        drop(slot);
                    });
            }
        })
        .map_err(|source| HttpError { addr, source })?;
    info!(addr = %bound, "metrics and health endpoint: /metrics /healthz /readyz");
    Ok(MetricsServer { addr: bound, stop })
}

/// One of the served connections, counted overall and per peer address
/// until dropped.
struct Slot {
    busy: Arc<AtomicUsize>,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: Option<IpAddr>,
}

impl Slot {
    /// `None` when every slot, or this peer's share of them, is taken.
    fn take(
        busy: &Arc<AtomicUsize>,
        peers: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        stream: &TcpStream,
    ) -> Option<Slot> {
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        if let Some(ip) = peer {
            let mut peers = peers.lock().unwrap_or_else(|e| e.into_inner());
            let n = peers.entry(ip).or_default();
            if *n >= CONNECTIONS_PER_PEER_MAX {
                return None;
            }
            *n += 1;
        }
        let slot = Slot {
            busy: busy.clone(),
            peers: peers.clone(),
            peer,
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            return None; // dropping `slot` gives both counts back
        }
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.peer {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = peers.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&ip);
                }
            }
        }
    }
}

/// One request, one answer, then close (no keep-alive: nothing to bound),
/// all of it before `deadline`.
fn handle(mut stream: TcpStream, telemetry: &Telemetry, deadline: Instant) {
    let Some(head) = read_head(&mut stream, deadline) else {
        let _ = respond(&stream, 400, "text/plain", "bad request\n", false, deadline);
        return;
    };
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(
            &stream,
            405,
            "text/plain",
            "GET or HEAD\n",
            head_only,
            deadline,
        );
        return;
    }
    let path = target.split('?').next().unwrap_or("");
    let now = Instant::now();
    let result = match path {
        "/metrics" => {
            let text = render(&Scrape::gather(telemetry, now));
            respond(
                &stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
                head_only,
                deadline,
            )
        }
        "/healthz" => respond(&stream, 200, "text/plain", "ok\n", head_only, deadline),
        "/readyz" => match telemetry.readiness(now) {
            Ok(()) => respond(&stream, 200, "text/plain", "ready\n", head_only, deadline),
            Err(problems) => {
                let body = format!("not ready:\n{}\n", problems.join("\n"));
                respond(&stream, 503, "text/plain", &body, head_only, deadline)
            }
        },
        _ => respond(
            &stream,
            404,
            "text/plain",
            "not found: /metrics /healthz /readyz\n",
            head_only,
            deadline,
        ),
    };
    if let Err(e) = result {
        warn!(error = %e, "metrics endpoint: answer not sent");
    }
}

/// Reads up to the blank line that ends the head; `None` for a head that
/// is too long, not text, cut off, or not complete by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        stream.set_read_timeout(Some(left(deadline)?)).ok()?;
        // A read with a timeout is never restarted after a signal, even
        // under SA_RESTART, nor after a stop and continue (signal(7));
        // neither is the client's fault.
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other.ok()?,
        };
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            buf.truncate(end);
            return String::from_utf8(buf).ok();
        }
        if buf.len() > REQUEST_MAX {
            return None;
        }
    }
}

/// The time left before `deadline`; `None` once it has passed (a socket
/// timeout of zero would mean none at all).
fn left(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

/// `write_all`, but done by `deadline`: a client that reads a byte at a
/// time cannot hold the connection past it.
fn write_by(stream: &TcpStream, mut data: &[u8], deadline: Instant) -> std::io::Result<()> {
    let late = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut stream = stream;
    while !data.is_empty() {
        stream.set_write_timeout(Some(left(deadline).ok_or_else(late)?))?;
        match stream.write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn respond(
    stream: &TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
    deadline: Instant,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write_by(stream, head.as_bytes(), deadline)?;
    if !head_only {
        write_by(stream, body.as_bytes(), deadline)?;
    }
    Ok(())
}
