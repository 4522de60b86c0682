//! Buffers per subscription (`queue_scope = "subscription"`), black-box with rumqttc: a
//! persistent subscriber with two subscriptions goes offline while 20,000 QoS 1 messages
//! flood one filter and 10 arrive on the other; the same run with the session scope; the
//! bounds at QoS 0 and 2; Clean Start; priorities; the admin API's session view and the drop
//! metrics; and the real binary restarted (SIGTERM) and killed (SIGKILL) while the subscriber
//! is away.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::rumqtt::v5::Client;
use common::{TestServer, start_server};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use serde_json::Value;
use starling_broker::{Limits, QueuePriority, QueueScope};
use starling_proto::TopicFilter;

const SESSION_EXPIRY: u32 = 600;

/// A persistent v5 session `id` (Clean Start 0 unless `clean`).
async fn connect(addr: SocketAddr, id: &str, clean: bool) -> (Client, bool) {
    let (c, ack) = Client::connect(addr, id, |o| {
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(SESSION_EXPIRY));
    })
    .await;
    (c, ack.session_present)
}

/// Subscriber `id` subscribes to `filters` at `qos` and goes offline.
async fn offline_subscriber(addr: SocketAddr, id: &str, filters: &[&str], qos: QoS) {
    let (mut s, _) = connect(addr, id, true).await;
    for f in filters {
        s.sub(f, qos).await;
    }
    s.disconnect().await;
}

/// Publishes every `(topic, payload)` at `qos` and waits until the broker has handled them
/// all: their acknowledgements at QoS 1 and 2, a QoS 1 message after them at QoS 0 (a
/// connection's packets are handled in order).
async fn publish_all(addr: SocketAddr, qos: QoS, messages: &[(String, String)]) {
    let mut p = Client::plain(addr, "publisher").await;
    for (topic, payload) in messages {
        p.client
            .publish(topic.as_str(), qos, false, payload.clone())
            .await
            .unwrap();
    }
    let expected = match qos {
        QoS::AtMostOnce => {
            p.client
                .publish("sync", QoS::AtLeastOnce, false, "")
                .await
                .unwrap();
            1
        }
        _ => messages.len(),
    };
    for _ in 0..expected {
        p.expect("the acknowledgement", |p| match p {
            Packet::PubAck(_) | Packet::PubComp(_) => Some(()),
            _ => None,
        })
        .await;
    }
    p.disconnect().await;
}

/// `n` flood messages on `flood/a` with the 10 quiet ones (`quiet/a`) among the first
/// thousand: the alarm behind the telemetry.
fn flood_with_quiet(n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n + 10);
    for i in 0..n {
        out.push(("flood/a".to_string(), format!("f{i}")));
        if i % 100 == 0 && i / 100 < 10 {
            out.push(("quiet/a".to_string(), format!("q{}", i / 100)));
        }
    }
    out
}

/// Reconnects `id` (session present) and receives `n` messages, then checks that nothing
/// more comes; returns the payloads in the order received.
async fn receive(addr: SocketAddr, id: &str, n: usize) -> Vec<String> {
    let (mut s, present) = connect(addr, id, false).await;
    assert!(present, "the session was kept");
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let p = s.publish().await;
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    s.no_publish(Duration::from_millis(300)).await;
    s.disconnect().await;
    got
}

fn of(got: &[String], prefix: &str) -> Vec<String> {
    got.iter()
        .filter(|p| p.starts_with(prefix))
        .cloned()
        .collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix}{n}")).collect()
}

