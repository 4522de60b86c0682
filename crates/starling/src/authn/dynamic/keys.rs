//! API keys for machine clients: long random keys an MQTT client gives as its password,
//! each with a name (the username the broker knows it by, for ACLs and logs), roles and
//! groups like a client's, an optional fixed client id, a disabled flag and an optional
//! expiry. Owns their part of the document (its bounds and checks), making a key, and
//! authenticating one.
//!
//! - A key is [`KEY_PREFIX`] and 43 characters of base64url: 32 bytes from the operating
//!   system's random generator. The prefix tells a key from a password without hashing it.
//! - Only its SHA-256 is stored: a key has 256 bits of entropy, so a slow hash would add
//!   nothing. The key itself is shown once, when it is made.
//! - A key is found by its hash (a map lookup): the hash of a guess says nothing about the
//!   hash of a key, so the lookup's timing gives nothing away.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use starling_auth::{ConnectInfo, DenyReason, Grant, Verdict};

use super::DynsecError;
use super::model::{Document, GroupRef, RoleRef, check_name, invalid, join, too_many};

/// What every key starts with.
pub const KEY_PREFIX: &str = "stk_";
/// Most keys. Keys are for services and machines, fewer than clients; each costs one entry
/// in the document (written whole on every change) and one in the index built from it.
pub const MAX_KEYS: usize = 10_000;
/// The latest expiry accepted, unix seconds (9999-12-31T23:59:59Z): far enough for any use,
/// and exact in the JSON numbers of every client of the API.
pub const MAX_EXPIRES_AT: u64 = 253_402_300_799;
/// Random bytes in a key.
const KEY_BYTES: usize = 32;

/// One API key, as stored: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The key's SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// When set, the key may be used only with this client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Its own roles.
    #[serde(default)]
    pub roles: Vec<RoleRef>,
    /// The groups it is in.
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    /// A disabled key may not connect, and may do nothing if it still is.
    #[serde(default)]
    pub disabled: bool,
    /// When it was made, unix seconds.
    pub created_at: u64,
    /// When it stops being accepted, unix seconds; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl KeyEntry {
    /// Whether it has expired at `now` (since the unix epoch).
    pub fn expired(&self, now: Duration) -> bool {
        remaining(self.expires_at, now).is_some_and(|left| left.is_zero())
    }
}

