//! Scenario tests for the session state machine, on a fake clock: each test
//! drives the production `Connection` with packets and reads what it sends
//! and the events it raises. Spec rules are named where they apply.
// The fake clock's base instant comes from the clock once (core's clippy.toml
// bans clock reads in the library, not here).
#![allow(clippy::disallowed_methods)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default
)]

mod support;
use support::PollPacket;

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use shardmq_core::buffer::{memory_cost, MemoryOnly, ShardBuffer};
use shardmq_core::codec::{
    decode_packet, AckKind, Connect, Disconnect, Packet, PacketId, Properties, Props,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, RetainHandling, ShortAck, Subscribe,
    SubscriptionId, SubscriptionOptions, Unsubscribe, Will,
};
use shardmq_core::limits::{ClientLimits, QueueFullStrategy, QueueLimit, TOPIC_LEVELS_MAX};
use shardmq_core::session::{
    AllowAll, CloseReason, Connection, Delivery, Denied, Enqueued, Event, Message, Permissions,
    SessionState, SharedMessage, Violation, CONNECT_TIMEOUT,
};
use shardmq_core::topic::{Filter, TopicName};

fn id(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn connect(version: ProtocolVersion, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol_version: version,
        clean_start,
        keep_alive: 60,
        properties: Props::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

fn publish(topic: &str, qos: QoS, pid: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: pid.map(id),
        properties: Props::default(),
        payload: Bytes::from_static(payload),
    }
}

fn message(topic: &str, qos: QoS, payload: &'static [u8]) -> SharedMessage {
    Arc::new(Message {
        topic: TopicName::try_from(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("publisher"),
        retain_stamp: 0,
    })
}

fn granted(qos: QoS) -> Delivery {
    Delivery {
        granted_qos: qos,
        ..Delivery::default()
    }
}

/// One connection on a fake clock.
struct Harness {
    now: Instant,
    conn: Connection,
    /// The shard's buffer without a disk: queues bounded by memory alone.
    buffer: ShardBuffer<MemoryOnly>,
}

impl Harness {
    fn new(limits: ClientLimits) -> Harness {
        let now = Instant::now();
        let limits = Arc::new(limits);
        Harness {
            now,
            conn: Connection::new(now, limits),
            buffer: ShardBuffer::memory_only(),
        }
    }

    /// Offers a routed message to the connection's session, as the shard does.
    fn deliver(&mut self, now: Instant, m: &SharedMessage, d: &Delivery) -> Enqueued {
        self.conn.deliver(now, m, d, &mut self.buffer.lease(1))
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
            self.conn.handle_timeout(self.now);
        }
    }

    fn recv(&mut self, p: Packet) {
        self.conn.handle_packet(self.now, p);
    }

    /// What the connection sends, through the production path: encoded by
    /// `poll_transmit` and decoded again as a client would.
    fn sent(&mut self) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        while self
            .conn
            .poll_transmit(self.now, &mut buf, 1 << 20, &mut self.buffer.lease(1))
            > 0
        {}
        let version = self.conn.protocol_version();
        let mut out = Vec::new();
        while let Some(p) =
            decode_packet(&mut buf, version, u32::MAX).expect("broker output decodes")
        {
            out.push(p);
        }
        assert!(buf.is_empty(), "a partial packet was sent");
        out
    }

    fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.conn.poll_event() {
            out.push(e);
        }
        out
    }

    /// CONNECT, then accept with `existing` as the broker would.
    fn connect_with(&mut self, c: Connect, existing: Option<SessionState>) -> Packet {
        self.recv(Packet::Connect(Box::new(c)));
        let events = self.events();
        assert!(
            matches!(events.as_slice(), [Event::Connect(_)]),
            "{events:?}"
        );
        self.conn.accept(
            self.now,
            existing,
            Some("assigned-1".into()),
            Box::new(AllowAll),
        );
        // CONNACK first; a resumed session's redeliveries follow it.
        self.conn
            .poll_packet(self.now, &mut self.buffer.lease(1))
            .expect("CONNACK")
    }

    fn connect_v5(&mut self, client_id: &str) -> Packet {
        self.connect_with(connect(ProtocolVersion::V5, client_id, true), None)
    }

    fn closed_event(
        &mut self,
    ) -> (
        CloseReason,
        Option<SessionState>,
        Option<shardmq_core::session::PendingWill>,
    ) {
        let events = self.events();
        for e in events {
            if let Event::Closed {
                reason,
                session,
                will,
            } = e
            {
                return (reason, session.map(|s| *s), will);
            }
        }
        panic!("no Closed event")
    }
}

fn connack(p: &Packet) -> &shardmq_core::codec::ConnAck {
    match p {
        Packet::ConnAck(c) => c,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason),
        _ => None,
    })
}

#[test]
fn v5_connack_announces_broker_limits_and_features() {
    let mut limits = ClientLimits::default();
    limits.receive_maximum_max = NonZeroU16::new(100).unwrap();
    limits.packet_size_max = NonZeroU32::new(4096).unwrap();
    limits.topic_alias_max = 10;
    let mut h = Harness::new(limits);
    let ack = h.connect_v5("c1");
    let ack = connack(&ack);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    assert_eq!(ack.properties.receive_maximum, Some(100));
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    assert_eq!(ack.properties.shared_subscription_available, Some(1));
    assert_eq!(ack.properties.assigned_client_identifier, None);
    assert!(h.conn.is_connected());
}

/// v5 §3.2.2.3.6: the default limit is MQTT's own, so CONNACK carries no
/// Maximum Packet Size (paho-mqtt refuses 268,435,460 and drops the
/// connection); a configured limit below the largest Remaining Length is
/// announced as is.
#[test]
fn the_protocols_own_packet_size_limit_is_not_announced() {
    for (max, announced) in [
        (268_435_460, None),
        (268_435_456, None),
        (268_435_455, None),
        (268_435_454, Some(268_435_454)),
        (1 << 20, Some(1 << 20)),
    ] {
        let mut limits = ClientLimits::default();
        limits.packet_size_max = NonZeroU32::new(max).unwrap();
        let mut h = Harness::new(limits);
        let ack = h.connect_v5("c1");
        assert_eq!(
            connack(&ack).properties.maximum_packet_size,
            announced,
            "{max}"
        );
    }
    assert_eq!(
        ClientLimits::default().packet_size_max.get(),
        268_435_460,
        "the default is MQTT's own maximum"
    );
}

#[test]
fn v5_empty_client_id_gets_assigned_identifier() {
    let mut h = Harness::new(ClientLimits::default());
    let ack = h.connect_v5("");
    assert_eq!(
        connack(&ack)
            .properties
            .assigned_client_identifier
            .as_deref(),
        Some("assigned-1")
    );
    assert_eq!(h.conn.client_id().map(|c| &**c), Some("assigned-1"));
}

#[test]
fn v311_empty_client_id_without_clean_session_is_rejected() {
    // [MQTT-3.1.3-8]: CONNACK 0x02 (identifier rejected), then close.
    let mut h = Harness::new(ClientLimits::default());
    h.recv(Packet::Connect(Box::new(connect(
        ProtocolVersion::V311,
        "",
        false,
    ))));
    let sent = h.sent();
    assert_eq!(
        connack(&sent[0]).reason,
        ReasonCode::ClientIdentifierNotValid
    );
    assert!(h.conn.is_closed());
}

#[test]
fn first_packet_other_than_connect_closes_the_connection() {
    // [MQTT-3.1.0-1]
    let mut h = Harness::new(ClientLimits::default());
    h.recv(Packet::PingReq);
    assert!(h.conn.is_closed());
    assert!(h.sent().is_empty());
}

#[test]
fn connection_without_connect_times_out() {
    let mut h = Harness::new(ClientLimits::default());
    h.advance(Duration::from_secs(11));
    assert!(h.conn.is_closed());
}

/// A CONNECT the broker never decides (an authentication webhook that does
/// not answer) is closed at the CONNECT deadline, counted from the
/// connection's start (§3.1.4, "a reasonable amount of time"): v5 hears
/// CONNACK 0x88 Server unavailable, v3.1.1 nothing. A late answer changes
/// nothing.
#[test]
fn a_connect_never_admitted_is_closed_at_the_connect_deadline() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut h = Harness::new(ClientLimits::default());
        h.advance(Duration::from_secs(2));
        h.recv(Packet::Connect(Box::new(connect(version, "c1", true))));
        assert!(matches!(h.events().as_slice(), [Event::Connect(_)]));
        // Pipelined behind CONNECT, held until it is accepted.
        h.recv(Packet::PingReq);
        h.advance(CONNECT_TIMEOUT - Duration::from_secs(3));
        assert!(!h.conn.is_closed(), "{version:?}: not yet");
        assert!(h.sent().is_empty());
        h.advance(Duration::from_secs(1));
        assert!(h.conn.is_closed(), "{version:?}");
        let sent = h.sent();
        match version {
            ProtocolVersion::V5 => match sent.as_slice() {
                [Packet::ConnAck(a)] => {
                    assert_eq!(a.reason, ReasonCode::ServerUnavailable);
                    assert!(!a.session_present);
                }
                other => panic!("{other:?}"),
            },
            ProtocolVersion::V311 => assert!(sent.is_empty(), "{sent:?}"),
        }
        assert_eq!(h.conn.poll_timeout(), None);
        let now = h.now;
        h.conn.accept(now, None, None, Box::new(AllowAll));
        assert!(h.sent().is_empty(), "a late accept sends nothing");
        assert!(h.conn.is_closed());
        assert!(h.events().is_empty(), "no session began, none ends");
    }
}

