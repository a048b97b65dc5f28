//! Shared set-up for the scenario tests: an in-process shardmq broker on a
//! loopback port, short run specs, and a TCP proxy that can cut a client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardmq_io::{ListenerSpec, ServerConfig, ServerHandle};
use shardmq_loadtest::{RunSpec, Scenario, Target};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub fn broker() -> ServerHandle {
    shardmq_io::start(ServerConfig {
        shards: 1,
        pin_cpus: false,
        listeners: vec![ListenerSpec::plain(
            "t".to_owned(),
            "127.0.0.1:0".parse().unwrap(),
            None,
        )],
        limits: Default::default(),
        retained_max: 10_000,
        selftest: None,
        disk_buffer: None,
        encrypt_internal_traffic: true,
        memory_budget_bytes: 16 << 20,
        retained_bytes_max: 64 << 20,
        partial_bytes_max: 64 << 20,
        persistence: None,
        cluster: None,
    })
    .expect("broker starts")
}

pub fn target(addr: SocketAddr) -> Target {
    Target {
        name: "shardmq".to_owned(),
        addr: addr.to_string(),
    }
}

/// A short run of `scenario`'s preset: about 1.5 s.
pub fn quick(scenario: Scenario) -> RunSpec {
    RunSpec {
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        drain: Duration::from_secs(2),
        progress: false,
        ..scenario.preset()
    }
}

/// Forwards every connection to `upstream`; the `cut`-th accepted
/// connection (0-based) is closed after `after`.
pub async fn cutting_proxy(upstream: SocketAddr, cut: usize, after: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if n == cut {
                    let _ = tokio::time::timeout(
                        after,
                        tokio::io::copy_bidirectional(&mut client, &mut server),
                    )
                    .await;
                    let _ = client.shutdown().await;
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}
