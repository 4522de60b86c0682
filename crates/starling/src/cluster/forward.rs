//! Messages between nodes, the broker's side: the `Forwarder` seam in a cluster hands a
//! message to a bounded queue per peer ([`ClusterForwarder`]); one task per peer
//! (`starling_cluster::forward::send`) sends what queued in numbered batches (each message
//! an MQTT 5 PUBLISH as on the wire), sent again until confirmed or dropped, and taken once
//! by the peer (`starling_cluster::forward::Seen`); the peer routes them to its own
//! subscribers ([`Inbound`]) and confirms a batch once what it queued for them is stored
//! (durability `sync`: after its commit). With `forward_ack = "wait"` (the default), the
//! publisher's PUBACK/PUBREC of a QoS 1/2 message waits for that confirmation (or the drop)
//! from every node the message went to; with `"async"` it does not. A full queue drops the
//! message, counted. A peer that restarts forgets what it took: a batch it took just before
//! and is sent again after its restart is delivered again (at least once across a crash of
//! the receiver).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_broker::Broker;
use starling_broker::forward::Forwarder;
use starling_broker::message::Message;
use starling_broker::retain::{Replicated, Replication};
use starling_broker::wake::{Wake, Waker};
use starling_cluster::NodeId;
use starling_cluster::forward::{Outgoing, Seen, Taken, first_stored};
use starling_cluster::net::{Confirmed, Forward, Forwarded, Handover, HandoverAnswer, Inbound};
use starling_cluster::routes::{RemoteRoutes, Told, UpdateReply};
use starling_proto::{DecodeLimits, Packet, ProtocolVersion, Publish, QoS};
use tracing::{debug, warn};

/// Messages waiting for one peer; beyond it a message for the peer is dropped and counted.
pub(super) const QUEUE: usize = 65_536;

/// How long a peer waits for its store before it confirms a batch anyway.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// A message on its way to a peer, the shared groups the peer was picked for, and the
/// publisher's acknowledgement waiting for it.
#[derive(Debug)]
pub(super) struct Queued(Arc<Message>, Vec<Arc<str>>, Option<Arc<Replication>>);

impl Outgoing for Queued {
    fn encode(&self) -> Option<Forwarded> {
        let packet = encode(&self.0, Instant::now())?;
        let groups = self.1.iter().map(|g| g.to_string()).collect();
        let id = self.0.cluster_id.get();
        Some(Forwarded { packet, groups, id })
    }

    fn decided(self, _confirmed: bool) {
        // A dropped batch holds the publisher's acknowledgement no longer either: the peer's
        // sessions are out of reach, as a lost machine's are.
        if let Some(w) = self.2 {
            w.decide(Replicated::Committed);
        }
    }
}

/// The forwarder of a node of a cluster: a bounded queue per peer.
#[derive(Debug)]
pub(super) struct ClusterForwarder {
    /// The other members and their queues.
    peers: Arc<super::peers::PeerSet>,
    /// Whether QoS 1/2 publishers' acknowledgements wait for the peers (`forward_ack`).
    wait: bool,
    /// Names the messages this node forwards first ([`Message::cluster_id`]).
    ids: Ids,
}

/// Cluster ids for the messages a node forwards first: a base drawn from the node's id and
/// incarnation, plus a count. Two nodes' ids meet only if their bases lie within the number
/// of messages forwarded in between, which 64-bit mixing makes as likely as guessing.
#[derive(Debug)]
struct Ids {
    base: u64,
    next: AtomicU64,
}

