//! The session's outbound queue and what it holds in the shard's buffer:
//! messages in memory or, past the memory bounds, references into the
//! shard's `Store` (the disk buffer, or `MemoryOnly` that refuses all), in
//! one deque so the order is kept whatever is where. Every operation takes
//! the shard's `Lease`, which does the byte accounting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::buffer::{memory_cost, Held, Lease, RecordRef};
use crate::codec::{QoS, SubscriptionId};
use crate::limits::{QueueFullStrategy, QueueLimit};

use super::message::{Message, SharedMessage};
use super::state::SessionState;
use crate::topic::Delivery;

/// Queue capacity (entries) a session keeps once its queue is empty.
const QUEUE_CAPACITY_KEPT: usize = 1024;

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
    pub subscription_ids: Vec<SubscriptionId>,
    /// Its sequence number in the persisted queue (`persist`); 0: not
    /// persisted.
    pub seq: u64,
    /// Read back from disk after a restart: it may have been sent before
    /// the crash, so it goes out with DUP set [MQTT-3.3.1-1].
    pub restored: bool,
}

/// A queued message whose body is in the shard's store. Per-delivery data
/// stays here, not in the record (docs/BUFFER.md).
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub at: RecordRef,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<SubscriptionId>,
    pub seq: u64,
    pub restored: bool,
}

impl Stored {
    pub(super) fn new(at: RecordRef, q: &Queued) -> Stored {
        Stored {
            at,
            qos: q.qos,
            retain: q.retain,
            subscription_ids: q.subscription_ids.clone(),
            seq: q.seq,
            restored: q.restored,
        }
    }

    /// The queued form of this message once read back as `m`.
    pub(super) fn with_message(&self, m: Message) -> Queued {
        Queued {
            message: Arc::new(m),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.clone(),
            seq: self.seq,
            restored: self.restored,
        }
    }
}

/// One place in the session queue.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Memory(Queued),
    Stored(Stored),
}

impl Entry {
    pub fn is_stored(&self) -> bool {
        matches!(self, Entry::Stored(_))
    }

    pub fn qos(&self) -> QoS {
        match self {
            Entry::Memory(q) => q.qos,
            Entry::Stored(s) => s.qos,
        }
    }

    pub(super) fn set_seq(&mut self, seq: u64) {
        match self {
            Entry::Memory(q) => q.seq = seq,
            Entry::Stored(s) => s.seq = seq,
        }
    }

    /// Its sequence number in the persisted queue (0: not persisted).
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Memory(q) => q.seq,
            Entry::Stored(s) => s.seq,
        }
    }
}

impl SessionState {
    /// Queued messages held in the shard's disk buffer.
    pub fn spilled_len(&self) -> usize {
        self.spilled_len
    }

    /// Records this session holds in the shard's disk buffer: queued,
    /// in flight, and retired but not yet released ([`Self::buffer_refs`]).
    pub fn buffer_records(&self) -> usize {
        let inflight = self
            .inflight
            .iter()
            .filter(|f| matches!(f.publish, Some(Entry::Stored(_))))
            .count();
        self.spilled_len + inflight + self.retired.len()
    }

    /// What the queue holds in memory and in the store.
    pub fn held(&self) -> Held {
        self.held
    }

    /// What the queued in-memory messages count against the shard's memory
    /// budget ([`memory_cost`]).
    pub fn memory_bytes(&self) -> u64 {
        self.held.memory_bytes()
    }

    /// Record bytes this session holds in the disk buffer, against its
    /// share of it.
    pub fn disk_bytes(&self) -> u64 {
        self.held.disk_bytes()
    }

    /// Messages in the queue that are kept in memory.
    fn memory_len(&self) -> usize {
        self.queue.len() - self.spilled_len
    }

