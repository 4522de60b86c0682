//! Authentication and authorization by an HTTP service (`[auth.http]`): the broker asks the
//! service whether a client may connect (`url`) and whether it may publish or subscribe
//! (`acl_url`), and caches the answers. Services written for EMQX's HTTP authentication or
//! for mosquitto-go-auth's HTTP backend work as they are.
//!
//! # The requests
//!
//! A POST with a JSON object (`body = "json"`, the default) or a form (`body = "form"`), or a
//! GET with the same fields as query parameters (`method = "get"`; the password then appears
//! in the service's access logs, so prefer POST). Absent values are left out.
//!
//! Authentication (`url`): `clientid`, `username`, `password` (its UTF-8 text; a password
//! that is not UTF-8 is sent in base64 with `"password_base64": true`), `ip` and `port` of the
//! client, `listener` (its name), `cert_identity` (the identity of a verified client
//! certificate).
//!
//! Authorization (`acl_url`): `clientid`, `username`, `action` (`"publish"` or
//! `"subscribe"`), `topic` (a topic name, or a filter without any `$share/{group}/` prefix),
//! and `acc`, mosquitto-go-auth's code: 2 for publish, 4 for subscribe.
//!
//! Receiving a message is never asked (it happens on every delivery, which cannot wait for a
//! service): reads are authorized by the subscribe check, as in EMQX, and the backend answers
//! "not mine" for them so that the next backend, or the chain's default, decides.
//!
//! # The answers
//!
//! - 2xx with an empty body: allow.
//! - 2xx with a JSON object: `"result"` (EMQX's convention) is `"allow"`, `"deny"` or
//!   `"ignore"` (not mine: the next backend is asked); else `"ok"` (mosquitto-go-auth's) is
//!   `true` or `false`, with an optional `"error"` text that is logged; an object with
//!   neither allows. `"is_superuser"` is ignored. An allowing authentication answer may add
//!   - `"username"`: the identity the broker uses from then on instead of the one sent;
//!   - `"expire_at"`: Unix time (seconds) when the credentials end: the connection is closed
//!     then unless the client re-authenticates; a time already past refuses;
//!   - `"acl"`: rules for the session, checked before the listener's: a list of rules
//!     `{"permission": "allow" | "deny", "action": "publish" | "subscribe" | "all",
//!     "topic": "..."}` (or `"topics": [...]`), of plain topic strings (publish and
//!     subscribe), or an object `{"pub": [...], "sub": [...], "all": [...]}`. `%c` and `%u`
//!     stand for the client id and username. A deny rule refuses both directions. A rule
//!     with a condition the broker does not check (`qos`, `retain`, ...) is left out when it
//!     allows and applied without the condition when it denies: never more access than the
//!     service meant. What no rule grants is refused.
//! - 4xx (401 and 403 in mosquitto-go-auth's convention): deny; the body is not needed.
//! - Anything else is a failure: 5xx, 3xx (redirects are not followed), 408, 429, no answer
//!   within `timeout_ms` (waiting for one of `max_connections` slots included), a refused
//!   connection, a body over 64 KiB, a body that is not a JSON object or has values of the
//!   wrong kind. Failures are counted, logged (never with the password) and answered by
//!   `on_error`: `"deny"` (the default: CONNACK 0x87, the action refused) or `"pass"` (not
//!   mine).
//!
//! A refused CONNECT gets 0x86 Bad user name or password (3.1.1: return code 4).
//!
//! # The cache
//!
//! Answers are cached under a SHA-256 of what was sent (the password only as its own
//! SHA-256, and without the client's port, which changes with every connection): allowing
//! ones for `cache_ttl_secs` (at most until `expire_at`), refusing and "ignore" ones for
//! `deny_cache_ttl_secs`; failures are not cached. The authentication and the ACL caches hold
//! at most `cache_max_entries` answers each (and 64 MiB); when full, the oldest answers go.
//! A cached answer is given at once; only a miss waits for the service.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine as _;
use reqwest::header::{ACCEPT, HeaderMap};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use starling_auth::acl::Access;
use starling_auth::{
    AclBackend, AclFile, Action, Answer, AuthBackend, Client, ConnectInfo, DenyReason, Grant,
    Verdict,
};
use starling_broker::config::Bound;
use tracing::debug;

