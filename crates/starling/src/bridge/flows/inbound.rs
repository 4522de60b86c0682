//! The in direction of the flows: from the remote to the local broker.

use super::*;

impl Flows {
    // --- In: from the remote to the local broker ---------------------------------------

    /// A PUBLISH from the remote.
    pub(in crate::bridge) fn remote_publish(&mut self, p: Publish) {
        let id = p.packet_id;
        if p.qos != QoS::AtMostOnce {
            if self.waiting.iter().any(|w| w.packet_id == id) {
                // Resent while the first copy waits here.
                return;
            }
            if let Some(e) = self.take_in(id) {
                match e.state {
                    // The local broker's answer is on its way; it goes to the remote.
                    InState::Published | InState::Released => {
                        self.put_in(id, e);
                        return;
                    }
                    InState::Answered(reason) if p.dup => {
                        self.send_remote(Packet::PubAck(PubAck::with_reason(id, reason)));
                        return;
                    }
                    // A new message under an id whose PUBACK the remote never got: it cannot
                    // have resent the old one then, so that one is done with.
                    InState::Answered(_) => {}
                    InState::Received | InState::Done => {
                        // The PUBREC went missing: again, without bothering the local broker.
                        self.send_remote(Packet::PubRec(PubAck::new(id)));
                        self.put_in(id, e);
                        return;
                    }
                }
            }
        }
        let needs_room =
            (self.routes.inbound(&p.topic, p.qos)).is_some_and(|(_, q)| q != QoS::AtMostOnce);
        if !needs_room || (self.waiting.is_empty() && self.open_locally < self.local_max) {
            self.take_in_message(p);
        } else if self.waiting.is_empty()
            || (self.waiting.len() < IN_WAITING
                && self.waiting_bytes + p.payload.len() <= IN_WAITING_BYTES)
        {
            self.waiting_bytes += p.payload.len();
            self.waiting.push_back(p);
        } else {
            if !self.overflowed {
                debug!(bridge = %self.name, "the remote sends more than the bridge takes at once; \
                    it resends the rest after a reconnect");
            }
            self.overflowed = true;
        }
    }

    /// Hands the local broker the messages waiting for it, in order, within its Receive
    /// Maximum.
    pub(super) fn pump_in(&mut self) {
        while self.open_locally < self.local_max {
            let Some(p) = self.waiting.pop_front() else {
                return;
            };
            self.waiting_bytes -= p.payload.len();
            self.take_in_message(p);
        }
    }

