//! Hand-written byte vectors for every packet type (MQTT 3.1, 3.1.1 and 5.0 where the
//! encodings differ): each decodes to the expected value and encodes back byte for byte.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::field_reassign_with_default
)]

use bytes::{Bytes, BytesMut};
use starling_proto::*;

use ProtocolVersion::{V5, V31, V311};

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, &DecodeLimits::default())
        .unwrap_or_else(|e| panic!("{bytes:02X?}: {e}"))
        .expect("whole packet");
    assert!(buf.is_empty(), "left over: {buf:02X?}");
    packet
}

fn encode_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap();
    assert_eq!(encoded_len(packet, version).unwrap(), buf.len());
    buf.to_vec()
}

/// Decodes `bytes` to `expected` and encodes `expected` back to exactly `bytes`.
fn check(bytes: &[u8], version: ProtocolVersion, expected: Packet) {
    assert_eq!(decode_all(bytes, version), expected, "{bytes:02X?}");
    assert_eq!(encode_vec(&expected, version), bytes, "{expected:?}");
}

fn name(s: &str) -> TopicName {
    TopicName::try_from_str(s).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from_str(s).unwrap()
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
        bridge: false,
    }
}

#[test]
fn connect_v311() {
    let bytes = b"\x10\x0F\x00\x04MQTT\x04\x02\x00\x3C\x00\x03abc";
    check(bytes, V311, Packet::Connect(Box::new(connect(V311))));
    // CONNECT carries its own level, whatever the connection's version is assumed to be.
    assert_eq!(
        decode_all(bytes, V5),
        Packet::Connect(Box::new(connect(V311)))
    );
}

#[test]
fn connect_v31_mqisdp() {
    let bytes = b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x03abc";
    check(bytes, V31, Packet::Connect(Box::new(connect(V31))));
    assert_eq!(
        decode_all(bytes, V311),
        Packet::Connect(Box::new(connect(V31)))
    );
}

