//! Sessions: the state that outlives a network connection (spec 4.1). A session holds its
//! subscriptions, the bounded queue of messages not yet sent, the outbound inflight window,
//! inbound QoS 2 packet ids awaiting PUBREL, its will and its expiry.
//!
//! A `Session` is shared between the router (which enqueues) and the connection that owns it
//! now (which drains); both go through one mutex, held only for short, non-blocking sections.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::wake::Waker;
use starling_proto::{ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, Will};

use starling_store::{MessagePhase, Op};

use crate::config::{Limits, QueueFullPolicy};
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::persist::{Persistence, delivery_record};

mod window;
pub use window::Window;

/// What enqueueing needs from the broker: its limits, counters and, with a store, the journal.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Queue limits.
    pub limits: &'a Limits,
    /// Drop counters.
    pub metrics: &'a Metrics,
    /// Journal and clock, when the broker has a store.
    pub persist: Option<&'a Persistence>,
}

/// A subscription as the session remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Options granted (QoS already capped).
    pub options: SubscriptionOptions,
    /// Subscription identifier (v5).
    pub id: Option<u32>,
}

/// Which acknowledgement an outbound QoS 1/2 message waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// An outbound message in the inflight window.
#[derive(Clone, Debug)]
pub struct Inflight {
    /// Packet identifier it was sent with.
    pub packet_id: u16,
    /// The message.
    pub delivery: Delivery,
    /// Where the QoS flow stands.
    pub phase: Phase,
}

/// A will waiting for its connection to end.
#[derive(Clone, Debug)]
pub struct PendingWill {
    /// The will as sent in CONNECT.
    pub will: Will,
    /// Will Delay Interval, seconds.
    pub delay_secs: u32,
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionState {
    /// Id of the connection that owns the session now; `None` while disconnected.
    pub owner: Option<u64>,
    /// Protocol level of the connection that owns (or last owned) the session.
    pub protocol: ProtocolVersion,
    /// Subscriptions by full filter (`$share/...` included).
    pub subscriptions: HashMap<TopicFilter, Subscription>,
    /// Messages not yet sent, oldest first. Bounded by `max_queued_messages` and
    /// `max_queued_bytes`; see [`SessionState::enqueue`] for what happens when full.
    pub queue: VecDeque<Delivery>,
    /// Payload bytes in `queue`.
    pub queued_bytes: usize,
    /// Outbound QoS 1/2 messages sent and not yet fully acknowledged, in send order. Bounded by
    /// the connection's window (client Receive Maximum, `max_inflight`).
    pub inflight: Window,
    /// Next packet identifier to try.
    pub next_packet_id: u16,
    /// Inbound QoS 2 packet ids that got PUBREC and await PUBREL, with when they arrived.
    /// Bounded by the broker's Receive Maximum.
    pub awaiting_rel: HashMap<u16, Instant>,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// The will of the current (or last) connection.
    pub will: Option<Box<PendingWill>>,
    /// When the session's connection ended, for expiry.
    pub disconnected_at: Option<Instant>,
    /// Set once the session is discarded; a connection still holding it stops using it.
    pub ended: bool,
    /// Wakes the owning connection; replaced when another connection takes the session over.
    pub waker: Option<Waker>,
    /// A record of this session is in the store (it has or had a non-zero expiry).
    pub persisted: bool,
    /// Next store sequence number for a queued message.
    pub next_seq: u64,
}

/// A session shared by the router and its connection.
#[derive(Debug)]
pub struct Session {
    /// Client identifier.
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Mirrors `state.owner.is_some()` so shared-subscription routing can prefer connected
    /// members without taking their locks.
    online: AtomicBool,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, protocol: ProtocolVersion) -> Self {
        Self {
            client_id,
            state: Mutex::new(SessionState {
                owner: None,
                protocol,
                subscriptions: HashMap::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: Window::default(),
                next_packet_id: 1,
                awaiting_rel: HashMap::new(),
                expiry_secs: 0,
                will: None,
                disconnected_at: None,
                ended: false,
                waker: None,
                persisted: false,
                next_seq: 1,
            }),
            online: AtomicBool::new(false),
        }
    }

    /// Locks the state. A poisoned lock (a panic elsewhere while holding it) still yields the
    /// state: every mutation keeps it consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a connection owns the session now.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Records which connection owns the session (`None`: disconnected) and how to wake it.
    /// Wakes the previous owner, which then finds it no longer owns the session.
    pub fn set_owner(st: &mut SessionState, this: &Session, owner: Option<(u64, Waker)>) {
        if let Some(old) = st.waker.take() {
            old.wake();
        }
        match owner {
            Some((id, waker)) => {
                st.owner = Some(id);
                st.waker = Some(waker);
            }
            None => {
                st.owner = None;
                st.inflight.release_index();
            }
        }
        this.online.store(st.owner.is_some(), Ordering::Relaxed);
    }

