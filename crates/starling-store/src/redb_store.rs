//! The embedded durable store on redb: a copy-on-write B-tree file, crash-safe, where a
//! transaction committed with `Durability::Immediate` is on disk when `commit` returns. One
//! transaction per batch of ops gives group commit: one fsync for every message in the batch.
//!
//! After an I/O error redb refuses every later transaction until the database is closed and
//! opened again, which recovers what is on disk: [`Store::reopen`] does that, and errors are
//! told apart (a full disk, or anything else) so the broker can answer clients accordingly.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{
    CommitError, CompactionError, Database, DatabaseError, Durability, ReadableDatabase,
    ReadableTable, StorageBackend, StorageError, TableDefinition, TableError, TransactionError,
};

use crate::bodies::{BODIES, BodyIndex, attach, body_of};
use crate::deletes::{Doomed, Tables};
use crate::numbers::{MESSAGES, NUMBERS, Numbers, upgrade_from_client_ids};
use crate::pace::Pace;
use crate::record::RECORD_FORMAT;
use crate::{LoadedSession, MessageRecord, Op, SessionRecord, Snapshot, Store, StoreError};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const AWAITING: TableDefinition<(&str, u16), ()> = TableDefinition::new("awaiting_rel");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// Named settings (`Op::PutSetting`). Added within layout 2: a file without it gets it when
/// opened, and an older version, which does not know the table, leaves it alone.
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

/// The store's cache unless configured (`[storage] cache_mib`).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// Version of the table layout; bumped when it changes incompatibly. 2 added the `bodies`
/// table (shared payloads); 3 keys messages by session number (`numbers.rs`). A file of an
/// older layout is upgraded when opened.
const LAYOUT_VERSION: u64 = 3;

/// Opens the database (again): the file, or a backend a test supplies.
type Opener = dyn Fn() -> Result<Database, DatabaseError> + Send + Sync;

/// The redb store: one file, `starling.redb`, in the data directory.
pub struct RedbStore {
    /// `None` while closed after a failure and not yet reopened.
    db: Mutex<Option<Database>>,
    /// References to shared payloads and session numbers; `None` until built from the file
    /// (after opening, or after a failed transaction). Locked after `db`.
    bodies: Mutex<Option<Indexes>>,
    path: PathBuf,
    open: Arc<Opener>,
    /// A transaction yields the thread every this many operations (0: never); see `pace`.
    yield_every: usize,
}

/// What the store keeps in memory about the file, built from it.
#[derive(Debug)]
struct Indexes {
    bodies: BodyIndex,
    numbers: Numbers,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The storage failure inside one of redb's error types, if that is what it is.
trait Engine: std::fmt::Display {
    fn storage(&self) -> Option<&StorageError>;
}

impl Engine for StorageError {
    fn storage(&self) -> Option<&StorageError> {
        Some(self)
    }
}

macro_rules! engine_errors {
    ($($t:ty),*) => {$(
        impl Engine for $t {
            fn storage(&self) -> Option<&StorageError> {
                match self {
                    Self::Storage(s) => Some(s),
                    _ => None,
                }
            }
        }
    )*};
}
engine_errors!(
    TransactionError,
    CommitError,
    TableError,
    DatabaseError,
    CompactionError
);

impl Engine for std::io::Error {
    fn storage(&self) -> Option<&StorageError> {
        None
    }
}

impl Engine for redb::SetDurabilityError {
    fn storage(&self) -> Option<&StorageError> {
        None
    }
}

/// A full disk or quota, as the OS reports it.
fn is_full(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
    )
}

fn io(what: &str, e: impl Engine) -> StoreError {
    let kind = match e.storage() {
        Some(StorageError::Io(err)) => Some(err.kind()),
        _ => None,
    };
    failure(format!("{what}: {e}"), kind)
}

fn os(what: &str, e: &std::io::Error) -> StoreError {
    failure(format!("{what}: {e}"), Some(e.kind()))
}

