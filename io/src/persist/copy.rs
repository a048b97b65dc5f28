//! Queued messages copied from old log files into new ones a block at a
//! time: recovery's second pass (what is still owed, into the new
//! snapshots) and a rewrite's spilled messages (from the log it replaces).
//! A backlog of any size costs its index in memory, not its messages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use shardmq_core::broker::QueueSnapshot;
use shardmq_core::buffer::log::{Kek, LoggedOp};
use shardmq_core::session::QueuedMessage;

use super::blocks::{Blocks, Loc};
use super::replay::{rebase_put, Owed};
use super::{Epoch, NewLog, PersistError};

/// The in-flight messages of each queue, by queue id and sequence number:
/// the shard resumes them from memory.
pub(super) type Windows = HashMap<u64, BTreeMap<u64, QueuedMessage>>;

/// Reads `files` again in recovery's order and appends to `outs[shard]`
/// every put `owed` names at that place: the last put of each number, as
/// the first pass kept it. The files and their cuts are the ones the first
/// pass read, so it finds each one.
pub(super) fn copy_owed(
    encrypt: bool,
    keys: &[Kek],
    files: &[PathBuf],
    epoch: Epoch,
    owed: &HashMap<u64, Owed>,
    outs: &mut [NewLog],
) -> Result<Windows, PersistError> {
    let mut windows = Windows::new();
    for (file, path) in files.iter().enumerate() {
        let mut blocks = Blocks::open(encrypt, keys, path, epoch.instant)?;
        let written_at = blocks.header.epoch_unix_nanos;
        while let Some((block, ops)) = blocks.next_block()? {
            for (nth, op) in ops.into_iter().enumerate() {
                let LoggedOp::QueuePut(p) = op else {
                    continue;
                };
                let at = Loc {
                    file: file as u32,
                    block,
                    nth: nth as u32,
                };
                let Some(o) = owed.get(&p.queue_id) else {
                    continue;
                };
                if o.puts.get(&p.seq) != Some(&at) {
                    continue;
                }
                let p = rebase_put(p, written_at, epoch);
                if o.in_window(p.seq) {
                    windows
                        .entry(p.queue_id)
                        .or_default()
                        .insert(p.seq, p.queued.clone());
                }
                outs[o.shard].push(p)?;
            }
        }
    }
    Ok(windows)
}

/// A rewrite's spilled messages (`QueueSnapshot::copies`): their puts
/// copied from the log being replaced (`old`, every batch of which was
/// written) into `out`, a block at a time, instead of the shard reading
/// them back from the disk buffer. One the old log does not hold fails
/// the rewrite, which is then retried reading them back (the writer marks
/// the log broken): nothing is dropped.
pub(super) fn copy_from_log(
    encrypt: bool,
    keys: &[Kek],
    old: &Path,
    epoch: Epoch,
    queues: &[QueueSnapshot],
    out: &mut NewLog,
) -> Result<usize, PersistError> {
    // Per queue: the numbers wanted, sorted, and which were copied.
    let mut wanted: HashMap<u64, (&[u64], Vec<bool>)> = queues
        .iter()
        .filter(|q| !q.copies.is_empty())
        .filter_map(|q| {
            let id = q.state.as_ref()?.queue_id;
            Some((id, (&q.copies[..], vec![false; q.copies.len()])))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let mut blocks = Blocks::open(encrypt, keys, old, epoch.instant)?;
    let written_at = blocks.header.epoch_unix_nanos;
    let mut copied = 0;
    while let Some((_, ops)) = blocks.next_block()? {
        for op in ops {
            let LoggedOp::QueuePut(p) = op else {
                continue;
            };
            let Some((seqs, done)) = wanted.get_mut(&p.queue_id) else {
                continue;
            };
            // A queue written whole twice holds a number twice: one copy.
            if let Ok(i) = seqs.binary_search(&p.seq) {
                if !std::mem::replace(&mut done[i], true) {
                    out.push(rebase_put(p, written_at, epoch))?;
                    copied += 1;
                }
            }
        }
    }
    let missing: usize = wanted
        .values()
        .map(|(_, done)| done.iter().filter(|d| !**d).count())
        .sum();
    if missing > 0 {
        let why = blocks
            .cut
            .map_or_else(|| "not in the file".to_owned(), |e| e.to_string());
        return Err(PersistError::Io {
            path: old.to_owned(),
            source: std::io::Error::other(format!(
                "{missing} spilled queued messages could not be copied from the log being \
                 replaced ({why}); the rewrite is retried reading them back"
            )),
        });
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_core::broker::{QueuePut, QueueState, Snapshot};
    use shardmq_core::codec::QoS;
    use shardmq_core::session::{Message, QueuedMessage};
    use std::sync::Arc;

    fn put(seq: u64) -> QueuePut {
        QueuePut {
            client_id: "c".into(),
            queue_id: 7,
            seq,
            queued: QueuedMessage {
                message: Arc::new(Message {
                    topic: "t".try_into().unwrap_or_else(|_| unreachable!()),
                    payload: bytes::Bytes::from(seq.to_string()),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Default::default(),
                    expires_at: None,
                    origin: Default::default(),
                    retain_stamp: 0,
                }),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
            },
        }
    }

    fn wanting(copies: Vec<u64>) -> QueueSnapshot {
        QueueSnapshot {
            state: Some(QueueState::of("c".into(), 7, 10, &copies)),
            copies,
            ..QueueSnapshot::default()
        }
    }

    /// A rewrite copies each spilled message once (a queue written whole
    /// twice holds a number twice), and fails, rather than drop it, when
    /// the old log lacks one: the writer then retries reading it back.
    #[test]
    fn copies_once_and_fails_on_a_missing_message() {
        let dir = std::env::temp_dir().join(format!("smq-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|_| unreachable!());
        let epoch = Epoch::now();
        let snapshot = Snapshot::default();
        let mut old = NewLog::begin(&dir, None, 0, 1, 0, epoch, false, &snapshot)
            .unwrap_or_else(|_| unreachable!());
        for seq in [1, 2, 3, 2] {
            old.push(put(seq)).unwrap_or_else(|_| unreachable!());
        }
        let old = old.finish().unwrap_or_else(|_| unreachable!()).path;
        let mut new = NewLog::begin(&dir, None, 0, 1, 1, epoch, false, &snapshot)
            .unwrap_or_else(|_| unreachable!());
        let copied = copy_from_log(false, &[], &old, epoch, &[wanting(vec![1, 2, 3])], &mut new);
        assert_eq!(copied.ok(), Some(3));
        let missing = copy_from_log(false, &[], &old, epoch, &[wanting(vec![2, 4])], &mut new);
        let e = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("1 spilled queued messages"), "{e}");
        drop(new);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
