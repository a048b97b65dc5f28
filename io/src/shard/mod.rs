//! Running one shard on its glommio executor: join the mesh, open the disk
//! buffer, bind the listeners, then tick (timers, buffer upkeep, reports)
//! until shutdown, when every client is told and writers get a grace
//! period. The broker's decisions are the sans-io `broker::Shard`'s; this
//! only drives it (`Driver`).

pub(crate) mod listen;
mod mesh;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use shardmq_core::broker::{self, MeshMsg, ShardId};
use shardmq_core::buffer::ShardBuffer;
use tracing::{error, info, warn};

use crate::buffer::{Deleter, DiskBuffer, SegmentFile};
use crate::driver::Driver;
use crate::persist::writer::ShardLog;
use crate::persist::{self, PersistRun};
use crate::reload::apply::ShardListeners;
use crate::setup::Reconfig;
use crate::setup::{BufferSetup, ListenerSpec, ServerError};
use crate::telemetry::sys::SysPublisher;
use crate::telemetry::{buffer_report, Telemetry};

pub use crate::telemetry::BufferReport;

/// How often the shard handles deadlines (keep-alive, CONNECT timeout,
/// session expiry, delayed wills, self-test) and does buffer upkeep.
const TICK: Duration = Duration::from_millis(100);
/// How long shutdown waits for connections to flush their DISCONNECT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the shard logs its figures.
const STATS_EVERY: Duration = Duration::from_secs(60);
/// How long shutdown waits for buffer files being deleted off the shard.
const BUFFER_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One shard's session and index figures, published every tick (logs,
/// tests, metrics): what a client can make the shard hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardReport {
    pub sessions_online: u64,
    pub sessions_offline: u64,
    /// Client ids in this shard's slice of the registry.
    pub client_ids: u64,
    /// Entries in this shard's replica of the subscription index (every
    /// shard's subscriptions, plus one self-test probe per shard).
    pub index_entries: u64,
    /// Delayed wills waiting on this shard.
    pub wills: u64,
    /// Accepts that failed (out of file descriptors and the like), and the
    /// connections closed at once because of it.
    pub accept_failures: u64,
    pub accept_shed: u64,
}

/// What every shard starts from, shared by all of them.
#[derive(Debug)]
pub struct ShardSetup {
    pub broker: Arc<broker::ShardConfig>,
    /// Queued bytes a shard keeps in memory (`memoryProfile`).
    pub memory_budget_bytes: u64,
    pub listeners: Vec<ListenerSpec>,
    /// `None` without `diskBackedMessageBuffer`.
    pub buffer: Option<BufferSetup>,
    pub shutdown: Arc<AtomicBool>,
    /// Self-test rounds in which every shard answered (shard 0 counts).
    pub probes_ok: Arc<AtomicU64>,
    pub buffer_reports: Arc<Mutex<Vec<BufferReport>>>,
    pub shard_reports: Arc<Mutex<Vec<ShardReport>>>,
    /// Metrics, health and `$SYS` figures.
    pub telemetry: Arc<Telemetry>,
    /// Per shard: the channel reloads arrive on (each shard takes its own).
    pub reloads: Mutex<Vec<Option<mpsc::Receiver<Arc<Reconfig>>>>>,
    /// `persistence`: recovered state and the shared keys.
    pub persist: Option<PersistRun>,
    /// `cluster`: this node and its peers.
    pub cluster: Option<Arc<crate::cluster::runtime::ClusterSetup>>,
    /// `cluster`: the control plane (the client-id registry).
    pub control: Option<Arc<crate::cluster::control::Control>>,
}

