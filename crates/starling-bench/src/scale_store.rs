//! The scale curves about what a broker keeps: retained messages (the time to subscribe to
//! one topic, to a narrow filter and to `#` with N stored, and the memory per message), and a
//! full durable store (`fill`: persistent sessions with queued messages, stored through the
//! broker; `ready`: how long a restart takes until the port accepts and `/readyz` says ready,
//! and the memory it then holds). The subcommands are in `scale.rs`.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use starling_proto::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{Client, check_suback};
use crate::load::round;
use crate::scale::{Connector, Target, connect_many, sample};
use crate::special::publish_acked;

/// Retained topics: `scale/r/{k / 100}/{k % 100}`.
fn retained_topic(k: u64) -> String {
    format!("scale/r/{}/{}", k / 100, k % 100)
}

/// Stores `count` retained messages, then times subscriptions to one of them, to 100 of them
/// (`scale/r/5/+`) and to all of them (`#`), each on a fresh connection.
pub(crate) async fn retained(
    t: &Target,
    count: usize,
    payload: usize,
    repeats: usize,
    deadline: Instant,
) -> Result<Map<String, Value>> {
    let broker = t.broker();
    let tag = std::process::id();
    let addr = t.addr();
    let (_, rss0) = sample(broker.as_ref());
    let t0 = Instant::now();
    let id = format!("sr{tag}-p");
    publish_acked(
        &addr,
        &id,
        count,
        payload,
        1000,
        |_| true,
        deadline,
        retained_topic,
    )
    .await?;
    let store_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss1) = sample(broker.as_ref());

    let mut m = stored(count, payload, store_s, rss0, rss1);
    let n = count as u64;
    let filters = [
        ("one", "scale/r/5/7".to_owned(), u64::from(n > 507), repeats),
        (
            "narrow",
            "scale/r/5/+".to_owned(),
            n.saturating_sub(500).min(100),
            repeats,
        ),
        (
            "all",
            "#".to_owned(),
            n,
            if count <= 100_000 { repeats.min(3) } else { 1 },
        ),
    ];
    let mut k = 0;
    for (name, filter, expected, times) in filters {
        let (mut suback, mut done) = (Vec::new(), Vec::new());
        for _ in 0..times {
            k += 1;
            let (s, d) =
                subscribe_retained(&addr, format!("sr{tag}-s{k}"), &filter, expected, deadline)
                    .await
                    .with_context(|| format!("subscribing to {filter}"))?;
            suback.push(s);
            done.push(d);
        }
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().map(|x| round(x * 1000.0, 3))
        };
        m.insert(
            name.into(),
            json!({
                "filter": filter,
                "messages": expected,
                "repeats": times,
                "suback_ms": med(&suback),
                "all_received_ms": med(&done),
                "per_message_us": med(&done).filter(|_| expected > 0).map(|ms| round(ms * 1000.0 / expected as f64, 3)),
            }),
        );
    }
    m.insert("broker_rss_kb".into(), json!(sample(broker.as_ref()).1));
    m.insert("qualifies".into(), json!(true));
    Ok(m)
}

/// `count` retained messages, each among [`AMONG_STREAM`] messages to a topic nobody
/// subscribes to, as a gateway publishes its devices' state between their readings: the
/// broker's memory per retained message then (what each keeps beyond its own bytes).
pub(crate) async fn retained_among_stream(
    t: &Target,
    count: usize,
    payload: usize,
    deadline: Instant,
) -> Result<Map<String, Value>> {
    let broker = t.broker();
    let tag = std::process::id();
    let (_, rss0) = sample(broker.as_ref());
    let every = AMONG_STREAM + 1;
    let topic = move |j: u64| {
        if j.is_multiple_of(every) {
            retained_topic(j / every)
        } else {
            "scale/stream".to_owned()
        }
    };
    let retain = move |j: u64| j.is_multiple_of(every);
    let total = count
        .checked_mul(usize::try_from(every)?)
        .ok_or_else(|| anyhow!("too many messages"))?;
    let id = format!("sr{tag}-g");
    let t0 = Instant::now();
    publish_acked(
        &t.addr(),
        &id,
        total,
        payload,
        1000,
        retain,
        deadline,
        topic,
    )
    .await?;
    let store_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss1) = sample(broker.as_ref());
    let mut m = stored(count, payload, store_s, rss0, rss1);
    m.insert("others".into(), json!(total - count));
    m.insert("qualifies".into(), json!(true));
    Ok(m)
}

