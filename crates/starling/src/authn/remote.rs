//! What the backends that ask a remote service share (the HTTP authentication service of
//! [`super::http`], the OAuth 2.0 introspection endpoint of [`super::introspect`]): the HTTP
//! client with its bound on concurrent requests and its deadline, the failure mode, the
//! bounded answer cache, the counters, and rate-limited logging of failures.
//!
//! Every request runs under one deadline (`timeout_ms`) that covers waiting for a free
//! connection slot, connecting, sending and reading the answer, so a backend's future always
//! ends on its own. Answers are read up to [`MAX_BODY`]; larger ones are failures.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use starling_broker::config::Bound;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Largest answer body read from a service; a larger one is a failure (`errors_body`).
pub const MAX_BODY: usize = 64 * 1024;

/// Bytes of cached answers one cache may hold (besides its entry count bound): an answer may
/// carry rules, and a service answering with large rule sets must not grow memory without
/// bound. Oldest entries are evicted to make room.
const MAX_CACHED_BYTES: usize = 64 << 20;

/// What a backend answers when its service fails it (timeout, refused connection, 5xx, an
/// answer it cannot read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse (fail closed): CONNACK 0x87 Not authorized, or the action refused.
    #[default]
    Deny,
    /// Not mine: the next backend of the chain is asked, then the chain's default.
    Pass,
}

/// The bounds of the numeric keys the remote backends share.
pub mod bounds {
    use starling_broker::config::Bound;

    /// `timeout_ms`: the whole request, waiting for a connection slot included.
    pub const TIMEOUT_MS: Bound = Bound::new(10, 60_000, "one minute");
    /// `max_connections`: requests at once.
    pub const MAX_CONNECTIONS: Bound = Bound::new(1, 10_000, "ten thousand");
    /// `cache_ttl_secs` and `deny_cache_ttl_secs` (0: not cached).
    pub const CACHE_TTL_SECS: Bound = Bound::new(0, 86_400, "one day");
    /// `cache_max_entries`, per cache.
    pub const CACHE_MAX_ENTRIES: Bound = Bound::new(1, 10_000_000, "ten million");
}

/// Counters of one remote backend, for metrics. Every field only grows except `in_flight`.
#[derive(Debug, Default)]
pub struct HttpAuthStats {
    /// Requests sent to the service (cache misses that got a connection slot).
    pub requests: AtomicU64,
    /// Answers from the service that allowed.
    pub allowed: AtomicU64,
    /// Answers from the service that refused.
    pub denied: AtomicU64,
    /// Answers from the service that said "not mine" (`ignore`).
    pub ignored: AtomicU64,
    /// Requests that did not finish within `timeout_ms`, waiting for a slot included.
    pub errors_timeout: AtomicU64,
    /// Answers with a status that is neither a verdict nor a refusal: 5xx, 3xx (redirects are
    /// not followed), 408 and 429.
    pub errors_status: AtomicU64,
    /// Requests that could not reach the service (refused connection, DNS, TLS).
    pub errors_connect: AtomicU64,
    /// Answers that could not be read: too large, malformed, not understood.
    pub errors_body: AtomicU64,
    /// Questions answered from the cache.
    pub cache_hits: AtomicU64,
    /// Questions the cache did not have (counted only when caching is on).
    pub cache_misses: AtomicU64,
    /// Requests under way now (a gauge).
    pub in_flight: AtomicU64,
    /// Sum of the durations of finished requests, microseconds (from the slot to the end).
    pub latency_us_sum: AtomicU64,
    /// Number of requests in `latency_us_sum`.
    pub latency_count: AtomicU64,
}

/// The values of [`HttpAuthStats`] at one moment.
/// Field by field as in [`HttpAuthStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpAuthStatsSnapshot {
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    pub ignored: u64,
    pub errors_timeout: u64,
    pub errors_status: u64,
    pub errors_connect: u64,
    pub errors_body: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub in_flight: u64,
    pub latency_us_sum: u64,
    pub latency_count: u64,
}

