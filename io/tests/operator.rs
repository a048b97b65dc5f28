//! What an operator sees of the `shardmq` binary: the log lines about
//! clients, paths resolved against the config file's folder, state kept in
//! the state directory, and what a graceful stop leaves on disk. Real
//! clients (mosquitto_pub/sub) against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{has_mosquitto_clients, spawn_logged, temp_file, BIN, WAIT};

/// The binary with `config`, at the default log level (no RUST_LOG).
fn broker_cmd(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).env_remove("RUST_LOG");
    cmd
}

fn smq_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "smq") {
                out.push(f.path());
            }
        }
    }
    out
}

#[test]
fn sigterm_after_spilling_leaves_the_buffer_directory_empty() {
    if !has_mosquitto_clients() {
        return;
    }
    // One message per session in memory: the rest of the backlog spills.
    let config = temp_file(
        "spill.json",
        r#"{"cardinality": {"frontend": {"workers": 1}},
            "advanced": {"clients": {"subscriberQueueLimit": {"length": 1, "strategy": "None"}}},
            "diskBackedMessageBuffer": {"maxSize": "16M", "dataDir": "buffer"},
            "listeners": [{"name": "l", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]}]}"#,
    );
    let buffer = config.parent().unwrap().join("buffer");
    let (mut broker, ports, log) = spawn_logged(broker_cmd(&config), 1);
    let port = ports[0].to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-V", "mqttv5", "-p", &port, "-i", "durable", "-c", "-x", "300",
        ])
        .args(["-q", "1", "-t", "fleet/#", "-E"])
        .status()
        .unwrap();
    assert!(sub.success());
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            "fleet/truck",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    for i in 0..200 {
        writeln!(stdin, "{i:04}-{}", ".".repeat(1000)).unwrap();
    }
    drop(stdin);
    assert!(publisher.wait().unwrap().success());
    let deadline = Instant::now() + WAIT;
    while smq_files(&buffer).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing spilled:\n{}",
            log.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = broker.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(
        smq_files(&buffer),
        Vec::<PathBuf>::new(),
        "segment files left after a graceful stop"
    );
}
