//! The protocol violations the session detects (the codec's are
//! `DecodeError`): each names the rule it breaks and maps to the reason the
//! client is told (v5 DISCONNECT) in one exhaustive match. Packet-order
//! rules live here; the decoder only refuses what it cannot parse (anything
//! but CONNECT before the protocol version is known).

use crate::codec::{PacketType, QoS, ReasonCode};
use crate::topic::TopicError;

/// A client broke a rule of the protocol; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("[MQTT-3.1.0-1] the first packet is not CONNECT")]
    FirstPacketNotConnect,
    #[error("[MQTT-3.1.0-2] a second CONNECT on one connection")]
    SecondConnect,
    #[error("§2.1.2 {0:?} flows from server to client only")]
    ServerOnlyPacket(PacketType),
    #[error("[MQTT-4.12.0-7] AUTH without an Authentication Method in CONNECT")]
    AuthWithoutMethod,
    #[error("[MQTT-4.12.1-1] AUTH with another Authentication Method than CONNECT's")]
    AuthMethodChanged,
    #[error("§4.12 AUTH {0:?} with no authentication exchange the server started")]
    UnexpectedAuth(ReasonCode),
    #[error("[MQTT-3.3.2-14] the Response Topic is not a topic name")]
    ResponseTopicInvalid,
    #[error("[MQTT-3.3.2-9] Topic Alias {alias} is above the maximum {max}")]
    TopicAliasAboveMaximum { alias: u16, max: u16 },
    #[error("§3.3.2.3.4 an empty topic name with no Topic Alias the server knows")]
    UnknownTopicAlias,
    #[error("topic aliases would hold more than {max} bytes of topic names, the server's limit")]
    TopicAliasBytesExceeded { max: u32 },
    #[error("the topic name is not valid: {0}")]
    TopicNameInvalid(TopicError),
    #[error("[MQTT-3.3.4-6] a PUBLISH from a client carries a Subscription Identifier")]
    SubscriptionIdentifierFromClient,
    #[error("[MQTT-3.3.4-7] more QoS 1/2 publishes in progress than Receive Maximum")]
    ReceiveMaximumExceeded,
    #[error("[MQTT-2.2.1-2] a QoS {0:?} PUBLISH without a packet identifier")]
    MissingPacketId(QoS),
    #[error("a malformed topic filter: {0}")]
    TopicFilterMalformed(TopicError),
    #[error("[MQTT-3.8.3-4] No Local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// v5 §3.14.2.2.2 (a Protocol Error the spec gives no rule number):
    /// "If the Session Expiry Interval in the CONNECT packet was zero, then
    /// it is a Protocol Error to set a non-zero Session Expiry Interval in
    /// the DISCONNECT packet sent by the Client."
    #[error("§3.14.2.2.2 DISCONNECT sets a Session Expiry Interval the CONNECT set to 0")]
    SessionExpiryFromZero,
}

impl Violation {
    /// The reason the client is told (v5 DISCONNECT or CONNACK).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Violation::FirstPacketNotConnect
            | Violation::SecondConnect
            | Violation::ServerOnlyPacket(_)
            | Violation::AuthWithoutMethod
            | Violation::AuthMethodChanged
            | Violation::UnexpectedAuth(_)
            | Violation::ResponseTopicInvalid
            | Violation::UnknownTopicAlias
            | Violation::SubscriptionIdentifierFromClient
            | Violation::NoLocalOnSharedSubscription
            | Violation::SessionExpiryFromZero => ReasonCode::ProtocolError,
            // v5 §3.3.2.3.4: "... DISCONNECT with Reason Code 0x94".
            Violation::TopicAliasAboveMaximum { .. } => ReasonCode::TopicAliasInvalid,
            // A limit of the server's, not a rule the client broke: the
            // mapping cannot be refused without the client's next
            // alias-only PUBLISH meaning something else.
            Violation::TopicAliasBytesExceeded { .. } => ReasonCode::QuotaExceeded,
            Violation::TopicNameInvalid(e) => e.reason_code(),
            // v5 §3.3.4: "... DISCONNECT with Reason Code 0x93".
            Violation::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            // §4.7, §4.8.2: a filter the rules cannot parse makes the
            // SUBSCRIBE a Malformed Packet (§4.13); 0x8F Topic Filter
            // invalid is for a well-formed filter that is not allowed.
            Violation::MissingPacketId(_) | Violation::TopicFilterMalformed(_) => {
                ReasonCode::MalformedPacket
            }
        }
    }
}
