//! What nodes send beside Raft (routes, handovers) as the messages of cluster.proto;
//! forwarded batches and handover requests are the generated structs themselves.

use super::{WireError, narrow, need, pb};
use crate::net::HandoverReply;
use crate::routes::{MAX_HEARS, Told, Update, UpdateReply};

impl From<&Told> for pb::RoutesUpdate {
    fn from(t: &Told) -> Self {
        use pb::routes_update::{Delta, Snapshot, Update as U};
        let update = match &t.update {
            Update::Snapshot {
                node,
                incarnation,
                seq,
                filters,
            } => U::Snapshot(Snapshot {
                node: *node,
                incarnation: *incarnation,
                seq: *seq,
                filters: filters.clone(),
            }),
            Update::Delta {
                node,
                incarnation,
                from,
                to,
                added,
                removed,
            } => U::Delta(Delta {
                node: *node,
                incarnation: *incarnation,
                from: *from,
                to: *to,
                added: added.clone(),
                removed: removed.clone(),
            }),
        };
        pb::RoutesUpdate {
            update: Some(update),
            hears: t.hears.clone(),
        }
    }
}

impl TryFrom<pb::RoutesUpdate> for Told {
    type Error = WireError;
    fn try_from(u: pb::RoutesUpdate) -> Result<Self, WireError> {
        use pb::routes_update::Update as U;
        let update = match need(u.update, "routes update")? {
            U::Snapshot(s) => Update::Snapshot {
                node: s.node,
                incarnation: s.incarnation,
                seq: s.seq,
                filters: s.filters,
            },
            U::Delta(d) => Update::Delta {
                node: d.node,
                incarnation: d.incarnation,
                from: d.from,
                to: d.to,
                added: d.added,
                removed: d.removed,
            },
        };
        Ok(Told {
            update,
            hears: u.hears.into_iter().take(MAX_HEARS).collect(),
        })
    }
}

impl From<&UpdateReply> for pb::RoutesReply {
    fn from(r: &UpdateReply) -> Self {
        use pb::routes_reply::Result as R;
        let result = match r {
            UpdateReply::Applied => R::Applied,
            UpdateReply::NeedSnapshot => R::NeedSnapshot,
            UpdateReply::NotMember => R::NotMember,
        };
        pb::RoutesReply {
            result: result as i32,
        }
    }
}

impl TryFrom<pb::RoutesReply> for UpdateReply {
    type Error = WireError;
    fn try_from(r: pb::RoutesReply) -> Result<Self, WireError> {
        use pb::routes_reply::Result as R;
        match R::try_from(r.result) {
            Ok(R::Applied) => Ok(UpdateReply::Applied),
            Ok(R::NeedSnapshot) => Ok(UpdateReply::NeedSnapshot),
            Ok(R::NotMember) => Ok(UpdateReply::NotMember),
            Ok(R::Unspecified) | Err(_) => Err(WireError::Missing("routes result")),
        }
    }
}

impl From<&HandoverReply> for pb::HandoverReply {
    fn from(r: &HandoverReply) -> Self {
        use pb::handover_reply::{Numbered, Result as R, Session};
        let result = match r {
            HandoverReply::Session {
                record,
                messages,
                awaiting,
                ids,
                left_out,
                more,
            } => R::Session(Session {
                record: record.clone(),
                messages: messages
                    .iter()
                    .enumerate()
                    .map(|(i, (number, record))| Numbered {
                        number: *number,
                        record: record.clone(),
                        id: ids.get(i).copied().unwrap_or(0),
                    })
                    .collect(),
                awaiting: awaiting.iter().map(|&id| u32::from(id)).collect(),
                left_out: *left_out,
                more: *more,
            }),
            HandoverReply::Absent => R::Absent(pb::Blank {}),
            HandoverReply::NotYet => R::NotYet(pb::Blank {}),
        };
        pb::HandoverReply {
            result: Some(result),
        }
    }
}

impl TryFrom<pb::HandoverReply> for HandoverReply {
    type Error = WireError;
    fn try_from(r: pb::HandoverReply) -> Result<Self, WireError> {
        use pb::handover_reply::Result as R;
        Ok(match need(r.result, "handover result")? {
            R::Session(s) => {
                let ids = s.messages.iter().map(|m| m.id).collect();
                HandoverReply::Session {
                    record: s.record,
                    messages: s
                        .messages
                        .into_iter()
                        .map(|m| (m.number, m.record))
                        .collect(),
                    awaiting: s
                        .awaiting
                        .into_iter()
                        .map(|id| narrow(id, "awaiting packet id"))
                        .collect::<Result<_, _>>()?,
                    ids,
                    left_out: s.left_out,
                    more: s.more,
                }
            }
            R::Absent(_) => HandoverReply::Absent,
            R::NotYet(_) => HandoverReply::NotYet,
        })
    }
}
