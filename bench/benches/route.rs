//! route: the shard's whole per-message path without sockets, as a
//! connection's reader and writer tasks drive it at moderate load (one
//! message per read): `handle_input` with one PUBLISH (decode, permissions,
//! routing, queueing), the outputs drained, then `poll_transmit` of the
//! subscriber (encoding). `fan_in_qos0_64B`: 100 publishers take turns to
//! one subscriber of `sensors/#`. `p2p_qos1_1KiB`: one publisher, one
//! subscriber, PUBLISH -> delivery -> the subscriber's PUBACK -> the
//! publisher's PUBACK. The kernel's share (read, send, wake-ups) is not
//! here: see the loadtest.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardmq_core::broker::{Admission, ConnId, Output, PrincipalId, Shard, ShardConfig, ShardId};
use shardmq_core::buffer::{MemoryOnly, ShardBuffer};
use shardmq_core::codec::{
    self, Connect, Packet, PacketId, Properties, Props, ProtocolVersion, PubResponse, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
};
use shardmq_core::limits::ClientLimits;
use shardmq_core::session::AllowAll;

type BenchShard = Shard<MemoryOnly>;

/// The writer task's batch (`io/src/conn/writer.rs`).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

fn shard() -> BenchShard {
    let config = Arc::new(ShardConfig {
        shards: 1,
        instance: 1,
        limits: Arc::new(ClientLimits::default()),
        retained_max: 1000,
        retained_bytes_max: 1 << 20,
        partial_bytes_max: 1 << 20,
        selftest: None,
        persistence: None,
    });
    Shard::new(ShardId::new(0), config, ShardBuffer::memory_only())
}

fn encode(packet: &Packet) -> Bytes {
    let mut buf = BytesMut::new();
    codec::encode(packet, ProtocolVersion::V5, &mut buf).unwrap();
    buf.freeze()
}

/// Acts on the shard's outputs as the driver does; authentications are
/// answered at once with every permission.
fn drain(shard: &mut BenchShard, now: Instant) {
    while let Some(out) = shard.poll_output() {
        if let Output::Authenticate { conn, .. } = out {
            let admission = Admission {
                permissions: Box::new(AllowAll),
                principal: PrincipalId::authenticated("bench", "Test", "bench"),
                expires_at: None,
                cluster_claim: None,
            };
            shard.handle_admitted(conn, now, Ok(admission));
        }
    }
}

/// Everything the shard has for `conn`, as its writer takes it.
fn transmit(shard: &mut BenchShard, conn: ConnId, now: Instant, buf: &mut BytesMut) {
    buf.clear();
    while shard.poll_transmit(conn, now, buf, WRITE_BATCH_BYTES) > 0 {}
}

/// A v5 client connected (clean start, no expiry), CONNACK taken.
fn connect(shard: &mut BenchShard, now: Instant, client_id: &str) -> ConnId {
    let conn = shard.accept(now);
    let connect = Packet::Connect(Box::new(Connect {
        protocol_version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties {
            receive_maximum: Some(65_535),
            ..Properties::default()
        }
        .into(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }));
    shard.handle_input(conn, now, &encode(&connect));
    drain(shard, now);
    transmit(shard, conn, now, &mut BytesMut::new());
    conn
}

fn subscribe(shard: &mut BenchShard, now: Instant, conn: ConnId, filter: &str, qos: QoS) {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Props::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
        )],
    });
    shard.handle_input(conn, now, &encode(&subscribe));
    drain(shard, now);
    transmit(shard, conn, now, &mut BytesMut::new());
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: usize) -> Bytes {
    encode(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(packet_id).unwrap()),
        properties: Props::default(),
        payload: Bytes::from(vec![0x5Au8; payload]),
    }))
}

fn fan_in(c: &mut Criterion) {
    let now = Instant::now();
    let mut shard = shard();
    let sub = connect(&mut shard, now, "sub");
    subscribe(&mut shard, now, sub, "sensors/#", QoS::AtMostOnce);
    let publishers: Vec<(ConnId, Bytes)> = (0..100)
        .map(|i| {
            let conn = connect(&mut shard, now, &format!("pub-{i}"));
            (
                conn,
                publish(&format!("sensors/{i}"), QoS::AtMostOnce, 0, 64),
            )
        })
        .collect();
    let mut out = BytesMut::new();
    let mut next = 0;
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fan_in_qos0_64B", |b| {
        b.iter(|| {
            let (conn, bytes) = &publishers[next];
            next = (next + 1) % publishers.len();
            shard.handle_input(*conn, now, bytes);
            drain(&mut shard, now);
            transmit(&mut shard, sub, now, &mut out);
            assert!(!out.is_empty());
        })
    });
    g.finish();
}

fn p2p(c: &mut Criterion) {
    let now = Instant::now();
    let mut shard = shard();
    let sub = connect(&mut shard, now, "sub");
    subscribe(&mut shard, now, sub, "p2p/0", QoS::AtLeastOnce);
    let publisher = connect(&mut shard, now, "pub");
    // The publisher reuses one packet id: each is acknowledged before the
    // next (one in flight).
    let message = publish("p2p/0", QoS::AtLeastOnce, 7, 1024);
    let mut out = BytesMut::new();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.bench_function("p2p_qos1_1KiB", |b| {
        b.iter(|| {
            shard.handle_input(publisher, now, &message);
            drain(&mut shard, now);
            transmit(&mut shard, sub, now, &mut out);
            // The delivery's packet id is the subscriber session's: read it
            // back from the PUBLISH (fixed header, remaining length of two
            // bytes for 1 KiB, topic, then the id).
            let topic_len = usize::from(u16::from_be_bytes([out[3], out[4]]));
            let at = 5 + topic_len;
            let id = u16::from_be_bytes([out[at], out[at + 1]]);
            let ack = encode(&Packet::PubAck(PubResponse {
                packet_id: PacketId::new(id).unwrap(),
                reason: ReasonCode::Success,
                properties: Props::default(),
            }));
            shard.handle_input(sub, now, &ack);
            drain(&mut shard, now);
            transmit(&mut shard, publisher, now, &mut out);
            assert!(!out.is_empty());
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = fan_in, p2p
}
criterion_main!(benches);
