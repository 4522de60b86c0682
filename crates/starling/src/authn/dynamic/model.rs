//! The dynamic security document: clients, groups, roles with their ordered rules, the
//! anonymous group and the default answers, as stored (JSON) and as the admin API edits it
//! (API keys, stored in it too, are `keys.rs`'s; giving and taking roles and groups is
//! `membership.rs`'s). Owns the bounds and every validity check; an edit either leaves a
//! valid document or fails with an error naming what is wrong, and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use starling_auth::password::PasswordHash;

use super::DynsecError;
use super::keys::{KEY_PREFIX, KeyEntry};

/// Most clients.
pub const MAX_CLIENTS: usize = 100_000;
/// Most groups.
pub const MAX_GROUPS: usize = 10_000;
/// Most roles.
pub const MAX_ROLES: usize = 10_000;
/// Most rules in one role.
pub const MAX_RULES_PER_ROLE: usize = 1_000;
/// Most roles one client or one group has.
pub const MAX_ROLES_PER_ENTRY: usize = 100;
/// Most groups one client is in.
pub const MAX_GROUPS_PER_CLIENT: usize = 100;
/// Longest username, group name, role name or fixed client id, bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest text name or description, bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest rule filter, bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Most levels in a rule filter.
pub const MAX_FILTER_LEVELS: usize = 64;
/// Longest password accepted for hashing, bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Largest document, encoded: the whole document is written on every change, so this bounds
/// what one change costs as well as the memory it takes.
pub const MAX_DOCUMENT_BYTES: usize = 32 << 20;

/// The version of the document's format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The whole dynamic security configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Format version ([`FORMAT_VERSION`]).
    #[serde(default = "format_version")]
    pub version: u32,
    /// The answer for each action when no rule matches.
    #[serde(default)]
    pub default_access: DefaultAccess,
    /// The group whose roles apply to anonymous clients; none: anonymous clients are not
    /// this backend's to decide.
    #[serde(default)]
    pub anonymous_group: Option<String>,
    /// Clients by username.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientEntry>,
    /// Groups by name.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupEntry>,
    /// Roles by name.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleEntry>,
    /// API keys by name (the username they connect as). Absent in documents written before
    /// keys existed, and left out while there are none so that such builds still read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, KeyEntry>,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

impl Default for Document {
    /// Empty, in this build's format: no clients, groups or roles, everything denied.
    fn default() -> Self {
        Self {
            version: FORMAT_VERSION,
            default_access: DefaultAccess::default(),
            anonymous_group: None,
            clients: BTreeMap::new(),
            groups: BTreeMap::new(),
            roles: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }
}

/// One client (a username that may connect).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The password's hash as a password file holds it (`$argon2id$…`); none: this backend
    /// does not authenticate the client, only authorizes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// When set, the client may connect only with this client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_description: Option<String>,
    /// Its own roles.
    #[serde(default)]
    pub roles: Vec<RoleRef>,
    /// The groups it is in.
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    /// A disabled client may not connect, and may do nothing if it still is.
    #[serde(default)]
    pub disabled: bool,
}

/// A group of clients sharing roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_description: Option<String>,
    /// The group's roles.
    #[serde(default)]
    pub roles: Vec<RoleRef>,
}

/// A named, ordered list of rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleEntry {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_description: Option<String>,
    /// The rules, asked by priority (highest first), then in this order.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A role given to a client or a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRef {
    /// The role's name.
    pub name: String,
    /// Roles of higher priority are asked first; equal priorities keep their order.
    #[serde(default)]
    pub priority: i32,
}

/// A group a client is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    /// The group's name.
    pub name: String,
    /// Groups of higher priority are asked first; equal priorities keep their order.
    #[serde(default)]
    pub priority: i32,
}

/// What a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Publishing to topics the filter matches.
    Publish,
    /// Subscribing to filters the rule's filter covers.
    Subscribe,
    /// Receiving messages on topics the filter matches (checked at every delivery).
    Receive,
}

impl RuleAction {
    /// The action's name, as in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Receive => "receive",
        }
    }

    /// Parses an action's name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "publish" => Some(Self::Publish),
            "subscribe" => Some(Self::Subscribe),
            "receive" => Some(Self::Receive),
            _ => None,
        }
    }
}

/// One rule of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What it is about.
    pub action: RuleAction,
    /// Allow (true) or deny (false) what it matches.
    pub allow: bool,
    /// A topic filter; a level that is exactly `%c` or `%u` stands for the client id or the
    /// username.
    pub filter: String,
    /// Rules of higher priority are asked first; equal priorities keep their order.
    #[serde(default)]
    pub priority: i32,
}

