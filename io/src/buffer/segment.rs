//! The buffer's files: a `SegmentFile` is one preallocated, mapped file,
//! created on the blocking pool (`spare_request`, `install_spare`) or on
//! the shard when no spare is ready, reused or handed to the `Deleter` when
//! reclaimed, and deleted when dropped (the buffer is ephemeral).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{Advice, MmapMut, MmapOptions};
use rustix::fs::FallocateFlags;
use rustix::io::Errno;
use shardmq_core::buffer::KeyId;

use super::{BufferError, DiskBuffer};

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
pub(super) const SEGMENT_SUFFIX: &str = ".smq";
/// Reclaimed segment files kept mapped for reuse instead of deleted (the
/// spare made off the shard counts as one). PERF: deleting a 64 MiB segment
/// on the shard (unlink evicts its page cache, munmap drops its page tables)
/// and creating the next one (fallocate, map, fault in) cost ~15% of a
/// spilled drain's user and system time (`deliver` bench). Deletes beyond
/// the spares now run off the shard (`Deleter`).
const SPARES_MAX: usize = 2;

/// A preallocated, mapped segment file, not yet part of a buffer. `Send`:
/// create it on glommio's blocking pool (`spawn_blocking`) so fallocate and
/// the first page faults stay off the shard, then `install_spare`.
/// Dropping it unmaps and deletes the file (blocking): the buffer is
/// ephemeral, so a file nobody holds is garbage, wherever it is dropped (a
/// buffer closed or dropped, a spare made after its buffer went away).
#[derive(Debug)]
pub struct SegmentFile {
    path: PathBuf,
    pub(super) map: MmapMut,
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
pub(super) struct Segment {
    pub(super) id: u32,
    pub(super) key: KeyId,
    pub(super) file: SegmentFile,
    /// End of the last block written; every byte before it is a block.
    pub(super) write_at: usize,
    /// Records appended here and not released.
    pub(super) live: u64,
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

    pub(super) fn active_room(&self) -> usize {
        self.segments
            .last()
            .map_or(0, |s| s.file.map.len() - s.write_at)
    }

    /// Makes sure the active segment has `need` bytes free, rolling to a new
    /// segment if not.
    pub(super) fn ensure_room(&mut self, need: usize) -> Result<(), BufferError> {
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

    /// Deletes segment `i` (fully released, not active).
    pub(super) fn reclaim(&mut self, i: usize) {
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
pub(super) fn remove_leftovers(dir: &Path) -> io::Result<usize> {
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
