//! The broker core, shared by every connection: the session registry, the route table, the
//! retained store and the forwarder (each behind its seam, with the single-node
//! implementation by default), limits, counters, and the one place state changes go to the
//! store ([`Broker::persist`]).
//!
//! - `lifecycle.rs`: a session's life: connect (claim, resume, takeover), disconnect, end,
//!   wills and the housekeeping tick.
//! - `route.rs`: routing a publish, and handing shared messages over.
//! - `restore.rs`: rebuilding from a store snapshot.
//! - `handover.rs`: a session moving to or from another node of a cluster.
//!
//! Lock order, to stay deadlock-free: the registry, then the route table or retained store,
//! then one session; a session's lock is never held while another lock is taken.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use starling_proto::TopicFilter;

use crate::bans::Bans;
use crate::config::{Features, Limits};
use crate::forward::{Forwarder, NoPeers};
use crate::hook::Hooks;
use crate::metrics::Metrics;
use crate::persist::{Ops, Persistence};
use crate::retain::{RetainStore, RetainTree};
use crate::router::{Routes, Subscriber};
use crate::session::{Ctx, Session, Subscription};
use crate::sys::SysState;

mod admin;
mod handover;
mod lifecycle;
pub mod ownership;
mod registry;
mod restore;
mod route;

pub use admin::{AdminError, Page};
pub use handover::HandOver;
pub use lifecycle::{Attached, Claim, ConnectRequest, Ending};
pub use ownership::{Acquire, Alone, Grant, Ownership};
pub use registry::{LocalRegistry, Registry};
pub use restore::Restored;
pub use route::Routed;

/// The seams a broker runs on. [`Seams::default`] is a single node.
#[derive(Debug)]
pub struct Seams {
    /// Client id to session.
    pub registry: Box<dyn Registry>,
    /// Filter to subscribers.
    pub routes: Routes,
    /// Retained messages.
    pub retained: Box<dyn RetainStore>,
    /// Messages for other nodes.
    pub forwarder: Box<dyn Forwarder>,
    /// Who in a cluster owns each client id.
    pub ownership: Box<dyn Ownership>,
}

impl Default for Seams {
    fn default() -> Self {
        Self {
            registry: Box::<LocalRegistry>::default(),
            routes: Routes::default(),
            retained: Box::<RetainTree>::default(),
            forwarder: Box::new(NoPeers),
            ownership: Box::new(Alone),
        }
    }
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
    /// Bans set by an operator.
    pub bans: Bans,
    seams: Seams,
    /// Source of assigned client ids.
    next_assigned_id: AtomicU64,
    /// When the broker started.
    started: Instant,
    /// Broker name and version for `$SYS/broker/version`.
    version: String,
    /// `$SYS` bookkeeping.
    sys: Mutex<SysState>,
    /// Plugins' hooks, in order; empty by default.
    hooks: Hooks,
    /// Journal and clock when a store is configured (durability `sync` or `periodic`).
    persist: Option<Persistence>,
    /// Prefix of assigned client ids, unique per broker start.
    id_prefix: String,
    /// This broker's name among brokers joined by bridges: told in CONNACK to a client that
    /// announces itself as a Starling bridge, which uses it to stop loops. Empty: not told.
    node_id: String,
    /// What connections giving way in a burst learn of the others (`connection/turn.rs`).
    pub(crate) turns: crate::connection::Turns,
    /// The plain subscriptions of sessions handed over to another node of a cluster and kept
    /// here a while for what other nodes still forward to this one (`handover.rs`): matched
    /// by messages from peers only, never told to them.
    relays: crate::router::Router,
}

