//! Scenario tests for the session queue with a disk buffer behind it, on a
//! fake clock and an in-memory fake `Store`: spilling past the memory
//! budget, draining in order [MQTT-4.6.0-1], lost records, the full-buffer
//! strategies, and moving a queue between shards.
// The fake clock's base instant comes from the clock once (core's clippy.toml
// bans clock reads in the library, not here).
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::PollPacket;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;
use shardmq_core::buffer::{memory_cost, Lease, RecordRef, ShardBuffer, Store, StoreError};
use shardmq_core::codec::{
    Connect, Packet, PacketId, Properties, ProtocolVersion, PubResponse, QoS, ReasonCode,
    SubscriptionId,
};
use shardmq_core::limits::{ClientLimits, QueueFullStrategy, QueueLimit, SESSION_SHARES};
use shardmq_core::session::{
    AllowAll, Connection, Delivery, Enqueued, Event, Message, SessionState, SharedMessage,
};
use shardmq_core::topic::TopicName;

/// An in-memory disk buffer: records by id, an optional capacity, and ids
/// to report as corrupt.
#[derive(Default)]
struct FakeStore {
    records: HashMap<u32, (u64, Message)>,
    next: u32,
    capacity: Option<usize>,
    corrupt: Vec<u32>,
    appended: u64,
    released: u64,
}

impl Store for FakeStore {
    fn append(&mut self, owner: u64, m: &Message) -> Result<RecordRef, StoreError> {
        if self.capacity.is_some_and(|c| self.records.len() >= c) {
            return Err(StoreError::Full);
        }
        self.next += 1;
        self.records.insert(self.next, (owner, m.clone()));
        self.appended += 1;
        Ok(RecordRef {
            segment: 1,
            block: 0,
            at: self.next,
            len: RECORD_LEN,
        })
    }

    fn read(&mut self, r: RecordRef, owner: u64) -> Result<Message, StoreError> {
        if self.corrupt.contains(&r.at) {
            return Err(StoreError::Lost);
        }
        match self.records.get(&r.at) {
            Some((o, m)) if *o == owner => Ok(m.clone()),
            _ => Err(StoreError::Lost),
        }
    }

    fn release(&mut self, r: RecordRef) {
        assert!(self.records.remove(&r.at).is_some(), "double release");
        self.released += 1;
    }
}

/// What every fake record counts against a session's disk share.
const RECORD_LEN: u32 = 100;

/// The fake store in a shard's buffer, with its memory accounting.
struct Shard {
    buffer: ShardBuffer<FakeStore>,
}

impl Shard {
    fn new(budget: u64) -> Shard {
        Shard::with_disk_share(budget, u64::MAX)
    }

    /// A shard whose sessions may each hold `disk_share` record bytes.
    fn with_disk_share(budget: u64, disk_share: u64) -> Shard {
        let store_bytes = disk_share.saturating_mul(SESSION_SHARES);
        Shard {
            buffer: ShardBuffer::new(Some(FakeStore::default()), budget, store_bytes),
        }
    }

    fn lease(&mut self, owner: u64) -> Lease<'_> {
        self.buffer.lease(owner)
    }

    fn store(&mut self) -> &mut FakeStore {
        self.buffer.store_mut().unwrap()
    }

    fn memory_bytes(&self) -> u64 {
        self.buffer.memory_bytes()
    }
}

const OWNER: u64 = 7;

fn message(i: usize, qos: QoS) -> SharedMessage {
    Arc::new(Message {
        topic: TopicName::try_from("t/spill").unwrap(),
        payload: Bytes::from(format!("{i:06}")),
        qos,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("publisher"),
        retain_stamp: 0,
    })
}

/// Bytes one test message counts against the budget.
fn cost() -> u64 {
    memory_cost(&message(0, QoS::AtLeastOnce))
}

fn granted(qos: QoS) -> Delivery {
    Delivery {
        granted_qos: qos,
        subscription_ids: vec![SubscriptionId::new(3).unwrap()],
        ..Delivery::default()
    }
}

