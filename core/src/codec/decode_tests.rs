//! Unit tests for the decoder and encoder, one per spec rule (the rule is in
//! the test name or comment). Round trips and interop live in core/tests/.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wire::put_varint;
use super::*;

const MAX: u32 = 1024 * 1024;
const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// A frame from a first byte and a body, with a minimal remaining length.
fn frame(first: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(first);
    put_varint(&mut b, body.len() as u32);
    b.put_slice(body);
    b
}

fn dec(version: ProtocolVersion, bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    decode_packet(&mut BytesMut::from(bytes), version, MAX)
}

fn dec_err(version: ProtocolVersion, first: u8, body: &[u8]) -> DecodeError {
    decode_packet(&mut frame(first, body), version, MAX).unwrap_err()
}

fn enc(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    encode(p, v, &mut b).unwrap();
    b
}

fn s(v: &str) -> ByteString {
    ByteString::from(v)
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// CONNECT body: name, level, flags, keep alive, [props], client id, rest.
fn connect_body(level: u8, flags: u8, props: &[u8], client_id: &str, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60];
    b.extend_from_slice(props);
    b.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    b.extend_from_slice(client_id.as_bytes());
    b.extend_from_slice(rest);
    b
}

fn first_packet(bytes: BytesMut) -> (Decoder, Result<Option<Packet>, DecodeError>) {
    let mut d = Decoder::new(MAX);
    let mut bytes = bytes;
    let r = d.decode(&mut bytes);
    (d, r)
}

