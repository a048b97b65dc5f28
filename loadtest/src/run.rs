//! One run of one scenario against one target: plan the clients, connect
//! them, run the phases (warm-up, measured window, drain), and account for
//! every message. Correctness is decided here: what each receiver group was
//! owed against what it got. Connection scenarios live in `conns`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use shardmq_core::codec::{ProtocolVersion, QoS};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::client::publisher::{self, PubOutcome};
use crate::client::subscriber::{self, SubOutcome, SubPlan, Throttle};
use crate::client::{ClientError, Connector, Tls, TlsSetupError};
use crate::ctx::{Counters, Phases, RunCtx};
use crate::procstat::Sampler;
use crate::report::{LatencyUs, RunReport};
use crate::spec::{RunSpec, Scenario, Target};
use crate::tracker::SeqTracker;

/// Time between connecting and the first scheduled message, so every task
/// is spawned and waiting when the schedule starts.
const LEAD_IN: Duration = Duration::from_millis(100);
/// Receive Maximum of the slow-reader's subscriber (v5).
pub const SLOW_READER_RECEIVE_MAX: u16 = 1000;
/// How long stopped subscribers get to say goodbye.
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("invalid run: {0}")]
    Invalid(String),
    #[error("--sub-thread: starting the subscribers' thread: {0}")]
    SubThread(std::io::Error),
}

/// Receivers that together should get each message of `publishers` once.
#[derive(Debug, Clone)]
struct Group {
    members: Vec<usize>,
    publishers: Vec<u32>,
}

#[derive(Debug, Clone)]
struct PubPlan {
    id: u32,
    client_id: String,
    topic: String,
}

#[derive(Debug)]
struct Plan {
    subs: Vec<SubPlan>,
    pubs: Vec<PubPlan>,
    groups: Vec<Group>,
}

/// A prefix unique to this run, so retained messages and persistent
/// sessions of earlier runs cannot leak into it.
pub fn run_tag(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}/{}-{nanos:x}-{n}", std::process::id())
}

fn plan(spec: &RunSpec, tag: &str) -> Plan {
    let qos = spec.qos;
    let id_base = tag.replace('/', "-");
    let sub = |idx: usize, filter: String| SubPlan {
        idx,
        client_id: format!("{id_base}-s{idx}"),
        filter,
        qos,
        offline: None,
        throttle: None,
    };
    let pubs_on = |n: usize, topic: &dyn Fn(usize) -> String| -> Vec<PubPlan> {
        (0..n)
            .map(|i| PubPlan {
                id: i as u32,
                client_id: format!("{id_base}-p{i}"),
                topic: topic(i),
            })
            .collect()
    };
    let all = |n: usize| (0..n as u32).collect::<Vec<_>>();
    match spec.scenario {
        Scenario::FanIn
        | Scenario::SlowSub
        | Scenario::SlowReader
        | Scenario::ConnStorm
        | Scenario::Idle => Plan {
            subs: (0..spec.subscribers)
                .map(|i| sub(i, format!("{tag}/in/+")))
                .collect(),
            pubs: pubs_on(spec.publishers, &|i| format!("{tag}/in/{i}")),
            groups: (0..spec.subscribers)
                .map(|i| Group {
                    members: vec![i],
                    publishers: all(spec.publishers),
                })
                .collect(),
        },
        Scenario::FanOut => Plan {
            subs: (0..spec.subscribers)
                .map(|i| sub(i, format!("{tag}/out")))
                .collect(),
            pubs: pubs_on(spec.publishers, &|_| format!("{tag}/out")),
            groups: (0..spec.subscribers)
                .map(|i| Group {
                    members: vec![i],
                    publishers: all(spec.publishers),
                })
                .collect(),
        },
        Scenario::P2p => {
            let n = spec.publishers.min(spec.subscribers);
            Plan {
                subs: (0..n).map(|i| sub(i, format!("{tag}/p2p/{i}"))).collect(),
                pubs: pubs_on(n, &|i| format!("{tag}/p2p/{i}")),
                groups: (0..n)
                    .map(|i| Group {
                        members: vec![i],
                        publishers: vec![i as u32],
                    })
                    .collect(),
            }
        }
        Scenario::Shared => Plan {
            // [MQTT-4.8.2-1] $share/{ShareName}/{filter}.
            subs: (0..spec.subscribers)
                .map(|i| sub(i, format!("$share/g/{tag}/sh/+")))
                .collect(),
            pubs: pubs_on(spec.publishers, &|i| format!("{tag}/sh/{i}")),
            groups: vec![Group {
                members: (0..spec.subscribers).collect(),
                publishers: all(spec.publishers),
            }],
        },
    }
}

