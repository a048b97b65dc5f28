//! CPU and memory of a process tree, sampled from /proc (Linux only): each
//! process's CPU-time clock in nanoseconds (falling back to `/proc/PID/stat`
//! utime+stime in 10 ms ticks) and `/proc/PID/status` VmRSS, summed over the
//! process and its descendants (a broker started through `sh -c` is the
//! shell's child). Owns sampling and summarising; no decisions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Nanoseconds per clock tick of /proc/PID/stat (USER_HZ, 100 on Linux for
/// every architecture the harness targets).
const NS_PER_TICK: u64 = 10_000_000;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_ns: u64,
    rss_kib: u64,
}

/// CPU and memory over a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcUsage {
    /// Average CPU over the measured window, 100 = one core.
    pub cpu_pct: f64,
    /// RSS at the end of the window.
    pub rss_mib: f64,
    /// Highest RSS sampled during the run.
    pub rss_mib_peak: f64,
}

fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parens: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Nanoseconds on CPU of process `pid`, all its threads, ended ones too
/// (its CPU-time clock, `clock_getcpuclockid`). A broker at 4 % of a core
/// runs 120 ms in a 3 s window: ticks of 10 ms (`stat`) would put +-8 % on
/// that figure.
fn cpu_ns_of(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    let clock = nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(pid)).ok()?;
    let t = nix::time::clock_gettime(clock).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// `root` and all its descendants (one /proc scan).
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                if let Some((ppid, _)) = stat_of(pid) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        out.extend(children.get(&p).into_iter().flatten().copied());
        i += 1;
    }
    out
}

fn sample(root: u32, with_children: bool) -> Option<Sample> {
    let pids = if with_children {
        tree(root)
    } else {
        vec![root]
    };
    // `stat` only where the CPU-time clock is refused (a gone process
    // refuses both).
    let cpu_of =
        |pid: u32| cpu_ns_of(pid).or_else(|| stat_of(pid).map(|(_, ticks)| ticks * NS_PER_TICK));
    let mut cpu_ns = cpu_of(root)?;
    let mut rss_kib = rss_kib_of(root);
    for &p in pids.iter().skip(1) {
        if let Some(ns) = cpu_of(p) {
            cpu_ns += ns;
            rss_kib += rss_kib_of(p);
        }
    }
    Some(Sample {
        at: Instant::now(),
        cpu_ns,
        rss_kib,
    })
}

/// Samples one process tree in the background until dropped. A thread,
/// not a task: busy client tasks on a one-thread runtime must not delay
/// the samples that delimit the measured window.
#[derive(Debug)]
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    pub fn start(pid: u32, with_children: bool) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (samples.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("procstat".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let (Some(s), Ok(mut v)) = (sample(pid, with_children), sink.lock()) {
                        v.push(s);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
        // Without the thread, the window-edge `mark`s still give a figure.
        drop(spawned);
        Sampler { samples, stop }
    }

    /// Takes one sample now (window edges need not wait for the timer).
    pub fn mark(&self, pid: u32, with_children: bool) {
        if let (Some(s), Ok(mut v)) = (sample(pid, with_children), self.samples.lock()) {
            v.push(s);
        }
    }

    /// Usage between `from` and `to`.
    pub fn usage(&self, from: Instant, to: Instant) -> Option<ProcUsage> {
        let v = self.samples.lock().ok()?;
        let peak = v.iter().map(|s| s.rss_kib).max()?;
        let first = v.iter().find(|s| s.at >= from).or(v.first())?;
        let last = v.iter().rev().find(|s| s.at <= to).or(v.last())?;
        let secs = last.at.saturating_duration_since(first.at).as_secs_f64();
        let cpu_pct = if secs > 0.0 {
            last.cpu_ns.saturating_sub(first.cpu_ns) as f64 / 1e9 / secs * 100.0
        } else {
            0.0
        };
        Some(ProcUsage {
            cpu_pct,
            rss_mib: last.rss_kib as f64 / 1024.0,
            rss_mib_peak: peak as f64 / 1024.0,
        })
    }

    /// The most recent RSS sample, MiB.
    pub fn rss_mib_now(&self) -> Option<f64> {
        self.samples
            .lock()
            .ok()?
            .last()
            .map(|s| s.rss_kib as f64 / 1024.0)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_rss() {
        let s = sample(std::process::id(), false);
        assert!(s.is_some_and(|s| s.rss_kib > 0));
    }

    /// Nanoseconds, not ticks: after some spinning the count has moved,
    /// and not by whole 10 ms ticks.
    #[test]
    fn cpu_time_is_counted_in_nanoseconds() {
        let pid = std::process::id();
        let before = cpu_ns_of(pid).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut spent = 0;
        while spent < 30_000_000 && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
            spent = cpu_ns_of(pid).unwrap().saturating_sub(before);
        }
        assert!(spent >= 30_000_000, "{spent} ns in 10 s");
        assert!(spent % NS_PER_TICK != 0, "{spent} ns is whole ticks");
    }

    #[test]
    fn missing_process_yields_no_sample() {
        assert!(sample(u32::MAX - 7, true).is_none());
    }
}
