//! Crash safety, black-box: the real `starling` binary is started on a data directory, killed
//! with SIGKILL, and started again; what was acknowledged must all be there. Plus a store that
//! fails its commits, to prove nothing unstored is acknowledged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{RawClient, Recv, connect_packet, publish_packet, qos0_round_trip};
use starling::config::{Config, Durability};
use starling::server::Server;
use starling_proto::{Packet, ProtocolVersion, PubAck, QoS, ReasonCode};
use starling_store::MemoryStore;

const N: u32 = 10_000;
const WINDOW: u32 = 64;

/// A broker process on a fixed port and data directory.
struct Broker {
    child: Child,
    addr: SocketAddr,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    async fn start(dir: &Path, port: u16) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        // Room for every message in the offline queue (the default keeps 1,000).
        let config = dir.join("starling.toml");
        std::fs::write(&config, "[limits]\nmax_queued_messages = 20000\n").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args([
                "serve",
                "--bind",
                &addr.to_string(),
                "--http-bind",
                "127.0.0.1:0",
            ])
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
        // Owned at once, so the process is killed and reaped on every path (Drop).
        let broker = Self { child, addr };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("broker did not start listening on {addr}");
    }

    /// SIGKILL: no shutdown, no flush.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A persistent 3.1.1 session (clean session 0).
async fn persistent(addr: SocketAddr, id: &str) -> (RawClient, bool) {
    let mut c = connect_packet(ProtocolVersion::V311, id);
    c.clean_start = false;
    let (client, ack) = RawClient::connect_with(addr, c).await;
    (client, ack.session_present)
}

async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(starling_proto::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    let _ = c.expect_closed(Duration::from_secs(5)).await;
}

