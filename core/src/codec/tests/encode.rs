//! Encoder: shortest forms, refusals, size accounting.

use super::*;
use crate::topic::TopicName;

// ---- encoder ----

#[test]
fn encoded_len_matches_bytes_written_for_every_packet() {
    for v in [V311, V5] {
        for p in sample_packets(v) {
            assert_eq!(encoded_len(&p, v).unwrap(), enc(&p, v).len(), "{p:?}");
        }
    }
}

#[test]
fn auth_cannot_be_encoded_in_v311() {
    let p = sample_packets(V5).pop().unwrap();
    assert_eq!(
        encode(&p, V311, &mut BytesMut::new()),
        Err(EncodeError::V5Only(PacketType::Auth))
    );
}

#[test]
fn v311_encoding_drops_properties() {
    let p = &sample_packets(V5)[1];
    assert_eq!(&enc(p, V311)[..], &[0x20, 2, 1, 0]);
}

#[test]
fn encoder_refuses_property_not_allowed_in_packet() {
    let mut p = PubResponse::new(pid(1), ReasonCode::Success);
    p.properties.topic_alias = Some(1);
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&Packet::PubAck(p), V5, &mut buf),
        Err(EncodeError::PropertyNotAllowed {
            property: PropertyId::TopicAlias,
            context: PropertyContext::PubAck
        })
    );
    assert!(buf.is_empty());
}

#[test]
fn encoder_refuses_invalid_property_values_and_reasons() {
    let mut c = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: Props::default(),
    };
    c.properties.receive_maximum = Some(0);
    assert!(matches!(
        encode(&Packet::ConnAck(c.clone()), V5, &mut BytesMut::new()),
        Err(EncodeError::InvalidPropertyValue { .. })
    ));
    c.properties = Props::default();
    c.reason = ReasonCode::NoMatchingSubscribers;
    assert!(matches!(
        encode(&Packet::ConnAck(c), V5, &mut BytesMut::new()),
        Err(EncodeError::ReasonNotAllowed { .. })
    ));
}

#[test]
fn encoder_refuses_malformed_publish() {
    let Packet::Publish(good) = sample_packets(V5)[2].clone() else {
        panic!()
    };
    let mut p = good.clone();
    p.packet_id = None;
    assert_eq!(
        encode_publish(&p, V5, &mut BytesMut::new()),
        Err(EncodeError::PacketIdMismatch)
    );
    let mut p = good.clone();
    p.topic = s("a/#");
    assert_eq!(
        encode_publish(&p, V5, &mut BytesMut::new()),
        Err(EncodeError::TopicWildcard)
    );
    let mut p = good.clone();
    p.topic = s("a\0");
    assert!(matches!(
        encode_publish(&p, V5, &mut BytesMut::new()),
        Err(EncodeError::NullCharacter { .. })
    ));
    let mut p = good;
    p.topic = ByteString::from("x".repeat(70_000));
    assert!(matches!(
        encode_publish(&p, V5, &mut BytesMut::new()),
        Err(EncodeError::StringTooLong { .. })
    ));
}

#[test]
fn encode_within_refuses_packets_over_the_peer_maximum_mqtt_3_1_2_24() {
    let p = sample_packets(V5)[2].clone();
    let len = encoded_len(&p, V5).unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        encode_within(&p, V5, len as u32 - 1, &mut buf),
        Err(EncodeError::PacketTooLarge {
            size: len,
            max: len as u32 - 1
        })
    );
    assert!(buf.is_empty());
    assert_eq!(encode_within(&p, V5, len as u32, &mut buf), Ok(len));
}

#[test]
fn encode_publish_reserves_once_and_matches_encode() {
    let Packet::Publish(p) = sample_packets(V5)[2].clone() else {
        panic!()
    };
    let mut buf = BytesMut::new();
    encode_publish(&p, V5, &mut buf).unwrap();
    assert_eq!(buf.capacity(), buf.len());
    assert_eq!(buf, enc(&Packet::Publish(p), V5));
}

#[test]
fn every_decode_error_names_a_spec_rule_and_v311_connack_only_for_connect_codes() {
    let errors = [
        DecodeError::VarintTooLong,
        DecodeError::PacketTooLarge { size: 1, max: 0 },
        DecodeError::TopicWildcard,
        DecodeError::EmptySubscribe,
        DecodeError::InvalidProtocolName,
        DecodeError::UnsupportedProtocolVersion { level: 3 },
        DecodeError::Truncated { field: "x" },
    ];
    for e in errors {
        let m = e.to_string();
        assert!(m.contains("[MQTT-") || m.contains('§'), "{m}");
        let connack = e.v311_connack();
        assert!(connack.is_none() || matches!(connack, Some(1 | 2)));
    }
}

