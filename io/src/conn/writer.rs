//! A connection's writer: what the shard has to send, one coalesced write
//! per wake-up (TCP_NODELAY is set, so batching is ours), and the socket's
//! close once the shard has closed the connection and everything queued is
//! out (bounded: a peer that stops reading cannot hold a closed connection
//! open). While the writer task is idle its stream waits in the handle
//! (`WriteSlot`), and the driver writes through it at once (`write_now`);
//! the task runs only for what that could not finish.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
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

type Stream = Box<dyn AsyncWrite + Unpin>;

/// A connection's write half, and what a direct write left unsent.
#[derive(Default)]
pub struct WriteSlot {
    /// The stream while the writer task is idle; `None` while it writes.
    stream: RefCell<Option<Stream>>,
    /// Bytes `write_now` took from the shard and the socket did not take:
    /// the writer task sends them before anything else.
    unsent: RefCell<BytesMut>,
    /// A direct write failed: the connection is lost. Its bytes are not
    /// written again (a TLS stream may have taken them before the error).
    failed: Cell<bool>,
}

impl WriteSlot {
    /// The connection's write half, before its writer task starts.
    pub fn set(&self, stream: impl AsyncWrite + Unpin + 'static) {
        *self.stream.borrow_mut() = Some(Box::new(stream));
    }
}

impl std::fmt::Debug for WriteSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSlot")
            .field(
                "idle",
                &matches!(self.stream.try_borrow(), Ok(s) if s.is_some()),
            )
            .finish_non_exhaustive()
    }
}

/// Sends what the shard has for `handle` now, from the caller's turn,
/// when the writer task is idle: one write, no task woken. PERF: at
/// moderate load a PUBLISH made two writer tasks run (the PUBACK's and the
/// subscriber's), each a wake-up, a trip through the task queue and a poll
/// of cold state (docs/PERFORMANCE.md, "Writes from the turn that produced
/// them"). Only `Driver::flush` calls it, and only when the input behind
/// it had to wait for its socket and no other task is ready.
/// False when the writer task must run: it is busy (its batches keep their
/// order), the connection is closing, a batch was full, the socket took
/// less than all of it (the rest waits in the slot, sent first) or the
/// write failed (the writer task reports the connection lost).
pub fn write_now(driver: &Driver, handle: &ConnHandle) -> bool {
    let slot = &handle.write;
    if handle.is_closed() || slot.failed.get() || !slot.unsent.borrow().is_empty() {
        return false;
    }
    let Ok(mut stream) = slot.stream.try_borrow_mut() else {
        return false;
    };
    let Some(stream) = stream.as_mut() else {
        return false;
    };
    let mut buf = driver.buffers.take_write();
    // Not `Driver::with`: this runs inside the driver's `flush`, which acts
    // on what the transmit causes (a nested flush could recurse once per
    // connection woken).
    driver.transmit_in_flush(handle.id, &mut buf, WRITE_BATCH_BYTES);
    if buf.is_empty() {
        driver.buffers.give_write(buf);
        return true;
    }
    let full = buf.len() >= WRITE_BATCH_BYTES;
    // A waker that does nothing: a write that would block leaves the rest
    // to the writer task, which polls again with its own.
    let mut cx = Context::from_waker(Waker::noop());
    let mut sent = 0;
    while sent < buf.len() {
        match Pin::new(&mut **stream).poll_write(&mut cx, &buf[sent..]) {
            Poll::Ready(Ok(n)) if n > 0 => sent += n,
            Poll::Pending => break,
            // The writer task reports it (`lost`): one place decides that
            // a connection is lost, and it may not be done from here.
            Poll::Ready(_) => {
                slot.failed.set(true);
                break;
            }
        }
    }
    if sent > 0 {
        ListenerCounters::add(&handle.counters.bytes_out, sent as u64);
        handle.drained.raise();
    }
    if slot.failed.get() {
        driver.buffers.give_write(buf);
        return false;
    }
    if sent < buf.len() {
        buf.advance(sent);
        *slot.unsent.borrow_mut() = buf;
        return false;
    }
    driver.buffers.give_write(buf);
    // A TLS stream may hold records the socket did not take yet.
    let flushed = matches!(
        Pin::new(&mut **stream).poll_flush(&mut cx),
        Poll::Ready(Ok(()))
    );
    flushed && !full
}

pub async fn run(driver: Rc<Driver>, handle: Rc<ConnHandle>) {
    let mut batches = 0u32;
    // Set once the connection is closed while a session write holds it.
    let mut close_deadline: Option<Instant> = None;
    loop {
        let Some(mut writer) = handle.write.stream.borrow_mut().take() else {
            // Only this task takes the stream, and it puts it back before
            // every wait.
            debug_assert!(false, "a connection's writer has no stream");
            return;
        };
        if handle.write.failed.get() {
            lost(&driver, &handle);
            return;
        }
        // What a direct write left, else one of the shard's spares when
        // there is something to send; empty (no allocation) while idle.
        let mut buf = std::mem::take(&mut *handle.write.unsent.borrow_mut());
        loop {
            if buf.is_empty() {
                if buf.capacity() == 0 {
                    buf = driver.buffers.take_write();
                }
                let n = driver.with(|s| {
                    s.poll_transmit(handle.id, Instant::now(), &mut buf, WRITE_BATCH_BYTES)
                });
                if n == 0 && buf.is_empty() {
                    break;
                }
            }
            let write = async { Some(writer.write_all(&buf).await) }
                .or(async {
                    // `close` raises `wake` too: a write blocked on a peer
                    // that stopped reading must see the close and give up
                    // CLOSE_FLUSH_TIMEOUT after it (a peer that acknowledges
                    // zero-window probes forever held its connection, fd and
                    // buffers when this looked at the close only once).
                    // Taking `wake` here loses nothing: after each write
                    // the loop asks the shard for more before it idles.
                    while !handle.is_closed() {
                        handle.wake.take().await;
                    }
                    glommio::timer::sleep(CLOSE_FLUSH_TIMEOUT).await;
                    None
                })
                .await;
            if !matches!(write, Some(Ok(()))) {
                // The peer is gone or stopped reading after the close.
                driver.buffers.give_write(buf);
                lost(&driver, &handle);
                return;
            }
            ListenerCounters::add(&handle.counters.bytes_out, buf.len() as u64);
            buf.clear();
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
        // The buffer goes back to the shard (a drain's grown one is dropped
        // there).
        driver.buffers.give_write(buf);
        if handle.is_closed() {
            // A persisted session's end (or its CONNACK) waits for the disk:
            // the socket closes after it, so a client that waits for the
            // close knows its session's state is durable (bounded: a failing
            // disk does not hold sockets open).
            let deadline =
                *close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_FLUSH_TIMEOUT);
            if driver.peek(|s| s.is_held(handle.id)) && Instant::now() < deadline {
                // Closed: `write_now` does not write, so the stream may wait
                // in the slot for the next round.
                *handle.write.stream.borrow_mut() = Some(writer);
                let wait = deadline.saturating_duration_since(Instant::now());
                async { handle.wake.take().await }
                    .or(glommio::timer::sleep(wait))
                    .await;
                continue;
            }
            let _ = writer.close().await;
            return;
        }
        // Idle: the stream goes back to the slot for `write_now`.
        *handle.write.stream.borrow_mut() = Some(writer);
        handle.wake.take().await;
    }
}

/// A write failed: the connection is lost (the shard keeps or ends its
/// session), and the reader stops.
fn lost(driver: &Rc<Driver>, handle: &ConnHandle) {
    driver.with(|s| s.handle_closed(handle.id, Instant::now()));
    handle.close();
}
