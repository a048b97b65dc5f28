//! Concurrent CONNECTs with one client id, from clients on ports pinned to
//! different shards that reconnect as fast as they are kicked: at every
//! moment at most one session per client id exists broker-wide, and
//! Session Present is true exactly when a session was resumed
//! [MQTT-3.2.2-2], [MQTT-3.1.4-3]. Randomized (seeded, printed on failure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Broker, RawClient, WAIT};
use shardmq_core::codec::{Packet, PacketId, Props, QoS, Subscribe, SubscriptionOptions};
use shardmq_io::shard::ShardReport;

const CLIENT_ID: &str = "shared-id";
const TOPIC: &str = "t/shared";

/// xorshift64: a reproducible sequence per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) -> bool {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Props::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        )],
    }));
    loop {
        match c.recv_within(WAIT) {
            Ok(Some(Packet::SubAck(_))) => return true,
            Ok(Some(_)) => continue,
            // Kicked by another claimant before the SUBACK: fine.
            Ok(None) | Err(_) => return false,
        }
    }
}

/// One client's loop: connect (resuming), subscribe, then either wait to be
/// kicked or drop the connection after a random moment; `rounds` times.
fn storm(ports: [u16; 2], seed: u64, rounds: usize, fresh: Arc<AtomicU64>) {
    let mut rng = Rng(seed);
    for _ in 0..rounds {
        let port = ports[(rng.next() % 2) as usize];
        let (mut c, ack) = RawClient::connect_v5(port, CLIENT_ID, Some(300));
        assert!(!ack.reason.is_error(), "CONNACK {:?}", ack.reason);
        if !ack.session_present {
            fresh.fetch_add(1, Ordering::SeqCst);
        }
        if !subscribe(&mut c, TOPIC, QoS::AtLeastOnce) {
            continue;
        }
        let linger = Duration::from_millis(rng.next() % 5);
        // Read until kicked (DISCONNECT 0x8E, then close) or the linger ends.
        let _ = c.recv_within(linger + Duration::from_millis(1));
    }
}

fn reports(broker: &Broker) -> Vec<ShardReport> {
    broker.handle().shard_reports.lock().unwrap().clone()
}

#[test]
fn concurrent_connects_with_one_client_id_leave_exactly_one_session() {
    let seed = std::env::var("SHARDMQ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed {seed} (replay: SHARDMQ_SEED={seed})");
    let broker = Broker::start();
    let ports = [broker.port("s0"), broker.port("s1")];
    let fresh = Arc::new(AtomicU64::new(0));
    // A longer run: SHARDMQ_TAKEOVER_CLIENTS=8 SHARDMQ_TAKEOVER_ROUNDS=5000.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (clients, rounds) = (
        env("SHARDMQ_TAKEOVER_CLIENTS", 4),
        env("SHARDMQ_TAKEOVER_ROUNDS", 150),
    );
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let fresh = fresh.clone();
            let seed = seed.wrapping_add(t * 7919);
            std::thread::spawn(move || storm(ports, seed, rounds as usize, fresh))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every CONNECT asked to resume (clean start 0, expiry 300): only the
    // very first can have found no session [MQTT-3.2.2-2].
    assert_eq!(
        fresh.load(Ordering::SeqCst),
        1,
        "Session Present 0 while the session existed (seed {seed})"
    );

    // Every client is gone: exactly one (offline) session remains, its id
    // registered once, and every shard's index holds its one subscription
    // plus the two self-test probes.
    let deadline = Instant::now() + WAIT;
    let settled = |r: &[ShardReport]| {
        r.iter().map(|s| s.sessions_online).sum::<u64>() == 0
            && r.iter().map(|s| s.sessions_offline).sum::<u64>() == 1
            && r.iter().map(|s| s.client_ids).sum::<u64>() == 1
            && r.iter().all(|s| s.index_entries == 3)
    };
    while !settled(&reports(&broker)) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: sessions left behind: {:?}",
            reports(&broker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The one session resumes and gets each message once.
    let (mut sub, ack) = RawClient::connect_v5(ports[0], CLIENT_ID, Some(300));
    assert!(ack.session_present);
    let (mut publisher, _) = RawClient::connect_v5(ports[1], "publisher", None);
    for (id, body) in [(1, "m1"), (2, "m2")] {
        publisher.send(&Packet::Publish(shardmq_core::codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TOPIC.into(),
            packet_id: PacketId::new(id),
            properties: Props::default(),
            payload: bytes::Bytes::from_static(body.as_bytes()),
        }));
        assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    }
    // Order per publisher is kept, so seeing m1 then m2 with nothing
    // between them proves m1 came once.
    let mut got = Vec::new();
    while got.last().map(Vec::as_slice) != Some(&b"m2"[..]) {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                if let Some(id) = p.packet_id {
                    sub.send(&Packet::PubAck(shardmq_core::codec::PubResponse::new(
                        id,
                        shardmq_core::codec::ReasonCode::Success,
                    )));
                }
                got.push(p.payload.to_vec());
            }
            Some(_) => {}
            None => panic!("subscriber closed"),
        }
    }
    assert_eq!(got, vec![b"m1".to_vec(), b"m2".to_vec()], "seed {seed}");
}

/// A connected v5 session with expiry 0 (no Session Expiry Interval) ends
/// when a takeover closes its connection (§3.1.2.11.2; 3.1.1 Clean
/// Session: [MQTT-3.1.2-6]): the CONNECT taking it over from another
/// shard, asking to resume, gets Session Present 0 and none of its
/// subscriptions, and the old client DISCONNECT 0x8E [MQTT-3.1.4-3].
#[test]
fn a_session_with_expiry_zero_ends_at_a_takeover_from_another_shard() {
    use shardmq_core::codec::{Publish, ReasonCode};
    let broker = Broker::start();
    let (mut old, ack) = RawClient::connect_v5(broker.port("s0"), "ephemeral", None);
    assert!(!ack.session_present);
    old.subscribe("e/#", QoS::AtLeastOnce);
    let (_new, ack) = RawClient::connect_v5(broker.port("s1"), "ephemeral", Some(300));
    assert!(!ack.session_present, "nothing to resume");
    match old.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // The old session's subscription went with it: nobody matches e/1.
    let (mut publisher, _) = RawClient::connect_v5(broker.port("s1"), "publisher", None);
    publisher.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "e/1".into(),
        packet_id: PacketId::new(1),
        properties: Props::default(),
        payload: bytes::Bytes::from_static(b"x"),
    }));
    match publisher.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::NoMatchingSubscribers),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}
