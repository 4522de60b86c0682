//! ACLs: publish, subscribe and receive checks, patterns, reloads, will topics.

use super::*;

const ACL: &str = "\
# anonymous clients: nothing

user alice
topic readwrite alice/#
topic deny alice/secret
topic read public/#

user bob
topic write public/#
topic write alice/#

user admin
topic readwrite #

pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

async fn acl_server(dir: &TempDir) -> TestServer {
    let pw = dir.path("passwd");
    password_file(
        &pw,
        &[("alice", "a"), ("bob", "b"), ("admin", "x"), ("+", "p")],
    );
    let acl = dir.write("acl", ACL);
    let mut l = listener("tcp");
    l.password_file = Some(pw);
    l.acl_file = Some(acl);
    l.allow_anonymous = Some(true);
    start(vec![l]).await
}

async fn as_user(s: &TestServer, v: ProtocolVersion, id: &str, user: &str) -> RawClient {
    let pw = match user {
        "alice" => "a",
        "bob" => "b",
        "admin" => "x",
        "+" => "p",
        _ => panic!("no such test user"),
    };
    ok_client(s.addr, login(v, id, Some(user), Some(pw))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denies_publish() {
    let dir = TempDir::new("acl-pub");
    let s = acl_server(&dir).await;
    let mut alice = as_user(&s, V5, "alice-sub", "alice").await;
    alice.subscribe("public/#", QoS::AtLeastOnce).await;

    // v5: PUBACK 0x87, nothing delivered.
    let mut alice_pub = as_user(&s, V5, "alice-pub", "alice").await;
    assert_eq!(
        puback(&mut alice_pub, "public/news", "x").await,
        ReasonCode::NotAuthorized
    );
    // 3.1.1: acknowledged as usual, silently dropped.
    let mut alice3 = as_user(&s, V311, "alice-pub3", "alice").await;
    assert_eq!(
        puback(&mut alice3, "public/news", "y").await,
        ReasonCode::Success
    );
    // QoS 2 on 3.1.1: the flow completes, the message is still dropped.
    let pid = alice3.next_packet_id();
    alice3
        .send(&publish_packet("public/news", QoS::ExactlyOnce, pid, b"z"))
        .await;
    assert!(matches!(alice3.expect_packet(WAIT).await, Packet::PubRec(a) if a.packet_id == pid));
    alice3.send(&Packet::PubRel(PubAck::new(pid))).await;
    assert!(matches!(alice3.expect_packet(WAIT).await, Packet::PubComp(a) if a.packet_id == pid));
    // bob may write there.
    let mut bob = as_user(&s, V5, "bob", "bob").await;
    assert_ne!(
        puback(&mut bob, "public/news", "from bob").await,
        ReasonCode::NotAuthorized
    );
    let got = received(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(got, [("public/news".to_string(), "from bob".to_string())]);
    // Anonymous clients have no rules at all.
    let mut anon = ok_client(s.addr, login(V5, "anon", None, None)).await;
    assert_eq!(
        puback(&mut anon, "public/news", "x").await,
        ReasonCode::NotAuthorized
    );
    assert!(s.broker().metrics.acl_denied.get() >= 4);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denies_subscribe() {
    let dir = TempDir::new("acl-sub");
    let s = acl_server(&dir).await;
    let mut alice = as_user(&s, V5, "alice", "alice").await;
    assert_eq!(
        suback(&mut alice, "alice/secret").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(suback(&mut alice, "bob/#").await, ReasonCode::NotAuthorized);
    assert_eq!(suback(&mut alice, "#").await, ReasonCode::NotAuthorized);
    assert_eq!(suback(&mut alice, "alice/#").await, ReasonCode::GrantedQoS1);
    assert_eq!(
        suback(&mut alice, "$share/g/public/+").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        suback(&mut alice, "$share/g/private/+").await,
        ReasonCode::NotAuthorized
    );
    // 3.1.1: return code 0x80.
    let mut alice3 = as_user(&s, V311, "alice3", "alice").await;
    let code = suback(&mut alice3, "bob/#").await;
    assert_eq!(code.to_v3_suback(), 0x80);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denies_receive_including_retained() {
    let dir = TempDir::new("acl-recv");
    let s = acl_server(&dir).await;
    let mut admin = as_user(&s, V5, "admin", "admin").await;
    for (topic, retain) in [("alice/secret", true), ("alice/open", true)] {
        let pid = admin.next_packet_id();
        let mut p = publish_packet(topic, QoS::AtLeastOnce, pid, b"retained");
        if let Packet::Publish(p) = &mut p {
            p.retain = retain;
        }
        admin.send(&p).await;
        assert!(matches!(admin.expect_packet(WAIT).await, Packet::PubAck(_)));
    }
    // alice's subscription overlaps the denied topic: granted, but alice/secret is not
    // delivered, retained or live.
    let mut alice = as_user(&s, V5, "alice", "alice").await;
    assert_eq!(suback(&mut alice, "alice/#").await, ReasonCode::GrantedQoS1);
    let got = received(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(got, [("alice/open".to_string(), "retained".to_string())]);
    assert_eq!(
        puback(&mut admin, "alice/secret", "live").await,
        ReasonCode::Success
    );
    assert_ne!(
        puback(&mut admin, "alice/other", "live").await,
        ReasonCode::NotAuthorized
    );
    let got = received(&mut alice, Duration::from_millis(500)).await;
    assert_eq!(got, [("alice/other".to_string(), "live".to_string())]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_patterns_substitute_client_id_and_username() {
    let dir = TempDir::new("acl-pattern");
    let s = acl_server(&dir).await;
    let mut dev = as_user(&s, V5, "dev1", "bob").await;
    assert_ne!(
        puback(&mut dev, "devices/dev1/temp", "21").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        puback(&mut dev, "devices/dev2/temp", "21").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        suback(&mut dev, "devices/dev1/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        suback(&mut dev, "devices/+/temp").await,
        ReasonCode::NotAuthorized
    );
    let mut alice = as_user(&s, V5, "a1", "alice").await;
    assert_eq!(
        suback(&mut alice, "inbox/alice/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        suback(&mut alice, "inbox/bob/#").await,
        ReasonCode::NotAuthorized
    );
    // Anonymous clients get %c patterns but never %u ones.
    let mut anon = ok_client(s.addr, login(V5, "dev9", None, None)).await;
    assert_eq!(
        suback(&mut anon, "devices/dev9/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        suback(&mut anon, "inbox/+/#").await,
        ReasonCode::NotAuthorized
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_in_client_id_or_username_never_widen() {
    let dir = TempDir::new("acl-wild");
    let s = acl_server(&dir).await;
    for id in ["+", "#", "dev/+"] {
        let mut c = as_user(&s, V5, id, "bob").await;
        assert_eq!(
            puback(&mut c, "devices/dev1/temp", "x").await,
            ReasonCode::NotAuthorized,
            "client id {id:?}"
        );
        for filter in ["devices/+/temp", "devices/#", "devices/+/#"] {
            assert_eq!(
                suback(&mut c, filter).await,
                ReasonCode::NotAuthorized,
                "client id {id:?}, filter {filter}"
            );
        }
    }
    // A username "+" gets inbox/+/... literally only.
    let mut plus = as_user(&s, V5, "p", "+").await;
    assert_eq!(
        suback(&mut plus, "inbox/alice/#").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        suback(&mut plus, "inbox/+/#").await,
        ReasonCode::NotAuthorized
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_reload_revokes_access_at_once_and_keeps_rules_on_error() {
    let dir = TempDir::new("acl-reload");
    let s = acl_server(&dir).await;
    let mut alice = as_user(&s, V5, "alice", "alice").await;
    assert_eq!(suback(&mut alice, "alice/#").await, ReasonCode::GrantedQoS1);
    let mut bob = as_user(&s, V5, "bob", "bob").await;
    puback(&mut bob, "alice/x", "before").await;
    assert_eq!(
        received(&mut alice, Duration::from_millis(300)).await.len(),
        1
    );

    // An invalid file: the old rules stay, with the error naming the line.
    std::fs::write(dir.path("acl"), "user alice\ntopic reed alice/#\n").unwrap();
    let errors = s.reload();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("line 2"), "{}", errors[0]);
    puback(&mut bob, "alice/x", "still").await;
    assert_eq!(
        received(&mut alice, Duration::from_millis(300)).await.len(),
        1
    );

    // Read access revoked: the existing subscription stops delivering at once.
    std::fs::write(
        dir.path("acl"),
        "user alice\ntopic write alice/#\nuser bob\ntopic write alice/#\n",
    )
    .unwrap();
    assert!(s.reload().is_empty());
    assert_eq!(
        puback(&mut bob, "alice/x", "after").await,
        ReasonCode::Success
    );
    assert!(
        received(&mut alice, Duration::from_millis(500))
            .await
            .is_empty()
    );

    // Write access revoked: bob, who has just published to this topic, is refused at once
    // (a connection remembers its last answer only until the rules change).
    std::fs::write(dir.path("acl"), "user alice\ntopic write alice/#\n").unwrap();
    assert!(s.reload().is_empty());
    assert_eq!(
        puback(&mut bob, "alice/x", "refused").await,
        ReasonCode::NotAuthorized
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_a_forbidden_topic_is_refused() {
    let dir = TempDir::new("acl-will");
    let s = acl_server(&dir).await;
    let mut c = login(V5, "w", Some("alice"), Some("a"));
    c.will = Some(Will {
        topic: starling_proto::TopicName::try_from_str("bob/will").unwrap(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    expect_refused(s.addr, c.clone(), ReasonCode::NotAuthorized).await;
    c.will.as_mut().unwrap().topic = starling_proto::TopicName::try_from_str("alice/will").unwrap();
    ok_client(s.addr, c).await;
    s.shutdown().await;
}
