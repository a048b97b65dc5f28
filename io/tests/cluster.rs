//! Several `shardmq` processes as one broker (docs/CLUSTER.md): nodes on
//! 127.0.0.1, .2 and .3, node links in mutual TLS under a cluster CA the
//! test makes with `--make-cluster-ca`, and rumqttc clients on different
//! nodes: one topic space, retained messages everywhere, plaintext links
//! when internal encryption is off, a node of another cluster refused, a
//! killed node withdrawn and back after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{q5, spawn_logged, temp_file, Client, Ev, Log, Proc, BIN};

/// A port free on `ip` now (internal ports are fixed: peers dial them).
fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn make_ca(dir: &Path) {
    let out = Command::new(BIN)
        .arg("--make-cluster-ca")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.join("ca.crt").exists() && dir.join("ca.key").exists());
}

/// A cluster's configs: node i on 127.0.0.i.
struct Cluster {
    dir: PathBuf,
    internal: Vec<u16>,
    encrypt: bool,
    /// `advanced.internalCerts` (duration, renewBefore).
    certs: (&'static str, &'static str),
}

impl Cluster {
    fn new(nodes: usize, encrypt: bool) -> Cluster {
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
        }
    }

    fn config(&self, i: usize, ca_dir: &Path) -> PathBuf {
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
        let config = serde_json::json!({
            "listeners": [{"name": "mqtt", "ports": [{"port": 0, "bindAddress": format!("127.0.0.{i}")}]}],
            "cardinality": {"frontend": {"workers": 2}},
            "stateDir": self.dir.join(format!("state{i}")),
            "advanced": {"encryptInternalTraffic": mode, "internalCerts": {"duration": self.certs.0, "renewBefore": self.certs.1}},
            "cluster": cluster,
        });
        let path = self.dir.join(format!("node{i}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    /// Starts node `i`; returns it with its client port and log.
    fn start(&self, i: usize) -> Node {
        self.start_with_ca(i, &self.dir.join("ca"))
    }

    fn start_with_ca(&self, i: usize, ca_dir: &Path) -> Node {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.config(i, ca_dir))
            .env("RUST_LOG", "info");
        let (proc, ports, log) = spawn_logged(cmd, 1);
        Node {
            host: format!("127.0.0.{i}"),
            port: ports[0],
            log,
            _proc: proc,
        }
    }
}

struct Node {
    host: String,
    port: u16,
    log: Log,
    _proc: Proc,
}

impl Node {
    async fn client(&self, id: &str) -> Client {
        Client::connect_to(&self.host, self.port, id, |_| {})
            .await
            .0
    }

    /// Waits until every shard (2) linked out to `peers` other nodes.
    fn wait_linked(&self, peers: usize) {
        let deadline = std::time::Instant::now() + common::WAIT;
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

    fn links_out(&self) -> usize {
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
async fn until_routed(publisher: &Client, subscriber: &mut Client, topic: &str) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
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
async fn received(sub: &mut Client, topic_prefix: &str, n: usize) -> Vec<Vec<u8>> {
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

fn numbered(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("m{i}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_are_one_topic_space_over_mutual_tls() {
    let cluster = Cluster::new(3, true);
    let nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut sub2 = nodes[1].client("sub-2").await;
    sub2.subscribe("plant/#", q5(1)).await;
    let mut sub3 = nodes[2].client("sub-3").await;
    sub3.subscribe("plant/+/temp", q5(1)).await;
    let publisher = nodes[0].client("pub-1").await;
    until_routed(&publisher, &mut sub2, "plant/probe/temp").await;
    until_routed(&publisher, &mut sub3, "plant/probe/temp").await;

    // QoS 1 from node 1 reaches both other nodes, in order, once each.
    const N: usize = 300;
    for m in numbered(N) {
        publisher
            .publish("plant/line1/temp", q5(1), false, &m)
            .await;
    }
    assert_eq!(received(&mut sub2, "plant/line1", N).await, numbered(N));
    assert_eq!(received(&mut sub3, "plant/line1", N).await, numbered(N));

    // And the other way: node 2 to node 3, where node 1 has no subscriber.
    let publisher2 = nodes[1].client("pub-2").await;
    publisher2
        .publish("plant/line2/temp", q5(1), false, b"from-2")
        .await;
    assert_eq!(
        received(&mut sub3, "plant/line2", 1).await,
        vec![b"from-2".to_vec()]
    );

    // A retained message published on node 3 is there for a new subscriber
    // on node 1, with RETAIN set [MQTT-3.3.1-6].
    let retainer = nodes[2].client("retainer-3").await;
    retainer.publish("site/config", q5(1), true, b"v1").await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let mut late = nodes[0].client("late-1").await;
        late.client.subscribe("site/config", q5(1)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if let Some(Ev::Publish {
                    payload, retain, ..
                }) = late.rx.recv().await
                {
                    return (payload, retain);
                }
            }
        })
        .await;
        late.disconnect().await;
        if let Ok((payload, retain)) = got {
            assert_eq!(payload, b"v1");
            assert!(retain);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained message never reached node 1"
        );
    }
    for n in &nodes {
        assert!(
            !n.log.lines().iter().any(|l| l.contains("PLAINTEXT")),
            "links must be TLS"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_plaintext_and_say_so_when_internal_encryption_is_disabled() {
    let cluster = Cluster::new(2, false);
    let nodes: Vec<Node> = (1..=2).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(1);
        n.log.wait_for(&["PLAINTEXT"]);
    }
    let mut sub = Client::connect_to(&nodes[1].host, nodes[1].port, "sub", |o| {
        o.set_max_packet_size(Some(8 << 20));
    })
    .await
    .0;
    sub.subscribe("a/#", q5(1)).await;
    let publisher = nodes[0].client("pub").await;
    until_routed(&publisher, &mut sub, "a/probe").await;
    for m in numbered(50) {
        publisher.publish("a/b", q5(1), false, &m).await;
    }
    assert_eq!(received(&mut sub, "a/b", 50).await, numbered(50));
    // A message past a frame's usual payload (1 MiB) crosses whole.
    let big = vec![7u8; 3 << 20];
    publisher.publish("a/big", q5(1), false, &big).await;
    assert_eq!(received(&mut sub, "a/big", 1).await, vec![big]);
}

/// A CONNECT the broker refuses: the CONNACK's reason as rumqttc prints it.
async fn refused(node: &Node, id: &str) -> String {
    let mut opts = rumqttc::v5::MqttOptions::new(id, node.host.as_str(), node.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    match tokio::time::timeout(common::WAIT, eventloop.poll()).await {
        Ok(Err(e)) => e.to_string(),
        other => panic!("expected a refused CONNECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_another_cluster_ca_is_refused() {
    let cluster = Cluster::new(2, true);
    let node1 = cluster.start(1);
    let stranger_ca = cluster.dir.join("other-ca");
    make_ca(&stranger_ca);
    let node2 = cluster.start_with_ca(2, &stranger_ca);
    // Both ends refuse the handshake; no link comes up either way.
    node1
        .log
        .wait_for(&["cluster: cannot link to node", "node2"]);
    node2
        .log
        .wait_for(&["cluster: cannot link to node", "node1"]);
    node1.log.wait_for(&["an incoming node link ended"]);
    // Nor does the control plane: each node alone is no majority of two,
    // so neither accepts a CONNECT (no client id can live on both).
    assert!(refused(&node1, "a").await.contains("ServerUnavailable"));
    assert!(refused(&node2, "b").await.contains("ServerUnavailable"));
    assert_eq!(node1.links_out() + node2.links_out(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_lives_on_one_node_and_moves_with_its_client() {
    let cluster = Cluster::new(3, true);
    let nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut first = nodes[0].client("device-7").await;
    first.subscribe("cmd/device-7", q5(1)).await;
    // The same client id on node 2: node 1's connection is taken over
    // [MQTT-3.1.4-3] (DISCONNECT 0x8E, Session taken over).
    let mut second = nodes[1].client("device-7").await;
    taken_over(&mut first).await;
    nodes[0]
        .log
        .wait_for(&["connected to another node", "device-7"]);
    // And on to node 3: node 2's connection goes the same way.
    let _third = nodes[2].client("device-7").await;
    taken_over(&mut second).await;
}

/// The client's connection ends with DISCONNECT 0x8E Session taken over
/// (rumqttc reports it as the end of its event loop).
async fn taken_over(c: &mut Client) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_majority_refuses_new_connects_but_serves_its_clients() {
    let cluster = Cluster::new(3, true);
    let mut nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut sub = nodes[0].client("sub-1").await;
    sub.subscribe("local/#", q5(1)).await;
    let publisher = nodes[0].client("pub-1").await;
    // Two of three nodes die: node 1 alone is a minority.
    drop(nodes.pop());
    drop(nodes.pop());
    assert!(refused(&nodes[0], "newcomer")
        .await
        .contains("ServerUnavailable"));
    nodes[0]
        .log
        .wait_for(&["client refused by the cluster registry", "newcomer"]);
    // Its connected clients keep working.
    for m in numbered(20) {
        publisher.publish("local/x", q5(1), false, &m).await;
    }
    assert_eq!(received(&mut sub, "local/x", 20).await, numbered(20));
    // A node back makes a majority again.
    let node2 = cluster.start(2);
    node2.wait_linked(1);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let mut opts =
            rumqttc::v5::MqttOptions::new("newcomer", nodes[0].host.as_str(), nodes[0].port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (_c, mut ev) = rumqttc::v5::AsyncClient::new(opts, 10);
        if let Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
            _,
        )))) = tokio::time::timeout(common::WAIT, ev.poll()).await
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CONNECT accepted after the heal"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_withdrawn_and_comes_back_after_a_restart() {
    let cluster = Cluster::new(3, true);
    let mut nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut sub2 = nodes[1].client("sub-2").await;
    sub2.subscribe("t/#", q5(1)).await;
    let mut sub3 = nodes[2].client("sub-3").await;
    sub3.subscribe("t/#", q5(1)).await;
    let publisher = nodes[0].client("pub-1").await;
    until_routed(&publisher, &mut sub2, "t/probe").await;
    until_routed(&publisher, &mut sub3, "t/probe").await;

    // kill -9 node 3: node 1 sees its links go, and node 1 to node 2 goes on.
    let dead = nodes.pop().unwrap();
    drop(sub3);
    drop(dead);
    nodes[0].log.wait_for(&["node link lost", "node3"]);
    for m in numbered(100) {
        publisher.publish("t/after", q5(1), false, &m).await;
    }
    assert_eq!(received(&mut sub2, "t/after", 100).await, numbered(100));

    // The restarted node links again and gets what is published for it.
    let node3 = cluster.start(3);
    node3.wait_linked(2);
    let mut sub3 = node3.client("sub-3").await;
    sub3.subscribe("t/#", q5(1)).await;
    until_routed(&publisher, &mut sub3, "t/probe").await;
    for m in numbered(100) {
        publisher.publish("t/back", q5(1), false, &m).await;
    }
    assert_eq!(received(&mut sub3, "t/back", 100).await, numbered(100));
    assert_eq!(received(&mut sub2, "t/back", 100).await, numbered(100));
}

/// examples/cluster as the README there runs it: a CA made beside the
/// configs, then each node's file passes `--check-config` (its certificate
/// issued, every field loaded), and a config without the CA is refused
/// naming the field.
#[test]
fn the_cluster_examples_check_once_their_ca_is_made() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster");
    let dir = temp_file("x", "").parent().unwrap().to_owned();
    for i in 1..=3 {
        let name = format!("node{i}.json");
        std::fs::copy(examples.join(&name), dir.join(&name)).unwrap();
    }
    let check = |name: &str| {
        Command::new(BIN)
            .arg("--check-config")
            .arg("--config")
            .arg(dir.join(name))
            .output()
            .unwrap()
    };
    let out = check("node1.json");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.caCertFile"), "{err}");
    make_ca(&dir.join("ca"));
    for i in 1..=3 {
        let out = check(&format!("node{i}.json"));
        assert!(out.status.success(), "node{i}: {out:?}");
    }
}

/// kill -STOP the node holding a client id: the others commit the id's move
/// without it, and once it runs again it cannot act on what it believed
/// (leadership, the id): it applies the move and ends its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_loses_its_client_id_and_learns_it_when_it_resumes() {
    let cluster = Cluster::new(3, true);
    let nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut first = nodes[0].client("meter-3").await;
    let pid = nodes[0]._proc.0.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    // Nodes 2 and 3 are a majority: the id moves to node 2.
    let _second = nodes[1].client("meter-3").await;
    signal("-CONT");
    taken_over(&mut first).await;
    // Node 1 serves again, under the current leader.
    let _other = nodes[0].client("meter-4").await;
}

/// Node certificates that live 20 s and renew 15 s before expiry (every
/// ~5 s): traffic crosses throughout, and after the first certificate
/// expired a restarted node still links, to the renewed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_renew_under_traffic() {
    let mut cluster = Cluster::new(2, true);
    cluster.certs = ("20s", "15s");
    let node1 = cluster.start(1);
    let node2 = cluster.start(2);
    node1.wait_linked(1);
    node2.wait_linked(1);
    let mut sub = node2.client("sub").await;
    sub.subscribe("r/#", q5(1)).await;
    let publisher = node1.client("pub").await;
    until_routed(&publisher, &mut sub, "r/probe").await;
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(24) {
        let batch = numbered(20);
        for m in &batch {
            publisher.publish("r/x", q5(1), false, m).await;
        }
        assert_eq!(received(&mut sub, "r/x", 20).await, batch);
        sent += 20;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent > 0);
    let renewed = |n: &Node| {
        n.log
            .lines()
            .iter()
            .filter(|l| l.contains("certificate renewed"))
            .count()
    };
    assert!(renewed(&node1) >= 2, "{}", node1.log.lines().join("\n"));
    // Node 1's first certificate has expired: a new link must use the
    // renewed one.
    drop(sub);
    drop(node2);
    let node2 = cluster.start(2);
    node2.wait_linked(1);
    let mut sub = node2.client("sub-again").await;
    sub.subscribe("r/#", q5(1)).await;
    until_routed(&publisher, &mut sub, "r/probe").await;
}

/// deploy/kubernetes/shardmq-cluster.yaml's config, as a pod of the
/// StatefulSet loads it: with the Secrets in place (the cluster CA, the
/// listener certificate) and the pod's host name as its node name, it
/// passes `--check-config`. (The manifests' shape is checked in CI by
/// kubernetes-validate.)
#[test]
fn the_kubernetes_manifest_config_checks() {
    let yaml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/shardmq-cluster.yaml"),
    )
    .unwrap();
    // The ConfigMap's `config.json: |` block, dedented.
    let mut lines = yaml.lines().skip_while(|l| !l.contains("config.json: |"));
    lines.next();
    let json: String = lines
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let mut config: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Where the pod has its mounts, this test has a folder.
    let dir = temp_file("k8s", "").parent().unwrap().to_owned();
    make_ca(&dir.join("cluster-ca"));
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let (cert, key) = server_cert("shardmq");
    std::fs::write(secrets.join("broker-server-cert.crt"), cert).unwrap();
    std::fs::write(secrets.join("broker-server-cert.key"), key).unwrap();
    assert_eq!(config["secretsDir"], "/etc/shardmq/secrets");
    config["secretsDir"] = secrets.to_str().unwrap().into();
    config["stateDir"] = dir.join("state").to_str().unwrap().into();
    let c = &mut config["cluster"];
    c["caCertFile"] = dir.join("cluster-ca/ca.crt").to_str().unwrap().into();
    c["caKeyFile"] = dir.join("cluster-ca/ca.key").to_str().unwrap().into();
    // The pod's host name (the StatefulSet names it) is the node's name.
    assert!(c.get("node").is_none());
    c["node"] = "shardmq-1".into();
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A server certificate and key (PEM) for `name`, self-signed by rcgen.
fn server_cert(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A share group with members on three nodes gets each message once, on
/// one node at a time in turn (v5 §4.8.2), never once per node; a group
/// whose members are all on one node gets every message there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_are_balanced_across_nodes() {
    let cluster = Cluster::new(3, true);
    let nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut members = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut m = n.client(&format!("worker-{i}")).await;
        m.subscribe("$share/workers/jobs/#", q5(1)).await;
        members.push(m);
    }
    let mut lone = nodes[2].client("auditor").await;
    lone.subscribe("$share/audit/jobs/#", q5(1)).await;
    let publisher = nodes[0].client("dispatcher").await;
    // Until every member (and the lone group) got a probe: the share
    // routes reached node 1.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut seen = [false; 4];
    while !seen.iter().all(|s| *s) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "share routes never reached node 1: {seen:?}"
        );
        publisher.publish("jobs/probe", q5(0), false, b"p").await;
        for (i, c) in members
            .iter_mut()
            .chain(std::iter::once(&mut lone))
            .enumerate()
        {
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(20), c.rx.recv()).await
            {
                if matches!(ev, Ev::Publish { .. }) {
                    seen[i] = true;
                }
            }
        }
    }
    const N: usize = 300;
    for m in numbered(N) {
        publisher.publish("jobs/run", q5(1), false, &m).await;
    }
    // The lone group: all of them, in order.
    assert_eq!(received(&mut lone, "jobs/run", N).await, numbered(N));
    // The spread group: each exactly once, split between the nodes.
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut per_member = [0usize; 3];
    while got.len() < N {
        let mut progressed = false;
        for (i, c) in members.iter_mut().enumerate() {
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(50), c.rx.recv()).await
            {
                if let Ev::Publish { topic, payload, .. } = ev {
                    if topic == "jobs/run" {
                        got.push(payload);
                        per_member[i] += 1;
                        progressed = true;
                    }
                }
            }
        }
        assert!(
            progressed || got.len() >= N,
            "stalled at {} of {N}: {per_member:?}",
            got.len()
        );
    }
    for c in &mut members {
        c.expect_no_publish(Duration::from_millis(300)).await;
    }
    got.sort();
    let mut want = numbered(N);
    want.sort();
    assert_eq!(got, want, "each message once across the group");
    assert!(
        per_member.iter().all(|n| *n >= N / 6),
        "balanced across nodes: {per_member:?}"
    );
}

