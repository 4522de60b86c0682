//! Starling's durable state: what must survive a restart (persistent sessions with their
//! subscriptions, queued and inflight messages, inbound QoS 2 ids awaiting PUBREL, retained
//! messages, delayed wills, and small named settings such as the dynamic security document),
//! as records behind one small [`Store`] trait, with an in-memory
//! implementation (for tests, with fault injection), an embedded durable one on redb, and a
//! redb backend that fails on command (`faulty`) for tests of a failing disk.
//!
//! The broker core never sees which store it has: it emits [`Op`]s, and a committer applies
//! them in batches (group commit).

mod bodies;
mod deletes;
pub mod faulty;
pub mod memory;
mod mix;
mod numbers;
mod pace;
pub mod record;
pub mod redb_store;

pub use memory::MemoryStore;
pub use mix::BuildMix;
pub use record::{
    MessagePhase, MessageRecord, SessionRecord, SharedPayload, SubscriptionRecord, WillRecord,
};
pub use redb_store::RedbStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data was written by a newer version of the format.
    #[error("store format {0} is newer than this version of Starling understands")]
    NewerFormat(u32),
    /// The data is damaged.
    #[error("store is damaged: {0}")]
    Corrupt(String),
    /// The disk (or the quota) is full.
    #[error("store disk full: {0}")]
    Full(String),
    /// The storage engine or the disk failed (I/O error, read-only filesystem, a failed
    /// fsync, or an earlier such failure the engine will not go past until reopened).
    #[error("store I/O failed: {0}")]
    Io(String),
    /// A fault injected by a test.
    #[error("injected fault: {0}")]
    Injected(&'static str),
    /// A full disk injected by a test.
    #[error("injected fault: disk full")]
    InjectedFull,
}

impl StoreError {
    /// Whether the failure is a full disk (clients are told "quota exceeded", and it clears
    /// once space is freed) rather than another fault.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_) | Self::InjectedFull)
    }
}

/// A session's client identifier in ops: shared with the session, so journaling an op does not
/// copy it.
pub type ClientId = std::sync::Arc<str>;

/// One change to the durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a session record.
    PutSession(ClientId, SessionRecord),
    /// Delete a session with all its messages and awaiting ids.
    DeleteSession(ClientId),
    /// Create or replace a message of a session, by sequence number.
    PutMessage(ClientId, u64, MessageRecord),
    /// Delete a message of a session.
    DeleteMessage(ClientId, u64),
    /// Update the phase and packet id of a stored message (no-op if it is not stored).
    SetPhase(ClientId, u64, MessagePhase, u16),
    /// Record an inbound QoS 2 packet id awaiting PUBREL.
    PutAwaiting(ClientId, u16),
    /// Forget an inbound QoS 2 packet id.
    DeleteAwaiting(ClientId, u16),
    /// Set the retained message of a topic.
    PutRetained(String, MessageRecord),
    /// Clear the retained message of a topic.
    DeleteRetained(String),
    /// Set a named setting: a small document the server keeps across restarts (the dynamic
    /// security document). The store does not look inside the value.
    PutSetting(String, Vec<u8>),
    /// Remove a named setting.
    DeleteSetting(String),
}

impl Op {
    /// Roughly the memory the op holds while it waits to be committed: the record it carries
    /// and a fixed allowance for the rest. What the journal's bound counts.
    pub fn weight(&self) -> usize {
        const FIXED: usize = 64;
        FIXED
            + match self {
                Op::PutSession(_, r) => {
                    r.subscriptions
                        .iter()
                        .map(|s| s.filter.len() + 16)
                        .sum::<usize>()
                        + r.will.as_ref().map_or(0, |w| w.packet.len())
                }
                Op::PutMessage(_, _, m) => {
                    m.packet.len() + m.payload.as_ref().map_or(0, |p| p.bytes.len())
                }
                Op::PutRetained(t, m) => t.len() + m.packet.len(),
                Op::DeleteRetained(t) => t.len(),
                Op::PutSetting(k, v) => k.len() + v.len(),
                Op::DeleteSetting(k) => k.len(),
                _ => 0,
            }
    }
}

/// One session as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedSession {
    /// Client identifier.
    pub client_id: String,
    /// The session record.
    pub record: SessionRecord,
    /// Its messages, by ascending sequence number.
    pub messages: Vec<(u64, MessageRecord)>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub awaiting: Vec<u16>,
}

/// Everything in the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Persistent sessions.
    pub sessions: Vec<LoadedSession>,
    /// Retained messages by topic.
    pub retained: Vec<(String, MessageRecord)>,
    /// Named settings ([`Op::PutSetting`]), by name.
    pub settings: Vec<(String, Vec<u8>)>,
    /// Damaged records skipped while recovering (empty unless loading with `recover`).
    pub skipped: Vec<String>,
}

