//! This broker as a node of a cluster (`[cluster]`, docs/cluster.md): starts the replicated
//! core (`starling-cluster`) beside the broker, serves the other nodes on the inter-node
//! listener, announces this node's incarnation through the log, and gives the broker its
//! cluster seams: client ids claimed through the cluster (`ownership.rs`), a route table that
//! knows the other nodes' filters and tells them its own (`routes.rs`), and a forwarder
//! that hands messages to the nodes with subscribers (`forward.rs`). It ends the sessions
//! whose client id another node claimed ([`follow`]) and describes the cluster for the admin
//! API. Every task here ends with the server's stop.

mod forward;
mod handover;
mod ownership;
mod peers;
mod retain;
mod routes;
mod tls;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use starling_broker::Broker;
use starling_broker::broker::Ownership;
use starling_broker::forward::Forwarder;
use starling_broker::retain::RetainStore;
use starling_broker::router::Routes;
use starling_cluster::feed::{self, Applied, Feed, Item};
use starling_cluster::forward::Seen;
use starling_cluster::net::{Inbound, TcpDial, serve};
use starling_cluster::raft::Peer;
use starling_cluster::routes::{LocalFilters, RemoteRoutes};
use starling_cluster::{ClusterNode, Command, Limits, NodeConfig, NodeId, Timing};
use starling_proto::DecodeLimits;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::plugin::BoxFuture;
use crate::wakeup::Stop;
use forward::{ClusterForwarder, ClusterInbound};
use ownership::{ClusterOwnership, Granted};
use peers::PeerSet;
use routes::ClusterRoutes;
use tls::{ClusterDial, ClusterTls};

/// A node of the cluster, over TCP (with TLS if configured).
pub type Node = ClusterNode<ClusterDial>;

/// Peer streams served at once; a stream beyond it is closed at accept (a node has a few
/// peers, each with a few streams; more means something is wrong).
const MAX_PEER_STREAMS: usize = 256;

/// How long a peer has to complete its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// How often the incarnation is proposed again until it commits.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// Claims of client ids under way at once; a CONNECT beyond it is refused as busy (v5 0x89,
/// 3.x return code 3) at once.
const MAX_CLAIMS: usize = 4096;

/// Releases waiting to be committed; beyond it a release is dropped (logged): the client id
/// stays this node's until a CONNECT on another node claims it, which it may at any time.
const MAX_RELEASES: usize = 65_536;

/// Applied claims waiting for the broker; beyond it the feed lags and the broker compares
/// every session with the state instead.
const FEED_CAPACITY: usize = 65_536;

/// How often the node judges whether it is on the majority's side.
const MAJORITY_CHECK: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker's seams in a cluster.
#[derive(Debug)]
pub struct Seams {
    /// Who owns each client id.
    pub ownership: Box<dyn Ownership>,
    /// The route table that also names other nodes.
    pub routes: Routes,
    /// Messages for other nodes.
    pub forwarder: Box<dyn Forwarder>,
    /// Retained messages, replicated through the cluster's log.
    pub retained: Box<dyn RetainStore>,
}

/// This node, started; [`Started::attach`] gives it the broker.
pub struct Started {
    node: Arc<Node>,
    seams: Option<Seams>,
    listener: TcpListener,
    feed: Feed,
    releases: mpsc::Receiver<(String, u64)>,
    granted: Granted,
    remote: Arc<RwLock<RemoteRoutes>>,
    filters: Arc<LocalFilters>,
    peers: Arc<PeerSet>,
    decode: DecodeLimits,
    majority: Majority,
    retained_writes: mpsc::Receiver<retain::Write>,
    tls: Option<Arc<ClusterTls>>,
    /// Takes sessions over from other nodes; given the broker once attached.
    taker: Arc<handover::Taker>,
    /// `[cluster] down_after_ms`.
    down_after: Duration,
    /// Batches taken from each peer before the last stop, as the store's marks say.
    taken: Vec<(NodeId, u64, u64)>,
}

/// Whether this node is on the majority's side, as [`watch_majority`] last judged.
#[derive(Clone, Debug)]
pub(crate) struct Majority {
    /// The lease: a node that has not heard from a majority of the voters for this long is
    /// cut off.
    lease: Duration,
    /// True while cut off: CONNECTs are refused at once, clients were sent elsewhere.
    cut_off: Arc<AtomicBool>,
}

