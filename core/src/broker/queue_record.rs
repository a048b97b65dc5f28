//! Persisted queued messages as log records (docs/PERSISTENCE.md "Queued
//! messages"): a put (one message for one session, with its sequence
//! number), a done (sequence numbers that left the queue for good) and a
//! state (a queue written whole: which sequence numbers are still owed). Records of
//! one queue may sit in several shards' files, which have no common order,
//! so every record is order-free: a sequence number any record calls dead
//! stays dead, and recovery keeps the puts no record calls dead.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::session_record::{delete_message, Reader};
use crate::buffer::{record, RecordError};
use crate::codec::{QoS, SubscriptionId};
use crate::session::{Message, QueuedMessage, Sent};
use std::sync::Arc;

const FORMAT: u8 = 1;

/// One persisted message of one session's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePut {
    pub client_id: ByteString,
    pub queue_id: u64,
    pub seq: u64,
    pub queued: QueuedMessage,
}

/// Sequence numbers of a queue that were acknowledged, dropped or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDone {
    pub client_id: ByteString,
    pub queue_id: u64,
    pub seqs: Vec<u64>,
}

/// The in-flight window of a queue: each persisted message sent under a
/// packet id, released once its PUBREC came. A later record of the same
/// sequence number wins where they differ (released only grows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSent {
    pub client_id: ByteString,
    pub queue_id: u64,
    pub entries: Vec<Sent>,
}

impl QueueSent {
    pub fn to_message(&self) -> Message {
        let mut p = BytesMut::with_capacity(13 + 11 * self.entries.len());
        header(&mut p, self.queue_id);
        p.put_u32(self.entries.len() as u32);
        for e in &self.entries {
            p.put_u64(e.seq);
            p.put_u16(e.packet_id);
            p.put_u8(u8::from(e.released));
        }
        carrier(&self.client_id, p)
    }

    pub fn from_message(message: &Message) -> Result<QueueSent, RecordError> {
        let (mut r, queue_id) = open(message)?;
        let n = r.u32()? as usize;
        if n > r.0.len() / 11 {
            return Err(RecordError::Malformed("queue record count"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = r.u64()?;
            let id = r.take(2)?;
            let packet_id = u16::from_be_bytes([id[0], id[1]]);
            let released = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(RecordError::Malformed("queue record released flag")),
            };
            if packet_id == 0 {
                return Err(RecordError::Malformed("queue record packet id"));
            }
            entries.push(Sent {
                seq,
                packet_id,
                released,
            });
        }
        done_reading(&r)?;
        Ok(QueueSent {
            client_id: message.origin.clone(),
            queue_id,
            entries,
        })
    }
}

/// A queue written whole (at a rewrite, when it moved to this shard, or
/// when it became persisted): below `floor` nothing is owed; in
/// `floor..next` only the numbers in `live` (sorted, disjoint `[start,
/// end)` runs) are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    pub client_id: ByteString,
    pub queue_id: u64,
    pub floor: u64,
    pub next: u64,
    pub live: Vec<(u64, u64)>,
}

impl QueueState {
    /// The state of a queue owing `seqs` (ascending) whose next number is
    /// `next`.
    pub fn of(client_id: ByteString, queue_id: u64, next: u64, seqs: &[u64]) -> QueueState {
        let mut live: Vec<(u64, u64)> = Vec::new();
        for &s in seqs {
            match live.last_mut() {
                Some((_, end)) if *end == s => *end = s + 1,
                _ => live.push((s, s + 1)),
            }
        }
        QueueState {
            client_id,
            queue_id,
            floor: seqs.first().copied().unwrap_or(next),
            next,
            live,
        }
    }

    /// Whether this state says `seq` is no longer owed.
    pub fn is_dead(&self, seq: u64) -> bool {
        if seq < self.floor {
            return true;
        }
        if seq >= self.next {
            return false;
        }
        let i = self.live.partition_point(|(_, end)| *end <= seq);
        self.live.get(i).is_none_or(|(start, _)| *start > seq)
    }
}

/// A queue's records when written whole: its state, every message owed,
/// then its in-flight window.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    pub state: Option<QueueState>,
    pub puts: Vec<QueuePut>,
    /// Owed messages whose puts the writer copies from the log it
    /// replaces, by sequence number, sorted: they are spilled to the disk
    /// buffer, and reading them back would put the backlog in memory.
    pub copies: Vec<u64>,
    pub sent: Option<QueueSent>,
}

