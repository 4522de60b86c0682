//! A client moving between nodes with its session (docs/cluster.md, "A client moving between
//! nodes"). The node whose claim of a client id committed asks the node that owned it
//! before for the session, in two steps. First, before its CONNECT is granted: the old
//! owner waits until it has applied the claim and the old connection has closed (DISCONNECT
//! 0x8E), then sends the session's record and messages as store records and keeps the
//! session, still subscribed, queueing what arrives; the new owner adopts the session
//! (subscriptions, queue, inflight window, store) and its client gets Session Present 1.
//! Second, once every peer has applied the new owner's subscriptions (so that a publish
//! anywhere reaches the new owner; at most [`SETTLE`]) and [`IN_FLIGHT`] after, for what was
//! routed to the old owner before to arrive there: the old owner sends what it still holds
//! (the rest of a queue larger than one answer, [`PAGE_BYTES`] each, then what it queued
//! meanwhile; asked again while more follows) and, with the last, moves the session's
//! subscriptions from its route table to its relays (`Broker::hand_over` with `keep`): its
//! peers stop routing to it, and what they forwarded before and reaches it late still lands
//! in the session. Third, [`LATE`] after that: what the relays brought, and the session ends
//! there, if it is still the one handed over under that claim. A message can come both ways
//! in between; every message that crosses nodes carries its cluster id, and the new owner
//! takes a message from the old owner only if no message with its id reached the session
//! directly (the ids are remembered until the third step). A CONNECT that starts clean only tells the old owner to end the
//! session (its will goes out), off the CONNECT path; so does a new owner that could not get
//! the session, until the old owner answers. A session nobody asks for ends after [`LINGER`].
//! Requests go on a few idle streams per peer (`peers.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use starling_broker::Broker;
use starling_broker::broker::HandOver;
use starling_cluster::NodeId;
use starling_cluster::net::rpc::Kind;
use starling_cluster::net::{Handover, HandoverReply, Link};
use starling_cluster::routes::LocalFilters;
use starling_store::{LoadedSession, MessageRecord, SessionRecord};
use tracing::{debug, info, warn};

use super::{Node, lock};
use crate::wakeup::Stop;

/// How long the old owner waits for the claim to be applied there and for the old
/// connection to close before it answers that it cannot hand the session over yet.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// How long the new owner waits for the answer (the CONNECT waits with it); without one the
/// session starts empty (Session Present 0).
const ASK_TTL: Duration = Duration::from_secs(7);

/// The longest wait, after adopting a session, for every peer to apply this node's
/// subscriptions before the old owner is asked for what it queued meanwhile (a peer that
/// does not answer is not waited for longer).
pub(super) const SETTLE: Duration = Duration::from_secs(5);

/// After the peers have applied the subscriptions, how long messages they routed to the old
/// owner before have to reach it (forwarded batches take a round trip on loopback; a link
/// retrying a batch takes longer, and a message it delivers after the old owner ended the
/// session is lost to this client).
pub(super) const IN_FLIGHT: Duration = Duration::from_millis(300);

/// After the finishing step, how long the previous owner keeps the session for messages its
/// peers still forward to it: a batch is sent again for at most `forward::HOLD`, so nothing
/// comes later than this.
pub(super) const LATE: Duration =
    starling_cluster::forward::HOLD.saturating_add(Duration::from_secs(1));

/// How long a session whose client id another node claimed stays for that node to take.
pub(super) const LINGER: Duration = Duration::from_secs(30);

/// Sessions lingering at once; beyond it a session another node claimed ends at once.
pub(super) const MAX_LINGERING: usize = 65_536;

/// The most message bytes one answer carries (a message between nodes is at most 16 MiB); a
/// message that does not fit (the inflight window larger than that) is left out, counted and
/// logged.
const MAX_ANSWER_BYTES: usize = 15 * 1024 * 1024;

/// The queued messages' packets one answer takes at most (below [`MAX_ANSWER_BYTES`], which
/// also counts each record's own fields): the rest of a larger queue stays on the old node
/// for the next request.
const PAGE_BYTES: usize = 14 * 1024 * 1024;

/// Requests for the rest of a queue larger than one answer, at most (14 GiB).
const MAX_PAGES: usize = 1024;

