//! The property the `decode` fuzz target checks, shared with the corpus replay test: the first
//! input byte picks the protocol version (3, 4 or 5; any byte is taken modulo 3), the rest is
//! fed to `decode` until it stops, and every packet decoded must encode, have the encoded
//! length `encoded_len` announces, and decode back to itself (decode, encode, decode is stable).

use bytes::BytesMut;
use starling_proto::{
    DecodeError, DecodeLimits, Packet, ProtocolVersion, decode, encode, encode_publish_header,
    encoded_len, publish_len,
};

/// The version a first input byte selects: 3 → 3.1, 4 → 3.1.1, 5 → 5.0.
pub(crate) fn version_for(byte: u8) -> ProtocolVersion {
    match byte % 3 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    }
}

/// What feeding one input to the decoder came to.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Packets decoded (and checked).
    pub(crate) packets: usize,
    /// The error that stopped decoding, if one did.
    pub(crate) error: Option<DecodeError>,
}

/// Runs the invariant over one input; panics when it does not hold.
pub(crate) fn check(data: &[u8]) -> Outcome {
    let Some((&first, rest)) = data.split_first() else {
        return Outcome::default();
    };
    let version = version_for(first);
    let limits = DecodeLimits::default();
    let mut buf = BytesMut::from(rest);
    let mut outcome = Outcome::default();
    loop {
        let before = buf.len();
        match decode(&mut buf, version, &limits) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed nothing");
                check_packet(&packet, version, &limits);
                outcome.packets += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) changed the buffer");
                return outcome;
            }
            Err(e) => {
                outcome.error = Some(e);
                return outcome;
            }
        }
    }
}

fn check_packet(packet: &Packet, version: ProtocolVersion, limits: &DecodeLimits) {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("decoded packet does not encode: {e}: {packet:?}");
    }
    assert_eq!(
        encoded_len(packet, version),
        Ok(out.len()),
        "encoded_len disagrees: {packet:?}"
    );
    let encoded = out.clone().freeze();

    // Every strict prefix is an incomplete packet.
    for cut in [0, 1, encoded.len() / 2, encoded.len() - 1] {
        let mut prefix = BytesMut::from(encoded.get(..cut).unwrap_or_default());
        match decode(&mut prefix, version, limits) {
            Ok(None) => assert_eq!(prefix.len(), cut),
            other => panic!("prefix of {cut} bytes gave {other:?} for {packet:?}"),
        }
    }

    match decode(&mut out, version, limits) {
        Ok(Some(again)) => {
            assert_eq!(
                &again, packet,
                "decode(encode(p)) != p; bytes {encoded:02X?}"
            );
        }
        other => panic!("re-decoding {encoded:02X?} gave {other:?} for {packet:?}"),
    }
    assert!(out.is_empty(), "re-decoding left bytes over");

    if let Packet::Publish(publish) = packet {
        assert_eq!(publish_len(publish, version), Ok(encoded.len()));
        let mut header = BytesMut::new();
        if let Err(e) = encode_publish_header(publish, version, &mut header) {
            panic!("publish header does not encode: {e}");
        }
        header.extend_from_slice(&publish.payload);
        assert_eq!(header.freeze(), encoded, "header + payload != encode");
    }
}
