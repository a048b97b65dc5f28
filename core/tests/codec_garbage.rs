//! The decoder on hostile input, on stable Rust (the libFuzzer target in
//! fuzz/ does the same, longer, on nightly): random byte strings and mutated
//! seed-corpus frames must never panic; every error maps to a reason code
//! and names its rule; every packet decoded re-encodes to itself.
//!
//! Also owns the seed corpus fuzz/corpus/decode/: one valid frame of each
//! packet type per version, prefixed with the fuzz target's mode byte.
//! `SHARDMQ_WRITE_CORPUS=1 cargo test -p shardmq-core --test codec_garbage`
//! rewrites it; otherwise the test checks the committed files are current.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::prelude::*;
use shardmq_core::codec::*;

const MAX: u32 = 512;

/// Fuzz target modes (first byte of a corpus file), see fuzz_targets/decode.rs.
const MODE_FIRST_PACKET: u8 = 0;
const MODE_V311: u8 = 1;
const MODE_V5: u8 = 2;

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// Mirrors the fuzz target: decode until more bytes are needed or an error.
fn drive(mode: u8, input: &[u8]) {
    let mut buf = BytesMut::from(input);
    let mut decoder = Decoder::new(MAX);
    let fixed = match mode % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V311),
        2 => Some(ProtocolVersion::V5),
        _ => {
            decoder.set_version(ProtocolVersion::V5);
            None
        }
    };
    loop {
        let before = buf.len();
        let r = match fixed {
            Some(v) => decode_packet(&mut buf, v, MAX),
            None => decoder.decode(&mut buf),
        };
        match r {
            Ok(Some(p)) => {
                assert!(buf.len() < before);
                let v = fixed.or(decoder.version()).unwrap();
                round_trip(&p, v);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must leave the buffer alone");
                return;
            }
            Err(e) => {
                let reason = e.reason_code();
                assert!(reason.is_error(), "{e:?} -> {reason:?}");
                let msg = e.to_string();
                assert!(msg.contains("[MQTT-") || msg.contains('§'), "{msg}");
                if let Some(code) = e.v311_connack() {
                    assert!(ReasonCode::from_v311_connack(code).is_some());
                }
                return;
            }
        }
    }
}

fn round_trip(p: &Packet, version: ProtocolVersion) {
    let version = match p {
        Packet::Connect(c) => c.protocol_version,
        _ => version,
    };
    let mut buf = BytesMut::new();
    encode(p, version, &mut buf).unwrap_or_else(|e| panic!("{p:?} does not re-encode: {e}"));
    assert_eq!(encoded_len(p, version).unwrap(), buf.len());
    let again = decode_packet(&mut buf, version, u32::MAX).unwrap();
    assert_eq!(again.as_ref(), Some(p));
}

fn user_props() -> Properties {
    Properties {
        user_properties: vec![(s("k"), s("v"))],
        ..Properties::default()
    }
}

