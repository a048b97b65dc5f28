//! Decoding: split one whole frame off a `BytesMut` and parse it into a
//! [`Packet`] without copying (strings, binaries and payloads are slices of
//! the frozen frame). Checks everything a single packet can break; state
//! across packets (topic aliases, packet ids in flight, filter syntax) is the
//! session's. §2 (format), §3 (packets), §1.5 (data types).
//!
//! Size limit: the packet's total size (fixed header included, v5
//! §3.1.2.11.4) is checked against `max_packet_size` as soon as the fixed
//! header is complete, before any of the body is waited for, so a peer can
//! never make us buffer more than `max_packet_size` bytes.
//!
//! Non-minimal Variable Byte Integers are rejected in MQTT 5.0, where
//! [MQTT-1.5.5-1] requires the minimum encoding, and accepted in 3.1.1, which
//! has no such rule (§2.2.3 only bounds the length to 4 bytes).

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::properties::PropertyContext;
use super::property_codec::read_properties;
use super::props::Props;
use super::reason::ReasonCode;
use super::wire::{parse_varint, to_string, Reader};

/// Stateful decoder for the packets a server reads from one connection.
///
/// Until a version is known only CONNECT is accepted [MQTT-3.1.0-1];
/// decoding CONNECT sets the version from its protocol level as soon as the
/// level is read, so if the rest of that CONNECT is bad, [`Decoder::version`]
/// tells which CONNACK format to answer in. A second CONNECT is rejected
/// [MQTT-3.1.0-2]. Clients call [`Decoder::set_version`] first (they never
/// receive CONNECT) or use [`decode_packet`].
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: u32,
    version: Option<ProtocolVersion>,
}

impl Decoder {
    /// `max_packet_size` bounds the whole packet, fixed header included.
    pub fn new(max_packet_size: u32) -> Decoder {
        Decoder {
            max_packet_size,
            version: None,
        }
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Changes the limit for the packets not yet started: the broker keeps
    /// a small one until the CONNECT is accepted (`CONNECT_SIZE_MAX`).
    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size;
    }

    /// The size of the frame at the front of `buf` once its fixed header is
    /// complete (`Ok(None)` before), after the checks [`Decoder::decode`]
    /// makes on a fixed header: the size is within `max_packet_size`.
    pub fn frame_size(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let checked = frame_header(buf, self.version, self.max_packet_size);
        if let Err(DecodeError::PacketTooLarge { .. }) = &checked {
            self.peek_connect_level(buf);
        }
        Ok(checked?.map(|(_, size)| size))
    }

    /// An oversize first packet is refused from its fixed header, before
    /// its protocol level is parsed; read the level if it arrived, so the
    /// refusal is a CONNACK the client understands (v5 §3.2.2.2 0x95).
    fn peek_connect_level(&mut self, buf: &[u8]) {
        if self.version.is_some() {
            return;
        }
        let Ok(Some(rl)) = parse_varint(buf.get(1..).unwrap_or_default()) else {
            return;
        };
        // Protocol name "MQTT" (2 + 4 bytes) then the level.
        let at = 1 + rl.len;
        if buf.get(at..at + 6) == Some(&b"\x00\x04MQTT"[..]) {
            self.version = match buf.get(at + 6) {
                Some(4) => Some(ProtocolVersion::V311),
                Some(5) => Some(ProtocolVersion::V5),
                _ => None,
            };
        }
    }

    /// Decodes one packet from the front of `buf`. `Ok(None)`: `buf` holds
    /// no whole packet yet and is left untouched. `Ok(Some(_))`: exactly one
    /// frame was split off. `Err(_)`: the connection must be closed; `buf`
    /// may or may not have been consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        if let Some(ack) = self.decode_ack(buf) {
            return Ok(Some(ack.to_packet()));
        }
        let split = split_frame(buf, self.version, self.max_packet_size);
        if let Err(DecodeError::PacketTooLarge { .. }) = &split {
            self.peek_connect_level(buf);
        }
        let Some((header, frame)) = split? else {
            return Ok(None);
        };
        match self.version {
            // split_frame let only CONNECT through.
            None => {
                let connect = parse_connect(&header, &frame, &mut self.version)?;
                Ok(Some(Packet::Connect(Box::new(connect))))
            }
            Some(v) => parse(&header, &frame, v).map(Some),
        }
    }
}

