//! Session numbers in the redb store: the messages table is keyed by (session number,
//! sequence), two fixed-width integers, rather than by (client id, sequence). A B-tree keyed by
//! a string tuple decodes and compares variable-length keys at every step of every lookup, and
//! a broker with offline persistent sessions makes tens of thousands of such lookups a second
//! (`bench/RESULTS.md`, "Mixed load").
//!
//! This module owns the mapping from client id to number: kept in the `session_numbers` table
//! and, for lookups, in memory (built when the store is opened, or again after a failed
//! transaction, whose changes are void). A client id gets a number when a message of it is
//! first stored, and loses it when its session is deleted, in the same transaction as its
//! messages. It also upgrades a layout 2 file, whose messages table is keyed by client id.

use std::collections::HashMap;

use redb::{ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};

use crate::bodies::WriteResult;

/// Client id to session number.
pub(crate) const NUMBERS: TableDefinition<&str, u64> = TableDefinition::new("session_numbers");
/// Message records by (session number, sequence).
pub(crate) const MESSAGES: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("messages_by_number");
/// Layout 1 and 2: message records by (client id, sequence).
const MESSAGES_BY_ID: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// The session numbers in the file.
#[derive(Debug, Default)]
pub(crate) struct Numbers {
    by_id: HashMap<Box<str>, u64>,
    /// Past every number in use (a number freed by a deleted session, whose messages went
    /// with it, may come back after a rebuild; nothing refers to it any more).
    next: u64,
}

