//! The ACL rules compiled into tries, for the per-message checks (`Publish` and `Read`).
//!
//! Each rule list (the anonymous rules, each user section, the patterns) becomes one [`Trie`]
//! at parse time. A trie node has its literal children, and optionally a `+` child and, in the
//! patterns trie, a `%c` and a `%u` child; it records the access of the rules that end exactly
//! there and of the rules that end with a `#` just below it. Checking a topic name walks the
//! topic text once along every matching path, without allocating, and ORs the access found,
//! with the same semantics as the linear rule walk in the parent module (which stays the
//! reference, and the path for `Subscribe`):
//!
//! - a `#` matches zero or more remaining levels (`a/#` matches `a`);
//! - `%c` and `%u` match the client id or username as literal text spanning as many levels
//!   as it has (`%u` never matches an anonymous client);
//! - a `+` or `#` that is the rule's first level does not match a topic starting with `$`.
//!
//! Nodes live in one vector per trie and refer to their children by index, so building,
//! cloning, comparing and dropping a trie never recurse, and neither does a lookup: pending
//! paths go on a small fixed-size stack (spilling to the heap only for pathological rule sets).

use std::collections::HashMap;
use std::ops::{BitOr, BitOrAssign};

use super::{Access, Level, Rule};

/// The access granted or refused by the rules matching a topic, OR-ed together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Flags(u8);

impl Flags {
    pub(super) const NONE: Self = Self(0);
    pub(super) const READ: Self = Self(1);
    pub(super) const WRITE: Self = Self(2);
    pub(super) const DENY: Self = Self(4);

    fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether a deny rule matched.
    pub(super) fn denies(self) -> bool {
        self.contains(Self::DENY)
    }

    /// Whether these flags give `need` (read or write): no deny, and a rule granting it.
    pub(super) fn allows(self, need: Self) -> bool {
        !self.denies() && self.contains(need)
    }
}

impl From<Access> for Flags {
    fn from(access: Access) -> Self {
        match access {
            Access::Read => Self::READ,
            Access::Write => Self::WRITE,
            Access::ReadWrite => Self::READ | Self::WRITE,
            Access::Deny => Self::DENY,
        }
    }
}

impl BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// Index of a node in [`Trie::nodes`].
type NodeId = usize;

/// The root is always the first node, and is nobody's child.
const ROOT: NodeId = 0;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    /// Literal children, sorted by level text.
    literals: Vec<(Box<str>, NodeId)>,
    plus: Option<NodeId>,
    client_id: Option<NodeId>,
    username: Option<NodeId>,
    /// Rules ending exactly at this node.
    end: Flags,
    /// Rules ending with a `#` level right below this node.
    hash: Flags,
}

impl Node {
    fn literal(&self, level: &str) -> Option<NodeId> {
        self.literals
            .binary_search_by(|(k, _)| (**k).cmp(level))
            .ok()
            .and_then(|i| self.literals.get(i))
            .map(|&(_, id)| id)
    }
}

/// One rule list compiled into a trie. Empty (no nodes at all) when there are no rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Trie {
    nodes: Vec<Node>,
}

/// One path still to follow: a node, and the topic levels left to match against it.
#[derive(Clone, Copy)]
struct Frame<'t> {
    node: NodeId,
    /// `None`: no levels left; `Some("")`: one empty level left.
    rest: Option<&'t str>,
}

/// How many pending paths a lookup keeps on the stack before spilling to the heap.
const INLINE_FRAMES: usize = 16;

/// The paths a lookup has still to follow; the order they are followed in does not matter.
struct Pending<'t> {
    inline: [Frame<'t>; INLINE_FRAMES],
    len: usize,
    spill: Vec<Frame<'t>>,
}

impl<'t> Pending<'t> {
    fn new(first: Frame<'t>) -> Self {
        Self {
            inline: [first; INLINE_FRAMES],
            len: 1,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, node: NodeId, rest: Option<&'t str>) {
        let frame = Frame { node, rest };
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = frame;
                self.len += 1;
            }
            None => self.spill.push(frame),
        }
    }

    fn pop(&mut self) -> Option<Frame<'t>> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get(self.len).copied()
    }
}

