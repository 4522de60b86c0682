//! The other members of the cluster, as its log says: for each, a bounded queue of the
//! messages handed to it and two tasks, one sending those (`forward.rs`) and one telling it
//! this node's filters (`starling_cluster::routes::sync`). A node starts with its seeds;
//! when the members change (`starling ctl cluster join|leave`) the tasks of a node that
//! joined start, those of a node that left stop, and its filters are forgotten here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use starling_cluster::NodeId;
use starling_cluster::routes::{LocalFilters, RemoteRoutes};
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::forward::{self, PeerStats, Queued};
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
}

impl Peer {
    fn new(addr: String) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(forward::QUEUE);
        Arc::new(Peer {
            addr,
            queue,
            stats: Arc::default(),
            parked: Mutex::new(Some(rx)),
            gone: watch::Sender::new(false),
        })
    }
}

/// The other members, shared by the forwarder, the handover and the admin API.
#[derive(Debug)]
pub(super) struct PeerSet {
    me: NodeId,
    peers: ArcSwap<HashMap<NodeId, Arc<Peer>>>,
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
        }
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
            tokio::spawn(forward::run(
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