fn limit(len: u32, strategy: QueueFullStrategy) -> QueueLimit {
    QueueLimit {
        length_max: std::num::NonZeroU32::new(len),
        strategy,
        ..QueueLimit::default()
    }
}

fn offer(state: &mut SessionState, shard: &mut Shard, i: usize, l: &QueueLimit) -> Enqueued {
    offer_at(state, shard, i, l, QoS::AtLeastOnce)
}

fn discard(state: &mut SessionState, shard: &mut Shard) {
    state.discard_queue(&mut shard.lease(OWNER));
}

/// `offer` of message `i` at `qos`, granted `qos`, to an offline session.
fn offer_at(
    state: &mut SessionState,
    shard: &mut Shard,
    i: usize,
    l: &QueueLimit,
    qos: QoS,
) -> Enqueued {
    state.enqueue(
        Instant::now(),
        &message(i, qos),
        &granted(qos),
        false,
        l,
        &mut shard.lease(OWNER),
    )
}

/// Resumes `state` on a new v5 connection and returns it, CONNACK read.
fn resume(state: SessionState) -> Connection {
    resume_with(state, ClientLimits::default(), 300)
}

fn resume_with(state: SessionState, limits: ClientLimits, expiry_secs: u32) -> Connection {
    let now = Instant::now();
    let mut conn = Connection::new(now, Arc::new(limits));
    conn.handle_packet(
        now,
        Packet::Connect(Box::new(Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 60,
            properties: Properties {
                session_expiry_interval: Some(expiry_secs),
                ..Properties::default()
            }
            .into(),
            client_id: "sub".into(),
            will: None,
            username: None,
            password: None,
        })),
    );
    assert!(matches!(conn.poll_event(), Some(Event::Connect(_))));
    conn.accept(now, Some(state), None, Box::new(AllowAll));
    let mut no_disk = ShardBuffer::memory_only();
    let connack = conn.poll_packet(now, &mut no_disk.lease(OWNER));
    assert!(matches!(connack, Some(Packet::ConnAck(_))));
    conn
}

/// Drains everything, acknowledging each QoS 1 publish; returns payloads.
fn drain(conn: &mut Connection, shard: &mut Shard) -> Vec<String> {
    let now = Instant::now();
    let mut out = Vec::new();
    while let Some(p) = conn.poll_packet(now, &mut shard.lease(OWNER)) {
        if let Packet::Publish(p) = p {
            out.push(String::from_utf8(p.payload.to_vec()).unwrap());
            assert_eq!(p.properties.subscription_identifiers, vec![3]);
            if let Some(id) = p.packet_id {
                respond(conn, Packet::PubAck, id);
            }
        }
    }
    out
}

/// Sends what the connection will send now, without acknowledging; adds
/// the payloads to `sent` and returns the packet ids.
fn poll_ids(conn: &mut Connection, shard: &mut Shard, sent: &mut Vec<String>) -> Vec<PacketId> {
    let publishes = poll_publishes(conn, shard);
    sent.extend(publishes.iter().map(|(payload, _, _)| payload.clone()));
    publishes.into_iter().map(|(_, id, _)| id).collect()
}

/// Every packet the connection sends now, with the buffer lent.
fn poll_all(conn: &mut Connection, shard: &mut Shard) -> Vec<Packet> {
    let now = Instant::now();
    std::iter::from_fn(|| conn.poll_packet(now, &mut shard.lease(OWNER))).collect()
}

/// The client answers `id` with a successful `kind` (PUBACK, PUBREC, ...).
fn respond(conn: &mut Connection, kind: fn(PubResponse) -> Packet, id: PacketId) {
    conn.handle_packet(
        Instant::now(),
        kind(PubResponse::new(id, ReasonCode::Success)),
    );
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{i:06}")).collect()
}

fn session() -> SessionState {
    SessionState::new("sub".into(), Duration::from_secs(300))
}

