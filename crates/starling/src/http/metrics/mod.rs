//! `GET /metrics`: the broker's counters in the OpenMetrics text format (which Prometheus
//! scrapes), encoded by `prometheus-client` from a collector that reads the broker's atomics
//! at each scrape: nothing on the publish path changes when metrics are on, and several
//! brokers in one process (tests) each have their own.
//!
//! Names start with `starling_`; counters end in `_total` (the encoder adds it), values are
//! in base units (seconds, bytes). Gauges that need a walk over the sessions (inflight and
//! queued messages, connections per listener, offline sessions) cost one pass per scrape.

mod cluster;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use starling_broker::metrics::{AuthMethod, ByProtocol, ByQos, Histogram};

use super::AppState;

/// The OpenMetrics content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric.
pub(super) async fn render(State(state): State<Arc<AppState>>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector(state)));
    let mut out = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

#[derive(Debug)]
struct BrokerCollector(Arc<AppState>);

/// The `[auth]` backends' own counters: JWT denials by reason and key-set fetches, the HTTP
/// and introspection services' requests, answers, errors and cache.
fn auth_backends(e: &mut Enc<'_>, b: &crate::authn::Backends) -> Res {
    if let Some(j) = &b.jwt {
        let s = j.stats().snapshot();
        counter(e, "starling_jwt_verified", "Tokens verified", s.verified)?;
        family(
            e,
            "starling_jwt_denied",
            "Tokens refused, by reason",
            MetricType::Counter,
            "reason",
            starling_auth::jwt::JwtReason::ALL
                .iter()
                .map(|r| (r.as_str(), s.denied.get(r.index()).copied().unwrap_or(0))),
        )?;
        counter(e, "starling_jwks_fetches", "JWKS fetches", s.jwks_fetches)?;
        counter(
            e,
            "starling_jwks_fetch_failures",
            "JWKS fetches that failed",
            s.jwks_fetch_failures,
        )?;
        gauge(e, "starling_jwks_keys", "Keys in the JWKS now", s.jwks_keys)?;
    }
    for (backend, stats) in [
        ("http", &b.http_stats),
        ("introspection", &b.introspection_stats),
    ] {
        let Some(stats) = stats else {
            continue;
        };
        let s = stats.snapshot();
        let requests = format!("starling_auth_{backend}_requests");
        let cache = format!("starling_auth_{backend}_cache");
        {
            let mut m = e.encode_descriptor(
                &requests,
                "Requests to the service, by outcome",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [
                ("allowed", s.allowed),
                ("denied", s.denied),
                ("ignored", s.ignored),
                ("timeout", s.errors_timeout),
                ("bad_status", s.errors_status),
                ("connect_error", s.errors_connect),
                ("bad_body", s.errors_body),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("result", result)])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                &cache,
                "Answers looked up in the cache",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [("hit", s.cache_hits), ("miss", s.cache_misses)] {
                ConstCounter::new(v).encode(m.encode_family(&[("result", result)])?)?;
            }
        }
        gauge(
            e,
            &format!("starling_auth_{backend}_in_flight"),
            "Requests waiting for the service now",
            s.in_flight,
        )?;
        counter(
            e,
            &format!("starling_auth_{backend}_request_microseconds"),
            "Time the answered requests took, in microseconds",
            s.latency_us_sum,
        )?;
    }
    Ok(())
}

/// Figures that need a walk over the sessions.
#[derive(Default)]
struct SessionWalk {
    offline: u64,
    inflight: u64,
    queued: u64,
    by_listener: BTreeMap<Arc<str>, u64>,
}

fn walk(state: &AppState) -> SessionWalk {
    let mut w = SessionWalk::default();
    for l in &state.listeners {
        w.by_listener.insert(l.name.clone(), 0);
    }
    for s in state.broker.sessions_snapshot() {
        let st = s.lock();
        w.inflight += st.inflight_count() as u64;
        w.queued += st.queued() as u64;
        match st.client_info() {
            // An `Arc` clone, not a copy of the name: this runs once per session per scrape.
            Some(info) => *w.by_listener.entry(info.listener.clone()).or_default() += 1,
            None => w.offline += 1,
        }
    }
    w
}

type Enc<'a> = DescriptorEncoder<'a>;
type Res = Result<(), std::fmt::Error>;

