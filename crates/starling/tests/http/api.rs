//! Every `/api/v1` endpoint: what it answers, what it changes, and that a bad request changes
//! nothing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use starling_proto::{Packet, ProtocolVersion, QoS, ReasonCode};

use super::common::{RawClient, WAIT, connect_packet, publish_packet, subscribe_packet};
use super::{Auth, open_http};

const V5: ProtocolVersion = ProtocolVersion::V5;

#[tokio::test]
async fn clients_are_listed_filtered_inspected_and_kicked() {
    let h = open_http(|_| {}).await;
    let (mut a, _) = RawClient::connect(h.server.addr, V5, "dev-a").await;
    let (mut b, _) = RawClient::connect(h.server.addr, ProtocolVersion::V311, "dev-b").await;
    let (_c, _) = RawClient::connect(h.server.addr, V5, "app-1").await;
    b.send(&subscribe_packet(7, "x/#", QoS::AtLeastOnce)).await;
    assert!(matches!(b.expect_packet(WAIT).await, Packet::SubAck(_)));

    let all = h.get("/api/v1/clients").await;
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["app-1", "dev-a", "dev-b"]);
    assert_eq!(all["next"], Value::Null);
    let dev = h.get("/api/v1/clients?prefix=dev-").await;
    assert_eq!(dev["items"].as_array().unwrap().len(), 2);
    let listener = all["items"][0]["listener"].as_str().unwrap().to_owned();
    let by_listener = h
        .get(&format!(
            "/api/v1/clients?listener={}",
            urlencode(&listener)
        ))
        .await;
    assert_eq!(by_listener["items"].as_array().unwrap().len(), 3);
    let none = h.get("/api/v1/clients?address=10.9.9.9").await;
    assert_eq!(none["items"], json!([]));
    let local = h.get("/api/v1/clients?address=127.0.0.1&limit=2").await;
    assert_eq!(local["items"].as_array().unwrap().len(), 2);
    assert_eq!(local["next"], "dev-a");

    // Counters: dev-b publishes two messages and receives one from dev-a.
    b.send(&publish_packet("y", QoS::AtMostOnce, 0, b"12345"))
        .await;
    b.send(&publish_packet("y", QoS::AtMostOnce, 0, b"678"))
        .await;
    a.send(&publish_packet("x/1", QoS::AtMostOnce, 0, b"hello!"))
        .await;
    assert!(matches!(b.expect_packet(WAIT).await, Packet::Publish(_)));
    let mut counters = Value::Null;
    for _ in 0..100 {
        counters = h.get("/api/v1/clients/dev-b").await["counters"].clone();
        if counters["messages_received"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        counters,
        json!({ "messages_received": 2, "bytes_received": 8, "messages_sent": 1, "bytes_sent": 6 })
    );

    let one = h.get("/api/v1/clients/dev-b").await;
    assert_eq!(one["protocol"], "3.1.1");
    assert_eq!(one["connected"], true);
    assert!(one["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(one["keep_alive"], 60);
    assert!(one["connected_at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(one["subscriptions"][0]["filter"], "x/#");
    assert_eq!(one["subscriptions"][0]["qos"], 1);

    for bad in [
        "/api/v1/clients?limit=0",
        "/api/v1/clients?limit=5000",
        "/api/v1/clients?bogus=1",
    ] {
        let (s, v) = h.call(Method::GET, bad, Auth::None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, v) = h
        .call(Method::GET, "/api/v1/clients/nobody", Auth::None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/clients/nobody", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A 3.1.1 client is just closed (no DISCONNECT from a server in 3.1.1).
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/clients/dev-b", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    b.expect_closed(WAIT).await;
    let metrics = h.text("/metrics", Auth::None).await.1;
    assert!(
        metrics.contains("starling_clients_kicked_total 1"),
        "{metrics}"
    );
    h.server.shutdown().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn offline_sessions_are_listed_and_discarded_and_a_connected_one_is_not() {
    let h = open_http(|_| {}).await;
    let mut c = connect_packet(V5, "keeper");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (k, _) = RawClient::connect_with(h.server.addr, c).await;
    drop(k);
    let (_live, _) = RawClient::connect(h.server.addr, V5, "live").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let offline = loop {
        let v = h.get("/api/v1/sessions").await;
        if v["items"].as_array().unwrap().len() == 1 || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(offline["items"][0]["client_id"], "keeper");
    assert_eq!(offline["items"][0]["connected"], false);
    assert_eq!(offline["items"][0]["session_expiry_secs"], 600);
    assert!(offline["items"][0]["disconnected_at_ms"].is_u64());
    let one = h.get("/api/v1/sessions/live").await;
    assert_eq!(one["connected"], true);

    let (s, v) = h
        .call(Method::DELETE, "/api/v1/sessions/live", Auth::None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/sessions/keeper", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(Method::GET, "/api/v1/sessions/keeper", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Reconnecting finds no session.
    let mut c = connect_packet(V5, "keeper");
    c.clean_start = false;
    let (_k, ack) = RawClient::connect_with(h.server.addr, c).await;
    assert!(!ack.session_present);
    h.server.shutdown().await;
}

#[tokio::test]
async fn subscriptions_are_added_listed_and_removed_on_a_clients_behalf() {
    let h = open_http(|_| {}).await;
    let (mut sub, _) = RawClient::connect(h.server.addr, V5, "sub").await;
    let add = json!({ "client_id": "sub", "filter": "alerts/+", "qos": 1 });
    let (s, v) = h
        .call_json(
            Method::POST,
            "/api/v1/subscriptions",
            Auth::None,
            Some(add.clone()),
        )
        .await;
    assert_eq!(
        (s, v["existed"].as_bool()),
        (StatusCode::CREATED, Some(false))
    );
    let (s, v) = h
        .call_json(Method::POST, "/api/v1/subscriptions", Auth::None, Some(add))
        .await;
    assert_eq!((s, v["existed"].as_bool()), (StatusCode::OK, Some(true)));
    for bad in [
        json!({ "client_id": "sub", "filter": "a/#/b" }),
        json!({ "client_id": "sub", "filter": "a", "qos": 3 }),
        json!({ "client_id": "nobody", "filter": "a" }),
        json!({ "client_id": "sub" }),
        json!({ "client_id": "sub", "filter": "a", "subscription_identifier": 0 }),
    ] {
        let (s, v) = h
            .call_json(
                Method::POST,
                "/api/v1/subscriptions",
                Auth::None,
                Some(bad.clone()),
            )
            .await;
        assert!(s.is_client_error(), "{bad}: {s} {v}");
    }
    let by_client = h.get("/api/v1/subscriptions?client_id=sub").await;
    assert_eq!(by_client["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_client["items"][0]["filter"], "alerts/+");
    let by_filter = h.get("/api/v1/subscriptions?filter=alerts%2F%2B").await;
    assert_eq!(by_filter["items"][0]["client_id"], "sub");

    // It routes like the client's own.
    let (s, v) = h
        .call_json(
            Method::POST,
            "/api/v1/publish",
            Auth::None,
            Some(json!({ "topic": "alerts/door", "payload": "open", "qos": 1 })),
        )
        .await;
    assert_eq!((s, v["reached"].as_u64()), (StatusCode::OK, Some(1)));
    match sub.expect_packet(WAIT).await {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), "alerts/door");
            assert_eq!(&p.payload[..], b"open");
            assert_eq!(p.qos, QoS::AtLeastOnce);
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    let (s, _) = h
        .call(
            Method::DELETE,
            "/api/v1/subscriptions?client_id=sub&filter=alerts%2F%2B",
            Auth::None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(
            Method::DELETE,
            "/api/v1/subscriptions?client_id=sub&filter=alerts%2F%2B",
            Auth::None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(Method::GET, "/api/v1/subscriptions", Auth::None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    h.server.shutdown().await;
}

#[tokio::test]
async fn retained_messages_are_listed_read_and_cleared() {
    let h = open_http(|_| {}).await;
    for (topic, payload) in [("r/a", "1"), ("r/b", "2"), ("r/c/d", "3"), ("other", "4")] {
        let (s, _) = h
            .call_json(
                Method::POST,
                "/api/v1/publish",
                Auth::None,
                Some(json!({ "topic": topic, "payload": payload, "retain": true })),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = h
        .call_json(
            Method::POST,
            "/api/v1/publish",
            Auth::None,
            Some(json!({ "topic": "bin", "payload": "AP8=", "payload_encoding": "base64", "retain": true })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let page = h.get("/api/v1/retained?filter=r%2F%23&limit=2").await;
    let topics: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["r/a", "r/b"]);
    assert_eq!(page["next"], "r/b");
    let rest = h.get("/api/v1/retained?filter=r%2F%23&after=r%2Fb").await;
    assert_eq!(rest["items"][0]["topic"], "r/c/d");
    assert_eq!(rest["next"], Value::Null);
    let bin = h.get("/api/v1/retained/bin").await;
    assert_eq!(
        (bin["payload"].as_str(), bin["payload_encoding"].as_str()),
        (Some("AP8="), Some("base64"))
    );
    let one = h.get("/api/v1/retained/r/c/d").await;
    assert_eq!(one["payload"], "3");

    let (s, _) = h
        .call(Method::DELETE, "/api/v1/retained/r/a", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(Method::GET, "/api/v1/retained/r/a", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(Method::DELETE, "/api/v1/retained/r/a", Auth::None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(Method::GET, "/api/v1/retained/r/%2B", Auth::None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A new subscriber gets what is left.
    let (mut c, _) = RawClient::connect(h.server.addr, V5, "late").await;
    c.send(&subscribe_packet(1, "r/#", QoS::AtMostOnce)).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match c.expect_packet(WAIT).await {
            Packet::Publish(p) => got.push(p.topic.as_str().to_owned()),
            Packet::SubAck(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, ["r/b", "r/c/d"]);
    h.server.shutdown().await;
}

#[tokio::test]
async fn publish_checks_its_input_and_carries_v5_properties() {
    let h = open_http(|_| {}).await;
    let (mut sub, _) = RawClient::connect(h.server.addr, V5, "sub").await;
    sub.send(&subscribe_packet(1, "req/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(sub.expect_packet(WAIT).await, Packet::SubAck(_)));
    let body = json!({
        "topic": "req/1", "payload": "{}", "qos": 1,
        "properties": {
            "content_type": "application/json", "response_topic": "resp/1",
            "correlation_data": "AQI=", "user_properties": [["k", "v"]],
            "payload_format_indicator": 1, "message_expiry_interval": 60
        }
    });
    let (s, v) = h
        .call_json(Method::POST, "/api/v1/publish", Auth::None, Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    match sub.expect_packet(WAIT).await {
        Packet::Publish(p) => {
            let pv = &p.properties;
            assert_eq!(pv.content_type.as_deref(), Some("application/json"));
            assert_eq!(pv.response_topic.as_deref(), Some("resp/1"));
            assert_eq!(pv.correlation_data.as_deref(), Some(&[1u8, 2][..]));
            assert_eq!(pv.user_properties, [("k".to_string(), "v".to_string())]);
            assert!(pv.message_expiry_interval.is_some_and(|s| s <= 60));
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    for bad in [
        json!({ "topic": "a/+", "payload": "x" }),
        json!({ "topic": "", "payload": "x" }),
        json!({ "topic": "a", "qos": 7 }),
        json!({ "topic": "a", "payload": "%%", "payload_encoding": "base64" }),
        json!({ "topic": "a", "payload_encoding": "hex" }),
        json!({ "topic": "$SYS/broker/x", "payload": "x" }),
        json!({ "topic": "a", "properties": { "response_topic": "a/#" } }),
        json!({ "topic": "a", "properties": { "payload_format_indicator": 2 } }),
        json!({ "topic": "a", "unknown": 1 }),
    ] {
        let (s, v) = h
            .call_json(
                Method::POST,
                "/api/v1/publish",
                Auth::None,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s.as_u16() / 100, 4, "{bad}: {s} {v}");
    }
    // Not JSON at all.
    let r = h
        .client
        .post(h.url("/api/v1/publish"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    sub.expect_silence(Duration::from_millis(200)).await;
    h.server.shutdown().await;
}

#[tokio::test]
async fn publish_on_a_users_behalf_follows_that_users_acl() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic write alice/#\n").unwrap();
    let h = open_http(|c| c.listeners[0].acl_file = Some(acl.clone())).await;
    let publish = |topic: &str| json!({ "topic": topic, "payload": "x", "username": "alice" });
    let (s, _) = h
        .call_json(
            Method::POST,
            "/api/v1/publish",
            Auth::None,
            Some(publish("alice/1")),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h
        .call_json(
            Method::POST,
            "/api/v1/publish",
            Auth::None,
            Some(publish("bob/1")),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_authorized"))
    );
    h.server.shutdown().await;
}

#[tokio::test]
async fn bans_refuse_connects_kick_whoever_is_connected_and_are_lifted() {
    let h = open_http(|_| {}).await;
    let (mut victim, _) = RawClient::connect(h.server.addr, V5, "bad-actor").await;
    let (s, v) = h
        .call_json(
            Method::POST,
            "/api/v1/banned",
            Auth::None,
            Some(json!({ "kind": "clientid", "value": "bad-actor", "reason": "abuse", "duration_secs": 600 })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["expires_ms"].as_u64().unwrap() > v["since_ms"].as_u64().unwrap());
    victim
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let mut again = RawClient::open(h.server.addr).await;
    again.version = V5;
    again
        .send(&Packet::Connect(Box::new(connect_packet(V5, "bad-actor"))))
        .await;
    match again.expect_packet(WAIT).await {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::Banned),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // 3.1.1 hears "not authorized".
    let mut old = RawClient::open(h.server.addr).await;
    old.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        "bad-actor",
    ))))
    .await;
    match old.expect_packet(WAIT).await {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let list = h.get("/api/v1/banned").await;
    assert_eq!(list["items"][0]["value"], "bad-actor");
    assert_eq!(list["items"][0]["reason"], "abuse");
    for bad in [
        json!({ "kind": "hostname", "value": "x" }),
        json!({ "kind": "address", "value": "not-an-ip" }),
        json!({ "kind": "clientid", "value": "" }),
        json!({ "kind": "clientid", "value": "x", "duration_secs": 0 }),
    ] {
        let (s, v) = h
            .call_json(
                Method::POST,
                "/api/v1/banned",
                Auth::None,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    assert_eq!(
        h.get("/api/v1/banned").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let metrics = h.text("/metrics", Auth::None).await.1;
    assert!(
        metrics.contains("starling_connects_banned_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("starling_connects_refused_total{reason=\"0x8A\"} 1"),
        "{metrics}"
    );
    let (s, _) = h
        .call(
            Method::DELETE,
            "/api/v1/banned/clientid/bad-actor",
            Auth::None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(
            Method::DELETE,
            "/api/v1/banned/clientid/bad-actor",
            Auth::None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_ok, _) = RawClient::connect(h.server.addr, V5, "bad-actor").await;

    // An address ban closes connections from it at accept.
    let (s, _) = h
        .call_json(
            Method::POST,
            "/api/v1/banned",
            Auth::None,
            Some(json!({ "kind": "address", "value": "127.0.0.1" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut refused = RawClient::open(h.server.addr).await;
    refused.expect_closed_silently().await;
    h.server.shutdown().await;
}

#[tokio::test]
async fn listeners_stats_config_reload_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let mut pf = starling_auth::PasswordFile::default();
    let hash = starling_auth::password::PasswordHash::new(
        b"pw",
        starling_auth::password::HashKind::Pbkdf2Sha512 { iterations: 1000 },
    )
    .unwrap();
    pf.set("someone", hash).unwrap();
    pf.save(&passwd).unwrap();
    let h = open_http(|c| {
        c.listeners[0].password_file = Some(passwd.clone());
        c.listeners[0].allow_anonymous = Some(true);
    })
    .await;
    let (_c, _) = RawClient::connect(h.server.addr, V5, "one").await;
    let l = h.get("/api/v1/listeners").await;
    assert_eq!(l["items"][0]["protocol"], "tcp");
    assert_eq!(l["items"][0]["state"], "open");
    assert_eq!(l["items"][0]["connections"], 1);
    assert_eq!(l["items"][0]["address"], h.server.addr.to_string());
    let stats = h.get("/api/v1/stats").await;
    assert_eq!(stats["clients_connected"], 1);
    let config = h.get("/api/v1/config").await;
    assert_eq!(config["http"]["enabled"], true);
    assert_eq!(config["listener"][0]["protocol"], "tcp");

    let (s, v) = h.call(Method::POST, "/api/v1/reload", Auth::None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true);
    assert!(v["reloaded"][0].as_str().unwrap().contains("password file"));
    std::fs::write(&passwd, "broken line without a colon\n").unwrap();
    let (s, v) = h.call(Method::POST, "/api/v1/reload", Auth::None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["ok"], false);
    assert!(!v["errors"].as_array().unwrap().is_empty());

    let spec = h.get("/api/v1/openapi.json").await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["paths"]["/clients"].is_object());
    assert!(spec["paths"]["/cluster"].is_object());
    // A single node says so; tests/cluster.rs reads the answer of a cluster's nodes.
    assert_eq!(
        h.get("/api/v1/cluster").await,
        serde_json::json!({ "enabled": false })
    );
    // This process did not set logging up, and says so.
    let (s, _) = h.call(Method::GET, "/api/v1/log-level", Auth::None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    h.server.shutdown().await;
}
