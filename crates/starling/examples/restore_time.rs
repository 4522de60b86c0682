//! Measures start-up with a large store: writes SESSIONS persistent sessions with MESSAGES
//! queued messages in all into a fresh redb store, then times opening it, loading it and
//! restoring the broker from it, as `starling serve` does before it listens.
//!
//! `cargo run --release -p starling --example restore_time [sessions] [messages]`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use starling_broker::message::Message;
use starling_broker::persist::{Journal, Persistence, WallClock, encode_message};
use starling_broker::{Broker, Limits};
use starling_proto::{QoS, TopicName};
use starling_store::{
    MessagePhase, MessageRecord, Op, RedbStore, SessionRecord, Store, SubscriptionRecord,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let sessions: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let messages: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let per_session = (messages / sessions.max(1)).max(1);
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(dir.path())?;
    let topic = TopicName::try_from_str("sensors/site-1/temperature")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let packet = encode_message(
        &Message::internal(topic, Bytes::from_static(&[0x42; 64]), false),
        QoS::AtLeastOnce,
        false,
        &[],
    );
    let written = Instant::now();
    let mut batch = Vec::with_capacity(20_000);
    for s in 0..sessions {
        let id: starling_store::ClientId = format!("device-{s:08}").into();
        batch.push(Op::PutSession(
            id.clone(),
            SessionRecord {
                protocol: 4,
                expiry_secs: u32::MAX,
                disconnected_at_ms: None,
                subscriptions: vec![SubscriptionRecord {
                    filter: format!("commands/{id}/#"),
                    options: 1,
                    id: None,
                }],
                will: None,
            },
        ));
        for seq in 1..=per_session {
            batch.push(Op::PutMessage(
                id.clone(),
                seq,
                MessageRecord {
                    packet: packet.clone(),
                    payload: None,
                    expires_at_ms: None,
                    phase: MessagePhase::Queued,
                    packet_id: 0,
                },
            ));
        }
        if batch.len() >= 20_000 {
            store.apply(&batch, false)?;
            batch.clear();
        }
    }
    store.apply(&batch, true)?;
    let write_s = written.elapsed().as_secs_f64();
    drop(store);
    let size = std::fs::metadata(dir.path().join("starling.redb"))?.len();

    let started = Instant::now();
    let store = RedbStore::open(dir.path())?;
    let opened = started.elapsed().as_secs_f64();
    let snapshot = store.load(false)?;
    let loaded = started.elapsed().as_secs_f64();
    let now = Instant::now();
    let broker = Broker::new(Limits::default(), now).with_persistence(Persistence {
        journal: Arc::new(Journal::new(
            true,
            usize::MAX,
            starling_broker::wake::Flag::new(),
        )),
        clock: WallClock::new(now, 1_700_000_000_000),
    });
    let restored = broker.restore(snapshot, now);
    let total = started.elapsed().as_secs_f64();
    let peak_rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    println!(
        "{{\"sessions\":{},\"messages\":{},\"store_bytes\":{size},\"write_s\":{write_s:.2},\"open_s\":{opened:.3},\"load_s\":{loaded:.2},\"startup_s\":{total:.2},\"subscriptions\":{},\"peak_rss_kb\":\"{peak_rss_kb}\"}}",
        restored.sessions,
        restored.messages,
        broker.subscription_count()
    );
    Ok(())
}
