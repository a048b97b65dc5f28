//! The cluster's client-id registry under the deterministic simulator:
//! three nodes (`sim/harness.rs` brokers of two shards, scripted MQTT 5
//! clients) whose CONNECTs are admitted only once their claim commits, as
//! io/src/conn/admit.rs does. Consensus is modelled by what Raft promises
//! and no more: one log of committed commands, nothing committed without a
//! majority, each node applying the log in order at its own pace, a
//! proposal committed late (after its node gave up) or twice (a forwarded
//! write whose answer was lost, tried again). The registry's own code
//! (`cluster::registry`) is what every node applies, and the node's side
//! (claims with nonces, `Abandon` after the claim timeout, releases with
//! claim numbers, evictions) is wired as io/src/cluster/control does.
//! Nodes are cut off, paused and killed (restarting empty, the log kept),
//! clients connect to any node, disconnect, vanish, and several clients
//! share an id. Checked once the faults stop and everything settles: an
//! id has a session on one node at most, the one every node's registry
//! names; no id is held with no session; another principal never took a
//! held id; and once every client has left, nothing is held.
//! `SHARDMQ_SIM_SEED=N` replays one seed, `SHARDMQ_SIM_SEEDS=N` runs N.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "sim/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use harness::{seeds, Rng, Sim};
use shardmq_core::broker::{owner_index, ConnId, Flow};
use shardmq_core::cluster::registry::{Command, Granted, Registry, Reply};
use shardmq_core::cluster::NodeId;
use shardmq_core::codec::ReasonCode;
use shardmq_core::limits::{ClientLimits, TakeoverPolicy};

const NODES: usize = 3;
const SHARDS: usize = 2;
/// io's `CLAIM_TIMEOUT`: a claim not answered by then refuses its CONNECT
/// with Server unavailable, and the node abandons it.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node retries an `Abandon` or a `Release` (io: until it
/// commits; here past any run's end).
const RETRY_FOR: Duration = Duration::from_secs(3600);

/// The programs that connect: (client id, principal). Two share an id and
/// a principal (two devices, or one reconnecting before its old connection
/// is noticed gone); another principal wants the same id.
const USERS: [(&str, &str); 6] = [
    ("c0", "alice"),
    ("c0", "alice"),
    ("c0", "mallory"),
    ("c1", "bob"),
    ("c1", "bob"),
    ("c2", "carol"),
];

/// What a proposal is for, at its node.
#[derive(Debug, Clone)]
enum Purpose {
    /// A CONNECT for `id` waiting on `shard` as `conn`.
    Claim {
        shard: usize,
        conn: ConnId,
        id: String,
    },
    Abandon,
    Release,
}

#[derive(Debug)]
struct Proposal {
    node: usize,
    /// The node's life it was made in: a restart forgets it (only what
    /// reached the leader may still commit).
    life: u64,
    cmd: Command,
    purpose: Purpose,
    /// In the leader's log, not yet committed.
    sent: bool,
    /// When its node stops waiting (simulated time).
    deadline: Duration,
}

/// A committed command's answer on its way back to its node.
#[derive(Debug)]
struct Answer {
    node: usize,
    life: u64,
    /// The claim's nonce (0 for others).
    nonce: u64,
    purpose: Purpose,
    reply: Reply,
    deadline: Duration,
}

/// Raft as the registry sees it.
#[derive(Debug, Default)]
struct Consensus {
    log: Vec<Command>,
    /// The registry after the whole log: what the leader answers from.
    leader: Registry,
    pending: Vec<Proposal>,
    answers: Vec<Answer>,
}

struct Node {
    sim: Sim,
    life: u64,
    registry: Registry,
    /// Entries of the log applied here.
    applied: usize,
    /// Ids another node took from this one: (id, the claim that took it).
    evictions: Vec<(String, u64)>,
    /// The claims granted to it in this life (io's `Control`).
    granted: Granted,
    nonce: u64,
    cut: bool,
    paused: bool,
}

impl Node {
    fn reachable(&self) -> bool {
        !self.cut && !self.paused
    }

