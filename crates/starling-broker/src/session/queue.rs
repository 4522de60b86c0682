//! A session's queue of messages not yet sent: bounded in messages and bytes, with what
//! happens when it is full, and the store records of queued QoS 1/2 messages in persistent
//! sessions.

use starling_proto::QoS;
use starling_store::{MessagePhase, Op};

use super::{Ctx, Locked};
use crate::config::QueueFullPolicy;
use crate::hook::{self, DropReason, Event};
use crate::message::Delivery;
use crate::persist::{Ops, delivery_record};

impl Locked<'_> {
    /// Adds a delivery to the queue, within the limits.
    ///
    /// A disconnected session does not queue QoS 0 unless `queue_qos0_offline`. When the queue
    /// is full, queued QoS 0 messages are dropped first (a new QoS 0 message is dropped itself
    /// rather than displace QoS 1/2); then the policy decides: drop the oldest, or refuse the
    /// new message. Every drop is counted in `publish_dropped` and `dropped_queue_full`.
    ///
    /// In a persistent session a QoS 1/2 delivery is also stored (and a dropped one deleted).
    pub fn enqueue(&mut self, mut delivery: Delivery, ctx: &Ctx<'_>, ops: &mut Ops<'_>) -> bool {
        let limits = ctx.limits;
        if self.st.owner.is_none() && delivery.qos == QoS::AtMostOnce && !limits.queue_qos0_offline
        {
            return false;
        }
        let cost = delivery.msg.cost();
        let (max_messages, max_bytes) = match self.st.queue_bounds.as_deref() {
            Some(b) => (b.messages, b.bytes),
            None => (limits.max_queued_messages, limits.max_queued_bytes),
        };
        let full = |s: &Self| {
            s.st.queue.len() >= max_messages
                || (!s.st.queue.is_empty() && s.st.queued_bytes + cost > max_bytes)
        };
        while full(self) {
            // The oldest QoS 0 message, if any (a scan only when there is one to find).
            let qos0 = match self.st.queued_qos0 {
                0 => None,
                _ => self.st.queue.iter().position(|d| d.qos == QoS::AtMostOnce),
            };
            let victim = match qos0 {
                Some(i) => i,
                None if delivery.qos == QoS::AtMostOnce => {
                    count_drop(ctx, self.client_id(), &delivery);
                    return false;
                }
                None => match limits.queue_full_policy {
                    QueueFullPolicy::DropOldest => 0,
                    QueueFullPolicy::RefuseNewest => {
                        count_drop(ctx, self.client_id(), &delivery);
                        return false;
                    }
                },
            };
            if let Some(mut old) = self.st.queue.remove(victim) {
                self.st.queued_bytes -= old.msg.cost();
                self.st.queued_qos0 -= usize::from(old.qos == QoS::AtMostOnce);
                count_drop(ctx, self.client_id(), &old);
                self.forget_record(&mut old, ops);
            }
        }
        if self.st.persisted
            && self.st.expiry_secs > 0
            && delivery.qos != QoS::AtMostOnce
            && ops.enabled()
        {
            delivery.seq = self.st.next_seq;
            self.st.next_seq = self.st.next_seq.saturating_add(1);
            let id = self.client_id().clone();
            let d = &delivery;
            ops.push(|clock| {
                let record = delivery_record(d, MessagePhase::Queued, 0, clock);
                Op::PutMessage(id, d.seq, record)
            });
        }
        self.push_queued(delivery);
        true
    }

    /// Takes the oldest queued delivery.
    pub(super) fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.st.queue.pop_front()?;
        self.st.queued_bytes -= d.msg.cost();
        self.st.queued_qos0 -= usize::from(d.qos == QoS::AtMostOnce);
        Some(d)
    }

    /// Appends a delivery to the queue without the limits (it was in the queue before).
    pub(super) fn push_queued(&mut self, d: Delivery) {
        self.st.queued_bytes += d.msg.cost();
        self.st.queued_qos0 += usize::from(d.qos == QoS::AtMostOnce);
        self.st.queue.push_back(d);
    }

    /// The next delivery to send, if the window allows: a QoS 0 message always, a QoS 1/2
    /// message while fewer than `window` are in flight.
    #[inline]
    pub fn next_delivery(&mut self, window: usize) -> Option<Delivery> {
        let front = self.st.queue.front()?;
        if front.qos != QoS::AtMostOnce && self.st.inflight.len() >= window {
            return None;
        }
        self.pop_queued()
    }

    /// A delivery taken from the queue that will not be sent (expired, refused by the ACL,
    /// too large for the client): its record, if stored, is deleted.
    pub fn discard(&mut self, mut d: Delivery, ops: &mut Ops<'_>) {
        self.forget_record(&mut d, ops);
    }

    /// Deletes a delivery's record if it has one, and marks it as not stored.
    pub(super) fn forget_record(&mut self, d: &mut Delivery, ops: &mut Ops<'_>) {
        if d.seq != 0 {
            let (id, seq) = (self.client_id().clone(), d.seq);
            ops.push(|_| Op::DeleteMessage(id, seq));
            d.seq = 0;
        }
    }
}

/// Counts a delivery dropped from (or refused by) a full queue, and tells the hooks.
fn count_drop(ctx: &Ctx<'_>, client_id: &str, d: &Delivery) {
    ctx.metrics.publish_dropped.inc();
    ctx.metrics.dropped_queue_full.inc();
    if ctx.hooks.wants(Event::Dropped) {
        let e = hook::drop_event(Some(client_id), &d.msg, DropReason::QueueFull);
        ctx.hooks.dropped(&e);
    }
}

