//! Sessions: the state that outlives a network connection (spec 4.1). A session holds its
//! subscriptions, the bounded queue of messages not yet sent, the outbound inflight window,
//! inbound QoS 2 packet ids awaiting PUBREL, its will and its expiry, and who owns it now.
//!
//! A [`Session`] is shared between the registry, the route table (which enqueues) and the
//! connection that owns it now (which drains); all of them go through [`Session::lock`], held
//! only for short, non-blocking sections. Its state is private: every change is a method of
//! the [`Locked`] guard that keeps the session consistent and records the store operations it
//! implies in the caller's [`Ops`] (the caller hands them to `Broker::persist`). Lifecycle
//! (ownership, resume, detach, end) is here; the queue is in `queue.rs`, the QoS flows in
//! `flows.rs`, rebuilding from the store and handing over to another node in `restore.rs`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use starling_proto::{ProtocolVersion, SubscriptionOptions, TopicFilter, Will};
use starling_store::{Op, SessionRecord, SubscriptionRecord, WillRecord};

use crate::broker::Ending;
use crate::config::Limits;
use crate::few::FewMap;
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::persist::Ops;
use crate::wake::Waker;

mod buffers;
mod flows;
mod queue;
mod restore;
mod successor;
mod window;
pub use buffers::BufferView;
pub use flows::{Ack, PubRec, Qos2Receive};
pub use restore::{Restoring, SeenIds, TakenMessages};
pub use window::Window;

/// What enqueueing needs from the broker: its limits and counters.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Queue limits.
    pub limits: &'a Limits,
    /// Drop counters.
    pub metrics: &'a Metrics,
    /// Hooks told of drops.
    pub hooks: &'a crate::hook::Hooks,
    /// The message matched [`FAN_OUT`] subscriptions or more: owners are woken with
    /// [`crate::Wake::wake_in_fan_out`].
    pub fan_out: bool,
}

/// A message that matches at least this many subscriptions (the route table's targets: one
/// per plain subscription, shared group or other node) wakes the owners of the sessions it
/// goes to with [`crate::Wake::wake_in_fan_out`]: a fan-out where each subscriber's write would
/// otherwise carry only the few messages that arrived in one read of the publisher.
pub const FAN_OUT: usize = 256;

/// A subscription as the session remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Options granted (QoS already capped).
    pub options: SubscriptionOptions,
    /// Subscription identifier (v5).
    pub id: Option<u32>,
}

/// Which acknowledgement an outbound message waits for.
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

/// What the admin API shows of the connection that owns a session: set when it attaches,
/// dropped when it detaches. One allocation per connected session, shared strings.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The listener it came through (`""` without one).
    pub listener: Arc<str>,
    /// The authenticated username.
    pub username: Option<Arc<str>>,
    /// Keep Alive in effect, seconds.
    pub keep_alive: u16,
    /// When the connection attached.
    pub connected_at: Instant,
    /// What the connection sent and received.
    pub counters: ClientCounters,
}

/// Messages and payload bytes of one connection, both ways. Written only by the connection's
/// own task (a load and a store, no read-modify-write), read by the admin API.
#[derive(Debug, Default)]
pub struct ClientCounters {
    received: AtomicU64,
    received_bytes: AtomicU64,
    sent: AtomicU64,
    sent_bytes: AtomicU64,
}

/// Adds to a counter that only one task writes.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Clone for ClientCounters {
    fn clone(&self) -> Self {
        let (received, received_bytes, sent, sent_bytes) = self.get();
        Self {
            received: AtomicU64::new(received),
            received_bytes: AtomicU64::new(received_bytes),
            sent: AtomicU64::new(sent),
            sent_bytes: AtomicU64::new(sent_bytes),
        }
    }
}

impl ClientCounters {
    /// A PUBLISH of `bytes` payload bytes received from the client.
    pub fn received(&self, bytes: usize) {
        bump(&self.received, 1);
        bump(&self.received_bytes, bytes as u64);
    }

