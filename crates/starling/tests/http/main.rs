//! The HTTP listener, black box over real HTTP (reqwest) with real MQTT clients beside it:
//! health checks, credentials (API keys, basic auth, roles, fail closed), every admin
//! endpoint with good and bad requests, paging through 10,000 connected clients, and the
//! logs (JSON lines, the level changed at runtime), `starling ctl` over all of it, and dynamic
//! security (`dynsec.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod api;
#[path = "../common/mod.rs"]
mod common;
mod ctl;
mod dynsec;
mod logs;
mod paging;
mod process;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::{TestServer, start_server_config};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use starling::config::Config;
use starling::http::apikey::{KeyFile, Role};
use starling_auth::PasswordFile;
use starling_auth::password::{HashKind, PasswordHash};

/// A server with its HTTP listener, and where its files are.
struct Http {
    server: TestServer,
    base: String,
    client: Client,
    _dir: tempfile::TempDir,
}

/// Keys and users the credential tests use.
struct Creds {
    admin_key: String,
    viewer_key: String,
}

impl Http {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(&self, method: Method, path: &str, auth: Auth<'_>) -> (StatusCode, Value) {
        self.call_json(method, path, auth, None).await
    }

    async fn call_json(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        req = match auth {
            Auth::None => req,
            Auth::Bearer(k) => req.bearer_auth(k),
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
            Auth::Raw(h) => req.header("authorization", h),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(Method::GET, path, Auth::None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }

    async fn text(&self, path: &str, auth: Auth<'_>) -> (StatusCode, String) {
        let mut req = self.client.get(self.url(path));
        if let Auth::Bearer(k) = auth {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
    Raw(&'a str),
}

/// An open listener (loopback, the default).
async fn open_http(tweak: impl FnOnce(&mut Config)) -> Http {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys");
    let server = start_server_config(|c| {
        c.http.api_keys_file = Some(keys);
        c.limits.sys_interval_secs = 0;
        tweak(c);
    })
    .await;
    let base = format!("http://{}", server.http());
    Http {
        server,
        base,
        client: Client::new(),
        _dir: dir,
    }
}

/// A listener that needs credentials: two API keys and a password file with an admin, a
/// viewer and a user without an HTTP role.
async fn closed_http() -> (Http, Creds) {
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("api-keys");
    let mut keys = KeyFile::default();
    let admin_key = keys.create("ops", Role::Admin).unwrap();
    let viewer_key = keys.create("grafana", Role::Viewer).unwrap();
    keys.save(&keys_path).unwrap();
    let passwd = dir.path().join("passwd");
    let mut pf = PasswordFile::default();
    for (u, p) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
    ] {
        pf.set(
            u,
            PasswordHash::new(p.as_bytes(), HashKind::Pbkdf2Sha512 { iterations: 1000 }).unwrap(),
        )
        .unwrap();
    }
    pf.save(&passwd).unwrap();
    let server = start_server_config(|c| {
        c.http.open = Some(false);
        c.http.api_keys_file = Some(keys_path.clone());
        c.http.password_file = Some(passwd.clone());
        c.http.admins = vec!["alice".into()];
        c.http.viewers = vec!["bob".into()];
        c.limits.sys_interval_secs = 0;
    })
    .await;
    let base = format!("http://{}", server.http());
    let http = Http {
        server,
        base,
        client: Client::new(),
        _dir: dir,
    };
    (
        http,
        Creds {
            admin_key,
            viewer_key,
        },
    )
}

#[tokio::test]
async fn health_and_readiness_answer_without_credentials() {
    let (h, _) = closed_http().await;
    let (s, body) = h.text("/healthz", Auth::None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
    let (s, body) = h.text("/readyz", Auth::None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ready\n"));
    // Everything else needs credentials here.
    let (s, _) = h.text("/metrics", Auth::None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_listener_that_needs_credentials_refuses_missing_and_wrong_ones() {
    let (h, c) = closed_http().await;
    let refused = |v: &Value| v["code"].as_str().map(str::to_owned);
    for auth in [
        Auth::None,
        Auth::Bearer("stk_not-a-key"),
        Auth::Basic("alice", "wrong"),
        Auth::Basic("carol", "carol-pw"),
        Auth::Basic("nobody", "x"),
        Auth::Raw("Digest abc"),
        Auth::Raw("Basic !!!"),
        Auth::Raw("Bearer"),
    ] {
        let (s, v) = h.call(Method::GET, "/api/v1/stats", auth).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(refused(&v).as_deref(), Some("unauthorized"));
    }
    for auth in [
        Auth::Bearer(&c.admin_key),
        Auth::Bearer(&c.viewer_key),
        Auth::Basic("alice", "alice-pw"),
        Auth::Basic("bob", "bob-pw"),
    ] {
        let (s, v) = h.call(Method::GET, "/api/v1/stats", auth).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["uptime_secs"].is_u64());
    }
    // Eight refusals counted, and the secret is in no error message.
    let (s, metrics) = h.text("/metrics", Auth::Bearer(&c.viewer_key)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        metrics.contains("starling_http_requests_refused_total 8"),
        "{metrics}"
    );
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_kick_and_an_admin_can() {
    let (h, c) = closed_http().await;
    let (mut client, _) =
        common::RawClient::connect(h.server.addr, starling_proto::ProtocolVersion::V5, "victim")
            .await;
    for auth in [Auth::Bearer(&c.viewer_key), Auth::Basic("bob", "bob-pw")] {
        let (s, v) = h.call(Method::GET, "/api/v1/clients/victim", auth).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = h.call(Method::DELETE, "/api/v1/clients/victim", auth).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "forbidden");
    }
    // Still connected.
    let (s, _) = h
        .call(
            Method::GET,
            "/api/v1/clients/victim",
            Auth::Bearer(&c.viewer_key),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h
        .call(
            Method::DELETE,
            "/api/v1/clients/victim",
            Auth::Basic("alice", "alice-pw"),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    client
        .expect_disconnect(starling_proto::ReasonCode::AdministrativeAction)
        .await;
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_key_created_while_the_broker_runs_works_at_once_and_a_deleted_one_stops() {
    let (h, _) = closed_http().await;
    let path: PathBuf = h._dir.path().join("api-keys");
    let mut keys = KeyFile::load(&path).unwrap();
    let key = keys.create("late", Role::Viewer).unwrap();
    // A different modification time than the file had (some filesystems count seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    keys.save(&path).unwrap();
    let (s, _) = h
        .call(Method::GET, "/api/v1/stats", Auth::Bearer(&key))
        .await;
    assert_eq!(s, StatusCode::OK);
    keys.delete("late");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    keys.save(&path).unwrap();
    let (s, _) = h
        .call(Method::GET, "/api/v1/stats", Auth::Bearer(&key))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    h.server.shutdown().await;
}

#[tokio::test]
async fn request_bodies_and_paths_are_bounded_and_checked() {
    let h = open_http(|c| c.http.max_body_bytes = 2048).await;
    let big = serde_json::json!({ "topic": "t", "payload": "x".repeat(4096) });
    let (s, _) = h
        .call_json(Method::POST, "/api/v1/publish", Auth::None, Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, v) = h
        .call(Method::GET, "/api/v1/nothing-here", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found");
    let (s, _) = h.call(Method::PATCH, "/api/v1/stats", Auth::None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    h.server.shutdown().await;
}

#[tokio::test]
async fn the_http_listener_can_be_turned_off() {
    let server = start_server_config(|c| c.http.enabled = false).await;
    assert!(server.http_addr().is_none());
    server.shutdown().await;
}

#[test]
fn a_listener_off_loopback_is_closed_unless_opened() {
    let mut c = Config::default();
    assert!(c.http.is_open(), "loopback is open by default");
    c.http.bind = SocketAddr::from(([0, 0, 0, 0], 18080));
    assert!(!c.http.is_open(), "any other address needs credentials");
    c.http.open = Some(true);
    assert!(c.http.is_open());
}