fn counter(e: &mut Enc<'_>, name: &str, help: &str, v: u64) -> Res {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut Enc<'_>, name: &str, help: &str, v: u64) -> Res {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One metric with a series per label value.
fn family<'v>(
    e: &mut Enc<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    series: impl IntoIterator<Item = (&'v str, u64)>,
) -> Res {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (value, v) in series {
        let labels = [(label, value)];
        let s = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(s)?,
            _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(s)?,
        }
    }
    Ok(())
}

fn by_qos(q: &ByQos) -> [(&'static str, u64); 3] {
    [
        ("0", q.0[0].get()),
        ("1", q.0[1].get()),
        ("2", q.0[2].get()),
    ]
}

fn by_protocol(p: &ByProtocol) -> Vec<(&'static str, u64)> {
    p.0.iter()
        .enumerate()
        .map(|(i, c)| (ByProtocol::label(i), c.get()))
        .collect()
}

/// A histogram kept in integer `unit`s, exposed divided by `scale` (microseconds as seconds:
/// 1e6; counts: 1).
fn histogram(e: &mut Enc<'_>, name: &str, help: &str, h: &Histogram, scale: f64) -> Res {
    let (counts, sum) = h.snapshot();
    let mut buckets: Vec<(f64, u64)> = h
        .bounds()
        .iter()
        .map(|&b| b as f64 / scale)
        .chain(std::iter::once(f64::MAX))
        .zip(counts.iter().copied())
        .collect();
    buckets.truncate(h.bounds().len() + 1);
    let count = counts.iter().sum();
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum as f64 / scale,
        count,
        &buckets,
        None,
    )
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Res {
        let state = &self.0;
        let b = &state.broker;
        let m = &b.metrics;
        let e = &mut e;
        {
            let mut info = e.encode_descriptor(
                "starling_build",
                "Version of the running broker",
                None,
                MetricType::Info,
            )?;
            info.encode_info(&[
                ("version", crate::version::VERSION),
                ("commit", crate::version::COMMIT),
            ])?;
        }
        let uptime = Instant::now().saturating_duration_since(b.started());
        gauge(
            e,
            "starling_uptime_seconds",
            "Seconds since the broker started",
            uptime.as_secs(),
        )?;

        // Connections and sessions.
        let w = walk(state);
        family(
            e,
            "starling_connections",
            "Clients connected now, by listener",
            MetricType::Gauge,
            "listener",
            w.by_listener.iter().map(|(k, v)| (&**k, *v)),
        )?;
        family(
            e,
            "starling_connections_accepted",
            "Connections accepted, by listener (TCP, TLS, WebSocket, QUIC)",
            MetricType::Counter,
            "listener",
            state.listeners.iter().map(|l| (&*l.name, l.accepted.get())),
        )?;
        family(
            e,
            "starling_clients_connected",
            "Clients connected now, by protocol version",
            MetricType::Gauge,
            "protocol",
            by_protocol(&m.connected_by_protocol),
        )?;
        family(
            e,
            "starling_connects",
            "CONNECTs accepted, by protocol version",
            MetricType::Counter,
            "protocol",
            by_protocol(&m.connects_by_protocol),
        )?;
        let refused: Vec<(String, u64)> = m
            .connects_refused_by_reason
            .nonzero()
            .map(|(r, v)| (format!("0x{r:02X}"), v))
            .collect();
        family(
            e,
            "starling_connects_refused",
            "CONNECTs refused with a CONNACK, by reason code",
            MetricType::Counter,
            "reason",
            refused.iter().map(|(k, v)| (k.as_str(), *v)),
        )?;
        family(
            e,
            "starling_connections_closed_at_accept",
            "Connections closed at accept, by cause",
            MetricType::Counter,
            "cause",
            [
                ("max_connections", m.connections_refused.get()),
                ("rate_limited", m.connections_rate_limited.get()),
                ("banned", m.connections_banned.get()),
            ],
        )?;
        let parked = m.connections_parked.get();
        gauge(
            e,
            "starling_connections_parked",
            "Idle plain TCP connections parked now (no task, no reactor registration)",
            parked.saturating_sub(m.connections_resumed.get()),
        )?;
        counter(
            e,
            "starling_connection_parks",
            "Times an idle connection was parked",
            parked,
        )?;
        family(
            e,
            "starling_proxy_protocol_rejected",
            "Connections closed over their PROXY protocol header, by reason",
            MetricType::Counter,
            "reason",
            starling_broker::metrics::PROXY_REJECT_REASONS
                .iter()
                .zip(&m.proxy_rejected)
                .map(|(r, c)| (*r, c.get())),
        )?;
        let connected = m.clients_connected.get();
        family(
            e,
            "starling_sessions",
            "Sessions, by state",
            MetricType::Gauge,
            "state",
            [("connected", connected), ("offline", w.offline)],
        )?;
        counter(
            e,
            "starling_sessions_expired",
            "Sessions that expired",
            m.sessions_expired.get(),
        )?;
        counter(
            e,
            "starling_sessions_taken_over_elsewhere",
            "Sessions ended because their client id was claimed on another node of the cluster that did not take them over",
            m.sessions_taken_over_elsewhere.get(),
        )?;
        counter(
            e,
            "starling_sessions_handed_over",
            "Sessions handed over to another node of the cluster that took their client id",
            m.sessions_handed_over.get(),
        )?;
        counter(
            e,
            "starling_sessions_adopted",
            "Sessions another node of the cluster handed over to this one",
            m.sessions_adopted.get(),
        )?;
        counter(
            e,
            "starling_clients_kicked",
            "Clients disconnected by an operator",
            m.clients_kicked.get(),
        )?;
        counter(
            e,
            "starling_clients_sent_elsewhere",
            "Clients disconnected with 0x9C Use another server because this node lost its cluster's majority",
            m.clients_sent_elsewhere.get(),
        )?;
        counter(
            e,
            "starling_protocol_errors",
            "Connections closed for a protocol violation or malformed packet",
            m.protocol_errors.get(),
        )?;

        // Messages.
        family(
            e,
            "starling_messages_received",
            "PUBLISH packets received, by QoS",
            MetricType::Counter,
            "qos",
            by_qos(&m.publish_received_by_qos),
        )?;
        family(
            e,
            "starling_messages_received_bytes",
            "Payload bytes received in PUBLISH packets, by QoS",
            MetricType::Counter,
            "qos",
            by_qos(&m.payload_received_by_qos),
        )?;
        family(
            e,
            "starling_messages_sent",
            "PUBLISH packets sent, by QoS",
            MetricType::Counter,
            "qos",
            by_qos(&m.publish_sent_by_qos),
        )?;
        family(
            e,
            "starling_messages_sent_bytes",
            "Payload bytes sent in PUBLISH packets, by QoS",
            MetricType::Counter,
            "qos",
            by_qos(&m.payload_sent_by_qos),
        )?;
        family(
            e,
            "starling_messages_dropped",
            "Messages dropped, by reason (acl_denied also counts refused subscriptions)",
            MetricType::Counter,
            "reason",
            [
                ("queue_full", m.dropped_queue_full.get()),
                ("subscription_queue_full", m.dropped_subscription_full.get()),
                ("expired", m.dropped_expired.get()),
                ("too_large", m.dropped_too_large.get()),
                ("no_subscriber", m.dropped_no_subscriber.get()),
                ("acl_denied", m.acl_denied.get()),
                ("store_low_space", m.publishes_refused_low_space.get()),
                ("plugin", m.dropped_by_hook.get()),
            ],
        )?;
        counter(
            e,
            "starling_publish_rate_limited",
            "Times a client's reading was paused by the publish rate limit (nothing is dropped)",
            m.rate_limited.get(),
        )?;
        gauge(
            e,
            "starling_messages_inflight",
            "Outbound QoS 1/2 messages awaiting acknowledgement",
            w.inflight,
        )?;
        gauge(
            e,
            "starling_messages_queued",
            "Messages queued for sessions",
            w.queued,
        )?;
        family(
            e,
            "starling_packets",
            "MQTT packets, by direction",
            MetricType::Counter,
            "direction",
            [
                ("received", m.messages_received.get()),
                ("sent", m.messages_sent.get()),
            ],
        )?;
        family(
            e,
            "starling_network_bytes",
            "Bytes on the wire, by direction",
            MetricType::Counter,
            "direction",
            [
                ("received", m.bytes_received.get()),
                ("sent", m.bytes_sent.get()),
            ],
        )?;
        histogram(
            e,
            "starling_deliver_latency_seconds",
            "From a PUBLISH received to its delivery written for a subscriber",
            &m.deliver_latency_us,
            1e6,
        )?;

        // Subscriptions and retained messages.
        gauge(
            e,
            "starling_subscriptions",
            "Subscriptions (shared ones included)",
            b.subscription_count() as u64,
        )?;
        gauge(
            e,
            "starling_shared_subscriptions",
            "Shared subscriptions",
            b.shared_subscription_count() as u64,
        )?;
        gauge(
            e,
            "starling_retained_messages",
            "Retained messages",
            b.retained_count() as u64,
        )?;
        gauge(
            e,
            "starling_retained_bytes",
            "Payload bytes of the retained messages",
            b.retained_bytes() as u64,
        )?;

        // Authentication, authorisation, bans.
        {
            let mut f = e.encode_descriptor(
                "starling_auth",
                "Authentication outcomes, by method",
                None,
                MetricType::Counter,
            )?;
            for method in AuthMethod::ALL {
                for (result, c) in [
                    ("success", m.auth_succeeded.of(method)),
                    ("failure", m.auth_failed.of(method)),
                ] {
                    let labels = [("method", method.label()), ("result", result)];
                    ConstCounter::new(c.get()).encode(f.encode_family(&labels)?)?;
                }
            }
        }
        counter(
            e,
            "starling_acl_denied",
            "Publishes, subscriptions and deliveries refused by the ACL",
            m.acl_denied.get(),
        )?;
        gauge(
            e,
            "starling_bans",
            "Bans set by an operator",
            b.bans.len() as u64,
        )?;
        counter(
            e,
            "starling_connects_banned",
            "CONNECTs refused because of an operator's ban",
            m.connects_banned.get(),
        )?;
        counter(
            e,
            "starling_addresses_banned",
            "Addresses banned for reconnecting in a loop",
            m.addresses_banned.get(),
        )?;
        counter(
            e,
            "starling_http_requests_refused",
            "HTTP requests refused for their credentials or role",
            state.http_refused.get(),
        )?;
        counter(
            e,
            "starling_credentials_expired",
            "Connections closed because their credentials expired (a token's exp)",
            m.credentials_expired.get(),
        )?;
        {
            let mut f = e.encode_descriptor(
                "starling_auth_backend_answers",
                "Answers of the authentication chains' backends (backend \"none\": nobody claimed the client and the anonymous rules answered)",
                None,
                MetricType::Counter,
            )?;
            for (backend, result, n) in state.auth_counters.snapshot() {
                if n == 0 && backend == "other" {
                    continue;
                }
                let labels = [("backend", backend), ("result", result)];
                ConstCounter::new(n).encode(f.encode_family(&labels)?)?;
            }
        }
        auth_backends(e, &state.auth_backends)?;

        // Bridges.
        if !state.bridges.is_empty() {
            let each = |f: &dyn Fn(&crate::bridge::BridgeStats) -> u64| {
                state
                    .bridges
                    .iter()
                    .map(|s| (s.name.as_str(), f(s)))
                    .collect::<Vec<_>>()
            };
            use std::sync::atomic::Ordering::Relaxed;
            type Series<'a> = Vec<(&'a str, u64)>;
            let families: [(&str, &str, MetricType, Series<'_>); 8] = [
                (
                    "starling_bridge_connected",
                    "1 while the bridge is connected to its remote",
                    MetricType::Gauge,
                    each(&|s| u64::from(s.connected.load(Relaxed))),
                ),
                (
                    "starling_bridge_messages_out",
                    "Messages the bridge sent to its remote (acknowledged at QoS 1 and 2)",
                    MetricType::Counter,
                    each(&|s| s.out_messages.load(Relaxed)),
                ),
                (
                    "starling_bridge_bytes_out",
                    "Payload bytes of those",
                    MetricType::Counter,
                    each(&|s| s.out_bytes.load(Relaxed)),
                ),
                (
                    "starling_bridge_messages_in",
                    "Messages the bridge received from its remote and published here",
                    MetricType::Counter,
                    each(&|s| s.in_messages.load(Relaxed)),
                ),
                (
                    "starling_bridge_bytes_in",
                    "Payload bytes of those",
                    MetricType::Counter,
                    each(&|s| s.in_bytes.load(Relaxed)),
                ),
                (
                    "starling_bridge_reconnects",
                    "Connections to the remote after the first",
                    MetricType::Counter,
                    each(&|s| s.reconnects.load(Relaxed)),
                ),
                (
                    "starling_bridge_dropped",
                    "Messages the remote refused, or that matched no topic line",
                    MetricType::Counter,
                    each(&|s| s.dropped.load(Relaxed)),
                ),
                (
                    "starling_bridge_pending",
                    "Messages handed to the bridge and not yet acknowledged by the remote (more wait in its session queue)",
                    MetricType::Gauge,
                    each(&|s| s.pending.load(Relaxed)),
                ),
            ];
            for (name, help, kind, series) in families {
                family(e, name, help, kind, "bridge", series)?;
            }
            let queued: Vec<(&str, u64)> = state
                .bridges
                .iter()
                .map(|s| {
                    let session = b.session(&crate::bridge::local_client_id(&s.name));
                    (
                        s.name.as_str(),
                        session.map_or(0, |x| x.lock().queued() as u64),
                    )
                })
                .collect();
            family(
                e,
                "starling_bridge_queued",
                "Messages waiting in the bridge's session for their turn (while the remote is away)",
                MetricType::Gauge,
                "bridge",
                queued,
            )?;
        }

        cluster::cluster(e, state)?;

        counter(
            e,
            "starling_plugin_refusals",
            "CONNECTs and subscription filters refused by a plugin",
            m.hook_refused.get(),
        )?;
        plugins(e, state)?;

        // The store.
        if b.persistence().is_some() {
            gauge(
                e,
                "starling_store_available",
                "1 while the store commits, 0 while it fails",
                m.store_available.get(),
            )?;
            counter(
                e,
                "starling_store_commits",
                "Store batches committed",
                m.store_commits.get(),
            )?;
            counter(
                e,
                "starling_store_records_undone",
                "Message records deleted before they were committed (delivered and acknowledged within a commit cycle), so never written",
                b.persistence().map_or(0, |p| p.journal.undone_records()),
            )?;
            counter(
                e,
                "starling_store_commit_failures",
                "Store batches that failed to commit",
                m.store_commit_failures.get(),
            )?;
            histogram(
                e,
                "starling_store_commit_duration_seconds",
                "Time to commit one batch",
                &m.store_commit_us,
                1e6,
            )?;
            histogram(
                e,
                "starling_store_batch_operations",
                "Operations per committed batch",
                &m.store_batch_ops,
                1.0,
            )?;
        }
        Ok(())
    }
}

