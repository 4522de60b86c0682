//! The cost of a CONNECT that takes a client id over (bench/cluster.sh): `movers` clients, each
//! with a client id of its own, connect again and again, alternately to address A and address
//! B (two nodes of a cluster, or the same node twice for the baseline), as fast as the broker
//! answers. Every CONNECT after a mover's first takes the client id over from the mover's
//! previous connection, which is still open: the client never closes it, the broker does (on
//! another node, when that node applies the claim committed for the new CONNECT).
//!
//! Clients speak MQTT 5.0 with Clean Start 1 and no session expiry, so that the old
//! connection's end is visible (DISCONNECT 0x8E, Session taken over) and a node does the same
//! work whether the old session was its own or another node's; with `persistent`, Clean
//! Start 0 and a session expiry of 300 s, so that every CONNECT resumes the session (Session
//! Present 1), which across nodes moves with its client (fetched from the node that had it).
//!
//! Measured, in the measured window only: CONNECT-to-CONNACK latency (from the write of
//! CONNECT, after the TCP handshake, to the decoded CONNACK), successful CONNECTs per second,
//! refusals (CONNACK with an error code, by code) and failures (no CONNACK) apart, and the
//! takeover time: from the write of the first CONNECT of its client id after a connection to
//! the end of that connection (its DISCONNECT or its close), with how each old connection
//! ended. When A and B differ, the latency of the CONNECTs to each apart too (`by_addr`: to a
//! cluster's leader, or to a follower that forwards its claims).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use starling_proto::{Packet, ProtocolVersion, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::client::{PacketReader, connect_packet_expiring, now_ns};
use crate::hist::Histogram;
use crate::load::{median, round};
use crate::procstat::Proc;

/// The movers' protocol version.
const VERSION: ProtocolVersion = ProtocolVersion::V5;
/// Longest wait for a TCP connection or a CONNACK; then the attempt counts as failed.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// An old connection still open this long after the CONNECT that took it over counts as not
/// ended, and is dropped.
const END_LIMIT: Duration = Duration::from_secs(10);
/// Pause after a failed attempt, so that a broker that is down is not spun against.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One takeover run.
#[derive(Debug, Clone)]
pub(crate) struct TakeoverSpec {
    /// Address A (`host:port`): the first CONNECT of every mover, then every other one.
    pub(crate) addr: String,
    /// Address B: the other CONNECTs. The same as A for the baseline on one node.
    pub(crate) alt_addr: String,
    /// Clients moving at once, each with its own client id.
    pub(crate) movers: usize,
    /// Resume a persistent session (Clean Start 0, expiry 300 s) instead of starting clean.
    pub(crate) persistent: bool,
    pub(crate) warmup: u64,
    pub(crate) duration: u64,
}

/// How an old connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// DISCONNECT with this reason, then (or without waiting for) the close.
    Disconnect(u8),
    /// Closed (or reset) by the broker without a DISCONNECT.
    Closed,
    /// Still open [`END_LIMIT`] after the CONNECT that took it over.
    NotEnded,
    /// Ended before any CONNECT of its client id had been sent after it.
    Unasked,
}

