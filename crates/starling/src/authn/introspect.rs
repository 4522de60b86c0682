//! OAuth 2.0 token introspection (RFC 7662) as an authentication backend
//! (`[auth.introspection]`): a client presents an access token as its password (or user
//! name, `token_from`), and the authorization server says whether the token is active and
//! whose it is.
//!
//! The request (RFC 7662 section 2.1): a POST of `token=...&token_type_hint=access_token`
//! (`application/x-www-form-urlencoded`) to `url`, authenticated with HTTP basic
//! authentication as `client_id` and `client_secret` (or the first line of
//! `client_secret_file`), each form-encoded first as RFC 6749 section 2.3.1 says.
//!
//! The answer (section 2.2), a JSON object:
//! - `"active": false` refuses (CONNACK 0x86 Bad user name or password);
//! - `"active": true` allows when: `exp`, if present, is in the future and `nbf`, if
//!   present, in the past; `iss` equals `issuer`, if configured; `aud` (a string or a list)
//!   holds `audience`, if configured; the space-separated `scope` holds every scope of
//!   `required_scope`, if configured; the claim `client_id_claim`, if configured, equals the
//!   MQTT client id. A failed check refuses with 0x87 Not authorized (0x86 for an expired
//!   token).
//! - The client's username becomes the claim `username_claim` (default `username`), or else
//!   `sub`; a token with neither is refused (0x87). The connection ends at `exp` unless the
//!   client re-authenticates.
//!
//! A client without a token (empty, not UTF-8, or with spaces or control characters: not
//! something an authorization server issued) is passed to the next backend.
//!
//! Answers are cached under the token's SHA-256 (the client id check is made again on every
//! use): active ones for `cache_ttl_secs` but never past `exp`, refusals for
//! `deny_cache_ttl_secs`, at most `cache_max_entries` of them (when full, the oldest go).
//! A non-2xx status, no answer within `timeout_ms`, a refused connection, or an answer that is
//! not a JSON object with a boolean `active` is a failure, answered by `on_error` as in
//! [`super::http`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use starling_auth::{Answer, AuthBackend, ConnectInfo, DenyReason, Grant, Verdict};
use starling_broker::config::Bound;

use super::remote::{
    self, Cache, ClientSettings, Failure, KeyBuilder, Remote, Reply, bump, unix_now,
};
pub use super::remote::{HttpAuthStats, HttpAuthStatsSnapshot, OnError};

/// Where the client puts its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenFrom {
    /// The CONNECT Password.
    #[default]
    Password,
    /// The CONNECT User Name.
    Username,
}

/// `[auth.introspection]`: an OAuth 2.0 token introspection endpoint.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (required).
    pub url: String,
    /// The broker's client id at the authorization server (HTTP basic authentication).
    pub client_id: Option<String>,
    /// Its secret; or `client_secret_file`.
    pub client_secret: Option<String>,
    /// A file whose first line is the secret (kept out of the config file).
    pub client_secret_file: Option<PathBuf>,
    /// Where the token is: `password` (default) or `username`.
    pub token_from: TokenFrom,
    /// The `iss` a token must have; unset: not checked.
    pub issuer: Option<String>,
    /// A value `aud` must hold; unset: not checked.
    pub audience: Option<String>,
    /// Scopes (space-separated) a token's `scope` must all hold; unset: not checked.
    pub required_scope: Option<String>,
    /// The claim that names the user (then `sub`).
    pub username_claim: String,
    /// A claim that must equal the MQTT client id; unset: not checked.
    pub client_id_claim: Option<String>,
    /// Longest a question may take, milliseconds, waiting for a slot included.
    pub timeout_ms: u64,
    /// Requests to the endpoint at once; more wait for a slot within `timeout_ms`.
    pub max_connections: usize,
    /// How long an active token's answer is reused, seconds (never past its `exp`); 0: none.
    pub cache_ttl_secs: u64,
    /// Answers the cache holds at most.
    pub cache_max_entries: usize,
    /// How long a refusal is reused, seconds; 0: none is.
    pub deny_cache_ttl_secs: u64,
    /// The answer when the endpoint fails: `deny` (default) or `pass`.
    pub on_error: OnError,
    /// The CA (PEM) that signed the endpoint's certificate; set, it is the only one trusted.
    pub ca_file: Option<PathBuf>,
}

