//! `/api/v1/dynsec/clients`: dynamic security's clients, and the disconnection of a
//! user's connections when a change takes its access away (deleted, disabled, a new password
//! or fixed client id; `keys.rs` uses it for API keys too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use starling_broker::Broker;
use tracing::info;

use super::{
    NameAndPriority, PageQuery, Secret, client_view, credentials, dynsec, edit, journal, page,
    page_query, parse, present,
};
use crate::authn::dynamic::Document;
use crate::authn::dynamic::model::{ClientEntry, GroupRef, RoleRef};
use crate::http::Identity;
use crate::http::api::{ApiResult, St};
use crate::http::error::ApiError;

/// After a change that disconnects a user's clients, they are looked for once more after
/// this long: a client that was being authenticated against the old document while the
/// change was made attaches its session only after its password was checked.
const SECOND_SWEEP: Duration = Duration::from_secs(1);

/// Which of a user's connections a change disconnects.
#[derive(Clone, Debug)]
pub(super) enum Disconnect {
    /// None of them.
    Nobody,
    /// All of them (deleted, disabled, new password).
    All,
    /// Those whose client id is not this one (a new fixed client id).
    AllBut(String),
}

/// Disconnects the connections of `username` that `which` names and that attached no later
/// than `before` (any, without): each is kicked (MQTT 5: DISCONNECT 0x98). Pages through the
/// broker's sessions, so it costs one pass over them per thousand found.
fn disconnect_user(
    broker: &Broker,
    username: &str,
    which: &Disconnect,
    before: Option<Instant>,
) -> usize {
    if matches!(which, Disconnect::Nobody) {
        return 0;
    }
    let mut after: Option<String> = None;
    let mut kicked = 0;
    loop {
        let page = broker.sessions_page(after.as_deref(), 1000, |s| {
            if let Disconnect::AllBut(keep) = which
                && **s.client_id() == **keep
            {
                return false;
            }
            let st = s.lock();
            st.client_info().is_some_and(|i| {
                i.username.as_deref() == Some(username)
                    && before.is_none_or(|b| i.connected_at <= b)
            })
        });
        for s in &page.sessions {
            if broker.kick(s.client_id()).is_ok() {
                kicked += 1;
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return kicked,
        }
    }
}

/// What runs once a change concerning `username` is in force: its connections are
/// disconnected as `which` says, now and once more after [`SECOND_SWEEP`] (those that had
/// attached by now only).
pub(super) fn after_change(
    broker: Arc<Broker>,
    username: String,
    which: Disconnect,
) -> impl FnOnce() + Send + 'static {
    move || {
        if matches!(which, Disconnect::Nobody) {
            return;
        }
        let at = Instant::now();
        let n = disconnect_user(&broker, &username, &which, None);
        if n > 0 {
            info!(%username, disconnected = n, "dynamic security: connections of a changed client disconnected");
        }
        tokio::spawn(async move {
            tokio::time::sleep(SECOND_SWEEP).await;
            let n = disconnect_user(&broker, &username, &which, Some(at));
            if n > 0 {
                info!(%username, disconnected = n, "dynamic security: late connections of a changed client disconnected");
            }
        });
    }
}

pub(super) async fn list_clients(
    State(state): St,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = page_query(q)?;
    let doc = dynsec(&state)?.document();
    page(&doc.clients, &q, client_view)
}

