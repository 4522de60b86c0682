//! The churn of the mixed-load scenario: seeded connection episodes from a pool of client ids,
//! as production traffic has them around a steady stream. Each episode connects (MQTT 3.1.1 or
//! 5.0, so the same id comes back with another version and takes the session over; some with
//! persistent sessions), subscribes to a wildcard or `$SYS/#`, and then does one of: a burst
//! of QoS 0/1/2 messages of up to 2 KB on 200 topics (5 % retained), a stall without reading
//! while others flood, an abrupt close, garbage after CONNECT, or a well-behaved session that
//! reads a while and disconnects. Every episode ends within a bounded time whatever the broker
//! does.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use starling_proto::{
    Connect, Disconnect, Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode,
    TopicName, encode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

use crate::client::{PacketReader, subscribe_packet};

/// A small, fast, seeded generator (xorshift64*): the same seed gives the same churn.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A random QoS level.
    pub(crate) fn qos(&mut self) -> QoS {
        match self.below(3) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// True with probability `percent` / 100.
    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// What the churn should look like.
#[derive(Debug, Clone)]
pub(crate) struct ChurnSpec {
    pub(crate) addr: String,
    /// Client ids `churn-0` .. `churn-{ids-1}`.
    pub(crate) ids: usize,
    /// Share of episodes that speak MQTT 5.0 (the rest 3.1.1), percent.
    pub(crate) v5_percent: usize,
    /// Share with a persistent session (5.0: expiry 60 s), percent.
    pub(crate) persistent_percent: usize,
    /// Filters an episode subscribes to (one, chosen at random).
    pub(crate) filters: Vec<String>,
    /// Largest payload of a burst's messages (uniform from 0 up to it), bytes.
    pub(crate) max_payload: usize,
}

/// Counters of the churn, shared by every episode (and read from the measuring thread).
#[derive(Debug, Default)]
pub(crate) struct ChurnStats {
    pub(crate) started: AtomicU64,
    pub(crate) connected: AtomicU64,
    /// CONNACK with an error code, or the connection closed before CONNACK.
    pub(crate) refused: AtomicU64,
    /// Connect errors, timeouts and closes the episode did not ask for.
    pub(crate) failed: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) finished: AtomicU64,
}

impl ChurnStats {
    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The counters as the `churn` object of a JSON line.
    pub(crate) fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (name, c) in [
            ("episodes", &self.started),
            ("connected", &self.connected),
            ("refused", &self.refused),
            ("failed", &self.failed),
            ("published", &self.published),
            ("received", &self.received),
        ] {
            m.insert(name.into(), Self::get(c).into());
        }
        m
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Longest an episode may take after its own plan (connect, reads, writes to a broker that does
/// not read); then it is dropped, which closes its socket.
const EPISODE_LIMIT: Duration = Duration::from_secs(8);

/// Runs one episode chosen by `rng`; never fails, only counts.
pub(crate) async fn episode(spec: Rc<ChurnSpec>, stats: Arc<ChurnStats>, mut rng: Rng) {
    bump(&stats.started, 1);
    let run = run_episode(&spec, &stats, &mut rng);
    match tokio::time::timeout(EPISODE_LIMIT, run).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => bump(&stats.failed, 1),
    }
    bump(&stats.finished, 1);
}

struct Conn {
    rd: PacketReader<tokio::net::tcp::OwnedReadHalf>,
    wr: OwnedWriteHalf,
    version: ProtocolVersion,
    out: BytesMut,
}

impl Conn {
    fn queue(&mut self, p: &Packet) -> Result<()> {
        encode(p, self.version, &mut self.out).context("encode")
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            let out = self.out.split();
            self.wr.write_all(&out).await.context("write")?;
        }
        Ok(())
    }

