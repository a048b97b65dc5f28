//! Route replication between cluster nodes (issue 17, docs/CLUSTER.md): which
//! topic filters have subscribers on which node, so that a publish crosses
//! once to each node that needs it. A node owns its routes and streams
//! versioned deltas `(node, incarnation, seq, ops)`. A peer applies them in
//! order; on a gap or a digest that disagrees it asks for a snapshot; it
//! withdraws a dead node's routes, fenced by incarnation. None of it goes
//! through consensus: only a route's owner knows it. Sans-io.

use bytestring::ByteString;
use hashbrown::{HashMap, HashSet};
use smallvec::SmallVec;

use crate::topic::{SubscriptionTrie, TopicFilter, TopicName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// One life of a node: a restart takes a larger one, so what a previous
/// life sent can be told apart and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Incarnation(pub u64);

/// A change of one node's route set. Applying one is idempotent, and
/// applying a sequence leaves each filter as its last op says, so a delta
/// replayed over a snapshot that already holds it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    Add(TopicFilter),
    Remove(TopicFilter),
}

/// What nodes tell each other about routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMsg {
    /// The changes after `seq - 1`, in order.
    Delta {
        from: NodeId,
        incarnation: Incarnation,
        seq: u64,
        ops: Vec<RouteOp>,
    },
    /// The whole set as of `seq` (possibly with changes of `seq + 1` already
    /// in: harmless, see `RouteOp`).
    Snapshot {
        from: NodeId,
        incarnation: Incarnation,
        seq: u64,
        filters: Vec<TopicFilter>,
    },
    /// The set's hash as of `seq`, sent now and then: a peer whose view
    /// differs asks for a snapshot (a lost delta at the end of a burst has
    /// no later delta to reveal the gap).
    Digest {
        from: NodeId,
        incarnation: Incarnation,
        seq: u64,
        hash: u64,
    },
    /// `from` wants a snapshot of the receiver's routes.
    SnapshotRequest { from: NodeId },
}

impl RouteMsg {
    /// The node the message speaks for.
    pub fn sender(&self) -> NodeId {
        match self {
            RouteMsg::Delta { from, .. }
            | RouteMsg::Snapshot { from, .. }
            | RouteMsg::Digest { from, .. }
            | RouteMsg::SnapshotRequest { from } => *from,
        }
    }
}

/// A filter's contribution to a set hash: a mixed FNV-1a, summed over the
/// set so the hash does not depend on order and updates in O(1).
fn filter_hash(filter: &TopicFilter) -> u64 {
    let mut h = crate::broker::hash_of(filter.as_str());
    // splitmix64's finaliser: sums of raw FNV values collide too easily.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// This node's routes: its subscriptions counted per filter (many local
/// subscriptions share one route) and the changes not yet sent.
#[derive(Debug)]
pub struct LocalRoutes {
    node: NodeId,
    incarnation: Incarnation,
    seq: u64,
    counts: HashMap<TopicFilter, u32>,
    hash: u64,
    pending: Vec<RouteOp>,
}

impl LocalRoutes {
    pub fn new(node: NodeId, incarnation: Incarnation) -> LocalRoutes {
        LocalRoutes {
            node,
            incarnation,
            seq: 0,
            counts: HashMap::new(),
            hash: 0,
            pending: Vec::new(),
        }
    }

    /// A local subscription to `filter` was added.
    pub fn subscribed(&mut self, filter: &TopicFilter) {
        let count = self.counts.entry(filter.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.hash = self.hash.wrapping_add(filter_hash(filter));
            self.pending.push(RouteOp::Add(filter.clone()));
        }
    }

    /// A local subscription to `filter` went.
    pub fn unsubscribed(&mut self, filter: &TopicFilter) {
        let Some(count) = self.counts.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(filter);
            self.hash = self.hash.wrapping_sub(filter_hash(filter));
            self.pending.push(RouteOp::Remove(filter.clone()));
        }
    }

    /// The changes since the last delta, as the next one (to every peer).
    pub fn take_delta(&mut self) -> Option<RouteMsg> {
        if self.pending.is_empty() {
            return None;
        }
        self.seq += 1;
        Some(RouteMsg::Delta {
            from: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
            ops: std::mem::take(&mut self.pending),
        })
    }

    /// The whole set, for a peer that asked.
    pub fn snapshot(&self) -> RouteMsg {
        let mut filters: Vec<TopicFilter> = self.counts.keys().cloned().collect();
        filters.sort();
        RouteMsg::Snapshot {
            from: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
            filters,
        }
    }

    /// The pending delta (if any) and a digest after it, to every peer.
    pub fn digest(&mut self) -> Vec<RouteMsg> {
        let mut out: Vec<RouteMsg> = self.take_delta().into_iter().collect();
        out.push(RouteMsg::Digest {
            from: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
            hash: self.hash,
        });
        out
    }

    /// The filters with subscribers here.
    pub fn filters(&self) -> Vec<TopicFilter> {
        let mut f: Vec<TopicFilter> = self.counts.keys().cloned().collect();
        f.sort();
        f
    }
}

