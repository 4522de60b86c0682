//! Messages between nodes: the broker's `Forwarder` seam in a cluster hands a message to a
//! bounded queue per peer ([`ClusterForwarder`]); one task per peer ([`run`]) sends what
//! queued in batches (each message an MQTT 5 PUBLISH as on the wire), one batch in flight;
//! the peer routes them to its own subscribers ([`Inbound`]). A batch the peer did not
//! confirm (it could not be reached, it is restarting, the stream broke, the reply was lost)
//! is sent again, with the same number, until it is confirmed or [`HOLD`] has passed; the
//! peer takes each numbered batch once ([`Seen`]), so a retry does not deliver twice. The
//! peer confirms a batch once what it queued for its subscribers is stored (durability
//! `sync`: after its commit). With `forward_ack = "wait"` (the default), the publisher's
//! PUBACK/PUBREC of a QoS 1/2 message waits for that confirmation from every node the
//! message went to; with `"async"` it does not. A full queue drops the message, and a batch
//! not confirmed within [`HOLD`] is dropped; each counted, and neither holds the publisher's
//! acknowledgement further. A peer that has answered nothing for [`HOLD`] is down: a batch
//! is tried at most every [`RETRY`] (a probe) and not sent again, the others dropped at once
//! and counted, until a probe is confirmed. A peer that restarts forgets what it took: a batch it took just
//! before and is sent again after its restart is delivered again (at least once across a
//! crash of the receiver).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_broker::Broker;
use starling_broker::forward::Forwarder;
use starling_broker::message::Message;
use starling_broker::retain::{Replicated, Replication};
use starling_broker::wake::{Wake, Waker};
use starling_cluster::NodeId;
use starling_cluster::contact::Contact;
use starling_cluster::net::frame::Kind;
use starling_cluster::net::{
    Confirmed, Forward, Forwarded, Handover, HandoverAnswer, Inbound, Link,
};
use starling_cluster::routes::{RemoteRoutes, Update, UpdateReply};
use starling_proto::{DecodeLimits, Packet, ProtocolVersion, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// Messages waiting for one peer; beyond it a message for the peer is dropped and counted.
pub(super) const QUEUE: usize = 65_536;

/// Messages in one batch.
const BATCH: usize = 512;

/// How long a peer waits for its store before it confirms a batch anyway.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// How long a peer may take to confirm a batch.
const BATCH_TTL: Duration = Duration::from_secs(5);

/// After a failed batch, before the next.
const RETRY: Duration = Duration::from_millis(500);

/// How long a batch is sent again to a peer that does not confirm it (a restart takes a
/// second or two) before it is dropped; meanwhile the peer's queue fills, and beyond its
/// bound drops.
pub(super) const HOLD: Duration = Duration::from_secs(10);

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

/// A message on its way to a peer, the shared groups the peer was picked for, and the
/// publisher's acknowledgement waiting for it.
pub(super) type Queued = (Arc<Message>, Vec<Arc<str>>, Option<Arc<Replication>>);

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
                .try_send((msg.clone(), groups.to_vec(), wait.clone()))
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

/// Sends what queues for `peer`, in batches, until `stop` resolves.
pub(super) async fn run(
    dial: super::tls::ClusterDial,
    origin: (NodeId, u64),
    (peer, addr): (NodeId, String),
    contact: Arc<Contact>,
    mut queue: mpsc::Receiver<Queued>,
    stats: Arc<PeerStats>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut link = Link::new(dial, peer, addr).with_contact(contact.clone());
    let (origin, incarnation) = origin;
    // A batch the peer did not confirm, since when it is tried, and who waits for it.
    let mut held: Option<(Forward, Instant, Vec<Arc<Replication>>)> = None;
    let mut seq = 0;
    // When a batch was last tried while the peer was down.
    let mut last_probe: Option<Instant> = None;
    loop {
        let (batch, since, waiting) = match held.take() {
            Some(h) => h,
            None => {
                let first = tokio::select! {
                    m = queue.recv() => m,
                    () = &mut stop => return,
                };
                let Some(first) = first else { return };
                let now = Instant::now();
                let mut messages = Vec::new();
                let mut waiting = Vec::new();
                let mut next = Some(first);
                while let Some((m, groups, w)) = next.take() {
                    if let Some(packet) = encode(&m, now) {
                        let groups = groups.iter().map(|g| g.to_string()).collect();
                        let id = m.cluster_id.get();
                        messages.push(Forwarded { packet, groups, id });
                    }
                    waiting.extend(w);
                    if messages.len() < BATCH {
                        next = queue.try_recv().ok();
                    }
                }
                seq += 1;
                let batch = Forward {
                    origin,
                    incarnation,
                    seq,
                    messages,
                };
                (batch, now, waiting)
            }
        };
        let n = batch.messages.len() as u64;
        // A peer that has answered nothing for HOLD (route keepalives, Raft, batches: every
        // link of the node records it) is down: a batch is tried at most every RETRY (a
        // probe) and not sent again; the others are dropped at once, so that nothing waits on
        // a dead node (publishers' acknowledgements among it). A node just started counts
        // everyone as answering for a while (`Contact`).
        let down = !contact.answered_within(peer, HOLD);
        if down && last_probe.is_some_and(|t: Instant| t.elapsed() < RETRY) {
            drop_batch(&stats, peer, n, &waiting, "the peer is down");
            continue;
        }
        if down {
            last_probe = Some(Instant::now());
        }
        match link
            .call::<Forward, u64>(Kind::Forward, &batch, BATCH_TTL)
            .await
        {
            Ok(_) => {
                stats.sent.fetch_add(n, Ordering::Relaxed);
                waiting.iter().for_each(|w| w.decide(Replicated::Committed));
                continue;
            }
            // Sent again (same number: taken once) until HOLD has passed.
            Err(e) if !down && since.elapsed() < HOLD => {
                debug!(peer, messages = n, error = %e, "batch not confirmed; sending it again");
                held = Some((batch, since, waiting));
            }
            Err(e) => {
                drop_batch(&stats, peer, n, &waiting, &e.to_string());
                continue;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = &mut stop => return,
        }
    }
}

/// Drops a batch for `peer`: counted, and the publishers' acknowledgements wait no longer.
fn drop_batch(stats: &PeerStats, peer: NodeId, n: u64, waiting: &[Arc<Replication>], why: &str) {
    stats.dropped.fetch_add(n, Ordering::Relaxed);
    warn!(peer, messages = n, why, "messages for a peer dropped");
    waiting.iter().for_each(|w| w.decide(Replicated::Committed));
}

/// Where a batch taken from a sender stands: being stored (`None`), or handed to the
/// broker, with the journal ticket of what it stored (`Some(None)`: nothing to store).
type Progress = watch::Receiver<Option<Option<u64>>>;

/// The last batch taken from each sender, by node: its incarnation, the batch's number, and
/// where storing it stands (a copy of it sent again is confirmed only once it is stored).
#[derive(Debug, Default)]
pub(super) struct Seen(Mutex<HashMap<NodeId, (u64, u64, Progress)>>);

/// What [`Seen::take`] says of a batch.
#[derive(Debug)]
enum Taken {
    /// New: deliver it, then tell the sender's later copies what it stored.
    New(watch::Sender<Option<Option<u64>>>),
    /// The last batch taken, sent again (its reply was lost): confirm it once the first
    /// copy is stored.
    Again(Progress),
    /// Older than the last taken, or from an earlier life of the sender: confirm it.
    Old,
}

impl Seen {
    /// Whether the batch `seq` of `origin` in `incarnation` is new (to be delivered), noting
    /// it, or taken already (sent again after its reply was lost, or from an earlier life of
    /// the origin).
    fn take(&self, origin: NodeId, incarnation: u64, seq: u64) -> Taken {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&origin) {
            Some((inc, s, progress)) if *inc == incarnation && seq == *s => {
                Taken::Again(progress.clone())
            }
            Some(&(inc, s, _)) if inc > incarnation || (inc == incarnation && seq < s) => {
                Taken::Old
            }
            known => {
                let (tx, rx) = watch::channel(None);
                if known.is_some() || last.len() < MAX_ORIGINS {
                    last.insert(origin, (incarnation, seq, rx));
                }
                Taken::New(tx)
            }
        }
    }
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
    fn routes(&self, update: Update) -> UpdateReply {
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
        let mut remote = self.remote.write().unwrap_or_else(|p| p.into_inner());
        remote.apply(update)
    }

    fn forward(&self, batch: Forward) -> Confirmed {
        let count = batch.messages.len();
        let progress = match self.seen.take(batch.origin, batch.incarnation, batch.seq) {
            Taken::New(progress) => progress,
            Taken::Old => return Box::pin(std::future::ready(count)),
            Taken::Again(mut first) => {
                debug!(
                    origin = batch.origin,
                    seq = batch.seq,
                    "a batch taken already came again; confirmed once stored, not delivered twice"
                );
                let broker = self.broker.clone();
                return Box::pin(async move {
                    // The first copy may still be on its way to the store.
                    let stored_as =
                        tokio::time::timeout(STORE_WAIT, first.wait_for(Option::is_some))
                            .await
                            .ok()
                            .and_then(|r| r.ok().and_then(|t| *t));
                    if let Some(Some(t)) = stored_as {
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
        let ticket = self.broker.publish_batch_from_peer(messages);
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

#[cfg(test)]
mod tests {
    use super::*;

    impl Seen {
        fn first_time(&self, origin: NodeId, incarnation: u64, seq: u64) -> bool {
            matches!(self.take(origin, incarnation, seq), Taken::New(_))
        }
    }

    #[test]
    fn a_batch_is_taken_once_per_life_of_its_sender() {
        let t = Seen::default();
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

    /// A copy of the last batch that comes while the first is still being stored waits for
    /// it: it learns the first's journal ticket only once that is handed to the broker.
    #[tokio::test]
    async fn a_copy_of_a_batch_being_stored_waits_for_the_first() {
        let t = Seen::default();
        let Taken::New(first) = t.take(1, 1, 5) else {
            panic!("new batch")
        };
        let Taken::Again(mut copy) = t.take(1, 1, 5) else {
            panic!("a copy")
        };
        assert!(copy.borrow().is_none(), "not stored yet");
        first.send_replace(Some(Some(42)));
        let got = copy.wait_for(Option::is_some).await.map(|t| *t).ok();
        assert_eq!(got, Some(Some(Some(42))));
    }

    #[test]
    fn senders_beyond_the_bound_are_taken_without_being_remembered() {
        let t = Seen::default();
        for origin in 0..MAX_ORIGINS as u64 {
            assert!(t.first_time(origin, 1, 1));
        }
        let extra = MAX_ORIGINS as u64;
        assert!(t.first_time(extra, 1, 1));
        assert!(t.first_time(extra, 1, 1), "not remembered: taken again");
        assert!(!t.first_time(0, 1, 1), "the ones remembered still are");
    }
}
