//! AIO Broker fragments users bring along (examples/aio/, copied as AIO documents them)
//! must load as they are, alone and merged with a listeners section, and
//! their values must land in the typed config. The examples in
//! docs/CONFIG.md must load too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use shardmq_core::config::{
    AuthenticationMethod, Config, KeyAlgorithm, ListenerTls, Loaded, RotationPolicy, TokenKey,
};
use shardmq_core::limits::QueueFullStrategy;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aio")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(examples_dir().join(name)).unwrap()
}

fn load(text: &str) -> Loaded {
    match Config::from_json_str(text) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("config did not load:\n{errors}\n--- config:\n{text}"),
    }
}

/// Top-level keys union, as a user pasting sections together would do.
fn merge(fragment: &str, extra: &Value) -> String {
    let mut merged: Value = serde_json::from_str(fragment).unwrap();
    let object = merged.as_object_mut().unwrap();
    for (key, value) in extra.as_object().unwrap() {
        assert!(!object.contains_key(key), "fragment already has {key}");
        object.insert(key.clone(), value.clone());
    }
    merged.to_string()
}

/// The seed scenario's listeners: 31883 anonymous plain, 8883 X509 over TLS.
fn listeners_section() -> Value {
    json!({
        "secretsDir": "/etc/shardmq/secrets",
        "listeners": [
            {
                "name": "nodeport-listener",
                "serviceType": "NodePort",
                "ports": [{ "port": 31883, "nodePort": 31883 }]
            },
            {
                "name": "loadbalancer-listener",
                "serviceName": "loadbalancer-listener-service",
                "serviceType": "LoadBalancer",
                "ports": [{
                    "port": 8883,
                    "authenticationRef": "x509-policy",
                    "tls": { "mode": "Manual", "manual": { "secretRef": "broker-server-cert" } }
                }]
            }
        ],
        "authentications": [{
            "name": "x509-policy",
            "authenticationMethods": [{
                "method": "X509",
                "x509Settings": { "trustedClientCaCert": "clients42-ca.pem" }
            }]
        }]
    })
}

#[test]
fn every_shared_example_loads_alone_without_errors() {
    let mut count = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let loaded = load(&text);
            assert!(
                loaded.warnings.is_empty(),
                "{path:?}: {:?}",
                loaded.warnings
            );
            count += 1;
        }
    }
    assert!(
        count >= 3,
        "expected the AIO fragments in {:?}",
        examples_dir()
    );
}

#[test]
fn every_shared_example_loads_merged_with_listeners() {
    for name in [
        "aio-advanced-clients.json",
        "aio-advanced-encryption.json",
        "aio-encryption-disabled.json",
    ] {
        let loaded = load(&merge(&example(name), &listeners_section()));
        let ports: Vec<u16> = loaded
            .config
            .listeners
            .iter()
            .flat_map(|l| l.ports.iter().map(|p| p.addr.port()))
            .collect();
        assert_eq!(ports, [31883, 8883], "{name}");
    }
}

#[test]
fn aio_advanced_clients_sets_the_client_limits() {
    let config = load(&example("aio-advanced-clients.json")).config;
    let limits = &config.advanced.clients;
    assert_eq!(limits.session_expiry_max, Duration::from_secs(282_277));
    assert_eq!(limits.message_expiry_max, Some(Duration::from_secs(1622)));
    assert_eq!(limits.queue.length_max.unwrap().get(), 1000);
    assert_eq!(limits.queue.strategy, QueueFullStrategy::DropOldest);
    assert_eq!(limits.receive_maximum_max.get(), 15_000);
    assert_eq!(limits.keep_alive_max.get(), 300);
    // Not in the fragment: the defaults stay.
    assert_eq!(limits.packet_size_max.get(), 268_435_460);
    assert!(config.advanced.encrypt_internal_traffic);
}

#[test]
fn aio_advanced_encryption_sets_the_internal_certificate_policy() {
    let config = load(&example("aio-advanced-encryption.json")).config;
    assert!(config.advanced.encrypt_internal_traffic);
    let certs = &config.advanced.internal_certs;
    assert_eq!(certs.duration, Duration::from_secs(240 * 3600));
    assert_eq!(certs.renew_before, Duration::from_secs(45 * 60));
    assert_eq!(certs.private_key.algorithm, KeyAlgorithm::Rsa2048);
    assert_eq!(certs.private_key.rotation, RotationPolicy::Always);
}

