//! The `delayed` plugin: a PUBLISH to `$delayed/{seconds}/{topic}` is taken (acknowledged,
//! not routed) and published to `{topic}` after `{seconds}`, with its QoS, retain flag,
//! payload and properties, as the broker's own message.
//!
//! Durable: each delayed message is written (and synced) to `delayed.redb` in the data
//! directory before the PUBLISH is acknowledged, and deleted once the message it became is
//! committed to the broker's store; so a restart (or `kill -9`) loses none, and one that
//! happens between the release and that commit publishes it again (at least once). Without
//! a data directory (durability `memory`) they are kept in memory only.
//!
//! Bounded: at most `max_messages` wait (more are refused with 0x97 Quota exceeded), and at
//! most `max_delay_secs`. A topic that is not `$delayed/{seconds}/{topic}` with a valid topic
//! not starting with `$` is refused with 0x90 Topic name invalid (3.x: dropped).
//!
//! The publisher's authorization applies to the topic it sent: to let a client delay
//! messages to `t`, allow it to publish to `$delayed/+/t`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;
use starling_broker::Broker;
use starling_broker::hook::{Answer, ClientRef, Event, Events, Hook, PublishVerdict};
use starling_proto::{
    DecodeLimits, Packet, ProtocolVersion, Publish, ReasonCode, TopicName, decode, encode,
};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{BoxFuture, Built, PluginCtx, PluginStats, de};
use crate::connection::Stop;

/// The prefix of the topics this plugin takes.
pub const PREFIX: &str = "$delayed/";

/// Delayed messages by sequence number: the due time (Unix ms, big-endian) then the PUBLISH
/// encoded as MQTT 5.
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("delayed");

/// How often a released message's commit is looked at.
const COMMIT_POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_max_delay")]
    max_delay_secs: u32,
    #[serde(default = "default_max_messages")]
    max_messages: usize,
}

fn default_max_delay() -> u32 {
    // 42 days, as EMQX.
    42 * 24 * 3600
}

fn default_max_messages() -> usize {
    100_000
}

fn settings(own: toml::Table) -> anyhow::Result<Settings> {
    let s: Settings = de(own)?;
    if s.max_delay_secs == 0 {
        anyhow::bail!("max_delay_secs: must be at least 1");
    }
    if !(1..=10_000_000).contains(&s.max_messages) {
        anyhow::bail!(
            "max_messages: {} is out of bounds (1 ..= 10000000)",
            s.max_messages
        );
    }
    Ok(s)
}

/// Checks the settings.
pub fn check(own: toml::Table) -> anyhow::Result<()> {
    settings(own).map(|_| ())
}

/// Builds the plugin: opens (or creates) `delayed.redb` and reads what waits in it.
pub fn build(own: toml::Table, ctx: &PluginCtx) -> anyhow::Result<Built> {
    let s = settings(own)?;
    let db = match &ctx.data_dir {
        Some(dir) => Some(Arc::new(open(dir)?)),
        None => None,
    };
    let mut waiting = BTreeMap::new();
    let mut next_seq = 1;
    if let Some(db) = &db {
        for (seq, due, p) in load(db)? {
            next_seq = next_seq.max(seq + 1);
            waiting.insert((due, seq), p);
        }
        if !waiting.is_empty() {
            info!(plugin = %ctx.name, count = waiting.len(), "delayed messages restored");
        }
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(State { waiting, next_seq }),
        writing: AtomicUsize::new(0),
        notify: Notify::new(),
        db,
        max_delay_secs: s.max_delay_secs,
        max_messages: s.max_messages,
        stats: ctx.stats.clone(),
    });
    let task = shared.clone();
    Ok(Built {
        tasks: vec![Box::new(move |broker, stop| -> BoxFuture {
            Box::pin(release(task, broker, stop))
        })],
        ..Built::hook(Arc::new(Delayed(shared)))
    })
}

fn open(dir: &Path) -> anyhow::Result<Database> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("delayed.redb");
    let db = Database::create(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?;
    tx.commit()?;
    Ok(db)
}

/// Everything waiting in the file: sequence, due time, message. A record that does not
/// decode is skipped and logged (it cannot be published).
fn load(db: &Database) -> anyhow::Result<Vec<(u64, u64, Publish)>> {
    let tx = db.begin_read()?;
    let table = tx.open_table(TABLE)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let (seq, bytes) = (k.value(), v.value());
        match decode_record(bytes) {
            Some((due, p)) => out.push((seq, due, p)),
            None => warn!(seq, "a delayed message record does not decode; skipped"),
        }
    }
    Ok(out)
}

