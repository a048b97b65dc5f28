//! The persisted retained log's file format (docs/PERSISTENCE.md): a header
//! naming the file's shard and place in the sequence, carrying the file's own
//! data key wrapped under the key-encryption key, then blocks sealed as the
//! disk buffer's (`seal`) holding `record`s whose owner field is the
//! operation. Reading stops at the first block that does not open (a torn
//! tail, corruption or tampering) and says where. No I/O, no clock reads.

use std::borrow::Cow;
use std::fmt;
use std::time::Instant;

use bytestring::ByteString;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::seal::{BlockPos, KeyId, Sealer, BLOCK_HEADER_LEN, TAG_LEN};
use super::{record, RecordError, SealError, BLOCK_BODY_TARGET};
use crate::broker::{
    session_record, PersistOp, QueueDone, QueuePut, QueueSent, QueueState, SessionRecord, Snapshot,
};
use crate::cluster::clock::STAMP_MAX;
use crate::codec::QoS;
use crate::session::Message;
use crate::topic::TopicName;

const LOG_MAGIC: &[u8; 8] = b"SMQLOG01";
const FLAG_ENCRYPTED: u32 = 1;
/// The file may hold retained messages with cluster stamps above their
/// operation code (`retain_op`): a build before stamps refuses the file at
/// start instead of cutting it at the first one.
const FLAG_STAMPED: u32 = 2;
/// magic, flags, shard, generation, compaction, epoch, key fingerprint:
/// everything before the wrapped key, which is its associated data.
const FIXED_LEN: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8;
const KEY_LEN: usize = 32;
const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
/// The header, its CRC-32 included.
pub const LOG_HEADER_LEN: usize = FIXED_LEN + WRAPPED_LEN + 4;

/// Record owner fields: which operation the record is.
/// An operation's code is the record owner's low byte; a retained
/// message's stamp is above it (`retain_op`).
const OP_BITS: u32 = 8;
const OP_MASK: u64 = (1 << OP_BITS) - 1;
const OP_RETAIN: u64 = 1;
const OP_CLEAR: u64 = 2;
const OP_SESSION_PUT: u64 = 3;
const OP_SESSION_DELETE: u64 = 4;
const OP_QUEUE_PUT: u64 = 5;
const OP_QUEUE_DONE: u64 = 6;
const OP_QUEUE_STATE: u64 = 7;
const OP_QUEUE_SENT: u64 = 8;

/// The one key id of a file's sealer (`Sealer::with_key`).
const FILE_KEY: KeyId = KeyId(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("not a shardmq persisted log (bad magic, size or header checksum)")]
    NotALog,
    #[error("unknown header flags {0:#x}")]
    Flags(u32),
    #[error("the file is not encrypted, but persistence.encryption.mode is Enabled")]
    Plaintext,
    #[error(
        "its data key is wrapped under key {0}, which the configured key source does not hold \
         (keyFile, the persistence-key credential or SHARDMQ_PERSISTENCE_KEY; none is read \
         while encryption.mode is Disabled)"
    )]
    NoKey(String),
    #[error("its data key does not unwrap: the header was changed")]
    Unwrap,
    #[error("the system random generator failed")]
    Random,
    #[error("the log is larger than 4 GiB")]
    TooLarge,
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// A key-encryption key: wraps each file's data key. Never printed; its
/// fingerprint names it in headers and logs.
pub struct Kek {
    aead: LessSafeKey,
    fingerprint: [u8; 8],
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", fingerprint_hex(&self.fingerprint))
    }
}

impl Kek {
    pub fn new(bytes: &[u8; KEY_LEN]) -> Result<Kek, LogError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| LogError::Random)?;
        // A one-way name for the key: SHA-256 of a label and the key, cut to
        // 64 bits. Telling keys apart is all it is for.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"shardmq persistence key-encryption key\0");
        ctx.update(bytes);
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&ctx.finish().as_ref()[..8]);
        Ok(Kek {
            aead: LessSafeKey::new(unbound),
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }

    pub fn name(&self) -> String {
        fingerprint_hex(&self.fingerprint)
    }
}

