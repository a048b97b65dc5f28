//! Writes from the turn that produced them (`conn::write_now`): for input
//! that had to wait for its socket, while a connection's writer task is
//! idle, the shard's output goes to the socket at once, and what the socket
//! does not take is finished by the writer task, in order. Also the gate
//! that leaves writes to the writer task while other tasks are ready
//! (vendor/glommio/PATCHED.md change 14).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use shardmq_core::codec::{Packet, PacketId, Props, Publish, QoS, ReasonCode};

use common::raw::Raw;
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

    // Until the subscriber's share of the broker's memory is used up: the
    // messages it refuses (v5 PUBACK 0x97) are not delivered.
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

    for i in accepted {
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
