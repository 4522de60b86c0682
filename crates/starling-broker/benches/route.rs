//! Micro-benchmarks of a message's whole path through the sans-IO core, without sockets:
//! a publisher's PUBLISH bytes decoded and handled (`handle_input`), routed, queued in each
//! subscriber's session, taken out and encoded (`poll_transmit`), and at QoS 1 the
//! subscribers' PUBACKs handled. One iteration is one batch of 100 PUBLISHes, run until every
//! connection is idle. Single-threaded and free of I/O, so the figures move by a few per cent
//! between runs, where socket benchmarks on a shared machine move by twenty: this is how a
//! small change to the core's hot path (a new branch on every queued message, say) is held to
//! "within 3 %" (bench/RESULTS.md, "Buffers per subscription").
//!
//! `cargo bench -p starling-broker --bench route`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use divan::{Bencher, counter::ItemsCount};
use starling_broker::wake::Flag;
use starling_broker::{Broker, Connection, Limits, QueueScope, Wake};
use starling_proto::{
    Connect, DecodeLimits, Packet, ProtocolVersion, PubAck, Publish, QoS, Subscribe, TopicFilter,
    TopicName,
};

fn main() {
    divan::main();
}

/// PUBLISHes per iteration.
const BATCH: usize = 100;
const V: ProtocolVersion = ProtocolVersion::V311;

/// One client of the core: its connection, what it sends next, and its output buffer.
struct Peer {
    conn: Connection,
    flag: Arc<Flag>,
    input: BytesMut,
    out: BytesMut,
}

/// A broker and its clients, each connected and subscribed.
struct Bed {
    broker: Broker,
    now: Instant,
    publishers: Vec<Peer>,
    subscribers: Vec<Peer>,
    /// One batch of every publisher's PUBLISH packets, encoded.
    batches: Vec<Bytes>,
}

fn encode(packet: &Packet) -> Bytes {
    let mut buf = BytesMut::new();
    starling_proto::encode(packet, V, &mut buf).unwrap();
    buf.freeze()
}

/// Limits high enough that nothing is dropped or held back.
fn limits(scope: QueueScope) -> Limits {
    Limits {
        max_queued_messages: 1_000_000,
        max_queued_bytes: 1 << 32,
        max_inflight: 1000,
        queue_scope: scope,
        max_queued_messages_per_subscription: 1_000_000,
        max_queued_bytes_per_subscription: 1 << 32,
        ..Limits::default()
    }
}

impl Bed {
    /// `publishers` publishing to `topic(i)`, `subscribers` subscribed to `filter(j)`.
    fn new(
        scope: QueueScope,
        qos: QoS,
        publishers: usize,
        subscribers: usize,
        topic: impl Fn(usize) -> String,
        filter: impl Fn(usize) -> String,
    ) -> Self {
        let now = Instant::now();
        let broker = Broker::new(limits(scope), now);
        let mut bed = Self {
            broker,
            now,
            publishers: Vec::new(),
            subscribers: Vec::new(),
            batches: Vec::new(),
        };
        for j in 0..subscribers {
            let mut p = bed.peer(&format!("sub-{j}"));
            let f = TopicFilter::try_from_str(&filter(j)).unwrap();
            p.input
                .extend_from_slice(&encode(&Packet::Subscribe(Subscribe::one(1, f, qos))));
            bed.subscribers.push(p);
        }
        for i in 0..publishers {
            let p = bed.peer(&format!("pub-{i}"));
            bed.publishers.push(p);
            let t = TopicName::try_from_str(&topic(i)).unwrap();
            let mut batch = BytesMut::new();
            for k in 0..BATCH {
                let id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    k as u16 + 1
                };
                let publish = Publish::new(t.clone(), qos, id, Bytes::from(vec![0xA5; 64]));
                starling_proto::encode(&Packet::Publish(publish), V, &mut batch).unwrap();
            }
            bed.batches.push(batch.freeze());
        }
        bed.run();
        bed
    }

    fn peer(&self, id: &str) -> Peer {
        let flag = Flag::new();
        let conn = Connection::new(flag.clone(), None, self.now);
        let input = BytesMut::from(&encode(&Packet::Connect(Box::new(Connect::new(V, id))))[..]);
        Peer {
            conn,
            flag,
            input,
            out: BytesMut::new(),
        }
    }

    /// One batch from every publisher, run until nothing moves. Returns the deliveries.
    fn publish(&mut self) -> usize {
        for (p, batch) in self.publishers.iter_mut().zip(&self.batches) {
            p.input.extend_from_slice(batch);
        }
        self.run()
    }

    /// Runs every connection until none has input or output. Returns the PUBLISHes the
    /// subscribers received.
    fn run(&mut self) -> usize {
        let limits = DecodeLimits {
            max_packet_size: u32::MAX,
            ..DecodeLimits::default()
        };
        let mut delivered = 0;
        for _ in 0..10_000 {
            let mut moved = false;
            for p in self
                .publishers
                .iter_mut()
                .chain(self.subscribers.iter_mut())
            {
                if !p.input.is_empty() {
                    p.conn.handle_input(&self.broker, self.now, &mut p.input);
                    moved = true;
                    // Polled after input, as the server's task does.
                    p.flag.wake();
                }
                if !p.flag.take() {
                    continue;
                }
                p.conn.poll_transmit(&self.broker, self.now, &mut p.out);
                if p.out.is_empty() {
                    continue;
                }
                moved = true;
                delivered += take_output(p, &limits);
            }
            if !moved {
                return delivered;
            }
        }
        panic!("the core did not settle");
    }
}

