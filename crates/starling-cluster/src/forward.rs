//! Messages between nodes, sent and taken. One task per peer ([`send`]) sends what is queued
//! for it in numbered batches (`origin`, `incarnation`, `seq`), one batch in flight; a batch
//! the peer did not confirm (it could not be reached, it is restarting, the stream broke,
//! the reply was lost) is sent again with the same number until it is confirmed or [`HOLD`]
//! has passed. The peer takes each numbered batch once ([`Seen`]): a copy of a batch it took
//! is confirmed without being delivered again, once the first copy is stored. A peer that
//! has answered nothing for [`HOLD`] (no reply to any request of this node) is down: a batch
//! for it is tried at most every [`RETRY`] (a probe) and not sent again, the others dropped
//! at once, so that nothing waits on a dead node. What a message is, how it is encoded and
//! who waits for its confirmation belong to the caller ([`Outgoing`]); the broker's side is
//! in the binary, and the cluster simulation runs this same code.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::contact::Contact;
use crate::net::rpc::Kind;
use crate::net::{Dial, Forward, Forwarded, Link};
use crate::state::NodeId;

/// Messages in one batch at most. One batch is in flight per peer, so a peer's throughput is
/// at most this many messages per round trip of a call.
pub const BATCH: usize = 2048;

/// A batch's packets, at most: a message that would take a batch beyond it waits for the
/// next (one message alone may be larger, up to the 16 MiB a message between nodes may be).
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How long a peer may take to confirm a batch.
pub const BATCH_TTL: Duration = Duration::from_secs(5);

/// After a failed batch, before the next.
pub const RETRY: Duration = Duration::from_millis(500);

/// How long a batch is sent again to a peer that does not confirm it (a restart takes a
/// second or two) before it is dropped; meanwhile the peer's queue fills, and beyond its
/// bound drops. A peer silent this long is down (and suspected, `peers.rs` in the binary).
pub const HOLD: Duration = Duration::from_secs(10);

/// Senders whose last batch a node remembers; a batch from a sender beyond it is taken
/// without being remembered (peers are few; more means something is wrong).
pub const MAX_ORIGINS: usize = 1024;

/// A message queued for a peer.
pub trait Outgoing: Send + 'static {
    /// The message as it goes to the peer now (`None`: it cannot be encoded; left out).
    fn encode(&self) -> Option<Forwarded>;
    /// The batch it went in was confirmed by the peer (`true`), or dropped (`false`).
    fn decided(self, confirmed: bool);
}

/// Counters of the traffic with one peer.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Messages the peer confirmed.
    pub sent: AtomicU64,
    /// Messages dropped: the queue was full, or the batch was not confirmed.
    pub dropped: AtomicU64,
}

