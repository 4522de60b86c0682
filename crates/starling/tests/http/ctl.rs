//! `starling ctl`, the binary itself, against a server's HTTP listener: tables and `--json`,
//! paging with `--all`, kicking (a v5 client gets DISCONNECT 0x98), bans, subscriptions and
//! retained messages, a viewer's key refused a change, and errors with status 1.

use std::process::Command;

use serde_json::Value;
use starling_proto::{Packet, ProtocolVersion, QoS, ReasonCode};

use super::{closed_http, open_http};
use crate::common::{RawClient, WAIT, connect_packet, publish_packet, subscribe_packet};

/// Runs `starling ctl --url URL ARGS...`: (status, stdout, stderr).
fn ctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("ctl")
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("STARLING_API_KEY")
        .output()
        .expect("run starling ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs ctl off the test's runtime thread (it blocks).
async fn ctl_async(url: &str, args: &[&str]) -> (i32, String, String) {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(&url, &refs)
    })
    .await
    .unwrap()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test]
async fn ctl_lists_shows_and_kicks_clients() {
    let h = open_http(|_| {}).await;
    let (mut a, _) = RawClient::connect(h.server.addr, ProtocolVersion::V5, "dev-a").await;
    let (mut b, _) = RawClient::connect(h.server.addr, ProtocolVersion::V311, "dev-b").await;
    b.send(&subscribe_packet(1, "x/#", QoS::AtLeastOnce)).await;
    assert!(matches!(b.expect_packet(WAIT).await, Packet::SubAck(_)));

    let (code, out, err) = ctl_async(&h.base, &["clients", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("CLIENT_ID"), "{out}");
    assert!(
        lines[1].starts_with("dev-a ") && lines[2].starts_with("dev-b "),
        "{out}"
    );
    assert!(lines[2].contains("3.1.1"), "{out}");

    let (code, out, _) =
        ctl_async(&h.base, &["--json", "clients", "list", "--prefix", "dev-b"]).await;
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["client_id"], "dev-b");

    let (code, out, _) = ctl_async(&h.base, &["clients", "show", "dev-b"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("filter: x/#") && out.contains("keep_alive: 60"),
        "{out}"
    );

    let (code, out, _) = ctl_async(&h.base, &["clients", "kick", "dev-a"]).await;
    assert_eq!((code, out.trim()), (0, "kicked dev-a"));
    match a.expect_packet(WAIT).await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // Not there (any more): status 1 and the API's words.
    let (code, _, err) = ctl_async(&h.base, &["clients", "kick", "dev-a"]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: 404: not_found"), "{err}");
    h.server.shutdown().await;
}

#[tokio::test]
async fn ctl_pages_through_every_client_with_all() {
    let h = open_http(|_| {}).await;
    let mut clients = Vec::new();
    for i in 0..25 {
        let (c, _) =
            RawClient::connect(h.server.addr, ProtocolVersion::V5, &format!("c{i:03}")).await;
        clients.push(c);
    }
    let (code, out, _) = ctl_async(&h.base, &["--json", "clients", "list", "--limit", "10"]).await;
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["items"].as_array().unwrap().len(), 10);
    assert_eq!(v["next"], "c009");
    let (code, out, _) = ctl_async(
        &h.base,
        &["--json", "clients", "list", "--limit", "10", "--all"],
    )
    .await;
    assert_eq!(code, 0);
    let ids: Vec<String> = json(&out)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:03}")).collect();
    assert_eq!(ids, expected);
    let (code, out, _) = ctl_async(
        &h.base,
        &["clients", "list", "--limit", "10", "--after", "c019"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1 + 5, "{out}");
    h.server.shutdown().await;
}

#[tokio::test]
async fn ctl_manages_bans_subscriptions_and_retained_messages() {
    let h = open_http(|_| {}).await;
    let (code, out, _) = ctl_async(
        &h.base,
        &["bans", "add", "clientid", "evil", "--reason", "spam"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "banned clientid evil"));
    let (code, out, _) = ctl_async(&h.base, &["bans", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("clientid  evil   spam"),
        "{out}"
    );
    let mut refused = RawClient::open(h.server.addr).await;
    refused.version = ProtocolVersion::V5;
    refused
        .send(&Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V5,
            "evil",
        ))))
        .await;
    match refused.expect_packet(WAIT).await {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::Banned),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let (code, _, _) = ctl_async(&h.base, &["bans", "remove", "clientid", "evil"]).await;
    assert_eq!(code, 0);
    let (_ok, _) = RawClient::connect(h.server.addr, ProtocolVersion::V5, "evil").await;

    // A subscription made on a client's behalf delivers to it.
    let (mut s, _) = RawClient::connect(h.server.addr, ProtocolVersion::V5, "sub-1").await;
    let (code, _, err) = ctl_async(
        &h.base,
        &["subscriptions", "add", "sub-1", "t/+", "--qos", "1"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ctl_async(
        &h.base,
        &["--json", "subscriptions", "list", "--client-id", "sub-1"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["items"][0]["filter"], "t/+");
    let (code, _, _) =
        ctl_async(&h.base, &["publish", "t/1", "hi", "--qos", "1", "--retain"]).await;
    assert_eq!(code, 0);
    match s.expect_packet(WAIT).await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"hi"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    let (code, _, _) = ctl_async(&h.base, &["subscriptions", "remove", "sub-1", "t/+"]).await;
    assert_eq!(code, 0);
    let (code, _, err) = ctl_async(&h.base, &["subscriptions", "remove", "sub-1", "t/+"]).await;
    assert_eq!(code, 1, "{err}");

    // Retained: listed, shown, cleared.
    let (mut p, _) = RawClient::connect(h.server.addr, ProtocolVersion::V5, "pub").await;
    let mut kept = publish_packet("a b/c", QoS::AtMostOnce, 0, b"kept");
    if let Packet::Publish(x) = &mut kept {
        x.retain = true;
    }
    p.send(&kept).await;
    let mut listed = String::new();
    for _ in 0..100 {
        listed = ctl_async(&h.base, &["retained", "list"]).await.1;
        if listed.contains("a b/c") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        listed.contains("a b/c") && listed.contains("kept"),
        "{listed}"
    );
    let (code, out, _) = ctl_async(&h.base, &["retained", "show", "a b/c"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("payload: kept"), "{out}");
    let (code, _, _) = ctl_async(&h.base, &["retained", "delete", "a b/c"]).await;
    assert_eq!(code, 0);
    let (code, _, _) = ctl_async(&h.base, &["retained", "show", "a b/c"]).await;
    assert_eq!(code, 1);
    h.server.shutdown().await;
}

#[tokio::test]
async fn ctl_sends_credentials_and_a_viewer_cannot_change_anything() {
    let (h, c) = closed_http().await;
    let (_x, _) = RawClient::connect(h.server.addr, ProtocolVersion::V5, "victim").await;
    // No credentials: refused.
    let (code, _, err) = ctl_async(&h.base, &["stats"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    // A viewer reads, but may not kick.
    let (code, out, err) =
        ctl_async(&h.base, &["--api-key", &c.viewer_key, "--json", "stats"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["clients_connected"], 1);
    let (code, _, err) = ctl_async(
        &h.base,
        &["--api-key", &c.viewer_key, "clients", "kick", "victim"],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    // An admin by password (basic auth) may.
    let (code, _, err) = ctl_async(
        &h.base,
        &["-u", "alice", "-P", "alice-pw", "clients", "kick", "victim"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ctl_async(&h.base, &["-u", "alice", "-P", "wrong", "listeners"]).await;
    assert_eq!(code, 1, "{err}");
    // The admin key: reload, log level, config.
    let k = c.admin_key.as_str();
    let (code, out, _) = ctl_async(&h.base, &["--api-key", k, "--json", "reload"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["ok"], true);
    let (code, out, _) = ctl_async(&h.base, &["--api-key", k, "--json", "config"]).await;
    assert_eq!(code, 0);
    assert!(json(&out)["http"].is_object());
    // Unreachable: status 1 and the cause.
    let (code, _, err) = ctl_async("http://127.0.0.1:1", &["stats"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, err) = ctl_async("ftp://x", &["stats"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid URL"), "{err}");
    h.server.shutdown().await;
}
