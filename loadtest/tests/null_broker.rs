//! The null broker (`null-broker`) carries the harness's fan-in and fan-out
//! scenarios at QoS 0 and 1, in both protocol versions, with every count
//! adding up: a reference that lost or doubled messages would measure
//! nothing. It refuses what it does not implement instead of answering it
//! wrongly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::num::NonZeroU32;

use common::{quick, target};
use shardmq_core::codec::{ProtocolVersion, QoS};
use shardmq_loadtest::{run, RunSpec, Scenario};

/// A null broker on its own thread, on a free loopback port.
fn null_broker() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || shardmq_loadtest::null_broker::serve(listener));
    addr
}

#[tokio::test]
async fn fan_in_qos1_v5_every_message_is_acked_and_received_once() {
    let addr = null_broker();
    let spec = RunSpec {
        publishers: 5,
        rate_per_s: NonZeroU32::new(200),
        ..quick(Scenario::FanIn)
    };
    let r = run(&spec, &target(addr)).await.unwrap();
    assert!(r.ok(), "{}", r.to_table());
    assert!(r.sent > 0);
    assert_eq!((r.acked, r.received), (r.sent, r.sent));
    assert_eq!((r.lost, r.duplicated, r.out_of_order), (0, 0, 0));
}

#[tokio::test]
async fn fan_out_qos0_v311_each_subscriber_gets_every_message() {
    let addr = null_broker();
    let spec = RunSpec {
        subscribers: 4,
        qos: QoS::AtMostOnce,
        version: ProtocolVersion::V311,
        rate_per_s: NonZeroU32::new(500),
        ..quick(Scenario::FanOut)
    };
    let r = run(&spec, &target(addr)).await.unwrap();
    assert!(r.ok(), "{}", r.to_table());
    assert!(r.sent > 0);
    assert_eq!(r.received, 4 * r.sent);
    assert_eq!((r.lost, r.duplicated), (0, 0));
}

/// QoS 2 is not implemented: the connection is closed, not half-answered.
#[test]
fn a_qos2_publish_closes_the_connection() {
    let addr = null_broker();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // CONNECT v3.1.1, clean session, keep-alive 60, client id "q2".
    s.write_all(&[
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'q', b'2',
    ])
    .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // PUBLISH QoS 2, topic "t", packet id 1, payload "x".
    s.write_all(&[0x34, 6, 0, 1, b't', 0, 1, b'x']).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "answered {rest:?}");
}
