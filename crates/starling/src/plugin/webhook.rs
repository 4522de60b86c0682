//! The `webhook` plugin: POSTs the events it is configured for, as JSON arrays of event
//! objects, to one URL. It only observes: every decision it is asked for passes at once.
//!
//! Events wait in a bounded queue (`queue_size`); when it is full the oldest is dropped and
//! counted, so a dead or slow target never stalls the publish path. A sender task takes up
//! to `batch_size` events at a time, at least every `batch_ms`, and POSTs them; a failed POST
//! (a connection error, a timeout, a status other than 2xx) is retried `retries` times with
//! a doubling backoff from `backoff_ms`, then its events are dropped and counted. With a
//! `secret`, each POST carries `X-Starling-Signature: sha256={hex HMAC-SHA256 of the body}`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use starling_broker::Broker;
use starling_broker::hook::{
    AckEvent, Answer, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, DisconnectEvent,
    DropEvent, Event, Events, FilterVerdict, Hook, PublishVerdict, SessionActions, SessionEvent,
};
use starling_proto::topic::filter_matches;
use starling_proto::{Publish, QoS, SubscriptionOptions, TopicFilter};
use tokio::sync::Notify;
use tracing::warn;

use super::{BoxFuture, Built, PluginCtx, PluginStats, de};
use crate::connection::Stop;

/// The events sent when `events` is not set: every notification, no decisions.
const DEFAULT_EVENTS: [Event; 6] = [
    Event::Publish,
    Event::Delivered,
    Event::Dropped,
    Event::Session,
    Event::Connect,
    Event::Disconnected,
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_batch_ms")]
    batch_ms: u64,
    #[serde(default = "default_queue_size")]
    queue_size: usize,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_backoff_ms")]
    backoff_ms: u64,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    payload: bool,
}

fn default_batch_size() -> usize {
    100
}
fn default_batch_ms() -> u64 {
    100
}
fn default_queue_size() -> usize {
    10_000
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    200
}

/// The settings, checked.
#[derive(Clone, Debug)]
struct Target {
    url: reqwest::Url,
    events: Events,
    topics: Vec<TopicFilter>,
    batch_size: usize,
    batch: Duration,
    queue_size: usize,
    retries: u32,
    backoff: Duration,
    secret: Option<Vec<u8>>,
    ca_file: Option<PathBuf>,
    payload: bool,
}

fn target(own: toml::Table) -> anyhow::Result<Target> {
    let s: Settings = de(own)?;
    let url = reqwest::Url::parse(&s.url).map_err(|e| anyhow::anyhow!("url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("url: {:?} is not an http:// or https:// URL", s.url);
    }
    let events = match &s.events {
        None => DEFAULT_EVENTS.into_iter().collect(),
        Some(names) => {
            let mut e = Events::NONE;
            for n in names {
                let Some(ev) = Event::from_name(n) else {
                    let known: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
                    anyhow::bail!("events: unknown event {n:?} (one of {})", known.join(", "));
                };
                e = e.with(ev);
            }
            e
        }
    };
    let mut topics = Vec::new();
    for t in s.topics.iter().flatten() {
        topics.push(
            TopicFilter::try_from_str(t)
                .map_err(|_| anyhow::anyhow!("topics: {t:?} is not a valid topic filter"))?,
        );
    }
    let bounded = |key: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{key}: {v} is out of bounds ({lo} ..= {hi})"
            ))
        }
    };
    bounded("batch_size", s.batch_size as u64, 1, 10_000)?;
    bounded("batch_ms", s.batch_ms, 1, 60_000)?;
    bounded("queue_size", s.queue_size as u64, 1, 10_000_000)?;
    bounded("retries", u64::from(s.retries), 0, 100)?;
    bounded("backoff_ms", s.backoff_ms, 1, 600_000)?;
    Ok(Target {
        url,
        events,
        topics,
        batch_size: s.batch_size,
        batch: Duration::from_millis(s.batch_ms),
        queue_size: s.queue_size,
        retries: s.retries,
        backoff: Duration::from_millis(s.backoff_ms),
        secret: s.secret.map(String::into_bytes),
        ca_file: s.ca_file,
        payload: s.payload,
    })
}

