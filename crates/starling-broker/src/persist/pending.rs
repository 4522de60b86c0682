//! The ops waiting for the committer ([`Entry`]), and what is undone in place before it takes them. A
//! message record stored for a session and deleted again while both ops wait (the message
//! was delivered and acknowledged within one commit cycle) is dropped from the batch, so the
//! committer never sees it; a phase change of a record that waits is folded into it. A QoS 1
//! publish whose ops are only such records ("a group") needs no commit at all once every one
//! of them is undone: nothing of it is left to store, so its PUBACK may go
//! (`take_absorbed`), and the connection holding that PUBACK is woken when it happens
//! (`watch`).
//!
//! Slots keep their positions (an undone op leaves `None`), so a ticket is always its op's
//! position after the batch's first ticket, and the slot of a session's record is found in
//! O(1) by (session, sequence): for the first few sessions of a batch in a run of their
//! sequences (a session's records come nearly in sequence order: a look-up is a subtraction,
//! no hashing, which is most of what a busy persistent subscriber's ops cost here), for the
//! others and for records far from their session's run in a hash index. Both hold only
//! records of the batch not yet taken. A group is forgotten once its acknowledgement is released, or when its batch is
//! taken with a record still in it (it then waits for the commit like everything else); an
//! absorbed group nobody claimed is forgotten when the commit that covers it finishes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use starling_store::{BuildMix, ClientId, Op};

use super::Entry;
use crate::wake::Waker;

/// Slots whose room is always kept from one batch to the next.
const KEEP_SLOTS: usize = 16 * 1024;

/// Sessions per batch whose records are found through a [`Run`]; those of any others go
/// to the hash index. A look-up scans the runs' addresses first (two cache lines).
const RUNS: usize = 16;
/// A record more than this many sequences beyond either end of its session's run goes to
/// the hash index (so a run holds at most this many empty places per record).
const RUN_GAP: u64 = 64;

/// The waiting records of one session by sequence: the record of sequence `first + i` is
/// `puts[i]` (`None`: none waits, or it is in the hash index).
#[derive(Debug)]
struct Run {
    /// The session's client id, the `Arc` its ops name it through (kept, so its address
    /// identifies the session while the run lives).
    id: ClientId,
    first: u64,
    puts: VecDeque<Option<Put>>,
}

impl Run {
    /// Where `seq` is or would be in `puts` (if not before the run).
    fn place(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.first)?).ok()
    }

    fn get(&self, seq: u64) -> Option<Put> {
        self.puts.get(self.place(seq)?).copied().flatten()
    }

    fn take(&mut self, seq: u64) -> Option<Put> {
        let put = self.puts.get_mut(self.place(seq)?)?.take();
        while let Some(None) = self.puts.front() {
            self.puts.pop_front();
            self.first = self.first.saturating_add(1);
        }
        put
    }

    /// Files `put` under `seq` if that is within [`RUN_GAP`] of the run; false if not.
    fn insert(&mut self, seq: u64, put: Put) -> bool {
        if self.puts.is_empty() {
            self.first = seq;
        }
        if let Some(p) = self.place(seq).and_then(|i| self.puts.get_mut(i)) {
            *p = Some(put);
            return true;
        }
        if seq >= self.first {
            let end = self.first.saturating_add(self.puts.len() as u64);
            if seq - end > RUN_GAP {
                return false;
            }
            for _ in end..seq {
                self.puts.push_back(None);
            }
            self.puts.push_back(Some(put));
        } else {
            if self.first - seq > RUN_GAP {
                return false;
            }
            for _ in seq + 1..self.first {
                self.puts.push_front(None);
            }
            self.puts.push_front(Some(put));
            self.first = seq;
        }
        true
    }
}

/// A record waiting in a slot, and the group it belongs to (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Put {
    slot: usize,
    group: u64,
}

/// A publish's records still waiting, and who to wake when none is left.
#[derive(Debug)]
struct Group {
    live: u32,
    waker: Option<Waker>,
}

