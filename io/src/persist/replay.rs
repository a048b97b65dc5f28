//! Reading the log files back at start (docs/PERSISTENCE.md, "Recovery"):
//! each file's operations applied to what the files before it left, the
//! queue records merged by identity rather than order, expiries rebased on
//! the wall clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use shardmq_core::broker::{QueuePut, QueueSnapshot, QueueState, SessionRecord};
use shardmq_core::buffer::log::{Kek, LoggedOp};
use shardmq_core::session::{Message, Sent};
use tracing::warn;

use super::blocks::{Blocks, Loc};
use super::{Epoch, PersistError, PersistSpec, Recovered};

/// What the files replayed so far hold. Queued messages are not held, only
/// where each one is (`Loc`): a backlog of millions is read back a second
/// time, a block at a time, when the new snapshots are written (`copy`).
#[derive(Default)]
pub(super) struct Replayed {
    pub(super) retained: HashMap<String, Message>,
    pub(super) sessions: HashMap<ByteString, SessionRecord>,
    /// By queue id. Files of different shards have no common order, so
    /// nothing here depends on it: puts are collected, and a sequence
    /// number any record calls dead stays dead.
    queues: HashMap<u64, Recovering>,
    /// Client ids with a queue record that did not decode.
    unreadable_queues: HashSet<ByteString>,
}

/// One persisted queue while its records are read.
#[derive(Default)]
struct Recovering {
    client_id: ByteString,
    /// Where each message is; the last put of a number wins (a queue
    /// written whole again after a move repeats its puts).
    puts: BTreeMap<u64, Put>,
    done: HashSet<u64>,
    states: Vec<QueueState>,
    /// Packet id and released flag by sequence number (released only
    /// grows).
    sent: BTreeMap<u64, (u16, bool)>,
    /// Past every sequence number seen.
    next: u64,
}

#[derive(Clone, Copy)]
struct Put {
    at: Loc,
    /// Its message expired while the broker was down.
    expired: bool,
}

/// A queue recovery restores: what it still owes and where each message
/// is on disk.
#[derive(Debug)]
pub(super) struct Owed {
    pub client_id: ByteString,
    pub queue_id: u64,
    pub next: u64,
    /// The in-flight window, in sequence order; an unreleased exchange's
    /// message is among `puts`.
    pub window: Vec<Sent>,
    /// Every message to read back (those in flight and those queued), by
    /// sequence number. Copied in the files' order, which is not always
    /// the numbers' (a queue written whole again after a move): the shard
    /// puts each at its number's place as it reads them back.
    pub puts: BTreeMap<u64, Loc>,
    /// The shard that restores it (its session's client id owner).
    pub shard: usize,
}

impl Owed {
    pub fn in_window(&self, seq: u64) -> bool {
        self.window.binary_search_by_key(&seq, |w| w.seq).is_ok()
    }

    /// Its records for the new snapshot: its state and window; the
    /// messages follow, copied (`copy::copy_owed`).
    pub fn snapshot(&self) -> QueueSnapshot {
        let seqs = self.puts.keys().copied().collect();
        let whole = QueueSnapshot::whole(
            &self.client_id,
            self.queue_id,
            self.next,
            Vec::new(),
            seqs,
            self.window.clone(),
        );
        QueueSnapshot {
            copies: Vec::new(),
            ..whole
        }
    }
}

impl Replayed {
    fn queue(&mut self, client_id: &ByteString, queue_id: u64) -> &mut Recovering {
        let q = self.queues.entry(queue_id).or_default();
        if q.client_id.is_empty() {
            q.client_id = client_id.clone();
        }
        q
    }