/// What a client pipelines behind its CONNECT waits, unauthenticated, for
/// the CONNECT to be decided: at most a CONNECT's worth of bytes of it
/// (each packet alone may be that large), however slow the decision.
#[test]
fn packets_pipelined_behind_connect_are_bounded_in_bytes() {
    let big = |n: usize| {
        let mut p = publish("t", QoS::AtMostOnce, None, b"");
        p.payload = Bytes::from(vec![7u8; n]);
        Packet::Publish(p)
    };
    let mut h = Harness::new(ClientLimits::default());
    h.recv(Packet::Connect(Box::new(connect(
        ProtocolVersion::V5,
        "c1",
        true,
    ))));
    assert!(matches!(h.events().as_slice(), [Event::Connect(_)]));
    for _ in 0..3 {
        h.recv(big(20 * 1024));
        assert!(!h.conn.is_closed(), "60 KiB behind the CONNECT fit");
    }
    h.recv(big(8 * 1024));
    assert!(h.conn.is_closed(), "68 KiB do not");
    assert!(h.sent().is_empty(), "no CONNACK was decided");
    // Accepted in time, the same packets go through.
    let mut h = Harness::new(ClientLimits::default());
    h.recv(Packet::Connect(Box::new(connect(
        ProtocolVersion::V5,
        "c2",
        true,
    ))));
    h.events();
    for _ in 0..3 {
        h.recv(big(20 * 1024));
    }
    let now = h.now;
    h.conn.accept(now, None, None, Box::new(AllowAll));
    assert!(h.conn.is_connected());
    let published = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Publish { .. }))
        .count();
    assert_eq!(published, 3);
}

#[test]
fn second_connect_is_a_protocol_error() {
    // [MQTT-3.1.0-2]
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::Connect(Box::new(connect(
        ProtocolVersion::V5,
        "c1",
        true,
    ))));
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::ProtocolError)
    );
    assert!(h.conn.is_closed());
}

#[test]
fn keep_alive_closes_after_one_and_a_half_intervals_of_silence() {
    // [MQTT-3.1.2-22] (v3.1.1: [MQTT-3.1.2-24]): keep-alive 60 s allows
    // 90 s of silence.
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.advance(Duration::from_secs(80));
    assert!(h.conn.is_connected());
    h.recv(Packet::PingReq);
    assert_eq!(h.sent(), vec![Packet::PingResp]);
    h.advance(Duration::from_secs(80));
    assert!(
        h.conn.is_connected(),
        "PINGREQ restarted the keep-alive timer"
    );
    h.advance(Duration::from_secs(11));
    assert!(h.conn.is_closed());
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::KeepAliveTimeout)
    );
}

#[test]
fn v5_keep_alive_above_maximum_is_lowered_with_server_keep_alive() {
    let mut limits = ClientLimits::default();
    limits.keep_alive_max = NonZeroU16::new(30).unwrap();
    let mut h = Harness::new(limits);
    let ack = h.connect_v5("c1");
    assert_eq!(connack(&ack).properties.server_keep_alive, Some(30));
    h.advance(Duration::from_secs(46));
    assert!(h.conn.is_closed(), "1.5 x the server keep-alive applies");
}

/// A v5 keep-alive of 0 (none) is replaced by the broker's maximum through
/// Server Keep Alive, which the client must use [MQTT-3.2.2-21], and
/// enforced [MQTT-3.1.2-22]. With the default maximum too.
#[test]
fn v5_keep_alive_zero_gets_the_maximum_as_server_keep_alive_mqtt_3_2_2_21() {
    let mut limits = ClientLimits::default();
    limits.keep_alive_max = NonZeroU16::new(30).unwrap();
    let mut h = Harness::new(limits);
    let mut c = connect(ProtocolVersion::V5, "c1", true);
    c.keep_alive = 0;
    let ack = h.connect_with(c, None);
    assert_eq!(connack(&ack).properties.server_keep_alive, Some(30));
    h.advance(Duration::from_secs(44));
    assert!(h.conn.is_connected());
    h.advance(Duration::from_secs(2));
    assert!(h.conn.is_closed(), "1.5 x the server keep-alive applies");
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::KeepAliveTimeout)
    );

    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "c1", true);
    c.keep_alive = 0;
    let ack = h.connect_with(c, None);
    assert_eq!(connack(&ack).properties.server_keep_alive, Some(65_535));
}

/// v3.1.1 cannot tell a client another keep-alive: one that asked for none
/// (0) rightly sends nothing while idle, and is not cut off for it
/// ([MQTT-3.1.2-24] applies to a non-zero keep-alive only).
#[test]
fn v311_keep_alive_zero_is_not_enforced_whatever_the_maximum() {
    let mut limits = ClientLimits::default();
    limits.keep_alive_max = NonZeroU16::new(30).unwrap();
    let mut h = Harness::new(limits);
    let mut c = connect(ProtocolVersion::V311, "c1", true);
    c.keep_alive = 0;
    h.connect_with(c, None);
    h.advance(Duration::from_secs(100_000));
    assert!(h.conn.is_connected());
    assert_eq!(h.conn.poll_timeout(), None);
}

#[test]
fn session_expiry_is_capped_and_the_cap_is_returned_in_connack() {
    let mut limits = ClientLimits::default();
    limits.session_expiry_max = Duration::from_secs(100);
    let mut h = Harness::new(limits);
    let mut c = connect(ProtocolVersion::V5, "c1", true);
    c.properties.session_expiry_interval = Some(1000);
    let ack = h.connect_with(c, None);
    assert_eq!(connack(&ack).properties.session_expiry_interval, Some(100));
    assert_eq!(
        h.conn.session().unwrap().expiry_interval,
        Duration::from_secs(100)
    );
}

#[test]
fn qos1_publish_is_acknowledged_after_the_broker_routes_it() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::Publish(publish(
        "a/b",
        QoS::AtLeastOnce,
        Some(7),
        b"x",
    )));
    assert!(h.sent().is_empty(), "no PUBACK before routing");
    let ack = match h.events().pop() {
        Some(Event::Publish { message, ack }) => {
            assert_eq!(message.topic.as_str(), "a/b");
            assert_eq!(&message.origin[..], "c1");
            ack.unwrap()
        }
        other => panic!("{other:?}"),
    };
    h.conn.publish_done(ack, ReasonCode::NoMatchingSubscribers);
    assert_eq!(
        h.sent(),
        vec![Packet::PubAck(PubResponse::new(
            id(7),
            ReasonCode::NoMatchingSubscribers
        ))]
    );
}

#[test]
fn qos2_duplicate_publish_is_not_routed_twice() {
    // [MQTT-4.3.3-10]: until PUBREL, a PUBLISH with the same id is the same message.
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::Publish(publish(
        "a",
        QoS::ExactlyOnce,
        Some(3),
        b"x",
    )));
    let ack = match h.events().pop() {
        Some(Event::Publish { ack: Some(ack), .. }) => ack,
        other => panic!("{other:?}"),
    };
    h.conn.publish_done(ack, ReasonCode::Success);
    assert_eq!(
        h.sent(),
        vec![Packet::PubRec(PubResponse::new(id(3), ReasonCode::Success))]
    );

    let mut dup = publish("a", QoS::ExactlyOnce, Some(3), b"x");
    dup.dup = true;
    h.recv(Packet::Publish(dup));
    assert!(h.events().is_empty(), "duplicate must not be routed again");
    assert_eq!(
        h.sent(),
        vec![Packet::PubRec(PubResponse::new(id(3), ReasonCode::Success))]
    );

    h.recv(Packet::PubRel(PubResponse::new(id(3), ReasonCode::Success)));
    assert_eq!(
        h.sent(),
        vec![Packet::PubComp(PubResponse::new(
            id(3),
            ReasonCode::Success
        ))]
    );

    // [MQTT-4.3.3-11] after PUBCOMP the id is a new message.
    h.recv(Packet::Publish(publish(
        "a",
        QoS::ExactlyOnce,
        Some(3),
        b"y",
    )));
    assert!(matches!(h.events().as_slice(), [Event::Publish { .. }]));
}

#[test]
fn pubrel_for_unknown_id_gets_packet_identifier_not_found_in_v5() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::PubRel(PubResponse::new(id(9), ReasonCode::Success)));
    assert_eq!(
        h.sent(),
        vec![Packet::PubComp(PubResponse::new(
            id(9),
            ReasonCode::PacketIdentifierNotFound
        ))]
    );
}

