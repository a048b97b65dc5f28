//! The null broker: a forwarder that speaks just enough MQTT for the
//! harness (QoS 0 and 1) and does none of a broker's work. Every PUBLISH
//! goes to every subscriber: no topic matching, no sessions, no queues, no
//! limits, no authentication; one thread (tokio, epoll), one task per
//! connection. A reference beside the brokers in `compare`, not a floor: it
//! shows what the harness and the kernel cost on a conventional event loop,
//! so a latency tail it has too is not a broker's. It serves fan-in,
//! fan-out and p2p with one pair; with more pairs, shared groups or
//! persistent sessions it delivers what a broker would not, and the
//! harness reports that as unexpected, duplicated or lost messages. It
//! ignores Receive Maximum. Binds loopback only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::BytesMut;
use shardmq_core::codec::{
    encode, ConnAck, DecodeError, Decoder, EncodeError, Packet, PacketId, Props, ProtocolVersion,
    PubResponse, Publish, QoS, ReasonCode, SubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

/// Why a connection to the null broker ended early.
#[derive(Debug, thiserror::Error)]
pub enum NullBrokerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// QoS 2, UNSUBSCRIBE, AUTH: the scenarios it serves do not use them,
    /// and a half-answer would pass where a broker would fail.
    #[error("{0} is not supported by the null broker")]
    Unsupported(&'static str),
}

/// Frames larger than this close the connection (the harness sends small
/// ones).
const MAX_PACKET: u32 = 1 << 20;

/// A connected client: its protocol, its socket's write half (one writer at
/// a time, so frames never interleave) and, once it subscribed, the QoS it
/// gets.
struct Peer {
    version: ProtocolVersion,
    out: tokio::sync::Mutex<OwnedWriteHalf>,
    granted: Cell<Option<QoS>>,
    next_id: Cell<u16>,
}

type Subscribers = Rc<RefCell<Vec<Rc<Peer>>>>;

/// Serves on `listener` until the process ends, on the calling thread.
pub fn serve(listener: std::net::TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::from_std(listener)?;
        let subscribers: Subscribers = Rc::default();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of descriptors, or a connection reset before it was
                // taken: the others carry on, as in a broker.
                Err(e) => {
                    eprintln!("null broker: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let subscribers = subscribers.clone();
            tokio::task::spawn_local(async move {
                // A client that breaks the protocol is dropped, as a broker
                // would; the harness reports what it lost.
                if let Err(e) = connection(stream, &subscribers).await {
                    eprintln!("null broker: {e}");
                }
            });
        }
    })
}

async fn connection(stream: TcpStream, subscribers: &Subscribers) -> Result<(), NullBrokerError> {
    stream.set_nodelay(true)?;
    let (mut rd, wr) = stream.into_split();
    let mut wr = Some(wr);
    let mut peer: Option<Rc<Peer>> = None;
    let mut decoder = Decoder::new(MAX_PACKET);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let result = async {
        loop {
            while let Some(packet) = decoder.decode(&mut buf)? {
                match (&peer, packet) {
                    (None, Packet::Connect(c)) => {
                        let Some(out) = wr.take() else {
                            return Err(NullBrokerError::Unsupported("a second CONNECT"));
                        };
                        let p = Rc::new(Peer {
                            version: c.protocol_version,
                            out: tokio::sync::Mutex::new(out),
                            granted: Cell::new(None),
                            next_id: Cell::new(0),
                        });
                        send(
                            &p,
                            &Packet::ConnAck(ConnAck {
                                session_present: false,
                                reason: ReasonCode::Success,
                                properties: Props::default(),
                            }),
                        )
                        .await?;
                        peer = Some(p);
                    }
                    (None, _) => {
                        return Err(NullBrokerError::Unsupported("a packet before CONNECT"))
                    }
                    (Some(p), packet) => {
                        if !handle(p, packet, subscribers).await? {
                            return Ok(());
                        }
                    }
                }
            }
            if rd.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }
    .await;
    if let Some(p) = &peer {
        subscribers.borrow_mut().retain(|s| !Rc::ptr_eq(s, p));
    }
    result
}

/// One packet from a connected client; false when it disconnected.
async fn handle(
    peer: &Rc<Peer>,
    packet: Packet,
    subscribers: &Subscribers,
) -> Result<bool, NullBrokerError> {
    match packet {
        Packet::Publish(p) => {
            if p.qos == QoS::ExactlyOnce {
                return Err(NullBrokerError::Unsupported("QoS 2"));
            }
            if let Some(id) = p.packet_id {
                send(
                    peer,
                    &Packet::PubAck(PubResponse::new(id, ReasonCode::Success)),
                )
                .await?;
            }
            // Cloned out of the borrow: a write may wait for its socket.
            let targets: Vec<Rc<Peer>> = subscribers.borrow().clone();
            for sub in targets {
                // A subscriber that is gone is dropped; the publisher and
                // the other subscribers carry on (an independent review's
                // finding: the error used to end the publisher's connection).
                if let Err(e) = forward(&sub, &p).await {
                    eprintln!("null broker: dropping a subscriber: {e}");
                    subscribers.borrow_mut().retain(|s| !Rc::ptr_eq(s, &sub));
                }
            }
        }
        Packet::Subscribe(s) => {
            let mut reasons = Vec::with_capacity(s.filters.len());
            for (_, options) in &s.filters {
                let (qos, reason) = match options.qos {
                    QoS::AtMostOnce => (QoS::AtMostOnce, ReasonCode::Success),
                    _ => (QoS::AtLeastOnce, ReasonCode::GrantedQoS1),
                };
                // Every filter means everything here; the highest QoS wins.
                if peer.granted.get() != Some(QoS::AtLeastOnce) {
                    peer.granted.set(Some(qos));
                }
                reasons.push(reason);
            }
            if !subscribers.borrow().iter().any(|x| Rc::ptr_eq(x, peer)) {
                subscribers.borrow_mut().push(peer.clone());
            }
            send(
                peer,
                &Packet::SubAck(SubAck {
                    packet_id: s.packet_id,
                    properties: Props::default(),
                    reasons,
                }),
            )
            .await?;
        }
        // A subscriber's acknowledgement: nothing is kept to release.
        Packet::PubAck(_) => {}
        Packet::PingReq => send(peer, &Packet::PingResp).await?,
        Packet::Disconnect(_) => return Ok(false),
        Packet::Connect(_) => return Err(NullBrokerError::Unsupported("a second CONNECT")),
        _ => return Err(NullBrokerError::Unsupported("this packet type")),
    }
    Ok(true)
}

/// `p` to one subscriber, at the lower of the two QoS, with the
/// subscriber's own packet id.
async fn forward(sub: &Peer, p: &Publish) -> Result<(), NullBrokerError> {
    let Some(granted) = sub.granted.get() else {
        return Ok(());
    };
    let qos = if granted == QoS::AtMostOnce {
        QoS::AtMostOnce
    } else {
        p.qos
    };
    let packet_id = (qos != QoS::AtMostOnce).then(|| {
        let id = sub.next_id.get().checked_add(1).unwrap_or(1);
        sub.next_id.set(id);
        PacketId::new(id)
    });
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: p.topic.clone(),
        packet_id: packet_id.flatten(),
        properties: p.properties.clone(),
        payload: p.payload.clone(),
    });
    send(sub, &packet).await
}

async fn send(peer: &Peer, packet: &Packet) -> Result<(), NullBrokerError> {
    let mut bytes = BytesMut::new();
    encode(packet, peer.version, &mut bytes)?;
    peer.out.lock().await.write_all(&bytes).await?;
    Ok(())
}
