//! An in-memory [`Store`]: the reference the redb store is tested against, and the store that
//! tests use to inject commit failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use crate::{LoadedSession, MessageRecord, Op, SessionRecord, Snapshot, Store, StoreError};

#[derive(Debug, Default)]
struct State {
    sessions: BTreeMap<String, SessionRecord>,
    messages: BTreeMap<(String, u64), MessageRecord>,
    awaiting: BTreeMap<(String, u16), ()>,
    retained: BTreeMap<String, MessageRecord>,
    settings: BTreeMap<String, Vec<u8>>,
}

/// An in-memory store. Applying is atomic: a failed apply changes nothing.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Applies left before every apply fails (`usize::MAX`: never).
    fail_after: AtomicUsize,
    /// Failures are a full disk rather than an I/O error.
    full: std::sync::atomic::AtomicBool,
    /// What `free_bytes` reports (`u64::MAX`: nothing, the store is not on a disk).
    free: std::sync::atomic::AtomicU64,
    /// Number of successful applies.
    applied: AtomicUsize,
    /// While true, applies wait (a disk that has stopped answering).
    stalled: Mutex<bool>,
    resumed: Condvar,
}

impl MemoryStore {
    /// An empty store that never fails.
    pub fn new() -> Self {
        Self {
            fail_after: AtomicUsize::new(usize::MAX),
            free: std::sync::atomic::AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    /// Makes every apply after the next `n` fail with an I/O error.
    pub fn fail_after(&self, n: usize) {
        self.full.store(false, Ordering::SeqCst);
        self.fail_after.store(n, Ordering::SeqCst);
    }

    /// Makes every apply after the next `n` fail as on a full disk.
    pub fn fill_after(&self, n: usize) {
        self.full.store(true, Ordering::SeqCst);
        self.fail_after.store(n, Ordering::SeqCst);
    }

    /// Makes `free_bytes` report `bytes` (`None`: nothing).
    pub fn set_free_bytes(&self, bytes: Option<u64>) {
        self.free.store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Applies succeed again (space was freed, the disk came back).
    pub fn heal(&self) {
        self.fail_after.store(usize::MAX, Ordering::SeqCst);
    }

    /// Number of successful applies so far.
    pub fn applied(&self) -> usize {
        self.applied.load(Ordering::SeqCst)
    }

    /// Makes applies wait until [`MemoryStore::resume`], as a stuck disk would.
    pub fn stall(&self) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Lets waiting and later applies go on.
    pub fn resume(&self) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.resumed.notify_all();
    }

    /// Number of retained messages stored on topics starting with `prefix`.
    pub fn retained_count(&self, prefix: &str) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retained
            .keys()
            .filter(|t| t.starts_with(prefix))
            .count()
    }
}

/// Applies `op` to in-memory maps; shared with nothing else, so the reference semantics of
/// every [`Op`] are written down exactly once.
fn apply_one(st: &mut State, op: &Op) {
    match op {
        Op::PutSession(id, r) => {
            st.sessions.insert(id.to_string(), r.clone());
        }
        Op::DeleteSession(id) => {
            st.sessions.remove(&**id);
            st.messages.retain(|(c, _), _| **c != **id);
            st.awaiting.retain(|(c, _), _| **c != **id);
        }
        Op::PutMessage(id, seq, m) => {
            st.messages.insert((id.to_string(), *seq), m.clone());
        }
        Op::DeleteMessage(id, seq) => {
            st.messages.remove(&(id.to_string(), *seq));
        }
        Op::SetPhase(id, seq, phase, pid) => {
            if let Some(m) = st.messages.get_mut(&(id.to_string(), *seq)) {
                m.phase = *phase;
                m.packet_id = *pid;
            }
        }
        Op::PutAwaiting(id, pid) => {
            st.awaiting.insert((id.to_string(), *pid), ());
        }
        Op::DeleteAwaiting(id, pid) => {
            st.awaiting.remove(&(id.to_string(), *pid));
        }
        Op::PutRetained(t, m) => {
            st.retained.insert(t.clone(), m.clone());
        }
        Op::DeleteRetained(t) => {
            st.retained.remove(t);
        }
        Op::PutSetting(k, v) => {
            st.settings.insert(k.clone(), v.clone());
        }
        Op::DeleteSetting(k) => {
            st.settings.remove(k);
        }
    }
}

impl Store for MemoryStore {
    fn load(&self, _recover: bool) -> Result<Snapshot, StoreError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = st
            .sessions
            .iter()
            .map(|(id, record)| LoadedSession {
                client_id: id.clone(),
                record: record.clone(),
                messages: st
                    .messages
                    .range((id.clone(), 0)..=(id.clone(), u64::MAX))
                    .map(|((_, seq), m)| (*seq, m.clone()))
                    .collect(),
                awaiting: st
                    .awaiting
                    .range((id.clone(), 0)..=(id.clone(), u16::MAX))
                    .map(|((_, pid), ())| *pid)
                    .collect(),
            })
            .collect();
        let retained = st
            .retained
            .iter()
            .map(|(t, m)| (t.clone(), m.clone()))
            .collect();
        let settings = st
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Snapshot {
            sessions,
            retained,
            settings,
            skipped: Vec::new(),
        })
    }

    fn free_bytes(&self) -> Option<u64> {
        let free = self.free.load(Ordering::SeqCst);
        (free != u64::MAX).then_some(free)
    }

    fn apply(&self, ops: &[Op], _durable: bool) -> Result<(), StoreError> {
        {
            let mut stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
            while *stalled {
                stalled = self
                    .resumed
                    .wait(stalled)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        let left = self.fail_after.load(Ordering::SeqCst);
        if left == 0 {
            if self.full.load(Ordering::SeqCst) {
                return Err(StoreError::InjectedFull);
            }
            return Err(StoreError::Injected("commit failed"));
        }
        if left != usize::MAX {
            self.fail_after.store(left - 1, Ordering::SeqCst);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            apply_one(&mut st, op);
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