/// A full disk, or another I/O failure, as the OS's error kind says.
fn failure(msg: String, kind: Option<ErrorKind>) -> StoreError {
    if kind.is_some_and(is_full) {
        StoreError::Full(msg)
    } else {
        StoreError::Io(msg)
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `dir` with a cache of [`DEFAULT_CACHE_BYTES`]. Refuses
    /// a store written by a newer layout, and a damaged file, with an error naming the file.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`RedbStore::open`] with a cache of `cache_bytes` (pages read and written; redb's own
    /// default, 1 GiB, is most of a busy broker's memory).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| os(&format!("cannot create {}", dir.display()), &e))?;
        let path = dir.join("starling.redb");
        let file = path.clone();
        let create = move || {
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(&file)
        };
        let store = Self::with_opener(path, Arc::new(create))?;
        // Reopened after a failure, the file must be there: a missing one (the filesystem
        // unmounted, the file deleted) is an error, not a new empty store.
        let file = store.path.clone();
        let reopen = move || Database::builder().set_cache_size(cache_bytes).open(&file);
        Ok(Self {
            open: Arc::new(reopen),
            ..store
        })
    }

    /// Opens the store on a storage backend (a test's, which can fail on command) that
    /// `make` creates afresh for each (re)open; `path` is only for messages.
    pub fn open_with_backend<B: StorageBackend>(
        path: PathBuf,
        make: impl Fn() -> std::io::Result<B> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        let open = move || {
            let backend = make().map_err(|e| DatabaseError::Storage(StorageError::Io(e)))?;
            Database::builder().create_with_backend(backend)
        };
        Self::with_opener(path, Arc::new(open))
    }

    fn with_opener(path: PathBuf, open: Arc<Opener>) -> Result<Self, StoreError> {
        let store = Self {
            db: Mutex::new(None),
            bodies: Mutex::new(None),
            path,
            open,
            yield_every: 0,
        };
        store.reopen()?;
        Ok(store)
    }

    /// Makes each transaction give the core back to other threads every `ops` operations
    /// (0, the default: never), for a committer that shares cores with latency-sensitive
    /// threads. It changes nothing in what is written.
    pub fn set_yield_every(&mut self, ops: usize) {
        self.yield_every = ops;
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Option<Database>> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self) -> MutexGuard<'_, Option<Indexes>> {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open database, or an error saying it is closed (a reopen failed).
    fn db<'a>(guard: &'a MutexGuard<'_, Option<Database>>) -> Result<&'a Database, StoreError> {
        guard
            .as_ref()
            .ok_or_else(|| StoreError::Io("the store is closed after a failure".into()))
    }

    fn check_layout(db: &Database) -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(|e| io("begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| io("meta", e))?;
            let found = meta
                .get("layout")
                .map_err(|e| io("meta", e))?
                .map(|v| v.value());
            match found {
                Some(v) if v > LAYOUT_VERSION => {
                    return Err(StoreError::NewerFormat(
                        u32::try_from(v).unwrap_or(u32::MAX),
                    ));
                }
                Some(LAYOUT_VERSION) => {}
                // A new file, or one of layout 1 or 2 (which this version upgrades): from now
                // on written as this layout, which older versions refuse to open.
                Some(_) | None => {
                    meta.insert("layout", LAYOUT_VERSION)
                        .map_err(|e| io("meta", e))?;
                    meta.insert("record_format", u64::from(RECORD_FORMAT))
                        .map_err(|e| io("meta", e))?;
                }
            }
            // Create every table so a read transaction finds them.
            txn.open_table(SESSIONS).map_err(|e| io("sessions", e))?;
            txn.open_table(MESSAGES).map_err(|e| io("messages", e))?;
            txn.open_table(NUMBERS)
                .map_err(|e| io("session_numbers", e))?;
            txn.open_table(AWAITING)
                .map_err(|e| io("awaiting_rel", e))?;
            txn.open_table(RETAINED).map_err(|e| io("retained", e))?;
            txn.open_table(BODIES).map_err(|e| io("bodies", e))?;
            txn.open_table(SETTINGS).map_err(|e| io("settings", e))?;
        }
        upgrade_from_client_ids(&txn).map_err(|e| io("upgrading the messages table", e))?;
        txn.commit().map_err(|e| io("commit", e))
    }
}

/// Decodes one record, or (when recovering) notes it as skipped.
fn keep<T>(
    decoded: Result<T, StoreError>,
    what: impl FnOnce() -> String,
    recover: bool,
    skipped: &mut Vec<String>,
) -> Result<Option<T>, StoreError> {
    match decoded {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NewerFormat(v)) => Err(StoreError::NewerFormat(v)),
        Err(e) if recover => {
            skipped.push(format!("{}: {e}", what()));
            Ok(None)
        }
        Err(e) => Err(StoreError::Corrupt(format!("{}: {e}", what()))),
    }
}