impl Majority {
    /// Whether the node is cut off from the majority now.
    pub(crate) fn cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// This node of the cluster as the server keeps it: the node, its peers' traffic counters
/// and their routes, for the admin API.
#[derive(Debug)]
pub struct Handle {
    /// The node.
    pub node: Arc<Node>,
    /// Whether inter-node streams are TLS.
    tls: bool,
    peers: Arc<PeerSet>,
    remote: Arc<RwLock<RemoteRoutes>>,
    majority: Majority,
}

/// The cluster's numbers for the metrics.
#[derive(Debug, Default)]
pub struct Numbers {
    /// Whether this node leads.
    pub leader: bool,
    /// Whether this node is on the majority's side (not cut off).
    pub majority: bool,
    /// The Raft term.
    pub term: u64,
    /// The last log index applied here.
    pub last_applied: u64,
    /// Members.
    pub members: u64,
    /// Client ids owned, in the replicated state.
    pub owned: u64,
    /// Filters known of the other nodes.
    pub remote_routes: u64,
    /// Filters of other nodes not kept for the bounds.
    pub remote_routes_refused: u64,
    /// Members judged down through the log.
    pub down: u64,
    /// Per peer: id, messages confirmed, messages dropped, milliseconds since it last
    /// answered (`None`: not since this node started), whether it is suspected down.
    pub peers: Vec<(NodeId, u64, u64, Option<u64>, bool)>,
}

impl Handle {
    /// The numbers the metrics show.
    pub fn numbers(&self) -> Numbers {
        let m = self.node.raft().metrics().borrow().clone();
        let (owned, down) = {
            let state = self.node.state().read();
            (state.owners().count() as u64, state.down().count() as u64)
        };
        let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
        let contact = self.node.contact();
        Numbers {
            leader: m.current_leader == Some(self.node.id()),
            majority: !self.majority.cut_off(),
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            members: m.membership_config.membership().nodes().count() as u64,
            owned,
            down,
            remote_routes: remote.len() as u64,
            remote_routes_refused: remote.refused(),
            peers: self
                .peers
                .list()
                .iter()
                .map(|(id, _, s)| {
                    (
                        *id,
                        s.sent.load(Ordering::Relaxed),
                        s.dropped.load(Ordering::Relaxed),
                        contact.since(*id).map(|d| d.as_millis() as u64),
                        self.peers.is_suspect(*id),
                    )
                })
                .collect(),
        }
    }
}

/// Starts this node: its Raft instance over the log in the cluster directory, the inter-node
/// listener, and the seams the broker is to run on ([`Started::take_seams`]).
pub async fn start(config: &Config) -> anyhow::Result<Started> {
    let c = &config.cluster;
    let seeds = c.seeds()?;
    let members: BTreeMap<u64, Peer> = seeds
        .iter()
        .map(|s| {
            (
                s.id,
                Peer {
                    addr: s.addr.clone(),
                },
            )
        })
        .collect();
    if members.get(&c.node_id).map(|p| p.addr.as_str()) != Some(c.advertised().as_str()) {
        warn!(
            node = c.node_id,
            advertised = %c.advertised(),
            "this node's entry in cluster.seeds is not its advertised address"
        );
    }
    let peers: Vec<(NodeId, String)> = seeds
        .iter()
        .filter(|s| s.id != c.node_id)
        .map(|s| (s.id, s.addr.clone()))
        .collect();
    let mut node_config = NodeConfig::new(c.node_id, c.dir(&config.data_dir), members);
    node_config.timing = Timing {
        heartbeat_ms: c.heartbeat_ms,
        election_min_ms: c.election_timeout_ms,
        election_max_ms: c.election_timeout_ms.saturating_mul(2),
    };
    node_config.propose_timeout = Duration::from_millis(c.propose_timeout_ms);
    node_config.limits = Limits {
        max_retained: config.limits.max_retained_messages as u64,
        max_retained_payload: (config.limits.max_packet_size as u64)
            .min(starling_cluster::node::MAX_ENTRY_BYTES),
    };
    let (feed_tx, feed) = feed::channel(FEED_CAPACITY);
    node_config.feed = Some(feed_tx);
    let replica = Arc::new(retain::Replica::default());
    node_config.observer = Some(replica.clone());
    let (writes_tx, retained_writes) = mpsc::channel(retain::QUEUE);
    let listener = TcpListener::bind(c.bind)
        .await
        .with_context(|| format!("cannot bind cluster listener {}", c.bind))?;
    let tls = ClusterTls::load(c)?;
    let dial = ClusterDial::new(TcpDial::from_source(c.bind.ip()), tls.clone());
    let node = ClusterNode::start(node_config, dial)
        .await
        .context("cannot start the cluster node")?;
    info!(node = node.id(), incarnation = node.incarnation(), bind = %c.bind, "cluster listener open");
    let (release_tx, releases) = mpsc::channel(MAX_RELEASES);
    let granted = Granted::default();
    let majority = Majority {
        lease: Duration::from_millis(c.lease_ms),
        cut_off: Arc::new(AtomicBool::new(false)),
    };
    let filters = Arc::new(LocalFilters::default());
    let peers = Arc::new(PeerSet::new(node.id(), &peers));
    let taker = Arc::new(handover::Taker {
        node: node.clone(),
        broker: Default::default(),
        peers: peers.clone(),
        filters: filters.clone(),
        ending: Arc::new(Semaphore::new(handover::MAX_ENDING)),
    });
    let ownership = ClusterOwnership {
        taker: taker.clone(),
        majority: majority.clone(),
        node: node.clone(),
        runtime: tokio::runtime::Handle::current(),
        claims: Arc::new(Semaphore::new(MAX_CLAIMS)),
        granted: granted.clone(),
        releases: release_tx,
    };
    let remote = Arc::new(RwLock::new(RemoteRoutes::default()));
    let wait = c.forward_ack == crate::config::cluster::ForwardAck::Wait;
    let forwarder = ClusterForwarder::new(peers.clone(), wait, (node.id(), node.incarnation()));
    let seams = Seams {
        ownership: Box::new(ownership),
        routes: Routes::Custom(Box::new(ClusterRoutes::new(
            remote.clone(),
            filters.clone(),
            peers.clone(),
        ))),
        forwarder: Box::new(forwarder),
        retained: Box::new(retain::ClusterRetain {
            replica,
            writes: writes_tx,
            local: Default::default(),
        }),
    };
    let decode = DecodeLimits {
        max_packet_size: config.limits.max_packet_size,
        max_topic_levels: config.limits.max_topic_levels,
        max_user_properties: config.limits.max_user_properties,
        allow_control_characters: true,
    };
    Ok(Started {
        node,
        seams: Some(seams),
        listener,
        feed,
        releases,
        granted,
        remote,
        filters,
        peers,
        decode,
        majority,
        retained_writes,
        tls,
        taker,
        down_after: Duration::from_millis(c.down_after_ms),
        taken: Vec::new(),
    })
}

impl Started {
    /// Reads the store's marks of batches taken from peers before the last stop, so that a
    /// peer sending one again after this restart (its reply was lost) does not have it
    /// delivered twice.
    pub fn restore_taken<'a>(&mut self, settings: impl Iterator<Item = (&'a str, &'a [u8])>) {
        self.taken = settings
            .filter_map(|(name, value)| starling_cluster::forward::read_mark(name, value))
            .collect();
    }

