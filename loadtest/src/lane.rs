//! A thread of their own for the subscribers (`--sub-thread`): a
//! current-thread runtime that the run spawns their connects and read loops
//! onto, at real-time priority where the process may set it.
//! Why: on one harness core a subscriber's read otherwise waits until the
//! publishers' task has sent its whole burst, and that wait, not the
//! broker, becomes the latency's tail.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The subscribers' thread and its runtime; stopped when dropped.
pub struct Lane {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// `None` when the thread runs at real-time priority, else why not.
    pub priority_refused: Option<String>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("priority_refused", &self.priority_refused)
            .finish_non_exhaustive()
    }
}

type Started = std::io::Result<(Handle, Option<String>)>;

impl Lane {
    /// Starts the thread (it inherits the process's CPU mask: `--cpu`).
    pub fn start() -> std::io::Result<Lane> {
        let (ready_tx, ready_rx) = mpsc::channel::<Started>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lt-subscribers".to_owned())
            .spawn(move || {
                let refused = raise_priority().err();
                let rt = match Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((rt.handle().clone(), refused)));
                // Tasks spawned through the handle run while this blocks.
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let (handle, priority_refused) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the subscribers' thread ended at start"))??;
        Ok(Lane {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
            priority_refused,
        })
    }

    /// Where to spawn the subscribers' tasks.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `SCHED_FIFO` at the lowest real-time priority for the calling thread:
/// woken by a delivery, it preempts the publishers' thread on the same
/// core at once. The kernel's real-time throttling (95 % by default) keeps
/// a runaway from starving the core. (nix 0.27 has no wrapper for it.)
#[allow(unsafe_code)]
fn raise_priority() -> Result<(), String> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives
    // the call; pid 0 means the calling thread, and no memory is shared.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}
