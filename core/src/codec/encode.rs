//! Encoding: a [`Packet`] into a `BytesMut`, in the shortest form the spec
//! allows for the given version. Every packet is first measured and
//! validated (`plan`), then written after one `reserve`, so a failed encode
//! writes nothing and a successful one allocates at most once. "Shortest
//! form" has one exception, DISCONNECT (see `plan_reason_tail`).
//!
//! MQTT 3.1.1 cannot carry properties or most reason codes: they are dropped
//! (PUB* reasons, DISCONNECT reason, v5-only subscription options), or mapped
//! (CONNACK via [`ReasonCode::to_v311_connack`], SUBACK via
//! [`ReasonCode::to_v311_suback`]). AUTH has no 3.1.1 form and is an error.

use bytes::{BufMut, BytesMut};

use crate::topic::TopicName;

use super::error::EncodeError;
use super::packet::*;
use super::properties::{Properties, PropertyContext, PropertyId};
use super::property_codec::{binary_len, properties_len, put_properties, string_len};
use super::reason::ReasonCode;
use super::wire::{put_binary, put_string, put_varint, varint_len, VARINT_MAX};

/// Sizes computed while validating, reused when writing.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    /// Remaining length.
    body: usize,
    /// Property block content of the packet (v5; 0 otherwise).
    props: usize,
    /// Will Properties block content (v5 CONNECT with a will).
    will_props: usize,
}

impl Plan {
    fn total(&self) -> usize {
        // `body` <= VARINT_MAX was checked in `plan`.
        1 + varint_len(self.body as u32) + self.body
    }
}

/// Total encoded size in bytes, fixed header included: what a peer's Maximum
/// Packet Size is compared with (v5 §3.1.2.11.4). Validates like `encode`.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    Ok(plan(packet, version)?.total())
}

/// Appends `packet` encoded for `version` to `buf`.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let plan = plan(packet, version)?;
    write(packet, version, &plan, buf);
    Ok(())
}

