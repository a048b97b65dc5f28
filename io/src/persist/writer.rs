//! One shard's persisted retained log at run time: takes the shard's
//! batches (`poll_persist`), seals them on the shard, writes and fdatasyncs
//! them on the blocking pool, one flush for everything that arrived while
//! the previous one ran (group commit), then releases the acknowledgements
//! (`handle_persisted`). Rewrites the log as a snapshot when it has grown,
//! when a write failed, and when the key changed (online rotation).

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardmq_core::buffer::log::LogWriter;
use tracing::{error, info, warn};

use super::copy::copy_from_log;
use super::{Epoch, KeyRing, LogFile, NewLog, PersistError};
use crate::driver::Driver;

/// A log smaller than this is never rewritten for its size.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// After a failed write or rewrite, wait this long before trying again
/// (the acknowledgements stay held meanwhile).
const RETRY: Duration = Duration::from_secs(1);
/// Rewrites that look for room while the log is at its limit come at most
/// this often (and at most a tenth of the time).
const RECLAIM_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// How often a broken log waiting for a moved queue to settle looks again.
const DEFERRED_RETRY: Duration = Duration::from_millis(5);

/// What the writer has done, for the shard's report and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// fdatasyncs of appended batches (each serves every op in its batch).
    pub syncs: u64,
    pub ops: u64,
    pub bytes: u64,
    pub compactions: u64,
    pub failures: u64,
    /// The log's size now.
    pub file_bytes: u64,
}

struct Current {
    file: Arc<File>,
    path: PathBuf,
    writer: LogWriter,
    key_version: u64,
}

/// The writer of one shard; lives on the shard's executor.
pub struct ShardLog {
    dir: PathBuf,
    shard: u32,
    generation: u32,
    /// A cluster node's files (`log::create`'s `stamped`).
    stamped: bool,
    epoch: Epoch,
    keys: Option<Arc<KeyRing>>,
    /// `persistence.maxSize` divided between the shards.
    budget: u64,
    current: RefCell<Current>,
    /// A flush or rewrite task runs.
    busy: Cell<bool>,
    /// The file cannot be appended to any more (a write failed).
    broken: Cell<bool>,
    /// The file holds every batch taken from the shard (no write, seal or
    /// rewrite failed since it was made): a rewrite may copy spilled
    /// messages from it.
    whole: Cell<bool>,
    /// The log's size after its last rewrite.
    snapshot_bytes: Cell<u64>,
    /// When the last rewrite ended and how long it took: while the log is
    /// at its limit, rewrites to reclaim room are spaced by ten times that.
    last_rewrite: Cell<(Instant, Duration)>,
    /// `Shard::persisted_queues_dropped` when the last rewrite took its
    /// snapshot.
    dropped_at_rewrite: Cell<u64>,
    /// The shard persists queues (`subscriberQueue` not None): only then
    /// does reaching the limit refuse anything.
    queues: bool,
    /// The log is at its limit (half the shard's share of `maxSize`): the
    /// shard's persisted queues take no new messages
    /// (`Shard::set_persist_full`).
    full: Cell<bool>,
    /// A log with no queues was said to be over its limit (once).
    over_limit_logged: Cell<bool>,
    stats: Cell<LogStats>,
    /// The compaction number of the next rewrite.
    next_compaction: Cell<u32>,
    /// Replaced files not deleted yet (a delete failed), oldest first.
    /// Deleted strictly in order: a file is never deleted while an older
    /// one stays, since the newer one holds the clears and session deletes
    /// that keep the older one's records from coming back at recovery.
    replaced: RefCell<Vec<PathBuf>>,
}

impl std::fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLog")
            .field("shard", &self.shard)
            .field("stats", &self.stats.get())
            .finish_non_exhaustive()
    }
}

