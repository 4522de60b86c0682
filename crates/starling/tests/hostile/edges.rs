//! Protocol edges found by external clients and test suites: a Subscription Identifier in a
//! client's PUBLISH, acknowledgements of the wrong kind, MQTT 3.1's reserved bits, the state
//! topic a bridging broker publishes, and resent messages over a client's new Maximum Packet
//! Size.

use super::*;

/// A client's PUBLISH may not carry a Subscription Identifier (MQTT-3.3.4-6): DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifier_in_a_clients_publish_is_a_protocol_error() {
    let (server, mut probe) = setup(|_| {}).await;
    let (mut c, _) = RawClient::connect(server.addr, V5, "sub-id-publisher").await;
    let mut p = Publish::new(
        TopicName::try_from_str("a/b").unwrap(),
        QoS::AtMostOnce,
        0,
        Bytes::from_static(b"x"),
    );
    p.properties.subscription_identifiers = vec![7];
    c.send(&Packet::Publish(p)).await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A subscriber with one QoS 1 and one QoS 2 message in flight, both unacknowledged.
async fn with_two_in_flight(
    server: &TestServer,
    version: ProtocolVersion,
    id: &str,
) -> (RawClient, u16, u16) {
    let mut connect = connect_packet(version, id);
    connect.clean_start = false;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(600);
    }
    let (mut c, _) = RawClient::connect_with(server.addr, connect).await;
    c.subscribe(&format!("{id}/#"), QoS::ExactlyOnce).await;
    let (mut p, _) = RawClient::connect(server.addr, V5, &format!("{id}-publisher")).await;
    p.publish_qos1(&format!("{id}/one"), "1").await;
    let pid = p.next_packet_id();
    p.send(&publish_packet(
        &format!("{id}/two"),
        QoS::ExactlyOnce,
        pid,
        b"2",
    ))
    .await;
    let mut ids = (0, 0);
    for _ in 0..2 {
        match c.expect_packet(WAIT).await {
            Packet::Publish(m) if m.qos == QoS::AtLeastOnce => ids.0 = m.packet_id,
            Packet::Publish(m) if m.qos == QoS::ExactlyOnce => ids.1 = m.packet_id,
            other => panic!("expected the two messages, got {other:?}"),
        }
    }
    (c, ids.0, ids.1)
}