#[test]
fn a_session_keeps_at_most_its_share_of_the_memory_budget_then_spills() {
    // One stuck subscriber took the shard's whole budget and a healthy one
    // on the same shard spilled or lost messages: now a session keeps at
    // most `limit.bytes_max` (its share) in memory, and the shard's room
    // stays for the others.
    let mut shard = Shard::new(100 * cost());
    let l = QueueLimit {
        bytes_max: 3 * cost(),
        ..limit(1000, QueueFullStrategy::None)
    };
    let mut stuck = SessionState::new("stuck".into(), Duration::from_secs(60));
    for i in 0..10 {
        assert_eq!(offer(&mut stuck, &mut shard, i, &l), Enqueued::Queued);
    }
    assert_eq!(stuck.memory_bytes(), 3 * cost());
    assert_eq!(stuck.spilled_len(), 7);
    let mut healthy = SessionState::new("healthy".into(), Duration::from_secs(60));
    assert_eq!(offer(&mut healthy, &mut shard, 0, &l), Enqueued::Queued);
    assert_eq!(
        healthy.spilled_len(),
        0,
        "the healthy session stays in memory"
    );
    assert_eq!(shard.memory_bytes(), 4 * cost());
    discard(&mut stuck, &mut shard);
    discard(&mut healthy, &mut shard);
    assert_eq!(shard.memory_bytes(), 0);
    assert_eq!(shard.store().records.len(), 0);
}

#[test]
fn a_queued_message_counts_the_properties_it_keeps() {
    // A 6-byte payload with 1 MiB of user properties (slices of the
    // PUBLISH's frame, which stays alive with them) counted like any
    // 6-byte message: a queue of them held 1 MiB per ~270 bytes counted.
    let mut m = (*message(0, QoS::AtLeastOnce)).clone();
    m.properties.user_properties = vec![("k".into(), ByteString::from("v".repeat(1024))); 1024];
    let m = Arc::new(m);
    assert!(memory_cost(&m) > 1 << 20, "{}", memory_cost(&m));
    let mut shard = Shard::new(u64::MAX);
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    let queued = state.enqueue(
        Instant::now(),
        &m,
        &granted(QoS::AtLeastOnce),
        false,
        &l,
        &mut shard.lease(OWNER),
    );
    assert_eq!(queued, Enqueued::Queued);
    assert_eq!(shard.memory_bytes(), memory_cost(&m));
    discard(&mut state, &mut shard);
    assert_eq!(shard.memory_bytes(), 0);
}

#[test]
fn a_session_past_its_disk_share_is_full_while_the_buffer_has_room() {
    // With the disk buffer, one non-reading subscriber took the shard's
    // whole share of maxSize; now it takes its own share and then its
    // strategy applies, and another session still spills.
    let mut shard = Shard::with_disk_share(0, 3 * u64::from(RECORD_LEN));
    let none = limit(1000, QueueFullStrategy::None);
    let mut stuck = SessionState::new("stuck".into(), Duration::from_secs(60));
    for i in 0..3 {
        assert_eq!(offer(&mut stuck, &mut shard, i, &none), Enqueued::Queued);
    }
    assert_eq!(stuck.disk_bytes(), 3 * u64::from(RECORD_LEN));
    assert_eq!(
        offer(&mut stuck, &mut shard, 3, &none),
        Enqueued::RejectedQueueFull
    );
    assert_eq!(stuck.stats.dropped_queue_full, 1);
    let mut other = SessionState::new("other".into(), Duration::from_secs(60));
    let mut lease = shard.lease(OWNER + 1);
    let m = message(9, QoS::AtLeastOnce);
    let d = granted(QoS::AtLeastOnce);
    let outcome = other.enqueue(Instant::now(), &m, &d, false, &none, &mut lease);
    assert_eq!(outcome, Enqueued::Queued);
    assert_eq!(other.spilled_len(), 1);
    // DropOldest makes room within the share: the oldest record goes.
    let oldest = limit(1000, QueueFullStrategy::DropOldest);
    assert_eq!(
        offer(&mut stuck, &mut shard, 4, &oldest),
        Enqueued::DroppedOldest
    );
    assert_eq!(stuck.spilled_len(), 3);
    assert_eq!(stuck.disk_bytes(), 3 * u64::from(RECORD_LEN));
    discard(&mut stuck, &mut shard);
    assert_eq!(stuck.disk_bytes(), 0);
}

