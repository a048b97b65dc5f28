//! The result of one run: what was measured, what went wrong, and whether
//! the broker was correct. Printing (a human table) and JSON live here;
//! measuring does not.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::subscriber::DrainStats;
use crate::procstat::ProcUsage;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyUs {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencyUs {
    /// From a histogram of nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> LatencyUs {
        if h.is_empty() {
            return LatencyUs::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencyUs {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub target: String,
    pub scenario: String,
    pub protocol: String,
    pub qos: u8,
    pub payload_bytes: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub clients: usize,
    pub rate_per_s: Option<u32>,
    pub inflight: u16,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Connections that got a CONNACK (and SUBACK for subscribers).
    pub connected: u64,
    pub connect_failed: u64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// Deliveries the broker owed: confirmed (or, at QoS 0, sent) messages
    /// times the receiver groups that subscribed to them.
    pub expected: u64,
    pub lost: u64,
    /// Owed-if-confirmed messages that were never confirmed nor delivered.
    pub unconfirmed: u64,
    pub duplicated: u64,
    /// QoS 1 redeliveries with DUP after a reconnect (allowed; not failures).
    #[serde(default)]
    pub redelivered: u64,
    pub out_of_order: u64,
    /// Deliveries to a receiver that did not subscribe to them, or without
    /// a stamp.
    pub unexpected: u64,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub received_per_s: f64,
    /// End to end (messaging scenarios) or CONNECT to CONNACK (conn-storm).
    pub latency_us: LatencyUs,
    pub errors: BTreeMap<String, u64>,
    pub broker: Option<ProcUsage>,
    pub harness: Option<ProcUsage>,
    pub connects_per_s: Option<f64>,
    /// idle: connections still open at the end, and broker memory per
    /// connection over its baseline.
    pub held: Option<u64>,
    pub broker_kib_per_conn: Option<f64>,
    pub drain: Option<DrainStats>,
    pub drain_per_s: Option<f64>,
    /// Correctness failures; empty means the run passed.
    pub failures: Vec<String>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} on {}: MQTT {} QoS {}, {} B payload, {} pub / {} sub{}, rate {}, inflight {}, {:.1} s (+{:.1} s warm-up)",
            self.scenario,
            self.target,
            self.protocol,
            self.qos,
            self.payload_bytes,
            self.publishers,
            self.subscribers,
            if self.clients > 0 { format!(" / {} clients", self.clients) } else { String::new() },
            self.rate_per_s.map_or("unlimited".to_owned(), |r| format!("{r}/s per publisher")),
            self.inflight,
            self.duration_s,
            self.warmup_s,
        );
        let _ = writeln!(
            s,
            "  connections   {} ok, {} failed",
            self.connected, self.connect_failed
        );
        if let Some(c) = self.connects_per_s {
            let _ = writeln!(s, "  connects/s    {c:.0}");
        }
        if let Some(h) = self.held {
            let _ = writeln!(s, "  held          {h}");
        }
        if let Some(k) = self.broker_kib_per_conn {
            let _ = writeln!(s, "  broker memory {k:.1} KiB per connection");
        }
        if self.sent > 0 || self.received > 0 {
            let _ = writeln!(
                s,
                "  {:<12}{:>14}{:>14}{:>14}",
                "", "sent", "acked", "received"
            );
            let _ = writeln!(
                s,
                "  {:<12}{:>14}{:>14}{:>14}",
                "msgs", self.sent, self.acked, self.received
            );
            let _ = writeln!(
                s,
                "  {:<12}{:>14.0}{:>14.0}{:>14.0}",
                "msgs/s", self.sent_per_s, self.acked_per_s, self.received_per_s
            );
            let _ = writeln!(
                s,
                "  correctness  expected {} lost {} dup {} redelivered {} out-of-order {} unconfirmed {} unexpected {}",
                self.expected, self.lost, self.duplicated, self.redelivered, self.out_of_order, self.unconfirmed, self.unexpected
            );
        }
        let l = &self.latency_us;
        if l.count > 0 {
            let _ = writeln!(
                s,
                "  latency µs   p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
        }
        if let Some(d) = &self.drain {
            let _ = writeln!(
                s,
                "  drain        session present {}, backlog {} msgs in {}{}{}",
                d.session_present,
                d.backlog,
                d.drain_s
                    .map_or("(not caught up)".to_owned(), |t| format!("{t:.3} s")),
                self.drain_per_s
                    .map_or(String::new(), |r| format!(" = {r:.0} msgs/s")),
                d.first_s.map_or(String::new(), |t| format!(
                    ", first after {:.1} ms",
                    t * 1e3
                )),
            );
        }
        for (who, u) in [("broker", &self.broker), ("harness", &self.harness)] {
            if let Some(u) = u {
                let _ = writeln!(
                    s,
                    "  {who:<12} CPU {:.0}%  RSS {:.1} MiB (peak {:.1})",
                    u.cpu_pct, u.rss_mib, u.rss_mib_peak
                );
            }
        }
        for (reason, n) in &self.errors {
            let _ = writeln!(s, "  error        {n} x {reason}");
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
