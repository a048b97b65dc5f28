//! TLS, X509 client authentication, passwords and authorization, end to end
//! through the `shardmq` binary, with certificates made in the test (the
//! seed scenario's two PKIs) and real clients: Debian's mosquitto_pub and
//! rumqttc. Each rejection the issue names is its own test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{q5, Client, Proc};
use shardmq_auth::test_pki::{days, Ca, Pki};
use shardmq_core::codec::{
    Packet, PacketId, Props, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

/// Files of one test PKI, written once per test binary.
struct Files {
    _pki: Pki,
    server_root: PathBuf,
    client_a: (PathBuf, PathBuf),
    client_b_pem: (String, String),
    expired: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
    config: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let pki = Pki::new();
        let server = pki.server(&["127.0.0.1"]);
        let wrong_san = pki.server(&["wrong.example"]);
        let a = pki.client("clientA", days(30));
        let b = pki.client("clientB", days(30));
        let expired = pki.client("clientOld", days(-1));
        let other = Ca::root("other-root").leaf("mallory", &[], days(30), false);
        let w = |name: &str, text: &str| pki.write(name, text);
        let server_root = w("server_root.crt", &pki.server_root.cert_pem);
        w("server.crt", &server.bundle_pem);
        w("server.key", &server.key_pem);
        w("wrong.crt", &wrong_san.bundle_pem);
        w("wrong.key", &wrong_san.key_pem);
        w("client_root.crt", &pki.client_root.cert_pem);
        let client_a = (
            w("clientA.crt", &a.bundle_pem),
            w("clientA.key", &a.key_pem),
        );
        let expired = (
            w("old.crt", &expired.bundle_pem),
            w("old.key", &expired.key_pem),
        );
        let stranger = (
            w("mallory.crt", &other.bundle_pem),
            w("mallory.key", &other.key_pem),
        );
        let passwd = pki.dir.path().join("passwd");
        if common::has_mosquitto_clients() {
            let st = Command::new("mosquitto_passwd")
                .args(["-b", "-c"])
                .arg(&passwd)
                .args(["alice", "secret"])
                .status()
                .unwrap();
            assert!(st.success());
        } else {
            std::fs::write(&passwd, "").unwrap();
        }
        let config = w("broker.json", &config_json(pki.dir.path()));
        Files {
            client_b_pem: (b.bundle_pem, b.key_pem),
            _pki: pki,
            server_root,
            client_a,
            expired,
            stranger,
            config,
        }
    })
}

/// Listener order (= log order of bound ports): plain, x509, wrong-san, password.
fn config_json(dir: &Path) -> String {
    let f = |n: &str| dir.join(n).display().to_string();
    serde_json::json!({
        "cardinality": {"frontend": {"workers": 2}},
        "listeners": [
            {"name": "plain", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]},
            {"name": "x509", "ports": [{"port": 0, "bindAddress": "127.0.0.1", "authenticationRef": "x509-policy",
                "tls": {"mode": "Manual", "manual": {"certFile": f("server.crt"), "keyFile": f("server.key")}}}]},
            {"name": "wrong-san", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
                "tls": {"mode": "Manual", "manual": {"certFile": f("wrong.crt"), "keyFile": f("wrong.key")}}}]},
            {"name": "password", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
                "authenticationRef": "passwords", "authorizationRef": "own-topics"}]}
        ],
        "authentications": [
            {"name": "x509-policy", "authenticationMethods": [
                {"method": "X509", "x509Settings": {"trustedClientCaCert": f("client_root.crt")}}]},
            {"name": "passwords", "authenticationMethods": [
                {"method": "UsernamePassword", "usernamePasswordSettings": {"passwordFile": f("passwd")}}]}
        ],
        "authorizations": [
            {"name": "own-topics", "authorizationPolicies": {"rules": [{
                "principals": {"usernames": ["alice"]},
                "brokerResources": [
                    {"method": "Connect"},
                    {"method": "Publish", "topics": ["telemetry/{principal.clientId}/#"]},
                    {"method": "Subscribe", "topics": ["commands/{principal.clientId}/#"]}
                ]}]}}
        ]
    })
    .to_string()
}

struct Ports {
    plain: u16,
    x509: u16,
    wrong_san: u16,
    password: u16,
}

