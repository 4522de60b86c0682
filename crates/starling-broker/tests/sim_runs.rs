//! Runs on the simulated clock: QoS 0 messages one read brings to one topic are routed
//! together, and nobody can tell: every subscriber gets every message in the order it was
//! published, among the client's other messages; what the client does after its messages
//! (subscribing, breaking its connection and so sending its will) comes after them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use sim::*;
use starling_broker::Limits;
use starling_proto::{Packet, QoS, ReasonCode};

/// The topics and payloads of the publishes `c` received, in order.
fn received(sim: &mut Sim, c: C) -> Vec<(String, Vec<u8>)> {
    let packets = sim.take(c);
    publishes(&packets)
        .into_iter()
        .map(|p| (p.topic.as_str().to_string(), p.payload.to_vec()))
        .collect()
}

/// The bytes of `messages` (topic, QoS, payload) as one client's read.
fn read_of(messages: &[(&str, QoS, &str)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, (topic, qos, payload)) in messages.iter().enumerate() {
        let id = if *qos == QoS::AtMostOnce {
            0
        } else {
            u16::try_from(i + 1).unwrap()
        };
        let p = publish(topic, *qos, id, payload.as_bytes());
        bytes.extend_from_slice(&encode(&p, V5));
    }
    bytes
}

/// What a subscriber expects of `messages` under its filter (every topic here).
fn expected(messages: &[(&str, QoS, &str)]) -> Vec<(String, Vec<u8>)> {
    messages
        .iter()
        .map(|(t, _, p)| (t.to_string(), p.as_bytes().to_vec()))
        .collect()
}

#[test]
fn runs_among_other_messages_keep_the_order_they_were_published_in() {
    let mut sim = Sim::new(Limits::default());
    let subscribers: Vec<C> = (0..3)
        .map(|i| {
            let (c, _) = sim.connected(connect(V5, &format!("sub-{i}")));
            sim.send(c, subscribe(1, "t/#", QoS::AtLeastOnce));
            sim.take(c);
            c
        })
        .collect();
    let (publisher, _) = sim.connected(connect(V5, "pub"));
    // Runs to one topic, broken by a QoS 1 message, another topic, a retained message.
    let mut messages = vec![
        ("t/a", QoS::AtMostOnce, "0"),
        ("t/a", QoS::AtMostOnce, "1"),
        ("t/a", QoS::AtMostOnce, "2"),
        ("t/b", QoS::AtLeastOnce, "3"),
        ("t/a", QoS::AtMostOnce, "4"),
        ("t/a", QoS::AtMostOnce, "5"),
        ("t/c", QoS::AtMostOnce, "6"),
        ("t/a", QoS::AtMostOnce, "7"),
    ];
    // And a run longer than the longest (32).
    let long: Vec<String> = (8..80).map(|i| i.to_string()).collect();
    messages.extend(long.iter().map(|p| ("t/a", QoS::AtMostOnce, p.as_str())));
    sim.send_raw(publisher, &read_of(&messages));
    for &c in &subscribers {
        let mut got = received(&mut sim, c);
        // QoS 1 deliveries are acknowledged as they come; nothing waits here.
        for _ in 0..10 {
            let more = received(&mut sim, c);
            if more.is_empty() {
                break;
            }
            got.extend(more);
        }
        assert_eq!(got, expected(&messages), "{c:?}");
    }
    let acks = pubacks(&sim.take(publisher)).len();
    assert_eq!(acks, 1, "the one QoS 1 message is acknowledged");
}

#[test]
fn a_client_does_not_get_what_it_published_before_it_subscribed() {
    let mut sim = Sim::new(Limits::default());
    let (c, _) = sim.connected(connect(V5, "c"));
    let mut bytes = read_of(&[
        ("t", QoS::AtMostOnce, "before-1"),
        ("t", QoS::AtMostOnce, "before-2"),
        ("t", QoS::AtMostOnce, "before-3"),
    ]);
    bytes.extend_from_slice(&encode(&subscribe(1, "t", QoS::AtMostOnce), V5));
    bytes.extend_from_slice(&read_of(&[("t", QoS::AtMostOnce, "after")]));
    sim.send_raw(c, &bytes);
    let packets = sim.take(c);
    assert!(
        matches!(packets.first(), Some(Packet::SubAck(_))),
        "{packets:?}"
    );
    let got: Vec<Vec<u8>> = publishes(&packets)
        .iter()
        .map(|p| p.payload.to_vec())
        .collect();
    assert_eq!(got, vec![b"after".to_vec()]);
}

/// A client with a will on `will`.
fn with_will(sim: &mut Sim, id: &str) -> C {
    let mut connect = connect(V5, id);
    connect.will = Some(will("will", None));
    sim.connected(connect).0
}

#[test]
fn the_will_comes_after_the_messages_of_the_read_that_broke_the_connection() {
    let mut sim = Sim::new(Limits::default());
    let (watcher, _) = sim.connected(connect(V5, "watcher"));
    sim.send(watcher, subscribe(1, "#", QoS::AtMostOnce));
    sim.take(watcher);
    let messages = [
        ("t", QoS::AtMostOnce, "1"),
        ("t", QoS::AtMostOnce, "2"),
        ("t", QoS::AtMostOnce, "3"),
    ];
    let mut want = expected(&messages);
    want.push(("will".to_string(), b"bye".to_vec()));

    // Bytes that do not decode (a PUBLISH of QoS 3) after the messages.
    let broken = with_will(&mut sim, "broken");
    let mut bytes = read_of(&messages);
    bytes.extend_from_slice(&[0x36, 0x00]);
    sim.send_raw(broken, &bytes);
    assert!(sim.closed(broken).is_some());
    assert_eq!(received(&mut sim, watcher), want, "after a decode error");

    // A PUBLISH that decodes but breaks the protocol (topic alias 0) after the messages.
    let refused = with_will(&mut sim, "refused");
    let mut bytes = read_of(&messages);
    let mut p = publish("t", QoS::AtMostOnce, 0, b"x");
    if let Packet::Publish(p) = &mut p {
        p.properties.topic_alias = Some(0);
    }
    bytes.extend_from_slice(&encode(&p, V5));
    sim.send_raw(refused, &bytes);
    let close = sim.closed(refused).expect("closed");
    assert_eq!(close.reason, ReasonCode::TopicAliasInvalid);
    assert_eq!(received(&mut sim, watcher), want, "after a protocol error");
}
