//! The mixed-load scenario: a steady QoS 1 stream (publisher i to subscriber i on
//! `bench/steady/{i}`, clean sessions, paced) measured while the churn of `churn.rs` runs
//! around it. Reports the steady stream's latency percentiles and delivery ratio, the broker's
//! CPU, its RSS once a second (and after a cool-down, once the churn's sessions could have
//! expired), and the bytes it wrote to storage.
//!
//! Latency is measured from the time a message was *due* (publisher start + n / rate) when it
//! was sent more than 2 ms late, so that a publisher held back by its window of unacknowledged
//! messages does not hide the wait (no coordinated omission); from the time it was written
//! otherwise (tokio's timer fires up to 1 ms late, which is no broker's doing). Payload: bytes 0..8 the due time (`now_ns`), 8..12
//! the publisher, 12..16 the message number, then zeros.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};
use starling_proto::{Packet, Properties, PubAck, Publish, QoS, TopicName, encode};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::churn::{ChurnSpec, ChurnStats, Rng, episode};
use crate::client::{Client, PacketReader, VERSION, now_ns};
use crate::hist::Histogram;
use crate::load::round;
use crate::procstat::Proc;

/// One mixed-load run.
#[derive(Debug, Clone)]
pub(crate) struct MixedSpec {
    pub(crate) addr: String,
    /// Steady publisher/subscriber pairs.
    pub(crate) pairs: usize,
    /// Messages per second per steady publisher.
    pub(crate) rate: f64,
    pub(crate) payload: usize,
    /// Most unacknowledged PUBLISH packets per steady publisher.
    pub(crate) inflight: usize,
    /// Churn episodes started per second.
    pub(crate) episodes_per_s: f64,
    /// Most episodes running at once (each is bounded in time too).
    pub(crate) max_episodes: usize,
    pub(crate) churn: ChurnSpec,
    pub(crate) seed: u64,
    pub(crate) warmup: u64,
    pub(crate) duration: u64,
    /// Seconds after the churn stops (the steady stream goes on) before the last RSS sample.
    pub(crate) cooldown: u64,
    pub(crate) broker_pid: Option<u32>,
}

/// Bytes before the zeros of a steady payload.
const HEAD: usize = 16;
/// A steady message sent at most this late is stamped with its send time, not its due time.
const TIMER_SLACK_NS: u64 = 2_000_000;
/// Longest wait for the steady stream to be delivered and acknowledged at the end.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Steady {
    /// Messages written, acknowledged and delivered, by publisher.
    sent: Vec<Cell<u64>>,
    acked: Vec<RefCell<Vec<bool>>>,
    delivered: Vec<RefCell<Vec<bool>>>,
    duplicates: Cell<u64>,
    unacked: Vec<Cell<u64>>,
    wake: Vec<Notify>,
    hist: RefCell<Histogram>,
    /// Worst latency of the messages due in each second of the measured window, ns.
    worst: RefCell<Vec<u64>>,
    /// Latencies are recorded for messages due in [from, to) (`now_ns`).
    window: Cell<(u64, u64)>,
    stop: Cell<bool>,
    errors: RefCell<Vec<String>>,
}

impl Steady {
    fn fail(&self, e: &anyhow::Error) {
        self.errors.borrow_mut().push(format!("{e:#}"));
    }
}

fn mark(v: &RefCell<Vec<bool>>, n: usize) -> bool {
    let mut v = v.borrow_mut();
    if v.len() <= n {
        v.resize(n + 1, false);
    }
    v.get_mut(n)
        .is_some_and(|slot| !std::mem::replace(slot, true))
}

