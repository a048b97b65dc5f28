//! One client connection on its shard: a reader task (bytes in, the shard
//! decodes and acts) and a writer task (what the shard has to send, one
//! coalesced write per wake-up, for what a direct write from the turn that
//! produced it, `write_now`, could not send). Keep-alive and CONNECT
//! deadlines are the shard's (`handle_tick`), not a task per connection. An
//! error closes this connection only.

pub mod admit;
pub mod buffers;
pub mod handle;
mod reader;
mod signal;
mod writer;

pub use writer::write_now;

use std::rc::Rc;
use std::time::Instant;

use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls_pki_types::CertificateDer;
use tracing::debug;

use crate::driver::Driver;
use crate::security::ListenerSecurity;
use crate::telemetry::counters::ListenerCounters;
use handle::ConnHandle;

/// Serves one accepted connection until it closes. `peer_certs` is the
/// client's TLS certificate chain (leaf first), empty without one.
pub async fn serve<S>(
    driver: Rc<Driver>,
    stream: S,
    listener: String,
    peer: String,
    security: Rc<ListenerSecurity>,
    peer_certs: Vec<CertificateDer<'static>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let id = driver.with(|s| s.accept(Instant::now()));
    let counters = driver.listener_counters(&listener);
    ListenerCounters::add(&counters.accepted, 1);
    let handle = Rc::new(ConnHandle::new(
        id, listener, peer, security, counters, peer_certs,
    ));
    driver.register(id, handle.clone());
    let (read_half, write_half) = futures_lite::io::split(stream);
    handle.write.set(write_half);
    let writer = glommio::spawn_local(writer::run(driver.clone(), handle.clone()));
    reader::run(&driver, &handle, read_half).await;
    writer.await;
    driver.with(|s| s.release(id));
    driver.unregister(id);
    ListenerCounters::add(&handle.counters.closed, 1);
    debug!(peer = %handle.peer, conn = %id, "connection closed");
}
