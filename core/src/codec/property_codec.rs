//! Reading and writing the MQTT 5.0 property block (§2.2.2): Property Length
//! then (identifier, value) pairs. Reading enforces the table of §2.2.2.2
//! (allowed set per packet, repeats, value ranges); writing refuses the same
//! things, so whatever the encoder writes the decoder accepts. Properties are
//! written in identifier order, user properties in their own order.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::properties::{Properties, PropertyContext, PropertyId, USER_PROPERTIES_MAX};
use super::props::Props;
use super::wire::{put_binary, put_string, put_varint, varint_len, Reader};

/// Reads Property Length and the properties it covers. The block must fit in
/// the packet (a longer length is malformed, `Truncated`).
pub(crate) fn read_properties(
    r: &mut Reader<'_>,
    ctx: PropertyContext,
) -> Result<Props, DecodeError> {
    let len = r.varint("property length")?;
    let mut p = r.sub(len as usize, "properties")?;
    // PERF: the common case (most PUBLISH and every PUBACK from telemetry
    // clients): nothing to build or box.
    if p.is_empty() {
        return Ok(Props::default());
    }
    let mut props = Properties::default();
    while !p.is_empty() {
        // The identifier is a Variable Byte Integer (§2.2.2.2), though every
        // defined one fits in a byte.
        let raw = p.varint("property identifier")?;
        let id = PropertyId::from_u32(raw).ok_or(DecodeError::UnknownProperty(raw))?;
        if !id.allowed_in(ctx) {
            // "A Control Packet which contains an Identifier which is not
            // valid for its packet type ... is a Malformed Packet."
            return Err(DecodeError::PropertyNotAllowed {
                property: id,
                context: ctx,
            });
        }
        if !id.may_repeat_in(ctx) && props.has(id) {
            return Err(DecodeError::DuplicateProperty {
                property: id,
                context: ctx,
            });
        }
        // Refused before the entry is decoded, so a hostile set never
        // costs more than the bound (see USER_PROPERTIES_MAX).
        if id == PropertyId::UserProperty && props.user_properties.len() >= USER_PROPERTIES_MAX {
            return Err(DecodeError::TooManyUserProperties {
                context: ctx,
                max: USER_PROPERTIES_MAX,
            });
        }
        read_value(&mut p, id, &mut props)?;
    }
    if let Some((property, value)) = props.invalid_value() {
        return Err(match property {
            PropertyId::TopicAlias => DecodeError::TopicAliasZero,
            _ => DecodeError::InvalidPropertyValue { property, value },
        });
    }
    Ok(props.into())
}

fn read_value(
    p: &mut Reader<'_>,
    id: PropertyId,
    props: &mut Properties,
) -> Result<(), DecodeError> {
    use PropertyId::*;
    const F: &str = "property value";
    match id {
        PayloadFormatIndicator => props.payload_format_indicator = Some(p.u8(F)?),
        MessageExpiryInterval => props.message_expiry_interval = Some(p.u32(F)?),
        ContentType => props.content_type = Some(p.string("Content Type")?),
        ResponseTopic => props.response_topic = Some(p.string("Response Topic")?),
        CorrelationData => props.correlation_data = Some(p.binary(F)?),
        SubscriptionIdentifier => props.subscription_identifiers.push(p.varint(F)?),
        SessionExpiryInterval => props.session_expiry_interval = Some(p.u32(F)?),
        AssignedClientIdentifier => {
            props.assigned_client_identifier = Some(p.string("Assigned Client Identifier")?)
        }
        ServerKeepAlive => props.server_keep_alive = Some(p.u16(F)?),
        AuthenticationMethod => {
            props.authentication_method = Some(p.string("Authentication Method")?)
        }
        AuthenticationData => props.authentication_data = Some(p.binary(F)?),
        RequestProblemInformation => props.request_problem_information = Some(p.u8(F)?),
        WillDelayInterval => props.will_delay_interval = Some(p.u32(F)?),
        RequestResponseInformation => props.request_response_information = Some(p.u8(F)?),
        ResponseInformation => props.response_information = Some(p.string("Response Information")?),
        ServerReference => props.server_reference = Some(p.string("Server Reference")?),
        ReasonString => props.reason_string = Some(p.string("Reason String")?),
        ReceiveMaximum => props.receive_maximum = Some(p.u16(F)?),
        TopicAliasMaximum => props.topic_alias_maximum = Some(p.u16(F)?),
        TopicAlias => props.topic_alias = Some(p.u16(F)?),
        MaximumQos => props.maximum_qos = Some(p.u8(F)?),
        RetainAvailable => props.retain_available = Some(p.u8(F)?),
        UserProperty => {
            let k = p.string("User Property name")?;
            let v = p.string("User Property value")?;
            props.user_properties.push((k, v));
        }
        MaximumPacketSize => props.maximum_packet_size = Some(p.u32(F)?),
        WildcardSubscriptionAvailable => props.wildcard_subscription_available = Some(p.u8(F)?),
        SubscriptionIdentifierAvailable => props.subscription_identifier_available = Some(p.u8(F)?),
        SharedSubscriptionAvailable => props.shared_subscription_available = Some(p.u8(F)?),
    }
    Ok(())
}

