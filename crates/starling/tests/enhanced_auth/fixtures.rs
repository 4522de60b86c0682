//! Broker and packets.

use super::*;

/// A broker whose listener offers SCRAM-SHA-256 over a password file with alice and carol
/// (SCRAM entries) and bob (a `$7$` entry, which SCRAM cannot use), and an ACL that keeps
/// alice to `alice/#`.
pub(crate) struct Fixture {
    pub(crate) server: TestServer,
    pub(crate) passwd: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) const ALICE: (&str, &str) = ("alice", "wonderland");
pub(crate) const CAROL: (&str, &str) = ("carol", "carol's password");
pub(crate) const BOB: (&str, &str) = ("bob", "builder");

pub(crate) fn write_users(path: &Path) {
    let mut f = PasswordFile::default();
    for ((user, pw), kind) in [
        (ALICE, HashKind::ScramSha256 { iterations: 4096 }),
        (CAROL, HashKind::ScramSha256 { iterations: 4096 }),
        (BOB, HashKind::Pbkdf2Sha512 { iterations: 10 }),
    ] {
        f.set(user, PasswordHash::new(pw.as_bytes(), kind).unwrap())
            .unwrap();
    }
    f.save(path).unwrap();
}

pub(crate) fn scram_listener(passwd: &Path, acl: Option<&Path>) -> ListenerConfig {
    let mut l = ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    l.password_file = Some(passwd.to_owned());
    l.acl_file = acl.map(Path::to_owned);
    l.allow_anonymous = Some(false);
    l.auth_methods = vec![SCRAM.to_owned()];
    l
}

pub(crate) async fn fixture(tune: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    write_users(&passwd);
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite alice/#\nuser carol\ntopic readwrite #\nuser bob\ntopic readwrite #\n",
    )
    .unwrap();
    let mut config = Config {
        listeners: vec![scram_listener(&passwd, Some(&acl))],
        ..Config::default()
    };
    config.limits.sys_interval_secs = 0;
    config.http.bind = ([127, 0, 0, 1], 0).into();
    tune(&mut config);
    let server = common::start_server_with(&config).await;
    Fixture {
        server,
        passwd,
        _dir: dir,
    }
}

pub(crate) fn method_connect(id: &str, method: &str, data: Option<Vec<u8>>) -> Connect {
    let mut c = connect_packet(V5, id);
    c.properties.authentication_method = Some(method.to_owned());
    c.properties.authentication_data = data.map(Bytes::from);
    c
}

pub(crate) fn auth(reason: ReasonCode, method: Option<&str>, data: Option<Vec<u8>>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: starling_proto::PropertyValues {
            authentication_method: method.map(str::to_owned),
            authentication_data: data.map(Bytes::from),
            ..starling_proto::PropertyValues::default()
        }
        .into(),
    })
}

/// The AUTH packet the broker sends next; checks it names SCRAM-SHA-256.
pub(crate) async fn expect_auth(c: &mut RawClient, reason: ReasonCode) -> Vec<u8> {
    match c.expect_packet(WAIT).await {
        Packet::Auth(a) => {
            assert_eq!(a.reason, reason, "{a:?}");
            assert_eq!(
                a.properties.authentication_method.as_deref(),
                Some(SCRAM),
                "every AUTH names the method (MQTT-4.12.0-5)"
            );
            a.properties
                .authentication_data
                .as_ref()
                .map(|d| d.to_vec())
                .unwrap_or_default()
        }
        other => panic!("expected AUTH {reason:?}, got {other:?}"),
    }
}

/// Runs a SCRAM exchange at CONNECT up to the broker's answer to client-final: returns the
/// client, the CONNACK and the SCRAM state (to check the server signature).
pub(crate) async fn scram_connect(
    addr: SocketAddr,
    id: &str,
    (user, password): (&str, &str),
) -> (RawClient, ConnAck, ScramClient) {
    let mut scram = ScramClient::new(user, password);
    let mut c = RawClient::open(addr).await;
    c.version = V5;
    c.send(&Packet::Connect(Box::new(method_connect(
        id,
        SCRAM,
        Some(scram.client_first()),
    ))))
    .await;
    let server_first = expect_auth(&mut c, ReasonCode::ContinueAuthentication).await;
    let client_final = scram.client_final(&server_first);
    c.send(&auth(
        ReasonCode::ContinueAuthentication,
        Some(SCRAM),
        Some(client_final),
    ))
    .await;
    match c.expect_packet(WAIT).await {
        Packet::ConnAck(ack) => (c, ack, scram),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A successful SCRAM login; checks CONNACK's method and server signature.
pub(crate) async fn scram_login(addr: SocketAddr, id: &str, who: (&str, &str)) -> RawClient {
    let (c, ack, scram) = scram_connect(addr, id, who).await;
    assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
    assert_eq!(ack.properties.authentication_method.as_deref(), Some(SCRAM));
    let data = ack.properties.authentication_data.clone().unwrap();
    assert!(
        scram.server_final_ok(&data),
        "server signature: {:?}",
        String::from_utf8_lossy(&data)
    );
    c
}

/// Expects CONNACK `reason` then the close.
pub(crate) async fn expect_connack_then_close(c: &mut RawClient, reason: ReasonCode) -> ConnAck {
    let got = c.expect_closed(WAIT).await;
    match &got[..] {
        [Packet::ConnAck(ack)] => {
            assert_eq!(ack.reason, reason, "{ack:?}");
            assert!(
                ack.properties.authentication_method.is_none(),
                "no method on a refusal: {ack:?}"
            );
            ack.clone()
        }
        _ => panic!("expected CONNACK {reason:?} then close, got {got:?}"),
    }
}

pub(crate) async fn subscribe(c: &mut RawClient, filter: &str) -> ReasonCode {
    let pid = c.next_packet_id();
    c.send(&common::subscribe_packet(pid, filter, QoS::AtLeastOnce))
        .await;
    match c.expect_packet(WAIT).await {
        Packet::SubAck(s) => s.reasons[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes QoS 1 and returns the PUBACK reason, acknowledging any message that arrives
/// meanwhile (their payloads are returned too).
pub(crate) async fn publish(
    c: &mut RawClient,
    topic: &str,
    payload: &str,
) -> (ReasonCode, Vec<String>) {
    let (reason, got) = c.publish_qos1(topic, payload).await;
    let payloads = got
        .iter()
        .map(|p| String::from_utf8(p.payload.to_vec()).unwrap());
    (reason, payloads.collect())
}

/// The next PUBLISH's payload.
pub(crate) async fn received(c: &mut RawClient) -> String {
    match c.expect_packet(WAIT).await {
        Packet::Publish(p) => {
            if p.qos != QoS::AtMostOnce {
                c.send(&Packet::PubAck(starling_proto::PubAck::new(p.packet_id)))
                    .await;
            }
            String::from_utf8(p.payload.to_vec()).unwrap()
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}
