//! Several nodes under the deterministic simulator: each node is a
//! `sim/harness.rs` broker (2, 3 and 1 shards, scripted MQTT 5 clients), and each
//! shard dials each peer over a simulated node link (in order while up; a
//! break loses everything in flight, both ways) that lands on a random
//! shard of the peer. Links break, come back on another shard, and node
//! pairs are partitioned and healed, all within `LINK_GRACE`; every link
//! event (a route delta, a batch of messages, an acknowledgement, a
//! retained sync) is a step of its own, chosen by the seed, as are the
//! nodes' own steps. What it checks, once the faults stop and everything
//! settles: every QoS 1 and 2 publish is acknowledged to its publisher, and
//! every subscriber on every node got each message exactly once, in each
//! publisher's order; nothing is invented; every node holds the same
//! retained messages after retained changes from every node. This covers `broker/cluster.rs`
//! (owed, sent again, acknowledged, and routed at each stream's home shard
//! once) as the runtime wires it (io/src/cluster/runtime.rs). `SHARDMQ_SIM_SEED=N` replays one seed,
//! `SHARDMQ_SIM_SEEDS=N` runs N.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "sim/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use harness::{seeds, Rng, Sim};
use shardmq_core::cluster::{Incarnation, NodeId, RouteMsg};
use shardmq_core::codec::QoS;
use shardmq_core::limits::ClientLimits;
use shardmq_core::session::Message;

const NODES: usize = 3;
/// Shards per node: different counts, so a stream's home (its sending
/// shard modulo the receiver's shards) is not the same number everywhere.
fn shards(node: usize) -> usize {
    [2, 3, 1][node]
}
/// The longest a link or a partition stays broken: under `LINK_GRACE`, so
/// no route is withdrawn and nothing published may be lost.
const FAULT_MAX: Duration = Duration::from_secs(4);

/// What crosses a node link.
#[derive(Debug)]
enum Wire {
    /// Acceptor to dialer: the accepting node's routes.
    Routes(RouteMsg),
    /// Dialer to acceptor: messages numbered from `first` in its stream.
    Publish {
        first: u64,
        messages: Vec<(Message, Vec<ByteString>)>,
    },
    /// Dialer to acceptor: its shard's retained messages, at link start.
    Retained(Vec<Message>),
    /// Acceptor to dialer: messages routed over this link so far.
    Ack(u64),
}

/// The link dialled from one shard of one node to a peer.
#[derive(Debug, Default)]
struct Link {
    up: bool,
    /// Its id at the accepting shard (new for each link).
    id: u64,
    /// The peer's shard that accepted it.
    on: usize,
    /// Dialer to acceptor, in order.
    out: VecDeque<Wire>,
    /// Acceptor to dialer, in order.
    back: VecDeque<Wire>,
    /// The acceptor's count of messages this link carried.
    routed: u64,
    /// The dialer's count of them acknowledged.
    acked: u64,
    /// When it broke (faults are healed by `FAULT_MAX`).
    down_at: Option<Duration>,
}

/// (dialling node, its shard, peer node).
type LinkKey = (usize, usize, usize);

struct Cluster {
    seed: u64,
    rng: Rng,
    nodes: Vec<Sim>,
    links: BTreeMap<LinkKey, Link>,
    /// Partitioned node pairs (lower first), with when they were cut.
    cut: BTreeMap<(usize, usize), Duration>,
    /// Simulated time since the start.
    elapsed: Duration,
    trace: VecDeque<String>,
    /// Faults allowed (they stop before the final settling).
    faults: bool,
    link_ids: u64,
    /// Each node's life (`Incarnation`), from 1; a restart takes the next.
    lives: Vec<u64>,
    persistent: bool,
    /// A restarted node whose clients wait for their shards' routes: the
    /// node, and per client (subscriber, publisher) the shard it goes to,
    /// until it is connected.
    starting: Option<(usize, [Option<usize>; 2])>,
}

/// The node the restart runs kill and start again (three shards, no
/// persistence: it comes back empty).
const RESTARTING: usize = 1;

