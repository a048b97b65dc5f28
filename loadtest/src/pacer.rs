//! A precise timer for the open-loop send schedule. tokio's timer wheel has
//! millisecond granularity, which would add up to ~1-2 ms of harness-made
//! delay to every scheduled message (latency is measured from the scheduled
//! time). One thread sleeps on a condvar until the earliest deadline
//! (futex timeouts: ~50-100 µs slack) and wakes the task that waits on it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

struct Entry {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Min-heap on the deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Entry>,
    shutdown: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// Handle to the timer thread; the thread ends when the last handle drops.
#[derive(Clone)]
pub struct Pacer {
    shared: Shared,
    _owner: Arc<Owner>,
}

struct Owner(Shared);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0 .0.lock() {
            st.shutdown = true;
        }
        self.0 .1.notify_one();
    }
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pacer")
    }
}

impl Pacer {
    pub fn start() -> std::io::Result<Pacer> {
        let shared: Shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("pacer".to_owned())
            .spawn(move || run(&thread_shared))?;
        Ok(Pacer {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    pub fn sleep_until(&self, at: Instant) -> Sleep<'_> {
        Sleep { pacer: self, at }
    }
}

fn run(shared: &Shared) {
    let (lock, cv) = &**shared;
    let Ok(mut st) = lock.lock() else { return };
    loop {
        if st.shutdown {
            return;
        }
        let now = Instant::now();
        while st.heap.peek().is_some_and(|e| e.at <= now) {
            if let Some(e) = st.heap.pop() {
                e.waker.wake();
            }
        }
        let next = st.heap.peek().map(|e| e.at);
        st = match next {
            None => match cv.wait(st) {
                Ok(g) => g,
                Err(_) => return,
            },
            Some(at) => match cv.wait_timeout(st, at.saturating_duration_since(now)) {
                Ok((g, _)) => g,
                Err(_) => return,
            },
        };
    }
}

/// Future that completes at `at` (registered with the pacer when polled).
#[derive(Debug)]
pub struct Sleep<'a> {
    pacer: &'a Pacer,
    at: Instant,
}

impl Future for Sleep<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let (lock, cv) = &*self.pacer.shared;
        if let Ok(mut st) = lock.lock() {
            let earliest = st.heap.peek().is_none_or(|e| self.at < e.at);
            st.heap.push(Entry {
                at: self.at,
                waker: cx.waker().clone(),
            });
            if earliest {
                cv.notify_one();
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sleeps_complete_in_deadline_order() {
        let pacer = Pacer::start().unwrap();
        let t0 = Instant::now();
        let (a, b) = (
            t0 + Duration::from_millis(20),
            t0 + Duration::from_millis(5),
        );
        let first = tokio::select! {
            () = pacer.sleep_until(a) => "a",
            () = pacer.sleep_until(b) => "b",
        };
        assert_eq!(first, "b");
        pacer.sleep_until(a).await;
        assert!(Instant::now() >= a);
    }
}
