//! Scale curves (issue 23): how the broker's cost grows with the work. Each subcommand of
//! `starling-bench scale` measures one point of one curve against a running broker and prints
//! one JSON line; `bench/scale.sh` runs the points and `bench/scale-report.py` draws them.
//!
//! This module owns the subcommands, the pieces they share (many connections from several
//! 127.0.0.x source addresses, a paced stamped publisher, a counting subscriber) and the
//! loopback copy limit (`copy` into `sink`). The curves `clients` and `subs` are in
//! `scale_flow.rs`, retained messages and start-up with a full store in `scale_store.rs`;
//! fan-out and payload size are the load scenarios of `load.rs`.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use starling_proto::{Packet, Properties, Publish, QoS, TopicName, encode_publish_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::client::{Client, PacketReader, VERSION, now_ns};
use crate::hist::Histogram;
use crate::load::{STAMP, round, stamp};
use crate::procstat::Proc;
use crate::{scale_flow, scale_store};

/// `starling-bench scale CURVE ...`: one point of a scale curve.
#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    #[command(subcommand)]
    curve: Curve,
}

/// The broker under test and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    #[arg(long, default_value_t = 1883)]
    pub(crate) port: u16,
    /// Name of the broker, copied into the output.
    #[arg(long, default_value = "broker")]
    pub(crate) label: String,
    /// The broker's process id, to sample its CPU time and RSS from /proc.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// Connections come from 127.0.0.1 .. 127.0.0.N in turn (1: the kernel's choice), for more
    /// source ports than one address has.
    #[arg(long, default_value_t = 1)]
    pub(crate) sources: u8,
}

impl Target {
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(crate) fn broker(&self) -> Option<Proc> {
        self.broker_pid.map(Proc::pid)
    }
}

