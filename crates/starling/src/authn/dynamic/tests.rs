//! Unit tests of dynamic security: rule matching (order, priorities, `%c`/`%u`, `$` topics,
//! subscription coverage, groups, the anonymous group, defaults), authentication, the
//! model's checks and bounds, the stored form, and changes committed through a journal.
//! API keys have theirs in `key_tests.rs`, which shares these helpers.

use std::sync::Arc;

use starling_auth::password::{HashKind, PasswordHash};
use starling_auth::{AclBackend, Action, Answer, AuthBackend, Client, ConnectInfo, DenyReason};
use starling_auth::{Grant, Verdict};
use starling_broker::persist::Journal;
use starling_broker::wake::Flag;
use starling_store::Op;

use super::model::*;
use super::rules::covers_for_tests;
use super::{DynamicConfig, DynamicSecurity, DynsecError, SETTING_KEY, store};

pub(super) fn rule(action: RuleAction, allow: bool, filter: &str, priority: i32) -> Rule {
    Rule {
        action,
        allow,
        filter: filter.into(),
        priority,
    }
}

pub(super) fn role(rules: Vec<Rule>) -> RoleEntry {
    RoleEntry {
        rules,
        ..RoleEntry::default()
    }
}

pub(super) fn r(name: &str, priority: i32) -> RoleRef {
    RoleRef {
        name: name.into(),
        priority,
    }
}

pub(super) fn g(name: &str, priority: i32) -> GroupRef {
    GroupRef {
        name: name.into(),
        priority,
    }
}

pub(super) fn client(roles: Vec<RoleRef>, groups: Vec<GroupRef>) -> ClientEntry {
    ClientEntry {
        roles,
        groups,
        ..ClientEntry::default()
    }
}

/// A backend holding `doc` (validated).
pub(super) fn backend(doc: Document) -> DynamicSecurity {
    let d = DynamicSecurity::new();
    let bytes = store::encode(&doc).unwrap();
    d.restore(Some(&bytes)).unwrap();
    d
}

pub(super) fn ask(
    d: &DynamicSecurity,
    id: &str,
    user: Option<&str>,
    action: Action,
    t: &str,
) -> Option<bool> {
    let c = Client {
        client_id: id,
        username: user,
    };
    match d.check(&c, action, t) {
        Answer::Now(a) => a,
        Answer::Later(_) => panic!("dynamic security answers at once"),
    }
}

fn publish(d: &DynamicSecurity, user: &str, t: &str) -> Option<bool> {
    ask(d, "c1", Some(user), Action::Publish, t)
}

#[test]
fn the_first_matching_rule_decides_by_priority_then_order() {
    use RuleAction::Publish;
    let mut doc = Document::empty();
    // In document order the allow comes first; the deny's priority puts it before.
    doc.roles.insert(
        "prio".into(),
        role(vec![
            rule(Publish, true, "a/#", 0),
            rule(Publish, false, "a/secret", 10),
        ]),
    );
    // Equal priorities: document order.
    doc.roles.insert(
        "order".into(),
        role(vec![
            rule(Publish, true, "b/#", 0),
            rule(Publish, false, "b/secret", 0),
        ]),
    );
    doc.clients.insert(
        "u".into(),
        client(vec![r("prio", 0), r("order", 0)], vec![]),
    );
    let d = backend(doc);
    assert_eq!(publish(&d, "u", "a/x"), Some(true));
    assert_eq!(publish(&d, "u", "a/secret"), Some(false));
    assert_eq!(publish(&d, "u", "b/secret"), Some(true), "first in order");
    assert_eq!(publish(&d, "u", "c"), Some(false), "no rule: default deny");
    assert_eq!(
        ask(&d, "c1", Some("u"), Action::Read, "a/x"),
        Some(false),
        "publish rules say nothing about receiving"
    );
}

