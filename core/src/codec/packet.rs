//! The one packet model shared by MQTT 3.1.1 and 5.0. Version differences live
//! in the codec (`decode.rs` / `encode.rs`), never in these types: a v3.1.1
//! packet is a v5 packet whose properties are empty and whose reason codes map
//! onto the v3.1.1 return codes.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use bytestring::ByteString;

use super::properties::SUBSCRIPTION_IDENTIFIER_MAX;
use super::props::Props;
use super::reason::ReasonCode;

/// Protocol level byte of CONNECT (MQTT 3.1.1 §3.1.2.2, MQTT 5.0 §3.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier; zero is not a valid identifier [MQTT-2.2.1-3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(pub NonZeroU16);

impl PacketId {
    pub fn new(v: u16) -> Option<PacketId> {
        NonZeroU16::new(v).map(PacketId)
    }
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

/// A Subscription Identifier: 1 to [`SUBSCRIPTION_IDENTIFIER_MAX`] (v5
/// §3.8.2.1.2, where 0 is a Protocol Error), so any value of this type may
/// be sent. The wire form in `Properties` stays `u32`; the decoder refuses
/// values outside the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// `None` for 0 and for values past the largest Variable Byte Integer.
    pub fn new(v: u32) -> Option<SubscriptionId> {
        if v > SUBSCRIPTION_IDENTIFIER_MAX {
            return None;
        }
        NonZeroU32::new(v).map(SubscriptionId)
    }
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

/// Control packet type, the high nibble of the fixed header's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The packet type of a fixed header's high nibble; `None` for the
    /// reserved value 0 and values above 15.
    pub fn from_u8(v: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match v {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The flags the low nibble of the fixed header must carry (§2.1.3):
    /// 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 otherwise. PUBLISH
    /// uses its nibble for DUP/QoS/RETAIN and has no fixed value (`None`).
    pub fn fixed_header_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5.0 only.
    Auth(Auth),
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT (§3.1). `client_id` may be empty: the session assigns one (v5) or
/// requires clean session (v3.1.1, [MQTT-3.1.3-7]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol_version: ProtocolVersion,
    /// Clean Start (v5) / Clean Session (v3.1.1).
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    pub properties: Props,
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Validated as a topic name by the session, not the codec.
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (§3.1.3.2): delay, payload format, expiry, content
    /// type, response topic, correlation data, user properties.
    pub properties: Props,
}

/// CONNACK (§3.1). In v3.1.1 `reason` maps to the connect return code
/// (0x00..0x05); see [`ReasonCode::to_v311_connack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Props,
}

/// PUBLISH (§3.3). `topic` may be empty in v5 when a topic alias is used; it
/// never contains wildcards [MQTT-3.3.2-2] (the codec rejects them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: ByteString,
    /// Present if and only if qos > 0 [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    pub properties: Props,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (§3.4-§3.7). v3.1.1
/// carries only the packet id: `reason` is Success and properties empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: Props,
}

impl PubResponse {
    pub fn new(packet_id: PacketId, reason: ReasonCode) -> PubResponse {
        PubResponse {
            packet_id,
            reason,
            properties: Props::default(),
        }
    }
}

/// Retain Handling subscription option (v5 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options byte (v5 §3.8.3.1; in v3.1.1 only the QoS bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    /// Subscription Identifier (at most one) and user properties.
    pub properties: Props,
    /// Raw filters as sent (validated by `topic::Filter::parse`); never empty
    /// [MQTT-3.8.3-3].
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
}

/// SUBACK (§3.9). v3.1.1 return codes map to GrantedQoS0/1/2 and
/// UnspecifiedError (0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub properties: Props,
    pub reasons: Vec<ReasonCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub properties: Props,
    /// Never empty [MQTT-3.10.3-2].
    pub filters: Vec<ByteString>,
}

/// UNSUBACK (§3.11). v3.1.1 has no payload: `reasons` is empty when decoded
/// and ignored when encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub properties: Props,
    pub reasons: Vec<ReasonCode>,
}

/// DISCONNECT (§3.14). v3.1.1: reason NormalDisconnection, no properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Props,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: Props::default(),
        }
    }
}

/// AUTH (v5 §3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Props,
}
