//! The QoS flows across a bridge, without I/O: for each packet one side sends, what the bridge
//! sends on either side, in order. Packet identifiers are mirrored: they belong to their sender,
//! so the id the local broker gave a message is free for the bridge to use as the sender towards
//! the remote, and the remote's id towards the local broker. The two QoS 2 flows are chained
//! step by step:
//!
//! - out: local PUBLISH(X) → remote PUBLISH(X); remote PUBREC(X) → local PUBREC(X); local
//!   PUBREL(X) → remote PUBREL(X); remote PUBCOMP(X) → local PUBCOMP(X).
//! - in: remote PUBLISH(X) → local PUBLISH(X); local PUBREC(X) → remote PUBREC(X); remote
//!   PUBREL(X) → local PUBREL(X); local PUBCOMP(X) → remote PUBCOMP(X).
//!
//! So each side's session holds a message under the id the other side's session knows it by,
//! and whatever a reconnect or a restart makes one side resend (PUBLISH with DUP, or PUBREL)
//! reaches the other side's session under that id, which recognises it: a message crosses
//! exactly once. A message whose QoS its topic line lowers is completed on its own side once the
//! other side is done with it (a remote PUBACK for a local QoS 2 message: PUBREC locally, and
//! PUBCOMP when the local PUBREL comes). QoS 1 ids are mirrored the same way.
//!
//! Bounds: towards the remote at most its window (set by `run.rs`: its Receive Maximum,
//! `max_inflight`, the bridge's own) messages are unanswered; towards the local broker at most
//! its Receive Maximum. New QoS 1 and 2 messages from the remote wait here beyond that, up to
//! `IN_WAITING` messages and `IN_WAITING_BYTES`: the remote must still be read, since its
//! PUBRELs are what frees room (a QoS 2 flow stays open locally until the remote releases it),
//! and not every remote keeps to the Receive Maximum the bridge gives it (mosquitto 2.0 sends a
//! QoS 2 burst past it; 3.x has none). Beyond that a new message is left unanswered, and once
//! the backlog is through the remote connection is made again so that the remote resends it. QoS 0 messages waiting for an absent remote stop the reading of the
//! local connection at `QOS0_HELD`, leaving the rest in the local session's bounded queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use starling_proto::{Packet, Properties, PubAck, Publish, QoS, ReasonCode};
use tracing::{debug, warn};

use super::{BridgeStats, Routes};

/// QoS 0 messages held for an absent remote at most; beyond, the local connection is not read.
pub(super) const QOS0_HELD: usize = 64;
/// Messages from the remote waiting for room at the local broker at most (see above), and
/// their payload bytes (past the first message, which waits whatever its size).
pub(super) const IN_WAITING: usize = 1024;
pub(super) const IN_WAITING_BYTES: usize = 64 << 20;

/// A packet for one side. They leave in the order they were made, so that an acknowledgement
/// never overtakes what it depends on (a QoS 0 copy written to one side before the other side's
/// message is acknowledged).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Send {
    Local(Packet),
    Remote(Packet),
}

/// A message from the local broker on its way out.
#[derive(Debug)]
struct Out {
    /// The local broker's packet id, used towards the remote too (0 at QoS 0).
    id: u16,
    /// The QoS the local broker sent it at.
    local_qos: QoS,
    /// What goes to the remote, at the QoS of its topic line; `None` once only its release is
    /// left (a PUBREL the local broker resent on a new local connection).
    publish: Option<Publish>,
    state: OutState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutState {
    /// To be sent as PUBLISH (with DUP if it was sent before).
    Waiting,
    /// PUBLISH sent on this remote connection; PUBACK or PUBREC awaited.
    Published,
    /// The remote has it (PUBREC), and so has the local broker been told; the local PUBREL is
    /// awaited.
    Received,
    /// Released by the local broker: PUBREL to send.
    Releasing,
    /// PUBREL sent on this remote connection; PUBCOMP awaited.
    Released,
    /// The remote is done with it at a lower QoS than the local broker's 2: PUBREC sent
    /// locally, the local PUBREL awaited to answer PUBCOMP.
    Finishing,
}

impl Out {
    /// Counts against the remote's window (MQTT 5 counts a QoS 2 message until PUBCOMP).
    fn at_remote(&self) -> bool {
        matches!(
            self.state,
            OutState::Published | OutState::Received | OutState::Releasing | OutState::Released
        )
    }

