//! Hostile input against a running broker, over TCP on 127.0.0.1: malformed framing, protocol
//! violations, abusive sizes, slow consumers and random bytes. Each test checks the exact
//! reaction (the reason code sent, or that the socket is closed) and that a well-behaved
//! client on the same broker keeps being served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{
    Probe, RawClient, Recv, TestServer, WAIT, assert_serving, broker_panics, connect_packet, frame,
    publish_packet, raw_publish, raw_subscribe, start_server, varint, vm_hwm_bytes, vm_rss_bytes,
};
use starling_proto::{
    ConnAck, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck,
    TopicName,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A server and a probe client connected to it before any attack.
async fn setup(tune: impl FnOnce(&mut starling_broker::Limits)) -> (TestServer, Probe) {
    let server = start_server(tune).await;
    let mut probe = Probe::new(server.addr).await;
    probe.check().await;
    (server, probe)
}

/// The probe (connected before the attack) and a brand-new client are both still served.
async fn still_serving(server: &TestServer, probe: &mut Probe) {
    probe.check().await;
    assert_serving(server.addr).await;
}

/// A QoS 1 PUBLISH with a topic alias (and maybe an empty topic).
fn aliased_publish(topic: &str, alias: u16, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: if topic.is_empty() {
            TopicName::empty()
        } else {
            TopicName::try_from_str(topic).unwrap()
        },
        packet_id,
        properties: starling_proto::PropertyValues {
            topic_alias: Some(alias),
            ..starling_proto::PropertyValues::default()
        }
        .into(),
        payload: Bytes::from_static(b"aliased"),
    })
}

