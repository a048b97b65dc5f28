//! `RawConfig` -> `Config`: the one validating conversion for the broker-wide
//! sections (advanced, cardinality, memory, disk buffer, diagnostics), and the
//! small typed readers (ranges, case-insensitive enums, durations) the
//! listener and access validators share. Every problem is reported; nothing
//! here reads files.

use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::error::Report;
use super::raw::{
    RawAdvanced, RawCardinality, RawClients, RawConfig, RawDiagnostics, RawDiskBuffer,
    RawGenerateResourceLimits, RawPrivateKey,
};
use super::types::{
    Advanced, Cardinality, CertPolicy, Config, Diagnostics, DiskBuffer, KeyAlgorithm,
    MemoryProfile, PrivateKeyPolicy, RotationPolicy, SelfCheck,
};
use super::units::{parse_duration, parse_quantity};
use super::{access, listeners};
use crate::limits::{ClientLimits, QueueFullStrategy, QueueLimit, TakeoverPolicy};

/// Upper bound on `frontend.workers`: more shards than this is a typo, not
/// a machine (TIGER_STYLE: a limit on everything).
pub const SHARDS_MAX: usize = 1024;

/// MQTT's largest packet: 1 fixed-header byte, 4 length bytes, and a
/// remaining length of at most 268,435,455 (v5 §2.1.4, v3.1.1 §2.2.3).
const PACKET_SIZE_MAX: i64 = 268_435_460;

/// Validates everything; the result is only meaningful when `report` holds
/// no errors afterwards.
pub(crate) fn validate(raw: &RawConfig, report: &mut Report) -> Config {
    let advanced = advanced(raw.advanced.as_ref(), report);
    let cardinality = cardinality(raw.cardinality.as_ref(), report);
    let memory_profile = raw
        .memory_profile
        .as_deref()
        .and_then(|text| memory_profile(report, "memoryProfile", text))
        .unwrap_or_default();
    let disk_buffer = raw
        .disk_backed_message_buffer
        .as_ref()
        .and_then(|raw| disk_buffer(raw, report));
    let retained_size_max_bytes = raw
        .retained_messages
        .as_ref()
        .and_then(|r| r.max_size.as_ref())
        .filter(|v| !v.is_null())
        .and_then(|v| size(report, "retainedMessages.maxSize", v));
    let persistence = raw
        .persistence
        .as_ref()
        .and_then(|raw| super::persistence::persistence(raw, report));
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|raw| super::cluster::cluster(raw, advanced.encrypt_internal_traffic, report));
    let diagnostics = diagnostics(raw.diagnostics.as_ref(), report);
    if let Some(limits) = &raw.generate_resource_limits {
        generate_resource_limits(limits, report);
    }
    let secrets_dir = raw
        .secrets_dir
        .as_deref()
        .and_then(|text| path(report, "secretsDir", text));
    let state_dir = raw
        .state_dir
        .as_deref()
        .and_then(|text| path(report, "stateDir", text));
    let secrets = listeners::Secrets {
        dir: secrets_dir.clone(),
        given: raw.secrets_dir.is_some(),
    };
    let authentications = access::authentications(raw.authentications.as_deref(), &secrets, report);
    let authorizations = access::authorizations(raw.authorizations.as_deref(), report);
    let listeners = listeners::listeners(
        raw.listeners.as_deref(),
        &listeners::Context {
            secrets: &secrets,
            authentications: &authentications,
            authorizations: &authorizations,
        },
        report,
    );
    Config {
        advanced,
        cardinality,
        memory_profile,
        disk_buffer,
        retained_size_max_bytes,
        persistence,
        cluster,
        diagnostics,
        secrets_dir,
        state_dir,
        listeners,
        authentications: authentications.validated,
        authorizations: authorizations.validated,
    }
}

fn advanced(raw: Option<&RawAdvanced>, report: &mut Report) -> Advanced {
    let Some(raw) = raw else {
        return Advanced {
            clients: ClientLimits::default(),
            encrypt_internal_traffic: true,
            internal_certs: CertPolicy::aio_default(),
        };
    };
    let clients = raw
        .clients
        .as_ref()
        .map(|clients| client_limits(clients, report))
        .unwrap_or_default();
    let encrypt_internal_traffic = toggle(
        report,
        "advanced.encryptInternalTraffic",
        raw.encrypt_internal_traffic.as_deref(),
        true,
    );
    let internal_certs = match &raw.internal_certs {
        Some(certs) => cert_policy(
            report,
            "advanced.internalCerts",
            certs.duration.as_deref(),
            certs.renew_before.as_deref(),
            certs.private_key.as_ref(),
        ),
        None => CertPolicy::aio_default(),
    };
    Advanced {
        clients,
        encrypt_internal_traffic,
        internal_certs,
    }
}

