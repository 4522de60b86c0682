//! MQTT 5 properties (spec 2.2.2): their identifiers, the one `Properties` value every packet
//! carries, and which property may appear in which packet.
//!
//! Properties are decoded into named fields rather than a list, so a duplicate is detected at
//! decode time and the broker reads them without searching. User properties and subscription
//! identifiers keep their wire order.

use bytes::Bytes;

/// A property identifier (spec 2.2.2.2, table 2-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    /// 0x01, byte.
    PayloadFormatIndicator = 0x01,
    /// 0x02, four byte integer.
    MessageExpiryInterval = 0x02,
    /// 0x03, UTF-8 string.
    ContentType = 0x03,
    /// 0x08, UTF-8 string (a topic name).
    ResponseTopic = 0x08,
    /// 0x09, binary data.
    CorrelationData = 0x09,
    /// 0x0B, variable byte integer.
    SubscriptionIdentifier = 0x0B,
    /// 0x11, four byte integer.
    SessionExpiryInterval = 0x11,
    /// 0x12, UTF-8 string.
    AssignedClientIdentifier = 0x12,
    /// 0x13, two byte integer.
    ServerKeepAlive = 0x13,
    /// 0x15, UTF-8 string.
    AuthenticationMethod = 0x15,
    /// 0x16, binary data.
    AuthenticationData = 0x16,
    /// 0x17, byte.
    RequestProblemInformation = 0x17,
    /// 0x18, four byte integer.
    WillDelayInterval = 0x18,
    /// 0x19, byte.
    RequestResponseInformation = 0x19,
    /// 0x1A, UTF-8 string.
    ResponseInformation = 0x1A,
    /// 0x1C, UTF-8 string.
    ServerReference = 0x1C,
    /// 0x1F, UTF-8 string.
    ReasonString = 0x1F,
    /// 0x21, two byte integer.
    ReceiveMaximum = 0x21,
    /// 0x22, two byte integer.
    TopicAliasMaximum = 0x22,
    /// 0x23, two byte integer.
    TopicAlias = 0x23,
    /// 0x24, byte.
    MaximumQoS = 0x24,
    /// 0x25, byte.
    RetainAvailable = 0x25,
    /// 0x26, UTF-8 string pair.
    UserProperty = 0x26,
    /// 0x27, four byte integer.
    MaximumPacketSize = 0x27,
    /// 0x28, byte.
    WildcardSubscriptionAvailable = 0x28,
    /// 0x29, byte.
    SubscriptionIdentifierAvailable = 0x29,
    /// 0x2A, byte.
    SharedSubscriptionAvailable = 0x2A,
}

/// Where a set of properties appears; each place allows a different set (spec table 2-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyContext {
    /// CONNECT variable header.
    Connect,
    /// The will properties in the CONNECT payload.
    Will,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl PropertyId {
    /// Every property identifier.
    pub const ALL: [PropertyId; 27] = [
        Self::PayloadFormatIndicator,
        Self::MessageExpiryInterval,
        Self::ContentType,
        Self::ResponseTopic,
        Self::CorrelationData,
        Self::SubscriptionIdentifier,
        Self::SessionExpiryInterval,
        Self::AssignedClientIdentifier,
        Self::ServerKeepAlive,
        Self::AuthenticationMethod,
        Self::AuthenticationData,
        Self::RequestProblemInformation,
        Self::WillDelayInterval,
        Self::RequestResponseInformation,
        Self::ResponseInformation,
        Self::ServerReference,
        Self::ReasonString,
        Self::ReceiveMaximum,
        Self::TopicAliasMaximum,
        Self::TopicAlias,
        Self::MaximumQoS,
        Self::RetainAvailable,
        Self::UserProperty,
        Self::MaximumPacketSize,
        Self::WildcardSubscriptionAvailable,
        Self::SubscriptionIdentifierAvailable,
        Self::SharedSubscriptionAvailable,
    ];

    /// Parses a wire identifier; `None` for an identifier the spec does not define.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| *p as u8 == value)
    }

    /// Whether this property may appear in `ctx` (spec table 2-4).
    pub fn allowed_in(self, ctx: PropertyContext) -> bool {
        use PropertyContext as C;
        use PropertyId as P;
        match self {
            P::PayloadFormatIndicator
            | P::MessageExpiryInterval
            | P::ContentType
            | P::ResponseTopic
            | P::CorrelationData => matches!(ctx, C::Publish | C::Will),
            P::SubscriptionIdentifier => matches!(ctx, C::Publish | C::Subscribe),
            P::SessionExpiryInterval => matches!(ctx, C::Connect | C::ConnAck | C::Disconnect),
            P::AssignedClientIdentifier
            | P::ServerKeepAlive
            | P::ResponseInformation
            | P::RetainAvailable
            | P::MaximumQoS
            | P::WildcardSubscriptionAvailable
            | P::SubscriptionIdentifierAvailable
            | P::SharedSubscriptionAvailable => matches!(ctx, C::ConnAck),
            P::AuthenticationMethod | P::AuthenticationData => {
                matches!(ctx, C::Connect | C::ConnAck | C::Auth)
            }
            P::RequestProblemInformation | P::RequestResponseInformation => {
                matches!(ctx, C::Connect)
            }
            P::WillDelayInterval => matches!(ctx, C::Will),
            P::ServerReference => matches!(ctx, C::ConnAck | C::Disconnect),
            P::ReasonString => matches!(
                ctx,
                C::ConnAck | C::Ack | C::SubAck | C::UnsubAck | C::Disconnect | C::Auth
            ),
            P::ReceiveMaximum | P::TopicAliasMaximum | P::MaximumPacketSize => {
                matches!(ctx, C::Connect | C::ConnAck)
            }
            P::TopicAlias => matches!(ctx, C::Publish),
            P::UserProperty => true,
        }
    }

    /// Whether the property may appear more than once in one packet.
    pub fn repeatable(self) -> bool {
        matches!(self, Self::UserProperty | Self::SubscriptionIdentifier)
    }
}

