//! `starling ctl`: the admin API (`/api/v1`) from the terminal. Clients, sessions,
//! subscriptions, retained messages, bans, listeners, bridges (and stopping and starting
//! one), stats, the running config, reload and the log level; a table by default, the API's
//! JSON with `--json`. Credentials: an API key (`--api-key` or `$STARLING_API_KEY`) or a
//! user of the broker's password file (`-u`/`-P`); `https://` URLs are verified against
//! `--cafile` or the system's CAs.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

// Children of this module, each in a file of its own: the HTTP client, and the dynamic
// security commands (which share it).
#[path = "ctl_api.rs"]
mod api;
#[path = "dynsec.rs"]
mod dynsec;

use api::{Api, enc, query};

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a page of the largest listing is far smaller).
const MAX_ANSWER: usize = 64 << 20;
/// Pages followed by `--all` at most (at the API's largest page, 10 million items).
const MAX_PAGES: usize = 10_000;

/// `starling ctl` arguments.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The broker's HTTP listener.
    #[arg(long, default_value = "http://127.0.0.1:18080", global = true)]
    url: String,
    /// API key (default: $STARLING_API_KEY).
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// User of the broker's password file with an admin or viewer role (HTTP basic auth).
    #[arg(short = 'u', long, global = true)]
    username: Option<String>,
    /// That user's password.
    #[arg(short = 'P', long, global = true)]
    password: Option<String>,
    /// CA certificates (PEM) for an https:// URL.
    #[arg(long, global = true, value_name = "FILE")]
    cafile: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
enum CtlCommand {
    /// Connected clients.
    #[command(subcommand)]
    Clients(Clients),
    /// Sessions, connected or not.
    #[command(subcommand)]
    Sessions(Sessions),
    /// Subscriptions.
    #[command(subcommand)]
    Subscriptions(Subscriptions),
    /// Retained messages.
    #[command(subcommand)]
    Retained(Retained),
    /// Bans by client id, username or address.
    #[command(subcommand)]
    Bans(Bans),
    /// Publish a message.
    Publish {
        /// Topic.
        topic: String,
        /// Payload (UTF-8).
        payload: String,
        /// QoS.
        #[arg(short, long, default_value_t = 0)]
        qos: u8,
        /// Retain it.
        #[arg(short, long)]
        retain: bool,
    },
    /// Listeners and their connections.
    Listeners,
    /// Bridges to other brokers and what they carried.
    Bridges,
    /// Stop or start a bridge.
    #[command(subcommand)]
    Bridge(Bridge),
    /// A snapshot of the broker's counters.
    Stats,
    /// The running configuration, secrets redacted.
    Config,
    /// Reload password files, ACL files and certificates (as SIGHUP).
    Reload,
    /// Show the log level, or set it (e.g. `info`, `starling=debug`).
    LogLevel {
        /// The new level.
        level: Option<String>,
    },
    /// Dynamic security: clients, groups, roles and API keys managed at run time.
    #[command(subcommand)]
    Dynsec(dynsec::Dynsec),
    /// The cluster this broker is a node of.
    #[command(subcommand)]
    Cluster(Cluster),
}

