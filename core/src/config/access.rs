//! `authentications` and `authorizations` -> typed policies: each method has
//! the settings it needs, names are unique, rules are well formed (topic
//! filters per MQTT §4.7). Listeners refer to these by name; `Validated`
//! carries the names so dangling references can be reported.

use std::collections::BTreeMap;

use super::error::Report;
use super::listeners::{cert_key_files, Secrets};
use super::raw::{
    RawAuthentication, RawAuthenticationMethod, RawAuthorization, RawBrokerResource, RawRule,
};
use super::types::{
    Authentication, AuthenticationMethod, Authorization, AuthorizationRule, BrokerAction,
    BrokerResource, CustomSettings, Principals, ServiceAccountTokenSettings, TokenKey,
    UsernamePasswordSettings, X509Attributes, X509Settings,
};
use super::validate::{enum_value, path as path_value, required, toggle};

/// Validated entries plus what reference checks need.
#[derive(Debug)]
pub(crate) struct Validated<T> {
    pub validated: Vec<T>,
    /// Every name written, valid entry or not.
    pub names: Vec<String>,
    /// False when some entry failed to deserialize or had no name: a
    /// reference to an unknown name may then be to that entry, so it is
    /// not reported as dangling.
    pub complete: bool,
}

impl<T> Validated<T> {
    fn new() -> Validated<T> {
        Validated {
            validated: Vec::new(),
            names: Vec::new(),
            complete: true,
        }
    }

    /// Records `name` at `path`; reports a duplicate.
    fn add_name(&mut self, report: &mut Report, path: String, kind: &str, name: Option<&str>) {
        let Some(name) = name else {
            self.complete = false;
            return;
        };
        if self.names.iter().any(|seen| seen == name) {
            report.error(path, format!("duplicate {kind} name \"{name}\""));
        } else {
            self.names.push(name.to_owned());
        }
    }
}

pub(crate) fn authentications(
    raw: Option<&[Option<RawAuthentication>]>,
    secrets: &Secrets,
    report: &mut Report,
) -> Validated<Authentication> {
    let mut result = Validated::new();
    for (index, entry) in raw.unwrap_or_default().iter().enumerate() {
        let Some(entry) = entry else {
            result.complete = false;
            continue;
        };
        let path = format!("authentications[{index}]");
        let name = required(report, format!("{path}.name"), entry.name.as_deref());
        result.add_name(report, format!("{path}.name"), "authentication", name);
        let methods_path = format!("{path}.authenticationMethods");
        let mut methods = Vec::new();
        let mut all_valid = true;
        match entry.authentication_methods.as_deref() {
            None => report.error(methods_path, "required"),
            Some([]) => report.error(methods_path, "at least one method is required"),
            Some(raw_methods) => {
                for (method_index, raw_method) in raw_methods.iter().enumerate() {
                    let method_path = format!("{methods_path}[{method_index}]");
                    match method(raw_method, &method_path, secrets, report) {
                        Some(method) => methods.push(method),
                        None => all_valid = false,
                    }
                }
            }
        }
        if let (Some(name), true, false) = (name, all_valid, methods.is_empty()) {
            result.validated.push(Authentication {
                name: name.to_owned(),
                methods,
            });
        }
    }
    result
}

