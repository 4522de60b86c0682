//! Helpers shared by the black-box tests: an in-process server on an ephemeral port, a raw
//! MQTT client over TCP built on the codec (valid packets via `starling_proto::encode`, any
//! bytes via `send_raw`), a probe client that proves the broker still routes messages, and
//! byte-level builders for hand-made (malformed) packets. The `rumqttc` clients are in
//! [`rumqtt`].
//!
//! Every wait is bounded: a helper that does not get what it expects in time panics.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use starling::config::Config;
use starling::server::Server;
use starling_broker::{Broker, Limits};
use starling_proto::{
    ConnAck, Connect, DecodeLimits, Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode,
    Subscribe, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

pub(crate) mod rumqtt;

/// Default bound for waiting on something the broker should do promptly.
pub(crate) const WAIT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Server

/// A broker running in this process, bound to an ephemeral port on 127.0.0.1.
#[derive(Debug)]
pub(crate) struct TestServer {
    server: Server,
    /// The listener's address.
    pub(crate) addr: SocketAddr,
    /// The data directory (the store, in the default `sync` durability), removed on drop.
    _data: tempfile::TempDir,
}

/// Starts a server with default limits, adjusted by `tune`.
pub(crate) async fn start_server(tune: impl FnOnce(&mut Limits)) -> TestServer {
    start_server_config(|config| tune(&mut config.limits)).await
}

/// Starts a server with the default config on 127.0.0.1:0, adjusted by `tweak`.
pub(crate) async fn start_server_config(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::default();
    config.http.bind = ([127, 0, 0, 1], 0).into();
    config.listeners[0].bind = SocketAddr::from(([127, 0, 0, 1], 0));
    tweak(&mut config);
    start_server_with(&config).await
}

/// Starts a server from a full config (the first listener should bind port 0).
/// Its data directory is a fresh temporary one.
pub(crate) async fn start_server_with(config: &Config) -> TestServer {
    install_panic_counter();
    let data = tempfile::tempdir().expect("temporary data directory");
    let mut config = config.clone();
    config.data_dir = data.path().to_path_buf();
    let server = Server::start(&config).await.expect("server starts");
    let addr = server.local_addrs()[0];
    TestServer {
        server,
        addr,
        _data: data,
    }
}

impl TestServer {
    /// The broker core (metrics, limits).
    pub(crate) fn broker(&self) -> &Arc<Broker> {
        self.server.broker()
    }

    /// Reloads password files, ACL files and certificates (what SIGHUP does); returns the
    /// errors, if any.
    pub(crate) fn reload(&self) -> Vec<anyhow::Error> {
        self.server.reload()
    }

    /// The HTTP listener's address, if it runs.
    pub(crate) fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    /// The HTTP listener's address.
    pub(crate) fn http(&self) -> SocketAddr {
        self.server.http_addr().expect("the HTTP listener runs")
    }

    /// Every bound address, in listener order.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// Graceful shutdown (bounded by the server's own grace period).
    pub(crate) async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Panics outside the test code

static PANICS_OUTSIDE_TESTS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();

/// Counts panics whose location is not in a test file (i.e. in the broker, the server or the
/// codec), on top of the default hook. The broker runs its connections as tokio tasks, so a
/// panic there would otherwise only show as a dropped connection.
pub(crate) fn install_panic_counter() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().replace('\\', "/").contains("tests/"));
            if !in_tests {
                PANICS_OUTSIDE_TESTS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Panics seen so far outside test code (see [`install_panic_counter`]).
pub(crate) fn broker_panics() -> usize {
    PANICS_OUTSIDE_TESTS.load(Ordering::SeqCst)
}

/// Runs `f` as a task and returns the message it panics with; panics if `f` completes.
pub(crate) async fn panic_message<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> String {
    let err = match tokio::spawn(f).await {
        Ok(_) => panic!("expected a panic, but the future completed"),
        Err(e) => e,
    };
    assert!(err.is_panic(), "{err}");
    let payload = err.into_panic();
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Like [`panic_message`], and `f` must panic within a second: a check on a dead connection
/// fails at once rather than waiting out its bound.
pub(crate) async fn panic_message_at_once<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> String {
    timeout(Duration::from_secs(1), panic_message(f))
        .await
        .expect("no panic within a second")
}

// ---------------------------------------------------------------------------------------------
// Raw client

/// What [`RawClient::recv`] saw.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Recv {
    /// A whole packet.
    Packet(Packet),
    /// End of stream or a reset: the broker closed the connection.
    Closed,
    /// Nothing within the time allowed.
    Timeout,
}

/// A TCP connection speaking MQTT through the codec, with no client logic of its own.
#[derive(Debug)]
pub(crate) struct RawClient {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Level used to encode what is sent and decode what is received.
    pub(crate) version: ProtocolVersion,
    next_id: u16,
}

impl RawClient {
    /// Opens a TCP connection and sends nothing.
    pub(crate) async fn open(addr: SocketAddr) -> Self {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect in time")
            .expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            version: ProtocolVersion::V311,
            next_id: 0,
        }
    }

    /// Opens a connection, sends a clean-start CONNECT for `version` and waits for a
    /// successful CONNACK, which is returned.
    pub(crate) async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
    ) -> (Self, ConnAck) {
        Self::connect_with(addr, connect_packet(version, client_id)).await
    }

    /// Like [`Self::connect`] with a CONNECT of the caller's making.
    pub(crate) async fn connect_with(addr: SocketAddr, connect: Connect) -> (Self, ConnAck) {
        let mut c = Self::open(addr).await;
        c.version = connect.protocol;
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.expect_packet(WAIT).await {
            Packet::ConnAck(ack) => {
                assert_eq!(ack.reason, ReasonCode::Success, "CONNACK refused: {ack:?}");
                (c, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A fresh non-zero packet identifier.
    pub(crate) fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Publishes at QoS 1 and waits for its PUBACK; returns its reason and the messages that
    /// arrived meanwhile (each acknowledged).
    pub(crate) async fn publish_qos1(
        &mut self,
        topic: &str,
        payload: &str,
    ) -> (ReasonCode, Vec<Publish>) {
        let pid = self.next_packet_id();
        let publish = publish_packet(topic, QoS::AtLeastOnce, pid, payload.as_bytes());
        self.send(&publish).await;
        let mut got = Vec::new();
        loop {
            match self.expect_packet(WAIT).await {
                Packet::PubAck(a) if a.packet_id == pid => return (a.reason, got),
                Packet::Publish(p) => {
                    if p.qos != QoS::AtMostOnce {
                        self.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                    }
                    got.push(p);
                }
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// Encodes and sends one packet; panics if it cannot be written.
    pub(crate) async fn send(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        starling_proto::encode(packet, self.version, &mut buf).expect("encodable packet");
        self.send_raw(&buf).await.expect("write to broker");
    }

    /// Encodes several packets and sends them in one write.
    pub(crate) async fn send_all(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for p in packets {
            starling_proto::encode(p, self.version, &mut buf).expect("encodable packet");
        }
        self.send_raw(&buf).await.expect("write to broker");
    }

    /// Sends bytes as they are. Errors are returned: the broker may already have closed.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match timeout(WAIT, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write to broker timed out",
            )),
        }
    }

    /// A packet already buffered, without reading the socket.
    pub(crate) fn try_decode(&mut self) -> Option<Packet> {
        // Whatever the broker sends, control characters included when it lets them through.
        let limits = DecodeLimits {
            allow_control_characters: true,
            ..DecodeLimits::default()
        };
        match starling_proto::decode(&mut self.rbuf, self.version, &limits) {
            Ok(p) => p,
            Err(e) => panic!("broker sent bytes that do not decode: {e}"),
        }
    }

    /// Waits up to `within` for the next packet or the end of the connection.
    pub(crate) async fn recv(&mut self, within: Duration) -> Recv {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.try_decode() {
                return Recv::Packet(p);
            }
            self.rbuf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) => {
                    assert!(
                        self.rbuf.is_empty(),
                        "connection closed in the middle of a packet: {:02X?}",
                        &self.rbuf[..]
                    );
                    return Recv::Closed;
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Recv::Closed,
            }
        }
    }

    /// The next packet; panics on close or timeout.
    pub(crate) async fn expect_packet(&mut self, within: Duration) -> Packet {
        match self.recv(within).await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet within {within:?}, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection, at most `within`; returns the packets
    /// received on the way. Panics if the connection is still open at the deadline.
    pub(crate) async fn expect_closed(&mut self, within: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Recv::Packet(p) => got.push(p),
                Recv::Closed => return got,
                Recv::Timeout => {
                    panic!("connection still open after {within:?}; received {got:?}")
                }
            }
        }
    }

    /// Reads raw bytes until the broker closes the connection, at most `within`, without
    /// decoding them (for answers whose exact bytes matter). Panics if still open at the end.
    pub(crate) async fn expect_closed_raw(&mut self, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        loop {
            self.rbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => panic!(
                    "connection still open after {within:?}; received {:02X?}",
                    &self.rbuf[..]
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return self.rbuf.split().to_vec(),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads until at least `n` raw bytes have come (within [`WAIT`]) and takes them all,
    /// undecoded (for answers whose exact bytes matter on an open connection).
    pub(crate) async fn read_raw(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        while self.rbuf.len() < n {
            self.rbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => panic!("{n} bytes not received in time: {:02X?}", &self.rbuf[..]),
                Ok(Ok(0)) | Ok(Err(_)) => panic!("closed after {:02X?}", &self.rbuf[..]),
                Ok(Ok(_)) => {}
            }
        }
        self.rbuf.split().to_vec()
    }

    /// Expects the connection to close within [`WAIT`] without the broker sending anything.
    pub(crate) async fn expect_closed_silently(&mut self) {
        let got = self.expect_closed(WAIT).await;
        assert!(
            got.is_empty(),
            "expected no packet before close, got {got:?}"
        );
    }

    /// Expects exactly one DISCONNECT with `reason`, then the close, within [`WAIT`].
    pub(crate) async fn expect_disconnect(&mut self, reason: ReasonCode) {
        let got = self.expect_closed(WAIT).await;
        match &got[..] {
            [Packet::Disconnect(d)] => assert_eq!(
                d.reason, reason,
                "DISCONNECT reason 0x{:02X}, expected 0x{:02X}",
                d.reason as u8, reason as u8
            ),
            _ => panic!("expected DISCONNECT {reason:?} then close, got {got:?}"),
        }
    }

    /// Expects the close that answers a protocol violation: v5 a DISCONNECT with `reason`
    /// first, 3.x (which has no DISCONNECT from the server) nothing before it.
    pub(crate) async fn expect_violation_close(&mut self, reason: ReasonCode) {
        if self.version.is_v5() {
            self.expect_disconnect(reason).await;
        } else {
            self.expect_closed_silently().await;
        }
    }

    /// Expects nothing at all (no packet, no close) for `within`.
    pub(crate) async fn expect_silence(&mut self, within: Duration) {
        match self.recv(within).await {
            Recv::Timeout => {}
            other => panic!("expected silence for {within:?}, got {other:?}"),
        }
    }

    /// Subscribes to one filter and waits for a SUBACK granting it.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let pid = self.next_packet_id();
        self.send(&subscribe_packet(pid, filter, qos)).await;
        match self.expect_packet(WAIT).await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, pid);
                assert_eq!(ack.reasons.len(), 1);
                assert!(!ack.reasons[0].is_error(), "subscription refused: {ack:?}");
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Takes the reading half apart from the writing half, e.g. to read and write from
    /// different tasks. The buffered bytes go with the reader.
    pub(crate) fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }
}

