//! The dynamic security document compiled for the questions the broker asks on every
//! CONNECT, publish, subscribe and delivery: each user's (client's or API key's) password
//! hash and roles in the order they are asked, the keys by their hash, and each role's rules
//! sorted by priority, with their filters split into levels once. Owns the matching: the
//! first rule that matches decides.

use std::collections::HashMap;
use std::sync::Arc;

use starling_auth::Client;
use starling_auth::password::PasswordHash;

use super::DynsecError;
use super::keys::KeyIndex;
use super::model::{Document, GroupRef, RoleRef, RuleAction};

/// One level of a rule's filter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Lit(String),
    Plus,
    Hash,
    /// `%c`: the client id (as many levels as it has).
    ClientId,
    /// `%u`: the username (as many levels as it has); never matches an anonymous client.
    Username,
}

/// A rule ready to match.
#[derive(Clone, Debug)]
struct Rule {
    action: RuleAction,
    allow: bool,
    levels: Vec<Level>,
}

/// A role's rules, highest priority first (equal priorities in their document order).
#[derive(Debug, Default)]
pub(super) struct Role {
    rules: Vec<Rule>,
}

/// What one username (a client's, or an API key's name) is allowed.
#[derive(Debug)]
pub(super) struct User {
    /// `None`: this backend does not authenticate the user with a password (it only
    /// authorizes it, or it is a key's name).
    pub(super) hash: Option<PasswordHash>,
    /// An API key's name: only the key authenticates it.
    pub(super) key: bool,
    /// The only client id the user may connect with, if set.
    pub(super) client_id: Option<String>,
    pub(super) disabled: bool,
    /// The roles to ask, in order: its own, then its groups'.
    roles: Vec<Arc<Role>>,
}

/// The document and what was compiled from it; replaced whole on every change.
#[derive(Debug)]
pub(super) struct Compiled {
    /// The document itself, which the API reads and edits (a copy).
    pub(super) doc: Arc<Document>,
    users: HashMap<String, User>,
    /// The API keys, by the hash of the key.
    pub(super) keys: KeyIndex,
    /// The anonymous group's roles, if there is an anonymous group.
    anonymous: Option<Vec<Arc<Role>>>,
    /// Publish, subscribe, receive: the answers when no rule matches.
    defaults: [bool; 3],
}

fn index(action: RuleAction) -> usize {
    match action {
        RuleAction::Publish => 0,
        RuleAction::Subscribe => 1,
        RuleAction::Receive => 2,
    }
}

fn levels(filter: &str) -> Vec<Level> {
    filter
        .split('/')
        .map(|l| match l {
            "+" => Level::Plus,
            "#" => Level::Hash,
            "%c" => Level::ClientId,
            "%u" => Level::Username,
            _ => Level::Lit(l.to_owned()),
        })
        .collect()
}

/// `refs` sorted by priority, highest first; a stable sort keeps equal priorities in order.
fn by_priority<T: Clone>(refs: &[T], priority: impl Fn(&T) -> i32) -> Vec<T> {
    let mut v = refs.to_vec();
    v.sort_by_key(|r| std::cmp::Reverse(priority(r)));
    v
}

impl Compiled {
    /// Nothing managed: the empty document.
    pub(super) fn empty() -> Self {
        Self {
            doc: Arc::new(Document::empty()),
            users: HashMap::new(),
            keys: KeyIndex::default(),
            anonymous: None,
            defaults: [false; 3],
        }
    }

