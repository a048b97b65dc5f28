//! One shard's disk-backed message buffer: append-only segment files in
//! `data_dir/shard-{id}/`, preallocated (a full disk is `NoSpace` at
//! allocation, never a SIGBUS) and mapped with memmap2. Owns files, mapping
//! and reclaim; the record format and sealing are `shardmq_core::buffer`.
//! INVARIANTS: the buffer is ephemeral (a `SegmentFile` deletes its file
//! when dropped, `close` deletes them all, open deletes a crash's
//! leftovers); plaintext
//! never reaches a mapping in Enabled mode (blocks are sealed in the heap and
//! then copied in); `segments` is sorted by id and its last entry is active.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use memmap2::{Advice, MmapMut, MmapOptions};
use rustix::fs::FallocateFlags;
use rustix::io::Errno;
use shardmq_core::buffer::{
    record, BlockPos, KeyId, RecordError, RecordRef, SealError, Sealer, BLOCK_BODY_TARGET,
    BLOCK_HEADER_LEN,
};
use shardmq_core::session::Message;

/// Default segment file size: large enough that allocation is rare, small
/// enough that reclaim frees space promptly.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest segment accepted (tests use 64 KiB).
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// `[magic 8][segment id u32][key id u32][flags u32][reserved 12]`: for
/// people and tools; the reader never trusts it (ids come from memory and
/// are bound into every block's associated data).
pub const SEGMENT_HEADER_LEN: usize = 32;
const SEGMENT_MAGIC: &[u8; 8] = b"SMQSEG01";
/// Every file this buffer creates ends with this; open deletes only these.
const SEGMENT_SUFFIX: &str = ".smq";
/// Opened blocks kept decrypted, so an in-order drain opens each block once
/// even when a few sessions drain at the same time.
const BLOCK_CACHE_LEN: usize = 4;
/// Reclaimed segment files kept mapped for reuse instead of deleted (the
/// spare made off the shard counts as one). PERF: deleting a 64 MiB segment
/// on the shard (unlink evicts its page cache, munmap drops its page tables)
/// and creating the next one (fallocate, map, fault in) cost ~15% of a
/// spilled drain's user and system time (`deliver` bench). Deletes beyond
/// the spares now run off the shard (`Deleter`).
const SPARES_MAX: usize = 2;

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
    pub reclaimed_segments: u64,
}

/// A preallocated, mapped segment file, not yet part of a buffer. `Send`:
/// create it on glommio's blocking pool (`spawn_blocking`) so fallocate and
/// the first page faults stay off the shard, then `install_spare`.
/// Dropping it unmaps and deletes the file (blocking): the buffer is
/// ephemeral, so a file nobody holds is garbage, wherever it is dropped (a
/// buffer closed or dropped, a spare made after its buffer went away).
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    map: MmapMut,
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        // The mapping goes right after (field drop); the kernel frees the
        // blocks once both the name and the mapping are gone.
        if let Err(e) = fs::remove_file(&self.path) {
            // Already gone: `open` of a later buffer on the same directory
            // removed it as a leftover.
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "disk buffer: cannot delete a segment file");
            }
        }
    }
}

impl SegmentFile {
    /// Creates `path` (must not exist, mode 0600), reserves `bytes` on disk
    /// and maps it. Blocking.
    pub fn create(path: &Path, bytes: u64) -> Result<SegmentFile, BufferError> {
        let io_err = |source| BufferError::Io {
            path: path.to_owned(),
            source,
        };
        let len = usize::try_from(bytes).map_err(|_| BufferError::Config("segment size"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        if let Err(e) = preallocate(&file, bytes) {
            // Leave no half-allocated file behind.
            let _ = fs::remove_file(path);
            return Err(match e.raw_os_error().map(Errno::from_raw_os_error) {
                Some(Errno::NOSPC | Errno::DQUOT | Errno::FBIG) => BufferError::NoSpace {
                    path: path.to_owned(),
                    bytes,
                },
                _ => io_err(e),
            });
        }
        let map = match map_file(&file, len) {
            Ok(map) => map,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(io_err(e));
            }
        };
        Ok(SegmentFile {
            path: path.to_owned(),
            map,
        })
    }

    /// Faults the whole mapping in for writing (MADV_POPULATE_WRITE, Linux
    /// 5.14+), so appends never take a page fault. Blocking; best effort.
    pub fn prefault(&self) {
        let _ = self.map.advise(Advice::PopulateWrite);
    }
}

/// Reserves the file's blocks. posix_fallocate semantics: if the file
/// system has no fallocate, write zeros (which also reserves).
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; 64 * 1024];
            let mut at = 0u64;
            while at < bytes {
                let n = (bytes - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File, len: usize) -> io::Result<MmapMut> {
    // SAFETY: the file was created by this process with create_new in a
    // 0700 directory and is never truncated while mapped; its full length is
    // allocated on disk, so touching the mapping cannot SIGBUS for lack of
    // space. Another process truncating it needs root/our uid, which the
    // threat model (docs/BUFFER.md) does not cover.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
}

/// Asked by `spare_request`: create this file (blocking pool), then
/// `install_spare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareRequest {
    pub path: PathBuf,
    pub bytes: u64,
}