/// `encode_forward` is the delivery path's encoder: it must write exactly
/// what `encode` writes for the equivalent `Publish`, for every property a
/// forwarded message can carry, in both versions.
#[test]
fn encode_forward_matches_encode_of_the_equivalent_publish() {
    let full = Properties {
        payload_format_indicator: Some(1),
        content_type: Some(s("text/plain")),
        response_topic: Some(s("reply/to")),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![(s("k"), s("v")), (s("k"), s("w"))],
        ..Properties::default()
    };
    let empty = Properties::default();
    let payload = bytes::Bytes::from_static(b"payload");
    for v in [V311, V5] {
        for props in [None, Some(&empty), Some(&full)] {
            for (qos, id, dup) in [
                (QoS::AtMostOnce, None, false),
                (QoS::AtLeastOnce, PacketId::new(7), true),
                (QoS::ExactlyOnce, PacketId::new(65_535), false),
            ] {
                for (topic, alias, expiry, ids) in [
                    ("a/b", None, None, vec![]),
                    ("a/b", Some(3u16), Some(60u32), vec![1u32, 268_435_455]),
                    ("", Some(3), None, vec![200]),
                ] {
                    if v == V311 && topic.is_empty() {
                        continue;
                    }
                    let name = (!topic.is_empty()).then(|| TopicName::try_from(topic).unwrap());
                    let typed: Vec<SubscriptionId> = ids
                        .iter()
                        .map(|v| SubscriptionId::new(*v).unwrap())
                        .collect();
                    let f = Forward {
                        dup,
                        qos,
                        retain: dup,
                        topic: name.as_ref(),
                        packet_id: id,
                        properties: props,
                        message_expiry_interval: expiry,
                        subscription_identifiers: &typed,
                        topic_alias: alias,
                        payload: &payload,
                    };
                    let mut properties = props.cloned().unwrap_or_default();
                    properties.message_expiry_interval = expiry;
                    properties.subscription_identifiers = ids.clone();
                    properties.topic_alias = alias;
                    let p = Packet::Publish(Publish {
                        dup,
                        qos,
                        retain: dup,
                        topic: s(topic),
                        packet_id: id,
                        properties: properties.into(),
                        payload: payload.clone(),
                    });
                    let mut buf = BytesMut::new();
                    let n = encode_forward(&f, v, None, &mut buf).unwrap();
                    assert_eq!(buf, enc(&p, v), "{v:?} {f:?}");
                    assert_eq!(n, buf.len());
                }
            }
        }
    }
}

#[test]
fn subscription_ids_outside_the_range_cannot_be_made() {
    // v5 §3.8.2.1.2: 1 to 268,435,455, 0 is a Protocol Error. A `Forward`
    // carries `SubscriptionId`s, so it cannot carry anything else.
    assert_eq!(SubscriptionId::new(0), None);
    assert_eq!(SubscriptionId::new(SUBSCRIPTION_IDENTIFIER_MAX + 1), None);
    let max = SubscriptionId::new(SUBSCRIPTION_IDENTIFIER_MAX).map(SubscriptionId::get);
    assert_eq!(max, Some(SUBSCRIPTION_IDENTIFIER_MAX));
    assert_eq!(SubscriptionId::new(1).map(SubscriptionId::get), Some(1));
}

#[test]
fn encode_forward_refuses_over_the_client_maximum_and_bad_values() {
    let t = TopicName::try_from("t").unwrap();
    let f = Forward {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Some(&t),
        packet_id: PacketId::new(1),
        properties: None,
        message_expiry_interval: None,
        subscription_identifiers: &[],
        topic_alias: None,
        payload: b"12345",
    };
    let mut buf = BytesMut::new();
    let len = encode_forward(&f, V5, None, &mut buf).unwrap();
    // [MQTT-3.1.2-24] nothing over the client's Maximum Packet Size is sent.
    let mut small = BytesMut::new();
    assert_eq!(
        encode_forward(&f, V5, Some(len as u32 - 1), &mut small),
        Err(EncodeError::PacketTooLarge {
            size: len,
            max: len as u32 - 1
        })
    );
    assert!(small.is_empty());
    assert_eq!(
        encode_forward(&f, V5, Some(len as u32), &mut small),
        Ok(len)
    );
    let bad = [
        (
            Forward {
                topic_alias: Some(0),
                ..f
            },
            "alias 0",
        ),
        (
            Forward {
                packet_id: None,
                ..f
            },
            "QoS 1 without id",
        ),
    ];
    for (b, what) in bad {
        assert!(
            encode_forward(&b, V5, None, &mut BytesMut::new()).is_err(),
            "{what}"
        );
    }
    assert_eq!(
        encode_forward(
            &Forward { topic: None, ..f },
            V311,
            None,
            &mut BytesMut::new()
        ),
        Err(EncodeError::EmptyTopic)
    );
}
