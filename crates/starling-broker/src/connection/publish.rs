//! Inbound PUBLISH and the QoS 1/2 acknowledgement flows in both directions: PUBACK /
//! PUBREC / PUBREL / PUBCOMP from the client for what the broker sent, and the broker's
//! answers to what the client published.

use std::ops::ControlFlow;
use std::sync::Arc;

use starling_proto::{Packet, PubAck, Publish, QoS, ReasonCode};
use starling_store::{MessagePhase, Op};

use super::active::Active;
use super::{Cx, Flow, access};
use crate::message::Message;
use crate::retain::RetainOutcome;
use crate::session::Phase;

impl Active {
    pub(super) fn on_publish(&mut self, cx: &mut Cx<'_>, mut p: Publish) -> Flow {
        let broker = cx.broker;
        broker.metrics.publish_received.inc();
        if let Some(rate) = &mut self.rate {
            rate.bucket.take(cx.now);
        }
        self.resolve_alias(cx, &mut p)?;
        let pid = p.packet_id;
        let qos = p.qos;
        let mut ticket = None;
        if qos == QoS::ExactlyOnce {
            let mut st = self.session.lock();
            if st.awaiting_rel.contains_key(&pid) {
                // A resend of a message already received: acknowledge, do not route again.
                drop(st);
                self.send_ack(cx, Packet::PubRec(PubAck::new(pid)), None);
                return ControlFlow::Continue(());
            }
            if st.awaiting_rel.len() >= usize::from(broker.limits.receive_maximum) {
                drop(st);
                broker.metrics.receive_maximum_exceeded.inc();
                let reason = ReasonCode::ReceiveMaximumExceeded;
                return self.fail(cx, reason, "receive maximum exceeded");
            }
            st.awaiting_rel.insert(pid, cx.now);
            if let Some(p) = broker.persistence()
                && st.persisted
            {
                let op = Op::PutAwaiting(self.session.client_id.clone(), pid);
                ticket = Some(p.journal.push(op));
            }
        }
        let (reason, routed_ticket) = self.route(cx, p);
        ticket = routed_ticket.or(ticket);
        let reason = if self.version.is_v5() {
            reason
        } else {
            ReasonCode::Success
        };
        self.journaled(ticket);
        match qos {
            QoS::AtMostOnce if reason == ReasonCode::PayloadFormatInvalid => {
                return self.fail(cx, reason, "payload is not valid UTF-8");
            }
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = self.ack_with_reason(pid, reason);
                self.send_ack(cx, Packet::PubAck(ack), ticket);
            }
            QoS::ExactlyOnce => {
                if reason.is_error() {
                    self.session.lock().awaiting_rel.remove(&pid);
                }
                let ack = self.ack_with_reason(pid, reason);
                self.send_ack(cx, Packet::PubRec(ack), ticket);
            }
        }
        ControlFlow::Continue(())
    }

    /// Replaces an inbound topic alias by its topic, or records a new one (v5).
    fn resolve_alias(&mut self, cx: &mut Cx<'_>, p: &mut Publish) -> Flow {
        if self.version.is_v5()
            && let Some(alias) = p.properties.topic_alias
        {
            if alias == 0 || alias > cx.broker.limits.topic_alias_maximum {
                return self.fail(
                    cx,
                    ReasonCode::TopicAliasInvalid,
                    "topic alias out of range",
                );
            }
            if p.topic.is_empty() {
                match self.aliases.as_ref().and_then(|x| x.inbound.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.protocol_error(cx, "unknown topic alias"),
                }
            } else {
                (self.aliases.get_or_insert_default().inbound).insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return self.protocol_error(cx, "empty topic");
        }
        ControlFlow::Continue(())
    }

    /// Checks and routes a publish: the reason code for its acknowledgement, and the journal
    /// ticket of what routing it stored.
    fn route(&mut self, cx: &mut Cx<'_>, p: Publish) -> (ReasonCode, Option<u64>) {
        let broker = cx.broker;
        let (qos, retain) = (p.qos, p.retain);
        if self.version.is_v5()
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            return (ReasonCode::PayloadFormatInvalid, None);
        }
        if p.topic.as_bytes().starts_with(b"$SYS") {
            return (ReasonCode::NotAuthorized, None);
        }
        if !access::may_publish(cx.link.access.as_mut(), self, &p.topic) {
            // 3.x: acknowledged as usual and dropped (the spec allows nothing else).
            broker.metrics.acl_denied.inc();
            return (ReasonCode::NotAuthorized, None);
        }
        let publisher = Some(self.client_id.clone());
        let msg = Arc::new(Message::from_publish(p, publisher, cx.now));
        let routed = broker.publish(msg);
        let reason = if routed.retained == Some(RetainOutcome::Full) {
            ReasonCode::QuotaExceeded
        } else if routed.reached == 0 && !retain && qos != QoS::AtMostOnce {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        (reason, routed.ticket)
    }

    /// A PUBACK/PUBREC; failures carry a Reason String when the client allows it.
    fn ack_with_reason(&self, pid: u16, reason: ReasonCode) -> PubAck {
        let mut ack = PubAck::with_reason(pid, reason);
        if self.problem_info && reason.is_error() {
            ack.properties.reason_string = Some(
                match reason {
                    ReasonCode::PayloadFormatInvalid => "payload is not valid UTF-8",
                    ReasonCode::NotAuthorized => "not authorized to publish to this topic",
                    ReasonCode::QuotaExceeded => "retained message store is full",
                    _ => "publish refused",
                }
                .to_string(),
            );
        }
        ack
    }

    pub(super) fn on_puback(&mut self, cx: &mut Cx<'_>, pid: u16) {
        let (persisted, seq) =
            {
                let mut st = self.session.lock();
                let Some(i) = st.inflight_position(pid) else {
                    return;
                };
                if !st.inflight.get(i).is_some_and(|f| {
                    f.phase == Phase::Published && f.delivery.qos == QoS::AtLeastOnce
                }) {
                    return;
                }
                let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
                (st.persisted, seq)
            };
        let id = self.session.client_id.clone();
        self.journal_op(cx, persisted && seq != 0, || Op::DeleteMessage(id, seq));
    }

    pub(super) fn on_pubrec(&mut self, cx: &mut Cx<'_>, ack: PubAck) {
        let id = self.session.client_id.clone();
        let (found, persisted, seq) = {
            let mut st = self.session.lock();
            let persisted = st.persisted;
            match st.inflight_position(ack.packet_id) {
                Some(i) if ack.reason.is_error() => {
                    let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
                    drop(st);
                    self.journal_op(cx, persisted && seq != 0, || Op::DeleteMessage(id, seq));
                    return;
                }
                Some(i) => match st.inflight.get_mut(i) {
                    Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                        f.phase = Phase::Released;
                        (true, persisted, f.delivery.seq)
                    }
                    _ => (false, persisted, 0),
                },
                None => (false, persisted, 0),
            }
        };
        let pid = ack.packet_id;
        let ticket = self.journal_op(cx, found && persisted && seq != 0, || {
            Op::SetPhase(id, seq, MessagePhase::Released, pid)
        });
        let reason = if found {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        // PUBREL only once the phase is stored: after a restart the broker must not send the
        // PUBLISH again for a message the client already has.
        self.send_ack(cx, Packet::PubRel(PubAck::with_reason(pid, reason)), ticket);
    }

    pub(super) fn on_pubcomp(&mut self, cx: &mut Cx<'_>, pid: u16) {
        let (persisted, seq) = {
            let mut st = self.session.lock();
            let Some(i) = st.inflight_position(pid) else {
                return;
            };
            if !st
                .inflight
                .get(i)
                .is_some_and(|f| f.phase == Phase::Released)
            {
                return;
            }
            let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
            (st.persisted, seq)
        };
        let id = self.session.client_id.clone();
        self.journal_op(cx, persisted && seq != 0, || Op::DeleteMessage(id, seq));
    }

    pub(super) fn on_pubrel(&mut self, cx: &mut Cx<'_>, pid: u16) {
        let (known, persisted) = {
            let mut st = self.session.lock();
            (st.awaiting_rel.remove(&pid).is_some(), st.persisted)
        };
        let id = self.session.client_id.clone();
        // PUBCOMP only once the id is forgotten on disk too, or a restart would take the
        // client's next message with this id for a resend and drop it.
        let ticket = self.journal_op(cx, known && persisted, || Op::DeleteAwaiting(id, pid));
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send_ack(
            cx,
            Packet::PubComp(PubAck::with_reason(pid, reason)),
            ticket,
        );
    }
}