/// One valid packet of each type for `v`, with a corpus file name.
fn seeds(v: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = v == ProtocolVersion::V5;
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    let mut out = vec![
        (
            "connect",
            Packet::Connect(Box::new(Connect {
                protocol_version: v,
                clean_start: true,
                keep_alive: 60,
                properties: props(Properties {
                    session_expiry_interval: Some(30),
                    receive_maximum: Some(10),
                    ..user_props()
                })
                .into(),
                client_id: s("c1"),
                will: Some(Will {
                    topic: s("w/t"),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: props(Properties {
                        will_delay_interval: Some(5),
                        ..Properties::default()
                    })
                    .into(),
                }),
                username: Some(s("u")),
                password: Some(Bytes::from_static(b"p")),
            })),
        ),
        (
            "connack",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: props(Properties {
                    topic_alias_maximum: Some(5),
                    maximum_qos: Some(1),
                    ..Properties::default()
                })
                .into(),
            }),
        ),
        (
            "publish",
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: s("a/b"),
                packet_id: Some(pid(1)),
                properties: props(Properties {
                    topic_alias: Some(1),
                    subscription_identifiers: vec![1, 200],
                    ..Properties::default()
                })
                .into(),
                payload: Bytes::from_static(b"payload"),
            }),
        ),
        (
            "puback",
            Packet::PubAck(PubResponse {
                packet_id: pid(1),
                reason: ReasonCode::Success,
                properties: props(user_props()).into(),
            }),
        ),
        (
            "pubrec",
            Packet::PubRec(PubResponse::new(pid(2), ReasonCode::Success)),
        ),
        (
            "pubrel",
            Packet::PubRel(PubResponse::new(pid(2), ReasonCode::Success)),
        ),
        (
            "pubcomp",
            Packet::PubComp(PubResponse::new(pid(2), ReasonCode::Success)),
        ),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: pid(3),
                properties: props(Properties {
                    subscription_identifiers: vec![7],
                    ..Properties::default()
                })
                .into(),
                filters: vec![
                    (s("a/+"), SubscriptionOptions::default()),
                    (
                        s("b/#"),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            ..Default::default()
                        },
                    ),
                ],
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: pid(3),
                properties: props(user_props()).into(),
                reasons: vec![ReasonCode::Success, ReasonCode::GrantedQoS2],
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(4),
                properties: props(user_props()).into(),
                filters: vec![s("a/+")],
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(4),
                properties: Props::default(),
                reasons: if v5 {
                    vec![ReasonCode::Success]
                } else {
                    Vec::new()
                },
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        (
            "disconnect",
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::Success,
                properties: props(Properties {
                    reason_string: Some(s("bye")),
                    ..Properties::default()
                })
                .into(),
            }),
        ),
    ];
    if v5 {
        out.push((
            "auth",
            Packet::Auth(Auth {
                reason: ReasonCode::ContinueAuthentication,
                properties: Properties {
                    authentication_method: Some(s("SCRAM")),
                    authentication_data: Some(Bytes::from_static(b"x")),
                    ..Properties::default()
                }
                .into(),
            }),
        ));
    }
    out
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode")
}

/// (file name, contents) of every seed: mode byte then one frame. CONNECT
/// goes through the first-packet path, the rest through the versioned one.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (v, tag, mode) in [
        (ProtocolVersion::V311, "v311", MODE_V311),
        (ProtocolVersion::V5, "v5", MODE_V5),
    ] {
        for (name, p) in seeds(v) {
            let mode = if name == "connect" {
                MODE_FIRST_PACKET
            } else {
                mode
            };
            let mut bytes = BytesMut::new();
            encode(&p, v, &mut bytes).unwrap();
            let mut file = vec![mode];
            file.extend_from_slice(&bytes);
            out.push((format!("{tag}_{name}"), file));
        }
    }
    out
}

#[test]
fn seed_corpus_has_one_current_frame_per_packet_type() {
    let dir = corpus_dir();
    let write = std::env::var_os("SHARDMQ_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let corpus = corpus();
    assert_eq!(corpus.len(), 14 + 15);
    for (name, bytes) in corpus {
        let path = dir.join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; rerun with SHARDMQ_WRITE_CORPUS=1", path.display())
            });
            assert_eq!(
                on_disk, bytes,
                "{name} is stale; rerun with SHARDMQ_WRITE_CORPUS=1"
            );
        }
    }
}

#[test]
fn every_seed_decodes_and_every_truncation_or_byte_mutation_is_handled() {
    for (_, file) in corpus() {
        let (&mode, frame) = file.split_first().unwrap();
        drive(mode, frame);
        for cut in 0..frame.len() {
            drive(mode, &frame[..cut]);
        }
        for i in 0..frame.len() {
            for b in [0x00, 0xFF, 0x80, 0x7F, frame[i] ^ 0x01, frame[i] ^ 0x40] {
                let mut m = frame.to_vec();
                m[i] = b;
                for mode in [mode, MODE_V311, MODE_V5, 3] {
                    drive(mode, &m);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bytes_never_panic(mode in 0u8..4, bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        drive(mode, &bytes);
    }

    #[test]
    fn random_bodies_behind_valid_headers_never_panic(
        mode in 1u8..4,
        first in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        // A plausible fixed header gets the parser past framing into bodies.
        let mut bytes = vec![first, body.len() as u8];
        bytes.extend_from_slice(&body);
        drive(mode, &bytes);
    }

    #[test]
    fn seeds_with_random_splices_never_panic(
        seed in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        junk in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let corpus = corpus();
        let (_, file) = &corpus[seed.index(corpus.len())];
        let (&mode, frame) = file.split_first().unwrap();
        let i = at.index(frame.len());
        let mut m = frame[..i].to_vec();
        m.extend_from_slice(&junk);
        m.extend_from_slice(&frame[i..]);
        drive(mode, &m);
    }
}
