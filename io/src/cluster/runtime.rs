//! The cluster on one shard at run time (docs/CLUSTER.md). Every shard
//! binds the node's internal address (SO_REUSEPORT), serves the links peers
//! dial in (this node's routes out; their messages in, acknowledged once
//! routed here) and keeps one link dialled to each peer (its routes in;
//! what this shard owes it out). Links come back with backoff. What goes
//! where is the core shard's decision (`broker/cluster.rs`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpListener;
use rustls::{ClientConfig, ServerConfig};
use shardmq_core::cluster::clock::NodeClock;
use shardmq_core::cluster::frame::{self, Frame};
use shardmq_core::cluster::{Incarnation, NodeId};
use shardmq_core::config::ClusterNode;
use tracing::{debug, info, warn};

use super::link::{self, Link, LinkError, LinkWriter, Peer};
use crate::driver::Driver;

/// The first wait before dialling a peer again; it doubles up to the max.
const REDIAL_MIN: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_secs(2);
/// An idle link sends something this often (an empty `Publish` one way,
/// the last `Ack` the other)...
const KEEPALIVE: Duration = Duration::from_secs(1);
/// ...and one that hears nothing for this long is dead: a cut cable or a
/// partition sends no FIN, and TCP alone would notice after minutes.
const SILENCE_MAX: Duration = Duration::from_secs(4);

/// What every shard of a node needs to run its links.
#[derive(Debug)]
pub struct ClusterSetup {
    /// This node (its host and port are those it binds).
    pub me: ClusterNode,
    /// Where this node accepts node links; the control plane binds the
    /// next port.
    pub bind: SocketAddr,
    pub peers: Vec<ClusterNode>,
    /// This life of the node (a restart takes a larger one).
    pub incarnation: Incarnation,
    /// The node's clock for retained changes, one for all its shards.
    pub clock: Arc<NodeClock>,
    /// `None`: `encryptInternalTraffic: Disabled`, plaintext links.
    pub tls: Option<NodeTls>,
    /// Where the control plane keeps its Raft state.
    pub dir: std::path::PathBuf,
}

/// Mutual TLS under the cluster's CA, both ends (`shardmq_auth::node_tls`).
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The roots both configs check peers against: a CA rotation (SIGHUP)
    /// replaces them under the running configs.
    pub trust: Arc<shardmq_auth::node_tls::NodeTrust>,
}

/// Binds the internal address on this shard and starts its link tasks.
pub fn start(driver: &Rc<Driver>, setup: Arc<ClusterSetup>) -> std::io::Result<SocketAddr> {
    let listener = crate::shard::listen::listen(setup.bind)?;
    let bound = listener.local_addr()?;
    let inbound: Rc<RefCell<Vec<Rc<Outbox>>>> = Rc::default();
    glommio::spawn_local(route_pump(driver.clone(), inbound.clone())).detach();
    glommio::spawn_local(accept_loop(
        driver.clone(),
        listener,
        setup.clone(),
        inbound,
    ))
    .detach();
    for peer in &setup.peers {
        glommio::spawn_local(dial_loop(driver.clone(), setup.clone(), peer.clone())).detach();
    }
    driver.with(|s| s.cluster_links_started(Instant::now()));
    Ok(bound)
}

/// Frames for one link a peer dialled in: route changes in order, and the
/// latest acknowledgement (only the last one matters).
struct Outbox {
    /// This link's id for `Shard::handle_cluster_publish`.
    id: u64,
    frames: RefCell<VecDeque<Frame>>,
    /// Messages of this link routed at their stream's home so far: what it
    /// acknowledges.
    routed: Cell<u64>,
    ack: Cell<Option<u64>>,
    notify: LocalSender<()>,
    closed: Cell<bool>,
}

/// Ids of accepted links, unique in the process.
static LINK_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Outbox {
    fn push(&self, frame: Frame) {
        self.frames.borrow_mut().push_back(frame);
        let _ = self.notify.try_send(());
    }

    /// `count` more of this link's messages are routed.
    fn routed(&self, count: u64) {
        if count > 0 {
            self.routed.set(self.routed.get() + count);
            self.ack.set(Some(self.routed.get()));
            let _ = self.notify.try_send(());
        }
    }
}

