//! Unit tests of dynamic security's API keys: their form, authentication by key (unknown,
//! disabled, expired, another username or client id), authorization by the key's roles and
//! groups, the names they share with clients, their checks and bounds, and documents written
//! before keys existed.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use starling_auth::{Action, ConnectInfo, DenyReason, Grant, Verdict};

use super::keys::*;
use super::model::*;
use super::tests::{ask, backend, client, connect, g, hash, r, role, rule};
use super::{DynamicSecurity, DynsecError, store};

/// A key entry for `key` made at 100 with `roles`, in `groups`.
fn entry(key: &str, roles: Vec<RoleRef>, groups: Vec<GroupRef>) -> KeyEntry {
    KeyEntry {
        sha256: sha256_hex(key),
        client_id: None,
        roles,
        groups,
        disabled: false,
        created_at: 100,
        expires_at: None,
    }
}

const KEY: &str = "stk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A document with a role `pub` (publish `m/%u/#`), a group `readers` (receive `m/#`), a
/// client `ann` (password `pw`) and a key `billing` ([`KEY`]) with the role, in the group.
fn document() -> Document {
    let mut doc = Document::empty();
    doc.create_role(
        "pub",
        role(vec![rule(RuleAction::Publish, true, "m/%u/#", 0)]),
    )
    .unwrap();
    doc.create_role(
        "read",
        role(vec![rule(RuleAction::Receive, true, "m/#", 0)]),
    )
    .unwrap();
    doc.create_group(
        "readers",
        GroupEntry {
            roles: vec![r("read", 0)],
            ..GroupEntry::default()
        },
    )
    .unwrap();
    doc.create_client(
        "ann",
        ClientEntry {
            password_hash: Some(hash("pw")),
            ..ClientEntry::default()
        },
    )
    .unwrap();
    doc.create_key(
        "billing",
        entry(KEY, vec![r("pub", 0)], vec![g("readers", 0)]),
    )
    .unwrap();
    doc
}

/// Authenticates with `password` at `now` seconds after the epoch.
fn at(d: &DynamicSecurity, now: u64, id: &str, user: Option<&str>, password: &str) -> Verdict {
    let info = ConnectInfo {
        client_id: id,
        username: user,
        password: Some(password.as_bytes()),
        peer: None,
        listener: "test",
        certificate_identity: None,
        unix_uid: None,
    };
    d.state
        .load()
        .keys
        .authenticate(&info, password.as_bytes(), Duration::from_secs(now))
}

fn allowed(name: &str, valid_for: Option<Duration>) -> Verdict {
    Verdict::Allow(Grant {
        username: Some(name.into()),
        acl: None,
        valid_for,
    })
}

#[test]
fn a_key_is_the_prefix_and_32_random_bytes_in_base64url() {
    let a = generate().unwrap();
    let b = generate().unwrap();
    assert_ne!(a.key, b.key);
    let body = a.key.strip_prefix(KEY_PREFIX).expect("the prefix");
    assert_eq!(body.len(), 43);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(a.sha256, sha256_hex(&a.key));
    assert!(is_key(a.key.as_bytes()));
    assert!(!is_key(b"stk"));
    assert!(
        !format!("{a:?}").contains(body),
        "Debug never shows the key"
    );
}

#[test]
fn a_key_authenticates_as_its_name_and_is_authorized_by_its_roles_and_groups() {
    let d = backend(document());
    let ok = allowed("billing", None);
    assert_eq!(connect(&d, "x", None, Some(KEY.as_bytes())), ok);
    assert_eq!(connect(&d, "x", Some("billing"), Some(KEY.as_bytes())), ok);
    let publish = |t| ask(&d, "x", Some("billing"), Action::Publish, t);
    assert_eq!(publish("m/billing/1"), Some(true), "%u is the key's name");
    assert_eq!(publish("m/ann/1"), Some(false));
    assert_eq!(
        ask(&d, "x", Some("billing"), Action::Read, "m/ann/1"),
        Some(true),
        "its group's role"
    );
    // Clients still authenticate as before.
    assert_eq!(
        connect(&d, "x", Some("ann"), Some(b"pw")),
        Verdict::Allow(Grant::user(Some("ann".into())))
    );
}

