//! Encoding: the size of every packet for a protocol level, and its bytes. Fields that do not
//! exist at the level are left out (properties before MQTT 5, reason codes in 3.x acks), and
//! MQTT 5 reason codes are translated to 3.x return codes.

use bytes::{BufMut, BytesMut};

use super::properties::{self, field_len, put_field};
use super::varint::{self, MAX_VARINT};
use crate::error::EncodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, PubAck, Publish, QoS, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::property::Properties;
use crate::reason::ReasonCode;

/// Appends the encoding of `packet` for `version` to `buf`. A CONNECT is encoded for the
/// level it carries (`Connect::protocol`). Nothing is appended when an error is returned.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = encode_unchecked(packet, version, buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn encode_unchecked(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(publish) = packet {
        // Sizes computed once, for the header and the reservation.
        let layout = PublishLayout::new(publish, version)?;
        buf.reserve(layout.total);
        write_publish_header(publish, version, &layout, buf)?;
        buf.put_slice(&publish.payload);
        return Ok(());
    }
    let remaining = body_len(packet, version)?;
    buf.reserve(total_len(remaining)?);
    buf.put_u8(first_byte(packet));
    varint::write(
        buf,
        u32::try_from(remaining).map_err(|_| EncodeError::PacketTooLarge)?,
    );
    write_body(packet, version, buf)
}

/// Total encoded size of `packet` for `version`, fixed header included, without encoding it.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if let Packet::Publish(publish) = packet {
        return publish_len(publish, version);
    }
    total_len(body_len(packet, version)?)
}