/// Sends the node's route changes to every link peers dialled into this
/// shard, in order, and their acknowledgements of what other shards routed.
async fn route_pump(driver: Rc<Driver>, inbound: Rc<RefCell<Vec<Rc<Outbox>>>>) {
    let wake = driver.cluster_wakeup();
    loop {
        while let Some(delta) = driver.with(|s| s.poll_route_delta()) {
            let mut links = inbound.borrow_mut();
            links.retain(|o| !o.closed.get());
            for o in links.iter() {
                o.push(Frame::Route(delta.clone()));
            }
        }
        // What other shards, the streams' homes, routed for these links.
        for (link, count) in driver.with(|s| s.poll_cluster_routed()) {
            if let Some(o) = inbound.borrow().iter().find(|o| o.id == link) {
                o.routed(count);
            }
        }
        if wake.recv().await.is_none() {
            return;
        }
    }
}

async fn accept_loop(
    driver: Rc<Driver>,
    listener: TcpListener,
    setup: Arc<ClusterSetup>,
    inbound: Rc<RefCell<Vec<Rc<Outbox>>>>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (driver, setup, inbound) = (driver.clone(), setup.clone(), inbound.clone());
                glommio::spawn_local(async move {
                    let from = stream.peer_addr().ok();
                    let served = match &setup.tls {
                        Some(tls) => {
                            let me = (setup.me.id, setup.incarnation);
                            match link::accept(stream, tls.server.clone(), me.0, me.1).await {
                                Ok(l) => serve_inbound(&driver, l, &setup, &inbound).await,
                                Err(e) => Err(e),
                            }
                        }
                        None => {
                            match link::accept_plain(stream, setup.me.id, setup.incarnation).await {
                                Ok(l) => serve_inbound(&driver, l, &setup, &inbound).await,
                                Err(e) => Err(e),
                            }
                        }
                    };
                    if let Err(e) = served {
                        warn!(shard = driver.id.index(), from = ?from, error = %e,
                            "cluster: an incoming node link ended");
                    }
                })
                .detach();
            }
            Err(e) => {
                warn!(shard = driver.id.index(), error = %e, "cluster: accept on the internal port failed");
                glommio::timer::sleep(REDIAL_MIN).await;
            }
        }
    }
}

/// The peer a link reaches: one of ours, and (with TLS) the node its
/// certificate names; `expect` is the node a dialled link must reach.
fn check_peer<'a>(
    peer: &Peer,
    setup: &'a ClusterSetup,
    expect: Option<NodeId>,
) -> Result<&'a ClusterNode, LinkError> {
    let node = setup
        .peers
        .iter()
        .find(|n| n.id == peer.node)
        .ok_or_else(|| LinkError::BadName(format!("unknown node id {}", peer.node.0)))?;
    if setup.tls.is_some() && node.name != peer.name {
        return Err(LinkError::BadName(format!(
            "certificate of {:?} claims node id of {:?}",
            peer.name, node.name
        )));
    }
    if expect.is_some_and(|e| e != node.id) {
        return Err(LinkError::BadName(format!(
            "dialled another node, reached {:?}",
            node.name
        )));
    }
    Ok(node)
}

