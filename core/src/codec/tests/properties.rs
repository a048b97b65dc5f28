//! v5 properties (§2.2.2): allowed sets, repeats, values, lengths.

use super::*;

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

/// One SUBSCRIBE of 60 MiB of empty user properties decoded to 12.5
/// million entries (~800 MB). The decoder stops at the bound, before the
/// entry past it is built; the broker answers 0x97 Quota exceeded.
#[test]
fn user_properties_past_the_servers_limit_are_refused() {
    let empty_pair = [0x26, 0, 0, 0, 0];
    let subscribe = |pairs: usize| {
        let props = empty_pair.repeat(pairs);
        let mut body = vec![0, 1];
        put_varint_vec(&mut body, props.len() as u32);
        body.extend_from_slice(&props);
        body.extend_from_slice(&[0, 1, b'a', 0]);
        frame(0x82, &body)
    };
    let Some(Packet::Subscribe(s)) =
        decode_packet(&mut subscribe(USER_PROPERTIES_MAX), V5, MAX).unwrap()
    else {
        panic!()
    };
    assert_eq!(s.properties.user_properties.len(), USER_PROPERTIES_MAX);
    let e = decode_packet(&mut subscribe(USER_PROPERTIES_MAX + 1), V5, MAX).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooManyUserProperties {
            context: PropertyContext::Subscribe,
            max: USER_PROPERTIES_MAX
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::QuotaExceeded);
    assert!(e.reason_code().valid_in(PacketType::Disconnect));
    assert!(e.reason_code().valid_in(PacketType::ConnAck));
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
