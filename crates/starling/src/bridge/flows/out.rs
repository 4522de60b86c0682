//! The out direction of the flows: from the local broker to the remote.

use super::*;

impl Flows {
    // --- Out: from the local broker to the remote --------------------------------------

    /// A PUBLISH from the local broker.
    pub(in crate::bridge) fn local_publish(&mut self, p: Publish) {
        let (id, local_qos) = (p.packet_id, p.qos);
        if local_qos != QoS::AtMostOnce && self.out.iter().any(|o| o.id == id) {
            // The local broker reuses an id only once its flow is complete here.
            warn!(bridge = %self.name, packet_id = id, "the local broker resent a message in flight; ignored");
            return;
        }
        let looped = Self::came_through(&p, self.remote_node.as_deref());
        if looped {
            debug!(bridge = %self.name, topic = p.topic.as_str(), "not sent back to the broker it came through");
        }
        let routed = if looped {
            None
        } else {
            self.routes.outbound(&p.topic, p.qos)
        };
        let Some((topic, qos)) = routed else {
            // A subscription left from an older configuration, or a message that came
            // through the remote (another bridge brought it here): done with here.
            BridgeStats::add(&self.stats.dropped, 1);
            self.out.push_back(Out {
                id,
                local_qos,
                publish: None,
                state: OutState::Finishing,
            });
            let last = self.out.len() - 1;
            self.finish_locally(last, ReasonCode::Success);
            return;
        };
        let publish = Publish {
            dup: p.dup && qos != QoS::AtMostOnce,
            qos,
            retain: p.retain,
            topic,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
            properties: Self::forwarded_via(&p.properties, Some(&self.own_node)),
            payload: p.payload,
        };
        self.out.push_back(Out {
            id,
            local_qos,
            publish: Some(publish),
            state: OutState::Waiting,
        });
        self.pump();
    }

    /// PUBREL from the local broker.
    pub(in crate::bridge) fn local_released(&mut self, id: u16) {
        match self.find_out(id) {
            Some((i, state, _)) => match state {
                OutState::Received => self.set_out(i, OutState::Releasing),
                OutState::Finishing => {
                    self.out.remove(i);
                    self.sends
                        .push(Send::Local(Packet::PubComp(PubAck::new(id))));
                }
                OutState::Releasing | OutState::Released => {}
                OutState::Waiting | OutState::Published => {
                    warn!(bridge = %self.name, packet_id = id,
                        "the local broker released a message the remote has not received; ignored");
                }
            },
            // Released before this local connection (it resends PUBREL on resuming): the
            // remote holds the message under this id, or completed it and will say so (0x92).
            None => self.out.push_back(Out {
                id,
                local_qos: QoS::ExactlyOnce,
                publish: None,
                state: OutState::Releasing,
            }),
        }
        self.pump();
    }

    /// PUBACK or PUBCOMP from the remote.
    pub(in crate::bridge) fn remote_acked(&mut self, id: u16, reason: ReasonCode) {
        let Some((i, state, remote_qos)) = self.find_out(id) else {
            debug!(bridge = %self.name, packet_id = id, "acknowledgement of nothing in flight");
            return;
        };
        match (state, remote_qos) {
            (OutState::Published, QoS::AtLeastOnce) => {
                if reason.is_error() {
                    self.refused(i, reason);
                } else {
                    self.count_out(i);
                }
                self.finish_locally(i, reason);
            }
            (OutState::Released, _) => {
                // 0x92 too: the remote completed it before (its PUBCOMP was lost).
                self.out.remove(i);
                self.sends
                    .push(Send::Local(Packet::PubComp(PubAck::new(id))));
            }
            _ => {
                debug!(bridge = %self.name, packet_id = id, "acknowledgement of the wrong kind; ignored");
            }
        }
        self.pump();
    }

    /// PUBREC from the remote.
    pub(in crate::bridge) fn remote_received(&mut self, id: u16, reason: ReasonCode) {
        let Some((i, state, remote_qos)) = self.find_out(id) else {
            // Not released by the bridge: releasing what it does not know could publish a
            // message the remote holds under another flow's id.
            debug!(bridge = %self.name, packet_id = id, "PUBREC for nothing in flight; ignored");
            return;
        };
        match state {
            OutState::Published if remote_qos == QoS::ExactlyOnce => {
                if reason.is_error() {
                    self.refused(i, reason);
                    self.out.remove(i);
                    self.sends
                        .push(Send::Local(Packet::PubRec(PubAck::with_reason(id, reason))));
                } else {
                    self.count_out(i);
                    self.set_out(i, OutState::Received);
                    self.sends
                        .push(Send::Local(Packet::PubRec(PubAck::new(id))));
                }
            }
            // The PUBREL went missing: again.
            OutState::Releasing | OutState::Released => self.set_out(i, OutState::Releasing),
            _ => {}
        }
        self.pump();
    }

