//! Persistence seen from the core: the journal of state changes waiting to be made durable,
//! with tickets so a connection can hold an acknowledgement until its message is on disk, and
//! the conversions between live state and store records.
//!
//! The core only appends [`Op`]s; a committer outside the core (a thread in the server) takes
//! them in batches, applies each batch to the store in one transaction (group commit), and
//! reports the highest ticket done.
//!
//! The journal is bounded in bytes (`limit`, the ops' [`Op::weight`]). What a QoS 1/2 publish,
//! SUBSCRIBE or QoS 2 step journals in `sync` mode is also bounded by what waits on it: its
//! acknowledgement is held, a client cannot have more than its window outstanding, and a
//! connection with `HELD_LIMIT` held acknowledgements stops being read. A QoS 0 retained
//! publish, and everything in `periodic` mode, holds nothing, so the byte bound is what stops a
//! flood: once the journal holds half of it the periodic committer commits at once instead of
//! at the end of its interval, and at the bound every connection stops reading its client
//! (`Connection::paused_for_store`) if it has journaled something not yet committed, until its
//! last op is committed; clients that journal nothing meanwhile are still served. The batch
//! being committed counts until its commit finishes. The bound is checked between reads, not
//! between ops: what a connection had already read is still journaled, and one publish
//! journals a record per persistent subscriber it reaches, so the journal can exceed the
//! bound by up to a read buffer's worth of publishes times their fan-out; nothing is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use starling_proto::{Packet, ProtocolVersion, Publish, QoS};
use starling_store::{MessagePhase, MessageRecord, Op, SharedPayload};

use crate::message::{Delivery, Message};
use crate::wake::Waker;

/// Where a ticket stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketStatus {
    /// Not committed yet.
    Pending,
    /// Committed durably.
    Durable,
    /// Its batch failed to commit: whatever waited on it must not be acknowledged.
    Failed,
    /// Its batch was refused because the disk is full: as `Failed`, and clients are told
    /// "quota exceeded" where they can be.
    Full,
}

impl TicketStatus {
    /// Whether its batch did not commit (failed or refused).
    pub fn is_failed(self) -> bool {
        matches!(self, Self::Failed | Self::Full)
    }
}

#[derive(Debug, Default)]
struct Pending {
    ops: Vec<Op>,
    /// Sum of the ops' weights.
    bytes: usize,
    /// Ticket of the last op pushed.
    last: u64,
    closed: bool,
    /// The committer is waiting for `bytes` to reach this (only then is waking it worth its
    /// syscall); `None` while it is not waiting.
    wake_at: Option<usize>,
}

/// Most failed ranges remembered (adjacent ones merge, so an outage is one range). A ticket
/// at or below a forgotten range that is in no remembered one reads as failed: answering a
/// failure for what was stored is safe, the reverse is not.
const FAILED_RANGES: usize = 256;

/// Batches that did not commit, by ticket range.
#[derive(Debug, Default)]
struct Failed {
    ranges: VecDeque<(u64, u64, bool)>,
    forgotten_upto: u64,
}

/// Connections to wake when the next commit finishes.
#[derive(Debug, Default)]
struct Waiters {
    /// Commits finished so far; a connection is listed at most twice per generation
    /// (once for held acknowledgements, once for a pause at the bound; one memo each).
    generation: u64,
    /// Bounded by twice the number of connections.
    list: Vec<Waker>,
}

