//! Persisted retained messages on disk (docs/PERSISTENCE.md): the files and
//! their names, recovery at start-up (every file read in order, torn or
//! tampered tails cut, one fresh snapshot per shard written under the
//! current key before any client connects), and the per-shard writer
//! (`writer`). The format is core's `buffer::log`; the keys are `keys`.

mod blocks;
mod copy;
pub mod keys;
mod replay;
pub mod writer;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytestring::ByteString;
use shardmq_core::broker::{
    owner_index, PersistOp, QueuePut, RestoredQueue, SessionRecord, Snapshot,
};
use shardmq_core::buffer::log::{self, Kek, LogError, LogHeader, LogWriter, LoggedOp};
use shardmq_core::buffer::record;
use shardmq_core::config::Persistence;
use shardmq_core::session::SharedMessage;
use tracing::{info, warn};

pub use keys::{KeyRing, KeySource};
use replay::{replay, Replayed};

/// How the server persists: the validated policy, the directory, and the
/// keys (`None` when `encryption.mode` is Disabled).
#[derive(Debug, Clone)]
pub struct PersistSpec {
    pub policy: Arc<Persistence>,
    pub dir: PathBuf,
    pub keys: Option<Arc<KeyRing>>,
    /// A cluster node: its logs may hold stamped retained messages and say
    /// so in their header (`log::create`).
    pub stamped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("persistence key ({origin}): {message}")]
    Key { origin: String, message: String },
    #[error("persistence: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "persistence: {path}: {source}; the broker does not start rather than lose or \
             replace what the file holds (docs/PERSISTENCE.md, \"Recovery\")"
    )]
    File { path: PathBuf, source: LogError },
    #[error("persistence: {0}")]
    Log(#[from] LogError),
    #[error(
        "persistence: cannot delete {path} after recovery ({source}); its records would come \
         back after later changes, so the broker does not start. Make the directory writable \
         and start again: the next start reads it and the new files together"
    )]
    Leftover {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the shards of a persisting server share: the spec, the run's
/// epoch, each shard's share of `maxSize`, and each shard's start (taken
/// once). Holds the directory's lock for the server's life.
#[derive(Debug)]
pub struct PersistRun {
    pub spec: PersistSpec,
    pub epoch: Epoch,
    pub budget: u64,
    pub starts: std::sync::Mutex<Vec<Option<ShardStart>>>,
    /// Shards past their start-up barrier (`shard::startup_barrier`).
    pub synced: std::sync::atomic::AtomicUsize,
    /// Shards whose connections are closed at a graceful stop
    /// (`shard::drain_persist`).
    pub drained: std::sync::atomic::AtomicUsize,
    /// Shards through their stop barrier with nothing left to write.
    pub settled: std::sync::atomic::AtomicUsize,
    /// A shard could not start from its log: the others stop waiting for
    /// it at their start-up barrier.
    pub failed: std::sync::atomic::AtomicBool,
    /// What this start's recovery found (shown in the metrics).
    pub recovered: Recovered,
    _lock: File,
}

impl PersistRun {
    /// Locks the directory (one broker per directory: a second one would
    /// recover, rewrite and delete the first one's files), then recovers.
    pub fn start(spec: &PersistSpec, shards: usize) -> Result<PersistRun, PersistError> {
        create_dir(&spec.dir)?;
        let lock = lock_dir(&spec.dir)?;
        let epoch = Epoch::now();
        let (starts, recovered) = recover(spec, shards, epoch)?;
        if spec.policy.queues == shardmq_core::config::QueuePolicy::None {
            warn!(
                "persistence: sessions and their subscriptions persist, but with subscriberQueue \
                 mode None (the default) the messages queued for them do not survive a restart \
                 (docs/PERSISTENCE.md)"
            );
        }
        Ok(PersistRun {
            spec: spec.clone(),
            epoch,
            budget: spec.policy.size_max_bytes.get() / shards.max(1) as u64,
            starts: std::sync::Mutex::new(starts.into_iter().map(Some).collect()),
            synced: std::sync::atomic::AtomicUsize::new(0),
            drained: std::sync::atomic::AtomicUsize::new(0),
            settled: std::sync::atomic::AtomicUsize::new(0),
            failed: std::sync::atomic::AtomicBool::new(false),
            recovered,
            _lock: lock,
        })
    }

    /// Shard `id`'s start, once.
    pub fn take(&self, id: usize) -> Option<ShardStart> {
        self.starts
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(id).and_then(Option::take))
    }
}

