//! Retained messages (spec 3.3.1.3): one per topic, set by a PUBLISH with RETAIN, cleared by an
//! empty payload, handed to new subscriptions whose filter matches. [`RetainStore`] is the seam
//! (a cluster replaces it with a replicated store); [`RetainTree`], the single-node store, keeps
//! them in a trie over topic levels so a wildcard subscription visits only the branches it can
//! match.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    message: Option<Arc<Message>>,
}

/// What became of a retained publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored (new topic or replacement).
    Stored,
    /// The topic's retained message was cleared (empty payload).
    Cleared,
    /// Not stored: `max_retained_messages` reached.
    Full,
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
