//! A client id's session belongs to the principal that holds it (MQTT 5.0
//! §5.4.2; the class of NATS CVE-2026-33215): a client authenticated as
//! someone else (certificate CN, user name, token subject), or an anonymous
//! one, that CONNECTs with that id is refused with Not Authorized (v3.1.1
//! return code 5), and the session is neither resumed, replaced nor
//! disconnected. Resumed subscriptions are re-checked against the resuming
//! client's permissions. Through the binary, across listeners and shards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::OnceLock;

use bytes::Bytes;
use common::{q5, Client, Proc, RawClient};
use shardmq_auth::test_pki::{days, password_line, Pki, SatKeys};
use shardmq_core::codec::{
    ConnAck, Packet, PacketId, Props, PubResponse, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};

struct Files {
    pki: Pki,
    sat: SatKeys,
    client_a: (String, String),
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let pki = Pki::new();
        let server = pki.server(&["127.0.0.1"]);
        let a = pki.client("sensorA", days(30));
        pki.write("server.crt", &server.bundle_pem);
        pki.write("server.key", &server.key_pem);
        pki.write("client_root.crt", &pki.client_root.cert_pem);
        pki.write(
            "passwd",
            &format!(
                "{}\n{}\n",
                password_line("alice", "alice-pw"),
                password_line("bob", "bob-pw")
            ),
        );
        let sat = SatKeys::ed25519();
        pki.write("sat.pub.pem", &sat.public_pem);
        Files {
            pki,
            sat,
            client_a: (a.bundle_pem, a.key_pem),
        }
    })
}

struct Ports {
    plain: u16,
    x509: u16,
    pw_wide: u16,
    pw_narrow: u16,
    sat: u16,
}

/// Listener order (= log order of bound ports): plain (shard 0), x509
/// (shard 1), pw-wide (shard 0), pw-narrow (shard 1), sat.
fn broker(takeover: &str) -> (Proc, Ports) {
    let f = files();
    let dir = f.pki.dir.path();
    let p = |n: &str| dir.join(n).display().to_string();
    let rule = |subscribe: &str| {
        serde_json::json!({"rules": [{
        "principals": {"usernames": ["alice", "bob"]},
        "brokerResources": [
            {"method": "Connect"},
            {"method": "Publish", "topics": ["#"]},
            {"method": "Subscribe", "topics": [subscribe]}
        ]}]})
    };
    let port = |shards: Option<Vec<u8>>| {
        let mut port = serde_json::json!({"port": 0, "bindAddress": "127.0.0.1"});
        if let Some(shards) = shards {
            port["shards"] = serde_json::json!(shards);
        }
        port
    };
    let with = |mut port: serde_json::Value, key: &str, value: serde_json::Value| {
        port[key] = value;
        port
    };
    let config = serde_json::json!({
        "advanced": {"clients": {"sessionTakeover": takeover}},
        "cardinality": {"frontend": {"workers": 2}},
        "listeners": [
            {"name": "plain", "ports": [port(Some(vec![0]))]},
            {"name": "x509", "ports": [with(with(port(Some(vec![1])), "authenticationRef", "x509".into()),
                "tls", serde_json::json!({"mode": "Manual", "manual": {"certFile": p("server.crt"), "keyFile": p("server.key")}}))]},
            {"name": "pw-wide", "ports": [with(with(port(Some(vec![0])), "authenticationRef", "passwords".into()),
                "authorizationRef", "wide".into())]},
            {"name": "pw-narrow", "ports": [with(with(port(Some(vec![1])), "authenticationRef", "passwords".into()),
                "authorizationRef", "narrow".into())]},
            {"name": "sat", "ports": [with(port(None), "authenticationRef", "sat".into())]}
        ],
        "authentications": [
            {"name": "x509", "authenticationMethods": [
                {"method": "X509", "x509Settings": {"trustedClientCaCert": p("client_root.crt")}}]},
            {"name": "passwords", "authenticationMethods": [
                {"method": "UsernamePassword", "usernamePasswordSettings": {"passwordFile": p("passwd")}}]},
            {"name": "sat", "authenticationMethods": [{"method": "ServiceAccountToken",
                "serviceAccountTokenSettings": {"audiences": ["aio-internal"], "keys": [p("sat.pub.pem")]}}]}
        ],
        "authorizations": [
            {"name": "wide", "authorizationPolicies": rule("#")},
            {"name": "narrow", "authorizationPolicies": rule("public/#")}
        ]
    });
    let path = common::temp_file("identity.json", &config.to_string());
    let (proc, ports) = common::start(&path, 5);
    (
        proc,
        Ports {
            plain: ports[0],
            x509: ports[1],
            pw_wide: ports[2],
            pw_narrow: ports[3],
            sat: ports[4],
        },
    )
}

/// A persistent (expiry 300, clean start 0) v5 session as `user`.
fn as_user(port: u16, id: &str, user: &str) -> (RawClient, ConnAck) {
    RawClient::connect_v5_ack(port, id, |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c.username = Some(user.into());
        c.password = Some(Bytes::from(format!("{user}-pw")));
    })
}

fn with_token(port: u16, id: &str, subject: &str) -> (RawClient, ConnAck) {
    let token = files().sat.token(subject, 600);
    RawClient::connect_v5_ack(port, id, |c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c.properties.authentication_method = Some("K8S-SAT".into());
        c.properties.authentication_data = Some(Bytes::from(token));
    })
}

