//! Persistence, the shard's side: which changes of the retained topics this
//! shard owns must reach the disk (`persistence.retain`), the session records
//! of the client ids it owns, the queues of the sessions on it (`queue`), the
//! writes handed to the runtime in order (`poll_persist`), and the
//! acknowledgements held until the runtime reports them durable
//! (`handle_persisted`). The runtime writes, seals and fdatasyncs; nothing
//! here touches a file.
//!
//! Contract (docs/PERSISTENCE.md): a publisher's PUBACK/PUBREC for a retained
//! message the policy selects leaves only once the change is on disk; a later
//! change of a topic that is on disk (a clear, or a message the policy does
//! not select) is written too, so a restart never brings back a value that
//! was replaced before the acknowledgement.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use hashbrown::{HashMap, HashSet};

use super::queue_record::{QueueDone, QueuePut, QueueSent, QueueSnapshot, QueueState};
use super::session_write::SessionReply;
use super::{ConnId, MeshMsg, Output, RequestId, SessionRecord, Shard, ShardId};
use crate::buffer::Store;
use crate::codec::ReasonCode;
use crate::config::Persistence;
use crate::session::{PublishAck, SharedMessage};
use crate::topic::TopicName;

mod queue;
pub(in crate::broker) use queue::log_queue;

/// One change of the persisted retained set, in the order the shard made
/// them; sequence numbers are implicit (the batch's `upto` is the last).
#[derive(Debug, Clone)]
pub enum PersistOp {
    /// Store (or replace) the retained message of its topic.
    Retain(SharedMessage),
    /// The topic has no persisted retained message any more.
    Clear(TopicName),
    /// A persisted session's state now (the last put of a client id wins).
    SessionPut(Arc<SessionRecord>),
    /// The client id has no persisted session any more.
    SessionDelete(ByteString),
    /// A QoS 1/2 message queued for a persisted session on this shard.
    QueuePut(QueuePut),
    /// Messages of a persisted queue that are no longer owed.
    QueueDone(QueueDone),
    /// A persisted queue written whole (it moved here): what it owes.
    QueueState(QueueState),
    /// Persisted messages in flight: packet ids, and PUBREC received.
    QueueSent(QueueSent),
}

/// What a rewrite puts in the new file: first the ends of what was cleared
/// or deleted since the old file's last write (so an old file that outlives
/// the rewrite cannot bring them back), then everything persisted now.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub clears: Vec<TopicName>,
    pub deleted_sessions: Vec<ByteString>,
    pub messages: Vec<SharedMessage>,
    pub sessions: Vec<Arc<SessionRecord>>,
    /// The persisted queues of the sessions on this shard.
    pub queues: Vec<QueueSnapshot>,
    /// The sequence number the snapshot covers.
    pub upto: u64,
}

/// Changes to write; once they (and all before them) are durable the
/// runtime calls `Shard::handle_persisted(upto)`.
#[derive(Debug)]
pub struct PersistBatch {
    pub ops: Vec<PersistOp>,
    pub upto: u64,
}

/// Who waits for a change to be durable.
#[derive(Debug)]
enum Waiter {
    /// A publisher on this shard.
    Local {
        conn: ConnId,
        ack: PublishAck,
        reason: ReasonCode,
    },
    /// A peer shard's publisher (`MeshMsg::PublishDone`).
    Peer {
        from: ShardId,
        request: RequestId,
        reason: ReasonCode,
    },
    /// A connection whose CONNACK, SUBACK or UNSUBACK waits for its
    /// session's write.
    Session(SessionReply),
    /// A publish whose acknowledgement waits for several answers
    /// (`Pending::Publish`): this shard's part is durable.
    Request(RequestId),
    /// A queue that moved here is written whole: its old shard may
    /// compact again (`MeshMsg::QueueSettled`).
    Moved(ShardId),
}

