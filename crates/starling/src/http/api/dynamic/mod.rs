//! `/api/v1/dynsec`: dynamic security's clients, groups, roles and API keys
//! (`authn::dynamic`), read by viewers and changed by admins. A change answers once it is
//! stored and in force; what it does to connected clients: deleting or disabling a client or
//! a key, or changing a client's password, disconnects its connections (a new fixed client id
//! disconnects those using another); changes of roles, groups and rules apply to their next
//! publish and delivery without disconnecting anyone. Passwords are hashed here (argon2id)
//! and never returned or logged; a key is shown once, when it is made, and never again.
//!
//! This file has the routes, what the endpoints share (body parsing with errors naming the
//! field, password hashing, the views, paging), the whole document, the anonymous group and
//! the default access; `clients.rs`, `groups.rs`, `roles.rs` and `keys.rs` the rest.

mod clients;
mod groups;
mod keys;
mod roles;

use std::ops::Bound;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use starling_auth::password::{HashKind, PasswordHash};
use starling_broker::persist::Journal;
use tracing::info;

use super::{ApiResult, St, page_size};
use crate::authn::dynamic::model::{
    Access, ClientEntry, GroupEntry, RoleEntry, check_password, parse_hash,
};
use crate::authn::dynamic::{Document, DynamicSecurity, DynsecError};
use crate::http::error::ApiError;
use crate::http::{AppState, Identity};
use clients::{
    add_client_group, add_client_role, create_client, delete_client, get_client, list_clients,
    remove_client_group, remove_client_role, update_client,
};
use groups::{
    add_group_role, create_group, delete_group, get_group, list_groups, remove_group_role,
    update_group,
};
use keys::{create_key, delete_key, get_key, key_view, list_keys, update_key};
use roles::{add_rule, create_role, delete_role, get_role, list_roles, remove_rule, update_role};

/// Passwords hashed at once: each argon2id hash takes 46 MiB for its duration, so the
/// requests allowed at once (`max_concurrent_requests`) must not multiply that.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Every `/api/v1/dynsec` route.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dynsec", get(document))
        .route("/dynsec/", get(document))
        .route("/dynsec/clients", get(list_clients).post(create_client))
        .route(
            "/dynsec/clients/{username}",
            get(get_client).put(update_client).delete(delete_client),
        )
        .route("/dynsec/clients/{username}/roles", post(add_client_role))
        .route(
            "/dynsec/clients/{username}/roles/{role}",
            delete(remove_client_role),
        )
        .route("/dynsec/clients/{username}/groups", post(add_client_group))
        .route(
            "/dynsec/clients/{username}/groups/{group}",
            delete(remove_client_group),
        )
        .route("/dynsec/groups", get(list_groups).post(create_group))
        .route(
            "/dynsec/groups/{name}",
            get(get_group).put(update_group).delete(delete_group),
        )
        .route("/dynsec/groups/{name}/roles", post(add_group_role))
        .route(
            "/dynsec/groups/{name}/roles/{role}",
            delete(remove_group_role),
        )
        .route("/dynsec/roles", get(list_roles).post(create_role))
        .route(
            "/dynsec/roles/{name}",
            get(get_role).put(update_role).delete(delete_role),
        )
        .route(
            "/dynsec/roles/{name}/rules",
            post(add_rule).delete(remove_rule),
        )
        .route("/dynsec/keys", get(list_keys).post(create_key))
        .route(
            "/dynsec/keys/{name}",
            get(get_key).put(update_key).delete(delete_key),
        )
        .route(
            "/dynsec/anonymous-group",
            get(get_anonymous_group).put(set_anonymous_group),
        )
        .route(
            "/dynsec/default-access",
            get(get_default_access).put(set_default_access),
        )
}

impl From<DynsecError> for ApiError {
    fn from(e: DynsecError) -> Self {
        let (status, code) = match &e {
            DynsecError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DynsecError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            DynsecError::Invalid { .. } | DynsecError::TooMany { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            DynsecError::NotStored(_) | DynsecError::Busy => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            DynsecError::Document { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, e.to_string())
    }
}

/// Dynamic security, or 404 when the broker does not run it.
fn dynsec(state: &AppState) -> ApiResult<&Arc<DynamicSecurity>> {
    state.dynsec.as_ref().ok_or_else(|| {
        ApiError::not_found("dynamic security is not enabled (add an [auth.dynamic] section)")
    })
}

/// The broker's journal: changes are committed through it (none with durability `memory`).
fn journal(state: &AppState) -> Option<Arc<Journal>> {
    state.broker.persistence().map(|p| p.journal.clone())
}

/// Makes `edit` to the document and waits for it to be committed, with nothing to do once
/// it applies (most changes: those that disconnect clients pass their own follow-up).
async fn edit(
    state: &AppState,
    edit: impl FnOnce(
        &mut crate::authn::dynamic::model::Document,
    ) -> Result<(), crate::authn::dynamic::DynsecError>,
) -> ApiResult<()> {
    dynsec(state)?.change(journal(state), edit, || {}).await?;
    Ok(())
}

/// A JSON body, with errors naming the field (`roles[0].priority: invalid type ...`).
fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("{path}: {}", e.inner()))
        }
    })
}

