//! Blocks of records, sealed with AES-256-GCM (encryption Enabled) or
//! checksummed with CRC-32 (Disabled). Owns the per-process keys, the nonce
//! construction and the block framing; does no I/O. INVARIANT: under one key
//! no nonce is used twice: `seal_block` refuses a position that is not past
//! the last one sealed under that key.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{RecordError, SealError};

/// `[magic u16][flags u16][body_len u32]`, little-endian, in front of every
/// block. Not secret, but authenticated (part of the associated data).
pub const BLOCK_HEADER_LEN: usize = 8;
const BLOCK_MAGIC: u16 = 0x4B42; // "BK"
/// Header flag: the body is AES-256-GCM ciphertext followed by its tag.
const FLAG_SEALED: u16 = 1;
/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;
/// CRC-32 (IEEE) length in plaintext mode.
pub const CHECKSUM_LEN: usize = 4;

/// Identifies one key of this process. Written in segment headers so a
/// reader can tell which key a segment was sealed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

/// Where a block lives: its segment and its byte offset in that segment.
/// This is the nonce, and part of the associated data, so a block read from
/// anywhere else than where it was written fails to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockPos {
    pub segment: u32,
    pub offset: u32,
}

impl BlockPos {
    /// 96-bit GCM nonce: segment id (u32 BE) || offset (u64 BE). Segment ids
    /// are never reused by one buffer and offsets only grow inside a segment
    /// (append-only), so a (key, nonce) pair never repeats.
    fn nonce(self) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.segment.to_be_bytes());
        n[4..].copy_from_slice(&u64::from(self.offset).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

struct Key {
    id: KeyId,
    /// `None` in plaintext mode.
    aead: Option<LessSafeKey>,
    /// The last position sealed under this key (the nonce high-water mark).
    last_sealed: Option<BlockPos>,
}

/// Seals and opens blocks for one buffer (one shard).
///
/// INVARIANT: one `Sealer` per `DiskBuffer`. Nonces are unique only because
/// one buffer hands out its own segment ids; two buffers sharing a key would
/// both have a segment 1. Each shard therefore generates its own keys.
pub struct Sealer {
    encrypt: bool,
    rng: SystemRandom,
    /// Current key last. Older keys stay until `retire` (their segments are
    /// reclaimed); a handful at most.
    keys: Vec<Key>,
    next_key_id: u32,
}

impl fmt::Debug for Sealer {
    // Keys never print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("encrypt", &self.encrypt)
            .field("keys", &self.keys.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Sealer {
    /// A sealer with a fresh random key (encryption Enabled) or none
    /// (Disabled). Keys exist only in this process's memory.
    pub fn new(encrypt: bool) -> Result<Sealer, SealError> {
        let mut sealer = Sealer {
            encrypt,
            rng: SystemRandom::new(),
            keys: Vec::new(),
            next_key_id: 1,
        };
        sealer.rotate()?;
        Ok(sealer)
    }

    /// A sealer holding only `key` (id 1), for a persisted file whose data
    /// key comes from its header (`log`). Ignored when `encrypt` is false.
    pub fn with_key(encrypt: bool, key: &[u8; 32]) -> Result<Sealer, SealError> {
        let aead = if encrypt {
            let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Random)?;
            Some(LessSafeKey::new(unbound))
        } else {
            None
        };
        Ok(Sealer {
            encrypt,
            rng: SystemRandom::new(),
            keys: vec![Key {
                id: KeyId(1),
                aead,
                last_sealed: None,
            }],
            next_key_id: 2,
        })
    }

    pub fn encrypted(&self) -> bool {
        self.encrypt
    }

    /// Bytes after each block's body: the GCM tag or the CRC-32.
    pub fn trailer_len(&self) -> usize {
        if self.encrypt {
            TAG_LEN
        } else {
            CHECKSUM_LEN
        }
    }

    /// Header + trailer: what a block costs beyond its records.
    pub fn block_overhead(&self) -> usize {
        BLOCK_HEADER_LEN + self.trailer_len()
    }

    /// The key new segments are sealed with.
    pub fn current_key(&self) -> KeyId {
        self.keys.last().map_or(KeyId(0), |k| k.id)
    }

    /// Keys held, current one included.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Makes a new current key; older keys stay usable until retired.
    pub fn rotate(&mut self) -> Result<KeyId, SealError> {
        let id = KeyId(self.next_key_id);
        self.next_key_id = self
            .next_key_id
            .checked_add(1)
            .ok_or(SealError::KeyIdsExhausted)?;
        let aead = if self.encrypt {
            let mut bytes = [0u8; 32];
            self.rng.fill(&mut bytes).map_err(|_| SealError::Random)?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::Random)?;
            // Best effort: the key bytes live on in ring's key schedule anyway.
            bytes.fill(0);
            Some(LessSafeKey::new(unbound))
        } else {
            None
        };
        self.keys.push(Key {
            id,
            aead,
            last_sealed: None,
        });
        Ok(id)
    }

    /// Forgets a key whose segments are all gone. The current key stays.
    pub fn retire(&mut self, key: KeyId) {
        if key != self.current_key() {
            self.keys.retain(|k| k.id != key);
        }
    }

    fn key(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().rev().find(|k| k.id == id)
    }

    /// Seals a block in place. `block` holds `BLOCK_HEADER_LEN` bytes of any
    /// value followed by the body (the records); on return it holds the
    /// header, the sealed body and the trailer, ready to copy to the file.
    pub fn seal_block(
        &mut self,
        key: KeyId,
        pos: BlockPos,
        block: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let body_len = block
            .len()
            .checked_sub(BLOCK_HEADER_LEN)
            .ok_or(SealError::NoHeader)?;
        let body_len = u32::try_from(body_len).map_err(|_| SealError::TooLarge)?;
        let encrypt = self.encrypt;
        let k = self
            .keys
            .iter_mut()
            .rev()
            .find(|k| k.id == key)
            .ok_or(SealError::UnknownKey(key))?;
        // INVARIANT: positions sealed under one key strictly increase, so a
        // nonce is never reused even if a caller bug rewinds a segment.
        if k.last_sealed.is_some_and(|last| pos <= last) {
            return Err(SealError::NonceReuse(pos));
        }
        let header = block_header(encrypt, body_len);
        block[..BLOCK_HEADER_LEN].copy_from_slice(&header);
        let ad = associated_data(key, pos, &header);
        if let Some(aead) = &k.aead {
            let tag = aead
                .seal_in_place_separate_tag(
                    pos.nonce(),
                    Aad::from(ad),
                    &mut block[BLOCK_HEADER_LEN..],
                )
                .map_err(|_| SealError::TooLarge)?;
            block.extend_from_slice(tag.as_ref());
        } else {
            let crc = checksum(&ad, &block[BLOCK_HEADER_LEN..]);
            block.extend_from_slice(&crc.to_le_bytes());
        }
        k.last_sealed = Some(pos);
        Ok(())
    }

    /// Total length of the block whose header starts `bytes`, trailer
    /// included, so the reader knows how much to copy out of the file.
    pub fn block_len(&self, bytes: &[u8]) -> Result<usize, RecordError> {
        let (sealed, body_len) = parse_header(bytes)?;
        if sealed != self.encrypt {
            // The mode comes from the process, never from the file: a block
            // rewritten as "plaintext + CRC" must not pass in Enabled mode.
            return Err(RecordError::BadBlockHeader);
        }
        Ok(BLOCK_HEADER_LEN + body_len as usize + self.trailer_len())
    }

    /// Opens a whole block (header, body, trailer) in place and returns its
    /// plaintext body. Fails if anything in it, or its position, or the key,
    /// differs from what was sealed.
    pub fn open_block<'a>(
        &self,
        key: KeyId,
        pos: BlockPos,
        block: &'a mut [u8],
    ) -> Result<&'a [u8], RecordError> {
        let total = self.block_len(block)?;
        if total != block.len() {
            return Err(RecordError::BadBlockHeader);
        }
        let k = self.key(key).ok_or(RecordError::UnknownKey)?;
        let mut header = [0u8; BLOCK_HEADER_LEN];
        header.copy_from_slice(&block[..BLOCK_HEADER_LEN]);
        let ad = associated_data(key, pos, &header);
        let rest = &mut block[BLOCK_HEADER_LEN..];
        match &k.aead {
            Some(aead) => {
                let plain = aead
                    .open_in_place(pos.nonce(), Aad::from(ad), rest)
                    .map_err(|_| RecordError::Unauthentic)?;
                Ok(plain)
            }
            None => {
                let (body, trailer) = rest.split_at(rest.len() - CHECKSUM_LEN);
                let mut want = [0u8; CHECKSUM_LEN];
                want.copy_from_slice(trailer);
                if checksum(&ad, body) != u32::from_le_bytes(want) {
                    return Err(RecordError::Checksum);
                }
                Ok(body)
            }
        }
    }
}

