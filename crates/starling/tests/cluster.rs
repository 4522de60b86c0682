//! A cluster of real `starling` processes on 127.0.0.1-3, black box: each node is started
//! with a `[cluster]` section naming the three, and watched through its admin API
//! (`GET /api/v1/cluster`). The nodes must elect one leader, announce their incarnations
//! through the log, elect another leader when the leader is killed with SIGKILL, take the
//! killed node back in a new incarnation, and come back whole after every node is killed.
//! Clients (rumqttc, 3.1.1 and 5) connect to different nodes with one client id: the newer
//! connection takes the client id over across nodes, and a node cut off from the majority
//! refuses CONNECT as Server unavailable. Messages published on one node reach subscribers
//! on the others. Every link between nodes goes through a fault proxy (`cluster/proxy.rs`)
//! that cuts nodes apart and heals them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

mod common;
#[macro_use]
#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/proxy.rs"]
mod proxy;
#[path = "cluster/regressions.rs"]
mod regressions;

use common::rumqtt::{v5, v311};
use harness::*;

/// Three nodes elect a leader and agree on the members; the leader is killed with SIGKILL and
/// the other two elect another; the killed node comes back in a new incarnation and follows;
/// then every node is killed and restarted, and the cluster forms again from its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_survive_a_killed_leader_and_a_full_restart() {
    let mut c = Cluster::start(3);
    let (leader, statuses) = c.settled(&[1, 2, 3], "first start").await;
    for s in &statuses {
        assert_eq!(s["enabled"], true);
        assert_eq!(s["incarnation"], 1, "{s}");
        assert_eq!(s["members"].as_array().unwrap().len(), 3, "{s}");
        assert!(
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["voter"] == true),
            "{s}"
        );
    }
    let leaders: Vec<_> = statuses.iter().filter(|s| s["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "one leader: {statuses:#?}");
    assert_eq!(leaders[0]["node_id"].as_u64(), Some(leader));
    let term = leaders[0]["term"].as_u64().unwrap();

    c.kill9(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let (second, statuses) = c.settled(&rest, "after the leader was killed").await;
    assert_ne!(second, leader);
    assert!(
        statuses.iter().all(|s| s["term"].as_u64().unwrap() > term),
        "{statuses:#?}"
    );

    c.restart(leader);
    let (_, statuses) = c
        .settled(&[1, 2, 3], "after the killed node came back")
        .await;
    let back = statuses
        .iter()
        .find(|s| s["node_id"].as_u64() == Some(leader))
        .unwrap();
    assert_eq!(
        back["incarnation"], 2,
        "a restart is a new incarnation: {back}"
    );

    for id in [1, 2, 3] {
        c.kill9(id);
    }
    for id in [1, 2, 3] {
        c.restart(id);
    }
    let (_, statuses) = c.settled(&[1, 2, 3], "after a full restart").await;
    for s in &statuses {
        let id = s["node_id"].as_u64().unwrap();
        let expected = if id == leader { 3 } else { 2 };
        assert_eq!(s["incarnation"].as_u64(), Some(expected), "{s}");
    }
}

/// A client id is owned by one node at a time: a CONNECT on another node takes it over (the
/// old connection gets DISCONNECT 0x8E, v5; 3.x: closed), the session does not follow it
/// (Session Present 0 on the new node, and 0 again when the client comes back), and a node
/// without a majority refuses CONNECT as Server unavailable (v5 0x88, 3.x return code 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_moves_between_nodes_and_a_minority_refuses_connect() {
    let mut c = Cluster::formed(3).await;

    // MQTT 5, across nodes 1 and 2.
    let mut first = v5::Client::plain(c.mqtt(1), "mover").await;
    let (mut second, ack) = v5::Client::connect(c.mqtt(2), "mover", persistent).await;
    assert!(
        !ack.session_present,
        "node 2 has no session of node 1's client: {ack:?}"
    );
    let ended = end_of(&mut first).await;
    assert!(ended.contains("SessionTakenOver"), "{ended}");
    // Node 2's session was persistent; the client comes back to node 1 asking for it.
    let (_third, ack) = v5::Client::connect(c.mqtt(1), "mover", |o| {
        o.set_clean_start(false);
    })
    .await;
    assert!(
        !ack.session_present,
        "the session stayed on node 2 and ended there: {ack:?}"
    );
    let ended = end_of(&mut second).await;
    assert!(ended.contains("SessionTakenOver"), "{ended}");

    // MQTT 3.1.1, across nodes 3 and 1.
    let (mut old, _) = v311::Client::connect(c.mqtt(3), "mover3", true, None).await;
    let (_new, _) = v311::Client::connect(c.mqtt(1), "mover3", true, None).await;
    assert!(
        old.wait_closed(Duration::from_secs(5)).await,
        "the 3.1.1 connection on node 3 stays open"
    );

    let statuses = c.settled(&[1, 2, 3], "after the takeovers").await.1;
    for s in &statuses {
        assert!(s["client_ids_owned"].as_u64().unwrap() >= 2, "{s}");
    }

    // Node 3 alone: no majority, so no claim commits and CONNECT is refused.
    c.kill9(1);
    c.kill9(2);
    let (client, mut events) = rumqttc::v5::AsyncClient::new(v5::options(c.mqtt(3), "lonely"), 10);
    let refused = first_error!(events);
    drop(client);
    assert!(refused.contains("ServerUnavailable"), "v5: {refused}");
    let (addr, port) = (c.mqtt(3).ip().to_string(), c.mqtt(3).port());
    let opts = rumqttc::MqttOptions::new("lonely3", addr, port);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let refused = first_error!(events);
    drop(client);
    assert!(refused.contains("ServiceUnavailable"), "3.1.1: {refused}");
}

/// A publish on one node reaches the subscribers on the others (QoS 0 and 1, wildcards, 5 and
/// 3.1.1), once per subscriber; an unsubscribe stops it; a node that restarts tells the others
/// its filters again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_to_their_subscribers() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let mut c = Cluster::formed(3).await;
    let mut on2 = v5::Client::plain(c.mqtt(2), "sub2").await;
    on2.subscribe(Filter::new("cross/+/t", QoS5::AtLeastOnce), None)
        .await;
    let (mut on3, _) = v311::Client::connect(c.mqtt(3), "sub3", true, None).await;
    on3.subscribe("cross/#", rumqttc::QoS::AtMostOnce).await;
    // Node 1 has no subscriber of its own; it learns two filters, one from each peer.
    c.routes_known(1, 2).await;

    let publisher = v5::Client::plain(c.mqtt(1), "pub1").await;
    publisher
        .client
        .publish("cross/a/t", QoS5::AtLeastOnce, false, "one")
        .await
        .unwrap();
    let got = on2.publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..], got.qos),
        (&b"cross/a/t"[..], &b"one"[..], QoS5::AtLeastOnce)
    );
    let got = on3.publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        ("cross/a/t", &b"one"[..])
    );
    on2.no_publish(Duration::from_millis(300)).await;

    // Node 2's subscriber goes: node 1 forgets its filter, node 3 still gets messages.
    on2.client.unsubscribe("cross/+/t").await.unwrap();
    c.routes_known(1, 1).await;
    publisher
        .client
        .publish("cross/b/t", QoS5::AtMostOnce, false, "two")
        .await
        .unwrap();
    assert_eq!(&on3.publish().await.payload[..], b"two");
    on2.no_publish(Duration::from_millis(300)).await;

    // Node 3 restarts: its filters were this life's; a new subscriber there is told again.
    drop(on3);
    c.kill9(3);
    c.restart(3);
    c.settled(&[1, 2, 3], "after node 3 restarted").await;
    let mut again = v5::Client::plain(c.mqtt(3), "sub3b").await;
    again
        .subscribe(Filter::new("cross/#", QoS5::AtMostOnce), None)
        .await;
    c.routes_known(1, 1).await;
    publisher
        .client
        .publish("cross/c/t", QoS5::AtLeastOnce, false, "three")
        .await
        .unwrap();
    let got = again.publish().await;
    assert_eq!(
        (&got.payload[..], got.qos),
        (&b"three"[..], QoS5::AtMostOnce)
    );
    let status = c.status(1).await.unwrap();
    let sent: u64 = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["messages_sent"].as_u64().unwrap())
        .sum();
    assert!(sent >= 3, "{status:#}");
    // The same numbers in the metrics; one node leads.
    let mut leaders = 0;
    for id in [1, 2, 3] {
        let url = format!("http://{}/metrics", c.specs[(id - 1) as usize].http);
        let text = c.http.get(url).send().await.unwrap().text().await.unwrap();
        leaders += u32::from(text.contains("\nstarling_cluster_leader 1\n"));
        assert!(text.contains("\nstarling_cluster_members 3\n"), "{text}");
        if id == 1 {
            let line = text
                .lines()
                .find(|l| l.starts_with("starling_cluster_peer_messages_sent_total{peer=\"3\"}"))
                .unwrap_or_else(|| panic!("no peer counter: {text}"));
            let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(n >= 2, "{line}");
        }
    }
    assert_eq!(leaders, 1);
}

