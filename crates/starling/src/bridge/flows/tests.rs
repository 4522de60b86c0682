//! Unit tests of the bridge flows: both directions step by step, reconnects, lowered QoS, the
//! loop guard.

use bytes::Bytes;
use starling_proto::TopicName;

use super::*;
use crate::config::bridge::{BridgeTopic, Direction};

fn flows(line_qos: u8) -> Flows {
    let routes = Routes::new(&[
        BridgeTopic {
            pattern: "out/#".into(),
            direction: Direction::Out,
            qos: line_qos,
            local_prefix: String::new(),
            remote_prefix: "site/".into(),
        },
        BridgeTopic {
            pattern: "in/#".into(),
            direction: Direction::In,
            qos: line_qos,
            local_prefix: "local/".into(),
            remote_prefix: String::new(),
        },
    ]);
    Flows::new("test".into(), routes, BridgeStats::new("test"), 128)
}

fn publish(topic: &str, qos: QoS, id: u16) -> Publish {
    let topic = TopicName::try_from_str(topic).unwrap();
    Publish::new(topic, qos, id, Bytes::from_static(b"m"))
}

fn dup(p: Publish) -> Publish {
    Publish { dup: true, ..p }
}

/// The packet types and ids sent, as `L:PUBREC 7` / `R:PUBLISH 7 d1 q2 site/out/a`.
fn sent(f: &mut Flows) -> Vec<String> {
    f.take_sends()
        .into_iter()
        .map(|s| {
            let (side, p) = match s {
                Send::Local(p) => ("L", p),
                Send::Remote(p) => ("R", p),
            };
            let what = match p {
                Packet::Publish(p) => format!(
                    "PUBLISH {} d{} q{} {}",
                    p.packet_id,
                    u8::from(p.dup),
                    p.qos as u8,
                    p.topic.as_str()
                ),
                Packet::PubAck(a) => format!("PUBACK {} {:#x}", a.packet_id, a.reason.as_u8()),
                Packet::PubRec(a) => format!("PUBREC {} {:#x}", a.packet_id, a.reason.as_u8()),
                Packet::PubRel(a) => format!("PUBREL {}", a.packet_id),
                Packet::PubComp(a) => format!("PUBCOMP {}", a.packet_id),
                other => format!("{:?}", other.packet_type()),
            };
            format!("{side}:{what}")
        })
        .collect()
}

#[test]
fn out_qos2_is_chained_step_by_step_under_the_local_id() {
    let mut f = flows(2);
    f.remote_connected(64, true, None, []);
    f.local_publish(publish("out/a", QoS::ExactlyOnce, 7));
    assert_eq!(sent(&mut f), ["R:PUBLISH 7 d0 q2 site/out/a"]);
    f.remote_received(7, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["L:PUBREC 7 0x0"]);
    f.local_released(7);
    assert_eq!(sent(&mut f), ["R:PUBREL 7"]);
    f.remote_acked(7, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["L:PUBCOMP 7"]);
    assert!(f.out.is_empty());
    assert_eq!(f.stats.out_messages.load(Ordering::Relaxed), 1);
    // A late duplicate changes nothing.
    f.remote_acked(7, ReasonCode::Success);
    assert!(sent(&mut f).is_empty());
}

#[test]
fn out_after_a_remote_reconnect_resends_publish_with_dup_or_pubrel() {
    let mut f = flows(2);
    f.remote_connected(64, true, None, []);
    for id in [1, 2, 3] {
        f.local_publish(publish("out/a", QoS::ExactlyOnce, id));
    }
    f.remote_received(2, ReasonCode::Success);
    f.remote_received(3, ReasonCode::Success);
    f.local_released(3);
    sent(&mut f);
    f.remote_lost();
    // Released by the local broker while the remote is away: PUBREL on the next connection.
    f.local_released(2);
    assert!(sent(&mut f).is_empty());
    f.remote_connected(64, true, None, []);
    assert_eq!(
        sent(&mut f),
        ["R:PUBLISH 1 d1 q2 site/out/a", "R:PUBREL 2", "R:PUBREL 3"]
    );
    // A PUBREL the remote no longer knows (it completed it) completes too.
    f.remote_acked(3, ReasonCode::PacketIdentifierNotFound);
    assert_eq!(sent(&mut f), ["L:PUBCOMP 3"]);
}

