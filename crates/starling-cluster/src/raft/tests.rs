use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::log::{RaftLog, open};
use super::machine::Machine;
use super::{StorageError, Types};
use crate::state::Limits;

struct OnDisk;

impl StoreBuilder<Types, RaftLog, Machine, TempDir> for OnDisk {
    async fn build(&self) -> Result<(TempDir, RaftLog, Machine), StorageError> {
        let dir = tempfile::tempdir()
            .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        let db = open(dir.path())?;
        Ok((
            dir,
            RaftLog::new(db.clone()),
            Machine::open(db, Limits::default())?,
        ))
    }
}

/// openraft's own conformance suite for log stores and state machines, on the redb files.
#[test]
fn the_storage_passes_openrafts_suite() -> Result<(), StorageError> {
    Suite::test_all(OnDisk)
}
