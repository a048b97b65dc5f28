//! `TopicFilter` (MQTT 5.0 §4.7.1) and the SUBSCRIBE-level `Filter`, which also
//! recognises shared subscriptions `$share/{ShareName}/{filter}` (§4.8.2).
//! `TopicFilter::matches` is the plain reference matcher: the trie is tested
//! against it. Whether a v3.1.1 client may use `$share/` is the session's call.
//! INVARIANT: 1..=65535 bytes, no U+0000, '+' and '#' only as whole levels,
//! '#' only last.

use std::borrow::Borrow;
use std::fmt;

use bytestring::ByteString;

use super::name::Levels;
use super::{TopicError, TopicName, TOPIC_LEN_MAX};

/// A topic filter that passed [MQTT-4.7.3-1], [MQTT-4.7.1-1],
/// [MQTT-4.7.1-2] and [MQTT-4.7.3-2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(ByteString);

impl TopicFilter {
    pub fn new(raw: ByteString) -> Result<TopicFilter, TopicError> {
        validate(&raw)?;
        Ok(TopicFilter(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_byte_string(&self) -> &ByteString {
        &self.0
    }

    pub fn into_byte_string(self) -> ByteString {
        self.0
    }

    /// Whether any level is '+' or '#'. Validation guarantees a wildcard
    /// byte is a whole level, so a byte scan is exact.
    pub fn has_wildcards(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }

    pub fn levels(&self) -> Levels<'_> {
        self.0.split('/')
    }

    /// `levels().count()`, without splitting.
    pub fn level_count(&self) -> usize {
        super::name::level_count(&self.0)
    }

    /// Reference matcher for §4.7: straightforward, not fast (the
    /// [`super::SubscriptionTrie`] is the fast path and is tested against it).
    pub fn matches(&self, topic: &TopicName) -> bool {
        // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match a
        // topic starting with '$'.
        if topic.is_system() && (self.0.starts_with('+') || self.0.starts_with('#')) {
            return false;
        }
        let mut filter_levels = self.levels();
        let mut topic_levels = topic.levels();
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                // '#' matches the remaining levels, including none: "sport/#"
                // matches "sport" (§4.7.1.2).
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(t)) if f == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

fn validate(raw: &str) -> Result<(), TopicError> {
    if raw.is_empty() {
        // [MQTT-4.7.3-1]
        return Err(TopicError::FilterEmpty);
    }
    if raw.len() > TOPIC_LEN_MAX {
        return Err(TopicError::FilterTooLong { len: raw.len() });
    }
    if raw.as_bytes().contains(&0) {
        // [MQTT-4.7.3-2]
        return Err(TopicError::FilterHasNull);
    }
    let mut levels = raw.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            // [MQTT-4.7.1-1]: "sport/tennis#" and "sport/tennis/#/ranking" are invalid.
            return Err(TopicError::MultiLevelWildcardNotLast);
        }
        if level.contains('+') && level != "+" {
            // [MQTT-4.7.1-2]: "sport+" is invalid.
            return Err(TopicError::SingleLevelWildcardNotWholeLevel);
        }
    }
    Ok(())
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    fn try_from(raw: &str) -> Result<TopicFilter, TopicError> {
        validate(raw)?;
        Ok(TopicFilter(ByteString::from(raw)))
    }
}

impl TryFrom<ByteString> for TopicFilter {
    type Error = TopicError;