fn lock_dir(dir: &Path) -> Result<File, PersistError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| PersistError::Io {
            path: path.clone(),
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| PersistError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("another broker uses this directory ({e}); one broker per dataDir"),
            ),
        },
    )?;
    Ok(file)
}

/// `retained-G{generation}-S{shard}-C{compaction}.log`.
pub fn file_name(generation: u32, shard: u32, compaction: u32) -> String {
    format!("retained-G{generation:010}-S{shard:04}-C{compaction:010}.log")
}

fn is_log_name(name: &str) -> bool {
    name.starts_with("retained-G") && name.ends_with(".log")
}

/// The generation a file's name gives (0 when it gives none).
fn name_generation(path: &Path) -> u32 {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("retained-G"))
        .and_then(|n| n.split('-').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The run's clock pair: record expiries count from `instant`, which was
/// `unix_nanos` on the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    pub instant: Instant,
    pub unix_nanos: u64,
}

impl Epoch {
    pub fn now() -> Epoch {
        let unix_nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Epoch {
            instant: Instant::now(),
            unix_nanos,
        }
    }
}

/// A shard's open log, handed to its writer.
#[derive(Debug)]
pub struct LogFile {
    pub file: File,
    pub path: PathBuf,
    pub writer: LogWriter,
    pub generation: u32,
    pub compaction: u32,
    /// The key ring's version the file was written under.
    pub key_version: u64,
    /// Its header's `stamped`, which rewrites keep.
    pub stamped: bool,
}

/// What one shard starts from.
#[derive(Debug)]
pub struct ShardStart {
    pub log: LogFile,
    pub retained: Vec<SharedMessage>,
    /// The persisted sessions whose client ids the shard owns.
    pub sessions: Vec<SessionRecord>,
    /// Their persisted queues, by client id: the in-flight windows with
    /// their messages; the messages queued behind them are in `log`, read
    /// back a block at a time by `read_queue_puts` (none are held here).
    pub queues: HashMap<ByteString, RestoredQueue>,
    /// This run's generation (queue ids made from it are new).
    pub generation: u32,
}

/// What recovery found, for the start-up log line and the metrics
/// (`shardmq_persistence_recovery_*`).
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub files: usize,
    pub ops: usize,
    pub retained: usize,
    pub sessions: usize,
    pub expired: usize,
    /// Sessions whose expiry passed while the broker was down.
    pub expired_sessions: usize,
    /// Of those, the ones kept until their will is published.
    pub wills_due: usize,
    /// Session records in intact blocks that did not decode (a newer
    /// format): those sessions are dropped, counted and logged.
    pub unreadable_sessions: usize,
    /// Messages owed to restored sessions' queues.
    pub queued: usize,
    /// Queue records in intact blocks that did not decode: those queues
    /// are dropped (their sessions stay).
    pub unreadable_queues: usize,
    /// Files whose reading stopped early (torn tail or changed bytes).
    pub cut: usize,
    pub elapsed: Duration,
}