impl Store for RedbStore {
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.lock();
        // Closed first: redb will not open a file this process still has open.
        drop(guard.take());
        let db = (self.open)().map_err(|e| match e {
            DatabaseError::Storage(StorageError::Corrupted(msg)) => {
                StoreError::Corrupt(format!("{}: {msg}", self.path.display()))
            }
            other => io(&format!("cannot open {}", self.path.display()), other),
        })?;
        Self::check_layout(&db)?;
        *guard = Some(db);
        *self.index() = None;
        Ok(())
    }

    fn probe(&self) -> Result<(), StoreError> {
        let guard = self.lock();
        let db = Self::db(&guard)?;
        let txn = db.begin_write().map_err(|e| io("begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| io("meta", e))?;
            let n = meta
                .get("probes")
                .map_err(|e| io("meta", e))?
                .map_or(0, |v| v.value());
            meta.insert("probes", n.wrapping_add(1))
                .map_err(|e| io("meta", e))?;
        }
        txn.commit().map_err(|e| io("commit", e))
    }

    fn free_bytes(&self) -> Option<u64> {
        let dir = self.path.parent()?;
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    fn compact(&self) -> Result<bool, StoreError> {
        let mut guard = self.lock();
        let Some(db) = guard.as_mut() else {
            return Ok(false);
        };
        db.compact().map_err(|e| io("compact", e))
    }

    fn load(&self, recover: bool) -> Result<Snapshot, StoreError> {
        let guard = self.lock();
        let db = Self::db(&guard)?;
        let txn = db.begin_read().map_err(|e| io("begin read", e))?;
        let sessions_t = txn.open_table(SESSIONS).map_err(|e| io("sessions", e))?;
        let messages_t = txn.open_table(MESSAGES).map_err(|e| io("messages", e))?;
        let numbers = Numbers::build(
            &txn.open_table(NUMBERS)
                .map_err(|e| io("session_numbers", e))?,
        )
        .map_err(|e| io("session_numbers", e))?;
        let awaiting_t = txn
            .open_table(AWAITING)
            .map_err(|e| io("awaiting_rel", e))?;
        let retained_t = txn.open_table(RETAINED).map_err(|e| io("retained", e))?;
        let bodies_t = txn.open_table(BODIES).map_err(|e| io("bodies", e))?;
        let settings_t = txn.open_table(SETTINGS).map_err(|e| io("settings", e))?;
        let mut snap = Snapshot::default();
        for entry in sessions_t.iter().map_err(|e| io("sessions", e))? {
            let (k, v) = entry.map_err(|e| io("sessions", e))?;
            let client_id = k.value().to_string();
            let Some(record) = keep(
                SessionRecord::decode(v.value()),
                || format!("session {client_id:?}"),
                recover,
                &mut snap.skipped,
            )?
            else {
                continue;
            };
            let mut messages = Vec::new();
            // A session that never stored a message has no number.
            let n = numbers.get(&client_id).unwrap_or(u64::MAX);
            let range = messages_t
                .range((n, 0u64)..=(n, u64::MAX))
                .map_err(|e| io("messages", e))?;
            for entry in range {
                let (k, v) = entry.map_err(|e| io("messages", e))?;
                let seq = k.value().1;
                let decoded = MessageRecord::decode_stored(v.value()).and_then(|(mut m, body)| {
                    attach(&mut m, body, &bodies_t)?;
                    Ok(m)
                });
                if let Some(m) = keep(
                    decoded,
                    || format!("message {seq} of {client_id:?}"),
                    recover,
                    &mut snap.skipped,
                )? {
                    messages.push((seq, m));
                }
            }
            let mut awaiting = Vec::new();
            let range = awaiting_t
                .range((client_id.as_str(), 0u16)..=(client_id.as_str(), u16::MAX))
                .map_err(|e| io("awaiting_rel", e))?;
            for entry in range {
                let (k, _) = entry.map_err(|e| io("awaiting_rel", e))?;
                awaiting.push(k.value().1);
            }
            snap.sessions.push(LoadedSession {
                client_id,
                record,
                messages,
                awaiting,
            });
        }
        for entry in retained_t.iter().map_err(|e| io("retained", e))? {
            let (k, v) = entry.map_err(|e| io("retained", e))?;
            let topic = k.value().to_string();
            if let Some(m) = keep(
                MessageRecord::decode(v.value()),
                || format!("retained message of {topic:?}"),
                recover,
                &mut snap.skipped,
            )? {
                snap.retained.push((topic, m));
            }
        }
        for entry in settings_t.iter().map_err(|e| io("settings", e))? {
            let (k, v) = entry.map_err(|e| io("settings", e))?;
            snap.settings
                .push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(snap)
    }

    fn apply(&self, ops: &[Op], durable: bool) -> Result<(), StoreError> {
        let guard = self.lock();
        let db = Self::db(&guard)?;
        let mut index_slot = self.index();
        let pending;
        let mut txn = db.begin_write().map_err(|e| io("begin", e))?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| io("durability", e))?;
        {
            let mut sessions = txn.open_table(SESSIONS).map_err(|e| io("sessions", e))?;
            let mut messages = txn.open_table(MESSAGES).map_err(|e| io("messages", e))?;
            let mut awaiting = txn
                .open_table(AWAITING)
                .map_err(|e| io("awaiting_rel", e))?;
            let mut retained = txn.open_table(RETAINED).map_err(|e| io("retained", e))?;
            let mut bodies = txn.open_table(BODIES).map_err(|e| io("bodies", e))?;
            let mut settings = txn.open_table(SETTINGS).map_err(|e| io("settings", e))?;
            let mut numbers_t = txn
                .open_table(NUMBERS)
                .map_err(|e| io("session_numbers", e))?;
            // Taken out while the transaction runs: if it fails, the counts and numbers it
            // changed are void, and the indexes are built again from the file next time.
            let Indexes {
                bodies: mut index,
                mut numbers,
            } = match index_slot.take() {
                Some(indexes) => indexes,
                None => Indexes {
                    bodies: BodyIndex::build(&messages, &mut bodies)
                        .map_err(|e| io("bodies", e))?,
                    numbers: Numbers::build(&numbers_t).map_err(|e| io("session_numbers", e))?,
                },
            };
            let mut doomed = Doomed::default();
            let mut pace = Pace::new(self.yield_every);
            for op in ops {
                pace.done(1);
                let r = match op {
                    Op::PutSession(id, r) => {
                        sessions.insert(&**id, r.encode().as_slice()).map(drop)
                    }
                    Op::DeleteSession(id) => sessions.remove(&**id).map(drop).and_then(|()| {
                        let mut gone = Vec::new();
                        if let Some(n) = numbers.remove(id, &mut numbers_t)? {
                            // The scan below deletes what was gathered too.
                            doomed.forget(n);
                            messages.retain_in((n, 0u64)..=(n, u64::MAX), |_, v| {
                                gone.extend(body_of(v));
                                false
                            })?;
                        }
                        for body in gone {
                            index.release(body, &mut bodies)?;
                        }
                        awaiting.retain_in((&**id, 0u16)..=(&**id, u16::MAX), |_, _| false)
                    }),
                    Op::PutMessage(id, seq, m) => (|| {
                        let body = match &m.payload {
                            Some(p) => Some(index.put(p, &mut bodies)?),
                            None => None,
                        };
                        let record = m.encode_stored(body);
                        let n = numbers.get_or_assign(id, &mut numbers_t)?;
                        if doomed.contains(n, *seq) {
                            let mut t = Tables {
                                messages: &mut messages,
                                bodies: &mut bodies,
                                index: &mut index,
                            };
                            doomed.flush(n, &mut t)?;
                        }
                        let old = messages.insert((n, *seq), record.as_slice())?;
                        if let Some(old) = old.and_then(|v| body_of(v.value())) {
                            index.release(old, &mut bodies)?;
                        }
                        Ok(())
                    })(),
                    Op::DeleteMessage(id, seq) => {
                        if let Some(n) = numbers.get(id) {
                            doomed.add(n, *seq);
                        }
                        continue;
                    }
                    Op::SetPhase(id, seq, phase, pid) => {
                        let Some(n) = numbers.get(id) else { continue };
                        if doomed.contains(n, *seq) {
                            // Deleted later in this batch: the change would find nothing.
                            continue;
                        }
                        let key = (n, *seq);
                        let current = messages.get(key).map(|v| v.map(|g| g.value().to_vec()));
                        match current {
                            Ok(Some(bytes)) => match MessageRecord::decode_stored(&bytes) {
                                Ok((mut m, body)) => {
                                    m.phase = *phase;
                                    m.packet_id = *pid;
                                    let record = m.encode_stored(body);
                                    messages.insert(key, record.as_slice()).map(drop)
                                }
                                // A damaged record is left for load to report.
                                Err(_) => Ok(()),
                            },
                            Ok(None) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                    Op::PutAwaiting(id, pid) => awaiting.insert((&**id, *pid), ()).map(drop),
                    Op::DeleteAwaiting(id, pid) => awaiting.remove((&**id, *pid)).map(drop),
                    Op::PutRetained(t, m) => {
                        retained.insert(t.as_str(), m.encode().as_slice()).map(drop)
                    }
                    Op::DeleteRetained(t) => retained.remove(t.as_str()).map(drop),
                    Op::PutSetting(k, v) => settings.insert(k.as_str(), v.as_slice()).map(drop),
                    Op::DeleteSetting(k) => settings.remove(k.as_str()).map(drop),
                };
                r.map_err(|e| io("write", e))?;
            }
            let mut t = Tables {
                messages: &mut messages,
                bodies: &mut bodies,
                index: &mut index,
            };
            doomed
                .flush_all(&mut t, &mut pace)
                .map_err(|e| io("write", e))?;
            pending = Indexes {
                bodies: index,
                numbers,
            };
        }
        txn.commit().map_err(|e| io("commit", e))?;
        *index_slot = Some(pending);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