/// The persistence state of one shard. Bounded: `on_disk` holds at most the
/// retained store's topics, `sessions` one record per persisted session
/// whose client id this shard owns (each bounded by the subscription limit),
/// `ops` and `waiters` what arrived since the runtime last took a batch (the
/// runtime takes one per flush).
#[derive(Debug)]
pub(super) struct Durable {
    policy: Arc<Persistence>,
    /// Topics whose retained message is on disk (or on its way there).
    on_disk: HashSet<TopicName>,
    /// The last record written of every persisted session this shard owns.
    sessions: HashMap<ByteString, Arc<SessionRecord>>,
    /// Session deletes queued and not yet durable, by client id: a CONNECT
    /// of that id waits for its own delete, not for every pending write.
    deleting: HashMap<ByteString, u64>,
    ops: Vec<PersistOp>,
    /// Sequence number of the last op queued.
    queued: u64,
    /// Every op up to this one is durable.
    durable: u64,
    waiters: VecDeque<(u64, Waiter)>,
    /// Persisted queues that moved away and are not yet written whole at
    /// their new shard: a rewrite now would drop their only durable copy.
    moves_unsettled: usize,
    /// Persisted queues this shard wrote that ended or moved away without
    /// a record here: room a rewrite may free (`persisted_queues_dropped`).
    queues_dropped: u64,
    /// Queue ids: this run's generation in the high half (unique across
    /// restarts), then a counter strided by the shard count.
    generation: u64,
    next_queue_id: u64,
}

impl Durable {
    pub(super) fn new(policy: Arc<Persistence>) -> Durable {
        Durable {
            policy,
            on_disk: HashSet::new(),
            sessions: HashMap::new(),
            deleting: HashMap::new(),
            ops: Vec::new(),
            queued: 0,
            durable: 0,
            waiters: VecDeque::new(),
            moves_unsettled: 0,
            queues_dropped: 0,
            generation: 0,
            next_queue_id: 0,
        }
    }

    /// What must be written after the retained store took `message` (or
    /// cleared its topic, when its payload is empty); the op's sequence
    /// number when something must.
    fn note(&mut self, message: &SharedMessage, stored: bool) -> Option<u64> {
        let topic = &message.topic;
        // The broker's own `$SYS` figures are rebuilt by each run, never
        // restored: a restart must not show the last run's uptime.
        let selected = stored
            && !message.payload.is_empty()
            && !super::sys::is_sys_topic(topic.as_str())
            && self.policy.retains(topic, user_properties(message));
        let op = if selected {
            self.on_disk.insert(topic.clone());
            PersistOp::Retain(message.clone())
        } else if !message.payload.is_empty() && !stored {
            // Refused: what is stored (and on disk) did not change.
            return None;
        } else if self.on_disk.remove(topic) {
            PersistOp::Clear(topic.clone())
        } else {
            return None;
        };
        self.ops.push(op);
        self.queued += 1;
        Some(self.queued)
    }
}

impl Durable {
    /// A session's new state (`None`: it ended); the op's sequence number
    /// when something must be written.
    fn note_session(
        &mut self,
        client_id: ByteString,
        record: Option<Arc<SessionRecord>>,
    ) -> Option<u64> {
        let op = match record {
            Some(record) => {
                self.sessions.insert(client_id, record.clone());
                PersistOp::SessionPut(record)
            }
            None if self.sessions.remove(&client_id).is_some() => {
                self.deleting.insert(client_id.clone(), self.queued + 1);
                PersistOp::SessionDelete(client_id)
            }
            // Nothing on disk to end, but the id's delete may still be on
            // its way to the disk: wait for it.
            None => return self.deleting.get(&client_id).copied(),
        };
        self.ops.push(op);
        self.queued += 1;
        Some(self.queued)
    }
}

fn user_properties(message: &SharedMessage) -> impl Iterator<Item = (&str, &str)> {
    message
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
}

impl<S: Store> Shard<S> {
    /// After the retained store took (or refused) `message`: queue what must
    /// be written. `Some(seq)`: the change must be durable before anyone is
    /// told it is done.
    pub(super) fn persist_retained(
        &mut self,
        message: &SharedMessage,
        stored: bool,
    ) -> Option<u64> {
        let durable = self.durable.as_mut()?;
        let was_empty = durable.ops.is_empty();
        let seq = durable.note(message, stored)?;
        if was_empty {
            self.outputs.push_back(Output::Persist);
        }
        Some(seq)
    }

    /// Queues a persisted session's write at this shard, its client id's
    /// owner: `Some(seq)` when the write must be durable before its client
    /// hears more.
    pub(super) fn persist_session(
        &mut self,
        client_id: ByteString,
        record: Option<Arc<SessionRecord>>,
    ) -> Option<u64> {
        let durable = self.durable.as_mut()?;
        let was_empty = durable.ops.is_empty();
        let seq = durable.note_session(client_id, record)?;
        if was_empty {
            self.outputs.push_back(Output::Persist);
        }
        Some(seq)
    }

    /// A session write's answer waits for `seq`.
    pub(super) fn wait_durable_session(&mut self, seq: u64, reply: SessionReply) {
        if let Some(d) = self.durable.as_mut() {
            d.waiters.push_back((seq, Waiter::Session(reply)));
        }
    }

