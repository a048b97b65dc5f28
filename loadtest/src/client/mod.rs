//! A minimal MQTT 3.1.1/5.0 client on the shardmq-core codec, built for load:
//! one task per connection, frames coalesced into one write buffer (one
//! write per wake-up), TCP_NODELAY on. `Conn` owns the handshake and the
//! socket pump; `publisher` and `subscriber` own the message flows.
//! Every failure is a typed [`ClientError`] with a stable reason key.

pub mod publisher;
pub mod subscriber;
pub mod transport;

use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use shardmq_core::codec::{
    decode_packet, encode, Connect, DecodeError, Disconnect, EncodeError, Packet, PacketId,
    PacketType, Properties, Props, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};

pub use transport::{Tls, TlsSetupError, Transport};

/// Largest packet accepted from the broker (our payloads are small; this
/// bounds what a broken peer can make us buffer).
const PACKET_SIZE_MAX: u32 = 16 * 1024 * 1024;
/// Read buffer top-up: at least this much free space before each read.
const READ_CHUNK: usize = 64 * 1024;
/// Session Expiry Interval asked for by persistent (non-clean) v5 sessions.
const SESSION_EXPIRY_S: u32 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection refused")]
    Refused,
    #[error("TCP connect timed out")]
    ConnectTimeout,
    #[error("cannot resolve or reach {0}")]
    Unreachable(String),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("no CONNACK/SUBACK in time")]
    HandshakeTimeout,
    #[error("CONNACK refused the connection: {0:?}")]
    ConnAckRefused(ReasonCode),
    #[error("SUBACK refused the subscription: {0:?}")]
    SubAckRefused(ReasonCode),
    #[error("broker closed the connection")]
    Closed,
    #[error("broker sent DISCONNECT: {0:?}")]
    Disconnected(ReasonCode),
    #[error("broker sent a malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("unexpected {0:?} from the broker")]
    Unexpected(PacketType),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

impl ClientError {
    /// Stable key the report counts errors by.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Refused => "connect: refused".to_owned(),
            ClientError::ConnectTimeout => "connect: timeout".to_owned(),
            ClientError::Unreachable(_) => "connect: unreachable".to_owned(),
            ClientError::Tls(_) => "tls: handshake failed".to_owned(),
            ClientError::HandshakeTimeout => "mqtt: handshake timeout".to_owned(),
            ClientError::ConnAckRefused(r) => format!("connack: {r:?}"),
            ClientError::SubAckRefused(r) => format!("suback: {r:?}"),
            ClientError::Closed => "broker closed connection".to_owned(),
            ClientError::Disconnected(r) => format!("broker DISCONNECT: {r:?}"),
            ClientError::Decode(_) => "malformed packet from broker".to_owned(),
            ClientError::Encode(_) => "encode".to_owned(),
            ClientError::Unexpected(t) => format!("unexpected {t:?}"),
            ClientError::Io(e) => format!("io: {:?}", e.kind()),
        }
    }
}

fn io_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ClientError::Refused,
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => ClientError::Closed,
        _ => ClientError::Io(e),
    }
}

/// How to reach the broker; shared by every client of a run.
#[derive(Debug, Clone)]
pub struct Connector {
    pub addr: String,
    pub tls: Option<Tls>,
    pub version: ProtocolVersion,
    pub connect_timeout: Duration,
    pub keep_alive_s: u16,
    /// Receive Maximum announced in v5 CONNECT: QoS 1/2 messages the broker
    /// may have in flight to this client.
    pub receive_maximum: u16,
}

/// When [`Conn::pump`] should wake up if nothing else happens.
#[derive(Debug, Clone, Copy)]
pub enum Timer<'a> {
    /// tokio's timer (millisecond granularity): keep-alive, deadlines.
    Coarse(Instant),
    /// The pacer thread (sub-millisecond): the send schedule.
    Precise(&'a crate::pacer::Pacer, Instant),
}

impl Timer<'_> {
    pub fn at(&self) -> Instant {
        match self {
            Timer::Coarse(t) | Timer::Precise(_, t) => *t,
        }
    }
}

