//! `SubscriptionTrie`: the subscription index every PUBLISH is matched against
//! (MQTT 5.0 §4.7). One node per filter level; '+' children and '#'
//! subscribers have their own slots so wildcard lookup costs O(1) per node.
//! It stores and matches; it does not authorise, pick shared-group members or
//! apply No Local (the session does). INVARIANT: empty nodes are pruned on
//! remove, so memory follows the live subscriptions, not the churn.

use std::hash::Hash;

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::children::Children;
use super::{TopicFilter, TopicName};

/// Subscribers with a node bigger than this get a key index, so a filter with
/// thousands of subscribers (fan-out) stays O(1) per insert/remove, while the
/// common case (a handful) is a plain vector scan with no hashing.
const SUBSCRIBERS_INDEX_LEN_MIN: usize = 16;

/// Inline capacity of the match walk's work stack: each visited node pushes
/// at most two entries (its literal child and its '+' child), so this covers
/// topics with up to ~16 levels before spilling to the heap.
const WALK_STACK_INLINE: usize = 32;

/// The subscriptions that end at one node: `(key, value)` pairs, unique by key.
#[derive(Debug)]
struct Subscribers<K, V> {
    entries: Vec<(K, V)>,
    /// Key -> position in `entries`, present once `entries` outgrows
    /// `SUBSCRIBERS_INDEX_LEN_MIN`. INVARIANT: when present, it indexes every entry.
    index: Option<HashMap<K, usize>>,
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Subscribers {
            entries: Vec::new(),
            index: None,
        }
    }
}

impl<K: Clone + Eq + Hash, V> Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(&key) {
            return Some(std::mem::replace(&mut self.entries[i].1, value));
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), self.entries.len());
        } else if self.entries.len() >= SUBSCRIBERS_INDEX_LEN_MIN {
            let mut index: HashMap<K, usize> = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            index.insert(key.clone(), self.entries.len());
            self.index = Some(index);
        }
        self.entries.push((key, value));
        None
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key)?;
        let (_, value) = self.entries.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(key);
            if let Some((moved, _)) = self.entries.get(i) {
                index.insert(moved.clone(), i);
            }
            if self.entries.len() < SUBSCRIBERS_INDEX_LEN_MIN / 2 {
                self.index = None;
            }
        }
        if self.entries.capacity() > 4 * self.entries.len().max(4) {
            self.entries.shrink_to_fit();
        }
        Some(value)
    }
}

#[derive(Debug)]
struct Node<K, V> {
    /// Children for literal levels (the empty level "" included).
    children: Children<Node<K, V>>,
    /// The child for a '+' level.
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter ends at this node ("a/b" at node a/b).
    exact: Subscribers<K, V>,
    /// Subscriptions whose filter is this node's path plus "/#" ("a/#" at
    /// node a; "#" at the root). '#' is always last [MQTT-4.7.1-1], so it
    /// needs no node of its own.
    multi: Subscribers<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            plus: None,
            exact: Subscribers::default(),
            multi: Subscribers::default(),
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Iterative: the derived drop recurses once per level, and a chain of
    /// 32768 levels (a 65535-byte filter of '/') overflows the stack.
    fn drop(&mut self) {
        let mut orphans: Vec<Node<K, V>> = self.children.take_all();
        orphans.extend(self.plus.take().map(|n| *n));
        while let Some(mut node) = orphans.pop() {
            orphans.extend(node.children.take_all());
            orphans.extend(node.plus.take().map(|n| *n));
        }
    }
}

impl<K: Clone + Eq + Hash, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }

    /// True when the node holds nothing but the one child on a removal path.
    fn is_only_a_path(&self) -> bool {
        self.exact.is_empty()
            && self.multi.is_empty()
            && self.children.len() + usize::from(self.plus.is_some()) == 1
    }

    fn child(&self, edge: Edge<'_>) -> Option<&Node<K, V>> {
        match edge {
            Edge::Plus => self.plus.as_deref(),
            Edge::Literal(level) => self.children.get(level),
        }
    }

    fn child_mut(&mut self, edge: Edge<'_>) -> Option<&mut Node<K, V>> {
        match edge {
            Edge::Plus => self.plus.as_deref_mut(),
            Edge::Literal(level) => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, edge: Edge<'_>) -> &mut Node<K, V> {
        match edge {
            Edge::Plus => self.plus.get_or_insert_with(Box::default),
            Edge::Literal(level) => self.children.get_or_insert(level),
        }
    }

    fn remove_child(&mut self, edge: Edge<'_>) {
        match edge {
            Edge::Plus => self.plus = None,
            Edge::Literal(level) => self.children.remove(level),
        }
    }
}