#[derive(Debug, Subcommand)]
enum Curve {
    /// N connected clients: N/2 subscribers, N/2 publishers each sending one QoS 0 message per
    /// interval to its own subscriber (latency), then a saturating p2p stream beside them.
    Clients {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        clients: usize,
        /// Each slow publisher sends one message per this many milliseconds.
        #[arg(long, default_value_t = 1000)]
        slow_interval_ms: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Measured seconds of the saturating stream (0: none).
        #[arg(long, default_value_t = 5)]
        fast_duration: u64,
        /// Publisher/subscriber pairs of the saturating stream.
        #[arg(long, default_value_t = 10)]
        fast_pairs: usize,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
    /// S subscriptions over a few connections, then a paced stream of QoS 0 messages to
    /// topics spread over all of them (publish cost), and single SUBSCRIBEs (their cost).
    Subs {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        subs: usize,
        #[arg(long, value_enum, default_value = "exact")]
        kind: FilterKind,
        /// Subscriber connections the subscriptions are spread over.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Filters per SUBSCRIBE packet while setting up.
        #[arg(long, default_value_t = 500)]
        per_packet: usize,
        /// Messages per second in total.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value_t = 8)]
        duration: u64,
        /// Single-filter SUBSCRIBE round trips timed once the subscriptions are in place.
        #[arg(long, default_value_t = 2000)]
        probes: usize,
    },
    /// N retained messages, then the time to subscribe to one topic, to a narrow filter and
    /// to `#`; and the broker's memory per retained message.
    Retained {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Timed subscriptions per narrow filter (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Seconds allowed for everything.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Instead: the N retained messages each among 49 messages to another topic (as a
        /// gateway publishes its devices' state between their readings), and the broker's
        /// memory per retained message then.
        #[arg(long)]
        among_stream: bool,
    },
    /// Fills a durable broker: S persistent sessions that subscribe and disconnect, then M
    /// QoS 1 messages queued for them (M / S each).
    Fill {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Unacknowledged QoS 1 messages per publisher.
        #[arg(long, default_value_t = 100)]
        inflight: usize,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Seconds allowed for everything.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// Waits for a starting broker: the seconds from `--since-ns` (wall clock, `date +%s%N`
    /// taken before it was started) until its port accepts and `/readyz` answers 200, then
    /// its RSS and what its metrics say it restored.
    Ready {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        since_ns: u64,
        /// The broker's HTTP port (`/readyz`, `/metrics`), if enabled.
        #[arg(long)]
        http_port: Option<u16>,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Writes into a plain TCP socket for `duration` seconds: the loopback copy limit.
    Copy {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
        /// The message size of the point; writes are this size or 64 KiB of them.
        #[arg(long)]
        size: usize,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
    },
    /// Reads and discards what `copy` sends (run it on the broker's core).
    Sink {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long)]
        port: u16,
    },
}

/// Exact filters (one topic each) or wildcard ones (`+` and `#`, half each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FilterKind {
    Exact,
    Wildcard,
}

impl FilterKind {
    /// Filter number `k`. Every topic `topic(k)` matches filter `k` and no other.
    pub(crate) fn filter(self, k: u64) -> String {
        let (a, b) = (k / 1000, k % 1000);
        match self {
            Self::Exact => format!("sx/{a}/{b}"),
            Self::Wildcard if k.is_multiple_of(2) => format!("sw/{a}/+/{b}"),
            Self::Wildcard => format!("sw/{a}/{b}/#"),
        }
    }

    pub(crate) fn topic(self, k: u64) -> String {
        let (a, b) = (k / 1000, k % 1000);
        match self {
            Self::Exact => format!("sx/{a}/{b}"),
            Self::Wildcard if k.is_multiple_of(2) => format!("sw/{a}/p/{b}"),
            Self::Wildcard => format!("sw/{a}/{b}/p"),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Wildcard => "wildcard",
        }
    }
}

/// Runs one point; the JSON line to print, or `None` for `sink`, which serves until killed.
pub(crate) async fn run(args: ScaleArgs) -> Result<Option<String>> {
    let (curve, label, body) = match args.curve {
        Curve::Clients {
            t,
            clients: n,
            slow_interval_ms,
            warmup,
            duration,
            fast_duration,
            fast_pairs,
            concurrency,
        } => {
            let spec = scale_flow::ClientsSpec {
                clients: n,
                interval: Duration::from_millis(slow_interval_ms.max(1)),
                warmup,
                duration,
                fast_duration,
                fast_pairs,
                concurrency,
            };
            (
                "clients",
                t.label.clone(),
                scale_flow::clients(&t, &spec).await?,
            )
        }
        Curve::Subs {
            t,
            subs: s,
            kind,
            connections,
            per_packet,
            rate,
            publishers,
            warmup,
            duration,
            probes,
        } => {
            let spec = scale_flow::SubsSpec {
                subs: s,
                kind,
                connections: connections.max(1),
                per_packet: per_packet.max(1),
                rate,
                publishers: publishers.max(1),
                warmup,
                duration,
                probes,
            };
            ("subs", t.label.clone(), scale_flow::subs(&t, &spec).await?)
        }
        Curve::Retained {
            t,
            count,
            payload,
            repeats,
            timeout,
            among_stream,
        } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            if among_stream {
                let m = scale_store::retained_among_stream(&t, count, payload, deadline).await?;
                ("retained-among", t.label.clone(), m)
            } else {
                let m = scale_store::retained(&t, count, payload, repeats.max(1), deadline).await?;
                ("retained", t.label.clone(), m)
            }
        }
        Curve::Fill {
            t,
            sessions,
            messages,
            publishers,
            inflight,
            concurrency,
            timeout,
        } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let spec = scale_store::FillSpec {
                sessions,
                messages,
                publishers: publishers.max(1),
                inflight: inflight.max(1),
                concurrency,
                deadline,
            };
            ("fill", t.label.clone(), scale_store::fill(&t, &spec).await?)
        }
        Curve::Ready {
            t,
            since_ns,
            http_port,
            timeout,
        } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let m = scale_store::ready(&t, since_ns, http_port, deadline).await?;
            ("startup", t.label.clone(), m)
        }
        Curve::Copy {
            host,
            port,
            size,
            duration,
        } => (
            "copy",
            "tcp".to_owned(),
            copy(&format!("{host}:{port}"), size, duration).await?,
        ),
        Curve::Sink { host, port } => {
            sink(&format!("{host}:{port}")).await?;
            return Ok(None);
        }
    };
    let mut head = Map::new();
    head.insert("curve".into(), json!(curve));
    head.insert("broker".into(), json!(label));
    head.extend(body);
    Ok(Some(Value::Object(head).to_string()))
}