/// Like [`encode`], but refuses a packet larger than `max_packet_size` (the
/// peer's Maximum Packet Size) [MQTT-3.1.2-24]. Returns the bytes written.
pub fn encode_within(
    packet: &Packet,
    version: ProtocolVersion,
    max_packet_size: u32,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let plan = plan(packet, version)?;
    let size = plan.total();
    if size > max_packet_size as usize {
        return Err(EncodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    write(packet, version, &plan, buf);
    Ok(size)
}

/// The broker's hot path: appends one PUBLISH. One `reserve`, one copy of
/// the payload into `buf`, nothing else allocated.
pub fn encode_publish(
    publish: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let plan = plan_publish(publish, version)?;
    buf.reserve(plan.total());
    write_publish(publish, version, &plan, buf);
    Ok(())
}

/// A PUBLISH as the broker forwards it, borrowed from the queued message:
/// encoded without building a [`Publish`] (no `Properties` value, no topic
/// copy, no packet moved around). Byte for byte what [`encode`] writes for
/// the equivalent `Publish` (tests check it).
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// `None` (an empty topic) when `topic_alias` names a topic the client
    /// already knows (v5). A `TopicName` is valid by construction (non-empty,
    /// no wildcard, no U+0000, at most 65,535 bytes [MQTT-4.7.3-1..-3]), so
    /// it is not scanned again here.
    pub topic: Option<&'a TopicName>,
    pub packet_id: Option<PacketId>,
    /// The application message's properties forwarded unaltered
    /// [MQTT-3.3.2-4, -15, -16, -17, -20]: Payload Format Indicator, Content
    /// Type, Response Topic, Correlation Data, User Properties. Any other
    /// property in it is ignored: the broker sets those per delivery.
    pub properties: Option<&'a Properties>,
    /// Remaining lifetime [MQTT-3.3.2-6].
    pub message_expiry_interval: Option<u32>,
    /// Of the matching subscriptions [MQTT-3.3.4-3]; valid by construction.
    pub subscription_identifiers: &'a [SubscriptionId],
    pub topic_alias: Option<u16>,
    pub payload: &'a [u8],
}

/// The broker's delivery path: appends `f` and returns its size. A packet
/// larger than `max_packet_size` (the client's Maximum Packet Size) is
/// refused with nothing written [MQTT-3.1.2-24]. v3.1.1 drops properties.
pub fn encode_forward(
    f: &Forward<'_>,
    version: ProtocolVersion,
    max_packet_size: Option<u32>,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    let topic = f.topic.map_or("", TopicName::as_str);
    let topic_len = 2 + topic.len();
    let id_len = check_publish_header(v5, topic, f.qos, f.packet_id, f.dup)?;
    let props = if v5 { forward_properties_len(f)? } else { 0 };
    let props_block = if v5 { block(props) } else { 0 };
    let plan = finish(topic_len + id_len + props_block + f.payload.len(), props, 0)?;
    let size = plan.total();
    if let Some(max) = max_packet_size {
        if size > max as usize {
            return Err(EncodeError::PacketTooLarge { size, max });
        }
    }
    buf.reserve(size);
    put_publish_head(buf, &plan, (f.dup, f.qos, f.retain), topic, f.packet_id);
    if v5 {
        put_forward_properties(buf, f, props);
    }
    buf.put_slice(f.payload);
    Ok(size)
}

/// Size of `f`'s property block content; validates like `properties_len`
/// for the properties a forwarded PUBLISH carries.
fn forward_properties_len(f: &Forward<'_>) -> Result<usize, EncodeError> {
    let mut len = 0;
    if let Some(p) = f.properties {
        if let Some(v) = p.payload_format_indicator {
            if v > 1 {
                return Err(EncodeError::InvalidPropertyValue {
                    property: PropertyId::PayloadFormatIndicator,
                    value: u32::from(v),
                });
            }
            len += 2;
        }
    }
    if f.message_expiry_interval.is_some() {
        len += 5;
    }
    if let Some(p) = f.properties {
        if let Some(s) = &p.content_type {
            len += 1 + string_len(s, "Content Type")?;
        }
        if let Some(s) = &p.response_topic {
            len += 1 + string_len(s, "Response Topic")?;
        }
        if let Some(b) = &p.correlation_data {
            len += 1 + binary_len(b, "Correlation Data")?;
        }
    }
    for id in f.subscription_identifiers {
        len += 1 + varint_len(id.get());
    }
    if let Some(alias) = f.topic_alias {
        if alias == 0 {
            return Err(EncodeError::InvalidPropertyValue {
                property: PropertyId::TopicAlias,
                value: 0,
            });
        }
        len += 3;
    }
    if let Some(p) = f.properties {
        for (k, v) in &p.user_properties {
            len += 1 + string_len(k, "User Property name")? + string_len(v, "User Property value")?;
        }
    }
    Ok(len)
}

/// Writes Property Length `len` and `f`'s properties in `put_properties`'
/// order, so both paths produce the same bytes.
fn put_forward_properties(buf: &mut BytesMut, f: &Forward<'_>, len: usize) {
    put_varint(buf, len as u32);
    if len == 0 {
        return;
    }
    if let Some(v) = f.properties.and_then(|p| p.payload_format_indicator) {
        buf.put_u8(PropertyId::PayloadFormatIndicator.as_u8());
        buf.put_u8(v);
    }
    if let Some(v) = f.message_expiry_interval {
        buf.put_u8(PropertyId::MessageExpiryInterval.as_u8());
        buf.put_u32(v);
    }
    if let Some(p) = f.properties {
        if let Some(s) = &p.content_type {
            buf.put_u8(PropertyId::ContentType.as_u8());
            put_string(buf, s);
        }
        if let Some(s) = &p.response_topic {
            buf.put_u8(PropertyId::ResponseTopic.as_u8());
            put_string(buf, s);
        }
        if let Some(b) = &p.correlation_data {
            buf.put_u8(PropertyId::CorrelationData.as_u8());
            put_binary(buf, b);
        }
    }
    for id in f.subscription_identifiers {
        buf.put_u8(PropertyId::SubscriptionIdentifier.as_u8());
        put_varint(buf, id.get());
    }
    if let Some(alias) = f.topic_alias {
        buf.put_u8(PropertyId::TopicAlias.as_u8());
        buf.put_u16(alias);
    }
    if let Some(p) = f.properties {
        for (k, v) in &p.user_properties {
            buf.put_u8(PropertyId::UserProperty.as_u8());
            put_string(buf, k);
            put_string(buf, v);
        }
    }
}

fn finish(body: usize, props: usize, will_props: usize) -> Result<Plan, EncodeError> {
    if body > VARINT_MAX as usize {
        return Err(EncodeError::RemainingLengthTooLarge(body));
    }
    Ok(Plan {
        body,
        props,
        will_props,
    })
}

/// Size of a property block with its Property Length prefix.
fn block(props_len: usize) -> usize {
    // Lengths above VARINT_MAX make the whole body too large and are
    // rejected by `finish`; the prefix size only needs to be plausible.
    varint_len(props_len.min(VARINT_MAX as usize) as u32) + props_len
}

fn plan(packet: &Packet, version: ProtocolVersion) -> Result<Plan, EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    let props = |p: &Properties, ctx: PropertyContext| -> Result<usize, EncodeError> {
        if v5 {
            properties_len(p, ctx)
        } else {
            Ok(0)
        }
    };
    // Size of a property block in this version (0 bytes in 3.1.1).
    let opt_block = |len: usize| if v5 { block(len) } else { 0 };
    match packet {
        Packet::Connect(c) => plan_connect(c),
        Packet::ConnAck(c) => {
            let reason_ok = !v5 || c.reason.valid_in(PacketType::ConnAck);
            if !reason_ok {
                return Err(EncodeError::ReasonNotAllowed {
                    packet: PacketType::ConnAck,
                    reason: c.reason,
                });
            }
            let refused = if v5 {
                c.reason != ReasonCode::Success
            } else {
                c.reason.to_v311_connack() != 0
            };
            if c.session_present && refused {
                return Err(EncodeError::SessionPresentOnRefusal);
            }
            let p = props(&c.properties, PropertyContext::ConnAck)?;
            finish(2 + opt_block(p), p, 0)
        }
        Packet::Publish(p) => plan_publish(p, version),
        Packet::PubAck(r) => plan_pub_response(r, PacketType::PubAck, v5),
        Packet::PubRec(r) => plan_pub_response(r, PacketType::PubRec, v5),
        Packet::PubRel(r) => plan_pub_response(r, PacketType::PubRel, v5),
        Packet::PubComp(r) => plan_pub_response(r, PacketType::PubComp, v5),
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::EmptyPayload(PacketType::Subscribe));
            }
            let p = props(&s.properties, PropertyContext::Subscribe)?;
            let mut body = 2 + opt_block(p);
            for (f, _) in &s.filters {
                body += string_len(f, "topic filter")? + 1;
            }
            finish(body, p, 0)
        }
        Packet::SubAck(s) => {
            if s.reasons.is_empty() {
                return Err(EncodeError::EmptyPayload(PacketType::SubAck));
            }
            if v5 {
                check_reasons(&s.reasons, PacketType::SubAck)?;
            }
            let p = props(&s.properties, PropertyContext::SubAck)?;
            finish(2 + opt_block(p) + s.reasons.len(), p, 0)
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::EmptyPayload(PacketType::Unsubscribe));
            }
            let p = props(&u.properties, PropertyContext::Unsubscribe)?;
            let mut body = 2 + opt_block(p);
            for f in &u.filters {
                body += string_len(f, "topic filter")?;
            }
            finish(body, p, 0)
        }
        Packet::UnsubAck(u) => {
            if !v5 {
                return finish(2, 0, 0);
            }
            if u.reasons.is_empty() {
                return Err(EncodeError::EmptyPayload(PacketType::UnsubAck));
            }
            check_reasons(&u.reasons, PacketType::UnsubAck)?;
            let p = properties_len(&u.properties, PropertyContext::UnsubAck)?;
            finish(2 + block(p) + u.reasons.len(), p, 0)
        }
        Packet::PingReq | Packet::PingResp => finish(0, 0, 0),
        Packet::Disconnect(d) => {
            if !v5 {
                return finish(0, 0, 0);
            }
            plan_reason_tail(d.reason, &d.properties, PacketType::Disconnect, 0)
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::V5Only(PacketType::Auth));
            }
            plan_reason_tail(a.reason, &a.properties, PacketType::Auth, 0)
        }
    }
}

