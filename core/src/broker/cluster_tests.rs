//! Unit tests of a shard's part of a cluster (`broker/cluster.rs`): owed
//! messages through broken links, homes, backpressure, route readiness.

use std::sync::Arc;

use super::*;
use crate::buffer::{MemoryOnly, ShardBuffer};
use crate::limits::ClientLimits;
use crate::session::Message;
use crate::topic::TopicName;

const ME: NodeId = NodeId(1);
const PEER: NodeId = NodeId(2);

/// One shard of one (a node of `ME` with the peer `PEER`).
pub(in crate::broker) fn shard() -> Shard<MemoryOnly> {
    shard_of(0, 1)
}

fn shard_of(id: usize, shards: usize) -> Shard<MemoryOnly> {
    shard_with(id, shards, &[PEER])
}

fn shard_with(id: usize, shards: usize, peers: &[NodeId]) -> Shard<MemoryOnly> {
    let config = Arc::new(super::super::ShardConfig {
        shards,
        instance: 1,
        limits: Arc::new(ClientLimits::default()),
        retained_max: 100,
        retained_bytes_max: 1 << 20,
        partial_bytes_max: 1 << 20,
        selftest: None,
        persistence: None,
    });
    let mut s = Shard::new(ShardId::new(id), config, ShardBuffer::new(None, 1 << 20, 0));
    s.enable_cluster(
        ME,
        Incarnation(1),
        peers,
        Arc::new(NodeClock::logical()),
        t0(),
    );
    s
}

fn routes(filters: &[&str]) -> RouteMsg {
    RouteMsg::Snapshot {
        from: PEER,
        incarnation: Incarnation(7),
        seq: 0,
        filters: filters
            .iter()
            .map(|f| TopicFilter::try_from(*f).unwrap_or_else(|_| unreachable!()))
            .collect(),
    }
}

