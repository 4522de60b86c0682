//! Starling's MQTT codec: every control packet of MQTT 3.1, 3.1.1 and 5.0 as typed values,
//! incremental zero-copy decoding with the validation the specifications require, encoding into
//! a caller's buffer, topic names and filters, and reason codes.
//!
//! Sans-IO: no sockets, no async runtime, no clock. Bytes go in, packets come out, and back.

pub mod codec;
pub mod error;
pub mod packet;
pub mod property;
pub mod proxy;
pub mod reason;
pub mod topic;

pub use codec::{
    DecodeLimits, PublishParts, connect_version, decode, encode, encode_publish_header,
    encode_publish_parts, encoded_len, packet_len, properties_len, publish_len,
};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use property::{Properties, PropertyContext, PropertyId, PropertyValues};
pub use reason::{ReasonCode, ReasonContext};
pub use topic::{TopicError, TopicFilter, TopicName};
