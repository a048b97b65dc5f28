//! The user's broker config and the two variants the `encryption` command
//! runs: `advanced.encryptInternalTraffic` Enabled or Disabled, and only the
//! changes a side-by-side run on this machine needs (free loopback port,
//! scratch buffer directory, ...), each one listed for the report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shardmq_core::config::Config;

/// One setting of `advanced.encryptInternalTraffic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Setting {
    Enabled,
    Disabled,
}

impl Setting {
    pub fn name(self) -> &'static str {
        match self {
            Setting::Enabled => "Enabled",
            Setting::Disabled => "Disabled",
        }
    }
}

/// Size of the disk buffer the harness adds when the config has none.
pub const ADDED_BUFFER_SIZE: &str = "1G";
/// The listener the harness adds when no port of the config takes plain,
/// anonymous MQTT.
const ADDED_LISTENER: &str = "shardmq-loadtest";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the broker config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the broker config {source_name} is not valid:\n{errors}")]
    Invalid { source_name: String, errors: String },
    #[error("the broker config {0} is not a JSON object")]
    NotAnObject(String),
    #[error("{0} in the broker config is not an object")]
    NotASection(String),
    #[error("cannot get the built-in default config from {bin}: {reason}")]
    Default { bin: PathBuf, reason: String },
    #[error(
        "internal: the config the harness derived from {source_name} does not load:\n{errors}"
    )]
    Derived { source_name: String, errors: String },
}

/// A change the harness makes to the user's config, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub change: String,
    pub why: String,
    /// Made only for the scenarios that spill (slow-reader, slow-sub).
    pub spill_scenarios_only: bool,
}

/// What the harness may change beyond the encryption setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjustments {
    /// Add a disk buffer in the run's directory when the config has none.
    pub add_buffer: bool,
    /// Spill scenarios: at most this many messages per session in memory
    /// (`subscriberQueueLimit.length`); `None` leaves the config's limits.
    pub spill_at: Option<u32>,
}

/// The user's config, as written and as the broker reads it.
#[derive(Debug, Clone)]
pub struct BaseConfig {
    /// A path, or "the built-in default".
    pub source: String,
    doc: Map<String, Value>,
    pub parsed: Config,
}

fn errors_text(errors: &shardmq_core::config::ConfigErrors) -> String {
    errors
        .iter()
        .map(|e| format!("  {}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl BaseConfig {
    /// Reads and validates `path` (as the broker would).
    pub fn from_file(path: &Path) -> Result<BaseConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        BaseConfig::from_text(&path.display().to_string(), &text)
    }

    /// The broker's built-in default (`BIN --print-default-config`), so
    /// the defaults of the binary under test are the ones measured.
    pub fn builtin(bin: &Path) -> Result<BaseConfig, ConfigError> {
        let err = |reason: String| ConfigError::Default {
            bin: bin.to_owned(),
            reason,
        };
        let out = std::process::Command::new(bin)
            .arg("--print-default-config")
            .env_remove("RUST_LOG")
            .output()
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!(
                "exit {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8(out.stdout).map_err(|e| err(e.to_string()))?;
        BaseConfig::from_text("the built-in default", &text)
    }

    pub fn from_text(source: &str, text: &str) -> Result<BaseConfig, ConfigError> {
        let loaded = Config::from_json_str(text).map_err(|e| ConfigError::Invalid {
            source_name: source.to_owned(),
            errors: errors_text(&e),
        })?;
        // It loaded, so it is JSON; an object unless it is `null`-like.
        let doc = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ConfigError::NotAnObject(source.to_owned())),
        };
        Ok(BaseConfig {
            source: source.to_owned(),
            doc,
            parsed: loaded.config,
        })
    }

    pub fn has_buffer(&self) -> bool {
        self.parsed.disk_buffer.is_some()
    }

    /// The config for one run: `setting`, listening on 127.0.0.1:`port`,
    /// buffer files under `run_dir/data`. Returns the JSON text and every
    /// change made (besides the setting itself).
    pub fn derive(
        &self,
        setting: Setting,
        spill_scenario: bool,
        adjust: Adjustments,
        port: u16,
        run_dir: &Path,
    ) -> Result<(String, Vec<Change>), ConfigError> {
        let mut doc = self.doc.clone();
        let mut changes = Vec::new();
        section(&mut doc, &["advanced"])?.insert(
            "encryptInternalTraffic".to_owned(),
            Value::from(setting.name()),
        );
        listeners(&mut doc, port, &mut changes);
        // None of the kept listener's ports refers to these, and their
        // relative paths would resolve against the scratch directory.
        for (field, what) in [
            ("authentications", "authentication policies"),
            ("authorizations", "authorization policies"),
            ("secretsDir", "secrets directory"),
        ] {
            if doc.remove(field).is_some_and(|v| !v.is_null()) {
                changes.push(Change {
                    field: field.to_owned(),
                    change: "removed".to_owned(),
                    why: format!(
                        "the harness connects through one plain anonymous port, so the {what} \
                         of the removed ports are not used"
                    ),
                    spill_scenarios_only: false,
                });
            }
        }
        buffer(&mut doc, adjust.add_buffer, run_dir, &mut changes)?;
        if spill_scenario {
            if let Some(at) = adjust.spill_at {
                spill_limit(&mut doc, at, &mut changes)?;
            }
        }
        diagnostics(&mut doc, &mut changes)?;
        let text = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
        Config::from_json_str(&text).map_err(|e| ConfigError::Derived {
            source_name: self.source.clone(),
            errors: errors_text(&e),
        })?;
        Ok((text, changes))
    }
}

