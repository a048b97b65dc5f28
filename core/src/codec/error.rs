//! Codec errors. Every [`DecodeError`] variant is one spec violation, names
//! the rule it breaks, and maps to what the broker answers with: a v5 reason
//! code ([`DecodeError::reason_code`]) and, for a v3.1.1 CONNECT, a CONNACK
//! return code ([`DecodeError::v311_connack`]). Every [`EncodeError`] is a
//! packet the codec refuses to put on the wire because a peer would reject it.

use super::packet::PacketType;
use super::properties::{PropertyContext, PropertyId};
use super::reason::ReasonCode;

/// A received packet the spec says to reject. After any of these the
/// connection is closed (after a CONNACK or DISCONNECT where the spec allows).
///
/// Reason codes follow the spec's own words where it has them: "is a
/// Malformed Packet" -> 0x81, "is a Protocol Error" -> 0x82. Where it has
/// none, malformed means "cannot be parsed as the spec defines" (bad framing,
/// flags, lengths, encodings) and protocol error means "parsed, but a value
/// the spec forbids" (zero packet id, a reason code not allowed in that
/// packet, an empty SUBSCRIBE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    // ---- Fixed header and framing (§2.1, §1.5.5) ----
    #[error("§2.1.2 reserved control packet type {0}")]
    ReservedPacketType(u8),
    #[error("[MQTT-2.1.3-1] invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidFixedHeaderFlags { packet: PacketType, flags: u8 },
    #[error("§1.5.5 variable byte integer longer than 4 bytes")]
    VarintTooLong,
    #[error("[MQTT-1.5.5-1] variable byte integer not encoded in the minimum number of bytes")]
    VarintNotMinimal,
    /// `size` is the whole packet, fixed header included (v5 §3.1.2.11.4).
    #[error("[MQTT-3.1.2-24] packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("§2.1.4 remaining length ends inside {field}")]
    Truncated { field: &'static str },
    #[error("§2.1.4 {extra} bytes after the end of {packet:?}")]
    TrailingBytes { packet: PacketType, extra: usize },
    #[error("[MQTT-3.1.0-1] first packet is {0:?}, not CONNECT")]
    FirstPacketNotConnect(PacketType),
    #[error("§2.1.2 AUTH does not exist in MQTT 3.1.1")]
    AuthInV311,

    // ---- Data representation (§1.5.4) ----
    #[error("[MQTT-1.5.4-1] {field} is not well-formed UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("[MQTT-1.5.4-2] {field} contains U+0000")]
    NullCharacter { field: &'static str },

    // ---- Packet identifier (§2.2.1) ----
    #[error("[MQTT-2.2.1-3] packet identifier of {0:?} is zero")]
    ZeroPacketId(PacketType),

    // ---- CONNECT (§3.1) ----
    #[error("[MQTT-3.1.2-1] protocol name is not \"MQTT\"")]
    InvalidProtocolName,
    #[error("[MQTT-3.1.2-2] unsupported protocol level {level}")]
    UnsupportedProtocolVersion { level: u8 },
    #[error("[MQTT-3.1.2-3] reserved flag in CONNECT flags is set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] (v3.1.1: [MQTT-3.1.2-13]) Will QoS is not 0 but the Will Flag is 0")]
    WillQosWithoutWill,
    #[error("[MQTT-3.1.2-12] (v3.1.1: [MQTT-3.1.2-14]) Will QoS is 3")]
    WillQos3,
    #[error("[MQTT-3.1.2-13] (v3.1.1: [MQTT-3.1.2-15]) Will Retain is set but the Will Flag is 0")]
    WillRetainWithoutWill,
    #[error("[MQTT-3.1.2-22] v3.1.1 Password Flag is set but the User Name Flag is 0")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.1.3-8] v3.1.1 empty client identifier without Clean Session")]
    EmptyClientIdWithoutCleanSession,
    /// v5 §3.1.2.11.10: "It is a Protocol Error to include Authentication
    /// Data if there is no Authentication Method" (no rule number).
    #[error("§3.1.2.11.10 CONNECT has Authentication Data but no Authentication Method")]
    AuthenticationDataWithoutMethod,

    // ---- CONNACK (§3.2) ----
    #[error("[MQTT-3.2.2-1] reserved bits of the CONNACK acknowledge flags are set")]
    ConnAckReservedFlags,
    #[error("[MQTT-3.2.2-6] (v3.1.1: [MQTT-3.2.2-4]) Session Present is set with a non-zero return code")]
    SessionPresentOnRefusal,
    #[error("§3.2.2.3 v3.1.1 CONNACK return code {0} is reserved")]
    ReservedV311ConnAckCode(u8),

    // ---- PUBLISH (§3.3) ----
    #[error("[MQTT-3.3.1-4] PUBLISH QoS is 3")]
    PublishQos3,
    #[error("[MQTT-3.3.1-2] DUP is set on a QoS 0 PUBLISH")]
    DupWithQos0,
    #[error("[MQTT-3.3.2-2] topic name in PUBLISH contains a wildcard")]
    TopicWildcard,
    #[error("[MQTT-4.7.3-1] v3.1.1 PUBLISH topic name is empty")]
    EmptyTopic,
    #[error("[MQTT-3.3.2-8] Topic Alias is 0")]
    TopicAliasZero,

    // ---- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK (§3.8-§3.11) ----
    #[error("[MQTT-3.8.3-3] (v5: [MQTT-3.8.3-2]) SUBSCRIBE has no topic filter")]
    EmptySubscribe,
    #[error("[MQTT-3.8.3-5] (v3.1.1: [MQTT-3-8.3-4]) reserved bits of subscription options {0:#010b} are set")]
    SubscriptionOptionsReserved(u8),
    #[error("[MQTT-3-8.3-4] subscription QoS is 3")]
    SubscriptionQos3,
    #[error("§3.8.3.1 Retain Handling is 3")]
    RetainHandling3,
    #[error("[MQTT-3.8.4-6] SUBACK has no reason code")]
    EmptySubAck,
    #[error("[MQTT-3.9.3-2] v3.1.1 SUBACK return code {0:#04x} is reserved")]
    ReservedV311SubAckCode(u8),
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE has no topic filter")]
    EmptyUnsubscribe,
    #[error("§3.11.3 UNSUBACK has no reason code")]
    EmptyUnsubAck,

    // ---- Reason codes (§2.4) ----
    #[error("§2.4 {code:#04x} is not a reason code ({packet:?})")]
    UnknownReasonCode { packet: PacketType, code: u8 },
    #[error("§2.4 reason code {reason:?} is not allowed in {packet:?}")]
    ReasonNotAllowed {
        packet: PacketType,
        reason: ReasonCode,
    },

    // ---- Properties (§2.2.2) ----
    #[error("§2.2.2.2 unknown property identifier {0:#x}")]
    UnknownProperty(u32),
    #[error("§2.2.2.2 property {property} is not allowed in {context}")]
    PropertyNotAllowed {
        property: PropertyId,
        context: PropertyContext,
    },
    #[error("§2.2.2.2 It is a Protocol Error to include {property} more than once ({context})")]
    DuplicateProperty {
        property: PropertyId,
        context: PropertyContext,
    },
    #[error("§2.2.2.2 invalid value {value} for property {property}")]
    InvalidPropertyValue { property: PropertyId, value: u32 },

    // ---- The server's own limits ----
    /// Well-formed, but past what the broker decodes (`USER_PROPERTIES_MAX`).
    #[error("more than {max} User Properties in {context}, the server's limit")]
    TooManyUserProperties {
        context: PropertyContext,
        max: usize,
    },
    /// Well-formed, but past what the broker decodes
    /// (`TOPIC_FILTERS_PER_PACKET_MAX`).
    #[error("more than {max} topic filters in {packet:?}, the server's limit")]
    TooManyTopicFilters { packet: PacketType, max: usize },
}

impl DecodeError {
    /// The MQTT 5.0 reason code to send in CONNACK (if the error is in
    /// CONNECT) or DISCONNECT (§4.13.1) before closing.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion { .. } => ReasonCode::UnsupportedProtocolVersion,
            EmptyClientIdWithoutCleanSession => ReasonCode::ClientIdentifierNotValid,
            TopicWildcard | EmptyTopic => ReasonCode::TopicNameInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            // "An implementation or administrative imposed limit has been
            // exceeded": valid in CONNACK and DISCONNECT (§3.2.2.2,
            // §3.14.2.1). Not 0x95, which the client would read as its
            // packet passing our Maximum Packet Size when it did not.
            TooManyUserProperties { .. } | TooManyTopicFilters { .. } => ReasonCode::QuotaExceeded,
            FirstPacketNotConnect(_)
            | ZeroPacketId(_)
            | SessionPresentOnRefusal
            | EmptySubscribe
            | SubscriptionQos3
            | RetainHandling3
            | EmptySubAck
            | EmptyUnsubscribe
            | EmptyUnsubAck
            | ReasonNotAllowed { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | AuthenticationDataWithoutMethod => ReasonCode::ProtocolError,
            ReservedPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | VarintTooLong
            | VarintNotMinimal
            | Truncated { .. }
            | TrailingBytes { .. }
            | AuthInV311
            | InvalidUtf8 { .. }
            | NullCharacter { .. }
            | InvalidProtocolName
            | ConnectReservedFlag
            | WillQosWithoutWill
            | WillQos3
            | WillRetainWithoutWill
            | PasswordWithoutUsername
            | ConnAckReservedFlags
            | ReservedV311ConnAckCode(_)
            | PublishQos3
            | DupWithQos0
            | SubscriptionOptionsReserved(_)
            | ReservedV311SubAckCode(_)
            | UnknownReasonCode { .. }
            | UnknownProperty(_)
            | PropertyNotAllowed { .. } => ReasonCode::MalformedPacket,
        }
    }

    /// For an error in a v3.1.1 CONNECT: the CONNACK return code the spec
    /// answers with before closing (§3.2.2.3). `None`: close without CONNACK
    /// (v3.1.1 has no code for malformed packets, [MQTT-4.8.0-1]).
    ///
    /// `UnsupportedProtocolVersion` yields 0x01 [MQTT-3.1.2-2] whatever the
    /// level; a caller that wants to answer a level above 5 in v5 format uses
    /// [`DecodeError::reason_code`] (0x84) instead.
    pub fn v311_connack(&self) -> Option<u8> {
        match self {
            DecodeError::UnsupportedProtocolVersion { .. } => {
                Some(ReasonCode::UnsupportedProtocolVersion.to_v311_connack())
            }
            DecodeError::EmptyClientIdWithoutCleanSession => {
                Some(ReasonCode::ClientIdentifierNotValid.to_v311_connack())
            }
            _ => None,
        }
    }
}