/// State changes waiting for the committer.
#[derive(Debug)]
pub struct Journal {
    pending: Mutex<Pending>,
    /// Wakes the committer (which lives outside the core) when what it waits for is there.
    committer: Waker,
    /// Highest ticket whose batch finished (committed or failed).
    done: AtomicU64,
    /// Highest ticket known to be covered by a successful commit: a committed batch's last
    /// ticket, or, once a commit that carried over the deletions and phase changes of refused
    /// batches succeeds, every ticket finished by then.
    committed: AtomicU64,
    waiters: Mutex<Waiters>,
    /// Ticket ranges whose batch did not commit, and whether the disk was full; and the
    /// highest ticket of a range forgotten to keep the list bounded.
    failed: Mutex<Failed>,
    hold_acks: bool,
    /// Bound on `Pending::bytes`, see the module documentation.
    limit: usize,
    /// `Pending::bytes`, readable without the lock.
    bytes: AtomicUsize,
    /// Weight of the batch the committer has taken and not finished: still in memory.
    batch_bytes: AtomicUsize,
    /// Free space is below the store's limit: new QoS 1/2 messages are refused.
    low_space: std::sync::atomic::AtomicBool,
}

impl Journal {
    /// A journal holding at most about `limit` bytes of ops before clients are paused. With
    /// `hold_acks` (durability mode `sync`), QoS 1/2 acknowledgements wait for the commit of
    /// what the message changed. `committer` is woken when there is work for it (see
    /// [`Journal::take_batch`] and [`Journal::arm_early_commit`]).
    pub fn new(hold_acks: bool, limit: usize, committer: Waker) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            committer,
            done: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            waiters: Mutex::new(Waiters::default()),
            failed: Mutex::new(Failed::default()),
            hold_acks,
            limit: limit.max(1),
            bytes: AtomicUsize::new(0),
            batch_bytes: AtomicUsize::new(0),
            low_space: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True while the journal, with the batch being committed, holds its bound or more:
    /// connections that feed it stop reading their clients until their commit finishes.
    pub fn congested(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) + self.batch_bytes.load(Ordering::Relaxed) >= self.limit
    }

    /// Ticket of the last op pushed.
    pub fn last_ticket(&self) -> u64 {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).last
    }

    /// Whether acknowledgements wait for commits.
    pub fn hold_acks(&self) -> bool {
        self.hold_acks
    }

    /// Appends an op; returns its ticket.
    pub fn push(&self, op: Op) -> u64 {
        self.push_all(std::iter::once(op))
    }

    /// Appends ops in order under one lock; returns the ticket of the last (the last ticket
    /// so far if there are none).
    pub fn push_all(&self, ops: impl IntoIterator<Item = Op>) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for op in ops {
            p.bytes += op.weight();
            p.last += 1;
            p.ops.push(op);
        }
        self.bytes.store(p.bytes, Ordering::Relaxed);
        let t = p.last;
        let wake = p.wake_at.is_some_and(|at| p.bytes >= at);
        if wake {
            p.wake_at = None;
        }
        drop(p);
        if wake {
            self.committer.wake();
        }
        t
    }

    /// Takes every op journaled so far, with the last ticket among them. `None` when there is
    /// nothing to take: the committer is then woken by the next push (or by [`Journal::close`]),
    /// so it can wait for its wake-up without missing one.
    pub fn take_batch(&self) -> Option<(Vec<Op>, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.ops.is_empty() {
            p.wake_at = (!p.closed).then_some(0);
            return None;
        }
        p.wake_at = None;
        self.batch_bytes.store(p.bytes, Ordering::Relaxed);
        p.bytes = 0;
        self.bytes.store(0, Ordering::Relaxed);
        Some((std::mem::take(&mut p.ops), p.last))
    }

    /// For the periodic committer, which waits its interval between commits: true if the
    /// journal already holds half its bound (or is closed), so it should commit now; otherwise
    /// the committer is woken once it does.
    pub fn arm_early_commit(&self) -> bool {
        let early = self.limit / 2;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed || p.bytes >= early {
            p.wake_at = None;
            return true;
        }
        p.wake_at = Some(early);
        false
    }

    /// The committer says whether free space is below the store's limit.
    pub fn set_low_on_space(&self, low: bool) {
        self.low_space.store(low, Ordering::Relaxed);
    }

    /// Whether free space is below the store's limit: new QoS 1/2 messages are refused at
    /// once, before anything is journaled.
    pub fn low_on_space(&self) -> bool {
        self.low_space.load(Ordering::Relaxed)
    }

    /// True once closed (the broker is stopping), drained or not.
    pub fn is_closed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
    }

    /// True once closed and drained.
    pub fn is_finished(&self) -> bool {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.closed && p.ops.is_empty()
    }

    /// No more batches will be waited for; the committer drains what is left and stops.
    pub fn close(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.committer.wake();
    }

    /// Reports that every ticket up to `upto` was committed (`ok`) or failed, and wakes the
    /// connections waiting for it.
    pub fn finish(&self, upto: u64, ok: bool) {
        self.end_batch(upto, (!ok).then_some(false));
    }

    /// Reports that the batch up to `upto` did not commit, `full` if because the disk is
    /// full, and wakes the connections waiting for it.
    pub fn refuse(&self, upto: u64, full: bool) {
        self.end_batch(upto, Some(full));
    }

    /// The committer applied, in a commit that succeeded, the deletions and phase changes it
    /// had carried over from refused batches: what those batches' acknowledgements of that
    /// kind (a delivery's packet id, PUBREL, PUBCOMP) waited for is now stored.
    pub fn carried_committed(&self) {
        let done = self.done.load(Ordering::Acquire);
        self.committed.fetch_max(done, Ordering::AcqRel);
        self.wake_waiters();
    }

    /// Whether a successful commit covers `ticket` (see [`Journal::carried_committed`]).
    pub fn committed_through(&self, ticket: u64) -> bool {
        self.committed.load(Ordering::Acquire) >= ticket
    }

    /// Wakes `waker` when a successful commit covers `ticket`: at once if one does, else at
    /// the next batch's end or carried-over commit, when it asks again (listed once per
    /// commit, with the caller's memo as in `notify_when_done`).
    pub fn notify_when_committed(&self, ticket: u64, waker: &Waker, registered: &mut u64) {
        self.notify_when(|| self.committed_through(ticket), waker, registered);
    }

    /// Wakes `waker` at once if `reached` holds, else lists it for the next batch's end (once
    /// per commit, with the caller's memo). `reached` is read under the lock that `finish` and
    /// `carried_committed` take after advancing `done` and `committed`: either it sees the
    /// new value, or they see this entry. Returns whether it was newly listed.
    fn notify_when(&self, reached: impl Fn() -> bool, waker: &Waker, registered: &mut u64) -> bool {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if reached() {
            drop(w);
            waker.wake();
            return false;
        }
        if *registered == w.generation {
            return false;
        }
        *registered = w.generation;
        w.list.push(waker.clone());
        true
    }

    fn wake_waiters(&self) {
        let list = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            w.generation += 1;
            std::mem::take(&mut w.list)
        };
        for waker in list {
            waker.wake();
        }
    }

    /// `failed`: `None` if committed, else whether the disk was full.
    fn end_batch(&self, upto: u64, failed: Option<bool>) {
        if let Some(full) = failed {
            let from = self.done.load(Ordering::Acquire) + 1;
            let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            match f.ranges.back_mut() {
                // Consecutive refusals of one kind: one range for the whole outage.
                Some((_, end, was_full)) if *end + 1 == from && *was_full == full => *end = upto,
                _ => {
                    if f.ranges.len() == FAILED_RANGES
                        && let Some((_, end, _)) = f.ranges.pop_front()
                    {
                        f.forgotten_upto = f.forgotten_upto.max(end);
                    }
                    f.ranges.push_back((from, upto, full));
                }
            }
        } else {
            self.committed.fetch_max(upto, Ordering::AcqRel);
        }
        self.done.store(upto, Ordering::Release);
        self.batch_bytes.store(0, Ordering::Relaxed);
        self.wake_waiters();
    }

    /// Wakes `waker` when `ticket` is done: at the end of the next commit, or at once if it
    /// already is. `registered` is the caller's memo (start with `u64::MAX`) so that it is
    /// listed once per commit however often it asks.
    /// Returns whether it was newly listed.
    pub fn notify_when_done(&self, ticket: u64, waker: &Waker, registered: &mut u64) -> bool {
        self.notify_when(|| self.is_done(ticket), waker, registered)
    }

    /// Whether the batch holding `ticket` has finished (committed or failed).
    pub fn is_done(&self, ticket: u64) -> bool {
        self.done.load(Ordering::Acquire) >= ticket
    }

    /// Where `ticket` stands.
    pub fn status(&self, ticket: u64) -> TicketStatus {
        if ticket > self.done.load(Ordering::Acquire) {
            return TicketStatus::Pending;
        }
        let f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match f
            .ranges
            .iter()
            .find(|&&(a, b, _)| a <= ticket && ticket <= b)
        {
            Some(&(_, _, true)) => TicketStatus::Full,
            Some(_) => TicketStatus::Failed,
            None if ticket <= f.forgotten_upto => TicketStatus::Failed,
            None => TicketStatus::Durable,
        }
    }
}

