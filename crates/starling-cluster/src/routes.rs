//! Other nodes' routes: which filters each node's clients subscribe to, so that a publish
//! here is handed once to every node with a matching subscriber. Each node's own route table
//! is the truth about it; it sends its filters to its peers as a snapshot when a stream
//! opens and as deltas after that ([`Update`]), both stamped with its incarnation so that
//! what an earlier life of a node said is replaced, not merged. Eventually consistent: a
//! subscription made on one node reaches the others within a round trip.
//!
//! [`RemoteRoutes`] keeps them as a trie over topic levels, so matching a topic visits only
//! the branches it can match, whatever the number of filters. A shared subscription is told
//! by its full filter (`$share/{group}/{filter}`) and kept apart, by group, so that the
//! publishing node can hand each matching group's message to one node of those with members
//! ([`Matches::groups`]). [`LocalFilters`] counts this
//! node's subscriptions per filter (a filter's first subscriber and its last going are the
//! changes), and one [`sync`] task per peer tells the peer.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info};

use crate::contact::Contact;
use crate::net::rpc::Kind;
use crate::net::{Dial, Link};
use crate::state::NodeId;

/// What a node tells a peer about its filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Every filter the node's clients subscribe to as of its change `seq` (replaces what
    /// the peer knew).
    Snapshot {
        node: NodeId,
        incarnation: u64,
        seq: u64,
        filters: Vec<String>,
    },
    /// The net effect of the node's changes after `from` up to `to`: each filter in one list.
    Delta {
        node: NodeId,
        incarnation: u64,
        from: u64,
        to: u64,
        added: Vec<String>,
        removed: Vec<String>,
    },
}

/// An [`Update`] as a node sends it, with the members it heard from within
/// [`crate::forward::HOLD`]: failure suspicion shared between nodes (the leader judges a
/// member down only if no other member hears it, `Contact::vouched_for`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Told {
    /// The filters.
    pub update: Update,
    /// The members the sender heard from lately (at most [`MAX_HEARS`] read).
    pub hears: Vec<NodeId>,
}

/// Members one report names at most (more are not read).
pub const MAX_HEARS: usize = 1024;

/// What the peer answers to an [`Update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateReply {
    /// Applied.
    Applied,
    /// A delta that does not follow what the peer has (a gap, another incarnation): send a
    /// snapshot.
    NeedSnapshot,
    /// The sender is not a member as the peer's log says (it left, or has not joined yet):
    /// nothing is kept; ask again later.
    NotMember,
}

impl Update {
    /// The node whose filters these are.
    pub fn node(&self) -> NodeId {
        match self {
            Update::Snapshot { node, .. } | Update::Delta { node, .. } => *node,
        }
    }
}

#[derive(Debug, Default)]
struct Level {
    children: HashMap<Box<str>, Level>,
    /// Nodes with a filter ending at this level.
    here: BTreeSet<NodeId>,
    /// Nodes with a filter ending in `#` below this level.
    rest: BTreeSet<NodeId>,
    /// Shared groups (by full filter) with members whose filter ends at this level, and the
    /// nodes that have members.
    shared_here: BTreeMap<Arc<str>, BTreeSet<NodeId>>,
    /// The same for filters ending in `#` below this level.
    shared_rest: BTreeMap<Arc<str>, BTreeSet<NodeId>>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.here.is_empty()
            && self.rest.is_empty()
            && self.shared_here.is_empty()
            && self.shared_rest.is_empty()
    }
}

/// What a topic matches among the other nodes' filters.
#[derive(Debug, Default)]
pub struct Matches {
    /// Nodes with a plain subscription that matches, each once.
    pub nodes: Vec<NodeId>,
    /// Shared groups that match (by full filter, `$share/{group}/{filter}`), each with the
    /// nodes that have members of it.
    pub groups: BTreeMap<Arc<str>, Vec<NodeId>>,
}

impl Matches {
    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty()
    }
}

/// A filter as told: its group's full filter if it is a shared subscription, and the filter
/// it matches topics with.
fn parse(filter: &str) -> (Option<Arc<str>>, &str) {
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((_group, matched)) = rest.split_once('/')
    {
        return (Some(Arc::from(filter)), matched);
    }
    (None, filter)
}

/// What each node knows of a peer: its incarnation, the last update applied, its filters.
#[derive(Debug, Default)]
struct Known {
    incarnation: u64,
    seq: u64,
    filters: BTreeSet<String>,
}

