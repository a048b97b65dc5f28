//! Data representations of §1.5 (integers, Variable Byte Integer, UTF-8
//! strings, binary data) read from one frozen frame and written into a
//! `BytesMut`. Reading never copies: strings and binaries are slices of the
//! frame. Writing assumes the caller has validated lengths (see `encode.rs`).
//!
//! UTF-8 policy [MQTT-1.5.4-1..3]: ill-formed UTF-8 (including surrogates) and
//! U+0000 are malformed. Control characters U+0001..U+001F, U+007F..U+009F and
//! non-characters are accepted: the spec says senders SHOULD NOT include them
//! and receivers MAY reject; accepting costs nothing and keeps odd clients
//! working. A BOM (U+FEFF) is kept as is, never stripped [MQTT-1.5.4-3].

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::DecodeError;

/// Largest value of a Variable Byte Integer (§1.5.5), hence of the
/// remaining length.
pub const VARINT_MAX: u32 = 268_435_455;

/// Result of parsing a Variable Byte Integer prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Varint {
    pub value: u32,
    /// Bytes the encoding took (1..=4).
    pub len: usize,
    /// Whether the encoding used the minimum number of bytes [MQTT-1.5.5-1].
    pub minimal: bool,
}

/// Parses a Variable Byte Integer at the start of `bytes`. `Ok(None)` when
/// `bytes` ends before the last byte; an error once a 4th byte still has the
/// continuation bit set, so a bad length is reported as early as possible.
pub(crate) fn parse_varint(bytes: &[u8]) -> Result<Option<Varint>, DecodeError> {
    let mut value: u32 = 0;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // A multi-byte encoding whose last byte is zero could have been
            // one byte shorter.
            let minimal = i == 0 || *b != 0;
            return Ok(Some(Varint {
                value,
                len: i + 1,
                minimal,
            }));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::VarintTooLong);
    }
    Ok(None)
}

pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`VARINT_MAX`], checked by the caller) in the
/// minimum number of bytes [MQTT-1.5.5-1].
pub(crate) fn put_varint(buf: &mut BytesMut, mut value: u32) {
    debug_assert!(value <= VARINT_MAX);
    loop {
        let mut b = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if value == 0 {
            return;
        }
    }
}

pub(crate) fn put_string(buf: &mut BytesMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

/// Two-byte length then the bytes (§1.5.6); length checked by the caller.
pub(crate) fn put_binary(buf: &mut BytesMut, b: &[u8]) {
    debug_assert!(b.len() <= usize::from(u16::MAX));
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

/// A cursor over one frozen frame. Every read is bounds-checked against
/// `end` (the end of the packet or of a property block) and fails with
/// `Truncated` naming the field, never panics.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(frame: &'a Bytes, start: usize) -> Reader<'a> {
        Reader {
            frame,
            pos: start,
            end: frame.len(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { field });
        }
        let frame: &'a Bytes = self.frame;
        let s = &frame[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer inside the packet; only MQTT 5.0 has these
    /// (property lengths, identifiers, Subscription Identifier), so a
    /// non-minimal encoding is rejected [MQTT-1.5.5-1].
    pub fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let frame: &'a Bytes = self.frame;
        match parse_varint(&frame[self.pos..self.end])? {
            None => Err(DecodeError::Truncated { field }),
            Some(v) if !v.minimal => Err(DecodeError::VarintNotMinimal),
            Some(v) => {
                self.pos += v.len;
                Ok(v.value)
            }
        }
    }

    /// Binary Data (§1.5.6) as a zero-copy slice of the frame.
    pub fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.bytes(len, field)
    }

    /// The next `len` bytes as a zero-copy slice of the frame.
    pub fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated { field });
        }
        let b = self.frame.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }

    /// The rest of the packet (a PUBLISH payload), zero-copy.
    pub fn rest(&mut self) -> Bytes {
        let b = self.frame.slice(self.pos..self.end);
        self.pos = self.end;
        b
    }

    /// UTF-8 Encoded String (§1.5.4), zero-copy.
    pub fn string(&mut self, field: &'static str) -> Result<ByteString, DecodeError> {
        let b = self.binary(field)?;
        to_string(b, field)
    }

    /// A sub-reader over the next `len` bytes (a property block); `self`
    /// moves past them.
    pub fn sub(&mut self, len: usize, field: &'static str) -> Result<Reader<'a>, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated { field });
        }
        let sub = Reader {
            frame: self.frame,
            pos: self.pos,
            end: self.pos + len,
        };
        self.pos += len;
        Ok(sub)
    }
}