#[test]
fn exceeding_the_announced_receive_maximum_disconnects() {
    // [MQTT-3.3.4-7] / v5 §4.9: 0x93 Receive Maximum exceeded.
    let mut limits = ClientLimits::default();
    limits.receive_maximum_max = NonZeroU16::new(2).unwrap();
    let mut h = Harness::new(limits);
    h.connect_v5("c1");
    for pid in 1..=2 {
        h.recv(Packet::Publish(publish(
            "a",
            QoS::AtLeastOnce,
            Some(pid),
            b"x",
        )));
    }
    assert!(h.conn.is_connected());
    h.recv(Packet::Publish(publish(
        "a",
        QoS::AtLeastOnce,
        Some(3),
        b"x",
    )));
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
}

#[test]
fn a_v311_client_is_not_held_to_a_receive_maximum_it_was_never_told() {
    // 3.1.1 has no Receive Maximum: `maxReceiveMaximum` cannot be
    // announced to its clients, so it does not cut them off (v5 ones get
    // 0x93 above).
    let mut limits = ClientLimits::default();
    limits.receive_maximum_max = NonZeroU16::new(2).unwrap();
    let mut h = Harness::new(limits);
    h.connect_with(connect(ProtocolVersion::V311, "c1", true), None);
    h.sent();
    for pid in 1..=3 {
        h.recv(Packet::Publish(publish(
            "a",
            QoS::AtLeastOnce,
            Some(pid),
            b"x",
        )));
    }
    assert!(h.conn.is_connected());
    assert_eq!(disconnect_reason(&h.sent()), None);
}

#[test]
fn outgoing_qos1_respects_the_clients_receive_maximum() {
    // [MQTT-3.3.4-9]
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", true);
    c.properties.receive_maximum = Some(2);
    h.connect_with(c, None);
    for _ in 0..3 {
        assert_eq!(
            h.deliver(
                h.now,
                &message("t", QoS::AtLeastOnce, b"m"),
                &granted(QoS::AtLeastOnce)
            ),
            Enqueued::Queued
        );
    }
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "window of 2");
    let first_id = match &sent[0] {
        Packet::Publish(p) => p.packet_id.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(!h.conn.wants_transmit());
    h.recv(Packet::PubAck(PubResponse::new(
        first_id,
        ReasonCode::Success,
    )));
    assert!(h.conn.wants_transmit());
    assert_eq!(h.sent().len(), 1);
}

#[test]
fn an_expired_qos0_front_does_not_let_a_qos1_message_past_the_window() {
    // [MQTT-3.3.4-9] with [MQTT-3.3.2-5]: the window is full and the
    // queue's front is a QoS 0 message that expires; dropping it must not
    // send the QoS 1 message behind it before an acknowledgement.
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", true);
    c.properties.receive_maximum = Some(1);
    h.connect_with(c, None);
    h.deliver(
        h.now,
        &message("t", QoS::AtLeastOnce, b"1"),
        &granted(QoS::AtLeastOnce),
    );
    let first_id = match h.sent().as_slice() {
        [Packet::Publish(p)] => p.packet_id.unwrap(),
        other => panic!("{other:?}"),
    };
    let mut short = (*message("t", QoS::AtMostOnce, b"0")).clone();
    short.expires_at = Some(h.now + Duration::from_secs(5));
    h.deliver(h.now, &Arc::new(short), &granted(QoS::AtLeastOnce));
    h.deliver(
        h.now,
        &message("t", QoS::AtLeastOnce, b"2"),
        &granted(QoS::AtLeastOnce),
    );
    h.now += Duration::from_secs(10);
    assert_eq!(h.sent(), vec![], "one in flight already");
    assert_eq!(h.conn.session().unwrap().stats.dropped_expired, 1);
    h.recv(Packet::PubAck(PubResponse::new(
        first_id,
        ReasonCode::Success,
    )));
    match h.sent().as_slice() {
        [Packet::Publish(p)] => assert_eq!(&p.payload[..], b"2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn short_acknowledgements_act_as_their_packets_do() {
    // The reader's fast path (`Decoder::decode_ack`) must not change what
    // an acknowledgement does: QoS 1 ends at PUBACK [MQTT-4.3.2-3], QoS 2
    // answers PUBREC with PUBREL [MQTT-4.3.3-4] and ends at PUBCOMP
    // [MQTT-4.3.3-5].
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("sub");
    h.deliver(
        h.now,
        &message("t", QoS::AtLeastOnce, b"1"),
        &granted(QoS::AtLeastOnce),
    );
    h.deliver(
        h.now,
        &message("t", QoS::ExactlyOnce, b"2"),
        &granted(QoS::ExactlyOnce),
    );
    let ids: Vec<PacketId> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p.packet_id.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    let ack = |kind, packet_id| ShortAck { kind, packet_id };
    h.conn.handle_short_ack(h.now, ack(AckKind::PubAck, ids[0]));
    h.conn.handle_short_ack(h.now, ack(AckKind::PubRec, ids[1]));
    assert_eq!(
        h.sent(),
        vec![Packet::PubRel(PubResponse::new(
            ids[1],
            ReasonCode::Success
        ))]
    );
    assert_eq!(h.conn.session().unwrap().inflight_len(), 1);
    h.conn
        .handle_short_ack(h.now, ack(AckKind::PubComp, ids[1]));
    assert_eq!(h.conn.session().unwrap().inflight_len(), 0);
    // Before CONNECT it is a protocol error, as the packet is [MQTT-3.1.0-1].
    let mut fresh = Harness::new(ClientLimits::default());
    fresh
        .conn
        .handle_short_ack(fresh.now, ack(AckKind::PubAck, id(1)));
    assert!(fresh.conn.is_closed());
}

#[test]
fn outgoing_qos2_runs_the_four_packet_exchange() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("sub");
    h.deliver(
        h.now,
        &message("t", QoS::ExactlyOnce, b"m"),
        &granted(QoS::ExactlyOnce),
    );
    let pid = match h.sent().as_slice() {
        [Packet::Publish(p)] => {
            assert_eq!(p.qos, QoS::ExactlyOnce);
            p.packet_id.unwrap()
        }
        other => panic!("{other:?}"),
    };
    h.recv(Packet::PubRec(PubResponse::new(pid, ReasonCode::Success)));
    assert_eq!(
        h.sent(),
        vec![Packet::PubRel(PubResponse::new(pid, ReasonCode::Success))]
    );
    assert_eq!(h.conn.session().unwrap().inflight_len(), 1);
    h.recv(Packet::PubComp(PubResponse::new(pid, ReasonCode::Success)));
    assert_eq!(h.conn.session().unwrap().inflight_len(), 0);
}

#[test]
fn delivery_qos_is_the_minimum_of_message_and_subscription() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("sub");
    h.deliver(
        h.now,
        &message("t", QoS::ExactlyOnce, b"m"),
        &granted(QoS::AtLeastOnce),
    );
    match h.sent().as_slice() {
        [Packet::Publish(p)] => assert_eq!(p.qos, QoS::AtLeastOnce),
        other => panic!("{other:?}"),
    }
}

#[test]
fn qos1_publish_is_redelivered_with_dup_after_reconnect() {
    // [MQTT-4.4.0-1]: unacknowledged PUBLISH resent with DUP, PUBREL resent.
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", false);
    c.properties.session_expiry_interval = Some(300);
    h.connect_with(c.clone(), None);
    h.deliver(
        h.now,
        &message("t", QoS::AtLeastOnce, b"one"),
        &granted(QoS::AtLeastOnce),
    );
    h.deliver(
        h.now,
        &message("t", QoS::ExactlyOnce, b"two"),
        &granted(QoS::ExactlyOnce),
    );
    let sent = h.sent();
    let ids: Vec<PacketId> = sent
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p.packet_id.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    h.recv(Packet::PubRec(PubResponse::new(
        ids[1],
        ReasonCode::Success,
    )));
    h.sent();
    h.conn.handle_connection_lost();
    let (reason, session, will) = h.closed_event();
    assert_eq!(reason, CloseReason::ConnectionLost);
    assert!(will.is_none());
    let session = session.expect("session expiry 300 keeps the session");

    let mut h2 = Harness::new(ClientLimits::default());
    let ack = h2.connect_with(c, Some(session));
    assert!(connack(&ack).session_present);
    let resent = h2.sent();
    match resent.as_slice() {
        [Packet::Publish(p), Packet::PubRel(r)] => {
            assert!(p.dup);
            assert_eq!(p.packet_id, Some(ids[0]));
            assert_eq!(&p.payload[..], b"one");
            assert_eq!(r.packet_id, ids[1]);
        }
        other => panic!("{other:?}"),
    }
}

