//! `/api/v1`: the admin API, JSON in and out, described by `openapi.json` (served at
//! `/api/v1/openapi.json`). Lists page with a cursor (`after` = the last key of the previous
//! page, `next` in the answer), so they work with a million clients. Every change goes
//! through the broker's own methods (`starling_broker::broker::admin`); a request that is
//! refused changes nothing.

mod broker;
mod dynamic;
mod messages;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use starling_broker::session::{Session, Subscription};
use starling_proto::{
    ProtocolVersion, QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName,
};
use tracing::info;

use super::{AppState, Identity};
use crate::http::error::ApiError;
use broker::{
    add_ban, add_member, bridges, cluster, config, get_log_level, list_bans, listeners, reload,
    remove_ban, remove_member, set_log_level, start_bridge, stats, stop_bridge,
};
use messages::{delete_retained, get_retained, list_retained, publish};

pub(super) use broker::redacted_config;

type ApiResult<T> = Result<T, ApiError>;
type St = State<Arc<AppState>>;

/// Longest page.
const MAX_PAGE: usize = 1000;
/// Page size when none is asked for.
const DEFAULT_PAGE: usize = 100;
/// The OpenAPI description.
const OPENAPI: &str = include_str!("../openapi.json");

/// Every `/api/v1` route.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/clients", get(list_clients))
        .route("/clients/{id}", get(get_client).delete(kick_client))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", get(get_session).delete(delete_session))
        .route(
            "/subscriptions",
            get(list_subscriptions)
                .post(add_subscription)
                .delete(remove_subscription),
        )
        .route("/retained", get(list_retained))
        .route(
            "/retained/{*topic}",
            get(get_retained).delete(delete_retained),
        )
        .route("/publish", post(publish))
        .route("/banned", get(list_bans).post(add_ban))
        .route("/banned/{kind}/{value}", delete(remove_ban))
        .route("/listeners", get(listeners))
        .route("/bridges", get(bridges))
        .route("/bridges/{name}/stop", post(stop_bridge))
        .route("/bridges/{name}/start", post(start_bridge))
        .route("/stats", get(stats))
        .route("/cluster", get(cluster))
        .route("/cluster/members", post(add_member))
        .route("/cluster/members/{id}", delete(remove_member))
        .route("/config", get(config))
        .route("/reload", post(reload))
        .route("/log-level", get(get_log_level).put(set_log_level))
        .merge(dynamic::routes())
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

pub(super) fn page_size(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n @ 1..=MAX_PAGE) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}, got {n}"
        ))),
    }
}

fn protocol_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

// --- Clients and sessions --------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientQuery {
    /// Client ids starting with this.
    prefix: Option<String>,
    username: Option<String>,
    /// The client's IP address.
    address: Option<String>,
    /// The listener's name (`tcp 127.0.0.1:1883`).
    listener: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A session (connected or not) as the API shows it.
fn session_json(state: &AppState, s: &Session, detail: bool) -> Value {
    let st = s.lock();
    let info = st.client_info().cloned();
    let mut v = json!({
        "client_id": &**s.client_id(),
        "connected": info.is_some(),
        "protocol": protocol_name(st.protocol()),
        "session_expiry_secs": st.expiry_secs(),
        "inflight": st.inflight_count(),
        "queued": st.queued(),
        "subscriptions": st.subscription_count(),
    });
    if let Some(i) = &info {
        set(&mut v, "address", json!(i.peer.map(|p| p.to_string())));
        set(&mut v, "listener", json!(&*i.listener));
        set(&mut v, "username", json!(i.username.as_deref()));
        set(&mut v, "keep_alive", json!(i.keep_alive));
        set(
            &mut v,
            "connected_at_ms",
            json!(state.unix_ms(i.connected_at)),
        );
        let (received, received_bytes, sent, sent_bytes) = i.counters.get();
        set(
            &mut v,
            "counters",
            json!({
                "messages_received": received,
                "bytes_received": received_bytes,
                "messages_sent": sent,
                "bytes_sent": sent_bytes,
            }),
        );
    }
    if let Some(at) = st.disconnected_at() {
        set(&mut v, "disconnected_at_ms", json!(state.unix_ms(at)));
    }
    if detail {
        let mut subs: Vec<Value> = st
            .subscriptions()
            .map(|(f, sub)| subscription_json(s.client_id(), f, sub))
            .collect();
        subs.sort_by(|a, b| filter_of(a).cmp(filter_of(b)));
        set(&mut v, "subscriptions", Value::Array(subs));
        let mut buffers = st.queue_buffers();
        buffers.sort_by(|a, b| a.filter.cmp(&b.filter));
        let buffers = (buffers.iter())
            .map(|b| {
                json!({
                    "filter": b.filter.as_ref().map(TopicFilter::as_str),
                    "queued": b.queued,
                    "bytes": b.bytes,
                    "dropped": b.dropped,
                })
            })
            .collect();
        set(&mut v, "buffers", Value::Array(buffers));
    }
    v
}

