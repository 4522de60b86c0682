//! Dynamic security over the admin API and `starling ctl dynsec`, with real MQTT clients on
//! a listener whose chains use it (`auth = ["dynamic"]`, `acl = ["dynamic"]`): a client
//! created over the API connects, loses its rights while connected (its subscription delivers
//! nothing more, its next publish gets PUBACK 0x87), is disconnected when deleted; errors
//! name the field; nothing returns a password or its hash; and what ctl creates survives a
//! restart of the broker. API keys: made over the API and ctl, given as the password, shown
//! once and never read back, refused when wrong (0x86), disconnecting their clients when
//! deleted or disabled.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, Packet, PubAckReason};
use rumqttc::v5::{ConnectionError, StateError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use starling::config::Config;
use starling::server::Server;

use super::{Auth, Http};
use crate::common::rumqtt::v5::Client;

/// A config with one MQTT listener whose chains are dynamic security alone, and the HTTP
/// listener, both on ephemeral loopback ports; the store in `data_dir`.
fn config(data_dir: &Path) -> Config {
    let text = format!(
        r#"
data_dir = {data_dir:?}

[[listener]]
bind = "127.0.0.1:0"
auth = ["dynamic"]
acl = ["dynamic"]

[http]
bind = "127.0.0.1:0"

[auth.dynamic]
"#,
        data_dir = data_dir.display().to_string()
    );
    Config::parse(&text).expect("the dynamic security config parses")
}

/// The HTTP test server ([`super::open_http`]) with [`config`] (in the data directory the
/// harness gives it).
async fn open() -> Http {
    super::open_http(|c| {
        let keys = c.http.api_keys_file.take();
        *c = config(&c.data_dir);
        c.http.api_keys_file = keys;
    })
    .await
}

async fn api(h: &Http, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    h.call_json(method, &format!("/api/v1/dynsec{path}"), Auth::None, body)
        .await
}

/// Connects `username` as client `id` with MQTT 5.
async fn connect(h: &Http, id: &str, username: &str, password: &str) -> Client {
    let (c, ack) = Client::connect(h.server.addr, id, |o| {
        o.set_credentials(username, password);
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    c
}

/// Publishes at QoS 1 and returns the PUBACK's reason, with "no matching subscribers"
/// (0x10, a success) as success.
async fn publish(c: &mut Client, topic: &str) -> PubAckReason {
    c.client
        .publish(topic, QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let reason = c
        .expect("PUBACK", |p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    match reason {
        PubAckReason::NoMatchingSubscribers => PubAckReason::Success,
        other => other,
    }
}

#[tokio::test]
async fn a_client_managed_over_the_api_loses_a_right_at_once_and_is_disconnected_when_deleted() {
    let h = open().await;

    let role = json!({
        "name": "sensor",
        "rules": [
            { "action": "publish", "allow": true, "filter": "sensors/%c/#" },
            { "action": "subscribe", "allow": true, "filter": "sensors/#" },
            { "action": "receive", "allow": true, "filter": "sensors/#" },
        ],
    });
    let (s, v) = api(&h, Method::POST, "/roles", Some(role)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let client = json!({
        "username": "dev",
        "password": "s3cret-pw",
        "client_id": "dev-1",
        "roles": [{ "name": "sensor" }],
    });
    let (s, v) = api(&h, Method::POST, "/clients", Some(client.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["has_password"], true);

    // Errors: a duplicate, a field naming what does not exist, an unknown name.
    let (s, v) = api(&h, Method::POST, "/clients", Some(client)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let bad = json!({ "username": "x", "roles": [{ "name": "sensor" }, { "name": "nope" }] });
    let (s, v) = api(&h, Method::POST, "/clients", Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["message"], "roles[1].name: no role \"nope\"");
    let bad = json!({ "username": "x", "roles": [{ "name": "sensor", "priority": "high" }] });
    let (s, v) = api(&h, Method::POST, "/clients", Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("roles[0].priority: "),
        "{v}"
    );
    let (s, _) = api(&h, Method::GET, "/clients/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Nothing shows the password or its hash.
    let all = h.client.get(h.url("/api/v1/dynsec")).send().await.unwrap();
    let text = all.text().await.unwrap();
    assert!(text.contains("\"dev\""), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("argon2") && !text.contains("password_hash"),
        "{text}"
    );

    // The client connects and publishes where its role lets it.
    let mut c = connect(&h, "dev-1", "dev", "s3cret-pw").await;
    assert_eq!(
        publish(&mut c, "sensors/dev-1/t").await,
        PubAckReason::Success
    );
    assert_eq!(
        publish(&mut c, "sensors/dev-2/t").await,
        PubAckReason::NotAuthorized,
        "%c is its own client id only"
    );

    // Deliveries through an existing subscription are checked again once its receive right
    // goes. The publisher is anonymous: the anonymous group's role lets it publish.
    let feeder = json!({
        "name": "feeder",
        "rules": [{ "action": "publish", "allow": true, "filter": "sensors/#" }],
    });
    let (s, v) = api(&h, Method::POST, "/roles", Some(feeder)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let anon = json!({ "name": "anon", "roles": [{ "name": "feeder" }] });
    let (s, v) = api(&h, Method::POST, "/groups", Some(anon)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api(
        &h,
        Method::PUT,
        "/anonymous-group",
        Some(json!({ "group": "anon" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    c.sub("sensors/#", QoS::AtMostOnce).await;
    let mut feeder = Client::plain(h.server.addr, "feeder").await;
    assert_eq!(
        publish(&mut feeder, "sensors/x").await,
        PubAckReason::Success
    );
    assert_eq!(c.publish().await.topic, "sensors/x");
    let q = "?action=receive&filter=sensors%2F%23";
    let (s, v) = api(&h, Method::DELETE, &format!("/roles/sensor/rules{q}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        publish(&mut feeder, "sensors/x").await,
        PubAckReason::Success
    );
    c.no_publish(Duration::from_millis(500)).await;

    // Its publish right goes while it stays connected: the next publish is refused.
    let q = "?action=publish&filter=sensors%2F%25c%2F%23";
    let (s, v) = api(&h, Method::DELETE, &format!("/roles/sensor/rules{q}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        publish(&mut c, "sensors/dev-1/t").await,
        PubAckReason::NotAuthorized
    );

    // Deleting the client disconnects it (MQTT 5: DISCONNECT 0x98).
    let (s, v) = api(&h, Method::DELETE, "/clients/dev", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    match c.next().await {
        Ok(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::AdministrativeAction)
        }
        Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
            assert_eq!(reason_code, DisconnectReasonCode::AdministrativeAction)
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    h.server.shutdown().await;
}

/// The refusals of a wrong password (0x86) and of another client id (0x87).
#[tokio::test]
async fn connect_refusals_say_why() {
    let h = open().await;
    let client = json!({ "username": "dev", "password": "pw", "client_id": "dev-1" });
    let (s, v) = api(&h, Method::POST, "/clients", Some(client)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for (id, pw, code) in [
        ("dev-1", "wrong", ConnectReturnCode::BadUserNamePassword),
        ("dev-2", "pw", ConnectReturnCode::NotAuthorized),
    ] {
        let mut c = Client::start({
            let mut o = crate::common::rumqtt::v5::options(h.server.addr, id);
            o.set_credentials("dev", pw);
            o
        });
        assert_eq!(c.expect_refused().await, code, "{id} {pw}");
    }
    // Disabled: refused, and a connected client is disconnected.
    let mut c = connect(&h, "dev-1", "dev", "pw").await;
    let (s, v) = api(
        &h,
        Method::PUT,
        "/clients/dev",
        Some(json!({ "disabled": true })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(c.wait_closed(crate::common::rumqtt::WAIT).await);
    h.server.shutdown().await;
}

/// Waits for the server to end `c`'s connection with DISCONNECT 0x98.
async fn expect_kicked(c: &mut Client) {
    match c.next().await {
        Ok(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::AdministrativeAction)
        }
        Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
            assert_eq!(reason_code, DisconnectReasonCode::AdministrativeAction)
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
}

/// Connects with `password` as client `id`, as `username` if given, and returns the refusal.
async fn refused(h: &Http, id: &str, username: &str, password: &str) -> ConnectReturnCode {
    let mut c = Client::start({
        let mut o = crate::common::rumqtt::v5::options(h.server.addr, id);
        o.set_credentials(username, password);
        o
    });
    c.expect_refused().await
}

#[tokio::test]
async fn an_api_key_connects_as_its_name_with_its_roles_and_is_shown_only_once() {
    let h = open().await;
    let role = json!({
        "name": "svc",
        "rules": [{ "action": "publish", "allow": true, "filter": "svc/%u/#" }],
    });
    let (s, v) = api(&h, Method::POST, "/roles", Some(role)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api(
        &h,
        Method::POST,
        "/clients",
        Some(json!({ "username": "dev" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let new = json!({ "name": "billing", "roles": [{ "name": "svc" }] });
    let (s, v) = api(&h, Method::POST, "/keys", Some(new.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "billing");
    let key = v["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("stk_") && key.len() == 47, "{key}");
    let sha256: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    // Errors: a name taken by a key or a client, a role that does not exist, a bad expiry.
    for (body, status) in [
        (new, StatusCode::CONFLICT),
        (json!({ "name": "dev" }), StatusCode::CONFLICT),
        (
            json!({ "name": "k", "roles": [{ "name": "nope" }] }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "name": "k", "expires_in_secs": 0 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "name": "k", "key": "stk_x" }),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, v) = api(&h, Method::POST, "/keys", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
    }
    let (s, v) = api(
        &h,
        Method::POST,
        "/clients",
        Some(json!({ "username": "billing" })),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // Nothing reads the key or its hash back.
    for path in [
        "/api/v1/dynsec",
        "/api/v1/dynsec/keys",
        "/api/v1/dynsec/keys/billing",
    ] {
        let text = h
            .client
            .get(h.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("\"billing\""), "{path}: {text}");
        assert!(
            !text.contains(&key[4..]) && !text.contains(&sha256) && !text.contains("sha256"),
            "{path}: {text}"
        );
    }
    let (s, v) = api(&h, Method::GET, "/keys/billing", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&v["disabled"], &v["expired"]),
        (&json!(false), &json!(false))
    );
    assert!(v["created_at"].as_u64().unwrap() > 1_600_000_000, "{v}");

    // The key as the password: connected as billing, with the role's rights.
    let mut c = connect(&h, "billing-1", "billing", &key).await;
    assert_eq!(
        publish(&mut c, "svc/billing/x").await,
        PubAckReason::Success
    );
    assert_eq!(
        publish(&mut c, "svc/dev/x").await,
        PubAckReason::NotAuthorized,
        "%u is the key's name"
    );
    assert_eq!(
        publish(&mut c, "other/x").await,
        PubAckReason::NotAuthorized
    );

    // A wrong key, or the key under another username.
    let wrong = format!("stk_{}", "A".repeat(43));
    assert_eq!(
        refused(&h, "w", "billing", &wrong).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        refused(&h, "w", "dev", &key).await,
        ConnectReturnCode::NotAuthorized
    );

    // Deleting the key disconnects its client, and the key is refused from then on.
    let (s, v) = api(&h, Method::DELETE, "/keys/billing", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    expect_kicked(&mut c).await;
    assert_eq!(
        refused(&h, "billing-1", "billing", &key).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let (s, _) = api(&h, Method::GET, "/keys/billing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.server.shutdown().await;
}

/// A connection made with an expiring key is closed at the expiry (DISCONNECT 0xA0), and the
/// key is refused from then on.
#[tokio::test]
async fn a_key_s_connection_is_closed_at_its_expiry() {
    let h = open().await;
    let new = json!({ "name": "brief", "expires_in_secs": 2 });
    let (s, v) = api(&h, Method::POST, "/keys", Some(new)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    let mut c = connect(&h, "brief-1", "brief", &key).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), c.next()).await;
    match closed {
        Ok(Ok(Packet::Disconnect(d))) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::MaximumConnectTime)
        }
        Ok(Err(ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code, ..
        }))) => assert_eq!(reason_code, DisconnectReasonCode::MaximumConnectTime),
        other => panic!("expected DISCONNECT 0xA0, got {other:?}"),
    }
    assert_eq!(
        refused(&h, "brief-1", "brief", &key).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let (_, v) = api(&h, Method::GET, "/keys/brief", None).await;
    assert_eq!(v["expired"], true, "{v}");
    h.server.shutdown().await;
}

/// ctl makes a key and prints it alone on standard output, with a warning on standard error;
/// disabling it disconnects its client; a viewer may list keys but not make one.
#[tokio::test]
async fn ctl_makes_disables_and_lists_keys() {
    let h = open().await;
    let url = h.base.clone();
    let (code, _, err) = ctl(&url, &["dynsec", "create-role", "svc"]).await;
    assert_eq!(code, 0, "{err}");
    let args = [
        "dynsec",
        "create-key",
        "exporter",
        "--role",
        "svc",
        "--client-id",
        "exp-1",
        "--expires-in",
        "3600",
    ];
    let (code, out, err) = ctl(&url, &args).await;
    assert_eq!(code, 0, "{err}");
    let key = out.trim_end();
    assert!(
        key.starts_with("stk_") && key.len() == 47 && !key.contains('\n'),
        "{out}"
    );
    assert!(err.contains("not shown again"), "{err}");

    let (code, out, _) = ctl(&url, &["dynsec", "list-keys"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("exporter ")),
        "{out}"
    );
    assert!(!out.contains(&key[4..]), "{out}");
    let (_, v) = api(&h, Method::GET, "/keys/exporter", None).await;
    let left = v["expires_at"].as_u64().unwrap() - v["created_at"].as_u64().unwrap();
    assert_eq!(left, 3600, "{v}");

    // Another client id than the fixed one is refused; the key is its only credential.
    assert_eq!(
        refused(&h, "exp-2", "exporter", key).await,
        ConnectReturnCode::NotAuthorized
    );
    let (mut c, ack) = Client::connect(h.server.addr, "exp-1", |o| {
        o.set_credentials("exporter", key);
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let (code, _, err) = ctl(&url, &["dynsec", "disable-key", "exporter"]).await;
    assert_eq!(code, 0, "{err}");
    expect_kicked(&mut c).await;
    assert_eq!(
        refused(&h, "exp-1", "exporter", key).await,
        ConnectReturnCode::NotAuthorized
    );
    let (code, _, err) = ctl(&url, &["dynsec", "enable-key", "exporter"]).await;
    assert_eq!(code, 0, "{err}");
    let (c, ack) = Client::connect(h.server.addr, "exp-1", |o| {
        o.set_credentials("exporter", key);
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    c.disconnect().await;
    let (code, _, err) = ctl(&url, &["dynsec", "delete-key", "exporter"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl(&url, &["dynsec", "delete-key", "exporter"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: 404: not_found"), "{err}");
    h.server.shutdown().await;

    // Where the API needs credentials, a viewer reads keys but may not make one.
    let (h, creds) = super::closed_http().await;
    let viewer = super::Auth::Bearer(&creds.viewer_key);
    let (s, v) = h
        .call_json(
            Method::POST,
            "/api/v1/dynsec/keys",
            viewer,
            Some(json!({ "name": "k" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let viewer = super::Auth::Bearer(&creds.viewer_key);
    let (s, v) = h
        .call_json(Method::GET, "/api/v1/dynsec/keys", viewer, None)
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "past the role check: not enabled here: {v}"
    );
    h.server.shutdown().await;
}

/// Runs `starling ctl --url URL dynsec ARGS...` off the runtime: (status, stdout, stderr).
async fn ctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starling"));
    cmd.arg("ctl")
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("STARLING_API_KEY");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = cmd;
        cmd.output().expect("run starling ctl")
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn what_ctl_creates_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let server = Server::start(&config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr().unwrap());
    for args in [
        &["dynsec", "create-role", "writer"][..],
        &["dynsec", "add-rule", "writer", "publish", "allow", "x/#"],
        &[
            "dynsec",
            "add-rule",
            "writer",
            "publish",
            "deny",
            "x/no",
            "--priority",
            "5",
        ],
        &["dynsec", "create-group", "team", "--role", "writer"],
        &[
            "dynsec",
            "create-client",
            "bob",
            "bob-pw",
            "--text-name",
            "Bob",
        ],
        &["dynsec", "add-group-client", "team", "bob"],
        &["dynsec", "set-anonymous-group", "team"],
    ] {
        let (code, _, err) = ctl(&url, args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let (code, out, _) = ctl(&url, &["dynsec", "list", "clients"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("USERNAME"), "{out}");
    assert!(
        lines[1].starts_with("bob ") && lines[1].ends_with("team"),
        "{out}"
    );
    let (code, out, _) = ctl(&url, &["--json", "dynsec", "show", "client", "bob"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["groups"][0]["name"], "team");
    assert!(v.get("password_hash").is_none(), "{v}");
    // Errors: a bad action is refused by ctl itself, an unknown name by the API.
    let (code, _, _) = ctl(
        &url,
        &["dynsec", "add-rule", "writer", "write", "allow", "x"],
    )
    .await;
    assert_eq!(code, 2);
    let (code, _, err) = ctl(&url, &["dynsec", "delete-client", "nobody"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: 404: not_found"), "{err}");
    server.shutdown().await;

    // Restarted on the same store: everything is there, and bob connects and publishes.
    let server = Server::start(&config).await.expect("server restarts");
    let base = format!("http://{}", server.http_addr().unwrap());
    let doc: Value = reqwest::get(format!("{base}/api/v1/dynsec"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["anonymous_group"], "team", "{doc}");
    assert_eq!(doc["clients"][0]["username"], "bob");
    assert_eq!(doc["clients"][0]["text_name"], "Bob");
    assert_eq!(doc["roles"][0]["rules"].as_array().unwrap().len(), 2);
    let addr = server.local_addrs()[0];
    let (mut c, ack) = Client::connect(addr, "bobs-phone", |o| {
        o.set_credentials("bob", "bob-pw");
    })
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert_eq!(publish(&mut c, "x/1").await, PubAckReason::Success);
    assert_eq!(
        publish(&mut c, "x/no").await,
        PubAckReason::NotAuthorized,
        "the deny rule's priority puts it first"
    );
    // Anonymous clients get the team's roles.
    let mut anon = Client::plain(addr, "anon").await;
    assert_eq!(publish(&mut anon, "x/2").await, PubAckReason::Success);
    server.shutdown().await;
}
