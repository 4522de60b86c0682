//! Topics and filters: invalid UTF-8 and NUL, wildcards where they are not allowed, 65,000 levels, server-only packets, topic aliases.

use super::*;

/// Ill-formed UTF-8 (0xC3 0x28) and U+0000 in a PUBLISH topic or a SUBSCRIBE filter: a
/// Malformed Packet (MQTT-1.5.4-1, -2). v5: DISCONNECT 0x81 and close; 3.1.1: close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_utf8_and_nul_in_topics() {
    let (server, mut probe) = setup(|_| {}).await;
    let topics: [&[u8]; 4] = [b"a/\xC3\x28", b"a/\x00/b", b"\xED\xA0\x80", b"\xFF"];
    for version in [V5, V311] {
        for (i, topic) in topics.iter().enumerate() {
            for kind in ["publish", "subscribe"] {
                let id = format!("utf8-{}-{kind}-{i}", version.level());
                let (mut c, _) = RawClient::connect(server.addr, version, &id).await;
                let bytes = if kind == "publish" {
                    raw_publish(version, topic, b"x")
                } else {
                    raw_subscribe(version, 1, topic)
                };
                let _ = c.send_raw(&bytes).await;
                c.expect_violation_close(ReasonCode::MalformedPacket).await;
            }
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 7 -------------------------------------------------------------------------------------------

/// `+` or `#` in a PUBLISH topic name (MQTT-3.3.2-2): v5 DISCONNECT 0x90; 3.1.1 close. The
/// subscriber to `#` receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_publish_topic() {
    let (server, mut probe) = setup(|_| {}).await;
    let (mut watcher, _) = RawClient::connect(server.addr, V5, "wildcard-watcher").await;
    watcher.subscribe("w/#", QoS::AtMostOnce).await;
    for (i, topic) in [&b"w/+"[..], b"w/#", b"w/a+b", b"#"].iter().enumerate() {
        let (mut c, _) = RawClient::connect(server.addr, V5, &format!("wild-v5-{i}")).await;
        let _ = c.send_raw(&raw_publish(V5, topic, b"x")).await;
        c.expect_disconnect(ReasonCode::TopicNameInvalid).await;

        let (mut c, _) = RawClient::connect(server.addr, V311, &format!("wild-v3-{i}")).await;
        let _ = c.send_raw(&raw_publish(V311, topic, b"x")).await;
        c.expect_closed_silently().await;
    }
    watcher.expect_silence(Duration::from_millis(200)).await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 8 -------------------------------------------------------------------------------------------

/// SUBSCRIBE `a/#/b` (`#` not last, MQTT-4.7.1-1) and other misplaced wildcards: closed, v5
/// with a DISCONNECT whose reason is an error (the broker uses 0x81).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_misplaced_wildcard() {
    let (server, mut probe) = setup(|_| {}).await;
    for (i, filter) in [&b"a/#/b"[..], b"a/b#", b"a+/b", b"#/"].iter().enumerate() {
        let (mut c, _) = RawClient::connect(server.addr, V5, &format!("badfilter-{i}")).await;
        let _ = c.send_raw(&raw_subscribe(V5, 1, filter)).await;
        let got = c.expect_closed(WAIT).await;
        match &got[..] {
            [Packet::Disconnect(d)] => {
                assert!(d.reason.is_error(), "{d:?}");
                assert_eq!(d.reason, ReasonCode::MalformedPacket);
            }
            _ => panic!("filter {filter:?}: expected DISCONNECT then close, got {got:?}"),
        }

        let (mut c, _) = RawClient::connect(server.addr, V311, &format!("badfilter3-{i}")).await;
        let _ = c.send_raw(&raw_subscribe(V311, 1, filter)).await;
        c.expect_closed_silently().await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 9 -------------------------------------------------------------------------------------------

/// A topic of 65,000 '/' (65,001 levels) in PUBLISH and in SUBSCRIBE: over
/// `max_topic_levels`, closed (v5: DISCONNECT with an error reason), broker fine and fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_with_65000_levels() {
    let (server, mut probe) = setup(|_| {}).await;
    let topic = vec![b'/'; 65_000];
    for version in [V5, V311] {
        for kind in ["publish", "subscribe"] {
            let id = format!("levels-{}-{kind}", version.level());
            let (mut c, _) = RawClient::connect(server.addr, version, &id).await;
            let bytes = if kind == "publish" {
                raw_publish(version, &topic, b"x")
            } else {
                raw_subscribe(version, 1, &topic)
            };
            let started = Instant::now();
            let _ = c.send_raw(&bytes).await;
            let got = c.expect_closed(WAIT).await;
            match (&got[..], version.is_v5()) {
                ([Packet::Disconnect(d)], true) => assert!(d.reason.is_error(), "{d:?}"),
                ([], false) => {}
                _ => panic!("{id}: unexpected reaction {got:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(1), "{id} was slow");
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 10 ------------------------------------------------------------------------------------------

/// Server-only packets from a client after CONNECT: v5 DISCONNECT 0x82, 3.1.1 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_packets_from_client() {
    let (server, mut probe) = setup(|_| {}).await;
    let packets = [
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::GrantedQoS1],
            properties: Properties::default(),
        }),
        Packet::UnsubAck(starling_proto::UnsubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::Success],
            properties: Properties::default(),
        }),
        Packet::PingResp,
    ];
    for version in [V5, V311] {
        for (i, p) in packets.iter().enumerate() {
            let id = format!("server-only-{}-{i}", version.level());
            let (mut c, _) = RawClient::connect(server.addr, version, &id).await;
            c.send(p).await;
            c.expect_violation_close(ReasonCode::ProtocolError).await;
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 11 ------------------------------------------------------------------------------------------

/// Topic alias 0 or above the advertised Topic Alias Maximum: DISCONNECT 0x94 (MQTT-3.3.2-8,
/// -9). An empty topic with an alias that was never set: DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_violations() {
    let (server, mut probe) = setup(|_| {}).await;

    let (mut c, ack) = RawClient::connect(server.addr, V5, "alias-zero").await;
    let max = ack
        .properties
        .topic_alias_maximum
        .expect("CONNACK advertises a Topic Alias Maximum");
    assert!(max > 0 && max < u16::MAX);
    c.send(&aliased_publish("alias/t", 0, 1)).await;
    c.expect_disconnect(ReasonCode::TopicAliasInvalid).await;

    // The highest advertised alias works; one above does not.
    let (mut c, _) = RawClient::connect(server.addr, V5, "alias-high").await;
    c.send(&aliased_publish("alias/t", max, 1)).await;
    match c.expect_packet(WAIT).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    c.send(&aliased_publish("alias/t", max + 1, 2)).await;
    c.expect_disconnect(ReasonCode::TopicAliasInvalid).await;

    let (mut c, _) = RawClient::connect(server.addr, V5, "alias-unknown").await;
    c.send(&aliased_publish("", 1, 1)).await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;

    // An alias set on one connection is not known on the next (MQTT-3.3.2-7).
    let (mut c, _) = RawClient::connect(server.addr, V5, "alias-carry").await;
    c.send(&aliased_publish("alias/t", 2, 1)).await;
    assert!(matches!(c.expect_packet(WAIT).await, Packet::PubAck(_)));
    drop(c);
    let (mut c, _) = RawClient::connect(server.addr, V5, "alias-carry").await;
    c.send(&aliased_publish("", 2, 1)).await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;

    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}
