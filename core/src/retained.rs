//! The retained messages of one owner shard (MQTT 5.0 §3.3.1.3, §4.7): one
//! message per topic, kept in a trie of topic levels so a new subscription's
//! filter walks only the matching branches. Stores whatever message type the
//! broker uses (`M`); it does not decide what a retained PUBLISH means: the
//! caller `set`s or `clear`s by payload [MQTT-3.3.1-10/-11]. INVARIANT:
//! `len() <= len_max()` and `bytes() <= bytes_max()`; when full, new topics
//! and replacements that would grow past `bytes_max` are refused, as are
//! topics past `TOPIC_LEVELS_MAX` levels (a node each, which the caller's
//! bytes do not count); clears and replacements that fit always work.

use smallvec::SmallVec;

use crate::codec::ReasonCode;
use crate::limits::TOPIC_LEVELS_MAX;
use crate::topic::children::Children;
use crate::topic::{TopicFilter, TopicName};

/// Why a retained message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetainedError {
    /// The store holds `len_max` topics and this one is new. Refusing (not
    /// evicting) keeps what subscribers already rely on; the publisher learns
    /// of it through the reason code.
    #[error("retained store is full ({len_max} topics)")]
    Full { len_max: usize },
    /// Storing it would take the store past `bytes_max`; what is retained
    /// stays as it was.
    #[error("retained store is full ({bytes_max} bytes)")]
    FullBytes { bytes_max: u64 },
    /// The topic has more levels than `TOPIC_LEVELS_MAX`: each would be a
    /// node of the store, which the message's bytes do not count.
    #[error("topic has more than {levels_max} levels")]
    TooManyLevels { levels_max: usize },
}

impl RetainedError {
    /// For PUBACK/PUBREC of a v5 publisher (MQTT 5.0 §3.4.2.1: 0x97 Quota exceeded).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            RetainedError::Full { .. }
            | RetainedError::FullBytes { .. }
            | RetainedError::TooManyLevels { .. } => ReasonCode::QuotaExceeded,
        }
    }
}

#[derive(Debug)]
struct Node<M> {
    children: Children<Node<M>>,
    /// The retained message whose topic ends at this node, and the bytes
    /// it counts against `bytes_max`.
    message: Option<(TopicName, M, u64)>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            message: None,
        }
    }
}

impl<M> Drop for Node<M> {
    /// Iterative: the derived drop recurses once per level, and a chain of
    /// 32768 levels overflows the stack.
    fn drop(&mut self) {
        let mut orphans: Vec<Node<M>> = self.children.take_all();
        while let Some(mut node) = orphans.pop() {
            orphans.extend(node.children.take_all());
        }
    }
}

impl<M> Node<M> {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }

    fn is_only_a_path(&self) -> bool {
        self.message.is_none() && self.children.len() == 1
    }
}

/// Retained messages by topic, at most `len_max` of them and `bytes_max`
/// bytes (as the caller counts them) together.
#[derive(Debug)]
pub struct RetainedStore<M> {
    root: Node<M>,
    len: usize,
    len_max: usize,
    bytes: u64,
    bytes_max: u64,
}

