//! How a connection ends (MQTT 5.0 §3.14, §4.13): the client's DISCONNECT,
//! a takeover, a shutdown, or a protocol violation; what the session and
//! the will become (`Event::Closed`).

use super::*;

impl Connection {
    /// The session this connection ended, if it did not outlive it (session
    /// expiry 0): the broker releases what its queue holds in the disk buffer.
    pub fn take_ended_session(&mut self) -> Option<SessionState> {
        self.ended_session.take()
    }

    /// Another connection took this session over [MQTT-3.1.4-3]: close with
    /// Session Taken Over and hand the session state out in `Event::Closed`,
    /// unless it ends with this connection (expiry 0: `take_ended_session`).
    pub fn take_over(&mut self) {
        if self.phase == Phase::Connected {
            self.close_with(ReasonCode::SessionTakenOver);
        } else if self.phase != Phase::Closed {
            self.close_silently(CloseReason::Server(ReasonCode::SessionTakenOver));
        }
    }

    /// Everything queued to send is dropped but the DISCONNECT: the
    /// connection was taken over while its acknowledgements waited for a
    /// session write that came back stale, and the new holder acknowledges
    /// the state; the old client still hears why it is closed (§4.13).
    /// Unless its CONNACK is among what is dropped: the first packet the
    /// server sends is CONNACK [MQTT-3.2.0-1], so then nothing is sent.
    pub fn discard_all_but_disconnect(&mut self) {
        let connack_unsent = self
            .transmit
            .iter()
            .any(|o| matches!(o, Outgoing::Packet(Packet::ConnAck(_))));
        if connack_unsent {
            self.transmit.clear();
        } else {
            self.transmit
                .retain(|o| matches!(o, Outgoing::Packet(Packet::Disconnect(_))));
        }
    }

    /// The broker closes the connection for one of its own limits (v5:
    /// DISCONNECT with `reason`).
    pub fn close(&mut self, reason: ReasonCode) {
        if self.phase == Phase::Connected {
            self.close_with(reason);
        } else if self.phase != Phase::Closed {
            self.close_silently(CloseReason::Server(reason));
        }
    }

    /// The broker is shutting down: DISCONNECT 0x8B (v5) and close.
    pub fn shut_down(&mut self) {
        if self.phase == Phase::Connected {
            self.close_with(ReasonCode::ServerShuttingDown);
        } else if self.phase != Phase::Closed {
            self.close_silently(CloseReason::Server(ReasonCode::ServerShuttingDown));
        }
    }

    pub(super) fn handle_disconnect(&mut self, d: Disconnect) {
        if let Some(asked) = d.properties.session_expiry_interval {
            let Some(session) = self.session.as_mut() else {
                return;
            };
            if session.expiry_interval.is_zero() && asked != 0 {
                return self.violate(Violation::SessionExpiryFromZero);
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

    /// The client broke a protocol rule: DISCONNECT with the violation's
    /// reason (v5, once connected) and close [MQTT-4.13.1-1].
    pub(super) fn violate(&mut self, violation: Violation) {
        self.close_for(violation.reason_code(), CloseReason::Violation(violation));
    }

    /// Closes with a DISCONNECT carrying `reason` (v5 only: v3.1.1 has no
    /// server DISCONNECT, the connection just closes).
    pub(super) fn close_with(&mut self, reason: ReasonCode) {
        self.close_for(reason, CloseReason::Server(reason));
    }

    fn close_for(&mut self, reason: ReasonCode, why: CloseReason) {
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
        self.finish(why);
    }

    /// Closes without sending anything more than what is queued.
    pub(super) fn close_silently(&mut self, reason: CloseReason) {
        self.finish(reason);
    }

    pub(super) fn finish(&mut self, reason: CloseReason) {
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

    pub(super) fn closed_event(&mut self) -> Event {
        self.closed_event_pending = false;
        let reason = self
            .close_reason
            .clone()
            .unwrap_or(CloseReason::ConnectionLost);
        let will = self.will.take();
        // A session outlives its connection only if its expiry is not
        // zero (§4.1), a takeover's included: with expiry 0 it ends when
        // the network connection closes (v5 §3.1.2.11.2), and a v3.1.1
        // Clean Session one "MUST NOT be reused in any subsequent Session"
        // [MQTT-3.1.2-6]; the connection taking over starts a new one.
        let session = match self.session.take() {
            Some(s) if s.expiry_interval.is_zero() => {
                self.ended_session = Some(s);
                None
            }
            kept => kept,
        };
        Event::Closed {
            reason,
            session: session.map(Box::new),
            will,
        }
    }
}
