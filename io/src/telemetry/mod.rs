//! What the operator can see of a running broker. Shards count in plain
//! fields on their own thread (`broker::ShardStats`, `counters`); once a
//! second each copies its figures into `Telemetry` (one lock per shard per
//! second), and stamps a heartbeat every tick. The metrics thread (`http`)
//! renders from there, off the shards' hot path; shard 0 publishes the
//! `$SYS` topics (`sys`) from the same figures.

pub mod counters;
pub mod http;
pub mod process;
pub mod render;
pub mod sys;
pub mod watchdog;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use shardmq_auth::ReloadableCert;
use shardmq_core::broker::{Gauges, ShardStats};

use crate::buffer::BufferStats;
use crate::driver::Driver;
use counters::ListenerCounts;

/// How often a shard copies its figures out.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// A shard whose heartbeat is older than this is not ready: its tick is
/// 100 ms, so this is a shard stuck for 20 ticks.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(2);

/// One shard's figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    pub stats: ShardStats,
    pub gauges: Gauges,
    pub buffer: BufferReport,
    /// The persisted retained log (zeros without `persistence`).
    pub persist: crate::persist::writer::LogStats,
    /// Publishers' acknowledgements waiting for the disk.
    pub persist_waiting: u64,
    /// Persisted sessions whose client ids this shard owns (on disk).
    pub persist_sessions: u64,
    /// Per listener name (every listener this shard ever served).
    pub listeners: BTreeMap<String, ListenerCounts>,
}

/// A listener as the current config has it, for readiness and metrics.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub name: String,
    /// Shards that should accept on it; `None`: all.
    pub shards: Option<Vec<usize>>,
    /// The server certificate (TLS ports), for its not-after.
    pub cert: Option<Arc<ReloadableCert>>,
}

/// Shared by the shards, the metrics thread, the binary and tests.
#[derive(Debug)]
pub struct Telemetry {
    pub started: Instant,
    pub started_wall: SystemTime,
    shards: usize,
    /// Per shard: milliseconds since `started` at its last tick, plus one
    /// (0: never ticked). Each shard writes only its own slot.
    heartbeats: Vec<AtomicU64>,
    snapshots: Mutex<Vec<ShardSnapshot>>,
    /// Per shard: the listeners it has bound right now.
    bound: Mutex<Vec<Vec<String>>>,
    listeners: Mutex<Vec<ListenerInfo>>,
    /// `diagnostics.sys.intervalSeconds` in ms; 0: no `$SYS` topics.
    sys_interval_ms: AtomicU64,
    /// What the persistence recovery at this start found; unset without
    /// `persistence`.
    recovery: std::sync::OnceLock<crate::persist::Recovered>,
}

impl Telemetry {
    pub fn new(shards: usize, listeners: Vec<ListenerInfo>) -> Telemetry {
        Telemetry {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            shards,
            heartbeats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            snapshots: Mutex::new(vec![ShardSnapshot::default(); shards]),
            bound: Mutex::new(vec![Vec::new(); shards]),
            listeners: Mutex::new(listeners),
            sys_interval_ms: AtomicU64::new(0),
            recovery: std::sync::OnceLock::new(),
        }
    }

    /// Once, at the start, when `persistence` is configured.
    pub fn set_recovery(&self, recovered: crate::persist::Recovered) {
        let _ = self.recovery.set(recovered);
    }

