//! Throughput and latency scenarios: publishers pipelining PUBLISH packets within bounded
//! windows, subscribers counting deliveries per second and measuring latency from the
//! timestamp at the start of each payload, and a sampler reading the broker's CPU time and RSS.
//!
//! Payload layout: bytes 0..8 the send time (`now_ns`, big-endian), 8..12 the publisher's
//! index, then zeros up to the payload size.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};
use starling_proto::{
    Packet, Properties, PubAck, Publish, QoS, TopicName, encode, encode_publish_header, publish_len,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::client::{Client, PacketReader, Skimmed, VERSION, now_ns};
use crate::hist::Histogram;
use crate::procstat::Proc;

/// Bytes at the start of every payload: timestamp and publisher index.
pub(crate) const STAMP: usize = 12;
/// Publishers write at most about this much per syscall.
const WRITE_BATCH: usize = 64 * 1024;
/// Subscribers read this much at a time.
const READ_CHUNK: usize = 64 * 1024;
/// A publisher whose window has not moved for this long counts the missing deliveries as
/// lost (QoS 0 messages a broker dropped) and goes on.
const STALL: Duration = Duration::from_millis(500);

/// Who publishes where and who subscribes to what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// Publisher i to subscriber i, one topic per pair.
    P2p,
    /// Every publisher on its own topic, every subscriber on a `+` wildcard over all of them.
    FanIn,
    /// Every publisher and subscriber on one topic.
    FanOut,
}

impl Topology {
    fn pub_topic(self, i: usize) -> String {
        match self {
            Self::P2p => format!("bench/p2p/{i}"),
            Self::FanIn => format!("bench/fanin/{i}"),
            Self::FanOut => "bench/fanout".into(),
        }
    }

    fn sub_filter(self, j: usize) -> String {
        match self {
            Self::P2p => format!("bench/p2p/{j}"),
            Self::FanIn => "bench/fanin/+".into(),
            Self::FanOut => "bench/fanout".into(),
        }
    }

    /// Deliveries each published message should make.
    fn fanout(self, subscribers: usize) -> usize {
        match self {
            Self::P2p => 1,
            Self::FanIn | Self::FanOut => subscribers,
        }
    }
}

/// One throughput or latency run.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub(crate) addr: String,
    /// Where subscribers connect, if not at `addr` (another node of a cluster).
    pub(crate) sub_addr: Option<String>,
    pub(crate) topology: Topology,
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
    pub(crate) qos: QoS,
    pub(crate) payload: usize,
    /// QoS 1: most PUBLISH packets a publisher has unacknowledged.
    pub(crate) inflight: usize,
    /// Most messages of a publisher sent but not yet delivered to every subscriber.
    pub(crate) window: usize,
    /// Total messages per second over all publishers; `None` = as fast as the windows allow.
    pub(crate) rate: Option<f64>,
    pub(crate) warmup: u64,
    pub(crate) duration: u64,
    pub(crate) broker_pid: Option<u32>,
    /// Saturating runs qualify only with the broker at least this busy...
    pub(crate) min_broker_util: f64,
    /// ...and the generator at most this busy.
    pub(crate) max_gen_util: f64,
    /// Subscribers connect with clean session 0.
    pub(crate) persistent: bool,
}

#[derive(Debug, Default)]
struct PubState {
    sent: Cell<u64>,
    acked: Cell<u64>,
    /// Deliveries of this publisher's messages, counted by the subscribers.
    delivered: Cell<u64>,
    /// Deliveries given up as lost after a stall.
    forgiven: Cell<u64>,
    /// Packet ids awaiting PUBACK.
    unacked: RefCell<Vec<bool>>,
    notify: Notify,
}

#[derive(Debug)]
struct Shared {
    received: Cell<u64>,
    measuring: Cell<bool>,
    stop: Cell<bool>,
    hist: RefCell<Histogram>,
    pubs: Vec<PubState>,
    errors: RefCell<Vec<String>>,
}

