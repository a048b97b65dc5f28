//! Authorization: AIO's allow-only `BrokerAuthorization` rules compiled, at
//! CONNECT, into one client's [`CompiledPermissions`] so each PUBLISH check is
//! a trie lookup and each SUBSCRIBE check a trie lookup plus a coverage test
//! of the few candidates (MQTT 5.0 §4.7 matching, §4.8.2 shared filters).
//! No I/O and no clock. INVARIANT: a template variable fills a whole topic
//! level; a value that is missing, empty or holds '/', '+', '#' or U+0000
//! makes that topic unusable (it never matches) instead of widening it.

use std::collections::BTreeMap;
use std::fmt;

use shardmq_core::config::{Authorization, AuthorizationRule, BrokerAction, Principals};
use shardmq_core::session::Permissions;
use shardmq_core::topic::{Filter, SubscriptionTrie, TopicFilter, TopicName};

/// Who a client is, for authorization: the CONNECT client id (or the one the
/// broker assigned) and what authentication established.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    pub client_id: String,
    pub username: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A topic in a rule that cannot be compiled: a variable that is not a whole
/// level, or an unknown variable. Found when the policy is built (config load).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    #[error("{path}: a {{principal...}} variable must be the whole topic level, got \"{topic}\" (AIO: \"clients/{{principal.clientId}}/#\" is valid, \"client-{{principal.clientId}}/#\" is not)")]
    VariableNotWholeLevel { path: String, topic: String },
    #[error("{path}: unknown variable \"{variable}\" in \"{topic}\" (known: {{principal.clientId}}, {{principal.username}}, {{principal.attributes.NAME}})")]
    UnknownVariable {
        path: String,
        topic: String,
        variable: String,
    },
}

/// One level of a rule's topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// A literal level, or '+' / '#' (placement checked by the config).
    Text(String),
    ClientId,
    Username,
    Attribute(String),
}

/// A rule's topic filter with its `{principal...}` variables parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicTemplate {
    levels: Vec<Level>,
}

const VARIABLE_OPEN: &str = "{principal.";

impl TopicTemplate {
    fn parse(topic: &str, path: &str) -> Result<TopicTemplate, AuthzError> {
        let mut levels = Vec::new();
        for level in topic.split('/') {
            let parsed = if let Some(inner) = level
                .strip_prefix(VARIABLE_OPEN)
                .and_then(|rest| rest.strip_suffix('}'))
            {
                match inner {
                    "clientId" => Level::ClientId,
                    "username" => Level::Username,
                    _ => match inner.strip_prefix("attributes.") {
                        Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                            Level::Attribute(name.to_owned())
                        }
                        _ => {
                            return Err(AuthzError::UnknownVariable {
                                path: path.to_owned(),
                                topic: topic.to_owned(),
                                variable: level.to_owned(),
                            })
                        }
                    },
                }
            } else if level.contains(VARIABLE_OPEN) {
                return Err(AuthzError::VariableNotWholeLevel {
                    path: path.to_owned(),
                    topic: topic.to_owned(),
                });
            } else {
                Level::Text(level.to_owned())
            };
            levels.push(parsed);
        }
        Ok(TopicTemplate { levels })
    }

    /// The filter for `principal`, or `None` when a variable has no usable
    /// value (the topic then grants nothing).
    fn instantiate(&self, principal: &Principal) -> Option<TopicFilter> {
        let mut out = String::new();
        for (index, level) in self.levels.iter().enumerate() {
            if index > 0 {
                out.push('/');
            }
            let value = match level {
                Level::Text(text) => {
                    out.push_str(text);
                    continue;
                }
                Level::ClientId => Some(principal.client_id.as_str()),
                Level::Username => principal.username.as_deref(),
                Level::Attribute(name) => principal.attributes.get(name).map(String::as_str),
            };
            out.push_str(usable_level_value(value?)?);
        }
        TopicFilter::try_from(out.as_str()).ok()
    }
}