fn method(
    raw: &RawAuthenticationMethod,
    path: &str,
    secrets: &Secrets,
    report: &mut Report,
) -> Option<AuthenticationMethod> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        X509,
        ServiceAccountToken,
        Custom,
        UsernamePassword,
    }
    let Some(text) = raw.method.as_deref() else {
        report.error(
            format!("{path}.method"),
            "required (X509, ServiceAccountToken, Custom or UsernamePassword)",
        );
        return None;
    };
    let kind = enum_value(
        report,
        format!("{path}.method"),
        text,
        &[
            ("X509", Kind::X509),
            ("ServiceAccountToken", Kind::ServiceAccountToken),
            ("Custom", Kind::Custom),
            ("UsernamePassword", Kind::UsernamePassword),
        ],
    )?;
    // Settings for another method are harmless but probably a mistake.
    for (field, present, owner) in [
        ("x509Settings", raw.x509_settings.is_some(), Kind::X509),
        (
            "serviceAccountTokenSettings",
            raw.service_account_token_settings.is_some(),
            Kind::ServiceAccountToken,
        ),
        (
            "customSettings",
            raw.custom_settings.is_some(),
            Kind::Custom,
        ),
        (
            "usernamePasswordSettings",
            raw.username_password_settings.is_some(),
            Kind::UsernamePassword,
        ),
    ] {
        if present && owner != kind {
            report.warn(
                format!("{path}.{field}"),
                format!("ignored: method is {text}"),
            );
        }
    }
    match kind {
        Kind::X509 => {
            let settings_path = format!("{path}.x509Settings");
            let settings = raw.x509_settings.as_ref();
            let ca = required(
                report,
                format!("{settings_path}.trustedClientCaCert"),
                settings.and_then(|s| s.trusted_client_ca_cert.as_deref()),
            );
            let mut authorization_attributes = BTreeMap::new();
            let mut attributes_valid = true;
            for (name, entry) in settings
                .and_then(|s| s.authorization_attributes.as_ref())
                .into_iter()
                .flatten()
            {
                let entry_path = format!("{settings_path}.authorizationAttributes.{name}");
                let Some(subject) = required(
                    report,
                    format!("{entry_path}.subject"),
                    entry.subject.as_deref(),
                ) else {
                    attributes_valid = false;
                    continue;
                };
                authorization_attributes.insert(
                    name.clone(),
                    X509Attributes {
                        subject: subject.to_owned(),
                        attributes: entry.attributes.clone().unwrap_or_default(),
                    },
                );
            }
            let trusted_client_ca_cert =
                path_of(report, &settings_path, "trustedClientCaCert", ca)?;
            attributes_valid.then_some(AuthenticationMethod::X509(X509Settings {
                trusted_client_ca_cert,
                authorization_attributes,
            }))
        }
        Kind::ServiceAccountToken => {
            let settings_path = format!("{path}.serviceAccountTokenSettings");
            let settings = raw.service_account_token_settings.as_ref();
            let audiences = settings
                .and_then(|s| s.audiences.clone())
                .unwrap_or_default();
            let keys: Vec<TokenKey> = settings
                .and_then(|s| s.keys.as_deref())
                .unwrap_or_default()
                .iter()
                .enumerate()
                .filter_map(|(i, key)| match TokenKey::new(key) {
                    TokenKey::File(_) => {
                        path_value(report, format!("{settings_path}.keys[{i}]"), key)
                            .map(TokenKey::File)
                    }
                    inline => Some(inline),
                })
                .collect();
            if audiences.is_empty() {
                report.error(
                    format!("{settings_path}.audiences"),
                    "at least one audience is required for method ServiceAccountToken",
                );
                return None;
            }
            if keys.is_empty() {
                report.warn(
                    format!("{settings_path}.keys"),
                    "no verification keys: every token will be rejected (Kubernetes TokenReview is not available)",
                );
            }
            Some(AuthenticationMethod::ServiceAccountToken(
                ServiceAccountTokenSettings { audiences, keys },
            ))
        }
        Kind::Custom => {
            let settings_path = format!("{path}.customSettings");
            let settings = raw.custom_settings.as_ref();
            let endpoint_path = format!("{settings_path}.endpoint");
            let endpoint = required(
                report,
                endpoint_path.clone(),
                settings.and_then(|s| s.endpoint.as_deref()),
            );
            let endpoint_valid = match endpoint {
                Some(url) if !is_https_url(url) => {
                    report.error(
                        endpoint_path,
                        format!("must be an https:// URL, got \"{url}\""),
                    );
                    false
                }
                Some(_) => true,
                None => false,
            };
            let ca_cert_file = match settings.and_then(|s| s.ca_cert_config_map.as_deref()) {
                Some(text) => Some(path_value(
                    report,
                    format!("{settings_path}.caCertConfigMap"),
                    text,
                )?),
                None => None,
            };
            let client_cert = match settings
                .and_then(|s| s.auth.as_ref())
                .and_then(|auth| auth.x509.as_ref())
            {
                Some(x509) => Some(cert_key_files(
                    x509,
                    &format!("{settings_path}.auth.x509"),
                    secrets,
                    report,
                )?),
                None => None,
            };
            let endpoint = endpoint.filter(|_| endpoint_valid)?;
            Some(AuthenticationMethod::Custom(CustomSettings {
                endpoint: endpoint.to_owned(),
                ca_cert_file,
                headers: settings.and_then(|s| s.headers.clone()).unwrap_or_default(),
                client_cert,
            }))
        }
        Kind::UsernamePassword => {
            let settings_path = format!("{path}.usernamePasswordSettings");
            let file = required(
                report,
                format!("{settings_path}.passwordFile"),
                raw.username_password_settings
                    .as_ref()
                    .and_then(|s| s.password_file.as_deref()),
            );
            let password_file = path_of(report, &settings_path, "passwordFile", file)?;
            Some(AuthenticationMethod::UsernamePassword(
                UsernamePasswordSettings { password_file },
            ))
        }
    }
}

