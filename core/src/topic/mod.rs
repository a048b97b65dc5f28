//! Topic names, topic filters and the subscription trie (MQTT 5.0 §4.7,
//! §4.8.2; MQTT 3.1.1 §4.7). Raw strings from the codec become `TopicName` /
//! `Filter` once, here; everything downstream trusts them. No I/O, no shard
//! knowledge: the trie is generic over who subscribes (`K`) and with what (`V`).
//! INVARIANT: a valid name or filter is 1..=65535 bytes, so it has at most
//! 32768 levels; every walk below is iterative, never recursive per level.

pub(crate) mod children;
mod filter;
mod name;
mod overlap;
mod trie;

pub use filter::{Filter, TopicFilter};
pub use name::{Levels, TopicName};
pub use overlap::{merge_overlapping, Delivery, SubscriptionData};
pub use trie::SubscriptionTrie;

use crate::codec::ReasonCode;

/// Longest topic name or filter: a UTF-8 string's two-byte length prefix
/// (MQTT 5.0 §1.5.4, MQTT 3.1.1 §1.5.3).
pub const TOPIC_LEN_MAX: usize = u16::MAX as usize;

/// Why a topic name, topic filter or shared-subscription filter is invalid.
/// Each variant names the rule it breaks; [`TopicError::reason_code`] gives
/// what goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic name is empty [MQTT-4.7.3-1]")]
    NameEmpty,
    #[error("topic name contains a wildcard '+' or '#' [MQTT-4.7.0-1] [MQTT-3.3.2-2]")]
    NameHasWildcard,
    #[error("topic name contains U+0000 [MQTT-4.7.3-2]")]
    NameHasNull,
    #[error("topic name is {len} bytes, more than 65535 (§1.5.4)")]
    NameTooLong { len: usize },
    #[error("topic filter is empty [MQTT-4.7.3-1]")]
    FilterEmpty,
    #[error("topic filter contains U+0000 [MQTT-4.7.3-2]")]
    FilterHasNull,
    #[error("topic filter is {len} bytes, more than 65535 (§1.5.4)")]
    FilterTooLong { len: usize },
    #[error("'#' is not the whole last level of the topic filter [MQTT-4.7.1-1]")]
    MultiLevelWildcardNotLast,
    #[error("'+' does not occupy a whole level of the topic filter [MQTT-4.7.1-2]")]
    SingleLevelWildcardNotWholeLevel,
    #[error("shared subscription ShareName is empty or contains '/', '+' or '#' [MQTT-4.8.2-1]")]
    ShareNameInvalid,
    #[error("shared subscription has no '/' and topic filter after its ShareName [MQTT-4.8.2-2]")]
    SharedFilterMissing,
}

impl TopicError {
    /// The reason code for SUBACK/UNSUBACK (filter errors) or PUBACK/PUBREC/
    /// DISCONNECT (name errors).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            TopicError::NameEmpty
            | TopicError::NameHasWildcard
            | TopicError::NameHasNull
            | TopicError::NameTooLong { .. } => ReasonCode::TopicNameInvalid,
            TopicError::FilterEmpty
            | TopicError::FilterHasNull
            | TopicError::FilterTooLong { .. }
            | TopicError::MultiLevelWildcardNotLast
            | TopicError::SingleLevelWildcardNotWholeLevel
            | TopicError::ShareNameInvalid
            | TopicError::SharedFilterMissing => ReasonCode::TopicFilterInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_errors_map_to_topic_name_invalid_and_filter_errors_to_topic_filter_invalid() {
        assert_eq!(
            TopicError::NameHasWildcard.reason_code(),
            ReasonCode::TopicNameInvalid
        );
        assert_eq!(
            TopicError::NameEmpty.reason_code().as_u8(),
            0x90,
            "0x90 Topic Name invalid"
        );
        assert_eq!(
            TopicError::MultiLevelWildcardNotLast.reason_code().as_u8(),
            0x8F,
            "0x8F Topic Filter invalid"
        );
        assert_eq!(
            TopicError::ShareNameInvalid.reason_code(),
            ReasonCode::TopicFilterInvalid
        );
    }
}
