//! MQTT 5 enhanced authentication: SCRAM-SHA-256 exchanges (a client side written here, from
//! RFC 5802) against a broker on 127.0.0.1:0 whose listener offers `auth_methods =
//! ["SCRAM-SHA-256"]`; re-authentication; unknown methods (0x8C); the protocol errors of spec
//! 4.12 and 3.15; the bounds on the exchange; plain passwords against `$scram-sha-256$`
//! entries; and `starling passwd -H scram-sha-256`.
//!
//! rumqttc 0.25 sends the Authentication Method and Data of CONNECT and reads them in CONNACK,
//! but cannot answer an AUTH packet; its SCRAM tests go through a relay that does the
//! client's continue step, which is what such a library's authentication hook would do. The
//! raw-client tests make the cases no library produces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use common::{RawClient, TestServer, WAIT, connect_packet, publish_packet};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use starling::config::{Config, ListenerConfig};
use starling_auth::password::{HashKind, PasswordHash};
use starling_auth::{
    AuthExchange, AuthStep, DenyReason, EnhancedAuth, ExchangeInfo, PasswordFile,
    StandardAuthenticator,
};
use starling_broker::connection::MAX_AUTH_STEPS;
use starling_broker::{Broker, Close, Connection, Features, Limits, ListenerAccess, PeerInfo};
use starling_proto::{
    Auth, ConnAck, Connect, DecodeLimits, Packet, ProtocolVersion, QoS, ReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SCRAM: &str = "SCRAM-SHA-256";
const V5: ProtocolVersion = ProtocolVersion::V5;

// ---------------------------------------------------------------------------------------------
// The client side of SCRAM-SHA-256 (RFC 5802 section 3)

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

static NONCES: AtomicU64 = AtomicU64::new(0);

/// One SCRAM-SHA-256 login as a client does it.
#[derive(Debug)]
struct ScramClient {
    password: Vec<u8>,
    nonce: String,
    first_bare: String,
    auth_message: String,
    server_key: [u8; 32],
}

impl ScramClient {
    fn new(user: &str, password: &str) -> Self {
        let n = NONCES.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let nonce = format!("c{}x{n}y{t}", std::process::id());
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            password: password.as_bytes().to_vec(),
            first_bare: format!("n={name},r={nonce}"),
            nonce,
            auth_message: String::new(),
            server_key: [0; 32],
        }
    }

    fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// Parses server-first (checking it), returns client-final with the proof.
    fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
        let server_first = std::str::from_utf8(server_first).unwrap();
        let (nonce, salt, iterations) = parse_server_first(server_first);
        assert!(
            nonce.starts_with(&self.nonce) && nonce.len() >= self.nonce.len() + 16,
            "server nonce must extend ours: {server_first}"
        );
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        self.server_key = hmac(&salted, b"Server Key");
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Whether server-final carries the server signature only the real server can make.
    fn server_final_ok(&self, data: &[u8]) -> bool {
        let expected = format!(
            "v={}",
            B64.encode(hmac(&self.server_key, self.auth_message.as_bytes()))
        );
        data == expected.as_bytes()
    }
}

/// (combined nonce, salt, iterations) of a server-first message.
fn parse_server_first(s: &str) -> (String, Vec<u8>, u32) {
    let mut fields = s.split(',');
    let nonce = fields
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap()
        .to_owned();
    let salt = B64
        .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
        .unwrap();
    let iterations = fields
        .next()
        .unwrap()
        .strip_prefix("i=")
        .unwrap()
        .parse()
        .unwrap();
    (nonce, salt, iterations)
}

// ---------------------------------------------------------------------------------------------
// Broker and packets

/// A broker whose listener offers SCRAM-SHA-256 over a password file with alice and carol
/// (SCRAM entries) and bob (a `$7$` entry, which SCRAM cannot use), and an ACL that keeps
/// alice to `alice/#`.
struct Fixture {
    server: TestServer,
    passwd: PathBuf,
    _dir: tempfile::TempDir,
}

const ALICE: (&str, &str) = ("alice", "wonderland");
const CAROL: (&str, &str) = ("carol", "carol's password");
const BOB: (&str, &str) = ("bob", "builder");

