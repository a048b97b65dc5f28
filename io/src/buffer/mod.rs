//! One shard's disk-backed message buffer, the io side: append-only segment
//! files in `data_dir/shard-{id}/`, preallocated (a full disk is `NoSpace` at
//! allocation, never a SIGBUS) and mapped with memmap2. This module owns the
//! buffer and its write path (records gathered into blocks, sealed, copied
//! into the active segment); `segment` the files, their creation off the
//! shard and their reclaim; `read` the read path and its block cache;
//! `store` the `shardmq_core::buffer::Store` the session queues use. The
//! record format and sealing are `shardmq_core::buffer`.
//! INVARIANTS: the buffer is ephemeral (a `SegmentFile` deletes its file
//! when dropped, `close` deletes them all, open deletes a crash's
//! leftovers); plaintext never reaches a mapping in Enabled mode (blocks are
//! sealed in the heap and then copied in); `segments` is sorted by id and
//! its last entry is active.

mod read;
mod segment;
mod store;

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shardmq_core::buffer::{
    record, BlockPos, RecordError, RecordRef, SealError, Sealer, BLOCK_BODY_TARGET,
    BLOCK_HEADER_LEN,
};
use shardmq_core::session::Message;

use read::{CachedBlock, BLOCK_CACHE_LEN};
use segment::{remove_leftovers, Segment, SEGMENT_SUFFIX};
pub use segment::{
    Deleter, DoomedSegment, SegmentFile, SpareRequest, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN,
    SEGMENT_HEADER_LEN,
};

