//! The broker hub: the session registry (connect, takeover, resume, disconnect, expiry),
//! routing of a published message to every matching session, retained messages on the way,
//! wills and their delays, and the periodic housekeeping tick.
//!
//! Shared by every connection behind an `Arc`. Lock order, to stay deadlock-free: the session
//! registry, then a router or retained-store lock, then one session's state; a session's state
//! lock is never held while another lock is taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_proto::{ProtocolVersion, QoS, Will};
use tokio::sync::Notify;

use crate::config::{Features, Limits};
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::persist::Persistence;
use crate::retain::{RetainOutcome, RetainStore};
use crate::router::{Router, Subscriber, Target};
use crate::session::{Ctx, PendingWill, Session, SessionState};
use crate::sys::SysState;
use starling_store::{Op, SessionRecord, SubscriptionRecord, WillRecord};

/// What a client asked for in CONNECT, as far as the session registry cares.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Client identifier (already assigned if the client sent an empty one).
    pub client_id: Arc<str>,
    /// Clean Session / Clean Start.
    pub clean_start: bool,
    /// Protocol level.
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval in seconds, already capped (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// The will, with its delay.
    pub will: Option<PendingWill>,
}

/// The session a connection got.
#[derive(Debug)]
pub struct Attached {
    /// The session, now owned by the connection.
    pub session: Arc<Session>,
    /// Whether an existing session was resumed (CONNACK Session Present).
    pub session_present: bool,
}

/// How a connection ended, for will and expiry handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// DISCONNECT with reason 0x00 (or any 3.x DISCONNECT): the will is discarded.
    Normal,
    /// DISCONNECT with reason 0x04 (Disconnect with Will Message).
    WithWill,
    /// Anything else: socket closed, keep-alive timeout, protocol error. The will is sent.
    Abnormal,
    /// The broker is shutting down: the session is kept, the will is not sent.
    Shutdown,
}

/// The broker core.
#[derive(Debug)]
pub struct Broker {
    /// Limits and timers.
    pub limits: Limits,
    /// Configurable MQTT 5 features.
    pub features: Features,
    /// Counters.
    pub metrics: Metrics,
    /// Subscription index.
    pub router: Router,
    /// Retained messages.
    pub retained: RetainStore,
    /// Every session by client id, connected or not. Bounded by `max_connections` for
    /// connected ones and by session expiry for the rest.
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Source of connection ids.
    next_connection_id: AtomicU64,
    /// Source of assigned client ids.
    next_assigned_id: AtomicU64,
    /// When the broker started.
    pub started: Instant,
    /// Broker name and version for `$SYS/broker/version`.
    pub version: String,
    /// `$SYS` bookkeeping.
    sys: Mutex<SysState>,
    /// Journal and clock when a store is configured (durability `sync` or `periodic`).
    persist: Option<Persistence>,
    /// Prefix of assigned client ids, unique per broker start.
    id_prefix: String,
}

/// What [`Broker::restore`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Sessions restored.
    pub sessions: usize,
    /// Queued and inflight messages restored.
    pub messages: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Sessions that expired while the broker was down.
    pub expired_sessions: usize,
    /// Messages that expired while the broker was down.
    pub expired_messages: usize,
    /// Records that could not be decoded and were left out.
    pub skipped: usize,
}

/// What became of a publish.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed {
    /// Sessions that accepted a delivery.
    pub reached: usize,
    /// What became of the retained copy, if RETAIN was set.
    pub retained: Option<RetainOutcome>,
    /// Journal ticket of the last store write the publish caused.
    pub ticket: Option<u64>,
}