/// Three nodes in three network namespaces on a bridge; node 3's link to
/// the bridge is cut and restored. The minority side refuses new CONNECTs
/// (a client inside its namespace gets CONNACK code 3) while the majority
/// goes on and takes node 3's client id; after the heal node 3 ends that
/// session, accepts CONNECTs again and exchanges messages, with no restart.
/// Needs root (CI runs as root); skipped, saying so, where namespaces
/// cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_splits_no_client_id_and_heals_without_restarts() {
    if !common::has_mosquitto_clients() {
        return;
    }
    let Some(net) = Netns::make(3) else {
        eprintln!("skipped: cannot make network namespaces (needs root and `ip`)");
        return;
    };
    let dir = temp_file("netns", "").parent().unwrap().to_owned();
    make_ca(&dir.join("ca"));
    let peers: Vec<serde_json::Value> = (1..=3)
        .map(|j| serde_json::json!({"node": format!("node{j}"), "address": format!("{}:7883", net.ip(j))}))
        .collect();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let config = serde_json::json!({
            "listeners": [{"name": "mqtt", "ports": [{"port": 1883, "bindAddress": "0.0.0.0"}]}],
            "cardinality": {"frontend": {"workers": 2}},
            "stateDir": dir.join(format!("state{i}")),
            "cluster": {
                "node": format!("node{i}"), "address": format!("{}:7883", net.ip(i)), "peers": peers,
                "caCertFile": dir.join("ca/ca.crt"), "caKeyFile": dir.join("ca/ca.key"),
            },
        });
        let path = dir.join(format!("node{i}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.ns(i), BIN, "--config"])
            .arg(&path)
            .env("RUST_LOG", "info");
        let (proc, ports, log) = spawn_logged(cmd, 1);
        nodes.push(Node {
            host: net.ip(i),
            port: ports[0],
            log,
            _proc: proc,
        });
    }
    for n in &nodes {
        n.wait_linked(2);
    }
    // A client inside node 3's namespace holds "plc-9" there.
    // (mosquitto_sub reconnects by itself: killed at the end, `Proc`.)
    let _held = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns(3),
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-i",
                "plc-9",
                "-t",
                "x",
                "-q",
                "1",
                "-c",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    nodes[2].log.wait_for(&["plc-9"]);

    net.cut(3);
    nodes[0].log.wait_for(&["node link lost", "node3"]);
    // The minority side: no new CONNECT (v3.1.1 code 3, Server unavailable).
    let pub3 = |id: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns(3),
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-i",
                id,
                "-t",
                "y",
                "-m",
                "z",
            ])
            .output()
            .unwrap()
    };
    let out = pub3("newcomer");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("unavailable"),
        "{out:?}"
    );
    // The majority side takes node 3's client id.
    let _moved = nodes[0].client("plc-9").await;

    net.heal(3);
    nodes[2]
        .log
        .wait_for(&["connected to another node", "plc-9"]);
    for n in &nodes {
        n.wait_linked(2);
    }
    let deadline = std::time::Instant::now() + common::WAIT;
    while !pub3("newcomer").status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 never accepted again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut sub = nodes[2].client("sub-3").await;
    sub.subscribe("healed/#", q5(1)).await;
    let publisher = nodes[0].client("pub-1").await;
    until_routed(&publisher, &mut sub, "healed/probe").await;
}

