//! The executor's turns after a park (vendor/glommio/PATCHED.md change 15):
//! the turn that follows a sleep skips the pass over the rings the sleep
//! just made, but must still start a time slice, or a task that runs long
//! and checks `need_preempt` would never be told to yield.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

/// After a sleep on a timer (a park), a task that keeps the CPU is told to
/// yield once its slice is over. The bound only keeps a broken build from
/// hanging the suite; the assertion is on whether it was told.
#[test]
fn a_task_after_a_park_is_still_preempted_at_the_end_of_its_slice() {
    let told = glommio::LocalExecutorBuilder::default()
        .preempt_timer(Duration::from_millis(5))
        .spawn(|| async move {
            let mut told = Vec::new();
            for _ in 0..3 {
                // Nothing else to run: the executor parks until the timer.
                glommio::timer::sleep(Duration::from_millis(2)).await;
                let give_up = Instant::now() + Duration::from_secs(10);
                let mut preempted = false;
                while !preempted && Instant::now() < give_up {
                    preempted = glommio::executor().need_preempt();
                }
                told.push(preempted);
            }
            told
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(told, [true, true, true]);
}
