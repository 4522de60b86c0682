//! The broker on seams other than the single-node ones: a route table that knows another
//! node's subscribers hands messages to the forwarder, once per node, and a publish that
//! reaches only another node is still a publish with subscribers; a cluster's ownership of
//! client ids decides when a CONNECT gets its session; a replicated retained store holds the
//! acknowledgement of a retained publish until its copy is committed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::*;
use starling_broker::broker::{Acquire, Alone, Grant, LocalRegistry, Ownership, Seams};
use starling_broker::forward::{Forwarder, NodeId};
use starling_broker::message::Message;
use starling_broker::retain::{Replicated, Replication, RetainOutcome, RetainStore, RetainTree};
use starling_broker::router::{RouteTable, Router, Routes, Subscriber, Target};
use starling_broker::session::Session;
use starling_broker::{Broker, Features, Limits};
use starling_proto::{Packet, QoS, ReasonCode, TopicFilter};

/// The local router, plus two other nodes that subscribe to everything under `remote/`.
#[derive(Debug, Default)]
struct TwoPeers(Router);

impl RouteTable for TwoPeers {
    fn subscribe(&self, filter: &TopicFilter, sub: Subscriber) -> bool {
        self.0.subscribe(filter, sub)
    }

    fn unsubscribe(&self, filter: &TopicFilter, session: &Arc<Session>) -> bool {
        self.0.unsubscribe(filter, session)
    }

