//! Listeners: names, ports and bind addresses are unique, TLS is well formed,
//! references name policies that exist, and Kubernetes-only fields warn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shardmq_core::config::{Config, KeyAlgorithm, ListenerTls, Loaded};

fn load(value: &Value) -> Result<Loaded, Vec<String>> {
    Config::from_json_str(&value.to_string())
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

fn errors(value: Value) -> Vec<String> {
    match load(&value) {
        Ok(_) => panic!("expected errors for {value}"),
        Err(errors) => errors,
    }
}

fn loaded(value: Value) -> Loaded {
    match load(&value) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected {value} to load, got {errors:#?}"),
    }
}

fn one_port(port: Value) -> Value {
    json!({ "listeners": [{ "name": "l", "ports": [port] }] })
}

#[test]
fn explicit_ports_bind_all_interfaces_unless_told_otherwise() {
    let config = loaded(json!({ "listeners": [
        { "name": "public", "ports": [{ "port": 1883 }] },
        { "name": "local", "ports": [{ "port": 1884, "bindAddress": "127.0.0.1" }, { "port": 1885, "bindAddress": "::1" }] }
    ]}))
    .config;
    let addrs: Vec<String> = config
        .listeners
        .iter()
        .flat_map(|l| l.ports.iter().map(|p| p.addr.to_string()))
        .collect();
    assert_eq!(addrs, ["0.0.0.0:1883", "127.0.0.1:1884", "[::1]:1885"]);
}

#[test]
fn an_empty_listener_list_is_an_error() {
    assert_eq!(
        errors(json!({ "listeners": [] })),
        ["listeners: at least one listener is required (leave the section out for the default listener on 127.0.0.1:1883)"]
    );
}

#[test]
fn listener_names_are_required_and_unique() {
    assert_eq!(
        errors(json!({ "listeners": [
            { "name": "a", "ports": [{ "port": 1 }] },
            { "ports": [{ "port": 2 }] },
            { "name": "", "ports": [{ "port": 3 }] },
            { "name": "a", "ports": [{ "port": 4 }] }
        ]})),
        [
            "listeners[1].name: required",
            "listeners[2].name: must not be empty",
            "listeners[3].name: duplicate listener name \"a\" (also listeners[0])",
        ]
    );
}

#[test]
fn ports_are_required_and_in_range() {
    assert_eq!(
        errors(json!({ "listeners": [
            { "name": "a" },
            { "name": "b", "ports": [] },
            { "name": "c", "ports": [{}, { "port": 0 }, { "port": 65536 }, { "port": 65535 }] }
        ]})),
        [
            "listeners[0].ports: required",
            "listeners[1].ports: at least one port is required",
            "listeners[2].ports[0].port: required",
            "listeners[2].ports[2].port: must be between 0 and 65535, got 65536",
        ]
    );
}

#[test]
fn bind_addresses_must_be_ip_addresses() {
    assert_eq!(
        errors(one_port(json!({ "port": 1883, "bindAddress": "localhost" }))),
        ["listeners[0].ports[0].bindAddress: not an IP address: \"localhost\" (e.g. \"0.0.0.0\", \"127.0.0.1\", \"::\")"]
    );
}

#[test]
fn the_same_address_twice_anywhere_is_an_error() {
    assert_eq!(
        errors(json!({ "listeners": [
            { "name": "a", "ports": [{ "port": 1883 }, { "port": 8883 }] },
            { "name": "b", "ports": [{ "port": 8883, "bindAddress": "0.0.0.0" }] }
        ]})),
        ["listeners[1].ports[0]: 0.0.0.0:8883 is already used by listeners[0].ports[1]"]
    );
    assert_eq!(
        errors(json!({ "listeners": [
            { "name": "a", "ports": [{ "port": 1883, "bindAddress": "127.0.0.1" }, { "port": 1883, "bindAddress": "127.0.0.1" }] }
        ]})),
        ["listeners[0].ports[1]: 127.0.0.1:1883 is already used by listeners[0].ports[0]"]
    );
}

#[test]
fn a_wildcard_address_conflicts_with_any_address_on_its_port() {
    assert_eq!(
        errors(json!({ "listeners": [
            { "name": "a", "ports": [{ "port": 1883, "bindAddress": "127.0.0.1" }] },
            { "name": "b", "ports": [{ "port": 1883 }] }
        ]})),
        ["listeners[1].ports[0]: 0.0.0.0:1883 is already used by listeners[0].ports[0] (127.0.0.1:1883)"]
    );
    assert_eq!(
        errors(json!({ "listeners": [
            { "name": "a", "ports": [{ "port": 1883, "bindAddress": "::" }] },
            { "name": "b", "ports": [{ "port": 1883, "bindAddress": "10.0.0.1" }] }
        ]})),
        ["listeners[1].ports[0]: 10.0.0.1:1883 is already used by listeners[0].ports[0] ([::]:1883)"]
    );
}

#[test]
fn distinct_specific_addresses_may_share_a_port() {
    let config = loaded(json!({ "listeners": [
        { "name": "a", "ports": [{ "port": 1883, "bindAddress": "127.0.0.1" }] },
        { "name": "b", "ports": [{ "port": 1883, "bindAddress": "192.168.2.196" }] },
        { "name": "c", "ports": [{ "port": 1883, "bindAddress": "::1" }] }
    ]}))
    .config;
    assert_eq!(config.listeners.len(), 3);
}

#[test]
fn websockets_is_not_supported_yet() {
    assert_eq!(
        errors(one_port(json!({ "port": 443, "protocol": "WebSockets" }))),
        ["listeners[0].ports[0].protocol: WebSockets is not supported yet (use Mqtt)"]
    );
    assert_eq!(
        errors(one_port(json!({ "port": 443, "protocol": "amqp" }))),
        ["listeners[0].ports[0].protocol: unknown value \"amqp\", expected one of Mqtt"]
    );
    loaded(one_port(json!({ "port": 1883, "protocol": "mqtt" })));
}

#[test]
fn kubernetes_listener_fields_are_warnings() {
    let warnings: Vec<String> = loaded(json!({ "listeners": [{
        "name": "aio", "brokerRef": "default", "serviceName": "svc", "serviceType": "NodePort",
        "ports": [{ "port": 31883, "nodePort": 31883 }]
    }]}))
    .warnings
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        warnings,
        [
            "listeners[0].brokerRef: Kubernetes-only field, ignored",
            "listeners[0].serviceName: Kubernetes-only field, ignored",
            "listeners[0].serviceType: Kubernetes-only field, ignored",
            "listeners[0].ports[0].nodePort: Kubernetes-only field, ignored",
        ]
    );
}

