//! The `grpc` plugin: an out-of-process plugin, in any language, that implements the service
//! `starling.plugin.v1.Plugin` (`proto/starling/plugin/v1/plugin.proto`); the broker is the
//! client. See `docs/plugins-grpc.md`.
//!
//! Decisions (connect, publish, subscribe, unsubscribe) are unary calls answered later: the
//! client concerned waits, at most `timeout_ms` (the guard of `plugin/mod.rs`; the call
//! carries the same deadline), then the plugin's `on_failure` decides. At most
//! `max_concurrency` calls are in flight; more wait for their turn within that deadline.
//! Without a connection (the plugin is down or restarting) a decision fails at once, counted,
//! and `on_failure` decides; an answer that is not valid (see `convert.rs`) is a failure too.
//! Notifications never wait: see `conn.rs`.
//!
//! Settings: `endpoint` (`http://host:port` or `unix:/path`), `events` (default: all),
//! `max_concurrency` (64), `queue_size` (10000), `reconnect_ms` (100), `max_reconnect_ms`
//! (5000).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use starling_broker::Broker;
use starling_broker::hook::{
    AckEvent, Answer, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, DisconnectEvent,
    DropEvent, Event, Events, FilterVerdict, Hook, PublishVerdict, SessionActions, SessionEvent,
};
use starling_proto::{Publish, SubscriptionOptions, TopicFilter};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{BoxFuture, Built, OnFailure, PluginCtx, de};
use conn::{Shared, Target};
use convert::BadAnswer;
use pb::plugin_client::PluginClient;

mod conn;
mod convert;
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub mod pb;
#[cfg(test)]
mod tests;

/// How much later than `timeout_ms` a call's own deadline is.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    endpoint: String,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default = "default_max_concurrency")]
    max_concurrency: usize,
    #[serde(default = "default_queue_size")]
    queue_size: usize,
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
    #[serde(default = "default_max_reconnect_ms")]
    max_reconnect_ms: u64,
}

fn default_max_concurrency() -> usize {
    64
}
fn default_queue_size() -> usize {
    10_000
}
fn default_reconnect_ms() -> u64 {
    100
}
fn default_max_reconnect_ms() -> u64 {
    5_000
}

/// The settings, checked.
#[derive(Clone, Debug)]
struct Checked {
    target: Target,
    events: Events,
    max_concurrency: usize,
    queue_size: usize,
    reconnect: Duration,
    max_reconnect: Duration,
}

fn checked(own: toml::Table) -> anyhow::Result<Checked> {
    let s: Settings = de(own)?;
    let target = if let Some(path) = s.endpoint.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            anyhow::bail!("endpoint: {:?} names no socket path", s.endpoint);
        }
        Target::Unix(PathBuf::from(path))
    } else {
        let uri: tonic::transport::Uri =
            (s.endpoint.parse()).map_err(|e| anyhow::anyhow!("endpoint: {:?}: {e}", s.endpoint))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            anyhow::bail!(
                "endpoint: {:?} is not http://host:port or unix:/path (TLS is not supported)",
                s.endpoint
            );
        }
        Target::Http(s.endpoint.clone())
    };
    let events = match &s.events {
        None => Events::ALL,
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
    let bounded = |key: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "{key}: {v} is out of bounds ({lo} ..= {hi})"
            ))
        }
    };
    bounded("max_concurrency", s.max_concurrency as u64, 1, 10_000)?;
    bounded("queue_size", s.queue_size as u64, 1, 10_000_000)?;
    bounded("reconnect_ms", s.reconnect_ms, 1, 600_000)?;
    bounded(
        "max_reconnect_ms",
        s.max_reconnect_ms,
        s.reconnect_ms,
        600_000,
    )?;
    Ok(Checked {
        target,
        events,
        max_concurrency: s.max_concurrency,
        queue_size: s.queue_size,
        reconnect: Duration::from_millis(s.reconnect_ms),
        max_reconnect: Duration::from_millis(s.max_reconnect_ms),
    })
}

/// Checks the settings.
pub fn check(own: toml::Table) -> anyhow::Result<()> {
    checked(own).map(|_| ())
}

/// Builds the plugin and its task (the connection and the notification stream).
pub fn build(own: toml::Table, ctx: &PluginCtx) -> anyhow::Result<Built> {
    let c = checked(own)?;
    let shared = Arc::new(Shared::new(
        ctx.name.clone(),
        c.target,
        c.events,
        ctx.timeout,
        c.reconnect,
        c.max_reconnect,
        c.max_concurrency,
        c.queue_size,
        ctx.stats.clone(),
    ));
    let task = shared.clone();
    Ok(Built {
        hook: Arc::new(Grpc {
            shared,
            on_failure: ctx.on_failure,
        }),
        tasks: vec![Box::new(move |_broker: Arc<Broker>, stop| -> BoxFuture {
            Box::pin(conn::run(task, stop))
        })],
        webhook: None,
        auth: None,
        acl: None,
    })
}

