//! The `mqtt5` crate's QUIC client against the QUIC listener: QoS 0, 1 and 2 both ways,
//! messages crossing to a TCP client, a resumed session with the messages queued while the
//! client was away, and connection migration (the client moves to a new UDP socket).

use std::time::Duration;

use mqtt5::{ConnectOptions, QoS, SubscribeOptions};
use starling_proto::{Packet, ProtocolVersion};

use super::common::{RawClient, WAIT};
use super::*;

/// Long enough for anything the broker does promptly, on a loaded machine.
const SOON: Duration = Duration::from_secs(5);

fn sub_options(qos: QoS) -> SubscribeOptions {
    SubscribeOptions {
        qos,
        ..SubscribeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_and_2_over_quic_and_across_to_tcp() {
    let s = start(|_, _| {}).await;
    let sub = mqtt5_client("quic-sub", &s.pki).await;
    sub.connect(&url(s.quic)).await.unwrap();
    let (cb, mut rx) = inbox();
    let (_, granted) = sub
        .subscribe_with_options("q/#", sub_options(QoS::ExactlyOnce), cb)
        .await
        .unwrap();
    assert_eq!(granted, QoS::ExactlyOnce);
    // A TCP client on the same broker sees what QUIC clients publish.
    let (mut tcp, _) = RawClient::connect(s.server.addr, ProtocolVersion::V5, "tcp-sub").await;
    tcp.subscribe("q/#", starling_proto::QoS::ExactlyOnce).await;

    let publisher = mqtt5_client("quic-pub", &s.pki).await;
    publisher.connect(&url(s.quic)).await.unwrap();
    for (qos, topic) in [
        (QoS::AtMostOnce, "q/0"),
        (QoS::AtLeastOnce, "q/1"),
        (QoS::ExactlyOnce, "q/2"),
    ] {
        let sent = publisher
            .publish_qos(topic, format!("at {qos:?}").into_bytes(), qos)
            .await
            .unwrap();
        assert!(
            matches!(sent, mqtt5::PublishResult::Sent(_)),
            "{topic}: acknowledged on the live connection"
        );
        let m = next(&mut rx, SOON).await;
        assert_eq!(m.topic, topic);
        assert_eq!(m.qos, qos, "delivered at the QoS it was published with");
        assert_eq!(m.payload, format!("at {qos:?}").into_bytes());
        match tcp.expect_packet(WAIT).await {
            Packet::Publish(p) => {
                assert_eq!(p.topic.as_str(), topic);
                assert_eq!(p.qos as u8, qos as u8);
                match p.qos {
                    starling_proto::QoS::AtMostOnce => {}
                    starling_proto::QoS::AtLeastOnce => {
                        tcp.send(&Packet::PubAck(starling_proto::PubAck::new(p.packet_id)))
                            .await
                    }
                    starling_proto::QoS::ExactlyOnce => {
                        tcp.send(&Packet::PubRec(starling_proto::PubAck::new(p.packet_id)))
                            .await;
                        match tcp.expect_packet(WAIT).await {
                            Packet::PubRel(r) => {
                                tcp.send(&Packet::PubComp(starling_proto::PubAck::new(r.packet_id)))
                                    .await
                            }
                            other => panic!("expected PUBREL, got {other:?}"),
                        }
                    }
                }
            }
            other => panic!("expected PUBLISH over TCP, got {other:?}"),
        }
    }
    // And the other way: TCP to QUIC.
    let (reason, _) = tcp.publish_qos1("q/from-tcp", "hello").await;
    assert!(!reason.is_error());
    let m = next(&mut rx, SOON).await;
    assert_eq!((m.topic.as_str(), m.qos), ("q/from-tcp", QoS::AtLeastOnce));
    // Nothing twice.
    assert!(
        timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no duplicate delivery"
    );
    let m = &s.server.broker().metrics;
    assert!(m.connections_banned.get() == 0 && m.connections_refused.get() == 0);
    publisher.disconnect().await.unwrap();
    sub.disconnect().await.unwrap();
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_resumed_with_what_was_queued_meanwhile() {
    let s = start(|_, _| {}).await;
    let options = || {
        ConnectOptions::new("resumer")
            .with_clean_start(false)
            .with_session_expiry_interval(300)
    };
    let client = mqtt5_client("resumer", &s.pki).await;
    let first = client
        .connect_with_options(&url(s.quic), options().with_clean_start(true))
        .await
        .unwrap();
    assert!(!first.session_present);
    let (cb, mut rx) = inbox();
    client
        .subscribe_with_options("r/#", sub_options(QoS::AtLeastOnce), cb)
        .await
        .unwrap();
    client.disconnect().await.unwrap();

    // Published while the client is away: queued in its session.
    let publisher = mqtt5_client("resume-pub", &s.pki).await;
    publisher.connect(&url(s.quic)).await.unwrap();
    for i in 0..3 {
        publisher
            .publish_qos1("r/t", format!("queued {i}").into_bytes())
            .await
            .unwrap();
    }
    publisher
        .publish_qos2("r/t", b"queued at 2".to_vec())
        .await
        .unwrap();

    let again = client
        .connect_with_options(&url(s.quic), options())
        .await
        .unwrap();
    assert!(again.session_present, "the broker kept the session");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8(next(&mut rx, SOON).await.payload).unwrap());
    }
    assert_eq!(
        got,
        ["queued 0", "queued 1", "queued 2", "queued at 2"],
        "queued messages delivered in order"
    );
    // The subscription is live again, without subscribing anew.
    publisher
        .publish_qos1("r/t", b"live".to_vec())
        .await
        .unwrap();
    assert_eq!(next(&mut rx, SOON).await.payload, b"live");
    client.disconnect().await.unwrap();
    publisher.disconnect().await.unwrap();
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_another_udp_port_keeps_its_connection() {
    let s = start(|_, _| {}).await;
    let mover = mqtt5_client("mover", &s.pki).await;
    mover.connect(&url(s.quic)).await.unwrap();
    let (cb, mut rx) = inbox();
    mover
        .subscribe_with_options("m/#", sub_options(QoS::AtLeastOnce), cb)
        .await
        .unwrap();
    let connects = s
        .server
        .broker()
        .metrics
        .connects_by_protocol
        .of(ProtocolVersion::V5)
        .get();

    mover.migrate().await.unwrap();
    // Both ways on the same connection after the move: its publish reaches a TCP subscriber,
    // and what is published to it reaches it.
    let (mut tcp, _) = RawClient::connect(s.server.addr, ProtocolVersion::V5, "watcher").await;
    tcp.subscribe("m/#", starling_proto::QoS::AtLeastOnce).await;
    mover
        .publish_qos1("m/moved", b"after".to_vec())
        .await
        .unwrap();
    match tcp.expect_packet(WAIT).await {
        Packet::Publish(p) => assert_eq!(p.topic.as_str(), "m/moved"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // (The mover also receives its own publish: no No Local here.)
    assert_eq!(next(&mut rx, SOON).await.topic, "m/moved");
    let (reason, _) = tcp.publish_qos1("m/to-mover", "x").await;
    assert!(!reason.is_error());
    assert_eq!(next(&mut rx, SOON).await.topic, "m/to-mover");
    assert!(mover.is_connected().await);
    assert_eq!(
        s.server
            .broker()
            .metrics
            .connects_by_protocol
            .of(ProtocolVersion::V5)
            .get(),
        connects + 1,
        "one new CONNECT (the TCP watcher): the mover did not reconnect"
    );
    mover.disconnect().await.unwrap();
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_user_and_the_acl_applies() {
    let s = start(|config, pki| {
        let acl = pki.write("acl", "user dev7\ntopic readwrite dev7/#\n");
        let l = &mut config.listeners[1];
        l.ca_file = Some(pki.ca_file.clone());
        l.require_certificate = true;
        l.use_identity_as_username = Some(starling::config::IdentityField::Cn);
        l.acl_file = Some(acl);
    })
    .await;
    // Without a certificate: no connection.
    let anonymous = mqtt5_client("no-cert", &s.pki).await;
    assert!(anonymous.connect(&url(s.quic)).await.is_err());

    let (cert, key) = s.pki.client_pem("dev7");
    let dev = mqtt5::MqttClient::new("dev7-client");
    dev.set_tls_config(Some(cert), Some(key), Some(s.pki.ca_pem.clone()))
        .await;
    dev.connect(&url(s.quic)).await.unwrap();
    let (cb, mut rx) = inbox();
    dev.subscribe_with_options("dev7/#", sub_options(QoS::AtLeastOnce), cb)
        .await
        .unwrap();
    // The CN is the username the ACL names: its own topics, and nothing else.
    dev.publish_qos1("dev7/temp", b"21".to_vec()).await.unwrap();
    assert_eq!(next(&mut rx, SOON).await.topic, "dev7/temp");
    assert!(
        dev.publish_qos1("other/temp", b"21".to_vec())
            .await
            .is_err(),
        "PUBACK 0x87 outside the ACL"
    );
    dev.disconnect().await.unwrap();
    s.server.shutdown().await;
}
