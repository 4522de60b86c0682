//! Which peers this node has lately exchanged a request and its reply with, and from that
//! whether it is on the majority's side of a partition. Every [`crate::net::Link`] of the
//! node records a call that got its reply; every pair of nodes talks at least every two
//! seconds (Raft's heartbeats from the leader, and each node's route keepalive to every
//! peer, `routes::KEEPALIVE`), so a peer not heard from for a lease of several seconds is
//! cut off from this node in at least one direction.
//!
//! This is what lets a node that lost the majority stop serving clients (docs/cluster.md,
//! "Partitions") without waiting for a proposal to time out: it cannot tell a dead majority
//! from a cut cable, and either way the clients are better served elsewhere. Decisions about
//! the state still go through Raft only; this is a local judgement about where clients
//! should be.
//!
//! It also keeps what the peers say they hear (each route keepalive names the members its
//! sender heard from lately): failure suspicion shared, so that the leader judges a member
//! down only when no other member hears it either ([`Contact::vouched_for`]), not when only
//! the link between the leader and that member is cut.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::state::NodeId;

/// When each peer last answered this node.
#[derive(Debug)]
pub struct Contact {
    /// When the node started: it counts as in contact with everyone for a lease after that,
    /// so that a node is not judged cut off before it had the time to talk to anyone.
    started: Instant,
    heard: Mutex<HashMap<NodeId, Instant>>,
    /// What each peer last said it hears, and when it said so (at most [`MAX_REPORTERS`]).
    reports: Mutex<HashMap<NodeId, (Instant, Vec<NodeId>)>>,
}

/// Peers whose reports are kept at most (members are far fewer).
pub const MAX_REPORTERS: usize = 1024;

impl Default for Contact {
    fn default() -> Self {
        Contact {
            started: Instant::now(),
            heard: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
        }
    }
}

impl Contact {
    /// `peer` answered a request now.
    pub fn heard(&self, peer: NodeId) {
        let now = Instant::now();
        self.lock().insert(peer, now);
    }

    /// How long ago `peer` last answered (`None`: never since this node started).
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.lock().get(&peer).map(|t| t.elapsed())
    }

    /// Whether `peer` answered within `within` (counted as yes within `within` of this
    /// node's start: it has not had the time to hear from anyone).
    pub fn answered_within(&self, peer: NodeId, within: Duration) -> bool {
        self.started.elapsed() < within || self.since(peer).is_some_and(|d| d < within)
    }

    /// Whether this node (`me`) and the voters it heard from within `lease` are a majority
    /// of `voters`. A node that is not a voter itself counts only the voters it heard.
    /// Within a lease of the node's start, true.
    pub fn with_majority(&self, me: NodeId, voters: &[NodeId], lease: Duration) -> bool {
        if self.started.elapsed() < lease {
            return true;
        }
        let heard = self.lock();
        let reached = voters
            .iter()
            .filter(|v| **v == me || heard.get(v).is_some_and(|t| t.elapsed() < lease))
            .count();
        reached > voters.len() / 2
    }

    /// The peers that answered within `within`, in order of id.
    pub fn heard_within(&self, within: Duration) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = (self.lock().iter())
            .filter(|(_, t)| t.elapsed() < within)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Peer `from` says it hears `hears` (a member's route keepalive).
    pub fn report(&self, from: NodeId, hears: Vec<NodeId>) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if reports.len() < MAX_REPORTERS || reports.contains_key(&from) {
            reports.insert(from, (Instant::now(), hears));
        }
    }

    /// The peers other than `peer` that said within `fresh` that they hear `peer`, in
    /// order of id.
    pub fn heard_by(&self, peer: NodeId, fresh: Duration) -> Vec<NodeId> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let mut by: Vec<NodeId> = (reports.iter())
            .filter(|(from, (at, hears))| {
                **from != peer && at.elapsed() < fresh && hears.contains(&peer)
            })
            .map(|(from, _)| *from)
            .collect();
        by.sort_unstable();
        by
    }

    /// A peer other than `peer` that said within `fresh` that it hears `peer`, if any: then
    /// `peer` is alive, and only the link between this node and it may be cut.
    pub fn vouched_for(&self, peer: NodeId, fresh: Duration) -> Option<NodeId> {
        self.heard_by(peer, fresh).first().copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_node_is_with_the_majority_while_it_hears_enough_voters() {
        let lease = Duration::from_secs(5);
        let c = Contact::default();
        // Fresh: in contact with everyone for a lease.
        assert!(c.with_majority(1, &[1, 2, 3], lease));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!c.with_majority(1, &[1, 2, 3], lease), "heard nobody");
        assert!(c.with_majority(1, &[1], lease), "a cluster of one");
        c.heard(2);
        assert!(c.with_majority(1, &[1, 2, 3], lease), "2 of 3");
        assert!(!c.with_majority(1, &[1, 2, 3, 4, 5], lease), "2 of 5");
        c.heard(4);
        assert!(c.with_majority(1, &[1, 2, 3, 4, 5], lease), "3 of 5");
        assert!(
            !c.with_majority(9, &[1, 2, 3, 4, 5], lease),
            "a learner counts only the voters it heard"
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        c.heard(3);
        tokio::time::advance(Duration::from_secs(2)).await;
        // 2 and 4 were heard 6 s ago; 3 was heard 2 s ago.
        assert!(c.with_majority(1, &[1, 2, 3], lease));
        assert!(!c.with_majority(1, &[1, 2, 3, 4, 5], lease));
        assert_eq!(c.since(3), Some(Duration::from_secs(2)));
        assert_eq!(c.since(7), None);
        assert!(c.answered_within(3, lease));
        assert!(!c.answered_within(2, lease), "6 s ago");
        assert!(!c.answered_within(7, lease), "never");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_another_hears_is_vouched_for_while_the_report_is_fresh() {
        let fresh = Duration::from_secs(5);
        let c = Contact::default();
        c.heard(2);
        c.heard(3);
        assert_eq!(c.heard_within(Duration::from_secs(1)), [2, 3]);
        assert_eq!(c.vouched_for(3, fresh), None, "nobody reported");
        c.report(2, vec![1, 3]);
        c.report(3, vec![1]);
        assert_eq!(c.vouched_for(3, fresh), Some(2), "node 2 hears 3");
        assert_eq!(c.vouched_for(2, fresh), None, "node 3 does not hear 2");
        c.report(3, vec![3]);
        assert_eq!(
            c.vouched_for(3, fresh),
            Some(2),
            "a node does not vouch for itself"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.vouched_for(3, fresh), None, "the report is stale");
        assert_eq!(c.heard_within(Duration::from_secs(5)), Vec::<NodeId>::new());
    }
}