/// Work items of the match walk: a node and the byte offset of the topic's
/// next level at it, `None` once every level is consumed.
type WalkStack<'s, K, V> = SmallVec<[(&'s Node<K, V>, Option<usize>); WALK_STACK_INLINE]>;

/// One step from a node to a child.
#[derive(Debug, Clone, Copy)]
enum Edge<'a> {
    Literal(&'a str),
    Plus,
}

/// Where a filter's subscriptions live: the node path, and whether they are
/// that node's '#' subscriptions or its exact ones.
struct FilterPath<'a> {
    edges: SmallVec<[Edge<'a>; 8]>,
    multi: bool,
}

impl<'a> FilterPath<'a> {
    fn of(filter: &'a TopicFilter) -> FilterPath<'a> {
        let mut edges = SmallVec::new();
        let mut multi = false;
        for level in filter.levels() {
            match level {
                // INVARIANT: validation puts '#' last [MQTT-4.7.1-1].
                "#" => multi = true,
                "+" => edges.push(Edge::Plus),
                literal => edges.push(Edge::Literal(literal)),
            }
        }
        FilterPath { edges, multi }
    }
}

/// The subscription index: `(filter, key) -> value`, one value per pair. A
/// resubscribe with the same filter and key replaces the value
/// [MQTT-3.8.4-3]. Shared subscriptions are stored like any other, with a key
/// that names the group (the caller's `K` decides).
#[derive(Debug)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

/// One subscriber's matching subscriptions, while grouping a topic's matches.
type Group<'a, K, V> = (&'a K, SmallVec<[&'a V; 1]>);

impl<K: Clone + Eq + Hash, V> SubscriptionTrie<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of `(filter, key)` subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to `filter`; returns the value it
    /// replaced [MQTT-3.8.4-3].
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let path = FilterPath::of(filter);
        let mut node = &mut self.root;
        for &edge in &path.edges {
            node = node.child_or_insert(edge);
        }
        let subscribers = if path.multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let replaced = subscribers.insert(key, value);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    pub fn get(&self, filter: &TopicFilter, key: &K) -> Option<&V> {
        let path = FilterPath::of(filter);
        let mut node = &self.root;
        for &edge in &path.edges {
            node = node.child(edge)?;
        }
        if path.multi {
            node.multi.get(key)
        } else {
            node.exact.get(key)
        }
    }

    /// Removes `key`'s subscription to `filter` and prunes the nodes left
    /// empty. Iterative: two walks down the path, no recursion.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let path = FilterPath::of(filter);
        let mut node = &mut self.root;
        for &edge in &path.edges {
            node = node.child_mut(edge)?;
        }
        let removed = if path.multi {
            node.multi.remove(key)
        } else {
            node.exact.remove(key)
        }?;
        self.len -= 1;

        // Find the shallowest depth from which the path holds nothing but
        // itself down to an empty last node; cut the edge into it.
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        for (depth_parent, &edge) in path.edges.iter().enumerate() {
            let Some(child) = node.child(edge) else {
                // INVARIANT: the first walk found the whole path.
                return Some(removed);
            };
            let depth = depth_parent + 1;
            let last = depth == path.edges.len();
            let prunable = if last {
                child.is_empty()
            } else {
                child.is_only_a_path()
            };
            cut = if prunable { cut.or(Some(depth)) } else { None };
            node = child;
        }
        if let Some(depth) = cut {
            let mut node = &mut self.root;
            for &edge in &path.edges[..depth - 1] {
                match node.child_mut(edge) {
                    Some(child) => node = child,
                    None => return Some(removed),
                }
            }
            node.remove_child(path.edges[depth - 1]);
        }
        Some(removed)
    }

