//! Mixed load, for correctness (not speed): a steady QoS 1 stream runs for 20 s while clients
//! churn around it, about 40 connection episodes a second from a pool of 400 client ids
//! (3.1.1 and 5.0, so takeovers happen; 40 % persistent sessions; wildcard and `$SYS/#`
//! subscriptions; bursts of QoS 0/1/2 messages of up to 2 KB, 5 % retained, on 200 topics;
//! clients that stop reading for seconds while topics are flooded, that close abruptly, and
//! that send garbage after CONNECT). Seeded, so a failure can be replayed. The broker must
//! stay up, deliver every QoS 1 message of the steady stream that it acknowledged, not panic,
//! and keep its memory bounded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::{
    RawClient, Recv, XorShift, assert_serving, broker_panics, connect_packet, publish_packet,
    start_server, subscribe_packet, vm_rss_bytes,
};
use starling_proto::{Packet, ProtocolVersion, PubAck, QoS};
use tokio::task::JoinSet;
use tokio::time::Instant;

const RUN: Duration = Duration::from_secs(20);
const STEADY_PAIRS: u32 = 5;
/// Messages per second per steady publisher.
const STEADY_RATE: u64 = 100;
const CLIENT_IDS: usize = 400;
/// Most churn episodes at once (each ends within about 6 s).
const MAX_EPISODES: usize = 200;

fn encode(p: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    starling_proto::encode(p, version, &mut b).unwrap();
    b
}

/// One steady subscriber: receives `steady/<i>` at QoS 1, acknowledges, records the numbers.
async fn steady_subscriber(addr: SocketAddr, i: u32, stop: Arc<AtomicBool>) -> BTreeSet<u32> {
    let (mut c, _) =
        RawClient::connect(addr, ProtocolVersion::V5, &format!("steady-sub-{i}")).await;
    c.subscribe(&format!("steady/{i}"), QoS::AtLeastOnce).await;
    let mut got = BTreeSet::new();
    let mut quiet_since = Instant::now();
    loop {
        match c.recv(Duration::from_millis(200)).await {
            Recv::Packet(Packet::Publish(p)) => {
                c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                got.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                quiet_since = Instant::now();
            }
            Recv::Packet(other) => panic!("steady subscriber {i}: unexpected {other:?}"),
            Recv::Closed => panic!("steady subscriber {i} was disconnected"),
            Recv::Timeout => {
                if stop.load(Ordering::Relaxed) && quiet_since.elapsed() > Duration::from_secs(2) {
                    return got;
                }
            }
        }
    }
}

/// One steady publisher: QoS 1 at `STEADY_RATE`, up to 16 unacknowledged; returns the numbers
/// the broker acknowledged.
async fn steady_publisher(addr: SocketAddr, i: u32, stop: Arc<AtomicBool>) -> BTreeSet<u32> {
    let (mut c, _) =
        RawClient::connect(addr, ProtocolVersion::V5, &format!("steady-pub-{i}")).await;
    let mut acked = BTreeSet::new();
    let mut in_flight = std::collections::HashMap::new();
    let mut n = 0u32;
    let interval = Duration::from_micros(1_000_000 / STEADY_RATE);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) || !in_flight.is_empty() {
        if !stop.load(Ordering::Relaxed) && in_flight.len() < 16 && Instant::now() >= next {
            let pid = (n % 60_000 + 1) as u16;
            c.send(&publish_packet(
                &format!("steady/{i}"),
                QoS::AtLeastOnce,
                pid,
                &n.to_be_bytes(),
            ))
            .await;
            in_flight.insert(pid, n);
            n += 1;
            next += interval;
            continue;
        }
        match c.recv(Duration::from_millis(5)).await {
            Recv::Packet(Packet::PubAck(a)) => {
                let sent = in_flight
                    .remove(&a.packet_id)
                    .expect("a PUBACK for a sent id");
                assert!(!a.reason.is_error(), "steady message {sent} refused: {a:?}");
                acked.insert(sent);
            }
            Recv::Packet(other) => panic!("steady publisher {i}: unexpected {other:?}"),
            Recv::Closed => panic!("steady publisher {i} was disconnected"),
            Recv::Timeout => {}
        }
    }
    acked
}

/// Reads what the broker sends for up to `d`, answering what a client must; false once closed.
async fn read_for(c: &mut RawClient, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        let answer = match c.recv(Duration::from_millis(50)).await {
            Recv::Packet(Packet::Publish(p)) => match p.qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.packet_id))),
                QoS::ExactlyOnce => Some(Packet::PubRec(PubAck::new(p.packet_id))),
            },
            Recv::Packet(Packet::PubRec(a)) => Some(Packet::PubRel(PubAck::new(a.packet_id))),
            Recv::Packet(Packet::PubRel(a)) => Some(Packet::PubComp(PubAck::new(a.packet_id))),
            Recv::Packet(_) | Recv::Timeout => None,
            Recv::Closed => return false,
        };
        if let Some(p) = answer
            && c.send_raw(&encode(&p, c.version)).await.is_err()
        {
            return false;
        }
    }
    true
}

