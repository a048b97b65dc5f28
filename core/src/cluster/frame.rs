//! What crosses a link between two nodes, as bytes (docs/CLUSTER.md):
//! `[len u32][kind u8][body]`, little-endian, where `len` counts kind and
//! body and never passes the decoder's limit. A publish batch is the disk
//! buffer's records (`buffer::record`): one encoding for a message at rest
//! and between nodes, whose `owner` field carries the retained stamp
//! (`cluster::clock`). Decoding checks every length against what is there
//! before allocating, so a broken or hostile peer gets a precise error,
//! never a panic or a buffer it chose the size of.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use super::clock::STAMP_MAX;
use super::routes::{Incarnation, NodeId, RouteMsg, RouteOp};
use crate::buffer::{record, RecordError};
use crate::session::Message;
use crate::topic::TopicFilter;

/// The link protocol's version, checked in `Hello`.
pub const LINK_VERSION: u16 = 4;
const HEADER_LEN: usize = 4;

const KIND_HELLO: u8 = 1;
const KIND_DELTA: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_DIGEST: u8 = 4;
const KIND_SNAPSHOT_REQUEST: u8 = 5;
const KIND_PUBLISH: u8 = 6;
const KIND_ACK: u8 = 7;
const KIND_RETAINED: u8 = 8;

const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First on every link, both ways: who is at this end.
    Hello {
        version: u16,
        node: NodeId,
        incarnation: Incarnation,
    },
    Route(RouteMsg),
    /// Messages for the receiver to match against its own subscriptions,
    /// each with the share groups (`$share/{group}/{filter}`) it serves
    /// there; the receiver's other groups do not get it.
    Publish {
        /// The sending shard's stream to the receiver, and the number of
        /// the first message in it (the others follow, consecutive): a
        /// receiver drops what an earlier link already carried.
        stream: u16,
        first_seq: u64,
        messages: Vec<(Message, Vec<ByteString>)>,
    },
    /// Retained messages the sender stores, for the receiver to store where
    /// it has none (the sync when a link comes up); not delivered.
    Retained(Vec<Message>),
    /// The receiver of `Publish` frames routed this many of the link's
    /// messages so far (cumulative, from the link's start).
    Ack(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the link's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("frame holds an invalid topic filter")]
    Filter,
    #[error("publish batch: {0}")]
    Record(#[from] RecordError),
}

/// Appends `frame`. Message expiries are sent as what remains after `now`
/// (an `Instant` means nothing on another machine).
pub fn encode(frame: &Frame, out: &mut Vec<u8>, now: Instant) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    match frame {
        Frame::Hello {
            version,
            node,
            incarnation,
        } => {
            out.push(KIND_HELLO);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&node.0.to_le_bytes());
            out.extend_from_slice(&incarnation.0.to_le_bytes());
        }
        Frame::Route(msg) => encode_route(msg, out)?,
        Frame::Publish {
            stream,
            first_seq,
            messages,
        } => {
            out.truncate(start);
            let entries = messages.iter().map(|(m, g)| (m, g.as_slice()));
            return encode_publish(*stream, *first_seq, entries, out, now);
        }
        Frame::Retained(messages) => {
            out.push(KIND_RETAINED);
            for m in messages {
                record::encode(out, m.retain_stamp, m, now)?;
            }
        }
        Frame::Ack(count) => {
            out.push(KIND_ACK);
            out.extend_from_slice(&count.to_le_bytes());
        }
    }
    finish(out, start)
}

/// Appends a `Publish` frame of `messages` without building a `Frame`
/// (a link sends the shared messages it is given, no copy).
pub fn encode_publish<'a>(
    stream: u16,
    first_seq: u64,
    messages: impl Iterator<Item = (&'a Message, &'a [ByteString])>,
    out: &mut Vec<u8>,
    now: Instant,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(KIND_PUBLISH);
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    for (m, groups) in messages {
        let n = u16::try_from(groups.len())
            .map_err(|_| FrameError::Malformed("too many share groups"))?;
        out.extend_from_slice(&n.to_le_bytes());
        for g in groups {
            put_str(out, g)?;
        }
        record::encode(out, m.retain_stamp, m, now)?;
    }
    finish(out, start)
}

