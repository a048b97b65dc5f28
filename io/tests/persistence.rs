//! Persisted retained messages and sessions (docs/PERSISTENCE.md) through the
//! binary, with rumqttc on loopback: what was acknowledged survives kill -9,
//! nothing of it is readable on disk without the key, a changed byte is cut
//! rather than replayed, a wrong key or a second broker on the directory is
//! refused, and the key rotates online on SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, q5, spawn_logged, temp_file, Client, Ev, Log, Proc, BIN};
use rumqttc::v5::mqttbytes::v5::ConnectProperties;

/// A fresh random key as the key file holds it (64 hex digits).
fn random_key() -> String {
    let mut bytes = [0u8; 32];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Setup {
    config: PathBuf,
    data: PathBuf,
    key: PathBuf,
    port: u16,
    metrics: u16,
}

fn setup(encrypt: bool, shards: u32) -> Setup {
    setup_with(encrypt, shards, serde_json::json!({"mode": "All"}))
}

fn setup_with(encrypt: bool, shards: u32, retain: serde_json::Value) -> Setup {
    let port = free_port();
    let metrics = free_port();
    let key = temp_file("persistence.key", &random_key());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = key.parent().unwrap().join("data");
    let mode = if encrypt { "Enabled" } else { "Disabled" };
    let json = serde_json::json!({
        "cardinality": {"frontend": {"workers": shards}},
        "diagnostics": {"metrics": {"prometheusPort": metrics}},
        "listeners": [{"name": "l", "ports": [{"port": port, "bindAddress": "127.0.0.1"}]}],
        "persistence": {
            "maxSize": "200M",
            "encryption": {"mode": mode},
            "retain": retain,
            "dataDir": data,
            "keyFile": key,
        }
    });
    let config = temp_file("persistence.json", &json.to_string());
    Setup {
        config,
        data,
        key,
        port,
        metrics,
    }
}

/// The sum of metric `name` over its samples (refreshed about once a second).
fn metric(s: &Setup, name: &str) -> u64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.metrics));
    let (_, body) = common::http_get(addr, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (bounded) until `metric(name)` reaches `at_least`; its value.
fn metric_reaches(s: &Setup, name: &str, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let v = metric(s, name);
        if v >= at_least {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{name} = {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(s: &Setup) -> (Proc, Log) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&s.config)
        .env("RUST_LOG", "info")
        .env_remove("SHARDMQ_PERSISTENCE_KEY");
    let (proc, _, log) = spawn_logged(cmd, 1);
    (proc, log)
}

fn kill9(mut p: Proc) {
    p.0.kill().unwrap();
    p.0.wait().unwrap();
}

/// Publishes each (topic, payload) retained at QoS 1 and waits for every
/// PUBACK: the broker said each is stored.
async fn publish_acked(port: u16, id: &str, messages: &[(&str, &str)]) {
    let (mut c, _) = Client::connect(port, id, |_| {}).await;
    for (topic, payload) in messages {
        c.publish(topic, q5(1), true, payload.as_bytes()).await;
        match c.next_matching(|e| matches!(e, Ev::PubAck(_))).await {
            // 0x10 No matching subscribers is a success too (v5 §3.4.2.1).
            Ev::PubAck(reason) => assert!(
                reason == "Success" || reason == "NoMatchingSubscribers",
                "{reason}"
            ),
            _ => unreachable!(),
        }
    }
    c.disconnect().await;
}

/// The retained messages a new subscriber to `filter` gets: `n` of them,
/// then nothing more.
async fn retained(port: u16, filter: &str, n: usize) -> BTreeMap<String, String> {
    let (mut c, _) = Client::connect(port, "reader", |_| {}).await;
    c.subscribe(filter, q5(1)).await;
    let got = c.publishes(n).await;
    c.expect_no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;
    got.into_iter()
        .map(|(topic, payload, _, retain)| {
            assert!(retain, "{topic}: a retained message comes with RETAIN set");
            (topic, String::from_utf8(payload).unwrap())
        })
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect()
}

fn on_disk(dir: &Path, marker: &[u8]) -> bool {
    files(dir).iter().any(|f| {
        let bytes = std::fs::read(f).unwrap();
        bytes.windows(marker.len()).any(|w| w == marker)
    })
}

/// 20 retained topics, one replaced and one cleared, all acknowledged, then
/// kill -9: after the restart exactly the acknowledged state is back.
async fn survives_kill_9(encrypt: bool) -> Setup {
    let s = setup(encrypt, 2);
    let (broker, _) = run(&s);
    let topics: Vec<(String, String)> = (0..20)
        .map(|i| (format!("plant/line{i}/temp"), format!("MARKER-{i}")))
        .collect();
    let mut messages: Vec<(&str, &str)> = topics
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_str()))
        .collect();
    messages.push(("plant/line3/temp", "MARKER-3b"));
    // [MQTT-3.3.1-10] an empty retained payload clears the topic.
    messages.push(("plant/line5/temp", ""));
    publish_acked(s.port, "publisher", &messages).await;
    // Every change was written, each after an fdatasync of its batch.
    metric_reaches(&s, "shardmq_persistence_records_total", 22);
    let syncs = metric(&s, "shardmq_persistence_syncs_total");
    assert!((1..=22).contains(&syncs), "{syncs} syncs");
    assert_eq!(metric(&s, "shardmq_persistence_waiting_acks"), 0);
    kill9(broker);

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "retained=19"]);
    let got = retained(s.port, "plant/#", 19).await;
    for (i, (topic, payload)) in topics.iter().enumerate() {
        match i {
            3 => assert_eq!(got[topic], "MARKER-3b"),
            5 => assert!(!got.contains_key(topic), "a cleared topic came back"),
            _ => assert_eq!(&got[topic], payload),
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_retained_messages_survive_kill_9_and_are_unreadable_on_disk() {
    let s = survives_kill_9(true).await;
    // A stolen copy of the directory without the key: no payload, no topic,
    // no client id.
    assert!(!files(&s.data).is_empty());
    for marker in [&b"MARKER"[..], b"plant/line", b"publisher"] {
        assert!(
            !on_disk(&s.data, marker),
            "{} is readable on disk",
            String::from_utf8_lossy(marker)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_encryption_disabled_the_same_survives_in_plaintext() {
    let s = survives_kill_9(false).await;
    // The marker check above is not vacuous: in plaintext the payloads show.
    assert!(on_disk(&s.data, b"MARKER"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_is_detected_and_cut_not_replayed() {
    let s = setup(true, 1);
    let (broker, _) = run(&s);
    // Two acknowledged publishes: two blocks, the second at the file's end.
    publish_acked(s.port, "p", &[("keep", "first"), ("tampered", "second")]).await;
    kill9(broker);
    let file = files(&s.data).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let (_broker, log) = run(&s);
    let line = log.wait_for(&["persistence:", "was cut, not replayed"]);
    assert!(line.contains("authentication"), "{line}");
    log.wait_for(&["persistence: recovered", "cut=1", "retained=1"]);
    let got = retained(s.port, "#", 1).await;
    assert_eq!(got.get("keep").map(String::as_str), Some("first"));
    // Counted where an operator's alert sees it, not only in the log.
    assert_eq!(metric(&s, "shardmq_persistence_recovery_cut_files"), 1);
    assert_eq!(metric(&s, "shardmq_persistence_recovered_records"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_header_stops_the_start_and_an_unfinished_snapshot_is_deleted() {
    let s = setup(true, 1);
    let (broker, _) = run(&s);
    publish_acked(s.port, "p", &[("kept", "1")]).await;
    kill9(broker);
    let file = files(&s.data).pop().unwrap();

    // A crash between writing a snapshot and renaming it leaves a `.tmp`:
    // deleted, and the files it was to replace are read.
    let tmp = s.data.join(format!(
        "{}.tmp",
        file.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace("-C0000000000", "-C0000000001")
    ));
    std::fs::write(&tmp, b"half a snapshot").unwrap();
    let (broker, log) = run(&s);
    log.wait_for(&["persistence:", "unfinished"]);
    log.wait_for(&["persistence: recovered", "retained=1"]);
    assert!(!tmp.exists(), "the unfinished snapshot is deleted");
    assert_eq!(retained(s.port, "#", 1).await["kept"], "1");
    kill9(broker);

    // A `.log` is only named once complete: a header that does not read is
    // damage, and the broker stops instead of starting without its data.
    let file = files(&s.data).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .env_remove("SHARDMQ_PERSISTENCE_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(file.file_name().unwrap().to_str().unwrap()) && err.contains("does not start"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the file is left as it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_a_second_broker_on_the_directory_is_refused() {
    let s = setup(true, 1);
    let (broker, _) = run(&s);
    publish_acked(s.port, "p", &[("a", "1")]).await;

    // A second broker on the same directory (another port) stops before
    // it touches the files.
    let other = setup(true, 1);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other.config).unwrap()).unwrap();
    config["persistence"]["dataDir"] = serde_json::json!(s.data);
    config["persistence"]["keyFile"] = serde_json::json!(s.key);
    let second = temp_file("second.json", &config.to_string());
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&second)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another broker uses this directory"), "{err}");
    kill9(broker);

    // The key file now holds another key: the file's data key does not
    // unwrap, and the broker says so instead of starting empty.
    std::fs::write(&s.key, random_key()).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not hold"), "{err}");
    assert_eq!(files(&s.data).len(), 1, "the unreadable file must stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_rotates_online_on_sighup() {
    let s = setup(true, 2);
    let old = std::fs::read_to_string(&s.key).unwrap();
    let (broker, log) = run(&s);
    publish_acked(s.port, "p", &[("before", "1")]).await;

    // The new key first, the old one kept below it until the rewrite.
    let new = random_key();
    std::fs::write(&s.key, format!("{new}\n{old}\n")).unwrap();
    let pid = broker.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    log.wait_for(&["shard=0", "log rewritten under the new key"]);
    log.wait_for(&["shard=1", "log rewritten under the new key"]);
    publish_acked(s.port, "p", &[("after", "2")]).await;
    kill9(broker);

    // Only the new key now: everything is readable under it.
    std::fs::write(&s.key, &new).unwrap();
    let (_broker, _) = run(&s);
    let got = retained(s.port, "#", 2).await;
    assert_eq!(got["before"], "1");
    assert_eq!(got["after"], "2");
}

/// `retain.mode: Custom`: a listed filter, or the MQTT 5 user property
/// `aio-persistence=true` on the PUBLISH (`dynamic`), selects a topic; QoS 2
/// is held to PUBREC like QoS 1 to PUBACK. What is not selected is gone
/// after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_policy_persists_listed_topics_and_dynamic_opt_ins_only() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let retain = serde_json::json!({
        "mode": "Custom",
        "retainSettings": {"topics": ["keep/#"], "dynamic": {"mode": "Enabled"}}
    });
    let s = setup_with(true, 2, retain);
    let (broker, _) = run(&s);
    let (mut c, _) = Client::connect(s.port, "p", |_| {}).await;
    let opt_in = PublishProperties {
        user_properties: vec![("aio-persistence".into(), "true".into())],
        ..PublishProperties::default()
    };
    let sends: [(&str, u8, Option<&PublishProperties>); 3] = [
        ("keep/a", 2, None),
        ("other/x", 1, None),
        ("other/y", 1, Some(&opt_in)),
    ];
    for (topic, qos, props) in sends {
        let payload = format!("v-{topic}").into_bytes();
        match props {
            Some(p) => c
                .client
                .publish_with_properties(topic, q5(qos), true, payload, p.clone())
                .await
                .unwrap(),
            None => c.publish(topic, q5(qos), true, &payload).await,
        }
        // PUBACK, or PUBCOMP after PUBREC for QoS 2.
        c.next_matching(|e| matches!(e, Ev::PubAck(_))).await;
    }
    c.disconnect().await;
    kill9(broker);

    let (_broker, _) = run(&s);
    let got = retained(s.port, "#", 2).await;
    assert_eq!(got.get("keep/a").map(String::as_str), Some("v-keep/a"));
    assert_eq!(got.get("other/y").map(String::as_str), Some("v-other/y"));
    assert!(!got.contains_key("other/x"));
}

/// A restart with a smaller `retainedMessages.maxSize` restores what fits and
/// drops the rest from disk too: raising the limit again must not bring
/// back messages the broker did not hold in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_fit_at_restore_is_dropped_from_disk_too() {
    let s = setup(true, 1);
    let (broker, _) = run(&s);
    publish_acked(s.port, "p", &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    kill9(broker);

    // Each message counts payload + topic + client id + 256 bytes: two
    // fit in 600.
    let original = std::fs::read_to_string(&s.config).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["retainedMessages"] = serde_json::json!({"maxSize": 600});
    std::fs::write(&s.config, config.to_string()).unwrap();
    let (broker, log) = run(&s);
    log.wait_for(&["persistence:", "did not fit", "found=3", "restored=2"]);
    metric_reaches(&s, "shardmq_persistence_rewrites_total", 1);
    kill9(broker);

    std::fs::write(&s.config, original).unwrap();
    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "retained=2"]);
    assert_eq!(retained(s.port, "#", 2).await.len(), 2);
}

/// What a retained message carries comes back with it after kill -9 (MQTT
/// 5.0 §3.3.2.3: payload format, content type, response topic, correlation
/// data, user properties, in order), and its Message Expiry Interval counts
/// the downtime [MQTT-3.3.2-6]: a message that expired meanwhile is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_survive_and_expiry_counts_the_downtime() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let s = setup(true, 2);
    let (broker, _) = run(&s);
    let (mut c, _) = Client::connect(s.port, "p", |_| {}).await;
    let full = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("site".into(), "7".into()), ("line".into(), "2".into())],
        ..PublishProperties::default()
    };
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    for (topic, props) in [("meta/full", full), ("meta/short", short)] {
        c.client
            .publish_with_properties(topic, q5(1), true, b"{}".to_vec(), props)
            .await
            .unwrap();
        c.next_matching(|e| matches!(e, Ev::PubAck(_))).await;
    }
    c.disconnect().await;
    // Long enough for the 1 s message to expire while the broker is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill9(broker);

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "retained=1", "expired=1"]);
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("reader", "127.0.0.1", s.port), 10);
    client.subscribe("meta/#", q5(1)).await.unwrap();
    let publish = loop {
        match tokio::time::timeout(common::WAIT, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => break p,
            Ok(Ok(_)) => continue,
            other => panic!("no retained message: {other:?}"),
        }
    };
    assert_eq!(&publish.topic[..], b"meta/full");
    let p = publish.properties.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        p.user_properties,
        vec![
            ("site".to_owned(), "7".to_owned()),
            ("line".to_owned(), "2".to_owned())
        ]
    );
    // What remains of the hour, not the hour again.
    let left = p.message_expiry_interval.expect("expiry");
    assert!((3500..3600).contains(&left), "{left}");
}