/// Node `i` of a new life: its shards, part of the cluster; `now`: the
/// simulated time it starts at (a restart keeps the cluster's clock).
fn new_node(seed: u64, i: usize, persistent: bool, life: u64, now: Option<Instant>) -> Sim {
    let mut sim = if persistent {
        Sim::new_persistent(seed, shards(i), queues_persisted())
    } else {
        Sim::new(seed, shards(i), ClientLimits::default(), 10_000)
    };
    if let Some(now) = now {
        sim.now = now;
    }
    let peers: Vec<NodeId> = (0..NODES).filter(|p| *p != i).map(node_id).collect();
    sim.enable_cluster(node_id(i), life, &peers);
    sim
}

fn node_id(i: usize) -> NodeId {
    NodeId(i as u32 + 1)
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// `persistence` with every subscriber queue persisted.
fn queues_persisted() -> shardmq_core::config::Persistence {
    use shardmq_core::config::{QueuePolicy, RetainPolicy};
    shardmq_core::config::Persistence {
        size_max_bytes: std::num::NonZeroU64::new(1 << 30).expect("not zero"),
        encrypt: true,
        retain: RetainPolicy::None,
        queues: QueuePolicy::All,
        dynamic: None,
        data_dir: None,
        key_file: None,
    }
}

impl Cluster {
    fn new(seed: u64, persistent: bool) -> Cluster {
        let mut rng = Rng::new(seed);
        let nodes = (0..NODES)
            .map(|i| new_node(rng.next(), i, persistent, 1, None))
            .collect();
        let mut links = BTreeMap::new();
        for a in 0..NODES {
            for s in 0..shards(a) {
                for b in (0..NODES).filter(|b| *b != a) {
                    links.insert((a, s, b), Link::default());
                }
            }
        }
        Cluster {
            seed,
            rng,
            nodes,
            links,
            cut: BTreeMap::new(),
            elapsed: Duration::ZERO,
            trace: VecDeque::new(),
            faults: true,
            link_ids: 0,
            lives: vec![1; NODES],
            persistent,
            starting: None,
        }
    }

    /// Node `i` dies (kill -9: everything in memory is gone, its links
    /// with it) and starts again as a new life, empty, with a subscriber
    /// and a publisher of the same ids as before (clients 0 and 1).
    fn restart(&mut self, i: usize) {
        self.log(format!("restart node {i}"));
        let at = self.elapsed;
        let keys: Vec<LinkKey> = self
            .links
            .keys()
            .filter(|(a, _, b)| *a == i || *b == i)
            .copied()
            .collect();
        for key in keys {
            if key.0 == i {
                *self.links.get_mut(&key).expect("listed") = Link {
                    down_at: Some(at),
                    ..Link::default()
                };
            } else {
                self.link_down(key);
            }
        }
        self.lives[i] += 1;
        let now = self.nodes[i].now;
        let mut node = new_node(
            self.rng.next(),
            i,
            self.persistent,
            self.lives[i],
            Some(now),
        );
        node.add_client(&format!("sub-{i}"), "p");
        node.add_client(&format!("pub-{i}"), "p");
        self.nodes[i] = node;
        let (s1, s2) = (
            self.nodes[i].rng.below(shards(i)),
            self.nodes[i].rng.below(shards(i)),
        );
        self.starting = Some((i, [Some(s1), Some(s2)]));
    }

    /// The clients of a restarted node connect once it knows its peers'
    /// routes, as the runtime holds their CONNACKs until then
    /// (`cluster_routes_ready`).
    /// Each on its own shard's readiness, as the runtime decides per shard.
    fn connect_when_ready(&mut self) {
        let Some((i, mut waiting)) = self.starting else {
            return;
        };
        let node = &mut self.nodes[i];
        let now = node.now;
        for (client, shard) in waiting.iter_mut().enumerate() {
            let Some(s) = *shard else { continue };
            if !node.shards[s].cluster_routes_ready(now) {
                continue;
            }
            *shard = None;
            node.connect(client, s, true, 0);
            node.quiesce();
            if client == 0 {
                node.subscribe(0, "t/#", QoS::ExactlyOnce);
            }
            self.trace
                .push_back(format!("node {i}: client {client} back on shard {s}"));
        }
        self.starting = Some((i, waiting)).filter(|(_, w)| w.iter().any(Option::is_some));
    }

    fn log(&mut self, line: String) {
        if self.trace.len() == 200 {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&self, why: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "{why}\nseed {} (replay: SHARDMQ_SIM_SEED={})\nlast link steps:\n  {}",
            self.seed,
            self.seed,
            trace.join("\n  ")
        );
    }

    /// Brings link `key` up on a random shard of the peer, as the runtime's
    /// dial and accept do: the acceptor's pending route changes go to its
    /// other links first, then the new link gets a snapshot; the dialer
    /// sends its retained messages, then what it owes the peer.
    fn link_up(&mut self, key: LinkKey) {
        let (a, s, b) = key;
        let on = self.rng.below(shards(b));
        self.pump_routes(b, on);
        let snapshot = self.nodes[b].shards[on].cluster_route_snapshot();
        let retained: Vec<Message> = self.nodes[a].shards[s]
            .cluster_retained_sync()
            .iter()
            .map(|m| (**m).clone())
            .collect();
        self.link_ids += 1;
        let id = self.link_ids;
        let link = self.links.get_mut(&key).expect("every link is listed");
        *link = Link {
            up: true,
            id,
            on,
            ..Link::default()
        };
        link.back.extend(snapshot.map(Wire::Routes));
        link.out.push_back(Wire::Retained(retained));
        self.nodes[a].shards[s].cluster_link_up(node_id(b));
        self.nodes[a].drain(s);
        self.log(format!("link {a}.{s}->{b} up on {b}.{on}"));
    }

    /// Link `key` breaks: what is in flight is lost both ways.
    fn link_down(&mut self, key: LinkKey) {
        let (a, s, b) = key;
        let at = self.elapsed;
        let link = self.links.get_mut(&key).expect("every link is listed");
        if !link.up {
            return;
        }
        *link = Link {
            down_at: Some(at),
            ..Link::default()
        };
        let now = self.nodes[a].now;
        self.nodes[a].shards[s].cluster_link_down(node_id(b), now);
        self.nodes[a].drain(s);
        self.log(format!("link {a}.{s}->{b} down"));
    }

    /// Link `id`, accepted by node `b` shard `on`, acknowledges `count`
    /// more messages routed (if it is still up).
    fn acknowledge(&mut self, b: usize, on: usize, id: u64, count: u64) {
        if count == 0 {
            return;
        }
        for ((_, _, peer), link) in self.links.iter_mut() {
            if *peer == b && link.up && link.on == on && link.id == id {
                link.routed += count;
                link.back.push_back(Wire::Ack(link.routed));
            }
        }
    }

    /// Node `b` shard `on`'s route changes, to every link it accepted, and
    /// what the streams' homes routed for them.
    fn pump_routes(&mut self, b: usize, on: usize) -> bool {
        let mut any = false;
        for (id, count) in self.nodes[b].shards[on].poll_cluster_routed() {
            any = true;
            self.acknowledge(b, on, id, count);
        }
        while let Some(delta) = self.nodes[b].shards[on].poll_route_delta() {
            any = true;
            for ((_, _, peer), link) in self.links.iter_mut() {
                if *peer == b && link.up && link.on == on {
                    link.back.push_back(Wire::Routes(delta.clone()));
                }
            }
        }
        any
    }

    /// What node `a` shard `s` owes each peer whose link is up, onto it.
    fn pump_owed(&mut self, a: usize, s: usize) -> bool {
        let mut any = false;
        for b in (0..NODES).filter(|b| *b != a) {
            if !self.links[&(a, s, b)].up {
                continue;
            }
            // Another peer's link broke: the retained messages again, as
            // the runtime's writer does.
            let now = self.nodes[a].now;
            if self.nodes[a].shards[s].cluster_take_resync(node_id(b), now) {
                any = true;
                let retained = self.nodes[a].shards[s]
                    .cluster_retained_sync()
                    .iter()
                    .map(|m| (**m).clone())
                    .collect();
                let link = self.links.get_mut(&(a, s, b)).expect("listed");
                link.out.push_back(Wire::Retained(retained));
            }
            let (first, batch) = self.nodes[a].shards[s].poll_cluster(node_id(b));
            self.nodes[a].drain(s);
            if batch.is_empty() {
                continue;
            }
            any = true;
            let messages = batch
                .iter()
                .map(|(m, g)| ((**m).clone(), g.clone()))
                .collect();
            let link = self.links.get_mut(&(a, s, b)).expect("listed");
            link.out.push_back(Wire::Publish { first, messages });
        }
        any
    }

    /// The next thing on link `key`, one way.
    fn deliver(&mut self, key: LinkKey, to_acceptor: bool) {
        let (a, s, b) = key;
        let link = self.links.get_mut(&key).expect("listed");
        let on = link.on;
        let wire = if to_acceptor {
            link.out.pop_front()
        } else {
            link.back.pop_front()
        };
        let Some(wire) = wire else { return };
        match wire {
            Wire::Publish { first, messages } => {
                let id = link.id;
                self.log(format!(
                    "link {a}.{s}->{b}.{on}: {} from #{first}",
                    messages.len()
                ));
                let now = self.nodes[b].now;
                let stream = (node_id(a), Incarnation(self.lives[a]), s as u16);
                for (m, _) in messages.iter().filter(|(m, _)| m.retain) {
                    self.log(format!("  {}={:?}@{}", m.topic, m.payload, m.retain_stamp));
                }
                let routed = self.nodes[b].shards[on]
                    .handle_cluster_publish(now, id, stream, first, messages);
                self.nodes[b].drain(on);
                self.acknowledge(b, on, id, routed);
            }
            Wire::Retained(messages) => {
                let held: Vec<String> = messages
                    .iter()
                    .map(|m| format!("{}={:?}@{}", m.topic, m.payload, m.retain_stamp))
                    .collect();
                self.log(format!("link {a}.{s}->{b}.{on}: retained {held:?}"));
                let now = self.nodes[b].now;
                self.nodes[b].shards[on].handle_cluster_retained(messages, now);
                self.nodes[b].drain(on);
            }
            Wire::Routes(msg) => {
                self.log(format!("link {a}.{s}<-{b}: routes"));
                self.nodes[a].shards[s].handle_cluster_routes(node_id(b), msg);
                self.nodes[a].drain(s);
            }
            Wire::Ack(n) => {
                if n > link.acked {
                    let count = (n - link.acked) as usize;
                    link.acked = n;
                    self.log(format!("link {a}.{s}<-{b}: ack {count}"));
                    self.nodes[a].shards[s].cluster_acked(node_id(b), count);
                    self.nodes[a].drain(s);
                }
            }
        }
    }

    /// One link-side step chosen by the seed; false when none is left.
    fn link_step(&mut self) -> bool {
        self.connect_when_ready();
        let mut choices: Vec<(u8, LinkKey, bool)> = Vec::new();
        for (key, link) in &self.links {
            if link.up {
                if !link.out.is_empty() {
                    choices.push((0, *key, true));
                }
                if !link.back.is_empty() {
                    choices.push((0, *key, false));
                }
            } else if !self.cut.contains_key(&pair(key.0, key.2)) {
                choices.push((1, *key, false));
            }
        }
        for a in 0..NODES {
            for s in 0..shards(a) {
                choices.push((2, (a, s, 0), false));
            }
        }
        // Pumps always have a choice; they count as work only if they move
        // something.
        for _ in 0..4 {
            let choice = choices[self.rng.below(choices.len())];
            if self.take(choice) {
                return true;
            }
        }
        // Nothing picked moved: sweep, so "nothing left" is exact.
        let mut moved = false;
        for choice in choices {
            moved |= self.take(choice);
        }
        moved
    }

    /// Does one link-side choice; whether anything moved.
    fn take(&mut self, (kind, key, way): (u8, LinkKey, bool)) -> bool {
        match kind {
            0 => self.deliver(key, way),
            1 => self.link_up(key),
            _ => return self.pump_routes(key.0, key.1) | self.pump_owed(key.0, key.1),
        }
        true
    }

    /// Heals what has been broken for `FAULT_MAX`: cuts end and links
    /// come back, well within `LINK_GRACE`.
    fn heal_old(&mut self) {
        let now = self.elapsed;
        let old = |at: &Duration| now.saturating_sub(*at) >= FAULT_MAX;
        let healed: Vec<(usize, usize)> = self
            .cut
            .iter()
            .filter(|(_, at)| old(at))
            .map(|(p, _)| *p)
            .collect();
        for p in healed {
            self.cut.remove(&p);
            self.log(format!("heal {p:?}"));
        }
        let stale: Vec<LinkKey> = self
            .links
            .iter()
            .filter(|(k, l)| {
                !l.up
                    && l.down_at.is_some_and(|at| old(&at))
                    && !self.cut.contains_key(&pair(k.0, k.2))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.link_up(key);
        }
    }

    /// A fault, while faults are allowed: a link breaks, or a node pair is
    /// cut or healed.
    fn fault(&mut self) {
        let now = self.elapsed;
        if !self.faults {
            return;
        }
        match self.rng.below(6) {
            0 => {
                let (a, b) = (self.rng.below(NODES), self.rng.below(NODES));
                if a != b && !self.cut.contains_key(&pair(a, b)) {
                    self.log(format!("cut {a} | {b}"));
                    self.cut.insert(pair(a, b), now);
                    let keys: Vec<LinkKey> = self
                        .links
                        .keys()
                        .filter(|(x, _, y)| pair(*x, *y) == pair(a, b))
                        .copied()
                        .collect();
                    for key in keys {
                        self.link_down(key);
                    }
                }
            }
            1 => {
                if let Some(p) = self.cut.keys().next().copied() {
                    self.cut.remove(&p);
                    self.log(format!("heal {p:?}"));
                }
            }
            _ => {
                let up: Vec<LinkKey> = self
                    .links
                    .iter()
                    .filter(|(_, l)| l.up)
                    .map(|(k, _)| *k)
                    .collect();
                if !up.is_empty() {
                    let key = up[self.rng.below(up.len())];
                    self.link_down(key);
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.heal_old();
        self.elapsed += by;
        for node in &mut self.nodes {
            node.advance(by);
        }
    }

    /// Node steps and link steps until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..200_000 {
            let mut moved = false;
            for i in 0..NODES {
                while self.nodes[i].step() {
                    moved = true;
                }
            }
            moved |= self.link_step();
            if !moved {
                return;
            }
        }
        self.fail("no quiescence within 200,000 rounds");
    }
}

/// Publishers on every node send numbered QoS 1 and 2 messages while links
/// break and node pairs are cut; subscribers on every node must get each
/// exactly once, in order per publisher, once the faults stop.
#[test]
fn messages_cross_nodes_once_in_order_through_broken_links_and_partitions() {
    for seed in seeds(150) {
        run(seed, false, false);
    }
}

/// Node 2 is killed and started again (empty: no persistence) a few times
/// among the faults. What its publisher saw acknowledged in an earlier
/// life reaches every subscriber that lived through it; what was not
/// acknowledged may be lost, never duplicated or reordered; its new
/// subscriber gets no message twice and each publisher's in order; the
/// peers owe it nothing once it is back, and agree with it on every
/// retained topic (set from every node, the restarting one too).
#[test]
fn a_node_that_restarts_empty_loses_only_what_was_not_acknowledged() {
    for seed in seeds(150) {
        run(seed, false, true);
    }
}

/// The same with persisted subscriber queues on every node, and one more
/// rule checked after every step: a message its publisher saw
/// acknowledged is, for every subscriber on every node, already received
/// or durable in that subscriber's queue on disk, so it would survive that
/// node's crash (docs/PERSISTENCE.md's contract, across nodes).
#[test]
fn with_persistence_an_acknowledged_message_is_on_every_subscribers_disk() {
    for seed in seeds(100) {
        run(seed, true, false);
    }
}

/// Messages node `i`'s publisher sent in an earlier life without seeing
/// them acknowledged (they may be lost), the count it sent before its
/// current life, and where each later life's messages start.
#[derive(Default, Clone)]
struct Lives {
    unacked: Vec<Bytes>,
    before: usize,
    restarts: usize,
    starts: Vec<usize>,
}

impl Lives {
    /// The life (0 first) of the publisher's `n`th message.
    fn of(&self, n: usize) -> usize {
        self.starts.iter().filter(|s| **s <= n).count()
    }
}

/// The message number in a payload `"{node}:{n}"`.
fn number(payload: &Bytes) -> usize {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|t| t.split(':').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn run(seed: u64, persistent: bool, restarts: bool) {
    let mut c = Cluster::new(seed, persistent);
    for key in c.links.keys().copied().collect::<Vec<_>>() {
        c.link_up(key);
    }
    // A subscriber and a publisher on each node, on random shards.
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for i in 0..NODES {
        let node = &mut c.nodes[i];
        let sub = node.add_client(&format!("sub-{i}"), "p");
        let shard = node.rng.below(shards(i));
        node.connect(sub, shard, true, if persistent { 3600 } else { 0 });
        let publisher = node.add_client(&format!("pub-{i}"), "p");
        let shard = node.rng.below(shards(i));
        node.connect(publisher, shard, true, 0);
        // The same indices in a restarted node (`Cluster::restart`).
        assert_eq!((sub, publisher), (0, 1));
        subs.push(sub);
        pubs.push(publisher);
    }
    c.settle();
    for (i, &sub) in subs.iter().enumerate() {
        c.nodes[i].subscribe(sub, "t/#", QoS::ExactlyOnce);
    }
    c.settle();
    let mut sent: Vec<Vec<Bytes>> = vec![Vec::new(); NODES];
    let mut lives: Vec<Lives> = vec![Lives::default(); NODES];
    let mut retained_sent = 0;
    for _ in 0..400 {
        match c.rng.below(12) {
            10 | 11 => {
                // A retained change (QoS 0: no acknowledgement to count)
                // on one of a few topics, from any node (one that restarts
                // may die half-way through sending it: the others resync
                // when their links to it break); one in five clears.
                let i = c.rng.below(NODES);
                if !c.nodes[i].clients[pubs[i]].connected() {
                    continue;
                }
                let topic = format!("r/{}", c.rng.below(3));
                let payload = if c.rng.chance(20) {
                    Bytes::new()
                } else {
                    retained_sent += 1;
                    Bytes::from(format!("r{i}:{retained_sent}"))
                };
                c.log(format!("node {i} retains {payload:?} on {topic}"));
                c.nodes[i].publish(pubs[i], &topic, QoS::AtMostOnce, true, payload);
            }
            0..=2 => {
                let i = c.rng.below(NODES);
                if !c.nodes[i].clients[pubs[i]].connected() {
                    continue; // A restarted node's, waiting for its routes.
                }
                let qos = if c.rng.chance(50) {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let payload = Bytes::from(format!("{i}:{}", sent[i].len()));
                sent[i].push(payload.clone());
                c.log(format!("node {i} publishes {payload:?} {qos:?}"));
                c.nodes[i].publish(pubs[i], "t/x", qos, false, payload);
            }
            3 if restarts && lives[RESTARTING].restarts < 3 && c.rng.chance(30) => {
                let i = RESTARTING;
                let acked = &c.nodes[i].clients[pubs[i]].seen.acked;
                let unacked: Vec<Bytes> = sent[i][lives[i].before..]
                    .iter()
                    .filter(|m| !acked.contains(m))
                    .cloned()
                    .collect();
                lives[i].unacked.extend(unacked);
                lives[i].before = sent[i].len();
                lives[i].starts.push(sent[i].len());
                lives[i].restarts += 1;
                c.restart(i);
            }
            3 => c.fault(),
            4 => {
                let by = Duration::from_millis(50 + c.rng.below(400) as u64);
                c.advance(by);
                c.fault();
            }
            5 | 6 => {
                let i = c.rng.below(NODES);
                if !c.nodes[i].step() {
                    c.link_step();
                }
            }
            _ => {
                c.link_step();
            }
        }
        for node in &c.nodes {
            node.check();
        }
        if persistent {
            check_durable(&c, &pubs, &subs);
        }
    }
    // The faults stop: cuts heal, links come back, everything settles.
    c.faults = false;
    c.cut.clear();
    c.settle();
    if let Some((i, _)) = c.starting {
        c.fail(&format!(
            "node {i} never knew its peers' routes after its restart"
        ));
    }
    for (i, &p) in pubs.iter().enumerate() {
        let acked = &c.nodes[i].clients[p].seen.acked;
        let current = sent[i].len() - lives[i].before;
        if acked.len() != current {
            c.fail(&format!(
                "publisher on node {i}: {} of {current} publishes acknowledged",
                acked.len(),
            ));
        }
    }
    for (n, &sub) in subs.iter().enumerate() {
        let mut by_publisher: Vec<Vec<Bytes>> = vec![Vec::new(); NODES];
        for (_, payload, _) in &c.nodes[n].clients[sub].seen.publishes {
            let text = std::str::from_utf8(payload).unwrap_or("");
            let from = text
                .split(':')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|i| *i < NODES)
                .unwrap_or_else(|| c.fail(&format!("node {n}: invented {payload:?}")));
            by_publisher[from].push(payload.clone());
        }
        for (from, got) in by_publisher.iter().enumerate() {
            // A subscriber of a later life sees only part of the stream;
            // one that lived through every restart misses only what an
            // earlier life of the publisher's node did not see acknowledged.
            let expected: Vec<Bytes> = if lives[n].restarts > 0 {
                sent[from]
                    .iter()
                    .filter(|m| got.contains(m))
                    .cloned()
                    .collect()
            } else {
                let unacked = &lives[from].unacked;
                let missing = |m: &Bytes| unacked.contains(m) && !got.contains(m);
                sent[from].iter().filter(|m| !missing(m)).cloned().collect()
            };
            // In order within each life of the publisher's session (a new
            // session after a crash is a new stream: the old one's
            // unacknowledged messages may still arrive after its first).
            let life = |m: &Bytes| lives[from].of(number(m));
            for l in 0..=lives[from].restarts {
                let got: Vec<&Bytes> = got.iter().filter(|m| life(m) == l).collect();
                let expected: Vec<&Bytes> = expected.iter().filter(|m| life(m) == l).collect();
                if got != expected {
                    c.fail(&format!(
                        "subscriber on node {n}, from node {from}, its life {l}: got {got:?}\nexpected {expected:?}"
                    ));
                }
            }
            if got.len() != expected.len() {
                c.fail(&format!(
                    "subscriber on node {n}, from node {from}: got {got:?}\nexpected {expected:?}"
                ));
            }
        }
    }
    let owed: u64 = c
        .nodes
        .iter()
        .flat_map(|n| n.shards.iter())
        .map(|s| s.cluster_stats().owed)
        .sum();
    if owed != 0 {
        c.fail(&format!("{owed} messages still owed to peers"));
    }
    check_retained_agree(&c);
}

/// Every node holds the same retained message for every topic (or none):
/// concurrent changes on several nodes, and changes on both sides of a
/// partition, converge on the last writer's (`cluster::clock`).
fn check_retained_agree(c: &Cluster) {
    let held = |n: usize| -> BTreeMap<String, (Bytes, u64)> {
        c.nodes[n]
            .shards
            .iter()
            .flat_map(|s| s.cluster_retained_sync())
            .filter(|m| !m.payload.is_empty())
            .map(|m| {
                (
                    m.topic.as_str().to_owned(),
                    (m.payload.clone(), m.retain_stamp),
                )
            })
            .collect()
    };
    let first = held(0);
    for n in 1..NODES {
        let other = held(n);
        if other != first {
            c.fail(&format!(
                "retained messages differ: node 0 holds {first:?}, node {n} holds {other:?}"
            ));
        }
    }
}

/// Every acknowledged publish is received by, or on disk for, every
/// subscriber.
fn check_durable(c: &Cluster, pubs: &[usize], subs: &[usize]) {
    for (n, &sub) in subs.iter().enumerate() {
        let node = &c.nodes[n];
        let client = &node.clients[sub];
        let mut have: Vec<Bytes> = node.disk_owed(&client.client_id);
        have.extend(client.seen.publishes.iter().map(|(_, p, _)| p.clone()));
        for (i, &p) in pubs.iter().enumerate() {
            for acked in &c.nodes[i].clients[p].seen.acked {
                if !have.contains(acked) {
                    c.fail(&format!(
                        "{acked:?} acknowledged to the publisher on node {i} but neither \
                         received by nor on disk for the subscriber on node {n}"
                    ));
                }
            }
        }
    }
}
