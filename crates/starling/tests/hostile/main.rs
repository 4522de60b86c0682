//! Hostile input against a running broker, over TCP on 127.0.0.1: malformed framing, protocol
//! violations, abusive sizes, slow consumers and random bytes. Each test checks the exact
//! reaction (the reason code sent, or that the socket is closed) and that a well-behaved
//! client on the same broker keeps being served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{
    Probe, RawClient, Recv, TestServer, WAIT, XorShift, assert_serving, broker_panics,
    connect_packet, frame, publish_packet, raw_publish, raw_subscribe, start_server, varint,
    vm_hwm_bytes, vm_rss_bytes,
};
use starling_proto::{
    ConnAck, Disconnect, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode,
    SubAck, TopicName,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A server and a probe client connected to it before any attack.
async fn setup(tune: impl FnOnce(&mut starling_broker::Limits)) -> (TestServer, Probe) {
    let server = start_server(tune).await;
    let mut probe = Probe::new(server.addr).await;
    probe.check().await;
    (server, probe)
}

/// The probe (connected before the attack) and a brand-new client are both still served.
async fn still_serving(server: &TestServer, probe: &mut Probe) {
    probe.check().await;
    assert_serving(server.addr).await;
}

/// A QoS 1 PUBLISH with a topic alias (and maybe an empty topic).
fn aliased_publish(topic: &str, alias: u16, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: if topic.is_empty() {
            TopicName::empty()
        } else {
            TopicName::try_from_str(topic).unwrap()
        },
        packet_id,
        properties: starling_proto::PropertyValues {
            topic_alias: Some(alias),
            ..starling_proto::PropertyValues::default()
        }
        .into(),
        payload: Bytes::from_static(b"aliased"),
    })
}

fn qos2_publish(packet_id: u16, dup: bool, topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicName::try_from_str(topic).unwrap(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

// The tests, by topic.
#[path = "../common/mod.rs"]
mod common;
mod edges;
mod flows;
mod framing;
mod garbage;
mod refusals;
mod topics;
