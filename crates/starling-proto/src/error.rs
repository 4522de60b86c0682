//! Codec errors, and the one place that maps each to the reason code the broker answers with.

use crate::packet::{PacketType, ProtocolVersion};
use crate::property::PropertyId;
use crate::reason::ReasonCode;
use crate::topic::TopicError;

/// Why bytes could not be decoded into a packet. Every variant is something the spec calls a
/// Malformed Packet or a Protocol Error, or a limit the receiver set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length, or another variable byte integer, has more than four bytes.
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    /// A variable byte integer is not encoded in the fewest bytes (MQTT-1.5.5-1).
    #[error("variable byte integer not minimally encoded")]
    VarIntNotMinimal,
    /// The packet is larger than the receiver's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total packet size (fixed header included).
        size: usize,
        /// The limit.
        max: u32,
    },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved flag bits of the fixed header have the wrong value (MQTT-2.1.3-1).
    #[error("invalid fixed header flags 0x{flags:X} for {packet_type:?}")]
    InvalidHeaderFlags {
        /// The packet type.
        packet_type: PacketType,
        /// The low nibble received.
        flags: u8,
    },
    /// QoS 3 in a PUBLISH, a will or subscription options.
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2).
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// The packet ends before a field it declares.
    #[error("packet truncated: a field runs past the remaining length")]
    Truncated,
    /// Bytes are left after the last field of a packet with a fixed layout.
    #[error("unexpected bytes after the end of the packet")]
    TrailingBytes,
    /// A string is not well-formed UTF-8 (this includes encoded surrogates).
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string contains U+0000 (MQTT-1.5.4-2).
    #[error("string contains U+0000")]
    NullCharacter,
    /// A control character (U+0001..U+001F, U+007F..U+009F) in a client id, user name, topic
    /// name or filter, where the receiver's limits refuse them.
    #[error("control character in a client id, user name or topic")]
    ControlCharacter,
    /// A topic name or filter is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// A PUBLISH with an empty topic name and no topic alias.
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// Packet identifier 0 where a non-zero one is required (MQTT-2.2.1-3).
    #[error("packet identifier 0 where one is required")]
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter (MQTT-3.8.3-3, MQTT-3.10.3-2).
    #[error("no topic filter in the packet")]
    NoTopicFilters,
    /// Reserved bits of subscription options set (MQTT-3.8.3-5): a Malformed Packet.
    #[error("reserved subscription option bits set")]
    InvalidSubscriptionOptions,
    /// Retain Handling 3 in subscription options: a Protocol Error (spec 3.8.3.1).
    #[error("retain handling 3")]
    InvalidRetainHandling,
    /// No Local set on a shared subscription: a Protocol Error (MQTT-3.8.3-4).
    #[error("No Local on a shared subscription")]
    NoLocalOnShared,
    /// Maximum QoS 3 in subscription options: a Protocol Error (spec 3.8.3.1).
    #[error("subscription maximum QoS 3")]
    InvalidSubscriptionQoS,
    /// An unknown property identifier.
    #[error("unknown property identifier 0x{0:02X}")]
    UnknownProperty(u8),
    /// A property that may appear once appears again.
    #[error("property {0:?} appears more than once")]
    DuplicateProperty(PropertyId),
    /// A property the packet may not carry.
    #[error("property {0:?} is not allowed in this packet")]
    PropertyNotAllowed(PropertyId),
    /// A property value outside its defined range (e.g. Receive Maximum 0).
    #[error("invalid value for property {0:?}")]
    InvalidPropertyValue(PropertyId),
    /// More user properties than the receiver's limit.
    #[error("more than {0} user properties")]
    TooManyUserProperties(usize),
    /// A reason code the spec does not define for this packet.
    #[error("invalid reason code 0x{0:02X}")]
    InvalidReasonCode(u8),
    /// CONNECT's reserved flag is set (MQTT-3.1.2-3).
    #[error("CONNECT reserved flag set")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the will flag (MQTT-3.1.2-11, -13).
    #[error("will QoS or retain set without the will flag")]
    WillFlagsWithoutWill,
    /// Password flag set without the user name flag in MQTT 3.1 / 3.1.1 (MQTT-3.1.2-22).
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// The protocol name is neither `MQTT` nor `MQIsdp`.
    #[error("unknown protocol name")]
    UnknownProtocolName,
    /// The protocol level is not 3, 4 or 5, or does not go with the protocol name.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code a receiver answers this error with (in CONNACK before the
    /// connection is accepted, in DISCONNECT after).
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError as E;
        match self {
            E::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            E::UnsupportedProtocolLevel(_) | E::UnknownProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            E::Topic(TopicError::WildcardInName | TopicError::Empty) => {
                ReasonCode::TopicNameInvalid
            }
            // A property not valid for the packet is malformed (spec 2.2.2.2); a duplicate,
            // or a value out of range, is a protocol error.
            E::PropertyNotAllowed(_) | E::InvalidSubscriptionOptions => ReasonCode::MalformedPacket,
            E::DuplicateProperty(_)
            | E::EmptyTopicWithoutAlias
            | E::InvalidPropertyValue(_)
            | E::ZeroPacketId
            | E::NoTopicFilters
            | E::InvalidRetainHandling
            | E::NoLocalOnShared
            | E::InvalidSubscriptionQoS
            | E::ConnectReservedFlag
            | E::InvalidPacketType(_) => ReasonCode::ProtocolError,
            // A count limit the receiver set: "an implementation or administrative imposed
            // limit has been exceeded".
            E::TooManyUserProperties(_) | E::Topic(TopicError::TooManyLevels(_)) => {
                ReasonCode::QuotaExceeded
            }
            _ => ReasonCode::MalformedPacket,
        }
    }

    /// The reason code of the CONNACK that refuses a CONNECT of `version` failing with this
    /// error, or `None` to close without CONNACK. A limit the receiver set (packet size, user
    /// properties, topic levels) is answered in every version (3.x: the nearest return code,
    /// see [`ReasonCode::to_v3_connack`]); a control character with Malformed Packet in MQTT 5
    /// (spec 4.13.1 allows a CONNACK before closing), while 3.x has no code for it.
    pub fn connect_refusal(&self, version: ProtocolVersion) -> Option<ReasonCode> {
        match self {
            Self::ControlCharacter if version.is_v5() => Some(ReasonCode::MalformedPacket),
            e if e.is_limit() => Some(e.reason_code()),
            _ => None,
        }
    }

    /// True for a limit the receiver set rather than a breach of the specification.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::PacketTooLarge { .. }
                | Self::TooManyUserProperties(_)
                | Self::Topic(TopicError::TooManyLevels(_))
        )
    }

    /// The MQTT 3.1 / 3.1.1 CONNACK return code for this error, where the spec names one
    /// (unsupported protocol level: 0x01). `None` means close the connection without CONNACK.
    pub fn v3_connack_code(&self) -> Option<u8> {
        match self {
            Self::UnsupportedProtocolLevel(_) => Some(0x01),
            _ => None,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    /// The packet would exceed the largest remaining length (268,435,455).
    #[error("packet too large to encode")]
    PacketTooLarge,
    /// The packet type does not exist at this protocol level (AUTH before MQTT 5).
    #[error("packet not available at this protocol level")]
    NotAvailable,
    /// A value cannot be represented (e.g. a subscription identifier above 268,435,455).
    #[error("value out of range: {0}")]
    OutOfRange(&'static str),
}
