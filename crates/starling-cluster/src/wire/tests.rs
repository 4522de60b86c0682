use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{Fatal, SnapshotMismatch};
use openraft::{
    CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, LogId, Membership, SnapshotMeta,
    SnapshotSegmentId, StorageError, StoredMembership, Vote,
};
use proptest::prelude::*;

use super::*;
use crate::net::{Forward, Forwarded, Handover};
use crate::raft::{Entry, Peer};
use crate::routes::Update;
use crate::state::{ClusterState, Limits};
use crate::state::{Outcome, Refusal};

fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(v: &T) {
    let back = T::from_wire(&v.to_wire());
    assert_eq!(back.as_ref().ok(), Some(v), "{back:?}");
}

fn log_id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership<NodeId, Peer> {
    let peer = |a: &str| Peer { addr: a.into() };
    let nodes = BTreeMap::from([(1, peer("a:1")), (2, peer("b:2")), (3, peer("c:3"))]);
    // Joint: {1, 2} to {2, 3}.
    let configs = vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])];
    Membership::new(configs, nodes)
}

#[test]
fn raft_messages_round_trip() {
    let vote = Vote::new_committed(7, 2);
    let entries = vec![
        Entry {
            log_id: log_id(7, 2, 10),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(7, 2, 11),
            payload: EntryPayload::Normal(Command::Claim {
                client_id: "c".into(),
                node: 2,
                incarnation: 5,
            }),
        },
        Entry {
            log_id: log_id(7, 2, 12),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    let append = AppendEntriesRequest::<Types> {
        vote,
        prev_log_id: Some(log_id(6, 1, 9)),
        entries,
        leader_commit: None,
    };
    let back = AppendEntriesRequest::<Types>::from_wire(&append.to_wire());
    assert_eq!(
        back.map(|b| format!("{b:?}")).ok(),
        Some(format!("{append:?}"))
    );

    for reply in [
        Ok(AppendEntriesResponse::Success),
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(
            7, 2, 11,
        )))),
        Ok(AppendEntriesResponse::PartialSuccess(None)),
        Ok(AppendEntriesResponse::Conflict),
        Ok(AppendEntriesResponse::HigherVote(Vote::new(8, 3))),
        Err(RaftError::Fatal(Fatal::Stopped)),
        Err(RaftError::Fatal(Fatal::Panicked)),
    ] {
        round_trip::<AppendResult>(&reply);
    }

    round_trip(&VoteRequest::new(Vote::new(8, 3), Some(log_id(7, 2, 12))));
    round_trip::<VoteResult>(&Ok(VoteResponse::new(
        Vote::new(8, 3),
        Some(log_id(7, 2, 12)),
        true,
    )));

    let chunk = InstallSnapshotRequest::<Types> {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(log_id(7, 2, 12)),
            last_membership: StoredMembership::new(Some(log_id(7, 2, 12)), membership()),
            snapshot_id: "7-2-12".into(),
        },
        offset: 4096,
        data: vec![1, 2, 3],
        done: true,
    };
    round_trip(&chunk);
    let mismatch = SnapshotMismatch {
        expect: SnapshotSegmentId {
            id: "a".into(),
            offset: 0,
        },
        got: SnapshotSegmentId {
            id: "b".into(),
            offset: 10,
        },
    };
    for reply in [
        Ok(InstallSnapshotResponse { vote }),
        Err(RaftError::APIError(mismatch.into())),
        Err(RaftError::Fatal(Fatal::Stopped)),
    ] {
        round_trip::<SnapshotResult>(&reply);
    }
}

#[test]
fn a_peer_storage_failure_keeps_its_words() {
    let failure: AppendResult = Err(RaftError::Fatal(Fatal::StorageError(
        StorageError::from_io_error(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            std::io::Error::other("disk full"),
        ),
    )));
    let back = AppendResult::from_wire(&failure.to_wire());
    let Ok(Err(RaftError::Fatal(Fatal::StorageError(e)))) = back else {
        panic!("{back:?}");
    };
    assert!(e.to_string().contains("disk full"), "{e}");
}