fn path_of(
    report: &mut Report,
    parent: &str,
    field: &str,
    text: Option<&str>,
) -> Option<std::path::PathBuf> {
    path_value(report, format!("{parent}.{field}"), text?)
}

/// `https://` followed by a host; the server's HTTP client checks the rest.
fn is_https_url(url: &str) -> bool {
    let Some(scheme_end) = url.find("://") else {
        return false;
    };
    url[..scheme_end].eq_ignore_ascii_case("https")
        && url[scheme_end + 3..]
            .chars()
            .next()
            .is_some_and(|c| c != '/' && !c.is_whitespace())
}

pub(crate) fn authorizations(
    raw: Option<&[Option<RawAuthorization>]>,
    report: &mut Report,
) -> Validated<Authorization> {
    let mut result = Validated::new();
    for (index, entry) in raw.unwrap_or_default().iter().enumerate() {
        let Some(entry) = entry else {
            result.complete = false;
            continue;
        };
        let path = format!("authorizations[{index}]");
        let name = required(report, format!("{path}.name"), entry.name.as_deref());
        result.add_name(report, format!("{path}.name"), "authorization", name);
        let policies_path = format!("{path}.authorizationPolicies");
        let Some(policies) = &entry.authorization_policies else {
            report.error(policies_path, "required");
            continue;
        };
        let cache = toggle(
            report,
            format!("{policies_path}.cache"),
            policies.cache.as_deref(),
            true,
        );
        let raw_rules = policies.rules.as_deref().unwrap_or_default();
        if raw_rules.is_empty() {
            report.warn(
                format!("{policies_path}.rules"),
                "no rules: every client on a listener using this policy is denied",
            );
        }
        let mut rules = Vec::new();
        let mut all_valid = true;
        for (rule_index, raw_rule) in raw_rules.iter().enumerate() {
            match rule(
                raw_rule,
                &format!("{policies_path}.rules[{rule_index}]"),
                report,
            ) {
                Some(rule) => rules.push(rule),
                None => all_valid = false,
            }
        }
        if let (Some(name), true) = (name, all_valid) {
            result.validated.push(Authorization {
                name: name.to_owned(),
                cache,
                rules,
            });
        }
    }
    result
}

fn rule(raw: &RawRule, path: &str, report: &mut Report) -> Option<AuthorizationRule> {
    if raw.state_store_resources.is_some() {
        report.warn(
            format!("{path}.stateStoreResources"),
            "the state store is not supported, ignored",
        );
    }
    let principals_path = format!("{path}.principals");
    let principals = raw.principals.as_ref().map(|raw| Principals {
        client_ids: raw.client_ids.clone().unwrap_or_default(),
        usernames: raw.usernames.clone().unwrap_or_default(),
        attributes: raw.attributes.clone().unwrap_or_default(),
    });
    let principals = match principals {
        Some(p)
            if !(p.client_ids.is_empty() && p.usernames.is_empty() && p.attributes.is_empty()) =>
        {
            Some(p)
        }
        _ => {
            report.error(
                principals_path,
                "required: at least one of clientIds, usernames, attributes",
            );
            None
        }
    };
    let resources_path = format!("{path}.brokerResources");
    let mut broker_resources = Vec::new();
    let mut all_valid = true;
    match raw.broker_resources.as_deref() {
        None | Some([]) => {
            report.error(resources_path, "at least one broker resource is required");
            all_valid = false;
        }
        Some(raw_resources) => {
            for (index, raw_resource) in raw_resources.iter().enumerate() {
                match broker_resource(raw_resource, &format!("{resources_path}[{index}]"), report) {
                    Some(resource) => broker_resources.push(resource),
                    None => all_valid = false,
                }
            }
        }
    }
    let principals = principals?;
    all_valid.then_some(AuthorizationRule {
        principals,
        broker_resources,
    })
}

