//! MQTT 5.0 properties (§2.2.2). One struct holds every property; which ones
//! may appear in which packet, and how often, is checked by the codec against
//! the table of §2.2.2.2 (`Properties::allowed_in`). Values borrow the frame's
//! buffer (`Bytes`/`ByteString`), so decoding copies nothing.

use bytes::Bytes;
use bytestring::ByteString;

/// Every MQTT 5.0 property. `None` / empty means absent. The spec's default
/// values (e.g. Receive Maximum 65535) are applied by the session, not here,
/// so that a round trip preserves exactly what was on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01 Payload Format Indicator (0 = bytes, 1 = UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteString>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteString>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier (1..=268,435,455). Several may appear in a
    /// server-to-client PUBLISH; at most one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteString>,
    /// 0x13 Server Keep Alive, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteString>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (0 or 1).
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information (0 or 1).
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information.
    pub response_information: Option<ByteString>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteString>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// 0x21 Receive Maximum (non-zero).
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (non-zero).
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1).
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available (0 or 1).
    pub retain_available: Option<u8>,
    /// 0x26 User Property; order is preserved and repeats are allowed.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// 0x27 Maximum Packet Size (non-zero).
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (0 or 1).
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available (0 or 1).
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available (0 or 1).
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// No property at all (what `Default` gives), usable in a `static`.
    pub const EMPTY: Properties = Properties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };

    pub fn is_empty(&self) -> bool {
        self.present_bits() == 0
    }

    /// Bytes this set keeps alive once boxed and kept (a queued or
    /// retained message's properties): the box, its vectors' entries, and
    /// its strings and binaries, which are slices of the frame they came
    /// in. A walk of the user properties: call it where a message is
    /// counted, not per byte sent.
    pub fn held_bytes(&self) -> usize {
        let string = |v: &Option<ByteString>| v.as_ref().map_or(0, |v| v.len());
        let binary = |v: &Option<Bytes>| v.as_ref().map_or(0, Bytes::len);
        let user: usize = self
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        std::mem::size_of::<Properties>()
            + self.user_properties.len() * std::mem::size_of::<(ByteString, ByteString)>()
            + self.subscription_identifiers.len() * std::mem::size_of::<u32>()
            + user
            + string(&self.content_type)
            + string(&self.response_topic)
            + binary(&self.correlation_data)
            + string(&self.assigned_client_identifier)
            + string(&self.authentication_method)
            + binary(&self.authentication_data)
            + string(&self.response_information)
            + string(&self.server_reference)
            + string(&self.reason_string)
    }
}

/// Where a property set appears: a packet type, or the Will Properties of a
/// CONNECT payload (§3.1.3.2), which have their own allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// Bit `id` set for every property identifier allowed here (§2.2.2.2).
    const fn allowed_mask(self) -> u64 {
        let mut mask = 0;
        let mut i = 0;
        while i < PropertyId::ALL.len() {
            let id = PropertyId::ALL[i];
            if id.contexts() & self.bit() != 0 {
                mask |= 1 << id as u8;
            }
            i += 1;
        }
        mask
    }
}

impl std::fmt::Display for PropertyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::Will => "Will Properties",
            PropertyContext::PubAck => "PUBACK",
            PropertyContext::PubRec => "PUBREC",
            PropertyContext::PubRel => "PUBREL",
            PropertyContext::PubComp => "PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        };
        f.write_str(name)
    }
}

