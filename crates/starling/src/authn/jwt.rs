//! The `jwt` authentication backend (`[auth.jwt]`): clients send a signed JSON Web Token
//! (an OAuth 2.0 JWT access token, say) as their password, or their username; the token is
//! verified by `starling_auth::jwt` and its claims give the username, the client's ACL and
//! when the connection ends. This module owns the configuration ([`JwtConfig`]), the
//! counters ([`JwtStats`]) and the key server: a JWKS document fetched over HTTPS when the
//! broker starts, refreshed in the background, and refreshed on demand when a token names a
//! key id the broker does not know (the issuer rotated its keys).
//!
//! ```toml
//! [auth.jwt]
//! algorithms = ["RS256"]
//! jwks_url = "https://idp.example.com/.well-known/jwks.json"
//! issuer = "https://idp.example.com/"
//! audience = "mqtt"
//! client_id_claim = "client_id"
//! ```
//!
//! Keys come from `secret` / `secret_file` (HMAC), `public_key_file` (PEM public key or
//! certificate) and `jwks_url`, any together; `algorithms` names what tokens may use. A
//! JWKS that cannot be fetched at start is retried (1 s, doubling up to a minute) and JWT
//! clients are refused meanwhile, with a warning in the log at most every ten seconds.
//!
//! On demand, the key server is asked at most once per `jwks_min_refresh_secs`, however
//! many clients send unknown key ids: those arriving while a fetch is under way wait for
//! that fetch (their CONNECT waits, at most [`WAIT_FOR_FETCH`]), and those arriving after
//! it, within the interval, are refused at once. A client sending random key ids therefore
//! cannot make the broker hammer the key server. Fetches are bounded: [`JWKS_TIMEOUT`] for
//! the whole request, [`JWKS_MAX_BODY`] of answer, [`starling_auth::jwt::MAX_JWKS_KEYS`]
//! keys; redirects only to https, at most three; no proxy (the broker talks to the
//! configured server itself). A fetch that fails, or brings no usable key, keeps the keys
//! in use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};
use starling_auth::jwt::{
    Algorithm, JwtError, JwtKey, JwtReason, JwtSettings, JwtVerifier, TokenSource, keys,
};
use starling_auth::{Answer, AuthBackend, ConnectInfo, Grant, Verdict};
use starling_broker::config::Bound;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::remote::{self, bump, unix_now};
use crate::connection::Stop;

/// Largest JWKS document read; a larger one is a failed fetch.
pub const JWKS_MAX_BODY: usize = 1 << 20;
/// Longest one fetch may take, connecting and reading included.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a CONNECT with an unknown key id waits for a fetch: a fetch ends within
/// [`JWKS_TIMEOUT`]; the margin covers its start.
pub const WAIT_FOR_FETCH: Duration = Duration::from_secs(6);
/// First retry after a failed fetch; it doubles up to [`RETRY_MAX`] (or the refresh
/// interval, if shorter).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Redirects a JWKS fetch follows at most.
const MAX_REDIRECTS: usize = 3;
/// Seconds between two "no keys yet" warnings.
const NO_KEYS_WARN_SECS: u64 = 10;

// The configuration, in a file of its own.
#[path = "jwt_config.rs"]
mod config;

use config::jwks_url;
pub use config::{JwtConfig, TokenFrom, bounds};

/// Counters of the `jwt` backend, for metrics. Every field only grows except `jwks_keys`.
#[derive(Debug, Default)]
pub struct JwtStats {
    /// Tokens accepted.
    pub verified: AtomicU64,
    /// Tokens refused, by [`JwtReason::index`].
    denied: [AtomicU64; JwtReason::COUNT],
    /// Fetches of the JWKS tried.
    pub jwks_fetches: AtomicU64,
    /// Fetches that gave no usable key set (the keys in use are kept).
    pub jwks_fetch_failures: AtomicU64,
    /// Keys of the JWKS in use now (a gauge).
    pub jwks_keys: AtomicU64,
}

/// The values of [`JwtStats`] at one moment, field by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwtStatsSnapshot {
    /// See [`JwtStats::verified`].
    pub verified: u64,
    /// Refusals by [`JwtReason::index`] (names: [`JwtReason::ALL`] and `as_str`).
    pub denied: [u64; JwtReason::COUNT],
    /// See [`JwtStats::jwks_fetches`].
    pub jwks_fetches: u64,
    /// See [`JwtStats::jwks_fetch_failures`].
    pub jwks_fetch_failures: u64,
    /// See [`JwtStats::jwks_keys`].
    pub jwks_keys: u64,
}

