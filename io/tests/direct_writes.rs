//! Writes from the turn that produced them (`conn::write_now`): for input
//! that had to wait for its socket, while a connection's writer task is
//! idle, the shard's output goes to the socket at once, and what the socket
//! does not take is finished by the writer task, in order. Also the gate
//! that leaves writes to the writer task while other tasks are ready
//! (vendor/glommio/PATCHED.md change 14). Over plain TCP and over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use shardmq_auth::test_pki::Pki;
use shardmq_core::codec::{Packet, PacketId, Props, Publish, QoS, ReasonCode};

use common::raw::{small_buffer_socket, Raw};
use common::{Broker, RawClient};

// Each message fits one read (16 KiB), so the read that completes it is
// the one that waited for it; together more than a socket's send buffer.
const MESSAGES: usize = 600;
const PAYLOAD: usize = 15 * 1024;

/// A payload no other message has: its index in every byte's pattern.
fn payload(i: usize) -> Vec<u8> {
    (0..PAYLOAD)
        .map(|b| ((b * 31 + i * 7) % 251) as u8)
        .collect()
}

/// A subscriber whose socket takes 4 KiB at a time and which reads
/// nothing until the publishing is over: each message arrives alone (the
/// publisher waits for its PUBACK), in a read that waited, and while the
/// writer task is idle is written at once; once the broker's send buffer is
/// full one is taken in part. The rest must follow from the writer task,
/// before the next message's bytes.
#[test]
fn a_message_the_socket_takes_in_part_arrives_whole_and_in_order() {
    let broker = Broker::start();
    let port = broker.port("s0");
    let mut sub = Raw::stuck_subscriber(port, "slow-reader", "big/#", QoS::AtLeastOnce);
    let accepted = publish_until_refused(port);
    expect_in_order(&mut sub, &accepted);
}

/// The same over TLS: there a direct write hands the bytes to the TLS
/// session, which seals them whole and keeps the records the socket does
/// not take; `write_now` then leaves the flush to the writer task. Nothing
/// may be lost, doubled or reordered in between.
#[test]
fn over_tls_a_message_the_socket_takes_in_part_arrives_whole_and_in_order() {
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1"]);
    let crt = pki.write("server.crt", &server.bundle_pem);
    let key = pki.write("server.key", &server.key_pem);
    let config = serde_json::json!({"listeners": [
        {"name": "plain", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]},
        {"name": "tls", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
            "tls": {"mode": "Manual", "manual": {
                "certFile": crt.display().to_string(),
                "keyFile": key.display().to_string()}}}]}]});
    let path = pki.write("broker.json", &config.to_string());
    let (_broker, ports) = common::start(&path, 2);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.server_root.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let session =
        rustls::ClientConnection::new(Arc::new(tls), "127.0.0.1".try_into().unwrap()).unwrap();
    let stream = rustls::StreamOwned::new(session, small_buffer_socket(ports[1]));
    let mut sub = Raw::over(stream, "tls-slow-reader").subscribed("big/#", QoS::AtLeastOnce);

    let accepted = publish_until_refused(ports[0]);
    expect_in_order(&mut sub, &accepted);
}

/// Publishes up to `MESSAGES` big QoS 1 messages one at a time, each after
/// the last one's PUBACK, stopping at the first the broker refuses because
/// the stuck subscriber's share of its memory is used up (v5 PUBACK 0x97:
/// not delivered; the in-process broker's 16 MiB budget refuses some, the
/// binary's default takes all). Returns the accepted ones' indexes.
fn publish_until_refused(port: u16) -> Vec<usize> {
    let (mut publisher, _) = RawClient::connect_v5(port, "big-publisher", None);
    let mut accepted = Vec::new();
    for i in 0..MESSAGES {
        publisher.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("big/{i}").as_str().into(),
            packet_id: PacketId::new(i as u16 + 1),
            properties: Props::default(),
            payload: Bytes::from(payload(i)),
        }));
        match publisher.recv() {
            Some(Packet::PubAck(a)) if a.reason == ReasonCode::Success => accepted.push(i),
            Some(Packet::PubAck(a)) if a.reason == ReasonCode::QuotaExceeded => break,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    eprintln!("{} of {MESSAGES} messages accepted", accepted.len());
    // More than the socket's send buffer can hold (4 MiB at most by
    // default, net.ipv4.tcp_wmem), so some write was taken in part.
    assert!(
        accepted.len() * PAYLOAD > 4 << 20,
        "only {} accepted",
        accepted.len()
    );
    accepted
}

