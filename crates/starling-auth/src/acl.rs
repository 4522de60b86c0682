//! mosquitto's ACL file.
//!
//! ```text
//! # Lines before the first `user` line apply to anonymous clients.
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#      # access: read, write, readwrite (the default) or deny
//! topic deny alice/secret
//!
//! # Patterns apply to every client; %c is the client id, %u the username.
//! pattern write devices/%c/telemetry
//! pattern read users/%u/#
//! ```
//!
//! Semantics, as mosquitto's with its old holes closed:
//!
//! - A client's rules are its user's `topic` lines (every `user` section with its name), or
//!   for an anonymous client the `topic` lines before the first `user` line, plus every
//!   `pattern` line. A pattern using `%u` does not apply to anonymous clients.
//! - `%c` and `%u` are substituted only when they are a whole topic level; anything else, such
//!   as `dev-%c`, is an error rather than a silent mismatch. The substituted value is compared
//!   literally: a client id or username containing `+` or `#` matches only a level that is
//!   exactly that text, never as a wildcard (CVE-2017-7650), and one containing `/` spans as
//!   many levels.
//! - Deny wins: if any `deny` rule matches, access is refused whatever else allows it.
//!   Otherwise access needs a rule granting it (`read` for subscribing and receiving, `write`
//!   for publishing). No rule, or an empty file, means no access (CVE-2018-12550).
//! - A topic matches a rule as a topic matches a subscription filter; a rule starting with a
//!   wildcard does not match topics starting with `$`.
//! - Subscribing to a filter needs a read rule that covers every topic the filter can match
//!   (`a/#` covers `a/+/b`; `a/+` does not cover `a/#`), and is refused if a deny rule covers
//!   the filter. A filter that only overlaps a deny rule is allowed, and the messages the
//!   deny rule covers are then not delivered: read access is checked again on every delivery.
//! - Unknown keywords, unknown access types, empty or invalid topics (`#` not last, `a+`) are
//!   errors naming the line.
//!
//! Publishing and receiving are checked on every message, so the rules are also compiled at
//! parse time into tries (the private `trie` module) that answer those checks in one walk of
//! the topic, without allocating. Subscribing (filter coverage, once per SUBSCRIBE) walks the
//! rules linearly; that linear walk is also the reference the tries are tested against.

mod trie;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{AuthError, ParseError};
use crate::{Action, Answer, Authorizer, Client};

use trie::{Flags, Tries};

/// Longest line accepted.
const MAX_LINE: usize = 70_000;

/// What a rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, overriding any rule that grants it.
    Deny,
}

impl Access {
    fn grants_read(self) -> bool {
        matches!(self, Self::Read | Self::ReadWrite)
    }
    fn grants_write(self) -> bool {
        matches!(self, Self::Write | Self::ReadWrite)
    }
}

/// One level of a rule's topic.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    /// `%c` in a pattern.
    ClientId,
    /// `%u` in a pattern.
    Username,
}

/// One `topic` or `pattern` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    access: Access,
    levels: Vec<Level>,
}

impl Rule {
    fn uses_username(&self) -> bool {
        self.levels.contains(&Level::Username)
    }
}

/// A level of the rule after substitution, or of a topic or filter being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