#[test]
fn roles_and_groups_are_asked_by_priority_own_roles_first() {
    use RuleAction::Publish;
    let mut doc = Document::empty();
    doc.roles
        .insert("allow".into(), role(vec![rule(Publish, true, "t", 0)]));
    doc.roles
        .insert("deny".into(), role(vec![rule(Publish, false, "t", 0)]));
    doc.roles
        .insert("g-allow".into(), role(vec![rule(Publish, true, "g", 0)]));
    doc.roles
        .insert("g-deny".into(), role(vec![rule(Publish, false, "g", 0)]));
    doc.groups.insert(
        "ga".into(),
        GroupEntry {
            roles: vec![r("g-allow", 0), r("deny", 0)],
            ..GroupEntry::default()
        },
    );
    doc.groups.insert(
        "gd".into(),
        GroupEntry {
            roles: vec![r("g-deny", 0)],
            ..GroupEntry::default()
        },
    );
    // Role priority beats listing order.
    doc.clients.insert(
        "a".into(),
        client(vec![r("allow", 0), r("deny", 1)], vec![]),
    );
    // Own roles before groups' roles, whatever their priority.
    doc.clients.insert(
        "b".into(),
        client(vec![r("allow", -5)], vec![g("gd", 100), g("ga", 0)]),
    );
    // Groups by priority.
    doc.clients
        .insert("c".into(), client(vec![], vec![g("gd", 0), g("ga", 1)]));
    let d = backend(doc);
    assert_eq!(publish(&d, "a", "t"), Some(false));
    assert_eq!(publish(&d, "b", "t"), Some(true));
    assert_eq!(
        publish(&d, "b", "g"),
        Some(false),
        "gd has the higher priority"
    );
    assert_eq!(
        publish(&d, "c", "g"),
        Some(true),
        "ga has the higher priority"
    );
    assert_eq!(publish(&d, "c", "t"), Some(false), "ga's second role");
}

#[test]
fn client_id_and_username_are_substituted_as_whole_levels_and_literally() {
    let f = covers_for_tests;
    assert!(f("devices/%c/#", "d1", None, "devices/d1/temp", false));
    assert!(!f("devices/%c/#", "d1", None, "devices/d2/temp", false));
    assert!(f("users/%u/+", "c", Some("ann"), "users/ann/x", false));
    assert!(
        !f("users/%u/+", "c", None, "users//x", false),
        "%u never matches an anonymous client"
    );
    // A username with a slash spans levels; one with a wildcard is only that text.
    assert!(f("u/%u", "c", Some("a/b"), "u/a/b", false));
    assert!(!f("u/%u", "c", Some("a/b"), "u/a", false));
    assert!(!f("u/%c/x", "+", None, "u/other/x", false));
    assert!(f("u/%c/x", "+", None, "u/+/x", false));
    assert!(
        !f("u/%c/#", "+", None, "u/+/#", true),
        "a literal level never covers a wildcard of the filter"
    );
    assert!(!f("u/%c/#", "#", None, "u/#", true));
}

#[test]
fn wildcards_do_not_reach_dollar_topics_and_subscriptions_must_be_covered() {
    let f = |rule: &str, subject: &str, sub: bool| covers_for_tests(rule, "c", None, subject, sub);
    assert!(!f("#", "$SYS/broker/uptime", false));
    assert!(!f("+/broker/#", "$SYS/broker/uptime", false));
    assert!(f("$SYS/#", "$SYS/broker/uptime", false));
    assert!(!f("#", "$SYS/#", true));
    assert!(f("a/#", "a", false), "a/# matches its parent level");
    assert!(f("a/+", "a/", false), "+ matches an empty level");
    assert!(!f("a/+", "a/b/c", false));
    // Coverage of filters.
    assert!(f("a/#", "a/+/b", true));
    assert!(f("a/#", "a/#", true));
    assert!(f("a/+/b", "a/+/b", true));
    assert!(!f("a/+", "a/#", true));
    assert!(!f("a/b", "a/+", true));
    assert!(!f("a/+/b", "a/#", true));
    assert!(f("+/+", "x/+", true));
}

#[test]
fn a_deny_rule_for_part_of_a_filter_does_not_refuse_the_subscription() {
    use RuleAction::{Receive, Subscribe};
    let mut doc = Document::empty();
    doc.roles.insert(
        "r".into(),
        role(vec![
            rule(Subscribe, false, "a/secret", 1),
            rule(Subscribe, true, "a/#", 0),
            rule(Receive, false, "a/secret", 1),
            rule(Receive, true, "a/#", 0),
        ]),
    );
    doc.clients
        .insert("u".into(), client(vec![r("r", 0)], vec![]));
    let d = backend(doc);
    let sub = |t| ask(&d, "c", Some("u"), Action::Subscribe, t);
    assert_eq!(sub("a/#"), Some(true), "the deny rule does not cover a/#");
    assert_eq!(sub("a/secret"), Some(false));
    assert_eq!(sub("b/#"), Some(false));
    // What the subscription may not receive is held back at delivery.
    assert_eq!(
        ask(&d, "c", Some("u"), Action::Read, "a/secret"),
        Some(false)
    );
    assert_eq!(ask(&d, "c", Some("u"), Action::Read, "a/x"), Some(true));
}

