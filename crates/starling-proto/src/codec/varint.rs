//! Variable byte integers (spec 1.5.5): the remaining length, property lengths and
//! subscription identifiers. Decoding insists on the minimal encoding and at most four bytes.

use bytes::BufMut;

use crate::error::DecodeError;

/// The largest value a variable byte integer can hold (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Outcome of parsing a variable byte integer from the front of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Done(u32, usize),
    /// The slice ends before the last byte of the integer.
    Incomplete,
}

/// Parses a variable byte integer at the start of `bytes`.
///
/// Errors: a fourth byte that still has the continuation bit (`VarIntTooLong`), or an encoding
/// longer than needed, i.e. a last byte of 0 after the first (`VarIntNotMinimal`).
pub(crate) fn parse(bytes: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::VarIntNotMinimal);
            }
            return Ok(VarInt::Done(value, i + 1));
        }
        if i == 3 {
            return Err(DecodeError::VarIntTooLong);
        }
    }
    Ok(VarInt::Incomplete)
}

/// Number of bytes `value` takes as a variable byte integer (values above the maximum are
/// reported as 4; callers check the range separately).
pub(crate) fn len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` as a variable byte integer. The caller has checked `value <= MAX_VARINT`.
pub(crate) fn write(buf: &mut impl BufMut, value: u32) {
    let mut value = value;
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_round_trip() {
        for (value, bytes) in [
            (0u32, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_VARINT, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            write(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(len(value as usize), bytes.len());
            assert_eq!(parse(bytes), Ok(VarInt::Done(value, bytes.len())));
        }
    }

    #[test]
    fn rejects_long_and_non_minimal() {
        assert_eq!(
            parse(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::VarIntTooLong)
        );
        assert_eq!(parse(&[0x80, 0x00]), Err(DecodeError::VarIntNotMinimal));
        assert_eq!(
            parse(&[0xFF, 0x80, 0x00]),
            Err(DecodeError::VarIntNotMinimal)
        );
        assert_eq!(parse(&[0x80, 0x80]), Ok(VarInt::Incomplete));
        assert_eq!(parse(&[]), Ok(VarInt::Incomplete));
    }
}