    /// The first nonce of its life (io: the life's start in microseconds).
    fn floor(&self) -> u64 {
        self.life * 1_000_000
    }
}

struct World {
    seed: u64,
    rng: Rng,
    nodes: Vec<Node>,
    raft: Consensus,
    elapsed: Duration,
    any_principal: bool,
    /// Faults heal at these times: (when, node).
    heals: Vec<(Duration, usize)>,
    trace: VecDeque<String>,
}

fn new_node(seed: u64, i: usize, life: u64, now: Option<Instant>, any_principal: bool) -> Sim {
    // The node's own registry follows the same policy (io reads the claim's
    // `any_principal` from it).
    let limits = ClientLimits {
        session_takeover: if any_principal {
            TakeoverPolicy::AnyPrincipal
        } else {
            TakeoverPolicy::SamePrincipal
        },
        ..ClientLimits::default()
    };
    let mut sim = Sim::new(seed, SHARDS, limits, 10_000);
    if let Some(now) = now {
        sim.now = now;
    }
    sim.hold_auth = true;
    let peers: Vec<NodeId> = (0..NODES).filter(|p| *p != i).map(node_id).collect();
    sim.enable_cluster(node_id(i), life, &peers);
    for shard in &mut sim.shards {
        // No node links here: every peer counts as unreachable, so the
        // route gate is open.
        for p in &peers {
            shard.cluster_link_failed(*p);
        }
    }
    for (id, principal) in USERS {
        sim.add_client(id, principal);
    }
    sim
}

