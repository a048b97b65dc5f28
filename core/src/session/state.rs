//! Session state (MQTT 5.0 §4.1): what outlives a network connection and
//! moves between shards on takeover: subscriptions, the outbound queue and
//! in-flight window, and the QoS 2 packet ids received but not released.
//! It is plain data (`Send`), never touches a socket and never reads a clock.
//! The queue holds messages in memory or, past the shard's memory budget,
//! references into the shard's disk buffer (`spill`), in one deque so the
//! order is kept whatever is where.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use crate::codec::{PacketId, QoS, SubscriptionOptions};
use crate::limits::{QueueFullStrategy, QueueLimit};
use crate::topic::Filter;

use super::message::SharedMessage;
use super::spill::{memory_cost, SpillCtx};
use crate::buffer::RecordRef;

/// Queue capacity (entries) a session keeps once its queue is empty.
const QUEUE_CAPACITY_KEPT: usize = 1024;

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

/// A queued message whose body is in the shard's disk buffer. Per-delivery
/// data stays here, not in the record (docs/BUFFER.md).
#[derive(Debug, Clone)]
pub(crate) struct Spilled {
    pub at: RecordRef,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

impl Spilled {
    /// The queued form of this message once read back as `m`.
    fn with_message(&self, m: super::message::Message) -> Queued {
        Queued {
            message: Arc::new(m),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.clone(),
        }
    }
}

/// One place in the session queue.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Memory(Queued),
    Spilled(Spilled),
}

impl Entry {
    pub fn is_spilled(&self) -> bool {
        matches!(self, Entry::Spilled(_))
    }

    pub fn qos(&self) -> QoS {
        match self {
            Entry::Memory(q) => q.qos,
            Entry::Spilled(s) => s.qos,
        }
    }
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
    /// message sent from the disk buffer stays there (`Entry::Spilled`): its
    /// record is released when the exchange ends and read again only to
    /// resend it after a reconnect, so a draining window holds no payloads.
    pub publish: Option<Entry>,
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
    /// INVARIANT: `memory_bytes` is the `memory_cost` sum of the `Memory`
    /// entries and `spilled_len` the number of `Spilled` ones.
    pub(crate) queue: VecDeque<Entry>,
    memory_bytes: u64,
    spilled_len: usize,
    /// INVARIANT: the record bytes (`RecordRef::len`) of every record this
    /// session holds in the disk buffer: queued, in flight and retired.
    disk_bytes: u64,
    /// QoS 2 packet ids received (PUBREC sent) and not yet released by
    /// PUBREL: a PUBLISH with one of these ids is a duplicate [MQTT-4.3.3-10].
    pub(crate) incoming_qos2: HashSet<PacketId>,
    /// Records of in-flight messages whose exchange ended (PUBACK arrives
    /// without access to the buffer): released at the next
    /// `release_retired`, or by `discard_queue`/`unspill`.
    retired: Vec<RecordRef>,
    next_packet_id: u16,
    /// Ids stepped through by `allocate_packet_id` so far.
    packet_id_steps: u64,
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
            memory_bytes: 0,
            spilled_len: 0,
            disk_bytes: 0,
            incoming_qos2: HashSet::new(),
            retired: Vec::new(),
            next_packet_id: 1,
            packet_id_steps: 0,
            stats: SessionStats::default(),
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

    /// Queued messages held in the shard's disk buffer.
    pub fn spilled_len(&self) -> usize {
        self.spilled_len
    }

    /// Records this session holds in the shard's disk buffer: queued,
    /// in flight, and retired but not yet released ([`Self::spilled_refs`]).
    pub fn buffer_records(&self) -> usize {
        let inflight = self
            .inflight
            .iter()
            .filter(|f| matches!(f.publish, Some(Entry::Spilled(_))))
            .count();
        self.spilled_len + inflight + self.retired.len()
    }

    /// What the queued in-memory messages count against the shard's memory
    /// budget ([`memory_cost`]).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Record bytes this session holds in the disk buffer, against its
    /// share (`SpillCtx::disk_share_bytes`).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Offers a message to this session, never spilling (see `enqueue_with`).
    pub fn enqueue(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
        online: bool,
        limit: &QueueLimit,
    ) -> Enqueued {
        self.enqueue_with(now, message, delivery, online, limit, None)
    }

