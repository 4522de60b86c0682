//! Changing who is in the cluster while it runs: a node added as a learner (it receives the
//! log and serves clients, but does not vote), then made a voter once it has caught up with
//! the log, or removed. Each change is openraft's membership change (joint consensus), made
//! by the leader; any node hands a change to the leader (([`crate::net::rpc::Kind::Members`])).
//! The members are in the log, so every node (and a node that restarts) agrees on them; the
//! seeds of `[cluster]` only name the members a new cluster starts with.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};

use crate::raft::{Peer, Raft};
use crate::state::NodeId;

/// How long the leader waits for a new learner to catch up with the log before it answers,
/// within the admin API's default request timeout of 10 s (a learner that has not caught up
/// stays added; making it a voter is asked again).
pub const CATCH_UP: Duration = Duration::from_secs(8);

/// A change of the members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds node `id`, reached at `addr`, as a learner; with `voter`, makes it a voter once it
    /// has caught up with the log (at most [`CATCH_UP`]). A member already there keeps its
    /// address.
    Add {
        /// The node's id.
        id: NodeId,
        /// Its inter-node address.
        addr: String,
        /// Make it a voter.
        voter: bool,
    },
    /// Removes node `id` (a voter stops voting and leaves; a learner leaves).
    Remove {
        /// The node's id.
        id: NodeId,
    },
}

/// What the leader answers to a [`Change`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeReply {
    /// Committed.
    Done,
    /// The asked node does not lead; the leader it knows of, if any.
    NotLeader(Option<(NodeId, Peer)>),
    /// Refused or not committed, and why.
    Failed(String),
}

fn failed<E: std::fmt::Display>(
    e: RaftError<NodeId, ClientWriteError<NodeId, Peer>>,
    what: E,
) -> ChangeReply {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ChangeReply::NotLeader(f.leader_id.zip(f.leader_node))
        }
        e => ChangeReply::Failed(format!("{what}: {e}")),
    }
}

/// Makes `change` on this node's Raft instance, which must lead.
pub async fn change_local(raft: &Raft, change: Change) -> ChangeReply {
    let membership = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone();
    match change {
        Change::Add { id, addr, voter } => {
            if addr.is_empty() || addr.len() > 255 {
                return ChangeReply::Failed("the address must be 1 to 255 bytes".into());
            }
            let known = membership.get_node(&id).is_some();
            let is_voter = membership.voter_ids().any(|v| v == id);
            if !known {
                let added =
                    tokio::time::timeout(CATCH_UP, raft.add_learner(id, Peer { addr }, true));
                match added.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return failed(e, "adding the learner"),
                    Err(_) => {
                        return ChangeReply::Failed(format!(
                            "added as a learner; it did not catch up within {CATCH_UP:?}"
                        ));
                    }
                }
            }
            if voter && !is_voter {
                let ids: BTreeSet<NodeId> = [id].into();
                if let Err(e) = raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                {
                    return failed(e, "making it a voter");
                }
            }
            ChangeReply::Done
        }
        Change::Remove { id } => {
            let ids: BTreeSet<NodeId> = [id].into();
            if membership.voter_ids().any(|v| v == id) {
                if membership.voter_ids().count() == 1 {
                    return ChangeReply::Failed("the last voter cannot leave".into());
                }
                if let Err(e) = raft
                    .change_membership(ChangeMembers::RemoveVoters(ids), false)
                    .await
                {
                    return failed(e, "removing the voter");
                }
            } else if membership.get_node(&id).is_some() {
                if let Err(e) = raft
                    .change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await
                {
                    return failed(e, "removing the learner");
                }
            } else {
                return ChangeReply::Failed(format!("node {id} is not a member"));
            }
            ChangeReply::Done
        }
    }
}
