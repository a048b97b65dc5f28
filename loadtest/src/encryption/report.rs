//! The `encryption` report: every run with its evidence, and per scenario and
//! payload size the medians of both settings, their ratio, and the cipher's
//! floor. Serialised as JSON as it is; `table` prints it and `html` draws
//! the page from the same numbers.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{BaseConfig, Change, Setting};
use super::evidence::{LogFacts, SegmentScan};
use super::floor::CipherCost;
use super::{EncError, Options, Workload, WORKLOADS};
use crate::compare::median_opt;
use crate::report::RunReport;
use crate::spec::Scenario;

/// One broker start and one scenario run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncRun {
    pub round: usize,
    pub setting: Setting,
    pub scenario: String,
    pub payload_bytes: usize,
    pub report: RunReport,
    pub log: LogFacts,
    /// The buffer's files after the run (`None`: no buffer configured).
    pub segments: Option<SegmentScan>,
    /// Evidence that the setting was not the one asked for.
    pub setting_failures: Vec<String>,
}

impl EncRun {
    pub fn new(
        round: usize,
        setting: Setting,
        scenario: Scenario,
        report: RunReport,
        log: LogFacts,
        segments: Option<SegmentScan>,
        setting_failures: Vec<String>,
    ) -> EncRun {
        EncRun {
            round,
            setting,
            scenario: scenario.name().to_owned(),
            payload_bytes: report.payload_bytes,
            report,
            log,
            segments,
            setting_failures,
        }
    }

    pub fn ok(&self) -> bool {
        self.report.ok() && self.setting_failures.is_empty()
    }

    /// CPU time of the broker per 1,000 delivered messages, in ms.
    pub fn cpu_ms_per_1000(&self) -> Option<f64> {
        let b = self.report.broker.as_ref()?;
        (self.report.received_per_s > 0.0)
            .then(|| b.cpu_pct * 10_000.0 / self.report.received_per_s)
    }

    /// The progress line printed after each run.
    pub fn line(&self) -> String {
        let r = &self.report;
        let spilled = self
            .log
            .spill
            .map_or(String::new(), |s| format!("  spilled {}", s.appended));
        let drain = r
            .drain_per_s
            .map_or(String::new(), |d| format!("  drain {d:.0}/s"));
        let failures: Vec<&str> = r
            .failures
            .iter()
            .chain(&self.setting_failures)
            .map(String::as_str)
            .collect();
        format!(
            "{:<11} {:>6} B {:<8} delivered {:>8.0}/s  p99 {:>7.0} µs{drain}{spilled}  {}",
            self.scenario,
            self.payload_bytes,
            self.setting.name(),
            r.received_per_s,
            r.latency_us.p99,
            if failures.is_empty() {
                "ok".to_owned()
            } else {
                format!("FAIL: {}", failures.join("; "))
            }
        )
    }
}

/// Medians over one setting's rounds (lost and duplicates: totals).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub runs: usize,
    pub failed_runs: usize,
    pub delivered_per_s: f64,
    /// Spill scenarios: how fast the backlog went once the subscriber was
    /// back (or reading at full speed again).
    pub drain_per_s: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub cpu_ms_per_1000: Option<f64>,
    pub rss_mib_peak: Option<f64>,
    pub lost: u64,
    pub duplicated: u64,
    /// Messages written to the disk buffer / read back (broker's counts).
    pub spilled: Option<f64>,
    pub read_back: Option<f64>,
    /// Messages delivered over the whole run, and the drain's backlog.
    pub delivered_total: f64,
    pub backlog: Option<f64>,
}

