//! Scenarios that broke other clustered brokers, as their trackers tell (research notes,
//! `clustering.md`), each run against real `starling` nodes. Others are covered by the tests
//! beside this file: a takeover whose old node cannot be reached (EMQX #13124) by
//! `a_cut_off_minority_sends_its_clients_away_and_catches_up_on_heal`, a full restart by
//! `three_nodes_elect_survive_a_killed_leader_and_a_full_restart`.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Filter, PubAckReason};

use crate::common::rumqtt::v5;
use crate::harness::*;

/// Publishes a retained QoS 1 message on `client` and waits for its PUBACK (success).
async fn retain(client: &mut v5::Client, topic: &str, payload: &'static str) {
    client
        .client
        .publish(topic, QoS5::AtLeastOnce, true, payload)
        .await
        .unwrap();
    let ack = puback(client).await;
    assert_eq!(ack.reason, PubAckReason::Success);
}

/// The retained message a new subscriber of `topic` on `node` gets.
async fn retained_of(c: &Cluster, node: u64, id: &str, topic: &str) -> Vec<u8> {
    let mut sub = v5::Client::plain(c.mqtt(node), id).await;
    sub.subscribe(Filter::new(topic, QoS5::AtLeastOnce), None)
        .await;
    let p = sub.publish().await;
    assert!(p.retain, "{p:?}");
    sub.client.disconnect().await.unwrap();
    p.payload.to_vec()
}

/// VerneMQ #1674: retained messages were lost when every node restarted. Here they are in the
/// replicated log and snapshot: after every node is killed and restarted, each serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vernemq_1674_retained_messages_survive_a_full_restart() {
    let mut c = Cluster::formed(3).await;
    let mut publisher = v5::Client::plain(c.mqtt(2), "keeper").await;
    retain(&mut publisher, "fleet/config", "v7").await;
    drop(publisher);
    for id in [1, 2, 3] {
        c.kill9(id);
    }
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.settled(&[1, 2, 3], "after the full restart").await;
    for node in [1, 2, 3] {
        let got = retained_of(&c, node, &format!("after{node}"), "fleet/config").await;
        assert_eq!(got, b"v7", "node {node}");
    }
}

/// rmqtt #330: restarting a majority of the nodes sent them into a panic loop. Here the two
/// restarted nodes rejoin the one that stayed, a leader is elected, and every node takes
/// clients; no process has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmqtt_330_a_restarted_majority_rejoins() {
    let mut c = Cluster::formed(3).await;
    let (leader, _) = c.settled(&[1, 2, 3], "first start").await;
    let stays = if leader == 3 { 1 } else { 3 };
    let restarted: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != stays).collect();
    for &id in &restarted {
        c.kill9(id);
    }
    for &id in &restarted {
        c.restart(id);
    }
    c.settled(&[1, 2, 3], "after the majority restarted").await;
    for id in [1, 2, 3] {
        let (_client, ack) =
            v5::Client::connect(c.mqtt(id), &format!("rejoined{id}"), |_| {}).await;
        assert_eq!(
            ack.code,
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
        );
    }
    assert!(c.all_running(), "a node exited\n{}", c.logs());
}

/// rabbitmq-mqtt #200: a node whose peers were missing blocked at start. Here a node started
/// alone answers at once: its admin API describes a cluster without a leader, and CONNECT is
/// refused as Server unavailable (v5 0x88) within the propose timeout instead of hanging.
/// Once the other nodes start, the cluster forms and the node takes clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_mqtt_200_a_node_starts_without_its_peers() {
    let mut c = Cluster::start_some(3, TIMING, &[1]);
    let s = status_until(&c, 1, "the admin API answers", |_| true).await;
    assert!(s["leader"].is_null(), "{s:#}");
    let (client, mut events) = rumqttc::v5::AsyncClient::new(v5::options(c.mqtt(1), "early"), 10);
    let refused = first_error!(events);
    drop(client);
    assert!(refused.contains("ServerUnavailable"), "{refused}");
    c.restart(2);
    c.restart(3);
    c.settled(&[1, 2, 3], "once the peers started").await;
    let (_client, ack) = v5::Client::connect(c.mqtt(1), "early", |_| {}).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
}