    fn try_from(raw: ByteString) -> Result<TopicFilter, TopicError> {
        TopicFilter::new(raw)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TopicFilter {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", &*self.0)
    }
}

const SHARE_PREFIX: &str = "$share/";

/// A SUBSCRIBE/UNSUBSCRIBE filter string after parsing: a plain filter or a
/// shared subscription (MQTT 5.0 §4.8.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    Plain(TopicFilter),
    /// `$share/{group}/{filter}`: `group` is the ShareName, `filter` the
    /// topic filter messages are matched against.
    Shared {
        group: ByteString,
        filter: TopicFilter,
    },
}

impl Filter {
    /// Parses a raw filter from SUBSCRIBE/UNSUBSCRIBE. Both parts share the
    /// raw string's buffer.
    pub fn parse(raw: ByteString) -> Result<Filter, TopicError> {
        let Some(rest) = raw.strip_prefix(SHARE_PREFIX) else {
            // "$share" without a '/' is an ordinary filter: only "$share/"
            // starts a shared subscription (§4.8.2).
            return TopicFilter::new(raw).map(Filter::Plain);
        };
        // The ShareName ends at the first '/', so it can never contain one.
        let Some((group, filter)) = rest.split_once('/') else {
            // "$share/g": [MQTT-4.8.2-2] needs '/' and a filter after the ShareName.
            return Err(TopicError::SharedFilterMissing);
        };
        if group.is_empty() || group.contains(['+', '#']) {
            // [MQTT-4.8.2-1]
            return Err(TopicError::ShareNameInvalid);
        }
        if filter.is_empty() {
            // [MQTT-4.8.2-2]
            return Err(TopicError::SharedFilterMissing);
        }
        let group = raw.slice_ref(group);
        let filter = TopicFilter::new(raw.slice_ref(filter))?;
        Ok(Filter::Shared { group, filter })
    }

