//! Retained messages in a cluster: the broker's `RetainStore` seam on the replicated state.
//! A retained publish on any node is proposed through the cluster's log ([`ClusterRetain`]),
//! gathered in batches by one task per node ([`propose`]) so that a node's retained writes
//! commit in the order they were published; the publisher's PUBACK/PUBREC waits for the
//! commit (the broker holds it on the write's `Replication`). Every node serves subscribers
//! from its own index of the replicated messages ([`Replica`]), which its state machine keeps
//! up to date as it applies entries and installs snapshots. The leader drops expired
//! messages from the state now and then ([`expire`]); until then an index does not serve a
//! message whose expiry passed. `$SYS` topics are each node's own statistics: they are kept
//! on the node, not replicated.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use starling_broker::message::Message;
use starling_broker::persist::WallClock;
use starling_broker::retain::{Replicated, Replication, RetainOutcome, RetainStore, RetainTree};
use starling_cluster::node::MAX_ENTRY_BYTES;
use starling_cluster::{ClusterState, Command, Observer, Outcome, Refusal, Retained};
use starling_proto::{DecodeLimits, Packet, ProtocolVersion, Publish, QoS, TopicName};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Node;
use crate::wakeup::Stop;

/// Retained writes waiting to be proposed; beyond it a write is not committed (its
/// publisher is told: v5 0x80, 3.x disconnected).
pub(super) const QUEUE: usize = 4096;

/// Most writes in one proposal.
const BATCH: usize = 256;

/// How often the leader looks for expired retained messages to drop.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);

