//! Round trip: encode -> decode gives back the original packet, for every
//! packet type in both versions, with random strings, payloads and (v5)
//! random properties drawn from each packet type's allowed set (§2.2.2.2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::prelude::*;
use shardmq_core::codec::*;

const MAX: u32 = 16 * 1024 * 1024;

fn string() -> impl Strategy<Value = ByteString> {
    // Any Unicode scalar but U+0000 [MQTT-1.5.4-2], controls included.
    "[^\\x00]{0,12}".prop_map(ByteString::from)
}

fn topic_name(allow_empty: bool) -> impl Strategy<Value = ByteString> {
    let min = usize::from(!allow_empty);
    proptest::string::string_regex(&format!("[^\\x00+#]{{{min},12}}"))
        .unwrap()
        .prop_map(ByteString::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    prop::option::of(0u8..=1)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pid() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|v| PacketId::new(v).unwrap())
}

/// Random valid values for every property, then only those allowed in
/// `ctx` are kept.
fn properties(ctx: PropertyContext) -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        any::<Option<u32>>(),
        prop::option::of(string()),
        prop::option::of(string()),
        prop::option::of(binary()),
        prop::collection::vec(1..=SUBSCRIPTION_IDENTIFIER_MAX, 0..3),
        any::<Option<u32>>(),
        prop::option::of(string()),
        any::<Option<u16>>(),
    );
    let b = (
        prop::option::of(string()),
        prop::option::of(binary()),
        flag(),
        any::<Option<u32>>(),
        flag(),
        prop::option::of(string()),
        prop::option::of(string()),
        prop::option::of(string()),
        prop::option::of(1u16..),
    );
    let c = (
        any::<Option<u16>>(),
        prop::option::of(1u16..),
        flag(),
        flag(),
        prop::collection::vec((string(), string()), 0..3),
        prop::option::of(1u32..),
        flag(),
        flag(),
        flag(),
    );
    (a, b, c).prop_map(move |(a, b, c)| {
        let mut p = Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifier_available: c.7,
            shared_subscription_available: c.8,
        };
        keep_allowed(&mut p, ctx);
        p
    })
}

fn keep_allowed(p: &mut Properties, ctx: PropertyContext) {
    use PropertyId::*;
    let allowed = |id: PropertyId| id.allowed_in(ctx);
    macro_rules! clear {
        ($($id:ident => $field:ident),* $(,)?) => {
            $(if !allowed($id) { p.$field = Default::default(); })*
        };
    }
    clear!(
        PayloadFormatIndicator => payload_format_indicator,
        MessageExpiryInterval => message_expiry_interval,
        ContentType => content_type,
        ResponseTopic => response_topic,
        CorrelationData => correlation_data,
        SubscriptionIdentifier => subscription_identifiers,
        SessionExpiryInterval => session_expiry_interval,
        AssignedClientIdentifier => assigned_client_identifier,
        ServerKeepAlive => server_keep_alive,
        AuthenticationMethod => authentication_method,
        AuthenticationData => authentication_data,
        RequestProblemInformation => request_problem_information,
        WillDelayInterval => will_delay_interval,
        RequestResponseInformation => request_response_information,
        ResponseInformation => response_information,
        ServerReference => server_reference,
        ReasonString => reason_string,
        ReceiveMaximum => receive_maximum,
        TopicAliasMaximum => topic_alias_maximum,
        TopicAlias => topic_alias,
        MaximumQos => maximum_qos,
        RetainAvailable => retain_available,
        UserProperty => user_properties,
        MaximumPacketSize => maximum_packet_size,
        WildcardSubscriptionAvailable => wildcard_subscription_available,
        SubscriptionIdentifierAvailable => subscription_identifier_available,
        SharedSubscriptionAvailable => shared_subscription_available,
    );
    if !SubscriptionIdentifier.may_repeat_in(ctx) {
        p.subscription_identifiers.truncate(1);
    }
}

/// Properties for `ctx` in v5; none in v3.1.1.
fn props_for(v: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    match v {
        ProtocolVersion::V5 => properties(ctx).boxed(),
        ProtocolVersion::V311 => Just(Properties::default()).boxed(),
    }
}

fn reason(t: PacketType) -> impl Strategy<Value = ReasonCode> {
    let valid: Vec<ReasonCode> = ReasonCode::ALL
        .into_iter()
        .filter(|r| r.valid_in(t))
        .collect();
    prop::sample::select(valid)
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        string(),
        binary(),
        qos(),
        any::<bool>(),
        props_for(v, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties: properties.into(),
        });
    (
        any::<bool>(),
        any::<u16>(),
        props_for(v, PropertyContext::Connect),
        string(),
        prop::option::of(will),
        prop::option::of(string()),
        prop::option::of(binary()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                let v311 = v == ProtocolVersion::V311;
                let mut properties = properties;
                // v5 §3.1.2.11.10: no Authentication Data without a method.
                if properties.authentication_method.is_none() {
                    properties.authentication_data = None;
                }
                Packet::Connect(Box::new(Connect {
                    protocol_version: v,
                    // [MQTT-3.1.3-8]: an empty id needs Clean Session in 3.1.1.
                    clean_start: clean_start || (v311 && client_id.is_empty()),
                    keep_alive,
                    properties: properties.into(),
                    client_id,
                    will,
                    // [MQTT-3.1.2-22]: 3.1.1 has no password without a user name.
                    password: if v311 && username.is_none() {
                        None
                    } else {
                        password
                    },
                    username,
                }))
            },
        )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(v == ProtocolVersion::V5),
        pid(),
        props_for(v, PropertyContext::Publish),
        binary(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { None } else { Some(id) },
                properties: properties.into(),
                payload,
            })
        })
}

