//! A connection's reader: socket bytes into the shard (`handle_input`),
//! pausing while the client's acknowledgements pile up unread or the mesh
//! to other shards is backed up (that is how a publisher is pushed back,
//! never by dropping its messages).

use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use futures_lite::io::AsyncRead;
use futures_lite::FutureExt;
use shardmq_core::broker::{ConnId, Flow};

use super::handle::ConnHandle;
use crate::driver::{BrokerShard, Driver};
use crate::telemetry::counters::ListenerCounters;

pub async fn run<R: AsyncRead + Unpin>(
    driver: &Rc<Driver>,
    handle: &Rc<ConnHandle>,
    mut reader: R,
) {
    let id = handle.id;
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
        let read = async { Some(read_into_shard(driver, id, &mut reader).await) }
            .or(async {
                handle.closed.raised().await;
                None
            })
            .await;
        let Some((read, waited)) = read else {
            break;
        };
        let n = match read {
            Ok((n, next)) if n > 0 => {
                flow = next;
                n
            }
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
    }
}

/// One read into the shard's shared read scratch, handed to the shard
/// (`handle_input`) in the same poll, before any other task can use the
/// scratch: the bytes read (0: end of stream) with the shard's answer, and
/// whether the read had to wait for the socket. `AsyncRead::poll_read`
/// borrows its buffer for the call only, so no connection holds one while
/// it waits.
async fn read_into_shard<R: AsyncRead + Unpin>(
    driver: &Rc<Driver>,
    id: ConnId,
    reader: &mut R,
) -> (std::io::Result<(usize, Flow)>, bool) {
    let mut waited = false;
    let read = std::future::poll_fn(|cx| {
        driver
            .buffers
            .with_read(|chunk| match Pin::new(&mut *reader).poll_read(cx, chunk) {
                Poll::Pending => {
                    waited = true;
                    Poll::Pending
                }
                Poll::Ready(Ok(0)) => Poll::Ready(Ok((0, Flow::Stop))),
                Poll::Ready(Ok(n)) => {
                    let input =
                        |s: &mut BrokerShard| s.handle_input(id, Instant::now(), &chunk[..n]);
                    // A read that waited: this connection is not saturated,
                    // and its output need not wait for a batch.
                    let flow = if waited {
                        driver.with_direct_writes(input)
                    } else {
                        driver.with(input)
                    };
                    Poll::Ready(Ok((n, flow)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            })
    })
    .await;
    (read, waited)
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