/// A key just made: the key, to show once, and what is stored of it.
pub struct NewKey {
    /// The key (`stk_…`).
    pub key: String,
    /// Its SHA-256 in hex, for [`KeyEntry::sha256`].
    pub sha256: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Makes a key from the operating system's random generator; fails only if it does.
pub fn generate() -> Result<NewKey, rand_core::Error> {
    let mut bytes = [0u8; KEY_BYTES];
    OsRng.try_fill_bytes(&mut bytes)?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let sha256 = hex(&digest(key.as_bytes()));
    Ok(NewKey { key, sha256 })
}

/// Whether a password is meant as a key (has the prefix).
pub fn is_key(password: &[u8]) -> bool {
    password.starts_with(KEY_PREFIX.as_bytes())
}

/// The time since the unix epoch (zero on a clock set before it: every expiry then lies
/// ahead, and the key's connections are closed at it as usual).
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The expiry `expires_in_secs` after `created_at`; `field` names it in errors.
pub fn expiry(field: &str, created_at: u64, expires_in_secs: u64) -> Result<u64, DynsecError> {
    if expires_in_secs == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    created_at
        .checked_add(expires_in_secs)
        .filter(|at| *at <= MAX_EXPIRES_AT)
        .ok_or_else(|| {
            invalid(
                field,
                format!("expires after {MAX_EXPIRES_AT} (unix seconds)"),
            )
        })
}

/// How long until `expires_at` from `now`: zero once reached; `None` without an expiry.
fn remaining(expires_at: Option<u64>, now: Duration) -> Option<Duration> {
    expires_at.map(|at| Duration::from_secs(at).saturating_sub(now))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses a stored hash: exactly 64 lowercase hex digits (one spelling per hash, so that
/// two entries of the same key cannot hide behind different cases).
fn parse_sha256(field: &str, s: &str) -> Result<[u8; 32], DynsecError> {
    let bad = || invalid(field, "expected a SHA-256 as 64 lowercase hex digits");
    if s.len() != 64 {
        return Err(bad());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (
            pair.first().copied().and_then(digit),
            pair.get(1).copied().and_then(digit),
        ) else {
            return Err(bad());
        };
        *o = hi << 4 | lo;
    }
    Ok(out)
}

impl Document {
    /// Checks the keys: their number, names (none a client's username), fields and
    /// references, and that no two are the same key.
    pub(super) fn validate_keys(&self) -> Result<(), DynsecError> {
        if self.keys.len() > MAX_KEYS {
            return Err(too_many("keys", MAX_KEYS));
        }
        let mut seen = HashSet::with_capacity(self.keys.len());
        for (name, k) in &self.keys {
            let field = format!("keys[{name:?}]");
            check_name(&field, name)?;
            if self.clients.contains_key(name) {
                return Err(invalid(
                    field,
                    "a client has this username; a key's name is the username it connects as",
                ));
            }
            self.check_key(&field, k)?;
            if !seen.insert(k.sha256.as_str()) {
                return Err(invalid(join(&field, "sha256"), "the hash of another key"));
            }
        }
        Ok(())
    }

    /// Checks a key's fields and that what it names exists.
    pub fn check_key(&self, field: &str, k: &KeyEntry) -> Result<(), DynsecError> {
        parse_sha256(&join(field, "sha256"), &k.sha256)?;
        if let Some(id) = &k.client_id {
            check_name(&join(field, "client_id"), id)?;
        }
        self.check_role_refs(&join(field, "roles"), &k.roles)?;
        self.check_group_refs(&join(field, "groups"), &k.groups)?;
        if k.expires_at.is_some_and(|at| at > MAX_EXPIRES_AT) {
            return Err(invalid(
                join(field, "expires_at"),
                format!("after {MAX_EXPIRES_AT} (unix seconds)"),
            ));
        }
        Ok(())
    }

    /// The key `name`, or 404.
    pub fn key_mut(&mut self, name: &str) -> Result<&mut KeyEntry, DynsecError> {
        self.keys
            .get_mut(name)
            .ok_or_else(|| DynsecError::NotFound(format!("no key {name:?}")))
    }

    /// Adds a key; 409 if the name is a key's or a client's.
    pub fn create_key(&mut self, name: &str, k: KeyEntry) -> Result<(), DynsecError> {
        check_name("name", name)?;
        if self.keys.contains_key(name) {
            return Err(DynsecError::Conflict(format!("key {name:?} exists")));
        }
        if self.clients.contains_key(name) {
            return Err(DynsecError::Conflict(format!(
                "client {name:?} exists: a key's name is the username it connects as"
            )));
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(too_many("keys", MAX_KEYS));
        }
        self.check_key("", &k)?;
        // Never for a key just made (2^-256); a document edited by hand may try it.
        if self.keys.values().any(|o| o.sha256 == k.sha256) {
            return Err(invalid("sha256", "the hash of another key"));
        }
        self.keys.insert(name.to_owned(), k);
        Ok(())
    }

    /// Removes a key.
    pub fn delete_key(&mut self, name: &str) -> Result<(), DynsecError> {
        self.keys
            .remove(name)
            .map(drop)
            .ok_or_else(|| DynsecError::NotFound(format!("no key {name:?}")))
    }

    /// 409 if `username` is a key's name (a client may not take it).
    pub(super) fn refuse_key_name(&self, username: &str) -> Result<(), DynsecError> {
        if self.keys.contains_key(username) {
            return Err(DynsecError::Conflict(format!(
                "key {username:?} exists: a key's name is the username it connects as"
            )));
        }
        Ok(())
    }
}

/// What authenticating a key needs of it.
#[derive(Debug)]
struct KeyUser {
    name: String,
    client_id: Option<String>,
    disabled: bool,
    expires_at: Option<u64>,
}

/// The document's keys by the SHA-256 of the key.
#[derive(Debug, Default)]
pub(super) struct KeyIndex(HashMap<[u8; 32], KeyUser>);

impl KeyIndex {
    /// Indexes a validated document's keys.
    pub(super) fn build(doc: &Document) -> Result<Self, DynsecError> {
        let mut map = HashMap::with_capacity(doc.keys.len());
        for (name, k) in &doc.keys {
            let hash = parse_sha256(&format!("keys[{name:?}].sha256"), &k.sha256)?;
            let user = KeyUser {
                name: name.clone(),
                client_id: k.client_id.clone(),
                disabled: k.disabled,
                expires_at: k.expires_at,
            };
            map.insert(hash, user);
        }
        Ok(Self(map))
    }

    /// The answer to a CONNECT whose password is `key` (it has the prefix), at `now`: an
    /// unknown key is refused here (0x86), as no other backend takes this form. A known one
    /// is refused if disabled (0x87) or expired (0x86), if the CONNECT names another user or
    /// if it is not the key's fixed client id (0x87); else it is allowed as the key's name,
    /// until its expiry.
    pub(super) fn authenticate(
        &self,
        info: &ConnectInfo<'_>,
        key: &[u8],
        now: Duration,
    ) -> Verdict {
        let Some(k) = self.0.get(&digest(key)) else {
            return Verdict::Deny(DenyReason::BadUserNameOrPassword);
        };
        if k.disabled {
            return Verdict::Deny(DenyReason::NotAuthorized);
        }
        let valid_for = remaining(k.expires_at, now);
        if valid_for.is_some_and(|left| left.is_zero()) {
            return Verdict::Deny(DenyReason::BadUserNameOrPassword);
        }
        if info.username.is_some_and(|u| u != k.name) {
            return Verdict::Deny(DenyReason::NotAuthorized);
        }
        if k.client_id
            .as_deref()
            .is_some_and(|id| id != info.client_id)
        {
            return Verdict::Deny(DenyReason::NotAuthorized);
        }
        Verdict::Allow(Grant {
            username: Some(k.name.clone()),
            acl: None,
            valid_for,
        })
    }
}

#[cfg(test)]
pub(super) fn sha256_hex(key: &str) -> String {
    hex(&digest(key.as_bytes()))
}