#[test]
fn offline_queue_spills_past_the_memory_budget_and_drains_in_order() {
    // [MQTT-4.6.0-1] order kept across memory and disk.
    let mut shard = Shard::new(10 * cost());
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    for i in 0..100 {
        assert_eq!(offer(&mut state, &mut shard, i, &l), Enqueued::Queued);
    }
    assert_eq!(state.queued_len(), 100);
    assert_eq!(state.spilled_len(), 90);
    assert_eq!(shard.memory_bytes(), 10 * cost());
    let mut conn = resume(state);
    assert_eq!(drain(&mut conn, &mut shard), expected(0..100));
    assert_eq!(shard.store().released, 90);
    assert!(shard.store().records.is_empty());
    assert_eq!(shard.memory_bytes(), 0);
}

#[test]
fn spilled_messages_in_flight_are_bounded_memory_ones_use_the_full_window() {
    // [MQTT-3.3.4-9]: Receive Maximum is a ceiling. A client announcing
    // 65,535 gets at most `spilled_inflight_max` messages read back from
    // disk unacknowledged; messages still in memory use its whole window.
    let mut shard = Shard::new(8 * cost());
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    for i in 0..12 {
        offer(&mut state, &mut shard, i, &l);
    }
    assert_eq!(state.spilled_len(), 4);
    let limits = ClientLimits {
        spilled_inflight_max: std::num::NonZeroU16::new(5).unwrap(),
        ..ClientLimits::default()
    };
    let mut conn = resume_with(state, limits, 300);
    let mut sent = Vec::new();
    // All 8 from memory (past the bound of 5), then none from disk until
    // fewer than 5 are in flight.
    let first = poll_ids(&mut conn, &mut shard, &mut sent);
    assert_eq!(first.len(), 8, "in flight: {first:?}");
    assert!(!conn.wants_transmit());
    for id in &first[..4] {
        respond(&mut conn, Packet::PubAck, *id);
    }
    assert!(conn.wants_transmit());
    let second = poll_ids(&mut conn, &mut shard, &mut sent);
    assert_eq!(second.len(), 1, "4 in flight: one spilled message may go");
    for id in first[4..].iter().chain(&second) {
        respond(&mut conn, Packet::PubAck, *id);
    }
    let last = poll_ids(&mut conn, &mut shard, &mut sent);
    assert_eq!(sent, expected(0..12), "order kept [MQTT-4.6.0-1]");
    // A spilled message's record is held until its PUBACK, and released at
    // the writer's next turn.
    assert_eq!(shard.store().released, 1);
    for id in &last {
        respond(&mut conn, Packet::PubAck, *id);
    }
    poll_ids(&mut conn, &mut shard, &mut sent);
    assert_eq!(shard.store().released, 4);
    assert!(shard.store().records.is_empty());
}

#[test]
fn queue_length_limit_bounds_messages_in_memory_not_on_disk() {
    let mut shard = Shard::new(u64::MAX);
    let mut state = session();
    let l = limit(5, QueueFullStrategy::None);
    for i in 0..20 {
        assert_eq!(offer(&mut state, &mut shard, i, &l), Enqueued::Queued);
    }
    assert_eq!(state.spilled_len(), 15);
}

