//! A shard's disk buffer as its sessions' queues see it: `Store` over
//! `DiskBuffer`, and the settings a shard opens its buffer with. Owns no
//! session state; the queues hold the references
//! (`shardmq_core::buffer::RecordRef`), the shard (`buffer::ShardBuffer`)
//! the memory accounting.

use std::path::PathBuf;

use shardmq_core::buffer::{RecordRef, Store, StoreError};
use shardmq_core::session::Message;
use tracing::warn;

use crate::buffer::{BufferError, BufferStats, DiskBuffer};

/// `diskBackedMessageBuffer`, resolved for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSpec {
    pub data_dir: PathBuf,
    /// `maxSize`, all shards together (each gets an equal share).
    pub size_max_bytes: u64,
    /// Segment file size (`SEGMENT_BYTES_DEFAULT`; tests use smaller ones).
    pub segment_bytes: u64,
}

/// The `Store` side of a shard's buffer.
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

impl Store for DiskSpill {
    fn append(&mut self, owner: u64, message: &Message) -> Result<RecordRef, StoreError> {
        match self.buffer.append(owner, message) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.refused += 1;
                // Full is routine under load; say it once per 1024.
                if self.refused % 1024 == 1 {
                    warn!(dir = %self.buffer.dir().display(), error = %e, refused = self.refused, "disk buffer refused a message");
                }
                Err(StoreError::Full)
            }
        }
    }

    fn read(&mut self, at: RecordRef, owner: u64) -> Result<Message, StoreError> {
        self.buffer.read(at, owner).map_err(|e| {
            if matches!(e, BufferError::Closed) {
                // The broker is stopping; nothing is lost that was kept.
                return StoreError::Unavailable;
            }
            warn!(dir = %self.buffer.dir().display(), error = %e, "buffered message lost");
            match e {
                BufferError::Corrupt(_) | BufferError::UnknownRecord(_) => StoreError::Lost,
                _ => StoreError::Unavailable,
            }
        })
    }

    fn release(&mut self, at: RecordRef) {
        self.buffer.release(at);
    }

    fn prefetch(&mut self, at: RecordRef, len_bytes: usize) {
        self.buffer.prefetch(at, len_bytes);
    }
}