/// VerneMQ #1651: after its node was lost, a client that subscribed again on another node
/// got its SUBACK and then no messages. Here the new subscription is told to the other nodes
/// and messages published anywhere reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vernemq_1651_a_client_resubscribing_after_its_node_died_gets_messages() {
    let mut c = Cluster::formed(3).await;
    let mut sub = v5::Client::plain(c.mqtt(3), "resub").await;
    sub.subscribe(Filter::new("news/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(1, 1).await;
    c.kill9(3);
    c.settled(&[1, 2], "after node 3 died").await;
    drop(sub);
    let (mut sub, ack) = v5::Client::connect(c.mqtt(2), "resub", persistent).await;
    assert!(!ack.session_present);
    sub.subscribe(Filter::new("news/#", QoS5::AtLeastOnce), None)
        .await;
    // Node 1 knows node 2's filter (and still node 3's: nothing purges a dead node's routes).
    c.routes_known(1, 2).await;
    let publisher = v5::Client::plain(c.mqtt(1), "newsroom").await;
    publisher
        .client
        .publish("news/today", QoS5::AtLeastOnce, false, "hello again")
        .await
        .unwrap();
    let got = sub.publish().await;
    assert_eq!(&got.payload[..], b"hello again");
}

/// EMQX #17036: routes of clients that went away during a partition dangled after the heal.
/// Here a subscriber leaves its cut-off node during the cut; once healed, the other nodes
/// forget its filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emqx_17036_no_route_dangles_after_a_heal() {
    let c = Cluster::formed(3).await;
    let mut sub = v5::Client::plain(c.mqtt(3), "leaver").await;
    sub.subscribe(Filter::new("dangle/#", QoS5::AtMostOnce), None)
        .await;
    c.routes_known(1, 1).await;
    c.proxy.isolate(3, &[1, 2, 3]);
    // Leaves while node 3 cannot tell anyone (within the lease).
    sub.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.routes_known(1, 1).await;
    c.proxy.heal_all();
    c.settled(&[1, 2, 3], "after the heal").await;
    c.routes_known(1, 0).await;
    c.routes_known(2, 0).await;
}

/// VerneMQ #1700: QoS 1 messages were lost when a node failed. Here a publisher's PUBACK
/// comes once the subscriber's node has stored the message (`forward_ack = "wait"`, durability
/// `sync`): the subscriber's node killed with SIGKILL right after the last PUBACK still has
/// every message for the persistent session when it is back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vernemq_1700_no_acknowledged_qos1_message_is_lost_when_a_node_dies() {
    let mut c = Cluster::formed(3).await;
    let (mut keeper, _) = v5::Client::connect(c.mqtt(2), "keeper1700", persistent).await;
    keeper
        .subscribe(Filter::new("loss/#", QoS5::AtLeastOnce), None)
        .await;
    keeper.client.disconnect().await.unwrap();
    c.routes_known(1, 1).await;
    let mut publisher = v5::Client::plain(c.mqtt(1), "pub1700").await;
    for i in 0..20 {
        publisher
            .client
            .publish("loss/m", QoS5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
        let ack = puback(&mut publisher).await;
        assert_eq!(ack.reason, PubAckReason::Success);
    }
    c.kill9(2);
    c.restart(2);
    c.settled(&[1, 2, 3], "after node 2 came back").await;
    let (mut keeper, ack) = v5::Client::connect(c.mqtt(2), "keeper1700", persistent).await;
    assert!(ack.session_present);
    for i in 0..20 {
        let p = keeper.publish().await;
        assert_eq!(p.payload, format!("{i}").as_bytes(), "message {i}");
    }
}