fn broker() -> (Proc, Ports) {
    let (proc, p) = common::start(&files().config, 4);
    (
        proc,
        Ports {
            plain: p[0],
            x509: p[1],
            wrong_san: p[2],
            password: p[3],
        },
    )
}

/// mosquitto_pub over TLS; returns whether it succeeded.
fn tls_publish(port: u16, cert: Option<&(PathBuf, PathBuf)>, topic: &str, msg: &str) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-m",
        msg,
    ])
    .arg("--cafile")
    .arg(&files().server_root);
    if let Some((crt, key)) = cert {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = cmd.output().unwrap();
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_x509_client_reaches_a_plain_subscriber_on_another_port() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    let (mut sub, _) = Client::connect(ports.plain, "plain-sub", |_| {}).await;
    sub.subscribe("testtopic/#", q5(1)).await;
    assert!(tls_publish(
        ports.x509,
        Some(&files().client_a),
        "testtopic/a",
        "hello from A"
    ));
    let got = sub.publishes(1).await;
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_slice()),
        ("testtopic/a", &b"hello from A"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_with_tls_and_a_client_certificate_exchanges_with_plain_clients() {
    use rumqttc::v5::MqttOptions;
    use rumqttc::{TlsConfiguration, Transport};
    let (_broker, ports) = broker();
    let ca = std::fs::read(&files().server_root).unwrap();
    let (crt, key) = files().client_b_pem.clone();
    let (mut tls_client, _) = Client::connect(ports.x509, "clientB", |o: &mut MqttOptions| {
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: Some((crt.into_bytes(), key.into_bytes())),
        }));
    })
    .await;
    tls_client.subscribe("to-b/#", q5(1)).await;
    let (plain, _) = Client::connect(ports.plain, "plain-pub", |_| {}).await;
    plain.publish("to-b/1", q5(1), false, b"over TLS").await;
    assert_eq!(tls_client.publishes(1).await[0].1, b"over TLS");
}

#[test]
fn no_client_certificate_is_refused() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    assert!(!tls_publish(ports.x509, None, "t", "x"));
}

#[test]
fn certificate_from_another_ca_is_refused() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    assert!(!tls_publish(ports.x509, Some(&files().stranger), "t", "x"));
}

#[test]
fn expired_client_certificate_is_refused() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    assert!(!tls_publish(ports.x509, Some(&files().expired), "t", "x"));
}

#[test]
fn client_refuses_a_server_certificate_without_its_address() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    // The certificate names wrong.example, the client dials 127.0.0.1.
    assert!(!tls_publish(ports.wrong_san, None, "t", "x"));
}

#[test]
fn garbage_instead_of_a_client_hello_costs_only_that_connection() {
    use std::io::Write;
    let (_broker, ports) = broker();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ports.x509)).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x00")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = common::read_some(&mut s, &mut buf).unwrap_or(0);
    // rustls may answer with an alert before closing; never with MQTT.
    assert!(n == 0 || buf[0] == 0x15, "got {:?}", &buf[..n]);
    let (c, ack) = common::RawClient::connect_v5(ports.plain, "after-garbage", None);
    assert_eq!(ack.reason, ReasonCode::Success);
    drop(c);
}

fn password_client(port: u16, client_id: &str, password: &str) -> (common::RawClient, ReasonCode) {
    common::RawClient::connect_v5_with(port, client_id, |c| {
        c.username = Some("alice".into());
        c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    })
}

#[test]
fn wrong_password_is_refused_with_0x86() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    let (_c, reason) = password_client(ports.password, "alice-1", "wrong");
    assert_eq!(reason, ReasonCode::BadUserNameOrPassword);
}