    /// The seams the broker runs on in a cluster (once).
    pub fn take_seams(&mut self) -> Option<Seams> {
        self.seams.take()
    }

    /// Serves the peers and starts the tasks that need the broker: the listener (Raft, the
    /// peers' routes and messages), the announcement, following applied claims, releases,
    /// and, following the members, per peer the routes it is told and the messages it is
    /// handed (`peers.rs`).
    pub fn attach(self, broker: Arc<Broker>, stop: &Arc<Stop>) -> (Handle, Vec<BoxFuture>) {
        let node = self.node;
        let tls_on = self.tls.is_some();
        let _ = self.taker.broker.set(Arc::downgrade(&broker));
        let lingering = handover::Lingering::default();
        let inbound: Arc<dyn Inbound> = Arc::new(ClusterInbound {
            remote: self.remote.clone(),
            node: node.clone(),
            broker: broker.clone(),
            limits: self.decode,
            seen: {
                let seen = Seen::default();
                seen.restore(self.taken);
                seen
            },
        });
        let mut tasks: Vec<BoxFuture> = vec![
            Box::pin(accept_loop(
                self.listener,
                self.tls,
                node.clone(),
                inbound,
                stop.clone(),
            )),
            Box::pin(announce(node.clone(), stop.clone())),
            Box::pin(follow(
                self.feed,
                node.clone(),
                broker.clone(),
                (self.granted, lingering.clone()),
                stop.clone(),
            )),
            Box::pin(handover::expire(
                lingering,
                node.clone(),
                broker.clone(),
                stop.clone(),
            )),
            Box::pin(watch_majority(
                node.clone(),
                broker,
                self.majority.clone(),
                stop.clone(),
            )),
            Box::pin(release(self.releases, node.clone(), stop.clone())),
            Box::pin(retain::propose(
                self.retained_writes,
                node.clone(),
                stop.clone(),
            )),
            Box::pin(retain::expire(node.clone(), stop.clone())),
        ];
        let peer_tasks = peers::Tasks {
            node: node.clone(),
            filters: self.filters.clone(),
            remote: self.remote.clone(),
            stop: stop.clone(),
        };
        tasks.push(Box::pin(peers::suspect(
            self.peers.clone(),
            peer_tasks.clone(),
        )));
        tasks.push(Box::pin(peers::judge(
            self.peers.clone(),
            node.clone(),
            self.down_after,
            stop.clone(),
        )));
        tasks.push(Box::pin(peers::follow(self.peers.clone(), peer_tasks)));
        let handle = Handle {
            tls: tls_on,
            node,
            peers: self.peers,
            remote: self.remote,
            majority: self.majority,
        };
        (handle, tasks)
    }
}

