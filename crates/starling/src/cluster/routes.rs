//! The broker's route table in a cluster: the local subscription trie, plus the filters of
//! the other nodes (`starling_cluster::routes::RemoteRoutes`), so a publish matches both at
//! once and each node with a subscriber is handed the message once. Local subscriptions are
//! counted per filter; a filter's first subscriber and its last going are the changes the
//! peers are told (`LocalFilters`, read by one `sync` task per peer: a snapshot when its
//! stream opens, deltas after; both in `starling_cluster::routes`).
//!
//! A shared subscription is told to the peers by the filter it matches (`$share/g/a/#` as
//! `a/#`): a message reaches every node with a member, and each node delivers it to one of
//! its own members. A group with members on several nodes therefore gets one delivery per
//! node, not one in all (docs/cluster.md).

use std::sync::{Arc, RwLock};

use starling_broker::router::{RouteTable, Router, Subscriber, Target};
use starling_broker::session::Session;
use starling_cluster::routes::{LocalFilters, RemoteRoutes};
use starling_proto::TopicFilter;

/// The route table of a node of a cluster.
#[derive(Debug)]
pub(super) struct ClusterRoutes {
    local: Router,
    remote: Arc<RwLock<RemoteRoutes>>,
    filters: Arc<LocalFilters>,
}

impl ClusterRoutes {
    /// A table over the other nodes' filters in `remote`, telling `filters` its own.
    pub(super) fn new(remote: Arc<RwLock<RemoteRoutes>>, filters: Arc<LocalFilters>) -> Self {
        Self {
            local: Router::default(),
            remote,
            filters,
        }
    }
}

fn told(filter: &TopicFilter) -> &str {
    std::str::from_utf8(filter.match_filter()).unwrap_or_default()
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
        let mut nodes = Vec::new();
        if let Ok(topic) = std::str::from_utf8(topic) {
            let remote = self.remote.read().unwrap_or_else(|p| p.into_inner());
            remote.matching(topic, &mut nodes);
        }
        if nodes.is_empty() {
            return self.local.route(topic, f);
        }
        self.local.route(topic, &mut |local: &[Target<'_>]| {
            let mut targets = local.to_vec();
            targets.extend(nodes.iter().map(|n| Target::Remote(*n)));
            f(&targets);
        });
    }

    fn count(&self) -> usize {
        self.local.count()
    }

    fn shared_count(&self) -> usize {
        self.local.shared_count()
    }
}
