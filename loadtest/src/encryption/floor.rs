//! The physical floor of `encryptInternalTraffic`: what sealing and opening a
//! spilled message costs this CPU with the broker's own code (shardmq-core's
//! record format and `Sealer`: ring AES-256-GCM when Enabled, CRC-32 when
//! Disabled), measured in the same run as the load so a report can say how
//! much of the broker's extra cost is the cipher and how much is not.

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use shardmq_core::buffer::{
    record, BlockPos, SealError, Sealer, BLOCK_BODY_TARGET, BLOCK_HEADER_LEN,
};
use shardmq_core::codec::QoS;
use shardmq_core::session::Message;
use shardmq_core::topic::TopicName;

/// Blocks sealed and opened per pass: ~256 KiB, so they stay in cache as a
/// block the broker has just filled (or just copied out of its mapping)
/// does. The floor is the best case.
const PASS_BYTES: usize = 256 * 1024;
const PASSES: usize = 7;
/// Each pass repeats its blocks until at least this long.
const PASS_MIN: Duration = Duration::from_millis(15);

/// Per message, in nanoseconds, for one payload size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CipherCost {
    pub payload_bytes: usize,
    /// The message as a buffer record (header, topic, client id, payload).
    pub record_bytes: usize,
    /// Records sealed together (the broker fills ~16 KiB blocks).
    pub records_per_block: usize,
    /// Enabled: AES-256-GCM seal / open, per message.
    pub aes_seal_ns: f64,
    pub aes_open_ns: f64,
    /// Disabled: the CRC-32 it replaces, per message.
    pub crc_seal_ns: f64,
    pub crc_open_ns: f64,
    /// AES-256-GCM seal throughput, GiB/s.
    pub aes_seal_gib_per_s: f64,
}

impl CipherCost {
    /// What Enabled adds over Disabled to write one message to the buffer.
    pub fn seal_extra_ns(&self) -> f64 {
        (self.aes_seal_ns - self.crc_seal_ns).max(0.0)
    }

    /// ... and to read it back.
    pub fn open_extra_ns(&self) -> f64 {
        (self.aes_open_ns - self.crc_open_ns).max(0.0)
    }
}

/// A message shaped like the harness's: a fan-in topic and client id of
/// the same lengths, no properties.
fn sample_message(payload_bytes: usize) -> Option<Message> {
    let topic =
        TopicName::new(ByteString::from_static("shardmq-lt/123456-1a2b3c4d-0/in/0")).ok()?;
    Some(Message {
        topic,
        payload: Bytes::from(vec![0xA5; payload_bytes]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("shardmq-lt-123456-1a2b3c4d-0-p0"),
        retain_stamp: 0,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("cannot build a sample record")]
    Record,
    #[error("sealing failed: {0}")]
    Seal(#[from] SealError),
    #[error("a block sealed here did not open again")]
    Open,
}

/// One block body of whole records, as the broker gathers them.
fn block_body(payload_bytes: usize) -> Result<(Vec<u8>, usize, usize), FloorError> {
    let message = sample_message(payload_bytes).ok_or(FloorError::Record)?;
    let epoch = std::time::Instant::now();
    let mut one = Vec::new();
    let len = record::encode(&mut one, 1, &message, epoch).map_err(|_| FloorError::Record)?;
    let per_block = (BLOCK_BODY_TARGET / len).max(1);
    let mut body = Vec::with_capacity(per_block * len);
    for _ in 0..per_block {
        body.extend_from_slice(&one);
    }
    Ok((body, len, per_block))
}

/// Best-of-`PASSES` seal and open time per block, for one mode.
fn time_blocks(encrypt: bool, body: &[u8]) -> Result<(f64, f64), FloorError> {
    let blocks = (PASS_BYTES / body.len().max(1)).max(1);
    let template = {
        let mut b = vec![0u8; BLOCK_HEADER_LEN];
        b.extend_from_slice(body);
        b.reserve(32);
        b
    };
    let mut bufs: Vec<Vec<u8>> = vec![template.clone(); blocks];
    let (mut best_seal, mut best_open) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..PASSES {
        // A new sealer per pass: positions only grow under one key.
        let mut sealer = Sealer::new(encrypt)?;
        let key = sealer.current_key();
        let (mut seal_ns, mut open_ns, mut done) = (0u128, 0u128, 0usize);
        let started = Instant::now();
        let mut offset = 0u32;
        while started.elapsed() < PASS_MIN {
            let t0 = Instant::now();
            for (i, b) in bufs.iter_mut().enumerate() {
                let pos = BlockPos {
                    segment: 1,
                    offset: offset + i as u32,
                };
                sealer.seal_block(key, pos, b)?;
            }
            let t1 = Instant::now();
            for (i, b) in bufs.iter_mut().enumerate() {
                let pos = BlockPos {
                    segment: 1,
                    offset: offset + i as u32,
                };
                sealer
                    .open_block(key, pos, b)
                    .map_err(|_| FloorError::Open)?;
            }
            let t2 = Instant::now();
            seal_ns += (t1 - t0).as_nanos();
            open_ns += (t2 - t1).as_nanos();
            done += bufs.len();
            offset += bufs.len() as u32;
            // Back to header + plaintext body for the next round.
            for b in &mut bufs {
                b.truncate(template.len());
            }
        }
        best_seal = best_seal.min(seal_ns as f64 / done as f64);
        best_open = best_open.min(open_ns as f64 / done as f64);
    }
    Ok((best_seal, best_open))
}

/// Measures the cost per message of `payload_bytes` payloads (a few
/// hundred milliseconds).
pub fn measure(payload_bytes: usize) -> Result<CipherCost, FloorError> {
    let (body, record_bytes, per_block) = block_body(payload_bytes)?;
    let (aes_seal, aes_open) = time_blocks(true, &body)?;
    let (crc_seal, crc_open) = time_blocks(false, &body)?;
    let n = per_block as f64;
    Ok(CipherCost {
        payload_bytes,
        record_bytes,
        records_per_block: per_block,
        aes_seal_ns: aes_seal / n,
        aes_open_ns: aes_open / n,
        crc_seal_ns: crc_seal / n,
        crc_open_ns: crc_open / n,
        aes_seal_gib_per_s: body.len() as f64 / aes_seal / 1.073_741_824,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_records_share_a_block_and_large_ones_get_their_own() {
        let (body, len, n) = block_body(64).unwrap();
        assert!(len > 64 && n == BLOCK_BODY_TARGET / len && body.len() == n * len);
        let (_, len, n) = block_body(16 * 1024).unwrap();
        assert!(len > 16 * 1024 && n == 1);
    }

    #[test]
    fn the_cipher_has_a_cost_per_message() {
        let c = measure(1024).unwrap();
        assert!(c.aes_seal_ns > 0.0 && c.aes_open_ns > 0.0 && c.crc_seal_ns > 0.0);
        assert!(c.aes_seal_gib_per_s.is_finite());
    }
}
