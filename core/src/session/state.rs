//! Session state (MQTT 5.0 §4.1): what outlives a network connection and
//! moves between shards on takeover: subscriptions, the outbound queue and
//! in-flight window, and the QoS 2 packet ids received but not released.
//! It is plain data (`Send`), never touches a socket and never reads a clock.
//! The queue's operations, and what it holds in the shard's buffer, are in
//! `queue`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytestring::ByteString;

use crate::buffer::{Held, RecordRef};
use crate::codec::{PacketId, SubscriptionId, SubscriptionOptions};
use crate::topic::Filter;

use super::queue::Entry;

/// One subscription as the session holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: Filter,
    pub options: SubscriptionOptions,
    /// Subscription Identifier (v5 §3.8.2.1.2).
    pub id: Option<SubscriptionId>,
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
    /// Position of `packet_id` in the session's id sequence
    /// (`allocate_packet_id`).
    pub serial: u64,
    pub state: InflightState,
    /// `None` once PUBREC arrived: from then on only PUBREL is resent. A
    /// message sent from the disk buffer stays there (`Entry::Stored`): its
    /// record is released when the exchange ends and read again only to
    /// resend it after a reconnect, so a draining window holds no payloads.
    pub publish: Option<Entry>,
    /// Its sequence number in the persisted queue (0: not persisted).
    pub seq: u64,
}

/// Counters a session keeps for metrics and the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub dropped_queue_full: u64,
    pub dropped_expired: u64,
    pub dropped_too_large: u64,
    /// Spilled messages that could not be read back (failed authentication
    /// or checksum): lost, never delivered.
    pub dropped_lost: u64,
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
    /// INVARIANT: `held`'s memory bytes are the `memory_cost` sum of the
    /// `Memory` entries and `spilled_len` the number of `Stored` ones;
    /// its disk bytes the record bytes (`RecordRef::len`) of every record
    /// this session holds in the store: queued, in flight and retired.
    pub(crate) queue: VecDeque<Entry>,
    pub(super) held: Held,
    pub(super) spilled_len: usize,
    /// QoS 2 packet ids received (PUBREC sent) and not yet released by
    /// PUBREL: a PUBLISH with one of these ids is a duplicate [MQTT-4.3.3-10].
    pub(crate) incoming_qos2: HashSet<PacketId>,
    /// Records of in-flight messages whose exchange ended (PUBACK arrives
    /// without access to the buffer): released at the next
    /// `release_retired`, or by `discard_queue`/`unspill`.
    pub(super) retired: Vec<RecordRef>,
    next_packet_id: u16,
    /// Ids stepped through by `allocate_packet_id` so far.
    packet_id_steps: u64,
    pub stats: SessionStats,
    /// The persisted queue's log (`None`: the session is not persisted).
    pub(crate) persist: Option<Box<super::persist::QueueLog>>,
}

impl SessionState {
    pub fn new(client_id: ByteString, expiry_interval: Duration) -> SessionState {
        SessionState {
            client_id,
            subscriptions: HashMap::new(),
            expiry_interval,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            held: Held::default(),
            spilled_len: 0,
            incoming_qos2: HashSet::new(),
            retired: Vec::new(),
            next_packet_id: 1,
            packet_id_steps: 0,
            stats: SessionStats::default(),
            persist: None,
        }
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&ByteString, &Subscription)> {
        self.subscriptions.iter()
    }

    /// Keeps the subscriptions `allowed` accepts; returns the others'
    /// filters, removed.
    pub(crate) fn retain_subscriptions(
        &mut self,
        allowed: impl Fn(&Filter) -> bool,
    ) -> Vec<ByteString> {
        let mut revoked = Vec::new();
        self.subscriptions.retain(|raw, sub| {
            let keep = allowed(&sub.filter);
            if !keep {
                revoked.push(raw.clone());
            }
            keep
        });
        revoked
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

    /// Allocates a packet id not in use by an outgoing exchange
    /// [MQTT-2.2.1-4], with its serial for `Inflight::serial`. `None` only
    /// if all 65535 are in flight.
    pub(crate) fn allocate_packet_id(&mut self) -> Option<(PacketId, u64)> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let candidate = self.next_packet_id;
            let serial = self.packet_id_steps;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            self.packet_id_steps += 1;
            let id = PacketId::new(candidate)?;
            // PERF: ids come in a sequence of period 65535, and the front
            // of `inflight` is the oldest allocation still open. If it is
            // less than a period back, every open id is one of the last
            // 65534 and none can equal this one: no scan (a drain with a
            // wide Receive Maximum would otherwise scan thousands per id).
            let recent = self
                .inflight
                .front()
                .is_none_or(|f| serial - f.serial < u64::from(u16::MAX));
            if recent || !self.inflight.iter().any(|f| f.packet_id == id) {
                return Some((id, serial));
            }
        }
    }

    /// Appends a restored exchange to the window. Its serial is far behind
    /// the ids allocated from now on, so `allocate_packet_id` checks every
    /// id in flight rather than trusting the sequence.
    pub(super) fn restore_window_entry(
        &mut self,
        packet_id: PacketId,
        state: InflightState,
        publish: Option<Entry>,
        seq: u64,
    ) {
        self.packet_id_steps = self.packet_id_steps.max(u64::from(u16::MAX) * 2);
        self.next_packet_id = packet_id.get().checked_add(1).unwrap_or(1);
        self.inflight.push_back(Inflight {
            packet_id,
            serial: 0,
            state,
            publish,
            seq,
        });
    }

    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        // PERF: acknowledgements nearly always arrive in order, so the entry
        // is found at the front.
        self.inflight.iter().position(|f| f.packet_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(state: &mut SessionState) -> PacketId {
        let (packet_id, serial) = state.allocate_packet_id().unwrap();
        state.inflight.push_back(Inflight {
            packet_id,
            serial,
            state: InflightState::Qos1Sent,
            publish: None,
            seq: 0,
        });
        packet_id
    }

    #[test]
    fn packet_id_still_in_flight_after_a_full_wrap_is_skipped() {
        // [MQTT-2.2.1-4] an id is not reused while its exchange is open.
        let mut s = SessionState::new("c".into(), Duration::ZERO);
        let stuck = open(&mut s);
        for _ in 0..70_000 {
            let id = open(&mut s);
            assert_ne!(id, stuck);
            // Everything but the stuck one completes at once.
            s.inflight.pop_back();
        }
    }

    #[test]
    fn packet_ids_of_a_wide_window_are_distinct() {
        let mut s = SessionState::new("c".into(), Duration::ZERO);
        let mut seen = HashSet::new();
        for _ in 0..65_535 {
            assert!(seen.insert(open(&mut s)));
        }
        assert!(s.allocate_packet_id().is_none(), "all 65535 in flight");
    }
}