    fn route(&self, topic: &[u8], f: &mut dyn FnMut(&[Target<'_>])) {
        self.0.route(topic, &mut |local| {
            let mut targets: Vec<Target<'_>> = local.to_vec();
            if topic.starts_with(b"remote/") {
                // Two subscriptions on node 7 and one on node 9: one hand-over each.
                targets.extend([Target::Remote(7), Target::Remote(7), Target::Remote(9)]);
            }
            f(&targets);
        });
    }

    fn count(&self) -> usize {
        self.0.count()
    }

    fn shared_count(&self) -> usize {
        self.0.shared_count()
    }
}

/// What a forwarder was handed: node and topic.
type Handed = Arc<Mutex<Vec<(NodeId, String)>>>;

/// Remembers what it was handed.
#[derive(Debug)]
struct Recorder(Handed);

impl Forwarder for Recorder {
    fn forward(
        &self,
        node: NodeId,
        msg: &Arc<Message>,
        _: &[Arc<str>],
    ) -> Option<Arc<Replication>> {
        let mut got = self.0.lock().unwrap();
        got.push((node, msg.topic.as_str().to_string()));
        None
    }
}

/// A broker on the [`TwoPeers`] table that hands other nodes' messages to a [`Recorder`],
/// with a local client subscribed to `remote/#`.
fn with_two_peers(handed: &Handed) -> (Sim, C) {
    let seams = Seams {
        registry: Box::<LocalRegistry>::default(),
        routes: Routes::Custom(Box::<TwoPeers>::default()),
        retained: Box::<RetainTree>::default(),
        forwarder: Box::new(Recorder(handed.clone())),
        ownership: Box::new(Alone),
    };
    let now = std::time::Instant::now();
    let broker = Broker::with_seams(Limits::default(), Features::default(), seams, now);
    let mut sim = Sim::on(broker);
    let (local, _) = sim.connected(connect(V5, "local"));
    sim.send(local, subscribe(1, "remote/#", QoS::AtLeastOnce));
    sim.take(local);
    (sim, local)
}

#[test]
fn messages_for_other_nodes_go_to_the_forwarder_once_per_node() {
    let handed = Handed::default();
    let (mut sim, local) = with_two_peers(&handed);
    let (p, _) = sim.connected(connect(V5, "p"));
    sim.send(p, publish("remote/a", QoS::AtLeastOnce, 1, b"x"));
    assert_eq!(
        *handed.lock().unwrap(),
        [(7, "remote/a".to_string()), (9, "remote/a".to_string())]
    );
    assert_eq!(
        publishes(&sim.take(local)).len(),
        1,
        "local subscribers still get it"
    );
    // Only other nodes subscribe: the publish had subscribers.
    sim.send(p, publish("remote/b", QoS::AtLeastOnce, 2, b"y"));
    sim.send(
        local,
        Packet::Unsubscribe(starling_proto::Unsubscribe {
            packet_id: 2,
            filters: vec![TopicFilter::try_from_str("remote/#").unwrap()],
            properties: Default::default(),
        }),
    );
    sim.send(p, publish("remote/c", QoS::AtLeastOnce, 3, b"z"));
    let packets = sim.take(p);
    let acks: Vec<ReasonCode> = pubacks(&packets).iter().map(|a| a.reason).collect();
    assert_eq!(
        acks,
        [ReasonCode::Success; 3],
        "no 0x10 while another node subscribes"
    );
    assert_eq!(handed.lock().unwrap().len(), 6);
}

#[test]
fn a_message_from_another_node_reaches_local_subscribers_only_and_is_not_retained_here() {
    let handed = Handed::default();
    let (mut sim, local) = with_two_peers(&handed);
    let publish = starling_proto::Publish {
        retain: true,
        ..starling_proto::Publish::new(
            starling_proto::TopicName::try_from_str("remote/x").unwrap(),
            QoS::AtLeastOnce,
            1,
            bytes::Bytes::from_static(b"from node 7"),
        )
    };
    let msg = Arc::new(Message::from_publish(publish, None, sim.now));
    let routed = sim.broker.publish_from_peer(msg, &[]);
    assert_eq!((routed.reached, routed.forwarded), (1, 0));
    assert!(routed.retained.is_none());
    sim.settle();
    let got = sim.take(local);
    assert_eq!(publishes(&got).len(), 1, "{got:?}");
    assert!(
        handed.lock().unwrap().is_empty(),
        "not handed on to another node"
    );
    // Not retained here: a new subscriber gets nothing.
    let (later, _) = sim.connected(connect(V5, "later"));
    sim.send(later, subscribe(1, "remote/#", QoS::AtLeastOnce));
    assert!(publishes(&sim.take(later)).is_empty());
}

/// A cluster's ownership decided by the test: every claim waits until the test grants or
/// refuses it.
#[derive(Debug, Default)]
struct ByHand {
    pending: Mutex<Vec<(String, Arc<Grant>)>>,
    /// What `confirm` answers.
    still_owner: AtomicBool,
    released: Mutex<Vec<String>>,
}

#[derive(Debug)]
struct Shared(Arc<ByHand>);

impl Ownership for Shared {
    fn acquire(&self, client_id: &Arc<str>, _: bool, waker: starling_broker::Waker) -> Acquire {
        let grant = Grant::new(waker);
        let mut pending = self.0.pending.lock().unwrap();
        pending.push((client_id.to_string(), grant.clone()));
        Acquire::Later(grant)
    }

    fn confirm(&self, _: &str, _: u64) -> bool {
        self.0.still_owner.load(Ordering::Relaxed)
    }

    fn released(&self, client_id: &str) {
        self.0.released.lock().unwrap().push(client_id.into());
    }
}

impl ByHand {
    fn take(&self, client_id: &str) -> Arc<Grant> {
        let mut pending = self.pending.lock().unwrap();
        let at = pending.iter().position(|(c, _)| c == client_id).unwrap();
        pending.remove(at).1
    }
}

fn connack(packets: &[Packet]) -> ReasonCode {
    match packets {
        [Packet::ConnAck(a), ..] => a.reason,
        other => panic!("expected a CONNACK first, got {other:?}"),
    }
}

#[test]
fn a_connect_waits_for_the_cluster_to_grant_its_client_id() {
    let hand = Arc::new(ByHand::default());
    hand.still_owner.store(true, Ordering::Relaxed);
    let seams = Seams {
        ownership: Box::new(Shared(hand.clone())),
        ..Seams::default()
    };
    let now = std::time::Instant::now();
    let broker = Broker::with_seams(Limits::default(), Features::default(), seams, now);
    let mut sim = Sim::on(broker);

    // Nothing until the grant; then CONNACK, and the session is there.
    let a = sim.connect(persistent(V5, "a", 600));
    assert!(sim.take(a).is_empty(), "no CONNACK before the grant");
    hand.take("a").grant(5);
    sim.settle();
    assert_eq!(connack(&sim.take(a)), ReasonCode::Success);
    assert!(sim.broker.session("a").is_some());

    // Refused: Server unavailable (v5 0x88; 3.1.1 return code 3), and no session.
    let b = sim.connect(connect(V5, "b"));
    let b3 = sim.connect(connect(V311, "b3"));
    hand.take("b").refuse();
    hand.take("b3").refuse();
    sim.settle();
    assert_eq!(connack(&sim.take(b)), ReasonCode::ServerUnavailable);
    assert_eq!(connack(&sim.take(b3)), ReasonCode::ServerUnavailable);
    assert!(sim.is_gone(b) && sim.is_gone(b3));
    assert!(sim.broker.session("b").is_none());

    // Never decided: refused once the wait is over.
    let d = sim.connect(connect(V5, "d"));
    sim.advance(Duration::from_secs(59));
    assert!(sim.take(d).is_empty());
    sim.advance(Duration::from_secs(2));
    assert_eq!(connack(&sim.take(d)), ReasonCode::ServerUnavailable);

    // Another node claimed the client id: the connection is taken over, the session ends,
    // and the client id is not released (it is the other node's).
    assert!(sim.broker.taken_over_elsewhere("a", sim.now));
    sim.settle();
    let got = sim.take(a);
    assert!(
        matches!(&got[..], [Packet::Disconnect(x)] if x.reason == ReasonCode::SessionTakenOver),
        "{got:?}"
    );
    assert!(sim.broker.session("a").is_none());
    assert!(
        !sim.broker.taken_over_elsewhere("a", sim.now),
        "nothing left to end"
    );
    assert!(hand.released.lock().unwrap().is_empty());

    // Granted, but a claim elsewhere committed before the session was attached: taken over
    // at once.
    hand.still_owner.store(false, Ordering::Relaxed);
    let e = sim.connect(connect(V5, "e"));
    hand.take("e").grant(9);
    sim.settle();
    let got = sim.take(e);
    assert_eq!(connack(&got), ReasonCode::Success);
    assert!(
        matches!(&got[1..], [Packet::Disconnect(x)] if x.reason == ReasonCode::SessionTakenOver),
        "{got:?}"
    );
    assert!(sim.broker.session("e").is_none());

    // A session that ends here (expiry 0, clean DISCONNECT) releases its client id.
    hand.still_owner.store(true, Ordering::Relaxed);
    let f = sim.connect(connect(V5, "f"));
    hand.take("f").grant(11);
    sim.settle();
    assert_eq!(connack(&sim.take(f)), ReasonCode::Success);
    sim.send(
        f,
        Packet::Disconnect(starling_proto::Disconnect::new(ReasonCode::Success)),
    );
    sim.settle();
    assert_eq!(*hand.released.lock().unwrap(), ["f"]);
}

/// A node that lost its cluster's majority sends its connected clients elsewhere: v5 gets
/// DISCONNECT 0x9C (Use another server), 3.1.1 is closed; their sessions stay, and a client
/// that comes back is served again.
#[test]
fn clients_are_sent_elsewhere_when_the_node_loses_the_majority() {
    let mut sim = Sim::new(Limits::default());
    let (a, _) = sim.connected(connect(V5, "a"));
    let (b, _) = sim.connected(connect(V311, "b"));
    assert_eq!(sim.broker.send_all_elsewhere(), 2);
    sim.settle();
    let got = sim.take(a);
    assert!(
        matches!(&got[..], [Packet::Disconnect(x)] if x.reason == ReasonCode::UseAnotherServer),
        "{got:?}"
    );
    assert!(sim.closed(a).is_some());
    assert!(sim.closed(b).is_some());
    assert_eq!(sim.broker.metrics.clients_sent_elsewhere.get(), 2);
    assert_eq!(sim.broker.metrics.clients_kicked.get(), 0);
    assert_eq!(sim.broker.send_all_elsewhere(), 0, "nobody is connected");
    let (_, ack) = sim.connected(connect(V5, "a"));
    assert_eq!(ack.reason, ReasonCode::Success);
}

/// A retained store whose writes a test commits: each `set` waits in `pending` for the test
/// to decide it; committed, it enters the replica (`tree`) that subscriptions are served from.
#[derive(Debug, Default)]
struct Replica {
    tree: RetainTree,
    pending: Mutex<Vec<(Arc<Message>, Arc<Replication>)>>,
}

impl Replica {
    /// Decides the oldest write under way.
    fn decide(&self, how: Replicated) -> String {
        let (msg, r) = self.pending.lock().unwrap().remove(0);
        if how == Replicated::Committed {
            self.tree.set(msg.clone(), usize::MAX);
        }
        r.decide(how);
        msg.topic.as_str().to_string()
    }
}

/// The broker's handle on the shared [`Replica`].
#[derive(Debug)]
struct Replicating(Arc<Replica>);

impl RetainStore for Replicating {
    fn set(&self, msg: Arc<Message>, _: usize) -> RetainOutcome {
        let r = Replication::new();
        self.0.pending.lock().unwrap().push((msg, r.clone()));
        RetainOutcome::Pending(r)
    }

    fn matching(&self, filter: &[u8], now: std::time::Instant) -> Vec<Arc<Message>> {
        self.0.tree.matching(filter, now)
    }

    fn count(&self) -> usize {
        self.0.tree.count()
    }

    fn bytes(&self) -> usize {
        self.0.tree.bytes()
    }

    fn replicated(&self) -> bool {
        true
    }
}

fn retained_publish(topic: &str, qos: QoS, pid: u16) -> Packet {
    let mut p = publish(topic, qos, pid, b"kept");
    if let Packet::Publish(x) = &mut p {
        x.retain = true;
    }
    p
}

/// In a cluster, the PUBACK/PUBREC of a retained publish waits until the cluster committed
/// its retained copy, and the acknowledgements after it wait behind it (MQTT-4.6.0-2: in
/// order); a copy the cluster's bounds refused is answered 0x97, one it could not commit
/// 0x80 (QoS 2: the id may be used again), and a 3.1.1 client, which cannot be told, is
/// disconnected so that it resends. Subscribers are served from the replica.
#[test]
fn a_retained_publish_is_acknowledged_once_the_cluster_committed_it() {
    let replica = Arc::new(Replica::default());
    let seams = Seams {
        registry: Box::<LocalRegistry>::default(),
        routes: Routes::Local(Router::default()),
        retained: Box::new(Replicating(replica.clone())),
        forwarder: Box::new(Recorder(Handed::default())),
        ownership: Box::new(Alone),
    };
    let now = std::time::Instant::now();
    let broker = Broker::with_seams(Limits::default(), Features::default(), seams, now);
    let mut sim = Sim::on(broker);
    let (p, _) = sim.connected(connect(V5, "p"));

    sim.send(p, retained_publish("r/a", QoS::AtLeastOnce, 1));
    sim.send(p, publish("plain", QoS::AtLeastOnce, 2, b"x"));
    assert!(sim.take(p).is_empty(), "nothing before the commit");
    assert_eq!(replica.decide(Replicated::Committed), "r/a");
    sim.settle();
    let got = sim.take(p);
    let acks: Vec<(u16, ReasonCode)> = pubacks(&got)
        .iter()
        .map(|a| (a.packet_id, a.reason))
        .collect();
    assert_eq!(
        acks,
        [
            (1, ReasonCode::Success),
            (2, ReasonCode::NoMatchingSubscribers)
        ],
        "in order"
    );

    sim.send(p, retained_publish("r/b", QoS::AtLeastOnce, 3));
    replica.decide(Replicated::Full);
    sim.settle();
    let got = sim.take(p);
    assert_eq!(pubacks(&got)[0].reason, ReasonCode::QuotaExceeded);

    sim.send(p, retained_publish("r/c", QoS::ExactlyOnce, 4));
    replica.decide(Replicated::Failed);
    sim.settle();
    let got = sim.take(p);
    assert!(
        matches!(&got[..], [Packet::PubRec(a)] if a.packet_id == 4 && a.reason == ReasonCode::UnspecifiedError),
        "{got:?}"
    );
    // The id was not kept: the same id is a new message (a new write under way).
    sim.send(p, retained_publish("r/c", QoS::ExactlyOnce, 4));
    assert_eq!(replica.pending.lock().unwrap().len(), 1);
    replica.decide(Replicated::Committed);
    sim.settle();
    let got = sim.take(p);
    assert!(
        matches!(&got[..], [Packet::PubRec(a)] if a.reason == ReasonCode::Success),
        "{got:?}"
    );

    // QoS 0 waits for nothing.
    sim.send(p, retained_publish("r/d", QoS::AtMostOnce, 0));
    assert!(sim.take(p).is_empty());
    assert_eq!(replica.pending.lock().unwrap().len(), 1);
    replica.decide(Replicated::Committed);

    // A subscriber is served the committed copies from the replica.
    let (s, _) = sim.connected(connect(V5, "s"));
    sim.send(s, subscribe(1, "r/#", QoS::AtLeastOnce));
    let got = sim.take(s);
    let mut topics: Vec<&str> = publishes(&got).iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["r/a", "r/c", "r/d"]);

    // 3.1.1 cannot be told that the copy was not committed: disconnected, unacknowledged.
    let (q, _) = sim.connected(connect(V311, "q"));
    sim.send(q, retained_publish("r/e", QoS::AtLeastOnce, 7));
    replica.decide(Replicated::Failed);
    sim.settle();
    assert!(pubacks(&sim.take(q)).is_empty());
    assert!(sim.closed(q).is_some());
}

/// A message another node forwarded reaches one member of each shared group it names, and
/// no member of the others (the publishing node picked another node for those); plain
/// subscribers get it either way.
#[test]
fn a_message_from_another_node_reaches_only_the_shared_groups_it_names() {
    let handed = Handed::default();
    let (mut sim, local) = with_two_peers(&handed);
    let (a, _) = sim.connected(connect(V5, "a"));
    sim.send(a, subscribe(1, "$share/g/remote/#", QoS::AtLeastOnce));
    let (b, _) = sim.connected(connect(V5, "b"));
    sim.send(b, subscribe(1, "$share/h/remote/#", QoS::AtLeastOnce));
    sim.take(a);
    sim.take(b);
    let msg = |body: &'static [u8]| {
        let p = starling_proto::Publish::new(
            starling_proto::TopicName::try_from_str("remote/y").unwrap(),
            QoS::AtLeastOnce,
            1,
            bytes::Bytes::from_static(body),
        );
        Arc::new(Message::from_publish(p, None, sim.now))
    };
    let routed = sim.broker.publish_from_peer(msg(b"none"), &[]);
    assert_eq!(routed.reached, 1, "the plain subscriber only");
    let g: Arc<str> = Arc::from("$share/g/remote/#");
    let routed = sim.broker.publish_from_peer(msg(b"for g"), &[g]);
    assert_eq!(routed.reached, 2);
    sim.settle();
    assert_eq!(publishes(&sim.take(local)).len(), 2);
    let got = sim.take(a);
    let to_a: Vec<&[u8]> = publishes(&got).iter().map(|p| &p.payload[..]).collect();
    assert_eq!(to_a, [&b"for g"[..]]);
    assert!(publishes(&sim.take(b)).is_empty(), "group h was not named");
}