fn sample_packets(v: ProtocolVersion) -> Vec<Packet> {
    let mut props = Properties::default();
    if v == V5 {
        props.user_properties.push((s("k"), s("v")));
    }
    let mut pub_props = props.clone();
    if v == V5 {
        pub_props.subscription_identifiers = vec![1, 300];
        pub_props.topic_alias = Some(3);
    }
    let version = v;
    let mut out = vec![
        Packet::Connect(Box::new(Connect {
            protocol_version: version,
            clean_start: true,
            keep_alive: 30,
            properties: props.clone(),
            client_id: s("client"),
            will: Some(Will {
                topic: s("will/t"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props.clone(),
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(b"p")),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: props.clone(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("a/b"),
            packet_id: Some(pid(7)),
            properties: pub_props,
            payload: Bytes::from_static(b"hello"),
        }),
        Packet::PubAck(PubResponse::new(pid(1), ReasonCode::Success)),
        Packet::PubRec(PubResponse::new(pid(2), ReasonCode::Success)),
        Packet::PubRel(PubResponse::new(pid(3), ReasonCode::Success)),
        Packet::PubComp(PubResponse::new(pid(4), ReasonCode::Success)),
        Packet::Subscribe(Subscribe {
            packet_id: pid(5),
            properties: props.clone(),
            filters: vec![(s("a/+"), SubscriptionOptions::default())],
        }),
        Packet::SubAck(SubAck {
            packet_id: pid(5),
            properties: props.clone(),
            reasons: vec![ReasonCode::GrantedQoS1],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(6),
            properties: props.clone(),
            filters: vec![s("a/+")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(6),
            properties: props.clone(),
            reasons: if v == V5 {
                vec![ReasonCode::Success]
            } else {
                vec![]
            },
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
    ];
    if version == V5 {
        out.push(Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties {
                authentication_method: Some(s("SCRAM")),
                ..Properties::default()
            },
        }));
    }
    out
}

// ---- framing ----

#[test]
fn every_prefix_of_a_valid_packet_needs_more_bytes_and_leaves_buf_untouched() {
    for v in [V311, V5] {
        for p in sample_packets(v) {
            let full = enc(&p, v);
            for cut in 0..full.len() {
                let mut buf = BytesMut::from(&full[..cut]);
                assert_eq!(decode_packet(&mut buf, v, MAX), Ok(None), "{p:?} cut {cut}");
                assert_eq!(&buf[..], &full[..cut]);
            }
            let mut buf = full.clone();
            assert_eq!(decode_packet(&mut buf, v, MAX).unwrap(), Some(p));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn every_prefix_of_first_connect_needs_more_bytes_mqtt_3_1_0_1() {
    for v in [V311, V5] {
        let full = enc(&sample_packets(v)[0], v);
        let mut d = Decoder::new(MAX);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None));
            assert_eq!(d.version(), None);
        }
        let mut buf = full;
        assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
        assert_eq!(d.version(), Some(v));
    }
}

#[test]
fn two_frames_in_one_buffer_decode_one_at_a_time() {
    let mut buf = enc(&Packet::PingReq, V5);
    buf.extend_from_slice(&enc(&Packet::PingResp, V5));
    assert_eq!(decode_packet(&mut buf, V5, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(buf.len(), 2);
    assert_eq!(decode_packet(&mut buf, V5, MAX), Ok(Some(Packet::PingResp)));
}

#[test]
fn oversize_packet_is_rejected_from_the_fixed_header_alone() {
    // PUBLISH announcing 1 MiB: only the 4 header bytes are present.
    let mut buf = BytesMut::new();
    buf.put_u8(0x30);
    put_varint(&mut buf, 1 << 20);
    for v in [V311, V5] {
        let err = decode_packet(&mut buf.clone(), v, 4096).unwrap_err();
        assert_eq!(
            err,
            DecodeError::PacketTooLarge {
                size: 4 + (1 << 20),
                max: 4096
            }
        );
        assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    }
    // Also for the first CONNECT.
    let mut c = BytesMut::new();
    c.put_u8(0x10);
    put_varint(&mut c, 100_000);
    assert!(matches!(
        Decoder::new(4096).decode(&mut c),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn packet_size_limit_counts_the_fixed_header_v5_3_1_2_11_4() {
    // PINGREQ is 2 bytes in total: a 1-byte limit rejects it, 2 accepts it.
    let mut buf = enc(&Packet::PingReq, V5);
    assert!(matches!(
        decode_packet(&mut buf.clone(), V5, 1),
        Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
    ));
    assert_eq!(decode_packet(&mut buf, V5, 2), Ok(Some(Packet::PingReq)));
}

#[test]
fn five_byte_remaining_length_is_rejected_mqtt_1_5_5() {
    let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    for v in [V311, V5] {
        assert_eq!(dec(v, &bytes), Err(DecodeError::VarintTooLong));
        // Rejected as soon as the 4th length byte shows a continuation bit.
        assert_eq!(dec(v, &bytes[..5]), Err(DecodeError::VarintTooLong));
    }
}

#[test]
fn non_minimal_remaining_length_rejected_in_v5_accepted_in_v311_mqtt_1_5_5_1() {
    // PINGREQ with remaining length 0 encoded in two bytes.
    let bytes = [0xC0, 0x80, 0x00];
    assert_eq!(dec(V5, &bytes), Err(DecodeError::VarintNotMinimal));
    assert_eq!(dec(V311, &bytes), Ok(Some(Packet::PingReq)));
}

#[test]
fn non_minimal_remaining_length_of_first_connect_follows_its_level() {
    for (v, ok) in [(V311, true), (V5, false)] {
        let good = enc(&sample_packets(v)[0], v);
        // Pad the 1-byte remaining length to 2 bytes (same value).
        assert!(good[1] < 0x80);
        let mut bad = BytesMut::new();
        bad.put_u8(good[0]);
        bad.put_u8(good[1] | 0x80);
        bad.put_u8(0x00);
        bad.put_slice(&good[2..]);
        let (d, r) = first_packet(bad);
        assert_eq!(r.is_ok(), ok, "{v:?}: {r:?}");
        if !ok {
            assert_eq!(r, Err(DecodeError::VarintNotMinimal));
        }
        assert_eq!(d.version(), Some(v));
    }
}

#[test]
fn packet_type_0_is_reserved_and_15_is_reserved_in_v311_mqtt_2_1_2() {
    assert_eq!(
        dec(V5, &[0x00, 0x00]),
        Err(DecodeError::ReservedPacketType(0))
    );
    assert_eq!(
        dec(V311, &[0x00, 0x00]),
        Err(DecodeError::ReservedPacketType(0))
    );
    assert_eq!(dec(V311, &[0xF0, 0x00]), Err(DecodeError::AuthInV311));
    assert!(matches!(dec(V5, &[0xF0, 0x00]), Ok(Some(Packet::Auth(_)))));
}

#[test]
fn reserved_fixed_header_flags_are_rejected_mqtt_2_1_3_1() {
    for v in [V311, V5] {
        for p in sample_packets(v) {
            let t = p.packet_type();
            let Some(expected) = t.fixed_header_flags() else {
                continue;
            };
            let good = enc(&p, v);
            assert_eq!(good[0] & 0x0F, expected);
            for flags in (0..16u8).filter(|f| *f != expected) {
                let mut bad = good.clone();
                bad[0] = (bad[0] & 0xF0) | flags;
                let r = decode_packet(&mut bad, v, MAX);
                let want = DecodeError::InvalidFixedHeaderFlags { packet: t, flags };
                assert_eq!(r, Err(want));
            }
        }
    }
    // PUBREL with flags 0 (the 3.1 form) is rejected too.
    assert_eq!(
        dec_err(V311, 0x60, &[0, 1]),
        DecodeError::InvalidFixedHeaderFlags {
            packet: PacketType::PubRel,
            flags: 0
        }
    );
}

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let (d, r) = first_packet(frame(0x30, b"\x00\x01a"));
    assert_eq!(
        r,
        Err(DecodeError::FirstPacketNotConnect(PacketType::Publish))
    );
    assert_eq!(d.version(), None);
    // Decided from the first byte, before the body arrives.
    let (_, r) = first_packet(BytesMut::from(&[0xC0u8][..]));
    assert_eq!(
        r,
        Err(DecodeError::FirstPacketNotConnect(PacketType::PingReq))
    );
    assert_eq!(
        DecodeError::FirstPacketNotConnect(PacketType::PingReq).reason_code(),
        ReasonCode::ProtocolError
    );
}

#[test]
fn second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    let c = enc(&sample_packets(V5)[0], V5);
    let mut d = Decoder::new(MAX);
    let mut buf = c.clone();
    buf.extend_from_slice(&c);
    assert!(d.decode(&mut buf).unwrap().is_some());
    assert_eq!(d.decode(&mut buf), Err(DecodeError::SecondConnect));
}

#[test]
fn decoded_payload_and_strings_share_the_input_buffer() {
    let p = &sample_packets(V5)[2];
    let mut buf = enc(p, V5);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Packet::Publish(got)) = decode_packet(&mut buf, V5, MAX).unwrap() else {
        panic!("not a publish");
    };
    assert!(range.contains(&(got.payload.as_ptr() as usize)));
    assert!(range.contains(&(got.topic.as_bytes().as_ptr() as usize)));
}

#[test]
fn trailing_bytes_are_malformed_mqtt_2_1_4() {
    assert_eq!(
        dec_err(V5, 0xC0, &[0]),
        DecodeError::TrailingBytes {
            packet: PacketType::PingReq,
            extra: 1
        }
    );
    // v3.1.1 PUBACK is exactly 2 bytes; DISCONNECT has no body.
    assert!(matches!(
        dec_err(V311, 0x40, &[0, 1, 0]),
        DecodeError::TrailingBytes { .. }
    ));
    assert!(matches!(
        dec_err(V311, 0xE0, &[0]),
        DecodeError::TrailingBytes { .. }
    ));
    // v3.1.1 UNSUBACK has no payload.
    assert!(matches!(
        dec_err(V311, 0xB0, &[0, 1, 0]),
        DecodeError::TrailingBytes { .. }
    ));
}

#[test]
fn remaining_length_shorter_than_content_is_malformed() {
    // PUBLISH QoS 1 whose topic length claims 5 bytes but 1 is there.
    let e = dec_err(V311, 0x32, &[0, 5, b'a']);
    assert_eq!(
        e,
        DecodeError::Truncated {
            field: "topic name"
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    // PUBACK with only one byte of packet id.
    assert!(matches!(
        dec_err(V5, 0x40, &[0]),
        DecodeError::Truncated { .. }
    ));
}

// ---- PUBLISH ----

#[test]
fn publish_qos3_is_malformed_mqtt_3_3_1_4() {
    assert_eq!(
        dec_err(V5, 0x36, &[0, 1, b'a', 0, 1, 0]),
        DecodeError::PublishQos3
    );
    // Known from the first byte alone.
    assert_eq!(dec(V311, &[0x36]), Err(DecodeError::PublishQos3));
}

#[test]
fn dup_on_qos0_publish_is_rejected_mqtt_3_3_1_2() {
    assert_eq!(dec_err(V311, 0x38, &[0, 1, b'a']), DecodeError::DupWithQos0);
}

#[test]
fn publish_topic_with_wildcard_is_rejected_mqtt_3_3_2_2() {
    for t in [&b"a/+"[..], b"#", b"a/#", b"+"] {
        let mut body = vec![0, t.len() as u8];
        body.extend_from_slice(t);
        let e = dec_err(V311, 0x30, &body);
        assert_eq!(e, DecodeError::TopicWildcard);
        assert_eq!(e.reason_code(), ReasonCode::TopicNameInvalid);
    }
}

#[test]
fn empty_topic_rejected_in_v311_mqtt_4_7_3_1_allowed_in_v5() {
    assert_eq!(dec_err(V311, 0x30, &[0, 0]), DecodeError::EmptyTopic);
    // v5: topic "" with Topic Alias 1 (the session resolves the alias).
    let got = dec(V5, &frame(0x30, &[0, 0, 3, 0x23, 0, 1]))
        .unwrap()
        .unwrap();
    let Packet::Publish(p) = got else { panic!() };
    assert_eq!(p.topic, "");
    assert_eq!(p.properties.topic_alias, Some(1));
}

#[test]
fn topic_with_nul_is_malformed_mqtt_1_5_4_2() {
    assert_eq!(
        dec_err(V311, 0x30, &[0, 3, b'a', 0, b'b']),
        DecodeError::NullCharacter {
            field: "topic name"
        }
    );
}

#[test]
fn topic_with_invalid_utf8_is_malformed_mqtt_1_5_4_1() {
    assert_eq!(
        dec_err(V5, 0x30, &[0, 2, 0xC3, 0x28, 0]),
        DecodeError::InvalidUtf8 {
            field: "topic name"
        }
    );
}

#[test]
fn zero_packet_identifier_is_rejected_mqtt_2_2_1_3() {
    assert_eq!(
        dec_err(V311, 0x32, &[0, 1, b'a', 0, 0]),
        DecodeError::ZeroPacketId(PacketType::Publish)
    );
    assert_eq!(
        dec_err(V5, 0x40, &[0, 0]),
        DecodeError::ZeroPacketId(PacketType::PubAck)
    );
    assert_eq!(
        dec_err(V311, 0x82, &[0, 0, 0, 1, b'a', 0]),
        DecodeError::ZeroPacketId(PacketType::Subscribe)
    );
}

#[test]
fn qos0_publish_has_no_packet_identifier_mqtt_2_2_1_2() {
    // The two bytes after the topic are payload, not an id.
    let Some(Packet::Publish(p)) = dec(V311, &frame(0x30, &[0, 1, b'a', 0, 0])).unwrap() else {
        panic!()
    };
    assert_eq!(p.packet_id, None);
    assert_eq!(&p.payload[..], &[0, 0]);
}

// ---- CONNECT ----

#[test]
fn connect_with_wrong_protocol_name_is_closed_mqtt_3_1_2_1() {
    let mut body = connect_body(4, 2, &[], "c", &[]);
    body[2] = b'X';
    let (_, r) = first_packet(frame(0x10, &body));
    let e = r.unwrap_err();
    assert_eq!(e, DecodeError::InvalidProtocolName);
    assert_eq!(e.v311_connack(), None);
}

#[test]
fn unsupported_protocol_level_answers_connack_0x01_or_0x84_mqtt_3_1_2_2() {
    for level in [3u8, 6, 0] {
        let (d, r) = first_packet(frame(0x10, &connect_body(level, 2, &[], "c", &[])));
        let e = r.unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion { level });
        assert_eq!(e.v311_connack(), Some(0x01));
        assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
        assert_eq!(d.version(), None);
    }
    // MQTT 3.1 ("MQIsdp", level 3) gets the same answer.
    let mut body = vec![0, 6];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[3, 2, 0, 60, 0, 1, b'c']);
    let (_, r) = first_packet(frame(0x10, &body));
    assert_eq!(r.unwrap_err().v311_connack(), Some(0x01));
}

#[test]
fn connect_reserved_flag_is_malformed_mqtt_3_1_2_3() {
    for (level, props) in [(4, &[][..]), (5, &[0][..])] {
        let (_, r) = first_packet(frame(0x10, &connect_body(level, 0x03, props, "c", &[])));
        assert_eq!(r, Err(DecodeError::ConnectReservedFlag));
    }
}

#[test]
fn will_qos_and_retain_need_the_will_flag_mqtt_3_1_2_11_13() {
    for (flags, want) in [
        (0x02 | 0x08, DecodeError::WillQosWithoutWill),
        (0x02 | 0x20, DecodeError::WillRetainWithoutWill),
        (0x02 | 0x04 | 0x18, DecodeError::WillQos3),
    ] {
        let (_, r) = first_packet(frame(0x10, &connect_body(4, flags, &[], "c", &[])));
        assert_eq!(r, Err(want));
    }
}

#[test]
fn password_without_username_rejected_in_v311_mqtt_3_1_2_22_allowed_in_v5() {
    let (_, r) = first_packet(frame(0x10, &connect_body(4, 0x42, &[], "c", &[0, 1, b'p'])));
    assert_eq!(r, Err(DecodeError::PasswordWithoutUsername));
    let (_, r) = first_packet(frame(
        0x10,
        &connect_body(5, 0x42, &[0], "c", &[0, 1, b'p']),
    ));
    let Some(Packet::Connect(c)) = r.unwrap() else {
        panic!()
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn empty_client_id_without_clean_session_is_identifier_rejected_mqtt_3_1_3_8() {
    let (d, r) = first_packet(frame(0x10, &connect_body(4, 0, &[], "", &[])));
    let e = r.unwrap_err();
    assert_eq!(e, DecodeError::EmptyClientIdWithoutCleanSession);
    assert_eq!(e.v311_connack(), Some(0x02));
    assert_eq!(d.version(), Some(V311));
    // With clean session it is accepted; in v5 always (the server assigns).
    let (_, r) = first_packet(frame(0x10, &connect_body(4, 2, &[], "", &[])));
    assert!(r.unwrap().is_some());
    let (_, r) = first_packet(frame(0x10, &connect_body(5, 0, &[0], "", &[])));
    assert!(r.unwrap().is_some());
}

#[test]
fn version_is_known_even_when_the_rest_of_connect_is_malformed() {
    // Client id cut short: v5 answers with a v5 CONNACK 0x81.
    let mut body = connect_body(5, 2, &[0], "client", &[]);
    body.truncate(body.len() - 2);
    let (d, r) = first_packet(frame(0x10, &body));
    assert!(matches!(r, Err(DecodeError::Truncated { .. })));
    assert_eq!(d.version(), Some(V5));
}

#[test]
fn client_id_with_invalid_utf8_is_malformed_mqtt_1_5_4_1() {
    let mut body = connect_body(4, 2, &[], "ab", &[]);
    let n = body.len();
    body[n - 1] = 0xFF;
    let (_, r) = first_packet(frame(0x10, &body));
    assert_eq!(
        r,
        Err(DecodeError::InvalidUtf8 {
            field: "client identifier"
        })
    );
}

#[test]
fn will_properties_have_their_own_allowed_set_v5_3_1_3_2() {
    // Will Delay Interval (0x18) is allowed in Will Properties ...
    let will = [5, 0x18, 0, 0, 0, 9, 0, 1, b't', 0, 0];
    let (_, r) = first_packet(frame(0x10, &connect_body(5, 0x06, &[0], "c", &will)));
    let Some(Packet::Connect(c)) = r.unwrap() else {
        panic!()
    };
    assert_eq!(c.will.unwrap().properties.will_delay_interval, Some(9));
    // ... but not in the CONNECT properties,
    let (_, r) = first_packet(frame(
        0x10,
        &connect_body(5, 2, &[5, 0x18, 0, 0, 0, 9], "c", &[]),
    ));
    assert_eq!(
        r,
        Err(DecodeError::PropertyNotAllowed {
            property: PropertyId::WillDelayInterval,
            context: PropertyContext::Connect
        })
    );
    // and Session Expiry Interval is not a will property.
    let will = [5, 0x11, 0, 0, 0, 9, 0, 1, b't', 0, 0];
    let (_, r) = first_packet(frame(0x10, &connect_body(5, 0x06, &[0], "c", &will)));
    assert_eq!(
        r,
        Err(DecodeError::PropertyNotAllowed {
            property: PropertyId::SessionExpiryInterval,
            context: PropertyContext::Will
        })
    );
}

// ---- properties ----

fn puback_with_props(props: &[u8]) -> BytesMut {
    let mut body = vec![0, 1, 0x00];
    put_varint_vec(&mut body, props.len() as u32);
    body.extend_from_slice(props);
    frame(0x40, &body)
}

fn put_varint_vec(v: &mut Vec<u8>, n: u32) {
    let mut b = BytesMut::new();
    put_varint(&mut b, n);
    v.extend_from_slice(&b);
}

#[test]
fn unknown_property_identifier_is_malformed_mqtt_2_2_2_2() {
    let e = decode_packet(&mut puback_with_props(&[0x05, 0]), V5, MAX).unwrap_err();
    assert_eq!(e, DecodeError::UnknownProperty(0x05));
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn property_not_allowed_in_packet_is_malformed_mqtt_2_2_2_2() {
    // Topic Alias in PUBACK.
    let e = decode_packet(&mut puback_with_props(&[0x23, 0, 1]), V5, MAX).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PropertyNotAllowed {
            property: PropertyId::TopicAlias,
            context: PropertyContext::PubAck
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn allowed_property_table_matches_spec_for_every_context() {
    use PropertyContext as C;
    use PropertyId as P;
    // Spot checks of §2.2.2.2 rows with several contexts.
    assert!(P::ReasonString.allowed_in(C::Auth));
    assert!(!P::ReasonString.allowed_in(C::Publish));
    assert!(!P::ReasonString.allowed_in(C::Unsubscribe));
    assert!(P::ServerReference.allowed_in(C::Disconnect));
    assert!(!P::ServerReference.allowed_in(C::Connect));
    assert!(P::AuthenticationData.allowed_in(C::ConnAck));
    assert!(P::SubscriptionIdentifier.allowed_in(C::Subscribe));
    assert!(!P::SubscriptionIdentifier.allowed_in(C::Will));
    assert!(P::ContentType.allowed_in(C::Will));
    assert!(!P::MaximumQos.allowed_in(C::Connect));
    for ctx in [
        C::Connect,
        C::ConnAck,
        C::Publish,
        C::Will,
        C::PubAck,
        C::PubRec,
        C::PubRel,
        C::PubComp,
        C::Subscribe,
        C::SubAck,
        C::Unsubscribe,
        C::UnsubAck,
        C::Disconnect,
        C::Auth,
    ] {
        assert!(P::UserProperty.allowed_in(ctx));
    }
    // UNSUBSCRIBE allows only User Property.
    assert_eq!(
        P::ALL
            .iter()
            .filter(|p| p.allowed_in(C::Unsubscribe))
            .count(),
        1
    );
}

#[test]
fn duplicate_property_is_a_protocol_error_mqtt_2_2_2_2() {
    let reason = [0x1F, 0, 1, b'x'];
    let e = decode_packet(&mut puback_with_props(&[reason, reason].concat()), V5, MAX).unwrap_err();
    assert_eq!(
        e,
        DecodeError::DuplicateProperty {
            property: PropertyId::ReasonString,
            context: PropertyContext::PubAck
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert!(e.to_string().contains("It is a Protocol Error to include"));
}

#[test]
fn user_property_may_repeat_everywhere() {
    let up = [0x26, 0, 1, b'k', 0, 1, b'v'];
    let Some(Packet::PubAck(r)) =
        decode_packet(&mut puback_with_props(&[up, up, up].concat()), V5, MAX).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.properties.user_properties.len(), 3);
}

#[test]
fn subscription_identifier_repeats_only_in_publish() {
    // PUBLISH with two subscription identifiers.
    let body = [0, 1, b'a', 4, 0x0B, 1, 0x0B, 2];
    let Some(Packet::Publish(p)) = dec(V5, &frame(0x30, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 2]);
    // SUBSCRIBE with two: protocol error.
    let body = [0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0];
    assert_eq!(
        dec_err(V5, 0x82, &body),
        DecodeError::DuplicateProperty {
            property: PropertyId::SubscriptionIdentifier,
            context: PropertyContext::Subscribe
        }
    );
}

#[test]
fn invalid_property_values_are_protocol_errors() {
    let cases: Vec<(Vec<u8>, PropertyId, u32)> = vec![
        (vec![0x01, 2], PropertyId::PayloadFormatIndicator, 2),
        (vec![0x0B, 0], PropertyId::SubscriptionIdentifier, 0),
    ];
    for (props, property, value) in cases {
        let mut body = vec![0, 1, b'a', props.len() as u8];
        body.extend_from_slice(&props);
        assert_eq!(
            dec_err(V5, 0x30, &body),
            DecodeError::InvalidPropertyValue { property, value }
        );
    }
    // CONNACK / CONNECT-only properties.
    let connack: Vec<(Vec<u8>, PropertyId)> = vec![
        (vec![0x21, 0, 0], PropertyId::ReceiveMaximum),
        (vec![0x27, 0, 0, 0, 0], PropertyId::MaximumPacketSize),
        (vec![0x24, 2], PropertyId::MaximumQos),
        (vec![0x25, 2], PropertyId::RetainAvailable),
        (vec![0x28, 2], PropertyId::WildcardSubscriptionAvailable),
        (vec![0x29, 2], PropertyId::SubscriptionIdentifierAvailable),
        (vec![0x2A, 2], PropertyId::SharedSubscriptionAvailable),
    ];
    for (props, property) in connack {
        let mut body = vec![0, 0, props.len() as u8];
        body.extend_from_slice(&props);
        let e = dec_err(V5, 0x20, &body);
        assert!(
            matches!(e, DecodeError::InvalidPropertyValue { property: p, .. } if p == property),
            "{e:?}"
        );
        assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    }
    for props in [[0x17u8, 2], [0x19, 2]] {
        let (_, r) = first_packet(frame(
            0x10,
            &connect_body(5, 2, &[2, props[0], props[1]], "c", &[]),
        ));
        assert!(matches!(r, Err(DecodeError::InvalidPropertyValue { .. })));
    }
}

#[test]
fn topic_alias_zero_is_topic_alias_invalid_mqtt_3_3_2_8() {
    let e = dec_err(V5, 0x30, &[0, 1, b'a', 3, 0x23, 0, 0]);
    assert_eq!(e, DecodeError::TopicAliasZero);
    assert_eq!(e.reason_code(), ReasonCode::TopicAliasInvalid);
}

#[test]
fn property_length_beyond_packet_is_malformed() {
    let e = dec_err(V5, 0x30, &[0, 1, b'a', 10, 0x01, 1]);
    assert_eq!(
        e,
        DecodeError::Truncated {
            field: "properties"
        }
    );
    // A property value running past the property block.
    let e = dec_err(V5, 0x30, &[0, 1, b'a', 2, 0x02, 0, 0, 0]);
    assert!(matches!(e, DecodeError::Truncated { .. }));
}

#[test]
fn non_minimal_property_length_is_malformed_mqtt_1_5_5_1() {
    assert_eq!(
        dec_err(V5, 0x30, &[0, 1, b'a', 0x80, 0x00]),
        DecodeError::VarintNotMinimal
    );
}

// ---- reason codes ----

#[test]
fn pub_responses_short_forms_v5_3_4_2_1() {
    // Remaining length 2: Success, no properties.
    let Some(Packet::PubAck(r)) = dec(V5, &frame(0x40, &[0, 9])).unwrap() else {
        panic!()
    };
    assert_eq!((r.packet_id.get(), r.reason), (9, ReasonCode::Success));
    // Remaining length 3: reason, no property length.
    let Some(Packet::PubRec(r)) = dec(V5, &frame(0x50, &[0, 9, 0x10])).unwrap() else {
        panic!()
    };
    assert_eq!(r.reason, ReasonCode::NoMatchingSubscribers);
    // Encoder uses them.
    assert_eq!(
        &enc(
            &Packet::PubAck(PubResponse::new(pid(9), ReasonCode::Success)),
            V5
        )[..],
        &[0x40, 2, 0, 9]
    );
    assert_eq!(
        &enc(
            &Packet::PubRel(PubResponse::new(
                pid(9),
                ReasonCode::PacketIdentifierNotFound
            )),
            V5
        )[..],
        &[0x62, 3, 0, 9, 0x92]
    );
}

#[test]
fn disconnect_and_auth_short_forms_v5_3_14_2_1() {
    assert_eq!(
        dec(V5, &[0xE0, 0]),
        Ok(Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::Success
        ))))
    );
    assert_eq!(
        dec(V5, &[0xE0, 1, 0x04]),
        Ok(Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWillMessage
        ))))
    );
    assert!(matches!(
        dec(V5, &[0xF0, 0]),
        Ok(Some(Packet::Auth(Auth {
            reason: ReasonCode::Success,
            ..
        })))
    ));
    assert_eq!(
        &enc(
            &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            V5
        )[..],
        &[0xE0, 0]
    );
    assert_eq!(
        &enc(
            &Packet::Disconnect(Disconnect::new(ReasonCode::ServerShuttingDown)),
            V5
        )[..],
        &[0xE0, 2, 0x8B, 0]
    );
    // AUTH with a reason always carries a Property Length (§3.15.2).
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: Properties::default(),
    });
    assert_eq!(&enc(&auth, V5)[..], &[0xF0, 2, 0x19, 0]);
}

#[test]
fn unknown_reason_code_is_malformed_and_misplaced_one_a_protocol_error_mqtt_2_4() {
    let e = dec_err(V5, 0x40, &[0, 1, 0x03]);
    assert_eq!(
        e,
        DecodeError::UnknownReasonCode {
            packet: PacketType::PubAck,
            code: 0x03
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    // 0x10 exists but not in PUBREL.
    let e = dec_err(V5, 0x62, &[0, 1, 0x10]);
    assert_eq!(
        e,
        DecodeError::ReasonNotAllowed {
            packet: PacketType::PubRel,
            reason: ReasonCode::NoMatchingSubscribers
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    // DISCONNECT may not carry Granted QoS 1; AUTH may not carry 0x80.
    assert!(matches!(
        dec_err(V5, 0xE0, &[0x01]),
        DecodeError::ReasonNotAllowed { .. }
    ));
    assert!(matches!(
        dec_err(V5, 0xF0, &[0x80]),
        DecodeError::ReasonNotAllowed { .. }
    ));
}

#[test]
fn reason_code_table_matches_spec_counts_per_packet() {
    // Lengths of each packet's list in §3.x.
    let count = |t: PacketType| ReasonCode::ALL.iter().filter(|r| r.valid_in(t)).count();
    assert_eq!(count(PacketType::ConnAck), 22);
    assert_eq!(count(PacketType::PubAck), 9);
    assert_eq!(count(PacketType::PubRec), 9);
    assert_eq!(count(PacketType::PubRel), 2);
    assert_eq!(count(PacketType::PubComp), 2);
    assert_eq!(count(PacketType::SubAck), 12);
    assert_eq!(count(PacketType::UnsubAck), 7);
    assert_eq!(count(PacketType::Disconnect), 30);
    assert_eq!(count(PacketType::Auth), 3);
    assert_eq!(count(PacketType::Publish), 0);
    for r in ReasonCode::ALL {
        assert_eq!(ReasonCode::from_u8(r.as_u8()), Some(r));
    }
}

// ---- CONNACK ----

#[test]
fn connack_reserved_flags_are_malformed_mqtt_3_2_2_1() {
    assert_eq!(
        dec_err(V311, 0x20, &[0x02, 0]),
        DecodeError::ConnAckReservedFlags
    );
}

#[test]
fn connack_session_present_with_refusal_is_rejected_mqtt_3_2_2_6() {
    assert_eq!(
        dec_err(V311, 0x20, &[0x01, 5]),
        DecodeError::SessionPresentOnRefusal
    );
    assert_eq!(
        dec_err(V5, 0x20, &[0x01, 0x87, 0]),
        DecodeError::SessionPresentOnRefusal
    );
}

#[test]
fn v311_connack_return_codes_map_to_reason_codes_mqtt_3_2_2_3() {
    for code in 0..=5u8 {
        let Some(Packet::ConnAck(c)) = dec(V311, &frame(0x20, &[0, code])).unwrap() else {
            panic!()
        };
        assert_eq!(c.reason.to_v311_connack(), code);
        assert_eq!(&enc(&Packet::ConnAck(c), V311)[..], &[0x20, 2, 0, code]);
    }
    assert_eq!(
        dec_err(V311, 0x20, &[0, 6]),
        DecodeError::ReservedV311ConnAckCode(6)
    );
}

// ---- SUBSCRIBE / SUBACK / UNSUBSCRIBE ----

#[test]
fn subscribe_without_filters_is_a_protocol_error_mqtt_3_8_3_3() {
    assert_eq!(dec_err(V311, 0x82, &[0, 1]), DecodeError::EmptySubscribe);
    let e = dec_err(V5, 0x82, &[0, 1, 0]);
    assert_eq!(e, DecodeError::EmptySubscribe);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn subscription_options_reserved_bits_are_malformed_mqtt_3_8_3_5() {
    // v5: bits 6-7.
    assert_eq!(
        dec_err(V5, 0x82, &[0, 1, 0, 0, 1, b'a', 0x40]),
        DecodeError::SubscriptionOptionsReserved(0x40)
    );
    // v3.1.1: bits 2-7 [MQTT-3-8.3-4].
    assert_eq!(
        dec_err(V311, 0x82, &[0, 1, 0, 1, b'a', 0x04]),
        DecodeError::SubscriptionOptionsReserved(0x04)
    );
}

#[test]
fn subscription_qos3_and_retain_handling3_are_rejected() {
    assert_eq!(
        dec_err(V5, 0x82, &[0, 1, 0, 0, 1, b'a', 0x03]),
        DecodeError::SubscriptionQos3
    );
    assert_eq!(
        dec_err(V311, 0x82, &[0, 1, 0, 1, b'a', 0x03]),
        DecodeError::SubscriptionQos3
    );
    assert_eq!(
        dec_err(V5, 0x82, &[0, 1, 0, 0, 1, b'a', 0x30]),
        DecodeError::RetainHandling3
    );
}

#[test]
fn subscription_options_v5_bits_decode() {
    let Some(Packet::Subscribe(s)) = dec(V5, &frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x2E])).unwrap()
    else {
        panic!()
    };
    let o = s.filters[0].1;
    assert_eq!(o.qos, QoS::ExactlyOnce);
    assert!(o.no_local && o.retain_as_published);
    assert_eq!(o.retain_handling, RetainHandling::DoNotSend);
}

#[test]
fn subscribe_filters_are_not_validated_as_filters_here() {
    // "a/#/b" is an invalid filter; the session answers 0x8F in SUBACK.
    let Some(Packet::Subscribe(s)) = dec(
        V311,
        &frame(0x82, &[0, 1, 0, 5, b'a', b'/', b'#', b'/', b'b', 1]),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(s.filters[0].0, "a/#/b");
}

#[test]
fn unsubscribe_without_filters_is_a_protocol_error_mqtt_3_10_3_2() {
    assert_eq!(dec_err(V311, 0xA2, &[0, 1]), DecodeError::EmptyUnsubscribe);
    assert_eq!(dec_err(V5, 0xA2, &[0, 1, 0]), DecodeError::EmptyUnsubscribe);
}

#[test]
fn v311_suback_return_codes_mqtt_3_9_3_2() {
    let Some(Packet::SubAck(s)) = dec(V311, &frame(0x90, &[0, 1, 0, 1, 2, 0x80])).unwrap() else {
        panic!()
    };
    assert_eq!(
        s.reasons,
        vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError
        ]
    );
    assert_eq!(
        dec_err(V311, 0x90, &[0, 1, 3]),
        DecodeError::ReservedV311SubAckCode(3)
    );
    assert_eq!(dec_err(V311, 0x90, &[0, 1]), DecodeError::EmptySubAck);
    // Any v5 failure maps to 0x80 on a v3.1.1 wire.
    let p = Packet::SubAck(SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        reasons: vec![ReasonCode::TopicFilterInvalid],
    });
    assert_eq!(&enc(&p, V311)[..], &[0x90, 3, 0, 1, 0x80]);
}

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
        properties: Properties::default(),
    };
    c.properties.receive_maximum = Some(0);
    assert!(matches!(
        encode(&Packet::ConnAck(c.clone()), V5, &mut BytesMut::new()),
        Err(EncodeError::InvalidPropertyValue { .. })
    ));
    c.properties = Properties::default();
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