/// Appends everything of a PUBLISH but its payload: the fixed header (whose remaining length
/// counts the payload), topic, packet identifier and properties. The caller sends
/// `publish.payload` right after.
pub fn encode_publish_header(
    publish: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let layout = PublishLayout::new(publish, version)?;
    buf.reserve(layout.total - publish.payload.len());
    let start = buf.len();
    let result = write_publish_header(publish, version, &layout, buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Size of the encoding of a PUBLISH, fixed header and payload included.
pub fn publish_len(publish: &Publish, version: ProtocolVersion) -> Result<usize, EncodeError> {
    Ok(PublishLayout::new(publish, version)?.total)
}

/// Fixed header plus `remaining`; errors past the largest remaining length.
fn total_len(remaining: usize) -> Result<usize, EncodeError> {
    if remaining > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(1 + varint::len(remaining) + remaining)
}

/// The sizes of a PUBLISH, computed once and used to write it.
struct PublishLayout {
    props: usize,
    remaining: usize,
    total: usize,
}

impl PublishLayout {
    fn new(publish: &Publish, version: ProtocolVersion) -> Result<Self, EncodeError> {
        let props = if version.is_v5() {
            properties::content_len(&publish.properties)?
        } else {
            0
        };
        let mut remaining = field_len(publish.topic.len())? + publish.payload.len();
        if publish.qos != QoS::AtMostOnce {
            remaining += 2;
        }
        if version.is_v5() {
            remaining += varint::len(props) + props;
        }
        Ok(Self {
            props,
            remaining,
            total: total_len(remaining)?,
        })
    }
}

fn write_publish_header(
    publish: &Publish,
    version: ProtocolVersion,
    layout: &PublishLayout,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u8(publish_first_byte(publish));
    varint::write(
        buf,
        u32::try_from(layout.remaining).map_err(|_| EncodeError::PacketTooLarge)?,
    );
    write_publish_fields(publish, version, layout, buf)
}

/// Topic, packet identifier (above QoS 0) and properties (MQTT 5).
fn write_publish_fields(
    publish: &Publish,
    version: ProtocolVersion,
    layout: &PublishLayout,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_field(buf, publish.topic.as_bytes())?;
    if publish.qos != QoS::AtMostOnce {
        buf.put_u16(publish.packet_id);
    }
    if version.is_v5() {
        properties::write(buf, &publish.properties, layout.props)?;
    }
    Ok(())
}

/// PUBLISH flags: DUP (written only above QoS 0, MQTT-3.3.1-2), QoS, RETAIN.
fn publish_first_byte(publish: &Publish) -> u8 {
    let dup = publish.dup && publish.qos != QoS::AtMostOnce;
    0x30 | (u8::from(dup) << 3) | (publish.qos.as_u8() << 1) | u8::from(publish.retain)
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(p),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// The bytes `props` take in an MQTT 5 packet, their length prefix included (1 for none).
/// Properties too long to encode count as the most a packet can hold.
pub fn properties_len(props: &Properties) -> usize {
    properties::encoded_len(props).unwrap_or(MAX_VARINT as usize)
}

/// Property list length with its prefix at MQTT 5, nothing before.
fn props_len(props: &Properties, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if version.is_v5() {
        properties::encoded_len(props)
    } else {
        Ok(0)
    }
}

fn write_props(
    buf: &mut BytesMut,
    props: &Properties,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        let content = properties::content_len(props)?;
        properties::write(buf, props, content)?;
    }
    Ok(())
}

/// How much of an MQTT 5 PUBACK-family, DISCONNECT or AUTH packet after the packet id is
/// written: nothing (Success, no properties), the reason code alone, or both.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Nothing,
    Reason,
    ReasonAndProps,
}

fn tail(reason: ReasonCode, props: &Properties, reason_alone_ok: bool) -> Tail {
    match (reason == ReasonCode::Success, props.is_empty()) {
        (true, true) => Tail::Nothing,
        (false, true) if reason_alone_ok => Tail::Reason,
        _ => Tail::ReasonAndProps,
    }
}

fn tail_len(tail: Tail, props: &Properties) -> Result<usize, EncodeError> {
    Ok(match tail {
        Tail::Nothing => 0,
        Tail::Reason => 1,
        Tail::ReasonAndProps => 1 + properties::encoded_len(props)?,
    })
}

fn write_tail(
    buf: &mut BytesMut,
    tail: Tail,
    reason: ReasonCode,
    props: &Properties,
) -> Result<(), EncodeError> {
    if tail != Tail::Nothing {
        buf.put_u8(reason.as_u8());
    }
    if tail == Tail::ReasonAndProps {
        write_props(buf, props, ProtocolVersion::V5)?;
    }
    Ok(())
}

fn subscription_options_byte(options: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = options.qos.as_u8();
    if !version.is_v5() {
        return qos;
    }
    qos | (u8::from(options.no_local) << 2)
        | (u8::from(options.retain_as_published) << 3)
        | ((options.retain_handling as u8) << 4)
}

/// The remaining length of a packet other than PUBLISH.
fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let v5 = version.is_v5();
    Ok(match packet {
        Packet::Connect(c) => connect_len(c)?,
        Packet::ConnAck(c) => 2 + props_len(&c.properties, version)?,
        Packet::Publish(p) => PublishLayout::new(p, version)?.remaining,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            if v5 {
                2 + tail_len(tail(a.reason, &a.properties, true), &a.properties)?
            } else {
                2
            }
        }
        Packet::Subscribe(s) => {
            let mut len = 2 + props_len(&s.properties, version)?;
            for (filter, _) in &s.filters {
                len += field_len(filter.as_bytes().len())? + 1;
            }
            len
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, version)? + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            let mut len = 2 + props_len(&u.properties, version)?;
            for filter in &u.filters {
                len += field_len(filter.as_bytes().len())?;
            }
            len
        }
        Packet::UnsubAck(u) => {
            if v5 {
                2 + props_len(&u.properties, version)? + u.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                // Reason without properties is written with a zero property length: the
                // shorter form is valid but some clients cannot read it.
                tail_len(tail(d.reason, &d.properties, false), &d.properties)?
            } else {
                0
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotAvailable);
            }
            tail_len(tail(a.reason, &a.properties, false), &a.properties)?
        }
    })
}

fn connect_len(c: &Connect) -> Result<usize, EncodeError> {
    let version = c.protocol;
    let mut len = field_len(version.protocol_name().len())? + 1 + 1 + 2;
    len += props_len(&c.properties, version)?;
    len += field_len(c.client_id.len())?;
    if let Some(will) = &c.will {
        len += props_len(&will.properties, version)?;
        len += field_len(will.topic.len())?;
        len += field_len(will.payload.len())?;
    }
    if let Some(username) = &c.username {
        len += field_len(username.len())?;
    }
    if let Some(password) = &c.password {
        len += field_len(password.len())?;
    }
    Ok(len)
}

fn write_body(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => write_connect(c, buf)?,
        Packet::ConnAck(c) => write_connack(c, version, buf)?,
        Packet::Publish(p) => {
            write_publish_fields(p, version, &PublishLayout::new(p, version)?, buf)?;
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write_ack(a, version, buf)?;
        }
        Packet::Subscribe(s) => write_subscribe(s, version, buf)?,
        Packet::SubAck(s) => write_suback(s, version, buf)?,
        Packet::Unsubscribe(u) => write_unsubscribe(u, version, buf)?,
        Packet::UnsubAck(u) => write_unsuback(u, version, buf)?,
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => write_disconnect(d, version, buf)?,
        Packet::Auth(a) => write_auth(a, version, buf)?,
    }
    Ok(())
}

