//! The wire codec: [`decode`] takes one packet off the front of a read buffer, [`encode`]
//! appends one to a write buffer, and [`encode_publish_header`] writes a PUBLISH without its
//! payload for zero-copy fan-out.
//!
//! Submodules: `varint` (variable byte integers), `reader` (bounds-checked field reads),
//! `properties` (MQTT 5 property lists), `decode` and `encode` (the packets).

mod decode;
mod encode;
mod properties;
mod reader;
mod varint;

pub use decode::{connect_version, decode, packet_len};
pub use encode::{
    PublishParts, encode, encode_publish_header, encode_publish_parts, encoded_len, properties_len,
    publish_len,
};
pub use varint::MAX_VARINT;

use crate::error::DecodeError;
use crate::topic::TopicError;

/// The largest packet the protocol can express: one type byte, four length bytes and the
/// largest remaining length.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + MAX_VARINT;

/// Limits the receiver applies while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted packet, fixed header included; checked from the fixed header alone.
    pub max_packet_size: u32,
    /// Most levels a topic name or filter may have.
    pub max_topic_levels: usize,
    /// Most user properties one property list may carry.
    pub max_user_properties: usize,
    /// Accept the control characters U+0001..U+001F and U+007F..U+009F in client ids, user
    /// names, topic names and topic filters. The specification lets a receiver treat them as
    /// malformed (spec 1.5.4); refused by default, they cannot inject into logs or terminals.
    pub allow_control_characters: bool,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_packet_size: MAX_PACKET_SIZE,
            max_topic_levels: 128,
            max_user_properties: 128,
            allow_control_characters: false,
        }
    }
}

/// True if `s` (valid UTF-8) holds a C0 control (U+0001..U+001F), DEL (U+007F) or a C1
/// control (U+0080..U+009F, encoded as 0xC2 0x80..0x9F). U+0000 is refused on its own.
pub(crate) fn has_control_character(s: &[u8]) -> bool {
    let mut bytes = s.iter();
    while let Some(&b) = bytes.next() {
        match b {
            0x01..=0x1F | 0x7F => return true,
            0xC2 => {
                if matches!(bytes.next(), Some(0x80..=0x9F)) {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Fails with [`DecodeError::ControlCharacter`] if `s` holds one and `limits` refuse them.
pub(crate) fn check_controls(s: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    if !limits.allow_control_characters && has_control_character(s) {
        return Err(DecodeError::ControlCharacter);
    }
    Ok(())
}

/// Topic validation errors that are really string errors are reported as such, so every
/// UTF-8 string field fails the same way.
pub(crate) fn topic_error(e: TopicError) -> DecodeError {
    match e {
        TopicError::InvalidUtf8 => DecodeError::InvalidUtf8,
        TopicError::NullCharacter => DecodeError::NullCharacter,
        e => DecodeError::Topic(e),
    }
}
