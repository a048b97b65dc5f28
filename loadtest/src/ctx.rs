//! State shared by every client task of one run: the clock (one monotonic
//! epoch for the whole process, so publisher and subscriber timestamps
//! compare), the phase boundaries, live counters, error counts and the
//! latency histogram. Tasks write here; `run` reads it at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use shardmq_core::codec::QoS;
use tokio::time::Instant;

use crate::client::{ClientError, Connector};
use crate::spec::StampMode;

/// Latency values above this are clamped (recorded as the maximum).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;

#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    /// Received and not a duplicate: what early drain completion compares.
    pub unique: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct RunCtx {
    epoch: Instant,
    /// Publishing starts (warm-up included).
    pub start_ns: u64,
    /// Warm-up ends: the measured window starts.
    pub warm_end_ns: u64,
    /// Publishing stops: the measured window ends.
    pub stop_ns: u64,
    /// Publishers give up waiting for acknowledgements here.
    pub ack_deadline: Instant,
    pub qos: QoS,
    pub payload_bytes: usize,
    /// Publish with RETAIN set (each publisher replaces its topic's
    /// retained message: the persistence benchmark).
    pub retain: bool,
    /// Gap between one publisher's messages; `None` = unlimited.
    pub interval_ns: Option<u64>,
    /// Publishers spread their schedules over one interval (`--stagger`):
    /// how many share it.
    pub stagger: Option<u32>,
    pub inflight: u16,
    pub stamp: StampMode,
    pub connector: Connector,
    /// Precise wake-ups for the open-loop schedule (`None`: unlimited rate,
    /// or the pacer thread could not start and tokio's timer is used).
    pub pacer: Option<crate::pacer::Pacer>,
    pub counters: Counters,
    errors: Mutex<BTreeMap<String, u64>>,
    hist: Mutex<Histogram<u64>>,
}

/// Phase lengths from the start of publishing.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub lead_in: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
}

impl RunCtx {
    pub fn new(
        connector: Connector,
        phases: Phases,
        qos: QoS,
        payload_bytes: usize,
        rate_per_s: Option<u32>,
        inflight: u16,
        stamp: StampMode,
    ) -> RunCtx {
        let epoch = Instant::now();
        let ns = |d: Duration| d.as_nanos() as u64;
        let start_ns = ns(phases.lead_in);
        let warm_end_ns = start_ns + ns(phases.warmup);
        let stop_ns = warm_end_ns + ns(phases.duration);
        RunCtx {
            epoch,
            start_ns,
            warm_end_ns,
            stop_ns,
            ack_deadline: epoch + Duration::from_nanos(stop_ns) + phases.drain,
            qos,
            payload_bytes,
            retain: false,
            interval_ns: rate_per_s.map(|r| 1_000_000_000 / u64::from(r.max(1))),
            stagger: None,
            inflight,
            stamp,
            connector,
            pacer: rate_per_s.and_then(|_| crate::pacer::Pacer::start().ok()),
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            hist: Mutex::new(new_histogram()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    pub fn in_window(&self, ns: u64) -> bool {
        ns >= self.warm_end_ns && ns < self.stop_ns
    }

    pub fn error(&self, e: &ClientError) {
        self.error_key(e.reason());
    }

    pub fn error_key(&self, key: String) {
        Counters::add(&self.counters.errors, 1);
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(key).or_default() += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Adds a batch of latencies (ns) to the run's histogram.
    pub fn record_latencies(&self, batch: &mut Vec<u64>) {
        if let Ok(mut h) = self.hist.lock() {
            for &v in batch.iter() {
                h.saturating_record(v.clamp(1, LATENCY_NS_MAX));
            }
        }
        batch.clear();
    }

    pub fn histogram(&self) -> Histogram<u64> {
        self.hist
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_histogram())
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // INVARIANT: constant bounds (1 ns..1 min, 3 significant digits) that
    // hdrhistogram accepts; nothing a user or broker controls.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant histogram bounds are valid")
}
