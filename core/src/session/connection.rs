//! The protocol state machine of one client connection (quinn-proto style):
//! packets and timeouts go in through `handle_*(now, ..)`, packets to send and
//! broker events come out through `poll_*()`. It never reads a clock and owns
//! no socket; the io crate decodes frames, feeds them here and writes what
//! `poll_transmit` encodes. Spec: MQTT 5.0 §3 and §4, MQTT 3.1.1 §3 and §4.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;

use crate::codec::{
    self, AckKind, ConnAck, Connect, DecodeError, Disconnect, Packet, PacketId, Properties,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, ShortAck, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::limits::ClientLimits;
use crate::topic::{Filter, TopicName};

use super::message::{expiry, forwardable, Message, SharedMessage};
use super::spill::SpillCtx;
use super::state::{
    Delivery, Enqueued, Entry, Inflight, InflightState, Queued, SessionState, Spilled, Subscription,
};
use super::{AllowAll, Permissions};

/// How long a new connection may take to send CONNECT before it is closed
/// (MQTT 5.0 §3.1.4: "a reasonable amount of time").
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Packets a client may pipeline behind CONNECT before the broker has
/// accepted it; more is a client that does not wait and is cut off.
const DEFERRED_PACKETS_MAX: usize = 64;

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
}

/// A will (§3.1.2.5) ready to publish, with the delay to wait first.
#[derive(Debug, Clone)]
pub struct PendingWill {
    pub message: SharedMessage,
    pub delay: Duration,
}

/// What the broker must act on. Each event names what the broker answers with.
#[derive(Debug)]
pub enum Event {
    /// Answer with [`Connection::accept`] or [`Connection::reject`].
    Connect(ConnectRequest),
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
        session: Option<SessionState>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    AwaitAccept,
    Connected,
    Closed,
}

/// What goes out, built into a packet at transmit time so a queued publish
/// holds only a refcount on the shared message.
// PERF: `Packet` is large because `Properties` is stored inline; boxing here
// would allocate per acknowledgement. Shrinking `Properties` is the real fix.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Outgoing {
    Packet(Packet),
    Publish {
        queued: Queued,
        packet_id: Option<PacketId>,
        dup: bool,
    },
    /// A resend of an in-flight message still in the disk buffer: read
    /// when it is written (`poll_transmit_with` has the buffer).
    Reread {
        spilled: Spilled,
        packet_id: PacketId,
    },
}

/// A topic alias for one outgoing PUBLISH (`Connection::outgoing_alias`).
#[derive(Debug, Clone, Copy)]
enum OutAlias {
    /// Sent before: the topic goes out empty.
    Known(u16),
    /// Set up by this PUBLISH: topic and alias both go out.
    New(u16),
    None,
}

/// Limits the client announced in CONNECT (v5 §3.1.2.11), spec defaults applied.
#[derive(Debug, Clone, Copy)]
struct ClientSide {
    receive_maximum: u16,
    packet_size_max: Option<u32>,
    topic_alias_max: u16,
}

impl Default for ClientSide {
    fn default() -> ClientSide {
        ClientSide {
            receive_maximum: u16::MAX,
            packet_size_max: None,
            topic_alias_max: 0,
        }
    }
}

/// One client connection's protocol state machine.
#[derive(Debug)]
pub struct Connection {
    phase: Phase,
    version: ProtocolVersion,
    limits: Arc<ClientLimits>,
    client: ClientSide,
    session: Option<SessionState>,
    /// The CONNECT being decided by the broker.
    pending_connect: Option<Box<Connect>>,
    deferred: VecDeque<Packet>,
    will: Option<(SharedMessage, Duration)>,
    /// Keep-alive in force (after Server Keep Alive); zero disables it.
    keep_alive: Duration,
    /// Deadline for the next packet from the client: CONNECT timeout first,
    /// then 1.5 x keep-alive after every packet [MQTT-3.1.2-24].
    deadline: Option<Instant>,
    /// Client-to-broker topic aliases (v5 §3.3.2.3.4), per connection.
    aliases_in: HashMap<u16, TopicName>,
    /// Broker-to-client aliases assigned so far; never more than the client's
    /// Topic Alias Maximum [MQTT-3.3.2-9].
    aliases_out: HashMap<TopicName, u16>,
    /// `accept` resumed the session it was given (CONNACK Session Present).
    session_present: bool,
    /// Incoming QoS 1 publishes handed to the broker and not yet acknowledged;
    /// with the QoS 2 ids this is what Receive Maximum bounds [MQTT-3.3.4-7].
    incoming_qos1_pending: u32,
    transmit: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    close_reason: Option<CloseReason>,
    closed_event_pending: bool,
    permissions: Box<dyn Permissions>,
    /// Set by `closed_event` when the session ends with the connection.
    ended_session: Option<SessionState>,
    /// Authentication Method of CONNECT (v5 §4.12), if any.
    auth_method: Option<ByteString>,
    /// When the client's credential (certificate, token, webhook grant)
    /// expires: the connection is closed then.
    credential_expiry: Option<Instant>,
}

impl Connection {
    /// A new network connection, waiting for CONNECT.
    pub fn new(now: Instant, limits: Arc<ClientLimits>) -> Connection {
        Connection {
            phase: Phase::AwaitConnect,
            version: ProtocolVersion::V5,
            limits,
            client: ClientSide::default(),
            session: None,
            pending_connect: None,
            deferred: VecDeque::new(),
            will: None,
            keep_alive: Duration::ZERO,
            deadline: now.checked_add(CONNECT_TIMEOUT),
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            session_present: false,
            incoming_qos1_pending: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            close_reason: None,
            closed_event_pending: false,
            permissions: Box::new(AllowAll),
            ended_session: None,
            auth_method: None,
            credential_expiry: None,
        }
    }

    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn client_id(&self) -> Option<&ByteString> {
        self.session.as_ref().map(|s| &s.client_id)
    }