#[test]
fn memory_is_used_again_once_the_budget_frees_and_order_holds() {
    let mut shard = Shard::new(3 * cost());
    let l = limit(1000, QueueFullStrategy::None);
    // Another session holds the whole budget: these spill.
    let mut other = SessionState::new("other".into(), Duration::from_secs(60));
    let mut lease = shard.lease(OWNER + 1);
    for i in 0..3 {
        let m = message(100 + i, QoS::AtLeastOnce);
        other.enqueue(
            Instant::now(),
            &m,
            &granted(QoS::AtLeastOnce),
            false,
            &l,
            &mut lease,
        );
    }
    let mut state = session();
    for i in 0..6 {
        offer(&mut state, &mut shard, i, &l);
    }
    assert_eq!(state.spilled_len(), 6);
    // The other session's memory leaves: new messages fit in memory again,
    // behind the spilled ones.
    other.discard_queue(&mut shard.lease(OWNER + 1));
    for i in 6..8 {
        offer(&mut state, &mut shard, i, &l);
    }
    assert_eq!(state.spilled_len(), 6);
    assert_eq!(shard.memory_bytes(), 2 * cost());
    let mut conn = resume(state);
    assert_eq!(drain(&mut conn, &mut shard), expected(0..8));
    assert_eq!(shard.memory_bytes(), 0);
}

#[test]
fn corrupt_spilled_record_is_counted_lost_released_and_skipped() {
    let mut shard = Shard::new(0);
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    for i in 0..5 {
        offer(&mut state, &mut shard, i, &l);
    }
    shard.store().corrupt.push(3); // the record of message 2
    let mut conn = resume(state);
    assert_eq!(
        drain(&mut conn, &mut shard),
        vec!["000000", "000001", "000003", "000004"]
    );
    assert_eq!(conn.session().unwrap().stats.dropped_lost, 1);
    assert_eq!(shard.store().released, 5);
}

#[test]
fn full_buffer_with_strategy_none_rejects_the_new_message() {
    let mut shard = Shard::new(2 * cost());
    shard.store().capacity = Some(3);
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    for i in 0..5 {
        assert_eq!(offer(&mut state, &mut shard, i, &l), Enqueued::Queued);
    }
    assert_eq!(
        offer(&mut state, &mut shard, 5, &l),
        Enqueued::RejectedQueueFull
    );
    assert_eq!(state.stats.dropped_queue_full, 1);
    let mut conn = resume(state);
    assert_eq!(drain(&mut conn, &mut shard), expected(0..5));
}

#[test]
fn full_buffer_with_drop_oldest_drops_the_oldest_and_keeps_the_newest() {
    let mut shard = Shard::new(2 * cost());
    shard.store().capacity = Some(3);
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::DropOldest);
    for i in 0..5 {
        offer(&mut state, &mut shard, i, &l);
    }
    // Oldest (0) is in memory: the new one takes its place there.
    assert_eq!(
        offer(&mut state, &mut shard, 5, &l),
        Enqueued::DroppedOldest
    );
    assert_eq!(state.queued_len(), 5);
    assert_eq!(shard.memory_bytes(), 2 * cost());
    let mut conn = resume(state);
    assert_eq!(
        drain(&mut conn, &mut shard),
        vec!["000001", "000002", "000003", "000004", "000005"]
    );
    assert!(shard.store().records.is_empty());
}

#[test]
fn drop_oldest_on_disk_releases_its_record() {
    let mut shard = Shard::new(0);
    shard.store().capacity = Some(3);
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::DropOldest);
    for i in 0..3 {
        offer(&mut state, &mut shard, i, &l);
    }
    // Oldest is on disk; its record is released, which (in the fake, as
    // after a segment reclaim in the real buffer) makes room.
    assert_eq!(
        offer(&mut state, &mut shard, 3, &l),
        Enqueued::DroppedOldest
    );
    assert_eq!(shard.store().released, 1);
    let mut conn = resume(state);
    assert_eq!(drain(&mut conn, &mut shard), expected(1..4));
}