/// What woke [`Conn::pump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// New bytes in the read buffer.
    Read,
    /// Part of the write buffer went out.
    Wrote,
    /// The caller's deadline passed.
    Timer,
    /// The stop signal changed.
    Stop,
}

/// One MQTT connection after CONNACK.
#[derive(Debug)]
pub struct Conn {
    rd: ReadHalf<Transport>,
    wr: WriteHalf<Transport>,
    rbuf: BytesMut,
    /// Frames queued for the next write.
    pub wbuf: BytesMut,
    pub version: ProtocolVersion,
    /// The broker's Receive Maximum (v5; 65535 when absent).
    pub server_receive_max: u16,
    pub session_present: bool,
    keep_alive: Option<Duration>,
    last_write: Instant,
}

impl Connector {
    /// TCP (+TLS) connect, CONNECT, wait for CONNACK.
    pub async fn connect(&self, client_id: &str, clean_start: bool) -> Result<Conn, ClientError> {
        let tcp = match timeout(self.connect_timeout, TcpStream::connect(&self.addr)).await {
            Err(_) => return Err(ClientError::ConnectTimeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::Refused)
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Other || e.raw_os_error().is_none() => {
                return Err(ClientError::Unreachable(format!("{}: {e}", self.addr)))
            }
            Ok(Err(e)) => return Err(io_error(e)),
            Ok(Ok(s)) => s,
        };
        // Latency is the point of the harness: no Nagle; batching is ours.
        tcp.set_nodelay(true).map_err(ClientError::Io)?;
        let transport = match &self.tls {
            None => Transport::Tcp(tcp),
            Some(tls) => match timeout(self.connect_timeout, tls.handshake(tcp)).await {
                Err(_) => return Err(ClientError::HandshakeTimeout),
                Ok(r) => r.map_err(ClientError::Tls)?,
            },
        };
        let (rd, wr) = tokio::io::split(transport);
        let keep_alive =
            (self.keep_alive_s > 0).then(|| Duration::from_secs(self.keep_alive_s.into()));
        let mut conn = Conn {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            version: self.version,
            server_receive_max: u16::MAX,
            session_present: false,
            keep_alive,
            last_write: Instant::now(),
        };
        let mut properties = Properties::default();
        if self.version == ProtocolVersion::V5 {
            properties.receive_maximum = Some(self.receive_maximum.max(1));
            properties.maximum_packet_size = Some(PACKET_SIZE_MAX);
            if !clean_start {
                properties.session_expiry_interval = Some(SESSION_EXPIRY_S);
            }
        }
        let connect = Connect {
            protocol_version: self.version,
            clean_start,
            keep_alive: self.keep_alive_s,
            properties: properties.into(),
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
        };
        conn.queue(&Packet::Connect(Box::new(connect)))?;
        let ack = timeout(self.connect_timeout, async {
            conn.flush().await?;
            conn.next_packet().await
        })
        .await
        .map_err(|_| ClientError::HandshakeTimeout)??;
        match ack {
            Packet::ConnAck(ack) if !ack.reason.is_error() => {
                conn.session_present = ack.session_present;
                if let Some(rm) = ack.properties.receive_maximum {
                    conn.server_receive_max = rm;
                }
                Ok(conn)
            }
            Packet::ConnAck(ack) => Err(ClientError::ConnAckRefused(ack.reason)),
            Packet::Disconnect(d) => Err(ClientError::Disconnected(d.reason)),
            other => Err(ClientError::Unexpected(other.packet_type())),
        }
    }
}