    /// Compiles a document, which is validated first.
    pub(super) fn build(doc: Arc<Document>) -> Result<Self, DynsecError> {
        doc.validate()?;
        let mut roles: HashMap<&str, Arc<Role>> = HashMap::with_capacity(doc.roles.len());
        for (name, r) in &doc.roles {
            let sorted = by_priority(&r.rules, |x| x.priority);
            let rules = sorted
                .into_iter()
                .map(|x| Rule {
                    action: x.action,
                    allow: x.allow,
                    levels: levels(&x.filter),
                })
                .collect();
            roles.insert(name, Arc::new(Role { rules }));
        }
        // Unknown names cannot happen after `validate`; skipping them keeps this total.
        let resolve = |refs: &[RoleRef], out: &mut Vec<Arc<Role>>| {
            for r in by_priority(refs, |x| x.priority) {
                if let Some(role) = roles.get(r.name.as_str()) {
                    out.push(role.clone());
                }
            }
        };
        // A client's or a key's roles in the order they are asked: its own, then its groups'.
        let roles_of = |own: &[RoleRef], groups: &[GroupRef]| {
            let mut list = Vec::new();
            resolve(own, &mut list);
            for g in by_priority(groups, |x| x.priority) {
                if let Some(group) = doc.groups.get(&g.name) {
                    resolve(&group.roles, &mut list);
                }
            }
            list
        };
        let mut users = HashMap::with_capacity(doc.clients.len() + doc.keys.len());
        for (name, c) in &doc.clients {
            let hash = match &c.password_hash {
                Some(h) => Some(super::model::parse_hash(
                    &format!("clients[{name:?}].password_hash"),
                    h,
                )?),
                None => None,
            };
            users.insert(
                name.clone(),
                User {
                    hash,
                    key: false,
                    client_id: c.client_id.clone(),
                    disabled: c.disabled,
                    roles: roles_of(&c.roles, &c.groups),
                },
            );
        }
        // Names are unique across clients and keys (`validate`).
        for (name, k) in &doc.keys {
            users.insert(
                name.clone(),
                User {
                    hash: None,
                    key: true,
                    client_id: k.client_id.clone(),
                    disabled: k.disabled,
                    roles: roles_of(&k.roles, &k.groups),
                },
            );
        }
        let keys = KeyIndex::build(&doc)?;
        let anonymous = doc.anonymous_group.as_ref().map(|g| {
            let mut list = Vec::new();
            if let Some(group) = doc.groups.get(g) {
                resolve(&group.roles, &mut list);
            }
            list
        });
        let d = &doc.default_access;
        let defaults = [d.publish.allows(), d.subscribe.allows(), d.receive.allows()];
        Ok(Self {
            users,
            keys,
            anonymous,
            defaults,
            doc,
        })
    }

    /// The user `username` manages, if any.
    pub(super) fn user(&self, username: &str) -> Option<&User> {
        self.users.get(username)
    }

    /// The answer for `client`: `None` if its username (or, anonymous, the anonymous group)
    /// is not managed here. A disabled user is refused everything.
    pub(super) fn decide(
        &self,
        client: &Client<'_>,
        action: RuleAction,
        subject: &str,
    ) -> Option<bool> {
        let roles = match client.username {
            Some(u) => {
                let user = self.users.get(u)?;
                if user.disabled {
                    return Some(false);
                }
                &user.roles
            }
            None => self.anonymous.as_ref()?,
        };
        Some(self.first_match(roles, client, action, subject))
    }

    fn first_match(
        &self,
        roles: &[Arc<Role>],
        client: &Client<'_>,
        action: RuleAction,
        subject: &str,
    ) -> bool {
        let default = self.defaults.get(index(action)).copied().unwrap_or(false);
        if subject.is_empty() {
            return false;
        }
        // Only a SUBSCRIBE's filter has wildcards of its own: a topic name never does.
        let wildcards = action == RuleAction::Subscribe;
        for role in roles {
            for rule in role.rules.iter().filter(|r| r.action == action) {
                if covers(&rule.levels, client, subject, wildcards) {
                    return rule.allow;
                }
            }
        }
        default
    }
}

/// Whether the rule's filter matches every topic `subject` can stand for: for a topic name,
/// whether it matches it; for a subscription filter (`wildcards`), whether it covers it
/// (`a/#` covers `a/+/b`; `a/+` does not cover `a/#`). `%c` and `%u` are replaced by the
/// client id and the username, compared literally level by level: a `+` or `#` in them
/// never acts as a wildcard. A rule starting with a wildcard does not match topics starting
/// with `$`. Walks both without allocating.
fn covers(rule: &[Level], client: &Client<'_>, subject: &str, wildcards: bool) -> bool {
    if matches!(rule.first(), Some(Level::Plus | Level::Hash)) && subject.starts_with('$') {
        return false;
    }
    let is_wild = |s: &str| wildcards && (s == "+" || s == "#");
    let mut subj = subject.split('/');
    // A literal level of the rule covers only the same literal level of the subject.
    let literal = |want: &str, subj: &mut std::str::Split<'_, char>| matches!(subj.next(), Some(s) if s == want && !is_wild(s));
    for level in rule {
        let ok = match level {
            Level::Hash => return true,
            Level::Plus => matches!(subj.next(), Some(s) if !(wildcards && s == "#")),
            Level::Lit(l) => literal(l, &mut subj),
            Level::ClientId => client
                .client_id
                .split('/')
                .all(|part| literal(part, &mut subj)),
            Level::Username => match client.username {
                Some(u) => u.split('/').all(|part| literal(part, &mut subj)),
                None => false,
            },
        };
        if !ok {
            return false;
        }
    }
    subj.next().is_none()
}

#[cfg(test)]
pub(super) fn covers_for_tests(
    filter: &str,
    client_id: &str,
    username: Option<&str>,
    subject: &str,
    wildcards: bool,
) -> bool {
    let client = Client {
        client_id,
        username,
    };
    covers(&levels(filter), &client, subject, wildcards)
}