#[test]
fn connect_v5_properties() {
    let bytes =
        b"\x10\x18\x00\x04MQTT\x05\x02\x00\x3C\x08\x11\x00\x00\x00\x0A\x21\x00\x14\x00\x03abc";
    let mut c = connect(V5);
    c.properties.session_expiry_interval = Some(10);
    c.properties.receive_maximum = Some(20);
    check(bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v311_will_username_password() {
    let bytes =
        b"\x10\x1D\x00\x04MQTT\x04\xEE\x00\x0A\x00\x01c\x00\x03w/t\x00\x03bye\x00\x01u\x00\x01p";
    let c = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(Will {
            topic: name("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::default(),
        bridge: false,
    };
    check(bytes, V311, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_will_properties_and_password_alone() {
    let bytes = b"\x10\x1E\x00\x04MQTT\x05\x46\x00\x00\x00\x00\x01c\x07\x01\x01\x18\x00\x00\x00\x05\x00\x01t\x00\x00\x00\x01p";
    let mut will_props = Properties::default();
    will_props.payload_format_indicator = Some(1);
    will_props.will_delay_interval = Some(5);
    let c = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: Some(Will {
            topic: name("t"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: will_props,
        }),
        username: None,
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::default(),
        bridge: false,
    };
    check(bytes, V5, Packet::Connect(Box::new(c)));
}

fn connack(session_present: bool, reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        reason,
        properties: Properties::default(),
    })
}

#[test]
fn connack_v3() {
    for version in [V31, V311] {
        check(
            b"\x20\x02\x00\x00",
            version,
            connack(false, ReasonCode::Success),
        );
        if version == V311 {
            check(
                b"\x20\x02\x01\x00",
                version,
                connack(true, ReasonCode::Success),
            );
        }
        check(
            b"\x20\x02\x00\x05",
            version,
            connack(false, ReasonCode::NotAuthorized),
        );
        check(
            b"\x20\x02\x00\x01",
            version,
            connack(false, ReasonCode::UnsupportedProtocolVersion),
        );
    }
    // MQTT 3.1's acknowledge flags are all reserved: no Session Present bit.
    assert_eq!(
        encode_vec(&connack(true, ReasonCode::Success), V31),
        b"\x20\x02\x00\x00"
    );
    // MQTT 5 codes are translated to 3.x return codes.
    assert_eq!(
        encode_vec(&connack(false, ReasonCode::Banned), V311),
        b"\x20\x02\x00\x05"
    );
    assert_eq!(
        encode_vec(&connack(false, ReasonCode::ServerBusy), V311),
        b"\x20\x02\x00\x03"
    );
}

#[test]
fn connack_v5() {
    check(
        b"\x20\x03\x00\x00\x00",
        V5,
        connack(false, ReasonCode::Success),
    );
    check(
        b"\x20\x03\x00\x87\x00",
        V5,
        connack(false, ReasonCode::NotAuthorized),
    );
    let mut props = Properties::default();
    props.assigned_client_identifier = Some("x".into());
    props.topic_alias_maximum = Some(10);
    check(
        b"\x20\x0A\x01\x00\x07\x12\x00\x01x\x22\x00\x0A",
        V5,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: props,
        }),
    );
}

fn publish(qos: QoS, packet_id: u16, topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: if topic.is_empty() {
            TopicName::empty()
        } else {
            name(topic)
        },
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

#[test]
fn publish_v311() {
    for version in [V31, V311] {
        check(
            b"\x30\x07\x00\x03a/bhi",
            version,
            Packet::Publish(publish(QoS::AtMostOnce, 0, "a/b", b"hi")),
        );
        let mut p = publish(QoS::AtLeastOnce, 10, "a/b", b"hi");
        p.dup = true;
        p.retain = true;
        check(
            b"\x3B\x09\x00\x03a/b\x00\x0Ahi",
            version,
            Packet::Publish(p),
        );
        check(
            b"\x34\x06\x00\x01x\xFF\xFF\x00",
            version,
            Packet::Publish(publish(QoS::ExactlyOnce, 0xFFFF, "x", b"\x00")),
        );
    }
}

#[test]
fn publish_v5() {
    check(
        b"\x30\x08\x00\x03a/b\x00hi",
        V5,
        Packet::Publish(publish(QoS::AtMostOnce, 0, "a/b", b"hi")),
    );
    let mut p = publish(QoS::ExactlyOnce, 7, "", b"x");
    p.properties.topic_alias = Some(5);
    check(
        b"\x34\x09\x00\x00\x00\x07\x03\x23\x00\x05x",
        V5,
        Packet::Publish(p),
    );
    let mut p = publish(QoS::AtMostOnce, 0, "a", b"p");
    p.properties.content_type = Some("t".into());
    p.properties.user_properties = vec![("k".into(), "v".into())];
    check(
        b"\x30\x10\x00\x01a\x0B\x03\x00\x01t\x26\x00\x01k\x00\x01vp",
        V5,
        Packet::Publish(p),
    );
}

#[test]
fn publish_zero_copy_payload() {
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V311, &DecodeLimits::default()).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7);
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, start + 4);
}

#[test]
fn publish_header_then_payload() {
    let mut p = publish(QoS::AtLeastOnce, 3, "a/b", b"payload");
    p.properties.message_expiry_interval = Some(9);
    for version in [V31, V311, V5] {
        let full = encode_vec(&Packet::Publish(p.clone()), version);
        let mut header = BytesMut::new();
        encode_publish_header(&p, version, &mut header).unwrap();
        header.extend_from_slice(&p.payload);
        assert_eq!(header.to_vec(), full);
        assert_eq!(publish_len(&p, version).unwrap(), full.len());
    }
}

fn acks(id: u16, reason: ReasonCode) -> [Packet; 4] {
    let a = PubAck::with_reason(id, reason);
    [
        Packet::PubAck(a.clone()),
        Packet::PubRec(a.clone()),
        Packet::PubRel(a.clone()),
        Packet::PubComp(a),
    ]
}

#[test]
fn pub_acks_v3_and_v5_short_form() {
    let firsts = [0x40, 0x50, 0x62, 0x70];
    for version in [V31, V311, V5] {
        for (first, packet) in firsts.iter().zip(acks(0x0102, ReasonCode::Success)) {
            check(&[*first, 0x02, 0x01, 0x02], version, packet);
        }
    }
    // 3.x has no reason code: it is dropped when encoding.
    let failed = Packet::PubAck(PubAck::with_reason(1, ReasonCode::QuotaExceeded));
    assert_eq!(encode_vec(&failed, V311), b"\x40\x02\x00\x01");
}

