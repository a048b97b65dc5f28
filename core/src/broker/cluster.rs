//! This shard's part of a cluster (issue 17, docs/CLUSTER.md): the node's
//! routes as this shard's replica of the index sees them (streamed to the
//! links peers dialled into this shard), each peer's routes as the link this
//! shard dialled to it reports them, and the messages owed to each peer,
//! kept until the peer says it routed them and sent again over the next
//! link if one breaks first. Topics starting with `$` stay on their node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use bytestring::ByteString;

use super::pending::Pending;
use super::registry::Fenced;
use super::retain::Tombstones;
use super::route::{Shares, Waiter};
use super::{MeshMsg, Notice, Output, RequestId, SessionId, Shard, ShardId};
use crate::buffer::Store;
use crate::cluster::clock::NodeClock;
use crate::cluster::routes::share_route;
use crate::cluster::{already_routed, Incarnation, LocalRoutes, NodeId, RemoteRoutes, RouteMsg};
use crate::codec::{QoS, ReasonCode};
use crate::session::{Message, SessionState, SharedMessage};
use crate::topic::TopicFilter;

/// How long after a peer's link breaks the retained messages go to the
/// other peers again: what the peer sent just before lands first.
pub const RESYNC_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(super) struct Cluster {
    me: NodeId,
    local: LocalRoutes,
    /// `Output::Cluster` was emitted for route changes not yet taken.
    routes_signalled: bool,
    remote: RemoteRoutes,
    peers: HashMap<NodeId, PeerOut>,
    /// Client ids whose sessions ended, with their claims, for the
    /// cluster's registry.
    released: Vec<(ByteString, u64)>,
    /// The registry's claim each session of this shard holds its id under.
    claims: HashMap<SessionId, u64>,
    /// Round-robin position per share group across nodes.
    share_rr: HashMap<ByteString, usize>,
    /// Messages owed to peers whose link is up and not yet handed to it,
    /// all peers together: publishers wait past `MESH_BACKLOG_MAX`, as for
    /// the shard mesh.
    unsent: usize,
    /// The peer streams homed on this shard.
    streams: HashMap<StreamKey, StreamIn>,
    /// Messages homes routed for links this shard accepted, per link, not
    /// yet taken by `poll_cluster_routed`.
    routed: Vec<(u64, u64)>,
    /// Answers to other shards' links (`ClusterRouted`) held while this
    /// shard's mesh is full: the links wait for them, so a peer cannot
    /// push through a home whose subscribers' shards fall behind.
    held_answers: Vec<(ShardId, u64, u64)>,
    /// The node's clock for retained changes, shared by its shards.
    pub(super) clock: Arc<NodeClock>,
    /// Retained topics this shard owns that a stamped clear emptied.
    pub(super) tombstones: Tombstones,
    /// When the shard began linking to its peers (`cluster_routes_ready`).
    started: Instant,
}

/// One numbered stream of messages from a peer: its node, that node's
/// life, and its shard that sends them.
pub type StreamKey = (NodeId, Incarnation, u16);

/// A peer stream at its home shard.
#[derive(Debug, Default)]
struct StreamIn {
    /// The highest number routed.
    routed: u64,
    /// With persistence: numbers routed and not yet settled (durable in
    /// every persisted queue they went to), in order, each marked once
    /// settled; the front leaves once settled.
    unsettled: VecDeque<(u64, bool)>,
    /// Frames whose acknowledgement waits for their last number to settle:
    /// (the shard whose link carried them, the link, how many, the last).
    frames: VecDeque<(ShardId, u64, u64, u64)>,
}

impl StreamIn {
    /// Every number up to this one is settled.
    fn settled_through(&self) -> u64 {
        self.unsettled
            .front()
            .map_or(self.routed, |(seq, _)| seq.saturating_sub(1))
    }
}

/// How long a peer whose link broke keeps its routes: messages for it are
/// kept for the next link meanwhile, so a link that comes back (a flap, a
/// restart of the peer) loses nothing.
pub const LINK_GRACE: Duration = Duration::from_secs(10);
/// Payload bytes kept for a peer whose link is down; past it, its routes go
/// at once and nothing more is kept for it.
pub const OWED_DOWN_BYTES_MAX: u64 = 64 << 20;