impl HttpAuthStats {
    /// The counters now (each read on its own: they may be a request apart).
    pub fn snapshot(&self) -> HttpAuthStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HttpAuthStatsSnapshot {
            requests: r(&self.requests),
            allowed: r(&self.allowed),
            denied: r(&self.denied),
            ignored: r(&self.ignored),
            errors_timeout: r(&self.errors_timeout),
            errors_status: r(&self.errors_status),
            errors_connect: r(&self.errors_connect),
            errors_body: r(&self.errors_body),
            cache_hits: r(&self.cache_hits),
            cache_misses: r(&self.cache_misses),
            in_flight: r(&self.in_flight),
            latency_us_sum: r(&self.latency_us_sum),
            latency_count: r(&self.latency_count),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Seconds since the Unix epoch (0 if the clock is before it, which no check relies on).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a request gave no usable answer. Its text never contains the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No answer within `timeout_ms`.
    Timeout,
    /// The service could not be reached.
    Connect(String),
    /// A status that is neither a verdict nor a refusal.
    Status(StatusCode),
    /// The answer could not be read or understood.
    Body(String),
}

impl Failure {
    fn count(&self, stats: &HttpAuthStats) {
        bump(match self {
            Self::Timeout => &stats.errors_timeout,
            Self::Connect(_) => &stats.errors_connect,
            Self::Status(_) => &stats.errors_status,
            Self::Body(_) => &stats.errors_body,
        });
    }

    fn of(e: reqwest::Error) -> Self {
        // The URL may carry the request (the query of a GET): never in the text. The causes
        // say what went wrong (refused, TLS, DNS).
        let e = e.without_url();
        let text = || {
            let mut t = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                t.push_str(": ");
                t.push_str(&c.to_string());
                cause = c.source();
            }
            t
        };
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_body() || e.is_decode() {
            Self::Body(text())
        } else {
            // Connecting, TLS, DNS and any other transport error.
            Self::Connect(text())
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("no answer in time"),
            Self::Connect(e) => write!(f, "cannot reach the service: {e}"),
            Self::Status(s) => write!(f, "unexpected status {s}"),
            Self::Body(e) => write!(f, "unusable answer: {e}"),
        }
    }
}

/// A service's answer: its status and (at most [`MAX_BODY`] of) its body.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// How to build a [`Remote`].
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings<'a> {
    pub(crate) kind: &'static str,
    pub(crate) timeout: Duration,
    pub(crate) max_connections: usize,
    /// The only CA trusted (a private CA); `None`: the system's roots.
    pub(crate) ca_file: Option<&'a Path>,
    /// The key of `ca_file` in error messages (`auth.http.ca_file`).
    pub(crate) ca_key: String,
}

/// An HTTP client bounded in concurrency and time, with the counters of its backend.
#[derive(Debug)]
pub(crate) struct Remote {
    kind: &'static str,
    client: reqwest::Client,
    /// One permit per request at once: `max_connections`. A request waits for one within its
    /// deadline; when none frees up in time it fails as a timeout (then the failure mode).
    permits: Semaphore,
    timeout: Duration,
    stats: Arc<HttpAuthStats>,
    /// The second (Unix time) of the last failure logged at `warn`, and the failures logged at
    /// `debug` since: a service that is down must not flood the log with one line per client.
    last_warn: AtomicU64,
    quiet: AtomicU64,
}