    /// A PUBLISH of `bytes` payload bytes sent to the client.
    pub fn sent(&self, bytes: usize) {
        self.sent_many(1, bytes as u64);
    }

    /// `n` PUBLISH packets of `bytes` payload bytes in all sent to the client.
    pub fn sent_many(&self, n: u64, bytes: u64) {
        bump(&self.sent, n);
        bump(&self.sent_bytes, bytes);
    }

    /// (messages received, bytes received, messages sent, bytes sent).
    pub fn get(&self) -> (u64, u64, u64, u64) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            r(&self.received),
            r(&self.received_bytes),
            r(&self.sent),
            r(&self.sent_bytes),
        )
    }
}

/// Why a session's connection is to be closed from outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// An operator asked (admin API): v5 DISCONNECT 0x98 Administrative action.
    Operator,
    /// This node lost its cluster's majority: v5 DISCONNECT 0x9C Use another server, so the
    /// client reconnects to a node that can serve it.
    UseAnotherServer,
    /// Another node of the cluster claimed the client id: v5 DISCONNECT 0x8E Session taken
    /// over; the session stays here until the new owner takes it (see `Broker::hand_over`).
    TakenOver,
}

/// The mutable part of a session; see [`Locked`] for what may change it.
#[derive(Debug)]
pub struct SessionState {
    /// How to wake the connection that owns the session now; `None` while disconnected.
    owner: Option<Waker>,
    /// About that connection, for the admin API; `None` while disconnected.
    owner_info: Option<Arc<ClientInfo>>,
    /// What few sessions have (queue bounds of their listener, message ids remembered
    /// during a handover), boxed together: the others pay one pointer for it.
    rare: Option<Box<Rare>>,
    /// The owner is to be disconnected, and why: an operator asked (admin API, DISCONNECT
    /// 0x98), or this node lost its cluster's majority (0x9C, Use another server). It closes
    /// at its next wake-up. Cleared when a connection attaches.
    kicked: Option<Kick>,
    /// Epoch of the latest claim that took this session: the owner's, while there is one (an
    /// older claim must not take it back).
    claimed: u64,
    /// Protocol level of the connection that owns (or last owned) the session.
    protocol: ProtocolVersion,
    /// Subscriptions by full filter (`$share/...` included); the route table indexes the same
    /// (see `Broker::subscribe`).
    subscriptions: FewMap<TopicFilter, Subscription, ProcessKeyed>,
    /// Messages not yet sent, oldest first. Bounded by `max_queued_messages` and
    /// `max_queued_bytes`; see `Locked::enqueue` for what happens when full.
    queue: VecDeque<Delivery>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// QoS 0 messages in `queue`: a full queue looks for one to drop only when there is one.
    /// (A `u32`, beside the other small fields: a queue is bounded far below 2^32 messages,
    /// `max_queued_messages` at 10 million.)
    queued_qos0: u32,
    /// Buffers per subscription and priority, replacing `queue` when the limits ask for them
    /// (`Limits::buffered_queue`; boxed: `None` otherwise). Bounded per buffer and in total;
    /// see `Locked::enqueue` for what happens when full.
    buffers: Option<Box<buffers::Buffers>>,
    /// Outbound QoS 1/2 messages sent and not yet fully acknowledged, in send order. Bounded by
    /// the connection's window (client Receive Maximum, `max_inflight`).
    inflight: Window,
    /// Next packet identifier to try.
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids that got PUBREC and await PUBREL, with when they arrived.
    /// Bounded by the broker's Receive Maximum.
    awaiting_rel: flows::AwaitingRel,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    expiry_secs: u32,
    /// The will of the current (or last) connection.
    will: Option<Box<PendingWill>>,
    /// When the session's connection ended, for expiry.
    disconnected_at: Option<Instant>,
    /// Set once the session is discarded; a connection still holding it stops using it.
    ended: bool,
    /// A record of this session is in the store (it has or had a non-zero expiry).
    persisted: bool,
    /// The owner was woken for a delivery and has not looked at the queue since
    /// (`Locked::take_wake`): later deliveries need not wake it again. In a fan-out burst
    /// that is one wake-up per subscriber instead of one per message (each an atomic
    /// read-modify-write on the task's waker; a sixth of the broker's time with 100
    /// subscribers).
    woken: bool,
    /// Next store sequence number for a queued message.
    next_seq: u64,
}