/// Sessions another node claimed, oldest first, with when they end if nobody takes them and
/// the epoch of that claim (a later claim has its own entry).
pub(super) type Lingering = Arc<Mutex<VecDeque<(Instant, String, u64)>>>;

/// The wall clock now, in Unix milliseconds (records keep absolute times).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The old owner's side: answers a peer that claimed `req.client_id`.
pub(super) async fn answer(broker: Arc<Broker>, node: Arc<Node>, req: Handover) -> HandoverReply {
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    let owner = loop {
        let owner = node.state().read().owner(&req.client_id);
        match owner {
            Some(o) if o.epoch >= req.epoch && o.node == node.id() => {
                // Claimed back here since: nothing leaves.
                return HandoverReply::Absent;
            }
            Some(o) if o.epoch >= req.epoch => break o,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            debug!(
                client_id = req.client_id,
                "handover asked before the claim was applied here"
            );
            return HandoverReply::NotYet;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if !req.resume {
        // Only for the claim that asked: after a later claim the session is that claim's
        // (taken by it, or ended here when its linger is up).
        if owner.epoch == req.epoch {
            broker.taken_over_elsewhere(&req.client_id, Instant::now());
        }
        return HandoverReply::Absent;
    }
    loop {
        match broker.hand_over(
            &req.client_id,
            req.epoch,
            req.finish,
            req.keep,
            PAGE_BYTES,
            Instant::now(),
            unix_ms(),
        ) {
            HandOver::Absent => return HandoverReply::Absent,
            HandOver::Connected if tokio::time::Instant::now() >= deadline => {
                warn!(
                    client_id = req.client_id,
                    "the connection did not close in time; session not handed over"
                );
                return HandoverReply::NotYet;
            }
            HandOver::Connected => tokio::time::sleep(Duration::from_millis(2)).await,
            HandOver::Taken { session, ids, more } => return encode(session, ids, more),
        }
    }
}

fn encode(loaded: LoadedSession, all_ids: Vec<u64>, more: bool) -> HandoverReply {
    let mut bytes = 0usize;
    let mut messages = Vec::with_capacity(loaded.messages.len());
    let mut ids = Vec::with_capacity(loaded.messages.len());
    let mut left_out = 0u64;
    for ((seq, m), id) in loaded.messages.iter().zip(all_ids) {
        let body = m.encode();
        if bytes.saturating_add(body.len()) > MAX_ANSWER_BYTES {
            left_out += 1;
            continue;
        }
        bytes += body.len();
        messages.push((*seq, body));
        ids.push(id);
    }
    if left_out > 0 {
        warn!(
            client_id = loaded.client_id,
            left_out,
            "a handed-over session's inflight messages exceed one answer; the rest are dropped"
        );
    }
    HandoverReply::Session {
        record: loaded.record.encode(),
        messages,
        awaiting: loaded.awaiting,
        ids,
        left_out,
        more,
    }
}

/// A session as the old owner sent it, with its messages' cluster ids and whether more of
/// its queue follows; `None` if its record does not decode (a message that does not is left
/// out).
fn decode(client_id: &str, reply: HandoverReply) -> Option<(LoadedSession, Vec<u64>, bool)> {
    let HandoverReply::Session {
        record,
        messages,
        awaiting,
        ids,
        more,
        ..
    } = reply
    else {
        return None;
    };
    let record = SessionRecord::decode(&record).ok()?;
    let mut kept = Vec::with_capacity(messages.len());
    let mut kept_ids = Vec::with_capacity(messages.len());
    for ((seq, m), id) in messages
        .iter()
        .zip(ids.into_iter().chain(std::iter::repeat(0)))
    {
        if let Ok(m) = MessageRecord::decode(m) {
            kept.push((*seq, m));
            kept_ids.push(id);
        }
    }
    let loaded = LoadedSession {
        client_id: client_id.to_owned(),
        record,
        messages: kept,
        awaiting,
    };
    Some((loaded, kept_ids, more))
}

/// Sends `req` to member `to` on a stream of its pool (a new one if none is idle) and
/// returns its answer; `None` if it did not answer (or is no longer a member).
async fn ask(taker: &Taker, to: NodeId, req: &Handover) -> Option<HandoverReply> {
    let idle = taker.peers.with(to, |p| (p.take_link(), p.addr.clone()))?;
    let mut link = match idle {
        (Some(link), _) => link,
        (None, addr) => Link::new(taker.node.dial().clone(), to, addr)
            .with_contact(taker.node.contact().clone()),
    };
    match link
        .call::<Handover, HandoverReply>(Kind::Handover, req, ASK_TTL)
        .await
    {
        Ok(reply) => {
            taker.peers.with(to, |p| p.put_link(link));
            Some(reply)
        }
        Err(e) => {
            debug!(client_id = req.client_id, node = to, error = %e, "the previous owner did not answer");
            None
        }
    }
}

/// Tells `from` to end the session of `req.client_id` (its will goes out), every second
/// until it answers or [`LINGER`] has passed: the session here started without it, so
/// nothing is to wait for it there (a node that comes back from a crash or a partition
/// ends it at once instead of after its linger).
fn end_later(taker: &Arc<Taker>, from: NodeId, mut req: Handover) {
    let Ok(permit) = taker.ending.clone().try_acquire_owned() else {
        return;
    };
    req.resume = false;
    req.finish = true;
    let taker = taker.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LINGER;
        loop {
            match ask(&taker, from, &req).await {
                Some(HandoverReply::NotYet) | None => {}
                Some(_) => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        drop(permit);
    });
}

/// What the new owner's side needs.
#[derive(Debug)]
pub(super) struct Taker {
    pub(super) node: Arc<Node>,
    /// The broker, once attached (the seams are made before it).
    pub(super) broker: OnceLock<Weak<Broker>>,
    /// The other members.
    pub(super) peers: Arc<super::peers::PeerSet>,
    /// This node's filters, and which peers have applied them.
    pub(super) filters: Arc<LocalFilters>,
    /// Bounds the tasks telling previous owners to end sessions ([`MAX_ENDING`]).
    pub(super) ending: Arc<tokio::sync::Semaphore>,
}

/// Most previous owners told at once to end a session that was not handed over; beyond it
/// such a session ends after its [`LINGER`] there.
pub(super) const MAX_ENDING: usize = 1024;

/// The new owner's side, after its claim of `client_id` (under `epoch`) committed and named
/// `from` as the previous owner: with `resume`, takes the session over before the CONNECT is
/// granted and fetches the rest in the background (see the module's comment); without,
/// tells `from` to end it, in the background.
pub(super) async fn take(
    taker: &Arc<Taker>,
    from: NodeId,
    client_id: &str,
    epoch: u64,
    resume: bool,
) {
    let Some(broker) = taker.broker.get().and_then(Weak::upgrade) else {
        return;
    };
    let mut req = Handover {
        client_id: client_id.to_owned(),
        epoch,
        resume,
        finish: !resume,
        keep: false,
    };
    if !resume {
        end_later(taker, from, req);
        return;
    }
    let loaded = match ask(taker, from, &req).await {
        Some(HandoverReply::Absent) => return,
        Some(r @ HandoverReply::Session { .. }) => decode(client_id, r),
        Some(HandoverReply::NotYet) | None => None,
    };
    let Some((loaded, ids, _)) = loaded else {
        warn!(
            client_id,
            node = from,
            "the previous owner did not hand the session over; it starts empty here"
        );
        end_later(taker, from, req);
        return;
    };
    let messages = loaded.messages.len();
    if !broker.adopt(loaded, &ids, Instant::now(), unix_ms()) {
        end_later(taker, from, req);
        return;
    }
    info!(
        client_id,
        from, messages, "session taken over from another node"
    );
    req.finish = true;
    let taker = taker.clone();
    let filters = taker.filters.clone();
    // A suspect (silent for 10 s) is not waited for: it could not apply the routes anyway.
    let peers: Vec<NodeId> = (taker.peers.ids().into_iter())
        .filter(|p| !taker.peers.is_suspect(*p))
        .collect();
    let seq = filters.seq();
    // Not kept alive by this task while it waits (a broker stopping meanwhile ends it).
    let broker = Arc::downgrade(&broker);
    tokio::spawn(async move {
        if !filters.told_all(&peers, seq, SETTLE).await {
            debug!(
                client_id = req.client_id,
                "not every peer applied this node's routes in time"
            );
        }
        tokio::time::sleep(IN_FLIGHT).await;
        // What the first answer could not carry, then what came meanwhile; the old owner
        // keeps the session, out of its routes, for what its peers still forward to it.
        req.keep = true;
        let Some(b) = broker.upgrade() else { return };
        let mut n = sweep(&taker, &b, from, &req).await;
        drop(b);
        // No batch arrives later than this: what came late, and the session ends there.
        tokio::time::sleep(LATE).await;
        req.keep = false;
        let Some(b) = broker.upgrade() else { return };
        n += sweep(&taker, &b, from, &req).await;
        debug!(
            client_id = req.client_id,
            messages = n,
            "late messages of a handed-over session taken"
        );
    });
}

/// Takes what the previous owner `from` holds of the session (finishing requests `req`),
/// in as many answers as it takes, into the session here; how many messages were taken.
/// While the previous owner keeps the session (`req.keep`), the cluster ids of what reached
/// the session are remembered for the last sweep.
async fn sweep(taker: &Taker, broker: &Broker, from: NodeId, req: &Handover) -> usize {
    let mut n = 0;
    for page in 0..MAX_PAGES {
        let reply = ask(taker, from, req).await;
        let (late, more) = match reply.and_then(|r| decode(&req.client_id, r)) {
            Some((rest, ids, more)) => {
                let late = (rest.messages.into_iter().map(|(_, m)| m))
                    .zip(ids)
                    .collect();
                (late, more && page + 1 < MAX_PAGES)
            }
            None => (Vec::new(), false),
        };
        let remember = more || req.keep;
        n += broker.adopt_messages(&req.client_id, late, remember, Instant::now(), unix_ms());
        if !more {
            break;
        }
    }
    n
}

/// Ends the sessions another node claimed and nobody took within [`LINGER`] (the new owner
/// failed, or the session was not resumed there and its end was not asked for).
pub(super) async fn expire(
    lingering: Lingering,
    node: Arc<Node>,
    broker: Arc<Broker>,
    stop: Arc<Stop>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        let now = Instant::now();
        let due: Vec<(String, u64)> = {
            let mut l = lock(&lingering);
            let mut due = Vec::new();
            while l.front().is_some_and(|(at, ..)| *at <= now) {
                if let Some((_, id, epoch)) = l.pop_front() {
                    due.push((id, epoch));
                }
            }
            due
        };
        for (id, epoch) in due {
            // Still the claim it lingered for (a later move has its own time).
            let same = (node.state().read().owner(&id))
                .is_some_and(|o| o.node != node.id() && o.epoch == epoch);
            if !same {
                continue;
            }
            // Its parts are still being taken: it lingers from the last one.
            if let Some(at) = renewed(broker.last_handover_step(&id), now) {
                lock(&lingering).push_back((at, id, epoch));
                continue;
            }
            if broker.taken_over_elsewhere(&id, now) {
                info!(
                    client_id = id,
                    "a session another node claimed and did not take ended"
                );
            }
        }
    }
}

/// When a lingering session ends instead, if a step of its handover took from it within
/// [`LINGER`] (a queue larger than one answer, still being taken): [`LINGER`] after that step.
/// Entries put back this way may sit behind later ones; they end a little late, never early.
fn renewed(last_step: Option<Instant>, now: Instant) -> Option<Instant> {
    last_step
        .filter(|at| now.saturating_duration_since(*at) < LINGER)
        .map(|at| at + LINGER)
}

/// Keeps the session of `client_id` for the node that claimed it under `epoch`; ends it at
/// once when too many are kept.
pub(super) fn linger(lingering: &Lingering, broker: &Broker, client_id: String, epoch: u64) {
    let mut l = lock(lingering);
    if l.len() >= MAX_LINGERING {
        drop(l);
        broker.taken_over_elsewhere(&client_id, Instant::now());
        return;
    }
    l.push_back((Instant::now() + LINGER, client_id, epoch));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session whose parts are still being taken lingers from the last part; one whose
    /// last step is older than the linger (or that had none) ends.
    #[test]
    fn a_session_still_being_taken_lingers_from_its_last_part() {
        let now = Instant::now();
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s));
        assert_eq!(renewed(None, now), None);
        let recent = ago(5);
        assert_eq!(renewed(recent, now), recent.map(|at| at + LINGER));
        assert!(renewed(recent, now).is_some_and(|at| at > now));
        assert_eq!(renewed(ago(LINGER.as_secs()), now), None);
        assert_eq!(renewed(ago(LINGER.as_secs() + 1), now), None);
    }
}
