//! MQTT rules whose effect shows only through the whole broker: the shards
//! under the deterministic simulator (`sim/harness.rs`), clients speaking
//! MQTT 5 or 3.1.1 through the real codec. Each test names its rule and
//! runs a few seeds (`SHARDMQ_SIM_SEED=N` replays one), so the order of
//! mesh messages, authentication answers and writer turns varies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "sim/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{seeds, Sim};
use shardmq_core::codec::{Connect, Properties, ProtocolVersion, QoS, ReasonCode, Will};
use shardmq_core::limits::ClientLimits;

/// A v5 CONNECT (clean start, keep-alive 60) with the raw property block
/// `props` (its length byte first) and client id `id`.
fn raw_v5_connect(props: &[u8], id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60];
    body.extend_from_slice(props);
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut frame = vec![0x10, u8::try_from(body.len()).unwrap()];
    frame.extend_from_slice(&body);
    frame
}

/// v5 §3.1.2.11.10: "It is a Protocol Error to include Authentication Data
/// if there is no Authentication Method": CONNACK 0x82 and the connection
/// closes; with the method, the same data is accepted.
#[test]
fn authentication_data_without_a_method_is_a_protocol_error_v5_3_1_2_11_10() {
    for seed in seeds(10) {
        let mut sim = Sim::new(seed, 2, ClientLimits::default(), 100);
        let c = sim.add_client("auth-data", "p");
        sim.open(c, 0, ProtocolVersion::V5);
        // Authentication Data (0x16) "x" alone.
        sim.send_raw(c, &raw_v5_connect(&[4, 0x16, 0, 1, b'x'], "auth-data"));
        sim.quiesce();
        assert_eq!(
            sim.clients[c].seen.connacks,
            [(false, ReasonCode::ProtocolError)]
        );
        assert!(!sim.clients[c].connected(), "the broker closed it");

        // With Authentication Method (0x15) "M" the CONNECT is decided by
        // authentication, which the simulator grants.
        let d = sim.add_client("auth-method", "p");
        sim.open(d, 1, ProtocolVersion::V5);
        let props = [8, 0x15, 0, 1, b'M', 0x16, 0, 1, b'x'];
        sim.send_raw(d, &raw_v5_connect(&props, "auth-method"));
        sim.quiesce();
        assert_eq!(sim.clients[d].seen.connacks, [(false, ReasonCode::Success)]);
    }
}

/// An authentication that never answers does not hold the connection: the
/// CONNECT deadline (`CONNECT_TIMEOUT` from the connection's start) closes
/// it with CONNACK 0x88 (v5), and the answer arriving later leaves no
/// session behind; the client connects again normally.
#[test]
fn a_connect_whose_authentication_never_answers_is_closed_at_the_deadline() {
    use shardmq_core::session::CONNECT_TIMEOUT;
    for seed in seeds(10) {
        let mut sim = Sim::new(seed, 2, ClientLimits::default(), 100);
        let c = sim.add_client("stalled", "p");
        sim.hold_auth = true;
        sim.connect(c, 0, true, 0);
        sim.quiesce();
        let held = sim.take_auth_jobs();
        assert_eq!(held.len(), 1);
        sim.advance(CONNECT_TIMEOUT + Duration::from_millis(100));
        sim.quiesce();
        assert_eq!(
            sim.clients[c].seen.connacks,
            [(false, ReasonCode::ServerUnavailable)]
        );
        assert!(!sim.clients[c].connected(), "the broker closed it");
        // The authentication answers at last.
        for (shard, conn) in held {
            sim.admit(shard, conn, Ok(1));
        }
        sim.quiesce();
        for shard in &sim.shards {
            let inv = shard.inventory();
            assert!(inv.online.is_empty() && inv.offline.is_empty(), "{inv:?}");
        }
        sim.hold_auth = false;
        sim.connect(c, 1, true, 0);
        sim.quiesce();
        assert_eq!(
            sim.clients[c].seen.connacks.last(),
            Some(&(false, ReasonCode::Success))
        );
    }
}

/// A v5 CONNECT for client `c` (its id filled in by `connect_with`) with a
/// will on `topic`: Message Expiry Interval `expiry_s`, Will Delay
/// Interval `delay_s`, and the session kept `session_s` seconds.
fn connect_with_will(topic: &str, expiry_s: u32, delay_s: u32, session_s: u32) -> Connect {
    let will_props = Properties {
        message_expiry_interval: Some(expiry_s),
        will_delay_interval: Some(delay_s),
        ..Properties::default()
    };
    let props = Properties {
        session_expiry_interval: Some(session_s),
        ..Properties::default()
    };
    Connect {
        protocol_version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: props.into(),
        client_id: "".into(),
        will: Some(Will {
            topic: topic.into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: will_props.into(),
        }),
        username: None,
        password: None,
    }
}

