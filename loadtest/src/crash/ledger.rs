//! Crash-test accounting: for every message a publisher had acknowledged
//! (PUBACK), did it reach every subscriber; which arrived twice, and was
//! the repeat a marked redelivery on a later connection; which overtook a
//! later message of its publisher. Pure data: clients record, `tally` judges.

use serde::Serialize;

/// Sequence numbers past this are not ours (a corrupted or foreign
/// payload): counted, never used to size memory.
pub const SEQ_MAX: u64 = 1 << 26;

/// What one publisher sent, over all its connections.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Per sequence number: when it was written (ns since the run's epoch).
    pub at_ns: Vec<u64>,
    /// Per sequence number: whether the broker acknowledged it (PUBACK
    /// with a success code, §4.3.2).
    pub acked: Vec<bool>,
}

impl Sent {
    /// Records a new message; returns its sequence number.
    pub fn push(&mut self, at_ns: u64) -> u64 {
        self.at_ns.push(at_ns);
        self.acked.push(false);
        self.at_ns.len() as u64 - 1
    }

    pub fn ack(&mut self, seq: u64) {
        if let Some(a) = self.acked.get_mut(seq as usize) {
            *a = true;
        }
    }

    pub fn acked_count(&self) -> u64 {
        self.acked.iter().filter(|a| **a).count() as u64
    }
}

/// How one arrival was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    First,
    /// First arrival after a later message of the same publisher.
    OutOfOrder,
    /// Again, DUP set, on a later connection: a redelivery the protocol
    /// allows after a reconnect [MQTT-4.4.0-1] [MQTT-3.3.1-1].
    Redelivered,
    /// Again without DUP, or on the same connection.
    Unmarked,
    Foreign,
}

/// What one subscriber received from one publisher.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    /// Per sequence number: the subscriber's connection (1-based) on which
    /// it first arrived; 0 = not (yet).
    first_conn: Vec<u32>,
    /// Highest sequence number received, plus one.
    high: u64,
    pub unique: u64,
    pub redelivered: u64,
    pub unmarked: u64,
    pub out_of_order: u64,
}

impl Arrivals {
    /// One PUBLISH carrying `seq`, with the DUP flag `dup`, received on the
    /// subscriber's connection number `conn` (1-based).
    pub fn record(&mut self, seq: u64, dup: bool, conn: u32) -> Arrival {
        if seq >= SEQ_MAX {
            return Arrival::Foreign;
        }
        let i = seq as usize;
        if i >= self.first_conn.len() {
            self.first_conn.resize(i + 1, 0);
        }
        let first = self.first_conn[i];
        if first != 0 {
            if dup && conn > first {
                self.redelivered += 1;
                return Arrival::Redelivered;
            }
            self.unmarked += 1;
            return Arrival::Unmarked;
        }
        self.first_conn[i] = conn.max(1);
        self.unique += 1;
        if seq + 1 < self.high {
            self.out_of_order += 1;
            return Arrival::OutOfOrder;
        }
        self.high = seq + 1;
        Arrival::First
    }

    pub fn has(&self, seq: u64) -> bool {
        self.first_conn.get(seq as usize).is_some_and(|c| *c != 0)
    }
}

/// The verdict over all publishers and subscribers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub acked: u64,
    /// (message, subscriber) pairs owed: acknowledged x subscribers.
    pub owed: u64,
    /// Owed pairs that never arrived: the broker acknowledged the message
    /// and then lost it for that subscriber.
    pub lost_acked: u64,
    /// Acknowledged messages missing at one subscriber or more.
    pub lost_acked_messages: u64,
    /// Never acknowledged (the connection died first): may or may not arrive.
    pub unacked: u64,
    /// (unacknowledged message, subscriber) pairs that arrived anyway.
    pub unacked_arrived: u64,
    pub dup_redelivered: u64,
    pub dup_unmarked: u64,
    pub out_of_order: u64,
    /// Acknowledged-and-lost pairs by the kill that lost them: index i is
    /// messages sent up to the end of kill i's outage (and after kill
    /// i-1's); the last entry counts those sent after the last outage.
    pub lost_by_kill: Vec<u64>,
}

/// Judges `sent` (per publisher) against `received[s][p]` (subscriber s,
/// publisher p). `outages_end_ns` (ns since the run's epoch, ascending):
/// per kill, when its outage ended (the last subscriber back): a message
/// acknowledged by a restarted broker that had forgotten the sessions is
/// lost to that kill as much as one it had queued.
pub fn tally(sent: &[Sent], received: &[Vec<Arrivals>], outages_end_ns: &[u64]) -> Tally {
    let mut t = Tally {
        lost_by_kill: vec![0; outages_end_ns.len() + 1],
        ..Tally::default()
    };
    let empty = Arrivals::default();
    for (p, s) in sent.iter().enumerate() {
        for (seq, (&acked, &at)) in s.acked.iter().zip(&s.at_ns).enumerate() {
            let seq = seq as u64;
            t.sent += 1;
            let got = received
                .iter()
                .filter(|r| r.get(p).unwrap_or(&empty).has(seq))
                .count() as u64;
            let missing = received.len() as u64 - got;
            if !acked {
                t.unacked += 1;
                t.unacked_arrived += got;
                continue;
            }
            t.acked += 1;
            t.owed += received.len() as u64;
            if missing > 0 {
                t.lost_acked += missing;
                t.lost_acked_messages += 1;
                let k = outages_end_ns.partition_point(|&k| k < at);
                t.lost_by_kill[k] += missing;
            }
        }
    }
    for a in received.iter().flatten() {
        t.dup_redelivered += a.redelivered;
        t.dup_unmarked += a.unmarked;
        t.out_of_order += a.out_of_order;
    }
    t
}

