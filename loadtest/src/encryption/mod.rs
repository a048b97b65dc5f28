//! `shardmq-loadtest encryption`: the user's broker config run twice per round,
//! `advanced.encryptInternalTraffic` Enabled and Disabled, over a set of
//! scenarios and payload sizes, interleaved; medians side by side with the
//! cipher's own cost measured on this CPU, and evidence from each run's log
//! and buffer files that the setting was really in force.

pub mod config;
pub mod evidence;
pub mod floor;
pub mod html;
pub mod report;
pub mod table;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardmq_core::codec::QoS;

use crate::compare::{free_port, pinned_command, Launched};
use crate::report::RunReport;
use crate::spec::{RunSpec, Scenario, Target};
use config::{Adjustments, BaseConfig, Setting};
use evidence::{LogFacts, SegmentScan};
use report::{EncReport, EncRun};

/// What a workload needs from the broker beyond a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A loadtest scenario this command runs.
    Run(Scenario),
    /// Named so users find it; runs once the broker has the feature.
    /// EXTENSION POINT: give it a `Scenario` (and, in `config::derive`, the
    /// settings it needs: a persistent store's directory, a second node's
    /// address) and move it to `Run`.
    Pending {
        name: &'static str,
        waits_for: &'static str,
    },
}

/// Every workload, in report order.
pub const WORKLOADS: [Workload; 7] = [
    Workload::Run(Scenario::FanIn),
    Workload::Run(Scenario::FanOut),
    Workload::Run(Scenario::P2p),
    Workload::Run(Scenario::SlowReader),
    Workload::Run(Scenario::SlowSub),
    Workload::Pending {
        name: "persistence",
        waits_for: "the persistence issue (sessions and messages kept across restarts): \
                    encryption will seal what is written to the store",
    },
    Workload::Pending {
        name: "cross-node",
        waits_for: "two broker nodes, which this command (one broker per run) does not \
                    start yet: loadtest/scripts/cross-node.sh measures encryptInternalTraffic \
                    across nodes (docs/PERFORMANCE.md, \"Across nodes\")",
    },
];

pub const DEFAULT_WORKLOADS: &str = "fan-in,fan-out,p2p,slow-reader,slow-sub";
pub const DEFAULT_PAYLOADS: &str = "64,1024,16384";

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Run(s) => s.name(),
            Workload::Pending { name, .. } => name,
        }
    }

    pub fn parse(name: &str) -> Result<Scenario, String> {
        match WORKLOADS.iter().find(|w| w.name() == name.trim()) {
            Some(Workload::Run(s)) => Ok(*s),
            Some(Workload::Pending { name, waits_for }) => Err(format!(
                "{name}: not available yet, it waits for {waits_for} (docs/PERFORMANCE.md)"
            )),
            None => Err(format!(
                "{name:?} is not a scenario of this command; choose from {}",
                WORKLOADS.map(Workload::name).join(", ")
            )),
        }
    }
}

/// One line on what a scenario does to the broker.
pub fn about(s: Scenario) -> &'static str {
    match s {
        Scenario::FanIn => "10 publishers -> 1 subscriber; nothing queues, nothing is sealed: expect parity",
        Scenario::FanOut => "1 publisher -> 10 subscribers; nothing queues, nothing is sealed: expect parity",
        Scenario::P2p => "10 publisher/subscriber pairs; nothing queues, nothing is sealed: expect parity",
        Scenario::SlowReader => "4 publishers -> 1 subscriber reading at a tenth of the rate for part of the run: the queue spills to the disk buffer (sealed), then drains (opened)",
        Scenario::SlowSub => "4 publishers -> 1 persistent subscriber offline for part of the run: the backlog spills (sealed) and drains on reconnect (opened)",
        _ => "",
    }
}

/// Deliveries per second a scenario aims at, and bytes per second: enough
/// to load the broker, not so much that a 2-core machine measures itself.
const DELIVERIES_PER_S: u64 = 20_000;
const BYTES_PER_S: u64 = 64 * 1024 * 1024;

