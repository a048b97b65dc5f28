//! What shards say to each other. Crossing a shard is always one of these
//! messages, delivered in order per (sender, receiver) pair: there is no
//! shared mutable state. Payloads travel as `Arc<Message>` (one refcount
//! per destination shard, no copies).

use bytestring::ByteString;

use super::ids::{RequestId, SessionId, ShardId};
use super::registry::{Decision, PrincipalId};
use crate::codec::{QoS, SubscriptionId, SubscriptionOptions};
use crate::session::{Delivery, SessionState, SharedMessage};
use crate::topic::{SubscriptionData, TopicFilter};

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
    pub options: SubscriptionOptions,
    pub id: Option<SubscriptionId>,
    /// The subscriber's client id, for No Local [MQTT-3.8.3-3].
    pub client_id: ByteString,
    /// The filter as subscribed, naming the share group together with `group`.
    pub filter: ByteString,
}

impl SubscriptionData for SubVal {
    fn qos(&self) -> QoS {
        self.options.qos
    }
    fn subscription_id(&self) -> Option<SubscriptionId> {
        self.id
    }
    fn retain_as_published(&self) -> bool {
        self.options.retain_as_published
    }
}

/// One message between shards. Requests carry a `RequestId` their answer
/// returns, so the asking shard finds its continuation.
#[derive(Debug)]
pub enum MeshMsg {
    /// One message for several sessions of the receiving shard. With a
    /// request (persistence on, the publisher waits), the receiver answers
    /// `PublishDone` once what it queued for persisted sessions is durable.
    Deliver {
        message: SharedMessage,
        targets: Vec<(SessionId, Delivery)>,
        request: Option<RequestId>,
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
    /// clear with an empty payload. The owner's order is the order. With a
    /// request, the owner answers `PublishDone` with its outcome.
    RetainSet {
        message: SharedMessage,
        request: Option<RequestId>,
    },
    /// To the retained owner of the topic: another node's retained message,
    /// from the sync when a link comes up; stored only if the topic has
    /// none here.
    RetainSync {
        message: SharedMessage,
    },
    /// To a peer stream's home shard (`Shard::handle_cluster_publish`):
    /// messages a peer node sent over a link another shard accepted.
    /// The home answers `ClusterRouted` for `link` once they are routed.
    ClusterPublish {
        link: u64,
        stream: super::cluster::StreamKey,
        first_seq: u64,
        messages: Vec<(crate::session::Message, Vec<ByteString>)>,
    },
    /// From a stream's home: `count` messages that came over `link` (a link
    /// the receiving shard accepted) are routed, so the link may
    /// acknowledge them.
    ClusterRouted {
        link: u64,
        count: u64,
    },
    /// To the client id's registry owner: a persisted session's state now
    /// (`None`: it ended). Written only while `session` holds the id. With
    /// a request, the owner answers `SessionWritten` once it is durable.
    SessionWrite {
        client_id: ByteString,
        session: SessionId,
        record: Option<std::sync::Arc<super::SessionRecord>>,
        request: Option<RequestId>,
    },
    /// To the client id's registry owner: the delayed will of `session`
    /// was published; its record drops it.
    WillPublished {
        client_id: ByteString,
        session: SessionId,
    },
    /// The session write is durable (or had nothing to do); `stale`: it was
    /// dropped, the session no longer holds its id.
    SessionWritten {
        request: RequestId,
        stale: bool,
    },
    /// A publish's part at this shard is done: the retained owner stored
    /// (or refused) it, or a target shard's persisted queues hold it.
    PublishDone {
        request: RequestId,
        reason: crate::codec::ReasonCode,
    },
    /// A persisted queue that moved from the receiver is written at the
    /// sender: the receiver may rewrite its log again.
    QueueSettled,
    /// To every shard: the retained messages it owns that match `filter`.
    RetainedQuery {
        filter: TopicFilter,
        request: RequestId,
    },
    RetainedReply {
        request: RequestId,
        messages: Vec<SharedMessage>,
    },
    /// A barrier: the peer answers once it has handled everything this
    /// shard sent it before (per-pair order).
    Ping {
        request: RequestId,
    },
    Pong {
        request: RequestId,
    },
    /// To the registry owner of `client_id`: a CONNECT by `principal` for
    /// (`shard`, `session`) claims the id. Answered with `ClaimReply` at
    /// once, or once the claim settling before it has settled.
    Claim {
        client_id: ByteString,
        session: SessionId,
        principal: PrincipalId,
        request: RequestId,
        /// The cluster registry's claim the CONNECT holds (0: none).
        cluster_claim: u64,
    },
    ClaimReply {
        request: RequestId,
        decision: Decision<(ShardId, SessionId)>,
    },
    /// To the registry owner: the claim granted to (sender, `session`) is
    /// settled (its session is in place); the next waiting claim may go.
    ClaimSettled {
        client_id: ByteString,
        session: SessionId,
    },
    /// To the registry owner: the session ended; forget it if still current.
    Release {
        client_id: ByteString,
        session: SessionId,
    },
    /// To the shard holding `session`: close it and hand its state over.
    /// With `resume_as`, the CONNECT resumes it as that session of the
    /// sender: the old shard moves its index entries (`Moved`).
    TakeOver {
        session: SessionId,
        request: RequestId,
        resume_as: Option<SessionId>,
    },
    Handover {
        request: RequestId,
        state: Option<Box<SessionState>>,
    },
    /// From the old shard of a resumed session to every peer: re-key these
    /// index entries of (sender, `old`) to `to`, then answer `MoveMark`.
    Moved {
        old: SessionId,
        to: (ShardId, SessionId),
        entries: Vec<super::moves::MovedEntry>,
    },
    /// To the old shard: this shard routes nothing more to `session`.
    MoveMark {
        session: SessionId,
    },
    /// From the old shard to the new: `origin`'s mark, behind everything
    /// forwarded for it.
    MarkForward {
        session: SessionId,
        origin: ShardId,
    },
    /// From the old shard to the new: a delivery that still came for the
    /// old session, for the new one (never held: it comes in order).
    /// With `answer`, the receiver answers the sender `PublishDone` for it
    /// once the persisted queues hold it (the sender relays to the
    /// publisher's shard).
    Forward {
        message: SharedMessage,
        targets: Vec<(SessionId, Delivery)>,
        answer: Option<RequestId>,
    },
    /// A self-test probe reached the sender's built-in probe subscriber.
    ProbeReply {
        seq: u64,
    },
}

impl MeshMsg {
    /// Whether this carries application messages (the backlog a slow peer
    /// makes publishers wait for), not control.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            MeshMsg::Deliver { .. } | MeshMsg::Forward { .. } | MeshMsg::ClusterPublish { .. }
        )
    }
}
