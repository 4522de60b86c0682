//! What the broker refuses with a reason code rather than a bare close: a CONNECT over a
//! configured limit (CONNACK in the client's own protocol version, counted), and control
//! characters in client ids, user names, topic names and filters (malformed, unless the
//! operator allows them).

use super::*;
use starling_proto::Connect;

/// Sends `connect` on a fresh connection and returns the one packet the broker answers with
/// before it closes the connection.
async fn refused(server: &TestServer, connect: Connect) -> Packet {
    let mut c = RawClient::open(server.addr).await;
    c.version = connect.protocol;
    c.send(&Packet::Connect(Box::new(connect))).await;
    let got = c.expect_closed(WAIT).await;
    match <[Packet; 1]>::try_from(got) {
        Ok([p]) => p,
        Err(got) => panic!("expected one packet then close, got {got:?}"),
    }
}

/// The CONNACK reason a refused `connect` gets.
async fn connack_reason(server: &TestServer, connect: Connect) -> ReasonCode {
    match refused(server, connect).await {
        Packet::ConnAck(a) => {
            assert!(!a.session_present);
            a.reason
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A CONNECT with a will on `topic`.
fn with_will(version: ProtocolVersion, id: &str, topic: &str) -> Connect {
    let mut c = connect_packet(version, id);
    c.will = Some(starling_proto::Will {
        topic: TopicName::try_from_str(topic).unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    c
}

/// A v5 CONNECT carrying `n` user properties.
fn with_user_properties(id: &str, n: usize) -> Connect {
    let mut c = connect_packet(V5, id);
    c.properties.user_properties = (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    c
}

/// Each limit exceeded on CONNECT gets a CONNACK with its reason code (3.1.1: the nearest
/// return code, 0x03) before the close, and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_a_limit_get_a_connack_with_the_reason() {
    let (server, mut probe) = setup(|l| {
        l.max_user_properties = 2;
        l.max_topic_levels = 4;
        l.max_connect_packet_size = 256;
    })
    .await;
    let long_id = "x".repeat(300);
    let cases = [
        (
            "v5 user properties",
            with_user_properties("props", 3),
            ReasonCode::QuotaExceeded,
        ),
        (
            "v5 will topic levels",
            with_will(V5, "levels", "a/b/c/d/e"),
            ReasonCode::QuotaExceeded,
        ),
        (
            "3.1.1 will topic levels",
            with_will(V311, "levels", "a/b/c/d/e"),
            ReasonCode::ServerUnavailable,
        ),
        (
            "v5 size",
            connect_packet(V5, &long_id),
            ReasonCode::PacketTooLarge,
        ),
        (
            "3.1.1 size",
            connect_packet(V311, &long_id),
            ReasonCode::ServerUnavailable,
        ),
    ];
    let count = cases.len() as u64;
    for (what, connect, reason) in cases {
        assert_eq!(connack_reason(&server, connect).await, reason, "{what}");
    }
    assert_eq!(server.broker().metrics.connect_limits_exceeded.get(), count);
    // Within the limits: accepted.
    RawClient::connect_with(server.addr, with_user_properties("two-props", 2)).await;
    RawClient::connect_with(server.addr, with_will(V311, "four", "a/b/c/d")).await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// The default limits let through a CONNECT that fits in the packet size limit, however many
/// user properties it carries and however deep its will topic is (up to the 1,024 levels the
/// router is built for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limits_let_through_what_fits() {
    let (server, mut probe) = setup(|_| {}).await;
    let mut connect = with_will(V5, "many", &vec!["l"; 1024].join("/"));
    connect.properties.user_properties = (0..2000)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let (_c, ack) = RawClient::connect_with(server.addr, connect).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let deeper = with_will(V5, "deeper", &vec!["l"; 1025].join("/"));
    assert_eq!(
        connack_reason(&server, deeper).await,
        ReasonCode::QuotaExceeded
    );
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// Strings with a C0 control, DEL or a C1 control, one of each per field.
const CONTROLS: [&str; 4] = ["tab\there", "esc\u{1b}[2J", "del\u{7f}", "nel\u{85}"];

/// Control characters in a client id, a user name or a will topic: v5 CONNACK 0x81, 3.1.1
/// closed without CONNACK. Not counted as a limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_connect_are_malformed() {
    let (server, mut probe) = setup(|_| {}).await;
    for s in CONTROLS {
        let mut by_user = connect_packet(V5, "user");
        by_user.username = Some(s.to_owned());
        let v5 = [
            connect_packet(V5, s),
            by_user,
            with_will(V5, "will", &format!("w/{s}")),
        ];
        for connect in v5 {
            assert_eq!(
                connack_reason(&server, connect).await,
                ReasonCode::MalformedPacket,
                "{s:?}"
            );
        }
        let mut c = RawClient::open(server.addr).await;
        c.send(&Packet::Connect(Box::new(connect_packet(V311, s))))
            .await;
        c.expect_closed_silently().await;
    }
    assert_eq!(server.broker().metrics.connect_limits_exceeded.get(), 0);
    // Printable characters beyond ASCII are fine, U+00A0 (0xC2 0xA0) next to the C1 range too.
    RawClient::connect(server.addr, V5, "caf\u{e9}\u{a0}\u{9f0}").await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// Control characters in a topic name or a filter after CONNECT: v5 DISCONNECT 0x81, 3.1.1
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_topics_are_malformed() {
    let (server, mut probe) = setup(|_| {}).await;
    for s in CONTROLS {
        for version in [V5, V311] {
            let topic = format!("t/{s}");
            let packets = [
                raw_publish(version, topic.as_bytes(), b"x"),
                raw_subscribe(version, 1, topic.as_bytes()),
            ];
            for bytes in packets {
                let (mut c, _) = RawClient::connect(server.addr, version, "ctl").await;
                c.send_raw(&bytes).await.unwrap();
                c.expect_violation_close(ReasonCode::MalformedPacket).await;
            }
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// `allow_control_characters = true`: the same client id and topics are accepted and routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_pass_when_allowed() {
    let (server, mut probe) = setup(|l| l.allow_control_characters = true).await;
    for (i, s) in CONTROLS.into_iter().enumerate() {
        let (mut sub, _) = RawClient::connect(server.addr, V5, s).await;
        let topic = format!("t{i}/{s}");
        sub.subscribe(&topic, QoS::AtMostOnce).await;
        let (mut publisher, _) = RawClient::connect(server.addr, V311, &format!("p{i}")).await;
        publisher
            .send_raw(&raw_publish(V311, topic.as_bytes(), b"through"))
            .await
            .unwrap();
        match sub.expect_packet(WAIT).await {
            Packet::Publish(p) => assert_eq!(p.topic.as_str(), topic),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// Writes `bytes` on a fresh connection from one task while another reads; returns the first
/// packet the broker sent before the connection ended, decoded as `version`.
async fn answer_while_writing(
    server: &TestServer,
    first: Option<Vec<u8>>,
    bytes: Vec<u8>,
    version: ProtocolVersion,
) -> Option<Packet> {
    let mut c = RawClient::open(server.addr).await;
    if let Some(first) = first {
        c.send_raw(&first).await.unwrap();
        c.version = version;
        assert!(matches!(c.expect_packet(WAIT).await, Packet::ConnAck(_)));
    }
    let (stream, mut got) = c.into_parts();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The broker stops reading at the packet's header: most of this is never read.
        let _ = wr.write_all(&bytes).await;
        let _ = wr.shutdown().await;
    });
    let deadline = Instant::now() + WAIT;
    loop {
        got.reserve(4096);
        match tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read_buf(&mut rd, &mut got),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the broker did not close the connection"),
        }
    }
    writer.abort();
    let limits = starling_proto::DecodeLimits::default();
    starling_proto::decode(&mut got, version, &limits).unwrap()
}

/// A client still writing when the broker refuses its packet hears why: the broker shuts its
/// side down and reads what still comes before it closes, instead of resetting the connection
/// (a reset would throw the answer away unread). A CONNECT over `max_connect_packet_size` gets
/// its CONNACK 0x95, a PUBLISH over `max_packet_size` its DISCONNECT 0x95.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reason_reaches_a_client_that_is_still_writing() {
    let (server, mut probe) = setup(|l| l.max_packet_size = 64 * 1024).await;
    let payload = vec![b'p'; 2 << 20];
    for _ in 0..5 {
        // A CONNECT whose declared length covers the payload that follows.
        let mut body = common::field(b"MQTT");
        body.extend([5, 0x02, 0x00, 0x3C, 0x00]);
        body.extend(common::field(b"big-connect"));
        body.extend_from_slice(&payload);
        let got = answer_while_writing(&server, None, frame(0x10, &body), V5).await;
        match got {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::PacketTooLarge),
            other => panic!("expected CONNACK 0x95, got {other:?}"),
        }

        let hello = {
            let mut b = BytesMut::new();
            let connect = Packet::Connect(Box::new(connect_packet(V5, "big-publish")));
            starling_proto::encode(&connect, V5, &mut b).unwrap();
            b.to_vec()
        };
        let publish = raw_publish(V5, b"big", &payload);
        let got = answer_while_writing(&server, Some(hello), publish, V5).await;
        match got {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::PacketTooLarge),
            other => panic!("expected DISCONNECT 0x95, got {other:?}"),
        }
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}
