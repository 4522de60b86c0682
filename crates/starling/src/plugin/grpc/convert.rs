//! Between the core's hook types and the messages of `starling.plugin.v1`: the requests and
//! notifications the broker sends, and the checks on what a plugin answers. An answer is a
//! peer's input: a topic or filter that is not valid, a QoS out of range, a reason code that
//! its packet cannot carry, a payload over the bound, or no verdict at all is a
//! [`BadAnswer`] (the caller counts it and the plugin's `on_failure` decides), never a panic.

use std::time::{SystemTime, UNIX_EPOCH};

use starling_broker::hook::{
    AckEvent, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, DisconnectEvent, DropEvent,
    Event, Events, FilterVerdict, PublishVerdict, SessionEvent,
};
use starling_proto::PropertyValues;
use starling_proto::{
    ProtocolVersion, Publish, QoS, ReasonCode, ReasonContext, RetainHandling, SubscriptionOptions,
    TopicFilter, TopicName,
};

use super::pb;

/// The largest payload a plugin may put in a changed message (the MQTT maximum is larger;
/// gRPC messages are bounded by the same figure, see `MAX_MESSAGE_BYTES`).
pub(super) const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// What a plugin answered that the broker cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BadAnswer(pub(super) String);

fn bad<T>(what: impl Into<String>) -> Result<T, BadAnswer> {
    Err(BadAnswer(what.into()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn protocol(v: ProtocolVersion) -> pb::Protocol {
    match v {
        ProtocolVersion::V31 => pb::Protocol::Mqtt31,
        ProtocolVersion::V311 => pb::Protocol::Mqtt311,
        ProtocolVersion::V5 => pb::Protocol::Mqtt5,
    }
}

pub(super) fn client(c: &ClientRef<'_>) -> pb::Client {
    pb::Client {
        client_id: c.client_id.to_owned(),
        username: c.username.map(str::to_owned),
        peer: c.peer.map(|p| p.to_string()),
        listener: c.listener.to_owned(),
        protocol: protocol(c.protocol) as i32,
    }
}

fn user_properties(v: &[(String, String)]) -> Vec<pb::UserProperty> {
    v.iter()
        .map(|(key, value)| pb::UserProperty {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// The core's event for a wire event (`None` for UNSPECIFIED or a value this broker does
/// not know: a newer plugin may name events added later).
fn event(e: i32) -> Option<Event> {
    Some(match pb::Event::try_from(e).ok()? {
        pb::Event::Unspecified => return None,
        pb::Event::Connect => Event::Connect,
        pb::Event::Publish => Event::Publish,
        pb::Event::Subscribe => Event::Subscribe,
        pb::Event::Unsubscribe => Event::Unsubscribe,
        pb::Event::Delivered => Event::Delivered,
        pb::Event::Acked => Event::Acked,
        pb::Event::Dropped => Event::Dropped,
        pb::Event::Session => Event::Session,
        pb::Event::Disconnected => Event::Disconnected,
    })
}

/// The events a plugin wants, within `configured`: what its `Describe` named (unknown values
/// ignored), or all of `configured` when it named none.
pub(super) fn wanted(d: &pb::DescribeResponse, configured: Events) -> Events {
    if d.events.is_empty() {
        return configured;
    }
    let named: Events = d.events.iter().filter_map(|e| event(*e)).collect();
    (Event::ALL.into_iter())
        .filter(|e| named.has(*e) && configured.has(*e))
        .collect()
}

// ---- Requests --------------------------------------------------------------------------

pub(super) fn connect_request(e: &ConnectEvent<'_>) -> pb::ConnectRequest {
    pb::ConnectRequest {
        client: Some(client(&e.client)),
        clean_start: e.clean_start,
        keep_alive: u32::from(e.keep_alive),
    }
}

pub(super) fn publish_request(c: &ClientRef<'_>, p: &Publish) -> pb::PublishRequest {
    let props = &p.properties;
    pb::PublishRequest {
        client: Some(client(c)),
        topic: p.topic.as_str().to_owned(),
        payload: p.payload.clone(),
        qos: p.qos as u32,
        retain: p.retain,
        user_properties: user_properties(&props.user_properties),
        content_type: props.content_type.clone(),
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        message_expiry_interval: props.message_expiry_interval,
        payload_format_indicator: props.payload_format_indicator.map(u32::from),
    }
}

fn options(o: &SubscriptionOptions) -> pb::SubscriptionOptions {
    pb::SubscriptionOptions {
        qos: o.qos as u32,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling: o.retain_handling as u32,
    }
}

pub(super) fn subscribe_request(
    c: &ClientRef<'_>,
    filter: &TopicFilter,
    o: &SubscriptionOptions,
) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        client: Some(client(c)),
        filter: filter.as_str().to_owned(),
        options: Some(options(o)),
    }
}

pub(super) fn unsubscribe_request(
    c: &ClientRef<'_>,
    filter: &TopicFilter,
) -> pb::UnsubscribeRequest {
    pb::UnsubscribeRequest {
        client: Some(client(c)),
        filter: filter.as_str().to_owned(),
    }
}

// ---- Answers -------------------------------------------------------------------------------

fn qos(v: u32) -> Result<QoS, BadAnswer> {
    match u8::try_from(v).ok().and_then(QoS::from_u8) {
        Some(q) => Ok(q),
        None => bad(format!("QoS {v} is not 0, 1 or 2")),
    }
}

/// A refusal's reason code: known, an error (>= 0x80) and valid in `ctx`.
fn refusal(v: u32, ctx: ReasonContext) -> Result<ReasonCode, BadAnswer> {
    match u8::try_from(v).ok().and_then(ReasonCode::from_u8) {
        Some(c) if c.is_error() && c.is_valid_in(ctx) => Ok(c),
        _ => bad(format!("reason code {v:#x} cannot refuse here ({ctx:?})")),
    }
}

pub(super) fn connect_verdict(r: pb::ConnectResponse) -> Result<ConnectVerdict, BadAnswer> {
    use pb::connect_response::Verdict;
    match r.verdict {
        Some(Verdict::Accept(_)) => Ok(ConnectVerdict::Accept),
        Some(Verdict::Refuse(code)) => Ok(ConnectVerdict::Refuse(refusal(
            code,
            ReasonContext::ConnAck,
        )?)),
        None => bad("no verdict"),
    }
}

pub(super) fn publish_verdict(
    r: pb::PublishResponse,
    original: &Publish,
) -> Result<PublishVerdict, BadAnswer> {
    use pb::publish_response::Verdict;
    match r.verdict {
        Some(Verdict::Pass(_)) => Ok(PublishVerdict::Pass),
        Some(Verdict::Taken(_)) => Ok(PublishVerdict::Taken),
        Some(Verdict::Drop(code)) => match u8::try_from(code).ok().and_then(ReasonCode::from_u8) {
            Some(c) if c.is_valid_in(ReasonContext::PubAckRec) => Ok(PublishVerdict::Drop(c)),
            _ => bad(format!("reason code {code:#x} is not a PUBACK reason code")),
        },
        Some(Verdict::Change(c)) => Ok(PublishVerdict::Change(Box::new(changed(c, original)?))),
        None => bad("no verdict"),
    }
}

/// `original` with the changes of `c`.
fn changed(c: pb::Change, original: &Publish) -> Result<Publish, BadAnswer> {
    let mut p = original.clone();
    if let Some(t) = c.topic {
        match TopicName::try_from_str(&t) {
            Ok(name) if !name.is_empty() && !name.is_dollar() => p.topic = name,
            _ => {
                return bad(format!(
                    "topic {t:?} is not a valid topic name (or starts with $)"
                ));
            }
        }
    }
    if let Some(payload) = c.payload {
        if payload.len() > MAX_PAYLOAD {
            return bad(format!(
                "payload of {} bytes is over {MAX_PAYLOAD}",
                payload.len()
            ));
        }
        p.payload = payload;
    }
    if let Some(q) = c.qos {
        p.qos = qos(q)?;
    }
    if let Some(retain) = c.retain {
        p.retain = retain;
    }
    if c.user_properties.is_some() || c.content_type.is_some() {
        let mut values: PropertyValues = (*p.properties).clone();
        if let Some(u) = c.user_properties {
            values.user_properties = (u.items.into_iter()).map(|kv| (kv.key, kv.value)).collect();
        }
        if let Some(ct) = c.content_type {
            values.content_type = Some(ct);
        }
        p.properties = values.into();
    }
    Ok(p)
}

fn subscription_options(o: &pb::SubscriptionOptions) -> Result<SubscriptionOptions, BadAnswer> {
    let retain_handling = match o.retain_handling {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        n => return bad(format!("retain_handling {n} is not 0, 1 or 2")),
    };
    Ok(SubscriptionOptions {
        qos: qos(o.qos)?,
        no_local: o.no_local,
        retain_as_published: o.retain_as_published,
        retain_handling,
    })
}

/// The decision on a filter; `options` are the SUBSCRIBE's (`None` for UNSUBSCRIBE).
pub(super) fn filter_verdict(
    r: pb::FilterResponse,
    options: Option<SubscriptionOptions>,
) -> Result<FilterVerdict, BadAnswer> {
    use pb::filter_response::Verdict;
    let ctx = match options {
        Some(_) => ReasonContext::SubAck,
        None => ReasonContext::UnsubAck,
    };
    match r.verdict {
        Some(Verdict::Pass(_)) => Ok(FilterVerdict::Pass),
        Some(Verdict::Refuse(code)) => Ok(FilterVerdict::Refuse(refusal(code, ctx)?)),
        Some(Verdict::Change(c)) => {
            let Ok(filter) = TopicFilter::try_from_str(&c.filter) else {
                return bad(format!("filter {:?} is not a valid topic filter", c.filter));
            };
            let options = match (&c.options, options) {
                (Some(o), Some(_)) => subscription_options(o)?,
                (_, Some(given)) => given,
                (_, None) => SubscriptionOptions::default(),
            };
            Ok(FilterVerdict::Change(filter, options))
        }
        None => bad("no verdict"),
    }
}

// ---- Notifications -------------------------------------------------------------------------

fn note(event: pb::notification::Event) -> pb::Notification {
    pb::Notification {
        ts_ms: now_ms(),
        event: Some(event),
    }
}

pub(super) fn delivered(e: &DeliveryEvent<'_>) -> pb::Notification {
    note(pb::notification::Event::Delivered(pb::Delivered {
        client_id: e.client_id.to_owned(),
        topic: e.msg.topic.as_str().to_owned(),
        payload: e.msg.payload.clone(),
        qos: e.qos as u32,
        packet_id: u32::from(e.packet_id),
        from: e.msg.publisher.as_deref().map(str::to_owned),
        retain: e.msg.retain,
    }))
}

pub(super) fn acked(e: &AckEvent<'_>) -> pb::Notification {
    note(pb::notification::Event::Acked(pb::Acked {
        client_id: e.client_id.to_owned(),
        packet_id: u32::from(e.packet_id),
        qos: e.qos as u32,
    }))
}

pub(super) fn dropped(e: &DropEvent<'_>) -> pb::Notification {
    note(pb::notification::Event::Dropped(pb::Dropped {
        client_id: e.client_id.map(str::to_owned),
        topic: e.topic.to_owned(),
        qos: e.qos as u32,
        payload_size: e.payload_len as u64,
        reason: e.reason.name().to_owned(),
    }))
}

pub(super) fn session(e: &SessionEvent<'_>) -> pb::Notification {
    note(pb::notification::Event::Session(pb::Session {
        client_id: e.client_id.to_owned(),
        change: e.change.name().to_owned(),
        client: e.client.as_ref().map(client),
    }))
}

pub(super) fn disconnected(e: &DisconnectEvent<'_>) -> pb::Notification {
    note(pb::notification::Event::Disconnected(pb::Disconnected {
        client: Some(client(&e.client)),
        reason_code: u32::from(e.reason.as_u8()),
        detail: e.detail.to_owned(),
    }))
}

/// The event a notification is of.
pub(super) fn event_of(n: &pb::Notification) -> Option<Event> {
    use pb::notification::Event as N;
    Some(match n.event.as_ref()? {
        N::Delivered(_) => Event::Delivered,
        N::Acked(_) => Event::Acked,
        N::Dropped(_) => Event::Dropped,
        N::Session(_) => Event::Session,
        N::Disconnected(_) => Event::Disconnected,
    })
}
