//! `/api/v1/dynsec/groups`: dynamic security's groups and their roles.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{
    NameAndPriority, PageQuery, dynsec, edit, group_view, journal, page, page_query, parse, present,
};
use crate::authn::dynamic::Document;
use crate::authn::dynamic::model::{GroupEntry, RoleRef};
use crate::http::Identity;
use crate::http::api::{ApiResult, St};
use crate::http::error::ApiError;

pub(super) async fn list_groups(
    State(state): St,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = page_query(q)?;
    let doc = dynsec(&state)?.document();
    page(&doc.groups, &q, |n, g| group_view(&doc, n, g, false))
}

pub(super) async fn get_group(
    State(state): St,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    doc.groups
        .get(&name)
        .map(|g| Json(group_view(&doc, &name, g, true)))
        .ok_or_else(|| ApiError::not_found(format!("no group {name:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    text_name: Option<String>,
    text_description: Option<String>,
    #[serde(default)]
    roles: Vec<RoleRef>,
}

pub(super) async fn create_group(
    State(state): St,
    who: Extension<Identity>,
    body: Bytes,
) -> ApiResult<Response> {
    // Enabled before the body is read (and a password hashed).
    dynsec(&state)?;
    let n: NewGroup = parse(&body)?;
    let entry = GroupEntry {
        text_name: n.text_name,
        text_description: n.text_description,
        roles: n.roles,
    };
    let view = json!({
        "name": &n.name,
        "text_name": entry.text_name,
        "text_description": entry.text_description,
        "roles": entry.roles,
    });
    edit(&state, |doc| doc.create_group(&n.name, entry)).await?;
    info!(group = %n.name, by = %who.name, "dynamic security: group created");
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupPatch {
    #[serde(default, deserialize_with = "present")]
    text_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    text_description: Option<Option<String>>,
    roles: Option<Vec<RoleRef>>,
}

pub(super) async fn update_group(
    State(state): St,
    who: Extension<Identity>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = dynsec(&state)?;
    let p: GroupPatch = parse(&body)?;
    let mut view = Value::Null;
    let edit = |doc: &mut Document| {
        let mut g = doc.group_mut(&name)?.clone();
        if let Some(v) = p.text_name {
            g.text_name = v;
        }
        if let Some(v) = p.text_description {
            g.text_description = v;
        }
        if let Some(v) = p.roles {
            g.roles = v;
        }
        doc.check_group("", &g)?;
        doc.groups.insert(name.clone(), g);
        if let Some(g) = doc.groups.get(&name) {
            view = group_view(doc, &name, g, true);
        }
        Ok(())
    };
    d.change(journal(&state), edit, || {}).await?;
    info!(group = %name, by = %who.name, "dynamic security: group changed");
    Ok(Json(view))
}

pub(super) async fn delete_group(
    State(state): St,
    who: Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    edit(&state, |doc| doc.delete_group(&name)).await?;
    info!(group = %name, by = %who.name, "dynamic security: group deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn add_group_role(
    State(state): St,
    who: Extension<Identity>,
    Path(group): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // Enabled before the body is read (and a password hashed).
    dynsec(&state)?;
    let n: NameAndPriority = parse(&body)?;
    let role = RoleRef {
        name: n.name.clone(),
        priority: n.priority,
    };
    edit(&state, |doc| doc.add_group_role(&group, role)).await?;
    info!(%group, role = %n.name, by = %who.name, "dynamic security: role given to a group");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_group_role(
    State(state): St,
    who: Extension<Identity>,
    Path((group, role)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    edit(&state, |doc| doc.remove_group_role(&group, &role)).await?;
    info!(%group, %role, by = %who.name, "dynamic security: role taken from a group");
    Ok(StatusCode::NO_CONTENT)
}
