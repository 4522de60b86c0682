//! The words the client commands print for reason codes, in mosquitto's wording so that
//! scripts matching on them keep working.

use starling_proto::{ProtocolVersion, ReasonCode};

/// The text of an MQTT 3.x CONNACK return code.
pub fn connack_v3(code: u8) -> &'static str {
    match code {
        0 => "Connection Accepted.",
        1 => "Connection Refused: unacceptable protocol version.",
        2 => "Connection Refused: identifier rejected.",
        3 => "Connection Refused: broker unavailable.",
        4 => "Connection Refused: bad user name or password.",
        5 => "Connection Refused: not authorised.",
        _ => "Connection Refused: unknown reason.",
    }
}

/// The text of an MQTT 5 reason code.
pub fn reason(code: ReasonCode) -> &'static str {
    use ReasonCode as R;
    match code {
        R::Success => "Success",
        R::GrantedQoS1 => "Granted QoS 1",
        R::GrantedQoS2 => "Granted QoS 2",
        R::DisconnectWithWill => "Disconnect with Will Message",
        R::NoMatchingSubscribers => "No matching subscribers",
        R::NoSubscriptionExisted => "No subscription existed",
        R::ContinueAuthentication => "Continue authentication",
        R::ReAuthenticate => "Re-authenticate",
        R::UnspecifiedError => "Unspecified error",
        R::MalformedPacket => "Malformed Packet",
        R::ProtocolError => "Protocol Error",
        R::ImplementationSpecificError => "Implementation specific error",
        R::UnsupportedProtocolVersion => "Unsupported Protocol Version",
        R::ClientIdentifierNotValid => "Client Identifier not valid",
        R::BadUserNameOrPassword => "Bad User Name or Password",
        R::NotAuthorized => "Not authorized",
        R::ServerUnavailable => "Server unavailable",
        R::ServerBusy => "Server busy",
        R::Banned => "Banned",
        R::ServerShuttingDown => "Server shutting down",
        R::BadAuthenticationMethod => "Bad authentication method",
        R::KeepAliveTimeout => "Keep Alive timeout",
        R::SessionTakenOver => "Session taken over",
        R::TopicFilterInvalid => "Topic Filter invalid",
        R::TopicNameInvalid => "Topic Name invalid",
        R::PacketIdentifierInUse => "Packet Identifier in use",
        R::PacketIdentifierNotFound => "Packet Identifier not found",
        R::ReceiveMaximumExceeded => "Receive Maximum exceeded",
        R::TopicAliasInvalid => "Topic Alias invalid",
        R::PacketTooLarge => "Packet too large",
        R::MessageRateTooHigh => "Message rate too high",
        R::QuotaExceeded => "Quota exceeded",
        R::AdministrativeAction => "Administrative action",
        R::PayloadFormatInvalid => "Payload format invalid",
        R::RetainNotSupported => "Retain not supported",
        R::QoSNotSupported => "QoS not supported",
        R::UseAnotherServer => "Use another server",
        R::ServerMoved => "Server moved",
        R::SharedSubscriptionsNotSupported => "Shared Subscriptions not supported",
        R::ConnectionRateExceeded => "Connection rate exceeded",
        R::MaximumConnectTime => "Maximum connect time",
        R::SubscriptionIdentifiersNotSupported => "Subscription identifiers not supported",
        R::WildcardSubscriptionsNotSupported => "Wildcard Subscriptions not supported",
    }
}

/// The line printed for a refused CONNACK and the exit status that goes with it: the 3.x
/// return code or the MQTT 5 reason code, as mosquitto's tools exit.
pub fn connack_refusal(version: ProtocolVersion, code: ReasonCode) -> (String, i32) {
    if version == ProtocolVersion::V5 {
        let text = if code == ReasonCode::UnsupportedProtocolVersion {
            format!(
                "Connection error: {}. Try connecting to an MQTT v5 broker, or use MQTT v3.x mode.",
                reason(code)
            )
        } else {
            format!("Connection error: {}", reason(code))
        };
        (text, i32::from(code.as_u8()))
    } else {
        let rc = code.to_v3_connack();
        (
            format!("Connection error: {}", connack_v3(rc)),
            i32::from(rc),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_match_the_wire_codes() {
        let (text, rc) = connack_refusal(ProtocolVersion::V311, ReasonCode::NotAuthorized);
        assert_eq!(
            text,
            "Connection error: Connection Refused: not authorised."
        );
        assert_eq!(rc, 5);
        let (text, rc) = connack_refusal(ProtocolVersion::V5, ReasonCode::BadUserNameOrPassword);
        assert_eq!(text, "Connection error: Bad User Name or Password");
        assert_eq!(rc, 0x86);
    }
}
