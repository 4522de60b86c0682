//! Other nodes' routes: which filters each node's clients subscribe to, so that a publish
//! here is handed once to every node with a matching subscriber. Each node's own route table
//! is the truth about it; it sends its filters to its peers as a snapshot when a stream
//! opens and as deltas after that ([`Update`]), both stamped with its incarnation so that
//! what an earlier life of a node said is replaced, not merged. Eventually consistent: a
//! subscription made on one node reaches the others within a round trip.
//!
//! [`RemoteRoutes`] keeps them as a trie over topic levels, so matching a topic visits only
//! the branches it can match, whatever the number of filters.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::state::NodeId;

/// What a node tells a peer about its filters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the peer answers to an [`Update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateReply {
    /// Applied.
    Applied,
    /// A delta that does not follow what the peer has (a gap, another incarnation): send a
    /// snapshot.
    NeedSnapshot,
}

#[derive(Debug, Default)]
struct Level {
    children: HashMap<Box<str>, Level>,
    /// Nodes with a filter ending at this level.
    here: BTreeSet<NodeId>,
    /// Nodes with a filter ending in `#` below this level.
    rest: BTreeSet<NodeId>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.rest.is_empty()
    }
}

/// What each node knows of a peer: its incarnation, the last update applied, its filters.
#[derive(Debug, Default)]
struct Known {
    incarnation: u64,
    seq: u64,
    filters: BTreeSet<String>,
}

/// Other nodes' filters, matched against topics.
#[derive(Debug, Default)]
pub struct RemoteRoutes {
    root: Level,
    nodes: BTreeMap<NodeId, Known>,
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
                self.forget(node);
                let known = Known {
                    incarnation,
                    seq,
                    filters: filters.into_iter().collect(),
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
                for f in added {
                    if known.filters.insert(f.clone()) {
                        insert(&mut self.root, &f, node);
                    }
                }
                UpdateReply::Applied
            }
        }
    }

    /// Forgets every filter of `node`.
    pub fn forget(&mut self, node: NodeId) {
        if let Some(known) = self.nodes.remove(&node) {
            for f in &known.filters {
                remove(&mut self.root, f, node);
            }
        }
    }

    /// Adds to `out` (once each) the nodes with a filter matching `topic`.
    pub fn matching(&self, topic: &str, out: &mut Vec<NodeId>) {
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

fn push(out: &mut Vec<NodeId>, nodes: &BTreeSet<NodeId>) {
    for n in nodes {
        if !out.contains(n) {
            out.push(*n);
        }
    }
}

fn walk(level: &Level, topic: &[&str], at: usize, dollar: bool, out: &mut Vec<NodeId>) {
    // A wildcard in the first level does not match a `$` topic (spec 4.7.2).
    let wild_ok = !(dollar && at == 0);
    if wild_ok {
        push(out, &level.rest);
    }
    let Some(name) = topic.get(at) else {
        push(out, &level.here);
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
    let mut level = root;
    for name in filter.split('/') {
        if name == "#" {
            level.rest.insert(node);
            return;
        }
        level = level.children.entry(name.into()).or_default();
    }
    level.here.insert(node);
}

fn remove(root: &mut Level, filter: &str, node: NodeId) {
    let names: Vec<&str> = filter.split('/').collect();
    remove_at(root, &names, node);
}

/// Removes below `level`; whether `level` is empty afterwards (and can go).
fn remove_at(level: &mut Level, names: &[&str], node: NodeId) -> bool {
    match names.split_first() {
        None => {
            level.here.remove(&node);
        }
        Some((&"#", _)) => {
            level.rest.remove(&node);
        }
        Some((name, rest)) => {
            if let Some(child) = level.children.get_mut(*name)
                && remove_at(child, rest, node)
            {
                level.children.remove(*name);
            }
        }
    }
    level.is_empty()
}

#[cfg(test)]
mod tests;
