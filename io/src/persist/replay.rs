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
use shardmq_core::broker::{QueueSnapshot, QueueState, RestoredQueue, SessionRecord};
use shardmq_core::buffer::log::{self, Kek, LogHeader, LoggedOp};
use shardmq_core::session::{Message, QueuedMessage, Sent};
use tracing::warn;

use super::{Epoch, PersistError, PersistSpec, Recovered};

/// What the files replayed so far hold.
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
    puts: BTreeMap<u64, QueuedMessage>,
    done: HashSet<u64>,
    states: Vec<QueueState>,
    /// Puts whose message expired while the broker was down.
    expired: HashSet<u64>,
    /// Packet id and released flag by sequence number (released only
    /// grows).
    sent: BTreeMap<u64, (u16, bool)>,
    /// Past every sequence number seen.
    next: u64,
}

impl Replayed {
    fn queue(&mut self, client_id: &ByteString, queue_id: u64) -> &mut Recovering {
        let q = self.queues.entry(queue_id).or_default();
        if q.client_id.is_empty() {
            q.client_id = client_id.clone();
        }
        q
    }

    /// Per queue id: its client id and what it still owes, in order
    /// (expired messages were dropped as they were read).
    pub(super) fn owed_queues(
        &mut self,
        report: &mut Recovered,
    ) -> HashMap<u64, (ByteString, RestoredQueue)> {
        let unreadable = std::mem::take(&mut self.unreadable_queues);
        std::mem::take(&mut self.queues)
            .into_iter()
            .filter(|(_, q)| !unreadable.contains(&q.client_id))
            .map(|(id, q)| {
                let dead =
                    |seq: &u64| q.done.contains(seq) || q.states.iter().any(|s| s.is_dead(*seq));
                let mut puts: BTreeMap<u64, QueuedMessage> =
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
                let sent: BTreeMap<u64, (u16, bool)> = by_id
                    .into_iter()
                    .map(|(id, (seq, released))| (seq, (id, released)))
                    .collect();
                let window = sent
                    .iter()
                    .filter_map(|(&seq, &(packet_id, released))| {
                        let message = puts.remove(&seq);
                        let sent = Sent {
                            seq,
                            packet_id,
                            released,
                        };
                        match (released, message) {
                            (true, _) => Some((sent, None)),
                            (false, Some(m)) => Some((sent, Some(m))),
                            (false, None) => None,
                        }
                    })
                    .collect();
                let restored = RestoredQueue {
                    queue_id: id,
                    next: q.next,
                    window,
                    messages: puts
                        .into_iter()
                        .filter(|(seq, _)| {
                            let expired = q.expired.contains(seq);
                            report.expired += usize::from(expired);
                            !expired
                        })
                        .collect(),
                };
                (id, (q.client_id, restored))
            })
            .collect()
    }
}

/// A restored queue as the records of a snapshot.
pub(super) fn queue_snapshot(client_id: &ByteString, q: &RestoredQueue) -> QueueSnapshot {
    let in_flight = q
        .window
        .iter()
        .filter_map(|(w, m)| Some((w.seq, m.clone()?)));
    let owed = in_flight.chain(q.messages.iter().cloned()).collect();
    let window = q.window.iter().map(|(w, _)| *w).collect();
    QueueSnapshot::whole(client_id, q.queue_id, q.next, owed, window)
}