/// The will's Message Expiry Interval "is sent as the Publication Expiry
/// Interval when the Server publishes the Will Message" (v5 §3.1.3.2.4):
/// it starts at publication, not at CONNECT. A client connected for 20 s
/// with a 10 s will expiry still has its will delivered, carrying 10 s;
/// so does a will published after its delay.
#[test]
fn a_wills_message_expiry_starts_when_it_is_published_v5_3_1_3_2_4() {
    for seed in seeds(10) {
        let mut sim = Sim::new(seed, 2, ClientLimits::default(), 100);
        let watcher = sim.add_client("watcher", "p");
        let at_once = sim.add_client("at-once", "p");
        let delayed = sim.add_client("delayed", "p");
        sim.connect(watcher, 0, true, 0);
        sim.quiesce();
        sim.subscribe(watcher, "status/#", QoS::AtLeastOnce);
        sim.connect_with(at_once, 1, connect_with_will("status/at-once", 10, 0, 0));
        sim.connect_with(delayed, 0, connect_with_will("status/delayed", 10, 5, 60));
        sim.quiesce();

        sim.advance(Duration::from_secs(20));
        sim.drop_conn(at_once);
        sim.quiesce();
        let seen = &sim.clients[watcher].seen;
        assert_eq!(seen.publishes.len(), 1, "{:?}", seen.publishes);
        assert_eq!(seen.publishes[0].0, "status/at-once");
        assert_eq!(seen.expiries[0], Some(10));

        sim.drop_conn(delayed);
        sim.quiesce();
        sim.advance(Duration::from_secs(5));
        sim.quiesce();
        let seen = &sim.clients[watcher].seen;
        assert_eq!(seen.publishes.len(), 2, "{:?}", seen.publishes);
        assert_eq!(seen.publishes[1].0, "status/delayed");
        assert_eq!(seen.expiries[1], Some(10));
        assert!(sim.clients[watcher].connected());
    }
}

/// A CONNECT whose session ends with its connection (expiry 0) and whose
/// will, on "status/twin", has a 30 s delay (v5 only).
fn ephemeral_with_will(version: ProtocolVersion) -> Connect {
    let v5 = version == ProtocolVersion::V5;
    let will_props = Properties {
        will_delay_interval: v5.then_some(30),
        ..Properties::default()
    };
    Connect {
        protocol_version: version,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default().into(),
        client_id: "".into(),
        will: Some(Will {
            topic: "status/twin".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: will_props.into(),
        }),
        username: None,
        password: None,
    }
}

/// A CONNECT that asks to resume its session (Clean Session / Clean Start
/// 0; v5 keeping the session 100 s).
fn resuming(version: ProtocolVersion) -> Connect {
    let props = Properties {
        session_expiry_interval: (version == ProtocolVersion::V5).then_some(100),
        ..Properties::default()
    };
    Connect {
        protocol_version: version,
        clean_start: false,
        keep_alive: 60,
        properties: props.into(),
        client_id: "".into(),
        will: None,
        username: None,
        password: None,
    }
}

/// A session whose expiry is 0 ends when its network connection closes, a
/// takeover's too: a v3.1.1 Clean Session one "MUST NOT be reused in any
/// subsequent Session" [MQTT-3.1.2-6], a v5 one ends with the connection
/// (§3.1.2.11.2). A CONNECT taking it over while it is connected, asking
/// to resume, gets Session Present 0 and none of its subscriptions; the
/// old connection's will is published at once (the session's end cuts its
/// delay short, §3.1.3.2.2). On the same shard and across shards.
#[test]
fn a_session_with_expiry_zero_is_not_handed_over_on_takeover_mqtt_3_1_2_6() {
    for seed in seeds(10) {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for (old_shard, new_shard) in [(0, 0), (0, 1)] {
                let case = format!("seed {seed} {version:?} shard {old_shard} -> {new_shard}");
                let mut sim = Sim::new(seed, 2, ClientLimits::default(), 100);
                let watcher = sim.add_client("watcher", "p");
                let publisher = sim.add_client("publisher", "p");
                let old = sim.add_client("twin", "p");
                let new = sim.add_client("twin", "p");
                sim.connect(watcher, 1, true, 0);
                sim.connect(publisher, 1, true, 0);
                sim.quiesce();
                sim.subscribe(watcher, "status/#", QoS::AtLeastOnce);
                sim.connect_with(old, old_shard, ephemeral_with_will(version));
                sim.quiesce();
                sim.subscribe(old, "a/#", QoS::AtLeastOnce);
                sim.quiesce();
                assert_eq!(sim.clients[old].seen.subacks, 1, "{case}");

                sim.connect_with(new, new_shard, resuming(version));
                sim.quiesce();
                assert_eq!(
                    sim.clients[new].seen.connacks,
                    [(false, ReasonCode::Success)],
                    "{case}: Session Present 0"
                );
                assert!(!sim.clients[old].connected(), "{case}");
                let taken_over = match version {
                    ProtocolVersion::V5 => vec![ReasonCode::SessionTakenOver],
                    ProtocolVersion::V311 => Vec::new(),
                };
                assert_eq!(sim.clients[old].seen.disconnects, taken_over, "{case}");
                let wills: Vec<&str> = sim.clients[watcher]
                    .seen
                    .publishes
                    .iter()
                    .map(|p| p.0.as_str())
                    .collect();
                assert_eq!(wills, ["status/twin"], "{case}: the will, at once");

                // The new session has none of the old one's subscriptions.
                sim.publish(
                    publisher,
                    "a/1",
                    QoS::AtLeastOnce,
                    false,
                    Bytes::from_static(b"x"),
                );
                sim.quiesce();
                assert!(sim.clients[new].seen.publishes.is_empty(), "{case}");
                assert!(sim.clients[new].connected(), "{case}");
            }
        }
    }
}