    /// Per queue id: what it still owes (queued messages that expired
    /// while the broker was down are dropped here, and counted).
    pub(super) fn owed_queues(&mut self, report: &mut Recovered) -> HashMap<u64, Owed> {
        let unreadable = std::mem::take(&mut self.unreadable_queues);
        std::mem::take(&mut self.queues)
            .into_iter()
            .filter(|(_, q)| !unreadable.contains(&q.client_id))
            .map(|(id, q)| {
                let dead =
                    |seq: &u64| q.done.contains(seq) || q.states.iter().any(|s| s.is_dead(*seq));
                let mut puts: BTreeMap<u64, Put> =
                    q.puts.into_iter().filter(|(seq, _)| !dead(seq)).collect();
                // In flight at the crash: resumed under its packet id, with
                // its message until released (then only PUBREL is owed).
                // One packet id per exchange: should two entries name the
                // same id (a record lost with a torn block), the later
                // sequence number keeps it.
                let mut by_id: BTreeMap<u16, (u64, bool)> = BTreeMap::new();
                for (&seq, &(packet_id, released)) in q.sent.iter().filter(|(seq, _)| !dead(seq)) {
                    by_id.insert(packet_id, (seq, released));
                }
                let mut sent: Vec<Sent> = by_id
                    .into_iter()
                    .map(|(packet_id, (seq, released))| Sent {
                        seq,
                        packet_id,
                        released,
                    })
                    .collect();
                sent.sort_by_key(|w| w.seq);
                let mut owed: BTreeMap<u64, Loc> = BTreeMap::new();
                // Resent if in flight, whatever its expiry (§3.3.2.3.3).
                let window = sent
                    .into_iter()
                    .filter(|w| match (w.released, puts.remove(&w.seq)) {
                        (true, _) => true,
                        (false, Some(p)) => {
                            owed.insert(w.seq, p.at);
                            true
                        }
                        (false, None) => false,
                    })
                    .collect();
                // Expired while down: not owed if still queued [MQTT-3.3.2-5].
                for (seq, p) in puts {
                    if p.expired {
                        report.expired += 1;
                    } else {
                        owed.insert(seq, p.at);
                    }
                }
                let restored = Owed {
                    client_id: q.client_id,
                    queue_id: id,
                    next: q.next,
                    window,
                    puts: owed,
                    shard: 0,
                };
                (id, restored)
            })
            .collect()
    }
}

/// Applies one file's operations (the last write wins per topic and per
/// client id); a tail that does not read back is cut and logged. The file
/// is `file` in recovery's order (`Loc`).
pub(super) fn replay(
    spec: &PersistSpec,
    keys: &[Kek],
    path: &Path,
    file: u32,
    epoch: Epoch,
    state: &mut Replayed,
    report: &mut Recovered,
) -> Result<(), PersistError> {
    let mut blocks = Blocks::open(spec.policy.encrypt, keys, path, epoch.instant)?;
    let written_at = blocks.header.epoch_unix_nanos;
    while let Some((block, ops)) = blocks.next_block()? {
        report.ops += ops.len();
        for (nth, op) in ops.into_iter().enumerate() {
            let at = Loc {
                file,
                block,
                nth: nth as u32,
            };
            replay_op(op, at, written_at, epoch, path, state, report);
        }
    }
    if let Some(why) = &blocks.cut {
        report.cut += 1;
        let file_bytes = fs::metadata(path).map_or(0, |m| m.len());
        warn!(file = %path.display(), valid_bytes = blocks.valid_len(), file_bytes,
            reason = %why, "persistence: the file's tail does not read back (torn write or changed bytes); it was cut, not replayed");
    }
    Ok(())
}

