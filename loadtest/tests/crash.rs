//! `shardmq-loadtest crash` end to end against Mosquitto with persistence
//! on. Mosquitto saves its state every `autosave_interval` seconds, so what
//! it queued for offline sessions since the last save dies with a kill -9:
//! the harness must report that as acknowledged-and-lost and exit 1; the
//! same broker never killed must pass. Skipped when mosquitto is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const HARNESS: &str = env!("CARGO_BIN_EXE_shardmq-loadtest");

/// Persistence into the run's data directory (`{tmp}`), saved every second;
/// `user root` keeps a root-started mosquitto able to write there.
const MOSQUITTO: &str = "mosquitto=cmd:printf 'listener {port} 127.0.0.1\\nallow_anonymous true\\nuser root\\npersistence true\\npersistence_location {tmp}/\\nautosave_interval 1\\nmax_queued_messages 0\\n' > {tmp}/m.conf && exec mosquitto -c {tmp}/m.conf";

fn mosquitto_missing() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("mosquitto").is_file()))
        || Path::new("/usr/sbin/mosquitto").is_file();
    if !found {
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install -y mosquitto)");
    }
    !found
}

fn json_path(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs `crash` against Mosquitto; the exit code, stdout and the JSON report.
fn crash(name: &str, args: &[&str]) -> (Option<i32>, String, Value) {
    let json = json_path(name);
    let _ = std::fs::remove_file(&json);
    // Debian installs mosquitto in /usr/sbin, not always on a user's PATH.
    let path = format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default());
    let out = Command::new(HARNESS)
        .args(["crash", "--broker", MOSQUITTO, "--drain", "2s", "--json"])
        .arg(&json)
        .args(args)
        .env("PATH", path)
        .env("CI", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); exit {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code(),
        stdout,
        serde_json::from_str(&report).unwrap(),
    )
}

#[test]
fn mosquitto_loses_acknowledged_messages_queued_since_its_last_save_on_kill_9() {
    if mosquitto_missing() {
        return;
    }
    let (code, stdout, r) = crash(
        "mosquitto-killed.json",
        &[
            "--kills",
            "2",
            "--kill-every",
            "1s",
            "--offline",
            "400ms",
            "--seed",
            "3",
        ],
    );
    assert_eq!(code, Some(1), "acknowledged loss fails the run\n{stdout}");
    let restarts = r["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 2, "{stdout}");
    for x in restarts {
        assert!(x["recovery_ms"].as_f64().is_some(), "came back: {x}");
    }
    let c = &r["counts"];
    assert!(c["acked"].as_u64().unwrap() > 0, "{stdout}");
    let lost = c["lost_acked"].as_u64().unwrap();
    assert!(
        lost > 0,
        "messages queued for offline sessions died\n{stdout}"
    );
    let per_kill: u64 = restarts
        .iter()
        .map(|x| x["lost_acked"].as_u64().unwrap())
        .sum();
    assert_eq!(
        per_kill + r["lost_acked_after_last_kill"].as_u64().unwrap(),
        lost,
        "every loss is attributed"
    );
    assert!(
        stdout.contains("never reached every subscriber"),
        "{stdout}"
    );
}

#[test]
fn mosquitto_never_killed_loses_nothing() {
    if mosquitto_missing() {
        return;
    }
    let (code, stdout, r) = crash(
        "mosquitto-alive.json",
        &["--kills", "0", "--kill-every", "1s"],
    );
    assert_eq!(code, Some(0), "{stdout}");
    let c = &r["counts"];
    let acked = c["acked"].as_u64().unwrap();
    assert!(acked > 0, "{stdout}");
    assert_eq!(c["owed"].as_u64().unwrap(), 2 * acked, "two subscribers");
    assert_eq!(c["lost_acked"].as_u64(), Some(0), "{stdout}");
    assert!(stdout.contains("PASS"), "{stdout}");
}