#[cfg(test)]
mod tests {
    use starling_proto::ProtocolVersion;

    use super::*;
    use crate::config::Limits;
    use crate::metrics::Metrics;
    use crate::session::{Session, Terms};
    use crate::wake::Flag;

    use crate::session::test_delivery as delivery;

    /// A session owned by a connection (so QoS 0 is queued).
    fn online() -> Session {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let terms = Terms {
            protocol: ProtocolVersion::V5,
            expiry_secs: 0,
            will: None,
            info: None,
            queue_bounds: None,
        };
        assert!(s.lock().attach(1, Flag::new(), terms, &mut Ops::new(None)));
        s
    }

    fn limits(max: usize, policy: QueueFullPolicy) -> Limits {
        Limits {
            max_queued_messages: max,
            queue_full_policy: policy,
            ..Limits::default()
        }
    }

    fn payloads(s: &Session) -> Vec<u8> {
        let mut st = s.lock();
        let mut out = Vec::new();
        while let Some(d) = st.pop_queued() {
            out.push(d.msg.payload[0]);
        }
        for n in &out {
            st.push_queued(delivery(QoS::AtLeastOnce, *n));
        }
        out
    }

    fn enqueue(s: &Session, l: &Limits, m: &Metrics, d: Delivery) -> bool {
        let hooks = crate::hook::Hooks::default();
        let ctx = Ctx {
            limits: l,
            metrics: m,
            hooks: &hooks,
        };
        s.lock().enqueue(d, &ctx, &mut Ops::new(None))
    }

    #[test]
    fn qos0_goes_first_then_oldest() {
        let m = Metrics::default();
        let l = limits(3, QueueFullPolicy::DropOldest);
        let s = online();
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 1)));
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 2)));
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 3)));
        // Full: the QoS 0 message makes room.
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 4)));
        assert_eq!(payloads(&s), [1, 3, 4]);
        // A new QoS 0 message does not displace QoS 1.
        assert!(!enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 5)));
        // Then the oldest goes.
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 6)));
        assert_eq!(payloads(&s), [3, 4, 6]);
        assert_eq!(m.publish_dropped.get(), 3);
        assert_eq!(m.dropped_queue_full.get(), 3);
        assert_eq!(s.lock().st.queued_qos0, 0);
    }

    #[test]
    fn the_qos0_count_follows_the_queue() {
        let m = Metrics::default();
        let l = limits(3, QueueFullPolicy::DropOldest);
        let s = online();
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 1)));
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 2)));
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 3)));
        assert_eq!(s.lock().st.queued_qos0, 1);
        // Full, its only QoS 0 message at the back: that one goes, not the oldest.
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 4)));
        assert_eq!(payloads(&s), [1, 2, 4]);
        assert_eq!(s.lock().st.queued_qos0, 0);
        // Full of QoS 1: a new QoS 0 message is the one dropped.
        assert!(!enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 5)));
        assert_eq!(s.lock().st.queued_qos0, 0);
        let mut st = s.lock();
        st.pop_queued();
        drop(st);
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 6)));
        assert_eq!(s.lock().st.queued_qos0, 1);
        let mut st = s.lock();
        while st.next_delivery(10).is_some() {}
        assert_eq!((st.queued(), st.st.queued_qos0), (0, 0));
    }

    #[test]
    fn refuse_newest() {
        let m = Metrics::default();
        let l = limits(2, QueueFullPolicy::RefuseNewest);
        let s = online();
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 1)));
        assert!(enqueue(&s, &l, &m, delivery(QoS::ExactlyOnce, 2)));
        assert!(!enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 3)));
        assert_eq!(payloads(&s), [1, 2]);
        assert_eq!(m.publish_dropped.get(), 1);
    }

    #[test]
    fn bytes_bound() {
        let m = Metrics::default();
        let l = Limits {
            max_queued_bytes: 4,
            ..Limits::default()
        };
        let s = online();
        for n in 0..10 {
            enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, n));
        }
        assert!(s.lock().st.queued_bytes <= 4);
        assert_eq!(s.lock().queued(), 2, "each costs 2 bytes (topic + payload)");
    }

    #[test]
    fn offline_qos0_not_queued() {
        let m = Metrics::default();
        let l = Limits::default();
        let s = Session::new("c".into(), ProtocolVersion::V5);
        assert!(!enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 1)));
        assert!(enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 1)));
        assert_eq!(m.publish_dropped.get(), 0);
    }

    #[test]
    fn the_window_holds_back_qos1_but_not_qos0() {
        let (m, l) = (Metrics::default(), Limits::default());
        let s = online();
        enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 1));
        enqueue(&s, &l, &m, delivery(QoS::AtMostOnce, 2));
        let mut st = s.lock();
        let mut ops = Ops::new(None);
        let d = st.next_delivery(1).unwrap();
        let pid = st.allocate_packet_id();
        st.sent(d, pid, &mut ops);
        let d = st.next_delivery(1).unwrap();
        assert_eq!(d.msg.payload[0], 2, "QoS 0 passes a full window");
        assert!(st.next_delivery(1).is_none());
        drop(st);
        enqueue(&s, &l, &m, delivery(QoS::AtLeastOnce, 3));
        let mut st = s.lock();
        assert!(st.next_delivery(1).is_none(), "the window is full");
        assert!(st.next_delivery(2).is_some());
    }
}