/// Runs the scenario; returns the fields of its JSON line.
pub(crate) async fn run(spec: MixedSpec) -> Result<Map<String, Value>> {
    let steady = Rc::new(Steady {
        sent: (0..spec.pairs).map(|_| Cell::new(0)).collect(),
        acked: (0..spec.pairs).map(|_| RefCell::default()).collect(),
        delivered: (0..spec.pairs).map(|_| RefCell::default()).collect(),
        unacked: (0..spec.pairs).map(|_| Cell::new(0)).collect(),
        wake: (0..spec.pairs).map(|_| Notify::new()).collect(),
        duplicates: Cell::new(0),
        hist: RefCell::new(Histogram::new()),
        worst: RefCell::default(),
        window: Cell::new((u64::MAX, u64::MAX)),
        stop: Cell::new(false),
        errors: RefCell::default(),
    });
    // Subscribers first, each subscribed before any message is published.
    for i in 0..spec.pairs {
        let mut c = Client::connect(&spec.addr, format!("steady-sub-{i}"), 60, 64 * 1024).await?;
        c.subscribe(&format!("bench/steady/{i}"), QoS::AtLeastOnce)
            .await?;
        let st = steady.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = subscriber(&st, c).await
                && !st.stop.get()
            {
                st.fail(&e);
            }
        });
    }
    let start = Instant::now();
    for i in 0..spec.pairs {
        let c = Client::connect(&spec.addr, format!("steady-pub-{i}"), 60, 16 * 1024).await?;
        let (st, sp) = (steady.clone(), spec.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = publisher(&st, &sp, i, c, start).await {
                st.fail(&e);
            }
        });
    }

    // The churn, on a thread of its own so that the steady stream's clients are not queued
    // behind its work (both threads share the generator's core; the steady one, mostly
    // asleep, is scheduled first when it wakes); and a sample of the broker once a second.
    let stats = Arc::new(ChurnStats::default());
    let churn_on = Arc::new(AtomicBool::new(true));
    let churn_thread = if spec.episodes_per_s <= 0.0 {
        None
    } else {
        let (spec, stats, on) = (spec.clone(), stats.clone(), churn_on.clone());
        let thread = std::thread::Builder::new()
            .name("churn".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("churn runtime")?;
                tokio::task::LocalSet::new().block_on(&rt, churn(spec, stats, on));
                Ok(())
            })
            .context("churn thread")?;
        Some(thread)
    };
    let broker = spec.broker_pid.map(Proc::pid);
    let me = Proc::this();
    let mut rss_mib = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let sample = |rss: &mut Vec<f64>| {
        if let Some(kb) = broker.as_ref().and_then(|b| b.rss_kb().ok()) {
            rss.push(round(kb as f64 / 1024.0, 1));
        }
    };
    let snapshot = || {
        (
            Instant::now(),
            broker.as_ref().and_then(|b| b.cpu_s().ok()),
            broker.as_ref().and_then(|b| b.write_bytes().ok()),
            me.cpu_s().unwrap_or(0.0),
            ChurnStats::get(&stats.started),
        )
    };
    for _ in 0..spec.warmup {
        tick.tick().await;
        sample(&mut rss_mib);
    }
    let begin = snapshot();
    steady.window.set((now_ns(), u64::MAX));
    for _ in 0..spec.duration {
        tick.tick().await;
        sample(&mut rss_mib);
    }
    let end = snapshot();
    steady.window.set((steady.window.get().0, now_ns()));
    churn_on.store(false, Ordering::Relaxed);
    let mut rss_after = None;
    for _ in 0..spec.cooldown {
        tick.tick().await;
        sample(&mut rss_mib);
        rss_after = rss_mib.last().copied();
    }

    // The churn's last episodes end within their time limit.
    if let Some(thread) = churn_thread {
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| anyhow!("churn thread lost"))?
            .map_err(|_| anyhow!("churn thread panicked"))??;
    }

    // Stop publishing; wait for what was sent to be acknowledged and delivered.
    steady.stop.set(true);
    for w in &steady.wake {
        w.notify_one();
    }
    let drain_until = Instant::now() + DRAIN;
    let settled = |st: &Steady| {
        (0..spec.pairs).all(|i| {
            st.unacked.get(i).is_some_and(|u| u.get() == 0) && {
                let acked = st.acked.get(i).map(|a| count(&a.borrow())).unwrap_or(0);
                let got = st.delivered.get(i).map(|d| count(&d.borrow())).unwrap_or(0);
                got >= acked
            }
        })
    };
    while Instant::now() < drain_until && !settled(&steady) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut acked, mut delivered, mut lost) = (0u64, 0u64, 0u64);
    for i in 0..spec.pairs {
        let (Some(a), Some(d)) = (steady.acked.get(i), steady.delivered.get(i)) else {
            continue;
        };
        let (a, d) = (a.borrow(), d.borrow());
        acked += count(&a);
        delivered += count(&d);
        lost += a
            .iter()
            .enumerate()
            .filter(|&(n, &x)| x && !d.get(n).copied().unwrap_or(false))
            .count() as u64;
    }
    let sent: u64 = steady.sent.iter().map(Cell::get).sum();
    let wall = end.0.duration_since(begin.0).as_secs_f64();
    let broker_cpu = match (begin.1, end.1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let written = match (begin.2, end.2) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let hist = steady.hist.borrow();
    let ms = |q: f64| hist.quantile(q).map(|ns| round(ns as f64 / 1e6, 3));
    let mut m = Map::new();
    m.insert("pairs".into(), json!(spec.pairs));
    m.insert("rate_per_publisher".into(), json!(spec.rate));
    m.insert("episodes_per_s".into(), json!(spec.episodes_per_s));
    m.insert("seed".into(), json!(spec.seed));
    m.insert("warmup_s".into(), json!(spec.warmup));
    m.insert("duration_s".into(), json!(spec.duration));
    m.insert("measured_s".into(), json!(round(wall, 3)));
    m.insert(
        "steady".into(),
        json!({
            "sent": sent,
            "acked": acked,
            "delivered": delivered,
            "lost": lost,
            "duplicates": steady.duplicates.get(),
            "delivery_ratio": if acked > 0 { round(delivered as f64 / acked as f64, 6) } else { 0.0 },
            "latency_ms": {
                "samples": hist.count(),
                "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": ms(1.0),
                "worst_per_second": steady.worst.borrow().iter().map(|&ns| round(ns as f64 / 1e6, 1)).collect::<Vec<_>>(),
            },
        }),
    );
    let mut churn = stats.to_json();
    churn.insert("episodes_measured".into(), json!(end.4 - begin.4));
    m.insert("churn".into(), Value::Object(churn));
    m.insert(
        "broker_cpu_util".into(),
        json!(broker_cpu.map(|c| round(c / wall, 3))),
    );
    m.insert(
        "gen_cpu_util".into(),
        json!(round((end.3 - begin.3) / wall, 3)),
    );
    m.insert(
        "broker_written_mib".into(),
        json!(written.map(|b| round(b as f64 / (1 << 20) as f64, 1))),
    );
    m.insert(
        "broker_rss_mib".into(),
        json!({
            "max": rss_mib.iter().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
            "end_of_churn": rss_mib.get((spec.warmup + spec.duration) as usize - 1).copied(),
            "after_cooldown": rss_after,
            "per_second": rss_mib,
        }),
    );
    let errors = steady.errors.borrow();
    if !errors.is_empty() {
        m.insert(
            "errors".into(),
            json!(errors.iter().take(5).collect::<Vec<_>>()),
        );
    }
    Ok(m)
}

