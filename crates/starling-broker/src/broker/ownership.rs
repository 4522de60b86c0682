//! Who in a cluster owns a client id: the [`Ownership`] seam, asked before a CONNECT claims
//! its session in this node's registry. A single node owns every client id at once
//! ([`Alone`]). A cluster answers later: the claim commits through its log while the
//! connection waits for its [`Grant`] without holding a thread; a claim that cannot commit (no
//! majority within the cluster's timeout) is refused, and the CONNECT with it (v5 0x88, 3.x
//! return code 3).
//!
//! A claim committed elsewhere after this node's was granted ends this node's session
//! ([`crate::Broker::taken_over_elsewhere`], called by the cluster for every claim it
//! applies that names another node). Between the grant and the local claim such a claim can
//! be applied before there is a session to end, so the core asks again once the session is
//! attached ([`Ownership::confirm`]) and ends it if the client id has moved on.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::wake::Waker;

/// What became of a request for a client id.
#[derive(Debug)]
pub enum Acquire {
    /// This node owns it now (a single node: always).
    Now,
    /// The claim is under way; the grant's waker fires once it is decided.
    Later(Arc<Grant>),
    /// Refused at once: too many claims are under way (server busy).
    Busy,
}

const PENDING: u8 = 0;
const GRANTED: u8 = 1;
const REFUSED: u8 = 2;

/// A claim under way, decided once by whoever runs it.
#[derive(Debug)]
pub struct Grant {
    state: AtomicU8,
    /// The claim's epoch in the cluster, once granted.
    epoch: AtomicU64,
    /// The waiting connection's waker.
    to: Waker,
}

impl Grant {
    /// A pending claim that wakes `to` when it is decided.
    pub fn new(to: Waker) -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU8::new(PENDING),
            epoch: AtomicU64::new(0),
            to,
        })
    }

    /// The claim committed under `epoch`.
    pub fn grant(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
        self.state.store(GRANTED, Ordering::Release);
        self.to.wake();
    }

    /// The claim could not commit.
    pub fn refuse(&self) {
        self.state.store(REFUSED, Ordering::Release);
        self.to.wake();
    }

    /// Whether it was decided.
    pub fn is_decided(&self) -> bool {
        self.state.load(Ordering::Acquire) != PENDING
    }

    /// The epoch it was granted under; `None` while pending or if refused.
    pub fn epoch(&self) -> Option<u64> {
        match self.state.load(Ordering::Acquire) {
            GRANTED => Some(self.epoch.load(Ordering::Relaxed)),
            _ => None,
        }
    }
}

/// Cluster-wide ownership of client ids.
pub trait Ownership: Send + Sync + fmt::Debug {
    /// Asks that this node own `client_id` for a new connection, whose waker is `waker`.
    /// `resume`: the CONNECT asks to resume the session (Clean Start 0), which a cluster
    /// fetches from the node that owned the client id before it grants it (see
    /// [`crate::Broker::adopt`]).
    fn acquire(&self, client_id: &Arc<str>, resume: bool, waker: Waker) -> Acquire;
    /// The session of `client_id` is now attached on this node under the cluster `epoch` of
    /// its grant: whether this node still owns the client id (false: a later claim elsewhere
    /// has committed since, and the session must end).
    fn confirm(&self, client_id: &str, epoch: u64) -> bool;
    /// The session of `client_id` ended on this node: the client id may be released.
    fn released(&self, client_id: &str);
}

/// A single node: it owns every client id, at once.
#[derive(Debug, Default)]
pub struct Alone;

impl Ownership for Alone {
    fn acquire(&self, _: &Arc<str>, _: bool, _: Waker) -> Acquire {
        Acquire::Now
    }

    fn confirm(&self, _: &str, _: u64) -> bool {
        true
    }

    fn released(&self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::Flag;

    #[test]
    fn a_grant_is_decided_once_and_wakes_its_connection() {
        let flag = Flag::new();
        let g = Grant::new(flag.clone());
        assert!(!g.is_decided());
        assert_eq!(g.epoch(), None);
        assert!(!flag.take());
        g.grant(42);
        assert!(flag.take());
        assert!(g.is_decided());
        assert_eq!(g.epoch(), Some(42));

        let flag = Flag::new();
        let g = Grant::new(flag.clone());
        g.refuse();
        assert!(flag.take());
        assert!(g.is_decided());
        assert_eq!(g.epoch(), None);
    }
}