/// Writes the length of the frame that starts at `start`.
fn finish(out: &mut [u8], start: usize) -> Result<(), FrameError> {
    let len = u32::try_from(out.len() - start - HEADER_LEN).map_err(|_| FrameError::TooLarge {
        len: out.len() - start,
        max: u32::MAX as usize,
    })?;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn encode_route(msg: &RouteMsg, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let head = |out: &mut Vec<u8>, kind: u8, from: NodeId, inc: Incarnation, seq: u64| {
        out.push(kind);
        out.extend_from_slice(&from.0.to_le_bytes());
        out.extend_from_slice(&inc.0.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    };
    match msg {
        RouteMsg::Delta {
            from,
            incarnation,
            seq,
            ops,
        } => {
            head(out, KIND_DELTA, *from, *incarnation, *seq);
            out.extend_from_slice(&count(ops.len())?.to_le_bytes());
            for op in ops {
                let (code, f) = match op {
                    RouteOp::Add(f) => (OP_ADD, f),
                    RouteOp::Remove(f) => (OP_REMOVE, f),
                };
                out.push(code);
                put_filter(out, f)?;
            }
        }
        RouteMsg::Snapshot {
            from,
            incarnation,
            seq,
            filters,
        } => {
            head(out, KIND_SNAPSHOT, *from, *incarnation, *seq);
            out.extend_from_slice(&count(filters.len())?.to_le_bytes());
            for f in filters {
                put_filter(out, f)?;
            }
        }
        RouteMsg::Digest {
            from,
            incarnation,
            seq,
            hash,
        } => {
            head(out, KIND_DIGEST, *from, *incarnation, *seq);
            out.extend_from_slice(&hash.to_le_bytes());
        }
        RouteMsg::SnapshotRequest { from } => {
            out.push(KIND_SNAPSHOT_REQUEST);
            out.extend_from_slice(&from.0.to_le_bytes());
        }
    }
    Ok(())
}

fn count(n: usize) -> Result<u32, FrameError> {
    u32::try_from(n).map_err(|_| FrameError::Malformed("too many entries"))
}

fn put_filter(out: &mut Vec<u8>, f: &TopicFilter) -> Result<(), FrameError> {
    put_str(out, f.as_str())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), FrameError> {
    let s = s.as_bytes();
    let len = u16::try_from(s.len()).map_err(|_| FrameError::Filter)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// Takes the next whole frame off `buf`: `Ok(None)` until one is complete.
/// A frame announcing more than `max` bytes fails at once, before any of
/// it is buffered. Expiries come back relative to `now`.
pub fn decode(buf: &mut BytesMut, max: usize, now: Instant) -> Result<Option<Frame>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty frame"));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(len).freeze();
    decode_body(body, now).map(Some)
}

fn decode_body(body: Bytes, now: Instant) -> Result<Frame, FrameError> {
    let mut r = Reader(&body[1..]);
    let frame = match body[0] {
        KIND_HELLO => Frame::Hello {
            version: r.u16()?,
            node: NodeId(r.u32()?),
            incarnation: Incarnation(r.u64()?),
        },
        KIND_DELTA => {
            let (from, incarnation, seq) = r.head()?;
            let n = r.count(3)?;
            let mut ops = Vec::with_capacity(n);
            for _ in 0..n {
                let code = r.u8()?;
                let f = r.filter()?;
                ops.push(match code {
                    OP_ADD => RouteOp::Add(f),
                    OP_REMOVE => RouteOp::Remove(f),
                    _ => return Err(FrameError::Malformed("unknown route op")),
                });
            }
            Frame::Route(RouteMsg::Delta {
                from,
                incarnation,
                seq,
                ops,
            })
        }
        KIND_SNAPSHOT => {
            let (from, incarnation, seq) = r.head()?;
            let n = r.count(2)?;
            let mut filters = Vec::with_capacity(n);
            for _ in 0..n {
                filters.push(r.filter()?);
            }
            Frame::Route(RouteMsg::Snapshot {
                from,
                incarnation,
                seq,
                filters,
            })
        }
        KIND_DIGEST => {
            let (from, incarnation, seq) = r.head()?;
            Frame::Route(RouteMsg::Digest {
                from,
                incarnation,
                seq,
                hash: r.u64()?,
            })
        }
        KIND_SNAPSHOT_REQUEST => Frame::Route(RouteMsg::SnapshotRequest {
            from: NodeId(r.u32()?),
        }),
        KIND_PUBLISH => return decode_publish(&body, now),
        KIND_ACK => Frame::Ack(r.u64()?),
        KIND_RETAINED => {
            let mut messages = Vec::new();
            let mut at = 1;
            while at < body.len() {
                let (m, next) = record_at(&body, at, now)?;
                messages.push(m);
                at = next;
            }
            return Ok(Frame::Retained(messages));
        }
        kind => return Err(FrameError::UnknownKind(kind)),
    };
    if !r.0.is_empty() {
        return Err(FrameError::Malformed("bytes after the frame's fields"));
    }
    Ok(frame)
}

/// The message record at `at` in `body`, and where the next one starts.
/// A stamp past the clock's 56 bits is refused: it would win every
/// comparison forever.
fn record_at(body: &Bytes, at: usize, now: Instant) -> Result<(Message, usize), FrameError> {
    let (len, stamp) = record::header(&body[at..])?;
    if stamp > STAMP_MAX {
        return Err(FrameError::Malformed("retained stamp past 56 bits"));
    }
    let mut message = record::decode_in(body, at..at + len, stamp, now)?;
    message.retain_stamp = stamp;
    Ok((message, at + len))
}

fn decode_publish(body: &Bytes, now: Instant) -> Result<Frame, FrameError> {
    let mut head = Reader(&body[1..]);
    let stream = head.u16()?;
    let first_seq = head.u64()?;
    let mut messages = Vec::new();
    let mut at = 1 + 2 + 8;
    while at < body.len() {
        let mut r = Reader(&body[at..]);
        let n = r.u16()?;
        let mut groups = Vec::new();
        for _ in 0..n {
            // Each a share route: a valid filter, kept as its text.
            groups.push(ByteString::from(r.filter()?.as_str()));
        }
        let (m, next) = record_at(body, body.len() - r.0.len(), now)?;
        messages.push((m, groups));
        at = next;
    }
    Ok(Frame::Publish {
        stream,
        first_seq,
        messages,
    })
}

/// Reads little-endian fields off a frame body; every read checks length.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed("frame ends inside a field"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn head(&mut self) -> Result<(NodeId, Incarnation, u64), FrameError> {
        Ok((NodeId(self.u32()?), Incarnation(self.u64()?), self.u64()?))
    }

    /// An entry count, each entry at least `min_bytes`: a count the rest of
    /// the frame cannot hold is refused before anything is allocated.
    fn count(&mut self, min_bytes: usize) -> Result<usize, FrameError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.0.len() {
            return Err(FrameError::Malformed("entry count past the frame's end"));
        }
        Ok(n)
    }

    fn filter(&mut self) -> Result<TopicFilter, FrameError> {
        let len = self.u16()? as usize;
        let raw = std::str::from_utf8(self.take(len)?).map_err(|_| FrameError::Filter)?;
        TopicFilter::try_from(raw).map_err(|_| FrameError::Filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::topic::TopicName;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap_or_else(|_| unreachable!())
    }

    fn frames(now: Instant) -> Vec<Frame> {
        let message = Message {
            topic: TopicName::try_from("plant/line1/temp").unwrap_or_else(|_| unreachable!()),
            payload: Bytes::from_static(b"21.5"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: Some(now + std::time::Duration::from_secs(30)),
            origin: "sensor-1".into(),
            retain_stamp: 0,
        };
        let retained = Message {
            retain: true,
            expires_at: None,
            retain_stamp: STAMP_MAX,
            ..message.clone()
        };
        let clear = Message {
            payload: Bytes::new(),
            retain_stamp: 5,
            ..retained.clone()
        };
        let (node, incarnation) = (NodeId(2), Incarnation(7));
        vec![
            Frame::Hello {
                version: LINK_VERSION,
                node,
                incarnation,
            },
            Frame::Route(RouteMsg::Delta {
                from: node,
                incarnation,
                seq: 3,
                ops: vec![RouteOp::Add(f("a/+/c")), RouteOp::Remove(f("#"))],
            }),
            Frame::Route(RouteMsg::Snapshot {
                from: node,
                incarnation,
                seq: 3,
                filters: vec![f("a/+/c"), f("$SYS/x")],
            }),
            Frame::Route(RouteMsg::Digest {
                from: node,
                incarnation,
                seq: 3,
                hash: 0xdead_beef,
            }),
            Frame::Route(RouteMsg::SnapshotRequest { from: NodeId(1) }),
            Frame::Publish {
                stream: 3,
                first_seq: 41,
                messages: vec![
                    (message.clone(), Vec::new()),
                    (message, vec![ByteString::from("$share/g/plant/+/temp")]),
                ],
            },
            Frame::Ack(1 << 40),
            Frame::Publish {
                stream: 3,
                first_seq: 43,
                messages: vec![(retained.clone(), Vec::new())],
            },
            Frame::Retained(vec![retained, clear]),
        ]
    }

    #[test]
    fn every_frame_round_trips_and_waits_for_its_last_byte() {
        let now = t0();
        let all = frames(now);
        let mut wire = Vec::new();
        for frame in &all {
            encode(frame, &mut wire, now).unwrap_or_else(|e| panic!("{e}"));
        }
        // Fed one byte at a time: nothing until a frame is whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            while let Some(frame) = decode(&mut buf, 1 << 20, now).unwrap_or_else(|e| panic!("{e}"))
            {
                got.push(frame);
            }
        }
        assert_eq!(got, all);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_stamp_past_56_bits_is_refused() {
        let now = t0();
        let Some(Frame::Retained(mut messages)) = frames(now).pop() else {
            unreachable!()
        };
        messages.truncate(1);
        let mut wire = Vec::new();
        encode(&Frame::Retained(messages), &mut wire, now).unwrap_or_else(|e| panic!("{e}"));
        // The record's owner field (after the frame header, the kind and
        // the record's length) holds the stamp.
        let at = HEADER_LEN + 1 + 4;
        wire[at..at + 8].copy_from_slice(&(STAMP_MAX + 1).to_le_bytes());
        assert_eq!(
            decode(&mut BytesMut::from(&wire[..]), 1 << 20, now),
            Err(FrameError::Malformed("retained stamp past 56 bits"))
        );
    }

    #[test]
    fn a_frame_over_the_limit_fails_before_it_is_buffered() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            decode(&mut buf, 1 << 20, t0()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_bytes_get_an_error_never_a_panic() {
        let now = t0();
        // A count of 4 billion filters in a 30-byte frame.
        let mut bomb = vec![KIND_SNAPSHOT];
        bomb.extend_from_slice(&[0; 20]);
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut framed = (bomb.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&bomb);
        assert!(decode(&mut BytesMut::from(&framed[..]), 1 << 20, now).is_err());
        // Every single-byte change and every truncation of valid frames,
        // re-framed so the decoder reads them whole.
        let mut wire = Vec::new();
        for frame in frames(now) {
            wire.clear();
            encode(&frame, &mut wire, now).unwrap_or_else(|e| panic!("{e}"));
            let body = &wire[HEADER_LEN..];
            for cut in 1..body.len() {
                let mut bad = body[..cut].to_vec();
                bad[cut - 1] ^= 0x5a;
                let mut framed = (bad.len() as u32).to_le_bytes().to_vec();
                framed.extend_from_slice(&bad);
                let _ = decode(&mut BytesMut::from(&framed[..]), 1 << 20, now);
            }
        }
    }
}