/// If `rest` (one or more levels) starts with the levels of `value`, the levels after them.
/// `Some(None)` when `value` takes all of `rest`.
fn strip_levels<'t>(rest: &'t str, value: &str) -> Option<Option<&'t str>> {
    let after = rest.strip_prefix(value)?;
    if after.is_empty() {
        Some(None)
    } else {
        after.strip_prefix('/').map(Some)
    }
}

impl Trie {
    /// Compiles `rules`, in order.
    pub(super) fn build(rules: &[Rule]) -> Self {
        let mut trie = Self::default();
        for rule in rules {
            trie.insert(rule);
        }
        trie
    }

    fn insert(&mut self, rule: &Rule) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let flags = Flags::from(rule.access);
        let mut at = ROOT;
        for level in &rule.levels {
            let next = match level {
                Level::Hash => {
                    // `#` is always the last level (the parser guarantees it).
                    if let Some(node) = self.nodes.get_mut(at) {
                        node.hash |= flags;
                    }
                    return;
                }
                Level::Literal(text) => self.literal_child(at, text),
                Level::Plus => self.child(at, |n| &mut n.plus),
                Level::ClientId => self.child(at, |n| &mut n.client_id),
                Level::Username => self.child(at, |n| &mut n.username),
            };
            at = next;
        }
        if let Some(node) = self.nodes.get_mut(at) {
            node.end |= flags;
        }
    }

    /// The child of `at` in the slot `slot` picks, created if missing.
    fn child(&mut self, at: NodeId, slot: fn(&mut Node) -> &mut Option<NodeId>) -> NodeId {
        let fresh = self.nodes.len();
        let Some(node) = self.nodes.get_mut(at) else {
            return fresh;
        };
        let id = *slot(node).get_or_insert(fresh);
        if id == fresh {
            self.nodes.push(Node::default());
        }
        id
    }

    /// The literal child `text` of `at`, created if missing.
    fn literal_child(&mut self, at: NodeId, text: &str) -> NodeId {
        let fresh = self.nodes.len();
        let Some(node) = self.nodes.get_mut(at) else {
            return fresh;
        };
        match node.literals.binary_search_by(|(k, _)| (**k).cmp(text)) {
            Ok(i) => node.literals.get(i).map_or(fresh, |&(_, id)| id),
            Err(i) => {
                node.literals.insert(i, (text.into(), fresh));
                self.nodes.push(Node::default());
                fresh
            }
        }
    }

    /// The access the rules give on `topic` (a non-empty topic name: `+` and `#` in it are
    /// plain text) to the client `client_id` with `username`. Stops early at a deny.
    pub(super) fn lookup(&self, topic: &str, client_id: &str, username: Option<&str>) -> Flags {
        if self.nodes.is_empty() {
            return Flags::NONE;
        }
        // A wildcard that is the rule's first level does not match a `$` topic; at the root
        // the next level is the topic's first.
        let dollar = topic.starts_with('$');
        let mut acc = Flags::NONE;
        let mut pending = Pending::new(Frame {
            node: ROOT,
            rest: Some(topic),
        });
        while let Some(Frame { node: id, rest }) = pending.pop() {
            let Some(node) = self.nodes.get(id) else {
                continue;
            };
            let wild = !(dollar && id == ROOT);
            if wild {
                acc |= node.hash;
            }
            let Some(rest) = rest else {
                acc |= node.end;
                if acc.denies() {
                    break;
                }
                continue;
            };
            if acc.denies() {
                break;
            }
            let (level, after) = match rest.split_once('/') {
                Some((level, after)) => (level, Some(after)),
                None => (rest, None),
            };
            if let Some(child) = node.literal(level) {
                pending.push(child, after);
            }
            if let Some(child) = node.plus
                && wild
            {
                pending.push(child, after);
            }
            if let Some(child) = node.client_id
                && let Some(after) = strip_levels(rest, client_id)
            {
                pending.push(child, after);
            }
            if let Some(child) = node.username
                && let Some(name) = username
                && let Some(after) = strip_levels(rest, name)
            {
                pending.push(child, after);
            }
        }
        acc
    }
}