/// The batch being gathered for the committer.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Ops in ticket order; `None` where one was undone.
    slots: Vec<Option<Entry>>,
    /// Sum of the live ops' weights.
    pub(super) bytes: usize,
    /// Ticket of the last op pushed.
    pub(super) last: u64,
    pub(super) closed: bool,
    /// The committer is waiting for `bytes` to reach this (only then is waking it worth its
    /// syscall); `None` while it is not waiting.
    pub(super) wake_at: Option<usize>,
    /// Waiting records of the batch's first [`RUNS`] sessions, by sequence.
    runs: Vec<Run>,
    /// The address of each run's client id, in the runs' order (scanned on every look-up).
    run_keys: Vec<usize>,
    /// Waiting records of other sessions (and those far from their session's run) by
    /// (address of the session's client id, sequence). Keyed by the address of the shared
    /// id, as the core journals a session's ops with the session's own `Arc`: addresses are
    /// unique while the slots keep those `Arc`s alive, and not chosen by clients, so the
    /// cheap hash is safe. An op naming the client through another `Arc` is not merged, only
    /// applied in order, which is always correct (runs compare the `Arc`s' addresses too).
    index: HashMap<(usize, u64), Put, BuildMix>,
    /// Groups by the ticket of their last op (the ticket their PUBACK waits for).
    groups: HashMap<u64, Group, BuildMix>,
    /// Records undone in place since the start (a metric).
    pub(super) undone: u64,
    /// The largest recent batch, in slots, decaying by an eighth at each take (also an
    /// empty one: the idle committer still asks): the room the slots keep. Given back
    /// between batches, that room would be faulted in page by page again by the next.
    recent: usize,
}

fn key(id: &ClientId, seq: u64) -> (usize, u64) {
    (Arc::as_ptr(id).cast::<u8>() as usize, seq)
}

impl Pending {
    /// Whether nothing waits (not even an undone slot whose ticket must still be finished).
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Appends `ops`, undoing and folding in place what they cancel; `group`: they may form a
    /// group (acknowledgements wait for commits). Returns the ticket of the last op appended
    /// (the last so far if none was), whether they formed a group, and the connections to
    /// wake because their groups were absorbed (to be woken once the lock is released).
    pub(super) fn push(&mut self, ops: &mut Vec<Entry>, group: bool) -> (u64, bool, Vec<Waker>) {
        let mut wake = Vec::new();
        let grouped = group
            && !ops.is_empty()
            && ops.iter().all(|op| op.put_key().is_some())
            && u32::try_from(ops.len()).is_ok();
        let group_ticket = if grouped {
            let t = self.last + ops.len() as u64;
            let live = u32::try_from(ops.len()).unwrap_or(u32::MAX);
            self.groups.insert(t, Group { live, waker: None });
            t
        } else {
            0
        };
        for op in ops.drain(..) {
            match &op {
                Entry::Op(Op::SetPhase(id, seq, phase, packet_id)) => {
                    if let Some(put) = self.find(id, *seq)
                        && let Some(Some(rec)) = self.slots.get_mut(put.slot)
                    {
                        rec.set_phase(*phase, *packet_id);
                        continue;
                    }
                }
                Entry::Op(Op::DeleteMessage(id, seq)) => {
                    if let Some(put) = self.remove(id, *seq)
                        && let Some(slot) = self.slots.get_mut(put.slot)
                        && let Some(record) = slot.take()
                    {
                        self.bytes = self.bytes.saturating_sub(record.weight());
                        self.undone += 1;
                        if let Some(g) = self.groups.get_mut(&put.group) {
                            g.live = g.live.saturating_sub(1);
                            if g.live == 0
                                && let Some(w) = g.waker.take()
                            {
                                wake.push(w);
                            }
                        }
                        continue;
                    }
                }
                Entry::Op(Op::DeleteSession(id)) => {
                    // Its records still waiting are deleted by it anyway; later ops of a new
                    // session under the same id must not fold into them.
                    self.runs.retain(|r| *r.id != **id);
                    self.run_keys = self.runs.iter().map(|r| key(&r.id, 0).0).collect();
                    let slots = &self.slots;
                    self.index.retain(|_, put| {
                        !matches!(slots.get(put.slot), Some(Some(e)) if e.put_key().is_some_and(|(c, _)| **c == **id))
                    });
                }
                _ => {
                    if let Some((id, seq)) = op.put_key() {
                        let put = Put {
                            slot: self.slots.len(),
                            group: group_ticket,
                        };
                        self.file(id, seq, put);
                    }
                }
            }
            self.bytes += op.weight();
            self.last += 1;
            self.slots.push(Some(op));
        }
        (self.last, grouped, wake)
    }