fn node_id(i: usize) -> NodeId {
    NodeId(i as u32 + 1)
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let any_principal = seed.is_multiple_of(4);
        let nodes = (0..NODES)
            .map(|i| Node {
                sim: new_node(rng.next(), i, 1, None, any_principal),
                life: 1,
                registry: Registry::default(),
                applied: 0,
                evictions: Vec::new(),
                granted: Granted::default(),
                nonce: 1_000_000, // floor of life 1
                cut: false,
                paused: false,
            })
            .collect();
        World {
            seed,
            any_principal,
            rng,
            nodes,
            raft: Consensus::default(),
            elapsed: Duration::ZERO,
            heals: Vec::new(),
            trace: VecDeque::new(),
        }
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= harness::trace_len(200) {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&self, why: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let steps: Vec<&str> = n.sim.trace().map(String::as_str).collect();
                format!("node {i}'s last steps:\n    {}", steps.join("\n    "))
            })
            .collect();
        panic!(
            "{why}\nseed {} (replay: SHARDMQ_SIM_SEED={})\nlast steps:\n  {}\n{}",
            self.seed,
            self.seed,
            trace.join("\n  "),
            nodes.join("\n")
        );
    }

    fn majority(&self) -> bool {
        self.nodes.iter().filter(|n| n.reachable()).count() * 2 > NODES
    }

    fn propose(&mut self, node: usize, cmd: Command, purpose: Purpose, wait: Duration) {
        self.log(format!("node {node} proposes {cmd:?}"));
        let life = self.nodes[node].life;
        self.raft.pending.push(Proposal {
            node,
            life,
            cmd,
            purpose,
            sent: false,
            deadline: self.elapsed + wait,
        });
    }

    // ---- the node's control side (io/src/cluster/control) -------------

    /// io's `sweep_earlier`: ids the node holds under an earlier life's
    /// claim go to their owner shards, which release those no session
    /// holds.
    fn sweep_earlier(&mut self, i: usize) {
        let me = node_id(i).0;
        let floor = self.nodes[i].floor();
        for (id, claim) in self.nodes[i].registry.earlier_holds(me, floor) {
            let node = &mut self.nodes[i].sim;
            let shard = owner_index(&id, SHARDS);
            node.shards[shard].cluster_check_hold(&id.as_str().into(), claim);
            node.drain(shard);
        }
    }

    /// What the node's runtime does between steps: CONNECTs authenticated
    /// since are claimed; ids taken from it end (`take_evictions`, then
    /// `Shard::evict_client`); sessions that ended are released.
    fn control(&mut self, i: usize) {
        let jobs = self.nodes[i].sim.take_auth_jobs();
        for (shard, conn) in jobs {
            let Some(c) = self.nodes[i].sim.client_of(shard, conn) else {
                continue;
            };
            let (id, principal) = USERS[c];
            let nonce = self.nodes[i].nonce;
            self.nodes[i].nonce += 1;
            let cmd = Command::Claim {
                client_id: id.to_owned(),
                node: node_id(i).0,
                principal: principal.to_owned(),
                any_principal: self.any_principal,
                nonce,
            };
            let purpose = Purpose::Claim {
                shard,
                conn,
                id: id.to_owned(),
            };
            self.propose(i, cmd, purpose, CLAIM_TIMEOUT);
        }
        let me = node_id(i).0;
        let evictions = std::mem::take(&mut self.nodes[i].evictions);
        for (id, taken) in evictions {
            let n = &mut self.nodes[i];
            if !n.granted.evicts(&n.registry, me, &id, taken) {
                continue;
            }
            self.log(format!("node {i} evicts {id} (taken by claim {taken})"));
            self.nodes[i]
                .sim
                .log(format!("evict {id} (taken by claim {taken})"));
            let node = &mut self.nodes[i].sim;
            let shard = owner_index(&id, SHARDS);
            let now = node.now;
            node.shards[shard].evict_client(&id.as_str().into(), taken, now);
            node.drain(shard);
        }
        for shard in 0..SHARDS {
            let released = self.nodes[i].sim.shards[shard].poll_cluster_released();
            for (id, claim) in released {
                self.nodes[i].granted.released(&id, claim);
                let cmd = Command::Release {
                    client_id: id.to_string(),
                    node: me,
                    claim,
                    floor: self.nodes[i].floor(),
                };
                self.propose(i, cmd, Purpose::Release, RETRY_FOR);
            }
        }
    }

    /// An answer reached its node.
    fn answered(&mut self, a: Answer) {
        let i = a.node;
        match a.purpose {
            Purpose::Claim { shard, conn, id } => {
                let n = &mut self.nodes[i];
                let result = match a.reply {
                    Reply::Granted { claim, .. }
                        if !n.granted.admit(
                            &n.registry,
                            n.applied as u64,
                            node_id(i).0,
                            &id,
                            claim,
                        ) =>
                    {
                        self.log(format!(
                            "node {i}: claim {claim} for {id} was taken over already"
                        ));
                        Err(ReasonCode::ServerUnavailable)
                    }
                    Reply::Granted { claim, .. } => Ok(claim),
                    Reply::Refused => Err(ReasonCode::NotAuthorized),
                    Reply::Released => self.fail("a claim answered Released"),
                };
                // The client left while its claim committed: no session
                // will hold it (driver.rs).
                let gone = self.nodes[i].sim.shards[shard].flow(conn) == Flow::Stop;
                if let (true, Ok(claim)) = (gone, result) {
                    self.nodes[i].granted.released(&id, claim);
                    let cmd = Command::Release {
                        client_id: id,
                        node: node_id(i).0,
                        claim,
                        floor: self.nodes[i].floor(),
                    };
                    self.propose(i, cmd, Purpose::Release, RETRY_FOR);
                }
                self.nodes[i].sim.admit(shard, conn, result);
            }
            Purpose::Abandon | Purpose::Release => {}
        }
    }

    /// Time passes: claims not answered by their deadline refuse their
    /// CONNECT and are abandoned.
    fn expire(&mut self) {
        let now = self.elapsed;
        let mut gave_up = Vec::new();
        self.raft.pending.retain_mut(|p| {
            if p.deadline > now {
                return true;
            }
            if matches!(p.purpose, Purpose::Claim { .. }) {
                gave_up.push((p.node, p.life, p.purpose.clone(), p.cmd.clone()));
            }
            // What reached the leader may still commit, answered to no one.
            p.sent && {
                p.deadline = Duration::MAX;
                true
            }
        });
        // An answer after the deadline finds no one waiting: the node gave
        // up on it as on one never committed.
        self.raft.answers.retain(|a| {
            if a.deadline > now {
                return true;
            }
            if let Purpose::Claim { id, .. } = &a.purpose {
                let nonce = a.nonce;
                let cmd = Command::Claim {
                    client_id: id.clone(),
                    node: node_id(a.node).0,
                    principal: String::new(),
                    any_principal: false,
                    nonce,
                };
                gave_up.push((a.node, a.life, a.purpose.clone(), cmd));
            }
            false
        });
        for (node, life, purpose, cmd) in gave_up {
            if life != self.nodes[node].life {
                continue;
            }
            let Command::Claim {
                client_id, nonce, ..
            } = cmd
            else {
                continue;
            };
            self.log(format!(
                "node {node}: claim {nonce} for {client_id} timed out"
            ));
            if let Purpose::Claim { shard, conn, .. } = purpose {
                self.nodes[node]
                    .sim
                    .admit(shard, conn, Err(ReasonCode::ServerUnavailable));
            }
            let cmd = Command::Abandon {
                client_id,
                node: node_id(node).0,
                nonce,
            };
            self.propose(node, cmd, Purpose::Abandon, RETRY_FOR);
        }
    }

    // ---- consensus steps -------------------------------------------------

    /// One consensus event, chosen by the seed: a proposal reaches the
    /// leader, one commits, an answer arrives, or a node applies the next
    /// entry. False when none can happen now.
    fn raft_step(&mut self) -> bool {
        let majority = self.majority();
        let mut choices: Vec<(u8, usize)> = Vec::new();
        for (k, p) in self.raft.pending.iter().enumerate() {
            let from_ok = self.nodes[p.node].reachable() && p.life == self.nodes[p.node].life;
            if !p.sent && from_ok && majority {
                choices.push((0, k));
            }
            if p.sent && majority {
                choices.push((1, k));
            }
        }
        for (k, a) in self.raft.answers.iter().enumerate() {
            if self.nodes[a.node].reachable() {
                choices.push((2, k));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.reachable() && n.applied < self.raft.log.len() {
                choices.push((3, i));
                // Now and then a node far behind gets a snapshot instead.
                if self.raft.log.len() - n.applied > 3 {
                    choices.push((4, i));
                }
            }
        }
        if choices.is_empty() {
            return false;
        }
        let (kind, k) = choices[self.rng.below(choices.len())];
        match kind {
            0 => self.raft.pending[k].sent = true,
            1 => self.commit(k),
            2 => {
                let a = self.raft.answers.remove(k);
                if a.life == self.nodes[a.node].life {
                    self.log(format!("node {} hears {:?}", a.node, a.reply));
                    self.answered(a);
                }
            }
            3 => self.apply_next(k),
            _ => self.install_snapshot(k),
        }
        true
    }

    fn commit(&mut self, k: usize) {
        let p = &self.raft.pending[k];
        // Its node still waits for it (the same life, before its deadline).
        let in_time = p.deadline != Duration::MAX && p.life == self.nodes[p.node].life;
        // A forwarded write whose answer is lost is tried again by its
        // node, so the same command may commit twice.
        let again = in_time && self.rng.chance(10);
        let p = if again {
            let p = &mut self.raft.pending[k];
            p.sent = false;
            Proposal {
                node: p.node,
                life: p.life,
                cmd: p.cmd.clone(),
                purpose: p.purpose.clone(),
                sent: true,
                deadline: p.deadline,
            }
        } else {
            self.raft.pending.remove(k)
        };
        self.raft.log.push(p.cmd.clone());
        let index = self.raft.log.len() as u64;
        let before = match &p.cmd {
            Command::Claim { client_id, .. } => self.raft.leader.holder(client_id).cloned(),
            _ => None,
        };
        let reply = self.raft.leader.apply(&p.cmd, index);
        self.log(format!(
            "commit {index}: {:?} -> {reply:?}{}",
            p.cmd,
            if again { " (answer lost)" } else { "" }
        ));
        // Under SamePrincipal, a granted claim took no id another
        // principal held.
        if let (Command::Claim { principal, .. }, Reply::Granted { .. }, Some(h)) =
            (&p.cmd, &reply, &before)
        {
            if !self.any_principal && h.principal != *principal {
                self.fail(&format!(
                    "claim {index} gave an id held by {} to {principal}",
                    h.principal
                ));
            }
        }
        if !again && in_time {
            let nonce = match &p.cmd {
                Command::Claim { nonce, .. } => *nonce,
                _ => 0,
            };
            self.raft.answers.push(Answer {
                node: p.node,
                life: p.life,
                nonce,
                purpose: p.purpose,
                reply,
                deadline: p.deadline,
            });
        }
    }

    /// Node `i` installs a snapshot of the registry at a later log index
    /// (the leader compacted what it lacks), as io's state machine does:
    /// the ids it no longer holds there are evicted (`taken_by`).
    fn install_snapshot(&mut self, i: usize) {
        let from = self.nodes[i].applied + 1;
        let at = from + self.rng.below(self.raft.log.len() - from + 1);
        let mut new = Registry::default();
        for (n, cmd) in self.raft.log.iter().enumerate().take(at) {
            new.apply(cmd, n as u64 + 1);
        }
        self.log(format!("node {i} installs a snapshot at {at}"));
        let n = &mut self.nodes[i];
        let me = node_id(i).0;
        let evictions = n.registry.taken_by(&new, me, at as u64);
        n.evictions.extend(evictions);
        // Sessions granted here whose claim the snapshot skipped past end
        // at their owner shard, which keeps newer ones (io: `lapsed`).
        let lapsed = n.granted.lapsed(&new, at as u64, me);
        n.registry = new;
        n.applied = at;
        for (id, taken) in lapsed {
            self.log(format!("node {i}: {id} lapsed (claim {})", taken - 1));
            let node = &mut self.nodes[i].sim;
            let shard = owner_index(&id, SHARDS);
            let now = node.now;
            node.shards[shard].evict_client(&id.as_str().into(), taken, now);
            node.drain(shard);
        }
    }

    fn apply_next(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let cmd = self.raft.log[n.applied].clone();
        n.applied += 1;
        let index = n.applied as u64;
        let (_, evict) = n.registry.apply_on(node_id(i).0, &cmd, index);
        if let Some(e) = evict {
            n.evictions.push(e);
        }
    }

    // ---- faults and clients ----------------------------------------------

    fn fault(&mut self) {
        let i = self.rng.below(NODES);
        if !self.nodes[i].reachable() {
            return;
        }
        let down = self.nodes.iter().filter(|n| !n.reachable()).count();
        let lasts = Duration::from_millis(500 + self.rng.below(9_000) as u64);
        match self.rng.below(10) {
            // Two nodes down at once now and then: no majority.
            0..=4 if down < 2 => {
                self.log(format!("node {i} cut off for {lasts:?}"));
                self.nodes[i].cut = true;
                self.heals.push((self.elapsed + lasts, i));
            }
            5..=7 if down < 2 => {
                self.log(format!("node {i} paused for {lasts:?}"));
                self.nodes[i].paused = true;
                self.heals.push((self.elapsed + lasts, i));
            }
            _ => self.restart(i),
        }
    }

    /// kill -9 and start again: the sessions (no persistence) and
    /// everything in flight at the node are gone; the Raft log is on disk,
    /// and the node applies it again from the start.
    fn restart(&mut self, i: usize) {
        self.log(format!("node {i} restarts"));
        let now = self.nodes[i].sim.now;
        let life = self.nodes[i].life + 1;
        let seed = self.rng.next();
        let n = &mut self.nodes[i];
        n.sim = new_node(seed, i, life, Some(now), self.any_principal);
        n.life = life;
        n.registry = Registry::default();
        n.applied = 0;
        n.evictions.clear();
        n.granted = Granted::default();
        n.nonce = n.floor();
        // What it had not handed to the leader dies with it.
        self.raft.pending.retain(|p| p.node != i || p.sent);
        self.raft.answers.retain(|a| a.node != i);
    }

    fn heal_due(&mut self, all: bool) {
        let now = self.elapsed;
        let due: Vec<usize> = self
            .heals
            .iter()
            .filter(|(at, _)| all || *at <= now)
            .map(|(_, i)| *i)
            .collect();
        self.heals.retain(|(at, _)| !all && *at > now);
        for i in due {
            self.log(format!("node {i} heals"));
            self.nodes[i].cut = false;
            self.nodes[i].paused = false;
        }
    }

    fn client_action(&mut self) {
        let i = self.rng.below(NODES);
        if self.nodes[i].paused {
            return;
        }
        let u = self.rng.below(USERS.len());
        let node = &mut self.nodes[i].sim;
        if !node.clients[u].connected() {
            let shard = node.rng.below(SHARDS);
            let clean = node.rng.chance(50);
            let expiry = [0, 0, 20][node.rng.below(3)];
            node.connect(u, shard, clean, expiry);
            return;
        }
        if node.rng.chance(50) {
            node.disconnect(u);
        } else {
            node.drop_conn(u);
        }
    }

    fn advance(&mut self, by: Duration) {
        let sweeps = self.elapsed.as_secs() / 10 != (self.elapsed + by).as_secs() / 10;
        self.elapsed += by;
        self.log(format!("time +{by:?}"));
        for n in &mut self.nodes {
            // A paused node's clock runs on; its timers fire on resume.
            if !n.paused {
                let now = n.sim.now + by;
                n.sim.advance(now - n.sim.now);
            } else {
                n.sim.now += by;
            }
        }
        self.expire();
        self.heal_due(false);
        if sweeps {
            for i in 0..NODES {
                if !self.nodes[i].paused {
                    self.sweep_earlier(i);
                }
            }
        }
    }

    /// One step of anything, chosen by the seed.
    fn step(&mut self, faults: bool) {
        match self.rng.below(100) {
            0..=34 => {
                let i = self.rng.below(NODES);
                if !self.nodes[i].paused {
                    self.nodes[i].sim.step();
                }
            }
            35..=49 => {
                let i = self.rng.below(NODES);
                if !self.nodes[i].paused {
                    self.control(i);
                }
            }
            50..=79 => {
                self.raft_step();
            }
            80..=89 => self.client_action(),
            90..=97 => {
                let by = Duration::from_millis(20 + self.rng.below(1500) as u64);
                self.advance(by);
            }
            _ if faults => self.fault(),
            _ => {}
        }
    }

    /// Everything runs until nothing moves, time passing so that claims
    /// and sessions expire (bounded).
    fn settle(&mut self) {
        self.heal_due(true);
        for _ in 0..200 {
            for _ in 0..10_000 {
                let mut moved = false;
                for i in 0..NODES {
                    let before = self.raft.pending.len();
                    self.control(i);
                    moved |= self.raft.pending.len() != before;
                    while self.nodes[i].sim.step() {
                        moved = true;
                    }
                }
                moved |= self.raft_step();
                if !moved {
                    break;
                }
            }
            let idle = self.raft.pending.is_empty()
                && self.raft.answers.is_empty()
                && self
                    .nodes
                    .iter()
                    .all(|n| n.applied == self.raft.log.len() && n.evictions.is_empty())
                && (0..NODES).all(|i| {
                    let n = &self.nodes[i];
                    n.registry.earlier_holds(node_id(i).0, n.floor()).is_empty()
                });
            if idle {
                return;
            }
            self.advance(Duration::from_secs(2));
        }
        let state = format!(
            "pending {:?}\nanswers {:?}\napplied {:?} of {}",
            self.raft.pending,
            self.raft.answers,
            self.nodes
                .iter()
                .map(|n| (n.applied, n.reachable(), n.evictions.len()))
                .collect::<Vec<_>>(),
            self.raft.log.len()
        );
        self.fail(&format!("the registry did not settle:\n{state}"));
    }

    // ---- checks -------------------------------------------------------------

    /// Per client id: the nodes with a session for it (online or not).
    fn sessions(&self) -> BTreeMap<String, BTreeSet<usize>> {
        let mut out: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for shard in &n.sim.shards {
                let inv = shard.inventory();
                for id in inv.online.iter().chain(inv.offline.iter()) {
                    out.entry(id.to_string()).or_default().insert(i);
                }
            }
        }
        out
    }

    fn check(&self) {
        for n in &self.nodes {
            if n.registry != self.raft.leader {
                self.fail("a node's registry differs from the leader's after applying the log");
            }
        }
        let sessions = self.sessions();
        for (id, at) in &sessions {
            if at.len() > 1 {
                self.fail(&format!("{id} has sessions on nodes {at:?}"));
            }
            let node = *at.iter().next().expect("not empty");
            match self.raft.leader.holder(id) {
                Some(h) if h.node == node_id(node).0 => {}
                h => self.fail(&format!(
                    "{id} has a session on node {node}, the registry says {h:?}"
                )),
            }
        }
        for (id, h) in self.raft.leader.holders() {
            if !sessions.contains_key(id) {
                self.fail(&format!("{id} is held by {h:?} with no session"));
            }
        }
        // The connected clients: one per id, where its session is, with its
        // holder's principal.
        let mut online: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for (u, c) in n.sim.clients.iter().enumerate() {
                let accepted = c.seen.connacks.last().is_some_and(|(_, r)| !r.is_error());
                if !c.connected() || !accepted {
                    continue;
                }
                let (id, principal) = USERS[u];
                if let Some(other) = online.insert(id, i) {
                    self.fail(&format!("{id} is online on nodes {other} and {i}"));
                }
                let holder = self.raft.leader.holder(id);
                if !holder.is_some_and(|h| h.principal == principal && h.node == node_id(i).0) {
                    self.fail(&format!(
                        "{id} online on node {i} as {principal}, registry {holder:?}"
                    ));
                }
            }
        }
    }
}

