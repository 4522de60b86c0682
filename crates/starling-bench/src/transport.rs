//! `starling-bench transport`: the same two measurements over TLS (TCP) and over QUIC, to
//! compare the transports on one broker: the connect rate (handshake, CONNECT, CONNACK,
//! DISCONNECT, close) and p2p QoS 1 (pairs of publisher and subscriber, a topic per pair,
//! messages per second and delivery latency). The clients are the generator's own (Starling's
//! codec, MQTT 3.1.1) over a rustls TLS stream or one bidirectional QUIC stream (quinn, ALPN
//! `mqtt`), both with ring.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use clap::ValueEnum;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use starling_proto::{
    Connect, Disconnect, Packet, PubAck, Publish, QoS, ReasonCode, Subscribe, TopicFilter,
    TopicName, encode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::client::{PacketReader, VERSION, now_ns};
use crate::hist::Histogram;
use crate::procstat::Proc;

/// Which transport the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    /// MQTT over TLS over TCP.
    Tls,
    /// MQTT over QUIC, one bidirectional stream.
    Quic,
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Measure {
    /// Connections opened and closed, `concurrency` at a time.
    Connect,
    /// Publisher → subscriber pairs at QoS 1.
    P2pQos1,
}

/// `starling-bench transport ...`
#[derive(Debug, clap::Args)]
pub(crate) struct TransportArgs {
    #[arg(long, value_enum)]
    transport: Transport,
    #[arg(long, value_enum)]
    measure: Measure,
    /// The broker's TLS or QUIC listener.
    #[arg(long, default_value = "127.0.0.1:8883")]
    addr: SocketAddr,
    /// The CA that signed the broker's certificate (issued for `localhost`).
    #[arg(long)]
    cafile: PathBuf,
    /// connect: how many connections.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// connect: handshakes in progress at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// p2p-qos1: publisher/subscriber pairs.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// p2p-qos1: PUBLISH packets a publisher may have unacknowledged.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// p2p-qos1: messages per second over all publishers (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// p2p-qos1: seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// p2p-qos1: measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The broker's process id, for its CPU time.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// Opens client connections of one transport.
struct Dialer {
    transport: Transport,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    quic: Option<(quinn::Endpoint, quinn::ClientConfig)>,
}

/// A client's byte stream.
trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

impl Dialer {
    fn new(a: &TransportArgs) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&a.cafile).context("cafile")? {
            roots.add(c.context("cafile")?).context("cafile")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection is a full handshake, as for a fleet of new devices.
        tls.resumption = rustls::client::Resumption::disabled();
        let quic = match a.transport {
            Transport::Tls => None,
            Transport::Quic => {
                let mut q = tls.clone();
                q.alpn_protocols = vec![b"mqtt".to_vec()];
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(q)
                    .context("QUIC client config")?;
                let config = quinn::ClientConfig::new(Arc::new(crypto));
                let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .context("QUIC endpoint")?;
                Some((endpoint, config))
            }
        };
        Ok(Self {
            transport: a.transport,
            addr: a.addr,
            tls: Arc::new(tls),
            quic,
        })
    }

    async fn open(&self) -> Result<Box<dyn Stream>> {
        let name = ServerName::try_from("localhost").context("server name")?;
        match (self.transport, &self.quic) {
            (Transport::Quic, Some((endpoint, config))) => {
                let conn = endpoint
                    .connect_with(config.clone(), self.addr, "localhost")?
                    .await
                    .context("QUIC handshake")?;
                let (send, recv) = conn.open_bi().await.context("QUIC stream")?;
                Ok(Box::new(QuicIo { send, recv, conn }))
            }
            _ => {
                let tcp = tokio::net::TcpStream::connect(self.addr).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                Ok(Box::new(tls))
            }
        }
    }

    /// A connected MQTT client: the stream after CONNECT and a successful CONNACK.
    async fn client(&self, id: String) -> Result<(PacketReader<Split>, WriteHalf)> {
        let stream = self.open().await?;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut connect = Connect::new(VERSION, id);
        connect.keep_alive = 300;
        send(&mut wr, &Packet::Connect(Box::new(connect))).await?;
        let mut rd = PacketReader::new(rd, 16 * 1024);
        match rd.next().await? {
            Packet::ConnAck(a) if a.reason == ReasonCode::Success => Ok((rd, wr)),
            other => bail!("expected a successful CONNACK, got {other:?}"),
        }
    }
}

