//! The sessions of one shard: attached to a connection or waiting offline
//! until they expire, taken away on takeover, ended with their connection,
//! and the delayed wills they leave [MQTT-3.1.3-9]. Also the disk-buffer
//! side of a session joining or leaving the shard (its key and its memory).

use std::time::{Duration, Instant};

use bytestring::ByteString;
use hashbrown::HashMap;

use super::{ConnId, MeshMsg, Notice, SessionId, Shard, PREFETCH_BYTES};
use crate::buffer::{RecordRef, Store};
use crate::session::{CloseReason, Event, PendingWill, SessionState};

/// Where a session of this shard is.
#[derive(Debug)]
pub(super) enum Slot {
    Online(ConnId),
    Offline {
        state: Box<SessionState>,
        expires_at: Option<Instant>,
    },
}

/// A will waiting for its delay [MQTT-3.1.3-9].
#[derive(Debug)]
pub(super) struct DelayedWill {
    pub client_id: ByteString,
    /// The offline session on this shard it belongs to: once published,
    /// its persisted record drops it.
    pub session: SessionId,
    pub will: PendingWill,
    pub at: Instant,
    /// The will of a session that expired while the broker was down: its
    /// record (kept for the will) ends once it is published.
    pub ends_record: bool,
}

/// Which key each session's records in the buffer are under, and the
/// records a same-shard takeover hands from one session to the next.
#[derive(Debug, Default)]
pub(super) struct BufferKeys {
    /// Keys that differ from the session id: a session resumed on this
    /// shard keeps the key its records were written under. Session ids are
    /// never reused, so a key stays unique among live sessions.
    owners: HashMap<SessionId, u64>,
    /// A same-shard takeover's records, until the claimant knows whether
    /// the session resumed (records stay) or started clean (released).
    adopting: HashMap<SessionId, Adopting>,
}

#[derive(Debug)]
struct Adopting {
    owner: u64,
    refs: Vec<RecordRef>,
}

impl BufferKeys {
    /// The key of `session`'s records.
    pub(super) fn owner_of(&self, session: SessionId) -> u64 {
        self.owners.get(&session).copied().unwrap_or(session.0)
    }

    /// A same-shard takeover: `new` (a CONNECT being accepted) holds `old`'s
    /// records, if it has any, until it resumes or starts clean.
    pub(super) fn hand_over(
        &mut self,
        old: SessionId,
        new: SessionId,
        state: Option<&SessionState>,
    ) {
        if let Some(st) = state.filter(|st| st.buffer_records() > 0) {
            let adopting = Adopting {
                owner: self.owner_of(old),
                refs: st.buffer_refs(),
            };
            self.adopting.insert(new, adopting);
        }
        self.owners.remove(&old);
    }
}

impl<S: Store> Shard<S> {
    /// Takes a session of this shard away from its connection (takeover)
    /// or from the offline store. With `moving_to` (the CONNECT resumes
    /// it) its index entries move to the new session (`moves`); otherwise
    /// they are removed. For another shard (`stays` false) its spilled
    /// messages are read back into memory first: buffer keys and records
    /// are per shard. A connected session with expiry 0 is not taken: it
    /// ends with its connection (`None`).
    pub(super) fn take_local(
        &mut self,
        session: SessionId,
        stays: bool,
        moving_to: Option<(super::ShardId, SessionId)>,
        now: Instant,
    ) -> Option<SessionState> {
        let slot = self.sessions.remove(&session)?;
        let client_id = match &slot {
            Slot::Online(conn) => self
                .conns
                .get(conn)
                .and_then(|c| c.machine.client_id().cloned()),
            Slot::Offline { state, .. } => Some(state.client_id.clone()),
        };
        // Taken over or evicted: its claim in the cluster's registry is
        // over (a newer one, of this node or another, holds the id).
        self.cluster_superseded(session, client_id.as_ref());
        let (state, closed_will, ended) = match slot {
            Slot::Online(conn) => {
                let taken = self.conns.get_mut(&conn).map(|c| {
                    c.machine.take_over();
                    c.session = None;
                    let mut taken = (None, None);
                    while let Some(ev) = c.machine.poll_event() {
                        if let Event::Closed { session, will, .. } = ev {
                            taken = (session.map(|s| *s), will);
                        }
                    }
                    (taken.0, taken.1, c.machine.take_ended_session())
                });
                // The old connection flushes its DISCONNECT 0x8E and closes.
                self.close(conn);
                self.wake(conn);
                taken.unwrap_or((None, None, None))
            }
            Slot::Offline { state, .. } => (Some(*state), None, None),
        };
        // Expiry 0: the session ended with the connection the takeover
        // closed [MQTT-3.1.2-6] (v5 §3.1.2.11.2); the claimant starts anew.
        let session_ended = ended.is_some();
        if session_ended {
            self.end_session_buffer(session, ended);
        }
        let mut state = state;
        if let Some(st) = &state {
            // A will with a delay is not sent if the session resumes in
            // time [MQTT-3.1.3-9]: it waits on the shard the session was on.
            self.wills.retain(|w| w.client_id != st.client_id);
        }
        if let Some(st) = state.as_ref().filter(|_| moving_to.is_some() && !stays) {
            self.queue_moving_out(st);
        }
        if let Some(st) = state.as_mut() {
            if !stays {
                let owner = self.buffer_keys.owner_of(session);
                st.unspill(&mut self.buffer.lease(owner));
                self.buffer_keys.owners.remove(&session);
            }
            // The state leaves this shard's accounting; `attach` adds it
            // back if it resumes here.
            self.buffer.leave(st.held());
        }
        match (moving_to, state.is_some()) {
            (Some(to), true) => self.start_move(session, to, now),
            _ => self.unindex_session(session),
        }
        // [MQTT-3.1.4-3] the taken-over connection's will is published
        // (§3.1.2.5): at once if it has no delay or its session ended with
        // the connection; a delayed one of a session that goes on is not,
        // its client being back [MQTT-3.1.3-9].
        if let Some(will) = closed_will {
            if will.delay.is_zero() || session_ended {
                self.publish_message(now, will.publication(now), None);
            }
        }
        state
    }