/// What was sent, all of it QoS 1/2 PUBLISHes: their packet ids.
fn sent_publish_ids(h: &mut Harness) -> Vec<PacketId> {
    h.sent()
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p.packet_id.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn resends_after_reconnect_respect_a_smaller_receive_maximum() {
    // [MQTT-3.3.4-9], v5 §4.9: the send quota starts again at the new
    // connection's Receive Maximum. Four QoS 1 messages and a released
    // QoS 2 one were in flight under a window of 10; the client comes back
    // with 2. The PUBREL goes (its exchange counts until PUBCOMP), then one
    // PUBLISH; each acknowledgement lets the next one out, in order
    // [MQTT-4.4.0-1], and only then anything new.
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", false);
    c.properties.session_expiry_interval = Some(300);
    c.properties.receive_maximum = Some(10);
    h.connect_with(c.clone(), None);
    h.deliver(
        h.now,
        &message("t", QoS::ExactlyOnce, b"q2"),
        &granted(QoS::ExactlyOnce),
    );
    for body in [b"1", b"2", b"3", b"4"] {
        h.deliver(
            h.now,
            &message("t", QoS::AtLeastOnce, body),
            &granted(QoS::AtLeastOnce),
        );
    }
    let ids = sent_publish_ids(&mut h);
    assert_eq!(ids.len(), 5);
    h.recv(Packet::PubRec(PubResponse::new(
        ids[0],
        ReasonCode::Success,
    )));
    h.sent();
    h.conn.handle_connection_lost();
    let session = h.closed_event().1.expect("session expiry 300 keeps it");

    let mut h2 = Harness::new(ClientLimits::default());
    c.properties.receive_maximum = Some(2);
    h2.connect_with(c, Some(session));
    h2.deliver(
        h2.now,
        &message("t", QoS::AtLeastOnce, b"new"),
        &granted(QoS::AtLeastOnce),
    );
    let payload = |p: &Packet| match p {
        Packet::Publish(p) => {
            assert!(p.dup || &p.payload[..] == b"new", "{p:?}");
            String::from_utf8(p.payload.to_vec()).unwrap()
        }
        Packet::PubRel(r) => format!("rel {}", r.packet_id.get()),
        other => panic!("{other:?}"),
    };
    let got: Vec<String> = h2.sent().iter().map(payload).collect();
    assert_eq!(got, [format!("rel {}", ids[0].get()), "1".to_owned()]);
    assert!(!h2.conn.wants_transmit(), "two exchanges open, window of 2");
    // PUBCOMP frees one place, PUBACK the next.
    h2.recv(Packet::PubComp(PubResponse::new(
        ids[0],
        ReasonCode::Success,
    )));
    let got: Vec<String> = h2.sent().iter().map(payload).collect();
    assert_eq!(got, ["2"]);
    for (acked, next) in [(1, "3"), (2, "4"), (3, "new")] {
        h2.recv(Packet::PubAck(PubResponse::new(
            ids[acked],
            ReasonCode::Success,
        )));
        let got: Vec<String> = h2.sent().iter().map(payload).collect();
        assert_eq!(got, [next], "after the ack of {acked}");
    }
}

#[test]
fn a_held_resend_acknowledged_early_is_not_sent() {
    // The client had received message 2 before the connection dropped and
    // acknowledges it on the new one before its resend was due: it must
    // not be sent again, and it must not count against the window.
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", false);
    c.properties.session_expiry_interval = Some(300);
    h.connect_with(c.clone(), None);
    for body in [b"1", b"2", b"3"] {
        h.deliver(
            h.now,
            &message("t", QoS::AtLeastOnce, body),
            &granted(QoS::AtLeastOnce),
        );
    }
    let ids = sent_publish_ids(&mut h);
    h.conn.handle_connection_lost();
    let session = h.closed_event().1.expect("session expiry 300 keeps it");

    let mut h2 = Harness::new(ClientLimits::default());
    c.properties.receive_maximum = Some(1);
    h2.connect_with(c, Some(session));
    let first: Vec<Packet> = h2.sent();
    assert!(matches!(first.as_slice(), [Packet::Publish(p)] if p.packet_id == Some(ids[0])));
    h2.recv(Packet::PubAck(PubResponse::new(
        ids[1],
        ReasonCode::Success,
    )));
    assert_eq!(h2.sent(), vec![], "1 is still open");
    h2.recv(Packet::PubAck(PubResponse::new(
        ids[0],
        ReasonCode::Success,
    )));
    match h2.sent().as_slice() {
        [Packet::Publish(p)] => {
            assert_eq!(p.packet_id, Some(ids[2]));
            assert_eq!(&p.payload[..], b"3");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn clean_start_discards_the_existing_session() {
    let mut h = Harness::new(ClientLimits::default());
    let mut old = SessionState::new("c1".into(), Duration::from_secs(60));
    let mut buffer = ShardBuffer::memory_only();
    old.enqueue(
        h.now,
        &message("t", QoS::AtLeastOnce, b"old"),
        &granted(QoS::AtLeastOnce),
        false,
        &QueueLimit::default(),
        &mut buffer.lease(1),
    );
    let ack = h.connect_with(connect(ProtocolVersion::V5, "c1", true), Some(old));
    assert!(!connack(&ack).session_present);
    assert!(h.sent().is_empty());
}

#[test]
fn offline_session_queues_qos1_and_drops_qos0() {
    let now = Instant::now();
    let mut s = SessionState::new("c1".into(), Duration::from_secs(60));
    let mut buffer = ShardBuffer::memory_only();
    let limit = QueueLimit::default();
    assert_eq!(
        s.enqueue(
            now,
            &message("t", QoS::AtMostOnce, b"0"),
            &granted(QoS::AtMostOnce),
            false,
            &limit,
            &mut buffer.lease(1)
        ),
        Enqueued::Discarded
    );
    assert_eq!(
        s.enqueue(
            now,
            &message("t", QoS::AtLeastOnce, b"1"),
            &granted(QoS::AtLeastOnce),
            false,
            &limit,
            &mut buffer.lease(1)
        ),
        Enqueued::Queued
    );
    assert_eq!(s.queued_len(), 1);
}

#[test]
fn queue_limit_drop_oldest_keeps_the_newest_messages() {
    let now = Instant::now();
    let mut s = SessionState::new("c1".into(), Duration::from_secs(60));
    let mut buffer = ShardBuffer::memory_only();
    let limit = QueueLimit {
        length_max: NonZeroU32::new(2),
        strategy: QueueFullStrategy::DropOldest,
        ..QueueLimit::default()
    };
    for p in [b"1", b"2", b"3"] {
        s.enqueue(
            now,
            &message("t", QoS::AtLeastOnce, p),
            &granted(QoS::AtLeastOnce),
            false,
            &limit,
            &mut buffer.lease(1),
        );
    }
    assert_eq!(s.queued_len(), 2);
    assert_eq!(s.stats.dropped_queue_full, 1);
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "c1", false);
    c.properties.session_expiry_interval = Some(60);
    h.connect_with(c, Some(s));
    let payloads: Vec<Bytes> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p.payload,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"2"), Bytes::from_static(b"3")]
    );
}

#[test]
fn queue_without_a_buffer_is_bounded_in_bytes_as_well_as_messages() {
    // A subscriber that never read, fed 30,000 QoS 0 messages of 64 KiB,
    // took the broker to 3.26 GB: the bound was 100,000 messages, whatever
    // their size. Now `bytes_max` bounds the bytes too.
    let now = Instant::now();
    let small = message("t", QoS::AtLeastOnce, &[1; 100]);
    let cost = memory_cost(&small);
    let mut s = SessionState::new("c1".into(), Duration::from_secs(60));
    let mut buffer = ShardBuffer::memory_only();
    let none = QueueLimit {
        bytes_max: 3 * cost,
        ..QueueLimit::default()
    };
    let mut offer = |s: &mut SessionState, m: &SharedMessage, l: &QueueLimit| {
        s.enqueue(
            now,
            m,
            &granted(QoS::AtLeastOnce),
            false,
            l,
            &mut buffer.lease(1),
        )
    };
    for _ in 0..3 {
        assert_eq!(offer(&mut s, &small, &none), Enqueued::Queued);
    }
    assert_eq!(offer(&mut s, &small, &none), Enqueued::RejectedQueueFull);
    assert_eq!(s.memory_bytes(), 3 * cost);
    // DropOldest drops as many as the new message needs room for.
    let oldest = QueueLimit {
        strategy: QueueFullStrategy::DropOldest,
        ..none
    };
    let bigger = message("t", QoS::AtLeastOnce, &[2; 700]);
    assert_eq!(offer(&mut s, &bigger, &oldest), Enqueued::DroppedOldest);
    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.stats.dropped_queue_full, 4);
    // One that could never fit is refused without dropping anything.
    let huge = message("t", QoS::AtLeastOnce, &[3; 1000]);
    assert_eq!(offer(&mut s, &huge, &oldest), Enqueued::RejectedQueueFull);
    assert_eq!(s.queued_len(), 1);
}

#[test]
fn queue_limit_none_rejects_new_messages() {
    let now = Instant::now();
    let mut s = SessionState::new("c1".into(), Duration::from_secs(60));
    let mut buffer = ShardBuffer::memory_only();
    let limit = QueueLimit {
        length_max: NonZeroU32::new(1),
        strategy: QueueFullStrategy::None,
        ..QueueLimit::default()
    };
    let m = message("t", QoS::AtLeastOnce, b"m");
    let d = granted(QoS::AtLeastOnce);
    let mut offer = || s.enqueue(now, &m, &d, false, &limit, &mut buffer.lease(1));
    assert_eq!(offer(), Enqueued::Queued);
    assert_eq!(offer(), Enqueued::RejectedQueueFull);
}

