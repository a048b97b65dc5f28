//! CONNECT as a continuation: the session's `Event::Connect` asks the
//! runtime to authenticate (`Output::Authenticate`); its answer claims the
//! client id at the registry owner; a grant takes the previous session over
//! (here, or from the shard that holds it: `TakeOver` -> `Handover`); then
//! the connection is accepted, its session attached, and the claim settled
//! so the owner decides the next claim of that id. MQTT 5.0 §3.1.4.

use std::time::Instant;

use bytestring::ByteString;

use super::pending::Pending;
use super::{
    Admission, Answer, Claim, ConnId, Decision, MeshMsg, Notice, Output, RequestId, SessionId,
    Shard, ShardId,
};
use crate::buffer::Store;
use crate::codec::ReasonCode;
use crate::session::{ConnectRequest, SessionState};
use crate::topic::Filter;

impl<S: Store> Shard<S> {
    /// `Event::Connect`: name the client (assigning an id if it sent none)
    /// and ask the runtime to authenticate it.
    pub(super) fn start_connect(&mut self, conn: ConnId, mut request: ConnectRequest) {
        let assigned = request.client_id.is_empty();
        if assigned {
            // Unique broker-wide and across restarts: the runtime's
            // instance tag, this shard and a per-shard counter.
            request.client_id = format!(
                "shardmq-{:x}-{}-{}",
                self.config.instance, self.id, self.next_session
            )
            .into();
            self.next_session += 1;
        }
        let opted_in = self.config.persistence.as_ref().is_some_and(|p| {
            let props = request.user_properties.iter();
            p.opts_in(props.map(|(k, v)| (k.as_ref(), v.as_ref())))
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.client_id = request.client_id.clone();
            c.assigned = assigned;
            c.clean_start = request.clean_start;
            c.queue_opt_in = opted_in;
        }
        self.outputs
            .push_back(Output::Authenticate { conn, request });
    }

    /// The runtime's answer to `Output::Authenticate`.
    pub fn handle_admitted(
        &mut self,
        conn: ConnId,
        now: Instant,
        result: Result<Admission, ReasonCode>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.machine.is_closed() {
            // Gone while it was being authenticated: nothing to claim.
            return;
        }
        let admission = match result {
            Ok(admission) => admission,
            Err(reason) => {
                c.machine.reject(reason);
                self.process_events(conn, now);
                self.wake(conn);
                return;
            }
        };
        let principal = admission.principal.clone();
        let client_id = c.client_id.clone();
        let resume = !c.clean_start;
        let cluster_claim = admission.cluster_claim;
        c.admission = Some(admission);
        let session = self.new_session_id();
        // On record from here: a client that leaves before its session is
        // settled still releases this claim, not any.
        if let Some(claim) = cluster_claim {
            self.cluster_claimed(session, claim);
        }
        let request = self.new_request(Pending::Claim {
            conn,
            session,
            client_id: client_id.clone(),
            resume,
        });
        let owner = self.owner_of(&client_id);
        let cluster_claim = cluster_claim.unwrap_or(0);
        if owner == self.id {
            let claim = Claim {
                at: (self.id, session),
                principal,
                reply: (self.id, request),
                cluster: cluster_claim,
            };
            self.claim_arrived(client_id, claim, now);
        } else {
            self.post(
                owner,
                MeshMsg::Claim {
                    client_id,
                    session,
                    principal,
                    request,
                    cluster_claim,
                },
            );
        }
    }

    /// A claim reached this shard, the registry owner of its client id.
    pub(super) fn claim_arrived(
        &mut self,
        client_id: ByteString,
        claim: Claim<(ShardId, SessionId), (ShardId, RequestId)>,
        now: Instant,
    ) {
        if let Some(answer) = self.registry.claim(&client_id, claim) {
            self.answer_claim(answer, now);
        }
    }

    /// Sends the registry's answer to the claimant (this shard or a peer).
    fn answer_claim(
        &mut self,
        answer: Answer<(ShardId, SessionId), (ShardId, RequestId)>,
        now: Instant,
    ) {
        let (shard, request) = answer.reply;
        if shard == self.id {
            self.claim_answered(request, answer.decision, now);
        } else {
            self.post(
                shard,
                MeshMsg::ClaimReply {
                    request,
                    decision: answer.decision,
                },
            );
        }
    }

    /// The registry owner decided this shard's claim.
    pub(super) fn claim_answered(
        &mut self,
        request: RequestId,
        decision: Decision<(ShardId, SessionId)>,
        now: Instant,
    ) {
        let Some(Pending::Claim {
            conn,
            session,
            client_id,
            resume,
        }) = self.pending.remove(&request)
        else {
            return;
        };
        let previous = match decision {
            Decision::Granted { previous } => previous,
            Decision::Superseded => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.admission = None;
                    c.machine.reject(ReasonCode::ServerUnavailable);
                    self.process_events(conn, now);
                    self.wake(conn);
                }
                self.cluster_claim_unused(&client_id, session);
                return;
            }
            Decision::Refused => {
                // MQTT 5.0 §5.4.2: the id's session is another principal's;
                // it is neither resumed, replaced nor disconnected.
                if let Some(c) = self.conns.get_mut(&conn) {
                    let principal = c
                        .admission
                        .take()
                        .map(|a| a.principal)
                        .unwrap_or_else(super::PrincipalId::anonymous);
                    let client_id = c.client_id.clone();
                    c.machine.reject(ReasonCode::NotAuthorized);
                    self.notice(Notice::TakeoverRefused {
                        conn,
                        client_id,
                        principal,
                    });
                    self.process_events(conn, now);
                    self.wake(conn);
                }
                // The cluster's registry granted it: no session holds it.
                self.cluster_claim_unused(&client_id, session);
                return;
            }
        };
        match previous {
            None => self.finish_connect(conn, session, client_id, None, now),
            Some((shard, old)) if shard == self.id => {
                let moving_to = resume.then_some((self.id, session));
                if resume {
                    self.expect_arrival(session, self.id, client_id.clone());
                }
                let state = self.take_local(old, true, moving_to, now);
                self.buffer_keys.hand_over(old, session, state.as_ref());
                self.finish_connect(conn, session, client_id, state, now);
            }
            Some((shard, old)) => {
                if resume {
                    self.expect_arrival(session, shard, client_id.clone());
                }
                let request = self.new_request(Pending::Handover {
                    conn,
                    session,
                    client_id,
                });
                self.post(
                    shard,
                    MeshMsg::TakeOver {
                        session: old,
                        request,
                        resume_as: resume.then_some(session),
                    },
                );
            }
        }
    }

    /// The shard that held the previous session handed it over.
    pub(super) fn handover_arrived(
        &mut self,
        request: RequestId,
        state: Option<Box<SessionState>>,
        now: Instant,
    ) {
        match self.pending.remove(&request) {
            Some(Pending::Handover {
                conn,
                session,
                client_id,
            }) => self.finish_connect(conn, session, client_id, state.map(|s| *s), now),
            Some(Pending::Evict { client_id, at }) => {
                self.evicted(&client_id, at, state.map(|s| *s));
            }
            _ => {}
        }
    }

    /// The claim is through: accept the CONNECT with the previous session's
    /// state (ignored on clean start), attach it, and settle the claim.
    fn finish_connect(
        &mut self,
        conn: ConnId,
        session: SessionId,
        client_id: ByteString,
        state: Option<SessionState>,
        now: Instant,
    ) {
        let waiting = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.admission.is_some() && !c.machine.is_closed());
        // Nothing moved (no state came): the session starts here.
        let moved = state.is_some() && self.is_arriving(session);
        if !moved {
            self.arriving.remove(&session);
        }
        if !waiting {
            // The CONNECT is gone (shut down meanwhile): keep what was
            // taken over rather than lose it.
            self.park(session, &client_id, state, now);
            self.assign_queue_log(None, session);
            self.write_queue_here(None, session);
            self.settle_or_await(&client_id, session, moved, now);
            self.write_parked_session(session);
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(admission) = c.admission.take() else {
            return;
        };
        let assigned = c.assigned.then(|| client_id.clone());
        let revoked = c
            .machine
            .accept(now, state, assigned, admission.permissions);
        c.machine.set_credential_expiry(admission.expires_at);
        c.session = Some(session);
        // Before the session's record is written: it names the queue's id.
        self.assign_queue_log(Some(conn), session);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let connected = c.machine.is_connected();
        let session_present = c.machine.session_present();
        let revoked_filters: Vec<Filter> = revoked
            .iter()
            .filter_map(|raw| Filter::parse(raw.clone()).ok())
            .collect();
        if !revoked.is_empty() {
            self.notice(Notice::SubscriptionsRevoked {
                conn,
                client_id: client_id.clone(),
                filters: revoked,
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.principal = Some(admission.principal.clone());
        }
        self.notice(Notice::Connected {
            conn,
            client_id: client_id.clone(),
            principal: admission.principal,
            session_present,
        });
        // The CONNACK just queued waits until the session's state (or the
        // end of the one it replaced) is durable.
        self.write_session(conn, true);
        if connected {
            self.lift_connect_limit(conn);
        }
        self.attach(session, conn);
        self.write_queue_here(Some(conn), session);
        self.remove_revoked(session, &revoked_filters);
        if !revoked_filters.is_empty() {
            // The CONNACK waits until every shard's index dropped the
            // revoked subscriptions, as a SUBACK waits for new ones: once
            // connected, the client gets nothing its permissions refuse.
            self.index_barrier(super::pending::AfterBarrier::Unsubscribed { conn }, now);
        }
        self.settle_or_await(&client_id, session, moved, now);
        // Packets the client pipelined behind CONNECT were handled by
        // `accept`: act on what they raised.
        self.process_events(conn, now);
        self.wake(conn);
    }

    /// Settles the claim now, or once a move completes (`moves`).
    fn settle_or_await(
        &mut self,
        client_id: &ByteString,
        session: SessionId,
        moved: bool,
        now: Instant,
    ) {
        if moved {
            self.arrival_handed_over(session, true, now);
        } else {
            self.settle(client_id, session, now);
        }
    }

    /// Takes a resumed session's revoked subscriptions out of the index
    /// (a move brought their entries along).
    fn remove_revoked(&mut self, session: SessionId, revoked: &[Filter]) {
        for filter in revoked {
            self.index_remove(session, filter);
        }
    }

    /// Lets the registry owner decide the next claim of this client id.
    pub(super) fn settle(&mut self, client_id: &ByteString, session: SessionId, now: Instant) {
        let owner = self.owner_of(client_id);
        if owner == self.id {
            self.settle_arrived(self.id, client_id, session, now);
        } else {
            self.post(
                owner,
                MeshMsg::ClaimSettled {
                    client_id: client_id.clone(),
                    session,
                },
            );
        }
    }

    /// A claimant settled its claim at this shard, the registry owner.
    pub(super) fn settle_arrived(
        &mut self,
        from: ShardId,
        client_id: &str,
        session: SessionId,
        now: Instant,
    ) {
        for answer in self.registry.settle(client_id, (from, session)) {
            self.answer_claim(answer, now);
        }
        // Another node took the id while this claim settled, with a newer
        // claim: the session just settled ends.
        if let Some(taken) = self.registry.evict_due(client_id) {
            self.evict_client(&client_id.into(), taken, now);
        }
    }
}
