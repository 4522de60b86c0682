//! Persistence on the simulated clock: acknowledgements that wait for the store, failed
//! commits, pauses at the journal's bound, and crashes with restarts over the same store.

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

/// Connects and takes the CONNACK; returns Session Present.
fn connected(sim: &mut Sim, connect: starling_proto::Connect) -> (C, bool) {
    let (c, ack) = sim.connected(connect);
    (c, ack.session_present)
}

#[test]
fn acknowledgements_wait_for_the_commit_of_what_they_acknowledge() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V5, "s", 600));
    sim.send(s, subscribe(1, "t", QoS::AtLeastOnce));
    assert!(matches!(&sim.take(s)[..], [Packet::SubAck(_)]));
    sim.drop_connection(s);
    let (p, _) = connected(&mut sim, connect(V5, "p"));
    sim.hold_commits = true;
    sim.send(p, publish("t", QoS::AtLeastOnce, 1, b"a"));
    sim.send(p, publish("t", QoS::AtMostOnce, 0, b"b"));
    sim.send(p, Packet::PingReq);
    // The PUBACK waits for the commit; PINGRESP acknowledges no stored state and does not.
    assert_eq!(sim.take(p), [Packet::PingResp]);
    sim.hold_commits = false;
    sim.settle();
    match &sim.take(p)[..] {
        [Packet::PubAck(a)] => assert_eq!(a.reason, ReasonCode::Success),
        other => panic!("expected the PUBACK, got {other:?}"),
    }
    // It is on disk: it survives a crash.
    sim.crash_and_restart();
    let (s, present) = connected(&mut sim, persistent(V5, "s", 600));
    assert!(present);
    let got = sim.take(s);
    assert_eq!(&publishes(&got)[0].payload[..], b"a");
}

#[test]
fn a_failed_commit_is_never_acknowledged_as_a_success() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V5, "s", 600));
    sim.send(s, subscribe(1, "t", QoS::AtLeastOnce));
    sim.take(s);
    let (p5, _) = connected(&mut sim, connect(V5, "p5"));
    let (p3, _) = connected(&mut sim, connect(V311, "p3"));
    sim.store().unwrap().fail_after(0);
    sim.send(p5, publish("t", QoS::AtLeastOnce, 1, b"x"));
    match &sim.take(p5)[..] {
        [Packet::PubAck(a)] => assert_eq!(a.reason, ReasonCode::UnspecifiedError),
        other => panic!("expected PUBACK 0x80, got {other:?}"),
    }
    // A 3.1.1 client cannot be told: it is disconnected, so it sends again.
    sim.send(p3, publish("t", QoS::AtLeastOnce, 1, b"y"));
    assert!(sim.take(p3).is_empty(), "no PUBACK");
    assert!(sim.is_gone(p3));
    assert_eq!(sim.broker.metrics.store_failures_answered.get(), 2);
}

#[test]
fn a_store_at_its_bound_pauses_the_clients_that_feed_it_and_no_others() {
    let limits = Limits::default();
    let mut sim = Sim::with_journal_limit(limits, Durability::Periodic, 16 * 1024);
    let (flood, _) = connected(&mut sim, connect(V5, "flood"));
    let (other, _) = connected(&mut sim, connect(V5, "other"));
    sim.hold_commits = true;
    // Twenty reads of ten retained QoS 0 publishes (the bound is checked between reads).
    for chunk in 0..20u16 {
        let mut bytes = Vec::new();
        for i in chunk * 10..chunk * 10 + 10 {
            let mut msg = publish(&format!("r/{i}"), QoS::AtMostOnce, 0, &[0; 200]);
            if let Packet::Publish(p) = &mut msg {
                p.retain = true;
            }
            bytes.extend_from_slice(&encode(&msg, V5));
        }
        sim.send_raw(flood, &bytes);
    }
    sim.send(flood, Packet::PingReq);
    let stored = sim.broker.retained_count();
    assert!(stored < 200, "reading paused at the bound ({stored} read)");
    assert!(sim.broker.metrics.store_paused.get() >= 1);
    // A client that journals nothing is still served.
    sim.send(other, Packet::PingReq);
    assert_eq!(sim.take(other), [Packet::PingResp]);
    // The store catches up: the rest is read and stored, nothing dropped.
    sim.hold_commits = false;
    sim.settle();
    assert_eq!(sim.broker.retained_count(), 200);
    assert_eq!(sim.take(flood), [Packet::PingResp]);
    assert_eq!(sim.store().unwrap().retained_count("r/"), 200);
}

