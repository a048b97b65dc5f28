//! What one run is: the scenario, its clients and message parameters, the
//! timing, and the target. Values here are already validated (the CLI or a
//! test builds them); `Scenario::preset` gives each scenario's defaults.

use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use shardmq_core::codec::{ProtocolVersion, QoS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers -> 1 subscriber on a wildcard filter.
    FanIn,
    /// 1 publisher -> N subscribers on the same topic.
    FanOut,
    /// N publisher/subscriber pairs on distinct topics.
    P2p,
    /// N publishers -> M subscribers in one `$share/` group.
    Shared,
    /// Connect N clients as fast as possible.
    ConnStorm,
    /// Hold N connections for the duration.
    Idle,
    /// Fan-in to a persistent subscriber that goes offline for part of the run.
    SlowSub,
    /// Fan-in to a subscriber that reads slower than the publishers send for
    /// part of the run (the broker queues, then the reader catches up).
    SlowReader,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::P2p => "p2p",
            Scenario::Shared => "shared",
            Scenario::ConnStorm => "conn-storm",
            Scenario::Idle => "idle",
            Scenario::SlowSub => "slow-sub",
            Scenario::SlowReader => "slow-reader",
        }
    }

    /// The scenario's defaults; flags override each field.
    pub fn preset(self) -> RunSpec {
        let base = RunSpec::default();
        match self {
            Scenario::FanIn => RunSpec {
                scenario: self,
                publishers: 10,
                subscribers: 1,
                ..base
            },
            Scenario::FanOut => RunSpec {
                scenario: self,
                publishers: 1,
                subscribers: 10,
                ..base
            },
            Scenario::P2p => RunSpec {
                scenario: self,
                publishers: 10,
                subscribers: 10,
                ..base
            },
            Scenario::Shared => RunSpec {
                scenario: self,
                publishers: 4,
                subscribers: 4,
                ..base
            },
            Scenario::ConnStorm => RunSpec {
                scenario: self,
                publishers: 0,
                subscribers: 0,
                clients: 1000,
                ..base
            },
            Scenario::Idle => RunSpec {
                scenario: self,
                publishers: 0,
                subscribers: 0,
                clients: 1000,
                ..base
            },
            Scenario::SlowSub => RunSpec {
                scenario: self,
                publishers: 4,
                subscribers: 1,
                qos: QoS::AtLeastOnce,
                clean: false,
                rate_per_s: NonZeroU32::new(1000),
                ..base
            },
            Scenario::SlowReader => RunSpec {
                scenario: self,
                publishers: 4,
                subscribers: 1,
                qos: QoS::AtLeastOnce,
                rate_per_s: NonZeroU32::new(1000),
                ..base
            },
        }
    }

    /// Whether a subscriber falls behind on purpose for part of the run
    /// (`offline_from..offline_until`), so the broker has to queue.
    pub fn impairs_subscriber(self) -> bool {
        matches!(self, Scenario::SlowSub | Scenario::SlowReader)
    }

    /// Whether the scenario publishes and checks deliveries.
    pub fn is_messaging(self) -> bool {
        !matches!(self, Scenario::ConnStorm | Scenario::Idle)
    }
}

/// Which time goes into a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StampMode {
    /// The scheduled send time (open loop: latency includes the harness's and
    /// the broker's queueing, so coordinated omission cannot hide it).
    Scheduled,
    /// The time the message was encoded.
    Actual,
}

/// Client TLS settings (CA to trust, optional client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the host).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub scenario: Scenario,
    pub publishers: usize,
    pub subscribers: usize,
    /// Connections for conn-storm and idle.
    pub clients: usize,
    pub qos: QoS,
    pub payload_bytes: usize,
    pub version: ProtocolVersion,
    /// Messages per second per publisher; `None` = as fast as the inflight
    /// window allows.
    pub rate_per_s: Option<NonZeroU32>,
    /// Unacknowledged QoS 1/2 messages per publisher (capped by the
    /// broker's Receive Maximum).
    pub inflight: NonZeroU16,
    pub duration: Duration,
    /// Messages scheduled in the warm-up are checked for loss but left out of
    /// rates and latency.
    pub warmup: Duration,
    /// How long subscribers wait for in-flight messages after publishing stops.
    pub drain: Duration,
    pub topic_prefix: String,
    /// Clean Start / Clean Session for subscribers.
    pub clean: bool,
    pub connect_timeout: Duration,
    /// Connection attempts in flight at once (conn-storm, idle, set-up).
    pub connect_concurrency: usize,
    pub keep_alive_s: u16,
    pub stamp: StampMode,
    pub allow_loss: bool,
    /// Publishers set RETAIN.
    pub retain: bool,
    /// Open-loop publishers start their schedules spread evenly over one
    /// interval instead of all at once (independent sensors, not a tick).
    pub stagger: bool,
    /// slow-sub: the subscriber is offline from this fraction of the measured
    /// duration to `offline_until`; slow-reader: it reads at
    /// `reader_rate_per_s` over the same span.
    pub offline_from: f64,
    pub offline_until: f64,
    /// slow-reader: messages per second the subscriber reads while slow;
    /// `None`: a tenth of what the publishers send together.
    pub reader_rate_per_s: Option<NonZeroU32>,
    pub tls: Option<TlsSpec>,
    /// Broker process to sample (CPU, RSS); its child processes are included.
    pub broker_pid: Option<u32>,
    /// Subscribers connect here instead of the target (`host:port`): another
    /// node of a cluster, so every message crosses a node link.
    pub subscriber_addr: Option<String>,
    /// Print a live progress line (only honoured on a terminal, not in CI).
    pub progress: bool,
    /// Subscribers on a thread of their own (`lane`), so a burst of sends
    /// does not delay their reads.
    pub sub_thread: bool,
}

impl Default for RunSpec {
    fn default() -> RunSpec {
        RunSpec {
            scenario: Scenario::FanIn,
            publishers: 1,
            subscribers: 1,
            clients: 0,
            qos: QoS::AtLeastOnce,
            payload_bytes: 64,
            version: ProtocolVersion::V5,
            rate_per_s: None,
            inflight: NonZeroU16::MIN.saturating_add(99),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            drain: Duration::from_secs(2),
            topic_prefix: "shardmq-lt".to_owned(),
            clean: true,
            connect_timeout: Duration::from_secs(5),
            connect_concurrency: 256,
            keep_alive_s: 60,
            stamp: StampMode::Scheduled,
            allow_loss: false,
            retain: false,
            stagger: false,
            offline_from: 0.3,
            offline_until: 0.6,
            reader_rate_per_s: None,
            tls: None,
            broker_pid: None,
            subscriber_addr: None,
            progress: true,
            sub_thread: false,
        }
    }
}

/// Where a run connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// `host:port`.
    pub addr: String,
}

impl Target {
    pub fn host(&self) -> &str {
        self.addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h.trim_matches(['[', ']']))
    }
}