#[test]
fn manual_tls_takes_cert_and_key_files() {
    let config = loaded(one_port(json!({ "port": 8883, "tls": {
        "mode": "manual", "manual": { "certFile": "server-chain.pem", "keyFile": "server.key" }
    }})))
    .config;
    let Some(ListenerTls::Manual(files)) = &config.listeners[0].ports[0].tls else {
        panic!("expected manual TLS");
    };
    assert_eq!(files.cert_file, Path::new("server-chain.pem"));
    assert_eq!(files.key_file, Path::new("server.key"));
}

#[test]
fn manual_tls_problems_name_the_missing_piece() {
    let cases = [
        (json!({ "manual": { "certFile": "a.pem", "keyFile": "a.key" } }), "listeners[0].ports[0].tls.mode: required (Automatic or Manual)"),
        (json!({ "mode": "Manual" }), "listeners[0].ports[0].tls.manual: required when tls.mode is Manual (certFile and keyFile, or secretRef)"),
        (json!({ "mode": "Manual", "manual": {} }), "listeners[0].ports[0].tls.manual: certFile and keyFile (or secretRef) are required"),
        (json!({ "mode": "Manual", "manual": { "certFile": "a.pem" } }), "listeners[0].ports[0].tls.manual.keyFile: required with certFile"),
        (json!({ "mode": "Manual", "manual": { "keyFile": "a.key" } }), "listeners[0].ports[0].tls.manual.certFile: required with keyFile"),
        (json!({ "mode": "Manual", "manual": { "certFile": "", "keyFile": "a.key" } }), "listeners[0].ports[0].tls.manual.certFile: must not be empty"),
        (json!({ "mode": "Manual", "manual": { "secretRef": "broker-server-cert" } }), "listeners[0].ports[0].tls.manual.secretRef: needs the top-level secretsDir, where broker-server-cert.crt and broker-server-cert.key are read from (or give certFile and keyFile instead)"),
        (json!({ "mode": "Manual", "manual": { "secretRef": "x", "certFile": "a.pem" } }), "listeners[0].ports[0].tls.manual.secretRef: give either secretRef or certFile and keyFile, not both"),
        (json!({ "mode": "Manual", "manual": { "secretRef": "../etc/x" } }), "listeners[0].ports[0].tls.manual.secretRef: not a secret name: \"../etc/x\" (a plain name, no path separators)"),
        (json!({ "mode": "Sometimes" }), "listeners[0].ports[0].tls.mode: unknown value \"Sometimes\", expected one of Automatic, Manual"),
    ];
    for (tls, expected) in cases {
        assert_eq!(
            errors(one_port(json!({ "port": 8883, "tls": tls }))),
            [expected],
            "{tls}"
        );
    }
}

#[test]
fn secret_refs_resolve_to_crt_and_key_files_in_the_secrets_dir() {
    let config = loaded(json!({
        "secretsDir": "secrets",
        "listeners": [{ "name": "l", "ports": [{ "port": 8883, "tls": {
            "mode": "Manual", "manual": { "secretRef": "broker-server-cert" } } }] }]
    }))
    .config;
    let Some(ListenerTls::Manual(files)) = &config.listeners[0].ports[0].tls else {
        panic!("expected manual TLS");
    };
    assert_eq!(files.cert_file, Path::new("secrets/broker-server-cert.crt"));
    assert_eq!(files.key_file, Path::new("secrets/broker-server-cert.key"));
}

