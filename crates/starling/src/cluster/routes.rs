//! The broker's route table in a cluster: the local subscription trie, plus the filters of
//! the other nodes (`starling_cluster::routes::RemoteRoutes`), so a publish matches both at
//! once and each node with a subscriber is handed the message once. Local subscriptions are
//! counted per filter; a filter's first subscriber and its last going are the changes the
//! peers are told ([`LocalFilters`], read by one [`sync`] task per peer: a snapshot when
//! its stream opens, deltas after).
//!
//! A shared subscription is told to the peers by the filter it matches (`$share/g/a/#` as
//! `a/#`): a message reaches every node with a member, and each node delivers it to one of
//! its own members. A group with members on several nodes therefore gets one delivery per
//! node, not one in all (docs/cluster.md).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use starling_broker::router::{RouteTable, Router, Subscriber, Target};
use starling_broker::session::Session;
use starling_cluster::NodeId;
use starling_cluster::net::frame::Kind;
use starling_cluster::net::{Link, TcpDial};
use starling_cluster::routes::{RemoteRoutes, Update, UpdateReply};
use starling_proto::TopicFilter;
use tokio::sync::watch;
use tracing::{debug, info};

use super::Node;
use crate::wakeup::Stop;

/// Filter changes kept for peers that are behind; a peer further behind gets a snapshot.
const MAX_CHANGES: usize = 16_384;

/// How long a peer may take to answer an update.
const UPDATE_TTL: Duration = Duration::from_secs(5);

/// Between attempts to reach a peer that did not answer.
const RETRY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filters this node's clients subscribe to, counted, and their recent changes.
#[derive(Debug)]
pub(super) struct LocalFilters {
    inner: Mutex<Filters>,
    /// The number of the last change.
    seq: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Filters {
    counts: HashMap<String, usize>,
    seq: u64,
    /// (number, filter, added): the last [`MAX_CHANGES`] changes.
    changes: VecDeque<(u64, String, bool)>,
}

impl Default for LocalFilters {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            seq: watch::Sender::new(0),
        }
    }
}

impl LocalFilters {
    fn change(&self, filter: &str, add: bool) {
        let mut f = lock(&self.inner);
        let count = f.counts.entry(filter.to_owned()).or_insert(0);
        let first_or_last = if add {
            *count += 1;
            *count == 1
        } else {
            *count = count.saturating_sub(1);
            *count == 0
        };
        if !add && *count == 0 {
            f.counts.remove(filter);
        }
        if !first_or_last {
            return;
        }
        f.seq += 1;
        let seq = f.seq;
        f.changes.push_back((seq, filter.to_owned(), add));
        if f.changes.len() > MAX_CHANGES {
            f.changes.pop_front();
        }
        drop(f);
        self.seq.send_replace(seq);
    }

    /// Every filter now, and the number of the last change.
    pub(super) fn snapshot(&self) -> (u64, Vec<String>) {
        let f = lock(&self.inner);
        let mut filters: Vec<String> = f.counts.keys().cloned().collect();
        filters.sort_unstable();
        (f.seq, filters)
    }

    /// The net changes after change `from`: (last number, added, removed); `None` if they are
    /// no longer kept (send a snapshot).
    pub(super) fn since(&self, from: u64) -> Option<(u64, Vec<String>, Vec<String>)> {
        let f = lock(&self.inner);
        if f.seq == from {
            return Some((from, Vec::new(), Vec::new()));
        }
        let oldest = f.changes.front().map(|c| c.0)?;
        if oldest > from + 1 {
            return None;
        }
        // The last change of each filter decides (an add then a remove is a remove).
        let mut last: HashMap<&str, bool> = HashMap::new();
        for (_, filter, add) in f.changes.iter().filter(|c| c.0 > from) {
            last.insert(filter, *add);
        }
        let mut added: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for (filter, add) in last {
            if add {
                added.push(filter.to_owned())
            } else {
                removed.push(filter.to_owned())
            }
        }
        added.sort_unstable();
        removed.sort_unstable();
        Some((f.seq, added, removed))
    }

    /// Waits for changes after number `seen`.
    pub(super) fn watch(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }
}

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

/// Keeps peer `peer` told of this node's filters: a snapshot when the stream opens (or the
/// peer asks), then the changes as they come. Ends with the stop.
pub(super) async fn sync(
    peer: NodeId,
    addr: String,
    node: Arc<Node>,
    filters: Arc<LocalFilters>,
    stop: Arc<Stop>,
) {
    let mut link = Link::new(TcpDial, peer, addr);
    let mut changed = filters.watch();
    // The number of the last change the peer has, once it has a snapshot.
    let mut told: Option<u64> = None;
    loop {
        let (seq, update) = match told.and_then(|from| filters.since(from).map(|c| (from, c))) {
            Some((from, (seq, added, removed))) if seq != from => (
                seq,
                Update::Delta {
                    node: node.id(),
                    incarnation: node.incarnation(),
                    from,
                    to: seq,
                    added,
                    removed,
                },
            ),
            Some(_) => {
                // Up to date: wait for a change.
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    () = stop.wait() => return,
                }
                continue;
            }
            None => {
                let (seq, list) = filters.snapshot();
                (
                    seq,
                    Update::Snapshot {
                        node: node.id(),
                        incarnation: node.incarnation(),
                        seq,
                        filters: list,
                    },
                )
            }
        };
        let snapshot = matches!(update, Update::Snapshot { .. });
        match link
            .call::<Update, UpdateReply>(Kind::Routes, &update, UPDATE_TTL)
            .await
        {
            Ok(UpdateReply::Applied) => {
                if snapshot && told.is_none() {
                    info!(peer, filters = seq, "routes sent to peer");
                }
                told = Some(seq);
            }
            Ok(UpdateReply::NeedSnapshot) => told = None,
            Err(e) => {
                debug!(peer, error = %e, "routes not sent; retrying");
                told = None;
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = stop.wait() => return,
                }
            }
        }
    }
}