/// What a client does with its output: counts the PUBLISHes and acknowledges those at QoS 1.
/// Split by the fixed header only (a PUBLISH's packet id read in place), so that the client's
/// side costs little beside the broker's; anything else is decoded in full.
fn take_output(p: &mut Peer, limits: &DecodeLimits) -> usize {
    let mut delivered = 0;
    let mut rest = &p.out[..];
    while !rest.is_empty() {
        let len = starling_proto::packet_len(rest).unwrap();
        let (packet, tail) = rest.split_at(len);
        rest = tail;
        if packet[0] >> 4 != 3 {
            let mut one = BytesMut::from(packet);
            starling_proto::decode(&mut one, V, limits).unwrap();
            continue;
        }
        delivered += 1;
        if (packet[0] >> 1) & 3 == 1 {
            // Fixed header, remaining length (one to four bytes), topic length and topic.
            let mut at = 1;
            while packet[at] & 0x80 != 0 {
                at += 1;
            }
            at += 1;
            let topic = usize::from(u16::from_be_bytes([packet[at], packet[at + 1]]));
            at += 2 + topic;
            let id = u16::from_be_bytes([packet[at], packet[at + 1]]);
            let ack = Packet::PubAck(PubAck::new(id));
            starling_proto::encode(&ack, V, &mut p.input).unwrap();
        }
    }
    p.out.clear();
    delivered
}

fn bench_bed(bencher: Bencher, mut bed: Bed) {
    let per_batch = bed.publish();
    assert!(per_batch > 0, "nothing was delivered");
    bencher
        .counter(ItemsCount::new(per_batch))
        .bench_local(|| bed.publish());
}

/// 1 publisher to 100 subscribers of its topic, QoS 0.
fn fan_out_qos0_in(bencher: Bencher, scope: QueueScope) {
    let topic = |_| "t/0".to_owned();
    let bed = Bed::new(scope, QoS::AtMostOnce, 1, 100, topic, topic);
    bench_bed(bencher, bed);
}

/// The same at QoS 1, subscribers acknowledging.
fn fan_out_qos1_in(bencher: Bencher, scope: QueueScope) {
    let topic = |_| "t/0".to_owned();
    let bed = Bed::new(scope, QoS::AtLeastOnce, 1, 100, topic, topic);
    bench_bed(bencher, bed);
}

/// 10 publishers, each on its own topic, to 1 subscriber of `t/+`, QoS 0.
fn fan_in_in(bencher: Bencher, scope: QueueScope) {
    let topic = |i| format!("t/{i}");
    let bed = Bed::new(scope, QoS::AtMostOnce, 10, 1, topic, |_| "t/+".into());
    bench_bed(bencher, bed);
}

/// 10 publishers to 10 subscribers, a topic per pair, QoS 0.
fn p2p_qos0_in(bencher: Bencher, scope: QueueScope) {
    let topic = |i| format!("p/{i}");
    let bed = Bed::new(scope, QoS::AtMostOnce, 10, 10, topic, topic);
    bench_bed(bencher, bed);
}

// With the default `queue_scope = "session"` (names kept stable: runs of older builds compare
// by them).

#[divan::bench]
fn fan_out_qos0(bencher: Bencher) {
    fan_out_qos0_in(bencher, QueueScope::Session);
}

#[divan::bench]
fn fan_out_qos1(bencher: Bencher) {
    fan_out_qos1_in(bencher, QueueScope::Session);
}

#[divan::bench]
fn fan_in(bencher: Bencher) {
    fan_in_in(bencher, QueueScope::Session);
}

#[divan::bench]
fn p2p_qos0(bencher: Bencher) {
    p2p_qos0_in(bencher, QueueScope::Session);
}

/// With `queue_scope = "subscription"`.
mod subscription {
    use super::*;

    #[divan::bench]
    fn fan_out_qos0(bencher: Bencher) {
        fan_out_qos0_in(bencher, QueueScope::Subscription);
    }

    #[divan::bench]
    fn fan_out_qos1(bencher: Bencher) {
        fan_out_qos1_in(bencher, QueueScope::Subscription);
    }

    #[divan::bench]
    fn fan_in(bencher: Bencher) {
        fan_in_in(bencher, QueueScope::Subscription);
    }

    #[divan::bench]
    fn p2p_qos0(bencher: Bencher) {
        p2p_qos0_in(bencher, QueueScope::Subscription);
    }
}