/// An answer: allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Allowed.
    Allow,
    /// Refused (the default: fail closed).
    #[default]
    Deny,
}

impl Access {
    /// Whether this answer allows.
    pub fn allows(self) -> bool {
        self == Self::Allow
    }
}

/// The answer for each action when none of a client's rules matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultAccess {
    /// Publishing.
    #[serde(default)]
    pub publish: Access,
    /// Subscribing.
    #[serde(default)]
    pub subscribe: Access,
    /// Receiving.
    #[serde(default)]
    pub receive: Access,
}

/// `field.name`, or `name` at the top level (`field` empty: a request's own fields).
pub(super) fn join(field: &str, name: &str) -> String {
    if field.is_empty() {
        name.to_owned()
    } else {
        format!("{field}.{name}")
    }
}

pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> DynsecError {
    DynsecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn too_many(what: impl Into<String>, max: usize) -> DynsecError {
    DynsecError::TooMany {
        what: what.into(),
        max,
    }
}

/// Checks a username, group name, role name or fixed client id.
pub fn check_name(field: &str, name: &str) -> Result<(), DynsecError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    // Control characters (NUL above all) are refused by MQTT or unreadable in logs.
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

/// Checks a text name or description.
pub fn check_text(field: &str, text: Option<&str>) -> Result<(), DynsecError> {
    if text.is_some_and(|t| t.len() > MAX_TEXT_BYTES) {
        return Err(invalid(
            field,
            format!("longer than {MAX_TEXT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a password given in clear before it is hashed.
pub fn check_password(field: &str, password: &str) -> Result<(), DynsecError> {
    if password.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            field,
            format!("longer than {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    // A password with the keys' prefix is taken for an API key and never checked as one.
    if password.starts_with(KEY_PREFIX) {
        return Err(invalid(
            field,
            format!("must not start with {KEY_PREFIX:?}, which marks an API key"),
        ));
    }
    Ok(())
}

/// Parses a stored password hash (the forms a password file accepts).
pub fn parse_hash(field: &str, hash: &str) -> Result<PasswordHash, DynsecError> {
    PasswordHash::parse(hash).map_err(|e| invalid(field, e))
}

/// Checks a rule's filter: a valid MQTT topic filter, not shared, with `%c` and `%u` only as
/// whole levels.
pub fn check_filter(field: &str, filter: &str) -> Result<(), DynsecError> {
    if filter.len() > MAX_FILTER_BYTES {
        return Err(invalid(
            field,
            format!("longer than {MAX_FILTER_BYTES} bytes"),
        ));
    }
    starling_proto::topic::validate_topic_filter(filter.as_bytes(), MAX_FILTER_LEVELS)
        .map_err(|e| invalid(field, format!("invalid topic filter {filter:?}: {e}")))?;
    if filter.starts_with("$share/") {
        return Err(invalid(
            field,
            "rules apply to the filter without its $share/{group}/ prefix; write the filter alone",
        ));
    }
    if filter
        .split('/')
        .any(|l| l != "%c" && l != "%u" && (l.contains("%c") || l.contains("%u")))
    {
        return Err(invalid(
            field,
            format!(
                "invalid filter {filter:?}: %c and %u are substituted only as a whole level \
                 (e.g. devices/%c/data)"
            ),
        ));
    }
    Ok(())
}

impl Document {
    /// An empty document: no clients, groups or roles, everything denied by default.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Checks everything: bounds, names, references, hashes and filters. What a stored or
    /// initial document must pass before it is used; edits check the same things as they go.
    pub fn validate(&self) -> Result<(), DynsecError> {
        if self.version != FORMAT_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "format {} is not the one this version of Starling reads ({FORMAT_VERSION})",
                    self.version
                ),
            ));
        }
        if self.clients.len() > MAX_CLIENTS {
            return Err(too_many("clients", MAX_CLIENTS));
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(too_many("groups", MAX_GROUPS));
        }
        if self.roles.len() > MAX_ROLES {
            return Err(too_many("roles", MAX_ROLES));
        }
        for (name, role) in &self.roles {
            let field = format!("roles[{name:?}]");
            check_name(&field, name)?;
            check_role(&field, role)?;
        }
        for (name, group) in &self.groups {
            let field = format!("groups[{name:?}]");
            check_name(&field, name)?;
            self.check_group(&field, group)?;
        }
        for (name, client) in &self.clients {
            let field = format!("clients[{name:?}]");
            check_name(&field, name)?;
            self.check_client(&field, client)?;
        }
        self.validate_keys()?;
        if let Some(g) = &self.anonymous_group
            && !self.groups.contains_key(g)
        {
            return Err(invalid("anonymous_group", format!("no group {g:?}")));
        }
        Ok(())
    }

    /// Checks a client's fields and that what it names exists.
    pub fn check_client(&self, field: &str, c: &ClientEntry) -> Result<(), DynsecError> {
        if let Some(h) = &c.password_hash {
            parse_hash(&join(field, "password_hash"), h)?;
        }
        if let Some(id) = &c.client_id {
            check_name(&join(field, "client_id"), id)?;
        }
        check_text(&join(field, "text_name"), c.text_name.as_deref())?;
        check_text(
            &join(field, "text_description"),
            c.text_description.as_deref(),
        )?;
        self.check_role_refs(&join(field, "roles"), &c.roles)?;
        self.check_group_refs(&join(field, "groups"), &c.groups)
    }

    /// Checks a client's or a key's groups: at most [`MAX_GROUPS_PER_CLIENT`], each existing
    /// and listed once.
    pub(super) fn check_group_refs(
        &self,
        field: &str,
        refs: &[GroupRef],
    ) -> Result<(), DynsecError> {
        let names = refs.iter().map(|g| g.name.as_str());
        check_refs(field, "group", names, MAX_GROUPS_PER_CLIENT, |n| {
            self.groups.contains_key(n)
        })
    }

    /// Checks a group's fields and that its roles exist.
    pub fn check_group(&self, field: &str, g: &GroupEntry) -> Result<(), DynsecError> {
        check_text(&join(field, "text_name"), g.text_name.as_deref())?;
        check_text(
            &join(field, "text_description"),
            g.text_description.as_deref(),
        )?;
        self.check_role_refs(&join(field, "roles"), &g.roles)
    }

    pub(super) fn check_role_refs(&self, field: &str, refs: &[RoleRef]) -> Result<(), DynsecError> {
        let names = refs.iter().map(|r| r.name.as_str());
        check_refs(field, "role", names, MAX_ROLES_PER_ENTRY, |n| {
            self.roles.contains_key(n)
        })
    }

    /// The client `username`, or 404.
    pub fn client_mut(&mut self, username: &str) -> Result<&mut ClientEntry, DynsecError> {
        self.clients
            .get_mut(username)
            .ok_or_else(|| DynsecError::NotFound(format!("no client {username:?}")))
    }

    /// The group `name`, or 404.
    pub fn group_mut(&mut self, name: &str) -> Result<&mut GroupEntry, DynsecError> {
        self.groups
            .get_mut(name)
            .ok_or_else(|| DynsecError::NotFound(format!("no group {name:?}")))
    }

    /// The role `name`, or 404.
    pub fn role_mut(&mut self, name: &str) -> Result<&mut RoleEntry, DynsecError> {
        self.roles
            .get_mut(name)
            .ok_or_else(|| DynsecError::NotFound(format!("no role {name:?}")))
    }

    /// Adds a client; 409 if the username is taken.
    pub fn create_client(&mut self, username: &str, c: ClientEntry) -> Result<(), DynsecError> {
        check_name("username", username)?;
        if self.clients.contains_key(username) {
            return Err(DynsecError::Conflict(format!("client {username:?} exists")));
        }
        self.refuse_key_name(username)?;
        if self.clients.len() >= MAX_CLIENTS {
            return Err(too_many("clients", MAX_CLIENTS));
        }
        self.check_client("", &c)?;
        self.clients.insert(username.to_owned(), c);
        Ok(())
    }

    /// Removes a client.
    pub fn delete_client(&mut self, username: &str) -> Result<(), DynsecError> {
        self.clients
            .remove(username)
            .map(drop)
            .ok_or_else(|| DynsecError::NotFound(format!("no client {username:?}")))
    }

    /// Adds a group; 409 if the name is taken.
    pub fn create_group(&mut self, name: &str, g: GroupEntry) -> Result<(), DynsecError> {
        check_name("name", name)?;
        if self.groups.contains_key(name) {
            return Err(DynsecError::Conflict(format!("group {name:?} exists")));
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(too_many("groups", MAX_GROUPS));
        }
        self.check_group("", &g)?;
        self.groups.insert(name.to_owned(), g);
        Ok(())
    }

    /// Removes a group and every client's and key's membership of it; 409 while it is the anonymous
    /// group (anonymous clients would silently change hands).
    pub fn delete_group(&mut self, name: &str) -> Result<(), DynsecError> {
        if !self.groups.contains_key(name) {
            return Err(DynsecError::NotFound(format!("no group {name:?}")));
        }
        if self.anonymous_group.as_deref() == Some(name) {
            return Err(DynsecError::Conflict(format!(
                "group {name:?} is the anonymous group; set another one (or none) first"
            )));
        }
        self.groups.remove(name);
        for c in self.clients.values_mut() {
            c.groups.retain(|g| g.name != name);
        }
        for k in self.keys.values_mut() {
            k.groups.retain(|g| g.name != name);
        }
        Ok(())
    }

    /// Adds a role; 409 if the name is taken.
    pub fn create_role(&mut self, name: &str, r: RoleEntry) -> Result<(), DynsecError> {
        check_name("name", name)?;
        if self.roles.contains_key(name) {
            return Err(DynsecError::Conflict(format!("role {name:?} exists")));
        }
        if self.roles.len() >= MAX_ROLES {
            return Err(too_many("roles", MAX_ROLES));
        }
        check_role("", &r)?;
        self.roles.insert(name.to_owned(), r);
        Ok(())
    }

    /// Removes a role and every client's, group's and key's reference to it (as mosquitto
    /// does).
    pub fn delete_role(&mut self, name: &str) -> Result<(), DynsecError> {
        if self.roles.remove(name).is_none() {
            return Err(DynsecError::NotFound(format!("no role {name:?}")));
        }
        for c in self.clients.values_mut() {
            c.roles.retain(|r| r.name != name);
        }
        for g in self.groups.values_mut() {
            g.roles.retain(|r| r.name != name);
        }
        for k in self.keys.values_mut() {
            k.roles.retain(|r| r.name != name);
        }
        Ok(())
    }

    /// Adds a rule to a role; 409 if the role has a rule for that action and filter already.
    pub fn add_rule(&mut self, role: &str, rule: Rule) -> Result<(), DynsecError> {
        check_filter("filter", &rule.filter)?;
        let r = self.role_mut(role)?;
        if r.rules
            .iter()
            .any(|x| x.action == rule.action && x.filter == rule.filter)
        {
            return Err(DynsecError::Conflict(format!(
                "role {role:?} has a {} rule for {:?} already; remove it first",
                rule.action.as_str(),
                rule.filter
            )));
        }
        if r.rules.len() >= MAX_RULES_PER_ROLE {
            return Err(too_many("rules", MAX_RULES_PER_ROLE));
        }
        r.rules.push(rule);
        Ok(())
    }

    /// Removes a role's rule for `action` and `filter`; 404 if it has none.
    pub fn remove_rule(
        &mut self,
        role: &str,
        action: RuleAction,
        filter: &str,
    ) -> Result<(), DynsecError> {
        let r = self.role_mut(role)?;
        let before = r.rules.len();
        r.rules
            .retain(|x| !(x.action == action && x.filter == filter));
        if r.rules.len() == before {
            return Err(DynsecError::NotFound(format!(
                "role {role:?} has no {} rule for {filter:?}",
                action.as_str()
            )));
        }
        Ok(())
    }

    /// Sets (or clears) the anonymous group.
    pub fn set_anonymous_group(&mut self, group: Option<String>) -> Result<(), DynsecError> {
        if let Some(g) = &group
            && !self.groups.contains_key(g)
        {
            return Err(invalid("group", format!("no group {g:?}")));
        }
        self.anonymous_group = group;
        Ok(())
    }
}

/// Checks a role's fields and rules.
pub fn check_role(field: &str, r: &RoleEntry) -> Result<(), DynsecError> {
    check_text(&join(field, "text_name"), r.text_name.as_deref())?;
    check_text(
        &join(field, "text_description"),
        r.text_description.as_deref(),
    )?;
    if r.rules.len() > MAX_RULES_PER_ROLE {
        return Err(too_many(join(field, "rules"), MAX_RULES_PER_ROLE));
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let f = join(field, &format!("rules[{i}].filter"));
        check_filter(&f, &rule.filter)?;
        if r.rules
            .iter()
            .take(i)
            .any(|x| x.action == rule.action && x.filter == rule.filter)
        {
            return Err(invalid(
                f,
                format!(
                    "a second {} rule for {:?}",
                    rule.action.as_str(),
                    rule.filter
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a list of references (to groups or roles, `what`): at most `max`, each naming
/// something that `exists`, none twice. Errors name `field[i].name`.
fn check_refs<'a>(
    field: &str,
    what: &str,
    names: impl ExactSizeIterator<Item = &'a str> + Clone,
    max: usize,
    exists: impl Fn(&str) -> bool,
) -> Result<(), DynsecError> {
    if names.len() > max {
        return Err(too_many(field, max));
    }
    for (i, name) in names.clone().enumerate() {
        if !exists(name) {
            return Err(invalid(
                format!("{field}[{i}].name"),
                format!("no {what} {name:?}"),
            ));
        }
        if names.clone().take(i).any(|o| o == name) {
            return Err(invalid(
                format!("{field}[{i}].name"),
                format!("{what} {name:?} is listed twice"),
            ));
        }
    }
    Ok(())
}
