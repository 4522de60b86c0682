//! The broker on seams other than the single-node ones: a route table that knows another
//! node's subscribers hands messages to the forwarder, once per node, and a publish that
//! reaches only another node is still a publish with subscribers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use std::sync::{Arc, Mutex};

use sim::*;
use starling_broker::broker::{LocalRegistry, Seams};
use starling_broker::forward::{Forwarder, NodeId};
use starling_broker::message::Message;
use starling_broker::retain::RetainTree;
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
    fn forward(&self, node: NodeId, msg: &Arc<Message>) {
        let mut got = self.0.lock().unwrap();
        got.push((node, msg.topic.as_str().to_string()));
    }
}

#[test]
fn messages_for_other_nodes_go_to_the_forwarder_once_per_node() {
    let handed = Handed::default();
    let seams = Seams {
        registry: Box::<LocalRegistry>::default(),
        routes: Routes::Custom(Box::<TwoPeers>::default()),
        retained: Box::<RetainTree>::default(),
        forwarder: Box::new(Recorder(handed.clone())),
    };
    let now = std::time::Instant::now();
    let broker = Broker::with_seams(Limits::default(), Features::default(), seams, now);
    let mut sim = Sim::on(broker);
    let (local, _) = sim.connected(connect(V5, "local"));
    sim.send(local, subscribe(1, "remote/#", QoS::AtLeastOnce));
    sim.take(local);
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