    /// Offers a message to this session. QoS 0 to an offline session is
    /// discarded (the spec allows storing it; we keep offline queues for the
    /// messages a client was promised, as Mosquitto does by default).
    ///
    /// Without `spill` the queue holds at most `limit.len_max()` messages
    /// and `limit.bytes_max` bytes (`memory_cost`). With it, those bound
    /// what the session keeps in memory and the shard's memory budget bounds
    /// all sessions' bytes together; past any of them the message goes to
    /// the disk buffer, up to the session's share of it, and only when that
    /// refuses too does the queue count as full (`limit.strategy`).
    pub fn enqueue_with(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
        online: bool,
        limit: &QueueLimit,
        spill: Option<&mut SpillCtx<'_>>,
    ) -> Enqueued {
        if message.is_expired(now) {
            self.stats.dropped_expired += 1;
            return Enqueued::Discarded;
        }
        let qos = message.qos.min(delivery.granted_qos);
        if qos == QoS::AtMostOnce && !online {
            return Enqueued::Discarded;
        }
        // Retain flag on delivery: set for messages sent because of a new
        // subscription [MQTT-3.3.1-8]; otherwise kept only with Retain As
        // Published (v5), cleared for normal forwarding [MQTT-3.3.1-9].
        let retain = delivery.from_retained || (message.retain && delivery.retain_as_published);
        let queued = || Queued {
            message: message.clone(),
            qos,
            retain,
            subscription_ids: delivery.subscription_ids.clone(),
        };
        if let Some(ctx) = spill {
            // PERF: QoS 0 fan-in runs at hundreds of thousands of messages
            // a second per shard: the common case, in memory within every
            // bound, is three compares.
            let cost = memory_cost(message);
            if self.fits_memory(cost, limit, ctx) {
                self.push_memory_cost(queued(), cost, Some(ctx));
                return Enqueued::Queued;
            }
            return self.enqueue_spilling(queued(), cost, limit, ctx);
        }
        // PERF: the path without a shard (tests, tools): two checks.
        let cost = memory_cost(message);
        if cost > limit.bytes_max {
            // Could never fit: dropping older messages would not help.
            self.stats.dropped_queue_full += 1;
            return Enqueued::RejectedQueueFull;
        }
        let mut outcome = Enqueued::Queued;
        while self.queue.len() >= limit.len_max() || self.memory_bytes + cost > limit.bytes_max {
            let old = match limit.strategy {
                QueueFullStrategy::None => None,
                QueueFullStrategy::DropOldest => self.queue.pop_front(),
            };
            self.stats.dropped_queue_full += 1;
            let Some(old) = old else {
                return Enqueued::RejectedQueueFull;
            };
            self.drop_entry(old, None);
            outcome = Enqueued::DroppedOldest;
        }
        self.push_memory_cost(queued(), cost, None);
        outcome
    }

    /// Whether a message of `cost` may stay in memory: within the
    /// session's count and byte bounds and the shard's budget.
    fn fits_memory(&self, cost: u64, limit: &QueueLimit, ctx: &SpillCtx<'_>) -> bool {
        self.queue.len() - self.spilled_len < limit.len_max()
            && self.memory_bytes + cost <= limit.bytes_max
            && *ctx.memory_bytes + cost <= ctx.memory_budget_bytes
    }