/// A password in a request: never shown by `Debug`.
#[derive(Deserialize)]
#[serde(transparent)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The hash to store for a request's `password` (hashed here, argon2id) or `password_hash`
/// (checked); `None` if it gives neither.
async fn credentials(
    password: Option<Secret>,
    password_hash: Option<String>,
) -> ApiResult<Option<String>> {
    match (password, password_hash) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "password, password_hash: give one of them, not both",
        )),
        (None, None) => Ok(None),
        (None, Some(h)) => {
            parse_hash("password_hash", &h)?;
            Ok(Some(h))
        }
        (Some(Secret(p)), None) => {
            check_password("password", &p)?;
            let _slot = HASHING.acquire().await.map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            // argon2id is slow by design: off the async threads.
            let hashed = tokio::task::spawn_blocking(move || {
                PasswordHash::new(p.as_bytes(), HashKind::Argon2id)
            })
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
            Ok(Some(hashed.to_string()))
        }
    }
}

/// Absent: `None`; `null`: `Some(None)`; a value: `Some(Some(v))`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// --- Views (never a password hash, never a key or its hash) -----------------------------

fn client_view(username: &str, c: &ClientEntry) -> Value {
    json!({
        "username": username,
        "client_id": c.client_id,
        "text_name": c.text_name,
        "text_description": c.text_description,
        "roles": c.roles,
        "groups": c.groups,
        "disabled": c.disabled,
        "has_password": c.password_hash.is_some(),
    })
}

fn group_view(doc: &Document, name: &str, g: &GroupEntry, members: bool) -> Value {
    let mut v = json!({
        "name": name,
        "text_name": g.text_name,
        "text_description": g.text_description,
        "roles": g.roles,
        "anonymous": doc.anonymous_group.as_deref() == Some(name),
    });
    if members && let Some(map) = v.as_object_mut() {
        let clients: Vec<&str> = doc
            .clients
            .iter()
            .filter(|(_, c)| c.groups.iter().any(|x| x.name == name))
            .map(|(u, _)| u.as_str())
            .collect();
        map.insert("clients".into(), json!(clients));
        let keys: Vec<&str> = doc
            .keys
            .iter()
            .filter(|(_, k)| k.groups.iter().any(|x| x.name == name))
            .map(|(n, _)| n.as_str())
            .collect();
        map.insert("keys".into(), json!(keys));
    }
    v
}

fn role_view(name: &str, r: &RoleEntry) -> Value {
    json!({
        "name": name,
        "text_name": r.text_name,
        "text_description": r.text_description,
        "rules": r.rules,
    })
}

async fn document(State(state): St) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    let clients: Vec<Value> = doc.clients.iter().map(|(u, c)| client_view(u, c)).collect();
    let groups: Vec<Value> = doc
        .groups
        .iter()
        .map(|(n, g)| group_view(&doc, n, g, false))
        .collect();
    let roles: Vec<Value> = doc.roles.iter().map(|(n, r)| role_view(n, r)).collect();
    let now = crate::authn::dynamic::keys::now();
    let keys: Vec<Value> = doc.keys.iter().map(|(n, k)| key_view(n, k, now)).collect();
    Ok(Json(json!({
        "default_access": doc.default_access,
        "anonymous_group": doc.anonymous_group,
        "clients": clients,
        "groups": groups,
        "roles": roles,
        "keys": keys,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

fn page_query(q: Result<Query<PageQuery>, QueryRejection>) -> ApiResult<PageQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// One page of a map by name, after `after`: `{"items": [...], "next": ...}`.
fn page<T>(
    map: &std::collections::BTreeMap<String, T>,
    q: &PageQuery,
    view: impl Fn(&str, &T) -> Value,
) -> ApiResult<Json<Value>> {
    let limit = page_size(q.limit)?;
    let from = match &q.after {
        Some(a) => Bound::Excluded(a.as_str()),
        None => Bound::Unbounded,
    };
    let items: Vec<Value> = map
        .range::<str, _>((from, Bound::Unbounded))
        .take(limit)
        .map(|(k, v)| view(k, v))
        .collect();
    let next = if items.len() == limit {
        map.range::<str, _>((from, Bound::Unbounded))
            .nth(limit - 1)
            .map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next": next })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NameAndPriority {
    pub(super) name: String,
    #[serde(default)]
    pub(super) priority: i32,
}

// --- Anonymous group and default access --------------------------------------------------

async fn get_anonymous_group(State(state): St) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    Ok(Json(json!({ "group": doc.anonymous_group })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnonymousGroup {
    group: Option<String>,
}

async fn set_anonymous_group(
    State(state): St,
    who: Extension<Identity>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = dynsec(&state)?;
    let a: AnonymousGroup = parse(&body)?;
    let group = a.group.clone();
    d.change(journal(&state), |doc| doc.set_anonymous_group(group), || {})
        .await?;
    info!(group = ?a.group, by = %who.name, "dynamic security: anonymous group set");
    Ok(Json(json!({ "group": a.group })))
}

async fn get_default_access(State(state): St) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    Ok(Json(json!(doc.default_access)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultPatch {
    publish: Option<Access>,
    subscribe: Option<Access>,
    receive: Option<Access>,
}

async fn set_default_access(
    State(state): St,
    who: Extension<Identity>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = dynsec(&state)?;
    let p: DefaultPatch = parse(&body)?;
    let mut view = Value::Null;
    let edit = |doc: &mut Document| {
        let a = &mut doc.default_access;
        a.publish = p.publish.unwrap_or(a.publish);
        a.subscribe = p.subscribe.unwrap_or(a.subscribe);
        a.receive = p.receive.unwrap_or(a.receive);
        view = json!(a);
        Ok(())
    };
    d.change(journal(&state), edit, || {}).await?;
    info!(default_access = %view, by = %who.name, "dynamic security: default access set");
    Ok(Json(view))
}