impl Shared {
    fn fail(&self, e: &anyhow::Error) {
        if !self.stop.get() {
            self.errors.borrow_mut().push(format!("{e:#}"));
        }
    }
}

/// Runs the scenario and returns the fields of its JSON line.
pub(crate) async fn run(spec: LoadSpec) -> Result<Map<String, Value>> {
    if spec.payload < STAMP {
        bail!("--payload must be at least {STAMP} bytes");
    }
    if spec.topology == Topology::P2p && spec.publishers != spec.subscribers {
        bail!("p2p needs as many publishers as subscribers");
    }
    let fan = spec.topology.fanout(spec.subscribers) as u64;
    let sh = Rc::new(Shared {
        received: Cell::new(0),
        measuring: Cell::new(false),
        stop: Cell::new(false),
        hist: RefCell::new(Histogram::new()),
        pubs: (0..spec.publishers)
            .map(|_| PubState {
                unacked: RefCell::new(vec![false; 65536]),
                ..PubState::default()
            })
            .collect(),
        errors: RefCell::new(Vec::new()),
    });
    let tag = std::process::id();

    // Subscribers first, so that nothing published is missed.
    for j in 0..spec.subscribers {
        let mut c = Client::connect_with(
            spec.sub_addr.as_deref().unwrap_or(&spec.addr),
            format!("sb{tag}-s{j}"),
            300,
            READ_CHUNK,
            !spec.persistent,
        )
        .await
        .with_context(|| format!("subscriber {j}"))?;
        c.subscribe(&spec.topology.sub_filter(j), spec.qos)
            .await
            .with_context(|| format!("subscriber {j}"))?;
        let acks = Rc::new(AckOut::default());
        spawn(&sh, ack_writer(acks.clone(), c.wr));
        spawn(&sh, subscriber(sh.clone(), c.rd, acks));
    }
    let mut writers = Vec::new();
    for i in 0..spec.publishers {
        let c = Client::connect(&spec.addr, format!("sb{tag}-p{i}"), 300, 4096)
            .await
            .with_context(|| format!("publisher {i}"))?;
        spawn(&sh, ack_reader(sh.clone(), i, c.rd));
        writers.push(c.wr);
    }
    let start = Instant::now();
    for (i, wr) in writers.into_iter().enumerate() {
        spawn(&sh, publisher(sh.clone(), spec.clone(), i, wr, start));
    }

    // Sampling, once a second.
    let broker = spec.broker_pid.map(Proc::pid);
    let me = Proc::this();
    let mut rss_max: Option<u64> = None;
    let sample_rss = |rss_max: &mut Option<u64>| {
        if let Some(b) = &broker
            && let Ok(kb) = b.rss_kb()
        {
            *rss_max = Some(rss_max.map_or(kb, |m| m.max(kb)));
        }
    };
    let snapshot = |sh: &Shared| -> Result<Snapshot> {
        Ok(Snapshot {
            at: Instant::now(),
            received: sh.received.get(),
            broker_cpu: broker.as_ref().map(Proc::cpu_s).transpose()?,
            gen_cpu: me.cpu_s()?,
        })
    };
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut begin = None;
    if spec.warmup == 0 {
        begin = Some(snapshot(&sh)?);
        sh.measuring.set(true);
    }
    let mut per_second = Vec::new();
    let mut last = 0;
    for s in 1..=spec.warmup + spec.duration {
        tick.tick().await;
        let r = sh.received.get();
        if s > spec.warmup {
            per_second.push(r - last);
            sample_rss(&mut rss_max);
        }
        if s == spec.warmup {
            begin = Some(snapshot(&sh)?);
            sh.measuring.set(true);
        }
        last = r;
    }
    let end = snapshot(&sh)?;
    sh.measuring.set(false);
    sh.stop.set(true);
    let begin = begin.ok_or_else(|| anyhow!("no measurement window"))?;

    // Drain: what was sent may still be on its way.
    let drain_limit = Instant::now()
        + if spec.payload > 64 * 1024 {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(3)
        };
    let expected = || sh.pubs.iter().map(|p| p.sent.get()).sum::<u64>() * fan;
    let all_acked =
        || spec.qos == QoS::AtMostOnce || sh.pubs.iter().all(|p| p.acked.get() >= p.sent.get());
    while Instant::now() < drain_limit && (sh.received.get() < expected() || !all_acked()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sample_rss(&mut rss_max);

    let sent: u64 = sh.pubs.iter().map(|p| p.sent.get()).sum();
    let expected = sent * fan;
    let received = sh.received.get();
    let wall = end.at.duration_since(begin.at).as_secs_f64();
    let measured = end.received - begin.received;
    let broker_cpu = match (begin.broker_cpu, end.broker_cpu) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let broker_util = broker_cpu.map(|c| c / wall);
    let gen_util = (end.gen_cpu - begin.gen_cpu) / wall;
    let median = median(&per_second);
    let hist = sh.hist.borrow();
    let lat = |q: f64| hist.quantile(q).map(|ns| ns as f64 / 1000.0);
    let errors = sh.errors.borrow().clone();
    let ratio = if expected > 0 {
        received as f64 / expected as f64
    } else {
        0.0
    };
    let qualifies = errors.is_empty()
        && match spec.rate {
            // Paced: the broker kept up with the rate and the generator was not the limit.
            Some(rate) => median >= 0.99 * rate * fan as f64 && gen_util <= spec.max_gen_util,
            // Saturating: the broker, not the generator or the window, was the limit.
            None => {
                broker_util.is_some_and(|u| u >= spec.min_broker_util)
                    && gen_util <= spec.max_gen_util
            }
        };

    let mut m = Map::new();
    m.insert("sent".into(), json!(sent));
    m.insert("expected".into(), json!(expected));
    m.insert("received".into(), json!(received));
    m.insert("delivery_ratio".into(), json!(round(ratio, 6)));
    m.insert("rate_median_per_s".into(), json!(median));
    m.insert("rate_per_s".into(), json!(per_second));
    m.insert(
        "mb_per_s".into(),
        json!(round(median * spec.payload as f64 / 1e6, 2)),
    );
    m.insert(
        "latency_us".into(),
        json!({
            "samples": hist.count(),
            "p50": lat(0.5).map(|v| round(v, 1)),
            "p99": lat(0.99).map(|v| round(v, 1)),
            "p999": lat(0.999).map(|v| round(v, 1)),
        }),
    );
    m.insert("measured_s".into(), json!(round(wall, 3)));
    m.insert(
        "broker_cpu_s".into(),
        json!(broker_cpu.map(|c| round(c, 2))),
    );
    m.insert(
        "broker_cpu_util".into(),
        json!(broker_util.map(|u| round(u, 3))),
    );
    m.insert("gen_cpu_util".into(), json!(round(gen_util, 3)));
    m.insert(
        "msgs_per_broker_cpu_s".into(),
        json!(
            broker_cpu
                .filter(|c| *c > 0.0)
                .map(|c| (measured as f64 / c).round())
        ),
    );
    m.insert("broker_rss_kb".into(), json!(rss_max));
    m.insert("qualifies".into(), json!(qualifies));
    if !errors.is_empty() {
        m.insert(
            "errors".into(),
            json!(errors.iter().take(5).collect::<Vec<_>>()),
        );
    }
    Ok(m)
}

#[derive(Debug)]
struct Snapshot {
    at: Instant,
    received: u64,
    broker_cpu: Option<f64>,
    gen_cpu: f64,
}

fn spawn(sh: &Rc<Shared>, fut: impl Future<Output = Result<()>> + 'static) {
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = fut.await {
            sh.fail(&e);
        }
    });
}