/// What is being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check<'a> {
    /// Publishing to a topic name.
    Publish(&'a str),
    /// Subscribing to a filter (without any `$share/{group}/` prefix).
    Subscribe(&'a str),
    /// Receiving a message published to a topic name.
    Read(&'a str),
}

/// A parsed ACL file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
    /// The three rule lists above, compiled for `Publish` and `Read`.
    tries: Tries,
}

fn parse_topic(topic: &str, pattern: bool, n: usize) -> Result<Vec<Level>, ParseError> {
    if topic.is_empty() {
        return Err(ParseError::new(n, "empty topic"));
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(ParseError::new(n, "topic longer than 65535 bytes"));
    }
    let count = topic.split('/').count();
    let mut levels = Vec::with_capacity(count.min(64));
    for (i, level) in topic.split('/').enumerate() {
        let l = match level {
            "+" => Level::Plus,
            "#" if i + 1 == count => Level::Hash,
            "#" => {
                return Err(ParseError::new(
                    n,
                    format!("invalid topic {topic:?}: '#' must be the last level"),
                ));
            }
            "%c" if pattern => Level::ClientId,
            "%u" if pattern => Level::Username,
            _ if level.contains(['+', '#']) => {
                return Err(ParseError::new(
                    n,
                    format!("invalid topic {topic:?}: '+' and '#' must fill a whole level"),
                ));
            }
            _ if pattern && (level.contains("%c") || level.contains("%u")) => {
                return Err(ParseError::new(
                    n,
                    format!(
                        "invalid pattern {topic:?}: %c and %u are substituted only as a whole \
                         level (e.g. devices/%c/data)"
                    ),
                ));
            }
            _ => Level::Literal(level.to_owned()),
        };
        levels.push(l);
    }
    Ok(levels)
}

/// Parses `[access] topic` after `topic` or `pattern`, as mosquitto does: one word is a
/// topic with `readwrite` access; otherwise the first word is the access and the rest of the
/// line (spaces included) the topic.
fn parse_rule(rest: &str, pattern: bool, n: usize) -> Result<Rule, ParseError> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(ParseError::new(n, "empty topic"));
    }
    let (access, topic) = match rest.split_once([' ', '\t']) {
        None => (Access::ReadWrite, rest),
        Some((word, topic)) => {
            let access = match word {
                "read" => Access::Read,
                "write" => Access::Write,
                "readwrite" => Access::ReadWrite,
                "deny" => Access::Deny,
                other => {
                    return Err(ParseError::new(
                        n,
                        format!(
                            "invalid access type {other:?} (expected read, write, readwrite or deny)"
                        ),
                    ));
                }
            };
            (access, topic.trim())
        }
    };
    Ok(Rule {
        access,
        levels: parse_topic(topic, pattern, n)?,
    })
}

/// Splits a topic or filter into tokens (`+` and `#` are wildcards only in filters).
fn tokens(s: &str, wildcards: bool) -> Vec<Tok<'_>> {
    s.split('/')
        .map(|l| match l {
            "+" if wildcards => Tok::Plus,
            "#" if wildcards => Tok::Hash,
            _ => Tok::Lit(l),
        })
        .collect()
}

/// The rule's levels with `%c` and `%u` replaced by literal levels; `None` if the rule needs
/// a username the client does not have.
fn expand<'a>(rule: &'a Rule, client: &Client<'a>) -> Option<Vec<Tok<'a>>> {
    let mut out = Vec::with_capacity(rule.levels.len());
    for l in &rule.levels {
        match l {
            Level::Literal(s) => out.push(Tok::Lit(s)),
            Level::Plus => out.push(Tok::Plus),
            Level::Hash => out.push(Tok::Hash),
            Level::ClientId => out.extend(client.client_id.split('/').map(Tok::Lit)),
            Level::Username => out.extend(client.username?.split('/').map(Tok::Lit)),
        }
    }
    Some(out)
}

/// Whether every topic `filter` can match is matched by `rule` (for a topic name, whether
/// `rule` matches it). Both are token lists; only `rule`'s wildcards act as wildcards against
/// literal levels, and a literal level never covers a wildcard of `filter`.
fn covers(rule: &[Tok<'_>], filter: &[Tok<'_>]) -> bool {
    if let (Some(Tok::Plus | Tok::Hash), Some(Tok::Lit(first))) = (rule.first(), filter.first())
        && first.starts_with('$')
    {
        return false;
    }
    let mut i = 0;
    loop {
        match (rule.get(i), filter.get(i)) {
            (Some(Tok::Hash), _) => return true,
            (None, None) => return true,
            (Some(Tok::Plus), Some(Tok::Lit(_) | Tok::Plus)) => {}
            (Some(Tok::Lit(a)), Some(Tok::Lit(b))) if a == b => {}
            _ => return false,
        }
        i += 1;
    }
}

