//! The broker's route table in a cluster: the local subscription trie, plus the filters of
//! the other nodes (`starling_cluster::routes::RemoteRoutes`), so a publish matches both at
//! once and each node with a subscriber is handed the message once. Local subscriptions are
//! counted per filter; a filter's first subscriber and its last going are the changes the
//! peers are told (`LocalFilters`, read by one `sync` task per peer: a snapshot when its
//! stream opens, deltas after; both in `starling_cluster::routes`).
//!
//! A shared subscription is told to the peers by its full filter (`$share/g/a/#`): for each
//! matching group, the publishing node picks one node among those with members (itself
//! included), in turn, and only that node delivers to one of its members. A group with
//! members on several nodes gets one delivery in all (docs/cluster.md). A node suspected
//! down (no answer for 10 s, `peers.rs`) is not picked while another node of the group is
//! up: its members could not get the message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use starling_broker::router::{RouteTable, Router, Subscriber, Target};
use starling_broker::session::Session;
use starling_cluster::routes::{LocalFilters, Matches, RemoteRoutes};
use starling_proto::TopicFilter;

/// The route table of a node of a cluster.
#[derive(Debug)]
pub(super) struct ClusterRoutes {
    local: Router,
    remote: Arc<RwLock<RemoteRoutes>>,
    filters: Arc<LocalFilters>,
    /// The other members, and which are suspected down.
    peers: Arc<super::peers::PeerSet>,
    /// Turns taken between the nodes with members of a shared group.
    turn: AtomicUsize,
}

impl ClusterRoutes {
    /// A table over the other nodes' filters in `remote`, telling `filters` its own.
    pub(super) fn new(
        remote: Arc<RwLock<RemoteRoutes>>,
        filters: Arc<LocalFilters>,
        peers: Arc<super::peers::PeerSet>,
    ) -> Self {
        Self {
            local: Router::default(),
            remote,
            filters,
            peers,
            turn: AtomicUsize::new(0),
        }
    }
}

/// What the peers are told of a filter: the filter itself (a shared one whole, with its
/// group).
fn told(filter: &TopicFilter) -> &str {
    filter.as_str()
}

impl RouteTable for ClusterRoutes {
    fn subscribe(&self, filter: &TopicFilter, sub: Subscriber) -> bool {
        let existed = self.local.subscribe(filter, sub);
        if !existed {
            self.filters.change(told(filter), true);
        }
        existed
    }

    fn unsubscribe(&self, filter: &TopicFilter, session: &Arc<Session>) -> bool {
        let had = self.local.unsubscribe(filter, session);
        if had {
            self.filters.change(told(filter), false);
        }
        had
    }

    fn route(&self, topic: &[u8], f: &mut dyn FnMut(&[Target<'_>])) {
        let mut m = Matches::default();
        if let Ok(topic) = std::str::from_utf8(topic) {
            let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
            remote.matches(topic, &mut m);
        }
        if m.is_empty() {
            return self.local.route(topic, f);
        }
        // Suspects are not picked while another node of the group is up, or this node has
        // members of it.
        let suspects = !m.groups.is_empty() && self.peers.any_suspect();
        if suspects {
            for nodes in m.groups.values_mut() {
                if nodes.iter().any(|n| !self.peers.is_suspect(*n)) {
                    nodes.retain(|n| !self.peers.is_suspect(*n));
                }
            }
        }
        self.local.route(topic, &mut |local: &[Target<'_>]| {
            let mut targets = Vec::with_capacity(local.len() + m.nodes.len() + m.groups.len());
            // The groups with members here too: this node takes its turn among the others.
            let mut picked: Vec<(u64, &Arc<str>)> = Vec::new();
            for t in local {
                if let Target::Shared(_, key, _) = t
                    && let Some((group, nodes)) = m.groups.get_key_value(key.filter.as_str())
                {
                    let all_down = suspects && nodes.iter().all(|n| self.peers.is_suspect(*n));
                    let turn = if all_down {
                        nodes.len()
                    } else {
                        self.turn.fetch_add(1, Ordering::Relaxed) % (nodes.len() + 1)
                    };
                    match nodes.get(turn) {
                        Some(node) => picked.push((*node, group)),
                        None => targets.push(*t),
                    }
                    continue;
                }
                targets.push(*t);
            }
            // The groups with no member here: one of the nodes that have some.
            for (group, nodes) in &m.groups {
                let here = local.iter().any(
                    |t| matches!(t, Target::Shared(_, key, _) if *key.filter.as_str() == **group),
                );
                if !here && !nodes.is_empty() {
                    let turn = self.turn.fetch_add(1, Ordering::Relaxed) % nodes.len();
                    if let Some(node) = nodes.get(turn) {
                        picked.push((*node, group));
                    }
                }
            }
            targets.extend(m.nodes.iter().map(|n| Target::Remote(*n)));
            targets.extend(picked.iter().map(|(n, g)| Target::RemoteGroup(*n, g)));
            f(&targets);
        });
    }

    fn route_here(&self, topic: &[u8], f: &mut dyn FnMut(&[Target<'_>])) {
        self.local.route(topic, f);
    }

    fn count(&self) -> usize {
        self.local.count()
    }

    fn shared_count(&self) -> usize {
        self.local.shared_count()
    }
}