impl JwtStats {
    /// Tokens refused for `reason`.
    pub fn denied(&self, reason: JwtReason) -> u64 {
        self.denied
            .get(reason.index())
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Every reason with its count, in [`JwtReason::ALL`] order.
    pub fn denied_by_reason(&self) -> [(JwtReason, u64); JwtReason::COUNT] {
        JwtReason::ALL.map(|r| (r, self.denied(r)))
    }

    /// The counters now (each read on its own).
    pub fn snapshot(&self) -> JwtStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        JwtStatsSnapshot {
            verified: r(&self.verified),
            denied: JwtReason::ALL.map(|reason| self.denied(reason)),
            jwks_fetches: r(&self.jwks_fetches),
            jwks_fetch_failures: r(&self.jwks_fetch_failures),
            jwks_keys: r(&self.jwks_keys),
        }
    }

    fn count(&self, result: &Result<Grant, JwtError>) {
        match result {
            Ok(_) => bump(&self.verified),
            Err(e) => {
                if let Some(n) = self.denied.get(e.reason().index()) {
                    bump(n);
                }
            }
        }
    }
}

/// The JWT backend: kind `jwt`.
#[derive(Debug)]
pub struct JwtBackend {
    verifier: Arc<JwtVerifier>,
    stats: Arc<JwtStats>,
    /// The key server, when `jwks_url` is set.
    jwks: Option<Arc<KeyServer>>,
}

impl JwtBackend {
    /// Builds the backend of `[auth.jwt]` and, with a `jwks_url`, starts fetching and
    /// refreshing the JWKS in a task that ends when `stop` fires. Must be called inside a
    /// tokio runtime when there is a `jwks_url`. Errors name `auth.jwt.<key>`.
    pub fn build(cfg: &JwtConfig, stop: Arc<Stop>) -> anyhow::Result<Arc<Self>> {
        Self::build_at(cfg, "auth.jwt", Some(stop))
    }

    /// As [`JwtBackend::build`], naming keys `<prefix>.<key>`; without `stop` no task is
    /// started and the JWKS is never fetched (for checking a configuration).
    pub fn build_at(
        cfg: &JwtConfig,
        prefix: &str,
        stop: Option<Arc<Stop>>,
    ) -> anyhow::Result<Arc<Self>> {
        let settings = cfg.settings(prefix)?;
        let verifier =
            Arc::new(JwtVerifier::new(settings).map_err(|e| anyhow::anyhow!("{prefix}: {e}"))?);
        let stats = Arc::new(JwtStats::default());
        let jwks = match &cfg.jwks_url {
            Some(url) => {
                let url = jwks_url(&format!("{prefix}.jwks_url"), url)?;
                let client = http_client(
                    cfg.jwks_ca_file.as_deref(),
                    &format!("{prefix}.jwks_ca_file"),
                )?;
                let (fetched, _) = watch::channel(0u64);
                Some(Arc::new(KeyServer {
                    url,
                    client,
                    refresh: Duration::from_secs(cfg.jwks_refresh_secs),
                    min_refresh: Duration::from_secs(cfg.jwks_min_refresh_secs),
                    verifier: Arc::clone(&verifier),
                    stats: Arc::clone(&stats),
                    state: Mutex::new(FetchState::default()),
                    demand: Notify::new(),
                    fetched,
                    last_warn: AtomicU64::new(0),
                }))
            }
            None => None,
        };
        if let (Some(ks), Some(stop)) = (&jwks, stop) {
            let runtime = tokio::runtime::Handle::try_current()
                .context("the JWT backend with a jwks_url must be built inside the runtime")?;
            runtime.spawn(Arc::clone(ks).run(stop));
        }
        Ok(Arc::new(Self {
            verifier,
            stats,
            jwks,
        }))
    }

    /// The counters (shared: they keep counting).
    pub fn stats(&self) -> Arc<JwtStats> {
        Arc::clone(&self.stats)
    }

    /// The verifier (for its settings, or verifying without the key server).
    pub fn verifier(&self) -> &Arc<JwtVerifier> {
        &self.verifier
    }

    /// Whether there is any key to verify with (false while a JWKS has not loaded yet).
    pub fn has_keys(&self) -> bool {
        self.verifier.has_keys()
    }

