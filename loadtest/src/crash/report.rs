//! The crash run's result: the set-up, each restart (how long the broker
//! was gone, whether the sessions survived, what it lost), the message
//! verdict, and pass/fail. Text and JSON; measuring happens elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::ledger::Tally;
use super::Options;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Restart {
    /// Seconds since publishing started.
    pub kill_at_s: f64,
    /// Kill to the first acknowledged CONNECT (`None`: none in time).
    pub recovery_ms: Option<f64>,
    /// Times the broker was started until one stayed up (1: the first).
    pub starts: u32,
    /// Why the other starts failed (the last line of their log).
    pub start_failures: Vec<String>,
    /// Subscribers that reconnected after this kill (before the next) and
    /// found their session (Session Present 1) or did not.
    pub sessions_resumed: u64,
    pub sessions_lost: u64,
    /// Acknowledged messages sent since the previous kill that never
    /// reached a subscriber, in (message, subscriber) pairs.
    pub lost_acked: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CrashReport {
    pub target: String,
    pub command: String,
    /// Kept with `--keep-dir` (the broker's data and `broker.log`).
    pub data_dir: Option<String>,
    pub protocol: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub rate_per_s: u32,
    pub subscriber_rate_per_s: Option<u32>,
    /// Subscribers were offline this long before each kill.
    pub offline_before_kill_s: f64,
    pub inflight: u16,
    pub payload_bytes: usize,
    pub kills: usize,
    pub kill_every_s: f64,
    pub seed: u64,
    pub publishing_s: f64,
    /// Waiting for acknowledged messages after publishing stopped.
    pub drain_s: f64,
    pub restarts: Vec<Restart>,
    pub counts: Tally,
    /// Acknowledged-and-lost pairs of messages sent after the last kill.
    pub lost_acked_after_last_kill: u64,
    /// Deliveries without our stamp.
    pub foreign: u64,
    /// Client errors by reason (refused connections while the broker is
    /// down are expected).
    pub errors: BTreeMap<String, u64>,
    pub failures: Vec<String>,
}

impl CrashReport {
    pub fn new(o: &Options, dir: &Path) -> CrashReport {
        CrashReport {
            target: o.name.clone(),
            command: o.template.clone(),
            data_dir: Some(dir.display().to_string()),
            protocol: crate::run::protocol_name(o.version).to_owned(),
            publishers: o.publishers,
            subscribers: o.subscribers,
            rate_per_s: o.rate_per_s,
            subscriber_rate_per_s: o.sub_rate,
            offline_before_kill_s: o.offline.as_secs_f64(),
            inflight: o.inflight,
            payload_bytes: o.payload_bytes.max(crate::payload::HEADER_LEN),
            kills: o.kills,
            kill_every_s: o.kill_every.as_secs_f64(),
            seed: o.seed,
            ..CrashReport::default()
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Per kill, when its outage ended: the last subscriber reconnect after
/// it (before the next kill), or the kill itself if none came.
pub fn outage_ends(kills_ns: &[u64], reconnects: &[(u64, bool)]) -> Vec<u64> {
    kills_ns
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            let until = kills_ns.get(i + 1).copied().unwrap_or(u64::MAX);
            reconnects
                .iter()
                .map(|&(at, _)| at)
                .filter(|at| (from..until).contains(at))
                .max()
                .unwrap_or(from)
        })
        .collect()
}

impl CrashReport {
    /// Hands each restart its reconnects and its share of the loss.
    pub fn attribute(&mut self, kills_ns: &[u64], reconnects: &[(u64, bool)]) {
        for (i, r) in self.restarts.iter_mut().enumerate() {
            let from = kills_ns.get(i).copied().unwrap_or(u64::MAX);
            let until = kills_ns.get(i + 1).copied().unwrap_or(u64::MAX);
            for &(_, present) in reconnects
                .iter()
                .filter(|(at, _)| (from..until).contains(at))
            {
                if present {
                    r.sessions_resumed += 1;
                } else {
                    r.sessions_lost += 1;
                }
            }
            r.lost_acked = self.counts.lost_by_kill.get(i).copied().unwrap_or(0);
        }
        self.lost_acked_after_last_kill = self
            .counts
            .lost_by_kill
            .get(kills_ns.len())
            .copied()
            .unwrap_or(0);
    }

    /// Fills `failures`.
    pub fn judge(&mut self, strict: bool) {
        let c = &self.counts;
        if c.acked == 0 {
            self.failures
                .push("nothing was acknowledged: nothing was tested".to_owned());
        }
        if c.lost_acked > 0 {
            self.failures.push(format!(
                "{} acknowledged message(s) never reached every subscriber ({} of {} owed deliveries) [MQTT-4.3.2]",
                c.lost_acked_messages, c.lost_acked, c.owed
            ));
        }
        if strict && c.dup_unmarked > 0 {
            self.failures.push(format!(
                "{} duplicate(s) without DUP or without a reconnect [MQTT-3.3.1-1]",
                c.dup_unmarked
            ));
        }
        if strict && c.out_of_order > 0 {
            self.failures.push(format!(
                "{} message(s) out of order [MQTT-4.6.0-6]",
                c.out_of_order
            ));
        }
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "crash on {}: MQTT {} QoS 1, {} pub -> {} persistent sub, {}/s per publisher{}, inflight {}, {} B; {} kill(s) every ~{:.1} s (seed {}), subscribers offline {:.1} s before each",
            self.target,
            self.protocol,
            self.publishers,
            self.subscribers,
            self.rate_per_s,
            self.subscriber_rate_per_s
                .map_or(String::new(), |r| format!(", subscribers ack {r}/s")),
            self.inflight,
            self.payload_bytes,
            self.kills,
            self.kill_every_s,
            self.seed,
            self.offline_before_kill_s,
        );
        let _ = writeln!(
            s,
            "  {:<8}{:>10}{:>15}{:>8}{:>16}{:>12}",
            "restart", "killed at", "first CONNACK", "starts", "sessions kept", "lost acked"
        );
        let opt_ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
        for (i, r) in self.restarts.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {:<8}{:>10}{:>15}{:>8}{:>16}{:>12}",
                i + 1,
                format!("{:.2} s", r.kill_at_s),
                opt_ms(r.recovery_ms),
                r.starts,
                format!(
                    "{}/{}",
                    r.sessions_resumed,
                    r.sessions_resumed + r.sessions_lost
                ),
                r.lost_acked
            );
            for f in &r.start_failures {
                let _ = writeln!(s, "  {:<8}a start failed: {f}", "");
            }
        }
        let c = &self.counts;
        let _ = writeln!(
            s,
            "  messages     sent {}  acked {}  unacked {} ({} deliveries arrived anyway)  in {:.1} s, drain {:.1} s",
            c.sent, c.acked, c.unacked, c.unacked_arrived, self.publishing_s, self.drain_s
        );
        let _ = writeln!(
            s,
            "  lost acked   {} message(s), {} of {} owed deliveries ({} after the last kill)",
            c.lost_acked_messages, c.lost_acked, c.owed, self.lost_acked_after_last_kill
        );
        let _ = writeln!(
            s,
            "  duplicates   {} redelivered with DUP after a reconnect, {} unmarked",
            c.dup_redelivered, c.dup_unmarked
        );
        let _ = writeln!(s, "  out of order {}", c.out_of_order);
        if self.foreign > 0 {
            let _ = writeln!(s, "  foreign      {}", self.foreign);
        }
        for (reason, n) in &self.errors {
            let _ = writeln!(s, "  error        {n} x {reason}");
        }
        if let Some(d) = &self.data_dir {
            let _ = writeln!(s, "  data dir     {d} (broker.log inside)");
        }
        if self.failures.is_empty() {
            let _ = writeln!(s, "  result       PASS");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "  FAIL         {f}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_and_loss_go_to_the_kill_before_them() {
        let mut r = CrashReport {
            restarts: vec![Restart::default(), Restart::default()],
            counts: Tally {
                acked: 10,
                lost_by_kill: vec![3, 0, 1],
                ..Tally::default()
            },
            ..CrashReport::default()
        };
        r.attribute(
            &[100, 200],
            &[(150, true), (160, false), (250, true), (50, false)],
        );
        let got: Vec<_> = r
            .restarts
            .iter()
            .map(|x| (x.sessions_resumed, x.sessions_lost, x.lost_acked))
            .collect();
        assert_eq!(got, vec![(1, 1, 3), (1, 0, 0)]);
        assert_eq!(r.lost_acked_after_last_kill, 1);
    }

    #[test]
    fn an_outage_lasts_until_the_last_subscriber_is_back() {
        // Kill at 100: subscribers back at 130 and 160; kill at 200: none
        // came back before the run ended.
        let ends = outage_ends(&[100, 200], &[(130, false), (160, false), (90, true)]);
        assert_eq!(ends, vec![160, 200]);
        // A message acknowledged at 150 by the restarted broker, before the
        // second subscriber had its (lost) session back, is the first kill's.
        let t = crate::crash::ledger::tally(&[sent_at(&[150])], &[vec![]], &ends);
        assert_eq!(t.lost_by_kill, vec![1, 0, 0]);
    }

    fn sent_at(at: &[u64]) -> crate::crash::ledger::Sent {
        let mut s = crate::crash::ledger::Sent::default();
        for &a in at {
            let seq = s.push(a);
            s.ack(seq);
        }
        s
    }

    #[test]
    fn loss_fails_unmarked_duplicates_only_when_strict() {
        let counts = Tally {
            acked: 5,
            dup_unmarked: 2,
            ..Tally::default()
        };
        let mut lenient = CrashReport {
            counts: counts.clone(),
            ..CrashReport::default()
        };
        lenient.judge(false);
        assert!(lenient.ok(), "{:?}", lenient.failures);
        let mut strict = CrashReport {
            counts,
            ..CrashReport::default()
        };
        strict.judge(true);
        assert_eq!(strict.failures.len(), 1);
        let mut lossy = CrashReport {
            counts: Tally {
                acked: 5,
                lost_acked: 1,
                lost_acked_messages: 1,
                ..Tally::default()
            },
            ..CrashReport::default()
        };
        lossy.judge(false);
        assert!(!lossy.ok());
    }
}
