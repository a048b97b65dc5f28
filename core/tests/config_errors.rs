//! Broker-wide sections: every kind of problem is reported with its exact
//! path and message, all problems at once, and Kubernetes-only settings are
//! warnings rather than errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use shardmq_core::config::{Config, KeyAlgorithm, MemoryProfile, RotationPolicy};
use shardmq_core::limits::QueueFullStrategy;

fn errors(text: &str) -> Vec<String> {
    match Config::from_json_str(text) {
        Ok(_) => panic!("expected errors for {text}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn warnings(text: &str) -> Vec<String> {
    match Config::from_json_str(text) {
        Ok(loaded) => loaded.warnings.iter().map(ToString::to_string).collect(),
        Err(errors) => panic!("expected {text} to load, got:\n{errors}"),
    }
}

fn config(text: &str) -> Config {
    match Config::from_json_str(text) {
        Ok(loaded) => loaded.config,
        Err(errors) => panic!("expected {text} to load, got:\n{errors}"),
    }
}

#[test]
fn json_syntax_errors_report_line_and_column() {
    assert_eq!(
        errors("{\n  \"memoryProfile\": \"Low\",\n}"),
        ["3:1: invalid JSON: trailing comma"]
    );
    assert_eq!(errors(""), ["1:0: invalid JSON: EOF while parsing a value"]);
}

#[test]
fn a_document_that_is_not_an_object_is_rejected() {
    assert_eq!(
        errors("\"advanced\""),
        ["(top level): expected a JSON object, got a string"]
    );
}

#[test]
fn typos_are_errors_with_a_suggestion() {
    assert_eq!(
        errors(r#"{"advanced": {"clients": {"maxSesionExpirySeconds": 10}}}"#),
        ["advanced.clients.maxSesionExpirySeconds: unknown field, did you mean \"maxSessionExpirySeconds\"?"]
    );
    assert_eq!(
        errors(r#"{"memoryProfil": "Low"}"#),
        ["memoryProfil: unknown field, did you mean \"memoryProfile\"?"]
    );
    assert_eq!(
        errors(r#"{"diagnostics": {"selfCheck": {"intervalSecond": 30}}}"#),
        ["diagnostics.selfCheck.intervalSecond: unknown field, did you mean \"intervalSeconds\"?"]
    );
}

#[test]
fn unknown_fields_without_a_close_match_list_the_known_ones() {
    assert_eq!(
        errors(r#"{"advanced": {"clients": {"subscriberQueueLimit": {"size": 3}}}}"#),
        ["advanced.clients.subscriberQueueLimit.size: unknown field, expected one of: length, strategy"]
    );
}

#[test]
fn wrong_json_types_name_the_path_and_the_expected_type() {
    assert_eq!(
        errors(r#"{"advanced": {"clients": {"maxKeepAliveSeconds": "300"}}}"#),
        ["advanced.clients.maxKeepAliveSeconds: invalid type: string \"300\", expected an integer"]
    );
    assert_eq!(
        errors(r#"{"advanced": {"clients": {"maxKeepAliveSeconds": 1.5}}}"#),
        ["advanced.clients.maxKeepAliveSeconds: invalid type: number `1.5`, expected an integer"]
    );
    assert_eq!(
        errors(r#"{"advanced": {"clients": {"maxKeepAliveSeconds": 18446744073709551615}}}"#),
        ["advanced.clients.maxKeepAliveSeconds: integer 18446744073709551615 is out of range"]
    );
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": []}}"#),
        ["advanced.internalCerts: invalid type: array, expected an object"]
    );
    assert_eq!(
        errors(r#"{"memoryProfile": 3}"#),
        ["memoryProfile: invalid type: integer `3`, expected a string"]
    );
    assert_eq!(
        errors(r#"{"listeners": {"name": "a"}}"#),
        ["listeners: expected an array, got an object"]
    );
}

#[test]
fn client_limits_out_of_range_name_the_range() {
    assert_eq!(
        errors(
            r#"{"advanced": {"clients": {
                "maxSessionExpirySeconds": -1,
                "maxMessageExpirySeconds": 0,
                "maxPacketSizeBytes": 268435461,
                "maxReceiveMaximum": 65536,
                "maxKeepAliveSeconds": 0,
                "subscriberQueueLimit": {"length": 0}
            }}}"#
        ),
        [
            "advanced.clients.maxSessionExpirySeconds: must be between 0 and 4294967295, got -1",
            "advanced.clients.maxMessageExpirySeconds: must be between 1 and 4294967295, got 0",
            "advanced.clients.maxPacketSizeBytes: must be between 1 and 268435460, got 268435461",
            "advanced.clients.maxReceiveMaximum: must be between 1 and 65535, got 65536",
            "advanced.clients.maxKeepAliveSeconds: must be between 1 and 65535, got 0",
            "advanced.clients.subscriberQueueLimit.length: must be between 1 and 4294967295, got 0",
        ]
    );
}

#[test]
fn client_limits_at_their_bounds_are_accepted() {
    let limits = config(
        r#"{"advanced": {"clients": {
            "maxSessionExpirySeconds": 0,
            "maxMessageExpirySeconds": 4294967295,
            "maxPacketSizeBytes": 268435460,
            "maxReceiveMaximum": 1,
            "maxKeepAliveSeconds": 65535,
            "subscriberQueueLimit": {"length": 1}
        }}}"#,
    )
    .advanced
    .clients;
    assert_eq!(limits.session_expiry_max, Duration::ZERO);
    assert_eq!(
        limits.message_expiry_max,
        Some(Duration::from_secs(4_294_967_295))
    );
    assert_eq!(limits.receive_maximum_max.get(), 1);
    assert_eq!(limits.queue.length_max.unwrap().get(), 1);
    assert_eq!(limits.queue.strategy, QueueFullStrategy::None);
}

#[test]
fn unknown_enum_values_list_the_accepted_ones() {
    assert_eq!(
        errors(
            r#"{"advanced": {
                "clients": {"subscriberQueueLimit": {"strategy": "dropnewest"}},
                "encryptInternalTraffic": "On",
                "internalCerts": {"privateKey": {"algorithm": "Rsa1024", "rotationPolicy": "Sometimes"}}
            }, "memoryProfile": "Huge"}"#
        ),
        [
            "advanced.clients.subscriberQueueLimit.strategy: unknown value \"dropnewest\", expected one of None, DropOldest",
            "advanced.encryptInternalTraffic: unknown value \"On\", expected one of Enabled, Disabled",
            "advanced.internalCerts.privateKey.algorithm: unknown value \"Rsa1024\", expected one of Ec256, Ec384, Ec521, Ed25519, Rsa2048, Rsa4096, Rsa8192",
            "advanced.internalCerts.privateKey.rotationPolicy: unknown value \"Sometimes\", expected one of Always, Never",
            "memoryProfile: unknown value \"Huge\", expected one of Tiny, Low, Medium, High",
        ]
    );
}

#[test]
fn enum_values_are_case_insensitive_like_aio() {
    for (text, encrypted) in [
        ("Enabled", true),
        ("enabled", true),
        ("ENABLED", true),
        ("dIsAbLeD", false),
    ] {
        let json = format!(r#"{{"advanced": {{"encryptInternalTraffic": "{text}"}}}}"#);
        assert_eq!(
            config(&json).advanced.encrypt_internal_traffic,
            encrypted,
            "{text}"
        );
    }
    let config = config(
        r#"{"memoryProfile": "tiny",
            "advanced": {"clients": {"subscriberQueueLimit": {"strategy": "dropoldest"}},
                         "internalCerts": {"privateKey": {"algorithm": "ED25519", "rotationPolicy": "never"}}}}"#,
    );
    assert_eq!(config.memory_profile, MemoryProfile::Tiny);
    assert_eq!(
        config.advanced.clients.queue.strategy,
        QueueFullStrategy::DropOldest
    );
    assert_eq!(
        config.advanced.internal_certs.private_key.algorithm,
        KeyAlgorithm::Ed25519
    );
    assert_eq!(
        config.advanced.internal_certs.private_key.rotation,
        RotationPolicy::Never
    );
}

#[test]
fn all_seven_key_algorithms_parse() {
    for (text, algorithm) in [
        ("Ec256", KeyAlgorithm::Ec256),
        ("Ec384", KeyAlgorithm::Ec384),
        ("Ec521", KeyAlgorithm::Ec521),
        ("Ed25519", KeyAlgorithm::Ed25519),
        ("Rsa2048", KeyAlgorithm::Rsa2048),
        ("Rsa4096", KeyAlgorithm::Rsa4096),
        ("Rsa8192", KeyAlgorithm::Rsa8192),
    ] {
        let json = format!(
            r#"{{"advanced": {{"internalCerts": {{"privateKey": {{"algorithm": "{text}"}}}}}}}}"#
        );
        assert_eq!(
            config(&json).advanced.internal_certs.private_key.algorithm,
            algorithm
        );
    }
}

#[test]
fn internal_certs_must_renew_before_they_expire() {
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"duration": "24h", "renewBefore": "24h"}}}"#),
        ["advanced.internalCerts.renewBefore: must be shorter than duration (24h), got 24h"]
    );
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"renewBefore": "1000h"}}}"#),
        ["advanced.internalCerts.renewBefore: must be shorter than duration (720h, the default), got 1000h"]
    );
}