/// Most filters kept for one peer; beyond it a peer's new filters are not kept (counted, and
/// logged): its subscribers of those do not get messages published elsewhere.
pub const MAX_FILTERS_PER_NODE: usize = 1_000_000;

/// Most peers whose filters are kept (a cluster has a few nodes; more means something is
/// wrong): an update from another is not kept (counted).
pub const MAX_NODES: usize = 256;

/// Other nodes' filters, matched against topics.
#[derive(Debug, Default)]
pub struct RemoteRoutes {
    root: Level,
    nodes: BTreeMap<NodeId, Known>,
    /// Filters not kept for the bounds.
    refused: u64,
}

impl RemoteRoutes {
    /// Applies an update from a peer.
    pub fn apply(&mut self, update: Update) -> UpdateReply {
        match update {
            Update::Snapshot {
                node,
                incarnation,
                seq,
                filters,
            } => {
                if self
                    .nodes
                    .get(&node)
                    .is_some_and(|k| k.incarnation > incarnation)
                {
                    // From an earlier life of the node, late: what is known is newer.
                    return UpdateReply::Applied;
                }
                if !self.nodes.contains_key(&node) && self.nodes.len() >= MAX_NODES {
                    self.refuse(node, filters.len());
                    return UpdateReply::Applied;
                }
                self.forget(node);
                let mut filters: BTreeSet<String> = filters.into_iter().collect();
                if filters.len() > MAX_FILTERS_PER_NODE {
                    let over: Vec<String> =
                        filters.iter().skip(MAX_FILTERS_PER_NODE).cloned().collect();
                    for f in &over {
                        filters.remove(f);
                    }
                    self.refuse(node, over.len());
                }
                let known = Known {
                    incarnation,
                    seq,
                    filters,
                };
                for f in &known.filters {
                    insert(&mut self.root, f, node);
                }
                self.nodes.insert(node, known);
                UpdateReply::Applied
            }
            Update::Delta {
                node,
                incarnation,
                from,
                to,
                added,
                removed,
            } => {
                let Some(known) = self.nodes.get_mut(&node) else {
                    return UpdateReply::NeedSnapshot;
                };
                if known.incarnation != incarnation || known.seq != from {
                    return UpdateReply::NeedSnapshot;
                }
                known.seq = to;
                for f in removed {
                    if known.filters.remove(&f) {
                        remove(&mut self.root, &f, node);
                    }
                }
                let mut refused = 0;
                for f in added {
                    if known.filters.len() >= MAX_FILTERS_PER_NODE && !known.filters.contains(&f) {
                        refused += 1;
                        continue;
                    }
                    if known.filters.insert(f.clone()) {
                        insert(&mut self.root, &f, node);
                    }
                }
                if refused > 0 {
                    self.refuse(node, refused);
                }
                UpdateReply::Applied
            }
        }
    }

    fn refuse(&mut self, node: NodeId, count: usize) {
        self.refused += count as u64;
        tracing::warn!(
            node,
            count,
            "filters of a peer not kept: at most {MAX_FILTERS_PER_NODE} per peer and {MAX_NODES} peers"
        );
    }

    /// Filters not kept for the bounds ([`MAX_FILTERS_PER_NODE`], [`MAX_NODES`]).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Forgets every filter of `node`.
    pub fn forget(&mut self, node: NodeId) {
        if let Some(known) = self.nodes.remove(&node) {
            for f in &known.filters {
                remove(&mut self.root, f, node);
            }
        }
    }

