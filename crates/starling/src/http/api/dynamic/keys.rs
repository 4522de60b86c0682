//! `/api/v1/dynsec/keys`: API keys for machine clients (`authn::dynamic::keys`). A key is
//! made here, shown once in the answer to its creation, and kept only as its SHA-256:
//! nothing reads it back. Deleting or disabling a key disconnects the connections using it,
//! and so does an earlier expiry (they were told the old one when they connected); a new
//! fixed client id disconnects those using another.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::clients::{Disconnect, after_change};
use super::{PageQuery, dynsec, journal, page, page_query, parse, present};
use crate::authn::dynamic::Document;
use crate::authn::dynamic::keys::{self, KeyEntry};
use crate::authn::dynamic::model::{GroupRef, RoleRef};
use crate::http::Identity;
use crate::http::api::{ApiResult, St};
use crate::http::error::ApiError;

/// A key as the API shows it: never the key, never its hash.
pub(super) fn key_view(name: &str, k: &KeyEntry, now: Duration) -> Value {
    json!({
        "name": name,
        "client_id": k.client_id,
        "roles": k.roles,
        "groups": k.groups,
        "disabled": k.disabled,
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "expired": k.expired(now),
    })
}

pub(super) async fn list_keys(
    State(state): St,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = page_query(q)?;
    let doc = dynsec(&state)?.document();
    let now = keys::now();
    page(&doc.keys, &q, |n, k| key_view(n, k, now))
}

pub(super) async fn get_key(State(state): St, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let doc = dynsec(&state)?.document();
    doc.keys
        .get(&name)
        .map(|k| Json(key_view(&name, k, keys::now())))
        .ok_or_else(|| ApiError::not_found(format!("no key {name:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyRequest {
    name: String,
    client_id: Option<String>,
    #[serde(default)]
    roles: Vec<RoleRef>,
    #[serde(default)]
    groups: Vec<GroupRef>,
    expires_in_secs: Option<u64>,
}

/// Makes a key and stores its hash; the answer (201) is the only place the key appears.
pub(super) async fn create_key(
    State(state): St,
    who: Extension<Identity>,
    body: Bytes,
) -> ApiResult<Response> {
    let d = dynsec(&state)?;
    let n: NewKeyRequest = parse(&body)?;
    let now = keys::now();
    let created_at = now.as_secs();
    let expires_at = match n.expires_in_secs {
        Some(secs) => Some(keys::expiry("expires_in_secs", created_at, secs)?),
        None => None,
    };
    let made = keys::generate().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the system's random generator failed: {e}"),
        )
    })?;
    let entry = KeyEntry {
        sha256: made.sha256,
        client_id: n.client_id,
        roles: n.roles,
        groups: n.groups,
        disabled: false,
        created_at,
        expires_at,
    };
    let mut view = key_view(&n.name, &entry, now);
    d.change(journal(&state), |doc| doc.create_key(&n.name, entry), || {})
        .await?;
    info!(key_name = %n.name, by = %who.name, "dynamic security: key created");
    if let Some(map) = view.as_object_mut() {
        map.insert("key".into(), Value::String(made.key));
    }
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatch {
    #[serde(default, deserialize_with = "present")]
    client_id: Option<Option<String>>,
    roles: Option<Vec<RoleRef>>,
    groups: Option<Vec<GroupRef>>,
    disabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<u64>>,
}

/// Which connections a change of `old` to `new` disconnects: all if the key is disabled or
/// now expires earlier than before (its connections were given the old expiry), else those
/// with another client id than a new fixed one.
fn disconnects(old: &KeyEntry, new: &KeyEntry) -> Disconnect {
    let earlier = match (old.expires_at, new.expires_at) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(before), Some(now)) => now < before,
    };
    if (new.disabled && !old.disabled) || earlier {
        Disconnect::All
    } else {
        match &new.client_id {
            Some(id) if old.client_id.as_ref() != Some(id) => Disconnect::AllBut(id.clone()),
            _ => Disconnect::Nobody,
        }
    }
}

pub(super) async fn update_key(
    State(state): St,
    who: Extension<Identity>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let d = dynsec(&state)?;
    let p: KeyPatch = parse(&body)?;
    let now = keys::now();
    // Decided by the edit, against the document the change is made on; read once the
    // change is in force.
    let which = Arc::new(Mutex::new(Disconnect::Nobody));
    let decided = which.clone();
    let mut view = Value::Null;
    let edit = |doc: &mut Document| {
        let old = doc.key_mut(&name)?.clone();
        let mut k = old.clone();
        if let Some(v) = p.client_id {
            k.client_id = v;
        }
        if let Some(v) = p.roles {
            k.roles = v;
        }
        if let Some(v) = p.groups {
            k.groups = v;
        }
        if let Some(v) = p.disabled {
            k.disabled = v;
        }
        if let Some(v) = p.expires_at {
            k.expires_at = v;
        }
        doc.check_key("", &k)?;
        *decided.lock().unwrap_or_else(|e| e.into_inner()) = disconnects(&old, &k);
        view = key_view(&name, &k, now);
        doc.keys.insert(name.clone(), k);
        Ok(())
    };
    let broker = state.broker.clone();
    let user = name.clone();
    let applied = move || {
        let which = which.lock().unwrap_or_else(|e| e.into_inner()).clone();
        after_change(broker, user, which)();
    };
    d.change(journal(&state), edit, applied).await?;
    info!(key_name = %name, by = %who.name, "dynamic security: key changed");
    Ok(Json(view))
}

pub(super) async fn delete_key(
    State(state): St,
    who: Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let d = dynsec(&state)?;
    let applied = after_change(state.broker.clone(), name.clone(), Disconnect::All);
    d.change(journal(&state), |doc| doc.delete_key(&name), applied)
        .await?;
    info!(key_name = %name, by = %who.name, "dynamic security: key deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(disabled: bool, client_id: Option<&str>, expires_at: Option<u64>) -> KeyEntry {
        KeyEntry {
            sha256: "0".repeat(64),
            client_id: client_id.map(str::to_owned),
            roles: Vec::new(),
            groups: Vec::new(),
            disabled,
            created_at: 100,
            expires_at,
        }
    }

    #[test]
    fn a_change_disconnects_only_what_it_takes_away() {
        let all = |d: Disconnect| matches!(d, Disconnect::All);
        let base = entry(false, None, Some(1000));
        assert!(all(disconnects(&base, &entry(true, None, Some(1000)))));
        assert!(all(disconnects(&base, &entry(false, None, Some(999)))));
        assert!(all(disconnects(
            &entry(false, None, None),
            &entry(false, None, Some(5000))
        )));
        assert!(matches!(
            disconnects(&base, &entry(false, None, Some(2000))),
            Disconnect::Nobody
        ));
        assert!(matches!(
            disconnects(&base, &entry(false, None, None)),
            Disconnect::Nobody
        ));
        assert!(matches!(
            disconnects(&base, &entry(false, Some("m-1"), Some(1000))),
            Disconnect::AllBut(id) if id == "m-1"
        ));
        let fixed = entry(false, Some("m-1"), Some(1000));
        assert!(matches!(disconnects(&fixed, &fixed), Disconnect::Nobody));
        let off = entry(true, None, Some(1000));
        assert!(matches!(disconnects(&off, &off), Disconnect::Nobody));
    }
}