    /// Offers a message to this session. QoS 0 to an offline session is
    /// discarded (the spec allows storing it; we keep offline queues for the
    /// messages a client was promised, as Mosquitto does by default).
    ///
    /// `limit.len_max()` messages and `limit.bytes_max` bytes bound what
    /// the session keeps in memory, and the shard's memory budget all
    /// sessions' bytes together; past any of them the message goes to the
    /// store, up to the session's share of it, and only when that refuses
    /// too (always, for `MemoryOnly`) does the queue count as full
    /// (`limit.strategy`).
    pub fn enqueue(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
        online: bool,
        limit: &QueueLimit,
        lease: &mut Lease<'_>,
    ) -> Enqueued {
        if message.is_expired(now) {
            self.stats.dropped_expired += 1;
            return Enqueued::Discarded;
        }
        let qos = message.qos.min(delivery.granted_qos);
        if qos == QoS::AtMostOnce && !online {
            return Enqueued::Discarded;
        }
        // A persisted queue whose shard's log is at its limit (half its
        // share of `persistence.maxSize`): a full queue, not a message
        // acknowledged and then not on disk (docs/PERSISTENCE.md).
        if qos != QoS::AtMostOnce && self.persist.is_some() && lease.persist_full() {
            self.stats.dropped_queue_full += 1;
            return Enqueued::RejectedQueueFull;
        }
        // Retain flag on delivery: set for messages sent because of a new
        // subscription [MQTT-3.3.1-8]; otherwise kept only with Retain As
        // Published (v5), cleared for normal forwarding [MQTT-3.3.1-9].
        let retain = delivery.from_retained || (message.retain && delivery.retain_as_published);
        let queued = Queued {
            message: message.clone(),
            qos,
            retain,
            subscription_ids: delivery.subscription_ids.clone(),
            seq: self.seq_for(qos),
            restored: false,
        };
        // PERF: QoS 0 fan-in runs at hundreds of thousands of messages a
        // second per shard: the common case, in memory within every bound,
        // is three compares.
        let cost = memory_cost(message);
        if lease.fits_memory(&self.held, self.memory_len(), cost, limit) {
            self.push_memory(queued, cost, lease);
            return Enqueued::Queued;
        }
        self.enqueue_past_memory(queued, cost, limit, lease)
    }

