//! Retained messages across shards: each topic has an owner shard (hash of
//! the topic) that alone stores it, so concurrent publishes on different
//! shards cannot leave replicas disagreeing; a new subscription asks every
//! shard for the ones it owns that match. MQTT 5.0 §3.3.1.3.

use std::time::Instant;

use super::pending::Pending;
use super::{ConnId, MeshMsg, Notice, RequestId, Shard, ShardId};
use crate::buffer::{memory_cost, Store};
use crate::codec::ReasonCode;
use crate::session::{Delivery, SharedMessage, Subscription};
use crate::topic::{Filter, TopicFilter};

impl<S: Store> Shard<S> {
    /// Stores (or clears) a retained message this shard owns; the reason
    /// is Success or why it was refused, and the persistence sequence number
    /// the outcome must wait for when the change goes to disk.
    pub(super) fn apply_retained(&mut self, message: SharedMessage) -> (ReasonCode, Option<u64>) {
        let reason = self.store_retained(&message);
        let durable = self.persist_retained(&message, !reason.is_error());
        (reason, durable)
    }

    fn store_retained(&mut self, message: &SharedMessage) -> ReasonCode {
        // [MQTT-3.3.1-10/-11] an empty retained payload clears the topic.
        if message.payload.is_empty() {
            self.retained.clear(&message.topic);
            return ReasonCode::Success;
        }
        let topic = message.topic.clone();
        let bytes = memory_cost(message);
        match self.retained.set(topic.clone(), message.clone(), bytes) {
            Ok(_) => ReasonCode::Success,
            Err(e) => {
                self.stats.retained_refused += 1;
                // A publisher filling the store could fill the log too: the
                // first refusal, then one notice per 1024.
                if self.stats.retained_refused % 1024 == 1 {
                    self.notice(Notice::RetainedRefused {
                        topic: topic.as_byte_string().clone(),
                        bytes,
                        stored_bytes: self.retained.bytes(),
                        refused: self.stats.retained_refused,
                        reason: e.reason_code(),
                    });
                }
                e.reason_code()
            }
        }
    }

    /// A peer's retained publish for a topic this shard owns.
    pub(super) fn retain_set_arrived(
        &mut self,
        from: ShardId,
        message: SharedMessage,
        request: Option<RequestId>,
    ) {
        let (reason, durable) = self.apply_retained(message);
        match (request, durable) {
            (Some(request), Some(seq)) => self.wait_durable_peer(seq, from, request, reason),
            (Some(request), None) => self.post(from, MeshMsg::PublishDone { request, reason }),
            (None, _) => {}
        }
    }

    pub(super) fn retained_matches(&self, filter: &TopicFilter) -> Vec<SharedMessage> {
        let mut out = Vec::new();
        self.retained
            .for_each_match(filter, |_, m| out.push(m.clone()));
        out
    }

    /// Sends a new subscription the retained messages that match it,
    /// asking every shard for the topics it owns.
    pub(super) fn query_retained(&mut self, conn: ConnId, sub: &Subscription, now: Instant) {
        let filter = match &sub.filter {
            Filter::Plain(f) => f.clone(),
            // Shared subscriptions get no retained messages (v5 §4.8.2).
            Filter::Shared { .. } => return,
        };
        let delivery = Delivery {
            granted_qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            from_retained: true,
            subscription_ids: sub.id.into_iter().collect(),
        };
        let matches = self.retained_matches(&filter);
        let peers: Vec<_> = self.peers().collect();
        if peers.is_empty() {
            if !matches.is_empty() {
                self.deliver_retained(conn, now, matches, &delivery);
            }
            return;
        }
        let request = self.new_request(Pending::RetainedQuery {
            conn,
            waiting: peers.len(),
            matches,
            delivery,
        });
        for peer in peers {
            self.post(
                peer,
                MeshMsg::RetainedQuery {
                    filter: filter.clone(),
                    request,
                },
            );
        }
    }
}
