//! The subscription index. [`RouteTable`] is the seam: filter to local subscribers and, in a
//! cluster, to the other nodes that have subscribers (a cluster replaces the table with one
//! that knows the remote routes). [`Router`], the single-node table, is a trie over topic
//! levels with `+` and `#` branches, plain subscribers and shared-subscription groups at each
//! node, and matching of a topic name to every subscriber it reaches.
//!
//! Matching walks the trie level by level (cost grows with topic depth, not with the number
//! of subscriptions) under a read lock, so publishers never wait for each other; subscribe and
//! unsubscribe take the write lock briefly.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use starling_proto::{SubscriptionOptions, TopicFilter};

use crate::few::FewMap;
use crate::forward::NodeId;
use crate::message::ShareKey;
use crate::session::Session;

/// One subscriber of a filter.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// The session.
    pub session: Arc<Session>,
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription identifier (v5).
    pub id: Option<u32>,
}

impl Subscriber {
    /// `session`'s subscription as the session remembers it.
    pub fn new(session: &Arc<Session>, sub: &crate::session::Subscription) -> Self {
        Self {
            session: session.clone(),
            options: sub.options,
            id: sub.id,
        }
    }
}

/// A shared-subscription group at one filter: members take turns.
#[derive(Debug)]
struct Group {
    key: Arc<ShareKey>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by level: most nodes have a handful (see [`FewMap`]).
    children: FewMap<Box<[u8]>, Node, std::hash::RandomState>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    subscribers: Vec<Subscriber>,
    /// Shared-subscription groups at this filter, boxed (`None` when there is none): few
    /// nodes have any, and every node would otherwise carry an empty vector.
    #[allow(clippy::box_collection)] // on purpose: see above
    groups: Option<Box<Vec<Group>>>,
}

/// Dropping a node takes its subtree apart with a stack instead of recursion: a chain as deep as
/// a filter may be goes in one removal (see `prune`).
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            // Childless once taken apart, so its own drop goes no deeper.
            node.take_children(&mut stack);
        }
    }
}

impl Node {
    fn take_children(&mut self, into: &mut Vec<Node>) {
        into.extend(self.children.drain_values());
        into.extend(self.plus.take().map(|n| *n));
        into.extend(self.hash.take().map(|n| *n));
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.groups.is_none()
    }
}