impl Figures {
    fn of(runs: &[&EncRun]) -> Figures {
        let m =
            |f: &dyn Fn(&EncRun) -> Option<f64>| median_opt(runs.iter().map(|r| f(r)).collect());
        Figures {
            runs: runs.len(),
            failed_runs: runs.iter().filter(|r| !r.ok()).count(),
            delivered_per_s: m(&|r| Some(r.report.received_per_s)).unwrap_or(0.0),
            drain_per_s: m(&|r| r.report.drain_per_s),
            p50_us: m(&|r| Some(r.report.latency_us.p50)).unwrap_or(0.0),
            p99_us: m(&|r| Some(r.report.latency_us.p99)).unwrap_or(0.0),
            p999_us: m(&|r| Some(r.report.latency_us.p999)).unwrap_or(0.0),
            cpu_ms_per_1000: m(&EncRun::cpu_ms_per_1000),
            rss_mib_peak: m(&|r| r.report.broker.as_ref().map(|b| b.rss_mib_peak)),
            lost: runs.iter().map(|r| r.report.lost).sum(),
            duplicated: runs.iter().map(|r| r.report.duplicated).sum(),
            spilled: m(&|r| r.log.spill.map(|s| s.appended as f64)),
            read_back: m(&|r| r.log.spill.map(|s| s.read as f64)),
            delivered_total: m(&|r| Some(r.report.received as f64)).unwrap_or(0.0),
            backlog: m(&|r| r.report.drain.as_ref().map(|d| d.backlog as f64)),
        }
    }
}

/// Enabled / Disabled per figure (`None` where either side has none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ratios {
    pub delivered_per_s: Option<f64>,
    pub drain_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub cpu_ms_per_1000: Option<f64>,
    pub rss_mib_peak: Option<f64>,
    /// The median over rounds of each round's Enabled/Disabled drain: the
    /// two runs of a round are back to back, so drift on the machine that
    /// moves whole rounds cancels out.
    pub drain_per_s_paired: Option<f64>,
}

/// Median over rounds of `get(Enabled run) / get(Disabled run)`.
fn paired(on: &[&EncRun], off: &[&EncRun], get: fn(&EncRun) -> Option<f64>) -> Option<f64> {
    let per_round = on.iter().map(|e| {
        let d = off.iter().find(|d| d.round == e.round)?;
        ratio(get(e), get(d))
    });
    median_opt(per_round.collect())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The cipher's share of the difference.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Floor {
    /// AES-256-GCM seal and open of the spilled messages (Enabled's
    /// counts), per 1,000 delivered messages, ms.
    pub cipher_ms_per_1000: f64,
    /// The same less the CRC-32 that Disabled computes instead: what the
    /// cipher adds.
    pub extra_ms_per_1000: f64,
    /// What Enabled measured over Disabled (broker CPU per 1,000 messages).
    pub measured_extra_ms_per_1000: Option<f64>,
    /// The drain ratio Enabled/Disabled if the broker were CPU-bound and
    /// the cipher were all that differs.
    pub drain_ratio_cipher_only: Option<f64>,
    /// Drain time per message (1 / drain rate), Enabled less Disabled, ns.
    pub drain_extra_ns_measured: Option<f64>,
    /// What opening the drained messages adds to it, ns per message.
    pub drain_extra_ns_cipher: Option<f64>,
}

/// One scenario at one payload size, both settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    pub scenario: String,
    pub payload_bytes: usize,
    pub spills: bool,
    pub enabled: Figures,
    pub disabled: Figures,
    pub ratio: Ratios,
    /// `None` when the broker had no disk buffer (nothing can be sealed).
    pub floor: Option<Floor>,
    /// One line per setting: what the logs and files showed.
    pub evidence: Vec<String>,
}

