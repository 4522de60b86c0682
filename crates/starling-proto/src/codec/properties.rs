//! MQTT 5 property lists (spec 2.2.2): decoding into [`Properties`] with the per-context,
//! duplicate and value-range checks, and encoding in ascending identifier order.

use bytes::BufMut;

use super::reader::Reader;
use super::varint::{self, MAX_VARINT};
use super::{DecodeLimits, topic_error};
use crate::error::{DecodeError, EncodeError};
use crate::property::{Properties, PropertyContext, PropertyId};
use crate::topic::{MAX_TOPIC_LEN, validate_topic_name};

/// Reads a property length and the properties it covers, allowing only what `ctx` permits.
pub(crate) fn decode(
    r: &mut Reader,
    ctx: PropertyContext,
    limits: &DecodeLimits,
) -> Result<Properties, DecodeError> {
    let len = r.varint()?;
    let mut p = Reader::new(r.take(len as usize)?);
    let mut props = Properties::default();
    while !p.is_empty() {
        let raw = p.u8()?;
        let id = PropertyId::from_u8(raw).ok_or(DecodeError::UnknownProperty(raw))?;
        if !id.allowed_in(ctx) {
            return Err(DecodeError::PropertyNotAllowed(id));
        }
        decode_one(&mut p, id, ctx, limits, &mut props)?;
    }
    Ok(props)
}