/// A link a peer dialled in: this node's routes go out (a snapshot, then
/// every change), the peer's messages come in and are acknowledged once
/// routed here.
async fn serve_inbound<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &Rc<Driver>,
    link: Link<S>,
    setup: &ClusterSetup,
    inbound: &RefCell<Vec<Rc<Outbox>>>,
) -> Result<(), LinkError> {
    let node = check_peer(link.peer(), setup, None)?;
    let peer = link.peer().clone();
    let (mut reader, mut writer) = link.split();
    let (notify, wake) = local_channel::new_bounded(1);
    let out = Rc::new(Outbox {
        id: LINK_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        frames: RefCell::default(),
        routed: Cell::new(0),
        ack: Cell::new(None),
        notify,
        closed: Cell::new(false),
    });
    // Snapshot and registration in one step: every later change reaches
    // this link after the snapshot.
    if let Some(snapshot) = driver.peek(|s| s.cluster_route_snapshot()) {
        out.push(Frame::Route(snapshot));
    }
    inbound.borrow_mut().push(out.clone());
    info!(shard = driver.id.index(), peer = %node.name, "cluster: node link in");
    let read = async {
        // Messages handed to their stream's home and not yet routed there
        // stay under `LINK_WINDOW`: a peer cannot fill this node's mesh
        // through a home that is behind. One stream per link.
        let mut posted = 0u64;
        let mut link_stream = None;
        loop {
            let frame = reader.recv(SILENCE_MAX).await?;
            if let Frame::Retained(messages) = frame {
                driver.with(|s| s.handle_cluster_retained(messages, Instant::now()));
                continue;
            }
            if let Frame::Publish {
                stream,
                first_seq,
                messages,
            } = frame
            {
                // A slow shard mesh pushes back on the peer, as on clients.
                // Only the shard mesh: waiting on this shard's own links
                // too could deadlock two nodes flooding each other.
                if messages.is_empty() {
                    continue;
                }
                if *link_stream.get_or_insert(stream) != stream {
                    return Err(LinkError::Protocol(format!(
                        "{} switched streams on one link",
                        node.name
                    )));
                }
                while !driver.peek(|s| s.shard_mesh_has_room())
                    || posted.saturating_sub(out.routed.get()) > LINK_WINDOW
                {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                posted += messages.len() as u64;
                let key = (peer.node, peer.incarnation, stream);
                let routed = driver.with(|s| {
                    s.handle_cluster_publish(Instant::now(), out.id, key, first_seq, messages)
                });
                out.routed(routed);
            }
        }
    };
    let write = write_outbox(&mut writer, &out, &wake);
    let result = read.or(write).await;
    out.closed.set(true);
    inbound.borrow_mut().retain(|o| !Rc::ptr_eq(o, &out));
    result
}

/// Messages of one link handed to their home and not yet routed, at most
/// (then the link stops reading).
const LINK_WINDOW: u64 = 4 * shardmq_core::broker::CLUSTER_BATCH_MAX as u64;

async fn write_outbox<S: AsyncRead + AsyncWrite + Unpin>(
    writer: &mut link::LinkWriter<S>,
    out: &Outbox,
    wake: &LocalReceiver<()>,
) -> Result<(), LinkError> {
    let mut last_ack = 0;
    loop {
        let frames: Vec<Frame> = out.frames.borrow_mut().drain(..).collect();
        let mut ack = out.ack.take();
        if frames.is_empty() && ack.is_none() {
            match within(KEEPALIVE, wake.recv()).await {
                Some(None) => return Err(LinkError::Closed),
                Some(Some(())) => continue,
                // Idle: the last acknowledgement again, as a keepalive.
                None => ack = Some(last_ack),
            }
        }
        last_ack = ack.unwrap_or(last_ack);
        let now = Instant::now();
        for f in frames.iter().chain(ack.map(Frame::Ack).as_ref()) {
            frame::encode(f, writer.buf(), now)?;
        }
        writer.flush().await?;
    }
}

/// Keeps a link to `peer` dialled from this shard, again and again.
async fn dial_loop(driver: Rc<Driver>, setup: Arc<ClusterSetup>, peer: ClusterNode) {
    let mut wait = REDIAL_MIN;
    let mut quiet = false;
    loop {
        let (me, inc) = (setup.me.id, setup.incarnation);
        let mut result = Err(Ended::from(LinkError::Closed));
        // Each address the name resolves to, in order, until one links.
        for addr in resolve(&peer).await.unwrap_or_else(|e| {
            result = Err(LinkError::Io(e).into());
            Vec::new()
        }) {
            result = match &setup.tls {
                Some(tls) => {
                    match link::dial(addr, &peer.name, tls.client.clone(), me, inc).await {
                        Ok(l) => serve_outbound(&driver, l, &setup, &peer).await,
                        Err(e) => Err(e.into()),
                    }
                }
                None => match link::dial_plain(addr, &peer.name, me, inc).await {
                    Ok(l) => serve_outbound(&driver, l, &setup, &peer).await,
                    Err(e) => Err(e.into()),
                },
            };
            if result.as_ref().is_err_and(Ended::was_up) {
                break;
            }
        }
        if result.as_ref().is_err_and(|e| !e.was_up()) {
            // Unreachable for now: this shard's clients need not wait for
            // its routes (`cluster_routes_ready`).
            driver.with(|s| s.cluster_link_failed(peer.id));
            driver.wake_routes_waiters();
        }
        match result {
            Ok(()) => {}
            Err(e) if e.was_up() => {
                warn!(shard = driver.id.index(), peer = %peer.name, error = %e.error,
                    "cluster: node link lost; its routes are withdrawn until it is back");
                wait = REDIAL_MIN;
                quiet = false;
            }
            Err(e) if !quiet => {
                warn!(shard = driver.id.index(), peer = %peer.name, address = %peer.address(),
                    error = %e.error, "cluster: cannot link to node; retrying quietly");
                quiet = true;
            }
            Err(_) => {}
        }
        glommio::timer::sleep(wait).await;
        wait = (wait * 2).min(REDIAL_MAX);
    }
}

/// Payload bytes a frame carries before the next one starts (one message
/// at least, whatever its size: `link::FRAME_MAX` admits the largest).
const FRAME_PAYLOAD: usize = 1 << 20;

/// `items` cut into runs of about `FRAME_PAYLOAD` payload bytes.
fn by_bytes<T>(items: &[T], bytes: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        if i > start && sum + bytes(item) > FRAME_PAYLOAD {
            out.push(&items[start..i]);
            (start, sum) = (i, 0);
        }
        sum += bytes(item);
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// `work`'s output, or `None` once `limit` passed.
async fn within<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    async { Some(work.await) }
        .or(async {
            glommio::timer::sleep(limit).await;
            None
        })
        .await
}

/// The peer's address now (a DNS name may move, e.g. a restarted pod), off
/// the shard: the resolver blocks.
async fn resolve(peer: &ClusterNode) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = peer.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, peer.port)]);
    }
    let target = (peer.host.clone(), peer.port);
    glommio::executor()
        .spawn_blocking(move || {
            use std::net::ToSocketAddrs;
            Ok(target.to_socket_addrs()?.collect())
        })
        .await
}