/// PUBREC for a QoS 1 message, PUBACK for a QoS 2 message, PUBCOMP before PUBREL: protocol
/// errors (v5 DISCONNECT 0x82, 3.1.1 close). The session keeps both messages: they are sent
/// again on the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_of_the_wrong_kind_are_protocol_errors() {
    let (server, mut probe) = setup(|_| {}).await;
    for version in [V5, V311] {
        for wrong in [
            "pubrec-for-qos1",
            "puback-for-qos2",
            "pubcomp-before-pubrel",
        ] {
            let id = format!("wrong-{}-{wrong}", version.level());
            let (mut c, one, two) = with_two_in_flight(&server, version, &id).await;
            let ack = match wrong {
                "pubrec-for-qos1" => Packet::PubRec(PubAck::new(one)),
                "puback-for-qos2" => Packet::PubAck(PubAck::new(two)),
                _ => Packet::PubComp(PubAck::new(two)),
            };
            c.send(&ack).await;
            c.expect_violation_close(ReasonCode::ProtocolError).await;
            let mut connect = connect_packet(version, &id);
            connect.clean_start = false;
            if version.is_v5() {
                connect.properties.session_expiry_interval = Some(600);
            }
            let (mut c, ack) = RawClient::connect_with(server.addr, connect).await;
            assert!(ack.session_present, "{wrong}");
            let mut again = Vec::new();
            for _ in 0..2 {
                match c.expect_packet(WAIT).await {
                    Packet::Publish(m) => again.push((m.qos, m.dup)),
                    other => panic!("{wrong}: expected the messages again, got {other:?}"),
                }
            }
            again.sort_by_key(|(q, _)| *q as u8);
            assert_eq!(
                again,
                [(QoS::AtLeastOnce, true), (QoS::ExactlyOnce, true)],
                "{wrong}: both kept"
            );
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A 3.1 CONNECT (`MQIsdp`, level 3) with its body's flags as given and the fixed header's
/// low bits set to `header_flags`.
fn v31_connect(header_flags: u8, connect_flags: u8, client_id: &[u8]) -> Vec<u8> {
    let mut body = common::field(b"MQIsdp");
    body.extend([3, connect_flags, 0x00, 0x3C]);
    body.extend(common::field(client_id));
    frame(0x10 | header_flags, &body)
}

/// MQTT 3.1: CONNACK's first byte is reserved, so Session Present is never set for a 3.1
/// client; a 3.1 CONNECT's reserved flag and fixed-header bits are accepted, as 3.1 brokers
/// did (3.1.1 keeps its strict checks, tested in `framing.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_clients_as_3_1_brokers_treated_them() {
    let (server, mut probe) = setup(|_| {}).await;
    // Clean session off (0x00), reserved flag set (0x01), fixed header bits 0x02.
    for _ in 0..2 {
        let mut c = RawClient::open(server.addr).await;
        c.send_raw(&v31_connect(0x02, 0x01, b"old-client"))
            .await
            .unwrap();
        let bytes = c.read_raw(4).await;
        assert_eq!(
            bytes,
            [0x20, 0x02, 0x00, 0x00],
            "CONNACK accepted, no Session Present bit"
        );
    }
    // The same reserved flag at 3.1.1: malformed, closed.
    let mut c = RawClient::open(server.addr).await;
    let mut body = common::field(b"MQTT");
    body.extend([4, 0x03, 0x00, 0x3C]);
    body.extend(common::field(b"strict"));
    c.send_raw(&frame(0x10, &body)).await.unwrap();
    c.expect_closed_silently().await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A broker bridging into Starling publishes its bridge's state, retained, to
/// `$SYS/broker/connection/<its client id>/state` (and sets it as its will). That topic, for
/// the client's own id only, is the one `$SYS` topic a client may publish to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridging_broker_may_publish_its_own_state_topic() {
    let (server, mut probe) = setup(|_| {}).await;
    let (mut watcher, _) = RawClient::connect(server.addr, V5, "watcher").await;
    watcher
        .subscribe("$SYS/broker/connection/#", QoS::AtLeastOnce)
        .await;
    let (mut bridge, _) = RawClient::connect(server.addr, V5, "edge-bridge").await;
    let (reason, _) = bridge
        .publish_qos1("$SYS/broker/connection/edge-bridge/state", "1")
        .await;
    assert_eq!(reason, ReasonCode::Success);
    match watcher.expect_packet(WAIT).await {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), "$SYS/broker/connection/edge-bridge/state");
            assert_eq!(&p.payload[..], b"1");
        }
        other => panic!("expected the state message, got {other:?}"),
    }
    for topic in [
        "$SYS/broker/connection/other/state",
        "$SYS/broker/connection/edge-bridge/state/x",
        "$SYS/broker/connection/edge-bridge",
        "$SYS/broker/uptime",
    ] {
        let (reason, _) = bridge.publish_qos1(topic, "1").await;
        assert_eq!(reason, ReasonCode::NotAuthorized, "{topic}");
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A message resent on resume that no longer fits the client's Maximum Packet Size is not
/// sent (MQTT-3.1.2-24): it is dropped as if delivered, counted, and the rest is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_messages_respect_the_new_maximum_packet_size() {
    let (server, mut probe) = setup(|_| {}).await;
    let persistent = |max: Option<u32>| {
        let mut c = connect_packet(V5, "shrinking");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(600);
        c.properties.maximum_packet_size = max;
        c
    };
    let (mut c, _) = RawClient::connect_with(server.addr, persistent(None)).await;
    c.subscribe("shrink/#", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(server.addr, V5, "shrink-publisher").await;
    p.send(&publish_packet(
        "shrink/big",
        QoS::AtLeastOnce,
        1,
        &[7; 2000],
    ))
    .await;
    p.send(&publish_packet("shrink/small", QoS::AtLeastOnce, 2, b"s"))
        .await;
    for _ in 0..2 {
        assert!(matches!(c.expect_packet(WAIT).await, Packet::Publish(_)));
    }
    drop(c);
    let dropped = server.broker().metrics.dropped_too_large.get();
    let (mut c, ack) = RawClient::connect_with(server.addr, persistent(Some(1000))).await;
    assert!(ack.session_present);
    match c.expect_packet(WAIT).await {
        Packet::Publish(m) => {
            assert_eq!(&m.payload[..], b"s");
            assert!(m.dup);
        }
        other => panic!("expected the small message again, got {other:?}"),
    }
    c.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.broker().metrics.dropped_too_large.get(), dropped + 1);
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A v5 CONNECT from a client that accepts packets of at most `max` bytes.
fn tiny(id: &str, max: u32) -> starling_proto::Connect {
    let mut c = connect_packet(V5, id);
    c.properties.maximum_packet_size = Some(max);
    c
}

/// A client's Maximum Packet Size covers every answer (MQTT-3.1.2-24): one that would exceed
/// it goes without its Reason String and User Properties (MQTT-3.2.2-19, -20 and the like);
/// one that still does not fit is not sent, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_maximum_packet_size_bounds_every_answer() {
    let (server, mut probe) = setup(|_| {}).await;
    // CONNACK here: Receive Maximum, Maximum Packet Size, Topic Alias Maximum: 16 bytes.
    let (mut c, _) = RawClient::connect_with(server.addr, tiny("tiny", 16)).await;
    // A refused publish: PUBACK 0x87, which carries a Reason String when there is room.
    c.send(&publish_packet("$SYS/x", QoS::AtLeastOnce, 1, b"x"))
        .await;
    let raw = c.read_raw(4).await;
    assert!(raw.len() <= 16, "{raw:02X?}");
    let ack = starling_proto::decode(
        &mut BytesMut::from(&raw[..]),
        V5,
        &starling_proto::DecodeLimits::default(),
    );
    match ack {
        Ok(Some(Packet::PubAck(a))) => {
            assert_eq!(a.reason, ReasonCode::NotAuthorized);
            assert!(a.properties.is_empty(), "{a:?}");
        }
        other => panic!("expected a bare PUBACK 0x87, got {other:?} from {raw:02X?}"),
    }
    // The same with room for it keeps the Reason String.
    let (mut roomy, _) = RawClient::connect_with(server.addr, tiny("roomy", 1024)).await;
    roomy
        .send(&publish_packet("$SYS/x", QoS::AtLeastOnce, 1, b"x"))
        .await;
    match roomy.expect_packet(WAIT).await {
        Packet::PubAck(a) => assert!(a.properties.reason_string.is_some(), "{a:?}"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // A SUBACK for 20 filters (25 bytes) cannot be made to fit: not sent, closed.
    let filters = (0..20)
        .map(|i| {
            (
                starling_proto::TopicFilter::try_from_str(&format!("f/{i}")).unwrap(),
                starling_proto::SubscriptionOptions::default(),
            )
        })
        .collect();
    c.send(&Packet::Subscribe(starling_proto::Subscribe {
        packet_id: 2,
        filters,
        properties: Properties::default(),
    }))
    .await;
    c.expect_closed_silently().await;
    // A CONNACK that cannot fit: closed without one.
    let mut c = RawClient::open(server.addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(tiny("tinier", 15)))).await;
    c.expect_closed_silently().await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A client that sends DISCONNECT with Session Expiry Interval 0 and at once connects again
/// on another socket gets a new session (Session Present 0), never the one it ended: the old
/// connection reads the DISCONNECT it has already received before the session is handed
/// over. The new socket is opened first so that both packets arrive together and the new
/// CONNECT is often handled before the old connection's task has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_right_after_disconnect_does_not_resume_the_ended_session() {
    disconnect_and_reconnect("quick-reconnect", 50, None).await;
}

/// The same when the DISCONNECT leaves the client just after the new CONNECT (a client
/// library whose network thread writes it a moment later): a new connection that resumes the
/// session makes the old one wait a little for what its client is still sending, so the
/// DISCONNECT still ends the session first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_sent_just_after_the_new_connect_still_ends_the_session() {
    disconnect_and_reconnect("late-disconnect", 20, Some(Duration::from_millis(1))).await;
}

