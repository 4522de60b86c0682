//! Property tests: for every packet type at every protocol level, arbitrary valid packets
//! survive encode then decode unchanged, `encoded_len` matches the bytes written, decoding is
//! incremental (bytes split at any position) and several packets share one buffer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::select;
use starling_proto::property::MAX_SUBSCRIPTION_IDENTIFIER;
use starling_proto::*;

use ProtocolVersion::{V5, V31, V311};

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V31), Just(V311), Just(V5)]
}

/// Any string without U+0000 (multi-byte characters included).
fn string() -> impl Strategy<Value = String> {
    "(?s)[^\\x00]{0,12}"
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn topic_str() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9$ é_-]{0,4}", 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    topic_str().prop_map(|t| TopicName::try_from_str(&t).unwrap())
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![3 => "[a-z0-9 é]{0,4}", 1 => Just("+".to_string())];
    (
        prop::collection::vec(level, 1..5),
        any::<bool>(),
        prop::option::of("[a-z0-9]{1,4}"),
    )
        .prop_map(|(levels, hash, group)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            if f.is_empty() {
                f.push('#');
            }
            if let Some(group) = group {
                f = format!("$share/{group}/{f}");
            }
            TopicFilter::try_from_str(&f).unwrap()
        })
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Arbitrary valid properties for `ctx` at `version` (always empty before MQTT 5).
fn properties(ctx: PropertyContext, version: ProtocolVersion) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    let ids: Vec<PropertyId> = PropertyId::ALL
        .into_iter()
        .filter(|id| id.allowed_in(ctx))
        .collect();
    let entry = (select(ids), any::<u32>(), string(), topic_str(), bytes(8));
    prop::collection::vec(entry, 0..6)
        .prop_map(move |entries| {
            let mut p = Properties::default();
            for (id, n, s, t, b) in entries {
                set(&mut p, id, n, s, t, b, ctx);
            }
            p
        })
        .boxed()
}

fn set(
    p: &mut Properties,
    id: PropertyId,
    n: u32,
    s: String,
    t: String,
    b: Bytes,
    ctx: PropertyContext,
) {
    use PropertyId as P;
    let flag = (n % 2) as u8;
    match id {
        P::PayloadFormatIndicator => p.payload_format_indicator = Some(flag),
        P::MessageExpiryInterval => p.message_expiry_interval = Some(n),
        P::ContentType => p.content_type = Some(s),
        P::ResponseTopic => p.response_topic = Some(t),
        P::CorrelationData => p.correlation_data = Some(b),
        P::SubscriptionIdentifier => {
            let id = n % MAX_SUBSCRIPTION_IDENTIFIER + 1;
            if ctx == PropertyContext::Subscribe {
                p.subscription_identifiers = vec![id];
            } else {
                p.subscription_identifiers.push(id);
            }
        }
        P::SessionExpiryInterval => p.session_expiry_interval = Some(n),
        P::AssignedClientIdentifier => p.assigned_client_identifier = Some(s),
        P::ServerKeepAlive => p.server_keep_alive = Some(n as u16),
        P::AuthenticationMethod => p.authentication_method = Some(s),
        P::AuthenticationData => p.authentication_data = Some(b),
        P::RequestProblemInformation => p.request_problem_information = Some(flag),
        P::WillDelayInterval => p.will_delay_interval = Some(n),
        P::RequestResponseInformation => p.request_response_information = Some(flag),
        P::ResponseInformation => p.response_information = Some(s),
        P::ServerReference => p.server_reference = Some(s),
        P::ReasonString => p.reason_string = Some(s),
        P::ReceiveMaximum => p.receive_maximum = Some((n % 65_535) as u16 + 1),
        P::TopicAliasMaximum => p.topic_alias_maximum = Some(n as u16),
        P::TopicAlias => p.topic_alias = Some(n as u16),
        P::MaximumQoS => p.maximum_qos = Some(flag),
        P::RetainAvailable => p.retain_available = Some(flag),
        P::UserProperty => p.user_properties.push((s, t)),
        P::MaximumPacketSize => p.maximum_packet_size = Some(n.max(1)),
        P::WildcardSubscriptionAvailable => p.wildcard_subscription_available = Some(flag),
        P::SubscriptionIdentifierAvailable => p.subscription_identifier_available = Some(flag),
        P::SharedSubscriptionAvailable => p.shared_subscription_available = Some(flag),
    }
}

