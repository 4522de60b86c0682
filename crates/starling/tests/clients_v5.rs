//! Black-box tests with `rumqttc` as an MQTT 5 client against a broker started in-process on
//! 127.0.0.1:0: CONNACK properties, subscription identifiers and options, forwarded
//! properties, session expiry, will delay, shared-subscription hand-over, shutdown, and
//! 3.1.1 <-> 5 interoperation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::rumqtt::v5::{Client, options};
use common::rumqtt::v311;
use common::{TestServer, eventually, panic_message, panic_message_at_once, start_server_config};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet,
    PubAckReason, PublishProperties, RetainForwardRule,
};
use starling::config::Config;

/// A broker on 127.0.0.1:0 without the `$SYS` tree, adjusted by `tweak`.
async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
    start_server_config(|config| {
        config.limits.sys_interval_secs = 0;
        tweak(config);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_advertises_limits() {
    let server = start(|c| {
        c.limits.receive_maximum = 77;
        c.limits.topic_alias_maximum = 9;
        c.limits.max_packet_size = 100_000;
        c.limits.max_keep_alive = 20;
    })
    .await;
    let addr = server.addr;
    let (_c, ack) = Client::connect(addr, "c", |_| {}).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let p = ack.properties.unwrap();
    assert_eq!(p.receive_max, Some(77));
    assert_eq!(p.topic_alias_max, Some(9));
    assert_eq!(p.max_packet_size, Some(100_000));
    // The client asked for 30 s; the broker caps it.
    assert_eq!(p.server_keep_alive, Some(20));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_and_overlap() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut sub = Client::plain(addr, "sub").await;
    sub.subscribe(Filter::new("s/+", QoS::AtMostOnce), Some(11))
        .await;
    sub.subscribe(Filter::new("s/#", QoS::AtLeastOnce), Some(22))
        .await;
    let publisher = Client::plain(addr, "pub").await;
    publisher
        .client
        .publish("s/x", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    // One copy, at the highest granted QoS, with both identifiers.
    let p = sub.publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids = p.properties.unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, [11, 22]);
    sub.no_publish(Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_are_forwarded_unchanged() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut sub = Client::plain(addr, "sub").await;
    sub.sub("req/#", QoS::AtLeastOnce).await;
    let publisher = Client::plain(addr, "pub").await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(100),
        content_type: Some("text/plain".into()),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("req/x", QoS::AtLeastOnce, false, "body", props)
        .await
        .unwrap();
    let p = sub.publish().await;
    let got = p.properties.unwrap();
    assert_eq!(got.payload_format_indicator, Some(1));
    assert!(
        matches!(got.message_expiry_interval, Some(99..=100)),
        "{:?}",
        got.message_expiry_interval
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    let order: Vec<(&str, &str)> = got
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(order, [("b", "2"), ("a", "1"), ("b", "3")]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_retain_as_published_and_retain_handling() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut me = Client::plain(addr, "me").await;
    let mut f = Filter::new("nl/#", QoS::AtMostOnce);
    f.nolocal = true;
    me.subscribe(f, None).await;
    me.client
        .publish("nl/1", QoS::AtMostOnce, false, "mine")
        .await
        .unwrap();
    me.no_publish(Duration::from_millis(200)).await;
    let other = Client::plain(addr, "other").await;
    other
        .client
        .publish("nl/2", QoS::AtMostOnce, false, "theirs")
        .await
        .unwrap();
    assert_eq!(&me.publish().await.payload[..], b"theirs");

    other
        .client
        .publish("keep/1", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    eventually("keep/1 is retained", || {
        server.broker().retained_count() == 1
    })
    .await;
    // Retain handling 2: nothing at subscribe time; Retain As Published keeps the flag live.
    let mut f = Filter::new("keep/#", QoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    f.preserve_retain = true;
    let mut rap = Client::plain(addr, "rap").await;
    rap.subscribe(f, None).await;
    rap.no_publish(Duration::from_millis(200)).await;
    other
        .client
        .publish("keep/1", QoS::AtLeastOnce, true, "again")
        .await
        .unwrap();
    let p = rap.publish().await;
    assert!(p.retain, "Retain As Published must keep RETAIN");
    // Retain handling 1: only when the subscription is new.
    let mut f = Filter::new("keep/#", QoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    let mut newer = Client::plain(addr, "newer").await;
    newer.subscribe(f.clone(), None).await;
    assert_eq!(&newer.publish().await.payload[..], b"again");
    newer.subscribe(f, None).await;
    newer.no_publish(Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_says_no_matching_subscribers() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut c = Client::plain(addr, "c").await;
    c.client
        .publish("nobody/home", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    loop {
        if let Ok(Packet::PubAck(a)) = c.next().await {
            assert_eq!(a.reason, PubAckReason::NoMatchingSubscribers);
            break;
        }
    }
    server.shutdown().await;
}

/// A v5 client's Session Expiry Interval keeps its session (and what was queued for it) while
/// it is away. When the session ends is tested to the millisecond on the simulated clock
/// (starling-broker tests/sim_sessions.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_keeps_the_session() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let with_expiry = |secs: u32| {
        move |o: &mut MqttOptions| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(secs));
        }
    };
    let (mut sub, ack) = Client::connect(addr, "s", with_expiry(2)).await;
    assert!(!ack.session_present);
    sub.sub("exp/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Client::plain(addr, "pub").await;
    publisher
        .client
        .publish("exp/1", QoS::AtLeastOnce, false, "queued")
        .await
        .unwrap();
    // Acknowledged once routed, so queued for the absent session.
    publisher
        .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
        .await;
    let (mut sub, ack) = Client::connect(addr, "s", with_expiry(1)).await;
    assert!(ack.session_present);
    assert_eq!(&sub.publish().await.payload[..], b"queued");
    sub.disconnect().await;
    server.shutdown().await;
}

/// rumqttc's Will Delay Interval reaches the broker: the will waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_and_disconnect_with_will() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut watcher = Client::plain(addr, "watcher").await;
    watcher.sub("w/#", QoS::AtLeastOnce).await;
    let will = |topic: &str, delay: u32| {
        let props = LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        };
        LastWill::new(topic, "bye", QoS::AtLeastOnce, false, Some(props))
    };
    // Delayed will: not at once, but after the delay (the session expiry is longer).
    let (c, _) = Client::connect(addr, "delayed", |o| {
        o.set_last_will(will("w/delayed", 1));
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    let killed_at = std::time::Instant::now();
    c.kill();
    let p = watcher.publish().await;
    assert_eq!(p.topic, Bytes::from_static(b"w/delayed"));
    assert!(
        killed_at.elapsed() >= Duration::from_millis(900),
        "will sent before its delay"
    );
    // That a resume within the delay cancels the will, and the exact timings, are tested on
    // the simulated clock (starling-broker tests/sim_sessions.rs).
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_member_loss_hands_messages_over() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    // `a` takes messages but never acknowledges them.
    let (mut a, _) = Client::connect(addr, "a", |o| {
        o.set_manual_acks(true);
    })
    .await;
    a.sub("$share/g/work", QoS::AtLeastOnce).await;
    let publisher = Client::plain(addr, "pub").await;
    for i in 0..4 {
        publisher
            .client
            .publish("work", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        a.publish().await;
    }
    let mut b = Client::plain(addr, "b").await;
    b.sub("$share/g/work", QoS::AtLeastOnce).await;
    a.kill();
    let mut got: Vec<String> = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8(b.publish().await.payload.to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["0", "1", "2", "3"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_server_shutting_down() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut c = Client::plain(addr, "c").await;
    let shutdown = tokio::spawn(server.shutdown());
    // rumqttc reports a server DISCONNECT as the error that ends its event loop.
    let ended = loop {
        match c.next().await {
            Ok(_) => {}
            Err(e) => break format!("{e:?}"),
        }
    };
    let expected = format!("{:?}", DisconnectReasonCode::ServerShuttingDown);
    assert!(
        ended.contains("ServerDisconnect") && ended.contains(&expected),
        "{ended}"
    );
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_and_v5_interoperate() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut v5 = Client::plain(addr, "five").await;
    v5.sub("x/#", QoS::AtLeastOnce).await;
    let (mut v3, _) = v311::Client::connect(addr, "three", true, None).await;
    v3.subscribe("x/#", rumqttc::QoS::AtLeastOnce).await;
    v3.client
        .publish("x/from3", rumqttc::QoS::AtLeastOnce, false, "three")
        .await
        .unwrap();
    let p = v5.publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"x/from3"[..], &b"three"[..])
    );
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("t".into()),
        ..Default::default()
    };
    v5.client
        .publish_with_properties("x/from5", QoS::AtLeastOnce, false, "five", props)
        .await
        .unwrap();
    let got = loop {
        let p = v3.publish().await;
        if p.topic == "x/from5" {
            break p;
        }
    };
    assert_eq!(&got.payload[..], b"five");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_both_ways() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let (mut sub, _) = Client::connect(addr, "sub", |o| {
        o.set_topic_alias_max(Some(2));
    })
    .await;
    sub.sub("al/#", QoS::AtMostOnce).await;
    let (publisher, ack) = Client::connect(addr, "pub", |_| {}).await;
    assert!(ack.properties.unwrap().topic_alias_max.unwrap_or(0) >= 1);
    // Inbound: the topic once with alias 1, then the alias alone.
    let with_alias = |alias| PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("al/one", QoS::AtMostOnce, false, "1", with_alias(1))
        .await
        .unwrap();
    publisher
        .client
        .publish_with_properties("", QoS::AtMostOnce, false, "2", with_alias(1))
        .await
        .unwrap();
    for topic in ["al/two", "al/three", "al/two", "al/three"] {
        publisher
            .client
            .publish(topic, QoS::AtMostOnce, false, "x")
            .await
            .unwrap();
    }
    // The subscriber allowed 2 aliases: the broker assigns them to the first two topics, then
    // sends those as the alias alone (empty topic), and the third topic in full every time.
    let mut known = std::collections::HashMap::new();
    let mut got = Vec::new();
    for _ in 0..6 {
        let p = sub.publish().await;
        let alias = p.properties.and_then(|p| p.topic_alias);
        let sent = String::from_utf8(p.topic.to_vec()).unwrap();
        let resolved = match alias {
            Some(a) if sent.is_empty() => known
                .get(&a)
                .cloned()
                .expect("alias used before it was set"),
            Some(a) => {
                known.insert(a, sent.clone());
                sent.clone()
            }
            None => sent.clone(),
        };
        got.push((resolved, sent.is_empty(), alias));
    }
    let expected = [
        ("al/one", false, Some(1)),
        ("al/one", true, Some(1)),
        ("al/two", false, Some(2)),
        ("al/three", false, None),
        ("al/two", true, Some(2)),
        ("al/three", false, None),
    ];
    let expected: Vec<(String, bool, Option<u16>)> = expected
        .iter()
        .map(|(t, e, a)| (t.to_string(), *e, *a))
        .collect();
    assert_eq!(got, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_information_and_redirection() {
    let server = start(|c| c.mqtt.response_information_prefix = "replies/".into()).await;
    let addr = server.addr;
    let (_c, ack) = Client::connect(addr, "asker", |o| {
        o.set_request_response_info(Some(1));
    })
    .await;
    assert_eq!(
        ack.properties.unwrap().response_information.as_deref(),
        Some("replies/asker")
    );
    let (_c, ack) = Client::connect(addr, "quiet", |_| {}).await;
    assert_eq!(ack.properties.unwrap().response_information, None);
    server.shutdown().await;

    let server = start(|c| c.mqtt.server_reference = Some("other.example:1883".into())).await;
    let addr = server.addr;
    let mut moved = Client::start(options(addr, "moved"));
    let err = moved.next().await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("UseAnotherServer"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_strings_follow_request_problem_information() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    for (rpi, expect_string) in [(None, true), (Some(0), false)] {
        let (mut c, _) = Client::connect(addr, "rpi", |o| {
            o.set_request_problem_info(rpi);
        })
        .await;
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            ..Default::default()
        };
        c.client
            .publish_with_properties(
                "utf8/check",
                QoS::AtLeastOnce,
                false,
                vec![0xC3u8, 0x28],
                props,
            )
            .await
            .unwrap();
        let ack = loop {
            if let Ok(Packet::PubAck(a)) = c.next().await {
                break a;
            }
        };
        assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid);
        let string = ack.properties.and_then(|p| p.reason_string);
        assert_eq!(string.is_some(), expect_string, "{string:?}");
        c.disconnect().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_receive_maximum_is_respected() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let (mut sub, _) = Client::connect(addr, "rm-sub", |o| {
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
    })
    .await;
    sub.sub("rm/#", QoS::AtLeastOnce).await;
    let publisher = Client::plain(addr, "rm-pub").await;
    for i in 0..5 {
        publisher
            .client
            .publish("rm/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    // Two unacknowledged messages fill the client's window; each PUBACK lets one more in.
    let mut got = vec![sub.publish().await, sub.publish().await];
    sub.no_publish(Duration::from_millis(300)).await;
    for i in 0..3 {
        sub.client.ack(&got[i]).await.unwrap();
        got.push(sub.publish().await);
        sub.no_publish(Duration::from_millis(100)).await;
    }
    let payloads: Vec<_> = got.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, ["m0", "m1", "m2", "m3", "m4"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_dropped_for_size_defines_no_topic_alias() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let (mut sub, _) = Client::connect(addr, "mps-sub", |o| {
        o.set_topic_alias_max(Some(2));
        o.set_max_packet_size(Some(200));
    })
    .await;
    sub.sub("mps/#", QoS::AtLeastOnce).await;
    let publisher = Client::plain(addr, "mps-pub").await;
    for payload in [vec![b'x'; 1000], b"small 1".to_vec(), b"small 2".to_vec()] {
        publisher
            .client
            .publish("mps/t", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    // The first message the client sees carries the topic with the alias, the next the alias
    // alone.
    let p = sub.publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"mps/t"[..], &b"small 1"[..])
    );
    assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(1));
    let p = sub.publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b""[..], &b"small 2"[..]));
    assert_eq!(p.properties.and_then(|p| p.topic_alias), Some(1));
    server.shutdown().await;
}

/// The helpers fail on a dead connection rather than pass or wait out their bound: here the
/// server shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_fail_on_a_dead_connection() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let mut c = Client::plain(addr, "waiting").await;
    c.sub("t/#", QoS::AtLeastOnce).await;
    // On a live connection, no_publish passes.
    c.no_publish(Duration::from_millis(100)).await;
    let mut a = Client::plain(addr, "a").await;
    let mut b = Client::plain(addr, "b").await;
    let mut d = Client::plain(addr, "d").await;
    let e = Client::plain(addr, "e").await;
    // The server shuts down during the wait.
    let (msg, ()) = tokio::join!(
        panic_message(async move { c.no_publish(Duration::from_secs(3)).await }),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.shutdown().await;
        },
    );
    assert!(
        msg.contains("connection error while checking that no PUBLISH arrives"),
        "{msg}"
    );
    // The others' connections went before their checks, the errors still unread.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let msg =
        panic_message_at_once(async move { a.no_publish(Duration::from_millis(300)).await }).await;
    assert!(
        msg.contains("connection error while checking that no PUBLISH arrives"),
        "{msg}"
    );
    let msg = panic_message_at_once(async move {
        b.publish().await;
    })
    .await;
    assert!(
        msg.contains("connection error while waiting for PUBLISH"),
        "{msg}"
    );
    // next reports the error once, then fails.
    assert!(d.next().await.is_err());
    let msg = panic_message_at_once(async move {
        let _ = d.next().await;
    })
    .await;
    assert!(
        msg.contains("waiting for a packet on a dead connection"),
        "{msg}"
    );
    let msg = panic_message_at_once(async move { e.disconnect().await }).await;
    assert!(msg.contains("DISCONNECT not queued"), "{msg}");
}