fn check_reasons(reasons: &[ReasonCode], packet: PacketType) -> Result<(), EncodeError> {
    match reasons.iter().find(|r| !r.valid_in(packet)) {
        Some(reason) => Err(EncodeError::ReasonNotAllowed {
            packet,
            reason: *reason,
        }),
        None => Ok(()),
    }
}

/// v5 "[reason [properties]]" tail after `fixed` bytes: nothing for Success
/// without properties (PUB* §3.4.2.1, DISCONNECT §3.14.2.1, AUTH §3.15.2.1),
/// the reason alone for PUB* without properties. DISCONNECT and AUTH always
/// follow a reason with a Property Length: AUTH has no one-byte form, and for
/// DISCONNECT the one-byte form, though allowed (§3.14.2.2.1), is rejected by
/// rumqttc 0.24 clients, so interop wins over one saved byte.
fn plan_reason_tail(
    reason: ReasonCode,
    properties: &Properties,
    packet: PacketType,
    fixed: usize,
) -> Result<Plan, EncodeError> {
    if !reason.valid_in(packet) {
        return Err(EncodeError::ReasonNotAllowed { packet, reason });
    }
    let ctx = match packet {
        PacketType::PubAck => PropertyContext::PubAck,
        PacketType::PubRec => PropertyContext::PubRec,
        PacketType::PubRel => PropertyContext::PubRel,
        PacketType::PubComp => PropertyContext::PubComp,
        PacketType::Auth => PropertyContext::Auth,
        _ => PropertyContext::Disconnect,
    };
    let p = properties_len(properties, ctx)?;
    let always_props = matches!(packet, PacketType::Auth | PacketType::Disconnect);
    let body = if p > 0 || (always_props && reason != ReasonCode::Success) {
        fixed + 1 + block(p)
    } else if reason != ReasonCode::Success {
        fixed + 1
    } else {
        fixed
    };
    finish(body, p, 0)
}

