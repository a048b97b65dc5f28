//! Targets (a `host:port`, or a command that starts a broker on a free
//! port) and the `compare` loop: every round runs every target once, in
//! order (A B A B ...), so drift on the machine hits all targets alike; the
//! table shows medians over rounds with ratios against the first target.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::report::RunReport;
use crate::spec::{RunSpec, Target};

/// Free ports are picked from here (outside the ephemeral range, away from
/// 1883 and friends).
const PORT_RANGE: std::ops::Range<u16> = 20000..30000;
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {0:?}: expected NAME=HOST:PORT or NAME=cmd:COMMAND")]
    Syntax(String),
    #[error("target {name}: command has no {{port}} placeholder")]
    NoPortPlaceholder { name: String },
    #[error("no free port in {}..{}", PORT_RANGE.start, PORT_RANGE.end)]
    NoFreePort,
    #[error("target {name}: cannot start {cmd:?}: {source}")]
    Spawn {
        name: String,
        cmd: String,
        source: std::io::Error,
    },
    #[error("target {name}: broker exited ({status}) before listening on port {port}; log {log}:\n{tail}")]
    Exited {
        name: String,
        status: String,
        port: u16,
        log: String,
        tail: String,
    },
    #[error("target {name}: nothing listening on port {port} after {secs} s; log {log}")]
    NotListening {
        name: String,
        port: u16,
        secs: u64,
        log: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    Addr(String),
    /// Shell command with `{port}` and optionally `{tmp}`.
    Cmd(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: String,
    pub kind: TargetKind,
}

impl TargetSpec {
    /// `NAME=HOST:PORT`, `NAME=cmd:COMMAND`, or (unnamed) `HOST:PORT` /
    /// `cmd:COMMAND`.
    pub fn parse(s: &str) -> Result<TargetSpec, TargetError> {
        let (name, rest) = match s.split_once('=') {
            Some((n, r)) if !n.is_empty() && !n.contains([':', ' ', '{']) => (n.to_owned(), r),
            _ => (String::new(), s),
        };
        let kind = match rest.strip_prefix("cmd:") {
            Some(cmd) if !cmd.trim().is_empty() => {
                if !cmd.contains("{port}") {
                    return Err(TargetError::NoPortPlaceholder { name });
                }
                TargetKind::Cmd(cmd.to_owned())
            }
            Some(_) => return Err(TargetError::Syntax(s.to_owned())),
            None if rest
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                TargetKind::Addr(rest.to_owned())
            }
            None => return Err(TargetError::Syntax(s.to_owned())),
        };
        let name = if name.is_empty() {
            match &kind {
                TargetKind::Addr(a) => a.clone(),
                TargetKind::Cmd(_) => "cmd".to_owned(),
            }
        } else {
            name
        };
        Ok(TargetSpec { name, kind })
    }
}