/// The object at `path`, created (replacing `null`) where missing.
fn section<'a>(
    doc: &'a mut Map<String, Value>,
    path: &[&str],
) -> Result<&'a mut Map<String, Value>, ConfigError> {
    let mut at = doc;
    for (i, key) in path.iter().enumerate() {
        let slot = at
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        at = slot
            .as_object_mut()
            .ok_or_else(|| ConfigError::NotASection(path[..=i].join(".")))?;
    }
    Ok(at)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A port the harness can use as it is: MQTT over plain TCP, anyone.
fn plain_anonymous(port: &Value) -> bool {
    let absent = |k: &str| port.get(k).is_none_or(Value::is_null);
    absent("tls")
        && absent("authenticationRef")
        && absent("authorizationRef")
        && str_field(port, "protocol").is_none_or(|p| p.eq_ignore_ascii_case("mqtt"))
}

/// Keeps the first plain anonymous port (moved to 127.0.0.1:`port`) and
/// drops the rest; adds a listener if there is no such port.
fn listeners(doc: &mut Map<String, Value>, port: u16, changes: &mut Vec<Change>) {
    let all: Vec<Value> = doc
        .get("listeners")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut names = Vec::new();
    let mut kept: Option<(String, Value)> = None;
    for l in &all {
        let name = str_field(l, "name").unwrap_or("?").to_owned();
        for p in l
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let label = format!("{name}:{}", p.get("port").unwrap_or(&Value::Null));
            if kept.is_none() && plain_anonymous(p) {
                kept = Some((name.clone(), p.clone()));
            } else {
                names.push(label);
            }
        }
    }
    let listener = match kept {
        Some((name, mut p)) => {
            if let Some(obj) = p.as_object_mut() {
                obj.insert("port".to_owned(), Value::from(port));
                obj.insert("bindAddress".to_owned(), Value::from("127.0.0.1"));
            }
            changes.push(Change {
                field: format!("listeners[{name}]"),
                change: "moved to 127.0.0.1, a free port per run".to_owned(),
                why: "two brokers run one after the other beside whatever already listens here; \
                      the harness only targets loopback"
                    .to_owned(),
                spill_scenarios_only: false,
            });
            json!({ "name": name, "ports": [p] })
        }
        None => {
            changes.push(Change {
                field: "listeners".to_owned(),
                change: format!(
                    "added listener {ADDED_LISTENER:?}: plain MQTT, anonymous, 127.0.0.1:{port}"
                ),
                why: "no port of the config takes plain anonymous MQTT, which the harness speaks"
                    .to_owned(),
                spill_scenarios_only: false,
            });
            json!({ "name": ADDED_LISTENER, "ports": [{ "port": port, "bindAddress": "127.0.0.1" }] })
        }
    };
    if !names.is_empty() {
        changes.push(Change {
            field: "listeners".to_owned(),
            change: format!("removed ports {}", names.join(", ")),
            why: "the harness uses one plain anonymous port; TLS and authentication would need \
                  the config's certificates and secrets, which a scratch copy cannot reach"
                .to_owned(),
            spill_scenarios_only: false,
        });
    }
    doc.insert("listeners".to_owned(), Value::Array(vec![listener]));
}

