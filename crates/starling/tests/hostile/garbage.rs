//! Random bytes, unsupported protocol levels, keep-alive, the client's Maximum Packet Size and malformed options and properties.

use super::*;

/// Seed `seed`'s stream: even seeds pure noise; odd seeds a run of packets with random type
/// bytes, a correct remaining length and a random body, so the body decoders see it.
fn garbage(seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    if seed.is_multiple_of(2) {
        let n = 64 + rng.below(4096);
        return rng.bytes(n);
    }
    let mut out = Vec::new();
    for _ in 0..(8 + rng.below(32)) {
        let first = rng.next() as u8;
        let len = rng.below(300);
        out.extend(frame(first, &rng.bytes(len)));
    }
    out
}

/// Ten seeded random byte streams, each on its own connection, sent before any CONNECT and
/// after a valid CONNECT (v5 and 3.1.1): whatever the broker answers decodes, no panic is
/// raised in the broker, and the probe client keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_streams() {
    let (server, mut probe) = setup(|l| l.connect_timeout_secs = 2).await;
    let panics_before = broker_panics();
    let addr = server.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..10u64 {
        for mode in 0..3u8 {
            tasks.spawn(async move {
                let bytes = garbage(seed);
                let mut c = match mode {
                    0 => RawClient::open(addr).await,
                    1 => {
                        RawClient::connect(addr, V5, &format!("garbage5-{seed}"))
                            .await
                            .0
                    }
                    _ => {
                        RawClient::connect(addr, V311, &format!("garbage3-{seed}"))
                            .await
                            .0
                    }
                };
                let _ = c.send_raw(&bytes).await;
                // Drain whatever comes back (it must decode) until close or a quiet moment.
                while let Recv::Packet(_) = c.recv(Duration::from_millis(500)).await {}
                // Then hang up abruptly, mid-packet if the garbage left one open.
                let (mut stream, _) = c.into_parts();
                let _ = stream.shutdown().await;
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Let the broker process the hang-ups before looking for panics.
    probe.check().await;
    assert_eq!(broker_panics(), panics_before, "the broker panicked");
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// Beyond the list: reactions the spec pins down for other hostile input -------------------------

/// A hand-made CONNECT: protocol name, level, clean start, keep-alive 60, client id "x" (and
/// an empty property list for level 5).
fn raw_connect(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = common::field(name);
    body.extend([level, 0x02, 0x00, 0x3C]);
    if level == 5 {
        body.push(0);
    }
    body.extend(common::field(b"x"));
    frame(0x10, &body)
}

/// An unsupported protocol level gets a 3.1.1-format CONNACK with return code 0x01, then the
/// close (MQTT-3.1.2-2); an unknown protocol name is closed without a CONNACK (MQTT-3.1.2-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_or_name() {
    let (server, mut probe) = setup(|_| {}).await;
    for (name, level) in [
        (&b"MQTT"[..], 6u8),
        (b"MQTT", 0),
        (b"MQTT", 3),
        (b"MQIsdp", 4),
    ] {
        let mut c = RawClient::open(server.addr).await;
        c.send_raw(&raw_connect(name, level)).await.unwrap();
        let got = c.expect_closed_raw(WAIT).await;
        assert_eq!(got, [0x20, 0x02, 0x00, 0x01], "name {name:?} level {level}");
    }
    for name in [&b"MQTX"[..], b"", b"mqtt"] {
        let mut c = RawClient::open(server.addr).await;
        c.send_raw(&raw_connect(name, 4)).await.unwrap();
        c.expect_closed_silently().await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A client that goes silent after CONNECT (keep-alive 1 s) is disconnected after one and a
/// half times the keep-alive (MQTT-3.1.2-22): v5 with DISCONNECT 0x8D, 3.1.1 by closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_after_connect_hits_keep_alive() {
    let (server, mut probe) = setup(|_| {}).await;
    let mut connect = connect_packet(V5, "keepalive-v5");
    connect.keep_alive = 1;
    let (mut v5, ack) = RawClient::connect_with(server.addr, connect).await;
    assert_eq!(ack.properties.server_keep_alive, None);
    let mut connect = connect_packet(V311, "keepalive-v311");
    connect.keep_alive = 1;
    let (mut v3, _) = RawClient::connect_with(server.addr, connect).await;
    let started = Instant::now();

    v5.expect_disconnect(ReasonCode::KeepAliveTimeout).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000),
        "disconnected too early: {elapsed:?}"
    );
    v3.expect_closed_silently().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A keep-alive deadline far enough away is left to the broker-wide deadline wheel, which
/// wakes the connection shortly before it: a PINGREQ moves the deadline later without the
/// connection being closed at the first one, and the later deadline is still enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_moved_later_is_enforced_at_the_later_deadline() {
    let (server, mut probe) = setup(|_| {}).await;
    let mut connect = connect_packet(V5, "keepalive-moved");
    connect.keep_alive = 2;
    let (mut c, _) = RawClient::connect_with(server.addr, connect).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.send(&Packet::PingReq).await;
    assert!(matches!(c.expect_packet(WAIT).await, Packet::PingResp));
    // The first deadline (3 s after CONNECT) passes; the one the PINGREQ set is 3 s after it.
    let pinged = Instant::now();
    // Still open 2 s on (the first deadline has passed), then closed within WAIT.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    c.expect_disconnect(ReasonCode::KeepAliveTimeout).await;
    let elapsed = pinged.elapsed();
    assert!(
        elapsed >= Duration::from_millis(3000),
        "disconnected before the moved deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(4500),
        "too late: {elapsed:?}"
    );
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A v5 subscriber that declares a small Maximum Packet Size is never sent a larger packet;
/// the message is discarded for it (MQTT-3.1.2-24, -25) and later ones still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_maximum_packet_size_is_respected() {
    let (server, mut probe) = setup(|_| {}).await;
    let mut connect = connect_packet(V5, "tiny-max");
    connect.properties.maximum_packet_size = Some(64);
    let (mut sub, _) = RawClient::connect_with(server.addr, connect).await;
    sub.subscribe("tiny/t", QoS::AtLeastOnce).await;
    let (mut publ, _) = RawClient::connect(server.addr, V5, "tiny-pub").await;
    publ.send(&publish_packet("tiny/t", QoS::AtLeastOnce, 1, &[b'x'; 500]))
        .await;
    assert!(matches!(publ.expect_packet(WAIT).await, Packet::PubAck(_)));
    publ.send(&publish_packet("tiny/t", QoS::AtLeastOnce, 2, b"small"))
        .await;
    assert!(matches!(publ.expect_packet(WAIT).await, Packet::PubAck(_)));
    match sub.expect_packet(WAIT).await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"small"),
        other => panic!("expected the small PUBLISH, got {other:?}"),
    }
    assert_eq!(server.broker().metrics.dropped_too_large.get(), 1);
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// SUBSCRIBE options with Retain Handling 3: v5 Protocol Error, DISCONNECT 0x82 (spec 3.8.3.1).
/// 3.1.1 options with reserved bits or QoS 3: malformed, closed (MQTT-3.8.3-4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_option_violations() {
    let (server, mut probe) = setup(|_| {}).await;
    let mut bytes = raw_subscribe(V5, 1, b"opt/t");
    *bytes.last_mut().unwrap() = 0x31;
    let (mut c, _) = RawClient::connect(server.addr, V5, "opt-rh3").await;
    c.send_raw(&bytes).await.unwrap();
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    for options in [0x03, 0x05, 0x81] {
        let mut bytes = raw_subscribe(V311, 1, b"opt/t");
        *bytes.last_mut().unwrap() = options;
        let (mut c, _) = RawClient::connect(server.addr, V311, "opt-v311").await;
        c.send_raw(&bytes).await.unwrap();
        c.expect_closed_silently().await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// Reserved bits 6-7 of v5 subscription options: "The Server MUST treat a SUBSCRIBE packet as
/// malformed if any of Reserved bits in the Payload are non-zero" (MQTT-3.8.3-5): DISCONNECT
/// 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reserved_option_bits_are_malformed() {
    let (server, mut probe) = setup(|_| {}).await;
    for options in [0x41, 0x81, 0xC1] {
        let mut bytes = raw_subscribe(V5, 1, b"opt/t");
        *bytes.last_mut().unwrap() = options;
        let (mut c, _) = RawClient::connect(server.addr, V5, "opt-reserved").await;
        c.send_raw(&bytes).await.unwrap();
        c.expect_disconnect(ReasonCode::MalformedPacket).await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// Maximum QoS 3 in v5 subscription options: "It is a Protocol Error if the Maximum QoS field
/// has the value 3" (spec 3.8.3.1): DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_maximum_qos_3_is_a_protocol_error() {
    let (server, mut probe) = setup(|_| {}).await;
    let mut bytes = raw_subscribe(V5, 1, b"opt/t");
    *bytes.last_mut().unwrap() = 0x03;
    let (mut c, _) = RawClient::connect(server.addr, V5, "opt-qos3").await;
    c.send_raw(&bytes).await.unwrap();
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A property that is not valid for the packet type (Session Expiry Interval in PUBLISH, Topic
/// Alias in SUBSCRIBE): "a Malformed Packet ... use a DISCONNECT packet with Reason Code 0x81"
/// (spec 2.2.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_not_valid_for_packet_is_malformed() {
    let (server, mut probe) = setup(|_| {}).await;
    // PUBLISH QoS 0, topic "p/t", properties: Session Expiry Interval 10.
    let mut body = common::field(b"p/t");
    body.extend([5, 0x11, 0, 0, 0, 10]);
    body.extend(b"x");
    let publish = frame(0x30, &body);
    // SUBSCRIBE id 1, properties: Topic Alias 1, filter "p/t" QoS 0.
    let mut body = vec![0, 1, 3, 0x23, 0, 1];
    body.extend(common::field(b"p/t"));
    body.push(0);
    let subscribe = frame(0x82, &body);
    for bytes in [publish, subscribe] {
        let (mut c, _) = RawClient::connect(server.addr, V5, "bad-property").await;
        c.send_raw(&bytes).await.unwrap();
        c.expect_disconnect(ReasonCode::MalformedPacket).await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

/// A v5 PUBLISH with a zero-length topic and no Topic Alias: "It is a Protocol Error if the
/// Topic Name is zero length and there is no Topic Alias" (spec 3.3.2.1): DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_topic_without_alias_is_a_protocol_error() {
    let (server, mut probe) = setup(|_| {}).await;
    let (mut c, _) = RawClient::connect(server.addr, V5, "empty-topic").await;
    c.send_raw(&raw_publish(V5, b"", b"x")).await.unwrap();
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}
