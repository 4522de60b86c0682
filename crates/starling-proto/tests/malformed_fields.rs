//! Malformed packets, part 2: packet identifiers, topic filter lists, subscription options,
//! properties, reason codes and CONNECT. Each input is a valid packet but for the one defect
//! under test, so each test fails if its check is removed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support {
    pub mod wire;
}

use starling_proto::*;
use support::wire::*;

use ProtocolVersion::{V5, V31, V311};

// ---- packet identifiers, filters, options ------------------------------------------------

#[test]
fn zero_packet_id() {
    for version in [V31, V311, V5] {
        let v5 = version.is_v5();
        let p: &[u8] = if v5 { &[0] } else { &[] };
        let builders: Vec<Box<dyn Fn(u16) -> Vec<u8>>> = vec![
            Box::new(|id| pkt(0x32, &cat(&[&s(b"a"), &id.to_be_bytes(), p, b"x"]))),
            Box::new(|id| pkt(0x34, &cat(&[&s(b"a"), &id.to_be_bytes(), p]))),
            Box::new(|id| pkt(0x40, &id.to_be_bytes())),
            Box::new(|id| pkt(0x50, &id.to_be_bytes())),
            Box::new(|id| pkt(0x62, &id.to_be_bytes())),
            Box::new(|id| pkt(0x70, &id.to_be_bytes())),
            Box::new(|id| pkt(0x82, &cat(&[&id.to_be_bytes(), p, &s(b"a"), &[1]]))),
            Box::new(|id| pkt(0xA2, &cat(&[&id.to_be_bytes(), p, &s(b"a")]))),
            Box::new(|id| pkt(0x90, &cat(&[&id.to_be_bytes(), p, &[1]]))),
            Box::new(|id| {
                pkt(
                    0xB0,
                    &cat(&[&id.to_be_bytes(), p, if v5 { &[0] } else { &[] }]),
                )
            }),
        ];
        for build in builders {
            assert_only(&build(1), &build(0), version, DecodeError::ZeroPacketId);
        }
    }
}

#[test]
fn subscribe_and_unsubscribe_without_filters() {
    assert_only(
        &pkt(0x82, &cat(&[&[0, 1], &s(b"a"), &[0]])),
        &pkt(0x82, &[0, 1]),
        V311,
        DecodeError::NoTopicFilters,
    );
    assert_only(
        &pkt(0xA2, &cat(&[&[0, 1], &s(b"a")])),
        &pkt(0xA2, &[0, 1]),
        V311,
        DecodeError::NoTopicFilters,
    );
    assert_err(&pkt(0x82, &[0, 1, 0]), V5, DecodeError::NoTopicFilters);
    assert_err(&pkt(0xA2, &[0, 1, 0]), V5, DecodeError::NoTopicFilters);
}

#[test]
fn reserved_subscription_option_bits() {
    let v5 = |opts: u8| pkt(0x82, &cat(&[&[0, 1], &[0], &s(b"a"), &[opts]]));
    ok(&v5(0x2E), V5); // rh 2, rap, nl, qos 2
    for bad in [0x40, 0x80, 0xC1] {
        assert_err(&v5(bad), V5, DecodeError::InvalidSubscriptionOptions);
    }
    // Retain handling 3.
    assert_err(&v5(0x30), V5, DecodeError::InvalidRetainHandling);
    let v3 = |opts: u8| pkt(0x82, &cat(&[&[0, 1], &s(b"a"), &[opts]]));
    ok(&v3(0x02), V311);
    for bit in 2..8 {
        for version in [V31, V311] {
            assert_err(
                &v3((1 << bit) | 1),
                version,
                DecodeError::InvalidSubscriptionOptions,
            );
        }
    }
}

// ---- properties --------------------------------------------------------------------------

#[test]
fn unknown_property() {
    for id in [0x00, 0x04, 0x05, 0x2B, 0x7F, 0x80, 0xFF] {
        assert_err(&publish_v5(&[id, 0]), V5, DecodeError::UnknownProperty(id));
    }
}