    /// `enqueue` for a message that does not fit in memory as things are:
    /// to the store, or room made by `DropOldest`, or refused.
    fn enqueue_past_memory(
        &mut self,
        queued: Queued,
        cost: u64,
        limit: &QueueLimit,
        lease: &mut Lease<'_>,
    ) -> Enqueued {
        if !lease.could_fit(cost, limit) {
            // Could never fit: dropping older messages would not help.
            self.stats.dropped_queue_full += 1;
            return Enqueued::RejectedQueueFull;
        }
        let mut outcome = Enqueued::Queued;
        loop {
            if lease.fits_memory(&self.held, self.memory_len(), cost, limit) {
                self.push_memory(queued, cost, lease);
                return outcome;
            }
            // Fair share: a session that stopped reading fills its part of
            // the buffer, not the whole shard's (docs/BUFFER.md).
            if lease.may_append(&self.held) {
                if let Ok(at) = lease.append(&mut self.held, &queued.message) {
                    self.log_put(&queued);
                    self.spilled_len += 1;
                    self.queue
                        .push_back(Entry::Stored(Stored::new(at, &queued)));
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
            self.drop_entry(old, lease);
        }
    }

    fn push_memory(&mut self, queued: Queued, cost: u64, lease: &mut Lease<'_>) {
        self.log_put(&queued);
        lease.hold_memory(&mut self.held, cost);
        self.queue.push_back(Entry::Memory(queued));
    }

    /// Puts a message taken by `pop_live` back at the front.
    pub(crate) fn push_front_memory(&mut self, queued: Queued, lease: &mut Lease<'_>) {
        lease.hold_memory(&mut self.held, memory_cost(&queued.message));
        self.queue.push_front(Entry::Memory(queued));
    }

    /// Puts a stored message taken by `pop_live` back at the front.
    pub(crate) fn push_front_stored(&mut self, s: Stored) {
        self.spilled_len += 1;
        self.queue.push_front(Entry::Stored(s));
    }

    /// Accounts for an entry leaving the queue undelivered.
    fn drop_entry(&mut self, entry: Entry, lease: &mut Lease<'_>) {
        self.log_done(entry.seq());
        match entry {
            Entry::Memory(q) => lease.free_memory(&mut self.held, memory_cost(&q.message)),
            Entry::Stored(s) => {
                self.spilled_len -= 1;
                lease.release(&mut self.held, s.at);
            }
        }
    }

    /// Empties the queue (the session ends or expires), releasing its
    /// stored records and its share of the memory budget, and the queue's
    /// own allocation.
    pub fn discard_queue(&mut self, lease: &mut Lease<'_>) {
        // The session's end, written by its owner, ends its queue's records.
        self.persist = None;
        while let Some(e) = self.queue.pop_front() {
            self.drop_entry(e, lease);
        }
        self.queue = VecDeque::new();
        for f in &mut self.inflight {
            if let Some(Entry::Stored(s)) = f.publish.take() {
                lease.release(&mut self.held, s.at);
            }
        }
        self.release_retired(lease);
    }

    /// Ends an outgoing exchange's hold on its message: a record in the
    /// store is retired (released at the next `release_retired`).
    pub(crate) fn retire(&mut self, publish: Option<Entry>) {
        if let Some(Entry::Stored(s)) = publish {
            self.retired.push(s.at);
        }
    }

    /// Removes in-flight entry `i` (its exchange ended).
    pub(crate) fn remove_inflight(&mut self, i: usize) {
        if let Some(f) = self.inflight.remove(i) {
            self.log_done(f.seq);
            self.retire(f.publish);
        }
    }

    /// Releases the records of exchanges that ended since the last call
    /// (the writer does at each turn; the shard when the session goes
    /// offline).
    pub fn release_retired(&mut self, lease: &mut Lease<'_>) {
        for r in self.retired.drain(..) {
            lease.release(&mut self.held, r);
        }
    }

    /// Reads an in-flight stored message back to resend it; its record
    /// stays until the exchange ends.
    pub(crate) fn reread(&mut self, s: &Stored, lease: &mut Lease<'_>) -> Option<Queued> {
        match lease.read(s.at) {
            Ok(m) => Some(s.with_message(m)),
            Err(_) => {
                self.stats.dropped_lost += 1;
                None
            }
        }
    }

    /// Reads a stored message back into memory and releases its record;
    /// `None` if it cannot be read (lost).
    fn read_back(held: &mut Held, s: &Stored, lease: &mut Lease<'_>) -> Option<Queued> {
        let read = lease.read(s.at);
        lease.release(held, s.at);
        read.ok().map(|m| s.with_message(m))
    }

    /// Reads every stored message back into memory and releases its record:
    /// before the session moves to another shard (buffer keys are per
    /// shard). Unreadable records are counted as lost.
    pub fn unspill(&mut self, lease: &mut Lease<'_>) {
        self.release_retired(lease);
        let mut lost_inflight = 0;
        let mut lost_seqs = Vec::new();
        let held = &mut self.held;
        self.inflight.retain_mut(|f| {
            let Some(Entry::Stored(s)) = &f.publish else {
                return true;
            };
            match Self::read_back(held, s, lease) {
                Some(q) => {
                    f.publish = Some(Entry::Memory(q));
                    true
                }
                // The exchange cannot be resent: it ends, its id is free.
                None => {
                    lost_inflight += 1;
                    lost_seqs.push(f.seq);
                    false
                }
            }
        });
        self.stats.dropped_lost += lost_inflight;
        if self.spilled_len == 0 {
            for seq in lost_seqs {
                self.log_done(seq);
            }
            self.held.clear_disk();
            return;
        }
        let mut lost = 0;
        let mut added = 0;
        let held = &mut self.held;
        self.queue.retain_mut(|e| {
            let Entry::Stored(s) = e else {
                return true;
            };
            match Self::read_back(held, s, lease) {
                Some(q) => {
                    added += memory_cost(&q.message);
                    *e = Entry::Memory(q);
                    true
                }
                None => {
                    lost += 1;
                    lost_seqs.push(s.seq);
                    false
                }
            }
        });
        for seq in lost_seqs {
            self.log_done(seq);
        }
        self.spilled_len = 0;
        self.held.clear_disk();
        self.stats.dropped_lost += lost;
        lease.hold_memory(&mut self.held, added);
    }

    /// Moves the newest in-memory messages to the store until the shard is
    /// within its memory budget and this session within `limit.len_max()`
    /// messages in memory (a session arriving from another shard). Stops at
    /// the first refusal: what stays is still bounded by the shard it came
    /// from.
    pub fn spill_excess(&mut self, limit: &QueueLimit, lease: &mut Lease<'_>) {
        let mut over_len = self.memory_len().saturating_sub(limit.len_max());
        let mut over_bytes = lease.bytes_over_budget();
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
            let Ok(at) = lease.append(&mut self.held, &q.message) else {
                return;
            };
            let cost = memory_cost(&q.message);
            let stored = Stored::new(at, q);
            self.queue[i] = Entry::Stored(stored);
            self.spilled_len += 1;
            lease.free_memory(&mut self.held, cost);
        }
    }

    /// The first record `buffer_refs` would list (readahead on resume),
    /// without collecting them all.
    pub fn first_buffer_ref(&self) -> Option<RecordRef> {
        self.held_refs().next()
    }

    /// Every record this session holds in the disk buffer, in the order
    /// they will be read: in flight (resent first on resume), then queued,
    /// then retired ones (never read again, released soon).
    pub fn buffer_refs(&self) -> Vec<RecordRef> {
        self.held_refs().collect()
    }

    fn held_refs(&self) -> impl Iterator<Item = RecordRef> + '_ {
        let stored = |e: &Entry| match e {
            Entry::Stored(s) => Some(s.at),
            Entry::Memory(_) => None,
        };
        let inflight = self
            .inflight
            .iter()
            .filter_map(move |f| f.publish.as_ref().and_then(stored));
        inflight
            .chain(self.queue.iter().filter_map(stored))
            .chain(self.retired.iter().copied())
    }