use super::remote::{
    self, Cache, ClientSettings, Failure, Key, KeyBuilder, Remote, Reply, bump, unix_now,
};
pub use super::remote::{HttpAuthStats, HttpAuthStatsSnapshot, OnError};

/// The HTTP method of the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMethod {
    /// POST, the fields in the body.
    #[default]
    Post,
    /// GET, the fields as query parameters.
    Get,
}

/// How a POST carries the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// A JSON object.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// `[auth.http]`: an HTTP authentication and authorization service.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// Where CONNECTs are checked; unset: this backend does not authenticate.
    pub url: Option<String>,
    /// Where publishes and subscriptions are checked; unset: it does not authorize.
    pub acl_url: Option<String>,
    /// `post` (default) or `get`.
    pub method: HttpMethod,
    /// `json` (default) or `form`, for POST.
    pub body: BodyFormat,
    /// Extra request headers (an API key, say). Shown redacted by the admin API.
    #[serde(serialize_with = "remote::serialize_redacted")]
    pub headers: BTreeMap<String, String>,
    /// Longest a question may take, milliseconds, waiting for a slot included.
    pub timeout_ms: u64,
    /// Requests to the service at once; more wait for a slot within `timeout_ms`.
    pub max_connections: usize,
    /// How long allowing answers are reused, seconds; 0: none is.
    pub cache_ttl_secs: u64,
    /// Answers each cache (authentication, ACL) holds at most.
    pub cache_max_entries: usize,
    /// How long refusing and "ignore" answers are reused, seconds; 0: none is.
    pub deny_cache_ttl_secs: u64,
    /// The answer when the service fails: `deny` (default) or `pass`.
    pub on_error: OnError,
    /// The CA (PEM) that signed the service's certificate; set, it is the only one trusted.
    /// Unset: the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        Self {
            url: None,
            acl_url: None,
            method: HttpMethod::Post,
            body: BodyFormat::Json,
            headers: BTreeMap::new(),
            timeout_ms: 5_000,
            max_connections: 32,
            cache_ttl_secs: 60,
            cache_max_entries: 100_000,
            deny_cache_ttl_secs: 10,
            on_error: OnError::Deny,
            ca_file: None,
        }
    }
}

impl fmt::Debug for HttpAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values usually carry credentials: only their names.
        f.debug_struct("HttpAuthConfig")
            .field("url", &self.url)
            .field("acl_url", &self.acl_url)
            .field("method", &self.method)
            .field("body", &self.body)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_connections", &self.max_connections)
            .field("cache_ttl_secs", &self.cache_ttl_secs)
            .field("cache_max_entries", &self.cache_max_entries)
            .field("deny_cache_ttl_secs", &self.deny_cache_ttl_secs)
            .field("on_error", &self.on_error)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl HttpAuthConfig {
    /// Every numeric key with its value and its bound.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 5] {
        remote::bounded(
            self.timeout_ms,
            self.max_connections,
            self.cache_ttl_secs,
            self.cache_max_entries,
            self.deny_cache_ttl_secs,
        )
    }

    /// Checks the table as `[auth.http]`; errors name `auth.http.<key>`.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_at("auth.http")
    }

    /// Checks the table; errors name `<prefix>.<key>` (for a table elsewhere, e.g. in an
    /// array: `auth.http[1]`). The files (`ca_file`) are read by [`HttpBackend::build`].
    pub fn validate_at(&self, prefix: &str) -> anyhow::Result<()> {
        self.urls(prefix)?;
        remote::check_bounds(prefix, self.bounded())?;
        remote::header_map(&format!("{prefix}.headers"), &self.headers)?;
        Ok(())
    }

    fn urls(&self, prefix: &str) -> anyhow::Result<(Option<Url>, Option<Url>)> {
        if self.url.is_none() && self.acl_url.is_none() {
            bail!("{prefix}.url: required unless {prefix}.acl_url is set");
        }
        let parse = |key: &str, u: &Option<String>| {
            u.as_deref()
                .map(|u| remote::parse_url(&format!("{prefix}.{key}"), u))
                .transpose()
        };
        Ok((parse("url", &self.url)?, parse("acl_url", &self.acl_url)?))
    }
}

/// The HTTP authentication and authorization backend: kind `http` in both chains.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    auth_url: Option<Url>,
    acl_url: Option<Url>,
    method: HttpMethod,
    body: BodyFormat,
    headers: HeaderMap,
    remote: Remote,
    auth_cache: Cache<Cached>,
    acl_cache: Cache<Option<bool>>,
    allow_ttl: Duration,
    deny_ttl: Duration,
    on_error: OnError,
}