#[test]
fn a_key_is_refused_when_unknown_disabled_expired_or_used_as_another() {
    let mut doc = document();
    let fixed = "stk_fixedfixedfixedfixedfixedfixedfixedfixedf";
    doc.create_key(
        "fixed",
        KeyEntry {
            client_id: Some("m-1".into()),
            ..entry(fixed, vec![], vec![])
        },
    )
    .unwrap();
    let off = "stk_offoffoffoffoffoffoffoffoffoffoffoffoffof";
    doc.create_key(
        "off",
        KeyEntry {
            disabled: true,
            roles: vec![r("pub", 0)],
            ..entry(off, vec![], vec![])
        },
    )
    .unwrap();
    let d = backend(doc);
    let bad = Verdict::Deny(DenyReason::BadUserNameOrPassword);
    let refused = Verdict::Deny(DenyReason::NotAuthorized);
    let unknown = "stk_unknownunknownunknownunknownunknownunknow";
    assert_eq!(connect(&d, "x", None, Some(unknown.as_bytes())), bad);
    assert_eq!(
        connect(&d, "x", Some("ann"), Some(b"stk_")),
        bad,
        "the prefix makes it a key, whoever the username names"
    );
    assert_eq!(connect(&d, "x", None, Some(off.as_bytes())), refused);
    assert_eq!(
        ask(&d, "x", Some("off"), Action::Publish, "m/off/1"),
        Some(false),
        "a disabled key may do nothing"
    );
    assert_eq!(
        connect(&d, "x", Some("ann"), Some(KEY.as_bytes())),
        refused,
        "another username than the key's name"
    );
    assert_eq!(
        connect(&d, "m-1", None, Some(fixed.as_bytes())),
        allowed("fixed", None)
    );
    assert_eq!(connect(&d, "m-2", None, Some(fixed.as_bytes())), refused);
    // A key's name is authenticated by its key only.
    assert_eq!(connect(&d, "x", Some("billing"), Some(b"pw")), bad);
    assert_eq!(connect(&d, "x", Some("billing"), None), bad);
}