/// A node that was down while its client moved to another node does not keep the client's
/// session when it comes back: the session its store gives back is ended, since another node
/// owns the client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_ends_the_session_of_a_client_that_moved() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let mut c = Cluster::formed(3).await;
    let (mut roamer, _) = v5::Client::connect(c.mqtt(1), "roamer", persistent).await;
    // SUBACK comes once the subscription is on disk (durability sync).
    roamer
        .subscribe(Filter::new("r/#", QoS5::AtLeastOnce), None)
        .await;
    let https: Vec<SocketAddr> = c.specs.iter().map(|s| s.http).collect();
    let session = |id: u64| format!("http://{}/api/v1/sessions/roamer", https[(id - 1) as usize]);
    let status = c.http.get(session(1)).send().await.unwrap().status();
    assert_eq!(status, 200);
    drop(roamer);
    c.kill9(1);
    // Nodes 2 and 3 have a leader between them before the client comes (a client that came
    // during the election would wait up to the propose timeout, or be refused and retry).
    c.settled(&[2, 3], "after node 1 was killed").await;

    let (_moved, ack) = v5::Client::connect(c.mqtt(2), "roamer", persistent).await;
    assert!(!ack.session_present);
    c.restart(1);
    c.settled(&[1, 2, 3], "after node 1 came back").await;
    let mut status = 0;
    for _ in 0..50 {
        status = c
            .http
            .get(session(1))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        404,
        "node 1 kept the session of a client now on node 2\n{}",
        c.logs()
    );
    let status = c.http.get(session(2)).send().await.unwrap().status();
    assert_eq!(status, 200);
}

