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
use super::{PrincipalId, RequestId, Shard};
use crate::buffer::Store;
use crate::session::{SessionState, Subscription};

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
    /// interval from `now`. One that cannot be restored has its end
    /// written, so the disk agrees with the broker.
    pub fn restore_persisted(
        &mut self,
        record: super::SessionRecord,
        now: Instant,
    ) -> Result<(), RestoreError> {
        let client_id = record.client_id.clone();
        let restored = RestoredSession {
            client_id: record.client_id.clone(),
            principal: record.principal.clone(),
            expiry_interval: record.expiry_interval,
            expires_at: record
                .offline_until
                .or_else(|| now.checked_add(record.expiry_interval)),
            subscriptions: record.subscriptions.clone(),
        };
        let will = record.will.clone();
        let expiry = record.expiry_interval;
        let result = self.restore_session(restored, now);
        self.restored_on_disk(record);
        match (&result, will) {
            (Err(_), _) => {
                self.persist_session(client_id, None);
            }
            // Its client was connected at the crash: the connection ended
            // without DISCONNECT [MQTT-3.1.2-8]. Published after its delay,
            // or when the session ends if sooner, unless the client resumes
            // first (the takeover drops it) [MQTT-3.1.3-9].
            (Ok(()), Some((message, delay))) => {
                if let Some(at) = now.checked_add(delay.min(expiry)) {
                    self.wills.push(super::sessions::DelayedWill {
                        client_id,
                        message,
                        at,
                    });
                }
            }
            (Ok(()), None) => {}
        }
        result
    }

    /// Puts `restored` offline on this shard, which must own its client id
    /// (`owner_index`). Call before any client connects.
    pub fn restore_session(
        &mut self,
        restored: RestoredSession,
        now: Instant,
    ) -> Result<(), RestoreError> {
        let RestoredSession {
            client_id,
            principal,
            expiry_interval,
            expires_at,
            subscriptions,
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
        self.index_session(session, &client_id, subscriptions);
        self.sessions.insert(
            session,
            Slot::Offline {
                state: Box::new(state),
                expires_at,
            },
        );
        Ok(())
    }
}
