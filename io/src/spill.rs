//! A shard's disk buffer as its sessions' queues see it: `Spill` over
//! `DiskBuffer` (or over nothing, without `diskBackedMessageBuffer`), the
//! shard's count of queued bytes in memory, and the settings a shard opens
//! its buffer with. Owns no session state; the queues hold the references
//! (`shardmq_core::session::SpillRef`). INVARIANT: `memory_bytes` is the sum
//! of `SessionState::memory_bytes` of the sessions this shard holds (online
//! and offline), with or without a disk buffer.

use std::path::PathBuf;

use shardmq_core::limits::SESSION_SHARES;
use shardmq_core::session::{Message, Spill, SpillCtx, SpillError, SpillRef};
use tracing::warn;

use crate::buffer::{BufferError, BufferStats, DiskBuffer, RecordRef};

/// Default `diskBackedMessageBuffer.dataDir`, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "./shardmq-data";

/// `diskBackedMessageBuffer`, resolved for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSpec {
    pub data_dir: PathBuf,
    /// `maxSize`, all shards together (each gets an equal share).
    pub size_max_bytes: u64,
    /// Segment file size (`SEGMENT_BYTES_DEFAULT`; tests use smaller ones).
    pub segment_bytes: u64,
}

/// One shard's buffer and memory accounting.
#[derive(Debug)]
pub struct ShardBuffer {
    /// `None` without `diskBackedMessageBuffer` (or if it failed to open).
    pub disk: Option<DiskSpill>,
    no_disk: NoDisk,
    /// Queued bytes held in memory by this shard's sessions.
    pub memory_bytes: u64,
    pub memory_budget_bytes: u64,
}

/// The `Spill` of a shard without a disk buffer: refuses everything. Never
/// reached in practice: `SpillCtx::disk_share_bytes` is 0 then.
#[derive(Debug, Default)]
struct NoDisk;

impl Spill for NoDisk {
    fn append(&mut self, _: u64, _: &Message) -> Result<SpillRef, SpillError> {
        Err(SpillError::Full)
    }
    fn read(&mut self, _: SpillRef, _: u64) -> Result<Message, SpillError> {
        Err(SpillError::Unavailable)
    }
    fn release(&mut self, _: SpillRef) {}
}

/// The `Spill` side of a shard's buffer.
#[derive(Debug)]
pub struct DiskSpill {
    pub buffer: DiskBuffer,
    /// Appends refused (full, no space, I/O): queue-full for the session.
    pub refused: u64,
}

impl ShardBuffer {
    pub fn new(buffer: Option<DiskBuffer>, memory_budget_bytes: u64) -> ShardBuffer {
        ShardBuffer {
            disk: buffer.map(|buffer| DiskSpill { buffer, refused: 0 }),
            no_disk: NoDisk,
            memory_bytes: 0,
            memory_budget_bytes,
        }
    }

    /// What a session with buffer key `owner` needs for one enqueue or drain.
    pub fn ctx(&mut self, owner: u64) -> SpillCtx<'_> {
        let (spill, disk_share_bytes): (&mut dyn Spill, u64) = match &mut self.disk {
            Some(d) => {
                let share = d.buffer.size_max_bytes() / SESSION_SHARES;
                (d, share)
            }
            None => (&mut self.no_disk, 0),
        };
        SpillCtx {
            spill,
            owner,
            memory_bytes: &mut self.memory_bytes,
            memory_budget_bytes: self.memory_budget_bytes,
            disk_share_bytes,
        }
    }

    pub fn stats(&self) -> BufferStats {
        self.disk
            .as_ref()
            .map(|d| d.buffer.stats())
            .unwrap_or_default()
    }

    /// Releases a record outside a session's queue (a clean start drops
    /// the old session's records).
    pub fn release(&mut self, at: SpillRef) {
        if let Some(d) = &mut self.disk {
            d.release(at);
        }
    }
}

impl Spill for DiskSpill {
    fn append(&mut self, owner: u64, message: &Message) -> Result<SpillRef, SpillError> {
        match self.buffer.append(owner, message) {
            Ok(r) => Ok(to_spill(r)),
            Err(e) => {
                self.refused += 1;
                // Full is routine under load; say it once per 1024.
                if self.refused % 1024 == 1 {
                    warn!(dir = %self.buffer.dir().display(), error = %e, refused = self.refused, "disk buffer refused a message");
                }
                Err(SpillError::Full)
            }
        }
    }

    fn read(&mut self, at: SpillRef, owner: u64) -> Result<Message, SpillError> {
        self.buffer.read(to_record(at), owner).map_err(|e| {
            warn!(dir = %self.buffer.dir().display(), error = %e, "buffered message lost");
            match e {
                BufferError::Corrupt(_) | BufferError::UnknownRecord(_) => SpillError::Lost,
                _ => SpillError::Unavailable,
            }
        })
    }

    fn release(&mut self, at: SpillRef) {
        self.buffer.release(to_record(at));
    }

    fn prefetch(&mut self, at: SpillRef, len_bytes: usize) {
        self.buffer.prefetch(to_record(at), len_bytes);
    }
}

fn to_spill(r: RecordRef) -> SpillRef {
    SpillRef {
        segment: r.segment,
        block: r.block,
        at: r.at,
        len: r.len,
    }
}

fn to_record(r: SpillRef) -> RecordRef {
    RecordRef {
        segment: r.segment,
        block: r.block,
        at: r.at,
        len: r.len,
    }
}