fn subscribe(c: &mut RawClient, filters: &[&str]) {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Props::default(),
        filters: filters
            .iter()
            .map(|f| {
                let options = SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                };
                ((*f).into(), options)
            })
            .collect(),
    }));
    match c.recv() {
        Some(Packet::SubAck(s)) => assert!(s.reasons.iter().all(|r| !r.is_error()), "{s:?}"),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes at QoS 1 from an anonymous client and waits for the PUBACK.
fn publish(port: u16, topics: &[&str]) {
    let (mut c, _) = RawClient::connect_v5(port, "", None);
    for (i, topic) in topics.iter().enumerate() {
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: (*topic).into(),
            packet_id: PacketId::new(i as u16 + 1),
            properties: Props::default(),
            payload: Bytes::from_static(b"x"),
        }));
        assert!(matches!(c.recv(), Some(Packet::PubAck(_))));
    }
}

/// The topic of the next PUBLISH (acknowledged), skipping other packets.
fn next_topic(c: &mut RawClient) -> String {
    loop {
        match c.recv() {
            Some(Packet::Publish(p)) => {
                if let Some(id) = p.packet_id {
                    c.send(&Packet::PubAck(PubResponse::new(id, ReasonCode::Success)));
                }
                return p.topic.to_string();
            }
            Some(_) => {}
            None => panic!("closed while waiting for a publish"),
        }
    }
}

#[test]
fn another_user_can_neither_resume_nor_kick_a_password_session_across_shards() {
    let (_broker, ports) = broker("SamePrincipal");
    // alice's session lives on shard 0; bob tries from shard 1.
    let (mut alice, ack) = as_user(ports.pw_wide, "dev-1", "alice");
    assert_eq!(ack.reason, ReasonCode::Success);
    subscribe(&mut alice, &["public/alice"]);
    let (_bob, ack) = as_user(ports.pw_narrow, "dev-1", "bob");
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert!(!ack.session_present);
    if common::has_mosquitto_clients() {
        // v3.1.1: CONNACK return code 5, "not authorised" [MQTT-3.2.2-6].
        let out = Command::new("mosquitto_pub")
            .args(["-V", "mqttv311", "-h", "127.0.0.1", "-p"])
            .arg(ports.pw_wide.to_string())
            .args([
                "-i", "dev-1", "-u", "bob", "-P", "bob-pw", "-t", "x", "-m", "x",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("not authori"), "{err}");
    }
    // alice was not kicked: her connection and subscription still work.
    publish(ports.plain, &["public/alice"]);
    assert_eq!(next_topic(&mut alice), "public/alice");
    drop(alice);
    // alice herself resumes from the other shard.
    let (_alice, ack) = as_user(ports.pw_narrow, "dev-1", "alice");
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_client_cannot_take_over_an_x509_session_of_another_port() {
    use rumqttc::v5::MqttOptions;
    use rumqttc::{TlsConfiguration, Transport};
    // The seed's topology: an X509 port and an anonymous plain port.
    let (_broker, ports) = broker("SamePrincipal");
    let ca = files().pki.server_root.cert_pem.clone().into_bytes();
    let (crt, key) = files().client_a.clone();
    let (mut sensor, _) = Client::connect(ports.x509, "sensor-a", |o: &mut MqttOptions| {
        o.set_clean_start(false);
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: Some((crt.into_bytes(), key.into_bytes())),
        }));
    })
    .await;
    sensor.subscribe("cmd/sensor-a", q5(1)).await;
    let plain = ports.plain;
    let (_intruder, ack) = tokio::task::spawn_blocking(move || {
        RawClient::connect_v5_ack(plain, "sensor-a", |c| c.clean_start = false)
    })
    .await
    .unwrap();
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    let plain = ports.plain;
    tokio::task::spawn_blocking(move || publish(plain, &["cmd/sensor-a"]))
        .await
        .unwrap();
    assert_eq!(sensor.publishes(1).await[0].0, "cmd/sensor-a");
}

#[test]
fn a_token_for_another_subject_is_refused_and_the_same_subject_resumes() {
    let (_broker, ports) = broker("SamePrincipal");
    let a = "system:serviceaccount:default:a";
    let (first, ack) = with_token(ports.sat, "tok-1", a);
    assert_eq!(ack.reason, ReasonCode::Success);
    drop(first);
    let (_b, ack) = with_token(ports.sat, "tok-1", "system:serviceaccount:default:b");
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    let (_a, ack) = with_token(ports.sat, "tok-1", a);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(
        ack.session_present,
        "the refused CONNECT left the session alone"
    );
}

#[test]
fn resumed_subscriptions_are_rechecked_against_the_resuming_clients_permissions() {
    let (_broker, ports) = broker("SamePrincipal");
    // On pw-wide alice may subscribe to anything; on pw-narrow to public/# only.
    let (mut alice, _) = as_user(ports.pw_wide, "dev-2", "alice");
    subscribe(&mut alice, &["secret/x", "public/x"]);
    drop(alice);
    let (mut alice, ack) = as_user(ports.pw_narrow, "dev-2", "alice");
    assert!(ack.session_present);
    publish(ports.plain, &["secret/x", "public/x"]);
    // Per-publisher order: public/x first means secret/x was not delivered.
    assert_eq!(next_topic(&mut alice), "public/x");
}

#[test]
fn any_principal_policy_lets_another_user_take_the_session_over() {
    let (_broker, ports) = broker("AnyPrincipal");
    let (mut alice, _) = as_user(ports.pw_wide, "dev-3", "alice");
    subscribe(&mut alice, &["public/a"]);
    let (_bob, ack) = as_user(ports.pw_narrow, "dev-3", "bob");
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present);
    match alice.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
}
