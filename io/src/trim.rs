//! Gives heap the broker freed back to the operating system. glibc returns
//! only the top of each arena by itself: after a subscriber's 3 GB backlog
//! was freed the RSS stayed at 3 GB for good (the memory was reused, never
//! returned). `malloc_trim(0)` releases the free pages inside every arena.
//! The binary runs on mimalloc (v3), whose heaps belong to threads: a block
//! freed by another shard (a mesh message) waits on its owner's page until
//! the owner collects. So a trim asked by one shard is done by every shard on
//! its own thread (`collect_if_asked`, each tick), and the process-wide
//! purge of freed pages (`mi_collect(true)`) runs on the blocking pool with
//! glibc's `malloc_trim`, which now covers only C-side allocations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::debug;

/// A shard asks for a trim once what it holds (queued, retained, partial
/// packets) fell this far below its peak since the last trim.
pub const TRIM_AFTER_BYTES: u64 = 32 * 1024 * 1024;

/// One process-wide purge at a time.
static TRIMMING: AtomicBool = AtomicBool::new(false);
/// Bumped by every trim request; each shard collects its own heap once it
/// sees a generation it has not collected for.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Trims on glommio's blocking pool: `malloc_trim` walks every arena and
/// madvises their free pages, milliseconds per GiB the shard need not wait
/// for. `freed` is only for the log.
pub fn trim_soon(shard: usize, freed: u64) {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    glommio::spawn_local(async move {
        glommio::executor().spawn_blocking(trim).await;
        TRIMMING.store(false, Ordering::Release);
        debug!(shard, freed, "returned freed heap to the system");
    })
    .detach();
}

/// On a shard's thread, each tick: collects this thread's mimalloc heap
/// (blocks other shards freed into it, empty pages) once per trim request.
/// Not forced: the process-wide page purge is the blocking pool's.
pub fn collect_if_asked(seen: &mut u64) {
    let now = GENERATION.load(Ordering::Acquire);
    if now == *seen {
        return;
    }
    *seen = now;
    #[allow(unsafe_code)]
    // SAFETY: mi_collect has no preconditions; unforced, it collects the
    // calling thread's heap only (a no-op where mimalloc is not the global
    // allocator, as in in-process tests).
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: mi_collect(true) has no preconditions and is thread-safe: it
    // collects this pool thread's heap and purges free pages of every arena.
    // malloc_trim has none either; it takes each arena's lock like malloc
    // does, so it is safe while other threads allocate.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: as above; no glibc here.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
