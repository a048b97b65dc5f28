//! Routing one PUBLISH: match this shard's replica of the index, merge each
//! subscriber's overlapping subscriptions, pick one member per share group,
//! queue for this shard's subscribers and send one `Deliver` per other shard
//! that has some. What the publisher's acknowledgement means: the message is
//! in every target queue on this shard and handed, in order, to the mesh for
//! the others (and stored by its retained owner, when retained); with
//! persistence, also durable in every persisted session's queue it went to,
//! on every shard (each target shard answers `PublishDone`).

use std::sync::Arc;
use std::time::Instant;

use super::durable::log_queue;
use super::pending::Pending;
use super::selftest::PROBE_SESSION;
use super::sessions::Slot;
use super::{ConnId, MeshMsg, RequestId, SessionId, Shard, SubKey, SubVal};
use crate::buffer::Store;
use crate::codec::ReasonCode;
use crate::session::{Delivery, Enqueued, PublishAck, SessionState, SharedMessage};
use crate::topic::merge_overlapping;

impl<S: Store> Shard<S> {
    /// `Event::Publish`: route, and acknowledge QoS 1/2 once routed.
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        now: Instant,
        message: SharedMessage,
        ack: Option<PublishAck>,
    ) {
        let qos = message.qos as usize;
        self.stats.publish_in[qos] += 1;
        self.stats.publish_in_bytes[qos] += message.payload.len() as u64;
        self.publish_message(now, message, ack.map(|a| Waiter::Client(conn, a)));
    }

    /// Routes a message (from a client, a will or the self-test) and
    /// stores it if retained; answers `waiter`'s acknowledgement when done.
    pub(super) fn publish_message(
        &mut self,
        now: Instant,
        message: SharedMessage,
        waiter: Option<Waiter>,
    ) {
        self.publish_from(now, message, waiter, Shares::Decide);
    }

    /// `publish_message`; with `Shares::Only` (a message another node sent
    /// here) it goes no further.
    pub(super) fn publish_from(
        &mut self,
        now: Instant,
        mut message: SharedMessage,
        waiter: Option<Waiter>,
        shares: Shares<'_>,
    ) {
        self.stats.messages_in += 1;
        // In a cluster a retained change from this node is stamped once,
        // before it reaches its owner shard or another node.
        if message.retain && matches!(shares, Shares::Decide) && self.clusters(&message) {
            if let Some(c) = self.cluster.as_deref() {
                Arc::make_mut(&mut message).retain_stamp = c.clock.stamp(now);
            }
        }
        let retained_owner = message
            .retain
            .then(|| self.owner_of(message.topic.as_str()));
        let remote_retain = retained_owner.is_some_and(|o| o != self.id);
        // Answers from other shards come through a request: the retained
        // owner's (once acknowledged, a new subscriber anywhere must see
        // it), and with persisted queues every target shard's.
        let persisting = self.persists_queues();
        // In a cluster, other nodes may acknowledge what they routed (QoS
        // 1/2): which ones is known once routed.
        let clustered = matches!(shares, Shares::Decide) && self.clusters(&message);
        let node_acks = clustered && message.qos != crate::codec::QoS::AtMostOnce;
        let request = waiter
            .filter(|_| remote_retain || persisting || node_acks)
            .map(|w| {
                self.new_request(match w {
                    Waiter::Client(conn, ack) => Pending::Publish {
                        conn,
                        ack,
                        reason: ReasonCode::Success,
                        waiting: 0,
                    },
                    Waiter::Stream(stream, seq) => Pending::StreamMessage {
                        stream,
                        seq,
                        waiting: 0,
                    },
                })
            });
        let mut retained_outcome = ReasonCode::Success;
        let mut local_durable = None;
        let mut waiting = 0;
        match retained_owner {
            Some(owner) if owner == self.id => {
                (retained_outcome, local_durable) = self.apply_retained(message.clone());
            }
            Some(owner) => {
                waiting += usize::from(request.is_some());
                self.post(
                    owner,
                    MeshMsg::RetainSet {
                        message: message.clone(),
                        request,
                    },
                );
            }
            None => {}
        }
        let deliver_request = request.filter(|_| persisting);
        let shares = match shares {
            Shares::Decide if !clustered => Shares::Local,
            other => other,
        };
        let mut routed = self.route(now, &message, deliver_request, shares);
        local_durable = local_durable.max(routed.durable);
        waiting += routed.answers;
        if clustered {
            let share_forwards = std::mem::take(&mut routed.share_forwards);
            let (answers, any) = self.forward_to_nodes(&message, request, share_forwards);
            waiting += answers;
            if any && routed.reason == ReasonCode::NoMatchingSubscribers {
                routed.reason = ReasonCode::Success;
            }
        }
        let Some(waiter) = waiter else {
            return;
        };
        let reason = if retained_outcome.is_error() {
            retained_outcome
        } else {
            routed.reason
        };
        let Some(request) = request else {
            return match waiter {
                // A persisted retained change: acknowledged once on disk.
                Waiter::Client(conn, ack) => match local_durable {
                    Some(seq) => self.wait_durable_local(seq, conn, ack, reason),
                    None => self.publish_done(conn, ack, reason),
                },
                Waiter::Stream(stream, seq) => self.stream_message_done(stream, seq),
            };
        };
        waiting += usize::from(local_durable.is_some());
        // Held and forwarded deliveries already counted theirs; none can
        // have answered yet (they answer from later events).
        let total = match self.pending.get_mut(&request) {
            Some(Pending::Publish {
                reason: r,
                waiting: w,
                ..
            }) => {
                *r = reason;
                *w += waiting;
                *w
            }
            Some(Pending::StreamMessage { waiting: w, .. }) => {
                *w += waiting;
                *w
            }
            _ => 0,
        };
        if total == 0 {
            self.pending.remove(&request);
            return match waiter {
                Waiter::Client(conn, ack) => self.publish_done(conn, ack, reason),
                Waiter::Stream(stream, seq) => self.stream_message_done(stream, seq),
            };
        }
        if let Some(seq) = local_durable {
            self.wait_durable_request(seq, request);
        }
    }

    /// Offers `message` to every matching subscriber on every shard. With
    /// `request`, each other target shard answers once its persisted queues
    /// hold the message.
    fn route(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        request: Option<RequestId>,
        shares: Shares<'_>,
    ) -> Routed {
        let mut per_shard: Vec<Vec<(SessionId, Delivery)>> = vec![Vec::new(); self.config.shards];
        let mut shared: Vec<(SubKey, SubVal)> = Vec::new();
        let mut matched = false;
        self.index
            .trie
            .for_each_match_grouped(&message.topic, |key, vals| {
                if key.group.is_some() {
                    shared.extend(vals.iter().map(|v| (key.clone(), (*v).clone())));
                    return;
                }
                // [MQTT-3.8.3-3] No Local: not back to the publisher.
                // PERF: filtered lazily; no allocation per subscriber.
                let vals = vals
                    .iter()
                    .copied()
                    .filter(|v| !(v.options.no_local && v.client_id == message.origin));
                if let Some(d) = merge_overlapping(vals) {
                    per_shard[key.shard.index()].push((key.session, d));
                    matched = true;
                }
            });
        // A share group with members on several nodes gets the message on
        // one of them (v5 §4.8.2).
        let share_forwards = match shares {
            Shares::Local => Vec::new(),
            Shares::Only(groups) => {
                shared.retain(|(_, v)| groups.contains(&v.filter));
                Vec::new()
            }
            Shares::Decide => self.share_across_nodes(&message.topic, &mut shared),
        };
        if !shared.is_empty() {
            self.pick_shared(&mut shared, &mut per_shard);
            matched = true;
        }
        let mut rejected = false;
        let mut routed = Routed {
            reason: ReasonCode::Success,
            durable: None,
            answers: 0,
            share_forwards,
        };
        // QoS 0 is never persisted: no answer to wait for.
        let request = request.filter(|_| message.qos != crate::codec::QoS::AtMostOnce);
        for (shard, targets) in per_shard.into_iter().enumerate() {
            if targets.is_empty() {
                continue;
            }
            let shard = super::ShardId::new(shard);
            if shard == self.id {
                let (r, durable) =
                    self.deliver_local(now, self.id, message, &targets, false, request);
                rejected |= r;
                routed.durable = durable;
            } else {
                routed.answers += usize::from(request.is_some());
                self.post(
                    shard,
                    MeshMsg::Deliver {
                        message: message.clone(),
                        targets,
                        request,
                    },
                );
            }
        }
        routed.reason = if rejected {
            ReasonCode::QuotaExceeded
        } else if matched {
            ReasonCode::Success
        } else {
            ReasonCode::NoMatchingSubscribers
        };
        routed
    }

    /// One member per share group, round-robin over the group's members on
    /// every shard (v5 §4.8.2).
    fn pick_shared(
        &mut self,
        shared: &mut [(SubKey, SubVal)],
        per_shard: &mut [Vec<(SessionId, Delivery)>],
    ) {
        shared.sort_by(|a, b| {
            (&a.0.group, &a.1.filter, a.0.shard, a.0.session).cmp(&(
                &b.0.group,
                &b.1.filter,
                b.0.shard,
                b.0.session,
            ))
        });
        let mut start = 0;
        while start < shared.len() {
            let group = shared[start].0.group.clone().unwrap_or_default();
            let filter = shared[start].1.filter.clone();
            let mut end = start;
            while end < shared.len()
                && shared[end].0.group.as_ref() == Some(&group)
                && shared[end].1.filter == filter
            {
                end += 1;
            }
            let counter = self.share_rr.entry((group, filter)).or_insert(0);
            let pick = &shared[start + (*counter % (end - start))];
            *counter = counter.wrapping_add(1);
            let d = Delivery {
                granted_qos: pick.1.options.qos,
                retain_as_published: pick.1.options.retain_as_published,
                from_retained: false,
                subscription_ids: pick.1.id.into_iter().collect(),
            };
            per_shard[pick.0.shard.index()].push((pick.0.session, d));
            start = end;
        }
    }

    /// Offers `message`, routed by shard `origin`, to this shard's
    /// targets: whether a queue refused it, and the log sequence number
    /// that makes it durable in the persisted queues it entered.
    /// `forwarded`: it came through the old shard of a moving session, in
    /// order, and is never held. `answer`: a delivery held or forwarded
    /// elsewhere answers it once durable (`expect_answer`).
    pub(super) fn deliver_local(
        &mut self,
        now: Instant,
        origin: super::ShardId,
        message: &SharedMessage,
        targets: &[(SessionId, Delivery)],
        forwarded: bool,
        answer: Option<RequestId>,
    ) -> (bool, Option<u64>) {
        let limit = self.config.limits.queue;
        let mut rejected = false;
        let mut durable = None;
        for (session, delivery) in targets {
            if *session == PROBE_SESSION {
                self.probe_arrived(message, now);
                continue;
            }
            // PERF: moves are rare; the common path pays one emptiness test.
            if !forwarded
                && !self.arriving.is_empty()
                && self.hold_if_arriving(origin, *session, message, delivery, answer)
            {
                continue;
            }
            // DropOldest may drop several messages for one arrival (bytes
            // come back one message, and disk space one segment, at a time).
            let mut extra_drops = 0;
            let mut woke = None;
            let outcome = match self.sessions.get_mut(session) {
                Some(Slot::Online(conn)) => match self.conns.get_mut(conn) {
                    Some(c) => {
                        woke = Some(*conn);
                        // PERF: one test unless a retained query waits.
                        if let Some(wait) = c.retained_wait.as_mut() {
                            wait.saw_live(message);
                        }
                        let before = dropped_of(c.machine.session());
                        let mut lease = self.buffer.lease(c.buffer_owner);
                        let outcome = c.machine.deliver(now, message, delivery, &mut lease);
                        extra_drops = dropped_of(c.machine.session()) - before;
                        // PERF: one test when persistence is off.
                        if self.durable.is_some() {
                            if let Some(state) = c.machine.session_mut() {
                                let seq = log_queue(&mut self.durable, &mut self.outputs, state);
                                durable = durable.max(seq);
                            }
                        }
                        outcome
                    }
                    None => Enqueued::Discarded,
                },
                Some(Slot::Offline { state, .. }) => {
                    let before = state.stats.dropped_queue_full;
                    let owner = self.buffer_keys.owner_of(*session);
                    let mut lease = self.buffer.lease(owner);
                    let outcome = state.enqueue(now, message, delivery, false, &limit, &mut lease);
                    extra_drops = state.stats.dropped_queue_full - before;
                    let seq = log_queue(&mut self.durable, &mut self.outputs, state);
                    durable = durable.max(seq);
                    outcome
                }
                // Moved away: forward it to where the session went.
                None if self.leaving.contains_key(session) => {
                    let seq = self.forward(now, origin, message, *session, delivery, answer);
                    durable = durable.max(seq);
                    continue;
                }
                // Gone since the publisher's shard matched it (ended, or
                // taken over by a clean start): the index delta is on its way.
                None => Enqueued::Discarded,
            };
            if let Some(conn) = woke {
                self.wake(conn);
            }
            rejected |= outcome == Enqueued::RejectedQueueFull;
            self.count(outcome, now, message, delivery);
            if extra_drops > 1 {
                self.stats.dropped_queue_full += extra_drops - 1;
                self.stats.dropped_oldest += extra_drops - 1;
            }
        }
        (rejected, durable)
    }

    /// A delivery for a session that moved on: to its new place, behind
    /// everything forwarded before (pair order). The log sequence number
    /// that makes it durable when that place is this shard; a peer answers
    /// `answer` itself.
    fn forward(
        &mut self,
        now: Instant,
        origin: super::ShardId,
        message: &SharedMessage,
        old: SessionId,
        delivery: &Delivery,
        answer: Option<RequestId>,
    ) -> Option<u64> {
        let (shard, session) = self.forward_target(old)?;
        let targets = vec![(session, delivery.clone())];
        if shard == self.id {
            return self
                .deliver_local(now, origin, message, &targets, true, None)
                .1;
        }
        if let Some(answer) = answer {
            self.expect_answer(answer);
        }
        self.post(
            shard,
            MeshMsg::Forward {
                message: message.clone(),
                targets,
                answer,
            },
        );
        None
    }

    fn count(
        &mut self,
        outcome: Enqueued,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
    ) {
        let delivered = |stats: &mut super::ShardStats| {
            let qos = message.qos.min(delivery.granted_qos) as usize;
            stats.deliveries += 1;
            stats.deliveries_qos[qos] += 1;
            stats.delivered_bytes[qos] += message.payload.len() as u64;
        };
        match outcome {
            Enqueued::Queued => delivered(&mut self.stats),
            Enqueued::DroppedOldest => {
                delivered(&mut self.stats);
                self.stats.dropped_queue_full += 1;
                self.stats.dropped_oldest += 1;
            }
            Enqueued::RejectedQueueFull => self.stats.dropped_queue_full += 1,
            // PERF: only the discard path asks why.
            Enqueued::Discarded if message.is_expired(now) => self.stats.dropped_expired += 1,
            Enqueued::Discarded => {}
        }
    }

    /// Delivers the retained messages a new subscription matched
    /// (`Delivery::from_retained`: the RETAIN flag is set [MQTT-3.3.1-8]).
    pub(super) fn deliver_retained(
        &mut self,
        conn: ConnId,
        now: Instant,
        matches: Vec<SharedMessage>,
        delivery: &Delivery,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        for m in &matches {
            let mut lease = self.buffer.lease(c.buffer_owner);
            c.machine.deliver(now, m, delivery, &mut lease);
        }
        self.wake(conn);
    }
}

