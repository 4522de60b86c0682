//! The cluster's metrics, when this broker is a node of one: its role, term and log position,
//! the members (and those judged down), what it knows of the other nodes' routes, and per
//! peer the messages it confirmed or that were dropped on the way to it, when it last
//! answered and whether it is suspected down.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{Res, family, gauge};
use crate::http::AppState;

pub(super) fn cluster(e: &mut DescriptorEncoder<'_>, state: &AppState) -> Res {
    let Some(handle) = &state.cluster else {
        return Ok(());
    };
    let n = handle.numbers();
    gauge(
        e,
        "starling_cluster_leader",
        "1 while this node is the cluster's leader",
        u64::from(n.leader),
    )?;
    gauge(
        e,
        "starling_cluster_majority",
        "1 while this node has heard from a majority of the voters within the lease (0: cut off; clients are refused and sent elsewhere)",
        u64::from(n.majority),
    )?;
    gauge(
        e,
        "starling_cluster_term",
        "The Raft term this node is in",
        n.term,
    )?;
    gauge(
        e,
        "starling_cluster_last_applied",
        "Index of the last log entry this node applied",
        n.last_applied,
    )?;
    gauge(
        e,
        "starling_cluster_members",
        "Members of the cluster",
        n.members,
    )?;
    gauge(
        e,
        "starling_cluster_members_down",
        "Members the leader judged down through the log (silent for down_after_ms)",
        n.down,
    )?;
    gauge(
        e,
        "starling_cluster_client_ids_owned",
        "Client ids owned by some node, in the replicated state",
        n.owned,
    )?;
    gauge(
        e,
        "starling_cluster_remote_routes",
        "Filters of the other nodes' subscriptions that this node knows",
        n.remote_routes,
    )?;
    super::counter(
        e,
        "starling_cluster_remote_routes_refused",
        "Filters of other nodes not kept: beyond a million per peer, or beyond 256 peers",
        n.remote_routes_refused,
    )?;
    let ids: Vec<String> = n.peers.iter().map(|p| p.0.to_string()).collect();
    let sent = ids.iter().zip(&n.peers).map(|(id, p)| (id.as_str(), p.1));
    family(
        e,
        "starling_cluster_peer_messages_sent",
        "Messages a peer confirmed it took for its subscribers",
        MetricType::Counter,
        "peer",
        sent,
    )?;
    let dropped = ids.iter().zip(&n.peers).map(|(id, p)| (id.as_str(), p.2));
    family(
        e,
        "starling_cluster_peer_messages_dropped",
        "Messages for a peer dropped: its queue was full, or it did not confirm their batch",
        MetricType::Counter,
        "peer",
        dropped,
    )?;
    let heard = ids
        .iter()
        .zip(&n.peers)
        .filter_map(|(id, p)| p.3.map(|ms| (id.as_str(), ms)));
    family(
        e,
        "starling_cluster_peer_last_reply_ms",
        "Milliseconds since the peer last answered a request of this node (absent: not since it started)",
        MetricType::Gauge,
        "peer",
        heard,
    )?;
    let suspected = ids
        .iter()
        .zip(&n.peers)
        .map(|(id, p)| (id.as_str(), u64::from(p.4)));
    family(
        e,
        "starling_cluster_peer_suspected",
        "1 while the peer is suspected down (no answer for 10 s, or judged down): not picked for shared groups",
        MetricType::Gauge,
        "peer",
        suspected,
    )
}
