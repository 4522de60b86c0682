//! The broker on seams other than the single-node ones: a route table that knows another
//! node's subscribers hands messages to the forwarder, once per node, and a publish that
//! reaches only another node is still a publish with subscribers; a cluster's ownership of
//! client ids decides when a CONNECT gets its session; a replicated retained store holds the
//! acknowledgement of a retained publish until its copy is committed. Sessions moving between
//! nodes are in `seams/moves.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

#[path = "seams/moves.rs"]
mod moves;

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