/// Only the churn, for `warmup + duration` seconds, then until its episodes have ended: run as
/// a process of its own beside a steady-only run (`--episodes-per-s 0`), the two can be given
/// different priorities, so that the steady stream's clients never wait for the churn's.
pub(crate) async fn churn_only(spec: MixedSpec) -> Result<Map<String, Value>> {
    let stats = Arc::new(ChurnStats::default());
    let on = Arc::new(AtomicBool::new(true));
    tokio::task::spawn_local(churn(spec.clone(), stats.clone(), on.clone()));
    tokio::time::sleep(Duration::from_secs(spec.warmup + spec.duration)).await;
    on.store(false, Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(20);
    while ChurnStats::get(&stats.finished) < ChurnStats::get(&stats.started)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut m = Map::new();
    m.insert("churn".into(), Value::Object(stats.to_json()));
    Ok(m)
}

fn count(v: &[bool]) -> u64 {
    v.iter().filter(|&&x| x).count() as u64
}

/// Starts an episode every 1/rate s while `on`, each with its own generator seeded from the
/// run's, at most `max_episodes` at once (an episode due while that many run is skipped and
/// the schedule goes on).
async fn churn(spec: MixedSpec, stats: Arc<ChurnStats>, on: Arc<AtomicBool>) {
    let mut rng = Rng::new(spec.seed);
    let churn = Rc::new(spec.churn.clone());
    let running = Rc::new(Cell::new(0usize));
    let period = Duration::from_secs_f64(1.0 / spec.episodes_per_s.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while on.load(Ordering::Relaxed) {
        tick.tick().await;
        let seed = rng.next();
        if running.get() >= spec.max_episodes {
            continue;
        }
        running.set(running.get() + 1);
        let (c, s, r) = (churn.clone(), stats.clone(), running.clone());
        tokio::task::spawn_local(async move {
            episode(c, s, Rng::new(seed)).await;
            r.set(r.get() - 1);
        });
    }
}

async fn publisher(
    st: &Rc<Steady>,
    spec: &MixedSpec,
    i: usize,
    c: Client,
    start: Instant,
) -> Result<()> {
    let Client { rd, mut wr } = c;
    let missing = || anyhow!("no publisher {i}");
    let wake = st.wake.get(i).ok_or_else(missing)?;
    let unacked = st.unacked.get(i).ok_or_else(missing)?;
    let sent = st.sent.get(i).ok_or_else(missing)?;
    let ids = Rc::new(RefCell::new(IdMap::default()));
    // PUBACKs in a task of their own: they free the window.
    {
        let (st, ids) = (st.clone(), ids.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = ack_reader(&st, i, &ids, rd).await
                && !(st.stop.get() && st.unacked.get(i).is_some_and(|u| u.get() == 0))
            {
                st.fail(&e);
            }
        });
    }
    let topic = format!("bench/steady/{i}");
    let mut publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from_str(&topic).map_err(|e| anyhow!("{topic}: {e}"))?,
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    let start_ns = now_ns().saturating_sub(start.elapsed().as_nanos() as u64);
    let period = Duration::from_secs_f64(1.0 / spec.rate);
    let index = u32::try_from(i)?;
    let mut out = BytesMut::new();
    let mut n: u32 = 0;
    while !st.stop.get() {
        let due = start + period * n;
        if unacked.get() >= spec.inflight as u64 {
            wake.notified().await;
            continue;
        }
        tokio::time::sleep_until(due).await;
        // Stamped with the time it was due, if sent late because the window was full (see
        // the module's comment); with the time it is sent if only the timer was late (tokio's
        // timer has a 1 ms resolution, which is not the broker's doing).
        let due_ns = start_ns + due.duration_since(start).as_nanos() as u64;
        let sent_ns = now_ns();
        let stamp = if sent_ns.saturating_sub(due_ns) <= TIMER_SLACK_NS {
            sent_ns
        } else {
            due_ns
        };
        publish.packet_id = ids.borrow_mut().take(n);
        let mut payload = BytesMut::with_capacity(spec.payload.max(HEAD));
        payload.put_u64(stamp);
        payload.put_u32(index);
        payload.put_u32(n);
        payload.put_bytes(0, spec.payload.saturating_sub(HEAD));
        publish.payload = payload.freeze();
        encode(&Packet::Publish(publish.clone()), VERSION, &mut out)?;
        unacked.set(unacked.get() + 1);
        sent.set(sent.get() + 1);
        n = n.checked_add(1).context("too many steady messages")?;
        wr.write_all(&out).await.context("publish")?;
        out.clear();
    }
    Ok(())
}

async fn ack_reader(
    st: &Steady,
    i: usize,
    ids: &RefCell<IdMap>,
    mut rd: PacketReader<OwnedReadHalf>,
) -> Result<()> {
    let missing = || anyhow!("no publisher {i}");
    let unacked = st.unacked.get(i).ok_or_else(missing)?;
    let acked = st.acked.get(i).ok_or_else(missing)?;
    loop {
        match rd.next().await? {
            Packet::PubAck(a) => {
                if let Some(seq) = ids.borrow_mut().release(a.packet_id) {
                    unacked.set(unacked.get().saturating_sub(1));
                    mark(acked, seq as usize);
                }
                if let Some(w) = st.wake.get(i) {
                    w.notify_one();
                }
            }
            other => {
                return Err(anyhow!(
                    "publisher {i}: unexpected {:?}",
                    other.packet_type()
                ));
            }
        }
    }
}

/// Packet ids of a publisher's unacknowledged messages, to the message numbers.
#[derive(Debug, Default)]
struct IdMap {
    next: u16,
    seq: HashMap<u16, u32>,
}

impl IdMap {
    fn take(&mut self, seq: u32) -> u16 {
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.seq.entry(self.next) {
                e.insert(seq);
                return self.next;
            }
        }
    }

    fn release(&mut self, pid: u16) -> Option<u32> {
        self.seq.remove(&pid)
    }
}

