//! AIO's `persistence` section: the raw shape, its validation and the typed
//! policy the broker acts on (which retained topics are written to disk, the
//! dynamic opt-in property, encryption). What a selection means at run time
//! lives here too (`Persistence::retains`) so the shard and the docs agree.

use std::num::NonZeroU64;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::Report;
use super::validate::{enum_value, path, size, toggle};
use crate::topic::{TopicFilter, TopicName};

/// AIO requires at least 100 MB for the persistence volume.
pub const PERSISTENCE_SIZE_MIN: u64 = 100_000_000;
/// AIO's default opt-in user property.
pub const DYNAMIC_KEY_DEFAULT: &str = "aio-persistence";
pub const DYNAMIC_VALUE_DEFAULT: &str = "true";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPersistence {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_spec: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<RawMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<RawDynamic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain: Option<RawRetainPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_queue: Option<RawSubscriberQueuePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_store: Option<Value>,
    /// shardmq addition: where the persisted files live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// shardmq addition: the key-encryption key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawMode {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDynamic {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_property_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_property_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRetainPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_settings: Option<RawRetainSettings>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRetainSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<RawMode>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSubscriberQueuePolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber_queue_settings: Option<Value>,
}

/// The validated `persistence` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `maxSize`: the most the persisted files may take on disk together.
    pub size_max_bytes: NonZeroU64,
    /// `encryption.mode` (Enabled by default): AES-256-GCM at rest.
    pub encrypt: bool,
    pub retain: RetainPolicy,
    /// `subscriberQueue`: whose queued messages are persisted (their
    /// sessions' state always is, for expiry > 0).
    pub queues: QueuePolicy,
    /// `dynamic`: the user property a v5 client sets to ask for persistence.
    pub dynamic: Option<DynamicProperty>,
    /// `dataDir` (shardmq addition); `None`: `<stateDir>/persistence`.
    pub data_dir: Option<PathBuf>,
    /// `keyFile` (shardmq addition); `None`: the server's default (see
    /// docs/PERSISTENCE.md, "The key").
    pub key_file: Option<PathBuf>,
}

/// `retain.mode` and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RetainPolicy {
    /// Retained messages stay in memory only.
    #[default]
    None,
    /// Every retained message is persisted.
    All,
    /// Those whose topic matches one of `topics`, and, when `dynamic`, those
    /// whose PUBLISH carries the dynamic user property.
    Custom {
        topics: Vec<TopicFilter>,
        dynamic: bool,
    },
}

/// `subscriberQueue.mode` and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueuePolicy {
    /// Queued messages stay in memory only (AIO's default).
    #[default]
    None,
    /// Every persisted session's queue.
    All,
    /// Sessions whose client id matches one of `client_ids` (`*` matches
    /// any run of characters), and, when `dynamic`, those whose CONNECT
    /// carries the dynamic user property.
    Custom {
        client_ids: Vec<String>,
        dynamic: bool,
    },
}

/// `dynamic.userPropertyKey` / `userPropertyValue`, when `dynamic.mode` is
/// Enabled (the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicProperty {
    pub key: String,
    pub value: String,
}

impl Persistence {
    /// Whether the queue of a persisted session (expiry > 0) of
    /// `client_id` is written to disk; `opted_in`: its CONNECT carried the
    /// dynamic user property.
    pub fn persists_queue(&self, client_id: &str, opted_in: bool) -> bool {
        match &self.queues {
            QueuePolicy::None => false,
            QueuePolicy::All => true,
            QueuePolicy::Custom {
                client_ids,
                dynamic,
            } => client_ids.iter().any(|p| glob(p, client_id)) || (*dynamic && opted_in),
        }
    }