fn write_connect(c: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let version = c.protocol;
    put_field(buf, version.protocol_name().as_bytes())?;
    let bridge = if c.bridge && version != ProtocolVersion::V5 {
        0x80
    } else {
        0
    };
    buf.put_u8(version.level() | bridge);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos.as_u8() << 3) | (u8::from(will.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    write_props(buf, &c.properties, version)?;
    put_field(buf, c.client_id.as_bytes())?;
    if let Some(will) = &c.will {
        write_props(buf, &will.properties, version)?;
        put_field(buf, will.topic.as_bytes())?;
        put_field(buf, &will.payload)?;
    }
    if let Some(username) = &c.username {
        put_field(buf, username.as_bytes())?;
    }
    if let Some(password) = &c.password {
        put_field(buf, password)?;
    }
    Ok(())
}

fn write_connack(
    c: &ConnAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    // In MQTT 3.1 the acknowledge flags are all reserved: no Session Present.
    buf.put_u8(u8::from(
        c.session_present && version != ProtocolVersion::V31,
    ));
    if version.is_v5() {
        buf.put_u8(c.reason.as_u8());
        write_props(buf, &c.properties, version)
    } else {
        buf.put_u8(c.reason.to_v3_connack());
        Ok(())
    }
}

fn write_ack(a: &PubAck, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    buf.put_u16(a.packet_id);
    if version.is_v5() {
        write_tail(
            buf,
            tail(a.reason, &a.properties, true),
            a.reason,
            &a.properties,
        )?;
    }
    Ok(())
}

fn write_subscribe(
    s: &Subscribe,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id);
    write_props(buf, &s.properties, version)?;
    for (filter, options) in &s.filters {
        put_field(buf, filter.as_bytes())?;
        buf.put_u8(subscription_options_byte(options, version));
    }
    Ok(())
}

fn write_suback(
    s: &SubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id);
    write_props(buf, &s.properties, version)?;
    for reason in &s.reasons {
        buf.put_u8(if version.is_v5() {
            reason.as_u8()
        } else {
            reason.to_v3_suback()
        });
    }
    Ok(())
}

fn write_unsubscribe(
    u: &Unsubscribe,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id);
    write_props(buf, &u.properties, version)?;
    for filter in &u.filters {
        put_field(buf, filter.as_bytes())?;
    }
    Ok(())
}

fn write_unsuback(
    u: &UnsubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id);
    if version.is_v5() {
        write_props(buf, &u.properties, version)?;
        for reason in &u.reasons {
            buf.put_u8(reason.as_u8());
        }
    }
    Ok(())
}

fn write_disconnect(
    d: &Disconnect,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        write_tail(
            buf,
            tail(d.reason, &d.properties, false),
            d.reason,
            &d.properties,
        )?;
    }
    Ok(())
}

fn write_auth(a: &Auth, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Err(EncodeError::NotAvailable);
    }
    write_tail(
        buf,
        tail(a.reason, &a.properties, false),
        a.reason,
        &a.properties,
    )
}

/// A PUBLISH described by borrowed parts, for [`encode_publish_parts`]: what a broker has for
/// each subscriber (a shared message plus per-delivery QoS, flags, packet id and properties)
/// without building a [`Publish`] for it.
#[derive(Clone, Copy, Debug)]
pub struct PublishParts<'a> {
    /// DUP flag (written only above QoS 0).
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty when `topic_alias` stands for it.
    pub topic: &'a [u8],
    /// Packet identifier (ignored at QoS 0).
    pub packet_id: u16,
    /// The message's own properties (MQTT 5), without the three per-delivery ones below.
    pub properties: &'a Properties,
    /// Message Expiry Interval to send (MQTT 5).
    pub message_expiry_interval: Option<u32>,
    /// Subscription identifiers to send (MQTT 5).
    pub subscription_identifiers: &'a [u32],
    /// Topic Alias to send (MQTT 5).
    pub topic_alias: Option<u16>,
    /// Application message.
    pub payload: &'a [u8],
}

