//! SUBSCRIBE and UNSUBSCRIBE (MQTT 5.0 §3.8-§3.11, §4.8): filters checked
//! and authorized, the session's subscriptions changed, the broker told
//! (`Event::Subscribed` / `Unsubscribed`), SUBACK / UNSUBACK queued.

use super::*;

impl Connection {
    pub(super) fn handle_subscribe(&mut self, mut s: Subscribe) {
        // [MQTT-3.8.2-?] at most one Subscription Identifier (the codec
        // checks, and refuses 0 and values past the maximum), applying to
        // every filter of this SUBSCRIBE.
        let sub_id = s
            .properties
            .subscription_identifiers
            .first()
            .and_then(|v| codec::SubscriptionId::new(*v));
        // The user properties go with the first filter subscribed only: the
        // broker reads them once per packet (the queue opt-in), and a copy
        // per filter let one SUBSCRIBE multiply them by its filter count.
        let mut user_properties = s
            .properties
            .get_mut()
            .map(|p| std::mem::take(&mut p.user_properties))
            .unwrap_or_default();
        // The whole packet is checked before any filter takes effect: a
        // malformed one closes the connection, and nothing of it applies.
        let mut parsed = Vec::with_capacity(s.filters.len());
        for (raw, options) in s.filters {
            let filter = match Filter::parse(raw.clone()) {
                Ok(f) => f,
                Err(e) => return self.violate(Violation::TopicFilterMalformed(e)),
            };
            if options.no_local && matches!(filter, Filter::Shared { .. }) {
                return self.violate(Violation::NoLocalOnSharedSubscription);
            }
            parsed.push((raw, options, filter));
        }
        let mut reasons = Vec::with_capacity(parsed.len());
        // Once per packet (SUBSCRIBE is rare): the filters' bytes so far.
        let mut bytes: usize = self
            .session
            .as_ref()
            .map_or(0, |s| s.subscriptions.keys().map(|k| k.len()).sum());
        let bytes_max = self.limits.subscription_bytes_per_session_max.get() as usize;
        for (raw, options, filter) in parsed {
            if !self.permissions.can_subscribe(&filter) {
                self.events
                    .push_back(Event::Denied(Denied::Subscribe(raw.clone())));
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let Some(session) = self.session.as_mut() else {
                return;
            };
            let existed = session.subscriptions.contains_key(&raw);
            let count_max = self.limits.subscriptions_per_session_max.get() as usize;
            if !existed
                && (session.subscriptions.len() >= count_max || bytes + raw.len() > bytes_max)
            {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            if !existed {
                bytes += raw.len();
            }
            // Copies: a filter is kept (the session, the index, the
            // session's record) as long as it is subscribed, and as slices
            // it kept the whole SUBSCRIBE alive, which the quota above
            // does not count.
            let raw = ByteString::from(&*raw);
            let filter = match Filter::parse(raw.clone()) {
                Ok(f) => f,
                // The same bytes parsed above: never taken.
                Err(e) => return self.violate(Violation::TopicFilterMalformed(e)),
            };
            let Some(session) = self.session.as_mut() else {
                return;
            };
            let subscription = Subscription {
                filter,
                options,
                id: sub_id,
            };
            // [MQTT-3.8.4-3] a resubscribe replaces the old subscription.
            session
                .subscriptions
                .insert(raw.clone(), subscription.clone());
            // Retain Handling (v5 §3.8.3.1); shared subscriptions never get
            // retained messages [MQTT-3.8.4-?, v5 §4.8.2].
            let send_retained = !matches!(subscription.filter, Filter::Shared { .. })
                && match options.retain_handling {
                    codec::RetainHandling::SendAtSubscribe => true,
                    codec::RetainHandling::SendAtSubscribeIfNew => !existed,
                    codec::RetainHandling::DoNotSend => false,
                };
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            self.events.push_back(Event::Subscribed {
                key: raw,
                subscription,
                send_retained,
                user_properties: std::mem::take(&mut user_properties),
            });
        }
        // SUBACK is queued before the broker handles the Subscribed events,
        // so it goes out before any retained message they bring.
        self.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Props::default(),
            reasons,
        }));
    }

    pub(super) fn handle_unsubscribe(&mut self, u: Unsubscribe) {
        // As for SUBSCRIBE: a malformed filter makes the packet malformed.
        if let Some(e) = u
            .filters
            .iter()
            .find_map(|raw| Filter::parse(raw.clone()).err())
        {
            return self.violate(Violation::TopicFilterMalformed(e));
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut reasons = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            match session.subscriptions.remove(&raw) {
                Some(sub) => {
                    reasons.push(ReasonCode::Success);
                    self.events.push_back(Event::Unsubscribed {
                        key: raw,
                        filter: sub.filter,
                    });
                }
                // [MQTT-3.11.3-?] v5 reports it; v3.1.1 UNSUBACK has no codes.
                None => reasons.push(ReasonCode::NoSubscriptionExisted),
            }
        }
        // [MQTT-3.10.4-4] always answer with UNSUBACK.
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Props::default(),
            reasons,
        }));
    }
}