fn encode_record(due: u64, p: &Publish) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    let mut stored = p.clone();
    // Any id: the encoding wants one at QoS 1 and 2; it is not used.
    stored.packet_id = 1;
    encode(&Packet::Publish(stored), ProtocolVersion::V5, &mut buf).ok()?;
    let mut out = due.to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    Some(out)
}

fn decode_record(bytes: &[u8]) -> Option<(u64, Publish)> {
    let (due, rest) = bytes.split_first_chunk::<8>()?;
    let mut buf = BytesMut::from(rest);
    let limits = DecodeLimits {
        max_packet_size: u32::MAX,
        ..DecodeLimits::default()
    };
    match decode(&mut buf, ProtocolVersion::V5, &limits) {
        Ok(Some(Packet::Publish(mut p))) => {
            p.packet_id = 0;
            Some((u64::from_be_bytes(*due), p))
        }
        _ => None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct State {
    /// By due time (Unix ms) and sequence.
    waiting: BTreeMap<(u64, u64), Publish>,
    next_seq: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Messages being written to the file (counted against `max_messages`).
    writing: AtomicUsize,
    /// Woken when a message is added (its due time may be the earliest).
    notify: Notify,
    db: Option<Arc<Database>>,
    max_delay_secs: u32,
    max_messages: usize,
    stats: Arc<PluginStats>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a message to the waiting set (written already, if there is a file).
    fn add(&self, due: u64, seq: u64, p: Publish) {
        self.lock().waiting.insert((due, seq), p);
        self.notify.notify_one();
    }

    /// How many messages wait (or are being written).
    fn count(&self) -> usize {
        self.lock().waiting.len() + self.writing.load(Ordering::Relaxed)
    }
}

/// `$delayed/{seconds}/{topic}`: the delay and the target, or why not.
fn parse(topic: &str, max_delay_secs: u32) -> Result<(u32, TopicName), ReasonCode> {
    let rest = topic
        .strip_prefix(PREFIX)
        .ok_or(ReasonCode::TopicNameInvalid)?;
    let (secs, target) = rest.split_once('/').ok_or(ReasonCode::TopicNameInvalid)?;
    let secs: u32 = secs.parse().map_err(|_| ReasonCode::TopicNameInvalid)?;
    if secs > max_delay_secs || target.is_empty() || target.starts_with('$') {
        return Err(ReasonCode::TopicNameInvalid);
    }
    let target = TopicName::try_from_str(target).map_err(|_| ReasonCode::TopicNameInvalid)?;
    Ok((secs, target))
}

/// The hook.
#[derive(Debug)]
struct Delayed(Arc<Shared>);

impl Hook for Delayed {
    fn name(&self) -> &str {
        "delayed"
    }

    fn events(&self) -> Events {
        Events::NONE.with(Event::Publish)
    }

    fn on_publish(&self, _: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        if !p.topic.as_str().starts_with(PREFIX) {
            return Answer::Now(PublishVerdict::Pass);
        }
        let shared = &self.0;
        let (secs, target) = match parse(p.topic.as_str(), shared.max_delay_secs) {
            Ok(x) => x,
            Err(reason) => return Answer::Now(PublishVerdict::Drop(reason)),
        };
        if shared.count() >= shared.max_messages {
            return Answer::Now(PublishVerdict::Drop(ReasonCode::QuotaExceeded));
        }
        let mut message = p.clone();
        message.topic = target;
        message.dup = false;
        message.packet_id = 0;
        let due = now_ms().saturating_add(u64::from(secs) * 1000);
        let seq = {
            let mut st = shared.lock();
            st.next_seq += 1;
            st.next_seq - 1
        };
        let Some(db) = shared.db.clone() else {
            shared.add(due, seq, message);
            return Answer::Now(PublishVerdict::Taken);
        };
        let Some(record) = encode_record(due, &message) else {
            return Answer::Now(PublishVerdict::Drop(ReasonCode::PacketTooLarge));
        };
        shared.writing.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        // Acknowledged only once it is on disk.
        Answer::Later(Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || write(&db, seq, &record)).await;
            shared.writing.fetch_sub(1, Ordering::Relaxed);
            match written {
                Ok(Ok(())) => {
                    shared.add(due, seq, message);
                    PublishVerdict::Taken
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot store a delayed message; refused");
                    shared.stats.failed();
                    PublishVerdict::Drop(ReasonCode::UnspecifiedError)
                }
                Err(_) => {
                    shared.stats.failed();
                    PublishVerdict::Drop(ReasonCode::UnspecifiedError)
                }
            }
        }))
    }
}