/// Reads every persisted file, writes one snapshot per shard under the
/// current key (a new generation), then deletes the old files. Blocking;
/// runs before the shards start. Files are read one at a time, oldest first:
/// what recovery holds is the recovered state plus one file.
pub fn recover(
    spec: &PersistSpec,
    shards: usize,
    epoch: Epoch,
) -> Result<(Vec<ShardStart>, Recovered), PersistError> {
    let started = Instant::now();
    let dir = &spec.dir;
    let keys = spec.keys.as_ref().map(|k| k.keys());
    let keys: &[Kek] = keys.as_deref().map_or(&[], |k| &k[..]);
    let mut report = Recovered::default();
    let files = scan(spec, keys)?;
    report.files = files.len();
    let next_generation = files
        .iter()
        .map(|f| f.generation.max(name_generation(&f.path)))
        .max()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| PersistError::Io {
            path: dir.clone(),
            source: std::io::Error::other(
                "a file name carries the last generation number (4294967295); move it away",
            ),
        })?;
    let mut state = Replayed::default();
    for (i, f) in files.iter().enumerate() {
        replay(
            spec,
            keys,
            &f.path,
            i as u32,
            epoch,
            &mut state,
            &mut report,
        )?;
    }
    let mut queues = state.owed_queues(&mut report);
    let mut per_shard: Vec<(Vec<SharedMessage>, Vec<SessionRecord>)> =
        (0..shards.max(1)).map(|_| Default::default()).collect();
    report.retained = state.retained.len();
    // Kept only for their due wills (`replay_session`).
    report.wills_due = state
        .sessions
        .values()
        .filter(|r| r.offline_until == Some(epoch.instant))
        .count();
    report.sessions = state.sessions.len() - report.wills_due;
    for (topic, m) in state.retained {
        per_shard[owner_index(&topic, shards)].0.push(Arc::new(m));
    }
    // The owner of a client id may differ from the last run's (another
    // worker count): the registry owner restores it, with its queue.
    for (client_id, record) in state.sessions {
        per_shard[owner_index(&client_id, shards)].1.push(record);
    }
    let mut owed = HashMap::new();
    for (shard, (_, sessions)) in per_shard.iter().enumerate() {
        for r in sessions {
            if let Some(mut q) = queues
                .remove(&r.queue_id)
                .filter(|q| q.client_id == r.client_id)
            {
                report.queued += q.puts.len();
                q.shard = shard;
                owed.insert(r.queue_id, q);
            }
        }
    }
    // A queue no session names is not restored.
    drop(queues);
    let current = keys.first();
    let key_version = spec.keys.as_ref().map_or(0, |k| k.version());
    let mut outs = Vec::with_capacity(per_shard.len());
    let mut kept = Vec::with_capacity(per_shard.len());
    for (shard, (messages, sessions)) in per_shard.into_iter().enumerate() {
        let snapshot = Snapshot {
            messages,
            queues: owed
                .values()
                .filter(|q| q.shard == shard)
                .map(|q| q.snapshot())
                .collect(),
            sessions: sessions.into_iter().map(Arc::new).collect(),
            ..Snapshot::default()
        };
        outs.push(NewLog::begin(
            dir,
            current,
            shard as u32,
            next_generation,
            0,
            epoch,
            spec.stamped,
            &snapshot,
        )?);
        kept.push((snapshot.messages, snapshot.sessions));
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let mut windows = copy::copy_owed(spec.policy.encrypt, keys, &paths, epoch, &owed, &mut outs)?;
    let mut starts = Vec::with_capacity(outs.len());
    for (shard, (out, (messages, sessions))) in outs.into_iter().zip(kept).enumerate() {
        let log = out.finish()?;
        if let (Some(ring), Some(kek)) = (&spec.keys, current) {
            ring.sealed(shard as u32, kek.fingerprint());
        }
        let sessions: Vec<SessionRecord> = sessions
            .into_iter()
            .map(|r| Arc::try_unwrap(r).unwrap_or_else(|r| (*r).clone()))
            .collect();
        let queues = sessions
            .iter()
            .filter_map(|r| {
                let q = owed.remove(&r.queue_id)?;
                let mut messages = windows.remove(&q.queue_id).unwrap_or_default();
                let window = q
                    .window
                    .iter()
                    .filter_map(|w| match (w.released, messages.remove(&w.seq)) {
                        (true, _) => Some((*w, None)),
                        (false, Some(m)) => Some((*w, Some(m))),
                        (false, None) => None,
                    })
                    .collect();
                let restored = RestoredQueue {
                    queue_id: q.queue_id,
                    next: q.next,
                    window,
                    messages: Vec::new(),
                };
                Some((r.client_id.clone(), restored))
            })
            .collect();
        starts.push(ShardStart {
            log: LogFile { key_version, ..log },
            retained: messages,
            sessions,
            queues,
            generation: next_generation,
        });
    }
    // Oldest first, stopping at the first that fails: what stays is always
    // the newest old files, which replay to exactly the new snapshots. But
    // the new files do not repeat the old ones' clears and session deletes:
    // once they are rewritten, a leftover old file would bring back what
    // ended meanwhile. So the start stops; the next one reads all of them.
    for f in &files {
        match fs::remove_file(&f.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PersistError::Leftover {
                    path: f.path.clone(),
                    source,
                })
            }
        }
    }
    sync_dir(dir)?;
    report.elapsed = started.elapsed();
    info!(dir = %dir.display(), files = report.files, records = report.ops, retained = report.retained,
        sessions = report.sessions, expired_sessions = report.expired_sessions,
        unreadable_sessions = report.unreadable_sessions, wills_due = report.wills_due, expired = report.expired,
        queued = report.queued, unreadable_queues = report.unreadable_queues, cut = report.cut, generation = next_generation,
        elapsed_ms = report.elapsed.as_millis() as u64,
        encrypted = spec.policy.encrypt, "persistence: recovered");
    Ok((starts, report))
}

