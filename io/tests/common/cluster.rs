//! Several real `shardmq` processes as a cluster for the cluster tests:
//! configs for nodes on 127.0.0.1, .2 and .3 (or in network namespaces), a
//! cluster CA made with `--make-cluster-ca`, and waits on what nodes log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{q5, spawn_logged, temp_file, Client, Ev, Log, Proc, BIN};

/// A port free on `ip` now, and the next one (internal ports are fixed:
/// peers dial them).
pub fn free_port_on(ip: &str) -> u16 {
    // The control plane takes the next port: both must be free now.
    loop {
        let first = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind((ip, port + 1)).is_ok() {
            return port;
        }
    }
}

pub fn make_ca(dir: &Path) {
    let out = Command::new(BIN)
        .arg("--make-cluster-ca")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.join("ca.crt").exists() && dir.join("ca.key").exists());
}

/// A cluster's configs: node i on 127.0.0.i.
pub struct Cluster {
    pub dir: PathBuf,
    pub internal: Vec<u16>,
    pub encrypt: bool,
    /// `advanced.internalCerts` (duration, renewBefore).
    pub certs: (&'static str, &'static str),
    /// Each node persists its subscriber queues (`persistence`,
    /// `subscriberQueue` All) under this key file.
    pub persistence: Option<PathBuf>,
    /// The client listener authenticates user names from this password
    /// file (`with_passwords`).
    pub passwords: Option<PathBuf>,
}

impl Cluster {
    pub fn new(nodes: usize, encrypt: bool) -> Cluster {
        let dir = temp_file("cluster", "").parent().unwrap().to_owned();
        if encrypt {
            make_ca(&dir.join("ca"));
        }
        let internal = (1..=nodes)
            .map(|i| free_port_on(&format!("127.0.0.{i}")))
            .collect();
        Cluster {
            dir,
            internal,
            encrypt,
            certs: ("1h", "10m"),
            persistence: None,
            passwords: None,
        }
    }

