//! The measurement payload every published message carries: send timestamp,
//! publisher id and sequence number, padded to the requested size. Owns the
//! byte layout only; what a receiver does with the fields is `tracker`'s and
//! `stats`' business. All integers little-endian.

use bytes::{BufMut, BytesMut};

/// 8-byte timestamp + 4-byte publisher id + 8-byte sequence number.
pub const HEADER_LEN: usize = 20;

/// The padding after the header repeats this text, so a payload of at least
/// `HEADER_LEN + PLAINTEXT_MARKER.len()` bytes holds it whole: finding it in
/// the broker's disk-buffer files means they hold payloads in plaintext.
pub const PLAINTEXT_MARKER: &[u8] = b"shardmq-loadtest-plaintext-marker/";

/// What the harness reads back out of a received payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the run's clock epoch: the time the message was
    /// scheduled to be sent (open loop) or was sent (closed loop).
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u64,
}

/// Appends one payload of `len_bytes` (at least [`HEADER_LEN`]) to `buf`.
pub fn write(buf: &mut BytesMut, stamp: Stamp, len_bytes: usize) {
    let len = len_bytes.max(HEADER_LEN);
    buf.reserve(len);
    buf.put_u64_le(stamp.sent_ns);
    buf.put_u32_le(stamp.publisher);
    buf.put_u64_le(stamp.seq);
    let padding = padding();
    let mut left = len - HEADER_LEN;
    while left > 0 {
        let n = left.min(padding.len());
        buf.put_slice(&padding[..n]);
        left -= n;
    }
}

/// The marker repeated over 64 KiB: one copy per payload, not one per
/// repetition (the harness's CPU is part of what limits a run).
fn padding() -> &'static [u8] {
    static PAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PAD.get_or_init(|| {
        PLAINTEXT_MARKER
            .iter()
            .copied()
            .cycle()
            .take(64 * 1024)
            .collect()
    })
}

/// Reads the stamp back; `None` for a payload that is not ours (too short).
pub fn read(payload: &[u8]) -> Option<Stamp> {
    let sent_ns = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let publisher = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(12..20)?.try_into().ok()?);
    Some(Stamp {
        sent_ns,
        publisher,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads_to_requested_size() {
        let stamp = Stamp {
            sent_ns: 123_456_789,
            publisher: 7,
            seq: u64::MAX - 1,
        };
        let mut buf = BytesMut::new();
        write(&mut buf, stamp, 64);
        assert_eq!(buf.len(), 64);
        assert_eq!(read(&buf), Some(stamp));
        assert!(buf
            .windows(PLAINTEXT_MARKER.len())
            .any(|w| w == PLAINTEXT_MARKER));
    }

    #[test]
    fn payload_shorter_than_header_is_padded_up_to_header() {
        let mut buf = BytesMut::new();
        write(
            &mut buf,
            Stamp {
                sent_ns: 1,
                publisher: 2,
                seq: 3,
            },
            4,
        );
        assert_eq!(buf.len(), HEADER_LEN);
    }

    #[test]
    fn foreign_short_payload_is_not_a_stamp() {
        assert_eq!(read(b"hello"), None);
    }
}