/// Every rule list of an ACL file, compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Tries {
    anonymous: Trie,
    users: HashMap<String, Trie>,
    patterns: Trie,
}

impl Tries {
    pub(super) fn build(
        anonymous: &[Rule],
        users: &HashMap<String, Vec<Rule>>,
        patterns: &[Rule],
    ) -> Self {
        Self {
            anonymous: Trie::build(anonymous),
            users: users
                .iter()
                .map(|(name, rules)| (name.clone(), Trie::build(rules)))
                .collect(),
            patterns: Trie::build(patterns),
        }
    }

    /// The access a client has on a non-empty topic name: its own rules (its user section's,
    /// none for an unknown user, or the anonymous ones), then the patterns.
    pub(super) fn lookup(&self, topic: &str, client_id: &str, username: Option<&str>) -> Flags {
        let own = match username {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        };
        let flags = own.map_or(Flags::NONE, |t| t.lookup(topic, client_id, username));
        if flags.denies() {
            return flags;
        }
        flags | self.patterns.lookup(topic, client_id, username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Client;
    use crate::acl::{AclFile, Check};

    fn client<'a>(id: &'a str, username: Option<&'a str>) -> Client<'a> {
        Client {
            client_id: id,
            username,
        }
    }

    /// `check` through the tries, asserting that the linear walk agrees.
    fn check(acl: &AclFile, c: &Client<'_>, what: Check<'_>) -> bool {
        let fast = acl.check(c, what);
        assert_eq!(fast, acl.check_linear(c, what), "{what:?} by {c:?}");
        fast
    }

    fn read(acl: &AclFile, c: &Client<'_>, topic: &str) -> bool {
        check(acl, c, Check::Read(topic))
    }

    fn publish(acl: &AclFile, c: &Client<'_>, topic: &str) -> bool {
        check(acl, c, Check::Publish(topic))
    }

    #[test]
    fn multi_level_client_ids_and_usernames() {
        let acl = AclFile::parse(
            "pattern read devices/%c/#\npattern write out/%c\npattern read u/%u/x\n",
        )
        .unwrap();
        let ab = client("a/b", Some("a/b"));
        for ok in ["devices/a/b", "devices/a/b/x", "devices/a/b/", "u/a/b/x"] {
            assert!(read(&acl, &ab, ok), "{ok}");
        }
        for no in [
            "devices/a",
            "devices/a/bc",
            "devices/a/+",
            "devices/+/b",
            "u/a/x",
        ] {
            assert!(!read(&acl, &ab, no), "{no}");
        }
        assert!(publish(&acl, &ab, "out/a/b"));
        assert!(!publish(&acl, &ab, "out/a/b/c"));
        assert!(!publish(&acl, &ab, "out/a"));
        // A trailing slash is one more, empty, level; an empty id is one empty level.
        let trailing = client("a/", None);
        assert!(publish(&acl, &trailing, "out/a/"));
        assert!(!publish(&acl, &trailing, "out/a"));
        let empty = client("", None);
        assert!(publish(&acl, &empty, "out/"));
        assert!(!publish(&acl, &empty, "out"));
        assert!(!publish(&acl, &empty, "out/x"));
        // Wildcards in an id are text.
        let plus = client("+", None);
        assert!(publish(&acl, &plus, "out/+"));
        assert!(!publish(&acl, &plus, "out/x"));
        // %u never matches an anonymous client, but an empty username is a level.
        assert!(!read(&acl, &client("c", None), "u//x"));
        assert!(read(&acl, &client("c", Some("")), "u//x"));
    }

    #[test]
    fn hash_matches_the_parent_level() {
        let acl =
            AclFile::parse("topic read a/#\ntopic read x/+/#\nuser u\ntopic write #\n").unwrap();
        let anon = client("c", None);
        for ok in ["a", "a/", "a/b/c", "x/y", "x/", "x/y/z"] {
            assert!(read(&acl, &anon, ok), "{ok}");
        }
        for no in ["ab", "b", "x", "/a"] {
            assert!(!read(&acl, &anon, no), "{no}");
        }
        let u = client("c", Some("u"));
        for ok in ["a", "/", "//", "a/b/c"] {
            assert!(publish(&acl, &u, ok), "{ok}");
        }
        assert!(!publish(&acl, &u, ""), "an empty topic is refused");
        assert!(!read(&acl, &anon, ""));
    }

    #[test]
    fn leading_wildcards_skip_dollar_topics() {
        let acl = AclFile::parse(
            "topic read #\ntopic read +/y\ntopic write $x/#\ntopic read a/+\n\
             pattern read %c/#\npattern read +/%c\n",
        )
        .unwrap();
        let c = client("c", None);
        assert!(!read(&acl, &c, "$x/y"));
        assert!(!read(&acl, &c, "$x"));
        assert!(publish(&acl, &c, "$x"));
        assert!(publish(&acl, &c, "$x/z"));
        assert!(!publish(&acl, &c, "$y"));
        assert!(read(&acl, &c, "a/$x"), "only the first level is special");
        assert!(read(&acl, &c, "y/y"));
        assert!(!read(&acl, &c, "$"));
        // A pattern starting with %c is a literal rule once substituted.
        let d = client("$d", None);
        assert!(read(&acl, &d, "$d/q"));
        assert!(read(&acl, &d, "$d"));
        assert!(!read(&acl, &d, "$e/$d"));
        assert!(read(&acl, &d, "e/$d"));
    }

    #[test]
    fn rules_ending_at_one_node_combine() {
        let acl = AclFile::parse(
            "topic read a/b\ntopic write a/b\ntopic read c/#\ntopic write c/#\n\
             topic read d\ntopic deny d\ntopic read d\n",
        )
        .unwrap();
        let both = Flags::READ | Flags::WRITE;
        assert_eq!(acl.tries.anonymous.lookup("a/b", "c", None), both);
        assert_eq!(acl.tries.anonymous.lookup("c/x", "c", None), both);
        assert_eq!(acl.tries.anonymous.lookup("c", "c", None), both);
        assert_eq!(acl.tries.anonymous.lookup("a", "c", None), Flags::NONE);
        assert!(acl.tries.anonymous.lookup("d", "c", None).denies());
        let c = client("c", None);
        assert!(read(&acl, &c, "a/b") && publish(&acl, &c, "a/b"));
        assert!(read(&acl, &c, "c/x/y") && publish(&acl, &c, "c"));
        assert!(!read(&acl, &c, "d") && !publish(&acl, &c, "d"));
    }

    #[test]
    fn deny_wins_across_own_rules_and_patterns() {
        let acl = AclFile::parse(
            "topic readwrite p/#\ntopic deny p/anon\n\
             user alice\ntopic readwrite a/#\ntopic deny p/secret\n\
             pattern deny a/%c\npattern read p/#\n",
        )
        .unwrap();
        let alice = client("x", Some("alice"));
        assert!(
            !publish(&acl, &alice, "a/x"),
            "a pattern's deny beats the user's grant"
        );
        assert!(publish(&acl, &alice, "a/y"));
        assert!(
            !read(&acl, &alice, "p/secret"),
            "the user's deny beats a pattern's grant"
        );
        assert!(read(&acl, &alice, "p/other"));
        assert!(!publish(&acl, &alice, "p/other"));
        let anon = client("x", None);
        assert!(!read(&acl, &anon, "p/anon"));
        assert!(publish(&acl, &anon, "p/other"));
        // An unknown user has only the patterns.
        let zed = client("x", Some("zed"));
        assert!(read(&acl, &zed, "p/anon") && !publish(&acl, &zed, "p/anon"));
        assert!(!publish(&acl, &zed, "a/y"));
    }

    #[test]
    fn wildcards_in_topic_names_are_text() {
        let acl = AclFile::parse("topic read a/+\ntopic read b/c\n").unwrap();
        let c = client("c", None);
        assert!(read(&acl, &c, "a/+"));
        assert!(read(&acl, &c, "a/#"));
        assert!(!read(&acl, &c, "b/+"));
        assert!(!read(&acl, &c, "b/#"));
        assert!(!read(&acl, &c, "+/c"));
    }

    #[test]
    fn deep_rules_do_not_recurse() {
        // Two 20 000-level rules that branch at every level: a recursive walk (or a recursive
        // drop of nested boxes) would need a frame per level.
        let depth = 20_000;
        let lits = vec!["a"; depth].join("/");
        let pluses = vec!["+"; depth].join("/");
        let acl = AclFile::parse(&format!("topic read {lits}\ntopic write {pluses}\n")).unwrap();
        let c = client("c", None);
        assert!(read(&acl, &c, &lits) && publish(&acl, &c, &lits));
        assert!(!read(&acl, &c, &format!("{lits}/a")));
        let copy = acl.clone();
        assert_eq!(copy, acl);
        drop(copy);
    }

    #[test]
    fn equality_follows_the_rules() {
        let text = "topic read a/#\nuser u\ntopic b\npattern deny %c/%u\n";
        let a = AclFile::parse(text).unwrap();
        assert_eq!(a, AclFile::parse(text).unwrap());
        assert_eq!(a.clone(), a);
        assert_ne!(
            a,
            AclFile::parse("topic read a/#\nuser u\ntopic c\n").unwrap()
        );
        assert_eq!(AclFile::parse("").unwrap(), AclFile::default());
    }

    /// xorshift64: deterministic, no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }

        fn levels(&mut self, alphabet: &[&str], max: usize) -> Vec<String> {
            let n = 1 + self.below(max);
            (0..n).map(|_| self.pick(alphabet).to_owned()).collect()
        }
    }

    const RULE_LEVELS: &[&str] = &["a", "b", "$x", "", "+", "#", "%c", "%u"];
    const TOPIC_LEVELS: &[&str] = &["a", "b", "$x", "", "+", "#", "%c", "%u", "a/b"];
    const CLIENT_IDS: &[&str] = &["a", "a/b", "+", "", "#", "$x", "a/", "b"];
    const USERNAMES: &[Option<&str>] = &[
        None,
        Some("b"),
        Some("a"),
        Some("a/b"),
        Some(""),
        Some("+"),
        Some("zz"),
    ];

    /// A random, valid ACL file over a small alphabet, so that rules overlap a lot.
    fn random_acl(rng: &mut Rng) -> String {
        let mut text = String::new();
        for _ in 0..1 + rng.below(7) {
            if rng.below(4) == 0 {
                text.push_str(&format!("user {}\n", rng.pick(&["a", "b", "a/b"])));
            }
            let mut levels = rng.levels(RULE_LEVELS, 4);
            if let Some(hash) = levels.iter().position(|l| l == "#") {
                levels.truncate(hash + 1);
            }
            let mut topic = levels.join("/");
            if topic.is_empty() {
                topic.push('a');
            }
            let keyword = rng.pick(&["topic", "pattern"]);
            let access = rng.pick(&["", "read ", "write ", "readwrite ", "deny "]);
            text.push_str(&format!("{keyword} {access}{topic}\n"));
        }
        text
    }

    #[test]
    fn tries_agree_with_the_linear_walk() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut allowed, mut refused, mut cases) = (0_u32, 0_u32, 0_u32);
        for _ in 0..4_000 {
            let text = random_acl(&mut rng);
            let acl = AclFile::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            for _ in 0..25 {
                let topic = if rng.below(50) == 0 {
                    String::new()
                } else {
                    rng.levels(TOPIC_LEVELS, 5).join("/")
                };
                let c = client(rng.pick(CLIENT_IDS), rng.pick(USERNAMES));
                let what = if rng.below(2) == 0 {
                    Check::Read(&topic)
                } else {
                    Check::Publish(&topic)
                };
                let fast = acl.check(&c, what);
                let slow = acl.check_linear(&c, what);
                assert_eq!(fast, slow, "{what:?} by {c:?} against\n{text}");
                cases += 1;
                if fast {
                    allowed += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert_eq!(cases, 100_000);
        // Both answers are common, so both paths are really exercised.
        assert!(
            allowed > 5_000 && refused > 5_000,
            "{allowed} allowed, {refused} refused"
        );
    }
}