    /// The message at `i` is done with at the remote (or goes nowhere): acknowledged locally
    /// with `reason`; a local QoS 2 message waits for its PUBREL.
    pub(super) fn finish_locally(&mut self, i: usize, reason: ReasonCode) {
        let Some(o) = self.out.get_mut(i) else {
            return;
        };
        let id = o.id;
        match o.local_qos {
            QoS::AtMostOnce => {
                self.out.remove(i);
            }
            QoS::AtLeastOnce => {
                self.out.remove(i);
                self.sends
                    .push(Send::Local(Packet::PubAck(PubAck::with_reason(id, reason))));
            }
            QoS::ExactlyOnce => {
                o.state = OutState::Finishing;
                o.publish = None;
                if reason.is_error() {
                    self.out.remove(i);
                }
                self.sends
                    .push(Send::Local(Packet::PubRec(PubAck::with_reason(id, reason))));
            }
        }
    }

    /// Sends what waits, within the remote's window, in order: QoS 0 at once, QoS 1 and 2
    /// while the window has room and their id is not the SUBSCRIBE's, PUBREL whenever due.
    pub(super) fn pump(&mut self) {
        let Some(r) = &self.remote else {
            self.publish_pending();
            return;
        };
        let (window, subscribing) = (r.window, r.subscribing);
        let mut at_remote = self.out.iter().filter(|o| o.at_remote()).count();
        let mut blocked = false;
        let mut i = 0;
        while let Some(o) = self.out.get_mut(i) {
            match (o.state, &mut o.publish) {
                (OutState::Waiting, Some(p)) if p.qos == QoS::AtMostOnce => {
                    self.sends.push(Send::Remote(Packet::Publish(p.clone())));
                    self.count_out(i);
                    let before = self.out.len();
                    self.finish_locally(i, ReasonCode::Success);
                    if self.out.len() < before {
                        continue;
                    }
                }
                (OutState::Waiting, Some(p)) => {
                    if blocked || at_remote >= window || subscribing == Some(p.packet_id) {
                        blocked = true;
                    } else {
                        self.sends.push(Send::Remote(Packet::Publish(p.clone())));
                        // Any later copy is a resend.
                        p.dup = true;
                        o.state = OutState::Published;
                        at_remote += 1;
                    }
                }
                (OutState::Releasing, _) => {
                    let rel = Packet::PubRel(PubAck::new(o.id));
                    self.sends.push(Send::Remote(rel));
                    o.state = OutState::Released;
                }
                _ => {}
            }
            i += 1;
        }
        self.publish_pending();
    }

    /// The message on its way out under `id`: its place, state and QoS at the remote.
    pub(super) fn find_out(&self, id: u16) -> Option<(usize, OutState, QoS)> {
        if id == 0 {
            return None;
        }
        let i = self.out.iter().position(|o| o.id == id)?;
        let o = self.out.get(i)?;
        Some((i, o.state, o.remote_qos()))
    }

    pub(super) fn set_out(&mut self, i: usize, state: OutState) {
        if let Some(o) = self.out.get_mut(i) {
            o.state = state;
        }
    }

    pub(super) fn count_out(&self, i: usize) {
        if let Some(p) = self.out.get(i).and_then(|o| o.publish.as_ref()) {
            BridgeStats::add(&self.stats.out_messages, 1);
            BridgeStats::add(&self.stats.out_bytes, p.payload.len() as u64);
        }
    }

    pub(super) fn refused(&self, i: usize, reason: ReasonCode) {
        BridgeStats::add(&self.stats.dropped, 1);
        if let Some(p) = self.out.get(i).and_then(|o| o.publish.as_ref()) {
            warn!(bridge = %self.name, topic = %p.topic.as_str(),
                reason = %crate::cli::strings::reason(reason), "the remote refused a message");
        }
    }

    /// Messages handed over by the local broker and not yet taken by the remote.
    pub(super) fn publish_pending(&self) {
        let n = self
            .out
            .iter()
            .filter(|o| o.state != OutState::Finishing)
            .count();
        self.stats.pending.store(n as u64, Ordering::Relaxed);
    }
}
