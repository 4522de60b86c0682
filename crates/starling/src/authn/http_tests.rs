//! Tests of the HTTP backend: request bodies, every answer convention, the cache, the
//! configuration, and the failures (slow, 5xx, refused connections) against a local service.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::authn::remote::test_server::{Seen, TestServer, dead_url, reply};

fn info<'a>(user: Option<&'a str>, pw: Option<&'a [u8]>) -> ConnectInfo<'a> {
    ConnectInfo {
        client_id: "dev-1",
        username: user,
        password: pw,
        peer: Some(SocketAddr::from(([192, 0, 2, 7], 50_123))),
        listener: "tcp 0.0.0.0:1883",
        certificate_identity: None,
        unix_uid: None,
    }
}

fn client<'a>(user: Option<&'a str>) -> Client<'a> {
    Client {
        client_id: "dev-1",
        username: user,
    }
}

fn config(server: &TestServer) -> HttpAuthConfig {
    HttpAuthConfig {
        url: Some(server.url("/auth")),
        acl_url: Some(server.url("/acl")),
        timeout_ms: 1_000,
        ..HttpAuthConfig::default()
    }
}

async fn ask(b: &HttpBackend, i: &ConnectInfo<'_>) -> Verdict {
    AuthBackend::authenticate(b, i).resolve().await
}

fn is_now<T>(a: &Answer<T>) -> bool {
    matches!(a, Answer::Now(_))
}

fn status(n: u16) -> StatusCode {
    StatusCode::from_u16(n).unwrap()
}

/// The outcome of an answer, or the kind of failure.
fn outcome(code: u16, body: &str) -> Result<Outcome, &'static str> {
    match parse_reply(status(code), body.as_bytes(), true) {
        Ok(p) => Ok(p.outcome),
        Err(Failure::Status(_)) => Err("status"),
        Err(Failure::Body(_)) => Err("body"),
        Err(f) => panic!("{f}"),
    }
}

// ---- request bodies ----

#[test]
fn an_authentication_request_carries_every_field() {
    let mut i = info(Some("alice"), Some(b"s3cret"));
    i.certificate_identity = Some("device-1");
    i.peer = Some("[::ffff:192.0.2.7]:50123".parse().unwrap());
    assert_eq!(
        json_body(&auth_fields(&i)),
        json!({
            "clientid": "dev-1",
            "username": "alice",
            "password": "s3cret",
            "ip": "192.0.2.7",
            "port": 50123,
            "listener": "tcp 0.0.0.0:1883",
            "cert_identity": "device-1",
        })
    );
    // Nothing is sent for what the client did not give.
    let bare = ConnectInfo {
        peer: None,
        ..info(None, None)
    };
    assert_eq!(
        json_body(&auth_fields(&bare)),
        json!({"clientid": "dev-1", "listener": "tcp 0.0.0.0:1883"})
    );
    // A Unix socket client: no address, its uid instead (and a cache key of its own).
    let unix = ConnectInfo {
        peer: None,
        unix_uid: Some(1000),
        listener: "unix /run/starling/mqtt.sock",
        ..info(Some("alice"), None)
    };
    assert_eq!(
        json_body(&auth_fields(&unix)),
        json!({"clientid": "dev-1", "username": "alice", "listener": "unix /run/starling/mqtt.sock",
               "unix_uid": 1000})
    );
    let other_uid = ConnectInfo {
        unix_uid: Some(1001),
        ..unix
    };
    assert_ne!(auth_key(&unix), auth_key(&other_uid));
}

#[test]
fn a_password_that_is_not_utf8_goes_in_base64_with_a_flag() {
    let i = info(Some("u"), Some(&[0xff, 0x00, 0x41]));
    let body = json_body(&auth_fields(&i));
    assert_eq!(body["password"], "/wBB");
    assert_eq!(body["password_base64"], true);
    let form = form_pairs(&auth_fields(&i));
    assert!(form.contains(&("password_base64", "true".into())));
    assert!(form.contains(&("port", "50123".into())));
}