/// What this shard owes one peer node.
#[derive(Debug, Default)]
struct PeerOut {
    up: bool,
    /// When the link broke (`None` while up, or before the first link).
    down_since: Option<Instant>,
    /// Its routes were withdrawn (grace over, or too much kept for it).
    withdrawn: bool,
    /// A new link is up and its first route message (a snapshot) replaces
    /// the routes kept meanwhile.
    fresh: bool,
    /// Payload bytes of `owed`.
    owed_bytes: u64,
    /// The next message's `seq` (from 1).
    next_seq: u64,
    /// The front `sent` of `owed` went over the current link.
    sent: usize,
    /// A route message came over a link of this shard: its routes are
    /// known (kept through a break for the grace).
    routes_known: bool,
    /// The last attempt to link failed (reset when a link comes up).
    unreachable: bool,
    /// Another peer's link broke: this shard's retained messages go to
    /// this peer again from then (`cluster_take_resync`), at most once per
    /// `LINK_GRACE`.
    resync_due: Option<Instant>,
    last_resync: Option<Instant>,
    /// In publish order; each with the share groups the peer serves for it
    /// and the publisher's request, when its acknowledgement waits for the
    /// peer.
    owed: VecDeque<Owed>,
}

#[derive(Debug)]
struct Owed {
    /// Its number in this shard's stream to the peer (consecutive), by
    /// which the peer drops what an earlier link already carried.
    seq: u64,
    message: SharedMessage,
    groups: Vec<ByteString>,
    request: Option<RequestId>,
}

/// A message for a peer: what to route there, and which share groups
/// (`$share/{group}/{filter}`) it serves there; their other members, here or
/// elsewhere, do not get it.
pub type ForNode = (SharedMessage, Vec<ByteString>);

/// Share groups whose round-robin position a shard keeps.
const SHARE_RR_MAX: usize = 10_000;

/// Messages a link takes from `poll_cluster` at once.
pub const CLUSTER_BATCH_MAX: usize = 256;

/// A shard's figures of its cluster links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub peers_up: u64,
    /// Messages sent to peers and not yet acknowledged, or waiting for a
    /// link.
    pub owed: u64,
}

impl<S: Store> Shard<S> {
    /// Makes this shard part of node `me` (life `incarnation`) with the
    /// given peers. Call it right after `new`, before any session is
    /// restored or client served, so every subscription counts in the
    /// node's routes.
    /// `clock` is the node's, one for all its shards; `now` is the start.
    pub fn enable_cluster(
        &mut self,
        me: NodeId,
        incarnation: Incarnation,
        peers: &[NodeId],
        clock: Arc<NodeClock>,
        now: Instant,
    ) {
        self.cluster = Some(Box::new(Cluster {
            me,
            local: LocalRoutes::new(me, incarnation),
            routes_signalled: false,
            remote: RemoteRoutes::new(),
            peers: peers.iter().map(|p| (*p, PeerOut::default())).collect(),
            released: Vec::new(),
            claims: HashMap::new(),
            share_rr: HashMap::new(),
            unsent: 0,
            streams: HashMap::new(),
            routed: Vec::new(),
            held_answers: Vec::new(),
            clock,
            tombstones: Tombstones::default(),
            started: now,
        }));
    }

    /// A subscription entered this shard's replica of the index (`group`:
    /// a shared one's share group).
    pub(super) fn route_added(&mut self, filter: &TopicFilter, group: Option<&ByteString>) {
        if let Some(route) = self.route_of(filter, group) {
            if let Some(c) = self.cluster.as_deref_mut() {
                c.local.subscribed(&route);
                Self::signal_routes(c, &mut self.outputs);
            }
        }
    }

    /// A subscription left this shard's replica of the index.
    pub(super) fn route_removed(&mut self, filter: &TopicFilter, group: Option<&ByteString>) {
        if let Some(route) = self.route_of(filter, group) {
            if let Some(c) = self.cluster.as_deref_mut() {
                c.local.unsubscribed(&route);
                Self::signal_routes(c, &mut self.outputs);
            }
        }
    }

    /// The node route of a subscription: its filter, or for a shared one
    /// `$share/{group}/{filter}`. `None` outside a cluster and for `$`
    /// filters, which stay on their node.
    fn route_of(&self, filter: &TopicFilter, group: Option<&ByteString>) -> Option<TopicFilter> {
        if self.cluster.is_none() || filter.as_str().starts_with('$') {
            return None;
        }
        match group {
            None => Some(filter.clone()),
            Some(g) => share_route(g, filter),
        }
    }

    fn signal_routes(c: &mut Cluster, outputs: &mut VecDeque<Output>) {
        if !c.routes_signalled {
            c.routes_signalled = true;
            outputs.push_back(Output::Cluster);
        }
    }