    /// Whether these user properties carry the dynamic opt-in.
    pub fn opts_in<'a>(
        &self,
        mut user_properties: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        self.dynamic
            .as_ref()
            .is_some_and(|d| user_properties.any(|(k, v)| k == d.key && v == d.value))
    }

    /// Whether a retained PUBLISH on `topic` with these user properties is
    /// written to disk (AIO: the listed topics, OR the dynamic opt-in).
    pub fn retains<'a>(
        &self,
        topic: &TopicName,
        mut user_properties: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        match &self.retain {
            RetainPolicy::None => false,
            RetainPolicy::All => true,
            RetainPolicy::Custom { topics, dynamic } => {
                topics.iter().any(|f| f.matches(topic))
                    || (*dynamic
                        && self.dynamic.as_ref().is_some_and(|d| {
                            user_properties.any(|(k, v)| k == d.key && v == d.value)
                        }))
            }
        }
    }
}

/// `pattern` with `*` matching any run of characters (AIO's client id
/// lists) against `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

pub(crate) fn persistence(raw: &RawPersistence, report: &mut Report) -> Option<Persistence> {
    let at = "persistence";
    if raw.persistent_volume_claim_spec.is_some() {
        report.kubernetes_only(format!("{at}.persistentVolumeClaimSpec"));
    }
    if raw.state_store.is_some() {
        report.warn(
            format!("{at}.stateStore"),
            "shardmq has no state store (AIO's DSS); ignored",
        );
    }
    let queues = subscriber_queue(raw.subscriber_queue.as_ref(), report);
    let size_path = format!("{at}.maxSize");
    let size_max_bytes = match &raw.max_size {
        None | Some(Value::Null) => {
            report.error(&size_path, "required when persistence is given");
            None
        }
        Some(value) => size(report, &size_path, value).and_then(|bytes| {
            if bytes < PERSISTENCE_SIZE_MIN {
                report.error(
                    &size_path,
                    format!("must be at least 100M (AIO's minimum), got {bytes} bytes"),
                );
                None
            } else {
                NonZeroU64::new(bytes)
            }
        }),
    };
    let encrypt = toggle(
        report,
        format!("{at}.encryption.mode"),
        raw.encryption.as_ref().and_then(|e| e.mode.as_deref()),
        true,
    );
    let dynamic = dynamic(raw.dynamic.as_ref(), report);
    let retain = retain(raw.retain.as_ref(), report);
    let data_dir = raw
        .data_dir
        .as_deref()
        .and_then(|text| path(report, format!("{at}.dataDir"), text));
    let key_file = raw
        .key_file
        .as_deref()
        .and_then(|text| path(report, format!("{at}.keyFile"), text));
    if raw.key_file.is_some() && !encrypt {
        report.warn(
            format!("{at}.keyFile"),
            "ignored: encryption.mode is Disabled, nothing is sealed",
        );
    }
    Some(Persistence {
        size_max_bytes: size_max_bytes?,
        encrypt,
        retain,
        queues,
        dynamic,
        data_dir,
        key_file,
    })
}

fn dynamic(raw: Option<&RawDynamic>, report: &mut Report) -> Option<DynamicProperty> {
    let at = "persistence.dynamic";
    let enabled = toggle(
        report,
        format!("{at}.mode"),
        raw.and_then(|d| d.mode.as_deref()),
        true,
    );
    let key = raw
        .and_then(|d| d.user_property_key.clone())
        .unwrap_or_else(|| DYNAMIC_KEY_DEFAULT.to_owned());
    let value = raw
        .and_then(|d| d.user_property_value.clone())
        .unwrap_or_else(|| DYNAMIC_VALUE_DEFAULT.to_owned());
    if key.is_empty() {
        report.error(format!("{at}.userPropertyKey"), "must not be empty");
    }
    enabled.then_some(DynamicProperty { key, value })
}

#[derive(Clone, Copy)]
enum Mode {
    None,
    All,
    Custom,
}

const MODES: &[(&str, Mode)] = &[
    ("None", Mode::None),
    ("All", Mode::All),
    ("Custom", Mode::Custom),
];

/// A policy's `mode`; absent is None (AIO's default), invalid is reported.
fn mode(report: &mut Report, at: &str, text: Option<&str>) -> Option<Mode> {
    text.map_or(Some(Mode::None), |m| {
        enum_value(report, format!("{at}.mode"), m, MODES)
    })
}