/// Validates a string for writing: at most 65,535 bytes, no U+0000
/// [MQTT-1.5.4-2]. Returns its encoded size (length prefix included).
pub(crate) fn string_len(s: &str, field: &'static str) -> Result<usize, EncodeError> {
    if s.len() > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong {
            field,
            len: s.len(),
        });
    }
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::NullCharacter { field });
    }
    Ok(2 + s.len())
}

pub(crate) fn binary_len(b: &[u8], field: &'static str) -> Result<usize, EncodeError> {
    if b.len() > usize::from(u16::MAX) {
        return Err(EncodeError::BinaryTooLong {
            field,
            len: b.len(),
        });
    }
    Ok(2 + b.len())
}

/// Validates `props` for `ctx` and returns the size of the property block
/// content (without the Property Length prefix).
pub(crate) fn properties_len(
    props: &Properties,
    ctx: PropertyContext,
) -> Result<usize, EncodeError> {
    // PERF: the common case on the hot path (PUBLISH, PUBACK) is no
    // properties at all.
    if props.is_empty() {
        return Ok(0);
    }
    if let Some(property) = props.first_not_allowed_in(ctx) {
        return Err(EncodeError::PropertyNotAllowed {
            property,
            context: ctx,
        });
    }
    if props.subscription_identifiers.len() > 1
        && !PropertyId::SubscriptionIdentifier.may_repeat_in(ctx)
    {
        return Err(EncodeError::PropertyNotAllowed {
            property: PropertyId::SubscriptionIdentifier,
            context: ctx,
        });
    }
    if let Some((property, value)) = props.invalid_value() {
        return Err(EncodeError::InvalidPropertyValue { property, value });
    }
    let mut len = 0;
    let byte = |v: Option<u8>| v.map_or(0, |_| 2);
    let two = |v: Option<u16>| v.map_or(0, |_| 3);
    let four = |v: Option<u32>| v.map_or(0, |_| 5);
    len += byte(props.payload_format_indicator);
    len += four(props.message_expiry_interval);
    len += opt_string(&props.content_type, "Content Type")?;
    len += opt_string(&props.response_topic, "Response Topic")?;
    if let Some(b) = &props.correlation_data {
        len += 1 + binary_len(b, "Correlation Data")?;
    }
    for id in &props.subscription_identifiers {
        len += 1 + varint_len(*id);
    }
    len += four(props.session_expiry_interval);
    len += opt_string(
        &props.assigned_client_identifier,
        "Assigned Client Identifier",
    )?;
    len += two(props.server_keep_alive);
    len += opt_string(&props.authentication_method, "Authentication Method")?;
    if let Some(b) = &props.authentication_data {
        len += 1 + binary_len(b, "Authentication Data")?;
    }
    len += byte(props.request_problem_information);
    len += four(props.will_delay_interval);
    len += byte(props.request_response_information);
    len += opt_string(&props.response_information, "Response Information")?;
    len += opt_string(&props.server_reference, "Server Reference")?;
    len += opt_string(&props.reason_string, "Reason String")?;
    len += two(props.receive_maximum);
    len += two(props.topic_alias_maximum);
    len += two(props.topic_alias);
    len += byte(props.maximum_qos);
    len += byte(props.retain_available);
    for (k, v) in &props.user_properties {
        len += 1 + string_len(k, "User Property name")? + string_len(v, "User Property value")?;
    }
    len += four(props.maximum_packet_size);
    len += byte(props.wildcard_subscription_available);
    len += byte(props.subscription_identifier_available);
    len += byte(props.shared_subscription_available);
    Ok(len)
}