fn decode_one(
    p: &mut Reader,
    id: PropertyId,
    ctx: PropertyContext,
    limits: &DecodeLimits,
    props: &mut Properties,
) -> Result<(), DecodeError> {
    use PropertyId as P;
    match id {
        P::PayloadFormatIndicator => set(&mut props.payload_format_indicator, id, flag(p, id)?),
        P::MessageExpiryInterval => set(&mut props.message_expiry_interval, id, p.u32()?),
        P::ContentType => set(&mut props.content_type, id, p.string()?),
        P::ResponseTopic => {
            let topic = p.string()?;
            validate_topic_name(topic.as_bytes(), limits.max_topic_levels).map_err(topic_error)?;
            set(&mut props.response_topic, id, topic)
        }
        P::CorrelationData => set(&mut props.correlation_data, id, p.binary()?),
        P::SubscriptionIdentifier => {
            let value = p.varint()?;
            if value == 0 {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
            // Repeatable in PUBLISH (one per matching subscription), but SUBSCRIBE carries at
            // most one (spec 3.8.2.1.2).
            if ctx == PropertyContext::Subscribe && !props.subscription_identifiers.is_empty() {
                return Err(DecodeError::DuplicateProperty(id));
            }
            props.subscription_identifiers.push(value);
            Ok(())
        }
        P::SessionExpiryInterval => set(&mut props.session_expiry_interval, id, p.u32()?),
        P::AssignedClientIdentifier => set(&mut props.assigned_client_identifier, id, p.string()?),
        P::ServerKeepAlive => set(&mut props.server_keep_alive, id, p.u16()?),
        P::AuthenticationMethod => set(&mut props.authentication_method, id, p.string()?),
        P::AuthenticationData => set(&mut props.authentication_data, id, p.binary()?),
        P::RequestProblemInformation => {
            set(&mut props.request_problem_information, id, flag(p, id)?)
        }
        P::WillDelayInterval => set(&mut props.will_delay_interval, id, p.u32()?),
        P::RequestResponseInformation => {
            set(&mut props.request_response_information, id, flag(p, id)?)
        }
        P::ResponseInformation => set(&mut props.response_information, id, p.string()?),
        P::ServerReference => set(&mut props.server_reference, id, p.string()?),
        P::ReasonString => set(&mut props.reason_string, id, p.string()?),
        P::ReceiveMaximum => set(&mut props.receive_maximum, id, non_zero_u16(p, id)?),
        P::TopicAliasMaximum => set(&mut props.topic_alias_maximum, id, p.u16()?),
        // Topic alias 0 is a protocol error the broker answers with 0x94; not the codec's call.
        P::TopicAlias => set(&mut props.topic_alias, id, p.u16()?),
        P::MaximumQoS => set(&mut props.maximum_qos, id, flag(p, id)?),
        P::RetainAvailable => set(&mut props.retain_available, id, flag(p, id)?),
        P::UserProperty => {
            if props.user_properties.len() >= limits.max_user_properties {
                return Err(DecodeError::TooManyUserProperties(
                    limits.max_user_properties,
                ));
            }
            let name = p.string()?;
            let value = p.string()?;
            props.user_properties.push((name, value));
            Ok(())
        }
        P::MaximumPacketSize => {
            let value = p.u32()?;
            if value == 0 {
                return Err(DecodeError::InvalidPropertyValue(id));
            }
            set(&mut props.maximum_packet_size, id, value)
        }
        P::WildcardSubscriptionAvailable => {
            set(&mut props.wildcard_subscription_available, id, flag(p, id)?)
        }
        P::SubscriptionIdentifierAvailable => set(
            &mut props.subscription_identifier_available,
            id,
            flag(p, id)?,
        ),
        P::SharedSubscriptionAvailable => {
            set(&mut props.shared_subscription_available, id, flag(p, id)?)
        }
    }
}

fn set<T>(slot: &mut Option<T>, id: PropertyId, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property whose only values are 0 and 1.
fn flag(p: &mut Reader, id: PropertyId) -> Result<u8, DecodeError> {
    match p.u8()? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn non_zero_u16(p: &mut Reader, id: PropertyId) -> Result<u16, DecodeError> {
    match p.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        value => Ok(value),
    }
}

/// One property value, as it is laid out on the wire.
#[derive(Clone, Copy, Debug)]
enum Value<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(&'a [u8]),
    Pair(&'a str, &'a str),
}

/// Calls `f` for every property that is set, in ascending identifier order (user properties
/// and subscription identifiers in their order).
fn each<'a>(
    props: &'a Properties,
    mut f: impl FnMut(PropertyId, Value<'a>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    use PropertyId as P;
    use Value as V;
    // One `if let` per field, in identifier order: no intermediate collection.
    macro_rules! emit {
        ($id:expr, $field:expr, $value:expr) => {
            if let Some(v) = $field {
                f($id, $value(v))?;
            }
        };
    }
    let str = |s: &'a String| V::Str(s.as_bytes());
    let bin = |b: &'a bytes::Bytes| V::Str(b.as_ref());
    emit!(
        P::PayloadFormatIndicator,
        props.payload_format_indicator,
        V::Byte
    );
    emit!(
        P::MessageExpiryInterval,
        props.message_expiry_interval,
        V::U32
    );
    emit!(P::ContentType, &props.content_type, str);
    emit!(P::ResponseTopic, &props.response_topic, str);
    emit!(P::CorrelationData, &props.correlation_data, bin);
    for &sub_id in &props.subscription_identifiers {
        f(P::SubscriptionIdentifier, V::VarInt(sub_id))?;
    }
    emit!(
        P::SessionExpiryInterval,
        props.session_expiry_interval,
        V::U32
    );
    emit!(
        P::AssignedClientIdentifier,
        &props.assigned_client_identifier,
        str
    );
    emit!(P::ServerKeepAlive, props.server_keep_alive, V::U16);
    emit!(P::AuthenticationMethod, &props.authentication_method, str);
    emit!(P::AuthenticationData, &props.authentication_data, bin);
    emit!(
        P::RequestProblemInformation,
        props.request_problem_information,
        V::Byte
    );
    emit!(P::WillDelayInterval, props.will_delay_interval, V::U32);
    emit!(
        P::RequestResponseInformation,
        props.request_response_information,
        V::Byte
    );
    emit!(P::ResponseInformation, &props.response_information, str);
    emit!(P::ServerReference, &props.server_reference, str);
    emit!(P::ReasonString, &props.reason_string, str);
    emit!(P::ReceiveMaximum, props.receive_maximum, V::U16);
    emit!(P::TopicAliasMaximum, props.topic_alias_maximum, V::U16);
    emit!(P::TopicAlias, props.topic_alias, V::U16);
    emit!(P::MaximumQoS, props.maximum_qos, V::Byte);
    emit!(P::RetainAvailable, props.retain_available, V::Byte);
    for (name, value) in &props.user_properties {
        f(P::UserProperty, V::Pair(name, value))?;
    }
    emit!(P::MaximumPacketSize, props.maximum_packet_size, V::U32);
    emit!(
        P::WildcardSubscriptionAvailable,
        props.wildcard_subscription_available,
        V::Byte
    );
    emit!(
        P::SubscriptionIdentifierAvailable,
        props.subscription_identifier_available,
        V::Byte
    );
    emit!(
        P::SharedSubscriptionAvailable,
        props.shared_subscription_available,
        V::Byte
    );
    Ok(())
}

/// Length of a string or binary field (two-byte prefix included); errors above 65,535 bytes.
pub(crate) fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > MAX_TOPIC_LEN {
        return Err(EncodeError::FieldTooLong(len));
    }
    Ok(2 + len)
}

fn value_len(value: Value<'_>) -> Result<usize, EncodeError> {
    Ok(match value {
        Value::Byte(_) => 1,
        Value::U16(_) => 2,
        Value::U32(_) => 4,
        Value::VarInt(v) => {
            if v > MAX_VARINT {
                return Err(EncodeError::OutOfRange("subscription identifier"));
            }
            varint::len(v as usize)
        }
        Value::Str(s) => field_len(s.len())?,
        Value::Pair(name, value) => field_len(name.len())? + field_len(value.len())?,
    })
}

/// Length of the properties without their length prefix. Errors for a field over 65,535
/// bytes, a subscription identifier over the maximum, or a total over the varint maximum.
pub(crate) fn content_len(props: &Properties) -> Result<usize, EncodeError> {
    if props.is_empty() {
        return Ok(0);
    }
    let mut total = 0usize;
    each(props, |_, value| {
        total = total.saturating_add(1 + value_len(value)?);
        Ok(())
    })?;
    if total > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(total)
}

/// Length of the properties with their length prefix.
pub(crate) fn encoded_len(props: &Properties) -> Result<usize, EncodeError> {
    let content = content_len(props)?;
    Ok(varint::len(content) + content)
}

/// Writes the property length `content` (from [`content_len`]) and the properties.
pub(crate) fn write(
    buf: &mut impl BufMut,
    props: &Properties,
    content: usize,
) -> Result<(), EncodeError> {
    varint::write(
        buf,
        u32::try_from(content).map_err(|_| EncodeError::PacketTooLarge)?,
    );
    if content == 0 {
        return Ok(());
    }
    each(props, |id, value| {
        buf.put_u8(id as u8);
        match value {
            Value::Byte(v) => buf.put_u8(v),
            Value::U16(v) => buf.put_u16(v),
            Value::U32(v) => buf.put_u32(v),
            Value::VarInt(v) => varint::write(buf, v),
            Value::Str(s) => put_field(buf, s)?,
            Value::Pair(name, value) => {
                put_field(buf, name.as_bytes())?;
                put_field(buf, value.as_bytes())?;
            }
        }
        Ok(())
    })
}

/// Writes a two-byte length and the bytes of a string or binary field.
pub(crate) fn put_field(buf: &mut impl BufMut, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong(bytes.len()))?;
    buf.put_u16(len);
    buf.put_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_property_is_written_in_ascending_order() {
        let s = || Some("s".to_string());
        let props: Properties = crate::property::PropertyValues {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(1),
            content_type: s(),
            response_topic: s(),
            correlation_data: Some(bytes::Bytes::from_static(b"c")),
            subscription_identifiers: vec![1, 2],
            session_expiry_interval: Some(1),
            assigned_client_identifier: s(),
            server_keep_alive: Some(1),
            authentication_method: s(),
            authentication_data: Some(bytes::Bytes::from_static(b"d")),
            request_problem_information: Some(1),
            will_delay_interval: Some(1),
            request_response_information: Some(1),
            response_information: s(),
            server_reference: s(),
            reason_string: s(),
            receive_maximum: Some(1),
            topic_alias_maximum: Some(1),
            topic_alias: Some(1),
            maximum_qos: Some(1),
            retain_available: Some(1),
            user_properties: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
            maximum_packet_size: Some(1),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(1),
        }
        .into();
        let mut ids = Vec::new();
        each(&props, |id, _| {
            ids.push(id as u8);
            Ok(())
        })
        .unwrap();
        let mut expected: Vec<u8> = PropertyId::ALL.iter().map(|&id| id as u8).collect();
        expected.push(PropertyId::SubscriptionIdentifier as u8);
        expected.push(PropertyId::UserProperty as u8);
        expected.sort_unstable();
        assert_eq!(ids, expected);
        let mut buf = Vec::new();
        let len = content_len(&props).unwrap();
        write(&mut buf, &props, len).unwrap();
        assert_eq!(buf.len(), encoded_len(&props).unwrap());
    }
}