/// A place where state survives restarts.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads everything. A damaged record is an error, unless `recover`, in which case it is
    /// skipped and named in [`Snapshot::skipped`].
    fn load(&self, recover: bool) -> Result<Snapshot, StoreError>;

    /// Applies `ops` atomically, in order. With `durable`, they are on disk when this returns
    /// (one fsync for the whole batch); without, they are written but may be lost by a crash
    /// until a later durable apply. After an error the batch may or may not be on disk (a
    /// failed fsync does not say what reached it): the caller must not count on either.
    fn apply(&self, ops: &[Op], durable: bool) -> Result<(), StoreError>;

    /// Closes and opens the store again after a failure: an engine that has seen an I/O
    /// error may refuse everything until then (redb does), and recovers what is on disk when
    /// it opens. Stores without such state do nothing.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Checks that the store takes a durable write now, writing as little as it can.
    fn probe(&self) -> Result<(), StoreError> {
        self.apply(&[], true)
    }

    /// Bytes free for the store on its filesystem, if it lives on one.
    fn free_bytes(&self) -> Option<u64> {
        None
    }

    /// Gives space freed inside the store back to its filesystem (redb's file only grows
    /// otherwise). True if it shrank.
    fn compact(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// Whether a failed batch's `op` is still to be applied once the store is back: deletions
/// and phase changes, which free space and which no client waits for. Applied before
/// anything later they stay in order (sequence numbers are never reused), and applying them
/// when what they name was never stored does nothing.
pub fn carried_over(op: &Op) -> bool {
    matches!(
        op,
        Op::DeleteSession(_)
            | Op::DeleteMessage(..)
            | Op::SetPhase(..)
            | Op::DeleteAwaiting(..)
            | Op::DeleteRetained(_)
    )
}

/// Removes from a batch the work that cancels out before it is committed: a message stored and
/// deleted within the batch (sent and acknowledged before the commit, the usual case for a
/// connected subscriber) is not written at all, and a phase change of a message stored in the
/// same batch is folded into its record. Applying the result leaves the store exactly as
/// applying `ops` would, given what the core guarantees: a session never puts a sequence
/// whose record exists (sequences grow, and start again only after the session is deleted).
/// Runs in O(n).
pub fn compact(mut ops: Vec<Op>) -> Vec<Op> {
    use std::collections::HashMap;
    // Index in `ops` of the PutMessage of each (client, seq) written in this batch. Keyed by
    // the address of the shared client id: the core journals a session's ops with the
    // session's own `Arc`, and an op that names the client through another `Arc` is simply
    // not merged (it is applied in order, which is always correct). Addresses are unique while
    // the ops in the batch keep their `Arc`s alive, and are not chosen by clients, so the
    // cheap hash is safe.
    let mut puts: HashMap<(usize, u64), usize, mix::BuildMix> =
        HashMap::with_capacity_and_hasher(ops.len() / 2, mix::BuildMix);
    let key = |id: &ClientId, seq: u64| (std::sync::Arc::as_ptr(id).cast::<u8>() as usize, seq);
    // Ops that cancel out. The batch is compacted in place: an op is moved once, if at all.
    let mut dead = vec![false; ops.len()];
    let kill = |dead: &mut Vec<bool>, i: usize| {
        if let Some(d) = dead.get_mut(i) {
            *d = true;
        }
    };
    for i in 0..ops.len() {
        let (before, rest) = ops.split_at_mut(i);
        let Some(op) = rest.first_mut() else { break };
        match op {
            Op::PutMessage(id, seq, _) => {
                puts.insert(key(id, *seq), i);
            }
            Op::SetPhase(id, seq, phase, pid) => {
                if let Some(&j) = puts.get(&key(id, *seq))
                    && let Some(Op::PutMessage(_, _, rec)) = before.get_mut(j)
                {
                    rec.phase = *phase;
                    rec.packet_id = *pid;
                    kill(&mut dead, i);
                }
            }
            Op::DeleteMessage(id, seq) => {
                // Stored and deleted in the same batch: neither reaches the disk.
                if let Some(j) = puts.remove(&key(id, *seq)) {
                    kill(&mut dead, i);
                    kill(&mut dead, j);
                }
            }
            Op::DeleteSession(id) => {
                // Earlier puts of this session are deleted by it anyway; keep order simple.
                puts.retain(
                    |_, j| !matches!(before.get(*j), Some(Op::PutMessage(c, _, _)) if **c == **id),
                );
            }
            _ => {}
        }
    }
    let mut next = dead.iter();
    ops.retain(|_| next.next() == Some(&false));
    ops
}

/// Records for the tests of this crate.
#[cfg(test)]
mod fixtures {
    use crate::{MessagePhase, MessageRecord, SessionRecord};

    /// A queued message record holding `packet`, with no shared payload or expiry.
    pub(crate) fn queued(packet: Vec<u8>) -> MessageRecord {
        MessageRecord {
            packet,
            payload: None,
            expires_at_ms: None,
            phase: MessagePhase::Queued,
            packet_id: 0,
        }
    }

    /// A 5.0 session record with a 60 s expiry and nothing else.
    pub(crate) fn session() -> SessionRecord {
        SessionRecord {
            protocol: 5,
            expiry_secs: 60,
            disconnected_at_ms: None,
            subscriptions: vec![],
            will: None,
        }
    }
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    use crate::fixtures::{queued, session};

    fn rec(n: u8) -> MessageRecord {
        queued(vec![n])
    }

    /// Compacting never changes what a store holds after the batch.
    #[test]
    fn same_result_as_the_full_batch() {
        // The core journals a session's ops with the session's own `Arc`.
        let (a, b): (ClientId, ClientId) = ("a".into(), "b".into());
        let before = vec![
            Op::PutSession(a.clone(), session()),
            Op::PutMessage(a.clone(), 1, rec(1)),
        ];
        let batch = vec![
            Op::PutMessage(a.clone(), 2, rec(2)),
            Op::SetPhase(a.clone(), 2, MessagePhase::Published, 7),
            Op::PutMessage(a.clone(), 3, rec(3)),
            Op::SetPhase(a.clone(), 3, MessagePhase::Published, 8),
            Op::DeleteMessage(a.clone(), 3),
            Op::SetPhase(a.clone(), 1, MessagePhase::Released, 5),
            Op::DeleteMessage(a.clone(), 9),
            // The same client through another `Arc`: not merged, applied in order.
            Op::PutMessage(a.clone(), 4, rec(6)),
            Op::SetPhase("a".into(), 4, MessagePhase::Published, 9),
            Op::PutMessage(b.clone(), 1, rec(4)),
            Op::DeleteSession(b.clone()),
            Op::PutMessage(b.clone(), 2, rec(5)),
            Op::DeleteMessage(b.clone(), 2),
        ];
        let full = MemoryStore::new();
        let compacted = MemoryStore::new();
        for s in [&full, &compacted] {
            s.apply(&before, true).unwrap();
        }
        full.apply(&batch, true).unwrap();
        let small = compact(batch.clone());
        assert!(small.len() < batch.len(), "{small:?}");
        assert!(!small.iter().any(|op| matches!(op, Op::PutMessage(_, 3, _))));
        compacted.apply(&small, true).unwrap();
        assert_eq!(full.load(false).unwrap(), compacted.load(false).unwrap());
    }

    /// Random batches of what sessions journal (puts, phase changes and deletions of nearby
    /// sequences, sessions deleted and stored again, a client named through a second `Arc`)
    /// leave the store as the whole batch does, over many seeds.
    #[test]
    fn random_batches_same_result() {
        for seed in 1..=300u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut below = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let ids: [ClientId; 3] = ["a".into(), "b".into(), "c".into()];
            let other: ClientId = "a".into();
            // A put takes the session's next sequence (the store's precondition: a sequence
            // is not put again while its record exists); a deleted session starts again at 1.
            let mut next = [3u64; 3];
            let mut batch = Vec::new();
            for _ in 0..below(60) {
                let c = below(3) as usize;
                let id = match below(8) {
                    0 if c == 0 => other.clone(),
                    _ => ids[c].clone(),
                };
                let seq = 1 + below(next[c]);
                batch.push(match below(10) {
                    0..=3 => {
                        next[c] += 1;
                        Op::PutMessage(id, next[c] - 1, rec(below(250) as u8))
                    }
                    4 | 5 => Op::SetPhase(id, seq, MessagePhase::Published, below(9) as u16),
                    6 | 7 => Op::DeleteMessage(id, seq),
                    8 => {
                        next[c] = 1;
                        Op::DeleteSession(id)
                    }
                    _ => Op::PutSession(id, session()),
                });
            }
            let full = MemoryStore::new();
            let compacted = MemoryStore::new();
            let before: Vec<Op> = ids
                .iter()
                .flat_map(|id| {
                    [
                        Op::PutSession(id.clone(), session()),
                        Op::PutMessage(id.clone(), 2, rec(1)),
                    ]
                })
                .collect();
            for s in [&full, &compacted] {
                s.apply(&before, true).unwrap();
            }
            full.apply(&batch, true).unwrap();
            let small = compact(batch.clone());
            assert!(small.len() <= batch.len(), "seed {seed}");
            compacted.apply(&small, true).unwrap();
            assert_eq!(
                full.load(false).unwrap(),
                compacted.load(false).unwrap(),
                "seed {seed}: {batch:?}"
            );
        }
    }
}
