//! Live reconfiguration and the operator's view through the real binary:
//! SIGHUP adds a TLS listener, removes a plain one and tightens an
//! authorization rule while a publisher and a subscriber on an untouched
//! listener keep going without loss; an invalid file is rejected whole;
//! `--check-config`; `$SYS` topics seen by mosquitto_sub; /readyz.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, q5, Client, Ev, Log, Proc, BIN, WAIT};
use shardmq_auth::test_pki::Pki;

fn broker(config: &Path, listeners: usize) -> (Proc, Vec<u16>, Log) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    common::spawn_logged(cmd, listeners)
}

fn sighup(proc: &Proc) {
    let pid = proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
}

/// Waits (bounded) until `n` log lines contain every one of `parts`.
fn wait_lines(log: &Log, parts: &[&str], n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines: Vec<String> = log
            .lines()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{n} lines with {parts:?} expected; log:\n{}",
            log.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
}

fn rules(topics: &[&str]) -> serde_json::Value {
    serde_json::json!({"name": "rules", "authorizationPolicies": {"rules": [{
    "principals": {"clientIds": ["g-sub"]},
    "brokerResources": [
        {"method": "Connect"},
        {"method": "Publish", "topics": topics},
        {"method": "Subscribe", "topics": topics}
    ]}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_tls_removes_plain_and_tightens_authorization_while_others_run_on() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1"]);
    let crt = pki.write("server.crt", &server.bundle_pem);
    let key = pki.write("server.key", &server.key_pem);
    let root = pki.write("root.crt", &pki.server_root.cert_pem);
    let port = |name: &str, extra: serde_json::Value| {
        let mut p = serde_json::json!({"port": 0, "bindAddress": "127.0.0.1"});
        if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(extra.clone());
        }
        serde_json::json!({"name": name, "ports": [p]})
    };
    let none = serde_json::json!({});
    let guarded = serde_json::json!({"authorizationRef": "rules"});
    let v1 = serde_json::json!({
        "cardinality": {"frontend": {"workers": 2}},
        "listeners": [port("steady", none.clone()), port("old", none.clone()), port("guarded", guarded.clone())],
        "authorizations": [rules(&["g/#", "open/#"])]
    });
    let path = pki.write("broker.json", &v1.to_string());
    let (proc, ports, log) = broker(&path, 3);
    let (steady, old, guarded_port) = (ports[0], ports[1], ports[2]);

    // A subscriber and a publisher on the listener nothing changes.
    let (mut sub, _) = Client::connect(steady, "steady-sub", |_| {}).await;
    sub.subscribe("steady/#", q5(1)).await;
    let (publisher, _) = Client::connect(steady, "steady-pub", |_| {}).await;
    // A client of the listener that goes away, and one whose rules tighten.
    let (mut leaving, _) = Client::connect(old, "leaving", |_| {}).await;
    let (mut g, _) = Client::connect(guarded_port, "g-sub", |_| {}).await;
    g.subscribe("g/#", q5(1)).await;
    g.subscribe("open/#", q5(1)).await;

    const N: usize = 300;
    let feeder = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish(
                    &format!("steady/{i}"),
                    q5(1),
                    false,
                    i.to_string().as_bytes(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publisher
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // v2: "old" removed, a TLS listener added, "guarded" may no longer use open/#.
    let tls = serde_json::json!({"tls": {"mode": "Manual", "manual": {
        "certFile": crt.display().to_string(), "keyFile": key.display().to_string()}}});
    let v2 = serde_json::json!({
        "cardinality": {"frontend": {"workers": 2}},
        "listeners": [port("steady", none.clone()), port("guarded", guarded), port("secure", tls)],
        "authorizations": [rules(&["g/#"])]
    });
    std::fs::write(&path, v2.to_string()).unwrap();
    sighup(&proc);
    wait_lines(&log, &["SIGHUP: configuration reloaded"], 1);
    // Each of the 2 shards removed "old" and bound "secure".
    wait_lines(&log, &["listener removed", "old#0"], 2);
    let added = wait_lines(&log, &["listener added", "secure#0"], 2);
    let secure: u16 = field(&added[0], "addr")
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    wait_lines(
        &log,
        &["subscriptions no longer allowed were removed", "open/#"],
        1,
    );

    // The removed listener's client was told 0x8B and nobody else was.
    let ev = leaving
        .next_matching(|e| matches!(e, Ev::Disconnect(_) | Ev::Closed(_)))
        .await;
    // rumqttc reports the DISCONNECT as an event or as the reason it closed.
    assert!(format!("{ev:?}").contains("ServerShuttingDown"), "{ev:?}");
    // The socket closes asynchronously (io_uring tears down its pending
    // accept after the log line): wait for it, bounded.
    let deadline = std::time::Instant::now() + common::WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", old)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "old port still accepts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The new TLS listener serves clients that trust its certificate.
    let (mut watcher, _) = Client::connect(steady, "watcher", |_| {}).await;
    watcher.subscribe("secure/#", q5(1)).await;
    let out = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &secure.to_string(),
        ])
        .args(["-t", "secure/hello", "-m", "over tls", "--cafile"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(watcher.publishes(1).await[0].1, b"over tls");

    // The tightened client stays connected; its open/# subscription is gone.
    let feeder_done = feeder.await.unwrap();
    feeder_done
        .publish("open/1", q5(1), false, b"not for g")
        .await;
    feeder_done.publish("g/1", q5(1), false, b"for g").await;
    let got = g.publishes(1).await;
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_slice()),
        ("g/1", &b"for g"[..])
    );

    // Every message on the untouched listener arrived, in order, and its
    // clients were never disconnected.
    let steady_msgs = sub.publishes(N).await;
    let payloads: Vec<String> = steady_msgs
        .iter()
        .map(|(_, p, _, _)| String::from_utf8_lossy(p).into_owned())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    assert!(!log
        .lines()
        .iter()
        .any(|l| l.contains("client disconnected") && l.contains("steady-")));
}

#[test]
fn an_invalid_config_on_sighup_is_rejected_whole_and_the_running_one_stays() {
    let pki = Pki::new();
    let good = serde_json::json!({"listeners": [
        {"name": "a", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]}]});
    let path = pki.write("broker.json", &good.to_string());
    let (proc, ports, log) = broker(&path, 1);
    // A new listener is fine, but an authorization reference is dangling
    // and a certificate file is missing: nothing of it may apply.
    let bad = serde_json::json!({"listeners": [
        {"name": "a", "ports": [{"port": 0, "bindAddress": "127.0.0.1", "authorizationRef": "nope"}]},
        {"name": "b", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]}]});
    std::fs::write(&path, bad.to_string()).unwrap();
    sighup(&proc);
    wait_lines(&log, &["the new configuration was rejected"], 1);
    let start_up = Command::new(BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let check_err = String::from_utf8_lossy(&start_up.stderr).into_owned();
    let first = check_err
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("shardmq: ");
    assert!(first.contains("authorizationRef"), "{check_err}");
    // The same precise error as --check-config (and so start-up) gives.
    wait_lines(&log, &[first], 1);
    assert!(!log.lines().iter().any(|l| l.contains("listener added")));
    // The running listener still serves.
    let (_c, ack) = common::RawClient::connect_v5(ports[0], "still-here", None);
    assert_eq!(ack.reason, shardmq_core::codec::ReasonCode::Success);
}

#[test]
fn check_config_validates_a_file_and_exits() {
    let pki = Pki::new();
    let good = pki.write(
        "good.json",
        &serde_json::json!({"listeners": [{"name": "a", "ports": [{"port": 1883}]}]}).to_string(),
    );
    let out = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    let bad = pki.write(
        "bad.json",
        r#"{"listeners": [{"name": "a", "ports": [{"port": 70000}]}], "diagnostics": {"sys": {"intervalSeconds": -1}}}"#,
    );
    let check = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let run = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert_eq!(run.status.code(), Some(2));
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert!(
        check_err.contains("listeners[0].ports[0].port"),
        "{check_err}"
    );
    assert!(
        check_err.contains("diagnostics.sys.intervalSeconds"),
        "{check_err}"
    );
    // Exactly what a start with the same file prints.
    assert_eq!(check_err, String::from_utf8_lossy(&run.stderr));
}

#[test]
fn sys_topics_reach_mosquitto_sub_and_clients_cannot_forge_them() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let pki = Pki::new();
    let metrics = free_port();
    let passwd = pki.write(
        "passwd",
        &shardmq_auth::test_pki::password_line("alice", "secret"),
    );
    let config = serde_json::json!({
        "cardinality": {"frontend": {"workers": 2}},
        "diagnostics": {"sys": {"intervalSeconds": 1}, "metrics": {"prometheusPort": metrics}},
        "listeners": [
            {"name": "a", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]},
            {"name": "pw", "ports": [{"port": 0, "bindAddress": "127.0.0.1", "authenticationRef": "passwords"}]}],
        "authentications": [{"name": "passwords", "authenticationMethods": [
            {"method": "UsernamePassword", "usernamePasswordSettings": {"passwordFile": passwd.display().to_string()}}]}]});
    let path = pki.write("broker.json", &config.to_string());
    let (_proc, ports, _log) = broker(&path, 2);
    let port = ports[0].to_string();
    // A wrong password on the password port.
    let refused = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &ports[1].to_string(),
            "-u",
            "alice",
            "-P",
            "wrong",
        ])
        .args(["-t", "x", "-m", "x"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], metrics).into();
    common::wait_ready(metrics);
    // A client tries to forge a figure (mosquitto_pub exits 0 whatever
    // the PUBACK says); the broker's own stays and the refusal is counted.
    let forged = Command::new("mosquitto_pub")
        .args(["-V", "mqttv5", "-p", &port, "-q", "1", "-r"])
        .args(["-t", "$SYS/broker/version", "-m", "forged"])
        .status()
        .unwrap();
    assert!(forged.success());
    let sub = |topic: &str, count: &str| {
        Command::new("mosquitto_sub")
            .args([
                "-V", "mqttv5", "-p", &port, "-v", "-t", topic, "-C", count, "-W", "10",
            ])
            .output()
            .unwrap()
    };
    let out = sub("$SYS/#", "60");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for topic in [
        "$SYS/broker/version shardmq version ",
        "$SYS/broker/uptime ",
        "$SYS/broker/clients/connected ",
        "$SYS/broker/messages/received ",
        "$SYS/broker/load/messages/received/1min ",
        "$SYS/broker/subscriptions/count ",
    ] {
        assert!(text.contains(topic), "no {topic:?} in:\n{text}");
    }
    assert!(!text.contains("forged"), "{text}");
    // `#` does not match `$SYS` [MQTT-4.7.2-1]: this subscriber sees only
    // the ordinary message, though $SYS is republished every second.
    let plain = std::thread::spawn({
        let port = port.clone();
        move || {
            Command::new("mosquitto_sub")
                .args([
                    "-V", "mqttv5", "-p", &port, "-v", "-t", "#", "-C", "1", "-W", "10",
                ])
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let st = Command::new("mosquitto_pub")
        .args(["-p", &port, "-t", "plain/x", "-m", "hello"])
        .status()
        .unwrap();
    assert!(st.success());
    let got = plain.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "plain/x hello");
    let (status, body) = common::http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "shardmq_authorization_denials_total{listener=\"a#0\",action=\"publish\"} 1",
        "shardmq_authentication_denials_total{listener=\"pw#0\"} 1",
        "shardmq_connections_refused_total{listener=\"pw#0\",reason=\"bad_username_or_password\"} 1",
    ] {
        assert!(body.contains(line), "no {line} in:\n{body}");
    }
}

#[test]
fn systemd_hears_ready_then_watchdog_pets_while_ready() {
    use std::os::unix::net::UnixDatagram;
    let pki = Pki::new();
    let socket_path = pki.dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(WAIT)).unwrap();
    let config = serde_json::json!({"listeners": [
        {"name": "a", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]}]});
    let path = pki.write("broker.json", &config.to_string());
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let (mut proc, _ports, _log) = common::spawn_logged(cmd, 1);
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while heard
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 2
    {
        let n = systemd
            .recv(&mut buf)
            .expect("a notification within the bound");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(heard[0], "READY=1", "{heard:?}");
    assert!(proc.terminate().success());
    let mut last = String::new();
    while let Ok(n) = systemd.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
        if last == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(last, "STOPPING=1");
}