/// One churn episode, chosen by `rng`; ends within about 6 s whatever the broker does.
async fn episode(addr: SocketAddr, mut rng: XorShift) {
    let id = format!("churn-{}", rng.below(CLIENT_IDS));
    let version = if rng.chance(50) {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let mut connect = connect_packet(version, &id);
    if rng.chance(40) {
        connect.clean_start = false;
        if version.is_v5() {
            connect.properties.session_expiry_interval = Some(60);
        }
    }
    let mut c = RawClient::open(addr).await;
    c.version = version;
    if c.send_raw(&encode(&Packet::Connect(Box::new(connect)), version))
        .await
        .is_err()
    {
        return;
    }
    if rng.chance(5) {
        // Garbage after CONNECT: the broker closes this one, nobody else notices.
        let junk: Vec<u8> = (0..64).map(|_| (rng.next() & 0xFF) as u8).collect();
        let _ = c.send_raw(&junk).await;
        read_for(&mut c, Duration::from_millis(500)).await;
        return;
    }
    let filter = ["churn/#", "churn/+/x", "$SYS/#"][rng.below(3)];
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)];
    if c.send_raw(&encode(&subscribe_packet(1, filter, qos), version))
        .await
        .is_err()
    {
        return;
    }
    match rng.below(10) {
        // A burst of up to 200 messages of up to 2 KB on 200 topics, 5 % retained.
        0..=3 => {
            let mut bytes = BytesMut::new();
            for k in 0..1 + rng.below(200) {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3)];
                let pid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    (k + 1) as u16
                };
                let len = rng.below(2048);
                let mut p = publish_packet(
                    &format!("churn/{}/x", rng.below(200)),
                    qos,
                    pid,
                    &vec![0x42; len],
                );
                if let Packet::Publish(p) = &mut p {
                    p.retain = rng.chance(5);
                }
                starling_proto::encode(&p, version, &mut bytes).unwrap();
            }
            if c.send_raw(&bytes).await.is_ok() && read_for(&mut c, Duration::from_secs(1)).await {
                let bye = Packet::Disconnect(starling_proto::Disconnect::new(
                    starling_proto::ReasonCode::Success,
                ));
                let _ = c.send_raw(&encode(&bye, version)).await;
            }
        }
        // Stops reading for 5 s while others flood, then goes away abruptly.
        4 | 5 => tokio::time::sleep(Duration::from_secs(5)).await,
        // Closes abruptly after a moment.
        6 => {
            read_for(&mut c, Duration::from_millis(rng.below(500) as u64)).await;
        }
        // A well-behaved client: reads a while, then DISCONNECT.
        _ => {
            if read_for(&mut c, Duration::from_millis(200 + rng.below(2000) as u64)).await {
                let bye = Packet::Disconnect(starling_proto::Disconnect::new(
                    starling_proto::ReasonCode::Success,
                ));
                let _ = c.send_raw(&encode(&bye, version)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steady_stream_survives_churn() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let panics_before = broker_panics();
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = JoinSet::new();
    for i in 0..STEADY_PAIRS {
        let stop = stop.clone();
        subs.spawn(async move { (i, steady_subscriber(addr, i, stop).await) });
    }
    // Subscribed before the stream starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pubs = JoinSet::new();
    for i in 0..STEADY_PAIRS {
        let stop = stop.clone();
        pubs.spawn(async move { (i, steady_publisher(addr, i, stop).await) });
    }

    // The churn: an episode every 25 ms, at most MAX_EPISODES at once.
    let mut rng = XorShift::new(0x5EED_CAFE_F00D_0001);
    let mut episodes = JoinSet::new();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < RUN {
        while episodes.len() >= MAX_EPISODES {
            episodes.join_next().await;
        }
        // Each episode gets its own generator, seeded from the run's.
        let seed = rng.next();
        episodes.spawn(episode(addr, XorShift::new(seed)));
        count += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
        while let Some(done) = episodes.try_join_next() {
            done.unwrap();
        }
    }
    let churned = started.elapsed();
    while let Some(done) = episodes.join_next().await {
        done.unwrap();
    }
    stop.store(true, Ordering::Relaxed);

    let mut acked = vec![BTreeSet::new(); STEADY_PAIRS as usize];
    while let Some(done) = pubs.join_next().await {
        let (i, a) = done.unwrap();
        acked[i as usize] = a;
    }
    let mut total = 0;
    while let Some(done) = subs.join_next().await {
        let (i, got) = done.unwrap();
        let a = &acked[i as usize];
        total += a.len();
        assert!(
            a.is_subset(&got),
            "steady pair {i}: {} acknowledged messages never delivered",
            a.difference(&got).count()
        );
    }
    let expected = (RUN.as_secs() * STEADY_RATE * u64::from(STEADY_PAIRS)) as usize;
    assert!(
        total > expected / 2,
        "the steady stream ran: {total} of about {expected} messages"
    );
    assert!(count > 200, "{count} churn episodes");
    assert_eq!(broker_panics(), panics_before, "no panic in the broker");
    assert_serving(addr).await;
    // Bounded memory: the whole test process (broker, store cache and every client).
    let rss = vm_rss_bytes().unwrap_or(0);
    eprintln!(
        "churn: {count} episodes in {} ms; steady stream: {total} QoS 1 messages acknowledged \
         and delivered; process RSS {} MiB",
        churned.as_millis(),
        rss >> 20
    );
    assert!(rss < 512 << 20, "RSS {} MiB after the churn", rss >> 20);
    server.shutdown().await;
}