/// Sends what queues for `peer` (id and address) in batches, as `origin` (this node's id
/// and incarnation), until `stop` resolves. Replies are recorded in `contact`.
pub async fn send<D: Dial, O: Outgoing>(
    dial: D,
    (origin, incarnation): (NodeId, u64),
    (peer, addr): (NodeId, String),
    contact: Arc<Contact>,
    mut queue: mpsc::Receiver<O>,
    stats: Arc<PeerStats>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut link = Link::new(dial, peer, addr).with_contact(contact.clone());
    // A batch the peer did not confirm, since when it is tried, and who waits for it.
    let mut held: Option<(Forward, Instant, Vec<O>)> = None;
    // A message taken from the queue that did not fit in the last batch: the next one's first.
    let mut carried: Option<(O, Option<Forwarded>)> = None;
    let mut seq = 0;
    // When a batch was last tried while the peer was down.
    let mut last_probe: Option<Instant> = None;
    loop {
        let (batch, since, waiting) = match held.take() {
            Some(h) => h,
            None => {
                let first = match carried.take() {
                    Some(c) => c,
                    None => {
                        let first = tokio::select! {
                            m = queue.recv() => m,
                            () = &mut stop => return,
                        };
                        let Some(first) = first else { return };
                        let encoded = first.encode();
                        (first, encoded)
                    }
                };
                let mut messages = Vec::new();
                let mut waiting = Vec::new();
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some((m, encoded)) = next.take() {
                    let size = encoded.as_ref().map_or(0, |f| f.packet.len());
                    if !waiting.is_empty() && bytes + size > BATCH_BYTES {
                        carried = Some((m, encoded));
                        break;
                    }
                    bytes += size;
                    messages.extend(encoded);
                    waiting.push(m);
                    if waiting.len() < BATCH {
                        next = queue.try_recv().ok().map(|m| {
                            let encoded = m.encode();
                            (m, encoded)
                        });
                    }
                }
                seq += 1;
                let batch = Forward {
                    origin,
                    incarnation,
                    seq,
                    messages,
                };
                (batch, Instant::now(), waiting)
            }
        };
        let n = waiting.len() as u64;
        // A peer that has answered nothing for HOLD (route keepalives, Raft, batches: every
        // link of the node records it) is down: a batch is tried at most every RETRY (a
        // probe) and not sent again; the others are dropped at once, so that nothing waits on
        // a dead node (publishers' acknowledgements among it). A node just started counts
        // everyone as answering for a while (`Contact`).
        let down = !contact.answered_within(peer, HOLD);
        if down && last_probe.is_some_and(|t: Instant| t.elapsed() < RETRY) {
            drop_batch(&stats, peer, waiting, "the peer is down");
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
                waiting.into_iter().for_each(|m| m.decided(true));
                continue;
            }
            // Sent again (same number: taken once) until HOLD has passed.
            Err(e) if !down && since.elapsed() < HOLD => {
                debug!(peer, messages = n, error = %e, "batch not confirmed; sending it again");
                held = Some((batch, since, waiting));
            }
            Err(e) => {
                drop_batch(&stats, peer, waiting, &e.to_string());
                continue;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = &mut stop => return,
        }
    }
}

/// Drops a batch for `peer`: counted, and whoever waits for it is told.
fn drop_batch<O: Outgoing>(stats: &PeerStats, peer: NodeId, waiting: Vec<O>, why: &str) {
    let n = waiting.len() as u64;
    stats.dropped.fetch_add(n, Ordering::Relaxed);
    warn!(peer, messages = n, why, "messages for a peer dropped");
    waiting.into_iter().for_each(|m| m.decided(false));
}

/// Where a batch taken from a sender stands: being stored (`None`), or handed over, with
/// the ticket of its store (`Some(None)`: nothing to wait for).
pub type Progress = watch::Receiver<Option<Option<u64>>>;

/// The last batch taken from each sender, by node: its incarnation, the batch's number, and
/// where storing it stands (a copy of it sent again is confirmed only once it is stored).
/// A batch that stored something is also marked in the store, in the same commit ([`mark`]),
/// and the marks are given back after a restart ([`Seen::restore`]): a copy sent again
/// because the receiver crashed before its reply is then not delivered twice.
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<NodeId, (u64, u64, Progress)>>);

/// The names of the store's marks of batches taken: this, then the sender's node id.
pub const MARK_PREFIX: &str = "cluster.taken.";

/// The store's mark of batch `seq` of `origin` in `incarnation`: a setting's name and value
/// (kept with the batch's messages; one per sender, replaced by the next).
pub fn mark(origin: NodeId, incarnation: u64, seq: u64) -> (String, Vec<u8>) {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&incarnation.to_be_bytes());
    value.extend_from_slice(&seq.to_be_bytes());
    (format!("{MARK_PREFIX}{origin}"), value)
}

/// A mark read back: the sender, its incarnation and the batch's number (`None`: not a mark,
/// or damaged).
pub fn read_mark(name: &str, value: &[u8]) -> Option<(NodeId, u64, u64)> {
    let origin = name.strip_prefix(MARK_PREFIX)?.parse().ok()?;
    let (inc, seq) = value.split_first_chunk::<8>()?;
    let seq: [u8; 8] = seq.try_into().ok()?;
    Some((origin, u64::from_be_bytes(*inc), u64::from_be_bytes(seq)))
}