fn evidence_line(setting: Setting, runs: &[&EncRun]) -> String {
    let want = setting == Setting::Enabled;
    let confirmed = runs.iter().filter(|r| r.log.encrypt == Some(want)).count();
    let mut s = format!(
        "{}: start-up log says {} in {}/{} run(s)",
        setting.name(),
        setting.name(),
        confirmed,
        runs.len()
    );
    let scans: Vec<&SegmentScan> = runs.iter().filter_map(|r| r.segments.as_ref()).collect();
    let files: usize = scans.iter().map(|s| s.files).sum();
    if files == 0 && !scans.is_empty() {
        s.push_str("; no buffer files (nothing spilled)");
    } else if !scans.is_empty() {
        let sealed: u64 = scans.iter().map(|s| s.sealed_blocks).sum();
        let plain: u64 = scans.iter().map(|s| s.plain_blocks).sum();
        let marked = scans.iter().filter(|s| s.plaintext_marker).count();
        let _ = write!(
            s,
            "; buffer files: {files}, blocks sealed {sealed} / plain {plain}; plaintext marker in {marked}/{} run(s)",
            scans.len()
        );
    }
    s
}

impl Cell {
    fn of(
        scenario: Scenario,
        payload: usize,
        runs: &[EncRun],
        cost: Option<&CipherCost>,
        has_buffer: bool,
    ) -> Cell {
        let pick = |s: Setting| -> Vec<&EncRun> {
            runs.iter()
                .filter(|r| {
                    r.setting == s && r.scenario == scenario.name() && r.payload_bytes == payload
                })
                .collect()
        };
        let (on, off) = (pick(Setting::Enabled), pick(Setting::Disabled));
        let (e, d) = (Figures::of(&on), Figures::of(&off));
        let ratio = Ratios {
            delivered_per_s: ratio(Some(e.delivered_per_s), Some(d.delivered_per_s)),
            drain_per_s: ratio(e.drain_per_s, d.drain_per_s),
            p50_us: ratio(Some(e.p50_us), Some(d.p50_us)),
            p99_us: ratio(Some(e.p99_us), Some(d.p99_us)),
            p999_us: ratio(Some(e.p999_us), Some(d.p999_us)),
            cpu_ms_per_1000: ratio(e.cpu_ms_per_1000, d.cpu_ms_per_1000),
            rss_mib_peak: ratio(e.rss_mib_peak, d.rss_mib_peak),
            drain_per_s_paired: paired(&on, &off, |r| r.report.drain_per_s),
        };
        let floor = match cost {
            Some(c) if has_buffer => Some(floor_of(&e, &d, c)),
            _ => None,
        };
        Cell {
            scenario: scenario.name().to_owned(),
            payload_bytes: payload,
            spills: scenario.impairs_subscriber(),
            evidence: vec![
                evidence_line(Setting::Enabled, &on),
                evidence_line(Setting::Disabled, &off),
            ],
            enabled: e,
            disabled: d,
            ratio,
            floor,
        }
    }
}

fn floor_of(e: &Figures, d: &Figures, c: &CipherCost) -> Floor {
    let (spilled, read) = (e.spilled.unwrap_or(0.0), e.read_back.unwrap_or(0.0));
    let per_1000 = |ns: f64| {
        if e.delivered_total > 0.0 {
            ns / e.delivered_total * 1000.0 / 1e6
        } else {
            0.0
        }
    };
    let cipher = per_1000(spilled * c.aes_seal_ns + read * c.aes_open_ns);
    let extra = per_1000(spilled * c.seal_extra_ns() + read * c.open_extra_ns());
    let measured = match (e.cpu_ms_per_1000, d.cpu_ms_per_1000) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    // Share of the drained backlog that came from disk (the rest was
    // still in memory), times the extra cost of opening one message.
    let drain_cipher_ns = e
        .backlog
        .filter(|b| *b > 0.0)
        .map(|b| (read / b).min(1.0) * c.open_extra_ns());
    let drain_ratio = d
        .drain_per_s
        .zip(drain_cipher_ns)
        .map(|(rate, ns)| 1.0 / (1.0 + rate * ns * 1e-9));
    let per_msg = |rate: Option<f64>| rate.filter(|r| *r > 0.0).map(|r| 1e9 / r);
    Floor {
        cipher_ms_per_1000: cipher,
        extra_ms_per_1000: extra,
        measured_extra_ms_per_1000: measured,
        drain_ratio_cipher_only: drain_ratio,
        drain_extra_ns_measured: per_msg(e.drain_per_s)
            .zip(per_msg(d.drain_per_s))
            .map(|(a, b)| a - b),
        drain_extra_ns_cipher: drain_cipher_ns,
    }
}

