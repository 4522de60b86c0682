//! Tests of token introspection against a local RFC 7662 endpoint: the request, every check
//! of the answer, the cache and its bound by `exp`, the configuration, and failures.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::authn::remote::test_server::{Seen, TestServer, dead_url, reply};

fn info<'a>(client_id: &'a str, user: Option<&'a str>, pw: Option<&'a [u8]>) -> ConnectInfo<'a> {
    ConnectInfo {
        client_id,
        username: user,
        password: pw,
        peer: None,
        listener: "test",
        certificate_identity: None,
        unix_uid: None,
    }
}

async fn ask(b: &IntrospectionBackend, i: &ConnectInfo<'_>) -> Verdict {
    b.authenticate(i).resolve().await
}

const BASIC: &str = "Basic YnJva2VyOnMlM0EzY3JldA=="; // "broker:s%3A3cret"

/// An endpoint that checks the broker's credentials and knows a few tokens.
fn endpoint(seen: &Seen) -> crate::authn::remote::test_server::Reply {
    if seen.header("authorization").as_deref() != Some(BASIC) {
        return reply(401, r#"{"error": "invalid_client"}"#);
    }
    if seen.field("token_type_hint").as_deref() != Some("access_token") {
        return reply(400, "");
    }
    let now = unix_now();
    let active = |extra: serde_json::Value| {
        let mut v = json!({
            "active": true, "username": "alice", "sub": "u-1", "iss": "https://idp",
            "aud": ["broker", "other"], "scope": "openid mqtt:connect", "exp": now + 3_600,
            "azp": "dev-1",
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in extra {
                if x.is_null() {
                    v.remove(k);
                } else {
                    v.insert(k.clone(), x.clone());
                }
            }
        }
        reply(200, v.to_string())
    };
    match seen.field("token").as_deref() {
        Some("good") => active(json!({})),
        Some("soon") => active(json!({"exp": now + 2})),
        Some("expired") => active(json!({"exp": now - 10})),
        Some("early") => active(json!({"nbf": now + 600})),
        Some("wrong-iss") => active(json!({"iss": "https://evil"})),
        Some("wrong-aud") => active(json!({"aud": "other"})),
        Some("aud-string") => active(json!({"aud": "broker"})),
        Some("no-scope") => active(json!({"scope": "openid"})),
        Some("sub-only") => active(json!({"username": null})),
        Some("nobody") => active(json!({"username": null, "sub": null})),
        Some("other-device") => active(json!({"azp": "dev-2"})),
        Some("no-exp") => active(json!({"exp": null})),
        Some("weird") => reply(200, r#"{"active": "yes"}"#),
        Some("down") => reply(503, ""),
        _ => reply(200, r#"{"active": false}"#),
    }
}

fn config(server: &TestServer) -> IntrospectionConfig {
    IntrospectionConfig {
        url: server.url("/introspect"),
        client_id: Some("broker".into()),
        client_secret: Some("s:3cret".into()),
        issuer: Some("https://idp".into()),
        audience: Some("broker".into()),
        required_scope: Some("mqtt:connect".into()),
        timeout_ms: 1_000,
        ..IntrospectionConfig::default()
    }
}

fn allowed(v: &Verdict) -> (Option<&str>, Option<Duration>) {
    match v {
        Verdict::Allow(g) => (g.username.as_deref(), g.valid_for),
        v => panic!("not allowed: {v:?}"),
    }
}

#[tokio::test]
async fn an_active_token_logs_in_as_its_user_until_it_expires() {
    let server = TestServer::start(endpoint).await;
    let b = IntrospectionBackend::build(&config(&server)).unwrap();
    let v = ask(&b, &info("dev-1", Some("ignored"), Some(b"good"))).await;
    let (user, valid_for) = allowed(&v);
    assert_eq!(user, Some("alice"));
    let left = valid_for.unwrap();
    assert!(left > Duration::from_secs(3_590) && left <= Duration::from_secs(3_600));
    let sent = &server.seen()[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(
        sent.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(sent.field("token").as_deref(), Some("good"));

    // Cached: answered now, from any client presenting the same token.
    let again = b.authenticate(&info("dev-9", None, Some(b"good")));
    assert!(matches!(again, Answer::Now(Verdict::Allow(_))));
    assert_eq!(server.count(), 1);
    let s = b.stats().snapshot();
    assert_eq!(
        (s.requests, s.allowed, s.cache_hits, s.cache_misses),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn every_check_of_the_answer_applies() {
    let server = TestServer::start(endpoint).await;
    let b = IntrospectionBackend::build(&IntrospectionConfig {
        client_id_claim: Some("azp".into()),
        ..config(&server)
    })
    .unwrap();
    let bad = Verdict::Deny(DenyReason::BadUserNameOrPassword);
    let unauthorized = Verdict::Deny(DenyReason::NotAuthorized);
    let cases: &[(&str, Verdict)] = &[
        ("inactive", bad.clone()),
        ("expired", bad.clone()),
        ("early", bad.clone()),
        ("wrong-iss", unauthorized.clone()),
        ("wrong-aud", unauthorized.clone()),
        ("no-scope", unauthorized.clone()),
        ("nobody", unauthorized.clone()),
        ("other-device", unauthorized.clone()),
    ];
    for (token, want) in cases {
        let i = info("dev-1", None, Some(token.as_bytes()));
        assert_eq!(&ask(&b, &i).await, want, "{token}");
    }
    let i = info("dev-1", None, Some(b"aud-string"));
    assert_eq!(allowed(&ask(&b, &i).await).0, Some("alice"));
    let i = info("dev-1", None, Some(b"sub-only"));
    assert_eq!(
        allowed(&ask(&b, &i).await).0,
        Some("u-1"),
        "sub when no username"
    );
    let i = info("dev-1", None, Some(b"no-exp"));
    assert_eq!(allowed(&ask(&b, &i).await).1, None);
    // The client id is checked on every use of a cached answer.
    let i = info("dev-1", None, Some(b"good"));
    assert!(matches!(ask(&b, &i).await, Verdict::Allow(_)));
    let elsewhere = b.authenticate(&info("dev-2", None, Some(b"good")));
    assert!(matches!(
        elsewhere,
        Answer::Now(Verdict::Deny(DenyReason::NotAuthorized))
    ));
}

#[tokio::test]
async fn a_cached_answer_never_outlives_the_token() {
    let server = TestServer::start(endpoint).await;
    let b = IntrospectionBackend::build(&config(&server)).unwrap();
    let i = info("dev-1", None, Some(b"soon"));
    assert!(matches!(ask(&b, &i).await, Verdict::Allow(_)));
    let key = token_key("soon");
    let now = Instant::now();
    assert!(b.inner.cache.get(&key, now).is_some());
    assert!(
        b.inner
            .cache
            .get(&key, now + Duration::from_secs(3))
            .is_none(),
        "cached until exp, not cache_ttl_secs"
    );
}

#[tokio::test]
async fn clients_without_a_token_are_passed_on() {
    let server = TestServer::start(endpoint).await;
    let b = IntrospectionBackend::build(&config(&server)).unwrap();
    let not_tokens: [Option<&[u8]>; 4] = [None, Some(b""), Some(b"two words"), Some(&[0xff, 0xfe])];
    for pw in not_tokens {
        assert!(
            matches!(
                b.authenticate(&info("c", Some("u"), pw)),
                Answer::Now(Verdict::Pass)
            ),
            "{pw:?}"
        );
    }
    assert_eq!(server.count(), 0);
    // From the username instead.
    let by_name = IntrospectionBackend::build(&IntrospectionConfig {
        token_from: TokenFrom::Username,
        ..config(&server)
    })
    .unwrap();
    let v = ask(&by_name, &info("dev-1", Some("good"), Some(b"whatever"))).await;
    assert_eq!(allowed(&v).0, Some("alice"));
    assert!(matches!(
        by_name.authenticate(&info("c", None, Some(b"good"))),
        Answer::Now(Verdict::Pass)
    ));
}

#[tokio::test]
async fn failures_fail_closed_or_pass() {
    let server = TestServer::start(endpoint).await;
    for (on_error, want) in [
        (OnError::Deny, Verdict::Deny(DenyReason::NotAuthorized)),
        (OnError::Pass, Verdict::Pass),
    ] {
        let b = IntrospectionBackend::build(&IntrospectionConfig {
            on_error,
            ..config(&server)
        })
        .unwrap();
        for token in ["down", "weird"] {
            let i = info("dev-1", None, Some(token.as_bytes()));
            assert_eq!(ask(&b, &i).await, want, "{token}");
            let again = b.authenticate(&i);
            assert!(!matches!(again, Answer::Now(_)), "not cached");
            assert_eq!(again.resolve().await, want);
        }
        // Wrong broker credentials: the endpoint's 401 is a failure, not a refusal.
        let wrong = IntrospectionBackend::build(&IntrospectionConfig {
            client_secret: Some("nope".into()),
            on_error,
            ..config(&server)
        })
        .unwrap();
        assert_eq!(ask(&wrong, &info("dev-1", None, Some(b"good"))).await, want);
        let dead = IntrospectionBackend::build(&IntrospectionConfig {
            url: dead_url(),
            on_error,
            ..config(&server)
        })
        .unwrap();
        assert_eq!(ask(&dead, &info("dev-1", None, Some(b"good"))).await, want);
        let slow = TestServer::start(|_| {
            reply(200, r#"{"active": true, "sub": "x"}"#).after(Duration::from_secs(3))
        })
        .await;
        let timeout = IntrospectionBackend::build(&IntrospectionConfig {
            url: slow.url("/"),
            timeout_ms: 200,
            on_error,
            ..config(&server)
        })
        .unwrap();
        assert_eq!(
            ask(&timeout, &info("dev-1", None, Some(b"good"))).await,
            want
        );
        let s = b.stats().snapshot();
        assert_eq!((s.errors_status, s.errors_body), (2, 2), "{s:?}");
        assert_eq!(wrong.stats().snapshot().errors_status, 1);
        assert_eq!(dead.stats().snapshot().errors_connect, 1);
        assert_eq!(timeout.stats().snapshot().errors_timeout, 1);
    }
}

#[tokio::test]
async fn the_secret_may_come_from_a_file() {
    let server = TestServer::start(endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "s:3cret\n").unwrap();
    let b = IntrospectionBackend::build(&IntrospectionConfig {
        client_secret: None,
        client_secret_file: Some(path),
        ..config(&server)
    })
    .unwrap();
    assert!(matches!(
        ask(&b, &info("dev-1", None, Some(b"good"))).await,
        Verdict::Allow(_)
    ));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let e = IntrospectionBackend::build(&IntrospectionConfig {
        client_secret: None,
        client_secret_file: Some(empty),
        ..config(&server)
    })
    .unwrap_err();
    assert!(
        format!("{e:#}").starts_with("auth.introspection.client_secret_file: "),
        "{e:#}"
    );
}

fn parse_config(text: &str) -> anyhow::Result<IntrospectionConfig> {
    let c: IntrospectionConfig = toml::from_str(text)?;
    c.validate()?;
    Ok(c)
}

#[test]
fn the_config_has_defaults_and_names_its_keys_in_errors() {
    let c = parse_config(
        "url = \"https://idp/introspect\"\nclient_id = \"broker\"\nclient_secret = \"s\"",
    )
    .unwrap();
    assert_eq!(c.username_claim, "username");
    assert_eq!(c.token_from, TokenFrom::Password);
    assert_eq!(
        (c.timeout_ms, c.cache_ttl_secs, c.on_error),
        (5_000, 60, OnError::Deny)
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("\"s\""), "{debug}");
    let url = "url = \"https://idp/i\"\n";
    let cases = [
        ("client_id = \"b\"", "auth.introspection.url: required"),
        ("url = \"idp\"", "auth.introspection.url: invalid URL"),
        (
            "url = \"https://idp/i\"\nclient_id = \"b\"",
            "auth.introspection.client_secret: required",
        ),
        (
            "url = \"https://idp/i\"\nclient_secret = \"s\"",
            "auth.introspection.client_id: required",
        ),
        (
            "url = \"https://idp/i\"\nclient_id = \"b\"\nclient_secret = \"s\"\nclient_secret_file = \"/f\"",
            "set one, not both",
        ),
        (
            "url = \"https://idp/i\"\nrequired_scope = \" \"",
            "auth.introspection.required_scope",
        ),
        (
            "url = \"https://idp/i\"\nusername_claim = \"\"",
            "auth.introspection.username_claim",
        ),
        (
            "url = \"https://idp/i\"\naudience = \"\"",
            "auth.introspection.audience",
        ),
        (
            "url = \"https://idp/i\"\ntimeout_ms = 600000",
            "auth.introspection.timeout_ms: must be at most",
        ),
        (
            "url = \"https://idp/i\"\ntoken_from = \"header\"",
            "unknown variant",
        ),
        ("url = \"https://idp/i\"\nscope = \"x\"", "unknown field"),
    ];
    for (text, want) in cases {
        let e = format!("{:#}", parse_config(text).unwrap_err());
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // Without client credentials the endpoint is asked as it is (an internal one).
    assert!(parse_config(url).is_ok());
}
