//! A link between two cluster nodes at run time (issue 17, docs/CLUSTER.md):
//! a TCP stream in mutual TLS (`shardmq_auth::node_tls`) that starts with a
//! `Hello` each way, then carries frames (`shardmq_core::cluster::frame`).
//! Every step has a deadline, so a stalled or hostile peer costs one link.
//! `runtime` keeps them up and feeds them to the shards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use shardmq_core::cluster::frame::{self, Frame, FrameError, LINK_VERSION};
use shardmq_core::cluster::{Incarnation, NodeId};

/// How long a peer may take to finish the handshake and its `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest frame a peer may send: a frame carries about 1 MiB of
/// payload, or one message of any size MQTT allows (256 MiB) with room for
/// its topic and properties. Peers are authenticated nodes.
pub const FRAME_MAX: usize = (256 << 20) + (1 << 20);
const READ_CHUNK: usize = 16 * 1024;
/// A `Hello` is 15 bytes of body.
const HELLO_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("node link: {0}")]
    Io(#[from] std::io::Error),
    #[error("node link: the peer took longer than {0:?}")]
    Timeout(Duration),
    #[error("node link: {0}")]
    Frame(#[from] FrameError),
    #[error("node link: the peer's first frame was not a Hello")]
    NoHello,
    #[error("node link: the peer speaks link version {0}, this node {LINK_VERSION}")]
    Version(u16),
    #[error("node link: the peer's certificate names no node")]
    NoName,
    #[error("node link: bad node name {0:?}")]
    BadName(String),
    #[error("node link: the peer closed the link")]
    Closed,
    #[error("node link: the peer broke the protocol: {0}")]
    Protocol(String),
}

/// Who is at the other end: its verified certificate's node name, and
/// what its `Hello` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub node: NodeId,
    pub incarnation: Incarnation,
}

/// An established link.
pub struct Link<S> {
    stream: S,
    peer: Peer,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
}

impl<S> std::fmt::Debug for Link<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("peer", &self.peer).finish()
    }
}

type ServerStream = futures_rustls::server::TlsStream<TcpStream>;
type ClientStream = futures_rustls::client::TlsStream<TcpStream>;

/// Accepts a link on `stream` (from the internal port's listener).
pub async fn accept(
    stream: TcpStream,
    tls: Arc<ServerConfig>,
    me: NodeId,
    incarnation: Incarnation,
) -> Result<Link<ServerStream>, LinkError> {
    // Batching is ours: a lone acknowledgement must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    deadline(async {
        let stream = futures_rustls::TlsAcceptor::from(tls)
            .accept(stream)
            .await?;
        let name =
            shardmq_auth::node_tls::peer_node_name(stream.get_ref().1).ok_or(LinkError::NoName)?;
        Link::start(stream, name, me, incarnation).await
    })
    .await
}

/// Dials node `name` at `addr`; its certificate must carry that name.
pub async fn dial(
    addr: SocketAddr,
    name: &str,
    tls: Arc<ClientConfig>,
    me: NodeId,
    incarnation: Incarnation,
) -> Result<Link<ClientStream>, LinkError> {
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|_| LinkError::BadName(name.to_owned()))?;
    deadline(async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(std::io::Error::from)?;
        let _ = tcp.set_nodelay(true);
        let stream = futures_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await?;
        Link::start(stream, name.to_owned(), me, incarnation).await
    })
    .await
}

/// Accepts a plaintext link (`encryptInternalTraffic: Disabled`): the peer
/// is who its `Hello` says, unverified.
pub async fn accept_plain(
    stream: TcpStream,
    me: NodeId,
    incarnation: Incarnation,
) -> Result<Link<TcpStream>, LinkError> {
    let _ = stream.set_nodelay(true);
    deadline(Link::start(stream, String::new(), me, incarnation)).await
}

/// Dials node `name` at `addr` in plaintext.
pub async fn dial_plain(
    addr: SocketAddr,
    name: &str,
    me: NodeId,
    incarnation: Incarnation,
) -> Result<Link<TcpStream>, LinkError> {
    deadline(async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(std::io::Error::from)?;
        let _ = tcp.set_nodelay(true);
        Link::start(tcp, name.to_owned(), me, incarnation).await
    })
    .await
}