/// A v5 client that keeps its session `expiry` seconds (clean start off).
fn keeps_session(expiry: u32) -> impl FnOnce(&mut rumqttc::v5::MqttOptions) {
    move |o| {
        o.set_clean_start(false);
        let mut p = ConnectProperties::new();
        p.session_expiry_interval = Some(expiry);
        o.set_connect_properties(p);
    }
}

/// A session with expiry > 0 and its acknowledged subscriptions survive
/// kill -9 on another shard count's owner: a message published after the
/// restart, before its client returns, is queued for it (the publisher's
/// PUBACK says Success, not 0x10 No matching subscribers) and delivered on
/// resume with Session Present [MQTT-3.2.2-3]. An UNSUBSCRIBE before the
/// crash stays done, and neither a session that ended (a clean start with
/// expiry 0) nor one that expired during the downtime comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_its_subscriptions_survive_kill_9() {
    let s = setup(true, 2);
    let (broker, _) = run(&s);
    let (mut sub, present) = Client::connect(s.port, "sensor-sub", keeps_session(3600)).await;
    assert!(!present);
    sub.subscribe("plant/+/alarm", q5(1)).await;
    sub.subscribe("plant/+/noise", q5(1)).await;
    sub.client.unsubscribe("plant/+/noise").await.unwrap();
    sub.subscribe("plant/+/alarm2", q5(2)).await;
    sub.kill();
    // A session that is later ended by a clean start with expiry 0.
    let (gone, _) = Client::connect(s.port, "ended", keeps_session(3600)).await;
    gone.kill();
    let (gone, present) = Client::connect(s.port, "ended", |o| {
        o.set_clean_start(true);
    })
    .await;
    assert!(!present, "a clean start never resumes");
    gone.disconnect().await;
    // A session whose 1 s expiry runs out while the broker is down: its
    // deadline is on disk and counts the downtime [MQTT-3.1.2-23].
    let (short, _) = Client::connect(s.port, "short-lived", keeps_session(1)).await;
    short.disconnect().await;
    kill9(broker);
    std::thread::sleep(Duration::from_millis(1500));

    // Encrypted at rest: neither the client id nor a filter is readable.
    assert!(!on_disk(&s.data, b"sensor-sub") && !on_disk(&s.data, b"plant/+/alarm"));
    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=1", "expired_sessions=1"]);
    // The operator sees it: one persisted session on disk.
    assert_eq!(metric_reaches(&s, "shardmq_persistence_sessions", 1), 1);
    let (mut publ, _) = Client::connect(s.port, "publisher", |_| {}).await;
    for (topic, qos) in [
        ("plant/7/alarm", 1),
        ("plant/7/noise", 1),
        ("plant/8/alarm2", 2),
    ] {
        publ.publish(topic, q5(qos), false, topic.as_bytes()).await;
        match publ.next_matching(|e| matches!(e, Ev::PubAck(_))).await {
            Ev::PubAck(reason) if topic.ends_with("noise") => {
                assert_eq!(
                    reason, "NoMatchingSubscribers",
                    "{topic}: unsubscribed before the crash"
                )
            }
            Ev::PubAck(reason) => assert_eq!(reason, "Success", "{topic}: a restored subscriber"),
            _ => unreachable!(),
        }
    }
    let (mut sub, present) = Client::connect(s.port, "sensor-sub", keeps_session(3600)).await;
    assert!(present, "the restored session is resumed");
    let got: Vec<String> = sub
        .publishes(2)
        .await
        .into_iter()
        .map(|(topic, _, _, _)| topic)
        .collect();
    assert_eq!(got, ["plant/7/alarm", "plant/8/alarm2"]);
    sub.expect_no_publish(Duration::from_millis(300)).await;
    let (_, present) = Client::connect(s.port, "ended", keeps_session(3600)).await;
    assert!(!present, "an ended session stays ended");
    let (_, present) = Client::connect(s.port, "short-lived", keeps_session(1)).await;
    assert!(
        !present,
        "a session that expired while the broker was down is gone"
    );
}

