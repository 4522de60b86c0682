//! Buffers per subscription (`queue_scope = "subscription"`) and queue priorities on the
//! simulated clock: a flood on one subscription of an offline session against a quiet one,
//! beside the session scope; the bounds at QoS 0, 1 and 2; Clean Start; a crash and restart
//! while offline; priorities.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use sim::*;
use starling_broker::{Limits, QueuePriority, QueueScope};
use starling_proto::{Packet, QoS, TopicFilter};

const FLOOD: usize = 300;
const PER_SUB: usize = 50;

/// Limits with buffers per subscription of `PER_SUB` messages, and room for a few buffers
/// in the session's total.
fn per_subscription() -> Limits {
    Limits {
        queue_scope: QueueScope::Subscription,
        max_queued_messages_per_subscription: PER_SUB,
        max_queued_messages: 4 * PER_SUB,
        queue_qos0_offline: true,
        ..Limits::default()
    }
}

/// A persistent subscriber "s" with `filters` (at `qos`), then offline.
fn offline_subscriber(sim: &mut Sim, filters: &[&str], qos: QoS) {
    let (s, _) = sim.connected(persistent(V5, "s", 600));
    for (i, f) in filters.iter().enumerate() {
        sim.send(s, subscribe(i as u16 + 1, f, qos));
    }
    assert_eq!(sim.take(s).len(), filters.len(), "SUBACKs");
    sim.drop_connection(s);
}

/// Publishes `(topic, payload)` pairs at `qos` from a fresh client, completing each flow.
fn publish_all(sim: &mut Sim, qos: QoS, messages: &[(String, String)]) {
    let (p, _) = sim.connected(connect(V5, "p"));
    for (i, (topic, payload)) in messages.iter().enumerate() {
        let id = (i % 60_000) as u16 + 1;
        let id = if qos == QoS::AtMostOnce { 0 } else { id };
        sim.send(p, publish(topic, qos, id, payload.as_bytes()));
        if qos == QoS::ExactlyOnce {
            sim.send(p, pubrel(id));
        }
        sim.take(p);
    }
    sim.drop_connection(p);
}

/// The quiet messages first, then the flood.
fn quiet_then_flood() -> Vec<(String, String)> {
    let quiet = (0..10).map(|n| ("quiet/a".to_string(), format!("q{n}")));
    let flood = (0..FLOOD).map(|n| ("flood/a".to_string(), format!("f{n}")));
    quiet.chain(flood).collect()
}

