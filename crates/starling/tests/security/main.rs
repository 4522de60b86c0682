//! Security, black box: passwords, anonymous clients, ACLs on publish / subscribe / delivery,
//! `%c` / `%u` patterns, wildcards in client ids, reloads, TLS (server and client
//! certificates, made here with rcgen), WebSocket and secure WebSocket, per-address connection
//! limits, and the `starling passwd` command.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tls::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{
    RawClient, Recv, TestServer, WAIT, connect_packet, publish_packet, start_server_with,
    subscribe_packet,
};
use futures_util::{SinkExt, StreamExt};
use starling::config::{Config, IdentityField, ListenerConfig};
use starling_auth::PasswordFile;
use starling_auth::password::{HashKind, PasswordHash};
use starling_proto::{
    ConnAck, Connect, DecodeLimits, Packet, ProtocolVersion, PubAck, QoS, ReasonCode, Will,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "starling-security-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A password file with these users; fast PBKDF2 hashes (the formats are unit-tested in the
/// auth crate; argon2id goes through `starling passwd` below).
fn password_file(path: &Path, users: &[(&str, &str)]) {
    let mut f = PasswordFile::default();
    for (u, p) in users {
        f.set(
            u,
            PasswordHash::new(p.as_bytes(), HashKind::Pbkdf2Sha512 { iterations: 10 }).unwrap(),
        )
        .unwrap();
    }
    f.save(path).unwrap();
}

/// A listener on 127.0.0.1, port 0.
fn listener(protocol: &str) -> ListenerConfig {
    let mut l = ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    l.protocol = protocol.into();
    l
}

/// A config with these listeners; state in memory (these tests are about security, and
/// `start_server_with` gives the ones that start a server a data directory of their own).
fn config_with(listeners: Vec<ListenerConfig>) -> Config {
    let mut config = Config {
        listeners,
        ..Config::default()
    };
    config.storage.durability = starling::config::Durability::Memory;
    config.http.bind = ([127, 0, 0, 1], 0).into();
    config
}

async fn start(listeners: Vec<ListenerConfig>) -> TestServer {
    start_server_with(&config_with(listeners)).await
}

fn login(version: ProtocolVersion, id: &str, user: Option<&str>, pw: Option<&str>) -> Connect {
    let mut c = connect_packet(version, id);
    c.username = user.map(str::to_owned);
    c.password = pw.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    c
}

/// Sends CONNECT and returns the CONNACK (whatever its reason).
async fn connack(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
    let mut c = RawClient::open(addr).await;
    c.version = connect.protocol;
    c.send(&Packet::Connect(Box::new(connect))).await;
    match c.expect_packet(WAIT).await {
        Packet::ConnAck(a) => (c, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Expects a refusal with `reason` and then the close.
async fn expect_refused(addr: SocketAddr, connect: Connect, reason: ReasonCode) {
    let version = connect.protocol;
    let (mut c, ack) = connack(addr, connect).await;
    assert_eq!(
        ack.reason, reason,
        "{version:?}: CONNACK 0x{:02X}, expected 0x{:02X}",
        ack.reason as u8, reason as u8
    );
    assert!(!ack.session_present);
    c.expect_closed_silently().await;
}

async fn ok_client(addr: SocketAddr, connect: Connect) -> RawClient {
    RawClient::connect_with(addr, connect).await.0
}

/// Subscribes and returns the SUBACK reason.
async fn suback(c: &mut RawClient, filter: &str) -> ReasonCode {
    let pid = c.next_packet_id();
    c.send(&subscribe_packet(pid, filter, QoS::AtLeastOnce))
        .await;
    match c.expect_packet(WAIT).await {
        Packet::SubAck(a) => {
            assert_eq!(a.packet_id, pid);
            a.reasons[0]
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publishes at QoS 1 and returns the PUBACK reason.
async fn puback(c: &mut RawClient, topic: &str, payload: &str) -> ReasonCode {
    c.publish_qos1(topic, payload).await.0
}

/// Topics and payloads of the messages received within `within` (acknowledging them).
async fn received(c: &mut RawClient, within: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left).await {
            Recv::Packet(Packet::Publish(p)) => {
                if p.qos != QoS::AtMostOnce {
                    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                }
                got.push((
                    p.topic.as_str().to_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
            Recv::Packet(other) => panic!("unexpected {other:?}"),
            Recv::Timeout => return got,
            Recv::Closed => panic!("connection closed"),
        }
    }
}

/// Packets encoded back to back.
fn encode(packets: &[Packet], version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        starling_proto::encode(p, version, &mut buf).unwrap();
    }
    buf.to_vec()
}

// The tests, by topic.
mod acl;
#[path = "../common/mod.rs"]
mod common;
mod limits;
mod passwd;
mod passwords;
mod tls;
mod websocket;
