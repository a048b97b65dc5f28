//! `$SYS` topics under Mosquitto's de facto names, so existing dashboards
//! and MQTTX show them: shard 0 builds them from every shard's last
//! snapshot every `diagnostics.sys.intervalSeconds` and publishes each as
//! a retained QoS 0 message through the normal routing path
//! (`Shard::publish_sys`). Load figures are Mosquitto's: per-minute rates
//! smoothed over 1, 5 and 15 minutes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::render::listener_totals;
use super::{ShardSnapshot, Telemetry};
use crate::driver::Driver;

/// Totals over every shard that `$SYS` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub connected: u64,
    pub disconnected: u64,
    pub publish_received: u64,
    pub publish_sent: u64,
    pub publish_dropped: u64,
    pub publish_bytes_received: u64,
    pub publish_bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connections: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub stored: u64,
    pub stored_bytes: u64,
}

pub fn totals(shards: &[ShardSnapshot]) -> Totals {
    let mut t = Totals::default();
    for s in shards {
        let st = &s.stats;
        t.connected += s.gauges.sessions_online;
        t.disconnected += s.gauges.sessions_offline;
        t.publish_received += st.publish_in.iter().sum::<u64>();
        t.publish_sent += st.deliveries;
        t.publish_dropped += st.dropped_queue_full + st.dropped_expired;
        t.publish_bytes_received += st.publish_in_bytes.iter().sum::<u64>();
        t.publish_bytes_sent += st.delivered_bytes.iter().sum::<u64>();
        t.subscriptions += s.gauges.subscriptions;
        t.retained += s.gauges.retained;
        t.stored += s.gauges.queued + s.gauges.inflight;
        t.stored_bytes += s.gauges.memory_bytes;
    }
    for c in listener_totals(shards).values() {
        t.bytes_received += c.bytes_in;
        t.bytes_sent += c.bytes_out;
        t.connections += c.accepted;
    }
    t
}

/// The load figures: (topic part, what it counts).
type Figure = fn(&Totals) -> u64;
const LOADS: [(&str, Figure); 7] = [
    ("messages/received", |t| t.publish_received),
    ("messages/sent", |t| t.publish_sent),
    ("publish/received", |t| t.publish_received),
    ("publish/sent", |t| t.publish_sent),
    ("publish/dropped", |t| t.publish_dropped),
    ("bytes/received", |t| t.bytes_received),
    ("bytes/sent", |t| t.bytes_sent),
];
const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// Shard 0's `$SYS` state between rounds.
#[derive(Debug)]
pub struct SysPublisher {
    last: Option<(Instant, Totals)>,
    /// Per load figure (LOADS, then connections) and window: the smoothed
    /// per-minute rate.
    loads: [[f64; 3]; 8],
    clients_max: u64,
}

impl Default for SysPublisher {
    fn default() -> Self {
        SysPublisher {
            last: None,
            loads: [[0.0; 3]; 8],
            clients_max: 0,
        }
    }
}

impl SysPublisher {
    /// Publishes a round when the interval has passed (shard 0 only).
    pub fn tick(&mut self, driver: &Rc<Driver>, telemetry: &Telemetry, now: Instant) {
        let Some(interval) = telemetry.sys_interval() else {
            return;
        };
        if self
            .last
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        let mut shards = telemetry.snapshots();
        // This shard's own figures are fresher than its last snapshot.
        if let Some(mine) = shards.get_mut(driver.id.index()) {
            *mine = super::snapshot(driver);
        }
        let uptime = now.saturating_duration_since(telemetry.started);
        let topics = self.round(&totals(&shards), uptime, now);
        driver.with(|s| {
            for (topic, payload) in topics {
                s.publish_sys(now, &topic, payload);
            }
        });
    }