/// See [`SessionState::rare`].
#[derive(Debug, Default)]
struct Rare {
    /// A new connection for the same client id waiting for the owner to read what its client
    /// already sent before the session is taken over (see `Broker::connect`); woken when the
    /// owner hands the session over or lets go of it. One at a time: a later one replaces it,
    /// and the one replaced is woken to take the session without waiting.
    successor: Option<Waker>,
    /// That connection resumes the session (Clean Start 0): see
    /// `Locked::hand_over_waits_for_input`.
    successor_resumes: bool,
    /// Queue bounds replacing the broker's, for this session (from its listener).
    queue_bounds: Option<crate::config::QueueBounds>,
    /// While a session handed over from another node waits for that node's last messages:
    /// the cluster ids of the messages delivered here meanwhile.
    seen: Option<restore::SeenIds>,
    /// The epoch of the claim this session was handed over for (its first step): only that
    /// claim's second step ends it.
    handed: u64,
    /// When a step of a handover last took from it (a queue larger than one answer is taken
    /// in several).
    handed_at: Option<std::time::Instant>,
}

/// Builds the hashers of a session's subscription map: SipHash with keys drawn at random once
/// per process (as `RandomState` draws them), so that a client cannot choose filters that
/// collide, without `RandomState`'s 16 bytes of keys in every session.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessKeyed;

impl std::hash::BuildHasher for ProcessKeyed {
    type Hasher = std::hash::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        KEYS.get_or_init(std::hash::RandomState::new).build_hasher()
    }
}

/// A session shared by the registry, the route table and its connection.
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Mirrors `state.owner.is_some()` so shared-subscription routing can prefer connected
    /// members without taking their locks.
    online: AtomicBool,
}

/// A locked session: the only way to read or change its state.
#[derive(Debug)]
pub struct Locked<'a> {
    session: &'a Session,
    st: MutexGuard<'a, SessionState>,
}