#[test]
fn subscribe_returns_granted_qos_and_raises_index_events() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut props = Properties::default();
    props.subscription_identifiers = vec![42];
    let opts = |qos| SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: props.into(),
        filters: vec![
            ("a/+".into(), opts(QoS::AtLeastOnce)),
            ("$share/g/x".into(), opts(QoS::ExactlyOnce)),
        ],
    }));
    match h.sent().as_slice() {
        [Packet::SubAck(s)] => assert_eq!(
            s.reasons,
            vec![ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS2]
        ),
        other => panic!("{other:?}"),
    }
    let events = h.events();
    assert_eq!(events.len(), 2);
    match &events[0] {
        Event::Subscribed {
            subscription,
            send_retained,
            ..
        } => {
            assert_eq!(subscription.id.map(SubscriptionId::get), Some(42));
            assert!(*send_retained);
        }
        other => panic!("{other:?}"),
    }
    match &events[1] {
        Event::Subscribed {
            subscription,
            send_retained,
            ..
        } => {
            assert!(matches!(subscription.filter, Filter::Shared { .. }));
            assert!(
                !*send_retained,
                "shared subscriptions get no retained messages"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A subscription kept its filter as a slice of the SUBSCRIBE, so one
/// short filter in a large packet kept the whole frame alive for as long
/// as it was subscribed, uncounted by the 1 MiB filter quota.
#[test]
fn a_subscription_keeps_a_copy_of_its_filter_not_the_subscribes_frame() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut bytes = b"a/+$share/g/x".to_vec();
    bytes.resize(1 << 20, b'x');
    let frame = Bytes::from(bytes);
    let slice = |r: std::ops::Range<usize>| ByteString::try_from(frame.slice(r)).unwrap();
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: Props::default(),
        filters: vec![
            (slice(0..3), SubscriptionOptions::default()),
            (slice(3..13), SubscriptionOptions::default()),
        ],
    }));
    assert!(matches!(h.sent().as_slice(), [Packet::SubAck(_)]));
    assert_eq!(h.events().len(), 2);
    let mut kept: Vec<&str> = h
        .conn
        .session()
        .unwrap()
        .subscriptions()
        .map(|(k, _)| &**k)
        .collect();
    kept.sort();
    assert_eq!(kept, ["$share/g/x", "a/+"]);
    assert!(frame.is_unique(), "the session still holds the frame");
}

/// A SUBSCRIBE's user properties reach the broker once, whatever its
/// filter count: a copy per filter let one packet of many filters and
/// many user properties multiply them into gigabytes.
#[test]
fn a_subscribes_user_properties_are_handed_over_once_not_per_filter() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut props = Properties::default();
    props.user_properties = vec![("k".into(), "v".into()), ("k2".into(), "v2".into())];
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: props.into(),
        filters: ["a", "b", "c"]
            .into_iter()
            .map(|f| (f.into(), SubscriptionOptions::default()))
            .collect(),
    }));
    h.sent();
    let carried: Vec<usize> = h
        .events()
        .iter()
        .map(|e| match e {
            Event::Subscribed {
                user_properties, ..
            } => user_properties.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(carried, [2, 0, 0]);
}

/// [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1], [MQTT-4.8.2-1],
/// [MQTT-4.8.2-2]: a filter that breaks the syntax makes the SUBSCRIBE (or
/// UNSUBSCRIBE) a Malformed Packet: DISCONNECT 0x81 and close (§4.13), with
/// nothing of the packet applied; 0x8F Topic Filter invalid is for a
/// well-formed filter the server does not allow.
#[test]
fn a_malformed_topic_filter_closes_the_connection_and_applies_nothing() {
    for bad in [
        "a/#/b",
        "a/b+",
        "",
        "$share//x",
        "$share/g",
        "$share/g+/x",
        "+/#/x",
    ] {
        for unsubscribe in [false, true] {
            let mut h = Harness::new(ClientLimits::default());
            h.connect_v5("c1");
            let filters = vec!["ok/1".into(), bad.into()];
            h.recv(if unsubscribe {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: id(1),
                    properties: Props::default(),
                    filters,
                })
            } else {
                Packet::Subscribe(Subscribe {
                    packet_id: id(1),
                    properties: Props::default(),
                    filters: filters
                        .into_iter()
                        .map(|f| (f, SubscriptionOptions::default()))
                        .collect(),
                })
            });
            match h.sent().as_slice() {
                [Packet::Disconnect(d)] => {
                    assert_eq!(d.reason, ReasonCode::MalformedPacket, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            assert!(h.conn.is_closed(), "{bad:?}");
            assert!(
                !h.events()
                    .iter()
                    .any(|e| matches!(e, Event::Subscribed { .. } | Event::Unsubscribed { .. })),
                "{bad:?}: nothing of the packet applies"
            );
        }
    }
}

/// [MQTT-3.3.4-6]: a PUBLISH from a client must not carry a Subscription
/// Identifier; it is a Protocol Error (DISCONNECT 0x82), not routed.
#[test]
fn a_subscription_identifier_in_a_client_publish_is_a_protocol_error() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut properties = Properties::default();
    properties.subscription_identifiers = vec![7];
    h.recv(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(id(1)),
        properties: properties.into(),
        payload: Bytes::from_static(b"x"),
    }));
    match h.sent().as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::ProtocolError),
        other => panic!("{other:?}"),
    }
    assert!(!h
        .events()
        .iter()
        .any(|e| matches!(e, Event::Publish { .. })));
    assert!(matches!(
        h.conn.close_reason(),
        Some(CloseReason::Violation(
            Violation::SubscriptionIdentifierFromClient
        ))
    ));
}

#[test]
fn retain_handling_one_sends_retained_only_for_new_subscriptions() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
        ..SubscriptionOptions::default()
    };
    for expect in [true, false] {
        h.recv(Packet::Subscribe(Subscribe {
            packet_id: id(1),
            properties: Props::default(),
            filters: vec![("a".into(), opts)],
        }));
        h.sent();
        match h.events().as_slice() {
            [Event::Subscribed { send_retained, .. }] => assert_eq!(*send_retained, expect),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // [MQTT-3.8.3-4]
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: Props::default(),
        filters: vec![(
            "$share/g/a".into(),
            SubscriptionOptions {
                no_local: true,
                ..SubscriptionOptions::default()
            },
        )],
    }));
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::ProtocolError)
    );
}

#[test]
fn unsubscribe_reports_missing_subscriptions() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: Props::default(),
        filters: vec![("a".into(), SubscriptionOptions::default())],
    }));
    h.sent();
    h.events();
    h.recv(Packet::Unsubscribe(Unsubscribe {
        packet_id: id(2),
        properties: Props::default(),
        filters: vec!["a".into(), "b".into()],
    }));
    match h.sent().as_slice() {
        [Packet::UnsubAck(u)] => {
            assert_eq!(
                u.reasons,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.events().as_slice(),
        [Event::Unsubscribed { .. }]
    ));
}

#[test]
fn inbound_topic_alias_is_recorded_and_resolved() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut first = publish("long/topic/name", QoS::AtMostOnce, None, b"1");
    first.properties.topic_alias = Some(1);
    h.recv(Packet::Publish(first));
    let mut second = publish("", QoS::AtMostOnce, None, b"2");
    second.properties.topic_alias = Some(1);
    h.recv(Packet::Publish(second));
    let topics: Vec<String> = h
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Publish { message, .. } => message.topic.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, vec!["long/topic/name", "long/topic/name"]);
}

#[test]
fn unknown_topic_alias_with_empty_topic_is_a_protocol_error() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut p = publish("", QoS::AtMostOnce, None, b"1");
    p.properties.topic_alias = Some(5);
    h.recv(Packet::Publish(p));
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::ProtocolError)
    );
}

#[test]
fn topic_alias_above_broker_maximum_is_invalid() {
    // [MQTT-3.3.2-10]: 0x94 Topic Alias invalid.
    let mut limits = ClientLimits::default();
    limits.topic_alias_max = 2;
    let mut h = Harness::new(limits);
    h.connect_v5("c1");
    let mut p = publish("a", QoS::AtMostOnce, None, b"1");
    p.properties.topic_alias = Some(3);
    h.recv(Packet::Publish(p));
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::TopicAliasInvalid)
    );
}

#[test]
fn outbound_topic_aliases_stay_within_the_clients_maximum() {
    // [MQTT-3.3.2-9]
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", true);
    c.properties.topic_alias_maximum = Some(1);
    h.connect_with(c, None);
    for t in ["a", "a", "b"] {
        h.deliver(
            h.now,
            &message(t, QoS::AtMostOnce, b"m"),
            &granted(QoS::AtMostOnce),
        );
    }
    let sent: Vec<(String, Option<u16>)> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            ("a".into(), Some(1)),
            ("".into(), Some(1)),
            ("b".into(), None)
        ]
    );
}

/// A frame of `len` bytes starting with `topic`, and a topic that is a
/// slice of it, as the codec makes them.
fn frame_with_topic(topic: &str, len: usize) -> (Bytes, ByteString) {
    let mut bytes = topic.as_bytes().to_vec();
    bytes.resize(len, b'x');
    let frame = Bytes::from(bytes);
    let topic = ByteString::try_from(frame.slice(..topic.len())).unwrap();
    (frame, topic)
}

