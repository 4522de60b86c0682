//! This broker as a node of a cluster (`[cluster]`, docs/cluster.md): starts the replicated
//! core (`starling-cluster`) beside the broker, serves the other nodes on the inter-node
//! listener, announces this node's incarnation through the log, claims client ids through
//! the cluster for the broker's CONNECTs ([`ClusterOwnership`], the broker's `Ownership`
//! seam), ends the sessions whose client id another node claimed ([`follow`]), and describes
//! the cluster for the admin API. Every task here ends with the server's stop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use starling_broker::Broker;
use starling_broker::broker::{Acquire, Grant, Ownership};
use starling_broker::wake::Waker;
use starling_cluster::feed::{self, Applied, Feed, Item};
use starling_cluster::net::{TcpDial, serve};
use starling_cluster::raft::Peer;
use starling_cluster::{ClusterNode, Command, Limits, NodeConfig, Outcome, Timing};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::plugin::BoxFuture;
use crate::wakeup::Stop;

/// A node of the cluster, over TCP.
pub type Node = ClusterNode<TcpDial>;

/// Peer streams served at once; a stream beyond it is closed at accept (a node has a few
/// peers, each with a stream or two; more means something is wrong).
const MAX_PEER_STREAMS: usize = 256;

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

/// This node, started, and what the broker is to run on.
pub struct Started {
    /// The node.
    pub node: Arc<Node>,
    /// The broker's `Ownership` seam, until [`Started::take_ownership`].
    ownership: Option<Box<dyn Ownership>>,
    /// Tasks that need no broker (listener, announcement).
    pub tasks: Vec<BoxFuture>,
    feed: Feed,
    releases: mpsc::Receiver<(String, u64)>,
    granted: Granted,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The epochs of the claims this node was granted, by client id, for their release.
type Granted = Arc<Mutex<HashMap<String, u64>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts this node: its Raft instance over the log in the cluster directory, the inter-node
/// listener and the announcement of its incarnation; and the seam the broker claims client
/// ids through. [`Started::attach`] then gives it the broker.
pub async fn start(config: &Config, stop: &Arc<Stop>) -> anyhow::Result<Started> {
    let c = &config.cluster;
    let members: BTreeMap<u64, Peer> = c
        .seeds()?
        .into_iter()
        .map(|s| (s.id, Peer { addr: s.addr }))
        .collect();
    if members.get(&c.node_id).map(|p| p.addr.as_str()) != Some(c.advertised().as_str()) {
        warn!(
            node = c.node_id,
            advertised = %c.advertised(),
            "this node's entry in cluster.seeds is not its advertised address"
        );
    }
    let mut node_config = NodeConfig::new(c.node_id, c.dir(&config.data_dir), members);
    node_config.timing = Timing {
        heartbeat_ms: c.heartbeat_ms,
        election_min_ms: c.election_timeout_ms,
        election_max_ms: c.election_timeout_ms.saturating_mul(2),
    };
    node_config.propose_timeout = Duration::from_millis(c.propose_timeout_ms);
    node_config.limits = Limits {
        max_retained: config.limits.max_retained_messages as u64,
        max_retained_payload: config.limits.max_packet_size as u64,
    };
    let (feed_tx, feed) = feed::channel(FEED_CAPACITY);
    node_config.feed = Some(feed_tx);
    let listener = TcpListener::bind(c.bind)
        .await
        .with_context(|| format!("cannot bind cluster listener {}", c.bind))?;
    let node = ClusterNode::start(node_config, TcpDial)
        .await
        .context("cannot start the cluster node")?;
    info!(node = node.id(), incarnation = node.incarnation(), bind = %c.bind, "cluster listener open");
    let (release_tx, releases) = mpsc::channel(MAX_RELEASES);
    let granted = Granted::default();
    let ownership = ClusterOwnership {
        node: node.clone(),
        runtime: tokio::runtime::Handle::current(),
        claims: Arc::new(Semaphore::new(MAX_CLAIMS)),
        granted: granted.clone(),
        releases: release_tx,
    };
    let tasks: Vec<BoxFuture> = vec![
        Box::pin(accept_loop(listener, node.clone(), stop.clone())),
        Box::pin(announce(node.clone(), stop.clone())),
    ];
    Ok(Started {
        node,
        ownership: Some(Box::new(ownership)),
        tasks,
        feed,
        releases,
        granted,
    })
}

impl Started {
    /// The seam the broker claims client ids through (once).
    pub fn take_ownership(&mut self) -> Option<Box<dyn Ownership>> {
        self.ownership.take()
    }