impl Ids {
    fn new(node: NodeId, incarnation: u64) -> Self {
        // splitmix64 of the pair.
        let mut z = node
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(incarnation.rotate_left(32));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ids {
            base: z ^ (z >> 31),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> u64 {
        let id = self
            .base
            .wrapping_add(self.next.fetch_add(1, Ordering::Relaxed));
        id.max(1)
    }
}

impl ClusterForwarder {
    /// Hands messages to `peers`' queues. `wait`: the acknowledgement of a QoS 1/2 publish
    /// waits for the peers to store the message.
    pub(super) fn new(
        peers: Arc<super::peers::PeerSet>,
        wait: bool,
        (node, incarnation): (NodeId, u64),
    ) -> Self {
        let ids = Ids::new(node, incarnation);
        Self { peers, wait, ids }
    }
}

impl Forwarder for ClusterForwarder {
    fn forward(
        &self,
        node: NodeId,
        msg: &Arc<Message>,
        groups: &[Arc<str>],
    ) -> Option<Arc<Replication>> {
        let queued = self.peers.with(node, |peer| {
            msg.cluster_id.get_or(|| self.ids.next());
            let wait = (self.wait && msg.qos != QoS::AtMostOnce).then(Replication::new);
            if (peer.queue)
                .try_send(Queued(msg.clone(), groups.to_vec(), wait.clone()))
                .is_err()
            {
                peer.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            wait
        });
        let Some(wait) = queued else {
            debug!(
                node,
                "route names a node that is not a member; not forwarded"
            );
            return None;
        };
        wait
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

/// What this node does with its peers' routes and messages.
#[derive(Debug)]
pub(super) struct ClusterInbound {
    pub(super) remote: Arc<RwLock<RemoteRoutes>>,
    /// This node, for the claims a handover waits for.
    pub(super) node: Arc<super::Node>,
    pub(super) broker: Arc<Broker>,
    pub(super) limits: DecodeLimits,
    pub(super) seen: Seen,
}

/// Wakes a task waiting for a commit (a permit is kept if nobody waits yet).
#[derive(Debug, Default)]
struct CommitWake(tokio::sync::Notify);

impl Wake for CommitWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Waits until journal `ticket` is committed, if the broker's durability makes
/// acknowledgements wait for commits (`sync`), for at most [`STORE_WAIT`].
async fn stored(broker: &Broker, ticket: u64) {
    let Some(p) = broker.persistence().filter(|p| p.journal.hold_acks()) else {
        return;
    };
    let wake = Arc::new(CommitWake::default());
    let waker: Waker = wake.clone();
    let mut memo = u64::MAX;
    let deadline = tokio::time::Instant::now() + STORE_WAIT;
    while !p.journal.is_done(ticket) {
        p.journal.notify_when_done(ticket, &waker, &mut memo);
        if p.journal.is_done(ticket) {
            break;
        }
        if tokio::time::timeout_at(deadline, wake.0.notified())
            .await
            .is_err()
        {
            warn!(
                ticket,
                "the store did not commit forwarded messages in time; confirmed anyway"
            );
            break;
        }
    }
}

impl Inbound for ClusterInbound {
    fn routes(&self, told: Told) -> UpdateReply {
        let Told { update, hears } = told;
        // A node that left (or has not joined) is not routed to: its filters are not kept.
        // Before this node knows the members (it has not caught up yet) it takes everyone's.
        let member = {
            let m = self.node.raft().metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            membership.nodes().next().is_none() || membership.get_node(&update.node()).is_some()
        };
        if !member {
            return UpdateReply::NotMember;
        }
        self.node.contact().report(update.node(), hears);
        let mut remote = self.remote.write().unwrap_or_else(|p| p.into_inner());
        remote.apply(update)
    }

    fn forward(&self, batch: Forward) -> Confirmed {
        let count = batch.messages.len();
        let progress = match self.seen.take(batch.origin, batch.incarnation, batch.seq) {
            Taken::New(progress) => progress,
            Taken::Old => return Box::pin(std::future::ready(count)),
            Taken::Again(first) => {
                debug!(
                    origin = batch.origin,
                    seq = batch.seq,
                    "a batch taken already came again; confirmed once stored, not delivered twice"
                );
                let broker = self.broker.clone();
                return Box::pin(async move {
                    // The first copy may still be on its way to the store.
                    if let Some(t) = first_stored(first, STORE_WAIT).await {
                        stored(&broker, t).await;
                    }
                    count
                });
            }
        };
        let now = Instant::now();
        let mut messages = Vec::with_capacity(count);
        for f in batch.messages {
            let mut buf = BytesMut::from(&f.packet[..]);
            match starling_proto::decode(&mut buf, ProtocolVersion::V5, &self.limits) {
                Ok(Some(Packet::Publish(p))) if buf.is_empty() => {
                    let groups = f.groups.into_iter().map(Arc::from).collect();
                    let msg = Message::from_publish(p, None, now);
                    msg.cluster_id.set(f.id);
                    messages.push((Arc::new(msg), groups));
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
        let taken = messages.len();
        // Named in the store only if there is one (durability `memory` keeps nothing).
        let mark = (self.broker.persistence().is_some())
            .then(|| starling_cluster::forward::mark(batch.origin, batch.incarnation, batch.seq));
        let ticket = self.broker.publish_batch_from_peer(messages, mark);
        progress.send_replace(Some(ticket));
        let broker = self.broker.clone();
        Box::pin(async move {
            if let Some(t) = ticket {
                stored(&broker, t).await;
            }
            taken
        })
    }

    fn handover(&self, request: Handover) -> HandoverAnswer {
        Box::pin(super::handover::answer(
            self.broker.clone(),
            self.node.clone(),
            request,
        ))
    }
}