    /// Whether `accept` resumed the session it was given (Session Present
    /// in CONNACK); `false` before `accept` and for a clean start.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    pub fn session(&self) -> Option<&SessionState> {
        self.session.as_ref()
    }

    /// For the broker's buffer bookkeeping (`SessionState::spill_excess`).
    pub fn session_mut(&mut self) -> Option<&mut SessionState> {
        self.session.as_mut()
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// True once the connection is over: flush `poll_transmit` and close the socket.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    // ---- inputs -------------------------------------------------------

    /// A decoded packet from the client.
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitConnect => match packet {
                Packet::Connect(connect) => self.handle_connect(now, connect),
                // [MQTT-3.1.0-1] the first packet must be CONNECT.
                _ => self.close_silently(CloseReason::Server(ReasonCode::ProtocolError)),
            },
            Phase::AwaitAccept => {
                if self.deferred.len() >= DEFERRED_PACKETS_MAX {
                    self.close_silently(CloseReason::Server(ReasonCode::ReceiveMaximumExceeded));
                } else {
                    self.deferred.push_back(packet);
                }
            }
            Phase::Connected => {
                self.touch(now);
                self.handle_connected(now, packet);
            }
        }
    }

    /// `handle_packet` for an acknowledgement in its 4-byte form
    /// (`Decoder::decode_ack`), without building a `Packet`: a draining
    /// subscriber sends one per message.
    pub fn handle_short_ack(&mut self, now: Instant, ack: ShortAck) {
        if self.phase != Phase::Connected {
            return self.handle_packet(now, ack.to_packet());
        }
        self.touch(now);
        let id = ack.packet_id;
        match ack.kind {
            AckKind::PubAck => self.handle_puback(id),
            AckKind::PubRec => self.handle_pubrec(id, ReasonCode::Success),
            AckKind::PubRel => self.handle_pubrel(id),
            AckKind::PubComp => self.handle_pubcomp(id),
        }
    }

    /// The codec rejected the client's bytes. `version` is the decoder's
    /// version (known once CONNECT's protocol level was read).
    pub fn handle_decode_error(&mut self, error: &DecodeError, version: Option<ProtocolVersion>) {
        if self.phase == Phase::Closed {
            return;
        }
        let reason = error.reason_code();
        match self.phase {
            Phase::AwaitConnect => {
                // A CONNECT the codec refused: v5 answers with a CONNACK
                // reason (§3.2.2.2), v3.1.1 only for the return codes it has
                // [MQTT-3.1.2-2]; otherwise the connection just closes.
                match (version, error.v311_connack()) {
                    (Some(ProtocolVersion::V5), _) => {
                        self.version = ProtocolVersion::V5;
                        self.send_connack(false, reason, Properties::default());
                    }
                    (_, Some(code)) => {
                        self.version = ProtocolVersion::V311;
                        let reason = ReasonCode::from_v311_connack(code).unwrap_or(reason);
                        self.send_connack(false, reason, Properties::default());
                    }
                    _ => {}
                }
                self.close_silently(CloseReason::Server(reason));
            }
            _ => self.close_with(reason),
        }
    }

    /// The network connection closed or failed.
    pub fn handle_connection_lost(&mut self) {
        if self.phase != Phase::Closed {
            self.finish(CloseReason::ConnectionLost);
        }
    }

    /// Checks deadlines; call when `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Connected && self.credential_expiry.is_some_and(|at| now >= at) {
            // The credential ran out: the client is no longer authorized.
            return self.close_with(ReasonCode::NotAuthorized);
        }
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.phase {
            Phase::AwaitConnect => {
                self.close_silently(CloseReason::Server(ReasonCode::MaximumConnectTime))
            }
            // [MQTT-3.1.2-24] no packet within 1.5 x keep-alive.
            Phase::Connected => self.close_with(ReasonCode::KeepAliveTimeout),
            Phase::AwaitAccept | Phase::Closed => {}
        }
    }

    /// The broker's answer to [`Event::Connect`]: the session to continue
    /// (`existing`, ignored on clean start), an assigned client id if the
    /// client sent none, and the permissions compiled for this client.
    /// Returns the filters of the resumed session that `permissions` do not
    /// allow: they are removed before anything is indexed or sent, whoever
    /// resumes the session (permissions are the resuming client's).
    pub fn accept(
        &mut self,
        now: Instant,
        existing: Option<SessionState>,
        assigned_client_id: Option<ByteString>,
        permissions: Box<dyn Permissions>,
    ) -> Vec<ByteString> {
        let mut revoked = Vec::new();
        if self.phase != Phase::AwaitAccept {
            return revoked;
        }
        let Some(connect) = self.pending_connect.take() else {
            return revoked;
        };
        self.permissions = permissions;
        let expiry = self.session_expiry_of(&connect);
        let client_id = match (&assigned_client_id, connect.client_id.is_empty()) {
            (Some(id), true) => id.clone(),
            _ => connect.client_id.clone(),
        };
        let resumed = match existing {
            Some(mut state) if !connect.clean_start => {
                state.expiry_interval = expiry;
                state.client_id = client_id.clone();
                let permissions = &self.permissions;
                revoked = state.retain_subscriptions(|f| permissions.can_subscribe(f));
                Some(state)
            }
            _ => None,
        };
        let session_present = resumed.is_some();
        self.session_present = session_present;
        self.session = Some(resumed.unwrap_or_else(|| SessionState::new(client_id, expiry)));

        let mut props = Properties::default();
        if self.version == ProtocolVersion::V5 {
            if connect.client_id.is_empty() {
                props.assigned_client_identifier = assigned_client_id;
            }
            let asked = connect.properties.session_expiry_interval.unwrap_or(0);
            if u64::from(asked) != expiry.as_secs() {
                props.session_expiry_interval = u32::try_from(expiry.as_secs()).ok();
            }
            props.receive_maximum = Some(self.limits.receive_maximum_max.get());
            props.maximum_packet_size = Some(self.limits.packet_size_max.get());
            props.topic_alias_maximum = Some(self.limits.topic_alias_max);
            if u16::try_from(self.keep_alive.as_secs()).ok() != Some(connect.keep_alive) {
                props.server_keep_alive = u16::try_from(self.keep_alive.as_secs()).ok();
            }
            // v5 §3.2.2.3.17: CONNACK carries the Authentication Method of CONNECT.
            props.authentication_method = self.auth_method.clone();
            props.retain_available = Some(1);
            props.wildcard_subscription_available = Some(1);
            props.subscription_identifier_available = Some(1);
            props.shared_subscription_available = Some(1);
        }
        self.send_connack(session_present, ReasonCode::Success, props);
        self.phase = Phase::Connected;
        self.touch(now);
        if session_present {
            self.resend_inflight();
        }
        while let Some(packet) = self.deferred.pop_front() {
            if self.phase != Phase::Connected {
                break;
            }
            self.handle_connected(now, packet);
        }
        revoked
    }

    /// The broker refuses the CONNECT (authentication, authorization, busy).
    pub fn reject(&mut self, reason: ReasonCode) {
        if self.phase != Phase::AwaitAccept {
            return;
        }
        self.pending_connect = None;
        self.will = None;
        self.send_connack(false, reason, Properties::default());
        self.close_silently(CloseReason::Server(reason));
    }

    /// The broker routed an incoming QoS 1/2 publish (`reason` Success,
    /// NoMatchingSubscribers, QuotaExceeded, NotAuthorized...).
    pub fn publish_done(&mut self, ack: PublishAck, reason: ReasonCode) {
        if self.phase != Phase::Connected {
            return;
        }
        let reason = self.v311_success_or(reason);
        match ack.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.incoming_qos1_pending = self.incoming_qos1_pending.saturating_sub(1);
                self.send(Packet::PubAck(PubResponse::new(ack.packet_id, reason)));
            }
            QoS::ExactlyOnce => {
                // A failed PUBREC ends the exchange (v5 §4.3.3): the id is free.
                if reason.is_error() {
                    if let Some(s) = self.session.as_mut() {
                        s.incoming_qos2.remove(&ack.packet_id);
                    }
                }
                self.send(Packet::PubRec(PubResponse::new(ack.packet_id, reason)));
            }
        }
    }

    /// Offers a routed message to this connection's session.
    pub fn deliver(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
    ) -> Enqueued {
        self.deliver_with(now, message, delivery, None)
    }

    /// `deliver`, spilling to the shard's disk buffer past its memory budget
    /// (`SessionState::enqueue_with`).
    pub fn deliver_with(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
        spill: Option<&mut SpillCtx<'_>>,
    ) -> Enqueued {
        let online = self.phase == Phase::Connected;
        let Some(session) = self.session.as_mut() else {
            return Enqueued::Discarded;
        };
        session.enqueue_with(now, message, delivery, online, &self.limits.queue, spill)
    }

    /// The session this connection ended, if it did not outlive it (session
    /// expiry 0): the broker releases what its queue holds in the disk buffer.
    pub fn take_ended_session(&mut self) -> Option<SessionState> {
        self.ended_session.take()
    }

    /// Another connection took this session over [MQTT-3.1.4-3]: close with
    /// Session Taken Over and hand the session state out in `Event::Closed`.
    pub fn take_over(&mut self) {
        if self.phase == Phase::Connected {
            self.close_with(ReasonCode::SessionTakenOver);
        } else if self.phase != Phase::Closed {
            self.close_silently(CloseReason::Server(ReasonCode::SessionTakenOver));
        }
    }

    /// The broker is shutting down: DISCONNECT 0x8B (v5) and close.
    /// The broker closes the connection with `reason` (live
    /// reconfiguration): DISCONNECT to a connected v5 client, a silent
    /// close before CONNECT was decided.
    pub fn disconnect(&mut self, reason: ReasonCode) {
        if self.phase == Phase::Connected {
            self.close_with(reason);
        } else if self.phase != Phase::Closed {
            self.close_silently(CloseReason::Server(reason));
        }
    }

    /// New permissions for a connected client (its authorization policy
    /// changed). Returns the session's subscriptions they refuse, removed
    /// from the session (the broker takes them out of the index).
    pub fn replace_permissions(&mut self, permissions: Box<dyn Permissions>) -> Vec<ByteString> {
        self.permissions = permissions;
        let permissions = &self.permissions;
        match self.session.as_mut() {
            Some(state) => state.retain_subscriptions(|f| permissions.can_subscribe(f)),
            None => Vec::new(),
        }
    }

    pub fn shut_down(&mut self) {
        if self.phase == Phase::Connected {
            self.close_with(ReasonCode::ServerShuttingDown);
        } else if self.phase != Phase::Closed {
            self.close_silently(CloseReason::Server(ReasonCode::ServerShuttingDown));
        }
    }

    // ---- outputs ------------------------------------------------------

    /// Whether `poll_event` has something: the io layer skips its event
    /// handling for the packets that raise none (acknowledgements).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty() || self.closed_event_pending
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        match self.events.pop_front() {
            Some(e) => Some(e),
            None if self.closed_event_pending => Some(self.closed_event()),
            None => None,
        }
    }

    /// The next deadline to call `handle_timeout` at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnect => self.deadline,
            Phase::Connected => match (self.deadline, self.credential_expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Phase::AwaitAccept | Phase::Closed => None,
        }
    }

    /// Sets when the client's credential expires (`None`: never). Called
    /// after `accept` and after a successful re-authentication.
    pub fn set_credential_expiry(&mut self, at: Option<Instant>) {
        self.credential_expiry = at;
    }

    /// The broker's answer to [`Event::ReAuthenticate`]: `Ok` sends AUTH
    /// Success (v5 §4.12.1) and sets the new credential expiry; `Err` closes
    /// with that reason.
    pub fn reauthenticate_done(&mut self, result: Result<Option<Instant>, ReasonCode>) {
        if self.phase != Phase::Connected {
            return;
        }
        match result {
            Ok(expiry) => {
                self.credential_expiry = expiry;
                let properties = Properties {
                    authentication_method: self.auth_method.clone(),
                    ..Properties::default()
                };
                self.send(Packet::Auth(codec::Auth {
                    reason: ReasonCode::Success,
                    properties,
                }));
            }
            Err(reason) => self.close_with(reason),
        }
    }

    /// The next packet to send, built from the shared message for publishes.
    /// For tests and tools that want packets: the io layer sends through
    /// `poll_transmit`, which also applies the client's Maximum Packet Size.
    pub fn poll_packet(&mut self, now: Instant) -> Option<Packet> {
        self.poll_packet_with(now, None)
    }

    /// `poll_packet`, reading spilled messages back from the disk buffer.
    pub fn poll_packet_with(
        &mut self,
        now: Instant,
        mut spill: Option<&mut SpillCtx<'_>>,
    ) -> Option<Packet> {
        self.release_retired(spill.as_deref_mut());
        let out = self.next_outgoing(now, spill)?;
        Some(match out {
            Outgoing::Packet(p) => p,
            // `next_outgoing` resolves rereads.
            Outgoing::Reread { .. } => return None,
            Outgoing::Publish {
                queued,
                packet_id,
                dup,
            } => Packet::Publish(self.build_publish(now, queued, packet_id, dup)),
        })
    }

    /// Control packets (acknowledgements, SUBACK...) waiting to be sent. The
    /// io layer stops reading a client whose backlog grows: a client that
    /// sends without reading must not grow the broker's memory.
    pub fn transmit_backlog(&self) -> usize {
        self.transmit.len()
    }

    /// Whether `poll_packet` has something to send now.
    pub fn wants_transmit(&self) -> bool {
        if !self.transmit.is_empty() {
            return true;
        }
        if self.phase != Phase::Connected {
            return false;
        }
        self.session
            .as_ref()
            .is_some_and(|s| match s.queue.front() {
                Some(q) => q.qos() == QoS::AtMostOnce || s.inflight.len() < self.window_for(q),
                None => false,
            })
    }

    /// Encodes pending packets into `buf` until it holds `bytes_max` (one
    /// write per wake-up, bounded). A publish larger than the client's
    /// Maximum Packet Size is discarded as if sent [MQTT-3.1.2-25]. Returns
    /// the number of packets written.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut BytesMut, bytes_max: usize) -> usize {
        self.poll_transmit_with(now, buf, bytes_max, None)
    }

    /// `poll_transmit`, reading spilled messages back from the disk buffer.
    pub fn poll_transmit_with(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        bytes_max: usize,
        mut spill: Option<&mut SpillCtx<'_>>,
    ) -> usize {
        self.release_retired(spill.as_deref_mut());
        let mut written = 0;
        while buf.len() < bytes_max {
            let Some(out) = self.next_outgoing(now, spill.as_deref_mut()) else {
                break;
            };
            let sent = match out {
                Outgoing::Packet(packet) => self.write_packet(&packet, buf),
                Outgoing::Reread { .. } => false,
                Outgoing::Publish {
                    queued,
                    packet_id,
                    dup,
                } => self.write_forward(now, &queued, packet_id, dup, buf),
            };
            written += usize::from(sent);
        }
        written
    }

    // ---- CONNECT ------------------------------------------------------

    fn handle_connect(&mut self, now: Instant, connect: Box<Connect>) {
        self.version = connect.protocol_version;
        let v5 = self.version == ProtocolVersion::V5;
        // [MQTT-3.1.3-8] v3.1.1: an empty client id requires clean session.
        if connect.client_id.is_empty() && !connect.clean_start && !v5 {
            self.send_connack(
                false,
                ReasonCode::ClientIdentifierNotValid,
                Properties::default(),
            );
            self.close_silently(CloseReason::Server(ReasonCode::ClientIdentifierNotValid));
            return;
        }
        // Enhanced authentication (§4.12): the broker decides on the method
        // and data in `Event::Connect`; the method is kept for CONNACK and
        // re-authentication.
        self.auth_method = connect.properties.authentication_method.clone();
        let p = &connect.properties;
        self.client = ClientSide {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            packet_size_max: p.maximum_packet_size,
            topic_alias_max: p.topic_alias_maximum.unwrap_or(0),
        };
        // Request Problem Information 0 forbids Reason String / User
        // Property outside PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29];
        // the broker never sends those, so both settings are honoured.
        // Keep-alive above the broker's maximum is lowered via Server Keep
        // Alive (v5 §3.2.2.3.14); v3.1.1 has no way to tell the client, so
        // its own value is enforced.
        let asked = connect.keep_alive;
        let max = self.limits.keep_alive_max.get();
        let keep_alive = if v5 && asked > max { max } else { asked };
        self.keep_alive = Duration::from_secs(u64::from(keep_alive));

        if let Some(will) = &connect.will {
            let topic = match TopicName::new(will.topic.clone()) {
                Ok(t) => t,
                Err(e) => {
                    let reason = e.reason_code();
                    self.send_connack(false, reason, Properties::default());
                    self.close_silently(CloseReason::Server(reason));
                    return;
                }
            };
            let props = &will.properties;
            let message = Message {
                topic,
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
                properties: forwardable(props.clone()),
                expires_at: expiry(
                    now,
                    props.message_expiry_interval,
                    self.limits.message_expiry_max,
                ),
                origin: connect.client_id.clone(),
            };
            let delay = Duration::from_secs(u64::from(props.will_delay_interval.unwrap_or(0)));
            self.will = Some((Arc::new(message), delay));
        }
        let request = ConnectRequest {
            client_id: connect.client_id.clone(),
            clean_start: connect.clean_start,
            protocol_version: connect.protocol_version,
            username: connect.username.clone(),
            password: connect.password.clone(),
            authentication_method: p.authentication_method.clone(),
            authentication_data: p.authentication_data.clone(),
            session_expiry: self.session_expiry_of(&connect),
            will_topic: self.will.as_ref().map(|(m, _)| m.topic.clone()),
        };
        self.pending_connect = Some(connect);
        self.phase = Phase::AwaitAccept;
        self.deadline = None;
        self.events.push_back(Event::Connect(request));
    }

    /// Session Expiry Interval in force: v5 asks for one (capped by
    /// `maxSessionExpirySeconds`); v3.1.1 clean session ends with the
    /// connection, a persistent one lasts as long as the broker allows.
    fn session_expiry_of(&self, connect: &Connect) -> Duration {
        let max = self.limits.session_expiry_max;
        match connect.protocol_version {
            ProtocolVersion::V5 => {
                let asked = connect.properties.session_expiry_interval.unwrap_or(0);
                Duration::from_secs(u64::from(asked)).min(max)
            }
            ProtocolVersion::V311 if connect.clean_start => Duration::ZERO,
            ProtocolVersion::V311 => max,
        }
    }

    // ---- connected ----------------------------------------------------

    fn handle_connected(&mut self, now: Instant, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.handle_publish(now, p),
            Packet::PubAck(r) => self.handle_puback(r.packet_id),
            Packet::PubRec(r) => self.handle_pubrec(r.packet_id, r.reason),
            Packet::PubRel(r) => self.handle_pubrel(r.packet_id),
            Packet::PubComp(r) => self.handle_pubcomp(r.packet_id),
            Packet::Subscribe(s) => self.handle_subscribe(s),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(u),
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(d),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
            Packet::Connect(_) => self.close_with(ReasonCode::ProtocolError),
            Packet::Auth(a) => self.handle_auth(a),
            // Packets only a server sends.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.close_with(ReasonCode::ProtocolError)
            }
        }
    }

    /// Re-authentication (v5 §4.12.1): AUTH 0x19 with the method of CONNECT.
    /// Multi-step methods are not offered, so Continue Authentication from the
    /// client is a protocol error, as is AUTH without a method in CONNECT
    /// [MQTT-4.12.0-7] or with another method [MQTT-4.12.1-1].
    fn handle_auth(&mut self, auth: codec::Auth) {
        let same_method =
            self.auth_method.is_some() && auth.properties.authentication_method == self.auth_method;
        if auth.reason != ReasonCode::ReAuthenticate || !same_method {
            return self.close_with(ReasonCode::ProtocolError);
        }
        self.events.push_back(Event::ReAuthenticate {
            method: auth.properties.authentication_method.unwrap_or_default(),
            data: auth.properties.authentication_data,
        });
    }

    fn handle_publish(&mut self, now: Instant, mut publish: Publish) {
        let topic = match self.resolve_topic(&mut publish) {
            Ok(t) => t,
            Err(reason) => return self.close_with(reason),
        };
        // [MQTT-3.3.2-14] Response Topic must be a topic name.
        if let Some(rt) = &publish.properties.response_topic {
            if TopicName::new(rt.clone()).is_err() {
                return self.close_with(ReasonCode::ProtocolError);
            }
        }
        // v5 §3.3.2.3.2: the receiver may check a payload declared UTF-8.
        if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            return self.refuse_publish(&publish, ReasonCode::PayloadFormatInvalid);
        }
        let allowed = self.permissions.can_publish(&topic);
        let packet_id = publish.packet_id;
        match (publish.qos, packet_id) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Some(_)) => {
                if !self.incoming_room() {
                    return self.close_with(ReasonCode::ReceiveMaximumExceeded);
                }
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let Some(session) = self.session.as_ref() else {
                    return;
                };
                if session.incoming_qos2.contains(&id) {
                    // [MQTT-4.3.3-10] a duplicate of a PUBLISH not yet
                    // released: acknowledge again, do not route again.
                    return self.send(Packet::PubRec(PubResponse::new(id, ReasonCode::Success)));
                }
                if !self.incoming_room() {
                    return self.close_with(ReasonCode::ReceiveMaximumExceeded);
                }
            }
            // INVARIANT: the codec guarantees a packet id iff QoS > 0.
            (_, None) => return self.close_with(ReasonCode::MalformedPacket),
        }
        if !allowed {
            // v5: the reason code says so; v3.1.1 has none, and the spec lets
            // the server acknowledge and drop [MQTT-3.3.5-2].
            self.events.push_back(Event::Denied(Denied::Publish(topic)));
            return self.refuse_publish(&publish, ReasonCode::NotAuthorized);
        }
        let origin = self
            .session
            .as_ref()
            .map(|s| s.client_id.clone())
            .unwrap_or_default();
        let qos = publish.qos;
        let message = Arc::new(Message::from_publish(
            now,
            topic,
            publish,
            self.limits.message_expiry_max,
            origin,
        ));
        let ack = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                self.incoming_qos1_pending += 1;
                Some(PublishAck { packet_id: id, qos })
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if let Some(s) = self.session.as_mut() {
                    s.incoming_qos2.insert(id);
                }
                Some(PublishAck { packet_id: id, qos })
            }
            _ => None,
        };
        self.events.push_back(Event::Publish { message, ack });
    }

    /// Acknowledges a publish that is not routed, with `reason` in v5.
    fn refuse_publish(&mut self, publish: &Publish, reason: ReasonCode) {
        let reason = self.v311_success_or(reason);
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(PubResponse::new(id, reason))),
            (QoS::ExactlyOnce, Some(id)) => {
                // v3.1.1 success PUBREC must be followed by PUBREL/PUBCOMP.
                if !reason.is_error() {
                    if let Some(s) = self.session.as_mut() {
                        s.incoming_qos2.insert(id);
                    }
                }
                self.send(Packet::PubRec(PubResponse::new(id, reason)))
            }
            _ => {}
        }
    }

    /// Incoming QoS 1/2 publishes in progress stay within the Receive
    /// Maximum the broker announced [MQTT-3.3.4-7] (the client's rule; a
    /// client that breaks it gets 0x93).
    fn incoming_room(&self) -> bool {
        let qos2 = self.session.as_ref().map_or(0, |s| s.incoming_qos2.len());
        let in_progress = self.incoming_qos1_pending as usize + qos2;
        in_progress < usize::from(self.limits.receive_maximum_max.get())
    }

    /// Applies and records topic aliases (v5 §3.3.2.3.4).
    fn resolve_topic(&mut self, publish: &mut Publish) -> Result<TopicName, ReasonCode> {
        let alias = publish.properties.topic_alias.take();
        if let Some(alias) = alias {
            // [MQTT-3.3.2-8] 0 is invalid (the codec rejects it); above our
            // maximum is a Topic Alias Invalid [MQTT-3.2.2-17].
            if alias == 0 || alias > self.limits.topic_alias_max {
                return Err(ReasonCode::TopicAliasInvalid);
            }
        }
        if publish.topic.is_empty() {
            // An empty topic needs a known alias (v5) [MQTT-3.3.4-... §3.3.2.3.4].
            let known = alias.and_then(|a| self.aliases_in.get(&a));
            return known.cloned().ok_or(ReasonCode::ProtocolError);
        }
        let topic = TopicName::new(publish.topic.clone()).map_err(|e| e.reason_code())?;
        if let Some(alias) = alias {
            self.aliases_in.insert(alias, topic.clone());
        }
        Ok(topic)
    }

    fn handle_puback(&mut self, packet_id: PacketId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.inflight_position(packet_id) {
            Some(i) if session.inflight[i].state == InflightState::Qos1Sent => {
                session.remove_inflight(i);
            }
            // v5 §4.3.2 does not ask the server to act on an unknown PUBACK.
            _ => {}
        }
    }

    fn handle_pubrec(&mut self, packet_id: PacketId, reason: ReasonCode) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.inflight_position(packet_id) {
            Some(i) if session.inflight[i].state == InflightState::Qos2Sent => {
                if reason.is_error() {
                    // v5 §4.3.3: a PUBREC with an error ends the exchange.
                    session.remove_inflight(i);
                } else {
                    session.inflight[i].state = InflightState::Released;
                    let publish = session.inflight[i].publish.take();
                    session.retire(publish);
                    self.send(Packet::PubRel(PubResponse::new(
                        packet_id,
                        ReasonCode::Success,
                    )));
                }
            }
            Some(_) => {
                // A repeated PUBREC: send the PUBREL again [MQTT-4.3.3-?].
                self.send(Packet::PubRel(PubResponse::new(
                    packet_id,
                    ReasonCode::Success,
                )));
            }
            None => {
                let reason = self.v311_success_or(ReasonCode::PacketIdentifierNotFound);
                self.send(Packet::PubRel(PubResponse::new(packet_id, reason)));
            }
        }
    }

    fn handle_pubrel(&mut self, packet_id: PacketId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let known = session.incoming_qos2.remove(&packet_id);
        // [MQTT-4.3.3-11] release the id and answer PUBCOMP; an unknown id
        // gets Packet Identifier Not Found in v5.
        let reason = if known || self.version == ProtocolVersion::V311 {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send(Packet::PubComp(PubResponse::new(packet_id, reason)));
    }

    fn handle_pubcomp(&mut self, packet_id: PacketId) {
        self.complete_outgoing(packet_id);
    }

    /// Ends an outgoing exchange (PUBCOMP, or discarded as too large).
    fn complete_outgoing(&mut self, id: PacketId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if let Some(i) = session.inflight_position(id) {
            session.remove_inflight(i);
        }
    }

    fn handle_subscribe(&mut self, s: Subscribe) {
        // [MQTT-3.8.2-?] at most one Subscription Identifier (the codec
        // checks), applying to every filter of this SUBSCRIBE.
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        for (raw, options) in s.filters {
            let filter = match Filter::parse(raw.clone()) {
                Ok(f) => f,
                Err(e) => {
                    reasons.push(e.reason_code());
                    continue;
                }
            };
            // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
            if options.no_local && matches!(filter, Filter::Shared { .. }) {
                return self.close_with(ReasonCode::ProtocolError);
            }
            if !self.permissions.can_subscribe(&filter) {
                self.events
                    .push_back(Event::Denied(Denied::Subscribe(raw.clone())));
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let Some(session) = self.session.as_mut() else {
                return;
            };
            let existed = session.subscriptions.contains_key(&raw);
            let count_max = self.limits.subscriptions_per_session_max.get() as usize;
            if !existed && session.subscriptions.len() >= count_max {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let subscription = Subscription {
                filter,
                options,
                id: sub_id,
            };
            // [MQTT-3.8.4-3] a resubscribe replaces the old subscription.
            session
                .subscriptions
                .insert(raw.clone(), subscription.clone());
            // Retain Handling (v5 §3.8.3.1); shared subscriptions never get
            // retained messages [MQTT-3.8.4-?, v5 §4.8.2].
            let send_retained = !matches!(subscription.filter, Filter::Shared { .. })
                && match options.retain_handling {
                    codec::RetainHandling::SendAtSubscribe => true,
                    codec::RetainHandling::SendAtSubscribeIfNew => !existed,
                    codec::RetainHandling::DoNotSend => false,
                };
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            self.events.push_back(Event::Subscribed {
                key: raw,
                subscription,
                send_retained,
            });
        }
        // SUBACK is queued before the broker handles the Subscribed events,
        // so it goes out before any retained message they bring.
        self.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reasons,
        }));
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let mut reasons = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            match session.subscriptions.remove(&raw) {
                Some(sub) => {
                    reasons.push(ReasonCode::Success);
                    self.events.push_back(Event::Unsubscribed {
                        key: raw,
                        filter: sub.filter,
                    });
                }
                // [MQTT-3.11.3-?] v5 reports it; v3.1.1 UNSUBACK has no codes.
                None => reasons.push(ReasonCode::NoSubscriptionExisted),
            }
        }
        // [MQTT-3.10.4-4] always answer with UNSUBACK.
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reasons,
        }));
    }

    fn handle_disconnect(&mut self, d: Disconnect) {
        if let Some(asked) = d.properties.session_expiry_interval {
            let Some(session) = self.session.as_mut() else {
                return;
            };
            // [MQTT-3.14.2-2] from zero to non-zero is a protocol error.
            if session.expiry_interval.is_zero() && asked != 0 {
                return self.close_with(ReasonCode::ProtocolError);
            }
            session.expiry_interval =
                Duration::from_secs(u64::from(asked)).min(self.limits.session_expiry_max);
        }
        // [MQTT-3.14.4-3] a normal DISCONNECT discards the will; 0x04 keeps it.
        if d.reason != ReasonCode::DisconnectWithWillMessage {
            self.will = None;
        }
        self.finish(CloseReason::ClientDisconnect(d.reason));
    }

    // ---- outbound -----------------------------------------------------

    /// Outgoing QoS 1/2 window: the client's Receive Maximum [MQTT-3.3.4-9],
    /// capped by the broker's.
    fn window(&self) -> usize {
        usize::from(
            self.client
                .receive_maximum
                .min(self.limits.receive_maximum_max.get()),
        )
    }

    /// The window for the entry at the front of the queue: a message still
    /// on disk also waits for `spilled_inflight_max` (bounded memory while a
    /// backlog drains).
    fn window_for(&self, front: &Entry) -> usize {
        let window = self.window();
        if front.is_spilled() {
            window.min(usize::from(self.limits.spilled_inflight_max.get()))
        } else {
            window
        }
    }

    /// Releases the records of exchanges acknowledged since the last call
    /// (the reader has no buffer; the writer does, once per batch).
    fn release_retired(&mut self, spill: Option<&mut SpillCtx<'_>>) {
        if let (Some(ctx), Some(session)) = (spill, self.session.as_mut()) {
            session.release_retired(ctx);
        }
    }

    /// The next thing to send. Control packets first, then queued publishes:
    /// a publish leaves the session queue only when the writer asks, so a
    /// slow reader's backlog stays in the bounded session queue, not in an
    /// unbounded buffer. With the disk buffer at hand, resends of spilled
    /// messages are read back.
    fn next_outgoing(
        &mut self,
        now: Instant,
        mut spill: Option<&mut SpillCtx<'_>>,
    ) -> Option<Outgoing> {
        loop {
            let out = match self.transmit.pop_front() {
                Some(out) => out,
                None => return self.next_publish(now, spill),
            };
            let Outgoing::Reread { spilled, packet_id } = out else {
                return Some(out);
            };
            let Some(ctx) = spill.as_deref_mut() else {
                // Without the buffer it waits (the io layer always lends it).
                self.transmit
                    .push_front(Outgoing::Reread { spilled, packet_id });
                return None;
            };
            let Some(session) = self.session.as_mut() else {
                continue;
            };
            // Still in flight? An exchange that ended meanwhile is not resent.
            let open = session
                .inflight_position(packet_id)
                .is_some_and(|i| session.inflight[i].state != InflightState::Released);
            if !open {
                continue;
            }
            match session.reread(&spilled, ctx) {
                Some(queued) => {
                    return Some(Outgoing::Publish {
                        queued,
                        packet_id: Some(packet_id),
                        dup: true,
                    })
                }
                // Lost (counted): the exchange cannot be resent and ends.
                None => self.complete_outgoing(packet_id),
            }
        }
    }

    /// Takes the next queued message the window allows and, for QoS 1/2,
    /// records it in flight under a fresh packet id.
    fn next_publish(
        &mut self,
        now: Instant,
        mut spill: Option<&mut SpillCtx<'_>>,
    ) -> Option<Outgoing> {
        if self.phase != Phase::Connected {
            return None;
        }
        let session = self.session.as_ref()?;
        let front = session.queue.front()?;
        if front.qos() != QoS::AtMostOnce && session.inflight.len() >= self.window_for(front) {
            return None;
        }
        let session = self.session.as_mut()?;
        let (queued, held) = session.pop_live(now, spill.as_deref_mut())?;
        if queued.qos == QoS::AtMostOnce {
            return Some(Outgoing::Publish {
                queued,
                packet_id: None,
                dup: false,
            });
        }
        let Some((id, serial)) = session.allocate_packet_id() else {
            match held {
                Some(s) => session.push_front_spilled(s),
                None => session.push_front_memory(queued, spill),
            }
            return None;
        };
        let state = if queued.qos == QoS::AtLeastOnce {
            InflightState::Qos1Sent
        } else {
            InflightState::Qos2Sent
        };
        session.inflight.push_back(Inflight {
            packet_id: id,
            serial,
            state,
            publish: Some(match held {
                Some(s) => Entry::Spilled(s),
                None => Entry::Memory(queued.clone()),
            }),
        });
        Some(Outgoing::Publish {
            queued,
            packet_id: Some(id),
            dup: false,
        })
    }

    /// On session resumption, resend unacknowledged PUBLISH (DUP set) and
    /// PUBREL in their original order [MQTT-4.4.0-1].
    fn resend_inflight(&mut self) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        for f in &session.inflight {
            match (&f.state, &f.publish) {
                (InflightState::Released, _) => {
                    self.transmit
                        .push_back(Outgoing::Packet(Packet::PubRel(PubResponse::new(
                            f.packet_id,
                            ReasonCode::Success,
                        ))))
                }
                (_, Some(Entry::Memory(q))) => self.transmit.push_back(Outgoing::Publish {
                    queued: q.clone(),
                    packet_id: Some(f.packet_id),
                    dup: true,
                }),
                (_, Some(Entry::Spilled(s))) => self.transmit.push_back(Outgoing::Reread {
                    spilled: s.clone(),
                    packet_id: f.packet_id,
                }),
                (_, None) => {}
            }
        }
    }

    /// Encodes a control packet (or a resent PUBLISH built by
    /// `poll_packet_with`). Returns whether it was written.
    fn write_packet(&mut self, packet: &Packet, buf: &mut BytesMut) -> bool {
        let start = buf.len();
        if codec::encode(packet, self.version, buf).is_err() {
            // INVARIANT: the state machine only builds packets valid for
            // the version; an encode error is a bug, not client input.
            debug_assert!(false, "encode failed for {:?}", packet.packet_type());
            buf.truncate(start);
            return false;
        }
        if let Some(max) = self.client.packet_size_max {
            if buf.len() - start > max as usize {
                buf.truncate(start);
                return false;
            }
        }
        true
    }

    /// Encodes a queued message straight from the shared message (the hot
    /// path: no `Publish` built). A PUBLISH larger than the client's
    /// Maximum Packet Size is discarded as if sent [MQTT-3.1.2-25]; a topic
    /// alias is only taken for a packet that is written, so the client
    /// learns every alias it is later sent without a topic.
    fn write_forward(
        &mut self,
        now: Instant,
        queued: &Queued,
        packet_id: Option<PacketId>,
        dup: bool,
        buf: &mut BytesMut,
    ) -> bool {
        let m = &queued.message;
        let v5 = self.version == ProtocolVersion::V5;
        let alias = self.outgoing_alias(&m.topic);
        let (topic, topic_alias) = match alias {
            OutAlias::Known(a) => (None, Some(a)),
            OutAlias::New(a) => (Some(&m.topic), Some(a)),
            OutAlias::None => (Some(&m.topic), None),
        };
        let forward = codec::Forward {
            dup,
            qos: queued.qos,
            retain: queued.retain,
            topic,
            packet_id,
            properties: m.properties.as_deref(),
            message_expiry_interval: if v5 {
                m.remaining_expiry_secs(now)
            } else {
                None
            },
            subscription_identifiers: if v5 { &queued.subscription_ids } else { &[] },
            topic_alias,
            payload: &m.payload,
        };
        match codec::encode_forward(&forward, self.version, self.client.packet_size_max, buf) {
            Ok(_) => {
                if let OutAlias::New(a) = alias {
                    self.aliases_out.insert(m.topic.clone(), a);
                }
                true
            }
            Err(codec::EncodeError::PacketTooLarge { .. }) => {
                if let Some(s) = self.session.as_mut() {
                    s.stats.dropped_too_large += 1;
                }
                if let Some(id) = packet_id {
                    self.complete_outgoing(id);
                }
                false
            }
            Err(e) => {
                // INVARIANT: queued messages passed the topic and property
                // checks on the way in; an encode error here is a bug.
                debug_assert!(false, "forward encode failed: {e}");
                false
            }
        }
    }

    /// The topic alias for a PUBLISH on `topic` (v5, within the client's
    /// Topic Alias Maximum [MQTT-3.3.2-9]). A `New` one is recorded by the
    /// caller once the packet is sent.
    fn outgoing_alias(&self, topic: &TopicName) -> OutAlias {
        if self.version != ProtocolVersion::V5 || self.client.topic_alias_max == 0 {
            return OutAlias::None;
        }
        if let Some(&a) = self.aliases_out.get(topic) {
            // The client already knows this alias: send an empty topic.
            return OutAlias::Known(a);
        }
        if (self.aliases_out.len() as u64) < u64::from(self.client.topic_alias_max) {
            return OutAlias::New(self.aliases_out.len() as u16 + 1);
        }
        OutAlias::None
    }

    fn build_publish(
        &mut self,
        now: Instant,
        queued: Queued,
        packet_id: Option<PacketId>,
        dup: bool,
    ) -> Publish {
        let m = &queued.message;
        let mut topic: ByteString = m.topic.as_str().into();
        let mut properties = Properties::default();
        if self.version == ProtocolVersion::V5 {
            if let Some(p) = &m.properties {
                properties = (**p).clone();
            }
            properties.message_expiry_interval = m.remaining_expiry_secs(now);
            properties.subscription_identifiers = queued.subscription_ids.clone();
            match self.outgoing_alias(&m.topic) {
                OutAlias::Known(a) => {
                    properties.topic_alias = Some(a);
                    topic = ByteString::new();
                }
                OutAlias::New(a) => {
                    self.aliases_out.insert(m.topic.clone(), a);
                    properties.topic_alias = Some(a);
                }
                OutAlias::None => {}
            }
        }
        Publish {
            dup,
            qos: queued.qos,
            retain: queued.retain,
            topic,
            packet_id,
            properties,
            payload: m.payload.clone(),
        }
    }

    // ---- closing ------------------------------------------------------

    fn send(&mut self, packet: Packet) {
        if self.phase != Phase::Closed {
            self.transmit.push_back(Outgoing::Packet(packet));
        }
    }

    fn send_connack(&mut self, session_present: bool, reason: ReasonCode, properties: Properties) {
        self.transmit
            .push_back(Outgoing::Packet(Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })));
    }

    /// Closes with a DISCONNECT carrying `reason` (v5 only: v3.1.1 has no
    /// server DISCONNECT, the connection just closes).
    fn close_with(&mut self, reason: ReasonCode) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.version == ProtocolVersion::V5 && self.phase == Phase::Connected {
            // Unsent publishes stay in the session; only control packets
            // already queued and the DISCONNECT go out.
            self.transmit.retain(|o| matches!(o, Outgoing::Packet(_)));
            self.transmit
                .push_back(Outgoing::Packet(Packet::Disconnect(Disconnect::new(
                    reason,
                ))));
        }
        self.finish(CloseReason::Server(reason));
    }

    /// Closes without sending anything more than what is queued.
    fn close_silently(&mut self, reason: CloseReason) {
        self.finish(reason);
    }

    fn finish(&mut self, reason: CloseReason) {
        let was_connected = self.phase == Phase::Connected;
        self.phase = Phase::Closed;
        self.deadline = None;
        self.close_reason = Some(reason);
        // QoS 1/2 publishes that never left are already in the in-flight
        // list, and resumption resends them; QoS 0 ones are dropped.
        self.transmit.retain(|o| matches!(o, Outgoing::Packet(_)));
        if was_connected {
            // `Event::Closed` is built when polled, not now: messages the
            // broker delivers until then still land in the session.
            self.closed_event_pending = true;
        } else {
            self.will = None;
        }
    }

    fn closed_event(&mut self) -> Event {
        self.closed_event_pending = false;
        let reason = self
            .close_reason
            .clone()
            .unwrap_or(CloseReason::ConnectionLost);
        let will = self
            .will
            .take()
            .map(|(message, delay)| PendingWill { message, delay });
        // A taken-over session goes to the new connection whatever its
        // expiry; otherwise it outlives the connection only if its expiry
        // is not zero (§4.1).
        let taken_over = reason == CloseReason::Server(ReasonCode::SessionTakenOver);
        let session = match self.session.take() {
            Some(s) if s.expiry_interval.is_zero() && !taken_over => {
                self.ended_session = Some(s);
                None
            }
            kept => kept,
        };
        Event::Closed {
            reason,
            session,
            will,
        }
    }

    fn touch(&mut self, now: Instant) {
        self.deadline = if self.keep_alive.is_zero() {
            None
        } else {
            // [MQTT-3.1.2-24] one and a half times the keep-alive.
            now.checked_add(self.keep_alive + self.keep_alive / 2)
        };
    }

    /// v3.1.1 acknowledgements carry no reason: they are always success.
    fn v311_success_or(&self, reason: ReasonCode) -> ReasonCode {
        match self.version {
            ProtocolVersion::V5 => reason,
            ProtocolVersion::V311 => ReasonCode::Success,
        }
    }
}