impl Decoder {
    /// PERF: a subscriber acknowledges every QoS 1/2 message, so the
    /// 4-byte form of PUBACK, PUBREC, PUBREL and PUBCOMP (packet id only:
    /// reason Success, no properties, §3.4.2.1) is most of what a draining
    /// connection reads. Decoded here without splitting a frame off `buf`
    /// or building a `Packet`; `None` for anything else, including a zero
    /// packet id or wrong flags, which [`Decoder::decode`] then reports
    /// precisely.
    pub fn decode_ack(&mut self, buf: &mut BytesMut) -> Option<ShortAck> {
        if self.version.is_none() || self.max_packet_size < 4 {
            return None;
        }
        let &[first, 2, hi, lo, ..] = &buf[..] else {
            return None;
        };
        let packet_id = PacketId::new(u16::from_be_bytes([hi, lo]))?;
        // Fixed header flags: 0 for PUBACK/PUBREC/PUBCOMP, 0b0010 for
        // PUBREL [MQTT-3.6.1-1]; other values are malformed (general path).
        let kind = match first {
            0x40 => AckKind::PubAck,
            0x50 => AckKind::PubRec,
            0x62 => AckKind::PubRel,
            0x70 => AckKind::PubComp,
            _ => return None,
        };
        buf.advance(4);
        Some(ShortAck { kind, packet_id })
    }
}

/// Which acknowledgement a [`ShortAck`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// An acknowledgement in its 4-byte form: reason Success, no properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortAck {
    pub kind: AckKind,
    pub packet_id: PacketId,
}

impl ShortAck {
    /// The same acknowledgement as a `Packet`.
    pub fn to_packet(self) -> Packet {
        let r = PubResponse::new(self.packet_id, ReasonCode::Success);
        match self.kind {
            AckKind::PubAck => Packet::PubAck(r),
            AckKind::PubRec => Packet::PubRec(r),
            AckKind::PubRel => Packet::PubRel(r),
            AckKind::PubComp => Packet::PubComp(r),
        }
    }
}

/// Decodes one packet of any type, in either direction, from a peer speaking
/// `version` (a CONNECT is decoded by its own protocol level). Same contract
/// as [`Decoder::decode`]; used by clients and tests.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some((header, frame)) = split_frame(buf, Some(version), max_packet_size)? else {
        return Ok(None);
    };
    parse(&header, &frame, version).map(Some)
}

#[derive(Debug, Clone, Copy)]
struct Header {
    packet_type: PacketType,
    flags: u8,
    /// Fixed header size: 1 + the remaining length's bytes.
    len: usize,
    /// Whether the remaining length was minimally encoded.
    minimal: bool,
}

