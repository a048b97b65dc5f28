//! Persisted sessions, the shard's side (docs/PERSISTENCE.md "Sessions"):
//! every change of a persisted session's state (created or resumed,
//! subscribed, unsubscribed, its expiry changed, ended) is written to the
//! log of the shard that owns its client id, which is also where the
//! registry decides who holds the id. A write from a session that no longer
//! holds its id is stale and dropped, so one file orders a client id's
//! records even while its session moves between shards. CONNACK, SUBACK
//! and UNSUBACK wait (the connection's writer is held) until the write is
//! durable: a client never hears of a session state a crash could lose.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::pending::Pending;
use super::PrincipalId;
use super::{ConnId, MeshMsg, RequestId, SessionId, SessionRecord, Shard, ShardId};
use crate::buffer::Store;
use crate::session::{PendingWill, SessionState};

/// Who waits for a session write, at the owner shard.
#[derive(Debug)]
pub(super) enum SessionReply {
    /// A connection on the owner shard itself.
    Local(ConnId),
    /// A connection on a peer: answer `SessionWritten`.
    Peer { from: ShardId, request: RequestId },
}

impl<S: Store> Shard<S> {
    /// A session kept offline when its connection closed: its state is
    /// written again (a v5 DISCONNECT may have changed its expiry, §3.14.2.2.2).
    /// The socket closes once the write is durable (the writer waits,
    /// bounded, `is_held`): a client that waits for the broker's close after
    /// its DISCONNECT knows the session's new state survives a crash.
    pub(super) fn write_closed_session(
        &mut self,
        conn: ConnId,
        session: SessionId,
        state: &SessionState,
        expires_at: Option<Instant>,
        will: Option<PendingWill>,
    ) {
        if self.durable.is_none() {
            return;
        }
        let principal = self.conns.get(&conn).and_then(|c| c.principal.clone());
        let record = record_of(state, principal, will, expires_at);
        let client_id = state.client_id.clone();
        let held = match self.conns.get_mut(&conn) {
            Some(c) if record.is_some() => {
                c.durable_hold += 1;
                Some(conn)
            }
            _ => None,
        };
        self.send_session_write(client_id, session, record, held);
    }

    /// Writes the connection's session state (or its end) at the client
    /// id's owner. With `hold`, nothing more is sent to the client until
    /// the write is durable (the CONNACK, SUBACK or UNSUBACK just queued).
    pub(super) fn write_session(&mut self, conn: ConnId, hold: bool) {
        if self.durable.is_none() {
            return;
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        // No session (the CONNECT was refused after all): nothing to say.
        let (Some(session), Some(state)) = (c.session, c.machine.session()) else {
            return;
        };
        let client_id = state.client_id.clone();
        let record = record_of(state, c.principal.clone(), c.machine.will(), None);
        if hold {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.durable_hold += 1;
            }
        }
        self.send_session_write(client_id, session, record, hold.then_some(conn));
    }

    /// The connection's session is persisted (expiry > 0): its
    /// subscription changes are written. A session that is not has nothing
    /// on disk, and its SUBACK must not wait for others' writes.
    pub(super) fn session_persisted(&self, conn: ConnId) -> bool {
        self.durable.is_some()
            && self
                .conns
                .get(&conn)
                .and_then(|c| c.machine.session())
                .is_some_and(|s| !s.expiry_interval.is_zero())
    }

    /// To the client id's owner (this shard or a peer); `held`: the
    /// connection whose writer waits for the answer.
    fn send_session_write(
        &mut self,
        client_id: ByteString,
        session: SessionId,
        record: Option<Arc<SessionRecord>>,
        held: Option<ConnId>,
    ) {
        let owner = self.owner_of(&client_id);
        if owner == self.id {
            let reply = held.map(SessionReply::Local);
            self.session_write_arrived(self.id, client_id, session, record, reply);
        } else {
            let request = held.map(|conn| self.new_request(Pending::SessionWrite { conn }));
            self.post(
                owner,
                MeshMsg::SessionWrite {
                    client_id,
                    session,
                    record,
                    request,
                },
            );
        }
    }

    /// At the owner: a session's write. Dropped (and answered at once) when
    /// the session no longer holds its id: the holder writes its own state.
    pub(super) fn session_write_arrived(
        &mut self,
        from: ShardId,
        client_id: ByteString,
        session: SessionId,
        record: Option<Arc<SessionRecord>>,
        reply: Option<SessionReply>,
    ) {
        let holds = self.registry.holder(&client_id) == Some((from, session));
        let seq = if holds {
            let record = record.map(|r| self.bound_to_holder(&client_id, r));
            self.persist_session(client_id, record)
        } else {
            None
        };
        match (seq, reply) {
            (_, None) => {}
            (Some(seq), Some(reply)) => self.wait_durable_session(seq, reply),
            (None, Some(reply)) => self.session_durable(reply, !holds),
        }
    }

