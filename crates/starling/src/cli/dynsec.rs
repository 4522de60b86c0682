//! `starling ctl dynsec`: dynamic security's clients, groups, roles and API keys from the
//! terminal, through `/api/v1/dynsec` with `ctl`'s connection, credentials and output (a
//! table or `key: value` lines by default, the API's JSON with `--json`). A child of `ctl` so
//! that it shares ctl's HTTP client. Passwords are read from the terminal (twice, not echoed)
//! or a line of standard input unless given on the command line, and are hashed by the
//! broker. API keys' commands are in `dynsec_keys.rs`.

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{Api, CtlError, Paging, enc, print_table, query};

#[path = "dynsec_keys.rs"]
mod keys;

/// `starling ctl dynsec` commands.
#[derive(Debug, Clone, Subcommand)]
pub(super) enum Dynsec {
    /// Create a client (a username that may connect).
    CreateClient {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Password (default: asked for; see also --no-password). Positional, as ctl's own
        /// `--password` is the HTTP user's.
        #[arg(value_name = "PASSWORD", conflicts_with = "no_password")]
        secret: Option<String>,
        /// No password: another backend authenticates the client, this one only authorizes.
        #[arg(long)]
        no_password: bool,
        /// The only client id it may connect with.
        #[arg(long)]
        client_id: Option<String>,
        /// A role (repeat for several, highest priority first).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A group (repeat for several, highest priority first).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// A name for people.
        #[arg(long)]
        text_name: Option<String>,
    },
    /// Delete a client (its connections are disconnected).
    DeleteClient {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Set a client's password (its connections are disconnected).
    SetPassword {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
        /// The new password (default: asked for).
        #[arg(value_name = "PASSWORD")]
        secret: Option<String>,
    },
    /// Set the only client id a client may connect with, or allow any (no ID).
    SetClientId {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Client id.
        client_id: Option<String>,
    },
    /// Let a disabled client connect again.
    EnableClient {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Refuse a client (its connections are disconnected).
    DisableClient {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Give a client a role (or change the role's priority).
    AddClientRole {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Role.
        role: String,
        /// Higher priorities are asked first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Take a role from a client.
    RemoveClientRole {
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Role.
        role: String,
    },
    /// Create a group.
    CreateGroup {
        /// Group name.
        name: String,
        /// A role (repeat for several, highest priority first).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A name for people.
        #[arg(long)]
        text_name: Option<String>,
    },
    /// Delete a group.
    DeleteGroup {
        /// Group name.
        name: String,
    },
    /// Give a group a role (or change the role's priority).
    AddGroupRole {
        /// Group name.
        group: String,
        /// Role.
        role: String,
        /// Higher priorities are asked first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Take a role from a group.
    RemoveGroupRole {
        /// Group name.
        group: String,
        /// Role.
        role: String,
    },
    /// Put a client in a group (or change the group's priority for it).
    AddGroupClient {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Higher priorities are asked first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Take a client out of a group.
    RemoveGroupClient {
        /// Group name.
        group: String,
        /// Username.
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Create a role (add rules with add-rule).
    CreateRole {
        /// Role name.
        name: String,
        /// A name for people.
        #[arg(long)]
        text_name: Option<String>,
    },
    /// Delete a role (clients and groups lose it).
    DeleteRole {
        /// Role name.
        name: String,
    },
    /// Add a rule to a role: the first rule of a client's roles that matches decides.
    AddRule {
        /// Role name.
        role: String,
        /// What the rule is about.
        action: RuleActionArg,
        /// Allow or deny.
        access: AccessArg,
        /// Topic filter (`%c`: the client id, `%u`: the username, as whole levels).
        filter: String,
        /// Higher priorities are asked first; equal ones in the order added.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Remove a role's rule.
    RemoveRule {
        /// Role name.
        role: String,
        /// What the rule is about.
        action: RuleActionArg,
        /// Its topic filter.
        filter: String,
    },
    // API keys: create-key, delete-key, disable-key, enable-key, list-keys.
    #[command(flatten)]
    Keys(keys::KeyCommand),
    /// Set the group whose roles apply to anonymous clients, or none (no GROUP).
    SetAnonymousGroup {
        /// Group name.
        group: Option<String>,
    },
    /// Set the answer for an action when no rule matches (deny unless set).
    SetDefaultAccess {
        /// The action.
        action: RuleActionArg,
        /// Allow or deny.
        access: AccessArg,
    },
    /// List clients, groups, roles or keys.
    List {
        /// What to list.
        kind: Kind,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one client, group, role or key, or everything (no KIND).
    Show {
        /// What to show.
        kind: Option<Kind>,
        /// Its name (none: the first page of the listing).
        name: Option<String>,
    },
}

/// A rule's action.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum RuleActionArg {
    /// Publishing.
    Publish,
    /// Subscribing.
    Subscribe,
    /// Receiving.
    Receive,
}

impl RuleActionArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Receive => "receive",
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum AccessArg {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
}

/// What `list` and `show` are about (`list` takes the plural too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Kind {
    /// Clients.
    #[value(alias = "clients")]
    Client,
    /// Groups.
    #[value(alias = "groups")]
    Group,
    /// Roles.
    #[value(alias = "roles")]
    Role,
    /// API keys.
    #[value(alias = "keys")]
    Key,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Client => "/dynsec/clients",
            Self::Group => "/dynsec/groups",
            Self::Role => "/dynsec/roles",
            Self::Key => "/dynsec/keys",
        }
    }
}

/// Role or group references as the API takes them: priorities falling in the order given,
/// so the first listed is asked first.
fn refs(names: &[String]) -> Value {
    let n = i32::try_from(names.len()).unwrap_or(i32::MAX);
    let items: Vec<Value> = names
        .iter()
        .zip((0..n).rev())
        .map(|(name, priority)| json!({ "name": name, "priority": priority }))
        .collect();
    Value::Array(items)
}

/// `name` of each item of an array, joined by commas (a role or group list in a table).
fn names(v: Option<&Value>) -> Value {
    let list: Vec<&str> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    Value::String(list.join(","))
}

/// The password given, or one read from the terminal or standard input.
fn password(given: Option<&String>) -> Result<String, CtlError> {
    match given {
        Some(p) => Ok(p.clone()),
        None => crate::passwd::read_password().map_err(|e| CtlError::Input(format!("{e:#}"))),
    }
}

/// Runs one `starling ctl dynsec` command.
pub(super) async fn run(api: &Api<'_>, cmd: &Dynsec) -> Result<(), CtlError> {
    match cmd {
        Dynsec::CreateClient {
            user: username,
            secret: given,
            no_password,
            client_id,
            roles,
            groups,
            text_name,
        } => {
            let mut body = json!({
                "username": username,
                "client_id": client_id,
                "text_name": text_name,
                "roles": refs(roles),
                "groups": refs(groups),
            });
            if !no_password && let Some(map) = body.as_object_mut() {
                map.insert("password".into(), json!(password(given.as_ref())?));
            }
            api.call("POST", "/dynsec/clients", Some(body)).await?;
            api.done(&format!("created client {username}"));
        }
        Dynsec::DeleteClient { user: username } => {
            let path = format!("/dynsec/clients/{}", enc(username));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("deleted client {username}"));
        }
        Dynsec::SetPassword {
            user: username,
            secret: given,
        } => {
            let body = json!({ "password": password(given.as_ref())? });
            put_client(api, username, body).await?;
            api.done(&format!("set the password of {username}"));
        }
        Dynsec::SetClientId {
            user: username,
            client_id,
        } => {
            put_client(api, username, json!({ "client_id": client_id })).await?;
            match client_id {
                Some(id) => api.done(&format!("{username} may connect only as {id}")),
                None => api.done(&format!("{username} may connect with any client id")),
            }
        }
        Dynsec::EnableClient { user: username } => {
            put_client(api, username, json!({ "disabled": false })).await?;
            api.done(&format!("enabled client {username}"));
        }
        Dynsec::DisableClient { user: username } => {
            put_client(api, username, json!({ "disabled": true })).await?;
            api.done(&format!("disabled client {username}"));
        }
        Dynsec::AddClientRole {
            user: username,
            role,
            priority,
        } => {
            let path = format!("/dynsec/clients/{}/roles", enc(username));
            let body = json!({ "name": role, "priority": priority });
            api.call("POST", &path, Some(body)).await?;
            api.done(&format!("gave role {role} to {username}"));
        }
        Dynsec::RemoveClientRole {
            user: username,
            role,
        } => {
            let path = format!("/dynsec/clients/{}/roles/{}", enc(username), enc(role));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("took role {role} from {username}"));
        }
        Dynsec::CreateGroup {
            name,
            roles,
            text_name,
        } => {
            let body = json!({ "name": name, "roles": refs(roles), "text_name": text_name });
            api.call("POST", "/dynsec/groups", Some(body)).await?;
            api.done(&format!("created group {name}"));
        }
        Dynsec::DeleteGroup { name } => {
            let path = format!("/dynsec/groups/{}", enc(name));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("deleted group {name}"));
        }
        Dynsec::AddGroupRole {
            group,
            role,
            priority,
        } => {
            let path = format!("/dynsec/groups/{}/roles", enc(group));
            let body = json!({ "name": role, "priority": priority });
            api.call("POST", &path, Some(body)).await?;
            api.done(&format!("gave role {role} to group {group}"));
        }
        Dynsec::RemoveGroupRole { group, role } => {
            let path = format!("/dynsec/groups/{}/roles/{}", enc(group), enc(role));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("took role {role} from group {group}"));
        }
        Dynsec::AddGroupClient {
            group,
            user: username,
            priority,
        } => {
            let path = format!("/dynsec/clients/{}/groups", enc(username));
            let body = json!({ "name": group, "priority": priority });
            api.call("POST", &path, Some(body)).await?;
            api.done(&format!("added {username} to group {group}"));
        }
        Dynsec::RemoveGroupClient {
            group,
            user: username,
        } => {
            let path = format!("/dynsec/clients/{}/groups/{}", enc(username), enc(group));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("removed {username} from group {group}"));
        }
        Dynsec::CreateRole { name, text_name } => {
            let body = json!({ "name": name, "text_name": text_name });
            api.call("POST", "/dynsec/roles", Some(body)).await?;
            api.done(&format!("created role {name}"));
        }
        Dynsec::DeleteRole { name } => {
            let path = format!("/dynsec/roles/{}", enc(name));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("deleted role {name}"));
        }
        Dynsec::AddRule {
            role,
            action,
            access,
            filter,
            priority,
        } => {
            let body = json!({
                "action": action.as_str(),
                "allow": matches!(access, AccessArg::Allow),
                "filter": filter,
                "priority": priority,
            });
            let path = format!("/dynsec/roles/{}/rules", enc(role));
            api.call("POST", &path, Some(body)).await?;
            api.done(&format!(
                "added to role {role}: {} {} {filter}",
                action.as_str(),
                if matches!(access, AccessArg::Allow) {
                    "allow"
                } else {
                    "deny"
                }
            ));
        }
        Dynsec::RemoveRule {
            role,
            action,
            filter,
        } => {
            let q = query(&[
                ("action", Some(action.as_str().to_owned())),
                ("filter", Some(filter.clone())),
            ]);
            let path = format!("/dynsec/roles/{}/rules{q}", enc(role));
            api.call("DELETE", &path, None).await?;
            api.done(&format!(
                "removed from role {role}: {} {filter}",
                action.as_str()
            ));
        }
        Dynsec::Keys(k) => keys::run(api, k).await?,
        Dynsec::SetAnonymousGroup { group } => {
            let body = json!({ "group": group });
            api.call("PUT", "/dynsec/anonymous-group", Some(body))
                .await?;
            match group {
                Some(g) => api.done(&format!("anonymous clients get the roles of {g}")),
                None => api.done("no anonymous group"),
            }
        }
        Dynsec::SetDefaultAccess { action, access } => {
            let value = if matches!(access, AccessArg::Allow) {
                "allow"
            } else {
                "deny"
            };
            let mut body = serde_json::Map::new();
            body.insert(action.as_str().into(), json!(value));
            api.call("PUT", "/dynsec/default-access", Some(Value::Object(body)))
                .await?;
            api.done(&format!(
                "{} without a matching rule: {value}",
                action.as_str()
            ));
        }
        Dynsec::List { kind, paging } => list(api, *kind, paging).await?,
        Dynsec::Show { kind, name } => {
            let path = match (kind, name) {
                (Some(k), Some(n)) => format!("{}/{}", k.path(), enc(n)),
                (Some(k), None) => k.path().to_owned(),
                (None, _) => "/dynsec".to_owned(),
            };
            let v = api.call("GET", &path, None).await?;
            api.show(&v);
        }
    }
    Ok(())
}