    /// The local publisher's acknowledgement waits for `seq`.
    pub(super) fn wait_durable_local(
        &mut self,
        seq: u64,
        conn: ConnId,
        ack: PublishAck,
        reason: ReasonCode,
    ) {
        if let Some(d) = self.durable.as_mut() {
            d.waiters
                .push_back((seq, Waiter::Local { conn, ack, reason }));
        }
    }

    /// One answer of a publish waiting for several (`Pending::Publish`)
    /// waits for `seq`.
    pub(super) fn wait_durable_request(&mut self, seq: u64, request: RequestId) {
        if let Some(d) = self.durable.as_mut() {
            d.waiters.push_back((seq, Waiter::Request(request)));
        }
    }

    /// A peer's `PublishDone` waits for `seq`.
    pub(super) fn wait_durable_peer(
        &mut self,
        seq: u64,
        from: ShardId,
        request: RequestId,
        reason: ReasonCode,
    ) {
        if let Some(d) = self.durable.as_mut() {
            d.waiters.push_back((
                seq,
                Waiter::Peer {
                    from,
                    request,
                    reason,
                },
            ));
        }
    }

    /// The changes to write now, if any (after `Output::Persist`, and again
    /// after each `handle_persisted`: more may have come meanwhile).
    pub fn poll_persist(&mut self) -> Option<PersistBatch> {
        let d = self.durable.as_mut()?;
        if d.ops.is_empty() {
            return None;
        }
        Some(PersistBatch {
            ops: std::mem::take(&mut d.ops),
            upto: d.queued,
        })
    }

