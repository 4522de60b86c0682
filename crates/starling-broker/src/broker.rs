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

use starling_proto::{ProtocolVersion, Will};

use crate::config::{Features, Limits};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::persist::Persistence;
use crate::retain::RetainStore;
use crate::router::Router;
use crate::session::{Ctx, PendingWill, Session};
use crate::sys::SysState;
use crate::wake::Waker;

mod restore;
mod route;

pub use restore::Restored;
pub use route::Routed;
use starling_store::Op;

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
        waker: Waker,
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
                        st.will = new_will.take().map(Box::new);
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
                        st.will = new_will.take().map(Box::new);
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
            let sh = st.inflight.extract(|f| {
                f.delivery.share.is_some() && f.phase == crate::session::Phase::Published
            });
            shared.extend(sh.into_iter().map(|f| f.delivery));
            if let Some(p) = &self.persist {
                for d in &mut shared {
                    if d.seq != 0 {
                        p.journal
                            .push(Op::DeleteMessage(session.client_id.clone(), d.seq));
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
        if let Some(v) = will.properties.values_mut() {
            v.will_delay_interval = None;
        }
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
                    p.journal.push(Op::DeleteAwaiting(s.client_id.clone(), pid));
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

    /// Every session, connected or not.
    pub fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.sessions().values().cloned().collect()
    }
}