/// The figures of storing `count` retained messages: how long it took, and the broker's RSS
/// before and after (KiB), with what that makes per retained message.
fn stored(
    count: usize,
    payload: usize,
    store_s: f64,
    rss0: Option<u64>,
    rss1: Option<u64>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("retained".into(), json!(count));
    m.insert("payload".into(), json!(payload));
    m.insert("store_s".into(), json!(round(store_s, 3)));
    m.insert(
        "store_per_s".into(),
        json!((count as f64 / store_s.max(1e-9)).round()),
    );
    m.insert("broker_rss_kb_before".into(), json!(rss0));
    m.insert("broker_rss_kb_stored".into(), json!(rss1));
    m.insert(
        "rss_per_retained_bytes".into(),
        json!(
            rss0.zip(rss1)
                .map(|(b, a)| (a.saturating_sub(b) * 1024) as f64 / count.max(1) as f64)
                .map(|v| round(v, 1))
        ),
    );
    m
}

/// Messages of the stream published between two retained ones.
const AMONG_STREAM: u64 = 49;

/// Subscribes a new client to `filter` and waits for `expected` retained messages: the
/// seconds until its SUBACK and until the last of them.
async fn subscribe_retained(
    addr: &str,
    id: String,
    filter: &str,
    expected: u64,
    deadline: Instant,
) -> Result<(f64, f64)> {
    let mut sub = Client::connect(addr, id, 300, 64 * 1024).await?;
    let start = Instant::now();
    sub.send_subscribe(filter, QoS::AtMostOnce).await?;
    let (mut suback, mut received) = (None, 0u64);
    while suback.is_none() || received < expected {
        let more = tokio::time::timeout_at(deadline.into(), sub.rd.fill())
            .await
            .map_err(|_| anyhow!("timed out with {received} of {expected} retained messages"))??;
        if !more {
            bail!("broker closed the subscriber after {received} retained messages");
        }
        while let Some(p) = sub.rd.decode()? {
            match p {
                Packet::Publish(p) if p.retain => received += 1,
                Packet::SubAck(a) => {
                    check_suback(&a.reasons)?;
                    suback = Some(start.elapsed().as_secs_f64());
                }
                _ => {}
            }
        }
    }
    let done = start.elapsed().as_secs_f64();
    Ok((suback.unwrap_or(done), done))
}

/// What `fill` stores.
#[derive(Debug)]
pub(crate) struct FillSpec {
    pub(crate) sessions: usize,
    pub(crate) messages: usize,
    pub(crate) publishers: usize,
    pub(crate) inflight: usize,
    pub(crate) concurrency: usize,
    pub(crate) deadline: Instant,
}

