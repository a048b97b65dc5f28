//! Where the session queues keep what does not stay in memory: the `Store`
//! trait (the io crate's segment files implement it, `io/src/buffer/`),
//! the reference to one stored record (the same value in the queues and in
//! the segment files), and `MemoryOnly`, the store of a shard without a
//! disk buffer.

use crate::session::Message;

/// Where one buffered record lives: its segment, the block holding it and
/// its place in the block's plaintext body. Small and `Copy`: a queue entry
/// whose message went to the buffer holds this instead of the message.
/// Opaque outside the store that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordRef {
    pub segment: u32,
    /// Offset of the block holding the record in its segment file.
    pub block: u32,
    /// Offset of the record in the block's plaintext body.
    pub at: u32,
    /// Record length, header included: what the record counts against its
    /// session's share of the buffer.
    pub len: u32,
}

/// Why the store could not take or give back a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No room: `maxSize` reached, the disk is full, the message does not
    /// fit in a segment, or the store keeps nothing (`MemoryOnly`). The
    /// queue acts as full (`subscriberQueueLimit.strategy`).
    #[error("disk buffer full")]
    Full,
    /// The record failed authentication or its checksum, or is gone: the
    /// message is lost (counted), never delivered.
    #[error("buffered message lost")]
    Lost,
    /// The store cannot be used (I/O error, closed); treated like `Full`
    /// on append and like `Lost` on read.
    #[error("disk buffer unavailable")]
    Unavailable,
}

/// A shard's store for queued messages past its memory budget, as the
/// session queues use it: the io crate's segment files, `MemoryOnly`
/// without a disk buffer, a fake in tests. INVARIANT: every `append` is
/// `release`d exactly once, by the session whose queue holds the reference
/// (drain, drop, or discard), or by the shard for a session that ended.
pub trait Store {
    /// Stores `message` for session `owner` (bound into the record).
    fn append(&mut self, owner: u64, message: &Message) -> Result<RecordRef, StoreError>;
    /// Reads the record back; it must belong to `owner`.
    fn read(&mut self, at: RecordRef, owner: u64) -> Result<Message, StoreError>;
    /// The queue is done with the record (delivered, dropped or lost).
    fn release(&mut self, at: RecordRef);
    /// Hints that `at` and about `len_bytes` after it will be read soon.
    fn prefetch(&mut self, _at: RecordRef, _len_bytes: usize) {}
}

/// The store of a shard without a disk buffer: refuses every append, so
/// every queue is bounded by memory alone, through the same path.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryOnly;

impl Store for MemoryOnly {
    fn append(&mut self, _: u64, _: &Message) -> Result<RecordRef, StoreError> {
        Err(StoreError::Full)
    }
    fn read(&mut self, _: RecordRef, _: u64) -> Result<Message, StoreError> {
        Err(StoreError::Unavailable)
    }
    fn release(&mut self, _: RecordRef) {}
}
