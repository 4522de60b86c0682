//! The gRPC plugin's connection and its notification stream, both run by the plugin's one
//! background task (ended by the server's stop).
//!
//! The supervisor connects to the endpoint, asks `Describe` which events the plugin wants
//! and publishes the connection for the hook's calls; when a call or the stream finds the
//! connection gone (status UNAVAILABLE), it withdraws it and connects again after a backoff
//! that doubles from `reconnect_ms` to `max_reconnect_ms`. Meanwhile there is no connection:
//! decisions fail at once (counted; `on_failure` decides) and notifications wait in their
//! queue.
//!
//! Notifications wait in a bounded queue (`queue_size`; when full, the oldest is dropped and
//! counted) that one client-streaming `Notify` call drains while the connection lasts.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use starling_broker::hook::{Event, Events};
use tokio::sync::{Notify, Semaphore, watch};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

use super::convert::{self, MAX_PAYLOAD};
use super::pb;
use super::pb::plugin_client::PluginClient;
use crate::connection::Stop;
use crate::plugin::PluginStats;

/// The largest gRPC message either way: a publish and its change carry a payload of at most
/// [`MAX_PAYLOAD`], plus its topic and properties.
const MAX_MESSAGE_BYTES: usize = MAX_PAYLOAD + 1024 * 1024;

/// Where the plugin listens.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// `http://host:port`.
    Http(String),
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
}

/// A live connection and what the plugin wants on it.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) client: PluginClient<Channel>,
    /// The events the plugin asked for (within the configured ones).
    pub(super) wants: Events,
}

/// What the hook and the task share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) target: Target,
    /// The events configured (`events`); the hook's, fixed.
    pub(super) events: Events,
    /// The plugin's deadline, for each call (and for connecting and `Describe`).
    pub(super) timeout: Duration,
    pub(super) reconnect: Duration,
    pub(super) max_reconnect: Duration,
    /// Decisions in flight: at most `max_concurrency`; more wait for a permit (within the
    /// deadline of the guard around them, then `on_failure`).
    pub(super) limit: Arc<Semaphore>,
    /// The connection, `None` while there is none.
    pub(super) conn: watch::Sender<Option<Arc<Conn>>>,
    /// Signalled when a call found the current connection gone.
    down: Notify,
    /// Notifications, oldest first; at most `queue_size`.
    queue: Mutex<VecDeque<pb::Notification>>,
    queue_size: usize,
    /// Woken when a notification is queued.
    queued: Notify,
    pub(super) stats: Arc<PluginStats>,
    /// Notifications dropped: the queue was full (the oldest went).
    pub(super) dropped: AtomicU64,
    /// Notifications handed to the stream.
    pub(super) sent: AtomicU64,
    /// When a failure was last logged (ms since `started`), to log at most one a second.
    last_log: AtomicU64,
    started: Instant,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: String,
        target: Target,
        events: Events,
        timeout: Duration,
        reconnect: Duration,
        max_reconnect: Duration,
        max_concurrency: usize,
        queue_size: usize,
        stats: Arc<PluginStats>,
    ) -> Self {
        Self {
            name,
            target,
            events,
            timeout,
            reconnect,
            max_reconnect,
            limit: Arc::new(Semaphore::new(max_concurrency)),
            conn: watch::Sender::new(None),
            down: Notify::new(),
            queue: Mutex::new(VecDeque::new()),
            queue_size,
            queued: Notify::new(),
            stats,
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            last_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The connection, if there is one.
    pub(super) fn current(&self) -> Option<Arc<Conn>> {
        self.conn.borrow().clone()
    }

    /// Counts a failure and logs it (at most one a second).
    pub(super) fn failure(&self, what: &str) {
        self.stats.failed();
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_log.load(Ordering::Relaxed);
        if (now.saturating_sub(last) >= 1000 || last == 0)
            && self
                .last_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(plugin = %self.name, "gRPC plugin: {what}; its on_failure decides");
        }
    }

    /// A call on `conn` failed with `status`: counted, and the connection withdrawn when the
    /// status says it is gone.
    /// A call past its deadline (the plugin's `DEADLINE_EXCEEDED`, when it comes before the
    /// guard's own timer) is counted as a timeout.
    pub(super) fn call_failed(&self, conn: &Arc<Conn>, status: &Status) {
        match status.code() {
            Code::Unavailable => self.withdraw(conn),
            Code::DeadlineExceeded => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => {}
        }
        self.failure(&format!(
            "call failed: {} {}",
            status.code(),
            status.message()
        ));
    }

    /// Tells the supervisor that `conn` is gone, if it is still the current one.
    fn withdraw(&self, conn: &Arc<Conn>) {
        let current = self.conn.borrow().clone();
        if current.is_some_and(|c| Arc::ptr_eq(&c, conn)) {
            self.down.notify_one();
        }
    }

    /// Queues a notification of `event` (unless the connected plugin does not want it).
    pub(super) fn push(&self, event: Event, n: impl FnOnce() -> pb::Notification) {
        if self
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| !c.wants.has(event))
        {
            return;
        }
        let n = n();
        let full = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Full: the oldest goes, counted (and as a failure of the plugin).
            let full = q.len() >= self.queue_size;
            if full {
                q.pop_front();
            }
            q.push_back(n);
            full
        };
        if full {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.failure("notification queue full, the oldest dropped");
        }
        self.queued.notify_one();
    }

    fn pop(&self) -> Option<pb::Notification> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.pop_front()
    }

    #[cfg(test)]
    pub(super) fn pop_for_test(&self) -> Option<pb::Notification> {
        self.pop()
    }
}