// --- Shared pieces -----------------------------------------------------------------------------

/// The source address of connection `k` with `sources` addresses: 127.0.0.(1 + k mod n),
/// or `None` (the kernel's choice) with one.
pub(crate) fn source(sources: u8, k: usize) -> Option<IpAddr> {
    (sources > 1).then(|| {
        let last = 1 + (k % usize::from(sources)).min(253) as u8;
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    })
}

/// How [`connect_many`] opens each connection and what it does with it.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) target: Target,
    /// Client id of connection `k`.
    pub(crate) id: Rc<dyn Fn(usize) -> String>,
    /// A filter connection `k` subscribes to (QoS `qos`) before it counts as connected.
    pub(crate) filter: Option<Rc<dyn Fn(usize) -> String>>,
    pub(crate) qos: QoS,
    pub(crate) clean: bool,
    pub(crate) keep_alive: u16,
    /// Read size of the connection's reader.
    pub(crate) chunk: usize,
    /// Keep the connection (else: DISCONNECT and close, leaving the session to the broker).
    pub(crate) hold: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("clean", &self.clean)
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

/// What [`connect_many`] got.
#[derive(Debug, Default)]
pub(crate) struct Connected {
    /// The held connections with their numbers, in the order they completed.
    pub(crate) clients: Vec<(usize, Client)>,
    /// Connections that completed (held or closed).
    pub(crate) done: usize,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) seconds: f64,
}