async fn put_client(api: &Api<'_>, username: &str, body: Value) -> Result<Value, CtlError> {
    let path = format!("/dynsec/clients/{}", enc(username));
    api.call("PUT", &path, Some(body)).await
}

/// A listing, page by page (all of them with `--all`), as a table with role and group
/// names joined, or the API's JSON.
async fn list(api: &Api<'_>, kind: Kind, paging: &Paging) -> Result<(), CtlError> {
    let mut after = paging.after.clone();
    let mut items: Vec<Value> = Vec::new();
    let mut next = None;
    for _ in 0..super::MAX_PAGES {
        let q = query(&[
            ("limit", paging.limit.map(|l| l.to_string())),
            ("after", after.clone()),
        ]);
        let page = api
            .call("GET", &format!("{}{q}", kind.path()), None)
            .await?;
        if let Some(list) = page.get("items").and_then(Value::as_array) {
            items.extend(list.iter().cloned());
        }
        next = page.get("next").and_then(Value::as_str).map(str::to_owned);
        if !paging.all || next.is_none() {
            break;
        }
        after = next.clone();
    }
    if api.args.json {
        println!("{}", json!({ "items": items, "next": next }));
        return Ok(());
    }
    let columns: &[&str] = match kind {
        Kind::Client => &["username", "client_id", "disabled", "roles", "groups"],
        Kind::Group => &["name", "anonymous", "roles", "text_name"],
        Kind::Role => &["name", "rules", "text_name"],
        Kind::Key => &[
            "name",
            "client_id",
            "disabled",
            "expired",
            "expires_at",
            "roles",
            "groups",
        ],
    };
    for item in &mut items {
        let Some(map) = item.as_object_mut() else {
            continue;
        };
        for key in ["roles", "groups"] {
            if let Some(v) = map.get(key) {
                let joined = names(Some(v));
                map.insert(key.into(), joined);
            }
        }
        if let Some(n) = map.get("rules").and_then(Value::as_array).map(Vec::len) {
            map.insert("rules".into(), json!(n));
        }
    }
    print_table(columns, &items);
    if let Some(n) = next {
        println!("(more: --after {n})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: super::super::CtlArgs,
    }

    /// ctl's global `--username`/`--password` (the HTTP user) must not swallow a command's
    /// own username and password.
    #[test]
    fn a_client_s_username_and_password_are_not_the_http_user_s() {
        let cli = Cli::try_parse_from([
            "ctl",
            "-u",
            "admin",
            "dynsec",
            "create-client",
            "bob",
            "bob-pw",
            "--role",
            "r",
        ])
        .unwrap();
        assert_eq!(cli.ctl.username.as_deref(), Some("admin"));
        assert_eq!(cli.ctl.password, None);
        match cli.ctl.command {
            super::super::CtlCommand::Dynsec(Dynsec::CreateClient {
                user,
                secret,
                roles,
                ..
            }) => {
                assert_eq!(user, "bob");
                assert_eq!(secret.as_deref(), Some("bob-pw"));
                assert_eq!(roles, ["r"]);
            }
            other => panic!("{other:?}"),
        }
        let refused =
            Cli::try_parse_from(["ctl", "dynsec", "create-client", "b", "p", "--no-password"]);
        assert!(refused.is_err());
        assert!(
            Cli::try_parse_from([
                "ctl",
                "dynsec",
                "add-rule",
                "r",
                "publish",
                "deny",
                "a/#",
                "--priority",
                "-3"
            ])
            .is_ok()
        );
    }

    #[test]
    fn references_keep_the_order_given_as_priorities() {
        let v = refs(&["a".into(), "b".into(), "c".into()]);
        assert_eq!(
            v,
            json!([
                { "name": "a", "priority": 2 },
                { "name": "b", "priority": 1 },
                { "name": "c", "priority": 0 },
            ])
        );
        assert_eq!(names(Some(&v)), json!("a,b,c"));
        assert_eq!(names(None), json!(""));
    }
}
