//! A client moving between nodes with its persistent session: the node that takes the client
//! id over fetches the session from the node that had it (subscriptions, queued and inflight
//! messages), answers Session Present 1, and sends what was waiting, once each; messages
//! published during and after the move reach the client on its new node.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Filter, PubAckReason};

use crate::common::rumqtt::v5;
use crate::harness::*;

/// Publishes `n` QoS 1 messages `walk/<i>` (payload `i`) and waits for each PUBACK.
async fn publish_acked(p: &mut v5::Client, from: u32, to: u32) {
    for i in from..to {
        p.client
            .publish(format!("walk/{i}"), QoS5::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
        let ack = puback(p).await;
        assert_eq!(ack.reason, PubAckReason::Success, "message {i}");
    }
}

/// The session of `id` as node `node`'s admin API shows it (its HTTP status).
async fn session_status(c: &Cluster, node: u64, id: &str) -> u16 {
    let url = format!(
        "http://{}/api/v1/sessions/{id}",
        c.specs[(node - 1) as usize].http
    );
    c.http.get(url).send().await.unwrap().status().as_u16()
}

/// Waits (at most 20 s) until node `node` no longer has a session of `id` (a session
/// handed over stays on its old node about 11 s for what other nodes forward to it late).
async fn gone_from(c: &Cluster, node: u64, id: &str) {
    let mut status = 0;
    for _ in 0..200 {
        status = session_status(c, node, id).await;
        if status == 404 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "node {node} still has the session of {id} ({status})\n{}",
        c.logs()
    );
}

/// A persistent session on node 1 with three messages sent and not acknowledged (inflight)
/// and five queued while its client was away; the client comes back on node 2 with Clean
/// Start 0 while publishers on nodes 3 and 1 go on: Session Present 1, the three again and
/// the five, and every message published during the move, each once; then messages
/// published after it; node 1 no longer has the session, node 2 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_with_its_messages() {
    let c = Cluster::formed(3).await;
    let (mut walker, _) = v5::Client::connect(c.mqtt(1), "walker", |o| {
        persistent(o);
        o.set_manual_acks(true);
    })
    .await;
    walker
        .subscribe(Filter::new("walk/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(3, 1).await;
    let mut publisher = v5::Client::plain(c.mqtt(3), "walk-pub").await;

    // Three reach the client and are not acknowledged; then it goes away.
    publish_acked(&mut publisher, 0, 3).await;
    for i in 0..3 {
        let got = walker.publish().await;
        assert_eq!(&got.payload[..], i.to_string().as_bytes());
    }
    walker.kill();
    // Five more are queued on node 1 (each PUBACK waits for node 1 to store it).
    publish_acked(&mut publisher, 3, 8).await;
    assert_eq!(session_status(&c, 1, "walker").await, 200);

    // While the client moves, publishers on node 3 and on node 1 (the old owner) go on:
    // their messages reach the session on one way or the other (or both), and each must
    // come once.
    let streams: Vec<_> = [(3, 100), (1, 200)]
        .into_iter()
        .map(|(node, base)| {
            let addr = c.mqtt(node);
            tokio::spawn(async move {
                let mut p = v5::Client::plain(addr, &format!("walk-pub-{node}")).await;
                for i in base..base + 40 {
                    publish_acked(&mut p, i, i + 1).await;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        })
        .collect();
    let (mut walker, ack) = v5::Client::connect(c.mqtt(2), "walker", persistent).await;
    assert!(
        ack.session_present,
        "node 2 took the session from node 1: {ack:?}\n{}",
        c.logs()
    );
    for s in streams {
        s.await.unwrap();
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..88 {
        let got = walker.publish().await;
        *seen
            .entry(String::from_utf8_lossy(&got.payload).into_owned())
            .or_default() += 1;
    }
    let want: BTreeMap<String, u32> = (0..8)
        .chain(100..140)
        .chain(200..240)
        .map(|i| (i.to_string(), 1))
        .collect();
    assert_eq!(seen, want, "every message once");
    walker.no_publish(Duration::from_millis(500)).await;

    // The subscription moved: node 3 now routes to node 2.
    publish_acked(&mut publisher, 8, 10).await;
    for i in 8..10 {
        let got = walker.publish().await;
        assert_eq!(&got.payload[..], i.to_string().as_bytes());
    }
    // Node 1 ended its copy once the last step took what it queued meanwhile.
    gone_from(&c, 1, "walker").await;
    assert_eq!(session_status(&c, 2, "walker").await, 200);
    walker.no_publish(Duration::from_millis(1500)).await;
    assert_eq!(metric(&c, 2, "starling_sessions_adopted_total").await, 1);
    assert_eq!(
        metric(&c, 1, "starling_sessions_handed_over_total").await,
        1
    );
}

/// A client that comes back on another node with Clean Start 1 gets a new session there
/// (Session Present 0), and the old node ends its session and sends its will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_elsewhere_ends_the_old_session_with_its_will() {
    use rumqttc::v5::mqttbytes::v5::LastWill;

    let c = Cluster::formed(3).await;
    let mut watcher = v5::Client::plain(c.mqtt(3), "will-watch").await;
    watcher
        .subscribe(Filter::new("wills/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(1, 1).await;
    let (_old, _) = v5::Client::connect(c.mqtt(1), "leaver", |o| {
        persistent(o);
        o.set_last_will(LastWill::new(
            "wills/leaver",
            "gone",
            QoS5::AtLeastOnce,
            false,
            None,
        ));
    })
    .await;
    let (_new, ack) = v5::Client::connect(c.mqtt(2), "leaver", |o| {
        o.set_clean_start(true);
    })
    .await;
    assert!(!ack.session_present);
    let got = watcher.publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"wills/leaver"[..], &b"gone"[..])
    );
    gone_from(&c, 1, "leaver").await;
    assert_eq!(
        metric(&c, 1, "starling_sessions_taken_over_elsewhere_total").await,
        1
    );
    assert_eq!(
        metric(&c, 1, "starling_sessions_handed_over_total").await,
        0
    );
}

/// A queue larger than one answer between nodes (a message is at most 16 MiB): 20 messages of
/// 900 kB (18 MB) queued on node 1, the client comes back on node 2. The first answer brings
/// what fits, the rest follows in further answers: every message arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_larger_than_one_answer_moves_in_parts() {
    const N: u8 = 20;
    const SIZE: usize = 900_000;
    let c = Cluster::formed(3).await;
    let big = |o: &mut rumqttc::v5::MqttOptions| {
        persistent(o);
        o.set_max_packet_size(Some(2 * 1024 * 1024));
    };
    let (mut bulky, _) = v5::Client::connect(c.mqtt(1), "bulky", big).await;
    bulky
        .subscribe(Filter::new("bulk/#", QoS5::AtLeastOnce), None)
        .await;
    bulky.client.disconnect().await.unwrap();
    let (mut publisher, _) = v5::Client::connect(c.mqtt(1), "bulk-pub", |o| {
        o.set_max_packet_size(Some(2 * 1024 * 1024));
    })
    .await;
    for i in 0..N {
        publisher
            .client
            .publish("bulk/m", QoS5::AtLeastOnce, false, vec![i; SIZE])
            .await
            .unwrap();
        puback(&mut publisher).await;
    }

    let (mut bulky, ack) = v5::Client::connect(c.mqtt(2), "bulky", big).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < usize::from(N) {
        let p = tokio::time::timeout(Duration::from_secs(20), bulky.publish())
            .await
            .unwrap_or_else(|_| panic!("{} of {N} messages came\n{}", got.len(), c.logs()));
        assert_eq!(p.payload.len(), SIZE);
        got.push(p.payload[0]);
    }
    assert_eq!(
        got,
        (0..N).collect::<Vec<u8>>(),
        "every message once, in order"
    );
    bulky.no_publish(Duration::from_millis(500)).await;
    gone_from(&c, 1, "bulky").await;
    assert_eq!(
        metric(&c, 1, "starling_sessions_handed_over_total").await,
        1
    );
}

/// A batch that reaches the old owner after the client moved on (node 3's link to node 1 is
/// cut while node 3 sends it, and healed once the move is done): the old owner keeps the
/// session a while, out of its routes, and the message it takes late reaches the client on
/// its new node, once. (Before, the old owner ended the session with the finishing step and
/// the message, acknowledged to its publisher, was lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaching_the_old_owner_late_follows_the_client() {
    let c = Cluster::formed(3).await;
    let (mut mover, _) = v5::Client::connect(c.mqtt(1), "late-mover", persistent).await;
    mover
        .subscribe(Filter::new("late/#", QoS5::AtLeastOnce), None)
        .await;
    mover.client.disconnect().await.unwrap();
    c.routes_known(3, 1).await;
    let mut publisher = v5::Client::plain(c.mqtt(3), "late-pub").await;

    // Node 3 sends the message to node 1 (the session's node), which it cannot reach.
    c.proxy.cut(3, 1);
    publisher
        .client
        .publish("late/m", QoS5::AtLeastOnce, false, "late")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client moves to node 2 meanwhile; the move completes (node 1 is reachable from
    // node 2, node 3 learns the new routes from node 2).
    let (mut mover, ack) = v5::Client::connect(c.mqtt(2), "late-mover", persistent).await;
    assert!(ack.session_present, "{ack:?}\n{}", c.logs());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Node 3's batch, sent again, reaches node 1 now: after the move.
    c.proxy.heal_all();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ack = puback(&mut publisher).await;
    assert_eq!(ack.reason, PubAckReason::Success);
    // The old owner's relays took it; the new owner takes it with its last request, 11 s
    // after the move.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = mover.publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"late/m"[..], &b"late"[..])
    );
    mover.no_publish(Duration::from_millis(1500)).await;
    gone_from(&c, 1, "late-mover").await;
}
