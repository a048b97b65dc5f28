//! How one message goes to one session (`Delivery`), and overlapping
//! subscriptions of one client (MQTT 5.0 §3.3.4): when several of a
//! client's subscriptions match a PUBLISH, the server sends one copy with the
//! maximum QoS and every Subscription Identifier. This merges values the
//! trie grouped by key; filtering out No Local matches [MQTT-3.8.3-3] and
//! taking the min with the message's QoS are the session's work.

use crate::codec::{QoS, SubscriptionId};

/// What the merge needs from a session's per-subscription value.
pub trait SubscriptionData {
    /// The subscription's maximum QoS (SUBSCRIBE options).
    fn qos(&self) -> QoS;
    /// The Subscription Identifier given with the SUBSCRIBE, if any.
    fn subscription_id(&self) -> Option<SubscriptionId>;
    /// The Retain As Published option.
    fn retain_as_published(&self) -> bool;
}

/// How one message is to be delivered to one session: the merge of every
/// matching subscription of that session [MQTT-3.3.4-2] [MQTT-3.3.4-3], or
/// the one subscription a retained message or a share group was matched for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Maximum QoS granted over the matching subscriptions [MQTT-3.3.4-2];
    /// the session still caps it at the PUBLISH's own QoS.
    pub granted_qos: QoS,
    /// Whether any matching subscription asked for Retain As Published. The
    /// spec does not say how this merges; keeping the flag if any asks errs
    /// on the side of telling the client more.
    pub retain_as_published: bool,
    /// Sent because of a new subscription (from the retained store): the
    /// RETAIN flag is then set [MQTT-3.3.1-8].
    pub from_retained: bool,
    /// Every matching subscription's identifier, order not significant
    /// [MQTT-3.3.4-3] [MQTT-3.3.4-4].
    pub subscription_ids: Vec<SubscriptionId>,
}

/// Merges the matching subscriptions of one client; `None` when there are
/// none (e.g. all were filtered out for No Local).
pub fn merge_overlapping<'a, V, I>(subscriptions: I) -> Option<Delivery>
where
    V: SubscriptionData + 'a,
    I: IntoIterator<Item = &'a V>,
{
    let mut merged: Option<Delivery> = None;
    for sub in subscriptions {
        let delivery = merged.get_or_insert_with(Delivery::default);
        delivery.granted_qos = delivery.granted_qos.max(sub.qos());
        if let Some(id) = sub.subscription_id() {
            delivery.subscription_ids.push(id);
        }
        delivery.retain_as_published |= sub.retain_as_published();
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{SubscriptionTrie, TopicFilter, TopicName};

    #[derive(Debug, Clone, PartialEq)]
    struct Sub {
        qos: QoS,
        id: Option<SubscriptionId>,
        rap: bool,
    }

    impl SubscriptionData for Sub {
        fn qos(&self) -> QoS {
            self.qos
        }
        fn subscription_id(&self) -> Option<SubscriptionId> {
            self.id
        }
        fn retain_as_published(&self) -> bool {
            self.rap
        }
    }

    fn sub(qos: QoS, id: u32) -> Sub {
        Sub {
            qos,
            id: SubscriptionId::new(id),
            rap: false,
        }
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_with_max_qos_and_all_ids() {
        // [MQTT-3.3.4-2] [MQTT-3.3.4-3] [MQTT-3.3.4-4]
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/+"), "c1", sub(QoS::AtMostOnce, 1));
        trie.insert(&filter("a/#"), "c1", sub(QoS::ExactlyOnce, 2));
        trie.insert(&filter("a/b"), "c1", sub(QoS::AtLeastOnce, 0));
        trie.insert(&filter("a/b"), "c2", sub(QoS::AtLeastOnce, 7));
        let mut deliveries = Vec::new();
        trie.for_each_match_grouped(&TopicName::try_from("a/b").unwrap(), |k, subs| {
            deliveries.push((*k, merge_overlapping(subs.iter().copied())));
        });
        deliveries.sort_by_key(|(k, _)| *k);
        assert_eq!(deliveries.len(), 2, "one delivery per client");
        let (_, c1) = &deliveries[0];
        let c1 = c1.as_ref().unwrap();
        assert_eq!(c1.granted_qos, QoS::ExactlyOnce);
        let mut ids: Vec<u32> = c1.subscription_ids.iter().map(|id| id.get()).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
        let c2 = deliveries[1].1.as_ref().unwrap();
        assert_eq!(c2.granted_qos, QoS::AtLeastOnce);
        assert_eq!(c2.subscription_ids, [SubscriptionId::new(7).unwrap()]);
    }

    #[test]
    fn no_matching_subscriptions_merge_to_none() {
        assert_eq!(merge_overlapping::<Sub, _>([]), None);
    }

    #[test]
    fn retain_as_published_is_kept_if_any_subscription_asks() {
        let a = sub(QoS::AtMostOnce, 0);
        let b = Sub {
            rap: true,
            ..a.clone()
        };
        let merged = merge_overlapping([&a, &b]).unwrap();
        assert!(merged.retain_as_published);
        assert!(merged.subscription_ids.is_empty());
    }
}
