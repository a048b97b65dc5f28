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
    self, AckKind, ConnAck, Connect, DecodeError, Disconnect, Packet, PacketId, PacketType,
    Properties, Props, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, ShortAck, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use crate::limits::{ClientLimits, MAXIMUM_PACKET_SIZE_ANNOUNCED};
use crate::topic::{Filter, TopicName};

use super::message::{detached, expiry_interval, forwardable, Message, SharedMessage};
use super::queue::{Enqueued, Entry, Queued, Stored};
use super::state::{Inflight, InflightState, SessionState, Subscription};
use super::{AllowAll, Permissions};
use crate::buffer::Lease;
use crate::topic::Delivery;

mod close;
mod connect;
mod events;
mod publish_in;
mod publish_out;
mod subscribe;
mod violation;

pub use events::{CloseReason, ConnectRequest, Denied, Event, PendingWill, PublishAck};
pub use violation::Violation;

/// How long a new connection may take to send CONNECT and have it decided
/// (authenticated, its client id claimed) before it is closed (MQTT 5.0
/// §3.1.4: "a reasonable amount of time"). Counted from the connection's
/// start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Packets a client may pipeline behind CONNECT before the broker has
/// accepted it; more is a client that does not wait and is cut off.
const DEFERRED_PACKETS_MAX: usize = 64;
/// Bytes of those packets (as encoded): an unauthenticated peer holds no
/// more than a CONNECT's worth beside its CONNECT, however long the
/// authentication takes (each packet alone may be up to `CONNECT_SIZE_MAX`).
const DEFERRED_BYTES_MAX: usize = crate::limits::CONNECT_SIZE_MAX as usize;

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
    /// when it is written (`poll_transmit` has the buffer).
    Reread {
        stored: Stored,
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
    /// `deferred`'s packets' encoded bytes.
    deferred_bytes: usize,
    will: Option<PendingWill>,
    /// Keep-alive in force (after Server Keep Alive); zero disables it.
    keep_alive: Duration,
    /// The CONNECT timeout until the CONNECT is accepted (sent and
    /// decided), then the deadline for the next packet: 1.5 x keep-alive
    /// after every packet [MQTT-3.1.2-22] (v3.1.1: [MQTT-3.1.2-24]).
    deadline: Option<Instant>,
    /// Client-to-broker topic aliases (v5 §3.3.2.3.4), per connection.
    aliases_in: HashMap<u16, TopicName>,
    /// Bytes of the topic names in `aliases_in`; at most
    /// `topic_alias_bytes_max`.
    aliases_in_bytes: usize,
    /// Broker-to-client aliases assigned so far; never more than the client's
    /// Topic Alias Maximum [MQTT-3.3.2-9].
    aliases_out: HashMap<TopicName, u16>,
    /// Bytes of the topic names in `aliases_out`; at most
    /// `topic_alias_bytes_max`.
    aliases_out_bytes: usize,
    /// `accept` resumed the session it was given (CONNACK Session Present).
    session_present: bool,
    /// Incoming QoS 1 publishes handed to the broker and not yet acknowledged;
    /// with the QoS 2 ids this is what Receive Maximum bounds [MQTT-3.3.4-7].
    incoming_qos1_pending: u32,
    transmit: VecDeque<Outgoing>,
    /// In-flight PUBLISHes of a resumed session not resent yet: more were
    /// in flight than this connection's Receive Maximum allows, and each
    /// waits for an acknowledgement to make room [MQTT-3.3.4-9]. In order,
    /// ahead of anything new.
    resend_held: VecDeque<PacketId>,
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
            deferred_bytes: 0,
            will: None,
            keep_alive: Duration::ZERO,
            deadline: now.checked_add(CONNECT_TIMEOUT),
            aliases_in: HashMap::new(),
            aliases_in_bytes: 0,
            aliases_out: HashMap::new(),
            aliases_out_bytes: 0,
            session_present: false,
            incoming_qos1_pending: 0,
            transmit: VecDeque::new(),
            resend_held: VecDeque::new(),
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
    /// The will in force and its delay, while connected (for persistence).
    pub fn will(&self) -> Option<PendingWill> {
        self.will.clone()
    }

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

    /// A decoded packet from the client.
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitConnect => match packet {
                Packet::Connect(connect) => self.handle_connect(connect),
                _ => self.violate(Violation::FirstPacketNotConnect),
            },
            Phase::AwaitAccept => {
                let bytes = codec::encoded_len(&packet, self.version).unwrap_or(usize::MAX);
                self.deferred_bytes = self.deferred_bytes.saturating_add(bytes);
                if self.deferred.len() >= DEFERRED_PACKETS_MAX {
                    self.close_silently(CloseReason::Server(ReasonCode::ReceiveMaximumExceeded));
                } else if self.deferred_bytes > DEFERRED_BYTES_MAX {
                    self.close_silently(CloseReason::Server(ReasonCode::QuotaExceeded));
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
            Phase::AwaitAccept => {
                // The broker did not decide the CONNECT in time. v5 says
                // why in CONNACK (0x88 Server unavailable, §3.2.2.2);
                // v3.1.1 just closes (its code 3 makes clients retry at
                // once what just stalled). A late `accept` or `reject`
                // finds the connection closed and does nothing.
                self.pending_connect = None;
                self.deferred.clear();
                if self.version == ProtocolVersion::V5 {
                    let reason = ReasonCode::ServerUnavailable;
                    self.send_connack(false, reason, Properties::default());
                }
                self.close_silently(CloseReason::Server(ReasonCode::ServerUnavailable))
            }
            // [MQTT-3.1.2-22] (v3.1.1: [MQTT-3.1.2-24]) no packet within
            // 1.5 x keep-alive.
            Phase::Connected => self.close_with(ReasonCode::KeepAliveTimeout),
            Phase::Closed => {}
        }
    }

    pub(super) fn handle_connected(&mut self, now: Instant, packet: Packet) {
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
            Packet::Connect(_) => self.violate(Violation::SecondConnect),
            Packet::Auth(a) => self.handle_auth(a),
            p @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => self.violate(Violation::ServerOnlyPacket(p.packet_type())),
        }
    }

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
            Phase::AwaitConnect | Phase::AwaitAccept => self.deadline,
            Phase::Connected => match (self.deadline, self.credential_expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Phase::Closed => None,
        }
    }

    /// Sets when the client's credential expires (`None`: never). Called
    /// after `accept` and after a successful re-authentication.
    pub fn set_credential_expiry(&mut self, at: Option<Instant>) {
        self.credential_expiry = at;
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
        if !self.resend_held.is_empty() {
            return self.held_resend_fits();
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
    /// the number of packets written. Messages in the shard's store are read
    /// back through `lease`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        bytes_max: usize,
        lease: &mut Lease<'_>,
    ) -> usize {
        self.release_retired(lease);
        let mut written = 0;
        while buf.len() < bytes_max {
            let Some(out) = self.next_outgoing(now, lease) else {
                break;
            };
            let sent = match out {
                Outgoing::Packet(packet) => self.write_packet(&packet, buf),
                // `next_outgoing` reads these back: never returned.
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

    pub(super) fn send(&mut self, packet: Packet) {
        if self.phase != Phase::Closed {
            self.transmit.push_back(Outgoing::Packet(packet));
        }
    }

    pub(super) fn touch(&mut self, now: Instant) {
        self.deadline = if self.keep_alive.is_zero() {
            None
        } else {
            // [MQTT-3.1.2-22] (v3.1.1: [MQTT-3.1.2-24]) one and a half
            // times the keep-alive.
            now.checked_add(self.keep_alive + self.keep_alive / 2)
        };
    }

    /// v3.1.1 acknowledgements carry no reason: they are always success.
    pub(super) fn v311_success_or(&self, reason: ReasonCode) -> ReasonCode {
        match self.version {
            ProtocolVersion::V5 => reason,
            ProtocolVersion::V311 => ReasonCode::Success,
        }
    }
}
