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
use shardmq_auth::test_pki::Pki;

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

/// A fresh, empty folder of its own.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = temp_file("placeholder", "").parent().unwrap().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn relative_paths_load_from_the_config_folder_not_the_working_directory() {
    // Every kind of file path written relative, the broker started from
    // another working directory: it finds them all next to the config, and
    // writes its state where `stateDir` (relative too) says.
    let pki = Pki::new();
    let dir = pki.dir.path();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    let server = pki.server(&["127.0.0.1"]);
    pki.write("tls/server.crt", &server.bundle_pem);
    pki.write("tls/server.key", &server.key_pem);
    pki.write("client_root.crt", &pki.client_root.cert_pem);
    let sat = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    pki.write("keys/sat.pem", &sat.public_key_pem());
    pki.write("passwd", "");
    let config = pki.write(
        "broker.json",
        &serde_json::json!({
            "stateDir": "state",
            "listeners": [{"name": "l", "ports": [
                {"port": 0, "bindAddress": "127.0.0.1", "authenticationRef": "all",
                 "tls": {"mode": "Manual", "manual": {"certFile": "tls/server.crt", "keyFile": "tls/server.key"}}},
                {"port": 0, "bindAddress": "127.0.0.1",
                 "tls": {"mode": "Automatic", "certManagerCertificateSpec": {"san": {"ip": ["127.0.0.1"]}}}}
            ]}],
            "authentications": [{"name": "all", "authenticationMethods": [
                {"method": "X509", "x509Settings": {"trustedClientCaCert": "client_root.crt"}},
                {"method": "ServiceAccountToken", "serviceAccountTokenSettings": {
                    "audiences": ["broker"], "keys": ["keys/sat.pem"]}},
                {"method": "UsernamePassword", "usernamePasswordSettings": {"passwordFile": "passwd"}}
            ]}]
        })
        .to_string(),
    );
    let elsewhere = fresh_dir("elsewhere");
    let mut cmd = broker_cmd(&config);
    cmd.current_dir(&elsewhere).env_remove("STATE_DIRECTORY");
    let (_broker, ports, _log) = spawn_logged(cmd, 2);
    assert_eq!(ports.len(), 2);
    assert!(dir.join("state/internal-ca/ca.crt").exists());
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written to the working directory"
    );
}

/// Runs the broker as `nobody` when the tests run as root (CI does): root
/// writes through any mode bits, so a read-only folder needs another user.
/// `None` when that is not possible here (the test then says why).
fn unprivileged(cmd: Command) -> Option<Command> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        return Some(cmd);
    }
    let setpriv = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let usable = Command::new("setpriv")
        .args(setpriv)
        .args([BIN, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!("skipped: running as root and `setpriv` cannot run {BIN} as nobody");
        return None;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(setpriv)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    Some(wrapped)
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn automatic_tls_keeps_its_ca_in_state_directory_with_a_read_only_config_folder() {
    // The documented systemd unit: DynamicUser=, ProtectSystem=strict (the
    // config and secrets folders are read-only), StateDirectory= (systemd
    // sets $STATE_DIRECTORY, the one writable folder). The broker runs from
    // the config folder, as a user who cannot write there.
    if !has_mosquitto_clients() {
        return;
    }
    let etc = fresh_dir("etc-shardmq");
    std::fs::create_dir_all(etc.join("secrets")).unwrap();
    let config = etc.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "secretsDir": "secrets",
            "diskBackedMessageBuffer": {"maxSize": "16M"},
            "listeners": [{"name": "tls", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
                "tls": {"mode": "Automatic", "certManagerCertificateSpec": {"san": {"ip": ["127.0.0.1"]}}}}]}]
        })
        .to_string(),
    )
    .unwrap();
    chmod(&config, 0o644);
    for dir in [etc.join("secrets"), etc.clone()] {
        chmod(&dir, 0o555);
    }
    let state = fresh_dir("var-lib-shardmq");
    chmod(&state, 0o777);
    let mut cmd = broker_cmd(&config);
    cmd.current_dir(&etc).env("STATE_DIRECTORY", &state);
    let Some(cmd) = unprivileged(cmd) else {
        return;
    };
    let (mut broker, ports, log) = spawn_logged(cmd, 1);
    let ca = state.join("internal-ca").join("ca.crt");
    assert!(ca.exists(), "{}", log.lines().join("\n"));
    log.wait_for(&[
        "disk buffer open",
        &state.join("buffer").display().to_string(),
    ]);
    let publish = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports[0].to_string(),
            "-t",
            "t",
            "-m",
            "m",
        ])
        .arg("--cafile")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    assert!(broker.terminate().success());
    for dir in [etc.join("secrets"), etc.clone()] {
        chmod(&dir, 0o755);
    }
    assert_eq!(std::fs::read_dir(etc.join("secrets")).unwrap().count(), 0);
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_systemd_unit_verifies_and_is_the_one_the_deployment_guide_shows() {
    let unit = std::fs::read_to_string(repo_file("deploy/systemd/shardmq.service")).unwrap();
    let guide = std::fs::read_to_string(repo_file("docs/DEPLOYMENT.md")).unwrap();
    let start = guide
        .find("```ini\n")
        .expect("an ini block in DEPLOYMENT.md")
        + "```ini\n".len();
    let end = start + guide[start..].find("```").unwrap();
    assert_eq!(guide[start..end], unit, "DEPLOYMENT.md shows another unit");

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped `systemd-analyze verify`: systemd-analyze not installed (.ci/run installs systemd)");
        return;
    }
    // verify checks that ExecStart= exists: point it at the built binary.
    let dir = fresh_dir("unit");
    let path = dir.join("shardmq.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/shardmq", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are warnings with exit status 0.
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains("shardmq")).collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
