//! The scenarios that are not a steady flow: idle connections (connect rate and broker memory
//! per connection) and retained messages (time for one `#` subscriber to receive them all).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};
use starling_proto::{Packet, Properties, Publish, QoS, TopicName, encode};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::client::{Client, check_suback};
use crate::load::round;
use crate::procstat::Proc;

/// Opens `count` idle connections (keep-alive 60 s), `concurrency` handshakes at a time, each
/// subscribed to a topic of its own if `subscribe`, holds them, and reports the connect rate
/// and the broker's RSS growth per connection.
pub(crate) async fn connections(
    addr: &str,
    count: usize,
    concurrency: usize,
    subscribe: bool,
    hold: Duration,
    traffic: Option<Traffic>,
    broker_pid: Option<u32>,
) -> Result<Map<String, Value>> {
    let broker = broker_pid.map(Proc::pid);
    let rss = || broker.as_ref().map(Proc::rss_kb).transpose();
    let cpu = || broker.as_ref().map(Proc::cpu_s).transpose();
    let rss_before = rss()?;
    let cpu_before = cpu()?;
    let tag = std::process::id();
    let next = Rc::new(Cell::new(0usize));
    let held: Rc<RefCell<Vec<(OwnedReadHalf, OwnedWriteHalf)>>> =
        Rc::new(RefCell::new(Vec::with_capacity(count)));
    let failed = Rc::new(Cell::new(0u64));
    let first_error = Rc::new(RefCell::new(None::<String>));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, held, failed, first_error) = (
            next.clone(),
            held.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let addr = addr.to_owned();
        workers.push(tokio::task::spawn_local(async move {
            loop {
                let k = next.get();
                if k >= count {
                    break;
                }
                next.set(k + 1);
                let connected = match Client::connect(&addr, format!("sb{tag}-c{k}"), 60, 64).await
                {
                    Ok(mut c) if subscribe => {
                        let topic = format!("sb{tag}/idle/{k}");
                        c.subscribe(&topic, QoS::AtLeastOnce).await.map(|()| c)
                    }
                    other => other,
                };
                match connected {
                    Ok(c) => held.borrow_mut().push((c.rd.into_inner(), c.wr)),
                    Err(e) => {
                        failed.set(failed.get() + 1);
                        first_error.borrow_mut().get_or_insert(format!("{e:#}"));
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.context("connect worker")?;
    }
    let connect_s = start.elapsed().as_secs_f64();
    let cpu_after = cpu()?;
    let connected = held.borrow().len();
    // Let the broker settle, then take the largest of a few samples.
    let mut rss_after = None;
    let steps = hold.as_millis().div_ceil(250).max(1);
    for _ in 0..steps {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(kb) = rss()? {
            rss_after = Some(rss_after.map_or(kb, |m: u64| m.max(kb)));
        }
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(((a.saturating_sub(b)) * 1024) as f64 / connected as f64)
        }
        _ => None,
    };
    let after_traffic = match traffic {
        Some(t) if subscribe => Some(traffic_then_quiet(addr, tag, count, &t, &held, &rss).await?),
        Some(_) => bail!("--traffic-secs needs --subscribe (the messages go to their topics)"),
        None => None,
    };
    held.borrow_mut().clear();

    let mut m = Map::new();
    if let Some((sent, kb)) = after_traffic {
        m.insert("traffic_messages".into(), json!(sent));
        m.insert("broker_rss_kb_after_traffic".into(), json!(kb));
        let per = rss_before
            .zip(kb)
            .filter(|_| connected > 0)
            .map(|(b, a)| ((a.saturating_sub(b) * 1024) as f64 / connected as f64).round());
        m.insert("rss_per_conn_bytes_after_traffic".into(), json!(per));
    }
    m.insert("connections".into(), json!(count));
    m.insert("connected".into(), json!(connected));
    m.insert("failed".into(), json!(failed.get()));
    m.insert("connect_s".into(), json!(round(connect_s, 3)));
    m.insert(
        "connect_rate_per_s".into(),
        json!((connected as f64 / connect_s).round()),
    );
    m.insert("broker_rss_kb_before".into(), json!(rss_before));
    m.insert("broker_rss_kb".into(), json!(rss_after));
    m.insert("rss_per_conn_bytes".into(), json!(per_conn.map(f64::round)));
    m.insert(
        "broker_cpu_s".into(),
        json!(cpu_before.zip(cpu_after).map(|(a, b)| round(b - a, 2))),
    );
    m.insert("qualifies".into(), json!(connected == count));
    if let Some(e) = first_error.borrow().as_ref() {
        m.insert("errors".into(), json!([e]));
    }
    Ok(m)
}

/// Messages to the idle connections' topics for a while, then quiet again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    /// How long messages flow.
    pub(crate) duration: Duration,
    /// Messages per second in all, 64 B at QoS 0, to the connections' topics in turn.
    pub(crate) rate: u32,
    /// How long to wait after the last message before the broker's RSS is read.
    pub(crate) quiet: Duration,
}

/// One publisher sends `t.rate` messages a second to the topics of the `count` subscribed
/// connections in turn for `t.duration`, while every connection sends a PINGREQ about every
/// 25 s (their keep-alive is 60 s), then nothing for `t.quiet`: the messages sent and the
/// broker's RSS then.
async fn traffic_then_quiet(
    addr: &str,
    tag: u32,
    count: usize,
    t: &Traffic,
    held: &RefCell<Vec<(OwnedReadHalf, OwnedWriteHalf)>>,
    rss: &impl Fn() -> Result<Option<u64>>,
) -> Result<(u64, Option<u64>)> {
    let mut publisher = Client::connect(addr, format!("sb{tag}-traffic"), 60, 64 * 1024).await?;
    let body = Bytes::from(vec![b'x'; 64]);
    // Every 10 ms.
    let per_tick = (t.rate / 100).max(1);
    let end = Instant::now() + t.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let (mut k, mut sent, mut pinged) = (0usize, 0u64, 0usize);
    // Given back below (on an error they are dropped with the run).
    let mut conns = held.take();
    while Instant::now() < end {
        tick.tick().await;
        for _ in 0..per_tick {
            let topic = format!("sb{tag}/idle/{}", k % count.max(1));
            k += 1;
            let name = TopicName::try_from_str(&topic).map_err(|e| anyhow!("{topic}: {e}"))?;
            let publish = Publish::new(name, QoS::AtMostOnce, 0, body.clone());
            encode(&Packet::Publish(publish), crate::client::VERSION, &mut buf)?;
        }
        publisher.wr.write_all(&buf).await.context("publish")?;
        buf.clear();
        sent += u64::from(per_tick);
        // 2,500 ticks in 25 s: each connection pings once in that time.
        let n = conns.len();
        for _ in 0..n.div_ceil(2_500) {
            if let Some((_, wr)) = conns.get_mut(pinged % n.max(1)) {
                wr.write_all(&[0xC0, 0x00]).await.context("PINGREQ")?;
            }
            pinged += 1;
        }
    }
    *held.borrow_mut() = conns;
    drop(publisher);
    tokio::time::sleep(t.quiet).await;
    Ok((sent, rss()?))
}

/// Stores `count` retained messages (QoS 1, `window` unacknowledged at most), then times one
/// new subscriber to `#` until it has received them all.
pub(crate) async fn retained(
    addr: &str,
    count: usize,
    payload: usize,
    window: usize,
    timeout: Duration,
    broker_pid: Option<u32>,
) -> Result<Map<String, Value>> {
    let broker = broker_pid.map(Proc::pid);
    let tag = std::process::id();
    let deadline = Instant::now() + timeout;

    // Phase 1: store.
    let store_start = Instant::now();
    let topic = |k| format!("bench/retained/{}/{}", k / 1000, k % 1000);
    let id = format!("sb{tag}-rp");
    publish_acked(addr, &id, count, payload, window, |_| true, deadline, topic).await?;
    let store_s = store_start.elapsed().as_secs_f64();
    let total = count as u64;

    // Phase 2: one subscriber to everything.
    let cpu_before = broker.as_ref().map(Proc::cpu_s).transpose()?;
    let start = Instant::now();
    let mut sub = Client::connect(addr, format!("sb{tag}-rs"), 300, 64 * 1024).await?;
    sub.send_subscribe("#", QoS::AtMostOnce).await?;
    let mut received = 0u64;
    let mut rss_max = None;
    let mut last_sample = Instant::now();
    while received < total {
        let more = tokio::time::timeout_at(deadline.into(), sub.rd.fill())
            .await
            .map_err(|_| anyhow!("timed out with {received} of {total} retained messages"))??;
        if !more {
            bail!("broker closed the subscriber after {received} retained messages");
        }
        while let Some(p) = sub.rd.decode()? {
            match p {
                Packet::Publish(p) if p.retain => received += 1,
                Packet::SubAck(a) => check_suback(&a.reasons)?,
                _ => {}
            }
        }
        if last_sample.elapsed() > Duration::from_millis(200) {
            last_sample = Instant::now();
            if let Some(kb) = broker.as_ref().map(Proc::rss_kb).transpose()? {
                rss_max = Some(rss_max.map_or(kb, |m: u64| m.max(kb)));
            }
        }
    }
    let receive_s = start.elapsed().as_secs_f64();
    let cpu_after = broker.as_ref().map(Proc::cpu_s).transpose()?;
    if let Some(kb) = broker.as_ref().map(Proc::rss_kb).transpose()? {
        rss_max = Some(rss_max.map_or(kb, |m: u64| m.max(kb)));
    }
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);

    let mut m = Map::new();
    m.insert("retained".into(), json!(count));
    m.insert("store_s".into(), json!(round(store_s, 3)));
    m.insert("received".into(), json!(received));
    m.insert("receive_s".into(), json!(round(receive_s, 3)));
    m.insert(
        "rate_median_per_s".into(),
        json!((received as f64 / receive_s).round()),
    );
    m.insert("broker_cpu_s".into(), json!(cpu.map(|c| round(c, 2))));
    m.insert(
        "msgs_per_broker_cpu_s".into(),
        json!(
            cpu.filter(|c| *c > 0.0)
                .map(|c| (received as f64 / c).round())
        ),
    );
    m.insert("broker_rss_kb".into(), json!(rss_max));
    m.insert("qualifies".into(), json!(received == total));
    Ok(m)
}

/// Publishes `count` messages of `payload` bytes (QoS 1, `window` unacknowledged at most,
/// retained or not) on the topics `topic(0)`, `topic(1)`, ... from one client named
/// `client_id`, and returns once the broker has acknowledged them all.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish_acked(
    addr: &str,
    client_id: &str,
    count: usize,
    payload: usize,
    window: usize,
    retain: impl Fn(u64) -> bool,
    deadline: Instant,
    topic: impl Fn(u64) -> String,
) -> Result<()> {
    let publisher = Client::connect(addr, client_id.to_owned(), 300, 64 * 1024).await?;
    let acked = Rc::new(Cell::new(0u64));
    let notify = Rc::new(Notify::new());
    let reader = {
        let (acked, notify) = (acked.clone(), notify.clone());
        let mut rd = publisher.rd;
        let client_id = client_id.to_owned();
        tokio::task::spawn_local(async move {
            loop {
                if !rd.fill().await? {
                    bail!("broker closed the publisher {client_id}");
                }
                while let Some(p) = rd.decode()? {
                    if let Packet::PubAck(_) = p {
                        acked.set(acked.get() + 1);
                    }
                }
                notify.notify_one();
            }
        })
    };
    let mut wr = publisher.wr;
    let body = Bytes::from(vec![b'r'; payload]);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut sent = 0u64;
    let total = count as u64;
    while sent < total {
        let room = (window as u64).saturating_sub(sent - acked.get());
        if room == 0 {
            wait(&notify, deadline, &reader).await?;
            continue;
        }
        for _ in 0..room.min(256).min(total - sent) {
            let topic = topic(sent);
            let publish = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: retain(sent),
                topic: TopicName::try_from_str(&topic).map_err(|e| anyhow!("{topic}: {e}"))?,
                packet_id: (sent % 65535 + 1) as u16,
                properties: Properties::default(),
                payload: body.clone(),
            };
            encode(&Packet::Publish(publish), crate::client::VERSION, &mut buf)?;
            sent += 1;
        }
        wr.write_all(&buf).await.context("publish")?;
        buf.clear();
    }
    while acked.get() < total {
        wait(&notify, deadline, &reader).await?;
    }
    reader.abort();
    Ok(())
}

/// Waits for a wake-up from the ack reader, failing when it has ended or at the deadline.
async fn wait(
    notify: &Notify,
    deadline: Instant,
    reader: &tokio::task::JoinHandle<Result<()>>,
) -> Result<()> {
    if reader.is_finished() {
        bail!("a publisher's connection ended");
    }
    tokio::time::timeout_at(deadline.into(), notify.notified())
        .await
        .map_err(|_| anyhow!("timed out waiting for PUBACKs"))
}
