//! The `shardmq` binary as a user runs it: config files (good, bad, AIO
//! fragments), the default config, the seed scenario with Debian's
//! mosquitto_pub/mosquitto_sub on two listener ports, graceful shutdown, and
//! a process that is stopped and continued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardmq_core::codec::{Packet, ReasonCode};

use common::{start, temp_file, BIN};

#[test]
fn print_default_config_prints_json_that_loads() {
    let out = Command::new(BIN)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let loaded = shardmq_core::config::Config::from_json_str(&text).unwrap();
    assert_eq!(loaded.config, shardmq_core::config::Config::default());
}

#[test]
fn bad_config_exits_non_zero_with_one_line_per_problem() {
    let path = temp_file(
        "bad.json",
        r#"{"advanced":{"clients":{"maxSesionExpirySeconds":5}},"memoryProfile":"Huge",
            "listeners":[{"name":"a","ports":[{"port":1883,"authenticationRef":"nope"}]}]}"#,
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("maxSesionExpirySeconds"), "{err}");
    assert!(err.contains("memoryProfile"), "{err}");
    assert!(
        err.contains("listeners[0].ports[0].authenticationRef"),
        "{err}"
    );
    assert!(err.lines().count() >= 3, "{err}");
}

/// Starts the binary on `config` with no persistence key in reach, expects
/// it to refuse, and returns what it printed on stderr.
fn refused_at_start(config: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env_remove("SHARDMQ_PERSISTENCE_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

/// A persisted retained set whose per-shard share could outgrow the log
/// format (4 GiB, twice the set before compaction) is refused at load,
/// naming the field, rather than stalling acknowledgements at run time.
#[test]
fn persisted_retained_messages_over_the_log_bound_are_refused() {
    let path = temp_file(
        "persistence-big.json",
        r#"{"persistence":{"maxSize":"10Gi","encryption":{"mode":"Disabled"},
            "retain":{"mode":"All"}},
            "retainedMessages":{"maxSize":"3G"},
            "cardinality":{"frontend":{"workers":2}},
            "listeners":[{"name":"a","ports":[{"port":0,"bindAddress":"127.0.0.1"}]}]}"#,
    );
    let err = refused_at_start(&path);
    assert!(
        err.contains("retainedMessages.maxSize") && err.contains("at most 1 GiB"),
        "{err}"
    );
}

/// Persisted queues whose shard could hold more than its log format
/// addresses (a 4G disk buffer on one worker) are refused at start with the
/// fields to change, never left to stall acknowledgements at run time.
#[test]
fn persisted_queues_over_the_log_bound_are_refused() {
    let path = temp_file(
        "persistence-queues-big.json",
        r#"{"persistence":{"maxSize":"10Gi","encryption":{"mode":"Disabled"},
            "subscriberQueue":{"mode":"All"}},
            "diskBackedMessageBuffer":{"maxSize":"4G"},
            "cardinality":{"frontend":{"workers":1}},
            "listeners":[{"name":"a","ports":[{"port":0,"bindAddress":"127.0.0.1"}]}]}"#,
    );
    let err = refused_at_start(&path);
    assert!(
        err.contains("persistence.subscriberQueue")
            && err.contains("diskBackedMessageBuffer.maxSize"),
        "{err}"
    );
}

/// AIO's `persistence` with encryption Enabled (its default) and no key:
/// refused with how to make one, never started with a key generated beside
/// the data (docs/PERSISTENCE.md, "The key").
#[test]
fn aio_persistence_without_a_key_is_refused_with_how_to_make_one() {
    let path = temp_file(
        "persistence.json",
        r#"{"persistence":{"maxSize":"10Gi","encryption":{"mode":"Enabled"},
            "retain":{"mode":"All"}},
            "listeners":[{"name":"a","ports":[{"port":0,"bindAddress":"127.0.0.1"}]}]}"#,
    );
    let err = refused_at_start(&path);
    assert!(err.contains("persistence.keyFile"), "{err}");
    assert!(err.contains("openssl rand -hex 32"), "{err}");
}

#[test]
fn aio_example_fragments_start_the_broker() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/aio");
    for name in [
        "aio-advanced-clients.json",
        "aio-advanced-encryption.json",
        "aio-encryption-disabled.json",
    ] {
        let fragment: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(examples.join(name)).unwrap()).unwrap();
        let mut config = fragment.as_object().unwrap().clone();
        config.insert(
            "listeners".into(),
            serde_json::json!([{"name": "l", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]}]),
        );
        let path = temp_file(name, &serde_json::Value::Object(config).to_string());
        let (_broker, ports) = start(&path, 1);
        let port = ports[0];
        let (_c, ack) = common::RawClient::connect_v5(port, "probe", None);
        assert_eq!(ack.reason, ReasonCode::Success, "{name}");
    }
}