/// Ends the sessions whose client id another node claimed (their connections get DISCONNECT
/// 0x8E), as the claims are applied here; at start and after the feed lagged, compares
/// every session with the state.
async fn follow(
    mut feed: Feed,
    node: Arc<Node>,
    broker: Arc<Broker>,
    (granted, lingering): (Granted, handover::Lingering),
    stop: Arc<Stop>,
) {
    // Sessions the store gave back at start may belong to client ids claimed elsewhere by
    // claims older than this node's snapshot (which no event will repeat).
    let moved = compare_all(&node, &broker, &granted);
    if moved > 0 {
        info!(
            sessions = moved,
            "restored sessions whose client id another node owns ended"
        );
    }
    loop {
        let item = tokio::select! {
            item = feed.next() => item,
            () = stop.wait() => break,
        };
        match item {
            None => break,
            Some(Item::Applied(Applied::Claimed {
                client_id, owner, ..
            })) => {
                if owner.node == node.id() {
                    continue;
                }
                lock(&granted).remove(&client_id);
                // The session stays for the new owner to take (`handover.rs`).
                if broker.moving_elsewhere(&client_id) {
                    info!(
                        client_id,
                        node = owner.node,
                        "session taken over by another node"
                    );
                    handover::linger(&lingering, &broker, client_id, owner.epoch);
                }
            }
            Some(Item::Lagged) => {
                let moved = compare_all(&node, &broker, &granted);
                warn!(
                    sessions = moved,
                    "cluster feed lagged; sessions compared with the state"
                );
            }
        }
    }
}

/// Judges every [`MAJORITY_CHECK`] whether this node has heard from a majority of the voters
/// within the lease. Cut off, it refuses new CONNECTs at once (`ClusterOwnership`) and
/// disconnects every client with 0x9C Use another server, again every lease while it stays
/// cut off (a client whose claim committed just before the cut may have attached since);
/// the sessions stay, and end when their client ids are claimed on the majority's side
/// (applied here once the partition heals).
async fn watch_majority(node: Arc<Node>, broker: Arc<Broker>, majority: Majority, stop: Arc<Stop>) {
    let mut tick = tokio::time::interval(MAJORITY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => break,
        }
        let with = node.with_majority(majority.lease);
        let was_cut = majority.cut_off.swap(!with, Ordering::AcqRel);
        if with {
            if was_cut {
                info!(
                    node = node.id(),
                    "in contact with the majority again; accepting clients"
                );
            }
            last_sent = None;
            continue;
        }
        if !was_cut {
            warn!(
                node = node.id(),
                lease_ms = majority.lease.as_millis() as u64,
                "no contact with a majority of the cluster within the lease; refusing new clients and sending the connected ones to other nodes"
            );
        }
        if last_sent.is_none_or(|t| t.elapsed() >= majority.lease) {
            let sent = broker.send_all_elsewhere();
            if sent > 0 {
                info!(
                    clients = sent,
                    "clients sent to other nodes (0x9C Use another server)"
                );
            }
            last_sent = Some(Instant::now());
        }
    }
}

/// Ends every session here whose client id another node owns in the state as applied;
/// returns how many. The sessions this node owns (restored from its store at start) get
/// their claim's epoch noted, so that their end releases the client id.
fn compare_all(node: &Node, broker: &Broker, granted: &Granted) -> usize {
    let mut moved: Vec<String> = Vec::new();
    {
        let state = node.state().read();
        let mut epochs = lock(granted);
        for c in broker.client_ids() {
            match state.owner(&c) {
                Some(o) if o.node != node.id() => moved.push(c.to_string()),
                Some(o) if epochs.len() < ownership::MAX_GRANTED => {
                    epochs.entry(c.to_string()).or_insert(o.epoch);
                }
                _ => {}
            }
        }
    }
    for c in &moved {
        lock(granted).remove(c);
        broker.taken_over_elsewhere(c, Instant::now());
    }
    moved.len()
}

