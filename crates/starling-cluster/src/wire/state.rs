//! The replicated state's commands and outcomes, and the replies of proposals and member
//! changes, as the messages of cluster.proto.

use super::raft::member_to;
use super::{WireError, need, pb};
use crate::members::{Change, ChangeReply};
use crate::net::ProposeReply;
use crate::raft::Peer;
use crate::state::{Command, NodeId, Outcome, Owner, Refusal, Retained};

fn retained_to(r: &Retained) -> pb::Retained {
    pb::Retained {
        qos: u32::from(r.qos),
        payload: r.payload.clone(),
        header: r.header.clone(),
        expires_at_ms: r.expires_at_ms,
    }
}

fn retained_from(r: Option<pb::Retained>) -> Result<Retained, WireError> {
    let r = need(r, "retained message")?;
    let qos = u8::try_from(r.qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or(WireError::Range {
            what: "retained QoS",
            value: u64::from(r.qos),
        })?;
    Ok(Retained {
        qos,
        payload: r.payload,
        header: r.header,
        expires_at_ms: r.expires_at_ms,
    })
}

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        use pb::command::{self as k, Kind};
        let kind = match c {
            Command::Incarnate { node, incarnation } => Kind::Incarnate(k::Incarnate {
                node: *node,
                incarnation: *incarnation,
            }),
            Command::Claim {
                client_id,
                node,
                incarnation,
            } => Kind::Claim(k::Claim {
                client_id: client_id.clone(),
                node: *node,
                incarnation: *incarnation,
            }),
            Command::Release { client_id, epoch } => Kind::Release(k::Release {
                client_id: client_id.clone(),
                epoch: *epoch,
            }),
            Command::Retain { topic, message } => Kind::Retain(k::Retain {
                topic: topic.clone(),
                message: Some(retained_to(message)),
            }),
            Command::ClearRetained { topic } => Kind::ClearRetained(k::ClearRetained {
                topic: topic.clone(),
            }),
            Command::RetainBatch { changes } => Kind::RetainBatch(k::RetainBatch {
                changes: changes
                    .iter()
                    .map(|(topic, m)| k::RetainChange {
                        topic: topic.clone(),
                        message: m.as_ref().map(retained_to),
                    })
                    .collect(),
            }),
            Command::ExpireRetained { now_ms } => {
                Kind::ExpireRetained(k::ExpireRetained { now_ms: *now_ms })
            }
            Command::NodeDown { node, incarnation } => Kind::NodeDown(k::NodeMark {
                node: *node,
                incarnation: *incarnation,
            }),
            Command::NodeUp { node, incarnation } => Kind::NodeUp(k::NodeMark {
                node: *node,
                incarnation: *incarnation,
            }),
        };
        pb::Command { kind: Some(kind) }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = WireError;
    fn try_from(c: pb::Command) -> Result<Self, WireError> {
        use pb::command::Kind;
        Ok(match need(c.kind, "command")? {
            Kind::Incarnate(i) => Command::Incarnate {
                node: i.node,
                incarnation: i.incarnation,
            },
            Kind::Claim(c) => Command::Claim {
                client_id: c.client_id,
                node: c.node,
                incarnation: c.incarnation,
            },
            Kind::Release(r) => Command::Release {
                client_id: r.client_id,
                epoch: r.epoch,
            },
            Kind::Retain(r) => Command::Retain {
                topic: r.topic,
                message: retained_from(r.message)?,
            },
            Kind::ClearRetained(c) => Command::ClearRetained { topic: c.topic },
            Kind::RetainBatch(b) => Command::RetainBatch {
                changes: b
                    .changes
                    .into_iter()
                    .map(|c| {
                        let m = c.message.map(|m| retained_from(Some(m))).transpose()?;
                        Ok((c.topic, m))
                    })
                    .collect::<Result<_, WireError>>()?,
            },
            Kind::ExpireRetained(e) => Command::ExpireRetained { now_ms: e.now_ms },
            Kind::NodeDown(m) => Command::NodeDown {
                node: m.node,
                incarnation: m.incarnation,
            },
            Kind::NodeUp(m) => Command::NodeUp {
                node: m.node,
                incarnation: m.incarnation,
            },
        })
    }
}

fn owner_to(o: &Owner) -> pb::Owner {
    pb::Owner {
        node: o.node,
        incarnation: o.incarnation,
        epoch: o.epoch,
    }
}

fn owner_from(o: pb::Owner) -> Owner {
    Owner {
        node: o.node,
        incarnation: o.incarnation,
        epoch: o.epoch,
    }
}

fn refusal_to(r: Refusal) -> pb::Refusal {
    match r {
        Refusal::StaleIncarnation => pb::Refusal::StaleIncarnation,
        Refusal::StaleClaim => pb::Refusal::StaleClaim,
        Refusal::StaleRelease => pb::Refusal::StaleRelease,
        Refusal::RetainedTooLarge => pb::Refusal::RetainedTooLarge,
        Refusal::RetainedFull => pb::Refusal::RetainedFull,
    }
}