fn broker_resource(
    raw: &RawBrokerResource,
    path: &str,
    report: &mut Report,
) -> Option<BrokerResource> {
    let method_path = format!("{path}.method");
    let Some(text) = raw.method.as_deref() else {
        report.error(method_path, "required (Connect, Publish or Subscribe)");
        return None;
    };
    let action = enum_value(
        report,
        method_path,
        text,
        &[
            ("Connect", BrokerAction::Connect),
            ("Publish", BrokerAction::Publish),
            ("Subscribe", BrokerAction::Subscribe),
        ],
    )?;
    let topics = raw.topics.clone().unwrap_or_default();
    let client_ids = raw.client_ids.clone().unwrap_or_default();
    let mut valid = true;
    if action == BrokerAction::Connect {
        if !topics.is_empty() {
            report.error(format!("{path}.topics"), "not allowed for method Connect");
            valid = false;
        }
    } else {
        if !client_ids.is_empty() {
            report.error(
                format!("{path}.clientIds"),
                format!("only allowed for method Connect, not {text}"),
            );
            valid = false;
        }
        if topics.is_empty() {
            report.error(
                format!("{path}.topics"),
                format!("at least one topic is required for method {text}"),
            );
            valid = false;
        }
        for (index, topic) in topics.iter().enumerate() {
            if let Err(problem) = check_topic_filter(topic) {
                report.error(format!("{path}.topics[{index}]"), problem);
                valid = false;
            }
        }
    }
    valid.then_some(BrokerResource {
        action,
        topics,
        client_ids,
    })
}

/// The wildcard placement rules of MQTT §4.7.1; AIO's `{principal...}`
/// variables are ordinary characters here.
fn check_topic_filter(filter: &str) -> Result<(), String> {
    // [MQTT-4.7.3-1]: topic names and filters are at least one character.
    if filter.is_empty() {
        return Err("a topic filter must not be empty [MQTT-4.7.3-1]".to_owned());
    }
    // [MQTT-4.7.3-2]: no U+0000 in topic names and filters.
    if filter.contains('\0') {
        return Err("a topic filter must not contain U+0000 [MQTT-4.7.3-2]".to_owned());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        // [MQTT-4.7.1-1]: '#' alone in the last level.
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err(format!(
                "'#' must be a whole level and the last one [MQTT-4.7.1-1], got \"{filter}\""
            ));
        }
        // [MQTT-4.7.1-2]: '+' occupies a whole level.
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "'+' must be a whole level [MQTT-4.7.1-2], got \"{filter}\""
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filter_wildcards_follow_section_4_7_1() {
        assert!(check_topic_filter("a/+/c/#").is_ok());
        assert!(check_topic_filter("#").is_ok());
        assert!(check_topic_filter("clients/{principal.clientId}/#").is_ok());
        assert!(check_topic_filter("a/#/c").is_err());
        assert!(check_topic_filter("a/b#").is_err());
        assert!(check_topic_filter("a/b+").is_err());
        assert!(check_topic_filter("").is_err());
    }

    #[test]
    fn custom_endpoints_must_be_https() {
        assert!(is_https_url("https://auth.local:8443/authenticate"));
        assert!(is_https_url("HTTPS://auth"));
        assert!(!is_https_url("http://auth"));
        assert!(!is_https_url("https://"));
        assert!(!is_https_url("auth.local"));
    }
}
