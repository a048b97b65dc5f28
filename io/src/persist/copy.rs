//! Recovery's second pass: the queued messages still owed are copied from
//! the old files into the new snapshots a block at a time, so a backlog of
//! any size costs recovery its index (`Owed`), not its messages.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use shardmq_core::broker::QueuePut;
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
    let mut unordered: HashMap<u64, BTreeMap<u64, QueuePut>> = HashMap::new();
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
                if o.ordered {
                    outs[o.shard].push(p)?;
                } else {
                    unordered.entry(p.queue_id).or_default().insert(p.seq, p);
                }
            }
        }
    }
    for (queue_id, puts) in unordered {
        let shard = owed.get(&queue_id).map_or(0, |o| o.shard);
        for p in puts.into_values() {
            outs[shard].push(p)?;
        }
    }
    Ok(windows)
}