/// Property identifiers of MQTT 5.0 §2.2.2.2. Values are the wire bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQos = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    /// Every identifier, in wire order (the order the encoder writes them).
    pub const ALL: [PropertyId; 27] = {
        use PropertyId::*;
        [
            PayloadFormatIndicator,
            MessageExpiryInterval,
            ContentType,
            ResponseTopic,
            CorrelationData,
            SubscriptionIdentifier,
            SessionExpiryInterval,
            AssignedClientIdentifier,
            ServerKeepAlive,
            AuthenticationMethod,
            AuthenticationData,
            RequestProblemInformation,
            WillDelayInterval,
            RequestResponseInformation,
            ResponseInformation,
            ServerReference,
            ReasonString,
            ReceiveMaximum,
            TopicAliasMaximum,
            TopicAlias,
            MaximumQos,
            RetainAvailable,
            UserProperty,
            MaximumPacketSize,
            WildcardSubscriptionAvailable,
            SubscriptionIdentifierAvailable,
            SharedSubscriptionAvailable,
        ]
    };

    pub fn from_u32(v: u32) -> Option<PropertyId> {
        let v = u8::try_from(v).ok()?;
        PropertyId::ALL.into_iter().find(|id| *id as u8 == v)
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The "Used in" column of the table in §2.2.2.2.
    const fn contexts(self) -> u16 {
        use PropertyContext as C;
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData => C::Publish.bit() | C::Will.bit(),
            SubscriptionIdentifier => C::Publish.bit() | C::Subscribe.bit(),
            SessionExpiryInterval => C::Connect.bit() | C::ConnAck.bit() | C::Disconnect.bit(),
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQos
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => C::ConnAck.bit(),
            AuthenticationMethod | AuthenticationData => {
                C::Connect.bit() | C::ConnAck.bit() | C::Auth.bit()
            }
            RequestProblemInformation | RequestResponseInformation => C::Connect.bit(),
            WillDelayInterval => C::Will.bit(),
            ServerReference => C::ConnAck.bit() | C::Disconnect.bit(),
            ReasonString => {
                C::ConnAck.bit()
                    | C::PubAck.bit()
                    | C::PubRec.bit()
                    | C::PubRel.bit()
                    | C::PubComp.bit()
                    | C::SubAck.bit()
                    | C::UnsubAck.bit()
                    | C::Disconnect.bit()
                    | C::Auth.bit()
            }
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => {
                C::Connect.bit() | C::ConnAck.bit()
            }
            TopicAlias => C::Publish.bit(),
            // User Property is allowed in every property set.
            UserProperty => u16::MAX,
        }
    }

    /// Whether this property may appear in `ctx` (§2.2.2.2). Including one
    /// that may not is a Malformed Packet.
    pub fn allowed_in(self, ctx: PropertyContext) -> bool {
        self.contexts() & ctx.bit() != 0
    }

    /// Whether this property may appear more than once in `ctx`: User
    /// Property anywhere, Subscription Identifier only in PUBLISH (§3.3.2.3.8,
    /// §3.8.2.1.2). Any other repeat is a Protocol Error.
    pub fn may_repeat_in(self, ctx: PropertyContext) -> bool {
        match self {
            PropertyId::UserProperty => true,
            PropertyId::SubscriptionIdentifier => ctx == PropertyContext::Publish,
            _ => false,
        }
    }
}

impl std::fmt::Display for PropertyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?} (0x{:02X})", self.as_u8())
    }
}

/// Largest Subscription Identifier, the largest Variable Byte Integer (§2.2.2.2).
pub const SUBSCRIPTION_IDENTIFIER_MAX: u32 = 268_435_455;

/// User Properties the decoder accepts in one property set (a CONNECT's
/// Will Properties are a set of their own). The spec sets no number
/// (§3.3.2.3.7), but a pair is 5 bytes on the wire and 64 decoded: 60 MiB
/// of empty pairs decoded to 12.5 million entries, about 800 MB. Real
/// clients send a handful; this leaves them hundreds of times that, and
/// bounds a decoded set to 256 KiB of entries (their strings stay slices
/// of the frame).
pub const USER_PROPERTIES_MAX: usize = 4096;