    fn enqueue_spilling(
        &mut self,
        queued: Queued,
        cost: u64,
        limit: &QueueLimit,
        ctx: &mut SpillCtx<'_>,
    ) -> Enqueued {
        let memory_max = limit.bytes_max.min(ctx.memory_budget_bytes);
        if cost > memory_max && ctx.disk_share_bytes == 0 {
            // Could never fit: dropping older messages would not help.
            self.stats.dropped_queue_full += 1;
            return Enqueued::RejectedQueueFull;
        }
        let mut outcome = Enqueued::Queued;
        loop {
            if self.fits_memory(cost, limit, ctx) {
                self.push_memory(queued, Some(ctx));
                return outcome;
            }
            // Fair share: a session that stopped reading fills its part of
            // the buffer, not the whole shard's (docs/BUFFER.md). A record's
            // size is known once written: the share may be passed by one.
            if self.disk_bytes < ctx.disk_share_bytes {
                if let Ok(at) = ctx.spill.append(ctx.owner, &queued.message) {
                    self.spilled_len += 1;
                    self.disk_bytes += u64::from(at.len);
                    self.queue.push_back(Entry::Spilled(Spilled {
                        at,
                        qos: queued.qos,
                        retain: queued.retain,
                        subscription_ids: queued.subscription_ids,
                    }));
                    return outcome;
                }
            }
            // Memory and disk both refuse: the queue is full.
            if limit.strategy == QueueFullStrategy::None {
                self.stats.dropped_queue_full += 1;
                return Enqueued::RejectedQueueFull;
            }
            // DropOldest: drop from the front until the new message fits,
            // in memory (checked first) or on disk. A record's disk space
            // comes back only with its whole segment, so this may drop up
            // to a segment's worth of this session's oldest messages;
            // memory never goes past its bounds for it.
            let Some(old) = self.queue.pop_front() else {
                self.stats.dropped_queue_full += 1;
                return Enqueued::RejectedQueueFull;
            };
            self.stats.dropped_queue_full += 1;
            outcome = Enqueued::DroppedOldest;
            self.drop_entry(old, Some(ctx));
        }
    }

    fn push_memory(&mut self, queued: Queued, ctx: Option<&mut SpillCtx<'_>>) {
        let cost = memory_cost(&queued.message);
        self.push_memory_cost(queued, cost, ctx);
    }

    fn push_memory_cost(&mut self, queued: Queued, cost: u64, ctx: Option<&mut SpillCtx<'_>>) {
        self.memory_bytes += cost;
        if let Some(ctx) = ctx {
            *ctx.memory_bytes += cost;
        }
        self.queue.push_back(Entry::Memory(queued));
    }

    /// Puts a message taken by `pop_live` back at the front.
    pub(crate) fn push_front_memory(&mut self, queued: Queued, ctx: Option<&mut SpillCtx<'_>>) {
        let cost = memory_cost(&queued.message);
        self.memory_bytes += cost;
        if let Some(ctx) = ctx {
            *ctx.memory_bytes += cost;
        }
        self.queue.push_front(Entry::Memory(queued));
    }

    /// Accounts for an entry leaving the queue undelivered.
    fn drop_entry(&mut self, entry: Entry, ctx: Option<&mut SpillCtx<'_>>) {
        match entry {
            Entry::Memory(q) => self.forget_memory(&q, ctx),
            Entry::Spilled(s) => {
                self.spilled_len -= 1;
                if let Some(ctx) = ctx {
                    self.release_record(s.at, ctx);
                }
            }
        }
    }

    fn forget_memory(&mut self, q: &Queued, ctx: Option<&mut SpillCtx<'_>>) {
        let cost = memory_cost(&q.message);
        self.memory_bytes = self.memory_bytes.saturating_sub(cost);
        if let Some(ctx) = ctx {
            *ctx.memory_bytes = ctx.memory_bytes.saturating_sub(cost);
        }
    }

    fn release_record(&mut self, at: RecordRef, ctx: &mut SpillCtx<'_>) {
        self.disk_bytes = self.disk_bytes.saturating_sub(u64::from(at.len));
        ctx.spill.release(at);
    }

    /// Empties the queue (the session ends or expires), releasing its
    /// spilled records and its share of the memory budget, and the queue's
    /// own allocation.
    pub fn discard_queue(&mut self, ctx: &mut SpillCtx<'_>) {
        while let Some(e) = self.queue.pop_front() {
            self.drop_entry(e, Some(ctx));
        }
        self.queue = VecDeque::new();
        let mut held = Vec::new();
        for f in &mut self.inflight {
            if let Some(Entry::Spilled(s)) = f.publish.take() {
                held.push(s.at);
            }
        }
        for at in held {
            self.release_record(at, ctx);
        }
        self.release_retired(ctx);
    }