fn run(seed: u64) {
    let mut w = World::new(seed);
    for _ in 0..3_000 {
        w.step(true);
    }
    w.settle();
    w.check();
    // Everyone leaves: once their sessions expire, nothing is held.
    for i in 0..NODES {
        for u in 0..USERS.len() {
            w.nodes[i].sim.disconnect(u);
        }
    }
    w.advance(Duration::from_secs(30));
    w.settle();
    w.check();
    let left: Vec<String> = w
        .raft
        .leader
        .holders()
        .map(|(id, h)| format!("{id}: {h:?}"))
        .collect();
    if !left.is_empty() {
        w.fail(&format!("held after everyone left: {left:?}"));
    }
}

/// Clients connect to any node while nodes are cut off, paused and
/// killed; the registry's claims, abandons, releases and evictions keep
/// each id on one node, and nothing held without a session.
#[test]
fn a_client_id_lives_on_one_node_through_cuts_pauses_and_restarts() {
    for seed in seeds(200) {
        run(seed);
    }
}

/// The race the fence in `Shard::evict_client` closes, step by step: node
/// 1's claim commits, node 2 takes the id with the next claim, node 1
/// hears its answer before it applied either (so it admits the CONNECT),
/// and the takeover's eviction reaches the id's owner shard before the
/// CONNECT's own claim does (they are on different shards). Without the
/// fence the session starts after its eviction found nothing to end, and
/// the id lives on both nodes.
#[test]
fn a_connect_answered_before_a_later_takeover_is_applied_does_not_outlive_it() {
    let mut w = World::new(1);
    assert!(!w.any_principal);
    let bob = 3;
    let not_owner = 1 - owner_index(USERS[bob].0, SHARDS);
    w.nodes[0].sim.connect(bob, not_owner, true, 0);
    w.control(0);
    w.raft.pending[0].sent = true;
    w.commit(0);
    w.nodes[1].sim.connect(bob + 1, 0, true, 0);
    w.control(1);
    w.raft.pending[0].sent = true;
    w.commit(0);
    let first = w.raft.answers.remove(0);
    assert_eq!(first.node, 0);
    w.answered(first);
    // Node 1 applies both claims and acts on the takeover before its
    // shards exchange the CONNECT's claim.
    w.apply_next(0);
    w.apply_next(0);
    w.control(0);
    w.settle();
    w.check();
    let refused = &w.nodes[0].sim.clients[bob].seen.connacks;
    assert_eq!(
        refused.last().map(|(_, r)| *r),
        Some(ReasonCode::ServerUnavailable)
    );
    assert_eq!(w.sessions().get(USERS[bob].0), Some(&BTreeSet::from([1])));
}
