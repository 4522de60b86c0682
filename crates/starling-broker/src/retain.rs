//! Retained messages (spec 3.3.1.3): one per topic, set by a PUBLISH with RETAIN, cleared by an
//! empty payload, handed to new subscriptions whose filter matches. [`RetainStore`] is the seam
//! (a cluster replaces it with a replicated store, whose writes commit later: a
//! [`Replication`] the publisher's acknowledgement waits for); [`RetainTree`], the
//! single-node store, keeps them in a trie over topic levels so a wildcard subscription
//! visits only the branches it can match.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::message::Message;
use crate::wake::Waker;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    message: Option<Arc<Message>>,
}

/// What became of a retained publish.
#[derive(Clone, Debug)]
pub enum RetainOutcome {
    /// Stored (new topic or replacement).
    Stored,
    /// The topic's retained message was cleared (empty payload).
    Cleared,
    /// Not stored: `max_retained_messages` reached.
    Full,
    /// Handed to a replicated store that decides later (a cluster commits it through its
    /// log): the publisher's acknowledgement waits for the decision.
    Pending(Arc<Replication>),
}

impl PartialEq for RetainOutcome {
    /// Pending writes are equal only if they are the same write.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Pending(a), Self::Pending(b)) => Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl RetainOutcome {
    /// Whether it was refused for the store's bound.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full)
    }
}

/// How a replicated write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// Committed: every node serves it.
    Committed,
    /// Refused by the replicated store's bounds (count or size).
    Full,
    /// Not committed (no majority within the cluster's timeout, too many under way): the
    /// publisher must not be told it was kept.
    Failed,
}

const UNDECIDED: u8 = 0;

/// A retained write under way in a replicated store, decided once by whoever commits it; the
/// connection that waits for it registers its waker ([`Replication::notify`]).
#[derive(Debug, Default)]
pub struct Replication {
    state: AtomicU8,
    waiter: Mutex<Option<Waker>>,
}

