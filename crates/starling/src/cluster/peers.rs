//! The other members of the cluster, as its log says: for each, a bounded queue of the
//! messages handed to it and two tasks, one sending those (`starling_cluster::forward::send`)
//! and one telling it this node's filters (`starling_cluster::routes::sync`), and a few idle
//! streams for handover requests. A node starts with its seeds; when the members change
//! (`starling ctl cluster join|leave`) the tasks of a node that joined start, those of a
//! node that left stop, and its filters are forgotten here ([`follow`]). Which members are
//! suspected down ([`suspect`]: this node's own judgement, for shared-group picks) and the
//! leader's decision that one is down, through the log ([`judge`]), are here too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use starling_cluster::forward::{HOLD, PeerStats};
use starling_cluster::net::Link;
use starling_cluster::routes::{LocalFilters, RemoteRoutes};
use starling_cluster::{Command, NodeId};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::forward::{self, Queued};
use super::tls::ClusterDial;
use super::{Node, lock};
use crate::wakeup::Stop;

/// One other member.
#[derive(Debug)]
pub(super) struct Peer {
    /// Its inter-node address.
    pub(super) addr: String,
    /// Messages for it (bounded: [`forward::QUEUE`]; a message beyond is dropped, counted).
    pub(super) queue: mpsc::Sender<Queued>,
    /// Its traffic.
    pub(super) stats: Arc<PeerStats>,
    /// The receiving end of `queue`, until its task takes it.
    parked: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Set when it leaves: its tasks end.
    gone: watch::Sender<bool>,
    /// Idle streams for requests to it that are not its tasks' (sessions handed over), at
    /// most [`IDLE_LINKS`].
    links: Mutex<Vec<Link<ClusterDial>>>,
}

/// Idle request streams kept per peer; one more is closed when it is done.
const IDLE_LINKS: usize = 8;

impl Peer {
    fn new(addr: String) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(forward::QUEUE);
        Arc::new(Peer {
            addr,
            queue,
            stats: Arc::default(),
            parked: Mutex::new(Some(rx)),
            gone: watch::Sender::new(false),
            links: Mutex::default(),
        })
    }

    /// An idle request stream to it, if there is one.
    pub(super) fn take_link(&self) -> Option<Link<ClusterDial>> {
        lock(&self.links).pop()
    }

    /// A request stream done with, kept for the next request if there is room.
    pub(super) fn put_link(&self, link: Link<ClusterDial>) {
        let mut links = lock(&self.links);
        if links.len() < IDLE_LINKS {
            links.push(link);
        }
    }
}

/// The other members, shared by the forwarder, the handover, the route table and the admin
/// API.
#[derive(Debug)]
pub(super) struct PeerSet {
    me: NodeId,
    peers: ArcSwap<HashMap<NodeId, Arc<Peer>>>,
    /// The members that have answered nothing for [`HOLD`], as [`suspect`] last
    /// judged: a node picking one node for a shared group skips them.
    suspects: RwLock<Vec<NodeId>>,
}