/// Store operations that state changes imply, in the order they must be applied. Session
/// and registry methods that change persistent state add to it; only [`Broker::persist`]
/// takes them to the journal, so "what is written" and "where it is written" each have one
/// place. Without a store (durability `memory`) nothing is recorded and no record is encoded.
///
/// [`Broker::persist`]: crate::Broker::persist
#[derive(Debug)]
pub struct Ops<'a> {
    /// The clock records keep absolute times with; `None`: there is no store.
    clock: Option<&'a WallClock>,
    ops: Vec<Op>,
}

impl<'a> Ops<'a> {
    /// Ops for the broker's store, if it has one.
    pub fn new(persistence: Option<&'a Persistence>) -> Self {
        Self {
            clock: persistence.map(|p| &p.clock),
            ops: Vec::new(),
        }
    }

    /// Whether there is a store to record for.
    pub fn enabled(&self) -> bool {
        self.clock.is_some()
    }

    /// Records the op `make` builds, if there is a store (it is not built otherwise).
    pub fn push(&mut self, make: impl FnOnce(&WallClock) -> Op) {
        if let Some(clock) = self.clock {
            self.ops.push(make(clock));
        }
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops recorded so far, taking them.
    pub(crate) fn take(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// The ops recorded so far (tests and the harness look at them).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

/// Converts between the monotonic clock the core runs on and the wall clock records keep
/// (absolute times survive a restart; `Instant`s do not).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    base: Instant,
    base_unix_ms: u64,
}

impl WallClock {
    /// `now` is `unix_ms` milliseconds after the Unix epoch.
    pub fn new(now: Instant, unix_ms: u64) -> Self {
        Self {
            base: now,
            base_unix_ms: unix_ms,
        }
    }

    /// The wall-clock time of `t`.
    pub fn to_unix_ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_unix_ms.saturating_add(d.as_millis() as u64),
            None => self
                .base_unix_ms
                .saturating_sub(self.base.duration_since(t).as_millis() as u64),
        }
    }

