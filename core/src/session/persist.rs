//! The persisted side of a session's queue (docs/PERSISTENCE.md "Queued
//! messages"): the queue's id, a sequence number per QoS 1/2 message, and
//! the puts and ends the shard has not yet handed to its log. The session
//! only records what happened; the shard (`broker::durable`) writes it.

use crate::buffer::{memory_cost, Lease};
use crate::codec::QoS;
use crate::limits::QueueLimit;

use super::queue::{Entry, Queued, Stored};
use super::state::{InflightState, SessionState};
use super::SharedMessage;

/// A persisted session's queue log. Sequence numbers start at 1; 0 marks a
/// message that is not persisted (QoS 0).
#[derive(Debug, Clone)]
pub struct QueueLog {
    /// Unique per MQTT session (a clean start gets a new one): recovery
    /// keeps only the records of the id its session record names.
    pub queue_id: u64,
    pub next_seq: u64,
    /// The shard whose log holds this queue's records: a session that
    /// moves writes its whole queue again at the new one.
    pub written_at: usize,
    pub(crate) puts: Vec<(u64, Queued)>,
    pub(crate) done: Vec<u64>,
    pub(crate) sent: Vec<Sent>,
}

/// A persisted message's place in the in-flight window: sent under
/// `packet_id`, and `released` once PUBREC came (only PUBREL is owed then).
/// A restart resumes the exchange with the same packet id [MQTT-4.4.0-1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: u64,
    pub packet_id: u16,
    pub released: bool,
}

/// What a queue recorded since the last `take_ops`.
#[derive(Debug, Default)]
pub struct QueueOps {
    pub puts: Vec<(u64, QueuedMessage)>,
    pub done: Vec<u64>,
    pub sent: Vec<Sent>,
}

