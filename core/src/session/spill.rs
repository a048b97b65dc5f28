//! The session queue's view of the shard's disk buffer: a `Spill` trait the io
//! crate implements over its segment files (core does no I/O), and the
//! `SpillCtx` a shard passes in with every enqueue and drain. No clock, no
//! files here. INVARIANT: every `append` is `release`d exactly once, by the
//! session whose queue holds the reference (drain, drop, or discard).

use super::message::Message;
use crate::buffer::RecordRef;

/// Why the buffer could not take or give back a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpillError {
    /// No room: `maxSize` reached, the disk is full, or the message does not
    /// fit in a segment. The queue acts as full (`subscriberQueueLimit.strategy`).
    #[error("disk buffer full")]
    Full,
    /// The record failed authentication or its checksum, or is gone: the
    /// message is lost (counted), never delivered.
    #[error("buffered message lost")]
    Lost,
    /// The buffer cannot be used (I/O error); treated like `Full` on append
    /// and like `Lost` on read.
    #[error("disk buffer unavailable")]
    Unavailable,
}

/// A shard's disk buffer as the session queue uses it.
pub trait Spill {
    /// Stores `message` for session `owner` (bound into the record).
    fn append(&mut self, owner: u64, message: &Message) -> Result<RecordRef, SpillError>;
    /// Reads the record back; it must belong to `owner`.
    fn read(&mut self, at: RecordRef, owner: u64) -> Result<Message, SpillError>;
    /// The queue is done with the record (delivered, dropped or lost).
    fn release(&mut self, at: RecordRef);
    /// Hints that `at` and about `len_bytes` after it will be read soon.
    fn prefetch(&mut self, _at: RecordRef, _len_bytes: usize) {}
}

/// What a shard lends a session for one enqueue or drain.
pub struct SpillCtx<'a> {
    pub spill: &'a mut dyn Spill,
    /// The session's key in the buffer: unique among the shard's live
    /// sessions, so a record cannot be read by another session.
    pub owner: u64,
    /// Bytes of queued messages the shard holds in memory, all sessions
    /// together (see [`memory_cost`]); the session adds and subtracts its own.
    pub memory_bytes: &'a mut u64,
    /// Past this, new messages spill (`memory_budget_bytes(memoryProfile)`).
    pub memory_budget_bytes: u64,
    /// Record bytes one session may hold in the buffer (its fair share of
    /// the shard's part of `maxSize`, `SESSION_SHARES`); once it holds that
    /// much, its queue counts as full. 0 without a disk buffer.
    pub disk_share_bytes: u64,
}

impl std::fmt::Debug for SpillCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpillCtx")
            .field("owner", &self.owner)
            .field("memory_bytes", &self.memory_bytes)
            .field("memory_budget_bytes", &self.memory_budget_bytes)
            .field("disk_share_bytes", &self.disk_share_bytes)
            .finish_non_exhaustive()
    }
}

/// What one queued message costs beside its payload and topic: its queue
/// entry (~56 bytes), the shared `Message` (~160 bytes with its `Arc`) and
/// the allocator's headers. Without it a queue of 100,000 one-byte messages
/// would count as 100 KB while holding ~25 MB.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 256;

/// Bytes one queued message counts against the memory budget: payload,
/// topic and [`MESSAGE_OVERHEAD_BYTES`]. Shared messages (fan-out) count
/// once per session holding them, so the budget errs on the side of
/// spilling early.
pub fn memory_cost(message: &Message) -> u64 {
    (message.payload.len() + message.topic.as_str().len()) as u64 + MESSAGE_OVERHEAD_BYTES
}
