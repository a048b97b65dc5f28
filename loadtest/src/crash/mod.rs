//! `crash`: kill -9 the broker at seeded random moments while QoS 1
//! publishers feed persistent subscribers, restart it on the same data
//! directory, and check that every acknowledged message still reached every
//! subscriber. Owns the broker's lives and the run's timeline; the clients
//! and the ledger live in the submodules, the report in `report`.

pub mod clients;
pub mod ledger;
pub mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardmq_core::codec::ProtocolVersion;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::clients::{PubPlan, Shared, SharedRecord, SubPlan, SubRecord};
use self::report::{CrashReport, Restart};
use crate::client::Connector;
use crate::compare::{free_port, template_command, Launched, TargetError};

/// Waits between probe CONNECTs while the broker comes back.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// A probe CONNECT waits this long for its CONNACK: a dead broker's
/// listening socket can outlive it briefly (io_uring tears down
/// asynchronously) and accept TCP that nobody will ever answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before starting a broker again whose start failed.
const RESPAWN_PAUSE: Duration = Duration::from_millis(100);
/// Publishers wait this long for outstanding PUBACKs after publishing stops.
const ACK_GRACE: Duration = Duration::from_secs(3);
/// Receive Maximum of throttled subscribers (v5): the broker, not socket
/// buffers, holds what they have not read.
const THROTTLED_RECEIVE_MAX: u16 = 100;

#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    /// `sh -c` command with `{port}` and `{tmp}` (the data directory, the
    /// same for every restart).
    pub template: String,
    pub kills: usize,
    /// Mean time from one recovery to the next kill; each wait is uniform
    /// in [0.5, 1.5] times this.
    pub kill_every: Duration,
    pub seed: u64,
    pub publishers: usize,
    pub subscribers: usize,
    pub rate_per_s: u32,
    pub inflight: u16,
    pub payload_bytes: usize,
    pub version: ProtocolVersion,
    /// Messages per second each subscriber acknowledges at most, so the
    /// broker holds unacknowledged messages when it dies.
    pub sub_rate: Option<u32>,
    /// Subscribers go offline (DISCONNECT, session kept) this long before
    /// each kill and come back after the restart, so every kill hits
    /// messages queued for offline sessions.
    pub offline: Duration,
    /// After publishing stops: how long to wait for acknowledged messages.
    pub drain: Duration,
    pub connect_timeout: Duration,
    /// Kill to first CONNACK, at most.
    pub restart_timeout: Duration,
    pub broker_cpu: Option<usize>,
    /// Unmarked duplicates and reordering fail the run too.
    pub strict: bool,
    /// Keep the data directory (and the broker's log) afterwards.
    pub keep_dir: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CrashError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("invalid crash run: {0}")]
    Invalid(String),
}

/// Seeded, so a run's kill moments can be replayed (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0.5, 1.5) times `mean`.
    pub fn around(&mut self, mean: Duration) -> Duration {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        mean.mul_f64(0.5 + unit)
    }
}

/// The broker under test over its lives: the same port, command and data
/// directory each time.
#[derive(Debug)]
struct Broker {
    name: String,
    template: String,
    cpu: Option<usize>,
    port: u16,
    dir: PathBuf,
    life: Option<Launched>,
}

impl Broker {
    fn start(o: &Options) -> Result<Broker, TargetError> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("shardmq-crash-{}-{port}", std::process::id()));
        // A dead process's directory (pids and ports are reused) would hand
        // this broker someone else's persisted state.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| TargetError::Spawn {
            name: o.name.clone(),
            cmd: o.template.clone(),
            source,
        })?;
        let mut b = Broker {
            name: o.name.clone(),
            template: o.template.clone(),
            cpu: o.broker_cpu,
            port,
            dir,
            life: None,
        };
        b.spawn()?;
        Ok(b)
    }

    /// Starts the command and waits (bounded) until the port accepts TCP.
    fn spawn(&mut self) -> Result<(), TargetError> {
        let cmd = template_command(&self.template, self.port, &self.dir, self.cpu);
        let life = Launched::spawn(&self.name, &self.template, cmd, self.port, self.dir.clone())?;
        self.life = Some(life);
        Ok(())
    }

    /// Kills; says when the broker was dead (reaped).
    fn kill(&mut self) -> std::time::Instant {
        if let Some(mut l) = self.life.take() {
            l.kill();
        }
        std::time::Instant::now()
    }

    fn running(&mut self) -> bool {
        self.life.as_mut().is_some_and(Launched::running)
    }

    /// A start that died: why, as its log's last line says.
    fn exited(&mut self) -> Option<String> {
        let l = self.life.as_mut()?;
        if l.running() {
            return None;
        }
        self.life = None;
        let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
        Some(log.lines().last().unwrap_or("exited").to_owned())
    }

    fn stop(&mut self) {
        if let Some(mut l) = self.life.take() {
            l.stop();
        }
    }
}

