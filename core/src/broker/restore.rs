//! Sessions read back at start (issue 16, docs/PERSISTENCE.md "Sessions"):
//! the runtime hands each persisted session to the shard that owns its
//! client id, which puts it offline, binds the id to its principal in the
//! registry and indexes its subscriptions on every shard, so messages
//! published before its client returns are queued for it and a CONNECT
//! without Clean Start resumes it.

use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::registry::{Claim, Decision};
use super::sessions::Slot;
use super::{PrincipalId, RequestId, SessionId, Shard};
use crate::buffer::Store;
use crate::session::{QueueLog, QueuedMessage, Sent, SessionState, Subscription};

/// A persisted session, as recovery read it.
#[derive(Debug, Clone)]
pub struct RestoredSession {
    pub client_id: ByteString,
    /// Who owns the id: a takeover by another principal stays refused
    /// (`sessionTakeover: SamePrincipal`) across the restart.
    pub principal: PrincipalId,
    pub expiry_interval: Duration,
    /// When it expires if its client does not come back (`None`: never).
    pub expires_at: Option<Instant>,
    /// By the filter as subscribed (`$share/g/f` and `f` differ).
    pub subscriptions: Vec<(ByteString, Subscription)>,
    /// Its persisted queue, if it has one.
    pub queue: Option<RestoredQueue>,
}

/// A persisted queue as recovery read it: what it still owes, in order.
#[derive(Debug, Clone, Default)]
pub struct RestoredQueue {
    pub queue_id: u64,
    /// The sequence number its next message gets.
    pub next: u64,
    /// The in-flight window, in order: each exchange with its packet id and
    /// its message (`None` once released: only PUBREL is owed).
    pub window: Vec<(Sent, Option<QueuedMessage>)>,
    /// The messages queued behind it, in order.
    pub messages: Vec<(u64, QueuedMessage)>,
}

/// Why a session was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("this shard does not own the client id")]
    NotOwner,
    #[error("the client id already has a session")]
    Taken,
    #[error("the session expired while the broker was down")]
    Expired,
}

impl<S: Store> Shard<S> {
    /// A session read from this shard's log at start. It expires at its
    /// recorded deadline if its client had left (rebased on the wall clock
    /// by recovery); one whose client was connected at the crash counts its
    /// interval from `now`, and is written back so (offline, with its
    /// deadline), so a later crash does not restart its expiry. One that
    /// cannot be restored has its end written, so the disk agrees with the
    /// broker.
    pub fn restore_persisted(
        &mut self,
        record: super::SessionRecord,
        queue: Option<RestoredQueue>,
        now: Instant,
    ) -> Result<(), RestoreError> {
        let client_id = record.client_id.clone();
        let connected_at_crash = record.offline_until.is_none();
        let expires_at = record
            .offline_until
            .or_else(|| now.checked_add(record.expiry_interval));
        let restored = RestoredSession {
            client_id: record.client_id.clone(),
            principal: record.principal.clone(),
            expiry_interval: record.expiry_interval,
            expires_at,
            subscriptions: record.subscriptions.clone(),
            queue,
        };
        let will_at = record
            .will
            .as_ref()
            .and_then(|w| will_deadline(record.expiry_interval, expires_at, w.delay, now));
        let result = self.restore_session(restored, now);
        // A queue `subscriberQueue` selects now that had none on disk (the
        // mode was None, or its records were unreadable) is persisted from
        // here on, under a new id its record must name.
        let queue_id = match result {
            Ok(session) => {
                self.assign_queue_log(None, session);
                self.write_queue_here(None, session);
                self.offline_queue_id(session)
            }
            Err(_) => record.queue_id,
        };
        let will = record.will.clone();
        let rewrite = result.is_ok() && (connected_at_crash || queue_id != record.queue_id);
        let offline = rewrite.then(|| super::SessionRecord {
            offline_until: expires_at,
            queue_id,
            ..record.clone()
        });
        self.restored_on_disk(record);
        if let Some(offline) = offline {
            self.persist_session(client_id.clone(), Some(std::sync::Arc::new(offline)));
        }
        match (result, will, will_at) {
            // Expired while the broker was down with its will still due
            // (recovery kept the record for it): the session is not
            // restored, the will goes out now, and the record ends once
            // it has (not before: a crash first publishes it again).
            (Err(RestoreError::Expired), Some(will), _) => {
                let session = self.new_session_id();
                self.wills.push(super::sessions::DelayedWill {
                    client_id,
                    session,
                    will,
                    at: now,
                    ends_record: true,
                });
                Err(RestoreError::Expired)
            }
            (Err(e), _, _) => {
                self.persist_session(client_id, None);
                Err(e)
            }
            // A will still pending at the crash: its client's connection
            // ended without DISCONNECT [MQTT-3.1.2-8], or it closed and the
            // delay had not run out. Published after the rest of its delay
            // (at once if it ran out while the broker was down), or when the
            // session ends if sooner, unless the client resumes first (the
            // takeover drops it) [MQTT-3.1.3-9]. The record keeps it until
            // it is published.
            (Ok(session), Some(will), Some(at)) => {
                self.wills.push(super::sessions::DelayedWill {
                    client_id,
                    session,
                    will,
                    at,
                    ends_record: false,
                });
                Ok(())
            }
            (Ok(_), _, _) => Ok(()),
        }
    }