fn refusal_from(r: i32) -> Result<Refusal, WireError> {
    Ok(match pb::Refusal::try_from(r) {
        Ok(pb::Refusal::StaleIncarnation) => Refusal::StaleIncarnation,
        Ok(pb::Refusal::StaleClaim) => Refusal::StaleClaim,
        Ok(pb::Refusal::StaleRelease) => Refusal::StaleRelease,
        Ok(pb::Refusal::RetainedTooLarge) => Refusal::RetainedTooLarge,
        Ok(pb::Refusal::RetainedFull) => Refusal::RetainedFull,
        Ok(pb::Refusal::Unspecified) | Err(_) => return Err(WireError::Missing("refusal")),
    })
}

impl From<&Outcome> for pb::Outcome {
    fn from(o: &Outcome) -> Self {
        use pb::outcome::{Batch, Claimed, Kind};
        let kind = match o {
            Outcome::Done => Kind::Done(pb::Blank {}),
            Outcome::Claimed { owner, previous } => Kind::Claimed(Claimed {
                owner: Some(owner_to(owner)),
                previous: previous.as_ref().map(owner_to),
            }),
            Outcome::Released => Kind::Released(pb::Blank {}),
            Outcome::Expired { count } => Kind::Expired(*count),
            Outcome::Batch(all) => Kind::Batch(Batch {
                outcomes: all.iter().map(pb::Outcome::from).collect(),
            }),
            Outcome::Refused(r) => Kind::Refused(refusal_to(*r) as i32),
        };
        pb::Outcome { kind: Some(kind) }
    }
}

impl TryFrom<pb::Outcome> for Outcome {
    type Error = WireError;
    fn try_from(o: pb::Outcome) -> Result<Self, WireError> {
        use pb::outcome::Kind;
        Ok(match need(o.kind, "outcome")? {
            Kind::Done(_) => Outcome::Done,
            Kind::Claimed(c) => Outcome::Claimed {
                owner: owner_from(need(c.owner, "owner")?),
                previous: c.previous.map(owner_from),
            },
            Kind::Released(_) => Outcome::Released,
            Kind::Expired(count) => Outcome::Expired { count },
            Kind::Batch(b) => Outcome::Batch(
                b.outcomes
                    .into_iter()
                    .map(Outcome::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Refused(r) => Outcome::Refused(refusal_from(r)?),
        })
    }
}

fn not_leader_to(leader: &Option<(NodeId, Peer)>) -> pb::NotLeader {
    pb::NotLeader {
        leader: leader.as_ref().map(|(id, p)| member_to(*id, p)),
    }
}

fn not_leader_from(n: pb::NotLeader) -> Option<(NodeId, Peer)> {
    n.leader.map(|m| (m.id, Peer { addr: m.addr }))
}

impl From<&ProposeReply> for pb::ProposeReply {
    fn from(r: &ProposeReply) -> Self {
        use pb::propose_reply::Result as R;
        let result = match r {
            ProposeReply::Committed(o) => R::Committed(o.into()),
            ProposeReply::NotLeader(l) => R::NotLeader(not_leader_to(l)),
            ProposeReply::Failed(why) => R::Failed(why.clone()),
        };
        pb::ProposeReply {
            result: Some(result),
        }
    }
}

impl TryFrom<pb::ProposeReply> for ProposeReply {
    type Error = WireError;
    fn try_from(r: pb::ProposeReply) -> Result<Self, WireError> {
        use pb::propose_reply::Result as R;
        Ok(match need(r.result, "propose result")? {
            R::Committed(o) => ProposeReply::Committed(o.try_into()?),
            R::NotLeader(n) => ProposeReply::NotLeader(not_leader_from(n)),
            R::Failed(why) => ProposeReply::Failed(why),
        })
    }
}

impl From<&Change> for pb::MembersChange {
    fn from(c: &Change) -> Self {
        use pb::members_change::{Add, Change as C, Remove};
        let change = match c {
            Change::Add { id, addr, voter } => C::Add(Add {
                id: *id,
                addr: addr.clone(),
                voter: *voter,
            }),
            Change::Remove { id } => C::Remove(Remove { id: *id }),
        };
        pb::MembersChange {
            change: Some(change),
        }
    }
}

impl TryFrom<pb::MembersChange> for Change {
    type Error = WireError;
    fn try_from(c: pb::MembersChange) -> Result<Self, WireError> {
        use pb::members_change::Change as C;
        Ok(match need(c.change, "members change")? {
            C::Add(a) => Change::Add {
                id: a.id,
                addr: a.addr,
                voter: a.voter,
            },
            C::Remove(r) => Change::Remove { id: r.id },
        })
    }
}

impl From<&ChangeReply> for pb::MembersReply {
    fn from(r: &ChangeReply) -> Self {
        use pb::members_reply::Result as R;
        let result = match r {
            ChangeReply::Done => R::Done(pb::Blank {}),
            ChangeReply::NotLeader(l) => R::NotLeader(not_leader_to(l)),
            ChangeReply::Failed(why) => R::Failed(why.clone()),
        };
        pb::MembersReply {
            result: Some(result),
        }
    }
}

impl TryFrom<pb::MembersReply> for ChangeReply {
    type Error = WireError;
    fn try_from(r: pb::MembersReply) -> Result<Self, WireError> {
        use pb::members_reply::Result as R;
        Ok(match need(r.result, "members result")? {
            R::Done(_) => ChangeReply::Done,
            R::NotLeader(n) => ChangeReply::NotLeader(not_leader_from(n)),
            R::Failed(why) => ChangeReply::Failed(why),
        })
    }
}
