//! One buffered message as bytes: `[len u32][owner u64][message]`, every
//! integer little-endian. Owns the encoding of `Message` for the disk buffer;
//! does not seal (see `seal`) and never touches a file. Decoding validates
//! everything (UTF-8, topic rules, lengths), so a corrupted record in
//! plaintext mode that slipped past the checksum still cannot panic.

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{Props, QoS};
use crate::session::Message;
use crate::topic::TopicName;

use super::RecordError;

/// `[len u32][owner u64]` in front of every record; `len` counts the whole
/// record including this header.
pub const RECORD_HEADER_LEN: usize = 12;

// Flag bits of the message's first byte.
const QOS_MASK: u8 = 0b0000_0011;
const RETAIN: u8 = 1 << 2;
const HAS_EXPIRY: u8 = 1 << 3;
const HAS_PAYLOAD_FORMAT: u8 = 1 << 4;
const HAS_CONTENT_TYPE: u8 = 1 << 5;
const HAS_RESPONSE_TOPIC: u8 = 1 << 6;
const HAS_CORRELATION_DATA: u8 = 1 << 7;

/// Bytes `encode` will write for this message, record header included.
/// `None` if a field is longer than its length prefix allows (a topic, client
/// id or property past 65,535 bytes cannot come from a valid packet).
pub fn encoded_len(message: &Message) -> Option<usize> {
    let p = &*message.properties;
    let mut len = RECORD_HEADER_LEN + 1; // flags
    if message.expires_at.is_some() {
        len += 8;
    }
    len += str16_len(message.topic.as_str())?;
    len += str16_len(&message.origin)?;
    if p.payload_format_indicator.is_some() {
        len += 1;
    }
    if let Some(ct) = &p.content_type {
        len += str16_len(ct)?;
    }
    if let Some(rt) = &p.response_topic {
        len += str16_len(rt)?;
    }
    if let Some(cd) = &p.correlation_data {
        len += bytes16_len(cd)?;
    }
    len += 4;
    for (k, v) in &p.user_properties {
        len += str16_len(k)? + str16_len(v)?;
    }
    len += 4 + message.payload.len();
    u32::try_from(len).ok()?;
    Some(len)
}

fn str16_len(s: &str) -> Option<usize> {
    bytes16_len(s.as_bytes())
}

fn bytes16_len(b: &[u8]) -> Option<usize> {
    u16::try_from(b.len()).ok().map(|_| 2 + b.len())
}

/// Appends the record for `message` to `out` and returns its length.
/// `expires_at` is stored as nanoseconds after `epoch` (an `Instant` cannot
/// be written to a file; the buffer's epoch is fixed for the process).
pub fn encode(
    out: &mut Vec<u8>,
    owner: u64,
    message: &Message,
    epoch: Instant,
) -> Result<usize, RecordError> {
    let len = encoded_len(message).ok_or(RecordError::TooLarge)?;
    out.reserve(len);
    let start = out.len();
    let p = &*message.properties;
    // Cannot fail: `encoded_len` checked that the total fits a u32.
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&owner.to_le_bytes());
    let mut flags = message.qos as u8;
    for (set, bit) in [
        (message.retain, RETAIN),
        (message.expires_at.is_some(), HAS_EXPIRY),
        (p.payload_format_indicator.is_some(), HAS_PAYLOAD_FORMAT),
        (p.content_type.is_some(), HAS_CONTENT_TYPE),
        (p.response_topic.is_some(), HAS_RESPONSE_TOPIC),
        (p.correlation_data.is_some(), HAS_CORRELATION_DATA),
    ] {
        if set {
            flags |= bit;
        }
    }
    out.push(flags);
    if let Some(at) = message.expires_at {
        // An expiry before the epoch is already past: 0 keeps it past.
        let nanos =
            u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        out.extend_from_slice(&nanos.to_le_bytes());
    }
    put16(out, message.topic.as_str().as_bytes());
    put16(out, message.origin.as_bytes());
    if let Some(pfi) = p.payload_format_indicator {
        out.push(pfi);
    }
    for field in [&p.content_type, &p.response_topic].into_iter().flatten() {
        put16(out, field.as_bytes());
    }
    if let Some(cd) = &p.correlation_data {
        put16(out, cd);
    }
    out.extend_from_slice(&(p.user_properties.len() as u32).to_le_bytes());
    for (k, v) in &p.user_properties {
        put16(out, k.as_bytes());
        put16(out, v.as_bytes());
    }
    out.extend_from_slice(&(message.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&message.payload);
    debug_assert_eq!(out.len() - start, len);
    Ok(len)
}

fn put16(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths were checked by `encoded_len`.
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// The `[len][owner]` header of the record at the start of `bytes`.
pub fn header(bytes: &[u8]) -> Result<(usize, u64), RecordError> {
    let h = bytes
        .get(..RECORD_HEADER_LEN)
        .ok_or(RecordError::Malformed("record header"))?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&h[..4]);
    let len = u32::from_le_bytes(len) as usize;
    let mut owner = [0u8; 8];
    owner.copy_from_slice(&h[4..]);
    let owner = u64::from_le_bytes(owner);
    if len < RECORD_HEADER_LEN || len > bytes.len() {
        return Err(RecordError::Malformed("record length"));
    }
    Ok((len, owner))
}

