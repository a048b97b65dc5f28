//! Shared harness for the server's integration tests: a real in-process
//! broker on 127.0.0.1 with 2 shards and one port pinned to each shard (so a
//! test chooses which shard a client lands on), and rumqttc clients whose
//! events arrive on a channel. Waits are bounded so a bug fails, not hangs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod raw;

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet as P5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use shardmq_core::limits::ClientLimits;
use shardmq_io::{ListenerSpec, ServerConfig, ServerHandle};
use tokio::sync::mpsc;

/// `Read::read` that retries a read a signal interrupted. A socket with a
/// read timeout is never restarted by `SA_RESTART` (signal(7)), so any
/// handler in the test process, or the process being stopped and
/// continued, can surface `EINTR` here; `read_exact` already retries.
pub fn read_some(stream: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Upper bound on any single wait; only reached when something is broken.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Broker {
    handle: Option<ServerHandle>,
}

impl Broker {
    /// 2 shards; listener "s0" only on shard 0, "s1" only on shard 1, "any"
    /// on both.
    pub fn start() -> Broker {
        Broker::start_with(ClientLimits::default())
    }

    pub fn start_with(limits: ClientLimits) -> Broker {
        Broker::start_config(|c| c.limits = limits)
    }

    /// The default test config, changed by `edit` (e.g. a disk buffer).
    pub fn start_config(edit: impl FnOnce(&mut ServerConfig)) -> Broker {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = ServerConfig {
            shards: 2,
            pin_cpus: false,
            listeners: vec![
                ListenerSpec::plain("s0", any, Some(vec![0])),
                ListenerSpec::plain("s1", any, Some(vec![1])),
                ListenerSpec::plain("any", any, None),
            ],
            limits: ClientLimits::default(),
            retained_max: 10_000,
            selftest: Some(shardmq_core::broker::SelfTestConfig {
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(200),
            }),
            disk_buffer: None,
            encrypt_internal_traffic: true,
            memory_budget_bytes: 16 << 20,
            retained_bytes_max: 64 << 20,
            partial_bytes_max: 64 << 20,
            persistence: None,
            cluster: None,
        };
        let mut config = config;
        edit(&mut config);
        Broker {
            handle: Some(shardmq_io::start(config).expect("broker starts")),
        }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    pub fn port(&self, name: &str) -> u16 {
        self.handle.as_ref().unwrap().addr(name).unwrap().port()
    }

    pub fn probes_ok(&self) -> u64 {
        self.handle
            .as_ref()
            .unwrap()
            .probes_ok
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

#[derive(Debug, Clone)]
pub enum Ev {
    ConnAck {
        session_present: bool,
        code: String,
    },
    SubAck(Vec<String>),
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    },
    PubAck(String),
    Disconnect(String),
    Closed(String),
}

pub struct Client {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects a v5 client and waits for CONNACK.
    pub async fn connect(
        port: u16,
        id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> (Client, bool) {
        Client::connect_to("127.0.0.1", port, id, configure).await
    }

    /// `connect` to another loopback address (a cluster node's).
    pub async fn connect_to(
        host: &str,
        port: u16,
        id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> (Client, bool) {
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        configure(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = match eventloop.poll().await {
                    Ok(Event::Incoming(P5::ConnAck(c))) => Ev::ConnAck {
                        session_present: c.session_present,
                        code: format!("{:?}", c.code),
                    },
                    Ok(Event::Incoming(P5::SubAck(s))) => {
                        Ev::SubAck(s.return_codes.iter().map(|c| format!("{c:?}")).collect())
                    }
                    Ok(Event::Incoming(P5::Publish(p))) => Ev::Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                    },
                    Ok(Event::Incoming(P5::PubAck(a))) => Ev::PubAck(format!("{:?}", a.reason)),
                    Ok(Event::Incoming(P5::PubComp(a))) => Ev::PubAck(format!("{:?}", a.reason)),
                    Ok(Event::Incoming(P5::Disconnect(d))) => {
                        Ev::Disconnect(format!("{:?}", d.reason_code))
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        let mut c = Client { client, rx, task };
        let present = match c.next().await {
            Ev::ConnAck {
                session_present,
                code,
            } => {
                assert_eq!(code, "Success");
                session_present
            }
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (c, present)
    }

    pub async fn next(&mut self) -> Ev {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("event within the bound")
            .expect("event loop alive")
    }

    /// The next event of interest, skipping others.
    pub async fn next_matching(&mut self, mut f: impl FnMut(&Ev) -> bool) -> Ev {
        loop {
            let ev = self.next().await;
            if f(&ev) {
                return ev;
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: Q5) {
        self.client.subscribe(filter, qos).await.unwrap();
        match self.next_matching(|e| matches!(e, Ev::SubAck(_))).await {
            Ev::SubAck(codes) => assert!(
                !codes[0].contains("Failure") && !codes[0].contains("Unspecified"),
                "{codes:?}"
            ),
            _ => unreachable!(),
        }
    }

    pub async fn publish(&self, topic: &str, qos: Q5, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
    }

    /// Collects `n` publishes.
    pub async fn publishes(&mut self, n: usize) -> Vec<(String, Vec<u8>, u8, bool)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if let Ev::Publish {
                topic,
                payload,
                qos,
                retain,
            } = self
                .next_matching(|e| matches!(e, Ev::Publish { .. } | Ev::Closed(_)))
                .await
            {
                out.push((topic, payload, qos, retain));
            } else {
                panic!("connection closed after {} publishes", out.len());
            }
        }
        out
    }

    /// Asserts nothing more arrives within a short quiet period. Used only to
    /// check absence after an event that proves the path is flushed.
    pub async fn expect_no_publish(&mut self, quiet: Duration) {
        let got = tokio::time::timeout(quiet, async {
            loop {
                match self.rx.recv().await {
                    Some(Ev::Publish { topic, .. }) => return Some(topic),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await;
        if let Ok(Some(topic)) = got {
            panic!("unexpected publish on {topic}");
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let mut rx = self.rx;
        let _ = tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} }).await;
        self.task.abort();
    }

    /// Drops the TCP connection without DISCONNECT (an abnormal close).
    pub fn kill(self) {
        self.task.abort();
    }
}

pub fn q5(q: u8) -> Q5 {
    match q {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

/// A blocking raw MQTT client on the core codec (itself checked against
/// rumqttc's): for packets a client library hides, like DISCONNECT reasons.
pub struct RawClient {
    stream: std::net::TcpStream,
    buf: bytes::BytesMut,
    version: shardmq_core::codec::ProtocolVersion,
}

impl RawClient {
    pub fn connect_v5(
        port: u16,
        client_id: &str,
        session_expiry: Option<u32>,
    ) -> (RawClient, shardmq_core::codec::ConnAck) {
        use shardmq_core::codec::{Connect, Packet, Properties, ProtocolVersion};
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            version: ProtocolVersion::V5,
        };
        let properties = Properties {
            session_expiry_interval: session_expiry,
            ..Properties::default()
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: session_expiry.is_none(),
            keep_alive: 30,
            properties: properties.into(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        })));
        match c.recv() {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// CONNECT (v5, clean start) adjusted by `configure`; returns the
    /// CONNACK reason, also when the broker refuses.
    pub fn connect_v5_with(
        port: u16,
        client_id: &str,
        configure: impl FnOnce(&mut shardmq_core::codec::Connect),
    ) -> (RawClient, shardmq_core::codec::ReasonCode) {
        let (c, ack) = RawClient::connect_v5_ack(port, client_id, configure);
        (c, ack.reason)
    }

    /// `connect_v5_with`, returning the whole CONNACK.
    pub fn connect_v5_ack(
        port: u16,
        client_id: &str,
        configure: impl FnOnce(&mut shardmq_core::codec::Connect),
    ) -> (RawClient, shardmq_core::codec::ConnAck) {
        use shardmq_core::codec::{Connect, Packet, Props, ProtocolVersion};
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = RawClient {
            stream,
            buf: bytes::BytesMut::new(),
            version: ProtocolVersion::V5,
        };
        let mut connect = Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            properties: Props::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        };
        configure(&mut connect);
        c.send(&Packet::Connect(Box::new(connect)));
        match c.recv() {
            Some(Packet::ConnAck(ack)) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// SUBSCRIBE to one `filter` at `qos` (other options at their
    /// defaults, packet id 1); returns the SUBACK.
    pub fn subscribe(
        &mut self,
        filter: &str,
        qos: shardmq_core::codec::QoS,
    ) -> shardmq_core::codec::SubAck {
        use shardmq_core::codec::{Packet, PacketId, Props, Subscribe, SubscriptionOptions};
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: Props::default(),
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        }));
        match self.recv() {
            Some(Packet::SubAck(s)) => s,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, p: &shardmq_core::codec::Packet) {
        use std::io::Write;
        let mut out = bytes::BytesMut::new();
        shardmq_core::codec::encode(p, self.version, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    pub fn set_write_timeout(&mut self, d: Duration) {
        self.stream.set_write_timeout(Some(d)).unwrap();
    }

    /// Sends a packet; `false` when the write times out or fails.
    pub fn try_send(&mut self, p: &shardmq_core::codec::Packet) -> bool {
        use std::io::Write;
        let mut out = bytes::BytesMut::new();
        shardmq_core::codec::encode(p, self.version, &mut out).unwrap();
        self.stream.write_all(&out).is_ok()
    }

    /// The next packet within `wait`: `Ok(None)` once the broker closed the
    /// connection, `Err` if nothing came in time (or the socket failed).
    pub fn recv_within(
        &mut self,
        wait: Duration,
    ) -> std::io::Result<Option<shardmq_core::codec::Packet>> {
        self.stream.set_read_timeout(Some(wait))?;
        let got = self.try_recv();
        self.stream.set_read_timeout(Some(WAIT))?;
        got
    }

    /// The next packet, or `None` once the broker closed the connection.
    pub fn recv(&mut self) -> Option<shardmq_core::codec::Packet> {
        self.try_recv().unwrap_or_else(|e| panic!("read: {e}"))
    }

    fn try_recv(&mut self) -> std::io::Result<Option<shardmq_core::codec::Packet>> {
        loop {
            if let Some(p) =
                shardmq_core::codec::decode_packet(&mut self.buf, self.version, 1 << 20).unwrap()
            {
                return Ok(Some(p));
            }
            let mut chunk = [0u8; 4096];
            match read_some(&mut self.stream, &mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

// ---- the binary, as a user runs it ------------------------------------

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_shardmq");

/// Whether Debian's mosquitto-clients are installed (.ci/run installs
/// them); tests that need them say so and skip without.
pub fn has_mosquitto_clients() -> bool {
    let ok = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !ok {
        eprintln!("mosquitto_pub not installed: .ci/run installs Debian's mosquitto-clients");
    }
    ok
}

/// A port nobody listens on right now (the kernel picks it), for what
/// cannot take port 0 (`prometheusPort`, a restart on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` to a fresh file named `name`: each call gets its own
/// directory, so tests running in parallel never share a file.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("shardmq-test-{}-{n}", std::process::id()));
    // Each call's name is new in this process, so a directory that exists
    // is a dead process's (pids are reused): its files (a cluster's state,
    // a CA) must not leak into this test.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A broker process, killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// SIGTERM (a graceful stop, as systemd does it); waits (bounded) for
    /// the exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and waits until it logs that every listener is up;
/// returns the bound ports in log order (configs here use port 0, so tests
/// never race each other for a "free" port).
pub fn start(config: &PathBuf, listeners: usize) -> (Proc, Vec<u16>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    let (proc, ports, _log) = spawn_logged(cmd, listeners);
    (proc, ports)
}

/// Everything the broker printed so far (stdout and stderr), one entry per
/// line, collected by background threads.
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) for a line that contains every one of `parts`.
    pub fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .lines()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}; got:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn collect(&self, out: impl std::io::Read + Send + 'static) {
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                log.0.lock().unwrap().push(line);
            }
        });
    }
}

/// Spawns `cmd` (the binary with its arguments and environment), collects
/// its output and waits until it logged `listeners` bound listeners.
pub fn spawn_logged(mut cmd: Command, listeners: usize) -> (Proc, Vec<u16>, Log) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::default();
    log.collect(child.stdout.take().unwrap());
    log.collect(child.stderr.take().unwrap());
    let mut proc = Proc(child);
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = log.lines();
        let ports: Vec<u16> = lines
            .iter()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| l.split("addr=").nth(1)?.split_whitespace().next())
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap().port())
            .collect();
        if ports.len() >= listeners {
            return (proc, ports, log);
        }
        if let Some(status) = proc.0.try_wait().unwrap() {
            panic!(
                "broker exited during start-up ({status}):\n{}",
                lines.join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "broker did not start:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One raw HTTP request to 127.0.0.1 (the metrics endpoint); returns the
/// status (0 if nothing answered) and the body.
pub fn http_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(request);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Waits (bounded) until /readyz answers 200.
pub fn wait_ready(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + WAIT;
    while http_get(addr, "/readyz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {:?}",
            http_get(addr, "/readyz")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