/// A persisted session whose client was connected when the broker died
/// lost its connection without DISCONNECT: after the restart its will is
/// published [MQTT-3.1.2-8]. A client that disconnected normally before
/// the crash had its will discarded [MQTT-3.1.2-10], and it stays so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_clients_will_is_published_after_a_crash() {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    use rumqttc::v5::mqttbytes::QoS;
    let s = setup(true, 2);
    let (broker, _) = run(&s);
    let with_will = |topic: &'static str| {
        move |o: &mut rumqttc::v5::MqttOptions| {
            keeps_session(3600)(o);
            o.set_last_will(LastWill::new(
                topic,
                "offline",
                QoS::AtLeastOnce,
                false,
                None,
            ));
        }
    };
    let (polite, _) = Client::connect(s.port, "polite", with_will("plant/8/status")).await;
    polite.disconnect().await;
    let (dying, _) = Client::connect(s.port, "dying", with_will("plant/7/status")).await;
    // A watcher whose own session is restored too, so it gets the will
    // whenever after the restart it is published.
    let (mut watcher, _) = Client::connect(s.port, "watcher", keeps_session(3600)).await;
    watcher.subscribe("plant/+/status", q5(1)).await;
    watcher.kill();
    kill9(broker);
    dying.kill();

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=3"]);
    let (mut watcher, present) = Client::connect(s.port, "watcher", keeps_session(3600)).await;
    assert!(present);
    let got = watcher.publishes(1).await;
    assert_eq!(got[0].0, "plant/7/status");
    assert_eq!(got[0].1, b"offline");
    watcher.expect_no_publish(Duration::from_millis(500)).await;
}