#[test]
fn qos2_is_exactly_once_across_a_crash_between_pubrec_and_pubrel() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = connected(&mut sim, persistent(V311, "p", 0));
    sim.send(p, publish("t", QoS::ExactlyOnce, 7, b"once"));
    assert!(matches!(&sim.take(p)[..], [Packet::PubRec(r)] if r.packet_id == 7));
    sim.crash_and_restart();
    // The publisher resends (DUP) after the crash: acknowledged, not routed again.
    let (p, present) = connected(&mut sim, persistent(V311, "p", 0));
    assert!(present);
    let mut again = publish("t", QoS::ExactlyOnce, 7, b"once");
    if let Packet::Publish(x) = &mut again {
        x.dup = true;
    }
    sim.send(p, again);
    assert!(matches!(&sim.take(p)[..], [Packet::PubRec(r)] if r.packet_id == 7));
    sim.send(p, pubrel(7));
    assert!(matches!(&sim.take(p)[..], [Packet::PubComp(r)] if r.reason == ReasonCode::Success));
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    let got = sim.take(s);
    assert_eq!(publishes(&got).len(), 1, "delivered once: {got:?}");
}

#[test]
fn a_refused_qos2_message_does_not_leave_its_id_awaiting_release_in_the_store() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (p, _) = connected(&mut sim, persistent(V5, "p", 600));
    let (s, _) = connected(&mut sim, connect(V5, "s"));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    // Refused (a client may not publish to $SYS): PUBREC with an error ends the flow.
    sim.send(p, publish("$SYS/x", QoS::ExactlyOnce, 3, b"no"));
    match &sim.take(p)[..] {
        [Packet::PubRec(r)] => assert_eq!(r.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBREC 0x87, got {other:?}"),
    }
    sim.crash_and_restart();
    // After the restart the client reuses id 3 for a new message: it must be routed.
    let (p, _) = connected(&mut sim, persistent(V5, "p", 600));
    let (s, _) = connected(&mut sim, connect(V5, "s"));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    sim.send(p, publish("t", QoS::ExactlyOnce, 3, b"new"));
    assert!(matches!(&sim.take(p)[..], [Packet::PubRec(r)] if r.reason == ReasonCode::Success));
    assert_eq!(
        publishes(&sim.take(s)).len(),
        1,
        "routed, not taken for a resend"
    );
}

#[test]
fn a_client_the_broker_is_not_reading_is_not_held_to_its_keep_alive() {
    let mut sim = Sim::with_journal_limit(Limits::default(), Durability::Periodic, 4 * 1024);
    let mut c = connect(V5, "flood");
    c.keep_alive = 1;
    let (flood, _) = connected(&mut sim, c);
    sim.hold_commits = true;
    for i in 0..10u16 {
        let mut msg = publish(&format!("r/{i}"), QoS::AtMostOnce, 0, &[0; 1000]);
        if let Packet::Publish(p) = &mut msg {
            p.retain = true;
        }
        sim.send(flood, msg);
    }
    assert!(
        sim.broker.metrics.store_paused.get() >= 1,
        "paused at the bound"
    );
    // Far beyond 1.5 x the keep-alive: its PINGREQs would sit unread, so no timeout.
    sim.advance(std::time::Duration::from_secs(10));
    assert!(!sim.is_gone(flood));
    sim.hold_commits = false;
    sim.settle();
    sim.send(flood, Packet::PingReq);
    assert_eq!(sim.take(flood), [Packet::PingResp]);
    assert_eq!(sim.store().unwrap().retained_count("r/"), 10);
    // Reading again, the keep-alive applies again.
    sim.advance(std::time::Duration::from_millis(1_500));
    assert!(sim.is_gone(flood));
}