impl Remote {
    pub(crate) fn new(s: &ClientSettings<'_>) -> anyhow::Result<Self> {
        let client = crate::http_client::build(s.timeout, s.max_connections, s.ca_file, &s.ca_key)?;
        Ok(Self {
            kind: s.kind,
            client,
            permits: Semaphore::new(s.max_connections),
            timeout: s.timeout,
            stats: Arc::new(HttpAuthStats::default()),
            last_warn: AtomicU64::new(0),
            quiet: AtomicU64::new(0),
        })
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(crate) fn stats(&self) -> &Arc<HttpAuthStats> {
        &self.stats
    }

    /// Sends `request` and reads the answer, all within the deadline; a failure is counted.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, Failure> {
        let result = tokio::time::timeout(self.timeout, async {
            // The semaphore is never closed; were it, the request could not be sent anyway.
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Failure::Connect("shutting down".into()))?;
            let _flight = InFlight::start(&self.stats);
            let response = request.send().await.map_err(Failure::of)?;
            let status = response.status();
            let body = read_limited(response).await?;
            Ok(Reply { status, body })
        })
        .await;
        let result = result.unwrap_or(Err(Failure::Timeout));
        if let Err(f) = &result {
            f.count(&self.stats);
        }
        result
    }

    /// Sends `request` and reads the answer with `parse`; a failure of either is counted and
    /// logged for `client_id` (`what`: the question, for the log).
    pub(crate) async fn ask<T>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        client_id: &str,
        parse: impl FnOnce(Reply) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let result = match self.send(request).await {
            Ok(reply) => parse(reply).inspect_err(|f| f.count(&self.stats)),
            Err(f) => Err(f),
        };
        if let Err(f) = &result {
            self.report(what, client_id, f);
        }
        result
    }

    /// Logs a failure for `client_id` (never the credentials): at `warn` at most once a
    /// second, with how many were logged at `debug` meanwhile.
    fn report(&self, what: &str, client_id: &str, failure: &Failure) {
        let now = unix_now();
        let last = self.last_warn.load(Ordering::Relaxed);
        if now != last
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let also = self.quiet.swap(0, Ordering::Relaxed);
            warn!(
                backend = self.kind,
                client_id,
                also_failed = also,
                "{what}: {failure}"
            );
        } else {
            bump(&self.quiet);
            debug!(backend = self.kind, client_id, "{what}: {failure}");
        }
    }
}

/// Counts a request in `in_flight` and its latency, however it ends (also when its future is
/// dropped because the client went away).
struct InFlight<'a> {
    stats: &'a HttpAuthStats,
    since: Instant,
}

