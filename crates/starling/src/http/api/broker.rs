//! Bans, listeners, bridges (and stopping and starting them), statistics, the running
//! configuration, reload and the log level.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use starling_broker::bans::{Ban, BanKind};

use super::{ApiResult, Identity, St};
use crate::config::Config;
use crate::http::AppState;
use crate::http::error::ApiError;

// --- Bans ------------------------------------------------------------------------------

fn ban_json(state: &AppState, b: &Ban) -> Value {
    json!({
        "kind": b.kind.name(),
        "value": b.value,
        "reason": b.reason,
        "since_ms": state.unix_ms(b.since),
        "expires_ms": b.duration.map(|d| state.unix_ms(b.since + d)),
    })
}

pub(super) async fn list_bans(State(state): St) -> Json<Value> {
    let items: Vec<Value> = state
        .broker
        .bans
        .list(Instant::now())
        .iter()
        .map(|b| ban_json(&state, b))
        .collect();
    Json(json!({ "items": items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewBan {
    /// `clientid`, `username` or `address`.
    kind: String,
    value: String,
    #[serde(default)]
    reason: String,
    /// Seconds; absent: until lifted.
    duration_secs: Option<u64>,
}

pub(super) async fn add_ban(
    State(state): St,
    who: axum::Extension<Identity>,
    Json(n): Json<NewBan>,
) -> ApiResult<Response> {
    let kind = BanKind::parse(&n.kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "kind must be clientid, username or address, got {:?}",
            n.kind
        ))
    })?;
    if n.duration_secs
        .is_some_and(|d| d == 0 || d > 10 * 365 * 86_400)
    {
        return Err(ApiError::bad_request(
            "duration_secs must be 1 to 315360000 (ten years)",
        ));
    }
    if n.reason.len() > 1024 {
        return Err(ApiError::bad_request("reason is longer than 1024 bytes"));
    }
    let ban = Ban {
        kind,
        value: n.value,
        reason: n.reason,
        since: Instant::now(),
        duration: n.duration_secs.map(Duration::from_secs),
    };
    let ban = state
        .broker
        .bans
        .add(ban)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    info!(kind = kind.name(), value = %ban.value, by = %who.name, "ban added by an operator");
    // Whoever is connected under the banned name goes now.
    if kind == BanKind::ClientId {
        let _ = state.broker.kick(&ban.value);
    } else {
        kick_matching(&state, &ban);
    }
    Ok((StatusCode::CREATED, Json(ban_json(&state, &ban))).into_response())
}

/// Disconnects every client a username or address ban applies to.
fn kick_matching(state: &AppState, ban: &Ban) {
    for s in state.broker.sessions_snapshot() {
        let mut st = s.lock();
        let hit = st.client_info().is_some_and(|i| match ban.kind {
            BanKind::Username => i.username.as_deref() == Some(ban.value.as_str()),
            BanKind::Address => i.peer.is_some_and(|p| {
                let ip = match p.ip() {
                    std::net::IpAddr::V6(v6) => {
                        v6.to_ipv4_mapped().map_or(p.ip(), std::net::IpAddr::V4)
                    }
                    v4 => v4,
                };
                ip.to_string() == ban.value
            }),
            BanKind::ClientId => false,
        });
        if hit {
            st.kick();
        }
    }
}

pub(super) async fn remove_ban(
    State(state): St,
    who: axum::Extension<Identity>,
    Path((kind, value)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let k = BanKind::parse(&kind)
        .ok_or_else(|| ApiError::bad_request(format!("unknown ban kind {kind:?}")))?;
    if !state.broker.bans.remove(k, &value) {
        return Err(ApiError::not_found(format!("no {kind} ban on {value:?}")));
    }
    info!(kind = %kind, %value, by = %who.name, "ban lifted by an operator");
    Ok(StatusCode::NO_CONTENT)
}

// --- Listeners, stats, config, reload, log level ---------------------------------------

pub(super) async fn listeners(State(state): St) -> Json<Value> {
    let mut connected: std::collections::HashMap<String, u64> = Default::default();
    for s in state.broker.sessions_snapshot() {
        if let Some(i) = s.lock().client_info() {
            *connected.entry(i.listener.to_string()).or_default() += 1;
        }
    }
    let items: Vec<Value> = state
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": &*l.name,
                "protocol": l.protocol,
                "address": l.endpoint,
                "state": if state.ready.load(std::sync::atomic::Ordering::Relaxed) { "open" } else { "closed" },
                "connections": connected.get(&*l.name).copied().unwrap_or(0),
                "accepted": l.accepted.get(),
            })
        })
        .collect();
    Json(json!({ "items": items }))
}