#[test]
fn beside_raft_messages_round_trip() {
    round_trip(&Forward {
        origin: 1,
        incarnation: 2,
        seq: 3,
        messages: vec![Forwarded {
            packet: vec![0x30, 3, 0, 1, b't'],
            groups: vec!["$share/g/t".into()],
            id: 99,
        }],
    });
    round_trip(&Handover {
        client_id: "c".into(),
        epoch: 4,
        resume: true,
        finish: false,
        keep: false,
    });
    round_trip(&Handover {
        client_id: "c".into(),
        epoch: 4,
        resume: true,
        finish: true,
        keep: true,
    });
    for reply in [
        HandoverReply::Session {
            record: vec![1, 2],
            messages: vec![(1, vec![3]), (2, vec![4])],
            awaiting: vec![7, 65535],
            ids: vec![11, 0],
            left_out: 1,
            more: true,
        },
        HandoverReply::Absent,
        HandoverReply::NotYet,
    ] {
        round_trip(&reply);
    }
    for update in [
        Update::Snapshot {
            node: 1,
            incarnation: 2,
            seq: 3,
            filters: vec!["a/#".into(), "$share/g/b".into()],
        },
        Update::Delta {
            node: 1,
            incarnation: 2,
            from: 3,
            to: 5,
            added: vec!["x".into()],
            removed: vec!["y".into()],
        },
    ] {
        round_trip(&Told {
            update,
            hears: vec![1, 3],
        });
    }
    for reply in [
        UpdateReply::Applied,
        UpdateReply::NeedSnapshot,
        UpdateReply::NotMember,
    ] {
        round_trip(&reply);
    }
    for change in [
        Change::Add {
            id: 4,
            addr: "127.0.0.4:7000".into(),
            voter: true,
        },
        Change::Remove { id: 4 },
    ] {
        round_trip(&change);
    }
    let leader = Some((1, Peer { addr: "a:1".into() }));
    for reply in [
        ChangeReply::Done,
        ChangeReply::NotLeader(leader.clone()),
        ChangeReply::NotLeader(None),
        ChangeReply::Failed("why".into()),
    ] {
        round_trip(&reply);
    }
    for reply in [
        ProposeReply::NotLeader(leader),
        ProposeReply::Failed("no quorum".into()),
        ProposeReply::Committed(Outcome::Refused(Refusal::RetainedFull)),
    ] {
        round_trip(&reply);
    }
    round_trip(&42u64);
}

proptest! {
    /// Every command and every outcome of applying a log of them crosses unchanged.
    #[test]
    fn commands_and_outcomes_round_trip(cmds in prop::collection::vec(crate::state::tests::command(), 0..30)) {
        let mut state = ClusterState::new(Limits { max_retained: 3, max_retained_payload: 6 });
        for (i, cmd) in cmds.into_iter().enumerate() {
            prop_assert_eq!(Command::from_wire(&cmd.to_wire()).ok(), Some(cmd.clone()));
            let out = state.apply(i as u64 + 1, cmd);
            let reply = ProposeReply::Committed(out);
            prop_assert_eq!(ProposeReply::from_wire(&reply.to_wire()).ok(), Some(reply));
        }
    }

    /// Whatever a peer sends, reading it answers (a value or a refusal) and never panics.
    #[test]
    fn any_bytes_are_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = AppendEntriesRequest::<Types>::from_wire(&bytes);
        let _ = AppendResult::from_wire(&bytes);
        let _ = VoteRequest::<NodeId>::from_wire(&bytes);
        let _ = VoteResult::from_wire(&bytes);
        let _ = InstallSnapshotRequest::<Types>::from_wire(&bytes);
        let _ = SnapshotResult::from_wire(&bytes);
        let _ = Command::from_wire(&bytes);
        let _ = ProposeReply::from_wire(&bytes);
        let _ = Change::from_wire(&bytes);
        let _ = ChangeReply::from_wire(&bytes);
        let _ = Told::from_wire(&bytes);
        let _ = UpdateReply::from_wire(&bytes);
        let _ = Forward::from_wire(&bytes);
        let _ = Handover::from_wire(&bytes);
        let _ = HandoverReply::from_wire(&bytes);
        let _ = u64::from_wire(&bytes);
    }
}