#[derive(Debug)]
struct PeerView {
    incarnation: Incarnation,
    seq: u64,
    filters: HashSet<TopicFilter>,
    hash: u64,
    /// A snapshot was asked for; deltas wait for it.
    awaiting: bool,
    /// Declared dead at `incarnation`: nothing of it is accepted again.
    down: bool,
}

/// Every peer's routes as this node knows them, and the index a publish is
/// matched against to find the nodes it must cross to.
#[derive(Debug, Default)]
pub struct RemoteRoutes {
    peers: HashMap<NodeId, PeerView>,
    index: SubscriptionTrie<NodeId, ()>,
    /// Shared subscriptions (`$share/{group}/{filter}` routes), by their
    /// filter: which nodes have members of which group.
    shared: SubscriptionTrie<(NodeId, ByteString), ByteString>,
}

/// A route for the members of a share group on a node: the group and the
/// filter (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2).
pub fn share_route(group: &str, filter: &TopicFilter) -> Option<TopicFilter> {
    TopicFilter::try_from(format!("{SHARE_PREFIX}{group}/{}", filter.as_str()).as_str()).ok()
}

const SHARE_PREFIX: &str = "$share/";

/// The group and filter of a share route.
fn split_share(route: &TopicFilter) -> Option<(ByteString, TopicFilter)> {
    let rest = route.as_str().strip_prefix(SHARE_PREFIX)?;
    let (group, filter) = rest.split_once('/')?;
    let filter = TopicFilter::try_from(filter).ok()?;
    Some((ByteString::from(group), filter))
}

impl RemoteRoutes {
    pub fn new() -> RemoteRoutes {
        RemoteRoutes::default()
    }

    /// Applies a message from a peer; returns what to send back to it, if
    /// anything (a snapshot request). `SnapshotRequest`s are for the
    /// caller's `LocalRoutes` and are ignored here.
    pub fn apply(&mut self, me: NodeId, msg: RouteMsg) -> Option<(NodeId, RouteMsg)> {
        let ask = |from: NodeId| Some((from, RouteMsg::SnapshotRequest { from: me }));
        match msg {
            RouteMsg::Delta {
                from,
                incarnation,
                seq,
                ops,
            } => {
                let known = self.view(from, incarnation)?.incarnation;
                if known < incarnation {
                    // A new life starts empty: its first delta applies to
                    // nothing; a later one means we missed the start.
                    self.reset(from, incarnation);
                    if seq != 1 {
                        return self.await_snapshot(from).then(|| ask(from)).flatten();
                    }
                }
                let view = self.peers.get(&from)?;
                if view.awaiting || seq <= view.seq {
                    return None;
                }
                if seq != view.seq + 1 {
                    // A gap: something was lost on the way.
                    return self.await_snapshot(from).then(|| ask(from)).flatten();
                }
                for op in ops {
                    match op {
                        RouteOp::Add(f) => self.add(from, f),
                        RouteOp::Remove(f) => self.remove(from, &f),
                    }
                }
                if let Some(view) = self.peers.get_mut(&from) {
                    view.seq = seq;
                }
                None
            }
            RouteMsg::Snapshot {
                from,
                incarnation,
                seq,
                filters,
            } => {
                let view = self.view(from, incarnation)?;
                // Older than what is applied: a duplicate answer.
                if view.incarnation == incarnation && seq < view.seq {
                    return None;
                }
                self.reset(from, incarnation);
                for f in filters {
                    self.add(from, f);
                }
                if let Some(view) = self.peers.get_mut(&from) {
                    view.seq = seq;
                }
                None
            }
            RouteMsg::Digest {
                from,
                incarnation,
                seq,
                hash,
            } => {
                let view = self.view(from, incarnation)?;
                let stale = view.incarnation < incarnation
                    || seq > view.seq
                    || (seq == view.seq && hash != view.hash)
                    || view.awaiting;
                // Asked again while awaiting: the request or the snapshot
                // may have been lost with a link.
                if stale {
                    self.await_snapshot(from);
                    return ask(from);
                }
                None
            }
            RouteMsg::SnapshotRequest { .. } => None,
        }
    }

