//! openraft's requests and replies (0.9) as the messages of cluster.proto: votes, log ids,
//! entries, memberships, snapshot chunks, and a peer's fatal errors.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LeaderId, LogId, Membership, SnapshotMeta,
    SnapshotSegmentId, StorageError, StorageIOError, StoredMembership, Vote,
};

use super::{AppendResult, SnapshotResult, VoteResult, WireError, need, pb};
use crate::raft::{Entry, Peer, Types};
use crate::state::NodeId;

fn leader_to(l: &LeaderId<NodeId>) -> pb::LeaderId {
    pb::LeaderId {
        term: l.term,
        node_id: l.node_id,
    }
}

fn leader_from(l: Option<pb::LeaderId>) -> Result<LeaderId<NodeId>, WireError> {
    let l = need(l, "leader id")?;
    Ok(LeaderId::new(l.term, l.node_id))
}

fn vote_to(v: &Vote<NodeId>) -> pb::Vote {
    pb::Vote {
        leader_id: Some(leader_to(&v.leader_id)),
        committed: v.committed,
    }
}

fn vote_from(v: Option<pb::Vote>) -> Result<Vote<NodeId>, WireError> {
    let v = need(v, "vote")?;
    Ok(Vote {
        leader_id: leader_from(v.leader_id)?,
        committed: v.committed,
    })
}

fn log_id_to(l: &LogId<NodeId>) -> pb::LogId {
    pb::LogId {
        leader_id: Some(leader_to(&l.leader_id)),
        index: l.index,
    }
}

fn opt_log_id_to(l: &Option<LogId<NodeId>>) -> Option<pb::LogId> {
    l.as_ref().map(log_id_to)
}

fn log_id_from(l: pb::LogId) -> Result<LogId<NodeId>, WireError> {
    Ok(LogId::new(leader_from(l.leader_id)?, l.index))
}

fn opt_log_id_from(l: Option<pb::LogId>) -> Result<Option<LogId<NodeId>>, WireError> {
    l.map(log_id_from).transpose()
}

pub(super) fn member_to(id: NodeId, peer: &Peer) -> pb::Member {
    pb::Member {
        id,
        addr: peer.addr.clone(),
    }
}

fn membership_to(m: &Membership<NodeId, Peer>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::VoterSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, p)| member_to(*id, p)).collect(),
    }
}

fn membership_from(m: Option<pb::Membership>) -> Result<Membership<NodeId, Peer>, WireError> {
    let m = need(m, "membership")?;
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|set| set.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, Peer> = m
        .nodes
        .into_iter()
        .map(|n| (n.id, Peer { addr: n.addr }))
        .collect();
    Ok(Membership::new(configs, nodes))
}

fn entry_to(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    pb::Entry {
        log_id: Some(log_id_to(&e.log_id)),
        payload: Some(match &e.payload {
            EntryPayload::Blank => Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(c) => Payload::Command(c.into()),
            EntryPayload::Membership(m) => Payload::Membership(membership_to(m)),
        }),
    }
}

fn entry_from(e: pb::Entry) -> Result<Entry, WireError> {
    use pb::entry::Payload;
    Ok(Entry {
        log_id: log_id_from(need(e.log_id, "entry's log id")?)?,
        payload: match need(e.payload, "entry's payload")? {
            Payload::Blank(_) => EntryPayload::Blank,
            Payload::Command(c) => EntryPayload::Normal(c.try_into()?),
            Payload::Membership(m) => EntryPayload::Membership(membership_from(Some(m))?),
        },
    })
}

impl From<&AppendEntriesRequest<Types>> for pb::AppendEntriesRequest {
    fn from(r: &AppendEntriesRequest<Types>) -> Self {
        pb::AppendEntriesRequest {
            vote: Some(vote_to(&r.vote)),
            prev_log_id: opt_log_id_to(&r.prev_log_id),
            entries: r.entries.iter().map(entry_to).collect(),
            leader_commit: opt_log_id_to(&r.leader_commit),
        }
    }
}

impl TryFrom<pb::AppendEntriesRequest> for AppendEntriesRequest<Types> {
    type Error = WireError;
    fn try_from(r: pb::AppendEntriesRequest) -> Result<Self, WireError> {
        Ok(AppendEntriesRequest {
            vote: vote_from(r.vote)?,
            prev_log_id: opt_log_id_from(r.prev_log_id)?,
            entries: r
                .entries
                .into_iter()
                .map(entry_from)
                .collect::<Result<_, _>>()?,
            leader_commit: opt_log_id_from(r.leader_commit)?,
        })
    }
}