/// Whether every acknowledged message has reached every subscriber (the
/// drain can stop early).
pub fn all_acked_arrived(sent: &[Sent], received: &[Vec<Arrivals>]) -> bool {
    let empty = Arrivals::default();
    sent.iter().enumerate().all(|(p, s)| {
        s.acked.iter().enumerate().all(|(seq, &acked)| {
            !acked
                || received
                    .iter()
                    .all(|r| r.get(p).unwrap_or(&empty).has(seq as u64))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(n: u64, unacked: &[u64], every_ns: u64) -> Sent {
        let mut s = Sent::default();
        for i in 0..n {
            let seq = s.push(i * every_ns);
            if !unacked.contains(&seq) {
                s.ack(seq);
            }
        }
        s
    }

    #[test]
    fn acknowledged_message_missing_at_one_subscriber_is_lost_and_blamed_on_its_kill() {
        // One publisher, 10 messages 100 ns apart, 7 never acknowledged;
        // kills at 350 ns and 750 ns.
        let s = vec![sent(10, &[7], 100)];
        let mut a = Arrivals::default();
        let mut b = Arrivals::default();
        for seq in 0..10 {
            a.record(seq, false, 1);
            // b misses 3 (acked, sent before the first kill) and 7
            // (unacknowledged: allowed) and 8 (acked, after the second kill).
            if ![3, 7, 8].contains(&seq) {
                b.record(seq, false, 1);
            }
        }
        let t = tally(&s, &[vec![a], vec![b]], &[350, 750]);
        assert_eq!((t.sent, t.acked, t.unacked), (10, 9, 1));
        assert_eq!(t.owed, 18);
        assert_eq!((t.lost_acked, t.lost_acked_messages), (2, 2));
        assert_eq!(t.unacked_arrived, 1, "a got the unacknowledged 7");
        assert_eq!(t.lost_by_kill, vec![1, 0, 1]);
        assert_eq!(
            (t.dup_redelivered, t.dup_unmarked, t.out_of_order),
            (0, 0, 0)
        );
    }

    #[test]
    fn unacknowledged_message_may_be_missing_everywhere() {
        let s = vec![sent(3, &[2], 1)];
        let mut a = Arrivals::default();
        a.record(0, false, 1);
        a.record(1, false, 1);
        assert!(all_acked_arrived(&s, &[vec![a.clone()]]));
        let t = tally(&s, &[vec![a]], &[]);
        assert_eq!((t.lost_acked, t.unacked, t.unacked_arrived), (0, 1, 0));
    }

    #[test]
    fn repeats_count_as_redelivered_only_with_dup_on_a_later_connection() {
        let mut a = Arrivals::default();
        assert_eq!(a.record(0, false, 1), Arrival::First);
        assert_eq!(a.record(1, false, 1), Arrival::First);
        // After a reconnect the broker resends 0 marked DUP: allowed.
        assert_eq!(a.record(0, true, 2), Arrival::Redelivered);
        // 1 again without DUP after the reconnect: not marked.
        assert_eq!(a.record(1, false, 2), Arrival::Unmarked);
        // DUP on the connection that already got it: no reconnect happened
        // in between, so nothing justified a resend.
        assert_eq!(a.record(2, false, 2), Arrival::First);
        assert_eq!(a.record(2, true, 2), Arrival::Unmarked);
        assert_eq!((a.unique, a.redelivered, a.unmarked), (3, 1, 2));
        let t = tally(&[sent(3, &[], 1)], &[vec![a]], &[]);
        assert_eq!((t.dup_redelivered, t.dup_unmarked, t.lost_acked), (1, 2, 0));
    }

    #[test]
    fn a_late_first_arrival_is_out_of_order_not_a_duplicate() {
        let mut a = Arrivals::default();
        for seq in [0, 2, 1, 3] {
            a.record(seq, false, 1);
        }
        assert_eq!((a.unique, a.out_of_order, a.unmarked), (4, 1, 0));
    }

    #[test]
    fn a_wild_sequence_number_is_foreign_and_allocates_nothing() {
        let mut a = Arrivals::default();
        assert_eq!(a.record(u64::MAX, false, 1), Arrival::Foreign);
        assert_eq!(a.record(SEQ_MAX, true, 1), Arrival::Foreign);
        assert!(a.first_conn.is_empty());
    }

    #[test]
    fn a_subscriber_that_got_nothing_loses_every_acknowledged_message() {
        let s = vec![sent(5, &[], 1), sent(4, &[0], 1)];
        let t = tally(&s, &[vec![]], &[]);
        assert_eq!((t.acked, t.lost_acked, t.lost_acked_messages), (8, 8, 8));
        assert!(!all_acked_arrived(&s, &[vec![]]));
    }
}
