//! This broker as a node of a cluster (`[cluster]`, docs/cluster.md): starts the replicated
//! core (`starling-cluster`) beside the broker, serves the other nodes on the inter-node
//! listener, announces this node's incarnation through the log, and describes the cluster
//! for the admin API. Every task here ends with the server's stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use starling_cluster::net::{TcpDial, serve};
use starling_cluster::raft::Peer;
use starling_cluster::{ClusterNode, Limits, NodeConfig, Timing};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

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

/// Starts this node: its Raft instance over the log in the cluster directory, the inter-node
/// listener and the announcement of its incarnation. Returns the node and the tasks to run
/// (each ends with `stop`).
pub async fn start(
    config: &Config,
    stop: &Arc<Stop>,
) -> anyhow::Result<(Arc<Node>, Vec<BoxFuture>)> {
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
    let listener = TcpListener::bind(c.bind)
        .await
        .with_context(|| format!("cannot bind cluster listener {}", c.bind))?;
    let node = ClusterNode::start(node_config, TcpDial)
        .await
        .context("cannot start the cluster node")?;
    info!(node = node.id(), incarnation = node.incarnation(), bind = %c.bind, "cluster listener open");
    let tasks: Vec<BoxFuture> = vec![
        Box::pin(accept_loop(listener, node.clone(), stop.clone())),
        Box::pin(announce(node.clone(), stop.clone())),
    ];
    Ok((node, tasks))
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