impl Broker {
    /// A single-node broker with the given limits.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self::with_features(limits, Features::default(), now)
    }

    /// A single-node broker with the given limits and features.
    pub fn with_features(limits: Limits, features: Features, now: Instant) -> Self {
        Self::with_seams(limits, features, Seams::default(), now)
    }

    /// A broker on the given seams.
    pub fn with_seams(limits: Limits, features: Features, seams: Seams, now: Instant) -> Self {
        Self {
            limits,
            features,
            metrics: Metrics::default(),
            bans: Bans::default(),
            seams,
            next_assigned_id: AtomicU64::new(1),
            started: now,
            version: format!("starling {}", env!("CARGO_PKG_VERSION")),
            sys: Mutex::new(SysState::new()),
            hooks: Hooks::default(),
            persist: None,
            id_prefix: "starling-".into(),
            node_id: String::new(),
            turns: crate::connection::Turns::new(now),
            relays: crate::router::Router::default(),
        }
    }

    /// Names this broker for bridges' loop detection (see [`Broker::node_id`]).
    pub fn with_node_id(mut self, id: String) -> Self {
        self.node_id = id;
        self
    }

    /// This broker's name among brokers joined by bridges (empty: none). A message that
    /// crossed a bridge carries the names of the brokers it came through in the
    /// `starling-via` user property; a bridge does not take it to a broker named there.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Asks `ownership` who in a cluster owns each client id (see [`ownership`]); a single
    /// node owns them all.
    pub fn with_ownership(mut self, ownership: Box<dyn Ownership>) -> Self {
        self.seams.ownership = ownership;
        self
    }

    /// Routes publishes through `routes` (a cluster's table, which also names other nodes).
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.seams.routes = routes;
        self
    }

    /// Keeps retained messages in `retained` (a cluster's replicated store); set before the
    /// store is restored.
    pub fn with_retained(mut self, retained: Box<dyn crate::retain::RetainStore>) -> Self {
        self.seams.retained = retained;
        self
    }

    /// Hands messages for other nodes to `forwarder`.
    pub fn with_forwarder(mut self, forwarder: Box<dyn Forwarder>) -> Self {
        self.seams.forwarder = forwarder;
        self
    }

    /// Who in a cluster owns each client id.
    pub(crate) fn ownership(&self) -> &dyn Ownership {
        &*self.seams.ownership
    }

    /// Calls `hooks` at their events (see [`crate::hook`]).
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// The plugins' hooks.
    #[inline]
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
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

    /// Whether the store is low on space (`min_free_bytes`): new QoS 1/2 messages are refused.
    pub fn store_low_on_space(&self) -> bool {
        self.persist
            .as_ref()
            .is_some_and(|p| p.journal.low_on_space())
    }

    /// An empty list of store operations for this broker's store (records nothing without
    /// one). Fill it through session methods, then hand it to [`Broker::persist`].
    pub fn ops(&self) -> Ops<'_> {
        Ops::new(self.persist.as_ref())
    }

    /// The one place state changes reach the store: appends `ops` to the journal, in order,
    /// and returns the ticket of the last, which an acknowledgement of them waits for
    /// ("persist, then acknowledge"). `None` when there was nothing to store.
    pub fn persist(&self, ops: &mut Ops<'_>) -> Option<u64> {
        self.persist_publish(ops).map(|(ticket, _)| ticket)
    }

    /// As [`Broker::persist`] for a publish's ops, and whether they form a group whose
    /// acknowledgement may go without a commit once all of it is delivered and acknowledged
    /// ([`Journal::append`](crate::persist::Journal::append)).
    pub fn persist_publish(&self, ops: &mut Ops<'_>) -> Option<(u64, bool)> {
        if ops.is_empty() {
            return None;
        }
        let p = self.persist.as_ref()?;
        Some(ops.append_to(&p.journal))
    }

    /// What enqueueing into a session needs.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            limits: &self.limits,
            metrics: &self.metrics,
            hooks: &self.hooks,
            fan_out: false,
        }
    }

    /// When the broker started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Broker name and version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A client id for a v5 client that sent an empty one.
    pub fn assign_client_id(&self) -> String {
        let n = self.next_assigned_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.id_prefix)
    }

    /// Number of sessions, connected or not.
    pub fn session_count(&self) -> usize {
        self.seams.registry.len()
    }

    /// Every session, connected or not.
    pub fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.seams.registry.sessions()
    }

    /// Number of subscriptions (shared ones included).
    pub fn subscription_count(&self) -> usize {
        self.seams.routes.table().count()
    }

    /// Number of shared subscriptions.
    pub fn shared_subscription_count(&self) -> usize {
        self.seams.routes.table().shared_count()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.seams.retained.count()
    }

    /// Payload bytes of the retained messages.
    pub fn retained_bytes(&self) -> usize {
        self.seams.retained.bytes()
    }

    /// The retained messages matching `filter` (an unshared filter), unexpired.
    pub fn retained_matching(
        &self,
        filter: &[u8],
        now: Instant,
    ) -> Vec<Arc<crate::message::Message>> {
        self.seams.retained.matching(filter, now)
    }

    /// Adds (or replaces) `session`'s subscription to `filter`, in the route table and in the
    /// session, which always agree: this and [`Broker::unsubscribe`] are the only places that
    /// change either. Returns whether it existed. A session that ended meanwhile (taken over)
    /// gets nothing.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &TopicFilter,
        sub: Subscription,
    ) -> bool {
        let routes = self.seams.routes.table();
        let existed = routes.subscribe(filter, Subscriber::new(session, &sub));
        // A copy of its own: the one decoded shares the read buffer of the SUBSCRIBE, which
        // may be a 16 KiB buffer of many packets, and the session keeps it for long.
        if !session.lock().insert_subscription(filter.detached(), sub) {
            routes.unsubscribe(filter, session);
        }
        existed
    }

    /// Removes `session`'s subscription to `filter` from the session and the route table.
    /// Returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &TopicFilter) -> bool {
        let had = session.lock().remove_subscription(filter);
        self.seams.routes.table().unsubscribe(filter, session);
        had
    }
}
