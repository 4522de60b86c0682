//! `JWT` as an enhanced authentication method: a token (made here by the `jsonwebtoken`
//! crate) in CONNECT's Authentication Data, and a fresh one in AUTH 0x19 before the first
//! expires, which keeps the connection open past the first token's `exp`; without it the
//! connection ends with DISCONNECT 0xA0; a fresh token for someone else ends it with 0x87.

use super::*;

const SECRET: &[u8] = b"a secret of at least thirty-two bytes, as HS256 wants";
const JWT: &str = "JWT";

fn token(sub: &str, ttl_secs: u64) -> Vec<u8> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + ttl_secs;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
    .into_bytes()
}

async fn jwt_server() -> TestServer {
    let mut l = ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    l.allow_anonymous = Some(false);
    l.auth = Some(vec!["jwt".into()]);
    l.auth_methods = vec![JWT.into()];
    let secret = std::str::from_utf8(SECRET).unwrap();
    let jwt = toml::from_str(&format!(
        "algorithms = [\"HS256\"]\nsecret = \"{secret}\"\nclock_skew_secs = 0\n"
    ))
    .unwrap();
    let mut config = Config {
        listeners: vec![l],
        ..Config::default()
    };
    config.auth.jwt = Some(jwt);
    config.limits.sys_interval_secs = 0;
    config.http.enabled = false;
    common::start_server_with(&config).await
}

async fn expect_jwt_auth(c: &mut RawClient, reason: ReasonCode) {
    match c.expect_packet(WAIT).await {
        Packet::Auth(a) => {
            assert_eq!(a.reason, reason, "{a:?}");
            assert_eq!(a.properties.authentication_method.as_deref(), Some(JWT));
        }
        other => panic!("expected AUTH {reason:?}, got {other:?}"),
    }
}

async fn jwt_login(server: &TestServer, id: &str, sub: &str, ttl_secs: u64) -> RawClient {
    let mut c = RawClient::open(server.addr).await;
    c.version = V5;
    let connect = method_connect(id, JWT, Some(token(sub, ttl_secs)));
    c.send(&Packet::Connect(Box::new(connect))).await;
    match c.expect_packet(WAIT).await {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
            assert_eq!(ack.properties.authentication_method.as_deref(), Some(JWT));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_keeps_the_connection_past_the_first_tokens_exp() {
    let server = jwt_server().await;
    let mut c = jwt_login(&server, "jwt-1", "dev", 2).await;
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some(JWT),
        Some(token("dev", 60)),
    ))
    .await;
    expect_jwt_auth(&mut c, ReasonCode::Success).await;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (reason, _) = publish(&mut c, "t", "still here").await;
    assert_eq!(reason, ReasonCode::NoMatchingSubscribers);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fresh_token_the_connection_ends_with_0xa0() {
    let server = jwt_server().await;
    let mut c = jwt_login(&server, "jwt-2", "dev", 1).await;
    match c.expect_packet(Duration::from_secs(5)).await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::MaximumConnectTime),
        other => panic!("expected DISCONNECT 0xA0, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_someone_else_or_a_bad_one_ends_the_connection_with_0x87() {
    let server = jwt_server().await;
    for (id, fresh) in [
        ("jwt-3", token("other", 60)),
        ("jwt-4", b"not.a.token".to_vec()),
    ] {
        let mut c = jwt_login(&server, id, "dev", 60).await;
        c.send(&auth(ReasonCode::ReAuthenticate, Some(JWT), Some(fresh)))
            .await;
        match c.expect_packet(WAIT).await {
            Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::NotAuthorized),
            other => panic!("expected DISCONNECT 0x87, got {other:?}"),
        }
    }
    server.shutdown().await;
}