    /// Changes are queued that the runtime has not taken yet.
    pub fn persist_queued(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| !d.ops.is_empty())
    }

    /// Every change up to `upto` is durable: release who waited for it.
    pub fn handle_persisted(&mut self, upto: u64) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        d.durable = d.durable.max(upto);
        let durable = d.durable;
        d.deleting.retain(|_, seq| *seq > durable);
        let mut released = Vec::new();
        while d.waiters.front().is_some_and(|(seq, _)| *seq <= d.durable) {
            if let Some((_, waiter)) = d.waiters.pop_front() {
                released.push(waiter);
            }
        }
        for waiter in released {
            match waiter {
                Waiter::Local { conn, ack, reason } => self.publish_done(conn, ack, reason),
                Waiter::Peer {
                    from,
                    request,
                    reason,
                } => self.post(from, MeshMsg::PublishDone { request, reason }),
                Waiter::Session(reply) => self.session_durable(reply, false),
                Waiter::Request(request) => self.publish_answer(request, ReasonCode::Success),
                Waiter::Moved(from) => {
                    if from == self.id {
                        self.queue_settled();
                    } else {
                        self.post(from, MeshMsg::QueueSettled);
                    }
                }
            }
        }
    }

    /// The persisted retained messages this shard owns, read back at start
    /// (before any client connects); they are on disk already.
    pub fn restore_retained(&mut self, messages: Vec<SharedMessage>, now: Instant) -> usize {
        let mut restored = 0;
        for message in messages {
            // Stamps made after a restart come after those on disk, even
            // if the wall clock went back meanwhile.
            self.observe_stamp(message.retain_stamp, now);
            let bytes = crate::buffer::memory_cost(&message);
            let topic = message.topic.clone();
            if self.retained.set(topic.clone(), message, bytes).is_ok() {
                restored += 1;
            }
            // On disk until the first rewrite, stored or not: a clear of it
            // before then must be written too.
            if let Some(d) = self.durable.as_mut() {
                d.on_disk.insert(topic);
            }
        }
        restored
    }

    /// What is persisted now, for rewriting the log compactly: the stored
    /// message of every topic on disk, every persisted session's record, and
    /// the sequence number it covers. The ops not yet taken are folded into
    /// it (dropped here): once the snapshot is durable,
    /// `handle_persisted(upto)` releases their waiters. The clears and
    /// session deletes among them are written explicitly (see `Snapshot`).
    ///
    /// `log_whole`: every batch taken so far is in the log being replaced
    /// (no write failed). Queued messages spilled to the disk buffer are
    /// then copied from it by the writer (`QueueSnapshot::copies`) rather
    /// than read back into memory here, except those whose put is among
    /// the ops dropped now.
    pub fn persist_snapshot(&mut self, log_whole: bool) -> Snapshot {
        let Some(d) = self.durable.as_mut() else {
            return Snapshot::default();
        };
        let mut snapshot = Snapshot {
            upto: d.queued,
            ..Snapshot::default()
        };
        let mut unwritten = HashSet::new();
        for op in d.ops.drain(..) {
            match op {
                PersistOp::Clear(topic) => snapshot.clears.push(topic),
                PersistOp::SessionDelete(id) => snapshot.deleted_sessions.push(id),
                PersistOp::QueuePut(p) => {
                    unwritten.insert((p.queue_id, p.seq));
                }
                PersistOp::Retain(_)
                | PersistOp::SessionPut(_)
                | PersistOp::QueueDone(_)
                | PersistOp::QueueState(_)
                | PersistOp::QueueSent(_) => {}
            }
        }
        snapshot.messages = d
            .on_disk
            .iter()
            .filter_map(|topic| self.retained.get(topic).cloned())
            .collect();
        snapshot.sessions = d.sessions.values().cloned().collect();
        snapshot.queues =
            self.queue_snapshots(|queue, seq| log_whole && !unwritten.contains(&(queue, seq)));
        snapshot
    }

    /// A persisted session read back at start: it is on disk already.
    pub(super) fn restored_on_disk(&mut self, record: SessionRecord) {
        if let Some(d) = self.durable.as_mut() {
            d.sessions
                .insert(record.client_id.clone(), Arc::new(record));
        }
    }

    /// The last record written of a session whose client id this shard owns.
    pub(super) fn persisted_session(&self, client_id: &str) -> Option<Arc<SessionRecord>> {
        self.durable.as_ref()?.sessions.get(client_id).cloned()
    }

    /// Persisted sessions on disk whose client ids this shard owns.
    pub fn persisted_sessions(&self) -> usize {
        self.durable.as_ref().map_or(0, |d| d.sessions.len())
    }

    /// Acknowledgements still waiting for the disk (for the shard's report).
    pub fn durable_waiting(&self) -> usize {
        self.durable.as_ref().map_or(0, |d| d.waiters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::config::{DynamicProperty, RetainPolicy};
    use crate::session::Message;

    fn policy(retain: RetainPolicy) -> Durable {
        Durable::new(Arc::new(Persistence {
            size_max_bytes: std::num::NonZeroU64::new(1 << 30).unwrap_or(std::num::NonZeroU64::MIN),
            encrypt: true,
            retain,
            queues: crate::config::QueuePolicy::None,
            dynamic: Some(DynamicProperty {
                key: "aio-persistence".into(),
                value: "true".into(),
            }),
            data_dir: None,
            key_file: None,
        }))
    }

    fn retained(topic: &str, payload: &'static [u8]) -> SharedMessage {
        Arc::new(Message {
            topic: TopicName::try_from(topic).unwrap_or_else(|_| unreachable!()),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: "c".into(),
            retain_stamp: 0,
        })
    }

    #[test]
    fn selected_topics_are_written_and_later_changes_of_them_too() {
        let custom = RetainPolicy::Custom {
            topics: vec![
                crate::topic::TopicFilter::try_from("keep/#").unwrap_or_else(|_| unreachable!())
            ],
            dynamic: false,
        };
        let mut d = policy(custom);
        assert_eq!(d.note(&retained("keep/a", b"1"), true), Some(1));
        // Not selected and never on disk: nothing to write, nothing to wait for.
        assert_eq!(d.note(&retained("other", b"1"), true), None);
        // A refused store changes nothing on disk.
        assert_eq!(d.note(&retained("keep/b", b"1"), false), None);
        // [MQTT-3.3.1-10] an empty payload clears: the disk must forget it.
        assert_eq!(d.note(&retained("keep/a", b""), true), Some(2));
        assert!(matches!(d.ops.last(), Some(PersistOp::Clear(t)) if t.as_str() == "keep/a"));
        // Clearing what was never on disk writes nothing.
        assert_eq!(d.note(&retained("keep/a", b""), true), None);
        assert_eq!(d.ops.len(), 2);
    }

    #[test]
    fn policy_none_writes_nothing_and_all_writes_everything() {
        let mut none = policy(RetainPolicy::None);
        assert_eq!(none.note(&retained("a", b"1"), true), None);
        let mut all = policy(RetainPolicy::All);
        assert_eq!(all.note(&retained("$SYS/broker/uptime", b"1"), true), None);
        assert_eq!(all.note(&retained("a", b"1"), true), Some(1));
        assert_eq!(all.note(&retained("b", b"1"), true), Some(2));
    }
}