#[test]
fn anonymous_clients_get_the_anonymous_group_unknown_users_pass() {
    use RuleAction::Publish;
    let mut doc = Document::empty();
    doc.roles
        .insert("pub".into(), role(vec![rule(Publish, true, "public/#", 0)]));
    doc.groups.insert(
        "anon".into(),
        GroupEntry {
            roles: vec![r("pub", 0)],
            ..GroupEntry::default()
        },
    );
    let without = backend(doc.clone());
    assert_eq!(
        ask(&without, "c", None, Action::Publish, "public/x"),
        None,
        "no anonymous group: anonymous clients are not managed here"
    );
    doc.anonymous_group = Some("anon".into());
    doc.clients.insert(
        "off".into(),
        ClientEntry {
            roles: vec![r("pub", 0)],
            disabled: true,
            ..ClientEntry::default()
        },
    );
    let d = backend(doc);
    assert_eq!(ask(&d, "c", None, Action::Publish, "public/x"), Some(true));
    assert_eq!(ask(&d, "c", None, Action::Publish, "private"), Some(false));
    assert_eq!(publish(&d, "stranger", "public/x"), None);
    assert_eq!(
        publish(&d, "off", "public/x"),
        Some(false),
        "a disabled client may do nothing"
    );
}

#[test]
fn default_access_answers_when_no_rule_matches() {
    let mut doc = Document::empty();
    doc.roles.insert("empty".into(), role(vec![]));
    doc.clients
        .insert("u".into(), client(vec![r("empty", 0)], vec![]));
    doc.default_access.receive = Access::Allow;
    let d = backend(doc);
    assert_eq!(publish(&d, "u", "x"), Some(false));
    assert_eq!(ask(&d, "c", Some("u"), Action::Subscribe, "x"), Some(false));
    assert_eq!(ask(&d, "c", Some("u"), Action::Read, "x"), Some(true));
}

pub(super) fn hash(p: &str) -> String {
    // Few iterations: the tests check the logic, not the hash's cost.
    PasswordHash::new(p.as_bytes(), HashKind::Pbkdf2Sha512 { iterations: 10 })
        .unwrap()
        .to_string()
}

pub(super) fn connect(
    d: &DynamicSecurity,
    id: &str,
    user: Option<&str>,
    pw: Option<&[u8]>,
) -> Verdict {
    let info = ConnectInfo {
        client_id: id,
        username: user,
        password: pw,
        peer: None,
        listener: "test",
        certificate_identity: None,
        unix_uid: None,
    };
    match d.authenticate(&info) {
        Answer::Now(v) => v,
        // A password hash, answered by the hashing pool.
        Answer::Later(f) => tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f),
    }
}

#[test]
fn authentication() {
    let mut doc = Document::empty();
    let entry = |client_id: Option<&str>, disabled: bool| ClientEntry {
        password_hash: Some(hash("pw")),
        client_id: client_id.map(str::to_owned),
        disabled,
        ..ClientEntry::default()
    };
    doc.clients.insert("ann".into(), entry(None, false));
    doc.clients
        .insert("fixed".into(), entry(Some("dev-1"), false));
    doc.clients.insert("off".into(), entry(None, true));
    doc.clients
        .insert("certonly".into(), ClientEntry::default());
    let d = backend(doc);
    let bad = Verdict::Deny(DenyReason::BadUserNameOrPassword);
    let refused = Verdict::Deny(DenyReason::NotAuthorized);
    assert_eq!(
        connect(&d, "x", Some("ann"), Some(b"pw")),
        Verdict::Allow(Grant::user(Some("ann".into())))
    );
    assert_eq!(connect(&d, "x", Some("ann"), Some(b"no")), bad);
    assert_eq!(connect(&d, "x", Some("ann"), None), bad);
    assert_eq!(connect(&d, "x", Some("nobody"), Some(b"pw")), Verdict::Pass);
    assert_eq!(connect(&d, "x", None, None), Verdict::Pass);
    assert_eq!(
        connect(&d, "dev-1", Some("fixed"), Some(b"pw")),
        Verdict::Allow(Grant::user(Some("fixed".into())))
    );
    assert_eq!(connect(&d, "dev-2", Some("fixed"), Some(b"pw")), refused);
    assert_eq!(
        connect(&d, "dev-2", Some("fixed"), Some(b"no")),
        bad,
        "the password is checked first"
    );
    assert_eq!(connect(&d, "x", Some("off"), Some(b"pw")), refused);
    assert_eq!(connect(&d, "x", Some("off"), Some(b"no")), bad);
    assert_eq!(
        connect(&d, "x", Some("certonly"), Some(b"pw")),
        Verdict::Pass,
        "without a password here, another backend authenticates"
    );
    assert_eq!(AuthBackend::kind(&d), "dynamic");
    assert_eq!(AclBackend::kind(&d), "dynamic");
}