/// A reason code valid in `ctx` at `version` (3.x acks carry none: Success).
fn reason(ctx: ReasonContext, version: ProtocolVersion) -> BoxedStrategy<ReasonCode> {
    let codes: Vec<ReasonCode> = if version.is_v5() {
        ReasonCode::ALL
            .into_iter()
            .filter(|r| r.is_valid_in(ctx))
            .collect()
    } else {
        match ctx {
            ReasonContext::ConnAck => (0..=5).filter_map(ReasonCode::from_v3_connack).collect(),
            ReasonContext::SubAck => [0, 1, 2, 0x80]
                .into_iter()
                .filter_map(ReasonCode::from_v3_suback)
                .collect(),
            _ => vec![ReasonCode::Success],
        }
    };
    select(codes).boxed()
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        bytes(16),
        qos(),
        any::<bool>(),
        properties(PropertyContext::Will, version),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        prop::option::of(will),
        prop::option::of(string()),
        prop::option::of(bytes(8)),
        properties(PropertyContext::Connect, version),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before MQTT 5 a password needs a user name.
                let username = match (&username, &password, version.is_v5()) {
                    (None, Some(_), false) => Some(String::new()),
                    _ => username,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                    // The 3.x bridge bit round-trips too (some of the time).
                    bridge: !version.is_v5() && keep_alive % 2 == 0,
                }))
            },
        )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        properties(PropertyContext::Publish, version),
        bytes(64),
    )
        .prop_map(
            move |(qos, dup, retain, topic, empty, id, mut properties, payload)| {
                let at_least_once = qos != QoS::AtMostOnce;
                // An MQTT 5 topic alias may stand in for the topic.
                let topic = if empty && version.is_v5() {
                    properties.topic_alias.get_or_insert(1);
                    TopicName::empty()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && at_least_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_least_once { id } else { 0 },
                    properties,
                    payload,
                })
            },
        )
}

fn ack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let ack = |ctx| {
        (
            packet_id(),
            reason(ctx, version),
            properties(PropertyContext::Ack, version),
        )
            .prop_map(|(packet_id, reason, properties)| PubAck {
                packet_id,
                reason,
                properties,
            })
    };
    prop_oneof![
        ack(ReasonContext::PubAckRec).prop_map(Packet::PubAck),
        ack(ReasonContext::PubAckRec).prop_map(Packet::PubRec),
        ack(ReasonContext::PubRelComp).prop_map(Packet::PubRel),
        ack(ReasonContext::PubRelComp).prop_map(Packet::PubComp),
    ]
}

fn subscription_options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ]);
    (qos(), any::<bool>(), any::<bool>(), handling).prop_map(move |(qos, nl, rap, rh)| {
        if version.is_v5() {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        }
    })
}

fn subscriptions(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let subscribe = (
        packet_id(),
        prop::collection::vec((topic_filter(), subscription_options(version)), 1..4).prop_map(
            |filters| {
                // No Local may not be set on a shared subscription.
                filters
                    .into_iter()
                    .map(|(f, mut o)| {
                        o.no_local &= f.share_group().is_none();
                        (f, o)
                    })
                    .collect::<Vec<_>>()
            },
        ),
        properties(PropertyContext::Subscribe, version),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let suback = (
        packet_id(),
        prop::collection::vec(reason(ReasonContext::SubAck, version), 0..4),
        properties(PropertyContext::SubAck, version),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        });
    let unsubscribe = (
        packet_id(),
        prop::collection::vec(topic_filter(), 1..4),
        properties(PropertyContext::Unsubscribe, version),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let max_reasons = if version.is_v5() { 4 } else { 1 };
    let unsuback = (
        packet_id(),
        prop::collection::vec(reason(ReasonContext::UnsubAck, version), 0..max_reasons),
        properties(PropertyContext::UnsubAck, version),
    )
        .prop_map(move |(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons: if version.is_v5() { reasons } else { vec![] },
                properties,
            })
        });
    prop_oneof![subscribe, suback, unsubscribe, unsuback]
}

