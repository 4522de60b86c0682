//! The answers of the HTTP authentication service, read by the conventions in the parent
//! module's documentation: the status and the JSON body give allow, deny or "no opinion",
//! and an authentication answer may carry a username, an expiry and ACL rules (checked as
//! the ACL file's are).

use super::*;

/// A service's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Allow,
    Deny,
    Ignore,
}

/// A service's answer, understood.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) outcome: Outcome,
    pub(super) username: Option<String>,
    pub(super) acl: Option<AclFile>,
    /// Bytes the rules came in, roughly what they cost in the cache.
    pub(super) acl_bytes: usize,
    pub(super) expire_at: Option<u64>,
    /// mosquitto-go-auth's `"error"` text, for the log.
    pub(super) error: Option<String>,
}

pub(super) fn body_error(what: impl Into<String>) -> Failure {
    Failure::Body(what.into())
}

/// Reads an answer by the conventions in the module's documentation; `grants`: an
/// authentication answer, which may carry `username`, `expire_at` and `acl`.
pub(super) fn parse_reply(
    status: StatusCode,
    body: &[u8],
    grants: bool,
) -> Result<Parsed, Failure> {
    let outcome = |o| Parsed {
        outcome: o,
        username: None,
        acl: None,
        acl_bytes: 0,
        expire_at: None,
        error: None,
    };
    match status.as_u16() {
        200..=299 => {}
        // A service that is overloaded or slow has not refused anyone.
        408 | 429 => return Err(Failure::Status(status)),
        400..=499 => return Ok(outcome(Outcome::Deny)),
        _ => return Err(Failure::Status(status)),
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(outcome(Outcome::Allow));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| body_error(format!("not JSON ({e}) with status {status}")))?;
    let Value::Object(m) = v else {
        return Err(body_error("not a JSON object"));
    };
    let by_result = match m.get("result") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("allow") => Some(Outcome::Allow),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("deny") => Some(Outcome::Deny),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("ignore") => Some(Outcome::Ignore),
        Some(other) => return Err(body_error(format!("unknown \"result\" {other}"))),
    };
    let by_ok = match m.get("ok") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(true)) => Some(Outcome::Allow),
        Some(Value::Bool(false)) => Some(Outcome::Deny),
        Some(other) => return Err(body_error(format!("\"ok\" is not a boolean: {other}"))),
    };
    let o = match (by_result, by_ok) {
        (Some(r), Some(k)) if r != k && r != Outcome::Ignore => {
            return Err(body_error("\"result\" and \"ok\" disagree"));
        }
        (Some(r), _) => r,
        (None, Some(k)) => k,
        (None, None) => Outcome::Allow,
    };
    let error = match m.get("error") {
        // Bounded: it only goes to the log.
        Some(Value::String(e)) if !e.is_empty() => Some(e.chars().take(200).collect()),
        _ => None,
    };
    if o != Outcome::Allow || !grants {
        return Ok(Parsed {
            error,
            ..outcome(o)
        });
    }
    let mut p = outcome(Outcome::Allow);
    match m.get("username") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if valid_username(u) => p.username = Some(u.clone()),
        Some(_) => return Err(body_error("\"username\" is not a usable user name")),
    }
    match m.get("expire_at") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            // Seconds; a fraction is dropped (the connection ends at most a second early).
            let t = n
                .as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64));
            p.expire_at = Some(t.ok_or_else(|| body_error("\"expire_at\" is negative"))?);
        }
        Some(_) => return Err(body_error("\"expire_at\" is not a number")),
    }
    match m.get("acl") {
        None | Some(Value::Null) => {}
        Some(v) => {
            p.acl = Some(parse_acl(v).map_err(body_error)?);
            p.acl_bytes = body.len();
        }
    }
    Ok(p)
}

/// A user name the broker can carry: MQTT's bounds, no NUL.
pub(super) fn valid_username(u: &str) -> bool {
    !u.is_empty() && u.len() <= 65_535 && !u.contains('\0')
}

/// The rules of an answer's `"acl"` (see the module's documentation).
pub(super) fn parse_acl(v: &Value) -> Result<AclFile, String> {
    let mut rules: Vec<(Access, String)> = Vec::new();
    let topics = |v: &Value, key: &str| -> Result<Vec<String>, String> {
        let Value::Array(items) = v else {
            return Err(format!("\"acl\".{key} is not a list"));
        };
        items
            .iter()
            .map(|t| match t {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("\"acl\".{key} holds a non-string topic")),
            })
            .collect()
    };
    match v {
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(t) => rules.push((Access::ReadWrite, t.clone())),
                    Value::Object(r) => rule_object(r, &mut rules)?,
                    _ => return Err("\"acl\" holds a rule that is neither text nor object".into()),
                }
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                let access = match k.as_str() {
                    "pub" | "publish" => Access::Write,
                    "sub" | "subscribe" => Access::Read,
                    "all" => Access::ReadWrite,
                    // A key not understood may be a restriction: refuse the answer rather than
                    // grant what it might have withheld.
                    other => return Err(format!("\"acl\" has an unknown key {other:?}")),
                };
                rules.extend(topics(v, k)?.into_iter().map(|t| (access, t)));
            }
        }
        _ => return Err("\"acl\" is neither a list nor an object".into()),
    }
    AclFile::from_patterns(rules.iter().map(|(a, t)| (*a, t.as_str())))
        .map_err(|e| format!("\"acl\": {e}"))
}

/// One rule object of an `"acl"` list.
pub(super) fn rule_object(
    r: &Map<String, Value>,
    rules: &mut Vec<(Access, String)>,
) -> Result<(), String> {
    let text = |key: &str, default: &'static str| match r.get(key) {
        None | Some(Value::Null) => Ok(default.to_owned()),
        Some(Value::String(s)) => Ok(s.to_ascii_lowercase()),
        Some(other) => Err(format!("\"acl\" rule {key} is not text: {other}")),
    };
    let deny = match text("permission", "allow")?.as_str() {
        "allow" => false,
        "deny" => true,
        other => return Err(format!("\"acl\" rule permission {other:?}")),
    };
    let access = match text("action", "all")?.as_str() {
        _ if deny => Access::Deny,
        "publish" => Access::Write,
        "subscribe" => Access::Read,
        "all" => Access::ReadWrite,
        other => return Err(format!("\"acl\" rule action {other:?}")),
    };
    let mut topics = Vec::new();
    match r.get("topic") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => topics.push(t.clone()),
        Some(_) => return Err("\"acl\" rule topic is not text".into()),
    }
    match r.get("topics") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ts)) => {
            for t in ts {
                let Value::String(t) = t else {
                    return Err("\"acl\" rule topics holds a non-string".into());
                };
                topics.push(t.clone());
            }
        }
        Some(_) => return Err("\"acl\" rule topics is not a list".into()),
    }
    if topics.is_empty() {
        return Err("\"acl\" rule without a topic".into());
    }
    let conditional = r
        .keys()
        .any(|k| !matches!(k.as_str(), "permission" | "action" | "topic" | "topics"));
    if conditional && !deny {
        // The broker cannot check the condition (qos, retain, ...): granting without it would
        // grant more than the service meant.
        return Ok(());
    }
    rules.extend(topics.into_iter().map(|t| (access, t)));
    Ok(())
}
