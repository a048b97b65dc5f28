//! The route replication protocol (core/src/cluster/routes.rs) in a
//! deterministic simulation: nodes subscribe and unsubscribe at random,
//! links between them are FIFO but break (everything in flight is lost),
//! nodes restart with a new incarnation (their routes start empty and their
//! peers may be told they died). Once the faults stop and a few digest rounds
//! run, every node's view of every peer must equal that peer's own routes,
//! and a publish must find exactly the nodes with a matching filter. Seeds
//! are printed on failure; `ROUTES_SEEDS=n` runs more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;

use shardmq_core::cluster::{Incarnation, LocalRoutes, NodeId, RemoteRoutes, RouteMsg};
use shardmq_core::topic::{TopicFilter, TopicName};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const FILTERS: &[&str] = &["a/#", "a/+/c", "a/b/c", "+/b/#", "d", "d/#", "$SYS/x", "#"];
const TOPICS: &[&str] = &["a/b/c", "a/x/c", "d", "d/e", "z", "$SYS/x"];

struct Node {
    id: NodeId,
    life: u64,
    local: LocalRoutes,
    remote: RemoteRoutes,
    /// The filter of each local subscription (counted by `LocalRoutes`).
    subs: Vec<&'static str>,
}

struct Cluster {
    rng: Rng,
    nodes: Vec<Node>,
    /// links[a][b]: messages from a to b, in order.
    links: Vec<Vec<VecDeque<RouteMsg>>>,
    trace: Vec<String>,
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap()
}

impl Cluster {
    fn new(seed: u64, n: usize) -> Cluster {
        let nodes = (0..n)
            .map(|i| {
                let id = NodeId(i as u32);
                Node {
                    id,
                    life: 1,
                    local: LocalRoutes::new(id, Incarnation(1)),
                    remote: RemoteRoutes::new(),
                    subs: Vec::new(),
                }
            })
            .collect();
        Cluster {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            nodes,
            links: vec![vec![VecDeque::new(); n]; n],
            trace: Vec::new(),
        }
    }

    fn broadcast(&mut self, from: usize, msg: RouteMsg) {
        for to in 0..self.nodes.len() {
            if to != from {
                self.links[from][to].push_back(msg.clone());
            }
        }
    }

    fn deliver_one(&mut self, from: usize, to: usize) {
        let Some(msg) = self.links[from][to].pop_front() else {
            return;
        };
        self.trace.push(format!("{from}->{to} {msg:?}"));
        let node = &mut self.nodes[to];
        if let RouteMsg::SnapshotRequest { .. } = msg {
            let snap = node.local.snapshot();
            self.links[to][from].push_back(snap);
            return;
        }
        if let Some((back, reply)) = node.remote.apply(node.id, msg) {
            self.links[to][back.0 as usize].push_back(reply);
        }
    }

    fn step(&mut self, faults: bool) {
        let n = self.nodes.len();
        let a = self.rng.below(n);
        match self.rng.below(if faults { 10 } else { 7 }) {
            0 | 1 => {
                let f = FILTERS[self.rng.below(FILTERS.len())];
                self.nodes[a].subs.push(f);
                self.nodes[a].local.subscribed(&filter(f));
            }
            2 => {
                let node = &mut self.nodes[a];
                if !node.subs.is_empty() {
                    let f = node.subs.swap_remove(self.rng.below(node.subs.len()));
                    node.local.unsubscribed(&filter(f));
                }
            }
            3 => {
                if let Some(d) = self.nodes[a].local.take_delta() {
                    self.broadcast(a, d);
                }
            }
            4..=6 => {
                let b = self.rng.below(n);
                if a != b {
                    self.deliver_one(a, b);
                }
            }
            7 => {
                // A link breaks: what was in flight on it is gone.
                let b = self.rng.below(n);
                self.trace.push(format!("link {a}->{b} broke"));
                self.links[a][b].clear();
            }
            8 => {
                for msg in self.nodes[a].local.digest() {
                    self.broadcast(a, msg);
                }
            }
            _ => self.restart(a),
        }
    }