/// A graceful stop (SIGTERM) closes every connection and waits for the
/// sessions' close records, even those written by another shard's log: a
/// session connected at the stop counts its expiry from the stop
/// [MQTT-3.1.2-23], so one of 1 s is gone after a 1.5 s stop, and one of an
/// hour is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_every_sessions_close_first() {
    let s = setup(true, 2);
    let (mut broker, _) = run(&s);
    // Ids spread over both shards' logs.
    let mut brief = Vec::new();
    for i in 0..4 {
        let (mut c, _) = Client::connect(s.port, &format!("brief-{i}"), keeps_session(1)).await;
        c.subscribe("plant/+/alarm", q5(1)).await;
        brief.push(c);
    }
    let (mut lasting, _) = Client::connect(s.port, "lasting", keeps_session(3600)).await;
    lasting.subscribe("plant/+/alarm", q5(1)).await;
    assert!(broker.terminate().success());
    drop((brief, lasting));
    std::thread::sleep(Duration::from_millis(1500));

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=1", "expired_sessions=4"]);
    let (_, present) = Client::connect(s.port, "lasting", keeps_session(3600)).await;
    assert!(present, "the long session is resumed");
    let (_, present) = Client::connect(s.port, "brief-0", keeps_session(1)).await;
    assert!(!present, "a session that expired after the stop is gone");
}

/// A will waiting for its delay when the broker dies is in its session's
/// close record: it is published after the restart [MQTT-3.1.2-8], once.
/// Once published, the record drops it, so a second crash does not publish
/// it again. One shard: one log orders every write, so a later CONNACK
/// (durable) proves the earlier writes durable without timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_survives_a_crash_and_is_published_once() {
    let s = setup(true, 1);
    let (broker, log) = run(&s);
    let (mut watcher, _) = Client::connect(s.port, "watcher", keeps_session(3600)).await;
    watcher.subscribe("plant/+/status", q5(1)).await;
    watcher.kill();
    let (leaving, _) = Client::connect(s.port, "leaving", with_delayed_will(3600, 4)).await;
    leaving.kill();
    // The close queued its record (with the will) as it logged the
    // disconnect; a CONNACK written after it is durable, so it is too.
    log.wait_for(&["client disconnected", "leaving"]);
    flush_one_log(s.port).await;
    kill9(broker);

    let (broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=3"]);
    watcher_gets(s.port, Some(("plant/7/status", b"offline"))).await;
    // The record dropped the will when it was published, before this.
    flush_one_log(s.port).await;
    kill9(broker);

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=3"]);
    watcher_gets(s.port, None).await;
}