impl Default for IntrospectionConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            token_from: TokenFrom::Password,
            issuer: None,
            audience: None,
            required_scope: None,
            username_claim: "username".into(),
            client_id_claim: None,
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

impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("token_from", &self.token_from)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("required_scope", &self.required_scope)
            .field("username_claim", &self.username_claim)
            .field("client_id_claim", &self.client_id_claim)
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

impl IntrospectionConfig {
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

    /// Checks the table as `[auth.introspection]`; errors name `auth.introspection.<key>`.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_at("auth.introspection")
    }

    /// Checks the table; errors name `<prefix>.<key>`. The files (`client_secret_file`,
    /// `ca_file`) are read by [`IntrospectionBackend::build`].
    pub fn validate_at(&self, prefix: &str) -> anyhow::Result<()> {
        if self.url.is_empty() {
            bail!("{prefix}.url: required");
        }
        remote::parse_url(&format!("{prefix}.url"), &self.url)?;
        match (
            &self.client_id,
            self.client_secret.is_some(),
            self.client_secret_file.is_some(),
        ) {
            (Some(id), _, _) if id.is_empty() => bail!("{prefix}.client_id: must not be empty"),
            (_, true, true) => {
                bail!("{prefix}.client_secret and {prefix}.client_secret_file: set one, not both")
            }
            (Some(_), false, false) => bail!(
                "{prefix}.client_secret: required with {prefix}.client_id (or client_secret_file)"
            ),
            (None, true, _) | (None, _, true) => bail!(
                "{prefix}.client_id: required with {prefix}.client_secret or client_secret_file"
            ),
            _ => {}
        }
        if self.username_claim.is_empty() {
            bail!("{prefix}.username_claim: must not be empty");
        }
        for (key, v) in [
            ("issuer", &self.issuer),
            ("audience", &self.audience),
            ("client_id_claim", &self.client_id_claim),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                bail!("{prefix}.{key}: must not be empty (leave it out to not check)");
            }
        }
        if self
            .required_scope
            .as_deref()
            .is_some_and(|s| s.split_whitespace().next().is_none())
        {
            bail!("{prefix}.required_scope: names no scope (leave it out to not check)");
        }
        remote::check_bounds(prefix, self.bounded())
    }
}

/// The token introspection backend: kind `introspection`.
#[derive(Debug, Clone)]
pub struct IntrospectionBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: Url,
    /// `Basic ...`, marked sensitive.
    authorization: Option<HeaderValue>,
    token_from: TokenFrom,
    issuer: Option<String>,
    audience: Option<String>,
    required_scope: Vec<String>,
    username_claim: String,
    client_id_claim: Option<String>,
    remote: Remote,
    cache: Cache<Introspected>,
    allow_ttl: Duration,
    deny_ttl: Duration,
    on_error: OnError,
}

impl IntrospectionBackend {
    /// Builds the backend of `[auth.introspection]` (errors name
    /// `auth.introspection.<key>`).
    pub fn build(config: &IntrospectionConfig) -> anyhow::Result<Arc<Self>> {
        Self::build_at(config, "auth.introspection")
    }

