//! Faults between nodes, through the fault proxy: a minority cut off and healed, a PUBACK
//! held while the subscriber's node cannot be reached, five nodes losing two and a pair cut
//! off, and TLS between nodes shutting out a node another CA signed.

use std::time::Duration;

use crate::common::rumqtt::v5;
use crate::harness::*;

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

    // Plain bytes on the inter-node port (no TLS): no answer, the stream is closed.
    let mut raw = tokio::net::TcpStream::connect(c.specs[0].bind)
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 4, 1, 2, 0, 0]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
        .await
        .expect("closed within the handshake timeout");
    // Closed, or a TLS alert record (0x15) before the close: never HTTP/2.
    assert!(
        matches!(read, Ok(0) | Err(_)) || buf[0] == 0x15,
        "plain bytes got something else back: {read:?} {buf:?}"
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

/// A node gone for good does not hold the acknowledgements of publishers whose messages its
/// subscribers matched: once it has answered nothing for 10 s it is down, batches for it are
/// dropped (counted) without waiting, and the PUBACKs come at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_subscribers_do_not_hold_pubacks() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let mut c = Cluster::formed(3).await;
    let (mut sub, _) = v5::Client::connect(c.mqtt(2), "gone-sub", persistent).await;
    sub.subscribe(Filter::new("gone/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(1, 1).await;
    c.kill9(2);
    let mut publisher = v5::Client::plain(c.mqtt(1), "gone-pub").await;
    // Down once silent for 10 s.
    let silent = |s: &serde_json::Value| {
        s["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["id"] == 2 && p["last_reply_ms"].as_u64().is_some_and(|ms| ms > 10_500))
        })
    };
    let within = Duration::from_secs(30);
    status_within(&c, 1, "node 1 still hears node 2", within, silent).await;
    let started = std::time::Instant::now();
    for i in 0..50 {
        publisher
            .client
            .publish("gone/m", QoS5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for _ in 0..50 {
        puback(&mut publisher).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "PUBACKs waited on a dead node: {:?}",
        started.elapsed()
    );
    let s = c.status(1).await.unwrap();
    assert_eq!(peers_total(&s, "messages_dropped"), 50, "{s:#}");
}

/// A shared group with a member on each of three nodes loses one node for good: once node 1
/// suspects it (no answer for 10 s), node 1 hands each message to a member on node 1 or
/// node 2 and none to the dead node (which could not deliver it): 30 messages, each received
/// once. (Picked in turns among all three, a third would be lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_skips_a_dead_nodes_members() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let mut c = Cluster::formed(3).await;
    let mut members = Vec::new();
    for node in [1, 2, 3] {
        let mut m = v5::Client::plain(c.mqtt(node), &format!("sg{node}")).await;
        m.subscribe(Filter::new("$share/w/dead/#", QoS5::AtLeastOnce), None)
            .await;
        members.push(m);
    }
    c.routes_known(1, 2).await;
    drop(members.pop());
    c.kill9(3);
    let suspected = |s: &serde_json::Value| {
        s["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["id"] == 3 && p["suspected"] == true))
    };
    let within = Duration::from_secs(30);
    status_within(&c, 1, "node 1 does not suspect node 3", within, suspected).await;
    let mut publisher = v5::Client::plain(c.mqtt(1), "sg-pub").await;
    const N: usize = 30;
    for i in 0..N {
        publisher
            .client
            .publish("dead/job", QoS5::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
        puback(&mut publisher).await;
    }
    let mut got: Vec<usize> = (take_until_quiet(&mut members).await.into_iter())
        .map(|(_, p)| p.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "each message once, none lost"
    );
}

/// A member silent past `down_after_ms` is judged down through the log: every node shows it
/// down and forgets its filters (nothing is forwarded to it); restarted (a new incarnation)
/// it is up again, tells its filters again, and its persistent subscriber gets a message
/// published after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_judged_down_and_comes_back_up() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let timing = format!("{TIMING}down_after_ms = 11000\n");
    let mut c = Cluster::start_with(3, &timing);
    c.settled(&[1, 2, 3], "first start").await;
    let (mut sub, _) = v5::Client::connect(c.mqtt(3), "down-sub", persistent).await;
    sub.subscribe(Filter::new("down/#", QoS5::AtLeastOnce), None)
        .await;
    drop(sub);
    c.routes_known(1, 1).await;
    c.kill9(3);
    let down = |s: &serde_json::Value| {
        s["members"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|m| m["id"] == 3 && m["down"] == true))
    };
    for id in [1, 2] {
        let what = format!("node {id} does not show node 3 down");
        status_within(&c, id, &what, Duration::from_secs(30), down).await;
        c.routes_known(id, 0).await;
    }
    assert_eq!(metric(&c, 1, "starling_cluster_members_down").await, 1);
    assert_eq!(
        metric(&c, 1, "starling_cluster_peer_suspected{peer=\"3\"}").await,
        1
    );
    assert_eq!(
        metric(&c, 1, "starling_cluster_peer_suspected{peer=\"2\"}").await,
        0
    );

    c.restart(3);
    c.settled(&[1, 2, 3], "after node 3 came back").await;
    status_until(&c, 1, "node 3 up again", |s| !down(s)).await;
    c.routes_known(1, 1).await;
    let publisher = v5::Client::plain(c.mqtt(1), "down-pub").await;
    publisher
        .client
        .publish("down/x", QoS5::AtLeastOnce, false, "back")
        .await
        .unwrap();
    let (mut sub, ack) = v5::Client::connect(c.mqtt(3), "down-sub", persistent).await;
    assert!(ack.session_present);
    assert_eq!(&sub.publish().await.payload[..], b"back");
    assert_eq!(metric(&c, 1, "starling_cluster_members_down").await, 0);
}

/// A batch stored on the subscriber's node whose reply is lost, then that node killed
/// (`kill -9`) and restarted: node 1 sends the batch again with the same number to the new
/// life, which knows from its store that it took it (the mark kept in the same commit as the
/// messages) and confirms it without delivering it again. The publisher's QoS 2 flow
/// completes, and the persistent subscriber gets each message once (twice without the mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_to_a_restarted_node_is_not_delivered_twice() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};

    let mut c = Cluster::formed(3).await;
    let (mut keeper, _) = v5::Client::connect(c.mqtt(2), "keeper-twice", persistent).await;
    keeper
        .subscribe(Filter::new("twice/#", QoS5::ExactlyOnce), None)
        .await;
    keeper.client.disconnect().await.unwrap();
    c.routes_known(1, 1).await;
    let mut publisher = v5::Client::plain(c.mqtt(1), "pub-twice").await;

    // Node 2's replies to node 1's streams are lost: the first batch (one batch is in flight
    // per peer: the first message) arrives and is stored there, node 1 never hears so.
    let commits = metric(&c, 2, "starling_store_commits_total").await;
    c.proxy.mute(1, 2);
    for i in 0..3 {
        publisher
            .client
            .publish("twice/m", QoS5::ExactlyOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut last = (0, 0);
    let stored = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            last = (
                metric(&c, 2, "starling_messages_queued").await,
                metric(&c, 2, "starling_store_commits_total").await,
            );
            if last.0 >= 1 && last.1 > commits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        stored.is_ok(),
        "node 2 did not store the batch: (queued, commits) {last:?}, {commits} commits before\n{}",
        c.logs()
    );

    c.kill9(2);
    c.restart(2);
    c.proxy.unmute_all();
    // Each QoS 2 publish completes once node 2's new life confirmed the batch.
    for _ in 0..3 {
        publisher
            .expect("PUBREC", |p| match p {
                Packet::PubRec(r) => Some(r),
                _ => None,
            })
            .await;
    }
    c.settled(&[1, 2, 3], "after node 2 came back").await;
    let (keeper, ack) = v5::Client::connect(c.mqtt(2), "keeper-twice", persistent).await;
    assert!(ack.session_present);
    let got = take_until_quiet(&mut [keeper]).await;
    let payloads: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(payloads, ["0", "1", "2"], "each message once\n{}", c.logs());
}

/// Only the link between the leader and another node is cut (the third node reaches both):
/// the leader hears nothing from that node for longer than `down_after_ms`, but the third
/// node says, in its route keepalives, that it hears it, so the leader does not judge it
/// down, and messages from the third node still reach that node's subscribers. Without the
/// shared reports the leader would judge it down and every node would forget its filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_the_leader_alone_is_not_judged_down() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::Filter;

    let timing = format!("{TIMING}down_after_ms = 10000\n");
    let c = Cluster::start_with(3, &timing);
    let (leader, _) = c.settled(&[1, 2, 3], "first start").await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let (cut, third) = (others[0], others[1]);
    let (mut sub, _) = v5::Client::connect(c.mqtt(cut), "asym-sub", persistent).await;
    sub.subscribe(Filter::new("asym/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(third, 1).await;

    c.proxy.cut(leader, cut);
    // Past down_after_ms (10 s) and the leader's suspicion (10 s), with a margin.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let status = c.status(leader).await.unwrap();
    let member = |s: &serde_json::Value, id: u64| {
        s["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["id"] == id).cloned())
            .unwrap_or_default()
    };
    let peer = |s: &serde_json::Value, id: u64| {
        s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == id).cloned())
            .unwrap_or_default()
    };
    assert_eq!(
        peer(&status, cut)["suspected"],
        true,
        "the leader hears nothing from node {cut}: {status}"
    );
    assert_eq!(
        member(&status, cut)["down"],
        false,
        "judged down although node {third} hears it: {status}\n{}",
        c.logs()
    );
    assert_eq!(
        peer(&status, cut)["heard_by"],
        serde_json::json!([third]),
        "{status}"
    );
    // Node `third` still knows the filter and forwards to it.
    c.routes_known(third, 1).await;
    let publisher = v5::Client::plain(c.mqtt(third), "asym-pub").await;
    publisher
        .client
        .publish("asym/x", QoS5::AtLeastOnce, false, "around")
        .await
        .unwrap();
    assert_eq!(&sub.publish().await.payload[..], b"around");
    c.proxy.heal_all();
}
