//! Retained messages across shards: each topic has an owner shard (hash of
//! the topic) that alone stores it, so concurrent publishes on different
//! shards cannot leave replicas disagreeing; a new subscription asks every
//! shard for the ones it owns that match. MQTT 5.0 §3.3.1.3. In a cluster
//! the owner keeps the change with the greatest stamp (`cluster::clock`),
//! and remembers stamped clears as tombstones.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use hashbrown::HashMap;

use super::pending::Pending;
use super::{ConnId, MeshMsg, Notice, RequestId, Shard, ShardId};
use crate::buffer::{memory_cost, Store};
use crate::cluster::clock;
use crate::codec::{QoS, ReasonCode};
use crate::session::{Delivery, Message, SharedMessage, Subscription};
use crate::topic::{Filter, TopicFilter, TopicName};

/// Tombstones one shard keeps at most, and their bytes (topic and client
/// id): a client clearing topics that never existed must not grow the
/// broker without bound. Past either, the oldest go first.
pub(super) const TOMBSTONES_MAX: usize = 16_384;
pub(super) const TOMBSTONE_BYTES_MAX: u64 = 4 << 20;

/// Stamped clears of retained topics, kept so that an older message for
/// the topic from a peer (a link that comes back, a healed partition, a
/// node restored from disk) does not bring the topic back. In memory only:
/// a restart forgets them (docs/CLUSTER.md says what that allows).
#[derive(Debug, Default)]
pub(super) struct Tombstones {
    by_topic: HashMap<TopicName, SharedMessage>,
    /// Oldest first; an entry whose stamp is no longer the topic's was
    /// replaced or removed and is skipped.
    order: VecDeque<(TopicName, u64)>,
    bytes: u64,
}

impl Tombstones {
    fn cost(m: &Message) -> u64 {
        (m.topic.as_str().len() + m.origin.len() + 64) as u64
    }

    pub(super) fn get(&self, topic: &TopicName) -> Option<&SharedMessage> {
        self.by_topic.get(topic)
    }

    pub(super) fn remove(&mut self, topic: &TopicName) {
        if let Some(old) = self.by_topic.remove(topic) {
            self.bytes -= Self::cost(&old);
        }
    }

