//! The scale curves of a steady flow (subcommands in `scale.rs`): `clients` (many connected
//! clients, half publishing slowly to the other half, then a saturating stream beside them:
//! latency, broker CPU per message, throughput) and `subs` (publish cost against the number
//! of subscriptions, exact or wildcard, over many distinct topics; SUBSCRIBE cost with them
//! in place).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::BytesMut;
use serde_json::{Map, Value, json};
use starling_proto::{Packet, QoS, encode};
use tokio::io::AsyncWriteExt;

use crate::client::{Client, VERSION, check_suback, subscribe_many_packet};
use crate::hist::Histogram;
use crate::load::{LoadSpec, Topology, round};
use crate::procstat::Proc;
use crate::scale::{
    Connected, Connector, Deliveries, FilterKind, Paced, PacedState, Target, connect_many, diff,
    paced, sample, spawn_counter,
};

// --- clients ---------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct ClientsSpec {
    pub(crate) clients: usize,
    pub(crate) interval: Duration,
    pub(crate) warmup: u64,
    pub(crate) duration: u64,
    pub(crate) fast_duration: u64,
    pub(crate) fast_pairs: usize,
    pub(crate) concurrency: usize,
}

pub(crate) async fn clients(t: &Target, s: &ClientsSpec) -> Result<Map<String, Value>> {
    let broker = t.broker();
    let (_, rss_before) = sample(broker.as_ref());
    let half = s.clients / 2;
    let tag = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut m = Map::new();
    m.insert("clients".into(), json!(half * 2));
    let mut conn = Connector {
        target: t.clone(),
        id: Rc::new(move |k: usize| format!("sc{tag}-s{k}")),
        filter: Some(Rc::new(|k: usize| format!("scale/c/{k}"))),
        qos: QoS::AtMostOnce,
        clean: true,
        keep_alive: 600,
        chunk: 1024,
        hold: true,
    };
    let subs = connect_many(&conn, half, s.concurrency, true, deadline).await?;
    conn.id = Rc::new(move |k: usize| format!("sc{tag}-p{k}"));
    conn.filter = None;
    let pubs = if subs.failed == 0 {
        connect_many(&conn, half, s.concurrency, true, deadline).await?
    } else {
        Connected::default()
    };
    let connected = subs.clients.len() + pubs.clients.len();
    let seconds = subs.seconds + pubs.seconds;
    m.insert("connected".into(), json!(connected));
    m.insert("connect_s".into(), json!(round(seconds, 3)));
    m.insert(
        "connect_rate_per_s".into(),
        json!((connected as f64 / seconds.max(1e-9)).round()),
    );
    let failed = subs.failed + pubs.failed;
    if failed > 0 {
        m.insert("failed".into(), json!(failed));
        m.insert(
            "errors".into(),
            json!([subs.first_error.or(pubs.first_error)]),
        );
        m.insert("qualifies".into(), json!(false));
        return Ok(m);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_connected) = sample(broker.as_ref());
    m.insert("broker_rss_kb_before".into(), json!(rss_before));
    m.insert("broker_rss_kb_connected".into(), json!(rss_connected));
    m.insert(
        "rss_per_conn_bytes".into(),
        json!(
            rss_before
                .zip(rss_connected)
                .map(|(b, a)| (a.saturating_sub(b) * 1024) as f64 / connected.max(1) as f64)
                .map(f64::round)
        ),
    );

    // Subscriber k gets what publisher k sends on scale/c/k.
    let d = Deliveries::new();
    // Dropping a write half would shut the connection's sending side: kept till the end.
    let mut sub_writers = Vec::new();
    for (_, c) in subs.clients {
        spawn_counter(d.clone(), c.rd);
        sub_writers.push(c.wr);
    }
    let mut pubs = pubs.clients;
    pubs.sort_by_key(|(k, _)| *k);
    let (keep, writers): (Vec<_>, Vec<_>) = pubs.into_iter().map(|(_, c)| (c.rd, c.wr)).unzip();
    let st = Rc::new(PacedState::default());
    let rate = half as f64 / s.interval.as_secs_f64();
    let driver = tokio::task::spawn_local(paced(
        Paced {
            writers,
            rate,
            payload: 64,
            topic: Box::new(move |n: u64| format!("scale/c/{}", n % half.max(1) as u64)),
        },
        st.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(s.warmup)).await;
    let me = Proc::this();
    let (cpu0, gen0, r0, t0) = (
        sample(broker.as_ref()).0,
        me.cpu_s()?,
        d.received.get(),
        Instant::now(),
    );
    d.measuring.set(true);
    tokio::time::sleep(Duration::from_secs(s.duration)).await;
    d.measuring.set(false);
    let (cpu1, gen1, r1) = (sample(broker.as_ref()).0, me.cpu_s()?, d.received.get());
    let wall = t0.elapsed().as_secs_f64();
    let cpu = diff(cpu0, cpu1);
    let delivered = r1 - r0;
    m.insert(
        "slow".into(),
        json!({
            "rate_target_per_s": round(rate, 1),
            "rate_per_s": round(delivered as f64 / wall, 1),
            "latency_us": d.latency(),
            "broker_cpu_util": cpu.map(|c| round(c / wall, 3)),
            "broker_us_per_msg": cpu.filter(|_| delivered > 0).map(|c| round(c * 1e6 / delivered as f64, 2)),
            "gen_cpu_util": round((gen1 - gen0) / wall, 3),
            "max_send_lag_ms": round(st.max_lag_ns.get() as f64 / 1e6, 2),
        }),
    );

    // A saturating stream beside them.
    if s.fast_duration > 0 && s.fast_pairs > 0 {
        let fast = crate::load::run(LoadSpec {
            addr: t.addr(),
            sub_addr: None,
            topology: Topology::P2p,
            publishers: s.fast_pairs,
            subscribers: s.fast_pairs,
            qos: QoS::AtMostOnce,
            payload: 64,
            inflight: 64,
            window: 1000,
            rate: None,
            warmup: 1,
            duration: s.fast_duration,
            broker_pid: t.broker_pid,
            min_broker_util: 0.90,
            max_gen_util: 0.90,
            persistent: false,
        })
        .await?;
        let keys = [
            "rate_median_per_s",
            "latency_us",
            "broker_cpu_util",
            "gen_cpu_util",
            "msgs_per_broker_cpu_s",
            "delivery_ratio",
            "qualifies",
            "errors",
        ];
        let fast: Map<String, Value> = fast
            .into_iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .collect();
        m.insert("fast".into(), Value::Object(fast));
    }
    st.stop.set(true);
    d.stop.set(true);
    driver.await.context("slow publishers")??;
    let sent = st.sent.get();
    let drain = Instant::now() + Duration::from_secs(2);
    while d.received.get() < sent && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    m.insert("slow_sent".into(), json!(sent));
    m.insert(
        "slow_delivery_ratio".into(),
        json!(round(d.received.get() as f64 / sent.max(1) as f64, 6)),
    );
    m.insert("broker_rss_kb".into(), json!(sample(broker.as_ref()).1));
    let errors = d.errors.borrow().clone();
    m.insert("qualifies".into(), json!(errors.is_empty()));
    if !errors.is_empty() {
        m.insert("errors".into(), json!(errors));
    }
    drop((keep, sub_writers));
    Ok(m)
}

// --- subs ----------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct SubsSpec {
    pub(crate) subs: usize,
    pub(crate) kind: FilterKind,
    pub(crate) connections: usize,
    pub(crate) per_packet: usize,
    pub(crate) rate: f64,
    pub(crate) publishers: usize,
    pub(crate) warmup: u64,
    pub(crate) duration: u64,
    pub(crate) probes: usize,
}