    fn remote_qos(&self) -> QoS {
        self.publish.as_ref().map_or(QoS::ExactlyOnce, |p| p.qos)
    }
}

/// A message from the remote, by its packet id (the same on both sides).
#[derive(Clone, Copy, Debug)]
struct In {
    /// The QoS the remote sent it at.
    remote_qos: QoS,
    /// The QoS it went to the local broker at (1 or 2, or 0 for `Done`).
    local_qos: QoS,
    state: InState,
    /// Its remote session is gone (the remote accepted a connection without it): the local
    /// flow is finished without telling the remote, which will never ask.
    stale: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InState {
    /// Sent to the local broker at QoS 1 or 2; its PUBACK or PUBREC awaited.
    Published,
    /// QoS 1 both ways, acknowledged by the local broker while the remote was away: the
    /// PUBACK is owed, and given when the remote resends the PUBLISH.
    Answered(ReasonCode),
    /// QoS 2 both ways, received by the local broker: PUBREC sent to the remote (or owed, and
    /// given when it resends); its PUBREL awaited.
    Received,
    /// PUBREL sent to the local broker; its PUBCOMP awaited.
    Released,
    /// A remote QoS 2 message the local broker took at a lower QoS and is done with: PUBREC
    /// sent to the remote (or owed); its PUBREL is answered here.
    Done,
}

impl In {
    /// Counts against the local broker's Receive Maximum (its flow there is open).
    fn open_locally(&self) -> bool {
        matches!(
            self.state,
            InState::Published | InState::Received | InState::Released
        )
    }
}

/// The remote connection, while there is one.
#[derive(Debug)]
struct Remote {
    /// QoS 1 and 2 messages it takes unanswered at once.
    window: usize,
    /// The packet id of the bridge's SUBSCRIBE until its SUBACK: a PUBLISH with that id
    /// waits (and what follows it, to keep the order).
    subscribing: Option<u16>,
}

/// Both directions' flows of one local connection (a new local connection starts afresh: the
/// local broker resends what it had in flight).
#[derive(Debug)]
pub(super) struct Flows {
    name: Arc<str>,
    routes: Routes,
    stats: Arc<BridgeStats>,
    out: VecDeque<Out>,
    incoming: HashMap<u16, In>,
    /// Entries of `incoming` open at the local broker, and stale ones (kept as counts: a 3.x
    /// remote bounds `incoming` only by the id space, too large to walk at every read).
    open_locally: usize,
    stale: usize,
    /// The local broker's Receive Maximum: flows from the bridge it takes open at once.
    local_max: usize,
    /// New QoS 1 and 2 messages from the remote, in order, waiting for `open_locally` to drop
    /// below `local_max`.
    waiting: VecDeque<Publish>,
    /// Payload bytes of `waiting`.
    waiting_bytes: usize,
    /// A new message was left unanswered, `waiting` being full: the remote resends it on
    /// its next connection.
    overflowed: bool,
    remote: Option<Remote>,
    next_subscribe_id: u16,
    sends: Vec<Send>,
    /// This broker's name, added to the `starling-via` of every message crossing (empty:
    /// none, and no loop guard).
    own_node: String,
    /// The remote broker's name, when it is a Starling that said it (CONNACK): messages that
    /// came through it are not sent back to it.
    remote_node: Option<String>,
}

impl Flows {
    /// The flows of a local connection whose broker takes `local_max` flows at once.
    pub(super) fn new(
        name: Arc<str>,
        routes: Routes,
        stats: Arc<BridgeStats>,
        local_max: usize,
    ) -> Self {
        Self {
            name,
            routes,
            stats,
            out: VecDeque::new(),
            incoming: HashMap::new(),
            open_locally: 0,
            stale: 0,
            local_max: local_max.max(1),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            overflowed: false,
            remote: None,
            next_subscribe_id: 0,
            sends: Vec::new(),
            own_node: String::new(),
            remote_node: None,
        }
    }

    /// Names this broker for the loop guard (see [`VIA`]).
    pub(super) fn with_own_node(mut self, id: &str) -> Self {
        self.own_node = id.to_owned();
        self
    }

    /// The remote's name, as its CONNACK gave it (`None`: not a Starling, or it did not say).
    pub(super) fn set_remote_node(&mut self, id: Option<String>) {
        self.remote_node = id;
    }

    /// Whether `p` came through broker `node` (its `starling-via` names it).
    fn came_through(p: &Publish, node: Option<&str>) -> bool {
        node.is_some_and(|n| {
            !n.is_empty()
                && (p.properties.user_properties)
                    .iter()
                    .any(|(k, v)| k == VIA && v == n)
        })
    }

    /// `p`'s properties across the bridge, with `node` added to its path.
    fn forwarded_via(p: &Properties, node: Option<&str>) -> Properties {
        let mut v = (**p).clone();
        v.topic_alias = None;
        v.subscription_identifiers.clear();
        if let Some(n) = node.filter(|n| !n.is_empty())
            && !v.user_properties.iter().any(|(k, x)| k == VIA && x == n)
        {
            v.user_properties.push((VIA.to_owned(), n.to_owned()));
        }
        v.into()
    }

    /// The packets to send, in order.
    pub(super) fn take_sends(&mut self) -> Vec<Send> {
        std::mem::take(&mut self.sends)
    }

    /// Whether to read the local connection: not while QoS 0 messages for an absent remote
    /// fill their bound (what follows waits in the local session's queue).
    pub(super) fn reads_local(&self) -> bool {
        self.remote.is_some()
            || self
                .out
                .iter()
                .filter(|o| o.id == 0 && o.state == OutState::Waiting)
                .count()
                < QOS0_HELD
    }

