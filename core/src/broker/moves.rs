//! Moving a resumed session between shards (or to a new id on its shard)
//! without losing or reordering a QoS 1/2 message [MQTT-4.6.0-5]. Every
//! shard routes by its own replica of the index, so for a while some route
//! to the old place and some to the new. The protocol:
//!
//! 1. The old shard A takes the session (`TakeOver` with `resume_as`),
//!    broadcasts `Moved` (every index entry of the old key becomes the new
//!    key, in one step per replica), keeps a `Leaving` tombstone that
//!    forwards what still arrives for the old session, and hands it over.
//! 2. Every other shard P applies `Moved` and answers A with `MoveMark`: P
//!    routes nothing more to the old key. A forwards each mark to the new
//!    shard B behind everything it forwarded for P (pair order), and drops
//!    the tombstone once every peer's mark came.
//! 3. B holds what P sends straight to the new session until P's mark
//!    arrives through A, so P's earlier messages (forwarded by A) go first.
//!    B also holds back its own index changes for the session (their
//!    broadcast could overtake `Moved` at some P) and settles the claim
//!    only when every mark is in, so moves of one session never overlap.

use std::time::Instant;

use bytestring::ByteString;

use super::pending::AfterBarrier;
use super::{MeshMsg, RequestId, SessionId, Shard, ShardId, SubKey, SubVal};
use crate::buffer::Store;
use crate::session::{Delivery, SharedMessage};
use crate::topic::TopicFilter;

/// At the old shard: a session that resumes elsewhere.
#[derive(Debug)]
pub(super) struct Leaving {
    pub to: (ShardId, SessionId),
    /// Peers that have not yet switched their index to the new key.
    pub marks_missing: usize,
}

/// At the new shard: a resumed session the other shards are switching to.
#[derive(Debug)]
pub(super) struct Arriving {
    pub client_id: ByteString,
    /// Per shard: its mark has not come through `from` yet.
    awaiting: Vec<bool>,
    missing: usize,
    /// Messages sent straight here by shards still awaited, in arrival
    /// order, with the request answered once each is queued (durably).
    held: Vec<(ShardId, SharedMessage, Delivery, Option<RequestId>)>,
    /// Index changes and barriers of this session, until every peer applied
    /// `Moved` (a change broadcast now could overtake it).
    deferred: Vec<Deferred>,
    /// The handover came (or was refused): what is left is marks.
    pub handed_over: bool,
}

#[derive(Debug)]
pub(super) enum Deferred {
    Add {
        filter: TopicFilter,
        key: SubKey,
        val: SubVal,
    },
    Remove {
        filter: TopicFilter,
        key: SubKey,
    },
    /// A connection's index barrier (`index_barrier`), started once the
    /// session's own index changes have gone out.
    Barrier(AfterBarrier),
}

/// One index entry a `Moved` re-keys: the filter, the old entry's share
/// group, and its value.
pub type MovedEntry = (TopicFilter, Option<ByteString>, SubVal);

impl<S: Store> Shard<S> {
    /// B, before asking A for the session: expect the move.
    pub(super) fn expect_arrival(
        &mut self,
        session: SessionId,
        from: ShardId,
        client_id: ByteString,
    ) {
        let n = self.config.shards;
        let mut awaiting = vec![true; n];
        awaiting[from.index()] = false;
        self.arriving.insert(
            session,
            Arriving {
                client_id,
                awaiting,
                missing: n - 1,
                held: Vec::new(),
                deferred: Vec::new(),
                handed_over: false,
            },
        );
    }

    /// A: the session `old` is taken to resume as `to`. Re-keys its index
    /// entries everywhere and leaves a forwarding tombstone.
    pub(super) fn start_move(&mut self, old: SessionId, to: (ShardId, SessionId), now: Instant) {
        let entries = self.index_entries_of(old);
        self.apply_moved((self.id, old), to, &entries);
        let peers: Vec<ShardId> = self.peers().collect();
        for &peer in &peers {
            self.post(
                peer,
                MeshMsg::Moved {
                    old,
                    to,
                    entries: entries.clone(),
                },
            );
        }
        self.leaving.insert(
            old,
            Leaving {
                to,
                marks_missing: peers.len(),
            },
        );
        if peers.is_empty() {
            self.leaving.remove(&old);
            self.arrival_complete_if_here(to, now);
        }
    }

    /// Re-keys this replica's entries of (`from`) to `to`.
    fn apply_moved(
        &mut self,
        from: (ShardId, SessionId),
        to: (ShardId, SessionId),
        entries: &[MovedEntry],
    ) {
        for (filter, group, val) in entries {
            let old = SubKey {
                shard: from.0,
                session: from.1,
                group: group.clone(),
            };
            let new = SubKey {
                shard: to.0,
                session: to.1,
                group: group.clone(),
            };
            // A re-key: the node's routes change only if an entry was
            // missing on one side.
            if self.index.trie.remove(filter, &old).is_some() {
                self.route_removed(filter, group.as_ref());
            }
            if self.index.trie.insert(filter, new, val.clone()).is_none() {
                self.route_added(filter, group.as_ref());
            }
        }
    }