fn replay_op(
    op: LoggedOp,
    at: Loc,
    written_at: u64,
    epoch: Epoch,
    path: &Path,
    state: &mut Replayed,
    report: &mut Recovered,
) {
    match op {
        LoggedOp::Retain(m) => {
            let topic = m.topic.as_str().to_owned();
            match rebase_expiry(m, written_at, epoch) {
                Some(m) => {
                    state.retained.insert(topic, m);
                }
                None => {
                    report.expired += 1;
                    state.retained.remove(&topic);
                }
            }
        }
        LoggedOp::Clear(topic) => {
            state.retained.remove(topic.as_str());
        }
        LoggedOp::SessionPut(mut record) => {
            // A will's Message Expiry Interval starts when it is published
            // (§3.1.3.2.4), so the downtime does not shorten it. Only a
            // record of an older format holds a deadline in the will's
            // message: one that passed during the downtime is not
            // published [MQTT-3.3.2-5].
            record.will = record.will.take().and_then(|mut will| {
                let message = Arc::unwrap_or_clone(will.message);
                will.message = Arc::new(rebase_expiry(message, written_at, epoch)?);
                Some(will)
            });
            replay_session(record, written_at, epoch, state, report);
        }
        LoggedOp::SessionDelete(client_id) => {
            state.sessions.remove(&client_id);
        }
        LoggedOp::QueuePut(p) => {
            let expired = p
                .queued
                .message
                .expires_at
                .is_some_and(|at| rebase(at, written_at, epoch).is_none());
            let q = state.queue(&p.client_id, p.queue_id);
            q.next = q.next.max(p.seq.saturating_add(1));
            q.puts.insert(p.seq, Put { at, expired });
        }
        LoggedOp::QueueDone(d) => {
            let q = state.queue(&d.client_id, d.queue_id);
            q.done.extend(d.seqs);
        }
        LoggedOp::QueueState(s) => {
            let q = state.queue(&s.client_id, s.queue_id);
            q.next = q.next.max(s.next);
            q.states.push(s);
        }
        LoggedOp::QueueSent(w) => {
            let q = state.queue(&w.client_id, w.queue_id);
            for e in w.entries {
                let entry = q.sent.entry(e.seq).or_insert((e.packet_id, false));
                *entry = (e.packet_id, entry.1 || e.released);
            }
        }
        LoggedOp::QueueUnreadable(client_id, why) => {
            report.unreadable_queues += 1;
            warn!(file = %path.display(), reason = %why,
                "persistence: a queue record does not decode (written by a newer version?); that client's queued messages are dropped");
            state.unreadable_queues.insert(client_id);
        }
        LoggedOp::SessionUnreadable(client_id, why) => {
            // Not its older state either: that was replaced.
            report.unreadable_sessions += 1;
            warn!(file = %path.display(), reason = %why,
                "persistence: a session record does not decode (written by a newer version?); that session is dropped");
            state.sessions.remove(&client_id);
        }
    }
}

/// A queued message as read back in recovery's second pass: its expiry
/// rebased on this run's epoch. One that expired while the broker was down
/// is only read if it was in flight, and is resent with no time left
/// (§3.3.2.3.3).
pub(super) fn rebase_put(mut p: QueuePut, written_at: u64, epoch: Epoch) -> QueuePut {
    let m = Arc::unwrap_or_clone(p.queued.message);
    let expires_at = m
        .expires_at
        .map(|at| rebase(at, written_at, epoch).unwrap_or(epoch.instant));
    p.queued.message = Arc::new(Message { expires_at, ..m });
    p
}

/// One session put: kept unless its deadline passed during the downtime.
pub(super) fn replay_session(
    mut record: SessionRecord,
    written_at: u64,
    epoch: Epoch,
    state: &mut Replayed,
    report: &mut Recovered,
) {
    match record.offline_until {
        // Its client had left: the deadline counts the downtime.
        Some(at) => match rebase(at, written_at, epoch) {
            Some(at) => {
                record.offline_until = Some(at);
                state.sessions.insert(record.client_id.clone(), record);
            }
            None if record.will.is_some() => {
                // Its will was due by the session's end at the latest,
                // which came while the broker was down: published late
                // rather than never [MQTT-3.1.2-8]. The record stays, due
                // at once (this run's epoch), until the will is out: the
                // session itself is not restored.
                report.expired_sessions += 1;
                record.offline_until = Some(epoch.instant);
                state.sessions.insert(record.client_id.clone(), record);
            }
            None => {
                report.expired_sessions += 1;
                state.sessions.remove(&record.client_id);
            }
        },
        None => {
            state.sessions.insert(record.client_id.clone(), record);
        }
    }
}