/// Validates the fixed header and, once the whole frame is buffered, splits
/// it off `buf`. Everything decidable from the first byte is checked before
/// waiting for more. `version` `None` means "first packet: CONNECT only":
/// nothing else can be parsed before the protocol level is known. That is
/// the only order the codec knows; the order rules (a second CONNECT...)
/// are the session's (`session::Violation`).
fn split_frame(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<(Header, Bytes)>, DecodeError> {
    let Some((header, size)) = frame_header(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((header, buf.split_to(size).freeze())))
}

/// The fixed header at the front of `buf` and the whole frame's size, once
/// the header is complete and valid (see `split_frame`).
fn frame_header(
    buf: &[u8],
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<(Header, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = packet_type(first >> 4, version)?;
    match (version, packet_type) {
        (None, PacketType::Connect) => {}
        (None, other) => return Err(DecodeError::FirstPacketNotConnect(other)),
        _ => {}
    }
    let flags = first & 0x0F;
    check_flags(packet_type, flags)?;

    let Some(rl) = parse_varint(&buf[1..])? else {
        return Ok(None);
    };
    if version == Some(ProtocolVersion::V5) && !rl.minimal {
        return Err(DecodeError::VarintNotMinimal);
    }
    let header_len = 1 + rl.len;
    let size = header_len as u64 + u64::from(rl.value);
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    // INVARIANT: size <= max_packet_size <= u32::MAX, so it fits a usize.
    let size = size as usize;
    Ok(Some((
        Header {
            packet_type,
            flags,
            len: header_len,
            minimal: rl.minimal,
        },
        size,
    )))
}

fn packet_type(nibble: u8, version: Option<ProtocolVersion>) -> Result<PacketType, DecodeError> {
    match PacketType::from_u8(nibble) {
        // Type 15 is reserved in 3.1.1 (§2.2.1); AUTH exists only in 5.0.
        Some(PacketType::Auth) if version == Some(ProtocolVersion::V311) => {
            Err(DecodeError::AuthInV311)
        }
        Some(t) => Ok(t),
        None => Err(DecodeError::ReservedPacketType(nibble)),
    }
}

/// Fixed header flags [MQTT-2.1.3-1] and the PUBLISH flag rules
/// [MQTT-3.3.1-4] [MQTT-3.3.1-2].
fn check_flags(packet_type: PacketType, flags: u8) -> Result<(), DecodeError> {
    match packet_type.fixed_header_flags() {
        Some(expected) if flags != expected => Err(DecodeError::InvalidFixedHeaderFlags {
            packet: packet_type,
            flags,
        }),
        Some(_) => Ok(()),
        None => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::PublishQos3);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQos0);
            }
            Ok(())
        }
    }
}

