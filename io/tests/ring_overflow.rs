//! The vendored glommio's rings past their completion queue
//! (vendor/glommio/PATCHED.md change 10): when more completions arrive at
//! once than a ring's completion queue holds, the rest wait in the kernel's
//! overflow list, and the reactor's peek must bring them in while the
//! executor stays busy, not only once it next sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// A ring depth of 16: completion queues of 32.
const RING_DEPTH: usize = 16;
const STREAMS: usize = 200;

#[test]
fn completions_past_the_completion_queue_reach_their_tasks_while_the_executor_is_busy() {
    let done = glommio::LocalExecutorBuilder::default()
        .ring_depth(RING_DEPTH)
        .spawn(|| async move {
            let done = Rc::new(Cell::new(0usize));
            let mut peers = Vec::with_capacity(STREAMS);
            for _ in 0..STREAMS {
                let (mut ours, theirs) = glommio::net::UnixStream::pair().unwrap();
                peers.push(theirs);
                let done = done.clone();
                glommio::spawn_local(async move {
                    let mut byte = [0u8; 1];
                    ours.read_exact(&mut byte).await.unwrap();
                    done.set(done.get() + 1);
                })
                .detach();
            }
            // The readers find nothing and wait; while this task sleeps the
            // executor is idle and submits every poll (a submission queue of
            // 16 at a time).
            glommio::timer::sleep(Duration::from_millis(200)).await;
            // Every peer writes at once: each `send` succeeds without a
            // yield, and the readers' poll wake-ups, queued as task work on
            // this thread, run as it returns from the kernel: all 200
            // completions are posted before this task yields, 32 into the
            // queue and the rest into the kernel's overflow list (`perf stat
            // -e io_uring:io_uring_cqe_overflow` counted 168 on Linux 6.18).
            for peer in &mut peers {
                peer.write_all(&[1]).await.unwrap();
            }
            // Busy until every reader is done: the executor never sleeps, so
            // only the reactor's peeks can bring the overflow in. Bounded: a
            // lost completion fails the count below instead of hanging.
            let deadline = Instant::now() + Duration::from_secs(20);
            while done.get() < STREAMS && Instant::now() < deadline {
                futures_lite::future::yield_now().await;
            }
            done.get()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(done, STREAMS, "readers woken");
}