/// A message for a node that is restarting waits for it (a batch that could not be sent at
/// all is kept for a while): published on node 1 while node 2 is down, it reaches the
/// persistent session of node 2's subscriber once node 2 is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_restarting_node_waits_for_it() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let mut c = Cluster::formed(3).await;
    let (mut keeper, _) = v5::Client::connect(c.mqtt(2), "keeper", persistent).await;
    keeper
        .subscribe(Filter::new("held/#", QoS5::AtLeastOnce), None)
        .await;
    drop(keeper);
    c.routes_known(1, 1).await;
    c.kill9(2);
    let publisher = v5::Client::plain(c.mqtt(1), "pub-held").await;
    publisher
        .client
        .publish("held/x", QoS5::AtLeastOnce, false, "while you were out")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.restart(2);
    c.settled(&[1, 2, 3], "after node 2 came back").await;
    let (mut keeper, ack) = v5::Client::connect(c.mqtt(2), "keeper", persistent).await;
    assert!(ack.session_present, "node 2 kept its session: {ack:?}");
    let got = keeper.publish().await;
    assert_eq!(
        (&got.topic[..], &got.payload[..]),
        (&b"held/x"[..], &b"while you were out"[..])
    );
    let status = c.status(1).await.unwrap();
    let dropped: u64 = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["messages_dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 0, "{status:#}");
}

/// A node whose `[cluster]` section is wrong does not start, and says why.
#[test]
fn a_broken_cluster_section_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("starling.toml");
    std::fs::write(
        &config,
        "[cluster]\nenabled = true\nnode_id = 4\nseeds = [\"1@127.0.0.1:7946\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.seeds") && err.contains("node 4"),
        "{err}"
    );
}