/// Picks a port in [`PORT_RANGE`] that nothing is bound to right now.
pub fn free_port() -> Result<u16, TargetError> {
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..span {
        let port = PORT_RANGE.start + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(TargetError::NoFreePort)
}

/// A broker the harness started; stopped (process group SIGTERM, then
/// SIGKILL) on `stop` or drop.
#[derive(Debug)]
pub struct Launched {
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    pub dir: PathBuf,
}

fn tail(path: &std::path::Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Launched {
    /// Starts `template` (`sh -c`, `{port}` and `{tmp}` substituted) on a
    /// free port, with a fresh scratch directory.
    pub fn start(name: &str, template: &str, cpu: Option<usize>) -> Result<Launched, TargetError> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("shardmq-lt-{}-{port}", std::process::id()));
        let spawn_err = |source| TargetError::Spawn {
            name: name.to_owned(),
            cmd: template.to_owned(),
            source,
        };
        // Fresh: a dead process's directory (pids and ports are reused)
        // would hand this broker its files.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(spawn_err)?;
        let command = template_command(template, port, &dir, cpu);
        Launched::spawn(name, template, command, port, dir)
    }

    /// Spawns `command` (which must make a broker listen on 127.0.0.1:`port`)
    /// with its output in `dir/broker.log`, and waits for the port.
    pub fn spawn(
        name: &str,
        label: &str,
        mut command: Command,
        port: u16,
        dir: PathBuf,
    ) -> Result<Launched, TargetError> {
        use std::os::unix::process::CommandExt;
        let spawn_err = |source| TargetError::Spawn {
            name: name.to_owned(),
            cmd: label.to_owned(),
            source,
        };
        let log_path = dir.join("broker.log");
        // Appended to: a broker restarted in the same directory (`crash`)
        // keeps the earlier lives' logs.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(spawn_err)?;
        let log2 = log.try_clone().map_err(spawn_err)?;
        // Own process group, so stopping reaches whatever the shell started.
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = command.spawn().map_err(spawn_err)?;
        let mut launched = Launched {
            pid: child.id(),
            child: Some(child),
            port,
            dir,
        };
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(launched);
            }
            if let Some(Ok(Some(status))) = launched.child.as_mut().map(|c| c.try_wait()) {
                return Err(TargetError::Exited {
                    name: name.to_owned(),
                    status: status.to_string(),
                    port,
                    log: log_path.display().to_string(),
                    tail: tail(&log_path),
                });
            }
            if started.elapsed() > START_TIMEOUT {
                launched.stop();
                return Err(TargetError::NotListening {
                    name: name.to_owned(),
                    port,
                    secs: START_TIMEOUT.as_secs(),
                    log: log_path.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the whole process group, no warning: a power cut as far
    /// as the broker can tell. Reaps the leader.
    pub fn kill(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Whether the process is still there (not exited, not killed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn stop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                // The leader is gone; make sure nothing it started lingers.
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sh -c TEMPLATE` with `{port}` and `{tmp}` (`dir`) substituted.
pub fn template_command(
    template: &str,
    port: u16,
    dir: &std::path::Path,
    cpu: Option<usize>,
) -> Command {
    let cmd = template
        .replace("{port}", &port.to_string())
        .replace("{tmp}", &dir.display().to_string());
    pinned_command(cpu, "sh", &["-c".as_ref(), cmd.as_ref()])
}

/// `program args...`, under `taskset -c CPU` when `cpu` is given and
/// taskset exists.
pub fn pinned_command(cpu: Option<usize>, program: &str, args: &[&std::ffi::OsStr]) -> Command {
    match cpu {
        Some(cpu) if which("taskset") => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), program]).args(args);
            c
        }
        _ => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// Medians over rounds for one target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Medians {
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub received_per_s: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub broker_cpu_pct: Option<f64>,
    pub broker_rss_mib_peak: Option<f64>,
    pub harness_cpu_pct: Option<f64>,
    pub connects_per_s: Option<f64>,
    /// Totals over rounds, not medians.
    pub lost: u64,
    pub duplicated: u64,
    /// QoS 1 redeliveries with DUP on a later connection (allowed).
    pub redelivered: u64,
    pub errors: u64,
    pub failed_runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median_opt(v: Vec<Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.into_iter().flatten().collect();
    (!v.is_empty()).then(|| median(v))
}

impl Medians {
    pub fn of(runs: &[RunReport]) -> Medians {
        let m = |f: &dyn Fn(&RunReport) -> f64| median(runs.iter().map(f).collect());
        let mo = |f: &dyn Fn(&RunReport) -> Option<f64>| median_opt(runs.iter().map(f).collect());
        Medians {
            sent_per_s: m(&|r| r.sent_per_s),
            acked_per_s: m(&|r| r.acked_per_s),
            received_per_s: m(&|r| r.received_per_s),
            p50_us: m(&|r| r.latency_us.p50),
            p90_us: m(&|r| r.latency_us.p90),
            p99_us: m(&|r| r.latency_us.p99),
            p999_us: m(&|r| r.latency_us.p999),
            max_us: m(&|r| r.latency_us.max),
            broker_cpu_pct: mo(&|r| r.broker.as_ref().map(|b| b.cpu_pct)),
            broker_rss_mib_peak: mo(&|r| r.broker.as_ref().map(|b| b.rss_mib_peak)),
            harness_cpu_pct: mo(&|r| r.harness.as_ref().map(|b| b.cpu_pct)),
            connects_per_s: mo(&|r| r.connects_per_s),
            lost: runs.iter().map(|r| r.lost).sum(),
            duplicated: runs.iter().map(|r| r.duplicated).sum(),
            redelivered: runs.iter().map(|r| r.redelivered).sum(),
            errors: runs.iter().map(|r| r.errors.values().sum::<u64>()).sum(),
            failed_runs: runs.iter().filter(|r| !r.ok()).count(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub target: String,
    pub median: Medians,
    pub runs: Vec<RunReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub rounds: usize,
    pub targets: Vec<TargetResult>,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.targets
            .iter()
            .all(|t| t.median.failed_runs == 0 && !t.runs.is_empty())
    }

    /// Side-by-side table: one row per metric, one column per target, with
    /// the ratio to the first target.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let col = 24;
        let _ = write!(
            s,
            "{:<22}",
            format!("{} (median of {})", self.scenario, self.rounds)
        );
        for t in &self.targets {
            let _ = write!(s, "{:>col$}", t.name);
        }
        s.push('\n');
        type Get = fn(&Medians) -> Option<f64>;
        let rows: [(&str, Get, bool); 12] = [
            ("sent msgs/s", |m| Some(m.sent_per_s), true),
            ("acked msgs/s", |m| Some(m.acked_per_s), true),
            ("received msgs/s", |m| Some(m.received_per_s), true),
            ("latency p50 µs", |m| Some(m.p50_us), false),
            ("latency p90 µs", |m| Some(m.p90_us), false),
            ("latency p99 µs", |m| Some(m.p99_us), false),
            ("latency p99.9 µs", |m| Some(m.p999_us), false),
            ("latency max µs", |m| Some(m.max_us), false),
            ("connects/s", |m| m.connects_per_s, true),
            ("broker CPU %", |m| m.broker_cpu_pct, false),
            ("broker RSS peak MiB", |m| m.broker_rss_mib_peak, false),
            ("harness CPU %", |m| m.harness_cpu_pct, false),
        ];
        for (label, get, _higher_is_better) in rows {
            let base = self.targets.first().and_then(|t| get(&t.median));
            if self.targets.iter().all(|t| get(&t.median).is_none()) {
                continue;
            }
            let _ = write!(s, "{label:<22}");
            for (i, t) in self.targets.iter().enumerate() {
                let cell = match (get(&t.median), base) {
                    (Some(v), Some(b)) if i > 0 && b > 0.0 => {
                        format!("{} ({:.2}x)", fmt_num(v), v / b)
                    }
                    (Some(v), _) => fmt_num(v),
                    (None, _) => "-".to_owned(),
                };
                let _ = write!(s, "{cell:>col$}");
            }
            s.push('\n');
        }
        let _ = write!(s, "{:<22}", "lost/dup/errors/failed");
        for t in &self.targets {
            let m = &t.median;
            let _ = write!(
                s,
                "{:>col$}",
                format!("{}/{}/{}/{}", m.lost, m.duplicated, m.errors, m.failed_runs)
            );
        }
        s.push('\n');
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Runs `spec` against every target, `rounds` times, interleaved.
pub async fn compare(
    spec: &RunSpec,
    targets: &[TargetSpec],
    rounds: usize,
    broker_cpu: Option<usize>,
    pause: Duration,
) -> Comparison {
    let mut results: Vec<TargetResult> = targets
        .iter()
        .map(|t| TargetResult {
            name: t.name.clone(),
            target: match &t.kind {
                TargetKind::Addr(a) => a.clone(),
                TargetKind::Cmd(c) => format!("cmd:{c}"),
            },
            median: Medians::default(),
            runs: Vec::new(),
        })
        .collect();
    for round in 0..rounds.max(1) {
        for (t, result) in targets.iter().zip(results.iter_mut()) {
            let mut spec = spec.clone();
            let (addr, mut launched) = match &t.kind {
                TargetKind::Addr(a) => (a.clone(), None),
                TargetKind::Cmd(c) => match Launched::start(&t.name, c, broker_cpu) {
                    Ok(l) => (format!("127.0.0.1:{}", l.port), Some(l)),
                    Err(e) => {
                        eprintln!("round {}: {e}", round + 1);
                        let mut r = crate::run::report_for(
                            &spec,
                            &Target {
                                name: t.name.clone(),
                                addr: String::new(),
                            },
                        );
                        r.failures.push(e.to_string());
                        result.runs.push(r);
                        continue;
                    }
                },
            };
            if let Some(l) = &launched {
                spec.broker_pid = Some(l.pid);
            }
            let target = Target {
                name: t.name.clone(),
                addr,
            };
            let report = match crate::run::run(&spec, &target).await {
                Ok(r) => r,
                Err(e) => {
                    let mut r = crate::run::report_for(&spec, &target);
                    r.failures.push(e.to_string());
                    r
                }
            };
            println!(
                "round {}/{} {:<16} received {:>10.0}/s  p50 {:>8.0} µs  p99 {:>8.0} µs  lost {}  {}",
                round + 1,
                rounds,
                t.name,
                report.received_per_s,
                report.latency_us.p50,
                report.latency_us.p99,
                report.lost,
                if report.ok() { "ok".to_owned() } else { format!("FAIL: {}", report.failures.join("; ")) }
            );
            result.runs.push(report);
            if let Some(l) = launched.as_mut() {
                l.stop();
            }
            tokio::time::sleep(pause).await;
        }
    }
    for r in &mut results {
        r.median = Medians::of(&r.runs);
    }
    Comparison {
        scenario: spec.scenario.name().to_owned(),
        rounds: rounds.max(1),
        targets: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_forms_parse() {
        assert_eq!(
            TargetSpec::parse("a=127.0.0.1:1883").ok(),
            Some(TargetSpec {
                name: "a".into(),
                kind: TargetKind::Addr("127.0.0.1:1883".into())
            })
        );
        assert_eq!(
            TargetSpec::parse("m=cmd:mosquitto -p {port}").ok(),
            Some(TargetSpec {
                name: "m".into(),
                kind: TargetKind::Cmd("mosquitto -p {port}".into())
            })
        );
        // '=' inside a command does not make a name.
        let t = TargetSpec::parse("cmd:env A=1 broker {port}").ok();
        assert_eq!(t.map(|t| t.name), Some("cmd".to_owned()));
    }

    #[test]
    fn bad_targets_are_refused() {
        assert!(TargetSpec::parse("x=cmd:mosquitto").is_err());
        assert!(TargetSpec::parse("x=localhost").is_err());
        assert!(TargetSpec::parse("x=cmd:").is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn free_port_is_in_range_and_bindable() {
        let p = free_port().unwrap();
        assert!(PORT_RANGE.contains(&p));
    }
}
