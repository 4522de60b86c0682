//! A session's life in the registry: connect (a claim that resumes or starts a session, and
//! takes an existing one over), disconnect, end; wills and their delay; and the housekeeping
//! tick that expires sessions, sends delayed wills and refreshes `$SYS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::{ProtocolVersion, Will};

use super::Broker;
use crate::hook::{Event, SessionActions, SessionChange, SessionEvent};
use crate::message::Message;
use crate::persist::Ops;
use crate::router::RouteTable;
use crate::session::{ClientInfo, PendingWill, Session, Terms};
use crate::wake::Waker;

/// Most times a CONNECT looks again at its client id because another claim changed it in the
/// meantime, before it is refused as "server busy".
const CLAIM_ATTEMPTS: usize = 64;

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
    /// About the connection, for the admin API.
    pub info: Option<Arc<ClientInfo>>,
    /// Queue bounds replacing the broker's (from the listener).
    pub queue_bounds: Option<crate::config::QueueBounds>,
}

/// The session a connection got.
#[derive(Debug)]
pub struct Attached {
    /// The session, now owned by the connection.
    pub session: Arc<Session>,
    /// Whether an existing session was resumed (CONNACK Session Present).
    pub session_present: bool,
    /// The epoch of the connection's claim: it owns the session while the session says so.
    pub epoch: u64,
    /// The journal ticket of what the connect changed in the store: CONNACK shows it to the
    /// client, so in durability `sync` it waits for this.
    pub ticket: Option<u64>,
}

/// What came of a claim on a client id.
#[derive(Debug)]
pub enum Claim {
    /// The connection got the session.
    Attached(Attached),
    /// Another connection owns the session: it was asked to hand it over once it has read
    /// what its client already sent; the handover waker fires then (or when the owner goes).
    Waiting,
    /// Other claims for the same client id kept changing it (server busy).
    Busy,
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

impl Broker {
    /// Gives the connection woken by `waker` the session of `req.client_id`: resumes it, or
    /// starts a new one. An existing session that is not resumed ends now (its will goes out);
    /// an existing owner is woken and finds it no longer owns the session (it closes with
    /// 0x8E).
    ///
    /// With a `handover` waker and a connection owning the session, nothing is claimed yet:
    /// the owner is asked to read what its client has already sent first (a DISCONNECT
    /// there may end the session, and then the new connection must not resume it), and
    /// `handover` fires once it has, or once it has gone. The caller then claims again without
    /// one (also if it does not fire in time: the owner's task may be stuck).
    pub fn connect(
        &self,
        waker: Waker,
        req: ConnectRequest,
        now: Instant,
        handover: Option<Waker>,
    ) -> Claim {
        if let Some(successor) = handover
            && let Some(current) = self.seams.registry.get(&req.client_id)
            && current.lock().ask_to_hand_over(successor, !req.clean_start)
        {
            return Claim::Waiting;
        }
        let mut ops = self.ops();
        let mut will = None;
        let mut replaced = None;
        let mut attached = None;
        for _ in 0..CLAIM_ATTEMPTS {
            let registry = &self.seams.registry;
            let current = registry.get(&req.client_id);
            let resumed = current
                .as_ref()
                .filter(|s| !req.clean_start && s.lock().resumable())
                .cloned();
            let present = resumed.is_some();
            let session = resumed
                .unwrap_or_else(|| Arc::new(Session::new(req.client_id.clone(), req.protocol)));
            let Some(epoch) = registry.claim(&session, current.as_ref()) else {
                continue;
            };
            if let Some(old) = current.filter(|old| !Arc::ptr_eq(old, &session)) {
                will = self.end_replaced(&old, &mut ops);
                replaced = Some(old);
            }
            attached = Some(Attached {
                session,
                session_present: present,
                epoch,
                ticket: None,
            });
            break;
        }
        let Some(mut attached) = attached else {
            return Claim::Busy;
        };
        let terms = Terms {
            protocol: req.protocol,
            expiry_secs: req.expiry_secs,
            will: req.will,
            info: req.info,
            queue_bounds: req.queue_bounds,
        };
        // False only if a later claim already took the session: the connection then finds
        // itself taken over at once.
        let _ = attached
            .session
            .lock()
            .attach(attached.epoch, waker, terms, &mut ops);
        attached.ticket = self.persist(&mut ops);
        // Anyone else waiting for either session claims it after this claim is journaled.
        attached.session.lock().wake_successor();
        if let Some(old) = replaced {
            old.lock().wake_successor();
        }
        if let Some(w) = will {
            self.publish_will(w, now);
        }
        Claim::Attached(attached)
    }

    /// Ends a session a claim replaced in the registry; returns its will, to publish.
    fn end_replaced(&self, old: &Arc<Session>, ops: &mut Ops<'_>) -> Option<Will> {
        let ended = old.lock().end(ops)?;
        self.unroute(old, &ended.filters);
        ended.will
    }

    /// Removes a session's subscriptions from the route table (it has already dropped them).
    pub(super) fn unroute(&self, session: &Arc<Session>, filters: &[starling_proto::TopicFilter]) {
        let relaying = self.relays.count() > 0;
        for f in filters {
            self.seams.routes.table().unsubscribe(f, session);
            if relaying {
                self.relays.unsubscribe(f, session);
            }
        }
    }

