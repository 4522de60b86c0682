//! Retained messages (list by filter, read, clear) and publishing on an operator's behalf.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use starling_auth::Client;
use starling_broker::message::Message;
use starling_proto::{Properties, PropertyValues, Publish};

use super::{ApiResult, Identity, St, page_size, parse_filter, parse_qos, parse_topic};
use crate::http::error::ApiError;

// --- Retained messages -----------------------------------------------------------------

fn payload_json(payload: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(s) => (json!(s), "utf8"),
        Err(_) => (
            json!(base64::engine::general_purpose::STANDARD.encode(payload)),
            "base64",
        ),
    }
}

fn message_json(m: &Message) -> Value {
    let (payload, encoding) = payload_json(&m.payload);
    json!({
        "topic": m.topic.as_str(),
        "qos": m.qos as u8,
        "payload": payload,
        "payload_encoding": encoding,
        "size": m.payload.len(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetainedQuery {
    /// A topic filter; default `#` (every topic not starting with `$`).
    filter: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_retained(
    State(state): St,
    Query(q): Query<RetainedQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_size(q.limit)?;
    let filter = parse_filter(q.filter.as_deref().unwrap_or("#"))?;
    if filter.share_group().is_some() {
        return Err(ApiError::bad_request(
            "a shared filter matches no retained message",
        ));
    }
    let mut all = state
        .broker
        .retained_matching(filter.match_filter(), Instant::now());
    all.retain(|m| q.after.as_deref().is_none_or(|a| m.topic.as_str() > a));
    all.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    let more = all.len() > limit;
    all.truncate(limit);
    let next = more.then(|| all.last().map(|m| m.topic.as_str().to_owned()));
    let items: Vec<Value> = all.iter().map(|m| message_json(m)).collect();
    Ok(Json(json!({ "items": items, "next": next.flatten() })))
}

pub(super) async fn get_retained(
    State(state): St,
    Path(topic): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = parse_topic(&topic)?;
    state
        .broker
        .retained_matching(t.as_bytes(), Instant::now())
        .first()
        .map(|m| Json(message_json(m)))
        .ok_or_else(|| ApiError::not_found(format!("no retained message on {topic:?}")))
}

pub(super) async fn delete_retained(
    State(state): St,
    who: axum::Extension<Identity>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    let t = parse_topic(&topic)?;
    if !state.broker.clear_retained(t, Instant::now()) {
        return Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )));
    }
    info!(%topic, by = %who.name, "retained message cleared by an operator");
    Ok(StatusCode::NO_CONTENT)
}

// --- Publish ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishProperties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Base64.
    correlation_data: Option<String>,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `utf8` (default) or `base64`.
    payload_encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishProperties,
    /// Publish with this user's ACL (the ACL file of the first listener that has one).
    username: Option<String>,
}

pub(super) async fn publish(
    State(state): St,
    who: axum::Extension<Identity>,
    Json(p): Json<PublishRequest>,
) -> ApiResult<Json<Value>> {
    let topic = parse_topic(&p.topic)?;
    if topic.is_dollar() && topic.as_str().starts_with("$SYS") {
        return Err(ApiError::bad_request("$SYS topics are the broker's own"));
    }
    let qos = parse_qos(p.qos)?;
    let payload = match p.payload_encoding.as_deref() {
        None | Some("utf8") => Bytes::from(p.payload.into_bytes()),
        Some("base64") => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(p.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be utf8 or base64, got {other:?}"
            )));
        }
    };
    let max = state.broker.limits.max_packet_size as usize;
    if payload.len() + topic.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the message is larger than max_packet_size ({max} bytes)"),
        ));
    }
    if let Some(user) = &p.username {
        let acl = state.acl.as_ref();
        let client = Client {
            client_id: "",
            username: Some(user),
        };
        let allowed = match acl {
            Some(a) => a.can_publish(&client, topic.as_str()).resolve().await,
            None => true,
        };
        if !allowed {
            state.broker.metrics.acl_denied.inc();
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_authorized",
                format!("{user:?} may not publish to {:?}", p.topic),
            ));
        }
    }
    let pr = p.properties;
    if pr.payload_format_indicator.is_some_and(|v| v > 1) {
        return Err(ApiError::bad_request(
            "payload_format_indicator must be 0 or 1",
        ));
    }
    if pr.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
        return Err(ApiError::bad_request(
            "payload_format_indicator is 1 but the payload is not UTF-8",
        ));
    }
    if let Some(rt) = &pr.response_topic {
        parse_topic(rt)?;
    }
    let correlation_data = match &pr.correlation_data {
        Some(c) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(c.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(format!("correlation_data is not base64: {e}"))
                })?,
        )),
        None => None,
    };
    let values = PropertyValues {
        payload_format_indicator: pr.payload_format_indicator,
        message_expiry_interval: pr.message_expiry_interval,
        content_type: pr.content_type,
        response_topic: pr.response_topic,
        correlation_data,
        user_properties: pr.user_properties,
        ..PropertyValues::default()
    };
    let properties = Properties::from_values(values);
    let publish = Publish {
        dup: false,
        qos,
        retain: p.retain,
        topic,
        packet_id: 0,
        properties,
        payload,
    };
    let msg = Message::from_publish(publish, None, Instant::now());
    let routed = state.broker.publish_admin(msg);
    info!(topic = %p.topic, by = %who.name, reached = routed.reached, "message published by an operator");
    Ok(Json(json!({ "reached": routed.reached })))
}