/// Publishes `N` messages numbered 0.. at `qos` with at most `WINDOW` unacknowledged, and
/// waits for the last acknowledgement (PUBACK, or PUBCOMP at QoS 2).
async fn publish_all(addr: SocketAddr, topic: &str, qos: QoS) {
    let (mut p, _) = RawClient::connect(addr, ProtocolVersion::V311, "publisher").await;
    let (mut sent, mut done) = (0u32, 0u32);
    while done < N {
        let mut batch = Vec::new();
        while sent < N && sent - done < WINDOW {
            let pid = (sent % 60_000 + 1) as u16;
            batch.push(publish_packet(topic, qos, pid, &sent.to_be_bytes()));
            sent += 1;
        }
        if !batch.is_empty() {
            p.send_all(&batch).await;
        }
        match p.expect_packet(Duration::from_secs(10)).await {
            Packet::PubAck(_) if qos == QoS::AtLeastOnce => done += 1,
            Packet::PubRec(a) if qos == QoS::ExactlyOnce => {
                assert_eq!(a.reason, ReasonCode::Success);
                p.send(&Packet::PubRel(PubAck::new(a.packet_id))).await;
            }
            Packet::PubComp(_) if qos == QoS::ExactlyOnce => done += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Receives until `N` distinct messages arrived and every QoS 2 flow is complete,
/// acknowledging each as its QoS requires. Panics on a duplicate if `exactly_once`.
async fn receive_all(c: &mut RawClient, exactly_once: bool) -> BTreeSet<u32> {
    let mut got = BTreeSet::new();
    let mut pending_rel = HashSet::new();
    while got.len() < N as usize || !pending_rel.is_empty() {
        let packet = match c.recv(Duration::from_secs(20)).await {
            Recv::Packet(p) => p,
            other => panic!("after {} messages: {other:?}", got.len()),
        };
        match packet {
            Packet::Publish(p) => {
                let n = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                match p.qos {
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await,
                    QoS::ExactlyOnce => {
                        // A resend of a PUBLISH not yet released is the same delivery.
                        if p.dup && pending_rel.contains(&p.packet_id) {
                            c.send(&Packet::PubRec(PubAck::new(p.packet_id))).await;
                            continue;
                        }
                        pending_rel.insert(p.packet_id);
                        c.send(&Packet::PubRec(PubAck::new(p.packet_id))).await;
                    }
                    QoS::AtMostOnce => {}
                }
                let new = got.insert(n);
                assert!(new || !exactly_once, "message {n} delivered twice");
            }
            Packet::PubRel(r) => {
                pending_rel.remove(&r.packet_id);
                c.send(&Packet::PubComp(PubAck::new(r.packet_id))).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

async fn kill9_then_resume(qos: QoS) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port).await;
    let (mut sub, present) = persistent(broker.addr, "offline-sub").await;
    assert!(!present);
    sub.subscribe("k/t", qos).await;
    disconnect(sub).await;
    publish_all(broker.addr, "k/t", qos).await;
    // Every message was acknowledged: kill the broker at once.
    broker.kill9();
    let broker = Broker::start(dir.path(), port).await;
    let (mut sub, present) = persistent(broker.addr, "offline-sub").await;
    assert!(present, "session lost across SIGKILL");
    let got = receive_all(&mut sub, qos == QoS::ExactlyOnce).await;
    assert_eq!(got.len(), N as usize);
    assert_eq!(got.iter().next_back(), Some(&(N - 1)));
    // Nothing more (no duplicates trailing behind).
    if qos == QoS::ExactlyOnce {
        sub.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_qos1_message() {
    kill9_then_resume(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_qos2_is_exactly_once() {
    kill9_then_resume(QoS::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_and_subscriptions_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port).await;
    let (mut sub, _) = persistent(broker.addr, "keeper").await;
    sub.subscribe("live/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let (mut p, _) = RawClient::connect(broker.addr, ProtocolVersion::V311, "p").await;
    let mut retained = publish_packet("state/door", QoS::AtLeastOnce, 1, b"open");
    if let Packet::Publish(ref mut pb) = retained {
        pb.retain = true;
    }
    p.send(&retained).await;
    assert!(matches!(
        p.expect_packet(Duration::from_secs(5)).await,
        Packet::PubAck(_)
    ));
    broker.kill9();

    let broker = Broker::start(dir.path(), port).await;
    // The retained message is there.
    let (mut fresh, _) = RawClient::connect(broker.addr, ProtocolVersion::V311, "fresh").await;
    fresh.subscribe("state/#", QoS::AtLeastOnce).await;
    match fresh.expect_packet(Duration::from_secs(5)).await {
        Packet::Publish(pb) => {
            assert_eq!(
                (pb.topic.as_str(), &pb.payload[..], pb.retain),
                ("state/door", &b"open"[..], true)
            );
        }
        other => panic!("{other:?}"),
    }
    // The offline subscription is there: a message published now is queued for it.
    let (mut p, _) = RawClient::connect(broker.addr, ProtocolVersion::V311, "p2").await;
    p.send(&publish_packet("live/1", QoS::AtLeastOnce, 1, b"after"))
        .await;
    assert!(matches!(
        p.expect_packet(Duration::from_secs(5)).await,
        Packet::PubAck(_)
    ));
    let (mut sub, present) = persistent(broker.addr, "keeper").await;
    assert!(present);
    match sub.expect_packet(Duration::from_secs(5)).await {
        Packet::Publish(pb) => assert_eq!(&pb.payload[..], b"after"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flows_survive_a_restart_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Broker::start(dir.path(), port).await;
    // A subscriber that will stop in the middle of its QoS 2 flow.
    let (mut sub, _) = persistent(broker.addr, "sub2").await;
    sub.subscribe("q2/#", QoS::ExactlyOnce).await;
    // Inbound: the publisher gets PUBREC for id 5 but has not sent PUBREL yet.
    let (mut publ, _) = persistent(broker.addr, "pub2").await;
    publ.send(&publish_packet("q2/a", QoS::ExactlyOnce, 5, b"in-flight"))
        .await;
    assert!(matches!(
        publ.expect_packet(Duration::from_secs(5)).await,
        Packet::PubRec(_)
    ));
    // Outbound: the subscriber gets the PUBLISH and answers PUBREC; the broker answers PUBREL,
    // which the subscriber does not complete.
    let first = match sub.expect_packet(Duration::from_secs(5)).await {
        Packet::Publish(p) => p,
        other => panic!("{other:?}"),
    };
    sub.send(&Packet::PubRec(PubAck::new(first.packet_id)))
        .await;
    assert!(
        matches!(sub.expect_packet(Duration::from_secs(5)).await, Packet::PubRel(r) if r.packet_id == first.packet_id)
    );
    broker.kill9();

    let broker = Broker::start(dir.path(), port).await;
    // The publisher resends its PUBLISH (DUP): the broker knows id 5, routes nothing again.
    let (mut publ, present) = persistent(broker.addr, "pub2").await;
    assert!(present);
    let mut again = publish_packet("q2/a", QoS::ExactlyOnce, 5, b"in-flight");
    if let Packet::Publish(ref mut p) = again {
        p.dup = true;
    }
    publ.send(&again).await;
    assert!(
        matches!(publ.expect_packet(Duration::from_secs(5)).await, Packet::PubRec(a) if a.packet_id == 5)
    );
    publ.send(&Packet::PubRel(PubAck::new(5))).await;
    assert!(
        matches!(publ.expect_packet(Duration::from_secs(5)).await, Packet::PubComp(c) if c.reason == ReasonCode::Success)
    );
    // The subscriber resumes: it gets PUBREL again, not the PUBLISH, and nothing else.
    let (mut sub, present) = persistent(broker.addr, "sub2").await;
    assert!(present);
    match sub.expect_packet(Duration::from_secs(5)).await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, first.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubAck::new(first.packet_id)))
        .await;
    sub.expect_silence(Duration::from_millis(500)).await;
}

/// In-process broker on a store whose commits fail after `ok` successful ones. `$SYS` is off:
/// its retained messages would be commits of their own, racing the test's.
async fn failing_broker(ok: usize) -> (Server, SocketAddr, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    store.fail_after(ok);
    let mut config = Config::default();
    config.limits.sys_interval_secs = 0;
    config.http.bind = ([127, 0, 0, 1], 0).into();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    let opened =
        starling::storage::with_store(store.clone(), Durability::Sync, false, 64 << 20).unwrap();
    let server = Server::start_with(&config, Some(opened)).await.unwrap();
    let addr = server.local_addrs()[0];
    (server, addr, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_never_acknowledged() {
    // The session record and the subscription commit; then the disk is "full".
    let (server, addr, store) = failing_broker(usize::MAX).await;
    let (mut sub, _) = persistent(addr, "s").await;
    sub.subscribe("f/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    // Wait until those are committed, then make every commit fail.
    for _ in 0..100 {
        if store.applied() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.fail_after(0);
    // v5 publisher: PUBACK with 0x80, not success.
    let (mut p5, _) = RawClient::connect(addr, ProtocolVersion::V5, "p5").await;
    p5.send(&publish_packet("f/1", QoS::AtLeastOnce, 1, b"x"))
        .await;
    match p5.expect_packet(Duration::from_secs(5)).await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::UnspecifiedError),
        other => panic!("{other:?}"),
    }
    // 3.1.1 publisher: no PUBACK; the connection is closed so the client resends later.
    let (mut p3, _) = RawClient::connect(addr, ProtocolVersion::V311, "p3").await;
    p3.send(&publish_packet("f/2", QoS::AtLeastOnce, 1, b"y"))
        .await;
    let got = p3.expect_closed(Duration::from_secs(5)).await;
    assert!(
        got.iter().all(|p| !matches!(p, Packet::PubAck(_))),
        "{got:?}"
    );
    // The first failure makes the store unavailable; later batches are refused without a
    // try until the next retry, or fail it.
    let m = &server.broker().metrics;
    assert!(m.store_commit_failures.get() >= 1);
    assert!(m.store_commit_failures.get() + m.store_batches_refused.get() >= 2);
    // The broker keeps serving: a publish that needs no store write still works.
    qos0_round_trip(addr, "c").await;
    server.shutdown().await;
}

/// A flood of retained QoS 0 messages (nothing waits on their commit) while the disk is stuck:
/// the journal stops near its bound because the flooding client is no longer read (counted in
/// `store_paused`), a client that journals nothing is still served, and once the disk answers
/// again every message is committed. Periodic mode, whose interval alone would let the journal
/// grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_pauses_the_clients_that_feed_it() {
    const COUNT: usize = 4_000;
    const BOUND: usize = 256 << 10;
    let store = Arc::new(MemoryStore::new());
    let mut config = Config::default();
    config.http.bind = ([127, 0, 0, 1], 0).into();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    let opened =
        starling::storage::with_store(store.clone(), Durability::Periodic, false, BOUND).unwrap();
    let server = Server::start_with(&config, Some(opened)).await.unwrap();
    let addr = server.local_addrs()[0];
    let broker = server.broker().clone();
    store.stall();

    // 4,000 retained messages of 1 KiB on distinct topics: about 16 times the bound. (That a
    // paused client's keep-alive is not held against it is tested on the simulated clock.)
    let mut connect = connect_packet(ProtocolVersion::V5, "flood");
    connect.keep_alive = 1;
    let (mut flood, _) = RawClient::connect_with(addr, connect).await;
    let mut bytes = bytes::BytesMut::new();
    let payload = vec![0x42; 1024];
    for i in 0..COUNT {
        let mut p = publish_packet(&format!("r/{i}"), QoS::AtMostOnce, 0, &payload);
        if let Packet::Publish(p) = &mut p {
            p.retain = true;
        }
        starling_proto::encode(&p, ProtocolVersion::V5, &mut bytes).unwrap();
    }
    // Sent from a task: once the broker stops reading, the write waits on TCP flow control.
    let sender = tokio::spawn(async move {
        flood.send_raw(&bytes).await.unwrap();
        flood
    });

    let mut paused = false;
    for _ in 0..250 {
        if broker.metrics.store_paused.get() > 0 {
            paused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(paused, "the flooding client was never paused");
    // Paused: nothing more is read from it, so nothing more is retained or journaled.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = broker.retained_count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.retained_count(), kept, "still read while paused");
    assert!(broker.metrics.store_commits.get() <= 1, "the disk is stuck");
    assert!(kept < COUNT / 2, "{kept} of {COUNT} read past the bound");

    // A client that journals nothing is served meanwhile.
    qos0_round_trip(addr, "other").await;

    // The disk answers again: the flood goes on and every message reaches the store.
    store.resume();
    let mut flood = tokio::time::timeout(Duration::from_secs(20), sender)
        .await
        .expect("the flood was never read to the end")
        .unwrap();
    flood.send(&Packet::PingReq).await;
    assert!(
        matches!(
            flood.expect_packet(Duration::from_secs(5)).await,
            Packet::PingResp
        ),
        "the paused client was disconnected"
    );
    for _ in 0..500 {
        if store.retained_count("r/") == COUNT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.retained_count("r/"), COUNT);
    server.shutdown().await;
}

/// A connection task that ends without its connection having closed (here the runtime is
/// dropped with the task in it, as an abort at shutdown would) releases its session through
/// its guard, and the event is counted: the session is not left owned forever.
#[test]
fn a_connection_task_dropped_mid_flight_releases_its_session() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, client) = runtime.block_on(async {
        let mut config = Config::default();
        config.http.bind = ([127, 0, 0, 1], 0).into();
        config.http.bind = ([127, 0, 0, 1], 0).into();
        config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
        config.storage.durability = Durability::Memory;
        let server = common::start_server_with(&config).await;
        let mut connect = connect_packet(ProtocolVersion::V5, "held");
        connect.clean_start = false;
        connect.properties.session_expiry_interval = Some(600);
        let (client, _) = RawClient::connect_with(server.addr, connect).await;
        (server, client)
    });
    let broker = server.broker().clone();
    let online = |b: &starling_broker::Broker| b.sessions_snapshot().iter().any(|s| s.is_online());
    assert!(online(&broker));
    drop(runtime);
    assert_eq!(broker.metrics.connection_tasks_aborted.get(), 1);
    assert!(!online(&broker), "the guard released the session");
    assert_eq!(broker.session_count(), 1, "kept for its expiry");
    assert_eq!(broker.metrics.clients_connected.get(), 0);
    drop(client);
    drop(server);
}
