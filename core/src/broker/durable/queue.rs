//! Persisted queues, the shard's side (docs/PERSISTENCE.md "Queued
//! messages"): which sessions' queues are written, their puts, ends and
//! in-flight window handed to the shard's log, a queue written whole where
//! it moved, and the queues of a rewrite. `Durable` orders the writes.

use std::collections::VecDeque;

use bytestring::ByteString;
use hashbrown::HashMap;

use super::{Durable, Output, PersistOp, Waiter};
use crate::broker::queue_record::{QueueDone, QueuePut, QueueSent, QueueSnapshot};
use crate::broker::session_write::SessionReply;
use crate::broker::sessions::{BufferKeys, Slot};
use crate::broker::{Conn, ConnId, MeshMsg, SessionId, Shard, ShardId};
use crate::buffer::{Lease, Store};
use crate::session::{QueueLog, QueueOps, SessionState};

impl Durable {
    /// What a persisted queue recorded since the last call: its puts (the
    /// last one's sequence number is returned: a publisher's
    /// acknowledgement waits for it) and its ends.
    pub(super) fn note_queue(&mut self, client_id: &ByteString, log: &mut QueueLog) -> Option<u64> {
        let queue_id = log.queue_id;
        let QueueOps {
            puts,
            done: seqs,
            sent,
        } = log.take_ops();
        let mut last_put = None;
        for (seq, queued) in puts {
            self.ops.push(PersistOp::QueuePut(QueuePut {
                client_id: client_id.clone(),
                queue_id,
                seq,
                queued,
            }));
            self.queued += 1;
            last_put = Some(self.queued);
        }
        // Ends before new window entries: an id freed here and given again
        // must not be read back twice should the batch tear in between.
        if !seqs.is_empty() {
            self.ops.push(PersistOp::QueueDone(QueueDone {
                client_id: client_id.clone(),
                queue_id,
                seqs,
            }));
            self.queued += 1;
        }
        if !sent.is_empty() {
            self.ops.push(PersistOp::QueueSent(QueueSent {
                client_id: client_id.clone(),
                queue_id,
                entries: sent,
            }));
            self.queued += 1;
        }
        last_put
    }

    /// A persisted queue written whole (it moved here, or became
    /// persisted): its state, what it owes, its window.
    fn note_queue_whole(&mut self, whole: QueueSnapshot) -> u64 {
        // The window right behind the state: a tear in the puts then loses
        // messages still unacknowledged (the write is not yet durable),
        // never the packet ids of exchanges on disk.
        self.ops.extend(whole.state.map(PersistOp::QueueState));
        self.ops.extend(whole.sent.map(PersistOp::QueueSent));
        self.ops
            .extend(whole.puts.into_iter().map(PersistOp::QueuePut));
        self.queued += 1;
        self.queued
    }
}

/// A persisted queue's records when written whole: which sequence numbers
/// are owed (messages, and exchanges past PUBREC whose PUBREL is), the
/// messages, and the in-flight window with its packet ids.
/// `copy`: which spilled messages the log being replaced holds, so the
/// writer copies them from there instead of this shard reading them back.
fn whole_queue(
    state: &SessionState,
    log: &QueueLog,
    lease: &mut Lease<'_>,
    copy: impl Fn(u64) -> bool,
) -> QueueSnapshot {
    let (owed, copies) = state.persisted_entries(lease, copy);
    QueueSnapshot::whole(
        &state.client_id,
        log.queue_id,
        log.next_seq(),
        owed,
        copies,
        state.persisted_window(),
    )
}

/// The state of the session attached to `conn`, or parked offline as
/// `session`, with its buffer key.
fn session_at<'a>(
    conns: &'a mut HashMap<ConnId, Conn>,
    sessions: &'a mut HashMap<SessionId, Slot>,
    keys: &BufferKeys,
    conn: Option<ConnId>,
    session: SessionId,
) -> Option<(&'a mut SessionState, u64)> {
    match conn {
        Some(conn) => {
            let c = conns.get_mut(&conn)?;
            let owner = c.buffer_owner;
            Some((c.machine.session_mut()?, owner))
        }
        None => match sessions.get_mut(&session)? {
            Slot::Offline { state, .. } => Some((&mut **state, keys.owner_of(session))),
            Slot::Online(_) => None,
        },
    }
}

/// Hands what a persisted session's queue recorded to the log (a free
/// function: the caller holds the session inside `conns` or `sessions`).
/// The last put's sequence number, for a publisher to wait for.
pub(in crate::broker) fn log_queue(
    durable: &mut Option<Durable>,
    outputs: &mut VecDeque<Output>,
    state: &mut SessionState,
) -> Option<u64> {
    let d = durable.as_mut()?;
    let client_id = state.client_id.clone();
    let log = state.queue_log_mut().filter(|l| l.has_ops())?;
    let was_empty = d.ops.is_empty();
    let seq = d.note_queue(&client_id, log);
    if was_empty && !d.ops.is_empty() {
        outputs.push_back(Output::Persist);
    }
    seq
}