    /// Verifies `token` for `client_id` and counts the result; a token naming a key the
    /// JWKS does not have waits for a refresh of the key set (see the module's
    /// documentation). Also what MQTT 5 re-authentication with a token calls.
    pub fn verify(&self, token: &str, client_id: &str) -> Answer<Result<Grant, JwtError>> {
        let result = self.verifier.verify(token, client_id);
        if let Err(JwtError::UnknownKey { alg, .. }) = &result
            && let Some(ks) = &self.jwks
            && self.verifier.settings().algorithms.contains(alg)
        {
            if let Some(mut fetched) = ks.request_refresh() {
                let ks = Arc::clone(ks);
                let token = token.to_owned();
                let client_id = client_id.to_owned();
                return Answer::Later(Box::pin(async move {
                    // Ends on its own: a fetch ends within its timeout, and this wait is
                    // bounded too in case the task is gone (the broker stopping).
                    let _ = tokio::time::timeout(WAIT_FOR_FETCH, fetched.changed()).await;
                    let result = ks.verifier.verify(&token, &client_id);
                    ks.finish(&client_id, &result);
                    result
                }));
            }
            ks.finish(client_id, &result);
            return Answer::Now(result);
        }
        self.finish(client_id, &result);
        Answer::Now(result)
    }

    fn finish(&self, client_id: &str, result: &Result<Grant, JwtError>) {
        match &self.jwks {
            Some(ks) => ks.finish(client_id, result),
            None => {
                self.stats.count(result);
                if let Err(e) = result {
                    log_refusal(client_id, e);
                }
            }
        }
    }
}

fn log_refusal(client_id: &str, e: &JwtError) {
    // The chain logs every refusal at info; this adds the token's reason.
    debug!(client_id, reason = e.reason().as_str(), "JWT refused: {e}");
}

impl AuthBackend for JwtBackend {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        let Some(token) = self.verifier.token(info) else {
            return Answer::Now(Verdict::Pass);
        };
        self.verify(token, info.client_id)
            .map(|result| match result {
                Ok(grant) => Verdict::Allow(grant),
                Err(e) => Verdict::Deny(e.deny_reason()),
            })
    }
}

/// The HTTPS client of the key server: rustls with ring, the system's roots or only
/// `ca_file`'s, bounded in time, no proxy, redirects only to https.
fn http_client(ca_file: Option<&Path>, ca_key: &str) -> anyhow::Result<reqwest::Client> {
    let b = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() != "https" {
                attempt.error("a redirect to a URL that is not https")
            } else {
                attempt.follow()
            }
        }))
        .connect_timeout(JWKS_TIMEOUT)
        .timeout(JWKS_TIMEOUT)
        .user_agent(concat!("starling/", env!("CARGO_PKG_VERSION")));
    crate::http_client::trust_only(b, ca_file, ca_key)?
        .build()
        .context("cannot build the HTTPS client")
}

/// A JWKS URL, its client, and the fetches: one task fetches, connections ask it to.
#[derive(Debug)]
struct KeyServer {
    url: Url,
    client: reqwest::Client,
    refresh: Duration,
    min_refresh: Duration,
    verifier: Arc<JwtVerifier>,
    stats: Arc<JwtStats>,
    state: Mutex<FetchState>,
    /// Wakes the task for a fetch a connection asked for (one stored permit: requests
    /// coalesce).
    demand: Notify,
    /// Counts finished fetches, failed ones included: a connection waiting for a fetch
    /// waits for this to change.
    fetched: watch::Sender<u64>,
    /// The second (Unix time) of the last "no keys yet" warning.
    last_warn: AtomicU64,
}

#[derive(Debug, Default)]
struct FetchState {
    /// A connection asked for a fetch that has not started yet.
    requested: bool,
    /// A fetch is under way.
    in_flight: bool,
    /// When a connection last asked for a fetch (that was not already coming): the
    /// interval `min_refresh` is counted from it.
    last_demand: Option<Instant>,
    /// Why the last fetch failed, if it did.
    last_error: Option<String>,
    /// The key ids and algorithms of the last loaded set, and the skipped keys: logged
    /// again only when they change.
    last_loaded: Option<String>,
}

impl KeyServer {
    fn lock(&self) -> MutexGuard<'_, FetchState> {
        // The state is a few flags, consistent after every statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for a fetch on behalf of a token with an unknown key id. `Some`: wait for the
    /// receiver to change (a fetch is under way or about to start). `None`: a connection
    /// asked less than `min_refresh` ago, and the key was not in what that fetch brought;
    /// refuse now.
    fn request_refresh(&self) -> Option<watch::Receiver<u64>> {
        let mut st = self.lock();
        // Subscribed under the lock, before any fetch this request waits for can finish.
        let rx = self.fetched.subscribe();
        if st.in_flight || st.requested {
            return Some(rx);
        }
        if st
            .last_demand
            .is_some_and(|t| t.elapsed() < self.min_refresh)
        {
            return None;
        }
        st.requested = true;
        st.last_demand = Some(Instant::now());
        self.demand.notify_one();
        Some(rx)
    }

