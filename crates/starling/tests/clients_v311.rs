//! Black-box tests with `rumqttc` as an MQTT 3.1.1 client against a broker started in-process
//! on 127.0.0.1:0: QoS flows, wildcards, retained messages, persistent sessions, wills,
//! takeover, shared subscriptions and `$SYS`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::rumqtt::WAIT;
use common::rumqtt::v311::Client;
use common::{eventually, panic_message, panic_message_at_once, start_server};
use rumqttc::{LastWill, MqttOptions, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_round_trip_and_downgrade() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let (mut sub, ack) = Client::connect(addr, "sub", true, None).await;
    assert!(!ack.session_present);
    sub.subscribe("t/+", QoS::ExactlyOnce).await;
    sub.subscribe("low/#", QoS::AtMostOnce).await;
    let (pub_, _) = Client::connect(addr, "pub", true, None).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        pub_.client
            .publish(format!("t/{i}"), qos, false, format!("m{i}"))
            .await
            .unwrap();
        let p = sub.publish().await;
        assert_eq!(p.topic, format!("t/{i}"));
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
        assert_eq!(p.qos, qos);
        assert!(!p.retain);
    }
    // Granted QoS 0 caps delivery at QoS 0.
    pub_.client
        .publish("low/x", QoS::ExactlyOnce, false, "down")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("low/x", QoS::AtMostOnce));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_dollar_topics_and_unsubscribe() {
    let server = start_server(|l| l.sys_interval_secs = 1).await;
    let addr = server.addr;
    let (mut all, _) = Client::connect(addr, "all", true, None).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let (mut sys, _) = Client::connect(addr, "sys", true, None).await;
    sys.subscribe("$SYS/broker/uptime", QoS::AtMostOnce).await;
    let p = sys.publish().await;
    assert_eq!(p.topic, "$SYS/broker/uptime");
    assert!(String::from_utf8_lossy(&p.payload).ends_with(" seconds"));
    let (mut plus, _) = Client::connect(addr, "plus", true, None).await;
    plus.subscribe("a/+/c", QoS::AtMostOnce).await;
    let (pub_, _) = Client::connect(addr, "pub", true, None).await;
    pub_.client
        .publish("a/b/c", QoS::AtMostOnce, false, "1")
        .await
        .unwrap();
    assert_eq!(plus.publish().await.topic, "a/b/c");
    // `#` gets the client topic but never `$SYS`.
    loop {
        let p = all.publish().await;
        assert!(!p.topic.starts_with('$'), "# matched {}", p.topic);
        if p.topic == "a/b/c" {
            break;
        }
    }
    plus.client.unsubscribe("a/+/c").await.unwrap();
    loop {
        if let Ok(Packet::UnsubAck(_)) = plus.next().await {
            break;
        }
    }
    pub_.client
        .publish("a/x/c", QoS::AtMostOnce, false, "2")
        .await
        .unwrap();
    plus.no_publish(Duration::from_millis(300)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_clear() {
    // No `$SYS` tree, so the retained count is only this test's.
    let server = start_server(|l| l.sys_interval_secs = 0).await;
    let addr = server.addr;
    let (pub_, _) = Client::connect(addr, "pub", true, None).await;
    pub_.client
        .publish("r/1", QoS::AtLeastOnce, true, "first")
        .await
        .unwrap();
    pub_.client
        .publish("r/1", QoS::AtLeastOnce, true, "second")
        .await
        .unwrap();
    pub_.client
        .publish("r/2", QoS::AtMostOnce, true, "other")
        .await
        .unwrap();
    eventually("both topics are retained", || {
        server.broker().retained_count() == 2
    })
    .await;
    let (mut sub, _) = Client::connect(addr, "sub", true, None).await;
    sub.subscribe("r/1", QoS::AtLeastOnce).await;
    let p = sub.publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"second"[..], true));
    // Live messages on an established subscription carry RETAIN 0 (MQTT-3.3.1-9).
    pub_.client
        .publish("r/1", QoS::AtLeastOnce, true, "third")
        .await
        .unwrap();
    let p = sub.publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"third"[..], false));
    // Clearing.
    pub_.client
        .publish("r/1", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    let _ = sub.publish().await;
    eventually("r/1 is cleared", || server.broker().retained_count() == 1).await;
    let (mut late, _) = Client::connect(addr, "late", true, None).await;
    late.subscribe("r/#", QoS::AtLeastOnce).await;
    let p = late.publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("r/2", &b"other"[..]));
    late.no_publish(Duration::from_millis(300)).await;
    assert_eq!(server.broker().retained_count(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_and_resumes() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let (mut sub, ack) = Client::connect(addr, "durable", false, None).await;
    assert!(!ack.session_present);
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut pub_, _) = Client::connect(addr, "pub", true, None).await;
    // QoS 0 is not queued for an offline session.
    pub_.client
        .publish("q/x", QoS::AtMostOnce, false, "zero")
        .await
        .unwrap();
    for i in 0..5 {
        pub_.client
            .publish("q/x", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    // One connection's packets are handled in order: with the fifth PUBACK all six are routed.
    for _ in 0..5 {
        pub_.expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;
    }
    let (mut sub, ack) = Client::connect(addr, "durable", false, None).await;
    assert!(ack.session_present);
    for i in 0..5 {
        let p = sub.publish().await;
        assert_eq!(&p.payload[..], format!("{i}").as_bytes());
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    sub.no_publish(Duration::from_millis(300)).await;
    sub.disconnect().await;
    // A clean session discards it all.
    let (sub, ack) = Client::connect(addr, "durable", true, None).await;
    assert!(!ack.session_present);
    // A clean session is never resumed, even if its connection is still open (MQTT-3.1.2-6).
    sub.disconnect().await;
    let (_, ack) = Client::connect(addr, "durable", false, None).await;
    assert!(!ack.session_present);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_abnormal_close_only() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let (mut watcher, _) = Client::connect(addr, "watcher", true, None).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let will = |n: &str| {
        Some(LastWill::new(
            format!("wills/{n}"),
            format!("{n} gone"),
            QoS::AtLeastOnce,
            false,
        ))
    };
    let (polite, _) = Client::connect(addr, "polite", true, will("polite")).await;
    polite.disconnect().await;
    watcher.no_publish(Duration::from_millis(300)).await;
    let (rude, _) = Client::connect(addr, "rude", true, will("rude")).await;
    rude.kill();
    let p = watcher.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/rude", &b"rude gone"[..])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_closes_the_old_connection() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let (mut first, _) = Client::connect(addr, "same", true, None).await;
    let (mut second, _) = Client::connect(addr, "same", true, None).await;
    // The first connection is closed by the broker.
    let closed = first.wait_closed(WAIT).await;
    assert!(closed, "old connection not closed");
    second.subscribe("still/works", QoS::AtMostOnce).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_spreads_messages() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let (mut a, _) = Client::connect(addr, "a", true, None).await;
    let (mut b, _) = Client::connect(addr, "b", true, None).await;
    a.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    let (pub_, _) = Client::connect(addr, "pub", true, None).await;
    for i in 0..20 {
        pub_.client
            .publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let (mut na, mut nb) = (0, 0);
    while seen.len() < 20 {
        tokio::select! {
            p = a.publish() => { na += 1; assert!(seen.insert(p.topic)); }
            p = b.publish() => { nb += 1; assert!(seen.insert(p.topic)); }
        }
    }
    assert!(na > 0 && nb > 0, "a got {na}, b got {nb}");
    a.no_publish(Duration::from_millis(200)).await;
    b.no_publish(Duration::from_millis(100)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_limit_slows_without_disconnecting() {
    let server = start_server(|l| l.max_publish_rate = 100).await;
    let addr = server.addr;
    let (mut sub, _) = Client::connect(addr, "sub", true, None).await;
    sub.subscribe("rate", QoS::AtLeastOnce).await;
    let (mut pub_, _) = Client::connect(addr, "pub", true, None).await;
    for i in 0..150u32 {
        pub_.client
            .publish("rate", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < 150 {
        match pub_.next().await {
            Ok(Packet::PubAck(_)) => acks += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher disconnected: {e}"),
        }
    }
    // The pace itself is tested on the simulated clock (starling-broker sim_sessions.rs);
    // here: a real client is slowed by TCP, not disconnected, and loses nothing.
    assert!(server.broker().metrics.rate_limited.get() > 0);
    for i in 0..150u32 {
        assert_eq!(&sub.publish().await.payload[..], i.to_be_bytes());
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_resent_with_dup() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let connect = |addr: SocketAddr| {
        let mut opts = MqttOptions::new("lazy", addr.ip().to_string(), addr.port());
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        Client::start(opts)
    };
    let mut lazy = connect(addr);
    assert!(matches!(lazy.next().await, Ok(Packet::ConnAck(_))));
    lazy.subscribe("redo/#", QoS::ExactlyOnce).await;
    let (pub_, _) = Client::connect(addr, "pub", true, None).await;
    pub_.client
        .publish("redo/1", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    pub_.client
        .publish("redo/2", QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    let first = lazy.publish().await;
    let second = lazy.publish().await;
    assert!(!first.dup && !second.dup);
    // Never acknowledged; the connection drops.
    lazy.kill();
    eventually("the broker sees the connection drop", || {
        server.broker().metrics.clients_connected.get() == 1
    })
    .await;
    let mut lazy = connect(addr);
    match lazy.next().await {
        Ok(Packet::ConnAck(a)) => assert!(a.session_present),
        other => panic!("{other:?}"),
    }
    let again1 = lazy.publish().await;
    let again2 = lazy.publish().await;
    assert_eq!(
        (again1.pkid, &again1.payload[..], again1.dup),
        (first.pkid, &b"one"[..], true)
    );
    assert_eq!(
        (again2.pkid, &again2.payload[..], again2.dup),
        (second.pkid, &b"two"[..], true)
    );
    server.shutdown().await;
}

/// A client whose connection the broker has closed (another client took its session over),
/// with the error already seen.
async fn dead_client(addr: SocketAddr, id: &str) -> Client {
    let (mut c, _) = Client::connect(addr, id, true, None).await;
    let (_other, _) = Client::connect(addr, id, true, None).await;
    assert!(
        c.wait_closed(WAIT).await,
        "taken over connection not closed"
    );
    c
}

/// The helpers fail on a dead connection rather than pass or wait out their bound: the broker
/// closes it (a takeover), or the event loop ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_fail_on_a_dead_connection() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    // On a live connection, no_publish passes.
    let (mut c, _) = Client::connect(addr, "victim", true, None).await;
    c.no_publish(Duration::from_millis(100)).await;
    // The broker closes the connection during the wait.
    let (msg, _) = tokio::join!(
        panic_message(async move { c.no_publish(Duration::from_secs(3)).await }),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Client::connect(addr, "victim", true, None).await
        },
    );
    assert!(
        msg.contains("connection error while checking that no PUBLISH arrives"),
        "{msg}"
    );
    // The broker closed it before the wait, the error still unread.
    let (mut c, _) = Client::connect(addr, "victim-2", true, None).await;
    let (_other, _) = Client::connect(addr, "victim-2", true, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msg =
        panic_message_at_once(async move { c.no_publish(Duration::from_millis(300)).await }).await;
    assert!(
        msg.contains("connection error while checking that no PUBLISH arrives"),
        "{msg}"
    );
    // The error already seen: every helper fails at once.
    let mut c = dead_client(addr, "dead-1").await;
    let msg =
        panic_message_at_once(async move { c.no_publish(Duration::from_millis(300)).await }).await;
    assert!(
        msg.contains("checking that no PUBLISH arrives on a dead connection"),
        "{msg}"
    );
    let mut c = dead_client(addr, "dead-2").await;
    let msg = panic_message_at_once(async move {
        let _ = c.next().await;
    })
    .await;
    assert!(
        msg.contains("waiting for a packet on a dead connection"),
        "{msg}"
    );
    let mut c = dead_client(addr, "dead-3").await;
    let msg = panic_message_at_once(async move {
        c.publish().await;
    })
    .await;
    assert!(
        msg.contains("waiting for a packet on a dead connection"),
        "{msg}"
    );
    let mut c = dead_client(addr, "dead-4").await;
    let msg = panic_message_at_once(async move { c.subscribe("x", QoS::AtMostOnce).await }).await;
    assert!(msg.contains("SUBSCRIBE on a dead connection"), "{msg}");
    let c = dead_client(addr, "dead-5").await;
    let msg = panic_message_at_once(async move { c.disconnect().await }).await;
    assert!(msg.contains("DISCONNECT on a dead connection"), "{msg}");
    let c = dead_client(addr, "dead-6").await;
    let msg = panic_message_at_once(async move { c.kill() }).await;
    assert!(msg.contains("kill on a dead connection"), "{msg}");
    // The event loop ends without an error.
    let (mut c, _) = Client::connect(addr, "aborted-1", true, None).await;
    c.abort_event_loop();
    let msg =
        panic_message_at_once(async move { c.no_publish(Duration::from_millis(300)).await }).await;
    assert!(
        msg.contains("event loop ended while checking that no PUBLISH arrives"),
        "{msg}"
    );
    let (mut c, _) = Client::connect(addr, "aborted-2", true, None).await;
    c.abort_event_loop();
    let msg = panic_message_at_once(async move {
        let _ = c.next().await;
    })
    .await;
    assert!(
        msg.contains("event loop ended without an error while waiting for a packet"),
        "{msg}"
    );
    server.shutdown().await;
}
