//! What the shard holds right now, as numbers for metrics and `$SYS`:
//! gauges computed on demand (once a second by the runtime, never per
//! message), next to the counters of `ShardStats`.

use super::sessions::Slot;
use super::Shard;
use crate::buffer::Store;
use crate::session::SessionState;

/// Point-in-time figures of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Network connections, CONNECT decided or not.
    pub connections: u64,
    pub sessions_online: u64,
    pub sessions_offline: u64,
    /// Subscriptions of the sessions on this shard (online and offline).
    pub subscriptions: u64,
    /// Retained messages this shard owns, and their payload bytes.
    pub retained: u64,
    pub retained_bytes: u64,
    /// In a cluster: stamped clears remembered (`retain::Tombstones`).
    pub retained_tombstones: u64,
    /// Messages waiting in this shard's sessions' queues (in memory or
    /// spilled), and outgoing QoS 1/2 exchanges not yet completed.
    pub queued: u64,
    pub inflight: u64,
    /// Queued bytes held in memory (with a disk buffer).
    pub memory_bytes: u64,
    /// Entries in this shard's replica of the subscription index.
    pub index_entries: u64,
    /// Delayed wills waiting on this shard.
    pub wills: u64,
    pub client_ids: u64,
}

impl<S: Store> Shard<S> {
    /// This shard's gauges: one pass over its sessions.
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            connections: self.conns.len() as u64,
            retained: self.retained.len() as u64,
            retained_bytes: self.retained.bytes(),
            retained_tombstones: self
                .cluster
                .as_deref()
                .map_or(0, |c| c.tombstones.len() as u64),
            memory_bytes: self.buffer.memory_bytes(),
            index_entries: self.index.len() as u64,
            wills: self.wills.len() as u64,
            client_ids: self.registry.len() as u64,
            ..Gauges::default()
        };
        let mut add = |state: &SessionState| {
            g.subscriptions += state.subscription_count() as u64;
            g.queued += state.queued_len() as u64;
            g.inflight += state.inflight_len() as u64;
        };
        let mut online = 0;
        let mut offline = 0;
        for slot in self.sessions.values() {
            match slot {
                Slot::Online(conn) => {
                    online += 1;
                    if let Some(state) = self.conns.get(conn).and_then(|c| c.machine.session()) {
                        add(state);
                    }
                }
                Slot::Offline { state, .. } => {
                    offline += 1;
                    add(state);
                }
            }
        }
        g.sessions_online = online;
        g.sessions_offline = offline;
        g
    }
}