/// A packet the encoder refuses to write. Nothing is written to the buffer
/// when encoding fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The whole packet (fixed header included) is larger than the peer's
    /// Maximum Packet Size [MQTT-3.1.2-24] / [MQTT-3.2.2-15].
    #[error("[MQTT-3.1.2-24] packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: u32 },
    #[error("§1.5.5 remaining length {0} exceeds 268,435,455")]
    RemainingLengthTooLarge(usize),
    #[error("§2.1.2 {0:?} does not exist in MQTT 3.1.1")]
    V5Only(PacketType),
    #[error("§2.2.2.2 property {property} is not allowed in {context}")]
    PropertyNotAllowed {
        property: PropertyId,
        context: PropertyContext,
    },
    #[error("§2.2.2.2 invalid value {value} for property {property}")]
    InvalidPropertyValue { property: PropertyId, value: u32 },
    #[error("§2.4 reason code {reason:?} is not allowed in {packet:?}")]
    ReasonNotAllowed {
        packet: PacketType,
        reason: ReasonCode,
    },
    #[error("§1.5.4 {field} is {len} bytes, longer than 65,535")]
    StringTooLong { field: &'static str, len: usize },
    #[error("[MQTT-1.5.4-2] {field} contains U+0000")]
    NullCharacter { field: &'static str },
    #[error("§1.5.6 {field} is {len} bytes, longer than 65,535")]
    BinaryTooLong { field: &'static str, len: usize },
    #[error("[MQTT-3.3.2-2] topic name in PUBLISH contains a wildcard")]
    TopicWildcard,
    #[error("[MQTT-4.7.3-1] v3.1.1 PUBLISH topic name is empty")]
    EmptyTopic,
    #[error("[MQTT-2.2.1-2] PUBLISH has a packet identifier iff QoS > 0")]
    PacketIdMismatch,
    #[error("[MQTT-3.3.1-2] DUP is set on a QoS 0 PUBLISH")]
    DupWithQos0,
    #[error("[MQTT-3.1.2-22] v3.1.1 password without user name")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.1.3-8] v3.1.1 empty client identifier without Clean Session")]
    EmptyClientIdWithoutCleanSession,
    #[error("§3.1.2.11.10 CONNECT has Authentication Data but no Authentication Method")]
    AuthenticationDataWithoutMethod,
    #[error("[MQTT-3.2.2-6] Session Present set with a non-zero reason code")]
    SessionPresentOnRefusal,
    #[error(
        "{0:?} must carry at least one entry ([MQTT-3.8.3-3], [MQTT-3.10.3-2], [MQTT-3.8.4-6])"
    )]
    EmptyPayload(PacketType),
}
