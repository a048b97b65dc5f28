//! Unit tests for the decoder and encoder, one per spec rule (the rule is in
//! the test name or comment), grouped by topic; shared builders live here.
//! Round trips, interop and garbage input live in core/tests/codec_*.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod encode;
mod framing;
mod packets;
mod properties;

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
            properties: props.clone().into(),
            client_id: s("client"),
            will: Some(Will {
                topic: s("will/t"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props.clone().into(),
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(b"p")),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: props.clone().into(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("a/b"),
            packet_id: Some(pid(7)),
            properties: pub_props.into(),
            payload: Bytes::from_static(b"hello"),
        }),
        Packet::PubAck(PubResponse::new(pid(1), ReasonCode::Success)),
        Packet::PubRec(PubResponse::new(pid(2), ReasonCode::Success)),
        Packet::PubRel(PubResponse::new(pid(3), ReasonCode::Success)),
        Packet::PubComp(PubResponse::new(pid(4), ReasonCode::Success)),
        Packet::Subscribe(Subscribe {
            packet_id: pid(5),
            properties: props.clone().into(),
            filters: vec![(s("a/+"), SubscriptionOptions::default())],
        }),
        Packet::SubAck(SubAck {
            packet_id: pid(5),
            properties: props.clone().into(),
            reasons: vec![ReasonCode::GrantedQoS1],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(6),
            properties: props.clone().into(),
            filters: vec![s("a/+")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(6),
            properties: props.clone().into(),
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
            }
            .into(),
        }));
    }
    out
}