    /// The node's route changes since the last call, for every link peers
    /// dialled into this shard (each got `cluster_route_snapshot` first).
    pub fn poll_route_delta(&mut self) -> Option<RouteMsg> {
        let c = self.cluster.as_deref_mut()?;
        c.routes_signalled = false;
        c.local.take_delta()
    }

    /// The node's routes as of now, for a link a peer just dialled in.
    /// Take `poll_route_delta` first, so the stream stays in order.
    pub fn cluster_route_snapshot(&self) -> Option<RouteMsg> {
        Some(self.cluster.as_deref()?.local.snapshot())
    }

    /// Routes from `node`, over the link this shard dialled to it.
    pub fn handle_cluster_routes(&mut self, node: NodeId, msg: RouteMsg) {
        // A peer speaks for itself only (its certificate named it).
        if msg.sender() != node {
            return;
        }
        if let Some(c) = self.cluster.as_deref_mut() {
            // The first message of a new link is a snapshot of another
            // shard's stream: it replaces what was known, at once (no
            // moment without routes).
            if let Some(p) = c.peers.get_mut(&node) {
                p.routes_known = true;
                if p.fresh {
                    p.fresh = false;
                    c.remote.forget(node);
                }
            }
            // A link is in order and lossless while up, and each new one
            // starts from a snapshot: nothing to ask for.
            let _ = c.remote.apply(c.me, msg);
        }
    }

    /// Whether this shard may take clients' publishes: for every peer, it
    /// knows the peer's routes (a route message came over its link), or
    /// the peer is unreachable: the last attempt to link failed, or it has
    /// not linked for `LINK_GRACE` (since the shard began dialling, or its
    /// link last broke), as a peer whose routes are withdrawn. A node that just
    /// (re)started and routed a QoS 1 publish before would acknowledge it
    /// without the peers' subscribers (the runtime holds CONNECTs until
    /// then; docs/CLUSTER.md). Always true on a single node.
    pub fn cluster_routes_ready(&self, now: Instant) -> bool {
        let Some(c) = self.cluster.as_deref() else {
            return true;
        };
        c.peers.values().all(|p| {
            let unreachable = || {
                let since = p.down_since.unwrap_or(c.started);
                !p.up && now.saturating_duration_since(since) >= LINK_GRACE
            };
            p.routes_known || p.withdrawn || (!p.up && p.unreachable) || unreachable()
        })
    }