/// Sets `key` of a JSON object.
fn set(v: &mut Value, key: &str, value: Value) {
    if let Some(map) = v.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

/// The `filter` of a subscription's JSON, for sorting.
fn filter_of(v: &Value) -> &str {
    v.get("filter").and_then(Value::as_str).unwrap_or("")
}

fn client_matches(q: &ClientQuery, s: &Session) -> bool {
    if let Some(p) = &q.prefix
        && !s.client_id().starts_with(p.as_str())
    {
        return false;
    }
    let st = s.lock();
    let Some(info) = st.client_info() else {
        return false;
    };
    if let Some(u) = &q.username
        && info.username.as_deref() != Some(u.as_str())
    {
        return false;
    }
    if let Some(a) = &q.address
        && info.peer.map(|p| p.ip().to_string()).as_deref() != Some(a.as_str())
    {
        return false;
    }
    if let Some(l) = &q.listener
        && &*info.listener != l.as_str()
    {
        return false;
    }
    true
}

async fn list_clients(State(state): St, Query(q): Query<ClientQuery>) -> ApiResult<Json<Value>> {
    let limit = page_size(q.limit)?;
    let page = state
        .broker
        .sessions_page(q.after.as_deref(), limit, |s| client_matches(&q, s));
    let items: Vec<Value> = page
        .sessions
        .iter()
        .map(|s| session_json(&state, s, false))
        .collect();
    Ok(Json(json!({ "items": items, "next": page.next })))
}

async fn get_client(State(state): St, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    match state.broker.session(&id) {
        Some(s) if s.is_online() => Ok(Json(session_json(&state, &s, true))),
        _ => Err(ApiError::not_found(format!(
            "no client connected as {id:?}"
        ))),
    }
}

async fn kick_client(
    State(state): St,
    who: axum::Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.broker.kick(&id)?;
    info!(client_id = %id, by = %who.name, "client disconnected by an operator");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_sessions(State(state): St, Query(q): Query<SessionQuery>) -> ApiResult<Json<Value>> {
    let limit = page_size(q.limit)?;
    let page = state.broker.sessions_page(q.after.as_deref(), limit, |s| {
        !s.is_online()
            && q.prefix
                .as_deref()
                .is_none_or(|p| s.client_id().starts_with(p))
    });
    let items: Vec<Value> = page
        .sessions
        .iter()
        .map(|s| session_json(&state, s, false))
        .collect();
    Ok(Json(json!({ "items": items, "next": page.next })))
}

async fn get_session(State(state): St, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let s = state
        .broker
        .session(&id)
        .ok_or_else(|| ApiError::not_found(format!("no session for {id:?}")))?;
    Ok(Json(session_json(&state, &s, true)))
}

async fn delete_session(
    State(state): St,
    who: axum::Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.broker.discard_session(&id, Instant::now())?;
    info!(client_id = %id, by = %who.name, "session discarded by an operator");
    Ok(StatusCode::NO_CONTENT)
}

// --- Subscriptions ---------------------------------------------------------------------

fn subscription_json(client_id: &str, f: &TopicFilter, sub: &Subscription) -> Value {
    json!({
        "client_id": client_id,
        "filter": f.as_str(),
        "qos": sub.options.qos as u8,
        "no_local": sub.options.no_local,
        "retain_as_published": sub.options.retain_as_published,
        "retain_handling": sub.options.retain_handling as u8,
        "subscription_identifier": sub.id,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionQuery {
    client_id: Option<String>,
    /// The exact filter (as subscribed, `$share/...` included).
    filter: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_subscriptions(
    State(state): St,
    Query(q): Query<SubscriptionQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_size(q.limit)?;
    if let Some(id) = &q.client_id {
        let s = state
            .broker
            .session(id)
            .ok_or_else(|| ApiError::not_found(format!("no session for {id:?}")))?;
        let st = s.lock();
        let mut items: Vec<Value> = st
            .subscriptions()
            .filter(|(f, _)| q.filter.as_deref().is_none_or(|w| f.as_str() == w))
            .map(|(f, sub)| subscription_json(id, f, sub))
            .collect();
        items.sort_by(|a, b| filter_of(a).cmp(filter_of(b)));
        return Ok(Json(json!({ "items": items, "next": null })));
    }
    let Some(filter) = q.filter else {
        return Err(ApiError::bad_request("give client_id or filter"));
    };
    let f = parse_filter(&filter)?;
    let page = state
        .broker
        .sessions_page(q.after.as_deref(), limit, |s| s.lock().has_subscription(&f));
    let items: Vec<Value> = page
        .sessions
        .iter()
        .filter_map(|s| {
            let st = s.lock();
            st.subscriptions()
                .find(|(g, _)| **g == f)
                .map(|(g, sub)| subscription_json(s.client_id(), g, sub))
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": page.next })))
}

pub(super) fn parse_filter(f: &str) -> ApiResult<TopicFilter> {
    TopicFilter::new(Bytes::copy_from_slice(f.as_bytes()), usize::MAX)
        .map_err(|e| ApiError::bad_request(format!("invalid topic filter {f:?}: {e}")))
}

pub(super) fn parse_topic(t: &str) -> ApiResult<TopicName> {
    if t.is_empty() {
        return Err(ApiError::bad_request("the topic is empty"));
    }
    TopicName::new(Bytes::copy_from_slice(t.as_bytes()), usize::MAX)
        .map_err(|e| ApiError::bad_request(format!("invalid topic {t:?}: {e}")))
}

pub(super) fn parse_qos(q: u8) -> ApiResult<QoS> {
    QoS::from_u8(q).ok_or_else(|| ApiError::bad_request(format!("qos must be 0, 1 or 2, got {q}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    client_id: String,
    filter: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    no_local: bool,
    #[serde(default)]
    retain_as_published: bool,
    subscription_identifier: Option<u32>,
}

async fn add_subscription(
    State(state): St,
    who: axum::Extension<Identity>,
    Json(n): Json<NewSubscription>,
) -> ApiResult<Response> {
    let filter = parse_filter(&n.filter)?;
    let options = SubscriptionOptions {
        qos: parse_qos(n.qos)?,
        no_local: n.no_local,
        retain_as_published: n.retain_as_published,
        retain_handling: RetainHandling::DoNotSend,
    };
    if n.subscription_identifier
        .is_some_and(|i| i == 0 || i > 268_435_455)
    {
        return Err(ApiError::bad_request(
            "subscription_identifier must be 1 to 268435455",
        ));
    }
    let sub = Subscription {
        options,
        id: n.subscription_identifier,
    };
    let existed = state.broker.subscribe_for(&n.client_id, &filter, sub)?;
    info!(client_id = %n.client_id, filter = %n.filter, by = %who.name, "subscription added by an operator");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!({ "existed": existed }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionKey {
    client_id: String,
    filter: String,
}

async fn remove_subscription(
    State(state): St,
    who: axum::Extension<Identity>,
    Query(k): Query<SubscriptionKey>,
) -> ApiResult<StatusCode> {
    let filter = parse_filter(&k.filter)?;
    if !state.broker.unsubscribe_for(&k.client_id, &filter)? {
        return Err(ApiError::not_found(format!(
            "{:?} has no subscription to {:?}",
            k.client_id, k.filter
        )));
    }
    info!(client_id = %k.client_id, filter = %k.filter, by = %who.name, "subscription removed by an operator");
    Ok(StatusCode::NO_CONTENT)
}