/// Checks the settings.
pub fn check(own: toml::Table) -> anyhow::Result<()> {
    target(own).map(|_| ())
}

/// Counters of one webhook target, exported per target in `/metrics`.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// The plugin's name (the metrics label).
    pub name: String,
    /// Events queued.
    pub queued: AtomicU64,
    /// Events delivered (in a POST answered 2xx).
    pub sent: AtomicU64,
    /// Events dropped: the queue was full (the oldest went), or their POST failed every try.
    pub dropped: AtomicU64,
    /// POSTs that failed (each try).
    pub failed_posts: AtomicU64,
    /// Events waiting now.
    pub waiting: AtomicU64,
}

/// Builds the plugin and its sender task.
pub fn build(own: toml::Table, ctx: &PluginCtx) -> anyhow::Result<Built> {
    let target = target(own)?;
    let client = crate::http_client::build(
        ctx.timeout,
        2,
        target.ca_file.as_deref(),
        &format!("plugin {} ca_file", ctx.name),
    )?;
    let stats = Arc::new(TargetStats {
        name: ctx.name.clone(),
        ..TargetStats::default()
    });
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        target,
        stats: stats.clone(),
        plugin: ctx.stats.clone(),
    });
    let task = shared.clone();
    Ok(Built {
        tasks: vec![Box::new(move |_broker: Arc<Broker>, stop| -> BoxFuture {
            Box::pin(send_loop(task, client, stop))
        })],
        webhook: Some(stats),
        ..Built::hook(Arc::new(Webhook(shared)))
    })
}

#[derive(Debug)]
struct Shared {
    /// Events as JSON, oldest first; at most `target.queue_size`.
    queue: Mutex<VecDeque<Value>>,
    /// Woken when a batch is full.
    notify: Notify,
    target: Target,
    stats: Arc<TargetStats>,
    plugin: Arc<PluginStats>,
}

impl Shared {
    fn push(&self, event: Value) {
        let len = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= self.target.queue_size {
                // Full: the oldest goes.
                q.pop_front();
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(event);
            q.len()
        };
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.stats.waiting.store(len as u64, Ordering::Relaxed);
        if len >= self.target.batch_size {
            self.notify.notify_one();
        }
    }

    fn take_batch(&self) -> Vec<Value> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(self.target.batch_size);
        let batch: Vec<Value> = q.drain(..n).collect();
        self.stats.waiting.store(q.len() as u64, Ordering::Relaxed);
        batch
    }

    fn wants_topic(&self, topic: &str) -> bool {
        self.target.topics.is_empty()
            || (self.target.topics.iter()).any(|f| filter_matches(f.as_bytes(), topic.as_bytes()))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn qos(q: QoS) -> u8 {
    q as u8
}

fn client_json(c: &ClientRef<'_>) -> Value {
    json!({
        "client_id": c.client_id,
        "username": c.username,
        "peer": c.peer.map(|p| p.to_string()),
        "listener": c.listener,
        "protocol": c.protocol.level(),
    })
}

/// An event object: `event`, `ts` (Unix ms) and the event's fields.
fn event(name: &str, fields: Value) -> Value {
    let mut v = json!({ "event": name, "ts": now_ms() });
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), fields) {
        obj.extend(more);
    }
    v
}

/// The hook: queues the events it wants, decides nothing.
#[derive(Debug)]
struct Webhook(Arc<Shared>);

impl Webhook {
    fn payload(&self, payload: &[u8]) -> Value {
        if self.0.target.payload {
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload))
        } else {
            Value::Null
        }
    }
}

impl Hook for Webhook {
    fn name(&self) -> &str {
        "webhook"
    }