// ---------------------------------------------------------------------------------------------
// Probe: proves the broker is still serving

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A well-behaved v5 client subscribed (QoS 1) to a topic of its own; [`Probe::check`]
/// publishes to that topic and expects the message back.
#[derive(Debug)]
pub(crate) struct Probe {
    client: RawClient,
    topic: String,
    sent: u64,
}

impl Probe {
    /// Connects and subscribes.
    pub(crate) async fn new(addr: SocketAddr) -> Self {
        let n = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("probe-{}-{n}", std::process::id());
        let (mut client, _) = RawClient::connect(addr, ProtocolVersion::V5, &id).await;
        let topic = format!("probe/{id}");
        client.subscribe(&topic, QoS::AtLeastOnce).await;
        Self {
            client,
            topic,
            sent: 0,
        }
    }

    /// Publishes (QoS 1) to its own topic; expects the PUBACK and the message, within [`WAIT`].
    pub(crate) async fn check(&mut self) {
        self.sent += 1;
        let payload = format!("probe message {}", self.sent);
        let pid = self.client.next_packet_id();
        self.client
            .send(&publish_packet(
                &self.topic,
                QoS::AtLeastOnce,
                pid,
                payload.as_bytes(),
            ))
            .await;
        let deadline = Instant::now() + WAIT;
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.recv(left).await {
                Recv::Packet(Packet::PubAck(a)) if a.packet_id == pid => {
                    assert!(!a.reason.is_error(), "probe PUBACK: {a:?}");
                    acked = true;
                }
                Recv::Packet(Packet::Publish(p)) => {
                    assert_eq!(p.topic.as_str(), self.topic);
                    if p.qos != QoS::AtMostOnce {
                        self.client
                            .send(&Packet::PubAck(PubAck::new(p.packet_id)))
                            .await;
                    }
                    if p.payload[..] == *payload.as_bytes() {
                        delivered = true;
                    }
                }
                other => panic!(
                    "probe: broker stopped serving (acked {acked}, delivered {delivered}): {other:?}"
                ),
            }
        }
    }
}