#[test]
fn expired_spilled_message_is_dropped_at_drain() {
    // [MQTT-3.3.2-5] an expired message is not delivered.
    let mut shard = Shard::new(0);
    let mut state = session();
    let now = Instant::now();
    let mut m = (*message(0, QoS::AtLeastOnce)).clone();
    m.expires_at = Some(now + Duration::from_millis(1));
    let l = limit(1000, QueueFullStrategy::None);
    state.enqueue(
        now,
        &Arc::new(m),
        &granted(QoS::AtLeastOnce),
        false,
        &l,
        &mut shard.lease(OWNER),
    );
    offer(&mut state, &mut shard, 1, &l);
    std::thread::sleep(Duration::from_millis(2));
    let mut conn = resume(state);
    assert_eq!(drain(&mut conn, &mut shard), vec!["000001"]);
    assert_eq!(conn.session().unwrap().stats.dropped_expired, 1);
    assert!(shard.store().records.is_empty());
}

#[test]
fn unspill_reads_the_queue_back_for_another_shard_and_releases_it() {
    let mut from = Shard::new(4 * cost());
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    for i in 0..10 {
        offer(&mut state, &mut from, i, &l);
    }
    from.store().corrupt.push(2); // message 5's record
    state.unspill(&mut from.lease(OWNER));
    assert_eq!(state.spilled_len(), 0);
    assert_eq!(state.stats.dropped_lost, 1);
    assert!(from.store().records.is_empty());
    // The new shard takes it over its budget, then spills the excess.
    let mut to = Shard::new(3 * cost());
    to.buffer.join(state.held());
    state.spill_excess(&l, &mut to.lease(OWNER));
    assert_eq!(to.memory_bytes(), 3 * cost());
    assert_eq!(state.spilled_len(), 6);
    let mut conn = resume(state);
    let mut want = expected(0..10);
    want.remove(5);
    assert_eq!(drain(&mut conn, &mut to), want);
}

#[test]
fn discarding_a_queue_releases_every_record_and_its_memory() {
    let mut shard = Shard::new(2 * cost());
    let mut state = session();
    let l = limit(1000, QueueFullStrategy::None);
    for i in 0..6 {
        offer(&mut state, &mut shard, i, &l);
    }
    state.discard_queue(&mut shard.lease(OWNER));
    assert_eq!(state.queued_len(), 0);
    assert_eq!(shard.memory_bytes(), 0);
    assert!(shard.store().records.is_empty());
}

#[test]
fn session_ended_with_the_connection_is_handed_out_for_release() {
    let mut shard = Shard::new(0);
    let mut state = session();
    offer(
        &mut state,
        &mut shard,
        0,
        &limit(10, QueueFullStrategy::None),
    );
    // Session expiry 0: the session ends with the connection (§4.1).
    let mut conn = resume_with(state, ClientLimits::default(), 0);
    conn.handle_connection_lost();
    let closed = std::iter::from_fn(|| conn.poll_event())
        .find_map(|e| match e {
            Event::Closed { session, .. } => Some(session),
            _ => None,
        })
        .unwrap();
    assert!(closed.is_none());
    let mut ended = conn.take_ended_session().unwrap();
    assert_eq!(ended.spilled_len(), 1);
    ended.discard_queue(&mut shard.lease(OWNER));
    assert!(shard.store().records.is_empty());
}

/// Ends `conn` as a lost connection and returns the session it keeps.
fn lose(conn: &mut Connection) -> SessionState {
    conn.handle_connection_lost();
    std::iter::from_fn(|| conn.poll_event())
        .find_map(|e| match e {
            Event::Closed { session, .. } => session,
            _ => None,
        })
        .map(|s| *s)
        .expect("a persistent session")
}

/// (payload, packet id, DUP) of every PUBLISH polled with the buffer lent.
fn poll_publishes(conn: &mut Connection, shard: &mut Shard) -> Vec<(String, PacketId, bool)> {
    let now = Instant::now();
    let mut out = Vec::new();
    while let Some(p) = conn.poll_packet(now, &mut shard.lease(OWNER)) {
        if let Packet::Publish(p) = p {
            let payload = String::from_utf8(p.payload.to_vec()).unwrap();
            out.push((payload, p.packet_id.unwrap(), p.dup));
        }
    }
    out
}