#[test]
fn edits_check_names_references_and_duplicates() {
    let mut doc = Document::empty();
    doc.create_role("r", RoleEntry::default()).unwrap();
    assert!(matches!(
        doc.create_role("r", RoleEntry::default()),
        Err(DynsecError::Conflict(_))
    ));
    let err = doc
        .create_client("u", client(vec![r("r", 0), r("nope", 0)], vec![]))
        .unwrap_err();
    assert_eq!(err.to_string(), "roles[1].name: no role \"nope\"");
    let err = doc
        .create_client("u", client(vec![r("r", 0), r("r", 1)], vec![]))
        .unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    let err = doc.create_client("", ClientEntry::default()).unwrap_err();
    assert_eq!(err.to_string(), "username: must not be empty");
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    assert!(doc.create_client(&long, ClientEntry::default()).is_err());
    assert!(doc.create_client("a\0b", ClientEntry::default()).is_err());
    doc.create_client("u", client(vec![r("r", 0)], vec![]))
        .unwrap();
    assert!(matches!(
        doc.remove_client_role("u", "other"),
        Err(DynsecError::NotFound(_))
    ));
    assert!(matches!(
        doc.delete_client("nobody"),
        Err(DynsecError::NotFound(_))
    ));
    // Adding a role it has changes its priority.
    doc.add_client_role("u", r("r", 7)).unwrap();
    assert_eq!(doc.clients["u"].roles, vec![r("r", 7)]);
    // Deleting a role removes every reference to it.
    doc.create_group("g", GroupEntry::default()).unwrap();
    doc.add_group_role("g", r("r", 0)).unwrap();
    doc.delete_role("r").unwrap();
    assert!(doc.clients["u"].roles.is_empty());
    assert!(doc.groups["g"].roles.is_empty());
    // The anonymous group cannot be deleted; another one takes its members with it.
    doc.set_anonymous_group(Some("g".into())).unwrap();
    assert!(matches!(
        doc.delete_group("g"),
        Err(DynsecError::Conflict(_))
    ));
    assert!(doc.set_anonymous_group(Some("nope".into())).is_err());
    doc.create_group("h", GroupEntry::default()).unwrap();
    doc.add_client_group("u", g("h", 0)).unwrap();
    doc.delete_group("h").unwrap();
    assert!(doc.clients["u"].groups.is_empty());
    doc.validate().unwrap();
}

#[test]
fn rules_and_filters_are_checked() {
    let mut doc = Document::empty();
    doc.create_role("r", RoleEntry::default()).unwrap();
    for bad in ["", "a/#/b", "a+", "dev-%c/x", "x/%u%c", "$share/g/a"] {
        let err = doc
            .add_rule("r", rule(RuleAction::Publish, true, bad, 0))
            .unwrap_err();
        assert!(err.to_string().starts_with("filter: "), "{bad:?}: {err}");
    }
    doc.add_rule("r", rule(RuleAction::Publish, true, "a/%c/%u/#", 0))
        .unwrap();
    assert!(matches!(
        doc.add_rule("r", rule(RuleAction::Publish, false, "a/%c/%u/#", 3)),
        Err(DynsecError::Conflict(_))
    ));
    // The same filter for another action is another rule.
    doc.add_rule("r", rule(RuleAction::Receive, false, "a/%c/%u/#", 3))
        .unwrap();
    doc.remove_rule("r", RuleAction::Publish, "a/%c/%u/#")
        .unwrap();
    assert!(matches!(
        doc.remove_rule("r", RuleAction::Publish, "a/%c/%u/#"),
        Err(DynsecError::NotFound(_))
    ));
    assert!(matches!(
        doc.add_rule("nope", rule(RuleAction::Publish, true, "a", 0)),
        Err(DynsecError::NotFound(_))
    ));
    let dup = role(vec![
        rule(RuleAction::Publish, true, "x", 0),
        rule(RuleAction::Publish, false, "x", 0),
    ]);
    let err = doc.create_role("dup", dup).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rules[1].filter: a second publish rule for \"x\""
    );
}