#[test]
fn duplicate_property() {
    assert_only(
        &publish_v5(&[0x01, 0x01]),
        &publish_v5(&[0x01, 0x01, 0x01, 0x01]),
        V5,
        DecodeError::DuplicateProperty(PropertyId::PayloadFormatIndicator),
    );
    assert_err(
        &connack_v5(&[0x22, 0, 1, 0x13, 0, 5, 0x22, 0, 1]),
        V5,
        DecodeError::DuplicateProperty(PropertyId::TopicAliasMaximum),
    );
    // SUBSCRIBE carries at most one subscription identifier.
    let sub = |p: &[u8]| pkt(0x82, &cat(&[&[0, 1], &props(p), &s(b"a"), &[0]]));
    assert_only(
        &sub(&[0x0B, 1]),
        &sub(&[0x0B, 1, 0x0B, 2]),
        V5,
        DecodeError::DuplicateProperty(PropertyId::SubscriptionIdentifier),
    );
    // Repeatable properties.
    let Packet::Publish(p) = ok(
        &publish_v5(&[
            0x0B, 1, 0x0B, 2, 0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0,
        ]),
        V5,
    ) else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 2]);
    assert_eq!(p.properties.user_properties.len(), 2);
}

#[test]
fn property_not_allowed_in_context() {
    let e = |id| DecodeError::PropertyNotAllowed(id);
    assert_err(
        &publish_v5(&[0x13, 0, 1]),
        V5,
        e(PropertyId::ServerKeepAlive),
    );
    assert_err(&publish_v5(&[0x1F, 0, 0]), V5, e(PropertyId::ReasonString));
    // Will properties are their own context.
    ok(&connect_v5_will(&[0x18, 0, 0, 0, 1]), V5);
    assert_err(
        &connect_v5(&[0x18, 0, 0, 0, 1]),
        V5,
        e(PropertyId::WillDelayInterval),
    );
    ok(&connect_v5(&[0x11, 0, 0, 0, 1]), V5);
    assert_err(
        &connect_v5_will(&[0x11, 0, 0, 0, 1]),
        V5,
        e(PropertyId::SessionExpiryInterval),
    );
    assert_err(
        &connect_v5_will(&[0x23, 0, 1]),
        V5,
        e(PropertyId::TopicAlias),
    );
    assert_err(&connack_v5(&[0x23, 0, 1]), V5, e(PropertyId::TopicAlias));
    let unsub = |p: &[u8]| pkt(0xA2, &cat(&[&[0, 1], &props(p), &s(b"a")]));
    ok(&unsub(&[0x26, 0, 0, 0, 0]), V5);
    assert_err(
        &unsub(&[0x0B, 1]),
        V5,
        e(PropertyId::SubscriptionIdentifier),
    );
    assert_err(
        b"\x40\x07\x00\x01\x00\x03\x01\x00\x01",
        V5,
        e(PropertyId::PayloadFormatIndicator),
    );
    assert_err(b"\xE0\x04\x00\x02\x23\x00", V5, e(PropertyId::TopicAlias));
}