impl QueueSnapshot {
    /// A queue written whole (at a rewrite, a move, recovery): `owed` its
    /// messages at hand, `copies` those to copy from the old log, `window`
    /// its exchanges in flight. Still owed are the messages and the
    /// released exchanges (their PUBREL).
    pub fn whole(
        client_id: &ByteString,
        queue_id: u64,
        next: u64,
        mut owed: Vec<(u64, QueuedMessage)>,
        mut copies: Vec<u64>,
        window: Vec<Sent>,
    ) -> QueueSnapshot {
        owed.sort_by_key(|(seq, _)| *seq);
        copies.sort_unstable();
        let mut seqs: Vec<u64> = owed.iter().map(|(s, _)| *s).collect();
        seqs.extend(&copies);
        seqs.extend(window.iter().filter(|w| w.released).map(|w| w.seq));
        seqs.sort_unstable();
        seqs.dedup();
        QueueSnapshot {
            state: Some(QueueState::of(client_id.clone(), queue_id, next, &seqs)),
            puts: owed
                .into_iter()
                .map(|(seq, queued)| QueuePut {
                    client_id: client_id.clone(),
                    queue_id,
                    seq,
                    queued,
                })
                .collect(),
            copies,
            sent: (!window.is_empty()).then(|| QueueSent {
                client_id: client_id.clone(),
                queue_id,
                entries: window,
            }),
        }
    }
}

fn header(p: &mut BytesMut, queue_id: u64) {
    p.put_u8(FORMAT);
    p.put_u64(queue_id);
}

fn open<'a>(message: &'a Message) -> Result<(Reader<'a>, u64), RecordError> {
    let mut r = Reader(&message.payload);
    if r.u8()? != FORMAT {
        return Err(RecordError::Malformed("unknown queue record format"));
    }
    let queue_id = r.u64()?;
    Ok((r, queue_id))
}

fn done_reading(r: &Reader<'_>) -> Result<(), RecordError> {
    if r.0.is_empty() {
        Ok(())
    } else {
        Err(RecordError::Malformed("queue record trailing bytes"))
    }
}

/// A record message carrying `payload` for `client_id` (the topic is never
/// routed: records are messages in the buffer's format).
fn carrier(client_id: &ByteString, payload: BytesMut) -> Message {
    Message {
        payload: payload.freeze(),
        ..delete_message(client_id)
    }
}

impl QueuePut {
    /// The message is nested as a record of its own, its expiry counted
    /// from `epoch` like the log's records.
    pub fn to_message(&self, epoch: Instant) -> Result<Message, RecordError> {
        let mut p = BytesMut::new();
        header(&mut p, self.queue_id);
        p.put_u64(self.seq);
        p.put_u8(self.queued.qos as u8);
        p.put_u8(u8::from(self.queued.retain));
        p.put_u32(self.queued.subscription_ids.len() as u32);
        for id in &self.queued.subscription_ids {
            p.put_u32(id.get());
        }
        let mut nested = Vec::new();
        record::encode(&mut nested, 0, &self.queued.message, epoch)?;
        p.put_slice(&nested);
        Ok(carrier(&self.client_id, p))
    }

    pub fn from_message(message: &Message, epoch: Instant) -> Result<QueuePut, RecordError> {
        let (mut r, queue_id) = open(message)?;
        let seq = r.u64()?;
        let qos = match r.u8()? {
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return Err(RecordError::Malformed("queue record qos")),
        };
        let retain = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(RecordError::Malformed("queue record retain flag")),
        };
        let n = r.u32()? as usize;
        if n > r.0.len() / 4 {
            return Err(RecordError::Malformed("queue record subscription id count"));
        }
        let mut subscription_ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = SubscriptionId::new(r.u32()?)
                .ok_or(RecordError::Malformed("queue record subscription id"))?;
            subscription_ids.push(id);
        }
        let nested = r.0;
        let (rlen, owner) = record::header(nested)?;
        if rlen != nested.len() {
            return Err(RecordError::Malformed("queue record message length"));
        }
        let inner = record::decode(nested, owner, epoch)?;
        Ok(QueuePut {
            client_id: message.origin.clone(),
            queue_id,
            seq,
            queued: QueuedMessage {
                message: Arc::new(inner),
                qos,
                retain,
                subscription_ids,
            },
        })
    }
}

impl QueueDone {
    pub fn to_message(&self) -> Message {
        let mut p = BytesMut::with_capacity(13 + 8 * self.seqs.len());
        header(&mut p, self.queue_id);
        p.put_u32(self.seqs.len() as u32);
        for s in &self.seqs {
            p.put_u64(*s);
        }
        carrier(&self.client_id, p)
    }

    pub fn from_message(message: &Message) -> Result<QueueDone, RecordError> {
        let (mut r, queue_id) = open(message)?;
        let n = r.u32()? as usize;
        if n > r.0.len() / 8 {
            return Err(RecordError::Malformed("queue record count"));
        }
        let seqs = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
        done_reading(&r)?;
        Ok(QueueDone {
            client_id: message.origin.clone(),
            queue_id,
            seqs,
        })
    }
}