/// The hook: decisions are calls to the plugin, notifications are queued for its stream.
#[derive(Debug)]
struct Grpc {
    shared: Arc<Shared>,
    on_failure: OnFailure,
}

impl Grpc {
    /// A request carrying the plugin's deadline, with a margin: the guard's own timer (in
    /// `plugin/mod.rs`) decides first, counts the timeout and cancels the call.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.set_timeout(self.shared.timeout + DEADLINE_MARGIN);
        r
    }

    /// A decision on `event`: `pass` if the connected plugin does not want it, `failed` at
    /// once without a connection, else the answer of `call` read by `verdict` (a failed call
    /// or an answer `verdict` rejects is `failed`, counted).
    fn decide<T, R, Fut>(
        &self,
        event: Event,
        pass: T,
        failed: T,
        call: impl FnOnce(PluginClient<Channel>) -> Fut + Send + 'static,
        verdict: impl FnOnce(R) -> Result<T, BadAnswer> + Send + 'static,
    ) -> Answer<T>
    where
        T: Send + 'static,
        R: Send + 'static,
        Fut: Future<Output = Result<Response<R>, Status>> + Send + 'static,
    {
        let Some(conn) = self.shared.current() else {
            self.shared.failure("not connected");
            return Answer::Now(failed);
        };
        if !conn.wants.has(event) {
            return Answer::Now(pass);
        }
        let shared = self.shared.clone();
        Answer::Later(Box::pin(async move {
            // Closed only if the semaphore is dropped, which it is not while `shared` lives.
            let Ok(_permit) = shared.limit.clone().acquire_owned().await else {
                return failed;
            };
            match call(conn.client.clone()).await {
                Ok(r) => match verdict(r.into_inner()) {
                    Ok(v) => v,
                    Err(e) => {
                        shared.failure(&format!("an answer that cannot be used: {e}"));
                        failed
                    }
                },
                Err(status) => {
                    shared.call_failed(&conn, &status);
                    failed
                }
            }
        }))
    }
}

impl Hook for Grpc {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn events(&self) -> Events {
        self.shared.events
    }

    fn on_connect(&self, e: &ConnectEvent<'_>) -> Answer<ConnectVerdict> {
        let req = self.request(convert::connect_request(e));
        self.decide(
            Event::Connect,
            ConnectVerdict::Accept,
            self.on_failure.connect(),
            move |mut c| async move { c.on_connect(req).await },
            convert::connect_verdict,
        )
    }

    fn on_publish(&self, client: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        let req = self.request(convert::publish_request(client, p));
        let original = p.clone();
        self.decide(
            Event::Publish,
            PublishVerdict::Pass,
            self.on_failure.publish(),
            move |mut c| async move { c.on_publish(req).await },
            move |r| convert::publish_verdict(r, &original),
        )
    }

    fn on_subscribe(
        &self,
        client: &ClientRef<'_>,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
    ) -> Answer<FilterVerdict> {
        let req = self.request(convert::subscribe_request(client, filter, options));
        let options = *options;
        self.decide(
            Event::Subscribe,
            FilterVerdict::Pass,
            self.on_failure.filter(),
            move |mut c| async move { c.on_subscribe(req).await },
            move |r| convert::filter_verdict(r, Some(options)),
        )
    }

    fn on_unsubscribe(
        &self,
        client: &ClientRef<'_>,
        filter: &TopicFilter,
    ) -> Answer<FilterVerdict> {
        let req = self.request(convert::unsubscribe_request(client, filter));
        self.decide(
            Event::Unsubscribe,
            FilterVerdict::Pass,
            self.on_failure.filter(),
            move |mut c| async move { c.on_unsubscribe(req).await },
            |r| convert::filter_verdict(r, None),
        )
    }

    fn on_delivered(&self, e: &DeliveryEvent<'_>) {
        self.shared.push(Event::Delivered, || convert::delivered(e));
    }

    fn on_acked(&self, e: &AckEvent<'_>) {
        self.shared.push(Event::Acked, || convert::acked(e));
    }

    fn on_dropped(&self, e: &DropEvent<'_>) {
        self.shared.push(Event::Dropped, || convert::dropped(e));
    }

    fn on_session(&self, e: &SessionEvent<'_>, _: &mut SessionActions) {
        self.shared.push(Event::Session, || convert::session(e));
    }

    fn on_disconnected(&self, e: &DisconnectEvent<'_>) {
        self.shared
            .push(Event::Disconnected, || convert::disconnected(e));
    }
}