/// What routing one message did, for its publisher's acknowledgement.
struct Routed {
    /// The v5 reason: Success, No matching subscribers (0x10), or Quota
    /// exceeded (0x97) when a subscriber on this shard refused it (queue
    /// full, strategy None).
    reason: ReasonCode,
    /// The log sequence number that makes it durable in this shard's
    /// persisted queues.
    durable: Option<u64>,
    /// Other shards that will answer `PublishDone`.
    answers: usize,
    /// Share groups another node serves for this message: (node, route).
    share_forwards: Vec<(crate::cluster::NodeId, bytestring::ByteString)>,
}

/// Who waits for a routed message's outcome.
#[derive(Debug, Clone, Copy)]
pub(super) enum Waiter {
    /// A client's PUBACK or PUBREC.
    Client(ConnId, PublishAck),
    /// A peer stream's message, at the stream's home with persistence: its
    /// link acknowledges it once it is durable where it went.
    Stream(super::cluster::StreamKey, u64),
}

/// How a routing treats shared subscriptions.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shares<'a> {
    /// One node: pick among this node's members.
    Local,
    /// A message from this node in a cluster: each group's node is chosen
    /// among the nodes with members, and the others are told.
    Decide,
    /// A message another node sent: only these groups (their routes) are
    /// served here.
    Only(&'a [bytestring::ByteString]),
}

fn dropped_of(state: Option<&SessionState>) -> u64 {
    state.map_or(0, |s| s.stats.dropped_queue_full)
}
