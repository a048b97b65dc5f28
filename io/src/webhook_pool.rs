//! Threads of their own for the custom-authentication webhook's calls, so
//! a slow or silent webhook never delays what the shards' blocking pool
//! runs (the persistence log's writes and fsyncs, segment creation).
//! Process-wide, started on first use; a call whose client is already gone
//! is skipped.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use shardmq_auth::webhook::WebhookRequest;
use shardmq_auth::{AuthError, Identity};

/// Webhook calls in progress at once, for the whole process: each may wait
/// the webhook's whole timeout, and more threads would only move the queue
/// to the webhook.
const THREADS: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

static POOL: OnceLock<Result<Mutex<mpsc::Sender<Job>>, String>> = OnceLock::new();

fn pool() -> Result<&'static Mutex<mpsc::Sender<Job>>, AuthError> {
    let started = POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let mut started = 0;
        let mut failure = None;
        for n in 0..THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("webhook-{n}"))
                .spawn(move || loop {
                    // One waiter takes the next job; the lock is not held
                    // while it runs.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else {
                        return;
                    };
                    // A panic in one call (its sender is dropped: that
                    // client is refused) must not take the thread with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => failure = Some(e),
            }
        }
        // Fewer threads than asked still serve (more slowly).
        match (started, failure) {
            (0, Some(e)) => Err(format!("cannot start the webhook threads: {e}")),
            _ => Ok(Mutex::new(tx)),
        }
    });
    started
        .as_ref()
        .map_err(|e| AuthError::WebhookFailed(e.clone()))
}

/// Sends `request` on a webhook thread and waits for its answer without
/// blocking the shard.
pub async fn call(request: WebhookRequest) -> Result<Identity, AuthError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The connection closed while the call waited its turn (its
        // CONNECT deadline, a flood of CONNECTs): nobody wants the answer.
        if !tx.is_closed() {
            let _ = tx.send(request.send());
        }
    });
    let sent = pool()?
        .lock()
        .map_err(|_| AuthError::WebhookFailed("webhook threads unavailable".into()))?
        .send(job);
    if sent.is_err() {
        return Err(AuthError::WebhookFailed("webhook threads stopped".into()));
    }
    rx.await
        .unwrap_or_else(|_| Err(AuthError::WebhookFailed("webhook call abandoned".into())))
}