async fn deadline<T>(
    work: impl std::future::Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    work.or(async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(LinkError::Timeout(HANDSHAKE_TIMEOUT))
    })
    .await
}

impl<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Link<S> {
    /// Both ends send their `Hello` at once, then read the other's.
    async fn start(
        stream: S,
        name: String,
        me: NodeId,
        incarnation: Incarnation,
    ) -> Result<Link<S>, LinkError> {
        let mut link = Link {
            stream,
            peer: Peer {
                name,
                node: NodeId(0),
                incarnation: Incarnation(0),
            },
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
        };
        link.send(&[Frame::Hello {
            version: LINK_VERSION,
            node: me,
            incarnation,
        }])
        .await?;
        match link.recv_hello().await? {
            Frame::Hello {
                version,
                node,
                incarnation,
            } => {
                if version != LINK_VERSION {
                    return Err(LinkError::Version(version));
                }
                link.peer.node = node;
                link.peer.incarnation = incarnation;
                Ok(link)
            }
            _ => Err(LinkError::NoHello),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Sends `frames` in one write and flushes.
    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), LinkError> {
        self.wbuf.clear();
        let now = Instant::now();
        for f in frames {
            frame::encode(f, &mut self.wbuf, now)?;
        }
        write_out(&mut self.stream, &self.wbuf).await
    }

    /// The next frame from the peer.
    pub async fn recv(&mut self) -> Result<Frame, LinkError> {
        read_frame(&mut self.stream, &mut self.rbuf, FRAME_MAX, None).await
    }

    /// The peer's `Hello`: small, so an unauthenticated (plaintext) peer
    /// cannot make the node buffer a large frame before it says who it is.
    async fn recv_hello(&mut self) -> Result<Frame, LinkError> {
        read_frame(&mut self.stream, &mut self.rbuf, HELLO_MAX, None).await
    }

    /// The two directions apart, for a reader task and a writer task.
    pub fn split(self) -> (LinkReader<S>, LinkWriter<S>) {
        let (r, w) = futures_lite::io::split(self.stream);
        (
            LinkReader {
                stream: r,
                rbuf: self.rbuf,
            },
            LinkWriter {
                stream: w,
                wbuf: self.wbuf,
            },
        )
    }
}

/// The receiving half of a link.
pub struct LinkReader<S> {
    stream: futures_lite::io::ReadHalf<S>,
    rbuf: BytesMut,
}

/// The sending half of a link: frames are encoded into `buf`, then sent
/// with one write.
pub struct LinkWriter<S> {
    stream: futures_lite::io::WriteHalf<S>,
    wbuf: Vec<u8>,
}

impl<S> std::fmt::Debug for LinkReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReader").finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for LinkWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWriter").finish_non_exhaustive()
    }
}

impl<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> LinkReader<S> {
    /// The next frame; the link is dead when no byte came for `silence`
    /// (a large frame may take longer, as long as it keeps coming).
    pub async fn recv(&mut self, silence: Duration) -> Result<Frame, LinkError> {
        read_frame(&mut self.stream, &mut self.rbuf, FRAME_MAX, Some(silence)).await
    }
}

impl<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> LinkWriter<S> {
    /// The buffer the next write sends (cleared after each).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Writes and flushes what `buf` holds.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        let r = write_out(&mut self.stream, &self.wbuf).await;
        self.wbuf.clear();
        r
    }
}

async fn write_out(
    stream: &mut (impl futures_lite::AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), LinkError> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

async fn read_frame(
    stream: &mut (impl futures_lite::AsyncRead + Unpin),
    rbuf: &mut BytesMut,
    max: usize,
    silence: Option<Duration>,
) -> Result<Frame, LinkError> {
    loop {
        if let Some(f) = frame::decode(rbuf, max, Instant::now())? {
            return Ok(f);
        }
        let start = rbuf.len();
        rbuf.resize(start + READ_CHUNK, 0);
        let read = stream.read(&mut rbuf[start..]);
        let n = match silence {
            None => read.await?,
            Some(limit) => read
                .or(async {
                    glommio::timer::sleep(limit).await;
                    Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
                })
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::TimedOut => LinkError::Timeout(limit),
                    _ => LinkError::Io(e),
                })?,
        };
        rbuf.truncate(start + n);
        if n == 0 {
            return Err(LinkError::Closed);
        }
    }
}
