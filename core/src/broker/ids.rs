//! The identities a shard deals in, as newtypes so one cannot stand in for
//! another: shards, sessions, connections, and the requests that tie a
//! continuation to its answer. Plain values, `Copy`, cheap to hash.

use std::fmt;

/// Index of a shard (`0..shards`); at most 1024 shards (`cardinality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard with index `i`. INVARIANT: `i < shards <= 1024`, checked
    /// when the config is validated.
    pub fn new(i: usize) -> ShardId {
        debug_assert!(i <= usize::from(u16::MAX));
        ShardId(i as u16)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Every shard of a broker with `shards` shards.
    pub fn all(shards: usize) -> impl Iterator<Item = ShardId> {
        (0..shards).map(ShardId::new)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A session's identity within its shard; never reused while the shard
/// runs, so a stale reference (a late mesh message) finds nothing rather
/// than another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One network connection on its shard, from accept until the runtime
/// releases it. Never reused while the shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ties an answer from another shard to the continuation waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);
