//! Idle plain TCP connections parked (their task and reactor registration given up, see
//! `connection/park.rs`) and everything that must still reach them: deliveries at each QoS,
//! their own packets, the keep-alive, a takeover of their client id, their client going
//! away, the shutdown. With `rumqttc` and a raw client, on 127.0.0.1:0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::rumqtt::v311::Client;
use common::{RawClient, Recv, TestServer, connect_packet, publish_packet, start_server};
use starling_proto::{Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, TopicName, Will};
use tokio::time::Instant;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A broker that parks a connection quiet for a second (or since its CONNECT).
async fn start() -> TestServer {
    start_server(|l| {
        l.park_idle_after_secs = 1;
        l.sys_interval_secs = 0;
    })
    .await
}

/// Connections parked now.
fn parked(server: &TestServer) -> u64 {
    let m = &server.broker().metrics;
    // Resumed first: a park counted between the two reads only makes the figure larger.
    let resumed = m.connections_resumed.get();
    m.connections_parked.get().saturating_sub(resumed)
}

/// Waits (at most 10 s: a connection with traffic is parked after a quiet second, found by
/// the deadline wheel within a few hundred milliseconds more) until `n` connections are
/// parked.
async fn until_parked(server: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked(server) != n {
        assert!(
            Instant::now() < deadline,
            "{} connections parked, expected {n}",
            parked(server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next packet of `c`, which must be a PUBLISH.
async fn publish_to(c: &mut RawClient) -> Publish {
    match c.expect_packet(common::WAIT).await {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// A will on `topic` with `payload`.
fn will(topic: &str, payload: &'static [u8], qos: QoS) -> Option<Will> {
    Some(Will {
        topic: TopicName::try_from_str(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_parked_and_served_when_something_comes() {
    let server = start().await;
    let addr = server.addr;
    let (mut raw, _) = RawClient::connect(addr, V5, "raw").await;
    raw.subscribe("t/#", QoS::AtLeastOnce).await;
    let (mut sub, _) = Client::connect(addr, "rumqttc", true, None).await;
    sub.subscribe("t/#", rumqttc::QoS::ExactlyOnce).await;
    // Both parked: no message has gone either way (a SUBSCRIBE is not one).
    until_parked(&server, 2).await;

    let (mut publisher, _) = RawClient::connect(addr, V5, "pub").await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let id = u16::try_from(i + 1).unwrap();
        let topic = format!("t/{i}");
        publisher
            .send(&publish_packet(&topic, qos, id, b"to the parked"))
            .await;
        if qos == QoS::ExactlyOnce {
            assert!(matches!(
                publisher.expect_packet(common::WAIT).await,
                Packet::PubRec(_)
            ));
            publisher.send(&Packet::PubRel(PubAck::new(id))).await;
        }
        if qos != QoS::AtMostOnce {
            let ack = publisher.expect_packet(common::WAIT).await;
            assert!(
                matches!(ack, Packet::PubAck(_) | Packet::PubComp(_)),
                "{ack:?}"
            );
        }
        let p = sub.publish().await;
        assert_eq!(p.topic, topic);
        assert_eq!(&p.payload[..], b"to the parked");
        let p = publish_to(&mut raw).await;
        assert_eq!(p.topic.as_str(), topic);
        if p.qos != QoS::AtMostOnce {
            raw.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
        }
        // Parked again after each, once quiet for a second: deliveries reached them from the
        // lot.
        until_parked(&server, 3).await;
    }

    // Its own packets reach a parked connection, and its answers reach the client; a
    // control packet does not keep it out of the lot for the second messages do.
    // (More than a second after it was parked: a resume sooner than that, twice in a row,
    // keeps the task; see the next test.)
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let resumed = server.broker().metrics.connections_resumed.get();
    raw.send(&Packet::PingReq).await;
    assert!(matches!(
        raw.expect_packet(common::WAIT).await,
        Packet::PingResp
    ));
    let pinged = Instant::now();
    until_parked(&server, 3).await;
    assert!(
        pinged.elapsed() < Duration::from_millis(900),
        "{:?}",
        pinged.elapsed()
    );
    assert_eq!(
        server.broker().metrics.connections_resumed.get(),
        resumed + 1
    );
    assert!(server.broker().metrics.connections_resumed.get() >= 10);
    assert_eq!(server.broker().metrics.connection_tasks_aborted.get(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinging_again_and_again_is_not_parked_and_resumed_each_time() {
    let server = start().await;
    let (mut c, _) = RawClient::connect(server.addr, V5, "pinger").await;
    until_parked(&server, 1).await;
    let resumed = server.broker().metrics.connections_resumed.get();
    // Twenty control packets 50 ms apart: each resume within a second of the park before,
    // twice in a row, keeps the task for `park_idle_after_secs` (1 s here).
    for _ in 0..20 {
        c.send(&Packet::PingReq).await;
        assert!(matches!(
            c.expect_packet(common::WAIT).await,
            Packet::PingResp
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumes = server.broker().metrics.connections_resumed.get() - resumed;
    assert!((1..=6).contains(&resumes), "{resumes} resumes for 20 pings");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_traffic_keeps_its_task_until_it_has_been_quiet() {
    let server = start().await;
    let addr = server.addr;
    let (mut sub, _) = RawClient::connect(addr, V5, "busy").await;
    sub.subscribe("busy", QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connect(addr, V5, "pub").await;
    until_parked(&server, 2).await;
    // A message every 200 ms for two seconds: the subscriber is resumed by the first and
    // not parked again while they come (the publisher is not either).
    let first = server.broker().metrics.connections_parked.get();
    for i in 0..10u8 {
        publisher
            .send(&publish_packet("busy", QoS::AtMostOnce, 0, &[i]))
            .await;
        assert_eq!(&publish_to(&mut sub).await.payload[..], &[i]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.broker().metrics.connections_parked.get(), first);
    assert_eq!(parked(&server), 0);
    // Then quiet: both parked again.
    until_parked(&server, 2).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_is_held_to_its_keep_alive_and_its_will_sent() {
    let server = start().await;
    let addr = server.addr;
    let (mut watcher, _) = RawClient::connect(addr, V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet(V5, "sleepy");
    connect.keep_alive = 2;
    connect.will = will("wills/sleepy", b"gone", QoS::AtLeastOnce);
    let (mut sleepy, _) = RawClient::connect_with(addr, connect).await;
    let connected = Instant::now();
    until_parked(&server, 2).await;
    // Closed at 1.5 times its keep-alive (3 s), not before, although nothing woke it.
    let got = sleepy.expect_closed(Duration::from_secs(6)).await;
    let waited = connected.elapsed();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout),
        "{got:?}"
    );
    assert!(
        waited >= Duration::from_millis(2_900),
        "closed after {waited:?}"
    );
    let p = publish_to(&mut watcher).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/sleepy", &b"gone"[..])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_id_is_taken_over() {
    let server = start().await;
    let addr = server.addr;
    let mut first = connect_packet(V5, "twice");
    first.clean_start = false;
    first.properties.session_expiry_interval = Some(60);
    let (mut old, _) = RawClient::connect_with(addr, first.clone()).await;
    old.subscribe("kept", QoS::AtLeastOnce).await;
    until_parked(&server, 1).await;
    let (mut new, ack) = RawClient::connect_with(addr, first).await;
    assert!(ack.session_present);
    old.expect_disconnect(ReasonCode::SessionTakenOver).await;
    // The session moved with its subscription.
    let (mut publisher, _) = RawClient::connect(addr, V5, "pub").await;
    publisher
        .send(&publish_packet("kept", QoS::AtMostOnce, 0, b"moved"))
        .await;
    assert_eq!(&publish_to(&mut new).await.payload[..], b"moved");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_goes_away_is_noticed_at_once() {
    let server = start().await;
    let addr = server.addr;
    let (mut watcher, _) = RawClient::connect(addr, V5, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut connect = connect_packet(ProtocolVersion::V311, "leaver");
    connect.will = will("wills/leaver", b"left", QoS::AtMostOnce);
    let (leaver, _) = RawClient::connect_with(addr, connect).await;
    until_parked(&server, 2).await;
    let connected = server.broker().metrics.clients_connected.get();
    drop(leaver);
    assert_eq!(&publish_to(&mut watcher).await.payload[..], b"left");
    common::eventually("the session is released", || {
        server.broker().metrics.clients_connected.get() == connected - 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_are_told_at_shutdown() {
    let server = start().await;
    let addr = server.addr;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(RawClient::connect(addr, V5, &format!("c{i}")).await.0);
    }
    until_parked(&server, 20).await;
    let stopping = tokio::spawn(server.shutdown());
    for c in &mut clients {
        c.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_parking_off_no_connection_is_parked() {
    let server = start_server(|l| l.park_idle_after_secs = 0).await;
    let (mut c, _) = RawClient::connect(server.addr, V5, "awake").await;
    c.subscribe("t", QoS::AtMostOnce).await;
    // Longer than a parked-at-once connection takes (below 100 ms).
    match c.recv(Duration::from_millis(1_500)).await {
        Recv::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
    assert_eq!(server.broker().metrics.connections_parked.get(), 0);
    c.send(&Packet::PingReq).await;
    assert!(matches!(
        c.expect_packet(common::WAIT).await,
        Packet::PingResp
    ));
    server.shutdown().await;
}
