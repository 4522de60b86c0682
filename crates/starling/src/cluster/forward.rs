//! Messages between nodes: the broker's `Forwarder` seam in a cluster hands a message to a
//! bounded queue per peer ([`ClusterForwarder`]); one task per peer ([`run`]) sends what
//! queued in batches (each message an MQTT 5 PUBLISH as on the wire), one batch in flight;
//! the peer routes them to its own subscribers ([`Inbound`]). At most once between nodes for
//! now: the publisher's acknowledgement does not wait for the peer, a full queue drops the
//! message, and a batch the peer did not confirm is dropped; each counted. A batch that could
//! not be sent at all (the peer cannot be reached: it is restarting) waits for it up to
//! [`HOLD`] first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_broker::Broker;
use starling_broker::forward::Forwarder;
use starling_broker::message::Message;
use starling_cluster::NodeId;
use starling_cluster::net::frame::Kind;
use starling_cluster::net::{CallError, Forward, Inbound, Link, TcpDial};
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

/// How long a batch waits for a peer that cannot be reached (a restart takes a second or
/// two) before it is dropped; meanwhile the peer's queue fills, and beyond its bound drops.
const HOLD: Duration = Duration::from_secs(10);

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
    origin: NodeId,
    peer: NodeId,
    addr: String,
    mut queue: mpsc::Receiver<Arc<Message>>,
    stats: Arc<PeerStats>,
    stop: Arc<Stop>,
) {
    let mut link = Link::new(TcpDial, peer, addr);
    // A batch that could not be sent because the peer could not be reached, and since when.
    let mut held: Option<(Forward, Instant)> = None;
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
                (Forward { origin, messages }, now)
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
            // Not sent at all: kept for the peer's return (a restart), within HOLD.
            Err(CallError::Unreachable { .. }) if since.elapsed() < HOLD => {
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

/// What this node does with its peers' routes and messages.
#[derive(Debug)]
pub(super) struct ClusterInbound {
    pub(super) remote: Arc<RwLock<RemoteRoutes>>,
    pub(super) broker: Arc<Broker>,
    pub(super) limits: DecodeLimits,
}

impl Inbound for ClusterInbound {
    fn routes(&self, update: Update) -> UpdateReply {
        let mut remote = self.remote.write().unwrap_or_else(|p| p.into_inner());
        remote.apply(update)
    }

    fn forward(&self, batch: Forward) -> usize {
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