#[test]
fn an_expiring_key_is_valid_until_its_expiry_and_refused_from_then() {
    let mut doc = document();
    doc.key_mut("billing").unwrap().expires_at = Some(1_000);
    let d = backend(doc);
    assert_eq!(
        at(&d, 400, "x", None, KEY),
        allowed("billing", Some(Duration::from_secs(600)))
    );
    let bad = Verdict::Deny(DenyReason::BadUserNameOrPassword);
    assert_eq!(at(&d, 1_000, "x", None, KEY), bad);
    assert_eq!(at(&d, 5_000, "x", None, KEY), bad);
    let k = &d.document().keys["billing"];
    assert!(!k.expired(Duration::from_secs(999)));
    assert!(k.expired(Duration::from_secs(1_000)));
    // With the real clock: an expiry in the past is refused, one ahead gives what is left.
    let now = now().as_secs();
    let mut doc = document();
    doc.key_mut("billing").unwrap().expires_at = Some(now - 1);
    assert_eq!(connect(&backend(doc), "x", None, Some(KEY.as_bytes())), bad);
    let mut doc = document();
    doc.key_mut("billing").unwrap().expires_at = Some(now + 3_600);
    match connect(&backend(doc), "x", None, Some(KEY.as_bytes())) {
        Verdict::Allow(Grant {
            valid_for: Some(left),
            ..
        }) => assert!(left > Duration::from_secs(3_590) && left <= Duration::from_secs(3_600)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_names_and_client_usernames_do_not_clash() {
    let mut doc = document();
    assert!(matches!(
        doc.create_key("ann", entry("stk_other", vec![], vec![])),
        Err(DynsecError::Conflict(_))
    ));
    assert!(matches!(
        doc.create_client("billing", client(vec![], vec![])),
        Err(DynsecError::Conflict(_))
    ));
    assert!(matches!(
        doc.create_key("billing", entry("stk_other", vec![], vec![])),
        Err(DynsecError::Conflict(_))
    ));
    // A stored document holding both is refused, naming the key.
    doc.clients.insert("billing".into(), ClientEntry::default());
    let err = doc.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("keys[\"billing\"]: a client has this username"),
        "{err}"
    );
}

#[test]
fn keys_are_checked_and_bounded() {
    let mut doc = document();
    let err = doc
        .create_key("k", entry("stk_k", vec![r("nope", 0)], vec![]))
        .unwrap_err();
    assert_eq!(err.to_string(), "roles[0].name: no role \"nope\"");
    let err = doc
        .create_key("k", entry("stk_k", vec![], vec![g("nope", 0)]))
        .unwrap_err();
    assert_eq!(err.to_string(), "groups[0].name: no group \"nope\"");
    assert!(doc.create_key("", entry("stk_k", vec![], vec![])).is_err());
    assert!(
        doc.create_key("a\nb", entry("stk_k", vec![], vec![]))
            .is_err()
    );
    for bad in ["", "ab", &"A".repeat(64), &"g".repeat(64), &"0".repeat(65)] {
        let k = KeyEntry {
            sha256: bad.to_owned(),
            ..entry("", vec![], vec![])
        };
        let err = doc.create_key("k", k).unwrap_err().to_string();
        assert!(err.starts_with("sha256: "), "{bad:?}: {err}");
    }
    let err = doc
        .create_key("again", entry(KEY, vec![], vec![]))
        .unwrap_err();
    assert_eq!(err.to_string(), "sha256: the hash of another key");
    let late = KeyEntry {
        expires_at: Some(MAX_EXPIRES_AT + 1),
        ..entry("stk_k", vec![], vec![])
    };
    assert!(doc.create_key("k", late).is_err());
    assert_eq!(expiry("e", 100, 50).unwrap(), 150);
    assert!(expiry("e", 100, 0).is_err());
    assert!(expiry("e", 100, u64::MAX).is_err());
    assert!(expiry("e", 100, MAX_EXPIRES_AT).is_err());
    assert!(matches!(
        doc.delete_key("nobody"),
        Err(DynsecError::NotFound(_))
    ));
    // A password that would be taken for a key is refused.
    let err = check_password("password", "stk_secret").unwrap_err();
    assert!(err.to_string().contains("API key"), "{err}");
    // The number of keys, filled in directly rather than through ten thousand checked edits.
    let mut full = Document::empty();
    for i in 0..MAX_KEYS {
        full.keys
            .insert(format!("k{i}"), entry(&format!("stk_{i}"), vec![], vec![]));
    }
    assert!(matches!(
        full.create_key("one-more", entry("stk_more", vec![], vec![])),
        Err(DynsecError::TooMany { .. })
    ));
}

#[test]
fn deleting_a_role_or_a_group_takes_it_from_keys() {
    let mut doc = document();
    doc.delete_role("pub").unwrap();
    doc.delete_group("readers").unwrap();
    let k = &doc.keys["billing"];
    assert!(k.roles.is_empty() && k.groups.is_empty());
    doc.validate().unwrap();
    doc.delete_key("billing").unwrap();
    assert!(doc.keys.is_empty());
}

#[test]
fn a_document_without_keys_still_loads_and_is_written_without_them() {
    let old = r#"{"version": 1, "roles": {"r": {}}, "clients": {"u": {"roles": [{"name": "r"}]}}}"#;
    let doc = store::decode(old.as_bytes(), "test").unwrap();
    assert!(doc.keys.is_empty());
    let bytes = store::encode(&doc).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("keys"),
        "no keys: nothing a build without them would refuse"
    );
    let doc = document();
    let bytes = store::encode(&doc).unwrap();
    assert_eq!(store::decode(&bytes, "test").unwrap(), doc);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(&sha256_hex(KEY)) && !text.contains(KEY),
        "{text}"
    );
    let e = store::decode(
        br#"{"keys": {"k": {"sha256": "00", "created_at": 1}}}"#,
        "test",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("keys[\"k\"].sha256"), "{e}");
}

#[tokio::test]
async fn a_key_made_by_a_change_is_accepted_at_once() {
    let d = Arc::new(DynamicSecurity::new());
    let made = generate().unwrap();
    let sha256 = made.sha256.clone();
    d.change(
        None,
        |doc| {
            doc.create_key(
                "svc",
                KeyEntry {
                    sha256,
                    client_id: None,
                    roles: vec![],
                    groups: vec![],
                    disabled: false,
                    created_at: now().as_secs(),
                    expires_at: None,
                },
            )
        },
        || {},
    )
    .await
    .unwrap();
    assert_eq!(
        connect(&d, "x", None, Some(made.key.as_bytes())),
        allowed("svc", None)
    );
    d.change(None, |doc| doc.delete_key("svc"), || {})
        .await
        .unwrap();
    assert_eq!(
        connect(&d, "x", None, Some(made.key.as_bytes())),
        Verdict::Deny(DenyReason::BadUserNameOrPassword)
    );
}