/// With one shard one log orders every write: a CONNACK (durable) proves
/// every earlier write durable, without timing.
async fn flush_one_log(port: u16) {
    Client::connect(port, "marker", keeps_session(3600))
        .await
        .0
        .kill();
}

/// The "watcher" resumes its session and gets `will` (topic, payload), or,
/// with `None`, nothing for a while.
async fn watcher_gets(port: u16, will: Option<(&str, &[u8])>) {
    let (mut watcher, present) = Client::connect(port, "watcher", keeps_session(3600)).await;
    assert!(present, "the watcher's session is restored");
    match will {
        Some(expected) => {
            let got = watcher.publishes(1).await;
            assert_eq!((got[0].0.as_str(), got[0].1.as_ref()), expected);
        }
        None => watcher.expect_no_publish(Duration::from_millis(700)).await,
    }
    watcher.kill();
}

/// A client keeping its session `expiry` s, whose will ("offline" on
/// plant/7/status) waits `delay` s.
fn with_delayed_will(expiry: u32, delay: u32) -> impl FnOnce(&mut rumqttc::v5::MqttOptions) {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    use rumqttc::v5::mqttbytes::QoS;
    move |o| {
        keeps_session(expiry)(o);
        let props = LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        o.set_last_will(LastWill::new(
            "plant/7/status",
            "offline",
            QoS::AtLeastOnce,
            false,
            Some(props),
        ));
    }
}

/// A session that expired while the broker was down had its will due by
/// then (at the session's end at the latest, [MQTT-3.1.3-9]): it is
/// published after the restart, late rather than never [MQTT-3.1.2-8].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_session_that_expired_while_down_is_published() {
    let s = setup(true, 1);
    let (broker, log) = run(&s);
    let (mut watcher, _) = Client::connect(s.port, "watcher", keeps_session(3600)).await;
    watcher.subscribe("plant/+/status", q5(1)).await;
    watcher.kill();
    let (leaving, _) = Client::connect(s.port, "leaving", with_delayed_will(5, 3600)).await;
    leaving.kill();
    log.wait_for(&["client disconnected", "leaving"]);
    flush_one_log(s.port).await;
    kill9(broker);
    // Down longer than the 5 s session.
    std::thread::sleep(Duration::from_millis(5500));

    let (broker, log) = run(&s);
    log.wait_for(&[
        "persistence: recovered",
        "expired_sessions=1",
        "wills_due=1",
    ]);
    watcher_gets(s.port, Some(("plant/7/status", b"offline"))).await;
    // Once published, the record kept for the will ends (before this
    // CONNACK's write, one log): another crash does not publish it again.
    flush_one_log(s.port).await;
    kill9(broker);
    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "wills_due=0"]);
    watcher_gets(s.port, None).await;
    let (_, present) = Client::connect(s.port, "leaving", keeps_session(5)).await;
    assert!(!present, "the session itself is gone");
}

/// `setup` with `subscriberQueue` All: queued messages persist too.
fn setup_queues(shards: u32) -> Setup {
    let s = setup(true, shards);
    set_subscriber_queue(&s, serde_json::json!({"mode": "All"}));
    s
}

/// Rewrites the config's `persistence.subscriberQueue` (for the next start).
fn set_subscriber_queue(s: &Setup, policy: serde_json::Value) {
    edit_config(s, |json| json["persistence"]["subscriberQueue"] = policy);
}

/// Changes the config file (for the next start).
fn edit_config(s: &Setup, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&s.config).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&s.config, json.to_string()).unwrap();
}

/// A Tiny memory profile (16 MiB per shard, a quarter per session) and a
/// disk buffer of `buffer`: a backlog of a few MiB spills.
fn spilling(s: &Setup, buffer: &str) {
    let dir = s.data.parent().unwrap().join("buffer");
    edit_config(s, |json| {
        json["memoryProfile"] = serde_json::json!("Tiny");
        json["diskBackedMessageBuffer"] = serde_json::json!({"maxSize": buffer, "dataDir": dir});
    });
}

/// Publishes `n` messages on `topic` at `qos` ("{prefix}{i}"), each
/// acknowledged Success (PUBACK, or PUBCOMP at QoS 2) before the next.
async fn publish_owed(port: u16, topic: &str, qos: u8, prefix: &str, n: usize) {
    let (mut c, _) = Client::connect(port, &format!("pub-{prefix}"), |_| {}).await;
    for i in 0..n {
        c.publish(topic, q5(qos), false, format!("{prefix}{i}").as_bytes())
            .await;
        match c.next_matching(|e| matches!(e, Ev::PubAck(_))).await {
            Ev::PubAck(reason) => assert_eq!(reason, "Success", "{topic} #{i}"),
            _ => unreachable!(),
        }
    }
    c.disconnect().await;
}

fn payloads_raw(got: Vec<(String, Vec<u8>, u8, bool)>) -> Vec<Vec<u8>> {
    got.into_iter().map(|(_, p, _, _)| p).collect()
}