    /// Calls `f` once for every `(filter, key)` subscription whose filter
    /// matches `topic` (§4.7), in no particular order. A key subscribed with
    /// several matching filters is visited once per filter; see
    /// [`SubscriptionTrie::for_each_match_grouped`] to deliver once.
    pub fn for_each_match<'s>(&'s self, topic: &TopicName, mut f: impl FnMut(&'s K, &'s V)) {
        let topic_str = topic.as_str();
        // [MQTT-4.7.2-1]: wildcards at the first level skip '$' topics.
        let system = topic.is_system();
        // Each node is reached along its own unique path, so it is visited at
        // most once and every stored subscription is reported at most once.
        let mut stack: WalkStack<'s, K, V> = SmallVec::new();
        stack.push((&self.root, Some(0)));
        while let Some((node, pos)) = stack.pop() {
            let Some(pos) = pos else {
                // Topic exhausted: exact filters end here, and "x/#" matches
                // its parent "x" too (§4.7.1.2).
                node.exact.entries.iter().for_each(|(k, v)| f(k, v));
                node.multi.entries.iter().for_each(|(k, v)| f(k, v));
                continue;
            };
            let rest = &topic_str[pos..];
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(pos + i + 1)),
                None => (rest, None),
            };
            // Only the root is walked from offset 0: every later offset
            // follows a '/'.
            if !(system && pos == 0) {
                node.multi.entries.iter().for_each(|(k, v)| f(k, v));
                if let Some(plus) = node.plus.as_deref() {
                    stack.push((plus, next));
                }
            }
            if let Some(child) = node.children.get(level) {
                stack.push((child, next));
            }
        }
    }

    /// Every matching `(key, value)`, one per subscription.
    pub fn matches(&self, topic: &TopicName) -> Vec<(&K, &V)> {
        let mut out = Vec::new();
        self.for_each_match(topic, |k, v| out.push((k, v)));
        out
    }

    /// Visits every subscription, in no particular order (inspection and
    /// tests: comparing replicas, counting what a client holds).
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            for (k, v) in node.exact.entries.iter().chain(&node.multi.entries) {
                f(k, v);
            }
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
    }

    /// Like [`SubscriptionTrie::for_each_match`], but grouped by key: `f` is
    /// called once per subscriber with the values of all its subscriptions
    /// that match, so overlapping subscriptions deliver one message
    /// (MQTT 5.0 §3.3.4; merge them with [`super::merge_overlapping`]).
    pub fn for_each_match_grouped(&self, topic: &TopicName, mut f: impl FnMut(&K, &[&V])) {
        // PERF: most topics match a few subscribers; a linear search of
        // those is cheaper than building a map per message (it was half of
        // this function at moderate load). The map is built once a topic
        // has more than `LINEAR_GROUPS_MAX` subscribers.
        const LINEAR_GROUPS_MAX: usize = 8;
        let mut groups: SmallVec<[Group<'_, K, V>; 2]> = SmallVec::new();
        let mut by_key: Option<HashMap<&K, usize>> = None;
        self.for_each_match(topic, |k, v| {
            let found = match &by_key {
                Some(map) => map.get(k).copied(),
                None => groups.iter().position(|(g, _)| *g == k),
            };
            match found {
                Some(i) => groups[i].1.push(v),
                None => {
                    if let Some(map) = by_key.as_mut() {
                        map.insert(k, groups.len());
                    }
                    groups.push((k, smallvec::smallvec![v]));
                    if by_key.is_none() && groups.len() > LINEAR_GROUPS_MAX {
                        by_key = Some(
                            groups
                                .iter()
                                .enumerate()
                                .map(|(i, (g, _))| (*g, i))
                                .collect(),
                        );
                    }
                }
            }
        });
        for (k, values) in &groups {
            f(k, values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    /// The keys matching `topic`, sorted, one per matching subscription.
    fn matching_keys(trie: &SubscriptionTrie<&'static str, u32>, topic: &str) -> Vec<&'static str> {
        let mut keys: Vec<_> = trie
            .matches(&name(topic))
            .into_iter()
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// One subscriber per filter, keyed by the filter text.
    fn trie_of(filters: &[&'static str]) -> SubscriptionTrie<&'static str, u32> {
        let mut trie = SubscriptionTrie::new();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(&filter(f), *f, i as u32);
        }
        trie
    }

    #[test]
    fn spec_examples_of_multi_level_wildcard_match() {
        // §4.7.1.2
        let trie = trie_of(&["sport/tennis/player1/#", "sport/#", "#", "sport/tennis/#"]);
        assert_eq!(
            matching_keys(&trie, "sport/tennis/player1"),
            ["#", "sport/#", "sport/tennis/#", "sport/tennis/player1/#"]
        );
        assert_eq!(
            matching_keys(&trie, "sport/tennis/player1/score/wimbledon"),
            ["#", "sport/#", "sport/tennis/#", "sport/tennis/player1/#"]
        );
        // "sport/#" matches the parent "sport".
        assert_eq!(matching_keys(&trie, "sport"), ["#", "sport/#"]);
    }

    #[test]
    fn spec_examples_of_single_level_wildcard_match() {
        // §4.7.1.3
        let trie = trie_of(&["sport/tennis/+", "sport/+", "+/+", "/+", "+"]);
        assert_eq!(
            matching_keys(&trie, "sport/tennis/player1"),
            ["sport/tennis/+"]
        );
        assert!(matching_keys(&trie, "sport/tennis/player1/ranking").is_empty());
        assert_eq!(matching_keys(&trie, "sport"), ["+"]);
        assert_eq!(matching_keys(&trie, "sport/"), ["+/+", "sport/+"]);
        // "+" does not match "/finance"; "+/+" and "/+" do.
        assert_eq!(matching_keys(&trie, "/finance"), ["+/+", "/+"]);
    }

    #[test]
    fn wildcards_at_the_first_level_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1], §4.7.2 examples.
        let trie = trie_of(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+"]);
        assert_eq!(
            matching_keys(&trie, "$SYS/monitor/Clients"),
            ["$SYS/#", "$SYS/monitor/+"]
        );
        assert_eq!(matching_keys(&trie, "$SYS"), ["$SYS/#"]);
        assert!(matching_keys(&trie, "$other").is_empty());
        // A '$' at a later level is an ordinary character.
        assert_eq!(matching_keys(&trie, "x/$SYS"), ["#"]);
    }

    #[test]
    fn empty_levels_are_matched_as_levels() {
        // §4.7.1.1
        let trie = trie_of(&["a/+/b", "a//b", "/#", "+/a", "a/+", "/"]);
        assert_eq!(matching_keys(&trie, "a//b"), ["a/+/b", "a//b"]);
        assert_eq!(matching_keys(&trie, "/a"), ["+/a", "/#"]);
        assert_eq!(matching_keys(&trie, "a/"), ["a/+"]);
        assert_eq!(matching_keys(&trie, "/"), ["/", "/#"]);
    }

    #[test]
    fn each_subscription_is_visited_once() {
        let trie = trie_of(&["a/b", "a/+", "+/b", "+/+", "#", "a/#", "a/b/#", "+/#"]);
        assert_eq!(
            matching_keys(&trie, "a/b"),
            ["#", "+/#", "+/+", "+/b", "a/#", "a/+", "a/b", "a/b/#"]
        );
    }

    #[test]
    fn resubscribe_replaces_the_value() {
        // [MQTT-3.8.4-3]
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert(&filter("a/#"), "c", 1), None);
        assert_eq!(trie.insert(&filter("a/#"), "c", 2), Some(1));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.get(&filter("a/#"), &"c"), Some(&2));
        assert_eq!(trie.matches(&name("a/x")), [(&"c", &2)]);
    }

    #[test]
    fn one_key_may_hold_several_filters_and_one_filter_several_keys() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/b"), "c1", 1);
        trie.insert(&filter("a/+"), "c1", 2);
        trie.insert(&filter("a/b"), "c2", 3);
        assert_eq!(trie.len(), 3);
        let mut values: Vec<u32> = trie
            .matches(&name("a/b"))
            .into_iter()
            .map(|(_, v)| *v)
            .collect();
        values.sort_unstable();
        assert_eq!(values, [1, 2, 3]);
        let mut grouped = Vec::new();
        trie.for_each_match_grouped(&name("a/b"), |k, vs| {
            let mut vs: Vec<u32> = vs.iter().map(|v| **v).collect();
            vs.sort_unstable();
            grouped.push((*k, vs));
        });
        grouped.sort();
        assert_eq!(grouped, [("c1", vec![1, 2]), ("c2", vec![3])]);
    }

    #[test]
    fn grouping_holds_past_the_linear_search_for_many_subscribers() {
        // MQTT 5.0 §3.3.4: one message per subscriber, however many of its
        // subscriptions overlap; 40 subscribers is past the small-case
        // linear search, and each key's filters are inserted apart.
        let keys: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let mut trie: SubscriptionTrie<&str, u32> = SubscriptionTrie::new();
        for (i, k) in keys.iter().enumerate() {
            trie.insert(&filter("a/b"), k.as_str(), i as u32);
        }
        for (i, k) in keys.iter().enumerate() {
            trie.insert(&filter("a/#"), k.as_str(), 100 + i as u32);
        }
        let mut grouped = Vec::new();
        trie.for_each_match_grouped(&name("a/b"), |k, vs| {
            let mut vs: Vec<u32> = vs.iter().map(|v| **v).collect();
            vs.sort_unstable();
            grouped.push((k.to_string(), vs));
        });
        grouped.sort();
        let mut expected: Vec<(String, Vec<u32>)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), vec![i as u32, 100 + i as u32]))
            .collect();
        expected.sort();
        assert_eq!(grouped, expected);
    }

    #[test]
    fn remove_returns_the_value_and_only_removes_that_subscription() {
        let mut trie = trie_of(&["a/b", "a/#", "#"]);
        trie.insert(&filter("a/b"), "other", 9);
        assert_eq!(trie.remove(&filter("a/b"), &"a/b"), Some(0));
        assert_eq!(trie.remove(&filter("a/b"), &"a/b"), None);
        assert_eq!(trie.remove(&filter("a/c"), &"a/b"), None);
        assert_eq!(trie.len(), 3);
        assert_eq!(matching_keys(&trie, "a/b"), ["#", "a/#", "other"]);
    }

    #[test]
    fn remove_prunes_empty_nodes() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/b/c/d"), 1, ());
        trie.insert(&filter("a/+/#"), 2, ());
        trie.insert(&filter("x/y"), 3, ());
        trie.remove(&filter("a/b/c/d"), &1);
        // "a" stays (it leads to "+"), "b" and below go.
        let a = trie.root.children.get("a").unwrap();
        assert!(a.children.is_empty());
        assert!(a.plus.is_some());
        trie.remove(&filter("a/+/#"), &2);
        trie.remove(&filter("x/y"), &3);
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "every node pruned: {:?}", trie.root);
    }

    #[test]
    fn remove_keeps_nodes_that_still_hold_subscriptions() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a"), 1, ());
        trie.insert(&filter("a/b"), 2, ());
        trie.insert(&filter("a/#"), 3, ());
        trie.remove(&filter("a/b"), &2);
        assert_eq!(trie.len(), 2);
        assert!(trie.get(&filter("a"), &1).is_some());
        assert!(trie.get(&filter("a/#"), &3).is_some());
        assert_eq!(trie.matches(&name("a")).len(), 2);
    }

    #[test]
    fn many_subscribers_on_one_filter_use_the_index_and_stay_consistent() {
        let mut trie = SubscriptionTrie::new();
        let f = filter("fan/out");
        for k in 0..100u32 {
            assert_eq!(trie.insert(&f, k, k * 10), None);
        }
        assert_eq!(trie.insert(&f, 5, 55), Some(50));
        for k in (0..100u32).step_by(3) {
            assert!(trie.remove(&f, &k).is_some());
        }
        for k in 0..100u32 {
            let expected = (k % 3 != 0).then_some(if k == 5 { 55 } else { k * 10 });
            assert_eq!(trie.get(&f, &k).copied(), expected, "key {k}");
        }
        assert_eq!(trie.matches(&name("fan/out")).len(), trie.len());
        for k in 0..100u32 {
            trie.remove(&f, &k);
        }
        assert!(trie.root.is_empty());
    }

    #[test]
    fn deep_topics_and_filters_do_not_overflow_the_stack() {
        // 32767 separators: the most levels a 65535-byte string can have.
        let deep = "/".repeat(32767);
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter(&deep), 1, ());
        trie.insert(&filter(&format!("{deep}#")), 2, ());
        let plus_deep = "+/".repeat(20000) + "+";
        trie.insert(&filter(&plus_deep), 3, ());
        let mut keys: Vec<i32> = trie
            .matches(&name(&deep))
            .into_iter()
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, [1, 2]);
        assert_eq!(trie.remove(&filter(&deep), &1), Some(()));
        assert_eq!(trie.remove(&filter(&format!("{deep}#")), &2), Some(()));
        assert_eq!(trie.remove(&filter(&plus_deep), &3), Some(()));
        assert!(trie.root.is_empty());
    }

    #[test]
    fn dropping_a_deep_trie_does_not_overflow_the_stack() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter(&"/".repeat(32767)), 1, ());
        trie.insert(&filter(&("+/".repeat(32767) + "#")), 2, ());
        assert_eq!(trie.len(), 2);
        drop(trie);
    }
}
