//! A session's queue of messages not yet sent: bounded in messages and bytes, with what
//! happens when it is full, and the store records of queued QoS 1/2 messages in persistent
//! sessions. With `queue_scope = "session"` and no priorities it is one plain FIFO; otherwise
//! the messages wait in buffers per subscription and priority (`buffers.rs`), and this file
//! decides which buffer a message goes to and what is dropped when one is full.

use starling_proto::{QoS, TopicFilter};
use starling_store::{MessagePhase, Op};

use super::buffers::{BufferView, Buffers};
use super::{Ctx, Locked};
use crate::config::{Limits, QueueFullPolicy, QueueScope};
use crate::hook::{self, DropReason, Event};
use crate::message::Delivery;
use crate::persist::Ops;

/// Which bound a drop was made at, for the counters.
#[derive(Clone, Copy)]
enum Full {
    /// The session's `max_queued_messages` / `max_queued_bytes`.
    Session,
    /// One subscription's buffer.
    Subscription,
}

impl Locked<'_> {
    /// Adds a delivery to the queue, within the limits.
    ///
    /// A disconnected session does not queue QoS 0 unless `queue_qos0_offline`. When the queue
    /// is full, queued QoS 0 messages are dropped first (a new QoS 0 message is dropped itself
    /// rather than displace QoS 1/2); then the policy decides: drop the oldest, or refuse the
    /// new message. Every drop is counted in `publish_dropped` and `dropped_queue_full`.
    ///
    /// In a persistent session a QoS 1/2 delivery is also stored (and a dropped one deleted).
    ///
    /// With buffers (`queue_scope = "subscription"` or priorities) see `enqueue_buffered`.
    pub fn enqueue(&mut self, mut delivery: Delivery, ctx: &Ctx<'_>, ops: &mut Ops<'_>) -> bool {
        let limits = ctx.limits;
        if self.st.owner.is_none() && delivery.qos == QoS::AtMostOnce && !limits.queue_qos0_offline
        {
            return false;
        }
        if limits.buffered_queue() {
            return self.enqueue_buffered(delivery, ctx, ops);
        }
        let cost = delivery.msg.cost();
        let (max_messages, max_bytes) = self.session_bounds(limits);
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
                    count_drop(ctx, self.client_id(), &delivery, Full::Session);
                    return false;
                }
                None => match limits.queue_full_policy {
                    QueueFullPolicy::DropOldest => 0,
                    QueueFullPolicy::RefuseNewest => {
                        count_drop(ctx, self.client_id(), &delivery, Full::Session);
                        return false;
                    }
                },
            };
            if let Some(mut old) = self.st.queue.remove(victim) {
                self.st.queued_bytes -= old.msg.cost();
                self.st.queued_qos0 -= u32::from(old.qos == QoS::AtMostOnce);
                count_drop(ctx, self.client_id(), &old, Full::Session);
                self.forget_record(&mut old, ops);
            }
        }
        self.store_queued(&mut delivery, ops);
        self.push_queued(delivery);
        true
    }

    /// The session's queue bounds: the listener's, or `[limits]`'s.
    fn session_bounds(&self, limits: &Limits) -> (usize, usize) {
        match self
            .st
            .rare
            .as_deref()
            .and_then(|r| r.queue_bounds.as_ref())
        {
            Some(b) => (b.messages, b.bytes),
            None => (limits.max_queued_messages, limits.max_queued_bytes),
        }
    }

    /// Stores a QoS 1/2 delivery queued in a persistent session.
    fn store_queued(&mut self, delivery: &mut Delivery, ops: &mut Ops<'_>) {
        if self.st.persisted
            && self.st.expiry_secs > 0
            && delivery.qos != QoS::AtMostOnce
            && ops.enabled()
        {
            delivery.seq = self.st.next_seq;
            self.st.next_seq = self.st.next_seq.saturating_add(1);
            let id = self.client_id().clone();
            ops.push_queued(id, delivery, MessagePhase::Queued, 0);
        }
    }

    /// Adds a delivery to its buffer: that of the subscription it came through (one copy for
    /// overlapping subscriptions: the buffer of the matching filter that sorts first in byte
    /// order; a shared subscription's own), or the session's only buffer with the session
    /// scope. First the buffer's own bound: its lowest priority goes first (the oldest of
    /// it), a new message of a lower priority than everything there is dropped itself, and
    /// among equals the policy decides (drop the oldest or refuse the new one), whatever the
    /// QoS. Then the session's bounds cap the total the same way, taking from the fullest
    /// buffer of the lowest priority, so a flood on one subscription does not evict the few
    /// messages of a quiet one. Every drop is counted, by bound and in its buffer.
    fn enqueue_buffered(
        &mut self,
        mut delivery: Delivery,
        ctx: &Ctx<'_>,
        ops: &mut Ops<'_>,
    ) -> bool {
        let limits = ctx.limits;
        self.arrange_queue(limits);
        let per_sub = limits.queue_scope == QueueScope::Subscription;
        let (max_messages, max_bytes) = self.session_bounds(limits);
        let (sub_messages, sub_bytes) = match per_sub {
            true => (
                limits.max_queued_messages_per_subscription,
                limits.max_queued_bytes_per_subscription,
            ),
            false => (usize::MAX, usize::MAX),
        };
        let priority = limits.priority_of(&delivery.msg.topic);
        let cost = delivery.msg.cost();
        // Taken out while messages are dropped (which needs `self`), put back below.
        let mut bufs = self.st.buffers.take().unwrap_or_default();
        let filter = per_sub.then(|| self.buffer_filter(&delivery)).flatten();
        let i = bufs.index(filter);
        let gives = |lowest: u8| match limits.queue_full_policy {
            QueueFullPolicy::DropOldest => lowest <= priority,
            QueueFullPolicy::RefuseNewest => lowest < priority,
        };
        let mut accepted = true;
        while bufs
            .get(i)
            .is_some_and(|b| b.is_full(sub_messages, sub_bytes, cost))
        {
            bufs.count_drop(i);
            match bufs.lowest_priority(i) {
                Some(lowest) if gives(lowest) => {
                    if let Some(mut old) = bufs.pop_lowest(i) {
                        count_drop(ctx, self.client_id(), &old, Full::Subscription);
                        self.forget_record(&mut old, ops);
                    }
                }
                _ => {
                    count_drop(ctx, self.client_id(), &delivery, Full::Subscription);
                    accepted = false;
                    break;
                }
            }
        }
        while accepted && bufs.is_full(max_messages, max_bytes, cost) {
            match bufs.fullest_lowest() {
                Some((j, lowest)) if gives(lowest) => {
                    bufs.count_drop(j);
                    if let Some(mut old) = bufs.pop_lowest(j) {
                        count_drop(ctx, self.client_id(), &old, Full::Session);
                        self.forget_record(&mut old, ops);
                    }
                }
                _ => {
                    bufs.count_drop(i);
                    count_drop(ctx, self.client_id(), &delivery, Full::Session);
                    accepted = false;
                }
            }
        }
        if accepted {
            self.store_queued(&mut delivery, ops);
            bufs.push(i, priority, delivery);
        }
        self.st.buffers = Some(bufs);
        accepted
    }

    /// The filter of the subscription whose buffer a delivery counts against: a shared
    /// subscription's own (while the session has it); otherwise, of the session's plain
    /// subscriptions that match the topic (and whose No Local does not exclude it), the
    /// filter first in byte order. `None` if none matches (the session unsubscribed
    /// meanwhile). Only filters the session subscribes to name a buffer, so the buffers stay
    /// as many as the subscriptions (plus one). Borrowed: a buffer clones its filter only
    /// when it is made, not per message.
    fn buffer_filter<'a>(&'a self, d: &'a Delivery) -> Option<&'a TopicFilter> {
        if let Some(share) = d.share()
            && self.st.subscriptions.contains_key(&share.filter)
        {
            return Some(&share.filter);
        }
        let me = Some(&**self.client_id());
        let own = d.msg.publisher.as_deref() == me;
        (self.st.subscriptions.iter())
            .filter(|(f, s)| {
                !(own && s.options.no_local) && f.share_group().is_none() && f.matches(&d.msg.topic)
            })
            .map(|(f, _)| f)
            .min_by(|a, b| a.as_bytes().cmp(b.as_bytes()))
    }

    /// Moves what the plain queue holds into buffers when `limits` asks for buffers (at
    /// restore, and before the first buffered enqueue), each to the buffer it would go to
    /// now, in order and without bounds (it was queued before).
    pub fn arrange_queue(&mut self, limits: &Limits) {
        if !limits.buffered_queue() || self.st.buffers.is_some() {
            return;
        }
        let per_sub = limits.queue_scope == QueueScope::Subscription;
        let mut bufs = Box::<Buffers>::default();
        while let Some(d) = self.pop_queued() {
            let filter = per_sub.then(|| self.buffer_filter(&d)).flatten();
            let i = bufs.index(filter);
            bufs.push(i, limits.priority_of(&d.msg.topic), d);
        }
        self.st.buffers = Some(bufs);
    }

    /// The buffers per subscription as the admin API shows them; empty with the plain
    /// queue (`queue_scope = "session"` and no priorities).
    pub fn queue_buffers(&self) -> Vec<BufferView> {
        self.st
            .buffers
            .as_deref()
            .map_or_else(Vec::new, Buffers::views)
    }

    /// Takes every queued delivery that came through a shared subscription, in order.
    pub(super) fn take_queued_shared(&mut self) -> Vec<Delivery> {
        if let Some(b) = self.st.buffers.as_deref_mut() {
            return b.extract(|d| d.share().is_some());
        }
        let mut shared = Vec::new();
        let mut keep = std::collections::VecDeque::with_capacity(self.st.queue.len());
        while let Some(d) = self.pop_queued() {
            if d.share().is_some() {
                shared.push(d);
            } else {
                keep.push_back(d);
            }
        }
        for d in keep {
            self.push_queued(d);
        }
        shared
    }

    /// Takes the oldest queued delivery.
    pub(super) fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.st.queue.pop_front()?;
        self.st.queued_bytes -= d.msg.cost();
        self.st.queued_qos0 -= u32::from(d.qos == QoS::AtMostOnce);
        Some(d)
    }

    /// Appends a delivery to the queue without the limits (it was in the queue before).
    pub(super) fn push_queued(&mut self, d: Delivery) {
        self.st.queued_bytes += d.msg.cost();
        self.st.queued_qos0 += u32::from(d.qos == QoS::AtMostOnce);
        self.st.queue.push_back(d);
    }

    /// The next delivery to send, if the window allows: a QoS 0 message always, a QoS 1/2
    /// message while fewer than `window` are in flight.
    #[inline]
    pub fn next_delivery(&mut self, window: usize) -> Option<Delivery> {
        let st = &mut *self.st;
        if let Some(b) = st.buffers.as_deref_mut()
            && !b.is_empty()
        {
            return b.next(st.inflight.len() >= window);
        }
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

/// Counts a delivery dropped from (or refused by) a full queue or buffer, and tells the
/// hooks.
fn count_drop(ctx: &Ctx<'_>, client_id: &str, d: &Delivery, at: Full) {
    let metrics = ctx.metrics;
    metrics.publish_dropped.inc();
    match at {
        Full::Session => metrics.dropped_queue_full.inc(),
        Full::Subscription => metrics.dropped_subscription_full.inc(),
    }
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
    use crate::session::Session;
    use crate::wake::Flag;

    use crate::session::test_delivery as delivery;

    /// A session owned by a connection (so QoS 0 is queued).
    fn online() -> Session {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let terms = crate::session::test_terms();
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
            fan_out: false,
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

    /// A message's properties count toward the byte bound: an empty payload behind a large
    /// user property cannot slip past `max_queued_bytes`.
    #[test]
    fn properties_count_toward_the_bytes_bound() {
        let m = Metrics::default();
        let l = Limits {
            max_queued_bytes: 10_000,
            ..Limits::default()
        };
        let s = online();
        for n in 0..10 {
            let mut d = delivery(QoS::AtLeastOnce, n);
            let topic = d.msg.topic.clone();
            let mut msg = crate::message::Message::internal(topic, bytes::Bytes::new(), false);
            msg.properties =
                starling_proto::Properties::from_values(starling_proto::PropertyValues {
                    user_properties: vec![("k".into(), "v".repeat(3_000))],
                    ..Default::default()
                });
            assert!(msg.cost() > 3_000, "{}", msg.cost());
            d.msg = std::sync::Arc::new(msg);
            enqueue(&s, &l, &m, d);
        }
        assert!(s.lock().st.queued_bytes <= 10_000);
        assert_eq!(
            s.lock().queued(),
            3,
            "three messages of about 3 KB each fit"
        );
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

    fn on(topic: &str, qos: QoS, byte: u8) -> Delivery {
        let mut d = delivery(qos, byte);
        let topic = starling_proto::TopicName::try_from_str(topic).unwrap();
        let msg = crate::message::Message::internal(topic, d.msg.payload.clone(), false);
        d.msg = std::sync::Arc::new(msg);
        d
    }

    fn subscribed(filters: &[&str]) -> Session {
        let s = online();
        for f in filters {
            let sub = crate::session::Subscription {
                options: starling_proto::SubscriptionOptions::default(),
                id: None,
            };
            s.lock()
                .insert_subscription(TopicFilter::try_from_str(f).unwrap(), sub);
        }
        s
    }

    fn per_subscription(per_sub: usize, total: usize) -> Limits {
        Limits {
            queue_scope: QueueScope::Subscription,
            max_queued_messages_per_subscription: per_sub,
            max_queued_messages: total,
            ..Limits::default()
        }
    }

    fn drain(s: &Session) -> Vec<u8> {
        let mut st = s.lock();
        std::iter::from_fn(|| st.next_delivery(usize::MAX))
            .map(|d| d.msg.payload[0])
            .collect()
    }

    #[test]
    fn a_flood_on_one_subscription_keeps_its_newest_and_spares_the_other() {
        let m = Metrics::default();
        let l = per_subscription(3, 100);
        let s = subscribed(&["flood/#", "quiet/#"]);
        assert!(enqueue(&s, &l, &m, on("quiet/a", QoS::AtLeastOnce, 100)));
        for n in 0..10 {
            assert!(enqueue(&s, &l, &m, on("flood/x", QoS::AtMostOnce, n)));
        }
        assert!(enqueue(&s, &l, &m, on("quiet/a", QoS::ExactlyOnce, 101)));
        assert_eq!(s.lock().queued(), 5);
        assert_eq!(m.dropped_subscription_full.get(), 7);
        assert_eq!(
            (m.dropped_queue_full.get(), m.publish_dropped.get()),
            (0, 7)
        );
        let views = s.lock().queue_buffers();
        let flood = views
            .iter()
            .find(|v| v.filter.as_ref().unwrap().as_str() == "flood/#");
        assert_eq!(flood.map(|v| (v.queued, v.dropped)), Some((3, 7)));
        // Turns: quiet first (it was there first), then flood, and so on.
        assert_eq!(drain(&s), [100, 7, 101, 8, 9]);
    }

    #[test]
    fn the_session_total_takes_from_the_fullest_buffer() {
        let m = Metrics::default();
        let l = per_subscription(10, 4);
        let s = subscribed(&["a", "b"]);
        enqueue(&s, &l, &m, on("b", QoS::AtLeastOnce, 50));
        for n in 0..6 {
            assert!(enqueue(&s, &l, &m, on("a", QoS::AtLeastOnce, n)));
        }
        assert_eq!(m.dropped_queue_full.get(), 3);
        assert_eq!(drain(&s), [50, 3, 4, 5]);
        // Refuse the newest: the total stays as it is.
        let l = Limits {
            queue_full_policy: QueueFullPolicy::RefuseNewest,
            ..per_subscription(2, 100)
        };
        for n in 0..4 {
            enqueue(&s, &l, &m, on("a", QoS::AtLeastOnce, n));
        }
        assert_eq!(drain(&s), [0, 1]);
    }

    #[test]
    fn priorities_decide_what_is_dropped_and_what_goes_first() {
        let m = Metrics::default();
        let l = Limits {
            queue_priority: vec![crate::config::QueuePriority {
                filter: TopicFilter::try_from_str("alarms/#").unwrap(),
                priority: 10,
            }],
            ..per_subscription(3, 100)
        };
        let s = subscribed(&["#"]);
        enqueue(&s, &l, &m, on("alarms/1", QoS::AtLeastOnce, 1));
        for n in 10..15 {
            enqueue(&s, &l, &m, on("data", QoS::AtLeastOnce, n));
        }
        enqueue(&s, &l, &m, on("alarms/2", QoS::AtLeastOnce, 2));
        enqueue(&s, &l, &m, on("alarms/3", QoS::AtLeastOnce, 3));
        // Full of alarms: ordinary data is refused, a new alarm displaces the oldest.
        assert!(!enqueue(&s, &l, &m, on("data", QoS::AtLeastOnce, 16)));
        assert!(enqueue(&s, &l, &m, on("alarms/4", QoS::AtLeastOnce, 4)));
        assert_eq!(drain(&s), [2, 3, 4]);
        enqueue(&s, &l, &m, on("data", QoS::AtLeastOnce, 20));
        enqueue(&s, &l, &m, on("alarms/5", QoS::AtLeastOnce, 5));
        assert_eq!(drain(&s), [5, 20], "the alarm goes first");
        // With the session scope, priorities use one buffer under the session's bounds.
        let l = Limits {
            queue_scope: QueueScope::Session,
            max_queued_messages: 2,
            ..l
        };
        let s = subscribed(&["#"]);
        enqueue(&s, &l, &m, on("alarms/1", QoS::AtLeastOnce, 1));
        enqueue(&s, &l, &m, on("data", QoS::AtLeastOnce, 10));
        enqueue(&s, &l, &m, on("alarms/2", QoS::AtLeastOnce, 2));
        assert_eq!(drain(&s), [1, 2]);
    }

    #[test]
    fn the_plain_queue_moves_into_buffers_and_shared_messages_come_out() {
        let m = Metrics::default();
        let s = subscribed(&["a", "b", "$share/g/a"]);
        let plain = Limits::default();
        for (t, n) in [("a", 1), ("a", 2), ("b", 3)] {
            enqueue(&s, &plain, &m, on(t, QoS::AtLeastOnce, n));
        }
        let l = per_subscription(10, 10);
        s.lock().arrange_queue(&l);
        assert_eq!(s.lock().queue_buffers().len(), 2);
        let shared = on("a", QoS::AtLeastOnce, 4).with_share(std::sync::Arc::new(
            crate::message::ShareKey {
                group: "g".into(),
                filter: TopicFilter::try_from_str("$share/g/a").unwrap(),
            },
        ));
        enqueue(&s, &l, &m, shared);
        assert_eq!(s.lock().queue_buffers().len(), 3);
        let taken = s.lock().take_queued_shared();
        assert_eq!(taken.len(), 1);
        // A shared subscription the session no longer has names no buffer.
        let gone = on("a", QoS::AtLeastOnce, 5).with_share(std::sync::Arc::new(
            crate::message::ShareKey {
                group: "h".into(),
                filter: TopicFilter::try_from_str("$share/h/a").unwrap(),
            },
        ));
        enqueue(&s, &l, &m, gone);
        assert_eq!(s.lock().queue_buffers().len(), 3);
        assert!(
            s.lock()
                .remove_subscription(&TopicFilter::try_from_str("b").unwrap())
        );
        assert_eq!(drain(&s), [1, 3, 2, 5]);
        assert_eq!(
            s.lock().queue_buffers().len(),
            2,
            "b's buffer went once drained"
        );
    }

    #[test]
    fn a_buffers_bytes_bound() {
        let m = Metrics::default();
        let l = Limits {
            max_queued_bytes_per_subscription: 4,
            ..per_subscription(100, 100)
        };
        let s = subscribed(&["a", "b"]);
        for n in 0..10 {
            assert!(enqueue(&s, &l, &m, on("a", QoS::AtLeastOnce, n)));
        }
        enqueue(&s, &l, &m, on("b", QoS::AtLeastOnce, 20));
        // Each costs 2 bytes (topic + payload): two fit in a's buffer.
        assert_eq!(drain(&s), [8, 20, 9]);
        assert_eq!(m.dropped_subscription_full.get(), 8);
    }
}