    /// Which run is the session's (runs are found by the address of the `Arc` its ops
    /// name it through, as the index's keys are).
    fn run(&self, id: &ClientId) -> Option<usize> {
        let k = key(id, 0).0;
        self.run_keys.iter().position(|&r| r == k)
    }

    /// The slot of the waiting record of (`id`, `seq`), if one waits.
    fn find(&self, id: &ClientId, seq: u64) -> Option<Put> {
        if let Some(run) = self.run(id).and_then(|i| self.runs.get(i))
            && let Some(put) = run.get(seq)
        {
            return Some(put);
        }
        if self.index.is_empty() {
            return None;
        }
        self.index.get(&key(id, seq)).copied()
    }

    /// As `find`, forgetting the record (it is undone).
    fn remove(&mut self, id: &ClientId, seq: u64) -> Option<Put> {
        if let Some(run) = self.run(id).and_then(|i| self.runs.get_mut(i))
            && let Some(put) = run.take(seq)
        {
            return Some(put);
        }
        if self.index.is_empty() {
            return None;
        }
        self.index.remove(&key(id, seq))
    }

    /// Files a waiting record: in its session's run, or a new run while there are fewer
    /// than [`RUNS`], else in the hash index.
    fn file(&mut self, id: &ClientId, seq: u64, put: Put) {
        let runs = self.runs.len();
        if let Some(i) = self.run(id) {
            if self.runs.get_mut(i).is_some_and(|run| run.insert(seq, put)) {
                return;
            }
        } else if runs < RUNS {
            let mut run = Run {
                id: id.clone(),
                first: seq,
                puts: VecDeque::new(),
            };
            run.insert(seq, put);
            self.runs.push(run);
            self.run_keys.push(key(id, 0).0);
            return;
        }
        self.index.insert(key(id, seq), put);
    }

    /// Takes the batch: the ops left, in order, and the last ticket among them (undone or
    /// not). `None` when nothing was pushed since the last take.
    pub(super) fn take(&mut self) -> Option<(Vec<Entry>, u64)> {
        self.recent = self.slots.len().max(self.recent - self.recent / 8);
        let keep = self.recent.max(KEEP_SLOTS);
        if self.slots.is_empty() {
            if self.slots.capacity() > keep {
                self.slots.shrink_to(keep);
            }
            return None;
        }
        // Drained, not taken: the slots keep their room for the next batch, as much as
        // recent batches needed (so that a burst's memory is given back once it is over).
        let ops = self.slots.drain(..).flatten().collect();
        if self.slots.capacity() > keep.saturating_mul(2) {
            self.slots.shrink_to(keep);
        }
        self.index.clear();
        self.runs.clear();
        self.run_keys.clear();
        // A group with a record in the batch now waits for its commit like everything else;
        // an absorbed one stays absorbed until that commit covers its ticket.
        self.groups.retain(|_, g| g.live == 0);
        self.bytes = 0;
        Some((ops, self.last))
    }

    /// A batch up to `upto` finished: its tickets answer for themselves now.
    pub(super) fn finished(&mut self, upto: u64) {
        if !self.groups.is_empty() {
            self.groups.retain(|&t, _| t > upto);
        }
    }

    /// Whether the group whose last ticket is `ticket` has nothing left to store; if so it
    /// is forgotten (its acknowledgement goes now), so that absorbed groups do not pile up
    /// while the committer waits.
    pub(super) fn take_absorbed(&mut self, ticket: u64) -> bool {
        if self.groups.get(&ticket).is_some_and(|g| g.live == 0) {
            self.groups.remove(&ticket);
            return true;
        }
        false
    }