#[test]
fn a_qos2_delivery_of_a_persistent_session_waits_for_its_packet_id_to_be_stored() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V5, "s", 600));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = connected(&mut sim, connect(V5, "p"));
    sim.hold_commits = true;
    sim.send(p, publish("t", QoS::ExactlyOnce, 1, b"once"));
    assert!(
        sim.take(s).is_empty(),
        "not before its record and packet id are stored"
    );
    // Released by the commit alone (the connection is woken for it).
    sim.hold_commits = false;
    sim.settle();
    let got = sim.take(s);
    assert_eq!(publishes(&got).len(), 1, "sent once committed: {got:?}");
    // Other answers do not wait for deliveries.
    sim.hold_commits = true;
    sim.send(p, publish("t", QoS::ExactlyOnce, 2, b"twice"));
    sim.send(s, Packet::PingReq);
    assert_eq!(sim.take(s), [Packet::PingResp]);
}

#[test]
fn connack_waits_for_the_session_change_it_reports() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (old, _) = connected(&mut sim, persistent(V5, "c", 600));
    sim.send(old, subscribe(1, "t", QoS::AtLeastOnce));
    sim.hold_commits = true;
    // A clean start ends the stored session: not reported before that is stored.
    let c = sim.connect(connect(V5, "c"));
    assert!(sim.take(c).is_empty());
    sim.crash_and_restart();
    sim.hold_commits = false;
    let (_c, present) = connected(&mut sim, persistent(V5, "c", 600));
    assert!(
        present,
        "the clean start was never reported, and the crash undid it"
    );
}

// What a client sees never runs ahead of the store (the property test in model.rs found
// each of these).

/// A QoS 2 message that reached a persistent subscriber was not delivered again with another
/// packet id after a crash, because it was not sent before its packet id was stored.
#[test]
fn a_qos2_message_is_delivered_once_across_a_crash_before_its_commit() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = connected(&mut sim, persistent(V311, "p", 0));
    sim.hold_commits = true;
    sim.send(p, publish("t", QoS::ExactlyOnce, 2, b"once"));
    assert!(sim.take(p).is_empty(), "PUBREC waits for the commit");
    assert!(sim.take(s).is_empty(), "so does the delivery");
    // A crash before the commit: the publisher never got PUBREC and sends it again.
    sim.crash_and_restart();
    sim.hold_commits = false;
    let (p, present) = connected(&mut sim, persistent(V311, "p", 0));
    assert!(present);
    let mut again = publish("t", QoS::ExactlyOnce, 2, b"once");
    if let Packet::Publish(x) = &mut again {
        x.dup = true;
    }
    sim.send(p, again);
    assert!(matches!(&sim.take(p)[..], [Packet::PubRec(r)] if r.packet_id == 2));
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    let got = sim.take(s);
    assert_eq!(publishes(&got).len(), 1, "delivered once: {got:?}");
}

/// On resume, PUBREL (and everything else resent) waits until the PUBREC it answers is
/// stored: after a crash the client is sent the PUBLISH again under the packet id it still
/// holds, which it recognises.
#[test]
fn what_a_resumed_session_resends_waits_for_the_store() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = connected(&mut sim, persistent(V311, "p", 0));
    sim.send(p, publish("t", QoS::ExactlyOnce, 1, b"once"));
    sim.send(p, pubrel(1));
    let got = sim.take(s);
    assert_eq!(publishes(&got)[0].packet_id, 1);
    sim.hold_commits = true;
    sim.send(s, pubrec(1));
    assert!(sim.take(s).is_empty(), "PUBREL waits for the commit");
    sim.drop_connection(s);
    let s = sim.connect(persistent(V311, "s", 0));
    assert!(
        sim.take(s).is_empty(),
        "CONNACK, and the resent PUBREL, wait for the commit"
    );
    sim.crash_and_restart();
    sim.hold_commits = false;
    let (s, present) = connected(&mut sim, persistent(V311, "s", 0));
    assert!(present);
    match &sim.take(s)[..] {
        [Packet::Publish(x)] => assert!(x.dup && x.packet_id == 1, "{x:?}"),
        other => panic!("expected the PUBLISH again with its packet id, got {other:?}"),
    }
}