/// One bridge as the API shows it.
fn bridge_json(state: &AppState, s: &crate::bridge::BridgeStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let session = state
        .broker
        .session(&crate::bridge::local_client_id(&s.name));
    let connected = s.connected.load(Relaxed);
    let enabled = s.switch.is_on();
    json!({
        "name": s.name,
        "enabled": enabled,
        "state": match (enabled, connected) {
            (_, true) => "connected",
            (true, false) => "connecting",
            (false, false) => "stopped",
        },
        "connected": connected,
        "messages_out": s.out_messages.load(Relaxed),
        "bytes_out": s.out_bytes.load(Relaxed),
        "messages_in": s.in_messages.load(Relaxed),
        "bytes_in": s.in_bytes.load(Relaxed),
        "reconnects": s.reconnects.load(Relaxed),
        "dropped": s.dropped.load(Relaxed),
        "pending": s.pending.load(Relaxed),
        "queued": session.map_or(0, |x| x.lock().queued()),
    })
}

/// The cluster as this node sees it: its role, the leader, the members and their
/// incarnations, the log's positions; `{"enabled": false}` on a single node.
pub(super) async fn cluster(State(state): St) -> Json<Value> {
    match &state.cluster {
        Some(node) => Json(crate::cluster::status(node)),
        None => Json(json!({ "enabled": false })),
    }
}

/// A node to add to the cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewMember {
    id: u64,
    /// Its inter-node address (`host:port` of its `[cluster] bind`, or advertised address).
    addr: String,
    /// Make it a voter once it has caught up (default); false: a learner.
    #[serde(default = "yes")]
    voter: bool,
}

fn yes() -> bool {
    true
}

fn cluster_of(state: &AppState) -> ApiResult<&std::sync::Arc<crate::cluster::Handle>> {
    state.cluster.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_a_cluster",
            "this broker is not a node of a cluster",
        )
    })
}

/// Adds a node to the cluster (as a learner, then a voter once it has caught up with the
/// log); answers once committed and applied here, with the cluster's status.
pub(super) async fn add_member(
    State(state): St,
    who: axum::Extension<Identity>,
    Json(m): Json<NewMember>,
) -> ApiResult<Json<Value>> {
    let handle = cluster_of(&state)?;
    if m.id == 0 {
        return Err(ApiError::bad_request("id must be at least 1"));
    }
    if m.addr.is_empty() || m.addr.len() > 255 || !m.addr.contains(':') {
        return Err(ApiError::bad_request(format!(
            "addr must be host:port, got {:?}",
            m.addr
        )));
    }
    info!(id = m.id, addr = %m.addr, voter = m.voter, by = %who.name, "cluster member added by an operator");
    let change = starling_cluster::members::Change::Add {
        id: m.id,
        addr: m.addr,
        voter: m.voter,
    };
    crate::cluster::change_members(handle, change)
        .await
        .map_err(member_error)?;
    Ok(Json(crate::cluster::status(handle)))
}

/// Removes a node from the cluster; answers once committed and applied here, with the
/// cluster's status.
pub(super) async fn remove_member(
    State(state): St,
    who: axum::Extension<Identity>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    let handle = cluster_of(&state)?;
    info!(id, by = %who.name, "cluster member removed by an operator");
    let change = starling_cluster::members::Change::Remove { id };
    crate::cluster::change_members(handle, change)
        .await
        .map_err(member_error)?;
    Ok(Json(crate::cluster::status(handle)))
}

fn member_error(e: starling_cluster::ProposeError) -> ApiError {
    match e {
        starling_cluster::ProposeError::Failed(m) => {
            ApiError::new(StatusCode::CONFLICT, "refused", m)
        }
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            format!("the change was not committed: {other}"),
        ),
    }
}

pub(super) async fn bridges(State(state): St) -> Json<Value> {
    let items: Vec<Value> = state
        .bridges
        .iter()
        .map(|s| bridge_json(&state, s))
        .collect();
    Json(json!({ "items": items }))
}

pub(super) async fn stop_bridge(
    state: St,
    who: axum::Extension<Identity>,
    name: Path<String>,
) -> ApiResult<Json<Value>> {
    switch_bridge(state, who, name, false)
}