    /// Registers a connected session and indexes its subscriptions.
    pub(super) fn attach(&mut self, session: SessionId, conn: ConnId) {
        self.attach_buffer(session, conn);
        if let Some(state) = self.conns.get(&conn).and_then(|c| c.machine.session()) {
            let client_id = state.client_id.clone();
            let subs: Vec<_> = state
                .subscriptions()
                .map(|(raw, sub)| (raw.clone(), sub.clone()))
                .collect();
            self.index_session(session, &client_id, subs);
        }
        self.sessions.insert(session, Slot::Online(conn));
    }

    /// Indexes a session's subscriptions: adopts the entries a move
    /// already put everywhere, or adds them.
    pub(super) fn index_session(
        &mut self,
        session: SessionId,
        client_id: &ByteString,
        subs: Vec<(ByteString, crate::session::Subscription)>,
    ) {
        if self.is_arriving(session) {
            let filters: Vec<_> = subs.into_iter().map(|(raw, s)| (raw, s.filter)).collect();
            self.index_adopt(session, &filters);
            return;
        }
        for (raw, sub) in subs {
            self.index_add(session, client_id, &raw, &sub.filter, sub.options, sub.id);
        }
    }

    /// Settles the buffer side of a session joining this shard: its key,
    /// its memory, and what a clean start threw away.
    fn attach_buffer(&mut self, session: SessionId, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let b = &mut self.buffer;
        let keys = &mut self.buffer_keys;
        let owner = match keys.adopting.remove(&session) {
            // INVARIANT: nothing runs between `take_local` and here, so a
            // resumed session holds exactly the adopted records (queued, in
            // flight and retired), under the key they were written with.
            Some(a) if c.machine.session_present() => {
                keys.owners.insert(session, a.owner);
                a.owner
            }
            Some(a) => {
                // Clean start: the old session and its records are gone.
                for r in a.refs {
                    b.release(r);
                }
                session.0
            }
            None => session.0,
        };
        c.buffer_owner = owner;
        if let Some(state) = c.machine.session() {
            b.join(state.held());
            if let Some(first) = state.first_buffer_ref() {
                // Readahead for the drain that is about to start.
                b.prefetch(first, PREFETCH_BYTES);
            }
        }
        if b.over_budget() {
            // A session from another shard brought its whole queue in memory.
            let limit = self.config.limits.queue;
            if let Some(state) = c.machine.session_mut() {
                state.spill_excess(&limit, &mut b.lease(owner));
            }
        }
    }

    /// Keeps a session whose connection went away before it could be
    /// attached (a takeover completed for a CONNECT that is gone): offline
    /// if it outlives connections, else it ends here.
    pub(super) fn park(
        &mut self,
        session: SessionId,
        client_id: &ByteString,
        state: Option<SessionState>,
        now: Instant,
    ) {
        let adopting = self.buffer_keys.adopting.remove(&session);
        match state.filter(|s| !s.expiry_interval.is_zero()) {
            Some(state) => {
                if let Some(a) = adopting {
                    self.buffer_keys.owners.insert(session, a.owner);
                }
                self.buffer.join(state.held());
                let subs: Vec<_> = state
                    .subscriptions()
                    .map(|(raw, sub)| (raw.clone(), sub.clone()))
                    .collect();
                self.index_session(session, client_id, subs);
                let expires_at = now.checked_add(state.expiry_interval);
                self.sessions.insert(
                    session,
                    Slot::Offline {
                        state: Box::new(state),
                        expires_at,
                    },
                );
            }
            None => {
                if let Some(a) = adopting {
                    for r in a.refs {
                        self.buffer.release(r);
                    }
                }
                self.release_id(client_id, session);
            }
        }
    }