/// A fatal error for a peer: its kind, and for a storage error the words of its innermost
/// cause ("disk full"), which read back to the same words.
fn failure_to(f: &Fatal<NodeId>) -> pb::RaftFailure {
    use pb::raft_failure::Kind;
    let (kind, message) = match f {
        Fatal::StorageError(e) => {
            let mut cause: &dyn std::error::Error = e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            (Kind::Storage, cause.to_string())
        }
        Fatal::Panicked => (Kind::Panicked, f.to_string()),
        Fatal::Stopped => (Kind::Stopped, f.to_string()),
    };
    pb::RaftFailure {
        kind: kind as i32,
        message,
    }
}

/// The peer's fatal error as this node's openraft knows it (a storage error keeps the
/// peer's words; an unknown kind reads as stopped).
fn failure_from(f: pb::RaftFailure) -> Fatal<NodeId> {
    use pb::raft_failure::Kind;
    match Kind::try_from(f.kind) {
        Ok(Kind::Storage) => Fatal::StorageError(StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::Store,
                ErrorVerb::Read,
                AnyError::error(f.message),
            ),
        }),
        Ok(Kind::Panicked) => Fatal::Panicked,
        _ => Fatal::Stopped,
    }
}

fn fatal_only<E>(e: &RaftError<NodeId, E>) -> Option<&Fatal<NodeId>> {
    match e {
        RaftError::Fatal(f) => Some(f),
        RaftError::APIError(_) => None,
    }
}

impl From<&AppendResult> for pb::AppendEntriesReply {
    fn from(r: &AppendResult) -> Self {
        use pb::append_entries_reply::{PartialSuccess, Result as R};
        let result = match r {
            Ok(AppendEntriesResponse::Success) => R::Success(pb::Blank {}),
            Ok(AppendEntriesResponse::PartialSuccess(l)) => R::PartialSuccess(PartialSuccess {
                matching: opt_log_id_to(l),
            }),
            Ok(AppendEntriesResponse::Conflict) => R::Conflict(pb::Blank {}),
            Ok(AppendEntriesResponse::HigherVote(v)) => R::HigherVote(vote_to(v)),
            Err(e) => match fatal_only(e) {
                Some(f) => R::Failure(failure_to(f)),
                None => R::Failure(pb::RaftFailure::default()),
            },
        };
        pb::AppendEntriesReply {
            result: Some(result),
        }
    }
}

impl TryFrom<pb::AppendEntriesReply> for AppendResult {
    type Error = WireError;
    fn try_from(r: pb::AppendEntriesReply) -> Result<Self, WireError> {
        use pb::append_entries_reply::Result as R;
        Ok(match need(r.result, "append result")? {
            R::Success(_) => Ok(AppendEntriesResponse::Success),
            R::PartialSuccess(p) => Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from(
                p.matching,
            )?)),
            R::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
            R::HigherVote(v) => Ok(AppendEntriesResponse::HigherVote(vote_from(Some(v))?)),
            R::Failure(f) => Err(RaftError::Fatal(failure_from(f))),
        })
    }
}

impl From<&VoteRequest<NodeId>> for pb::VoteRequest {
    fn from(r: &VoteRequest<NodeId>) -> Self {
        pb::VoteRequest {
            vote: Some(vote_to(&r.vote)),
            last_log_id: opt_log_id_to(&r.last_log_id),
        }
    }
}

impl TryFrom<pb::VoteRequest> for VoteRequest<NodeId> {
    type Error = WireError;
    fn try_from(r: pb::VoteRequest) -> Result<Self, WireError> {
        Ok(VoteRequest::new(
            vote_from(r.vote)?,
            opt_log_id_from(r.last_log_id)?,
        ))
    }
}