impl Replication {
    /// An undecided write.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Decides it (once; a later decision is ignored) and wakes whoever waits.
    pub fn decide(&self, how: Replicated) {
        let code = match how {
            Replicated::Committed => 1,
            Replicated::Full => 2,
            Replicated::Failed => 3,
        };
        let first = self
            .state
            .compare_exchange(UNDECIDED, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        let waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if first && let Some(w) = waiter {
            w.wake();
        }
    }

    /// How it ended; `None` while undecided.
    pub fn decided(&self) -> Option<Replicated> {
        match self.state.load(Ordering::Acquire) {
            1 => Some(Replicated::Committed),
            2 => Some(Replicated::Full),
            3 => Some(Replicated::Failed),
            _ => None,
        }
    }

    /// Wakes `waker` once it is decided; false if it is decided already (nothing registered).
    pub fn notify(&self, waker: &Waker) -> bool {
        let mut w = self.waiter.lock().unwrap_or_else(|p| p.into_inner());
        if self.decided().is_some() {
            return false;
        }
        *w = Some(waker.clone());
        true
    }
}

/// Where retained messages live: at most one per topic, bounded in number.
pub trait RetainStore: Send + Sync + fmt::Debug {
    /// Sets, replaces or clears (empty payload) the retained message of `msg.topic`. A new
    /// topic is refused once `max` messages are stored.
    fn set(&self, msg: Arc<Message>, max: usize) -> RetainOutcome;
    /// Every unexpired retained message matching `filter` (an unshared filter).
    fn matching(&self, filter: &[u8], now: Instant) -> Vec<Arc<Message>>;
    /// Number of retained messages.
    fn count(&self) -> usize;
    /// Payload bytes of the retained messages.
    fn bytes(&self) -> usize;
    /// Whether the retained messages live in a replicated store (a cluster's) rather than in
    /// this node's own store: the broker then neither writes them to its store nor restores
    /// them from it (the replica is rebuilt from the cluster's log).
    fn replicated(&self) -> bool {
        false
    }
}

/// The single-node retained-message store: a trie over topic levels.
#[derive(Debug, Default)]
pub struct RetainTree {
    root: RwLock<Node>,
    count: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
}

impl RetainStore for RetainTree {
    fn set(&self, msg: Arc<Message>, max: usize) -> RetainOutcome {
        use std::sync::atomic::Ordering::Relaxed;
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        if msg.payload.is_empty() {
            // Walk without creating nodes; prune is skipped (empty nodes cost little and are
            // reused when the topic is retained again).
            let mut node = &mut *root;
            for level in msg.topic.as_bytes().split(|&b| b == b'/') {
                match node.children.get_mut(level) {
                    Some(c) => node = c,
                    None => return RetainOutcome::Cleared,
                }
            }
            if let Some(old) = node.message.take() {
                self.count.fetch_sub(1, Relaxed);
                self.bytes.fetch_sub(old.payload.len(), Relaxed);
            }
            return RetainOutcome::Cleared;
        }
        let is_new = {
            let mut node = &*root;
            let mut found = true;
            for level in msg.topic.as_bytes().split(|&b| b == b'/') {
                match node.children.get(level) {
                    Some(c) => node = c,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            !(found && node.message.is_some())
        };
        if is_new && self.count.load(Relaxed) >= max {
            return RetainOutcome::Full;
        }
        let mut node = &mut *root;
        for level in msg.topic.as_bytes().split(|&b| b == b'/') {
            node = node.children.entry(level.into()).or_default();
        }
        self.bytes.fetch_add(msg.payload.len(), Relaxed);
        if let Some(old) = node.message.replace(msg) {
            self.bytes.fetch_sub(old.payload.len(), Relaxed);
        }
        if is_new {
            self.count.fetch_add(1, Relaxed);
        }
        RetainOutcome::Stored
    }

    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// In no particular order. Iterative: a deep tree or filter cannot exhaust the stack.
    fn matching(&self, filter: &[u8], now: Instant) -> Vec<Arc<Message>> {
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        let levels: Vec<&[u8]> = filter.split(|&b| b == b'/').collect();
        let mut out = Vec::new();
        // (node, index of the next filter level to match, whether node is the root)
        let mut stack: Vec<(&Node, usize)> = vec![(&root, 0)];
        while let Some((node, i)) = stack.pop() {
            let at_root = i == 0;
            match levels.get(i) {
                None => {
                    if let Some(m) = &node.message {
                        out.push(m.clone());
                    }
                }
                Some(&b"#") => {
                    // `#` matches this level's parent and everything below.
                    if !at_root && let Some(m) = &node.message {
                        out.push(m.clone());
                    }
                    let mut sub: Vec<&Node> = node
                        .children
                        .iter()
                        .filter(|(k, _)| !(at_root && k.first() == Some(&b'$')))
                        .map(|(_, n)| n)
                        .collect();
                    while let Some(n) = sub.pop() {
                        if let Some(m) = &n.message {
                            out.push(m.clone());
                        }
                        sub.extend(n.children.values());
                    }
                }
                Some(&b"+") => {
                    for (k, child) in &node.children {
                        if at_root && k.first() == Some(&b'$') {
                            continue;
                        }
                        stack.push((child, i + 1));
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(*level) {
                        stack.push((child, i + 1));
                    }
                }
            }
        }
        out.retain(|m| !m.is_expired(now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use starling_proto::TopicName;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::internal(
            TopicName::try_from_str(topic).unwrap(),
            Bytes::copy_from_slice(payload.as_bytes()),
            true,
        ))
    }

    fn topics(store: &RetainTree, filter: &str) -> Vec<String> {
        let mut v: Vec<String> = store
            .matching(filter.as_bytes(), Instant::now())
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn set_replace_clear_and_match() {
        let s = RetainTree::default();
        for t in ["a", "a/b", "a/b/c", "a/x/c", "$SYS/up", "/lead"] {
            assert_eq!(s.set(msg(t, "1"), 100), RetainOutcome::Stored);
        }
        assert_eq!(s.count(), 6);
        assert_eq!(s.set(msg("a/b", "2"), 100), RetainOutcome::Stored);
        assert_eq!(s.count(), 6);
        assert_eq!(topics(&s, "#"), ["/lead", "a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(topics(&s, "a/+/c"), ["a/b/c", "a/x/c"]);
        assert_eq!(topics(&s, "+"), ["a"]);
        assert_eq!(topics(&s, "+/lead"), ["/lead"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(topics(&s, "a/b"), ["a/b"]);
        assert_eq!(s.set(msg("a/b", ""), 100), RetainOutcome::Cleared);
        assert_eq!(topics(&s, "a/b"), Vec::<String>::new());
        assert_eq!(s.count(), 5);
    }

    #[test]
    fn bounded() {
        let s = RetainTree::default();
        assert_eq!(s.set(msg("a", "1"), 1), RetainOutcome::Stored);
        assert_eq!(s.set(msg("b", "1"), 1), RetainOutcome::Full);
        assert_eq!(s.set(msg("a", "2"), 1), RetainOutcome::Stored);
        assert_eq!(s.count(), 1);
    }
}