#[derive(Debug, Clone, Subcommand)]
enum Cluster {
    /// This node's role, the leader, the members and their incarnations, the log's positions.
    Status,
    /// Add a node: a learner that gets the log and serves clients, made a voter once it has
    /// caught up (unless --learner). Start the node first, with its own id among its seeds.
    Join {
        /// The node's id.
        id: u64,
        /// Its inter-node address, host:port.
        addr: String,
        /// Keep it a learner (it does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node (it stops voting and leaves); stop it afterwards.
    Leave {
        /// The node's id.
        id: u64,
    },
}

/// Paging shared by the listings.
#[derive(Debug, Clone, Args)]
struct Paging {
    /// Items per page (at most 1,000).
    #[arg(long)]
    limit: Option<usize>,
    /// Start after this cursor (the `next` of the previous page).
    #[arg(long)]
    after: Option<String>,
    /// Follow the cursors to the end.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Clone, Subcommand)]
enum Clients {
    /// List connected clients.
    List {
        /// Client ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// With this username.
        #[arg(long)]
        username: Option<String>,
        /// From this IP address.
        #[arg(long)]
        address: Option<String>,
        /// On this listener (as `starling ctl listeners` names it).
        #[arg(long)]
        listener: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One client in detail.
    Show {
        /// Client id.
        id: String,
    },
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98).
    Kick {
        /// Client id.
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum Sessions {
    /// List sessions.
    List {
        /// Client ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One session in detail.
    Show {
        /// Client id.
        id: String,
    },
    /// Discard a session (a connected client is disconnected first).
    Delete {
        /// Client id.
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum Subscriptions {
    /// List subscriptions, of one client or of one filter.
    List {
        /// Of this client.
        #[arg(long)]
        client_id: Option<String>,
        /// With exactly this filter.
        #[arg(long)]
        filter: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Subscribe a client's session to a filter.
    Add {
        /// Client id.
        client_id: String,
        /// Topic filter.
        filter: String,
        /// QoS.
        #[arg(short, long, default_value_t = 0)]
        qos: u8,
    },
    /// Remove a subscription.
    Remove {
        /// Client id.
        client_id: String,
        /// Topic filter.
        filter: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum Retained {
    /// List retained messages matching a filter (default `#`).
    List {
        /// Topic filter.
        #[arg(long)]
        filter: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// One retained message.
    Show {
        /// Topic.
        topic: String,
    },
    /// Clear a retained message.
    Delete {
        /// Topic.
        topic: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum Bans {
    /// List bans.
    List,
    /// Ban a client id, username or address.
    Add {
        /// `clientid`, `username` or `address`.
        kind: String,
        /// What is banned.
        value: String,
        /// Why (shown in listings and logs).
        #[arg(long, default_value = "")]
        reason: String,
        /// Lifted after this many seconds (default: until removed).
        #[arg(long)]
        duration_secs: Option<u64>,
    },
    /// Lift a ban.
    Remove {
        /// `clientid`, `username` or `address`.
        kind: String,
        /// What was banned.
        value: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
enum Bridge {
    /// Disconnect a bridge from its remote and keep it disconnected (its local session keeps
    /// queueing what it would send, within its queue bounds).
    Stop {
        /// The bridge's name.
        name: String,
    },
    /// Connect a stopped bridge again, at once.
    Start {
        /// The bridge's name.
        name: String,
    },
}

/// Why a ctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The URL is not one this client can use.
    #[error("invalid URL {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Url(String),
    /// The listener could not be reached.
    #[error("cannot reach {url}: {cause}")]
    Connect {
        /// The URL.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The API answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's `code: message`.
        message: String,
    },
    /// The request did not finish in time.
    #[error("no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// Reading input (a password) failed.
    #[error("{0}")]
    Input(String),
}

/// Runs `starling ctl`; returns the exit status (0, or 1 with the error on stderr).
pub fn run(args: CtlArgs) -> i32 {
    match super::block_on(execute(&args)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("Error: {e}");
            1
        }
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

async fn execute(args: &CtlArgs) -> Result<(), CtlError> {
    let api = Api::new(args)?;
    match &args.command {
        CtlCommand::Clients(c) => match c {
            Clients::List {
                prefix,
                username,
                address,
                listener,
                paging,
            } => {
                let q = vec![
                    ("prefix", prefix.clone()),
                    ("username", username.clone()),
                    ("address", address.clone()),
                    ("listener", listener.clone()),
                ];
                let cols = [
                    "client_id",
                    "username",
                    "address",
                    "protocol",
                    "listener",
                    "inflight",
                    "queued",
                    "subscriptions",
                ];
                api.list("/clients", q, paging, &cols).await
            }
            Clients::Show { id } => {
                let v = api
                    .call("GET", &format!("/clients/{}", enc(id)), None)
                    .await?;
                api.show(&v);
                Ok(())
            }
            Clients::Kick { id } => {
                api.call("DELETE", &format!("/clients/{}", enc(id)), None)
                    .await?;
                api.done(&format!("kicked {id}"));
                Ok(())
            }
        },
        CtlCommand::Sessions(s) => match s {
            Sessions::List { prefix, paging } => {
                let cols = [
                    "client_id",
                    "connected",
                    "protocol",
                    "session_expiry_secs",
                    "inflight",
                    "queued",
                    "subscriptions",
                ];
                api.list("/sessions", vec![("prefix", prefix.clone())], paging, &cols)
                    .await
            }
            Sessions::Show { id } => {
                let v = api
                    .call("GET", &format!("/sessions/{}", enc(id)), None)
                    .await?;
                api.show(&v);
                Ok(())
            }
            Sessions::Delete { id } => {
                api.call("DELETE", &format!("/sessions/{}", enc(id)), None)
                    .await?;
                api.done(&format!("deleted the session of {id}"));
                Ok(())
            }
        },
        CtlCommand::Subscriptions(s) => match s {
            Subscriptions::List {
                client_id,
                filter,
                paging,
            } => {
                let q = vec![("client_id", client_id.clone()), ("filter", filter.clone())];
                let cols = [
                    "client_id",
                    "filter",
                    "qos",
                    "no_local",
                    "retain_as_published",
                    "retain_handling",
                ];
                api.list("/subscriptions", q, paging, &cols).await
            }
            Subscriptions::Add {
                client_id,
                filter,
                qos,
            } => {
                let body = json!({ "client_id": client_id, "filter": filter, "qos": qos });
                api.call("POST", "/subscriptions", Some(body)).await?;
                api.done(&format!("subscribed {client_id} to {filter}"));
                Ok(())
            }
            Subscriptions::Remove { client_id, filter } => {
                let q = query(&[
                    ("client_id", Some(client_id.clone())),
                    ("filter", Some(filter.clone())),
                ]);
                api.call("DELETE", &format!("/subscriptions{q}"), None)
                    .await?;
                api.done(&format!("unsubscribed {client_id} from {filter}"));
                Ok(())
            }
        },
        CtlCommand::Retained(r) => match r {
            Retained::List { filter, paging } => {
                let cols = ["topic", "qos", "size", "payload"];
                api.list("/retained", vec![("filter", filter.clone())], paging, &cols)
                    .await
            }
            Retained::Show { topic } => {
                let v = api
                    .call("GET", &format!("/retained/{}", topic_path(topic)), None)
                    .await?;
                api.show(&v);
                Ok(())
            }
            Retained::Delete { topic } => {
                api.call("DELETE", &format!("/retained/{}", topic_path(topic)), None)
                    .await?;
                api.done(&format!("cleared the retained message of {topic}"));
                Ok(())
            }
        },
        CtlCommand::Bans(b) => match b {
            Bans::List => {
                api.table(
                    "/banned",
                    &["kind", "value", "reason", "since_ms", "expires_ms"],
                )
                .await?;
                Ok(())
            }
            Bans::Add {
                kind,
                value,
                reason,
                duration_secs,
            } => {
                let body = json!({ "kind": kind, "value": value, "reason": reason, "duration_secs": duration_secs });
                api.call("POST", "/banned", Some(body)).await?;
                api.done(&format!("banned {kind} {value}"));
                Ok(())
            }
            Bans::Remove { kind, value } => {
                api.call(
                    "DELETE",
                    &format!("/banned/{}/{}", enc(kind), enc(value)),
                    None,
                )
                .await?;
                api.done(&format!("lifted the ban on {kind} {value}"));
                Ok(())
            }
        },
        CtlCommand::Publish {
            topic,
            payload,
            qos,
            retain,
        } => {
            let body = json!({ "topic": topic, "payload": payload, "qos": qos, "retain": retain });
            api.call("POST", "/publish", Some(body)).await?;
            api.done(&format!("published to {topic}"));
            Ok(())
        }
        CtlCommand::Listeners => {
            api.table(
                "/listeners",
                &[
                    "name",
                    "protocol",
                    "address",
                    "state",
                    "connections",
                    "accepted",
                ],
            )
            .await?;
            Ok(())
        }
        CtlCommand::Bridges => {
            api.table(
                "/bridges",
                &[
                    "name",
                    "connected",
                    "state",
                    "messages_out",
                    "messages_in",
                    "pending",
                    "queued",
                    "reconnects",
                    "dropped",
                ],
            )
            .await?;
            Ok(())
        }
        CtlCommand::Bridge(b) => {
            let (name, action, done) = match b {
                Bridge::Stop { name } => (name, "stop", "stopped"),
                Bridge::Start { name } => (name, "start", "started"),
            };
            let path = format!("/bridges/{}/{action}", enc(name));
            api.call("POST", &path, None).await?;
            api.done(&format!("{done} bridge {name}"));
            Ok(())
        }
        CtlCommand::Stats => {
            let v = api.call("GET", "/stats", None).await?;
            api.show(&v);
            Ok(())
        }
        CtlCommand::Config => {
            let v = api.call("GET", "/config", None).await?;
            api.show(&v);
            Ok(())
        }
        CtlCommand::Reload => {
            let v = api.call("POST", "/reload", None).await?;
            api.show(&v);
            Ok(())
        }
        CtlCommand::LogLevel { level } => {
            let v = match level {
                Some(l) => {
                    api.call("PUT", "/log-level", Some(json!({ "level": l })))
                        .await?
                }
                None => api.call("GET", "/log-level", None).await?,
            };
            api.show(&v);
            Ok(())
        }
        CtlCommand::Dynsec(d) => dynsec::run(&api, d).await,
        CtlCommand::Cluster(Cluster::Status) => {
            let v = api.call("GET", "/cluster", None).await?;
            api.show(&v);
            Ok(())
        }
        CtlCommand::Cluster(Cluster::Join { id, addr, learner }) => {
            let body = json!({ "id": id, "addr": addr, "voter": !learner });
            let v = api.call("POST", "/cluster/members", Some(body)).await?;
            api.show(&v);
            Ok(())
        }
        CtlCommand::Cluster(Cluster::Leave { id }) => {
            let v = api
                .call("DELETE", &format!("/cluster/members/{id}"), None)
                .await?;
            api.show(&v);
            Ok(())
        }
    }
}

/// A topic as the tail of a path: each level encoded, the `/` kept.
fn topic_path(topic: &str) -> String {
    topic.split('/').map(enc).collect::<Vec<_>>().join("/")
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.replace(['\n', '\t'], " "),
        Some(other) => other.to_string(),
    }
}

/// Prints rows under a header, columns as wide as their widest cell.
fn print_table(columns: &[&str], items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(item.get(*c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .chain(std::iter::once(c.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

/// Prints an object as indented `key: value` lines.
fn print_object(v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                match val {
                    Value::Object(_) => {
                        println!("{pad}{k}:");
                        print_object(val, depth + 1);
                    }
                    Value::Array(items) if items.iter().any(Value::is_object) => {
                        println!("{pad}{k}:");
                        for item in items {
                            println!("{pad}  -");
                            print_object(item, depth + 2);
                        }
                    }
                    other => println!("{pad}{k}: {}", cell(Some(other))),
                }
            }
        }
        other => println!("{pad}{}", cell(Some(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(enc("a b/c%"), "a%20b%2Fc%25");
        assert_eq!(topic_path("a b/c"), "a%20b/c");
        assert_eq!(
            query(&[
                ("a", Some("x y".into())),
                ("b", None),
                ("c", Some("1".into()))
            ]),
            "?a=x%20y&c=1"
        );
        assert_eq!(query(&[("b", None)]), "");
    }
}
