//! The broker end to end with rumqttc (MQTT 5 and 3.1.1), on 127.0.0.1 with
//! 2 shards. Clients are put on chosen shards through the per-shard ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::{q5, Broker, Client, Ev};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, LastWill};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_subscriber_on_the_other_shard_at_every_qos() {
    let broker = Broker::start();
    let (mut sub, _) = Client::connect(broker.port("s0"), "sub", |_| {}).await;
    sub.subscribe("plant/+/temp", q5(2)).await;
    let (publ, _) = Client::connect(broker.port("s1"), "pub", |_| {}).await;
    for qos in 0..=2u8 {
        publ.publish(&format!("plant/{qos}/temp"), q5(qos), false, &[qos])
            .await;
    }
    let mut got = sub.publishes(3).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("plant/0/temp".into(), vec![0], 0, false),
            ("plant/1/temp".into(), vec![1], 1, false),
            ("plant/2/temp".into(), vec![2], 2, false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_per_spec_and_dollar_topics_are_not_matched_by_hash() {
    // [MQTT-4.7.2-1]: '#' does not match topics starting with '$'.
    let broker = Broker::start();
    let (mut all, _) = Client::connect(broker.port("s0"), "all", |_| {}).await;
    all.subscribe("#", q5(1)).await;
    let (mut sys, _) = Client::connect(broker.port("s1"), "sys", |_| {}).await;
    sys.subscribe("$app/#", q5(1)).await;
    let (publ, _) = Client::connect(broker.port("s1"), "pub", |_| {}).await;
    publ.publish("$app/x", q5(1), false, b"dollar").await;
    publ.publish("a/b", q5(1), false, b"plain").await;
    assert_eq!(sys.publishes(1).await[0].0, "$app/x");
    // "a/b" was published after "$app/x" on one connection: once it arrives,
    // "$app/x" would have arrived first had '#' matched it.
    let got = all.publishes(1).await;
    assert_eq!(got[0].0, "a/b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_sent_to_a_later_subscriber_on_another_shard() {
    // [MQTT-3.3.1-6] / [MQTT-3.3.1-8]
    let broker = Broker::start();
    let (publ, _) = Client::connect(broker.port("s1"), "pub", |_| {}).await;
    publ.publish("cfg/line1", q5(1), true, b"v1").await;
    publ.publish("cfg/line2", q5(1), true, b"v2").await;
    // Clearing with an empty payload [MQTT-3.3.1-10].
    publ.publish("cfg/line2", q5(1), true, b"").await;
    let mut publ = publ;
    for _ in 0..3 {
        publ.next_matching(|e| matches!(e, Ev::PubAck(_))).await;
    }
    let (mut sub, _) = Client::connect(broker.port("s0"), "sub", |_| {}).await;
    sub.subscribe("cfg/#", q5(1)).await;
    let got = sub.publishes(1).await;
    assert_eq!(got[0], ("cfg/line1".into(), b"v1".to_vec(), 1, true));
    // A live publish after the retained one is forwarded with RETAIN 0 [MQTT-3.3.1-9].
    publ.publish("cfg/line1", q5(1), true, b"v3").await;
    let got = sub.publishes(1).await;
    assert_eq!(got[0], ("cfg/line1".into(), b"v3".to_vec(), 1, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_a_client_dies_on_another_shard() {
    let broker = Broker::start();
    let (mut watcher, _) = Client::connect(broker.port("s0"), "watcher", |_| {}).await;
    watcher.subscribe("status/#", q5(1)).await;
    let (dying, _) = Client::connect(broker.port("s1"), "dying", |o| {
        o.set_last_will(LastWill::new("status/dying", "offline", q5(1), false, None));
    })
    .await;
    dying.kill();
    let got = watcher.publishes(1).await;
    assert_eq!(got[0].0, "status/dying");
    assert_eq!(got[0].1, b"offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_disconnect_does_not_publish_the_will() {
    // [MQTT-3.1.2-10]
    let broker = Broker::start();
    let (mut watcher, _) = Client::connect(broker.port("s0"), "watcher", |_| {}).await;
    watcher.subscribe("status/#", q5(1)).await;
    let (polite, _) = Client::connect(broker.port("s1"), "polite", |o| {
        o.set_last_will(LastWill::new(
            "status/polite",
            "offline",
            q5(1),
            false,
            None,
        ));
    })
    .await;
    polite.disconnect().await;
    let (publ, _) = Client::connect(broker.port("s1"), "pub", |_| {}).await;
    publ.publish("status/marker", q5(1), false, b"m").await;
    let got = watcher.publishes(1).await;
    assert_eq!(got[0].0, "status/marker", "the will would have come first");
}

fn persistent(o: &mut rumqttc::v5::MqttOptions) {
    o.set_clean_start(false);
    let mut p = ConnectProperties::new();
    p.session_expiry_interval = Some(300);
    o.set_connect_properties(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_resumes_on_another_shard_with_queued_messages() {
    let broker = Broker::start();
    let (mut sub, present) = Client::connect(broker.port("s0"), "durable", persistent).await;
    assert!(!present);
    sub.subscribe("jobs/#", q5(1)).await;
    sub.disconnect().await;

    let (mut publ, _) = Client::connect(broker.port("s1"), "pub", |_| {}).await;
    for i in 0..20u8 {
        publ.publish("jobs/x", q5(1), false, &[i]).await;
    }
    for _ in 0..20 {
        publ.next_matching(|e| matches!(e, Ev::PubAck(_))).await;
    }
    // Reconnect on the other shard: the offline session moves over.
    let (mut sub, present) = Client::connect(broker.port("s1"), "durable", persistent).await;
    assert!(present, "session present [MQTT-3.2.2-2]");
    let got = sub.publishes(20).await;
    let payloads: Vec<u8> = got.iter().map(|g| g.1[0]).collect();
    assert_eq!(
        payloads,
        (0..20).collect::<Vec<u8>>(),
        "all queued, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_with_same_id_takes_the_session_over_across_shards() {
    // [MQTT-3.1.4-3]: the old connection gets DISCONNECT 0x8E and is closed.
    use shardmq_core::codec::{Packet, QoS, ReasonCode};
    let broker = Broker::start();
    let port0 = broker.port("s0");
    let (mut first, ack) = tokio::task::spawn_blocking(move || {
        common::RawClient::connect_v5(port0, "twin", Some(300))
    })
    .await
    .unwrap();
    assert!(!ack.session_present);
    let first = tokio::task::spawn_blocking(move || {
        first.subscribe("t/#", QoS::AtMostOnce);
        first
    })
    .await
    .unwrap();
    let (mut second, present) = Client::connect(broker.port("s1"), "twin", persistent).await;
    assert!(present, "the session moved from shard 0");
    let (reason, closed) = tokio::task::spawn_blocking(move || {
        let mut first = first;
        let reason = match first.recv() {
            Some(Packet::Disconnect(d)) => d.reason,
            other => panic!("expected DISCONNECT, got {other:?}"),
        };
        (reason, first.recv().is_none())
    })
    .await
    .unwrap();
    assert_eq!(reason, ReasonCode::SessionTakenOver);
    assert!(closed);
    // The subscription moved with the session.
    let (publ, _) = Client::connect(broker.port("s0"), "pub", |_| {}).await;
    publ.publish("t/1", q5(1), false, b"after").await;
    assert_eq!(second.publishes(1).await[0].1, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_one_member_across_shards() {
    let broker = Broker::start();
    let (mut a, _) = Client::connect(broker.port("s0"), "member-a", |_| {}).await;
    a.subscribe("$share/workers/jobs/#", q5(1)).await;
    let (mut b, _) = Client::connect(broker.port("s1"), "member-b", |_| {}).await;
    b.subscribe("$share/workers/jobs/#", q5(1)).await;
    let (publ, _) = Client::connect(broker.port("s0"), "pub", |_| {}).await;
    let n = 20u8;
    for i in 0..n {
        publ.publish("jobs/1", q5(1), false, &[i]).await;
    }
    // Round-robin: each member gets half.
    let mut got: Vec<u8> = a.publishes(10).await.into_iter().map(|p| p.1[0]).collect();
    got.extend(b.publishes(10).await.into_iter().map(|p| p.1[0]));
    got.sort();
    assert_eq!(
        got,
        (0..n).collect::<Vec<u8>>(),
        "each message exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_only_that_connection() {
    let broker = Broker::start();
    let (mut sub, _) = Client::connect(broker.port("s0"), "sub", |_| {}).await;
    sub.subscribe("ok/#", q5(1)).await;
    let port = broker.port("s0");
    let garbage = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        // Reserved packet type 0 as the first byte: malformed.
        s.write_all(&[0x00, 0x02, 0xff, 0xff]).unwrap();
        let mut buf = [0u8; 16];
        common::read_some(&mut s, &mut buf).unwrap_or(0)
    })
    .await
    .unwrap();
    assert_eq!(garbage, 0, "the broker closed the garbage connection");
    let (publ, _) = Client::connect(broker.port("s0"), "pub", |_| {}).await;
    publ.publish("ok/1", q5(1), false, b"still fine").await;
    assert_eq!(sub.publishes(1).await[0].1, b"still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packet_is_refused_from_its_header() {
    // A 200 MB remaining length with a 1 KiB limit: refused before the body.
    let limits = shardmq_core::limits::ClientLimits {
        packet_size_max: std::num::NonZeroU32::new(1024).unwrap(),
        ..Default::default()
    };
    let broker = Broker::start_with(limits);
    let port = broker.port("any");
    let n = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        // CONNECT header claiming 200,000,000 bytes.
        s.write_all(&[0x10, 0x80, 0x84, 0xaf, 0x5f]).unwrap();
        let mut buf = [0u8; 64];
        let mut total = 0;
        loop {
            match common::read_some(&mut s, &mut buf[total..]) {
                Ok(0) | Err(_) => return total,
                Ok(k) => total += k,
            }
        }
    })
    .await
    .unwrap();
    assert!(n <= 64, "connection closed without reading the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_clients_interoperate_with_v5_clients() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = Broker::start();
    let mut opts = MqttOptions::new("v4-sub", "127.0.0.1", broker.port("s1"));
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client.subscribe("mixed/#", QoS::ExactlyOnce).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => tx.send(None).unwrap(),
                Event::Incoming(Packet::Publish(p)) => {
                    tx.send(Some((p.topic, p.payload.to_vec(), p.qos))).unwrap()
                }
                _ => {}
            }
        }
    });
    assert_eq!(
        tokio::time::timeout(common::WAIT, rx.recv()).await.unwrap(),
        Some(None)
    );
    let (publ, _) = Client::connect(broker.port("s0"), "v5-pub", |_| {}).await;
    publ.publish("mixed/a", q5(2), false, b"both").await;
    let got = tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        ("mixed/a".to_string(), b"both".to_vec(), QoS::ExactlyOnce)
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_test_probes_pass_through_every_shard() {
    let broker = Broker::start();
    // Probes run every 200 ms here and wait up to 2 s for answers.
    let deadline = std::time::Instant::now() + common::WAIT;
    while broker.probes_ok() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no successful self-test round"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_test_rounds_end_when_every_shard_answered_within_the_timeout() {
    // A round waits at most `diagnostics.selfCheck.timeoutSeconds` and ends
    // once every shard answered: 40 rounds every 20 ms fit well within the
    // wait bound. With the old fixed 2 s wait per round they took 80 s.
    let broker = Broker::start_config(|c| {
        c.selftest = Some(shardmq_core::broker::SelfTestConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
        });
    });
    let deadline = std::time::Instant::now() + common::WAIT;
    while broker.probes_ok() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} self-test rounds passed",
            broker.probes_ok()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_that_never_reads_is_pushed_back_and_others_are_unaffected() {
    use shardmq_core::codec::{Packet, PacketId, Props, Publish, QoS};
    let broker = Broker::start();
    let port = broker.port("s0");
    // Floods QoS 1 publishes and never reads its PUBACKs: the broker must
    // stop reading it (its writes eventually block) instead of buffering.
    let flooder = tokio::task::spawn_blocking(move || {
        let (mut c, _) = common::RawClient::connect_v5(port, "flooder", None);
        c.set_write_timeout(Duration::from_secs(2));
        let mut sent = 0u32;
        for i in 0..2_000_000u32 {
            let p = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "flood/x".into(),
                packet_id: PacketId::new((i % 65535 + 1) as u16),
                properties: Props::default(),
                payload: bytes::Bytes::from_static(&[0u8; 256]),
            });
            if !c.try_send(&p) {
                break;
            }
            sent += 1;
        }
        sent
    });
    let (mut sub, _) = Client::connect(broker.port("s1"), "sub", |_| {}).await;
    sub.subscribe("ok/#", q5(1)).await;
    let (publ, _) = Client::connect(broker.port("s0"), "pub", |_| {}).await;
    publ.publish("ok/1", q5(1), false, b"unaffected").await;
    assert_eq!(sub.publishes(1).await[0].1, b"unaffected");
    let sent = flooder.await.unwrap();
    assert!(
        sent < 2_000_000,
        "the broker stopped reading the flooder (sent {sent})"
    );
}

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-22]: keep-alive 1 s, nothing sent: DISCONNECT 0x8D.
    let broker = Broker::start();
    let (mut c, reason) =
        common::RawClient::connect_v5_with(broker.port("any"), "quiet", |c| c.keep_alive = 1);
    assert_eq!(reason, shardmq_core::codec::ReasonCode::Success);
    match c.recv() {
        Some(shardmq_core::codec::Packet::Disconnect(d)) => {
            assert_eq!(d.reason, shardmq_core::codec::ReasonCode::KeepAliveTimeout)
        }
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
}

#[test]
fn a_subscriber_with_receive_maximum_one_gets_each_message_after_acking_the_last() {
    // [MQTT-3.3.4-9]: no more unacknowledged QoS 1 PUBLISHes than the
    // client's Receive Maximum. Each PUBACK frees the one slot with
    // messages queued behind it, and that must wake the writer: a
    // subscriber that waited for a wake-up that never came would stall
    // here instead of receiving all 20.
    use shardmq_core::codec::{
        Packet, PacketId, Properties, Props, PubResponse, Publish, QoS, ReasonCode,
    };
    let broker = Broker::start();
    let port = broker.port("s0");
    let (mut sub, ack) = common::RawClient::connect_v5_ack(port, "rm1", |c| {
        c.properties = Properties {
            receive_maximum: Some(1),
            ..Properties::default()
        }
        .into();
    });
    assert_eq!(ack.reason, ReasonCode::Success);
    sub.subscribe("rm/#", QoS::AtLeastOnce);
    let (mut publ, _) = common::RawClient::connect_v5(port, "rm-pub", None);
    for i in 1..=20u16 {
        publ.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "rm/x".into(),
            packet_id: PacketId::new(i),
            properties: Props::default(),
            payload: bytes::Bytes::from(i.to_string()),
        }));
    }
    for i in 1..=20u16 {
        let Some(Packet::Publish(p)) = sub.recv() else {
            panic!("message {i} never came");
        };
        assert_eq!(p.payload, i.to_string().as_bytes(), "in order");
        let id = p.packet_id.unwrap();
        sub.send(&Packet::PubAck(PubResponse::new(id, ReasonCode::Success)));
    }
}
