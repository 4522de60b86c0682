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

pub use decode::{decode, packet_len};
pub use encode::{
    PublishParts, encode, encode_publish_header, encode_publish_parts, encoded_len, publish_len,
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
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_packet_size: MAX_PACKET_SIZE,
            max_topic_levels: 128,
            max_user_properties: 128,
        }
    }
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