/// A match: a plain subscriber, a shared group that must pick one member, or another node.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A plain subscription.
    Plain(&'a Subscriber),
    /// A shared group: the caller picks one member, taking turns with the counter.
    Shared(&'a [Subscriber], &'a Arc<ShareKey>, &'a AtomicUsize),
    /// Another node of a cluster has subscribers for the topic: the message is handed to it
    /// once (see `Forwarder`), and it routes the message to them.
    Remote(NodeId),
    /// Another node of a cluster was picked to deliver the message to one member of a shared
    /// group (its full filter, `$share/{group}/{filter}`): the message is handed to it once,
    /// naming the group, and it delivers to one of its members.
    RemoteGroup(NodeId, &'a Arc<str>),
}

/// Filter to subscribers: what routing a publish asks, and what SUBSCRIBE and UNSUBSCRIBE
/// change. Implementations must let publishers match concurrently and must not call back
/// into the broker while matching.
pub trait RouteTable: Send + Sync + fmt::Debug {
    /// Adds or replaces `sub.session`'s subscription to `filter`. Returns true if it existed.
    fn subscribe(&self, filter: &TopicFilter, sub: Subscriber) -> bool;
    /// Removes `session`'s subscription to `filter`. Returns true if it existed.
    fn unsubscribe(&self, filter: &TopicFilter, session: &Arc<Session>) -> bool;
    /// Hands every subscription matching `topic` to `f` at once. `f` must not subscribe or
    /// unsubscribe (the table may hold a lock while it runs).
    fn route(&self, topic: &[u8], f: &mut dyn FnMut(&[Target<'_>]));
    /// As `route`, but this node's subscriptions only: for a message another node forwarded
    /// (that node matched the other nodes and picked the shared groups' deliveries).
    fn route_here(&self, topic: &[u8], f: &mut dyn FnMut(&[Target<'_>])) {
        self.route(topic, f);
    }
    /// Number of subscriptions (shared ones included).
    fn count(&self) -> usize;
    /// Number of shared subscriptions.
    fn shared_count(&self) -> usize;
}

/// The route table a broker runs on: the single-node [`Router`], built in so that the publish
/// path can inline its walk (a call through the trait object costs some 5 % of the broker's
/// time in the p2p benchmark), or any other [`RouteTable`].
#[derive(Debug)]
pub enum Routes {
    /// The single-node subscription trie.
    Local(Router),
    /// Another implementation (a cluster's, or a test's).
    Custom(Box<dyn RouteTable>),
}

impl Default for Routes {
    fn default() -> Self {
        Self::Local(Router::default())
    }
}

impl Routes {
    /// The table, as the seam.
    pub fn table(&self) -> &dyn RouteTable {
        match self {
            Self::Local(r) => r,
            Self::Custom(t) => &**t,
        }
    }

    /// Hands every subscription matching `topic` to `f` (see [`RouteTable::route`]), without a
    /// dynamic call for the local table.
    #[inline]
    pub fn route(&self, topic: &[u8], mut f: impl FnMut(&[Target<'_>])) {
        match self {
            Self::Local(r) => r.with_matches(topic, f),
            Self::Custom(t) => t.route(topic, &mut f),
        }
    }

    /// This node's subscriptions matching `topic` (see [`RouteTable::route_here`]).
    pub fn route_here(&self, topic: &[u8], mut f: impl FnMut(&[Target<'_>])) {
        match self {
            Self::Local(r) => r.with_matches(topic, f),
            Self::Custom(t) => t.route_here(topic, &mut f),
        }
    }
}

/// The single-node subscription index.
#[derive(Debug, Default)]
pub struct Router {
    root: RwLock<Node>,
    count: AtomicUsize,
    shared_count: AtomicUsize,
}

fn levels(filter: &[u8]) -> impl Iterator<Item = &[u8]> {
    filter.split(|&b| b == b'/')
}

impl RouteTable for Router {
    fn subscribe(&self, filter: &TopicFilter, sub: Subscriber) -> bool {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let mut node = &mut *root;
        for level in levels(filter.match_filter()) {
            node = match level {
                b"+" => node.plus.get_or_insert_with(Box::default),
                b"#" => node.hash.get_or_insert_with(Box::default),
                _ => {
                    match (node.children).get_or_insert_with(level, || level.into(), Node::default)
                    {
                        Some(child) => child,
                        None => return false,
                    }
                }
            };
        }
        let list = match filter.share_group() {
            None => &mut node.subscribers,
            Some(group) => {
                let groups = node.groups.get_or_insert_with(Box::default);
                let pos = groups.iter().position(|g| &*g.key.group == group);
                let idx = match pos {
                    Some(i) => i,
                    None => {
                        groups.push(Group {
                            key: Arc::new(ShareKey {
                                group: group.into(),
                                // Kept for as long as the group: not a slice of a read buffer.
                                filter: filter.detached(),
                            }),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        groups.len() - 1
                    }
                };
                match groups.get_mut(idx) {
                    Some(g) => &mut g.members,
                    None => return false,
                }
            }
        };
        if filter.share_group().is_none() {
            // Plain subscribers are kept in the order of their sessions' addresses, so that
            // the subscribers of one filter come out of a walk already grouped by session
            // (`route_message` then need not sort them).
            match list.binary_search_by_key(&address(&sub.session), |s| address(&s.session)) {
                Ok(i) => {
                    if let Some(existing) = list.get_mut(i) {
                        *existing = sub;
                    }
                    return true;
                }
                Err(i) => {
                    // Most filters have one subscriber (a device's own topic): room for
                    // exactly one, where the first insert would make room for four.
                    if list.is_empty() {
                        list.reserve_exact(1);
                    }
                    list.insert(i, sub);
                }
            }
        } else if let Some(existing) = list
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.session, &sub.session))
        {
            *existing = sub;
            return true;
        } else {
            list.push(sub);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        if filter.share_group().is_some() {
            self.shared_count.fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    fn unsubscribe(&self, filter: &TopicFilter, session: &Arc<Session>) -> bool {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let levels: Vec<&[u8]> = levels(filter.match_filter()).collect();
        let removed = remove_at(&mut root, &levels, filter.share_group(), session);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if filter.share_group().is_some() {
                self.shared_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        removed
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn shared_count(&self) -> usize {
        self.shared_count.load(Ordering::Relaxed)
    }

    fn route(&self, topic: &[u8], f: &mut dyn FnMut(&[Target<'_>])) {
        self.with_matches(topic, |targets| f(targets));
    }
}

impl Router {
    /// Calls `f` for every subscription matching `topic`. Runs under the read lock: `f` must
    /// not subscribe or unsubscribe.
    pub fn for_each_match(&self, topic: &[u8], mut f: impl FnMut(Target<'_>)) {
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        walk(&root, topic, &mut f);
    }

    /// Collects every subscription matching `topic` and hands them to `f` at once, still under
    /// the read lock (so `f` can deliver without cloning each session handle). `f` must not
    /// subscribe or unsubscribe.
    pub fn with_matches<R>(&self, topic: &[u8], f: impl FnOnce(&[Target<'_>]) -> R) -> R {
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        let mut targets = Vec::new();
        walk(&root, topic, &mut |t| targets.push(t));
        f(&targets)
    }
}

/// Walks the trie level by level. `nodes` holds the nodes reached, level after level, in one
/// vector (`start..` is the current level), so a walk costs one allocation at most.
fn walk<'a>(root: &'a Node, topic: &[u8], f: &mut impl FnMut(Target<'a>)) {
    let dollar = topic.first() == Some(&b'$');
    let mut nodes: Vec<&'a Node> = Vec::with_capacity(8);
    nodes.push(root);
    let mut start = 0;
    for (depth, level) in levels(topic).enumerate() {
        let end = nodes.len();
        if start == end {
            return;
        }
        let wild_ok = !(depth == 0 && dollar);
        for k in start..end {
            let Some(&node) = nodes.get(k) else { break };
            if wild_ok {
                if let Some(h) = &node.hash {
                    emit(h, f);
                }
                if let Some(p) = &node.plus {
                    nodes.push(p);
                }
            }
            if let Some(c) = node.children.get(level) {
                nodes.push(c);
            }
        }
        start = end;
    }
    for &node in nodes.get(start..).unwrap_or_default() {
        emit(node, f);
        // `a/#` also matches `a` (the parent level).
        if let Some(h) = &node.hash {
            emit(h, f);
        }
    }
}

fn emit<'a>(node: &'a Node, f: &mut impl FnMut(Target<'a>)) {
    for s in &node.subscribers {
        f(Target::Plain(s));
    }
    for g in node.groups.iter().flat_map(|g| g.iter()) {
        f(Target::Shared(&g.members, &g.key, &g.next));
    }
}

/// Removes a subscriber and prunes empty nodes, iteratively (no recursion on filter depth).
fn remove_at(
    root: &mut Node,
    levels: &[&[u8]],
    group: Option<&str>,
    session: &Arc<Session>,
) -> bool {
    // Walk down; remove; then prune from the top by re-walking, deleting the deepest empty
    // node each pass.
    let Some(node) = descend(root, levels) else {
        return false;
    };
    let removed = match group {
        None => match node
            .subscribers
            .binary_search_by_key(&address(session), |s| address(&s.session))
        {
            Ok(i) => {
                // `remove`, not `swap_remove`: the order is kept (see `subscribe`).
                node.subscribers.remove(i);
                if node.subscribers.is_empty() {
                    // A node kept for its children keeps no room for subscribers.
                    node.subscribers = Vec::new();
                }
                true
            }
            Err(_) => false,
        },
        Some(g) => {
            let Some(groups) = node.groups.as_mut() else {
                return false;
            };
            let Some(i) = groups.iter().position(|x| &*x.key.group == g) else {
                return false;
            };
            let removed = groups
                .get_mut(i)
                .is_some_and(|grp| remove_from(&mut grp.members, session));
            if groups.get(i).is_some_and(|grp| grp.members.is_empty()) {
                groups.swap_remove(i);
            }
            if groups.is_empty() {
                node.groups = None;
            }
            removed
        }
    };
    if removed {
        prune(root, levels);
    }
    removed
}

/// The node a filter's `levels` lead to, if it exists (iterative, no recursion on depth).
fn descend<'a>(root: &'a mut Node, levels: &[&[u8]]) -> Option<&'a mut Node> {
    let mut node = root;
    for level in levels {
        node = match *level {
            b"+" => node.plus.as_deref_mut()?,
            b"#" => node.hash.as_deref_mut()?,
            other => node.children.get_mut(other)?,
        };
    }
    Some(node)
}

/// Where a session is in memory: what plain subscribers are ordered by.
fn address(session: &Arc<Session>) -> usize {
    Arc::as_ptr(session) as usize
}

fn remove_from(list: &mut Vec<Subscriber>, session: &Arc<Session>) -> bool {
    match list.iter().position(|s| Arc::ptr_eq(&s.session, session)) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Removes the nodes along `levels` that are empty, in one walk down and one removal: below
/// the deepest node on the path that holds something besides the path itself, every node is
/// empty once the leaf is, so removing that node's child drops the whole chain. Linear in the
/// filter's depth.
fn prune(root: &mut Node, levels: &[&[u8]]) {
    let mut keep = 0;
    let mut node: &Node = root;
    for (depth, level) in levels.iter().enumerate() {
        if holds_more_than(node, level) {
            keep = depth;
        }
        let Some(next) = child(node, level) else {
            return;
        };
        node = next;
    }
    if !node.is_empty() {
        return;
    }
    let (Some(path), Some(level)) = (levels.get(..keep), levels.get(keep)) else {
        return;
    };
    let Some(parent) = descend(root, path) else {
        return;
    };
    match *level {
        b"+" => parent.plus = None,
        b"#" => parent.hash = None,
        other => {
            parent.children.remove(other);
        }
    }
}

/// The child of `node` for one filter level.
fn child<'a>(node: &'a Node, level: &[u8]) -> Option<&'a Node> {
    match level {
        b"+" => node.plus.as_deref(),
        b"#" => node.hash.as_deref(),
        other => node.children.get(other),
    }
}

/// Whether `node` holds anything besides its child for `level`.
fn holds_more_than(node: &Node, level: &[u8]) -> bool {
    let children = node.children.len() - usize::from(!matches!(level, b"+" | b"#"));
    !node.subscribers.is_empty()
        || node.groups.is_some()
        || children > 0
        || (node.plus.is_some() && level != b"+")
        || (node.hash.is_some() && level != b"#")
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::ProtocolVersion;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), ProtocolVersion::V5))
    }

    /// A million subscriptions to topics of their own are a million nodes: each costs its
    /// size in its parent's map, so it is kept small (children and groups out of line until
    /// there are some), and a node with one child or one subscriber holds room for one.
    #[test]
    fn a_node_is_small_and_holds_room_for_what_it_has() {
        assert!(size_of::<Node>() <= 72, "{}", size_of::<Node>());
        let r = Router::default();
        let s = session("a");
        let sub = Subscriber {
            session: s.clone(),
            options: SubscriptionOptions::default(),
            id: None,
        };
        r.subscribe(&TopicFilter::try_from_str("dev/1/cmd").unwrap(), sub);
        let root = r.root.read().unwrap();
        let dev = root.children.get(b"dev".as_slice()).unwrap();
        let one = dev.children.get(b"1".as_slice()).unwrap();
        assert!(matches!(&one.children, FewMap::Few(v) if v.capacity() == 1));
        let cmd = one.children.get(b"cmd".as_slice()).unwrap();
        assert_eq!(cmd.subscribers.capacity(), 1);
        assert!(cmd.groups.is_none() && dev.groups.is_none());
    }

    fn sub(session: &Arc<Session>, id: Option<u32>) -> Subscriber {
        Subscriber {
            session: session.clone(),
            options: Default::default(),
            id,
        }
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from_str(s).unwrap()
    }

    fn matches(r: &Router, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        r.for_each_match(topic.as_bytes(), |t| match t {
            Target::Plain(s) => out.push(s.session.client_id().to_string()),
            Target::Shared(m, k, _) => out.push(format!("{}:{}", k.group, m.len())),
            Target::Remote(n) => out.push(format!("node {n}")),
            Target::RemoteGroup(n, g) => out.push(format!("node {n} for {g}")),
        });
        out.sort();
        out
    }

    /// One filter's plain subscribers come out of a walk ordered by session, through
    /// subscribes, re-subscribes and unsubscribes in any order.
    #[test]
    fn plain_subscribers_stay_ordered_by_session() {
        let r = Router::default();
        let sessions: Vec<_> = (0..40).map(|i| session(&format!("s{i}"))).collect();
        let f = filter("a/b");
        let order = |r: &Router| {
            let mut seen = Vec::new();
            r.for_each_match(b"a/b", |t| {
                if let Target::Plain(s) = t {
                    seen.push((address(&s.session), s.id));
                }
            });
            seen
        };
        // Subscribed in a scrambled order, some twice (the second replaces the first).
        for i in (0..40).map(|i| (i * 17) % 40) {
            assert!(!r.subscribe(&f, sub(&sessions[i], None)), "new");
        }
        for i in [3, 31, 8] {
            assert!(r.subscribe(&f, sub(&sessions[i], Some(7))), "replaced");
        }
        for i in [5, 0, 39, 22] {
            assert!(r.unsubscribe(&f, &sessions[i]));
            assert!(!r.unsubscribe(&f, &sessions[i]), "removed once");
        }
        let seen = order(&r);
        assert_eq!(seen.len(), 36);
        assert!(seen.is_sorted_by_key(|(a, _)| *a), "{seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0].0 != w[1].0),
            "one entry per session"
        );
        let replaced = seen.iter().filter(|(_, id)| *id == Some(7)).count();
        assert_eq!(replaced, 3);
    }

    #[test]
    fn wildcards_and_dollar() {
        let r = Router::default();
        let (a, b, c, d, e) = (
            session("a"),
            session("b"),
            session("c"),
            session("d"),
            session("e"),
        );
        r.subscribe(&filter("x/y"), sub(&a, None));
        r.subscribe(&filter("x/+"), sub(&b, None));
        r.subscribe(&filter("x/#"), sub(&c, None));
        r.subscribe(&filter("#"), sub(&d, None));
        r.subscribe(&filter("$SYS/#"), sub(&e, None));
        assert_eq!(matches(&r, "x/y"), ["a", "b", "c", "d"]);
        assert_eq!(matches(&r, "x"), ["c", "d"]);
        assert_eq!(matches(&r, "x/y/z"), ["c", "d"]);
        assert_eq!(matches(&r, "$SYS/uptime"), ["e"]);
        assert_eq!(r.count(), 5);
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_prunes() {
        let r = Router::default();
        let a = session("a");
        assert!(!r.subscribe(&filter("x/+/z"), sub(&a, None)));
        assert!(r.subscribe(&filter("x/+/z"), sub(&a, Some(7))));
        assert_eq!(r.count(), 1);
        let mut ids = Vec::new();
        r.for_each_match(b"x/y/z", |t| {
            if let Target::Plain(s) = t {
                ids.push(s.id);
            }
        });
        assert_eq!(ids, [Some(7)]);
        assert!(r.unsubscribe(&filter("x/+/z"), &a));
        assert!(!r.unsubscribe(&filter("x/+/z"), &a));
        assert_eq!(r.count(), 0);
        assert!(r.root.read().unwrap().is_empty());
    }

    #[test]
    fn shared_groups() {
        let r = Router::default();
        let (a, b) = (session("a"), session("b"));
        r.subscribe(&filter("$share/g/t/#"), sub(&a, None));
        r.subscribe(&filter("$share/g/t/#"), sub(&b, None));
        r.subscribe(&filter("$share/h/t/#"), sub(&b, None));
        assert_eq!(matches(&r, "t/1"), ["g:2", "h:1"]);
        assert_eq!(r.shared_count(), 3);
        r.unsubscribe(&filter("$share/g/t/#"), &a);
        assert_eq!(matches(&r, "t/1"), ["g:1", "h:1"]);
    }

    #[test]
    fn pruning_keeps_what_other_subscriptions_need() {
        let r = Router::default();
        let (a, b) = (session("a"), session("b"));
        r.subscribe(&filter("x/y/z/w"), sub(&a, None));
        r.subscribe(&filter("x/y"), sub(&b, None));
        r.subscribe(&filter("x/+/q"), sub(&b, None));
        assert!(r.unsubscribe(&filter("x/y/z/w"), &a));
        assert_eq!(matches(&r, "x/y"), ["b"]);
        assert_eq!(matches(&r, "x/k/q"), ["b"]);
        assert!(r.unsubscribe(&filter("x/+/q"), &b));
        assert!(r.unsubscribe(&filter("x/y"), &b));
        assert!(r.root.read().unwrap().is_empty(), "everything pruned");
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        let r = Router::default();
        let a = session("a");
        let deep = "a/".repeat(5000) + "b";
        r.subscribe(&filter(&deep), sub(&a, None));
        assert_eq!(matches(&r, &deep), ["a"]);
        assert!(r.unsubscribe(&filter(&deep), &a));
    }
}
