//! The disk buffer as the session queues see it: `DiskBuffer` is the
//! shard's `Store`. Errors become what a queue acts on (full: the queue is
//! full; lost: the message is counted lost), and the operator is told, at a
//! bounded rate. The queues hold the references, `ShardBuffer` the memory
//! accounting.

use shardmq_core::buffer::{RecordRef, Store, StoreError};
use shardmq_core::session::Message;
use tracing::warn;

use super::{BufferError, DiskBuffer};

impl Store for DiskBuffer {
    fn append(&mut self, owner: u64, message: &Message) -> Result<RecordRef, StoreError> {
        // The inherent methods (`BufferError`) do the work.
        DiskBuffer::append(self, owner, message).map_err(|e| {
            self.stats.refused += 1;
            let refused = self.stats.refused;
            // Full is routine under load; say it once per 1024.
            if refused % 1024 == 1 {
                warn!(dir = %self.dir().display(), error = %e, refused, "disk buffer refused a message");
            }
            StoreError::Full
        })
    }

    fn read(&mut self, at: RecordRef, owner: u64) -> Result<Message, StoreError> {
        DiskBuffer::read(self, at, owner).map_err(|e| {
            if matches!(e, BufferError::Closed) {
                // The broker is stopping; nothing is lost that was kept.
                return StoreError::Unavailable;
            }
            warn!(dir = %self.dir().display(), error = %e, "buffered message lost");
            match e {
                BufferError::Corrupt(_) | BufferError::UnknownRecord(_) => StoreError::Lost,
                _ => StoreError::Unavailable,
            }
        })
    }

    fn release(&mut self, at: RecordRef) {
        DiskBuffer::release(self, at);
    }

    fn prefetch(&mut self, at: RecordRef, len_bytes: usize) {
        DiskBuffer::prefetch(self, at, len_bytes);
    }
}
