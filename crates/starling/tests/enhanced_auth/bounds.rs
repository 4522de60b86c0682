//! Protocol errors and bounds.

use super::*;

/// Starts a SCRAM exchange and returns the client once the broker has sent server-first.
async fn mid_exchange(addr: SocketAddr) -> (RawClient, ScramClient, Vec<u8>) {
    let scram = ScramClient::new(ALICE.0, ALICE.1);
    let mut c = RawClient::open(addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(method_connect(
        "mid",
        SCRAM,
        Some(scram.client_first()),
    ))))
    .await;
    let sf = expect_auth(&mut c, ReasonCode::ContinueAuthentication).await;
    (c, scram, sf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_auth_or_disconnect_before_connack() {
    let f = fixture(|_| {}).await;
    let addr = f.server.addr;
    // MQTT-3.1.2-30: other packets before CONNACK are a protocol error.
    for packet in [
        publish_packet("alice/x", QoS::AtMostOnce, 0, b"early"),
        common::subscribe_packet(1, "alice/#", QoS::AtMostOnce),
        Packet::PingReq,
    ] {
        let (mut c, _, _) = mid_exchange(addr).await;
        c.send(&packet).await;
        expect_connack_then_close(&mut c, ReasonCode::ProtocolError).await;
    }
    // MQTT-4.12.0-5: the same method on every AUTH.
    let (mut c, mut scram, sf) = mid_exchange(addr).await;
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        Some("SCRAM-SHA-1"),
        Some(scram.client_final(&sf)),
    ))
    .await;
    expect_connack_then_close(&mut c, ReasonCode::ProtocolError).await;
    let (mut c, mut scram, sf) = mid_exchange(addr).await;
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        None,
        Some(scram.client_final(&sf)),
    ))
    .await;
    expect_connack_then_close(&mut c, ReasonCode::ProtocolError).await;
    // MQTT-4.12.0-3: the client continues with 0x18, not 0x19.
    let (mut c, mut scram, sf) = mid_exchange(addr).await;
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some(SCRAM),
        Some(scram.client_final(&sf)),
    ))
    .await;
    expect_connack_then_close(&mut c, ReasonCode::ProtocolError).await;
    // DISCONNECT ends the exchange quietly.
    let (mut c, _, _) = mid_exchange(addr).await;
    c.send(&Packet::Disconnect(starling_proto::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    c.expect_closed_silently().await;
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_a_method_is_a_protocol_error() {
    let f = fixture(|c| c.listeners[0].allow_anonymous = Some(true)).await;
    let addr = f.server.addr;
    // AUTH as the first packet: no CONNECT, nothing to answer.
    let mut c = RawClient::open(addr).await;
    c.version = V5;
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        Some(SCRAM),
        Some(b"n,,n=alice,r=x".to_vec()),
    ))
    .await;
    c.expect_closed_silently().await;
    // MQTT-4.12.0-7: a client that named no method sends no AUTH, neither right behind its
    // CONNECT nor later.
    let mut c = RawClient::open(addr).await;
    c.version = V5;
    c.send_all(&[
        Packet::Connect(Box::new(connect_packet(V5, "nm"))),
        auth(ReasonCode::ReAuthenticate, Some(SCRAM), None),
    ])
    .await;
    let got = c.expect_closed(WAIT).await;
    match &got[..] {
        [Packet::ConnAck(ack), Packet::Disconnect(d)] => {
            assert_eq!(ack.reason, ReasonCode::Success);
            assert!(ack.properties.authentication_method.is_none());
            assert_eq!(d.reason, ReasonCode::ProtocolError);
        }
        _ => panic!("expected CONNACK then DISCONNECT 0x82, got {got:?}"),
    }
    // Authentication Data without a method in CONNECT.
    let mut connect = connect_packet(V5, "data-only");
    connect.properties.authentication_data = Some(Bytes::from_static(b"x"));
    let mut c = RawClient::open(addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(connect))).await;
    expect_connack_then_close(&mut c, ReasonCode::ProtocolError).await;
    f.server.shutdown().await;
}