    /// Node `a` restarts: new incarnation, nothing subscribed, nothing
    /// known; its links are reset. Half the time its peers are told its
    /// previous life ended (a failure detector would).
    fn restart(&mut self, a: usize) {
        let n = self.nodes.len();
        let node = &mut self.nodes[a];
        let old = Incarnation(node.life);
        node.life += 1;
        node.local = LocalRoutes::new(node.id, Incarnation(node.life));
        node.remote = RemoteRoutes::new();
        node.subs.clear();
        let id = node.id;
        self.trace
            .push(format!("node {a} restarted as life {}", node.life));
        // Half the time what the old life sent is still on its way (in
        // the peers' receive buffers) and arrives after the restart.
        if self.rng.below(2) == 0 {
            for b in 0..n {
                self.links[a][b].clear();
                self.links[b][a].clear();
            }
        }
        if self.rng.below(2) == 0 {
            for b in (0..n).filter(|&b| b != a) {
                self.nodes[b].remote.node_down(id, old);
            }
        }
    }

    /// Delivers everything in flight (replies included) until quiet.
    fn drain(&mut self) {
        let n = self.nodes.len();
        for _ in 0..100_000 {
            let busy: Vec<(usize, usize)> = (0..n)
                .flat_map(|a| (0..n).map(move |b| (a, b)))
                .filter(|&(a, b)| !self.links[a][b].is_empty())
                .collect();
            if busy.is_empty() {
                return;
            }
            let (a, b) = busy[self.rng.below(busy.len())];
            self.deliver_one(a, b);
        }
        panic!("messages never stop");
    }

    fn settle(&mut self) {
        for _ in 0..3 {
            for a in 0..self.nodes.len() {
                for msg in self.nodes[a].local.digest() {
                    self.broadcast(a, msg);
                }
            }
            self.drain();
        }
    }

    fn check(&self, seed: u64) {
        let tail = || self.trace[self.trace.len().saturating_sub(40)..].join("\n");
        for a in &self.nodes {
            for b in self.nodes.iter().filter(|b| b.id != a.id) {
                assert_eq!(
                    a.remote.routes_of(b.id),
                    b.local.filters(),
                    "seed {seed}: node {:?}'s view of {:?}; last steps:\n{}",
                    a.id,
                    b.id,
                    tail()
                );
            }
            for t in TOPICS {
                let topic = TopicName::try_from(*t).unwrap();
                let mut want: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|b| b.id != a.id)
                    .filter(|b| b.local.filters().iter().any(|f| f.matches(&topic)))
                    .map(|b| b.id)
                    .collect();
                let mut got: Vec<NodeId> = a.remote.nodes_for(&topic).to_vec();
                want.sort();
                got.sort();
                assert_eq!(got, want, "seed {seed}: {t} from {:?}", a.id);
            }
        }
    }
}

fn seeds() -> u64 {
    std::env::var("ROUTES_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

#[test]
fn views_converge_after_lost_messages_broken_links_and_restarts() {
    let mut snapshots = 0;
    for seed in 0..seeds() {
        let mut c = Cluster::new(seed, 3);
        for _ in 0..400 {
            c.step(true);
        }
        for _ in 0..200 {
            c.step(false);
        }
        c.settle();
        c.check(seed);
        snapshots += c.trace.iter().filter(|l| l.contains("Snapshot {")).count();
    }
    // The faults did cost something to repair (else this proves nothing).
    assert!(snapshots > 0);
}

#[test]
fn without_faults_deltas_alone_keep_views_exact() {
    for seed in 0..seeds() / 4 {
        let mut c = Cluster::new(seed, 4);
        for _ in 0..300 {
            c.step(false);
        }
        for a in 0..c.nodes.len() {
            if let Some(d) = c.nodes[a].local.take_delta() {
                c.broadcast(a, d);
            }
        }
        c.drain();
        // No digest was needed: nothing was lost, so no snapshot either.
        assert!(
            !c.trace.iter().any(|l| l.contains("Snapshot")),
            "seed {seed}"
        );
        c.check(seed);
    }
}