impl Broker {
    /// A broker with the given limits.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self::with_features(limits, Features::default(), now)
    }

    /// A broker with the given limits and features.
    pub fn with_features(limits: Limits, features: Features, now: Instant) -> Self {
        Self {
            limits,
            features,
            metrics: Metrics::default(),
            router: Router::default(),
            retained: RetainStore::default(),
            sessions: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            next_assigned_id: AtomicU64::new(1),
            started: now,
            version: format!("starling {}", env!("CARGO_PKG_VERSION")),
            sys: Mutex::new(SysState::new(now)),
            persist: None,
            id_prefix: "starling-".into(),
        }
    }

    /// Makes every persistent-state change go through `p`'s journal.
    pub fn with_persistence(mut self, p: Persistence) -> Self {
        self.id_prefix = format!("starling-{:x}-", p.clock.to_unix_ms(self.started));
        self.persist = Some(p);
        self
    }

    /// The journal and clock, when the broker has a store.
    pub fn persistence(&self) -> Option<&Persistence> {
        self.persist.as_ref()
    }

    /// What enqueueing into a session needs.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            limits: &self.limits,
            metrics: &self.metrics,
            persist: self.persist.as_ref(),
        }
    }

    /// Writes a session's record (or deletes it once its expiry is 0), if there is a store.
    /// Returns the journal ticket.
    pub fn persist_session(&self, session: &Session, st: &mut SessionState) -> Option<u64> {
        let p = self.persist.as_ref()?;
        let id = session.client_id.to_string();
        if st.expiry_secs == 0 || st.ended {
            if !st.persisted {
                return None;
            }
            st.persisted = false;
            return Some(p.journal.push(Op::DeleteSession(id)));
        }
        st.persisted = true;
        let record = SessionRecord {
            protocol: st.protocol.level(),
            expiry_secs: st.expiry_secs,
            disconnected_at_ms: st.disconnected_at.map(|t| p.clock.to_unix_ms(t)),
            subscriptions: st
                .subscriptions
                .iter()
                .map(|(f, s)| SubscriptionRecord {
                    filter: f.as_str().to_string(),
                    options: options_byte(&s.options),
                    id: s.id,
                })
                .collect(),
            will: st.will.as_ref().map(|w| WillRecord {
                packet: crate::persist::encode_will(&w.will),
                delay_secs: w.delay_secs,
            }),
        };
        Some(p.journal.push(Op::PutSession(id, record)))
    }

    /// A fresh connection id.
    pub fn connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client id for a v5 client that sent an empty one.
    pub fn assign_client_id(&self) -> String {
        let n = self.next_assigned_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.id_prefix)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Attaches connection `conn_id` to the session of `req.client_id`: resumes it, or starts
    /// a new one. An existing owner is told to go (it finds it no longer owns the session and
    /// closes with 0x8E). The old session's will is published when the old session ends here
    /// (clean start), and dropped when it is resumed.
    pub fn connect(
        &self,
        conn_id: u64,
        waker: Arc<Notify>,
        req: ConnectRequest,
        now: Instant,
    ) -> Attached {
        let mut wills = Vec::new();
        let mut new_will = req.will;
        let attached = {
            let mut sessions = self.sessions();
            let existing = sessions.get(&req.client_id).cloned();
            let resumed = match existing {
                Some(old) if !req.clean_start => {
                    let mut st = old.lock();
                    if st.ended || st.expiry_secs == 0 {
                        // A session with expiry 0 lasts only as long as its connection and is
                        // never reused (MQTT-3.1.2-6, v5 3.1.2.11.2), even on takeover.
                        drop(st);
                        self.discard_for_takeover(&mut sessions, &old, &mut wills);
                        None
                    } else {
                        Session::set_owner(&mut st, &old, Some((conn_id, waker.clone())));
                        // The new connection's will replaces the old one, which is cancelled: the session
                        // was resumed.
                        st.will = new_will.take();
                        st.protocol = req.protocol;
                        st.expiry_secs = req.expiry_secs;
                        st.disconnected_at = None;
                        self.persist_session(&old, &mut st);
                        drop(st);
                        Some(old)
                    }
                }
                Some(old) => {
                    // Clean start: the old session ends now; its will goes out now.
                    self.discard_for_takeover(&mut sessions, &old, &mut wills);
                    None
                }
                None => None,
            };
            match resumed {
                Some(session) => Attached {
                    session,
                    session_present: true,
                },
                None => {
                    let session = Arc::new(Session::new(req.client_id.clone(), req.protocol));
                    {
                        let mut st = session.lock();
                        Session::set_owner(&mut st, &session, Some((conn_id, waker)));
                        st.will = new_will.take();
                        st.expiry_secs = req.expiry_secs;
                        self.persist_session(&session, &mut st);
                    }
                    sessions.insert(req.client_id.clone(), session.clone());
                    Attached {
                        session,
                        session_present: false,
                    }
                }
            }
        };
        for w in wills {
            self.publish_will(w, now);
        }
        attached
    }

    /// Ends `old` because a new connection does not resume it: its owner is told to go, its
    /// will is collected for publishing, its subscriptions and record are removed.
    fn discard_for_takeover(
        &self,
        sessions: &mut HashMap<Arc<str>, Arc<Session>>,
        old: &Arc<Session>,
        wills: &mut Vec<Will>,
    ) {
        let mut st = old.lock();
        Session::set_owner(&mut st, old, None);
        st.ended = true;
        if let Some(w) = st.will.take() {
            wills.push(w.will);
        }
        let filters: Vec<_> = st.subscriptions.keys().cloned().collect();
        st.clear();
        self.persist_session(old, &mut st);
        drop(st);
        for f in &filters {
            self.router.unsubscribe(f, old);
        }
        sessions.remove(&old.client_id);
    }

    /// Detaches connection `conn_id` from `session`. Does nothing if another connection took
    /// the session over meanwhile. Publishes the will (now, or schedules it after its delay),
    /// ends the session if its expiry is 0, and hands messages that came through shared
    /// subscriptions to other members of their groups.
    pub fn disconnect(&self, session: &Arc<Session>, conn_id: u64, ending: Ending, now: Instant) {
        let mut will_now = None;
        let mut shared = Vec::new();
        let end;
        {
            let mut st = session.lock();
            if st.owner != Some(conn_id) || st.ended {
                return;
            }
            Session::set_owner(&mut st, session, None);
            st.disconnected_at = Some(now);
            match ending {
                Ending::Normal | Ending::Shutdown => st.will = None,
                Ending::WithWill | Ending::Abnormal => {
                    if st
                        .will
                        .as_ref()
                        .is_some_and(|w| w.delay_secs == 0 || st.expiry_secs == 0)
                    {
                        will_now = st.will.take();
                    }
                }
            }
            end = st.expiry_secs == 0 && ending != Ending::Shutdown;
            // Messages from shared subscriptions not yet acknowledged go to another member.
            let mut keep = std::collections::VecDeque::new();
            while let Some(d) = st.pop_queued() {
                if d.share.is_some() {
                    shared.push(d);
                } else {
                    keep.push_back(d);
                }
            }
            for d in keep {
                st.queued_bytes += d.msg.cost();
                st.queue.push_back(d);
            }
            let (sh, rest): (Vec<_>, Vec<_>) = st.inflight.drain(..).partition(|f| {
                f.delivery.share.is_some() && f.phase == crate::session::Phase::Published
            });
            st.inflight = rest.into();
            shared.extend(sh.into_iter().map(|f| f.delivery));
            if let Some(p) = &self.persist {
                for d in &mut shared {
                    if d.seq != 0 {
                        p.journal
                            .push(Op::DeleteMessage(session.client_id.to_string(), d.seq));
                        d.seq = 0;
                    }
                }
            }
            if !end {
                self.persist_session(session, &mut st);
            }
        }
        if let Some(w) = will_now {
            self.publish_will(w.will, now);
        }
        if end {
            self.end_session(session, now);
        }
        for d in shared {
            self.redistribute(d, session);
        }
    }

    /// Removes a session for good: subscriptions, registry entry; its pending will goes out.
    fn end_session(&self, session: &Arc<Session>, now: Instant) {
        let (filters, will) = {
            let mut st = session.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            let filters: Vec<_> = st.subscriptions.keys().cloned().collect();
            st.clear();
            let will = st.will.take();
            self.persist_session(session, &mut st);
            (filters, will)
        };
        for f in &filters {
            self.router.unsubscribe(f, session);
        }
        {
            let mut sessions = self.sessions();
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
        }
        if let Some(w) = will {
            self.publish_will(w.will, now);
        }
    }

    fn publish_will(&self, mut will: Will, now: Instant) {
        // Will Delay Interval belongs to the will, not to the message sent on.
        will.properties.will_delay_interval = None;
        let publish = starling_proto::Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: 0,
            properties: will.properties,
            payload: will.payload,
        };
        let msg = Message::from_publish(publish, None, now);
        self.publish(Arc::new(msg));
    }

    fn note_ticket(ticket: &mut Option<u64>, t: Option<u64>) {
        if let Some(t) = t {
            *ticket = Some(ticket.map_or(t, |old| old.max(t)));
        }
    }

    /// Routes a message: stores or clears it as retained if RETAIN is set, then queues it for
    /// every matching session (one delivery per session, overlapping subscriptions merged:
    /// highest QoS, every subscription identifier). Returns how many sessions it reached,
    /// what became of the retained copy, and the journal ticket of what it stored.
    pub fn publish(&self, msg: Arc<Message>) -> Routed {
        let mut ticket = None;
        let retained = msg.retain.then(|| {
            let outcome = self
                .retained
                .set(msg.clone(), self.limits.max_retained_messages);
            match outcome {
                RetainOutcome::Full => self.metrics.retained_refused.inc(),
                RetainOutcome::Stored | RetainOutcome::Cleared => {
                    if let Some(p) = &self.persist {
                        let topic = msg.topic.as_str().to_string();
                        let op = if outcome == RetainOutcome::Cleared {
                            Op::DeleteRetained(topic)
                        } else {
                            Op::PutRetained(topic, crate::persist::retained_record(&msg, &p.clock))
                        };
                        ticket = Some(p.journal.push(op));
                    }
                }
            }
            outcome
        });
        let ctx = self.ctx();
        let publisher = msg.publisher.as_deref();
        let (reached, deliveries_ticket) =
            self.router.with_matches(msg.topic.as_bytes(), |targets| {
                let mut reached = 0usize;
                let mut ticket = None;
                let mut deliver = |session: &Session, d: Delivery| {
                    let (accepted, t) = session.deliver(d, &ctx);
                    reached += usize::from(accepted);
                    Self::note_ticket(&mut ticket, t);
                };
                // Plain subscriptions: one delivery per session, overlapping subscriptions merged.
                let mut plain: Vec<&Subscriber> = targets
                    .iter()
                    .filter_map(|t| match t {
                        Target::Plain(s) => Some(*s),
                        Target::Shared(..) => None,
                    })
                    .filter(|s| !(s.options.no_local && publisher == Some(&*s.session.client_id)))
                    .collect();
                if plain.len() > 1 {
                    plain.sort_by_key(|s| Arc::as_ptr(&s.session) as usize);
                }
                let mut i = 0;
                while let Some(first) = plain.get(i) {
                    let mut qos = msg.qos.min(first.options.qos);
                    let mut rap = first.options.retain_as_published;
                    let mut sub_ids: Vec<u32> = first.id.into_iter().collect();
                    let mut j = i + 1;
                    while let Some(other) = plain.get(j) {
                        if !Arc::ptr_eq(&first.session, &other.session) {
                            break;
                        }
                        qos = qos.max(msg.qos.min(other.options.qos));
                        rap |= other.options.retain_as_published;
                        sub_ids.extend(other.id);
                        j += 1;
                    }
                    let d = Delivery {
                        msg: msg.clone(),
                        qos,
                        retain: rap && msg.retain,
                        sub_ids,
                        share: None,
                        seq: 0,
                    };
                    deliver(&first.session, d);
                    i = j;
                }
                // Shared groups: one member each.
                for t in targets {
                    if let Target::Shared(members, key, next) = t
                        && let Some(m) = pick_member(members, next, None)
                    {
                        let d = Delivery {
                            msg: msg.clone(),
                            qos: msg.qos.min(m.options.qos),
                            retain: m.options.retain_as_published && msg.retain,
                            sub_ids: m.id.into_iter().collect(),
                            share: Some((*key).clone()),
                            seq: 0,
                        };
                        deliver(&m.session, d);
                    }
                }
                (reached, ticket)
            });
        Self::note_ticket(&mut ticket, deliveries_ticket);
        Routed {
            reached,
            retained,
            ticket,
        }
    }

    /// Hands a delivery that came through a shared subscription to another member of its
    /// group (not `from`); if there is none, back to `from`'s queue.
    fn redistribute(&self, d: Delivery, from: &Arc<Session>) {
        let Some(key) = d.share.clone() else { return };
        let mut target = None;
        self.router.for_each_match(d.msg.topic.as_bytes(), |t| {
            if let Target::Shared(members, k, next) = t
                && target.is_none()
                && **k == *key
            {
                target = pick_member(members, next, Some(from)).map(|m| m.session.clone());
            }
        });
        let to = target.unwrap_or_else(|| from.clone());
        let mut d = d;
        if Arc::ptr_eq(&to, from) {
            d.share = None;
        }
        to.deliver(d, &self.ctx());
    }

    /// Housekeeping, called about once a second: expires sessions, publishes delayed wills,
    /// forgets QoS 2 ids whose PUBREL never came, and refreshes `$SYS`.
    pub fn tick(&self, now: Instant) {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let rel_timeout = Duration::from_secs(self.limits.awaiting_rel_timeout_secs);
        let mut expired = Vec::new();
        let mut wills = Vec::new();
        let mut disconnected = 0u64;
        for s in &sessions {
            let mut st = s.lock();
            let expired_ids: Vec<u16> = st
                .awaiting_rel
                .iter()
                .filter(|(_, t)| now.saturating_duration_since(**t) >= rel_timeout)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in expired_ids {
                st.awaiting_rel.remove(&pid);
                if let (Some(p), true) = (&self.persist, st.persisted) {
                    p.journal
                        .push(Op::DeleteAwaiting(s.client_id.to_string(), pid));
                }
            }
            let Some(since) = st.disconnected_at else {
                continue;
            };
            if st.owner.is_some() {
                continue;
            }
            disconnected += 1;
            let gone = now.saturating_duration_since(since);
            if st.expiry_secs != u32::MAX && gone >= Duration::from_secs(u64::from(st.expiry_secs))
            {
                expired.push(s.clone());
            } else if st
                .will
                .as_ref()
                .is_some_and(|w| gone >= Duration::from_secs(u64::from(w.delay_secs)))
                && let Some(w) = st.will.take()
            {
                wills.push(w.will);
                self.persist_session(s, &mut st);
            }
        }
        for w in wills {
            self.publish_will(w, now);
        }
        for s in expired {
            self.metrics.sessions_expired.inc();
            self.end_session(&s, now);
        }
        let due = {
            let mut sys = self.sys.lock().unwrap_or_else(|p| p.into_inner());
            sys.due(now, self.limits.sys_interval_secs, &self.metrics)
        };
        if let Some(loads) = due {
            for msg in crate::sys::messages(self, disconnected, &loads, now) {
                self.publish(Arc::new(msg));
            }
        }
    }

    /// Rebuilds the state a store held: persistent sessions (disconnected, with their
    /// subscriptions, queued and inflight messages and awaiting QoS 2 ids), and retained
    /// messages. What expired while the broker was down is dropped (and deleted from the
    /// store). Call before any client connects.
    pub fn restore(&self, snap: starling_store::Snapshot, now: Instant) -> Restored {
        let mut report = Restored::default();
        let Some(p) = self.persist.clone() else {
            return report;
        };
        let clock = p.clock;
        for loaded in snap.sessions {
            let rec = loaded.record;
            let disconnected_at = rec
                .disconnected_at_ms
                .map_or(now, |ms| clock.from_unix_ms(ms, now));
            let gone = now.saturating_duration_since(disconnected_at);
            if rec.expiry_secs != u32::MAX
                && gone >= Duration::from_secs(u64::from(rec.expiry_secs))
            {
                p.journal.push(Op::DeleteSession(loaded.client_id));
                report.expired_sessions += 1;
                continue;
            }
            let protocol = match rec.protocol {
                3 => ProtocolVersion::V31,
                4 => ProtocolVersion::V311,
                _ => ProtocolVersion::V5,
            };
            let client_id: Arc<str> = loaded.client_id.as_str().into();
            let session = Arc::new(Session::new(client_id.clone(), protocol));
            {
                let mut st = session.lock();
                st.persisted = true;
                st.expiry_secs = rec.expiry_secs;
                st.disconnected_at = Some(disconnected_at);
                st.will = rec.will.as_ref().and_then(|w| {
                    let (msg, qos, retain, _) = crate::persist::decode_message(
                        &starling_store::MessageRecord {
                            packet: w.packet.clone(),
                            expires_at_ms: None,
                            phase: starling_store::MessagePhase::Queued,
                            packet_id: 0,
                        },
                        &clock,
                        now,
                    )?;
                    Some(PendingWill {
                        will: Will {
                            topic: msg.topic,
                            payload: msg.payload,
                            qos,
                            retain,
                            properties: msg.properties,
                        },
                        delay_secs: w.delay_secs,
                    })
                });
                for sub in &rec.subscriptions {
                    let Ok(filter) = starling_proto::TopicFilter::try_from_str(&sub.filter) else {
                        report.skipped += 1;
                        continue;
                    };
                    let options = options_from_byte(sub.options);
                    self.router.subscribe(&filter, &session, options, sub.id);
                    st.subscriptions.insert(
                        filter,
                        crate::session::Subscription {
                            options,
                            id: sub.id,
                        },
                    );
                }
                for (seq, m) in loaded.messages {
                    st.next_seq = st.next_seq.max(seq + 1);
                    let Some((msg, qos, retain, sub_ids)) =
                        crate::persist::decode_message(&m, &clock, now)
                    else {
                        report.skipped += 1;
                        continue;
                    };
                    if m.phase == starling_store::MessagePhase::Queued && msg.is_expired(now) {
                        p.journal
                            .push(Op::DeleteMessage(loaded.client_id.clone(), seq));
                        report.expired_messages += 1;
                        continue;
                    }
                    let delivery = Delivery {
                        msg: Arc::new(msg),
                        qos,
                        retain,
                        sub_ids,
                        share: None,
                        seq,
                    };
                    report.messages += 1;
                    match m.phase {
                        starling_store::MessagePhase::Queued => {
                            st.queued_bytes += delivery.msg.cost();
                            st.queue.push_back(delivery);
                        }
                        phase => {
                            st.next_packet_id =
                                st.next_packet_id.max(m.packet_id.wrapping_add(1)).max(1);
                            st.inflight.push_back(crate::session::Inflight {
                                packet_id: m.packet_id,
                                delivery,
                                phase: if phase == starling_store::MessagePhase::Released {
                                    crate::session::Phase::Released
                                } else {
                                    crate::session::Phase::Published
                                },
                            });
                        }
                    }
                }
                for pid in loaded.awaiting {
                    st.awaiting_rel.insert(pid, now);
                }
            }
            self.sessions().insert(client_id, session);
            report.sessions += 1;
        }
        for (topic, m) in snap.retained {
            let Some((msg, _, _, _)) = crate::persist::decode_message(&m, &clock, now) else {
                report.skipped += 1;
                continue;
            };
            if msg.is_expired(now) {
                p.journal.push(Op::DeleteRetained(topic));
                report.expired_messages += 1;
                continue;
            }
            let mut msg = msg;
            msg.retain = true;
            self.retained.set(Arc::new(msg), usize::MAX);
            report.retained += 1;
        }
        report
    }

    /// Every session, connected or not.
    pub fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.sessions().values().cloned().collect()
    }
}

/// Picks the next member of a shared group in turn, preferring connected members and
/// skipping `exclude`.
fn pick_member<'a>(
    members: &'a [Subscriber],
    next: &std::sync::atomic::AtomicUsize,
    exclude: Option<&Arc<Session>>,
) -> Option<&'a Subscriber> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    let allowed = |m: &&Subscriber| exclude.is_none_or(|e| !Arc::ptr_eq(&m.session, e));
    (0..n)
        .filter_map(|k| members.get((start + k) % n))
        .filter(allowed)
        .find(|m| m.session.is_online())
        .or_else(|| {
            (0..n)
                .filter_map(|k| members.get((start + k) % n))
                .find(allowed)
        })
}

/// The subscription options byte as MQTT 5 encodes it.
fn options_byte(o: &starling_proto::SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

/// Subscription options from the MQTT 5 options byte.
fn options_from_byte(b: u8) -> starling_proto::SubscriptionOptions {
    use starling_proto::RetainHandling as RH;
    starling_proto::SubscriptionOptions {
        qos: QoS::from_u8(b & 0x03).unwrap_or(QoS::AtMostOnce),
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            0 => RH::SendAtSubscribe,
            1 => RH::SendIfNew,
            _ => RH::DoNotSend,
        },
    }
}