/// Runs `f` with the broker on the blocking pool (starting and stopping
/// processes sleeps), so the clients keep running meanwhile.
async fn with_broker<T: Send + 'static>(
    broker: Broker,
    f: impl FnOnce(&mut Broker) -> T + Send + 'static,
) -> Result<(Broker, T), CrashError> {
    tokio::task::spawn_blocking(move || {
        let mut b = broker;
        let r = f(&mut b);
        (b, r)
    })
    .await
    .map_err(|e| CrashError::Invalid(format!("broker control task failed: {e}")))
}

impl Options {
    fn validate(&self) -> Result<(), CrashError> {
        let bad = |m: &str| Err(CrashError::Invalid(m.to_owned()));
        if !self.template.contains("{port}") {
            return bad("the broker command needs a {port} placeholder");
        }
        if self.publishers == 0 || self.subscribers == 0 {
            return bad("at least one publisher and one subscriber");
        }
        if self.rate_per_s == 0 {
            return bad("--rate must be at least 1 message per second");
        }
        if self.kill_every.is_zero() {
            return bad("--kill-every must be more than 0");
        }
        Ok(())
    }

    fn connector(&self, port: u16) -> Connector {
        Connector {
            addr: format!("127.0.0.1:{port}"),
            tls: None,
            version: self.version,
            connect_timeout: self.connect_timeout,
            keep_alive_s: 30,
            receive_maximum: if self.sub_rate.is_some() {
                THROTTLED_RECEIVE_MAX
            } else {
                u16::MAX
            },
        }
    }
}

/// One kill and what it took to come back.
#[derive(Debug)]
struct Recovery {
    killed: Instant,
    /// The first acknowledged CONNECT after the kill.
    acked: Option<Instant>,
    starts: u32,
    /// Why starts failed (the last line of each failure).
    start_failures: Vec<String>,
}

/// Kills the broker, then acts as its supervisor until a CONNECT is
/// acknowledged or `timeout` passes: a start that fails (its port still
/// held by the dead process, say) is retried, as systemd's
/// `Restart=on-failure` would.
async fn kill_and_recover(
    broker: Broker,
    shared: &Shared,
    probe_id: &str,
    timeout: Duration,
) -> Result<(Broker, Recovery), CrashError> {
    let (mut broker, died) = with_broker(broker, Broker::kill).await?;
    let killed = Instant::from_std(died);
    let mut r = Recovery {
        killed,
        acked: None,
        starts: 0,
        start_failures: Vec::new(),
    };
    let probe = Connector {
        connect_timeout: PROBE_TIMEOUT,
        ..shared.connector.clone()
    };
    while Instant::now() < killed + timeout {
        // A start can pass the port check and still die: the port that
        // answered was the dead broker's.
        if let Some(why) = broker.exited() {
            r.start_failures.push(why);
        }
        if !broker.running() {
            r.starts += 1;
            let (b, started) = with_broker(broker, Broker::spawn).await?;
            broker = b;
            if let Err(e) = started {
                let e = e.to_string();
                r.start_failures
                    .push(e.lines().last().unwrap_or_default().to_owned());
                tokio::time::sleep(RESPAWN_PAUSE).await;
                continue;
            }
        }
        if let Ok(c) = probe.connect(probe_id, true).await {
            r.acked = Some(Instant::now());
            c.disconnect(Duration::from_millis(200)).await;
            break;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok((broker, r))
}

/// Client ids and topics unique to one run.
#[derive(Debug)]
struct Names {
    id_base: String,
    topic_base: String,
}

fn spawn_subscribers(
    o: &Options,
    shared: &Arc<Shared>,
    names: &Names,
    stop: &watch::Receiver<bool>,
    online: &watch::Receiver<bool>,
) -> (Vec<SharedRecord>, Vec<JoinHandle<()>>) {
    let records: Vec<SharedRecord> = (0..o.subscribers)
        .map(|_| Arc::new(Mutex::new(SubRecord::default())))
        .collect();
    let tasks = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let plan = SubPlan {
                idx: i,
                client_id: format!("{}-s{i}", names.id_base),
                filter: format!("{}/+", names.topic_base),
                publishers: o.publishers,
                rate_per_s: o.sub_rate,
            };
            tokio::spawn(clients::subscriber(
                shared.clone(),
                plan,
                r.clone(),
                stop.clone(),
                online.clone(),
            ))
        })
        .collect();
    (records, tasks)
}

