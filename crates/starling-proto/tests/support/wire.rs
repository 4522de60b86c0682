//! Builders for hand-made packet bytes and decode assertions, shared by the malformed-packet
//! tests.

#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use starling_proto::*;

// ---- building packets -------------------------------------------------------------------

pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A whole packet: first byte, remaining length, body.
pub fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A string or binary field: two-byte length and the bytes.
pub fn s(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A property list: its length and the properties.
pub fn props(bytes: &[u8]) -> Vec<u8> {
    let mut out = varint(bytes.len());
    out.extend_from_slice(bytes);
    out
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// CONNECT with the given level (name chosen to match), connect flags, and the rest after
/// the keep-alive (properties for MQTT 5, then the payload).
pub fn connect(level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    pkt(0x10, &cat(&[&s(name), &[level, flags, 0, 60], rest]))
}

/// A v5 PUBLISH QoS 0 to `a` with the given property bytes.
pub fn publish_v5(property_bytes: &[u8]) -> Vec<u8> {
    pkt(0x30, &cat(&[&s(b"a"), &props(property_bytes), b"payload"]))
}

/// A v5 CONNACK with the given property bytes.
pub fn connack_v5(property_bytes: &[u8]) -> Vec<u8> {
    pkt(0x20, &cat(&[&[0, 0], &props(property_bytes)]))
}

/// A v5 CONNECT with the given CONNECT property bytes.
pub fn connect_v5(property_bytes: &[u8]) -> Vec<u8> {
    connect(5, 0x02, &cat(&[&props(property_bytes), &s(b"id")]))
}

/// A v5 CONNECT with a will carrying the given will property bytes.
pub fn connect_v5_will(property_bytes: &[u8]) -> Vec<u8> {
    connect(
        5,
        0x06,
        &cat(&[
            &props(&[]),
            &s(b"id"),
            &props(property_bytes),
            &s(b"w"),
            &s(b"x"),
        ]),
    )
}

// ---- decoding -----------------------------------------------------------------------------

pub fn try_decode(
    bytes: &[u8],
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, version, limits)
}

pub fn ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
    match try_decode(bytes, version, &DecodeLimits::default()) {
        Ok(Some(p)) => p,
        other => panic!("{bytes:02X?}: {other:?}"),
    }
}

pub fn err_with(bytes: &[u8], version: ProtocolVersion, limits: &DecodeLimits) -> DecodeError {
    match try_decode(bytes, version, limits) {
        Err(e) => e,
        other => panic!("{bytes:02X?} decoded: {other:?}"),
    }
}

pub fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    err_with(bytes, version, &DecodeLimits::default())
}

#[track_caller]
pub fn assert_err(bytes: &[u8], version: ProtocolVersion, expected: DecodeError) {
    assert_eq!(err(bytes, version), expected, "{bytes:02X?}");
}

/// Checks the defect and, as a control, that the same packet without it decodes.
#[track_caller]
pub fn assert_only(good: &[u8], bad: &[u8], version: ProtocolVersion, expected: DecodeError) {
    ok(good, version);
    assert_err(bad, version, expected);
}

pub const BAD_UTF8: [&[u8]; 4] = [
    b"\xED\xA0\x80", // an encoded surrogate (U+D800)
    b"a\xC3",        // truncated sequence
    b"\xC0\xAF",     // overlong encoding of '/'
    b"\xFF",
];
