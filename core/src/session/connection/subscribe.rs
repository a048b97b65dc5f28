//! SUBSCRIBE and UNSUBSCRIBE (MQTT 5.0 §3.8-§3.11, §4.8): filters checked
//! and authorized, the session's subscriptions changed, the broker told
//! (`Event::Subscribed` / `Unsubscribed`), SUBACK / UNSUBACK queued.

use super::*;
use crate::limits::TOPIC_LEVELS_MAX;

/// One filter of a SUBSCRIBE, however many times the packet repeats it.
struct Requested {
    raw: ByteString,
    filter: Filter,
    /// The last occurrence's: each replaces the one before, as a
    /// resubscribe would [MQTT-3.8.4-3].
    options: codec::SubscriptionOptions,
    /// An occurrence asks for the retained messages whether or not the
    /// subscription exists (Retain Handling 0).
    retained_always: bool,
    /// The first occurrence asks for them if the subscription is new
    /// (Retain Handling 1); the ones after it find it existing.
    retained_if_new: bool,
}

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
        // A filter the packet repeats is applied once, with its last
        // options: each copy cost an index change broadcast to every shard
        // and a retained query. Every entry is still answered, in order
        // [MQTT-3.8.4-6]: `entries` holds each one's filter and QoS.
        let n = s.filters.len();
        let mut requested: Vec<Requested> = Vec::with_capacity(n);
        let mut entries: Vec<(usize, QoS)> = Vec::with_capacity(n);
        // PERF: only a packet of several filters pays for the map.
        let mut seen: HashMap<ByteString, usize> = HashMap::new();
        for (raw, options) in s.filters {
            let repeat = if n > 1 { seen.get(&raw).copied() } else { None };
            let i = match repeat {
                Some(i) => i,
                None => {
                    let filter = match Filter::parse(raw.clone()) {
                        Ok(f) => f,
                        Err(e) => return self.violate(Violation::TopicFilterMalformed(e)),
                    };
                    if n > 1 {
                        seen.insert(raw.clone(), requested.len());
                    }
                    requested.push(Requested {
                        raw,
                        filter,
                        options,
                        retained_always: false,
                        retained_if_new: options.retain_handling
                            == codec::RetainHandling::SendAtSubscribeIfNew,
                    });
                    requested.len() - 1
                }
            };
            let r = &mut requested[i];
            if options.no_local && r.filter.is_shared() {
                return self.violate(Violation::NoLocalOnSharedSubscription);
            }
            r.options = options;
            r.retained_always |= options.retain_handling == codec::RetainHandling::SendAtSubscribe;
            entries.push((i, options.qos));
        }
        drop(seen);
        // Each filter's refusal, or `None` once subscribed.
        let mut refused: Vec<Option<ReasonCode>> = Vec::with_capacity(requested.len());
        // Once per packet (SUBSCRIBE is rare): the filters' bytes so far.
        let mut bytes: usize = self
            .session
            .as_ref()
            .map_or(0, |s| s.subscriptions.keys().map(|k| k.len()).sum());
        let bytes_max = self.limits.subscription_bytes_per_session_max.get() as usize;
        let count_max = self.limits.subscriptions_per_session_max.get() as usize;
        // The levels of the session's filters, each a node of the index on
        // every shard. Each level takes a byte or a separator, so bytes +
        // count bounds them: only a session near the limit has its filters
        // counted, once per packet.
        let mut levels = bytes + self.session.as_ref().map_or(0, |s| s.subscriptions.len());
        let mut levels_exact = false;
        let levels_max = self.limits.subscription_levels_per_session_max.get() as usize;
        for r in requested {
            let filter_levels = r.filter.topic_filter().level_count();
            if filter_levels > TOPIC_LEVELS_MAX {
                // "The Topic Filter is correctly formed but is not allowed
                // for this Client" (v5 §3.9.3): a bound of the server's on
                // the filter itself, not a quota that frees up.
                refused.push(Some(ReasonCode::TopicFilterInvalid));
                continue;
            }
            if !self.permissions.can_subscribe(&r.filter) {
                self.events
                    .push_back(Event::Denied(Denied::Subscribe(r.raw.clone())));
                refused.push(Some(ReasonCode::NotAuthorized));
                continue;
            }
            let Some(session) = self.session.as_ref() else {
                return;
            };
            let existed = session.subscriptions.contains_key(&r.raw);
            if !existed && levels + filter_levels > levels_max && !levels_exact {
                levels = session
                    .subscriptions
                    .values()
                    .map(|s| s.filter.topic_filter().level_count())
                    .sum();
                levels_exact = true;
            }
            if !existed
                && (session.subscriptions.len() >= count_max
                    || bytes + r.raw.len() > bytes_max
                    || levels + filter_levels > levels_max)
            {
                refused.push(Some(ReasonCode::QuotaExceeded));
                continue;
            }
            if !existed {
                bytes += r.raw.len();
                levels += filter_levels;
            }
            // Copies: a filter is kept (the session, the index, the
            // session's record) as long as it is subscribed, and as slices
            // it kept the whole SUBSCRIBE alive, which the quota above
            // does not count.
            let raw = ByteString::from(&*r.raw);
            let filter = match Filter::parse(raw.clone()) {
                Ok(f) => f,
                // The same bytes parsed above: never taken.
                Err(e) => return self.violate(Violation::TopicFilterMalformed(e)),
            };
            let Some(session) = self.session.as_mut() else {
                return;
            };
            // Retain Handling (v5 §3.8.3.1); shared subscriptions never get
            // retained messages [MQTT-3.8.4-?, v5 §4.8.2].
            let send_retained =
                !filter.is_shared() && (r.retained_always || (r.retained_if_new && !existed));
            let subscription = Subscription {
                filter,
                options: r.options,
                id: sub_id,
            };
            // [MQTT-3.8.4-3] a resubscribe replaces the old subscription.
            session
                .subscriptions
                .insert(raw.clone(), subscription.clone());
            self.events.push_back(Event::Subscribed {
                key: raw,
                subscription,
                send_retained,
                user_properties: std::mem::take(&mut user_properties),
            });
            refused.push(None);
        }
        let reasons = entries
            .into_iter()
            .map(|(i, qos)| {
                refused.get(i).copied().flatten().unwrap_or(match qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                })
            })
            .collect();
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
