//! paho-mqtt, the most used Python client, against the binary: MQTT 5 and
//! 3.1.1, plain and over TLS with a client certificate (X509
//! authentication), each subscribing and publishing at every QoS
//! (`io/tests/paho/roundtrip.py`). The default config must admit it: a
//! CONNACK it refuses (a Maximum Packet Size above 268,435,455) drops
//! every MQTT 5 connection. .ci/run installs paho-mqtt; without python3 or
//! paho the tests say so and skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use shardmq_auth::test_pki::{days, Pki};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/paho/roundtrip.py")
}

fn has_paho() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("python3 with paho-mqtt not installed (.ci/run pip-installs it): skipped");
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
        let client = pki.client("paho-device", days(30));
        pki.write("server.crt", &server.bundle_pem);
        pki.write("server.key", &server.key_pem);
        pki.write("client_root.crt", &pki.client_root.cert_pem);
        let ca = pki.write("server_root.crt", &pki.server_root.cert_pem);
        let cert = pki.write("client.crt", &client.bundle_pem);
        let key = pki.write("client.key", &client.key_pem);
        Files { pki, ca, cert, key }
    })
}

/// The binary on the built-in default's listener shape, plus an X509 port.
fn broker() -> (common::Proc, u16, u16) {
    let f = files();
    let p = |n: &str| f.pki.dir.path().join(n).display().to_string();
    let config = serde_json::json!({
        "listeners": [
            {"name": "plain", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]},
            {"name": "x509", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
                "authenticationRef": "x509",
                "tls": {"mode": "Manual", "manual": {"certFile": p("server.crt"), "keyFile": p("server.key")}}}]}
        ],
        "authentications": [{"name": "x509", "authenticationMethods": [
            {"method": "X509", "x509Settings": {"trustedClientCaCert": p("client_root.crt")}}]}]
    });
    let path = common::temp_file("paho.json", &config.to_string());
    let (proc, ports) = common::start(&path, 2);
    (proc, ports[0], ports[1])
}

fn roundtrip(port: u16, protocol: &str, id: &str, tls: bool) {
    let mut cmd = Command::new("python3");
    cmd.arg(script())
        .args(["--port", &port.to_string(), "--protocol", protocol])
        .args(["--client-id", id]);
    if tls {
        let f = files();
        cmd.arg("--ca").arg(&f.ca);
        cmd.arg("--cert").arg(&f.cert);
        cmd.arg("--key").arg(&f.key);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "paho {protocol} tls={tls}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn paho_mqtt5_on_the_built_in_default_config() {
    if !has_paho() {
        return;
    }
    // No --config: the built-in default, as a new user runs it. Its port
    // is fixed (1883), so this test borrows it only if it is free.
    if std::net::TcpListener::bind("127.0.0.1:1883").is_err() {
        eprintln!("127.0.0.1:1883 is taken: the default-config check is skipped");
        return;
    }
    let mut cmd = Command::new(common::BIN);
    cmd.env("RUST_LOG", "info");
    let (_broker, ports, _log) = common::spawn_logged(cmd, 1);
    roundtrip(ports[0], "5", "paho-default", false);
}

#[test]
fn paho_mqtt5_and_311_plain() {
    if !has_paho() {
        return;
    }
    let (_broker, plain, _) = broker();
    roundtrip(plain, "5", "paho-v5", false);
    roundtrip(plain, "311", "paho-v311", false);
}

#[test]
fn paho_mqtt5_and_311_over_tls_with_a_client_certificate() {
    if !has_paho() {
        return;
    }
    let (_broker, _, x509) = broker();
    roundtrip(x509, "5", "paho-tls-v5", true);
    roundtrip(x509, "311", "paho-tls-v311", true);
}