fn write_users(path: &Path) {
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

fn scram_listener(passwd: &Path, acl: Option<&Path>) -> ListenerConfig {
    let mut l = ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    l.password_file = Some(passwd.to_owned());
    l.acl_file = acl.map(Path::to_owned);
    l.allow_anonymous = Some(false);
    l.auth_methods = vec![SCRAM.to_owned()];
    l
}

async fn fixture(tune: impl FnOnce(&mut Config)) -> Fixture {
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
    tune(&mut config);
    let server = common::start_server_with(&config).await;
    Fixture {
        server,
        passwd,
        _dir: dir,
    }
}

fn method_connect(id: &str, method: &str, data: Option<Vec<u8>>) -> Connect {
    let mut c = connect_packet(V5, id);
    c.properties.authentication_method = Some(method.to_owned());
    c.properties.authentication_data = data.map(Bytes::from);
    c
}

fn auth(reason: ReasonCode, method: Option<&str>, data: Option<Vec<u8>>) -> Packet {
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
async fn expect_auth(c: &mut RawClient, reason: ReasonCode) -> Vec<u8> {
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
async fn scram_connect(
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
async fn scram_login(addr: SocketAddr, id: &str, who: (&str, &str)) -> RawClient {
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
async fn expect_connack_then_close(c: &mut RawClient, reason: ReasonCode) -> ConnAck {
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

async fn subscribe(c: &mut RawClient, filter: &str) -> ReasonCode {
    let pid = c.next_packet_id();
    c.send(&common::subscribe_packet(pid, filter, QoS::AtLeastOnce))
        .await;
    match c.expect_packet(WAIT).await {
        Packet::SubAck(s) => s.reasons[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes QoS 1 and returns the PUBACK reason, acknowledging any message that arrives
/// meanwhile (returned too).
async fn publish(c: &mut RawClient, topic: &str, payload: &str) -> (ReasonCode, Vec<String>) {
    let pid = c.next_packet_id();
    c.send(&publish_packet(
        topic,
        QoS::AtLeastOnce,
        pid,
        payload.as_bytes(),
    ))
    .await;
    let mut got = Vec::new();
    loop {
        match c.expect_packet(WAIT).await {
            Packet::PubAck(a) if a.packet_id == pid => return (a.reason, got),
            Packet::Publish(p) => {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                c.send(&Packet::PubAck(starling_proto::PubAck::new(p.packet_id)))
                    .await;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// The next PUBLISH's payload.
async fn received(c: &mut RawClient) -> String {
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

// ---------------------------------------------------------------------------------------------
// SCRAM at CONNECT

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

// ---------------------------------------------------------------------------------------------
// Protocol errors and bounds

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

// ---------------------------------------------------------------------------------------------
// Re-authentication

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

// ---------------------------------------------------------------------------------------------
// The protocol machine with a method of the test's own, in memory

/// `TEST`: data `user:NAME` authenticates as NAME (with final data `welcome`), `fail` fails
/// with 0x86, anything else asks for more.
#[derive(Debug)]
struct TestMethod;

#[derive(Debug)]
struct TestExchange;

impl EnhancedAuth for TestMethod {
    fn method(&self) -> &str {
        "TEST"
    }
    fn exchange(&self) -> Box<dyn AuthExchange> {
        Box::new(TestExchange)
    }
}

impl AuthExchange for TestExchange {
    fn start(&mut self, _: &ExchangeInfo<'_>, data: Option<&[u8]>) -> AuthStep {
        self.next(data)
    }
    fn next(&mut self, data: Option<&[u8]>) -> AuthStep {
        let data = data.unwrap_or_default();
        if let Some(name) = data.strip_prefix(b"user:") {
            AuthStep::Success {
                username: String::from_utf8(name.to_vec()).unwrap(),
                data: Some(b"welcome".to_vec()),
            }
        } else if data == b"fail" {
            AuthStep::Fail(DenyReason::BadUserNameOrPassword)
        } else {
            AuthStep::Continue(b"more?".to_vec())
        }
    }
}

struct Machine {
    broker: Arc<Broker>,
    conn: Connection,
    now: Instant,
}

impl Machine {
    fn new() -> Self {
        let now = Instant::now();
        let broker = Arc::new(Broker::with_features(
            Limits::default(),
            Features::default(),
            now,
        ));
        let access = ListenerAccess {
            name: Arc::from("test"),
            authenticator: Arc::new(StandardAuthenticator {
                allow_anonymous: false,
                passwords: None,
                identity_as_username: false,
            }),
            authorizer: None,
            enhanced: vec![Arc::new(TestMethod)],
        };
        let conn = Connection::new(starling_broker::wake::Flag::new(), None, now)
            .with_access(Arc::new(access), PeerInfo::default());
        Self { broker, conn, now }
    }

    /// `Err` with the reason once the connection has closed.
    fn result(&self) -> Result<(), Close> {
        match self.conn.close_reason() {
            Some(c) => Err(c.clone()),
            None => Ok(()),
        }
    }

    fn send(&mut self, p: Packet) -> Result<(), Close> {
        self.conn.handle_packet(&self.broker, self.now, p);
        self.result()
    }

    fn deadline(&self) -> Option<Instant> {
        self.conn.poll_timeout(&self.broker)
    }

    fn timeout(&mut self, at: Instant) -> Result<(), Close> {
        self.conn.handle_timeout(&self.broker, at);
        self.result()
    }

    fn output(&mut self) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        self.conn.poll_transmit(&self.broker, self.now, &mut buf);
        let mut out = Vec::new();
        while let Some(p) = starling_proto::decode(&mut buf, V5, &DecodeLimits::default()).unwrap()
        {
            out.push(p);
        }
        out
    }

    fn connect(&mut self, data: &[u8]) -> Result<(), Close> {
        let c = method_connect("m", "TEST", Some(data.to_vec()));
        self.send(Packet::Connect(Box::new(c)))
    }

    fn auth(&mut self, reason: ReasonCode, data: &[u8]) -> Result<(), Close> {
        let p = Packet::Auth(Auth {
            reason,
            properties: starling_proto::PropertyValues {
                authentication_method: Some("TEST".into()),
                authentication_data: Some(Bytes::copy_from_slice(data)),
                ..starling_proto::PropertyValues::default()
            }
            .into(),
        });
        self.send(p)
    }

    fn connected(&mut self) {
        self.connect(b"user:alice").unwrap();
        match &self.output()[..] {
            [Packet::ConnAck(ack)] => {
                assert_eq!(ack.reason, ReasonCode::Success);
                assert_eq!(
                    ack.properties.authentication_method.as_deref(),
                    Some("TEST")
                );
                assert_eq!(
                    ack.properties.authentication_data.as_deref(),
                    Some(&b"welcome"[..])
                );
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

fn auth_reason(packets: &[Packet]) -> Option<ReasonCode> {
    match packets {
        [Packet::Auth(a)] => Some(a.reason),
        _ => None,
    }
}

#[test]
fn exchange_is_bounded_in_steps() {
    let mut m = Machine::new();
    m.connect(b"hello").unwrap();
    assert_eq!(
        auth_reason(&m.output()),
        Some(ReasonCode::ContinueAuthentication)
    );
    for _ in 0..MAX_AUTH_STEPS {
        m.auth(ReasonCode::ContinueAuthentication, b"again")
            .unwrap();
        assert_eq!(
            auth_reason(&m.output()),
            Some(ReasonCode::ContinueAuthentication)
        );
    }
    let closing = m
        .auth(ReasonCode::ContinueAuthentication, b"again")
        .unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    match &m.output()[..] {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK 0x87, got {other:?}"),
    }
    assert!(!m.conn.is_active());
}

#[test]
fn a_failed_exchange_is_refused_with_its_reason() {
    let mut m = Machine::new();
    m.connect(b"hello").unwrap();
    m.output();
    let closing = m
        .auth(ReasonCode::ContinueAuthentication, b"fail")
        .unwrap_err();
    assert_eq!(closing.reason, ReasonCode::BadUserNameOrPassword);
    match &m.output()[..] {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword),
        other => panic!("expected CONNACK 0x86, got {other:?}"),
    }
}

#[test]
fn connect_timeout_applies_during_the_exchange() {
    let mut m = Machine::new();
    m.connect(b"hello").unwrap();
    m.output();
    let timeout = Duration::from_secs(Limits::default().connect_timeout_secs);
    assert_eq!(m.deadline(), Some(m.now + timeout));
    let closing = m.timeout(m.now + timeout).unwrap_err();
    assert_eq!(closing.reason, ReasonCode::MaximumConnectTime);
}

#[test]
fn reauthentication_in_memory() {
    let mut m = Machine::new();
    m.connected();
    // One step, then success with the same identity.
    m.auth(ReasonCode::ReAuthenticate, b"hello").unwrap();
    assert_eq!(
        auth_reason(&m.output()),
        Some(ReasonCode::ContinueAuthentication)
    );
    m.auth(ReasonCode::ContinueAuthentication, b"user:alice")
        .unwrap();
    match &m.output()[..] {
        [Packet::Auth(a)] => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(a.properties.authentication_method.as_deref(), Some("TEST"));
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"welcome"[..])
            );
        }
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    // Bounded in steps: the 0x19 and the 0x18s together.
    m.auth(ReasonCode::ReAuthenticate, b"hello").unwrap();
    m.output();
    for _ in 1..MAX_AUTH_STEPS {
        m.auth(ReasonCode::ContinueAuthentication, b"again")
            .unwrap();
        assert_eq!(
            auth_reason(&m.output()),
            Some(ReasonCode::ContinueAuthentication)
        );
    }
    let closing = m
        .auth(ReasonCode::ContinueAuthentication, b"again")
        .unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    match &m.output()[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
}

#[test]
fn reauthentication_that_fails_as_someone_else_or_too_slow_is_refused() {
    let mut m = Machine::new();
    m.connected();
    let closing = m.auth(ReasonCode::ReAuthenticate, b"fail").unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    assert!(
        matches!(&m.output()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized)
    );

    let mut m = Machine::new();
    m.connected();
    let closing = m
        .auth(ReasonCode::ReAuthenticate, b"user:mallory")
        .unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    assert!(
        matches!(&m.output()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized)
    );

    let mut m = Machine::new();
    m.connected();
    m.auth(ReasonCode::ReAuthenticate, b"hello").unwrap();
    m.output();
    let timeout = Duration::from_secs(Limits::default().connect_timeout_secs);
    assert_eq!(m.deadline(), Some(m.now + timeout), "before keep-alive");
    m.timeout(m.now + timeout / 2).unwrap();
    let closing = m.timeout(m.now + timeout).unwrap_err();
    assert_eq!(closing.reason, ReasonCode::NotAuthorized);
    assert!(
        matches!(&m.output()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized)
    );
}

// ---------------------------------------------------------------------------------------------
// rumqttc

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

// ---------------------------------------------------------------------------------------------
// starling passwd -H scram-sha-256

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_writes_scram_entries_the_broker_uses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("passwd")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let f = file.to_str().unwrap();
    let out = run(&["-c", "-b", "-H", "scram-sha-256", f, "dora", "explorer"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["-b", "-H", "scram-sha-256", "-I", "5000", f, "eve", "e"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["-b", f, "frank", "f"]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("dora:$scram-sha-256$4096$"), "{text}");
    assert!(text.contains("\neve:$scram-sha-256$5000$"), "{text}");
    assert!(
        text.contains("\nfrank:$argon2id$"),
        "argon2id stays the default: {text}"
    );
    let out = run(&["-b", "-H", "scram-sha-1", f, "x", "y"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scram-sha-256"));

    let mut config = Config {
        listeners: vec![scram_listener(&file, None)],
        ..Config::default()
    };
    config.limits.sys_interval_secs = 0;
    let server = common::start_server_with(&config).await;
    scram_login(server.addr, "dora", ("dora", "explorer")).await;
    let (_, ack, _) = scram_connect(server.addr, "dora-2", ("dora", "Explorer")).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_password_file_applies_to_the_next_exchange() {
    let f = fixture(|_| {}).await;
    scram_login(f.server.addr, "before", ALICE).await;
    let mut file = PasswordFile::load(&f.passwd).unwrap();
    file.set(
        "alice",
        PasswordHash::new(b"new password", HashKind::ScramSha256 { iterations: 4096 }).unwrap(),
    )
    .unwrap();
    file.save(&f.passwd).unwrap();
    assert!(f.server.reload().is_empty());
    let (_, ack, _) = scram_connect(f.server.addr, "old", ALICE).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    scram_login(f.server.addr, "new", ("alice", "new password")).await;
    f.server.shutdown().await;
}
