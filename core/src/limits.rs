//! Broker-wide client limits: AIO's `advanced.clients` after validation. The
//! session state machine applies them; the config layer only builds them.
//! Every limit names where it comes from (TIGER_STYLE: a limit on everything).

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

/// What happens when a subscriber's queue is full (`subscriberQueueLimit.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFullStrategy {
    /// AIO `None`: the new message is not queued for this subscriber (it is
    /// counted, and a QoS>0 publisher sees Quota Exceeded where v5 allows it).
    #[default]
    None,
    /// AIO `DropOldest`: the oldest queued message is dropped and counted.
    DropOldest,
}

/// Who may connect with a client id whose session exists
/// (`advanced.clients.sessionTakeover`, a shardmq addition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TakeoverPolicy {
    /// Only the principal that holds the session (same authentication
    /// policy, method and subject; for anonymous clients, the same port)
    /// may resume or replace it; anyone else is refused with Not Authorized
    /// and the session is untouched (MQTT 5.0 §5.4.2).
    #[default]
    SamePrincipal,
    /// Any client that passes authentication may take any session over
    /// (the MQTT default; for single-tenant sites that want it).
    AnyPrincipal,
}

/// Queue bound of a session when `subscriberQueueLimit.length` is not set:
/// nothing in the broker is unbounded (a subscriber that never reads must
/// not take the shard's memory).
pub const QUEUE_LEN_DEFAULT_MAX: u32 = 100_000;

/// One session may hold at most 1/`SESSION_SHARES` of its shard's memory
/// budget in memory, and of its shard's part of the disk buffer on disk: a
/// subscriber that stops reading leaves the rest to the others
/// (docs/BUFFER.md "Fair shares").
pub const SESSION_SHARES: u64 = 4;

/// Largest packet a connection may send before its CONNECT is accepted
/// (the limit is `min(this, maxPacketSizeBytes)` until then). What a
/// CONNECT legitimately carries: a client id, a user name, a password or
/// token (a Kubernetes service-account JWT is a few KiB), a will (topic,
/// payload, properties) and user properties. Each string or binary field is
/// at most 65,535 bytes, but real CONNECTs are a few hundred bytes to a few
/// KiB; 64 KiB leaves room for a large token and a will, and bounds what an
/// unauthenticated peer makes the broker hold to 64 KiB (docs/SECURITY.md).
pub const CONNECT_SIZE_MAX: u32 = 64 * 1024;

/// `advanced.clients.subscriberQueueLimit`, plus the byte bound the server
/// derives from `memoryProfile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    /// Messages a session may hold queued (not yet in flight); `None` means
    /// [`QUEUE_LEN_DEFAULT_MAX`].
    pub length_max: Option<NonZeroU32>,
    pub strategy: QueueFullStrategy,
    /// Bytes (`memory_cost`) a session may hold queued in memory: its share
    /// of the shard's memory budget, `memory_budget_bytes(memoryProfile) /
    /// SESSION_SHARES`, set by the server. Not a config key.
    pub bytes_max: u64,
}

impl QueueLimit {
    /// The bound in force.
    pub fn len_max(&self) -> usize {
        self.length_max
            .map_or(QUEUE_LEN_DEFAULT_MAX, NonZeroU32::get) as usize
    }
}

impl Default for QueueLimit {
    fn default() -> QueueLimit {
        QueueLimit {
            length_max: None,
            strategy: QueueFullStrategy::None,
            bytes_max: crate::buffer::memory_budget_bytes(crate::config::MemoryProfile::Medium)
                / SESSION_SHARES,
        }
    }
}

/// Default [`ClientLimits::spilled_inflight_max`]. PERF: measured on the
/// spilled-backlog drain (slow-sub, 1 KiB, docs/PERFORMANCE.md) when
/// in-flight messages were still held in memory: an unbounded window
/// (65,535) drained ~550k msgs/s, 4096 ~770k msgs/s, 16,384 no faster; the
/// same bound on messages drained from memory cost them ~40% (the window
/// then stalls on acknowledgements across the loopback pipe), hence the
/// bound applies to spilled messages only.
pub const SPILLED_INFLIGHT_MAX: u16 = 4096;

/// Largest Maximum Packet Size the broker announces in CONNACK: the largest
/// Remaining Length (§1.5.5). A limit at or above it is the protocol's own,
/// and is not announced (some clients refuse larger values).
pub const MAXIMUM_PACKET_SIZE_ANNOUNCED: u32 = 268_435_455;

