//! The byte buffers a shard's connections share. A read's bytes go into the
//! shard before anything else can run, so one read scratch serves every
//! connection; a writer takes a spare buffer only while it has something to
//! send. An idle connection holds neither, and the few buffers in use stay
//! warm in the cache however many connections take turns.

use std::cell::RefCell;

use bytes::BytesMut;

/// Bytes read per socket read; frames larger than this are assembled over
/// several reads (in the shard's inbox for the connection), bounded by the
/// maximum packet size (a small one until CONNECT is accepted) and the
/// shard's budget for partial packets.
pub const READ_CHUNK: usize = 16 * 1024;
/// A write buffer that grew past this (a drain's batches) is dropped when
/// its writer is done instead of kept as a spare.
pub const WRITE_BUF_IDLE_BYTES: usize = 16 * 1024;
/// Spare write buffers kept per shard: as many as writers that were blocked
/// on a full socket at once, up to this.
const SPARE_WRITE_BUFS: usize = 8;

#[derive(Debug)]
pub struct IoBuffers {
    read: RefCell<Vec<u8>>,
    spare_writes: RefCell<Vec<BytesMut>>,
}

impl Default for IoBuffers {
    fn default() -> Self {
        IoBuffers {
            read: RefCell::new(vec![0; READ_CHUNK]),
            spare_writes: RefCell::new(Vec::new()),
        }
    }
}

impl IoBuffers {
    /// Runs `f` on the read scratch. `f` must be done with the bytes when
    /// it returns (the next read overwrites them).
    pub fn with_read<T>(&self, f: impl FnOnce(&mut [u8]) -> T) -> T {
        match self.read.try_borrow_mut() {
            Ok(mut chunk) => f(&mut chunk),
            // Only a read inside a read would get here; none does (a
            // debug build says so, a release one reads into its own).
            Err(_) => {
                debug_assert!(false, "the read scratch is in use");
                f(&mut vec![0; READ_CHUNK])
            }
        }
    }

    /// An empty buffer to fill with what a connection has to send.
    pub fn take_write(&self) -> BytesMut {
        self.spare_writes
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(WRITE_BUF_IDLE_BYTES))
    }

    /// A writer is done with `buf`: kept as a spare unless it grew large or
    /// enough spares are kept.
    pub fn give_write(&self, mut buf: BytesMut) {
        let mut spares = self.spare_writes.borrow_mut();
        if buf.capacity() <= WRITE_BUF_IDLE_BYTES && spares.len() < SPARE_WRITE_BUFS {
            buf.clear();
            spares.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_reused_and_large_ones_dropped() {
        let bufs = IoBuffers::default();
        let mut a = bufs.take_write();
        a.extend_from_slice(b"abc");
        let ptr = a.as_ptr();
        bufs.give_write(a);
        let b = bufs.take_write();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the spare was not reused");
        let mut big = BytesMut::with_capacity(4 * WRITE_BUF_IDLE_BYTES);
        big.extend_from_slice(&[0; 10]);
        bufs.give_write(big);
        assert!(bufs.spare_writes.borrow().is_empty());
        for _ in 0..2 * SPARE_WRITE_BUFS {
            bufs.give_write(BytesMut::new());
        }
        assert_eq!(bufs.spare_writes.borrow().len(), SPARE_WRITE_BUFS);
    }

    /// A nested read is a bug a debug build names; a release build reads
    /// into a buffer of its own rather than into bytes still in use.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the read scratch is in use")]
    fn a_nested_read_is_caught_in_debug_builds() {
        let bufs = IoBuffers::default();
        bufs.with_read(|_| bufs.with_read(|_| ()));
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn a_nested_read_gets_its_own_scratch() {
        let bufs = IoBuffers::default();
        bufs.with_read(|a| {
            a[0] = 7;
            bufs.with_read(|b| {
                assert_eq!(b.len(), READ_CHUNK);
                assert_ne!(b.as_ptr(), a.as_ptr());
            });
            assert_eq!(a[0], 7);
        });
    }
}