/// `rounds` times: a persistent session's client sends DISCONNECT with expiry 0 and CONNECT
/// (Clean Start 0) on a new socket, the DISCONNECT first, or `late` after the CONNECT; the
/// new connection must start a new session, and the old one be closed by its DISCONNECT.
async fn disconnect_and_reconnect(client_id: &str, rounds: u32, late: Option<Duration>) {
    let (server, mut probe) = setup(|_| {}).await;
    let persistent = || {
        let mut c = connect_packet(V5, client_id);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(300);
        c
    };
    let (mut old, _) = RawClient::connect_with(server.addr, persistent()).await;
    let mut bye = Disconnect::new(ReasonCode::Success);
    bye.properties.session_expiry_interval = Some(0);
    for round in 0..rounds {
        old.subscribe("reconnect/#", QoS::AtLeastOnce).await;
        let mut new = RawClient::open(server.addr).await;
        new.version = V5;
        let connect = Packet::Connect(Box::new(persistent()));
        match late {
            None => {
                old.send(&Packet::Disconnect(bye.clone())).await;
                new.send(&connect).await;
            }
            Some(after) => {
                new.send(&connect).await;
                tokio::time::sleep(after).await;
                old.send(&Packet::Disconnect(bye.clone())).await;
            }
        }
        match new.expect_packet(WAIT).await {
            Packet::ConnAck(ack) => {
                assert_eq!(ack.reason, ReasonCode::Success);
                assert!(
                    !ack.session_present,
                    "round {round}: the session ended by DISCONNECT was resumed"
                );
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        // The old connection was closed by its DISCONNECT, not taken over.
        assert!(old.expect_closed(WAIT).await.is_empty());
        old = new;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}