impl End {
    fn name(self) -> String {
        match self {
            Self::Disconnect(r) => format!("disconnect_0x{r:02x}"),
            Self::Closed => "closed".into(),
            Self::NotEnded => "not_ended".into(),
            Self::Unasked => "ended_unasked".into(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    measuring: Cell<bool>,
    stop: Cell<bool>,
    /// CONNACKs with Success.
    connects: Cell<u64>,
    /// ... of which Session Present was 1.
    session_present: Cell<u64>,
    /// CONNACKs with an error code, by code.
    refused: RefCell<BTreeMap<u8, u64>>,
    /// No CONNACK: connection refused, closed, timed out, or another packet.
    failed: Cell<u64>,
    connack: RefCell<Histogram>,
    /// The same, of the CONNECTs to A and of those to B.
    connack_at: [RefCell<Histogram>; 2],
    takeover: RefCell<Histogram>,
    ends: RefCell<BTreeMap<End, u64>>,
    /// The first errors of the whole run (warm-up included).
    errors: RefCell<Vec<String>>,
}

impl Shared {
    fn fail(&self, e: &anyhow::Error) {
        if self.measuring.get() {
            self.failed.set(self.failed.get() + 1);
        }
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 5 && !self.stop.get() {
            errors.push(format!("{e:#}"));
        }
    }
}

/// Runs the scenario and returns the fields of its JSON line.
pub(crate) async fn run(spec: TakeoverSpec) -> Result<Map<String, Value>> {
    if spec.movers == 0 {
        bail!("--movers must be at least 1");
    }
    let sh = Rc::new(Shared {
        measuring: Cell::new(false),
        stop: Cell::new(false),
        connects: Cell::new(0),
        session_present: Cell::new(0),
        refused: RefCell::new(BTreeMap::new()),
        failed: Cell::new(0),
        connack: RefCell::new(Histogram::new()),
        connack_at: [
            RefCell::new(Histogram::new()),
            RefCell::new(Histogram::new()),
        ],
        takeover: RefCell::new(Histogram::new()),
        ends: RefCell::new(BTreeMap::new()),
        errors: RefCell::new(Vec::new()),
    });
    let tag = std::process::id();
    let start = Instant::now();
    let movers: Vec<_> = (0..spec.movers)
        .map(|i| {
            let (sh, spec) = (sh.clone(), spec.clone());
            tokio::task::spawn_local(mover(sh, spec, format!("sb{tag}-m{i}")))
        })
        .collect();

    // Connects per second, once a second, as load.rs counts deliveries.
    let me = Proc::this();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut begin = None;
    if spec.warmup == 0 {
        begin = Some((Instant::now(), me.cpu_s()?));
        sh.measuring.set(true);
    }
    let mut per_second = Vec::new();
    let mut last = 0;
    for s in 1..=spec.warmup + spec.duration {
        tick.tick().await;
        let c = sh.connects.get();
        if s > spec.warmup {
            per_second.push(c - last);
        }
        if s == spec.warmup {
            begin = Some((Instant::now(), me.cpu_s()?));
            sh.measuring.set(true);
        }
        last = c;
    }
    let (end_at, end_cpu) = (Instant::now(), me.cpu_s()?);
    sh.measuring.set(false);
    sh.stop.set(true);
    let (begin_at, begin_cpu) = begin.ok_or_else(|| anyhow!("no measurement window"))?;
    // Each mover finishes its attempt under way (bounded by ANSWER_LIMIT); the watchers of
    // the connections still open notice the stop within a second and close them.
    for m in movers {
        m.await.context("mover")?;
    }

    let wall = end_at.duration_since(begin_at).as_secs_f64();
    let connects = sh.connects.get();
    let refused = sh.refused.borrow();
    let refused_total: u64 = refused.values().sum();
    let ends = sh.ends.borrow();
    let failed = sh.failed.get();
    let errors = sh.errors.borrow();
    let hist_json = |h: &Histogram| {
        let q = |p: f64| h.quantile(p).map(|ns| round(ns as f64 / 1000.0, 1));
        json!({ "samples": h.count(), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999) })
    };

    let mut m = Map::new();
    m.insert("addr".into(), json!(spec.addr));
    m.insert("alt_addr".into(), json!(spec.alt_addr));
    m.insert("same_node".into(), json!(spec.addr == spec.alt_addr));
    m.insert("movers".into(), json!(spec.movers));
    m.insert("protocol".into(), json!(5));
    m.insert("clean_start".into(), json!(!spec.persistent));
    m.insert("warmup_s".into(), json!(spec.warmup));
    m.insert("duration_s".into(), json!(spec.duration));
    m.insert("connects".into(), json!(connects));
    m.insert(
        "connect_rate_per_s".into(),
        json!((connects as f64 / wall).round()),
    );
    m.insert("rate_median_per_s".into(), json!(median(&per_second)));
    m.insert("rate_per_s".into(), json!(per_second));
    m.insert("latency_us".into(), hist_json(&sh.connack.borrow()));
    if spec.addr != spec.alt_addr {
        // Which way is dearer: e.g. to the cluster's leader or to a follower that forwards.
        let at = |i: usize, addr: &str| {
            sh.connack_at
                .get(i)
                .map(|h| json!({ "addr": addr, "latency_us": hist_json(&h.borrow()) }))
        };
        m.insert(
            "by_addr".into(),
            json!([at(0, &spec.addr), at(1, &spec.alt_addr)]),
        );
    }
    m.insert("takeover_us".into(), hist_json(&sh.takeover.borrow()));
    m.insert("session_present".into(), json!(sh.session_present.get()));
    m.insert("refused".into(), json!(refused_total));
    m.insert(
        "refused_codes".into(),
        Value::Object(
            refused
                .iter()
                .map(|(code, n)| (format!("0x{code:02x}"), json!(n)))
                .collect(),
        ),
    );
    m.insert("failed".into(), json!(failed));
    m.insert(
        "old_connections".into(),
        Value::Object(ends.iter().map(|(e, n)| (e.name(), json!(n))).collect()),
    );
    m.insert("measured_s".into(), json!(round(wall, 3)));
    m.insert(
        "gen_cpu_util".into(),
        json!(round((end_cpu - begin_cpu) / wall, 3)),
    );
    let unended = ends.get(&End::NotEnded).copied().unwrap_or(0);
    m.insert(
        "qualifies".into(),
        json!(failed == 0 && unended == 0 && connects > 0),
    );
    if !errors.is_empty() {
        m.insert("errors".into(), json!(*errors));
    }
    Ok(m)
}

/// One client id moving between A and B until the run stops.
async fn mover(sh: Rc<Shared>, spec: TakeoverSpec, client_id: String) {
    // When the CONNECT that takes the live connection over was written, as its watcher reads.
    let mut live: Option<Rc<Cell<Option<u64>>>> = None;
    let mut to_alt = false;
    while !sh.stop.get() {
        let (addr, at) = if to_alt {
            (&spec.alt_addr, 1)
        } else {
            (&spec.addr, 0)
        };
        to_alt = !to_alt;
        let attempt = tokio::time::timeout(
            ANSWER_LIMIT,
            connect(addr, &client_id, spec.persistent, live.as_ref()),
        );
        let (ack, rd, wr, sent) = match attempt.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                sh.fail(&e.context(format!("{client_id} at {addr}")));
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(_) => {
                sh.fail(&anyhow!(
                    "{client_id} at {addr}: no CONNACK in {ANSWER_LIMIT:?}"
                ));
                continue;
            }
        };
        let acked = now_ns();
        if ack.reason != ReasonCode::Success {
            if sh.measuring.get() {
                *sh.refused
                    .borrow_mut()
                    .entry(ack.reason.as_u8())
                    .or_default() += 1;
            }
            // The broker closes a refused connection; the previous one may still be live.
            continue;
        }
        if sh.measuring.get() {
            sh.connects.set(sh.connects.get() + 1);
            if ack.session_present {
                sh.session_present.set(sh.session_present.get() + 1);
            }
            let latency = acked.saturating_sub(sent);
            sh.connack.borrow_mut().record(latency);
            if let Some(h) = sh.connack_at.get(at) {
                h.borrow_mut().record(latency);
            }
        }
        let taken = Rc::new(Cell::new(None));
        live = Some(taken.clone());
        tokio::task::spawn_local(watch(sh.clone(), rd, wr, taken));
    }
}

/// A CONNECT of `client_id` to `addr` and its CONNACK, with the time the CONNECT was written;
/// before writing, marks the live connection (if any) as being taken over, unless an earlier
/// attempt (refused or failed) already did.
async fn connect(
    addr: &str,
    client_id: &str,
    persistent: bool,
    live: Option<&Rc<Cell<Option<u64>>>>,
) -> Result<(
    starling_proto::ConnAck,
    PacketReader<OwnedReadHalf>,
    OwnedWriteHalf,
    u64,
)> {
    let stream = TcpStream::connect(addr).await.context("TCP connect")?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (rd, mut wr) = stream.into_split();
    let expiry = persistent.then_some(300);
    let out = connect_packet_expiring(VERSION, client_id.to_owned(), !persistent, 60, expiry)?;
    let sent = now_ns();
    if let Some(taken) = live
        && taken.get().is_none()
    {
        taken.set(Some(sent));
    }
    wr.write_all(&out).await.context("send CONNECT")?;
    let mut rd = PacketReader::with_version(rd, 4096, VERSION);
    match rd.next().await? {
        Packet::ConnAck(ack) => Ok((ack, rd, wr, sent)),
        other => bail!("expected CONNACK, got {:?}", other.packet_type()),
    }
}

/// Holds a connection open (the client never closes it) until the broker ends it, and counts
/// how and when it ended; closes it when the run stops or [`END_LIMIT`] after its takeover.
async fn watch(
    sh: Rc<Shared>,
    mut rd: PacketReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    taken: Rc<Cell<Option<u64>>>,
) {
    let end = loop {
        if sh.stop.get() {
            drop(wr);
            return;
        }
        let wait = match taken.get() {
            None => Duration::from_secs(1),
            Some(t) => {
                let left = (t + END_LIMIT.as_nanos() as u64).saturating_sub(now_ns());
                if left == 0 {
                    break End::NotEnded;
                }
                Duration::from_nanos(left).min(Duration::from_secs(1))
            }
        };
        match tokio::time::timeout(wait, rd.fill()).await {
            Err(_) => continue,
            Ok(Ok(true)) => {}
            Ok(Ok(false) | Err(_)) => break End::Closed,
        }
        let mut ended = None;
        loop {
            match rd.decode() {
                Ok(Some(Packet::Disconnect(d))) => {
                    ended = Some(End::Disconnect(d.reason.as_u8()));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                // What does not decode ends it as a close would.
                Err(_) => {
                    ended = Some(End::Closed);
                    break;
                }
            }
        }
        if let Some(e) = ended {
            break e;
        }
    };
    let at = now_ns();
    drop(wr);
    if !sh.measuring.get() {
        return;
    }
    let end = match (end, taken.get()) {
        (End::NotEnded, _) => End::NotEnded,
        (_, None) => End::Unasked,
        (e, Some(t)) => {
            sh.takeover.borrow_mut().record(at.saturating_sub(t));
            e
        }
    };
    *sh.ends.borrow_mut().entry(end).or_default() += 1;
}