fn spawn_publishers(
    o: &Options,
    shared: &Arc<Shared>,
    names: &Names,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<ledger::Sent>> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(o.rate_per_s));
    (0..o.publishers)
        .map(|i| {
            let plan = PubPlan {
                id: i as u32,
                client_id: format!("{}-p{i}", names.id_base),
                topic: format!("{}/{i}", names.topic_base),
                interval,
                inflight: o.inflight,
                payload_bytes: o.payload_bytes,
                ack_grace: ACK_GRACE,
            };
            tokio::spawn(clients::publisher(shared.clone(), plan, stop.clone()))
        })
        .collect()
}

/// The kills, each after a seeded wait (the subscribers offline for its
/// last `--offline`), then traffic for one more wait. Returns the broker
/// and the kill times (ns since the epoch).
async fn kill_loop(
    o: &Options,
    mut broker: Broker,
    shared: &Shared,
    probe_id: &str,
    online: &watch::Sender<bool>,
    report: &mut CrashReport,
) -> Result<(Broker, Vec<u64>), CrashError> {
    let traffic_from = shared.now_ns();
    let mut rng = Rng::new(o.seed);
    let mut kills_ns = Vec::with_capacity(o.kills);
    for k in 0..o.kills {
        let wait = rng.around(o.kill_every);
        let offline = o.offline.min(wait);
        tokio::time::sleep(wait - offline).await;
        if !offline.is_zero() {
            let _ = online.send(false);
            tokio::time::sleep(offline).await;
        }
        let (b, r) = kill_and_recover(broker, shared, probe_id, o.restart_timeout).await?;
        broker = b;
        let _ = online.send(true);
        // What was acknowledged up to the death is owed: the clock starts
        // when the process is gone, not when the kill was decided.
        kills_ns.push(r.killed.saturating_duration_since(shared.epoch).as_nanos() as u64);
        report.restarts.push(Restart {
            kill_at_s: (kills_ns[k] - traffic_from) as f64 / 1e9,
            recovery_ms: r.acked.map(|t| ms(t - r.killed)),
            starts: r.starts,
            start_failures: r.start_failures,
            ..Restart::default()
        });
        if r.acked.is_none() {
            report.failures.push(format!(
                "restart {}: no CONNACK within {:.1} s of the kill",
                k + 1,
                o.restart_timeout.as_secs_f64()
            ));
            break;
        }
    }
    // Traffic after the last recovery, so its own losses show.
    if report.failures.is_empty() {
        tokio::time::sleep(rng.around(o.kill_every)).await;
    }
    report.publishing_s = (shared.now_ns() - traffic_from) as f64 / 1e9;
    Ok((broker, kills_ns))
}

