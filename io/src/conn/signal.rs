//! `Signal`: a wake-up flag with one waiting task, for the few events a
//! connection's reader and writer wait on (output to send, the transmit
//! backlog drained, the connection closed).

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

/// Raised by anyone on the shard, awaited by one task at a time.
// These were bounded local channels of `()`: the reader raced every socket
// read against the close channel (registering and dropping a channel
// waiter per message) and each delivery woke the writer through
// `try_send`, about 3 % of the shard's samples at 100 x 50/s. A flag and a
// waker do the same with less: the broker's CPU did not move measurably,
// an idle connection holds about 0.8 KB less (docs/PERFORMANCE.md).
#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    /// Raises the flag and wakes the waiting task, if one waits.
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised.get()
    }

    /// Waits until the flag is raised and lowers it: raises before the wait
    /// count as one.
    pub async fn take(&self) {
        poll_fn(|cx| self.poll(cx, true)).await
    }

    /// Waits until the flag is raised and leaves it raised.
    pub async fn raised(&self) {
        poll_fn(|cx| self.poll(cx, false)).await
    }

    fn poll(&self, cx: &Context<'_>, lower: bool) -> Poll<()> {
        if self.raised.get() {
            if lower {
                self.raised.set(false);
            }
            return Poll::Ready(());
        }
        // One waiter: a later wait (of the same task, usually) replaces the
        // earlier one's waker.
        let waker = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("raised", &self.raised.get())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn take_lowers_and_raised_does_not() {
        let s = Signal::default();
        assert!(future::block_on(future::poll_once(s.take())).is_none());
        s.raise();
        s.raise();
        assert!(future::block_on(future::poll_once(s.take())).is_some());
        // The two raises were one.
        assert!(future::block_on(future::poll_once(s.take())).is_none());
        s.raise();
        assert!(future::block_on(future::poll_once(s.raised())).is_some());
        assert!(s.is_raised());
    }

    #[test]
    fn a_raise_wakes_the_waiting_task() {
        let s = std::rc::Rc::new(Signal::default());
        let waiter = s.clone();
        let raiser = s.clone();
        let done = future::block_on(future::zip(
            async move {
                waiter.take().await;
                true
            },
            async move {
                future::yield_now().await;
                raiser.raise();
            },
        ));
        assert!(done.0);
    }
}