    /// The view of `from`, made on first contact; `None` when `incarnation`
    /// is older than what is known, or the node was declared dead in it.
    fn view(&mut self, from: NodeId, incarnation: Incarnation) -> Option<&PeerView> {
        let view = self.peers.entry(from).or_insert_with(|| PeerView {
            incarnation,
            seq: 0,
            filters: HashSet::new(),
            hash: 0,
            awaiting: false,
            down: false,
        });
        let fenced =
            incarnation < view.incarnation || (view.down && incarnation == view.incarnation);
        (!fenced).then_some(&*view)
    }

    /// Marks `from` as awaiting a snapshot; true when that is news.
    fn await_snapshot(&mut self, from: NodeId) -> bool {
        self.peers
            .get_mut(&from)
            .is_some_and(|v| !std::mem::replace(&mut v.awaiting, true))
    }

    /// Forgets `from`'s routes and starts `incarnation` empty.
    fn reset(&mut self, from: NodeId, incarnation: Incarnation) {
        let old: Vec<TopicFilter> = self
            .peers
            .get(&from)
            .map(|v| v.filters.iter().cloned().collect())
            .unwrap_or_default();
        for f in &old {
            self.remove(from, f);
        }
        if let Some(view) = self.peers.get_mut(&from) {
            view.incarnation = incarnation;
            view.seq = 0;
            view.awaiting = false;
            view.down = false;
        }
    }

    fn add(&mut self, from: NodeId, filter: TopicFilter) {
        let Some(view) = self.peers.get_mut(&from) else {
            return;
        };
        if view.filters.insert(filter.clone()) {
            view.hash = view.hash.wrapping_add(filter_hash(&filter));
            match split_share(&filter) {
                Some((group, inner)) => {
                    let route = ByteString::from(filter.as_str());
                    self.shared.insert(&inner, (from, group), route);
                }
                None => {
                    self.index.insert(&filter, from, ());
                }
            }
        }
    }

    fn remove(&mut self, from: NodeId, filter: &TopicFilter) {
        let Some(view) = self.peers.get_mut(&from) else {
            return;
        };
        if view.filters.remove(filter) {
            view.hash = view.hash.wrapping_sub(filter_hash(filter));
            match split_share(filter) {
                Some((group, inner)) => {
                    self.shared.remove(&inner, &(from, group));
                }
                None => {
                    self.index.remove(filter, &from);
                }
            }
        }
    }

    /// For each share group with members on other nodes whose filter
    /// matches `topic`: the group's route (`$share/{group}/{filter}`) and
    /// those nodes.
    pub fn shared_for(&self, topic: &TopicName) -> Vec<(ByteString, SmallVec<[NodeId; 4]>)> {
        let mut out: Vec<(ByteString, SmallVec<[NodeId; 4]>)> = Vec::new();
        // PERF: most clusters have no share groups; no walk per publish.
        if self.shared.is_empty() {
            return out;
        }
        self.shared.for_each_match(topic, |(node, _), route| {
            match out.iter_mut().find(|(r, _)| r == route) {
                Some((_, nodes)) => {
                    if !nodes.contains(node) {
                        nodes.push(*node);
                    }
                }
                None => out.push((route.clone(), smallvec::smallvec![*node])),
            }
        });
        out
    }

    /// `node` died in `incarnation` (the membership says so): its routes go
    /// at once, and nothing it sent in that life counts any more.
    pub fn node_down(&mut self, node: NodeId, incarnation: Incarnation) {
        if self.view(node, incarnation).is_none() {
            return;
        }
        self.reset(node, incarnation);
        if let Some(view) = self.peers.get_mut(&node) {
            view.down = true;
        }
    }

    /// Forgets `node` altogether: its routes go, and the next message of any
    /// life starts a fresh view. For a runtime that scopes a peer's route
    /// stream to one link (each new link starts with a snapshot, and the old
    /// link's messages can no longer arrive).
    pub fn forget(&mut self, node: NodeId) {
        let old: Vec<TopicFilter> = self
            .peers
            .get(&node)
            .map(|v| v.filters.iter().cloned().collect())
            .unwrap_or_default();
        for f in &old {
            self.remove(node, f);
        }
        self.peers.remove(&node);
    }

    /// The nodes with a subscriber whose filter matches `topic`, once each.
    pub fn nodes_for(&self, topic: &TopicName) -> SmallVec<[NodeId; 4]> {
        let mut nodes: SmallVec<[NodeId; 4]> = SmallVec::new();
        self.index.for_each_match(topic, |node, ()| {
            if !nodes.contains(node) {
                nodes.push(*node);
            }
        });
        nodes
    }

