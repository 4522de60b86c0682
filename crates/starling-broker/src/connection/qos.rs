//! Inbound PUBLISH and the QoS 1/2 acknowledgement flows in both directions, including
//! acknowledgements held until the store has committed what they acknowledge.

use crate::persist::Journal;
use std::sync::Arc;
use std::time::Instant;

use super::*;

impl Connection {
    pub(super) fn on_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Closing> {
        let broker = self.broker.clone();
        broker.metrics.publish_received.inc();
        if let Some(bucket) = &mut self.rate {
            bucket.refill(now);
            bucket.tokens -= 1.0;
        }
        let Stage::Active(a) = &mut self.stage else {
            return Ok(());
        };
        if a.version.is_v5()
            && let Some(alias) = p.properties.topic_alias
        {
            if alias == 0 || alias > broker.limits.topic_alias_maximum {
                return self.fail(ReasonCode::TopicAliasInvalid, "topic alias out of range");
            }
            if p.topic.is_empty() {
                match a.aliases.as_ref().and_then(|x| x.inbound.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.protocol_error("unknown topic alias"),
                }
            } else {
                (a.aliases.get_or_insert_default().inbound).insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return self.protocol_error("empty topic");
        }
        let pid = p.packet_id;
        let qos = p.qos;
        let retain = p.retain;
        let mut ticket = None;
        if qos == QoS::ExactlyOnce {
            let mut st = a.session.lock();
            if st.awaiting_rel.contains_key(&pid) {
                // A resend of a message already received: acknowledge, do not route again.
                drop(st);
                self.send_ack(Packet::PubRec(PubAck::new(pid)), None);
                return Ok(());
            }
            if st.awaiting_rel.len() >= usize::from(broker.limits.receive_maximum) {
                drop(st);
                broker.metrics.receive_maximum_exceeded.inc();
                return self.fail(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                );
            }
            st.awaiting_rel.insert(pid, now);
            if let Some(p) = broker.persistence()
                && st.persisted
            {
                ticket = Some(
                    p.journal
                        .push(Op::PutAwaiting(a.session.client_id.clone(), pid)),
                );
            }
        }
        let v5 = a.version.is_v5();
        let reason = if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            ReasonCode::PayloadFormatInvalid
        } else if p.topic.as_bytes().starts_with(b"$SYS") {
            ReasonCode::NotAuthorized
        } else if !access::may_publish(self.access.as_mut(), a, &p.topic) {
            // 3.x: acknowledged as usual and dropped (the spec allows nothing else).
            broker.metrics.acl_denied.inc();
            ReasonCode::NotAuthorized
        } else {
            let msg = Arc::new(Message::from_publish(p, Some(a.client_id.clone()), now));
            let routed = broker.publish(msg);
            if routed.ticket.is_some() {
                ticket = routed.ticket;
            }
            if routed.retained == Some(RetainOutcome::Full) {
                ReasonCode::QuotaExceeded
            } else if routed.reached == 0 && !retain && qos != QoS::AtMostOnce {
                ReasonCode::NoMatchingSubscribers
            } else {
                ReasonCode::Success
            }
        };
        let reason = if v5 { reason } else { ReasonCode::Success };
        self.journaled(ticket);
        match qos {
            QoS::AtMostOnce if reason == ReasonCode::PayloadFormatInvalid => {
                return self.fail(reason, "payload is not valid UTF-8");
            }
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = self.ack_with_reason(pid, reason);
                self.send_ack(Packet::PubAck(ack), ticket);
            }
            QoS::ExactlyOnce => {
                if reason.is_error()
                    && let Stage::Active(a) = &self.stage
                {
                    a.session.lock().awaiting_rel.remove(&pid);
                }
                let ack = self.ack_with_reason(pid, reason);
                self.send_ack(Packet::PubRec(ack), ticket);
            }
        }
        Ok(())
    }

    /// A PUBACK/PUBREC; failures carry a Reason String when the client allows it.
    pub(super) fn ack_with_reason(&self, pid: u16, reason: ReasonCode) -> PubAck {
        let mut ack = PubAck::with_reason(pid, reason);
        if let Stage::Active(a) = &self.stage
            && a.problem_info
            && reason.is_error()
        {
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

    /// Sends an acknowledgement, or holds it (in order) until journal `ticket` is durable.
    pub(super) fn send_ack(&mut self, packet: Packet, ticket: Option<u64>) {
        let hold = match self.broker.persistence() {
            // Held even if already failed: `release_held` turns it into a failure answer.
            Some(p) if p.journal.hold_acks() => {
                self.has_held()
                    || ticket.is_some_and(|t| p.journal.status(t) != TicketStatus::Durable)
            }
            _ => false,
        };
        if hold {
            self.held_acks()
                .queue
                .push_back((ticket.unwrap_or(0), packet));
        } else {
            self.encode(&packet);
        }
    }

    /// True while acknowledgements wait for the store.
    pub fn has_held(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.queue.is_empty())
    }

    fn held_acks(&mut self) -> &mut HeldAcks {
        self.held.get_or_insert_with(|| {
            Box::new(HeldAcks {
                queue: VecDeque::new(),
                commit_generation: u64::MAX,
                last_journaled: 0,
                pause_generation: u64::MAX,
            })
        })
    }

    /// True when so many acknowledgements wait that the client must not be read further.
    pub fn backpressured(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.queue.len() >= HELD_LIMIT)
    }

    /// Whether the broker is holding back reading this client: `backpressured`, or the
    /// condition `paused_for_store` reports (without registering anything).
    pub(super) fn reading_held_back(&self) -> bool {
        self.backpressured() || self.store_pause_ticket().is_some()
    }

    /// While the journal is at its bound: this connection's last journaled op, if it is not
    /// committed yet (what a pause waits for). `None`: no reason to pause for the store.
    fn store_pause_ticket(&self) -> Option<u64> {
        let journal = &self.broker.persistence()?.journal;
        let t = self.held.as_ref()?.last_journaled;
        (t > 0 && journal.congested() && !journal.is_done(t)).then_some(t)
    }

    /// True when the client must not be read because the journal is at its bound and this
    /// connection has journaled something not committed yet (the store is behind and this
    /// client adds to it; see `persist`). Clients that journal nothing meanwhile are still
    /// served. When true, the connection's waker is registered for the commit of its last op
    /// (at once if that has just finished), so the caller must wait on the waker; the pause is
    /// counted (once per commit) in `store_paused`. Decide once per wait from this answer:
    /// the committer changes it concurrently.
    pub fn paused_for_store(&mut self) -> bool {
        let Some(t) = self.store_pause_ticket() else {
            return false;
        };
        let Some(journal) = self.broker.persistence().map(|p| p.journal.clone()) else {
            return false;
        };
        let waker = self.waker.clone();
        let memo = &mut self.held_acks().pause_generation;
        if journal.notify_when_done(t, &waker, memo) {
            self.broker.metrics.store_paused.inc();
        }
        true
    }

    /// Sends the held acknowledgements whose commits finished. A failed commit is not
    /// acknowledged as a success: v5 clients get reason 0x80 (Unspecified error), 3.x clients,
    /// which have no way to hear it, are disconnected so they resend.
    pub fn release_held(&mut self) -> Result<(), Closing> {
        let Some(journal) = self.broker.persistence().map(|p| p.journal.clone()) else {
            return Ok(());
        };
        let Some(mut held) = self.held.take() else {
            return Ok(());
        };
        let result = self.release_from(&mut held, &journal);
        if let Some(&(ticket, _)) = held.queue.front() {
            journal.notify_when_done(ticket, &self.waker, &mut held.commit_generation);
        }
        self.held = Some(held);
        result
    }

    fn release_from(&mut self, held: &mut HeldAcks, journal: &Journal) -> Result<(), Closing> {
        while let Some(&(ticket, _)) = held.queue.front() {
            let status = if ticket == 0 {
                TicketStatus::Durable
            } else {
                journal.status(ticket)
            };
            if status == TicketStatus::Pending {
                break;
            }
            let Some((_, mut packet)) = held.queue.pop_front() else {
                break;
            };
            if status == TicketStatus::Failed {
                self.broker.metrics.store_failures_answered.inc();
                let v5 = self.version().is_v5();
                match &mut packet {
                    Packet::PubAck(a) | Packet::PubRec(a) if v5 => {
                        a.reason = ReasonCode::UnspecifiedError;
                        a.properties.reason_string = Some("could not store the message".into());
                    }
                    Packet::SubAck(s) => {
                        s.reasons
                            .iter_mut()
                            .for_each(|r| *r = ReasonCode::UnspecifiedError);
                    }
                    Packet::UnsubAck(u) if v5 => {
                        u.reasons
                            .iter_mut()
                            .for_each(|r| *r = ReasonCode::UnspecifiedError);
                    }
                    _ => {
                        return Err(Closing::new(
                            ReasonCode::UnspecifiedError,
                            "store commit failed",
                        ));
                    }
                }
                if let (Packet::PubRec(a), Stage::Active(act)) = (&packet, &self.stage) {
                    act.session.lock().awaiting_rel.remove(&a.packet_id);
                }
            }
            self.encode(&packet);
        }
        Ok(())
    }

    /// Journals `op` if the broker has a store and the session is persistent.
    pub(super) fn journal_op(&mut self, persisted: bool, op: impl FnOnce() -> Op) -> Option<u64> {
        let p = self.broker.persistence()?;
        let ticket = persisted.then(|| p.journal.push(op()));
        self.journaled(ticket);
        ticket
    }

    /// Notes that this connection's work journaled up to `ticket`: while that is not
    /// committed and the journal is at its bound, the client is not read.
    pub(super) fn journaled(&mut self, ticket: Option<u64>) {
        if let Some(t) = ticket {
            let held = self.held_acks();
            held.last_journaled = held.last_journaled.max(t);
        }
    }

    pub(super) fn on_puback(&mut self, pid: u16) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let (persisted, seq) =
            {
                let mut st = a.session.lock();
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
        let id = a.session.client_id.clone();
        self.journal_op(persisted && seq != 0, || Op::DeleteMessage(id, seq));
    }

    pub(super) fn on_pubrec(&mut self, ack: PubAck) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let id = a.session.client_id.clone();
        let (found, persisted, seq) = {
            let mut st = a.session.lock();
            let persisted = st.persisted;
            match st.inflight_position(ack.packet_id) {
                Some(i) if ack.reason.is_error() => {
                    let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
                    drop(st);
                    self.journal_op(persisted && seq != 0, || Op::DeleteMessage(id, seq));
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
        let ticket = self.journal_op(found && persisted && seq != 0, || {
            Op::SetPhase(id, seq, MessagePhase::Released, pid)
        });
        let reason = if found {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        // PUBREL only once the phase is stored: after a restart the broker must not send the
        // PUBLISH again for a message the client already has.
        self.send_ack(Packet::PubRel(PubAck::with_reason(pid, reason)), ticket);
    }

    pub(super) fn on_pubcomp(&mut self, pid: u16) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let (persisted, seq) = {
            let mut st = a.session.lock();
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
        let id = a.session.client_id.clone();
        self.journal_op(persisted && seq != 0, || Op::DeleteMessage(id, seq));
    }

    pub(super) fn on_pubrel(&mut self, pid: u16) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let (known, persisted) = {
            let mut st = a.session.lock();
            (st.awaiting_rel.remove(&pid).is_some(), st.persisted)
        };
        let id = a.session.client_id.clone();
        // PUBCOMP only once the id is forgotten on disk too, or a restart would take the
        // client's next message with this id for a resend and drop it.
        let ticket = self.journal_op(known && persisted, || Op::DeleteAwaiting(id, pid));
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send_ack(Packet::PubComp(PubAck::with_reason(pid, reason)), ticket);
    }
}
