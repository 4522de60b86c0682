//! The QoS 1/2 flows as the session sees them: packet identifiers, the outbound inflight
//! window (sent, PUBACK, PUBREC, PUBCOMP), inbound QoS 2 ids awaiting PUBREL, and the store
//! records each step changes in a persistent session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use starling_proto::QoS;
use starling_store::{MessagePhase, Op};

use super::{Inflight, Locked, Phase};
use crate::message::Delivery;
use crate::persist::Ops;

/// What an inbound QoS 2 PUBLISH is to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos2Receive {
    /// New: its id now awaits PUBREL; route the message.
    New,
    /// A resend of a message already received (its id awaits PUBREL): acknowledge only.
    Duplicate,
    /// The client has more unreleased QoS 2 messages than the broker's Receive Maximum.
    Full,
}

/// Inbound QoS 2 packet ids that got PUBREC and await PUBREL, with when they arrived. The map
/// is allocated on the first one and released with the last: most clients never publish at
/// QoS 2, and every session holds this (8 bytes, where an empty map is 48).
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // on purpose: see above
pub(super) struct AwaitingRel(Option<Box<HashMap<u16, Instant>>>);

impl AwaitingRel {
    pub(super) fn contains_key(&self, packet_id: &u16) -> bool {
        self.0.as_ref().is_some_and(|m| m.contains_key(packet_id))
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn insert(&mut self, packet_id: u16, at: Instant) {
        self.0.get_or_insert_default().insert(packet_id, at);
    }

    pub(super) fn remove(&mut self, packet_id: &u16) -> Option<Instant> {
        let m = self.0.as_mut()?;
        let at = m.remove(packet_id);
        if m.is_empty() {
            self.0 = None;
        }
        at
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u16, &Instant)> + '_ {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &u16> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub(super) fn clear(&mut self) {
        self.0 = None;
    }
}

/// What a PUBACK or PUBCOMP did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The message's flow is complete.
    Done,
    /// No message in flight has that packet id (ignored: a late duplicate).
    Unknown,
    /// The message with that id waits for another acknowledgement: a protocol error.
    WrongKind,
}

/// What a PUBREC did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubRec {
    /// The message is released: send PUBREL.
    Released,
    /// No QoS 2 message awaits PUBREC with that id: PUBREL 0x92 (Packet Identifier not found).
    Unknown,
    /// The client refused the message (error reason): the flow ends, no PUBREL.
    Ended,
    /// The message with that id is QoS 1: a protocol error.
    WrongKind,
}

