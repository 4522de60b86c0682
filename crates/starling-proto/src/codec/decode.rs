//! Decoding: the fixed header (type, flags, remaining length, size limit) and the body of
//! every packet type, with the checks the specifications call Malformed Packet or Protocol
//! Error. Nothing here recurses, indexes unchecked or preallocates from a peer's count.

use bytes::{Buf, BytesMut};

use super::properties;
use super::reader::Reader;
use super::varint::{self, VarInt};
use super::{DecodeLimits, check_controls, topic_error};
use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubAck, Publish, QoS,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::property::{Properties, PropertyContext};
use crate::reason::{ReasonCode, ReasonContext};
use crate::topic::{TopicFilter, TopicName};

/// The total size (fixed header included) of the packet at the front of `buf`, once its fixed
/// header is readable; `None` before that or if the header is invalid (then [`decode`] says
/// why). Lets a reader reserve room for a large packet at once instead of growing its buffer
/// step by step. The size is whatever the peer declared: check it against a limit first.
pub fn packet_len(buf: &[u8]) -> Option<usize> {
    match varint::parse(buf.get(1..)?) {
        Ok(VarInt::Done(value, len)) => Some(1 + len + value as usize),
        _ => None,
    }
}

/// The protocol version of the CONNECT at the front of `buf`, read from the start of its
/// variable header alone: the packet may be incomplete, too large or malformed further on.
/// `None` if `buf` does not start with a CONNECT naming a supported protocol that far. Lets
/// a receiver answer a CONNECT it refuses in the client's own protocol version.
pub fn connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let VarInt::Done(_, len_len) = varint::parse(buf.get(1..)?).ok()? else {
        return None;
    };
    let rest = buf.get(1 + len_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    let level = *rest.get(2 + name_len)?;
    // A bridge's 3.x level carries the top bit.
    let level = if matches!(level, 0x83 | 0x84) {
        level & 0x7F
    } else {
        level
    };
    match (name, level) {
        (b"MQIsdp", 3) => Some(ProtocolVersion::V31),
        (b"MQTT", 4) => Some(ProtocolVersion::V311),
        (b"MQTT", 5) => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` while `buf` does not hold a whole packet, leaving it untouched; only the
/// fixed header is looked at then. On `Ok(Some(_))` the packet's bytes are removed from `buf`,
/// and the payload, topic names and binary properties are zero-copy slices of them. CONNECT is
/// decoded by the level it carries; every other packet by `version`. A declared size over
/// `limits.max_packet_size` is rejected as soon as the fixed header is complete. After an
/// error the connection is to be closed; the contents of `buf` are unspecified.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = packet_type(first, version)?;
    let (remaining, len_len) = match varint::parse(buf.get(1..).unwrap_or_default())? {
        VarInt::Done(value, len) => (value as usize, len),
        VarInt::Incomplete => return Ok(None),
    };
    let total = 1 + len_len + remaining;
    if total > limits.max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: limits.max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    if let Some(ack) = short_ack(buf, packet_type, remaining, total) {
        return ack.map(Some);
    }
    let mut bytes = buf.split_to(total).freeze();
    bytes.advance(1 + len_len);
    let mut r = Reader::new(bytes);
    let flags = first & 0x0F;
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect(&mut r, flags, limits)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(&mut r, version, limits)?),
        PacketType::Publish => Packet::Publish(publish(&mut r, flags, version, limits)?),
        PacketType::PubAck => {
            Packet::PubAck(ack(&mut r, version, ReasonContext::PubAckRec, limits)?)
        }
        PacketType::PubRec => {
            Packet::PubRec(ack(&mut r, version, ReasonContext::PubAckRec, limits)?)
        }
        PacketType::PubRel => {
            Packet::PubRel(ack(&mut r, version, ReasonContext::PubRelComp, limits)?)
        }
        PacketType::PubComp => {
            Packet::PubComp(ack(&mut r, version, ReasonContext::PubRelComp, limits)?)
        }
        PacketType::Subscribe => Packet::Subscribe(subscribe(&mut r, version, limits)?),
        PacketType::SubAck => Packet::SubAck(suback(&mut r, version, limits)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r, version, limits)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(&mut r, version, limits)?),
        PacketType::PingReq => {
            r.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(disconnect(&mut r, version, limits)?),
        PacketType::Auth => Packet::Auth(auth(&mut r, limits)?),
    };
    Ok(Some(packet))
}

/// The packet type of a first header byte, with its reserved flag bits checked
/// (MQTT-2.1.3-1): PUBREL, SUBSCRIBE and UNSUBSCRIBE need 0b0010, all but PUBLISH need 0.
/// An acknowledgement of a packet identifier alone (every MQTT 3.1.1 one, and a v5 success
/// without properties: the usual case) read in place, as `ack` would read it: splitting its
/// four bytes off the buffer as shared `Bytes` costs two atomic counts, a fifth of the cost of
/// a PUBACK in fan-out. `None` for any other packet.
fn short_ack(
    buf: &mut BytesMut,
    packet_type: PacketType,
    remaining: usize,
    total: usize,
) -> Option<Result<Packet, DecodeError>> {
    use PacketType as T;
    if !matches!(packet_type, T::PubAck | T::PubRec | T::PubRel | T::PubComp)
        || remaining != 2
        || total != 4
    {
        return None;
    }
    // One byte of type and flags, one of remaining length (2), the packet identifier.
    let id = match buf.get(..4)? {
        &[_, _, hi, lo] => u16::from_be_bytes([hi, lo]),
        _ => return None,
    };
    buf.advance(4);
    if id == 0 {
        return Some(Err(DecodeError::ZeroPacketId));
    }
    let ack = PubAck::new(id);
    // Built in place (a constructor passed as a function moved the packet twice).
    Some(Ok(match packet_type {
        T::PubRec => Packet::PubRec(ack),
        T::PubRel => Packet::PubRel(ack),
        T::PubComp => Packet::PubComp(ack),
        _ => Packet::PubAck(ack),
    }))
}

fn packet_type(first: u8, version: ProtocolVersion) -> Result<PacketType, DecodeError> {
    use PacketType as T;
    let raw = first >> 4;
    let packet_type = match raw {
        1 => T::Connect,
        2 => T::ConnAck,
        3 => return Ok(T::Publish),
        4 => T::PubAck,
        5 => T::PubRec,
        6 => T::PubRel,
        7 => T::PubComp,
        8 => T::Subscribe,
        9 => T::SubAck,
        10 => T::Unsubscribe,
        11 => T::UnsubAck,
        12 => T::PingReq,
        13 => T::PingResp,
        14 => T::Disconnect,
        15 if version.is_v5() => T::Auth,
        _ => return Err(DecodeError::InvalidPacketType(raw)),
    };
    let expected = match packet_type {
        T::PubRel | T::Subscribe | T::Unsubscribe => 0b0010,
        _ => 0,
    };
    let flags = first & 0x0F;
    // MQTT 3.1 did not require CONNECT's flag bits to be zero: checked once the CONNECT says
    // which level it is (`connect`).
    if flags != expected && packet_type != T::Connect {
        return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
    }
    Ok(packet_type)
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn reason(code: u8, ctx: ReasonContext) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(code)
        .filter(|rc| rc.is_valid_in(ctx))
        .ok_or(DecodeError::InvalidReasonCode(code))
}

fn props(
    r: &mut Reader,
    version: ProtocolVersion,
    ctx: PropertyContext,
    limits: &DecodeLimits,
) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        properties::decode(r, ctx, limits)
    } else {
        Ok(Properties::default())
    }
}

fn topic_name(bytes: bytes::Bytes, limits: &DecodeLimits) -> Result<TopicName, DecodeError> {
    let name = TopicName::new(bytes, limits.max_topic_levels).map_err(topic_error)?;
    check_controls(name.as_bytes(), limits)?;
    Ok(name)
}

fn topic_filter(r: &mut Reader, limits: &DecodeLimits) -> Result<TopicFilter, DecodeError> {
    let filter = TopicFilter::new(r.binary()?, limits.max_topic_levels).map_err(topic_error)?;
    check_controls(filter.as_bytes(), limits)?;
    Ok(filter)
}

/// A client id or user name: a UTF-8 string without control characters unless allowed.
fn name_string(r: &mut Reader, limits: &DecodeLimits) -> Result<String, DecodeError> {
    let s = r.string()?;
    check_controls(s.as_bytes(), limits)?;
    Ok(s)
}

/// CONNECT. `header_flags` are the fixed header's low bits: 0 for 3.1.1 and 5
/// (MQTT-2.1.3-1), anything for 3.1, whose brokers ignored them, as they ignored the reserved
/// connect flag.
fn connect(
    r: &mut Reader,
    header_flags: u8,
    limits: &DecodeLimits,
) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let raw_level = r.u8()?;
    // mosquitto's bridges set the top bit in 3.x (`try_private`).
    let bridge = raw_level & 0x80 != 0 && matches!(raw_level & 0x7F, 3 | 4);
    let level = if bridge { raw_level & 0x7F } else { raw_level };
    let protocol = match (name.as_ref(), level) {
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp" | b"MQTT", _) => return Err(DecodeError::UnsupportedProtocolLevel(raw_level)),
        _ => return Err(DecodeError::UnknownProtocolName),
    };
    let strict = protocol != ProtocolVersion::V31;
    if strict && header_flags != 0 {
        return Err(DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Connect,
            flags: header_flags,
        });
    }
    let flags = r.u8()?;
    if strict && flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS)?;
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = props(r, protocol, PropertyContext::Connect, limits)?;
    let client_id = name_string(r, limits)?;
    let will = if will_flag {
        let properties = props(r, protocol, PropertyContext::Will, limits)?;
        let topic = topic_name(r.binary()?, limits)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(name_string(r, limits)?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        bridge,
    })
}

fn connack(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        // Bits 7-1 of the acknowledge flags are reserved (MQTT-3.2.2-1).
        return Err(DecodeError::InvalidReasonCode(flags));
    }
    let code = r.u8()?;
    let reason = if version.is_v5() {
        reason(code, ReasonContext::ConnAck)?
    } else {
        ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode(code))?
    };
    let properties = props(r, version, PropertyContext::ConnAck, limits)?;
    r.finish()?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason,
        properties,
    })
}

fn publish(
    r: &mut Reader,
    flags: u8,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQoS0);
    }
    let topic = r.binary()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = props(r, version, PropertyContext::Publish, limits)?;
    let topic = if topic.is_empty() {
        // Only an MQTT 5 topic alias may stand in for the topic name (MQTT-3.3.2-1, 3.3.4).
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        TopicName::empty()
    } else {
        topic_name(topic, limits)?
    };
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. MQTT 5 may leave out the properties, and the reason code
/// too when it is Success (remaining length 2 or 3).
fn ack(
    r: &mut Reader,
    version: ProtocolVersion,
    ctx: ReasonContext,
    limits: &DecodeLimits,
) -> Result<PubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !version.is_v5() || r.is_empty() {
        r.finish()?;
        return Ok(PubAck::new(packet_id));
    }
    let reason = reason(r.u8()?, ctx)?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        properties::decode(r, PropertyContext::Ack, limits)?
    };
    r.finish()?;
    Ok(PubAck {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, PropertyContext::Subscribe, limits)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r, limits)?;
        let options = subscription_options(r.u8()?, version)?;
        if options.no_local && filter.share_group().is_some() {
            // No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4).
            return Err(DecodeError::NoLocalOnShared);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// Subscription options (spec 3.8.3.1): MQTT 5 reserves bits 6-7 and retain handling 3;
/// before MQTT 5 only the QoS bits exist.
fn subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos: QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionQoS)?,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn suback(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, PropertyContext::SubAck, limits)?;
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let code = r.u8()?;
        reasons.push(if version.is_v5() {
            reason(code, ReasonContext::SubAck)?
        } else {
            ReasonCode::from_v3_suback(code).ok_or(DecodeError::InvalidReasonCode(code))?
        });
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, PropertyContext::Unsubscribe, limits)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r, limits)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, PropertyContext::UnsubAck, limits)?;
    let mut reasons = Vec::new();
    if version.is_v5() {
        while !r.is_empty() {
            reasons.push(reason(r.u8()?, ReasonContext::UnsubAck)?);
        }
    }
    r.finish()?;
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

/// DISCONNECT: empty before MQTT 5; in MQTT 5 remaining length 0 means Success and no
/// properties, 1 a reason code alone.
fn disconnect(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Disconnect, DecodeError> {
    if !version.is_v5() || r.is_empty() {
        r.finish()?;
        return Ok(Disconnect::new(ReasonCode::Success));
    }
    let reason = reason(r.u8()?, ReasonContext::Disconnect)?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        properties::decode(r, PropertyContext::Disconnect, limits)?
    };
    r.finish()?;
    Ok(Disconnect { reason, properties })
}

/// AUTH: remaining length 0 means Success and no properties; otherwise a reason code and a
/// property list (which cannot be left out alone).
fn auth(r: &mut Reader, limits: &DecodeLimits) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        });
    }
    let reason = reason(r.u8()?, ReasonContext::Auth)?;
    let properties = properties::decode(r, PropertyContext::Auth, limits)?;
    r.finish()?;
    Ok(Auth { reason, properties })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Acknowledgements of a packet identifier alone, read in place, take exactly their four
    /// bytes and leave what follows; a longer one (a v5 reason code) is read in full.
    #[test]
    fn short_acks_are_read_in_place() {
        let mut buf = BytesMut::from(
            &[
                0x40, 2, 0, 7, // PUBACK 7
                0x50, 2, 1, 0, // PUBREC 256
                0x62, 2, 0xFF, 0xFF, // PUBREL 65535
                0x70, 2, 0, 1, // PUBCOMP 1
                0x40, 3, 0, 9, 0x10, // v5 PUBACK 9, No matching subscribers
                0x40, 2, 0, // the start of the next
            ][..],
        );
        let limits = DecodeLimits::default();
        let mut next = || decode(&mut buf, ProtocolVersion::V5, &limits).unwrap();
        assert_eq!(next(), Some(Packet::PubAck(PubAck::new(7))));
        assert_eq!(next(), Some(Packet::PubRec(PubAck::new(256))));
        assert_eq!(next(), Some(Packet::PubRel(PubAck::new(65535))));
        assert_eq!(next(), Some(Packet::PubComp(PubAck::new(1))));
        assert_eq!(
            next(),
            Some(Packet::PubAck(PubAck::with_reason(
                9,
                ReasonCode::NoMatchingSubscribers
            )))
        );
        assert_eq!(next(), None);
        assert_eq!(&buf[..], &[0x40, 2, 0]);
    }
}