/// Every accepted message, whole and in publishing order.
fn expect_in_order<S: Read + Write>(sub: &mut Raw<S>, accepted: &[usize]) {
    for &i in accepted {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(
                    &*p.topic,
                    format!("big/{i}").as_str(),
                    "message {i} out of order"
                );
                assert!(
                    p.payload[..] == payload(i)[..],
                    "message {i}'s bytes differ"
                );
            }
            other => panic!("expected PUBLISH {i}, got {other:?}"),
        }
    }
}

/// The gate: a task alone on its executor sees no other task ready; one
/// that has just woken another does, until that one ran.
#[test]
fn tasks_ready_tells_whether_another_task_waits_to_run() {
    assert!(!glommio::executor().tasks_ready(), "outside an executor");
    let seen = glommio::LocalExecutorBuilder::default()
        .spawn(|| async move {
            let (tx, rx) = glommio::channels::local_channel::new_bounded::<()>(1);
            // Runs at once, up to its wait.
            let other = glommio::spawn_local(async move { rx.recv().await });
            let alone = glommio::executor().tasks_ready();
            tx.try_send(()).unwrap();
            let with_one_queued = glommio::executor().tasks_ready();
            other.await;
            let after = glommio::executor().tasks_ready();
            (alone, with_one_queued, after)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(seen, (false, true, false));
}

/// A burst from many publishers at once, as a gateway sampling many tags
/// per cycle sends it: the shard reads every ready socket in one turn, and
/// every 16 deliveries gathered for the subscriber are written at once
/// from that turn (`Output::Flush`), the rest by its writer task. Every
/// message arrives once, each publisher's in order [MQTT-4.6.0-6].
#[test]
fn a_burst_from_many_publishers_arrives_whole_and_in_each_publishers_order() {
    const PUBLISHERS: usize = 40;
    const ROUNDS: usize = 20;
    let broker = Broker::start();
    let port = broker.port("s0");
    let (mut sub, _) = RawClient::connect_v5(port, "burst-sink", None);
    sub.subscribe("burst/#", QoS::AtMostOnce);
    let mut pubs: Vec<RawClient> = (0..PUBLISHERS)
        .map(|p| RawClient::connect_v5(port, &format!("tag-{p}"), None).0)
        .collect();
    let reader = std::thread::spawn(move || {
        let mut next = vec![0usize; PUBLISHERS];
        for _ in 0..PUBLISHERS * ROUNDS {
            match sub.recv() {
                Some(Packet::Publish(p)) => {
                    let who: usize = p.topic.rsplit('/').next().unwrap().parse().unwrap();
                    let round = usize::from(p.payload[0]);
                    assert_eq!(round, next[who], "publisher {who}'s messages out of order");
                    assert!(p.payload[1..].iter().all(|b| *b == who as u8));
                    next[who] += 1;
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        next
    });
    for round in 0..ROUNDS {
        for (p, publisher) in pubs.iter_mut().enumerate() {
            let mut body = vec![p as u8; 2048];
            body[0] = round as u8;
            publisher.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: format!("burst/{p}").as_str().into(),
                packet_id: None,
                properties: Props::default(),
                payload: Bytes::from(body),
            }));
        }
        // Let the burst go out before the next (a cycle, not a flood).
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(reader.join().unwrap(), vec![ROUNDS; PUBLISHERS]);
}