/// Network namespaces on a bridge, removed on drop.
struct Netns {
    tag: String,
    n: usize,
}

impl Netns {
    fn sh(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn make(n: usize) -> Option<Netns> {
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

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn veth(&self, i: usize, side: char) -> String {
        format!("{}v{i}{side}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.213.77.{i}")
    }

    /// Node `i` off the bridge: a partition.
    fn cut(&self, i: usize) {
        assert!(Self::sh(&["link", "set", &self.veth(i, 'a'), "down"]));
    }

    fn heal(&self, i: usize) {
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

/// A node that was down gets, when it links, what the others retained
/// meanwhile; a topic it retains itself keeps its own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_comes_back_gets_the_retained_messages_it_missed() {
    let cluster = Cluster::new(3, true);
    let mut nodes: Vec<Node> = (1..=2).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(1);
    }
    let publisher = nodes[0].client("pub-1").await;
    for i in 0..20 {
        publisher
            .publish(
                &format!("site/cfg/{i}"),
                q5(1),
                true,
                format!("v{i}").as_bytes(),
            )
            .await;
    }
    let _ = publisher
        .client
        .publish("site/flush", q5(1), false, vec![1])
        .await;
    let node3 = cluster.start(3);
    node3.wait_linked(2);
    nodes.push(node3);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let mut late = nodes[2].client("late-3").await;
        late.client.subscribe("site/cfg/#", q5(1)).await.unwrap();
        let mut got = Vec::new();
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), late.rx.recv()).await
        {
            if let Ev::Publish { topic, retain, .. } = ev {
                assert!(retain, "{topic}");
                got.push(topic);
            }
        }
        late.disconnect().await;
        if got.len() == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 has {} of 20 retained",
            got.len()
        );
    }
}

