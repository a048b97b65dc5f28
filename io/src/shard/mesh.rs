//! The shard's side of glommio's channel mesh: one sender task per peer
//! drains the shard's outbox for that peer in order (waiting while the
//! peer's queue is full: the backpressure publishers feel through
//! `Flow::WaitForMesh`), and one receiver task per peer hands what arrives
//! to the shard in the order it was sent. Do not use glommio's
//! `spsc_queue` directly (known memory-safety bug in 0.9).

use std::rc::Rc;
use std::time::Instant;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::LocalReceiver;
use shardmq_core::broker::{MeshMsg, ShardId};
use tracing::warn;

use crate::driver::Driver;

/// Starts the sender and receiver tasks; they run until the shard stops.
pub fn start(
    driver: &Rc<Driver>,
    senders: Senders<MeshMsg>,
    mut receivers: Receivers<MeshMsg>,
    wakeups: Vec<(ShardId, LocalReceiver<()>)>,
) {
    let senders = Rc::new(senders);
    for (peer, wakeup) in wakeups {
        let driver = driver.clone();
        let senders = senders.clone();
        glommio::spawn_local(async move {
            loop {
                while let Some(msg) = driver.with(|s| s.poll_mesh(peer)) {
                    driver.mesh_drained();
                    if senders.send_to(peer.index(), msg).await.is_err() {
                        warn!(
                            shard = driver.id.index(),
                            peer = peer.index(),
                            "mesh peer closed"
                        );
                        return;
                    }
                }
                driver.mesh_drained();
                if wakeup.recv().await.is_none() {
                    return;
                }
            }
        })
        .detach();
    }
    for (peer, rx) in receivers.streams() {
        let driver = driver.clone();
        let from = ShardId::new(peer);
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                driver.with(|s| s.handle_mesh(from, msg, Instant::now()));
            }
        })
        .detach();
    }
}