    /// True if the group of `ticket` is absorbed already; otherwise, if it still waits,
    /// `waker` is woken when it is.
    pub(super) fn watch(&mut self, ticket: u64, waker: &Waker) -> bool {
        match self.groups.get_mut(&ticket) {
            Some(g) if g.live == 0 => true,
            Some(g) => {
                if g.waker
                    .as_ref()
                    .is_none_or(|w| !std::sync::Arc::ptr_eq(w, waker))
                {
                    g.waker = Some(waker.clone());
                }
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use starling_store::{MessagePhase, MessageRecord};

    use super::*;

    impl Pending {
        /// `push` with store ops.
        fn push_ops(&mut self, ops: Vec<Op>, group: bool) -> (u64, bool, Vec<Waker>) {
            self.push(&mut ops.into_iter().map(Entry::Op).collect(), group)
        }

        /// `take`, with the records encoded.
        fn take_ops(&mut self) -> Option<(Vec<Op>, u64)> {
            let (entries, upto) = self.take()?;
            Some((entries.into_iter().map(Entry::into_op).collect(), upto))
        }
    }
    use crate::wake::Flag;

    fn record() -> MessageRecord {
        MessageRecord {
            packet: vec![1, 2, 3],
            payload: None,
            expires_at_ms: None,
            phase: MessagePhase::Queued,
            packet_id: 0,
        }
    }

    fn put(id: &ClientId, seq: u64) -> Op {
        Op::PutMessage(id.clone(), seq, record())
    }

    /// A record stored, sent and acknowledged before the committer takes the batch never
    /// reaches it; its tickets are still finished by the batch.
    #[test]
    fn a_record_deleted_while_it_waits_is_never_taken() {
        let a: ClientId = Arc::from("a");
        let mut p = Pending::default();
        let (t, grouped, _) = p.push_ops(vec![put(&a, 1), put(&a, 2)], true);
        assert_eq!((t, grouped), (2, true));
        let weight = p.bytes;
        p.push_ops(
            vec![Op::SetPhase(a.clone(), 1, MessagePhase::Published, 7)],
            true,
        );
        p.push_ops(vec![Op::DeleteMessage(a.clone(), 1)], true);
        assert_eq!(p.last, 2, "folded and undone: no ticket taken");
        assert!(p.bytes < weight, "the undone record no longer counts");
        assert_eq!(p.undone, 1);
        let (ops, upto) = p.take_ops().unwrap();
        assert_eq!(upto, 2);
        assert!(matches!(&ops[..], [Op::PutMessage(_, 2, _)]), "{ops:?}");
        // Once taken, a deletion is journaled as an op of its own.
        let (t, _, _) = p.push_ops(vec![Op::DeleteMessage(a.clone(), 2)], true);
        assert_eq!(t, 3);
        assert!(matches!(
            &p.take_ops().unwrap().0[..],
            [Op::DeleteMessage(_, 2)]
        ));
    }

    /// The slots keep the room recent batches needed (refaulting it page by page for every
    /// batch cost a large part of a commit cycle's CPU), and give it back once batches stop.
    #[test]
    fn the_slots_keep_the_room_of_recent_batches_and_give_it_back_when_idle() {
        let a: ClientId = Arc::from("a");
        let mut p = Pending::default();
        let batch = 4 * KEEP_SLOTS;
        for round in 0..3u64 {
            let ops = (0..batch as u64)
                .map(|i| put(&a, round * 1_000_000 + i))
                .collect();
            p.push_ops(ops, false);
            assert_eq!(p.take_ops().unwrap().0.len(), batch);
            assert!(p.slots.capacity() >= batch, "room kept after round {round}");
        }
        let mut idle = 0;
        while p.slots.capacity() > KEEP_SLOTS {
            assert!(p.take_ops().is_none());
            idle += 1;
            assert!(idle < 100, "the room is never given back");
        }
        assert!(
            idle > 1,
            "given back at once: the next batch would fault it in again"
        );
    }

    #[test]
    fn a_phase_change_folds_into_its_waiting_record() {
        let a: ClientId = Arc::from("a");
        let mut p = Pending::default();
        p.push_ops(vec![put(&a, 1)], false);
        p.push_ops(
            vec![Op::SetPhase(a.clone(), 1, MessagePhase::Released, 9)],
            false,
        );
        let (ops, _) = p.take_ops().unwrap();
        let [Op::PutMessage(_, 1, rec)] = &ops[..] else {
            panic!("{ops:?}")
        };
        assert_eq!((rec.phase, rec.packet_id), (MessagePhase::Released, 9));
    }

    /// A publish's PUBACK may go once every record it stored is undone, and not before; its
    /// connection is woken when that happens.
    #[test]
    fn a_group_is_absorbed_when_its_last_record_is_undone() {
        let (a, b): (ClientId, ClientId) = (Arc::from("a"), Arc::from("b"));
        let mut p = Pending::default();
        let (t, grouped, _) = p.push_ops(vec![put(&a, 1), put(&b, 1)], true);
        assert!(grouped);
        let flag = Flag::new();
        let waker: Waker = flag.clone();
        assert!(!p.watch(t, &waker));
        let (_, _, wake) = p.push_ops(vec![Op::DeleteMessage(a.clone(), 1)], true);
        assert!(
            wake.is_empty() && !p.watch(t, &waker),
            "b's record still waits"
        );
        let (_, _, wake) = p.push_ops(vec![Op::DeleteMessage(b.clone(), 1)], true);
        assert_eq!(wake.len(), 1);
        assert!(p.watch(t, &waker));
        // Taken (empty) and finished: the ticket answers for itself.
        let (ops, upto) = p.take_ops().unwrap();
        assert!(ops.is_empty());
        assert!(p.watch(t, &waker), "until its commit finishes");
        p.finished(upto);
        assert!(!p.watch(t, &waker));
        // Claimed once, then forgotten.
        let (t, _, _) = p.push_ops(vec![put(&a, 2)], true);
        p.push_ops(vec![Op::DeleteMessage(a.clone(), 2)], true);
        assert!(p.take_absorbed(t));
        assert!(!p.take_absorbed(t));
    }

    #[test]
    fn what_is_not_a_group_never_reads_as_absorbed() {
        let a: ClientId = Arc::from("a");
        let mut p = Pending::default();
        // Mixed with another op (a retained message, an eviction): not a group.
        let (t, grouped, _) = p.push_ops(vec![put(&a, 1), Op::DeleteRetained("r".into())], true);
        assert!(!grouped);
        p.push_ops(vec![Op::DeleteMessage(a.clone(), 1)], true);
        assert!(!p.take_absorbed(t));
        // Without held acknowledgements, no groups are kept.
        let (t, grouped, _) = p.push_ops(vec![put(&a, 2)], false);
        assert!(!grouped);
        p.push_ops(vec![Op::DeleteMessage(a.clone(), 2)], false);
        assert!(!p.take_absorbed(t));
        // A record taken by the committer is no longer undone: its group waits for the commit.
        let (t, _, _) = p.push_ops(vec![put(&a, 3)], true);
        p.take_ops();
        p.push_ops(vec![Op::DeleteMessage(a.clone(), 3)], true);
        assert!(!p.take_absorbed(t));
    }

    /// After a session is deleted, its id may start a new session whose sequences start
    /// again: a deletion then must not undo a record of the old one.
    #[test]
    fn a_deleted_session_keeps_its_records_apart() {
        let a: ClientId = Arc::from("a");
        let mut p = Pending::default();
        p.push_ops(vec![put(&a, 1)], true);
        p.push_ops(vec![Op::DeleteSession(a.clone())], true);
        p.push_ops(vec![Op::DeleteMessage(a.clone(), 1)], true);
        let (ops, _) = p.take_ops().unwrap();
        assert!(
            matches!(
                &ops[..],
                [
                    Op::PutMessage(..),
                    Op::DeleteSession(_),
                    Op::DeleteMessage(..)
                ]
            ),
            "{ops:?}"
        );
    }

    /// Records of many sessions, put out of order, with gaps and far from the rest, are
    /// found wherever they were filed (runs or the hash index): each phase change folds into
    /// its record and each deletion undoes it, as one hash index did.
    #[test]
    fn records_are_found_in_runs_and_in_the_index_alike() {
        let ids: Vec<ClientId> = (0..RUNS + 3).map(|i| Arc::from(format!("c{i}"))).collect();
        let seqs = [5u64, 3, 4, 10, 9, 1_000, 2, 70, 71, 1];
        let mut p = Pending::default();
        for seq in seqs {
            let ops = ids.iter().map(|id| put(id, seq)).collect();
            p.push_ops(ops, false);
        }
        assert_eq!(p.runs.len(), RUNS);
        assert!(
            !p.index.is_empty(),
            "the sessions beyond the runs, and far records"
        );
        let last = p.last;
        for seq in seqs {
            for id in &ids {
                p.push_ops(
                    vec![Op::SetPhase(id.clone(), seq, MessagePhase::Published, 3)],
                    false,
                );
            }
        }
        assert_eq!(p.last, last, "every phase change folded");
        // Deleted in another order than put: all but seq 9 undone.
        for seq in seqs.iter().rev().filter(|&&s| s != 9) {
            for id in &ids {
                p.push_ops(vec![Op::DeleteMessage(id.clone(), *seq)], false);
            }
        }
        assert_eq!(p.last, last, "every deletion undone its record");
        assert_eq!(p.undone, ((seqs.len() - 1) * ids.len()) as u64);
        let (ops, _) = p.take_ops().unwrap();
        assert_eq!(ops.len(), ids.len());
        for op in ops {
            let Op::PutMessage(_, 9, rec) = op else {
                panic!("{op:?}")
            };
            assert_eq!((rec.phase, rec.packet_id), (MessagePhase::Published, 3));
        }
        assert!(p.runs.is_empty() && p.index.is_empty());
    }

    proptest::proptest! {
        /// Any order of puts (each sequence once per session), phase changes and deletions
        /// over a few sessions leaves the same records as applying every op in order would.
        #[test]
        fn folding_in_place_is_applying_in_order(
            steps in proptest::collection::vec((0..RUNS + 2, 0u64..200, 0u8..3), 1..400)
        ) {
            let ids: Vec<ClientId> = (0..RUNS + 2).map(|i| Arc::from(format!("c{i}"))).collect();
            let mut p = Pending::default();
            let mut model: HashMap<(usize, u64), Option<(MessagePhase, u16)>> = HashMap::new();
            // A session stores each sequence once.
            let mut used = std::collections::HashSet::new();
            for (n, (who, seq, what)) in steps.into_iter().enumerate() {
                let id = &ids[who];
                let op = match what {
                    0 => {
                        if !used.insert((who, seq)) {
                            continue;
                        }
                        model.insert((who, seq), None);
                        put(id, seq)
                    }
                    1 => {
                        let pid = n as u16;
                        if let Some(m) = model.get_mut(&(who, seq)) {
                            *m = Some((MessagePhase::Published, pid));
                        }
                        Op::SetPhase(id.clone(), seq, MessagePhase::Published, pid)
                    }
                    _ => {
                        model.remove(&(who, seq));
                        Op::DeleteMessage(id.clone(), seq)
                    }
                };
                p.push_ops(vec![op], true);
            }
            // Replays the batch as the store would: puts, then the ops left in order.
            let (ops, _) = p.take_ops().unwrap_or_default();
            let mut stored: HashMap<(usize, u64), (MessagePhase, u16)> = HashMap::new();
            let who = |c: &ClientId| ids.iter().position(|i| i == c).unwrap();
            for op in ops {
                match op {
                    Op::PutMessage(c, seq, rec) => {
                        stored.insert((who(&c), seq), (rec.phase, rec.packet_id));
                    }
                    Op::SetPhase(c, seq, phase, pid) => {
                        if let Some(r) = stored.get_mut(&(who(&c), seq)) {
                            *r = (phase, pid);
                        }
                    }
                    Op::DeleteMessage(c, seq) => {
                        stored.remove(&(who(&c), seq));
                    }
                    other => panic!("{other:?}"),
                }
            }
            let want: HashMap<_, _> = model
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or((MessagePhase::Queued, 0))))
                .collect();
            proptest::prop_assert_eq!(stored, want);
        }
    }

    /// A record named through another `Arc` of the same client id is applied in order,
    /// never merged.
    #[test]
    fn another_arc_of_the_same_id_is_not_merged() {
        let (a1, a2): (ClientId, ClientId) = (Arc::from("a"), Arc::from("a"));
        let mut p = Pending::default();
        p.push_ops(vec![put(&a1, 1)], true);
        p.push_ops(vec![Op::DeleteMessage(a2, 1)], true);
        assert_eq!(p.take_ops().unwrap().0.len(), 2);
    }
}