    /// Ends an outgoing exchange's hold on its message: a record in the
    /// disk buffer is retired (released at the next `release_retired`).
    pub(crate) fn retire(&mut self, publish: Option<Entry>) {
        if let Some(Entry::Spilled(s)) = publish {
            self.retired.push(s.at);
        }
    }

    /// Removes in-flight entry `i` (its exchange ended).
    pub(crate) fn remove_inflight(&mut self, i: usize) {
        if let Some(f) = self.inflight.remove(i) {
            self.retire(f.publish);
        }
    }

    /// Releases the records of exchanges that ended since the last call
    /// (the writer does at each turn; the shard when the session goes
    /// offline).
    pub fn release_retired(&mut self, ctx: &mut SpillCtx<'_>) {
        for r in self.retired.drain(..) {
            self.disk_bytes = self.disk_bytes.saturating_sub(u64::from(r.len));
            ctx.spill.release(r);
        }
    }

    /// Reads an in-flight spilled message back to resend it; its record
    /// stays until the exchange ends.
    pub(crate) fn reread(&mut self, s: &Spilled, ctx: &mut SpillCtx<'_>) -> Option<Queued> {
        match ctx.spill.read(s.at, ctx.owner) {
            Ok(m) => Some(s.with_message(m)),
            Err(_) => {
                self.stats.dropped_lost += 1;
                None
            }
        }
    }

    /// Reads every spilled message back into memory and releases its record:
    /// before the session moves to another shard (buffer keys are per
    /// shard). Unreadable records are counted as lost.
    pub fn unspill(&mut self, ctx: &mut SpillCtx<'_>) {
        self.release_retired(ctx);
        let mut lost_inflight = 0;
        self.inflight.retain_mut(|f| {
            let Some(Entry::Spilled(s)) = &f.publish else {
                return true;
            };
            match read_back(s, ctx) {
                Some(q) => {
                    f.publish = Some(Entry::Memory(q));
                    true
                }
                // The exchange cannot be resent: it ends, its id is free.
                None => {
                    lost_inflight += 1;
                    false
                }
            }
        });
        self.stats.dropped_lost += lost_inflight;
        if self.spilled_len == 0 {
            // INVARIANT: every record was released (read back or lost).
            self.disk_bytes = 0;
            return;
        }
        let mut lost = 0;
        let mut added = 0;
        self.queue.retain_mut(|e| {
            let Entry::Spilled(s) = e else {
                return true;
            };
            match read_back(s, ctx) {
                Some(q) => {
                    added += memory_cost(&q.message);
                    *e = Entry::Memory(q);
                    true
                }
                None => {
                    lost += 1;
                    false
                }
            }
        });
        self.spilled_len = 0;
        self.disk_bytes = 0;
        self.stats.dropped_lost += lost;
        self.memory_bytes += added;
        *ctx.memory_bytes += added;
    }

    /// Moves the newest in-memory messages to the disk buffer until the
    /// shard is within its memory budget and this session within
    /// `limit.len_max()` messages in memory (a session arriving from another
    /// shard). Stops at the first refusal: what stays is still bounded by
    /// the shard it came from.
    pub fn spill_excess(&mut self, limit: &QueueLimit, ctx: &mut SpillCtx<'_>) {
        let memory_len = self.queue.len() - self.spilled_len;
        let mut over_len = memory_len.saturating_sub(limit.len_max());
        let mut over_bytes = ctx.memory_bytes.saturating_sub(ctx.memory_budget_bytes);
        if over_len == 0 && over_bytes == 0 {
            return;
        }
        // Walk back to where spilling must start, then spill forward so the
        // records are written in queue order (an in-order drain reads each
        // block once).
        let mut start = self.queue.len();
        while start > 0 && (over_len > 0 || over_bytes > 0) {
            start -= 1;
            if let Entry::Memory(q) = &self.queue[start] {
                over_len = over_len.saturating_sub(1);
                over_bytes = over_bytes.saturating_sub(memory_cost(&q.message));
            }
        }
        for i in start..self.queue.len() {
            let Entry::Memory(q) = &self.queue[i] else {
                continue;
            };
            let Ok(at) = ctx.spill.append(ctx.owner, &q.message) else {
                return;
            };
            self.disk_bytes += u64::from(at.len);
            let cost = memory_cost(&q.message);
            let spilled = Spilled {
                at,
                qos: q.qos,
                retain: q.retain,
                subscription_ids: q.subscription_ids.clone(),
            };
            self.queue[i] = Entry::Spilled(spilled);
            self.spilled_len += 1;
            self.memory_bytes = self.memory_bytes.saturating_sub(cost);
            *ctx.memory_bytes = ctx.memory_bytes.saturating_sub(cost);
        }
    }

