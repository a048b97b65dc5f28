//! Service-account tokens (MQTT v5 enhanced authentication, method
//! `K8S-SAT`) end to end through the binary: a signed JWT in CONNECT, bad and
//! expired tokens refused, a connection closed when its token expires, and
//! re-authentication with AUTH 0x19 (v5 §4.12.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::RawClient;
use shardmq_core::codec::{Auth, Packet, Properties, ReasonCode};

const METHOD: &str = "K8S-SAT";

struct Keys {
    private_pem: String,
    public_pem: String,
}

fn ed25519() -> Keys {
    let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Keys {
        private_pem: k.serialize_pem(),
        public_pem: k.public_key_pem(),
    }
}

fn token(keys: &Keys, exp_from_now: i64) -> Bytes {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "aud": ["aio-internal"],
        "exp": now + exp_from_now,
        "nbf": now - 10,
        "sub": "system:serviceaccount:default:sensor",
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "sensor", "uid": "1"}}
    });
    let key = jsonwebtoken::EncodingKey::from_ed_pem(keys.private_pem.as_bytes()).unwrap();
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .unwrap();
    Bytes::from(t)
}

fn broker(keys: &Keys) -> (common::Proc, u16) {
    let key_file = common::temp_file("sat.pub.pem", &keys.public_pem);
    let config = serde_json::json!({
        "listeners": [{"name": "sat", "ports": [{"port": 0, "bindAddress": "127.0.0.1", "authenticationRef": "sat"}]}],
        "authentications": [{"name": "sat", "authenticationMethods": [{"method": "ServiceAccountToken",
            "serviceAccountTokenSettings": {"audiences": ["aio-internal"], "keys": [key_file.display().to_string()]}}]}]
    });
    let path = common::temp_file("sat.json", &config.to_string());
    let (proc, ports) = common::start(&path, 1);
    (proc, ports[0])
}

fn connect(port: u16, id: &str, token: Bytes) -> (RawClient, ReasonCode) {
    RawClient::connect_v5_with(port, id, |c| {
        c.properties.authentication_method = Some(METHOD.into());
        c.properties.authentication_data = Some(token);
    })
}

#[test]
fn a_valid_token_in_connect_is_accepted() {
    let keys = ed25519();
    let (_b, port) = broker(&keys);
    let (_c, reason) = connect(port, "sensor-1", token(&keys, 3600));
    assert_eq!(reason, ReasonCode::Success);
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let keys = ed25519();
    let (_b, port) = broker(&keys);
    let (_c, reason) = connect(port, "sensor-1", token(&ed25519(), 3600));
    assert!(reason.is_error(), "{reason:?}");
}

#[test]
fn an_expired_token_is_refused() {
    let keys = ed25519();
    let (_b, port) = broker(&keys);
    let (_c, reason) = connect(port, "sensor-1", token(&keys, -60));
    assert!(reason.is_error(), "{reason:?}");
}

#[test]
fn an_unknown_authentication_method_gets_0x8c() {
    let keys = ed25519();
    let (_b, port) = broker(&keys);
    let (_c, reason) = RawClient::connect_v5_with(port, "x", |c| {
        c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    });
    assert_eq!(reason, ReasonCode::BadAuthenticationMethod);
}

#[test]
fn the_connection_is_closed_when_its_token_expires() {
    let keys = ed25519();
    let (_b, port) = broker(&keys);
    let (mut c, reason) = connect(port, "short-lived", token(&keys, 2));
    assert_eq!(reason, ReasonCode::Success);
    match c.recv() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT at expiry, got {other:?}"),
    }
}

fn reauth(c: &mut RawClient, token: Bytes) {
    c.send(&Packet::Auth(Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: Properties {
            authentication_method: Some(METHOD.into()),
            authentication_data: Some(token),
            ..Properties::default()
        }
        .into(),
    }));
}

#[test]
fn reauthentication_with_a_fresh_token_succeeds_and_a_bad_one_disconnects() {
    let keys = ed25519();
    let (_b, port) = broker(&keys);
    let (mut c, reason) = connect(port, "renewing", token(&keys, 3600));
    assert_eq!(reason, ReasonCode::Success);
    reauth(&mut c, token(&keys, 7200));
    match c.recv() {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
        }
        other => panic!("expected AUTH success, got {other:?}"),
    }
    reauth(&mut c, token(&ed25519(), 7200));
    match c.recv() {
        Some(Packet::Disconnect(d)) => assert!(d.reason.is_error(), "{:?}", d.reason),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}
