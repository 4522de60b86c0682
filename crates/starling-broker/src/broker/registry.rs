//! Who owns a client id: the [`Registry`] seam and its single-node implementation.
//!
//! A claim is compare-and-set: "make this session the session of its client id, if the
//! current one is still what I saw". Every successful claim gets an epoch higher than all
//! earlier ones; the connection that made the claim owns the session under that epoch, and a
//! session never goes back to an older epoch (`Locked::attach`), so of two connections racing
//! for one client id the later claim wins and the other finds itself taken over. A cluster
//! replaces the local map with a replicated one (the epoch then orders claims across nodes).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::session::Session;

/// Client id to session, connected or not.
pub trait Registry: Send + Sync + fmt::Debug {
    /// The session of `client_id`, if there is one.
    fn get(&self, client_id: &str) -> Option<Arc<Session>>;
    /// Makes `session` the session of its client id if the current one is still `current`
    /// (compared by identity; `None`: there was none). Returns the claim's epoch, or `None` if
    /// the entry changed meanwhile (look again and decide again).
    fn claim(&self, session: &Arc<Session>, current: Option<&Arc<Session>>) -> Option<u64>;
    /// Removes `session` if it is still the session of its client id.
    fn release(&self, session: &Arc<Session>) -> bool;
    /// Every session.
    fn sessions(&self) -> Vec<Arc<Session>>;
    /// Number of sessions.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registry of a single node: a map behind one mutex, held only for a lookup or a swap.
/// Bounded by `max_connections` for connected sessions and by session expiry for the rest.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    sessions: Mutex<HashSet<Entry>>,
    /// The last epoch handed out.
    epoch: AtomicU64,
}

/// A session in the registry, found by its client id: the set holds one pointer per session
/// (a map from client id would hold the id's pointer beside it, for every connected client).
#[derive(Debug)]
struct Entry(Arc<Session>);

impl Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.0.client_id()
    }
}

// Hashed and compared as the client id (`Borrow` requires it).
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<str>::borrow(self).hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        Borrow::<str>::borrow(self) == Borrow::<str>::borrow(other)
    }
}

impl Eq for Entry {}

impl LocalRegistry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashSet<Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn same(a: Option<&Arc<Session>>, b: Option<&Arc<Session>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl Registry for LocalRegistry {
    fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.map().get(client_id).map(|e| e.0.clone())
    }

    fn claim(&self, session: &Arc<Session>, current: Option<&Arc<Session>>) -> Option<u64> {
        let mut map = self.map();
        if !same(map.get(&**session.client_id()).map(|e| &e.0), current) {
            return None;
        }
        map.replace(Entry(session.clone()));
        // Taken under the map's lock, so epochs follow the order of the claims.
        Some(self.epoch.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn release(&self, session: &Arc<Session>) -> bool {
        let mut map = self.map();
        let id: &str = session.client_id();
        if !map.get(id).is_some_and(|e| Arc::ptr_eq(&e.0, session)) {
            return false;
        }
        map.remove(id);
        true
    }

    fn sessions(&self) -> Vec<Arc<Session>> {
        self.map().iter().map(|e| e.0.clone()).collect()
    }

    fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::ProtocolVersion;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), ProtocolVersion::V5))
    }

    #[test]
    fn claims_are_compare_and_set_with_rising_epochs() {
        let r = LocalRegistry::default();
        let (a1, a2, a3) = (session("a"), session("a"), session("a"));
        let e1 = r.claim(&a1, None).unwrap();
        assert_eq!(r.claim(&a2, None), None, "someone claimed it since");
        let e2 = r.claim(&a2, Some(&a1)).unwrap();
        assert!(e2 > e1);
        assert_eq!(r.claim(&a3, Some(&a1)), None, "a1 is no longer current");
        let e3 = r.claim(&a2, Some(&a2)).unwrap();
        assert!(e3 > e2, "resuming is a claim too");
        assert!(!r.release(&a1), "not current");
        assert_eq!(r.len(), 1);
        assert!(r.release(&a2));
        assert!(r.is_empty());
        assert!(r.get("a").is_none());
    }
}
