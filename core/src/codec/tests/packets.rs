//! Per-packet rules: PUBLISH, CONNECT, CONNACK, SUBSCRIBE family, reason codes.

use super::*;

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

/// v5 §3.1.2.11.10: "It is a Protocol Error to include Authentication Data
/// if there is no Authentication Method".
#[test]
fn authentication_data_without_a_method_is_a_protocol_error_v5_3_1_2_11_10() {
    let data = [4, 0x16, 0, 1, b'x'];
    let (d, r) = first_packet(frame(0x10, &connect_body(5, 2, &data, "c", &[])));
    let e = r.unwrap_err();
    assert_eq!(e, DecodeError::AuthenticationDataWithoutMethod);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert_eq!(d.version(), Some(V5), "answered with a v5 CONNACK");
    let both = [8, 0x15, 0, 1, b'M', 0x16, 0, 1, b'x'];
    let (_, r) = first_packet(frame(0x10, &connect_body(5, 2, &both, "c", &[])));
    let Some(Packet::Connect(c)) = r.unwrap() else {
        panic!()
    };
    assert_eq!(c.properties.authentication_method.as_deref(), Some("M"));
    assert_eq!(c.properties.authentication_data.as_deref(), Some(&b"x"[..]));
    // Nor does the encoder write one.
    let mut c = *c;
    c.properties.authentication_method = None;
    assert_eq!(
        encode(&Packet::Connect(Box::new(c)), V5, &mut BytesMut::new()),
        Err(EncodeError::AuthenticationDataWithoutMethod)
    );
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

/// A 64 MiB SUBSCRIBE of short filters decoded to 13 million entries,
/// gigabytes once the session built its answer: the decoder stops at the
/// bound, before the entry past it is built (the broker answers 0x97).
#[test]
fn topic_filters_past_the_servers_limit_are_refused() {
    for (first, entry, packet) in [
        (0x82, &[0, 1, b'a', 0][..], PacketType::Subscribe),
        (0xA2, &[0, 1, b'a'][..], PacketType::Unsubscribe),
    ] {
        for v in [V311, V5] {
            let body = |n: usize| {
                let mut body = vec![0, 1];
                if v == V5 {
                    body.push(0);
                }
                body.extend(entry.repeat(n));
                body
            };
            let at_limit = decode_packet(
                &mut frame(first, &body(TOPIC_FILTERS_PER_PACKET_MAX)),
                v,
                MAX,
            );
            assert!(matches!(at_limit, Ok(Some(_))), "{packet:?} {v:?}");
            let e = dec_err(v, first, &body(TOPIC_FILTERS_PER_PACKET_MAX + 1));
            assert_eq!(
                e,
                DecodeError::TooManyTopicFilters {
                    packet,
                    max: TOPIC_FILTERS_PER_PACKET_MAX
                }
            );
            assert_eq!(e.reason_code(), ReasonCode::QuotaExceeded);
        }
    }
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
        properties: Props::default(),
        reasons: vec![ReasonCode::TopicFilterInvalid],
    });
    assert_eq!(&enc(&p, V311)[..], &[0x90, 3, 0, 1, 0x80]);
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
        properties: Props::default(),
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