/// PUBREC for a QoS 2 PUBLISH sent again waits until the original is stored: a crash before
/// that cannot lose a message its publisher was told the broker has.
#[test]
fn pubrec_for_a_resent_qos2_message_waits_for_the_original() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    sim.drop_connection(s);
    let (p, _) = connected(&mut sim, persistent(V311, "p", 0));
    sim.hold_commits = true;
    sim.send(p, publish("t", QoS::ExactlyOnce, 1, b"kept"));
    let mut again = publish("t", QoS::ExactlyOnce, 1, b"kept");
    if let Packet::Publish(x) = &mut again {
        x.dup = true;
    }
    sim.send(p, again);
    assert!(
        sim.take(p).is_empty(),
        "neither PUBREC goes before the commit"
    );
    sim.hold_commits = false;
    sim.settle();
    let got = sim.take(p);
    assert!(
        matches!(&got[..], [Packet::PubRec(_), Packet::PubRec(_)]),
        "{got:?}"
    );
    sim.send(p, pubrel(1));
    sim.crash_and_restart();
    let (s, _) = connected(&mut sim, persistent(V311, "s", 0));
    assert_eq!(
        publishes(&sim.take(s)).len(),
        1,
        "the message survived the crash"
    );
}

/// Deliveries that wait for a stuck store are bounded by the output's mark: the rest stays in
/// the session's queue, under its own bound and drop policy.
#[test]
fn deliveries_waiting_for_a_stuck_store_are_bounded() {
    let limits = Limits {
        max_queued_messages: 100,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V5, "s", 600));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = connected(&mut sim, connect(V5, "p"));
    sim.hold_commits = true;
    // A QoS 2 delivery waits for its packet id to be stored; the QoS 0 flood queues behind it.
    sim.send(p, publish("t", QoS::ExactlyOnce, 1, b"first"));
    for _ in 0..500 {
        sim.send(p, publish("t", QoS::AtMostOnce, 0, &[0; 1000]));
    }
    assert!(sim.take(s).is_empty());
    let dropped = sim.broker.metrics.dropped_queue_full.get();
    assert!(
        dropped > 300,
        "the session queue took the overflow ({dropped} dropped)"
    );
    sim.hold_commits = false;
    sim.settle();
    let got = sim.take(s);
    let n = publishes(&got).len();
    // The queue, plus what fits under the output's mark (and the one that crosses it).
    let mark = starling_broker::connection::OUTPUT_HIGH_WATER / 1000 + 1;
    assert!(
        n <= 1 + 100 + mark,
        "no more than the queue and one output's worth: {n}"
    );
    assert_eq!(&publishes(&got)[0].payload[..], b"first", "in order");
}