impl Numbers {
    /// Reads the mapping from the file.
    pub(crate) fn build(table: &impl ReadableTable<&'static str, u64>) -> WriteResult<Self> {
        let mut numbers = Self::default();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let n = v.value();
            numbers.next = numbers.next.max(n.saturating_add(1));
            numbers.by_id.insert(k.value().into(), n);
        }
        Ok(numbers)
    }

    /// The number of a client id that has one.
    pub(crate) fn get(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// The number of a client id, given one now (and written) if it has none.
    pub(crate) fn get_or_assign(
        &mut self,
        id: &str,
        table: &mut Table<'_, &'static str, u64>,
    ) -> WriteResult<u64> {
        if let Some(n) = self.get(id) {
            return Ok(n);
        }
        let n = self.next;
        self.next = self.next.saturating_add(1);
        table.insert(id, n)?;
        self.by_id.insert(id.into(), n);
        Ok(n)
    }

    /// Forgets a client id's number (its session is deleted); returns it.
    pub(crate) fn remove(
        &mut self,
        id: &str,
        table: &mut Table<'_, &'static str, u64>,
    ) -> WriteResult<Option<u64>> {
        table.remove(id)?;
        Ok(self.by_id.remove(id))
    }

    /// How many client ids have a number.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Moves the records of a layout 1 or 2 messages table (keyed by client id) into the table
/// keyed by number, numbering the client ids in order, and deletes the old table; in the
/// caller's transaction, so a crash leaves the file as it was. Returns how many records moved.
pub(crate) fn upgrade_from_client_ids(txn: &WriteTransaction) -> WriteResult<u64> {
    let found = txn
        .list_tables()?
        .any(|t| t.name() == MESSAGES_BY_ID.name());
    if !found {
        return Ok(0);
    }
    let mut moved = 0u64;
    {
        let old = txn.open_table(MESSAGES_BY_ID).map_err(table_error)?;
        let mut numbers_t = txn.open_table(NUMBERS).map_err(table_error)?;
        let mut messages = txn.open_table(MESSAGES).map_err(table_error)?;
        let mut numbers = Numbers::build(&numbers_t)?;
        for entry in old.iter()? {
            let (k, v) = entry?;
            let (id, seq) = k.value();
            let n = numbers.get_or_assign(id, &mut numbers_t)?;
            messages.insert((n, seq), v.value())?;
            moved += 1;
        }
    }
    txn.delete_table(MESSAGES_BY_ID).map_err(table_error)?;
    Ok(moved)
}

/// A table error while upgrading, as a storage error (the tables involved have fixed types,
/// so anything but a storage failure is damage).
fn table_error(e: redb::TableError) -> redb::StorageError {
    match e {
        redb::TableError::Storage(s) => s,
        other => redb::StorageError::Corrupted(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessagePhase, MessageRecord, Op, RedbStore, Store};
    use redb::{Database, ReadableDatabase, ReadableTableMetadata};

    use crate::fixtures::{queued, session};

    fn msg(n: u8) -> MessageRecord {
        queued(vec![n; 3])
    }

    /// A file of layout 2 (messages keyed by client id) opens with every message in place,
    /// keyed by number from then on, and the old table gone.
    #[test]
    fn a_layout_2_file_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("starling.redb");
        {
            let db = Database::create(&file).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn
                    .open_table(TableDefinition::<&str, u64>::new("meta"))
                    .unwrap();
                meta.insert("layout", 2).unwrap();
                let mut sessions = txn
                    .open_table(TableDefinition::<&str, &[u8]>::new("sessions"))
                    .unwrap();
                for id in ["a", "ab"] {
                    sessions.insert(id, session().encode().as_slice()).unwrap();
                }
                let mut old = txn.open_table(MESSAGES_BY_ID).unwrap();
                for (id, seq, n) in [("a", 1u64, 1u8), ("a", 7, 2), ("ab", 3, 3)] {
                    old.insert((id, seq), msg(n).encode_stored(None).as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let snap = s.load(false).unwrap();
        let seqs = |id: &str| -> Vec<(u64, Vec<u8>)> {
            let l = snap.sessions.iter().find(|l| l.client_id == id).unwrap();
            l.messages
                .iter()
                .map(|(q, m)| (*q, m.packet.clone()))
                .collect()
        };
        assert_eq!(seqs("a"), [(1, vec![1; 3]), (7, vec![2; 3])]);
        assert_eq!(seqs("ab"), [(3, vec![3; 3])]);
        // Written and deleted by number from now on.
        s.apply(
            &[
                Op::DeleteMessage("a".into(), 1),
                Op::PutMessage("a".into(), 8, msg(4)),
            ],
            true,
        )
        .unwrap();
        drop(s);
        let db = Database::open(&file).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(MESSAGES_BY_ID).is_err(), "old table deleted");
        assert_eq!(txn.open_table(MESSAGES).unwrap().len().unwrap(), 3);
        assert_eq!(txn.open_table(NUMBERS).unwrap().len().unwrap(), 2);
    }

    /// A deleted session takes its number and its messages with it; a later session of the
    /// same client id starts empty.
    #[test]
    fn a_deleted_session_leaves_no_number_or_message() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        s.apply(
            &[
                Op::PutSession("a".into(), session()),
                Op::PutMessage("a".into(), 1, msg(1)),
                Op::PutSession("b".into(), session()),
                Op::PutMessage("b".into(), 1, msg(2)),
            ],
            true,
        )
        .unwrap();
        s.apply(&[Op::DeleteSession("a".into())], true).unwrap();
        s.apply(&[Op::PutSession("a".into(), session())], true)
            .unwrap();
        // Ops naming a client id with no number do nothing.
        s.apply(
            &[
                Op::DeleteMessage("a".into(), 1),
                Op::SetPhase("a".into(), 1, MessagePhase::Published, 3),
            ],
            true,
        )
        .unwrap();
        s.reopen().unwrap();
        let snap = s.load(false).unwrap();
        let a = snap.sessions.iter().find(|l| l.client_id == "a").unwrap();
        let b = snap.sessions.iter().find(|l| l.client_id == "b").unwrap();
        assert!(a.messages.is_empty());
        assert_eq!(b.messages.len(), 1);
        s.apply(&[Op::PutMessage("a".into(), 2, msg(5))], true)
            .unwrap();
        let snap = s.load(false).unwrap();
        let a = snap.sessions.iter().find(|l| l.client_id == "a").unwrap();
        assert_eq!(a.messages.len(), 1);
    }
}