    /// Builds the backend of the table `prefix`: validates it, reads `client_secret_file`
    /// and `ca_file`.
    pub fn build_at(config: &IntrospectionConfig, prefix: &str) -> anyhow::Result<Arc<Self>> {
        config.validate_at(prefix)?;
        let url = remote::parse_url(&format!("{prefix}.url"), &config.url)?;
        remote::warn_if_plain(&format!("{prefix}.url"), &url);
        let secret = match (&config.client_secret, &config.client_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(
                read_secret(path)
                    .with_context(|| format!("{prefix}.client_secret_file: {}", path.display()))?,
            ),
            (None, None) => None,
        };
        let authorization = match (&config.client_id, secret) {
            (Some(id), Some(secret)) => {
                let pair = format!(
                    "{}:{}",
                    remote::form_encode(id),
                    remote::form_encode(&secret)
                );
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
                    .context("the basic authentication header")?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        let remote = Remote::new(&ClientSettings {
            kind: "introspection",
            timeout: Duration::from_millis(config.timeout_ms),
            max_connections: config.max_connections,
            ca_file: config.ca_file.as_deref(),
            ca_key: format!("{prefix}.ca_file"),
        })?;
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                url,
                authorization,
                token_from: config.token_from,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                required_scope: config
                    .required_scope
                    .as_deref()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                username_claim: config.username_claim.clone(),
                client_id_claim: config.client_id_claim.clone(),
                remote,
                cache: Cache::new(config.cache_max_entries),
                allow_ttl: Duration::from_secs(config.cache_ttl_secs),
                deny_ttl: Duration::from_secs(config.deny_cache_ttl_secs),
                on_error: config.on_error,
            }),
        }))
    }

    /// The backend's counters (`ignored` stays 0: the endpoint always decides).
    pub fn stats(&self) -> Arc<HttpAuthStats> {
        Arc::clone(self.inner.remote.stats())
    }
}

/// The first line of a secret file, which must not be empty.
fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).context("cannot read")?;
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        bail!("empty");
    }
    Ok(line.to_owned())
}

/// What the endpoint said about a token, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Introspected {
    /// Inactive, expired, or failing a configured check.
    Refused(DenyReason),
    /// Active and passing the checks that do not depend on the client.
    Active {
        username: String,
        /// The value of `client_id_claim` (when configured and present).
        client_id: Option<String>,
        /// Unix seconds.
        exp: Option<u64>,
    },
}

impl Introspected {
    fn verdict(&self, client_id: &str, checks_client_id: bool, now: u64) -> Verdict {
        match self {
            Self::Refused(r) => Verdict::Deny(*r),
            Self::Active {
                username,
                client_id: claimed,
                exp,
            } => {
                let valid_for = match *exp {
                    None => None,
                    Some(t) if t > now => Some(Duration::from_secs(t - now)),
                    Some(_) => return Verdict::Deny(DenyReason::BadUserNameOrPassword),
                };
                if checks_client_id && claimed.as_deref() != Some(client_id) {
                    return Verdict::Deny(DenyReason::NotAuthorized);
                }
                Verdict::Allow(Grant {
                    username: Some(username.clone()),
                    acl: None,
                    valid_for,
                })
            }
        }
    }

    fn weight(&self) -> usize {
        match self {
            Self::Refused(_) => 0,
            Self::Active {
                username,
                client_id,
                ..
            } => username.len() + client_id.as_ref().map_or(0, String::len),
        }
    }
}

/// A numeric claim as Unix seconds (a fraction dropped); absent: `Ok(None)`.
fn seconds(m: &serde_json::Map<String, Value>, claim: &str) -> Result<Option<u64>, Failure> {
    match m.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| Failure::Body(format!("{claim:?} is negative"))),
        Some(_) => Err(Failure::Body(format!("{claim:?} is not a number"))),
    }
}

