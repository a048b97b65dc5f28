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
    // What it counts against retainedMessages.maxSize: payload (7) + topic
    // (3) + publisher's client id (5) + 256 per message (`memory_cost`).
    assert_eq!(m("shardmq_retained_bytes", &[]), 7.0 + 3.0 + 5.0 + 256.0);
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

/// A connection from `from` (a loopback address) to the endpoint.
fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = (from, 0).into();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

#[test]
fn a_request_trickled_a_byte_at_a_time_is_cut_off() {
    // Each byte came within the 5 s read timeout, so one client sending a
    // byte every few seconds held a slot for as long as it liked (eight
    // held them all, and /healthz answered 503). The whole exchange now
    // has 5 s.
    use std::io::Write;
    let broker = Broker::start();
    let server = endpoint(&broker);
    let mut s = connect_from([127, 0, 0, 1], server.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let give_up = Instant::now() + 3 * WAIT;
    let cut = loop {
        std::thread::sleep(Duration::from_millis(500));
        if s.write_all(b"X").is_err() || Instant::now() > give_up {
            break Instant::now() <= give_up;
        }
        // The server's 400 and close: reads see them, writes may not yet.
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let answered = std::io::Read::read(&mut s, &mut buf).is_ok();
        s.set_nonblocking(false).unwrap();
        if answered {
            break true;
        }
    };
    assert!(cut, "a request that never ends held its connection");
    server.stop();
}

#[test]
fn one_peer_cannot_take_every_slot() {
    let broker = Broker::start();
    let server = endpoint(&broker);
    let addr = server.addr;
    wait_ready(addr);
    // Half the slots, held by connections that send nothing...
    let held: Vec<_> = (0..4).map(|_| connect_from([127, 0, 0, 3], addr)).collect();
    // ...then this peer is told the endpoint is busy...
    let mut more = connect_from([127, 0, 0, 3], addr);
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut more, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // ...while another peer still gets its answer.
    let mut probe = connect_from([127, 0, 0, 4], addr);
    std::io::Write::write_all(&mut probe, b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut probe, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    drop(held);
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

fn persistent(o: &mut rumqttc::v5::MqttOptions) {
    o.set_clean_start(false);
    let mut p = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
    p.session_expiry_interval = Some(300);
    o.set_connect_properties(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_tls_failures_and_certificates_are_counted_by_cause() {
    use shardmq_auth::test_pki::Pki;
    use shardmq_core::limits::{QueueFullStrategy, QueueLimit};
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1"]);
    let cert = Arc::new(
        shardmq_auth::ReloadableCert::from_pem(&server.bundle_pem, &server.key_pem).unwrap(),
    );
    let tls = shardmq_auth::server_config(cert.clone(), None).unwrap();
    let broker = Broker::start_config(|c| {
        c.limits.queue = QueueLimit {
            length_max: std::num::NonZeroU32::new(3),
            strategy: QueueFullStrategy::None,
            ..QueueLimit::default()
        };
        let mut spec = shardmq_io::ListenerSpec::plain("tls", "127.0.0.1:0".parse().unwrap(), None);
        spec.security.tls = Some(tls);
        spec.security.cert = Some(cert.clone());
        c.listeners.push(spec);
    });
    let server = endpoint(&broker);
    // Two offline sessions: one whose queue (3) overflows, one whose only
    // message expires before it comes back.
    let (mut full, _) = Client::connect(broker.port("s1"), "full", persistent).await;
    full.subscribe("d/#", q5(1)).await;
    full.disconnect().await;
    let (mut late, _) = Client::connect(broker.port("s1"), "late", persistent).await;
    late.subscribe("e/#", q5(1)).await;
    late.disconnect().await;
    let (mut publisher, _) = Client::connect(broker.port("s0"), "d-pub", |_| {}).await;
    // QoS 1 (an offline session takes no QoS 0); from the other shard, so
    // the publisher's PUBACK does not carry the subscriber's refusal.
    for _ in 0..5 {
        publisher.publish("d/x", q5(1), false, b"x").await;
    }
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("e/x", q5(1), false, b"soon gone".to_vec(), props)
        .await
        .unwrap();
    publisher
        .next_matching(|e| matches!(e, Ev::PubAck(_)))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut late, present) = Client::connect(broker.port("s1"), "late", persistent).await;
    assert!(present);
    late.expect_no_publish(Duration::from_millis(300)).await;
    // Garbage on the TLS port instead of a ClientHello.
    let tls_port = broker.port("tls");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let _ = std::io::Read::read(&mut raw, &mut [0u8; 64]);

    let addr = server.addr;
    let samples = tokio::task::spawn_blocking(move || {
        scrape_until(addr, |s| {
            sum(s, "shardmq_messages_dropped_total", &[]) >= 3.0
                && sum(s, "shardmq_tls_handshake_failures_total", &[]) >= 1.0
        })
    })
    .await
    .unwrap();
    let m = |name: &str, labels: &[(&str, &str)]| sum(&samples, name, labels);
    assert_eq!(
        m("shardmq_messages_dropped_total", &[("cause", "queue_full")]),
        2.0
    );
    assert_eq!(
        m("shardmq_messages_dropped_total", &[("cause", "expired")]),
        1.0
    );
    assert_eq!(
        m(
            "shardmq_messages_dropped_total",
            &[("cause", "drop_oldest")]
        ),
        0.0
    );
    assert_eq!(m("shardmq_queued_messages", &[]), 3.0);
    assert_eq!(m("shardmq_sessions", &[("state", "offline")]), 1.0);
    let tls_failures: Vec<_> = samples
        .iter()
        .filter(|s| s.metric == "shardmq_tls_handshake_failures_total")
        .map(|s| (s.labels.get("cause").unwrap_or("").to_owned(), value(s)))
        .collect();
    assert_eq!(tls_failures.len(), 1, "{tls_failures:?}");
    assert_eq!(tls_failures[0].0, "not_tls", "{tls_failures:?}");
    let not_after = m(
        "shardmq_certificate_not_after_timestamp_seconds",
        &[("listener", "tls")],
    );
    let in_days = (not_after
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64())
        / 86_400.0;
    assert!((29.0..=31.0).contains(&in_days), "{in_days} days");
    publisher.disconnect().await;
    late.disconnect().await;
    server.stop();
}
