//! The operator's HTTP port (`diagnostics.metrics`): `/metrics` (Prometheus
//! text), `/healthz` (the process answers) and `/readyz` (every shard ticks
//! and every listener is bound). Plain std::net threads, no async runtime:
//! nothing here runs on a shard. Bounded in every way a stranger could push:
//! request size, concurrent connections, time per connection; garbage gets
//! a 400 and a closed socket, never a panic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::render::{render, Scrape};
use super::Telemetry;

/// Bytes of request head read at most; a longer one is refused.
const REQUEST_MAX: usize = 8 * 1024;
/// Connections served at once; more are answered 503 and closed.
const CONNECTIONS_MAX: usize = 8;
/// Time a client gets to send its request and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                if busy.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = respond(&stream, 503, "text/plain", "busy\n", false);
                    continue;
                }
                let telemetry = telemetry.clone();
                let done = busy.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        handle(stream, &telemetry);
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|source| HttpError { addr, source })?;
    info!(addr = %bound, "metrics and health endpoint: /metrics /healthz /readyz");
    Ok(MetricsServer { addr: bound, stop })
}

/// One request, one answer, then close (no keep-alive: nothing to bound).
fn handle(mut stream: TcpStream, telemetry: &Telemetry) {
    let Some(head) = read_head(&mut stream) else {
        let _ = respond(&stream, 400, "text/plain", "bad request\n", false);
        return;
    };
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let _ = respond(&stream, 405, "text/plain", "GET or HEAD\n", head_only);
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
            )
        }
        "/healthz" => respond(&stream, 200, "text/plain", "ok\n", head_only),
        "/readyz" => match telemetry.readiness(now) {
            Ok(()) => respond(&stream, 200, "text/plain", "ready\n", head_only),
            Err(problems) => {
                let body = format!("not ready:\n{}\n", problems.join("\n"));
                respond(&stream, 503, "text/plain", &body, head_only)
            }
        },
        _ => respond(
            &stream,
            404,
            "text/plain",
            "not found: /metrics /healthz /readyz\n",
            head_only,
        ),
    };
    if let Err(e) = result {
        warn!(error = %e, "metrics endpoint: answer not sent");
    }
}

/// Reads up to the blank line that ends the head; `None` for a head that
/// is too long, not text, or cut off.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn respond(
    mut stream: &TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
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
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
