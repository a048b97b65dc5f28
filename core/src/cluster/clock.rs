//! The node's hybrid logical clock and the last-writer-wins order of
//! retained messages across nodes (docs/CLUSTER.md, "Retained messages").
//! Every node stores every retained topic, and two nodes may take PUBLISHes
//! for one topic at once or on two sides of a partition: each retained change
//! made in a cluster carries a stamp, and every node keeps the change with
//! the greatest, so all of them end with the same one whatever order the
//! changes arrive in.

use std::cmp::Ordering as Order;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::session::Message;

/// Bits of a stamp below the physical part: a logical counter that orders
/// changes within one millisecond, or past a clock that fell behind.
const LOGICAL_BITS: u32 = 16;
/// A stamp fits in 56 bits (40 of milliseconds since `STAMP_EPOCH_UNIX_MS`,
/// 34 years), so the persistence log stores it beside an operation code in
/// one `u64`.
pub const STAMP_MAX: u64 = (1 << 56) - 1;
/// 2024-01-01T00:00:00Z: stamps count milliseconds from here.
const STAMP_EPOCH_UNIX_MS: u64 = 1_704_067_200_000;
/// How far ahead of this node's wall clock a peer's stamp may be and still
/// move this node's clock: a peer whose clock is wrong by more (or a
/// hostile stamp near `STAMP_MAX`) must not drag every node's stamps with
/// it. Its change is still ordered by its stamp, so nodes agree.
pub const DRIFT_MAX: Duration = Duration::from_secs(60);

/// One per node, shared by its shards (a retained change on one shard must
/// be stamped after every change any shard of the node has seen). Its
/// physical part is the wall clock the runtime gave it, advanced by the
/// monotonic `now` every call brings, so the core reads no clock.
#[derive(Debug)]
pub struct NodeClock {
    /// The greatest stamp made or seen.
    last: AtomicU64,
    /// An instant and the Unix time in milliseconds at it; `None`: a purely
    /// logical clock (tests, and a wall clock before 2024).
    base: Option<(Instant, u64)>,
}

impl NodeClock {
    /// A clock whose wall time at `at` was `unix_ms`.
    pub fn new(at: Instant, unix_ms: u64) -> NodeClock {
        let base = unix_ms
            .checked_sub(STAMP_EPOCH_UNIX_MS)
            .map(|since_epoch| (at, since_epoch));
        NodeClock {
            last: AtomicU64::new(0),
            base,
        }
    }

    /// A clock with no wall time: stamps only count (a Lamport clock).
    pub fn logical() -> NodeClock {
        NodeClock {
            last: AtomicU64::new(0),
            base: None,
        }
    }