/// A new v5 client can connect, subscribe, publish and receive.
pub(crate) async fn assert_serving(addr: SocketAddr) {
    Probe::new(addr).await.check().await;
}

/// A new v5 client subscribes at QoS 0 and gets its own QoS 0 publish back: nothing it does
/// needs the store, so it works while the store does not.
pub(crate) async fn qos0_round_trip(addr: SocketAddr, client_id: &str) {
    let (mut c, _) = RawClient::connect(addr, ProtocolVersion::V5, client_id).await;
    c.subscribe("plain", QoS::AtMostOnce).await;
    c.send(&publish_packet("plain", QoS::AtMostOnce, 0, b"ok"))
        .await;
    assert!(matches!(c.expect_packet(WAIT).await, Packet::Publish(_)));
}

/// Waits until `done` holds, checking every few milliseconds; panics naming `what` if it
/// still does not after [`WAIT`]. For a broker-side effect of a client's request that has no
/// answer of its own (a QoS 0 publish, a dropped socket), instead of a fixed pause.
pub(crate) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// xorshift64: deterministic bytes without a dependency.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// True `percent` times in a hundred.
    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

/// A clean-start CONNECT, keep-alive 60 s, no will or credentials.
pub(crate) fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect::new(version, client_id)
}

/// A PUBLISH without properties (`packet_id` is ignored at QoS 0).
pub(crate) fn publish_packet(topic: &str, qos: QoS, packet_id: u16, payload: &[u8]) -> Packet {
    let topic = TopicName::try_from_str(topic).expect("valid topic");
    let payload = Bytes::copy_from_slice(payload);
    Packet::Publish(Publish::new(topic, qos, packet_id, payload))
}