pub(crate) fn median(values: &[u64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match (v.get(n / 2), n % 2) {
        (None, _) => 0.0,
        (Some(&m), 1) => m as f64,
        (Some(&hi), _) => {
            let lo = v.get(n / 2 - 1).copied().unwrap_or(hi);
            (lo + hi) as f64 / 2.0
        }
    }
}

pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

async fn publisher(
    sh: Rc<Shared>,
    spec: LoadSpec,
    i: usize,
    mut wr: OwnedWriteHalf,
    start: Instant,
) -> Result<()> {
    let st = sh.pubs.get(i).ok_or_else(|| anyhow!("no publisher {i}"))?;
    let topic = spec.topology.pub_topic(i);
    let mut publish = Publish {
        dup: false,
        qos: spec.qos,
        retain: false,
        topic: TopicName::try_from_str(&topic).map_err(|e| anyhow!("{topic}: {e}"))?,
        packet_id: 0,
        properties: Properties::default(),
        // Only its length is used: the header is encoded from it, the bytes written after.
        payload: Bytes::from(vec![0u8; spec.payload]),
    };
    let qos1 = spec.qos != QoS::AtMostOnce;
    let batch = (WRITE_BATCH / publish_len(&publish, VERSION)?).max(1) as u64;
    let fan = spec.topology.fanout(spec.subscribers) as u64;
    let window = spec.window as u64 * fan;
    let inflight = spec.inflight as u64;
    let rate = spec.rate.map(|r| r / spec.publishers as f64);
    let publisher_index = u32::try_from(i)?;
    let zeros = spec.payload - STAMP;
    // Large payloads (one per batch): the zeros go out from this buffer, not copied into the
    // batch.
    let large = spec.payload > WRITE_BATCH;
    let zero_tail = if large { vec![0u8; zeros] } else { Vec::new() };
    let mut next_id: u16 = 0;
    let mut wbuf = BytesMut::with_capacity(if large {
        64
    } else {
        WRITE_BATCH + spec.payload
    });
    let mut progress = (Instant::now(), 0u64);

    while !sh.stop.get() {
        let sent = st.sent.get();
        let undelivered = (sent * fan).saturating_sub(st.delivered.get() + st.forgiven.get());
        let mut room = window.saturating_sub(undelivered) / fan;
        if qos1 {
            room = room.min(inflight.saturating_sub(sent - st.acked.get()));
        }
        let mut next_due = None;
        if let Some(r) = rate {
            let due = (r * start.elapsed().as_secs_f64()) as u64;
            if due <= sent {
                next_due = Some(start + Duration::from_secs_f64((sent + 1) as f64 / r));
            }
            room = room.min(due.saturating_sub(sent));
        }
        if room == 0 {
            let now = Instant::now();
            let until = next_due.unwrap_or(now + STALL / 2);
            tokio::select! {
                _ = st.notify.notified() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            let moved = st.delivered.get() + st.acked.get();
            if moved != progress.1 {
                progress = (now, moved);
            } else if next_due.is_none() && now.duration_since(progress.0) > STALL {
                // Nothing moved: the missing deliveries were dropped (QoS 0).
                st.forgiven.set(st.forgiven.get() + undelivered);
                progress.0 = now;
            }
            continue;
        }
        let n = room.min(batch);
        let ts = now_ns();
        for _ in 0..n {
            if qos1 {
                let mut unacked = st.unacked.borrow_mut();
                loop {
                    next_id = next_id.wrapping_add(1).max(1);
                    if let Some(slot) = unacked.get_mut(usize::from(next_id))
                        && !*slot
                    {
                        *slot = true;
                        break;
                    }
                }
                publish.packet_id = next_id;
            }
            encode_publish_header(&publish, VERSION, &mut wbuf)?;
            wbuf.put_u64(ts);
            wbuf.put_u32(publisher_index);
            if !large {
                wbuf.put_bytes(0, zeros);
            }
        }
        // Counted before writing: acknowledgements may arrive while the write is pending.
        st.sent.set(sent + n);
        wr.write_all(&wbuf).await.context("publish")?;
        if large {
            wr.write_all(&zero_tail).await.context("publish")?;
        }
        wbuf.clear();
    }
    Ok(())
}

/// Counts PUBACKs on a publisher's connection.
async fn ack_reader(sh: Rc<Shared>, i: usize, mut rd: PacketReader<OwnedReadHalf>) -> Result<()> {
    let st = sh.pubs.get(i).ok_or_else(|| anyhow!("no publisher {i}"))?;
    loop {
        if !rd.fill().await? {
            bail!("broker closed publisher {i}");
        }
        let mut acked = 0;
        {
            let mut unacked = st.unacked.borrow_mut();
            loop {
                let id = match &rd.decode_raw() {
                    Ok(Some(Packet::PubAck(a))) => a.packet_id,
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => bail!("decode: {e}"),
                };
                if let Some(slot) = unacked.get_mut(usize::from(id))
                    && *slot
                {
                    *slot = false;
                    acked += 1;
                }
            }
        }
        if acked > 0 {
            st.acked.set(st.acked.get() + acked);
            st.notify.notify_one();
        }
    }
}

/// PUBACKs a subscriber owes, written by [`ack_writer`].
#[derive(Debug, Default)]
struct AckOut {
    buf: RefCell<BytesMut>,
    notify: Notify,
}

async fn ack_writer(out: Rc<AckOut>, mut wr: OwnedWriteHalf) -> Result<()> {
    let mut local = BytesMut::new();
    loop {
        out.notify.notified().await;
        std::mem::swap(&mut local, &mut *out.buf.borrow_mut());
        if !local.is_empty() {
            wr.write_all(&local).await.context("send PUBACK")?;
            local.clear();
        }
    }
}

async fn subscriber(
    sh: Rc<Shared>,
    mut rd: PacketReader<OwnedReadHalf>,
    acks: Rc<AckOut>,
) -> Result<()> {
    let mut touched = vec![false; sh.pubs.len()];
    let mut puback = Packet::PubAck(PubAck::new(1));
    loop {
        if !rd.fill().await? {
            bail!("broker closed a subscriber");
        }
        // Everything in one read arrived at the same time.
        let now = now_ns();
        let mut n = 0;
        let mut ack = false;
        {
            let mut hist = sh.measuring.get().then(|| sh.hist.borrow_mut());
            let mut ackbuf = acks.buf.borrow_mut();
            loop {
                let ((ts, index), qos, packet_id) = match rd.skim()? {
                    Some(Skimmed::Publish {
                        qos,
                        packet_id,
                        stamp,
                    }) => (stamp, qos, packet_id),
                    Some(Skimmed::Other) => continue,
                    None => break,
                };
                n += 1;
                if let Some(h) = hist.as_mut() {
                    h.record(now.saturating_sub(ts));
                }
                if let Some(st) = sh.pubs.get(index) {
                    st.delivered.set(st.delivered.get() + 1);
                    if let Some(t) = touched.get_mut(index) {
                        *t = true;
                    }
                }
                if qos != QoS::AtMostOnce {
                    if let Packet::PubAck(a) = &mut puback {
                        a.packet_id = packet_id;
                    }
                    encode(&puback, VERSION, &mut ackbuf)?;
                    ack = true;
                }
            }
        }
        sh.received.set(sh.received.get() + n);
        for (st, t) in sh.pubs.iter().zip(touched.iter_mut()) {
            if *t {
                *t = false;
                st.notify.notify_one();
            }
        }
        if ack {
            acks.notify.notify_one();
        }
    }
}

/// The timestamp and publisher index at the start of a payload.
pub(crate) fn stamp(payload: &[u8]) -> (u64, usize) {
    let ts = payload
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes);
    let index = payload
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map_or(u32::MAX, u32::from_be_bytes);
    (ts, index as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3, 1, 2]), 2.0);
        assert_eq!(median(&[4, 1, 2, 3]), 2.5);
    }

    #[test]
    fn stamps_round_trip() {
        let mut b = BytesMut::new();
        b.put_u64(123_456_789);
        b.put_u32(7);
        b.put_bytes(0, 52);
        assert_eq!(stamp(&b), (123_456_789, 7));
        assert_eq!(stamp(b"short").1, u32::MAX as usize);
    }
}
