//! Byte accounting for the session queues, in one place: what a queued
//! message costs in memory, the shard's memory budget and each session's
//! fair share of the store, and the `Lease` through which a session queue
//! moves bytes between memory and the store. Every change to a session's
//! or the shard's byte counts goes through `Lease` or `ShardBuffer`.

use super::store::{MemoryOnly, RecordRef, Store, StoreError};
use crate::config::MemoryProfile;
use crate::limits::{QueueLimit, SESSION_SHARES};
use crate::session::Message;

/// What one queued message costs beside its payload and topic: its queue
/// entry (~56 bytes), the shared `Message` (~160 bytes with its `Arc`) and
/// the allocator's headers. Without it a queue of 100,000 one-byte messages
/// would count as 100 KB while holding ~25 MB.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 256;

/// Bytes one queued or retained message counts against its budget:
/// payload, topic, publisher's client id, properties
/// (`Properties::held_bytes`) and [`MESSAGE_OVERHEAD_BYTES`]. The payload
/// and properties are slices of the PUBLISH's frame, which they keep
/// alive: counted without its properties, a retained 1-byte message with
/// 64 MiB of user properties counted ~260 bytes. Shared messages (fan-out)
/// count once per session holding them, so the budget errs on the side of
/// spilling early.
pub fn memory_cost(message: &Message) -> u64 {
    // PERF: telemetry carries no properties: one branch, nothing to walk.
    let properties = message.properties.as_deref().map_or(0, |p| p.held_bytes());
    (message.payload.len() + message.topic.as_str().len() + message.origin.len() + properties)
        as u64
        + MESSAGE_OVERHEAD_BYTES
}

/// Bytes of queued messages one shard keeps in memory for slow or offline
/// subscribers before spilling to the disk buffer. AIO does not publish
/// byte figures for its profiles; these are shardmq's choice (docs/BUFFER.md).
pub const fn memory_budget_bytes(profile: MemoryProfile) -> u64 {
    const MIB: u64 = 1024 * 1024;
    match profile {
        MemoryProfile::Tiny => 16 * MIB,
        MemoryProfile::Low => 64 * MIB,
        MemoryProfile::Medium => 256 * MIB,
        MemoryProfile::High => 1024 * MIB,
    }
}

/// What one session's queue holds. Changed only through [`Lease`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// [`memory_cost`] of the messages it keeps in memory.
    memory_bytes: u64,
    /// Record bytes (`RecordRef::len`) of every record it holds in the
    /// store: queued, in flight and retired.
    disk_bytes: u64,
}

impl Held {
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Every record was released (read back or lost): nothing stays on
    /// disk whatever the counts said.
    pub(crate) fn clear_disk(&mut self) {
        debug_assert_eq!(self.disk_bytes, 0, "disk bytes out of step with records");
        self.disk_bytes = 0;
    }
}

/// A shard's store (if any) and the memory its sessions' queues hold.
/// Without a disk buffer the store is `MemoryOnly`, so every session goes
/// through the same bounded path.
/// INVARIANT: `memory_bytes` is the sum of `Held::memory_bytes` of the
/// sessions this shard holds (online and offline).
#[derive(Debug)]
pub struct ShardBuffer<S> {
    /// `None` without `diskBackedMessageBuffer` (or if it failed to open).
    store: Option<S>,
    memory_only: MemoryOnly,
    memory_bytes: u64,
    memory_budget_bytes: u64,
    /// Record bytes one session may hold in the store: its fair share
    /// (`SESSION_SHARES`). 0 without a store.
    disk_share_bytes: u64,
    /// The shard's persistence log reached its limit (half its share of
    /// `persistence.maxSize`): persisted queues take no new messages.
    persist_full: bool,
}

impl ShardBuffer<MemoryOnly> {
    /// A shard buffer with no store and no memory budget: queues bounded
    /// by their own `QueueLimit` only (tests and tools).
    pub fn memory_only() -> Self {
        ShardBuffer::new(None, u64::MAX, 0)
    }
}

impl<S: Store> ShardBuffer<S> {
    /// `store_bytes_max`: this shard's part of the store's size (0 without
    /// one); a session may fill `1/SESSION_SHARES` of it.
    pub fn new(store: Option<S>, memory_budget_bytes: u64, store_bytes_max: u64) -> Self {
        ShardBuffer {
            disk_share_bytes: if store.is_some() {
                store_bytes_max / SESSION_SHARES
            } else {
                0
            },
            store,
            memory_only: MemoryOnly,
            memory_bytes: 0,
            memory_budget_bytes,
            persist_full: false,
        }
    }

    /// The runtime says whether the shard's persistence log is at its
    /// limit (docs/PERSISTENCE.md, "`maxSize`").
    pub fn set_persist_full(&mut self, full: bool) {
        self.persist_full = full;
    }

    pub fn persist_full(&self) -> bool {
        self.persist_full
    }

