//! A connection's writer: drains what the shard has to send into one
//! buffer, one write per wake-up (TCP_NODELAY is set, so batching is ours),
//! and closes the socket once the shard has closed the connection and
//! everything queued is out (bounded: a peer that stops reading cannot hold
//! a closed connection open). The buffer is one of the shard's spares
//! (`buffers::IoBuffers`), taken when there is something to send and given
//! back once the writer is idle.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;

use super::handle::ConnHandle;
use crate::driver::Driver;
use crate::telemetry::counters::ListenerCounters;

/// Soft bound of one coalesced write. PERF: on a drain the kernel's send
/// path (copy, loopback transmit, the reader's wake-up) is half the shard's
/// time; 256 KiB writes take a quarter of the syscalls and wake-ups of 64 KiB
/// ones (docs/PERFORMANCE.md).
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Coalesced writes a writer may do before yielding to other tasks
/// (4 x 256 KiB: 1 MiB per turn).
const WRITE_BATCHES_PER_TURN: u32 = 4;
/// How long the writer keeps flushing after the connection closed.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run<W: AsyncWrite + Unpin>(driver: Rc<Driver>, handle: Rc<ConnHandle>, mut writer: W) {
    let id = handle.id;
    // Empty (no allocation) while idle; the shard's spare while sending.
    let mut buf = BytesMut::new();
    let mut batches = 0u32;
    // Set once the connection is closed while a session write holds it.
    let mut close_deadline: Option<Instant> = None;
    loop {
        loop {
            if buf.capacity() == 0 {
                buf = driver.buffers.take_write();
            }
            buf.clear();
            let n =
                driver.with(|s| s.poll_transmit(id, Instant::now(), &mut buf, WRITE_BATCH_BYTES));
            if n == 0 && buf.is_empty() {
                break;
            }
            let write = async { Some(writer.write_all(&buf).await) }
                .or(async {
                    if handle.is_closed() {
                        glommio::timer::sleep(CLOSE_FLUSH_TIMEOUT).await;
                        None
                    } else {
                        std::future::pending().await
                    }
                })
                .await;
            if !matches!(write, Some(Ok(()))) {
                // The peer is gone or stopped reading after the close.
                driver.buffers.give_write(buf);
                lost(&driver, &handle);
                return;
            }
            ListenerCounters::add(&handle.counters.bytes_out, buf.len() as u64);
            handle.drained.raise();
            // Output before input: a writer keeps the shard for up to
            // WRITE_BATCHES_PER_TURN batches while readers get one chunk
            // per turn, so delivery keeps up with intake.
            batches += 1;
            if batches.is_multiple_of(WRITE_BATCHES_PER_TURN) {
                futures_lite::future::yield_now().await;
            }
        }
        let _ = writer.flush().await;
        if handle.is_closed() {
            // A persisted session's end (or its CONNACK) waits for the disk:
            // the socket closes after it, so a client that waits for the
            // close knows its session's state is durable (bounded: a failing
            // disk does not hold sockets open).
            let deadline =
                *close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_FLUSH_TIMEOUT);
            if driver.peek(|s| s.is_held(id)) && Instant::now() < deadline {
                let wait = deadline.saturating_duration_since(Instant::now());
                let woken = async {
                    handle.wake.take().await;
                    true
                }
                .or(async {
                    glommio::timer::sleep(wait).await;
                    true
                })
                .await;
                if woken {
                    continue;
                }
            }
            driver.buffers.give_write(buf);
            let _ = writer.close().await;
            return;
        }
        // Idle: the buffer goes back to the shard (a drain's grown one is
        // dropped there).
        driver.buffers.give_write(std::mem::take(&mut buf));
        handle.wake.take().await;
    }
}

/// A write failed: the connection is lost (the shard keeps or ends its
/// session), and the reader stops.
fn lost(driver: &Rc<Driver>, handle: &ConnHandle) {
    driver.with(|s| s.handle_closed(handle.id, Instant::now()));
    handle.close();
}
