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
        let mut file = BufReader::with_capacity(256 * 1024, File::open(path).map_err(io)?);
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