    /// The filter messages are matched against.
    pub fn topic_filter(&self) -> &TopicFilter {
        match self {
            Filter::Plain(filter) | Filter::Shared { filter, .. } => filter,
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Filter::Shared { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn matches(f: &str, t: &str) -> bool {
        filter(f).matches(&name(t))
    }

    #[test]
    fn empty_filter_is_rejected() {
        // [MQTT-4.7.3-1]
        assert_eq!(TopicFilter::try_from(""), Err(TopicError::FilterEmpty));
    }

    #[test]
    fn null_character_in_filter_is_rejected() {
        // [MQTT-4.7.3-2]
        assert_eq!(
            TopicFilter::try_from("a/\0"),
            Err(TopicError::FilterHasNull)
        );
    }

    #[test]
    fn filter_longer_than_65535_bytes_is_rejected() {
        assert!(TopicFilter::try_from("a".repeat(65535).as_str()).is_ok());
        assert_eq!(
            TopicFilter::try_from("a".repeat(65536).as_str()),
            Err(TopicError::FilterTooLong { len: 65536 })
        );
    }

    #[test]
    fn multi_level_wildcard_must_be_the_whole_last_level() {
        // [MQTT-4.7.1-1], examples of §4.7.1.2.
        for s in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/a",
            "##",
            "a/#b",
            "#/",
        ] {
            assert_eq!(
                TopicFilter::try_from(s),
                Err(TopicError::MultiLevelWildcardNotLast),
                "{s}"
            );
        }
        for s in ["#", "sport/tennis/#", "/#", "a//#", "+/#"] {
            assert!(TopicFilter::try_from(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn single_level_wildcard_must_be_a_whole_level() {
        // [MQTT-4.7.1-2], examples of §4.7.1.3.
        for s in ["sport+", "sport/+tennis", "++", "a/b+/c"] {
            assert_eq!(
                TopicFilter::try_from(s),
                Err(TopicError::SingleLevelWildcardNotWholeLevel),
                "{s}"
            );
        }
        for s in ["+", "+/tennis/#", "sport/+/player1", "/+", "+/+", "+//+"] {
            assert!(TopicFilter::try_from(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn has_wildcards_reports_plus_and_hash() {
        assert!(filter("a/+/b").has_wildcards());
        assert!(filter("a/#").has_wildcards());
        assert!(!filter("a/b/$c").has_wildcards());
    }

    #[test]
    fn multi_level_wildcard_examples_of_the_spec() {
        // §4.7.1.2: "sport/tennis/player1/#" matches these three.
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        // "sport/#" also matches the singular "sport": '#' includes the parent level.
        assert!(matches("sport/#", "sport"));
        // "#" matches every (non-'$') topic.
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn single_level_wildcard_examples_of_the_spec() {
        // §4.7.1.3
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        // "sport/+" does not match "sport" but does match "sport/".
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        // "+/+" and "/+" match "/finance"; "+" does not.
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+", "finance"));
    }

    #[test]
    fn filters_starting_with_a_wildcard_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1], examples of §4.7.2.
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // Only the first level counts: a '$' later is an ordinary character.
        assert!(matches("+/$SYS", "a/$SYS"));
        assert!(matches("a/#", "a/$SYS"));
    }

    #[test]
    fn empty_levels_are_real_levels() {
        // §4.7.1.1: "a//b" has three levels, "/a" two.
        assert!(matches("a/+/b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(matches("+/a", "/a"));
        assert!(!matches("a", "/a"));
        assert!(matches("/#", "/a"));
        assert!(matches("#", "a//b"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
    }

    #[test]
    fn literal_filters_match_exactly_and_case_sensitively() {
        assert!(matches("sport/tennis", "sport/tennis"));
        assert!(!matches("sport/tennis", "sport/Tennis"));
        assert!(!matches("sport/tennis", "sport/tennis/"));
        assert!(!matches("sport", "sport/tennis"));
    }

    #[test]
    fn shared_subscription_is_parsed_into_group_and_filter() {
        // §4.8.2
        let parsed = Filter::parse("$share/consumer1/sport/tennis/+".into()).unwrap();
        assert_eq!(
            parsed,
            Filter::Shared {
                group: "consumer1".into(),
                filter: filter("sport/tennis/+"),
            }
        );
        assert!(parsed.is_shared());
        // The filter part may itself start with '/' or be "#".
        let parsed = Filter::parse("$share/g//finance".into()).unwrap();
        assert_eq!(parsed.topic_filter(), &filter("/finance"));
        let parsed = Filter::parse("$share/g/#".into()).unwrap();
        assert_eq!(parsed.topic_filter(), &filter("#"));
    }

    #[test]
    fn plain_filters_parse_as_plain() {
        for s in ["sport/#", "$share", "$SYS/#", "$sharex/g/a", "a/$share/g/b"] {
            assert_eq!(Filter::parse(s.into()), Ok(Filter::Plain(filter(s))), "{s}");
        }
    }

    #[test]
    fn share_name_must_be_non_empty_without_wildcards() {
        // [MQTT-4.8.2-1]
        for s in [
            "$share//x",
            "$share/+/x",
            "$share/#/x",
            "$share/g+/x",
            "$share/a#/x",
        ] {
            assert_eq!(
                Filter::parse(s.into()),
                Err(TopicError::ShareNameInvalid),
                "{s}"
            );
        }
    }

    #[test]
    fn shared_subscription_needs_a_filter_after_the_share_name() {
        // [MQTT-4.8.2-2]
        for s in ["$share/g", "$share/g/", "$share/"] {
            assert_eq!(
                Filter::parse(s.into()),
                Err(TopicError::SharedFilterMissing),
                "{s}"
            );
        }
    }

    #[test]
    fn shared_subscription_filter_is_validated_as_a_topic_filter() {
        // [MQTT-4.7.1-1] / [MQTT-4.7.1-2] apply to the part after the ShareName.
        assert_eq!(
            Filter::parse("$share/g/a/#/b".into()),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
        assert_eq!(
            Filter::parse("$share/g/a+".into()),
            Err(TopicError::SingleLevelWildcardNotWholeLevel)
        );
    }

    #[test]
    fn shared_parts_share_the_raw_buffer() {
        let raw = ByteString::from("$share/g/a/b");
        let Ok(Filter::Shared { group, filter }) = Filter::parse(raw.clone()) else {
            panic!("expected a shared filter");
        };
        assert_eq!(group.as_ptr(), raw[7..].as_ptr());
        assert_eq!(filter.as_str().as_ptr(), raw[9..].as_ptr());
    }
}
