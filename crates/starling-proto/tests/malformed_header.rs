//! Malformed packets, part 1: the fixed header, PUBLISH flags, truncation and trailing bytes,
//! UTF-8 string fields and topics. Each input is a valid packet but for the one defect under
//! test, so each test fails if its check is removed.

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

// ---- fixed header ------------------------------------------------------------------------

#[test]
fn remaining_length_over_four_bytes() {
    assert_err(
        b"\x30\xFF\xFF\xFF\xFF\x7F",
        V311,
        DecodeError::VarIntTooLong,
    );
    // Four bytes are fine (and incomplete here).
    assert_eq!(
        try_decode(b"\x30\xFF\xFF\xFF\x7F", V311, &DecodeLimits::default()),
        Ok(None)
    );
}

#[test]
fn remaining_length_not_minimal() {
    assert_only(
        b"\xC0\x00",
        b"\xC0\x80\x00",
        V311,
        DecodeError::VarIntNotMinimal,
    );
    let body = cat(&[&s(b"a"), b"xyz"]);
    let mut bad = vec![0x30, 0x86, 0x00];
    bad.extend_from_slice(&body);
    assert_only(&pkt(0x30, &body), &bad, V311, DecodeError::VarIntNotMinimal);
}

#[test]
fn property_length_not_minimal() {
    let good = pkt(0x30, &cat(&[&s(b"a"), &[0x00], b"p"]));
    let bad = pkt(0x30, &cat(&[&s(b"a"), &[0x80, 0x00], b"p"]));
    assert_only(&good, &bad, V5, DecodeError::VarIntNotMinimal);
}