#[test]
fn a_spilled_message_in_flight_is_resent_from_disk_and_released_on_its_puback() {
    // [MQTT-4.4.0-1] unacknowledged PUBLISH packets are resent on resume,
    // with DUP set [MQTT-3.3.1-1], in their original order [MQTT-4.6.0-1].
    let mut shard = Shard::new(0);
    let mut state = session();
    let l = limit(100, QueueFullStrategy::None);
    for i in 0..3 {
        offer(&mut state, &mut shard, i, &l);
    }
    assert_eq!(state.spilled_len(), 3);
    let mut conn = resume(state);
    let first = poll_publishes(&mut conn, &mut shard);
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|(_, _, dup)| !dup));
    // In flight from disk: the records stay until acknowledged.
    assert_eq!(shard.store().released, 0);
    let state = lose(&mut conn);
    assert_eq!(state.spilled_len(), 0);
    assert_eq!(state.buffer_records(), 3);
    assert_eq!(state.buffer_refs().len(), 3);
    assert_eq!(state.first_buffer_ref(), Some(state.buffer_refs()[0]));
    let mut conn = resume(state);
    let again = poll_publishes(&mut conn, &mut shard);
    let expect: Vec<_> = first
        .iter()
        .map(|(p, id, _)| (p.clone(), *id, true))
        .collect();
    assert_eq!(again, expect);
    for (_, id, _) in &again {
        respond(&mut conn, Packet::PubAck, *id);
    }
    assert!(poll_publishes(&mut conn, &mut shard).is_empty());
    assert_eq!(shard.store().released, 3);
    assert!(shard.store().records.is_empty());
}

#[test]
fn a_spilled_qos2_message_keeps_its_record_until_pubrec_then_only_pubrel_is_resent() {
    // [MQTT-4.3.3-4] PUBREC is answered with PUBREL; from then on the
    // message itself is released and a resumed session resends only the
    // PUBREL [MQTT-4.4.0-1]; PUBCOMP ends the exchange [MQTT-4.3.3-5].
    let mut shard = Shard::new(0);
    let mut state = session();
    let l = limit(100, QueueFullStrategy::None);
    for i in 0..2 {
        offer_at(&mut state, &mut shard, i, &l, QoS::ExactlyOnce);
    }
    assert_eq!(state.spilled_len(), 2);
    let mut conn = resume(state);
    let sent = poll_publishes(&mut conn, &mut shard);
    assert_eq!(sent.len(), 2);
    respond(&mut conn, Packet::PubRec, sent[0].1);
    // The PUBREL goes out; the first record is released at that turn, the
    // second (no PUBREC yet) is held.
    let out = poll_all(&mut conn, &mut shard);
    assert_eq!(
        out,
        vec![Packet::PubRel(PubResponse::new(
            sent[0].1,
            ReasonCode::Success
        ))]
    );
    assert_eq!(shard.store().released, 1);
    let state = lose(&mut conn);
    assert_eq!(state.buffer_records(), 1);
    let mut conn = resume(state);
    let again = poll_all(&mut conn, &mut shard);
    match again.as_slice() {
        [Packet::PubRel(r), Packet::Publish(p)] => {
            assert_eq!(r.packet_id, sent[0].1);
            assert_eq!((p.packet_id, p.dup), (Some(sent[1].1), true));
            assert_eq!(&p.payload[..], format!("{:06}", 1).as_bytes());
        }
        other => panic!("{other:?}"),
    }
    respond(&mut conn, Packet::PubComp, sent[0].1);
    respond(&mut conn, Packet::PubRec, sent[1].1);
    respond(&mut conn, Packet::PubComp, sent[1].1);
    poll_all(&mut conn, &mut shard);
    assert_eq!(conn.session().unwrap().inflight_len(), 0);
    assert_eq!(shard.store().released, 2);
    assert!(shard.store().records.is_empty());
}

