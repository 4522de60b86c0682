//! Inbound PUBLISH and the QoS 1/2 acknowledgement flows in both directions: PUBACK /
//! PUBREC / PUBREL / PUBCOMP from the client for what the broker sent, and the broker's
//! answers to what the client published.

use std::ops::ControlFlow;
use std::sync::Arc;

use starling_proto::{Packet, PubAck, Publish, QoS, ReasonCode, TopicName};

use super::active::Active;
use super::hooked::Published;
use super::{Cx, Flow, access};
use crate::hook::{self, DropReason, Event};
use crate::message::Message;
use crate::persist::Ops;
use crate::retain::{Replication, RetainOutcome};
use crate::session::{Ack, PubRec, Qos2Receive};

impl Active {
    pub(super) fn on_publish(&mut self, cx: &mut Cx<'_>, mut p: Publish) -> Flow {
        self.resolve_alias(cx, &mut p)?;
        // Authorized first, before anything happens: a check answered later parks the
        // PUBLISH (its alias already resolved), and it is handled again from here.
        let allowed = match access::may_publish(cx.link.access.as_mut(), self, &p.topic) {
            access::Asked::Now(allowed) => allowed,
            access::Asked::Parked => {
                cx.park(Packet::Publish(p));
                return ControlFlow::Continue(());
            }
        };
        // Counted as received as the client sent it; the acknowledgement flow is that of
        // its QoS whatever a hook makes of it.
        let (pid, qos, size) = (p.packet_id, p.qos, p.payload.len());
        // Then the hooks (on a new message: a QoS 2 resend was seen by them already), which
        // may change, drop or take it, and may park it the same way.
        let (p, stopped) = if allowed
            && cx.broker.hooks().wants(Event::Publish)
            && !(qos == QoS::ExactlyOnce && self.session.lock().is_awaiting_release(pid))
        {
            match self.publish_hooks(cx, p) {
                Published::Route(p) => (Some(p), None),
                Published::Stopped(reason) => (None, Some(reason)),
                Published::Parked => return ControlFlow::Continue(()),
            }
        } else {
            (Some(p), None)
        };
        let broker = cx.broker;
        let m = &broker.metrics;
        m.publish_received.inc();
        m.publish_received_by_qos.of(qos).inc();
        m.payload_received_by_qos.of(qos).add(size as u64);
        self.info.counters.received(size);
        if let Some(rate) = &mut self.rate {
            rate.bucket.take(cx.now);
        }
        let mut ops = broker.ops();
        if qos == QoS::ExactlyOnce {
            let max = usize::from(broker.limits.receive_maximum);
            let received = (self.session.lock()).receive_qos2(pid, cx.now, max, &mut ops);
            match received {
                Qos2Receive::New => {}
                Qos2Receive::Duplicate => {
                    // A resend of a message already received: acknowledge, do not route again;
                    // once the original is stored (whose ticket an earlier connection may
                    // have had).
                    let ticket = Self::everything_so_far(cx);
                    self.send_ack(cx, Packet::PubRec(PubAck::new(pid)), ticket);
                    return ControlFlow::Continue(());
                }
                Qos2Receive::Full => {
                    broker.metrics.receive_maximum_exceeded.inc();
                    let reason = ReasonCode::ReceiveMaximumExceeded;
                    return self.fail(cx, reason, "receive maximum exceeded");
                }
            }
        }
        let low_space = qos != QoS::AtMostOnce && broker.store_low_on_space();
        // What a cluster does later (commit the retained copy, store the message on the other
        // nodes): the acknowledgement waits for it.
        let mut replication = Vec::new();
        let reason = if low_space {
            // Not routed: the store is near full and takes no new messages (what frees space
            // still commits). 3.x cannot be told: closed, unacknowledged, so it resends.
            broker.metrics.publishes_refused_low_space.inc();
            if !self.version.is_v5() {
                if qos == QoS::ExactlyOnce {
                    self.session.lock().refuse_qos2(pid, &mut ops);
                    self.persisted(cx, &mut ops);
                }
                let reason = ReasonCode::QuotaExceeded;
                return self.fail(cx, reason, "the broker's disk is low on space");
            }
            ReasonCode::QuotaExceeded
        } else {
            match (p, stopped) {
                (Some(p), _) => {
                    let (reason, pending) = self.route(cx, p, allowed, &mut ops);
                    replication = pending;
                    reason
                }
                (None, reason) => reason.unwrap_or(ReasonCode::Success),
            }
        };
        let reason = if self.version.is_v5() {
            reason
        } else {
            ReasonCode::Success
        };
        if qos == QoS::ExactlyOnce && reason.is_error() {
            // Refused: the id does not await PUBREL, so the client may use it again.
            self.session.lock().refuse_qos2(pid, &mut ops);
        }
        let (ticket, grouped) = self.persisted_publish(cx, &mut ops);
        match qos {
            QoS::AtMostOnce if reason == ReasonCode::PayloadFormatInvalid => {
                return self.fail(cx, reason, "payload is not valid UTF-8");
            }
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = Packet::PubAck(self.ack_with_reason(pid, reason, low_space));
                if replication.is_empty() {
                    self.send_ack_grouped(cx, ack, ticket, grouped);
                } else {
                    self.send_ack_replicated(cx, ack, ticket, replication);
                }
            }
            QoS::ExactlyOnce => {
                let ack = Packet::PubRec(self.ack_with_reason(pid, reason, low_space));
                if replication.is_empty() {
                    self.send_ack(cx, ack, ticket);
                } else {
                    self.send_ack_replicated(cx, ack, ticket, replication);
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Replaces an inbound topic alias by its topic, or records a new one (v5). A client's
    /// PUBLISH may not carry a Subscription Identifier (MQTT-3.3.4-6).
    fn resolve_alias(&mut self, cx: &mut Cx<'_>, p: &mut Publish) -> Flow {
        if !p.properties.subscription_identifiers.is_empty() {
            return self.protocol_error(cx, "subscription identifier in a client's PUBLISH");
        }
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

    /// Checks and routes a publish (what it stores goes into `ops`; `allowed`: the ACL's
    /// answer): the reason code for its acknowledgement, and what of a cluster's work the
    /// acknowledgement must wait for (the retained copy's commit, the other nodes storing it).
    fn route(
        &mut self,
        cx: &mut Cx<'_>,
        p: Publish,
        allowed: bool,
        ops: &mut Ops<'_>,
    ) -> (ReasonCode, Vec<Arc<Replication>>) {
        let broker = cx.broker;
        let (qos, retain) = (p.qos, p.retain);
        if self.version.is_v5()
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            return (ReasonCode::PayloadFormatInvalid, Vec::new());
        }
        if p.topic.as_bytes().starts_with(b"$SYS")
            && !self.own_bridge_state(&p.topic)
            && !self.own_bridge_sys(cx, &p.topic)
        {
            return (ReasonCode::NotAuthorized, Vec::new());
        }
        if !allowed {
            // 3.x: acknowledged as usual and dropped (the spec allows nothing else).
            broker.metrics.acl_denied.inc();
            self.log_denial(cx, "publish", p.topic.as_str());
            if broker.hooks().wants(Event::Dropped) {
                let msg = Message::from_publish(p, None, cx.now);
                let e = hook::drop_event(Some(self.client_id()), &msg, DropReason::NotAuthorized);
                broker.hooks().dropped(&e);
            }
            return (ReasonCode::NotAuthorized, Vec::new());
        }
        let publisher = Some(self.client_id().clone());
        let msg = Arc::new(Message::from_publish(p, publisher, cx.now));
        let wants_dropped = broker.hooks().wants(Event::Dropped);
        // A QoS 0 message joins the run of this read's messages to its topic (`run.rs`);
        // the first to a topic is routed alone, and what it reaches is learnt.
        let mut learn = None;
        if let Some(run) = cx.run.as_deref_mut() {
            let joins = qos == QoS::AtMostOnce && !retain && !wants_dropped;
            if !joins || !run.takes(&msg) {
                // Routed after the messages before it.
                self.turn.count(run.route(broker));
            }
            if joins && run.knows(&msg.topic) {
                run.push(msg);
                if run.is_full(self.turn.room()) {
                    self.turn.count(run.route(broker));
                }
                return (ReasonCode::Success, Vec::new());
            }
            if joins {
                learn = Some(msg.topic.clone());
            }
        }
        // Kept for the hooks only if one wants to hear of a drop.
        let kept = wants_dropped.then(|| msg.clone());
        let routed = broker.publish(msg, ops);
        // Counted toward this connection's turn (`turn.rs`).
        self.turn.count(routed.reached);
        if let (Some(topic), Some(run)) = (learn, cx.run.as_deref_mut()) {
            run.learn(topic, routed.reached);
        }
        if routed.reached + routed.forwarded == 0 {
            broker.metrics.dropped_no_subscriber.inc();
            if let Some(msg) = kept.filter(|_| !retain) {
                let e = hook::drop_event(Some(self.client_id()), &msg, DropReason::NoSubscriber);
                broker.hooks().dropped(&e);
            }
        }
        let reason = if routed.retained.as_ref().is_some_and(RetainOutcome::is_full) {
            ReasonCode::QuotaExceeded
        } else if routed.reached + routed.forwarded == 0 && !retain && qos != QoS::AtMostOnce {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        let mut pending = routed.awaiting;
        if let Some(RetainOutcome::Pending(r)) = routed.retained {
            pending.push(r);
        }
        (reason, pending)
    }

    /// Whether `topic` is `$SYS/broker/connection/{this client's id}/state`, where a broker
    /// bridging in publishes its bridge's state (and sets it as its will): the one `$SYS`
    /// topic a client may publish to.
    pub(super) fn own_bridge_state(&self, topic: &TopicName) -> bool {
        let id = self.client_id().as_bytes();
        topic
            .as_bytes()
            .strip_prefix(b"$SYS/broker/connection/")
            .and_then(|rest| rest.strip_prefix(id))
            .is_some_and(|rest| rest == b"/state")
    }

    /// Whether `topic` is under `$SYS/broker/bridge/{name}/` and this is that bridge's own
    /// local connection (internal, client id `$bridge/{name}`): where it reports its state.
    fn own_bridge_sys(&self, cx: &Cx<'_>, topic: &TopicName) -> bool {
        let internal = cx.link.access.as_ref().is_some_and(|a| a.listener.internal);
        let Some(name) = self.client_id().strip_prefix("$bridge/") else {
            return false;
        };
        internal
            && topic
                .as_str()
                .strip_prefix("$SYS/broker/bridge/")
                .and_then(|rest| rest.strip_prefix(name))
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// A PUBACK/PUBREC; failures carry a Reason String when the client allows it.
    fn ack_with_reason(&self, pid: u16, reason: ReasonCode, low_space: bool) -> PubAck {
        let mut ack = PubAck::with_reason(pid, reason);
        if self.problem_info && reason.is_error() {
            ack.properties.reason_string = Some(
                match reason {
                    ReasonCode::PayloadFormatInvalid => "payload is not valid UTF-8",
                    ReasonCode::NotAuthorized => "not authorized to publish to this topic",
                    ReasonCode::QuotaExceeded if low_space => "the broker's disk is low on space",
                    ReasonCode::QuotaExceeded => "retained message store is full",
                    _ => "publish refused",
                }
                .to_string(),
            );
        }
        ack
    }

    pub(super) fn on_puback(&mut self, cx: &mut Cx<'_>, pid: u16) -> Flow {
        let mut ops = cx.broker.ops();
        let ack = self.session.lock().puback(pid, &mut ops);
        self.persisted(cx, &mut ops);
        if ack == Ack::Done {
            self.acked_event(cx, pid, QoS::AtLeastOnce);
        }
        self.check_ack(
            cx,
            ack == Ack::WrongKind,
            "PUBACK for a message that is not QoS 1",
        )
    }

    /// An acknowledgement of the wrong kind for its message: a protocol error (DISCONNECT
    /// 0x82, or a 3.x close); the session keeps the message for the reconnect.
    fn check_ack(&self, cx: &mut Cx<'_>, wrong: bool, detail: &str) -> Flow {
        if wrong {
            return self.protocol_error(cx, detail);
        }
        ControlFlow::Continue(())
    }

    pub(super) fn on_pubrec(&mut self, cx: &mut Cx<'_>, ack: PubAck) -> Flow {
        let pid = ack.packet_id;
        let mut ops = cx.broker.ops();
        let refused = ack.reason.is_error();
        let outcome = self.session.lock().pubrec(pid, refused, &mut ops);
        let ticket = self.persisted(cx, &mut ops);
        let reason = match outcome {
            PubRec::Released => ReasonCode::Success,
            PubRec::Unknown => ReasonCode::PacketIdentifierNotFound,
            PubRec::Ended => return ControlFlow::Continue(()),
            PubRec::WrongKind => {
                return self.protocol_error(cx, "PUBREC for a message that is not QoS 2");
            }
        };
        // PUBREL only once the phase is stored: after a restart the broker must not send the
        // PUBLISH again for a message the client already has.
        self.send_ack(cx, Packet::PubRel(PubAck::with_reason(pid, reason)), ticket);
        ControlFlow::Continue(())
    }

    pub(super) fn on_pubcomp(&mut self, cx: &mut Cx<'_>, pid: u16) -> Flow {
        let mut ops = cx.broker.ops();
        let ack = self.session.lock().pubcomp(pid, &mut ops);
        if ack == Ack::Done {
            self.acked_event(cx, pid, QoS::ExactlyOnce);
        }
        self.persisted(cx, &mut ops);
        let detail = "PUBCOMP for a message whose PUBREL was not sent";
        self.check_ack(cx, ack == Ack::WrongKind, detail)
    }

    pub(super) fn on_pubrel(&mut self, cx: &mut Cx<'_>, pid: u16) {
        let mut ops = cx.broker.ops();
        let known = self.session.lock().pubrel(pid, &mut ops);
        // PUBCOMP only once the id is forgotten on disk too, or a restart would take the
        // client's next message with this id for a resend and drop it.
        let ticket = self.persisted(cx, &mut ops);
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
