//! Continuations: what a shard waits for from other shards, keyed by the
//! `RequestId` the answer carries. Each variant names what happens when the
//! answer comes; nothing is awaited. Barriers rely on the mesh's per-pair
//! order: a `Pong` means the peer handled everything sent to it before.

use std::time::Instant;

use bytestring::ByteString;

use super::moves::Deferred;
use super::{ConnId, MeshMsg, RequestId, SessionId, Shard};
use crate::buffer::Store;
use crate::codec::ReasonCode;
use crate::session::{Delivery, PublishAck, SharedMessage, Subscription};

#[derive(Debug)]
pub(super) enum Pending {
    /// A CONNECT's claim of its client id at the registry owner.
    Claim {
        conn: ConnId,
        session: SessionId,
        client_id: ByteString,
        resume: bool,
    },
    /// A session another node took over (`evict_client`), asked of the
    /// shard that holds it; it ends when it arrives.
    Evict {
        client_id: ByteString,
        at: (super::ShardId, SessionId),
    },
    /// The previous session, asked of the shard that holds it.
    Handover {
        conn: ConnId,
        session: SessionId,
        client_id: ByteString,
    },
    /// A barrier with every peer: `Pong`s still to come.
    Barrier { waiting: usize, then: AfterBarrier },
    /// A publish whose acknowledgement waits for other shards: the
    /// retained owner's outcome (a new subscriber anywhere must then see
    /// it) and, with persistence, each target shard's durable queues.
    /// `reason` is the routing result; `waiting` the answers to come.
    Publish {
        conn: ConnId,
        ack: PublishAck,
        reason: ReasonCode,
        waiting: usize,
    },
    /// A `Deliver` with a request, at its target shard: answers still to
    /// come from deliveries held for an arriving session or forwarded after
    /// one that left (and this shard's own part); the last one answers
    /// `request` at shard `to`.
    Relay {
        to: super::ShardId,
        request: RequestId,
        waiting: usize,
    },
    /// A peer stream's message at the stream's home, with persistence:
    /// answers still to come from the shards (this one included) whose
    /// persisted queues or retained store it went to; the last settles it
    /// (`stream_message_done`).
    StreamMessage {
        stream: super::cluster::StreamKey,
        seq: u64,
        waiting: usize,
    },
    /// A persisted session's write at its client id's owner; the
    /// connection's writer is held until it is durable.
    SessionWrite { conn: ConnId },
    /// The retained messages matching a new subscription: replies still
    /// to come, and what came so far.
    RetainedQuery {
        conn: ConnId,
        /// The subscription's filter as the session keys it, and the
        /// subscription: the answer is delivered only while the session
        /// still holds it.
        key: ByteString,
        subscription: Subscription,
        waiting: usize,
        matches: Vec<SharedMessage>,
        delivery: Delivery,
    },
}

/// What a completed barrier releases.
#[derive(Debug)]
pub(super) enum AfterBarrier {
    /// Every shard's index has these subscriptions: the SUBACK may leave,
    /// then their retained messages follow (`send_retained`).
    Subscribed {
        conn: ConnId,
        subscriptions: Vec<NewSubscription>,
    },
    /// Every shard's index has lost these subscriptions: the UNSUBACK may
    /// leave, and no shard routes a later publish to them [MQTT-3.10.4-2].
    Unsubscribed { conn: ConnId },
    /// Start-up after restoring persisted sessions: every peer has the
    /// index entries this shard broadcast for them.
    Startup,
    /// Graceful stop, once every shard closed its connections: everything
    /// each peer sent before has been handled here (pair order).
    Stop,
}

impl AfterBarrier {
    /// The connection whose writer the barrier holds, if any.
    fn held(&self) -> Option<ConnId> {
        match self {
            AfterBarrier::Subscribed { conn, .. } | AfterBarrier::Unsubscribed { conn } => {
                Some(*conn)
            }
            AfterBarrier::Startup | AfterBarrier::Stop => None,
        }
    }
}