type Split = tokio::io::ReadHalf<Box<dyn Stream>>;
type WriteHalf = tokio::io::WriteHalf<Box<dyn Stream>>;

/// One QUIC stream as a byte stream; the connection closes when it is dropped.
struct QuicIo {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: quinn::Connection,
}

impl Drop for QuicIo {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"");
    }
}

impl AsyncRead for QuicIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_shutdown(cx)
    }
}

async fn send(wr: &mut WriteHalf, p: &Packet) -> Result<()> {
    let mut buf = BytesMut::new();
    encode(p, VERSION, &mut buf).context("encode")?;
    wr.write_all(&buf).await.context("write")?;
    Ok(())
}

/// Runs the measurement and returns its JSON line.
pub(crate) async fn run(a: &TransportArgs) -> Result<Value> {
    let dialer = Rc::new(Dialer::new(a)?);
    let broker = a.broker_pid.map(Proc::pid);
    let cpu = |p: &Option<Proc>| p.as_ref().and_then(|p| p.cpu_s().ok());
    let transport = match a.transport {
        Transport::Tls => "tls",
        Transport::Quic => "quic",
    };
    match a.measure {
        Measure::Connect => {
            let cpu0 = cpu(&broker);
            let (elapsed, hist) = connects(&dialer, a.connections, a.concurrency).await?;
            let cpu1 = cpu(&broker);
            let secs = elapsed.as_secs_f64();
            Ok(json!({
                "bench": "transport", "measure": "connect", "transport": transport,
                "label": a.label, "connections": a.connections, "concurrency": a.concurrency,
                "conn_per_s": (a.connections as f64 / secs).round(),
                "connect_p50_us": hist.quantile(0.5).map(|v| v / 1000),
                "connect_p99_us": hist.quantile(0.99).map(|v| v / 1000),
                "broker_cpu_s_per_conn": cpu0.zip(cpu1).map(|(x, y)| (y - x) / a.connections as f64),
            }))
        }
        Measure::P2pQos1 => {
            let r = p2p(&dialer, a, &broker).await?;
            Ok(json!({
                "bench": "transport", "measure": "p2p-qos1", "transport": transport,
                "label": a.label, "pairs": a.pairs, "rate": a.rate,
                "msgs_per_s": r.rate.round(),
                "p50_us": r.hist.quantile(0.5).map(|v| v / 1000),
                "p99_us": r.hist.quantile(0.99).map(|v| v / 1000),
                "p999_us": r.hist.quantile(0.999).map(|v| v / 1000),
                "broker_cpu_s_per_s": r.broker_cpu,
            }))
        }
    }
}

/// `total` connections, `concurrency` at a time: the wall time and each one's time from the
/// first packet to CONNACK.
async fn connects(
    dialer: &Rc<Dialer>,
    total: usize,
    concurrency: usize,
) -> Result<(Duration, Histogram)> {
    let next = Rc::new(Cell::new(0usize));
    let hist = Rc::new(std::cell::RefCell::new(Histogram::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (dialer, next, hist) = (dialer.clone(), next.clone(), hist.clone());
        workers.push(tokio::task::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                next.set(i + 1);
                let t = Instant::now();
                let (rd, mut wr) = dialer.client(format!("tb-c{i}")).await?;
                let took = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                hist.borrow_mut().record(took);
                send(
                    &mut wr,
                    &Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
                )
                .await?;
                let _ = wr.shutdown().await;
                drop((rd, wr));
            }
        }));
    }
    for w in workers {
        w.await.context("connect worker")??;
    }
    let elapsed = started.elapsed();
    let hist = hist.borrow().clone();
    Ok((elapsed, hist))
}

struct P2p {
    rate: f64,
    hist: Histogram,
    broker_cpu: Option<f64>,
}

/// The shared state of a p2p run (one thread: cells).
#[derive(Default)]
struct Shared {
    measuring: Cell<bool>,
    stop: Cell<bool>,
    delivered: Cell<u64>,
}