impl HttpBackend {
    /// Builds the backend of `[auth.http]` (errors name `auth.http.<key>`).
    pub fn build(config: &HttpAuthConfig) -> anyhow::Result<Arc<Self>> {
        Self::build_at(config, "auth.http")
    }

    /// Builds the backend of the table `prefix`: validates it and reads `ca_file`.
    pub fn build_at(config: &HttpAuthConfig, prefix: &str) -> anyhow::Result<Arc<Self>> {
        config.validate_at(prefix)?;
        let (auth_url, acl_url) = config.urls(prefix)?;
        for (key, url) in [("url", &auth_url), ("acl_url", &acl_url)] {
            if let Some(u) = url {
                remote::warn_if_plain(&format!("{prefix}.{key}"), u);
            }
        }
        let headers = remote::header_map(&format!("{prefix}.headers"), &config.headers)?;
        let remote = Remote::new(&ClientSettings {
            kind: "http",
            timeout: Duration::from_millis(config.timeout_ms),
            max_connections: config.max_connections,
            ca_file: config.ca_file.as_deref(),
            ca_key: format!("{prefix}.ca_file"),
        })?;
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                auth_url,
                acl_url,
                method: config.method,
                body: config.body,
                headers,
                remote,
                auth_cache: Cache::new(config.cache_max_entries),
                acl_cache: Cache::new(config.cache_max_entries),
                allow_ttl: Duration::from_secs(config.cache_ttl_secs),
                deny_ttl: Duration::from_secs(config.deny_cache_ttl_secs),
                on_error: config.on_error,
            }),
        }))
    }

    /// The backend's counters.
    pub fn stats(&self) -> Arc<HttpAuthStats> {
        Arc::clone(self.inner.remote.stats())
    }

    /// Whether it authenticates (`url` is set).
    pub fn authenticates(&self) -> bool {
        self.inner.auth_url.is_some()
    }

    /// Whether it authorizes (`acl_url` is set).
    pub fn authorizes(&self) -> bool {
        self.inner.acl_url.is_some()
    }
}

/// A field's value, typed for JSON and as text for forms and queries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Text(String),
    Number(u64),
    Flag(bool),
}

type Fields = Vec<(&'static str, Field)>;

fn json_body(fields: &Fields) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        let v = match v {
            Field::Text(s) => Value::from(s.as_str()),
            Field::Number(n) => Value::from(*n),
            Field::Flag(b) => Value::from(*b),
        };
        m.insert((*k).to_owned(), v);
    }
    Value::Object(m)
}

fn form_pairs(fields: &Fields) -> Vec<(&'static str, String)> {
    fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Field::Text(s) => s.clone(),
                Field::Number(n) => n.to_string(),
                Field::Flag(b) => b.to_string(),
            };
            (*k, v)
        })
        .collect()
}

/// What an authentication request sends.
fn auth_fields(info: &ConnectInfo<'_>) -> Fields {
    let mut f: Fields = vec![("clientid", Field::Text(info.client_id.to_owned()))];
    if let Some(u) = info.username {
        f.push(("username", Field::Text(u.to_owned())));
    }
    if let Some(p) = info.password {
        match std::str::from_utf8(p) {
            Ok(text) => f.push(("password", Field::Text(text.to_owned()))),
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(p);
                f.push(("password", Field::Text(b64)));
                f.push(("password_base64", Field::Flag(true)));
            }
        }
    }
    if let Some(peer) = info.peer {
        f.push(("ip", Field::Text(peer.ip().to_canonical().to_string())));
        f.push(("port", Field::Number(peer.port().into())));
    }
    f.push(("listener", Field::Text(info.listener.to_owned())));
    if let Some(c) = info.certificate_identity {
        f.push(("cert_identity", Field::Text(c.to_owned())));
    }
    if let Some(uid) = info.unix_uid {
        f.push(("unix_uid", Field::Number(uid.into())));
    }
    f
}

