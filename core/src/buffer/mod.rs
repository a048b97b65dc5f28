//! The disk-backed message buffer, everything but its files: the `Store`
//! the session queues put messages in past the shard's memory budget and
//! the `RecordRef` they keep instead (`store`), the byte accounting of
//! memory, budget and fair shares (`account`), how a `Message` becomes a
//! record (`record`), and how records are grouped into blocks and sealed
//! (`seal`: AES-256-GCM when `encryptInternalTraffic` is Enabled, CRC-32
//! when Disabled), and the persisted retained log's file format (`log`,
//! the same blocks and records under a per-file data key). No I/O: segment files live in `shardmq-io`
//! (`io/src/buffer/`). Format and threat model: docs/BUFFER.md.

mod account;
pub mod log;
pub mod record;
pub mod seal;
mod store;

pub use account::{
    memory_budget_bytes, memory_cost, Held, Lease, ShardBuffer, MESSAGE_OVERHEAD_BYTES,
};
pub use seal::{BlockPos, KeyId, Sealer, BLOCK_HEADER_LEN, CHECKSUM_LEN, TAG_LEN};
pub use store::{MemoryOnly, RecordRef, Store, StoreError};

/// Records are gathered into blocks of about this many body bytes and
/// sealed with one AEAD call: GCM's per-call setup dominates for 64-byte
/// messages (see bench `buffer/seal_batch`). A record larger than this gets
/// a block of its own.
pub const BLOCK_BODY_TARGET: usize = 16 * 1024;

/// A record (or block) could not be read back. The caller counts the
/// affected messages as lost; nothing else is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// AES-GCM authentication failed: the block was changed, moved, or
    /// opened with the wrong key.
    #[error("block failed authentication (tampered, moved or wrong key)")]
    Unauthentic,
    /// Plaintext mode: the CRC-32 does not match.
    #[error("block checksum mismatch")]
    Checksum,
    #[error("block header is invalid or does not match the encryption mode")]
    BadBlockHeader,
    #[error("block was sealed with a key this process no longer holds")]
    UnknownKey,
    /// The record exists but belongs to another session.
    #[error("record belongs to another owner")]
    WrongOwner,
    #[error("record is malformed: {0}")]
    Malformed(&'static str),
    /// A field is longer than the format's length prefix (never from a valid
    /// packet) or the record is larger than 4 GiB.
    #[error("message too large for a buffer record")]
    TooLarge,
}

/// Sealing failed; programmer or environment errors, never client input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the system random generator failed")]
    Random,
    #[error("key ids exhausted (2^32 rotations)")]
    KeyIdsExhausted,
    #[error("no key {0:?} in this sealer")]
    UnknownKey(KeyId),
    /// INVARIANT violation guarded at run time: sealing here would reuse a nonce.
    #[error("refusing to seal at {0:?}: not past the last position sealed under this key")]
    NonceReuse(BlockPos),
    #[error("block shorter than its header")]
    NoHeader,
    #[error("block too large to seal")]
    TooLarge,
}
