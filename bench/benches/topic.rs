//! Subscription-trie matching on telemetry-shaped filters: the lookup every
//! routed PUBLISH does in its shard's replica of the index. Names say the
//! index size and the share of filters with wildcards, e.g.
//! `topic_match/10k_filters_20pct_wildcards`; each iteration matches one
//! topic from a fixed rotation of 256 and counts the matches.

use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, Criterion};
use shardmq_core::topic::{SubscriptionTrie, TopicFilter, TopicName};

/// A deterministic xorshift, so every run builds the same index.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `site/{s}/line/{l}/cell/{c}/sensor/{k}`: 4 sites x 10 lines x 25 cells
/// x 100 sensors. Wildcard filters replace one level with `+` or end in
/// `#` at some depth, as dashboards and historians subscribe.
fn filter(rng: &mut Rng, wildcard: bool) -> String {
    let (s, l, c, k) = (rng.below(4), rng.below(10), rng.below(25), rng.below(100));
    if !wildcard {
        return format!("site/{s}/line/{l}/cell/{c}/sensor/{k}");
    }
    match rng.below(4) {
        0 => format!("site/{s}/line/{l}/cell/{c}/sensor/+"),
        1 => format!("site/{s}/line/+/cell/{c}/sensor/{k}"),
        2 => format!("site/{s}/line/{l}/#"),
        _ => format!("site/+/line/{l}/cell/{c}/#"),
    }
}

fn index(filters: usize, wildcard_pct: u64) -> SubscriptionTrie<u64, ()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut trie = SubscriptionTrie::new();
    for key in 0..filters as u64 {
        let wildcard = rng.below(100) < wildcard_pct;
        let f = TopicFilter::new(ByteString::from(filter(&mut rng, wildcard)))
            .unwrap_or_else(|e| panic!("bench filter: {e:?}"));
        trie.insert(&f, key, ());
    }
    trie
}

fn topics() -> Vec<TopicName> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..256)
        .map(|_| {
            let t = filter(&mut rng, false);
            TopicName::new(ByteString::from(t)).unwrap_or_else(|e| panic!("bench topic: {e:?}"))
        })
        .collect()
}

fn topic_match(c: &mut Criterion) {
    let topics = topics();
    let mut g = c.benchmark_group("topic_match");
    for (filters, pct, name) in [
        (1_000, 20, "1k_filters_20pct_wildcards"),
        (10_000, 0, "10k_filters_no_wildcards"),
        (10_000, 20, "10k_filters_20pct_wildcards"),
        (100_000, 20, "100k_filters_20pct_wildcards"),
    ] {
        let trie = index(filters, pct);
        let mut next = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let topic = &topics[next % topics.len()];
                next += 1;
                let mut n = 0u32;
                trie.for_each_match(topic, |_, _| n += 1);
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, topic_match);
criterion_main!(benches);