/// `advanced.clients` plus the protocol limits the broker announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// `maxSessionExpirySeconds`: a client's Session Expiry Interval is
    /// lowered to this and the lowered value returned in CONNACK (v5 §3.2.2.3.2).
    pub session_expiry_max: Duration,
    /// `maxMessageExpirySeconds`: a message's expiry is capped at this;
    /// `None` lets messages without expiry live forever.
    pub message_expiry_max: Option<Duration>,
    /// `maxPacketSizeBytes`: largest packet the broker accepts (announced as
    /// Maximum Packet Size in CONNACK). MQTT's own ceiling is 268,435,460.
    pub packet_size_max: NonZeroU32,
    /// `maxReceiveMaximum`: how many QoS 1/2 publishes the broker lets a
    /// client have in flight towards it (Receive Maximum in CONNACK), and the
    /// cap on the client's Receive Maximum towards the client.
    pub receive_maximum_max: NonZeroU16,
    /// QoS 1/2 publishes read back from the disk buffer that the broker
    /// keeps in flight towards one client at most, whatever larger Receive
    /// Maximum the client announced: Receive Maximum is a ceiling the server
    /// must stay under [MQTT-3.3.4-9], not a quota it must fill. Such a
    /// message stays in flight as its record, which a resend after a
    /// reconnect reads again and which pins its segment until acknowledged:
    /// this bounds both. Messages queued in memory are already paid for and
    /// use the full window. Not a config key. See [`SPILLED_INFLIGHT_MAX`].
    pub spilled_inflight_max: NonZeroU16,
    /// `maxKeepAliveSeconds`: a v5 client's keep-alive above it, or 0, is
    /// replaced by this via Server Keep Alive [MQTT-3.2.2-21]. v3.1.1 clients
    /// keep their own value, a larger one included, and 0 means no
    /// keep-alive (v3.1.1 cannot tell a client another value).
    pub keep_alive_max: NonZeroU16,
    /// Topic aliases the broker accepts from a client (Topic Alias Maximum in
    /// CONNACK). 0 disables client-to-broker aliases. 4096 by default: with
    /// `topic_alias_bytes_max` that lets a client that uses every alias it
    /// was told of (MQTT.js `autoAssignTopicAlias`) keep topics of 256
    /// bytes on average, where 65,535 had such a client cut off at 0x97
    /// after some 26,000 topics of 40 bytes.
    pub topic_alias_max: u16,
    /// Bytes of topic names a connection's aliases may hold together (the
    /// count alone lets 65,535 aliases of 64 KiB topics hold 4 GiB). Not a
    /// config key.
    pub topic_alias_bytes_max: NonZeroU32,
    /// `subscriberQueueLimit`.
    pub queue: QueueLimit,
    /// Subscriptions one session may hold; bounds the trie per client.
    pub subscriptions_per_session_max: NonZeroU32,
    /// Bytes of topic filters one session may hold (the count alone lets
    /// 10,000 filters of 64 KiB each make 640 MB, in memory, in the index
    /// and, with `persistence`, in every session record). Not a config key.
    pub subscription_bytes_per_session_max: NonZeroU32,
    /// Topic levels of one session's filters together (each a node of the
    /// index on every shard). Not a config key.
    pub subscription_levels_per_session_max: NonZeroU32,
    /// `sessionTakeover`: who may take an existing session over.
    pub session_takeover: TakeoverPolicy,
}

impl Default for ClientLimits {
    /// AIO's documented defaults where it has them.
    fn default() -> ClientLimits {
        ClientLimits {
            session_expiry_max: Duration::from_secs(u32::MAX as u64),
            message_expiry_max: None,
            packet_size_max: nz32(268_435_460),
            receive_maximum_max: nz16(65_535),
            spilled_inflight_max: nz16(SPILLED_INFLIGHT_MAX),
            keep_alive_max: nz16(65_535),
            topic_alias_max: 4096,
            topic_alias_bytes_max: nz32(TOPIC_ALIAS_BYTES_MAX),
            queue: QueueLimit::default(),
            subscriptions_per_session_max: nz32(10_000),
            subscription_bytes_per_session_max: nz32(SUBSCRIPTION_BYTES_PER_SESSION_MAX),
            subscription_levels_per_session_max: nz32(SUBSCRIPTION_LEVELS_PER_SESSION_MAX),
            session_takeover: TakeoverPolicy::SamePrincipal,
        }
    }
}

/// 1 MiB of filters per session: 10,000 filters of 100 bytes.
pub const SUBSCRIPTION_BYTES_PER_SESSION_MAX: u32 = 1 << 20;

/// Levels a topic filter may have, and the topic name of a retained
/// message: each level is a node of the subscription index on every shard
/// (~200 bytes) or of the retained store on the topic's owner, and a
/// 65,535-byte filter of '/' made 32,768 of them. EMQX's default
/// `max_topic_levels` is 128 too; real hierarchies (AIO's, Sparkplug B's)
/// have fewer than 10. A filter past it gets SUBACK 0x8F Topic Filter
/// invalid (0x80 in 3.1.1); a retained message is routed but not stored.
pub const TOPIC_LEVELS_MAX: usize = 128;

/// Levels of all a session's filters together: 10 per filter on average
/// at the 10,000-filter maximum. The per-filter bound alone let 8,000
/// filters of 128 empty levels fit the 1 MiB byte quota: a million index
/// nodes, ~200 MB, on every shard, for one session.
pub const SUBSCRIPTION_LEVELS_PER_SESSION_MAX: u32 = 100_000;

/// 1 MiB of aliased topic names per connection: 10,000 aliases of 100
/// bytes, or every one of the 65,535 of 16.
pub const TOPIC_ALIAS_BYTES_MAX: u32 = 1 << 20;

const fn nz32(v: u32) -> NonZeroU32 {
    match NonZeroU32::new(v) {
        Some(v) => v,
        None => panic!("limit must be non-zero"),
    }
}

const fn nz16(v: u16) -> NonZeroU16 {
    match NonZeroU16::new(v) {
        Some(v) => v,
        None => panic!("limit must be non-zero"),
    }
}