impl PeerSet {
    /// The seeds other than `me`, until the log names the members.
    pub(super) fn new(me: NodeId, seeds: &[(NodeId, String)]) -> Self {
        let peers = (seeds.iter())
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| (*id, Peer::new(addr.clone())))
            .collect();
        PeerSet {
            me,
            peers: ArcSwap::from_pointee(peers),
            suspects: RwLock::default(),
        }
    }

    /// Whether `id` is suspected down (see [`suspect`]).
    pub(super) fn is_suspect(&self, id: NodeId) -> bool {
        let s = self.suspects.read().unwrap_or_else(|p| p.into_inner());
        !s.is_empty() && s.contains(&id)
    }

    /// Whether any member is suspected down.
    pub(super) fn any_suspect(&self) -> bool {
        !self
            .suspects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Calls `f` with member `id`, if it is one.
    pub(super) fn with<T>(&self, id: NodeId, f: impl FnOnce(&Peer) -> T) -> Option<T> {
        self.peers.load().get(&id).map(|p| f(p))
    }

    /// The other members' ids.
    pub(super) fn ids(&self) -> Vec<NodeId> {
        self.peers.load().keys().copied().collect()
    }

    /// Each other member: id, address, traffic.
    pub(super) fn list(&self) -> Vec<(NodeId, String, Arc<PeerStats>)> {
        let mut v: Vec<_> = (self.peers.load().iter())
            .map(|(id, p)| (*id, p.addr.clone(), p.stats.clone()))
            .collect();
        v.sort_by_key(|p| p.0);
        v
    }

    /// Makes the members `wanted` (this node left out); returns the ids of those that left.
    fn set(&self, wanted: &BTreeMap<NodeId, String>) -> Vec<NodeId> {
        let now = self.peers.load();
        let mut next = HashMap::with_capacity(wanted.len());
        for (id, addr) in wanted.iter().filter(|(id, _)| **id != self.me) {
            let peer = match now.get(id) {
                Some(p) if p.addr == *addr => p.clone(),
                _ => Peer::new(addr.clone()),
            };
            next.insert(*id, peer);
        }
        let mut left = Vec::new();
        for (id, p) in now.iter() {
            if next.get(id).is_none_or(|n| !Arc::ptr_eq(n, p)) {
                p.gone.send_replace(true);
                if !next.contains_key(id) {
                    left.push(*id);
                }
            }
        }
        self.peers.store(Arc::new(next));
        left
    }
}

/// What a member's tasks need.
#[derive(Clone, Debug)]
pub(super) struct Tasks {
    pub(super) node: Arc<Node>,
    pub(super) filters: Arc<LocalFilters>,
    pub(super) remote: Arc<RwLock<RemoteRoutes>>,
    pub(super) stop: Arc<Stop>,
}

impl Tasks {
    /// Starts the tasks of every member whose tasks have not started.
    fn start_all(&self, set: &PeerSet) {
        for (id, peer) in set.peers.load().iter() {
            let Some(queue) = lock(&peer.parked).take() else {
                continue;
            };
            let node = &self.node;
            tokio::spawn(starling_cluster::routes::sync(
                node.dial().clone(),
                (node.id(), node.incarnation()),
                (*id, peer.addr.clone()),
                self.filters.clone(),
                node.contact().clone(),
                until(self.stop.clone(), peer),
            ));
            tokio::spawn(starling_cluster::forward::send(
                node.dial().clone(),
                (node.id(), node.incarnation()),
                (*id, peer.addr.clone()),
                node.contact().clone(),
                queue,
                peer.stats.clone(),
                until(self.stop.clone(), peer),
            ));
        }
    }
}

/// Resolves at the server's stop or when `peer` leaves.
fn until(stop: Arc<Stop>, peer: &Peer) -> impl std::future::Future<Output = ()> + use<> {
    let mut gone = peer.gone.subscribe();
    async move {
        tokio::select! {
            () = stop.wait() => {}
            _ = gone.wait_for(|g| *g) => {}
        }
    }
}

/// How often the suspects are judged again.
const SUSPECT_EVERY: Duration = Duration::from_millis(250);

/// Judges every [`SUSPECT_EVERY`] which members have answered nothing (no reply to Raft,
/// route keepalives or batches) for [`HOLD`], or are judged down in the log: they
/// are suspects, and a shared group's message goes to a node of the group that is not (a
/// suspect would drop it). This node's own suspicion decides nothing about the state; the
/// leader does, through the log: a member it has not heard from for `down_after` is judged
/// down (`NodeDown`), and up again once it answers (`NodeUp`; a restart ends it too). Every
/// node forgets the filters of a node judged down; it tells them again when it is back.
pub(super) async fn suspect(set: Arc<PeerSet>, tasks: Tasks) {
    let node = &tasks.node;
    let mut tick = tokio::time::interval(SUSPECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was: Vec<NodeId> = Vec::new();
    let mut was_down: Vec<NodeId> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tasks.stop.wait() => return,
        }
        let contact = node.contact();
        let down: Vec<NodeId> = node.state().read().down().collect();
        for id in down.iter().filter(|id| !was_down.contains(id)) {
            let mut remote = tasks.remote.write().unwrap_or_else(|p| p.into_inner());
            remote.forget(*id);
            info!(
                node = id,
                "a member is judged down; its filters are forgotten here"
            );
        }
        was_down = down;
        let mut now: Vec<NodeId> = (set.ids().into_iter())
            .filter(|id| !contact.answered_within(*id, HOLD) || was_down.contains(id))
            .collect();
        now.sort_unstable();
        if now != was {
            info!(suspects = ?now, "members suspected down changed");
            *set.suspects.write().unwrap_or_else(|p| p.into_inner()) = now.clone();
            was = now;
        }
    }
}