    /// The topics and payloads of one round.
    pub fn round(&mut self, t: &Totals, uptime: Duration, now: Instant) -> Vec<(String, String)> {
        self.clients_max = self.clients_max.max(t.connected);
        self.update_loads(t, now);
        let b = "$SYS/broker";
        let mut out = vec![
            (
                format!("{b}/version"),
                format!("shardmq version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                format!("{b}/uptime"),
                format!("{} seconds", uptime.as_secs()),
            ),
            (format!("{b}/clients/connected"), t.connected.to_string()),
            (
                format!("{b}/clients/disconnected"),
                t.disconnected.to_string(),
            ),
            (
                format!("{b}/clients/total"),
                (t.connected + t.disconnected).to_string(),
            ),
            (format!("{b}/clients/maximum"), self.clients_max.to_string()),
            (
                format!("{b}/messages/received"),
                t.publish_received.to_string(),
            ),
            (format!("{b}/messages/sent"), t.publish_sent.to_string()),
            (format!("{b}/messages/stored"), t.stored.to_string()),
            (format!("{b}/store/messages/count"), t.stored.to_string()),
            (
                format!("{b}/store/messages/bytes"),
                t.stored_bytes.to_string(),
            ),
            (
                format!("{b}/publish/messages/received"),
                t.publish_received.to_string(),
            ),
            (
                format!("{b}/publish/messages/sent"),
                t.publish_sent.to_string(),
            ),
            (
                format!("{b}/publish/messages/dropped"),
                t.publish_dropped.to_string(),
            ),
            (
                format!("{b}/publish/bytes/received"),
                t.publish_bytes_received.to_string(),
            ),
            (
                format!("{b}/publish/bytes/sent"),
                t.publish_bytes_sent.to_string(),
            ),
            (format!("{b}/bytes/received"), t.bytes_received.to_string()),
            (format!("{b}/bytes/sent"), t.bytes_sent.to_string()),
            (
                format!("{b}/subscriptions/count"),
                t.subscriptions.to_string(),
            ),
            (
                format!("{b}/retained messages/count"),
                t.retained.to_string(),
            ),
        ];
        let names = LOADS.iter().map(|(n, _)| *n).chain(["connections"]);
        for (i, name) in names.enumerate() {
            for (w, (window, _)) in LOAD_WINDOWS.iter().enumerate() {
                out.push((
                    format!("{b}/load/{name}/{window}"),
                    format!("{:.2}", self.loads[i][w]),
                ));
            }
        }
        out
    }

    /// Mosquitto's smoothing: new = rate + e^(-dt/window) * (old - rate),
    /// rates per minute.
    fn update_loads(&mut self, t: &Totals, now: Instant) {
        if let Some((at, prev)) = self.last {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let counts = LOADS
                    .iter()
                    .map(|(_, f)| (f(t), f(&prev)))
                    .chain([(t.connections, prev.connections)]);
                for (i, (cur, old)) in counts.enumerate() {
                    let rate = cur.saturating_sub(old) as f64 * 60.0 / dt;
                    for (w, (_, window)) in LOAD_WINDOWS.iter().enumerate() {
                        let k = (-dt / window).exp();
                        self.loads[i][w] = rate + k * (self.loads[i][w] - rate);
                    }
                }
            }
        }
        self.last = Some((now, *t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_has_mosquittos_names_and_rates_per_minute() {
        let mut p = SysPublisher::default();
        let start = Instant::now();
        let mut t = Totals {
            connected: 2,
            ..Totals::default()
        };
        p.round(&t, Duration::from_secs(1), start);
        t.publish_received = 600;
        let round = p.round(&t, Duration::from_secs(11), start + Duration::from_secs(60));
        let get = |topic: &str| {
            round
                .iter()
                .find(|(t, _)| t == topic)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("$SYS/broker/clients/connected"), "2");
        assert_eq!(get("$SYS/broker/uptime"), "11 seconds");
        assert_eq!(get("$SYS/broker/messages/received"), "600");
        // 600 in one minute; the 1-minute average moved 1 - e^-1 of the way.
        let one: f64 = get("$SYS/broker/load/messages/received/1min")
            .parse()
            .unwrap();
        assert!(
            (one - 600.0 * (1.0 - (-1.0f64).exp())).abs() < 0.01,
            "{one}"
        );
        assert!(get("$SYS/broker/version").starts_with("shardmq version "));
    }
}
