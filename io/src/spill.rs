//! A shard's disk buffer as its sessions' queues see it: `Spill` over
//! `DiskBuffer`, and the settings a shard opens its buffer with. Owns no
//! session state; the queues hold the references
//! (`shardmq_core::session::SpillRef`), the shard (`broker::ShardBuffer`)
//! the memory accounting.

use std::path::PathBuf;

use shardmq_core::session::{Message, Spill, SpillError, SpillRef};
use tracing::warn;

use crate::buffer::{BufferError, BufferStats, DiskBuffer, RecordRef};

/// `diskBackedMessageBuffer`, resolved for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSpec {
    pub data_dir: PathBuf,
    /// `maxSize`, all shards together (each gets an equal share).
    pub size_max_bytes: u64,
    /// Segment file size (`SEGMENT_BYTES_DEFAULT`; tests use smaller ones).
    pub segment_bytes: u64,
}

/// The `Spill` side of a shard's buffer.
#[derive(Debug)]
pub struct DiskSpill {
    pub buffer: DiskBuffer,
    /// Appends refused (full, no space, I/O): queue-full for the session.
    pub refused: u64,
}

impl DiskSpill {
    pub fn new(buffer: DiskBuffer) -> DiskSpill {
        DiskSpill { buffer, refused: 0 }
    }

    pub fn stats(&self) -> BufferStats {
        self.buffer.stats()
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
            if matches!(e, BufferError::Closed) {
                // The broker is stopping; nothing is lost that was kept.
                return SpillError::Unavailable;
            }
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