    /// Moves the plain subscriptions of `session`, handed over to another node, from the
    /// route table (so that this node stops telling its peers of them) to the relays,
    /// which only messages from peers match: what a peer forwards here late still reaches
    /// the session, for its new owner to take (`Broker::hand_over` with `keep`).
    pub(super) fn relay(&self, session: &Arc<Session>) {
        let subs: Vec<(starling_proto::TopicFilter, crate::router::Subscriber)> = {
            let s = session.lock();
            s.subscriptions()
                .map(|(f, sub)| (f.clone(), crate::router::Subscriber::new(session, sub)))
                .collect()
        };
        for (filter, sub) in subs {
            self.seams.routes.table().unsubscribe(&filter, session);
            if filter.share_group().is_none() {
                self.relays.subscribe(&filter, sub);
            }
        }
    }

    /// Detaches the connection that claimed `epoch` from `session`. Does nothing if another
    /// connection took the session over meanwhile. Publishes the will (now, or after its
    /// delay), ends the session if its expiry is 0, and hands messages that came through
    /// shared subscriptions to other members of their groups.
    pub fn disconnect(&self, session: &Arc<Session>, epoch: u64, ending: Ending, now: Instant) {
        let mut ops = self.ops();
        let Some(detached) = session.lock().detach(epoch, ending, now, &mut ops) else {
            return;
        };
        self.persist(&mut ops);
        if let Some(w) = detached.will {
            self.publish_will(w, now);
        }
        if detached.end {
            self.end_session(session, now);
        }
        // A new connection waiting for the session claims it now that this is journaled.
        session.lock().wake_successor();
        for d in detached.shared {
            self.redistribute(d, session);
        }
    }

    /// Removes a session for good: its state, subscriptions and registry entry; its pending
    /// will goes out, and the cluster may release its client id.
    pub(super) fn end_session(&self, session: &Arc<Session>, now: Instant) {
        if self.discard(session, now) {
            self.seams.ownership.released(session.client_id());
        }
    }

    /// A claim for `client_id` committed on another node of the cluster: the session here
    /// ends (its connection, if any, closes with DISCONNECT 0x8E; its will goes out), and the
    /// client id is not released (it belongs to the other node now). Whether there was one.
    pub fn taken_over_elsewhere(&self, client_id: &str, now: Instant) -> bool {
        match self.seams.registry.get(client_id) {
            Some(s) => {
                let ended = self.discard(&s, now);
                if ended {
                    self.metrics.sessions_taken_over_elsewhere.inc();
                }
                ended
            }
            None => false,
        }
    }

    /// This node lost its cluster's majority: every connected client is disconnected (v5:
    /// DISCONNECT 0x9C Use another server) so that it reconnects to a node that can serve
    /// it; their sessions stay as their expiry says. Returns how many were asked to go.
    pub fn send_all_elsewhere(&self) -> usize {
        let sessions = self.seams.registry.sessions();
        sessions
            .iter()
            .filter(|s| s.lock().kick_for(crate::session::Kick::UseAnotherServer))
            .count()
    }

    /// The client ids of every session on this node, connected or not.
    pub fn client_ids(&self) -> Vec<Arc<str>> {
        let sessions = self.seams.registry.sessions();
        sessions.iter().map(|s| s.client_id().clone()).collect()
    }

    /// Ends `session` and publishes its will; whether it had not ended already.
    fn discard(&self, session: &Arc<Session>, now: Instant) -> bool {
        let mut ops = self.ops();
        let Some(ended) = session.lock().end(&mut ops) else {
            return false;
        };
        self.persist(&mut ops);
        self.unroute(session, &ended.filters);
        self.seams.registry.release(session);
        session.lock().wake_successor();
        if let Some(w) = ended.will {
            self.publish_will(w, now);
        }
        true
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
        self.publish_and_persist(Arc::new(msg));
    }

    /// Housekeeping, called about once a second: expires sessions, publishes delayed wills,
    /// forgets QoS 2 ids whose PUBREL never came, and refreshes `$SYS`.
    pub fn tick(&self, now: Instant) {
        let rel_timeout = Duration::from_secs(self.limits.awaiting_rel_timeout_secs);
        let mut ops = self.ops();
        let mut expired = Vec::new();
        let mut wills = Vec::new();
        let mut disconnected = 0u64;
        for s in self.seams.registry.sessions() {
            let h = s.lock().housekeep(now, rel_timeout, &mut ops);
            disconnected += u64::from(h.disconnected);
            wills.extend(h.will);
            if h.expired {
                expired.push(s);
            }
        }
        self.persist(&mut ops);
        self.bans.prune(now);
        for w in wills {
            self.publish_will(w, now);
        }
        for s in expired {
            self.metrics.sessions_expired.inc();
            self.end_session(&s, now);
            if self.hooks.wants(Event::Session) {
                let e = SessionEvent {
                    client_id: s.client_id(),
                    client: None,
                    change: SessionChange::Expired,
                };
                self.hooks.session(&e, &mut SessionActions::default());
            }
        }
        let due = {
            let mut sys = self.sys.lock().unwrap_or_else(|p| p.into_inner());
            sys.due(now, self.limits.sys_interval_secs, &self.metrics)
        };
        if let Some(loads) = due {
            for msg in crate::sys::messages(self, disconnected, &loads, now) {
                self.publish_and_persist(Arc::new(msg));
            }
        }
    }
}