fn pub_response(v: ProtocolVersion, t: PacketType) -> BoxedStrategy<PubResponse> {
    let ctx = match t {
        PacketType::PubAck => PropertyContext::PubAck,
        PacketType::PubRec => PropertyContext::PubRec,
        PacketType::PubRel => PropertyContext::PubRel,
        _ => PropertyContext::PubComp,
    };
    match v {
        ProtocolVersion::V5 => (pid(), reason(t), properties(ctx))
            .prop_map(|(packet_id, reason, properties)| PubResponse {
                packet_id,
                reason,
                properties: properties.into(),
            })
            .boxed(),
        ProtocolVersion::V311 => pid()
            .prop_map(|id| PubResponse::new(id, ReasonCode::Success))
            .boxed(),
    }
}

fn subscription_options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendAtSubscribeIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v == ProtocolVersion::V5 {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        }
    })
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v == ProtocolVersion::V5;
    let connack_reason = if v5 {
        reason(PacketType::ConnAck).boxed()
    } else {
        (0u8..=5)
            .prop_map(|c| ReasonCode::from_v311_connack(c).unwrap())
            .boxed()
    };
    let suback_reason = if v5 {
        reason(PacketType::SubAck).boxed()
    } else {
        (0u8..4)
            .prop_map(|c| ReasonCode::from_v311_suback([0, 1, 2, 0x80][c as usize]).unwrap())
            .boxed()
    };
    let mut options = vec![
        connect(v).boxed(),
        (
            any::<bool>(),
            connack_reason,
            props_for(v, PropertyContext::ConnAck),
        )
            .prop_map(|(sp, reason, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present: sp && reason == ReasonCode::Success,
                    reason,
                    properties: properties.into(),
                })
            })
            .boxed(),
        publish(v).boxed(),
        pub_response(v, PacketType::PubAck)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_response(v, PacketType::PubRec)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_response(v, PacketType::PubRel)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_response(v, PacketType::PubComp)
            .prop_map(Packet::PubComp)
            .boxed(),
        (
            pid(),
            props_for(v, PropertyContext::Subscribe),
            prop::collection::vec((string(), subscription_options(v)), 1..5),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties: properties.into(),
                    filters,
                })
            })
            .boxed(),
        (
            pid(),
            props_for(v, PropertyContext::SubAck),
            prop::collection::vec(suback_reason, 1..5),
        )
            .prop_map(|(packet_id, properties, reasons)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties: properties.into(),
                    reasons,
                })
            })
            .boxed(),
        (
            pid(),
            props_for(v, PropertyContext::Unsubscribe),
            prop::collection::vec(string(), 1..5),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties: properties.into(),
                    filters,
                })
            })
            .boxed(),
        (
            pid(),
            props_for(v, PropertyContext::UnsubAck),
            prop::collection::vec(reason(PacketType::UnsubAck), 1..5),
        )
            .prop_map(move |(packet_id, properties, reasons)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties: properties.into(),
                    // 3.1.1 UNSUBACK has no payload.
                    reasons: if v5 { reasons } else { Vec::new() },
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        options.push(
            (
                reason(PacketType::Disconnect),
                properties(PropertyContext::Disconnect),
            )
                .prop_map(|(reason, properties)| {
                    Packet::Disconnect(Disconnect {
                        reason,
                        properties: properties.into(),
                    })
                })
                .boxed(),
        );
        options.push(
            (reason(PacketType::Auth), properties(PropertyContext::Auth))
                .prop_map(|(reason, properties)| {
                    Packet::Auth(Auth {
                        reason,
                        properties: properties.into(),
                    })
                })
                .boxed(),
        );
    } else {
        options.push(Just(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).boxed());
    }
    prop::strategy::Union::new(options).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn encode_then_decode_gives_back_every_packet((v, p) in versioned_packet()) {
        let mut buf = BytesMut::new();
        encode(&p, v, &mut buf).unwrap();
        prop_assert_eq!(encoded_len(&p, v).unwrap(), buf.len());
        let got = decode_packet(&mut buf, v, MAX).unwrap();
        prop_assert_eq!(got, Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn first_packet_connect_round_trips_and_sets_the_version(
        p in version().prop_flat_map(connect)
    ) {
        let Packet::Connect(c) = &p else { unreachable!() };
        let v = c.protocol_version;
        let mut buf = BytesMut::new();
        encode(&p, v, &mut buf).unwrap();
        let mut d = Decoder::new(MAX);
        prop_assert_eq!(d.decode(&mut buf).unwrap(), Some(p.clone()));
        prop_assert_eq!(d.version(), Some(v));
    }

    #[test]
    fn stream_of_packets_decodes_in_order_split_anywhere(
        (v, packets) in version().prop_flat_map(|v| {
            prop::collection::vec(packet(v), 1..6).prop_map(move |ps| (v, ps))
        }),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        for p in &packets {
            encode(p, v, &mut wire).unwrap();
        }
        // Feed the stream in two chunks split at an arbitrary byte.
        let at = cut.index(wire.len() + 1);
        let second = wire.split_off(at);
        let mut buf = wire;
        let mut got = Vec::new();
        while let Some(p) = decode_packet(&mut buf, v, MAX).unwrap() {
            got.push(p);
        }
        buf.extend_from_slice(&second);
        while let Some(p) = decode_packet(&mut buf, v, MAX).unwrap() {
            got.push(p);
        }
        prop_assert_eq!(got, packets);
        prop_assert!(buf.is_empty());
    }
}