/// Persistent sessions `st-{k}` subscribed (QoS 1) to `st/{k}` and disconnected, then
/// `messages` QoS 1 messages of 64 bytes on `st/{m mod sessions}`, queued for them.
pub(crate) async fn fill(t: &Target, s: &FillSpec) -> Result<Map<String, Value>> {
    let conn = Connector {
        target: t.clone(),
        id: Rc::new(|k: usize| format!("st-{k:07}")),
        filter: Some(Rc::new(|k: usize| format!("st/{k}"))),
        qos: QoS::AtLeastOnce,
        clean: false,
        keep_alive: 600,
        chunk: 1024,
        hold: false,
    };
    let got = connect_many(&conn, s.sessions, s.concurrency, true, s.deadline).await?;
    if let Some(e) = got.first_error {
        bail!("after {} sessions: {e}", got.done);
    }
    let mut m = Map::new();
    m.insert("sessions".into(), json!(got.done));
    m.insert("sessions_s".into(), json!(round(got.seconds, 3)));
    m.insert(
        "sessions_per_s".into(),
        json!((got.done as f64 / got.seconds.max(1e-9)).round()),
    );

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let (p_count, n_sessions) = (s.publishers, s.sessions.max(1) as u64);
    let tag = std::process::id();
    for p in 0..p_count {
        // Publisher p sends messages p, p + P, p + 2P, ...
        let count = s.messages / p_count + usize::from(p < s.messages % p_count);
        let addr = t.addr();
        let (inflight, deadline) = (s.inflight, s.deadline);
        tasks.push(tokio::task::spawn_local(async move {
            let topic =
                move |j: u64| format!("st/{}", (j * p_count as u64 + p as u64) % n_sessions);
            let id = format!("sf{tag}-p{p}");
            publish_acked(&addr, &id, count, 64, inflight, |_| false, deadline, topic).await
        }));
    }
    for task in tasks {
        task.await.context("publisher")??;
    }
    let secs = t0.elapsed().as_secs_f64();
    m.insert("messages".into(), json!(s.messages));
    m.insert("messages_s".into(), json!(round(secs, 3)));
    m.insert(
        "messages_per_s".into(),
        json!((s.messages as f64 / secs.max(1e-9)).round()),
    );
    m.insert("broker_rss_kb".into(), json!(sample(t.broker().as_ref()).1));
    m.insert("qualifies".into(), json!(true));
    Ok(m)
}

/// Seconds of wall clock since `since_ns` (ns since the Unix epoch).
fn since(since_ns: u64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    now.saturating_sub(since_ns) as f64 / 1e9
}

/// Waits until the broker's port accepts and, with `http_port`, until `/readyz` answers 200;
/// then reads its memory and what `/metrics` says it holds.
pub(crate) async fn ready(
    t: &Target,
    since_ns: u64,
    http_port: Option<u16>,
    deadline: Instant,
) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    let addr = t.addr();
    loop {
        if TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{addr} did not accept in time");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    m.insert("port_s".into(), json!(round(since(since_ns), 3)));
    let http = http_port.map(|p| format!("{}:{p}", t.host));
    if let Some(http) = &http {
        loop {
            if let Ok((200, _)) = get(http, "/readyz").await {
                break;
            }
            if Instant::now() > deadline {
                bail!("{http}/readyz was not ready in time");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        m.insert("ready_s".into(), json!(round(since(since_ns), 3)));
    }
    let broker = t.broker();
    m.insert(
        "broker_rss_kb_ready".into(),
        json!(sample(broker.as_ref()).1),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.insert("broker_rss_kb".into(), json!(sample(broker.as_ref()).1));
    m.insert(
        "broker_peak_rss_kb".into(),
        json!(broker.as_ref().and_then(|b| b.hwm_kb().ok())),
    );
    if let Some(http) = &http {
        let (_, text) = get(http, "/metrics").await?;
        let mut held = Map::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            // `name{label="value"} v` is kept as `name_value`.
            if let (Some(series), Some(v)) = (parts.next(), parts.next())
                && let (name, label) = series.split_once('{').unwrap_or((series, ""))
                && matches!(
                    name,
                    "starling_sessions"
                        | "starling_messages_queued"
                        | "starling_subscriptions"
                        | "starling_retained_messages"
                )
                && let Ok(v) = v.parse::<f64>()
            {
                let mut key = name.trim_start_matches("starling_").to_owned();
                if let Some(value) = label.split('"').nth(1) {
                    key = format!("{key}_{value}");
                }
                held.insert(key, json!(v));
            }
        }
        m.insert("restored".into(), Value::Object(held));
    }
    m.insert("qualifies".into(), json!(true));
    Ok(m)
}

/// A plain HTTP/1.0 GET (so that the body is not chunked): the status code and the body.
async fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.context("send")?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("{path}: no answer"))?
        .context("read")?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{path}: not an HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_filter_holds_a_hundred() {
        let n = (0..10_000u64)
            .filter(|&k| retained_topic(k).starts_with("scale/r/5/"))
            .count();
        assert_eq!(n, 100);
        assert_eq!(retained_topic(507), "scale/r/5/7");
    }
}