/// Node 2 stops answering for 6 s (SIGSTOP): its links from node 1 go
/// silent and close, while node 1 keeps its routes (the link grace) and
/// keeps what is published for it. Once node 2 runs again the links come
/// back and its subscriber gets every message, in order: a link that
/// breaks while both nodes live loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_a_link_is_down_arrive_when_it_returns() {
    let cluster = Cluster::new(3, true);
    let nodes: Vec<Node> = (1..=3).map(|i| cluster.start(i)).collect();
    for n in &nodes {
        n.wait_linked(2);
    }
    let mut sub = nodes[1].client("sub-2").await;
    sub.subscribe("f/#", q5(1)).await;
    let publisher = nodes[0].client("pub-1").await;
    until_routed(&publisher, &mut sub, "f/probe").await;
    let pid = nodes[1]._proc.0.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    for m in numbered(50) {
        publisher.publish("f/x", q5(1), false, &m).await;
    }
    // Node 1's links to node 2 time out meanwhile.
    nodes[0].log.wait_for(&["node link lost", "node2"]);
    for m in numbered(100).split_off(50) {
        publisher.publish("f/x", q5(1), false, &m).await;
    }
    signal("-CONT");
    assert_eq!(received(&mut sub, "f/x", 100).await, numbered(100));
}
