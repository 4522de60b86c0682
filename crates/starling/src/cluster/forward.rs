//! Messages between nodes: the broker's `Forwarder` seam in a cluster hands a message to a
//! bounded queue per peer ([`ClusterForwarder`]); one task per peer ([`run`]) sends what
//! queued in batches (each message an MQTT 5 PUBLISH as on the wire), one batch in flight;
//! the peer routes them to its own subscribers ([`Inbound`]). A batch the peer did not
//! confirm (it could not be reached, it is restarting, the stream broke, the reply was lost)
//! is sent again, with the same number, until it is confirmed or [`HOLD`] has passed; the
//! peer takes each numbered batch once ([`Taken`]), so a retry does not deliver twice. The
//! publisher's acknowledgement does not wait for the peer, a full queue drops the message,
//! and a batch not confirmed within [`HOLD`] is dropped; each counted. A peer that restarts
//! forgets what it took: a batch it took just before and is sent again after its restart is
//! delivered again (at least once across a crash of the receiver).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_broker::Broker;
use starling_broker::forward::Forwarder;
use starling_broker::message::Message;
use starling_cluster::NodeId;
use starling_cluster::net::frame::Kind;
use starling_cluster::net::{Forward, Inbound, Link, TcpDial};
use starling_cluster::routes::{RemoteRoutes, Update, UpdateReply};
use starling_proto::{DecodeLimits, Packet, ProtocolVersion, Publish, QoS};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::wakeup::Stop;

/// Messages waiting for one peer; beyond it a message for the peer is dropped and counted.
pub(super) const QUEUE: usize = 65_536;

/// Messages in one batch.
const BATCH: usize = 512;

/// How long a peer may take to confirm a batch.
const BATCH_TTL: Duration = Duration::from_secs(5);

/// After a failed batch, before the next.
const RETRY: Duration = Duration::from_millis(500);

/// How long a batch is sent again to a peer that does not confirm it (a restart takes a
/// second or two) before it is dropped; meanwhile the peer's queue fills, and beyond its
/// bound drops.
const HOLD: Duration = Duration::from_secs(10);

/// Senders whose last batch a node remembers; a batch from a sender beyond it is taken
/// without being remembered (peers are few; more means something is wrong).
const MAX_ORIGINS: usize = 1024;

/// Counters of the traffic with one peer.
#[derive(Debug, Default)]
pub(super) struct PeerStats {
    /// Messages the peer confirmed.
    pub(super) sent: AtomicU64,
    /// Messages dropped: the queue was full, or the batch was not confirmed.
    pub(super) dropped: AtomicU64,
}

/// The forwarder of a node of a cluster: a bounded queue per peer.
#[derive(Debug)]
pub(super) struct ClusterForwarder {
    queues: HashMap<NodeId, (mpsc::Sender<Arc<Message>>, Arc<PeerStats>)>,
}

impl ClusterForwarder {
    /// Queues for `peers`; returns the forwarder and each peer's receiving end.
    pub(super) fn new(peers: &[NodeId]) -> (Self, Vec<super::Queue>) {
        let mut queues = HashMap::new();
        let mut ends = Vec::new();
        for &p in peers {
            let (tx, rx) = mpsc::channel(QUEUE);
            let stats = Arc::new(PeerStats::default());
            queues.insert(p, (tx, stats.clone()));
            ends.push((p, rx, stats));
        }
        (Self { queues }, ends)
    }
}