async fn subscriber(st: &Steady, c: Client) -> Result<()> {
    let Client { mut rd, mut wr } = c;
    let mut acks = BytesMut::new();
    loop {
        if !rd.fill().await? {
            return Err(anyhow!("steady subscriber disconnected"));
        }
        let now = now_ns();
        while let Some(p) = rd.decode()? {
            let Packet::Publish(p) = p else { continue };
            if p.qos != QoS::AtMostOnce {
                encode(
                    &Packet::PubAck(PubAck::new(p.packet_id)),
                    VERSION,
                    &mut acks,
                )?;
            }
            let Some(head) = p.payload.get(..HEAD) else {
                continue;
            };
            let word = |r: std::ops::Range<usize>| {
                head.get(r)
                    .map(|b| b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)))
                    .unwrap_or(0)
            };
            let (due, publisher, seq) = (word(0..8), word(8..12) as usize, word(12..16) as usize);
            if let Some(d) = st.delivered.get(publisher)
                && !mark(d, seq)
            {
                st.duplicates.set(st.duplicates.get() + 1);
            }
            let (from, to) = st.window.get();
            if due >= from && due < to {
                let latency = now.saturating_sub(due);
                st.hist.borrow_mut().record(latency);
                let second = ((due - from) / 1_000_000_000) as usize;
                let mut worst = st.worst.borrow_mut();
                if worst.len() <= second {
                    worst.resize(second + 1, 0);
                }
                if let Some(w) = worst.get_mut(second) {
                    *w = (*w).max(latency);
                }
            }
        }
        if !acks.is_empty() {
            wr.write_all(&acks).await.context("PUBACK")?;
            acks.clear();
        }
    }
}