impl Locked<'_> {
    /// Allocates a packet identifier not used by any inflight message.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.st.next_packet_id;
            self.st.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.st.inflight.contains(id) {
                return id;
            }
        }
    }

    /// A delivery was sent with `packet_id`: a QoS 1/2 one enters the inflight window (its
    /// record, if stored, moves to the published phase).
    #[inline]
    pub fn sent(&mut self, d: Delivery, packet_id: u16, ops: &mut Ops<'_>) {
        if d.qos == QoS::AtMostOnce {
            return;
        }
        if d.seq != 0 && self.st.persisted {
            let (id, seq) = (self.client_id().clone(), d.seq);
            ops.push(|_| Op::SetPhase(id, seq, MessagePhase::Published, packet_id));
        }
        self.st.inflight.push_back(Inflight {
            packet_id,
            delivery: d,
            phase: Phase::Published,
        });
    }

    /// The inflight window, in send order (for resending on resume).
    pub fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.st.inflight.iter()
    }

    /// Removes the inflight message with `packet_id`, deleting its record.
    pub fn forget_inflight(&mut self, packet_id: u16, ops: &mut Ops<'_>) {
        let Some(i) = self.st.inflight.position(packet_id) else {
            return;
        };
        if let Some(mut f) = self.st.inflight.remove(i) {
            self.forget_record(&mut f.delivery, ops);
        }
    }

    /// PUBACK: completes a QoS 1 message. An unknown id is ignored (a late duplicate); a
    /// PUBACK for a QoS 2 message is the wrong acknowledgement, and changes nothing.
    pub fn puback(&mut self, packet_id: u16, ops: &mut Ops<'_>) -> Ack {
        let check = self.inflight_kind(packet_id, |f| f.delivery.qos == QoS::AtLeastOnce);
        if check == Ack::Done {
            self.forget_inflight(packet_id, ops);
        }
        check
    }

    /// PUBREC: a QoS 2 message moves to the released phase. A PUBREC with an error reason
    /// (`refused`) ends the flow instead. A PUBREC for a QoS 1 message is the wrong
    /// acknowledgement, and changes nothing.
    pub fn pubrec(&mut self, packet_id: u16, refused: bool, ops: &mut Ops<'_>) -> PubRec {
        let Some(i) = self.st.inflight.position(packet_id) else {
            return PubRec::Unknown;
        };
        if self
            .st
            .inflight
            .get(i)
            .is_some_and(|f| f.delivery.qos != QoS::ExactlyOnce)
        {
            return PubRec::WrongKind;
        }
        if refused {
            self.forget_inflight(packet_id, ops);
            return PubRec::Ended;
        }
        let persisted = self.st.persisted;
        let id = self.client_id().clone();
        match self.st.inflight.get_mut(i) {
            Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                f.phase = Phase::Released;
                let seq = f.delivery.seq;
                if persisted && seq != 0 {
                    ops.push(|_| Op::SetPhase(id, seq, MessagePhase::Released, packet_id));
                }
                PubRec::Released
            }
            _ => PubRec::Unknown,
        }
    }

    /// PUBCOMP: completes a QoS 2 message in the released phase. An unknown id is ignored;
    /// a PUBCOMP before PUBREL was sent, or for a QoS 1 message, is the wrong
    /// acknowledgement, and changes nothing.
    pub fn pubcomp(&mut self, packet_id: u16, ops: &mut Ops<'_>) -> Ack {
        let check = self.inflight_kind(packet_id, |f| f.phase == Phase::Released);
        if check == Ack::Done {
            self.forget_inflight(packet_id, ops);
        }
        check
    }

    /// Whether the inflight message with `packet_id` is what an acknowledgement expects.
    fn inflight_kind(&self, packet_id: u16, expected: impl Fn(&Inflight) -> bool) -> Ack {
        let i = self.st.inflight.position(packet_id);
        match i.and_then(|i| self.st.inflight.get(i)) {
            None => Ack::Unknown,
            Some(f) if expected(f) => Ack::Done,
            Some(_) => Ack::WrongKind,
        }
    }

    /// An inbound QoS 2 PUBLISH with `packet_id`: remembered until its PUBREL (stored in a
    /// persistent session), at most `max` at once.
    pub fn receive_qos2(
        &mut self,
        packet_id: u16,
        now: Instant,
        max: usize,
        ops: &mut Ops<'_>,
    ) -> Qos2Receive {
        if self.st.awaiting_rel.contains_key(&packet_id) {
            return Qos2Receive::Duplicate;
        }
        if self.st.awaiting_rel.len() >= max {
            return Qos2Receive::Full;
        }
        self.st.awaiting_rel.insert(packet_id, now);
        if self.st.persisted {
            let id = self.client_id().clone();
            ops.push(|_| Op::PutAwaiting(id, packet_id));
        }
        Qos2Receive::New
    }

    /// Whether the inbound QoS 2 message `packet_id` was received and awaits PUBREL (a
    /// PUBLISH under it now is a resend).
    pub fn is_awaiting_release(&self, packet_id: u16) -> bool {
        self.st.awaiting_rel.contains_key(&packet_id)
    }

    /// The packet ids of inbound QoS 2 messages awaiting PUBREL. A bridge reads its own local
    /// session's: ids it mirrors from a remote that lost its session would otherwise be taken
    /// for resends of messages already received.
    pub fn awaiting_release(&self) -> impl Iterator<Item = u16> + '_ {
        self.st.awaiting_rel.keys().copied()
    }

    /// PUBREL: forgets an inbound QoS 2 id (true if it was known; PUBCOMP 0x92 otherwise).
    pub fn pubrel(&mut self, packet_id: u16, ops: &mut Ops<'_>) -> bool {
        let known = self.st.awaiting_rel.remove(&packet_id).is_some();
        if known && self.st.persisted {
            let id = self.client_id().clone();
            ops.push(|_| Op::DeleteAwaiting(id, packet_id));
        }
        known
    }

    /// An inbound QoS 2 message that was refused (PUBREC with an error reason, or its commit
    /// failed): its id no longer awaits PUBREL, so the client may reuse it.
    pub fn refuse_qos2(&mut self, packet_id: u16, ops: &mut Ops<'_>) {
        self.pubrel(packet_id, ops);
    }

    /// Forgets inbound QoS 2 ids whose PUBREL has not come within `timeout`.
    pub(super) fn expire_awaiting(&mut self, now: Instant, timeout: Duration, ops: &mut Ops<'_>) {
        if self.st.awaiting_rel.is_empty() {
            return;
        }
        let expired: Vec<u16> = (self.st.awaiting_rel.iter())
            .filter(|(_, t)| now.saturating_duration_since(**t) >= timeout)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in expired {
            self.pubrel(pid, ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use starling_proto::ProtocolVersion;

    use super::*;
    use crate::session::Session;

    fn delivery(qos: QoS) -> Delivery {
        crate::session::test_delivery(qos, b'x')
    }

    #[test]
    fn packet_ids_skip_inflight_and_zero() {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let mut st = s.lock();
        let mut ops = Ops::new(None);
        st.st.next_packet_id = u16::MAX;
        assert_eq!(st.allocate_packet_id(), u16::MAX);
        st.sent(delivery(QoS::AtLeastOnce), 1, &mut ops);
        assert_eq!(st.allocate_packet_id(), 2);
    }

    #[test]
    fn acknowledgements_follow_the_flows() {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let mut st = s.lock();
        let mut ops = Ops::new(None);
        st.sent(delivery(QoS::AtLeastOnce), 1, &mut ops);
        st.sent(delivery(QoS::ExactlyOnce), 2, &mut ops);
        st.sent(delivery(QoS::ExactlyOnce), 3, &mut ops);
        assert_eq!(
            st.pubcomp(2, &mut ops),
            Ack::WrongKind,
            "PUBCOMP before PUBREL"
        );
        assert_eq!(st.puback(2, &mut ops), Ack::WrongKind, "PUBACK for QoS 2");
        assert_eq!(
            st.pubrec(1, false, &mut ops),
            PubRec::WrongKind,
            "PUBREC for QoS 1"
        );
        assert_eq!(st.inflight().count(), 3, "none of those changed anything");
        assert_eq!(st.puback(1, &mut ops), Ack::Done);
        assert_eq!(st.puback(1, &mut ops), Ack::Unknown, "a late duplicate");
        assert_eq!(st.pubrec(2, false, &mut ops), PubRec::Released);
        assert_eq!(
            st.pubrec(3, true, &mut ops),
            PubRec::Ended,
            "refused by the client"
        );
        assert_eq!(st.pubrec(9, false, &mut ops), PubRec::Unknown);
        let phases: Vec<_> = st.inflight().map(|f| (f.packet_id, f.phase)).collect();
        assert_eq!(phases, [(2, Phase::Released)]);
        assert_eq!(st.pubcomp(2, &mut ops), Ack::Done);
        assert_eq!(st.inflight().count(), 0);
    }

    #[test]
    fn inbound_qos2_is_remembered_until_pubrel_and_bounded() {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let mut st = s.lock();
        let mut ops = Ops::new(None);
        let now = Instant::now();
        assert_eq!(st.receive_qos2(1, now, 2, &mut ops), Qos2Receive::New);
        assert_eq!(st.receive_qos2(1, now, 2, &mut ops), Qos2Receive::Duplicate);
        assert_eq!(st.receive_qos2(2, now, 2, &mut ops), Qos2Receive::New);
        assert_eq!(st.receive_qos2(3, now, 2, &mut ops), Qos2Receive::Full);
        assert!(st.pubrel(1, &mut ops));
        assert!(!st.pubrel(1, &mut ops));
        st.refuse_qos2(2, &mut ops);
        assert_eq!(
            st.receive_qos2(2, now, 2, &mut ops),
            Qos2Receive::New,
            "reusable"
        );
        st.expire_awaiting(
            now + Duration::from_secs(10),
            Duration::from_secs(10),
            &mut ops,
        );
        assert_eq!(
            st.receive_qos2(2, now, 2, &mut ops),
            Qos2Receive::New,
            "expired"
        );
    }
}