impl QueueLog {
    pub fn new(queue_id: u64, written_at: usize) -> QueueLog {
        QueueLog {
            queue_id,
            next_seq: 1,
            written_at,
            puts: Vec::new(),
            done: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Puts and ends not yet handed to the log.
    pub fn has_ops(&self) -> bool {
        !self.puts.is_empty() || !self.done.is_empty() || !self.sent.is_empty()
    }

    /// The puts (sequence number, message as delivered), ends and window
    /// changes not yet written, taken.
    pub fn take_ops(&mut self) -> QueueOps {
        QueueOps {
            puts: std::mem::take(&mut self.puts)
                .into_iter()
                .map(|(seq, q)| (seq, QueuedMessage::from(q)))
                .collect(),
            done: std::mem::take(&mut self.done),
            sent: std::mem::take(&mut self.sent),
        }
    }

    /// The sequence number the next persisted message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// A queued message as it is delivered: the message with the QoS, RETAIN
/// flag and subscription identifiers of this subscriber's delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub message: SharedMessage,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<crate::codec::SubscriptionId>,
}

impl From<Queued> for QueuedMessage {
    fn from(q: Queued) -> QueuedMessage {
        QueuedMessage {
            message: q.message,
            qos: q.qos,
            retain: q.retain,
            subscription_ids: q.subscription_ids,
        }
    }
}

impl SessionState {
    /// The queue's log, when the session is persisted.
    pub fn queue_log(&self) -> Option<&QueueLog> {
        self.persist.as_deref()
    }

    pub fn queue_log_mut(&mut self) -> Option<&mut QueueLog> {
        self.persist.as_deref_mut()
    }

    /// Persists (or stops persisting) this session's queue from now on.
    pub fn set_queue_log(&mut self, log: Option<QueueLog>) {
        self.persist = log.map(Box::new);
    }

    /// The sequence number for a message queued at `qos`: 0 unless the
    /// queue is persisted and the message is QoS 1/2.
    pub(super) fn seq_for(&mut self, qos: QoS) -> u64 {
        match self.persist.as_deref_mut() {
            Some(log) if qos != QoS::AtMostOnce => {
                let seq = log.next_seq;
                log.next_seq += 1;
                seq
            }
            _ => 0,
        }
    }

    /// Numbers every QoS 1/2 message held, for a queue new to persistence
    /// (a session whose expiry became > 0): numbers from an earlier queue
    /// id mean nothing under the new one.
    pub fn number_all(&mut self) {
        let Some(log) = self.persist.as_deref_mut() else {
            return;
        };
        let mut next = log.next_seq;
        let mut number = |seq: &mut u64, qos: QoS| {
            *seq = 0;
            if qos != QoS::AtMostOnce {
                *seq = next;
                next += 1;
            }
        };
        for f in &mut self.inflight {
            match (f.publish.as_mut(), f.state) {
                (Some(e), InflightState::Qos1Sent | InflightState::Qos2Sent) => {
                    let qos = e.qos();
                    number(&mut f.seq, qos);
                    e.set_seq(f.seq);
                }
                // Past PUBREC: its PUBREL is owed.
                (_, InflightState::Released) => number(&mut f.seq, QoS::ExactlyOnce),
                _ => f.seq = 0,
            }
        }
        for e in &mut self.queue {
            let (mut seq, qos) = (e.seq(), e.qos());
            number(&mut seq, qos);
            e.set_seq(seq);
        }
        log.next_seq = next;
    }

    /// A persisted message entered the queue.
    pub(super) fn log_put(&mut self, queued: &Queued) {
        if queued.seq == 0 {
            return;
        }
        if let Some(log) = self.persist.as_deref_mut() {
            log.puts.push((queued.seq, queued.clone()));
        }
    }

    /// A persisted message went in flight under `packet_id`, or (released)
    /// its PUBREC came.
    pub(super) fn log_sent(&mut self, seq: u64, packet_id: u16, released: bool) {
        if seq == 0 {
            return;
        }
        if let Some(log) = self.persist.as_deref_mut() {
            log.sent.push(Sent {
                seq,
                packet_id,
                released,
            });
        }
    }

    /// The persisted messages in flight, in window order.
    pub fn persisted_window(&self) -> Vec<Sent> {
        self.inflight
            .iter()
            .filter(|f| f.seq != 0)
            .map(|f| Sent {
                seq: f.seq,
                packet_id: f.packet_id.get(),
                released: f.state == InflightState::Released,
            })
            .collect()
    }

    /// An exchange read back from disk at start, resumed with its packet id
    /// on the client's return: PUBLISH again with DUP (`message`), or, once
    /// released, PUBREL [MQTT-4.4.0-1]. Call before `restore_queued`, in
    /// window order.
    pub fn restore_inflight(&mut self, sent: Sent, message: Option<QueuedMessage>) {
        let Some(packet_id) = crate::codec::PacketId::new(sent.packet_id) else {
            return;
        };
        if let Some(log) = self.persist.as_deref_mut() {
            log.next_seq = log.next_seq.max(sent.seq.saturating_add(1));
        }
        let (state, publish) = match (sent.released, message) {
            (true, _) => (InflightState::Released, None),
            (false, Some(m)) => {
                let state = if m.qos == QoS::ExactlyOnce {
                    InflightState::Qos2Sent
                } else {
                    InflightState::Qos1Sent
                };
                let queued = Queued {
                    message: m.message,
                    qos: m.qos,
                    retain: m.retain,
                    subscription_ids: m.subscription_ids,
                    seq: sent.seq,
                    restored: true,
                };
                (state, Some(Entry::Memory(queued)))
            }
            (false, None) => return,
        };
        self.restore_window_entry(packet_id, state, publish, sent.seq);
    }

    /// A persisted message left the queue for good (acknowledged, dropped,
    /// expired or lost).
    pub(super) fn log_done(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        if let Some(log) = self.persist.as_deref_mut() {
            log.done.push(seq);
        }
    }

    /// Every persisted message still owed, in sequence order: those in
    /// flight (not past PUBREC), then the queue. Stored ones are numbers to
    /// copy from the log (second list) where `copy` allows, else read back
    /// without releasing them; one that cannot be read is left out (it is
    /// lost, and counted when it is next read).
    pub fn persisted_entries(
        &self,
        lease: &mut Lease<'_>,
        copy: impl Fn(u64) -> bool,
    ) -> (Vec<(u64, QueuedMessage)>, Vec<u64>) {
        let (mut out, mut copies) = (Vec::new(), Vec::new());
        let mut push = |seq: u64, e: &Entry| {
            if seq == 0 {
                return;
            }
            match e {
                Entry::Memory(q) => out.push((seq, QueuedMessage::from(q.clone()))),
                Entry::Stored(_) if copy(seq) => copies.push(seq),
                Entry::Stored(s) => {
                    if let Ok(m) = lease.read(s.at) {
                        out.push((seq, QueuedMessage::from(s.with_message(m))));
                    }
                }
            }
        };
        for f in &self.inflight {
            if let (InflightState::Qos1Sent | InflightState::Qos2Sent, Some(e)) =
                (f.state, &f.publish)
            {
                push(f.seq, e);
            }
        }
        for e in &self.queue {
            push(e.seq(), e);
        }
        out.sort_by_key(|(seq, _)| *seq);
        (out, copies)
    }

    /// A message read back from the disk at start: queued in memory if it
    /// fits, else in the store, else in memory anyway (it was acknowledged
    /// to its publisher: it is not dropped for a bound set after). Queued
    /// at the back: recovery streams messages in the order of the files,
    /// which is not always the queue's (a rewrite writes the messages in
    /// memory before the spilled ones), so `sort_restored` puts them in
    /// order once all are in.
    pub fn restore_queued(
        &mut self,
        seq: u64,
        m: QueuedMessage,
        limit: &QueueLimit,
        lease: &mut Lease<'_>,
    ) {
        if let Some(log) = self.persist.as_deref_mut() {
            log.next_seq = log.next_seq.max(seq.saturating_add(1));
        }
        let queued = Queued {
            message: m.message,
            qos: m.qos,
            retain: m.retain,
            subscription_ids: m.subscription_ids,
            seq,
            restored: true,
        };
        let cost = memory_cost(&queued.message);
        let fits = lease.fits_memory(&self.held, self.queue.len() - self.spilled_len, cost, limit);
        if !fits && lease.may_append(&self.held) {
            if let Ok(at) = lease.append(&mut self.held, &queued.message) {
                self.spilled_len += 1;
                self.queue
                    .push_back(Entry::Stored(Stored::new(at, &queued)));
                return;
            }
        }
        lease.hold_memory(&mut self.held, cost);
        self.queue.push_back(Entry::Memory(queued));
    }

    /// After the last `restore_queued`: the queue in its numbers' order
    /// (one sort, n log n), so delivery
    /// keeps the publish order [MQTT-4.6.0-6]. A queue no longer persisted
    /// (`subscriberQueue` became None) then forgets the numbers.
    pub fn sort_restored(&mut self) {
        // Restored numbers are distinct: no stable sort's scratch buffer.
        self.queue
            .make_contiguous()
            .sort_unstable_by_key(Entry::seq);
        if self.persist.is_none() {
            self.queue.iter_mut().for_each(|e| e.set_seq(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::ShardBuffer;
    use crate::session::Message;
    use std::sync::Arc;
    use std::time::Duration;

    fn queued(n: u64) -> QueuedMessage {
        QueuedMessage {
            message: Arc::new(Message {
                topic: crate::topic::TopicName::try_from("t").unwrap_or_else(|_| unreachable!()),
                payload: bytes::Bytes::from(n.to_string()),
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
        }
    }

    /// Recovery streams a queue in its files' order; a queue written whole
    /// again after a move puts lower numbers after higher ones. Each lands
    /// at its number's place, so delivery keeps the publish order
    /// [MQTT-4.6.0-6].
    #[test]
    fn restored_messages_take_their_numbers_place() {
        let mut s = SessionState::new("c".into(), Duration::from_secs(60));
        s.set_queue_log(Some(QueueLog::new(1, 0)));
        let mut buffer = ShardBuffer::memory_only();
        let mut lease = buffer.lease(1);
        let limit = QueueLimit::default();
        for seq in [4, 5, 9, 1, 2, 7, 3, 10] {
            s.restore_queued(seq, queued(seq), &limit, &mut lease);
        }
        s.sort_restored();
        let order: Vec<u64> = s.queue.iter().map(Entry::seq).collect();
        assert_eq!(order, [1, 2, 3, 4, 5, 7, 9, 10]);
        assert_eq!(s.persist.as_ref().map(|l| l.next_seq), Some(11));
    }

    /// A queue no longer persisted keeps the order of its numbers, then
    /// drops them (0: not on disk).
    #[test]
    fn a_queue_no_longer_persisted_is_sorted_then_unnumbered() {
        let mut s = SessionState::new("c".into(), Duration::from_secs(60));
        let mut buffer = ShardBuffer::memory_only();
        let mut lease = buffer.lease(1);
        let limit = QueueLimit::default();
        for seq in [3, 1, 2] {
            s.restore_queued(seq, queued(seq), &limit, &mut lease);
        }
        s.sort_restored();
        let payloads: Vec<_> = s
            .queue
            .iter()
            .map(|e| match e {
                Entry::Memory(q) => (q.seq, q.message.payload.clone()),
                Entry::Stored(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            payloads,
            [(0, "1".into()), (0, "2".into()), (0, "3".into())]
        );
    }

    /// A shard whose persistence log is at its limit: a persisted queue
    /// refuses QoS 1/2 messages as a full queue (never acknowledged and
    /// left off the disk); QoS 0 and queues not persisted are unaffected.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant
    fn a_full_log_refuses_persisted_qos1_only() {
        use crate::session::Enqueued;
        use crate::topic::Delivery;
        let now = std::time::Instant::now();
        let mut buffer = ShardBuffer::memory_only();
        buffer.set_persist_full(true);
        let limit = QueueLimit::default();
        let at = |qos| Delivery {
            granted_qos: qos,
            ..Delivery::default()
        };
        let m = queued(1).message;
        let mut persisted = SessionState::new("p".into(), Duration::from_secs(60));
        persisted.set_queue_log(Some(QueueLog::new(1, 0)));
        let mut lease = buffer.lease(1);
        let outcome = persisted.enqueue(now, &m, &at(QoS::AtLeastOnce), true, &limit, &mut lease);
        assert_eq!(outcome, Enqueued::RejectedQueueFull);
        let outcome = persisted.enqueue(now, &m, &at(QoS::AtMostOnce), true, &limit, &mut lease);
        assert_eq!(outcome, Enqueued::Queued, "QoS 0 is never persisted");
        let mut memory = SessionState::new("m".into(), Duration::from_secs(60));
        let mut lease = buffer.lease(2);
        let outcome = memory.enqueue(now, &m, &at(QoS::AtLeastOnce), true, &limit, &mut lease);
        assert_eq!(outcome, Enqueued::Queued, "a queue not persisted");
    }
}