/// GETs `path` of the HTTP listener (open on loopback) as JSON, or as text if it is not.
async fn get(http: SocketAddr, path: &str) -> Value {
    let resp = reqwest::get(format!("http://{http}{path}")).await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The session's buffers as `(filter, queued, dropped)`, from the admin API.
async fn buffers(http: SocketAddr, id: &str) -> Vec<(String, u64, u64)> {
    let v = get(http, &format!("/api/v1/sessions/{id}")).await;
    let list = v["buffers"].as_array().unwrap_or_else(|| panic!("{v}"));
    list.iter()
        .map(|b| {
            let filter = b["filter"].as_str().unwrap_or("").to_string();
            (
                filter,
                b["queued"].as_u64().unwrap(),
                b["dropped"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The value of `starling_messages_dropped` for `reason` in the Prometheus text.
async fn dropped(http: SocketAddr, reason: &str) -> u64 {
    let text = get(http, "/metrics").await;
    let text = text.as_str().unwrap();
    let label = format!("reason=\"{reason}\"}}");
    text.lines()
        .find(|l| l.starts_with("starling_messages_dropped") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in the metrics"))
}

async fn server(scope: QueueScope, tune: impl FnOnce(&mut Limits)) -> TestServer {
    start_server(|l| {
        l.queue_scope = scope;
        l.max_queued_messages = 6000;
        tune(l);
    })
    .await
}

const FLOOD: usize = 20_000;

/// The flood and the quiet filter, with buffers per subscription: the newest 5,000 of the
/// flood in order, all 10 of the quiet filter, and the quiet ones not behind the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_keeps_its_newest_and_the_quiet_filter_keeps_everything() {
    let server = server(QueueScope::Subscription, |_| {}).await;
    let (addr, http) = (server.addr, server.http());
    offline_subscriber(addr, "s", &["flood/#", "quiet/#"], QoS::AtLeastOnce).await;
    publish_all(addr, QoS::AtLeastOnce, &flood_with_quiet(FLOOD)).await;

    let per_sub = Limits::default().max_queued_messages_per_subscription;
    let dropped_flood = (FLOOD - per_sub) as u64;
    assert_eq!(
        buffers(http, "s").await,
        [
            ("flood/#".to_string(), per_sub as u64, dropped_flood),
            ("quiet/#".to_string(), 10, 0)
        ]
    );
    assert_eq!(
        dropped(http, "subscription_queue_full").await,
        dropped_flood
    );
    assert_eq!(dropped(http, "queue_full").await, 0);

    let got = receive(addr, "s", per_sub + 10).await;
    assert_eq!(
        of(&got, "f"),
        names("f", FLOOD - per_sub..FLOOD),
        "the newest, in order"
    );
    assert_eq!(of(&got, "q"), names("q", 0..10), "all of the quiet filter");
    assert_eq!(
        of(&got[..20], "q").len(),
        10,
        "taking turns: {:?}",
        &got[..20]
    );
    assert_eq!(server.broker().session("s").unwrap().lock().queued(), 0);
    server.shutdown().await;
}

/// The same run with one queue per session (and the same total): the flood evicts the quiet
/// filter's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_session_scope_the_flood_evicts_the_quiet_filter() {
    let server = server(QueueScope::Session, |_| {}).await;
    let (addr, http) = (server.addr, server.http());
    offline_subscriber(addr, "s", &["flood/#", "quiet/#"], QoS::AtLeastOnce).await;
    publish_all(addr, QoS::AtLeastOnce, &flood_with_quiet(FLOOD)).await;
    assert!(buffers(http, "s").await.is_empty(), "one plain queue");
    assert_eq!(
        dropped(http, "queue_full").await,
        (FLOOD + 10 - 6000) as u64
    );
    let got = receive(addr, "s", 6000).await;
    assert_eq!(of(&got, "f"), names("f", FLOOD - 6000..FLOOD));
    assert!(of(&got, "q").is_empty(), "the quiet messages were evicted");
    server.shutdown().await;
}

/// The buffers' bounds at QoS 0 (queued offline) and QoS 2; then Clean Start empties them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_hold_at_qos_0_and_2_and_clean_start_resets() {
    let server = server(QueueScope::Subscription, |l| {
        l.max_queued_messages_per_subscription = 300;
        l.queue_qos0_offline = true;
    })
    .await;
    let addr = server.addr;
    for (id, qos) in [("s0", QoS::AtMostOnce), ("s2", QoS::ExactlyOnce)] {
        offline_subscriber(addr, id, &["flood/#", "quiet/#"], QoS::ExactlyOnce).await;
        publish_all(addr, qos, &flood_with_quiet(1000)).await;
        let got = receive(addr, id, 310).await;
        assert_eq!(of(&got, "f"), names("f", 700..1000), "{qos:?}");
        assert_eq!(of(&got, "q"), names("q", 0..10), "{qos:?}");
    }
    offline_subscriber(addr, "c", &["flood/#", "quiet/#"], QoS::AtLeastOnce).await;
    publish_all(addr, QoS::AtLeastOnce, &flood_with_quiet(1000)).await;
    assert_eq!(server.broker().session("c").unwrap().lock().queued(), 310);
    let (mut c, present) = connect(addr, "c", true).await;
    assert!(!present);
    c.no_publish(Duration::from_millis(300)).await;
    c.disconnect().await;
    server.shutdown().await;
}

/// Priorities: alarms first in, then more data than the buffer holds; with a priority the
/// alarms stay and come first, without one the data evicts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_change_what_is_dropped_and_what_comes_first() {
    let mut messages: Vec<(String, String)> = (0..10)
        .map(|i| ("alarms/x".into(), format!("a{i}")))
        .collect();
    messages.extend((0..300).map(|i| ("data/x".to_string(), format!("d{i}"))));
    for with_priority in [true, false] {
        let server = server(QueueScope::Subscription, |l| {
            l.max_queued_messages_per_subscription = 100;
            if with_priority {
                l.queue_priority = vec![QueuePriority {
                    filter: TopicFilter::try_from_str("alarms/#").unwrap(),
                    priority: 10,
                }];
            }
        })
        .await;
        let addr = server.addr;
        offline_subscriber(addr, "s", &["#"], QoS::AtLeastOnce).await;
        publish_all(addr, QoS::AtLeastOnce, &messages).await;
        let got = receive(addr, "s", 100).await;
        if with_priority {
            let mut expected = names("a", 0..10);
            expected.extend(names("d", 210..300));
            assert_eq!(got, expected);
        } else {
            assert_eq!(got, names("d", 200..300));
        }
        server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary, restarted and killed

/// A broker process (on fixed ports and a data directory, which its caller keeps).
struct Process {
    child: Child,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Process {
    async fn start(dir: &Path, addr: SocketAddr, http: SocketAddr) -> Self {
        let config = dir.join("starling.toml");
        std::fs::write(
            &config,
            format!(
                "[limits]\nqueue_scope = \"subscription\"\nmax_queued_messages_per_subscription \
                 = 500\n[http]\nbind = \"{http}\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["serve", "--bind", &addr.to_string()])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Self { child };
        for _ in 0..200 {
            let mqtt = tokio::net::TcpStream::connect(addr).await.is_ok();
            if mqtt && tokio::net::TcpStream::connect(http).await.is_ok() {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("broker did not start listening on {addr} and {http}");
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit within 10 s.
    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the broker did not stop within 10 s");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The buffers survive `kill -9` right after the last acknowledgement, and then a graceful
/// restart, while the subscriber is away; it then gets the newest of the flood and all of the
/// quiet filter, in turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_and_a_restart_while_offline_keep_the_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let broker = Process::start(dir.path(), addr, http).await;
    offline_subscriber(addr, "s", &["flood/#", "quiet/#"], QoS::AtLeastOnce).await;
    publish_all(addr, QoS::AtLeastOnce, &flood_with_quiet(2000)).await;
    let expected = [
        ("flood/#".to_string(), 500, 1500),
        ("quiet/#".to_string(), 10, 0),
    ];
    assert_eq!(buffers(http, "s").await, expected);
    broker.kill9();

    // Drops are counted since the start, so none now.
    let kept = [
        ("flood/#".to_string(), 500, 0),
        ("quiet/#".to_string(), 10, 0),
    ];
    let broker = Process::start(dir.path(), addr, http).await;
    assert_eq!(buffers(http, "s").await, kept, "after kill -9");
    broker.stop().await;
    let broker = Process::start(dir.path(), addr, http).await;
    assert_eq!(buffers(http, "s").await, kept, "after a restart");

    let got = receive(addr, "s", 510).await;
    assert_eq!(of(&got, "f"), names("f", 1500..2000));
    assert_eq!(of(&got, "q"), names("q", 0..10));
    assert_eq!(
        of(&got[..20], "q").len(),
        10,
        "taking turns: {:?}",
        &got[..20]
    );
    broker.stop().await;
}