fn payloads(got: Vec<(String, Vec<u8>, u8, bool)>) -> Vec<String> {
    got.into_iter()
        .map(|(_, p, _, _)| String::from_utf8(p).unwrap())
        .collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Every message acknowledged to its publisher for a persisted session
/// survives kill -9, in order, on two shards (publishers, subscribers and
/// client id owners spread over both): those queued while the subscriber
/// was away, at QoS 1 and 2, and those sent to a connected subscriber that
/// had not acknowledged them yet (in flight). A QoS 0 subscription gets
/// nothing persisted (nothing was promised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_in_flight_messages_survive_kill_9() {
    let s = setup_queues(2);
    let (broker, log) = run(&s);
    // 200M (SI) over 2 shards: a log is kept to half a shard's share
    // (47 MiB), which its 64 MiB persisted retained share alone could fill.
    log.wait_for(&["persistence.maxSize", "limit_mib=47", "retained_mib=64"]);
    let (mut away, _) = Client::connect(s.port, "away", keeps_session(3600)).await;
    away.subscribe("line/+/count", q5(1)).await;
    away.subscribe("line/+/batch", q5(2)).await;
    away.kill();
    let (mut slow, _) = Client::connect(s.port, "slow", |o| {
        keeps_session(3600)(o);
        o.set_manual_acks(true);
    })
    .await;
    slow.subscribe("line/+/count", q5(1)).await;
    let (mut lossy, _) = Client::connect(s.port, "lossy", keeps_session(3600)).await;
    lossy.subscribe("line/+/count", q5(0)).await;
    lossy.kill();
    publish_owed(s.port, "line/1/count", 1, "c", 30).await;
    publish_owed(s.port, "line/2/batch", 2, "b", 5).await;
    // Delivered and never acknowledged: in flight at the crash.
    assert_eq!(payloads(slow.publishes(30).await), numbered("c", 0..30));
    kill9(broker);
    // Neither a topic nor a payload marker is readable on disk.
    assert!(!on_disk(&s.data, b"line/1/count") && !on_disk(&s.data, b"line/2/batch"));

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=3", "queued=65"]);
    let (mut away, present) = Client::connect(s.port, "away", keeps_session(3600)).await;
    assert!(present);
    let got = away.publishes(35).await;
    let counts: Vec<_> = got
        .iter()
        .filter(|m| m.0 == "line/1/count")
        .cloned()
        .collect();
    let batches: Vec<_> = got
        .iter()
        .filter(|m| m.0 == "line/2/batch")
        .cloned()
        .collect();
    assert_eq!(payloads(counts), numbered("c", 0..30));
    assert_eq!(payloads(batches.clone()), numbered("b", 0..5));
    assert!(batches.iter().all(|m| m.2 == 2), "at the granted QoS 2");
    let (mut slow, present) = Client::connect(s.port, "slow", keeps_session(3600)).await;
    assert!(present);
    assert_eq!(payloads(slow.publishes(30).await), numbered("c", 0..30));
    let (mut lossy, present) = Client::connect(s.port, "lossy", keeps_session(3600)).await;
    assert!(present);
    lossy.expect_no_publish(Duration::from_millis(300)).await;
}

/// A backlog larger than a session may keep in memory: recovery copies it
/// to the new snapshot a block at a time, and the shard reads it back from
/// there a block at a time, spilling past its memory share to the disk
/// buffer, not holding the backlog; a compaction copies the spilled
/// messages from the log it replaces rather than reading them back
/// (docs/PERSISTENCE.md, "Recovery" and "Rewrites"). Two crashes, the
/// second after that compaction; then every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_memory_survives_compaction_and_crashes_in_order() {
    const N: usize = 6000;
    const M: usize = 9000;
    let s = setup_queues(1);
    // 6,000 messages of 1 KiB pass a session's 4 MiB in memory.
    spilling(&s, "64M");
    let (broker, _) = run(&s);
    let (mut sub, _) = Client::connect(s.port, "backlog", keeps_session(3600)).await;
    sub.subscribe("line/+/count", q5(1)).await;
    sub.kill();
    let padding = "x".repeat(1000);
    let payload = |prefix: &str, i: usize| format!("{prefix}{i:05}{padding}");
    publish_pipelined(s.port, "c", N, |i| payload("c", i)).await;
    kill9(broker);

    let (broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", &format!("queued={N}")]);
    log.wait_for(&["sessions restored", &format!("queued={N}")]);
    // Restored past the session's memory share: spilled, not held.
    metric_reaches(&s, "shardmq_disk_buffer_spilled_total", 1);
    // The log grows past twice its snapshot: compacted, the spilled
    // messages copied from the old file.
    publish_pipelined(s.port, "d", M, |i| payload("d", i)).await;
    metric_reaches(&s, "shardmq_persistence_rewrites_total", 1);
    let rewritten = log.wait_for(&["persistence: log rewritten", "copied="]);
    assert!(!rewritten.contains("copied=0"), "{rewritten}");
    kill9(broker);

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", &format!("queued={}", N + M)]);
    let (mut sub, present) = Client::connect(s.port, "backlog", keeps_session(3600)).await;
    assert!(present);
    let got: Vec<String> = payloads(sub.publishes(N + M).await);
    let mut expected: Vec<String> = (0..N).map(|i| payload("c", i)).collect();
    expected.extend((0..M).map(|i| payload("d", i)));
    assert!(got == expected, "all {} once, in order", N + M);
}

