//! What the connection asks of the broker (`Event`) and the values those
//! events carry: the CONNECT to decide, a routed message's acknowledgement,
//! why a connection ended.

use super::*;

/// A CONNECT that passed the protocol checks and waits for the broker's
/// decision (authentication, session lookup and takeover).
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Empty when the client sent an empty id: the broker assigns one.
    pub client_id: ByteString,
    pub clean_start: bool,
    pub protocol_version: ProtocolVersion,
    pub username: Option<ByteString>,
    pub password: Option<bytes::Bytes>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<bytes::Bytes>,
    /// Session expiry after the broker's cap.
    pub session_expiry: Duration,
    /// The will's topic, for the broker's publish authorization.
    pub will_topic: Option<TopicName>,
    /// The CONNECT's user properties (v5): persistence's dynamic opt-in.
    pub user_properties: Vec<(ByteString, ByteString)>,
}

/// A will (§3.1.2.5) with what publishing it takes: the delay to wait
/// first, and its Message Expiry Interval, which starts only when the will
/// is published: it "is sent as the Publication Expiry Interval when the
/// Server publishes the Will Message" (v5 §3.1.3.2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWill {
    /// The message without an expiry (`publication` sets it). A will read
    /// from a session record of format 1 or 2 carries the deadline those
    /// wrote instead, and no `expiry`.
    pub message: SharedMessage,
    pub delay: Duration,
    /// The will's Message Expiry Interval, capped by
    /// `maxMessageExpirySeconds`; `None`: it does not expire.
    pub expiry: Option<Duration>,
}

impl PendingWill {
    /// The message to route when the will is published at `now`: its
    /// expiry counts from now [MQTT-3.3.2-5].
    pub fn publication(&self, now: Instant) -> SharedMessage {
        match self.expiry {
            Some(interval) => Arc::new(Message {
                expires_at: now.checked_add(interval),
                ..Message::clone(&self.message)
            }),
            None => self.message.clone(),
        }
    }
}

/// What the broker must act on. Each event names what the broker answers with.
#[derive(Debug)]
pub enum Event {
    /// Answer with [`Connection::accept`] or [`Connection::reject`].
    /// Boxed, as is a closed session's state: events are moved per
    /// message, and these rare large ones made every PUBLISH's event 360
    /// bytes to copy (136 now).
    Connect(Box<ConnectRequest>),
    /// Route the message (and store it if retained). For QoS 1/2 answer with
    /// [`Connection::publish_done`] once it is in every target queue.
    Publish {
        message: SharedMessage,
        ack: Option<PublishAck>,
    },
    /// Add the subscription to the index and, if `send_retained`, deliver the
    /// matching retained messages with `Delivery::from_retained` set.
    Subscribed {
        key: ByteString,
        subscription: Subscription,
        send_retained: bool,
        /// The SUBSCRIBE's user properties (v5): persistence's dynamic
        /// opt-in for the session's queue. Only on the packet's first
        /// `Subscribed` event; empty on the others.
        user_properties: Vec<(ByteString, ByteString)>,
    },
    /// Remove the subscription from the index.
    Unsubscribed { key: ByteString, filter: Filter },
    /// The client re-authenticates (AUTH 0x19): answer with
    /// [`Connection::reauthenticate_done`].
    ReAuthenticate {
        method: ByteString,
        data: Option<bytes::Bytes>,
    },
    /// The client's permissions refused a PUBLISH or a SUBSCRIBE filter; the
    /// client already has its answer (0x87, or in v3.1.1 a PUBACK and a drop
    /// [MQTT-3.3.5-2], SUBACK 0x80). Nothing to answer: it is for the
    /// operator's log. Raised only on the refusal path, so allowed
    /// publishes cost nothing more.
    Denied(Denied),
    /// The connection ended. `session` is the state to keep (session expiry >
    /// 0) or `None` if the session ends with the connection; `will` is to be
    /// published after its delay unless the session resumes first
    /// [MQTT-3.1.3-9].
    Closed {
        reason: CloseReason,
        session: Option<Box<SessionState>>,
        will: Option<PendingWill>,
    },
}

/// What [`Event::Denied`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Publish(TopicName),
    /// The filter as the client sent it.
    Subscribe(ByteString),
}

/// An incoming QoS 1/2 publish awaiting the broker's routing result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    pub packet_id: PacketId,
    pub qos: QoS,
}

/// Why a connection ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT (reason as sent).
    ClientDisconnect(ReasonCode),
    /// The network connection was lost or closed without DISCONNECT.
    ConnectionLost,
    /// The broker closed it with this reason (sent in DISCONNECT or CONNACK
    /// where the protocol version allows).
    Server(ReasonCode),
    /// The client broke a protocol rule (the reason sent is the
    /// violation's `reason_code`).
    Violation(Violation),
}