/// Appends a PUBLISH made of `parts` for `version`, unless its encoding would exceed `max_len`
/// bytes: then nothing is written and `Ok(false)` is returned (the receiver's Maximum Packet
/// Size, spec 3.1.2.11.4). The same bytes as [`encode`] of the equivalent [`Publish`].
pub fn encode_publish_parts(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    parts: &PublishParts<'_>,
    max_len: usize,
) -> Result<bool, EncodeError> {
    let v5 = version.is_v5();
    let extra = v5
        && (parts.message_expiry_interval.is_some()
            || !parts.subscription_identifiers.is_empty()
            || parts.topic_alias.is_some());
    // The general case (a message with properties of its own plus per-delivery ones) merges
    // them into one property list; the usual cases write them directly.
    let merged;
    let props: &Properties = if v5 && extra && !parts.properties.is_empty() {
        let mut p = parts.properties.clone();
        p.message_expiry_interval = parts.message_expiry_interval;
        p.subscription_identifiers = parts.subscription_identifiers.to_vec();
        p.topic_alias = parts.topic_alias;
        merged = p;
        &merged
    } else {
        parts.properties
    };
    let direct = v5 && extra && props.is_empty();
    let props_content = if !v5 {
        0
    } else if direct {
        let mut n = 0usize;
        if parts.message_expiry_interval.is_some() {
            n += 5;
        }
        for &id in parts.subscription_identifiers {
            if id == 0 || id > MAX_VARINT {
                return Err(EncodeError::OutOfRange("subscription identifier"));
            }
            n += 1 + varint::len(id as usize);
        }
        if parts.topic_alias.is_some() {
            n += 3;
        }
        n
    } else {
        properties::content_len(props)?
    };
    let mut remaining = field_len(parts.topic.len())? + parts.payload.len();
    if parts.qos != QoS::AtMostOnce {
        remaining += 2;
    }
    if v5 {
        remaining += varint::len(props_content) + props_content;
    }
    let total = total_len(remaining)?;
    if total > max_len {
        return Ok(false);
    }
    buf.reserve(total);
    let dup = parts.dup && parts.qos != QoS::AtMostOnce;
    buf.put_u8(0x30 | (u8::from(dup) << 3) | (parts.qos.as_u8() << 1) | u8::from(parts.retain));
    varint::write(
        buf,
        u32::try_from(remaining).map_err(|_| EncodeError::PacketTooLarge)?,
    );
    put_field(buf, parts.topic)?;
    if parts.qos != QoS::AtMostOnce {
        buf.put_u16(parts.packet_id);
    }
    if v5 {
        if direct {
            varint::write(buf, props_content as u32);
            if let Some(e) = parts.message_expiry_interval {
                buf.put_u8(0x02);
                buf.put_u32(e);
            }
            for &id in parts.subscription_identifiers {
                buf.put_u8(0x0B);
                varint::write(buf, id);
            }
            if let Some(a) = parts.topic_alias {
                buf.put_u8(0x23);
                buf.put_u16(a);
            }
        } else {
            properties::write(buf, props, props_content)?;
        }
    }
    buf.put_slice(parts.payload);
    Ok(true)
}

#[cfg(test)]
mod parts_tests {
    use super::*;
    use crate::topic::TopicName;
    use bytes::Bytes;

    /// `encode_publish_parts` writes exactly what `encode` writes for the same PUBLISH.
    #[test]
    fn same_bytes_as_encode() {
        let mut own = Properties::default();
        own.content_type = Some("text/plain".into());
        own.user_properties = vec![("k".into(), "v".into())];
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for props in [Properties::default(), own.clone()] {
                for (expiry, ids, alias) in [
                    (None, vec![], None),
                    (Some(30), vec![1, 300_000], Some(7)),
                    (None, vec![5], None),
                ] {
                    for qos in [QoS::AtMostOnce, QoS::ExactlyOnce] {
                        let parts = PublishParts {
                            dup: true,
                            qos,
                            retain: true,
                            topic: b"a/b",
                            packet_id: 9,
                            properties: &props,
                            message_expiry_interval: expiry,
                            subscription_identifiers: &ids,
                            topic_alias: alias,
                            payload: b"payload",
                        };
                        let mut fast = BytesMut::new();
                        assert!(
                            encode_publish_parts(&mut fast, version, &parts, usize::MAX).unwrap()
                        );
                        let mut p = props.clone();
                        if version.is_v5()
                            && (expiry.is_some() || !ids.is_empty() || alias.is_some())
                        {
                            p.message_expiry_interval = expiry;
                            p.subscription_identifiers = ids.clone();
                            p.topic_alias = alias;
                        }
                        let publish = Publish {
                            dup: true,
                            qos,
                            retain: true,
                            topic: TopicName::try_from_str("a/b").unwrap(),
                            packet_id: if qos == QoS::AtMostOnce { 0 } else { 9 },
                            properties: p,
                            payload: Bytes::from_static(b"payload"),
                        };
                        let mut slow = BytesMut::new();
                        encode(&Packet::Publish(publish), version, &mut slow).unwrap();
                        assert_eq!(fast, slow, "{version:?} {qos:?} {expiry:?} {ids:?}");
                        // Too large: nothing written.
                        let mut none = BytesMut::new();
                        assert!(
                            !encode_publish_parts(&mut none, version, &parts, slow.len() - 1)
                                .unwrap()
                        );
                        assert!(none.is_empty());
                    }
                }
            }
        }
    }
}