/// While the store fails, what a persistent subscriber may only see once a phase change is
/// stored (here a PUBREL: the Released phase) waits instead of costing it its connection;
/// once a commit goes through again it goes out, and the flow goes on with ids stored.
#[test]
fn a_failing_store_holds_what_waits_for_a_phase_without_dropping_the_subscriber() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let mut c = persistent(V5, "s", 600);
    c.properties.receive_maximum = Some(1);
    let (s, _) = connected(&mut sim, c);
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = connected(&mut sim, connect(V5, "p"));
    sim.send(p, publish("t", QoS::ExactlyOnce, 1, b"one"));
    sim.send(p, pubrel(1));
    sim.send(p, publish("t", QoS::ExactlyOnce, 2, b"two"));
    sim.send(p, pubrel(2));
    sim.take(p);
    let got = sim.take(s);
    let first = publishes(&got);
    assert_eq!(first.len(), 1, "a window of one: {got:?}");
    let id = first[0].packet_id;
    // The disk fills: the Released phase cannot be stored, so PUBREL waits.
    sim.store().unwrap().fill_after(0);
    sim.send(s, pubrec(id));
    assert!(sim.take(s).is_empty(), "PUBREL before its phase is stored");
    assert!(
        !sim.is_gone(s),
        "the subscriber is not dropped for the store"
    );
    // Space comes back: the next commit (a retained message here) carries the phase over.
    sim.store().unwrap().heal();
    let mut retained = publish("r", QoS::AtMostOnce, 0, b"r");
    if let Packet::Publish(p) = &mut retained {
        p.retain = true;
    }
    sim.send(p, retained);
    assert_eq!(sim.take(s), [pubrel(id)]);
    // The flow goes on: the second message follows PUBCOMP, and is stored under its id.
    sim.send(s, pubcomp(id));
    let got = sim.take(s);
    let second = publishes(&got);
    assert_eq!(second.len(), 1, "{got:?}");
    assert_eq!(&second[0].payload[..], b"two");
    let id2 = second[0].packet_id;
    sim.crash_and_restart();
    let (s, present) = connected(&mut sim, persistent(V5, "s", 600));
    assert!(present);
    let again = sim.take(s);
    let again = publishes(&again);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (&again[0].payload[..], again[0].packet_id),
        (&b"two"[..], id2)
    );
}

/// A CONNECT whose session cannot be stored gets a CONNACK that says so (v5 0x97 for a full
/// disk, 3.x 0x03) and is closed, its will not sent; once the store takes writes, it connects.
#[test]
fn a_connect_whose_session_cannot_be_stored_is_refused_with_the_reason() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (watcher, _) = connected(&mut sim, connect(V5, "watcher"));
    sim.send(watcher, subscribe(1, "will/#", QoS::AtMostOnce));
    sim.take(watcher);
    sim.store().unwrap().fill_after(0);
    let mut c = persistent(V5, "s", 600);
    c.will = Some(starling_proto::Will {
        topic: starling_proto::TopicName::try_from_str("will/s").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let s = sim.connect(c);
    match &sim.take(s)[..] {
        [Packet::ConnAck(a)] => {
            assert_eq!(a.reason, ReasonCode::QuotaExceeded);
            assert!(!a.session_present);
        }
        other => panic!("expected CONNACK 0x97, got {other:?}"),
    }
    assert!(sim.is_gone(s));
    let s3 = sim.connect(persistent(V311, "s3", 0));
    match &sim.take(s3)[..] {
        [Packet::ConnAck(a)] => assert_eq!(a.reason, ReasonCode::ServerUnavailable),
        other => panic!("expected CONNACK 0x03, got {other:?}"),
    }
    assert!(sim.is_gone(s3));
    assert!(publishes(&sim.take(watcher)).is_empty(), "no will");
    sim.store().unwrap().heal();
    let (_s, _) = connected(&mut sim, persistent(V5, "s", 600));
}

/// In `sync` mode a QoS 1 message delivered to every persistent subscriber and acknowledged
/// by each before the committer takes it has nothing left to store: its PUBACK goes without
/// waiting for a commit, and nothing of it is written. One that is still unacknowledged when
/// the commit would come waits for the commit as before, and survives a crash; so does a
/// retained one (the retained message itself is stored).
#[test]
fn a_message_acknowledged_by_its_subscribers_before_the_commit_needs_none() {
    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (s, _) = connected(&mut sim, persistent(V5, "s", 600));
    sim.send(s, subscribe(1, "t", QoS::AtLeastOnce));
    assert!(matches!(&sim.take(s)[..], [Packet::SubAck(_)]));
    let (p, _) = connected(&mut sim, connect(V5, "p"));
    let applied = sim.store().unwrap().applied();
    sim.hold_commits = true;

    sim.send(p, publish("t", QoS::AtLeastOnce, 1, b"a"));
    assert!(
        sim.take(p).is_empty(),
        "the subscriber has not acknowledged it yet"
    );
    let got = sim.take(s);
    let id = publishes(&got)[0].packet_id;
    sim.send(s, puback(id));
    match &sim.take(p)[..] {
        [Packet::PubAck(a)] => assert_eq!((a.packet_id, a.reason), (1, ReasonCode::Success)),
        other => panic!("expected the PUBACK before any commit, got {other:?}"),
    }
    let journal = &sim.broker.persistence().unwrap().journal;
    assert_eq!(journal.undone_records(), 1);

    // Not acknowledged by the subscriber: the PUBACK waits for the commit.
    sim.send(p, publish("t", QoS::AtLeastOnce, 2, b"b"));
    assert!(!publishes(&sim.take(s)).is_empty());
    assert!(sim.take(p).is_empty());
    // Retained: acknowledged by the subscriber, but the retained message must be stored.
    let mut retained = publish("t", QoS::AtLeastOnce, 3, b"r");
    if let Packet::Publish(x) = &mut retained {
        x.retain = true;
    }
    sim.send(p, retained);
    let got = sim.take(s);
    let id = publishes(&got)[0].packet_id;
    sim.send(s, puback(id));
    assert!(sim.take(p).is_empty(), "held behind the commit");
    assert_eq!(
        sim.store().unwrap().applied(),
        applied,
        "nothing committed yet"
    );

    sim.hold_commits = false;
    sim.settle();
    let acks = sim.take(p);
    let ids: Vec<u16> = pubacks(&acks).iter().map(|a| a.packet_id).collect();
    assert_eq!(ids, [2, 3], "in order, after the commit");
    // "b" was stored; "a" never was. After a crash the session resends "b" only.
    sim.crash_and_restart();
    let (s, present) = connected(&mut sim, persistent(V5, "s", 600));
    assert!(present);
    let got = sim.take(s);
    let payloads: Vec<&[u8]> = publishes(&got).iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, [&b"b"[..]]);
}