#[test]
fn automatic_tls_defaults_to_aio_certificate_policy() {
    let config = loaded(one_port(
        json!({ "port": 8883, "tls": { "mode": "Automatic" } }),
    ))
    .config;
    let Some(ListenerTls::Automatic(automatic)) = &config.listeners[0].ports[0].tls else {
        panic!("expected automatic TLS");
    };
    assert_eq!(automatic.cert.duration, Duration::from_secs(720 * 3600));
    assert_eq!(automatic.cert.renew_before, Duration::from_secs(240 * 3600));
    assert_eq!(automatic.cert.private_key.algorithm, KeyAlgorithm::Ec256);
    assert!(automatic.san_dns.is_empty() && automatic.san_ip.is_empty());
}

#[test]
fn automatic_tls_reads_the_cert_manager_spec() {
    let loaded = loaded(one_port(json!({ "port": 8883, "tls": {
        "mode": "automatic",
        "certManagerCertificateSpec": {
            "duration": "48h", "renewBefore": "12h",
            "san": { "dns": ["broker.local"], "ip": ["192.168.2.196", "::1"] },
            "privateKey": { "algorithm": "Ec384" },
            "issuerRef": { "name": "issuer" }, "secretName": "s"
        },
        "manual": { "certFile": "a", "keyFile": "b" }
    }})));
    let Some(ListenerTls::Automatic(automatic)) = &loaded.config.listeners[0].ports[0].tls else {
        panic!("expected automatic TLS");
    };
    assert_eq!(automatic.cert.duration, Duration::from_secs(48 * 3600));
    assert_eq!(automatic.cert.renew_before, Duration::from_secs(12 * 3600));
    assert_eq!(automatic.cert.private_key.algorithm, KeyAlgorithm::Ec384);
    assert_eq!(automatic.san_dns, ["broker.local"]);
    assert_eq!(
        automatic.san_ip,
        [
            "192.168.2.196".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "listeners[0].ports[0].tls.manual: ignored: tls.mode is Automatic",
            "listeners[0].ports[0].tls.certManagerCertificateSpec.issuerRef: Kubernetes-only field, ignored",
            "listeners[0].ports[0].tls.certManagerCertificateSpec.secretName: Kubernetes-only field, ignored",
        ]
    );
}

#[test]
fn automatic_tls_problems_name_the_field() {
    assert_eq!(
        errors(one_port(json!({ "port": 8883, "tls": { "mode": "Automatic",
            "certManagerCertificateSpec": { "duration": "1h", "renewBefore": "2h",
                "san": { "ip": ["broker.local"] } } } }))),
        [
            "listeners[0].ports[0].tls.certManagerCertificateSpec.renewBefore: must be shorter than duration (1h), got 2h",
            "listeners[0].ports[0].tls.certManagerCertificateSpec.san.ip[0]: not an IP address: \"broker.local\"",
        ]
    );
}

#[test]
fn references_to_missing_policies_are_errors_with_the_defined_names() {
    assert_eq!(
        errors(json!({
            "listeners": [
                { "name": "plain", "ports": [{ "port": 31883 }] },
                { "name": "secure", "ports": [{ "port": 8883, "authenticationRef": "x509-policy", "authorizationRef": "rules" }] }
            ],
            "authentications": [{ "name": "sat", "authenticationMethods": [
                { "method": "ServiceAccountToken", "serviceAccountTokenSettings": { "audiences": ["aio-internal"], "keys": ["sat.jwks"] } }
            ]}]
        })),
        [
            "listeners[1].ports[0].authenticationRef: no authentication named \"x509-policy\" (defined: [\"sat\"])",
            "listeners[1].ports[0].authorizationRef: no authorization named \"rules\" (defined: [])",
        ]
    );
}

#[test]
fn references_to_policies_that_failed_to_load_are_not_reported_twice() {
    assert_eq!(
        errors(json!({
            "listeners": [{ "name": "l", "ports": [{ "port": 8883, "authenticationRef": "x509-policy" }] }],
            "authentications": [{ "name": "x509-policy", "authenticationMethod": [] }]
        })),
        ["authentications[0].authenticationMethod: unknown field, did you mean \"authenticationMethods\"?"]
    );
}

#[test]
fn references_resolve_to_the_named_policies() {
    let config = loaded(json!({
        "listeners": [{ "name": "l", "ports": [{ "port": 8883, "authenticationRef": "up", "authorizationRef": "all" }] }],
        "authentications": [{ "name": "up", "authenticationMethods": [
            { "method": "UsernamePassword", "usernamePasswordSettings": { "passwordFile": "passwords" } }
        ]}],
        "authorizations": [{ "name": "all", "authorizationPolicies": { "rules": [
            { "principals": { "usernames": ["*"] }, "brokerResources": [{ "method": "Connect" }] }
        ]}}]
    }))
    .config;
    let port = &config.listeners[0].ports[0];
    let authentication = config
        .authentication(port.authentication_ref.as_deref().unwrap())
        .unwrap();
    assert_eq!(authentication.name, "up");
    let authorization = config
        .authorization(port.authorization_ref.as_deref().unwrap())
        .unwrap();
    assert_eq!(authorization.name, "all");
}