fn plan_pub_response(r: &PubResponse, packet: PacketType, v5: bool) -> Result<Plan, EncodeError> {
    if !v5 {
        return finish(2, 0, 0);
    }
    plan_reason_tail(r.reason, &r.properties, packet, 2)
}

fn plan_publish(p: &Publish, version: ProtocolVersion) -> Result<Plan, EncodeError> {
    let v5 = version == ProtocolVersion::V5;
    let topic_len = string_len(&p.topic, "topic name")?;
    if p.topic.as_bytes().iter().any(|b| *b == b'+' || *b == b'#') {
        return Err(EncodeError::TopicWildcard);
    }
    let id_len = check_publish_header(v5, &p.topic, p.qos, p.packet_id, p.dup)?;
    let (props, props_block) = if v5 {
        let len = properties_len(&p.properties, PropertyContext::Publish)?;
        (len, block(len))
    } else {
        (0, 0)
    };
    finish(topic_len + id_len + props_block + p.payload.len(), props, 0)
}

fn plan_connect(c: &Connect) -> Result<Plan, EncodeError> {
    let v5 = c.protocol_version == ProtocolVersion::V5;
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::PasswordWithoutUsername);
    }
    if !v5 && c.client_id.is_empty() && !c.clean_start {
        return Err(EncodeError::EmptyClientIdWithoutCleanSession);
    }
    if v5
        && c.properties.authentication_data.is_some()
        && c.properties.authentication_method.is_none()
    {
        return Err(EncodeError::AuthenticationDataWithoutMethod);
    }
    // Protocol name (2 + 4), level, flags, keep alive.
    let mut body = 6 + 1 + 1 + 2;
    let props = if v5 {
        properties_len(&c.properties, PropertyContext::Connect)?
    } else {
        0
    };
    if v5 {
        body += block(props);
    }
    body += string_len(&c.client_id, "client identifier")?;
    let mut will_props = 0;
    if let Some(w) = &c.will {
        if v5 {
            will_props = properties_len(&w.properties, PropertyContext::Will)?;
            body += block(will_props);
        }
        body += string_len(&w.topic, "will topic")?;
        body += binary_len(&w.payload, "will payload")?;
    }
    if let Some(u) = &c.username {
        body += string_len(u, "user name")?;
    }
    if let Some(p) = &c.password {
        body += binary_len(p, "password")?;
    }
    finish(body, props, will_props)
}

fn put_fixed_header(buf: &mut BytesMut, packet_type: PacketType, flags: u8, plan: &Plan) {
    buf.put_u8(((packet_type as u8) << 4) | flags);
    // `body` <= VARINT_MAX was checked in `finish`.
    put_varint(buf, plan.body as u32);
}