#[test]
fn renew_before_defaults_to_a_third_of_a_given_duration() {
    let certs = config(r#"{"advanced": {"internalCerts": {"duration": "90h"}}}"#)
        .advanced
        .internal_certs;
    assert_eq!(certs.duration, Duration::from_secs(90 * 3600));
    assert_eq!(certs.renew_before, Duration::from_secs(30 * 3600));
}

#[test]
fn bad_durations_report_why() {
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"duration": "0s", "renewBefore": "-1h"}}}"#),
        [
            "advanced.internalCerts.duration: must be positive, got \"0s\"",
            "advanced.internalCerts.renewBefore: negative durations are not allowed, got \"-1h\"",
        ]
    );
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"duration": "30d"}}}"#),
        ["advanced.internalCerts.duration: unknown unit \"d\" (use ns, us, ms, s, m or h; a day is \"24h\"), got \"30d\""]
    );
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"duration": ""}}}"#),
        ["advanced.internalCerts.duration: empty duration (expected e.g. \"240h\", \"45m\", \"1h30m\", \"500ms\"), got \"\""]
    );
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"duration": "720"}}}"#),
        ["advanced.internalCerts.duration: missing unit after \"720\" (use ns, us, ms, s, m or h), got \"720\""]
    );
    assert_eq!(
        errors(r#"{"advanced": {"internalCerts": {"duration": "99999999999h"}}}"#),
        ["advanced.internalCerts.duration: duration is too large (at most 5124095 h), got \"99999999999h\""]
    );
}