fn opt_string(
    s: &Option<bytestring::ByteString>,
    field: &'static str,
) -> Result<usize, EncodeError> {
    s.as_ref().map_or(Ok(0), |s| Ok(1 + string_len(s, field)?))
}

/// Writes Property Length `len` (from [`properties_len`]) and the properties.
pub(crate) fn put_properties(buf: &mut BytesMut, props: &Properties, len: usize) {
    // `len` was bounded by the remaining length check in `encode.rs`.
    put_varint(buf, len as u32);
    if len == 0 {
        return;
    }
    use PropertyId::*;
    let byte = |buf: &mut BytesMut, id: PropertyId, v: Option<u8>| {
        if let Some(v) = v {
            buf.put_u8(id.as_u8());
            buf.put_u8(v);
        }
    };
    let two = |buf: &mut BytesMut, id: PropertyId, v: Option<u16>| {
        if let Some(v) = v {
            buf.put_u8(id.as_u8());
            buf.put_u16(v);
        }
    };
    let four = |buf: &mut BytesMut, id: PropertyId, v: Option<u32>| {
        if let Some(v) = v {
            buf.put_u8(id.as_u8());
            buf.put_u32(v);
        }
    };
    let string = |buf: &mut BytesMut, id: PropertyId, v: &Option<bytestring::ByteString>| {
        if let Some(v) = v {
            buf.put_u8(id.as_u8());
            put_string(buf, v);
        }
    };
    let binary = |buf: &mut BytesMut, id: PropertyId, v: &Option<bytes::Bytes>| {
        if let Some(v) = v {
            buf.put_u8(id.as_u8());
            put_binary(buf, v);
        }
    };
    byte(buf, PayloadFormatIndicator, props.payload_format_indicator);
    four(buf, MessageExpiryInterval, props.message_expiry_interval);
    string(buf, ContentType, &props.content_type);
    string(buf, ResponseTopic, &props.response_topic);
    binary(buf, CorrelationData, &props.correlation_data);
    for id in &props.subscription_identifiers {
        buf.put_u8(SubscriptionIdentifier.as_u8());
        put_varint(buf, *id);
    }
    four(buf, SessionExpiryInterval, props.session_expiry_interval);
    string(
        buf,
        AssignedClientIdentifier,
        &props.assigned_client_identifier,
    );
    two(buf, ServerKeepAlive, props.server_keep_alive);
    string(buf, AuthenticationMethod, &props.authentication_method);
    binary(buf, AuthenticationData, &props.authentication_data);
    byte(
        buf,
        RequestProblemInformation,
        props.request_problem_information,
    );
    four(buf, WillDelayInterval, props.will_delay_interval);
    byte(
        buf,
        RequestResponseInformation,
        props.request_response_information,
    );
    string(buf, ResponseInformation, &props.response_information);
    string(buf, ServerReference, &props.server_reference);
    string(buf, ReasonString, &props.reason_string);
    two(buf, ReceiveMaximum, props.receive_maximum);
    two(buf, TopicAliasMaximum, props.topic_alias_maximum);
    two(buf, TopicAlias, props.topic_alias);
    byte(buf, MaximumQos, props.maximum_qos);
    byte(buf, RetainAvailable, props.retain_available);
    for (k, v) in &props.user_properties {
        buf.put_u8(UserProperty.as_u8());
        put_string(buf, k);
        put_string(buf, v);
    }
    four(buf, MaximumPacketSize, props.maximum_packet_size);
    byte(
        buf,
        WildcardSubscriptionAvailable,
        props.wildcard_subscription_available,
    );
    byte(
        buf,
        SubscriptionIdentifierAvailable,
        props.subscription_identifier_available,
    );
    byte(
        buf,
        SharedSubscriptionAvailable,
        props.shared_subscription_available,
    );
}