#[test]
fn bounds_are_enforced() {
    let mut doc = Document::empty();
    let many: Vec<Rule> = (0..=MAX_RULES_PER_ROLE)
        .map(|i| rule(RuleAction::Publish, true, &format!("t/{i}"), 0))
        .collect();
    assert!(matches!(
        doc.create_role("big", role(many.clone())),
        Err(DynsecError::TooMany { .. })
    ));
    doc.create_role("big", role(many[..MAX_RULES_PER_ROLE].to_vec()))
        .unwrap();
    assert!(matches!(
        doc.add_rule("big", rule(RuleAction::Receive, true, "x", 0)),
        Err(DynsecError::TooMany { .. })
    ));
    for i in 0..MAX_ROLES_PER_ENTRY {
        doc.create_role(&format!("r{i}"), RoleEntry::default())
            .unwrap();
    }
    let refs: Vec<RoleRef> = (0..MAX_ROLES_PER_ENTRY)
        .map(|i| r(&format!("r{i}"), 0))
        .collect();
    doc.create_client("u", client(refs, vec![])).unwrap();
    assert!(matches!(
        doc.add_client_role("u", r("big", 0)),
        Err(DynsecError::TooMany { .. })
    ));
    let text = "t".repeat(MAX_TEXT_BYTES + 1);
    let err = doc
        .create_group(
            "g",
            GroupEntry {
                text_name: Some(text),
                ..GroupEntry::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().starts_with("text_name: "), "{err}");
    assert!(check_password("password", &"p".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    assert!(check_password("password", "").is_err());
    // The number of clients, counted without building a hundred thousand of them.
    let mut full = Document::empty();
    for i in 0..MAX_CLIENTS {
        full.clients.insert(format!("c{i}"), ClientEntry::default());
    }
    assert!(matches!(
        full.create_client("one-more", ClientEntry::default()),
        Err(DynsecError::TooMany { .. })
    ));
}

#[test]
fn the_stored_form_round_trips_and_is_checked() {
    let mut doc = Document::empty();
    doc.create_role("r", role(vec![rule(RuleAction::Publish, true, "a", 2)]))
        .unwrap();
    doc.create_client(
        "u",
        ClientEntry {
            password_hash: Some(hash("pw")),
            roles: vec![r("r", 1)],
            ..ClientEntry::default()
        },
    )
    .unwrap();
    let bytes = store::encode(&doc).unwrap();
    assert_eq!(store::decode(&bytes, "test").unwrap(), doc);
    let bad = |json: &str| {
        store::decode(json.as_bytes(), "test")
            .unwrap_err()
            .to_string()
    };
    assert!(bad(r#"{"version": 1, "surprise": 1}"#).contains("surprise"));
    assert!(bad(r#"{"version": 2}"#).contains("version"));
    let e = bad(r#"{"clients": {"u": {"roles": [{"name": "gone"}]}}}"#);
    assert!(e.contains("clients[\"u\"].roles[0].name"), "{e}");
    let e = bad(r#"{"clients": {"u": {"password_hash": "plain"}}}"#);
    assert!(e.contains("password_hash"), "{e}");
    let e =
        bad(r#"{"roles": {"r": {"rules": [{"action": "write", "allow": true, "filter": "a"}]}}}"#);
    assert!(e.contains("roles.r.rules[0].action"), "{e}");
}

#[test]
fn the_store_wins_over_the_initial_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dynsec.json");
    let mut from_file = Document::empty();
    from_file
        .create_role("from-file", RoleEntry::default())
        .unwrap();
    std::fs::write(&file, store::encode(&from_file).unwrap()).unwrap();
    let config = DynamicConfig {
        init_file: Some(file.clone()),
    };
    let d = DynamicSecurity::build(&config).unwrap();
    d.restore(None).unwrap();
    assert!(d.document().roles.contains_key("from-file"));
    d.restore(Some(&store::encode(&Document::empty()).unwrap()))
        .unwrap();
    assert!(d.document().roles.is_empty());
    assert!(d.restore(Some(b"{")).is_err());
    std::fs::write(&file, b"{not json").unwrap();
    let err = DynamicSecurity::build(&config).unwrap_err().to_string();
    assert!(err.contains("dynsec.json"), "{err}");
    let missing = DynamicConfig {
        init_file: Some(dir.path().join("missing.json")),
    };
    assert!(DynamicSecurity::build(&missing).is_err());
}

/// The initial file shown in docs/security.md is a valid document.
#[test]
fn the_documented_initial_file_is_valid() {
    let doc = include_str!("../../../../../docs/security.md");
    let start = doc
        .find("```json\n{\n  \"version\": 1")
        .expect("the example in docs/security.md");
    let block = &doc[start + "```json\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    let json = block.replace("$argon2id$v=19$m=47104,t=1,p=1$...", &hash("pw"));
    let parsed = store::decode(json.as_bytes(), "docs/security.md").unwrap();
    assert!(
        parsed.keys.contains_key("exporter"),
        "the example shows an API key"
    );
    let d = backend(parsed);
    assert_eq!(publish(&d, "dev-42", "sensors/c1/secret"), Some(false));
    assert_eq!(
        ask(
            &d,
            "dev-42",
            Some("dev-42"),
            Action::Publish,
            "sensors/dev-42/t"
        ),
        Some(true)
    );
    assert_eq!(
        ask(&d, "x", None, Action::Subscribe, "public/#"),
        Some(true)
    );
}

#[tokio::test]
async fn a_change_in_memory_takes_effect_and_raises_the_generation() {
    let d = Arc::new(DynamicSecurity::new());
    let before = d.generation().unwrap();
    let kicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let k = kicked.clone();
    d.change(
        None,
        |doc| doc.create_role("r", RoleEntry::default()),
        move || k.store(true, std::sync::atomic::Ordering::SeqCst),
    )
    .await
    .unwrap();
    assert!(d.document().roles.contains_key("r"));
    assert!(d.generation().unwrap() > before);
    assert!(kicked.load(std::sync::atomic::Ordering::SeqCst));
    // A refused edit changes nothing, not even the generation.
    let now = d.generation();
    let err = d
        .change(
            None,
            |doc| {
                doc.create_group("g", GroupEntry::default())?;
                doc.create_role("r", RoleEntry::default())
            },
            || panic!("not applied"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DynsecError::Conflict(_)));
    assert!(d.document().groups.is_empty());
    assert_eq!(d.generation(), now);
}

/// Commits every batch of `journal` as `ok` says, as the server's committer would.
fn committer(journal: Arc<Journal>, ok: bool) -> std::thread::JoinHandle<Vec<Op>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..500 {
            if let Some((ops, upto)) = journal.take_batch() {
                seen.extend(ops);
                if ok {
                    journal.finish(upto, true);
                } else {
                    journal.refuse(upto, false);
                }
                return seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        seen
    })
}

#[tokio::test]
async fn a_change_is_in_force_only_once_committed() {
    let d = Arc::new(DynamicSecurity::new());
    let journal = Arc::new(Journal::new(true, 1 << 20, Flag::new()));
    let c = committer(journal.clone(), true);
    d.change(
        Some(journal.clone()),
        |doc| doc.create_role("kept", RoleEntry::default()),
        || {},
    )
    .await
    .unwrap();
    let ops = c.join().unwrap();
    assert!(d.document().roles.contains_key("kept"));
    let [Op::PutSetting(key, bytes)] = ops.as_slice() else {
        panic!("one setting written: {ops:?}");
    };
    assert_eq!(key, SETTING_KEY);
    assert_eq!(store::decode(bytes, "test").unwrap(), *d.document());

    // A refused commit: not in force, and the next change starts from what is.
    let c = committer(journal.clone(), false);
    let err = d
        .change(
            Some(journal.clone()),
            |doc| doc.create_role("lost", RoleEntry::default()),
            || panic!("not applied"),
        )
        .await
        .unwrap_err();
    c.join().unwrap();
    assert!(matches!(err, DynsecError::NotStored(_)), "{err}");
    assert!(!d.document().roles.contains_key("lost"));
    journal.close();
    let err = d
        .change(Some(journal), |_| Ok(()), || panic!("not applied"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stopping"), "{err}");
}
