//! The disk-backed message buffer in the running broker (issue 6, "How it
//! is shown to work"): an offline persistent subscriber's backlog spills
//! past a tiny memory budget and comes back complete and in order; the
//! segment files hold plaintext only when encryption is Disabled; a flipped
//! byte is counted as lost and delivery goes on; the size bound holds per
//! strategy; a restart starts empty.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{q5, Broker, Client, Ev};
use rumqttc::v5::mqttbytes::v5::ConnectProperties;
use shardmq_core::codec::ReasonCode;
use shardmq_core::limits::{QueueFullStrategy, QueueLimit};
use shardmq_io::buffer::BufferSpec;
use shardmq_io::shard::BufferReport;

const MARKER: &[u8] = b"SHARDMQ-PLAINTEXT-MARKER-51c9";

/// A fresh directory under the system temp dir, deleted on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("shardmq-wire-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Setup {
    encrypt: bool,
    size_max_bytes: u64,
    segment_bytes: u64,
    memory_budget_bytes: u64,
    strategy: QueueFullStrategy,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            encrypt: true,
            size_max_bytes: 512 << 20,
            segment_bytes: 1 << 20,
            // Tiny on purpose: nearly everything queued spills.
            memory_budget_bytes: 64 << 10,
            strategy: QueueFullStrategy::None,
        }
    }
}

fn start(dir: &Path, setup: Setup) -> Broker {
    Broker::start_config(|c| {
        c.disk_buffer = Some(BufferSpec {
            data_dir: dir.to_owned(),
            size_max_bytes: setup.size_max_bytes,
            segment_bytes: setup.segment_bytes,
        });
        c.encrypt_internal_traffic = setup.encrypt;
        c.memory_budget_bytes = setup.memory_budget_bytes;
        c.limits.queue = QueueLimit {
            length_max: None,
            strategy: setup.strategy,
            // The server derives it from memory_budget_bytes.
            ..QueueLimit::default()
        };
    })
}

fn persistent(o: &mut rumqttc::v5::MqttOptions) {
    o.set_clean_start(false);
    let mut p = ConnectProperties::new();
    p.session_expiry_interval = Some(300);
    o.set_connect_properties(p);
}

fn report(broker: &Broker, shard: usize) -> BufferReport {
    broker.handle().buffer_reports.lock().unwrap()[shard]
}