/// A node cut off from the other two (the fault proxy closes its links and refuses new
/// ones): once its lease runs out it sends its clients away (v5 DISCONNECT 0x9C Use another
/// server) and refuses new CONNECTs at once (0x88 / 3.1.1 return code 3, long before its
/// propose timeout), while the majority goes on serving, the client that moved there among
/// them. Healed, the node catches up from the log (the session of the client that moved
/// ends there), accepts clients again, and messages reach its subscribers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_sends_its_clients_away_and_catches_up_on_heal() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;
    use rumqttc::v5::{Event, Incoming};

    // A propose timeout far above the lease: a refusal that comes soon comes from the lease.
    let c = Cluster::start_with(
        3,
        "heartbeat_ms = 100\nelection_timeout_ms = 600\npropose_timeout_ms = 30000\nlease_ms = 3000\n",
    );
    c.settled(&[1, 2, 3], "first start").await;

    // A persistent session on node 3, subscribed; its event loop is polled here.
    let mut opts = v5::options(c.mqtt(3), "stranded");
    persistent(&mut opts);
    let (stranded, mut events) = rumqttc::v5::AsyncClient::new(opts, 10);
    stranded
        .subscribe("part/#", QoS5::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Incoming::SubAck(_)) = events.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("SUBACK on node 3");
    c.routes_known(1, 1).await;

    c.proxy.isolate(3, &[1, 2, 3]);
    let ended = first_error!(events);
    assert!(
        ended.contains("UseAnotherServer"),
        "node 3's client is sent away: {ended}\n{}",
        c.logs()
    );
    assert_eq!(
        c.proxy.streams_between(3, 1) + c.proxy.streams_between(3, 2),
        0
    );
    let s = c.status(3).await.unwrap();
    assert_eq!(s["majority"], false, "{s:#}");
    assert_eq!(metric(&c, 3, "starling_cluster_majority").await, 0);
    assert_eq!(
        metric(&c, 3, "starling_clients_sent_elsewhere_total").await,
        1
    );

    // New clients are refused at once, long before the 30 s propose timeout.
    let asked = std::time::Instant::now();
    let (client, mut events) = rumqttc::v5::AsyncClient::new(v5::options(c.mqtt(3), "late"), 10);
    let refused = first_error!(events);
    drop(client);
    assert!(refused.contains("ServerUnavailable"), "v5: {refused}");
    let (addr, port) = (c.mqtt(3).ip().to_string(), c.mqtt(3).port());
    let (client, mut events) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("late3", addr, port), 10);
    let refused = first_error!(events);
    drop(client);
    assert!(refused.contains("ServiceUnavailable"), "3.1.1: {refused}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "refused by the lease, not after the propose timeout: {:?}",
        asked.elapsed()
    );

    // The majority serves on: the client moves to node 1 (its session stays behind on node 3).
    c.settled(&[1, 2], "the majority after the cut").await;
    let (mut moved, ack) = v5::Client::connect(c.mqtt(1), "stranded", persistent).await;
    assert!(!ack.session_present, "{ack:?}");
    moved
        .subscribe(Filter::new("part/#", QoS5::AtLeastOnce), None)
        .await;
    let on2 = v5::Client::plain(c.mqtt(2), "pub2").await;
    on2.client
        .publish("part/during", QoS5::AtLeastOnce, false, "cut")
        .await
        .unwrap();
    assert_eq!(&moved.publish().await.payload[..], b"cut");

    // Healed: node 3 catches up, ends the session of the client that moved, serves again.
    c.proxy.heal_all();
    c.settled(&[1, 2, 3], "after the heal").await;
    status_until(&c, 3, "majority again", |s| s["majority"] == true).await;
    let session = format!("http://{}/api/v1/sessions/stranded", c.specs[2].http);
    let mut code = 0;
    for _ in 0..100 {
        code = c.http.get(&session).send().await.unwrap().status().as_u16();
        if code == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, 404, "node 3 kept the moved client's session");
    let mut after = v5::Client::plain(c.mqtt(3), "after").await;
    after
        .subscribe(Filter::new("part/+", QoS5::AtLeastOnce), None)
        .await;
    let mut got = None;
    for i in 0..20 {
        on2.client
            .publish("part/healed", QoS5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
        if let Ok(p) = tokio::time::timeout(Duration::from_millis(500), after.publish()).await {
            got = Some(p);
            break;
        }
    }
    let got = got.unwrap_or_else(|| panic!("node 3's subscriber got nothing\n{}", c.logs()));
    assert_eq!(&got.topic[..], b"part/healed");
}