pub fn connector(spec: &RunSpec, target: &Target) -> Result<Connector, RunError> {
    let tls = spec
        .tls
        .as_ref()
        .map(|t| Tls::new(t, target.host()))
        .transpose()?;
    Ok(Connector {
        addr: target.addr.clone(),
        tls,
        version: spec.version,
        connect_timeout: spec.connect_timeout,
        keep_alive_s: spec.keep_alive_s,
        // A slow reader that allowed 65,535 messages in flight would have
        // them sit in socket buffers (megabytes on loopback) instead of the
        // broker's queue; the publishers receive nothing, so this only
        // bounds the subscriber.
        receive_maximum: match spec.scenario {
            Scenario::SlowReader => SLOW_READER_RECEIVE_MAX,
            _ => u16::MAX,
        },
    })
}

pub fn protocol_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    }
}

/// The report's header fields, from the spec.
pub fn report_for(spec: &RunSpec, target: &Target) -> RunReport {
    RunReport {
        target: target.name.clone(),
        scenario: spec.scenario.name().to_owned(),
        protocol: protocol_name(spec.version).to_owned(),
        qos: spec.qos as u8,
        payload_bytes: spec.payload_bytes.max(crate::payload::HEADER_LEN),
        publishers: spec.publishers,
        subscribers: spec.subscribers,
        clients: spec.clients,
        rate_per_s: spec.rate_per_s.map(|r| r.get()),
        inflight: spec.inflight.get(),
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        ..Default::default()
    }
}

/// slow-reader's pace while slow: as given, or a tenth of what all
/// publishers send together (unlimited publishers: 1000 msgs/s).
pub fn reader_rate(spec: &RunSpec) -> u32 {
    if let Some(r) = spec.reader_rate_per_s {
        return r.get();
    }
    spec.rate_per_s.map_or(1000, |r| {
        let total = u64::from(r.get()) * spec.publishers.max(1) as u64;
        u32::try_from(total / 10).unwrap_or(u32::MAX).max(1)
    })
}

/// Connects `n` clients, at most `concurrency` at a time.
pub async fn connect_all<F, Fut, T>(
    on: &tokio::runtime::Handle,
    n: usize,
    concurrency: usize,
    f: F,
) -> Vec<Result<T, ClientError>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
    T: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let fut = f(i);
        let permits = permits.clone();
        tasks.push(on.spawn(async move {
            let _permit = permits.acquire_owned().await;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap_or(Err(ClientError::Closed)));
    }
    out
}

/// Whether to draw the live progress line.
pub fn progress_enabled(spec: &RunSpec) -> bool {
    spec.progress
        && std::io::stdout().is_terminal()
        && std::env::var("CI").map_or(true, |v| v != "true")
}