    /// Whether to read the remote: not while `held` of its events (read before the local
    /// SUBACK, not yet handled) reach `IN_WAITING`, nor while flows of a gone remote session
    /// are being finished (their ids must be free before new messages come).
    pub(super) fn reads_remote(&self, held: usize) -> bool {
        self.stale == 0 && held < IN_WAITING
    }

    /// Whether to connect the remote again: it sent messages the bridge left unanswered, and
    /// everything before them is through.
    pub(super) fn wants_resend(&self) -> bool {
        self.overflowed && self.waiting.is_empty()
    }

    /// A packet id for the SUBSCRIBE to the remote that no message on its way there uses, nor
    /// any for which `in_use` (the local session's inflight ids, some not yet read) says so.
    pub(super) fn remote_subscribe_id(&mut self, in_use: impl Fn(u16) -> bool) -> u16 {
        let out = &self.out;
        free_id(&mut self.next_subscribe_id, |id| {
            in_use(id) || out.iter().any(|o| o.id == id)
        })
    }

    // --- The remote connection ---------------------------------------------------------

    /// A remote connection is up. `window`: min(its Receive Maximum, the bridge's);
    /// `subscribing`: the id of the SUBSCRIBE just sent; `awaiting`: without the remote
    /// session (`session_present` false), the ids the local session awaits PUBREL for.
    pub(super) fn remote_connected(
        &mut self,
        window: usize,
        session_present: bool,
        subscribing: Option<u16>,
        awaiting: impl IntoIterator<Item = u16>,
    ) {
        self.reset_out();
        self.remote = Some(Remote {
            window: window.max(1),
            subscribing,
        });
        if !session_present {
            self.forget_remote_session(awaiting);
        }
        self.pump();
    }

    /// The remote connection ended: what it did not answer is sent again on the next one
    /// (so what waited here for the local broker goes: it comes again too).
    pub(super) fn remote_lost(&mut self) {
        self.remote = None;
        self.waiting.clear();
        self.waiting_bytes = 0;
        self.overflowed = false;
        self.reset_out();
    }

    /// After a reconnect: PUBLISH again (with DUP) what was not received, PUBREL again what
    /// was released and not completed. What the remote received stays: its session has it.
    fn reset_out(&mut self) {
        for o in &mut self.out {
            match o.state {
                OutState::Published => o.state = OutState::Waiting,
                OutState::Released => o.state = OutState::Releasing,
                _ => {}
            }
        }
    }

    /// The remote accepted the connection without its session: it will resend nothing, and
    /// its next messages may use ids the local broker still holds for the ones it had. Those
    /// flows are finished locally (PUBREL) and the remote is not read until they are.
    fn forget_remote_session(&mut self, awaiting: impl IntoIterator<Item = u16>) {
        let mut ids: Vec<u16> = self.incoming.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(mut e) = self.take_in(id) else {
                continue;
            };
            match e.state {
                InState::Answered(_) | InState::Done => continue,
                InState::Received => {
                    self.sends
                        .push(Send::Local(Packet::PubRel(PubAck::new(id))));
                    e.state = InState::Released;
                }
                InState::Published | InState::Released => {}
            }
            e.stale = true;
            self.put_in(id, e);
        }
        for id in awaiting {
            if self.incoming.contains_key(&id) {
                continue;
            }
            self.sends
                .push(Send::Local(Packet::PubRel(PubAck::new(id))));
            let e = In {
                remote_qos: QoS::ExactlyOnce,
                local_qos: QoS::ExactlyOnce,
                state: InState::Released,
                stale: true,
            };
            self.put_in(id, e);
        }
        if self.stale > 0 {
            debug!(bridge = %self.name, flows = self.stale,
                "finishing the flows of a remote session that is gone");
        }
    }

    /// SUBACK from the remote; whether it answers the bridge's SUBSCRIBE.
    pub(super) fn remote_subscribed(&mut self, id: u16) -> bool {
        let Some(r) = &mut self.remote else {
            return false;
        };
        if r.subscribing != Some(id) {
            return false;
        }
        r.subscribing = None;
        self.pump();
        true
    }
}

/// The next id from `next` (skipping 0) that `used` does not claim.
pub(super) fn free_id(next: &mut u16, used: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..u16::MAX {
        *next = next.checked_add(1).unwrap_or(1);
        if !used(*next) {
            return *next;
        }
    }
    // Every id in use cannot happen (at most a few windows are); any id then.
    *next
}

/// The user property naming, one per broker, the brokers a message came through over
/// Starling bridges (MQTT 5 only: 3.x carries no properties). A bridge does not send a
/// message to a broker named there, nor take in one naming its own broker: two brokers
/// bridged to each other by separate bridges, or a ring of them, do not pass a message
/// around for ever. (One bridge in both directions needs no names: No Local stops the echo.)
pub(super) const VIA: &str = "starling-via";

mod inbound;
mod out;
#[cfg(test)]
mod tests;
