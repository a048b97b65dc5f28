//! The control plane's network: Raft RPCs (and registry writes forwarded to
//! the leader) between nodes' control ports, as length-prefixed JSON over
//! the same mutual TLS as the node links (plaintext with internal
//! encryption off). One request at a time per connection; a connection that
//! fails is dialled again on the next RPC.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::types::{Command, Reply, TypeConfig};

type NodeId = u64;

/// The largest request or answer (a snapshot of the registry travels whole).
pub const FRAME_MAX: usize = 64 << 20;
/// How long one RPC may take, connect included.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// The first frame on a connection: the dialler's node id (checked
    /// against its certificate's name with TLS).
    Hello(u64),
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A registry command for the leader to commit.
    Write(Command),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// `Err`: not committed (this node is not the leader, or lost it).
    Write(Result<Reply, String>),
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

pub async fn write_frame<T: Serialize>(
    s: &mut (impl Stream + ?Sized),
    v: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await?;
    s.flush().await
}

pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    s: &mut (impl Stream + ?Sized),
) -> std::io::Result<T> {
    read_frame_max(s, FRAME_MAX).await
}

/// `read_frame` with a smaller limit (a `Hello` before the peer is known).
pub async fn read_frame_max<T: for<'de> Deserialize<'de>>(
    s: &mut (impl Stream + ?Sized),
    max: usize,
) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::other(format!(
            "control frame of {len} bytes over the limit of {max}"
        )));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// How to reach peers' control ports.
#[derive(Clone)]
pub struct Dialer {
    pub me: u64,
    /// `None`: plaintext.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Node id -> node name (the certificate's DNS name).
    pub names: Arc<std::collections::HashMap<u64, String>>,
    /// Idle connections per node for forwarded writes (claims), so a
    /// CONNECT on a follower costs one round trip, not a TLS handshake.
    pub idle: Arc<std::sync::Mutex<IdleConns>>,
}

/// Per node id, connections that answered their last call.
pub type IdleConns = std::collections::HashMap<u64, Vec<Box<dyn Stream>>>;

/// Idle forwarding connections kept per node.
const IDLE_PER_NODE: usize = 16;

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("me", &self.me).finish()
    }
}

impl Dialer {
    pub async fn connect(&self, target: u64, addr: &str) -> std::io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = self
                    .names
                    .get(&target)
                    .ok_or_else(|| std::io::Error::other("unknown node"))?;
                let server_name = ServerName::try_from(name.clone())
                    .map_err(|_| std::io::Error::other("bad node name"))?;
                let tls = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(server_name, tcp)
                    .await?;
                Box::new(tls)
            }
        };
        write_frame(&mut *stream, &Rpc::Hello(self.me)).await?;
        Ok(stream)
    }

    /// An idle connection to `target`, if one is kept.
    pub fn checkout(&self, target: u64) -> Option<Box<dyn Stream>> {
        self.idle.lock().ok()?.get_mut(&target)?.pop()
    }

    /// Keeps `conn` (it answered its last call) for the next write to
    /// `target`.
    pub fn checkin(&self, target: u64, conn: Option<Box<dyn Stream>>) {
        let (Some(conn), Ok(mut idle)) = (conn, self.idle.lock()) else {
            return;
        };
        let kept = idle.entry(target).or_default();
        if kept.len() < IDLE_PER_NODE {
            kept.push(conn);
        }
    }

    /// One request and its answer on `conn` (dialled first if needed).
    pub async fn call(
        &self,
        conn: &mut Option<Box<dyn Stream>>,
        target: u64,
        addr: &str,
        rpc: &Rpc,
    ) -> std::io::Result<RpcReply> {
        let work = async {
            if conn.is_none() {
                *conn = Some(self.connect(target, addr).await?);
            }
            let s = conn
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no connection"))?;
            write_frame(&mut **s, rpc).await?;
            read_frame::<RpcReply>(&mut **s).await
        };
        match tokio::time::timeout(RPC_TIMEOUT, work).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                *conn = None;
                Err(e)
            }
            Err(_) => {
                *conn = None;
                Err(std::io::Error::other("control RPC timed out"))
            }
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Dialer {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            dialer: self.clone(),
            target,
            addr: node.addr.clone(),
            conn: None,
        }
    }
}

/// Raft's client for one peer.
pub struct PeerClient {
    dialer: Dialer,
    target: u64,
    addr: String,
    conn: Option<Box<dyn Stream>>,
}

fn unreachable<E: std::error::Error>(e: std::io::Error) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl PeerClient {
    async fn call(&mut self, rpc: &Rpc) -> std::io::Result<RpcReply> {
        let (target, addr) = (self.target, self.addr.clone());
        self.dialer.call(&mut self.conn, target, &addr, rpc).await
    }
}

/// A peer's answer as Raft takes it: its own error is the remote's, and
/// an answer of another kind (`None`) is a network error. (openraft fixes
/// the error type.)
#[allow(clippy::result_large_err)]
fn answer<T, E: std::error::Error>(
    target: u64,
    reply: Option<Result<T, E>>,
) -> Result<T, RPCError<NodeId, BasicNode, E>> {
    match reply {
        Some(Ok(t)) => Ok(t),
        Some(Err(e)) => Err(RPCError::RemoteError(openraft::error::RemoteError::new(
            target, e,
        ))),
        None => Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other("unexpected control answer"),
        ))),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let reply = self.call(&Rpc::Append(rpc)).await.map_err(unreachable)?;
        answer(
            self.target,
            match reply {
                RpcReply::Append(r) => Some(r),
                _ => None,
            },
        )
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let reply = self.call(&Rpc::Snapshot(rpc)).await.map_err(unreachable)?;
        answer(
            self.target,
            match reply {
                RpcReply::Snapshot(r) => Some(r),
                _ => None,
            },
        )
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let reply = self.call(&Rpc::Vote(rpc)).await.map_err(unreachable)?;
        answer(
            self.target,
            match reply {
                RpcReply::Vote(r) => Some(r),
                _ => None,
            },
        )
    }
}