/// What a connection asked for in CONNECT, as far as its session cares.
#[derive(Debug)]
pub struct Terms {
    /// Protocol level.
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval in seconds, already capped (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// The will, with its delay.
    pub will: Option<PendingWill>,
    /// About the connection, for the admin API.
    pub info: Option<Arc<ClientInfo>>,
    /// Queue bounds replacing the broker's (from the listener).
    pub queue_bounds: Option<crate::config::QueueBounds>,
}

/// What ending a session leaves for the registry to finish: the filters to remove from the
/// route table, and a will to publish.
#[derive(Debug, Default)]
pub struct Ended {
    /// Every subscription the session had.
    pub filters: Vec<TopicFilter>,
    /// Its pending will, to publish now.
    pub will: Option<Will>,
}

/// What detaching a connection leaves for the registry to finish.
#[derive(Debug, Default)]
pub struct Detached {
    /// A will to publish now.
    pub will: Option<Will>,
    /// The session must end now (expiry 0).
    pub end: bool,
    /// Messages that came through shared subscriptions and were not completed: they go to
    /// another member of their group.
    pub shared: Vec<Delivery>,
}

/// What housekeeping found in a session.
#[derive(Debug, Default)]
pub struct Housekeeping {
    /// The session is disconnected (for `$SYS` counts).
    pub disconnected: bool,
    /// Its expiry has passed: end it.
    pub expired: bool,
    /// Its will's delay has passed: publish it.
    pub will: Option<Will>,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, protocol: ProtocolVersion) -> Self {
        Self {
            client_id,
            state: Mutex::new(SessionState {
                owner: None,
                owner_info: None,
                rare: None,
                kicked: None,
                claimed: 0,
                protocol,
                subscriptions: FewMap::default(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                queued_qos0: 0,
                buffers: None,
                inflight: Window::default(),
                next_packet_id: 1,
                awaiting_rel: flows::AwaitingRel::default(),
                expiry_secs: 0,
                will: None,
                disconnected_at: None,
                ended: false,
                persisted: false,
                woken: false,
                next_seq: 1,
            }),
            online: AtomicBool::new(false),
        }
    }

    /// The client identifier.
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// Locks the state. A poisoned lock (a panic elsewhere while holding it) still yields the
    /// state: every method keeps it consistent between statements.
    pub fn lock(&self) -> Locked<'_> {
        Locked {
            session: self,
            st: self.state.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Whether a connection owns the session now.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Queues a delivery and wakes the owning connection. Returns whether it was accepted;
    /// what it stored is in `ops`.
    pub fn deliver(&self, delivery: Delivery, ctx: &Ctx<'_>, ops: &mut Ops<'_>) -> bool {
        let mut s = self.lock();
        if s.st.ended {
            return false;
        }
        let accepted = s.take_delivery(delivery, ctx, ops);
        if accepted {
            s.wake_owner(ctx);
        }
        accepted
    }

    /// Queues the deliveries `make(0)`, `make(1)`, ... `make(n - 1)` (in that order; `None`
    /// skips one) under one lock, calls `accepted(k)` for each one accepted, and wakes the
    /// owning connection once. What it stored is in `ops`.
    pub fn deliver_each(
        &self,
        n: usize,
        mut make: impl FnMut(usize) -> Option<Delivery>,
        ctx: &Ctx<'_>,
        ops: &mut Ops<'_>,
        mut accepted: impl FnMut(usize),
    ) {
        let mut s = self.lock();
        if s.st.ended {
            return;
        }
        let mut any = false;
        for k in 0..n {
            if let Some(delivery) = make(k)
                && s.take_delivery(delivery, ctx, ops)
            {
                accepted(k);
                any = true;
            }
        }
        if any {
            s.wake_owner(ctx);
        }
    }
}

impl Locked<'_> {
    /// Queues a delivery (`Session::deliver`, the session not ended); whether it was
    /// accepted.
    fn take_delivery(&mut self, delivery: Delivery, ctx: &Ctx<'_>, ops: &mut Ops<'_>) -> bool {
        if let Some(seen) = self.st.rare.as_deref_mut().and_then(|r| r.seen.as_mut()) {
            seen.insert(delivery.msg.cluster_id.get());
        }
        self.enqueue(delivery, ctx, ops)
    }

    /// Wakes the owning connection after deliveries were queued, unless it was woken since
    /// it last looked at the queue.
    fn wake_owner(&mut self, ctx: &Ctx<'_>) {
        let st = &mut *self.st;
        if !st.woken
            && let Some(waker) = &st.owner
        {
            // Done under the lock so the waker need not be cloned. Once per look at the
            // queue (`Locked::take_wake`), not only on the first message into an empty
            // queue: that would be enough for progress (the connection pumps again whenever
            // its window or output frees up), but then a subscriber whose window is full
            // runs only when its socket is read, and under a flood it got a fifth of its
            // former share of messages.
            st.woken = true;
            if ctx.fan_out {
                waker.wake_in_fan_out();
            } else {
                waker.wake();
            }
        }
    }
    /// The session's client identifier.
    pub fn client_id(&self) -> &Arc<str> {
        &self.session.client_id
    }

    /// Whether the connection that claimed `epoch` still owns the session (false once
    /// another connection took it over or it was discarded).
    pub fn is_owned_by(&self, epoch: u64) -> bool {
        !self.st.ended && self.st.owner.is_some() && self.st.claimed == epoch
    }

    /// Whether the session can still be resumed: not discarded, and with a non-zero expiry
    /// (a session with expiry 0 lasts only as long as its connection and is never reused,
    /// MQTT-3.1.2-6, v5 3.1.2.11.2, even on takeover).
    pub fn resumable(&self) -> bool {
        !self.st.ended && self.st.expiry_secs != 0
    }

    /// The owner looks at the queue now: the next delivery wakes it again (see
    /// `SessionState::woken`).
    pub fn take_wake(&mut self) {
        self.st.woken = false;
    }

    /// Whether the session has ended (it is no longer in the registry).
    pub fn is_ended(&self) -> bool {
        self.st.ended
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.st.subscriptions.len()
    }

    /// Whether the session subscribes to `filter`.
    pub fn has_subscription(&self, filter: &TopicFilter) -> bool {
        self.st.subscriptions.contains_key(filter)
    }

    /// Messages queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.st.queue.len() + self.st.buffers.as_ref().map_or(0, |b| b.len())
    }