    /// Counts and logs the result of a verification.
    fn finish(&self, client_id: &str, result: &Result<Grant, JwtError>) {
        self.stats.count(result);
        let Err(e) = result else { return };
        log_refusal(client_id, e);
        if matches!(e, JwtError::UnknownKey { .. }) && !self.verifier.has_keys() {
            let now = unix_now();
            let last = self.last_warn.load(Ordering::Relaxed);
            if now >= last + NO_KEYS_WARN_SECS
                && self
                    .last_warn
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let why = self.lock().last_error.clone();
                warn!(
                    url = %self.url,
                    "refusing JWT clients: no keys from the JWKS yet ({})",
                    why.as_deref().unwrap_or("the first fetch is under way")
                );
            }
        }
    }

    /// Fetches at once, then every `refresh` (after a failure: 1 s, doubling), and when a
    /// connection asks; ends when `stop` fires.
    async fn run(self: Arc<Self>, stop: Arc<Stop>) {
        let mut retry = RETRY_FIRST;
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = stop.wait() => return,
                () = tokio::time::sleep_until(next.into()) => {}
                () = self.demand.notified() => {
                    // A permit stored for a request that a fetch has served since.
                    if !self.lock().requested {
                        continue;
                    }
                }
            }
            {
                let mut st = self.lock();
                st.requested = false;
                st.in_flight = true;
            }
            let outcome = tokio::select! {
                () = stop.wait() => None,
                r = self.fetch() => Some(r),
            };
            let ok = match outcome {
                Some(r) => self.apply(r),
                None => false,
            };
            self.lock().in_flight = false;
            self.fetched.send_modify(|n| *n = n.wrapping_add(1));
            if stop.is_stopping() {
                return;
            }
            if ok {
                retry = RETRY_FIRST;
                next = Instant::now() + self.refresh;
            } else {
                next = Instant::now() + retry;
                retry = (retry * 2).min(RETRY_MAX).min(self.refresh);
            }
        }
    }

    /// One GET of the document, bounded in time and size.
    async fn fetch(&self) -> Result<Bytes, String> {
        let get = async {
            let response = self
                .client
                .get(self.url.clone())
                .header(ACCEPT, "application/jwk-set+json, application/json")
                .send()
                .await
                .map_err(describe)?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("status {status}"));
            }
            read_limited(response).await
        };
        tokio::time::timeout(JWKS_TIMEOUT, get)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", JWKS_TIMEOUT.as_secs())))
    }

    /// Loads a fetched document; whether it gave keys.
    fn apply(&self, fetched: Result<Bytes, String>) -> bool {
        bump(&self.stats.jwks_fetches);
        let loaded =
            fetched.and_then(|body| self.verifier.load_jwks(&body).map_err(|e| e.to_string()));
        match loaded {
            Ok(update) => {
                self.stats
                    .jwks_keys
                    .store(remote::wide(update.keys.len()), Ordering::Relaxed);
                let keys: Vec<String> = update
                    .keys
                    .iter()
                    .map(|(kid, alg)| format!("{}:{alg:?}", kid.as_deref().unwrap_or("-")))
                    .collect();
                let summary = format!("{keys:?} {:?}", update.skipped);
                let mut st = self.lock();
                st.last_error = None;
                if st.last_loaded.as_deref() != Some(summary.as_str()) {
                    info!(url = %self.url, keys = %keys.join(" "), "JWKS loaded");
                    for s in &update.skipped {
                        let kid = s.kid.as_deref().unwrap_or("-");
                        if s.expected {
                            debug!(url = %self.url, kid, "JWKS key not used: {}", s.why);
                        } else {
                            warn!(url = %self.url, kid, "JWKS key not used: {}", s.why);
                        }
                    }
                    st.last_loaded = Some(summary);
                } else {
                    debug!(url = %self.url, "JWKS unchanged");
                }
                true
            }
            Err(e) => {
                bump(&self.stats.jwks_fetch_failures);
                let kept = self.verifier.jwks_len();
                if kept > 0 {
                    warn!(url = %self.url, "cannot refresh the JWKS, keeping its {kept} keys: {e}");
                } else {
                    warn!(url = %self.url, "cannot load the JWKS (JWT clients are refused until it loads): {e}");
                }
                self.lock().last_error = Some(e);
                false
            }
        }
    }
}

/// A reqwest error with its causes (refused, TLS, DNS), without the URL (logged beside).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

async fn read_limited(mut response: reqwest::Response) -> Result<Bytes, String> {
    let too_large = || format!("a document larger than {JWKS_MAX_BODY} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > JWKS_MAX_BODY as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > JWKS_MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