/// The queued messages recovery wrote into a shard's new log after its
/// snapshot, in file order, each handed to `f`: the shard restores a backlog
/// of any size a block at a time. Blocking; runs before clients connect.
/// How many were read. A file that does not read back whole (it was written
/// and synced moments ago: the disk is failing) is an error: the start
/// stops rather than run without messages the file says are owed, and the
/// next start reads the file again.
pub fn read_queue_puts(
    spec: &PersistSpec,
    path: &Path,
    epoch: Epoch,
    mut f: impl FnMut(QueuePut),
) -> Result<usize, PersistError> {
    let keys = spec.keys.as_ref().map(|k| k.keys());
    let keys: &[Kek] = keys.as_deref().map_or(&[], |k| &k[..]);
    let mut blocks = blocks::Blocks::open(spec.policy.encrypt, keys, path, epoch.instant)?;
    let mut read = 0;
    while let Some((_, ops)) = blocks.next_block()? {
        for op in ops {
            if let LoggedOp::QueuePut(p) = op {
                read += 1;
                f(p);
            }
        }
    }
    let valid = blocks.valid_len();
    match blocks.cut {
        None => Ok(read),
        Some(why) => Err(PersistError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "the log recovery just wrote does not read back whole ({why}, after {} bytes); \
                 the broker does not start without the queued messages it holds",
                valid
            )),
        }),
    }
}

/// A log file found at start, by its header.
struct Found {
    generation: u32,
    compaction: u32,
    path: PathBuf,
}

/// Every log file's header, checked against the keys, in replay order
/// (generation, then compaction). Deletes unfinished snapshots (`*.tmp`:
/// a crash before their rename; the files they were replacing still hold
/// everything). A `.log` whose header does not read is damage, not a crash
/// artefact (a file only gets its name once complete and synced): the start
/// stops rather than drop what it holds.
fn scan(spec: &PersistSpec, keys: &[Kek]) -> Result<Vec<Found>, PersistError> {
    let (logs, unfinished) = log_files(&spec.dir)?;
    for path in unfinished {
        warn!(file = %path.display(), "persistence: deleting a snapshot a crash left unfinished (the files it was to replace are read instead)");
        remove(&path);
    }
    let mut found = Vec::with_capacity(logs.len());
    for path in logs {
        let file_err = |source| PersistError::File {
            path: path.clone(),
            source,
        };
        let mut head = [0u8; log::LOG_HEADER_LEN];
        let n = read_prefix(&path, &mut head)?;
        let header = LogHeader::decode(&head[..n]).map_err(file_err)?;
        header.open(spec.policy.encrypt, keys).map_err(file_err)?;
        found.push(Found {
            generation: header.generation,
            compaction: header.compaction,
            path,
        });
    }
    found.sort_by_key(|f| (f.generation, f.compaction));
    Ok(found)
}

/// Reads up to `buf.len()` bytes from the start of `path`; how many.
fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, PersistError> {
    use std::io::Read;
    let io = |source| PersistError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(n)
}

/// The log files of `dir` and the unfinished snapshots (`*.log.tmp`),
/// any order.
fn log_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), PersistError> {
    let io = |source| PersistError::Io {
        path: dir.to_owned(),
        source,
    };
    let (mut logs, mut unfinished) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_log_name(name) {
            logs.push(entry.path());
        } else if name.strip_suffix(".tmp").is_some_and(is_log_name) {
            unfinished.push(entry.path());
        }
    }
    Ok((logs, unfinished))
}

fn create_dir(dir: &Path) -> Result<(), PersistError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PersistError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// A log file being written: a snapshot, then queued messages streamed in
/// batches (`push`), then made durable (file and directory entry synced)
/// and given its name (`finish`). Blocking. It is
/// written under a temporary name and renamed once synced: a file with a
/// log's name is always complete, so recovery can treat any damage to one
/// as damage, never as a crash while it was written. Dropped unfinished,
/// the temporary file is deleted.
pub(crate) struct NewLog {
    dir: PathBuf,
    path: PathBuf,
    tmp: Unfinished,
    file: File,
    writer: LogWriter,
    shard: u32,
    generation: u32,
    compaction: u32,
    stamped: bool,
    pending: Vec<PersistOp>,
    pending_bytes: usize,
    skipped: usize,
}