/// `advanced.clients` -> `ClientLimits`; absent fields keep the defaults.
fn client_limits(raw: &RawClients, report: &mut Report) -> ClientLimits {
    let path = "advanced.clients";
    let mut limits = ClientLimits::default();
    if let Some(value) = raw.max_session_expiry_seconds {
        // v5 §3.1.2.11.2: the Session Expiry Interval is a four-byte integer.
        if let Some(seconds) = int_in(
            report,
            format!("{path}.maxSessionExpirySeconds"),
            value,
            0,
            u32::MAX.into(),
        ) {
            limits.session_expiry_max = Duration::from_secs(seconds);
        }
    }
    if let Some(value) = raw.max_message_expiry_seconds {
        // v5 §3.3.2.3.3: the Message Expiry Interval is a four-byte integer.
        if let Some(seconds) = int_in(
            report,
            format!("{path}.maxMessageExpirySeconds"),
            value,
            1,
            u32::MAX.into(),
        ) {
            limits.message_expiry_max = Some(Duration::from_secs(seconds));
        }
    }
    if let Some(value) = raw.max_packet_size_bytes {
        if let Some(size) = nonzero_u32(
            report,
            format!("{path}.maxPacketSizeBytes"),
            value,
            PACKET_SIZE_MAX,
        ) {
            limits.packet_size_max = size;
        }
    }
    if let Some(value) = raw.max_receive_maximum {
        if let Some(max) = nonzero_u16(report, format!("{path}.maxReceiveMaximum"), value) {
            limits.receive_maximum_max = max;
        }
    }
    if let Some(value) = raw.max_keep_alive_seconds {
        if let Some(max) = nonzero_u16(report, format!("{path}.maxKeepAliveSeconds"), value) {
            limits.keep_alive_max = max;
        }
    }
    if let Some(queue) = &raw.subscriber_queue_limit {
        let queue_path = format!("{path}.subscriberQueueLimit");
        let length_max = queue.length.and_then(|value| {
            nonzero_u32(
                report,
                format!("{queue_path}.length"),
                value,
                u32::MAX.into(),
            )
        });
        let strategy = queue
            .strategy
            .as_deref()
            .and_then(|text| {
                enum_value(
                    report,
                    format!("{queue_path}.strategy"),
                    text,
                    &[
                        ("None", QueueFullStrategy::None),
                        ("DropOldest", QueueFullStrategy::DropOldest),
                    ],
                )
            })
            .unwrap_or_default();
        limits.queue = QueueLimit {
            length_max,
            strategy,
            // Derived from memoryProfile by the server.
            ..QueueLimit::default()
        };
    }
    if let Some(text) = raw.session_takeover.as_deref() {
        if let Some(policy) = enum_value(
            report,
            format!("{path}.sessionTakeover"),
            text,
            &[
                ("SamePrincipal", TakeoverPolicy::SamePrincipal),
                ("AnyPrincipal", TakeoverPolicy::AnyPrincipal),
            ],
        ) {
            limits.session_takeover = policy;
        }
    }
    limits
}

fn cardinality(raw: Option<&RawCardinality>, report: &mut Report) -> Cardinality {
    let mut cardinality = Cardinality::default();
    let Some(raw) = raw else {
        return cardinality;
    };
    let ignored = "cluster setting, ignored on a single node";
    if let Some(frontend) = &raw.frontend {
        if let Some(workers) = frontend.workers {
            cardinality.shards = int_in(
                report,
                "cardinality.frontend.workers",
                workers,
                1,
                SHARDS_MAX as i64,
            )
            .and_then(|n| usize::try_from(n).ok())
            .and_then(NonZeroUsize::new);
        }
        if let Some(replicas) = frontend.replicas {
            let path = "cardinality.frontend.replicas";
            if positive(report, path, replicas) {
                report.warn(path, ignored);
            }
        }
    }
    if let Some(backend) = &raw.backend_chain {
        let fields = [
            ("partitions", backend.partitions),
            ("redundancyFactor", backend.redundancy_factor),
            ("workers", backend.workers),
        ];
        let mut all_valid = true;
        for (name, value) in fields {
            if let Some(value) = value {
                all_valid &= positive(report, format!("cardinality.backendChain.{name}"), value);
            }
        }
        if all_valid {
            report.warn("cardinality.backendChain", ignored);
        }
    }
    cardinality
}