async fn p2p(dialer: &Rc<Dialer>, a: &TransportArgs, broker: &Option<Proc>) -> Result<P2p> {
    let shared = Rc::new(Shared::default());
    let hist = Rc::new(std::cell::RefCell::new(Histogram::new()));
    let mut tasks = Vec::new();
    // Subscribers first, so that nothing is published to no one.
    for i in 0..a.pairs {
        let (mut rd, mut wr) = dialer.client(format!("tb-s{i}")).await?;
        let filter = TopicFilter::try_from_str(&format!("tb/{i}")).context("filter")?;
        let sub = Subscribe::one(1, filter, QoS::AtLeastOnce);
        send(&mut wr, &Packet::Subscribe(sub)).await?;
        match rd.next().await? {
            Packet::SubAck(_) => {}
            other => bail!("expected SUBACK, got {other:?}"),
        }
        let (shared, hist) = (shared.clone(), hist.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut acks = BytesMut::new();
            while !shared.stop.get() {
                if !rd.fill().await? {
                    break;
                }
                while let Some(p) = rd.decode()? {
                    if let Packet::Publish(p) = p {
                        if shared.measuring.get() {
                            let sent = p
                                .payload
                                .get(..8)
                                .and_then(|b| b.try_into().ok())
                                .map_or(0, u64::from_be_bytes);
                            hist.borrow_mut().record(now_ns().saturating_sub(sent));
                            shared.delivered.set(shared.delivered.get() + 1);
                        }
                        encode(
                            &Packet::PubAck(PubAck::new(p.packet_id)),
                            VERSION,
                            &mut acks,
                        )
                        .context("encode")?;
                    }
                }
                if !acks.is_empty() {
                    wr.write_all(&acks).await?;
                    acks.clear();
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    // Each publisher paced at its share of the rate, if any.
    let interval = a
        .rate
        .map(|r| Duration::from_secs_f64(a.pairs as f64 / r.max(1.0)));
    for i in 0..a.pairs {
        let (mut rd, mut wr) = dialer.client(format!("tb-p{i}")).await?;
        let topic = TopicName::try_from_str(&format!("tb/{i}")).context("topic")?;
        let (shared, inflight) = (shared.clone(), a.inflight.max(1));
        tasks.push(tokio::task::spawn_local(async move {
            let mut out = BytesMut::new();
            let mut unacked = 0usize;
            let mut id = 0u16;
            let mut tick = interval.map(tokio::time::interval);
            while !shared.stop.get() {
                let room = inflight.saturating_sub(unacked);
                // Acknowledgements first; then, with room in the window, the next message
                // (paced) or as many as fit (unpaced).
                tokio::select! {
                    biased;
                    r = rd.fill() => {
                        if !r? {
                            break;
                        }
                        while let Some(p) = rd.decode()? {
                            if matches!(p, Packet::PubAck(_)) {
                                unacked = unacked.saturating_sub(1);
                            }
                        }
                    }
                    () = next_send(&mut tick), if room > 0 => {
                        let n = if tick.is_some() { 1 } else { room };
                        for _ in 0..n {
                            id = id.checked_add(1).unwrap_or(1);
                            let mut payload = now_ns().to_be_bytes().to_vec();
                            payload.resize(64, 0);
                            let p = Publish::new(
                                topic.clone(),
                                QoS::AtLeastOnce,
                                id,
                                Bytes::from(payload),
                            );
                            encode(&Packet::Publish(p), VERSION, &mut out).context("encode")?;
                        }
                        unacked += n;
                        wr.write_all(&out).await?;
                        out.clear();
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;
    let cpu0 = broker.as_ref().and_then(|p| p.cpu_s().ok());
    let t0 = Instant::now();
    shared.measuring.set(true);
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    shared.measuring.set(false);
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = broker.as_ref().and_then(|p| p.cpu_s().ok());
    shared.stop.set(true);
    for t in tasks {
        t.abort();
    }
    let hist = hist.borrow().clone();
    Ok(P2p {
        rate: shared.delivered.get() as f64 / secs,
        hist,
        broker_cpu: cpu0.zip(cpu1).map(|(x, y)| (y - x) / secs),
    })
}

/// Resolves when the next paced message is due (at once when unpaced).
async fn next_send(tick: &mut Option<tokio::time::Interval>) {
    if let Some(t) = tick {
        t.tick().await;
    }
}