pub(super) async fn start_bridge(
    state: St,
    who: axum::Extension<Identity>,
    name: Path<String>,
) -> ApiResult<Json<Value>> {
    switch_bridge(state, who, name, true)
}

/// Turns a bridge on or off (its task connects or disconnects at once); the bridge as
/// `GET /bridges` shows it. Switching to the state it is in changes nothing.
fn switch_bridge(
    State(state): St,
    who: axum::Extension<Identity>,
    Path(name): Path<String>,
    on: bool,
) -> ApiResult<Json<Value>> {
    let s = state
        .bridges
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no bridge named {name:?}")))?;
    if s.switch.set(on) {
        let what = if on { "started" } else { "stopped" };
        info!(bridge = %name, by = %who.name, "bridge {what} by an operator");
    }
    Ok(Json(bridge_json(&state, s)))
}

pub(super) async fn stats(State(state): St) -> Json<Value> {
    let b = &state.broker;
    let m = &b.metrics;
    let qos =
        |q: &starling_broker::metrics::ByQos| json!([q.0[0].get(), q.0[1].get(), q.0[2].get()]);
    Json(json!({
        "uptime_secs": b.started().elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "clients_connected": m.clients_connected.get(),
        "clients_maximum": m.clients_maximum.get(),
        "sessions": b.session_count(),
        "subscriptions": b.subscription_count(),
        "retained_messages": b.retained_count(),
        "retained_bytes": b.retained_bytes(),
        "connections_total": m.connections_total.get(),
        "messages_received": m.publish_received.get(),
        "messages_sent": m.publish_sent.get(),
        "messages_received_by_qos": qos(&m.publish_received_by_qos),
        "messages_sent_by_qos": qos(&m.publish_sent_by_qos),
        "bytes_received": m.bytes_received.get(),
        "bytes_sent": m.bytes_sent.get(),
        "messages_dropped": m.publish_dropped.get(),
        "auth_refused": m.auth_refused.get(),
        "acl_denied": m.acl_denied.get(),
        "bans": b.bans.len(),
        "store_available": b.persistence().is_none() || m.store_available.get() == 1,
    }))
}

pub(super) async fn config(State(state): St) -> Json<Value> {
    Json(state.config.clone())
}

#[derive(Serialize)]
struct ReloadAnswer {
    ok: bool,
    reloaded: Vec<String>,
    errors: Vec<String>,
}

pub(super) async fn reload(State(state): St, who: axum::Extension<Identity>) -> Response {
    let r = state.reloadable.clone();
    let report = tokio::task::spawn_blocking(move || r.reload_report()).await;
    let Ok((reloaded, errors)) = report else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reload failed",
        )
        .into_response();
    };
    info!(by = %who.name, reloaded = reloaded.len(), errors = errors.len(), "reload requested over HTTP");
    let answer = ReloadAnswer {
        ok: errors.is_empty(),
        reloaded,
        errors: errors.iter().map(|e| format!("{e:#}")).collect(),
    };
    let status = if answer.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(answer)).into_response()
}

pub(super) async fn get_log_level() -> ApiResult<Json<Value>> {
    match crate::logging::level() {
        Some(l) => Ok(Json(json!({ "level": l }))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "unavailable",
            "logging is not managed by this process",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogLevel {
    level: String,
}

pub(super) async fn set_log_level(
    who: axum::Extension<Identity>,
    Json(l): Json<LogLevel>,
) -> ApiResult<Json<Value>> {
    crate::logging::set_level(&l.level).map_err(|e| match e {
        crate::logging::LevelError::Unmanaged => ApiError::new(
            StatusCode::CONFLICT,
            "unavailable",
            "logging is not managed by this process",
        ),
        crate::logging::LevelError::Invalid(e) => {
            ApiError::bad_request(format!("invalid log level {:?}: {e}", l.level))
        }
    })?;
    info!(level = %l.level, by = %who.name, "log level changed");
    Ok(Json(json!({ "level": l.level })))
}

/// The configuration as JSON, every value under a key naming a secret replaced.
pub(in crate::http) fn redacted_config(config: &Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    redact(&mut v);
    v
}

fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let secret = ["password", "secret", "token"]
                    .iter()
                    .any(|s| k.contains(s))
                    && !k.ends_with("_file");
                if secret && !val.is_null() {
                    *val = json!("<redacted>");
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}
