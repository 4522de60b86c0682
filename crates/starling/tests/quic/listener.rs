//! The QUIC listener seen through quinn directly (Starling's own client module and codec):
//! a client whose UDP port changes mid-session, the MQTT keep-alive closing the QUIC
//! connection, the limits every listener has (connections, bans, packet size), 0-RTT off
//! unless configured, shutdown closing the endpoint, and `starling pub`/`sub --quic`.

use std::net::UdpSocket as StdUdpSocket;
use std::time::Duration;

use bytes::BytesMut;
use starling::quic::client::{QuicStream, connect};
use starling_broker::bans::{Ban, BanKind};
use starling_proto::{
    ConnAck, Connect, DecodeLimits, Packet, ProtocolVersion, QoS, ReasonCode, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::{WAIT, publish_packet, subscribe_packet};
use super::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// MQTT over a [`QuicStream`] through the codec, with no client logic of its own.
struct QuicMqtt {
    stream: QuicStream,
    rbuf: BytesMut,
}

impl QuicMqtt {
    async fn open(s: &QuicServer) -> Result<Self, starling::quic::client::QuicError> {
        let stream = timeout(WAIT, connect(s.quic, "localhost", s.pki.client_tls(), None))
            .await
            .expect("QUIC handshake in time")?;
        Ok(Self {
            stream,
            rbuf: BytesMut::new(),
        })
    }

    async fn connect(s: &QuicServer, connect: Connect) -> (Self, ConnAck) {
        let mut c = Self::open(s).await.unwrap();
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.expect(WAIT).await {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        let mut buf = BytesMut::new();
        encode(p, V5, &mut buf).unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    /// The next packet, or `None` if the stream or connection ended first.
    async fn recv(&mut self, within: Duration) -> Option<Packet> {
        let limits = DecodeLimits::default();
        timeout(within, async {
            loop {
                if let Some(p) = starling_proto::decode(&mut self.rbuf, V5, &limits).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or the end of the connection in time")
    }

    async fn expect(&mut self, within: Duration) -> Packet {
        self.recv(within).await.expect("a packet, not the end")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_quinn_client_rebinding_its_udp_socket_keeps_its_session_and_stream() {
    let s = start(|_, _| {}).await;
    let (mut c, ack) = QuicMqtt::connect(&s, Connect::new(V5, "rebinder")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    c.send(&subscribe_packet(1, "rb/#", QoS::AtLeastOnce)).await;
    assert!(matches!(c.expect(WAIT).await, Packet::SubAck(_)));
    let before = c.stream.endpoint().local_addr().unwrap();

    let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    c.stream.endpoint().rebind(socket).unwrap();
    let after = c.stream.endpoint().local_addr().unwrap();
    assert_ne!(before.port(), after.port(), "the client's UDP port changed");

    // The same MQTT connection goes on from the new port: a publish is acknowledged and
    // comes back to the subscription made before the move.
    c.send(&publish_packet("rb/x", QoS::AtLeastOnce, 7, b"moved"))
        .await;
    let mut got = (false, false);
    while got != (true, true) {
        match c.expect(WAIT).await {
            Packet::PubAck(a) if a.packet_id == 7 => got.0 = true,
            Packet::Publish(p) => {
                assert_eq!(p.topic.as_str(), "rb/x");
                c.send(&Packet::PubAck(starling_proto::PubAck::new(p.packet_id)))
                    .await;
                got.1 = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(c.stream.connection().remote_address(), s.quic);
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_keep_alive_closes_a_silent_quic_connection() {
    let s = start(|_, _| {}).await;
    let mut connect = Connect::new(V5, "sleepy");
    connect.keep_alive = 1;
    let (c, _) = QuicMqtt::connect(&s, connect).await;
    let started = tokio::time::Instant::now();
    // 1.5 × the keep-alive of silence, not QUIC's own idle timeout (30 s at least).
    timeout(Duration::from_secs(6), c.stream.connection().closed())
        .await
        .expect("the broker closed the QUIC connection");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_limits_apply_to_quic() {
    let s = start(|config, _| {
        config.listeners[1].max_connections = Some(1);
        config.limits.max_packet_size = 1024;
    })
    .await;
    let (mut first, _) = QuicMqtt::connect(&s, Connect::new(V5, "first")).await;
    // The listener's cap: a second connection is refused before its handshake.
    assert!(QuicMqtt::open(&s).await.is_err(), "over the listener's cap");
    assert_eq!(s.server.broker().metrics.connections_refused.get(), 1);
    // Packet size: as on TCP, DISCONNECT 0x95 and the end.
    first
        .send(&publish_packet("big", QoS::AtMostOnce, 0, &[b'x'; 2000]))
        .await;
    match first.expect(WAIT).await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::PacketTooLarge),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(first.recv(WAIT).await.is_none(), "then the end");
    drop(first);
    // The permit came back: a new client gets in, until its address is banned.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = QuicMqtt::open(&s).await {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ok.expect("a new connection once the first has ended"));
    s.server
        .broker()
        .bans
        .add(Ban {
            kind: BanKind::Address,
            value: "127.0.0.1".into(),
            reason: "test".into(),
            since: std::time::Instant::now(),
            duration: None,
        })
        .unwrap();
    let banned = s.server.broker().metrics.connections_banned.get();
    assert!(QuicMqtt::open(&s).await.is_err(), "a banned address");
    assert_eq!(
        s.server.broker().metrics.connections_banned.get(),
        banned + 1
    );
    s.server.shutdown().await;
}

/// Connects twice with one client configuration (the second time on the first's TLS session
/// ticket, with 0-RTT); true if the second CONNECT went as 0-RTT data and was accepted.
async fn second_connect_was_0rtt(s: &QuicServer) -> bool {
    let mut tls = s.pki.client_tls();
    tls.enable_early_data = true;
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut accepted = false;
    for round in 0..2 {
        let connecting = endpoint
            .connect_with(config.clone(), s.quic, "localhost")
            .unwrap();
        let (conn, zero_rtt) = match connecting.into_0rtt() {
            Ok((conn, zero_rtt)) => (conn, Some(zero_rtt)),
            Err(connecting) => (timeout(WAIT, connecting).await.unwrap().unwrap(), None),
        };
        assert!(round == 1 || zero_rtt.is_none(), "no ticket the first time");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut buf = BytesMut::new();
        let id = format!("early-{round}");
        encode(
            &Packet::Connect(Box::new(Connect::new(V5, &id))),
            V5,
            &mut buf,
        )
        .unwrap();
        send.write_all(&buf).await.unwrap();
        if let Some(z) = zero_rtt {
            accepted = timeout(WAIT, z).await.unwrap();
            if !accepted {
                // Rejected 0-RTT data is lost: the CONNECT goes again, now in 1-RTT.
                let (s2, r2) = conn.open_bi().await.unwrap();
                (send, recv) = (s2, r2);
                send.write_all(&buf).await.unwrap();
            }
        }
        let mut rbuf = BytesMut::new();
        let ack = timeout(WAIT, async {
            loop {
                if let Some(p) =
                    starling_proto::decode(&mut rbuf, V5, &DecodeLimits::default()).unwrap()
                {
                    return p;
                }
                assert!(recv.read_buf(&mut rbuf).await.unwrap() > 0);
            }
        })
        .await
        .unwrap();
        assert!(matches!(ack, Packet::ConnAck(a) if a.reason == ReasonCode::Success));
        // Session tickets come after the handshake; give them a moment before closing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.close(0u32.into(), b"");
    }
    endpoint.wait_idle().await;
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_is_refused_unless_the_listener_enables_it() {
    let s = start(|_, _| {}).await;
    assert!(!second_connect_was_0rtt(&s).await, "0-RTT off by default");
    s.server.shutdown().await;
    let s = start(|config, _| config.listeners[1].quic_0rtt = true).await;
    assert!(second_connect_was_0rtt(&s).await, "quic_0rtt = true");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_quic_clients_and_closes_the_endpoint() {
    let s = start(|_, _| {}).await;
    let (mut c, _) = QuicMqtt::connect(&s, Connect::new(V5, "stays")).await;
    let quic = s.quic;
    timeout(Duration::from_secs(10), s.server.shutdown())
        .await
        .expect("shutdown in time");
    match c.recv(WAIT).await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    timeout(WAIT, c.stream.connection().closed())
        .await
        .expect("the QUIC connection closed");
    // The UDP port is free again (quinn's endpoint task lets go of the socket once it has seen
    // the endpoint closed: a moment after shutdown returns).
    let mut bound = StdUdpSocket::bind(quic);
    for _ in 0..100 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = StdUdpSocket::bind(quic);
    }
    bound.expect("the endpoint's socket is closed");
}

/// Runs the `starling` binary with `args`, at most `within`; its standard output.
fn run_cli(args: &[String], within: Duration) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "starling {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starling_pub_and_sub_connect_over_quic() {
    let s = start(|_, _| {}).await;
    let common = |cmd: &str| -> Vec<String> {
        let port = s.quic.port().to_string();
        let ca = s.pki.ca_file.display().to_string();
        [
            cmd,
            "--quic",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-V",
            "5",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut publish = common("pub");
    publish.extend(["-t", "cli/q", "-m", "over quic", "-q", "1", "-r"].map(String::from));
    tokio::task::spawn_blocking(move || run_cli(&publish, Duration::from_secs(10)))
        .await
        .unwrap();
    // The retained message comes back to a subscriber, which takes a URL this time.
    let url = format!("quic://127.0.0.1:{}/cli/q", s.quic.port());
    let ca = s.pki.ca_file.display().to_string();
    let subscribe = ["sub", "-L", &url, "--cafile", &ca, "-C", "1", "-W", "10"].map(String::from);
    let out = tokio::task::spawn_blocking(move || run_cli(&subscribe, Duration::from_secs(12)))
        .await
        .unwrap();
    assert_eq!(out.trim(), "over quic");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_clients_show_in_the_admin_api_and_the_metrics() {
    let s = start(|config, _| {
        config.http.enabled = true;
        config.http.bind = ([127, 0, 0, 1], 0).into();
    })
    .await;
    let (_c, _) = QuicMqtt::connect(&s, Connect::new(V5, "seen")).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", s.server.http());
    let clients: serde_json::Value = http
        .get(format!("{base}/api/v1/clients"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen = &clients["items"][0];
    assert_eq!(seen["client_id"], "seen");
    assert_eq!(seen["listener"], "quic 127.0.0.1:0");
    assert!(
        seen["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{seen}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("starling_connections_accepted_total{listener=\"quic 127.0.0.1:0\"} 1"),
        "{metrics}"
    );
    s.server.shutdown().await;
}

/// A quinn client with `alpn` and the test CA; its connection once the handshake is done.
async fn raw_quinn(s: &QuicServer, alpn: &[u8]) -> Result<quinn::Connection, String> {
    let mut tls = s.pki.client_tls();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint.connect_with(config, s.quic, "localhost").unwrap();
    timeout(WAIT, connecting)
        .await
        .expect("handshake ends in time")
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_per_connection_alpn_mqtt_and_a_stream_within_the_connect_timeout() {
    let s = start(|config, _| config.limits.connect_timeout_secs = 1).await;
    // Another application protocol: no connection.
    assert!(raw_quinn(&s, b"h3").await.is_err());
    // One bidirectional stream, no unidirectional ones: the client gets no credit for more.
    let (c, _) = QuicMqtt::connect(&s, Connect::new(V5, "one-stream")).await;
    let conn = c.stream.connection();
    assert!(
        timeout(Duration::from_millis(300), conn.open_bi())
            .await
            .is_err(),
        "a second bidirectional stream"
    );
    assert!(
        timeout(Duration::from_millis(300), conn.open_uni())
            .await
            .is_err(),
        "a unidirectional stream"
    );
    // A connection that opens no stream is closed once the CONNECT timeout has passed.
    let idle = raw_quinn(&s, b"mqtt").await.unwrap();
    let reason = timeout(Duration::from_secs(5), idle.closed())
        .await
        .expect("closed by the broker");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(2)),
        "{reason:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_gives_new_quic_connections_the_new_certificate() {
    let s = start(|_, _| {}).await;
    let (old, _) = QuicMqtt::connect(&s, Connect::new(V5, "before")).await;
    let next = Pki::new();
    std::fs::copy(&next.cert_file, &s.pki.cert_file).unwrap();
    std::fs::copy(&next.key_file, &s.pki.key_file).unwrap();
    assert!(s.server.reload().is_empty(), "the new files load");
    // New connections get the new certificate: a client of the old CA is refused, one of the
    // new CA gets in; the connection from before goes on.
    assert!(
        QuicMqtt::open(&s).await.is_err(),
        "the old CA no longer fits"
    );
    let stream = connect(s.quic, "localhost", next.client_tls(), None).await;
    assert!(stream.is_ok(), "the new CA fits: {stream:?}");
    assert!(old.stream.connection().close_reason().is_none());
    s.server.shutdown().await;
}