    /// A stamp greater than every stamp this node made or saw, and not
    /// below the wall clock at `now`; never 0.
    pub fn stamp(&self, now: Instant) -> u64 {
        let physical = self.physical(now, Duration::ZERO).unwrap_or(0);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(last.saturating_add(1)).min(STAMP_MAX);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// The wall clock at `now` plus `ahead`, as a stamp with no logical
    /// count; `None` for a logical clock.
    fn physical(&self, now: Instant, ahead: Duration) -> Option<u64> {
        self.base.map(|(at, ms)| {
            let elapsed = (now.saturating_duration_since(at) + ahead).as_millis();
            let ms = ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
            ms.min(STAMP_MAX >> LOGICAL_BITS) << LOGICAL_BITS
        })
    }

    /// A stamp from another node (or this node's disk): this node's next
    /// ones come after it. False, and the clock left alone, for a stamp
    /// more than `DRIFT_MAX` ahead of this node's wall clock.
    pub fn observe(&self, stamp: u64, now: Instant) -> bool {
        let limit = self
            .physical(now, DRIFT_MAX)
            .map_or(STAMP_MAX, |p| p | ((1 << LOGICAL_BITS) - 1));
        if stamp > limit {
            return false;
        }
        self.last.fetch_max(stamp, Ordering::Relaxed);
        true
    }
}

/// Where the retained change `incoming` stands against `stored` (a
/// message, or a clear when its payload is empty): `Greater` replaces it,
/// `Equal` is the same change again (a sync, a link that carries it
/// again), `Less` lost. Unstamped changes (a single node, `$` topics, logs
/// written before stamps) keep the arrival order: always `Greater`.
/// Between stamped ones the greater stamp wins; a tie, which needs two
/// nodes in the same millisecond and count, is broken by content (a clear
/// first, then the payload, the publisher's id and the QoS), so every node
/// breaks it alike.
pub fn order(incoming: &Message, stored: &Message) -> Order {
    if incoming.retain_stamp == 0 || stored.retain_stamp == 0 {
        return Order::Greater;
    }
    fn key(m: &Message) -> (u64, bool, &[u8], &[u8], u8) {
        (
            m.retain_stamp,
            m.payload.is_empty(),
            m.payload.as_ref(),
            m.origin.as_bytes(),
            m.qos as u8,
        )
    }
    key(incoming).cmp(&key(stored))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn message(stamp: u64, payload: &'static [u8]) -> Message {
        Message {
            topic: crate::topic::TopicName::try_from("t").unwrap_or_else(|_| unreachable!()),
            payload: bytes::Bytes::from_static(payload),
            qos: crate::codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            origin: "c".into(),
            retain_stamp: stamp,
        }
    }

    #[test]
    fn stamps_grow_past_what_was_seen_and_follow_the_wall_clock() {
        let t0 = t0();
        let clock = NodeClock::new(t0, STAMP_EPOCH_UNIX_MS + 5);
        let first = clock.stamp(t0);
        assert_eq!(first, 5 << LOGICAL_BITS);
        // Same millisecond: the logical part counts.
        assert_eq!(clock.stamp(t0), first + 1);
        // A peer ahead of this node's wall clock: the next stamp follows it.
        assert!(clock.observe(900 << LOGICAL_BITS, t0));
        assert_eq!(clock.stamp(t0), (900 << LOGICAL_BITS) + 1);
        // The wall clock passes it again.
        let later = clock.stamp(t0 + Duration::from_millis(1000));
        assert_eq!(later, 1005 << LOGICAL_BITS);
        // A stamp further ahead than DRIFT_MAX (a wrong clock, a hostile
        // peer, the format's greatest) is not adopted.
        for wrong in [(70_000 << LOGICAL_BITS), STAMP_MAX, u64::MAX] {
            assert!(!clock.observe(wrong, t0));
        }
        assert_eq!(clock.stamp(t0), later + 1);
    }

    #[test]
    fn a_logical_clock_counts_from_one() {
        let clock = NodeClock::logical();
        let now = t0();
        assert_eq!((clock.stamp(now), clock.stamp(now)), (1, 2));
        assert!(clock.observe(10, now) && !clock.observe(STAMP_MAX + 1, now));
        assert_eq!(clock.stamp(now), 11);
        let before_2024 = NodeClock::new(now, 1000);
        assert_eq!(before_2024.stamp(now), 1);
    }

    #[test]
    fn the_greater_stamp_wins_whichever_arrives_first() {
        let old = message(10, b"old");
        let new = message(11, b"new");
        assert_eq!(order(&new, &old), Order::Greater);
        assert_eq!(order(&old, &new), Order::Less);
        assert_eq!(order(&new, &new.clone()), Order::Equal);
        let clear = message(12, b"");
        assert_eq!(order(&clear, &new), Order::Greater);
        assert_eq!(order(&new, &clear), Order::Less);
        // Unstamped: arrival order, as on a single node.
        assert_eq!(order(&message(0, b"x"), &new), Order::Greater);
        assert_eq!(order(&new, &message(0, b"x")), Order::Greater);
    }

    #[test]
    fn a_tie_is_broken_alike_on_every_node() {
        let (a, b, clear) = (message(7, b"a"), message(7, b"b"), message(7, b""));
        assert_eq!(
            (order(&b, &a), order(&a, &b)),
            (Order::Greater, Order::Less)
        );
        assert_eq!(order(&clear, &b), Order::Greater);
        let qos1 = Message {
            qos: crate::codec::QoS::AtLeastOnce,
            ..a.clone()
        };
        assert_eq!(order(&qos1, &a), Order::Greater);
    }
}