/// Once a second: elapsed/total and rates, overwriting one line.
fn spawn_progress(ctx: Arc<RunCtx>, total: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let c = &ctx.counters;
        let mut last = (0, 0, 0);
        loop {
            tick.tick().await;
            let now = (
                Counters::get(&c.sent),
                Counters::get(&c.acked),
                Counters::get(&c.received),
            );
            let elapsed = Duration::from_nanos(ctx.now_ns());
            print!(
                "\r\x1b[2K  [{:>5.1}s / {:.1}s] sent {}/s  acked {}/s  received {}/s  errors {}",
                elapsed.as_secs_f64(),
                total.as_secs_f64(),
                now.0 - last.0,
                now.1 - last.1,
                now.2 - last.2,
                Counters::get(&c.errors)
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
            last = now;
        }
    })
}

fn clear_progress(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(t) = task {
        t.abort();
        print!("\r\x1b[2K");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}

/// Runs `spec` against `target` and accounts for everything.
pub async fn run(spec: &RunSpec, target: &Target) -> Result<RunReport, RunError> {
    if !spec.scenario.is_messaging() {
        return crate::conns::run(spec, target).await;
    }
    let connector = connector(spec, target)?;
    let sub_connector = match &spec.subscriber_addr {
        None => connector.clone(),
        // Offline subscribers reconnect through the run's one connector.
        Some(_) if spec.scenario.impairs_subscriber() => {
            return Err(RunError::Invalid(
                "--sub-broker does not combine with scenarios that take subscribers offline"
                    .to_owned(),
            ))
        }
        Some(addr) => Connector {
            addr: addr.clone(),
            ..connector.clone()
        },
    };
    let tag = run_tag(&spec.topic_prefix);
    let mut plan = plan(spec, &tag);
    let mut report = report_for(spec, target);
    let broker = spec.broker_pid.map(|pid| (pid, Sampler::start(pid, true)));
    let harness = Sampler::start(std::process::id(), false);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();

    // Subscribers first, so nothing published is missed.
    let clean = spec.clean;
    // The subscribers' sockets belong to the runtime they connect on.
    let lane = if spec.sub_thread {
        let lane = crate::lane::Lane::start().map_err(RunError::SubThread)?;
        if let Some(why) = &lane.priority_refused {
            eprintln!("--sub-thread: the subscribers' thread runs at normal priority ({why})");
        }
        Some(lane)
    } else {
        None
    };
    let here = tokio::runtime::Handle::current();
    let sub_rt = lane.as_ref().map_or(&here, |l| l.handle());
    let subs = connect_all(sub_rt, plan.subs.len(), spec.connect_concurrency, |i| {
        let (c, p, wait) = (
            sub_connector.clone(),
            plan.subs[i].clone(),
            spec.connect_timeout,
        );
        async move {
            if !clean {
                // A persistent session must start empty: clear any old one.
                if let Ok(old) = c.connect(&p.client_id, true).await {
                    old.disconnect(Duration::from_millis(200)).await;
                }
            }
            let mut conn = c.connect(&p.client_id, clean).await?;
            let early = conn.subscribe(&p.filter, p.qos, wait).await?;
            Ok((conn, early))
        }
    })
    .await;
    let pubs = connect_all(&here, plan.pubs.len(), spec.connect_concurrency, |i| {
        let (c, id) = (connector.clone(), plan.pubs[i].client_id.clone());
        async move { c.connect(&id, true).await }
    })
    .await;
    let sub_errs = subs.iter().filter_map(|r| r.as_ref().err());
    for e in sub_errs.chain(pubs.iter().filter_map(|r| r.as_ref().err())) {
        *errors.entry(e.reason()).or_default() += 1;
    }
    report.connected = (subs.iter().filter(|r| r.is_ok()).count()
        + pubs.iter().filter(|r| r.is_ok()).count()) as u64;
    report.connect_failed = (plan.subs.len() + plan.pubs.len()) as u64 - report.connected;

    let phases = Phases {
        lead_in: LEAD_IN,
        warmup: spec.warmup,
        duration: spec.duration,
        drain: spec.drain,
    };
    let mut ctx = RunCtx::new(
        connector,
        phases,
        spec.qos,
        spec.payload_bytes,
        spec.rate_per_s.map(|r| r.get()),
        spec.inflight.get(),
        spec.stamp,
    );
    ctx.retain = spec.retain;
    if spec.stagger {
        ctx.stagger = u32::try_from(plan.pubs.len()).ok().filter(|n| *n > 0);
    }
    let ctx = Arc::new(ctx);
    if spec.scenario.impairs_subscriber() {
        let span = ctx.stop_ns - ctx.warm_end_ns;
        let from = ctx.warm_end_ns + (span as f64 * spec.offline_from.clamp(0.0, 1.0)) as u64;
        let until = ctx.warm_end_ns + (span as f64 * spec.offline_until.clamp(0.0, 1.0)) as u64;
        let until = until.max(from);
        let throttle = Throttle {
            from_ns: from,
            until_ns: until,
            rate_per_s: reader_rate(spec),
        };
        for s in &mut plan.subs {
            match spec.scenario {
                Scenario::SlowReader => s.throttle = Some(throttle),
                _ => s.offline = Some((from, until)),
            }
        }
    }
    for (k, n) in errors {
        for _ in 0..n {
            ctx.error_key(k.clone());
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::new();
    let mut live_members = HashSet::new();
    for (p, r) in plan.subs.iter().zip(subs) {
        if let Ok((conn, early)) = r {
            live_members.insert(p.idx);
            sub_tasks.push(sub_rt.spawn(subscriber::run(
                conn,
                early,
                ctx.clone(),
                p.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let mut pub_tasks = Vec::new();
    for (p, r) in plan.pubs.iter().zip(pubs) {
        if let Ok(conn) = r {
            pub_tasks.push(tokio::spawn(publisher::run(
                conn,
                ctx.clone(),
                p.id,
                p.topic.clone(),
            )));
        }
    }
    let progress = progress_enabled(spec).then(|| {
        spawn_progress(
            ctx.clone(),
            LEAD_IN + spec.warmup + spec.duration + spec.drain,
        )
    });

    let window_start = ctx.at(ctx.warm_end_ns);
    let window_end = ctx.at(ctx.stop_ns);
    // Publishers end by ack_deadline on their own; the outer bound only
    // guards against a task that cannot be woken.
    let mut pub_out: Vec<PubOutcome> = Vec::new();
    let hard_end = ctx.ack_deadline + STOP_GRACE;
    for t in pub_tasks {
        match tokio::time::timeout_at(hard_end, t).await {
            Ok(Ok(o)) => pub_out.push(o),
            _ => ctx.error_key("publisher did not finish".to_owned()),
        }
    }
    if let Some((pid, s)) = &broker {
        s.mark(*pid, true);
    }
    harness.mark(std::process::id(), false);

    // Drain: until every owed delivery arrived or the drain period is over.
    let sent: HashMap<u32, &PubOutcome> = pub_out.iter().map(|o| (o.id, o)).collect();
    let owed: u64 = plan
        .groups
        .iter()
        .flat_map(|g| g.publishers.iter())
        .filter_map(|p| sent.get(p))
        .map(|o| {
            o.sent
                - if spec.qos == QoS::AtMostOnce {
                    0
                } else {
                    o.unconfirmed.len() as u64
                }
        })
        .sum();
    let drain_end = ctx.at(ctx.stop_ns) + spec.drain;
    while Instant::now() < drain_end && Counters::get(&ctx.counters.unique) < owed {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut sub_out: HashMap<usize, SubOutcome> = HashMap::new();
    let stop_by = Instant::now() + STOP_GRACE;
    for t in sub_tasks {
        match tokio::time::timeout_at(stop_by, t).await {
            Ok(Ok(o)) => {
                sub_out.insert(o.idx, o);
            }
            _ => ctx.error_key("subscriber did not stop".to_owned()),
        }
    }
    clear_progress(progress);

    account(
        spec,
        &plan.groups,
        &pub_out,
        &sub_out,
        &live_members,
        &mut report,
    );
    let window_s = spec.duration.as_secs_f64().max(1e-9);
    report.sent_per_s = pub_out.iter().map(|o| o.sent_in_window).sum::<u64>() as f64 / window_s;
    report.acked_per_s = pub_out.iter().map(|o| o.acked_in_window).sum::<u64>() as f64 / window_s;
    report.received_per_s =
        sub_out.values().map(|o| o.received_in_window).sum::<u64>() as f64 / window_s;
    report.latency_us = LatencyUs::from_ns(&ctx.histogram());
    report.errors = ctx.errors();
    report.broker = broker
        .as_ref()
        .and_then(|(_, s)| s.usage(window_start, window_end));
    report.harness = harness.usage(window_start, window_end);
    if let Some(d) = sub_out.values().find_map(|o| o.drain.clone()) {
        report.drain_per_s = d.drain_s.filter(|&t| t > 0.0).map(|t| d.backlog as f64 / t);
        report.drain = Some(d);
    }
    if report.connected == 0 {
        report.failures.push("nothing could connect".to_owned());
    }
    Ok(report)
}

/// Compares what each receiver group got with what it was owed.
fn account(
    spec: &RunSpec,
    groups: &[Group],
    pubs: &[PubOutcome],
    subs: &HashMap<usize, SubOutcome>,
    live: &HashSet<usize>,
    report: &mut RunReport,
) {
    let by_id: HashMap<u32, &PubOutcome> = pubs.iter().map(|o| (o.id, o)).collect();
    report.sent = pubs.iter().map(|o| o.sent).sum();
    report.acked = pubs.iter().map(|o| o.acked).sum();
    report.received = subs.values().map(|o| o.received).sum();
    report.unexpected = subs.values().map(|o| o.foreign).sum();
    let confirmed_only = spec.qos != QoS::AtMostOnce;
    for g in groups {
        // Members that never connected are part of the group: what they
        // should have got is lost to the group.
        let mut merged: HashMap<u32, SeqTracker> = HashMap::new();
        for m in g.members.iter().filter(|m| live.contains(m)) {
            let Some(o) = subs.get(m) else { continue };
            for (p, t) in &o.trackers {
                match merged.get_mut(p) {
                    Some(acc) => acc.merge(t),
                    None => {
                        merged.insert(*p, t.clone());
                    }
                }
            }
        }
        for (p, t) in &merged {
            report.duplicated += t.duplicates;
            report.redelivered += t.redelivered;
            report.out_of_order += t.out_of_order;
            if !g.publishers.contains(p) {
                report.unexpected += t.unique;
            }
        }
        for p in &g.publishers {
            let Some(o) = by_id.get(p) else { continue };
            let unconfirmed: HashSet<u64> = if confirmed_only {
                o.unconfirmed.iter().copied().collect()
            } else {
                HashSet::new()
            };
            report.expected += o.sent - unconfirmed.len() as u64;
            let empty = SeqTracker::default();
            let t = merged.get(p).unwrap_or(&empty);
            for seq in t.missing(o.sent) {
                if unconfirmed.contains(&seq) {
                    report.unconfirmed += 1;
                } else {
                    report.lost += 1;
                }
            }
        }
    }
    if spec.qos != QoS::AtMostOnce && !spec.allow_loss {
        if report.lost > 0 {
            report.failures.push(format!(
                "QoS {}: {} confirmed message(s) never delivered [MQTT-4.3.{}]",
                spec.qos as u8,
                report.lost,
                spec.qos as u8 + 1
            ));
        }
        if spec.qos == QoS::ExactlyOnce && report.duplicated > 0 {
            report.failures.push(format!(
                "QoS 2: {} duplicate deliveries [MQTT-4.3.3]",
                report.duplicated
            ));
        } else if report.duplicated > 0 {
            report
                .failures
                .push(format!("QoS 1: {} duplicate deliveries", report.duplicated));
        }
    }
}
