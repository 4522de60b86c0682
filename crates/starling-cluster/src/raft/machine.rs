//! The state machine: applies committed entries to the [`ClusterState`] every part of the node
//! reads, and keeps its snapshot in the storage file. The state itself lives in memory; after a
//! restart it is the last snapshot plus the committed entries after it, which openraft applies
//! again (the log keeps the committed position durably), so nothing applied is lost and nothing
//! is applied twice into the same state.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};

use super::log::{get_meta, put_meta};
use super::{Entry, Peer, StorageError, Types, encode};
use crate::feed::{Applied, Sender};
use crate::state::{ClusterState, Command, Limits, NodeId, Outcome, Retained};

/// Told, as entries are applied, of every change to the retained messages, so that a node can
/// keep its own index of them for its subscribers (a replica it serves reads from). Called
/// with the state's write lock held: it must be quick, must not block, and must not read the
/// node's shared state.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// The retained message of `topic` is now `message` (`None`: cleared, or expired).
    fn retained(&self, topic: &str, message: Option<&Retained>);
    /// The whole state was replaced (loaded from the snapshot at start, or a snapshot from
    /// the leader installed): start again from `state`.
    fn reset(&self, state: &ClusterState);
}

/// A snapshot as kept on disk: openraft's description of it and the encoded state.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, Peer>,
    data: Vec<u8>,
}

/// The replicated state as this node has applied it, shared with the readers of the node (a
/// read lock held for a lookup; the applier takes the write lock per batch of entries).
#[derive(Clone, Debug)]
pub struct Shared(Arc<RwLock<ClusterState>>);

impl Shared {
    /// Reads the state.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn replace(&self, state: ClusterState) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// openraft's state machine for the cluster.
#[derive(Debug)]
pub struct Machine {
    state: Shared,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Peer>,
    db: Arc<Database>,
    /// Tells snapshots of the same log position apart (their ids must differ).
    built: u64,
    /// Where what the node acts on is told, if anywhere.
    feed: Option<Sender>,
    /// Who is told of the retained messages' changes, if anyone.
    observer: Option<Arc<dyn Observer>>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl Machine {
    /// The state machine kept in `db`, as of its last snapshot (`limits` for a new cluster).
    pub fn open(db: Arc<Database>, limits: Limits) -> Result<Self, StorageError> {
        let mut m = Machine {
            state: Shared(Arc::new(RwLock::new(ClusterState::new(limits)))),
            applied: None,
            membership: StoredMembership::default(),
            db,
            built: 0,
            feed: None,
            observer: None,
        };
        if let Some(stored) = get_meta::<Stored>(&m.db, "snapshot")? {
            m.load(stored)?;
        }
        Ok(m)
    }

    /// Tells `feed` what the node acts on as entries are applied.
    pub fn with_feed(mut self, feed: Sender) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Tells `observer` of every change to the retained messages, starting with all of them
    /// as they are now.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        observer.reset(&self.state.read());
        self.observer = Some(observer);
        self
    }

    /// The state, for the node's readers.
    pub fn shared(&self) -> Shared {
        self.state.clone()
    }

    fn load(&mut self, stored: Stored) -> Result<(), StorageError> {
        let state = ClusterState::from_stored(&stored.data).map_err(read_err)?;
        self.state.replace(state);
        self.applied = stored.meta.last_log_id;
        self.membership = stored.meta.last_membership;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Snapshot<Types>, StorageError> {
        let data = encode(&*self.state.read()).map_err(read_err)?;
        self.built += 1;
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.built),
            None => format!("--{}", self.built),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        put_meta(&self.db, "snapshot", &stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// Builds a snapshot of the state as applied when it was asked for.
#[derive(Debug)]
pub struct Builder(Option<Snapshot<Types>>, Option<StorageError>);

impl RaftSnapshotBuilder<Types> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Types>, StorageError> {
        match (self.0.take(), self.1.take()) {
            (Some(s), _) => Ok(s),
            (None, Some(e)) => Err(e),
            (None, None) => Err(write_err(std::io::Error::other("snapshot already taken"))),
        }
    }
}

impl RaftStateMachine<Types> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Peer>), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut state = self.state.0.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            self.applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(cmd) => {
                    let claimed = match (&cmd, &self.feed) {
                        (Command::Claim { client_id, .. }, Some(_)) => Some(client_id.clone()),
                        _ => None,
                    };
                    let touched = self
                        .observer
                        .as_ref()
                        .map(|_| retained_topics(&state, &cmd));
                    let outcome = state.apply(entry.log_id.index, cmd);
                    if let (Some(observer), Some(topics)) = (&self.observer, touched) {
                        for topic in topics {
                            observer.retained(&topic, state.retained(&topic));
                        }
                    }
                    if let (Some(client_id), Some(feed)) = (claimed, &self.feed)
                        && let Outcome::Claimed { owner, previous } = &outcome
                    {
                        feed.send(Applied::Claimed {
                            client_id,
                            owner: *owner,
                            previous: *previous,
                        });
                    }
                    outcome
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcome::Done
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The state is in memory: the snapshot is taken here, at the applied position, and
        // handed to the builder (the state keeps changing after this returns).
        match self.snapshot() {
            Ok(s) => Builder(Some(s), None),
            Err(e) => Builder(None, Some(e)),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let stored = Stored {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Decoded before it is kept: a snapshot that cannot be read is refused, not stored.
        let state = ClusterState::from_stored(&stored.data).map_err(read_err)?;
        put_meta(&self.db, "snapshot", &stored)?;
        self.state.replace(state);
        if let Some(observer) = &self.observer {
            observer.reset(&self.state.read());
        }
        self.applied = stored.meta.last_log_id;
        self.membership = stored.meta.last_membership;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Types>>, StorageError> {
        Ok(get_meta::<Stored>(&self.db, "snapshot")?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// The retained topics `cmd` may change (applied to `state`): the observer is told what each
/// holds afterwards.
fn retained_topics(state: &ClusterState, cmd: &Command) -> Vec<String> {
    match cmd {
        Command::Retain { topic, .. } | Command::ClearRetained { topic } => vec![topic.clone()],
        Command::RetainBatch { changes } => changes.iter().map(|(t, _)| t.clone()).collect(),
        Command::ExpireRetained { now_ms } => state.expiring(*now_ms),
        Command::Incarnate { .. }
        | Command::Claim { .. }
        | Command::Release { .. }
        | Command::NodeDown { .. }
        | Command::NodeUp { .. } => Vec::new(),
    }
}
