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
#[path = "cluster/faults.rs"]
mod faults;
#[path = "cluster/members.rs"]
mod members;
#[path = "cluster/moving.rs"]
mod moving;
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
/// old connection gets DISCONNECT 0x8E, v5; 3.x: closed), a persistent session follows its
/// client back to the first node (Session Present 1; one that started clean there is not
/// resumed: Session Present 0), and a node
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
        ack.session_present,
        "node 1 took node 2's session over: {ack:?}"
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
    assert_eq!(peers_total(&status, "messages_dropped"), 0, "{status:#}");
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

/// Retained messages are replicated through the cluster's log: a retained publish on one node
/// is acknowledged once committed and is served by every node (v5 and 3.1.1 publishers and
/// subscribers), a clear on another node clears it everywhere, and a node that was down
/// while a retained message was set serves it once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_the_same_on_every_node() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    async fn acked(c: &mut v5::Client) {
        let ack = puback(c).await;
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
    let got = take_until_quiet(&mut members).await;
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