/// The cache key of an authentication: what it sends, the password as its SHA-256, not the
/// port (a new one on every connection, and no service decides on it).
fn auth_key(info: &ConnectInfo<'_>) -> Key {
    let password = info.password.map(remote::digest);
    let ip = info.peer.map(|p| p.ip().to_canonical().to_string());
    KeyBuilder::default()
        .field(b"auth")
        .field(info.client_id.as_bytes())
        .opt(info.username.map(str::as_bytes))
        .opt(password.as_ref().map(|d| d.as_slice()))
        .opt(ip.as_deref().map(str::as_bytes))
        .field(info.listener.as_bytes())
        .opt(info.certificate_identity.map(str::as_bytes))
        .opt(
            info.unix_uid
                .map(u32::to_be_bytes)
                .as_ref()
                .map(|b| b.as_slice()),
        )
        .finish()
}

/// mosquitto's access codes, as mosquitto-go-auth sends them: 1 read, 2 write, 4 subscribe.
fn acc(action: Action) -> u64 {
    match action {
        Action::Read => 1,
        Action::Publish => 2,
        Action::Subscribe => 4,
    }
}

fn acl_fields(client: &Client<'_>, action: Action, topic: &str) -> Fields {
    let mut f: Fields = vec![("clientid", Field::Text(client.client_id.to_owned()))];
    if let Some(u) = client.username {
        f.push(("username", Field::Text(u.to_owned())));
    }
    f.push(("action", Field::Text(action.as_str().to_owned())));
    f.push(("topic", Field::Text(topic.to_owned())));
    f.push(("acc", Field::Number(acc(action))));
    f
}

fn acl_key(client: &Client<'_>, action: Action, topic: &str) -> Key {
    KeyBuilder::default()
        .field(b"acl")
        .field(client.client_id.as_bytes())
        .opt(client.username.map(str::as_bytes))
        .field(action.as_str().as_bytes())
        .field(topic.as_bytes())
        .finish()
}

// The answers of the service, read: in a file of their own.
#[path = "http_reply.rs"]
mod reply;

use reply::{Outcome, parse_reply};

/// An authentication answer as cached: `expire_at` stays absolute, so that a cached grant's
/// `valid_for` is counted from when it is given.
#[derive(Debug, Clone)]
enum Cached {
    Allow {
        username: Option<String>,
        acl: Option<Arc<AclFile>>,
        expire_at: Option<u64>,
    },
    Deny,
    Ignore,
}

impl Cached {
    fn verdict(&self, now: u64) -> Verdict {
        match self {
            Self::Allow {
                username,
                acl,
                expire_at,
            } => {
                let valid_for = match *expire_at {
                    None => None,
                    Some(t) if t > now => Some(Duration::from_secs(t - now)),
                    Some(_) => return Verdict::Deny(DenyReason::BadUserNameOrPassword),
                };
                Verdict::Allow(Grant {
                    username: username.clone(),
                    acl: acl.clone(),
                    valid_for,
                })
            }
            Self::Deny => Verdict::Deny(DenyReason::BadUserNameOrPassword),
            Self::Ignore => Verdict::Pass,
        }
    }
}

impl Inner {
    fn caching(&self) -> bool {
        !self.allow_ttl.is_zero() || !self.deny_ttl.is_zero()
    }

    fn request(&self, url: &Url, fields: &Fields) -> reqwest::RequestBuilder {
        let method = match self.method {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Get => reqwest::Method::GET,
        };
        let b = self
            .remote
            .client()
            .request(method, url.clone())
            .headers(self.headers.clone())
            .header(ACCEPT, "application/json");
        match (self.method, self.body) {
            (HttpMethod::Get, _) => b.query(&form_pairs(fields)),
            (HttpMethod::Post, BodyFormat::Json) => b.json(&json_body(fields)),
            (HttpMethod::Post, BodyFormat::Form) => b.form(&form_pairs(fields)),
        }
    }

    fn count(&self, o: Outcome) {
        let s = self.remote.stats();
        bump(match o {
            Outcome::Allow => &s.allowed,
            Outcome::Deny => &s.denied,
            Outcome::Ignore => &s.ignored,
        });
    }

