//! Sessions moving between nodes on the seams: handed over with their inflight and queued
//! messages, handed back, forwarded batches with their marks, queues larger than one answer,
//! and messages that reach the old owner late.

use starling_broker::broker::HandOver;
use starling_broker::message::Delivery;
use starling_store::MessagePhase;

use super::*;

/// The wall clock the nodes agree on (the simulation's start).
const UNIX_MS: u64 = 1_700_000_000_000;

/// Connects the persistent session "m" (v5, expiry 600 s) to `a`, subscribed to `t/#` at
/// QoS 1.
fn subscribed_m(a: &mut Sim) -> C {
    let (sub, _) = a.connected(persistent(V5, "m", 600));
    a.send(sub, subscribe(1, "t/#", QoS::AtLeastOnce));
    a.take(sub);
    sub
}

/// A session moves between two nodes (two brokers here): the old node hands over its record,
/// its inflight and queued messages; the new node adopts it, into its store too, and the
/// client resumes it there (Session Present 1, the inflight messages again with DUP, then the
/// queued ones). The old node's last messages for it are taken once: one that reached the
/// new node directly (the same cluster id) is not taken again.
#[test]
fn a_session_handed_over_to_another_node_resumes_there_with_its_messages() {
    let mut a = Sim::with(Limits::default(), Durability::Sync);
    let sub = subscribed_m(&mut a);
    let (p, _) = a.connected(connect(V5, "p"));
    for i in 0..3u8 {
        a.send(p, publish("t/x", QoS::AtLeastOnce, u16::from(i) + 1, &[i]));
    }
    assert_eq!(publishes(&a.take(sub)).len(), 3, "sent, not acknowledged");
    a.drop_connection(sub);
    for i in 3..5u8 {
        a.send(p, publish("t/x", QoS::AtLeastOnce, u16::from(i) + 1, &[i]));
    }
    a.settle();

    let HandOver::Taken { session, ids, .. } =
        a.broker
            .hand_over("m", 7, false, false, usize::MAX, a.now, UNIX_MS)
    else {
        panic!("no session to hand over");
    };
    let phases: Vec<MessagePhase> = session.messages.iter().map(|(_, m)| m.phase).collect();
    use MessagePhase::{Published, Queued};
    assert_eq!(phases, [Published, Published, Published, Queued, Queued]);
    assert_eq!(ids.len(), 5);
    assert_eq!(session.record.subscriptions.len(), 1);

    // A second step for another move (a later claim took the session since) finds nothing.
    assert!(matches!(
        a.broker
            .hand_over("m", 6, true, false, usize::MAX, a.now, UNIX_MS),
        HandOver::Absent
    ));
    // The second call takes what came meanwhile (nothing) and ends the session there.
    let HandOver::Taken { session: rest, .. } =
        a.broker
            .hand_over("m", 7, true, false, usize::MAX, a.now, UNIX_MS)
    else {
        panic!("no session to finish");
    };
    assert!(rest.messages.is_empty());
    assert_eq!(a.broker.metrics.sessions_handed_over.get(), 1);
    assert!(!a.broker.client_ids().iter().any(|c| &**c == "m"));

    let mut b = Sim::with(Limits::default(), Durability::Sync);
    assert!(b.broker.adopt(session, &ids, b.now, UNIX_MS));
    assert_eq!(b.broker.metrics.sessions_adopted.get(), 1);

    // The old node's last messages: one of them also reached the new node directly.
    let late = |id: u64, byte: u8| from_peer(id, vec![byte]);
    b.broker.publish_from_peer(late(42, 42), &[]);
    let clock = starling_broker::persist::WallClock::new(b.now, UNIX_MS);
    let record = |byte: u8| {
        let d = Delivery::new(late(0, byte), QoS::AtLeastOnce, false);
        starling_broker::persist::delivery_record(&d, Queued, 0, &clock)
    };
    let last = vec![(record(42), 42), (record(43), 43)];
    let taken = b.broker.adopt_messages("m", last, false, b.now, UNIX_MS);
    assert_eq!(
        taken, 1,
        "the message that came directly is not taken again"
    );

    // All of it stored on the new node: a crash there keeps it.
    b.settle();
    b.crash_and_restart();
    let (m, ack) = b.connected(persistent(V5, "m", 600));
    assert!(ack.session_present);
    let got = b.take(m);
    let got = publishes(&got);
    let payloads: Vec<u8> = got.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, [0, 1, 2, 3, 4, 42, 43]);
    assert!(got[..3].iter().all(|p| p.dup), "inflight again, with DUP");
    assert!(got[3..].iter().all(|p| !p.dup));
}

