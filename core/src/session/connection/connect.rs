//! CONNECT (MQTT 5.0 §3.1, §3.2, §4.12): checking it, handing it to the
//! broker (`Event::Connect`), and the broker's answer (`accept` with the
//! session to resume, or `reject`); re-authentication (AUTH 0x19).

use super::*;

impl Connection {
    pub(super) fn handle_connect(&mut self, mut connect: Box<Connect>) {
        // Copies of what outlives the CONNECT: the client id (the session,
        // the registry, every message's origin), the authentication method
        // (the connection) and the will (below). As slices they kept the
        // whole CONNECT frame (up to 64 KiB of password, token, properties)
        // alive as long as the session, and a retained will longer.
        connect.client_id = ByteString::from(&*connect.client_id);
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
        self.auth_method = connect
            .properties
            .authentication_method
            .as_deref()
            .map(ByteString::from);
        let p = &connect.properties;
        self.client = ClientSide {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            packet_size_max: p.maximum_packet_size,
            topic_alias_max: p.topic_alias_maximum.unwrap_or(0),
        };
        // Request Problem Information 0 forbids Reason String / User
        // Property outside PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29];
        // the broker never sends those, so both settings are honoured.
        // v5: Server Keep Alive (§3.2.2.3.14) replaces a keep-alive above
        // the broker's maximum, and 0 (none) by the maximum, so a dead
        // connection is found; the client must use it [MQTT-3.2.2-21].
        // v3.1.1 has no way to tell the client another value, so its own is
        // enforced, and 0 stays none: such a client rightly sends nothing
        // while idle, and would be cut off for it.
        let asked = connect.keep_alive;
        let max = self.limits.keep_alive_max.get();
        let keep_alive = if v5 && (asked == 0 || asked > max) {
            max
        } else {
            asked
        };
        self.keep_alive = Duration::from_secs(u64::from(keep_alive));

        if let Some(will) = &connect.will {
            let topic = match TopicName::new(will.topic.clone()) {
                Ok(t) => t.detached(),
                Err(e) => {
                    // A will topic must be a topic name: no wildcards
                    // [MQTT-4.7.0-1] (v3.1.1: [MQTT-4.7.1-1]), not empty
                    // [MQTT-4.7.3-1]. v5 answers CONNACK 0x90 Topic Name
                    // invalid (§3.2.2.2). v3.1.1 has no return code for it:
                    // the connection closes without CONNACK
                    // [MQTT-4.8.0-1], where 0x03 Server unavailable would
                    // have the client retry the same CONNECT.
                    if v5 {
                        self.send_connack(false, e.reason_code(), Properties::default());
                    }
                    self.close_silently(CloseReason::Violation(Violation::TopicNameInvalid(e)));
                    return;
                }
            };
            let props = &will.properties;
            let message = Message {
                topic,
                payload: bytes::Bytes::copy_from_slice(&will.payload),
                qos: will.qos,
                retain: will.retain,
                properties: detached(forwardable(props.clone())),
                // Set when it is published: the interval starts then
                // (§3.1.3.2.4), however long the client stayed connected.
                expires_at: None,
                origin: connect.client_id.clone(),
                retain_stamp: 0,
            };
            let delay = Duration::from_secs(u64::from(props.will_delay_interval.unwrap_or(0)));
            self.will = Some(PendingWill {
                message: Arc::new(message),
                delay,
                expiry: expiry_interval(
                    props.message_expiry_interval,
                    self.limits.message_expiry_max,
                ),
            });
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
            will_topic: self.will.as_ref().map(|w| w.message.topic.clone()),
            user_properties: p.user_properties.clone(),
        };
        self.pending_connect = Some(connect);
        self.phase = Phase::AwaitAccept;
        // The CONNECT deadline keeps running until the broker decides: an
        // authentication (a webhook) or a claim that never answers must not
        // hold the connection and its deferred packets for good.
        self.events.push_back(Event::Connect(Box::new(request)));
    }

    /// Session Expiry Interval in force: v5 asks for one (capped by
    /// `maxSessionExpirySeconds`); v3.1.1 clean session ends with the
    /// connection, a persistent one lasts as long as the broker allows.
    pub(super) fn session_expiry_of(&self, connect: &Connect) -> Duration {
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
            // v5 §3.2.2.3.6: absent means "no limit beyond the protocol's".
            // Mainstream clients (paho-mqtt) refuse a value above the largest
            // Remaining Length, 268,435,455, and the largest packet (its
            // fixed header included) is a few bytes more: announce a limit
            // only when it is a real one, as Mosquitto does.
            let max = self.limits.packet_size_max.get();
            props.maximum_packet_size = (max < MAXIMUM_PACKET_SIZE_ANNOUNCED).then_some(max);
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
        self.deferred_bytes = 0;
        while let Some(packet) = self.deferred.pop_front() {
            if self.phase != Phase::Connected {
                break;
            }
            self.handle_connected(now, packet);
        }
        revoked
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

    pub(super) fn send_connack(
        &mut self,
        session_present: bool,
        reason: ReasonCode,
        properties: Properties,
    ) {
        self.transmit
            .push_back(Outgoing::Packet(Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties: properties.into(),
            })));
    }

    /// Re-authentication (v5 §4.12.1): AUTH 0x19 with the method of CONNECT.
    /// Multi-step methods are not offered, so Continue Authentication from the
    /// client is a protocol error, as is AUTH without a method in CONNECT
    /// or with another method.
    pub(super) fn handle_auth(&mut self, auth: codec::Auth) {
        if self.auth_method.is_none() {
            return self.violate(Violation::AuthWithoutMethod);
        }
        if auth.properties.authentication_method != self.auth_method {
            return self.violate(Violation::AuthMethodChanged);
        }
        if auth.reason != ReasonCode::ReAuthenticate {
            return self.violate(Violation::UnexpectedAuth(auth.reason));
        }
        let properties = auth.properties.into_inner();
        self.events.push_back(Event::ReAuthenticate {
            method: properties.authentication_method.unwrap_or_default(),
            data: properties.authentication_data,
        });
    }

    /// The broker's answer to [`Event::ReAuthenticate`]: `Ok` sends AUTH
    /// Success (v5 §4.12.1) and sets the new credential expiry; `Err` closes
    /// with that reason, or with 0x87 Not authorized where the reason is one
    /// DISCONNECT cannot carry.
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
                    properties: properties.into(),
                }));
            }
            Err(reason) => {
                // The authenticator's refusals are CONNACK codes; several
                // (0x84, 0x85, 0x86 Bad User Name or Password, 0x88, 0x8A
                // Banned) are not DISCONNECT codes [MQTT-3.14.2-1]
                // (§3.14.2.1). Whatever the cause, the client is no longer
                // authorized.
                let reason = if reason.is_error() && reason.valid_in(PacketType::Disconnect) {
                    reason
                } else {
                    ReasonCode::NotAuthorized
                };
                self.close_with(reason)
            }
        }
    }
}