fn others(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let connack = (
        any::<bool>(),
        reason(ReasonContext::ConnAck, version),
        properties(PropertyContext::ConnAck, version),
    )
        .prop_map(move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                // MQTT 3.1 has no Session Present bit: it is never encoded at that level.
                session_present: session_present && version != ProtocolVersion::V31,
                reason,
                properties,
            })
        });
    let disconnect = (
        reason(ReasonContext::Disconnect, version),
        properties(PropertyContext::Disconnect, version),
    )
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let auth = (
        reason(ReasonContext::Auth, version),
        properties(PropertyContext::Auth, version),
    )
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
    if version.is_v5() {
        prop_oneof![
            connack,
            disconnect,
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            auth
        ]
        .boxed()
    } else {
        prop_oneof![
            connack,
            disconnect,
            Just(Packet::PingReq),
            Just(Packet::PingResp)
        ]
        .boxed()
    }
}

fn packet(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(version),
        publish(version),
        ack(version),
        subscriptions(version),
        others(version),
    ]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

fn encode_bytes(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap();
    assert_eq!(encoded_len(packet, version).unwrap(), buf.len());
    buf.freeze()
}

fn decode_one(buf: &mut BytesMut, version: ProtocolVersion) -> Option<Packet> {
    // Generated strings are any valid UTF-8, control characters included: the round trip is
    // about the encoding, so the decoder is told to let them through.
    let limits = DecodeLimits {
        allow_control_characters: true,
        ..DecodeLimits::default()
    };
    decode(buf, version, &limits).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_of_encode_is_identity((version, packet) in versioned_packet()) {
        let bytes = encode_bytes(&packet, version);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode_one(&mut buf, version), Some(packet.clone()));
        prop_assert!(buf.is_empty());
        if let Packet::Publish(p) = &packet {
            prop_assert_eq!(publish_len(p, version).unwrap(), bytes.len());
            let mut header = BytesMut::new();
            encode_publish_header(p, version, &mut header).unwrap();
            prop_assert_eq!(header.len() + p.payload.len(), bytes.len());
            header.extend_from_slice(&p.payload);
            prop_assert_eq!(header.freeze(), bytes);
        }
    }

    #[test]
    fn decoding_is_incremental((version, packet) in versioned_packet()) {
        let bytes = encode_bytes(&packet, version);
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            prop_assert_eq!(decode_one(&mut buf, version), None, "split at {}", split);
            prop_assert_eq!(&buf[..], &bytes[..split], "Ok(None) must leave the buffer");
            buf.extend_from_slice(&bytes[split..]);
            prop_assert_eq!(decode_one(&mut buf, version), Some(packet.clone()));
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn several_packets_in_one_buffer(
        (version, packets) in version().prop_flat_map(|v| {
            (Just(v), prop::collection::vec(packet(v), 1..6))
        }),
        partial in any::<bool>(),
    ) {
        let mut buf = BytesMut::new();
        for p in &packets {
            encode(p, version, &mut buf).unwrap();
        }
        // The start of one more packet, not yet complete.
        let extra = encode_bytes(&Packet::PingReq, version);
        let tail = usize::from(partial);
        buf.extend_from_slice(&extra[..tail]);
        for p in &packets {
            prop_assert_eq!(decode_one(&mut buf, version), Some(p.clone()));
        }
        prop_assert_eq!(decode_one(&mut buf, version), None);
        prop_assert_eq!(buf.len(), tail);
    }

    #[test]
    fn connect_decodes_whatever_the_connection_version(
        (protocol, packet) in version().prop_flat_map(|v| (Just(v), connect(v))),
        assumed in version(),
    ) {
        let bytes = encode_bytes(&packet, protocol);
        prop_assert_eq!(encode_bytes(&packet, assumed), bytes.clone());
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode_one(&mut buf, assumed), Some(packet));
    }
}
