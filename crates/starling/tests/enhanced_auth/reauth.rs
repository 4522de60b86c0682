//! Re-authentication.

use super::*;

/// Re-authenticates `c` as `who`; returns the broker's answer to client-final (AUTH 0x00 or
/// DISCONNECT) after checking the exchange up to there.
async fn reauthenticate(c: &mut RawClient, who: (&str, &str)) -> Packet {
    let mut scram = ScramClient::new(who.0, who.1);
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some(SCRAM),
        Some(scram.client_first()),
    ))
    .await;
    let sf = expect_auth(c, ReasonCode::ContinueAuthentication).await;
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        Some(SCRAM),
        Some(scram.client_final(&sf)),
    ))
    .await;
    c.expect_packet(WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_succeeds_while_traffic_goes_on() {
    let f = fixture(|_| {}).await;
    let mut c = scram_login(f.server.addr, "re-1", ALICE).await;
    assert_eq!(subscribe(&mut c, "alice/#").await, ReasonCode::GrantedQoS1);
    for round in 0..2 {
        let mut scram = ScramClient::new(ALICE.0, ALICE.1);
        c.send(&auth(
            ReasonCode::ReAuthenticate,
            Some(SCRAM),
            Some(scram.client_first()),
        ))
        .await;
        let sf = expect_auth(&mut c, ReasonCode::ContinueAuthentication).await;
        // The connection keeps working under its previous authentication meanwhile.
        let (reason, _) = publish(&mut c, "alice/during", &format!("during {round}")).await;
        assert_eq!(reason, ReasonCode::Success);
        assert_eq!(received(&mut c).await, format!("during {round}"));
        c.send(&auth(
            ReasonCode::ContinueAuthentication,
            Some(SCRAM),
            Some(scram.client_final(&sf)),
        ))
        .await;
        let data = expect_auth(&mut c, ReasonCode::Success).await;
        assert!(scram.server_final_ok(&data));
    }
    let (reason, _) = publish(&mut c, "alice/after", "after").await;
    assert_eq!(reason, ReasonCode::Success);
    assert_eq!(received(&mut c).await, "after");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_with_a_wrong_password_disconnects_0x87() {
    let f = fixture(|_| {}).await;
    let mut c = scram_login(f.server.addr, "re-2", ALICE).await;
    let answer = reauthenticate(&mut c, ("alice", "guess")).await;
    // DISCONNECT has no "bad user name or password" (spec 3.14.2.1): 0x87.
    match answer {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    c.expect_closed_silently().await;
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_as_another_user_is_refused() {
    let f = fixture(|_| {}).await;
    let mut c = scram_login(f.server.addr, "re-3", ALICE).await;
    // Carol's password is right, but this connection is alice's.
    let scram = ScramClient::new(CAROL.0, CAROL.1);
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some(SCRAM),
        Some(scram.client_first()),
    ))
    .await;
    c.expect_disconnect(ReasonCode::NotAuthorized).await;
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_protocol_errors() {
    let f = fixture(|_| {}).await;
    let addr = f.server.addr;
    // Continue without a re-authentication under way.
    let mut c = scram_login(addr, "rp-1", ALICE).await;
    c.send(&auth(ReasonCode::ContinueAuthentication, Some(SCRAM), None))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    // Another method (MQTT-4.12.1-1).
    let mut c = scram_login(addr, "rp-2", ALICE).await;
    let scram = ScramClient::new(ALICE.0, ALICE.1);
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some("SCRAM-SHA-512"),
        Some(scram.client_first()),
    ))
    .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    // A second 0x19 while one is under way.
    let mut c = scram_login(addr, "rp-3", ALICE).await;
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some(SCRAM),
        Some(scram.client_first()),
    ))
    .await;
    expect_auth(&mut c, ReasonCode::ContinueAuthentication).await;
    c.send(&auth(
        ReasonCode::ReAuthenticate,
        Some(SCRAM),
        Some(scram.client_first()),
    ))
    .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    // Success (0x00) is the server's to send.
    let mut c = scram_login(addr, "rp-4", ALICE).await;
    c.send(&auth(ReasonCode::Success, Some(SCRAM), None)).await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    f.server.shutdown().await;
}