    /// The record names the principal the registry bound the id to (a
    /// session parked without its connection does not know it).
    fn bound_to_holder(&self, client_id: &str, record: Arc<SessionRecord>) -> Arc<SessionRecord> {
        match self.registry.holder_principal(client_id) {
            Some(p) if *p != record.principal => Arc::new(SessionRecord {
                principal: p.clone(),
                ..(*record).clone()
            }),
            _ => record,
        }
    }

    /// A session parked offline without its connection (a takeover that
    /// completed for a CONNECT that is gone) holds the id now: its state is
    /// written, as the connection's CONNACK would have.
    pub(super) fn write_parked_session(&mut self, session: SessionId) {
        if self.durable.is_none() {
            return;
        }
        let Some(super::sessions::Slot::Offline { state, expires_at }) =
            self.sessions.get(&session)
        else {
            return;
        };
        let record = record_of(state, None, None, *expires_at);
        let client_id = state.client_id.clone();
        self.send_session_write(client_id, session, record, None);
    }

    /// A delayed will was published: its session's record (still offline
    /// on this shard) must not bring it back after a crash.
    pub(super) fn will_published(&mut self, client_id: ByteString, session: SessionId) {
        if self.durable.is_none() {
            return;
        }
        let owner = self.owner_of(&client_id);
        if owner == self.id {
            self.will_published_at_owner(&client_id, (self.id, session));
        } else {
            self.post(owner, MeshMsg::WillPublished { client_id, session });
        }
    }

    /// At the owner, which restored it: the will of a session that expired
    /// while the broker was down is out, so its record ends, unless a new
    /// session of the id wrote its own meanwhile.
    pub(super) fn due_will_published(&mut self, client_id: &ByteString) {
        if self.durable.is_some() && self.registry.holder(client_id).is_none() {
            self.persist_session(client_id.clone(), None);
        }
    }

    /// At the owner: the record of the session at `at` drops its will, if
    /// the session still holds its id (a resumed session wrote its own).
    pub(super) fn will_published_at_owner(
        &mut self,
        client_id: &ByteString,
        at: (ShardId, SessionId),
    ) {
        if self.registry.holder(client_id) != Some(at) {
            return;
        }
        let Some(record) = self.persisted_session(client_id) else {
            return;
        };
        if record.will.is_some() {
            let without = SessionRecord {
                will: None,
                ..(*record).clone()
            };
            self.persist_session(client_id.clone(), Some(Arc::new(without)));
        }
    }

    /// At the owner, before the registry forgets the session at `at`: if it
    /// still holds its id, its end is written (nobody waits for it).
    pub(super) fn session_ended_at_owner(
        &mut self,
        client_id: &ByteString,
        at: (ShardId, SessionId),
    ) {
        if self.durable.is_some() && self.registry.holder(client_id) == Some(at) {
            self.persist_session(client_id.clone(), None);
        }
    }

    /// The write is durable (or there was nothing to write): release the
    /// connection's writer. `stale`: the session no longer holds its id.
    pub(super) fn session_durable(&mut self, reply: SessionReply, stale: bool) {
        match reply {
            SessionReply::Local(conn) => self.release_hold(conn, stale),
            SessionReply::Peer { from, request } => {
                self.post(from, MeshMsg::SessionWritten { request, stale });
            }
        }
    }

    /// The owner answered a held write.
    pub(super) fn session_written(&mut self, request: RequestId, stale: bool) {
        if let Some(Pending::SessionWrite { conn }) = self.pending.remove(&request) {
            self.release_hold(conn, stale);
        }
    }

    /// A stale answer keeps the hold for good: the connection was taken
    /// over, the new holder writes (and acknowledges) the state, and the
    /// SUBACK or UNSUBACK queued here must never leave ahead of that write.
    /// The connection is closing; its socket closes without waiting.
    fn release_hold(&mut self, conn: ConnId, stale: bool) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if stale {
                c.superseded = true;
            } else {
                c.durable_hold = c.durable_hold.saturating_sub(1);
            }
            self.wake(conn);
        }
    }

    /// The connection's writer waits for a session write before it sends
    /// more (or closes the socket).
    pub fn is_held(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.durable_hold > 0 && !c.superseded)
    }
}

/// `state` as a record when it is persisted (session expiry > 0).
/// `offline_until`: its deadline once its client left (`None` while
/// connected).
fn record_of(
    state: &SessionState,
    principal: Option<PrincipalId>,
    will: Option<PendingWill>,
    offline_until: Option<Instant>,
) -> Option<Arc<SessionRecord>> {
    if state.expiry_interval.is_zero() {
        return None;
    }
    let mut subscriptions: Vec<_> = state
        .subscriptions
        .iter()
        .map(|(raw, sub)| (raw.clone(), sub.clone()))
        .collect();
    subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
    Some(Arc::new(SessionRecord {
        client_id: state.client_id.clone(),
        principal: principal.unwrap_or_else(PrincipalId::anonymous),
        expiry_interval: state.expiry_interval,
        offline_until,
        subscriptions,
        will,
        queue_id: state.queue_log().map_or(0, |l| l.queue_id),
    }))
}