#[test]
fn publish_and_subscribe_outside_the_authorized_topics_are_refused() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let (_broker, ports) = broker();
    let (mut c, reason) = password_client(ports.password, "dev1", "secret");
    assert_eq!(reason, ReasonCode::Success);
    let publish = |topic: &str, id: u16| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: PacketId::new(id),
            properties: Props::default(),
            payload: bytes::Bytes::from_static(b"x"),
        })
    };
    // {principal.clientId} = dev1: its own telemetry subtree only.
    c.send(&publish("telemetry/dev1/temp", 1));
    match c.recv() {
        Some(Packet::PubAck(a)) => assert!(!a.reason.is_error(), "{:?}", a.reason),
        other => panic!("{other:?}"),
    }
    c.send(&publish("telemetry/dev2/temp", 2));
    match c.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(3).unwrap(),
        properties: Props::default(),
        filters: vec![
            ("commands/dev1/#".into(), SubscriptionOptions::default()),
            ("commands/#".into(), SubscriptionOptions::default()),
        ],
    }));
    match c.recv() {
        Some(Packet::SubAck(s)) => assert_eq!(
            s.reasons,
            vec![ReasonCode::Success, ReasonCode::NotAuthorized]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_config_naming_a_missing_certificate_fails_before_binding() {
    let path = common::temp_file(
        "missing-cert.json",
        r#"{"listeners":[{"name":"t","ports":[{"port":0,"bindAddress":"127.0.0.1",
            "tls":{"mode":"Manual","manual":{"certFile":"/nonexistent/server.crt","keyFile":"/nonexistent/server.key"}}}]}]}"#,
    );
    let out = Command::new(common::BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("listeners[0].ports[0].tls") && err.contains("/nonexistent/server.crt"),
        "{err}"
    );
}