#[test]
fn subscription_identifier_not_minimal_or_too_long() {
    let sub = |id: &[u8]| {
        pkt(
            0x82,
            &cat(&[&[0, 1], &props(&cat(&[&[0x0B], id])), &s(b"a"), &[0]]),
        )
    };
    assert_only(
        &sub(&[0x01]),
        &sub(&[0x81, 0x00]),
        V5,
        DecodeError::VarIntNotMinimal,
    );
    assert_err(
        &sub(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        V5,
        DecodeError::VarIntTooLong,
    );
}

#[test]
fn packet_too_large_from_fixed_header_alone() {
    let limits = DecodeLimits {
        max_packet_size: 1000,
        ..DecodeLimits::default()
    };
    // Remaining length 1000 + 3 header bytes; only 5 bytes have arrived.
    assert_eq!(
        err_with(b"\x30\xE8\x07\x00\x03", V311, &limits),
        DecodeError::PacketTooLarge {
            size: 1003,
            max: 1000
        }
    );
    // Exactly at the limit: just incomplete.
    assert_eq!(try_decode(b"\x30\xE5\x07\x00\x03", V311, &limits), Ok(None));
    assert_eq!(
        err_with(b"\x30\xE6\x07\x00\x03", V311, &limits),
        DecodeError::PacketTooLarge {
            size: 1001,
            max: 1000
        }
    );
}

#[test]
fn packet_type_zero() {
    for version in [V31, V311, V5] {
        assert_err(b"\x00\x00", version, DecodeError::InvalidPacketType(0));
    }
}

#[test]
fn packet_type_fifteen_before_v5() {
    ok(b"\xF0\x00", V5);
    for version in [V31, V311] {
        assert_err(b"\xF0\x00", version, DecodeError::InvalidPacketType(15));
    }
}

#[test]
fn reserved_header_flags() {
    let valid: &[(u8, Vec<u8>, ProtocolVersion)] = &[
        (0x10, connect(4, 0x02, &s(b"id"))[2..].to_vec(), V311),
        (0x20, vec![0, 0], V311),
        (0x40, vec![0, 1], V311),
        (0x50, vec![0, 1], V311),
        (0x62, vec![0, 1], V311),
        (0x70, vec![0, 1], V311),
        (0x82, cat(&[&[0, 1], &s(b"a"), &[0]]), V311),
        (0x90, vec![0, 1, 0], V311),
        (0xA2, cat(&[&[0, 1], &s(b"a")]), V311),
        (0xB0, vec![0, 1], V311),
        (0xC0, vec![], V311),
        (0xD0, vec![], V311),
        (0xE0, vec![], V311),
        (0xF0, vec![], V5),
    ];
    for (first, body, version) in valid {
        let packet = ok(&pkt(*first, body), *version);
        for flags in 0..16u8 {
            if flags == first & 0x0F {
                continue;
            }
            assert_eq!(
                err(&pkt((first & 0xF0) | flags, body), *version),
                DecodeError::InvalidHeaderFlags {
                    packet_type: packet.packet_type(),
                    flags
                },
                "{first:02X} with flags {flags:X}"
            );
        }
    }
}

// ---- PUBLISH -----------------------------------------------------------------------------

#[test]
fn publish_qos_3() {
    let body = cat(&[&s(b"a"), &[0, 1]]);
    assert_only(
        &pkt(0x34, &body),
        &pkt(0x36, &body),
        V311,
        DecodeError::InvalidQoS,
    );
}

#[test]
fn will_qos_3() {
    let rest = cat(&[&s(b"id"), &s(b"w"), &s(b"x")]);
    assert_only(
        &connect(4, 0x16, &rest),
        &connect(4, 0x1E, &rest),
        V311,
        DecodeError::InvalidQoS,
    );
}

#[test]
fn subscription_qos_3() {
    let sub = |opts: u8| pkt(0x82, &cat(&[&[0, 1], &s(b"a"), &[opts]]));
    assert_only(&sub(2), &sub(3), V311, DecodeError::InvalidSubscriptionQoS);
    let sub5 = |opts: u8| pkt(0x82, &cat(&[&[0, 1], &[0], &s(b"a"), &[opts]]));
    assert_only(&sub5(2), &sub5(3), V5, DecodeError::InvalidSubscriptionQoS);
}

#[test]
fn dup_on_qos_0() {
    let body = cat(&[&s(b"a"), b"x"]);
    assert_only(
        &pkt(0x30, &body),
        &pkt(0x38, &body),
        V311,
        DecodeError::DupOnQoS0,
    );
}

#[test]
fn truncated_fields() {
    // Topic length runs past the packet.
    assert_only(
        b"\x30\x03\x00\x01a",
        b"\x30\x03\x00\x05a",
        V311,
        DecodeError::Truncated,
    );
    // Packet identifier missing.
    assert_err(b"\x32\x03\x00\x01a", V311, DecodeError::Truncated);
    // CONNECT ends after the protocol name.
    assert_err(b"\x10\x06\x00\x04MQTT", V311, DecodeError::Truncated);
    // CONNECT with the user name flag but no user name.
    let rest = s(b"id");
    assert_only(
        &connect(4, 0x02, &rest),
        &connect(4, 0x82, &rest),
        V311,
        DecodeError::Truncated,
    );
    // PUBACK with one byte.
    assert_err(b"\x40\x01\x00", V311, DecodeError::Truncated);
    // A four-byte property value with two bytes.
    assert_err(
        &pkt(0x30, &cat(&[&s(b"a"), &props(&[0x02, 0, 0])])),
        V5,
        DecodeError::Truncated,
    );
    // AUTH may drop reason and properties together, not the properties alone.
    assert_only(
        b"\xF0\x02\x18\x00",
        b"\xF0\x01\x18",
        V5,
        DecodeError::Truncated,
    );
    // A v5 CONNACK must carry its property length.
    assert_only(
        b"\x20\x03\x00\x00\x00",
        b"\x20\x02\x00\x00",
        V5,
        DecodeError::Truncated,
    );
}

#[test]
fn property_length_overruns_packet() {
    let good = pkt(0x30, &cat(&[&s(b"a"), &[0x02, 0x01, 0x00]]));
    let bad = pkt(0x30, &cat(&[&s(b"a"), &[0x05, 0x01, 0x00]]));
    assert_only(&good, &bad, V5, DecodeError::Truncated);
}

#[test]
fn trailing_bytes_after_fixed_layouts() {
    let cases: &[(&[u8], &[u8], ProtocolVersion)] = &[
        (b"\xC0\x00", b"\xC0\x01\x00", V311),
        (b"\xD0\x00", b"\xD0\x01\x00", V5),
        (b"\x40\x02\x00\x01", b"\x40\x03\x00\x01\x00", V311),
        (b"\x62\x02\x00\x01", b"\x62\x03\x00\x01\x00", V31),
        (b"\xB0\x02\x00\x01", b"\xB0\x03\x00\x01\x00", V311),
        (b"\xE0\x00", b"\xE0\x01\x00", V311),
        (b"\x20\x02\x00\x00", b"\x20\x03\x00\x00\x00", V311),
        (b"\x20\x03\x00\x00\x00", b"\x20\x04\x00\x00\x00\x00", V5),
        (
            b"\x40\x04\x00\x01\x00\x00",
            b"\x40\x05\x00\x01\x00\x00\x00",
            V5,
        ),
        (b"\xE0\x02\x00\x00", b"\xE0\x03\x00\x00\x00", V5),
        (b"\xF0\x02\x00\x00", b"\xF0\x03\x00\x00\x00", V5),
    ];
    for (good, bad, version) in cases {
        assert_only(good, bad, *version, DecodeError::TrailingBytes);
    }
    let rest = s(b"id");
    assert_only(
        &connect(4, 0x02, &rest),
        &connect(4, 0x02, &cat(&[&rest, b"x"])),
        V311,
        DecodeError::TrailingBytes,
    );
}

// ---- strings -----------------------------------------------------------------------------

/// Every UTF-8 string field, as a packet builder taking the field's bytes.
/// Builds a packet around one field's bytes.
type Build = Box<dyn Fn(&[u8]) -> Vec<u8>>;

fn string_fields() -> Vec<(&'static str, ProtocolVersion, Build)> {
    let prop = |id: u8| move |v: &[u8]| cat(&[&[id], &s(v)]);
    vec![
        (
            "client id",
            V311,
            Box::new(|v: &[u8]| connect(4, 0x02, &s(v))),
        ),
        (
            "user name",
            V311,
            Box::new(|v: &[u8]| connect(4, 0x82, &cat(&[&s(b"id"), &s(v)]))),
        ),
        (
            "will topic",
            V311,
            Box::new(|v: &[u8]| connect(4, 0x06, &cat(&[&s(b"id"), &s(v), &s(b"x")]))),
        ),
        (
            "topic name",
            V311,
            Box::new(|v: &[u8]| pkt(0x30, &cat(&[&s(v), b"x"]))),
        ),
        (
            "subscribe filter",
            V311,
            Box::new(|v: &[u8]| pkt(0x82, &cat(&[&[0, 1], &s(v), &[0]]))),
        ),
        (
            "unsubscribe filter",
            V5,
            Box::new(|v: &[u8]| pkt(0xA2, &cat(&[&[0, 1], &[0], &s(v)]))),
        ),
        (
            "content type",
            V5,
            Box::new(move |v: &[u8]| publish_v5(&prop(0x03)(v))),
        ),
        (
            "response topic",
            V5,
            Box::new(move |v: &[u8]| publish_v5(&prop(0x08)(v))),
        ),
        (
            "assigned client id",
            V5,
            Box::new(move |v: &[u8]| connack_v5(&prop(0x12)(v))),
        ),
        (
            "authentication method",
            V5,
            Box::new(move |v: &[u8]| connect_v5(&prop(0x15)(v))),
        ),
        (
            "response information",
            V5,
            Box::new(move |v: &[u8]| connack_v5(&prop(0x1A)(v))),
        ),
        (
            "server reference",
            V5,
            Box::new(move |v: &[u8]| connack_v5(&prop(0x1C)(v))),
        ),
        (
            "reason string",
            V5,
            Box::new(move |v: &[u8]| connack_v5(&prop(0x1F)(v))),
        ),
        (
            "will content type",
            V5,
            Box::new(move |v: &[u8]| connect_v5_will(&prop(0x03)(v))),
        ),
        (
            "user property name",
            V5,
            Box::new(|v: &[u8]| publish_v5(&cat(&[&[0x26], &s(v), &s(b"v")]))),
        ),
        (
            "user property value",
            V5,
            Box::new(|v: &[u8]| publish_v5(&cat(&[&[0x26], &s(b"k"), &s(v)]))),
        ),
    ]
}

#[test]
fn invalid_utf8_in_every_string_field() {
    for (field, version, build) in string_fields() {
        ok(&build(b"ok/\xC3\xA9"), version);
        for bad in BAD_UTF8 {
            assert_eq!(
                err(&build(bad), version),
                DecodeError::InvalidUtf8,
                "{field} {bad:02X?}"
            );
        }
    }
}

#[test]
fn null_character_in_every_string_field() {
    for (field, version, build) in string_fields() {
        ok(&build(b"a"), version);
        assert_eq!(
            err(&build(b"a\0b"), version),
            DecodeError::NullCharacter,
            "{field}"
        );
    }
}

// ---- topics ------------------------------------------------------------------------------

#[test]
fn wildcard_in_topic_name() {
    let publish = |t: &[u8]| pkt(0x30, &cat(&[&s(t), b"x"]));
    for bad in [&b"a/+"[..], b"#", b"a/#", b"+"] {
        assert_only(
            &publish(b"a/b"),
            &publish(bad),
            V311,
            DecodeError::Topic(TopicError::WildcardInName),
        );
    }
    let will = |t: &[u8]| connect(4, 0x06, &cat(&[&s(b"id"), &s(t), &s(b"x")]));
    assert_only(
        &will(b"w"),
        &will(b"w/#"),
        V311,
        DecodeError::Topic(TopicError::WildcardInName),
    );
}

#[test]
fn empty_will_topic() {
    let will = |t: &[u8]| connect(4, 0x06, &cat(&[&s(b"id"), &s(t), &s(b"x")]));
    assert_only(
        &will(b"w"),
        &will(b""),
        V311,
        DecodeError::Topic(TopicError::Empty),
    );
}

#[test]
fn empty_topic_without_alias() {
    let v5 = |property_bytes: &[u8]| pkt(0x30, &cat(&[&s(b""), &props(property_bytes), b"x"]));
    assert_only(
        &v5(&[0x23, 0x00, 0x01]),
        &v5(&[]),
        V5,
        DecodeError::EmptyTopicWithoutAlias,
    );
    for version in [V31, V311] {
        assert_only(
            &pkt(0x30, &cat(&[&s(b"t"), b"x"])),
            &pkt(0x30, &cat(&[&s(b""), b"x"])),
            version,
            DecodeError::EmptyTopicWithoutAlias,
        );
    }
}

#[test]
fn topic_alias_zero_is_left_to_the_broker() {
    let p = ok(
        &pkt(0x30, &cat(&[&s(b"t"), &props(&[0x23, 0, 0]), b"x"])),
        V5,
    );
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!(p.properties.topic_alias, Some(0));
}

#[test]
fn response_topic_must_be_a_topic_name() {
    let with = |t: &[u8]| publish_v5(&cat(&[&[0x08], &s(t)]));
    assert_only(
        &with(b"reply/to"),
        &with(b"reply/#"),
        V5,
        DecodeError::Topic(TopicError::WildcardInName),
    );
    assert_err(&with(b""), V5, DecodeError::Topic(TopicError::Empty));
    let will = |t: &[u8]| connect_v5_will(&cat(&[&[0x08], &s(t)]));
    assert_only(
        &will(b"r"),
        &will(b"+"),
        V5,
        DecodeError::Topic(TopicError::WildcardInName),
    );
}

#[test]
fn invalid_topic_filters() {
    let sub = |f: &[u8]| pkt(0x82, &cat(&[&[0, 1], &s(f), &[0]]));
    let unsub = |f: &[u8]| pkt(0xA2, &cat(&[&[0, 1], &s(f)]));
    let cases: &[(&[u8], TopicError)] = &[
        (b"a/#/b", TopicError::InvalidWildcard),
        (b"a/b+", TopicError::InvalidWildcard),
        (b"a/b#", TopicError::InvalidWildcard),
        (b"", TopicError::Empty),
        (b"$share/", TopicError::InvalidShare),
        (b"$share//a", TopicError::InvalidShare),
        (b"$share/g/", TopicError::InvalidShare),
        (b"$share/g", TopicError::InvalidShare),
        (b"$share/g+/a", TopicError::InvalidShare),
        (b"$share/#/a", TopicError::InvalidShare),
    ];
    ok(&sub(b"$share/g/a/#"), V311);
    ok(&unsub(b"a/+/b"), V311);
    for (filter, e) in cases {
        assert_err(&sub(filter), V311, DecodeError::Topic(*e));
        assert_err(&unsub(filter), V311, DecodeError::Topic(*e));
    }
}

#[test]
fn too_many_topic_levels() {
    let limits = DecodeLimits {
        max_topic_levels: 3,
        ..DecodeLimits::default()
    };
    let e = DecodeError::Topic(TopicError::TooManyLevels(3));
    let publish = |t: &[u8]| pkt(0x30, &cat(&[&s(t), b"x"]));
    assert!(
        try_decode(&publish(b"a/b/c"), V311, &limits)
            .unwrap()
            .is_some()
    );
    assert_eq!(err_with(&publish(b"a/b/c/d"), V311, &limits), e);
    let sub = |f: &[u8]| pkt(0x82, &cat(&[&[0, 1], &s(f), &[0]]));
    assert!(try_decode(&sub(b"a/+/#"), V311, &limits).unwrap().is_some());
    assert_eq!(err_with(&sub(b"a/+/c/#"), V311, &limits), e);
    let will = |t: &[u8]| connect(4, 0x06, &cat(&[&s(b"id"), &s(t), &s(b"x")]));
    assert_eq!(err_with(&will(b"////"), V311, &limits), e);
}