/// A write on its way: the topic, the message (`None`: clear), and who waits for it.
pub(super) type Write = (String, Option<Retained>, Arc<Replication>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn clock() -> WallClock {
    WallClock::new(Instant::now(), now_ms())
}

/// The message as the replicated state keeps it: its PUBLISH header (topic, properties) as
/// MQTT 5, its payload, its expiry on the wall clock. `None` if it cannot be encoded.
fn to_retained(msg: &Message, clock: &WallClock) -> Option<Retained> {
    let publish = Publish {
        dup: false,
        qos: msg.qos,
        retain: true,
        topic: msg.topic.clone(),
        packet_id: if msg.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: msg.properties.clone(),
        payload: msg.payload.clone(),
    };
    let mut header = BytesMut::new();
    starling_proto::encode_publish_header(&publish, ProtocolVersion::V5, &mut header).ok()?;
    Some(Retained {
        qos: msg.qos as u8,
        payload: msg.payload.to_vec(),
        header: header.to_vec(),
        expires_at_ms: msg.expires_at.map(|t| clock.to_unix_ms(t)),
    })
}

/// The message a replicated one stands for; `None` if it does not decode (it was written by
/// this code, so only a bug or a newer format gets there).
fn to_message(r: &Retained, clock: &WallClock, now: Instant) -> Option<Message> {
    let mut buf = BytesMut::with_capacity(r.header.len() + r.payload.len());
    buf.extend_from_slice(&r.header);
    buf.extend_from_slice(&r.payload);
    let limits = DecodeLimits {
        max_packet_size: u32::MAX,
        ..DecodeLimits::default()
    };
    let Ok(Some(Packet::Publish(p))) =
        starling_proto::decode(&mut buf, ProtocolVersion::V5, &limits)
    else {
        return None;
    };
    if !buf.is_empty() {
        return None;
    }
    let mut msg = Message::from_publish(p, None, now);
    msg.retain = true;
    msg.expires_at = r.expires_at_ms.and_then(|ms| clock.from_unix_ms(ms, now));
    Some(msg)
}

/// This node's index of the replicated retained messages, kept by the state machine.
#[derive(Debug, Default)]
pub(super) struct Replica {
    tree: RwLock<RetainTree>,
}

impl Replica {
    fn tree(&self) -> std::sync::RwLockReadGuard<'_, RetainTree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sets (or clears) `topic` in `tree` as the replicated state has it.
fn put(
    tree: &RetainTree,
    topic: &str,
    message: Option<&Retained>,
    clock: &WallClock,
    now: Instant,
) {
    let msg = match message.map(|r| to_message(r, clock, now)) {
        Some(Some(m)) => m,
        Some(None) => {
            warn!(
                topic,
                "a replicated retained message does not decode; not served"
            );
            return;
        }
        None => {
            let Ok(topic) = TopicName::try_from_str(topic) else {
                return;
            };
            Message::internal(topic, bytes::Bytes::new(), true)
        }
    };
    tree.set(Arc::new(msg), usize::MAX);
}

impl Observer for Replica {
    fn retained(&self, topic: &str, message: Option<&Retained>) {
        put(&self.tree(), topic, message, &clock(), Instant::now());
    }

    fn reset(&self, state: &ClusterState) {
        let (clock, now) = (clock(), Instant::now());
        let fresh = RetainTree::default();
        for (topic, r) in state.all_retained() {
            put(&fresh, topic, Some(r), &clock, now);
        }
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

/// Whether a topic or filter is under `$SYS` (this node's own statistics).
fn is_sys(topic_or_filter: &[u8]) -> bool {
    topic_or_filter.split(|&b| b == b'/').next() == Some(b"$SYS")
}

/// The broker's `RetainStore` seam in a cluster.
#[derive(Debug)]
pub(super) struct ClusterRetain {
    pub(super) replica: Arc<Replica>,
    pub(super) writes: mpsc::Sender<Write>,
    /// This node's `$SYS` messages.
    pub(super) local: RetainTree,
}

impl RetainStore for ClusterRetain {
    fn set(&self, msg: Arc<Message>, max: usize) -> RetainOutcome {
        if is_sys(msg.topic.as_bytes()) {
            return self.local.set(msg, max);
        }
        // `max_retained_messages` is the cluster's bound (set when it was formed).
        let topic = msg.topic.as_str().to_owned();
        let change = if msg.payload.is_empty() {
            None
        } else {
            match to_retained(&msg, &clock()) {
                Some(r) => Some(r),
                None => return RetainOutcome::Full,
            }
        };
        let size = topic.len()
            + change
                .as_ref()
                .map_or(0, |r| r.header.len() + r.payload.len());
        if size as u64 > MAX_ENTRY_BYTES {
            return RetainOutcome::Full;
        }
        let r = Replication::new();
        if self.writes.try_send((topic, change, r.clone())).is_err() {
            debug!("retained writes queue full; not committed");
            r.decide(Replicated::Failed);
        }
        RetainOutcome::Pending(r)
    }

    fn matching(&self, filter: &[u8], now: Instant) -> Vec<Arc<Message>> {
        // A filter's first level is `$SYS` or it cannot match a `$SYS` topic (spec 4.7.2).
        if is_sys(filter) {
            self.local.matching(filter, now)
        } else {
            self.replica.tree().matching(filter, now)
        }
    }

    fn count(&self) -> usize {
        self.replica.tree().count() + self.local.count()
    }

    fn bytes(&self) -> usize {
        self.replica.tree().bytes() + self.local.bytes()
    }

    fn replicated(&self) -> bool {
        true
    }
}

/// Proposes the queued writes in batches (up to [`BATCH`] writes and `MAX_ENTRY_BYTES`),
/// one batch at a time so that they commit in order, and decides each write by its outcome.
pub(super) async fn propose(mut writes: mpsc::Receiver<Write>, node: Arc<Node>, stop: Arc<Stop>) {
    loop {
        let first = tokio::select! {
            w = writes.recv() => w,
            () = stop.wait() => break,
        };
        let Some(first) = first else { break };
        let size =
            |w: &Write| w.0.len() + w.1.as_ref().map_or(0, |r| r.header.len() + r.payload.len());
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < BATCH {
            let Ok(w) = writes.try_recv() else { break };
            let more = size(&w);
            if (bytes + more) as u64 > MAX_ENTRY_BYTES {
                // It does not fit: what gathered so far goes first, it starts the next batch.
                propose_batch(&node, std::mem::take(&mut batch)).await;
                bytes = 0;
            }
            bytes += more;
            batch.push(w);
        }
        propose_batch(&node, batch).await;
    }
}

async fn propose_batch(node: &Node, batch: Vec<Write>) {
    if batch.is_empty() {
        return;
    }
    let mut waiting = Vec::with_capacity(batch.len());
    let mut changes = Vec::with_capacity(batch.len());
    for (topic, change, r) in batch {
        changes.push((topic, change));
        waiting.push(r);
    }
    let outcomes = match node.propose(Command::RetainBatch { changes }).await {
        Ok(Outcome::Batch(each)) => each,
        Ok(other) => {
            warn!(
                ?other,
                "retained batch answered with what is not a batch outcome"
            );
            Vec::new()
        }
        Err(e) => {
            debug!(error = %e, writes = waiting.len(), "retained writes not committed");
            Vec::new()
        }
    };
    for (i, r) in waiting.iter().enumerate() {
        r.decide(match outcomes.get(i) {
            Some(Outcome::Done) => Replicated::Committed,
            Some(Outcome::Refused(Refusal::RetainedFull | Refusal::RetainedTooLarge)) => {
                Replicated::Full
            }
            _ => Replicated::Failed,
        });
    }
}

/// On the leader, every [`EXPIRE_EVERY`]: drops the retained messages whose expiry passed
/// from the replicated state (every index then clears them).
pub(super) async fn expire(node: Arc<Node>, stop: Arc<Stop>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(EXPIRE_EVERY) => {}
            () = stop.wait() => break,
        }
        let leads = node.raft().metrics().borrow().current_leader == Some(node.id());
        let now_ms = now_ms();
        if !leads || node.state().read().expiring(now_ms).is_empty() {
            continue;
        }
        match node.propose(Command::ExpireRetained { now_ms }).await {
            Ok(Outcome::Expired { count }) => debug!(count, "expired retained messages dropped"),
            Ok(other) => debug!(?other, "retained expiry"),
            Err(e) => debug!(error = %e, "retained expiry not committed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_topics_stay_on_the_node() {
        let (writes, mut queued) = mpsc::channel(4);
        let store = ClusterRetain {
            replica: Arc::default(),
            writes,
            local: RetainTree::default(),
        };
        let mk = |t: &str| {
            let topic = TopicName::try_from_str(t).unwrap_or_else(|_| unreachable!());
            Arc::new(Message::internal(
                topic,
                bytes::Bytes::from_static(b"1"),
                true,
            ))
        };
        assert_eq!(
            store.set(mk("$SYS/broker/uptime"), 10),
            RetainOutcome::Stored
        );
        assert!(queued.try_recv().is_err(), "not proposed");
        assert!(matches!(
            store.set(mk("a/b"), 10),
            RetainOutcome::Pending(_)
        ));
        assert!(queued.try_recv().is_ok(), "proposed");
        let now = Instant::now();
        assert_eq!(store.matching(b"$SYS/#", now).len(), 1);
        assert!(
            store.matching(b"#", now).is_empty(),
            "a/b is not committed yet"
        );
        assert!(
            is_sys(b"$SYS") && is_sys(b"$SYS/x") && !is_sys(b"$SYSTEM/x") && !is_sys(b"a/$SYS")
        );
    }

    #[test]
    fn a_retained_message_survives_the_round_trip_through_the_state() {
        let clock = clock();
        let now = Instant::now();
        let topic = TopicName::try_from_str("a/b").unwrap_or_else(|_| unreachable!());
        let mut p = Publish::new(topic, QoS::AtLeastOnce, 1, bytes::Bytes::from_static(b"hi"));
        p.retain = true;
        p.properties.content_type = Some("text/plain".into());
        p.properties.message_expiry_interval = Some(60);
        let msg = Message::from_publish(p, None, now);
        let r = to_retained(&msg, &clock).unwrap_or_else(|| unreachable!());
        assert_eq!(r.payload, b"hi");
        assert!(r.expires_at_ms.is_some());
        let back = to_message(&r, &clock, now).unwrap_or_else(|| unreachable!());
        assert_eq!(back.topic.as_str(), "a/b");
        assert_eq!(&back.payload[..], b"hi");
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert!(back.retain);
        assert_eq!(back.properties.content_type.as_deref(), Some("text/plain"));
        let left = back.remaining_expiry(now).unwrap_or(0);
        assert!((59..=60).contains(&left), "{left}");
    }

    #[test]
    fn the_index_follows_the_state_and_a_reset_replaces_it() {
        let replica = Replica::default();
        let clock = clock();
        let now = Instant::now();
        let mk = |t: &str, body: &'static [u8]| {
            let topic = TopicName::try_from_str(t).unwrap_or_else(|_| unreachable!());
            let p = Publish::new(topic, QoS::AtMostOnce, 0, bytes::Bytes::from_static(body));
            to_retained(&Message::from_publish(p, None, now), &clock)
                .unwrap_or_else(|| unreachable!())
        };
        replica.retained("a", Some(&mk("a", b"1")));
        replica.retained("$x/y", Some(&mk("$x/y", b"2")));
        replica.retained("b", Some(&mk("b", b"3")));
        replica.retained("b", None);
        let mut topics: Vec<String> = replica
            .tree()
            .matching(b"#", now)
            .iter()
            .chain(&replica.tree().matching(b"$x/#", now))
            .map(|m| m.topic.as_str().to_owned())
            .collect();
        topics.sort();
        assert_eq!(topics, ["$x/y", "a"]);

        let mut state = ClusterState::default();
        state.apply(
            1,
            Command::Retain {
                topic: "c".into(),
                message: mk("c", b"4"),
            },
        );
        replica.reset(&state);
        let all: Vec<String> = replica
            .tree()
            .matching(b"#", now)
            .iter()
            .chain(&replica.tree().matching(b"$x/#", now))
            .map(|m| m.topic.as_str().to_owned())
            .collect();
        assert_eq!(all, ["c"]);
        assert_eq!(replica.tree().count(), 1);
    }
}