/// Decodes the record that is exactly `bytes` (header included), checking it
/// belongs to `owner`. The record is copied once into its own buffer that
/// the fields share, so the result keeps nothing else alive.
pub fn decode(bytes: &[u8], owner: u64, epoch: Instant) -> Result<Message, RecordError> {
    check_header(bytes, owner)?;
    let body = Bytes::copy_from_slice(&bytes[RECORD_HEADER_LEN..]);
    decode_body(&body, 0..body.len(), epoch)
}

/// `decode` without the copy: topic, payload and properties are slices of
/// `record` (typically a slice of one opened block), so the message keeps
/// that whole buffer alive until it is dropped. The drain's choice: one
/// block buffer per ~16 records instead of one allocation and copy each.
pub fn decode_shared(record: Bytes, owner: u64, epoch: Instant) -> Result<Message, RecordError> {
    decode_in(&record, 0..record.len(), owner, epoch)
}

/// `decode_shared` of the record at `range` of `block`, without slicing the
/// record out first. PERF: each field is one slice of `block` (one
/// reference count each), which is all the drain pays per record.
pub fn decode_in(
    block: &Bytes,
    range: std::ops::Range<usize>,
    owner: u64,
    epoch: Instant,
) -> Result<Message, RecordError> {
    let record = block
        .get(range.clone())
        .ok_or(RecordError::Malformed("record bounds"))?;
    check_header(record, owner)?;
    decode_body(block, range.start + RECORD_HEADER_LEN..range.end, epoch)
}

fn check_header(bytes: &[u8], owner: u64) -> Result<(), RecordError> {
    let (len, found) = header(bytes)?;
    if len != bytes.len() {
        return Err(RecordError::Malformed("record length"));
    }
    if found != owner {
        return Err(RecordError::WrongOwner);
    }
    Ok(())
}

/// Decodes the message in `buf[range]`; fields are slices of `buf`.
fn decode_body(
    buf: &Bytes,
    range: std::ops::Range<usize>,
    epoch: Instant,
) -> Result<Message, RecordError> {
    let mut r = Reader {
        buf,
        pos: range.start,
        end: range.end,
    };
    let flags = r.u8()?;
    let qos = QoS::from_u8(flags & QOS_MASK).ok_or(RecordError::Malformed("qos"))?;
    let expires_at = if flags & HAS_EXPIRY != 0 {
        // Past the end of `Instant` means "never", as `message::expiry` does.
        epoch.checked_add(Duration::from_nanos(r.u64()?))
    } else {
        None
    };
    let topic = TopicName::new(r.string()?).map_err(|_| RecordError::Malformed("topic"))?;
    let origin = r.string()?;
    // PERF: a record without properties (the telemetry case) allocates
    // none: `Props` boxes a set on the first write.
    let mut properties = Props::default();
    if flags & (HAS_PAYLOAD_FORMAT | HAS_CONTENT_TYPE | HAS_RESPONSE_TOPIC | HAS_CORRELATION_DATA)
        != 0
    {
        let p = &mut *properties;
        if flags & HAS_PAYLOAD_FORMAT != 0 {
            p.payload_format_indicator = Some(r.u8()?);
        }
        if flags & HAS_CONTENT_TYPE != 0 {
            p.content_type = Some(r.string()?);
        }
        if flags & HAS_RESPONSE_TOPIC != 0 {
            p.response_topic = Some(r.string()?);
        }
        if flags & HAS_CORRELATION_DATA != 0 {
            p.correlation_data = Some(r.bytes16()?);
        }
    }
    let user_count = r.u32()? as usize;
    // Each pair takes at least 4 bytes: bounds the allocation by the input.
    if user_count > r.left() / 4 {
        return Err(RecordError::Malformed("user property count"));
    }
    if user_count > 0 {
        let p = &mut *properties;
        p.user_properties.reserve_exact(user_count);
        for _ in 0..user_count {
            let k = r.string()?;
            let v = r.string()?;
            p.user_properties.push((k, v));
        }
    }
    let payload_len = r.u32()? as usize;
    let payload = r.take(payload_len)?;
    if r.left() != 0 {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    Ok(Message {
        topic,
        payload,
        qos,
        retain: flags & RETAIN != 0,
        properties,
        expires_at,
        origin,
        retain_stamp: 0,
    })
}

/// Walks a record's bytes (`buf[pos..end]`); strings and payload become
/// shared slices of `buf` (no copies), integers are read in place.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.end - self.pos
    }

    fn span(&mut self, n: usize) -> Result<std::ops::Range<usize>, RecordError> {
        if n > self.left() {
            return Err(RecordError::Malformed("truncated"));
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    fn take(&mut self, n: usize) -> Result<Bytes, RecordError> {
        let span = self.span(n)?;
        Ok(self.buf.slice(span))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let span = self.span(N)?;
        let mut a = [0; N];
        a.copy_from_slice(&self.buf[span]);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes16(&mut self) -> Result<Bytes, RecordError> {
        let n = u16::from_le_bytes(self.array()?);
        self.take(usize::from(n))
    }

    fn string(&mut self) -> Result<ByteString, RecordError> {
        ByteString::try_from(self.bytes16()?).map_err(|_| RecordError::Malformed("utf-8"))
    }
}
