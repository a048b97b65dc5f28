//! Several `shardmq` processes as one broker (docs/CLUSTER.md): nodes on
//! 127.0.0.1, .2 and .3, node links in mutual TLS under a cluster CA the
//! test makes with `--make-cluster-ca`, rumqttc clients on different nodes:
//! one topic space, share groups across nodes, retained messages for a node
//! that comes back, plaintext links when internal encryption is off,
//! certificates renewed under traffic, the shipped examples and manifests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::{q5, temp_file, Client, Ev, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_are_one_topic_space_over_mutual_tls() {
    let cluster = Cluster::new(3, true);
    let nodes = cluster.start_all();
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

/// A cluster CA rotated in the three steps docs/CLUSTER.md gives, each a
/// file edit and SIGHUP on every node: trust old and new, sign with new,
/// drop old. QoS 1 traffic crosses from node 1 to node 2 between the steps,
/// no link drops or is made again, and afterwards a restarted node links
/// under the new CA alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_rotates_without_dropping_links() {
    let cluster = Cluster::new(3, true);
    let (ca, next) = (cluster.dir.join("ca"), cluster.dir.join("ca-next"));
    make_ca(&next);
    let pem = |dir: &PathBuf| std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let (old_pem, new_pem) = (pem(&ca), pem(&next));
    let nodes = cluster.start_all();
    let mut sub = nodes[1].client("sub").await;
    sub.subscribe("rot/#", q5(1)).await;
    let publisher = nodes[0].client("pub").await;
    until_routed(&publisher, &mut sub, "rot/probe").await;
    let links: Vec<usize> = nodes.iter().map(Node::links_out).collect();
    let rotated = |n: &Node| {
        n.log
            .lines()
            .iter()
            .filter(|l| l.contains("cluster CA files changed"))
            .count()
    };
    let steps: [(String, Option<&PathBuf>); 3] = [
        (format!("{old_pem}{new_pem}"), None),
        (format!("{new_pem}{old_pem}"), Some(&next)),
        (new_pem.clone(), None),
    ];
    for (step, (roots, key_from)) in steps.iter().enumerate() {
        std::fs::write(ca.join("ca.crt"), roots).unwrap();
        if let Some(dir) = key_from {
            std::fs::copy(dir.join("ca.key"), ca.join("ca.key")).unwrap();
        }
        for node in &nodes {
            node.signal("-HUP");
        }
        for node in &nodes {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while rotated(node) < step + 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "step {step}: {}",
                    node.log.lines().join("\n")
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let batch = numbered(50);
        for m in &batch {
            publisher.publish("rot/x", q5(1), false, m).await;
        }
        assert_eq!(received(&mut sub, "rot/x", 50).await, batch, "step {step}");
    }
    for (node, before) in nodes.iter().zip(&links) {
        let lines = node.log.lines();
        assert_eq!(node.links_out(), *before, "{}", lines.join("\n"));
        assert!(
            !lines.iter().any(|l| l.contains("node link lost")),
            "{}",
            lines.join("\n")
        );
    }
    // Nodes 1 and 2 now hold leaves of the new CA and trust only it: a
    // restarted node 3, reading the same files, links to both and traffic
    // crosses.
    let mut nodes = nodes;
    drop(nodes.pop());
    let node3 = cluster.start(3);
    node3.wait_linked(2);
    let mut sub = node3.client("sub-after").await;
    sub.subscribe("rot/#", q5(1)).await;
    until_routed(&publisher, &mut sub, "rot/probe").await;
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

/// A share group with members on three nodes gets each message once, on
/// one node at a time in turn (v5 §4.8.2), never once per node; a group
/// whose members are all on one node gets every message there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_are_balanced_across_nodes() {
    let cluster = Cluster::new(3, true);
    let nodes = cluster.start_all();
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
