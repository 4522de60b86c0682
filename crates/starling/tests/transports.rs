//! Listener transports driven with raw MQTT bytes: a Unix domain socket listener (served,
//! its file's mode, the file removed at shutdown) and a PROXY protocol listener (the
//! header's source address is the session's peer address in the broker core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use starling::config::Config;
use starling::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id `raw`.
const CONNECT: [u8; 17] = [
    0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, b'r', b'a', b'w',
];
const CONNACK_OK: [u8; 4] = [0x20, 2, 0, 0];

async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, send: &[u8], want: &[u8]) {
    s.write_all(send).await.unwrap();
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_listener_serves_and_removes_its_file_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mqtt.sock");
    let text = format!(
        "data_dir = {:?}\n[http]\nenabled = false\n[storage]\ndurability = \"memory\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\n\
         [[listener]]\nprotocol = \"unix\"\npath = {:?}\nmode = \"0600\"\n",
        dir.path().join("data").display().to_string(),
        sock.display().to_string(),
    );
    let config = Config::parse(&text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    exchange(&mut s, &CONNECT, &CONNACK_OK).await;
    // PINGREQ, PINGRESP.
    exchange(&mut s, &[0xc0, 0], &[0xd0, 0]).await;
    drop(s);
    server.shutdown().await;
    assert!(!sock.exists(), "the socket file is left after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_gives_the_session_its_peer_address() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[http]\nenabled = false\n[storage]\ndurability = \"memory\"\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = \"any\"\n\
         proxy_protocol_trusted = [\"127.0.0.0/8\"]\n",
        dir.path().join("data").display().to_string(),
    );
    let config = Config::parse(&text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let addr = server.local_addrs()[0];
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = b"PROXY TCP6 2001:db8::42 ::1 50000 1883\r\n".to_vec();
    bytes.extend_from_slice(&CONNECT);
    exchange(&mut s, &bytes, &CONNACK_OK).await;
    let peers: Vec<_> = server
        .broker()
        .sessions_snapshot()
        .iter()
        .filter_map(|s| s.lock().client_info().and_then(|i| i.peer))
        .collect();
    assert_eq!(peers, ["[2001:db8::42]:50000".parse().unwrap()]);
    drop(s);
    server.shutdown().await;
}