    fn events(&self) -> Events {
        self.0.target.events
    }

    fn on_connect(&self, e: &ConnectEvent<'_>) -> Answer<ConnectVerdict> {
        let mut fields = client_json(&e.client);
        if let Some(o) = fields.as_object_mut() {
            o.insert("clean_start".into(), e.clean_start.into());
            o.insert("keep_alive".into(), e.keep_alive.into());
        }
        self.0.push(event(Event::Connect.name(), fields));
        Answer::Now(ConnectVerdict::Accept)
    }

    fn on_publish(&self, c: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        if self.0.wants_topic(p.topic.as_str()) {
            let fields = json!({
                "client_id": c.client_id,
                "username": c.username,
                "topic": p.topic.as_str(),
                "qos": qos(p.qos),
                "retain": p.retain,
                "payload_size": p.payload.len(),
                "payload": self.payload(&p.payload),
            });
            self.0.push(event(Event::Publish.name(), fields));
        }
        Answer::Now(PublishVerdict::Pass)
    }

    fn on_subscribe(
        &self,
        c: &ClientRef<'_>,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
    ) -> Answer<FilterVerdict> {
        let fields = json!({
            "client_id": c.client_id,
            "username": c.username,
            "filter": filter.as_str(),
            "qos": qos(options.qos),
        });
        self.0.push(event(Event::Subscribe.name(), fields));
        Answer::Now(FilterVerdict::Pass)
    }

    fn on_unsubscribe(&self, c: &ClientRef<'_>, filter: &TopicFilter) -> Answer<FilterVerdict> {
        let fields = json!({
            "client_id": c.client_id,
            "username": c.username,
            "filter": filter.as_str(),
        });
        self.0.push(event(Event::Unsubscribe.name(), fields));
        Answer::Now(FilterVerdict::Pass)
    }

    fn on_delivered(&self, e: &DeliveryEvent<'_>) {
        if self.0.wants_topic(e.msg.topic.as_str()) {
            let fields = json!({
                "client_id": e.client_id,
                "topic": e.msg.topic.as_str(),
                "qos": qos(e.qos),
                "packet_id": e.packet_id,
                "from": e.msg.publisher.as_deref(),
                "payload_size": e.msg.payload.len(),
                "payload": self.payload(&e.msg.payload),
            });
            self.0.push(event(Event::Delivered.name(), fields));
        }
    }

    fn on_acked(&self, e: &AckEvent<'_>) {
        let fields = json!({
            "client_id": e.client_id,
            "packet_id": e.packet_id,
            "qos": qos(e.qos),
        });
        self.0.push(event(Event::Acked.name(), fields));
    }

    fn on_dropped(&self, e: &DropEvent<'_>) {
        if self.0.wants_topic(e.topic) {
            let fields = json!({
                "client_id": e.client_id,
                "topic": e.topic,
                "qos": qos(e.qos),
                "payload_size": e.payload_len,
                "reason": e.reason.name(),
            });
            self.0.push(event(Event::Dropped.name(), fields));
        }
    }

    fn on_session(&self, e: &SessionEvent<'_>, _: &mut SessionActions) {
        let mut fields = e
            .client
            .as_ref()
            .map_or_else(|| json!({ "client_id": e.client_id }), client_json);
        if let Some(o) = fields.as_object_mut() {
            o.insert("change".into(), e.change.name().into());
        }
        self.0.push(event(Event::Session.name(), fields));
    }

    fn on_disconnected(&self, e: &DisconnectEvent<'_>) {
        let mut fields = client_json(&e.client);
        if let Some(o) = fields.as_object_mut() {
            o.insert("reason_code".into(), e.reason.as_u8().into());
            o.insert("reason".into(), e.detail.into());
        }
        self.0.push(event(Event::Disconnected.name(), fields));
    }
}

