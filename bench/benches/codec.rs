//! Codec micro-benchmarks: decode and encode per packet type and size. Each
//! name says the input, e.g. `decode/publish_qos1_64B_v5`. Decode benches
//! copy the frame into a fresh `BytesMut` in untimed setup, so they measure
//! framing + parsing only; encode benches reuse one cleared buffer.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardmq_core::codec::*;

const MAX: u32 = 1 << 20;

const PID: PacketId = match std::num::NonZeroU16::new(42) {
    Some(v) => PacketId(v),
    None => panic!("42 is not zero"),
};

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

fn publish(qos: QoS, payload_len: usize, v5: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: s("factory/line-3/cell-7/sensor/temperature"),
        packet_id: Some(PID).filter(|_| qos != QoS::AtMostOnce),
        properties: if v5 {
            Properties {
                message_expiry_interval: Some(60),
                ..Properties::default()
            }
            .into()
        } else {
            Props::default()
        },
        payload: Bytes::from(vec![0x5Au8; payload_len]),
    })
}

fn connect_v5_with_properties() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol_version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: Some(16),
            request_problem_information: Some(1),
            user_properties: vec![(s("site"), s("plant-a")), (s("fw"), s("1.2.3"))],
            ..Properties::default()
        }
        .into(),
        client_id: s("device-000123"),
        will: Some(Will {
            topic: s("status/device-000123"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(10),
                ..Properties::default()
            }
            .into(),
        }),
        username: Some(s("device-000123")),
        password: Some(Bytes::from_static(b"0123456789abcdef")),
    }))
}

fn subscribe_10_filters() -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PID,
        properties: Properties {
            subscription_identifiers: vec![12],
            ..Properties::default()
        }
        .into(),
        filters: (0..10)
            .map(|i| {
                (
                    ByteString::from(format!("factory/line-{i}/+/sensor/#")),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    })
}

fn puback() -> Packet {
    Packet::PubAck(PubResponse::new(PID, ReasonCode::Success))
}

fn cases() -> Vec<(&'static str, Packet, ProtocolVersion)> {
    use ProtocolVersion::{V311, V5};
    vec![
        (
            "publish_qos0_64B_v311",
            publish(QoS::AtMostOnce, 64, false),
            V311,
        ),
        (
            "publish_qos1_64B_v5",
            publish(QoS::AtLeastOnce, 64, true),
            V5,
        ),
        (
            "publish_qos0_1KiB_v311",
            publish(QoS::AtMostOnce, 1024, false),
            V311,
        ),
        (
            "publish_qos1_1KiB_v5",
            publish(QoS::AtLeastOnce, 1024, true),
            V5,
        ),
        (
            "publish_qos1_64KiB_v5",
            publish(QoS::AtLeastOnce, 65536, true),
            V5,
        ),
        (
            "connect_v5_with_properties",
            connect_v5_with_properties(),
            V5,
        ),
        ("subscribe_10_filters_v5", subscribe_10_filters(), V5),
        ("puback_v5", puback(), V5),
    ]
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, packet, v) in cases() {
        let mut frame = BytesMut::new();
        if encode(&packet, v, &mut frame).is_err() {
            continue;
        }
        let frame = frame.freeze();
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&frame[..]),
                |mut buf| decode_packet(&mut buf, v, MAX),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (name, packet, v) in cases() {
        let Ok(len) = encoded_len(&packet, v) else {
            continue;
        };
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = BytesMut::with_capacity(len);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                encode(std::hint::black_box(&packet), v, &mut buf)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