    /// The next message to send, in memory, with its record when it comes
    /// from the store at QoS 1/2 (kept until the exchange ends; a QoS 0 one
    /// is released at once). One that cannot be read is counted as lost and
    /// skipped. Drops expired messages, counting them.
    pub(crate) fn pop_live(
        &mut self,
        now: Instant,
        lease: &mut Lease<'_>,
    ) -> Option<(Queued, Option<Stored>)> {
        loop {
            let entry = self.queue.pop_front()?;
            if self.queue.is_empty() && self.queue.capacity() > QUEUE_CAPACITY_KEPT {
                // A drained backlog gives its deque back (a 100,000-message
                // backlog leaves ~5 MB of capacity otherwise).
                self.queue = VecDeque::new();
            }
            let (q, kept) = match entry {
                Entry::Memory(q) => {
                    lease.free_memory(&mut self.held, memory_cost(&q.message));
                    (q, None)
                }
                Entry::Stored(s) => {
                    self.spilled_len -= 1;
                    let read = lease.read(s.at);
                    let keep = read.is_ok() && s.qos != QoS::AtMostOnce;
                    if !keep {
                        lease.release(&mut self.held, s.at);
                    }
                    match read {
                        Ok(m) => (s.with_message(m), keep.then_some(s)),
                        Err(_) => {
                            self.stats.dropped_lost += 1;
                            self.log_done(s.seq);
                            continue;
                        }
                    }
                }
            };
            if q.message.is_expired(now) {
                self.stats.dropped_expired += 1;
                self.log_done(q.seq);
                if let Some(s) = kept {
                    lease.release(&mut self.held, s.at);
                }
                continue;
            }
            return Some((q, kept));
        }
    }
}