/// Reconnects "s" and receives until nothing more comes, acknowledging every message;
/// returns the payloads in the order received.
fn reconnect_and_receive(sim: &mut Sim, clean_start: bool) -> (bool, Vec<String>) {
    let mut c = persistent(V5, "s", 600);
    c.clean_start = clean_start;
    let (s, ack) = sim.connected(c);
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let packets = sim.take(s);
        if packets.is_empty() {
            break;
        }
        for p in packets {
            match p {
                Packet::Publish(p) => {
                    got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => sim.send(s, puback(p.packet_id)),
                        QoS::ExactlyOnce => sim.send(s, pubrec(p.packet_id)),
                    }
                }
                Packet::PubRel(r) => sim.send(s, pubcomp(r.packet_id)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    (ack.session_present, got)
}

fn of(got: &[String], prefix: &str) -> Vec<String> {
    got.iter()
        .filter(|p| p.starts_with(prefix))
        .cloned()
        .collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix}{n}")).collect()
}

#[test]
fn a_flood_keeps_its_newest_and_the_quiet_subscription_keeps_everything() {
    let mut sim = Sim::with(per_subscription(), Durability::Sync);
    offline_subscriber(&mut sim, &["flood/#", "quiet/#"], QoS::AtLeastOnce);
    publish_all(&mut sim, QoS::AtLeastOnce, &quiet_then_flood());
    let session = sim.broker.session("s").unwrap();
    assert_eq!(session.lock().queued(), PER_SUB + 10);
    let views = session.lock().queue_buffers();
    let flood = views
        .iter()
        .find(|v| v.filter.as_ref().is_some_and(|f| f.as_str() == "flood/#"));
    assert_eq!(
        flood.map(|v| (v.queued, v.dropped)),
        Some((PER_SUB, (FLOOD - PER_SUB) as u64))
    );
    let m = &sim.broker.metrics;
    assert_eq!(m.dropped_subscription_full.get(), (FLOOD - PER_SUB) as u64);
    assert_eq!(m.dropped_queue_full.get(), 0);

    let (present, got) = reconnect_and_receive(&mut sim, false);
    assert!(present);
    assert_eq!(of(&got, "q"), names("q", 0..10), "all of the quiet filter");
    assert_eq!(
        of(&got, "f"),
        names("f", FLOOD - PER_SUB..FLOOD),
        "the newest of the flood, in order"
    );
    // Turns: the quiet subscription is not behind the flood's backlog.
    assert_eq!(of(&got[..20], "q").len(), 10, "{:?}", &got[..20]);
}

#[test]
fn the_session_scope_loses_the_quiet_messages_to_the_flood() {
    let limits = Limits {
        max_queued_messages: PER_SUB + 10,
        queue_qos0_offline: true,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, Durability::Sync);
    offline_subscriber(&mut sim, &["flood/#", "quiet/#"], QoS::AtLeastOnce);
    publish_all(&mut sim, QoS::AtLeastOnce, &quiet_then_flood());
    let (_, got) = reconnect_and_receive(&mut sim, false);
    assert!(of(&got, "q").is_empty(), "the quiet messages were evicted");
    assert_eq!(of(&got, "f"), names("f", FLOOD - PER_SUB - 10..FLOOD));
    assert!(
        sim.broker
            .session("s")
            .unwrap()
            .lock()
            .queue_buffers()
            .is_empty()
    );
}

#[test]
fn bounds_hold_at_every_qos() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut sim = Sim::with(per_subscription(), Durability::Sync);
        offline_subscriber(&mut sim, &["flood/#", "quiet/#"], QoS::ExactlyOnce);
        publish_all(&mut sim, qos, &quiet_then_flood());
        let session = sim.broker.session("s").unwrap();
        assert_eq!(session.lock().queued(), PER_SUB + 10, "{qos:?}");
        let (_, got) = reconnect_and_receive(&mut sim, false);
        assert_eq!(of(&got, "q"), names("q", 0..10), "{qos:?}");
        assert_eq!(of(&got, "f"), names("f", FLOOD - PER_SUB..FLOOD), "{qos:?}");
    }
}

#[test]
fn the_session_total_still_caps_many_subscriptions() {
    let limits = Limits {
        max_queued_messages: 120,
        ..per_subscription()
    };
    let mut sim = Sim::with(limits, Durability::Memory);
    offline_subscriber(&mut sim, &["a/#", "b/#", "c/#"], QoS::AtLeastOnce);
    let mut messages = Vec::new();
    for t in ["a", "b", "c"] {
        messages.extend((0..PER_SUB).map(|n| (format!("{t}/x"), format!("{t}{n}"))));
    }
    publish_all(&mut sim, QoS::AtLeastOnce, &messages);
    let session = sim.broker.session("s").unwrap();
    assert_eq!(session.lock().queued(), 120);
    assert_eq!(sim.broker.metrics.dropped_queue_full.get(), 30);
    // The fullest buffer gives each time, so they end up even, each with its newest.
    let (_, got) = reconnect_and_receive(&mut sim, false);
    for t in ["a", "b", "c"] {
        let kept = of(&got, t).len();
        assert!(kept.abs_diff(40) <= 1, "{t}: {kept}");
        assert_eq!(of(&got, t), names(t, PER_SUB - kept..PER_SUB));
    }
}