    /// Puts `restored` offline on this shard, which must own its client id
    /// (`owner_index`). Call before any client connects.
    pub fn restore_session(
        &mut self,
        restored: RestoredSession,
        now: Instant,
    ) -> Result<SessionId, RestoreError> {
        let RestoredSession {
            client_id,
            principal,
            expiry_interval,
            expires_at,
            subscriptions,
            queue,
        } = restored;
        if self.owner_of(&client_id) != self.id {
            return Err(RestoreError::NotOwner);
        }
        if expires_at.is_some_and(|at| at <= now) {
            return Err(RestoreError::Expired);
        }
        // Checked before claiming: a granted claim would displace the holder.
        if self.registry.holder(&client_id).is_some() {
            return Err(RestoreError::Taken);
        }
        let session = self.new_session_id();
        let at = (self.id, session);
        let claim = Claim {
            at,
            principal,
            reply: (self.id, RequestId(u64::MAX)),
            // Its claim number is not on disk: any takeover ends it.
            cluster: 0,
        };
        match self.registry.claim(&client_id, claim) {
            Some(answer) if answer.decision == (Decision::Granted { previous: None }) => {}
            _ => return Err(RestoreError::Taken),
        }
        // Nothing else can have claimed the id in between (no input ran).
        self.registry.settle(&client_id, at);
        let mut state = SessionState::new(client_id.clone(), expiry_interval);
        for (raw, sub) in &subscriptions {
            state.subscriptions.insert(raw.clone(), sub.clone());
        }
        // What its queue owed at the crash is queued again; the recovery
        // snapshot of this shard's log holds it. It stays persisted unless
        // `subscriberQueue` became None since.
        if let Some(q) = queue {
            if q.queue_id != 0 && self.persists_queues() {
                let mut log = QueueLog::new(q.queue_id, self.id.index());
                log.next_seq = q.next.max(1);
                state.set_queue_log(Some(log));
            }
            for (sent, message) in q.window {
                state.restore_inflight(sent, message);
            }
            let limit = self.config.limits.queue;
            let mut lease = self.buffer.lease(self.buffer_keys.owner_of(session));
            for (seq, m) in q.messages {
                state.restore_queued(seq, m, &limit, &mut lease);
            }
            state.sort_restored();
        }
        self.index_session(session, &client_id, subscriptions);
        self.sessions.insert(
            session,
            Slot::Offline {
                state: Box::new(state),
                expires_at,
            },
        );
        Ok(session)
    }
}

impl<S: Store> Shard<S> {
    /// One more message owed by a session `restore_persisted` put offline
    /// here, read back from the disk after it: a large backlog is streamed
    /// from the file rather than held whole. Queued behind what the queue
    /// has, in memory if it fits, else in the store; `sort_restored_queues`
    /// orders the queues once all are in. `false` when the client id has no
    /// offline session on this shard.
    pub fn restore_queued_message(&mut self, client_id: &str, seq: u64, m: QueuedMessage) -> bool {
        let Some((shard, session)) = self.registry.holder(client_id) else {
            return false;
        };
        if shard != self.id {
            return false;
        }
        let Some(Slot::Offline { state, .. }) = self.sessions.get_mut(&session) else {
            return false;
        };
        let limit = self.config.limits.queue;
        let mut lease = self.buffer.lease(self.buffer_keys.owner_of(session));
        state.restore_queued(seq, m, &limit, &mut lease);
        true
    }

    /// After the last `restore_queued_message`: each restored queue in its
    /// numbers' order (the files' order is not always the queue's).
    pub fn sort_restored_queues(&mut self) {
        for slot in self.sessions.values_mut() {
            if let Slot::Offline { state, .. } = slot {
                state.sort_restored();
            }
        }
    }

    /// The queue id of an offline session's persisted queue (0: none).
    fn offline_queue_id(&self, session: SessionId) -> u64 {
        match self.sessions.get(&session) {
            Some(Slot::Offline { state, .. }) => state.queue_log().map_or(0, |l| l.queue_id),
            _ => 0,
        }
    }
}

/// When a restored will is due. The client left at `expires_at - expiry`
/// (for one connected at the crash, `expires_at` counts from `now`); the
/// will is due `delay` later, or when the session ends if sooner, and at
/// once if that moment passed while the broker was down.
fn will_deadline(
    expiry: Duration,
    expires_at: Option<Instant>,
    delay: Duration,
    now: Instant,
) -> Option<Instant> {
    let due = match expires_at {
        Some(end) => end
            .checked_sub(expiry)
            .and_then(|left| left.checked_add(delay.min(expiry)))
            .unwrap_or(end),
        // Never expires: the delay counts from the restart.
        None => now.checked_add(delay)?,
    };
    Some(due.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test needs some instant
    fn a_restored_will_is_due_its_delay_after_the_client_left_or_at_once() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let s = Duration::from_secs;
        // Connected at the crash: expiry counts from now, so does the delay.
        assert_eq!(
            will_deadline(s(60), Some(now + s(60)), s(5), now),
            Some(now + s(5))
        );
        // Left 3 s ago (60 s session): 2 s of its 5 s delay remain.
        assert_eq!(
            will_deadline(s(60), Some(now + s(57)), s(5), now),
            Some(now + s(2))
        );
        // The delay ran out while the broker was down: at once.
        assert_eq!(
            will_deadline(s(60), Some(now + s(10)), s(5), now),
            Some(now)
        );
        // The session ends before the delay: the will goes with it [MQTT-3.1.3-9].
        assert_eq!(
            will_deadline(s(4), Some(now + s(4)), s(60), now),
            Some(now + s(4))
        );
        // A session that never expires counts the delay from the restart.
        assert_eq!(will_deadline(s(60), None, s(5), now), Some(now + s(5)));
    }
}