/// A substituted value must be exactly one literal level: a '/' would let a
/// client named "a/b" reach someone else's tree, a '+' or '#' would widen the
/// grant, and an empty value is almost surely a missing one.
fn usable_level_value(value: &str) -> Option<&str> {
    let usable = !value.is_empty() && !value.contains(['/', '+', '#', '\0']);
    usable.then_some(value)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledResource {
    action: BrokerAction,
    topics: Vec<TopicTemplate>,
    client_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledRule {
    principals: Principals,
    resources: Vec<CompiledResource>,
}

/// One `authorizations[]` entry, parsed once at config load; compiled per
/// client with [`AuthorizationPolicy::compile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    name: String,
    rules: Vec<CompiledRule>,
}

impl AuthorizationPolicy {
    /// Parses every topic template; errors name the config path
    /// (`authorizations[name].rules[1].brokerResources[0].topics[2]`).
    pub fn new(config: &Authorization) -> Result<AuthorizationPolicy, AuthzError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (rule_index, rule) in config.rules.iter().enumerate() {
            rules.push(compile_rule(&config.name, rule_index, rule)?);
        }
        Ok(AuthorizationPolicy {
            name: config.name.clone(),
            rules,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What `principal` may do: the union of the resources of every rule
    /// with a matching principal (allow-only: nothing else is allowed).
    pub fn compile(&self, principal: &Principal) -> CompiledPermissions {
        let mut connect = false;
        let mut publish = SubscriptionTrie::new();
        let mut subscribe = SubscriptionTrie::new();
        let mut filter_count: u32 = 0;
        for rule in self
            .rules
            .iter()
            .filter(|r| principal_matches(&r.principals, principal))
        {
            for resource in &rule.resources {
                match resource.action {
                    BrokerAction::Connect => {
                        connect |= resource.client_ids.is_empty()
                            || resource.client_ids.contains(&principal.client_id);
                    }
                    BrokerAction::Publish | BrokerAction::Subscribe => {
                        for filter in resource
                            .topics
                            .iter()
                            .filter_map(|t| t.instantiate(principal))
                        {
                            // Keys only need to be unique per trie; the value
                            // is the filter itself for the coverage check.
                            filter_count = filter_count.wrapping_add(1);
                            let trie = if resource.action == BrokerAction::Publish {
                                &mut publish
                            } else {
                                &mut subscribe
                            };
                            trie.insert(&filter, filter_count, filter.clone());
                        }
                    }
                }
            }
        }
        CompiledPermissions {
            grants: Grants::Rules(Box::new(RuleGrants {
                connect,
                publish,
                subscribe,
            })),
        }
    }
}

fn compile_rule(
    name: &str,
    rule_index: usize,
    rule: &AuthorizationRule,
) -> Result<CompiledRule, AuthzError> {
    let mut resources = Vec::with_capacity(rule.broker_resources.len());
    for (resource_index, resource) in rule.broker_resources.iter().enumerate() {
        let mut topics = Vec::with_capacity(resource.topics.len());
        for (topic_index, topic) in resource.topics.iter().enumerate() {
            let path = format!(
                "authorizations[{name}].rules[{rule_index}].brokerResources[{resource_index}].topics[{topic_index}]"
            );
            topics.push(TopicTemplate::parse(topic, &path)?);
        }
        resources.push(CompiledResource {
            action: resource.action,
            topics,
            client_ids: resource.client_ids.clone(),
        });
    }
    Ok(CompiledRule {
        principals: rule.principals.clone(),
        resources,
    })
}

/// AIO: the items of `principals` are ORed; an attribute map matches when
/// every pair is among the client's attributes. An empty map matches no one:
/// it is far more likely a mistake than a wish to match every client.
fn principal_matches(principals: &Principals, principal: &Principal) -> bool {
    principals.client_ids.contains(&principal.client_id)
        || principal
            .username
            .as_ref()
            .is_some_and(|u| principals.usernames.contains(u))
        || principals.attributes.iter().any(|wanted| {
            !wanted.is_empty()
                && wanted
                    .iter()
                    .all(|(k, v)| principal.attributes.get(k) == Some(v))
        })
}

enum Grants {
    AllowAll,
    Rules(Box<RuleGrants>),
}

struct RuleGrants {
    connect: bool,
    /// Allowed publish filters, keyed by a per-client counter.
    publish: SubscriptionTrie<u32, TopicFilter>,
    /// Allowed subscribe filters; the value is the filter for the coverage
    /// check of the trie's candidates.
    subscribe: SubscriptionTrie<u32, TopicFilter>,
}

/// What one client may do, compiled at CONNECT. Implements the session's
/// [`Permissions`]; [`CompiledPermissions::can_connect`] is asked first.
pub struct CompiledPermissions {
    grants: Grants,
}

impl fmt::Debug for CompiledPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.grants {
            Grants::AllowAll => f.write_str("CompiledPermissions(AllowAll)"),
            Grants::Rules(rules) => f
                .debug_struct("CompiledPermissions")
                .field("connect", &rules.connect)
                .field("publish_filters", &rules.publish.len())
                .field("subscribe_filters", &rules.subscribe.len())
                .finish(),
        }
    }
}

impl CompiledPermissions {
    /// No authorization policy on the listener: everything is allowed.
    pub fn allow_all() -> CompiledPermissions {
        CompiledPermissions {
            grants: Grants::AllowAll,
        }
    }

    /// Whether a rule grants `Connect`; a client without it is refused with
    /// 0x87 Not authorized (v3.1.1: return code 5).
    pub fn can_connect(&self) -> bool {
        match &self.grants {
            Grants::AllowAll => true,
            Grants::Rules(rules) => rules.connect,
        }
    }
}

/// Stands in for a wildcard level of a requested filter when it is walked
/// through the trie as if it were a topic name: '+' and '#' are not allowed
/// in a `TopicName`. Any literal would do (the trie yields candidates and
/// [`covers`] decides), as long as it does not start with '$' (§4.7.2).
const WILDCARD_STAND_IN: &str = "\u{1}";

impl Permissions for CompiledPermissions {
    fn can_publish(&self, topic: &TopicName) -> bool {
        match &self.grants {
            Grants::AllowAll => true,
            Grants::Rules(rules) => {
                let mut allowed = false;
                rules.publish.for_each_match(topic, |_, _| allowed = true);
                allowed
            }
        }
    }

    /// A subscription is allowed when one allowed filter covers every topic
    /// the requested filter can match; a shared subscription is checked on
    /// its inner filter (§4.8.2).
    fn can_subscribe(&self, filter: &Filter) -> bool {
        let Grants::Rules(rules) = &self.grants else {
            return true;
        };
        let requested = filter.topic_filter();
        // Walk the trie with wildcard levels as a stand-in literal: every
        // allowed filter that covers `requested` matches that walk (a '+'
        // or '#' matches any literal, equal literals match), so the matches
        // are a superset of the covering filters; `covers` picks the real ones.
        let walk: String = requested
            .levels()
            .map(|level| match level {
                "+" | "#" => WILDCARD_STAND_IN,
                literal => literal,
            })
            .collect::<Vec<_>>()
            .join("/");
        let Ok(walk) = TopicName::try_from(walk.as_str()) else {
            return false;
        };
        let mut allowed = false;
        rules.subscribe.for_each_match(&walk, |_, candidate| {
            allowed = allowed || covers(candidate, requested);
        });
        allowed
    }
}

/// Whether `allowed` matches every topic name `requested` can match (§4.7),
/// level by level: an allowed '#' covers anything from there on (including
/// the parent level, as "a/#" matches "a"); an allowed '+' covers one
/// literal or '+' level but not '#'; a literal covers only the same literal.
/// A requested topic whose first level starts with '$' is not covered by an
/// allowed filter starting with a wildcard [MQTT-4.7.2-1].
pub fn covers(allowed: &TopicFilter, requested: &TopicFilter) -> bool {
    let allowed_str = allowed.as_str();
    if requested.as_str().starts_with('$') && allowed_str.starts_with(['+', '#']) {
        return false;
    }
    let mut allowed_levels = allowed.levels();
    let mut requested_levels = requested.levels();
    loop {
        match (allowed_levels.next(), requested_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            // "a/#" requested matches "a" and everything below: only an
            // allowed '#' (handled above) covers that.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(r)) if a == r && r != "+" => {}
            // Requested ends before allowed: only an allowed "#" (first arm:
            // "a/#" matches "a") would still match; any other level does not.
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;
    use proptest::prelude::*;
    use shardmq_core::config::BrokerResource;

    fn tf(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn sub(s: &str) -> Filter {
        Filter::parse(ByteString::from(s)).unwrap()
    }

    fn resource(action: BrokerAction, topics: &[&str]) -> BrokerResource {
        BrokerResource {
            action,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            client_ids: Vec::new(),
        }
    }

    fn policy(rules: Vec<AuthorizationRule>) -> AuthorizationPolicy {
        AuthorizationPolicy::new(&Authorization {
            name: "p".into(),
            cache: true,
            rules,
        })
        .unwrap()
    }

    fn principal(client_id: &str, username: Option<&str>, attrs: &[(&str, &str)]) -> Principal {
        Principal {
            client_id: client_id.into(),
            username: username.map(Into::into),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn attrs_rule(attrs: &[(&str, &str)], resources: Vec<BrokerResource>) -> AuthorizationRule {
        AuthorizationRule {
            principals: Principals {
                attributes: vec![attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()],
                ..Principals::default()
            },
            broker_resources: resources,
        }
    }

    fn seed_policy() -> AuthorizationPolicy {
        // docs/CONFIG.md's seed example.
        policy(vec![attrs_rule(
            &[("group", "testers")],
            vec![
                resource(BrokerAction::Connect, &[]),
                resource(BrokerAction::Publish, &["testtopic/#"]),
                resource(BrokerAction::Subscribe, &["testtopic/#"]),
            ],
        )])
    }

    #[test]
    fn attribute_principal_gets_the_rule_resources() {
        let perms = seed_policy().compile(&principal("a", None, &[("group", "testers")]));
        assert!(perms.can_connect());
        assert!(perms.can_publish(&name("testtopic/x")));
        assert!(
            perms.can_publish(&name("testtopic")),
            "'#' matches the parent level"
        );
        assert!(perms.can_subscribe(&sub("testtopic/+/y")));
        assert!(perms.can_subscribe(&sub("$share/g/testtopic/#")));
    }

    #[test]
    fn publish_and_subscribe_outside_the_authorized_topics_are_denied() {
        let perms = seed_policy().compile(&principal("a", None, &[("group", "testers")]));
        assert!(!perms.can_publish(&name("other/x")));
        assert!(!perms.can_publish(&name("testtopicx")));
        assert!(!perms.can_subscribe(&sub("other/#")));
        assert!(!perms.can_subscribe(&sub("#")));
        assert!(!perms.can_subscribe(&sub("+/x")));
        assert!(!perms.can_subscribe(&sub("$share/g/other")));
    }

    #[test]
    fn a_client_no_rule_names_may_not_connect_or_do_anything() {
        let perms = seed_policy().compile(&principal("a", None, &[("group", "other")]));
        assert!(!perms.can_connect());
        assert!(!perms.can_publish(&name("testtopic/x")));
        assert!(!perms.can_subscribe(&sub("testtopic/x")));
    }

    #[test]
    fn a_policy_without_rules_denies_everyone() {
        let perms = policy(Vec::new()).compile(&principal("a", Some("u"), &[]));
        assert!(!perms.can_connect());
        assert!(!perms.can_publish(&name("a")));
    }

    #[test]
    fn allow_all_allows_everything() {
        let perms = CompiledPermissions::allow_all();
        assert!(perms.can_connect());
        assert!(perms.can_publish(&name("$SYS/x")));
        assert!(perms.can_subscribe(&sub("#")));
    }

    #[test]
    fn principals_are_ored_and_attribute_maps_need_every_pair() {
        let rule = AuthorizationRule {
            principals: Principals {
                client_ids: vec!["cid".into()],
                usernames: vec!["alice".into()],
                attributes: vec![
                    [("a".to_string(), "1".to_string()), ("b".into(), "2".into())]
                        .into_iter()
                        .collect(),
                ],
            },
            broker_resources: vec![resource(BrokerAction::Connect, &[])],
        };
        let p = policy(vec![rule]);
        assert!(p.compile(&principal("cid", None, &[])).can_connect());
        assert!(p.compile(&principal("x", Some("alice"), &[])).can_connect());
        assert!(p
            .compile(&principal("x", None, &[("a", "1"), ("b", "2"), ("c", "3")]))
            .can_connect());
        assert!(!p
            .compile(&principal("x", None, &[("a", "1")]))
            .can_connect());
        assert!(!p.compile(&principal("x", Some("bob"), &[])).can_connect());
    }

    #[test]
    fn an_empty_attribute_map_matches_no_one() {
        let rule = AuthorizationRule {
            principals: Principals {
                attributes: vec![BTreeMap::new()],
                ..Principals::default()
            },
            broker_resources: vec![resource(BrokerAction::Connect, &[])],
        };
        assert!(!policy(vec![rule])
            .compile(&principal("x", None, &[]))
            .can_connect());
    }

    #[test]
    fn connect_client_ids_restrict_connect() {
        let rule = AuthorizationRule {
            principals: Principals {
                usernames: vec!["u".into()],
                ..Principals::default()
            },
            broker_resources: vec![BrokerResource {
                action: BrokerAction::Connect,
                topics: Vec::new(),
                client_ids: vec!["sensor-1".into()],
            }],
        };
        let p = policy(vec![rule]);
        assert!(p
            .compile(&principal("sensor-1", Some("u"), &[]))
            .can_connect());
        assert!(!p
            .compile(&principal("sensor-2", Some("u"), &[]))
            .can_connect());
    }

    #[test]
    fn variables_are_substituted_per_client() {
        let p = policy(vec![attrs_rule(
            &[("group", "g")],
            vec![
                resource(
                    BrokerAction::Publish,
                    &[
                        "clients/{principal.clientId}/#",
                        "users/{principal.username}/out",
                        "sites/{principal.attributes.site}/+",
                    ],
                ),
                resource(
                    BrokerAction::Subscribe,
                    &["clients/{principal.clientId}/in"],
                ),
            ],
        )]);
        let perms = p.compile(&principal(
            "dev1",
            Some("ann"),
            &[("group", "g"), ("site", "oslo")],
        ));
        assert!(perms.can_publish(&name("clients/dev1/telemetry")));
        assert!(!perms.can_publish(&name("clients/dev2/telemetry")));
        assert!(perms.can_publish(&name("users/ann/out")));
        assert!(perms.can_publish(&name("sites/oslo/temp")));
        assert!(!perms.can_publish(&name("sites/bergen/temp")));
        assert!(perms.can_subscribe(&sub("clients/dev1/in")));
        assert!(
            !perms.can_subscribe(&sub("clients/+/in")),
            "a literal does not cover '+'"
        );
    }

    #[test]
    fn a_missing_variable_value_makes_only_that_topic_unusable() {
        let p = policy(vec![attrs_rule(
            &[("group", "g")],
            vec![resource(
                BrokerAction::Publish,
                &[
                    "users/{principal.username}/#",
                    "sites/{principal.attributes.site}",
                    "open",
                ],
            )],
        )]);
        let perms = p.compile(&principal("dev1", None, &[("group", "g")]));
        assert!(!perms.can_publish(&name("users/dev1/x")));
        assert!(!perms.can_publish(&name("sites/x")));
        assert!(perms.can_publish(&name("open")));
    }

    #[test]
    fn a_value_that_is_not_one_literal_level_never_widens_the_grant() {
        let p = policy(vec![AuthorizationRule {
            principals: Principals {
                client_ids: vec!["a/b".into(), "+".into(), "#".into(), "".into()],
                ..Principals::default()
            },
            broker_resources: vec![resource(BrokerAction::Publish, &["c/{principal.clientId}"])],
        }]);
        for id in ["a/b", "+", "#", ""] {
            let perms = p.compile(&principal(id, None, &[]));
            assert!(!perms.can_publish(&name("c/a/b")), "{id}");
            assert!(!perms.can_publish(&name("c/x")), "{id}");
            assert!(!perms.can_publish(&name("c")), "{id}");
        }
    }

    #[test]
    fn malformed_templates_are_rejected_at_load_with_the_path() {
        let bad = |topic: &str| {
            AuthorizationPolicy::new(&Authorization {
                name: "p".into(),
                cache: true,
                rules: vec![attrs_rule(
                    &[("g", "g")],
                    vec![resource(BrokerAction::Publish, &[topic])],
                )],
            })
            .unwrap_err()
        };
        let err = bad("client-{principal.clientId}/#");
        assert!(matches!(err, AuthzError::VariableNotWholeLevel { .. }));
        assert!(err
            .to_string()
            .starts_with("authorizations[p].rules[0].brokerResources[0].topics[0]"));
        assert!(matches!(
            bad("a/{principal.nope}"),
            AuthzError::UnknownVariable { .. }
        ));
        assert!(matches!(
            bad("a/{principal.attributes.}"),
            AuthzError::UnknownVariable { .. }
        ));
    }

    #[test]
    fn system_topics_need_an_explicit_grant() {
        // [MQTT-4.7.2-1]: "#" does not match "$SYS/..." topics.
        let p = policy(vec![attrs_rule(
            &[("g", "g")],
            vec![
                resource(BrokerAction::Publish, &["#"]),
                resource(BrokerAction::Subscribe, &["#", "$SYS/stats/#"]),
            ],
        )]);
        let perms = p.compile(&principal("c", None, &[("g", "g")]));
        assert!(!perms.can_publish(&name("$SYS/x")));
        assert!(!perms.can_subscribe(&sub("$SYS/#")));
        assert!(perms.can_subscribe(&sub("$SYS/stats/+")));
        assert!(
            perms.can_subscribe(&sub("+/x")),
            "'+' at the start never matches '$' topics"
        );
    }

    #[test]
    fn coverage_examples() {
        let c = |a: &str, r: &str| covers(&tf(a), &tf(r));
        assert!(c("#", "a/b/#"));
        assert!(c("a/#", "a"));
        assert!(c("a/#", "a/#"));
        assert!(c("a/#", "a/+/c"));
        assert!(c("a/+", "a/+"));
        assert!(c("a/+", "a/b"));
        assert!(c("a/+/#", "a/b/#"));
        assert!(
            !c("a/+/#", "a/#"),
            "a/# matches a and a/b; a/+/# does not match a"
        );
        assert!(!c("a/+", "a/#"));
        assert!(!c("a/+", "a"));
        assert!(!c("a/b", "a/+"));
        assert!(!c("a", "a/#"));
        assert!(!c("a/b/#", "a/#"));
        assert!(!c("a/+/c/#", "a/b"));
        assert!(!c("#", "$SYS/#"));
        assert!(c("$SYS/#", "$SYS/a"));
    }

    /// Topics up to four levels over {a, b, c, "", $s}: enough to tell apart
    /// any two filters over {a, b, +, #} of up to three levels.
    fn all_topics() -> Vec<TopicName> {
        let alphabet = ["a", "b", "c", "", "$s"];
        let mut out = Vec::new();
        let mut layer: Vec<String> = vec![String::new()];
        for depth in 0..4 {
            let mut next = Vec::new();
            for prefix in &layer {
                for level in alphabet {
                    if depth > 0 && level == "$s" {
                        continue;
                    }
                    let topic = if depth == 0 {
                        level.to_string()
                    } else {
                        format!("{prefix}/{level}")
                    };
                    next.push(topic);
                }
            }
            out.extend(
                next.iter()
                    .filter_map(|t| TopicName::try_from(t.as_str()).ok()),
            );
            layer = next;
        }
        out
    }

    fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "+", "$s"]), 1..=3),
            any::<bool>(),
        )
            .prop_filter_map("valid filter", |(levels, multi)| {
                let mut text = levels.join("/");
                if multi {
                    text.push_str("/#");
                }
                if text.contains("/$s") {
                    return None;
                }
                TopicFilter::try_from(text.as_str()).ok()
            })
    }

    proptest! {
        /// `covers` agrees with its definition: every topic the requested
        /// filter matches is matched by the allowed one.
        #[test]
        fn covers_means_every_matched_topic_is_allowed(
            allowed in filter_strategy(),
            requested in filter_strategy(),
        ) {
            let counterexample = all_topics()
                .into_iter()
                .find(|t| requested.matches(t) && !allowed.matches(t));
            prop_assert_eq!(
                covers(&allowed, &requested),
                counterexample.is_none(),
                "allowed {} requested {} counterexample {:?}",
                allowed,
                requested,
                counterexample
            );
        }

        /// The compiled trie check agrees with a scan of `covers` over the
        /// allowed filters.
        #[test]
        fn subscribe_check_agrees_with_a_scan(
            allowed in prop::collection::vec(filter_strategy(), 0..5),
            requested in filter_strategy(),
        ) {
            let topics: Vec<&str> = allowed.iter().map(|f| f.as_str()).collect();
            let p = policy(vec![attrs_rule(
                &[("g", "g")],
                vec![resource(BrokerAction::Subscribe, &topics)],
            )]);
            let perms = p.compile(&principal("c", None, &[("g", "g")]));
            let scan = allowed.iter().any(|a| covers(a, &requested));
            prop_assert_eq!(perms.can_subscribe(&Filter::Plain(requested.clone())), scan);
        }
    }
}
