//! rumqttc as the client.

use super::*;

use common::rumqtt::v5::{Client, options};
use rumqttc::v5::mqttbytes::QoS as Q;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code, Packet as P};

/// A relay between rumqttc and the broker that answers the broker's AUTH 0x18 with the
/// client-final message of `scram` and then passes everything through. Resolves to whether
/// the server signature in CONNACK was right (None if there was none).
async fn scram_relay(
    broker: SocketAddr,
    mut scram: ScramClient,
) -> (u16, tokio::task::JoinHandle<Option<bool>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut upstream = TcpStream::connect(broker).await.unwrap();
        let limits = DecodeLimits::default();
        // rumqttc's CONNECT, passed on as it is.
        let mut buf = BytesMut::new();
        loop {
            client.read_buf(&mut buf).await.unwrap();
            let mut probe = buf.clone();
            if starling_proto::decode(&mut probe, ProtocolVersion::V311, &limits)
                .unwrap()
                .is_some()
            {
                break;
            }
        }
        upstream.write_all(&buf).await.unwrap();
        let mut from_broker = BytesMut::new();
        let verified = loop {
            let packet = loop {
                let mut probe = from_broker.clone();
                if let Some(p) = starling_proto::decode(&mut probe, V5, &limits).unwrap() {
                    break p;
                }
                assert!(upstream.read_buf(&mut from_broker).await.unwrap() > 0);
            };
            match packet {
                Packet::Auth(a) => {
                    let _ = starling_proto::decode(&mut from_broker, V5, &limits);
                    let sf = a.properties.authentication_data.clone().unwrap();
                    let mut out = BytesMut::new();
                    starling_proto::encode(
                        &auth(
                            ReasonCode::ContinueAuthentication,
                            Some(SCRAM),
                            Some(scram.client_final(&sf)),
                        ),
                        V5,
                        &mut out,
                    )
                    .unwrap();
                    upstream.write_all(&out).await.unwrap();
                }
                Packet::ConnAck(ack) => {
                    break ack
                        .properties
                        .authentication_data
                        .clone()
                        .map(|d| scram.server_final_ok(&d));
                }
                other => panic!("relay: unexpected {other:?} before CONNACK"),
            }
        };
        // CONNACK (still in the buffer, undecoded) and everything after it go through as
        // they are.
        client.write_all(&from_broker).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        verified
    });
    (port, task)
}

/// rumqttc options for a SCRAM login through a relay started here.
async fn scram_through_relay(
    broker: SocketAddr,
    id: &str,
    scram: ScramClient,
) -> (
    rumqttc::v5::MqttOptions,
    tokio::task::JoinHandle<Option<bool>>,
) {
    let client_first = scram.client_first();
    let (port, relay) = scram_relay(broker, scram).await;
    let mut o = options(SocketAddr::from(([127, 0, 0, 1], port)), id);
    o.set_authentication_method(Some(SCRAM.into()));
    o.set_authentication_data(Some(Bytes::from(client_first)));
    (o, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_logs_in_with_scram_and_uses_the_session() {
    let f = fixture(|_| {}).await;
    let scram = ScramClient::new(ALICE.0, ALICE.1);
    let (opts, relay) = scram_through_relay(f.server.addr, "rumqttc-scram", scram).await;
    let mut c = Client::start(opts);
    match c.next().await {
        Ok(P::ConnAck(ack)) => {
            assert_eq!(ack.code, Code::Success);
            let props = ack.properties.unwrap();
            assert_eq!(props.authentication_method.as_deref(), Some(SCRAM));
            assert!(props.authentication_data.is_some());
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c.client.subscribe("alice/#", Q::AtLeastOnce).await.unwrap();
    c.client
        .publish("alice/r", Q::AtLeastOnce, false, "via rumqttc")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no message back");
        if let Ok(P::Publish(p)) = c.next().await {
            assert_eq!(&p.payload[..], b"via rumqttc");
            break;
        }
    }
    c.disconnect().await;
    assert_eq!(relay.await.unwrap(), Some(true), "server signature checked");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_scram_with_a_wrong_password_is_refused_0x86() {
    let f = fixture(|_| {}).await;
    let scram = ScramClient::new(ALICE.0, "Wonderland");
    let (opts, relay) = scram_through_relay(f.server.addr, "rumqttc-wrong", scram).await;
    let mut c = Client::start(opts);
    assert_eq!(c.expect_refused().await, Code::BadUserNamePassword);
    assert_eq!(relay.await.unwrap(), None);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_unknown_method_is_refused_0x8c() {
    let f = fixture(|_| {}).await;
    let mut opts = options(f.server.addr, "rumqttc-8c");
    opts.set_authentication_method(Some("OAUTH2-JWT".into()));
    opts.set_authentication_data(Some(Bytes::from_static(b"token")));
    let mut c = Client::start(opts);
    assert_eq!(c.expect_refused().await, Code::BadAuthenticationMethod);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_plain_password_against_a_scram_entry() {
    let f = fixture(|_| {}).await;
    let mut opts = options(f.server.addr, "rumqttc-plain");
    opts.set_credentials(CAROL.0, CAROL.1);
    let mut c = Client::start(opts);
    match c.next().await {
        Ok(P::ConnAck(ack)) => assert_eq!(ack.code, Code::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c.disconnect().await;
    let mut opts = options(f.server.addr, "rumqttc-plain-2");
    opts.set_credentials(CAROL.0, "carol's passwort");
    let mut c = Client::start(opts);
    assert_eq!(c.expect_refused().await, Code::BadUserNamePassword);
    f.server.shutdown().await;
}
