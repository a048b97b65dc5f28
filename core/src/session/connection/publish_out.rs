//! PUBLISH to the client (MQTT 5.0 §3.3, §4.3, §4.4): queued deliveries, the
//! in-flight window (Receive Maximum), packet ids, the client's
//! acknowledgements, resends on resumption, and the one PUBLISH builder
//! (`write_forward`, straight from the shared message).

use super::*;

impl Connection {
    /// Offers a routed message to this connection's session, in memory or,
    /// past the memory bounds, in the shard's store (`SessionState::enqueue`).
    pub fn deliver(
        &mut self,
        now: Instant,
        message: &SharedMessage,
        delivery: &Delivery,
        lease: &mut Lease<'_>,
    ) -> Enqueued {
        let online = self.phase == Phase::Connected;
        let Some(session) = self.session.as_mut() else {
            return Enqueued::Discarded;
        };
        session.enqueue(now, message, delivery, online, &self.limits.queue, lease)
    }

    pub(super) fn handle_puback(&mut self, packet_id: PacketId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.inflight_position(packet_id) {
            Some(i) if session.inflight[i].state == InflightState::Qos1Sent => {
                session.remove_inflight(i);
                self.forget_held(packet_id);
            }
            // v5 §4.3.2 does not ask the server to act on an unknown PUBACK.
            _ => {}
        }
    }