    /// Queues a delivery and wakes the owning connection. Returns whether it was accepted and
    /// the journal ticket of its record, if it was stored.
    pub fn deliver(&self, delivery: Delivery, ctx: &Ctx<'_>) -> (bool, Option<u64>) {
        let mut st = self.lock();
        if st.ended {
            return (false, None);
        }
        let (accepted, ticket) = st.enqueue(delivery, ctx, &self.client_id);
        if accepted && let Some(w) = &st.waker {
            // Done under the lock so the waker need not be cloned. Waking only on
            // the first message into an empty queue would be enough for progress (the
            // connection pumps again whenever its window or output frees up) and saves ~10%
            // in fan-out, but then a subscriber whose window is full runs only when its socket
            // is read, and under a flood it got a fifth of its former share of messages.
            w.wake();
        }
        (accepted, ticket)
    }
}

impl SessionState {
    /// Adds a delivery to the queue, within the limits.
    ///
    /// A disconnected session does not queue QoS 0 unless `queue_qos0_offline`. When the queue
    /// is full, queued QoS 0 messages are dropped first (a new QoS 0 message is dropped itself
    /// rather than displace QoS 1/2); then the policy decides: drop the oldest, or refuse the
    /// new message. Every drop is counted in `publish_dropped` and `dropped_queue_full`.
    ///
    /// In a persistent session a QoS 1/2 delivery is also written to the store; the ticket of
    /// the last op written is returned with whether the delivery was accepted.
    pub fn enqueue(
        &mut self,
        mut delivery: Delivery,
        ctx: &Ctx<'_>,
        client_id: &Arc<str>,
    ) -> (bool, Option<u64>) {
        let (limits, metrics) = (ctx.limits, ctx.metrics);
        if self.owner.is_none() && delivery.qos == QoS::AtMostOnce && !limits.queue_qos0_offline {
            return (false, None);
        }
        let mut ticket = None;
        let cost = delivery.msg.cost();
        let full = |st: &Self| {
            st.queue.len() >= limits.max_queued_messages
                || (!st.queue.is_empty() && st.queued_bytes + cost > limits.max_queued_bytes)
        };
        while full(self) {
            let victim = match self.queue.iter().position(|d| d.qos == QoS::AtMostOnce) {
                Some(i) => i,
                None if delivery.qos == QoS::AtMostOnce => {
                    Self::count_drop(metrics);
                    return (false, ticket);
                }
                None => match limits.queue_full_policy {
                    QueueFullPolicy::DropOldest => 0,
                    QueueFullPolicy::RefuseNewest => {
                        Self::count_drop(metrics);
                        return (false, ticket);
                    }
                },
            };
            if let Some(old) = self.queue.remove(victim) {
                self.queued_bytes -= old.msg.cost();
                Self::count_drop(metrics);
                if let (Some(p), true) = (ctx.persist, old.seq != 0) {
                    ticket = Some(
                        p.journal
                            .push(Op::DeleteMessage(client_id.clone(), old.seq)),
                    );
                }
            }
        }
        if let Some(p) = ctx.persist
            && self.persisted
            && self.expiry_secs > 0
            && delivery.qos != QoS::AtMostOnce
        {
            delivery.seq = self.next_seq;
            self.next_seq += 1;
            let record = delivery_record(&delivery, MessagePhase::Queued, 0, &p.clock);
            ticket = Some(
                p.journal
                    .push(Op::PutMessage(client_id.clone(), delivery.seq, record)),
            );
        }
        self.queued_bytes += cost;
        self.queue.push_back(delivery);
        (true, ticket)
    }

    fn count_drop(metrics: &Metrics) {
        metrics.publish_dropped.inc();
        metrics.dropped_queue_full.inc();
    }

