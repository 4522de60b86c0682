//! The broker's `Ownership` seam in a cluster: a CONNECT's client id is claimed through the
//! cluster's log in a task while the connection waits for its grant (and, if another node
//! owned it, for the session from there: `handover.rs`); a session that ends here has its
//! client id released, off the CONNECT path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use starling_broker::broker::{Acquire, Grant, Ownership};
use starling_broker::wake::Waker;
use starling_cluster::{Command, Outcome};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use super::handover::{self, Taker};
use super::{Majority, Node, lock};

/// The epochs of the claims this node was granted, by client id, for their release.
pub(super) type Granted = Arc<Mutex<HashMap<String, u64>>>;

/// Most epochs kept for release (one per client id this node owns); beyond it a new grant's
/// epoch is not kept, and the client id stays this node's when its session ends, until a
/// claim elsewhere takes it.
pub(super) const MAX_GRANTED: usize = 10_000_000;

/// The broker's `Ownership` seam in a cluster: a CONNECT's client id is claimed through the
/// cluster's log (in a task; the connection waits for its grant).
#[derive(Debug)]
pub(super) struct ClusterOwnership {
    /// Cut off from the majority, claims are refused at once (they could not commit).
    pub(super) majority: Majority,
    pub(super) node: Arc<Node>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) claims: Arc<Semaphore>,
    pub(super) granted: Granted,
    pub(super) releases: mpsc::Sender<(String, u64)>,
    /// Takes sessions over from the nodes that owned their client ids before.
    pub(super) taker: Arc<Taker>,
}

impl Ownership for ClusterOwnership {
    fn acquire(&self, client_id: &Arc<str>, resume: bool, waker: Waker) -> Acquire {
        if self.majority.cut_off() {
            debug!(%client_id, "cut off from the majority; CONNECT refused");
            let grant = Grant::new(waker);
            grant.refuse();
            return Acquire::Later(grant);
        }
        let Ok(permit) = self.claims.clone().try_acquire_owned() else {
            return Acquire::Busy;
        };
        let grant = Grant::new(waker);
        let (node, granted, g) = (self.node.clone(), self.granted.clone(), grant.clone());
        let releases = self.releases.clone();
        let taker = self.taker.clone();
        let id = client_id.to_string();
        self.runtime.spawn(async move {
            let cmd = Command::Claim {
                client_id: id.clone(),
                node: node.id(),
                incarnation: node.incarnation(),
            };
            match node.propose(cmd).await {
                Ok(Outcome::Claimed { owner, previous }) => {
                    debug!(client_id = %id, epoch = owner.epoch, ?previous, "client id claimed");
                    // Owned by another node before: the session comes from there first.
                    if let Some(p) = previous.filter(|p| p.node != node.id()) {
                        handover::take(&taker, p.node, &id, owner.epoch, resume).await;
                    }
                    let mut epochs = lock(&granted);
                    if epochs.len() < MAX_GRANTED || epochs.contains_key(&id) {
                        epochs.insert(id.clone(), owner.epoch);
                    }
                    drop(epochs);
                    g.grant(owner.epoch);
                    if Arc::strong_count(&g) == 1 {
                        // The connection that asked is gone (it closed while the claim was
                        // under way): nothing will attach, so the client id goes again.
                        lock(&granted).remove(&id);
                        if releases.try_send((id, owner.epoch)).is_err() {
                            debug!("release queue full; the client id stays this node's");
                        }
                    }
                }
                Ok(other) => {
                    warn!(client_id = %id, ?other, "claim refused by the cluster");
                    g.refuse();
                }
                Err(e) => {
                    warn!(client_id = %id, error = %e, "claim not committed");
                    g.refuse();
                }
            }
            drop(permit);
        });
        Acquire::Later(grant)
    }

    fn confirm(&self, client_id: &str, epoch: u64) -> bool {
        // Not yet applied here (the grant came from the leader): nothing newer is known.
        let owner = self.node.state().read().owner(client_id);
        !owner.is_some_and(|o| o.epoch > epoch && o.node != self.node.id())
    }

    fn released(&self, client_id: &str) {
        let epoch = lock(&self.granted).remove(client_id);
        if let Some(epoch) = epoch
            && self
                .releases
                .try_send((client_id.to_owned(), epoch))
                .is_err()
        {
            debug!(
                client_id,
                "release queue full; the client id stays this node's until claimed elsewhere"
            );
        }
    }
}
