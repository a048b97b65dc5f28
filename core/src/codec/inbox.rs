//! From a connection's socket bytes to packets, so that whatever the broker
//! keeps of a packet (a queued payload, a client id) owns an allocation of
//! about its own size, and so that the bytes held in packets not yet whole
//! are known (`partial_len`). Small frames are copied out of the read
//! buffer; large ones are assembled in an allocation of exactly their size.

use bytes::{Buf, BytesMut};

use super::decode::{Decoder, ShortAck};
use super::error::DecodeError;
use super::packet::Packet;

/// Frames of at least this many bytes are assembled in an allocation of
/// their own; smaller ones are copied out of the shared read buffer. Before,
/// every frame was a slice of the read buffer it arrived in, so one queued
/// 100-byte payload kept a whole 16 KiB buffer alive: 100,000 such messages
/// queued for a subscriber that stopped reading held 1.7 GB while the queue
/// counted 11 MB.
pub const LARGE_FRAME_BYTES: usize = 16 * 1024;

/// One connection's undecoded input.
#[derive(Debug)]
pub struct Inbox {
    decoder: Decoder,
    /// Bytes read and not yet decoded: the start of a small frame, or the
    /// bytes after a large frame's end.
    buf: BytesMut,
    /// The large frame being assembled; its capacity is its size.
    large: BytesMut,
    /// Size of the frame in `large`; 0 when none is.
    large_size: usize,
}

impl Inbox {
    pub fn new(decoder: Decoder) -> Inbox {
        Inbox {
            decoder,
            buf: BytesMut::new(),
            large: BytesMut::new(),
            large_size: 0,
        }
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// See [`Decoder::set_max_packet_size`]: applies from the next frame.
    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.decoder.set_max_packet_size(max_packet_size);
    }

    /// Bytes received for packets that are not whole yet: what a peer that
    /// stops mid-packet makes this connection hold.
    pub fn partial_len(&self) -> usize {
        self.buf.len() + self.large.len()
    }

    /// Adds bytes read from the socket.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.large_size > 0 {
            let take = (self.large_size - self.large.len()).min(bytes.len());
            self.large.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// [`Decoder::decode_ack`] on the bytes at the front.
    pub fn decode_ack(&mut self) -> Option<ShortAck> {
        if self.large_size > 0 {
            return None;
        }
        self.decoder.decode_ack(&mut self.buf)
    }

    /// The next whole packet: `Ok(None)` until one is. Errors as
    /// [`Decoder::decode`]; an oversize frame is refused from its fixed
    /// header, before its body is buffered.
    pub fn decode(&mut self) -> Result<Option<Packet>, DecodeError> {
        if self.large_size > 0 {
            if self.large.len() < self.large_size {
                return Ok(None);
            }
            self.large_size = 0;
            let mut frame = std::mem::take(&mut self.large);
            return self.decoder.decode(&mut frame);
        }
        let Some(size) = self.decoder.frame_size(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() >= size {
            // PERF: one allocation and copy per small frame, instead of a
            // refcount on the read buffer that pins it (see LARGE_FRAME_BYTES).
            let mut frame = BytesMut::from(&self.buf[..size]);
            self.buf.advance(size);
            return self.decoder.decode(&mut frame);
        }
        if size >= LARGE_FRAME_BYTES {
            let mut large = BytesMut::with_capacity(size);
            large.extend_from_slice(&self.buf);
            self.buf.clear();
            self.large = large;
            self.large_size = size;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, Connect, Props, ProtocolVersion, Publish, QoS};
    use bytes::Bytes;

    fn connect() -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            properties: Props::default(),
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
        }))
    }

    fn publish(len: usize) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: Props::default(),
            payload: Bytes::from(vec![7u8; len]),
        })
    }

    fn wire(packets: &[Packet]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in packets {
            encode(p, ProtocolVersion::V5, &mut out).unwrap();
        }
        out.to_vec()
    }

    /// Feeds `bytes` in reads of `chunk` bytes; returns the payloads.
    fn payloads(bytes: &[u8], chunk: usize) -> Vec<Bytes> {
        let mut inbox = Inbox::new(Decoder::new(1 << 20));
        let mut out = Vec::new();
        for part in bytes.chunks(chunk) {
            inbox.push(part);
            while let Some(p) = inbox.decode().unwrap() {
                if let Packet::Publish(p) = p {
                    out.push(p.payload);
                }
            }
        }
        assert_eq!(inbox.partial_len(), 0);
        out
    }

    #[test]
    fn small_payloads_do_not_share_the_read_buffer() {
        // Before: each payload was a slice of the 16 KiB read buffer it
        // arrived in, so consecutive payloads lay one frame apart in it and
        // keeping one kept the buffer.
        let mut packets = vec![connect()];
        packets.extend((0..200).map(|_| publish(100)));
        let frame = wire(&[publish(100)]).len();
        let got = payloads(&wire(&packets), 16 * 1024);
        assert_eq!(got.len(), 200);
        let back_to_back = got
            .windows(2)
            .filter(|w| w[1].as_ptr() as usize == w[0].as_ptr() as usize + frame)
            .count();
        assert_eq!(back_to_back, 0, "payloads share a buffer");
    }

    #[test]
    fn large_frames_are_assembled_whole_and_in_order() {
        let mut packets = vec![connect()];
        for len in [100, 40_000, 10, 70_000, 16 * 1024, 3] {
            packets.push(publish(len));
        }
        for chunk in [1000, 4096, 16 * 1024, 100_000] {
            let got = payloads(&wire(&packets), chunk);
            let lens: Vec<usize> = got.iter().map(Bytes::len).collect();
            assert_eq!(
                lens,
                [100, 40_000, 10, 70_000, 16 * 1024, 3],
                "chunk {chunk}"
            );
            assert!(got.iter().all(|p| p.iter().all(|b| *b == 7)));
        }
    }

    #[test]
    fn partial_len_counts_what_a_stalled_peer_makes_us_hold() {
        let bytes = wire(&[connect(), publish(100_000)]);
        let mut inbox = Inbox::new(Decoder::new(1 << 20));
        let cut = bytes.len() - 10;
        inbox.push(&bytes[..cut]);
        assert!(matches!(inbox.decode(), Ok(Some(Packet::Connect(_)))));
        assert!(matches!(inbox.decode(), Ok(None)));
        assert!(inbox.partial_len() > 99_000);
        inbox.push(&bytes[cut..]);
        assert!(matches!(inbox.decode(), Ok(Some(Packet::Publish(_)))));
        assert_eq!(inbox.partial_len(), 0);
    }

    #[test]
    fn a_connect_over_the_limit_is_refused_from_its_fixed_header() {
        // 4 peers each sending 150 MB of a CONNECT that claims 256 MB made
        // the broker hold 642 MB: now the claim alone is refused, and the
        // level in the first bytes picks the CONNACK's format.
        let mut inbox = Inbox::new(Decoder::new(64 * 1024));
        let mut claim = vec![0x10, 0xff, 0xff, 0xff, 0x7f];
        claim.extend_from_slice(b"\x00\x04MQTT\x05");
        inbox.push(&claim);
        assert!(matches!(
            inbox.decode(),
            Err(DecodeError::PacketTooLarge { max: 65_536, .. })
        ));
        assert_eq!(inbox.decoder().version(), Some(ProtocolVersion::V5));
    }
}
