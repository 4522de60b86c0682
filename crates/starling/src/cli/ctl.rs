//! `starling ctl`: the admin API (`/api/v1`) from the terminal. Clients, sessions,
//! subscriptions, retained messages, bans, listeners, bridges (and stopping and starting
//! one), stats, the running config, reload and the log level; a table by default, the API's
//! JSON with `--json`. Credentials: an API key (`--api-key` or `$STARLING_API_KEY`) or a
//! user of the broker's password file (`-u`/`-P`); `https://` URLs are verified against
//! `--cafile` or the system's CAs.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

// A child of this module (so that it shares the private HTTP client), in a file of its own.
#[path = "dynsec.rs"]
mod dynsec;

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

/// Percent-encodes one path segment or query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

struct Api<'a> {
    args: &'a CtlArgs,
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
}

impl<'a> Api<'a> {
    fn new(args: &'a CtlArgs) -> Result<Self, CtlError> {
        let bad = || CtlError::Url(args.url.clone());
        let (tls, rest) = if let Some(r) = args.url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = args.url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().map_err(|_| bad())?,
            ),
            _ => (authority.to_string(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            args,
            tls,
            host,
            port,
            base_path: if path == "/" { String::new() } else { path },
        })
    }

    fn authorization(&self) -> Option<String> {
        let key = self
            .args
            .api_key
            .clone()
            .or_else(|| std::env::var("STARLING_API_KEY").ok());
        if let Some(k) = key {
            return Some(format!("Bearer {k}"));
        }
        let user = self.args.username.as_ref()?;
        let pass = self.args.password.clone().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {token}"))
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(CtlError::Timeout),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let url = self.args.url.clone();
        let connect_err = |cause: String| CtlError::Connect {
            url: url.clone(),
            cause,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_err(super::net::io_message(&e)))?;
        let stream: Box<dyn super::net::Stream> = if self.tls {
            let config = super::net::https_config(self.args.cafile.as_deref())
                .map_err(|e| connect_err(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|_| CtlError::Url(url.clone()))?;
            let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| connect_err(format!("TLS: {}", super::net::io_message(&e))))?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/api/v1{path}", self.base_path))
            .header(HOST, format!("{}:{}", self.host, self.port));
        if let Some(auth) = self.authorization() {
            req = req.header(AUTHORIZATION, auth);
        }
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| CtlError::Http(e.to_string()))?
            .to_bytes();
        driver.abort();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let code = value.get("code").and_then(Value::as_str).unwrap_or("error");
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_string);
            Err(CtlError::Api {
                status: status.as_u16(),
                message: format!("{code}: {message}"),
            })
        }
    }

    /// A listing, page by page (all pages with `--all`), printed as it comes.
    async fn list(
        &self,
        path: &str,
        mut pairs: Vec<(&str, Option<String>)>,
        paging: &Paging,
        columns: &[&str],
    ) -> Result<(), CtlError> {
        pairs.push(("limit", paging.limit.map(|l| l.to_string())));
        let mut after = paging.after.clone();
        let mut items = Vec::new();
        let mut next = None;
        for _ in 0..MAX_PAGES {
            let mut q = pairs.clone();
            q.push(("after", after.clone()));
            let page = self
                .call("GET", &format!("{path}{}", query(&q)), None)
                .await?;
            if let Some(list) = page.get("items").and_then(Value::as_array) {
                items.extend(list.iter().cloned());
            }
            next = page.get("next").and_then(Value::as_str).map(str::to_string);
            if !paging.all || next.is_none() {
                break;
            }
            after = next.clone();
        }
        if self.args.json {
            println!("{}", json!({ "items": items, "next": next }));
        } else {
            print_table(columns, &items);
            if let Some(n) = next {
                println!("(more: --after {n})");
            }
        }
        Ok(())
    }

    /// A listing without paging (`{"items": [...]}`), as a table or JSON.
    async fn table(&self, path: &str, columns: &[&str]) -> Result<(), CtlError> {
        let v = self.call("GET", path, None).await?;
        if self.args.json {
            println!("{v}");
        } else {
            let items = v.get("items").and_then(Value::as_array);
            print_table(columns, items.map_or(&[][..], Vec::as_slice));
        }
        Ok(())
    }

    fn show(&self, v: &Value) {
        if self.args.json {
            println!("{v}");
        } else {
            print_object(v, 0);
        }
    }

    fn done(&self, what: &str) {
        if self.args.json {
            println!("{}", json!({ "ok": true }));
        } else {
            println!("{what}");
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