fn retain(raw: Option<&RawRetainPolicy>, report: &mut Report) -> RetainPolicy {
    let at = "persistence.retain";
    let Some(raw) = raw else {
        return RetainPolicy::None;
    };
    let mode = mode(report, at, raw.mode.as_deref());
    let settings = raw.retain_settings.as_ref();
    match mode {
        None | Some(Mode::None) => RetainPolicy::None,
        Some(Mode::All) => RetainPolicy::All,
        Some(Mode::Custom) => {
            let mut topics = Vec::new();
            for (i, text) in settings
                .and_then(|s| s.topics.as_deref())
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                match TopicFilter::try_from(text.as_str()) {
                    Ok(filter) => topics.push(filter),
                    Err(e) => report.error(
                        format!("{at}.retainSettings.topics[{i}]"),
                        format!("not a topic filter: {e}"),
                    ),
                }
            }
            let dynamic = toggle(
                report,
                format!("{at}.retainSettings.dynamic.mode"),
                settings.and_then(|s| s.dynamic.as_ref()?.mode.as_deref()),
                false,
            );
            if topics.is_empty() && !dynamic {
                report.warn(
                    format!("{at}.retainSettings"),
                    "mode Custom with no topics and dynamic Disabled persists nothing",
                );
            }
            RetainPolicy::Custom { topics, dynamic }
        }
    }
}