/// A client whose session was handed over from here comes back before the second step: the
/// session handed back replaces the one left here, and what that one queued meanwhile is
/// added, once (a message the handed-back session brings, by cluster id, is not).
#[test]
fn a_session_handed_back_keeps_what_was_queued_here_meanwhile() {
    let mut a = Sim::new(Limits::default());
    let sub = subscribed_m(&mut a);
    a.drop_connection(sub);
    let (p, _) = a.connected(connect(V5, "p"));
    a.send(p, publish("t/x", QoS::AtLeastOnce, 1, &[1]));
    a.settle();
    let HandOver::Taken { session, ids, .. } =
        a.broker
            .hand_over("m", 7, false, false, usize::MAX, a.now, UNIX_MS)
    else {
        panic!("no session");
    };
    assert_eq!(session.messages.len(), 1);
    // Queued here after the first step: one only here, one that also went with the session
    // (the same cluster id).
    a.send(p, publish("t/x", QoS::AtLeastOnce, 2, &[2]));
    a.broker.publish_from_peer(from_peer(99, vec![3]), &[]);
    a.settle();
    let mut back = session.clone();
    let mut back_ids = ids.clone();
    let rec = back.messages[0].1.clone();
    back.messages.push((2, rec));
    back_ids.push(99);
    assert!(a.broker.adopt(back, &back_ids, a.now, UNIX_MS));
    let (m, ack) = a.connected(persistent(V5, "m", 600));
    assert!(ack.session_present);
    let got = a.take(m);
    let payloads: Vec<u8> = publishes(&got).iter().map(|p| p.payload[0]).collect();
    assert_eq!(
        payloads,
        [1, 1, 2],
        "the handed-back two, then the one queued only here"
    );
}

/// A batch another node forwarded stores its mark (a named setting) in the same commit as
/// the messages it queued, so that after a crash the node knows it took the batch; a batch
/// that queued nothing durable stores no mark.
#[test]
fn a_forwarded_batch_stores_its_mark_with_its_messages() {
    use starling_store::Store;

    let mut sim = Sim::with(Limits::default(), Durability::Sync);
    let (sub, _) = sim.connected(persistent(V5, "keeper", 600));
    sim.send(sub, subscribe(1, "kept/#", QoS::AtLeastOnce));
    sim.take(sub);
    sim.drop_connection(sub);
    let batch = |topic: &str| {
        let publish = starling_proto::Publish::new(
            starling_proto::TopicName::try_from_str(topic).unwrap(),
            QoS::AtLeastOnce,
            1,
            bytes::Bytes::from_static(b"x"),
        );
        vec![(
            Arc::new(Message::from_publish(publish, None, sim.now)),
            Vec::new(),
        )]
    };
    let mark = |n: u8| Some(("cluster.taken.7".to_owned(), vec![n]));

    // Nobody durable subscribes: nothing stored, no mark, no ticket.
    let none = batch("other/x");
    assert_eq!(sim.broker.publish_batch_from_peer(none, mark(1)), None);
    // The offline persistent session queues it: the mark goes with it.
    let kept = batch("kept/x");
    assert!(sim.broker.publish_batch_from_peer(kept, mark(2)).is_some());
    sim.settle();
    let settings = |sim: &Sim| sim.store().unwrap().load(false).unwrap().settings;
    assert_eq!(
        settings(&sim),
        [("cluster.taken.7".to_owned(), vec![2])],
        "the mark of the batch that stored something"
    );
    sim.crash_and_restart();
    assert_eq!(settings(&sim), [("cluster.taken.7".to_owned(), vec![2])]);
    assert_eq!(
        sim.store().unwrap().load(false).unwrap().sessions[0]
            .messages
            .len(),
        1
    );
}