pub fn fingerprint_hex(fingerprint: &[u8; 8]) -> String {
    fingerprint.iter().map(|b| format!("{b:02x}")).collect()
}

/// A log file's header. In plaintext mode the key fields are zeros.
#[derive(Clone, PartialEq, Eq)]
pub struct LogHeader {
    pub encrypted: bool,
    pub shard: u32,
    /// The broker run that wrote the file (recovery starts a new one).
    pub generation: u32,
    /// Rewrites within the run; files apply in (generation, compaction) order.
    pub compaction: u32,
    /// Wall-clock time (Unix nanoseconds) of the instant the records'
    /// expiries count from.
    pub epoch_unix_nanos: u64,
    /// Written by a cluster node: records may carry stamps (`FLAG_STAMPED`).
    pub stamped: bool,
    /// The key-encryption key that wrapped the data key.
    pub kek: [u8; 8],
    wrapped: [u8; WRAPPED_LEN],
}

impl fmt::Debug for LogHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogHeader")
            .field("encrypted", &self.encrypted)
            .field("shard", &self.shard)
            .field("generation", &self.generation)
            .field("compaction", &self.compaction)
            .field("kek", &fingerprint_hex(&self.kek))
            .finish_non_exhaustive()
    }
}

/// A new file's header and the sealer for its blocks, under a fresh random
/// data key wrapped by `kek` (`None`: plaintext with checksums).
/// `stamped`: a cluster node's file (`FLAG_STAMPED`).
pub fn create(
    kek: Option<&Kek>,
    shard: u32,
    generation: u32,
    compaction: u32,
    epoch_unix_nanos: u64,
    stamped: bool,
) -> Result<(LogHeader, Sealer), LogError> {
    let mut header = LogHeader {
        encrypted: kek.is_some(),
        shard,
        generation,
        compaction,
        epoch_unix_nanos,
        stamped,
        kek: kek.map_or([0; 8], Kek::fingerprint),
        wrapped: [0; WRAPPED_LEN],
    };
    let Some(kek) = kek else {
        return Ok((header, Sealer::with_key(false, &[0; KEY_LEN])?));
    };
    let rng = SystemRandom::new();
    let mut dek = [0u8; KEY_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut dek).map_err(|_| LogError::Random)?;
    rng.fill(&mut nonce).map_err(|_| LogError::Random)?;
    let mut sealed = dek;
    let tag = kek
        .aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header.fixed()),
            &mut sealed,
        )
        .map_err(|_| LogError::Random)?;
    header.wrapped[..NONCE_LEN].copy_from_slice(&nonce);
    header.wrapped[NONCE_LEN..NONCE_LEN + KEY_LEN].copy_from_slice(&sealed);
    header.wrapped[NONCE_LEN + KEY_LEN..].copy_from_slice(tag.as_ref());
    let sealer = Sealer::with_key(true, &dek)?;
    dek.fill(0);
    Ok((header, sealer))
}

impl LogHeader {
    fn fixed(&self) -> [u8; FIXED_LEN] {
        let mut h = [0u8; FIXED_LEN];
        h[..8].copy_from_slice(LOG_MAGIC);
        let mut flags = if self.encrypted { FLAG_ENCRYPTED } else { 0 };
        if self.stamped {
            flags |= FLAG_STAMPED;
        }
        h[8..12].copy_from_slice(&flags.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..20].copy_from_slice(&self.generation.to_le_bytes());
        h[20..24].copy_from_slice(&self.compaction.to_le_bytes());
        h[24..32].copy_from_slice(&self.epoch_unix_nanos.to_le_bytes());
        h[32..40].copy_from_slice(&self.kek);
        h
    }

