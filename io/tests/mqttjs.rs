//! mqtt.js (5.x), the most used JavaScript client, against the binary:
//! MQTT 5 and 3.1.1, plain and over TLS with a client certificate (X509
//! authentication) at every QoS, a persistent session resumed with the
//! message queued while it was offline, a retained message for a later
//! subscriber, and a will (`io/tests/mqttjs/roundtrip.mjs`). .ci/run
//! installs it (`npm ci` in io/tests/mqttjs); without node or the package
//! the tests say so and skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use shardmq_auth::test_pki::{days, Pki};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mqttjs")
}

fn has_mqttjs() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ok = node && dir().join("node_modules/mqtt").is_dir();
    if !ok {
        eprintln!("node or mqtt.js missing (.ci/run: npm ci --prefix io/tests/mqttjs): skipped");
    }
    ok
}

struct Files {
    pki: Pki,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let pki = Pki::new();
        let server = pki.server(&["127.0.0.1"]);
        let client = pki.client("mqttjs-device", days(30));
        pki.write("server.crt", &server.bundle_pem);
        pki.write("server.key", &server.key_pem);
        pki.write("client_root.crt", &pki.client_root.cert_pem);
        let ca = pki.write("server_root.crt", &pki.server_root.cert_pem);
        let cert = pki.write("client.crt", &client.bundle_pem);
        let key = pki.write("client.key", &client.key_pem);
        Files { pki, ca, cert, key }
    })
}

/// The binary with a plain port and an X509 port, two shards (so sessions,
/// retained owners and wills cross shards as they land).
fn broker() -> (common::Proc, u16, u16) {
    let f = files();
    let p = |n: &str| f.pki.dir.path().join(n).display().to_string();
    let config = serde_json::json!({
        "cardinality": {"frontend": {"workers": 2}},
        "listeners": [
            {"name": "plain", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]},
            {"name": "x509", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
                "authenticationRef": "x509",
                "tls": {"mode": "Manual", "manual": {"certFile": p("server.crt"), "keyFile": p("server.key")}}}]}
        ],
        "authentications": [{"name": "x509", "authenticationMethods": [
            {"method": "X509", "x509Settings": {"trustedClientCaCert": p("client_root.crt")}}]}]
    });
    let path = common::temp_file("mqttjs.json", &config.to_string());
    let (proc, ports) = common::start(&path, 2);
    (proc, ports[0], ports[1])
}

fn run(scenario: &str, port: u16, protocol: &str, id: &str, tls: bool) {
    let mut cmd = Command::new("node");
    cmd.arg(dir().join("roundtrip.mjs"))
        .args(["--scenario", scenario, "--port", &port.to_string()])
        .args(["--protocol", protocol, "--client-id", id]);
    if tls {
        let f = files();
        cmd.arg("--ca").arg(&f.ca);
        cmd.arg("--cert").arg(&f.cert);
        cmd.arg("--key").arg(&f.key);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "mqtt.js {scenario} {protocol} tls={tls}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mqttjs_mqtt5_and_311_at_every_qos_plain_and_over_tls() {
    if !has_mqttjs() {
        return;
    }
    let (_broker, plain, x509) = broker();
    run("roundtrip", plain, "5", "js-v5", false);
    run("roundtrip", plain, "311", "js-v311", false);
    run("roundtrip", x509, "5", "js-tls-v5", true);
    run("roundtrip", x509, "311", "js-tls-v311", true);
}

#[test]
fn mqttjs_resumes_its_session_gets_retained_messages_and_wills() {
    if !has_mqttjs() {
        return;
    }
    let (_broker, plain, _) = broker();
    run("session", plain, "5", "js-session", false);
    run("will", plain, "5", "js-will", false);
    run("will", plain, "311", "js-will-311", false);
}