    /// Asks the service whether a client may connect; `fields` hold the password and are
    /// dropped as soon as the request is built.
    async fn authenticate(
        &self,
        fields: Fields,
        key: Key,
        client_id: String,
        username: Option<String>,
    ) -> Verdict {
        let Some(url) = &self.auth_url else {
            return Verdict::Pass;
        };
        let request = self.request(url, &fields);
        drop(fields);
        let parse = |r: Reply| parse_reply(r.status, &r.body, true);
        let p = match self
            .remote
            .ask(request, "authentication", &client_id, parse)
            .await
        {
            Ok(p) => p,
            Err(_) => {
                return match self.on_error {
                    OnError::Deny => Verdict::Deny(DenyReason::NotAuthorized),
                    OnError::Pass => Verdict::Pass,
                };
            }
        };
        let o = p.outcome;
        self.count(o);
        if let (Outcome::Deny, Some(e)) = (o, &p.error) {
            debug!(backend = "http", client_id, "authentication refused: {e}");
        }
        let now = unix_now();
        let (cached, ttl, bytes) = match o {
            Outcome::Allow => {
                let until_expiry = p
                    .expire_at
                    .map(|t| Duration::from_secs(t.saturating_sub(now)));
                let ttl = until_expiry.map_or(self.allow_ttl, |d| d.min(self.allow_ttl));
                let username = p.username.or(username);
                let bytes = p.acl_bytes + username.as_ref().map_or(0, String::len);
                let acl = p.acl.map(Arc::new);
                let c = Cached::Allow {
                    username,
                    acl,
                    expire_at: p.expire_at,
                };
                (c, ttl, bytes)
            }
            Outcome::Deny => (Cached::Deny, self.deny_ttl, 0),
            Outcome::Ignore => (Cached::Ignore, self.deny_ttl, 0),
        };
        let verdict = cached.verdict(now);
        self.auth_cache
            .insert(key, cached, ttl, bytes, Instant::now());
        verdict
    }

    /// Asks the service whether a client may publish or subscribe.
    async fn authorize(&self, fields: Fields, key: Key, client_id: String) -> Option<bool> {
        let url = self.acl_url.as_ref()?;
        let request = self.request(url, &fields);
        let parse = |r: Reply| parse_reply(r.status, &r.body, false);
        let o = match self
            .remote
            .ask(request, "authorization", &client_id, parse)
            .await
        {
            Ok(p) => {
                if let (Outcome::Deny, Some(e)) = (p.outcome, &p.error) {
                    debug!(backend = "http", client_id, "authorization refused: {e}");
                }
                p.outcome
            }
            Err(_) => {
                return match self.on_error {
                    OnError::Deny => Some(false),
                    OnError::Pass => None,
                };
            }
        };
        self.count(o);
        let (answer, ttl) = match o {
            Outcome::Allow => (Some(true), self.allow_ttl),
            Outcome::Deny => (Some(false), self.deny_ttl),
            Outcome::Ignore => (None, self.deny_ttl),
        };
        self.acl_cache.insert(key, answer, ttl, 0, Instant::now());
        answer
    }
}

impl AuthBackend for HttpBackend {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        let inner = &self.inner;
        if inner.auth_url.is_none() {
            return Answer::Now(Verdict::Pass);
        }
        let key = auth_key(info);
        if inner.caching() {
            let stats = inner.remote.stats();
            if let Some(c) = inner.auth_cache.get(&key, Instant::now()) {
                bump(&stats.cache_hits);
                return Answer::Now(c.verdict(unix_now()));
            }
            bump(&stats.cache_misses);
        }
        let fields = auth_fields(info);
        let client_id = info.client_id.to_owned();
        let username = info.username.map(str::to_owned);
        let inner = Arc::clone(&self.inner);
        Answer::Later(Box::pin(async move {
            inner.authenticate(fields, key, client_id, username).await
        }))
    }
}

impl AclBackend for HttpBackend {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn check(&self, client: &Client<'_>, action: Action, topic: &str) -> Answer<Option<bool>> {
        let inner = &self.inner;
        // Reads are authorized by the subscribe check (see the module's documentation).
        if inner.acl_url.is_none() || action == Action::Read {
            return Answer::Now(None);
        }
        let key = acl_key(client, action, topic);
        if inner.caching() {
            let stats = inner.remote.stats();
            if let Some(answer) = inner.acl_cache.get(&key, Instant::now()) {
                bump(&stats.cache_hits);
                return Answer::Now(answer);
            }
            bump(&stats.cache_misses);
        }
        let fields = acl_fields(client, action, topic);
        let client_id = client.client_id.to_owned();
        let inner = Arc::clone(&self.inner);
        Answer::Later(Box::pin(async move {
            inner.authorize(fields, key, client_id).await
        }))
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