/// The HMAC-SHA256 of `body` under `secret`, in hex.
fn signature(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Sends batches until `stop`; then what is queued, one try per batch, until one fails (a
/// dead target does not hold the shutdown up: the rest are dropped and counted).
async fn send_loop(shared: Arc<Shared>, client: reqwest::Client, stop: Arc<Stop>) {
    loop {
        let stopping = tokio::select! {
            () = stop.wait() => true,
            () = shared.notify.notified() => false,
            () = tokio::time::sleep(shared.target.batch) => false,
        };
        loop {
            let batch = shared.take_batch();
            if batch.is_empty() {
                break;
            }
            if !post(&shared, &client, batch, stopping).await && stopping {
                let left = shared.take_all();
                shared.stats.dropped.fetch_add(left, Ordering::Relaxed);
                break;
            }
        }
        if stopping {
            return;
        }
    }
}

impl Shared {
    /// Empties the queue; how many events it held.
    fn take_all(&self) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len() as u64;
        q.clear();
        self.stats.waiting.store(0, Ordering::Relaxed);
        n
    }
}

/// POSTs one batch, with retries (none while stopping); its events are counted as sent or
/// dropped. Whether it was sent.
async fn post(
    shared: &Shared,
    client: &reqwest::Client,
    batch: Vec<Value>,
    stopping: bool,
) -> bool {
    let n = batch.len() as u64;
    let body = match serde_json::to_vec(&Value::Array(batch)) {
        Ok(b) => b,
        Err(_) => {
            shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
            return false;
        }
    };
    let sig = (shared.target.secret.as_deref()).and_then(|s| signature(s, &body));
    let tries = if stopping {
        1
    } else {
        shared.target.retries + 1
    };
    let mut backoff = shared.target.backoff;
    for attempt in 0..tries {
        let mut request = client
            .post(shared.target.url.clone())
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(sig) = &sig {
            request = request.header("x-starling-signature", format!("sha256={sig}"));
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                shared.stats.sent.fetch_add(n, Ordering::Relaxed);
                return true;
            }
            Ok(r) => {
                shared.stats.failed_posts.fetch_add(1, Ordering::Relaxed);
                if attempt == 0 {
                    warn!(plugin = %shared.stats.name, status = %r.status(), "webhook POST refused");
                }
            }
            Err(e) => {
                shared.stats.failed_posts.fetch_add(1, Ordering::Relaxed);
                if attempt == 0 {
                    warn!(plugin = %shared.stats.name, error = %e, "webhook POST failed");
                }
            }
        }
        shared.plugin.failed();
        if attempt + 1 < tries {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
    shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn settings_are_checked() {
        let t = target(table("url = \"http://127.0.0.1:1/hook\"")).unwrap();
        assert!(t.events.has(Event::Publish) && !t.events.has(Event::Subscribe));
        assert!(target(table("url = \"ftp://x\"")).is_err());
        assert!(target(table("url = \"http://x\"\nevents = [\"nope\"]")).is_err());
        assert!(target(table("url = \"http://x\"\ntopics = [\"a/#/b\"]")).is_err());
        assert!(target(table("url = \"http://x\"\nqueue_size = 0")).is_err());
        assert!(target(table("url = \"http://x\"\nbogus = 1")).is_err());
        let t = target(table("url = \"http://x\"\nevents = [\"client.subscribe\"]")).unwrap();
        assert!(t.events.has(Event::Subscribe) && !t.events.has(Event::Publish));
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let mut t = target(table("url = \"http://x\"\nqueue_size = 2")).unwrap();
        t.batch_size = 10;
        let shared = Shared {
            queue: Mutex::default(),
            notify: Notify::new(),
            target: t,
            stats: Arc::default(),
            plugin: Arc::default(),
        };
        for i in 0..3 {
            shared.push(json!(i));
        }
        assert_eq!(shared.take_batch(), vec![json!(1), json!(2)]);
        assert_eq!(shared.stats.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