impl<'a> InFlight<'a> {
    fn start(stats: &'a HttpAuthStats) -> Self {
        bump(&stats.requests);
        bump(&stats.in_flight);
        Self {
            stats,
            since: Instant::now(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let us = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        bump(&self.stats.latency_count);
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Bytes, Failure> {
    let too_large = || Failure::Body(format!("answer larger than {MAX_BODY} bytes"));
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(Failure::of)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A cache key: the SHA-256 of everything that decides an answer.
pub(crate) type Key = [u8; 32];

/// Builds a [`Key`] from fields, each length-prefixed so that no two lists of fields hash
/// the same input.
#[derive(Debug, Default)]
pub(crate) struct KeyBuilder(Sha256);

impl KeyBuilder {
    pub(crate) fn field(mut self, value: &[u8]) -> Self {
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value);
        self
    }

    pub(crate) fn opt(self, value: Option<&[u8]>) -> Self {
        match value {
            // A tag tells "absent" from "empty".
            Some(v) => self.field(b"1").field(v),
            None => self.field(b"0"),
        }
    }

    pub(crate) fn finish(self) -> Key {
        self.0.finalize().into()
    }
}

/// SHA-256 of a secret: what a cache key holds instead of it.
pub(crate) fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Answers by key, each until its own expiry, bounded in entries and in bytes. When full, the
/// oldest entries are evicted (first in, first out: with one TTL per kind of answer that is
/// also roughly the order they expire in). Expired entries are dropped when looked up or
/// evicted.
#[derive(Debug)]
pub(crate) struct Cache<V> {
    inner: Mutex<CacheInner<V>>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct CacheInner<V> {
    map: HashMap<Key, Entry<V>>,
    /// Insertion order with each insertion's number; an item whose number is not the entry's
    /// any more (replaced or removed) is skipped. Compacted when it grows past twice the
    /// entries, so it stays bounded too.
    order: VecDeque<(Key, u64)>,
    next: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    expires: Instant,
    seq: u64,
    bytes: usize,
}

/// Bytes an entry costs besides the `bytes` its value declares: key, expiry, map and queue
/// overhead, roughly.
const ENTRY_OVERHEAD: usize = 128;

impl<V: Clone> Cache<V> {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self::with_byte_bound(max_entries, MAX_CACHED_BYTES)
    }

    fn with_byte_bound(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
                bytes: 0,
            }),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner<V>> {
        // Nothing panics while holding the lock; were it poisoned, the map is still
        // consistent (every change is a single map or queue operation).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer under `key` if it has not expired at `now`.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<V> {
        let mut c = self.lock();
        let expired = match c.map.get(key) {
            None => return None,
            Some(e) if e.expires > now => return Some(e.value.clone()),
            Some(_) => true,
        };
        if expired && let Some(e) = c.map.remove(key) {
            c.bytes = c.bytes.saturating_sub(e.bytes);
        }
        None
    }

    /// Keeps `value` under `key` for `ttl` from `now` (not at all for a zero `ttl`); `bytes`:
    /// what the value holds on the heap, roughly.
    pub(crate) fn insert(&self, key: Key, value: V, ttl: Duration, bytes: usize, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let bytes = bytes.saturating_add(ENTRY_OVERHEAD);
        if bytes > self.max_bytes {
            return;
        }
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let mut c = self.lock();
        if let Some(old) = c.map.remove(&key) {
            c.bytes = c.bytes.saturating_sub(old.bytes);
        }
        while c.map.len() >= self.max_entries || c.bytes + bytes > self.max_bytes {
            let Some((k, seq)) = c.order.pop_front() else {
                break;
            };
            if c.map.get(&k).is_some_and(|e| e.seq == seq)
                && let Some(e) = c.map.remove(&k)
            {
                c.bytes = c.bytes.saturating_sub(e.bytes);
            }
        }
        let seq = c.next;
        c.next += 1;
        c.order.push_back((key, seq));
        c.map.insert(
            key,
            Entry {
                value,
                expires,
                seq,
                bytes,
            },
        );
        c.bytes += bytes;
        if c.order.len() > 2 * self.max_entries + 64 {
            let CacheInner { map, order, .. } = &mut *c;
            order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    #[cfg(test)]
    fn queue_len(&self) -> usize {
        self.lock().order.len()
    }
}

/// The numeric keys both remote backends have (`[auth.http]`, `[auth.introspection]`), with
/// their values and bounds, for [`check_bounds`].
pub(crate) fn bounded(
    timeout_ms: u64,
    max_connections: usize,
    cache_ttl_secs: u64,
    cache_max_entries: usize,
    deny_cache_ttl_secs: u64,
) -> [(&'static str, u64, Bound); 5] {
    [
        ("timeout_ms", timeout_ms, bounds::TIMEOUT_MS),
        (
            "max_connections",
            wide(max_connections),
            bounds::MAX_CONNECTIONS,
        ),
        ("cache_ttl_secs", cache_ttl_secs, bounds::CACHE_TTL_SECS),
        (
            "cache_max_entries",
            wide(cache_max_entries),
            bounds::CACHE_MAX_ENTRIES,
        ),
        (
            "deny_cache_ttl_secs",
            deny_cache_ttl_secs,
            bounds::CACHE_TTL_SECS,
        ),
    ]
}

/// Checks `(key, value, bound)` triples; errors name `prefix.key`.
pub(crate) fn check_bounds<const N: usize>(
    prefix: &str,
    keys: [(&'static str, u64, Bound); N],
) -> anyhow::Result<()> {
    for (key, value, bound) in keys {
        bound
            .check(key, value)
            .map_err(|e| anyhow::anyhow!("{prefix}.{e}"))?;
    }
    Ok(())
}

/// A count as `u64` (saturating, which a bound then refuses).
pub(crate) fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Parses a service URL: `http` or `https`, with a host. The error names `key`.
pub(crate) fn parse_url(key: &str, url: &str) -> anyhow::Result<Url> {
    let u = Url::parse(url).with_context(|| format!("{key}: invalid URL {url:?}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("{key}: must be an http:// or https:// URL, got {url:?}");
    }
    if u.host_str().is_none_or(str::is_empty) {
        bail!("{key}: the URL has no host: {url:?}");
    }
    if u.fragment().is_some() {
        bail!("{key}: the URL must not have a #fragment: {url:?}");
    }
    Ok(u)
}

/// Warns when credentials would cross a network in clear: `http://` to a host that is not
/// this machine.
pub(crate) fn warn_if_plain(key: &str, url: &Url) {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if url.scheme() == "http" && !local {
        warn!("{key}: {url} is plain HTTP: credentials cross the network unencrypted");
    }
}

/// Headers set by the client itself, which configuration must not replace.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
];

/// Builds extra request headers; each value is marked sensitive (kept out of debug output),
/// as headers configured here usually carry credentials. Errors name `key`.
pub(crate) fn header_map<'a>(
    key: &str,
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("{key}: invalid header name {name:?}"))?;
        if RESERVED_HEADERS.contains(&n.as_str()) {
            bail!("{key}: {name:?} is set by the broker and cannot be configured");
        }
        let mut v = HeaderValue::from_str(value)
            .with_context(|| format!("{key}.{name}: invalid header value"))?;
        v.set_sensitive(true);
        map.insert(n, v);
    }
    Ok(map)
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 section 2.3.1 asks for
/// it on the client id and secret of HTTP basic authentication).
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Serializes a map's values as `<redacted>`: configured headers usually carry credentials,
/// and the configuration is shown by the admin API.
pub(crate) fn serialize_redacted<S: serde::Serializer>(
    map: &std::collections::BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(map.len()))?;
    for k in map.keys() {
        m.serialize_entry(k, "<redacted>")?;
    }
    m.end()
}

#[cfg(test)]
#[path = "test_server.rs"]
pub(crate) mod test_server;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        KeyBuilder::default().field(&n.to_be_bytes()).finish()
    }

    #[test]
    fn the_cache_keeps_answers_until_they_expire() {
        let c: Cache<u32> = Cache::new(10);
        let t0 = Instant::now();
        c.insert(key(1), 1, Duration::from_secs(10), 0, t0);
        c.insert(key(2), 2, Duration::ZERO, 0, t0);
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(c.get(&key(2), t0), None, "a zero TTL is not cached");
        assert_eq!(c.get(&key(1), t0 + Duration::from_secs(10)), None);
        assert_eq!(c.len(), 0, "an expired entry is dropped when looked up");
    }

    #[test]
    fn a_full_cache_evicts_the_oldest_and_stays_bounded() {
        let c: Cache<u32> = Cache::new(3);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for n in 0..3 {
            c.insert(key(n), n, ttl, 0, t0);
        }
        c.insert(key(3), 3, ttl, 0, t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&key(0), t0), None, "the oldest went");
        assert_eq!(c.get(&key(3), t0), Some(3));
        // Replacing the same keys over and over leaves stale queue items behind; the queue is
        // compacted, so it stays bounded as well.
        for i in 0..10_000 {
            c.insert(key(i % 2), i, ttl, 0, t0);
        }
        assert!(c.len() <= 3);
        assert!(c.queue_len() <= 2 * 3 + 64 + 1, "{}", c.queue_len());
        assert_eq!(c.get(&key(1), t0), Some(9_999));
    }

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let c: Cache<u32> = Cache::with_byte_bound(100, 4 * (100 + ENTRY_OVERHEAD));
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        for n in 0..10 {
            c.insert(key(n), n, ttl, 100, t0);
        }
        assert_eq!(c.len(), 4);
        c.insert(key(99), 99, ttl, 1 << 30, t0);
        assert_eq!(
            c.get(&key(99), t0),
            None,
            "larger than the whole cache: not kept"
        );
        assert_eq!(c.get(&key(9), t0), Some(9));
    }

    #[test]
    fn keys_tell_fields_apart() {
        let a = KeyBuilder::default().field(b"ab").field(b"c").finish();
        let b = KeyBuilder::default().field(b"a").field(b"bc").finish();
        assert_ne!(a, b);
        let none = KeyBuilder::default().opt(None).finish();
        let empty = KeyBuilder::default().opt(Some(b"")).finish();
        assert_ne!(none, empty);
    }

    #[test]
    fn form_encoding_follows_the_whatwg_rules() {
        assert_eq!(form_encode("a-Z_0.*"), "a-Z_0.*");
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }

    #[test]
    fn urls_and_headers_are_checked() {
        assert!(parse_url("k", "https://auth.example/x").is_ok());
        for bad in ["ftp://x/", "not a url", "http://x/#f", "unix:/tmp/s"] {
            assert!(parse_url("k", bad).is_err(), "{bad}");
        }
        let ok = [("X-Api-Key".to_owned(), "s3cret".to_owned())];
        let map = header_map("k", ok.iter().map(|(a, b)| (a, b))).unwrap();
        assert!(map["x-api-key"].is_sensitive());
        for (n, v) in [("Content-Type", "x"), ("bad name", "x"), ("X", "a\nb")] {
            let h = [(n.to_owned(), v.to_owned())];
            assert!(
                header_map("k", h.iter().map(|(a, b)| (a, b))).is_err(),
                "{n}"
            );
        }
    }
}