/// What [`Seen::take`] says of a batch.
#[derive(Debug)]
pub enum Taken {
    /// New: deliver it, then say what storing it gave (`send_replace(Some(ticket))`).
    New(watch::Sender<Option<Option<u64>>>),
    /// The last batch taken, sent again (its reply was lost): confirm it once the first
    /// copy is stored.
    Again(Progress),
    /// Older than the last taken, or from an earlier life of the sender: confirm it.
    Old,
}

impl Seen {
    /// Remembers batches taken and stored before a restart (the store's marks): a copy of
    /// one is confirmed at once, an older one too, a newer one is taken.
    pub fn restore(&self, marks: impl IntoIterator<Item = (NodeId, u64, u64)>) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (origin, incarnation, seq) in marks {
            if last.len() >= MAX_ORIGINS && !last.contains_key(&origin) {
                continue;
            }
            let (_, stored) = watch::channel(Some(None));
            let newer = last
                .get(&origin)
                .is_none_or(|&(inc, s, _)| (incarnation, seq) > (inc, s));
            if newer {
                last.insert(origin, (incarnation, seq, stored));
            }
        }
    }

    /// Whether the batch `seq` of `origin` in `incarnation` is new (to be delivered), noting
    /// it, or taken already (sent again after its reply was lost, or from an earlier life of
    /// the origin).
    pub fn take(&self, origin: NodeId, incarnation: u64, seq: u64) -> Taken {
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

/// Waits, for at most `within`, until the first copy of a batch taken again is stored;
/// its store's ticket (`None`: nothing to wait for, or it did not come in time).
pub async fn first_stored(mut first: Progress, within: Duration) -> Option<u64> {
    tokio::time::timeout(within, first.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|t| *t))
        .flatten()
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
    /// it: it learns the first's ticket only once that is handed over.
    #[tokio::test]
    async fn a_copy_of_a_batch_being_stored_waits_for_the_first() {
        let t = Seen::default();
        let Taken::New(first) = t.take(1, 1, 5) else {
            panic!("new batch")
        };
        let Taken::Again(copy) = t.take(1, 1, 5) else {
            panic!("a copy")
        };
        assert!(copy.borrow().is_none(), "not stored yet");
        let waiting = tokio::spawn(first_stored(copy, Duration::from_secs(5)));
        tokio::task::yield_now().await;
        first.send_replace(Some(Some(42)));
        assert_eq!(waiting.await.ok().flatten(), Some(42));
    }

    /// After a restart the store's marks stand for what was taken: a copy of a marked batch
    /// is confirmed without waiting and not delivered, an older one neither, a newer one is.
    #[tokio::test]
    async fn marks_read_back_after_a_restart_keep_batches_taken_once() {
        let (name, value) = mark(7, 3, 41);
        assert_eq!(name, "cluster.taken.7");
        assert_eq!(read_mark(&name, &value), Some((7, 3, 41)));
        assert_eq!(read_mark("cluster.taken.x", &value), None, "not a node id");
        assert_eq!(read_mark(&name, &value[..15]), None, "damaged");
        assert_eq!(read_mark("dynsec", &value), None, "another setting");

        let t = Seen::default();
        t.restore([(7, 3, 41), (7, 3, 40), (8, 1, 2)]);
        let Taken::Again(copy) = t.take(7, 3, 41) else {
            panic!("a copy of the marked batch")
        };
        assert_eq!(first_stored(copy, Duration::from_secs(5)).await, None);
        assert!(
            !t.first_time(7, 3, 40),
            "older than the mark (the lower mark lost)"
        );
        assert!(!t.first_time(8, 1, 1));
        assert!(t.first_time(7, 3, 42), "the next batch");
        assert!(t.first_time(8, 2, 1), "the sender's next life");
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