fn write(db: &Database, seq: u64, record: &[u8]) -> anyhow::Result<()> {
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?.insert(seq, record)?;
    tx.commit()?;
    Ok(())
}

fn delete(db: &Database, seqs: &[u64]) -> anyhow::Result<()> {
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(TABLE)?;
        for seq in seqs {
            table.remove(seq)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Publishes each message when it is due, and deletes its record once the broker's store
/// has what it became; ends at `stop`.
async fn release(shared: Arc<Shared>, broker: Arc<Broker>, stop: Arc<Stop>) {
    // Released messages whose record waits for the broker's commit: sequence and ticket.
    let mut committing: Vec<(u64, Option<u64>)> = Vec::new();
    loop {
        let next = shared.lock().waiting.keys().next().map(|(due, _)| *due);
        let mut wait = next.map_or(Duration::from_secs(3600), |due| {
            Duration::from_millis(due.saturating_sub(now_ms()))
        });
        if !committing.is_empty() {
            wait = wait.min(COMMIT_POLL);
        }
        tokio::select! {
            () = stop.wait() => return,
            () = shared.notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        let due: Vec<(u64, Publish)> = {
            let mut st = shared.lock();
            let later = st.waiting.split_off(&(now.saturating_add(1), 0));
            std::mem::replace(&mut st.waiting, later)
                .into_iter()
                .map(|((_, seq), p)| (seq, p))
                .collect()
        };
        for (seq, p) in due {
            let (_, ticket) = broker.publish_message(p, Instant::now());
            committing.push((seq, ticket));
        }
        let done: Vec<u64> = committing
            .iter()
            .filter(|(_, t)| t.is_none_or(|t| broker.is_committed(t)))
            .map(|(seq, _)| *seq)
            .collect();
        if done.is_empty() {
            continue;
        }
        committing.retain(|(seq, _)| !done.contains(seq));
        if let Some(db) = shared.db.clone() {
            let deleted = tokio::task::spawn_blocking(move || delete(&db, &done)).await;
            if !matches!(deleted, Ok(Ok(()))) {
                // Published again after a restart: at least once.
                warn!("cannot delete released delayed messages from their file");
                shared.stats.failed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use starling_proto::QoS;

    #[test]
    fn topics_are_parsed_and_bounded() {
        let (secs, t) = parse("$delayed/10/a/b", 100).unwrap();
        assert_eq!((secs, t.as_str()), (10, "a/b"));
        assert_eq!(
            parse("$delayed/101/a", 100).unwrap_err(),
            ReasonCode::TopicNameInvalid
        );
        assert!(parse("$delayed/x/a", 100).is_err());
        assert!(parse("$delayed/10", 100).is_err());
        assert!(parse("$delayed/10/", 100).is_err());
        assert!(parse("$delayed/10/$SYS/x", 100).is_err(), "no $ targets");
        assert!(parse("$delayed/-1/a", 100).is_err());
    }

    #[test]
    fn records_round_trip() {
        let p = Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: TopicName::try_from_str("a/b").unwrap(),
            packet_id: 0,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"hello"),
        };
        let r = encode_record(42, &p).unwrap();
        let (due, back) = decode_record(&r).unwrap();
        assert_eq!(due, 42);
        assert_eq!(back, p);
        assert!(decode_record(&r[..5]).is_none());
        assert!(decode_record(&[0; 12]).is_none());
    }

    #[test]
    fn the_file_keeps_what_was_written_and_forgets_what_was_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        let p = decode_record(&encode_record(1, &publish("x")).unwrap())
            .unwrap()
            .1;
        write(&db, 1, &encode_record(5, &p).unwrap()).unwrap();
        write(&db, 2, &encode_record(6, &p).unwrap()).unwrap();
        delete(&db, &[1]).unwrap();
        drop(db);
        let db = open(dir.path()).unwrap();
        let rows = load(&db).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, rows[0].1), (2, 6));
    }

    fn publish(topic: &str) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::try_from_str(topic).unwrap(),
            packet_id: 0,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"p"),
        }
    }
}