/// A client-to-broker alias kept a slice of the PUBLISH that set it, so
/// the connection held the whole frame (1 MiB here, up to the packet size
/// limit) for a topic of a few bytes, per alias.
#[test]
fn an_inbound_topic_alias_keeps_a_copy_not_the_publishs_frame() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let (frame, topic) = frame_with_topic("t/alias", 1 << 20);
    let mut first = publish("", QoS::AtMostOnce, None, b"");
    first.topic = topic;
    first.payload = frame.slice(7..);
    first.properties.topic_alias = Some(1);
    h.recv(Packet::Publish(first));
    let mut second = publish("", QoS::AtMostOnce, None, b"2");
    second.properties.topic_alias = Some(1);
    h.recv(Packet::Publish(second));
    let topics: Vec<String> = h
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Publish { message, .. } => message.topic.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["t/alias", "t/alias"]);
    assert!(frame.is_unique(), "the connection still holds the frame");
}

/// 65,535 aliases of 64 KiB topics held 4 GiB per connection: the topic
/// names of a connection's aliases are bounded in bytes; past the bound
/// the client is told 0x97 Quota exceeded (the mapping cannot be refused
/// alone: its next alias-only PUBLISH would mean another topic).
#[test]
fn inbound_topic_aliases_are_bounded_in_bytes() {
    let mut limits = ClientLimits::default();
    limits.topic_alias_bytes_max = NonZeroU32::new(10).unwrap();
    let mut h = Harness::new(limits);
    h.connect_v5("c1");
    let send = |h: &mut Harness, topic: &str, alias: u16| {
        let mut p = publish(topic, QoS::AtMostOnce, None, b"1");
        p.properties.topic_alias = Some(alias);
        h.recv(Packet::Publish(p));
    };
    send(&mut h, "abcdef", 1);
    send(&mut h, "abc", 1); // replaces alias 1's 6 bytes
    send(&mut h, "abc", 1); // the same mapping again
    send(&mut h, "ghijklm", 2); // 3 + 7 = 10
    assert!(h.sent().is_empty());
    assert!(!h.conn.is_closed());
    send(&mut h, "x", 3);
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::QuotaExceeded)
    );
    assert!(h.conn.is_closed());
}

/// A broker-to-client alias kept the delivered message's topic, a slice
/// of its publisher's frame: up to the client's Topic Alias Maximum
/// frames stayed alive as long as the subscriber's connection. The
/// aliases keep copies, and new ones stop at the byte bound (a topic may
/// always be sent without one).
#[test]
fn outbound_topic_aliases_keep_copies_and_stop_at_the_byte_bound() {
    let mut limits = ClientLimits::default();
    limits.topic_alias_bytes_max = NonZeroU32::new(8).unwrap();
    let mut h = Harness::new(limits);
    let mut c = connect(ProtocolVersion::V5, "sub", true);
    c.properties.topic_alias_maximum = Some(10);
    h.connect_with(c, None);
    let (frame, topic) = frame_with_topic("t/alias", 64 << 10);
    let m = Arc::new(Message {
        topic: TopicName::new(topic).unwrap(),
        payload: frame.slice(7..),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("publisher"),
        retain_stamp: 0,
    });
    for m in [m, message("t/2", QoS::AtMostOnce, b"m")] {
        h.deliver(h.now, &m, &granted(QoS::AtMostOnce));
    }
    let sent: Vec<(String, Option<u16>)> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    // 7 bytes of aliased topics; 3 more would pass 8.
    assert_eq!(sent, [("t/alias".into(), Some(1)), ("t/2".into(), None)]);
    assert!(frame.is_unique(), "the connection still holds the frame");
}

#[test]
fn expired_messages_are_not_delivered_and_remaining_expiry_is_sent() {
    // [MQTT-3.3.2-5], [MQTT-3.3.2-6]
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("sub");
    let mk = |secs| {
        let mut m = (*message("t", QoS::AtLeastOnce, b"m")).clone();
        m.expires_at = Some(h.now + Duration::from_secs(secs));
        Arc::new(m)
    };
    let short = mk(5);
    let long = mk(100);
    h.deliver(h.now, &short, &granted(QoS::AtLeastOnce));
    h.deliver(h.now, &long, &granted(QoS::AtLeastOnce));
    h.now += Duration::from_secs(10);
    match h.sent().as_slice() {
        [Packet::Publish(p)] => assert_eq!(p.properties.message_expiry_interval, Some(90)),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.conn.session().unwrap().stats.dropped_expired, 1);
}

/// What outlives the CONNECT (the client id, in the session, the registry
/// and every message's origin; the authentication method; the will) was
/// slices of its frame, which stayed alive with them: 64 KiB of password
/// or token per session, and per retained will after the session ended.
#[test]
fn what_outlives_the_connect_does_not_keep_its_frame() {
    let mut bytes = b"c1AUTHw/tpayloadctkvpass".to_vec();
    bytes.resize(60 << 10, b'x');
    let frame = Bytes::from(bytes);
    let slice = |r: std::ops::Range<usize>| ByteString::try_from(frame.slice(r)).unwrap();
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "", true);
    c.client_id = slice(0..2);
    c.properties.authentication_method = Some(slice(2..6));
    c.username = Some(slice(20..21));
    c.password = Some(frame.slice(20..));
    let mut wp = Properties::default();
    wp.content_type = Some(slice(16..17));
    wp.user_properties = vec![(slice(17..18), slice(18..19))];
    wp.correlation_data = Some(frame.slice(19..20));
    c.will = Some(Will {
        topic: slice(6..9),
        payload: frame.slice(9..16),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: wp.into(),
    });
    h.connect_with(c, None);
    assert_eq!(h.conn.client_id().map(|c| &**c), Some("c1"));
    h.conn.handle_connection_lost();
    let (_, _, will) = h.closed_event();
    let will = will.expect("abnormal close publishes the will");
    assert_eq!(will.message.topic.as_str(), "w/t");
    assert_eq!(&will.message.payload[..], b"payload");
    assert_eq!(&will.message.origin, "c1");
    assert_eq!(will.message.properties.user_properties.len(), 1);
    assert!(
        frame.is_unique(),
        "the connection or its will holds the frame"
    );
}

#[test]
fn will_is_published_after_abnormal_close_with_its_delay() {
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "c1", true);
    let mut wp = Properties::default();
    wp.will_delay_interval = Some(5);
    c.will = Some(Will {
        topic: "status/c1".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: wp.into(),
    });
    h.connect_with(c, None);
    h.conn.handle_connection_lost();
    let (_, session, will) = h.closed_event();
    assert!(session.is_none(), "session expiry 0 ends the session");
    let will = will.expect("abnormal close publishes the will");
    assert_eq!(will.delay, Duration::from_secs(5));
    assert_eq!(will.message.topic.as_str(), "status/c1");
    assert!(will.message.retain);
}

/// A will topic must be a topic name: not empty [MQTT-4.7.3-1], no
/// wildcards ([MQTT-4.7.0-1], 3.1.1: [MQTT-4.7.1-1]). v5 refuses it with
/// CONNACK 0x90 Topic Name invalid; v3.1.1 has no return code for it, so
/// the connection closes without CONNACK [MQTT-4.8.0-1] (0x03 Server
/// unavailable would make clients retry).
#[test]
fn an_invalid_will_topic_is_refused_in_v5_and_closes_a_v311_connection_mqtt_4_8_0_1() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for topic in ["", "a/#", "+", "a/+/b"] {
            let mut h = Harness::new(ClientLimits::default());
            let mut c = connect(version, "c1", true);
            c.will = Some(Will {
                topic: topic.into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Props::default(),
            });
            h.recv(Packet::Connect(Box::new(c)));
            let sent = h.sent();
            match version {
                ProtocolVersion::V311 => assert!(sent.is_empty(), "{topic:?}: {sent:?}"),
                ProtocolVersion::V5 => match sent.as_slice() {
                    [Packet::ConnAck(a)] => {
                        assert_eq!(a.reason, ReasonCode::TopicNameInvalid, "{topic:?}")
                    }
                    other => panic!("{topic:?}: {other:?}"),
                },
            }
            assert!(h.conn.is_closed(), "{version:?} {topic:?}");
            assert!(
                !h.events().iter().any(|e| matches!(e, Event::Connect(_))),
                "the broker is not asked to admit it"
            );
        }
    }
}

#[test]
fn normal_disconnect_discards_the_will_and_0x04_keeps_it() {
    // [MQTT-3.14.4-3]
    for (reason, expect_will) in [
        (ReasonCode::NORMAL_DISCONNECTION, false),
        (ReasonCode::DisconnectWithWillMessage, true),
    ] {
        let mut h = Harness::new(ClientLimits::default());
        let mut c = connect(ProtocolVersion::V5, "c1", true);
        c.will = Some(Will {
            topic: "w".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Props::default(),
        });
        h.connect_with(c, None);
        h.recv(Packet::Disconnect(Disconnect::new(reason)));
        let (close, _, will) = h.closed_event();
        assert_eq!(close, CloseReason::ClientDisconnect(reason));
        assert_eq!(will.is_some(), expect_will);
    }
}

