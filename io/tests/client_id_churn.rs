//! Nothing in the broker grows with the number of client ids it has ever
//! seen: rounds of thousands of new ids (each connects, subscribes to its
//! own topic, leaves) end with the registry, the subscription index and
//! the sessions back where they started, and the process's memory flat.
//! Through the binary, as an operator sees it: its metrics and its RSS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, http_get, start, temp_file, wait_ready, RawClient, WAIT};
use shardmq_core::codec::{Disconnect, Packet, QoS, ReasonCode};

const ROUNDS: usize = 4;
const IDS_PER_ROUND: usize = 5_000;
const THREADS: usize = 4;

/// The sum of a metric's samples in the text exposition format.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// One id's whole life: CONNECT, SUBSCRIBE to a topic only it uses, and
/// DISCONNECT. Every fourth asks for a 1 s session expiry, so offline
/// sessions come and go too.
fn one_client(port: u16, id: &str, n: usize) {
    let expiry = n.is_multiple_of(4).then_some(1);
    let (mut c, ack) = RawClient::connect_v5(port, id, expiry);
    assert!(!ack.reason.is_error(), "{id}: CONNACK {:?}", ack.reason);
    c.subscribe(&format!("churn/{id}/+"), QoS::AtLeastOnce);
    c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    // The broker closes after a DISCONNECT: wait for it, so the round
    // ends with every connection gone.
    assert!(c.recv().is_none(), "{id}: still open after DISCONNECT");
}

fn round(ports: &[u16], round: usize) {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let ports = ports.to_vec();
            std::thread::spawn(move || {
                for n in (t..IDS_PER_ROUND).step_by(THREADS) {
                    let id = format!("churn-{round}-{n}");
                    one_client(ports[n % ports.len()], &id, n);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Waits until the broker holds no session, no client id and only the
/// self-test probes in each shard's index (one per shard, each shard
/// replicating all of them).
fn settle(metrics: SocketAddr, shards: f64) {
    let deadline = Instant::now() + WAIT + Duration::from_secs(5);
    loop {
        let (sessions, ids, index) = (
            metric(metrics, "shardmq_sessions"),
            metric(metrics, "shardmq_registry_client_ids"),
            metric(metrics, "shardmq_index_entries"),
        );
        if sessions == 0.0 && ids == 0.0 && index == shards * shards {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {sessions} sessions, {ids} client ids, {index} index entries"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn client_ids_that_came_and_went_leave_nothing_behind() {
    let metrics_port = free_port();
    let config = serde_json::json!({
        "cardinality": {"frontend": {"workers": 2}},
        "diagnostics": {"metrics": {"prometheusPort": metrics_port}},
        "listeners": [{"name": "churn", "ports": [
            {"port": 0, "bindAddress": "127.0.0.1"},
            {"port": 0, "bindAddress": "127.0.0.1"}]}]});
    let path = temp_file("churn.json", &config.to_string());
    let (broker, ports) = start(&path, 2);
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    wait_ready(metrics);
    let pid = broker.0.id();

    // The first round warms the allocator and every table to its working
    // size; from then on, 15,000 more ids may not move the RSS. Before the
    // fix each id left ~9.9 KB: 145 MiB over these rounds.
    let mut rss = Vec::new();
    for r in 0..ROUNDS {
        round(&ports, r);
        settle(metrics, 2.0);
        rss.push(vm_rss_kib(pid));
    }
    let growth_kib = rss[ROUNDS - 1].saturating_sub(rss[0]);
    let per_id = growth_kib as f64 * 1024.0 / ((ROUNDS - 1) * IDS_PER_ROUND) as f64;
    eprintln!("RSS by round (KiB): {rss:?}; {per_id:.0} bytes per id after the first round");
    assert!(
        growth_kib < 24 * 1024,
        "RSS grew {growth_kib} KiB over {} ids ({per_id:.0} bytes each): {rss:?}",
        (ROUNDS - 1) * IDS_PER_ROUND
    );
}