impl Forwarder for ClusterForwarder {
    fn forward(&self, node: NodeId, msg: &Arc<Message>) {
        let Some((tx, stats)) = self.queues.get(&node) else {
            debug!(node, "route names a node that is not a peer; not forwarded");
            return;
        };
        if tx.try_send(msg.clone()).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `msg` as an MQTT 5 PUBLISH, with its expiry as it stands now.
fn encode(msg: &Message, now: Instant) -> Option<Vec<u8>> {
    let mut properties = msg.properties.clone();
    if let Some(left) = msg.remaining_expiry(now) {
        properties.message_expiry_interval = Some(left);
    }
    let publish = Publish {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        packet_id: if msg.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: msg.payload.clone(),
    };
    let mut buf = BytesMut::new();
    starling_proto::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut buf).ok()?;
    Some(buf.to_vec())
}

/// Sends what queues for `peer`, in batches, until the stop.
pub(super) async fn run(
    dial: TcpDial,
    origin: (NodeId, u64),
    peer: NodeId,
    addr: String,
    mut queue: mpsc::Receiver<Arc<Message>>,
    stats: Arc<PeerStats>,
    stop: Arc<Stop>,
) {
    let mut link = Link::new(dial, peer, addr);
    let (origin, incarnation) = origin;
    // A batch the peer did not confirm, and since when it is tried.
    let mut held: Option<(Forward, Instant)> = None;
    let mut seq = 0;
    loop {
        let (batch, since) = match held.take() {
            Some(h) => h,
            None => {
                let first = tokio::select! {
                    m = queue.recv() => m,
                    () = stop.wait() => return,
                };
                let Some(first) = first else { return };
                let now = Instant::now();
                let mut messages: Vec<Vec<u8>> = encode(&first, now).into_iter().collect();
                while messages.len() < BATCH {
                    match queue.try_recv() {
                        Ok(m) => messages.extend(encode(&m, now)),
                        Err(_) => break,
                    }
                }
                seq += 1;
                let batch = Forward {
                    origin,
                    incarnation,
                    seq,
                    messages,
                };
                (batch, now)
            }
        };
        let n = batch.messages.len() as u64;
        match link
            .call::<Forward, u64>(Kind::Forward, &batch, BATCH_TTL)
            .await
        {
            Ok(_) => {
                stats.sent.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            // Sent again (same number: taken once) until HOLD has passed.
            Err(e) if since.elapsed() < HOLD => {
                debug!(peer, messages = n, error = %e, "batch not confirmed; sending it again");
                held = Some((batch, since));
            }
            Err(e) => {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                warn!(peer, messages = n, error = %e, "messages for a peer dropped");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.wait() => return,
        }
    }
}

/// The last batch taken from each sender, by node: its incarnation and the batch's number.
#[derive(Debug, Default)]
pub(super) struct Taken(Mutex<HashMap<NodeId, (u64, u64)>>);

impl Taken {
    /// Whether the batch `seq` of `origin` in `incarnation` is new (to be delivered), noting
    /// it; false for a batch taken already (sent again after its reply was lost), or sent by
    /// an earlier life of the origin.
    fn first_time(&self, origin: NodeId, incarnation: u64, seq: u64) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&origin) {
            Some(&(inc, s)) if inc > incarnation || (inc == incarnation && seq <= s) => false,
            Some(_) => {
                last.insert(origin, (incarnation, seq));
                true
            }
            None => {
                if last.len() < MAX_ORIGINS {
                    last.insert(origin, (incarnation, seq));
                }
                true
            }
        }
    }
}

/// What this node does with its peers' routes and messages.
#[derive(Debug)]
pub(super) struct ClusterInbound {
    pub(super) remote: Arc<RwLock<RemoteRoutes>>,
    pub(super) broker: Arc<Broker>,
    pub(super) limits: DecodeLimits,
    pub(super) taken: Taken,
}

impl Inbound for ClusterInbound {
    fn routes(&self, update: Update) -> UpdateReply {
        let mut remote = self.remote.write().unwrap_or_else(|p| p.into_inner());
        remote.apply(update)
    }

    fn forward(&self, batch: Forward) -> usize {
        if !self
            .taken
            .first_time(batch.origin, batch.incarnation, batch.seq)
        {
            debug!(
                origin = batch.origin,
                seq = batch.seq,
                "a batch taken already came again; confirmed, not delivered twice"
            );
            return batch.messages.len();
        }
        let now = Instant::now();
        let mut taken = 0;
        for bytes in batch.messages {
            let mut buf = BytesMut::from(&bytes[..]);
            match starling_proto::decode(&mut buf, ProtocolVersion::V5, &self.limits) {
                Ok(Some(Packet::Publish(p))) if buf.is_empty() => {
                    let msg = Message::from_publish(p, None, now);
                    self.broker.publish_from_peer(Arc::new(msg));
                    taken += 1;
                }
                other => {
                    warn!(
                        origin = batch.origin,
                        ?other,
                        "a peer forwarded what is not one PUBLISH; dropped"
                    );
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_taken_once_per_life_of_its_sender() {
        let t = Taken::default();
        assert!(t.first_time(1, 1, 1));
        assert!(!t.first_time(1, 1, 1), "sent again after a lost reply");
        assert!(t.first_time(1, 1, 3), "a gap: batches the sender dropped");
        assert!(!t.first_time(1, 1, 2), "older than the last taken");
        assert!(t.first_time(2, 1, 1), "another sender has its own numbers");
        assert!(t.first_time(1, 2, 1), "the sender restarted");
        assert!(
            !t.first_time(1, 1, 9),
            "a batch of the sender's earlier life"
        );
    }

    #[test]
    fn senders_beyond_the_bound_are_taken_without_being_remembered() {
        let t = Taken::default();
        for origin in 0..MAX_ORIGINS as u64 {
            assert!(t.first_time(origin, 1, 1));
        }
        let extra = MAX_ORIGINS as u64;
        assert!(t.first_time(extra, 1, 1));
        assert!(t.first_time(extra, 1, 1), "not remembered: taken again");
        assert!(!t.first_time(0, 1, 1), "the ones remembered still are");
    }
}