#[test]
fn out_of_range_property_values() {
    use PropertyId as P;
    type WithByte = Box<dyn Fn(u8) -> Vec<u8>>;
    let flags: &[(P, WithByte)] = &[
        (
            P::PayloadFormatIndicator,
            Box::new(|v| publish_v5(&[0x01, v])),
        ),
        (
            P::RequestProblemInformation,
            Box::new(|v| connect_v5(&[0x17, v])),
        ),
        (
            P::RequestResponseInformation,
            Box::new(|v| connect_v5(&[0x19, v])),
        ),
        (P::MaximumQoS, Box::new(|v| connack_v5(&[0x24, v]))),
        (P::RetainAvailable, Box::new(|v| connack_v5(&[0x25, v]))),
        (
            P::WildcardSubscriptionAvailable,
            Box::new(|v| connack_v5(&[0x28, v])),
        ),
        (
            P::SubscriptionIdentifierAvailable,
            Box::new(|v| connack_v5(&[0x29, v])),
        ),
        (
            P::SharedSubscriptionAvailable,
            Box::new(|v| connack_v5(&[0x2A, v])),
        ),
    ];
    for (id, build) in flags {
        ok(&build(0), V5);
        ok(&build(1), V5);
        for bad in [2, 0xFF] {
            assert_eq!(
                err(&build(bad), V5),
                DecodeError::InvalidPropertyValue(*id),
                "{id:?}"
            );
        }
    }
    assert_only(
        &connect_v5(&[0x21, 0, 1]),
        &connect_v5(&[0x21, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(P::ReceiveMaximum),
    );
    assert_err(
        &connack_v5(&[0x21, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(P::ReceiveMaximum),
    );
    assert_only(
        &connect_v5(&[0x27, 0, 0, 0, 1]),
        &connect_v5(&[0x27, 0, 0, 0, 0]),
        V5,
        DecodeError::InvalidPropertyValue(P::MaximumPacketSize),
    );
    let sub = |id: u8| pkt(0x82, &cat(&[&[0, 1], &props(&[0x0B, id]), &s(b"a"), &[0]]));
    assert_only(
        &sub(1),
        &sub(0),
        V5,
        DecodeError::InvalidPropertyValue(P::SubscriptionIdentifier),
    );
    assert_err(
        &publish_v5(&[0x0B, 0]),
        V5,
        DecodeError::InvalidPropertyValue(P::SubscriptionIdentifier),
    );
}

#[test]
fn too_many_user_properties() {
    let limits = DecodeLimits {
        max_user_properties: 2,
        ..DecodeLimits::default()
    };
    let user = [0x26, 0, 1, b'k', 0, 1, b'v'];
    let two = publish_v5(&user.repeat(2));
    let three = publish_v5(&user.repeat(3));
    assert!(try_decode(&two, V5, &limits).unwrap().is_some());
    assert_eq!(
        err_with(&three, V5, &limits),
        DecodeError::TooManyUserProperties(2)
    );
    // The will's list is counted on its own.
    let will = connect_v5_will(&user.repeat(3));
    assert_eq!(
        err_with(&will, V5, &limits),
        DecodeError::TooManyUserProperties(2)
    );
}

// ---- reason codes ------------------------------------------------------------------------

#[test]
fn reason_codes_not_valid_for_the_packet() {
    let cases: &[(&[u8], &[u8], u8)] = &[
        (b"\x40\x03\x00\x01\x10", b"\x40\x03\x00\x01\x92", 0x92), // PUBACK: Packet id not found
        (b"\x50\x03\x00\x01\x80", b"\x50\x03\x00\x01\x03", 0x03), // PUBREC: undefined
        (b"\x62\x03\x00\x01\x92", b"\x62\x03\x00\x01\x10", 0x10), // PUBREL: No matching subscribers
        (b"\x70\x03\x00\x01\x92", b"\x70\x03\x00\x01\x87", 0x87), // PUBCOMP: Not authorized
        (
            b"\x90\x04\x00\x01\x00\x02",
            b"\x90\x04\x00\x01\x00\x04",
            0x04,
        ), // SUBACK
        (
            b"\xB0\x04\x00\x01\x00\x11",
            b"\xB0\x04\x00\x01\x00\x10",
            0x10,
        ), // UNSUBACK
        (b"\xE0\x01\x04", b"\xE0\x01\x01", 0x01),                 // DISCONNECT
        (b"\xF0\x02\x18\x00", b"\xF0\x02\x87\x00", 0x87),         // AUTH
        (b"\x20\x03\x00\x87\x00", b"\x20\x03\x00\x04\x00", 0x04), // CONNACK
    ];
    for (good, bad, code) in cases {
        assert_only(good, bad, V5, DecodeError::InvalidReasonCode(*code));
    }
}

#[test]
fn v3_return_codes() {
    for version in [V31, V311] {
        assert_only(
            b"\x20\x02\x00\x05",
            b"\x20\x02\x00\x06",
            version,
            DecodeError::InvalidReasonCode(6),
        );
        assert_only(
            b"\x90\x03\x00\x01\x80",
            b"\x90\x03\x00\x01\x03",
            version,
            DecodeError::InvalidReasonCode(3),
        );
    }
}

#[test]
fn connack_reserved_flags() {
    for (version, tail) in [(V311, &b""[..]), (V5, &b"\x00"[..])] {
        let with = |flags: u8| pkt(0x20, &cat(&[&[flags, 0], tail]));
        ok(&with(1), version);
        for flags in [0x02, 0x80, 0xFF] {
            assert_err(&with(flags), version, DecodeError::InvalidReasonCode(flags));
        }
    }
}

// ---- CONNECT -----------------------------------------------------------------------------

#[test]
fn connect_reserved_flag() {
    let rest = s(b"id");
    assert_only(
        &connect(4, 0x02, &rest),
        &connect(4, 0x03, &rest),
        V311,
        DecodeError::ConnectReservedFlag,
    );
}

#[test]
fn will_qos_or_retain_without_will() {
    let rest = s(b"id");
    ok(&connect(4, 0x00, &rest), V311);
    for flags in [0x08, 0x10, 0x18, 0x20, 0x28] {
        assert_err(
            &connect(4, flags, &rest),
            V311,
            DecodeError::WillFlagsWithoutWill,
        );
    }
}

#[test]
fn password_without_username() {
    let rest = cat(&[&s(b"id"), &s(b"pw")]);
    for level in [3, 4] {
        let version = if level == 3 { V31 } else { V311 };
        ok(
            &connect(level, 0xC2, &cat(&[&s(b"id"), &s(b"u"), &s(b"pw")])),
            version,
        );
        assert_err(
            &connect(level, 0x42, &rest),
            version,
            DecodeError::PasswordWithoutUsername,
        );
    }
    // MQTT 5 allows a password alone.
    let Packet::Connect(c) = ok(&connect(5, 0x42, &cat(&[&[0], &rest])), V5) else {
        panic!()
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn unknown_protocol_name() {
    let with = |name: &[u8]| pkt(0x10, &cat(&[&s(name), &[4, 2, 0, 60], &s(b"id")]));
    ok(&with(b"MQTT"), V311);
    for bad in [&b"MQTX"[..], b"mqtt", b"MQIsdp4", b"", b"MQT"] {
        assert_err(&with(bad), V311, DecodeError::UnknownProtocolName);
    }
}

#[test]
fn unsupported_protocol_level() {
    let with = |name: &[u8], level: u8| pkt(0x10, &cat(&[&s(name), &[level, 2, 0, 60], &s(b"id")]));
    ok(&with(b"MQTT", 4), V311);
    ok(&with(b"MQIsdp", 3), V311);
    for (name, level) in [
        (&b"MQTT"[..], 3),
        (b"MQTT", 6),
        (b"MQTT", 0),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
    ] {
        assert_err(
            &with(name, level),
            V311,
            DecodeError::UnsupportedProtocolLevel(level),
        );
    }
}

#[test]
fn errors_map_to_reason_codes() {
    assert_eq!(
        err(b"\x30\x05\x00\x03a/+", V311).reason_code(),
        ReasonCode::TopicNameInvalid
    );
    assert_eq!(
        err(b"\xC0\x01\x00", V311).reason_code(),
        ReasonCode::MalformedPacket
    );
    assert_eq!(err(&with_level(6), V311).v3_connack_code(), Some(0x01));
}

fn with_level(level: u8) -> Vec<u8> {
    pkt(0x10, &cat(&[&s(b"MQTT"), &[level, 2, 0, 60], &s(b"id")]))
}

#[test]
fn no_local_on_shared_subscription() {
    let sub = |f: &[u8], opts: u8| pkt(0x82, &cat(&[&[0, 1], &[0], &s(f), &[opts]]));
    ok(&sub(b"$share/g/a", 0x01), V5);
    ok(&sub(b"a", 0x05), V5);
    assert_err(&sub(b"$share/g/a", 0x05), V5, DecodeError::NoLocalOnShared);
}

// ---- control characters and CONNECT refusals ----------------------------------------------

/// Builds a packet around one string field.
type Build = dyn Fn(&[u8]) -> Vec<u8>;

#[test]
fn control_characters_in_names_are_refused_unless_allowed() {
    let allow = DecodeLimits {
        allow_control_characters: true,
        ..DecodeLimits::default()
    };
    // C0, DEL and C1 (U+0085, two bytes) are refused; a plain non-ASCII letter is not.
    for (bad, good) in [
        (&b"a\x1bb"[..], &b"ab"[..]),
        (b"a\x7f", b"a"),
        (b"a\xc2\x85", b"a\xc3\xa9"),
    ] {
        let client_id = |id: &[u8]| connect(4, 0x02, &s(id));
        let username = |u: &[u8]| connect(4, 0x82, &cat(&[&s(b"id"), &s(u)]));
        let publish = |t: &[u8]| pkt(0x30, &cat(&[&s(t), b"x"]));
        let subscribe = |f: &[u8]| pkt(0x82, &cat(&[&[0, 1], &s(f), &[1]]));
        let unsubscribe = |f: &[u8]| pkt(0xA2, &cat(&[&[0, 1], &s(f)]));
        let builders: [&Build; 5] = [&client_id, &username, &publish, &subscribe, &unsubscribe];
        for build in builders {
            assert_only(
                &build(good),
                &build(bad),
                V311,
                DecodeError::ControlCharacter,
            );
            assert!(try_decode(&build(bad), V311, &allow).unwrap().is_some());
        }
    }
    assert_eq!(
        DecodeError::ControlCharacter.reason_code(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn connect_version_reads_the_protocol_before_the_packet_is_whole() {
    let v5 = connect_v5(&[]);
    assert_eq!(connect_version(&v5), Some(V5));
    // Only the fixed header and the protocol name and level need to have arrived.
    assert_eq!(connect_version(&v5[..9]), Some(V5));
    assert_eq!(connect_version(&v5[..8]), None);
    assert_eq!(connect_version(&connect(4, 2, &s(b"id"))), Some(V311));
    assert_eq!(connect_version(&connect(3, 2, &s(b"id"))), Some(V31));
    assert_eq!(connect_version(&with_level(6)), None);
    assert_eq!(connect_version(&pkt(0x30, &cat(&[&s(b"a"), b"x"]))), None);
}

#[test]
fn limits_in_a_connect_are_refused_with_a_reason() {
    let too_large = DecodeError::PacketTooLarge { size: 10, max: 5 };
    let levels = DecodeError::Topic(TopicError::TooManyLevels(4));
    for (e, v5, v3) in [
        (
            &too_large,
            ReasonCode::PacketTooLarge,
            ReasonCode::PacketTooLarge,
        ),
        (
            &DecodeError::TooManyUserProperties(2),
            ReasonCode::QuotaExceeded,
            ReasonCode::QuotaExceeded,
        ),
        (
            &levels,
            ReasonCode::QuotaExceeded,
            ReasonCode::QuotaExceeded,
        ),
    ] {
        assert!(e.is_limit());
        assert_eq!(e.connect_refusal(V5), Some(v5));
        assert_eq!(e.connect_refusal(V311), Some(v3));
    }
    // A breach of the specification closes without CONNACK, but for MQTT 5's malformed
    // control characters, which the receiver chose to refuse.
    assert_eq!(
        DecodeError::ControlCharacter.connect_refusal(V5),
        Some(ReasonCode::MalformedPacket)
    );
    assert_eq!(DecodeError::ControlCharacter.connect_refusal(V311), None);
    assert_eq!(DecodeError::ZeroPacketId.connect_refusal(V5), None);
    assert!(!DecodeError::ZeroPacketId.is_limit());
}