pub(super) async fn get_client(
    State(state): St,
    Path(username): Path<String>,
) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    doc.clients
        .get(&username)
        .map(|c| Json(client_view(&username, c)))
        .ok_or_else(|| ApiError::not_found(format!("no client {username:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    username: String,
    password: Option<Secret>,
    password_hash: Option<String>,
    client_id: Option<String>,
    text_name: Option<String>,
    text_description: Option<String>,
    #[serde(default)]
    roles: Vec<RoleRef>,
    #[serde(default)]
    groups: Vec<GroupRef>,
    #[serde(default)]
    disabled: bool,
}

pub(super) async fn create_client(
    State(state): St,
    who: Extension<Identity>,
    body: Bytes,
) -> ApiResult<Response> {
    // Enabled before the body is read (and a password hashed).
    dynsec(&state)?;
    let n: NewClient = parse(&body)?;
    let entry = ClientEntry {
        password_hash: credentials(n.password, n.password_hash).await?,
        client_id: n.client_id,
        text_name: n.text_name,
        text_description: n.text_description,
        roles: n.roles,
        groups: n.groups,
        disabled: n.disabled,
    };
    let view = client_view(&n.username, &entry);
    edit(&state, |doc| doc.create_client(&n.username, entry)).await?;
    info!(username = %n.username, by = %who.name, "dynamic security: client created");
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientPatch {
    password: Option<Secret>,
    password_hash: Option<String>,
    #[serde(default, deserialize_with = "present")]
    client_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    text_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    text_description: Option<Option<String>>,
    roles: Option<Vec<RoleRef>>,
    groups: Option<Vec<GroupRef>>,
    disabled: Option<bool>,
}

pub(super) async fn update_client(
    State(state): St,
    who: Extension<Identity>,
    Path(username): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = dynsec(&state)?;
    let p: ClientPatch = parse(&body)?;
    let new_hash = credentials(p.password, p.password_hash).await?;
    let which = if new_hash.is_some() || p.disabled == Some(true) {
        Disconnect::All
    } else if let Some(Some(id)) = &p.client_id {
        Disconnect::AllBut(id.clone())
    } else {
        Disconnect::Nobody
    };
    let mut view = Value::Null;
    let edit = |doc: &mut Document| {
        let mut c = doc.client_mut(&username)?.clone();
        if let Some(h) = new_hash {
            c.password_hash = Some(h);
        }
        if let Some(v) = p.client_id {
            c.client_id = v;
        }
        if let Some(v) = p.text_name {
            c.text_name = v;
        }
        if let Some(v) = p.text_description {
            c.text_description = v;
        }
        if let Some(v) = p.roles {
            c.roles = v;
        }
        if let Some(v) = p.groups {
            c.groups = v;
        }
        if let Some(v) = p.disabled {
            c.disabled = v;
        }
        doc.check_client("", &c)?;
        view = client_view(&username, &c);
        doc.clients.insert(username.clone(), c);
        Ok(())
    };
    let applied = after_change(state.broker.clone(), username.clone(), which);
    d.change(journal(&state), edit, applied).await?;
    info!(%username, by = %who.name, "dynamic security: client changed");
    Ok(Json(view))
}

pub(super) async fn delete_client(
    State(state): St,
    who: Extension<Identity>,
    Path(username): Path<String>,
) -> ApiResult<StatusCode> {
    let d = dynsec(&state)?;
    let applied = after_change(state.broker.clone(), username.clone(), Disconnect::All);
    d.change(journal(&state), |doc| doc.delete_client(&username), applied)
        .await?;
    info!(%username, by = %who.name, "dynamic security: client deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn add_client_role(
    State(state): St,
    who: Extension<Identity>,
    Path(username): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // Enabled before the body is read (and a password hashed).
    dynsec(&state)?;
    let n: NameAndPriority = parse(&body)?;
    let role = RoleRef {
        name: n.name.clone(),
        priority: n.priority,
    };
    edit(&state, |doc| doc.add_client_role(&username, role)).await?;
    info!(%username, role = %n.name, by = %who.name, "dynamic security: role given to a client");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_client_role(
    State(state): St,
    who: Extension<Identity>,
    Path((username, role)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit(&state, |doc| doc.remove_client_role(&username, &role)).await?;
    info!(%username, %role, by = %who.name, "dynamic security: role taken from a client");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn add_client_group(
    State(state): St,
    who: Extension<Identity>,
    Path(username): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // Enabled before the body is read (and a password hashed).
    dynsec(&state)?;
    let n: NameAndPriority = parse(&body)?;
    let group = GroupRef {
        name: n.name.clone(),
        priority: n.priority,
    };
    edit(&state, |doc| doc.add_client_group(&username, group)).await?;
    info!(%username, group = %n.name, by = %who.name, "dynamic security: client added to a group");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_client_group(
    State(state): St,
    who: Extension<Identity>,
    Path((username, group)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit(&state, |doc| doc.remove_client_group(&username, &group)).await?;
    info!(%username, %group, by = %who.name, "dynamic security: client removed from a group");
    Ok(StatusCode::NO_CONTENT)
}
