//! `TopicName`: the validated topic of a PUBLISH or a will (MQTT 5.0 §4.7,
//! §3.3.2.1). Owns no copy: it wraps the codec's `ByteString`, so clones share
//! the packet buffer (`detached` copies, for what outlives the packet). Does
//! not resolve topic aliases (the session does).
//! INVARIANT: 1..=65535 bytes, no '+', '#' or U+0000.

use std::borrow::Borrow;
use std::fmt;

use bytestring::ByteString;

use super::{TopicError, TOPIC_LEN_MAX};

/// A topic name that passed [MQTT-4.7.3-1], [MQTT-4.7.0-1] and
/// [MQTT-4.7.3-2]. Equality, hashing and ordering are those of the string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(ByteString);

/// The levels of a topic name or filter: the pieces between '/' separators,
/// empty levels included ("/a" is "", "a").
pub type Levels<'a> = std::str::Split<'a, char>;

impl TopicName {
    pub fn new(raw: ByteString) -> Result<TopicName, TopicError> {
        validate(&raw)?;
        Ok(TopicName(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared buffer, e.g. to put the topic into an outgoing PUBLISH.
    pub fn as_byte_string(&self) -> &ByteString {
        &self.0
    }

    pub fn into_byte_string(self) -> ByteString {
        self.0
    }

    /// Topics starting with '$' are the server's (e.g. `$SYS/`): filters that
    /// start with a wildcard do not match them [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    pub fn levels(&self) -> Levels<'_> {
        self.0.split('/')
    }

    /// `levels().count()`, without splitting.
    pub fn level_count(&self) -> usize {
        level_count(&self.0)
    }

    /// The same name in an allocation of its own, for what is kept long
    /// after its packet: a clone shares, and keeps alive, the whole frame
    /// the name came in (which may be megabytes of properties or payload).
    pub fn detached(&self) -> TopicName {
        TopicName(ByteString::from(self.as_str()))
    }
}

/// Levels of a topic name or filter: one more than its separators.
pub(super) fn level_count(s: &str) -> usize {
    s.bytes().filter(|b| *b == b'/').count() + 1
}

fn validate(raw: &str) -> Result<(), TopicError> {
    if raw.is_empty() {
        // [MQTT-4.7.3-1]
        return Err(TopicError::NameEmpty);
    }
    if raw.len() > TOPIC_LEN_MAX {
        return Err(TopicError::NameTooLong { len: raw.len() });
    }
    // PERF: one pass over the bytes; the three bytes are ASCII so a byte scan
    // is exact on UTF-8.
    for b in raw.bytes() {
        match b {
            // [MQTT-4.7.0-1] [MQTT-3.3.2-2]
            b'+' | b'#' => return Err(TopicError::NameHasWildcard),
            // [MQTT-4.7.3-2]; the codec already rejects it, other sources may not.
            0 => return Err(TopicError::NameHasNull),
            _ => {}
        }
    }
    Ok(())
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;

    fn try_from(raw: &str) -> Result<TopicName, TopicError> {
        validate(raw)?;
        Ok(TopicName(ByteString::from(raw)))
    }
}

impl TryFrom<ByteString> for TopicName {
    type Error = TopicError;

    fn try_from(raw: ByteString) -> Result<TopicName, TopicError> {
        TopicName::new(raw)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<TopicName, TopicError> {
        TopicName::try_from(s)
    }

    #[test]
    fn empty_topic_name_is_rejected() {
        // [MQTT-4.7.3-1]
        assert_eq!(name(""), Err(TopicError::NameEmpty));
    }

    #[test]
    fn wildcards_in_topic_name_are_rejected() {
        // [MQTT-4.7.0-1] [MQTT-3.3.2-2]
        for s in ["+", "#", "a/+", "a/#", "a+b", "sport/ten#nis", "+/x"] {
            assert_eq!(name(s), Err(TopicError::NameHasWildcard), "{s}");
        }
    }

    #[test]
    fn null_character_in_topic_name_is_rejected() {
        // [MQTT-4.7.3-2]
        assert_eq!(name("a\0b"), Err(TopicError::NameHasNull));
    }

    #[test]
    fn topic_name_of_65535_bytes_is_accepted_and_65536_rejected() {
        // §1.5.4: two-byte length prefix.
        assert!(name(&"a".repeat(65535)).is_ok());
        assert_eq!(
            name(&"a".repeat(65536)),
            Err(TopicError::NameTooLong { len: 65536 })
        );
    }

    #[test]
    fn separators_and_spaces_make_valid_names() {
        // §4.7.3: "/" alone is a valid name with two empty levels; spaces are
        // allowed; '$' may start a name.
        for s in [
            "/",
            "//",
            "a//b",
            "/finance",
            "sport/",
            " ",
            "a b",
            "$SYS/x",
            "ünï/😀",
        ] {
            assert!(name(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn levels_include_empty_levels() {
        // §4.7.1.1: adjacent separators are a zero-length level.
        let n = name("/a//b/").unwrap();
        assert_eq!(n.levels().collect::<Vec<_>>(), ["", "a", "", "b", ""]);
        assert_eq!(name("x").unwrap().levels().collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn names_starting_with_dollar_are_system_topics() {
        // §4.7.2
        assert!(name("$SYS/broker/load").unwrap().is_system());
        assert!(name("$").unwrap().is_system());
        assert!(!name("a/$SYS").unwrap().is_system());
    }

    #[test]
    fn topic_names_are_case_sensitive() {
        // §4.7.3: "ACCOUNTS" and "Accounts" are two different topic names.
        assert_ne!(name("ACCOUNTS").unwrap(), name("Accounts").unwrap());
    }

    #[test]
    fn clone_shares_the_buffer() {
        let raw = ByteString::from("a/b/c");
        let n = TopicName::new(raw.clone()).unwrap();
        let m = n.clone();
        assert_eq!(m.as_str().as_ptr(), raw.as_ptr());
    }
}