/// A queue larger than one answer's budget goes in parts: the first call takes the inflight
/// window whole and the queued messages up to the budget, the rest stays in the session, in
/// order, ahead of what arrives meanwhile, and finishing calls take it part by part; the
/// session ends with the last. The new node takes every part, and a message that reached
/// it directly (same cluster id) once, whichever part brings it.
#[test]
fn a_queue_larger_than_one_answer_moves_in_parts() {
    let mut a = Sim::with(Limits::default(), Durability::Sync);
    let sub = subscribed_m(&mut a);
    let (p, _) = a.connected(connect(V5, "p"));
    let big = |i: u8| vec![i; 1000];
    a.send(p, publish("t/x", QoS::AtLeastOnce, 1, &big(0)));
    assert_eq!(publishes(&a.take(sub)).len(), 1, "one inflight");
    a.drop_connection(sub);
    for i in 1..8u8 {
        a.send(
            p,
            publish("t/x", QoS::AtLeastOnce, u16::from(i) + 1, &big(i)),
        );
    }
    a.settle();

    // A budget of about two messages.
    let budget = 2500;
    let first = |msgs: &[(u64, starling_store::MessageRecord)]| msgs[0].1.phase;
    let HandOver::Taken { session, ids, more } = a
        .broker
        .hand_over("m", 7, false, false, budget, a.now, UNIX_MS)
    else {
        panic!("no session to hand over");
    };
    assert!(more);
    assert_eq!(session.messages.len(), 2, "the inflight one and one queued");
    // The owner keeps a session whose parts are still being taken from its last step.
    assert_eq!(a.broker.last_handover_step("m"), Some(a.now));
    assert_eq!(first(&session.messages), MessagePhase::Published);
    // Arrive meanwhile, after the rest of the queue: one published here, one forwarded by a
    // third node, which also forwarded it to the new owner (the same cluster id).
    a.send(p, publish("t/x", QoS::AtLeastOnce, 20, &big(8)));
    let forwarded = || from_peer(77, big(9));
    a.broker.publish_from_peer(forwarded(), &[]);
    a.settle();

    let mut b = Sim::with(Limits::default(), Durability::Sync);
    assert!(b.broker.adopt(session, &ids, b.now, UNIX_MS));
    b.broker.publish_from_peer(forwarded(), &[]);
    let mut parts = 0;
    loop {
        let HandOver::Taken { session, ids, more } = a
            .broker
            .hand_over("m", 7, true, false, budget, a.now, UNIX_MS)
        else {
            panic!("the rest of the session is gone");
        };
        assert!(session.messages.len() <= 2 || !more);
        let part = (session.messages.into_iter().map(|(_, m)| m))
            .zip(ids)
            .collect();
        b.broker.adopt_messages("m", part, more, b.now, UNIX_MS);
        parts += 1;
        if !more {
            break;
        }
    }
    assert_eq!(parts, 4, "8 messages left, two per part");
    assert!(!a.broker.client_ids().iter().any(|c| &**c == "m"), "ended");
    assert_eq!(a.broker.metrics.sessions_handed_over.get(), 1);

    let (m, ack) = b.connected(persistent(V5, "m", 600));
    assert!(ack.session_present);
    let got = b.take(m);
    let firsts: Vec<u8> = publishes(&got).iter().map(|p| p.payload[0]).collect();
    // The forwarded one where it reached the new node directly, and not again from the
    // last part.
    assert_eq!(
        firsts,
        [0, 1, 9, 2, 3, 4, 5, 6, 7, 8],
        "every message once, in order"
    );
}