#[test]
fn an_in_flight_spilled_message_that_cannot_be_read_again_ends_its_exchange() {
    let mut shard = Shard::new(0);
    let mut state = session();
    let l = limit(100, QueueFullStrategy::None);
    for i in 0..2 {
        offer(&mut state, &mut shard, i, &l);
    }
    let mut conn = resume(state);
    assert_eq!(poll_publishes(&mut conn, &mut shard).len(), 2);
    let state = lose(&mut conn);
    // The first record is damaged while the client is away.
    let first = state.buffer_refs()[0];
    shard.store().corrupt.push(first.at);
    let mut conn = resume(state);
    let again = poll_publishes(&mut conn, &mut shard);
    assert_eq!(again.len(), 1, "only the readable one is resent");
    assert_eq!(again[0].0, format!("{:06}", 1));
    let s = conn.session().unwrap();
    assert_eq!(s.stats.dropped_lost, 1);
    assert_eq!(s.inflight_len(), 1, "the lost exchange ended");
    // Its record was released at the writer's turn; the other is held.
    assert_eq!(shard.store().released, 1);
    assert_eq!(shard.store().records.len(), 1);
}

#[test]
fn discard_and_unspill_account_for_spilled_messages_in_flight() {
    let mut shard = Shard::new(0);
    let l = limit(100, QueueFullStrategy::None);
    let in_flight = |shard: &mut Shard| {
        let mut state = session();
        for i in 0..4 {
            offer(&mut state, shard, i, &l);
        }
        let mut conn = resume(state);
        let sent = poll_publishes(&mut conn, shard);
        // One acknowledged: its record is retired, not yet released.
        respond(&mut conn, Packet::PubAck, sent[0].1);
        lose(&mut conn)
    };
    // The session ends: every record it holds is released.
    let mut state = in_flight(&mut shard);
    assert_eq!(state.buffer_records(), 4);
    state.discard_queue(&mut shard.lease(OWNER));
    assert!(shard.store().records.is_empty());
    assert_eq!(state.buffer_records(), 0);

    // The session moves to another shard: in-flight messages come back
    // into memory and are resent from there, without this buffer.
    let mut state = in_flight(&mut shard);
    state.unspill(&mut shard.lease(OWNER));
    assert!(shard.store().records.is_empty());
    assert_eq!(state.buffer_records(), 0);
    let mut conn = resume(state);
    let now = Instant::now();
    let mut no_disk = ShardBuffer::memory_only();
    let resent: Vec<String> =
        std::iter::from_fn(|| conn.poll_packet(now, &mut no_disk.lease(OWNER)))
            .filter_map(|p| match p {
                Packet::Publish(p) if p.dup => Some(String::from_utf8(p.payload.to_vec()).unwrap()),
                _ => None,
            })
            .collect();
    assert_eq!(resent, expected(1..4));
}

proptest! {
    /// Whatever the budget, length limit and interleaving of arrivals and
    /// drains: everything is delivered once, in order, every record is
    /// released and the memory count returns to zero.
    #[test]
    fn spill_and_drain_keep_order_and_release_everything(
        budget_msgs in 0u64..8,
        len in 1u32..8,
        ops in proptest::collection::vec(0u8..4, 1..120),
    ) {
        let mut shard = Shard::new(budget_msgs * cost());
        let limits = ClientLimits {
            queue: limit(len, QueueFullStrategy::None),
            ..ClientLimits::default()
        };
        let mut conn = resume_with(session(), limits, 300);
        let now = Instant::now();
        let mut sent = 0;
        let mut got = Vec::new();
        for op in ops {
            if op == 0 {
                got.extend(drain(&mut conn, &mut shard));
            } else {
                let outcome = conn.deliver(
                    now,
                    &message(sent, QoS::AtLeastOnce),
                    &granted(QoS::AtLeastOnce),
                    &mut shard.lease(OWNER),
                );
                prop_assert_eq!(outcome, Enqueued::Queued);
                sent += 1;
            }
        }
        got.extend(drain(&mut conn, &mut shard));
        prop_assert_eq!(got, expected(0..sent));
        prop_assert!(shard.store().records.is_empty());
        prop_assert_eq!(shard.store().released, shard.store().appended);
        prop_assert_eq!(shard.memory_bytes(), 0);
    }
}