    /// A connection's `Event::Closed`: keep its session offline, or end it.
    pub(super) fn closed(
        &mut self,
        conn: ConnId,
        now: Instant,
        reason: CloseReason,
        state: Option<SessionState>,
        will: Option<PendingWill>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(session) = c.session.take() else {
            return;
        };
        if !matches!(self.sessions.get(&session), Some(Slot::Online(on)) if *on == conn) {
            // Taken over: the new owner has the state.
            return;
        }
        let client_id = state
            .as_ref()
            .map(|s| s.client_id.clone())
            .unwrap_or_else(|| c.client_id.clone());
        if state.is_none() {
            let ended = c.machine.take_ended_session();
            self.end_session_buffer(session, ended);
        }
        self.notice(Notice::Disconnected {
            conn,
            client_id: client_id.clone(),
            reason,
        });
        let expiry = state.as_ref().map(|s| s.expiry_interval);
        // Published after its delay, or when the session ends if sooner.
        let will_delay = will.as_ref().map(|w| match expiry {
            Some(e) => w.delay.min(e),
            None => Duration::ZERO,
        });
        match state {
            Some(mut state) => {
                // Records of exchanges acknowledged since the writer's last
                // turn: released now, not when the session comes back.
                let owner = self.buffer_keys.owner_of(session);
                state.release_retired(&mut self.buffer.lease(owner));
                // Its last acknowledgements go before its close record.
                super::durable::log_queue(&mut self.durable, &mut self.outputs, &mut state);
                let expires_at = now.checked_add(state.expiry_interval);
                // A will still waiting is in the close record: a crash during
                // its delay does not lose it.
                let pending_will = will
                    .as_ref()
                    .filter(|_| will_delay.is_some_and(|d| !d.is_zero()))
                    .cloned();
                self.write_closed_session(conn, session, &state, expires_at, pending_will);
                self.sessions.insert(
                    session,
                    Slot::Offline {
                        state: Box::new(state),
                        expires_at,
                    },
                );
            }
            None => {
                self.sessions.remove(&session);
                self.unindex_session(session);
                self.release_id(&client_id, session);
            }
        }
        if let (Some(will), Some(delay)) = (will, will_delay) {
            if delay.is_zero() {
                self.publish_message(now, will.publication(now), None);
            } else if let Some(at) = now.checked_add(delay) {
                self.wills.push(DelayedWill {
                    client_id,
                    session,
                    will,
                    at,
                    ends_record: false,
                });
            }
        }
    }

    /// Tells the registry owner that the session ended.
    pub(super) fn release_id(&mut self, client_id: &ByteString, session: SessionId) {
        self.cluster_released(client_id, session);
        let owner = self.owner_of(client_id);
        if owner == self.id {
            self.session_ended_at_owner(client_id, (self.id, session));
            self.registry.release(client_id, (self.id, session));
        } else {
            self.post(
                owner,
                MeshMsg::Release {
                    client_id: client_id.clone(),
                    session,
                },
            );
        }
    }

    /// Ends offline sessions whose expiry passed.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        let expired: Vec<(SessionId, ByteString)> = self
            .sessions
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Offline {
                    state,
                    expires_at: Some(at),
                } if *at <= now => Some((*id, state.client_id.clone())),
                _ => None,
            })
            .collect();
        for (id, client_id) in expired {
            if let Some(Slot::Offline { state, .. }) = self.sessions.remove(&id) {
                self.end_session_buffer(id, Some(*state));
            }
            self.unindex_session(id);
            self.release_id(&client_id, id);
        }
    }

    /// Publishes the delayed wills whose time came.
    pub(super) fn fire_wills(&mut self, now: Instant) {
        // A node that just started publishes no will before it knows its
        // peers' routes (a restored will due at once would miss their
        // subscribers), as it takes no CONNECT.
        if !self.wills.iter().any(|w| w.at <= now) || !self.cluster_routes_ready(now) {
            return;
        }
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wills)
            .into_iter()
            .partition(|w| w.at <= now);
        self.wills = keep;
        for will in due {
            self.publish_message(now, will.will.publication(now), None);
            if will.ends_record {
                self.due_will_published(&will.client_id);
            } else {
                self.will_published(will.client_id, will.session);
            }
        }
    }

    /// Releases what an ending session holds in the buffer and in memory.
    pub(super) fn end_session_buffer(&mut self, session: SessionId, state: Option<SessionState>) {
        let owner = self.buffer_keys.owner_of(session);
        self.buffer_keys.owners.remove(&session);
        if let Some(mut state) = state {
            self.queue_ending(&state);
            state.discard_queue(&mut self.buffer.lease(owner));
        }
    }
}
