//! Command line: `run` (one scenario against one broker), `compare` (the
//! same scenario against several targets, interleaved), `encryption`
//! (a broker config with encryptInternalTraffic Enabled vs Disabled) and
//! `crash` (kill -9 and restart the broker, count what it lost).
//! Parses flags into a validated [`RunSpec`], target list,
//! [`encryption::Options`] or [`crash::Options`]; runs nothing itself.

use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shardmq_core::codec::{ProtocolVersion, QoS};

use crate::compare::{TargetKind, TargetSpec};
use crate::crash;
use crate::encryption::{self, config::Adjustments, DEFAULT_PAYLOADS, DEFAULT_WORKLOADS};
use crate::spec::{RunSpec, Scenario, StampMode, TlsSpec};

#[derive(Debug, Parser)]
#[command(
    name = "shardmq-loadtest",
    version,
    about = "Load harness for MQTT 3.1.1/5.0 brokers"
)]
pub struct Cli {
    /// Tokio worker threads for the harness (1: everything on one thread).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Pin the harness to this CPU.
    #[arg(long, global = true)]
    pub cpu: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one scenario against one broker.
    Run {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// `HOST:PORT`, or `cmd:COMMAND` with `{port}` (and optionally
        /// `{tmp}`, a scratch directory) to start a broker for the run.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Sample this process (and its children): CPU %, RSS.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// Pin a broker started with `cmd:` to this CPU (taskset).
        #[arg(long)]
        broker_cpu: Option<usize>,
        /// Subscribers connect to this `HOST:PORT` (another node of the
        /// broker's cluster): every message crosses a node link.
        #[arg(long)]
        sub_broker: Option<String>,
        /// Write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The loopback floor: round trips through a trivial TCP echo server
    /// pinned like a broker, one in flight (compare with p2p QoS 1
    /// `--inflight 1`).
    EchoFloor {
        /// Payload bytes per round trip.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Measured duration (`10`, `10s`, `500ms`).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
        /// Pin the echo server's thread to this CPU (where a broker runs).
        #[arg(long)]
        server_cpu: Option<usize>,
    },
    /// A reference for fan-in and fan-out: a forwarder on 127.0.0.1:PORT
    /// that speaks just enough MQTT for the harness (QoS 0 and 1) and sends
    /// every PUBLISH to every subscriber, with none of a broker's work. Use
    /// it as a `compare` target (`null=cmd:shardmq-loadtest null-broker
    /// --port {port}`) beside the brokers, for fan-in, fan-out and p2p with
    /// one pair; not a broker.
    NullBroker {
        #[arg(long)]
        port: u16,
    },
    /// Run one scenario against several targets, interleaved (A B A B ...).
    Compare {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// `NAME=HOST:PORT` or `NAME=cmd:COMMAND {port}`; repeat, the first
        /// is the baseline for ratios.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Rounds; each runs every target once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Pin brokers started with `cmd:` to this CPU (taskset).
        #[arg(long)]
        broker_cpu: Option<usize>,
        /// Pause between runs (sockets in TIME_WAIT, broker shut down).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        pause: Duration,
        /// Write all reports and the medians as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an SVG chart of throughput and latency percentiles.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Your broker config with advanced.encryptInternalTraffic Enabled vs
    /// Disabled: scenarios x payload sizes, interleaved rounds, medians side
    /// by side with the cipher's own cost; JSON and HTML report.
    Encryption(EncryptionArgs),
    /// QoS 1 publishers to persistent subscribers while the broker is
    /// killed (SIGKILL) at random moments and restarted on the same data
    /// directory; fails if an acknowledged message never arrives.
    Crash(CrashArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CrashArgs {
    /// `NAME=cmd:COMMAND` or `cmd:COMMAND`, run with `sh -c` after
    /// substituting `{port}` and `{tmp}` (the data directory, the same for
    /// every restart).
    #[arg(long)]
    pub broker: String,
    /// How many times to kill and restart the broker.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Mean time from a recovery to the next kill; each wait is uniform in
    /// [0.5, 1.5] times this.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub kill_every: Duration,
    /// Seed of the kill moments (the same seed, the same waits).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Messages per second per publisher.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Unacknowledged messages per publisher.
    #[arg(long, default_value = "10")]
    pub inflight: NonZeroU16,
    /// Payload bytes (at least 20: timestamp, publisher id, sequence).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// MQTT protocol: 5 (Session Expiry 1 h) or 3 (3.1.1, Clean Session 0).
    #[arg(long, default_value = "5", value_parser = parse_protocol)]
    pub protocol: ProtocolVersion,
    /// Subscribers go offline (DISCONNECT, session kept) this long before
    /// each kill and reconnect after the restart, so every kill hits
    /// messages queued for offline sessions (at most the wait before the
    /// kill; 0: always online).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub offline: Duration,
    /// Messages per second each subscriber acknowledges at most (v5
    /// subscribers then announce Receive Maximum 100), so the broker holds
    /// unacknowledged messages when it dies; default: at once.
    #[arg(long)]
    pub sub_rate: Option<NonZeroU32>,
    /// After publishing stops, how long to wait for acknowledged messages.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Kill to first CONNACK, at most (the port must accept TCP within 15 s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub restart_timeout: Duration,
    /// Pin the broker to this CPU (taskset).
    #[arg(long)]
    pub broker_cpu: Option<usize>,
    /// Duplicates without DUP (or without a reconnect) and reordering fail
    /// the run too, not only lost acknowledged messages.
    #[arg(long)]
    pub strict: bool,
    /// Keep the data directory and the broker's log.
    #[arg(long)]
    pub keep_dir: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl CrashArgs {
    pub fn to_options(&self) -> Result<crash::Options, String> {
        let target = TargetSpec::parse(&self.broker).map_err(|e| e.to_string())?;
        let TargetKind::Cmd(template) = target.kind else {
            return Err(format!(
                "--broker: the harness must start the broker to kill it: NAME=cmd:COMMAND, not {:?}",
                self.broker
            ));
        };
        let name = target.name;
        if self.payload < crate::payload::HEADER_LEN {
            return Err(format!(
                "--payload: at least {} bytes",
                crate::payload::HEADER_LEN
            ));
        }
        Ok(crash::Options {
            name,
            template,
            kills: self.kills,
            kill_every: self.kill_every,
            seed: self.seed,
            publishers: self.publishers,
            subscribers: self.subscribers,
            rate_per_s: self.rate,
            inflight: self.inflight.get(),
            payload_bytes: self.payload,
            version: self.protocol,
            sub_rate: self.sub_rate.map(NonZeroU32::get),
            offline: self.offline,
            drain: self.drain,
            connect_timeout: self.connect_timeout,
            restart_timeout: self.restart_timeout,
            broker_cpu: self.broker_cpu,
            strict: self.strict,
            keep_dir: self.keep_dir,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct EncryptionArgs {
    /// Broker config (JSON, docs/CONFIG.md); default: the broker's built-in
    /// default (`shardmq --print-default-config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The shardmq binary; default: `shardmq` next to this program, else on
    /// PATH.
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// Comma-separated: fan-in, fan-out, p2p (nothing spills: expect
    /// parity), slow-reader, slow-sub (spill to the disk buffer and drain).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_WORKLOADS, value_parser = parse_workload)]
    pub scenarios: Vec<Scenario>,
    /// Payload sizes in bytes, comma-separated (at least 54 for the
    /// plaintext check).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_PAYLOADS, value_parser = parse_payload)]
    pub payloads: Vec<usize>,
    /// Rounds; each runs every scenario and payload once per setting.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measured duration of each run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Wait for in-flight messages after publishing stops (spill scenarios
    /// wait at least 5 s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    #[arg(long, default_value = "1", value_parser = parse_qos)]
    pub qos: QoS,
    /// Messages per second per publisher (default: per scenario, for about
    /// 20,000 deliveries/s and at most 64 MiB/s).
    #[arg(long)]
    pub rate: Option<u32>,
    /// slow-sub offline / slow-reader slow span, fractions of the duration.
    #[arg(long, default_value = "0.2-0.7", value_parser = parse_window)]
    pub offline: (f64, f64),
    /// Pin the broker to this CPU (taskset).
    #[arg(long)]
    pub broker_cpu: Option<usize>,
    /// Pause between runs.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub pause: Duration,
    /// Spill scenarios: messages a session keeps in memory before the rest
    /// spills (lowers subscriberQueueLimit.length); 0 keeps your limits.
    #[arg(long, default_value_t = 1000)]
    pub spill_at: u32,
    /// Run a config without a disk buffer as it is (nothing spills) instead
    /// of adding one in a scratch directory.
    #[arg(long)]
    pub no_added_buffer: bool,
    /// Keep each run's directory (config, broker log, buffer files) here.
    #[arg(long)]
    pub keep_runs: Option<PathBuf>,
    #[arg(long, default_value = "shardmq-encryption.json")]
    pub json: PathBuf,
    /// Self-contained page with the charts and tables.
    #[arg(long, default_value = "shardmq-encryption.html")]
    pub html: PathBuf,
    /// The charts alone, as one SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No live progress line even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Runs nothing: draws a saved report (its JSON) again as the table,
    /// the page (--html) and the SVG (--svg).
    #[arg(long)]
    pub render: Option<PathBuf>,
}

fn parse_workload(s: &str) -> Result<Scenario, String> {
    encryption::Workload::parse(s)
}

fn parse_payload(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("payload size in bytes, not {s:?}"))?;
    if n < crate::payload::HEADER_LEN {
        return Err(format!(
            "payloads carry a {}-byte stamp: at least {} bytes",
            crate::payload::HEADER_LEN,
            crate::payload::HEADER_LEN
        ));
    }
    Ok(n)
}

impl EncryptionArgs {
    pub fn to_options(&self) -> encryption::Options {
        encryption::Options {
            config: self.config.clone(),
            broker_bin: self.broker_bin.clone(),
            scenarios: self.scenarios.clone(),
            payloads: self.payloads.clone(),
            rounds: self.rounds.max(1),
            duration: self.duration,
            warmup: self.warmup,
            drain: self.drain,
            qos: self.qos,
            rate: self.rate,
            offline: self.offline,
            broker_cpu: self.broker_cpu,
            pause: self.pause,
            adjust: Adjustments {
                add_buffer: !self.no_added_buffer,
                spill_at: (self.spill_at > 0).then_some(self.spill_at),
            },
            keep_runs: self.keep_runs.clone(),
            progress: !self.quiet,
        }
    }
}

/// Scenario flags shared by `run` and `compare`; unset flags take the
/// scenario preset's value.
#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,
    #[arg(long)]
    pub publishers: Option<usize>,
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Connections (conn-storm, idle).
    #[arg(long)]
    pub clients: Option<usize>,
    #[arg(long, value_parser = parse_qos)]
    pub qos: Option<QoS>,
    /// Payload bytes (at least 20: timestamp, publisher id, sequence).
    #[arg(long)]
    pub payload: Option<usize>,
    /// MQTT protocol: 3 (3.1.1) or 5.
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<ProtocolVersion>,
    /// Messages per second per publisher, open loop; 0 = unlimited.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long)]
    pub inflight: Option<NonZeroU16>,
    /// Measured duration (`10`, `10s`, `500ms`).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Wait for in-flight messages after publishing stops.
    #[arg(long, value_parser = parse_duration)]
    pub drain: Option<Duration>,
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Persistent subscriber sessions (Clean Start 0, v5 session expiry 1 h).
    #[arg(long, conflicts_with = "clean")]
    pub persistent: bool,
    #[arg(long)]
    pub clean: bool,
    #[arg(long, value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Connection attempts in flight at once.
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    #[arg(long)]
    pub keep_alive: Option<u16>,
    /// Timestamp in the payload: scheduled (open loop) or actual send time.
    #[arg(long, value_enum)]
    pub stamp: Option<StampMode>,
    /// Report loss and duplicates at QoS 1/2 without failing.
    #[arg(long)]
    pub allow_loss: bool,
    /// Publish with RETAIN set: each publisher replaces its topic's retained
    /// message (with `persistence`, every message is a durable write).
    #[arg(long)]
    pub retain: bool,
    /// With --rate: publisher i starts i/N of an interval late, so the N
    /// schedules interleave evenly (independent sensors) instead of all
    /// sending at the same instants (bursts of N messages).
    #[arg(long)]
    pub stagger: bool,
    /// Run the subscribers on a thread of their own, at real-time priority
    /// (SCHED_FIFO 1) where the process may set it, so their reads do not
    /// wait behind a burst of publisher sends on the harness's core: the
    /// latency is then the broker's and the kernel's, not the harness's.
    #[arg(long)]
    pub sub_thread: bool,
    /// slow-sub: offline window as fractions of the duration, `FROM-UNTIL`
    /// (slow-reader: the span it reads slowly).
    #[arg(long, value_parser = parse_window)]
    pub offline: Option<(f64, f64)>,
    /// slow-reader: messages per second the subscriber reads while slow
    /// (default: a tenth of what the publishers send together).
    #[arg(long)]
    pub reader_rate: Option<NonZeroU32>,
    /// CA certificate (PEM) to verify the broker: enables TLS.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    #[arg(long, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// No live progress line even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS is 0, 1 or 2, not {s:?}"))
}

fn parse_protocol(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "3" | "4" | "3.1.1" | "311" => Ok(ProtocolVersion::V311),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        _ => Err(format!("protocol is 3 (3.1.1) or 5, not {s:?}")),
    }
}

/// `10`, `2.5`, `10s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10s, 500ms)"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("not a duration: {s:?}"))
}

fn parse_window(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("offline window is FROM-UNTIL fractions, e.g. 0.3-0.6, not {s:?}");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (f64, f64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if !(0.0..=1.0).contains(&a) || !(a..=1.0).contains(&b) {
        return Err(bad());
    }
    Ok((a, b))
}

impl ScenarioArgs {
    /// The preset with every given flag applied.
    pub fn to_spec(&self) -> RunSpec {
        let mut s = self.scenario.preset();
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut s.publishers, self.publishers);
        set(&mut s.subscribers, self.subscribers);
        set(&mut s.clients, self.clients);
        set(&mut s.payload_bytes, self.payload);
        set(&mut s.connect_concurrency, self.connect_concurrency);
        if let Some(q) = self.qos {
            s.qos = q;
        }
        if let Some(v) = self.protocol {
            s.version = v;
        }
        if let Some(r) = self.rate {
            s.rate_per_s = NonZeroU32::new(r);
        }
        if let Some(i) = self.inflight {
            s.inflight = i;
        }
        for (slot, v) in [
            (&mut s.duration, self.duration),
            (&mut s.warmup, self.warmup),
            (&mut s.drain, self.drain),
            (&mut s.connect_timeout, self.connect_timeout),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        if let Some(p) = &self.topic_prefix {
            s.topic_prefix = p.clone();
        }
        if self.persistent {
            s.clean = false;
        }
        if self.clean {
            s.clean = true;
        }
        if let Some(k) = self.keep_alive {
            s.keep_alive_s = k;
        }
        if let Some(m) = self.stamp {
            s.stamp = m;
        }
        s.allow_loss = self.allow_loss;
        s.retain = self.retain;
        s.stagger = self.stagger;
        s.sub_thread = self.sub_thread;
        if let Some((a, b)) = self.offline {
            s.offline_from = a;
            s.offline_until = b;
        }
        if let Some(r) = self.reader_rate {
            s.reader_rate_per_s = Some(r);
        }
        s.tls = self.tls_ca.as_ref().map(|ca| TlsSpec {
            ca_file: ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        });
        s.progress = !self.quiet;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_override_the_preset() {
        let cli = Cli::parse_from([
            "x",
            "run",
            "fan-out",
            "--subscribers",
            "3",
            "--qos",
            "2",
            "--protocol",
            "3",
            "--rate",
            "0",
        ]);
        let Command::Run { scenario, .. } = cli.command else {
            panic!("run")
        };
        let s = scenario.to_spec();
        assert_eq!(
            (s.publishers, s.subscribers, s.qos),
            (1, 3, QoS::ExactlyOnce)
        );
        assert_eq!(s.version, ProtocolVersion::V311);
        assert_eq!(s.rate_per_s, None);
    }

    #[test]
    fn encryption_defaults_and_pending_workloads() {
        let cli = Cli::parse_from(["x", "encryption"]);
        let Command::Encryption(args) = cli.command else {
            panic!("encryption")
        };
        let o = args.to_options();
        assert_eq!(o.scenarios.len(), 5);
        assert_eq!(o.payloads, vec![64, 1024, 16384]);
        assert_eq!(o.adjust.spill_at, Some(1000));
        assert!(o.adjust.add_buffer);
        let e = Cli::try_parse_from(["x", "encryption", "--scenarios", "fan-in,persistence"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("persistence issue"), "{e}");
        assert!(Cli::try_parse_from(["x", "encryption", "--scenarios", "idle"]).is_err());
    }

    #[test]
    fn crash_needs_a_command_it_can_restart() {
        let parse = |b: &str| {
            let Command::Crash(a) = Cli::parse_from(["x", "crash", "--broker", b]).command else {
                panic!("crash")
            };
            a.to_options()
        };
        let o = parse("m=cmd:exec mosquitto -p {port}").unwrap();
        assert_eq!((o.name.as_str(), o.kills, o.rate_per_s), ("m", 5, 200));
        assert_eq!(o.template, "exec mosquitto -p {port}");
        assert!(parse("m=cmd:exec mosquitto").is_err(), "no {{port}}");
        assert_eq!(parse("cmd:b {port}").unwrap().name, "cmd");
        assert!(parse("127.0.0.1:1883").is_err());
    }

    #[test]
    fn slow_sub_preset_is_persistent_qos1() {
        let s = Scenario::SlowSub.preset();
        assert!(!s.clean);
        assert_eq!(s.qos, QoS::AtLeastOnce);
    }
}