/// A session handed over with `keep` stays on the old node, its subscriptions out of the
/// route table (the node stops telling its peers of them) and in the relays: a message a
/// peer forwards to the old node late still reaches it, and the last call takes it. On the
/// new node a message that came both ways is taken once. A message published on the old
/// node itself does not reach the relayed session (its peers' routes lead to the new owner).
#[test]
fn a_message_forwarded_late_to_the_old_owner_reaches_the_moved_session() {
    let mut a = Sim::with(Limits::default(), Durability::Sync);
    let sub = subscribed_m(&mut a);
    a.drop_connection(sub);
    let (p, _) = a.connected(connect(V5, "p"));
    let forwarded = |id: u64, payload: &[u8]| from_peer(id, payload.to_vec());
    let take = |h: HandOver| match h {
        HandOver::Taken { session, ids, more } => (session, ids, more),
        other => panic!("expected the session, got {other:?}"),
    };
    let part = |session: starling_store::LoadedSession, ids: Vec<u64>| {
        (session.messages.into_iter().map(|(_, m)| m))
            .zip(ids)
            .collect::<Vec<_>>()
    };

    let (session, ids, _) =
        take(
            a.broker
                .hand_over("m", 7, false, false, usize::MAX, a.now, UNIX_MS),
        );
    let mut b = Sim::with(Limits::default(), Durability::Sync);
    assert!(b.broker.adopt(session, &ids, b.now, UNIX_MS));
    // The finishing step, keeping the session for what comes late.
    let (rest, ids, more) =
        take(
            a.broker
                .hand_over("m", 7, true, true, usize::MAX, a.now, UNIX_MS),
        );
    assert!(!more);
    b.broker
        .adopt_messages("m", part(rest, ids), true, b.now, UNIX_MS);
    assert!(a.broker.client_ids().iter().any(|c| &**c == "m"), "kept");
    assert_eq!(a.broker.subscription_count(), 0, "not in the route table");

    // Late: one the third node also sent to the new owner, one it sent to the old only.
    a.broker.publish_from_peer(forwarded(88, b"both"), &[]);
    b.broker.publish_from_peer(forwarded(88, b"both"), &[]);
    a.broker.publish_from_peer(forwarded(89, b"late"), &[]);
    // Published on the old node itself: not for the relayed session.
    a.send(p, publish("t/x", QoS::AtLeastOnce, 1, b"here"));
    a.settle();

    // The last call takes the late ones and ends the session.
    let (rest, ids, more) =
        take(
            a.broker
                .hand_over("m", 7, true, false, usize::MAX, a.now, UNIX_MS),
        );
    assert!(!more);
    let late = part(rest, ids);
    let late_ids: Vec<u64> = late.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        late_ids,
        [88, 89],
        "the late ones, not the one published here"
    );
    b.broker.adopt_messages("m", late, false, b.now, UNIX_MS);
    assert!(!a.broker.client_ids().iter().any(|c| &**c == "m"), "ended");
    a.broker.publish_from_peer(forwarded(90, b"after"), &[]);

    let (m, ack) = b.connected(persistent(V5, "m", 600));
    assert!(ack.session_present);
    let got = b.take(m);
    let payloads: Vec<&[u8]> = publishes(&got).iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"both"[..], b"late"], "each once");
}

/// A QoS 1 message on `t/x` as another node forwards it, named `id` in the cluster.
fn from_peer(id: u64, payload: Vec<u8>) -> Arc<Message> {
    let mut msg = Message::internal(
        starling_proto::TopicName::try_from_str("t/x").unwrap(),
        bytes::Bytes::from(payload),
        false,
    );
    msg.qos = QoS::AtLeastOnce;
    msg.cluster_id.set(id);
    Arc::new(msg)
}