impl QueueState {
    pub fn to_message(&self) -> Message {
        let mut p = BytesMut::with_capacity(29 + 16 * self.live.len());
        header(&mut p, self.queue_id);
        p.put_u64(self.floor);
        p.put_u64(self.next);
        p.put_u32(self.live.len() as u32);
        for (a, b) in &self.live {
            p.put_u64(*a);
            p.put_u64(*b);
        }
        carrier(&self.client_id, p)
    }

    pub fn from_message(message: &Message) -> Result<QueueState, RecordError> {
        let (mut r, queue_id) = open(message)?;
        let floor = r.u64()?;
        let next = r.u64()?;
        let n = r.u32()? as usize;
        if n > r.0.len() / 16 {
            return Err(RecordError::Malformed("queue record count"));
        }
        let mut live: Vec<(u64, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b) = (r.u64()?, r.u64()?);
            // Sorted and disjoint, or `is_dead`'s search is wrong.
            if a >= b || live.last().is_some_and(|(_, end)| *end > a) {
                return Err(RecordError::Malformed("queue record runs"));
            }
            live.push((a, b));
        }
        done_reading(&r)?;
        Ok(QueueState {
            client_id: message.origin.clone(),
            queue_id,
            floor,
            next,
            live,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicName;
    use std::time::Duration;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn put(epoch: Instant) -> QueuePut {
        let message = Message {
            topic: TopicName::try_from("plant/7/temp").unwrap_or_else(|_| unreachable!()),
            payload: bytes::Bytes::from_static(b"21.5"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Default::default(),
            expires_at: Some(epoch + Duration::from_secs(60)),
            origin: "sensor-7".into(),
            retain_stamp: 0,
        };
        QueuePut {
            client_id: "dashboard".into(),
            queue_id: 0xfeed_beef_0000_0001,
            seq: 42,
            queued: QueuedMessage {
                message: Arc::new(message),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![SubscriptionId::new(7).unwrap_or_else(|| unreachable!())],
            },
        }
    }

    #[test]
    fn records_read_back_and_every_cut_is_an_error() {
        let epoch = t0();
        let p = put(epoch);
        let m = p.to_message(epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(QueuePut::from_message(&m, epoch).ok(), Some(p));
        let d = QueueDone {
            client_id: "dashboard".into(),
            queue_id: 9,
            seqs: vec![3, 1, 2],
        };
        let dm = d.to_message();
        assert_eq!(QueueDone::from_message(&dm).ok(), Some(d));
        let s = QueueState::of("dashboard".into(), 9, 20, &[4, 5, 6, 9, 12, 13]);
        let sm = s.to_message();
        assert_eq!(QueueState::from_message(&sm).ok(), Some(s));
        let w = QueueSent {
            client_id: "dashboard".into(),
            queue_id: 9,
            entries: vec![
                Sent {
                    seq: 4,
                    packet_id: 65535,
                    released: true,
                },
                Sent {
                    seq: 5,
                    packet_id: 1,
                    released: false,
                },
            ],
        };
        let wm = w.to_message();
        assert_eq!(QueueSent::from_message(&wm).ok(), Some(w));
        let cut = |full: &Message, n: usize| Message {
            payload: full.payload.slice(..n),
            ..full.clone()
        };
        for n in 0..m.payload.len() {
            assert!(QueuePut::from_message(&cut(&m, n), epoch).is_err());
        }
        for n in 0..dm.payload.len() {
            assert!(QueueDone::from_message(&cut(&dm, n)).is_err());
        }
        for n in 0..sm.payload.len() {
            assert!(QueueState::from_message(&cut(&sm, n)).is_err());
        }
        for n in 0..wm.payload.len() {
            assert!(QueueSent::from_message(&cut(&wm, n)).is_err());
        }
    }

    #[test]
    fn a_state_calls_dead_what_it_does_not_owe_below_its_next_number() {
        let s = QueueState::of("c".into(), 1, 20, &[4, 5, 6, 9, 12, 13]);
        assert_eq!(s.floor, 4);
        assert_eq!(s.live, vec![(4, 7), (9, 10), (12, 14)]);
        let dead: Vec<u64> = (0..25).filter(|q| s.is_dead(*q)).collect();
        assert_eq!(dead, vec![0, 1, 2, 3, 7, 8, 10, 11, 14, 15, 16, 17, 18, 19]);
        // Empty: everything below `next` is done, nothing after is known.
        let e = QueueState::of("c".into(), 1, 8, &[]);
        assert!(e.is_dead(7) && !e.is_dead(8));
    }
}