/// What each publisher sent. One that never finished cannot be accounted
/// for: that fails the run rather than hide its messages.
async fn collect_publishers(
    tasks: Vec<JoinHandle<ledger::Sent>>,
    bound: Duration,
    report: &mut CrashReport,
) -> Vec<ledger::Sent> {
    let mut sent = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(bound, t).await {
            Ok(Ok(s)) => sent.push(s),
            _ => {
                report.failures.push(format!(
                    "publisher {i} did not finish: its messages are not accounted for"
                ));
                sent.push(ledger::Sent::default());
            }
        }
    }
    sent
}

async fn stop_subscribers(stop: &watch::Sender<bool>, tasks: Vec<JoinHandle<()>>, shared: &Shared) {
    let _ = stop.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(3), t)
            .await
            .is_err()
        {
            shared.error("subscriber did not stop".to_owned());
        }
    }
}

/// Runs the whole crash test; `Err` only when it cannot start.
pub async fn run(o: &Options) -> Result<CrashReport, CrashError> {
    o.validate()?;
    let broker = {
        let o = o.clone();
        tokio::task::spawn_blocking(move || Broker::start(&o))
            .await
            .map_err(|e| CrashError::Invalid(format!("broker start task failed: {e}")))??
    };
    let mut report = CrashReport::new(o, &broker.dir);
    let shared = Arc::new(Shared::new(o.connector(broker.port)));
    let id_base = crate::run::run_tag("crash").replace('/', "-");
    let names = Names {
        topic_base: id_base.replace('-', "/"),
        id_base,
    };

    let (sub_stop_tx, sub_stop) = watch::channel(false);
    let (online_tx, online) = watch::channel(true);
    let (records, sub_tasks) = spawn_subscribers(o, &shared, &names, &sub_stop, &online);
    // Publishing before every subscription is in place would lose messages
    // no broker owes anyone.
    let subscribed_by = Instant::now() + o.connect_timeout * 3;
    while !clients::all_subscribed(&records) && Instant::now() < subscribed_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !clients::all_subscribed(&records) {
        report
            .failures
            .push("the subscribers could not subscribe".to_owned());
        stop_subscribers(&sub_stop_tx, sub_tasks, &shared).await;
        report.errors = shared.errors();
        let _ = with_broker(broker, Broker::stop).await;
        return Ok(report);
    }

    let (pub_stop_tx, pub_stop) = watch::channel(false);
    let pub_tasks = spawn_publishers(o, &shared, &names, &pub_stop);
    let probe_id = format!("{}-probe", names.id_base);
    let (broker, kills_ns) =
        kill_loop(o, broker, &shared, &probe_id, &online_tx, &mut report).await?;

    let _ = pub_stop_tx.send(true);
    let bound = ACK_GRACE + o.connect_timeout + Duration::from_secs(2);
    let sent = collect_publishers(pub_tasks, bound, &mut report).await;
    let drain_from = Instant::now();
    while drain_from.elapsed() < o.drain
        && !ledger::all_acked_arrived(&sent, &clients::arrivals(&records))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.drain_s = drain_from.elapsed().as_secs_f64();
    stop_subscribers(&sub_stop_tx, sub_tasks, &shared).await;
    let (broker, ()) = with_broker(broker, Broker::stop).await?;

    let reconnects = clients::reconnects(&records);
    let outages = report::outage_ends(&kills_ns, &reconnects);
    report.counts = ledger::tally(&sent, &clients::arrivals(&records), &outages);
    report.attribute(&kills_ns, &reconnects);
    report.foreign = clients::foreign(&records);
    report.errors = shared.errors();
    report.judge(o.strict);
    if !o.keep_dir {
        let _ = std::fs::remove_dir_all(&broker.dir);
        report.data_dir = None;
    }
    Ok(report)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_waits_are_seeded_and_within_half_to_one_and_a_half_periods() {
        let mean = Duration::from_secs(2);
        let a: Vec<_> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| r.around(mean)).collect()
        };
        let mut r = Rng::new(7);
        assert!(
            a.iter().all(|d| *d == r.around(mean)),
            "same seed, same run"
        );
        assert!(a
            .iter()
            .all(|d| *d >= Duration::from_secs(1) && *d < Duration::from_secs(3)));
        let mut other = Rng::new(8);
        assert_ne!(a[0], other.around(mean));
    }
}
