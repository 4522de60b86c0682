//! SCRAM at CONNECT.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_succeeds_and_the_username_applies_to_acls() {
    let f = fixture(|_| {}).await;
    let mut c = scram_login(f.server.addr, "scram-1", ALICE).await;
    assert_eq!(subscribe(&mut c, "alice/#").await, ReasonCode::GrantedQoS1);
    let (reason, _) = publish(&mut c, "alice/x", "mine").await;
    assert_eq!(reason, ReasonCode::Success);
    assert_eq!(received(&mut c).await, "mine");
    // The ACL names alice: what SCRAM authenticated is the identity used for authorization.
    let (reason, _) = publish(&mut c, "elsewhere", "no").await;
    assert_eq!(reason, ReasonCode::NotAuthorized);
    assert_eq!(subscribe(&mut c, "#").await, ReasonCode::NotAuthorized);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_server_first_is_well_formed() {
    let f = fixture(|_| {}).await;
    let scram = ScramClient::new("alice", "x");
    let mut c = RawClient::open(f.server.addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(method_connect(
        "sf",
        SCRAM,
        Some(scram.client_first()),
    ))))
    .await;
    let sf =
        String::from_utf8(expect_auth(&mut c, ReasonCode::ContinueAuthentication).await).unwrap();
    let (nonce, salt, iterations) = parse_server_first(&sf);
    assert!(nonce.starts_with(&scram.nonce));
    assert_eq!(salt.len(), 16);
    assert_eq!(iterations, 4096);
    // Alice's salt is the one in the password file.
    let file = PasswordFile::load(&f.passwd).unwrap();
    let Some(PasswordHash::ScramSha256(creds)) = file.hash("alice") else {
        panic!("alice has a SCRAM entry")
    };
    assert_eq!(salt, creds.salt);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_wrong_password_gets_0x86() {
    let f = fixture(|_| {}).await;
    let (mut c, ack, _) = scram_connect(f.server.addr, "w", ("alice", "not it")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    assert!(ack.properties.authentication_method.is_none());
    c.expect_closed_silently().await;
    let refused = f.server.broker().metrics.auth_refused.get();
    assert_eq!(refused, 1);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_unknown_user_fails_at_the_proof_like_a_wrong_password() {
    let f = fixture(|_| {}).await;
    // The exchange runs its course, with the same salt each time for the same name.
    let salt_for = |addr| async move {
        let mut scram = ScramClient::new("nobody", "pw");
        let mut c = RawClient::open(addr).await;
        c.version = V5;
        c.send(&Packet::Connect(Box::new(method_connect(
            "n",
            SCRAM,
            Some(scram.client_first()),
        ))))
        .await;
        let sf = expect_auth(&mut c, ReasonCode::ContinueAuthentication).await;
        let (_, salt, iterations) = parse_server_first(std::str::from_utf8(&sf).unwrap());
        assert_eq!(iterations, 4096);
        let fin = scram.client_final(&sf);
        c.send(&auth(
            ReasonCode::ContinueAuthentication,
            Some(SCRAM),
            Some(fin),
        ))
        .await;
        expect_connack_then_close(&mut c, ReasonCode::BadUserNameOrPassword).await;
        salt
    };
    let a = salt_for(f.server.addr).await;
    let b = salt_for(f.server.addr).await;
    assert_eq!(a, b, "a stable salt, as a real user has");
    assert_eq!(a.len(), 16);
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_user_without_a_scram_entry_fails_but_plain_password_works() {
    let f = fixture(|_| {}).await;
    let (mut c, ack, _) = scram_connect(f.server.addr, "b", BOB).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    c.expect_closed_silently().await;
    let mut login = connect_packet(V5, "b2");
    login.username = Some(BOB.0.into());
    login.password = Some(Bytes::from_static(BOB.1.as_bytes()));
    RawClient::connect_with(f.server.addr, login).await;
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_connect_user_name_must_match_the_scram_user() {
    let f = fixture(|_| {}).await;
    let scram = ScramClient::new("alice", ALICE.1);
    let mut connect = method_connect("m", SCRAM, Some(scram.client_first()));
    connect.username = Some("carol".into());
    let mut c = RawClient::open(f.server.addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(connect))).await;
    expect_connack_then_close(&mut c, ReasonCode::NotAuthorized).await;
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_client_first_may_come_in_the_first_auth() {
    let f = fixture(|_| {}).await;
    let mut scram = ScramClient::new(ALICE.0, ALICE.1);
    let mut c = RawClient::open(f.server.addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(method_connect(
        "late", SCRAM, None,
    ))))
    .await;
    assert!(
        expect_auth(&mut c, ReasonCode::ContinueAuthentication)
            .await
            .is_empty()
    );
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        Some(SCRAM),
        Some(scram.client_first()),
    ))
    .await;
    let sf = expect_auth(&mut c, ReasonCode::ContinueAuthentication).await;
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        Some(SCRAM),
        Some(scram.client_final(&sf)),
    ))
    .await;
    match c.expect_packet(WAIT).await {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.reason, ReasonCode::Success);
            assert!(scram.server_final_ok(ack.properties.authentication_data.as_ref().unwrap()));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_gets_0x8c() {
    let f = fixture(|_| {}).await;
    for method in ["SCRAM-SHA-1", "scram-sha-256", "GS2-KRB5"] {
        let mut c = RawClient::open(f.server.addr).await;
        c.version = V5;
        c.send(&Packet::Connect(Box::new(method_connect(
            "u",
            method,
            Some(b"n,,n=alice,r=x".to_vec()),
        ))))
        .await;
        expect_connack_then_close(&mut c, ReasonCode::BadAuthenticationMethod).await;
    }
    f.server.shutdown().await;

    // A listener that offers no method refuses SCRAM-SHA-256 the same way.
    let server = common::start_server(|_| {}).await;
    let mut c = RawClient::open(server.addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(method_connect(
        "u",
        SCRAM,
        Some(b"n,,n=alice,r=x".to_vec()),
    ))))
    .await;
    expect_connack_then_close(&mut c, ReasonCode::BadAuthenticationMethod).await;
    common::assert_serving(server.addr).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_password_against_a_scram_entry() {
    let f = fixture(|_| {}).await;
    for version in [ProtocolVersion::V311, V5] {
        let mut login = connect_packet(version, "plain");
        login.username = Some(ALICE.0.into());
        login.password = Some(Bytes::from_static(ALICE.1.as_bytes()));
        let (mut c, ack) = RawClient::connect_with(f.server.addr, login).await;
        assert!(ack.properties.authentication_method.is_none());
        assert_eq!(
            subscribe(&mut c, "alice/plain").await,
            ReasonCode::GrantedQoS1
        );

        let mut wrong = connect_packet(version, "plain-wrong");
        wrong.username = Some(ALICE.0.into());
        wrong.password = Some(Bytes::from_static(b"wonderland!"));
        let mut c = RawClient::open(f.server.addr).await;
        c.version = version;
        c.send(&Packet::Connect(Box::new(wrong))).await;
        let got = c.expect_closed(WAIT).await;
        let [Packet::ConnAck(ack)] = &got[..] else {
            panic!("expected CONNACK, got {got:?}")
        };
        assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    }
    f.server.shutdown().await;
}
