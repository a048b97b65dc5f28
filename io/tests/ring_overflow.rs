//! The vendored glommio's rings past their completion queue
//! (vendor/glommio/PATCHED.md change 10): when more completions arrive at
//! once than a ring's completion queue holds, the rest wait in the kernel's
//! overflow list, and the reactor's peek must bring them in while the
//! executor stays busy, not only once it next sleeps. A multishot read
//! poll (change 12) that could not post is ended by the kernel, and must be
//! armed again for the rounds after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// A ring depth of 16: completion queues of 32.
const RING_DEPTH: usize = 16;
const STREAMS: usize = 200;
const ROUNDS: usize = 3;

/// Rounds of 200 streams written at once into completion queues of 32. In
/// each, every peer's `send` succeeds without a yield, and the readers' poll
/// wake-ups, queued as task work on this thread, run as it returns from the
/// kernel: all 200 completions are posted before this task yields, 32 into
/// the queue and the rest into the kernel's overflow list (`perf stat -e
/// io_uring:io_uring_cqe_overflow` counted 168 in one round on Linux 6.18).
/// The executor then stays busy, so only the reactor's peeks can bring the
/// overflow in. A multishot poll that could not post was ended by the
/// kernel, so every later round finds each reader's poll armed again or not
/// at all.
#[test]
fn completions_past_the_completion_queue_reach_their_tasks_round_after_round() {
    let per_round = glommio::LocalExecutorBuilder::default()
        .ring_depth(RING_DEPTH)
        .spawn(|| async move {
            let done: Rc<Vec<Cell<usize>>> = Rc::new((0..ROUNDS).map(|_| Cell::new(0)).collect());
            let mut peers = Vec::with_capacity(STREAMS);
            for _ in 0..STREAMS {
                let (mut ours, theirs) = glommio::net::UnixStream::pair().unwrap();
                peers.push(theirs);
                let done = done.clone();
                glommio::spawn_local(async move {
                    let mut byte = [0u8; 1];
                    for round in 0..ROUNDS {
                        ours.read_exact(&mut byte).await.unwrap();
                        assert_eq!(usize::from(byte[0]), round);
                        done[round].set(done[round].get() + 1);
                    }
                })
                .detach();
            }
            let mut per_round = Vec::with_capacity(ROUNDS);
            for round in 0..ROUNDS {
                // Let every reader wait (and every poll be submitted).
                glommio::timer::sleep(Duration::from_millis(200)).await;
                for peer in &mut peers {
                    peer.write_all(&[round as u8]).await.unwrap();
                }
                // Busy until the round is read; bounded, so a lost wake-up
                // fails the count below instead of hanging.
                let deadline = Instant::now() + Duration::from_secs(20);
                while done[round].get() < STREAMS && Instant::now() < deadline {
                    futures_lite::future::yield_now().await;
                }
                per_round.push(done[round].get());
            }
            per_round
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(per_round, vec![STREAMS; ROUNDS], "readers woken per round");
}