/// Applies one file's operations (the last write wins per topic and per
/// client id); a tail that does not read back is cut and logged.
pub(super) fn replay(
    spec: &PersistSpec,
    keys: &[Kek],
    path: &Path,
    epoch: Epoch,
    state: &mut Replayed,
    report: &mut Recovered,
) -> Result<(), PersistError> {
    let file_err = |source| PersistError::File {
        path: path.to_owned(),
        source,
    };
    let mut bytes = fs::read(path).map_err(|source| PersistError::Io {
        path: path.to_owned(),
        source,
    })?;
    let header = LogHeader::decode(&bytes).map_err(file_err)?;
    let sealer = header.open(spec.policy.encrypt, keys).map_err(file_err)?;
    let read = log::read(&header, &sealer, &mut bytes, epoch.instant);
    if let Some(why) = &read.cut {
        report.cut += 1;
        warn!(file = %path.display(), valid_bytes = read.valid_len, file_bytes = bytes.len(),
            reason = %why, "persistence: the file's tail does not read back (torn write or changed bytes); it was cut, not replayed");
    }
    drop(bytes);
    report.ops += read.ops.len();
    for op in read.ops {
        match op {
            LoggedOp::Retain(m) => {
                let topic = m.topic.as_str().to_owned();
                match rebase_expiry(m, header.epoch_unix_nanos, epoch) {
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
                // A will whose message expired during the downtime is not
                // published [MQTT-3.3.2-5].
                record.will = record.will.take().and_then(|(will, delay)| {
                    let will = Arc::unwrap_or_clone(will);
                    let will = rebase_expiry(will, header.epoch_unix_nanos, epoch)?;
                    Some((Arc::new(will), delay))
                });
                replay_session(record, header.epoch_unix_nanos, epoch, state, report);
            }
            LoggedOp::SessionDelete(client_id) => {
                state.sessions.remove(&client_id);
            }
            LoggedOp::QueuePut(p) => {
                let m = Arc::unwrap_or_clone(p.queued.message);
                let q = state.queue(&p.client_id, p.queue_id);
                // Expired while down: not owed if still queued
                // [MQTT-3.3.2-5], but one whose delivery had started (in
                // flight) is resent (§3.3.2.3.3), with no time left.
                let m = match rebase_expiry(m.clone(), header.epoch_unix_nanos, epoch) {
                    Some(m) => m,
                    None => {
                        q.expired.insert(p.seq);
                        Message {
                            expires_at: Some(epoch.instant),
                            ..m
                        }
                    }
                };
                q.next = q.next.max(p.seq.saturating_add(1));
                q.puts.insert(
                    p.seq,
                    QueuedMessage {
                        message: Arc::new(m),
                        ..p.queued
                    },
                );
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
    Ok(())
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
    use shardmq_core::codec::QoS;

    fn message() -> QueuedMessage {
        QueuedMessage {
            message: Arc::new(Message {
                topic: shardmq_core::topic::TopicName::try_from("t")
                    .unwrap_or_else(|_| unreachable!()),
                payload: bytes::Bytes::from_static(b"x"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: None,
                expires_at: None,
                origin: Default::default(),
                retain_stamp: 0,
            }),
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![],
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
            q.puts.insert(seq, message());
            q.expired.insert(seq);
        }
        q.sent.insert(5, (40, true));
        q.sent.insert(6, (41, false));
        q.next = 8;
        let mut report = Recovered::default();
        let owed = r.owed_queues(&mut report);
        let (_, restored) = &owed[&1];
        let window: Vec<(u16, bool, bool)> = restored
            .window
            .iter()
            .map(|(w, m)| (w.packet_id, w.released, m.is_some()))
            .collect();
        assert_eq!(window, [(40, true, false), (41, false, true)]);
        assert!(restored.messages.is_empty(), "the queued one expired");
        assert_eq!(report.expired, 1);
    }

    /// Should two window entries name one packet id (a done lost with a
    /// torn block), the later sequence number keeps it: one exchange per id.
    #[test]
    fn one_exchange_per_packet_id() {
        let mut r = Replayed::default();
        let q = r.queue(&"c".into(), 1);
        q.puts.insert(10, message());
        q.puts.insert(70_000, message());
        q.sent.insert(10, (5, false));
        q.sent.insert(70_000, (5, false));
        q.next = 70_001;
        let owed = r.owed_queues(&mut Recovered::default());
        let (_, restored) = &owed[&1];
        let window: Vec<(u64, u16)> = restored
            .window
            .iter()
            .map(|(w, _)| (w.seq, w.packet_id))
            .collect();
        assert_eq!(window, [(70_000, 5)]);
        // The other is still owed, queued behind the window.
        assert_eq!(
            restored
                .messages
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [10]
        );
    }
}