/// How often the leader judges the members.
const JUDGE_EVERY: Duration = Duration::from_secs(1);

/// How recent another member's report that it hears a member must be to keep that member
/// from being judged down (reports come with every route keepalive, at least every 2 s).
pub(super) const REPORT_FRESH: Duration = Duration::from_secs(5);

/// On the leader, every [`JUDGE_EVERY`]: commits `NodeDown` for a member silent for
/// `down_after` that no other member says it hears (within [`REPORT_FRESH`]), `NodeUp` for
/// one judged down that answers again.
pub(super) async fn judge(
    set: Arc<PeerSet>,
    node: Arc<Node>,
    down_after: Duration,
    stop: Arc<Stop>,
) {
    let mut tick = tokio::time::interval(JUDGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        tokio::select! {
            () = judge_once(&node, &set, down_after) => {}
            () = stop.wait() => return,
        }
    }
}

async fn judge_once(node: &Node, set: &PeerSet, down_after: Duration) {
    let leads = node.raft().metrics().borrow().current_leader == Some(node.id());
    if !leads {
        return;
    }
    let contact = node.contact();
    for id in set.ids() {
        let (incarnation, down) = {
            let state = node.state().read();
            (state.incarnation(id), state.is_down(id))
        };
        let Some(incarnation) = incarnation else {
            continue;
        };
        let cmd = if !down && !contact.answered_within(id, down_after) {
            if let Some(by) = contact.vouched_for(id, REPORT_FRESH) {
                // Alive for another member: only the link to this node may be cut.
                debug!(
                    node = id,
                    by, "a member silent to this node is heard by another; not judged down"
                );
                continue;
            }
            warn!(
                node = id,
                incarnation, "a member answered nothing for down_after_ms; judging it down"
            );
            Command::NodeDown {
                node: id,
                incarnation,
            }
        } else if down && contact.answered_within(id, HOLD) {
            info!(node = id, incarnation, "a member judged down answers again");
            Command::NodeUp {
                node: id,
                incarnation,
            }
        } else {
            continue;
        };
        if let Err(e) = node.propose(cmd).await {
            debug!(node = id, error = %e, "the judgement was not committed; tried again");
        }
    }
}

/// Starts the seeds' tasks, then follows the members the log names: a node that joins gets
/// its tasks, one that leaves has them stopped and its filters forgotten.
pub(super) async fn follow(set: Arc<PeerSet>, tasks: Tasks) {
    tasks.start_all(&set);
    let mut metrics = tasks.node.raft().metrics();
    let mut seen = None;
    loop {
        let wanted: Option<BTreeMap<NodeId, String>> = {
            let m = metrics.borrow_and_update();
            let config = &m.membership_config;
            let id = *config.log_id();
            let membership = config.membership();
            // Not initialized yet (no members known): the seeds stand. A node that left has
            // no peers any more.
            let me = tasks.node.id();
            (seen != Some(id) && membership.nodes().next().is_some()).then(|| {
                seen = Some(id);
                if membership.get_node(&me).is_none() {
                    return BTreeMap::new();
                }
                (membership.nodes())
                    .map(|(id, p)| (*id, p.addr.clone()))
                    .collect()
            })
        };
        if let Some(wanted) = wanted {
            let left = set.set(&wanted);
            if !left.is_empty() {
                let mut remote = tasks.remote.write().unwrap_or_else(|p| p.into_inner());
                for id in &left {
                    remote.forget(*id);
                    info!(
                        node = id,
                        "a member left; its tasks stopped and its filters forgotten"
                    );
                }
            }
            tasks.start_all(&set);
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            () = tasks.stop.wait() => return,
        }
    }
}