#[test]
fn an_acl_request_has_mosquitto_go_auth_access_codes() {
    let c = client(Some("alice"));
    assert_eq!(
        json_body(&acl_fields(&c, Action::Publish, "a/b")),
        json!({"clientid": "dev-1", "username": "alice", "action": "publish", "topic": "a/b", "acc": 2})
    );
    let sub = json_body(&acl_fields(&c, Action::Subscribe, "a/#"));
    assert_eq!(
        (sub["action"].as_str(), sub["acc"].as_u64()),
        (Some("subscribe"), Some(4))
    );
    assert_eq!(acc(Action::Read), 1);
}

#[test]
fn cache_keys_hold_the_password_only_as_a_digest_and_ignore_the_port() {
    let a = auth_key(&info(Some("u"), Some(b"p")));
    let mut other_port = info(Some("u"), Some(b"p"));
    other_port.peer = Some(SocketAddr::from(([192, 0, 2, 7], 1)));
    assert_eq!(a, auth_key(&other_port));
    assert_ne!(a, auth_key(&info(Some("u"), Some(b"q"))));
    assert_ne!(a, auth_key(&info(Some("u"), None)));
    let mut other_ip = info(Some("u"), Some(b"p"));
    other_ip.peer = Some(SocketAddr::from(([192, 0, 2, 8], 50_123)));
    assert_ne!(a, auth_key(&other_ip));
    let c = client(Some("u"));
    assert_ne!(
        acl_key(&c, Action::Publish, "t"),
        acl_key(&c, Action::Subscribe, "t")
    );
}

// ---- answers ----

