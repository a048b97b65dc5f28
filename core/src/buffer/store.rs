//! Where the session queues keep what does not stay in memory: the
//! reference to one buffered record, the same value in the queues and in the
//! io crate's segment files (`io/src/buffer/`).

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
