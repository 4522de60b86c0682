//! A redb storage backend over a file that fails on command, for tests of what happens when
//! the disk does: a full disk (writes or growth past a capacity fail with "no space"), one
//! I/O error at a chosen write or fsync, and a read-only filesystem. The faults live in a
//! shared [`Faults`], so a store reopened on a new backend keeps them until they are cleared.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

#[derive(Debug)]
struct State {
    /// Writes ending beyond this offset, and growth beyond it, fail as on a full disk.
    capacity: u64,
    /// Writes left before one fails with an I/O error (`None`: none armed).
    write_fails_in: Option<u64>,
    /// Syncs left before one fails with an I/O error (`None`: none armed).
    sync_fails_in: Option<u64>,
    /// Every write, growth and sync fails as on a filesystem remounted read-only.
    read_only: bool,
    /// Faults raised so far.
    raised: u64,
}

/// The faults a [`FaultyBackend`] raises, shared with the test that arms them.
#[derive(Debug)]
pub struct Faults(Mutex<State>);

impl Faults {
    /// No fault armed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(State {
            capacity: u64::MAX,
            write_fails_in: None,
            sync_fails_in: None,
            read_only: false,
            raised: 0,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The disk holds `bytes` of the file: writing or growing past them fails.
    pub fn set_capacity(&self, bytes: u64) {
        self.state().capacity = bytes;
    }

    /// The `n`-th write from now (0: the next) fails with an I/O error, once.
    pub fn fail_write(&self, n: u64) {
        self.state().write_fails_in = Some(n);
    }

    /// The `n`-th fsync from now (0: the next) fails with an I/O error, once.
    pub fn fail_sync(&self, n: u64) {
        self.state().sync_fails_in = Some(n);
    }

    /// The filesystem is (or is no longer) read-only.
    pub fn set_read_only(&self, on: bool) {
        self.state().read_only = on;
    }

    /// Clears every fault: unlimited space, nothing armed, writable.
    pub fn clear(&self) {
        let mut s = self.state();
        s.capacity = u64::MAX;
        s.write_fails_in = None;
        s.sync_fails_in = None;
        s.read_only = false;
    }

    /// Faults raised so far.
    pub fn raised(&self) -> u64 {
        self.state().raised
    }

    /// Counts down an armed one-shot fault; true when it fires now.
    fn fires(slot: &mut Option<u64>) -> bool {
        match slot {
            Some(0) => {
                *slot = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    /// The error a write ending at `end` gets, if any.
    fn on_write(&self, end: u64) -> Option<io::Error> {
        let mut s = self.state();
        let e = if s.read_only {
            Some(io::Error::from(ErrorKind::ReadOnlyFilesystem))
        } else if Self::fires(&mut s.write_fails_in) {
            Some(io::Error::other("injected I/O error on write"))
        } else if end > s.capacity {
            Some(io::Error::from(ErrorKind::StorageFull))
        } else {
            None
        };
        s.raised += u64::from(e.is_some());
        e
    }

    fn on_sync(&self) -> Option<io::Error> {
        let mut s = self.state();
        let e = if s.read_only {
            Some(io::Error::from(ErrorKind::ReadOnlyFilesystem))
        } else if Self::fires(&mut s.sync_fails_in) {
            Some(io::Error::other("injected I/O error on fsync"))
        } else {
            None
        };
        s.raised += u64::from(e.is_some());
        e
    }
}

/// A file backend that raises the faults armed in its [`Faults`].
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    /// Opens (or creates) `path` as the store's file.
    pub fn open(path: &Path, faults: Arc<Faults>) -> io::Result<Self> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self { inner, faults })
    }

    /// A store in `dir` on this backend, reopened on a fresh one each time.
    pub fn store(dir: &Path, faults: Arc<Faults>) -> Result<crate::RedbStore, crate::StoreError> {
        let path: PathBuf = dir.join("starling.redb");
        let file = path.clone();
        crate::RedbStore::open_with_backend(path, move || Self::open(&file, faults.clone()))
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let current = self.inner.len()?;
        if len > current
            && let Some(e) = self.faults.on_write(len)
        {
            return Err(e);
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if let Some(e) = self.faults.on_sync() {
            return Err(e);
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let end = offset.saturating_add(data.len() as u64);
        if let Some(e) = self.faults.on_write(end) {
            return Err(e);
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