impl AclFile {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            if raw.len() > MAX_LINE {
                return Err(ParseError::new(n, "line too long"));
            }
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            match keyword {
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(ParseError::new(n, "missing username after 'user'"));
                    }
                    acl.users.entry(name.to_owned()).or_default();
                    user = Some(name.to_owned());
                }
                "topic" => {
                    let rule = parse_rule(rest, false, n)?;
                    match &user {
                        Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                        None => acl.anonymous.push(rule),
                    }
                }
                "pattern" => acl.patterns.push(parse_rule(rest, true, n)?),
                other => {
                    return Err(ParseError::new(
                        n,
                        format!("unknown keyword {other:?} (expected user, topic or pattern)"),
                    ));
                }
            }
        }
        acl.tries = Tries::build(&acl.anonymous, &acl.users, &acl.patterns);
        Ok(acl)
    }

    /// Rules given as data rather than as a file (a token's ACL claim, a backend's answer):
    /// each is a `pattern` line, so `%c` and `%u` work as in the file. The semantics are the
    /// file's: deny wins, and what no rule grants is refused. Errors name the rule (from 1).
    pub fn from_patterns<'a>(
        rules: impl IntoIterator<Item = (Access, &'a str)>,
    ) -> Result<Self, ParseError> {
        let mut acl = Self::default();
        for (i, (access, topic)) in rules.into_iter().enumerate() {
            acl.patterns.push(Rule {
                access,
                levels: parse_topic(topic, true, i + 1)?,
            });
        }
        acl.tries = Tries::build(&acl.anonymous, &acl.users, &acl.patterns);
        Ok(acl)
    }

    /// Reads and parses an ACL file; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Number of rules (topic and pattern lines).
    pub fn rule_count(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }

    /// Whether `client` may do `action` on `topic` (a filter for [`Action::Subscribe`]).
    pub fn allows(&self, client: &Client<'_>, action: Action, topic: &str) -> bool {
        self.check(
            client,
            match action {
                Action::Publish => Check::Publish(topic),
                Action::Subscribe => Check::Subscribe(topic),
                Action::Read => Check::Read(topic),
            },
        )
    }

    /// Whether `client` may do `what`.
    pub fn check(&self, client: &Client<'_>, what: Check<'_>) -> bool {
        let (topic, need) = match what {
            Check::Publish(t) => (t, Flags::WRITE),
            Check::Read(t) => (t, Flags::READ),
            Check::Subscribe(_) => return self.check_linear(client, what),
        };
        if topic.is_empty() {
            return false;
        }
        self.tries
            .lookup(topic, client.client_id, client.username)
            .allows(need)
    }

    /// [`Self::check`] by walking every rule: the path for `Subscribe`, and the reference
    /// the tries are tested against for `Publish` and `Read`.
    fn check_linear(&self, client: &Client<'_>, what: Check<'_>) -> bool {
        let (subject, wildcards) = match what {
            Check::Publish(t) | Check::Read(t) => (t, false),
            Check::Subscribe(f) => (f, true),
        };
        if subject.is_empty() {
            return false;
        }
        let subject = tokens(subject, wildcards);
        let own: &[Rule] = match client.username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        let rules = own.iter().chain(
            self.patterns
                .iter()
                .filter(|r| client.username.is_some() || !r.uses_username()),
        );
        let mut granted = false;
        for rule in rules {
            let Some(toks) = expand(rule, client) else {
                continue;
            };
            let relevant = match (rule.access, what) {
                (Access::Deny, _) => true,
                (a, Check::Publish(_)) => a.grants_write(),
                (a, Check::Subscribe(_) | Check::Read(_)) => a.grants_read(),
            };
            if !relevant || (granted && rule.access != Access::Deny) {
                continue;
            }
            if covers(&toks, &subject) {
                if rule.access == Access::Deny {
                    return false;
                }
                granted = true;
            }
        }
        granted
    }
}