/// Parses a frame of a peer speaking `version`.
fn parse(header: &Header, frame: &Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(frame, header.len);
    let v5 = version == ProtocolVersion::V5;
    let packet = match header.packet_type {
        PacketType::Connect => {
            // A CONNECT is decoded by its own protocol level (its own reader
            // and length checks); whether one may come now is the session's
            // rule [MQTT-3.1.0-2].
            let mut level = None;
            return parse_connect(header, frame, &mut level).map(|c| Packet::Connect(Box::new(c)));
        }
        PacketType::ConnAck => Packet::ConnAck(parse_connack(&mut r, v5)?),
        PacketType::Publish => Packet::Publish(parse_publish(&mut r, header.flags, v5)?),
        PacketType::PubAck => Packet::PubAck(parse_pub_response(&mut r, PacketType::PubAck, v5)?),
        PacketType::PubRec => Packet::PubRec(parse_pub_response(&mut r, PacketType::PubRec, v5)?),
        PacketType::PubRel => Packet::PubRel(parse_pub_response(&mut r, PacketType::PubRel, v5)?),
        PacketType::PubComp => {
            Packet::PubComp(parse_pub_response(&mut r, PacketType::PubComp, v5)?)
        }
        PacketType::Subscribe => Packet::Subscribe(parse_subscribe(&mut r, v5)?),
        PacketType::SubAck => Packet::SubAck(parse_suback(&mut r, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(parse_unsubscribe(&mut r, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(parse_unsuback(&mut r, v5)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => {
            let (reason, properties) = parse_reason_tail(&mut r, PacketType::Disconnect, v5)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        PacketType::Auth => {
            // split_frame rejects type 15 in 3.1.1.
            let (reason, properties) = parse_reason_tail(&mut r, PacketType::Auth, v5)?;
            Packet::Auth(Auth { reason, properties })
        }
    };
    expect_end(&r, header.packet_type)?;
    Ok(packet)
}

fn expect_end(r: &Reader<'_>, packet: PacketType) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes {
            packet,
            extra: r.remaining(),
        })
    }
}

fn properties(r: &mut Reader<'_>, v5: bool, ctx: PropertyContext) -> Result<Props, DecodeError> {
    if v5 {
        read_properties(r, ctx)
    } else {
        Ok(Props::default())
    }
}

/// A non-zero packet identifier [MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]).
fn packet_id(r: &mut Reader<'_>, packet: PacketType) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16("packet identifier")?).ok_or(DecodeError::ZeroPacketId(packet))
}

/// A v5 reason code that exists (§2.4) and is allowed in `packet`.
fn reason(code: u8, packet: PacketType) -> Result<ReasonCode, DecodeError> {
    let reason =
        ReasonCode::from_u8(code).ok_or(DecodeError::UnknownReasonCode { packet, code })?;
    if !reason.valid_in(packet) {
        return Err(DecodeError::ReasonNotAllowed { packet, reason });
    }
    Ok(reason)
}

/// CONNECT (§3.1). Sets `version` once the protocol level is known.
fn parse_connect(
    header: &Header,
    frame: &Bytes,
    version: &mut Option<ProtocolVersion>,
) -> Result<Connect, DecodeError> {
    let mut r = Reader::new(frame, header.len);
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    if &name[..] != b"MQTT" {
        // MQTT 3.1 ("MQIsdp", level 3) clients understand the 3.1.1 CONNACK
        // return code 0x01, so answer them as an unsupported level.
        if &name[..] == b"MQIsdp" {
            return Err(DecodeError::UnsupportedProtocolVersion { level });
        }
        return Err(DecodeError::InvalidProtocolName);
    }
    let protocol_version = match level {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedProtocolVersion { level }),
    };
    *version = Some(protocol_version);
    let v5 = protocol_version == ProtocolVersion::V5;
    if v5 && !header.minimal {
        return Err(DecodeError::VarintNotMinimal);
    }

    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::WillQosWithoutWill);
    }
    if !will_flag && will_retain {
        return Err(DecodeError::WillRetainWithoutWill);
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(DecodeError::WillQos3);
    };
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = properties(&mut r, v5, PropertyContext::Connect)?;

    // Payload order: client id, will properties, will topic, will payload,
    // user name, password (§3.1.3).
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = self::properties(&mut r, v5, PropertyContext::Will)?;
        let topic = r.string("will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    expect_end(&r, PacketType::Connect)?;
    // Checked last so that a malformed packet is reported as such rather
    // than answered with "identifier rejected".
    if !v5 && client_id.is_empty() && !clean_start {
        return Err(DecodeError::EmptyClientIdWithoutCleanSession);
    }
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(Connect {
        protocol_version,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

/// CONNACK (§3.2).
fn parse_connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connect acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let session_present = flags & 0x01 != 0;
    let code = r.u8("connect reason code")?;
    let reason = if v5 {
        reason(code, PacketType::ConnAck)?
    } else {
        ReasonCode::from_v311_connack(code).ok_or(DecodeError::ReservedV311ConnAckCode(code))?
    };
    if session_present && reason != ReasonCode::Success {
        return Err(DecodeError::SessionPresentOnRefusal);
    }
    let properties = properties(r, v5, PropertyContext::ConnAck)?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

/// PUBLISH (§3.3). Flags were checked by `check_flags`.
fn parse_publish(r: &mut Reader<'_>, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    let Some(qos) = QoS::from_u8((flags >> 1) & 0b11) else {
        return Err(DecodeError::PublishQos3);
    };
    let topic_bytes = r.binary("topic name")?;
    // One pass for the wildcard rule; `to_string` does UTF-8 and U+0000.
    if topic_bytes.iter().any(|b| *b == b'+' || *b == b'#') {
        return Err(DecodeError::TopicWildcard);
    }
    let topic = to_string(topic_bytes, "topic name")?;
    // v5 allows an empty topic with a Topic Alias (the session checks the
    // alias); 3.1.1 does not [MQTT-4.7.3-1].
    if !v5 && topic.is_empty() {
        return Err(DecodeError::EmptyTopic);
    }
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(packet_id(r, PacketType::Publish)?),
    };
    let properties = properties(r, v5, PropertyContext::Publish)?;
    // Payload Format Indicator = 1 is not checked against the payload: the
    // receiver MAY validate it (§3.3.2.3.2); that is the session's choice.
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4-§3.7). In v5 the reason code and
/// property length may be omitted (remaining length 2 or 3).
fn parse_pub_response(
    r: &mut Reader<'_>,
    packet: PacketType,
    v5: bool,
) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r, packet)?;
    let (reason, properties) = parse_reason_tail(r, packet, v5)?;
    Ok(PubResponse {
        packet_id,
        reason,
        properties,
    })
}