impl ShardLog {
    pub fn new(
        dir: PathBuf,
        shard: u32,
        epoch: Epoch,
        keys: Option<Arc<KeyRing>>,
        budget: u64,
        queues: bool,
        log: LogFile,
    ) -> ShardLog {
        let len = log.writer.len();
        let next_compaction = log.compaction + 1;
        ShardLog {
            dir,
            shard,
            generation: log.generation,
            stamped: log.stamped,
            epoch,
            keys,
            budget,
            current: RefCell::new(Current {
                file: Arc::new(log.file),
                path: log.path,
                writer: log.writer,
                key_version: log.key_version,
            }),
            busy: Cell::new(false),
            broken: Cell::new(false),
            whole: Cell::new(true),
            snapshot_bytes: Cell::new(len),
            last_rewrite: Cell::new((Instant::now(), Duration::ZERO)),
            dropped_at_rewrite: Cell::new(0),
            queues,
            full: Cell::new(false),
            over_limit_logged: Cell::new(false),
            stats: Cell::new(LogStats {
                file_bytes: len,
                ..LogStats::default()
            }),
            next_compaction: Cell::new(next_compaction),
            replaced: RefCell::new(Vec::new()),
        }
    }

    pub fn stats(&self) -> LogStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut LogStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        s.file_bytes = self.current.borrow().writer.len();
        self.stats.set(s);
    }

    /// Starts the writer task unless it runs (`Output::Persist`, and every
    /// tick so a key rotation or a retry is noticed without new writes).
    pub fn kick(self: &Rc<Self>, driver: &Rc<Driver>) {
        if self.busy.get() {
            return;
        }
        self.busy.set(true);
        let (log, driver) = (self.clone(), driver.clone());
        glommio::spawn_local(async move {
            log.run(&driver).await;
            log.busy.set(false);
        })
        .detach();
    }

    /// The writer task runs (a batch is being written or synced).
    pub fn is_busy(&self) -> bool {
        self.busy.get()
    }

    /// Rewrites the log at the next tick (the file holds more than the shard).
    pub fn rewrite_soon(&self) {
        self.broken.set(true);
    }

    /// Every tick: a key rotation or a retry starts without new writes.
    pub fn tick(self: &Rc<Self>, driver: &Rc<Driver>) {
        if self.needs_rewrite(driver) {
            self.kick(driver);
        }
    }

    fn key_changed(&self) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|k| k.version() != self.current.borrow().key_version)
    }

    /// A rewrite (of a broken file, for a rotation or a compaction) waits
    /// while a persisted queue that moved away is not yet written at its
    /// new shard: this file holds its only durable copy until then.
    fn needs_rewrite(&self, driver: &Rc<Driver>) -> bool {
        let len = self.current.borrow().writer.len();
        let snapshot = self.snapshot_bytes.get();
        // At its limit, persisted queues refuse messages: whatever was
        // written since the last rewrite (an acknowledgement, a session's
        // end) may have freed room, and only a rewrite finds out. Spaced so
        // that rewrites take a tenth of the time at most.
        let (at, took) = self.last_rewrite.get();
        let reclaim = self.full.get()
            && (len > snapshot
                || driver.peek(|s| s.persisted_queues_dropped()) != self.dropped_at_rewrite.get())
            && at.elapsed() >= (took * 10).max(RECLAIM_MIN_INTERVAL);
        (self.broken.get()
            || self.key_changed()
            || (len > COMPACT_MIN_BYTES && len > 2 * snapshot)
            || reclaim)
            && !driver.with(|s| s.persist_rewrite_deferred())
    }

    /// What the log may hold: half the shard's share of `maxSize`, so a
    /// rewrite's new file fits beside the old one within the share.
    fn limit(&self) -> u64 {
        self.budget / 2
    }

    /// Whether the log is at its limit now: reached at the limit, left
    /// below seven eighths of it (so one rewrite does not flap it).
    fn at_limit(&self, was: bool) -> bool {
        let len = self.current.borrow().writer.len();
        let limit = self.limit();
        self.queues
            && if was {
                len >= limit / 8 * 7
            } else {
                len >= limit
            }
    }

    /// Whether the log a shard starts with is at its limit already
    /// (recovery wrote more live state than that).
    pub fn full_at_start(&self) -> bool {
        let full = self.at_limit(false);
        self.full.set(full);
        if full {
            warn!(shard = self.shard, bytes = self.current.borrow().writer.len(), limit = self.limit(),
                "persistence: the recovered log is at its limit (half this shard's share of persistence.maxSize); persisted queues refuse new QoS 1/2 messages until a rewrite finds room");
        }
        full
    }

    /// Tells the shard whether the log is at its limit, and the operator
    /// when that changes.
    pub fn update_full(&self, driver: &Rc<Driver>) {
        let was = self.full.get();
        let full = self.at_limit(was);
        if full == was {
            return;
        }
        self.full.set(full);
        driver.with(|s| s.set_persist_full(full));
        let (bytes, limit) = (self.current.borrow().writer.len(), self.limit());
        if full {
            warn!(shard = self.shard, bytes, limit,
                "persistence: the log reached its limit (half this shard's share of persistence.maxSize); persisted queues refuse new QoS 1/2 messages until a rewrite finds room");
        } else {
            info!(
                shard = self.shard,
                bytes,
                limit,
                "persistence: the log is below its limit again; persisted queues take messages"
            );
        }
    }

    /// Until the shard has nothing more to write. No await between the last
    /// empty `poll_persist` and the caller clearing `busy`, so no batch is
    /// left behind.
    async fn run(&self, driver: &Rc<Driver>) {
        loop {
            if self.needs_rewrite(driver) {
                if let Err(e) = self.rewrite(driver).await {
                    // The snapshot took the shard's pending ops: appending
                    // to the old file now would skip them. Retry instead.
                    self.broken.set(true);
                    self.whole.set(false);
                    self.bump(|s| s.failures += 1);
                    error!(shard = self.shard, error = %e,
                        "persistence: cannot rewrite the log; acknowledgements of persisted changes wait until it works");
                    glommio::timer::sleep(RETRY).await;
                }
                continue;
            }
            if self.broken.get() {
                // Deferred (above): nothing may be appended after a failed
                // write, so wait for the move to settle (one fdatasync at
                // the other shard).
                glommio::timer::sleep(DEFERRED_RETRY).await;
                continue;
            }
            let Some(batch) = driver.with(|s| s.poll_persist()) else {
                return;
            };
            let (bytes, at) = {
                let mut c = self.current.borrow_mut();
                let at = c.writer.len();
                match c.writer.seal_ops(&batch.ops) {
                    Ok((bytes, skipped)) => {
                        if skipped > 0 {
                            warn!(shard = self.shard, skipped,
                                "persistence: records too large for the log format (never from a valid packet) were not written");
                        }
                        (bytes, at)
                    }
                    Err(e) => {
                        // The batch is in the shard's store: the rewrite
                        // writes it and releases its waiters.
                        error!(shard = self.shard, error = %e, "persistence: cannot seal a batch");
                        self.broken.set(true);
                        self.whole.set(false);
                        continue;
                    }
                }
            };
            let file = self.current.borrow().file.clone();
            let n = bytes.len() as u64;
            let written = glommio::executor()
                .spawn_blocking(move || {
                    file.write_all_at(&bytes, at)?;
                    file.sync_data()
                })
                .await;
            match written {
                Ok(()) => {
                    self.bump(|s| {
                        s.syncs += 1;
                        s.ops += batch.ops.len() as u64;
                        s.bytes += n;
                    });
                    driver.with(|s| s.handle_persisted(batch.upto));
                    self.update_full(driver);
                }
                Err(e) => {
                    self.bump(|s| s.failures += 1);
                    error!(shard = self.shard, error = %e,
                        "persistence: a write or fdatasync failed; the log is rewritten to a new file");
                    self.broken.set(true);
                    self.whole.set(false);
                    glommio::timer::sleep(RETRY).await;
                }
            }
        }
    }

    /// Writes what the shard holds as a new file under the current key (a
    /// fresh data key each time), then deletes the old file.
    async fn rewrite(&self, driver: &Rc<Driver>) -> Result<(), PersistError> {
        let started = Instant::now();
        // After a failed write the old file may lack batches: spilled
        // messages are then read back on the shard instead of copied.
        let log_whole = self.whole.get();
        let (snapshot, dropped) =
            driver.with(|s| (s.persist_snapshot(log_whole), s.persisted_queues_dropped()));
        let upto = snapshot.upto;
        // The version first: read after the keys, a rotation in between
        // would record the new version for a file sealed under the old key.
        let keys = self.keys.as_ref().map(|k| {
            let version = k.version();
            (k.keys(), version)
        });
        let key_version = keys.as_ref().map_or(0, |k| k.1);
        let sealed_under = keys
            .as_ref()
            .and_then(|k| k.0.first().map(|k| k.fingerprint()));
        let old = self.current.borrow().path.clone();
        // Every attempt takes a new number: a failed one may have left its
        // file behind (if even removing it failed).
        let compaction = self.next_compaction.get();
        self.next_compaction.set(compaction + 1);
        let (dir, shard, generation, epoch, stamped) = (
            self.dir.clone(),
            self.shard,
            self.generation,
            self.epoch,
            self.stamped,
        );
        let rotated = self.key_changed();
        let mut replaced = self.replaced.take();
        let (log, kept) = glommio::executor()
            .spawn_blocking(move || {
                let kek = keys.as_ref().and_then(|k| k.0.first());
                let log = NewLog::begin(
                    &dir, kek, shard, generation, compaction, epoch, stamped, &snapshot,
                )
                .and_then(|mut new| {
                    let keys = keys.as_ref().map_or(&[][..], |k| &k.0[..]);
                    // The ring exists exactly when encryption is Enabled
                    // (`cli::persistence`), and is never empty.
                    let encrypt = !keys.is_empty();
                    let copied =
                        copy_from_log(encrypt, keys, &old, epoch, &snapshot.queues, &mut new)?;
                    Ok((new.finish()?, copied))
                });
                let (log, copied) = match log {
                    Ok(log) => log,
                    // Not replaced: the old file stays the log.
                    Err(e) => return (Err(e), replaced),
                };
                // The new file is durable: from here on it is the log, even
                // if the old one cannot be deleted. Recovery replays the old
                // one first, harmlessly: the new one opens with explicit
                // clears of everything cleared since the old one's last write.
                replaced.push(old);
                let kept = remove_in_order(replaced);
                if let Err(e) = super::sync_dir(&dir) {
                    warn!(shard, error = %e, "persistence: the old log's removal may not be durable");
                }
                (Ok((log, snapshot.messages.len(), copied)), kept)
            })
            .await;
        *self.replaced.borrow_mut() = kept;
        let (log, retained, copied) = log?;
        if let (Some(ring), Some(fp)) = (&self.keys, sealed_under) {
            ring.sealed(shard, fp);
        }
        let len = log.writer.len();
        *self.current.borrow_mut() = Current {
            file: Arc::new(log.file),
            path: log.path,
            writer: log.writer,
            key_version,
        };
        self.broken.set(false);
        self.whole.set(true);
        self.snapshot_bytes.set(len);
        self.last_rewrite.set((Instant::now(), started.elapsed()));
        self.dropped_at_rewrite.set(dropped);
        self.bump(|s| s.compactions += 1);
        driver.with(|s| s.handle_persisted(upto));
        self.update_full(driver);
        if rotated {
            info!(shard, retained, bytes = len, copied,
                "persistence: log rewritten under the new key; files under the old key are gone from this shard");
        } else {
            // `copied`: spilled queued messages copied from the old file
            // rather than read back from the disk buffer.
            info!(
                shard,
                retained,
                bytes = len,
                copied,
                "persistence: log rewritten"
            );
        }
        if !self.queues && len > self.limit() && !self.over_limit_logged.replace(true) {
            // Nothing is refused for it: say what fills it.
            warn!(shard, bytes = len, limit = self.limit(),
                "persistence: the log of persisted retained messages and sessions is over half this shard's share of persistence.maxSize; lower retainedMessages.maxSize or raise persistence.maxSize");
        }
        Ok(())
    }
}

/// Deletes `files` oldest first, stopping at the first that cannot be
/// deleted; returns those left (retried at the next rewrite).
fn remove_in_order(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut files = files.into_iter();
    while let Some(path) = files.next() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let kept: Vec<PathBuf> = std::iter::once(path).chain(files).collect();
                if kept.len() > 2 {
                    // Each rewrite keeps one more whole snapshot on disk.
                    error!(file = %kept[0].display(), error = %e, files = kept.len(),
                        "persistence: replaced logs cannot be deleted and pile up; fix the directory, a start refuses to run with them");
                } else {
                    warn!(file = %kept[0].display(), error = %e,
                        "persistence: cannot delete a replaced log; it and newer ones stay until a later rewrite deletes them");
                }
                return kept;
            }
        }
    }
    Vec::new()
}