    /// Outbound messages sent and not yet fully acknowledged.
    pub fn inflight_count(&self) -> usize {
        self.st.inflight.len()
    }

    /// Every subscription, by full filter.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&TopicFilter, &Subscription)> {
        self.st.subscriptions.iter()
    }

    /// About the connection that owns the session; `None` while disconnected.
    pub fn client_info(&self) -> Option<&Arc<ClientInfo>> {
        self.st.owner_info.as_ref()
    }

    /// Protocol level of the connection that owns (or last owned) the session.
    pub fn protocol(&self) -> ProtocolVersion {
        self.st.protocol
    }

    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub fn expiry_secs(&self) -> u32 {
        self.st.expiry_secs
    }

    /// When the session's connection ended; `None` while connected.
    pub fn disconnected_at(&self) -> Option<Instant> {
        self.st.disconnected_at
    }

    /// Asks the connection that owns the session to close with DISCONNECT 0x98
    /// (administrative action); it does at its next wake-up, now. False if no connection
    /// owns it.
    pub fn kick(&mut self) -> bool {
        self.kick_for(Kick::Operator)
    }

    /// Asks the connection that owns the session to close, for `why`, at its next wake-up,
    /// now. False if no connection owns it.
    pub fn kick_for(&mut self, why: Kick) -> bool {
        if self.st.owner.is_none() {
            return false;
        }
        self.st.kicked = Some(why);
        if let Some(owner) = &self.st.owner {
            owner.wake();
        }
        true
    }

    /// Whether, and why, the owner is to be disconnected.
    pub fn kicked(&self) -> Option<Kick> {
        self.st.kicked
    }

    /// Records which connection owns the session (`None`: disconnected) and wakes the
    /// previous owner, which then finds it no longer owns it. (A waiting successor is woken
    /// by the caller, with `wake_successor`, after it has journaled the change.)
    fn set_owner(&mut self, owner: Option<Waker>) {
        if let Some(old) = self.st.owner.take() {
            old.wake();
        }
        if owner.is_none() {
            self.st.inflight.release_index();
            self.st.owner_info = None;
        }
        self.st.owner = owner;
        self.st.woken = false;
        let online = self.st.owner.is_some();
        self.session.online.store(online, Ordering::Relaxed);
    }

    /// Gives the session to the connection that claimed it with `epoch` (new, or resumed:
    /// the new connection's will replaces the old one, which is cancelled). False if a later
    /// claim already took it or it was discarded: that connection lost the race.
    pub fn attach(&mut self, epoch: u64, waker: Waker, terms: Terms, ops: &mut Ops<'_>) -> bool {
        if self.st.ended || epoch < self.st.claimed {
            return false;
        }
        self.st.claimed = epoch;
        self.set_owner(Some(waker));
        self.st.owner_info = terms.info;
        match (terms.queue_bounds, self.st.rare.as_deref_mut()) {
            (bounds, Some(r)) => r.queue_bounds = bounds,
            (Some(b), None) => {
                self.st.rare = Some(Box::new(Rare {
                    queue_bounds: Some(b),
                    ..Rare::default()
                }));
            }
            (None, None) => {}
        }
        self.st.kicked = None;
        self.st.will = terms.will.map(Box::new);
        self.st.protocol = terms.protocol;
        self.st.expiry_secs = terms.expiry_secs;
        self.st.disconnected_at = None;
        self.save(ops);
        true
    }

    /// Sets the Session Expiry Interval (v5 DISCONNECT); stored when the connection ends.
    pub fn set_expiry(&mut self, secs: u32) {
        self.st.expiry_secs = secs;
    }

    /// Detaches the connection that claimed `epoch`. `None` if another connection took the
    /// session over meanwhile (nothing changes). Otherwise the will is taken for publishing
    /// now (or kept for its delay), the session is marked to end if its expiry is 0, and
    /// messages that came through shared subscriptions are taken for another member.
    pub fn detach(
        &mut self,
        epoch: u64,
        ending: Ending,
        now: Instant,
        ops: &mut Ops<'_>,
    ) -> Option<Detached> {
        if !self.is_owned_by(epoch) {
            return None;
        }
        self.set_owner(None);
        self.st.disconnected_at = Some(now);
        let mut out = Detached::default();
        match ending {
            Ending::Normal | Ending::Shutdown => self.st.will = None,
            Ending::WithWill | Ending::Abnormal => {
                let expiry = self.st.expiry_secs;
                if (self.st.will.as_ref()).is_some_and(|w| w.delay_secs == 0 || expiry == 0) {
                    out.will = self.st.will.take().map(|w| w.will);
                }
            }
        }
        out.end = self.st.expiry_secs == 0 && ending != Ending::Shutdown;
        out.shared = self.take_shared(ops);
        if !out.end {
            self.save(ops);
        }
        Some(out)
    }

    /// Takes the queued and unacknowledged messages that came through shared
    /// subscriptions, deleting their records (another member takes them over).
    fn take_shared(&mut self, ops: &mut Ops<'_>) -> Vec<Delivery> {
        let mut shared = self.take_queued_shared();
        let taken = self
            .st
            .inflight
            .extract(|f| f.delivery.share().is_some() && f.phase == Phase::Published);
        shared.extend(taken.into_iter().map(|f| f.delivery));
        for d in &mut shared {
            self.forget_record(d, ops);
        }
        shared
    }

    /// Ends the session for good: discarded state, its record deleted. Returns the filters
    /// to remove from the route table and its will to publish; `None` if it already ended.
    pub fn end(&mut self, ops: &mut Ops<'_>) -> Option<Ended> {
        if self.st.ended {
            return None;
        }
        self.set_owner(None);
        self.st.ended = true;
        let ended = Ended {
            filters: self.st.subscriptions.keys().cloned().collect(),
            will: self.st.will.take().map(|w| w.will),
        };
        self.st.subscriptions.clear();
        self.st.queue.clear();
        self.st.queued_bytes = 0;
        self.st.queued_qos0 = 0;
        self.st.buffers = None;
        self.st.inflight.clear();
        self.st.awaiting_rel.clear();
        self.save(ops);
        Some(ended)
    }

    /// Housekeeping: forgets inbound QoS 2 ids whose PUBREL never came (after
    /// `rel_timeout`), and says whether a disconnected session expired or its will is due.
    pub fn housekeep(
        &mut self,
        now: Instant,
        rel_timeout: Duration,
        ops: &mut Ops<'_>,
    ) -> Housekeeping {
        self.expire_awaiting(now, rel_timeout, ops);
        let mut out = Housekeeping::default();
        let Some(since) = self.st.disconnected_at else {
            return out;
        };
        if self.st.owner.is_some() || self.st.ended {
            return out;
        }
        out.disconnected = true;
        let gone = now.saturating_duration_since(since);
        let expiry = self.st.expiry_secs;
        if expiry != u32::MAX && gone >= Duration::from_secs(u64::from(expiry)) {
            out.expired = true;
        } else if (self.st.will.as_ref())
            .is_some_and(|w| gone >= Duration::from_secs(u64::from(w.delay_secs)))
        {
            out.will = self.st.will.take().map(|w| w.will);
            self.save(ops);
        }
        out
    }

    /// Adds `filter` (or replaces its options); false if the session has ended. Only
    /// `Broker::subscribe` calls this, after adding the same to the route table, so that both
    /// always agree.
    pub fn insert_subscription(&mut self, filter: TopicFilter, sub: Subscription) -> bool {
        if self.st.ended {
            return false;
        }
        self.st.subscriptions.insert(filter, sub);
        true
    }

    /// Removes `filter`; true if it was there. Only `Broker::unsubscribe` calls this.
    pub fn remove_subscription(&mut self, filter: &TopicFilter) -> bool {
        if let Some(b) = self.st.buffers.as_deref_mut() {
            b.orphan(filter);
        }
        self.st.subscriptions.remove(filter).is_some()
    }

    /// Stores the session's record (subscriptions, will, expiry) if it is persistent, after a
    /// subscription change.
    pub fn save_subscriptions(&mut self, ops: &mut Ops<'_>) {
        if self.st.persisted {
            self.save(ops);
        }
    }

    /// Writes the session's record, or deletes it once its expiry is 0 or it has ended.
    /// Only sessions with a non-zero expiry are persisted.
    fn save(&mut self, ops: &mut Ops<'_>) {
        if !ops.enabled() {
            return;
        }
        let id = self.client_id().clone();
        if self.st.expiry_secs == 0 || self.st.ended {
            if self.st.persisted {
                self.st.persisted = false;
                ops.push(|_| Op::DeleteSession(id));
            }
            return;
        }
        self.st.persisted = true;
        let record = &*self;
        ops.push(|clock| Op::PutSession(id, record.record(clock)));
    }

    /// The session's record as the store keeps it: subscriptions, will, expiry.
    pub fn record(&self, clock: &crate::persist::WallClock) -> SessionRecord {
        let st = &*self.st;
        SessionRecord {
            protocol: st.protocol.level(),
            expiry_secs: st.expiry_secs,
            disconnected_at_ms: st.disconnected_at.map(|t| clock.to_unix_ms(t)),
            subscriptions: st
                .subscriptions
                .iter()
                .map(|(f, s)| SubscriptionRecord {
                    filter: f.as_str().to_string(),
                    options: restore::options_byte(&s.options),
                    id: s.id,
                })
                .collect(),
            will: st.will.as_ref().map(|w| WillRecord {
                packet: crate::persist::encode_will(&w.will),
                delay_secs: w.delay_secs,
            }),
        }
    }
}