/// A QoS 1 message on `a/b` whose payload is `n` ten times.
fn message_of(n: u8) -> Message {
    Message {
        topic: TopicName::try_from("a/b").unwrap_or_else(|_| unreachable!()),
        payload: bytes::Bytes::from(vec![n; 10]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: "p".into(),
        retain_stamp: 0,
    }
}

fn publish(s: &mut Shard<MemoryOnly>, now: Instant, n: u8) {
    s.publish_message(now, Arc::new(message_of(n)), None);
}

fn payloads(batch: &[ForNode]) -> Vec<u8> {
    batch.iter().map(|(m, _)| m.payload[0]).collect()
}

#[allow(clippy::disallowed_methods)]
pub(in crate::broker) fn t0() -> Instant {
    Instant::now()
}

#[test]
fn what_a_peer_is_owed_survives_a_broken_link_and_goes_again_in_order() {
    let now = t0();
    let mut s = shard();
    s.cluster_link_up(PEER);
    s.handle_cluster_routes(PEER, routes(&["a/#"]));
    for n in 0..3 {
        publish(&mut s, now, n);
    }
    assert_eq!(s.cluster_unsent(), 3);
    assert_eq!(payloads(&s.poll_cluster(PEER).1), vec![0, 1, 2]);
    assert_eq!(s.cluster_unsent(), 0);
    // The peer routed the first two, then the link broke.
    s.cluster_acked(PEER, 2);
    s.cluster_link_down(PEER, now);
    assert_eq!(s.cluster_unsent(), 0);
    assert!(s.poll_cluster(PEER).1.is_empty());
    // Within the grace, the routes stay and what matches is kept.
    publish(&mut s, now, 3);
    s.handle_tick(now + LINK_GRACE / 2);
    publish(&mut s, now, 4);
    assert_eq!(s.cluster_stats().owed, 3);
    // The next link carries everything unacknowledged, in order.
    s.cluster_link_up(PEER);
    assert_eq!(s.cluster_unsent(), 3);
    assert_eq!(payloads(&s.poll_cluster(PEER).1), vec![2, 3, 4]);
    s.cluster_acked(PEER, 3);
    assert_eq!(s.cluster_stats().owed, 0);
    // A stale acknowledgement count is clamped.
    s.cluster_acked(PEER, 5);
    assert_eq!(s.cluster_unsent(), 0);
}

#[test]
fn a_peer_down_past_the_grace_loses_its_routes_and_keeps_what_it_was_owed() {
    let now = t0();
    let mut s = shard();
    s.cluster_link_up(PEER);
    s.handle_cluster_routes(PEER, routes(&["a/#"]));
    publish(&mut s, now, 0);
    s.cluster_link_down(PEER, now);
    s.handle_tick(now + LINK_GRACE);
    assert!(s.cluster_remote_routes(PEER).is_empty());
    publish(&mut s, now, 1);
    assert_eq!(s.cluster_stats().owed, 1);
    // Back: the kept message goes, and the new link's snapshot brings
    // the routes again.
    s.cluster_link_up(PEER);
    assert_eq!(payloads(&s.poll_cluster(PEER).1), vec![0]);
    s.handle_cluster_routes(PEER, routes(&["a/#"]));
    publish(&mut s, now, 2);
    assert_eq!(payloads(&s.poll_cluster(PEER).1), vec![2]);
}

#[test]
fn routes_of_another_node_and_dollar_topics_are_refused() {
    let now = t0();
    let mut s = shard();
    s.cluster_link_up(PEER);
    // A peer speaks for itself only.
    s.handle_cluster_routes(
        PEER,
        RouteMsg::Snapshot {
            from: NodeId(3),
            incarnation: Incarnation(1),
            seq: 0,
            filters: vec![TopicFilter::try_from("#").unwrap_or_else(|_| unreachable!())],
        },
    );
    assert!(s.cluster_remote_routes(NodeId(3)).is_empty());
    s.handle_cluster_routes(PEER, routes(&["#"]));
    let m = Message {
        topic: TopicName::try_from("$SYS/x").unwrap_or_else(|_| unreachable!()),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: "p".into(),
        retain_stamp: 0,
    };
    s.publish_message(now, Arc::new(m), None);
    assert!(s.poll_cluster(PEER).1.is_empty());
}

#[test]
fn a_home_with_a_full_mesh_holds_its_answers_to_other_shards_links() {
    let now = t0();
    let message = |n: u8| (message_of(n), Vec::new());
    let mut s = shard_of(0, 3);
    let (busy, landing) = (ShardId::new(1), ShardId::new(2));
    // Frames of a stream homed on shard 1 fill the mesh there.
    let away = (PEER, Incarnation(3), 1);
    let mut posted = 0;
    while s.shard_mesh_has_room() {
        posted += 1;
        assert_eq!(
            s.handle_cluster_publish(now, 5, away, posted, vec![message(1)]),
            0
        );
    }
    // Shard 2's link brings a frame of a stream homed here: routed, but
    // the answer to shard 2 waits for room.
    let home = (PEER, Incarnation(3), 0);
    let frame = MeshMsg::ClusterPublish {
        link: 9,
        stream: home,
        first_seq: 1,
        messages: vec![message(2), message(3)],
    };
    s.handle_mesh(landing, frame, now);
    assert!(s.poll_mesh(landing).is_none());
    assert!(matches!(
        s.poll_mesh(busy),
        Some(MeshMsg::ClusterPublish { .. })
    ));
    match s.poll_mesh(landing) {
        Some(MeshMsg::ClusterRouted { link, count }) => assert_eq!((link, count), (9, 2)),
        other => panic!("expected the answer, got {other:?}"),
    }
}

#[test]
fn a_shard_takes_clients_once_it_knows_every_peers_routes_or_the_peer_is_unreachable() {
    let s = shard();
    let start = t0(); // just after the shard's start
    assert!(!s.cluster_routes_ready(start));
    // A peer that never links counts as down once the grace passed.
    assert!(s.cluster_routes_ready(start + LINK_GRACE));

    let mut s = shard();
    s.cluster_link_up(PEER);
    // Linked but its routes not yet here: not even after the grace.
    assert!(!s.cluster_routes_ready(start + LINK_GRACE * 2));
    s.handle_cluster_routes(PEER, routes(&["a/#"]));
    assert!(s.cluster_routes_ready(start));
    // Known routes stay known through a break (kept for the grace).
    s.cluster_link_down(PEER, start);
    assert!(s.cluster_routes_ready(start));

    // A failed attempt to link: unreachable at once.
    let mut s = shard();
    s.cluster_link_failed(PEER);
    assert!(s.cluster_routes_ready(start));
    // Until this shard's next link comes up: then its routes are awaited.
    s.cluster_link_up(PEER);
    assert!(!s.cluster_routes_ready(start));
    // A link that ends before its routes came is not a reason to stop
    // waiting (a flap right after a restart would lose acknowledged
    // messages: the simulator's restarts found it); the runtime's cap is.
    let mut s = shard();
    s.cluster_link_up(PEER);
    s.cluster_link_down(PEER, start);
    assert!(!s.cluster_routes_ready(start));
    // Routes withdrawn after the grace are not known again until the next
    // link's snapshot.
    let mut s = shard();
    s.cluster_link_up(PEER);
    s.handle_cluster_routes(PEER, routes(&["a/#"]));
    s.cluster_link_down(PEER, start);
    s.handle_tick(start + LINK_GRACE);
    s.cluster_link_up(PEER);
    assert!(!s.cluster_routes_ready(start + LINK_GRACE));
    s.handle_cluster_routes(PEER, routes(&["a/#"]));
    assert!(s.cluster_routes_ready(start + LINK_GRACE));
    // Single node: always.
    let single: Shard<MemoryOnly> = Shard::new(
        ShardId::new(0),
        s.config.clone(),
        crate::buffer::ShardBuffer::new(None, 1 << 20, 0),
    );
    assert!(single.cluster_routes_ready(start));
}

/// A peer's link breaks (it may have died half-way through a retained
/// change): the shard's retained messages go again to every other linked
/// peer, at most once per `LINK_GRACE` per peer.
#[test]
fn a_broken_link_sends_the_retained_messages_again_to_the_other_peers() {
    const THIRD: NodeId = NodeId(3);
    let mut s = shard_with(0, 1, &[PEER, THIRD]);
    let t = t0();
    s.cluster_link_up(PEER);
    s.cluster_link_up(THIRD);
    assert!(!s.cluster_take_resync(THIRD, t));
    s.cluster_link_down(PEER, t);
    // Once what the peer sent before it broke has landed.
    assert!(!s.cluster_take_resync(THIRD, t));
    let settled = t + RESYNC_SETTLE;
    assert!(s.cluster_take_resync(THIRD, settled));
    assert!(!s.cluster_take_resync(THIRD, settled));
    // Not to the peer whose link broke, nor to one not linked.
    assert!(!s.cluster_take_resync(PEER, settled));
    // The link flaps: the next time waits for the grace.
    s.cluster_link_up(PEER);
    s.cluster_link_down(PEER, settled);
    assert!(!s.cluster_take_resync(THIRD, settled + RESYNC_SETTLE));
    assert!(s.cluster_take_resync(THIRD, settled + LINK_GRACE));
}