/// A record's expiry was read relative to this run's epoch; the file's
/// epoch was `written_at` on the wall clock. Moves it by the difference
/// (`Instant`s do not survive a reboot; the wall clock does). `None` when
/// it is past.
pub(super) fn rebase_expiry(mut m: Message, written_at: u64, epoch: Epoch) -> Option<Message> {
    let Some(at) = m.expires_at else {
        return Some(m);
    };
    m.expires_at = Some(rebase(at, written_at, epoch)?);
    Some(m)
}

/// An instant read relative to this run's epoch from a file whose epoch was
/// `written_at` on the wall clock, moved by the difference; `None` when it
/// is past (before this run's epoch, or before boot).
pub(super) fn rebase(at: Instant, written_at: u64, epoch: Epoch) -> Option<Instant> {
    let rebased = if epoch.unix_nanos >= written_at {
        at.checked_sub(Duration::from_nanos(epoch.unix_nanos - written_at))
    } else {
        at.checked_add(Duration::from_nanos(written_at - epoch.unix_nanos))
    };
    rebased.filter(|at| *at > epoch.instant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: u32, expired: bool) -> Put {
        Put {
            at: Loc {
                file: 0,
                block: 0,
                nth: n,
            },
            expired,
        }
    }

    /// A message that expired while the broker was down is dropped if still
    /// queued [MQTT-3.3.2-5], resent if in flight (§3.3.2.3.3), and an
    /// exchange past PUBREC keeps its PUBREL whatever its message's expiry.
    #[test]
    fn expiry_drops_queued_messages_not_exchanges_in_flight() {
        let mut r = Replayed::default();
        let q = r.queue(&"c".into(), 1);
        for seq in [5, 6, 7] {
            q.puts.insert(seq, put(seq as u32, true));
        }
        q.sent.insert(5, (40, true));
        q.sent.insert(6, (41, false));
        q.next = 8;
        let mut report = Recovered::default();
        let owed = r.owed_queues(&mut report);
        let restored = &owed[&1];
        let window: Vec<(u16, bool, bool)> = restored
            .window
            .iter()
            .map(|w| (w.packet_id, w.released, restored.puts.contains_key(&w.seq)))
            .collect();
        assert_eq!(window, [(40, true, false), (41, false, true)]);
        assert_eq!(
            restored.puts.keys().copied().collect::<Vec<_>>(),
            [6],
            "the queued one expired"
        );
        assert_eq!(report.expired, 1);
        // The snapshot still owes the in-flight message and the PUBREL.
        let state = restored.snapshot().state.unwrap_or_else(|| unreachable!());
        let live: Vec<u64> = (0..8).filter(|s| !state.is_dead(*s)).collect();
        assert_eq!(live, [5, 6]);
    }

    /// Should two window entries name one packet id (a done lost with a
    /// torn block), the later sequence number keeps it: one exchange per id.
    #[test]
    fn one_exchange_per_packet_id() {
        let mut r = Replayed::default();
        let q = r.queue(&"c".into(), 1);
        q.puts.insert(10, put(0, false));
        q.puts.insert(70_000, put(1, false));
        q.sent.insert(10, (5, false));
        q.sent.insert(70_000, (5, false));
        q.next = 70_001;
        let owed = r.owed_queues(&mut Recovered::default());
        let restored = &owed[&1];
        let window: Vec<(u64, u16)> = restored
            .window
            .iter()
            .map(|w| (w.seq, w.packet_id))
            .collect();
        assert_eq!(window, [(70_000, 5)]);
        // The other is still owed, queued behind the window.
        assert!(restored.puts.contains_key(&10) && !restored.in_window(10));
    }
}