#[test]
fn out_pubrel_resent_by_a_new_local_connection_goes_to_the_remote() {
    let mut f = flows(2);
    f.local_released(9);
    assert!(sent(&mut f).is_empty(), "no remote yet");
    f.local_publish(dup(publish("out/b", QoS::ExactlyOnce, 4)));
    f.remote_connected(64, true, None, []);
    assert_eq!(sent(&mut f), ["R:PUBREL 9", "R:PUBLISH 4 d1 q2 site/out/b"]);
    f.remote_acked(9, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["L:PUBCOMP 9"]);
}

#[test]
fn out_lowered_qos_completes_the_local_flow_once_the_remote_is_done() {
    let mut f = flows(1);
    f.remote_connected(64, true, None, []);
    f.local_publish(publish("out/a", QoS::ExactlyOnce, 5));
    assert_eq!(sent(&mut f), ["R:PUBLISH 5 d0 q1 site/out/a"]);
    f.remote_acked(5, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["L:PUBREC 5 0x0"]);
    f.local_released(5);
    assert_eq!(sent(&mut f), ["L:PUBCOMP 5"]);
    assert!(f.out.is_empty());

    let mut f = flows(0);
    f.remote_connected(64, true, None, []);
    f.local_publish(publish("out/a", QoS::ExactlyOnce, 6));
    f.local_publish(publish("out/a", QoS::AtLeastOnce, 8));
    assert_eq!(
        sent(&mut f),
        [
            "R:PUBLISH 0 d0 q0 site/out/a",
            "L:PUBREC 6 0x0",
            "R:PUBLISH 0 d0 q0 site/out/a",
            "L:PUBACK 8 0x0"
        ]
    );
    f.local_released(6);
    assert_eq!(sent(&mut f), ["L:PUBCOMP 6"]);
}

