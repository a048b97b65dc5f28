//! Node links (io/src/cluster/link.rs) over real sockets on loopback, each
//! end on its own glommio executor, with certificates a test-made internal
//! CA issued: the peers learn each other's name and incarnation and
//! exchange route frames; a node of another cluster is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use glommio::net::TcpListener;
use glommio::LocalExecutorBuilder;
use shardmq_auth::ca::{generate_key, SubjectAltNames};
use shardmq_auth::node_tls::{node_client_config, node_server_config, trusted_roots, NodeTrust};
use shardmq_auth::{InternalCa, ReloadableCert};
use shardmq_core::cluster::frame::Frame;
use shardmq_core::cluster::{Incarnation, NodeId, RouteMsg, RouteOp};
use shardmq_core::config::KeyAlgorithm;
use shardmq_core::topic::TopicFilter;
use shardmq_io::cluster::link::{self, LinkError, Peer};

fn node_cert(ca: &InternalCa, name: &str) -> Arc<ReloadableCert> {
    let sans = SubjectAltNames::new(vec![name.to_owned()], vec![]).unwrap();
    let key = generate_key(KeyAlgorithm::Ec256).unwrap();
    let issued = ca
        .issue_node(&sans, &key, Duration::from_secs(600), SystemTime::now())
        .unwrap();
    Arc::new(ReloadableCert::from_pem(&issued.chain_pem, &issued.key_pem).unwrap())
}

fn delta() -> Frame {
    Frame::Route(RouteMsg::Delta {
        from: NodeId(2),
        incarnation: Incarnation(9),
        seq: 1,
        ops: vec![RouteOp::Add(TopicFilter::try_from("plant/#").unwrap())],
    })
}

/// What one end learnt: the peer and the first frame it got, or why not.
type Outcome = Result<(Peer, Frame), String>;

/// Node "node-2" accepts one link on 127.0.0.2 (or 127.0.0.1), answers the
/// first frame it gets with a route delta, and reports what it learnt.
fn serve_one(
    cert: Arc<ReloadableCert>,
    roots_pem: String,
) -> (SocketAddr, mpsc::Receiver<Outcome>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    LocalExecutorBuilder::default()
        .name("node-2")
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.2:0")
                .or_else(|_| TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let stream = listener.accept().await.unwrap();
            let tls = node_server_config(
                cert,
                &NodeTrust::new(trusted_roots(&roots_pem).unwrap()).unwrap(),
            )
            .unwrap();
            let result = async {
                let mut link = link::accept(stream, tls, NodeId(2), Incarnation(9)).await?;
                let got = link.recv().await?;
                link.send(&[delta()]).await?;
                Ok::<_, LinkError>((link.peer().clone(), got))
            }
            .await;
            done_tx.send(result.map_err(|e| e.to_string())).unwrap();
        })
        .unwrap();
    (addr_rx.recv().unwrap(), done_rx)
}

/// Node "node-1" dials `addr` expecting "node-2", sends a snapshot request
/// and waits for the answer.
fn dial_one(cert: Arc<ReloadableCert>, roots_pem: String, addr: SocketAddr) -> Outcome {
    LocalExecutorBuilder::default()
        .name("node-1")
        .spawn(move || async move {
            let tls = node_client_config(
                cert,
                &NodeTrust::new(trusted_roots(&roots_pem).unwrap()).unwrap(),
            )
            .unwrap();
            let mut link = link::dial(addr, "node-2", tls, NodeId(1), Incarnation(4))
                .await
                .map_err(|e| e.to_string())?;
            link.send(&[Frame::Route(RouteMsg::SnapshotRequest { from: NodeId(1) })])
                .await
                .map_err(|e| e.to_string())?;
            let got = link.recv().await.map_err(|e| e.to_string())?;
            Ok((link.peer().clone(), got))
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn two_nodes_of_one_cluster_link_and_exchange_route_frames() {
    let ca = InternalCa::create(KeyAlgorithm::Ec256, SystemTime::now()).unwrap();
    let roots = ca.cert_pem().to_owned();
    let (addr, server) = serve_one(node_cert(&ca, "node-2"), roots.clone());
    let (peer, got) = dial_one(node_cert(&ca, "node-1"), roots, addr).unwrap();
    assert_eq!(
        peer,
        Peer {
            name: "node-2".into(),
            node: NodeId(2),
            incarnation: Incarnation(9)
        }
    );
    assert_eq!(got, delta());
    let (peer, got) = server
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(
        peer,
        Peer {
            name: "node-1".into(),
            node: NodeId(1),
            incarnation: Incarnation(4)
        }
    );
    assert_eq!(
        got,
        Frame::Route(RouteMsg::SnapshotRequest { from: NodeId(1) })
    );
}

#[test]
fn a_node_of_another_cluster_is_refused_at_both_ends() {
    let ca = InternalCa::create(KeyAlgorithm::Ec256, SystemTime::now()).unwrap();
    let other = InternalCa::create(KeyAlgorithm::Ec256, SystemTime::now()).unwrap();
    let (addr, server) = serve_one(node_cert(&ca, "node-2"), ca.cert_pem().to_owned());
    // Its certificate says node-1, but another CA issued it.
    let dialled = dial_one(node_cert(&other, "node-1"), ca.cert_pem().to_owned(), addr);
    assert!(dialled.is_err(), "{dialled:?}");
    let accepted = server.recv_timeout(Duration::from_secs(10)).unwrap();
    let err = accepted.unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("issuer"),
        "{err}"
    );
}