impl<S: Store> Shard<S> {
    /// Hands the connection's persisted queue records to the log (after
    /// its client's acknowledgements, or messages expired in its queue).
    pub(in crate::broker) fn log_conn_queue(&mut self, conn: ConnId) {
        // PERF: every read and write of a connection passes here; without
        // persisted queues it stops at one test, not a lookup.
        if !self.persists_queues() {
            return;
        }
        if let Some(state) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.machine.session_mut())
        {
            log_queue(&mut self.durable, &mut self.outputs, state);
        }
    }

    /// A session taking its place on this shard (`conn`, or parked
    /// offline without one): its queue is persisted exactly when the
    /// session is (expiry > 0). A queue new to persistence gets an id
    /// (before the session's record is written: it names the id), and its
    /// QoS 1/2 messages get sequence numbers; `write_queue_here` writes it.
    pub(in crate::broker) fn assign_queue_log(&mut self, conn: Option<ConnId>, session: SessionId) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let shards = self.config.shards as u64;
        let here = self.id.index() as u64;
        let opted_in = conn
            .and_then(|c| self.conns.get(&c))
            .is_some_and(|c| c.queue_opt_in);
        let Some((state, _)) = session_at(
            &mut self.conns,
            &mut self.sessions,
            &self.buffer_keys,
            conn,
            session,
        ) else {
            return;
        };
        if state.expiry_interval.is_zero() {
            // Not persisted any more (its owner deletes the record). A queue
            // that moved from another shard still settles there, or that
            // shard would defer its rewrites for good.
            let moved_from = state.queue_log().map(|l| l.written_at);
            state.set_queue_log(None);
            match moved_from {
                Some(from) if from < self.config.shards && from != self.id.index() => {
                    self.post(ShardId::new(from), MeshMsg::QueueSettled)
                }
                _ => {}
            }
        } else if state.queue_log().is_none() && d.policy.persists_queue(&state.client_id, opted_in)
        {
            d.next_queue_id += 1;
            // The generation in the high 24 bits, a 40-bit counter strided
            // by the shard count below: unique within a run and across runs.
            let low = (d.next_queue_id * shards + here) & ((1 << 40) - 1);
            // Written nowhere yet.
            let log = QueueLog::new(d.generation << 40 | low, usize::MAX);
            state.set_queue_log(Some(log));
            state.number_all();
        }
    }

    /// After `assign_queue_log`, once the session's buffer key is settled:
    /// a queue written at another shard (it moved here), or nowhere yet, is
    /// written whole here, and the connection's CONNACK waits for that.
    /// The shard it moved from may rewrite its log again once it is durable.
    pub(in crate::broker) fn write_queue_here(&mut self, conn: Option<ConnId>, session: SessionId) {
        let here = self.id.index();
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let Some((state, owner)) = session_at(
            &mut self.conns,
            &mut self.sessions,
            &self.buffer_keys,
            conn,
            session,
        ) else {
            return;
        };
        let Some(moved_from) = state
            .queue_log()
            .map(|l| l.written_at)
            .filter(|at| *at != here)
        else {
            return;
        };
        let Some(log) = state.queue_log() else {
            return;
        };
        // Not from this shard's log: the queue's puts are in another's, or
        // nowhere yet.
        let whole = whole_queue(state, log, &mut self.buffer.lease(owner), |_| false);
        let Some(log) = state.queue_log_mut() else {
            return;
        };
        log.written_at = here;
        // Whatever it recorded before is in `whole` now.
        let _ = log.take_ops();
        let was_empty = d.ops.is_empty();
        let seq = d.note_queue_whole(whole);
        if was_empty {
            self.outputs.push_back(Output::Persist);
        }
        if let Some(conn) = conn {
            d.waiters
                .push_back((seq, Waiter::Session(SessionReply::Local(conn))));
            if let Some(c) = self.conns.get_mut(&conn) {
                c.durable_hold += 1;
            }
        }
        if moved_from < self.config.shards {
            d.waiters
                .push_back((seq, Waiter::Moved(ShardId::new(moved_from))));
        }
    }

    /// A persisted session leaves this shard (`take_local` for another
    /// shard): this shard's log holds its queue's only durable copy until
    /// the new shard wrote it, so rewrites wait.
    pub(in crate::broker) fn queue_moving_out(&mut self, state: &SessionState) {
        self.queue_leaves_log(state, true);
    }

    /// A session ends here with its queue: what this shard's log holds of
    /// it is dead (its owner writes the session's end), with no record here.
    pub(in crate::broker) fn queue_ending(&mut self, state: &SessionState) {
        self.queue_leaves_log(state, false);
    }

    /// A persisted queue this shard's log holds leaves it, by a move (whose
    /// new shard has yet to write it) or an end.
    fn queue_leaves_log(&mut self, state: &SessionState, moving: bool) {
        if let (Some(d), Some(log)) = (self.durable.as_mut(), state.queue_log()) {
            if log.written_at == self.id.index() {
                d.queues_dropped += 1;
                d.moves_unsettled += usize::from(moving);
            }
        }
    }

    /// How many persisted queues written here ended or moved away (a
    /// counter): while the log is at its limit, the writer rewrites it
    /// when this changed or anything was written since its last rewrite.
    pub fn persisted_queues_dropped(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.queues_dropped)
    }

    /// The new shard wrote a queue that moved from here.
    pub(in crate::broker) fn queue_settled(&mut self) {
        if let Some(d) = self.durable.as_mut() {
            d.moves_unsettled = d.moves_unsettled.saturating_sub(1);
        }
    }

    /// A SUBSCRIBE's user properties carry the dynamic opt-in: the
    /// connection's session queue is selected (`subscriberQueue` Custom with
    /// dynamic Enabled) if it was not. Whether it newly opted in.
    pub(in crate::broker) fn queue_opt_in(
        &mut self,
        conn: ConnId,
        user_properties: &[(ByteString, ByteString)],
    ) -> bool {
        if user_properties.is_empty() {
            return false;
        }
        let Some(d) = self.durable.as_ref() else {
            return false;
        };
        let props = user_properties
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()));
        if !d.policy.opts_in(props) {
            return false;
        }
        match self.conns.get_mut(&conn) {
            Some(c) if !c.queue_opt_in => {
                c.queue_opt_in = true;
                true
            }
            _ => false,
        }
    }

    /// Some sessions' queues may be persisted (`subscriberQueue` is not
    /// None): deliveries then answer their publisher once durable.
    pub(in crate::broker) fn persists_queues(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.policy.queues != crate::config::QueuePolicy::None)
    }

    /// A rewrite (`persist_snapshot`) must wait: a queue that moved away is
    /// not yet durable at its new shard.
    pub fn persist_rewrite_deferred(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.moves_unsettled > 0)
    }

    /// Whether the shard's log is at its limit (half its share of
    /// `persistence.maxSize`):
    /// while it is, persisted queues refuse new QoS 1/2 messages as a full
    /// queue does (the runtime's writer decides, docs/PERSISTENCE.md).
    pub fn set_persist_full(&mut self, full: bool) {
        self.buffer.set_persist_full(full);
    }

    /// The generation of this run's files: queue ids made from it are
    /// unique across restarts (recovery keeps only live queues).
    pub fn set_persist_generation(&mut self, generation: u32) {
        if let Some(d) = self.durable.as_mut() {
            d.generation = u64::from(generation) & 0xff_ffff;
        }
    }

    /// What every persisted queue on this shard owes, by client id, in
    /// order (the simulator compares it with its disk).
    pub fn persisted_queues(&mut self) -> Vec<(ByteString, Vec<bytes::Bytes>)> {
        self.queue_snapshots(|_, _| false)
            .into_iter()
            .filter_map(|q| {
                let id = q.state?.client_id;
                let payloads = q.puts.iter().map(|p| p.queued.message.payload.clone());
                Some((id, payloads.collect()))
            })
            .collect()
    }

    /// The persisted queue of every session on this shard, for a rewrite.
    /// `in_log(queue id, seq)`: whether the log being replaced holds that
    /// message's put (spilled messages are then copied from it).
    pub(super) fn queue_snapshots(
        &mut self,
        in_log: impl Fn(u64, u64) -> bool,
    ) -> Vec<QueueSnapshot> {
        let here = self.id.index();
        let mut out = Vec::new();
        let mut add = |state: &SessionState, lease: &mut Lease<'_>| {
            let Some(log) = state.queue_log().filter(|l| l.written_at == here) else {
                return;
            };
            let queue_id = log.queue_id;
            out.push(whole_queue(state, log, lease, |seq| in_log(queue_id, seq)));
        };
        for c in self.conns.values() {
            if let Some(state) = c.machine.session() {
                add(state, &mut self.buffer.lease(c.buffer_owner));
            }
        }
        for (session, slot) in &self.sessions {
            if let Slot::Offline { state, .. } = slot {
                let owner = self.buffer_keys.owner_of(*session);
                add(state, &mut self.buffer.lease(owner));
            }
        }
        out
    }
}