    /// The tasks that need the broker: following applied claims, committing releases.
    pub fn attach(self, broker: Arc<Broker>, stop: &Arc<Stop>) -> (Arc<Node>, Vec<BoxFuture>) {
        let mut tasks = self.tasks;
        tasks.push(Box::pin(follow(
            self.feed,
            self.node.clone(),
            broker,
            self.granted,
            stop.clone(),
        )));
        tasks.push(Box::pin(release(
            self.releases,
            self.node.clone(),
            stop.clone(),
        )));
        (self.node, tasks)
    }
}

/// The broker's `Ownership` seam in a cluster: a CONNECT's client id is claimed through the
/// cluster's log (in a task; the connection waits for its grant).
#[derive(Debug)]
struct ClusterOwnership {
    node: Arc<Node>,
    runtime: tokio::runtime::Handle,
    claims: Arc<Semaphore>,
    granted: Granted,
    releases: mpsc::Sender<(String, u64)>,
}

impl Ownership for ClusterOwnership {
    fn acquire(&self, client_id: &Arc<str>, waker: Waker) -> Acquire {
        let Ok(permit) = self.claims.clone().try_acquire_owned() else {
            return Acquire::Busy;
        };
        let grant = Grant::new(waker);
        let (node, granted, g) = (self.node.clone(), self.granted.clone(), grant.clone());
        let id = client_id.to_string();
        self.runtime.spawn(async move {
            let cmd = Command::Claim {
                client_id: id.clone(),
                node: node.id(),
                incarnation: node.incarnation(),
            };
            match node.propose(cmd).await {
                Ok(Outcome::Claimed { owner, previous }) => {
                    debug!(client_id = %id, epoch = owner.epoch, ?previous, "client id claimed");
                    lock(&granted).insert(id, owner.epoch);
                    g.grant(owner.epoch);
                }
                Ok(other) => {
                    warn!(client_id = %id, ?other, "claim refused by the cluster");
                    g.refuse();
                }
                Err(e) => {
                    warn!(client_id = %id, error = %e, "claim not committed");
                    g.refuse();
                }
            }
            drop(permit);
        });
        Acquire::Later(grant)
    }

    fn confirm(&self, client_id: &str, epoch: u64) -> bool {
        // Not yet applied here (the grant came from the leader): nothing newer is known.
        let owner = self.node.state().read().owner(client_id);
        !owner.is_some_and(|o| o.epoch > epoch && o.node != self.node.id())
    }

    fn released(&self, client_id: &str) {
        let epoch = lock(&self.granted).remove(client_id);
        if let Some(epoch) = epoch
            && self
                .releases
                .try_send((client_id.to_owned(), epoch))
                .is_err()
        {
            debug!(
                client_id,
                "release queue full; the client id stays this node's until claimed elsewhere"
            );
        }
    }
}

/// Ends the sessions whose client id another node claimed (their connections get DISCONNECT
/// 0x8E), as the claims are applied here; after the feed lagged, compares every session
/// with the state.
async fn follow(
    mut feed: Feed,
    node: Arc<Node>,
    broker: Arc<Broker>,
    granted: Granted,
    stop: Arc<Stop>,
) {
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
                if broker.taken_over_elsewhere(&client_id, Instant::now()) {
                    info!(
                        client_id,
                        node = owner.node,
                        "session taken over by another node"
                    );
                }
            }
            Some(Item::Lagged) => {
                let moved: Vec<String> = {
                    let state = node.state().read();
                    broker
                        .client_ids()
                        .into_iter()
                        .filter(|c| state.owner(c).is_some_and(|o| o.node != node.id()))
                        .map(|c| c.to_string())
                        .collect()
                };
                warn!(
                    sessions = moved.len(),
                    "cluster feed lagged; sessions compared with the state"
                );
                for c in moved {
                    lock(&granted).remove(&c);
                    broker.taken_over_elsewhere(&c, Instant::now());
                }
            }
        }
    }
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
async fn accept_loop(listener: TcpListener, node: Arc<Node>, stop: Arc<Stop>) {
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
        tokio::spawn(async move {
            tokio::select! {
                () = serve(stream, raft) => {}
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

/// The cluster as this node sees it, for `GET /api/v1/cluster`.
pub fn status(node: &Node) -> Value {
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
            })
        })
        .collect();
    let (retained, retained_bytes) = state.retained_size();
    json!({
        "enabled": true,
        "node_id": node.id(),
        "incarnation": node.incarnation(),
        "announced": state.incarnation(node.id()) == Some(node.incarnation()),
        "role": format!("{:?}", m.state).to_lowercase(),
        "leader": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "last_applied": m.last_applied.map(|l| l.index),
        "members": members,
        "client_ids_owned": state.owners().count(),
        "retained_messages": retained,
        "retained_bytes": retained_bytes,
    })
}
