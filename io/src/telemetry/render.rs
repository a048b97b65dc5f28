//! The Prometheus text exposition format (version 0.0.4) of a `Scrape`:
//! one `# HELP` and `# TYPE` per family, then its samples. Names follow
//! Prometheus conventions (`_total` counters, units in the name); each is
//! listed with its meaning in docs/METRICS.md, which a test keeps in step.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::counters::ListenerCounts;
use super::process::ProcessFigures;
use super::{ListenerInfo, ShardSnapshot, Telemetry};

/// Everything one scrape shows, gathered first so rendering is pure.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub shards: Vec<ShardSnapshot>,
    pub listeners: Vec<ListenerInfo>,
    pub heartbeat_ages: Vec<Option<f64>>,
    pub ready: bool,
    pub uptime_seconds: f64,
    pub started_unix: f64,
    pub process: ProcessFigures,
    /// The persistence recovery at this start (`None` without persistence).
    pub recovery: Option<crate::persist::Recovered>,
}

impl Scrape {
    pub fn gather(telemetry: &Telemetry, now: Instant) -> Scrape {
        Scrape {
            shards: telemetry.snapshots(),
            listeners: telemetry.listeners(),
            heartbeat_ages: telemetry
                .heartbeat_ages(now)
                .into_iter()
                .map(|a| a.map(|d| d.as_secs_f64()))
                .collect(),
            ready: telemetry.readiness(now).is_ok(),
            uptime_seconds: now
                .saturating_duration_since(telemetry.started)
                .as_secs_f64(),
            started_unix: unix_seconds(telemetry.started_wall),
            process: super::process::read(),
            recovery: telemetry.recovery(),
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every metric family shardmq exposes: (name, type, help). docs/METRICS.md
/// lists the same names (checked by a test).
pub const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "shardmq_build_info",
        "gauge",
        "Always 1; the version is a label.",
    ),
    (
        "shardmq_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    ),
    (
        "shardmq_ready",
        "gauge",
        "1 when /readyz answers 200: every shard ticks and every listener is bound.",
    ),
    (
        "shardmq_shard_heartbeat_age_seconds",
        "gauge",
        "Seconds since the shard's last tick (every 100 ms when healthy).",
    ),
    (
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the process.",
    ),
    (
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
    ),
    ("process_open_fds", "gauge", "Open file descriptors."),
    (
        "process_max_fds",
        "gauge",
        "Limit on open file descriptors.",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process, Unix seconds.",
    ),
    (
        "shardmq_connections",
        "gauge",
        "Open client connections on the listener.",
    ),
    (
        "shardmq_connections_accepted_total",
        "counter",
        "TCP connections accepted on the listener.",
    ),
    (
        "shardmq_connections_refused_total",
        "counter",
        "CONNECTs refused with a CONNACK error, by reason.",
    ),
    (
        "shardmq_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out, by cause.",
    ),
    (
        "shardmq_authentication_denials_total",
        "counter",
        "CONNECTs the listener's authentication policy refused.",
    ),
    (
        "shardmq_authorization_denials_total",
        "counter",
        "Refusals by the authorization policy, by action (connect, publish, subscribe).",
    ),
    (
        "shardmq_received_bytes_total",
        "counter",
        "MQTT bytes read from clients of the listener (after TLS).",
    ),
    (
        "shardmq_sent_bytes_total",
        "counter",
        "MQTT bytes written to clients of the listener (before TLS).",
    ),
    (
        "shardmq_certificate_not_after_timestamp_seconds",
        "gauge",
        "When the listener's server certificate expires, Unix seconds.",
    ),
    (
        "shardmq_shard_connections",
        "gauge",
        "Connections the shard holds, CONNECT decided or not.",
    ),
    (
        "shardmq_messages_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
    ),
    (
        "shardmq_messages_received_bytes_total",
        "counter",
        "Payload bytes of PUBLISH packets received from clients, by QoS.",
    ),
    (
        "shardmq_messages_routed_total",
        "counter",
        "Messages routed: client PUBLISHes, wills, self-test probes and $SYS updates.",
    ),
    (
        "shardmq_messages_delivered_total",
        "counter",
        "Messages queued for a subscriber, by the QoS they are delivered with.",
    ),
    (
        "shardmq_messages_delivered_bytes_total",
        "counter",
        "Payload bytes of messages queued for subscribers, by delivery QoS.",
    ),
    (
        "shardmq_messages_dropped_total",
        "counter",
        "Messages lost to a subscriber, by cause (queue_full, drop_oldest, expired).",
    ),
    (
        "shardmq_sessions",
        "gauge",
        "Sessions on the shard, by state (online, offline).",
    ),
    (
        "shardmq_subscriptions",
        "gauge",
        "Subscriptions of the sessions on the shard.",
    ),
    (
        "shardmq_retained_messages",
        "gauge",
        "Retained messages the shard stores.",
    ),
    (
        "shardmq_retained_bytes",
        "gauge",
        "Payload bytes of the retained messages the shard stores.",
    ),
    (
        "shardmq_retained_tombstones",
        "gauge",
        "Retained topics cleared in a cluster, remembered so an older copy does not bring them back.",
    ),
    (
        "shardmq_retained_stale_total",
        "counter",
        "Retained changes from the cluster older than what their topic held: routed, not stored.",
    ),
    (
        "shardmq_retained_stamps_ahead_total",
        "counter",
        "Retained stamps from the cluster over a minute ahead of this node's clock (a wrong clock somewhere).",
    ),
    (
        "shardmq_queued_messages",
        "gauge",
        "Messages waiting in the shard's session queues (in memory or spilled).",
    ),
    (
        "shardmq_inflight_messages",
        "gauge",
        "Outgoing QoS 1/2 messages sent and not yet acknowledged.",
    ),
    (
        "shardmq_queue_memory_bytes",
        "gauge",
        "Queued message bytes held in memory (with a disk buffer).",
    ),
    (
        "shardmq_disk_buffer_used_bytes",
        "gauge",
        "Bytes of disk buffer segment files.",
    ),
    (
        "shardmq_disk_buffer_segments",
        "gauge",
        "Disk buffer segment files in use or spare.",
    ),
    (
        "shardmq_disk_buffer_spilled_total",
        "counter",
        "Messages written to the disk buffer.",
    ),
    (
        "shardmq_disk_buffer_drained_total",
        "counter",
        "Messages read back from the disk buffer.",
    ),
    (
        "shardmq_disk_buffer_corrupt_total",
        "counter",
        "Disk buffer records that failed their checksum or seal: messages lost.",
    ),
    (
        "shardmq_disk_buffer_refused_total",
        "counter",
        "Writes the disk buffer refused (full, no space, I/O error).",
    ),
    (
        "shardmq_persistence_syncs_total",
        "counter",
        "fdatasyncs of the persisted retained log (each makes a batch durable).",
    ),
    (
        "shardmq_persistence_records_total",
        "counter",
        "Retained changes written to the persisted log.",
    ),
    (
        "shardmq_persistence_written_bytes_total",
        "counter",
        "Bytes appended to the persisted log (rewrites not counted).",
    ),
    (
        "shardmq_persistence_rewrites_total",
        "counter",
        "Persisted log rewrites (compaction, key rotation, after a failure).",
    ),
    (
        "shardmq_persistence_failures_total",
        "counter",
        "Persisted log writes or rewrites that failed (retried; acknowledgements wait).",
    ),
    (
        "shardmq_persistence_file_bytes",
        "gauge",
        "Size of the shard's persisted log file.",
    ),
    (
        "shardmq_persistence_waiting_acks",
        "gauge",
        "Acknowledgements (PUBACK, CONNACK, SUBACK, UNSUBACK) held until their change is durable.",
    ),
    (
        "shardmq_persistence_sessions",
        "gauge",
        "Persisted sessions on disk whose client ids the shard owns.",
    ),
    (
        "shardmq_persistence_recovery_seconds",
        "gauge",
        "How long this start's persistence recovery took.",
    ),
    (
        "shardmq_persistence_recovered_records",
        "gauge",
        "What this start's recovery restored, by kind (retained, session, queued).",
    ),
    (
        "shardmq_persistence_recovery_cut_files",
        "gauge",
        "Files this start's recovery cut at a torn or changed block (the tail was not replayed).",
    ),
    (
        "shardmq_persistence_recovery_unreadable_records",
        "gauge",
        "Intact records this start's recovery could not decode (dropped), by kind (session, queue).",
    ),
    (
        "shardmq_mesh_messages_sent_total",
        "counter",
        "Messages sent to other shards (deliveries and control).",
    ),
    (
        "shardmq_mesh_messages_received_total",
        "counter",
        "Messages received from other shards.",
    ),
    (
        "shardmq_index_entries",
        "gauge",
        "Entries in the shard's replica of the subscription index.",
    ),
    (
        "shardmq_registry_client_ids",
        "gauge",
        "Client ids in the shard's slice of the registry.",
    ),
    (
        "shardmq_delayed_wills",
        "gauge",
        "Wills waiting for their delay on the shard.",
    ),
    (
        "shardmq_selftest_rounds_total",
        "counter",
        "Self-test rounds, by result (ok: every shard answered; failed).",
    ),
    (
        "shardmq_selftest_latency_seconds",
        "gauge",
        "How long the last complete self-test round took.",
    ),
];

const QOS: [&str; 3] = ["0", "1", "2"];

type Count = fn(&ListenerCounts) -> u64;
type Keyed = fn(&ListenerCounts) -> &BTreeMap<&'static str, u64>;

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str) {
        if let Some((_, kind, help)) = FAMILIES.iter().find(|(n, _, _)| *n == name) {
            let _ = writeln!(self.text, "# HELP {name} {help}");
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// One family with one sample per shard.
    fn per_shard(
        &mut self,
        name: &str,
        shards: &[ShardSnapshot],
        f: impl Fn(&ShardSnapshot) -> u64,
    ) {
        self.family(name);
        for (i, s) in shards.iter().enumerate() {
            self.sample(name, &[("shard", &i.to_string())], f(s) as f64);
        }
    }

    /// One family with one sample per shard and QoS.
    fn per_shard_qos(
        &mut self,
        name: &str,
        shards: &[ShardSnapshot],
        f: impl Fn(&ShardSnapshot) -> [u64; 3],
    ) {
        self.family(name);
        for (i, s) in shards.iter().enumerate() {
            let values = f(s);
            for (q, v) in QOS.iter().zip(values) {
                self.sample(name, &[("shard", &i.to_string()), ("qos", q)], v as f64);
            }
        }
    }
}

/// Label values are client- or operator-written: escape as the format says.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The listeners' counts summed over the shards, by listener name.
pub fn listener_totals(shards: &[ShardSnapshot]) -> BTreeMap<String, ListenerCounts> {
    let mut totals: BTreeMap<String, ListenerCounts> = BTreeMap::new();
    for s in shards {
        for (name, counts) in &s.listeners {
            totals.entry(name.clone()).or_default().merge(counts);
        }
    }
    totals
}

pub fn render(scrape: &Scrape) -> String {
    let mut out = Out {
        text: String::with_capacity(16 * 1024),
    };
    broker_and_process(&mut out, scrape);
    listeners(&mut out, scrape);
    shards(&mut out, &scrape.shards);
    recovery(&mut out, scrape.recovery.as_ref());
    out.text
}

fn broker_and_process(out: &mut Out, scrape: &Scrape) {
    out.family("shardmq_build_info");
    out.sample(
        "shardmq_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.family("shardmq_uptime_seconds");
    out.sample("shardmq_uptime_seconds", &[], scrape.uptime_seconds);
    out.family("shardmq_ready");
    out.sample("shardmq_ready", &[], if scrape.ready { 1.0 } else { 0.0 });
    out.family("shardmq_shard_heartbeat_age_seconds");
    for (i, age) in scrape.heartbeat_ages.iter().enumerate() {
        if let Some(age) = age {
            out.sample(
                "shardmq_shard_heartbeat_age_seconds",
                &[("shard", &i.to_string())],
                *age,
            );
        }
    }
    let p = &scrape.process;
    let process: [(&str, Option<f64>); 5] = [
        ("process_cpu_seconds_total", p.cpu_seconds),
        (
            "process_resident_memory_bytes",
            p.resident_bytes.map(|b| b as f64),
        ),
        ("process_open_fds", p.open_fds.map(|b| b as f64)),
        ("process_max_fds", p.max_fds.map(|b| b as f64)),
        ("process_start_time_seconds", Some(scrape.started_unix)),
    ];
    for (name, value) in process {
        if let Some(v) = value {
            out.family(name);
            out.sample(name, &[], v);
        }
    }
}

/// What the start's recovery found: an operator alerts on cut files or
/// unreadable records without reading the start-up log. The families are
/// announced always, their samples only with `persistence`.
fn recovery(out: &mut Out, r: Option<&crate::persist::Recovered>) {
    const SECONDS: &str = "shardmq_persistence_recovery_seconds";
    const RECOVERED: &str = "shardmq_persistence_recovered_records";
    const CUT: &str = "shardmq_persistence_recovery_cut_files";
    const UNREADABLE: &str = "shardmq_persistence_recovery_unreadable_records";
    out.family(SECONDS);
    if let Some(r) = r {
        out.sample(SECONDS, &[], r.elapsed.as_secs_f64());
    }
    out.family(RECOVERED);
    if let Some(r) = r {
        for (kind, n) in [
            ("retained", r.retained),
            ("session", r.sessions),
            ("queued", r.queued),
        ] {
            out.sample(RECOVERED, &[("kind", kind)], n as f64);
        }
    }
    out.family(CUT);
    if let Some(r) = r {
        out.sample(CUT, &[], r.cut as f64);
    }
    out.family(UNREADABLE);
    if let Some(r) = r {
        for (kind, n) in [
            ("session", r.unreadable_sessions),
            ("queue", r.unreadable_queues),
        ] {
            out.sample(UNREADABLE, &[("kind", kind)], n as f64);
        }
    }
}

fn listeners(out: &mut Out, scrape: &Scrape) {
    let totals = listener_totals(&scrape.shards);
    // Listeners of the current config show even before their first client.
    let mut names: Vec<&str> = scrape.listeners.iter().map(|l| l.name.as_str()).collect();
    for n in totals.keys() {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let zero = ListenerCounts::default();
    let get = |n: &str| totals.get(n).unwrap_or(&zero);
    let simple: [(&str, Count); 5] = [
        ("shardmq_connections", |c| {
            c.accepted.saturating_sub(c.closed)
        }),
        ("shardmq_connections_accepted_total", |c| c.accepted),
        ("shardmq_authentication_denials_total", |c| c.authn_denied),
        ("shardmq_received_bytes_total", |c| c.bytes_in),
        ("shardmq_sent_bytes_total", |c| c.bytes_out),
    ];
    for (family, f) in simple {
        out.family(family);
        for n in &names {
            out.sample(family, &[("listener", n)], f(get(n)) as f64);
        }
    }
    let keyed: [(&str, &str, Keyed); 3] = [
        ("shardmq_connections_refused_total", "reason", |c| {
            &c.refused
        }),
        ("shardmq_tls_handshake_failures_total", "cause", |c| {
            &c.tls_failed
        }),
        ("shardmq_authorization_denials_total", "action", |c| {
            &c.authz_denied
        }),
    ];
    for (family, label, f) in keyed {
        out.family(family);
        for n in &names {
            for (k, v) in f(get(n)) {
                out.sample(family, &[("listener", n), (label, k)], *v as f64);
            }
        }
    }
    out.family("shardmq_certificate_not_after_timestamp_seconds");
    for l in &scrape.listeners {
        if let Some(cert) = &l.cert {
            let at = unix_seconds(cert.not_after());
            out.sample(
                "shardmq_certificate_not_after_timestamp_seconds",
                &[("listener", &l.name)],
                at,
            );
        }
    }
}

fn shards(out: &mut Out, s: &[ShardSnapshot]) {
    out.per_shard("shardmq_shard_connections", s, |x| x.gauges.connections);
    out.per_shard_qos("shardmq_messages_received_total", s, |x| x.stats.publish_in);
    out.per_shard_qos("shardmq_messages_received_bytes_total", s, |x| {
        x.stats.publish_in_bytes
    });
    out.per_shard("shardmq_messages_routed_total", s, |x| x.stats.messages_in);
    out.per_shard_qos("shardmq_messages_delivered_total", s, |x| {
        x.stats.deliveries_qos
    });
    out.per_shard_qos("shardmq_messages_delivered_bytes_total", s, |x| {
        x.stats.delivered_bytes
    });
    out.family("shardmq_messages_dropped_total");
    for (i, x) in s.iter().enumerate() {
        let shard = i.to_string();
        let st = &x.stats;
        for (cause, v) in [
            (
                "queue_full",
                st.dropped_queue_full.saturating_sub(st.dropped_oldest),
            ),
            ("drop_oldest", st.dropped_oldest),
            ("expired", st.dropped_expired),
        ] {
            out.sample(
                "shardmq_messages_dropped_total",
                &[("shard", &shard), ("cause", cause)],
                v as f64,
            );
        }
    }
    out.family("shardmq_sessions");
    for (i, x) in s.iter().enumerate() {
        let shard = i.to_string();
        out.sample(
            "shardmq_sessions",
            &[("shard", &shard), ("state", "online")],
            x.gauges.sessions_online as f64,
        );
        out.sample(
            "shardmq_sessions",
            &[("shard", &shard), ("state", "offline")],
            x.gauges.sessions_offline as f64,
        );
    }
    out.per_shard("shardmq_subscriptions", s, |x| x.gauges.subscriptions);
    out.per_shard("shardmq_retained_messages", s, |x| x.gauges.retained);
    out.per_shard("shardmq_retained_bytes", s, |x| x.gauges.retained_bytes);
    out.per_shard("shardmq_retained_tombstones", s, |x| {
        x.gauges.retained_tombstones
    });
    out.per_shard("shardmq_retained_stale_total", s, |x| {
        x.stats.retained_stale
    });
    out.per_shard("shardmq_retained_stamps_ahead_total", s, |x| {
        x.stats.retained_stamps_ahead
    });
    out.per_shard("shardmq_queued_messages", s, |x| x.gauges.queued);
    out.per_shard("shardmq_inflight_messages", s, |x| x.gauges.inflight);
    out.per_shard("shardmq_queue_memory_bytes", s, |x| x.gauges.memory_bytes);
    out.per_shard("shardmq_disk_buffer_used_bytes", s, |x| {
        x.buffer.disk.bytes_used
    });
    out.per_shard("shardmq_disk_buffer_segments", s, |x| {
        x.buffer.disk.segments
    });
    out.per_shard("shardmq_disk_buffer_spilled_total", s, |x| {
        x.buffer.disk.appended
    });
    out.per_shard("shardmq_disk_buffer_drained_total", s, |x| {
        x.buffer.disk.read
    });
    out.per_shard("shardmq_disk_buffer_corrupt_total", s, |x| {
        x.buffer.disk.corrupt
    });
    out.per_shard("shardmq_disk_buffer_refused_total", s, |x| {
        x.buffer.disk.refused
    });
    out.per_shard("shardmq_persistence_syncs_total", s, |x| x.persist.syncs);
    out.per_shard("shardmq_persistence_records_total", s, |x| x.persist.ops);
    out.per_shard("shardmq_persistence_written_bytes_total", s, |x| {
        x.persist.bytes
    });
    out.per_shard("shardmq_persistence_rewrites_total", s, |x| {
        x.persist.compactions
    });
    out.per_shard("shardmq_persistence_failures_total", s, |x| {
        x.persist.failures
    });
    out.per_shard("shardmq_persistence_file_bytes", s, |x| {
        x.persist.file_bytes
    });
    out.per_shard("shardmq_persistence_waiting_acks", s, |x| x.persist_waiting);
    out.per_shard("shardmq_persistence_sessions", s, |x| x.persist_sessions);
    out.per_shard("shardmq_mesh_messages_sent_total", s, |x| x.stats.mesh_sent);
    out.per_shard("shardmq_mesh_messages_received_total", s, |x| {
        x.stats.mesh_received
    });
    out.per_shard("shardmq_index_entries", s, |x| x.gauges.index_entries);
    out.per_shard("shardmq_registry_client_ids", s, |x| x.gauges.client_ids);
    out.per_shard("shardmq_delayed_wills", s, |x| x.gauges.wills);
    // The self-test runs from shard 0: its figures are the broker's.
    let zero = ShardSnapshot::default();
    let first = s.first().unwrap_or(&zero);
    out.family("shardmq_selftest_rounds_total");
    out.sample(
        "shardmq_selftest_rounds_total",
        &[("result", "ok")],
        first.stats.selftest_rounds_ok as f64,
    );
    out.sample(
        "shardmq_selftest_rounds_total",
        &[("result", "failed")],
        first.stats.selftest_rounds_failed as f64,
    );
    out.family("shardmq_selftest_latency_seconds");
    out.sample(
        "shardmq_selftest_latency_seconds",
        &[],
        first.stats.selftest_latency_ns as f64 / 1e9,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_every_sample_has_its_family() {
        let mut shard = ShardSnapshot::default();
        shard.stats.publish_in = [3, 2, 1];
        let counts = ListenerCounts {
            accepted: 2,
            ..ListenerCounts::default()
        };
        shard.listeners.insert("we\"ird\nname".to_owned(), counts);
        let scrape = Scrape {
            shards: vec![shard],
            listeners: Vec::new(),
            heartbeat_ages: vec![Some(0.1)],
            ready: true,
            uptime_seconds: 1.5,
            started_unix: 0.0,
            process: ProcessFigures::default(),
            recovery: Some(crate::persist::Recovered {
                cut: 1,
                queued: 7,
                ..Default::default()
            }),
        };
        let text = render(&scrape);
        assert!(text.contains("shardmq_persistence_recovery_cut_files 1\n"));
        assert!(text.contains("shardmq_persistence_recovered_records{kind=\"queued\"} 7\n"));
        assert!(
            text.contains("shardmq_connections_accepted_total{listener=\"we\\\"ird\\nname\"} 2")
        );
        assert!(text.contains("shardmq_messages_received_total{shard=\"0\",qos=\"1\"} 2"));
        assert!(text.contains("shardmq_uptime_seconds 1.5"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                FAMILIES.iter().any(|(n, _, _)| *n == name),
                "{name} has no family"
            );
        }
    }
}