impl Conn {
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        encode(packet, self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.wr
                .write_all_buf(&mut self.wbuf)
                .await
                .map_err(io_error)?;
            self.last_write = Instant::now();
        }
        self.wr.flush().await.map_err(io_error)
    }

    /// Decodes one packet already buffered, if whole.
    pub fn try_decode(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(decode_packet(
            &mut self.rbuf,
            self.version,
            PACKET_SIZE_MAX,
        )?)
    }

    /// Reads until one whole packet is buffered (handshakes only: does not
    /// write while waiting).
    pub async fn next_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = self.try_decode()? {
                return Ok(p);
            }
            self.rbuf.reserve(READ_CHUNK);
            if self.rd.read_buf(&mut self.rbuf).await.map_err(io_error)? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// SUBSCRIBE and wait for its SUBACK. PUBLISHes that overtake the SUBACK
    /// (retained messages) are returned so the caller can account for them.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        wait: Duration,
    ) -> Result<Vec<shardmq_core::codec::Publish>, ClientError> {
        let pid = PacketId::new(1).ok_or(ClientError::Unexpected(PacketType::Subscribe))?;
        let sub = Subscribe {
            packet_id: pid,
            properties: Props::default(),
            filters: vec![(
                ByteString::from(filter),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        };
        self.queue(&Packet::Subscribe(sub))?;
        let mut early = Vec::new();
        timeout(wait, async {
            self.flush().await?;
            loop {
                match self.next_packet().await? {
                    Packet::SubAck(ack) => {
                        return match ack.reasons.first() {
                            Some(r) if r.is_error() => Err(ClientError::SubAckRefused(*r)),
                            Some(_) => Ok(()),
                            None => Err(ClientError::Unexpected(PacketType::SubAck)),
                        };
                    }
                    Packet::Publish(p) => early.push(p),
                    Packet::Disconnect(d) => return Err(ClientError::Disconnected(d.reason)),
                    other => return Err(ClientError::Unexpected(other.packet_type())),
                }
            }
        })
        .await
        .map_err(|_| ClientError::HandshakeTimeout)??;
        Ok(early)
    }

    /// When the next PINGREQ is due if nothing else is written.
    pub fn ping_due(&self) -> Option<Instant> {
        self.keep_alive.map(|k| self.last_write + k / 2)
    }

    /// Queues a PINGREQ if the keep-alive half-period passed without a write
    /// [MQTT-3.1.2-23].
    pub fn ping_if_due(&mut self, now: Instant) -> Result<(), ClientError> {
        if self.ping_due().is_some_and(|due| now >= due) && self.wbuf.is_empty() {
            self.queue(&Packet::PingReq)?;
            // Counted as written now so a slow write cannot queue a second one.
            self.last_write = now;
        }
        Ok(())
    }

    /// Waits for the first of: readable bytes, write progress, `wake_at`,
    /// a change on `stop`. One read or one write per call: everything the
    /// caller queued since the last call goes out in one write.
    pub async fn pump(
        &mut self,
        wake_at: Option<Timer<'_>>,
        stop: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Wake, ClientError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let Conn {
            rd, wr, rbuf, wbuf, ..
        } = self;
        let writing = !wbuf.is_empty();
        let stopped = async {
            match stop {
                Some(rx) => {
                    let _ = rx.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let timer = async {
            match wake_at {
                Some(Timer::Coarse(t)) => sleep_until(t).await,
                Some(Timer::Precise(pacer, t)) => pacer.sleep_until(t.into_std()).await,
                None => std::future::pending::<()>().await,
            }
        };
        let wake = tokio::select! {
            biased;
            r = rd.read_buf(rbuf) => match r.map_err(io_error)? {
                0 => return Err(ClientError::Closed),
                _ => Wake::Read,
            },
            w = wr.write_buf(wbuf), if writing => match w.map_err(io_error)? {
                0 => return Err(ClientError::Closed),
                _ => Wake::Wrote,
            },
            () = timer => Wake::Timer,
            () = stopped => Wake::Stop,
        };
        if wake == Wake::Wrote {
            self.last_write = Instant::now();
            if self.wbuf.is_empty() {
                // TLS keeps records in the session until flushed; TCP: no-op.
                self.wr.flush().await.map_err(io_error)?;
            }
        }
        Ok(wake)
    }

    /// Polite goodbye: DISCONNECT (normal), flushed within `wait`.
    pub async fn disconnect(mut self, wait: Duration) {
        if self
            .queue(&Packet::Disconnect(Disconnect::new(
                ReasonCode::NORMAL_DISCONNECTION,
            )))
            .is_ok()
        {
            let _ = timeout(wait, async {
                let _ = self.flush().await;
                let _ = self.wr.shutdown().await;
            })
            .await;
        }
    }
}