#[test]
fn disconnect_cannot_raise_session_expiry_from_zero() {
    // v5 §3.14.2.2.2: a Protocol Error (the rule has no number).
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(10);
    h.recv(Packet::Disconnect(d));
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::ProtocolError)
    );
}

/// A re-authentication the authenticator refuses closes the connection
/// with a DISCONNECT reason code [MQTT-3.14.2-1]: a refusal only CONNACK
/// can carry (§3.2.2.2, not in §3.14.2.1) becomes 0x87 Not authorized.
#[test]
fn a_refused_reauthentication_disconnects_with_a_disconnect_reason_mqtt_3_14_2_1() {
    use ReasonCode::*;
    for (refusal, sent) in [
        (BadUserNameOrPassword, NotAuthorized),
        (ServerUnavailable, NotAuthorized),
        (Banned, NotAuthorized),
        (UnsupportedProtocolVersion, NotAuthorized),
        (ClientIdentifierNotValid, NotAuthorized),
        (NotAuthorized, NotAuthorized),
        (BadAuthenticationMethod, BadAuthenticationMethod),
    ] {
        let mut h = Harness::new(ClientLimits::default());
        let mut c = connect(ProtocolVersion::V5, "c1", true);
        c.properties.authentication_method = Some("TOKEN".into());
        h.connect_with(c, None);
        h.recv(Packet::Auth(shardmq_core::codec::Auth {
            reason: ReAuthenticate,
            properties: Properties {
                authentication_method: Some("TOKEN".into()),
                authentication_data: Some(Bytes::from_static(b"renewed")),
                ..Properties::default()
            }
            .into(),
        }));
        let events = h.events();
        assert!(
            matches!(events.as_slice(), [Event::ReAuthenticate { .. }]),
            "{events:?}"
        );
        h.conn.reauthenticate_done(Err(refusal));
        assert_eq!(disconnect_reason(&h.sent()), Some(sent), "{refusal:?}");
        assert!(h.conn.is_closed());
    }
}

/// [MQTT-3.1.4-3]: DISCONNECT 0x8E, and the session goes to the new
/// connection (which decides on clean start), unless it ends with this
/// one: expiry 0 (v5 §3.1.2.11.2, 3.1.1 Clean Session [MQTT-3.1.2-6]).
#[test]
fn takeover_closes_with_session_taken_over_and_hands_out_a_session_that_outlives_it() {
    for (version, clean, expiry, handed) in [
        (ProtocolVersion::V5, true, Some(60), true),
        (ProtocolVersion::V5, false, None, false),
        (ProtocolVersion::V5, true, Some(0), false),
        (ProtocolVersion::V311, false, None, true),
        (ProtocolVersion::V311, true, None, false),
    ] {
        let mut h = Harness::new(ClientLimits::default());
        let mut c = connect(version, "c1", clean);
        c.properties.session_expiry_interval = expiry;
        h.connect_with(c, None);
        h.conn.take_over();
        let sent = disconnect_reason(&h.sent());
        match version {
            ProtocolVersion::V5 => assert_eq!(sent, Some(ReasonCode::SessionTakenOver)),
            ProtocolVersion::V311 => assert_eq!(sent, None, "v3.1.1 has no server DISCONNECT"),
        }
        let (_, session, _) = h.closed_event();
        let case = format!("{version:?} clean {clean} expiry {expiry:?}");
        assert_eq!(session.is_some(), handed, "{case}");
        assert_eq!(h.conn.take_ended_session().is_some(), !handed, "{case}");
    }
}

/// SUBSCRIBE `filters` (default options) under packet id `pid`; the
/// SUBACK's reasons.
fn subscribe_reasons(h: &mut Harness, pid: u16, filters: &[&str]) -> Vec<ReasonCode> {
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(pid),
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|f| ((*f).into(), SubscriptionOptions::default()))
            .collect(),
    }));
    match h.sent().as_slice() {
        [Packet::SubAck(s)] => s.reasons.clone(),
        other => panic!("{other:?}"),
    }
}

/// A session's subscriptions are bounded in count and in bytes of filters:
/// a filter past either gets Quota exceeded (0x97), a resubscription of one
/// it has replaces it as always [MQTT-3.8.4-3].
#[test]
fn subscriptions_are_bounded_in_count_and_in_bytes() {
    let limits = ClientLimits {
        subscriptions_per_session_max: NonZeroU32::new(3).unwrap(),
        subscription_bytes_per_session_max: NonZeroU32::new(20).unwrap(),
        ..ClientLimits::default()
    };
    let mut h = Harness::new(limits);
    h.connect_v5("c1");
    let ok = ReasonCode::Success;
    let quota = ReasonCode::QuotaExceeded;
    // 9 + 9 bytes, then 4 more would pass 20.
    assert_eq!(
        subscribe_reasons(&mut h, 1, &["a/aaaaaaa", "b/bbbbbbb", "c/cc"]),
        [ok, ok, quota]
    );
    // A resubscription adds nothing; one more byte fits (19).
    assert_eq!(subscribe_reasons(&mut h, 2, &["a/aaaaaaa", "d"]), [ok, ok]);
    // Three subscriptions: the count is the bound now.
    assert_eq!(subscribe_reasons(&mut h, 3, &["e"]), [quota]);
}

/// A filter repeated in one SUBSCRIBE was applied once per copy: an index
/// change broadcast to every shard and a retained query each, outside the
/// subscription quotas (a repeat finds the subscription existing). Now it
/// is applied once, as its copies in turn would leave it (the last
/// options win, [MQTT-3.8.4-3]; retained messages if any copy asked for
/// them), and every entry is answered in order [MQTT-3.8.4-6].
#[test]
fn a_filter_repeated_in_one_subscribe_is_applied_once_and_every_entry_answered() {
    let limits = ClientLimits {
        subscriptions_per_session_max: NonZeroU32::new(2).unwrap(),
        ..ClientLimits::default()
    };
    let mut h = Harness::new(limits);
    h.connect_v5("c1");
    let opts = |qos, retain_handling| SubscriptionOptions {
        qos,
        retain_handling,
        ..SubscriptionOptions::default()
    };
    use RetainHandling::{DoNotSend, SendAtSubscribeIfNew};
    let qos0 = opts(QoS::AtMostOnce, DoNotSend);
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: Props::default(),
        filters: vec![
            ("a".into(), opts(QoS::AtLeastOnce, SendAtSubscribeIfNew)),
            ("b".into(), qos0),
            ("a".into(), opts(QoS::ExactlyOnce, DoNotSend)),
            ("c".into(), qos0),
            ("a".into(), qos0),
            ("c".into(), qos0),
        ],
    }));
    let quota = ReasonCode::QuotaExceeded;
    match h.sent().as_slice() {
        [Packet::SubAck(s)] => assert_eq!(
            s.reasons,
            [
                ReasonCode::GrantedQoS1,
                ReasonCode::Success,
                ReasonCode::GrantedQoS2,
                quota,
                ReasonCode::Success,
                quota
            ]
        ),
        other => panic!("{other:?}"),
    }
    let applied: Vec<(String, QoS, bool)> = h
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Subscribed {
                key,
                subscription,
                send_retained,
                ..
            } => (key.to_string(), subscription.options.qos, send_retained),
            other => panic!("{other:?}"),
        })
        .collect();
    // "a" once, with its last options, and its retained messages (its
    // first copy asked for them and the subscription was new).
    assert_eq!(
        applied,
        [
            ("a".into(), QoS::AtMostOnce, true),
            ("b".into(), QoS::AtMostOnce, false)
        ]
    );
    let session = h.conn.session().unwrap();
    assert_eq!(session.subscriptions().count(), 2);
}