#[derive(Debug)]
struct Segment {
    id: u32,
    key: KeyId,
    file: SegmentFile,
    /// End of the last block written; every byte before it is a block.
    write_at: usize,
    /// Records appended here and not released.
    live: u64,
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

#[derive(Debug)]
struct CachedBlock {
    segment: u32,
    block: u32,
    /// The opened block: header, plaintext body, then the (spent) trailer.
    /// Messages of `sharer` read from it are slices of it
    /// (`record::decode_shared`), so it lives until the last is dropped.
    buf: Bytes,
    body_len: usize,
    /// The owner whose records fill at least half the body, if any. Only
    /// its messages share the block: one held message pins all of it, and
    /// sharing a block mostly of other sessions' records would multiply
    /// the memory a session's in-flight window holds (others get copies).
    sharer: Option<u64>,
}

/// See `CachedBlock::sharer`. A body that does not parse has none (its
/// records fail `decode` on their own).
fn majority_owner(body: &[u8]) -> Option<u64> {
    let mut pos = 0;
    // (owner, bytes) of the current candidate (Boyer-Moore majority vote
    // weighted by bytes), then a second pass to check it.
    let mut candidate: Option<(u64, usize)> = None;
    while pos < body.len() {
        let (len, owner) = record::header(body.get(pos..)?).ok()?;
        candidate = match candidate {
            None => Some((owner, len)),
            Some((o, n)) if o == owner => Some((o, n + len)),
            Some((o, n)) if n > len => Some((o, n - len)),
            Some((_, n)) if n < len => Some((owner, len - n)),
            Some(_) => None,
        };
        pos += len;
    }
    let (owner, _) = candidate?;
    let mut owned = 0;
    pos = 0;
    while pos < body.len() {
        let (len, o) = record::header(body.get(pos..)?).ok()?;
        if o == owner {
            owned += len;
        }
        pos += len;
    }
    (2 * owned >= body.len()).then_some(owner)
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

/// Deletes reclaimed segment files outside the shard's event loop (the
/// server hands them to glommio's blocking pool, whose thread shares the
/// shard's CPU when shards are pinned: the work is preemptible, not gone).
/// PERF: unlinking a 64 MiB segment truncates its page cache and munmap
/// drops its page tables: ~8 ms each on the test machine, ~9% of the shard's
/// time in a 640k-message drain (docs/PERFORMANCE.md), taken in one piece
/// while every connection of the shard waited.
pub struct Deleter(Box<dyn Fn(DoomedSegment)>);

impl Deleter {
    pub fn new(f: impl Fn(DoomedSegment) + 'static) -> Deleter {
        Deleter(Box::new(f))
    }
}

impl std::fmt::Debug for Deleter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deleter")
    }
}

/// A reclaimed segment file on its way out. Dropping it unmaps and deletes
/// the file (blocking) and only then stops counting it against `maxSize`,
/// on whatever thread drops it. A graceful stop waits for these
/// (`DiskBuffer::off_shard_work`); one cut short by a crash leaves the file
/// behind, and the next start deletes leftovers. `Send`.
#[derive(Debug)]
pub struct DoomedSegment {
    file: Option<SegmentFile>,
    deleting: Arc<AtomicU64>,
}