/// Puts sealed per write while streaming: a few blocks' worth.
const PUSH_BATCH_BYTES: usize = 4 * shardmq_core::buffer::BLOCK_BODY_TARGET;

impl NewLog {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin(
        dir: &Path,
        kek: Option<&Kek>,
        shard: u32,
        generation: u32,
        compaction: u32,
        epoch: Epoch,
        stamped: bool,
        snapshot: &Snapshot,
    ) -> Result<NewLog, PersistError> {
        let (header, sealer) = log::create(
            kek,
            shard,
            generation,
            compaction,
            epoch.unix_nanos,
            stamped,
        )?;
        let mut writer = LogWriter::new(&header, sealer, epoch.instant);
        let (blocks, skipped) = writer.seal_snapshot(snapshot)?;
        let path = dir.join(file_name(generation, shard, compaction));
        let tmp = dir.join(format!("{}.tmp", file_name(generation, shard, compaction)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| PersistError::Io {
                path: tmp.clone(),
                source,
            })?;
        let mut new = NewLog {
            dir: dir.to_owned(),
            path,
            tmp: Unfinished(Some(tmp)),
            file,
            writer,
            shard,
            generation,
            compaction,
            stamped,
            pending: Vec::new(),
            pending_bytes: 0,
            skipped,
        };
        new.write(&header.encode())?;
        new.write(&blocks)?;
        Ok(new)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PersistError> {
        self.file
            .write_all(bytes)
            .map_err(|source| self.tmp.error(source))
    }

    /// One more queued message, after the snapshot.
    fn push(&mut self, p: QueuePut) -> Result<(), PersistError> {
        let m = &p.queued.message;
        self.pending_bytes += record::encoded_len(m).unwrap_or(m.payload.len());
        self.pending.push(PersistOp::QueuePut(p));
        if self.pending_bytes >= PUSH_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PersistError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (blocks, skipped) = self.writer.seal_ops(&self.pending)?;
        self.skipped += skipped;
        self.pending.clear();
        self.pending_bytes = 0;
        self.write(&blocks)
    }

    /// Synced, named, and the directory synced.
    pub(crate) fn finish(mut self) -> Result<LogFile, PersistError> {
        self.flush()?;
        if self.skipped > 0 {
            warn!(
                shard = self.shard,
                skipped = self.skipped,
                "persistence: records too large for the log format (never from a valid packet) were not written"
            );
        }
        let done = self
            .file
            .sync_all()
            .map_err(|source| self.tmp.error(source))
            .and_then(|()| rename_new(self.tmp.path(), &self.path))
            .and_then(|()| sync_dir(&self.dir));
        // On failure only the temporary file goes (dropped armed): a
        // complete snapshot left under its name (the directory sync failed)
        // replays harmlessly before the next, and a name that existed is
        // never this attempt's to delete.
        done?;
        self.tmp.0 = None;
        Ok(LogFile {
            file: self.file,
            path: self.path,
            writer: self.writer,
            generation: self.generation,
            compaction: self.compaction,
            key_version: 0,
            stamped: self.stamped,
        })
    }
}

/// A temporary file deleted when dropped, unless disarmed.
struct Unfinished(Option<PathBuf>);

impl Unfinished {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn error(&self, source: std::io::Error) -> PersistError {
        PersistError::Io {
            path: self.path().to_owned(),
            source,
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            remove(path);
        }
    }
}

/// Renames `from` to `to` unless `to` exists: a log is never replaced by
/// another of the same name.
fn rename_new(from: &Path, to: &Path) -> Result<(), PersistError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(|e| PersistError::Io {
        path: to.to_owned(),
        source: e.into(),
    })
}

/// Makes a directory's entries (a created or removed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PersistError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Deletes a file the broker no longer needs; a failure is logged (the
/// next recovery reads it again, harmlessly: newer files apply after it).
pub fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(file = %path.display(), error = %e, "persistence: cannot delete an old file");
        }
    }
}