/// What a subscriber's acknowledgements delete reaches the store: three PUBACKs in one read
/// (and, the second time, the connection closed in the same read), then a crash: only the
/// unacknowledged message comes again.
#[test]
fn acknowledged_messages_read_together_do_not_come_again_after_a_crash() {
    for closing in [false, true] {
        let mut sim = Sim::with(Limits::default(), Durability::Sync);
        let (s, _) = connected(&mut sim, persistent(V5, "s", 600));
        sim.send(s, subscribe(1, "t", QoS::AtLeastOnce));
        assert!(matches!(&sim.take(s)[..], [Packet::SubAck(_)]));
        let (p, _) = connected(&mut sim, connect(V5, "p"));
        for i in 1..=4 {
            sim.send(p, publish("t", QoS::AtLeastOnce, i, b"m"));
        }
        assert_eq!(pubacks(&sim.take(p)).len(), 4, "all four stored");
        let got = sim.take(s);
        let ids: Vec<u16> = publishes(&got).iter().map(|m| m.packet_id).collect();
        assert_eq!(ids.len(), 4);

        // Three of the four acknowledged in one read (and, the second time, the connection
        // closed in the same read: the session stays, it is persistent).
        let mut read = Vec::new();
        for id in &ids[..3] {
            read.extend_from_slice(&encode(&puback(*id), V5));
        }
        if closing {
            let bye = Packet::Disconnect(starling_proto::Disconnect::new(ReasonCode::Success));
            read.extend_from_slice(&encode(&bye, V5));
        }
        sim.queue_raw(s, &read);
        sim.settle();

        sim.crash_and_restart();
        let (s, present) = connected(&mut sim, persistent(V5, "s", 600));
        assert!(present);
        let again = sim.take(s);
        let resent: Vec<u16> = publishes(&again).iter().map(|m| m.packet_id).collect();
        assert_eq!(
            resent,
            [ids[3]],
            "closing: {closing}: only the unacknowledged one"
        );
    }
}
