//! A wide fan-out over real sockets: a message to a few hundred subscribers wakes their
//! connections with the core's fan-out hint, and each gives way once before writing so that
//! the publisher's next messages go out in the same write (`Yield::Gathering` in the
//! connection task). Whatever the timing, every subscriber gets every message, in order,
//! whether its connection had a task or was parked.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{RawClient, TestServer, publish_packet, start_server};
use starling_broker::session::FAN_OUT;
use starling_proto::{Packet, ProtocolVersion, QoS};

const V5: ProtocolVersion = ProtocolVersion::V5;
/// Subscribers: above the core's fan-out mark.
const SUBSCRIBERS: usize = FAN_OUT + 44;
/// QoS 0 messages, sent in one write, then QoS 1 ones, one write each.
const QOS0: usize = 100;
const QOS1: usize = 20;

async fn start(park_idle_after_secs: u64) -> TestServer {
    start_server(|l| {
        l.park_idle_after_secs = park_idle_after_secs;
        l.sys_interval_secs = 0;
    })
    .await
}

/// Connects the subscribers, publishes, and checks what each received.
async fn everyone_gets_everything(server: &TestServer) {
    let addr = server.addr;
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (mut c, _) = RawClient::connect(addr, V5, &format!("sub-{i}")).await;
        c.subscribe("fan/#", QoS::AtLeastOnce).await;
        subscribers.push(c);
    }
    let (mut publisher, _) = RawClient::connect(addr, V5, "publisher").await;
    let burst: Vec<Packet> = (0..QOS0)
        .map(|i| publish_packet("fan/0", QoS::AtMostOnce, 0, format!("{i}").as_bytes()))
        .collect();
    publisher.send_all(&burst).await;
    for i in 0..QOS1 {
        let id = u16::try_from(i + 1).unwrap();
        let payload = format!("{}", QOS0 + i);
        publisher
            .send(&publish_packet(
                "fan/1",
                QoS::AtLeastOnce,
                id,
                payload.as_bytes(),
            ))
            .await;
    }
    for i in 0..QOS1 {
        match publisher.expect_packet(common::WAIT).await {
            Packet::PubAck(ack) => assert_eq!(usize::from(ack.packet_id), i + 1),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for (s, c) in subscribers.iter_mut().enumerate() {
        for i in 0..QOS0 + QOS1 {
            match c.expect_packet(common::WAIT).await {
                Packet::Publish(p) => {
                    assert_eq!(&p.payload[..], format!("{i}").as_bytes(), "subscriber {s}");
                    let qos = if i < QOS0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    assert_eq!(p.qos, qos, "subscriber {s}, message {i}");
                }
                other => panic!("subscriber {s}: expected PUBLISH {i}, got {other:?}"),
            }
        }
    }
    for c in &mut subscribers {
        c.expect_silence(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_wide_fan_out_reaches_every_subscriber_in_order() {
    let server = start(0).await;
    everyone_gets_everything(&server).await;
    let m = &server.broker().metrics;
    assert_eq!(m.connections_parked.get(), 0, "parking is off");
    server.shutdown().await;
}

#[tokio::test]
async fn a_wide_fan_out_reaches_parked_subscribers_in_order() {
    let server = start(10).await;
    // Subscribers without messages are parked after their SUBACK.
    everyone_gets_everything(&server).await;
    let m = &server.broker().metrics;
    assert!(
        m.connections_resumed.get() >= SUBSCRIBERS as u64,
        "every subscriber was parked and resumed: {} resumed",
        m.connections_resumed.get()
    );
    server.shutdown().await;
}