/// A subscription a SUBSCRIBE made or replaced, for its barrier.
#[derive(Debug)]
pub(super) struct NewSubscription {
    /// The filter as the session keys it.
    pub key: ByteString,
    pub subscription: Subscription,
    /// Its Retain Handling asks for the retained messages now.
    pub send_retained: bool,
}

impl<S: Store> Shard<S> {
    /// Whether `conn`'s session still has `subscription` under `key` (one
    /// replaced since, with other options, has its own answer coming).
    fn holds_subscription(
        &self,
        conn: ConnId,
        key: &ByteString,
        subscription: &Subscription,
    ) -> bool {
        self.conns
            .get(&conn)
            .and_then(|c| c.machine.session())
            .is_some_and(|s| s.subscriptions.get(key) == Some(subscription))
    }

    /// SUBACK waits until every shard's index has the new subscriptions
    /// (once a client has its SUBACK, a publish on any shard reaches it),
    /// and UNSUBACK until none has the old ones: `then` says which.
    pub(super) fn index_barrier(&mut self, then: AfterBarrier, now: Instant) {
        let Some(conn) = then.held() else {
            return self.start_barrier(then, now);
        };
        if self.peers().next().is_none() {
            return self.after_barrier(then, now);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.hold += 1;
        let session = c.session;
        // A session still arriving broadcasts its index changes later; the
        // barrier must follow them.
        let deferred = match session {
            Some(session) => self.defer_index(session, Deferred::Barrier(then)),
            None => Some(Deferred::Barrier(then)),
        };
        if let Some(Deferred::Barrier(then)) = deferred {
            self.start_barrier(then, now);
        }
    }

    /// Pings every peer; `then` runs when all have answered. The caller
    /// has already raised the connection's hold.
    pub(super) fn start_barrier(&mut self, then: AfterBarrier, now: Instant) {
        let peers: Vec<_> = self.peers().collect();
        if peers.is_empty() {
            if let Some(c) = then.held().and_then(|conn| self.conns.get_mut(&conn)) {
                c.hold = c.hold.saturating_sub(1);
            }
            return self.after_barrier(then, now);
        }
        let request = self.new_request(Pending::Barrier {
            waiting: peers.len(),
            then,
        });
        for peer in peers {
            self.post(peer, MeshMsg::Ping { request });
        }
    }

    pub(super) fn pong_arrived(&mut self, request: RequestId, now: Instant) {
        let Some(Pending::Barrier { waiting, .. }) = self.pending.get_mut(&request) else {
            return;
        };
        *waiting -= 1;
        if *waiting > 0 {
            return;
        }
        if let Some(Pending::Barrier { then, .. }) = self.pending.remove(&request) {
            if let Some(c) = then.held().and_then(|conn| self.conns.get_mut(&conn)) {
                c.hold = c.hold.saturating_sub(1);
            }
            self.after_barrier(then, now);
        }
    }

    fn after_barrier(&mut self, then: AfterBarrier, now: Instant) {
        match then {
            AfterBarrier::Subscribed {
                conn,
                subscriptions,
            } => {
                self.wake(conn);
                for new in subscriptions {
                    // Not for a subscription the client has dropped since
                    // (an UNSUBSCRIBE right behind the SUBSCRIBE): nothing
                    // may follow its UNSUBACK [MQTT-3.10.4-2].
                    if !new.send_retained {
                        continue;
                    }
                    if self.holds_subscription(conn, &new.key, &new.subscription) {
                        self.query_retained(conn, new.key, &new.subscription, now);
                    } else {
                        self.retained_done(conn, &mut Vec::new());
                    }
                }
            }
            AfterBarrier::Unsubscribed { conn } => self.wake(conn),
            AfterBarrier::Startup => self.startup_synced = true,
            AfterBarrier::Stop => self.stop_synced = true,
        }
    }

    /// At start, after restoring persisted sessions and before any listener
    /// accepts: a barrier with every peer. Once `startup_synced` on every
    /// shard, each shard's index holds every restored subscription, so no
    /// publish can miss a restored session.
    pub fn start_startup_barrier(&mut self, now: Instant) {
        self.start_barrier(AfterBarrier::Startup, now);
    }

    /// The start-up barrier completed.
    pub fn startup_synced(&self) -> bool {
        self.startup_synced
    }

    /// At a graceful stop, after every shard closed its connections: a
    /// barrier with every peer, so the session writes they sent before
    /// (wills published, sessions ended) are queued here once it completes.
    pub fn start_stop_barrier(&mut self, now: Instant) {
        self.start_barrier(AfterBarrier::Stop, now);
    }

    /// The stop barrier completed.
    pub fn stop_synced(&self) -> bool {
        self.stop_synced
    }

    /// One of a publish's answers: the retained owner's outcome, or a
    /// target shard's (or this shard's) queues are durable. The last one
    /// acknowledges the publisher.
    pub(super) fn publish_answer(&mut self, request: RequestId, outcome: ReasonCode) {
        if let Some(Pending::Relay { waiting, .. }) = self.pending.get_mut(&request) {
            *waiting = waiting.saturating_sub(1);
            if *waiting == 0 {
                if let Some(Pending::Relay { to, request, .. }) = self.pending.remove(&request) {
                    let reason = ReasonCode::Success;
                    self.post(to, MeshMsg::PublishDone { request, reason });
                }
            }
            return;
        }
        if let Some(Pending::StreamMessage { waiting, .. }) = self.pending.get_mut(&request) {
            // A failed write has no way back to the peer: the stream moves
            // on (the write's own error is logged where it failed).
            *waiting = waiting.saturating_sub(1);
            if *waiting == 0 {
                if let Some(Pending::StreamMessage { stream, seq, .. }) =
                    self.pending.remove(&request)
                {
                    self.stream_message_done(stream, seq);
                }
            }
            return;
        }
        let Some(Pending::Publish {
            reason, waiting, ..
        }) = self.pending.get_mut(&request)
        else {
            return;
        };
        if outcome.is_error() {
            *reason = outcome;
        }
        *waiting = waiting.saturating_sub(1);
        if *waiting > 0 {
            return;
        }
        if let Some(Pending::Publish {
            conn, ack, reason, ..
        }) = self.pending.remove(&request)
        {
            self.publish_done(conn, ack, reason);
        }
    }

    /// One more answer for `request` (a publish, or a relay of one) will
    /// come: a delivery held or forwarded.
    pub(super) fn expect_answer(&mut self, request: RequestId) {
        if let Some(
            Pending::Publish { waiting, .. }
            | Pending::Relay { waiting, .. }
            | Pending::StreamMessage { waiting, .. },
        ) = self.pending.get_mut(&request)
        {
            *waiting += 1;
        }
    }

    /// One answer for `request` once log sequence number `durable` is
    /// on disk (at once without one).
    pub(super) fn answer_when_durable(&mut self, durable: Option<u64>, request: RequestId) {
        match durable {
            Some(seq) => self.wait_durable_request(seq, request),
            None => self.publish_answer(request, ReasonCode::Success),
        }
    }

    /// A peer answered a retained query.
    pub(super) fn retained_reply(
        &mut self,
        request: RequestId,
        messages: Vec<SharedMessage>,
        now: Instant,
    ) {
        let Some(Pending::RetainedQuery {
            waiting, matches, ..
        }) = self.pending.get_mut(&request)
        else {
            return;
        };
        matches.extend(messages);
        *waiting -= 1;
        if *waiting > 0 {
            return;
        }
        if let Some(Pending::RetainedQuery {
            conn,
            key,
            subscription,
            mut matches,
            delivery,
            ..
        }) = self.pending.remove(&request)
        {
            self.retained_done(conn, &mut matches);
            if self.holds_subscription(conn, &key, &subscription) && !matches.is_empty() {
                self.deliver_retained(conn, now, matches, &delivery);
            }
        }
    }
}