    pub fn config(&self, i: usize, ca_dir: &Path) -> PathBuf {
        // One list for every node, as a StatefulSet's shared config has it:
        // each node skips its own entry.
        let peers: Vec<serde_json::Value> = (1..=self.internal.len())
            .map(|j| {
                // Node 1 by name: peers resolve host names when they dial.
                let host = if j == 1 {
                    "localhost".to_owned()
                } else {
                    format!("127.0.0.{j}")
                };
                serde_json::json!({
                    "node": format!("node{j}"),
                    "address": format!("{host}:{}", self.internal[j - 1]),
                })
            })
            .collect();
        let mut cluster = serde_json::json!({
            "node": format!("node{i}"),
            "address": format!("127.0.0.{i}:{}", self.internal[i - 1]),
            "peers": peers,
        });
        if self.encrypt {
            cluster["caCertFile"] = ca_dir.join("ca.crt").to_str().unwrap().into();
            cluster["caKeyFile"] = ca_dir.join("ca.key").to_str().unwrap().into();
        }
        let mode = if self.encrypt { "Enabled" } else { "Disabled" };
        let mut config = serde_json::json!({
            "listeners": [{"name": "mqtt", "ports": [{"port": 0, "bindAddress": format!("127.0.0.{i}")}]}],
            "cardinality": {"frontend": {"workers": 2}},
            "stateDir": self.dir.join(format!("state{i}")),
            "advanced": {"encryptInternalTraffic": mode, "internalCerts": {"duration": self.certs.0, "renewBefore": self.certs.1}},
            "cluster": cluster,
        });
        if let Some(passwd) = &self.passwords {
            config["listeners"][0]["ports"][0]["authenticationRef"] = "passwords".into();
            config["authentications"] = serde_json::json!([{"name": "passwords",
                "authenticationMethods": [{"method": "UsernamePassword",
                    "usernamePasswordSettings": {"passwordFile": passwd}}]}]);
        }
        if let Some(key) = &self.persistence {
            config["persistence"] = serde_json::json!({
                "maxSize": "100M",
                "subscriberQueue": {"mode": "All"},
                "retain": {"mode": "All"},
                "dataDir": self.dir.join(format!("data{i}")),
                "keyFile": key,
            });
        }
        let path = self.dir.join(format!("node{i}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    /// Starts every node and waits until each linked to all others.
    pub fn start_all(&self) -> Vec<Node> {
        let n = self.internal.len();
        let nodes: Vec<Node> = (1..=n).map(|i| self.start(i)).collect();
        for node in &nodes {
            node.wait_linked(n - 1);
        }
        nodes
    }

    /// Starts node `i`; returns it with its client port and log.
    pub fn start(&self, i: usize) -> Node {
        self.start_with_ca(i, &self.dir.join("ca"))
    }

    /// Every node persists its subscriber queues and retained messages
    /// from now on.
    pub fn with_persistence(mut self) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let mut bytes = [0u8; 32];
        let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
        std::io::Read::read_exact(&mut urandom, &mut bytes).unwrap();
        let key = self.dir.join("persistence.key");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key, hex).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        self.persistence = Some(key);
        self
    }

    /// Clients authenticate as alice (password alice-pw) or bob (bob-pw).
    pub fn with_passwords(mut self) -> Cluster {
        use shardmq_auth::test_pki::password_line;
        let passwd = self.dir.join("passwd");
        let lines = format!(
            "{}\n{}\n",
            password_line("alice", "alice-pw"),
            password_line("bob", "bob-pw")
        );
        std::fs::write(&passwd, lines).unwrap();
        self.passwords = Some(passwd);
        self
    }

    pub fn start_with_ca(&self, i: usize, ca_dir: &Path) -> Node {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config(i, ca_dir))
            .env("RUST_LOG", "info")
            .env_remove("SHARDMQ_PERSISTENCE_KEY");
        let (proc, ports, log) = spawn_logged(cmd, 1);
        Node {
            host: format!("127.0.0.{i}"),
            port: ports[0],
            log,
            _proc: proc,
        }
    }
}

pub struct Node {
    pub host: String,
    pub port: u16,
    pub log: Log,
    pub _proc: Proc,
}

impl Node {
    pub async fn client(&self, id: &str) -> Client {
        Client::connect_to(&self.host, self.port, id, |_| {})
            .await
            .0
    }

