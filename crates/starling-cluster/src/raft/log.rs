//! The Raft log on disk: entries, the vote and the committed and purged positions, in one redb
//! file (`<data_dir>/raft.redb`) shared with the state machine's snapshot. Every write is one
//! transaction committed durably before openraft is told it is done, so a vote granted or an
//! entry acknowledged to a leader survives a crash of the machine, which is what Raft's safety
//! rests on.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, StorageError, Types, decode, encode};
use crate::state::NodeId;

/// Log index to encoded entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Named values: the vote, the committed and purged log ids, the snapshot, the format.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// The version of what this module and the state machine write; a file with another one is
/// refused instead of misread.
const FORMAT: u32 = 1;

/// Opens (or creates) the cluster's storage file in `dir`.
pub fn open(dir: &Path) -> Result<Arc<Database>, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
    let db = Database::create(dir.join("raft.redb"))
        .map_err(|e| StorageIOError::read(AnyError::new(&e)))?;
    let found: Option<u32> = get_meta(&db, "format")?;
    match found {
        Some(FORMAT) => {}
        None => put_meta(&db, "format", &FORMAT)?,
        Some(other) => {
            let e = std::io::Error::other(format!(
                "raft.redb has format {other}; this version reads format {FORMAT}"
            ));
            return Err(StorageIOError::read(AnyError::new(&e)).into());
        }
    }
    Ok(Arc::new(db))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write(AnyError::new(&e)).into()
}

/// Reads the value named `key` from the meta table.
pub(crate) fn get_meta<T: DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    match table.get(key).map_err(read_err)? {
        Some(v) => decode(v.value()).map(Some).map_err(read_err),
        None => Ok(None),
    }
}

/// Writes `value` under `key` in the meta table, durably.
pub(crate) fn put_meta<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
) -> Result<(), StorageError> {
    let bytes = encode(value).map_err(write_err)?;
    let txn = db.begin_write().map_err(write_err)?;
    {
        let mut table = txn.open_table(META).map_err(write_err)?;
        table.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

/// The log, readable by openraft's replication tasks while the core appends to it (redb's
/// read transactions see the last commit).
#[derive(Clone, Debug)]
pub struct RaftLog {
    db: Arc<Database>,
}

impl RaftLog {
    /// The log kept in `db` (from [`open`]).
    pub fn new(db: Arc<Database>) -> Self {
        RaftLog { db }
    }

    fn last_entry(&self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let entry: Entry = decode(v.value()).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    /// Deletes the entries whose index is in `range`, and writes `meta` in the same
    /// transaction.
    fn delete(
        &self,
        range: impl RangeBounds<u64>,
        meta: Option<(&str, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            table.retain_in(range, |_, _| false).map_err(write_err)?;
            if let Some((key, value)) = meta {
                let mut meta = txn.open_table(META).map_err(write_err)?;
                meta.insert(key, value.as_slice()).map_err(write_err)?;
            }
        }
        txn.commit().map_err(write_err)
    }
}

impl RaftLogReader<Types> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        let mut out = Vec::new();
        for row in table.range(range).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(decode(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<Types> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, StorageError> {
        let last_purged_log_id: Option<LogId<NodeId>> = get_meta(&self.db, "purged")?;
        let last_log_id = self.last_entry()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        put_meta(&self.db, "vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        get_meta(&self.db, "vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        put_meta(&self.db, "committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db, "committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Types>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| {
            let txn = self.db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(write_err)?;
                for entry in entries {
                    let bytes = encode(&entry).map_err(write_err)?;
                    table
                        .insert(entry.log_id.index, bytes.as_slice())
                        .map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })();
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.delete(log_id.index.., None)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let purged = encode(&log_id).map_err(write_err)?;
        self.delete(..=log_id.index, Some(("purged", purged)))
    }
}
