//! mesh_hop: a publish handed from one shard to another, as the broker does
//! it: a `MeshMsg::Deliver` carrying an `Arc<Message>` and its targets over
//! glommio's channel mesh, between two executors on their own threads. The
//! time is from the first send on shard 0 to the last receive on shard 1,
//! so it includes queueing and wake-ups, not executor start-up.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use shardmq_core::broker::{MeshMsg, SessionId};
use shardmq_core::codec::QoS;
use shardmq_core::session::{Delivery, Message};
use shardmq_core::topic::TopicName;

/// Sends `n` deliveries of `targets` sessions each; returns the elapsed time.
fn hop(n: u64, targets: usize) -> Duration {
    let mesh = MeshBuilder::<MeshMsg, _>::full(2, 1024);
    let message = Arc::new(Message {
        topic: TopicName::try_from("factory/site1/line2/machine3/temp").expect("valid topic"),
        payload: Bytes::from(vec![0u8; 64]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: "bench".into(),
        retain_stamp: 0,
    });
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    let receiver_mesh = mesh.clone();
    let receiver = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (_tx, mut rx) = receiver_mesh.join().await.expect("join mesh");
            let (_, stream) = rx.streams().pop().expect("one peer");
            for _ in 0..n {
                stream.recv().await.expect("message");
            }
            Instant::now()
        })
        .expect("executor");
    let sender = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let (tx, _rx) = mesh.join().await.expect("join mesh");
            // Peer ids follow join order: the other peer is the receiver.
            let to = 1 - tx.peer_id();
            let _ = start_tx.send(Instant::now());
            for _ in 0..n {
                let msg = MeshMsg::Deliver {
                    message: message.clone(),
                    request: None,
                    targets: vec![(SessionId(1), Delivery::default()); targets],
                };
                if tx.send_to(to, msg).await.is_err() {
                    break;
                }
            }
        })
        .expect("executor");
    sender.join().expect("sender");
    let end = receiver.join().expect("receiver");
    let start = start_rx.recv().expect("start time");
    end.saturating_duration_since(start)
}

fn mesh_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh_hop");
    for targets in [1usize, 16] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("deliver_64B_{targets}_targets"), |b| {
            b.iter_custom(|iters| {
                hop(iters.max(1024), targets).mul_f64(iters as f64 / iters.max(1024) as f64)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, mesh_hop);
criterion_main!(benches);