    pub fn recovery(&self) -> Option<crate::persist::Recovered> {
        self.recovery.get().cloned()
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// `$SYS` publishing interval; `None` turns it off (live).
    pub fn set_sys_interval(&self, interval: Option<Duration>) {
        let ms = interval.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.sys_interval_ms.store(ms, Ordering::Relaxed);
    }

    pub fn sys_interval(&self) -> Option<Duration> {
        match self.sys_interval_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub fn heartbeat(&self, shard: usize, now: Instant) {
        if let Some(slot) = self.heartbeats.get(shard) {
            let ms = now.saturating_duration_since(self.started).as_millis();
            slot.store(
                u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1,
                Ordering::Relaxed,
            );
        }
    }

    /// How long ago each shard last ticked (`None`: never).
    pub fn heartbeat_ages(&self, now: Instant) -> Vec<Option<Duration>> {
        let since = now.saturating_duration_since(self.started);
        self.heartbeats
            .iter()
            .map(|h| match h.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(since.saturating_sub(Duration::from_millis(ms - 1))),
            })
            .collect()
    }

    pub fn store_snapshot(&self, shard: usize, snapshot: ShardSnapshot) {
        if let Ok(mut all) = self.snapshots.lock() {
            if let Some(slot) = all.get_mut(shard) {
                *slot = snapshot;
            }
        }
    }

    pub fn snapshots(&self) -> Vec<ShardSnapshot> {
        self.snapshots.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn set_bound(&self, shard: usize, names: Vec<String>) {
        if let Ok(mut all) = self.bound.lock() {
            if let Some(slot) = all.get_mut(shard) {
                *slot = names;
            }
        }
    }

    pub fn set_listeners(&self, listeners: Vec<ListenerInfo>) {
        if let Ok(mut l) = self.listeners.lock() {
            *l = listeners;
        }
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Ready: every shard ticked within `HEARTBEAT_STALE` and every
    /// listener of the current config is bound on every shard that serves
    /// it. `Err` lists what is not.
    pub fn readiness(&self, now: Instant) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (shard, age) in self.heartbeat_ages(now).into_iter().enumerate() {
            match age {
                None => problems.push(format!("shard {shard}: not started")),
                Some(age) if age > HEARTBEAT_STALE => problems.push(format!(
                    "shard {shard}: no heartbeat for {:.1} s",
                    age.as_secs_f64()
                )),
                Some(_) => {}
            }
        }
        let bound = self.bound.lock().map(|b| b.clone()).unwrap_or_default();
        for l in self.listeners() {
            for shard in 0..self.shards {
                let serves = l.shards.as_ref().is_none_or(|s| s.contains(&shard));
                let has = bound.get(shard).is_some_and(|b| b.contains(&l.name));
                if serves && !has {
                    problems.push(format!("listener {}: not bound on shard {shard}", l.name));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Called every tick by each shard: the heartbeat always, the snapshot
/// once `SNAPSHOT_EVERY` has passed since `last`.
pub fn tick(driver: &Rc<Driver>, telemetry: &Telemetry, now: Instant, last: &mut Instant) {
    let shard = driver.id.index();
    telemetry.heartbeat(shard, now);
    if now.saturating_duration_since(*last) < SNAPSHOT_EVERY {
        return;
    }
    *last = now;
    telemetry.store_snapshot(shard, snapshot(driver));
}

/// This shard's figures now.
pub fn snapshot(driver: &Rc<Driver>) -> ShardSnapshot {
    let (stats, gauges, buffer, persist_waiting, persist_sessions) = driver.peek(|s| {
        (
            s.stats(),
            s.gauges(),
            buffer_report(s),
            s.durable_waiting() as u64,
            s.persisted_sessions() as u64,
        )
    });
    ShardSnapshot {
        stats,
        gauges,
        buffer,
        persist: driver.persist_stats(),
        persist_waiting,
        persist_sessions,
        listeners: driver.listener_counts(),
    }
}

/// One shard's disk buffer figures, published every tick (logs, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferReport {
    /// The shard runs with a disk buffer (configured and opened).
    pub open: bool,
    pub encrypted: bool,
    pub disk: BufferStats,
    /// Queued bytes held in memory (`memory_cost`).
    pub memory_bytes: u64,
    pub dropped_queue_full: u64,
}

/// The shard's disk buffer figures (`open: false` without a buffer).
pub(crate) fn buffer_report(s: &crate::driver::BrokerShard) -> BufferReport {
    let b = s.buffer();
    let mut report = BufferReport {
        memory_bytes: b.memory_bytes(),
        dropped_queue_full: s.stats().dropped_queue_full,
        ..BufferReport::default()
    };
    if let Some(d) = b.store() {
        report.open = true;
        report.encrypted = d.encrypted();
        report.disk = d.stats();
    }
    report
}
