//! The metrics endpoint read by a real Prometheus text parser
//! (prometheus-parse) after known traffic from real clients (rumqttc): the
//! counts are the traffic's. Also /healthz, /readyz and what a stranger's
//! garbage gets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get as get, http_request as http, q5, wait_ready, Broker, Client, Ev, WAIT};
use prometheus_parse::{Sample, Scrape, Value};
use shardmq_io::telemetry::http::{serve, MetricsServer};

fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines)
        .expect("valid exposition format")
        .samples
}

fn value(s: &Sample) -> f64 {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

/// The sum of `metric` over the samples whose labels include `labels`.
fn sum(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

/// Scrapes until `done` holds (snapshots are once a second), bounded.
fn scrape_until(addr: SocketAddr, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = scrape(addr);
        if done(&samples) || Instant::now() > deadline {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn endpoint(broker: &Broker) -> MetricsServer {
    serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&broker.handle().telemetry),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_that_was_sent() {
    let broker = Broker::start();
    let server = endpoint(&broker);
    let (mut sub, _) = Client::connect(broker.port("s1"), "m-sub", |_| {}).await;
    sub.subscribe("m/#", q5(1)).await;
    let (mut publisher, _) = Client::connect(broker.port("s0"), "m-pub", |_| {}).await;
    // 10 x QoS 0, 5 x QoS 1, 3 x QoS 2; 10 payload bytes each.
    for (qos, n) in [(0u8, 10), (1, 5), (2, 3)] {
        for _ in 0..n {
            publisher
                .publish("m/t", q5(qos), false, b"0123456789")
                .await;
        }
    }
    let got = sub.publishes(18).await;
    assert_eq!(got.len(), 18);
    // A retained message of 7 bytes, and a publish under $SYS the broker
    // refuses whatever the (absent) policy says (QoS 0: rumqttc drops the
    // connection on a PUBACK error; the refusal shows in the metrics).
    publisher.publish("r/x", q5(1), true, b"retain!").await;
    publisher
        .publish("$SYS/broker/uptime", q5(0), false, b"forged")
        .await;
    let mut acks = Vec::new();
    while acks.len() < 9 {
        if let Ev::PubAck(reason) = publisher
            .next_matching(|e| matches!(e, Ev::PubAck(_)))
            .await
        {
            acks.push(reason);
        }
    }
    assert!(
        acks.iter()
            .all(|a| a == "Success" || a == "NoMatchingSubscribers"),
        "{acks:?}"
    );

    let addr = server.addr;
    let samples = tokio::task::spawn_blocking(move || {
        scrape_until(addr, |s| {
            sum(s, "shardmq_messages_received_total", &[]) >= 19.0
                && sum(s, "shardmq_retained_messages", &[]) >= 1.0
                && sum(s, "shardmq_messages_delivered_total", &[]) >= 18.0
                && sum(s, "shardmq_authorization_denials_total", &[]) >= 1.0
        })
    })
    .await
    .unwrap();
    let m = |name: &str, labels: &[(&str, &str)]| sum(&samples, name, labels);
    // Received from clients, by QoS (the retained one is QoS 1; the
    // refused $SYS publish never got past its permissions).
    assert_eq!(m("shardmq_messages_received_total", &[("qos", "0")]), 10.0);
    assert_eq!(m("shardmq_messages_received_total", &[("qos", "1")]), 6.0);
    assert_eq!(m("shardmq_messages_received_total", &[("qos", "2")]), 3.0);
    assert_eq!(
        m("shardmq_messages_received_bytes_total", &[("qos", "0")]),
        100.0
    );
    assert_eq!(
        m("shardmq_messages_received_bytes_total", &[("qos", "1")]),
        57.0
    );
    assert_eq!(
        m("shardmq_messages_received_bytes_total", &[("qos", "2")]),
        30.0
    );
    // Delivered with min(published, granted 1).
    assert_eq!(m("shardmq_messages_delivered_total", &[("qos", "0")]), 10.0);
    assert_eq!(m("shardmq_messages_delivered_total", &[("qos", "1")]), 8.0);
    assert_eq!(m("shardmq_messages_delivered_total", &[("qos", "2")]), 0.0);
    assert_eq!(m("shardmq_messages_delivered_bytes_total", &[]), 180.0);
    assert_eq!(m("shardmq_messages_dropped_total", &[]), 0.0);
    // Per listener: one client each on s0 and s1.
    for l in ["s0", "s1"] {
        assert_eq!(m("shardmq_connections", &[("listener", l)]), 1.0, "{l}");
        assert_eq!(
            m("shardmq_connections_accepted_total", &[("listener", l)]),
            1.0
        );
        assert!(m("shardmq_received_bytes_total", &[("listener", l)]) > 0.0);
        assert!(m("shardmq_sent_bytes_total", &[("listener", l)]) > 0.0);
    }
    assert_eq!(m("shardmq_connections", &[("listener", "any")]), 0.0);
    assert_eq!(
        m(
            "shardmq_authorization_denials_total",
            &[("listener", "s0"), ("action", "publish")]
        ),
        1.0
    );
    assert_eq!(m("shardmq_sessions", &[("state", "online")]), 2.0);
    assert_eq!(m("shardmq_subscriptions", &[]), 1.0);
    assert_eq!(m("shardmq_retained_messages", &[]), 1.0);
    assert_eq!(m("shardmq_retained_bytes", &[]), 7.0);
    // Deliveries crossed the mesh: the subscriber is on the other shard.
    assert!(m("shardmq_mesh_messages_sent_total", &[("shard", "0")]) >= 18.0);
    assert_eq!(m("shardmq_ready", &[]), 1.0);
    assert!(m("process_resident_memory_bytes", &[]) > 0.0);
    // Every family is announced, with or without samples yet.
    let body = get(addr, "/metrics").1;
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    for (name, _, _) in shardmq_io::telemetry::render::FAMILIES {
        assert!(body.contains(&format!("# TYPE {name} ")), "{name} missing");
        assert!(parsed.docs.contains_key(*name), "{name} has no HELP");
    }
    publisher.disconnect().await;
    sub.disconnect().await;
    server.stop();
}

#[test]
fn health_ready_and_garbage() {
    let broker = Broker::start();
    let server = endpoint(&broker);
    let addr = server.addr;
    wait_ready(addr);
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(addr, b"\x00\xff\xfe garbage\r\n\r\n").0, 400);
    // A head that never ends is cut off at the bound, not buffered.
    let huge = vec![b'a'; 64 * 1024];
    assert_eq!(http(addr, &huge).0, 400);
    // A stuck shard makes /readyz fail: stop the broker, whose shards then
    // stop ticking, and the endpoint (still up) says which.
    drop(broker);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(addr, "/readyz");
        if status == 503 {
            assert!(body.contains("no heartbeat"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready after the shards stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(addr, "/healthz").0, 200);
    server.stop();
}

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn every_metric_is_documented_and_the_dashboard_uses_only_real_ones() {
    use shardmq_io::telemetry::render::FAMILIES;
    let doc = repo_file("docs/METRICS.md");
    let rows: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("shardmq_") || n.starts_with("process_"))
        .collect();
    for (name, kind, _) in FAMILIES {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} is not in docs/METRICS.md"));
        assert!(
            row.contains(&format!("| {kind} |")),
            "{name}: docs say another type"
        );
    }
    for row in &rows {
        assert!(
            FAMILIES.iter().any(|(n, _, _)| n == row),
            "docs/METRICS.md lists {row}, which does not exist"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/shardmq.json")).unwrap();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("shardmq_") || word.starts_with("process_") {
                    assert!(
                        FAMILIES.iter().any(|(n, _, _)| *n == word),
                        "dashboard uses {word}"
                    );
                    used += 1;
                }
            }
        }
    }
    assert!(used >= 20, "the dashboard shows {used} metrics");
}
