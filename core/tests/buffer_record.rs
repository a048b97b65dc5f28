//! Buffer records: every message survives encode -> seal -> open -> decode,
//! in both modes, alone and batched in one block.
// The fake clock's base instant comes from the clock once (core's clippy.toml
// bans clock reads in the library, not here).
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;
use shardmq_core::buffer::{record, BlockPos, RecordError, Sealer, BLOCK_HEADER_LEN};
use shardmq_core::codec::{Properties, QoS};
use shardmq_core::session::Message;
use shardmq_core::topic::TopicName;

fn arb_string(max: usize) -> impl Strategy<Value = ByteString> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 éß/_-]{{0,{max}}}"))
        .unwrap()
        .prop_map(ByteString::from)
}

fn arb_message() -> impl Strategy<Value = Message> {
    let topic =
        "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,4}".prop_map(|t| TopicName::try_from(t.as_str()).unwrap());
    let props = (
        proptest::option::of(0u8..=1),
        proptest::option::of(arb_string(20)),
        proptest::option::of(arb_string(20)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        proptest::collection::vec((arb_string(10), arb_string(10)), 0..4),
    )
        .prop_map(|(pfi, ct, rt, cd, user)| Properties {
            payload_format_indicator: pfi,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd.map(Bytes::from),
            user_properties: user,
            ..Properties::default()
        });
    (
        topic,
        proptest::collection::vec(any::<u8>(), 0..2048),
        0u8..=2,
        any::<bool>(),
        props,
        proptest::option::of(0u64..10_000_000_000),
        arb_string(23),
    )
        .prop_map(
            |(topic, payload, qos, retain, properties, expiry_ns, origin)| Message {
                topic,
                payload: Bytes::from(payload),
                qos: QoS::from_u8(qos).unwrap(),
                retain,
                properties: properties.into(),
                expires_at: expiry_ns.map(|ns| epoch() + Duration::from_nanos(ns)),
                origin,
                retain_stamp: 0,
            },
        )
}

fn epoch() -> Instant {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Seals the messages as one block and returns (block, record offsets).
fn seal(
    sealer: &mut Sealer,
    pos: BlockPos,
    messages: &[(u64, Message)],
) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut block = vec![0u8; BLOCK_HEADER_LEN];
    let mut spans = Vec::new();
    for (owner, m) in messages {
        let at = block.len() - BLOCK_HEADER_LEN;
        let len = record::encode(&mut block, *owner, m, epoch()).unwrap();
        spans.push((at, len));
    }
    sealer
        .seal_block(sealer.current_key(), pos, &mut block)
        .unwrap();
    (block, spans)
}

proptest! {
    #[test]
    fn record_round_trips_through_sealed_block(
        messages in proptest::collection::vec((any::<u64>(), arb_message()), 1..8),
        encrypt in any::<bool>(),
    ) {
        let mut sealer = Sealer::new(encrypt).unwrap();
        let pos = BlockPos { segment: 7, offset: 32 };
        let (mut block, spans) = seal(&mut sealer, pos, &messages);
        let body = sealer.open_block(sealer.current_key(), pos, &mut block).unwrap();
        for ((owner, m), (at, len)) in messages.iter().zip(spans) {
            let got = record::decode(&body[at..at + len], *owner, epoch()).unwrap();
            prop_assert_eq!(&got, m);
        }
    }

    /// The drain's zero-copy decode gives the same message as `decode`,
    /// its fields slices of the one opened block.
    #[test]
    fn shared_decode_of_a_block_slice_equals_decode(
        messages in proptest::collection::vec((any::<u64>(), arb_message()), 1..8),
        encrypt in any::<bool>(),
    ) {
        let mut sealer = Sealer::new(encrypt).unwrap();
        let pos = BlockPos { segment: 7, offset: 32 };
        let (mut block, spans) = seal(&mut sealer, pos, &messages);
        let body_len = sealer.open_block(sealer.current_key(), pos, &mut block).unwrap().len();
        let block = Bytes::from(block);
        let body = block.slice(BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + body_len);
        for ((owner, m), (at, len)) in messages.iter().zip(spans) {
            let got = record::decode_shared(body.slice(at..at + len), *owner, epoch()).unwrap();
            let block_range = block.as_ptr_range();
            prop_assert!(block_range.contains(&got.payload.as_ptr()) || got.payload.is_empty());
            prop_assert_eq!(&got, m);
        }
    }

    /// Garbage slices of a shared buffer are an error too, never a panic.
    #[test]
    fn shared_decode_of_garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = record::decode_shared(Bytes::from(bytes), 0, epoch());
    }

    #[test]
    fn encoded_len_matches_encode(m in arb_message()) {
        let mut out = Vec::new();
        let len = record::encode(&mut out, 1, &m, epoch()).unwrap();
        prop_assert_eq!(Some(len), record::encoded_len(&m));
        prop_assert_eq!(out.len(), len);
    }

    /// Plaintext records that slip past the checksum still never panic.
    #[test]
    fn decode_of_garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = record::decode(&bytes, 0, epoch());
    }
}

#[test]
fn record_of_another_owner_is_refused() {
    let m = Message {
        topic: TopicName::try_from("a/b").unwrap(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("c"),
        retain_stamp: 0,
    };
    let mut out = Vec::new();
    record::encode(&mut out, 41, &m, epoch()).unwrap();
    assert_eq!(
        record::decode(&out, 42, epoch()),
        Err(RecordError::WrongOwner)
    );
    assert_eq!(record::decode(&out, 41, epoch()).unwrap(), m);
}

#[test]
fn expiry_before_epoch_stays_expired() {
    let epoch = Instant::now() + Duration::from_secs(10);
    let m = Message {
        topic: TopicName::try_from("t").unwrap(),
        payload: Bytes::new(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: Some(Instant::now()),
        origin: ByteString::new(),
        retain_stamp: 0,
    };
    let mut out = Vec::new();
    record::encode(&mut out, 1, &m, epoch).unwrap();
    let got = record::decode(&out, 1, epoch).unwrap();
    assert!(got.is_expired(epoch));
}