fn block_header(sealed: bool, body_len: u32) -> [u8; BLOCK_HEADER_LEN] {
    let mut h = [0u8; BLOCK_HEADER_LEN];
    h[..2].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
    let flags = if sealed { FLAG_SEALED } else { 0 };
    h[2..4].copy_from_slice(&flags.to_le_bytes());
    h[4..].copy_from_slice(&body_len.to_le_bytes());
    h
}

fn parse_header(bytes: &[u8]) -> Result<(bool, u32), RecordError> {
    let h = bytes
        .get(..BLOCK_HEADER_LEN)
        .ok_or(RecordError::BadBlockHeader)?;
    let magic = u16::from_le_bytes([h[0], h[1]]);
    let flags = u16::from_le_bytes([h[2], h[3]]);
    if magic != BLOCK_MAGIC || flags & !FLAG_SEALED != 0 {
        return Err(RecordError::BadBlockHeader);
    }
    let body_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    Ok((flags & FLAG_SEALED != 0, body_len))
}

/// Key id || segment || offset || block header. The records' owners are
/// inside the authenticated body, so they are bound too (and hidden).
fn associated_data(key: KeyId, pos: BlockPos, header: &[u8; BLOCK_HEADER_LEN]) -> [u8; 20] {
    let mut ad = [0u8; 20];
    ad[..4].copy_from_slice(&key.0.to_le_bytes());
    ad[4..8].copy_from_slice(&pos.segment.to_le_bytes());
    ad[8..12].copy_from_slice(&pos.offset.to_le_bytes());
    ad[12..].copy_from_slice(header);
    ad
}

/// CRC-32 over the same associated data as the AEAD plus the body, so a
/// plaintext block moved to another position is detected too. It detects
/// corruption, not tampering: Disabled promises no integrity against an
/// attacker who can write the files.
fn checksum(ad: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(ad);
    h.update(body);
    h.finalize()
}