/// `persistence.maxSize` bounds what a shard's log holds: half the shard's
/// share, so a rewrite's new file fits beside it. Once the log reaches
/// that, a persisted queue refuses new QoS 1 messages (the v5 publisher
/// gets 0x97 Quota exceeded), never acknowledging one it did not write: a
/// kill -9 then loses none. Once the subscriber has taken its messages, a
/// rewrite finds the room and messages are taken again (docs/PERSISTENCE.md,
/// "`maxSize`").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_at_its_limit_refuses_queued_messages_until_it_shrinks() {
    let s = setup_queues(1);
    // 100M is AIO's smallest maxSize: the log is kept to 47.7 MiB. The
    // queue may hold more (a disk buffer of 1G, a session's share 256M).
    edit_config(&s, |json| {
        json["persistence"]["maxSize"] = serde_json::json!("100M")
    });
    spilling(&s, "1G");
    let (broker, log) = run(&s);
    log.wait_for(&["persistence.maxSize", "limit_mib=47"]);
    let (mut sub, _) = Client::connect(s.port, "bounded", keeps_session(3600)).await;
    sub.subscribe("line/+/count", q5(1)).await;
    sub.kill();
    let (mut publisher, _) = Client::connect(s.port, "pub-bounded", |_| {}).await;
    // Under rumqttc's 10 KiB packet limit.
    let payload = |i: usize| {
        let mut p = format!("m{i:05}").into_bytes();
        p.resize(8000, b'x');
        p
    };
    // Publish 100 at a time until refused. rumqttc ends its connection at
    // the first refusal, which may overtake the answers of messages before
    // it (those wait for the disk): what was accepted is a prefix of what
    // was sent, at least `accepted` long. The refusal may also come while
    // a batch is still being handed to rumqttc, whose requests then fail.
    let (mut sent, mut accepted) = (0, 0);
    let refused = 'publishing: loop {
        assert!(sent < 20_000, "never refused");
        let batch = sent;
        let mut ended = false;
        for i in batch..batch + 100 {
            let p = publisher
                .client
                .publish("line/1/count", q5(1), false, payload(i));
            if p.await.is_err() {
                ended = true;
                break;
            }
            sent += 1;
        }
        for _ in batch..sent {
            match publisher
                .next_matching(|e| matches!(e, Ev::PubAck(_) | Ev::Closed(_)))
                .await
            {
                Ev::PubAck(reason) if reason == "Success" => accepted += 1,
                Ev::PubAck(reason) | Ev::Closed(reason) => break 'publishing reason,
                _ => unreachable!(),
            }
        }
        if ended {
            match publisher
                .next_matching(|e| matches!(e, Ev::PubAck(_) | Ev::Closed(_)))
                .await
            {
                Ev::PubAck(reason) | Ev::Closed(reason) => break 'publishing reason,
                _ => unreachable!(),
            }
        }
    };
    assert!(refused.contains("QuotaExceeded"), "{refused}");
    assert!(accepted > 5_000, "{accepted} accepted before the limit");
    log.wait_for(&["the log reached its limit"]);
    kill9(broker);

    // Still at its limit after the restart.
    let (_broker, log) = run(&s);
    log.wait_for(&["the recovered log is at its limit"]);
    // Every acknowledged message arrives, in order, with no gap: what the
    // queue took is a prefix of what was sent, no more.
    let (mut sub, present) = Client::connect(s.port, "bounded", keeps_session(3600)).await;
    assert!(present);
    let mut got = payloads_raw(sub.publishes(accepted).await);
    while let Ok(ev) = tokio::time::timeout(
        Duration::from_millis(500),
        sub.next_matching(|e| matches!(e, Ev::Publish { .. })),
    )
    .await
    {
        if let Ev::Publish { payload, .. } = ev {
            got.push(payload);
        }
    }
    assert!(got.len() < sent, "some were refused");
    assert!(
        got.iter().cloned().eq((0..got.len()).map(payload)),
        "{} received: the acknowledged ones and those before the refusal, in order",
        got.len()
    );
    sub.kill();
    // Their acknowledgements let a rewrite find the room.
    log.wait_for(&["the log is below its limit again"]);
    let (mut publisher, _) = Client::connect(s.port, "pub-bounded", |_| {}).await;
    publisher
        .publish("line/1/count", q5(1), false, b"again")
        .await;
    match publisher
        .next_matching(|e| matches!(e, Ev::PubAck(_)))
        .await
    {
        Ev::PubAck(reason) => assert_eq!(reason, "Success"),
        _ => unreachable!(),
    }
}

/// Publishes `n` QoS 1 messages on `line/1/count`, 100 in flight at a
/// time, each acknowledged Success.
async fn publish_pipelined(port: u16, id: &str, n: usize, payload: impl Fn(usize) -> String) {
    let (mut publisher, _) = Client::connect(port, &format!("pub-{id}"), |_| {}).await;
    for window in (0..n).collect::<Vec<_>>().chunks(100) {
        for &i in window {
            publisher
                .publish("line/1/count", q5(1), false, payload(i).as_bytes())
                .await;
        }
        for _ in window {
            match publisher
                .next_matching(|e| matches!(e, Ev::PubAck(_)))
                .await
            {
                Ev::PubAck(reason) => assert_eq!(reason, "Success"),
                _ => unreachable!(),
            }
        }
    }
    publisher.disconnect().await;
}

/// What a subscriber acknowledged is not sent again after a crash; what it
/// did not is, however many crashes come between. One shard: one log
/// orders every write, so a DISCONNECT's close (durable) proves the
/// acknowledgements before it durable too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_stay_delivered_across_crashes() {
    let s = setup_queues(1);
    let (broker, _) = run(&s);
    let (mut sub, _) = Client::connect(s.port, "reader", keeps_session(3600)).await;
    sub.subscribe("line/+/count", q5(1)).await;
    sub.kill();
    publish_owed(s.port, "line/1/count", 1, "c", 20).await;
    kill9(broker);

    let (broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "queued=20"]);
    publish_owed(s.port, "line/1/count", 1, "d", 5).await;
    kill9(broker);
    let (broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "queued=25"]);
    let (mut sub, present) = Client::connect(s.port, "reader", keeps_session(3600)).await;
    assert!(present);
    let mut expected = numbered("c", 0..20);
    expected.extend(numbered("d", 0..5));
    assert_eq!(payloads(sub.publishes(25).await), expected);
    sub.disconnect().await;
    kill9(broker);

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "queued=0"]);
    let (mut sub, present) = Client::connect(s.port, "reader", keeps_session(3600)).await;
    assert!(present);
    sub.expect_no_publish(Duration::from_millis(500)).await;
}