/// Why a dialled link ended, and whether it had come up.
struct Ended {
    error: LinkError,
    up: bool,
}

impl Ended {
    fn was_up(&self) -> bool {
        self.up
    }
}

impl From<LinkError> for Ended {
    fn from(error: LinkError) -> Ended {
        Ended { error, up: false }
    }
}

/// This shard's retained messages (and tombstones) over a link it
/// dialled, in frames of bounded size.
async fn send_retained<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &Rc<Driver>,
    writer: &mut LinkWriter<S>,
) -> Result<(), LinkError> {
    let retained = driver.peek(|s| s.cluster_retained_sync());
    for chunk in by_bytes(&retained, |m| m.payload.len()) {
        let frame = Frame::Retained(chunk.iter().map(|m| (**m).clone()).collect());
        frame::encode(&frame, writer.buf(), Instant::now())?;
        writer.flush().await?;
    }
    Ok(())
}

/// A link this shard dialled: the peer's routes come in, what this shard
/// owes the peer goes out, and the peer's acknowledgements release it.
async fn serve_outbound<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &Rc<Driver>,
    link: Link<S>,
    setup: &ClusterSetup,
    peer: &ClusterNode,
) -> Result<(), Ended> {
    check_peer(link.peer(), setup, Some(peer.id))?;
    let node = peer.id;
    let (mut reader, mut writer) = link.split();
    let wake = driver.cluster_wakeup();
    let stream = u16::try_from(driver.id.index()).unwrap_or(u16::MAX);
    // What this shard retains, for a peer that was down or is new.
    send_retained(driver, &mut writer).await?;
    driver.with(|s| s.cluster_link_up(node));
    info!(shard = driver.id.index(), peer = %peer.name, "cluster: node link out");
    let read = async {
        let mut acked = 0u64;
        loop {
            let frame = reader.recv(SILENCE_MAX).await?;
            match frame {
                Frame::Route(msg) => {
                    driver.with(|s| s.handle_cluster_routes(node, msg));
                    driver.wake_routes_waiters();
                }
                Frame::Ack(n) if n > acked => {
                    let count = usize::try_from(n - acked).unwrap_or(usize::MAX);
                    driver.with(|s| s.cluster_acked(node, count));
                    acked = n;
                }
                _ => {}
            }
        }
    };
    let write = async {
        loop {
            if driver.with(|s| s.cluster_take_resync(node, Instant::now())) {
                debug!(shard = driver.id.index(), peer = %peer.name, "cluster: retained messages sent again (another peer's link broke)");
                send_retained(driver, &mut writer).await?;
            }
            let (first, batch) = driver.with(|s| s.poll_cluster(node));
            driver.mesh_drained();
            if batch.is_empty() {
                match within(KEEPALIVE, wake.recv()).await {
                    Some(None) => return Err(LinkError::Closed),
                    Some(Some(())) => {}
                    // Idle: an empty batch, as a keepalive.
                    None => {
                        let none = std::iter::empty();
                        frame::encode_publish(stream, 0, none, writer.buf(), Instant::now())?;
                        writer.flush().await?;
                    }
                }
                continue;
            }
            let mut seq = first;
            for chunk in by_bytes(&batch, |(m, _)| m.payload.len()) {
                let entries = chunk.iter().map(|(m, g)| (&**m, g.as_slice()));
                frame::encode_publish(stream, seq, entries, writer.buf(), Instant::now())?;
                seq += chunk.len() as u64;
            }
            writer.flush().await?;
        }
    };
    let result: Result<(), LinkError> = read.or(write).await;
    driver.with(|s| s.cluster_link_down(node, Instant::now()));
    driver.wake_routes_waiters();
    result.map_err(|error| Ended { error, up: true })
}