/// Retained messages are replicated through the cluster's log: a retained publish on one node
/// is acknowledged once committed and is served by every node (v5 and 3.1.1 publishers and
/// subscribers), a clear on another node clears it everywhere, and a node that was down
/// while a retained message was set serves it once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_the_same_on_every_node() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};

    async fn acked(c: &mut v5::Client) {
        let ack = c
            .expect("PUBACK", |p| match p {
                Packet::PubAck(a) => Some(a),
                _ => None,
            })
            .await;
        assert_eq!(
            ack.reason,
            rumqttc::v5::mqttbytes::v5::PubAckReason::Success
        );
    }

    async fn retained_on(c: &Cluster, node: u64, id: &str, filter: &str) -> Vec<(String, Vec<u8>)> {
        let mut sub = v5::Client::plain(c.mqtt(node), id).await;
        sub.subscribe(Filter::new(filter, QoS5::AtLeastOnce), None)
            .await;
        let mut got = Vec::new();
        while let Ok(p) = tokio::time::timeout(Duration::from_millis(400), sub.publish()).await {
            assert!(p.retain, "{p:?}");
            got.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
            ));
        }
        sub.client.disconnect().await.unwrap();
        got.sort();
        got
    }

    let mut c = Cluster::formed(3).await;
    let mut on1 = v5::Client::plain(c.mqtt(1), "retainer1").await;
    on1.client
        .publish("state/a", QoS5::AtLeastOnce, true, "on")
        .await
        .unwrap();
    acked(&mut on1).await;
    for node in [1, 2, 3] {
        assert_eq!(
            retained_on(&c, node, &format!("r{node}"), "state/#").await,
            [("state/a".to_owned(), b"on".to_vec())],
            "node {node}"
        );
    }
    // 3.1.1 sees it too.
    let (mut v3, _) = v311::Client::connect(c.mqtt(3), "r3-311", true, None).await;
    v3.subscribe("state/+", rumqttc::QoS::AtLeastOnce).await;
    let p = v3.publish().await;
    assert!(
        p.retain && p.topic == "state/a" && &p.payload[..] == b"on",
        "{p:?}"
    );
    v3.client.disconnect().await.unwrap();

    // Cleared on node 2: gone everywhere.
    let mut on2 = v5::Client::plain(c.mqtt(2), "retainer2").await;
    on2.client
        .publish("state/a", QoS5::AtLeastOnce, true, "")
        .await
        .unwrap();
    acked(&mut on2).await;
    for node in [1, 3] {
        assert!(
            retained_on(&c, node, &format!("c{node}"), "state/#")
                .await
                .is_empty()
        );
    }

    // Set while node 3 is down: node 3 serves it once it is back. (No subscriber is left on
    // node 3 first: node 1 would hold a live copy for it, and deliver it late.)
    c.routes_known(1, 0).await;
    c.kill9(3);
    on1.client
        .publish("state/b", QoS5::AtLeastOnce, true, "while away")
        .await
        .unwrap();
    acked(&mut on1).await;
    c.restart(3);
    c.settled(&[1, 2, 3], "after node 3 came back").await;
    assert_eq!(
        retained_on(&c, 3, "back3", "#").await,
        [("state/b".to_owned(), b"while away".to_vec())]
    );
    for id in [1, 2, 3] {
        let s = status_until(&c, id, "one retained message", |s| {
            s["retained_messages"].as_u64() == Some(1)
        })
        .await;
        assert_eq!(s["retained_messages"], 1, "{s:#}");
    }
}