    pub fn encode(&self) -> [u8; LOG_HEADER_LEN] {
        let mut h = [0u8; LOG_HEADER_LEN];
        h[..FIXED_LEN].copy_from_slice(&self.fixed());
        h[FIXED_LEN..FIXED_LEN + WRAPPED_LEN].copy_from_slice(&self.wrapped);
        let crc = crc32fast::hash(&h[..FIXED_LEN + WRAPPED_LEN]);
        h[FIXED_LEN + WRAPPED_LEN..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses the header at the start of `bytes`. The CRC catches accidents;
    /// in encrypted files the data key's unwrap authenticates the rest.
    pub fn decode(bytes: &[u8]) -> Result<LogHeader, LogError> {
        let h = bytes.get(..LOG_HEADER_LEN).ok_or(LogError::NotALog)?;
        let (body, crc) = h.split_at(FIXED_LEN + WRAPPED_LEN);
        if &h[..8] != LOG_MAGIC || crc32fast::hash(body).to_le_bytes() != crc {
            return Err(LogError::NotALog);
        }
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let flags = u32_at(8);
        if flags & !(FLAG_ENCRYPTED | FLAG_STAMPED) != 0 {
            return Err(LogError::Flags(flags));
        }
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&h[24..32]);
        let mut kek = [0u8; 8];
        kek.copy_from_slice(&h[32..40]);
        let mut wrapped = [0u8; WRAPPED_LEN];
        wrapped.copy_from_slice(&h[FIXED_LEN..FIXED_LEN + WRAPPED_LEN]);
        Ok(LogHeader {
            encrypted: flags & FLAG_ENCRYPTED != 0,
            shard: u32_at(12),
            generation: u32_at(16),
            compaction: u32_at(20),
            epoch_unix_nanos: u64::from_le_bytes(epoch),
            stamped: flags & FLAG_STAMPED != 0,
            kek,
            wrapped,
        })
    }

    /// The sealer for this file's blocks. `keys`: the key-encryption keys
    /// held (empty when encryption is Disabled). The mode comes from the
    /// configuration, never from the file: a file rewritten as plaintext is
    /// refused while encryption is Enabled.
    pub fn open(&self, encrypt: bool, keys: &[Kek]) -> Result<Sealer, LogError> {
        if !self.encrypted {
            if encrypt {
                return Err(LogError::Plaintext);
            }
            return Ok(Sealer::with_key(false, &[0; KEY_LEN])?);
        }
        let kek = keys
            .iter()
            .find(|k| k.fingerprint == self.kek)
            .ok_or_else(|| LogError::NoKey(fingerprint_hex(&self.kek)))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.wrapped[..NONCE_LEN]);
        let mut sealed = [0u8; KEY_LEN + TAG_LEN];
        sealed.copy_from_slice(&self.wrapped[NONCE_LEN..]);
        let dek = kek
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.fixed()),
                &mut sealed,
            )
            .map_err(|_| LogError::Unwrap)?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(dek);
        let sealer = Sealer::with_key(true, &key)?;
        key.fill(0);
        sealed.fill(0);
        Ok(sealer)
    }
}

/// Appends to one file: seals batches of operations into blocks placed at
/// the file's end. The caller writes them there and calls `advance`.
pub struct LogWriter {
    sealer: Sealer,
    segment: u32,
    len: u64,
    epoch: Instant,
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogWriter")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// One operation read back from a log.
#[derive(Debug, Clone)]
pub enum LoggedOp {
    Retain(Message),
    Clear(TopicName),
    SessionPut(SessionRecord),
    SessionDelete(ByteString),
    /// A session put in an intact block whose payload does not decode (a
    /// newer format, or a bug): that session is dropped, the file goes on.
    SessionUnreadable(ByteString, RecordError),
    QueuePut(QueuePut),
    QueueDone(QueueDone),
    QueueState(QueueState),
    QueueSent(QueueSent),
    /// A queue record in an intact block that does not decode: that
    /// client id's queue is dropped (its session stays), the file goes on.
    QueueUnreadable(ByteString, RecordError),
}

impl LogWriter {
    /// A writer for a file that holds `header` and nothing else yet.
    /// `epoch` is the instant `header.epoch_unix_nanos` names.
    pub fn new(header: &LogHeader, sealer: Sealer, epoch: Instant) -> LogWriter {
        LogWriter {
            sealer,
            segment: header.compaction,
            len: LOG_HEADER_LEN as u64,
            epoch,
        }
    }