/// The subject CN of the certificate a new TLS client is shown.
fn served_cn(port: u16, ca: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -subject",
            ca.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_is_replaced_live_on_sighup_without_dropping_clients() {
    use rumqttc::v5::MqttOptions;
    use rumqttc::{TlsConfiguration, Transport};
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed; skipping");
        return;
    }
    let pki = Pki::new();
    let v1 = pki
        .server_intermediate
        .leaf("broker-v1", &["127.0.0.1"], days(30), true);
    let v2 = pki
        .server_intermediate
        .leaf("broker-v2", &["127.0.0.1"], days(30), true);
    let root = pki.write("root.crt", &pki.server_root.cert_pem);
    let crt = pki.write("server.crt", &v1.bundle_pem);
    let key = pki.write("server.key", &v1.key_pem);
    let config = serde_json::json!({"listeners": [
        {"name": "plain", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]},
        {"name": "tls", "ports": [{"port": 0, "bindAddress": "127.0.0.1",
            "tls": {"mode": "Manual", "manual": {"certFile": crt.display().to_string(), "keyFile": key.display().to_string()}}}]}]});
    let path = pki.write("broker.json", &config.to_string());
    let (broker, ports) = common::start(&path, 2);
    let (plain, tls) = (ports[0], ports[1]);
    assert!(served_cn(tls, &root).contains("broker-v1"));

    let ca = pki.server_root.cert_pem.clone().into_bytes();
    let (mut old, _) = Client::connect(tls, "long-lived", |o: &mut MqttOptions| {
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    })
    .await;
    old.subscribe("rotate/#", q5(1)).await;

    std::fs::write(&crt, &v2.bundle_pem).unwrap();
    std::fs::write(&key, &v2.key_pem).unwrap();
    let pid = broker.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + common::WAIT;
    while !served_cn(tls, &root).contains("broker-v2") {
        assert!(
            std::time::Instant::now() < deadline,
            "new handshakes never saw the new certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The connection made under the old certificate is still served.
    let (publ, _) = Client::connect(plain, "pub", |_| {}).await;
    publ.publish("rotate/1", q5(1), false, b"still here").await;
    assert_eq!(old.publishes(1).await[0].1, b"still here");
}

/// A broker whose only listener authenticates through the webhook at `url`.
fn webhook_broker(pki: &Pki, url: &str) -> (Proc, u16) {
    let ca = pki.write("webhook-ca.pem", &pki.server_root.cert_pem);
    let config = serde_json::json!({
        "listeners": [{"name": "hook", "ports": [{"port": 0, "bindAddress": "127.0.0.1", "authenticationRef": "hook"}]}],
        "authentications": [{"name": "hook", "authenticationMethods": [{"method": "Custom",
            "customSettings": {"endpoint": url, "caCertConfigMap": ca.display().to_string()}}]}]
    });
    let path = pki.write("hook.json", &config.to_string());
    let (proc, ports) = common::start(&path, 1);
    (proc, ports[0])
}

fn hook_connect(port: u16) -> ReasonCode {
    common::RawClient::connect_v5_with(port, "hooked", |c| {
        c.username = Some("alice".into());
        c.password = Some(bytes::Bytes::from_static(b"pw"));
    })
    .1
}

#[test]
fn webhook_that_allows_admits_the_client() {
    use shardmq_auth::test_pki::{serve_once, Answer};
    let pki = Pki::new();
    let (url, seen) = serve_once(
        &pki,
        Answer::Status(200, r#"{"attributes":{"group":"g1"}}"#),
    );
    let (_b, port) = webhook_broker(&pki, &url);
    assert_eq!(hook_connect(port), ReasonCode::Success);
    let (_, body) = seen.recv_timeout(common::WAIT).unwrap();
    assert!(body.contains("\"clientId\":\"hooked\""), "{body}");
}

#[test]
fn webhook_that_denies_refuses_with_its_reason() {
    use shardmq_auth::test_pki::{serve_once, Answer};
    let pki = Pki::new();
    let (url, _seen) = serve_once(
        &pki,
        Answer::Status(403, r#"{"reason":135,"message":"no"}"#),
    );
    let (_b, port) = webhook_broker(&pki, &url);
    assert_eq!(hook_connect(port), ReasonCode::NotAuthorized);
}

#[test]
fn webhook_that_times_out_denies() {
    // The default webhook timeout is 5 s; the test server never answers.
    use shardmq_auth::test_pki::{serve_once, Answer};
    let pki = Pki::new();
    let (url, _seen) = serve_once(&pki, Answer::Stall);
    let (_b, port) = webhook_broker(&pki, &url);
    assert!(hook_connect(port).is_error());
}

#[test]
fn a_webhook_that_stalls_does_not_hold_up_persisted_acknowledgements() {
    // Webhook calls ran on glommio's blocking pool, one thread per shard,
    // where the persistence log's writes and fsyncs run too: a PUBACK that
    // waits for the disk waited for the webhook's whole timeout. The
    // webhook has threads of its own now. Ordering, not timing: the PUBACK
    // must come while the hooked client still has no answer.
    use shardmq_auth::test_pki::{serve_once, Answer};
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let (url, seen) = serve_once(&pki, Answer::Stall);
    let ca = pki.write("webhook-ca.pem", &pki.server_root.cert_pem);
    let key: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
    let key = pki.write("persist.key", &key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = key.parent().unwrap().join("stall-data");
    let config = serde_json::json!({
        "cardinality": {"frontend": {"workers": 1}},
        "listeners": [
            {"name": "hook", "ports": [{"port": 0, "bindAddress": "127.0.0.1", "authenticationRef": "hook"}]},
            {"name": "plain", "ports": [{"port": 0, "bindAddress": "127.0.0.1"}]}],
        "authentications": [{"name": "hook", "authenticationMethods": [{"method": "Custom",
            "customSettings": {"endpoint": url, "caCertConfigMap": ca.display().to_string()}}]}],
        "persistence": {"maxSize": "100M", "retain": {"mode": "All"},
            "dataDir": data, "keyFile": key}
    });
    let path = pki.write("stall.json", &config.to_string());
    let (_broker, ports) = common::start(&path, 2);

    let mut hooked = std::net::TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    let mut connect = bytes::BytesMut::new();
    let packet = Packet::Connect(Box::new(shardmq_core::codec::Connect {
        protocol_version: shardmq_core::codec::ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        properties: shardmq_core::codec::Props::default(),
        client_id: "hooked".into(),
        will: None,
        username: Some("alice".into()),
        password: Some(bytes::Bytes::from_static(b"pw")),
    }));
    shardmq_core::codec::encode(
        &packet,
        shardmq_core::codec::ProtocolVersion::V5,
        &mut connect,
    )
    .unwrap();
    std::io::Write::write_all(&mut hooked, &connect).unwrap();
    seen.recv_timeout(common::WAIT)
        .expect("the webhook was called");

    let (mut writer, _) = common::RawClient::connect_v5(ports[1], "writer", None);
    writer.send(&Packet::Publish(shardmq_core::codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "durable/t".into(),
        packet_id: shardmq_core::codec::PacketId::new(1),
        properties: shardmq_core::codec::Props::default(),
        payload: bytes::Bytes::from_static(b"kept"),
    }));
    assert!(
        matches!(writer.recv(), Some(Packet::PubAck(_))),
        "the retained message was acknowledged once durable"
    );
    hooked.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let early = hooked.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the hooked client was answered before the PUBACK: {early:?}"
    );
}
