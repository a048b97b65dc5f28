//! Connection scenarios: `conn-storm` (connect N clients as fast as the
//! concurrency allows, report connects/s and CONNECT->CONNACK latency) and
//! `idle` (hold N connections with keep-alive pings for the duration,
//! report how many the broker kept and its memory per connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardmq_core::codec::{Packet, QoS};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::client::{ClientError, Conn, Timer, Wake};
use crate::ctx::{Phases, RunCtx};
use crate::procstat::Sampler;
use crate::report::{LatencyUs, RunReport};
use crate::run::{connector, report_for, run_tag, RunError};
use crate::spec::{RunSpec, Scenario, StampMode, Target};

#[derive(Debug, Default)]
struct Tally {
    connected: AtomicU64,
    failed: AtomicU64,
    live: AtomicU64,
    last_connect_ns: AtomicU64,
}

/// Keeps one connection open (answering nothing, pinging on keep-alive)
/// until `stop` changes or the broker drops it.
async fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>) -> Result<(), ClientError> {
    loop {
        conn.ping_if_due(Instant::now())?;
        let due = conn.ping_due();
        match conn.pump(due.map(Timer::Coarse), Some(&mut stop)).await? {
            Wake::Stop => {
                conn.disconnect(Duration::from_millis(500)).await;
                return Ok(());
            }
            Wake::Read => {
                while let Some(p) = conn.try_decode()? {
                    match p {
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason)),
                        other => return Err(ClientError::Unexpected(other.packet_type())),
                    }
                }
            }
            Wake::Wrote | Wake::Timer => {}
        }
    }
}

pub async fn run(spec: &RunSpec, target: &Target) -> Result<RunReport, RunError> {
    let connector = connector(spec, target)?;
    let mut report = report_for(spec, target);
    report.publishers = 0;
    report.subscribers = 0;
    let id_base = run_tag(&spec.topic_prefix).replace('/', "-");
    let broker = spec.broker_pid.map(|pid| (pid, Sampler::start(pid, true)));
    let harness = Sampler::start(std::process::id(), false);
    if let Some((pid, s)) = &broker {
        s.mark(*pid, true);
    }
    let baseline_mib = broker.as_ref().and_then(|(_, s)| s.rss_mib_now());
    // The ctx is used for its clock, error counts and histogram only.
    let phases = Phases {
        lead_in: Duration::ZERO,
        warmup: Duration::ZERO,
        duration: spec.duration,
        drain: Duration::ZERO,
    };
    let ctx = Arc::new(RunCtx::new(
        connector.clone(),
        phases,
        QoS::AtMostOnce,
        0,
        None,
        1,
        StampMode::Actual,
    ));
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let n = spec.clients;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (ctx, tally, permits, stop, c) = (
            ctx.clone(),
            tally.clone(),
            permits.clone(),
            stop_rx.clone(),
            connector.clone(),
        );
        let client_id = format!("{id_base}-c{i}");
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let t0 = ctx.now_ns();
            let conn = c.connect(&client_id, true).await;
            drop(permit);
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    ctx.error(&e);
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let t1 = ctx.now_ns();
            ctx.record_latencies(&mut vec![t1 - t0]);
            tally.last_connect_ns.fetch_max(t1, Ordering::Relaxed);
            tally.connected.fetch_add(1, Ordering::Relaxed);
            tally.live.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = hold(conn, stop).await {
                ctx.error(&e);
            }
            tally.live.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    // Connecting is bounded by the run's duration, whatever the broker does.
    let connect_deadline = started + spec.duration;
    let done = |t: &Tally| {
        t.connected.load(Ordering::Relaxed) + t.failed.load(Ordering::Relaxed) >= n as u64
    };
    while !done(&tally) && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connected = tally.connected.load(Ordering::Relaxed);
    report.connected = connected;
    report.connect_failed = n as u64 - connected;
    let connect_s =
        Duration::from_nanos(tally.last_connect_ns.load(Ordering::Relaxed)).as_secs_f64();
    if connected > 0 && connect_s > 0.0 {
        report.connects_per_s = Some(connected as f64 / connect_s);
    }
    report.latency_us = LatencyUs::from_ns(&ctx.histogram());
    let window_start = Instant::now();
    if spec.scenario == Scenario::Idle {
        tokio::time::sleep_until(window_start.max(started + spec.duration)).await;
        let held = tally.live.load(Ordering::Relaxed);
        report.held = Some(held);
        if let Some((pid, s)) = &broker {
            s.mark(*pid, true);
            if let (Some(base), Some(now)) = (baseline_mib, s.rss_mib_now()) {
                report.broker_kib_per_conn =
                    (held > 0).then(|| (now - base).max(0.0) * 1024.0 / held as f64);
            }
        }
    }
    let window_end = Instant::now();
    harness.mark(std::process::id(), false);
    let _ = stop_tx.send(true);
    let grace = Instant::now() + Duration::from_secs(3);
    for t in tasks {
        if tokio::time::timeout_at(grace, t).await.is_err() {
            ctx.error_key("client did not stop".to_owned());
        }
    }
    report.errors = ctx.errors();
    report.broker = broker
        .as_ref()
        .and_then(|(_, s)| s.usage(started, window_end.max(window_start)));
    report.harness = harness.usage(started, window_end);
    if connected == 0 {
        report.failures.push("nothing could connect".to_owned());
    }
    Ok(report)
}
