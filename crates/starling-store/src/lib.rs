//! Starling's durable state: what must survive a restart (persistent sessions with their
//! subscriptions, queued and inflight messages, inbound QoS 2 ids awaiting PUBREL, retained
//! messages, delayed wills), as records behind one small [`Store`] trait, with an in-memory
//! implementation (for tests, with fault injection) and an embedded durable one on redb.
//!
//! The broker core never sees which store it has: it emits [`Op`]s, and a committer applies
//! them in batches (group commit).

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod memory;
pub mod record;
pub mod redb_store;

pub use memory::MemoryStore;
pub use record::{MessagePhase, MessageRecord, SessionRecord, SubscriptionRecord, WillRecord};
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
    /// The storage engine or the disk failed (full disk, I/O error).
    #[error("store I/O failed: {0}")]
    Io(String),
    /// A fault injected by a test.
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

/// One change to the durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a session record.
    PutSession(String, SessionRecord),
    /// Delete a session with all its messages and awaiting ids.
    DeleteSession(String),
    /// Create or replace a message of a session, by sequence number.
    PutMessage(String, u64, MessageRecord),
    /// Delete a message of a session.
    DeleteMessage(String, u64),
    /// Update the phase and packet id of a stored message (no-op if it is not stored).
    SetPhase(String, u64, MessagePhase, u16),
    /// Record an inbound QoS 2 packet id awaiting PUBREL.
    PutAwaiting(String, u16),
    /// Forget an inbound QoS 2 packet id.
    DeleteAwaiting(String, u16),
    /// Set the retained message of a topic.
    PutRetained(String, MessageRecord),
    /// Clear the retained message of a topic.
    DeleteRetained(String),
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
    /// until a later durable apply.
    fn apply(&self, ops: &[Op], durable: bool) -> Result<(), StoreError>;
}

/// Removes from a batch the work that cancels out before it is committed: a message stored and
/// deleted within the batch (sent and acknowledged before the commit, the usual case for a
/// connected subscriber) is not written at all, and a phase change of a message stored in the
/// same batch is folded into its record. Applying the result leaves the store exactly as
/// applying `ops` would. Runs in O(n).
pub fn compact(ops: Vec<Op>) -> Vec<Op> {
    use std::collections::HashMap;
    // Index in `out` of the PutMessage of each (client, seq) written in this batch.
    let mut puts: HashMap<(String, u64), usize> = HashMap::new();
    let mut out: Vec<Option<Op>> = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::PutMessage(id, seq, rec) => {
                puts.insert((id.clone(), seq), out.len());
                out.push(Some(Op::PutMessage(id, seq, rec)));
            }
            Op::SetPhase(id, seq, phase, pid) => {
                let key = (id, seq);
                match puts.get(&key).and_then(|&i| out.get_mut(i)) {
                    Some(Some(Op::PutMessage(_, _, rec))) => {
                        rec.phase = phase;
                        rec.packet_id = pid;
                    }
                    _ => out.push(Some(Op::SetPhase(key.0, key.1, phase, pid))),
                }
            }
            Op::DeleteMessage(id, seq) => {
                let key = (id, seq);
                match puts.remove(&key) {
                    // Stored and deleted in the same batch: neither reaches the disk.
                    Some(i) => {
                        if let Some(slot) = out.get_mut(i) {
                            *slot = None;
                        }
                    }
                    None => out.push(Some(Op::DeleteMessage(key.0, key.1))),
                }
            }
            Op::DeleteSession(id) => {
                // Earlier puts of this session are deleted by it anyway; keep order simple.
                puts.retain(|(c, _), _| *c != id);
                out.push(Some(Op::DeleteSession(id)));
            }
            other => out.push(Some(other)),
        }
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod compact_tests {
    use super::*;

    fn rec(n: u8) -> MessageRecord {
        MessageRecord {
            packet: vec![n],
            expires_at_ms: None,
            phase: MessagePhase::Queued,
            packet_id: 0,
        }
    }

    fn session() -> SessionRecord {
        SessionRecord {
            protocol: 4,
            expiry_secs: 60,
            disconnected_at_ms: None,
            subscriptions: vec![],
            will: None,
        }
    }

    /// Compacting never changes what a store holds after the batch.
    #[test]
    fn same_result_as_the_full_batch() {
        let before = vec![
            Op::PutSession("a".into(), session()),
            Op::PutMessage("a".into(), 1, rec(1)),
        ];
        let batch = vec![
            Op::PutMessage("a".into(), 2, rec(2)),
            Op::SetPhase("a".into(), 2, MessagePhase::Published, 7),
            Op::PutMessage("a".into(), 3, rec(3)),
            Op::SetPhase("a".into(), 3, MessagePhase::Published, 8),
            Op::DeleteMessage("a".into(), 3),
            Op::SetPhase("a".into(), 1, MessagePhase::Released, 5),
            Op::DeleteMessage("a".into(), 9),
            Op::PutMessage("b".into(), 1, rec(4)),
            Op::DeleteSession("b".into()),
            Op::PutMessage("b".into(), 2, rec(5)),
            Op::DeleteMessage("b".into(), 2),
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
}