#[test]
fn clean_start_resets_the_buffers() {
    let mut sim = Sim::with(per_subscription(), Durability::Sync);
    offline_subscriber(&mut sim, &["flood/#", "quiet/#"], QoS::AtLeastOnce);
    publish_all(&mut sim, QoS::AtLeastOnce, &quiet_then_flood());
    let (present, got) = reconnect_and_receive(&mut sim, true);
    assert!(!present);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(sim.broker.session("s").unwrap().lock().queued(), 0);
    // Nothing comes back after a restart either (the session is the new, empty one).
    sim.crash_and_restart();
    let (_, got) = reconnect_and_receive(&mut sim, false);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn a_crash_while_offline_keeps_the_buffers() {
    let mut sim = Sim::with(per_subscription(), Durability::Sync);
    offline_subscriber(&mut sim, &["flood/#", "quiet/#"], QoS::AtLeastOnce);
    publish_all(&mut sim, QoS::AtLeastOnce, &quiet_then_flood());
    sim.crash_and_restart();
    let session = sim.broker.session("s").unwrap();
    assert_eq!(session.lock().queued(), PER_SUB + 10);
    assert_eq!(session.lock().queue_buffers().len(), 2);
    let (present, got) = reconnect_and_receive(&mut sim, false);
    assert!(present);
    assert_eq!(of(&got, "q"), names("q", 0..10));
    assert_eq!(of(&got, "f"), names("f", FLOOD - PER_SUB..FLOOD));
    assert_eq!(of(&got[..20], "q").len(), 10, "turns after the restart too");
    // Everything was acknowledged: nothing is left to restore.
    sim.crash_and_restart();
    let (_, got) = reconnect_and_receive(&mut sim, false);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn priorities_change_what_is_dropped_and_what_comes_first() {
    let alarms = QueuePriority {
        filter: TopicFilter::try_from_str("alarms/#").unwrap(),
        priority: 10,
    };
    let run = |priorities: &[QueuePriority], messages: &[(&str, &str)]| {
        let limits = Limits {
            max_queued_messages_per_subscription: 4,
            queue_priority: priorities.to_vec(),
            ..per_subscription()
        };
        let mut sim = Sim::with(limits, Durability::Sync);
        offline_subscriber(&mut sim, &["#"], QoS::AtLeastOnce);
        let messages: Vec<(String, String)> = (messages.iter())
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect();
        publish_all(&mut sim, QoS::AtLeastOnce, &messages);
        reconnect_and_receive(&mut sim, false).1
    };
    // Alarms, then more data than the buffer holds: the data evicts the alarms unless they
    // have the higher priority.
    let mut alarms_then_data = vec![("alarms/x", "a0"), ("alarms/x", "a1"), ("alarms/x", "a2")];
    let data = ["d0", "d1", "d2", "d3", "d4", "d5"];
    alarms_then_data.extend(data.iter().map(|d| ("data", *d)));
    assert_eq!(run(&[], &alarms_then_data), ["d2", "d3", "d4", "d5"]);
    let prio = [alarms];
    assert_eq!(run(&prio, &alarms_then_data), ["a0", "a1", "a2", "d5"]);
    // What comes first: the alarm, though it came last.
    let data_then_alarm = [("data", "d0"), ("data", "d1"), ("alarms/x", "a0")];
    assert_eq!(run(&[], &data_then_alarm), ["d0", "d1", "a0"]);
    assert_eq!(run(&prio, &data_then_alarm), ["a0", "d0", "d1"]);
}

/// A connected subscriber that is slow (a window of one, acknowledging one message at a
/// time) catches up in turns too: the quiet filter's messages are not behind the flood's.
#[test]
fn a_slow_subscriber_catches_up_in_turns() {
    let mut sim = Sim::new(per_subscription());
    let mut c = persistent(V5, "s", 600);
    c.properties.receive_maximum = Some(1);
    let (s, _) = sim.connected(c);
    sim.send(s, subscribe(1, "flood/#", QoS::AtLeastOnce));
    sim.send(s, subscribe(2, "quiet/#", QoS::AtLeastOnce));
    assert_eq!(sim.take(s).len(), 2);
    let (p, _) = sim.connected(connect(V5, "p"));
    let mut id = 0;
    let mut send = |sim: &mut Sim, topic: &str, payload: String| {
        id += 1;
        sim.send(p, publish(topic, QoS::AtLeastOnce, id, payload.as_bytes()));
    };
    for n in 0..40 {
        send(&mut sim, "flood/a", format!("f{n}"));
    }
    for n in 0..3 {
        send(&mut sim, "quiet/a", format!("q{n}"));
    }
    assert_eq!(
        sim.broker.session("s").unwrap().lock().queued(),
        42,
        "one in flight"
    );
    let mut got = Vec::new();
    for _ in 0..100 {
        let packets = sim.take(s);
        let Some(p) = publishes(&packets).first().map(|p| (*p).clone()) else {
            break;
        };
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        sim.send(s, puback(p.packet_id));
    }
    assert_eq!(of(&got, "f"), names("f", 0..40));
    assert_eq!(of(&got, "q"), names("q", 0..3));
    assert_eq!(&got[..6], ["f0", "q0", "f1", "q1", "f2", "q2"]);
}