/// A filter's levels are nodes of the index on every shard: a 65,535-byte
/// filter of "+/" made 32,768 of them. Past TOPIC_LEVELS_MAX levels (of
/// the topic filter, a share name aside) a filter is refused with 0x8F
/// Topic Filter invalid, 0x80 in 3.1.1.
#[test]
fn a_filter_past_the_level_limit_is_refused_with_topic_filter_invalid() {
    let at_limit = vec!["+"; TOPIC_LEVELS_MAX].join("/");
    let past = format!("{at_limit}/#");
    let shared = format!("$share/g/{at_limit}");
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut h = Harness::new(ClientLimits::default());
        h.connect_with(connect(version, "c1", true), None);
        h.recv(Packet::Subscribe(Subscribe {
            packet_id: id(1),
            properties: Props::default(),
            filters: [&at_limit, &past, &shared]
                .into_iter()
                .map(|f| (f.as_str().into(), SubscriptionOptions::default()))
                .collect(),
        }));
        let refused = match version {
            ProtocolVersion::V5 => ReasonCode::TopicFilterInvalid,
            ProtocolVersion::V311 => ReasonCode::UnspecifiedError,
        };
        match h.sent().as_slice() {
            [Packet::SubAck(s)] => assert_eq!(
                s.reasons,
                [ReasonCode::Success, refused, ReasonCode::Success],
                "{version:?}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.events().len(), 2);
    }
}

/// The per-filter bound alone let 8,000 filters of 128 levels fit the
/// byte quota: a million index nodes on every shard for one session. The
/// levels of a session's filters together are a quota too (0x97).
#[test]
fn a_sessions_filters_are_bounded_in_levels_together() {
    let limits = ClientLimits {
        subscription_levels_per_session_max: NonZeroU32::new(10).unwrap(),
        ..ClientLimits::default()
    };
    let mut h = Harness::new(limits);
    h.connect_v5("c1");
    let ok = ReasonCode::Success;
    let quota = ReasonCode::QuotaExceeded;
    // 4 + 3 levels, then 4 more would pass 10.
    assert_eq!(
        subscribe_reasons(&mut h, 1, &["a/b/c/d", "e/f/+", "h/i/j/#"]),
        [ok, ok, quota]
    );
    // A resubscription adds nothing; 3 more levels fit (10).
    assert_eq!(
        subscribe_reasons(&mut h, 2, &["a/b/c/d", "$share/g/h/i/j"]),
        [ok, ok]
    );
    assert_eq!(subscribe_reasons(&mut h, 3, &["k"]), [quota]);
}

/// A connection taken over while its acknowledgements were held for a
/// session write that came back stale: the held packets never leave, the
/// DISCONNECT 0x8E does [MQTT-3.1.4-3]; unless its CONNACK was among the
/// held ones, since the first packet a server sends is CONNACK
/// [MQTT-3.2.0-1]: then it closes without a word.
#[test]
fn a_superseded_connection_keeps_only_its_disconnect_unless_connack_was_held() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(1),
        properties: Default::default(),
        filters: vec![("a/b".into(), SubscriptionOptions::default())],
    }));
    h.conn.take_over();
    h.conn.discard_all_but_disconnect();
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(disconnect_reason(&sent), Some(ReasonCode::SessionTakenOver));

    // CONNACK still queued (held): nothing at all.
    let mut h = Harness::new(ClientLimits::default());
    h.recv(Packet::Connect(Box::new(connect(
        ProtocolVersion::V5,
        "c2",
        true,
    ))));
    h.events();
    h.conn.accept(h.now, None, None, Box::new(AllowAll));
    h.conn.take_over();
    h.conn.discard_all_but_disconnect();
    assert!(h.sent().is_empty());
}

#[test]
fn shutdown_sends_server_shutting_down() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("c1");
    h.conn.shut_down();
    assert_eq!(
        disconnect_reason(&h.sent()),
        Some(ReasonCode::ServerShuttingDown)
    );
}

#[derive(Debug)]
struct OnlyOwnTopic;
impl Permissions for OnlyOwnTopic {
    fn can_publish(&self, topic: &TopicName) -> bool {
        topic.as_str().starts_with("own/")
    }
    fn can_subscribe(&self, _: &Filter) -> bool {
        false
    }
}

#[test]
fn unauthorized_publish_is_refused_with_0x87_in_v5() {
    let mut h = Harness::new(ClientLimits::default());
    h.recv(Packet::Connect(Box::new(connect(
        ProtocolVersion::V5,
        "c1",
        true,
    ))));
    h.events();
    h.conn.accept(h.now, None, None, Box::new(OnlyOwnTopic));
    h.sent();
    h.recv(Packet::Publish(publish(
        "other/x",
        QoS::AtLeastOnce,
        Some(1),
        b"x",
    )));
    // Not routed; the broker hears of it only for its log.
    match h.events().as_slice() {
        [Event::Denied(Denied::Publish(topic))] => assert_eq!(topic.as_str(), "other/x"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.sent(),
        vec![Packet::PubAck(PubResponse::new(
            id(1),
            ReasonCode::NotAuthorized
        ))]
    );
    h.recv(Packet::Subscribe(Subscribe {
        packet_id: id(2),
        properties: Props::default(),
        filters: vec![("x".into(), SubscriptionOptions::default())],
    }));
    match h.sent().as_slice() {
        [Packet::SubAck(s)] => assert_eq!(s.reasons, vec![ReasonCode::NotAuthorized]),
        other => panic!("{other:?}"),
    }
    match h.events().as_slice() {
        [Event::Denied(Denied::Subscribe(filter))] => assert_eq!(filter, "x"),
        other => panic!("{other:?}"),
    }
    // An allowed publish raises only its Publish event.
    h.recv(Packet::Publish(publish(
        "own/x",
        QoS::AtMostOnce,
        None,
        b"x",
    )));
    assert!(matches!(h.events().as_slice(), [Event::Publish { .. }]));
}

#[test]
fn publish_larger_than_clients_maximum_packet_size_is_dropped_and_counted() {
    // [MQTT-3.1.2-25]
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", true);
    c.properties.maximum_packet_size = Some(64);
    h.connect_with(c, None);
    static BIG: [u8; 200] = [0u8; 200];
    h.deliver(
        h.now,
        &message("t", QoS::AtLeastOnce, &BIG),
        &granted(QoS::AtLeastOnce),
    );
    h.deliver(
        h.now,
        &message("t", QoS::AtLeastOnce, b"small"),
        &granted(QoS::AtLeastOnce),
    );
    let mut buf = BytesMut::new();
    let n = h
        .conn
        .poll_transmit(h.now, &mut buf, 1 << 16, &mut h.buffer.lease(1));
    assert_eq!(n, 1);
    let s = h.conn.session().unwrap();
    assert_eq!(s.stats.dropped_too_large, 1);
    assert_eq!(s.inflight_len(), 1, "the dropped message left the window");
}

#[test]
fn a_topic_alias_is_not_taken_by_a_publish_dropped_as_too_large() {
    // [MQTT-3.1.2-25] the too-large PUBLISH is never sent, so the client
    // never learns the alias it would have set up; the next message on the
    // same topic must carry the topic again [MQTT-3.3.2-12].
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", true);
    c.properties.maximum_packet_size = Some(64);
    c.properties.topic_alias_maximum = Some(4);
    h.connect_with(c, None);
    static BIG: [u8; 200] = [0u8; 200];
    for payload in [&BIG[..], b"small", b"again"] {
        h.deliver(
            h.now,
            &message("t", QoS::AtMostOnce, payload),
            &granted(QoS::AtMostOnce),
        );
    }
    let sent: Vec<(String, Option<u16>)> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, vec![("t".into(), Some(1)), ("".into(), Some(1))]);
    assert_eq!(h.conn.session().unwrap().stats.dropped_too_large, 1);
}

#[test]
fn retained_delivery_sets_retain_and_normal_forwarding_clears_it() {
    // [MQTT-3.3.1-8], [MQTT-3.3.1-9]
    let mut h = Harness::new(ClientLimits::default());
    h.connect_v5("sub");
    let mut m = (*message("t", QoS::AtMostOnce, b"m")).clone();
    m.retain = true;
    let m = Arc::new(m);
    h.deliver(h.now, &m, &granted(QoS::AtMostOnce));
    h.deliver(
        h.now,
        &m,
        &Delivery {
            from_retained: true,
            ..Delivery::default()
        },
    );
    h.deliver(
        h.now,
        &m,
        &Delivery {
            retain_as_published: true,
            ..Delivery::default()
        },
    );
    let flags: Vec<bool> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p.retain,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(flags, vec![false, true, true]);
}

#[test]
fn v311_session_is_kept_only_without_clean_session() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_with(connect(ProtocolVersion::V311, "c1", false), None);
    h.conn.handle_connection_lost();
    assert!(h.closed_event().1.is_some());
    let mut h = Harness::new(ClientLimits::default());
    h.connect_with(connect(ProtocolVersion::V311, "c1", true), None);
    h.conn.handle_connection_lost();
    assert!(h.closed_event().1.is_none());
}

#[test]
fn v311_acknowledgements_carry_no_reason() {
    let mut h = Harness::new(ClientLimits::default());
    h.connect_with(connect(ProtocolVersion::V311, "c1", true), None);
    h.recv(Packet::Publish(publish(
        "a",
        QoS::AtLeastOnce,
        Some(1),
        b"x",
    )));
    let ack = match h.events().pop() {
        Some(Event::Publish { ack: Some(a), .. }) => a,
        other => panic!("{other:?}"),
    };
    h.conn.publish_done(ack, ReasonCode::NoMatchingSubscribers);
    assert_eq!(
        h.sent(),
        vec![Packet::PubAck(PubResponse::new(id(1), ReasonCode::Success))]
    );
}

#[test]
fn message_delivered_after_close_but_before_the_broker_detaches_is_kept() {
    // The broker may deliver between the close and its handling of
    // Event::Closed: a QoS 1 message then must stay in the session.
    let mut h = Harness::new(ClientLimits::default());
    let mut c = connect(ProtocolVersion::V5, "sub", false);
    c.properties.session_expiry_interval = Some(60);
    h.connect_with(c, None);
    h.recv(Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    assert_eq!(
        h.deliver(
            h.now,
            &message("t", QoS::AtLeastOnce, b"late"),
            &granted(QoS::AtLeastOnce)
        ),
        Enqueued::Queued
    );
    let (_, session, _) = h.closed_event();
    assert_eq!(session.unwrap().queued_len(), 1);
}