/// Commits the releases of client ids whose sessions ended here, one at a time; a release
/// that fails is dropped (the client id stays this node's until claimed elsewhere).
async fn release(mut releases: mpsc::Receiver<(String, u64)>, node: Arc<Node>, stop: Arc<Stop>) {
    loop {
        let next = tokio::select! {
            next = releases.recv() => next,
            () = stop.wait() => break,
        };
        let Some((client_id, epoch)) = next else {
            break;
        };
        let cmd = Command::Release { client_id, epoch };
        if let Err(e) = node.propose(cmd).await {
            debug!(error = %e, "release not committed");
        }
    }
}

/// Serves the other nodes until the stop, then stops Raft.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ClusterTls>>,
    node: Arc<Node>,
    inbound: Arc<dyn Inbound>,
    stop: Arc<Stop>,
) {
    let streams = Arc::new(Semaphore::new(MAX_PEER_STREAMS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cluster listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = streams.clone().try_acquire_owned() else {
            warn!(%peer, "too many cluster peer streams; closing this one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let raft = node.raft().clone();
        let stop = stop.clone();
        let inbound = inbound.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let served = async {
                match tls {
                    None => serve(stream, raft, Some(inbound)).await,
                    Some(tls) => match tokio::time::timeout(HANDSHAKE, tls.accept(stream)).await {
                        Ok(Ok(s)) => serve(s, raft, Some(inbound)).await,
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "cluster peer refused: TLS handshake failed")
                        }
                        Err(_) => warn!(%peer, "cluster peer refused: no TLS handshake in time"),
                    },
                }
            };
            tokio::select! {
                () = served => {}
                () = stop.wait() => {}
            }
            drop(permit);
        });
    }
    node.shutdown().await;
}

/// Commits this node's incarnation (retrying until it does, or until the stop).
async fn announce(node: Arc<Node>, stop: Arc<Stop>) {
    tokio::select! {
        outcome = node.announce(ANNOUNCE_RETRY) => {
            info!(node = node.id(), incarnation = node.incarnation(), ?outcome, "incarnation announced");
        }
        () = stop.wait() => {}
    }
}

/// Changes the members (`POST /api/v1/cluster/members`, `DELETE .../{id}`): on the leader,
/// wherever it is; once committed every node's peers follow (`peers.rs`).
pub async fn change_members(
    handle: &Handle,
    change: starling_cluster::members::Change,
) -> Result<(), starling_cluster::ProposeError> {
    handle.node.change_members(change).await
}

/// The cluster as this node sees it, for `GET /api/v1/cluster`.
pub fn status(handle: &Handle) -> Value {
    let node = &handle.node;
    let m = node.raft().metrics().borrow().clone();
    let state = node.state().read();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members: Vec<Value> = membership
        .nodes()
        .map(|(id, peer)| {
            json!({
                "id": id,
                "addr": peer.addr,
                "voter": voters.contains(id),
                "incarnation": state.incarnation(*id),
                "down": state.is_down(*id),
            })
        })
        .collect();
    let (retained, retained_bytes) = state.retained_size();
    json!({
        "enabled": true,
        "node_id": node.id(),
        "tls": handle.tls,
        "incarnation": node.incarnation(),
        "announced": state.incarnation(node.id()) == Some(node.incarnation()),
        "role": format!("{:?}", m.state).to_lowercase(),
        "leader": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "last_applied": m.last_applied.map(|l| l.index),
        "members": members,
        "majority": !handle.majority.cut_off(),
        "lease_ms": handle.majority.lease.as_millis() as u64,
        "client_ids_owned": state.owners().count(),
        "retained_messages": retained,
        "retained_bytes": retained_bytes,
        "peers": handle.peers.list().iter().map(|(id, addr, stats)| json!({
            "id": id,
            "addr": addr,
            "messages_sent": stats.sent.load(Ordering::Relaxed),
            "messages_dropped": stats.dropped.load(Ordering::Relaxed),
            "last_reply_ms": node.contact().since(*id).map(|d| d.as_millis() as u64),
            "suspected": handle.peers.is_suspect(*id),
            "heard_by": node.contact().heard_by(*id, peers::REPORT_FRESH),
        })).collect::<Vec<_>>(),
        "remote_routes": handle.remote.read().unwrap_or_else(|p| p.into_inner()).len(),
        "remote_routes_refused": handle.remote.read().unwrap_or_else(|p| p.into_inner()).refused(),
    })
}