#[test]
fn pub_acks_v5_reason_and_properties() {
    check(
        b"\x40\x03\x00\x01\x10",
        V5,
        Packet::PubAck(PubAck::with_reason(1, ReasonCode::NoMatchingSubscribers)),
    );
    check(
        b"\x62\x03\x00\x03\x92",
        V5,
        Packet::PubRel(PubAck::with_reason(3, ReasonCode::PacketIdentifierNotFound)),
    );
    let mut a = PubAck::with_reason(1, ReasonCode::NoMatchingSubscribers);
    a.properties.reason_string = Some("r".into());
    check(
        b"\x50\x08\x00\x01\x10\x04\x1F\x00\x01r",
        V5,
        Packet::PubRec(a),
    );
    let mut a = PubAck::new(2);
    a.properties.user_properties = vec![("a".into(), "b".into())];
    check(
        b"\x70\x0B\x00\x02\x00\x07\x26\x00\x01a\x00\x01b",
        V5,
        Packet::PubComp(a),
    );
}

#[test]
fn pub_acks_v5_long_forms_decode() {
    // Reason code with an empty property list is equally valid; it re-encodes short.
    assert_eq!(
        decode_all(b"\x40\x04\x00\x01\x00\x00", V5),
        Packet::PubAck(PubAck::new(1))
    );
    assert_eq!(
        decode_all(b"\x40\x03\x00\x01\x00", V5),
        Packet::PubAck(PubAck::new(1))
    );
}

#[test]
fn subscribe() {
    let options = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    let s = Subscribe {
        packet_id: 10,
        filters: vec![
            (filter("a/b"), options(QoS::AtLeastOnce)),
            (filter("#"), options(QoS::ExactlyOnce)),
        ],
        properties: Properties::default(),
    };
    for version in [V31, V311] {
        check(
            b"\x82\x0C\x00\x0A\x00\x03a/b\x01\x00\x01#\x02",
            version,
            Packet::Subscribe(s.clone()),
        );
    }
    let mut props = Properties::default();
    props.subscription_identifiers = vec![5];
    let s5 = Subscribe {
        packet_id: 10,
        filters: vec![(
            filter("a/b"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        )],
        properties: props,
    };
    check(
        b"\x82\x0B\x00\x0A\x02\x0B\x05\x00\x03a/b\x2D",
        V5,
        Packet::Subscribe(s5),
    );
    let shared = Subscribe {
        packet_id: 1,
        filters: vec![(filter("$share/g/a/#"), options(QoS::AtMostOnce))],
        properties: Properties::default(),
    };
    check(
        b"\x82\x12\x00\x01\x00\x00\x0C$share/g/a/#\x00",
        V5,
        Packet::Subscribe(shared),
    );
}

#[test]
fn suback() {
    let reasons = vec![
        ReasonCode::Success,
        ReasonCode::GrantedQoS1,
        ReasonCode::UnspecifiedError,
    ];
    let s = SubAck {
        packet_id: 10,
        reasons,
        properties: Properties::default(),
    };
    for version in [V31, V311] {
        check(
            b"\x90\x05\x00\x0A\x00\x01\x80",
            version,
            Packet::SubAck(s.clone()),
        );
    }
    let s5 = SubAck {
        packet_id: 10,
        reasons: vec![
            ReasonCode::GrantedQoS2,
            ReasonCode::NotAuthorized,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
        properties: Properties::default(),
    };
    check(
        b"\x90\x06\x00\x0A\x00\x02\x87\xA2",
        V5,
        Packet::SubAck(s5.clone()),
    );
    // Every 3.x failure is 0x80.
    assert_eq!(
        encode_vec(&Packet::SubAck(s5), V311),
        b"\x90\x05\x00\x0A\x02\x80\x80"
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    let u = Unsubscribe {
        packet_id: 11,
        filters: vec![filter("a/b")],
        properties: Properties::default(),
    };
    check(
        b"\xA2\x07\x00\x0B\x00\x03a/b",
        V311,
        Packet::Unsubscribe(u.clone()),
    );
    check(
        b"\xA2\x08\x00\x0B\x00\x00\x03a/b",
        V5,
        Packet::Unsubscribe(u),
    );
    let ack = UnsubAck {
        packet_id: 11,
        reasons: vec![],
        properties: Properties::default(),
    };
    check(b"\xB0\x02\x00\x0B", V311, Packet::UnsubAck(ack));
    let ack5 = UnsubAck {
        packet_id: 11,
        reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        properties: Properties::default(),
    };
    check(
        b"\xB0\x05\x00\x0B\x00\x00\x11",
        V5,
        Packet::UnsubAck(ack5.clone()),
    );
    // 3.x UNSUBACK has no payload.
    assert_eq!(
        encode_vec(&Packet::UnsubAck(ack5), V311),
        b"\xB0\x02\x00\x0B"
    );
}

#[test]
fn ping() {
    for version in [V31, V311, V5] {
        check(b"\xC0\x00", version, Packet::PingReq);
        check(b"\xD0\x00", version, Packet::PingResp);
    }
}

#[test]
fn disconnect() {
    for version in [V31, V311, V5] {
        check(
            b"\xE0\x00",
            version,
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
        );
    }
    // A reason without properties is written with a zero property length (rumqttc cannot
    // read the one-byte form); the one-byte form is still accepted.
    check(
        b"\xE0\x02\x04\x00",
        V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
    );
    assert_eq!(
        decode_all(b"\xE0\x01\x04", V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill))
    );
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(0);
    check(
        b"\xE0\x07\x00\x05\x11\x00\x00\x00\x00",
        V5,
        Packet::Disconnect(d),
    );
    assert_eq!(
        encode_vec(
            &Packet::Disconnect(Disconnect::new(ReasonCode::ServerBusy)),
            V311
        ),
        b"\xE0\x00"
    );
    assert_eq!(
        decode_all(b"\xE0\x02\x00\x00", V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::Success))
    );
}

#[test]
fn auth() {
    let ok = Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    };
    check(b"\xF0\x00", V5, Packet::Auth(ok.clone()));
    let mut props = Properties::default();
    props.authentication_method = Some("SCR".into());
    props.authentication_data = Some(Bytes::from_static(b"\x01\x02"));
    let cont = Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: props,
    };
    check(
        b"\xF0\x0D\x18\x0B\x15\x00\x03SCR\x16\x00\x02\x01\x02",
        V5,
        Packet::Auth(cont),
    );
    let reauth = Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: Properties::default(),
    };
    check(b"\xF0\x02\x19\x00", V5, Packet::Auth(reauth));
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&Packet::Auth(ok.clone()), V311, &mut buf),
        Err(EncodeError::NotAvailable)
    );
    assert!(buf.is_empty());
    assert_eq!(
        encoded_len(&Packet::Auth(ok), V311),
        Err(EncodeError::NotAvailable)
    );
}