    /// `node`'s routes as known here, sorted (inspection and tests).
    pub fn routes_of(&self, node: NodeId) -> Vec<TopicFilter> {
        let mut f: Vec<TopicFilter> = self
            .peers
            .get(&node)
            .map(|v| v.filters.iter().cloned().collect())
            .unwrap_or_default();
        f.sort();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap_or_else(|_| unreachable!())
    }

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn deltas_apply_in_order_and_a_gap_asks_for_a_snapshot() {
        let mut a = LocalRoutes::new(A, Incarnation(1));
        let mut b = RemoteRoutes::new();
        a.subscribed(&f("x/+"));
        a.subscribed(&f("x/+")); // a second subscriber shares the route
        let d1 = a.take_delta().unwrap_or_else(|| unreachable!());
        assert_eq!(b.apply(B, d1), None);
        let topic = TopicName::try_from("x/1").unwrap_or_else(|_| unreachable!());
        assert_eq!(b.nodes_for(&topic).as_slice(), &[A]);
        a.unsubscribed(&f("x/+"));
        assert!(a.take_delta().is_none(), "one subscriber is left");
        a.subscribed(&f("y"));
        let _lost = a.take_delta();
        a.subscribed(&f("z"));
        let d3 = a.take_delta().unwrap_or_else(|| unreachable!());
        assert_eq!(
            b.apply(B, d3),
            Some((A, RouteMsg::SnapshotRequest { from: B }))
        );
        assert_eq!(b.apply(B, a.snapshot()), None);
        assert_eq!(b.routes_of(A), a.filters());
    }

    #[test]
    fn an_older_life_is_fenced_and_a_dead_node_withdrawn() {
        let mut b = RemoteRoutes::new();
        let mut a2 = LocalRoutes::new(A, Incarnation(2));
        a2.subscribed(&f("new"));
        b.apply(B, a2.take_delta().unwrap_or_else(|| unreachable!()));
        // The previous life's messages, still in flight: a snapshot and a
        // delta that would follow on from the view's sequence number.
        let mut a1 = LocalRoutes::new(A, Incarnation(1));
        a1.subscribed(&f("old"));
        assert_eq!(b.apply(B, a1.snapshot()), None);
        a1.take_delta();
        a1.subscribed(&f("older"));
        assert_eq!(
            b.apply(B, a1.take_delta().unwrap_or_else(|| unreachable!())),
            None
        );
        assert_eq!(b.routes_of(A), vec![f("new")]);
        b.node_down(A, Incarnation(2));
        assert!(b.routes_of(A).is_empty());
        // Nothing of the dead life counts any more, not even a snapshot.
        a2.subscribed(&f("late"));
        assert_eq!(b.apply(B, a2.snapshot()), None);
        assert!(b.routes_of(A).is_empty());
        // Its next life does.
        let mut a3 = LocalRoutes::new(A, Incarnation(3));
        a3.subscribed(&f("again"));
        b.apply(B, a3.take_delta().unwrap_or_else(|| unreachable!()));
        assert_eq!(b.routes_of(A), vec![f("again")]);
    }

    #[test]
    fn a_digest_that_disagrees_at_the_same_seq_asks_for_a_snapshot() {
        let mut a = LocalRoutes::new(A, Incarnation(1));
        let mut b = RemoteRoutes::new();
        a.subscribed(&f("t"));
        a.take_delta();
        // A delta of the same number saying more than `a` holds (a bug or
        // a corruption the sequence numbers cannot show).
        let wrong = RouteMsg::Delta {
            from: A,
            incarnation: Incarnation(1),
            seq: 1,
            ops: vec![RouteOp::Add(f("t")), RouteOp::Add(f("u"))],
        };
        b.apply(B, wrong);
        let digest = a.digest().pop().unwrap_or_else(|| unreachable!());
        assert_eq!(
            b.apply(B, digest),
            Some((A, RouteMsg::SnapshotRequest { from: B }))
        );
        b.apply(B, a.snapshot());
        assert_eq!(b.routes_of(A), vec![f("t")]);
    }

    #[test]
    fn a_digest_reveals_a_lost_last_delta() {
        let mut a = LocalRoutes::new(A, Incarnation(1));
        let mut b = RemoteRoutes::new();
        a.subscribed(&f("t"));
        let _lost = a.take_delta();
        let msgs = a.digest();
        assert_eq!(msgs.len(), 1, "nothing pending: the digest alone");
        assert_eq!(
            b.apply(B, msgs[0].clone()),
            Some((A, RouteMsg::SnapshotRequest { from: B }))
        );
        b.apply(B, a.snapshot());
        assert_eq!(b.apply(B, a.digest()[0].clone()), None);
        assert_eq!(b.routes_of(A), vec![f("t")]);
    }
}