#[test]
fn seed_scenario_clients_on_two_ports_exchange_messages() {
    // The field report's setup: a LoadBalancer-style listener on one port
    // and a NodePort-style one on another, both reaching the same topics.
    if !common::has_mosquitto_clients() {
        return;
    }
    let path = temp_file(
        "seed.json",
        r#"{"cardinality":{"frontend":{"workers":2}},
                "listeners":[
                  {"name":"loadbalancer-listener","serviceType":"LoadBalancer","ports":[{"port":0,"bindAddress":"127.0.0.1"}]},
                  {"name":"nodeport-listener","serviceType":"NodePort","ports":[{"port":0,"bindAddress":"127.0.0.1","nodePort":31883}]}]}"#,
    );
    let (_broker, ports) = start(&path, 2);
    let (lb, np) = (ports[0], ports[1]);
    let publish = |topic: &str, msg: &str, retain: bool| {
        let mut args = vec![
            "-p".to_string(),
            lb.to_string(),
            "-t".into(),
            topic.into(),
            "-m".into(),
            msg.into(),
        ];
        args.extend(["-q", "1", "-V", "mqttv311"].map(String::from));
        if retain {
            args.push("-r".into());
        }
        assert!(Command::new("mosquitto_pub")
            .args(&args)
            .status()
            .unwrap()
            .success());
    };
    // Retained first, so the subscriber's first lines prove its
    // subscription is active; then a live message crosses the ports.
    publish("testtopic/1", "from-lb", true);
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-p",
            &np.to_string(),
            "-t",
            "testtopic/#",
            "-C",
            "2",
            "-W",
            "10",
            "-v",
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "testtopic/1 from-lb");
    publish("testtopic/2", "live-from-lb", false);
    assert_eq!(lines.next().unwrap().unwrap(), "testtopic/2 live-from-lb");
    assert!(sub.wait().unwrap().success());
}

#[test]
fn sigterm_sends_server_shutting_down_and_exits_cleanly() {
    let path = temp_file(
        "shutdown.json",
        r#"{"listeners":[{"name":"l","ports":[{"port":0,"bindAddress":"127.0.0.1"}]}]}"#,
    );
    let (mut broker, ports) = start(&path, 1);
    let port = ports[0];
    let (mut client, _) = common::RawClient::connect_v5(port, "c", None);
    let pid = broker.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    match client.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    let deadline = Instant::now() + common::WAIT;
    loop {
        if let Some(status) = broker.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "broker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_port_already_held_is_refused_instead_of_shared() {
    // The shards bind with SO_REUSEPORT; a second broker on the same port
    // must not silently take a share of the first one's clients.
    let path = temp_file(
        "first.json",
        r#"{"listeners":[{"name":"l","ports":[{"port":0,"bindAddress":"127.0.0.1"}]}]}"#,
    );
    let (_first, ports) = start(&path, 1);
    let second = temp_file(
        "second.json",
        &format!(
            r#"{{"listeners":[{{"name":"l","ports":[{{"port":{},"bindAddress":"127.0.0.1"}}]}}]}}"#,
            ports[0]
        ),
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&second)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot bind") && err.contains("in use"),
        "{err}"
    );
}

/// Whether the broker `pid` has a thread named `name` asleep in a call.
fn thread_asleep(pid: u32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state follows the parenthesised name: "S" is an interruptible sleep.
        comm.trim() == name
            && stat
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('S'))
    })
}

#[test]
fn a_metrics_request_across_a_stop_and_continue_is_answered() {
    // A socket read with a timeout returns EINTR when the process is
    // stopped and continued (signal(7)): a paused container, a debugger.
    // The endpoint retries it instead of dropping the request, and the
    // shards' waits are restarted.
    use std::io::{Read, Write};
    let metrics = common::free_port();
    let path = temp_file(
        "stopped.json",
        &format!(
            r#"{{"listeners":[{{"name":"l","ports":[{{"port":0,"bindAddress":"127.0.0.1"}}]}}],
                "diagnostics":{{"metrics":{{"prometheusPort":{metrics}}}}}}}"#
        ),
    );
    let (broker, ports) = start(&path, 1);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], metrics).into();
    common::wait_ready(addr);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let pid = broker.0.id();
    let deadline = Instant::now() + common::WAIT;
    while !thread_asleep(pid, "metrics-conn") {
        assert!(Instant::now() < deadline, "no thread reads the request");
        std::thread::sleep(Duration::from_millis(10));
    }
    for sig in ["-STOP", "-CONT"] {
        let status = Command::new("kill").args([sig, &pid.to_string()]).status();
        assert!(status.unwrap().success());
    }
    s.write_all(b"Host: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    // The shards' waits came through it too.
    let (_client, ack) = common::RawClient::connect_v5(ports[0], "after-stop", None);
    assert_eq!(ack.reason, ReasonCode::Success);
}