    /// Records `clear` (its topic, stamp and publisher; nothing else).
    pub(super) fn insert(&mut self, clear: &Message) {
        // Copies: the clear's topic and origin are slices of the frame it
        // came in (a PUBLISH with any properties, a batch from a peer),
        // which `cost` does not count and a tombstone would keep alive.
        let topic = clear.topic.detached();
        let tombstone = Arc::new(Message {
            topic: topic.clone(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: bytestring::ByteString::from(&*clear.origin),
            retain_stamp: clear.retain_stamp,
        });
        self.remove(&topic);
        self.bytes += Self::cost(&tombstone);
        self.order.push_back((topic.clone(), clear.retain_stamp));
        self.by_topic.insert(topic, tombstone);
        while self.by_topic.len() > TOMBSTONES_MAX || self.bytes > TOMBSTONE_BYTES_MAX {
            let Some((topic, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.by_topic.get(&topic).map(|t| t.retain_stamp) == Some(stamp) {
                self.remove(&topic);
            }
        }
        // Entries of replaced or removed tombstones: dropped once they
        // outnumber the live ones, so `order` stays bounded too.
        if self.order.len() > 2 * self.by_topic.len() + 64 {
            let live = &self.by_topic;
            self.order
                .retain(|(t, stamp)| live.get(t).map(|m| m.retain_stamp) == Some(*stamp));
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &SharedMessage> {
        self.by_topic.values()
    }

    pub(super) fn len(&self) -> usize {
        self.by_topic.len()
    }
}

/// A connection's retained queries in progress (`Conn::retained_wait`).
/// A topic whose retained message a live one replaced while they waited
/// gets no retained message from them: it would be older, and arrive after
/// the newer one [MQTT-4.6.0-6] (a "last value" reader would keep the
/// stale value). A live message published without RETAIN changes nothing
/// retained, and does not count.
#[derive(Debug, Default)]
pub(super) struct RetainedWait {
    pub(super) queries: u32,
    pub(super) live_topics: hashbrown::HashSet<crate::topic::TopicName>,
}

/// Topics a `RetainedWait` records at most: a client that keeps
/// subscribing while retained topics change cannot grow it further (past
/// it, a retained answer may come after a newer live message again).
const RETAINED_WAIT_TOPICS_MAX: usize = 1024;

impl RetainedWait {
    pub(super) fn saw_live(&mut self, message: &crate::session::Message) {
        if message.retain && self.live_topics.len() < RETAINED_WAIT_TOPICS_MAX {
            self.live_topics.insert(message.topic.clone());
        }
    }
}

impl<S: Store> Shard<S> {
    /// Stores (or clears) a retained message this shard owns; the reason
    /// is Success or why it was refused, and the persistence sequence number
    /// the outcome must wait for when the change goes to disk.
    /// A stamped change older than what the topic holds (a message or a
    /// tombstone), or the same change again, changes nothing and is not
    /// written: Success, since the publish itself was routed.
    pub(super) fn apply_retained(&mut self, message: SharedMessage) -> (ReasonCode, Option<u64>) {
        match self.against_current(&message) {
            Ordering::Greater => {}
            Ordering::Equal => return (ReasonCode::Success, None),
            Ordering::Less => {
                self.stats.retained_stale += 1;
                return (ReasonCode::Success, None);
            }
        }
        let reason = self.store_retained(&message);
        let durable = self.persist_retained(&message, !reason.is_error());
        (reason, durable)
    }

    /// A change against the topic's current state (`clock::order`);
    /// `Greater` when the topic has none.
    fn against_current(&self, message: &Message) -> Ordering {
        if message.retain_stamp == 0 {
            return Ordering::Greater;
        }
        let tombstones = self.cluster.as_deref().map(|c| &c.tombstones);
        self.retained
            .get(&message.topic)
            .or_else(|| tombstones.and_then(|t| t.get(&message.topic)))
            .map_or(Ordering::Greater, |current| clock::order(message, current))
    }

    fn store_retained(&mut self, message: &SharedMessage) -> ReasonCode {
        let tombstones = match self.cluster.as_deref_mut() {
            Some(c) if message.retain_stamp != 0 => Some(&mut c.tombstones),
            _ => None,
        };
        // [MQTT-3.3.1-10/-11] an empty retained payload clears the topic.
        if message.payload.is_empty() {
            self.retained.clear(&message.topic);
            if let Some(t) = tombstones {
                t.insert(message);
            }
            return ReasonCode::Success;
        }
        let topic = message.topic.clone();
        let bytes = memory_cost(message);
        match self.retained.set(topic.clone(), message.clone(), bytes) {
            Ok(_) => {
                if let Some(t) = tombstones {
                    t.remove(&topic);
                }
                ReasonCode::Success
            }
            Err(e) => {
                self.stats.retained_refused += 1;
                // A publisher filling the store could fill the log too: the
                // first refusal, then one notice per 1024.
                if self.stats.retained_refused % 1024 == 1 {
                    self.notice(Notice::RetainedRefused {
                        topic: topic.as_byte_string().clone(),
                        bytes,
                        stored_bytes: self.retained.bytes(),
                        refused: self.stats.retained_refused,
                        reason: e.reason_code(),
                    });
                }
                e.reason_code()
            }
        }
    }

    /// A peer's retained publish for a topic this shard owns.
    pub(super) fn retain_set_arrived(
        &mut self,
        from: ShardId,
        message: SharedMessage,
        request: Option<RequestId>,
    ) {
        let (reason, durable) = self.apply_retained(message);
        match (request, durable) {
            (Some(request), Some(seq)) => self.wait_durable_peer(seq, from, request, reason),
            (Some(request), None) => self.post(from, MeshMsg::PublishDone { request, reason }),
            (None, _) => {}
        }
    }

    /// One of `conn`'s retained queries ended with `matches`: those whose
    /// retained message a live one replaced since the SUBSCRIBE are
    /// dropped (`RetainedWait`).
    pub(super) fn retained_done(&mut self, conn: ConnId, matches: &mut Vec<SharedMessage>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(wait) = c.retained_wait.as_mut() else {
            return;
        };
        matches.retain(|m| !wait.live_topics.contains(&m.topic));
        wait.queries = wait.queries.saturating_sub(1);
        if wait.queries == 0 {
            c.retained_wait = None;
        }
    }

    pub(super) fn retained_matches(&self, filter: &TopicFilter) -> Vec<SharedMessage> {
        let mut out = Vec::new();
        self.retained
            .for_each_match(filter, |_, m| out.push(m.clone()));
        out
    }

    /// Sends a new subscription the retained messages that match it,
    /// asking every shard for the topics it owns.
    pub(super) fn query_retained(
        &mut self,
        conn: ConnId,
        key: ByteString,
        sub: &Subscription,
        now: Instant,
    ) {
        let filter = match &sub.filter {
            Filter::Plain(f) => f.clone(),
            // Shared subscriptions get no retained messages (v5 §4.8.2).
            Filter::Shared { .. } => return self.retained_done(conn, &mut Vec::new()),
        };
        let delivery = Delivery {
            granted_qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            from_retained: true,
            subscription_ids: sub.id.into_iter().collect(),
        };
        let mut matches = self.retained_matches(&filter);
        let peers: Vec<_> = self.peers().collect();
        if peers.is_empty() {
            self.retained_done(conn, &mut matches);
            if !matches.is_empty() {
                self.deliver_retained(conn, now, matches, &delivery);
            }
            return;
        }
        let request = self.new_request(Pending::RetainedQuery {
            conn,
            key,
            subscription: sub.clone(),
            waiting: peers.len(),
            matches,
            delivery,
        });
        for peer in peers {
            self.post(
                peer,
                MeshMsg::RetainedQuery {
                    filter: filter.clone(),
                    request,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::cluster::tests::{shard, t0};

    fn change(topic: &str, payload: &'static [u8], stamp: u64) -> Message {
        Message {
            topic: TopicName::try_from(topic).unwrap_or_else(|_| unreachable!()),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: "p".into(),
            retain_stamp: stamp,
        }
    }

    /// What the shard would sync to a peer: (topic, payload, stamp), a
    /// tombstone with an empty payload.
    fn held(s: &crate::broker::Shard<crate::buffer::MemoryOnly>) -> Vec<(String, Vec<u8>, u64)> {
        let mut out: Vec<_> = s
            .cluster_retained_sync()
            .iter()
            .map(|m| (m.topic.to_string(), m.payload.to_vec(), m.retain_stamp))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_greatest_stamp_wins_and_a_clear_stays_as_a_tombstone() {
        let mut s = shard();
        let now = t0();
        s.handle_cluster_retained(vec![change("r", b"new", 10)], now);
        s.handle_cluster_retained(vec![change("r", b"old", 9)], now);
        assert_eq!(held(&s), [("r".into(), b"new".to_vec(), 10)]);
        assert_eq!(s.stats.retained_stale, 1);
        s.handle_cluster_retained(vec![change("r", b"", 11)], now);
        assert_eq!(held(&s), [("r".into(), Vec::new(), 11)]);
        // The same clear again (every sync carries it) changes nothing.
        s.handle_cluster_retained(vec![change("r", b"", 11)], now);
        let tombstones = &s
            .cluster
            .as_deref()
            .unwrap_or_else(|| unreachable!())
            .tombstones;
        assert_eq!((tombstones.len(), tombstones.order.len()), (1, 1));
        assert_eq!(s.stats.retained_stale, 1);
        // An older message does not bring the topic back...
        s.handle_cluster_retained(vec![change("r", b"older", 10)], now);
        assert_eq!(held(&s), [("r".into(), Vec::new(), 11)]);
        // ...a newer one does, and the tombstone goes.
        s.handle_cluster_retained(vec![change("r", b"newer", 12)], now);
        assert_eq!(held(&s), [("r".into(), b"newer".to_vec(), 12)]);
        // A clear of a topic never retained here is remembered too: a
        // peer may hold an older message for it.
        s.handle_cluster_retained(vec![change("q", b"", 3), change("q", b"x", 2)], now);
        assert_eq!(
            held(&s),
            [
                ("q".into(), Vec::new(), 3),
                ("r".into(), b"newer".to_vec(), 12)
            ]
        );
    }

    #[test]
    fn a_local_retained_publish_is_stamped_after_what_the_node_saw() {
        let mut s = shard();
        let now = t0();
        // A peer's `$` topic is not taken: those stay on their node.
        s.handle_cluster_retained(vec![change("$x", b"no", 50)], now);
        assert_eq!(held(&s), []);
        s.handle_cluster_retained(vec![change("r", b"remote", 40)], now);
        s.publish_message(now, Arc::new(change("r", b"local", 0)), None);
        assert_eq!(held(&s), [("r".into(), b"local".to_vec(), 41)]);
    }

    #[test]
    fn a_retained_message_counts_the_properties_it_keeps() {
        // A 1-byte payload with 512 KiB of user properties counted ~260
        // bytes against `retainedMessages.maxSize` (1 MiB here) while it
        // held them (its properties are slices of the PUBLISH's frame).
        let mut s = shard();
        let big = || {
            let mut m = change("r", b"x", 0);
            m.properties.user_properties =
                vec![("k".into(), bytestring::ByteString::from("v".repeat(1024))); 512];
            Arc::new(m)
        };
        s.publish_message(t0(), big(), None);
        assert_eq!(s.retained.len(), 1);
        assert!(s.retained.bytes() > 512 << 10, "{}", s.retained.bytes());
        // A second such message does not fit beside it.
        let mut other = (*big()).clone();
        other.topic = TopicName::try_from("q").unwrap_or_else(|_| unreachable!());
        s.publish_message(t0(), Arc::new(other), None);
        assert_eq!(s.retained.len(), 1);
    }

    #[test]
    fn a_tombstone_does_not_keep_the_frame_of_its_clear() {
        // The clear's topic and origin are slices of its frame; the
        // tombstone (counted as topic + origin + 64) keeps copies.
        let frame = bytes::Bytes::from(vec![b'a'; 1 << 20]);
        let within = |s: &str| frame.as_ptr_range().contains(&s.as_ptr());
        let mut clear = change("x", b"", 5);
        clear.topic = TopicName::new(
            bytestring::ByteString::try_from(frame.slice(0..8)).unwrap_or_else(|_| unreachable!()),
        )
        .unwrap_or_else(|_| unreachable!());
        clear.origin =
            bytestring::ByteString::try_from(frame.slice(8..16)).unwrap_or_else(|_| unreachable!());
        let mut t = Tombstones::default();
        t.insert(&clear);
        let kept = t.get(&clear.topic).unwrap_or_else(|| unreachable!());
        assert_eq!(kept.topic, clear.topic);
        assert!(!within(kept.topic.as_str()) && !within(&kept.origin));
        assert!(t.order.iter().all(|(topic, _)| !within(topic.as_str())));
        assert!(t.by_topic.keys().all(|topic| !within(topic.as_str())));
    }

    #[test]
    fn tombstones_are_bounded_in_count_and_bytes() {
        let mut t = Tombstones::default();
        for i in 0..TOMBSTONES_MAX + 100 {
            t.insert(&change(&format!("t/{i}"), b"", i as u64 + 1));
        }
        assert_eq!(t.by_topic.len(), TOMBSTONES_MAX);
        // The oldest went first.
        assert!(t
            .get(&TopicName::try_from("t/99").unwrap_or_else(|_| unreachable!()))
            .is_none());
        // The same topics cleared again and again: the order stays bounded.
        for round in 0..5u64 {
            for i in 0..100 {
                t.insert(&change(&format!("t/{i}"), b"", 1_000_000 + round * 100 + i));
            }
        }
        assert!(t.order.len() <= 2 * t.by_topic.len() + 64);
        let long = "x".repeat(60_000);
        let mut t = Tombstones::default();
        for i in 0..200 {
            t.insert(&change(&format!("{long}/{i}"), b"", i + 1));
        }
        assert!(t.bytes <= TOMBSTONE_BYTES_MAX);
        assert!(t.by_topic.len() < 200);
    }
}