/// Where the numbers were taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub load_average_start: String,
    pub load_average_end: String,
    /// The harness's build: `debug` numbers (the cipher floor above all)
    /// are not representative.
    pub harness_build: String,
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

impl Machine {
    fn here() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_default();
        Machine {
            cpu,
            // Not `available_parallelism`: `--cpu` narrows that to one.
            cpus: std::fs::read_to_string("/proc/cpuinfo").map_or(0, |s| {
                s.lines().filter(|l| l.starts_with("processor")).count()
            }),
            kernel: first_line("/proc/sys/kernel/osrelease"),
            load_average_start: first_line("/proc/loadavg"),
            load_average_end: String::new(),
            harness_build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
        }
    }
}

/// What was run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub scenarios: Vec<String>,
    pub payloads: Vec<usize>,
    pub rounds: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub qos: u8,
    pub rate_per_publisher: Option<u32>,
    pub offline: (f64, f64),
    pub spill_at: Option<u32>,
    pub broker_cpu: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingWorkload {
    pub name: String,
    pub waits_for: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncReport {
    pub generated_utc: String,
    pub machine: Machine,
    pub broker_bin: String,
    pub broker_version: Option<String>,
    pub shards: Option<usize>,
    pub config_source: String,
    /// "your config", "added by the harness" or "none".
    pub disk_buffer: String,
    /// Every change to the config besides the setting itself.
    pub config_changes: Vec<Change>,
    pub plan: Plan,
    pub pending: Vec<PendingWorkload>,
    /// The cipher on this CPU, per payload size.
    pub costs: Vec<CipherCost>,
    pub cells: Vec<Cell>,
    pub runs: Vec<EncRun>,
    pub ok: bool,
}

impl EncReport {
    pub fn start(
        opts: &Options,
        bin: &Path,
        base: &BaseConfig,
        work: &Path,
    ) -> Result<EncReport, EncError> {
        // The changes of a spill scenario are a superset of the others'.
        let spills = opts.scenarios.iter().any(|s| s.impairs_subscriber());
        let (_, changes) =
            base.derive(Setting::Enabled, spills, opts.adjust, 1, &work.join("RUN"))?;
        Ok(EncReport {
            generated_utc: utc_now(),
            machine: Machine::here(),
            broker_bin: bin.display().to_string(),
            broker_version: None,
            shards: None,
            config_source: base.source.clone(),
            disk_buffer: if base.has_buffer() {
                "your config"
            } else if opts.adjust.add_buffer {
                "added by the harness"
            } else {
                "none"
            }
            .to_owned(),
            config_changes: changes,
            plan: Plan {
                scenarios: opts.scenarios.iter().map(|s| s.name().to_owned()).collect(),
                payloads: opts.payloads.clone(),
                rounds: opts.rounds.max(1),
                duration_s: opts.duration.as_secs_f64(),
                warmup_s: opts.warmup.as_secs_f64(),
                qos: opts.qos as u8,
                rate_per_publisher: opts.rate,
                offline: opts.offline,
                spill_at: opts.adjust.spill_at,
                broker_cpu: opts.broker_cpu,
            },
            pending: WORKLOADS
                .iter()
                .filter_map(|w| match w {
                    Workload::Pending { name, waits_for } => Some(PendingWorkload {
                        name: (*name).to_owned(),
                        waits_for: (*waits_for).to_owned(),
                    }),
                    Workload::Run(_) => None,
                })
                .collect(),
            costs: Vec::new(),
            cells: Vec::new(),
            runs: Vec::new(),
            ok: false,
        })
    }

    /// Medians, ratios and floors from the runs.
    pub fn finish(&mut self) {
        self.machine.load_average_end = first_line("/proc/loadavg");
        self.summarise();
    }

    /// Derives everything but the runs and the cipher costs from them (a
    /// saved report is summarised again by the harness that renders it).
    pub fn summarise(&mut self) {
        let first_log = self.runs.iter().find(|r| r.log.version.is_some());
        self.broker_version = first_log.and_then(|r| r.log.version.clone());
        self.shards = first_log.and_then(|r| r.log.shards);
        let has_buffer = self.disk_buffer != "none";
        let mut cells = Vec::new();
        for name in &self.plan.scenarios {
            let Ok(scenario) = Workload::parse(name) else {
                continue;
            };
            for &p in &self.plan.payloads {
                let cost = self.costs.iter().find(|c| c.payload_bytes == p);
                cells.push(Cell::of(scenario, p, &self.runs, cost, has_buffer));
            }
        }
        self.cells = cells;
        self.ok = !self.runs.is_empty() && self.runs.iter().all(EncRun::ok);
    }
}

/// `2026-12-04T23:42:42Z` without a date crate (civil from days, Howard
/// Hinnant's algorithm).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: usize, setting: Setting, drain: f64) -> EncRun {
        let report = RunReport {
            drain_per_s: Some(drain),
            ..Default::default()
        };
        EncRun::new(
            round,
            setting,
            Scenario::SlowSub,
            report,
            LogFacts::default(),
            None,
            vec![],
        )
    }

    #[test]
    fn paired_ratios_cancel_drift_between_rounds() {
        // Round 2 ran on a busy machine: both settings at a third.
        let on = [
            run(0, Setting::Enabled, 900.0),
            run(1, Setting::Enabled, 300.0),
            run(2, Setting::Enabled, 880.0),
        ];
        let off = [
            run(0, Setting::Disabled, 1000.0),
            run(1, Setting::Disabled, 330.0),
            run(2, Setting::Disabled, 1000.0),
        ];
        let (on, off): (Vec<&EncRun>, Vec<&EncRun>) = (on.iter().collect(), off.iter().collect());
        let p = paired(&on, &off, |r| r.report.drain_per_s).unwrap();
        assert!((p - 0.9).abs() < 1e-9, "{p}");
    }

    #[test]
    fn the_date_is_a_utc_timestamp() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn the_floor_scales_with_what_spilled() {
        let cost = CipherCost {
            payload_bytes: 1024,
            record_bytes: 1100,
            records_per_block: 14,
            aes_seal_ns: 200.0,
            aes_open_ns: 200.0,
            crc_seal_ns: 50.0,
            crc_open_ns: 50.0,
            aes_seal_gib_per_s: 5.0,
        };
        let e = Figures {
            spilled: Some(10_000.0),
            read_back: Some(10_000.0),
            delivered_total: 20_000.0,
            cpu_ms_per_1000: Some(30.0),
            backlog: Some(10_000.0),
            ..Default::default()
        };
        let d = Figures {
            cpu_ms_per_1000: Some(27.0),
            drain_per_s: Some(1_000_000.0),
            ..Default::default()
        };
        let f = floor_of(&e, &d, &cost);
        // 10k x (200 + 200) ns over 20k messages = 200 ns a message.
        assert!((f.cipher_ms_per_1000 - 0.2).abs() < 1e-9);
        assert!((f.extra_ms_per_1000 - 0.15).abs() < 1e-9);
        assert_eq!(f.measured_extra_ms_per_1000, Some(3.0));
        // 1M msgs/s x 150 ns = 0.15 of a second: 1 / 1.15.
        let r = f.drain_ratio_cipher_only.unwrap();
        assert!((r - 1.0 / 1.15).abs() < 1e-9);
        assert_eq!(f.drain_extra_ns_cipher, Some(150.0));
        // Enabled did not drain: no measured difference to compare with.
        assert_eq!(f.drain_extra_ns_measured, None);
    }
}
