//! What shards say to each other over glommio's channel mesh. Crossing a shard
//! is always one of these messages: there is no shared mutable state. Payloads
//! travel as `Arc<Message>` (one refcount per destination shard, no copies).

use std::time::Instant;

use bytestring::ByteString;
use shardmq_core::session::{Delivery, SessionState, SharedMessage};
use shardmq_core::topic::TopicFilter;

/// Index of a shard (0..shards).
pub type ShardId = usize;

/// A session's identity within its shard; never reused while the shard runs.
pub type SessionId = u64;

/// Key of one subscription in every shard's replicated index: which session
/// on which shard, and the share group for `$share/{group}/..` subscriptions
/// (a client may hold `a/b` and `$share/g/a/b` at once).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubKey {
    pub shard: ShardId,
    pub session: SessionId,
    pub group: Option<ByteString>,
}

/// The value stored with a subscription in the index.
#[derive(Debug, Clone)]
pub struct SubVal {
    pub options: shardmq_core::codec::SubscriptionOptions,
    pub id: Option<u32>,
    /// The subscriber's client id, for No Local [MQTT-3.8.3-3].
    pub client_id: ByteString,
    /// The filter as subscribed, naming the share group together with `group`.
    pub filter: ByteString,
}

impl shardmq_core::topic::SubscriptionData for SubVal {
    fn qos(&self) -> shardmq_core::codec::QoS {
        self.options.qos
    }
    fn subscription_id(&self) -> Option<std::num::NonZeroU32> {
        self.id.and_then(std::num::NonZeroU32::new)
    }
    fn retain_as_published(&self) -> bool {
        self.options.retain_as_published
    }
}

#[derive(Debug)]
pub enum MeshMsg {
    /// One message for several sessions of the receiving shard.
    Deliver {
        message: SharedMessage,
        targets: Vec<(SessionId, Delivery)>,
    },
    /// Replicated subscription index deltas.
    SubAdd {
        filter: TopicFilter,
        key: SubKey,
        val: SubVal,
    },
    SubRemove {
        filter: TopicFilter,
        key: SubKey,
    },
    /// To the retained owner of the topic (hash of the topic): set, or
    /// clear with an empty payload. The owner's order is the order. The
    /// owner answers `RetainSetReply` once it has stored it or refused it.
    RetainSet {
        message: SharedMessage,
        reply_to: ShardId,
        request: u64,
    },
    /// `stored` is false when the owner's retained store refused the
    /// message (full: v5 0x97 Quota Exceeded to a QoS 1/2 publisher).
    RetainSetReply {
        request: u64,
        stored: bool,
    },
    /// To every shard: the retained messages it owns that match `filter`.
    RetainedQuery {
        filter: TopicFilter,
        reply_to: ShardId,
        request: u64,
    },
    RetainedReply {
        request: u64,
        messages: Vec<SharedMessage>,
    },
    /// A barrier: the peer answers once it has handled everything this
    /// shard sent it before (per-peer queues are FIFO).
    Ping {
        reply_to: ShardId,
        request: u64,
    },
    Pong {
        request: u64,
    },
    /// To the registry owner of `client_id`: the session now lives at
    /// (`shard`, `session`). The reply names where it lived before.
    Claim {
        client_id: ByteString,
        shard: ShardId,
        session: SessionId,
        request: u64,
    },
    ClaimReply {
        request: u64,
        previous: Option<(ShardId, SessionId)>,
    },
    /// To the registry owner: the session ended; forget it if still current.
    Release {
        client_id: ByteString,
        shard: ShardId,
        session: SessionId,
    },
    /// To the shard holding `session`: close it and hand its state over.
    TakeOver {
        session: SessionId,
        reply_to: ShardId,
        request: u64,
        at: Instant,
    },
    Handover {
        request: u64,
        state: Option<Box<SessionState>>,
    },
    /// A self-test probe reached shard `from`'s built-in probe subscriber.
    ProbeReply {
        from: ShardId,
        seq: u64,
    },
}