    /// Takes the oldest queued delivery.
    pub fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.msg.cost();
        Some(d)
    }

    /// Allocates a packet identifier not used by any inflight message.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains(id) {
                return id;
            }
        }
    }

    /// Finds an inflight entry by packet id (acks usually arrive in order: front first).
    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.position(packet_id)
    }

    /// Drops everything a clean start discards.
    pub fn clear(&mut self) {
        self.subscriptions.clear();
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        self.awaiting_rel.clear();
        self.next_packet_id = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;
    use starling_proto::TopicName;

    fn delivery(qos: QoS, n: u8) -> Delivery {
        let msg = Message::internal(
            TopicName::try_from_str("t").unwrap(),
            Bytes::from(vec![n]),
            false,
        );
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            sub_ids: Vec::new(),
            share: None,
            seq: 0,
        }
    }

    fn ctx<'a>(l: &'a Limits, m: &'a Metrics) -> Ctx<'a> {
        Ctx {
            limits: l,
            metrics: m,
            persist: None,
        }
    }

    fn online() -> SessionState {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let mut st = s.state.into_inner().unwrap();
        st.owner = Some(1);
        st
    }

    fn limits(max: usize, policy: QueueFullPolicy) -> Limits {
        Limits {
            max_queued_messages: max,
            queue_full_policy: policy,
            ..Limits::default()
        }
    }

    #[test]
    fn qos0_goes_first_then_oldest() {
        let m = Metrics::default();
        let l = limits(3, QueueFullPolicy::DropOldest);
        let mut st = online();
        assert!(
            st.enqueue(delivery(QoS::AtLeastOnce, 1), &ctx(&l, &m), &"c".into())
                .0
        );
        assert!(
            st.enqueue(delivery(QoS::AtMostOnce, 2), &ctx(&l, &m), &"c".into())
                .0
        );
        assert!(
            st.enqueue(delivery(QoS::AtLeastOnce, 3), &ctx(&l, &m), &"c".into())
                .0
        );
        // Full: the QoS 0 message makes room.
        assert!(
            st.enqueue(delivery(QoS::AtLeastOnce, 4), &ctx(&l, &m), &"c".into())
                .0
        );
        let payloads: Vec<u8> = st.queue.iter().map(|d| d.msg.payload[0]).collect();
        assert_eq!(payloads, [1, 3, 4]);
        // A new QoS 0 message does not displace QoS 1.
        assert!(
            !st.enqueue(delivery(QoS::AtMostOnce, 5), &ctx(&l, &m), &"c".into())
                .0
        );
        // Then the oldest goes.
        assert!(
            st.enqueue(delivery(QoS::AtLeastOnce, 6), &ctx(&l, &m), &"c".into())
                .0
        );
        let payloads: Vec<u8> = st.queue.iter().map(|d| d.msg.payload[0]).collect();
        assert_eq!(payloads, [3, 4, 6]);
        assert_eq!(m.publish_dropped.get(), 3);
        assert_eq!(m.dropped_queue_full.get(), 3);
    }

    #[test]
    fn refuse_newest() {
        let m = Metrics::default();
        let l = limits(2, QueueFullPolicy::RefuseNewest);
        let mut st = online();
        assert!(
            st.enqueue(delivery(QoS::AtLeastOnce, 1), &ctx(&l, &m), &"c".into())
                .0
        );
        assert!(
            st.enqueue(delivery(QoS::ExactlyOnce, 2), &ctx(&l, &m), &"c".into())
                .0
        );
        assert!(
            !st.enqueue(delivery(QoS::AtLeastOnce, 3), &ctx(&l, &m), &"c".into())
                .0
        );
        let payloads: Vec<u8> = st.queue.iter().map(|d| d.msg.payload[0]).collect();
        assert_eq!(payloads, [1, 2]);
        assert_eq!(m.publish_dropped.get(), 1);
    }

    #[test]
    fn bytes_bound() {
        let m = Metrics::default();
        let l = Limits {
            max_queued_bytes: 4,
            ..Limits::default()
        };
        let mut st = online();
        for n in 0..10 {
            let _ = st.enqueue(delivery(QoS::AtLeastOnce, n), &ctx(&l, &m), &"c".into());
        }
        assert!(st.queued_bytes <= 4, "{}", st.queued_bytes);
        assert_eq!(st.queue.len(), 2); // each costs 2 bytes (topic + payload)
    }

    #[test]
    fn offline_qos0_not_queued() {
        let m = Metrics::default();
        let l = Limits::default();
        let mut st = online();
        st.owner = None;
        assert!(
            !st.enqueue(delivery(QoS::AtMostOnce, 1), &ctx(&l, &m), &"c".into())
                .0
        );
        assert!(
            st.enqueue(delivery(QoS::AtLeastOnce, 1), &ctx(&l, &m), &"c".into())
                .0
        );
        assert_eq!(m.publish_dropped.get(), 0);
    }

    #[test]
    fn packet_ids_skip_inflight_and_zero() {
        let mut st = online();
        st.next_packet_id = u16::MAX;
        assert_eq!(st.allocate_packet_id(), u16::MAX);
        st.inflight.push_back(Inflight {
            packet_id: 1,
            delivery: delivery(QoS::AtLeastOnce, 0),
            phase: Phase::Published,
        });
        assert_eq!(st.allocate_packet_id(), 2);
    }
}
