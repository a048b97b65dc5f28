//! A log file read a block at a time: recovery's two passes and a shard's
//! restore of its queues go through files of any size holding one block
//! (16 KiB of records) in memory, not the file.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use shardmq_core::buffer::log::{self, Kek, LogHeader, LoggedOp};
use shardmq_core::buffer::{RecordError, Sealer, BLOCK_HEADER_LEN};

use super::PersistError;

/// Where a record is: its file (by its place in recovery's order), the
/// block's offset in it, and the record's place in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Loc {
    pub file: u32,
    pub block: u32,
    pub nth: u32,
}

/// One open log file, its header read and its key opened.
pub(super) struct Blocks {
    path: PathBuf,
    file: BufReader<File>,
    pub header: LogHeader,
    sealer: Sealer,
    epoch: Instant,
    at: usize,
    /// The file's length at open: a block's length comes from its
    /// unauthenticated header, so one past the end is a cut, not a
    /// buffer to allocate.
    file_len: u64,
    buf: Vec<u8>,
    /// Why reading stopped before the end, once it did.
    pub cut: Option<RecordError>,
}

impl Blocks {
    /// Opens `path` under `keys`; expiries come back relative to `epoch`.
    pub fn open(
        encrypt: bool,
        keys: &[Kek],
        path: &Path,
        epoch: Instant,
    ) -> Result<Blocks, PersistError> {
        let io = |source| PersistError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut file = BufReader::with_capacity(256 * 1024, file);
        let mut head = [0u8; log::LOG_HEADER_LEN];
        let n = fill(&mut file, &mut head).map_err(io)?;
        let file_err = |source| PersistError::File {
            path: path.to_owned(),
            source,
        };
        let header = LogHeader::decode(&head[..n]).map_err(file_err)?;
        let sealer = header.open(encrypt, keys).map_err(file_err)?;
        Ok(Blocks {
            path: path.to_owned(),
            file,
            header,
            sealer,
            epoch,
            at: log::LOG_HEADER_LEN,
            file_len,
            buf: Vec::new(),
            cut: None,
        })
    }

    /// Bytes read as valid so far, header included.
    pub fn valid_len(&self) -> usize {
        self.at
    }

    /// The next block's offset and operations; `None` at the end of the
    /// file or at the first block that does not read back (`cut` says why:
    /// after a torn write that is the tail, after tampering nothing past it
    /// can be trusted either).
    pub fn next_block(&mut self) -> Result<Option<(u32, Vec<LoggedOp>)>, PersistError> {
        if self.cut.is_some() {
            return Ok(None);
        }
        let io = |source| PersistError::Io {
            path: self.path.clone(),
            source,
        };
        let mut head = [0u8; BLOCK_HEADER_LEN];
        let n = fill(&mut self.file, &mut head).map_err(io)?;
        if n == 0 {
            return Ok(None);
        }
        let len = match self.sealer.block_len(&head[..n]) {
            Ok(len) => len,
            Err(e) => return Ok(self.stop(e)),
        };
        if len as u64 > self.file_len.saturating_sub(self.at as u64) {
            return Ok(self.stop(RecordError::Malformed("block past the end of the file")));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&head);
        self.buf.resize(len, 0);
        let body = &mut self.buf[BLOCK_HEADER_LEN..];
        if fill(&mut self.file, body).map_err(io)? < body.len() {
            return Ok(self.stop(RecordError::Malformed("block past the end of the file")));
        }
        let at = self.at;
        let Ok(offset) = u32::try_from(at) else {
            return Ok(self.stop(RecordError::TooLarge));
        };
        match log::block_ops(&self.header, &self.sealer, &mut self.buf, at, self.epoch) {
            Ok(ops) => {
                self.at += len;
                Ok(Some((offset, ops)))
            }
            Err(e) => Ok(self.stop(e)),
        }
    }

    fn stop<T>(&mut self, why: RecordError) -> Option<T> {
        self.cut = Some(why);
        None
    }
}

/// Reads until `buf` is full or the file ends; how many bytes.
fn fill(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_core::broker::PersistOp;
    use shardmq_core::buffer::log::LogWriter;
    use shardmq_core::codec::QoS;
    use shardmq_core::session::Message;
    use std::sync::Arc;

    /// A log of a few blocks, written under `kek`: its bytes.
    fn log_bytes(kek: &Kek, epoch: Instant) -> Vec<u8> {
        let (header, sealer) =
            log::create(Some(kek), 0, 1, 0, 0, false).unwrap_or_else(|_| unreachable!());
        let mut writer = LogWriter::new(&header, sealer, epoch);
        let mut bytes = header.encode().to_vec();
        for batch in 0..3 {
            let ops: Vec<PersistOp> = (0..200)
                .map(|i| {
                    PersistOp::Retain(Arc::new(Message {
                        topic: format!("t/{batch}/{i}")
                            .as_str()
                            .try_into()
                            .unwrap_or_else(|_| unreachable!()),
                        payload: bytes::Bytes::from(vec![b'x'; 100]),
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        properties: Default::default(),
                        expires_at: None,
                        origin: Default::default(),
                        retain_stamp: 0,
                    }))
                })
                .collect();
            let (blocks, _) = writer.seal_ops(&ops).unwrap_or_else(|_| unreachable!());
            bytes.extend_from_slice(&blocks);
        }
        bytes
    }

    /// Reads `bytes` as a file: the operations read, and whether it was cut.
    fn read_all(kek: &Kek, bytes: &[u8], epoch: Instant, name: &str) -> (usize, bool) {
        let path = std::env::temp_dir().join(format!("smq-blocks-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap_or_else(|_| unreachable!());
        let mut blocks = Blocks::open(true, std::slice::from_ref(kek), &path, epoch)
            .unwrap_or_else(|_| unreachable!());
        let mut ops = 0;
        while let Some((_, read)) = blocks.next_block().unwrap_or_else(|_| unreachable!()) {
            ops += read.len();
        }
        let _ = std::fs::remove_file(&path);
        (ops, blocks.cut.is_some())
    }

    /// A block whose length field was changed (a torn or tampered tail)
    /// is a cut where it starts, not a buffer of that length; a byte changed
    /// anywhere else in a block cuts the file there too; the blocks before
    /// it are read.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant
    fn a_changed_block_is_a_cut_never_an_allocation_or_a_panic() {
        let kek = Kek::new(&[7; 32]).unwrap_or_else(|_| unreachable!());
        let epoch = Instant::now();
        let bytes = log_bytes(&kek, epoch);
        assert_eq!(read_all(&kek, &bytes, epoch, "whole"), (600, false));
        let first = log::LOG_HEADER_LEN;
        let mut huge = bytes.clone();
        huge[first + 4..first + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_all(&kek, &huge, epoch, "huge"), (0, true));
        let step = (bytes.len() - first) / 23;
        for at in (first..bytes.len()).step_by(step.max(1)) {
            let mut changed = bytes.clone();
            changed[at] ^= 0x40;
            let (ops, cut) = read_all(&kek, &changed, epoch, "flip");
            assert!(
                cut && ops < 600,
                "a change at {at} read {ops} ops, cut {cut}"
            );
        }
        // Torn: every prefix reads what its whole blocks hold.
        let (ops, cut) = read_all(&kek, &bytes[..bytes.len() - 1], epoch, "torn");
        assert!(cut && ops < 600);
    }
}