/// The values of a packet's properties. Fields absent on the wire are `None` / empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PropertyValues {
    /// 0x01: 0 = unspecified bytes, 1 = UTF-8 payload.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds until the message expires.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME type of the payload.
    pub content_type: Option<String>,
    /// 0x08: topic name for a response (request/response pattern).
    pub response_topic: Option<String>,
    /// 0x09: binary data correlating a response with its request.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers; one in SUBSCRIBE, any number in PUBLISH from the server.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11: session expiry in seconds (0xFFFF_FFFF = never).
    pub session_expiry_interval: Option<u32>,
    /// 0x12: the client identifier the server assigned.
    pub assigned_client_identifier: Option<String>,
    /// 0x13: keep-alive the server imposes, in seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15: name of the enhanced authentication method.
    pub authentication_method: Option<String>,
    /// 0x16: method-specific authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: 0 = the server sends no reason strings or user properties except on PUBLISH,
    /// CONNACK and DISCONNECT.
    pub request_problem_information: Option<u8>,
    /// 0x18: seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// 0x19: 1 = the client asks for Response Information in CONNACK.
    pub request_response_information: Option<u8>,
    /// 0x1A: basis for response topics.
    pub response_information: Option<String>,
    /// 0x1C: another server to use.
    pub server_reference: Option<String>,
    /// 0x1F: human-readable diagnostic.
    pub reason_string: Option<String>,
    /// 0x21: how many QoS 1/2 publishes the sender of this property accepts at once.
    pub receive_maximum: Option<u16>,
    /// 0x22: highest topic alias the sender of this property accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias of this PUBLISH.
    pub topic_alias: Option<u16>,
    /// 0x24: highest QoS the server supports (0 or 1; absent = 2).
    pub maximum_qos: Option<u8>,
    /// 0x25: 0 = retained messages are not supported.
    pub retain_available: Option<u8>,
    /// 0x26: name/value pairs, in wire order.
    pub user_properties: Vec<(String, String)>,
    /// 0x27: largest packet the sender of this property accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: 0 = wildcard subscriptions are not supported.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29: 0 = subscription identifiers are not supported.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A: 0 = shared subscriptions are not supported.
    pub shared_subscription_available: Option<u8>,
}

impl PropertyValues {
    /// No property set; usable in `const` and `static` items.
    pub const EMPTY: Self = Self {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };

    /// True when no property is set. (Against the static empty values: comparing with
    /// `Self::EMPTY` built the constant, some 340 bytes, on the stack at every call.)
    pub fn is_empty(&self) -> bool {
        *self == EMPTY_VALUES
    }
}

static EMPTY_VALUES: PropertyValues = PropertyValues::EMPTY;

/// The properties of one packet. Empty (the usual case, and always for MQTT 3.x) costs no
/// allocation and keeps every packet small to move; values are read and written through
/// `Deref`/`DerefMut` to [`PropertyValues`], and the first write allocates them.
#[derive(Clone, Debug, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

impl Properties {
    /// True when no property is set.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(PropertyValues::is_empty)
    }

    /// True when no values were ever set (cheaper than [`Properties::is_empty`], which also
    /// looks into values that were set and cleared).
    #[inline]
    pub fn is_unset(&self) -> bool {
        self.0.is_none()
    }

    /// The values, for changing them only if some exist (no allocation when empty).
    pub fn values_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }

    /// Properties holding `values` (none allocated if `values` is empty).
    pub fn from_values(values: PropertyValues) -> Self {
        if values.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(values)))
        }
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
        Self::from_values(values)
    }
}

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&EMPTY_VALUES)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

/// The largest subscription identifier (a variable byte integer of four bytes).
pub const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;