    /// P: a peer moved one of its sessions; switch, then tell it so.
    pub(super) fn moved_arrived(
        &mut self,
        from: ShardId,
        old: SessionId,
        to: (ShardId, SessionId),
        entries: Vec<MovedEntry>,
    ) {
        self.apply_moved((from, old), to, &entries);
        self.post(from, MeshMsg::MoveMark { session: old });
    }

    /// A: peer `origin` routes nothing more to `old`.
    pub(super) fn mark_arrived(&mut self, origin: ShardId, old: SessionId, now: Instant) {
        let Some(leaving) = self.leaving.get_mut(&old) else {
            return;
        };
        leaving.marks_missing -= 1;
        let (to_shard, to_session) = leaving.to;
        if leaving.marks_missing == 0 {
            self.leaving.remove(&old);
        }
        if to_shard == self.id {
            self.mark_forwarded(origin, to_session, now);
        } else {
            self.post(
                to_shard,
                MeshMsg::MarkForward {
                    session: to_session,
                    origin,
                },
            );
        }
    }

    /// A: a delivery for a session that left; `None` if it never was one.
    pub(super) fn forward_target(&self, old: SessionId) -> Option<(ShardId, SessionId)> {
        self.leaving.get(&old).map(|l| l.to)
    }

    /// B: `origin`'s mark came through the old shard: what it sent straight
    /// here can go into the session now.
    pub(super) fn mark_forwarded(&mut self, origin: ShardId, session: SessionId, now: Instant) {
        let Some(arriving) = self.arriving.get_mut(&session) else {
            return;
        };
        let Some(waiting) = arriving.awaiting.get_mut(origin.index()) else {
            return;
        };
        if !*waiting {
            return;
        }
        *waiting = false;
        arriving.missing -= 1;
        let (released, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut arriving.held)
            .into_iter()
            .partition(|(from, _, _, _)| *from == origin);
        arriving.held = kept;
        for (_, message, delivery, answer) in released {
            let targets = [(session, delivery)];
            let (_, durable) = self.deliver_local(now, origin, &message, &targets, true, None);
            if let Some(answer) = answer {
                self.answer_when_durable(durable, answer);
            }
        }
        self.arrival_complete_if_here((self.id, session), now);
    }

    /// B: whether a delivery from `origin` to `session` must wait for
    /// `origin`'s mark; if so it is kept.
    pub(super) fn hold_if_arriving(
        &mut self,
        origin: ShardId,
        session: SessionId,
        message: &SharedMessage,
        delivery: &Delivery,
        answer: Option<RequestId>,
    ) -> bool {
        let Some(arriving) = self.arriving.get_mut(&session) else {
            return false;
        };
        if !arriving
            .awaiting
            .get(origin.index())
            .copied()
            .unwrap_or(false)
        {
            return false;
        }
        arriving
            .held
            .push((origin, message.clone(), delivery.clone(), answer));
        if let Some(answer) = answer {
            self.expect_answer(answer);
        }
        true
    }

    /// Whether index changes of `session` must wait (it is arriving).
    pub(super) fn defer_index(&mut self, session: SessionId, op: Deferred) -> Option<Deferred> {
        match self.arriving.get_mut(&session) {
            Some(arriving) => {
                arriving.deferred.push(op);
                None
            }
            None => Some(op),
        }
    }

    /// B: the handover came; with no state, nothing moves (the old session
    /// had ended) and nothing can have been held.
    pub(super) fn arrival_handed_over(&mut self, session: SessionId, moved: bool, now: Instant) {
        if moved {
            if let Some(a) = self.arriving.get_mut(&session) {
                a.handed_over = true;
            }
            self.arrival_complete_if_here((self.id, session), now);
        } else {
            self.arriving.remove(&session);
        }
    }

    fn arrival_complete_if_here(&mut self, to: (ShardId, SessionId), now: Instant) {
        if to.0 != self.id {
            return;
        }
        let session = to.1;
        let done = self
            .arriving
            .get(&session)
            .is_some_and(|a| a.missing == 0 && a.handed_over);
        if !done {
            return;
        }
        let Some(arriving) = self.arriving.remove(&session) else {
            return;
        };
        for op in arriving.deferred {
            match op {
                Deferred::Add { filter, key, val } => self.broadcast_add(&filter, &key, &val),
                Deferred::Remove { filter, key } => self.broadcast_remove(&filter, &key),
                Deferred::Barrier(then) => self.start_barrier(then, now),
            }
        }
        // Moves of one client id never overlap: the next claim may go.
        let client_id = arriving.client_id;
        self.settle(&client_id, session, now);
    }

    /// Whether `session` is still arriving (tests, inventory).
    pub(super) fn is_arriving(&self, session: SessionId) -> bool {
        self.arriving.contains_key(&session)
    }
}