    /// What a session with buffer key `owner` needs for one enqueue or drain.
    #[inline]
    pub fn lease(&mut self, owner: u64) -> Lease<'_> {
        let store: &mut dyn Store = match &mut self.store {
            Some(s) => s,
            None => &mut self.memory_only,
        };
        Lease {
            store,
            owner,
            memory_bytes: &mut self.memory_bytes,
            memory_budget_bytes: self.memory_budget_bytes,
            disk_share_bytes: self.disk_share_bytes,
            persist_full: self.persist_full,
        }
    }

    /// The disk buffer, if the shard has one.
    pub fn store(&self) -> Option<&S> {
        self.store.as_ref()
    }

    pub fn store_mut(&mut self) -> Option<&mut S> {
        self.store.as_mut()
    }

    /// Bytes of queued messages held in memory, all sessions together.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Past this, new messages spill (`memory_budget_bytes(memoryProfile)`).
    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget_bytes
    }

    pub fn over_budget(&self) -> bool {
        self.memory_bytes > self.memory_budget_bytes
    }

    /// A session's queue starts counting on this shard (it arrived or
    /// resumed here).
    pub fn join(&mut self, held: Held) {
        self.memory_bytes += held.memory_bytes;
    }

    /// A session's queue stops counting on this shard (taken away).
    pub fn leave(&mut self, held: Held) {
        self.memory_bytes = self.memory_bytes.saturating_sub(held.memory_bytes);
    }

    /// Releases a record outside a session's queue (a clean start drops the
    /// old session's records).
    pub fn release(&mut self, at: RecordRef) {
        if let Some(s) = &mut self.store {
            s.release(at);
        }
    }

    /// Readahead for a drain that is about to start.
    pub fn prefetch(&mut self, at: RecordRef, len_bytes: usize) {
        if let Some(s) = &mut self.store {
            s.prefetch(at, len_bytes);
        }
    }
}

/// What a shard lends one session for one enqueue or drain: its store, the
/// session's key in it, and the shard's memory counter and bounds.
pub struct Lease<'a> {
    store: &'a mut dyn Store,
    /// The session's key in the store: unique among the shard's live
    /// sessions, so a record cannot be read by another session.
    owner: u64,
    memory_bytes: &'a mut u64,
    memory_budget_bytes: u64,
    disk_share_bytes: u64,
    persist_full: bool,
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("owner", &self.owner)
            .field("memory_bytes", &self.memory_bytes)
            .field("memory_budget_bytes", &self.memory_budget_bytes)
            .field("disk_share_bytes", &self.disk_share_bytes)
            .finish_non_exhaustive()
    }
}

impl Lease<'_> {
    /// The shard's persistence log is at its limit.
    pub(crate) fn persist_full(&self) -> bool {
        self.persist_full
    }

    /// Whether a message of `cost` may stay in memory: within the session's
    /// count (`memory_len` messages in memory now) and byte bounds and the
    /// shard's budget.
    #[inline]
    pub(crate) fn fits_memory(
        &self,
        held: &Held,
        memory_len: usize,
        cost: u64,
        limit: &QueueLimit,
    ) -> bool {
        memory_len < limit.len_max()
            && held.memory_bytes + cost <= limit.bytes_max
            && *self.memory_bytes + cost <= self.memory_budget_bytes
    }

    /// Whether a message of `cost` could ever be queued: in memory on an
    /// empty queue, or in the store.
    pub(crate) fn could_fit(&self, cost: u64, limit: &QueueLimit) -> bool {
        cost <= limit.bytes_max.min(self.memory_budget_bytes) || self.disk_share_bytes > 0
    }

    /// Whether the session is under its share of the store. A record's size
    /// is known once written: the share may be passed by one.
    pub(crate) fn may_append(&self, held: &Held) -> bool {
        held.disk_bytes < self.disk_share_bytes
    }

    /// How far the shard is over its memory budget.
    pub(crate) fn bytes_over_budget(&self) -> u64 {
        self.memory_bytes.saturating_sub(self.memory_budget_bytes)
    }

    /// A message of `cost` is kept in memory.
    #[inline]
    pub(crate) fn hold_memory(&mut self, held: &mut Held, cost: u64) {
        held.memory_bytes += cost;
        *self.memory_bytes += cost;
    }

    /// A message of `cost` left memory (sent, dropped or spilled).
    #[inline]
    pub(crate) fn free_memory(&mut self, held: &mut Held, cost: u64) {
        held.memory_bytes = held.memory_bytes.saturating_sub(cost);
        *self.memory_bytes = self.memory_bytes.saturating_sub(cost);
    }

    /// Moves a message to the store, counting its record against the
    /// session's share.
    #[inline]
    pub(crate) fn append(
        &mut self,
        held: &mut Held,
        message: &Message,
    ) -> Result<RecordRef, StoreError> {
        let at = self.store.append(self.owner, message)?;
        held.disk_bytes += u64::from(at.len);
        Ok(at)
    }

    /// Reads a record of this session back; it stays in the store.
    #[inline]
    pub(crate) fn read(&mut self, at: RecordRef) -> Result<Message, StoreError> {
        self.store.read(at, self.owner)
    }

    /// The session is done with a record.
    #[inline]
    pub(crate) fn release(&mut self, held: &mut Held, at: RecordRef) {
        held.disk_bytes = held.disk_bytes.saturating_sub(u64::from(at.len));
        self.store.release(at);
    }
}