fn qos2_publish(packet_id: u16, dup: bool, topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicName::try_from_str(topic).unwrap(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

// 1 -------------------------------------------------------------------------------------------

/// Remaining length with a fifth byte (four continuation bytes): malformed. Before CONNECT the
/// socket is closed without a word; after a v5 CONNECT the broker sends DISCONNECT 0x81 first;
/// after a 3.1.1 CONNECT it just closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_length_of_five_bytes_closes() {
    let (server, mut probe) = setup(|_| {}).await;
    let bad = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];

    let mut c = RawClient::open(server.addr).await;
    let _ = c.send_raw(&bad).await;
    c.expect_closed_silently().await;

    let (mut c, _) = RawClient::connect(server.addr, V5, "varint-v5").await;
    let _ = c.send_raw(&bad).await;
    c.expect_disconnect(ReasonCode::MalformedPacket).await;

    let (mut c, _) = RawClient::connect(server.addr, V311, "varint-v311").await;
    let _ = c.send_raw(&bad).await;
    c.expect_closed_silently().await;

    assert!(server.broker().metrics.protocol_errors.get() >= 3);
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 2 -------------------------------------------------------------------------------------------

/// A CONNECT fixed header declaring more than `max_connect_packet_size` is refused from the
/// header alone: the socket closes at once, long before the CONNECT timeout, with no body sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_connect_header_closes_immediately() {
    let (server, mut probe) = setup(|l| l.connect_timeout_secs = 30).await;
    let max = server.broker().limits.max_connect_packet_size;

    for declared in [max, max + 1_000, 200_000_000] {
        let mut header = vec![0x10];
        header.extend(varint(declared));
        let mut c = RawClient::open(server.addr).await;
        let started = Instant::now();
        c.send_raw(&header).await.unwrap();
        let got = c.expect_closed(Duration::from_secs(2)).await;
        assert!(got.is_empty(), "no CONNACK expected, got {got:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 3 -------------------------------------------------------------------------------------------

/// A first packet other than CONNECT (MQTT-3.1.0-1): closed, nothing sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_closes_silently() {
    let (server, mut probe) = setup(|_| {}).await;
    let pingreq = vec![0xC0, 0x00];
    let publish = raw_publish(V311, b"a/b", b"hi");
    let subscribe = raw_subscribe(V311, 1, b"a/#");
    let disconnect = vec![0xE0, 0x00];
    for bytes in [pingreq, publish, subscribe, disconnect] {
        let mut c = RawClient::open(server.addr).await;
        let _ = c.send_raw(&bytes).await;
        c.expect_closed_silently().await;
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 4 -------------------------------------------------------------------------------------------

/// A second CONNECT on a connection (MQTT-3.1.0-2): 3.1.1 closes; v5 DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_is_a_protocol_error() {
    let (server, mut probe) = setup(|_| {}).await;

    let (mut c, _) = RawClient::connect(server.addr, V311, "twice-v311").await;
    c.send(&Packet::Connect(Box::new(connect_packet(
        V311,
        "twice-v311",
    ))))
    .await;
    c.expect_closed_silently().await;

    let (mut c, _) = RawClient::connect(server.addr, V5, "twice-v5").await;
    c.send(&Packet::Connect(Box::new(connect_packet(V5, "twice-v5"))))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;

    // A second CONNECT of another level (v5 connection, 3.1.1 CONNECT) is just as wrong.
    let (mut c, _) = RawClient::connect(server.addr, V5, "twice-mixed").await;
    c.send(&Packet::Connect(Box::new(connect_packet(V311, "other"))))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;

    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 5 -------------------------------------------------------------------------------------------

/// A TCP connection that never sends CONNECT is closed after `connect_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_times_out() {
    let (server, mut probe) = setup(|l| l.connect_timeout_secs = 1).await;
    let started = Instant::now();
    let mut silent = RawClient::open(server.addr).await;
    let mut crowd = Vec::new();
    for _ in 0..50 {
        crowd.push(RawClient::open(server.addr).await);
    }
    // And one that sends half a CONNECT and stops.
    let mut half = RawClient::open(server.addr).await;
    half.send_raw(&[0x10, 0x20, 0x00, 0x04, b'M'])
        .await
        .unwrap();

    let got = silent.expect_closed(Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{got:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    let got = half.expect_closed(Duration::from_secs(3)).await;
    assert!(got.is_empty(), "{got:?}");
    for c in &mut crowd {
        let got = c.expect_closed(Duration::from_secs(3)).await;
        assert!(got.is_empty(), "{got:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The probe connected before is not subject to the CONNECT timeout.
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 6 -------------------------------------------------------------------------------------------

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
                if version.is_v5() {
                    c.expect_disconnect(ReasonCode::MalformedPacket).await;
                } else {
                    c.expect_closed_silently().await;
                }
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
            if version.is_v5() {
                c.expect_disconnect(ReasonCode::ProtocolError).await;
            } else {
                c.expect_closed_silently().await;
            }
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

// 12 ------------------------------------------------------------------------------------------

/// More unacknowledged QoS 2 PUBLISHes than the Receive Maximum advertised in CONNACK:
/// DISCONNECT 0x93 (MQTT-3.3.4-7, -8) after a PUBREC for each one within the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded() {
    let (server, mut probe) = setup(|_| {}).await;
    let (mut c, ack) = RawClient::connect(server.addr, V5, "greedy").await;
    let rm = ack
        .properties
        .receive_maximum
        .expect("CONNACK advertises Receive Maximum");
    let packets: Vec<Packet> = (1..=rm + 1)
        .map(|pid| qos2_publish(pid, false, "greedy/t", b"x"))
        .collect();
    c.send_all(&packets).await;
    let got = c.expect_closed(WAIT).await;
    let (last, recs) = got.split_last().expect("some packets");
    assert_eq!(
        recs.len(),
        usize::from(rm),
        "one PUBREC per accepted PUBLISH"
    );
    for (i, p) in recs.iter().enumerate() {
        match p {
            Packet::PubRec(a) => {
                assert_eq!(usize::from(a.packet_id), i + 1);
                assert!(!a.reason.is_error(), "{a:?}");
            }
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    match last {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::ReceiveMaximumExceeded),
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    assert_eq!(server.broker().metrics.receive_maximum_exceeded.get(), 1);
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 13 ------------------------------------------------------------------------------------------

/// A QoS 2 packet id reused before PUBREL: answered with PUBREC again, and the message is not
/// delivered a second time (MQTT-4.3.3-10); PUBREL then gets PUBCOMP; after that the id is free
/// and a new message with it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_packet_id_reuse_before_pubrel() {
    let (server, mut probe) = setup(|_| {}).await;
    for (version, dup) in [(V5, false), (V5, true), (V311, false), (V311, true)] {
        let tag = format!("{}-{dup}", version.level());
        let topic = format!("qos2/{tag}");
        let (mut sub, _) = RawClient::connect(server.addr, V5, &format!("q2sub-{tag}")).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        let (mut publ, _) = RawClient::connect(server.addr, version, &format!("q2pub-{tag}")).await;

        let expect_pubrec = |p: Packet| match p {
            Packet::PubRec(a) => {
                assert_eq!(a.packet_id, 7);
                assert!(!a.reason.is_error(), "{a:?}");
            }
            other => panic!("expected PUBREC 7, got {other:?}"),
        };
        let expect_delivery =
            async |sub: &mut RawClient, payload: &[u8]| match sub.expect_packet(WAIT).await {
                Packet::Publish(p) => {
                    assert_eq!(&p.payload[..], payload);
                    sub.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            };

        publ.send(&qos2_publish(7, false, &topic, b"one")).await;
        expect_pubrec(publ.expect_packet(WAIT).await);
        expect_delivery(&mut sub, b"one").await;

        publ.send(&qos2_publish(7, dup, &topic, b"two")).await;
        expect_pubrec(publ.expect_packet(WAIT).await);
        sub.expect_silence(Duration::from_millis(300)).await;

        publ.send(&Packet::PubRel(PubAck::new(7))).await;
        match publ.expect_packet(WAIT).await {
            Packet::PubComp(a) => {
                assert_eq!(a.packet_id, 7);
                assert_eq!(a.reason, ReasonCode::Success);
            }
            other => panic!("expected PUBCOMP 7, got {other:?}"),
        }
        sub.expect_silence(Duration::from_millis(100)).await;

        publ.send(&qos2_publish(7, false, &topic, b"three")).await;
        expect_pubrec(publ.expect_packet(WAIT).await);
        expect_delivery(&mut sub, b"three").await;
        publ.send(&Packet::PubRel(PubAck::new(7))).await;
        assert!(matches!(
            publ.expect_packet(WAIT).await,
            Packet::PubComp(PubAck { packet_id: 7, .. })
        ));
    }
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 14 ------------------------------------------------------------------------------------------

const FLOOD: usize = 20_000;
const FLOOD_PAYLOAD: usize = 1024;

/// A slow consumer (QoS 1 subscription, never reads its socket) while a publisher floods 20,000
/// QoS 1 messages of 1 KiB: the publisher never stalls (every PUBACK arrives in bounded time),
/// a second subscriber that reads keeps receiving, the slow session's queue stays bounded
/// (drops counted in `dropped_queue_full`) and the process's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_stall_the_broker() {
    let (server, mut probe) = setup(|l| {
        l.max_queued_messages = 100;
        l.max_queued_bytes = 1024 * 1024;
    })
    .await;
    let addr = server.addr;
    let topic = "flood/t";
    let rss_before = vm_rss_bytes().expect("VmRSS readable");

    let (mut slow, _) = RawClient::connect(addr, V5, "flood-slow").await;
    slow.subscribe(topic, QoS::AtLeastOnce).await;
    let (mut reader, _) = RawClient::connect(addr, V5, "flood-reader").await;
    reader.subscribe(topic, QoS::AtLeastOnce).await;
    let (mut publ, ack) = RawClient::connect(addr, V5, "flood-pub").await;
    let window = usize::from(ack.properties.receive_maximum.unwrap_or(u16::MAX)).min(100);

    let reader_task = tokio::spawn(async move {
        let mut got = 0usize;
        let mut last_seq = u32::MAX;
        let mut acks = BytesMut::new();
        loop {
            let first = match reader.recv(Duration::from_secs(5)).await {
                Recv::Packet(p) => p,
                Recv::Timeout => break,
                Recv::Closed => panic!("reader disconnected after {got} messages"),
            };
            let mut next = Some(first);
            while let Some(p) = next {
                match p {
                    Packet::Publish(p) => {
                        assert_eq!(p.payload.len(), FLOOD_PAYLOAD);
                        got += 1;
                        last_seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                        starling_proto::encode(
                            &Packet::PubAck(PubAck::new(p.packet_id)),
                            V5,
                            &mut acks,
                        )
                        .unwrap();
                    }
                    other => panic!("reader: unexpected {other:?}"),
                }
                next = reader.try_decode();
            }
            reader.send_raw(&acks).await.unwrap();
            acks.clear();
            // Queues drop the oldest, so the last message published always comes last.
            if last_seq as usize == FLOOD - 1 {
                break;
            }
        }
        (got, last_seq)
    });

    let started = Instant::now();
    let mut payload = vec![0x5A; FLOOD_PAYLOAD];
    let mut sent = 0usize;
    let mut acked = 0usize;
    let mut out = BytesMut::new();
    let mut next_id = 0u16;
    while acked < FLOOD {
        while sent < FLOOD && sent - acked < window {
            next_id = next_id.checked_add(1).unwrap_or(1);
            payload[..4].copy_from_slice(&(sent as u32).to_be_bytes());
            let p = publish_packet(topic, QoS::AtLeastOnce, next_id, &payload);
            starling_proto::encode(&p, V5, &mut out).unwrap();
            sent += 1;
        }
        if !out.is_empty() {
            publ.send_raw(&out).await.unwrap();
            out.clear();
        }
        match publ.recv(Duration::from_secs(5)).await {
            Recv::Packet(Packet::PubAck(a)) => {
                assert!(!a.reason.is_error(), "{a:?}");
                acked += 1;
            }
            other => panic!("publisher stalled after {acked} PUBACKs: {other:?}"),
        }
        while let Some(p) = publ.try_decode() {
            match p {
                Packet::PubAck(_) => acked += 1,
                other => panic!("publisher: unexpected {other:?}"),
            }
        }
    }
    let publish_time = started.elapsed();
    let (received, last_seq) = reader_task.await.unwrap();
    let metrics = &server.broker().metrics;
    let dropped = metrics.dropped_queue_full.get();
    let rss_after = vm_rss_bytes().expect("VmRSS readable");
    let peak = vm_hwm_bytes().expect("VmHWM readable");
    let growth = rss_after.max(peak).saturating_sub(rss_before);
    eprintln!(
        "slow consumer: {FLOOD} published in {publish_time:?}, reader received {received}, \
         dropped_queue_full {dropped}, RSS {} -> {} MiB (peak {} MiB)",
        rss_before >> 20,
        rss_after >> 20,
        peak >> 20
    );
    assert!(
        publish_time < Duration::from_secs(20),
        "publisher took {publish_time:?}"
    );
    assert!(dropped > 0, "the slow session's queue never overflowed");
    // The slow session holds at most its inflight window plus its queue; the rest was dropped.
    let limits = &server.broker().limits;
    let slow_cap = usize::from(limits.max_inflight) + limits.max_queued_messages;
    assert!(
        dropped as usize >= FLOOD - slow_cap,
        "dropped {dropped}, reader received {received}"
    );
    // Queues drop the oldest, so a subscriber that keeps reading gets the newest messages
    // whatever was dropped on the way: it was served to the end.
    assert_eq!(
        last_seq as usize,
        FLOOD - 1,
        "the reading subscriber did not get the last message"
    );
    assert!(
        received >= FLOOD / 4,
        "the reading subscriber got only {received} of {FLOOD}"
    );
    // The peak covers the whole flood, not only its end.
    assert!(
        growth < 100 * 1024 * 1024,
        "RSS grew by up to {} MiB",
        growth >> 20
    );

    // The slow consumer is still connected and, once it reads, gets what was kept for it.
    let mut kept = 0;
    while let Recv::Packet(p) = slow.recv(Duration::from_millis(500)).await {
        match p {
            Packet::Publish(p) => {
                kept += 1;
                slow.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
            }
            other => panic!("slow consumer: unexpected {other:?}"),
        }
    }
    assert!(kept > 0 && kept <= slow_cap, "slow consumer got {kept}");

    drop((slow, publ));
    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 15 ------------------------------------------------------------------------------------------

/// A PUBLISH of exactly the advertised Maximum Packet Size is accepted; one byte more gets
/// DISCONNECT 0x95 and the close (spec 3.2.2.3.6, 4.13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_over_max_packet_size() {
    let (server, mut probe) = setup(|l| l.max_packet_size = 4096).await;
    let (mut c, ack) = RawClient::connect(server.addr, V5, "too-big").await;
    let max = ack
        .properties
        .maximum_packet_size
        .expect("CONNACK advertises Maximum Packet Size") as usize;
    assert_eq!(max, 4096);

    let sized = |total: usize, pid: u16| {
        let mut payload_len = total;
        loop {
            let p = publish_packet("big/t", QoS::AtLeastOnce, pid, &vec![b'x'; payload_len]);
            let Packet::Publish(ref publish) = p else {
                unreachable!()
            };
            let len = starling_proto::publish_len(publish, V5).unwrap();
            if len == total {
                return p;
            }
            payload_len -= len - total;
        }
    };
    c.send(&sized(max, 1)).await;
    match c.expect_packet(WAIT).await {
        Packet::PubAck(a) => assert!(!a.reason.is_error(), "{a:?}"),
        other => panic!("a PUBLISH of exactly the maximum was refused: {other:?}"),
    }
    c.send(&sized(max + 1, 2)).await;
    c.expect_disconnect(ReasonCode::PacketTooLarge).await;

    // Only the fixed header of a far larger packet: refused without waiting for the body.
    let (mut c, _) = RawClient::connect(server.addr, V5, "too-big-2").await;
    let mut header = vec![0x32];
    header.extend(varint(100_000_000));
    c.send_raw(&header).await.unwrap();
    c.expect_disconnect(ReasonCode::PacketTooLarge).await;

    still_serving(&server, &mut probe).await;
    server.shutdown().await;
}

// 16 ------------------------------------------------------------------------------------------

/// xorshift64: deterministic bytes without a dependency.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

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
