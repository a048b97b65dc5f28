//! Session state (MQTT 5.0 §4.1): what outlives a network connection and
//! moves between shards on takeover: subscriptions, the outbound queue and
//! in-flight window, and the QoS 2 packet ids received but not released.
//! It is plain data (`Send`), never touches a socket and never reads a clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytestring::ByteString;

use crate::codec::{PacketId, QoS, SubscriptionOptions};
use crate::limits::{QueueFullStrategy, QueueLimit};
use crate::topic::Filter;

use super::message::SharedMessage;

/// One subscription as the session holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: Filter,
    pub options: SubscriptionOptions,
    /// Subscription Identifier (v5 §3.8.2.1.2).
    pub id: Option<u32>,
}

/// How one message is to be delivered to one session: the result of merging
/// every matching subscription of that session [MQTT-3.3.4-2/-3].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Maximum granted QoS of the matching subscriptions.
    pub granted_qos: QoS,
    /// Retain As Published on any matching subscription.
    pub retain_as_published: bool,
    /// Sent because of a new subscription (from the retained store): the
    /// RETAIN flag is then set [MQTT-3.3.1-8].
    pub from_retained: bool,
    /// Identifiers of all matching subscriptions that have one.
    pub subscription_ids: Vec<u32>,
}

/// What became of a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued (or put in flight) for delivery.
    Queued,
    /// Queued after dropping the oldest queued message (`DropOldest`).
    DroppedOldest,
    /// Not queued: the queue is full and the strategy is `None`.
    RejectedQueueFull,
    /// Not queued: QoS 0 to an offline session, or already expired.
    Discarded,
}

/// A message waiting for a slot in the in-flight window.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub message: SharedMessage,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// Where an outgoing QoS 1/2 exchange stands (§4.3.2, §4.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflightState {
    /// PUBLISH sent (or to be sent) at QoS 1; waiting for PUBACK.
    Qos1Sent,
    /// PUBLISH sent at QoS 2; waiting for PUBREC.
    Qos2Sent,
    /// PUBREL sent; waiting for PUBCOMP. The message itself is released.
    Released,
}

#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub packet_id: PacketId,
    pub state: InflightState,
    /// `None` once PUBREC arrived: from then on only PUBREL is resent.
    pub publish: Option<Queued>,
}

/// Counters a session keeps for metrics and the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub dropped_queue_full: u64,
    pub dropped_expired: u64,
    pub dropped_too_large: u64,
}

/// The state of one MQTT session.
#[derive(Debug, Clone)]
pub struct SessionState {
    pub client_id: ByteString,
    /// Keyed by the filter exactly as subscribed (`$share/g/f` and `f` are
    /// different subscriptions).
    pub(crate) subscriptions: HashMap<ByteString, Subscription>,
    /// Session Expiry Interval in force (after the broker's cap).
    pub expiry_interval: Duration,
    /// INVARIANT: entries are in the order their PUBLISH was first sent, so a
    /// resumed session resends in that order [MQTT-4.6.0-1].
    pub(crate) inflight: VecDeque<Inflight>,
    pub(crate) queue: VecDeque<Queued>,
    /// QoS 2 packet ids received (PUBREC sent) and not yet released by
    /// PUBREL: a PUBLISH with one of these ids is a duplicate [MQTT-4.3.3-10].
    pub(crate) incoming_qos2: HashSet<PacketId>,
    next_packet_id: u16,
    pub stats: SessionStats,
}

impl SessionState {
    pub fn new(client_id: ByteString, expiry_interval: Duration) -> SessionState {
        SessionState {
            client_id,
            subscriptions: HashMap::new(),
            expiry_interval,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            next_packet_id: 1,
            stats: SessionStats::default(),
        }
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&ByteString, &Subscription)> {
        self.subscriptions.iter()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Messages waiting for the in-flight window.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Outgoing QoS 1/2 exchanges not yet completed.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Offers a message to this session. QoS 0 to an offline session is
    /// discarded (the spec allows storing it; we keep offline queues for the
    /// messages a client was promised, as Mosquitto does by default).
    pub fn enqueue(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
        online: bool,
        limit: &QueueLimit,
    ) -> Enqueued {
        if message.is_expired(now) {
            self.stats.dropped_expired += 1;
            return Enqueued::Discarded;
        }
        let qos = message.qos.min(delivery.granted_qos);
        if qos == QoS::AtMostOnce && !online {
            return Enqueued::Discarded;
        }
        let mut outcome = Enqueued::Queued;
        if self.queue.len() >= limit.len_max() {
            match limit.strategy {
                QueueFullStrategy::None => {
                    self.stats.dropped_queue_full += 1;
                    return Enqueued::RejectedQueueFull;
                }
                QueueFullStrategy::DropOldest => {
                    self.queue.pop_front();
                    self.stats.dropped_queue_full += 1;
                    outcome = Enqueued::DroppedOldest;
                }
            }
        }
        // Retain flag on delivery: set for messages sent because of a new
        // subscription [MQTT-3.3.1-8]; otherwise kept only with Retain As
        // Published (v5), cleared for normal forwarding [MQTT-3.3.1-9].
        let retain = delivery.from_retained || (message.retain && delivery.retain_as_published);
        self.queue.push_back(Queued {
            message: message.clone(),
            qos,
            retain,
            subscription_ids: delivery.subscription_ids.clone(),
        });
        outcome
    }

    /// Allocates a packet id not in use by an outgoing exchange
    /// [MQTT-2.2.1-4]. `None` only if all 65535 are in flight.
    pub(crate) fn allocate_packet_id(&mut self) -> Option<PacketId> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        // PERF: ids are handed out in sequence, so a collision needs a full
        // wrap while the old exchange is still open; the scan is short.
        loop {
            let candidate = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let id = PacketId::new(candidate)?;
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return Some(id);
            }
        }
    }

    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        // PERF: acknowledgements nearly always arrive in order, so the entry
        // is found at the front.
        self.inflight.iter().position(|f| f.packet_id == id)
    }

    /// Drops expired messages from the queue, counting them.
    pub(crate) fn pop_live(&mut self, now: Instant) -> Option<Queued> {
        while let Some(q) = self.queue.pop_front() {
            if q.message.is_expired(now) {
                self.stats.dropped_expired += 1;
                continue;
            }
            return Some(q);
        }
        None
    }
}