fn write(packet: &Packet, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
    let v5 = version == ProtocolVersion::V5;
    let start = buf.len();
    buf.reserve(plan.total());
    let packet_type = packet.packet_type();
    let flags = packet_type.fixed_header_flags().unwrap_or(0);
    match packet {
        Packet::Publish(p) => write_publish(p, version, plan, buf),
        Packet::Connect(c) => write_connect(c, plan, buf),
        _ => put_fixed_header(buf, packet_type, flags, plan),
    }
    match packet {
        Packet::Connect(_) | Packet::Publish(_) => {}
        Packet::ConnAck(c) => {
            buf.put_u8(u8::from(c.session_present));
            if v5 {
                buf.put_u8(c.reason.as_u8());
                put_properties(buf, &c.properties, plan.props);
            } else {
                buf.put_u8(c.reason.to_v311_connack());
            }
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            buf.put_u16(r.packet_id.get());
            if v5 {
                put_reason_tail(buf, r.reason, &r.properties, plan, 2);
            }
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id.get());
            if v5 {
                put_properties(buf, &s.properties, plan.props);
            }
            for (filter, o) in &s.filters {
                put_string(buf, filter);
                let mut byte = o.qos as u8;
                if v5 {
                    byte |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | (o.retain_handling as u8) << 4;
                }
                buf.put_u8(byte);
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.packet_id.get());
            if v5 {
                put_properties(buf, &s.properties, plan.props);
                for r in &s.reasons {
                    buf.put_u8(r.as_u8());
                }
            } else {
                for r in &s.reasons {
                    buf.put_u8(r.to_v311_suback());
                }
            }
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id.get());
            if v5 {
                put_properties(buf, &u.properties, plan.props);
            }
            for f in &u.filters {
                put_string(buf, f);
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.packet_id.get());
            if v5 {
                put_properties(buf, &u.properties, plan.props);
                for r in &u.reasons {
                    buf.put_u8(r.as_u8());
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                put_reason_tail(buf, d.reason, &d.properties, plan, 0);
            }
        }
        Packet::Auth(a) => put_reason_tail(buf, a.reason, &a.properties, plan, 0),
    }
    debug_assert_eq!(buf.len() - start, plan.total());
}

/// Writes what `plan_reason_tail` measured: the body length tells which form.
fn put_reason_tail(
    buf: &mut BytesMut,
    reason: ReasonCode,
    properties: &Properties,
    plan: &Plan,
    fixed: usize,
) {
    if plan.body > fixed {
        buf.put_u8(reason.as_u8());
    }
    if plan.body > fixed + 1 {
        put_properties(buf, properties, plan.props);
    }
}

/// The rules a PUBLISH's header obeys whoever builds it: a topic (or, in
/// v5, an alias), a packet id exactly for QoS 1/2 [MQTT-2.2.1-2], DUP only
/// with QoS 1/2 [MQTT-3.3.1-2]. Returns the packet id's length.
fn check_publish_header(
    v5: bool,
    topic: &str,
    qos: QoS,
    packet_id: Option<PacketId>,
    dup: bool,
) -> Result<usize, EncodeError> {
    if !v5 && topic.is_empty() {
        return Err(EncodeError::EmptyTopic);
    }
    if (qos == QoS::AtMostOnce) != packet_id.is_none() {
        return Err(EncodeError::PacketIdMismatch);
    }
    if dup && qos == QoS::AtMostOnce {
        return Err(EncodeError::DupWithQos0);
    }
    Ok(if packet_id.is_some() { 2 } else { 0 })
}

/// Fixed header (flags from DUP, QoS, RETAIN), topic and packet id.
fn put_publish_head(
    buf: &mut BytesMut,
    plan: &Plan,
    (dup, qos, retain): (bool, QoS, bool),
    topic: &str,
    packet_id: Option<PacketId>,
) {
    let flags = u8::from(dup) << 3 | (qos as u8) << 1 | u8::from(retain);
    put_fixed_header(buf, PacketType::Publish, flags, plan);
    put_string(buf, topic);
    if let Some(id) = packet_id {
        buf.put_u16(id.get());
    }
}

fn write_publish(p: &Publish, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
    put_publish_head(buf, plan, (p.dup, p.qos, p.retain), &p.topic, p.packet_id);
    if version == ProtocolVersion::V5 {
        put_properties(buf, &p.properties, plan.props);
    }
    buf.put_slice(&p.payload);
}

fn write_connect(c: &Connect, plan: &Plan, buf: &mut BytesMut) {
    let v5 = c.protocol_version == ProtocolVersion::V5;
    put_fixed_header(buf, PacketType::Connect, 0, plan);
    put_string(buf, "MQTT");
    buf.put_u8(c.protocol_version.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        put_properties(buf, &c.properties, plan.props);
    }
    put_string(buf, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            put_properties(buf, &w.properties, plan.will_props);
        }
        put_string(buf, &w.topic);
        put_binary(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_string(buf, u);
    }
    if let Some(p) = &c.password {
        put_binary(buf, p);
    }
}