impl Drop for DoomedSegment {
    fn drop(&mut self) {
        drop(self.file.take());
        self.deleting.fetch_sub(1, Ordering::Release);
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

    /// Unmaps and deletes `file`, through the deleter when there is one.
    fn discard(&mut self, file: SegmentFile) {
        match &self.deleter {
            Some(deleter) => {
                self.deleting.fetch_add(1, Ordering::AcqRel);
                (deleter.0)(DoomedSegment {
                    file: Some(file),
                    deleting: self.deleting.clone(),
                });
            }
            None => drop(file),
        }
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

    /// Reads the record back, checking it belongs to `owner`. A record that
    /// fails authentication or its checksum is `Corrupt` and counted; the
    /// caller drops it (and should still `release` it).
    pub fn read(&mut self, r: RecordRef, owner: u64) -> Result<Message, BufferError> {
        let result = self.read_inner(r, owner);
        match &result {
            Ok(_) => self.stats.read += 1,
            Err(BufferError::Corrupt(_)) => self.stats.corrupt += 1,
            Err(_) => {}
        }
        result
    }

    fn read_inner(&mut self, r: RecordRef, owner: u64) -> Result<Message, BufferError> {
        if self.closed {
            return Err(BufferError::Closed);
        }
        let at = r.at as usize;
        let end = at + r.len as usize;
        let active_id = self.segments.last().map(|s| s.id);
        if !self.pending.is_empty() && Some(r.segment) == active_id && r.block == self.pending.block
        {
            let body = &self.pending.buf[BLOCK_HEADER_LEN..];
            let bytes = body
                .get(at..end)
                .ok_or(RecordError::Malformed("record bounds"))?;
            return Ok(record::decode(bytes, owner, self.epoch)?);
        }
        // PERF: a cached block is read in place (no clone of its `Bytes`).
        let epoch = self.epoch;
        let read = |block: &Bytes, body_len: usize, sharer: Option<u64>| {
            if end > body_len {
                return Err(BufferError::from(RecordError::Malformed("record bounds")));
            }
            let range = BLOCK_HEADER_LEN + at..BLOCK_HEADER_LEN + end;
            if sharer == Some(owner) {
                Ok(record::decode_in(block, range, owner, epoch)?)
            } else {
                Ok(record::decode(&block[range], owner, epoch)?)
            }
        };
        if let Some(c) = self
            .cache
            .iter()
            .find(|c| c.segment == r.segment && c.block == r.block)
        {
            return read(&c.buf, c.body_len, c.sharer);
        }
        let (block, body_len, sharer) = self.open_block(r)?;
        read(&block, body_len, sharer)
    }

    /// Copies `r`'s block out of the mapping and opens it; returns it and
    /// its body length. Blocks up to `2 * BLOCK_BODY_TARGET` are cached.
    fn open_block(&mut self, r: RecordRef) -> Result<(Bytes, usize, Option<u64>), BufferError> {
        let i = self
            .segments
            .binary_search_by_key(&r.segment, |s| s.id)
            .map_err(|_| BufferError::UnknownRecord(r))?;
        let start = r.block as usize;
        let total = {
            let seg = &self.segments[i];
            let written = &seg.file.map[..seg.write_at];
            let header = written.get(start..).ok_or(BufferError::UnknownRecord(r))?;
            let total = self.sealer.block_len(header)?;
            if start + total > seg.write_at {
                return Err(RecordError::BadBlockHeader.into());
            }
            total
        };
        let cacheable = total <= 2 * BLOCK_BODY_TARGET;
        let mut buf = if cacheable {
            self.take_cache_slot()
        } else {
            Vec::new()
        };
        let seg = &self.segments[i];
        buf.clear();
        buf.extend_from_slice(&seg.file.map[start..start + total]);
        let pos = BlockPos {
            segment: seg.id,
            offset: r.block,
        };
        let opened = self
            .sealer
            .open_block(seg.key, pos, &mut buf)
            .map(<[u8]>::len);
        let body_len = opened?;
        let sharer = majority_owner(&buf[BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + body_len]);
        let buf = Bytes::from(buf);
        if cacheable {
            let slot = self.cache_victim;
            self.cache[slot] = CachedBlock {
                segment: r.segment,
                block: r.block,
                buf: buf.clone(),
                body_len,
                sharer,
            };
            self.cache_victim = (slot + 1) % BLOCK_CACHE_LEN;
        }
        Ok((buf, body_len, sharer))
    }

    /// Empties the cache slot the next block will take and returns a
    /// buffer for it: the slot's old one when no message holds a slice of
    /// it any more, else a fresh one.
    fn take_cache_slot(&mut self) -> Vec<u8> {
        if self.cache.len() < BLOCK_CACHE_LEN {
            self.cache.push(CachedBlock {
                segment: 0,
                block: 0,
                buf: Bytes::new(),
                body_len: 0,
                sharer: None,
            });
            self.cache_victim = self.cache.len() - 1;
        }
        let c = &mut self.cache[self.cache_victim];
        // Segment ids start at 1: 0 never matches a lookup.
        c.segment = 0;
        c.body_len = 0;
        match std::mem::take(&mut c.buf).try_into_mut() {
            Ok(unique) => Vec::from(unique),
            Err(_) => Vec::new(),
        }
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

    /// Hints that `r`'s block and the `len_bytes` after it will be read soon
    /// (MADV_WILLNEED: readahead starts without blocking the caller).
    pub fn prefetch(&self, r: RecordRef, len_bytes: usize) {
        if let Ok(i) = self.segments.binary_search_by_key(&r.segment, |s| s.id) {
            let seg = &self.segments[i];
            let start = (r.block as usize).min(seg.write_at);
            let len = len_bytes.min(seg.write_at - start);
            if len > 0 {
                let _ = seg.file.map.advise_range(Advice::WillNeed, start, len);
            }
        }
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

    /// The next segment file to create off the shard, if one is allowed and
    /// none is ready or already asked for.
    pub fn spare_request(&mut self) -> Option<SpareRequest> {
        if self.closed || !self.spares.is_empty() || self.spare_requested || !self.may_allocate() {
            return None;
        }
        self.spare_requested = true;
        Some(SpareRequest {
            path: self.next_file_path(),
            bytes: self.segment_bytes,
        })
    }

    /// Hands over a file made from `spare_request` (or a failed attempt:
    /// pass the error to let the next roll create one synchronously).
    pub fn install_spare(&mut self, file: Result<SegmentFile, BufferError>) {
        self.spare_requested = false;
        if let Ok(file) = file {
            if self.spares.is_empty() && !self.closed {
                self.spares.push(file);
            } else {
                // A reclaimed segment took its place meanwhile, or the
                // buffer closed.
                self.discard(file);
            }
        }
    }

    fn may_allocate(&self) -> bool {
        let allocated = (self.segments.len() + self.spares.len()) as u64
            + self.deleting.load(Ordering::Acquire);
        allocated + u64::from(self.spare_requested) < self.segments_max
    }

    fn next_file_path(&mut self) -> PathBuf {
        let no = self.next_file_no;
        self.next_file_no += 1;
        // The open's generation keeps names unique within the process, so
        // a late delete from an earlier buffer on the same directory (its
        // `Deleter` job) cannot unlink one of this buffer's files.
        self.dir.join(format!(
            "seg-{:04}-{no:010}{SEGMENT_SUFFIX}",
            self.generation
        ))
    }

    fn active_room(&self) -> usize {
        self.segments
            .last()
            .map_or(0, |s| s.file.map.len() - s.write_at)
    }

    /// Makes sure the active segment has `need` bytes free, rolling to a new
    /// segment if not.
    fn ensure_room(&mut self, need: usize) -> Result<(), BufferError> {
        let fits = need <= self.active_room();
        if fits && !self.roll_requested {
            return Ok(());
        }
        if need as u64 > self.segment_bytes - SEGMENT_HEADER_LEN as u64 {
            return Err(BufferError::TooLarge {
                len: need,
                segment_bytes: self.segment_bytes,
            });
        }
        let file = match self.spares.pop() {
            Some(file) => file,
            None => {
                if !self.may_allocate() {
                    if fits {
                        // Rotation waits for room for a new segment.
                        return Ok(());
                    }
                    return Err(BufferError::Full {
                        size_max_bytes: self.size_max_bytes,
                    });
                }
                let path = self.next_file_path();
                SegmentFile::create(&path, self.segment_bytes)?
            }
        };
        let id = self.next_segment_id;
        self.next_segment_id = id
            .checked_add(1)
            .ok_or(BufferError::Config("segment ids exhausted"))?;
        let key = self.sealer.current_key();
        self.roll_requested = false;
        let mut seg = Segment {
            id,
            key,
            file,
            write_at: SEGMENT_HEADER_LEN,
            live: 0,
        };
        let h = &mut seg.file.map[..SEGMENT_HEADER_LEN];
        h[..8].copy_from_slice(SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&id.to_le_bytes());
        h[12..16].copy_from_slice(&key.0.to_le_bytes());
        h[16..20].copy_from_slice(&u32::from(self.sealer.encrypted()).to_le_bytes());
        self.segments.push(seg);
        // The previous active segment may already be fully released.
        let prev = self.segments.len().wrapping_sub(2);
        if self.segments.get(prev).is_some_and(|s| s.live == 0) {
            self.reclaim(prev);
        }
        Ok(())
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

    /// Deletes segment `i` (fully released, not active).
    fn reclaim(&mut self, i: usize) {
        let seg = self.segments.remove(i);
        self.cache.retain(|c| c.segment != seg.id);
        self.cache_victim = 0;
        // Reuse the file, mapping and all: its old blocks are never read
        // again (readers go by live references, and a block's segment id
        // and position are bound into its seal) and are overwritten as the
        // segment fills again.
        if self.spares.len() < SPARES_MAX {
            self.spares.push(seg.file);
        } else {
            self.discard(seg.file);
        }
        self.stats.reclaimed_segments += 1;
        if seg.key != self.sealer.current_key() && self.segments.iter().all(|s| s.key != seg.key) {
            self.sealer.retire(seg.key);
        }
    }
}

/// Deletes this buffer's files left by an earlier run; other files are
/// left alone. Returns how many were deleted.
fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_ours = name.to_str().is_some_and(|n| n.ends_with(SEGMENT_SUFFIX));
        if is_ours && entry.file_type()?.is_file() {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Already gone: a delete from an earlier buffer in this
                // process (its `Deleter` job) got there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytestring::ByteString;
    use shardmq_core::codec::QoS;
    use shardmq_core::topic::TopicName;

    use super::*;

    fn message(payload_len: usize) -> Message {
        Message {
            topic: TopicName::try_from("a/b").unwrap(),
            payload: Bytes::from(vec![7u8; payload_len]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: ByteString::from_static("c"),
        }
    }

    fn body(records: &[(u64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (owner, payload_len) in records {
            record::encode(&mut out, *owner, &message(*payload_len), Instant::now()).unwrap();
        }
        out
    }

    #[test]
    fn majority_owner_is_the_owner_of_at_least_half_the_bytes() {
        assert_eq!(
            majority_owner(&body(&[(1, 100), (2, 100), (1, 100)])),
            Some(1)
        );
        // Few records but most bytes.
        assert_eq!(
            majority_owner(&body(&[(2, 1), (2, 1), (3, 1), (1, 900)])),
            Some(1)
        );
        assert_eq!(majority_owner(&body(&[(1, 50), (2, 50), (3, 50)])), None);
        assert_eq!(majority_owner(&[]), None);
        // A body that does not parse shares with nobody.
        assert_eq!(majority_owner(&[0xFF; 40]), None);
    }

    /// The in-flight window of a session whose records are a small part of
    /// a block must not pin the whole block: only the majority owner's
    /// messages are slices of it, the others are copies.
    #[test]
    fn only_the_majority_owner_shares_the_opened_block() {
        let dir = std::env::temp_dir().join(format!("shardmq-share-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for encrypt in [true, false] {
            let mut buf =
                DiskBuffer::open(&dir, 0, 1 << 20, 1 << 18, encrypt, Instant::now()).unwrap();
            let big = buf.append(1, &message(1000)).unwrap();
            let small = buf.append(2, &message(10)).unwrap();
            buf.flush().unwrap();
            let got_big = buf.read(big, 1).unwrap();
            let got_small = buf.read(small, 2).unwrap();
            assert_eq!(got_big, message(1000));
            assert_eq!(got_small, message(10));
            let block = buf.cache[0].buf.as_ptr_range();
            assert!(block.contains(&got_big.payload.as_ptr()));
            assert!(!block.contains(&got_small.payload.as_ptr()));
            drop(buf);
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