impl Properties {
    /// The identifiers of the properties present, in wire order (a repeated
    /// property is listed once).
    pub fn present(&self) -> impl Iterator<Item = PropertyId> + '_ {
        let bits = self.present_bits();
        PropertyId::ALL
            .into_iter()
            .filter(move |id| bits & (1 << *id as u8) != 0)
    }

    /// Bit `id` set for every property present.
    // PERF: one pass of cheap tests; the encoder's hot path (PUBLISH) checks
    // the allowed set with one AND instead of a walk over every property.
    fn present_bits(&self) -> u64 {
        use PropertyId::*;
        let bit = |present: bool, id: PropertyId| u64::from(present) << id as u8;
        bit(
            self.payload_format_indicator.is_some(),
            PayloadFormatIndicator,
        ) | bit(
            self.message_expiry_interval.is_some(),
            MessageExpiryInterval,
        ) | bit(self.content_type.is_some(), ContentType)
            | bit(self.response_topic.is_some(), ResponseTopic)
            | bit(self.correlation_data.is_some(), CorrelationData)
            | bit(
                !self.subscription_identifiers.is_empty(),
                SubscriptionIdentifier,
            )
            | bit(
                self.session_expiry_interval.is_some(),
                SessionExpiryInterval,
            )
            | bit(
                self.assigned_client_identifier.is_some(),
                AssignedClientIdentifier,
            )
            | bit(self.server_keep_alive.is_some(), ServerKeepAlive)
            | bit(self.authentication_method.is_some(), AuthenticationMethod)
            | bit(self.authentication_data.is_some(), AuthenticationData)
            | bit(
                self.request_problem_information.is_some(),
                RequestProblemInformation,
            )
            | bit(self.will_delay_interval.is_some(), WillDelayInterval)
            | bit(
                self.request_response_information.is_some(),
                RequestResponseInformation,
            )
            | bit(self.response_information.is_some(), ResponseInformation)
            | bit(self.server_reference.is_some(), ServerReference)
            | bit(self.reason_string.is_some(), ReasonString)
            | bit(self.receive_maximum.is_some(), ReceiveMaximum)
            | bit(self.topic_alias_maximum.is_some(), TopicAliasMaximum)
            | bit(self.topic_alias.is_some(), TopicAlias)
            | bit(self.maximum_qos.is_some(), MaximumQos)
            | bit(self.retain_available.is_some(), RetainAvailable)
            | bit(!self.user_properties.is_empty(), UserProperty)
            | bit(self.maximum_packet_size.is_some(), MaximumPacketSize)
            | bit(
                self.wildcard_subscription_available.is_some(),
                WildcardSubscriptionAvailable,
            )
            | bit(
                self.subscription_identifier_available.is_some(),
                SubscriptionIdentifierAvailable,
            )
            | bit(
                self.shared_subscription_available.is_some(),
                SharedSubscriptionAvailable,
            )
    }

    /// The first property present that is not allowed in `ctx` (§2.2.2.2).
    pub fn first_not_allowed_in(&self, ctx: PropertyContext) -> Option<PropertyId> {
        const MASKS: [u64; 14] = {
            use PropertyContext::*;
            let all = [
                Connect,
                ConnAck,
                Publish,
                Will,
                PubAck,
                PubRec,
                PubRel,
                PubComp,
                Subscribe,
                SubAck,
                Unsubscribe,
                UnsubAck,
                Disconnect,
                Auth,
            ];
            let mut masks = [0; 14];
            let mut i = 0;
            while i < all.len() {
                masks[all[i] as usize] = all[i].allowed_mask();
                i += 1;
            }
            masks
        };
        let bad = self.present_bits() & !MASKS[ctx as usize];
        if bad == 0 {
            return None;
        }
        PropertyId::from_u32(bad.trailing_zeros())
    }

    /// Whether property `id` is present.
    pub fn has(&self, id: PropertyId) -> bool {
        use PropertyId::*;
        match id {
            PayloadFormatIndicator => self.payload_format_indicator.is_some(),
            MessageExpiryInterval => self.message_expiry_interval.is_some(),
            ContentType => self.content_type.is_some(),
            ResponseTopic => self.response_topic.is_some(),
            CorrelationData => self.correlation_data.is_some(),
            SubscriptionIdentifier => !self.subscription_identifiers.is_empty(),
            SessionExpiryInterval => self.session_expiry_interval.is_some(),
            AssignedClientIdentifier => self.assigned_client_identifier.is_some(),
            ServerKeepAlive => self.server_keep_alive.is_some(),
            AuthenticationMethod => self.authentication_method.is_some(),
            AuthenticationData => self.authentication_data.is_some(),
            RequestProblemInformation => self.request_problem_information.is_some(),
            WillDelayInterval => self.will_delay_interval.is_some(),
            RequestResponseInformation => self.request_response_information.is_some(),
            ResponseInformation => self.response_information.is_some(),
            ServerReference => self.server_reference.is_some(),
            ReasonString => self.reason_string.is_some(),
            ReceiveMaximum => self.receive_maximum.is_some(),
            TopicAliasMaximum => self.topic_alias_maximum.is_some(),
            TopicAlias => self.topic_alias.is_some(),
            MaximumQos => self.maximum_qos.is_some(),
            RetainAvailable => self.retain_available.is_some(),
            UserProperty => !self.user_properties.is_empty(),
            MaximumPacketSize => self.maximum_packet_size.is_some(),
            WildcardSubscriptionAvailable => self.wildcard_subscription_available.is_some(),
            SubscriptionIdentifierAvailable => self.subscription_identifier_available.is_some(),
            SharedSubscriptionAvailable => self.shared_subscription_available.is_some(),
        }
    }

    /// Checks the property set against §2.2.2.2 for `ctx`: every property
    /// present must be allowed there, and only repeatable ones may repeat.
    /// Returns the first offending property.
    pub fn allowed_in(&self, ctx: PropertyContext) -> Result<(), PropertyId> {
        if let Some(id) = self.first_not_allowed_in(ctx) {
            return Err(id);
        }
        if self.subscription_identifiers.len() > 1
            && !PropertyId::SubscriptionIdentifier.may_repeat_in(ctx)
        {
            return Err(PropertyId::SubscriptionIdentifier);
        }
        Ok(())
    }

    /// The first value outside the range the spec allows, as `(property,
    /// value)`: byte flags above 1, Receive Maximum / Maximum Packet Size /
    /// Topic Alias / Subscription Identifier of 0, a Subscription Identifier
    /// above [`SUBSCRIPTION_IDENTIFIER_MAX`] (§3.1.2.11, §3.2.2.3, §3.3.2.3).
    pub fn invalid_value(&self) -> Option<(PropertyId, u32)> {
        use PropertyId::*;
        const RANGED: [PropertyId; 12] = [
            PayloadFormatIndicator,
            RequestProblemInformation,
            RequestResponseInformation,
            MaximumQos,
            RetainAvailable,
            WildcardSubscriptionAvailable,
            SubscriptionIdentifierAvailable,
            SharedSubscriptionAvailable,
            ReceiveMaximum,
            TopicAlias,
            MaximumPacketSize,
            SubscriptionIdentifier,
        ];
        const RANGED_MASK: u64 = {
            let mut m = 0;
            let mut i = 0;
            while i < RANGED.len() {
                m |= 1 << RANGED[i] as u8;
                i += 1;
            }
            m
        };
        // PERF: most property sets (message expiry, user properties, reason
        // strings) have no value with a range rule.
        if self.present_bits() & RANGED_MASK == 0 {
            return None;
        }
        let flags = [
            (PayloadFormatIndicator, self.payload_format_indicator),
            (RequestProblemInformation, self.request_problem_information),
            (
                RequestResponseInformation,
                self.request_response_information,
            ),
            (MaximumQos, self.maximum_qos),
            (RetainAvailable, self.retain_available),
            (
                WildcardSubscriptionAvailable,
                self.wildcard_subscription_available,
            ),
            (
                SubscriptionIdentifierAvailable,
                self.subscription_identifier_available,
            ),
            (
                SharedSubscriptionAvailable,
                self.shared_subscription_available,
            ),
        ];
        for (id, v) in flags {
            if let Some(v) = v.filter(|v| *v > 1) {
                return Some((id, u32::from(v)));
            }
        }
        let non_zero = [
            (ReceiveMaximum, self.receive_maximum.map(u32::from)),
            (TopicAlias, self.topic_alias.map(u32::from)),
            (MaximumPacketSize, self.maximum_packet_size),
        ];
        for (id, v) in non_zero {
            if v == Some(0) {
                return Some((id, 0));
            }
        }
        self.subscription_identifiers
            .iter()
            .find(|v| **v == 0 || **v > SUBSCRIPTION_IDENTIFIER_MAX)
            .map(|v| (SubscriptionIdentifier, *v))
    }
}