    /// The `Instant` of a wall-clock time, as seen from `now`; times before the process
    /// started map to `now` minus the difference, or `now` if that is not representable.
    /// `None` for a future time the clock cannot represent (a damaged record can say
    /// anything): whatever it bounds never comes.
    pub fn from_unix_ms(&self, ms: u64, now: Instant) -> Option<Instant> {
        let now_ms = self.to_unix_ms(now);
        if ms >= now_ms {
            now.checked_add(Duration::from_millis(ms - now_ms))
        } else {
            Some(
                now.checked_sub(Duration::from_millis(now_ms - ms))
                    .unwrap_or(now),
            )
        }
    }
}

/// The journal and the clock records are written with: what the core needs to persist.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// Where ops go.
    pub journal: std::sync::Arc<Journal>,
    /// Wall clock for absolute times in records.
    pub clock: WallClock,
}

/// Encodes a message as the MQTT 5 PUBLISH a record keeps.
pub fn encode_message(msg: &Message, qos: QoS, retain: bool, sub_ids: &[u32]) -> Vec<u8> {
    encode_record_publish(msg, qos, retain, sub_ids, false)
}

/// The PUBLISH of a record; `header_only`: without the payload's bytes (which follow it when
/// the record is read back).
fn encode_record_publish(
    msg: &Message,
    qos: QoS,
    retain: bool,
    sub_ids: &[u32],
    header_only: bool,
) -> Vec<u8> {
    let mut properties = msg.properties.clone();
    if !sub_ids.is_empty() {
        // Written only when there are some: a write would allocate the property values.
        properties.subscription_identifiers = sub_ids.to_vec();
    }
    let publish = Publish {
        dup: false,
        qos,
        retain,
        topic: msg.topic.clone(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: msg.payload.clone(),
    };
    if header_only {
        let mut buf = BytesMut::new();
        // Empty if it cannot be encoded (then the caller does not share the payload).
        if starling_proto::encode_publish_header(&publish, ProtocolVersion::V5, &mut buf).is_err() {
            return Vec::new();
        }
        return Vec::from(buf);
    }
    let packet = Packet::Publish(publish);
    // One allocation of the exact size, handed over as the record's Vec without a copy.
    let len = starling_proto::encoded_len(&packet, ProtocolVersion::V5).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(len);
    // A message that was decoded can always be encoded again; if not, the record is empty and
    // is skipped on load.
    let _ = starling_proto::encode(&packet, ProtocolVersion::V5, &mut buf);
    Vec::from(buf)
}

/// Encodes a will as the MQTT 5 PUBLISH a session record keeps (its delay is kept apart).
pub fn encode_will(will: &starling_proto::Will) -> Vec<u8> {
    let mut properties = will.properties.clone();
    if let Some(v) = properties.values_mut() {
        v.will_delay_interval = None;
    }
    let msg = Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at: None,
        publisher: None,
        received: None,
        store_key: crate::message::StoreKey::default(),
    };
    encode_message(&msg, will.qos, will.retain, &[])
}

