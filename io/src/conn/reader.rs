//! A connection's reader: socket bytes into the shard (`handle_input`),
//! pausing while the client's acknowledgements pile up unread or the mesh
//! to other shards is backed up (that is how a publisher is pushed back,
//! never by dropping its messages).

use std::rc::Rc;
use std::time::Instant;

use futures_lite::io::{AsyncRead, AsyncReadExt};
use futures_lite::FutureExt;
use shardmq_core::broker::Flow;

use super::handle::ConnHandle;
use crate::driver::Driver;
use crate::telemetry::counters::ListenerCounters;

/// Bytes read per socket read; frames larger than this are assembled over
/// several reads (in the shard's inbox for the connection), bounded by the
/// maximum packet size (a small one until CONNECT is accepted) and the
/// shard's budget for partial packets.
const READ_CHUNK: usize = 16 * 1024;

pub async fn run<R: AsyncRead + Unpin>(
    driver: &Rc<Driver>,
    handle: &Rc<ConnHandle>,
    mut reader: R,
) {
    let id = handle.id;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut flow = Flow::Read;
    loop {
        match flow {
            Flow::Stop => break,
            Flow::Read => {}
            Flow::WaitForWriter => {
                handle.wake();
                if !until_closed(handle, async {
                    handle.drained.take().await;
                })
                .await
                {
                    break;
                }
                flow = driver.peek(|s| s.flow(id));
                continue;
            }
            Flow::WaitForMesh => {
                let room = driver.wait_for_mesh();
                if !until_closed(handle, async {
                    let _ = room.recv().await;
                })
                .await
                {
                    break;
                }
                flow = driver.peek(|s| s.flow(id));
                continue;
            }
        }
        let read = async { Some(read_noting_wait(&mut reader, &mut chunk).await) }
            .or(async {
                handle.closed.raised().await;
                None
            })
            .await;
        let Some((read, waited)) = read else {
            break;
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => {
                // EOF or a socket error: the connection is lost.
                driver.with(|s| s.handle_closed(id, Instant::now()));
                break;
            }
        };
        ListenerCounters::add(&handle.counters.bytes_in, n as u64);
        // Fairness: a glommio read completes without yielding while the
        // socket has data (and a TLS read while a record is buffered), so a
        // busy publisher would otherwise keep the shard and starve every
        // other task (subscribers' writers first). A read that had to wait
        // was woken by the reactor and so already let the others run.
        // PERF: at moderate load every read waits; the extra trip through
        // the task queue was one task switch per message.
        if !waited {
            futures_lite::future::yield_now().await;
        }
        flow = driver.with(|s| s.handle_input(id, Instant::now(), &chunk[..n]));
    }
}

/// One read, and whether it had to wait for the socket (returned pending
/// before it completed).
async fn read_noting_wait<R: AsyncRead + Unpin>(
    reader: &mut R,
    chunk: &mut [u8],
) -> (std::io::Result<usize>, bool) {
    let mut read = reader.read(chunk);
    match futures_lite::future::poll_once(&mut read).await {
        Some(done) => (done, false),
        None => (read.await, true),
    }
}

/// Runs `wait` unless the connection closes first; false if it closed.
async fn until_closed(handle: &ConnHandle, wait: impl std::future::Future<Output = ()>) -> bool {
    if handle.is_closed() {
        return false;
    }
    async {
        wait.await;
        true
    }
    .or(async {
        handle.closed.raised().await;
        false
    })
    .await
}