/// Per-plugin and per-webhook-target counters (labels bounded by the config).
fn plugins(e: &mut Enc<'_>, state: &AppState) -> Res {
    use std::sync::atomic::Ordering::Relaxed;
    if !state.plugins.is_empty() {
        let each = |f: &dyn Fn(&crate::plugin::PluginStats) -> u64| -> Vec<(&str, u64)> {
            (state.plugins.iter())
                .map(|s| (s.name.as_str(), f(s)))
                .collect()
        };
        let families = [
            (
                "starling_plugin_calls",
                "Decisions asked of the plugin",
                each(&|s| s.calls.load(Relaxed)),
            ),
            (
                "starling_plugin_timeouts",
                "Decisions the plugin did not give within its timeout_ms (its on_failure decided)",
                each(&|s| s.timeouts.load(Relaxed)),
            ),
            (
                "starling_plugin_failures",
                "Decisions and events the plugin failed on",
                each(&|s| s.failures.load(Relaxed)),
            ),
        ];
        for (name, help, series) in families {
            family(e, name, help, MetricType::Counter, "plugin", series)?;
        }
    }
    if !state.webhooks.is_empty() {
        let each = |f: &dyn Fn(&crate::plugin::webhook::TargetStats) -> u64| -> Vec<(&str, u64)> {
            (state.webhooks.iter())
                .map(|s| (s.name.as_str(), f(s)))
                .collect()
        };
        let families = [
            (
                "starling_webhook_events_queued",
                "Events queued for the webhook target",
                MetricType::Counter,
                each(&|s| s.queued.load(Relaxed)),
            ),
            (
                "starling_webhook_events_sent",
                "Events the target acknowledged (2xx)",
                MetricType::Counter,
                each(&|s| s.sent.load(Relaxed)),
            ),
            (
                "starling_webhook_events_dropped",
                "Events dropped: the queue was full (oldest first) or every try of their POST failed",
                MetricType::Counter,
                each(&|s| s.dropped.load(Relaxed)),
            ),
            (
                "starling_webhook_posts_failed",
                "POSTs that failed (each try)",
                MetricType::Counter,
                each(&|s| s.failed_posts.load(Relaxed)),
            ),
            (
                "starling_webhook_events_waiting",
                "Events waiting in the target's queue",
                MetricType::Gauge,
                each(&|s| s.waiting.load(Relaxed)),
            ),
        ];
        for (name, help, kind, series) in families {
            family(e, name, help, kind, "plugin", series)?;
        }
    }
    Ok(())
}