/// The plugin's background task: the supervisor and the notification stream, until `stop`.
pub(super) async fn run(shared: Arc<Shared>, stop: Arc<Stop>) {
    tokio::join!(supervise(&shared, &stop), notify_loop(&shared, &stop));
    let dropped = shared.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        info!(plugin = %shared.name, dropped, "gRPC plugin: notifications dropped in all (queue full)");
    }
}

/// Connects, and connects again after a backoff whenever the connection is found gone.
async fn supervise(shared: &Shared, stop: &Stop) {
    let mut backoff = shared.reconnect;
    let mut told = false;
    while !stop.is_stopping() {
        let attempt = tokio::select! {
            () = stop.wait() => break,
            r = connect(shared) => r,
        };
        match attempt {
            Ok(conn) => {
                info!(plugin = %shared.name, events = ?conn.wants, "gRPC plugin connected");
                backoff = shared.reconnect;
                told = false;
                shared.conn.send_replace(Some(Arc::new(conn)));
                tokio::select! {
                    () = stop.wait() => break,
                    () = shared.down.notified() => {}
                }
                shared.conn.send_replace(None);
                warn!(plugin = %shared.name, "gRPC plugin connection lost; connecting again");
            }
            Err(e) if !told => {
                warn!(plugin = %shared.name, error = %e, "cannot reach the gRPC plugin; trying again with a backoff");
                told = true;
            }
            Err(e) => debug!(plugin = %shared.name, error = %e, "cannot reach the gRPC plugin"),
        }
        tokio::select! {
            () = stop.wait() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(shared.max_reconnect);
    }
    shared.conn.send_replace(None);
}

/// A new connection, with the events its plugin wants.
async fn connect(shared: &Shared) -> anyhow::Result<Conn> {
    let channel = tokio::time::timeout(shared.timeout, channel(&shared.target, shared.timeout))
        .await
        .map_err(|_| anyhow::anyhow!("connecting timed out"))??;
    let mut client = PluginClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut req = Request::new(pb::DescribeRequest {
        broker_version: env!("CARGO_PKG_VERSION").to_owned(),
        plugin_name: shared.name.clone(),
    });
    req.set_timeout(shared.timeout);
    let described = tokio::time::timeout(shared.timeout, client.describe(req))
        .await
        .map_err(|_| anyhow::anyhow!("Describe timed out"))?;
    let wants = match described {
        Ok(r) => convert::wanted(&r.into_inner(), shared.events),
        Err(s) if s.code() == Code::Unimplemented => shared.events,
        Err(s) => anyhow::bail!("Describe failed: {} {}", s.code(), s.message()),
    };
    Ok(Conn { client, wants })
}

async fn channel(target: &Target, timeout: Duration) -> anyhow::Result<Channel> {
    match target {
        Target::Http(url) => {
            let endpoint = Endpoint::from_shared(url.clone())?
                .connect_timeout(timeout)
                .tcp_nodelay(true);
            Ok(endpoint.connect().await?)
        }
        Target::Unix(path) => {
            let path = path.clone();
            // The URI is not used: the connector goes to the socket.
            let endpoint = Endpoint::from_static("http://localhost").connect_timeout(timeout);
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            });
            Ok(endpoint.connect_with_connector(connector).await?)
        }
    }
}

/// Whether `wants` has any notification event.
fn wants_notifications(wants: Events) -> bool {
    [
        Event::Delivered,
        Event::Acked,
        Event::Dropped,
        Event::Session,
        Event::Disconnected,
    ]
    .into_iter()
    .any(|e| wants.has(e))
}

/// While there is a connection whose plugin wants notifications, one `Notify` call drains the
/// queue into it; when the call ends with an error, it is made again on the next connection
/// (or after a backoff on the same one).
async fn notify_loop(shared: &Arc<Shared>, stop: &Arc<Stop>) {
    let mut rx = shared.conn.subscribe();
    loop {
        let conn = rx.borrow_and_update().clone();
        let Some(conn) = conn.filter(|c| wants_notifications(c.wants)) else {
            tokio::select! {
                () = stop.wait() => return,
                r = rx.changed() => if r.is_err() { return } else { continue },
            }
        };
        let stream = futures_util::stream::unfold(
            (shared.clone(), stop.clone(), conn.wants),
            |(s, stop, wants)| async move {
                loop {
                    while let Some(n) = s.pop() {
                        if convert::event_of(&n).is_some_and(|e| wants.has(e)) {
                            s.sent.fetch_add(1, Ordering::Relaxed);
                            return Some((n, (s, stop, wants)));
                        }
                    }
                    if stop.is_stopping() {
                        return None;
                    }
                    tokio::select! {
                        () = stop.wait() => return None,
                        () = s.queued.notified() => {}
                    }
                }
            },
        );
        let mut client = conn.client.clone();
        // At stop the stream ends and the plugin has `timeout` to answer the call.
        let grace = async {
            stop.wait().await;
            tokio::time::sleep(shared.timeout).await;
        };
        let result = tokio::select! {
            r = client.notify(stream) => r,
            () = grace => return,
        };
        if stop.is_stopping() {
            return;
        }
        match result {
            Ok(_) => {}
            Err(s) if s.code() == Code::Unimplemented => {
                shared.failure("Notify is not implemented; notifications wait, then drop");
                // Until another connection.
                tokio::select! {
                    () = stop.wait() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                continue;
            }
            Err(s) => shared.call_failed(&conn, &s),
        }
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(shared.reconnect) => {}
        }
    }
}