impl Authorizer for AclFile {
    fn can_publish(&self, client: &Client<'_>, topic: &str) -> Answer<bool> {
        Answer::Now(self.check(client, Check::Publish(topic)))
    }
    fn can_subscribe(&self, client: &Client<'_>, filter: &str) -> Answer<bool> {
        Answer::Now(self.check(client, Check::Subscribe(filter)))
    }
    fn can_read(&self, client: &Client<'_>, topic: &str) -> bool {
        self.check(client, Check::Read(topic))
    }
    fn generation(&self) -> Option<u64> {
        // A parsed file never changes.
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(id: &str) -> Client<'_> {
        Client {
            client_id: id,
            username: None,
        }
    }

    fn user<'a>(id: &'a str, name: &'a str) -> Client<'a> {
        Client {
            client_id: id,
            username: Some(name),
        }
    }

    const FILE: &str = "
# anonymous
topic read public/#
topic write public/anon-inbox

user alice
topic readwrite alice/#
topic deny alice/secret
topic read shared/+/status
topic   read   with space/in topic

user bob
topic write bob/out
topic deny #

pattern write devices/%c/telemetry
pattern read users/%u/#
pattern readwrite clients/%c/%u
";

    fn acl() -> AclFile {
        AclFile::parse(FILE).unwrap()
    }

    #[test]
    fn anonymous_rules_come_before_any_user_line() {
        let a = acl();
        let c = anon("c1");
        assert!(a.can_read(&c, "public/x"));
        assert!(a.allows(&c, Action::Subscribe, "public/#"));
        assert!(!a.allows(&c, Action::Publish, "public/x"));
        assert!(a.allows(&c, Action::Publish, "public/anon-inbox"));
        assert!(!a.can_read(&c, "alice/x"));
        // Users do not get the anonymous rules.
        assert!(!a.can_read(&user("c2", "alice"), "public/x"));
    }

    #[test]
    fn user_rules_and_deny_wins() {
        let a = acl();
        let c = user("c", "alice");
        assert!(a.allows(&c, Action::Publish, "alice/x/y"));
        assert!(a.can_read(&c, "alice"));
        assert!(!a.can_read(&c, "alice/secret"));
        assert!(!a.allows(&c, Action::Publish, "alice/secret"));
        assert!(
            a.allows(&c, Action::Subscribe, "alice/#"),
            "overlapping deny: checked on delivery"
        );
        assert!(!a.allows(&c, Action::Subscribe, "alice/secret"));
        assert!(a.can_read(&c, "shared/x/status"));
        assert!(!a.allows(&c, Action::Publish, "shared/x/status"));
        assert!(a.can_read(&c, "with space/in topic"));
        // bob: `deny #` beats his write rule.
        let b = user("c", "bob");
        assert!(!a.allows(&b, Action::Publish, "bob/out"));
        // An unknown user has only the patterns.
        let z = user("zed", "zed");
        assert!(!a.can_read(&z, "public/x"));
        assert!(a.can_read(&z, "users/zed/inbox"));
    }

    #[test]
    fn subscribe_needs_a_covering_read_rule() {
        let a = AclFile::parse("topic read a/#\ntopic read b/+\ntopic read c/+/d\n").unwrap();
        let c = anon("x");
        for ok in ["a/#", "a/+/b", "a", "a/b/c", "b/x", "b/+", "c/x/d", "c/+/d"] {
            assert!(a.allows(&c, Action::Subscribe, ok), "{ok}");
        }
        for no in ["#", "+/x", "b/#", "b/x/y", "c/#", "c/+/+", "c/+", "+"] {
            assert!(!a.allows(&c, Action::Subscribe, no), "{no}");
        }
    }

