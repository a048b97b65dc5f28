//! openraft's storage for the control plane: the log and vote in memory,
//! every change appended to one file and fsynced before openraft hears it
//! is durable (Raft's safety needs the vote and the log to survive a crash),
//! and the registry as the state machine, snapshotted to a second file.
//! Small by design: one entry per claimed client id.
// openraft's traits fix the error type (`StorageError`, 224 bytes); the
// helpers return it as they do.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use shardmq_core::cluster::registry::{Granted, Registry};

use super::types::{Reply, TypeConfig};

type NodeId = u64;
type SErr = StorageError<NodeId>;

fn io_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

/// One line of the log file.
#[derive(Serialize, Deserialize)]
enum LogLine {
    Vote(Vote<NodeId>),
    Entries(Vec<Entry<TypeConfig>>),
    /// Entries from this index on are gone (a new leader overwrote them).
    Truncate(u64),
    /// Entries up to this id are in a snapshot.
    Purge(LogId<NodeId>),
}

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote<NodeId>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    purged: Option<LogId<NodeId>>,
    file: Option<File>,
    path: PathBuf,
    /// Lines in the file, to know when to rewrite it.
    lines: usize,
}

impl LogInner {
    fn write(&mut self, line: &LogLine) -> Result<(), SErr> {
        let text = serde_json::to_string(line).map_err(io_err)?;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io_err("log file closed"))?;
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.write_all(b"\n").map_err(io_err)?;
        file.sync_data().map_err(io_err)?;
        self.lines += 1;
        Ok(())
    }

    /// Rewrites the file with what is live (after purges).
    fn compact(&mut self) -> Result<(), SErr> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io_err)?;
        let mut lines = Vec::new();
        if let Some(v) = &self.vote {
            lines.push(LogLine::Vote(*v));
        }
        if let Some(p) = self.purged {
            lines.push(LogLine::Purge(p));
        }
        lines.push(LogLine::Entries(self.log.values().cloned().collect()));
        for l in &lines {
            let text = serde_json::to_string(l).map_err(io_err)?;
            f.write_all(text.as_bytes()).map_err(io_err)?;
            f.write_all(b"\n").map_err(io_err)?;
        }
        f.sync_all().map_err(io_err)?;
        std::fs::rename(&tmp, &self.path).map_err(io_err)?;
        sync_dir(&self.path);
        self.file = Some(
            OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(io_err)?,
        );
        self.lines = lines.len();
        Ok(())
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// The log and vote (openraft's `RaftLogStorage`).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) `dir/raft.log` and replays it. A torn last line
    /// (a crash mid-write) is dropped: its fsync never returned, so openraft
    /// never counted it.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut inner = LogInner {
            path: path.clone(),
            ..LogInner::default()
        };
        if let Ok(f) = File::open(&path) {
            let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
            let count = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                let Ok(parsed) = serde_json::from_str::<LogLine>(&line) else {
                    // Only the last line can be torn by a crash; a bad line
                    // before it is damage, not a tail to cut.
                    if i + 1 < count {
                        return Err(std::io::Error::other(format!(
                            "{}: line {} is not a log record",
                            path.display(),
                            i + 1
                        )));
                    }
                    break;
                };
                inner.lines += 1;
                match parsed {
                    LogLine::Vote(v) => inner.vote = Some(v),
                    LogLine::Entries(es) => {
                        for e in es {
                            inner.log.insert(e.log_id.index, e);
                        }
                    }
                    LogLine::Truncate(i) => {
                        inner.log.split_off(&i);
                    }
                    LogLine::Purge(id) => {
                        inner.log = inner.log.split_off(&(id.index + 1));
                        inner.purged = Some(id);
                    }
                }
            }
        }
        inner.file = None;
        // Rewrite at once: drops a torn tail and starts a clean file.
        let store = LogStore {
            inner: Arc::new(Mutex::new(inner)),
        };
        store
            .lock()
            .map_err(std::io::Error::other)?
            .compact()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(store)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, LogInner>, SErr> {
        self.inner.lock().map_err(|_| io_err("log store poisoned"))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let inner = self.lock()?;
        Ok(inner.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let inner = self.lock()?;
        let last = inner.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last.or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let mut inner = self.lock()?;
        inner.write(&LogLine::Vote(*vote))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        Ok(self.lock()?.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut inner = self.lock()?;
        let written = inner.write(&LogLine::Entries(entries.clone()));
        if written.is_ok() {
            for e in entries {
                inner.log.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(
            written
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        written
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut inner = self.lock()?;
        inner.write(&LogLine::Truncate(log_id.index))?;
        inner.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut inner = self.lock()?;
        inner.write(&LogLine::Purge(log_id))?;
        inner.log = inner.log.split_off(&(log_id.index + 1));
        inner.purged = Some(log_id);
        if inner.lines > 4096 {
            inner.compact()?;
        }
        Ok(())
    }
}

/// The registry and the Raft state applied to it (the snapshot file's
/// content: the registry's fields flattened beside the two of Raft).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Applied {
    #[serde(flatten)]
    pub registry: Registry,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl Applied {
    /// The log index applied last (0: none).
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
}

/// What applying committed claims means for this node: ids another node
/// took from it (their sessions here end).
/// Each with the log index of the claim that took it.
/// `true`: a session of this life whose claim a snapshot skipped past
/// (`Granted::lapsed`), sent to the owner shard as is.
pub type Evictions = tokio::sync::mpsc::UnboundedSender<(String, u64, bool)>;

/// The state machine (openraft's `RaftStateMachine`), with its snapshot
/// file.
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub registry: Arc<Mutex<Applied>>,
    me: u32,
    evictions: Evictions,
    /// The claims granted to this node in this life (shared with `Control`).
    granted: Arc<Mutex<Granted>>,
    snapshot_path: PathBuf,
}

impl StateMachine {
    /// The registry as of its snapshot file, if any. A snapshot that
    /// cannot be read is an error: the log before it is gone.
    pub fn open(
        dir: &Path,
        me: u32,
        evictions: Evictions,
        granted: Arc<Mutex<Granted>>,
    ) -> std::io::Result<StateMachine> {
        let snapshot_path = dir.join("registry.snapshot");
        let registry = match std::fs::read(&snapshot_path) {
            Ok(bytes) => serde_json::from_slice::<Applied>(&bytes)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", snapshot_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => return Err(e),
        };
        Ok(StateMachine {
            registry: Arc::new(Mutex::new(registry)),
            me,
            evictions,
            granted,
            snapshot_path,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Applied>, SErr> {
        self.registry
            .lock()
            .map_err(|_| io_err("state machine poisoned"))
    }

    fn snapshot_of(reg: &Applied) -> Result<Snapshot<TypeConfig>, SErr> {
        let data = serde_json::to_vec(reg).map_err(io_err)?;
        let meta = SnapshotMeta {
            last_log_id: reg.last_applied,
            last_membership: reg.membership.clone(),
            snapshot_id: reg
                .last_applied
                .map_or_else(|| "0".to_owned(), |l| l.index.to_string()),
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn save(&self, reg: &Applied) -> Result<(), SErr> {
        let tmp = self.snapshot_path.with_extension("tmp");
        let data = serde_json::to_vec(reg).map_err(io_err)?;
        let mut f = File::create(&tmp).map_err(io_err)?;
        f.write_all(&data).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        std::fs::rename(&tmp, &self.snapshot_path).map_err(io_err)?;
        sync_dir(&self.snapshot_path);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let reg = self.lock()?.clone();
        // On disk before the log before it is purged.
        self.save(&reg)?;
        Self::snapshot_of(&reg)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        let reg = self.lock()?;
        Ok((reg.last_applied, reg.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut reg = self.lock()?;
        for e in entries {
            reg.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => replies.push(Reply::Released),
                EntryPayload::Normal(cmd) => {
                    let (reply, evict) = reg.registry.apply_on(self.me, &cmd, e.log_id.index);
                    // Another node took an id this node held: its session
                    // here ends (a takeover across nodes).
                    if let Some((id, taken)) = evict {
                        let _ = self.evictions.send((id, taken, false));
                    }
                    replies.push(reply);
                }
                EntryPayload::Membership(m) => {
                    reg.membership = StoredMembership::new(Some(e.log_id), m);
                    replies.push(Reply::Released);
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let mut new: Applied = serde_json::from_slice(snapshot.get_ref()).map_err(io_err)?;
        new.last_applied = meta.last_log_id;
        new.membership = meta.last_membership.clone();
        self.save(&new)?;
        let mut reg = self.lock()?;
        // Ids this node held under a claim the snapshot no longer has in
        // force, and sessions granted here whose claim it skipped past.
        let at = new.applied_index();
        for (id, taken) in reg.registry.taken_by(&new.registry, self.me, at) {
            let _ = self.evictions.send((id, taken, false));
        }
        if let Ok(mut granted) = self.granted.lock() {
            for (id, taken) in granted.lapsed(&new.registry, at, self.me) {
                let _ = self.evictions.send((id, taken, true));
            }
        }
        *reg = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let reg = self.lock()?;
        if reg.last_applied.is_none() {
            return Ok(None);
        }
        Self::snapshot_of(&reg).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_survives_a_reopen_and_a_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("shardmq-raftlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let mut log = LogStore::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            let vote = Vote::new(3, 7);
            log.save_vote(&vote).await.unwrap_or_else(|e| panic!("{e}"));
        });
        // A crash mid-line leaves half a record at the end.
        let path = dir.join("raft.log");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(b"{\"Vote\":{\"leader")
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let mut log = LogStore::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                log.read_vote().await.unwrap_or_else(|e| panic!("{e}")),
                Some(Vote::new(3, 7))
            );
        });
        // Damage before the last line is not a torn tail: the start fails.
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, format!("garbage\n{text}")).unwrap_or_else(|e| panic!("{e}"));
        assert!(LogStore::open(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
