//! The application message as the broker holds and routes it: built once from
//! an incoming PUBLISH (or a will), then shared by every subscriber and every
//! shard through an `Arc`. Per-delivery fields (QoS, packet id, DUP, retain
//! flag, subscription ids, topic alias) live beside it, never in it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{Properties, Props, Publish, QoS};
use crate::topic::TopicName;

/// A routed application message. Immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    /// QoS the publisher used; a delivery uses min(this, granted QoS).
    pub qos: QoS,
    pub retain: bool,
    /// Only the properties forwarded to subscribers (v5 §3.3.2.3): payload
    /// format indicator, content type, response topic, correlation data and
    /// user properties. Expiry is carried as `expires_at` instead. Empty
    /// (no allocation) when there are none, the common telemetry case.
    pub properties: Props,
    /// When the message expires [MQTT-3.3.2-5]; `None` never expires.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local [MQTT-3.8.3-3]. Empty for
    /// messages the broker makes itself (self-test probes).
    pub origin: ByteString,
    /// A retained change's place in the cluster's last-writer-wins order
    /// (`cluster::clock`): stamped by the node that took the PUBLISH. 0 on
    /// a single node, for `$` topics, and for messages not retained.
    pub retain_stamp: u64,
}

/// Shared by every subscriber; cloning is one atomic increment.
pub type SharedMessage = Arc<Message>;

impl Message {
    /// Builds the routed message from an incoming PUBLISH whose topic alias
    /// has already been resolved into `topic`.
    pub fn from_publish(
        now: Instant,
        topic: TopicName,
        publish: Publish,
        message_expiry_max: Option<Duration>,
        origin: ByteString,
    ) -> Message {
        let Publish {
            qos,
            retain,
            properties,
            payload,
            ..
        } = publish;
        let expires_at = expiry(now, properties.message_expiry_interval, message_expiry_max);
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: forwardable(properties),
            expires_at,
            origin,
            retain_stamp: 0,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The Message Expiry Interval to send: what is left of it, rounded up
    /// so a message that has not expired never carries 0 [MQTT-3.3.2-6].
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }
}

/// Expiry instant from a Message Expiry Interval, capped by
/// `maxMessageExpirySeconds`. Messages without an interval do not expire
/// (the cap applies only to intervals a client asked for).
pub(crate) fn expiry(
    now: Instant,
    interval_secs: Option<u32>,
    max: Option<Duration>,
) -> Option<Instant> {
    now.checked_add(expiry_interval(interval_secs, max)?)
}

/// A Message Expiry Interval capped by `maxMessageExpirySeconds`, for a
/// message whose expiry starts later (a will, §3.1.3.2.4).
pub(crate) fn expiry_interval(
    interval_secs: Option<u32>,
    max: Option<Duration>,
) -> Option<Duration> {
    let asked = Duration::from_secs(u64::from(interval_secs?));
    Some(match max {
        Some(max) => asked.min(max),
        None => asked,
    })
}

/// The same properties with every string and binary copied, for a message
/// kept long after its packet (a will): as slices they keep the packet's
/// whole frame alive. Only the fields `forwardable` keeps.
pub(crate) fn detached(mut p: Props) -> Props {
    let Some(p_mut) = p.get_mut() else {
        return p;
    };
    let copy = |s: &mut ByteString| *s = ByteString::from(&**s);
    if let Some(s) = &mut p_mut.content_type {
        copy(s);
    }
    if let Some(s) = &mut p_mut.response_topic {
        copy(s);
    }
    if let Some(b) = &mut p_mut.correlation_data {
        *b = Bytes::copy_from_slice(b);
    }
    for (k, v) in &mut p_mut.user_properties {
        copy(k);
        copy(v);
    }
    p
}

/// Keeps only what v5 §3.3.2.3 says the server forwards unaltered.
pub(crate) fn forwardable(p: Props) -> Props {
    let Some(mut p) = p.into_box() else {
        return Props::default();
    };
    let any = p.payload_format_indicator.is_some()
        || p.content_type.is_some()
        || p.response_topic.is_some()
        || p.correlation_data.is_some()
        || !p.user_properties.is_empty();
    if !any {
        return Props::default();
    }
    // The publisher's box is reused: one allocation per message at most.
    *p = Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.take(),
        response_topic: p.response_topic.take(),
        correlation_data: p.correlation_data.take(),
        user_properties: std::mem::take(&mut p.user_properties),
        ..Properties::default()
    };
    Props::from_box(p)
}