/// Everything `encryption` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub broker_bin: Option<PathBuf>,
    pub scenarios: Vec<Scenario>,
    pub payloads: Vec<usize>,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub drain: Duration,
    pub qos: QoS,
    /// Messages per second per publisher; `None`: per scenario.
    pub rate: Option<u32>,
    pub offline: (f64, f64),
    pub broker_cpu: Option<usize>,
    pub pause: Duration,
    pub adjust: Adjustments,
    /// Keep each run's directory here (else a temporary one, removed).
    pub keep_runs: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EncError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("no shardmq binary next to this program or on PATH: build it (cargo build --release -p shardmq-io) or pass --broker-bin")]
    NoBroker,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("measuring the cipher: {0}")]
    Floor(#[from] floor::FloorError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EncError + '_ {
    move |source| EncError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `--broker-bin`, else `shardmq` beside this executable, else on PATH.
pub fn find_broker(given: Option<&Path>) -> Result<PathBuf, EncError> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("shardmq")))
        .filter(|p| p.is_file());
    beside
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("shardmq"))
                    .find(|p| p.is_file())
            })
        })
        .ok_or(EncError::NoBroker)
}

/// The run spec of one scenario at one payload size.
pub fn spec_for(opts: &Options, scenario: Scenario, payload: usize) -> RunSpec {
    let mut s = scenario.preset();
    s.payload_bytes = payload;
    s.qos = opts.qos;
    s.duration = opts.duration;
    s.warmup = opts.warmup;
    s.drain = opts.drain;
    s.progress = opts.progress;
    (s.offline_from, s.offline_until) = opts.offline;
    let fan = match scenario {
        Scenario::FanOut => s.subscribers.max(1) as u64,
        _ => 1,
    };
    let per_s = DELIVERIES_PER_S.min(BYTES_PER_S / payload.max(1) as u64);
    let per_pub = per_s / fan / s.publishers.max(1) as u64;
    let rate = opts
        .rate
        .unwrap_or_else(|| u32::try_from(per_pub).unwrap_or(u32::MAX));
    s.rate_per_s = NonZeroU32::new(rate);
    if scenario.impairs_subscriber() {
        // A spilled backlog can be large: give the drain time to finish.
        s.drain = s.drain.max(Duration::from_secs(5));
    }
    s
}

/// One scenario at one payload size under one setting, in one round.
#[derive(Debug, Clone, Copy)]
struct Job {
    round: usize,
    scenario: Scenario,
    payload: usize,
    setting: Setting,
}

impl Job {
    /// The run's directory name.
    fn dir_name(&self) -> String {
        format!(
            "r{}-{}-{}B-{}",
            self.round + 1,
            self.scenario.name(),
            self.payload,
            self.setting.name()
        )
    }
}

/// What every run of one invocation shares.
#[derive(Debug)]
struct Shared<'a> {
    opts: &'a Options,
    base: &'a BaseConfig,
    bin: &'a Path,
}

