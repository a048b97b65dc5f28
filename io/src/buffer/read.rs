//! The buffer's read path: a record is read from the pending block, from a
//! cached opened block, or by copying its block out of the mapping and
//! opening it (authentication or checksum); the few most recent opened
//! blocks are cached so an in-order drain opens each block once.

use bytes::Bytes;
use memmap2::Advice;
use shardmq_core::buffer::{
    record, BlockPos, RecordError, RecordRef, BLOCK_BODY_TARGET, BLOCK_HEADER_LEN,
};
use shardmq_core::session::Message;

use super::{BufferError, DiskBuffer};

/// Opened blocks kept decrypted, so an in-order drain opens each block once
/// even when a few sessions drain at the same time.
pub(super) const BLOCK_CACHE_LEN: usize = 4;

#[derive(Debug)]
pub(super) struct CachedBlock {
    pub(super) segment: u32,
    pub(super) block: u32,
    /// The opened block: header, plaintext body, then the (spent) trailer.
    /// Messages of `sharer` read from it are slices of it
    /// (`record::decode_shared`), so it lives until the last is dropped.
    pub(super) buf: Bytes,
    pub(super) body_len: usize,
    /// The owner whose records fill at least half the body, if any. Only
    /// its messages share the block: one held message pins all of it, and
    /// sharing a block mostly of other sessions' records would multiply
    /// the memory a session's in-flight window holds (others get copies).
    pub(super) sharer: Option<u64>,
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

impl DiskBuffer {
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;
    use std::time::Instant;

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
            properties: Default::default(),
            expires_at: None,
            origin: ByteString::from_static("c"),
            retain_stamp: 0,
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
