//! The MQTT control packets as typed values (spec 3.x of MQTT 3.1.1 and 5.0).
//!
//! One type serves every protocol level: fields that only exist in MQTT 5 (properties, reason
//! codes in acks) are left empty for 3.1 / 3.1.1 and ignored when encoding for those levels.
//! Payloads and topic names are `Bytes` slices of the buffer they were decoded from.

use bytes::Bytes;

use crate::property::Properties;
use crate::reason::ReasonCode;
use crate::topic::{TopicFilter, TopicName};

/// The protocol level of a connection (CONNECT's protocol level byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name CONNECT carries for this level.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Self::V31 => "MQIsdp",
            Self::V311 | Self::V5 => "MQTT",
        }
    }

    /// True for MQTT 5.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Quality of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses 0, 1 or 2.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The control packet types (fixed header, high nibble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// 1
    Connect = 1,
    /// 2
    ConnAck = 2,
    /// 3
    Publish = 3,
    /// 4
    PubAck = 4,
    /// 5
    PubRec = 5,
    /// 6
    PubRel = 6,
    /// 7
    PubComp = 7,
    /// 8
    Subscribe = 8,
    /// 9
    SubAck = 9,
    /// 10
    Unsubscribe = 10,
    /// 11
    UnsubAck = 11,
    /// 12
    PingReq = 12,
    /// 13
    PingResp = 13,
    /// 14
    Disconnect = 14,
    /// 15 (MQTT 5 only)
    Auth = 15,
}

/// Any MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Client request to connect (boxed: it is large and rare).
    Connect(Box<Connect>),
    /// Connect acknowledgement.
    ConnAck(ConnAck),
    /// Publish message.
    Publish(Publish),
    /// QoS 1 acknowledgement.
    PubAck(PubAck),
    /// QoS 2 step 1 acknowledgement.
    PubRec(PubAck),
    /// QoS 2 release.
    PubRel(PubAck),
    /// QoS 2 completion.
    PubComp(PubAck),
    /// Subscribe request.
    Subscribe(Subscribe),
    /// Subscribe acknowledgement.
    SubAck(SubAck),
    /// Unsubscribe request.
    Unsubscribe(Unsubscribe),
    /// Unsubscribe acknowledgement.
    UnsubAck(UnsubAck),
    /// Ping request.
    PingReq,
    /// Ping response.
    PingResp,
    /// Disconnect notification (MQTT 5: either direction).
    Disconnect(Disconnect),
    /// Authentication exchange (MQTT 5 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// The packet's properties, if its type has any.
    pub fn properties_mut(&mut self) -> Option<&mut Properties> {
        match self {
            Self::Connect(c) => Some(&mut c.properties),
            Self::ConnAck(c) => Some(&mut c.properties),
            Self::Publish(p) => Some(&mut p.properties),
            Self::PubAck(a) | Self::PubRec(a) | Self::PubRel(a) | Self::PubComp(a) => {
                Some(&mut a.properties)
            }
            Self::Subscribe(s) => Some(&mut s.properties),
            Self::SubAck(s) => Some(&mut s.properties),
            Self::Unsubscribe(u) => Some(&mut u.properties),
            Self::UnsubAck(u) => Some(&mut u.properties),
            Self::Disconnect(d) => Some(&mut d.properties),
            Self::Auth(a) => Some(&mut a.properties),
            Self::PingReq | Self::PingResp => None,
        }
    }
}

/// CONNECT (spec 3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level; also decides how every later packet on the connection is coded.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5).
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// Last will, if the will flag was set.
    pub will: Option<Will>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password, if the flag was set.
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties,
    /// MQTT 3.x: the client is a bridge and says so with the top bit of the protocol level
    /// (mosquitto's `try_private`); the broker then does not send it its own messages back.
    pub bridge: bool,
}

/// The last will carried in CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Will topic.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (MQTT 5).
    pub properties: Properties,
}

/// CONNACK (spec 3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// Outcome; for 3.x encoded as the return code of [`ReasonCode::to_v3_connack`].
    pub reason: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties,
}

/// PUBLISH (spec 3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: this is a redelivery. Always false at QoS 0.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty only when an MQTT 5 topic alias stands for it.
    pub topic: TopicName,
    /// Packet identifier; 0 at QoS 0, non-zero otherwise.
    pub packet_id: u16,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties,
    /// Application message.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (spec 3.4 to 3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    /// Packet identifier of the PUBLISH being acknowledged.
    pub packet_id: u16,
    /// Outcome (MQTT 5; `Success` for 3.x).
    pub reason: ReasonCode,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

impl Connect {
    /// A CONNECT at `protocol` for `client_id` with clean start, a keep-alive of 60 s and
    /// nothing else (no will, no credentials, no properties).
    pub fn new(protocol: ProtocolVersion, client_id: impl Into<String>) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
            bridge: false,
        }
    }
}

impl Publish {
    /// A PUBLISH of `payload` to `topic` at `qos` without properties; `packet_id` is used at
    /// QoS 1 and 2 only (it is 0 at QoS 0).
    pub fn new(topic: TopicName, qos: QoS, packet_id: u16, payload: Bytes) -> Self {
        Self {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
            properties: Properties::default(),
            payload,
        }
    }
}

impl Subscribe {
    /// A SUBSCRIBE to one filter at `qos` with the other options at their defaults.
    pub fn one(packet_id: u16, filter: TopicFilter, qos: QoS) -> Self {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        Self {
            packet_id,
            filters: vec![(filter, options)],
            properties: Properties::default(),
        }
    }
}

impl PubAck {
    /// A successful acknowledgement with no properties.
    pub fn new(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    /// An acknowledgement with a reason code and no properties.
    pub fn with_reason(packet_id: u16, reason: ReasonCode) -> Self {
        Self {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

/// What to do with retained messages when a subscription is made (MQTT 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: never send them at subscribe time.
    DoNotSend = 2,
}

/// Subscription options (spec 3.8.3.1); only `qos` exists before MQTT 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// Do not deliver the client's own publications back to it.
    pub no_local: bool,
    /// Keep the RETAIN flag as published when forwarding.
    pub retain_as_published: bool,
    /// Retained-message handling at subscribe time.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (spec 3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// The filters with their options; never empty.
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// Properties (MQTT 5): subscription identifier, user properties.
    pub properties: Properties,
}

/// SUBACK (spec 3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter, in order: the granted QoS or a failure.
    pub reasons: Vec<ReasonCode>,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// UNSUBSCRIBE (spec 3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// The filters to remove; never empty.
    pub filters: Vec<TopicFilter>,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// UNSUBACK (spec 3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter (MQTT 5); empty for 3.x, which has no payload.
    pub reasons: Vec<ReasonCode>,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// DISCONNECT (spec 3.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason (MQTT 5; `Success` for 3.x).
    pub reason: ReasonCode,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with a reason and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: Properties::default(),
        }
    }
}

/// AUTH (spec 3.15, MQTT 5 only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties: authentication method and data, reason string, user properties.
    pub properties: Properties,
}
