//! Passwords and anonymous clients.

use super::*;

async fn password_server(dir: &TempDir) -> TestServer {
    let pw = dir.path("passwd");
    password_file(&pw, &[("alice", "wonderland"), ("bob", "builder")]);
    let mut l = listener("tcp");
    l.password_file = Some(pw);
    l.allow_anonymous = Some(false);
    start(vec![l]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_v5_0x86_v3_rc4() {
    let dir = TempDir::new("wrong-pw");
    let s = password_server(&dir).await;
    expect_refused(
        s.addr,
        login(V5, "c1", Some("alice"), Some("nope")),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    // 3.1.1 CONNACK return code 4, read back by the codec as 0x86.
    let (mut c, ack) = connack(s.addr, login(V311, "c1", Some("alice"), Some("nope"))).await;
    assert_eq!(ack.reason.to_v3_connack(), 4);
    c.expect_closed_silently().await;
    // A username without a password is refused the same way.
    expect_refused(
        s.addr,
        login(V5, "c1", Some("alice"), None),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    // The right password works on both levels.
    ok_client(s.addr, login(V5, "c1", Some("alice"), Some("wonderland"))).await;
    ok_client(s.addr, login(V311, "c2", Some("bob"), Some("builder"))).await;
    assert!(s.broker().metrics.auth_refused.get() >= 3);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_refused_like_a_wrong_password() {
    let dir = TempDir::new("unknown-user");
    let s = password_server(&dir).await;
    expect_refused(
        s.addr,
        login(V5, "c1", Some("mallory"), Some("wonderland")),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    let (mut c, ack) = connack(s.addr, login(V311, "c1", Some("mallory"), Some("x"))).await;
    assert_eq!(ack.reason.to_v3_connack(), 4);
    c.expect_closed_silently().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_refused_unless_allowed() {
    let dir = TempDir::new("anon");
    let s = password_server(&dir).await;
    // v5: 0x87 Not authorized; 3.1.1: return code 5.
    expect_refused(
        s.addr,
        login(V5, "anon", None, None),
        ReasonCode::NotAuthorized,
    )
    .await;
    let (mut c, ack) = connack(s.addr, login(V311, "anon", None, None)).await;
    assert_eq!(ack.reason.to_v3_connack(), 5);
    c.expect_closed_silently().await;
    s.shutdown().await;

    // The default for a listener on a non-loopback address is to refuse anonymous clients
    // (the config decides; this test may only bind loopback, so the rule itself is checked
    // on the config, and the refusal on a listener that says so explicitly).
    let text = "[[listener]]\nbind = \"192.0.2.1:1883\"\n";
    assert!(!Config::parse(text).unwrap().listeners[0].allows_anonymous());
    let text = "[[listener]]\nbind = \"192.0.2.1:1883\"\nallow_anonymous = true\n";
    assert!(Config::parse(text).unwrap().listeners[0].allows_anonymous());
    assert!(Config::default().listeners[0].allows_anonymous());

    let mut l = listener("tcp");
    l.allow_anonymous = Some(false);
    let s = start(vec![l]).await;
    expect_refused(
        s.addr,
        login(V5, "anon", None, None),
        ReasonCode::NotAuthorized,
    )
    .await;
    // With no password file either, a username cannot be checked: refused too.
    expect_refused(
        s.addr,
        login(V5, "u", Some("u"), Some("p")),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    s.shutdown().await;

    // Allowed anonymous clients and password users side by side.
    let pw = dir.path("passwd2");
    password_file(&pw, &[("alice", "wonderland")]);
    let mut l = listener("tcp");
    l.password_file = Some(pw);
    l.allow_anonymous = Some(true);
    let s = start(vec![l]).await;
    ok_client(s.addr, login(V5, "anon", None, None)).await;
    ok_client(s.addr, login(V5, "a", Some("alice"), Some("wonderland"))).await;
    expect_refused(
        s.addr,
        login(V5, "a", Some("alice"), Some("x")),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_password_file_fails_closed_naming_the_line() {
    let dir = TempDir::new("broken-pw");
    for (text, needle) in [
        ("", "no users"),
        ("alice:$7$101$bad\n", "line 1"),
        ("# ok\nalice\n", "line 2"),
    ] {
        let pw = dir.write("passwd", text);
        let mut l = listener("tcp");
        l.password_file = Some(pw);
        let config = config_with(vec![l]);
        let e = starling::server::Server::start(&config).await.unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(needle) && e.contains("passwd"), "{text:?}: {e}");
    }
    let mut l = listener("tcp");
    l.password_file = Some(dir.path("missing"));
    let config = config_with(vec![l]);
    let e = format!(
        "{:#}",
        starling::server::Server::start(&config).await.unwrap_err()
    );
    assert!(e.contains("missing"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_reload_keeps_old_users_on_error() {
    let dir = TempDir::new("pw-reload");
    let pw = dir.path("passwd");
    password_file(&pw, &[("alice", "1")]);
    let mut l = listener("tcp");
    l.password_file = Some(pw.clone());
    l.allow_anonymous = Some(false);
    let s = start(vec![l]).await;
    let kept = ok_client(s.addr, login(V5, "a", Some("alice"), Some("1"))).await;

    password_file(&pw, &[("alice", "2"), ("carol", "3")]);
    assert!(s.reload().is_empty());
    ok_client(s.addr, login(V5, "c", Some("carol"), Some("3"))).await;
    expect_refused(
        s.addr,
        login(V5, "a2", Some("alice"), Some("1")),
        ReasonCode::BadUserNameOrPassword,
    )
    .await;

    std::fs::write(&pw, "carol:garbage\n").unwrap();
    let errors = s.reload();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("line 1"), "{}", errors[0]);
    ok_client(s.addr, login(V5, "c2", Some("carol"), Some("3"))).await;
    drop(kept);
    s.shutdown().await;
}