/// SUBSCRIBEs a connection may have unanswered while setting up.
const SUBSCRIBE_WINDOW: usize = 8;

/// A spread of `x` over 0..n (Fibonacci hashing): consecutive messages hit distant topics.
fn spread(x: u64, n: u64) -> u64 {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) % n.max(1)
}

pub(crate) async fn subs(t: &Target, s: &SubsSpec) -> Result<Map<String, Value>> {
    let broker = t.broker();
    let tag = std::process::id();
    let kind = s.kind;
    let deadline = Instant::now() + Duration::from_secs(600);
    let conn = Connector {
        target: t.clone(),
        id: Rc::new(move |k: usize| format!("ss{tag}-{k}")),
        filter: None,
        qos: QoS::AtMostOnce,
        clean: true,
        keep_alive: 600,
        chunk: 64 * 1024,
        hold: true,
    };
    let got = connect_many(&conn, s.connections + s.publishers + 1, 8, true, deadline).await?;
    if let Some(e) = got.first_error {
        bail!("{e}");
    }
    let mut all = got.clients;
    all.sort_by_key(|(k, _)| *k);
    let mut all = all.into_iter().map(|(_, c)| c);
    let subscribers: Vec<Client> = all.by_ref().take(s.connections).collect();
    let publishers: Vec<Client> = all.by_ref().take(s.publishers).collect();
    let mut control = all.next().ok_or_else(|| anyhow!("no control connection"))?;

    // Set up: subscription k on connection k mod C, many filters per SUBSCRIBE.
    let (cpu0, rss0) = sample(broker.as_ref());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in subscribers.into_iter().enumerate() {
        let filters: Vec<u64> = (c as u64..s.subs as u64).step_by(s.connections).collect();
        let per_packet = s.per_packet;
        tasks.push(tokio::task::spawn_local(async move {
            subscribe_all(client, &filters, per_packet, kind).await
        }));
    }
    let mut subscribers = Vec::new();
    for task in tasks {
        subscribers.push(task.await.context("subscribe task")??);
    }
    let setup_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu1, rss1) = sample(broker.as_ref());
    let mut m = Map::new();
    m.insert("kind".into(), json!(kind.name()));
    m.insert("subs".into(), json!(s.subs));
    m.insert("connections".into(), json!(s.connections));
    m.insert("setup_s".into(), json!(round(setup_s, 3)));
    m.insert(
        "setup_subs_per_s".into(),
        json!((s.subs as f64 / setup_s.max(1e-9)).round()),
    );
    m.insert(
        "setup_broker_us_per_sub".into(),
        json!(diff(cpu0, cpu1).map(|c| round(c * 1e6 / s.subs.max(1) as f64, 3))),
    );
    m.insert("broker_rss_kb_before".into(), json!(rss0));
    m.insert("broker_rss_kb_subscribed".into(), json!(rss1));
    m.insert(
        "rss_per_sub_bytes".into(),
        json!(
            rss0.zip(rss1)
                .map(|(b, a)| (a.saturating_sub(b) * 1024) as f64 / s.subs.max(1) as f64)
                .map(|v| round(v, 1))
        ),
    );

    // SUBSCRIBE cost with the subscriptions in place: single-filter round trips.
    if s.probes > 0 {
        let mut h = Histogram::new();
        let (c0, _) = sample(broker.as_ref());
        let p0 = Instant::now();
        for i in 0..s.probes {
            let filter = kind.filter(s.subs as u64 + 1_000_000 + i as u64);
            let sent = Instant::now();
            control.send_subscribe(&filter, QoS::AtMostOnce).await?;
            loop {
                match control.rd.next().await? {
                    Packet::SubAck(a) => {
                        check_suback(&a.reasons)?;
                        break;
                    }
                    _ => continue,
                }
            }
            h.record(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        let wall = p0.elapsed().as_secs_f64();
        let (c1, _) = sample(broker.as_ref());
        let q = |q: f64| h.quantile(q).map(|ns| round(ns as f64 / 1000.0, 1));
        m.insert(
            "subscribe".into(),
            json!({
                "probes": s.probes,
                "rtt_us": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999)},
                "mean_us": round(wall * 1e6 / s.probes as f64, 1),
                "broker_us_per_subscribe": diff(c0, c1).map(|c| round(c * 1e6 / s.probes as f64, 2)),
            }),
        );
    }

    // Publish cost: a paced stream to topics spread over every subscription.
    let d = Deliveries::new();
    let mut keep = Vec::new();
    for c in subscribers {
        spawn_counter(d.clone(), c.rd);
        keep.push(c.wr);
    }
    let mut drivers = Vec::new();
    let (n_subs, p_count) = (s.subs as u64, s.publishers as u64);
    for (p, c) in publishers.into_iter().enumerate() {
        let p = p as u64;
        let state = Rc::new(PacedState::default());
        drivers.push((state.clone(), c.rd));
        let topic = Box::new(move |n: u64| kind.topic(spread(n * p_count + p, n_subs)));
        tokio::task::spawn_local(paced(
            Paced {
                writers: vec![c.wr],
                rate: s.rate / p_count as f64,
                payload: 64,
                topic,
            },
            state,
        ));
    }
    let sent = || drivers.iter().map(|(s, _)| s.sent.get()).sum::<u64>();
    tokio::time::sleep(Duration::from_secs(s.warmup)).await;
    let me = Proc::this();
    let (c0, g0, r0, s0, w0) = (
        sample(broker.as_ref()).0,
        me.cpu_s()?,
        d.received.get(),
        sent(),
        Instant::now(),
    );
    d.measuring.set(true);
    tokio::time::sleep(Duration::from_secs(s.duration)).await;
    d.measuring.set(false);
    let (c1, g1, r1, s1) = (
        sample(broker.as_ref()).0,
        me.cpu_s()?,
        d.received.get(),
        sent(),
    );
    let wall = w0.elapsed().as_secs_f64();
    for (state, _) in &drivers {
        state.stop.set(true);
    }
    d.stop.set(true);
    let published = s1 - s0;
    let cpu = diff(c0, c1);
    let drain = Instant::now() + Duration::from_secs(2);
    while d.received.get() < sent() && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lag = drivers
        .iter()
        .map(|(s, _)| s.max_lag_ns.get())
        .max()
        .unwrap_or(0);
    m.insert(
        "publish".into(),
        json!({
            "rate_target_per_s": s.rate,
            "rate_per_s": round(published as f64 / wall, 1),
            "delivered_per_s": round((r1 - r0) as f64 / wall, 1),
            "delivery_ratio": round(d.received.get() as f64 / sent().max(1) as f64, 6),
            "latency_us": d.latency(),
            "broker_cpu_util": cpu.map(|c| round(c / wall, 3)),
            "broker_us_per_msg": cpu.filter(|_| published > 0).map(|c| round(c * 1e6 / published as f64, 3)),
            "gen_cpu_util": round((g1 - g0) / wall, 3),
            "max_send_lag_ms": round(lag as f64 / 1e6, 2),
        }),
    );
    m.insert("broker_rss_kb".into(), json!(sample(broker.as_ref()).1));
    let errors = d.errors.borrow().clone();
    m.insert("qualifies".into(), json!(errors.is_empty()));
    if !errors.is_empty() {
        m.insert("errors".into(), json!(errors));
    }
    drop(keep);
    Ok(m)
}

