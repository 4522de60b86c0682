//! `/api/v1/dynsec/roles`: dynamic security's roles and their rules.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tracing::info;

use super::{PageQuery, dynsec, edit, journal, page, page_query, parse, present, role_view};
use crate::authn::dynamic::model::{RoleEntry, Rule, check_role};
use crate::authn::dynamic::{Document, RuleAction};
use crate::http::Identity;
use crate::http::api::{ApiResult, St};
use crate::http::error::ApiError;

pub(super) async fn list_roles(
    State(state): St,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = page_query(q)?;
    let doc = dynsec(&state)?.document();
    page(&doc.roles, &q, role_view)
}

pub(super) async fn get_role(State(state): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    doc.roles
        .get(&name)
        .map(|r| Json(role_view(&name, r)))
        .ok_or_else(|| ApiError::not_found(format!("no role {name:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRole {
    name: String,
    text_name: Option<String>,
    text_description: Option<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

pub(super) async fn create_role(
    State(state): St,
    who: Extension<Identity>,
    body: Bytes,
) -> ApiResult<Response> {
    // Enabled before the body is read (and a password hashed).
    dynsec(&state)?;
    let n: NewRole = parse(&body)?;
    let entry = RoleEntry {
        text_name: n.text_name,
        text_description: n.text_description,
        rules: n.rules,
    };
    let view = role_view(&n.name, &entry);
    edit(&state, |doc| doc.create_role(&n.name, entry)).await?;
    info!(role = %n.name, by = %who.name, "dynamic security: role created");
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePatch {
    #[serde(default, deserialize_with = "present")]
    text_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    text_description: Option<Option<String>>,
    rules: Option<Vec<Rule>>,
}

pub(super) async fn update_role(
    State(state): St,
    who: Extension<Identity>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = dynsec(&state)?;
    let p: RolePatch = parse(&body)?;
    let mut view = Value::Null;
    let edit = |doc: &mut Document| {
        let mut r = doc.role_mut(&name)?.clone();
        if let Some(v) = p.text_name {
            r.text_name = v;
        }
        if let Some(v) = p.text_description {
            r.text_description = v;
        }
        if let Some(v) = p.rules {
            r.rules = v;
        }
        check_role("", &r)?;
        view = role_view(&name, &r);
        doc.roles.insert(name.clone(), r);
        Ok(())
    };
    d.change(journal(&state), edit, || {}).await?;
    info!(role = %name, by = %who.name, "dynamic security: role changed");
    Ok(Json(view))
}

pub(super) async fn delete_role(
    State(state): St,
    who: Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    edit(&state, |doc| doc.delete_role(&name)).await?;
    info!(role = %name, by = %who.name, "dynamic security: role deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn add_rule(
    State(state): St,
    who: Extension<Identity>,
    Path(role): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let d = dynsec(&state)?;
    let rule: Rule = parse(&body)?;
    let what = format!(
        "{} {} {}",
        rule.action.as_str(),
        if rule.allow { "allow" } else { "deny" },
        rule.filter
    );
    let mut view = Value::Null;
    let edit = |doc: &mut Document| {
        doc.add_rule(&role, rule)?;
        if let Some(r) = doc.roles.get(&role) {
            view = role_view(&role, r);
        }
        Ok(())
    };
    d.change(journal(&state), edit, || {}).await?;
    info!(%role, rule = %what, by = %who.name, "dynamic security: rule added");
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleKey {
    action: String,
    filter: String,
}

pub(super) async fn remove_rule(
    State(state): St,
    who: Extension<Identity>,
    Path(role): Path<String>,
    q: Result<Query<RuleKey>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(k) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let action = RuleAction::parse(&k.action).ok_or_else(|| {
        ApiError::bad_request(format!(
            "action: expected publish, subscribe or receive, got {:?}",
            k.action
        ))
    })?;
    edit(&state, |doc| doc.remove_rule(&role, action, &k.filter)).await?;
    info!(%role, action = %k.action, filter = %k.filter, by = %who.name, "dynamic security: rule removed");
    Ok(StatusCode::NO_CONTENT)
}