#[test]
fn out_refusals_end_the_local_flow_with_the_remote_reason() {
    let mut f = flows(2);
    f.remote_connected(64, true, None, []);
    f.local_publish(publish("out/a", QoS::ExactlyOnce, 1));
    f.local_publish(publish("nowhere", QoS::ExactlyOnce, 2));
    assert_eq!(
        sent(&mut f),
        ["R:PUBLISH 1 d0 q2 site/out/a", "L:PUBREC 2 0x0"]
    );
    f.remote_received(1, ReasonCode::NotAuthorized);
    assert_eq!(sent(&mut f), ["L:PUBREC 1 0x87"]);
    f.local_released(2);
    assert_eq!(sent(&mut f), ["L:PUBCOMP 2"]);
    assert!(f.out.is_empty());
    assert_eq!(f.stats.dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn out_stays_within_the_remote_window_and_in_order() {
    let mut f = flows(2);
    f.remote_connected(2, true, None, []);
    for id in [1, 2, 3] {
        f.local_publish(publish("out/a", QoS::ExactlyOnce, id));
    }
    f.local_publish(publish("out/a", QoS::AtMostOnce, 0));
    assert_eq!(
        sent(&mut f),
        [
            "R:PUBLISH 1 d0 q2 site/out/a",
            "R:PUBLISH 2 d0 q2 site/out/a",
            "R:PUBLISH 0 d0 q0 site/out/a"
        ]
    );
    // Received is still in the window (the remote holds it until PUBCOMP).
    f.remote_received(1, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["L:PUBREC 1 0x0"]);
    f.local_released(1);
    f.remote_acked(1, ReasonCode::Success);
    assert_eq!(
        sent(&mut f),
        ["R:PUBREL 1", "L:PUBCOMP 1", "R:PUBLISH 3 d0 q2 site/out/a"]
    );
}

#[test]
fn a_publish_waits_while_its_id_is_the_unanswered_subscribe() {
    let mut f = flows(1);
    f.local_publish(publish("out/a", QoS::AtLeastOnce, 3));
    f.remote_connected(64, true, None, []);
    sent(&mut f);
    let id = f.remote_subscribe_id(|id| id == 1);
    assert_eq!(id, 2, "not 1 (in use locally), not 3 (on its way)");
    f.remote_lost();
    f.remote_connected(64, true, Some(id), []);
    f.local_publish(publish("out/a", QoS::AtLeastOnce, 2));
    f.local_publish(publish("out/a", QoS::AtLeastOnce, 4));
    assert_eq!(sent(&mut f), ["R:PUBLISH 3 d1 q1 site/out/a"]);
    assert!(!f.remote_subscribed(9));
    assert!(f.remote_subscribed(2));
    assert_eq!(
        sent(&mut f),
        [
            "R:PUBLISH 2 d0 q1 site/out/a",
            "R:PUBLISH 4 d0 q1 site/out/a"
        ]
    );
}

#[test]
fn qos0_for_an_absent_remote_is_bounded() {
    let mut f = flows(0);
    for _ in 0..QOS0_HELD {
        assert!(f.reads_local());
        f.local_publish(publish("out/a", QoS::AtMostOnce, 0));
    }
    assert!(!f.reads_local());
    f.remote_connected(64, true, None, []);
    assert_eq!(sent(&mut f).len(), QOS0_HELD);
    assert!(f.reads_local());
}

#[test]
fn in_qos2_is_chained_step_by_step_under_the_remote_id() {
    let mut f = flows(2);
    f.remote_connected(64, true, None, []);
    f.remote_publish(publish("in/x", QoS::ExactlyOnce, 9));
    assert_eq!(sent(&mut f), ["L:PUBLISH 9 d0 q2 local/in/x"]);
    assert_eq!(f.open_locally, 1);
    f.local_received(9, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["R:PUBREC 9 0x0"]);
    f.remote_released(9);
    assert_eq!(sent(&mut f), ["L:PUBREL 9"]);
    f.local_acked(9, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["R:PUBCOMP 9"]);
    assert!(f.incoming.is_empty() && f.open_locally == 0);
    assert_eq!(f.stats.in_messages.load(Ordering::Relaxed), 1);
}

#[test]
fn in_resends_reach_the_local_session_or_are_answered_here() {
    let mut f = flows(2);
    f.remote_connected(64, true, None, []);
    f.remote_publish(publish("in/x", QoS::ExactlyOnce, 9));
    f.remote_publish(publish("in/y", QoS::AtLeastOnce, 10));
    sent(&mut f);
    // A resend while the local broker has not answered: its answer will do.
    f.remote_publish(dup(publish("in/x", QoS::ExactlyOnce, 9)));
    assert!(sent(&mut f).is_empty());
    f.remote_lost();
    f.local_received(9, ReasonCode::Success);
    f.local_acked(10, ReasonCode::Success);
    assert!(sent(&mut f).is_empty(), "the remote is away");
    f.remote_connected(64, true, None, []);
    f.remote_publish(dup(publish("in/x", QoS::ExactlyOnce, 9)));
    f.remote_publish(dup(publish("in/y", QoS::AtLeastOnce, 10)));
    assert_eq!(sent(&mut f), ["R:PUBREC 9 0x0", "R:PUBACK 10 0x0"]);
    // Unknown here (this process restarted): the PUBREL goes to the local session.
    f.remote_released(11);
    assert_eq!(sent(&mut f), ["L:PUBREL 11"]);
    f.local_acked(11, ReasonCode::PacketIdentifierNotFound);
    assert_eq!(sent(&mut f), ["R:PUBCOMP 11"]);
}

#[test]
fn in_lowered_qos_answers_the_remote_pubrel_here() {
    let mut f = flows(1);
    f.remote_connected(64, true, None, []);
    f.remote_publish(publish("in/x", QoS::ExactlyOnce, 4));
    assert_eq!(sent(&mut f), ["L:PUBLISH 4 d0 q1 local/in/x"]);
    f.local_acked(4, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["R:PUBREC 4 0x0"]);
    f.remote_released(4);
    assert_eq!(sent(&mut f), ["R:PUBCOMP 4"]);
    assert!(f.incoming.is_empty());
}

#[test]
fn a_remote_without_its_session_gets_stale_ids_released_first() {
    let mut f = flows(2);
    f.remote_connected(64, true, None, []);
    f.remote_publish(publish("in/x", QoS::ExactlyOnce, 1));
    f.remote_publish(publish("in/x", QoS::ExactlyOnce, 2));
    f.local_received(2, ReasonCode::Success);
    sent(&mut f);
    f.remote_lost();
    // 5 awaits PUBREL in the local session from before this process.
    f.remote_connected(64, false, None, [2, 5]);
    assert_eq!(sent(&mut f), ["L:PUBREL 2", "L:PUBREL 5"]);
    assert!(!f.reads_remote(0));
    f.local_received(1, ReasonCode::Success);
    assert_eq!(sent(&mut f), ["L:PUBREL 1"]);
    for id in [1, 2, 5] {
        f.local_acked(id, ReasonCode::Success);
    }
    assert!(sent(&mut f).is_empty(), "nothing to the remote");
    assert!(f.reads_remote(0));
    assert!(f.incoming.is_empty());
}

#[test]
fn in_beyond_the_local_receive_maximum_waits_while_the_remote_is_still_read() {
    let mut f = flows(2);
    f.local_max = 2;
    f.remote_connected(64, true, None, []);
    for id in [1, 2, 3] {
        f.remote_publish(publish("in/x", QoS::ExactlyOnce, id));
    }
    // QoS 0 has its own order: it does not wait.
    f.remote_publish(publish("in/x", QoS::AtMostOnce, 0));
    assert_eq!(
        sent(&mut f),
        [
            "L:PUBLISH 1 d0 q2 local/in/x",
            "L:PUBLISH 2 d0 q2 local/in/x",
            "L:PUBLISH 0 d0 q0 local/in/x"
        ]
    );
    // The flows that fill the window finish through the remote, which is still read.
    f.local_received(1, ReasonCode::Success);
    f.local_received(2, ReasonCode::Success);
    assert!(f.reads_remote(0));
    f.remote_released(1);
    f.local_acked(1, ReasonCode::Success);
    assert_eq!(
        sent(&mut f),
        [
            "R:PUBREC 1 0x0",
            "R:PUBREC 2 0x0",
            "L:PUBREL 1",
            "R:PUBCOMP 1",
            "L:PUBLISH 3 d0 q2 local/in/x"
        ]
    );
    // Beyond what waits at most, a message is left unanswered, and the remote connected
    // again once the backlog is through, so that it resends it.
    for id in 10..11 + IN_WAITING {
        let id = u16::try_from(id).unwrap();
        f.remote_publish(publish("in/x", QoS::ExactlyOnce, id));
    }
    assert!(f.reads_remote(0) && !f.wants_resend());
    assert!(sent(&mut f).is_empty());
    assert_eq!(f.waiting.len(), IN_WAITING);
    f.remote_lost();
    assert!(!f.wants_resend(), "what waited goes with its connection");
    assert!(f.waiting.is_empty());
}

fn via(p: Publish, nodes: &[&str]) -> Publish {
    let mut props = (*p.properties).clone();
    for n in nodes {
        props
            .user_properties
            .push((VIA.to_owned(), (*n).to_owned()));
    }
    Publish {
        properties: props.into(),
        ..p
    }
}

fn sent_via(f: &mut Flows) -> Vec<Vec<String>> {
    f.take_sends()
        .into_iter()
        .filter_map(|s| match s {
            Send::Local(Packet::Publish(p)) | Send::Remote(Packet::Publish(p)) => Some(
                (p.properties.user_properties.iter())
                    .filter(|(k, _)| k == VIA)
                    .map(|(_, v)| v.clone())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_are_named_with_the_brokers_they_cross_and_not_sent_back() {
    let mut f = flows(1).with_own_node("A");
    f.set_remote_node(Some("B".into()));
    f.remote_connected(64, true, None, []);
    // Out: this broker's name is added.
    f.local_publish(publish("out/a", QoS::AtMostOnce, 0));
    assert_eq!(sent_via(&mut f), [vec!["A".to_owned()]]);
    // Out, having come through B (another bridge brought it here): not sent back to B.
    f.local_publish(via(publish("out/b", QoS::AtLeastOnce, 5), &["B"]));
    assert_eq!(sent(&mut f), ["L:PUBACK 5 0x0"], "finished here, not sent");
    // In: the remote's name is added.
    f.remote_publish(publish("in/x", QoS::AtMostOnce, 0));
    assert_eq!(sent_via(&mut f), [vec!["B".to_owned()]]);
    // In, having gone through this broker already: not taken in again.
    f.remote_publish(via(publish("in/y", QoS::AtLeastOnce, 9), &["A", "B"]));
    assert_eq!(sent(&mut f), ["R:PUBACK 9 0x0"]);
}