/// The record of a retained message.
pub fn retained_record(msg: &Message, clock: &WallClock) -> MessageRecord {
    MessageRecord {
        packet: encode_message(msg, msg.qos, true, &[]),
        payload: None,
        expires_at_ms: msg.expires_at.map(|t| clock.to_unix_ms(t)),
        phase: MessagePhase::Queued,
        packet_id: 0,
    }
}

/// Payloads of at least this many bytes are stored once, shared by the records of every
/// session a message is queued for; smaller ones are written into each record (a reference
/// costs about as much).
pub const SHARED_PAYLOAD_MIN: usize = 64;

/// The record of a delivery queued or inflight for a session.
pub fn delivery_record(
    d: &Delivery,
    phase: MessagePhase,
    packet_id: u16,
    clock: &WallClock,
) -> MessageRecord {
    // A payload worth sharing is kept apart: the store writes it once for every session the
    // message is queued for.
    let mut shared = d.msg.payload.len() >= SHARED_PAYLOAD_MIN;
    let mut packet = Vec::new();
    if shared {
        packet = encode_record_publish(&d.msg, d.qos, d.retain, &d.sub_ids, true);
        // A header that cannot be encoded: written whole instead, which fails the same way
        // and leaves the record empty (skipped on load), never a payload without its header.
        shared = !packet.is_empty();
    }
    if !shared {
        packet = encode_record_publish(&d.msg, d.qos, d.retain, &d.sub_ids, false);
    }
    MessageRecord {
        packet,
        payload: shared.then(|| SharedPayload {
            key: d.msg.store_key.get(),
            bytes: d.msg.payload.clone(),
        }),
        expires_at_ms: d.msg.expires_at.map(|t| clock.to_unix_ms(t)),
        phase,
        packet_id,
    }
}

