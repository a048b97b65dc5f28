//! The delivery loop without sockets: what the shard does per message when a
//! reconnecting subscriber drains its backlog. One iteration queues
//! `BACKLOG` 1 KiB QoS 1 messages for a v5 session (untimed), then times
//! `poll_transmit` in 256 KiB writes plus decoding and handling one PUBACK
//! per message, as the connection's reader and writer tasks do. `memory`
//! drains messages held in memory; `spilled_*` drains them from the real
//! disk buffer (every message spilled), encrypted and plain. `enqueue_qos0`
//! times the other side, QoS 0 fan-in: `BACKLOG` messages offered to an
//! online session's queue as the shard routes them (no disk buffer: the
//! shard's memory accounting only, `memoryProfile` Medium). The
//! kernel's share (send, receive, wake-ups) is not here: see the loadtest.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardmq_core::buffer::{ShardBuffer, Store};
use shardmq_core::codec::{Connect, Decoder, Packet, Properties, ProtocolVersion, QoS};
use shardmq_core::config::MemoryProfile;
use shardmq_core::limits::ClientLimits;
use shardmq_core::session::{AllowAll, Connection, Delivery, Message};
use shardmq_core::topic::TopicName;
use shardmq_io::buffer::{DiskBuffer, SEGMENT_BYTES_DEFAULT};

/// Messages per iteration: a backlog of ~4 MiB.
const BACKLOG: usize = 4096;
/// The writer task's batch (`io/src/connection.rs`).
const WRITE_BATCH_BYTES: usize = 256 * 1024;

fn message() -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::try_from("factory/line-3/cell-7/sensor/temperature").unwrap(),
        payload: Bytes::from(vec![0x5Au8; 1024]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("sensor-0042"),
        retain_stamp: 0,
    })
}

/// A v5 subscriber connected with Receive Maximum 65,535 (as the loadtest's).
fn connected() -> Connection {
    let now = Instant::now();
    let mut conn = Connection::new(now, Arc::new(ClientLimits::default()));
    let properties = Properties {
        receive_maximum: Some(65_535),
        ..Properties::default()
    };
    conn.handle_packet(
        now,
        Packet::Connect(Box::new(Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            properties: properties.into(),
            client_id: "sub".into(),
            will: None,
            username: None,
            password: None,
        })),
    );
    while conn.poll_event().is_some() {}
    conn.accept(now, None, None, Box::new(AllowAll));
    let mut buf = BytesMut::new();
    conn.poll_transmit(
        now,
        &mut buf,
        WRITE_BATCH_BYTES,
        &mut ShardBuffer::memory_only().lease(1),
    );
    conn
}

/// Sends everything queued, acknowledging each PUBLISH as a client would.
/// Returns the messages sent.
fn drain<S: Store>(conn: &mut Connection, buffer: &mut ShardBuffer<S>) -> usize {
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES * 2);
    let mut acks = BytesMut::new();
    let mut decoder = Decoder::new(1 << 20);
    decoder.set_version(ProtocolVersion::V5);
    let mut next_id = 0u16;
    let mut sent = 0;
    loop {
        out.clear();
        let now = Instant::now();
        let n = conn.poll_transmit(now, &mut out, WRITE_BATCH_BYTES, &mut buffer.lease(1));
        if n == 0 {
            assert_eq!(
                conn.session().unwrap().inflight_len(),
                0,
                "every PUBACK matched"
            );
            return sent;
        }
        sent += n;
        // The client's side, kept out of the way: ids are allocated in
        // sequence from 1, and in-order acks leave no gaps.
        for _ in 0..n {
            next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
            acks.extend_from_slice(&[0x40, 0x02]);
            acks.extend_from_slice(&next_id.to_be_bytes());
        }
        let now = Instant::now();
        // As the reader does: the 4-byte form first, then the general path.
        loop {
            if let Some(ack) = decoder.decode_ack(&mut acks) {
                conn.handle_short_ack(now, ack);
                continue;
            }
            match decoder.decode(&mut acks).unwrap() {
                Some(packet) => conn.handle_packet(now, packet),
                None => break,
            }
        }
    }
}

fn deliver(c: &mut Criterion) {
    let m = message();
    let delivery = Delivery {
        granted_qos: QoS::AtLeastOnce,
        ..Delivery::default()
    };
    let mut g = c.benchmark_group("deliver");
    g.throughput(Throughput::Elements(BACKLOG as u64));
    let m0 = Arc::new(Message {
        qos: QoS::AtMostOnce,
        ..(*m).clone()
    });
    let d0 = Delivery::default();
    let budget = shardmq_core::buffer::memory_budget_bytes(MemoryProfile::Medium);
    g.bench_function("enqueue_qos0", |b| {
        b.iter_batched(
            || (connected(), ShardBuffer::<DiskBuffer>::new(None, budget, 0)),
            |(mut conn, mut shard)| {
                let now = Instant::now();
                for _ in 0..BACKLOG {
                    conn.deliver(now, &m0, &d0, &mut shard.lease(1));
                }
                (conn, shard)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("memory", |b| {
        b.iter_batched(
            || {
                let mut conn = connected();
                let mut buffer = ShardBuffer::memory_only();
                for _ in 0..BACKLOG {
                    conn.deliver(Instant::now(), &m, &delivery, &mut buffer.lease(1));
                }
                (conn, buffer)
            },
            |(mut conn, mut buffer)| assert_eq!(drain(&mut conn, &mut buffer), BACKLOG),
            BatchSize::PerIteration,
        )
    });
    for encrypt in [true, false] {
        let name = if encrypt {
            "spilled_encrypted"
        } else {
            "spilled_plain"
        };
        let dir = std::env::temp_dir().join(format!("shardmq-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk = DiskBuffer::open(
            &dir,
            0,
            8 * SEGMENT_BYTES_DEFAULT,
            SEGMENT_BYTES_DEFAULT,
            encrypt,
            Instant::now(),
        )
        .unwrap();
        // Budget 0: every message spills.
        let share = disk.size_max_bytes();
        let buffer = RefCell::new(ShardBuffer::new(Some(disk), 0, share));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut conn = connected();
                    let mut buffer = buffer.borrow_mut();
                    for _ in 0..BACKLOG {
                        conn.deliver(Instant::now(), &m, &delivery, &mut buffer.lease(1));
                    }
                    buffer.store_mut().unwrap().flush().unwrap();
                    assert_eq!(conn.session().unwrap().spilled_len(), BACKLOG);
                    conn
                },
                |mut conn| assert_eq!(drain(&mut conn, &mut *buffer.borrow_mut()), BACKLOG),
                BatchSize::PerIteration,
            )
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = deliver
}
criterion_main!(benches);