/// A session moves between two nodes (two brokers here): the old node hands over its record,
/// its inflight and queued messages; the new node adopts it, into its store too, and the
/// client resumes it there (Session Present 1, the inflight messages again with DUP, then the
/// queued ones). The old node's last messages for it are taken once: one that reached the
/// new node directly (the same cluster id) is not taken again.
#[test]
fn a_session_handed_over_to_another_node_resumes_there_with_its_messages() {
    // The wall clock both nodes agree on (the simulation's start).
    const UNIX_MS: u64 = 1_700_000_000_000;
    use starling_broker::broker::HandOver;
    use starling_broker::message::Delivery;
    use starling_store::MessagePhase;

    let mut a = Sim::with(Limits::default(), Durability::Sync);
    let (sub, _) = a.connected(persistent(V5, "m", 600));
    a.send(sub, subscribe(1, "t/#", QoS::AtLeastOnce));
    a.take(sub);
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
    use starling_broker::broker::HandOver;

    const UNIX_MS: u64 = 1_700_000_000_000;
    let mut a = Sim::new(Limits::default());
    let (sub, _) = a.connected(persistent(V5, "m", 600));
    a.send(sub, subscribe(1, "t/#", QoS::AtLeastOnce));
    a.take(sub);
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
    const UNIX_MS: u64 = 1_700_000_000_000;
    use starling_broker::broker::HandOver;
    use starling_store::MessagePhase;

    let mut a = Sim::with(Limits::default(), Durability::Sync);
    let (sub, _) = a.connected(persistent(V5, "m", 600));
    a.send(sub, subscribe(1, "t/#", QoS::AtLeastOnce));
    a.take(sub);
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
    const UNIX_MS: u64 = 1_700_000_000_000;
    use starling_broker::broker::HandOver;

    let mut a = Sim::with(Limits::default(), Durability::Sync);
    let (sub, _) = a.connected(persistent(V5, "m", 600));
    a.send(sub, subscribe(1, "t/#", QoS::AtLeastOnce));
    a.take(sub);
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