    #[test]
    fn patterns_substitute_whole_levels_only() {
        let a = acl();
        let c = user("dev1", "alice");
        assert!(a.allows(&c, Action::Publish, "devices/dev1/telemetry"));
        assert!(!a.allows(&c, Action::Publish, "devices/dev2/telemetry"));
        assert!(a.can_read(&c, "users/alice/x"));
        assert!(!a.can_read(&c, "users/bob/x"));
        assert!(a.allows(&c, Action::Publish, "clients/dev1/alice"));
        // Anonymous clients do not get %u patterns, but do get %c ones.
        let an = anon("dev1");
        assert!(a.allows(&an, Action::Publish, "devices/dev1/telemetry"));
        assert!(!a.allows(&an, Action::Publish, "clients/dev1/"));
        let e = AclFile::parse("pattern read dev-%c/x").unwrap_err();
        assert!(e.message.contains("whole"), "{e}");
        // In a plain topic line %c is just text.
        let t = AclFile::parse("topic read x/%c").unwrap();
        assert!(t.can_read(&anon("a"), "x/%c"));
        assert!(!t.can_read(&anon("a"), "x/a"));
    }

    #[test]
    fn wildcards_in_ids_never_widen() {
        let a = acl();
        for id in ["+", "#", "a/+", "+/#"] {
            let c = user(id, "alice");
            assert!(
                !a.allows(&c, Action::Publish, "devices/x/telemetry"),
                "{id}"
            );
            assert!(
                !a.allows(&c, Action::Subscribe, "devices/+/telemetry"),
                "{id}"
            );
            assert!(!a.allows(&c, Action::Subscribe, "devices/#"), "{id}");
            assert!(!a.can_read(&c, "clients/x/alice"), "{id}");
        }
        for name in ["+", "#"] {
            let c = user("dev", name);
            assert!(!a.can_read(&c, "users/bob/x"), "{name}");
            assert!(!a.allows(&c, Action::Subscribe, "users/+/x"), "{name}");
            assert!(!a.allows(&c, Action::Subscribe, "users/#"), "{name}");
        }
        // A slash spans levels but matches only literally.
        let c = user("a/b", "alice");
        assert!(a.allows(&c, Action::Publish, "devices/a/b/telemetry"));
        assert!(!a.allows(&c, Action::Publish, "devices/a/telemetry"));
    }

    #[test]
    fn dollar_topics_need_an_explicit_rule() {
        let a = AclFile::parse("topic read #\ntopic read +/x\ntopic read $SYS/broker/#\n").unwrap();
        let c = anon("x");
        assert!(a.can_read(&c, "a/b"));
        assert!(!a.can_read(&c, "$internal/x"));
        assert!(a.can_read(&c, "$SYS/broker/uptime"));
        assert!(!a.allows(&c, Action::Subscribe, "$SYS/#"));
        assert!(a.allows(&c, Action::Subscribe, "$SYS/broker/#"));
        assert!(a.allows(&c, Action::Subscribe, "#"));
    }

    #[test]
    fn empty_file_denies_everything() {
        let a = AclFile::parse("# nothing\n\n").unwrap();
        assert_eq!(a.rule_count(), 0);
        let c = user("c", "u");
        assert!(!a.can_read(&c, "a"));
        assert!(!a.allows(&c, Action::Publish, "a"));
        assert!(!a.allows(&c, Action::Subscribe, "#"));
        assert!(!a.can_read(&anon("c"), "a"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("topic read a\nuser\n", 2, "missing username"),
            ("topic\n", 1, "empty topic"),
            ("topic read a/#/b\n", 1, "last level"),
            ("\n\ntopic reed a/b\n", 3, "invalid access type"),
            ("topic read a+\n", 1, "whole level"),
            ("pattern read %c/x%u\n", 1, "whole level"),
            ("topics read a\n", 1, "unknown keyword"),
            ("topic read a//\ntopic \n", 2, "empty topic"),
        ];
        for (text, line, needle) in cases {
            let e = AclFile::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn one_word_is_a_readwrite_topic() {
        let a = AclFile::parse("topic a/b\n").unwrap();
        assert!(a.can_read(&anon("x"), "a/b"));
        assert!(a.allows(&anon("x"), Action::Publish, "a/b"));
    }
}