fn memory_profile(report: &mut Report, path: &str, text: &str) -> Option<MemoryProfile> {
    enum_value(
        report,
        path,
        text,
        &[
            ("Tiny", MemoryProfile::Tiny),
            ("Low", MemoryProfile::Low),
            ("Medium", MemoryProfile::Medium),
            ("High", MemoryProfile::High),
        ],
    )
}

fn disk_buffer(raw: &RawDiskBuffer, report: &mut Report) -> Option<DiskBuffer> {
    let path = "diskBackedMessageBuffer";
    for (name, value) in [
        ("ephemeralVolumeClaimSpec", &raw.ephemeral_volume_claim_spec),
        (
            "persistentVolumeClaimSpec",
            &raw.persistent_volume_claim_spec,
        ),
    ] {
        if value.is_some() {
            report.kubernetes_only(format!("{path}.{name}"));
        }
    }
    let data_dir = raw
        .data_dir
        .as_deref()
        .and_then(|text| self::path(report, format!("{path}.dataDir"), text));
    let size_path = format!("{path}.maxSize");
    let bytes = match &raw.max_size {
        None | Some(Value::Null) => {
            report.error(size_path, "required when diskBackedMessageBuffer is given");
            return None;
        }
        Some(value) => size(report, &size_path, value)?,
    };
    let Some(size_max_bytes) = NonZeroU64::new(bytes) else {
        report.error(size_path, "must be greater than 0");
        return None;
    };
    Some(DiskBuffer {
        size_max_bytes,
        data_dir,
    })
}

/// A size: a quantity string ("500M", "64Mi") or a whole number of bytes.
pub(crate) fn size(report: &mut Report, path: &str, value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => match parse_quantity(text) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                report.error(path, format!("{error}, got \"{text}\""));
                None
            }
        },
        Value::Number(number) => {
            let bytes = number.as_u64();
            if bytes.is_none() {
                report.error(
                    path,
                    format!("expected a whole number of bytes, got {number}"),
                );
            }
            bytes
        }
        other => {
            report.error(
                path,
                format!("expected a quantity like \"500M\" or a number of bytes, got {other}"),
            );
            None
        }
    }
}