impl<M> RetainedStore<M> {
    /// A store that keeps at most `len_max` topics and `bytes_max` bytes
    /// (`retainedMessages.maxSize`); 0 keeps none.
    pub fn new(len_max: usize, bytes_max: u64) -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
            len_max,
            bytes: 0,
            bytes_max,
        }
    }

    /// What the stored messages count together (see `set`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len_max(&self) -> usize {
        self.len_max
    }

    fn node(&self, topic: &TopicName) -> Option<&Node<M>> {
        let mut node = &self.root;
        for level in topic.levels() {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    pub fn get(&self, topic: &TopicName) -> Option<&M> {
        self.node(topic)?.message.as_ref().map(|(_, m, _)| m)
    }

    /// Stores `message`, which counts `bytes` (payload, topic and overhead:
    /// the caller's measure), as the retained message of `topic`, replacing
    /// (and returning) the previous one [MQTT-3.3.1-5]. Refused when a new
    /// topic finds the store full, when the bytes would pass `bytes_max`, or
    /// when the topic has more than `TOPIC_LEVELS_MAX` levels.
    pub fn set(
        &mut self,
        topic: TopicName,
        message: M,
        bytes: u64,
    ) -> Result<Option<M>, RetainedError> {
        if topic.level_count() > TOPIC_LEVELS_MAX {
            return Err(RetainedError::TooManyLevels {
                levels_max: TOPIC_LEVELS_MAX,
            });
        }
        let previous_bytes = self
            .node(&topic)
            .and_then(|n| n.message.as_ref())
            .map(|m| m.2);
        if previous_bytes.is_none() && self.len >= self.len_max {
            return Err(RetainedError::Full {
                len_max: self.len_max,
            });
        }
        let total = self.bytes - previous_bytes.unwrap_or(0) + bytes;
        if total > self.bytes_max && total > self.bytes {
            return Err(RetainedError::FullBytes {
                bytes_max: self.bytes_max,
            });
        }
        let mut node = &mut self.root;
        for level in topic.levels() {
            // PERF: `entry_ref` allocates the key only for a new level.
            node = node.children.get_or_insert(level);
        }
        let previous = node
            .message
            .replace((topic, message, bytes))
            .map(|(_, m, _)| m);
        if previous.is_none() {
            self.len += 1;
        }
        self.bytes = total;
        Ok(previous)
    }

    /// Removes the retained message of `topic` (a retained PUBLISH with an
    /// empty payload [MQTT-3.3.1-10]) and prunes the nodes left empty.
    pub fn clear(&mut self, topic: &TopicName) -> Option<M> {
        let mut node = &mut self.root;
        for level in topic.levels() {
            node = node.children.get_mut(level)?;
        }
        let (_, removed, bytes) = node.message.take()?;
        self.len -= 1;
        self.bytes -= bytes;

        // Shallowest depth from which the path holds only itself down to an
        // empty last node; iterative, as topics may have 32768 levels.
        let depth_last = topic.levels().count();
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        for (i, level) in topic.levels().enumerate() {
            let Some(child) = node.children.get(level) else {
                return Some(removed);
            };
            let depth = i + 1;
            let prunable = if depth == depth_last {
                child.is_empty()
            } else {
                child.is_only_a_path()
            };
            cut = if prunable { cut.or(Some(depth)) } else { None };
            node = child;
        }
        if let Some(depth) = cut {
            let mut node = &mut self.root;
            let mut levels = topic.levels();
            for level in levels.by_ref().take(depth - 1) {
                match node.children.get_mut(level) {
                    Some(child) => node = child,
                    None => return Some(removed),
                }
            }
            if let Some(level) = levels.next() {
                node.children.remove(level);
            }
        }
        Some(removed)
    }

    /// Calls `f` for every retained message whose topic matches `filter`
    /// (§4.7), e.g. for a new subscription [MQTT-3.3.1-9]. Walks only the
    /// branches the filter can match: a literal filter is one lookup per
    /// level. Filters starting with a wildcard skip '$' topics [MQTT-4.7.2-1].
    pub fn for_each_match<'s>(
        &'s self,
        filter: &TopicFilter,
        mut f: impl FnMut(&'s TopicName, &'s M),
    ) {
        let filter_str = filter.as_str();
        // A node and the byte offset of the filter's next level, `None` once
        // every level is consumed. Each node is reached at most once.
        let mut stack: SmallVec<[(&'s Node<M>, Option<usize>); 32]> = SmallVec::new();
        // Nodes under a '#': every message below them matches.
        let mut subtree: Vec<&'s Node<M>> = Vec::new();
        stack.push((&self.root, Some(0)));
        while let Some((node, pos)) = stack.pop() {
            let Some(pos) = pos else {
                if let Some((topic, message, _)) = &node.message {
                    f(topic, message);
                }
                continue;
            };
            // Only the root is walked from offset 0.
            let at_root = pos == 0;
            let rest = &filter_str[pos..];
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(pos + i + 1)),
                None => (rest, None),
            };
            let visible = |name: &str| !(at_root && name.starts_with('$'));
            match level {
                "#" => {
                    // '#' includes the parent: "sport/#" matches "sport".
                    if let Some((topic, message, _)) = &node.message {
                        f(topic, message);
                    }
                    subtree.extend(
                        node.children
                            .iter()
                            .filter(|(name, _)| visible(name))
                            .map(|(_, child)| child),
                    );
                    while let Some(node) = subtree.pop() {
                        if let Some((topic, message, _)) = &node.message {
                            f(topic, message);
                        }
                        subtree.extend(node.children.values());
                    }
                }
                "+" => {
                    for (name, child) in node.children.iter() {
                        if visible(name) {
                            stack.push((child, next));
                        }
                    }
                }
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, next));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn matching(store: &RetainedStore<u32>, filter: &str) -> Vec<String> {
        let mut topics = Vec::new();
        store.for_each_match(&TopicFilter::try_from(filter).unwrap(), |t, _| {
            topics.push(t.to_string())
        });
        topics.sort();
        topics
    }

    fn store_of(topics: &[&str]) -> RetainedStore<u32> {
        let mut store = RetainedStore::new(100, u64::MAX);
        for (i, t) in topics.iter().enumerate() {
            store.set(name(t), i as u32, 1).unwrap();
        }
        store
    }

    #[test]
    fn set_replaces_the_retained_message_of_a_topic() {
        // [MQTT-3.3.1-5]: the new message replaces any existing one.
        let mut store = RetainedStore::new(10, u64::MAX);
        assert_eq!(store.set(name("a/b"), 1, 1), Ok(None));
        assert_eq!(store.set(name("a/b"), 2, 1), Ok(Some(1)));
        assert_eq!(store.get(&name("a/b")), Some(&2));
        assert_eq!(store.get(&name("a")), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn clear_removes_the_message_and_prunes_nodes() {
        // [MQTT-3.3.1-10]: a retained PUBLISH with empty payload removes it.
        let mut store = store_of(&["a/b/c", "a", "x"]);
        assert_eq!(store.clear(&name("a/b/c")), Some(0));
        assert_eq!(store.clear(&name("a/b/c")), None);
        assert_eq!(store.clear(&name("a/b")), None);
        assert!(store.root.children.get("a").unwrap().children.is_empty());
        assert_eq!(store.clear(&name("a")), Some(1));
        assert_eq!(store.clear(&name("x")), Some(2));
        assert!(store.is_empty());
        assert!(store.root.is_empty());
    }

    #[test]
    fn full_store_refuses_new_topics_but_replaces_existing() {
        let mut store = RetainedStore::new(2, u64::MAX);
        store.set(name("a"), 1, 1).unwrap();
        store.set(name("b"), 2, 1).unwrap();
        let err = store.set(name("c"), 3, 1).unwrap_err();
        assert_eq!(err, RetainedError::Full { len_max: 2 });
        assert_eq!(err.reason_code(), ReasonCode::QuotaExceeded);
        assert_eq!(store.get(&name("c")), None);
        assert!(
            store.root.children.get("c").is_none(),
            "refusal leaves no node"
        );
        assert_eq!(store.set(name("a"), 10, 1), Ok(Some(1)));
        store.clear(&name("b"));
        assert_eq!(store.set(name("c"), 3, 1), Ok(None));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn byte_cap_refuses_what_would_pass_it_and_clears_give_bytes_back() {
        // 100,000 retained messages of 8 KiB took 1.07 GB: bytes are
        // bounded as well as topics.
        let mut store = RetainedStore::new(1000, 100);
        assert_eq!(store.set(name("a"), 1, 60), Ok(None));
        let err = store.set(name("b"), 2, 41).unwrap_err();
        assert_eq!(err, RetainedError::FullBytes { bytes_max: 100 });
        assert_eq!(err.reason_code(), ReasonCode::QuotaExceeded);
        assert!(
            store.root.children.get("b").is_none(),
            "refusal leaves no node"
        );
        // A replacement that would pass the cap keeps the old message.
        assert!(store.set(name("a"), 3, 101).is_err());
        assert_eq!(store.get(&name("a")), Some(&1));
        // One that fits, or shrinks, is stored.
        assert_eq!(store.set(name("a"), 4, 100), Ok(Some(1)));
        assert_eq!(store.set(name("a"), 5, 10), Ok(Some(4)));
        assert_eq!(store.set(name("b"), 2, 90), Ok(None));
        assert_eq!(store.bytes(), 100);
        store.clear(&name("a"));
        assert_eq!(store.bytes(), 90);
        assert_eq!(store.set(name("c"), 6, 10), Ok(None));
        assert_eq!(store.bytes(), 100);
    }

    #[test]
    fn literal_filter_matches_only_its_topic() {
        let store = store_of(&["a/b", "a/b/c", "a", "a//b"]);
        assert_eq!(matching(&store, "a/b"), ["a/b"]);
        assert_eq!(matching(&store, "a//b"), ["a//b"]);
        assert!(matching(&store, "a/c").is_empty());
    }

    #[test]
    fn multi_level_wildcard_matches_parent_and_descendants() {
        // §4.7.1.2
        let store = store_of(&[
            "sport",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player2",
            "other",
        ]);
        assert_eq!(
            matching(&store, "sport/tennis/player1/#"),
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon"
            ]
        );
        assert_eq!(matching(&store, "sport/#").len(), 5);
        assert_eq!(matching(&store, "#").len(), 6);
    }

    #[test]
    fn single_level_wildcard_matches_one_level() {
        // §4.7.1.3
        let store = store_of(&[
            "sport",
            "sport/",
            "/finance",
            "finance",
            "sport/tennis/player1",
        ]);
        assert_eq!(matching(&store, "sport/+"), ["sport/"]);
        assert_eq!(matching(&store, "+/+"), ["/finance", "sport/"]);
        assert_eq!(matching(&store, "/+"), ["/finance"]);
        assert_eq!(matching(&store, "+"), ["finance", "sport"]);
        assert_eq!(matching(&store, "sport/tennis/+"), ["sport/tennis/player1"]);
    }

    #[test]
    fn wildcard_first_level_skips_dollar_topics() {
        // [MQTT-4.7.2-1]
        let store = store_of(&["$SYS/monitor/Clients", "$SYS", "a/$SYS", "plain"]);
        assert_eq!(matching(&store, "#"), ["a/$SYS", "plain"]);
        assert_eq!(matching(&store, "+/monitor/Clients"), Vec::<String>::new());
        assert_eq!(matching(&store, "+"), ["plain"]);
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS", "$SYS/monitor/Clients"]);
        assert_eq!(matching(&store, "+/$SYS"), ["a/$SYS"]);
    }

    #[test]
    fn a_topic_past_the_level_limit_is_refused() {
        // A 1-byte message on a 65,535-byte topic of '/' made 32,768 nodes
        // (~140 bytes each) counted as 65 KB; now the levels are bounded.
        let at_limit = "/".repeat(TOPIC_LEVELS_MAX - 1);
        let past = "/".repeat(TOPIC_LEVELS_MAX);
        let mut store = RetainedStore::new(4, u64::MAX);
        assert_eq!(store.set(name(&at_limit), 1, 1), Ok(None));
        let refused = store.set(name(&past), 2, 1);
        assert_eq!(
            refused,
            Err(RetainedError::TooManyLevels {
                levels_max: TOPIC_LEVELS_MAX
            })
        );
        assert_eq!(
            refused.map_err(RetainedError::reason_code),
            Err(ReasonCode::QuotaExceeded)
        );
        assert_eq!(store.len(), 1);
        assert_eq!(matching(&store, "#").len(), 1);
    }

    #[test]
    fn deep_topics_and_filters_do_not_overflow_the_stack() {
        let deep = "/".repeat(TOPIC_LEVELS_MAX - 1);
        let mut store = RetainedStore::new(4, u64::MAX);
        store.set(name(&deep), 1, 1).unwrap();
        assert_eq!(matching(&store, "#").len(), 1);
        assert_eq!(matching(&store, &deep).len(), 1);
        // A filter deeper than anything stored walks without recursion.
        assert!(matching(&store, &"+/".repeat(32767)).is_empty());
        assert_eq!(store.clear(&name(&"/".repeat(32767))), None);
        assert_eq!(store.clear(&name(&deep)), Some(1));
        assert!(store.root.is_empty());
        store.set(name(&deep), 1, 1).unwrap();
        drop(store);
    }
}