#[test]
fn aio_encryption_disabled_turns_internal_encryption_off() {
    let config = load(&example("aio-encryption-disabled.json")).config;
    assert!(!config.advanced.encrypt_internal_traffic);
}

#[test]
fn fragments_without_listeners_get_the_default_listener() {
    let config = load(&example("aio-encryption-disabled.json")).config;
    assert_eq!(config.listeners, Config::default().listeners);
    assert_eq!(
        config.listeners[0].ports[0].addr,
        "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn merged_seed_scenario_lands_where_expected() {
    let loaded = load(&merge(
        &example("aio-advanced-clients.json"),
        &listeners_section(),
    ));
    let config = &loaded.config;
    let plain = &config.listeners[0].ports[0];
    assert_eq!(plain.addr, "0.0.0.0:31883".parse().unwrap());
    assert_eq!(plain.authentication_ref, None);
    assert_eq!(plain.tls, None);
    let secure = &config.listeners[1].ports[0];
    assert_eq!(secure.addr, "0.0.0.0:8883".parse().unwrap());
    assert_eq!(secure.authentication_ref.as_deref(), Some("x509-policy"));
    let Some(ListenerTls::Manual(files)) = &secure.tls else {
        panic!("expected manual TLS, got {:?}", secure.tls);
    };
    assert_eq!(
        files.cert_file,
        Path::new("/etc/shardmq/secrets/broker-server-cert.crt")
    );
    assert_eq!(
        files.key_file,
        Path::new("/etc/shardmq/secrets/broker-server-cert.key")
    );
    let policy = config.authentication("x509-policy").unwrap();
    let AuthenticationMethod::X509(x509) = &policy.methods[0] else {
        panic!("expected X509, got {:?}", policy.methods[0]);
    };
    assert_eq!(x509.trusted_client_ca_cert, Path::new("clients42-ca.pem"));
    // serviceType x2, serviceName, nodePort: Kubernetes-only, warned about.
    let warned: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        warned,
        [
            "listeners[0].serviceType",
            "listeners[0].ports[0].nodePort",
            "listeners[1].serviceName",
            "listeners[1].serviceType",
        ]
    );
}

#[test]
fn both_advanced_fragments_deep_merged_keep_both_halves() {
    let mut clients: Value = serde_json::from_str(&example("aio-advanced-clients.json")).unwrap();
    let encryption: Value = serde_json::from_str(&example("aio-advanced-encryption.json")).unwrap();
    for (key, value) in encryption["advanced"].as_object().unwrap() {
        clients["advanced"][key] = value.clone();
    }
    let config = load(&clients.to_string()).config;
    assert_eq!(config.advanced.clients.keep_alive_max.get(), 300);
    assert_eq!(
        config.advanced.internal_certs.private_key.algorithm,
        KeyAlgorithm::Rsa2048
    );
}

#[test]
fn default_json_round_trips_to_the_default_config() {
    let text = Config::default_json();
    let loaded = load(&text);
    assert_eq!(loaded.config, Config::default());
    assert!(loaded.warnings.is_empty());
    let listener = &loaded.config.listeners[0];
    assert_eq!(listener.name, "default");
    assert_eq!(listener.ports[0].addr, "127.0.0.1:1883".parse().unwrap());
    assert_eq!(listener.ports[0].tls, None);
    assert_eq!(listener.ports[0].authentication_ref, None);
    assert_eq!(listener.ports[0].authorization_ref, None);
    assert!(loaded.config.authentications.is_empty());
    assert!(loaded.config.authorizations.is_empty());
}

/// Every ```json block in docs/CONFIG.md that starts with `{` is a whole
/// config and must load; the reference must not drift from the code.
#[test]
fn configs_in_the_reference_docs_load() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let mut blocks = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```json\n") {
        let body = &rest[start + "```json\n".len()..];
        let end = body.find("```").unwrap();
        let block = &body[..end];
        if block.trim_start().starts_with('{') {
            load(block);
            blocks += 1;
        }
        rest = &body[end + 3..];
    }
    assert!(blocks >= 2, "expected example configs in {doc_path:?}");
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let config = load(&merge(
        &example("aio-encryption-disabled.json"),
        &listeners_section(),
    ))
    .config
    .with_base_dir(Path::new("/etc/shardmq"));
    let AuthenticationMethod::X509(x509) = &config.authentications[0].methods[0] else {
        panic!("expected X509");
    };
    assert_eq!(
        x509.trusted_client_ca_cert,
        Path::new("/etc/shardmq/clients42-ca.pem")
    );
    // Absolute paths stay as written.
    let Some(ListenerTls::Manual(files)) = &config.listeners[1].ports[0].tls else {
        panic!("expected manual TLS");
    };
    assert_eq!(
        files.cert_file,
        Path::new("/etc/shardmq/secrets/broker-server-cert.crt")
    );
}