impl From<&VoteResult> for pb::VoteReply {
    fn from(r: &VoteResult) -> Self {
        use pb::vote_reply::{Answer, Result as R};
        let result = match r {
            Ok(v) => R::Answer(Answer {
                vote: Some(vote_to(&v.vote)),
                vote_granted: v.vote_granted,
                last_log_id: opt_log_id_to(&v.last_log_id),
            }),
            Err(e) => match fatal_only(e) {
                Some(f) => R::Failure(failure_to(f)),
                None => R::Failure(pb::RaftFailure::default()),
            },
        };
        pb::VoteReply {
            result: Some(result),
        }
    }
}

impl TryFrom<pb::VoteReply> for VoteResult {
    type Error = WireError;
    fn try_from(r: pb::VoteReply) -> Result<Self, WireError> {
        use pb::vote_reply::Result as R;
        Ok(match need(r.result, "vote result")? {
            R::Answer(a) => Ok(VoteResponse {
                vote: vote_from(a.vote)?,
                vote_granted: a.vote_granted,
                last_log_id: opt_log_id_from(a.last_log_id)?,
            }),
            R::Failure(f) => Err(RaftError::Fatal(failure_from(f))),
        })
    }
}

impl From<&InstallSnapshotRequest<Types>> for pb::InstallSnapshotRequest {
    fn from(r: &InstallSnapshotRequest<Types>) -> Self {
        let m = &r.meta;
        pb::InstallSnapshotRequest {
            vote: Some(vote_to(&r.vote)),
            meta: Some(pb::SnapshotMeta {
                last_log_id: opt_log_id_to(&m.last_log_id),
                last_membership: Some(pb::StoredMembership {
                    log_id: opt_log_id_to(m.last_membership.log_id()),
                    membership: Some(membership_to(m.last_membership.membership())),
                }),
                snapshot_id: m.snapshot_id.clone(),
            }),
            offset: r.offset,
            data: r.data.clone(),
            done: r.done,
        }
    }
}

impl TryFrom<pb::InstallSnapshotRequest> for InstallSnapshotRequest<Types> {
    type Error = WireError;
    fn try_from(r: pb::InstallSnapshotRequest) -> Result<Self, WireError> {
        let meta = need(r.meta, "snapshot meta")?;
        let stored = need(meta.last_membership, "snapshot membership")?;
        Ok(InstallSnapshotRequest {
            vote: vote_from(r.vote)?,
            meta: SnapshotMeta {
                last_log_id: opt_log_id_from(meta.last_log_id)?,
                last_membership: StoredMembership::new(
                    opt_log_id_from(stored.log_id)?,
                    membership_from(stored.membership)?,
                ),
                snapshot_id: meta.snapshot_id,
            },
            offset: r.offset,
            data: r.data,
            done: r.done,
        })
    }
}

fn segment_to(s: &SnapshotSegmentId) -> pb::SnapshotSegment {
    pb::SnapshotSegment {
        id: s.id.clone(),
        offset: s.offset,
    }
}

fn segment_from(s: Option<pb::SnapshotSegment>) -> Result<SnapshotSegmentId, WireError> {
    let s = need(s, "snapshot segment")?;
    Ok(SnapshotSegmentId {
        id: s.id,
        offset: s.offset,
    })
}

impl From<&SnapshotResult> for pb::InstallSnapshotReply {
    fn from(r: &SnapshotResult) -> Self {
        use pb::install_snapshot_reply::{Mismatch, Result as R};
        let result = match r {
            Ok(v) => R::Vote(vote_to(&v.vote)),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                R::Mismatch(Mismatch {
                    expect: Some(segment_to(&m.expect)),
                    got: Some(segment_to(&m.got)),
                })
            }
            Err(RaftError::Fatal(f)) => R::Failure(failure_to(f)),
        };
        pb::InstallSnapshotReply {
            result: Some(result),
        }
    }
}

impl TryFrom<pb::InstallSnapshotReply> for SnapshotResult {
    type Error = WireError;
    fn try_from(r: pb::InstallSnapshotReply) -> Result<Self, WireError> {
        use pb::install_snapshot_reply::Result as R;
        Ok(match need(r.result, "snapshot result")? {
            R::Vote(v) => Ok(InstallSnapshotResponse {
                vote: vote_from(Some(v))?,
            }),
            R::Mismatch(m) => Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                SnapshotMismatch {
                    expect: segment_from(m.expect)?,
                    got: segment_from(m.got)?,
                },
            ))),
            R::Failure(f) => Err(RaftError::Fatal(failure_from(f))),
        })
    }
}