/// The shard's whole life on its executor.
pub async fn run(
    id: usize,
    mesh: MeshBuilder<MeshMsg, Full>,
    setup: Arc<ShardSetup>,
    ready: mpsc::Sender<Result<usize, ServerError>>,
) {
    let Ok((senders, receivers)) = mesh.join().await else {
        let _ = ready.send(Err(ServerError::StartUp { shard: id }));
        return;
    };
    let shards = setup.broker.shards;
    let store = setup
        .buffer
        .as_ref()
        .and_then(|b| open_buffer(id, shards, b));
    let store_bytes = store.as_ref().map_or(0, DiskBuffer::size_max_bytes);
    let buffer = ShardBuffer::new(store, setup.memory_budget_bytes, store_bytes);
    let mut shard = broker::Shard::new(ShardId::new(id), setup.broker.clone(), buffer);
    if let Some(c) = &setup.cluster {
        let peers: Vec<_> = c.peers.iter().map(|p| p.id).collect();
        shard.enable_cluster(
            c.me.id,
            c.incarnation,
            &peers,
            c.clock.clone(),
            Instant::now(),
        );
    }
    let log = match setup
        .persist
        .as_ref()
        .map(|run| start_log(id, run, &mut shard))
    {
        Some(Ok(log)) => log,
        Some(Err(e)) => {
            // Its own error first: the server reports the first one.
            let _ = ready.send(Err(e.into()));
            if let Some(run) = &setup.persist {
                run.failed.store(true, Ordering::Release);
            }
            return;
        }
        None => None,
    };
    let (driver, wakeups) = Driver::new(shard);
    driver.set_persist(log.clone());
    driver.set_control(setup.control.clone());
    mesh::start(&driver, senders, receivers, wakeups);
    if let Some(run) = &setup.persist {
        startup_barrier(id, &driver, run, shards).await;
        if run.failed.load(Ordering::Acquire) {
            // Another shard could not start from its log: the server stops.
            let _ = ready.send(Err(ServerError::StartUp { shard: id }));
            return;
        }
    }
    let bound = match listen::bind(id, &setup.listeners) {
        Ok(bound) => bound,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if let Some(c) = &setup.cluster {
        if let Err(source) = crate::cluster::runtime::start(&driver, c.clone()) {
            let _ = ready.send(Err(ServerError::Bind {
                name: "cluster (internal port)".to_owned(),
                addr: c.bind,
                source,
            }));
            return;
        }
    }
    let mut listeners = ShardListeners::start(&driver, bound);
    let telemetry = &setup.telemetry;
    telemetry.set_bound(id, listeners.names());
    let reloads = setup
        .reloads
        .lock()
        .ok()
        .and_then(|mut r| r.get_mut(id).and_then(Option::take));
    let mut sys = (id == 0).then(SysPublisher::default);
    let mut last_snapshot = Instant::now();
    telemetry.heartbeat(id, last_snapshot);
    let _ = ready.send(Ok(id));
    info!(shard = id, "shard ready");

    let mut last_stats = Instant::now();
    let mut held_peak = 0;
    let mut trims_seen = 0;
    while !setup.shutdown.load(Ordering::SeqCst) {
        glommio::timer::sleep(TICK).await;
        let now = Instant::now();
        driver.with(|s| s.handle_tick(now));
        driver.wake_routes_waiters();
        if let Some(control) = &setup.control {
            cluster_registry(&driver, control, now);
        }
        upkeep_buffer(&driver);
        if let Some(log) = &log {
            log.tick(&driver);
        }
        held_peak = trim_heap(&driver, held_peak);
        crate::trim::collect_if_asked(&mut trims_seen);
        publish_reports(&driver, &setup);
        while let Some(rc) = reloads.as_ref().and_then(|r| r.try_recv().ok()) {
            listeners.apply(&driver, &rc, telemetry).await;
        }
        crate::telemetry::tick(&driver, telemetry, now, &mut last_snapshot);
        if let Some(sys) = sys.as_mut() {
            sys.tick(&driver, telemetry, now);
        }
        crate::oplog::flush(id, false);
        if last_stats.elapsed() >= STATS_EVERY {
            log_stats(&driver);
            last_stats = Instant::now();
        }
    }

    // Graceful shutdown: stop accepting, tell every client, let writers flush.
    listeners.cancel_all().await;
    driver.with(|s| s.shut_down(Instant::now()));
    let stopping = Instant::now();
    let deadline = stopping + SHUTDOWN_GRACE;
    while Instant::now() < deadline && !driver.connections().is_empty() {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let open = driver.connections().len();
    if open > 0 {
        warn!(shard = id, open, "connections still open at the end of the shutdown grace; their last writes may be lost");
    }
    if let (Some(run), Some(log)) = (&setup.persist, &log) {
        drain_persist(id, &driver, run, log, shards, stopping).await;
    }
    log_stats(&driver);
    crate::oplog::flush(id, true);
    close_buffer(&driver, BUFFER_CLOSE_WAIT).await;
    info!(shard = id, "shard stopped");
}

/// Graceful stop: deletes the disk buffer's files and waits (bounded) for
/// the deletes and spare creation still running off the shard, so no
/// segment file outlives the process.
async fn close_buffer(driver: &Rc<Driver>, wait_max: Duration) {
    let open = driver.with(|s| s.buffer_mut().store_mut().map(DiskBuffer::close).is_some());
    if !open {
        return;
    }
    let deadline = Instant::now() + wait_max;
    while driver.peek(|s| s.buffer().store().is_some_and(DiskBuffer::off_shard_work)) {
        if Instant::now() >= deadline {
            warn!(
                shard = driver.id.index(),
                "disk buffer: files still being deleted at exit; the next start removes them"
            );
            return;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens shard `id`'s disk buffer; on failure the shard runs without one
/// (queues bounded by `subscriberQueueLimit`), which the log says plainly.
fn open_buffer(id: usize, shards: usize, setup: &BufferSetup) -> Option<DiskBuffer> {
    let share = setup.spec.size_max_bytes / shards as u64;
    // At least two segments per shard: the segment being written is never
    // reclaimed, so with one the buffer would stay full once it filled.
    let segment_bytes = setup
        .spec
        .segment_bytes
        .min(share / 2)
        .max(crate::buffer::SEGMENT_BYTES_MIN);
    match DiskBuffer::open(
        &setup.spec.data_dir,
        id,
        share,
        segment_bytes,
        setup.encrypt,
        setup.epoch,
    ) {
        Ok(mut disk) => {
            // Runs on the shard's executor: reclaimed segments are deleted on
            // its blocking pool, so the event loop never stalls on an unlink
            // (the pool's thread still shares the shard's CPU when pinned).
            disk.set_deleter(Deleter::new(|doomed| {
                glommio::spawn_local(async move {
                    glommio::executor()
                        .spawn_blocking(move || drop(doomed))
                        .await;
                })
                .detach();
            }));
            info!(
                shard = id,
                dir = %disk.dir().display(),
                max_bytes = share,
                memory_budget_bytes = setup.memory_budget_bytes,
                encryptInternalTraffic = if disk.encrypted() { "Enabled" } else { "Disabled" },
                leftover_segments_removed = disk.removed_at_open(),
                "disk buffer open"
            );
            Some(disk)
        }
        Err(e) => {
            error!(
                shard = id,
                error = %e,
                "disk buffer unavailable: this shard runs WITHOUT spilling \
                 (queues bounded by subscriberQueueLimit only)"
            );
            None
        }
    }
}

/// Seals the pending block and asks for the next segment file off the
/// shard once the buffer is in use (an idle broker keeps no spare files).
fn upkeep_buffer(driver: &Rc<Driver>) {
    let request = driver.with(|s| {
        let d = s.buffer_mut().store_mut()?;
        if let Err(e) = d.flush() {
            warn!(shard = driver.id.index(), error = %e, "disk buffer flush failed");
        }
        let in_use = d.stats().segments > 0;
        in_use.then(|| d.spare_request()).flatten()
    });
    let Some(req) = request else {
        return;
    };
    let driver = driver.clone();
    glommio::spawn_local(async move {
        let file = glommio::executor()
            .spawn_blocking(move || {
                let file = SegmentFile::create(&req.path, req.bytes);
                if let Ok(f) = &file {
                    f.prefault();
                }
                file
            })
            .await;
        driver.with(|s| {
            if let Some(d) = s.buffer_mut().store_mut() {
                d.install_spare(file);
            }
        });
    })
    .detach();
}

/// The cluster registry's side of a tick: sessions another node took
/// over end here, and ids whose sessions ended here, or died with an
/// earlier life of the node, are released.
fn cluster_registry(
    driver: &Rc<Driver>,
    control: &Arc<crate::cluster::control::Control>,
    now: Instant,
) {
    for (id, taken) in control.take_evictions(driver.id.index()) {
        info!(shard = driver.id.index(), client_id = ?id, "cluster: the client connected to another node; its session here ends");
        driver.with(|s| s.evict_client(&id.into(), taken, now));
    }
    for (id, claim) in control.take_earlier_holds(driver.id.index()) {
        driver.with(|s| s.cluster_check_hold(&id.into(), claim));
    }
    for (id, claim) in driver.with(|s| s.poll_cluster_released()) {
        control.release(id.to_string(), claim);
    }
}

/// Gives freed heap back to the system once what the shard holds (queued,
/// retained, partial packets) shrank by `trim::TRIM_AFTER_BYTES` from its
/// peak since the last trim. Returns the new peak.
fn trim_heap(driver: &Rc<Driver>, peak: u64) -> u64 {
    let held = driver.peek(|s| s.held_bytes());
    let peak = peak.max(held);
    if peak - held >= crate::trim::TRIM_AFTER_BYTES {
        crate::trim::trim_soon(driver.id.index(), peak - held);
        held
    } else {
        peak
    }
}

fn publish_reports(driver: &Rc<Driver>, setup: &ShardSetup) {
    let id = driver.id.index();
    let (inv, stats, buffer) = driver.peek(|s| (s.inventory(), s.stats(), buffer_report(s)));
    if let Ok(mut reports) = setup.buffer_reports.lock() {
        if let Some(slot) = reports.get_mut(id) {
            *slot = buffer;
        }
    }
    let report = ShardReport {
        sessions_online: inv.online.len() as u64,
        sessions_offline: inv.offline.len() as u64,
        client_ids: inv.client_ids as u64,
        index_entries: inv.index_entries as u64,
        wills: inv.wills as u64,
        accept_failures: driver.accept_failures.get(),
        accept_shed: driver.shed.get(),
    };
    if let Ok(mut reports) = setup.shard_reports.lock() {
        if let Some(slot) = reports.get_mut(id) {
            *slot = report;
        }
    }
    if id == 0 {
        setup
            .probes_ok
            .store(stats.selftest_rounds_ok, Ordering::Relaxed);
    }
}

fn log_stats(driver: &Rc<Driver>) {
    let shard = driver.id.index();
    driver.peek(|s| {
        let inv = s.inventory();
        let stats = s.stats();
        info!(
            shard,
            connections = inv.connections,
            sessions = inv.online.len() + inv.offline.len(),
            subscriptions = inv.index_entries,
            retained = inv.retained,
            messages_in = stats.messages_in,
            deliveries = stats.deliveries,
            dropped_queue_full = stats.dropped_queue_full,
            accept_failures = driver.accept_failures.get(),
            "shard stats"
        );
        let b = s.buffer();
        if let Some(store) = b.store() {
            let d = store.stats();
            info!(
                shard,
                memory_bytes = b.memory_bytes(),
                memory_budget_bytes = b.memory_budget_bytes(),
                segments = d.segments,
                disk_bytes = d.bytes_used,
                live_records = d.live_records,
                appended = d.appended,
                read = d.read,
                lost = d.corrupt,
                refused = d.refused,
                reclaimed_segments = d.reclaimed_segments,
                "disk buffer stats"
            );
        }
    });
}

/// Before any shard binds its listeners: every shard's index holds every
/// restored session's subscriptions (a barrier with every peer, then a wait
/// for every shard's), so a publish accepted anywhere reaches them. Bounded:
/// a shard that never answers is logged, not waited for forever.
async fn startup_barrier(id: usize, driver: &Rc<Driver>, run: &PersistRun, shards: usize) {
    const STEP: Duration = Duration::from_millis(1);
    const MAX_WAIT: Duration = Duration::from_secs(10);
    let started = Instant::now();
    driver.with(|s| s.start_startup_barrier(Driver::now()));
    let failed = || run.failed.load(Ordering::Acquire);
    while !driver.peek(|s| s.startup_synced()) && started.elapsed() < MAX_WAIT && !failed() {
        glommio::timer::sleep(STEP).await;
    }
    run.synced.fetch_add(1, Ordering::AcqRel);
    while run.synced.load(Ordering::Acquire) < shards && started.elapsed() < MAX_WAIT && !failed() {
        glommio::timer::sleep(STEP).await;
    }
    if started.elapsed() >= MAX_WAIT {
        warn!(shard = id, "persistence: the start-up barrier timed out; restored sessions may miss messages published in the first moments");
    }
}

/// Graceful stop with `persistence`: the sessions just closed write their
/// state at their client id's owner, which may be another shard. Every
/// shard keeps serving the mesh and its log until all shards closed their
/// connections and its own log has nothing left to write (bounded), so a
/// SIGTERM loses no session write.
async fn drain_persist(
    id: usize,
    driver: &Rc<Driver>,
    run: &PersistRun,
    log: &Rc<ShardLog>,
    shards: usize,
    stopping: Instant,
) {
    const STEP: Duration = Duration::from_millis(1);
    // From the stop, for every shard alike: twice the connections' grace,
    // since a peer's closes may take the whole grace. With the buffer's
    // close wait the stop stays under systemd's 10 s TimeoutStopSec.
    let deadline = stopping + 2 * SHUTDOWN_GRACE;
    run.drained.fetch_add(1, Ordering::AcqRel);
    let mut barrier = false;
    loop {
        let all_closed = run.drained.load(Ordering::Acquire) >= shards;
        if all_closed && !barrier {
            // What peers sent before closing (no answer awaited) arrives
            // before their answers to this barrier.
            driver.with(|s| s.start_stop_barrier(Driver::now()));
            barrier = true;
        }
        let idle = barrier
            && driver.peek(|s| s.stop_synced())
            && !log.is_busy()
            && !driver.peek(|s| s.persist_queued());
        if idle {
            break;
        }
        if Instant::now() >= deadline {
            warn!(shard = id, "persistence: writes still pending at exit; session changes of the last moments may be lost");
            return;
        }
        glommio::timer::sleep(STEP).await;
    }
    // Still answering peers' barriers until every shard is through.
    run.settled.fetch_add(1, Ordering::AcqRel);
    while run.settled.load(Ordering::Acquire) < shards && Instant::now() < deadline {
        glommio::timer::sleep(STEP).await;
    }
}

/// Gives the shard the retained messages and sessions it owns from disk,
/// before any client connects, and makes its log writer.
fn start_log(
    id: usize,
    run: &PersistRun,
    shard: &mut broker::Shard<DiskBuffer>,
) -> Result<Option<Rc<ShardLog>>, persist::PersistError> {
    let Some(start) = run.take(id) else {
        return Ok(None);
    };
    let found = start.retained.len();
    let restored = shard.restore_retained(start.retained, Instant::now());
    let sessions = start.sessions.len();
    let now = std::time::Instant::now();
    let mut refused = 0;
    shard.set_persist_generation(start.generation);
    let mut queues = start.queues;
    // What streams from the file below: the queues of sessions restored
    // here, less their windows (restored with them, from memory).
    let mut streamed: HashMap<u64, ByteString> = HashMap::new();
    let mut in_window: HashSet<(u64, u64)> = HashSet::new();
    for record in start.sessions {
        let client_id = record.client_id.clone();
        let queue = queues.remove(&client_id);
        let window: Option<(u64, Vec<u64>)> = queue.as_ref().map(|q| {
            let seqs = q.window.iter().filter(|(_, m)| m.is_some());
            (q.queue_id, seqs.map(|(w, _)| w.seq).collect())
        });
        match shard.restore_persisted(record, queue, now) {
            Ok(()) => {
                if let Some((queue_id, seqs)) = window {
                    in_window.extend(seqs.into_iter().map(|seq| (queue_id, seq)));
                    streamed.insert(queue_id, client_id);
                }
            }
            // Kept by recovery for its due will (or its deadline passed
            // since recovery read it).
            Err(broker::RestoreError::Expired) => {
                refused += 1;
                info!(shard = id, client_id = %client_id,
                    "persistence: a session expired while the broker was down; not restored (a will it had pending is published now)");
            }
            Err(e) => {
                refused += 1;
                warn!(shard = id, client_id = %client_id, error = %e,
                    "persistence: a persisted session was not restored; its end is written");
            }
        }
    }
    let mut queued = 0;
    if !streamed.is_empty() {
        let read = persist::read_queue_puts(&run.spec, &start.log.path, run.epoch, |p| {
            let ours = streamed.get(&p.queue_id) == Some(&p.client_id);
            if ours
                && !in_window.contains(&(p.queue_id, p.seq))
                && shard.restore_queued_message(&p.client_id, p.seq, p.queued)
            {
                queued += 1;
            }
        });
        read?;
        shard.sort_restored_queues();
    }
    if sessions > 0 {
        info!(
            shard = id,
            sessions,
            restored = sessions - refused,
            queued,
            "persistence: sessions restored (offline until their clients return)"
        );
    }
    let log = Rc::new(ShardLog::new(
        run.spec.dir.clone(),
        id as u32,
        run.epoch,
        run.spec.keys.clone(),
        run.budget,
        run.spec.policy.queues != shardmq_core::config::QueuePolicy::None,
        start.log,
    ));
    shard.set_persist_full(log.full_at_start());
    if restored < found {
        warn!(shard = id, found, restored,
            "persistence: some persisted retained messages did not fit and were not restored (retainedMessages.maxSize, each counted with its properties and publisher id; or a topic deeper than 128 levels); they are dropped from disk too");
        // The file must hold what the shard holds: a topic left on disk but
        // not in memory would come back at the next start after a change
        // the shard never wrote (it does not know the topic is on disk).
        log.rewrite_soon();
    }
    Ok(Some(log))
}
