//! Authentication and authorization policies: each method has the settings it
//! needs, names are unique, rules are well formed, and each problem names
//! its path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::{json, Value};
use shardmq_core::config::{AuthenticationMethod, BrokerAction, Config, Loaded, TokenKey};

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

fn warnings(value: Value) -> Vec<String> {
    loaded(value)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn method(method: Value) -> Value {
    json!({ "authentications": [{ "name": "p", "authenticationMethods": [method] }] })
}

fn rule(rule: Value) -> Value {
    json!({ "authorizations": [{ "name": "r", "authorizationPolicies": { "rules": [rule] } }] })
}

#[test]
fn methods_are_kept_in_order_with_their_settings() {
    let config = loaded(json!({
        "secretsDir": "/etc/shardmq/secrets",
        "authentications": [{ "name": "layered", "authenticationMethods": [
            { "method": "x509", "x509Settings": {
                "trustedClientCaCert": "client-ca.pem",
                "authorizationAttributes": { "root": { "subject": "CN = Contoso Root CA Cert, OU = Engineering, C = US", "attributes": { "organization": "contoso" } } }
            } },
            { "method": "ServiceAccountToken", "serviceAccountTokenSettings": { "audiences": ["aio-internal"], "keys": ["sat-keys.jwks"] } },
            { "method": "Custom", "customSettings": {
                "endpoint": "https://auth-server-template:8443", "caCertConfigMap": "custom-auth-ca.pem",
                "headers": { "X-Broker": "shardmq" }, "auth": { "x509": { "secretRef": "custom-auth-client-cert" } }
            } },
            { "method": "UsernamePassword", "usernamePasswordSettings": { "passwordFile": "passwords.txt" } }
        ]}]
    }))
    .config;
    let methods = &config.authentications[0].methods;
    assert_eq!(methods.len(), 4);
    let AuthenticationMethod::X509(x509) = &methods[0] else {
        panic!("{:?}", methods[0])
    };
    assert_eq!(x509.trusted_client_ca_cert, Path::new("client-ca.pem"));
    assert_eq!(
        x509.authorization_attributes["root"].attributes["organization"],
        "contoso"
    );
    let AuthenticationMethod::ServiceAccountToken(sat) = &methods[1] else {
        panic!("{:?}", methods[1])
    };
    assert_eq!(sat.audiences, ["aio-internal"]);
    assert_eq!(sat.keys, [TokenKey::File("sat-keys.jwks".into())]);
    let AuthenticationMethod::Custom(custom) = &methods[2] else {
        panic!("{:?}", methods[2])
    };
    assert_eq!(custom.endpoint, "https://auth-server-template:8443");
    assert_eq!(
        custom.ca_cert_file.as_deref(),
        Some(Path::new("custom-auth-ca.pem"))
    );
    assert_eq!(custom.headers["X-Broker"], "shardmq");
    // Header values often carry credentials.
    assert!(format!("{custom:?}").contains(r#""X-Broker": "***""#));
    assert!(!format!("{custom:?}").contains("shardmq\""));
    assert_eq!(
        custom.client_cert.as_ref().unwrap().cert_file,
        Path::new("/etc/shardmq/secrets/custom-auth-client-cert.crt")
    );
    let AuthenticationMethod::UsernamePassword(up) = &methods[3] else {
        panic!("{:?}", methods[3])
    };
    assert_eq!(up.password_file, Path::new("passwords.txt"));
}

#[test]
fn each_method_requires_its_settings() {
    let cases = [
        (json!({ "method": "X509" }), "authentications[0].authenticationMethods[0].x509Settings.trustedClientCaCert: required"),
        (json!({ "method": "X509", "x509Settings": { "authorizationAttributes": {} } }), "authentications[0].authenticationMethods[0].x509Settings.trustedClientCaCert: required"),
        (json!({ "method": "ServiceAccountToken" }), "authentications[0].authenticationMethods[0].serviceAccountTokenSettings.audiences: at least one audience is required for method ServiceAccountToken"),
        (json!({ "method": "Custom", "customSettings": {} }), "authentications[0].authenticationMethods[0].customSettings.endpoint: required"),
        (json!({ "method": "Custom", "customSettings": { "endpoint": "http://auth:8080" } }), "authentications[0].authenticationMethods[0].customSettings.endpoint: must be an https:// URL, got \"http://auth:8080\""),
        (json!({ "method": "UsernamePassword" }), "authentications[0].authenticationMethods[0].usernamePasswordSettings.passwordFile: required"),
        (json!({}), "authentications[0].authenticationMethods[0].method: required (X509, ServiceAccountToken, Custom or UsernamePassword)"),
        (json!({ "method": "Kerberos" }), "authentications[0].authenticationMethods[0].method: unknown value \"Kerberos\", expected one of X509, ServiceAccountToken, Custom, UsernamePassword"),
        (json!({ "method": "X509", "x509Settings": { "trustedClientCaCert": "ca.pem", "authorizationAttributes": { "a": { "attributes": {} } } } }), "authentications[0].authenticationMethods[0].x509Settings.authorizationAttributes.a.subject: required"),
        (json!({ "method": "Custom", "customSettings": { "endpoint": "https://a", "auth": { "x509": { "secretRef": "c" } } } }), "authentications[0].authenticationMethods[0].customSettings.auth.x509.secretRef: needs the top-level secretsDir, where c.crt and c.key are read from (or give certFile and keyFile instead)"),
    ];
    for (raw, expected) in cases {
        assert_eq!(errors(method(raw.clone())), [expected], "{raw}");
    }
}

#[test]
fn authentication_names_and_methods_are_required_and_unique() {
    let x509 = json!([{ "method": "X509", "x509Settings": { "trustedClientCaCert": "ca.pem" } }]);
    assert_eq!(
        errors(json!({ "authentications": [
            { "name": "a", "authenticationMethods": x509 },
            { "name": "a", "authenticationMethods": x509 },
            { "authenticationMethods": x509 },
            { "name": "b" },
            { "name": "c", "authenticationMethods": [] }
        ]})),
        [
            "authentications[1].name: duplicate authentication name \"a\"",
            "authentications[2].name: required",
            "authentications[3].authenticationMethods: required",
            "authentications[4].authenticationMethods: at least one method is required",
        ]
    );
}

#[test]
fn settings_for_another_method_are_warned_about() {
    assert_eq!(
        warnings(method(json!({ "method": "X509",
            "x509Settings": { "trustedClientCaCert": "ca.pem" },
            "customSettings": { "endpoint": "https://a" } }))),
        ["authentications[0].authenticationMethods[0].customSettings: ignored: method is X509"]
    );
}

#[test]
fn service_account_tokens_without_keys_warn_that_all_are_rejected() {
    assert_eq!(
        warnings(method(json!({ "method": "ServiceAccountToken",
            "serviceAccountTokenSettings": { "audiences": ["aio-internal"] } }))),
        ["authentications[0].authenticationMethods[0].serviceAccountTokenSettings.keys: no verification keys: every token will be rejected (Kubernetes TokenReview is not available)"]
    );
}

#[test]
fn authorization_rules_land_typed() {
    let config = loaded(json!({ "authorizations": [{ "name": "r", "authorizationPolicies": {
        "cache": "disabled",
        "rules": [{
            "principals": { "clientIds": ["temperature-sensor"], "usernames": ["u"], "attributes": [{ "floor": "floor1", "site": "site1" }] },
            "brokerResources": [
                { "method": "Connect", "clientIds": ["temperature-*"] },
                { "method": "publish", "topics": ["/telemetry/{principal.clientId}", "/telemetry/+/#"] },
                { "method": "SUBSCRIBE", "topics": ["/commands/{principal.attributes.organization}"] }
            ]
        }]
    }}]}))
    .config;
    let authorization = &config.authorizations[0];
    assert!(!authorization.cache);
    let rule = &authorization.rules[0];
    assert_eq!(rule.principals.client_ids, ["temperature-sensor"]);
    assert_eq!(rule.principals.attributes[0]["site"], "site1");
    let actions: Vec<BrokerAction> = rule.broker_resources.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [
            BrokerAction::Connect,
            BrokerAction::Publish,
            BrokerAction::Subscribe
        ]
    );
    assert_eq!(rule.broker_resources[0].client_ids, ["temperature-*"]);
    assert_eq!(rule.broker_resources[1].topics.len(), 2);
}

#[test]
fn malformed_rules_name_the_path() {
    let connect = json!([{ "method": "Connect" }]);
    let cases = [
        (json!({ "brokerResources": connect }), "authorizations[0].authorizationPolicies.rules[0].principals: required: at least one of clientIds, usernames, attributes"),
        (json!({ "principals": {}, "brokerResources": connect }), "authorizations[0].authorizationPolicies.rules[0].principals: required: at least one of clientIds, usernames, attributes"),
        (json!({ "principals": { "usernames": ["u"] } }), "authorizations[0].authorizationPolicies.rules[0].brokerResources: at least one broker resource is required"),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Connect", "topics": ["a"] }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].topics: not allowed for method Connect"),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Publish" }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].topics: at least one topic is required for method Publish"),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Subscribe", "topics": ["a"], "clientIds": ["c"] }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].clientIds: only allowed for method Connect, not Subscribe"),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Subscribe", "topics": ["a/#/b"] }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].topics[0]: '#' must be a whole level and the last one [MQTT-4.7.1-1], got \"a/#/b\""),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Subscribe", "topics": ["a", "b+"] }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].topics[1]: '+' must be a whole level [MQTT-4.7.1-2], got \"b+\""),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Publish", "topics": [""] }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].topics[0]: a topic filter must not be empty [MQTT-4.7.3-1]"),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "method": "Read" }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].method: unknown value \"Read\", expected one of Connect, Publish, Subscribe"),
        (json!({ "principals": { "usernames": ["u"] }, "brokerResources": [{ "topics": ["a"] }] }), "authorizations[0].authorizationPolicies.rules[0].brokerResources[0].method: required (Connect, Publish or Subscribe)"),
    ];
    for (raw, expected) in cases {
        assert_eq!(errors(rule(raw.clone())), [expected], "{raw}");
    }
}