fn diagnostics(raw: Option<&RawDiagnostics>, report: &mut Report) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    let Some(raw) = raw else {
        return diagnostics;
    };
    if let Some(level) = raw.logs.as_ref().and_then(|logs| logs.level.as_deref()) {
        match check_log_filter(level) {
            Ok(()) => level.trim().clone_into(&mut diagnostics.log_filter),
            Err(message) => report.error("diagnostics.logs.level", message),
        }
    }
    if let Some(port) = raw.metrics.as_ref().and_then(|m| m.prometheus_port) {
        diagnostics.prometheus_port =
            nonzero_u16(report, "diagnostics.metrics.prometheusPort", port);
    }
    if let Some(text) = raw.metrics.as_ref().and_then(|m| m.bind_address.as_deref()) {
        match text.parse::<std::net::IpAddr>() {
            Ok(ip) => diagnostics.metrics_bind_address = ip,
            Err(_) => report.error(
                "diagnostics.metrics.bindAddress",
                format!("not an IP address: \"{text}\" (e.g. \"127.0.0.1\", \"0.0.0.0\", \"::\")"),
            ),
        }
    }
    if let Some(seconds) = raw.sys.as_ref().and_then(|s| s.interval_seconds) {
        // 0 turns the $SYS topics off.
        diagnostics.sys_interval = int_in(
            report,
            "diagnostics.sys.intervalSeconds",
            seconds,
            0,
            86_400,
        )
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    }
    if let Some(check) = &raw.self_check {
        let path = "diagnostics.selfCheck";
        let defaults = SelfCheck::default();
        let enabled = toggle(report, format!("{path}.mode"), check.mode.as_deref(), true);
        let interval = check
            .interval_seconds
            .and_then(|s| seconds(report, format!("{path}.intervalSeconds"), s))
            .unwrap_or(defaults.interval);
        let timeout = check
            .timeout_seconds
            .and_then(|s| seconds(report, format!("{path}.timeoutSeconds"), s))
            .unwrap_or(defaults.timeout);
        if timeout > interval {
            report.error(
                format!("{path}.timeoutSeconds"),
                format!(
                    "must not exceed intervalSeconds ({}), got {}",
                    interval.as_secs(),
                    timeout.as_secs()
                ),
            );
        }
        diagnostics.self_check = SelfCheck {
            enabled,
            interval,
            timeout,
        };
    }
    if raw.traces.is_some() {
        report.warn(
            "diagnostics.traces",
            "trace export is not supported yet, ignored",
        );
    }
    diagnostics
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a log filter: comma-separated directives, each a level or
/// `target=level` (`target[span{field=value}]=level` is let through).
/// Stricter than tracing's own parser on purpose: it reads a bare word as
/// a *target* with every level enabled, so the typo "warning" is a valid
/// filter that enables nothing but a target named "warning", and the broker
/// would log nothing at all, errors included.
pub fn check_log_filter(text: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. \"info\" or \"info,shardmq=debug\"";
    if text.trim().is_empty() {
        return Err(format!("must not be empty ({EXAMPLE})"));
    }
    let is_level = |word: &str| LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word));
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() {
            return Err(format!("empty directive in \"{text}\" ({EXAMPLE})"));
        }
        match directive.rsplit_once('=') {
            None if is_level(directive) => {}
            None => {
                let hint = LOG_LEVELS
                    .iter()
                    .find(|l| directive.to_ascii_lowercase().starts_with(*l))
                    .map(|l| format!("; did you mean \"{l}\"?"))
                    .unwrap_or_default();
                return Err(format!(
                    "\"{directive}\" is not a level (off, error, warn, info, debug, trace) \
                     nor target=level{hint}"
                ));
            }
            Some((target, level)) => {
                let level = level.trim();
                if !is_level(level) {
                    return Err(format!(
                        "\"{directive}\": \"{level}\" is not a level (off, error, warn, \
                         info, debug, trace)"
                    ));
                }
                let name = target.split('[').next().unwrap_or_default().trim();
                let name_ok = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
                if target.trim().is_empty() || !name_ok {
                    return Err(format!(
                        "\"{directive}\": \"{target}\" is not a target (a module path \
                         like shardmq_io::connection)"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn generate_resource_limits(raw: &RawGenerateResourceLimits, report: &mut Report) {
    if let Some(cpu) = raw.cpu.as_deref() {
        toggle(report, "generateResourceLimits.cpu", Some(cpu), false);
    }
    report.kubernetes_only("generateResourceLimits");
}

/// A certificate lifetime policy; absent fields take AIO's defaults.
/// INVARIANT (result): non-zero durations, `renew_before < duration`.
pub(crate) fn cert_policy(
    report: &mut Report,
    path: &str,
    duration: Option<&str>,
    renew_before: Option<&str>,
    private_key: Option<&RawPrivateKey>,
) -> CertPolicy {
    let defaults = CertPolicy::aio_default();
    let duration_path = format!("{path}.duration");
    let renew_path = format!("{path}.renewBefore");
    let parsed_duration = duration.map(|text| positive_duration(report, &duration_path, text));
    let parsed_renew = renew_before.map(|text| positive_duration(report, &renew_path, text));
    let private_key = private_key_policy(report, &format!("{path}.privateKey"), private_key);
    let total = parsed_duration.unwrap_or(Some(defaults.duration));
    // cert-manager's default: renew when a third of the lifetime is left
    // (AIO's 720h / 240h).
    let renew = parsed_renew.unwrap_or(total.map(|total| total / 3));
    let (Some(total), Some(renew)) = (total, renew) else {
        return CertPolicy {
            private_key,
            ..defaults
        };
    };
    if renew >= total {
        report.error(
            renew_path,
            format!(
                "must be shorter than duration ({}), got {}",
                duration.unwrap_or("720h, the default"),
                renew_before.unwrap_or_default()
            ),
        );
    }
    CertPolicy {
        duration: total,
        renew_before: renew,
        private_key,
    }
}

fn private_key_policy(
    report: &mut Report,
    path: &str,
    raw: Option<&RawPrivateKey>,
) -> PrivateKeyPolicy {
    let mut policy = PrivateKeyPolicy::default();
    let Some(raw) = raw else {
        return policy;
    };
    if let Some(text) = raw.algorithm.as_deref() {
        use KeyAlgorithm::*;
        let variants = [
            ("Ec256", Ec256),
            ("Ec384", Ec384),
            ("Ec521", Ec521),
            ("Ed25519", Ed25519),
            ("Rsa2048", Rsa2048),
            ("Rsa4096", Rsa4096),
            ("Rsa8192", Rsa8192),
        ];
        if let Some(algorithm) = enum_value(report, format!("{path}.algorithm"), text, &variants) {
            policy.algorithm = algorithm;
        }
    }
    if let Some(text) = raw.rotation_policy.as_deref() {
        let variants = [
            ("Always", RotationPolicy::Always),
            ("Never", RotationPolicy::Never),
        ];
        if let Some(rotation) =
            enum_value(report, format!("{path}.rotationPolicy"), text, &variants)
        {
            policy.rotation = rotation;
        }
    }
    policy
}

fn positive_duration(report: &mut Report, path: &str, text: &str) -> Option<Duration> {
    match parse_duration(text) {
        Ok(duration) if duration.is_zero() => {
            report.error(path, format!("must be positive, got \"{text}\""));
            None
        }
        Ok(duration) => Some(duration),
        Err(error) => {
            report.error(path, format!("{error}, got \"{text}\""));
            None
        }
    }
}

/// Matches `text` against `variants` ignoring ASCII case, as AIO does.
pub(crate) fn enum_value<T: Copy>(
    report: &mut Report,
    path: impl Into<String>,
    text: &str,
    variants: &[(&str, T)],
) -> Option<T> {
    if let Some((_, value)) = variants
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
    {
        return Some(*value);
    }
    let names: Vec<&str> = variants.iter().map(|(name, _)| *name).collect();
    report.error(
        path,
        format!(
            "unknown value \"{text}\", expected one of {}",
            names.join(", ")
        ),
    );
    None
}

/// AIO's `Enabled` / `Disabled`; absent or invalid gives `default`.
pub(crate) fn toggle(
    report: &mut Report,
    path: impl Into<String>,
    text: Option<&str>,
    default: bool,
) -> bool {
    text.and_then(|text| {
        enum_value(
            report,
            path,
            text,
            &[("Enabled", true), ("Disabled", false)],
        )
    })
    .unwrap_or(default)
}

/// `value` if it lies in `min..=max`, else an error naming the range.
pub(crate) fn int_in(
    report: &mut Report,
    path: impl Into<String>,
    value: i64,
    min: i64,
    max: i64,
) -> Option<u64> {
    if (min..=max).contains(&value) {
        u64::try_from(value).ok()
    } else {
        report.error(
            path,
            format!("must be between {min} and {max}, got {value}"),
        );
        None
    }
}

fn positive(report: &mut Report, path: impl Into<String>, value: i64) -> bool {
    int_in(report, path, value, 1, u32::MAX.into()).is_some()
}

fn seconds(report: &mut Report, path: impl Into<String>, value: i64) -> Option<Duration> {
    int_in(report, path, value, 1, u32::MAX.into()).map(Duration::from_secs)
}

pub(crate) fn nonzero_u16(
    report: &mut Report,
    path: impl Into<String>,
    value: i64,
) -> Option<NonZeroU16> {
    int_in(report, path, value, 1, u16::MAX.into())
        .and_then(|n| u16::try_from(n).ok())
        .and_then(NonZeroU16::new)
}

fn nonzero_u32(
    report: &mut Report,
    path: impl Into<String>,
    value: i64,
    max: i64,
) -> Option<NonZeroU32> {
    int_in(report, path, value, 1, max)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
}

/// A non-empty path string, kept as written.
pub(crate) fn path(report: &mut Report, path: impl Into<String>, text: &str) -> Option<PathBuf> {
    if text.trim().is_empty() {
        report.error(path, "must not be empty");
        None
    } else {
        Some(PathBuf::from(text))
    }
}

/// A required, non-empty string field.
pub(crate) fn required<'a>(
    report: &mut Report,
    path: impl Into<String>,
    value: Option<&'a str>,
) -> Option<&'a str> {
    match value {
        None => {
            report.error(path, "required");
            None
        }
        Some(text) if text.trim().is_empty() => {
            report.error(path, "must not be empty");
            None
        }
        Some(text) => Some(text),
    }
}
