//! Shared payloads in the redb store: a payload queued for many sessions is written once, in
//! the `bodies` table under a number, and each session's message record refers to that number.
//! This module owns the count of references to each body, kept in memory: rebuilt from the
//! message records when the store is opened (or after a failed transaction, whose changes to
//! the counts are void), raised by every record put, lowered by every record removed, and the
//! body deleted with its last reference, in the same transaction. So the file never holds a
//! body nothing refers to, except one left by a store written without this index (deleted when
//! the index is rebuilt).

use std::collections::HashMap;

use redb::{ReadableTable, Table, TableDefinition};

use crate::mix::BuildMix;
use crate::{MessageRecord, SharedPayload, StoreError};

pub(crate) const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");

/// References to the bodies in the file. Keyed by numbers and addresses no client chooses,
/// hence the cheap hash.
#[derive(Debug, Default)]
pub(crate) struct BodyIndex {
    /// Bodies written since the index was built, by the caller's key and length: a record put
    /// with the same key and length refers to the same body.
    by_key: HashMap<(u64, usize), u64, BuildMix>,
    /// Records referring to each body, and the key it was written under (if since the build).
    refs: HashMap<u64, Refs, BuildMix>,
    /// Number of the next body.
    next: u64,
}

/// Records referring to a body, and the key it was written under (if since the build).
type Refs = (u32, Option<(u64, usize)>);

/// A write error of redb, as the caller maps it.
pub(crate) type WriteResult<T> = Result<T, redb::StorageError>;

impl BodyIndex {
    /// Builds the index from the records of `messages`, deleting bodies none refers to.
    pub(crate) fn build(
        messages: &Table<'_, (u64, u64), &[u8]>,
        bodies: &mut Table<'_, u64, &[u8]>,
    ) -> WriteResult<Self> {
        let mut index = Self::default();
        for entry in messages.iter()? {
            let (_, v) = entry?;
            // A damaged record refers to nothing; load reports it.
            if let Ok(Some(body)) = MessageRecord::stored_body(v.value()) {
                index.refs.entry(body).or_insert((0, None)).0 += 1;
                // Past every number a record names, even one whose body is missing (damage
                // load reports): a new body never takes it.
                index.next = index.next.max(body.saturating_add(1));
            }
        }
        let mut orphans = Vec::new();
        for entry in bodies.iter()? {
            let (k, _) = entry?;
            let id = k.value();
            index.next = index.next.max(id.saturating_add(1));
            if !index.refs.contains_key(&id) {
                orphans.push(id);
            }
        }
        for id in orphans {
            bodies.remove(id)?;
        }
        Ok(index)
    }

    /// The body number a record with `payload` refers to: the body already written for the
    /// same payload, or a new one written now. Counts the reference.
    pub(crate) fn put(
        &mut self,
        payload: &SharedPayload,
        bodies: &mut Table<'_, u64, &[u8]>,
    ) -> WriteResult<u64> {
        let key = (payload.key, payload.bytes.len());
        if let Some(&id) = self.by_key.get(&key)
            && let Some(r) = self.refs.get_mut(&id)
        {
            r.0 += 1;
            return Ok(id);
        }
        let id = self.next;
        self.next = self.next.saturating_add(1);
        bodies.insert(id, payload.bytes.as_ref())?;
        self.refs.insert(id, (1, Some(key)));
        self.by_key.insert(key, id);
        Ok(id)
    }

    /// A record referring to `id` is gone: the body goes with its last reference.
    pub(crate) fn release(
        &mut self,
        id: u64,
        bodies: &mut Table<'_, u64, &[u8]>,
    ) -> WriteResult<()> {
        let Some(r) = self.refs.get_mut(&id) else {
            return Ok(());
        };
        r.0 = r.0.saturating_sub(1);
        if r.0 == 0 {
            if let Some((_, Some(key))) = self.refs.remove(&id) {
                self.by_key.remove(&key);
            }
            bodies.remove(id)?;
        }
        Ok(())
    }

    /// Bodies referred to (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.refs.len()
    }
}

/// The body a stored message record refers to, if any.
pub(crate) fn body_of(record: &[u8]) -> Option<u64> {
    MessageRecord::stored_body(record).ok().flatten()
}

/// Fills in the shared payload of a loaded record from `bodies`; a missing body is damage.
pub(crate) fn attach(
    record: &mut MessageRecord,
    body: Option<u64>,
    bodies: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<(), StoreError> {
    let Some(id) = body else {
        return Ok(());
    };
    let bytes = bodies
        .get(id)
        .map_err(|e| StoreError::Io(format!("bodies: {e}")))?
        .ok_or_else(|| StoreError::Corrupt(format!("the payload {id} it refers to is missing")))?
        .value()
        .to_vec();
    record.payload = Some(SharedPayload {
        key: id,
        bytes: bytes.into(),
    });
    Ok(())
}
