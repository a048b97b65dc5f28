//! Per-stream (one publisher as seen by one receiver group) sequence
//! accounting: which sequence numbers arrived, how often, and in what order.
//! Loss is only decided at the end ([`SeqTracker::missing`]) against what the
//! publisher reports it sent and had acknowledged. Memory: one bit per
//! sequence number past the contiguous prefix already received.

use std::collections::VecDeque;

/// Bitset of received sequence numbers with the fully received prefix
/// dropped: `words[0]` covers `base..base + 64`.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    base: u64,
    words: VecDeque<u64>,
    /// Highest sequence number seen, plus one (0 = none yet).
    high: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// QoS 1 messages delivered again with DUP set after a reconnect, their
    /// first delivery not acknowledged in time: allowed [MQTT-4.3.2-1],
    /// [MQTT-4.4.0-1], so counted apart from `duplicates`.
    pub redelivered: u64,
    pub out_of_order: u64,
}

impl SeqTracker {
    /// Records one arrival.
    pub fn record(&mut self, seq: u64) {
        if self.seen(seq) {
            self.duplicates += 1;
            return;
        }
        if seq + 1 < self.high {
            // Arrived after a later message of the same publisher.
            self.out_of_order += 1;
        }
        self.high = self.high.max(seq + 1);
        self.set(seq);
        self.unique += 1;
    }

    /// Records one QoS 1 arrival: `redelivery` (DUP set, and the first
    /// arrival on this connection), one already seen is a redelivery, not
    /// a duplicate; a repeat on the same connection is a duplicate
    /// whatever its flag [MQTT-4.4.0-1].
    pub fn record_at_least_once(&mut self, seq: u64, redelivery: bool) {
        if redelivery && self.seen(seq) {
            self.redelivered += 1;
        } else {
            self.record(seq);
        }
    }

    pub fn seen(&self, seq: u64) -> bool {
        if seq < self.base {
            return true;
        }
        let idx = ((seq - self.base) / 64) as usize;
        self.words
            .get(idx)
            .is_some_and(|w| w & (1u64 << ((seq - self.base) % 64)) != 0)
    }

    fn set(&mut self, seq: u64) {
        let idx = ((seq - self.base) / 64) as usize;
        if idx >= self.words.len() {
            self.words.resize(idx + 1, 0);
        }
        self.words[idx] |= 1u64 << ((seq - self.base) % 64);
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    /// Folds another receiver's view of the same publisher into this one
    /// (members of one shared-subscription group): a sequence number both
    /// received is a duplicate for the group.
    pub fn merge(&mut self, other: &SeqTracker) {
        self.duplicates += other.duplicates;
        self.redelivered += other.redelivered;
        self.out_of_order += other.out_of_order;
        for seq in other.iter_seen() {
            if self.seen(seq) {
                self.duplicates += 1;
            } else {
                self.high = self.high.max(seq + 1);
                self.set(seq);
                self.unique += 1;
            }
        }
    }

    fn iter_seen(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.base).chain(self.words.iter().enumerate().flat_map(move |(i, &w)| {
            let start = self.base + 64 * i as u64;
            (0..64u64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| start + b)
        }))
    }

    /// Sequence numbers below `sent` that never arrived.
    pub fn missing(&self, sent: u64) -> impl Iterator<Item = u64> + '_ {
        (self.base.min(sent)..sent).filter(move |&s| !self.seen(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss_dup_or_reorder() {
        let mut t = SeqTracker::default();
        for s in 0..1000 {
            t.record(s);
        }
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (1000, 0, 0));
        assert_eq!(t.missing(1000).count(), 0);
        // The contiguous prefix is dropped from memory.
        assert!(t.words.len() <= 1);
    }

    #[test]
    fn gap_is_missing_and_late_arrival_is_out_of_order() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 4, 2, 6] {
            t.record(s);
        }
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.missing(8).collect::<Vec<_>>(), vec![5, 7]);
    }

    #[test]
    fn repeated_sequence_is_a_duplicate() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 1, 0, 200, 200] {
            t.record(s);
        }
        assert_eq!((t.unique, t.duplicates), (3, 3));
    }

    #[test]
    fn a_qos1_redelivery_marked_dup_is_allowed_and_an_unmarked_repeat_is_not() {
        let mut t = SeqTracker::default();
        t.record_at_least_once(0, false);
        t.record_at_least_once(1, false);
        // Sent again after a reconnect: DUP set [MQTT-4.4.0-1].
        t.record_at_least_once(1, true);
        t.record_at_least_once(0, false);
        // DUP on a first arrival is just an arrival.
        t.record_at_least_once(2, true);
        assert_eq!((t.unique, t.duplicates, t.redelivered), (3, 1, 1));
    }

    #[test]
    fn merging_group_members_counts_overlap_as_duplicates() {
        let (mut a, mut b) = (SeqTracker::default(), SeqTracker::default());
        for s in (0..100).filter(|s| s % 2 == 0) {
            a.record(s);
        }
        for s in (0..100).filter(|s| s % 2 == 1 || *s == 10) {
            b.record(s);
        }
        a.merge(&b);
        assert_eq!((a.unique, a.duplicates), (100, 1));
        assert_eq!(a.missing(100).count(), 0);
    }
}
