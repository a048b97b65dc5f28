//! Property tests: the subscription trie and the retained store agree with
//! the reference matcher `TopicFilter::matches` (MQTT 5.0 §4.7) on random
//! filters and topics drawn from a small alphabet of levels, so that matches
//! actually happen: '$'-prefixed first levels and empty levels included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shardmq_core::retained::RetainedStore;
use shardmq_core::topic::{SubscriptionTrie, TopicFilter, TopicName};

const LEVELS: &[&str] = &["a", "b", "", "$SYS", "$x", "a$"];

fn topic_level() -> impl Strategy<Value = String> {
    proptest::sample::select(LEVELS).prop_map(str::to_owned)
}

fn topic() -> impl Strategy<Value = TopicName> {
    proptest::collection::vec(topic_level(), 1..5).prop_map(|levels| {
        let joined = levels.join("/");
        // A single empty level is the empty string, which is no topic name
        // [MQTT-4.7.3-1].
        TopicName::try_from(if joined.is_empty() { "/" } else { &joined }).unwrap()
    })
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![3 => topic_level(), 2 => Just("+".to_owned())];
    (proptest::collection::vec(level, 0..5), any::<bool>()).prop_map(|(mut levels, multi)| {
        if multi || levels.is_empty() {
            levels.push("#".to_owned());
        }
        let joined = levels.join("/");
        TopicFilter::try_from(if joined.is_empty() { "/" } else { &joined }).unwrap()
    })
}

/// `(filter, key, value, removed later)`.
fn subscriptions() -> impl Strategy<Value = Vec<(TopicFilter, u8, u32, bool)>> {
    proptest::collection::vec(
        (filter(), 0u8..4, any::<u32>(), prop::bool::weighted(0.3)),
        0..40,
    )
}

proptest! {
    #[test]
    fn trie_matches_agree_with_the_reference_matcher(
        subs in subscriptions(),
        topics in proptest::collection::vec(topic(), 1..12),
    ) {
        let mut trie = SubscriptionTrie::new();
        // The model: last write wins per (filter, key) [MQTT-3.8.4-3].
        let mut model: BTreeMap<(String, u8), u32> = BTreeMap::new();
        for (f, k, v, _) in &subs {
            let replaced = trie.insert(f, *k, *v);
            let model_replaced = model.insert((f.as_str().to_owned(), *k), *v);
            prop_assert_eq!(replaced, model_replaced);
        }
        for (f, k, _, remove) in &subs {
            if *remove {
                let removed = trie.remove(f, k);
                let model_removed = model.remove(&(f.as_str().to_owned(), *k));
                prop_assert_eq!(removed, model_removed);
            }
        }
        prop_assert_eq!(trie.len(), model.len());
        for ((f, k), v) in &model {
            prop_assert_eq!(trie.get(&TopicFilter::try_from(f.as_str()).unwrap(), k), Some(v));
        }
        for topic in &topics {
            // Every matching subscription exactly once: compare as multisets.
            let mut got: Vec<(u8, u32)> =
                trie.matches(topic).into_iter().map(|(k, v)| (*k, *v)).collect();
            got.sort_unstable();
            let mut want: Vec<(u8, u32)> = model
                .iter()
                .filter(|((f, _), _)| TopicFilter::try_from(f.as_str()).unwrap().matches(topic))
                .map(|((_, k), v)| (*k, *v))
                .collect();
            want.sort_unstable();
            prop_assert_eq!(&got, &want, "topic {}", topic);

            // Grouped: one call per key with all of its matching values.
            let mut grouped: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
            trie.for_each_match_grouped(topic, |k, vs| {
                let previous = grouped.insert(*k, vs.iter().map(|v| **v).collect());
                assert!(previous.is_none(), "key {k} grouped twice");
            });
            let mut want_grouped: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
            for (k, v) in want {
                want_grouped.entry(k).or_default().push(v);
            }
            for vs in grouped.values_mut() {
                vs.sort_unstable();
            }
            prop_assert_eq!(grouped, want_grouped);
        }
    }

    #[test]
    fn trie_is_empty_after_removing_everything(subs in subscriptions(), topic in topic()) {
        let mut trie = SubscriptionTrie::new();
        for (f, k, v, _) in &subs {
            trie.insert(f, *k, *v);
        }
        for (f, k, _, _) in &subs {
            trie.remove(f, k);
        }
        prop_assert!(trie.is_empty());
        prop_assert!(trie.matches(&topic).is_empty());
    }

    #[test]
    fn retained_filter_match_agrees_with_a_naive_scan(
        sets in proptest::collection::vec((topic(), any::<u32>(), prop::bool::weighted(0.3)), 0..40),
        filters in proptest::collection::vec(filter(), 1..12),
    ) {
        retained_agrees(&sets, &filters)?;
    }

    /// Wide levels: nodes with more children than the store keeps in a
    /// small vector, which become a map and, once cleared down, a vector again.
    #[test]
    fn retained_with_wide_nodes_agrees_with_a_naive_scan(
        sets in proptest::collection::vec((wide_topic(), any::<u32>(), prop::bool::weighted(0.6)), 0..120),
        filters in proptest::collection::vec(filter(), 1..8),
    ) {
        retained_agrees(&sets, &filters)?;
    }
}

fn wide_topic() -> impl Strategy<Value = TopicName> {
    let level = prop_oneof![4 => (0..20u8).prop_map(|i| format!("w{i}")), 1 => topic_level()];
    proptest::collection::vec(level, 1..4).prop_map(|levels| {
        let joined = levels.join("/");
        TopicName::try_from(if joined.is_empty() { "/" } else { &joined }).unwrap()
    })
}

fn retained_agrees(
    sets: &[(TopicName, u32, bool)],
    filters: &[TopicFilter],
) -> Result<(), TestCaseError> {
    {
        let mut store = RetainedStore::new(usize::MAX, u64::MAX);
        let mut model: BTreeMap<String, u32> = BTreeMap::new();
        for (t, v, _) in sets {
            prop_assert_eq!(
                store.set(t.clone(), *v, 1).unwrap(),
                model.insert(t.to_string(), *v)
            );
        }
        for (t, _, clear) in sets {
            if *clear {
                prop_assert_eq!(store.clear(t), model.remove(t.as_str()));
            }
        }
        prop_assert_eq!(store.len(), model.len());
        for f in filters {
            let mut got = Vec::new();
            store.for_each_match(f, |t, v| got.push((t.to_string(), *v)));
            got.sort();
            let unique: BTreeSet<_> = got.iter().map(|(t, _)| t.clone()).collect();
            prop_assert_eq!(unique.len(), got.len(), "each topic once for {}", f);
            let want: Vec<(String, u32)> = model
                .iter()
                .filter(|(t, _)| f.matches(&TopicName::try_from(t.as_str()).unwrap()))
                .map(|(t, v)| (t.clone(), *v))
                .collect();
            prop_assert_eq!(got, want, "filter {}", f);
        }
    }
    Ok(())
}