#[test]
fn encode_limits() {
    let mut c = connect(V311);
    c.client_id = "x".repeat(65_536);
    let packet = Packet::Connect(Box::new(c));
    let mut buf = BytesMut::new();
    assert_eq!(
        encode(&packet, V311, &mut buf),
        Err(EncodeError::FieldTooLong(65_536))
    );
    assert!(buf.is_empty());
    let mut p = publish(QoS::AtMostOnce, 0, "t", b"");
    p.payload = Bytes::from(vec![0u8; 268_435_455]);
    assert_eq!(publish_len(&p, V311), Err(EncodeError::PacketTooLarge));
    p.payload = Bytes::from(vec![0u8; 268_435_455 - 3]);
    assert_eq!(publish_len(&p, V311), Ok(268_435_460));
    // A failed encode appends nothing, also to a buffer that already holds packets.
    let mut big = publish(QoS::AtLeastOnce, 1, "t", b"x");
    big.properties.content_type = Some("c".repeat(70_000));
    let mut buf = BytesMut::from(&b"\xC0\x00"[..]);
    assert_eq!(
        encode(&Packet::Publish(big.clone()), V5, &mut buf),
        Err(EncodeError::FieldTooLong(70_000))
    );
    assert_eq!(
        encode_publish_header(&big, V5, &mut buf),
        Err(EncodeError::FieldTooLong(70_000))
    );
    assert_eq!(&buf[..], b"\xC0\x00");
    // The same packet is fine at 3.1.1, which has no properties.
    assert!(encode(&Packet::Publish(big), V311, &mut buf).is_ok());
    let mut s = Subscribe {
        packet_id: 1,
        filters: vec![(filter("a"), SubscriptionOptions::default())],
        properties: Properties::default(),
    };
    s.properties.subscription_identifiers = vec![268_435_456];
    assert!(matches!(
        encoded_len(&Packet::Subscribe(s), V5),
        Err(EncodeError::OutOfRange(_))
    ));
}
