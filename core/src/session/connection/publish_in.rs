//! PUBLISH from the client (MQTT 5.0 §3.3, §4.3): topic aliases, the
//! Receive Maximum it must stay under, authorization, and the QoS 1/2
//! acknowledgements sent once the broker has routed the message.

use super::*;

impl Connection {
    pub(super) fn handle_publish(&mut self, now: Instant, mut publish: Publish) {
        if !publish.properties.subscription_identifiers.is_empty() {
            return self.violate(Violation::SubscriptionIdentifierFromClient);
        }
        let topic = match self.resolve_topic(&mut publish) {
            Ok(t) => t,
            Err(violation) => return self.violate(violation),
        };
        if let Some(rt) = &publish.properties.response_topic {
            if TopicName::new(rt.clone()).is_err() {
                return self.violate(Violation::ResponseTopicInvalid);
            }
        }
        // v5 §3.3.2.3.2: the receiver may check a payload declared UTF-8.
        if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            return self.refuse_publish(&publish, ReasonCode::PayloadFormatInvalid);
        }
        let allowed = self.permissions.can_publish(&topic);
        let packet_id = publish.packet_id;
        match (publish.qos, packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(_)) => {
                if !self.incoming_room() {
                    return self.violate(Violation::ReceiveMaximumExceeded);
                }
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let Some(session) = self.session.as_ref() else {
                    return;
                };
                if session.incoming_qos2.contains(&id) {
                    // [MQTT-4.3.3-10] a duplicate of a PUBLISH not yet
                    // released: acknowledge again, do not route again.
                    return self.send(Packet::PubRec(PubResponse::new(id, ReasonCode::Success)));
                }
                if !self.incoming_room() {
                    return self.violate(Violation::ReceiveMaximumExceeded);
                }
            }
            // The codec guarantees a packet id iff QoS > 0; a caller that
            // builds packets itself is held to the same rule.
            (qos, None) => return self.violate(Violation::MissingPacketId(qos)),
        }
        if !allowed {
            // v5: the reason code says so; v3.1.1 has none, and the spec lets
            // the server acknowledge and drop [MQTT-3.3.5-2].
            self.events.push_back(Event::Denied(Denied::Publish(topic)));
            return self.refuse_publish(&publish, ReasonCode::NotAuthorized);
        }
        let origin = self
            .session
            .as_ref()
            .map(|s| s.client_id.clone())
            .unwrap_or_default();
        let qos = publish.qos;
        let message = Arc::new(Message::from_publish(
            now,
            topic,
            publish,
            self.limits.message_expiry_max,
            origin,
        ));
        let ack = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                self.incoming_qos1_pending += 1;
                Some(PublishAck { packet_id: id, qos })
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if let Some(s) = self.session.as_mut() {
                    s.incoming_qos2.insert(id);
                }
                Some(PublishAck { packet_id: id, qos })
            }
            _ => None,
        };
        self.events.push_back(Event::Publish { message, ack });
    }

    /// Acknowledges a publish that is not routed, with `reason` in v5.
    pub(super) fn refuse_publish(&mut self, publish: &Publish, reason: ReasonCode) {
        let reason = self.v311_success_or(reason);
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(PubResponse::new(id, reason))),
            (QoS::ExactlyOnce, Some(id)) => {
                // v3.1.1 success PUBREC must be followed by PUBREL/PUBCOMP.
                if !reason.is_error() {
                    if let Some(s) = self.session.as_mut() {
                        s.incoming_qos2.insert(id);
                    }
                }
                self.send(Packet::PubRec(PubResponse::new(id, reason)))
            }
            _ => {}
        }
    }

    /// Incoming QoS 1/2 publishes in progress stay within the Receive
    /// Maximum the broker announced [MQTT-3.3.4-7] (the client's rule; a
    /// client that breaks it gets 0x93). MQTT 3.1.1 has no Receive Maximum
    /// and nothing tells its clients one: they are held only to what their
    /// packet ids allow, as the protocol holds them (paho and Mosquitto's
    /// clients keep 20 in flight by default; a persisted PUBACK waits for
    /// the disk).
    pub(super) fn incoming_room(&self) -> bool {
        let qos2 = self.session.as_ref().map_or(0, |s| s.incoming_qos2.len());
        let in_progress = self.incoming_qos1_pending as usize + qos2;
        let max = match self.version {
            ProtocolVersion::V5 => self.limits.receive_maximum_max.get(),
            _ => u16::MAX,
        };
        in_progress < usize::from(max)
    }

    /// Applies and records topic aliases (v5 §3.3.2.3.4).
    pub(super) fn resolve_topic(&mut self, publish: &mut Publish) -> Result<TopicName, Violation> {
        // PERF: `get_mut`, not a field write: that would box an empty set
        // for every PUBLISH without properties.
        let alias = publish
            .properties
            .get_mut()
            .and_then(|p| p.topic_alias.take());
        if let Some(alias) = alias {
            // 0 never reaches here: the codec rejects it [MQTT-3.3.2-8].
            let max = self.limits.topic_alias_max;
            if alias == 0 || alias > max {
                return Err(Violation::TopicAliasAboveMaximum { alias, max });
            }
        }
        if publish.topic.is_empty() {
            // An empty topic needs a known alias (v5).
            let known = alias.and_then(|a| self.aliases_in.get(&a));
            return known.cloned().ok_or(Violation::UnknownTopicAlias);
        }
        let topic = TopicName::new(publish.topic.clone()).map_err(Violation::TopicNameInvalid)?;
        if let Some(alias) = alias {
            self.record_alias(alias, &topic)?;
        }
        Ok(topic)
    }

    /// Maps `alias` to `topic` for this connection (v5 §3.3.2.3.4), whether
    /// or not the PUBLISH is then allowed: the client's next alias-only
    /// PUBLISH relies on it. The alias keeps a copy: the topic is a slice
    /// of the PUBLISH's frame, which the alias would keep alive for the
    /// connection's life (megabytes of payload behind a short topic). The
    /// copies are bounded in bytes (`topic_alias_bytes_max`).
    fn record_alias(&mut self, alias: u16, topic: &TopicName) -> Result<(), Violation> {
        let replaced = match self.aliases_in.get(&alias) {
            // PERF: clients that send the topic with its alias every time
            // pay a compare, not a copy.
            Some(known) if known == topic => return Ok(()),
            Some(known) => known.as_str().len(),
            None => 0,
        };
        let max = self.limits.topic_alias_bytes_max.get();
        let bytes = self.aliases_in_bytes - replaced + topic.as_str().len();
        if bytes > max as usize {
            return Err(Violation::TopicAliasBytesExceeded { max });
        }
        self.aliases_in_bytes = bytes;
        self.aliases_in.insert(alias, topic.detached());
        Ok(())
    }

    /// The broker routed an incoming QoS 1/2 publish (`reason` Success,
    /// NoMatchingSubscribers, QuotaExceeded, NotAuthorized...).
    pub fn publish_done(&mut self, ack: PublishAck, reason: ReasonCode) {
        if self.phase != Phase::Connected {
            return;
        }
        let reason = self.v311_success_or(reason);
        match ack.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.incoming_qos1_pending = self.incoming_qos1_pending.saturating_sub(1);
                self.send(Packet::PubAck(PubResponse::new(ack.packet_id, reason)));
            }
            QoS::ExactlyOnce => {
                // A failed PUBREC ends the exchange (v5 §4.3.3): the id is free.
                if reason.is_error() {
                    if let Some(s) = self.session.as_mut() {
                        s.incoming_qos2.remove(&ack.packet_id);
                    }
                }
                self.send(Packet::PubRec(PubResponse::new(ack.packet_id, reason)));
            }
        }
    }

    pub(super) fn handle_pubrel(&mut self, packet_id: PacketId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let known = session.incoming_qos2.remove(&packet_id);
        // [MQTT-4.3.3-11] release the id and answer PUBCOMP; an unknown id
        // gets Packet Identifier Not Found in v5.
        let reason = if known || self.version == ProtocolVersion::V311 {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send(Packet::PubComp(PubResponse::new(packet_id, reason)));
    }
}
