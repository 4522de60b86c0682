//! Persistence seen from the core: the journal of state changes waiting to be made durable,
//! with tickets so a connection can hold an acknowledgement until its message is on disk, and
//! the list of ops a change records (`Ops`). The conversions between live state and store
//! records are in `records.rs`.
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

mod entry;
mod pending;
mod records;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use starling_store::{ClientId, MessagePhase, Op};

use crate::message::Delivery;

pub use records::{
    SHARED_PAYLOAD_MIN, WallClock, decode_message, delivery_record, encode_message, encode_will,
    retained_record,
};

use crate::wake::Waker;
pub use entry::Entry;
use pending::Pending;

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
        self.append(vec![Entry::Op(op)]).0
    }

    /// Appends ops in order under one lock; returns the ticket of the last (the last ticket
    /// so far if none was appended), and whether the ops formed a group: with held
    /// acknowledgements, ops that are all message records, whose acknowledgement may go
    /// without a commit once every record is deleted again before the committer takes it
    /// ([`Journal::take_absorbed`]). A deletion or phase change of a message record still
    /// waiting in the journal is applied to it in place instead (see `pending.rs`).
    pub fn append(&self, mut ops: Vec<Entry>) -> (u64, bool) {
        self.append_from(&mut ops)
    }

    /// As [`Journal::append`], draining `ops` (whose room the caller keeps).
    pub fn append_from(&self, ops: &mut Vec<Entry>) -> (u64, bool) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (t, grouped, absorbed) = p.push(ops, self.hold_acks);
        self.bytes.store(p.bytes, Ordering::Relaxed);
        let wake = p.wake_at.is_some_and(|at| p.bytes >= at) && !p.is_empty();
        if wake {
            p.wake_at = None;
        }
        drop(p);
        if wake {
            self.committer.wake();
        }
        for waker in absorbed {
            waker.wake();
        }
        (t, grouped)
    }

    /// Whether the group whose acknowledgement waits for `ticket` (see [`Journal::append`])
    /// has nothing left to store: each of its records was deleted (delivered and
    /// acknowledged) before the committer took it. Answers true once: the caller sends the
    /// acknowledgement.
    pub fn take_absorbed(&self, ticket: u64) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.take_absorbed(ticket)
    }

    /// True if the group of `ticket` is absorbed; otherwise `waker` is woken when it is (if
    /// it can still be; else the commit that covers it wakes whoever waits for that).
    pub fn watch_absorbed(&self, ticket: u64, waker: &Waker) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.watch(ticket, waker)
    }

    /// Message records deleted while they waited in the journal, so never written.
    pub fn undone_records(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .undone
    }

    /// Takes every op journaled so far, with the last ticket among them. `None` when there is
    /// nothing to take: the committer is then woken by the next push (or by [`Journal::close`]),
    /// so it can wait for its wake-up without missing one.
    pub fn take_batch(&self) -> Option<(Vec<Op>, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_empty() {
            p.wake_at = (!p.closed).then_some(0);
            // Nothing to take; the room kept for batches shrinks as they stay away.
            p.take();
            return None;
        }
        p.wake_at = None;
        self.batch_bytes.store(p.bytes, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        let (entries, upto) = p.take()?;
        drop(p);
        // Encoded here, on the committer's thread and outside the lock: the records that
        // were undone while they waited (nearly all, at full rate) never are.
        Some((entries.into_iter().map(Entry::into_op).collect(), upto))
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
        p.closed && p.is_empty()
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
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished(upto);
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
    ops: Vec<Entry>,
}

/// The most entries a spare list may have room for to be kept (see [`SPARE`]).
const SPARE_ROOM: usize = 16;

thread_local! {
    /// An empty list with room, kept from the last [`Ops`] on this thread that recorded
    /// something: with a store, every QoS 1 publish, delivery and acknowledgement records
    /// ops, and allocating the list each time was a visible part of their cost. At most one
    /// list of [`SPARE_ROOM`] entries per thread.
    static SPARE: std::cell::Cell<Vec<Entry>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<'a> Ops<'a> {
    /// Ops for the broker's store, if it has one.
    pub fn new(persistence: Option<&'a Persistence>) -> Self {
        let clock = persistence.map(|p| &p.clock);
        let ops = if clock.is_some() {
            // (Not while the thread's locals are being torn down: then a new list.)
            SPARE.try_with(std::cell::Cell::take).unwrap_or_default()
        } else {
            Vec::new()
        };
        Self { clock, ops }
    }

    /// Appends the ops recorded so far to `journal` (see [`Journal::append`]), keeping the
    /// list's room.
    pub(crate) fn append_to(&mut self, journal: &Journal) -> (u64, bool) {
        journal.append_from(&mut self.ops)
    }

    /// Whether there is a store to record for.
    pub fn enabled(&self) -> bool {
        self.clock.is_some()
    }

    /// Records the op `make` builds, if there is a store (it is not built otherwise).
    pub fn push(&mut self, make: impl FnOnce(&WallClock) -> Op) {
        if let Some(clock) = self.clock {
            self.ops.push(Entry::Op(make(clock)));
        }
    }

    /// Records the delivery `d` queued for the session `id` with `phase` and `packet_id`, if
    /// there is a store: kept as the delivery, and encoded only if the committer takes it
    /// (see [`Entry`]).
    pub fn push_queued(&mut self, id: ClientId, d: &Delivery, phase: MessagePhase, packet_id: u16) {
        if let Some(clock) = self.clock {
            let expires_at_ms = d.msg.expires_at.map(|t| clock.to_unix_ms(t));
            self.ops.push(Entry::queued(
                id,
                d.clone(),
                expires_at_ms,
                phase,
                packet_id,
            ));
        }
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops recorded so far (tests and the harness look at them).
    pub fn ops(&self) -> &[Entry] {
        &self.ops
    }
}

impl Drop for Ops<'_> {
    /// What was recorded and not taken is dropped; the list's room is kept for the next.
    fn drop(&mut self) {
        let cap = self.ops.capacity();
        if cap != 0 && cap <= SPARE_ROOM {
            let mut ops = std::mem::take(&mut self.ops);
            ops.clear();
            // Dropped instead while the thread's locals are being torn down.
            let _ = SPARE.try_with(|spare| spare.set(ops));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::Flag;
    use std::sync::Arc;

    fn journal(hold_acks: bool, limit: usize) -> (Journal, Arc<Flag>) {
        let committer = Flag::new();
        (Journal::new(hold_acks, limit, committer.clone()), committer)
    }

    /// A list of ops appended keeps its room for the next `Ops` on the thread (one list, of
    /// bounded room); without a store nothing is kept or taken.
    #[test]
    fn ops_keep_their_room_for_the_next() {
        let (j, _) = journal(true, usize::MAX);
        let p = Persistence {
            journal: Arc::new(j),
            clock: WallClock::new(std::time::Instant::now(), 1_700_000_000_000),
        };
        let mut ops = Ops::new(Some(&p));
        ops.push(|_| Op::DeleteRetained("a".into()));
        let (t, _) = ops.append_to(&p.journal);
        assert_eq!(t, 1);
        assert!(ops.is_empty());
        drop(ops);
        let ops = Ops::new(Some(&p));
        assert!(ops.ops.capacity() > 0, "the room was kept");
        assert_eq!(Ops::new(Some(&p)).ops.capacity(), 0, "one list per thread");
        drop(ops);
        assert_eq!(Ops::new(None).ops.capacity(), 0);
        // A list grown beyond the bound is not kept.
        let mut big = Ops::new(Some(&p));
        for _ in 0..=SPARE_ROOM {
            big.push(|_| Op::DeleteRetained("b".into()));
        }
        drop(Ops::new(Some(&p)));
        drop(big);
        assert!(Ops::new(Some(&p)).ops.capacity() <= SPARE_ROOM);
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
}