    /// The first record `spilled_refs` would list (readahead on resume),
    /// without collecting them all.
    pub fn first_spilled_ref(&self) -> Option<RecordRef> {
        self.held_refs().next()
    }

    /// Every record this session holds in the disk buffer, in the order
    /// they will be read: in flight (resent first on resume), then queued,
    /// then retired ones (never read again, released soon).
    pub fn spilled_refs(&self) -> Vec<RecordRef> {
        self.held_refs().collect()
    }

    fn held_refs(&self) -> impl Iterator<Item = RecordRef> + '_ {
        let spilled = |e: &Entry| match e {
            Entry::Spilled(s) => Some(s.at),
            Entry::Memory(_) => None,
        };
        let inflight = self
            .inflight
            .iter()
            .filter_map(move |f| f.publish.as_ref().and_then(spilled));
        inflight
            .chain(self.queue.iter().filter_map(spilled))
            .chain(self.retired.iter().copied())
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

    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        // PERF: acknowledgements nearly always arrive in order, so the entry
        // is found at the front.
        self.inflight.iter().position(|f| f.packet_id == id)
    }

    /// The next message to send, in memory, with its record when it comes
    /// from the disk buffer at QoS 1/2 (kept until the exchange ends; a QoS 0
    /// one is released at once). One that cannot be read is counted as lost
    /// and skipped. Drops expired messages, counting them. A spilled message
    /// at the front without `spill` stays queued (`None`).
    pub(crate) fn pop_live(
        &mut self,
        now: Instant,
        mut spill: Option<&mut SpillCtx<'_>>,
    ) -> Option<(Queued, Option<Spilled>)> {
        loop {
            let entry = self.queue.pop_front()?;
            if self.queue.is_empty() && self.queue.capacity() > QUEUE_CAPACITY_KEPT {
                // A drained backlog gives its deque back (a 100,000-message
                // backlog leaves ~5 MB of capacity otherwise).
                self.queue = VecDeque::new();
            }
            let (q, held) = match entry {
                Entry::Memory(q) => {
                    self.forget_memory(&q, spill.as_deref_mut());
                    (q, None)
                }
                Entry::Spilled(s) => {
                    let Some(ctx) = spill.as_deref_mut() else {
                        self.queue.push_front(Entry::Spilled(s));
                        return None;
                    };
                    self.spilled_len -= 1;
                    let read = ctx.spill.read(s.at, ctx.owner);
                    let keep = read.is_ok() && s.qos != QoS::AtMostOnce;
                    if !keep {
                        self.release_record(s.at, ctx);
                    }
                    match read {
                        Ok(m) => (s.with_message(m), keep.then_some(s)),
                        Err(_) => {
                            self.stats.dropped_lost += 1;
                            continue;
                        }
                    }
                }
            };
            if q.message.is_expired(now) {
                self.stats.dropped_expired += 1;
                if let (Some(s), Some(ctx)) = (held, spill.as_deref_mut()) {
                    self.release_record(s.at, ctx);
                }
                continue;
            }
            return Some((q, held));
        }
    }

    /// Puts a spilled message taken by `pop_live` back at the front.
    pub(crate) fn push_front_spilled(&mut self, s: Spilled) {
        self.spilled_len += 1;
        self.queue.push_front(Entry::Spilled(s));
    }
}

/// Reads a spilled message back into memory and releases its record
/// (`unspill`); `None` if it cannot be read (lost).
fn read_back(s: &Spilled, ctx: &mut SpillCtx<'_>) -> Option<Queued> {
    let read = ctx.spill.read(s.at, ctx.owner);
    ctx.spill.release(s.at);
    read.ok().map(|m| s.with_message(m))
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
