//! `$SYS`: the broker's own topics. The runtime builds the payloads (it has
//! the clock and every shard's figures) and shard 0 publishes them here as
//! retained QoS 0 messages through the normal routing path. Clients may
//! read them where their permissions allow, never write them: only the
//! broker speaks for the broker.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use super::Shard;
use crate::buffer::Store;
use crate::codec::QoS;
use crate::session::{Message, Permissions};
use crate::topic::{Filter, TopicName};

/// The prefix no client may publish under (`$SYS` and `$SYS/...`): the
/// broker's figures and its self-test probes live there, and a client that
/// could write them could forge either. MQTT 5.0 §4.7.2: "The Server SHOULD
/// prevent Clients from using such Topic Names to exchange messages with
/// other Clients."
pub const SYS_PREFIX: &str = "$SYS";

/// Whether `topic` is in the broker's own `$SYS` tree.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == SYS_PREFIX || topic.starts_with("$SYS/")
}

/// A client's permissions with `$SYS` publishing refused, whatever its
/// authorization policy grants (the refusal takes the policy's denial path:
/// 0x87, or in v3.1.1 a PUBACK and a drop [MQTT-3.3.5-2], and a log line).
#[derive(Debug)]
pub struct ReservedTopics<P>(pub P);

impl<P: Permissions> Permissions for ReservedTopics<P> {
    fn can_publish(&self, topic: &TopicName) -> bool {
        !is_sys_topic(topic.as_str()) && self.0.can_publish(topic)
    }

    fn can_subscribe(&self, filter: &Filter) -> bool {
        self.0.can_subscribe(filter)
    }
}

impl<S: Store> Shard<S> {
    /// Publishes one `$SYS` figure as a retained QoS 0 message (the
    /// runtime calls this on shard 0 every `diagnostics.sys` interval).
    /// A topic outside `$SYS` is ignored: this is no back door.
    pub fn publish_sys(&mut self, now: Instant, topic: &str, payload: String) {
        if !is_sys_topic(topic) {
            return;
        }
        let Ok(topic) = TopicName::new(ByteString::from(topic)) else {
            return;
        };
        let message = Arc::new(Message {
            topic,
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: ByteString::new(),
            retain_stamp: 0,
        });
        self.publish_message(now, message, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::AllowAll;

    #[test]
    fn no_client_may_publish_under_sys_whatever_its_policy_grants() {
        let p = ReservedTopics(AllowAll);
        let topic = |t: &str| TopicName::new(ByteString::from(t)).unwrap();
        assert!(!p.can_publish(&topic("$SYS/broker/uptime")));
        assert!(!p.can_publish(&topic("$SYS")));
        assert!(!p.can_publish(&topic("$SYS/shardmq/selftest/0")));
        assert!(p.can_publish(&topic("$SYSTEM/x")));
        assert!(p.can_publish(&topic("plant/line1")));
        let filter = Filter::parse(ByteString::from("$SYS/#")).unwrap();
        assert!(p.can_subscribe(&filter));
    }
}