fn buffer(
    doc: &mut Map<String, Value>,
    add: bool,
    run_dir: &Path,
    changes: &mut Vec<Change>,
) -> Result<(), ConfigError> {
    let data_dir = run_dir.join("data").display().to_string();
    let present = doc
        .get("diskBackedMessageBuffer")
        .is_some_and(|v| !v.is_null());
    if present {
        section(doc, &["diskBackedMessageBuffer"])?
            .insert("dataDir".to_owned(), Value::from(data_dir));
        changes.push(Change {
            field: "diskBackedMessageBuffer.dataDir".to_owned(),
            change: "the run's scratch directory".to_owned(),
            why: "the broker deletes leftover buffer files in its dataDir at start, so it must \
                  not share yours; the harness inspects the files after each run"
                .to_owned(),
            spill_scenarios_only: false,
        });
    } else if add {
        doc.insert(
            "diskBackedMessageBuffer".to_owned(),
            json!({ "maxSize": ADDED_BUFFER_SIZE, "dataDir": data_dir }),
        );
        changes.push(Change {
            field: "diskBackedMessageBuffer".to_owned(),
            change: format!(
                "ADDED BY THE HARNESS: maxSize {ADDED_BUFFER_SIZE} in the run's scratch directory"
            ),
            why: "your config has no disk buffer, so on your broker encryptInternalTraffic has \
                  no buffered data to seal; this one shows what it would cost if you add one \
                  (--no-added-buffer runs the config as it is)"
                .to_owned(),
            spill_scenarios_only: false,
        });
    }
    Ok(())
}

fn spill_limit(
    doc: &mut Map<String, Value>,
    at: u32,
    changes: &mut Vec<Change>,
) -> Result<(), ConfigError> {
    let limit = section(doc, &["advanced", "clients", "subscriberQueueLimit"])?;
    let current = limit.get("length").and_then(Value::as_u64);
    if current.is_some_and(|c| c <= u64::from(at)) {
        return Ok(());
    }
    limit.insert("length".to_owned(), Value::from(at));
    changes.push(Change {
        field: "advanced.clients.subscriberQueueLimit.length".to_owned(),
        change: format!(
            "{at} (was {})",
            current.map_or("unset: 100000".to_owned(), |c| c.to_string())
        ),
        why: "with a disk buffer this bounds the messages a session keeps in memory: past it \
              they spill, so a run of seconds exercises sealing and opening \
              (--spill-at 0 keeps yours)"
            .to_owned(),
        spill_scenarios_only: true,
    });
    Ok(())
}

/// A metrics port could collide; the start-up lines the harness checks
/// are `info` lines of the broker's own targets.
fn diagnostics(doc: &mut Map<String, Value>, changes: &mut Vec<Change>) -> Result<(), ConfigError> {
    let has_metrics = doc
        .get("diagnostics")
        .and_then(|d| d.get("metrics"))
        .and_then(|m| m.get("prometheusPort"))
        .is_some_and(|p| !p.is_null());
    if has_metrics {
        let port = crate::compare::free_port().unwrap_or(0);
        if port != 0 {
            section(doc, &["diagnostics", "metrics"])?
                .insert("prometheusPort".to_owned(), Value::from(port));
            changes.push(Change {
                field: "diagnostics.metrics.prometheusPort".to_owned(),
                change: "a free port per run".to_owned(),
                why: "so the run does not collide with a broker already serving metrics".to_owned(),
                spill_scenarios_only: false,
            });
        }
    }
    let level = doc
        .get("diagnostics")
        .and_then(|d| d.get("logs"))
        .and_then(|l| str_field(l, "level"))
        .map(str::to_owned);
    if let Some(level) = level.filter(|l| hides_startup_lines(l)) {
        let wanted = format!("{level},shardmq=info,shardmq_io=info");
        section(doc, &["diagnostics", "logs"])?.insert("level".to_owned(), Value::from(wanted));
        changes.push(Change {
            field: "diagnostics.logs.level".to_owned(),
            change: format!("{level:?} + shardmq=info,shardmq_io=info"),
            why: "the harness reads the broker's start-up and shutdown info lines to confirm \
                  the setting and count spilled messages"
                .to_owned(),
            spill_scenarios_only: false,
        });
    }
    Ok(())
}