    /// Waits until every shard (2) linked out to `peers` other nodes.
    pub fn wait_linked(&self, peers: usize) {
        let deadline = std::time::Instant::now() + super::WAIT;
        while self.links_out() < 2 * peers {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not link:\n{}",
                self.host,
                self.log.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the node's process `sig` (`-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        let pid = self._proc.0.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    pub fn links_out(&self) -> usize {
        self.log
            .lines()
            .iter()
            .filter(|l| l.contains("node link out"))
            .count()
    }
}

/// Publishes QoS 0 probes on `publisher` until `subscriber` (subscribed to
/// `probe/#`-covering filter) gets one: the routes reached the
/// publisher's node. Later probes are skipped by the checks (their topic).
pub async fn until_routed(publisher: &Client, subscriber: &mut Client, topic: &str) {
    let deadline = tokio::time::Instant::now() + super::WAIT;
    loop {
        publisher.publish(topic, q5(0), false, b"probe").await;
        let got = tokio::time::timeout(Duration::from_millis(50), async {
            loop {
                match subscriber.rx.recv().await {
                    Some(Ev::Publish { topic: t, .. }) if t == topic => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await;
        if got == Ok(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "routes never reached the publisher's node"
        );
    }
}

/// The payloads of the next `n` publishes on `topic_prefix`, skipping probes.
pub async fn received(sub: &mut Client, topic_prefix: &str, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < n {
        match sub.next().await {
            Ev::Publish { topic, payload, .. } if topic.starts_with(topic_prefix) => {
                out.push(payload)
            }
            Ev::Closed(e) => panic!("closed after {} publishes: {e}", out.len()),
            _ => {}
        }
    }
    out
}

pub fn numbered(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("m{i}").into_bytes()).collect()
}

/// A CONNECT the broker refuses: the CONNACK's reason as rumqttc prints it.
pub async fn refused(node: &Node, id: &str) -> String {
    let mut opts = rumqttc::v5::MqttOptions::new(id, node.host.as_str(), node.port);
    opts.set_keep_alive(Duration::from_secs(30));
    // Past the broker's claim wait (5 s): rumqttc gives up after 5 s.
    opts.set_connection_timeout(9);
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    match tokio::time::timeout(super::WAIT, eventloop.poll()).await {
        Ok(Err(e)) => e.to_string(),
        other => panic!("expected a refused CONNECT, got {other:?}"),
    }
}

/// A CONNECT as `user` (password `<user>-pw`): `Ok` on CONNACK Success (the
/// connection is dropped then), else the error as rumqttc prints it.
pub async fn connack_as(node: &Node, id: &str, user: &str) -> Result<(), String> {
    let mut opts = rumqttc::v5::MqttOptions::new(id, node.host.as_str(), node.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_credentials(user, format!("{user}-pw"));
    opts.set_connection_timeout(9);
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    match tokio::time::timeout(super::WAIT, eventloop.poll()).await {
        Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)))) => {
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

/// The client's connection ends with DISCONNECT 0x8E Session taken over
/// (rumqttc reports it as the end of its event loop).
pub async fn taken_over(c: &mut Client) {
    match c
        .next_matching(|e| matches!(e, Ev::Disconnect(_) | Ev::Closed(_)))
        .await
    {
        Ev::Disconnect(why) | Ev::Closed(why) => {
            assert!(why.contains("SessionTakenOver"), "{why}")
        }
        _ => unreachable!(),
    }
}

/// A server certificate and key (PEM) for `name`, self-signed by rcgen.
pub fn server_cert(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Network namespaces on a bridge, removed on drop.
pub struct Netns {
    pub tag: String,
    pub n: usize,
}

impl Netns {
    pub fn sh(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn make(n: usize) -> Option<Netns> {
        let tag = format!("smq{}", std::process::id() % 100_000);
        let net = Netns { tag, n };
        let br = net.bridge();
        if !Self::sh(&["link", "add", &br, "type", "bridge"]) {
            return None;
        }
        let ok = Self::sh(&["link", "set", &br, "up"])
            && (1..=n).all(|i| {
                let (ns, a, b) = (net.ns(i), net.veth(i, 'a'), net.veth(i, 'b'));
                let addr = format!("{}/24", net.ip(i));
                Self::sh(&["netns", "add", &ns])
                    && Self::sh(&["link", "add", &a, "type", "veth", "peer", "name", &b])
                    && Self::sh(&["link", "set", &a, "master", &br, "up"])
                    && Self::sh(&["link", "set", &b, "netns", &ns])
                    && Self::sh(&["-n", &ns, "addr", "add", &addr, "dev", &b])
                    && Self::sh(&["-n", &ns, "link", "set", &b, "up"])
                    && Self::sh(&["-n", &ns, "link", "set", "lo", "up"])
            })
            && Self::sh(&["addr", "add", "10.213.77.254/24", "dev", &br]);
        ok.then_some(net)
    }

    pub fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    pub fn veth(&self, i: usize, side: char) -> String {
        format!("{}v{i}{side}", self.tag)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.213.77.{i}")
    }

    /// Node `i` off the bridge: a partition.
    pub fn cut(&self, i: usize) {
        assert!(Self::sh(&["link", "set", &self.veth(i, 'a'), "down"]));
    }

    pub fn heal(&self, i: usize) {
        assert!(Self::sh(&["link", "set", &self.veth(i, 'a'), "up"]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 1..=self.n {
            Self::sh(&["link", "del", &self.veth(i, 'a')]);
            Self::sh(&["netns", "del", &self.ns(i)]);
        }
        Self::sh(&["link", "del", &self.bridge()]);
    }
}