#[test]
fn cardinality_workers_sets_the_shard_count() {
    let config = config(r#"{"cardinality": {"frontend": {"workers": 4}}}"#);
    assert_eq!(config.cardinality.shards.unwrap().get(), 4);
    assert_eq!(Config::default().cardinality.shards, None);
    assert_eq!(
        errors(r#"{"cardinality": {"frontend": {"workers": 0}}}"#),
        ["cardinality.frontend.workers: must be between 1 and 1024, got 0"]
    );
    assert_eq!(
        errors(r#"{"cardinality": {"frontend": {"workers": 5000}}}"#),
        ["cardinality.frontend.workers: must be between 1 and 1024, got 5000"]
    );
}

#[test]
fn cluster_cardinality_is_checked_then_warned_about() {
    assert_eq!(
        warnings(
            r#"{"cardinality": {"frontend": {"replicas": 2, "workers": 2},
                "backendChain": {"partitions": 2, "redundancyFactor": 2, "workers": 2}}}"#
        ),
        [
            "cardinality.frontend.replicas: cluster setting, ignored on a single node",
            "cardinality.backendChain: cluster setting, ignored on a single node",
        ]
    );
    assert_eq!(
        errors(
            r#"{"cardinality": {"frontend": {"replicas": 0}, "backendChain": {"partitions": -2}}}"#
        ),
        [
            "cardinality.frontend.replicas: must be between 1 and 4294967295, got 0",
            "cardinality.backendChain.partitions: must be between 1 and 4294967295, got -2",
        ]
    );
}

#[test]
fn disk_buffer_sizes_are_kubernetes_quantities() {
    let buffer = config(r#"{"diskBackedMessageBuffer": {"maxSize": "500M"}}"#)
        .disk_buffer
        .unwrap();
    assert_eq!(buffer.size_max_bytes.get(), 500_000_000);
    assert_eq!(buffer.data_dir, None);
    let buffer = config(
        r#"{"diskBackedMessageBuffer": {"maxSize": "64Mi", "dataDir": "/var/lib/shardmq"}}"#,
    )
    .disk_buffer
    .unwrap();
    assert_eq!(buffer.size_max_bytes.get(), 64 << 20);
    assert_eq!(buffer.data_dir.unwrap().to_str(), Some("/var/lib/shardmq"));
    let buffer = config(r#"{"diskBackedMessageBuffer": {"maxSize": 1048576}}"#)
        .disk_buffer
        .unwrap();
    assert_eq!(buffer.size_max_bytes.get(), 1_048_576);
    assert_eq!(config("{}").disk_buffer, None);
}

#[test]
fn bad_disk_buffer_sizes_report_why() {
    let cases = [
        (r#"{}"#, "diskBackedMessageBuffer.maxSize: required when diskBackedMessageBuffer is given"),
        (r#"{"maxSize": "500m"}"#, "diskBackedMessageBuffer.maxSize: \"m\" means milli in Kubernetes quantities; use \"M\" for megabytes or \"Mi\" for mebibytes, got \"500m\""),
        (r#"{"maxSize": "1GB"}"#, "diskBackedMessageBuffer.maxSize: unknown suffix \"GB\" (use k, M, G, T, P, E or Ki, Mi, Gi, Ti, Pi, Ei), got \"1GB\""),
        (r#"{"maxSize": ""}"#, "diskBackedMessageBuffer.maxSize: empty quantity (expected e.g. \"500M\", \"1Gi\" or a number of bytes), got \"\""),
        (r#"{"maxSize": "-1G"}"#, "diskBackedMessageBuffer.maxSize: negative quantities are not allowed, got \"-1G\""),
        (r#"{"maxSize": "16Ei"}"#, "diskBackedMessageBuffer.maxSize: quantity is too large (at most 18446744073709551615 bytes), got \"16Ei\""),
        (r#"{"maxSize": "0"}"#, "diskBackedMessageBuffer.maxSize: must be greater than 0"),
        (r#"{"maxSize": -5}"#, "diskBackedMessageBuffer.maxSize: expected a whole number of bytes, got -5"),
        (r#"{"maxSize": true}"#, "diskBackedMessageBuffer.maxSize: expected a quantity like \"500M\" or a number of bytes, got true"),
        (r#"{"maxSize": "1G", "dataDir": ""}"#, "diskBackedMessageBuffer.dataDir: must not be empty"),
    ];
    for (section, expected) in cases {
        let json = format!(r#"{{"diskBackedMessageBuffer": {section}}}"#);
        assert_eq!(errors(&json), [expected], "{section}");
    }
}

#[test]
fn volume_claims_are_kubernetes_only_warnings() {
    assert_eq!(
        warnings(
            r#"{"diskBackedMessageBuffer": {"maxSize": "1G",
                "ephemeralVolumeClaimSpec": {"storageClassName": "local-path", "accessModes": ["ReadWriteOnce"]},
                "persistentVolumeClaimSpec": {"resources": {"requests": {"storage": "1G"}}}}}"#
        ),
        [
            "diskBackedMessageBuffer.ephemeralVolumeClaimSpec: Kubernetes-only field, ignored",
            "diskBackedMessageBuffer.persistentVolumeClaimSpec: Kubernetes-only field, ignored",
        ]
    );
}

#[test]
fn diagnostics_values_land_and_are_checked() {
    let diagnostics = config(
        r#"{"diagnostics": {"logs": {"level": "info,shardmq=debug"},
            "metrics": {"prometheusPort": 9600},
            "selfCheck": {"mode": "disabled", "intervalSeconds": 60, "timeoutSeconds": 60}}}"#,
    )
    .diagnostics;
    assert_eq!(diagnostics.log_filter, "info,shardmq=debug");
    assert_eq!(diagnostics.prometheus_port.unwrap().get(), 9600);
    assert!(!diagnostics.self_check.enabled);
    assert_eq!(diagnostics.self_check.interval, Duration::from_secs(60));
    assert_eq!(diagnostics.self_check.timeout, Duration::from_secs(60));
    assert_eq!(
        errors(
            r#"{"diagnostics": {"logs": {"level": " "}, "metrics": {"prometheusPort": 0},
                "selfCheck": {"intervalSeconds": 10, "timeoutSeconds": 20}}}"#
        ),
        [
            "diagnostics.logs.level: must not be empty (e.g. \"info\" or \"info,shardmq=debug\")",
            "diagnostics.metrics.prometheusPort: must be between 1 and 65535, got 0",
            "diagnostics.selfCheck.timeoutSeconds: must not exceed intervalSeconds (10), got 20",
        ]
    );
}

#[test]
fn a_log_level_typo_is_an_error_not_a_silent_broker() {
    // tracing reads a bare word as a target name: "warning" would enable
    // only a target called "warning" and the broker would log nothing.
    let level = |text: &str| {
        errors(&serde_json::json!({"diagnostics": {"logs": {"level": text}}}).to_string())
    };
    assert_eq!(
        level("warning"),
        ["diagnostics.logs.level: \"warning\" is not a level (off, error, warn, info, debug, trace) nor target=level; did you mean \"warn\"?"]
    );
    assert_eq!(
        level("info,shardmq_io=verbose"),
        ["diagnostics.logs.level: \"shardmq_io=verbose\": \"verbose\" is not a level (off, error, warn, info, debug, trace)"]
    );
    assert_eq!(
        level("info,,debug"),
        ["diagnostics.logs.level: empty directive in \"info,,debug\" (e.g. \"info\" or \"info,shardmq=debug\")"]
    );
    assert_eq!(
        level("info,shard mq=debug"),
        ["diagnostics.logs.level: \"shard mq=debug\": \"shard mq\" is not a target (a module path like shardmq_io::connection)"]
    );
    for good in [
        "info",
        "WARN",
        "off",
        "info,shardmq_io::connection=debug,rustls=warn",
        "warn,shardmq_io[serve{peer}]=trace",
    ] {
        let loaded =
            config(&serde_json::json!({"diagnostics": {"logs": {"level": good}}}).to_string());
        assert_eq!(loaded.diagnostics.log_filter, good);
    }
}

#[test]
fn unsupported_and_kubernetes_only_sections_warn() {
    assert_eq!(
        warnings(
            r#"{"diagnostics": {"traces": {"mode": "Enabled", "cacheSizeMegabytes": 16}},
                "generateResourceLimits": {"cpu": "Enabled"}}"#
        ),
        [
            "diagnostics.traces: trace export is not supported yet, ignored",
            "generateResourceLimits: Kubernetes-only field, ignored",
        ]
    );
    assert_eq!(
        errors(r#"{"generateResourceLimits": {"cpu": "Maybe"}}"#),
        ["generateResourceLimits.cpu: unknown value \"Maybe\", expected one of Enabled, Disabled"]
    );
}

#[test]
fn every_problem_in_the_file_is_reported_at_once() {
    let found = errors(
        r#"{
            "advanced": {"clients": {"maxKeepAliveSecs": 3}},
            "memoryProfile": "Giant",
            "diskBackedMessageBuffer": {"maxSize": "lots"},
            "listeners": [
                {"name": "a", "ports": [{"port": 70000}]},
                {"name": "b", "ports": [{"port": 1883, "protocol": "WebSockets"}], "typo": 1}
            ],
            "diagnostics": {"metrics": {"prometheusPort": 70000}}
        }"#,
    );
    assert_eq!(
        found,
        [
            "advanced.clients.maxKeepAliveSecs: unknown field, did you mean \"maxKeepAliveSeconds\"?",
            "listeners[1].typo: unknown field, expected one of: name, brokerRef, serviceName, serviceType, ports",
            "memoryProfile: unknown value \"Giant\", expected one of Tiny, Low, Medium, High",
            "diskBackedMessageBuffer.maxSize: expected a number at \"lots\" (e.g. \"500M\", \"64Mi\"), got \"lots\"",
            "diagnostics.metrics.prometheusPort: must be between 1 and 65535, got 70000",
            "listeners[0].ports[0].port: must be between 0 and 65535, got 70000",
        ]
    );
}

#[test]
fn errors_display_as_path_colon_message_one_per_line() {
    let errors = Config::from_json_str(
        r#"{"memoryProfile": "x", "advanced": {"encryptInternalTraffic": "y"}}"#,
    )
    .unwrap_err();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        errors.to_string(),
        "advanced.encryptInternalTraffic: unknown value \"y\", expected one of Enabled, Disabled\n\
         memoryProfile: unknown value \"x\", expected one of Tiny, Low, Medium, High"
    );
    let first = &errors.0[0];
    assert_eq!(first.path, "advanced.encryptInternalTraffic");
    assert_eq!(
        first.message,
        "unknown value \"y\", expected one of Enabled, Disabled"
    );
}

#[test]
fn null_sections_count_as_absent() {
    assert_eq!(
        config(r#"{"advanced": null, "listeners": null, "diskBackedMessageBuffer": null}"#),
        Config::default()
    );
}