/// `subscriberQueue`: `mode`, and for Custom `subscriberQueueSettings`
/// with `subscriberClientIds` (`*` wildcards) and `dynamic.mode`.
fn subscriber_queue(raw: Option<&RawSubscriberQueuePolicy>, report: &mut Report) -> QueuePolicy {
    let at = "persistence.subscriberQueue";
    let Some(raw) = raw else {
        return QueuePolicy::None;
    };
    let settings = raw.subscriber_queue_settings.as_ref();
    match mode(report, at, raw.mode.as_deref()) {
        None | Some(Mode::None) => QueuePolicy::None,
        Some(Mode::All) => QueuePolicy::All,
        Some(Mode::Custom) => {
            let sat = format!("{at}.subscriberQueueSettings");
            let mut client_ids = Vec::new();
            let mut dynamic = false;
            match settings {
                None | Some(Value::Null) => {}
                Some(Value::Object(map)) => {
                    for (key, value) in map {
                        match (key.as_str(), value) {
                            ("subscriberClientIds", Value::Array(ids)) => {
                                for (i, id) in ids.iter().enumerate() {
                                    match id.as_str() {
                                        Some(s) if !s.is_empty() => client_ids.push(s.to_owned()),
                                        _ => report.error(
                                            format!("{sat}.subscriberClientIds[{i}]"),
                                            "must be a non-empty string",
                                        ),
                                    }
                                }
                            }
                            ("dynamic", Value::Object(d)) => {
                                let mode = d.get("mode").and_then(Value::as_str);
                                dynamic =
                                    toggle(report, format!("{sat}.dynamic.mode"), mode, false);
                            }
                            (k, _) => report.error(
                                format!("{sat}.{k}"),
                                "unknown field or wrong type (subscriberClientIds: list of \
                                 strings, dynamic: {\"mode\": ...})",
                            ),
                        }
                    }
                }
                Some(_) => report.error(&sat, "must be an object"),
            }
            if client_ids.is_empty() && !dynamic {
                report.warn(
                    &sat,
                    "mode Custom with no subscriberClientIds and dynamic Disabled persists no queue",
                );
            }
            QueuePolicy::Custom {
                client_ids,
                dynamic,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(json: &str) -> Result<crate::config::Loaded, Vec<String>> {
        Config::from_json_str(json).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn aio_section_loads_with_its_defaults() {
        let loaded = load(r#"{"persistence": {"maxSize": "10Gi"}}"#).unwrap();
        let p = loaded.config.persistence.unwrap();
        assert_eq!(p.size_max_bytes.get(), 10 << 30);
        assert!(p.encrypt, "encryption is Enabled by default");
        assert_eq!(p.retain, RetainPolicy::None);
        assert_eq!(
            p.dynamic,
            Some(DynamicProperty {
                key: "aio-persistence".into(),
                value: "true".into()
            })
        );
    }

    #[test]
    fn custom_retain_selects_listed_topics_and_the_dynamic_property() {
        let loaded = load(
            r#"{"persistence": {"maxSize": "1G", "encryption": {"mode": "Disabled"},
                "retain": {"mode": "Custom", "retainSettings": {
                    "topics": ["plant/+/state", "config/#"], "dynamic": {"mode": "Enabled"}}},
                "stateStore": {"mode": "All"},
                "persistentVolumeClaimSpec": {"storageClassName": "x"}}}"#,
        )
        .unwrap();
        let p = loaded.config.persistence.as_ref().unwrap();
        assert!(!p.encrypt);
        let topic = |t: &str| TopicName::try_from(t).unwrap();
        let none = std::iter::empty();
        assert!(p.retains(&topic("plant/a/state"), none.clone()));
        assert!(p.retains(&topic("config/x/y"), none.clone()));
        assert!(!p.retains(&topic("plant/a/temp"), none.clone()));
        assert!(p.retains(
            &topic("plant/a/temp"),
            [("aio-persistence", "true")].into_iter()
        ));
        assert!(!p.retains(
            &topic("plant/a/temp"),
            [("aio-persistence", "false")].into_iter()
        ));
        let warned: Vec<_> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
        assert!(warned.contains(&"persistence.stateStore"), "{warned:?}");
        assert!(
            warned.contains(&"persistence.persistentVolumeClaimSpec"),
            "{warned:?}"
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_path() {
        let e = load(
            r#"{"persistence": {"maxSize": "10M", "retain": {"mode": "Custom",
                "retainSettings": {"topics": ["a/#/b"]}}, "encryption": {"mode": "On"}}}"#,
        )
        .unwrap_err();
        let joined = e.join("\n");
        assert!(
            joined.contains("persistence.maxSize: must be at least 100M"),
            "{joined}"
        );
        assert!(
            joined.contains("persistence.retain.retainSettings.topics[0]"),
            "{joined}"
        );
        assert!(joined.contains("persistence.encryption.mode"), "{joined}");
        let e = load(r#"{"persistence": {"retain": {"mode": "All"}}}"#).unwrap_err();
        assert!(e[0].contains("persistence.maxSize: required"), "{e:?}");
    }

    #[test]
    fn subscriber_queue_modes_select_client_ids() {
        let policy = |json: &str| {
            load(json)
                .unwrap_or_else(|e| panic!("{e:?}"))
                .config
                .persistence
                .unwrap()
        };
        let none = policy(r#"{"persistence": {"maxSize": "1G"}}"#);
        assert!(!none.persists_queue("any", true), "None by default (AIO)");
        let all =
            policy(r#"{"persistence": {"maxSize": "1G", "subscriberQueue": {"mode": "All"}}}"#);
        assert!(all.persists_queue("any", false));
        let custom = policy(
            r#"{"persistence": {"maxSize": "1G", "subscriberQueue": {"mode": "Custom",
               "subscriberQueueSettings": {"subscriberClientIds": ["line-*", "*-hist*", "exact"],
               "dynamic": {"mode": "Enabled"}}}}}"#,
        );
        for (id, kept) in [
            ("line-7", true),
            ("line-", true),
            ("plant-history-1", true),
            ("exact", true),
            ("exactly", false),
            ("other", false),
        ] {
            assert_eq!(custom.persists_queue(id, false), kept, "{id}");
        }
        assert!(custom.persists_queue("other", true), "the dynamic opt-in");
        assert!(custom.opts_in([("aio-persistence", "true")].into_iter()));
        let e = load(
            r#"{"persistence": {"maxSize": "1G", "subscriberQueue": {"mode": "Custom",
               "subscriberQueueSettings": {"subscriberClientIds": [""], "topics": []}}}}"#,
        )
        .unwrap_err()
        .join("\n");
        assert!(
            e.contains("subscriberClientIds[0]") && e.contains("subscriberQueueSettings.topics"),
            "{e}"
        );
    }
}