/// A session persisted while `subscriberQueue` was None has no queue on
/// disk; once the mode is All, the restored session's queue is persisted
/// from the restart on (its record names the new queue), so what is queued
/// for it then survives the next crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_persisted_once_subscriber_queue_selects_it() {
    let s = setup(true, 1);
    let (broker, _) = run(&s);
    let (mut sub, _) = Client::connect(s.port, "late-pick", keeps_session(3600)).await;
    sub.subscribe("line/+/count", q5(1)).await;
    sub.disconnect().await;
    kill9(broker);
    set_subscriber_queue(&s, serde_json::json!({"mode": "All"}));

    let (broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=1"]);
    publish_owed(s.port, "line/1/count", 1, "n", 3).await;
    kill9(broker);
    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "queued=3"]);
    let (mut sub, present) = Client::connect(s.port, "late-pick", keeps_session(3600)).await;
    assert!(present);
    assert_eq!(payloads(sub.publishes(3).await), numbered("n", 0..3));
}

/// The in-flight window survives kill -9 with its packet ids
/// [MQTT-4.4.0-1]: a QoS 2 exchange past PUBREC resumes with its PUBREL
/// (the subscriber already has the message: it is not sent again), and one
/// not yet acknowledged is sent again with DUP under the same packet id.
/// One shard: a later CONNACK (durable) proves the PUBREC's record durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_exchange_resumes_with_its_packet_id_after_kill_9() {
    use shardmq_core::codec::{Packet, PubResponse, QoS, ReasonCode};
    let s = setup_queues(1);
    let (broker, _) = run(&s);
    let port = s.port;
    let mut sub = tokio::task::spawn_blocking(move || {
        let (mut c, _) = common::RawClient::connect_v5(port, "exactly", Some(3600));
        c.subscribe("x/#", QoS::ExactlyOnce);
        c
    })
    .await
    .unwrap();
    publish_owed(s.port, "x/1", 2, "q", 2).await;
    let (sub, first, second) = tokio::task::spawn_blocking(move || {
        let id = |p: Option<Packet>| match p {
            Some(Packet::Publish(p)) => (p.packet_id.unwrap(), p.payload.clone()),
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        let (first, payload) = id(sub.recv());
        assert_eq!(&payload[..], b"q0");
        let (second, _) = id(sub.recv());
        sub.send(&Packet::PubRec(PubResponse::new(
            first,
            ReasonCode::Success,
        )));
        assert!(matches!(sub.recv(), Some(Packet::PubRel(r)) if r.packet_id == first));
        (sub, first, second)
    })
    .await
    .unwrap();
    flush_one_log(s.port).await;
    kill9(broker);
    drop(sub);

    let (_broker, log) = run(&s);
    // One message owed (the other exchange owes its PUBREL only).
    log.wait_for(&["persistence: recovered", "queued=1"]);
    tokio::task::spawn_blocking(move || {
        let (mut c, ack) = common::RawClient::connect_v5(port, "exactly", Some(3600));
        assert!(ack.session_present);
        match c.recv() {
            Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, first, "PUBREL first, same id"),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        match c.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.packet_id, Some(second), "resent under its packet id");
                assert!(p.dup, "a resend has DUP set [MQTT-3.3.1-1]");
                assert_eq!(&p.payload[..], b"q1");
            }
            other => panic!("expected the resent PUBLISH, got {other:?}"),
        }
    })
    .await
    .unwrap();
}

/// `subscriberQueue` Custom persists the queues of the listed client ids
/// (`*` wildcards) and, with dynamic Enabled, of sessions whose CONNECT or
/// SUBSCRIBE carries `aio-persistence=true`; no other queue is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_subscriber_queue_policy_selects_by_client_id_and_opt_in() {
    use rumqttc::v5::mqttbytes::v5::SubscribeProperties;
    let s = setup(true, 2);
    set_subscriber_queue(
        &s,
        serde_json::json!({
            "mode": "Custom",
            "subscriberQueueSettings": {"subscriberClientIds": ["keep-*"], "dynamic": {"mode": "Enabled"}}
        }),
    );
    let (broker, _) = run(&s);
    for id in ["keep-1", "opted", "plain"] {
        let (mut c, _) = Client::connect(s.port, id, keeps_session(3600)).await;
        if id == "opted" {
            let props = SubscribeProperties {
                id: None,
                user_properties: vec![("aio-persistence".into(), "true".into())],
            };
            c.client
                .subscribe_with_properties("c/#", q5(1), props)
                .await
                .unwrap();
            c.next_matching(|e| matches!(e, Ev::SubAck(_))).await;
        } else {
            c.subscribe("c/#", q5(1)).await;
        }
        c.kill();
    }
    publish_owed(s.port, "c/1", 1, "k", 2).await;
    kill9(broker);

    let (_broker, log) = run(&s);
    log.wait_for(&["persistence: recovered", "sessions=3", "queued=4"]);
    for (id, expected) in [("keep-1", 2), ("opted", 2), ("plain", 0)] {
        let (mut c, present) = Client::connect(s.port, id, keeps_session(3600)).await;
        assert!(present, "{id}: its session persists either way");
        if expected > 0 {
            assert_eq!(
                payloads(c.publishes(expected).await),
                numbered("k", 0..2),
                "{id}"
            );
        } else {
            c.expect_no_publish(Duration::from_millis(300)).await;
        }
    }
}