/// Waits (bounded) until shard's published report satisfies `f`.
async fn wait_report(broker: &Broker, shard: usize, f: impl Fn(&BufferReport) -> bool) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !f(&report(broker, shard)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "report never matched: {:?}",
            report(broker, shard)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 1 KiB payload: sequence number, the marker, padding.
fn payload(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend_from_slice(MARKER);
    p.resize(1024, b'.');
    p
}

fn seq(p: &[u8]) -> u32 {
    u32::from_be_bytes(p[..4].try_into().unwrap())
}

/// A persistent QoS 1 subscriber on `port` that goes offline.
async fn offline_subscriber(port: u16, id: &str) {
    let (mut sub, _) = Client::connect(port, id, persistent).await;
    sub.subscribe("fleet/#", q5(1)).await;
    sub.disconnect().await;
}

/// Publishes `n` 1 KiB QoS 1 messages and returns the PUBACK reasons.
async fn publish(port: u16, n: u32) -> Vec<String> {
    let (mut publ, _) = Client::connect(port, "publisher", |_| {}).await;
    let mut reasons = Vec::with_capacity(n as usize);
    let mut sent = 0;
    while reasons.len() < n as usize {
        // Keep a bounded window so PUBACKs are read while publishing.
        while sent < n && sent as usize - reasons.len() < 500 {
            publ.publish("fleet/truck", q5(1), false, &payload(sent))
                .await;
            sent += 1;
        }
        if let Ev::PubAck(r) = publ.next_matching(|e| matches!(e, Ev::PubAck(_))).await {
            reasons.push(r);
        }
    }
    publ.disconnect().await;
    reasons
}

/// Publishes `n` 1 KiB QoS 1 messages with the core codec (rumqttc treats
/// a PUBACK error reason as a broken connection) and returns the reasons.
async fn publish_raw(port: u16, n: u32) -> Vec<shardmq_core::codec::ReasonCode> {
    use shardmq_core::codec::{Packet, PacketId, Props, Publish, QoS};
    tokio::task::spawn_blocking(move || {
        let (mut c, _) = common::RawClient::connect_v5(port, "raw-publisher", None);
        (0..n)
            .map(|i| {
                c.send(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "fleet/truck".into(),
                    packet_id: PacketId::new(1),
                    properties: Props::default(),
                    payload: payload(i).into(),
                }));
                match c.recv() {
                    Some(Packet::PubAck(a)) => a.reason,
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            })
            .collect()
    })
    .await
    .unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "smq") {
                out.push(f.path());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backlog_past_the_memory_budget_arrives_complete_and_in_order() {
    // [MQTT-4.6.0-1] QoS 1 order. Issue 6 asks for 200k; 20k keeps a debug
    // run short. SHARDMQ_BACKLOG_N=200000 with --release runs the full one.
    let n_env = std::env::var("SHARDMQ_BACKLOG_N").ok();
    let n: u32 = n_env.and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = TempDir::new();
    let broker = start(&dir.0, Setup::default());
    offline_subscriber(broker.port("s0"), "durable").await;
    let reasons = publish(broker.port("s0"), n).await;
    assert!(reasons.iter().all(|r| r == "Success"), "all accepted");
    wait_report(&broker, 0, |r| r.disk.appended > u64::from(n) / 2).await;
    assert!(report(&broker, 0).memory_bytes <= 64 << 10);

    let (mut sub, present) = Client::connect(broker.port("s0"), "durable", persistent).await;
    assert!(present);
    let got = sub.publishes(n as usize).await;
    let seqs: Vec<u32> = got.iter().map(|g| seq(&g.1)).collect();
    assert_eq!(seqs, (0..n).collect::<Vec<u32>>(), "every one, in order");
    assert!(got.iter().all(|g| g.1 == payload(seq(&g.1))));
    // Everything drained: every record released.
    wait_report(&broker, 0, |r| r.disk.live_records == 0).await;
    assert_eq!(report(&broker, 0).disk.corrupt, 0);
    // Reclaimed segments past the two spares are deleted on the shard's
    // blocking pool, and their space is given back: the active segment and
    // the spares are all that stays.
    wait_report(&broker, 0, |r| {
        r.disk.reclaimed_segments > 3 && r.disk.bytes_used <= 3 << 20
    })
    .await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while segment_files(&dir.0).len() > 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reclaimed files never deleted: {:?}",
            segment_files(&dir.0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_backlog_moves_with_a_session_taken_over_on_another_shard() {
    const N: u32 = 2_000;
    let dir = TempDir::new();
    let broker = start(&dir.0, Setup::default());
    offline_subscriber(broker.port("s0"), "mover").await;
    publish(broker.port("s0"), N).await;
    wait_report(&broker, 0, |r| r.disk.appended > 0).await;
    // Reconnect on shard 1: shard 0 reads its records back and hands the
    // queue over; shard 1 spills what is over its own budget.
    let (mut sub, present) = Client::connect(broker.port("s1"), "mover", persistent).await;
    assert!(present);
    let seqs: Vec<u32> = sub
        .publishes(N as usize)
        .await
        .iter()
        .map(|g| seq(&g.1))
        .collect();
    assert_eq!(seqs, (0..N).collect::<Vec<u32>>());
    wait_report(&broker, 0, |r| r.disk.live_records == 0).await;
    wait_report(&broker, 1, |r| {
        r.disk.appended > 0 && r.disk.live_records == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_on_its_shard_mid_drain_gets_every_message_and_frees_every_record() {
    // Spilled messages in flight keep their records until acknowledged. A
    // client that drops mid-drain and resumes on the same shard must get the
    // unacknowledged ones again [MQTT-4.4.0-1], then the rest, in order
    // [MQTT-4.6.0-1], and every record must be released in the end.
    const N: u32 = 2_000;
    let dir = TempDir::new();
    let broker = start(&dir.0, Setup::default());
    let port = broker.port("s0");
    offline_subscriber(port, "resumer").await;
    publish(port, N).await;
    wait_report(&broker, 0, |r| r.disk.appended > u64::from(N) / 2).await;
    // Take 300 messages, acknowledge the first 100, leave (DISCONNECT keeps
    // the session: its expiry is 300 s).
    let first = tokio::task::spawn_blocking(move || {
        use shardmq_core::codec::{Disconnect, Packet, PubResponse};
        let (mut raw, ack) = common::RawClient::connect_v5(port, "resumer", Some(300));
        assert!(ack.session_present);
        let mut got = Vec::new();
        while got.len() < 300 {
            match raw.recv() {
                Some(Packet::Publish(p)) => got.push((seq(&p.payload), p.packet_id.unwrap())),
                Some(_) => {}
                None => panic!("closed after {} publishes", got.len()),
            }
        }
        for (_, id) in &got[..100] {
            raw.send(&Packet::PubAck(PubResponse::new(*id, ReasonCode::Success)));
        }
        raw.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        // Read until the broker closes, so it has read everything we sent
        // (closing with unread data would reset the connection instead).
        while raw.recv().is_some() {}
        got.into_iter().map(|(s, _)| s).collect::<Vec<u32>>()
    })
    .await
    .unwrap();
    assert_eq!(first, (0..300).collect::<Vec<u32>>());
    let (mut sub, present) = Client::connect(port, "resumer", persistent).await;
    assert!(present);
    let rest: Vec<u32> = sub
        .publishes((N - 100) as usize)
        .await
        .iter()
        .map(|g| seq(&g.1))
        .collect();
    assert_eq!(rest, (100..N).collect::<Vec<u32>>(), "none lost, in order");
    wait_report(&broker, 0, |r| r.disk.live_records == 0).await;
    assert_eq!(report(&broker, 0).disk.corrupt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_on_the_same_shard_releases_the_old_sessions_records() {
    // [MQTT-3.1.2-4] Clean Start discards the existing session, so its
    // spilled backlog goes too: every record released, nothing delivered.
    let dir = TempDir::new();
    let broker = start(&dir.0, Setup::default());
    let port = broker.port("s0");
    offline_subscriber(port, "fresh").await;
    publish(port, 500).await;
    wait_report(&broker, 0, |r| r.disk.live_records > 0).await;
    let (sub, present) = Client::connect(port, "fresh", |o| {
        o.set_clean_start(true);
    })
    .await;
    assert!(!present);
    wait_report(&broker, 0, |r| r.disk.live_records == 0).await;
    assert_eq!(report(&broker, 0).disk.corrupt, 0);
    sub.disconnect().await;
}

/// Spills `n` marked messages on shard 0 and returns every segment file's
/// bytes once they are sealed into the files.
async fn spilled_file_bytes(encrypt: bool, n: u32) -> Vec<u8> {
    let dir = TempDir::new();
    let broker = start(
        &dir.0,
        Setup {
            encrypt,
            memory_budget_bytes: 0,
            ..Setup::default()
        },
    );
    offline_subscriber(broker.port("s0"), "marker").await;
    publish(broker.port("s0"), n).await;
    // A report is published right after the tick's flush, so once it
    // counts every append, every block is sealed into its file.
    wait_report(&broker, 0, |r| r.disk.appended >= u64::from(n)).await;
    assert_eq!(report(&broker, 0).encrypted, encrypt);
    let mut all = Vec::new();
    for f in segment_files(&dir.0) {
        all.extend(fs::read(f).unwrap());
    }
    assert!(!all.is_empty(), "segment files exist");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_files_hold_the_payload_in_plaintext_only_when_encryption_is_disabled() {
    let plain = spilled_file_bytes(false, 100).await;
    assert!(contains(&plain, MARKER), "Disabled: plaintext on disk");
    let sealed = spilled_file_bytes(true, 100).await;
    assert!(!contains(&sealed, MARKER), "Enabled: no plaintext on disk");
    assert!(!contains(&sealed, b"fleet/truck"), "nor the topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_segment_is_counted_lost_and_delivery_goes_on() {
    use std::os::unix::fs::FileExt;
    const N: u32 = 300;
    let dir = TempDir::new();
    let broker = start(
        &dir.0,
        Setup {
            memory_budget_bytes: 0,
            ..Setup::default()
        },
    );
    offline_subscriber(broker.port("s0"), "victim").await;
    publish(broker.port("s0"), N).await;
    wait_report(&broker, 0, |r| r.disk.appended >= u64::from(N)).await;
    // Flip one byte inside the first block's body (segment header 32 B,
    // block header 8 B). The broker maps the file shared: it sees the write.
    let files = segment_files(&dir.0);
    let first = files.iter().min().unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(first)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 32 + 8 + 500).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, 32 + 8 + 500).unwrap();

    let (mut sub, _) = Client::connect(broker.port("s0"), "victim", persistent).await;
    // The first block's records are lost; everything after arrives in order.
    let first_seq = loop {
        if let Ev::Publish { payload, .. } =
            sub.next_matching(|e| matches!(e, Ev::Publish { .. })).await
        {
            break seq(&payload);
        }
    };
    assert!(first_seq > 0, "the damaged block was not delivered");
    let rest: Vec<u32> = sub
        .publishes((N - first_seq - 1) as usize)
        .await
        .iter()
        .map(|g| seq(&g.1))
        .collect();
    assert_eq!(rest, (first_seq + 1..N).collect::<Vec<u32>>());
    wait_report(&broker, 0, |r| r.disk.corrupt == u64::from(first_seq)).await;
    // Delivery goes on.
    let (publ, _) = Client::connect(broker.port("s0"), "after", |_| {}).await;
    publ.publish("fleet/after", q5(1), false, &payload(N)).await;
    let got = sub.publishes(1).await;
    assert_eq!(got[0].0, "fleet/after");
}

/// Two 64 KiB segments per shard (2 shards): room for about 120 messages
/// of 1 KiB on shard 0, of which one session may take a quarter
/// (`SESSION_SHARES`), nothing kept in memory.
fn tiny(strategy: QueueFullStrategy) -> Setup {
    Setup {
        size_max_bytes: 4 * (64 << 10),
        segment_bytes: 64 << 10,
        memory_budget_bytes: 0,
        strategy,
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_with_strategy_none_pushes_the_v5_publisher_back_with_quota_exceeded() {
    // v5 §3.4.2.1 0x97 Quota exceeded; docs/BUFFER.md "When the buffer is full".
    const N: u32 = 300;
    let dir = TempDir::new();
    let broker = start(&dir.0, tiny(QueueFullStrategy::None));
    offline_subscriber(broker.port("s0"), "full").await;
    let reasons = publish_raw(broker.port("s0"), N).await;
    let accepted = reasons
        .iter()
        .filter(|r| **r == ReasonCode::Success)
        .count() as u32;
    let quota = reasons
        .iter()
        .filter(|r| **r == ReasonCode::QuotaExceeded)
        .count() as u32;
    // One session's share of shard 0's 128 KiB: about 30 records of 1 KiB.
    assert!(
        accepted > 20 && accepted < 40 && quota > 250,
        "{accepted} accepted, {quota} refused"
    );
    assert_eq!(accepted + quota, N);
    // Once full, it stays full: the accepted ones are the first ones.
    assert!(reasons[..accepted as usize]
        .iter()
        .all(|r| *r == ReasonCode::Success));
    wait_report(&broker, 0, |r| r.dropped_queue_full == u64::from(quota)).await;
    let r = report(&broker, 0);
    assert!(r.disk.bytes_used <= 2 * (64 << 10), "size bound: {r:?}");
    // The accepted ones, in order.
    let (mut sub, _) = Client::connect(broker.port("s0"), "full", persistent).await;
    let seqs: Vec<u32> = sub
        .publishes(accepted as usize)
        .await
        .iter()
        .map(|g| seq(&g.1))
        .collect();
    assert_eq!(seqs, (0..accepted).collect::<Vec<u32>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_with_drop_oldest_drops_and_counts_the_oldest_and_keeps_the_newest() {
    const N: u32 = 300;
    let dir = TempDir::new();
    let broker = start(&dir.0, tiny(QueueFullStrategy::DropOldest));
    offline_subscriber(broker.port("s0"), "lossy").await;
    let reasons = publish(broker.port("s0"), N).await;
    assert!(reasons.iter().all(|r| r == "Success"));
    // Reports come on the shard's tick: wait for one that has seen every
    // publish, so `kept` is final.
    wait_report(&broker, 0, |r| {
        r.dropped_queue_full > 0 && r.dropped_queue_full + r.disk.live_records == u64::from(N)
    })
    .await;
    let r = report(&broker, 0);
    assert!(r.disk.bytes_used <= 2 * (64 << 10), "size bound: {r:?}");
    let kept = r.disk.live_records;
    let (mut sub, _) = Client::connect(broker.port("s0"), "lossy", persistent).await;
    let seqs: Vec<u32> = sub
        .publishes(kept as usize)
        .await
        .iter()
        .map(|g| seq(&g.1))
        .collect();
    assert_eq!(*seqs.last().unwrap(), N - 1, "the newest is kept");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(
        report(&broker, 0).dropped_queue_full + kept,
        u64::from(N),
        "every message delivered or counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_deletes_the_buffer_files_and_a_restart_starts_empty() {
    let dir = TempDir::new();
    {
        let broker = start(
            &dir.0,
            Setup {
                memory_budget_bytes: 0,
                ..Setup::default()
            },
        );
        offline_subscriber(broker.port("s0"), "ephemeral").await;
        publish(broker.port("s0"), 50).await;
        wait_report(&broker, 0, |r| {
            r.disk.appended >= 50 && r.disk.segments >= 2
        })
        .await;
        assert!(!segment_files(&dir.0).is_empty(), "the backlog spilled");
        // Dropping the broker is a graceful stop.
    }
    assert_eq!(
        segment_files(&dir.0),
        Vec::<PathBuf>::new(),
        "a graceful stop leaves no segment files"
    );
    // What a crash leaves behind is deleted at the next start.
    fs::write(dir.0.join("shard-0").join("seg-0000-0000000001.smq"), b"x").unwrap();
    let broker = start(&dir.0, Setup::default());
    wait_report(&broker, 0, |r| r.open).await;
    assert!(
        segment_files(&dir.0).is_empty(),
        "leftovers deleted at open"
    );
    let r = report(&broker, 0);
    assert_eq!((r.disk.segments, r.disk.live_records), (0, 0));
    // Sessions do not survive a restart either: nothing to deliver.
    let (mut sub, present) = Client::connect(broker.port("s0"), "ephemeral", persistent).await;
    assert!(!present);
    sub.expect_no_publish(Duration::from_millis(300)).await;
}
