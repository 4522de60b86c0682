//! What waits in the journal: a store op, or the record of a delivery queued for a
//! persistent session, kept as the delivery itself until the committer takes it. Most such
//! records are deleted again before that (the message delivered and acknowledged within one
//! commit cycle) and undone in place, so they are never encoded; the committer's thread
//! encodes the rest, outside the journal's lock ([`Entry::into_op`]).

use starling_store::{ClientId, MessagePhase, Op};

use super::records::delivery_record_expiring;
use crate::message::Delivery;

/// An op waiting in the journal.
#[derive(Debug)]
pub enum Entry {
    /// A store op, as it will be applied.
    Op(Op),
    /// A delivery's record for session `id`, under the delivery's sequence number (an
    /// `Op::PutMessage` once encoded).
    Queued(Queued),
}

/// A delivery whose record is encoded only if the committer takes it.
#[derive(Debug)]
pub struct Queued {
    pub(super) id: ClientId,
    pub(super) delivery: Delivery,
    /// Its expiry in wall-clock time, taken when it was queued (the clock is the core's).
    pub(super) expires_at_ms: Option<u64>,
    pub(super) phase: MessagePhase,
    pub(super) packet_id: u16,
}

impl Entry {
    /// A delivery queued for the session `id`, to be recorded with `phase` and `packet_id`.
    pub fn queued(
        id: ClientId,
        delivery: Delivery,
        expires_at_ms: Option<u64>,
        phase: MessagePhase,
        packet_id: u16,
    ) -> Self {
        Self::Queued(Queued {
            id,
            delivery,
            expires_at_ms,
            phase,
            packet_id,
        })
    }

    /// The session and sequence number of a message record it stores.
    pub(super) fn put_key(&self) -> Option<(&ClientId, u64)> {
        match self {
            Self::Op(Op::PutMessage(id, seq, _)) => Some((id, *seq)),
            Self::Queued(q) => Some((&q.id, q.delivery.seq)),
            Self::Op(_) => None,
        }
    }

    /// A message record's phase and packet identifier changed (nothing for other ops).
    pub(super) fn set_phase(&mut self, phase: MessagePhase, packet_id: u16) {
        match self {
            Self::Op(Op::PutMessage(_, _, rec)) => {
                rec.phase = phase;
                rec.packet_id = packet_id;
            }
            Self::Queued(q) => {
                q.phase = phase;
                q.packet_id = packet_id;
            }
            Self::Op(_) => {}
        }
    }

    /// Roughly the memory it holds while it waits: see [`Op::weight`], which an encoded
    /// record of the same delivery comes close to.
    pub fn weight(&self) -> usize {
        match self {
            Self::Op(op) => op.weight(),
            // What the queue counts for the message (topic, payload, properties), and the
            // record's header and the fixed allowance of `Op::weight`.
            Self::Queued(q) => 64 + 16 + q.delivery.msg.cost(),
        }
    }

    /// The store op: a queued delivery's record is encoded now.
    pub fn into_op(self) -> Op {
        match self {
            Self::Op(op) => op,
            Self::Queued(q) => {
                let Queued {
                    id,
                    delivery,
                    expires_at_ms,
                    phase,
                    packet_id,
                } = q;
                let rec = delivery_record_expiring(&delivery, phase, packet_id, expires_at_ms);
                Op::PutMessage(id, delivery.seq, rec)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use starling_proto::QoS;

    use super::*;
    use crate::persist::records::test_message;
    use crate::persist::{WallClock, delivery_record};

    /// A queued delivery kept as itself gives, once taken, the record encoding it at once
    /// would have given (its phase changes folded in), whether its payload is kept apart or
    /// inline, with or without expiry, properties and subscription identifiers.
    #[test]
    fn a_queued_delivery_encodes_as_its_record_would_have() {
        let now = Instant::now();
        let clock = WallClock::new(now, 1_700_000_000_000);
        let id: ClientId = Arc::from("c");
        for (payload, sub_ids, expiry) in [
            (vec![7u8; 500], vec![], None),
            (vec![1u8; 10], vec![3, 9], Some(Duration::from_secs(60))),
        ] {
            let mut msg = test_message(payload, now);
            msg.expires_at = expiry.map(|e| now + e);
            if expiry.is_some() {
                msg.properties =
                    starling_proto::Properties::from_values(starling_proto::PropertyValues {
                        user_properties: vec![("k".into(), "v".repeat(300))],
                        ..Default::default()
                    });
            }
            let d = Delivery::new(Arc::new(msg), QoS::AtLeastOnce, true)
                .with_sub_ids(sub_ids)
                .with_seq(42);
            let expires_at_ms = d.msg.expires_at.map(|t| clock.to_unix_ms(t));
            let mut e = Entry::queued(
                id.clone(),
                d.clone(),
                expires_at_ms,
                MessagePhase::Queued,
                0,
            );
            assert_eq!(e.put_key(), Some((&id, 42)));
            assert!(
                e.weight() > d.msg.cost(),
                "weighs more than the queue counts"
            );
            e.set_phase(MessagePhase::Published, 5);
            let want = delivery_record(&d, MessagePhase::Published, 5, &clock);
            assert!(want.expires_at_ms.is_some() == expiry.is_some());
            match e.into_op() {
                Op::PutMessage(c, 42, rec) => {
                    assert_eq!(*c, *id);
                    assert_eq!(rec, want);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