    /// Reads and answers what the broker sends for `d`: PUBACK/PUBREC for deliveries, PUBREL
    /// for PUBREC, PUBCOMP for PUBREL. False once the broker closed the connection.
    async fn read_for(&mut self, d: Duration, stats: &ChurnStats) -> Result<bool> {
        let until = Instant::now() + d;
        loop {
            while let Some(p) = self.rd.decode()? {
                let answer = match p {
                    Packet::Publish(p) => {
                        bump(&stats.received, 1);
                        match p.qos {
                            QoS::AtMostOnce => None,
                            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.packet_id))),
                            QoS::ExactlyOnce => Some(Packet::PubRec(PubAck::new(p.packet_id))),
                        }
                    }
                    Packet::PubRec(a) => Some(Packet::PubRel(PubAck::new(a.packet_id))),
                    Packet::PubRel(a) => Some(Packet::PubComp(PubAck::new(a.packet_id))),
                    _ => None,
                };
                if let Some(a) = answer {
                    self.queue(&a)?;
                }
            }
            self.flush().await?;
            match tokio::time::timeout_at(until, self.rd.fill()).await {
                Err(_) => return Ok(true),
                Ok(Ok(true)) => {}
                Ok(Ok(false) | Err(_)) => return Ok(false),
            }
        }
    }

    async fn disconnect(&mut self) -> Result<()> {
        self.queue(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))?;
        self.flush().await
    }
}

async fn run_episode(spec: &ChurnSpec, stats: &ChurnStats, rng: &mut Rng) -> Result<()> {
    let id = format!("churn-{}", rng.below(spec.ids));
    let version = if rng.chance(spec.v5_percent) {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let persistent = rng.chance(spec.persistent_percent);
    let mut properties = Properties::default();
    if persistent && version == ProtocolVersion::V5 {
        properties.session_expiry_interval = Some(60);
    }
    let stream = TcpStream::connect(&spec.addr).await.context("connect")?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (rd, wr) = stream.into_split();
    let mut c = Conn {
        rd: PacketReader::with_version(rd, 16 * 1024, version),
        wr,
        version,
        out: BytesMut::new(),
    };
    c.queue(&Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: !persistent,
        keep_alive: 30,
        client_id: id,
        will: None,
        username: None,
        password: None,
        properties,
        bridge: false,
    })))?;
    if rng.chance(5) {
        // Garbage right after CONNECT: the broker closes this one; nobody else may notice.
        let junk: Vec<u8> = (0..64).map(|_| (rng.next() & 0xFF) as u8).collect();
        c.out.extend_from_slice(&junk);
        c.flush().await?;
        c.read_for(Duration::from_millis(500), stats).await?;
        return Ok(());
    }
    c.flush().await?;
    match c.rd.next().await {
        Ok(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => bump(&stats.connected, 1),
        Ok(_) | Err(_) => {
            bump(&stats.refused, 1);
            return Ok(());
        }
    }
    let filter = spec
        .filters
        .get(rng.below(spec.filters.len()))
        .map_or("churn/#", String::as_str);
    let qos = rng.qos();
    c.queue(&subscribe_packet(filter, qos)?)?;
    c.flush().await?;
    match rng.below(10) {
        // A burst of up to 200 messages of up to 2 KB on 200 topics, 5 % retained.
        0..=3 => {
            let n = 1 + rng.below(200);
            for k in 0..n {
                let qos = rng.qos();
                let topic = format!("churn/{}/x", rng.below(200));
                let payload = Bytes::from(vec![0x42; rng.below(spec.max_payload)]);
                let p = Publish {
                    dup: false,
                    qos,
                    retain: rng.chance(5),
                    topic: TopicName::try_from_str(&topic).map_err(|e| anyhow::anyhow!("{e}"))?,
                    packet_id: if qos == QoS::AtMostOnce {
                        0
                    } else {
                        (k + 1) as u16
                    },
                    properties: Properties::default(),
                    payload,
                };
                c.queue(&Packet::Publish(p))?;
            }
            c.flush().await?;
            bump(&stats.published, n as u64);
            if c.read_for(Duration::from_secs(1), stats).await? {
                c.disconnect().await?;
            }
        }
        // Stops reading for 5 s while others flood, then goes away abruptly.
        4 | 5 => tokio::time::sleep(Duration::from_secs(5)).await,
        // Closes abruptly after a moment.
        6 => {
            let d = Duration::from_millis(rng.below(500) as u64);
            c.read_for(d, stats).await?;
        }
        // A well-behaved client: reads a while, then DISCONNECT.
        _ => {
            let d = Duration::from_millis(200 + rng.below(2000) as u64);
            if c.read_for(d, stats).await? {
                c.disconnect().await?;
            } else {
                bail!("closed by the broker");
            }
        }
    }
    Ok(())
}
