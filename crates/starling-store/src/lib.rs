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