/// Decodes a record's PUBLISH back into a message and its delivery QoS, RETAIN flag and
/// subscription identifiers. `None` for an undecodable record.
pub fn decode_message(
    rec: &MessageRecord,
    clock: &WallClock,
    now: Instant,
) -> Option<(Message, QoS, bool, Vec<u32>)> {
    let mut buf = BytesMut::from(Bytes::from(rec.whole_packet()));
    let limits = starling_proto::DecodeLimits::default();
    let Ok(Some(Packet::Publish(mut p))) =
        starling_proto::decode(&mut buf, ProtocolVersion::V5, &limits)
    else {
        return None;
    };
    if !buf.is_empty() {
        // More than one packet's worth: not a record this code wrote.
        return None;
    }
    let sub_ids = std::mem::take(&mut p.properties.subscription_identifiers);
    let (qos, retain) = (p.qos, p.retain);
    let mut msg = Message::from_publish(p, None, now);
    msg.expires_at = rec.expires_at_ms.and_then(|ms| clock.from_unix_ms(ms, now));
    Some((msg, qos, retain, sub_ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::Flag;
    use std::sync::Arc;

    fn journal(hold_acks: bool, limit: usize) -> (Journal, Arc<Flag>) {
        let committer = Flag::new();
        (Journal::new(hold_acks, limit, committer.clone()), committer)
    }

    /// A large payload is kept apart under the message's store key, the same for every
    /// delivery of the message and never another message's; read back, the record gives the
    /// message whole.
    #[test]
    fn large_payloads_are_shared_and_read_back_whole() {
        let now = Instant::now();
        let clock = WallClock::new(now, 1_700_000_000_000);
        let publish = |payload: Vec<u8>| Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: starling_proto::TopicName::try_from_str("a/b").unwrap(),
            packet_id: 1,
            properties: Default::default(),
            payload: payload.into(),
        };
        let delivery = |msg: &Arc<Message>, sub_ids: Vec<u32>| Delivery {
            msg: msg.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids,
            share: None,
            seq: 0,
        };
        let big = Arc::new(Message::from_publish(publish(vec![9; 500]), None, now));
        let other = Arc::new(Message::from_publish(publish(vec![9; 500]), None, now));
        let small = Arc::new(Message::from_publish(publish(vec![1; 10]), None, now));
        let r1 = delivery_record(&delivery(&big, vec![]), MessagePhase::Queued, 0, &clock);
        let r2 = delivery_record(&delivery(&big, vec![7]), MessagePhase::Queued, 0, &clock);
        let r3 = delivery_record(&delivery(&other, vec![]), MessagePhase::Queued, 0, &clock);
        let (p1, p2, p3) = (
            r1.payload.as_ref().unwrap(),
            r2.payload.as_ref().unwrap(),
            r3.payload.as_ref().unwrap(),
        );
        assert_eq!(p1.key, p2.key, "one message, one key");
        assert_ne!(p1.key, p3.key, "another message, another key");
        assert!(r1.packet.len() < 20, "the record holds the header only");
        let (msg, qos, _, sub_ids) = decode_message(&r2, &clock, now).unwrap();
        assert_eq!(
            (msg.payload.as_ref(), qos, sub_ids),
            (&[9u8; 500][..], QoS::AtLeastOnce, vec![7])
        );
        // Written whole (as a store without shared payloads does), it reads the same.
        let whole = MessageRecord::decode(&r2.encode()).unwrap();
        assert_eq!(
            decode_message(&whole, &clock, now).unwrap().0.payload,
            msg.payload
        );
        let r4 = delivery_record(&delivery(&small, vec![]), MessagePhase::Queued, 0, &clock);
        assert!(r4.payload.is_none(), "small payloads stay in the record");
        // A record whose header is missing or has bytes after its packet is refused.
        let headless = MessageRecord {
            packet: Vec::new(),
            ..r2.clone()
        };
        assert!(decode_message(&headless, &clock, now).is_none());
        let longer = MessageRecord {
            packet: [r2.whole_packet(), vec![0]].concat(),
            payload: None,
            ..r2.clone()
        };
        assert!(decode_message(&longer, &clock, now).is_none());
    }

    /// An outage of many refused batches is one range, and a ticket in a range forgotten to
    /// keep the list bounded never reads as durable.
    #[test]
    fn refused_tickets_stay_refused() {
        let (j, _) = journal(true, usize::MAX);
        let refuse = |full: bool| {
            let t = j.push(Op::DeleteRetained("a".into()));
            let (_, upto) = j.take_batch().unwrap();
            j.refuse(upto, full);
            t
        };
        let first = refuse(true);
        for _ in 0..1000 {
            refuse(true);
        }
        assert_eq!(
            j.failed.lock().unwrap().ranges.len(),
            1,
            "one outage, one range"
        );
        assert_eq!(j.status(first), TicketStatus::Full);
        // Alternating commits and refusals make separate ranges; the oldest are forgotten.
        let committed = j.push(Op::DeleteRetained("b".into()));
        let (_, upto) = j.take_batch().unwrap();
        j.finish(upto, true);
        let early = refuse(false);
        for _ in 0..(FAILED_RANGES * 2) {
            let t = j.push(Op::DeleteRetained("c".into()));
            let (_, upto) = j.take_batch().unwrap();
            j.finish(upto, true);
            assert_eq!(j.status(t), TicketStatus::Durable);
            refuse(false);
        }
        assert_eq!(j.failed.lock().unwrap().ranges.len(), FAILED_RANGES);
        assert_eq!(
            j.status(first),
            TicketStatus::Failed,
            "forgotten, not durable"
        );
        assert_eq!(
            j.status(early),
            TicketStatus::Failed,
            "forgotten, not durable"
        );
        assert_ne!(
            j.status(committed),
            TicketStatus::Durable,
            "too old to tell"
        );
    }

    #[test]
    fn a_commit_wakes_each_waiting_connection_once() {
        let (j, _) = journal(true, usize::MAX);
        let flag = Flag::new();
        let waker: Waker = flag.clone();
        let mut memo = u64::MAX;
        let t = j.push(Op::DeleteRetained("a".into()));
        j.notify_when_done(t, &waker, &mut memo);
        j.notify_when_done(t, &waker, &mut memo);
        assert_eq!(
            j.waiters.lock().unwrap().list.len(),
            1,
            "listed once per commit"
        );
        assert!(!flag.take(), "nothing committed yet");
        let (_, upto) = j.take_batch().unwrap();
        j.finish(upto, true);
        assert!(flag.take());
        assert!(!flag.take());
        assert!(j.waiters.lock().unwrap().list.is_empty());
        // Asking about a ticket already done wakes at once instead of waiting for a commit
        // that may never come.
        j.notify_when_done(t, &waker, &mut memo);
        assert!(flag.take());
        // A failed commit wakes too (the held acknowledgement becomes a failure answer).
        let u = j.push(Op::DeleteRetained("b".into()));
        j.notify_when_done(u, &waker, &mut memo);
        let (_, upto) = j.take_batch().unwrap();
        j.finish(upto, false);
        assert!(flag.take());
        assert_eq!(j.status(u), TicketStatus::Failed);
    }

    #[test]
    fn tickets_and_failures() {
        let (j, _) = journal(true, usize::MAX);
        let a = j.push(Op::DeleteRetained("a".into()));
        let b = j.push(Op::DeleteRetained("b".into()));
        assert_eq!(j.status(a), TicketStatus::Pending);
        let (ops, upto) = j.take_batch().unwrap();
        assert_eq!((ops.len(), upto), (2, b));
        j.finish(upto, true);
        assert_eq!(j.status(a), TicketStatus::Durable);
        let c = j.push(Op::DeleteRetained("c".into()));
        let (_, upto) = j.take_batch().unwrap();
        j.finish(upto, false);
        assert_eq!(j.status(c), TicketStatus::Failed);
        assert_eq!(j.status(b), TicketStatus::Durable);
        assert!(j.take_batch().is_none());
        j.close();
        assert!(j.is_finished());
    }

    #[test]
    fn the_byte_bound_congests_and_a_batch_clears_it() {
        let op = || Op::DeleteRetained("t".into());
        let w = op().weight();
        let (j, _) = journal(false, 4 * w);
        for _ in 0..3 {
            j.push(op());
        }
        assert!(!j.congested(), "below the bound");
        j.push(op());
        assert!(j.congested(), "at the bound");
        assert_eq!(j.last_ticket(), 4);
        let (ops, upto) = j.take_batch().unwrap();
        assert_eq!((ops.len(), upto), (4, 4));
        assert!(j.congested(), "taken by the committer, still in memory");
        j.finish(upto, true);
        assert!(!j.congested(), "committed");
        // A message record counts its bytes.
        let big = Op::DeleteRetained("x".repeat(10 * w));
        j.push(big);
        assert!(j.congested());
    }

    #[test]
    fn an_empty_take_arms_the_committer_for_the_next_push() {
        let (j, committer) = journal(true, usize::MAX);
        j.push(Op::DeleteRetained("a".into()));
        assert!(
            !committer.take(),
            "nobody waits: no wake-up (it would cost a syscall)"
        );
        assert!(j.take_batch().is_some());
        assert!(j.take_batch().is_none(), "empty: the committer will wait");
        j.push(Op::DeleteRetained("b".into()));
        assert!(committer.take(), "the push that ends the wait wakes it");
        j.push(Op::DeleteRetained("c".into()));
        assert!(!committer.take(), "woken once per wait");
        assert!(j.take_batch().is_some());
        assert!(j.take_batch().is_none());
        j.close();
        assert!(committer.take(), "closing wakes it to drain and stop");
        assert!(j.take_batch().is_none());
        assert!(j.is_finished());
    }

    #[test]
    fn the_periodic_wait_ends_early_at_half_the_bound() {
        let op = || Op::DeleteRetained("t".into());
        let w = op().weight();
        let (j, committer) = journal(false, 4 * w);
        // Below half the bound: wait (armed), and the push that reaches half wakes it.
        assert!(!j.arm_early_commit());
        j.push(op());
        assert!(!committer.take(), "a quarter of the bound: keep waiting");
        j.push(op());
        assert!(committer.take(), "half the bound: commit early");
        // Already at half the bound: no wait at all.
        assert!(j.arm_early_commit());
        j.push(op());
        assert!(!committer.take(), "not armed");
        // Closed: no wait either.
        assert!(j.take_batch().is_some());
        assert!(!j.arm_early_commit());
        j.close();
        assert!(j.arm_early_commit());
    }

    #[test]
    fn a_time_beyond_the_clock_from_a_damaged_record_never_comes() {
        let now = Instant::now();
        let c = WallClock::new(now, 1_000_000);
        // Far future, or (where the clock cannot say it) never: not a panic either way.
        assert!(c.from_unix_ms(u64::MAX, now).is_none_or(|t| t > now));
        assert_eq!(
            c.from_unix_ms(0, now),
            Some(now - Duration::from_secs(1000))
        );
    }

    #[test]
    fn wall_clock_round_trip() {
        let now = Instant::now();
        let c = WallClock::new(now, 1_000_000);
        let later = now + Duration::from_millis(1500);
        assert_eq!(c.to_unix_ms(later), 1_001_500);
        let back = c.from_unix_ms(1_001_500, now).unwrap();
        assert_eq!(back.duration_since(now), Duration::from_millis(1500));
        assert_eq!(
            c.from_unix_ms(1_009_000, now + Duration::from_secs(10)),
            Some(now + Duration::from_secs(9))
        );
    }
}