/// With `forward_ack = "wait"` (the default), the PUBACK of a QoS 1 publish whose message
/// goes to another node waits until that node has stored it: while the link to the
/// subscriber's node is cut, no PUBACK; healed, the batch is sent again, stored there, the
/// PUBACK comes, and the subscriber gets the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_puback_waits_until_the_subscribers_node_stored_the_message() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason};

    let c = Cluster::formed(3).await;
    let mut sub = v5::Client::plain(c.mqtt(2), "waiter").await;
    sub.subscribe(Filter::new("ack/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(1, 1).await;
    let mut publisher = v5::Client::plain(c.mqtt(1), "acker").await;
    c.proxy.cut(1, 2);
    publisher
        .client
        .publish("ack/x", QoS5::AtLeastOnce, false, "held")
        .await
        .unwrap();
    let puback = |p| match p {
        Packet::PubAck(a) => Some(a),
        _ => None,
    };
    let early = tokio::time::timeout(
        Duration::from_millis(1500),
        publisher.expect("PUBACK", puback),
    )
    .await;
    assert!(early.is_err(), "PUBACK before node 2 stored it: {early:?}");
    c.proxy.heal_all();
    let ack = publisher.expect("PUBACK", puback).await;
    assert_eq!(ack.reason, PubAckReason::Success);
    let got = sub.publish().await;
    assert_eq!(&got.payload[..], b"held");
    sub.no_publish(Duration::from_millis(300)).await;
}

/// A shared group with members on all three nodes gets each message once in all, not once
/// per node: the publishing node picks, in turn, itself or one of the nodes with members.
/// A plain subscriber on a node with a member still gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_nodes_gets_each_message_once() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let c = Cluster::formed(3).await;
    let mut members = Vec::new();
    for node in [1, 2, 3] {
        let mut m = v5::Client::plain(c.mqtt(node), &format!("worker{node}")).await;
        m.subscribe(
            Filter::new("$share/workers/jobs/#", QoS5::AtLeastOnce),
            None,
        )
        .await;
        members.push(m);
    }
    let mut watcher = v5::Client::plain(c.mqtt(2), "watcher").await;
    watcher
        .subscribe(Filter::new("jobs/#", QoS5::AtLeastOnce), None)
        .await;
    // Node 1 knows node 2's group and plain filter, and node 3's group.
    c.routes_known(1, 3).await;
    let publisher = v5::Client::plain(c.mqtt(1), "dispatcher").await;
    const N: usize = 30;
    for i in 0..N {
        publisher
            .client
            .publish("jobs/run", QoS5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut got: Vec<(usize, String)> = Vec::new();
    let mut quiet = 0;
    while quiet < 4 {
        let mut progress = false;
        for (k, m) in members.iter_mut().enumerate() {
            while let Ok(p) = tokio::time::timeout(Duration::from_millis(100), m.publish()).await {
                got.push((k, String::from_utf8_lossy(&p.payload).into_owned()));
                progress = true;
            }
        }
        quiet = if progress { 0 } else { quiet + 1 };
    }
    let mut payloads: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
    payloads.sort_by_key(|p| p.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want, "each message once in the whole group");
    let served: std::collections::BTreeSet<usize> = got.iter().map(|(k, _)| *k).collect();
    assert!(served.len() >= 2, "the members take turns: {got:?}");
    for i in 0..N {
        let p = watcher.publish().await;
        assert_eq!(p.payload, i.to_string().as_bytes());
    }
}

/// Five nodes: two killed (the leader among them), the other three elect a leader and serve
/// (a client id claimed, a message across nodes); back, all five agree. Then nodes 4 and 5,
/// still linked to each other, are cut off from the other three: a minority of two, they
/// refuse CONNECT (0x88) while the three serve on; healed, all five agree again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_lose_two_and_a_cut_off_pair_is_a_minority() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let all = [1, 2, 3, 4, 5];
    let mut c = Cluster::start_with(
        5,
        "heartbeat_ms = 100\nelection_timeout_ms = 600\npropose_timeout_ms = 2000\nlease_ms = 3000\n",
    );
    let (leader, statuses) = c.settled(&all, "first start").await;
    assert!(
        statuses
            .iter()
            .all(|s| s["members"].as_array().unwrap().len() == 5)
    );
    let other = if leader == 1 { 2 } else { 1 };
    c.kill9(leader);
    c.kill9(other);
    let live: Vec<u64> = all
        .into_iter()
        .filter(|&i| i != leader && i != other)
        .collect();
    let (second, _) = c.settled(&live, "after two nodes were killed").await;
    assert!(live.contains(&second));
    let mut sub = v5::Client::plain(c.mqtt(live[0]), "five-sub").await;
    sub.subscribe(Filter::new("five/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(live[2], 1).await;
    let publisher = v5::Client::plain(c.mqtt(live[2]), "five-pub").await;
    publisher
        .client
        .publish("five/a", QoS5::AtLeastOnce, false, "three of five")
        .await
        .unwrap();
    assert_eq!(&sub.publish().await.payload[..], b"three of five");
    c.restart(leader);
    c.restart(other);
    c.settled(&all, "after the two came back").await;

    for a in [4, 5] {
        for b in [1, 2, 3] {
            c.proxy.cut(a, b);
        }
    }
    c.settled(&[1, 2, 3], "the majority of three").await;
    for node in [4, 5] {
        status_until(&c, node, "cut off", |s| s["majority"] == false).await;
        let (client, mut events) = rumqttc::v5::AsyncClient::new(
            v5::options(c.mqtt(node), &format!("five-late{node}")),
            10,
        );
        let refused = first_error!(events);
        drop(client);
        assert!(
            refused.contains("ServerUnavailable"),
            "node {node}: {refused}"
        );
    }
    let (_on3, ack) = v5::Client::connect(c.mqtt(3), "five-majority", |_| {}).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    c.proxy.heal_all();
    c.settled(&all, "after the heal").await;
    for node in [4, 5] {
        status_until(&c, node, "with the majority", |s| s["majority"] == true).await;
    }
}

/// A self-signed CA (`name`), and a certificate it signs for each of `nodes`, written as
/// `ca.pem`, `node{N}.pem`, `node{N}.key` under `dir`.
fn cluster_pki(dir: &std::path::Path, name: &str, nodes: &[u64]) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for n in nodes {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![format!("node{n}")]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("node{n}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("node{n}.key")), key.serialize_pem()).unwrap();
    }
}

/// With `ca_file`, `cert_file` and `key_file`, the nodes talk mutual TLS: they form a
/// cluster and carry messages; a stream that does not speak TLS gets nothing; and a node whose
/// certificate another CA signed is no peer: it stays cut off (refusing CONNECT) while the
/// other two serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_tls_and_take_only_peers_their_ca_signed() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = tempfile::tempdir().unwrap();
    cluster_pki(pki.path(), "Starling test cluster CA", &[1, 2, 3]);
    let p = pki.path().display();
    let settings = format!(
        "{TIMING}ca_file = \"{p}/ca.pem\"\ncert_file = \"{p}/node{{id}}.pem\"\nkey_file = \"{p}/node{{id}}.key\"\n"
    );
    let mut c = Cluster::start_with(3, &settings);
    let (_, statuses) = c.settled(&[1, 2, 3], "first start over TLS").await;
    assert!(statuses.iter().all(|s| s["tls"] == true), "{statuses:#?}");
    let mut sub = v5::Client::plain(c.mqtt(2), "tls-sub").await;
    sub.subscribe(Filter::new("tls/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(1, 1).await;
    let publisher = v5::Client::plain(c.mqtt(1), "tls-pub").await;
    publisher
        .client
        .publish("tls/a", QoS5::AtLeastOnce, false, "sealed")
        .await
        .unwrap();
    assert_eq!(&sub.publish().await.payload[..], b"sealed");

    // Plain bytes on the inter-node port: no answer, the stream is closed.
    let mut raw = tokio::net::TcpStream::connect(c.specs[0].bind)
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 4, 1, 2, 0, 0]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
        .await
        .expect("closed within the handshake timeout");
    // Closed, or a TLS alert record (0x15) before the close: never a frame.
    assert!(
        matches!(read, Ok(0) | Err(_)) || buf[0] == 0x15,
        "a plain frame got something else back: {read:?} {buf:?}"
    );

    // Node 3 comes back with a certificate of another CA: no peer takes it, nor it them.
    c.kill9(3);
    let rogue = tempfile::tempdir().unwrap();
    cluster_pki(rogue.path(), "Someone else's CA", &[3]);
    for f in ["node3.pem", "node3.key"] {
        std::fs::copy(rogue.path().join(f), pki.path().join(f)).unwrap();
    }
    c.restart(3);
    status_until(&c, 3, "cut off: no peer takes its certificate", |s| {
        s["majority"] == false
    })
    .await;
    let (client, mut events) = rumqttc::v5::AsyncClient::new(v5::options(c.mqtt(3), "rogue"), 10);
    let refused = first_error!(events);
    drop(client);
    assert!(refused.contains("ServerUnavailable"), "{refused}");
    c.settled(&[1, 2], "the two with the cluster's CA").await;
    let (_ok, ack) = v5::Client::connect(c.mqtt(1), "still-served", |_| {}).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    let log = std::fs::read_to_string(c.specs[0].dir.join("node.log")).unwrap();
    assert!(
        log.contains("TLS handshake failed"),
        "node 1 says why it refused node 3"
    );
}

/// A session a node restored from its store after a restart still releases its client id
/// when it ends: the node takes its claim's epoch from the replicated state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_session_releases_its_client_id_when_it_ends() {
    let mut c = Cluster::formed(3).await;
    let (keeper, _) = v5::Client::connect(c.mqtt(1), "restored", persistent).await;
    keeper.client.disconnect().await.unwrap();
    status_until(&c, 2, "the client id owned", |s| {
        s["client_ids_owned"].as_u64() == Some(1)
    })
    .await;
    c.kill9(1);
    c.restart(1);
    c.settled(&[1, 2, 3], "after node 1 came back").await;
    let url = format!("http://{}/api/v1/sessions/restored", c.specs[0].http);
    let mut code = 0;
    for _ in 0..50 {
        code = c.http.delete(&url).send().await.unwrap().status().as_u16();
        if code != 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(code < 300, "the restored session was discarded: {code}");
    status_until(&c, 2, "the client id released", |s| {
        s["client_ids_owned"].as_u64() == Some(0)
    })
    .await;
}