/// A plain level above `info` (`warn`, `error`, `off`) without directives
/// of its own for the broker's targets.
fn hides_startup_lines(filter: &str) -> bool {
    let parts: Vec<&str> = filter.split(',').map(str::trim).collect();
    let names_broker = parts.iter().any(|p| p.starts_with("shardmq"));
    let quiet = parts.iter().any(|p| {
        !p.contains('=')
            && ["warn", "error", "off"]
                .iter()
                .any(|l| p.eq_ignore_ascii_case(l))
    });
    quiet && !names_broker
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADJUST: Adjustments = Adjustments {
        add_buffer: true,
        spill_at: Some(1000),
    };

    fn derive(text: &str, setting: Setting, spill: bool) -> (Value, Vec<Change>) {
        let base = BaseConfig::from_text("test", text).unwrap();
        let (json, changes) = base
            .derive(setting, spill, ADJUST, 23456, Path::new("/tmp/run"))
            .unwrap();
        (serde_json::from_str(&json).unwrap(), changes)
    }

    #[test]
    fn only_the_setting_and_the_listed_changes_differ() {
        let text = r#"{"memoryProfile":"Low","cardinality":{"frontend":{"workers":1}},
            "advanced":{"encryptInternalTraffic":"Enabled","clients":{"maxReceiveMaximum":100}},
            "listeners":[{"name":"a","ports":[{"port":1883}]}]}"#;
        let (on, _) = derive(text, Setting::Enabled, false);
        let (off, changes) = derive(text, Setting::Disabled, false);
        assert_eq!(on["advanced"]["encryptInternalTraffic"], "Enabled");
        assert_eq!(off["advanced"]["encryptInternalTraffic"], "Disabled");
        for v in [&on, &off] {
            assert_eq!(v["memoryProfile"], "Low");
            assert_eq!(v["cardinality"]["frontend"]["workers"], 1);
            assert_eq!(v["advanced"]["clients"]["maxReceiveMaximum"], 100);
            assert_eq!(v["listeners"][0]["ports"][0]["port"], 23456);
            assert_eq!(v["listeners"][0]["ports"][0]["bindAddress"], "127.0.0.1");
            assert_eq!(v["diskBackedMessageBuffer"]["dataDir"], "/tmp/run/data");
        }
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["listeners[a]", "diskBackedMessageBuffer"]);
        assert!(changes[1].change.contains("ADDED BY THE HARNESS"));
    }

    #[test]
    fn tls_and_authenticated_ports_are_dropped_and_their_policies_with_them() {
        let text = r#"{"secretsDir":"secrets",
            "authentications":[{"name":"pw","authenticationMethods":[{"method":"UsernamePassword",
                "usernamePasswordSettings":{"passwordFile":"pw.txt"}}]}],
            "listeners":[
              {"name":"secure","ports":[{"port":8883,"authenticationRef":"pw"},
                                        {"port":1883,"bindAddress":"0.0.0.0"}]}]}"#;
        let base = BaseConfig::from_text("t", text).unwrap();
        let (json, changes) = base
            .derive(Setting::Enabled, false, ADJUST, 23456, Path::new("/r"))
            .unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["listeners"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["listeners"][0]["ports"][0]["port"], 23456);
        assert!(v.get("authentications").is_none() && v.get("secretsDir").is_none());
        assert!(changes
            .iter()
            .any(|c| c.change.contains("removed ports secure:8883")));
    }

    #[test]
    fn a_config_without_a_plain_port_gets_one_added() {
        let text = r#"{"listeners":[{"name":"t","ports":[{"port":8883,
            "tls":{"mode":"Automatic"}}]}]}"#;
        let (v, changes) = derive(text, Setting::Enabled, false);
        assert_eq!(v["listeners"][0]["name"], ADDED_LISTENER);
        assert!(changes
            .iter()
            .any(|c| c.change.starts_with("added listener")));
    }

    #[test]
    fn spill_scenarios_lower_the_in_memory_queue_only() {
        let text = r#"{"diskBackedMessageBuffer":{"maxSize":"2G","dataDir":"/var/lib/x"},
            "advanced":{"clients":{"subscriberQueueLimit":{"length":50000,"strategy":"DropOldest"}}}}"#;
        let (plain, _) = derive(text, Setting::Enabled, false);
        let (spill, changes) = derive(text, Setting::Enabled, true);
        let q = |v: &Value| v["advanced"]["clients"]["subscriberQueueLimit"].clone();
        assert_eq!(q(&plain)["length"], 50000);
        assert_eq!(q(&spill)["length"], 1000);
        assert_eq!(q(&spill)["strategy"], "DropOldest");
        assert_eq!(spill["diskBackedMessageBuffer"]["maxSize"], "2G");
        assert_eq!(spill["diskBackedMessageBuffer"]["dataDir"], "/tmp/run/data");
        assert!(changes.iter().any(|c| c.spill_scenarios_only));
    }

    #[test]
    fn quiet_log_levels_get_the_broker_lines_back() {
        assert!(hides_startup_lines("warn"));
        assert!(hides_startup_lines("error,foo=debug"));
        assert!(!hides_startup_lines("info"));
        assert!(!hides_startup_lines("warn,shardmq=debug"));
        let (v, _) = derive(
            r#"{"diagnostics":{"logs":{"level":"warn"}}}"#,
            Setting::Enabled,
            false,
        );
        assert_eq!(
            v["diagnostics"]["logs"]["level"],
            "warn,shardmq=info,shardmq_io=info"
        );
    }

    #[test]
    fn invalid_configs_are_refused_with_every_error() {
        let e = BaseConfig::from_text("bad.json", r#"{"memoryProfile":"Huge","advanced":{"x":1}}"#)
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("memoryProfile") && text.contains("advanced.x"),
            "{text}"
        );
    }
}