/// `diskBackedMessageBuffer`, resolved for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSpec {
    pub data_dir: PathBuf,
    /// `maxSize`, all shards together (each gets an equal share).
    pub size_max_bytes: u64,
    /// Segment file size (`SEGMENT_BYTES_DEFAULT`; tests use smaller ones).
    pub segment_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("disk buffer directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("disk buffer segment {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// `fallocate` said ENOSPC/EDQUOT/EFBIG: the disk (or quota) is full.
    #[error("no space left to allocate disk buffer segment {path} ({bytes} bytes)")]
    NoSpace { path: PathBuf, bytes: u64 },
    /// `diskBackedMessageBuffer.maxSize` (this shard's share) is reached.
    #[error("disk buffer full: {size_max_bytes} bytes in segments")]
    Full { size_max_bytes: u64 },
    /// The message does not fit in one segment.
    #[error("message of {len} bytes does not fit in a {segment_bytes}-byte buffer segment")]
    TooLarge { len: usize, segment_bytes: u64 },
    /// Released, reclaimed or never written: a caller bug, not data loss.
    #[error("record {0:?} is not in the buffer")]
    UnknownRecord(RecordRef),
    /// The record failed authentication or its checksum: count it as lost.
    #[error("buffered record lost: {0}")]
    Corrupt(#[from] RecordError),
    #[error("disk buffer sealing failed: {0}")]
    Seal(#[from] SealError),
    #[error("disk buffer configuration: {0}")]
    Config(&'static str),
    /// `close` ran (the broker is stopping): nothing is kept any more.
    #[error("disk buffer closed")]
    Closed,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Segment files in use or kept as spares; files handed to the
    /// `Deleter` and not yet deleted are not counted here.
    pub segments: u64,
    /// Bytes of segment files on disk, files waiting for the `Deleter`
    /// included: what counts against the size bound.
    pub bytes_used: u64,
    /// Records appended and not yet released.
    pub live_records: u64,
    pub appended: u64,
    pub read: u64,
    /// Reads that failed authentication/checksum: messages lost.
    pub corrupt: u64,
    /// Appends the session queues' store refused (full, no space, I/O):
    /// queue-full for the session.
    pub refused: u64,
    pub reclaimed_segments: u64,
}

/// One shard's disk buffer. `!Sync` by use: only its shard touches it.
#[derive(Debug)]
pub struct DiskBuffer {
    dir: PathBuf,
    segment_bytes: u64,
    segments_max: u64,
    size_max_bytes: u64,
    epoch: Instant,
    sealer: Sealer,
    /// INVARIANT: sorted by id; the last one is the active segment.
    segments: Vec<Segment>,
    /// Files ready to become the active segment: made off the shard
    /// (`spare_request`) or recycled by `reclaim`. At most `SPARES_MAX`.
    spares: Vec<SegmentFile>,
    spare_requested: bool,
    /// `rotate_key` asked for a new segment at the next append.
    roll_requested: bool,
    /// Ids are assigned at activation, so they increase in the order
    /// segments are written: `Sealer`'s nonce check relies on it.
    next_segment_id: u32,
    next_file_no: u64,
    pending: Pending,
    cache: Vec<CachedBlock>,
    cache_victim: usize,
    stats: BufferStats,
    removed_at_open: usize,
    /// Takes reclaimed files that are not kept as spares; `None` deletes
    /// them on the caller's thread.
    deleter: Option<Deleter>,
    /// Files handed to `deleter` and not yet deleted: they still hold their
    /// disk space, so they count against `maxSize` until they are gone.
    deleting: Arc<AtomicU64>,
    /// Which open of a buffer in this process this is (file names).
    generation: u64,
    /// `close` ran: every file is deleted and appends are refused.
    closed: bool,
}

/// The block being filled: records wait here in plaintext, in the heap,
/// until the block is full or `flush` seals it into the active segment.
#[derive(Debug, Default)]
struct Pending {
    /// `BLOCK_HEADER_LEN` placeholder bytes, then the records.
    buf: Vec<u8>,
    /// Offset reserved for this block in the active segment.
    block: u32,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.buf.len() <= BLOCK_HEADER_LEN
    }

    fn body_len(&self) -> usize {
        self.buf.len().saturating_sub(BLOCK_HEADER_LEN)
    }
}

impl DiskBuffer {
    /// Opens shard `shard`'s buffer under `dir`: creates `dir/shard-{shard}`
    /// (0700), deletes leftover segment files (the buffer is ephemeral) and
    /// checks the directory is writable. `size_max_bytes` is this shard's
    /// share of `maxSize`; `segment_bytes` is clamped to it. `epoch` is the
    /// instant message expiries are stored relative to.
    pub fn open(
        dir: &Path,
        shard: usize,
        size_max_bytes: u64,
        segment_bytes: u64,
        encrypt: bool,
        epoch: Instant,
    ) -> Result<DiskBuffer, BufferError> {
        let segment_bytes = segment_bytes.min(size_max_bytes);
        if segment_bytes < SEGMENT_BYTES_MIN {
            return Err(BufferError::Config(
                "segment size (or this shard's maxSize share) below 4096 bytes",
            ));
        }
        if segment_bytes > u64::from(u32::MAX) {
            return Err(BufferError::Config("segment size above 4 GiB"));
        }
        let dir = dir.join(format!("shard-{shard}"));
        let dir_err = |source| BufferError::DataDir {
            path: dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(dir_err)?;
        let removed_at_open = remove_leftovers(&dir).map_err(dir_err)?;
        // Fail now, at start-up, rather than at the first spill.
        let probe = dir.join(format!("probe{SEGMENT_SUFFIX}"));
        File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(dir_err)?;
        Ok(DiskBuffer {
            dir,
            segment_bytes,
            segments_max: size_max_bytes / segment_bytes,
            size_max_bytes,
            epoch,
            sealer: Sealer::new(encrypt)?,
            segments: Vec::new(),
            spares: Vec::new(),
            spare_requested: false,
            roll_requested: false,
            next_segment_id: 1,
            next_file_no: 1,
            pending: Pending::default(),
            cache: Vec::with_capacity(BLOCK_CACHE_LEN),
            cache_victim: 0,
            stats: BufferStats::default(),
            removed_at_open,
            deleter: None,
            deleting: Arc::new(AtomicU64::new(0)),
            generation: {
                static OPENS: AtomicU64 = AtomicU64::new(0);
                OPENS.fetch_add(1, Ordering::Relaxed)
            },
            closed: false,
        })
    }

    /// Leftover segment files deleted by `open` (for the start-up log).
    pub fn removed_at_open(&self) -> usize {
        self.removed_at_open
    }

    /// The shard's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn encrypted(&self) -> bool {
        self.sealer.encrypted()
    }

    /// This shard's part of `maxSize`.
    pub fn size_max_bytes(&self) -> u64 {
        self.size_max_bytes
    }

    pub fn stats(&self) -> BufferStats {
        let segments = (self.segments.len() + self.spares.len()) as u64;
        BufferStats {
            segments,
            bytes_used: (segments + self.deleting.load(Ordering::Acquire)) * self.segment_bytes,
            ..self.stats
        }
    }

    /// Sends reclaimed files that are not kept as spares to `deleter`
    /// instead of deleting them on this thread.
    pub fn set_deleter(&mut self, deleter: Deleter) {
        self.deleter = Some(deleter);
    }

    /// Deletes every file the buffer holds, segments and spares, on this
    /// thread (the broker is stopping: the buffer is ephemeral, and 64 MiB
    /// files must not wait for the next start to be reclaimed). Records
    /// still referenced read as `Closed`; appends are refused. Files on
    /// their way to the `Deleter` or from `spare_request` delete themselves
    /// when dropped: wait for `off_shard_work` to reach `false`.
    pub fn close(&mut self) {
        self.closed = true;
        self.pending.buf.clear();
        self.cache.clear();
        self.segments.clear();
        self.spares.clear();
    }

    /// Deletes handed to the `Deleter` or a spare file being created are
    /// still under way off the shard.
    pub fn off_shard_work(&self) -> bool {
        self.spare_requested || self.deleting.load(Ordering::Acquire) > 0
    }

    /// Appends `message` for session `owner`. Small records wait in the
    /// pending block (readable at once) until it fills or `flush` runs.
    pub fn append(&mut self, owner: u64, message: &Message) -> Result<RecordRef, BufferError> {
        if self.closed {
            return Err(BufferError::Closed);
        }
        let len = record::encoded_len(message).ok_or(BufferError::TooLarge {
            len: message.payload.len(),
            segment_bytes: self.segment_bytes,
        })?;
        let overhead = self.sealer.block_overhead();
        if !self.pending.is_empty() {
            let active_left = self.active_room();
            let body = self.pending.body_len() + len;
            if body > BLOCK_BODY_TARGET || body + overhead > active_left {
                self.seal_pending()?;
            }
        }
        if self.pending.is_empty() {
            self.ensure_room(overhead + len)?;
            let Some(active) = self.segments.last() else {
                return Err(BufferError::Config("no active segment"));
            };
            self.pending.buf.clear();
            self.pending.buf.resize(BLOCK_HEADER_LEN, 0);
            self.pending.block = active.write_at as u32;
        }
        let at = self.pending.body_len();
        record::encode(&mut self.pending.buf, owner, message, self.epoch)?;
        let Some(active) = self.segments.last_mut() else {
            return Err(BufferError::Config("no active segment"));
        };
        active.live += 1;
        let r = RecordRef {
            segment: active.id,
            block: self.pending.block,
            at: at as u32,
            len: len as u32,
        };
        self.stats.appended += 1;
        self.stats.live_records += 1;
        if self.pending.body_len() >= BLOCK_BODY_TARGET {
            self.seal_pending()?;
        }
        Ok(r)
    }

    /// The reader is done with `r`. A segment whose records are all released
    /// is deleted once it is no longer the active one. Each `append` (and
    /// each `add_ref`) is released exactly once.
    pub fn release(&mut self, r: RecordRef) {
        let Ok(i) = self.segments.binary_search_by_key(&r.segment, |s| s.id) else {
            return;
        };
        let seg = &mut self.segments[i];
        if seg.live == 0 {
            return;
        }
        seg.live -= 1;
        self.stats.live_records = self.stats.live_records.saturating_sub(1);
        if seg.live == 0 && i + 1 < self.segments.len() {
            self.reclaim(i);
        }
    }

    /// One more reader for `r` (fan-out of one record to several sessions
    /// under a shared owner id): it then needs one more `release`.
    pub fn add_ref(&mut self, r: RecordRef) -> Result<(), BufferError> {
        let i = self
            .segments
            .binary_search_by_key(&r.segment, |s| s.id)
            .map_err(|_| BufferError::UnknownRecord(r))?;
        self.segments[i].live += 1;
        self.stats.live_records += 1;
        Ok(())
    }

    /// Seals the pending block into the active segment, which bounds the
    /// plaintext waiting in the heap. Writeback is left to the kernel on
    /// purpose: the buffer is ephemeral, so a page drained and reclaimed
    /// before the kernel's dirty expiry (30 s by default) never reaches the
    /// disk, which spares an IPC's flash. (msync(MS_ASYNC), which this used
    /// to call, has been a no-op on Linux since 2.6.19.)
    pub fn flush(&mut self) -> Result<(), BufferError> {
        self.seal_pending()
    }

    /// Seals everything appended from now on under a fresh key: the next
    /// append starts a new segment (unless the size bound forbids one; then
    /// the active segment is filled under its old key first). Older
    /// segments keep their key until they are reclaimed, then it is dropped.
    pub fn rotate_key(&mut self) -> Result<(), BufferError> {
        self.seal_pending()?;
        self.sealer.rotate()?;
        self.roll_requested = true;
        Ok(())
    }

    /// Keys held (current one included): tests and metrics.
    pub fn key_count(&self) -> usize {
        self.sealer.key_count()
    }

    /// Seals the pending block and copies it into the active segment.
    fn seal_pending(&mut self) -> Result<(), BufferError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(active) = self.segments.last_mut() else {
            return Err(BufferError::Config("pending block without a segment"));
        };
        let pos = BlockPos {
            segment: active.id,
            offset: self.pending.block,
        };
        let sealed = self
            .sealer
            .seal_block(active.key, pos, &mut self.pending.buf);
        if let Err(e) = sealed {
            // Never write at this position again; its records read as lost.
            active.write_at = active.file.map.len();
            self.pending.buf.clear();
            return Err(e.into());
        }
        let start = self.pending.block as usize;
        let end = start + self.pending.buf.len();
        // INVARIANT: append checked the block fits (`ensure_room` and the
        // pending-size check), so the range is inside the mapping.
        match active.file.map.get_mut(start..end) {
            Some(dst) => dst.copy_from_slice(&self.pending.buf),
            None => {
                active.write_at = active.file.map.len();
                self.pending.buf.clear();
                return Err(BufferError::Config("block overruns its segment"));
            }
        }
        active.write_at = end;
        self.pending.buf.clear();
        Ok(())
    }
}