#[test]
fn authorization_entries_need_a_unique_name_and_policies() {
    assert_eq!(
        errors(json!({ "authorizations": [
            { "name": "r", "authorizationPolicies": { "rules": [] } },
            { "name": "r", "authorizationPolicies": { "cache": "sometimes" } },
            { "name": "s" }
        ]})),
        [
            "authorizations[1].name: duplicate authorization name \"r\"",
            "authorizations[1].authorizationPolicies.cache: unknown value \"sometimes\", expected one of Enabled, Disabled",
            "authorizations[2].authorizationPolicies: required",
        ]
    );
}

#[test]
fn empty_rules_and_state_store_resources_warn() {
    assert_eq!(
        warnings(json!({ "authorizations": [
            { "name": "deny", "authorizationPolicies": {} },
            { "name": "kv", "authorizationPolicies": { "rules": [{
                "principals": { "clientIds": ["c"] },
                "brokerResources": [{ "method": "Connect" }],
                "stateStoreResources": [{ "keyType": "Pattern", "keys": ["*"], "method": "ReadWrite" }]
            }]}}
        ]})),
        [
            "authorizations[0].authorizationPolicies.rules: no rules: every client on a listener using this policy is denied",
            "authorizations[1].authorizationPolicies.rules[0].stateStoreResources: the state store is not supported, ignored",
        ]
    );
}