impl Inner {
    /// The token a client presents, if it looks like one.
    fn token<'a>(&self, info: &ConnectInfo<'a>) -> Option<&'a str> {
        let raw = match self.token_from {
            TokenFrom::Password => std::str::from_utf8(info.password?).ok()?,
            TokenFrom::Username => info.username?,
        };
        let plausible =
            !raw.is_empty() && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        plausible.then_some(raw)
    }

    /// Reads an introspection answer (RFC 7662 section 2.2) at Unix time `now`.
    fn parse(&self, reply: Reply, now: u64) -> Result<Introspected, Failure> {
        if !reply.status.is_success() {
            return Err(Failure::Status(reply.status));
        }
        let v: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| Failure::Body(format!("not JSON ({e})")))?;
        let Value::Object(m) = v else {
            return Err(Failure::Body("not a JSON object".into()));
        };
        let refused = |r| Ok(Introspected::Refused(r));
        match m.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return refused(DenyReason::BadUserNameOrPassword),
            _ => return Err(Failure::Body("no boolean \"active\"".into())),
        }
        let exp = seconds(&m, "exp")?;
        if exp.is_some_and(|t| t <= now) {
            return refused(DenyReason::BadUserNameOrPassword);
        }
        if seconds(&m, "nbf")?.is_some_and(|t| t > now) {
            return refused(DenyReason::BadUserNameOrPassword);
        }
        let text = |claim: &str| match m.get(claim) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        if let Some(iss) = &self.issuer
            && text("iss").as_ref() != Some(iss)
        {
            return refused(DenyReason::NotAuthorized);
        }
        if let Some(aud) = &self.audience {
            let ok = match m.get("aud") {
                Some(Value::String(s)) => s == aud,
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(aud.as_str())),
                _ => false,
            };
            if !ok {
                return refused(DenyReason::NotAuthorized);
            }
        }
        if !self.required_scope.is_empty() {
            let scope = text("scope").unwrap_or_default();
            let granted: Vec<&str> = scope.split_whitespace().collect();
            if !self
                .required_scope
                .iter()
                .all(|s| granted.contains(&s.as_str()))
            {
                return refused(DenyReason::NotAuthorized);
            }
        }
        let Some(username) = text(&self.username_claim).or_else(|| text("sub")) else {
            return refused(DenyReason::NotAuthorized);
        };
        if username.len() > 65_535 || username.contains('\0') {
            return refused(DenyReason::NotAuthorized);
        }
        let client_id = self.client_id_claim.as_deref().and_then(text);
        Ok(Introspected::Active {
            username,
            client_id,
            exp,
        })
    }

    async fn introspect(&self, token: String, key: remote::Key, client_id: String) -> Verdict {
        let mut request = self
            .remote
            .client()
            .post(self.url.clone())
            .header(ACCEPT, "application/json")
            .form(&[
                ("token", token.as_str()),
                ("token_type_hint", "access_token"),
            ]);
        drop(token);
        if let Some(a) = &self.authorization {
            request = request.header(AUTHORIZATION, a.clone());
        }
        let answer = self
            .remote
            .ask(request, "token introspection", &client_id, |r| {
                self.parse(r, unix_now())
            })
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(_) => {
                return match self.on_error {
                    OnError::Deny => Verdict::Deny(DenyReason::NotAuthorized),
                    OnError::Pass => Verdict::Pass,
                };
            }
        };
        let stats = self.remote.stats();
        let now = unix_now();
        let ttl = match &answer {
            Introspected::Refused(_) => {
                bump(&stats.denied);
                self.deny_ttl
            }
            Introspected::Active { exp, .. } => {
                bump(&stats.allowed);
                let left = exp.map(|t| Duration::from_secs(t.saturating_sub(now)));
                left.map_or(self.allow_ttl, |d| d.min(self.allow_ttl))
            }
        };
        let verdict = answer.verdict(&client_id, self.client_id_claim.is_some(), now);
        let weight = answer.weight();
        self.cache.insert(key, answer, ttl, weight, Instant::now());
        verdict
    }
}

fn token_key(token: &str) -> remote::Key {
    KeyBuilder::default()
        .field(b"introspection")
        .field(&remote::digest(token.as_bytes()))
        .finish()
}

impl AuthBackend for IntrospectionBackend {
    fn kind(&self) -> &'static str {
        "introspection"
    }

    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        let inner = &self.inner;
        let Some(token) = inner.token(info) else {
            return Answer::Now(Verdict::Pass);
        };
        let key = token_key(token);
        if !inner.allow_ttl.is_zero() || !inner.deny_ttl.is_zero() {
            let stats = inner.remote.stats();
            if let Some(a) = inner.cache.get(&key, Instant::now()) {
                bump(&stats.cache_hits);
                let checks = inner.client_id_claim.is_some();
                return Answer::Now(a.verdict(info.client_id, checks, unix_now()));
            }
            bump(&stats.cache_misses);
        }
        let token = token.to_owned();
        let client_id = info.client_id.to_owned();
        let inner = Arc::clone(&self.inner);
        Answer::Later(Box::pin(async move {
            inner.introspect(token, key, client_id).await
        }))
    }
}

#[cfg(test)]
#[path = "introspect_tests.rs"]
mod tests;