#[test]
fn answers_are_read_by_every_convention() {
    use Outcome::*;
    let cases: &[(u16, &str, Result<Outcome, &str>)] = &[
        (200, "", Ok(Allow)),
        (204, "", Ok(Allow)),
        (200, " \n", Ok(Allow)),
        // EMQX
        (
            200,
            r#"{"result": "allow", "is_superuser": true}"#,
            Ok(Allow),
        ),
        (200, r#"{"result": "deny"}"#, Ok(Deny)),
        (200, r#"{"result": "ignore"}"#, Ok(Ignore)),
        (200, r#"{"result": "Allow"}"#, Ok(Allow)),
        (200, r#"{"result": "maybe"}"#, Err("body")),
        (200, r#"{"result": 1}"#, Err("body")),
        // mosquitto-go-auth
        (200, r#"{"ok": true, "error": ""}"#, Ok(Allow)),
        (200, r#"{"ok": false, "error": "unknown user"}"#, Ok(Deny)),
        (200, r#"{"ok": "yes"}"#, Err("body")),
        (401, "", Ok(Deny)),
        (403, r#"{"ok": false}"#, Ok(Deny)),
        (404, "<html>", Ok(Deny)),
        (200, r#"{"result": "allow", "ok": false}"#, Err("body")),
        (200, r#"{"result": "ignore", "ok": false}"#, Ok(Ignore)),
        // An object with neither: the status decides.
        (200, r#"{"message": "hi"}"#, Ok(Allow)),
        // Failures.
        (200, "OK", Err("body")),
        (200, "[1]", Err("body")),
        (200, r#"{"result": "allow""#, Err("body")),
        (500, "", Err("status")),
        (503, r#"{"result": "allow"}"#, Err("status")),
        (302, "", Err("status")),
        (408, "", Err("status")),
        (429, "", Err("status")),
    ];
    for (code, body, want) in cases {
        assert_eq!(&outcome(*code, body), want, "{code} {body}");
    }
}

#[test]
fn an_allowing_answer_may_rename_limit_and_give_rules() {
    let t = unix_now() + 3_600;
    let body = format!(
        r#"{{"result": "allow", "username": "svc", "expire_at": {t}, "acl": {{"pub": ["out/%c"], "sub": ["in/%u/#"]}}}}"#
    );
    let p = parse_reply(status(200), body.as_bytes(), true).unwrap();
    assert_eq!(p.username.as_deref(), Some("svc"));
    assert_eq!(p.expire_at, Some(t));
    let acl = p.acl.unwrap();
    let c = client(Some("svc"));
    assert!(acl.allows(&c, Action::Publish, "out/dev-1"));
    assert!(!acl.allows(&c, Action::Publish, "out/dev-2"));
    assert!(!acl.allows(&c, Action::Subscribe, "out/dev-1"));
    assert!(acl.allows(&c, Action::Subscribe, "in/svc/x"));
    assert!(acl.allows(&c, Action::Read, "in/svc/x"));
    // An ACL answer does not grant: its extras are not read.
    let p = parse_reply(status(200), body.as_bytes(), false).unwrap();
    assert!(p.acl.is_none() && p.username.is_none());
    for bad in [
        r#"{"username": ""}"#,
        r#"{"username": 7}"#,
        r#"{"expire_at": "soon"}"#,
        r#"{"expire_at": -1}"#,
        r#"{"acl": "a/#"}"#,
        r#"{"acl": {"pub": ["a/#"], "deny": ["a/b"]}}"#,
        r#"{"acl": {"pub": "a/#"}}"#,
        r#"{"acl": [{"permission": "allow", "action": "publish"}]}"#,
        r#"{"acl": [{"permission": "maybe", "topic": "a"}]}"#,
        r#"{"acl": ["a/#/b"]}"#,
    ] {
        assert!(
            matches!(
                parse_reply(status(200), bad.as_bytes(), true),
                Err(Failure::Body(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn rule_lists_never_grant_more_than_the_service_meant() {
    let body = br#"{"acl": [
        "both/#",
        {"permission": "allow", "action": "publish", "topic": "p/%u"},
        {"permission": "allow", "action": "subscribe", "topics": ["s/1", "s/2"]},
        {"permission": "allow", "action": "publish", "topic": "q0/#", "qos": [0]},
        {"permission": "deny", "action": "publish", "topic": "both/secret", "retain": true},
        {"action": "all", "topic": "all/#"}
    ]}"#;
    let acl = parse_reply(status(200), body, true).unwrap().acl.unwrap();
    let c = client(Some("alice"));
    assert!(acl.allows(&c, Action::Publish, "both/x"));
    assert!(acl.allows(&c, Action::Subscribe, "both/x"));
    assert!(acl.allows(&c, Action::Publish, "p/alice"));
    assert!(!acl.allows(&c, Action::Subscribe, "p/alice"));
    assert!(acl.allows(&c, Action::Subscribe, "s/2"));
    assert!(!acl.allows(&c, Action::Publish, "s/2"));
    assert!(
        !acl.allows(&c, Action::Publish, "q0/x"),
        "an allow rule with a condition the broker does not check is left out"
    );
    assert!(
        !acl.allows(&c, Action::Read, "both/secret"),
        "a deny rule with a condition applies without it, both ways"
    );
    assert!(acl.allows(&c, Action::Publish, "all/x"));
    // An empty list grants nothing.
    let none = parse_reply(status(200), br#"{"acl": []}"#, true)
        .unwrap()
        .acl
        .unwrap();
    assert!(!none.allows(&c, Action::Publish, "x"));
}

#[test]
fn a_cached_grant_counts_its_validity_from_when_it_is_given() {
    let c = Cached::Allow {
        username: Some("u".into()),
        acl: None,
        expire_at: Some(1_000),
    };
    match c.verdict(400) {
        Verdict::Allow(g) => assert_eq!(g.valid_for, Some(Duration::from_secs(600))),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        c.verdict(1_000),
        Verdict::Deny(DenyReason::BadUserNameOrPassword)
    );
    assert_eq!(Cached::Ignore.verdict(0), Verdict::Pass);
}

// ---- configuration ----

fn parse_config(text: &str) -> anyhow::Result<HttpAuthConfig> {
    let c: HttpAuthConfig = toml::from_str(text)?;
    c.validate()?;
    Ok(c)
}

#[test]
fn the_config_has_defaults_and_names_its_keys_in_errors() {
    let c = parse_config(r#"url = "http://127.0.0.1:8080/auth""#).unwrap();
    assert_eq!(
        (c.timeout_ms, c.max_connections, c.cache_ttl_secs),
        (5_000, 32, 60)
    );
    assert_eq!((c.cache_max_entries, c.deny_cache_ttl_secs), (100_000, 10));
    assert_eq!(
        (c.method, c.body, c.on_error),
        (HttpMethod::Post, BodyFormat::Json, OnError::Deny)
    );
    let full = parse_config(
        r#"
        acl_url = "https://auth.example/acl"
        method = "get"
        body = "form"
        headers = { "X-Api-Key" = "k" }
        on_error = "pass"
        cache_ttl_secs = 0
        "#,
    )
    .unwrap();
    assert_eq!(full.on_error, OnError::Pass);
    let cases = [
        ("", "auth.http.url: required"),
        (r#"url = "ftp://x/""#, "auth.http.url: must be an http"),
        (
            "url = \"http://x/\"\nacl_url = \"nope\"",
            "auth.http.acl_url: invalid URL",
        ),
        (
            "url = \"http://x/\"\ntimeout_ms = 0",
            "auth.http.timeout_ms: must be at least 10",
        ),
        (
            "url = \"http://x/\"\nmax_connections = 0",
            "auth.http.max_connections: must be at least 1",
        ),
        (
            "url = \"http://x/\"\ncache_max_entries = 100000000",
            "auth.http.cache_max_entries: must be at most",
        ),
        (
            "url = \"http://x/\"\ndeny_cache_ttl_secs = 100000",
            "auth.http.deny_cache_ttl_secs: must be at most",
        ),
        (
            "url = \"http://x/\"\nheaders = { \"Content-Type\" = \"x\" }",
            "auth.http.headers: \"Content-Type\" is set by the broker",
        ),
        ("url = \"http://x/\"\nurl_acl = \"x\"", "unknown field"),
        (
            "url = \"http://x/\"\non_error = \"allow\"",
            "unknown variant",
        ),
    ];
    for (text, want) in cases {
        let e = format!("{:#}", parse_config(text).unwrap_err());
        assert!(e.contains(want), "{text:?}: {e}");
    }
    let e = HttpAuthConfig {
        url: None,
        ..HttpAuthConfig::default()
    }
    .validate_at("auth.http[2]")
    .unwrap_err();
    assert!(e.to_string().starts_with("auth.http[2].url"), "{e}");
}

#[test]
fn header_values_are_kept_out_of_debug_output_and_serialization() {
    let c = parse_config("url = \"http://x/\"\nheaders = { Authorization = \"Bearer s3cret\" }")
        .unwrap();
    let debug = format!("{c:?}");
    assert!(
        debug.contains("Authorization") && !debug.contains("s3cret"),
        "{debug}"
    );
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["headers"]["Authorization"], "<redacted>");
}

#[test]
fn a_missing_or_empty_ca_file_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("ca.pem");
    std::fs::write(&empty, "").unwrap();
    for path in [dir.path().join("absent.pem"), empty] {
        let c = HttpAuthConfig {
            url: Some("https://x/".into()),
            ca_file: Some(path),
            ..HttpAuthConfig::default()
        };
        let e = format!("{:#}", HttpBackend::build(&c).unwrap_err());
        assert!(e.starts_with("auth.http.ca_file: "), "{e}");
    }
}

// ---- against a service ----

/// Answers by username: alice allowed (with rules), bob 401, carol ignored, dave refused
/// with mosquitto-go-auth's body, anyone else 500.
fn by_user(seen: &Seen) -> crate::authn::remote::test_server::Reply {
    match seen.json()["username"].as_str() {
        Some("alice") => reply(200, r#"{"result": "allow", "acl": {"pub": ["a/#"]}}"#),
        Some("bob") => reply(401, ""),
        Some("carol") => reply(200, r#"{"result": "ignore"}"#),
        Some("dave") => reply(200, r#"{"ok": false, "error": "no such user"}"#),
        _ => reply(500, "oops"),
    }
}

#[tokio::test]
async fn the_service_decides_and_its_answers_are_cached() {
    let server = TestServer::start(by_user).await;
    let b = HttpBackend::build(&config(&server)).unwrap();
    assert!(b.authenticates() && b.authorizes());

    let alice = info(Some("alice"), Some(b"pw"));
    let first = AuthBackend::authenticate(&*b, &alice);
    assert!(!is_now(&first), "nothing cached yet");
    let Verdict::Allow(g) = first.resolve().await else {
        panic!("alice is allowed");
    };
    assert_eq!(g.username.as_deref(), Some("alice"));
    assert!(
        g.acl
            .unwrap()
            .allows(&client(Some("alice")), Action::Publish, "a/b")
    );
    let sent = &server.seen()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/auth")
    );
    assert_eq!(
        sent.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(sent.json()["password"], "pw");
    assert_eq!(sent.json()["ip"], "192.0.2.7");

    let again = AuthBackend::authenticate(&*b, &alice);
    assert!(is_now(&again), "answered from the cache");
    assert!(matches!(again.resolve().await, Verdict::Allow(_)));
    assert_eq!(server.count(), 1);
    // Another password is another question.
    ask(&b, &info(Some("alice"), Some(b"other"))).await;
    assert_eq!(server.count(), 2);

    let bad = Verdict::Deny(DenyReason::BadUserNameOrPassword);
    assert_eq!(ask(&b, &info(Some("bob"), Some(b"pw"))).await, bad);
    assert_eq!(
        ask(&b, &info(Some("carol"), Some(b"pw"))).await,
        Verdict::Pass
    );
    assert_eq!(ask(&b, &info(Some("dave"), Some(b"pw"))).await, bad);
    // Refusals and "ignore" are cached too (deny_cache_ttl_secs).
    assert!(is_now(&AuthBackend::authenticate(
        &*b,
        &info(Some("bob"), Some(b"pw"))
    )));

    let s = b.stats().snapshot();
    assert_eq!((s.requests, s.allowed, s.denied, s.ignored), (5, 2, 2, 1));
    assert_eq!((s.cache_hits, s.cache_misses), (2, 5));
    assert_eq!((s.in_flight, s.latency_count), (0, 5));
}

#[tokio::test]
async fn without_caching_every_question_goes_to_the_service() {
    let server = TestServer::start(by_user).await;
    let b = HttpBackend::build(&HttpAuthConfig {
        cache_ttl_secs: 0,
        deny_cache_ttl_secs: 0,
        ..config(&server)
    })
    .unwrap();
    for _ in 0..3 {
        let a = AuthBackend::authenticate(&*b, &info(Some("alice"), Some(b"pw")));
        assert!(!is_now(&a));
        assert!(matches!(a.resolve().await, Verdict::Allow(_)));
    }
    assert_eq!(server.count(), 3);
    assert_eq!(b.stats().snapshot().cache_misses, 0, "no cache, no misses");
}

#[tokio::test]
async fn an_expiry_limits_the_grant_and_the_cache() {
    let soon = unix_now() + 2;
    let server = TestServer::start(move |_| {
        reply(
            200,
            format!(r#"{{"result": "allow", "username": "svc", "expire_at": {soon}}}"#),
        )
    })
    .await;
    let b = HttpBackend::build(&config(&server)).unwrap();
    let i = info(Some("u"), Some(b"pw"));
    let Verdict::Allow(g) = ask(&b, &i).await else {
        panic!("allowed");
    };
    assert_eq!(
        g.username.as_deref(),
        Some("svc"),
        "the service renamed the client"
    );
    assert!(g.valid_for.unwrap() <= Duration::from_secs(2));
    let key = auth_key(&i);
    assert!(
        b.inner
            .auth_cache
            .get(&key, Instant::now() + Duration::from_secs(3))
            .is_none(),
        "cached no longer than the credentials are valid"
    );
}

async fn failing(script: crate::authn::remote::test_server::Reply) -> (TestServer, String) {
    let server = TestServer::start(move |_| script.clone()).await;
    let url = server.url("/auth");
    (server, url)
}

#[tokio::test]
async fn failures_fail_closed_or_pass_and_are_not_cached() {
    let big = "x".repeat(70 * 1024);
    let cases = [
        ("timeout", reply(200, "").after(Duration::from_secs(3))),
        ("status", reply(500, "")),
        ("status", reply(503, r#"{"result": "allow"}"#)),
        ("body", reply(200, big)),
        ("body", reply(200, "<html>OK</html>")),
    ];
    for (kind, script) in cases {
        let (server, url) = failing(script.clone()).await;
        for on_error in [OnError::Deny, OnError::Pass] {
            let b = HttpBackend::build(&HttpAuthConfig {
                url: Some(url.clone()),
                timeout_ms: 300,
                on_error,
                ..HttpAuthConfig::default()
            })
            .unwrap();
            let i = info(Some("u"), Some(b"pw"));
            let want = match on_error {
                OnError::Deny => Verdict::Deny(DenyReason::NotAuthorized),
                OnError::Pass => Verdict::Pass,
            };
            assert_eq!(ask(&b, &i).await, want, "{kind} {script:?}");
            let again = AuthBackend::authenticate(&*b, &i);
            assert!(!is_now(&again), "a failure is not cached");
            assert_eq!(again.resolve().await, want);
            let s = b.stats().snapshot();
            let errors = match kind {
                "timeout" => s.errors_timeout,
                "status" => s.errors_status,
                _ => s.errors_body,
            };
            assert_eq!(errors, 2, "{kind}: {s:?}");
            assert_eq!(s.allowed + s.denied + s.ignored, 0);
        }
        drop(server);
    }
}

#[tokio::test]
async fn a_service_that_is_not_listening_fails_closed_or_passes() {
    for (on_error, want) in [
        (OnError::Deny, Verdict::Deny(DenyReason::NotAuthorized)),
        (OnError::Pass, Verdict::Pass),
    ] {
        let b = HttpBackend::build(&HttpAuthConfig {
            url: Some(dead_url()),
            acl_url: Some(dead_url()),
            on_error,
            ..HttpAuthConfig::default()
        })
        .unwrap();
        assert_eq!(ask(&b, &info(Some("u"), Some(b"pw"))).await, want);
        let acl = b
            .check(&client(Some("u")), Action::Publish, "t")
            .resolve()
            .await;
        assert_eq!(acl, (on_error == OnError::Deny).then_some(false));
        let s = b.stats().snapshot();
        assert_eq!(s.errors_connect, 2, "{s:?}");
    }
}

#[tokio::test]
async fn publish_and_subscribe_are_asked_and_reads_are_not() {
    let server = TestServer::start(|seen| {
        let j = seen.json();
        match (j["action"].as_str(), j["topic"].as_str(), j["acc"].as_u64()) {
            (Some("publish"), Some("ok/1"), Some(2)) => reply(200, ""),
            (Some("subscribe"), Some("ok/#"), Some(4)) => reply(200, r#"{"ok": true}"#),
            (_, Some("theirs"), _) => reply(200, r#"{"result": "ignore"}"#),
            (_, Some("broken"), _) => reply(502, ""),
            _ => reply(403, ""),
        }
    })
    .await;
    let b = HttpBackend::build(&config(&server)).unwrap();
    let c = client(Some("alice"));
    let check = |action, topic: &'static str| {
        let b = Arc::clone(&b);
        async move {
            b.check(&client(Some("alice")), action, topic)
                .resolve()
                .await
        }
    };
    assert_eq!(check(Action::Publish, "ok/1").await, Some(true));
    assert_eq!(check(Action::Subscribe, "ok/#").await, Some(true));
    assert_eq!(check(Action::Publish, "no").await, Some(false));
    assert_eq!(check(Action::Subscribe, "theirs").await, None);
    assert_eq!(
        check(Action::Publish, "broken").await,
        Some(false),
        "fails closed"
    );
    assert_eq!(server.count(), 5);
    assert!(server.seen().iter().all(|s| s.path == "/acl"));
    // Cached: answered now, without a request.
    let cached = b.check(&c, Action::Publish, "ok/1");
    assert!(matches!(cached, Answer::Now(Some(true))));
    assert!(matches!(
        b.check(&c, Action::Publish, "no"),
        Answer::Now(Some(false))
    ));
    // Reads are never asked: the subscribe check authorized them.
    assert!(matches!(
        b.check(&c, Action::Read, "ok/1"),
        Answer::Now(None)
    ));
    assert_eq!(server.count(), 5);
}

#[tokio::test]
async fn a_backend_without_one_of_the_urls_passes_that_question() {
    let server = TestServer::start(by_user).await;
    let auth_only = HttpBackend::build(&HttpAuthConfig {
        acl_url: None,
        ..config(&server)
    })
    .unwrap();
    assert!(!auth_only.authorizes());
    assert!(matches!(
        auth_only.check(&client(None), Action::Publish, "t"),
        Answer::Now(None)
    ));
    let acl_only = HttpBackend::build(&HttpAuthConfig {
        url: None,
        ..config(&server)
    })
    .unwrap();
    assert!(matches!(
        AuthBackend::authenticate(&*acl_only, &info(Some("alice"), None)),
        Answer::Now(Verdict::Pass)
    ));
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn forms_queries_and_extra_headers_reach_the_service() {
    let server = TestServer::start(|_| reply(200, "")).await;
    let mut headers = BTreeMap::new();
    headers.insert("X-Api-Key".to_owned(), "k1".to_owned());
    let form = HttpBackend::build(&HttpAuthConfig {
        body: BodyFormat::Form,
        headers: headers.clone(),
        ..config(&server)
    })
    .unwrap();
    ask(&form, &info(Some("al ice"), Some(b"p&w=1"))).await;
    let get = HttpBackend::build(&HttpAuthConfig {
        method: HttpMethod::Get,
        ..config(&server)
    })
    .unwrap();
    ask(&get, &info(Some("bob"), Some(b"pw"))).await;
    let seen = server.seen();
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(seen[0].header("x-api-key").as_deref(), Some("k1"));
    assert_eq!(seen[0].field("username").as_deref(), Some("al ice"));
    assert_eq!(seen[0].field("password").as_deref(), Some("p&w=1"));
    assert_eq!(seen[0].field("port").as_deref(), Some("50123"));
    assert_eq!(seen[1].method, "GET");
    assert!(seen[1].body.is_empty());
    assert_eq!(seen[1].field("username").as_deref(), Some("bob"));
    assert_eq!(seen[1].field("clientid").as_deref(), Some("dev-1"));
}

#[tokio::test]
async fn requests_at_once_are_bounded_and_waiting_counts_against_the_timeout() {
    let server = TestServer::start(|_| reply(200, "").after(Duration::from_millis(400))).await;
    let b = HttpBackend::build(&HttpAuthConfig {
        max_connections: 1,
        timeout_ms: 5_000,
        ..config(&server)
    })
    .unwrap();
    let asks: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|u| {
            tokio::spawn(AuthBackend::authenticate(&*b, &info(Some(u), Some(b"pw"))).resolve())
        })
        .collect();
    let mut verdicts = Vec::new();
    for a in asks {
        verdicts.push(a.await.unwrap());
    }
    assert!(verdicts.iter().all(|v| matches!(v, Verdict::Allow(_))));
    assert_eq!(server.most_at_once(), 1, "one connection slot");

    // With a deadline shorter than the queue, the last one gives up waiting for a slot.
    let b = HttpBackend::build(&HttpAuthConfig {
        max_connections: 1,
        timeout_ms: 1_000,
        ..config(&server)
    })
    .unwrap();
    let asks: Vec<_> = ["d", "e", "f"]
        .into_iter()
        .map(|u| {
            tokio::spawn(AuthBackend::authenticate(&*b, &info(Some(u), Some(b"pw"))).resolve())
        })
        .collect();
    let mut verdicts = Vec::new();
    for a in asks {
        verdicts.push(a.await.unwrap());
    }
    let refused = verdicts
        .iter()
        .filter(|v| **v == Verdict::Deny(DenyReason::NotAuthorized))
        .count();
    assert_eq!(refused, 1, "{verdicts:?}");
    let s = b.stats();
    assert_eq!(s.errors_timeout.load(Ordering::Relaxed), 1);
    assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn https_to_a_private_ca_needs_its_ca_file() {
    let (server, ca_pem) = TestServer::start_tls(by_user).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let trusting = HttpBackend::build(&HttpAuthConfig {
        ca_file: Some(ca_file),
        ..config(&server)
    })
    .unwrap();
    let alice = info(Some("alice"), Some(b"pw"));
    assert!(matches!(ask(&trusting, &alice).await, Verdict::Allow(_)));
    // The system's roots do not know the private CA: the handshake fails, closed.
    let system = HttpBackend::build(&config(&server)).unwrap();
    assert_eq!(
        ask(&system, &alice).await,
        Verdict::Deny(DenyReason::NotAuthorized)
    );
    assert_eq!(system.stats().snapshot().errors_connect, 1);
    assert_eq!(server.count(), 1, "only the trusting client got through");
}