/// Subscribes `client` to `kind.filter(k)` for every k of `filters`, `per_packet` to a
/// SUBSCRIBE, with up to [`SUBSCRIBE_WINDOW`] unanswered.
async fn subscribe_all(
    mut client: Client,
    filters: &[u64],
    per_packet: usize,
    kind: FilterKind,
) -> Result<Client> {
    let mut out = BytesMut::new();
    let mut waiting = 0usize;
    for (i, chunk) in filters.chunks(per_packet).enumerate() {
        let names: Vec<String> = chunk.iter().map(|&k| kind.filter(k)).collect();
        let id = (i % 60_000 + 1) as u16;
        encode(
            &subscribe_many_packet(id, &names, QoS::AtMostOnce)?,
            VERSION,
            &mut out,
        )?;
        client.wr.write_all(&out).await.context("send SUBSCRIBE")?;
        out.clear();
        waiting += 1;
        while waiting >= SUBSCRIBE_WINDOW {
            waiting -= suback(&mut client).await?;
        }
    }
    while waiting > 0 {
        waiting -= suback(&mut client).await?;
    }
    Ok(client)
}

/// Waits for the next SUBACK (1) and checks it.
async fn suback(client: &mut Client) -> Result<usize> {
    loop {
        match client.rd.next().await? {
            Packet::SubAck(a) => {
                check_suback(&a.reasons)?;
                return Ok(1);
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_in_range() {
        assert_eq!(spread(7, 1), 0);
        assert!((0..1000).all(|x| spread(x, 10) < 10));
    }
}
