//! SIGTERM: MQTT 5 clients get DISCONNECT 0x8B, the store is flushed, and the process exits
//! 0 within `SHUTDOWN_BOUND`; a second SIGTERM or SIGINT while the shutdown is still running
//! ends the process at once with 128 + the signal's number.

use std::time::Duration;

use bytes::Bytes;
use starling::signals::SHUTDOWN_BOUND;
use starling_proto::{Packet, ProtocolVersion, Publish, QoS, ReasonCode, TopicName};

use crate::common::{RawClient, publish_packet, subscribe_packet};
use crate::process::Broker;

/// A durability under which nothing reaches the disk before shutdown: only the final
/// commit can have stored what the test publishes.
const COMMIT_AT_SHUTDOWN_ONLY: &str =
    "[storage]\ndurability = \"periodic\"\ncommit_interval_ms = 3600000\n";

/// Margin over the bound for the process to be reaped and the test to notice.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_v5_clients_flushes_the_store_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), COMMIT_AT_SHUTDOWN_ONLY).await;

    // A retained message, acknowledged before any commit (periodic, one hour).
    let (mut publisher, _) = RawClient::connect(broker.addr, ProtocolVersion::V5, "pub").await;
    let mut retained = Publish::new(
        TopicName::try_from_str("kept/at/shutdown").unwrap(),
        QoS::AtLeastOnce,
        1,
        Bytes::from_static(b"flushed"),
    );
    retained.retain = true;
    publisher.send(&Packet::Publish(retained)).await;
    match publisher.expect_packet(Duration::from_secs(5)).await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let (mut watcher, _) = RawClient::connect(broker.addr, ProtocolVersion::V5, "watcher").await;

    broker.signal("TERM");
    watcher
        .expect_disconnect(ReasonCode::ServerShuttingDown)
        .await;
    let (status, took) = broker.exit_within(SHUTDOWN_BOUND + SLACK).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", broker.log());
    assert!(took < SHUTDOWN_BOUND, "{took:?}");
    let log = broker.log();
    assert!(log.contains("store flushed"), "{log}");
    drop(broker);

    // Started again on the same data directory: the retained message is there.
    let broker = Broker::start(dir.path(), COMMIT_AT_SHUTDOWN_ONLY).await;
    let (mut sub, _) = RawClient::connect(broker.addr, ProtocolVersion::V5, "sub").await;
    sub.send(&subscribe_packet(1, "kept/#", QoS::AtMostOnce))
        .await;
    let mut got = None;
    for _ in 0..2 {
        if let Packet::Publish(p) = sub.expect_packet(Duration::from_secs(5)).await {
            got = Some(p);
            break;
        }
    }
    let p = got.expect("the retained message after the restart");
    assert_eq!(p.topic.as_str(), "kept/at/shutdown");
    assert_eq!(&p.payload[..], b"flushed");
}

/// A subscriber that stopped reading while a publisher filled its queue: at shutdown its
/// connection task waits for the DISCONNECT to be written (seconds), which holds the
/// graceful shutdown long enough for a second signal to arrive during it.
async fn stall_the_shutdown(broker: &Broker) -> (RawClient, RawClient) {
    let (mut stalled, _) = RawClient::connect(broker.addr, ProtocolVersion::V5, "stalled").await;
    stalled.subscribe("flood/#", QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connect(broker.addr, ProtocolVersion::V5, "flood").await;
    let payload = vec![b'x'; 60_000];
    // 30 MB: more than the socket buffers of both sides hold.
    for _ in 0..50 {
        let batch: Vec<Packet> = (0..10)
            .map(|_| publish_packet("flood/x", QoS::AtMostOnce, 0, &payload))
            .collect();
        publisher.send_all(&batch).await;
    }
    // The broker has read them all: a round trip on the publisher's connection.
    let (reason, _) = publisher.publish_qos1("other", "sync").await;
    assert_eq!(reason, ReasonCode::NoMatchingSubscribers);
    (stalled, publisher)
}

async fn second_signal_exits_at_once(first: &str, second: &str, status: i32) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "[storage]\ndurability = \"memory\"\n").await;
    let _clients = stall_the_shutdown(&broker).await;
    broker.signal(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the graceful shutdown should still be waiting for the stalled client; log:\n{}",
        broker.log()
    );
    broker.signal(second);
    let (exit, took) = broker.exit_within(Duration::from_secs(3)).await;
    assert_eq!(exit.code(), Some(status), "log:\n{}", broker.log());
    assert!(took < Duration::from_secs(1), "{took:?}");
    let log = broker.log();
    assert!(log.contains("during shutdown: exiting at once"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_with_143() {
    second_signal_exits_at_once("TERM", "TERM", 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_after_sigterm_exits_at_once_with_130() {
    second_signal_exits_at_once("TERM", "INT", 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_stretch_the_shutdown_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), "[storage]\ndurability = \"memory\"\n").await;
    let _clients = stall_the_shutdown(&broker).await;
    broker.signal("TERM");
    let (status, took) = broker.exit_within(SHUTDOWN_BOUND + SLACK).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", broker.log());
    assert!(took < SHUTDOWN_BOUND, "{took:?}");
}