/// Every path a config can hold, written relative: each resolves against
/// the config file's folder, none against the working directory.
#[test]
fn every_relative_path_in_the_config_resolves_against_its_folder() {
    let inline_jwks = r#"{"keys": []}"#;
    let config = load(
        &json!({
            "secretsDir": "secrets",
            "stateDir": "state",
            "diskBackedMessageBuffer": { "maxSize": "1G", "dataDir": "buffer" },
            "listeners": [{ "name": "l", "ports": [
                { "port": 8883, "tls": { "mode": "Manual", "manual": { "certFile": "tls/a.crt", "keyFile": "tls/a.key" } } },
                { "port": 8884, "tls": { "mode": "Manual", "manual": { "secretRef": "server" } } }
            ]}],
            "authentications": [{ "name": "all", "authenticationMethods": [
                { "method": "X509", "x509Settings": { "trustedClientCaCert": "ca.pem" } },
                { "method": "ServiceAccountToken", "serviceAccountTokenSettings": {
                    "audiences": ["a"], "keys": ["keys/sat.pem", inline_jwks, "/abs/sat.jwks"] } },
                { "method": "Custom", "customSettings": { "endpoint": "https://h", "caCertConfigMap": "hook-ca.pem",
                    "auth": { "x509": { "certFile": "hook.crt", "keyFile": "hook.key" } } } },
                { "method": "UsernamePassword", "usernamePasswordSettings": { "passwordFile": "passwords.txt" } }
            ]}]
        })
        .to_string(),
    )
    .config
    .with_base_dir(Path::new("/etc/shardmq"));
    let base = |p: &str| Path::new("/etc/shardmq").join(p);
    assert_eq!(config.secrets_dir, Some(base("secrets")));
    assert_eq!(config.state_dir, Some(base("state")));
    assert_eq!(
        config.disk_buffer.as_ref().unwrap().data_dir,
        Some(base("buffer"))
    );
    let tls = |i: usize| match &config.listeners[0].ports[i].tls {
        Some(ListenerTls::Manual(files)) => (files.cert_file.clone(), files.key_file.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(tls(0), (base("tls/a.crt"), base("tls/a.key")));
    assert_eq!(
        tls(1),
        (base("secrets/server.crt"), base("secrets/server.key"))
    );
    let methods = &config.authentications[0].methods;
    let AuthenticationMethod::X509(x509) = &methods[0] else {
        panic!("{:?}", methods[0])
    };
    assert_eq!(x509.trusted_client_ca_cert, base("ca.pem"));
    let AuthenticationMethod::ServiceAccountToken(sat) = &methods[1] else {
        panic!("{:?}", methods[1])
    };
    assert_eq!(
        sat.keys,
        [
            TokenKey::File(base("keys/sat.pem")),
            TokenKey::Inline(inline_jwks.to_owned()),
            TokenKey::File("/abs/sat.jwks".into()),
        ]
    );
    let AuthenticationMethod::Custom(custom) = &methods[2] else {
        panic!("{:?}", methods[2])
    };
    assert_eq!(custom.ca_cert_file, Some(base("hook-ca.pem")));
    let client = custom.client_cert.as_ref().unwrap();
    assert_eq!(
        (client.cert_file.clone(), client.key_file.clone()),
        (base("hook.crt"), base("hook.key"))
    );
    let AuthenticationMethod::UsernamePassword(up) = &methods[3] else {
        panic!("{:?}", methods[3])
    };
    assert_eq!(up.password_file, base("passwords.txt"));
}

#[test]
fn the_documented_default_is_what_the_server_prints() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let section = &doc[doc.find("## The built-in default").unwrap()..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let end = start + section[start..].find("```").unwrap();
    assert_eq!(section[start..end].trim_end(), Config::default_json());
}