    pub(super) fn handle_pubrec(&mut self, packet_id: PacketId, reason: ReasonCode) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match session.inflight_position(packet_id) {
            Some(i) if session.inflight[i].state == InflightState::Qos2Sent => {
                if reason.is_error() {
                    // v5 §4.3.3: a PUBREC with an error ends the exchange.
                    session.remove_inflight(i);
                    self.forget_held(packet_id);
                } else {
                    session.inflight[i].state = InflightState::Released;
                    // The subscriber has the message: only PUBREL is owed,
                    // under this packet id, after a restart too.
                    let seq = session.inflight[i].seq;
                    session.log_sent(seq, packet_id.get(), true);
                    let publish = session.inflight[i].publish.take();
                    session.retire(publish);
                    // Acknowledged before its held resend: only PUBREL now.
                    self.forget_held(packet_id);
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

    pub(super) fn handle_pubcomp(&mut self, packet_id: PacketId) {
        self.complete_outgoing(packet_id);
    }

    /// Ends an outgoing exchange (PUBCOMP, or discarded as too large).
    pub(super) fn complete_outgoing(&mut self, id: PacketId) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if let Some(i) = session.inflight_position(id) {
            session.remove_inflight(i);
        }
        self.forget_held(id);
    }

    /// `id`'s exchange ended before its held resend went out.
    fn forget_held(&mut self, id: PacketId) {
        if !self.resend_held.is_empty() {
            self.resend_held.retain(|h| *h != id);
        }
    }

    /// Whether the first held resend fits in the window: the exchanges
    /// open on this connection (in flight and not held) are fewer than
    /// Receive Maximum.
    pub(super) fn held_resend_fits(&self) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.inflight.len().saturating_sub(self.resend_held.len()) < self.window()
        })
    }

    /// The next held resend, when the window has room for it (`None` when
    /// there is none, or no room: `resend_held` says which).
    fn next_held_resend(&mut self) -> Option<Outgoing> {
        while !self.resend_held.is_empty() && self.held_resend_fits() {
            let id = self.resend_held.pop_front()?;
            let session = self.session.as_ref()?;
            let resend = session
                .inflight_position(id)
                .and_then(|i| resend_of(&session.inflight[i]));
            // PUBREC turned it into a PUBREL (sent then), or it ended.
            if let Some(out @ (Outgoing::Publish { .. } | Outgoing::Reread { .. })) = resend {
                return Some(out);
            }
        }
        None
    }

    /// Outgoing QoS 1/2 window: the client's Receive Maximum [MQTT-3.3.4-9],
    /// capped by the broker's.
    pub(super) fn window(&self) -> usize {
        usize::from(
            self.client
                .receive_maximum
                .min(self.limits.receive_maximum_max.get()),
        )
    }

    /// The window for the entry at the front of the queue: a message still
    /// on disk also waits for `spilled_inflight_max` (bounded memory while a
    /// backlog drains).
    pub(super) fn window_for(&self, front: &Entry) -> usize {
        self.window_of(front.is_stored())
    }

    fn window_of(&self, stored: bool) -> usize {
        let window = self.window();
        if stored {
            window.min(usize::from(self.limits.spilled_inflight_max.get()))
        } else {
            window
        }
    }

    /// Releases the records of exchanges acknowledged since the last call
    /// (the reader has no buffer; the writer does, once per batch).
    pub(super) fn release_retired(&mut self, lease: &mut Lease<'_>) {
        if let Some(session) = self.session.as_mut() {
            session.release_retired(lease);
        }
    }

    /// The next thing to send. Control packets first, then queued publishes:
    /// a publish leaves the session queue only when the writer asks, so a
    /// slow reader's backlog stays in the bounded session queue, not in an
    /// unbounded buffer. Resends of messages in the store are read back.
    pub(super) fn next_outgoing(
        &mut self,
        now: Instant,
        lease: &mut Lease<'_>,
    ) -> Option<Outgoing> {
        loop {
            let out = match self.transmit.pop_front() {
                Some(out) => out,
                // Held resends go before anything new, as they would have.
                None => match self.next_held_resend() {
                    Some(out) => out,
                    None if self.resend_held.is_empty() => return self.next_publish(now, lease),
                    None => return None,
                },
            };
            let Outgoing::Reread { stored, packet_id } = out else {
                return Some(out);
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
            match session.reread(&stored, lease) {
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
    pub(super) fn next_publish(&mut self, now: Instant, lease: &mut Lease<'_>) -> Option<Outgoing> {
        if self.phase != Phase::Connected {
            return None;
        }
        let session = self.session.as_ref()?;
        let front = session.queue.front()?;
        if front.qos() != QoS::AtMostOnce && session.inflight.len() >= self.window_for(front) {
            return None;
        }
        let windows = (self.window_of(false), self.window_of(true));
        let session = self.session.as_mut()?;
        let (queued, stored) = session.pop_live(now, lease)?;
        if queued.qos == QoS::AtMostOnce {
            return Some(Outgoing::Publish {
                queued,
                packet_id: None,
                dup: false,
            });
        }
        // `pop_live` drops expired and lost entries: the one it returns may
        // not be the front checked above (a QoS 0 front lets anything
        // through), so the window is checked again [MQTT-3.3.4-9].
        let window = if stored.is_some() {
            windows.1
        } else {
            windows.0
        };
        if session.inflight.len() >= window {
            match stored {
                Some(s) => session.push_front_stored(s),
                None => session.push_front_memory(queued, lease),
            }
            return None;
        }
        let Some((id, serial)) = session.allocate_packet_id() else {
            match stored {
                Some(s) => session.push_front_stored(s),
                None => session.push_front_memory(queued, lease),
            }
            return None;
        };
        let state = if queued.qos == QoS::AtLeastOnce {
            InflightState::Qos1Sent
        } else {
            InflightState::Qos2Sent
        };
        session.log_sent(queued.seq, id.get(), false);
        session.inflight.push_back(Inflight {
            packet_id: id,
            serial,
            seq: queued.seq,
            state,
            publish: Some(match stored {
                Some(s) => Entry::Stored(s),
                None => Entry::Memory(queued.clone()),
            }),
        });
        let dup = queued.restored;
        Some(Outgoing::Publish {
            queued,
            packet_id: Some(id),
            dup,
        })
    }

    /// On session resumption, resend unacknowledged PUBLISH (DUP set) and
    /// PUBREL in their original order [MQTT-4.4.0-1]. No more PUBLISHes
    /// than this connection's Receive Maximum allows go out unacknowledged
    /// [MQTT-3.3.4-9]: a client may come back with a smaller one, and the
    /// rest wait in `resend_held`. A PUBREL's exchange counts as open until
    /// its PUBCOMP.
    pub(super) fn resend_inflight(&mut self) {
        let window = self.window();
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let mut open = 0;
        for f in &session.inflight {
            let Some(out) = resend_of(f) else {
                continue;
            };
            if open >= window && !matches!(out, Outgoing::Packet(_)) {
                self.resend_held.push_back(f.packet_id);
                continue;
            }
            open += 1;
            self.transmit.push_back(out);
        }
    }

    /// Encodes a control packet (or a resent PUBLISH built by
    /// `poll_transmit`). Returns whether it was written.
    pub(super) fn write_packet(&mut self, packet: &Packet, buf: &mut BytesMut) -> bool {
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
    pub(super) fn write_forward(
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
                    // A copy, once per alias: the message's topic is a
                    // slice of its publisher's frame, which the alias
                    // would keep alive for this connection's life.
                    self.aliases_out_bytes += m.topic.as_str().len();
                    self.aliases_out.insert(m.topic.detached(), a);
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
    /// Topic Alias Maximum [MQTT-3.3.2-9], and while the aliases hold less
    /// than `topic_alias_bytes_max` of topic names: past it, topics go
    /// without one, which the sender may always do). A `New` one is
    /// recorded by the caller once the packet is sent.
    pub(super) fn outgoing_alias(&self, topic: &TopicName) -> OutAlias {
        if self.version != ProtocolVersion::V5 || self.client.topic_alias_max == 0 {
            return OutAlias::None;
        }
        if let Some(&a) = self.aliases_out.get(topic) {
            // The client already knows this alias: send an empty topic.
            return OutAlias::Known(a);
        }
        let bytes_max = self.limits.topic_alias_bytes_max.get() as usize;
        if (self.aliases_out.len() as u64) < u64::from(self.client.topic_alias_max)
            && self.aliases_out_bytes + topic.as_str().len() <= bytes_max
        {
            return OutAlias::New(self.aliases_out.len() as u16 + 1);
        }
        OutAlias::None
    }
}

/// What resending in-flight exchange `f` takes: its PUBREL once PUBREC
/// came, else its PUBLISH again (DUP set; read back first when stored).
fn resend_of(f: &Inflight) -> Option<Outgoing> {
    match (&f.state, &f.publish) {
        (InflightState::Released, _) => Some(Outgoing::Packet(Packet::PubRel(PubResponse::new(
            f.packet_id,
            ReasonCode::Success,
        )))),
        (_, Some(Entry::Memory(q))) => Some(Outgoing::Publish {
            queued: q.clone(),
            packet_id: Some(f.packet_id),
            dup: true,
        }),
        (_, Some(Entry::Stored(s))) => Some(Outgoing::Reread {
            stored: s.clone(),
            packet_id: f.packet_id,
        }),
        (_, None) => None,
    }
}