/// Writes the job's config in `dir`, starts the broker on it, runs the
/// scenario, scans the buffer's segment files while the broker still runs
/// (a graceful stop deletes them) and stops the broker (its log stays in
/// `dir/broker.log`).
async fn drive(
    sh: &Shared<'_>,
    job: Job,
    dir: &Path,
    scan: bool,
) -> Result<(RunReport, Option<SegmentScan>), EncError> {
    let mut spec = spec_for(sh.opts, job.scenario, job.payload);
    let port = free_port().map_err(|e| EncError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let spills = job.scenario.impairs_subscriber();
    let (json, _) = sh
        .base
        .derive(job.setting, spills, sh.opts.adjust, port, dir)?;
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, json).map_err(io_err(&cfg))?;
    let bin = sh.bin.display().to_string();
    let mut command: Command = pinned_command(
        sh.opts.broker_cpu,
        &bin,
        &["--config".as_ref(), cfg.as_os_str()],
    );
    // The config's log level is the one in force, not the caller's.
    command.env_remove("RUST_LOG");
    let name = format!("{} {}", job.scenario.name(), job.setting.name());
    let target = Target {
        name: job.setting.name().to_owned(),
        addr: format!("127.0.0.1:{port}"),
    };
    let mut segments = None;
    let report = match Launched::spawn(&name, &bin, command, port, dir.to_owned()) {
        Ok(mut launched) => {
            spec.broker_pid = Some(launched.pid);
            let r = crate::run::run(&spec, &target).await;
            if scan {
                segments = Some(evidence::scan_segments(&dir.join("data")).map_err(io_err(dir))?);
            }
            launched.stop();
            r.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let report = report.unwrap_or_else(|failure| {
        let mut r = crate::run::report_for(&spec, &target);
        r.failures.push(failure);
        r
    });
    Ok((report, segments))
}

/// One broker start, one scenario, and what it left behind.
async fn one_run(sh: &Shared<'_>, job: Job, dir: &Path) -> Result<EncRun, EncError> {
    let has_buffer = sh.base.has_buffer() || sh.opts.adjust.add_buffer;
    let (report, segments) = drive(sh, job, dir, has_buffer).await?;
    let log = LogFacts::parse(&std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default());
    let mut failures = log.contradictions(job.setting == Setting::Enabled);
    if let Some(seg) = &segments {
        failures.extend(segment_contradictions(job.setting, seg));
    }
    Ok(EncRun::new(
        job.round,
        job.setting,
        job.scenario,
        report,
        log,
        segments,
        failures,
    ))
}

/// What the files must not show for `setting`.
fn segment_contradictions(setting: Setting, seg: &SegmentScan) -> Vec<String> {
    let mut out = Vec::new();
    if setting == Setting::Enabled && seg.plaintext_marker {
        out.push("Enabled, yet the buffer files hold message payloads in plaintext".to_owned());
    }
    if setting == Setting::Enabled && seg.plain_blocks > 0 {
        out.push(format!(
            "Enabled, yet {} buffer block(s) are framed as plaintext",
            seg.plain_blocks
        ));
    }
    if setting == Setting::Disabled && seg.sealed_blocks > 0 {
        out.push(format!(
            "Disabled, yet {} buffer block(s) are framed as sealed",
            seg.sealed_blocks
        ));
    }
    out
}

/// Runs everything `opts` asks for; the report says whether it all passed.
pub async fn run(opts: &Options) -> Result<EncReport, EncError> {
    let bin = find_broker(opts.broker_bin.as_deref())?;
    let base = match &opts.config {
        Some(p) => BaseConfig::from_file(p)?,
        None => BaseConfig::builtin(&bin)?,
    };
    let (work, temporary) = match &opts.keep_runs {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("shardmq-encryption-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let mut report = EncReport::start(opts, &bin, &base, &work)?;
    println!(
        "broker {} with {}; {}",
        bin.display(),
        base.source,
        if base.has_buffer() {
            "its disk buffer"
        } else if opts.adjust.add_buffer {
            "a disk buffer ADDED BY THE HARNESS (the config has none)"
        } else {
            "no disk buffer (nothing spills, nothing is sealed)"
        }
    );
    println!("measuring the cipher on this CPU ...");
    for &p in &opts.payloads {
        report.costs.push(floor::measure(p)?);
    }
    let shared = Shared {
        opts,
        base: &base,
        bin: &bin,
    };
    let total = opts.rounds.max(1) * opts.scenarios.len() * opts.payloads.len() * 2;
    let mut n = 0;
    for round in 0..opts.rounds.max(1) {
        for &scenario in &opts.scenarios {
            for &payload in &opts.payloads {
                // Alternate which setting goes first, so drift on the
                // machine does not always favour the same one.
                let order = if round % 2 == 0 {
                    [Setting::Enabled, Setting::Disabled]
                } else {
                    [Setting::Disabled, Setting::Enabled]
                };
                for setting in order {
                    n += 1;
                    let job = Job {
                        round,
                        scenario,
                        payload,
                        setting,
                    };
                    let dir = work.join(job.dir_name());
                    let run = one_run(&shared, job, &dir).await?;
                    println!(
                        "[{n:>3}/{total}] round {}/{} {}",
                        round + 1,
                        opts.rounds.max(1),
                        run.line()
                    );
                    report.runs.push(run);
                    if temporary {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    tokio::time::sleep(opts.pause).await;
                }
            }
        }
    }
    if temporary {
        let _ = std::fs::remove_dir(&work);
    }
    report.finish();
    Ok(report)
}