    /// A new message from the remote: to the local broker, or answered here when no line
    /// takes it.
    pub(super) fn take_in_message(&mut self, p: Publish) {
        let id = p.packet_id;
        // A message that went through this broker already (out over another bridge, here
        // again through the remote): not taken in a second time.
        let looped = Self::came_through(&p, Some(&self.own_node));
        let routed = if looped {
            None
        } else {
            self.routes.inbound(&p.topic, p.qos)
        };
        let Some((topic, qos)) = routed else {
            BridgeStats::add(&self.stats.dropped, 1);
            self.done_locally(id, p.qos, ReasonCode::Success);
            return;
        };
        BridgeStats::add(&self.stats.in_messages, 1);
        BridgeStats::add(&self.stats.in_bytes, p.payload.len() as u64);
        let remote_qos = p.qos;
        let publish = Publish {
            dup: p.dup && qos != QoS::AtMostOnce,
            qos,
            retain: p.retain,
            topic,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
            properties: Self::forwarded_via(&p.properties, self.remote_node.as_deref()),
            payload: p.payload,
        };
        self.sends.push(Send::Local(Packet::Publish(publish)));
        if qos == QoS::AtMostOnce {
            self.done_locally(id, remote_qos, ReasonCode::Success);
        } else {
            let e = In {
                remote_qos,
                local_qos: qos,
                state: InState::Published,
                stale: false,
            };
            self.put_in(id, e);
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the local broker.
    pub(in crate::bridge) fn local_acked(&mut self, id: u16, reason: ReasonCode) {
        self.local_answered(id, reason);
        self.pump_in();
    }

    pub(super) fn local_answered(&mut self, id: u16, reason: ReasonCode) {
        let Some(e) = self.take_in(id) else {
            return;
        };
        match e.state {
            InState::Published if e.local_qos == QoS::AtLeastOnce => {
                if e.stale {
                    return;
                }
                if e.remote_qos == QoS::AtLeastOnce && self.remote.is_none() {
                    let e = In {
                        state: InState::Answered(reason),
                        ..e
                    };
                    self.put_in(id, e);
                } else {
                    self.done_locally(id, e.remote_qos, reason);
                }
            }
            InState::Released => {
                if !e.stale {
                    // 0x92 too: the local broker completed it before (after a restart).
                    self.send_remote(Packet::PubComp(PubAck::new(id)));
                }
            }
            _ => self.put_in(id, e),
        }
    }

    /// PUBREC from the local broker.
    pub(in crate::bridge) fn local_received(&mut self, id: u16, reason: ReasonCode) {
        self.local_took(id, reason);
        self.pump_in();
    }

    pub(super) fn local_took(&mut self, id: u16, reason: ReasonCode) {
        let Some(mut e) = self.take_in(id) else {
            return;
        };
        if e.state != InState::Published || e.local_qos != QoS::ExactlyOnce {
            self.put_in(id, e);
            return;
        }
        if reason.is_error() {
            // Refused: the flow ends on both sides.
            BridgeStats::add(&self.stats.dropped, 1);
            warn!(bridge = %self.name, packet_id = id,
                reason = %crate::cli::strings::reason(reason), "the local broker refused a message");
            if !e.stale {
                self.send_remote(Packet::PubRec(PubAck::with_reason(id, reason)));
            }
            return;
        }
        if e.stale {
            self.sends
                .push(Send::Local(Packet::PubRel(PubAck::new(id))));
            e.state = InState::Released;
        } else {
            self.send_remote(Packet::PubRec(PubAck::new(id)));
            e.state = InState::Received;
        }
        self.put_in(id, e);
    }

    /// PUBREL from the remote.
    pub(in crate::bridge) fn remote_released(&mut self, id: u16) {
        match self.take_in(id) {
            Some(mut e) => match e.state {
                InState::Received => {
                    self.sends
                        .push(Send::Local(Packet::PubRel(PubAck::new(id))));
                    e.state = InState::Released;
                    self.put_in(id, e);
                }
                InState::Done => self.send_remote(Packet::PubComp(PubAck::new(id))),
                _ => self.put_in(id, e),
            },
            None => {
                // Received before this local connection (or this process): the local session
                // may still await it, and answers either way.
                self.sends
                    .push(Send::Local(Packet::PubRel(PubAck::new(id))));
                let e = In {
                    remote_qos: QoS::ExactlyOnce,
                    local_qos: QoS::ExactlyOnce,
                    state: InState::Released,
                    stale: false,
                };
                self.put_in(id, e);
            }
        }
    }

    /// A message from the remote is done with locally (delivered at a lower QoS, refused, or
    /// matching no line): acknowledged to the remote with `reason`; a QoS 2 one waits for its
    /// PUBREL.
    pub(super) fn done_locally(&mut self, id: u16, remote_qos: QoS, reason: ReasonCode) {
        match remote_qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_remote(Packet::PubAck(PubAck::with_reason(id, reason))),
            QoS::ExactlyOnce => {
                self.send_remote(Packet::PubRec(PubAck::with_reason(id, reason)));
                if !reason.is_error() {
                    let e = In {
                        remote_qos,
                        local_qos: QoS::AtMostOnce,
                        state: InState::Done,
                        stale: false,
                    };
                    self.put_in(id, e);
                }
            }
        }
    }

    /// Sends to the remote if it is there (what it misses, it asks for again on reconnecting).
    pub(super) fn send_remote(&mut self, p: Packet) {
        if self.remote.is_some() {
            self.sends.push(Send::Remote(p));
        }
    }

    pub(super) fn take_in(&mut self, id: u16) -> Option<In> {
        let e = self.incoming.remove(&id)?;
        self.open_locally -= usize::from(e.open_locally());
        self.stale -= usize::from(e.stale);
        Some(e)
    }

    pub(super) fn put_in(&mut self, id: u16, e: In) {
        self.open_locally += usize::from(e.open_locally());
        self.stale += usize::from(e.stale);
        if let Some(old) = self.incoming.insert(id, e) {
            self.open_locally -= usize::from(old.open_locally());
            self.stale -= usize::from(old.stale);
        }
    }
}