    /// Adds to `out` (once each) the nodes with a plain filter matching `topic`.
    pub fn matching(&self, topic: &str, out: &mut Vec<NodeId>) {
        let mut m = Matches::default();
        self.matches(topic, &mut m);
        for n in m.nodes {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }

    /// Adds to `out` what matches `topic`: the nodes with plain subscriptions, and the
    /// shared groups with the nodes that have members.
    pub fn matches(&self, topic: &str, out: &mut Matches) {
        let dollar = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        walk(&self.root, &levels, 0, dollar, out);
    }

    /// Number of (node, filter) routes.
    pub fn len(&self) -> usize {
        self.nodes.values().map(|k| k.filters.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The filters of `node`, sorted.
    pub fn filters_of(&self, node: NodeId) -> Vec<String> {
        self.nodes
            .get(&node)
            .map(|k| k.filters.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn push(
    out: &mut Matches,
    nodes: &BTreeSet<NodeId>,
    groups: &BTreeMap<Arc<str>, BTreeSet<NodeId>>,
) {
    for n in nodes {
        if !out.nodes.contains(n) {
            out.nodes.push(*n);
        }
    }
    for (group, nodes) in groups {
        let have = out.groups.entry(group.clone()).or_default();
        for n in nodes {
            if !have.contains(n) {
                have.push(*n);
            }
        }
    }
}

fn walk(level: &Level, topic: &[&str], at: usize, dollar: bool, out: &mut Matches) {
    // A wildcard in the first level does not match a `$` topic (spec 4.7.2).
    let wild_ok = !(dollar && at == 0);
    if wild_ok {
        push(out, &level.rest, &level.shared_rest);
    }
    let Some(name) = topic.get(at) else {
        push(out, &level.here, &level.shared_here);
        return;
    };
    if let Some(next) = level.children.get(*name) {
        walk(next, topic, at + 1, dollar, out);
    }
    if wild_ok && let Some(next) = level.children.get("+") {
        walk(next, topic, at + 1, dollar, out);
    }
}

fn insert(root: &mut Level, filter: &str, node: NodeId) {
    let (group, filter) = parse(filter);
    let mut level = root;
    for name in filter.split('/') {
        if name == "#" {
            match group {
                Some(g) => level.shared_rest.entry(g).or_default().insert(node),
                None => level.rest.insert(node),
            };
            return;
        }
        level = level.children.entry(name.into()).or_default();
    }
    match group {
        Some(g) => level.shared_here.entry(g).or_default().insert(node),
        None => level.here.insert(node),
    };
}

fn remove(root: &mut Level, filter: &str, node: NodeId) {
    let (group, filter) = parse(filter);
    let names: Vec<&str> = filter.split('/').collect();
    remove_at(root, &names, group.as_deref(), node);
}

/// Takes `node` out of `group`'s nodes in `groups`, and the group out once it has none.
fn remove_shared(groups: &mut BTreeMap<Arc<str>, BTreeSet<NodeId>>, group: &str, node: NodeId) {
    if let Some(nodes) = groups.get_mut(group) {
        nodes.remove(&node);
        if nodes.is_empty() {
            groups.remove(group);
        }
    }
}

/// Removes below `level`; whether `level` is empty afterwards (and can go).
fn remove_at(level: &mut Level, names: &[&str], group: Option<&str>, node: NodeId) -> bool {
    match (names.split_first(), group) {
        (None, None) => {
            level.here.remove(&node);
        }
        (None, Some(g)) => remove_shared(&mut level.shared_here, g, node),
        (Some((&"#", _)), None) => {
            level.rest.remove(&node);
        }
        (Some((&"#", _)), Some(g)) => remove_shared(&mut level.shared_rest, g, node),
        (Some((name, rest)), _) => {
            if let Some(child) = level.children.get_mut(*name)
                && remove_at(child, rest, group, node)
            {
                level.children.remove(*name);
            }
        }
    }
    level.is_empty()
}

/// Filter changes kept for peers that are behind; a peer further behind gets a snapshot.
const MAX_CHANGES: usize = 16_384;

/// How long a peer may take to answer an update.
const UPDATE_TTL: Duration = Duration::from_secs(5);

/// Between attempts to reach a peer that did not answer.
const RETRY: Duration = Duration::from_secs(1);

/// How long a peer that is up to date goes without a word: then it is asked (an empty
/// delta) whether it still has what it was told, so that a peer that restarted gets a
/// snapshot even if nothing changes here.
const KEEPALIVE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The filters this node's clients subscribe to, counted, and their recent changes.
#[derive(Debug)]
pub struct LocalFilters {
    inner: Mutex<Filters>,
    /// The number of the last change.
    seq: watch::Sender<u64>,
    /// The number of the last change each peer has applied (its [`sync`] task says so).
    told: watch::Sender<HashMap<NodeId, u64>>,
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
            told: watch::Sender::new(HashMap::new()),
        }
    }
}

impl LocalFilters {
    /// One more (`add`) or one fewer local subscription to `filter`; the first and the last
    /// are changes the peers are told.
    pub fn change(&self, filter: &str, add: bool) {
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
    pub fn snapshot(&self) -> (u64, Vec<String>) {
        let f = lock(&self.inner);
        let mut filters: Vec<String> = f.counts.keys().cloned().collect();
        filters.sort_unstable();
        (f.seq, filters)
    }

    /// The net changes after change `from`: (last number, added, removed); `None` if they are
    /// no longer kept (send a snapshot).
    pub fn since(&self, from: u64) -> Option<(u64, Vec<String>, Vec<String>)> {
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
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }

    /// The number of the last change.
    pub fn seq(&self) -> u64 {
        *self.seq.borrow()
    }

    /// `peer` has applied every change up to `seq` (`None`: it has to be told again).
    fn told(&self, peer: NodeId, seq: Option<u64>) {
        self.told.send_modify(|t| match seq {
            Some(seq) => {
                t.insert(peer, seq);
            }
            None => {
                t.remove(&peer);
            }
        });
    }

    /// Waits until each of `peers` has applied the changes up to `seq` (then a publish on
    /// any of them reaches this node's subscribers as of that change), for at most
    /// `within`; whether they all have.
    pub async fn told_all(&self, peers: &[NodeId], seq: u64, within: Duration) -> bool {
        let mut rx = self.told.subscribe();
        let all =
            |t: &HashMap<NodeId, u64>| peers.iter().all(|p| t.get(p).is_some_and(|&s| s >= seq));
        tokio::time::timeout(within, rx.wait_for(all))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Keeps `peer` (id and address) told of the filters of this node (`me`: id and
/// incarnation): a snapshot first (and whenever the peer asks for one), then the changes as
/// they come, and an empty delta every [`KEEPALIVE`] without changes (the peer's replies
/// are recorded in `contact`). Ends when `stop` resolves.
pub async fn sync<D: Dial>(
    dial: D,
    me: (NodeId, u64),
    peer: (NodeId, String),
    filters: Arc<LocalFilters>,
    contact: Arc<Contact>,
    stop: impl Future<Output = ()>,
) {
    let (node, incarnation) = me;
    let (peer, addr) = peer;
    let mut stop = std::pin::pin!(stop);
    let link_contact = contact.clone();
    let mut link = Link::new(dial, peer, addr).with_contact(contact);
    let mut changed = filters.watch();
    // The number of the last change the peer has, once it has a snapshot.
    let mut told: Option<u64> = None;
    loop {
        // A delta (empty when nothing changed: then it asks whether the peer still has what
        // it was told; a peer that restarted meanwhile answers with a request for a snapshot).
        let (seq, update) = match told.and_then(|from| filters.since(from).map(|c| (from, c))) {
            Some((from, (seq, added, removed))) => (
                seq,
                Update::Delta {
                    node,
                    incarnation,
                    from,
                    to: seq,
                    added,
                    removed,
                },
            ),
            None => {
                let (seq, list) = filters.snapshot();
                let update = Update::Snapshot {
                    node,
                    incarnation,
                    seq,
                    filters: list,
                };
                (seq, update)
            }
        };
        let snapshot = matches!(update, Update::Snapshot { .. });
        let message = Told {
            update,
            hears: link_contact.heard_within(crate::forward::HOLD),
        };
        match link
            .call::<Told, UpdateReply>(Kind::Routes, &message, UPDATE_TTL)
            .await
        {
            Ok(UpdateReply::Applied) => {
                if snapshot {
                    info!(peer, changes = seq, "routes sent to peer");
                }
                told = Some(seq);
                filters.told(peer, told);
                if filters.since(seq).is_some_and(|(to, ..)| to == seq) {
                    // Up to date: wait for a change, or ask again after a while.
                    tokio::select! {
                        r = changed.changed() => if r.is_err() { return },
                        () = tokio::time::sleep(KEEPALIVE) => {}
                        () = &mut stop => return,
                    }
                }
            }
            Ok(UpdateReply::NeedSnapshot) => {
                told = None;
                filters.told(peer, told);
            }
            Ok(UpdateReply::NotMember) => {
                debug!(
                    peer,
                    "the peer does not count this node a member yet; retrying"
                );
                told = None;
                filters.told(peer, told);
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = &mut stop => return,
                }
            }
            Err(e) => {
                debug!(peer, error = %e, "routes not sent; retrying");
                told = None;
                filters.told(peer, told);
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = &mut stop => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