/// Opens connections 0..`count`, `concurrency` at a time; with `stop_on_error`, no new one
/// is started after the first failure.
pub(crate) async fn connect_many(
    c: &Connector,
    count: usize,
    concurrency: usize,
    stop_on_error: bool,
    deadline: Instant,
) -> Result<Connected> {
    let next = Rc::new(Cell::new(0usize));
    let out = Rc::new(RefCell::new(Connected::default()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (next, out, c) = (next.clone(), out.clone(), c.clone());
        workers.push(tokio::task::spawn_local(async move {
            loop {
                let k = next.get();
                if k >= count || (stop_on_error && out.borrow().failed > 0) {
                    break;
                }
                next.set(k + 1);
                let one = tokio::time::timeout_at(deadline.into(), open(&c, k)).await;
                let mut o = out.borrow_mut();
                match one {
                    Ok(Ok(client)) => {
                        o.done += 1;
                        if let Some(client) = client {
                            o.clients.push((k, client));
                        }
                    }
                    Ok(Err(e)) => {
                        o.failed += 1;
                        o.first_error
                            .get_or_insert(format!("connection {k}: {e:#}"));
                    }
                    Err(_) => {
                        o.failed += 1;
                        o.first_error.get_or_insert("timed out".into());
                        break;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.context("connect worker")?;
    }
    let mut o = out.take();
    o.seconds = start.elapsed().as_secs_f64();
    Ok(o)
}

async fn open(c: &Connector, k: usize) -> Result<Option<Client>> {
    let mut client = Client::connect_from(
        &c.target.addr(),
        source(c.target.sources, k),
        (c.id)(k),
        c.keep_alive,
        c.chunk,
        c.clean,
    )
    .await?;
    if let Some(filter) = &c.filter {
        client.subscribe(&filter(k), c.qos).await?;
    }
    if c.hold {
        return Ok(Some(client));
    }
    client
        .wr
        .write_all(&[0xE0, 0x00])
        .await
        .context("send DISCONNECT")?;
    // The broker closes first once it has handled the DISCONNECT, so that the TIME_WAIT is
    // its and the generator's source ports are free again at once.
    while client.rd.fill().await.unwrap_or(false) {}
    Ok(None)
}

/// Deliveries counted by [`spawn_counter`]s, with their latency while `measuring`.
#[derive(Debug)]
pub(crate) struct Deliveries {
    pub(crate) received: Cell<u64>,
    pub(crate) measuring: Cell<bool>,
    pub(crate) hist: RefCell<Histogram>,
    pub(crate) stop: Cell<bool>,
    pub(crate) errors: RefCell<Vec<String>>,
}

impl Deliveries {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Self {
            received: Cell::new(0),
            measuring: Cell::new(false),
            hist: RefCell::new(Histogram::new()),
            stop: Cell::new(false),
            errors: RefCell::default(),
        })
    }

    /// p50, p99 and p99.9 in microseconds.
    pub(crate) fn latency(&self) -> Value {
        let h = self.hist.borrow();
        let q = |q: f64| h.quantile(q).map(|ns| round(ns as f64 / 1000.0, 1));
        json!({"samples": h.count(), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999)})
    }

    fn fail(&self, e: &anyhow::Error) {
        let mut errors = self.errors.borrow_mut();
        if !self.stop.get() && errors.len() < 5 {
            errors.push(format!("{e:#}"));
        }
    }
}

/// Counts the QoS 0 PUBLISHes arriving on `rd` into `d`, with their latency from the stamp at
/// the start of the payload.
pub(crate) fn spawn_counter(d: Rc<Deliveries>, mut rd: PacketReader<OwnedReadHalf>) {
    tokio::task::spawn_local(async move {
        let r: Result<()> = async {
            loop {
                if !rd.fill().await? {
                    bail!("broker closed a subscriber");
                }
                let now = now_ns();
                let mut n = 0;
                let mut hist = d.measuring.get().then(|| d.hist.borrow_mut());
                loop {
                    match &rd.decode_raw() {
                        Ok(Some(Packet::Publish(p))) => {
                            n += 1;
                            if let Some(h) = hist.as_mut() {
                                h.record(now.saturating_sub(stamp(&p.payload).0));
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => bail!("decode: {e}"),
                    }
                }
                d.received.set(d.received.get() + n);
            }
        }
        .await;
        if let Err(e) = r {
            d.fail(&e);
        }
    });
}

/// A stream of stamped QoS 0 messages at `rate` per second in total: message n goes on
/// writer n mod W to topic `topic(n)`.
pub(crate) struct Paced {
    pub(crate) writers: Vec<OwnedWriteHalf>,
    pub(crate) rate: f64,
    pub(crate) payload: usize,
    pub(crate) topic: Box<dyn Fn(u64) -> String>,
}

impl std::fmt::Debug for Paced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paced")
            .field("writers", &self.writers.len())
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// Progress of a [`Paced`] stream.
#[derive(Debug, Default)]
pub(crate) struct PacedState {
    pub(crate) sent: Cell<u64>,
    /// Largest delay of a message behind its due time, ns.
    pub(crate) max_lag_ns: Cell<u64>,
    pub(crate) stop: Cell<bool>,
}

/// A message sent at most this late is stamped with its send time, later ones with the time
/// it was due (so that a stalled write is counted as latency, not hidden).
const SLACK_NS: u64 = 2_000_000;

/// Runs the stream until `st.stop`.
pub(crate) async fn paced(mut p: Paced, st: Rc<PacedState>) -> Result<()> {
    if p.payload < STAMP {
        bail!("payload must be at least {STAMP} bytes");
    }
    if p.writers.is_empty() || p.rate <= 0.0 {
        return Ok(());
    }
    let start = Instant::now();
    let base = now_ns();
    let per_ns = 1e9 / p.rate;
    let zeros = p.payload - STAMP;
    // Only the payload's length is used: the header is encoded from it, the bytes put after.
    let mut publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::try_from_str("x").map_err(|e| anyhow!("x: {e}"))?,
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from(vec![0u8; p.payload]),
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut n = 0u64;
    let count = p.writers.len() as u64;
    while !st.stop.get() {
        let due = (p.rate * start.elapsed().as_secs_f64()) as u64;
        if due <= n {
            let at = start + Duration::from_secs_f64((n + 1) as f64 / p.rate);
            tokio::time::sleep_until(at.into()).await;
            continue;
        }
        let mut current = n % count;
        for _ in 0..(due - n).min(512) {
            let w = n % count;
            if w != current {
                flush(&mut p.writers, current, &mut buf).await?;
                current = w;
            }
            let due_ns = base + (n as f64 * per_ns) as u64;
            let now = now_ns();
            let lag = now.saturating_sub(due_ns);
            st.max_lag_ns.set(st.max_lag_ns.get().max(lag));
            let ts = if lag > SLACK_NS { due_ns } else { now };
            let topic = (p.topic)(n);
            publish.topic = TopicName::try_from_str(&topic).map_err(|e| anyhow!("{topic}: {e}"))?;
            encode_publish_header(&publish, VERSION, &mut buf)?;
            buf.put_u64(ts);
            buf.put_u32(0);
            buf.put_bytes(0, zeros);
            n += 1;
            st.sent.set(n);
        }
        flush(&mut p.writers, current, &mut buf).await?;
    }
    Ok(())
}

async fn flush(writers: &mut [OwnedWriteHalf], w: u64, buf: &mut BytesMut) -> Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let wr = usize::try_from(w)
        .ok()
        .and_then(|w| writers.get_mut(w))
        .ok_or_else(|| anyhow!("no writer {w}"))?;
    wr.write_all(buf).await.context("publish")?;
    buf.clear();
    Ok(())
}

/// The broker's CPU seconds and RSS KiB now, where known.
pub(crate) fn sample(broker: Option<&Proc>) -> (Option<f64>, Option<u64>) {
    (
        broker.and_then(|b| b.cpu_s().ok()),
        broker.and_then(|b| b.rss_kb().ok()),
    )
}

pub(crate) fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| b - a)
}

// --- copy ----------------------------------------------------------------------------------

async fn copy(addr: &str, size: usize, duration: f64) -> Result<Map<String, Value>> {
    let size = size.max(1);
    let write = if size >= 64 * 1024 {
        size
    } else {
        (64 * 1024 / size) * size
    };
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let buf = vec![0u8; write];
    // Half a second of warm-up, then `duration` measured.
    let warm_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm_until {
        stream.write_all(&buf).await.context("copy")?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration.max(0.1));
    let mut bytes = 0u64;
    while Instant::now() < end {
        stream.write_all(&buf).await.context("copy")?;
        bytes += write as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut m = Map::new();
    m.insert("size".into(), json!(size));
    m.insert("write_bytes".into(), json!(write));
    m.insert("seconds".into(), json!(round(secs, 3)));
    m.insert(
        "mb_per_s".into(),
        json!(round(bytes as f64 / secs.max(1e-9) / 1e6, 1)),
    );
    Ok(m)
}

async fn sink(addr: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    loop {
        let (mut s, _) = listener.accept().await.context("accept")?;
        tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 1 << 20];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_matches_its_own_filter_only() {
        fn matches(filter: &str, topic: &str) -> bool {
            let (f, t): (Vec<_>, Vec<_>) =
                (filter.split('/').collect(), topic.split('/').collect());
            for (i, part) in f.iter().enumerate() {
                match *part {
                    "#" => return true,
                    "+" if i < t.len() => {}
                    p if t.get(i) == Some(&p) => {}
                    _ => return false,
                }
            }
            f.len() == t.len()
        }
        for kind in [FilterKind::Exact, FilterKind::Wildcard] {
            for k in 0..40u64 {
                let k = k * 997;
                for j in [k, k + 1, k + 2, k + 1000] {
                    assert_eq!(
                        matches(&kind.filter(j), &kind.topic(k)),
                        j == k,
                        "{kind:?} {j} {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn sources_cycle_over_loopback() {
        assert_eq!(source(1, 5), None);
        assert_eq!(source(4, 5), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    }
}