    /// Bytes in the file once everything sealed so far is written.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= LOG_HEADER_LEN as u64
    }

    /// The blocks for `ops`, to write at `len()`; the writer moves past them.
    /// Positions only grow, so a failed write must abandon the file (a new
    /// one gets a new data key) rather than write here again.
    /// Returns the bytes and how many operations could not be encoded
    /// (fields too long for the record format, never from a valid packet).
    pub fn seal_ops(&mut self, ops: &[PersistOp]) -> Result<(Vec<u8>, usize), LogError> {
        // A clear is written as a message with the topic alone, made here.
        let epoch = self.epoch;
        let mut unencodable = 0;
        let records: Vec<(u64, Cow<'_, Message>)> = ops
            .iter()
            .filter_map(|op| match op {
                PersistOp::Retain(m) => Some((retain_op(m), Cow::Borrowed(&**m))),
                PersistOp::Clear(topic) => Some((OP_CLEAR, Cow::Owned(clear_record(topic)))),
                PersistOp::SessionPut(r) => {
                    let m = session_message(r, epoch, &mut unencodable)?;
                    Some((OP_SESSION_PUT, Cow::Owned(m)))
                }
                PersistOp::SessionDelete(id) => Some((
                    OP_SESSION_DELETE,
                    Cow::Owned(session_record::delete_message(id)),
                )),
                PersistOp::QueuePut(p) => {
                    let m = queue_put_message(p, epoch, &mut unencodable)?;
                    Some((OP_QUEUE_PUT, Cow::Owned(m)))
                }
                PersistOp::QueueDone(d) => Some((OP_QUEUE_DONE, Cow::Owned(d.to_message()))),
                PersistOp::QueueState(q) => Some((OP_QUEUE_STATE, Cow::Owned(q.to_message()))),
                PersistOp::QueueSent(w) => Some((OP_QUEUE_SENT, Cow::Owned(w.to_message()))),
            })
            .collect();
        let (bytes, skipped) = self.seal_records(records.iter().map(|(op, m)| (*op, &**m)))?;
        Ok((bytes, skipped + unencodable))
    }

    /// The blocks holding a snapshot: the clears and session deletes
    /// first, then every message and session.
    pub fn seal_snapshot(&mut self, snapshot: &Snapshot) -> Result<(Vec<u8>, usize), LogError> {
        let clears: Vec<Message> = snapshot.clears.iter().map(clear_record).collect();
        let deletes: Vec<Message> = snapshot
            .deleted_sessions
            .iter()
            .map(session_record::delete_message)
            .collect();
        let (epoch, mut unencodable) = (self.epoch, 0);
        let sessions: Vec<Message> = snapshot
            .sessions
            .iter()
            .filter_map(|r| session_message(r, epoch, &mut unencodable))
            .collect();
        let mut queues: Vec<(u64, Message)> = Vec::new();
        for q in &snapshot.queues {
            if let Some(state) = &q.state {
                queues.push((OP_QUEUE_STATE, state.to_message()));
            }
            if let Some(sent) = &q.sent {
                queues.push((OP_QUEUE_SENT, sent.to_message()));
            }
            for p in &q.puts {
                if let Some(m) = queue_put_message(p, epoch, &mut unencodable) {
                    queues.push((OP_QUEUE_PUT, m));
                }
            }
        }
        let records = clears
            .iter()
            .map(|m| (OP_CLEAR, m))
            .chain(deletes.iter().map(|m| (OP_SESSION_DELETE, m)))
            .chain(snapshot.messages.iter().map(|m| (retain_op(m), &**m)))
            .chain(sessions.iter().map(|m| (OP_SESSION_PUT, m)))
            .chain(queues.iter().map(|(op, m)| (*op, m)));
        let (bytes, skipped) = self.seal_records(records)?;
        Ok((bytes, skipped + unencodable))
    }

    fn seal_records<'a>(
        &mut self,
        records: impl Iterator<Item = (u64, &'a Message)>,
    ) -> Result<(Vec<u8>, usize), LogError> {
        let mut out = Vec::new();
        let mut block = vec![0u8; BLOCK_HEADER_LEN];
        let mut skipped = 0;
        for (op, message) in records {
            if record::encode(&mut block, op, message, self.epoch).is_err() {
                skipped += 1;
                continue;
            }
            if block.len() - BLOCK_HEADER_LEN >= BLOCK_BODY_TARGET {
                self.seal_one(&mut block, &mut out)?;
            }
        }
        if block.len() > BLOCK_HEADER_LEN {
            self.seal_one(&mut block, &mut out)?;
        }
        Ok((out, skipped))
    }

    fn seal_one(&mut self, block: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), LogError> {
        let offset = u32::try_from(self.len).map_err(|_| LogError::TooLarge)?;
        let pos = BlockPos {
            segment: self.segment,
            offset,
        };
        self.sealer.seal_block(FILE_KEY, pos, block)?;
        self.len += block.len() as u64;
        out.extend_from_slice(block);
        block.clear();
        block.resize(BLOCK_HEADER_LEN, 0);
        Ok(())
    }
}

/// A session's record, or `None` counted in `unencodable` (a will past the
/// record format's limits: never from a valid packet).
fn session_message(r: &SessionRecord, epoch: Instant, unencodable: &mut usize) -> Option<Message> {
    let m = r.to_message(epoch).ok();
    *unencodable += usize::from(m.is_none());
    m
}

/// A queued message's record, or `None` counted in `unencodable`.
fn queue_put_message(p: &QueuePut, epoch: Instant, unencodable: &mut usize) -> Option<Message> {
    let m = p.to_message(epoch).ok();
    *unencodable += usize::from(m.is_none());
    m
}

/// A retained message's operation: `OP_RETAIN` in the low byte, its
/// cluster stamp (56 bits, `cluster::clock`) above it, so logs written
/// before stamps read as unstamped.
fn retain_op(m: &Message) -> u64 {
    OP_RETAIN | (m.retain_stamp.min(STAMP_MAX) << OP_BITS)
}

/// A retained topic's clear: the topic and nothing else.
fn clear_record(topic: &TopicName) -> Message {
    Message {
        topic: topic.clone(),
        payload: bytes::Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        expires_at: None,
        origin: Default::default(),
        retain_stamp: 0,
    }
}

/// What one file held.
#[derive(Debug)]
pub struct ReadLog {
    pub ops: Vec<LoggedOp>,
    /// Bytes read as valid, header included.
    pub valid_len: usize,
    /// Why reading stopped before the end of the file, if it did.
    pub cut: Option<RecordError>,
}

/// Reads every block of `file` (header included) with its sealer. Expiries
/// come back relative to `epoch`. Stops at the first block that does not
/// open or holds a bad record: after a torn write that is the tail; after
/// tampering, nothing past the change can be trusted either.
pub fn read(header: &LogHeader, sealer: &Sealer, file: &mut [u8], epoch: Instant) -> ReadLog {
    let mut ops = Vec::new();
    let mut pos = LOG_HEADER_LEN;
    let cut = loop {
        if pos >= file.len() {
            break None;
        }
        match read_block(header, sealer, &mut file[pos..], pos, epoch, &mut ops) {
            Ok(len) => pos += len,
            Err(e) => break Some(e),
        }
    };
    ReadLog {
        ops,
        valid_len: pos.min(file.len()),
        cut,
    }
}

/// Opens the block at the start of `rest` (file offset `at`) and appends its
/// operations; its length. Nothing is appended unless all of it is good.
fn read_block(
    header: &LogHeader,
    sealer: &Sealer,
    rest: &mut [u8],
    at: usize,
    epoch: Instant,
    ops: &mut Vec<LoggedOp>,
) -> Result<usize, RecordError> {
    let len = sealer.block_len(rest)?;
    let block = rest
        .get_mut(..len)
        .ok_or(RecordError::Malformed("block past the end of the file"))?;
    ops.append(&mut block_ops(header, sealer, block, at, epoch)?);
    Ok(len)
}

/// The operations of one whole block (`Sealer::block_len` bytes read at
/// file offset `at`), opened in place; all of them or an error. For readers
/// that go through a file a block at a time instead of holding it
/// (recovery of a large backlog).
pub fn block_ops(
    header: &LogHeader,
    sealer: &Sealer,
    block: &mut [u8],
    at: usize,
    epoch: Instant,
) -> Result<Vec<LoggedOp>, RecordError> {
    let pos = BlockPos {
        segment: header.compaction,
        offset: u32::try_from(at).map_err(|_| RecordError::TooLarge)?,
    };
    let mut body = sealer.open_block(FILE_KEY, pos, block)?;
    let mut read = Vec::new();
    while !body.is_empty() {
        let (rlen, owner) = record::header(body)?;
        let mut message = record::decode(&body[..rlen], owner, epoch)?;
        let stamp = owner >> OP_BITS;
        read.push(match owner & OP_MASK {
            OP_RETAIN => {
                message.retain_stamp = stamp;
                LoggedOp::Retain(message)
            }
            _ if stamp != 0 => {
                return Err(RecordError::Malformed("stamp on an unstamped operation"))
            }
            OP_CLEAR => LoggedOp::Clear(message.topic),
            // The block is authenticated (or checksummed): the bytes are
            // what was written, so one record's payload that does not
            // decode costs that session only, not the rest of the file.
            OP_SESSION_PUT => match SessionRecord::from_message(&message, epoch) {
                Ok(record) => LoggedOp::SessionPut(record),
                Err(e) => LoggedOp::SessionUnreadable(message.origin, e),
            },
            OP_SESSION_DELETE => LoggedOp::SessionDelete(message.origin),
            OP_QUEUE_PUT => match QueuePut::from_message(&message, epoch) {
                Ok(p) => LoggedOp::QueuePut(p),
                Err(e) => LoggedOp::QueueUnreadable(message.origin, e),
            },
            OP_QUEUE_DONE => match QueueDone::from_message(&message) {
                Ok(d) => LoggedOp::QueueDone(d),
                Err(e) => LoggedOp::QueueUnreadable(message.origin, e),
            },
            OP_QUEUE_STATE => match QueueState::from_message(&message) {
                Ok(q) => LoggedOp::QueueState(q),
                Err(e) => LoggedOp::QueueUnreadable(message.origin, e),
            },
            OP_QUEUE_SENT => match QueueSent::from_message(&message) {
                Ok(w) => LoggedOp::QueueSent(w),
                Err(e) => LoggedOp::QueueUnreadable(message.origin, e),
            },
            _ => return Err(RecordError::Malformed("unknown operation")),
        });
        body = &body[rlen..];
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SharedMessage;
    use std::sync::Arc;

    fn message(topic: &str, payload: &'static [u8]) -> SharedMessage {
        Arc::new(Message {
            topic: TopicName::try_from(topic).unwrap_or_else(|_| unreachable!()),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: "publisher".into(),
            retain_stamp: 0,
        })
    }

    /// `m` with a cluster stamp, which the log keeps beside the operation.
    fn stamped(m: SharedMessage, stamp: u64) -> SharedMessage {
        Arc::new(Message {
            retain_stamp: stamp,
            ..(*m).clone()
        })
    }

    /// The tests' clock base, read once.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn kek(byte: u8) -> Kek {
        Kek::new(&[byte; 32]).unwrap_or_else(|_| unreachable!())
    }

    /// A persisted session with one subscription.
    fn session(client_id: &str) -> SessionRecord {
        let raw = bytestring::ByteString::from("secret/+/filter");
        SessionRecord {
            client_id: client_id.into(),
            principal: crate::broker::PrincipalId::anonymous(),
            expiry_interval: std::time::Duration::from_secs(60),
            offline_until: None,
            will: None,
            queue_id: 0,
            subscriptions: vec![(
                raw.clone(),
                crate::session::Subscription {
                    filter: crate::topic::Filter::parse(raw).unwrap_or_else(|_| unreachable!()),
                    options: Default::default(),
                    id: None,
                },
            )],
        }
    }

    /// A file with two blocks: a snapshot of `a`, then `b` retained, `a` cleared, a
    /// session put and a session delete.
    fn file(kek: Option<&Kek>) -> (LogHeader, Vec<u8>, usize) {
        let epoch = t0();
        let (header, sealer) = create(kek, 3, 7, 2, 1_700_000_000_000_000_000, true)
            .unwrap_or_else(|_| unreachable!());
        let mut w = LogWriter::new(&header, sealer, epoch);
        let mut bytes = header.encode().to_vec();
        let (b1, skipped) = w
            .seal_snapshot(&Snapshot {
                messages: vec![stamped(message("a", b"secret-one"), 7)],
                ..Snapshot::default()
            })
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(skipped, 0);
        let first_block_end = bytes.len() + b1.len();
        bytes.extend_from_slice(&b1);
        let (b2, _) = w
            .seal_ops(&[
                PersistOp::Retain(stamped(message("b", b"secret-two"), STAMP_MAX)),
                PersistOp::Clear(TopicName::try_from("a").unwrap_or_else(|_| unreachable!())),
                PersistOp::SessionPut(Arc::new(session("secret-client"))),
                PersistOp::SessionDelete("gone".into()),
                PersistOp::QueuePut(crate::broker::QueuePut {
                    client_id: "secret-client".into(),
                    queue_id: 5,
                    seq: 1,
                    queued: crate::session::QueuedMessage {
                        message: message("c", b"secret-three"),
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        subscription_ids: Vec::new(),
                    },
                }),
                PersistOp::QueueDone(QueueDone {
                    client_id: "secret-client".into(),
                    queue_id: 5,
                    seqs: vec![1],
                }),
                PersistOp::QueueState(QueueState::of("secret-client".into(), 5, 2, &[])),
            ])
            .unwrap_or_else(|_| unreachable!());
        bytes.extend_from_slice(&b2);
        assert_eq!(w.len(), bytes.len() as u64);
        (header, bytes, first_block_end)
    }

    #[test]
    fn an_undecodable_session_costs_that_session_not_the_rest_of_the_file() {
        let epoch = t0();
        let k = kek(1);
        let (header, sealer) = create(Some(&k), 0, 1, 0, 1_700_000_000_000_000_000, false)
            .unwrap_or_else(|_| unreachable!());
        let mut w = LogWriter::new(&header, sealer, epoch);
        let mut bytes = header.encode().to_vec();
        // A session put whose payload is from an unknown format version,
        // in an intact block between two good records.
        let mut bad = session_record::delete_message(&"from-the-future".into());
        bad.payload = bytes::Bytes::from_static(&[0xEE, 1, 2, 3]);
        let good = session("c1")
            .to_message(epoch)
            .unwrap_or_else(|_| unreachable!());
        let kept = message("kept", b"1");
        let records = [
            (OP_SESSION_PUT, &bad),
            (OP_SESSION_PUT, &good),
            (OP_RETAIN, &*kept),
        ];
        let (b, _) = w
            .seal_records(records.into_iter())
            .unwrap_or_else(|_| unreachable!());
        bytes.extend_from_slice(&b);
        let log = read_all(&bytes, true, &[k]).unwrap_or_else(|_| unreachable!());
        assert!(log.cut.is_none(), "{:?}", log.cut);
        assert!(
            matches!(&log.ops[0], LoggedOp::SessionUnreadable(id, _) if id == "from-the-future")
        );
        assert!(matches!(&log.ops[1], LoggedOp::SessionPut(r) if r.client_id == "c1"));
        assert!(matches!(&log.ops[2], LoggedOp::Retain(m) if m.topic.as_str() == "kept"));
    }

    fn read_all(bytes: &[u8], encrypt: bool, keys: &[Kek]) -> Result<ReadLog, LogError> {
        let header = LogHeader::decode(bytes)?;
        let sealer = header.open(encrypt, keys)?;
        let mut copy = bytes.to_vec();
        Ok(read(&header, &sealer, &mut copy, t0()))
    }

    #[test]
    fn a_file_reads_back_in_order_and_reveals_nothing() {
        let k = kek(1);
        let (header, bytes, _) = file(Some(&k));
        let back = LogHeader::decode(&bytes).unwrap_or_else(|_| unreachable!());
        assert_eq!(back, header);
        let log = read_all(&bytes, true, &[kek(9), kek(1)]).unwrap_or_else(|_| unreachable!());
        assert!(log.cut.is_none());
        assert_eq!(log.valid_len, bytes.len());
        let ops: Vec<String> = log
            .ops
            .iter()
            .map(|op| match op {
                LoggedOp::Retain(m) => format!(
                    "retain {} {:?} @{}",
                    m.topic.as_str(),
                    m.payload,
                    m.retain_stamp
                ),
                LoggedOp::Clear(t) => format!("clear {}", t.as_str()),
                LoggedOp::SessionPut(r) => format!("session {}", r.client_id),
                LoggedOp::SessionDelete(id) => format!("end {id}"),
                LoggedOp::SessionUnreadable(id, _) => format!("unreadable {id}"),
                LoggedOp::QueuePut(p) => format!("put {} {:?}", p.seq, p.queued.message.payload),
                LoggedOp::QueueDone(d) => format!("done {:?}", d.seqs),
                LoggedOp::QueueState(s) => format!("state {} {}", s.floor, s.next),
                LoggedOp::QueueSent(w) => format!("sent {}", w.entries.len()),
                LoggedOp::QueueUnreadable(id, _) => format!("unreadable queue {id}"),
            })
            .collect();
        // The stamps (the greatest one too) come back beside their messages.
        assert_eq!(
            ops,
            [
                r#"retain a b"secret-one" @7"#,
                r#"retain b b"secret-two" @72057594037927935"#,
                "clear a",
                "session secret-client",
                "end gone",
                r#"put 1 b"secret-three""#,
                "done [1]",
                "state 2 2",
            ]
        );
        // Encrypted: neither payloads, topics nor the publisher show.
        for marker in [&b"secret"[..], b"publisher"] {
            assert!(!bytes.windows(marker.len()).any(|w| w == marker));
        }
        // Plaintext: they do (the marker check above would catch a leak).
        let (_, plain, _) = file(None);
        assert!(plain.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_length_and_never_replayed() {
        let k = kek(1);
        let (_, bytes, first_end) = file(Some(&k));
        for len in LOG_HEADER_LEN..bytes.len() {
            let log = read_all(&bytes[..len], true, &[kek(1)]).unwrap_or_else(|_| unreachable!());
            let expect = if len >= first_end { 1 } else { 0 };
            assert_eq!(log.ops.len(), expect, "cut at {len}");
            assert_eq!(log.cut.is_some(), len != LOG_HEADER_LEN && len != first_end);
        }
    }

    #[test]
    fn any_changed_byte_is_detected() {
        let k = kek(1);
        let (_, bytes, first_end) = file(Some(&k));
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            match read_all(&bad, true, &[kek(1)]) {
                // In the header: refused before any block is read.
                Err(_) => assert!(at < LOG_HEADER_LEN, "byte {at}"),
                Ok(log) => {
                    assert!(at >= LOG_HEADER_LEN, "header byte {at} passed");
                    assert!(log.cut.is_some(), "byte {at}");
                    let whole = if at >= first_end { 1 } else { 0 };
                    assert_eq!(log.ops.len(), whole, "byte {at}");
                }
            }
        }
    }

    #[test]
    fn a_wrong_key_or_a_plaintext_file_under_encryption_is_refused() {
        let (_, bytes, _) = file(Some(&kek(1)));
        assert!(matches!(
            read_all(&bytes, true, &[kek(2)]),
            Err(LogError::NoKey(_))
        ));
        let (_, plain, _) = file(None);
        assert!(matches!(
            read_all(&plain, true, &[kek(1)]),
            Err(LogError::Plaintext)
        ));
        let log = read_all(&plain, false, &[]).unwrap_or_else(|_| unreachable!());
        assert_eq!(log.ops.len(), 8);
    }
}