/// A field a newer node added (here number 15, a varint) is skipped by this one: a rolling
/// upgrade adds fields without breaking the nodes not yet upgraded.
#[test]
fn fields_from_a_newer_node_are_skipped() {
    let update = Told {
        update: Update::Delta {
            node: 1,
            incarnation: 2,
            from: 3,
            to: 4,
            added: vec!["a".into()],
            removed: vec![],
        },
        hears: vec![2],
    };
    let newer = |mut bytes: Vec<u8>| {
        bytes.extend_from_slice(&[15 << 3, 42]);
        bytes
    };
    assert_eq!(Told::from_wire(&newer(update.to_wire())).ok(), Some(update));
    let batch = Forward {
        origin: 1,
        incarnation: 1,
        seq: 1,
        messages: vec![],
    };
    assert_eq!(
        Forward::from_wire(&newer(batch.to_wire())).ok(),
        Some(batch)
    );
}

/// What an older node sends without a field this one added reads as the field's default:
/// here a forwarded message without its cluster id (id 0: none).
#[test]
fn fields_an_older_node_does_not_send_read_as_their_default() {
    let older = pb::Forward {
        origin: 3,
        incarnation: 1,
        seq: 9,
        messages: vec![pb::Forwarded {
            packet: vec![1],
            groups: vec![],
            id: 0,
        }],
    }
    .encode_to_vec();
    let read = Forward::from_wire(&older).ok();
    assert_eq!(
        read.map(|f| f.messages.iter().map(|m| m.id).sum::<u64>()),
        Some(0)
    );
    // A finishing handover request from a node that does not know `keep` (fields 1-4, as
    // its build wrote them): the session is not kept, as that node expects.
    let older = [
        &[0x0a, 1, b'c'][..], // client_id
        &[0x10, 4],           // epoch
        &[0x18, 1],           // resume
        &[0x20, 1],           // finish
    ]
    .concat();
    let read = Handover::from_wire(&older).ok();
    assert_eq!(read.map(|h| (h.finish, h.keep)), Some((true, false)));
}

/// A case of a oneof this node does not know (a newer node's new command), a required part
/// missing, or a number out of its range is refused, never misread.
#[test]
fn what_cannot_be_taken_is_refused() {
    // Field 15 of Command: a kind this node does not know.
    let unknown_kind = [15 << 3 | 2, 0];
    assert!(matches!(
        Command::from_wire(&unknown_kind),
        Err(WireError::Missing("command"))
    ));
    // A vote request without its vote.
    assert!(matches!(
        VoteRequest::<NodeId>::from_wire(&pb::VoteRequest::default().encode_to_vec()),
        Err(WireError::Missing("vote"))
    ));
    // A retained message at QoS 3.
    let qos3 = pb::Command {
        kind: Some(pb::command::Kind::Retain(pb::command::Retain {
            topic: "t".into(),
            message: Some(pb::Retained {
                qos: 3,
                payload: vec![1],
                header: vec![],
                expires_at_ms: None,
            }),
        })),
    };
    assert!(matches!(
        Command::from_wire(&qos3.encode_to_vec()),
        Err(WireError::Range { value: 3, .. })
    ));
    // A packet id above 65535.
    let big_id = pb::HandoverReply {
        result: Some(pb::handover_reply::Result::Session(
            pb::handover_reply::Session {
                awaiting: vec![70_000],
                ..Default::default()
            },
        )),
    };
    assert!(matches!(
        HandoverReply::from_wire(&big_id.encode_to_vec()),
        Err(WireError::Range { value: 70_000, .. })
    ));
    // An unknown routes result.
    let unknown = pb::RoutesReply { result: 9 };
    assert!(UpdateReply::from_wire(&unknown.encode_to_vec()).is_err());
}

/// The fuzz target's seed corpus, written with Google's protobuf library (Python) from
/// cluster.proto: every seed is read, and reads back the same after writing. Bytes another
/// implementation wrote from the published file are what this node takes.
#[test]
fn the_seed_corpus_written_by_another_protobuf_library_is_read() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/cluster_wire");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        let data = std::fs::read(&path).unwrap_or_default();
        assert_eq!(reads_stably(&data), Ok(true), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 16, "{seen} seeds in {}", dir.display());
}
