//! Gives heap the broker freed back to the operating system. glibc returns
//! only the top of each arena by itself: after a subscriber's 3 GB backlog
//! was freed the RSS stayed at 3 GB for good (the memory was reused, never
//! returned). `malloc_trim(0)` releases the free pages inside every arena.
//! The binary runs on mimalloc, which purges freed pages itself as the
//! thread allocates; `mi_collect` does it at once for an idle shard.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

/// A shard asks for a trim once what it holds (queued, retained, partial
/// packets) fell this far below its peak since the last trim.
pub const TRIM_AFTER_BYTES: u64 = 32 * 1024 * 1024;

/// One trim at a time: it covers every shard's arena.
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Trims on glommio's blocking pool: `malloc_trim` walks every arena and
/// madvises their free pages, milliseconds per GiB the shard need not wait
/// for. `freed` is only for the log.
pub fn trim_soon(shard: usize, freed: u64) {
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    // mimalloc's heaps are per thread: collect this shard's on its thread
    // (a no-op when mimalloc is not the global allocator, as in-process tests).
    #[allow(unsafe_code)]
    // SAFETY: mi_collect has no preconditions; it touches only this thread's
    // heap and the segments other threads abandoned.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    glommio::spawn_local(async move {
        glommio::executor().spawn_blocking(trim).await;
        TRIMMING.store(false, Ordering::Release);
        debug!(shard, freed, "returned freed heap to the system");
    })
    .detach();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it takes each arena's lock
    // like malloc does, so it is safe while other threads allocate.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