    /// A link to `node` dialled from this shard is up: what is owed goes
    /// over it from the start (the peer may have lost what the last link
    /// carried; a duplicate of a QoS 1 message is allowed, [MQTT-4.3.2]).
    pub fn cluster_link_up(&mut self, node: NodeId) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(p) = c.peers.get_mut(&node) else {
            return;
        };
        if p.up {
            return;
        }
        // Withdrawn routes are gone: known again with the new snapshot.
        p.routes_known &= !p.withdrawn;
        p.up = true;
        p.fresh = true;
        p.unreachable = false;
        // The link's first frames are this shard's retained messages.
        p.resync_due = None;
        p.down_since = None;
        p.withdrawn = false;
        p.sent = 0;
        c.unsent += p.owed.len();
        if !p.owed.is_empty() {
            self.outputs.push_back(Output::Cluster);
        }
    }

    /// The runtime starts dialling the peers at `now`: a peer counts as
    /// unreachable `LINK_GRACE` from here, not from `enable_cluster` (a
    /// restore from disk may take longer than that).
    pub fn cluster_links_started(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.started = now;
        }
    }

    /// An attempt to link to `node` failed (refused, timed out, not
    /// trusted): clients here need not wait for its routes.
    /// Until this shard's next link to it comes up: a peer that links in
    /// meanwhile is not taken as reachable, since this shard's own dial
    /// may be backing off for seconds and its CONNECTs would wait for it.
    pub fn cluster_link_failed(&mut self, node: NodeId) {
        let peer = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.peers.get_mut(&node));
        if let Some(p) = peer.filter(|p| !p.up) {
            p.unreachable = true;
        }
    }

    /// The link to `node` broke at `now`. Its routes stay for
    /// `LINK_GRACE`, and what it is owed, or owed meanwhile, waits for the
    /// next link: a publisher's acknowledgement waits with it.
    pub fn cluster_link_down(&mut self, node: NodeId, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(p) = c.peers.get_mut(&node).filter(|p| p.up) else {
            return;
        };
        c.unsent -= p.owed.len() - p.sent;
        p.up = false;
        p.fresh = false;
        p.sent = 0;
        p.down_since = Some(now);
        // The peer may have died half-way through sending a retained
        // change: some nodes have it, others not, and nothing else would
        // bring them together until a link between them comes up again.
        // This shard's retained messages go to every other linked peer
        // again (last writer wins makes a copy they have a no-op), once
        // what the peer sent before it broke has landed here (its own link
        // in, then the mesh to the topic's owner shard).
        let settled = now + RESYNC_SETTLE;
        for (_, q) in c.peers.iter_mut().filter(|(q, p)| **q != node && p.up) {
            let earliest = q
                .last_resync
                .map_or(settled, |l| (l + LINK_GRACE).max(settled));
            q.resync_due = Some(q.resync_due.map_or(earliest, |d| d.min(earliest)));
        }
        self.outputs.push_back(Output::Cluster);
    }

    /// Whether this shard's retained messages go to `node` over its link
    /// again now (`cluster_link_down`: another peer's link broke).
    pub fn cluster_take_resync(&mut self, node: NodeId, now: Instant) -> bool {
        let Some(p) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.peers.get_mut(&node))
        else {
            return false;
        };
        match p.resync_due {
            Some(due) if due <= now && p.up => {
                p.resync_due = None;
                p.last_resync = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Withdraws the routes of peers whose link has been down for
    /// `LINK_GRACE` (from `handle_tick`): nothing new is kept for them.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        for (node, p) in &mut c.peers {
            let over = p
                .down_since
                .is_some_and(|at| now.saturating_duration_since(at) >= LINK_GRACE);
            if over && !p.withdrawn {
                p.withdrawn = true;
                c.remote.forget(*node);
            }
        }
    }

    /// The next messages for `node`'s link, in order (empty: nothing now).
    /// The `seq` of the first is returned with them: the messages of a
    /// batch are consecutive in this shard's stream to `node`.
    pub fn poll_cluster(&mut self, node: NodeId) -> (u64, Vec<ForNode>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return (0, Vec::new());
        };
        let Some(p) = c.peers.get_mut(&node).filter(|p| p.up) else {
            return (0, Vec::new());
        };
        let end = p.owed.len().min(p.sent + CLUSTER_BATCH_MAX);
        let first = p.owed.get(p.sent).map_or(0, |o| o.seq);
        let batch: Vec<ForNode> = p
            .owed
            .range(p.sent..end)
            .map(|o| (o.message.clone(), o.groups.clone()))
            .collect();
        c.unsent -= end - p.sent;
        p.sent = end;
        (first, batch)
    }

    /// `node` routed the first `count` messages its current link carried.
    pub fn cluster_acked(&mut self, node: NodeId, count: usize) {
        let Some(p) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.peers.get_mut(&node))
        else {
            return;
        };
        let n = count.min(p.sent);
        p.sent -= n;
        let mut done = Vec::with_capacity(n);
        for o in p.owed.drain(..n) {
            p.owed_bytes -= o.message.payload.len() as u64;
            done.push(o.request);
        }
        for request in done.into_iter().flatten() {
            self.publish_answer(request, ReasonCode::Success);
        }
    }

    /// Messages a peer sent over `link` (this shard accepted it; the id is
    /// the caller's), numbered from `first_seq` in its `stream`, each with
    /// the share groups this node serves for it. A stream is routed on one
    /// shard of this node, its home (its shard number modulo this node's
    /// shards), whichever shard its link landed on, and the link
    /// acknowledges only what the home routed: so a link that broke and
    /// came back on another shard cannot have its stream overtaken, gapped
    /// or repeated by what the old link left in the mesh ([MQTT-4.6.0-6],
    /// order per publisher). Returns how many are routed now (all, at the
    /// home); the rest come from `poll_cluster_routed`. Messages are not
    /// sent on to other nodes: every node links to every other.
    pub fn handle_cluster_publish(
        &mut self,
        now: Instant,
        link: u64,
        stream: StreamKey,
        first_seq: u64,
        messages: Vec<(Message, Vec<ByteString>)>,
    ) -> u64 {
        if messages.is_empty() {
            // A keepalive.
            return 0;
        }
        for (m, _) in messages.iter().filter(|(m, _)| m.retain) {
            self.observe_stamp(m.retain_stamp, now);
        }
        let home = ShardId::new(usize::from(stream.2) % self.config.shards.max(1));
        if home == self.id {
            return self.route_stream(now, link, home, stream, first_seq, messages);
        }
        self.post(
            home,
            MeshMsg::ClusterPublish {
                link,
                stream,
                first_seq,
                messages,
            },
        );
        0
    }

    /// A home routed `count` messages of `link`.
    pub(super) fn cluster_routed(&mut self, link: u64, count: u64) {
        if let Some(c) = self.cluster.as_deref_mut() {
            match c.routed.iter_mut().find(|(l, _)| *l == link) {
                Some((_, n)) => *n += count,
                None => c.routed.push((link, count)),
            }
            Self::signal_routes(c, &mut self.outputs);
        }
    }

    /// Per link this shard accepted, how many more of its messages their
    /// homes routed (to add to what the link acknowledges).
    pub fn poll_cluster_routed(&mut self) -> Vec<(u64, u64)> {
        self.cluster
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.routed))
            .unwrap_or_default()
    }

    /// At a stream's home: routes what no earlier link already routed
    /// (`already_routed`; a new link carries again what the peer had no
    /// acknowledgement for, so a QoS 2 message would otherwise arrive
    /// twice). Returns how many of the frame `link` carried (from shard
    /// `from`) are acknowledged now; with persistence none are: the frame
    /// is acknowledged once every number up to its last is durable where
    /// it went, as a client's publish is (docs/PERSISTENCE.md), so a
    /// message the peer was told about survives this node's crash.
    pub(super) fn route_stream(
        &mut self,
        now: Instant,
        link: u64,
        from: ShardId,
        stream: StreamKey,
        first_seq: u64,
        messages: Vec<(Message, Vec<ByteString>)>,
    ) -> u64 {
        let count = messages.len() as u64;
        let persisting = self.persists_queues();
        let Some(c) = self.cluster.as_deref_mut() else {
            return 0;
        };
        if !c.streams.contains_key(&stream) {
            // A peer's new life starts its streams again and the old life's
            // go; a late frame of an older life was never routed: it is.
            c.streams
                .retain(|(node, life, _), _| *node != stream.0 || *life >= stream.1);
        }
        let state = c.streams.entry(stream).or_default();
        let len = messages.len();
        let skip = already_routed(&mut state.routed, first_seq, len);
        let seq_of = |i: usize| first_seq.saturating_add(i as u64);
        if persisting {
            // Registered before routing: a message can settle at once.
            state
                .unsettled
                .extend((skip..len).map(|i| (seq_of(i), false)));
            state
                .frames
                .push_back((from, link, count, seq_of(len.saturating_sub(1))));
        }
        for (i, (m, groups)) in messages.into_iter().enumerate().skip(skip) {
            let waiter = persisting.then(|| Waiter::Stream(stream, seq_of(i)));
            self.publish_from(now, std::sync::Arc::new(m), waiter, Shares::Only(&groups));
        }
        if !persisting {
            return count;
        }
        self.settle_stream(stream);
        0
    }

    fn stream_in(&mut self, stream: StreamKey) -> Option<&mut StreamIn> {
        self.cluster.as_deref_mut()?.streams.get_mut(&stream)
    }

    /// Message `seq` of `stream` is durable wherever it went.
    pub(super) fn stream_message_done(&mut self, stream: StreamKey, seq: u64) {
        let Some(state) = self.stream_in(stream) else {
            return;
        };
        if let Some(entry) = state.unsettled.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = true;
        }
        self.settle_stream(stream);
    }

    /// Acknowledges, in order, the frames of `stream` whose last number
    /// is settled.
    fn settle_stream(&mut self, stream: StreamKey) {
        let Some(state) = self.stream_in(stream) else {
            return;
        };
        while state.unsettled.front().is_some_and(|(_, done)| *done) {
            state.unsettled.pop_front();
        }
        let through = state.settled_through();
        let mut answers = Vec::new();
        while let Some(&(from, link, count, last)) = state.frames.front() {
            if last > through {
                break;
            }
            state.frames.pop_front();
            answers.push((from, link, count));
        }
        for (from, link, count) in answers {
            self.answer_routed(from, link, count);
        }
    }

    /// Tells the shard whose link `link` carried `count` messages that
    /// they are routed (so it acknowledges them); held while this shard's
    /// mesh is full. This shard's own links wait for its mesh themselves.
    pub(super) fn answer_routed(&mut self, from: ShardId, link: u64, count: u64) {
        if from == self.id {
            return self.cluster_routed(link, count);
        }
        let full = !self.shard_mesh_has_room();
        match self.cluster.as_deref_mut() {
            // Behind held ones, to keep their order.
            Some(c) if full || !c.held_answers.is_empty() => {
                c.held_answers.push((from, link, count))
            }
            _ => self.post(from, MeshMsg::ClusterRouted { link, count }),
        }
    }

    /// The held answers go once the mesh has room again (`poll_mesh`).
    pub(super) fn release_routed_answers(&mut self) {
        let held = match self.cluster.as_deref_mut() {
            Some(c) if !c.held_answers.is_empty() => std::mem::take(&mut c.held_answers),
            _ => return,
        };
        if !self.shard_mesh_has_room() {
            if let Some(c) = self.cluster.as_deref_mut() {
                c.held_answers = held;
            }
            return;
        }
        for (from, link, count) in held {
            self.post(from, MeshMsg::ClusterRouted { link, count });
        }
    }

    /// The retained messages this shard owns, for a peer whose link from
    /// this shard just came up: a node that was down or joined late gets
    /// what was retained meanwhile (`$` topics stay on their node).
    /// With them, its tombstones (stamped clears, empty payloads), so a
    /// peer that kept an older message drops it.
    pub fn cluster_retained_sync(&self) -> Vec<SharedMessage> {
        let Some(c) = self.cluster.as_deref() else {
            return Vec::new();
        };
        let mut out = match TopicFilter::try_from("#") {
            Ok(all) => self.retained_matches(&all),
            Err(_) => Vec::new(),
        };
        out.extend(c.tombstones.iter().cloned());
        out
    }

    /// A retained stamp from a peer or this node's disk: the node's clock
    /// moves past it, unless it is too far ahead (a wrong clock somewhere),
    /// which is counted and said once per 1,024.
    pub(super) fn observe_stamp(&mut self, stamp: u64, now: Instant) {
        let Some(c) = self.cluster.as_deref() else {
            return;
        };
        if stamp == 0 || c.clock.observe(stamp, now) {
            return;
        }
        self.stats.retained_stamps_ahead += 1;
        if self.stats.retained_stamps_ahead % 1024 == 1 {
            self.notice(Notice::RetainedStampAhead {
                stamp,
                count: self.stats.retained_stamps_ahead,
            });
        }
    }

    /// A peer's retained messages and clears (its sync): each goes to its
    /// owner shard, which keeps the greater stamp (`cluster::clock`). Not
    /// delivered: they are not news.
    pub fn handle_cluster_retained(&mut self, messages: Vec<Message>, now: Instant) {
        for m in messages {
            if m.topic.as_str().starts_with('$') {
                continue;
            }
            self.observe_stamp(m.retain_stamp, now);
            let message = Arc::new(m);
            let owner = self.owner_of(message.topic.as_str());
            if owner == self.id {
                self.sync_retained(message);
            } else {
                self.post(owner, MeshMsg::RetainSync { message });
            }
        }
    }

    /// An unstamped one (a peer's retained message restored from a log
    /// written before stamps) is stored only where the topic has nothing.
    pub(super) fn sync_retained(&mut self, message: SharedMessage) {
        let absent = || {
            !message.payload.is_empty()
                && self.retained.get(&message.topic).is_none()
                && self
                    .cluster
                    .as_deref()
                    .is_none_or(|c| c.tombstones.get(&message.topic).is_none())
        };
        if message.retain && (message.retain_stamp != 0 || absent()) {
            let _ = self.apply_retained(message);
        }
    }

    /// Whether `message` from a client of this node may concern other
    /// nodes: in a cluster, and not a `$` topic (those stay on their node).
    pub(super) fn clusters(&self, message: &SharedMessage) -> bool {
        self.cluster.is_some() && !message.topic.as_str().starts_with('$')
    }

    /// The share groups matching `topic` that another node serves this
    /// time: for each group (its route, `$share/{group}/{filter}`) with
    /// members on other nodes, one node among those and this one (when
    /// `shared` has members here), round-robin; the groups served
    /// elsewhere leave `shared`.
    pub(super) fn share_across_nodes(
        &mut self,
        topic: &crate::topic::TopicName,
        shared: &mut Vec<(super::SubKey, super::SubVal)>,
    ) -> Vec<(NodeId, ByteString)> {
        let Some(c) = self.cluster.as_deref_mut() else {
            return Vec::new();
        };
        let mut forwards = Vec::new();
        for (route, mut nodes) in c.remote.shared_for(topic) {
            // Nodes whose link is down (within its grace) serve a group only
            // when no other node can.
            let here = shared.iter().any(|(_, v)| v.filter == route);
            let linked = |n: &NodeId| c.peers.get(n).is_some_and(|p| p.up);
            if here || nodes.iter().any(linked) {
                nodes.retain(|n| linked(n));
            }
            nodes.sort();
            let choices = nodes.len() + usize::from(here);
            // Positions of groups long gone are not kept for ever: past
            // the bound they all start again (balance resumes at once).
            if c.share_rr.len() >= SHARE_RR_MAX && !c.share_rr.contains_key(&route) {
                c.share_rr.clear();
            }
            let turn = c.share_rr.entry(route.clone()).or_insert(0);
            let pick = *turn % choices;
            *turn = turn.wrapping_add(1);
            // This node is choice 0 when it has members.
            if here && pick == 0 {
                continue;
            }
            let node = nodes[pick - usize::from(here)];
            shared.retain(|(_, v)| v.filter != route);
            forwards.push((node, route));
        }
        forwards
    }

    /// The peers a message from this node goes to: those with a matching
    /// route (every linked peer for a retained message, which each node
    /// stores), and those chosen to serve a share group.
    fn cluster_targets(
        &self,
        message: &SharedMessage,
        share_forwards: Vec<(NodeId, ByteString)>,
    ) -> Vec<(NodeId, Vec<ByteString>)> {
        let Some(c) = self.cluster.as_deref() else {
            return Vec::new();
        };
        // A retained change goes to every peer, also one whose link from
        // this shard broke within the grace: the link from the topic's
        // owner shard may be up already, its sync done.
        let mut targets: Vec<(NodeId, Vec<ByteString>)> = if message.retain {
            c.peers
                .iter()
                .filter(|(_, p)| p.up || (p.down_since.is_some() && !p.withdrawn))
                .map(|(n, _)| (*n, Vec::new()))
                .collect()
        } else {
            c.remote
                .nodes_for(&message.topic)
                .into_iter()
                .map(|n| (n, Vec::new()))
                .collect()
        };
        for (node, route) in share_forwards {
            match targets.iter_mut().find(|(n, _)| *n == node) {
                Some((_, groups)) => groups.push(route),
                None => targets.push((node, vec![route])),
            }
        }
        targets
    }

    /// Queues `message` for the peers it goes to; with `request` (QoS 1/2,
    /// a publisher waiting), each peer's acknowledgement answers it once.
    /// Returns how many answers will come, and whether any peer gets it.
    pub(super) fn forward_to_nodes(
        &mut self,
        message: &SharedMessage,
        request: Option<RequestId>,
        share_forwards: Vec<(NodeId, ByteString)>,
    ) -> (usize, bool) {
        let targets = self.cluster_targets(message, share_forwards);
        let Some(c) = self.cluster.as_deref_mut() else {
            return (0, false);
        };
        let request = request.filter(|_| message.qos != QoS::AtMostOnce);
        let mut answers = 0;
        let mut wake = false;
        let mut any = false;
        for (node, groups) in targets {
            let Some(p) = c.peers.get_mut(&node) else {
                continue;
            };
            let bytes = message.payload.len() as u64;
            if !p.up {
                // Kept for the next link, within bounds; past them the
                // peer's routes go.
                if p.withdrawn || p.owed_bytes + bytes > OWED_DOWN_BYTES_MAX {
                    if !p.withdrawn {
                        p.withdrawn = true;
                        c.remote.forget(node);
                    }
                    continue;
                }
            } else {
                wake |= p.owed.len() == p.sent;
                c.unsent += 1;
            }
            p.owed_bytes += bytes;
            p.next_seq = p.next_seq.max(1);
            p.owed.push_back(Owed {
                seq: p.next_seq,
                message: message.clone(),
                groups,
                request,
            });
            p.next_seq += 1;
            any = true;
            answers += usize::from(request.is_some());
        }
        if wake {
            self.outputs.push_back(Output::Cluster);
        }
        (answers, any)
    }

    /// The cluster's registry gave `client_id` to another node (a
    /// takeover across nodes): its session here ends, on this shard, the
    /// registry owner of the id. An online client gets DISCONNECT 0x8E
    /// Session taken over [MQTT-3.1.4-3], and its will is published as in a
    /// takeover.
    /// `taken` is the cluster registry's claim that took the id: a CONNECT
    /// of this node under an older claim, still on its way to this shard,
    /// is refused when it arrives, and one settling ends once settled
    /// (`registry::Registry::fence`).
    pub fn evict_client(&mut self, client_id: &ByteString, taken: u64, now: Instant) {
        let at = match self.registry.fence(client_id, taken) {
            Fenced::Held(at) => at,
            Fenced::NoEntry | Fenced::Settling | Fenced::Kept => return,
        };
        if at.0 == self.id {
            let state = self.take_local(at.1, true, None, now);
            self.evicted(client_id, at, state);
        } else {
            let request = self.new_request(Pending::Evict {
                client_id: client_id.clone(),
                at,
            });
            self.post(
                at.0,
                MeshMsg::TakeOver {
                    session: at.1,
                    request,
                    resume_as: None,
                },
            );
        }
    }

    /// An evicted session's state arrived: it ends, and its id is free here.
    pub(super) fn evicted(
        &mut self,
        client_id: &ByteString,
        at: (ShardId, SessionId),
        state: Option<SessionState>,
    ) {
        self.end_session_buffer(at.1, state);
        self.session_ended_at_owner(client_id, at);
        self.registry.release(client_id, at);
    }

    /// `session` holds its client id under the registry's claim `claim`.
    pub(super) fn cluster_claimed(&mut self, session: SessionId, claim: u64) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.claims.insert(session, claim);
        }
    }

    /// `session` never started (the shard's own registry refused it): the
    /// cluster's claim for it, if any, is released.
    pub(super) fn cluster_claim_unused(&mut self, client_id: &ByteString, session: SessionId) {
        if let Some(c) = self.cluster.as_deref_mut() {
            if let Some(claim) = c.claims.remove(&session) {
                c.released.push((client_id.clone(), claim));
            }
        }
    }

    /// `session` was taken over or evicted: the claim it held is released
    /// in the cluster's registry. A newer claim of this node holds the id
    /// over it (or another node's does, and the release changes nothing);
    /// left in place, it would hold the id again should that newer claim
    /// be undone.
    pub(super) fn cluster_superseded(
        &mut self,
        session: SessionId,
        client_id: Option<&ByteString>,
    ) {
        if let Some(c) = self.cluster.as_deref_mut() {
            let claim = c.claims.remove(&session).unwrap_or(0);
            if let Some(id) = client_id {
                c.released.push((id.clone(), claim));
            }
        }
    }

    /// A session of this node ended: the cluster's registry frees its id,
    /// if that session's claim still holds it (`poll_cluster_released`).
    pub(super) fn cluster_released(&mut self, client_id: &ByteString, session: SessionId) {
        if let Some(c) = self.cluster.as_deref_mut() {
            // A session with no claim on record (restored from disk, or
            // parked before its claim was recorded) releases with 0: any
            // claim this node holds the id under.
            let claim = c.claims.remove(&session).unwrap_or(0);
            c.released.push((client_id.clone(), claim));
        }
    }

    /// The cluster's registry gives `client_id` to this node under `claim`,
    /// a claim of one of its earlier lives: with no session for the id
    /// here (the node died with it), the claim is released
    /// (`poll_cluster_released`). Called on the id's registry owner shard.
    pub fn cluster_check_hold(&mut self, client_id: &ByteString, claim: u64) {
        if self.registry.holder(client_id).is_some() {
            return;
        }
        if let Some(c) = self.cluster.as_deref_mut() {
            c.released.push((client_id.clone(), claim));
        }
    }

    /// Client ids whose sessions ended here since the last call, with the
    /// claims they held them under, for the cluster's registry.
    pub fn poll_cluster_released(&mut self) -> Vec<(ByteString, u64)> {
        self.cluster
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.released))
            .unwrap_or_default()
    }

    /// Messages owed to linked peers and not yet handed to their link.
    pub(super) fn cluster_unsent(&self) -> usize {
        self.cluster.as_deref().map_or(0, |c| c.unsent)
    }

    pub fn cluster_stats(&self) -> ClusterStats {
        let Some(c) = self.cluster.as_deref() else {
            return ClusterStats::default();
        };
        ClusterStats {
            peers_up: c.peers.values().filter(|p| p.up).count() as u64,
            owed: c.peers.values().map(|p| p.owed.len() as u64).sum(),
        }
    }

    /// This node's routes as this shard counts them (tests, inspection).
    pub fn cluster_local_routes(&self) -> Vec<TopicFilter> {
        self.cluster
            .as_deref()
            .map(|c| c.local.filters())
            .unwrap_or_default()
    }

    /// `node`'s routes as this shard knows them (tests, inspection).
    pub fn cluster_remote_routes(&self, node: NodeId) -> Vec<TopicFilter> {
        self.cluster
            .as_deref()
            .map(|c| c.remote.routes_of(node))
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
pub(super) mod tests;
