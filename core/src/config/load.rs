//! JSON text -> `RawConfig`: syntax errors with line:column, then each
//! top-level section and each array entry deserialized on its own so that
//! shape errors (wrong types, unknown fields) in several places are all
//! reported, each with its path and a "did you mean" for typos.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::error::{did_you_mean, Report};
use super::raw::{RawConfig, TOP_LEVEL_KEYS};

/// Parses `text` into raw sections. Problems go to `report`; sections that
/// fail to deserialize are left out (`None`, or `None` entries in arrays).
pub(crate) fn load_raw(text: &str, report: &mut Report) -> RawConfig {
    let mut raw = RawConfig::default();
    let root: Value = match serde_json::from_str(text) {
        Ok(root) => root,
        Err(error) => {
            report.error(
                format!("{}:{}", error.line(), error.column()),
                format!("invalid JSON: {}", strip_position(&error.to_string())),
            );
            return raw;
        }
    };
    let Value::Object(sections) = root else {
        report.error(
            "(top level)",
            format!("expected a JSON object, got {}", kind(&root)),
        );
        return raw;
    };
    for (key, value) in &sections {
        match key.as_str() {
            "advanced" => raw.advanced = section(key, value, report),
            "cardinality" => raw.cardinality = section(key, value, report),
            "memoryProfile" => raw.memory_profile = section(key, value, report),
            "diskBackedMessageBuffer" => {
                raw.disk_backed_message_buffer = section(key, value, report);
            }
            "retainedMessages" => raw.retained_messages = section(key, value, report),
            "diagnostics" => raw.diagnostics = section(key, value, report),
            "generateResourceLimits" => {
                raw.generate_resource_limits = section(key, value, report);
            }
            "secretsDir" => raw.secrets_dir = section(key, value, report),
            "stateDir" => raw.state_dir = section(key, value, report),
            "listeners" => raw.listeners = entries(key, value, report),
            "authentications" => raw.authentications = entries(key, value, report),
            "authorizations" => raw.authorizations = entries(key, value, report),
            "persistence" => raw.persistence = section(key, value, report),
            "cluster" => raw.cluster = section(key, value, report),
            unknown => report.error(unknown, unknown_field_message(unknown, TOP_LEVEL_KEYS)),
        }
    }
    raw
}

/// One section; `null` counts as absent.
fn section<T: DeserializeOwned>(path: &str, value: &Value, report: &mut Report) -> Option<T> {
    if value.is_null() {
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            shape_error(path, &error, report);
            None
        }
    }
}

/// An array section, entry by entry; entries that fail are `None`.
fn entries<T: DeserializeOwned>(
    path: &str,
    value: &Value,
    report: &mut Report,
) -> Option<Vec<Option<T>>> {
    match value {
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| section(&format!("{path}[{index}]"), item, report))
                .collect(),
        ),
        other => {
            report.error(path, format!("expected an array, got {}", kind(other)));
            None
        }
    }
}

/// Reports a serde error at its full path, rewriting serde's wording into
/// the config's ("unknown field" with a hint, JSON type names).
fn shape_error(
    prefix: &str,
    error: &serde_path_to_error::Error<serde_json::Error>,
    report: &mut Report,
) {
    let mut path = prefix.to_owned();
    for segment in error.path().iter() {
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                path.push('.');
                path.push_str(key);
            }
            Segment::Enum { variant } => {
                path.push('.');
                path.push_str(variant);
            }
            Segment::Unknown => path.push_str(".?"),
        }
    }
    let message = strip_position(&error.inner().to_string());
    if let Some((field, expected)) = parse_unknown_field(&message) {
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        // The path already ends in the unknown key when serde got that far.
        if !path.ends_with(&format!(".{field}")) {
            path = format!("{path}.{field}");
        }
        report.error(path, unknown_field_message(&field, &expected));
        return;
    }
    report.error(path, friendly_types(&message));
}

/// "unknown field, did you mean ..." or the list of known fields.
fn unknown_field_message(field: &str, known: &[&str]) -> String {
    match did_you_mean(field, known) {
        Some(suggestion) => format!("unknown field, did you mean \"{suggestion}\"?"),
        None if known.is_empty() => "unknown field (this object has no fields)".to_owned(),
        None => format!("unknown field, expected one of: {}", known.join(", ")),
    }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" (or
/// "expected `a`", or "there are no fields") into the field and the list.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

/// serde names Rust types; the config's readers know JSON types.
fn friendly_types(message: &str) -> String {
    // serde also reads structs from arrays (positionally); a wrong-length
    // array is really "an array where an object belongs".
    if message.starts_with("invalid length ") && message.contains("expected struct ") {
        return "invalid type: array, expected an object".to_owned();
    }
    if let Some(rest) = message.strip_prefix("invalid value: integer `") {
        if let Some((number, _)) = rest.split_once('`') {
            return format!("integer {number} is out of range");
        }
    }
    let mut message = message.to_owned();
    for (rust, json) in [
        ("expected i64", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
        ("floating point", "number"),
        ("type: sequence", "type: array"),
        ("type: map", "type: object"),
    ] {
        message = message.replace(rust, json);
    }
    if let Some(start) = message.find("expected struct ") {
        message.replace_range(start.., "expected an object");
    }
    message
}

/// serde_json appends " at line L column C"; paths say where instead.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let mut report = Report::default();
        load_raw(text, &mut report);
        report.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        assert_eq!(
            errors("{\n  \"advanced\": {\n    \"clients\" {}\n  }\n}"),
            ["3:15: invalid JSON: expected `:`"]
        );
    }

    #[test]
    fn nested_unknown_fields_get_their_full_path_and_a_hint() {
        assert_eq!(
            errors(r#"{"advanced": {"clients": {"maxSesionExpirySeconds": 5}}}"#),
            ["advanced.clients.maxSesionExpirySeconds: unknown field, did you mean \"maxSessionExpirySeconds\"?"]
        );
    }

    #[test]
    fn type_errors_name_json_types() {
        assert_eq!(
            errors(r#"{"listeners": [{"name": "a", "ports": [{"port": "1883"}]}]}"#),
            ["listeners[0].ports[0].port: invalid type: string \"1883\", expected an integer"]
        );
        assert_eq!(
            errors(r#"{"advanced": []}"#),
            ["advanced: invalid type: array, expected an object"]
        );
    }

    #[test]
    fn a_non_object_document_is_rejected() {
        assert_eq!(
            errors("[1]"),
            ["(top level): expected a JSON object, got an array"]
        );
    }
}