/// The optional "reason code, then optional properties" tail shared by the
/// v5 PUB* responses, DISCONNECT and AUTH: nothing left means Success with no
/// properties, one byte means a reason with no properties (§3.4.2.1,
/// §3.14.2.1, §3.15.2.1). In 3.1.1 these packets carry nothing more.
fn parse_reason_tail(
    r: &mut Reader<'_>,
    packet: PacketType,
    v5: bool,
) -> Result<(ReasonCode, Props), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((ReasonCode::Success, Props::default()));
    }
    let reason = reason(r.u8("reason code")?, packet)?;
    if r.is_empty() {
        return Ok((reason, Props::default()));
    }
    let ctx = match packet {
        PacketType::PubAck => PropertyContext::PubAck,
        PacketType::PubRec => PropertyContext::PubRec,
        PacketType::PubRel => PropertyContext::PubRel,
        PacketType::PubComp => PropertyContext::PubComp,
        PacketType::Auth => PropertyContext::Auth,
        _ => PropertyContext::Disconnect,
    };
    Ok((reason, read_properties(r, ctx)?))
}

/// Topic filters the decoder accepts in one SUBSCRIBE or UNSUBSCRIBE. The
/// spec sets no number, but an entry is 4 bytes on the wire and 40
/// decoded, more once the session parses it: a 64 MiB SUBSCRIBE of short
/// filters decoded to 13 million entries, gigabytes with what the session
/// builds to answer them. A session holds at most 10,000 subscriptions
/// (`ClientLimits`), so a packet of more distinct filters cannot succeed.
pub const TOPIC_FILTERS_PER_PACKET_MAX: usize = 10_000;

/// The next filter's place is checked against the bound before the filter
/// is decoded (see `TOPIC_FILTERS_PER_PACKET_MAX`).
fn room_for_filter(len: usize, packet: PacketType) -> Result<(), DecodeError> {
    if len >= TOPIC_FILTERS_PER_PACKET_MAX {
        return Err(DecodeError::TooManyTopicFilters {
            packet,
            max: TOPIC_FILTERS_PER_PACKET_MAX,
        });
    }
    Ok(())
}

/// SUBSCRIBE (§3.8). Filters are checked only as UTF-8 strings here; their
/// syntax is `topic::Filter`'s job (the session answers 0x8F in SUBACK).
fn parse_subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r, PacketType::Subscribe)?;
    let properties = properties(r, v5, PropertyContext::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        room_for_filter(filters.len(), PacketType::Subscribe)?;
        let filter = r.string("topic filter")?;
        let options = subscription_options(r.u8("subscription options")?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// Subscription options byte (v5 §3.8.3.1; 3.1.1 §3.8.3: QoS only).
fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    if byte & reserved != 0 {
        return Err(DecodeError::SubscriptionOptionsReserved(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::SubscriptionQos3)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::RetainHandling3),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

/// SUBACK (§3.9).
fn parse_suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r, PacketType::SubAck)?;
    let properties = properties(r, v5, PropertyContext::SubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8("reason code")?;
        reasons.push(if v5 {
            reason(code, PacketType::SubAck)?
        } else {
            ReasonCode::from_v311_suback(code).ok_or(DecodeError::ReservedV311SubAckCode(code))?
        });
    }
    if reasons.is_empty() {
        return Err(DecodeError::EmptySubAck);
    }
    Ok(SubAck {
        packet_id,
        properties,
        reasons,
    })
}

/// UNSUBSCRIBE (§3.10).
fn parse_unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r, PacketType::Unsubscribe)?;
    let properties = properties(r, v5, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        room_for_filter(filters.len(), PacketType::Unsubscribe)?;
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

/// UNSUBACK (§3.11). 3.1.1 has only the packet identifier.
fn parse_unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r, PacketType::UnsubAck)?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            properties: Props::default(),
            reasons: Vec::new(),
        });
    }
    let properties = read_properties(r, PropertyContext::UnsubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(reason(r.u8("reason code")?, PacketType::UnsubAck)?);
    }
    if reasons.is_empty() {
        return Err(DecodeError::EmptyUnsubAck);
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reasons,
    })
}