/// A SUBSCRIBE with one filter.
pub(crate) fn subscribe_packet(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    let filter = TopicFilter::try_from_str(filter).expect("valid filter");
    Packet::Subscribe(Subscribe::one(packet_id, filter, qos))
}

// ---------------------------------------------------------------------------------------------
// Bytes

/// A variable byte integer (no range check: tests may want any value up to four bytes).
pub(crate) fn varint(mut value: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A packet: first byte, remaining length, body.
pub(crate) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(
        u32::try_from(body.len()).expect("body fits a varint"),
    ));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field with arbitrary bytes.
pub(crate) fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.put_u16(u16::try_from(bytes.len()).expect("field under 64 KiB"));
    out.extend_from_slice(bytes);
    out
}

/// A hand-made QoS 0 PUBLISH with any topic bytes (v5 adds an empty property list).
pub(crate) fn raw_publish(version: ProtocolVersion, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    if version.is_v5() {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

/// A hand-made SUBSCRIBE (QoS 1) with any filter bytes (v5 adds an empty property list).
pub(crate) fn raw_subscribe(version: ProtocolVersion, packet_id: u16, filter: &[u8]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0);
    }
    body.extend(field(filter));
    body.push(0x01);
    frame(0x82, &body)
}

/// VmRSS of this process in bytes (the broker runs in-process), from /proc/self/status.
pub(crate) fn vm_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// VmHWM (peak resident set size) of this process in bytes, from /proc/self/status.
pub(crate) fn vm_hwm_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