/// The terms of a v5 connection with no expiry, no will and the broker's queue bounds, for
/// the session's unit tests.
#[cfg(test)]
fn test_terms() -> Terms {
    Terms {
        protocol: ProtocolVersion::V5,
        expiry_secs: 0,
        will: None,
        info: None,
        queue_bounds: None,
    }
}

/// A delivery of a one-byte message on topic `t`, for the session's unit tests.
#[cfg(test)]
fn test_delivery(qos: starling_proto::QoS, byte: u8) -> Delivery {
    let topic = starling_proto::TopicName::try_from_str("t").unwrap();
    let payload = bytes::Bytes::from(vec![byte]);
    let msg = crate::message::Message::internal(topic, payload, false);
    Delivery::new(Arc::new(msg), qos, false)
}
#[cfg(test)]
mod wakes;

#[cfg(test)]
mod size {
    /// Every connected client, idle or not, has a session: what it holds while nothing
    /// happens is boxed or allocated on first use (the inbound QoS 2 ids, a successor, the
    /// will, the buffers, a waiting successor), and its subscription map keeps no hasher
    /// keys of its own. 248 bytes when this was written.
    #[test]
    fn a_session_stays_small() {
        let size = std::mem::size_of::<super::Session>();
        assert!(size <= 248, "a session grew to {size} bytes");
    }
}