/// Checks MQTT's UTF-8 rules [MQTT-1.5.4-1] [MQTT-1.5.4-2] and wraps the
/// bytes without copying.
pub(crate) fn to_string(b: Bytes, field: &'static str) -> Result<ByteString, DecodeError> {
    if b.contains(&0) {
        // Checked first: U+0000 is well-formed UTF-8 but forbidden here.
        return Err(DecodeError::NullCharacter { field });
    }
    ByteString::try_from(b).map_err(|_| DecodeError::InvalidUtf8 { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: u32) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_varint(&mut b, v);
        b.to_vec()
    }

    #[test]
    fn varint_boundaries_use_minimum_bytes_mqtt_1_5_5_1() {
        for (v, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (VARINT_MAX, 4),
        ] {
            let e = encode(v);
            assert_eq!(e.len(), len, "{v}");
            assert_eq!(varint_len(v), len, "{v}");
            let p = parse_varint(&e).unwrap().unwrap();
            assert_eq!((p.value, p.len, p.minimal), (v, len, true));
        }
    }

    #[test]
    fn varint_with_fifth_byte_is_rejected_at_fourth_byte() {
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::VarintTooLong)
        );
        assert_eq!(
            parse_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(DecodeError::VarintTooLong)
        );
    }

    #[test]
    fn varint_prefix_needs_more_bytes() {
        assert_eq!(parse_varint(&[]), Ok(None));
        assert_eq!(parse_varint(&[0x80]), Ok(None));
        assert_eq!(parse_varint(&[0xFF, 0xFF, 0xFF]), Ok(None));
    }

    #[test]
    fn varint_non_minimal_encoding_is_flagged_mqtt_1_5_5_1() {
        let p = parse_varint(&[0x80, 0x00]).unwrap().unwrap();
        assert_eq!((p.value, p.minimal), (0, false));
        let p = parse_varint(&[0x81, 0x80, 0x00]).unwrap().unwrap();
        assert_eq!((p.value, p.minimal), (1, false));
    }

    #[test]
    fn string_with_nul_is_rejected_mqtt_1_5_4_2() {
        assert_eq!(
            to_string(Bytes::from_static(b"a\0b"), "t"),
            Err(DecodeError::NullCharacter { field: "t" })
        );
    }

    #[test]
    fn string_with_surrogate_or_bad_utf8_is_rejected_mqtt_1_5_4_1() {
        // U+D800 encoded as CESU-style 3 bytes.
        assert_eq!(
            to_string(Bytes::from_static(b"\xED\xA0\x80"), "t"),
            Err(DecodeError::InvalidUtf8 { field: "t" })
        );
        assert_eq!(
            to_string(Bytes::from_static(b"\xC0\xAF"), "t"),
            Err(DecodeError::InvalidUtf8 { field: "t" })
        );
    }

    #[test]
    fn string_keeps_bom_and_control_characters_mqtt_1_5_4_3() {
        let s = to_string(
            Bytes::from_static("\u{FEFF}a\u{1}\u{7F}\u{FFFF}".as_bytes()),
            "t",
        )
        .unwrap();
        assert_eq!(&*s, "\u{FEFF}a\u{1}\u{7F}\u{FFFF}");
    }

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let f = Bytes::from_static(&[0x00, 0x05, b'a']);
        let mut r = Reader::new(&f, 0);
        assert_eq!(
            r.string("topic"),
            Err(DecodeError::Truncated { field: "topic" })
        );
    }
}
