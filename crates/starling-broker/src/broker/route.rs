//! Routing a published message: the retained copy, then one delivery per matching session
//! (overlapping subscriptions merged) and one member per shared group; and handing a shared
//! delivery over to another member when its session goes away.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use starling_store::Op;

use super::Broker;
use crate::message::{Delivery, Message};
use crate::retain::RetainOutcome;
use crate::router::{Subscriber, Target};
use crate::session::Session;

/// What became of a publish.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed {
    /// Sessions that accepted a delivery.
    pub reached: usize,
    /// What became of the retained copy, if RETAIN was set.
    pub retained: Option<RetainOutcome>,
    /// Journal ticket of the last store write the publish caused.
    pub ticket: Option<u64>,
}

impl Broker {
    pub(super) fn note_ticket(ticket: &mut Option<u64>, t: Option<u64>) {
        if let Some(t) = t {
            *ticket = Some(ticket.map_or(t, |old| old.max(t)));
        }
    }

    /// Routes a message: stores or clears it as retained if RETAIN is set, then queues it for
    /// every matching session (one delivery per session, overlapping subscriptions merged:
    /// highest QoS, every subscription identifier). Returns how many sessions it reached,
    /// what became of the retained copy, and the journal ticket of what it stored.
    pub fn publish(&self, msg: Arc<Message>) -> Routed {
        let mut ticket = None;
        let retained = msg.retain.then(|| {
            let outcome = self
                .retained
                .set(msg.clone(), self.limits.max_retained_messages);
            match outcome {
                RetainOutcome::Full => self.metrics.retained_refused.inc(),
                RetainOutcome::Stored | RetainOutcome::Cleared => {
                    if let Some(p) = &self.persist {
                        let topic = msg.topic.as_str().to_string();
                        let op = if outcome == RetainOutcome::Cleared {
                            Op::DeleteRetained(topic)
                        } else {
                            Op::PutRetained(topic, crate::persist::retained_record(&msg, &p.clock))
                        };
                        ticket = Some(p.journal.push(op));
                    }
                }
            }
            outcome
        });
        let ctx = self.ctx();
        let publisher = msg.publisher.as_deref();
        let (reached, deliveries_ticket) =
            self.router.with_matches(msg.topic.as_bytes(), |targets| {
                let mut reached = 0usize;
                let mut ticket = None;
                let mut deliver = |session: &Session, d: Delivery| {
                    let (accepted, t) = session.deliver(d, &ctx);
                    reached += usize::from(accepted);
                    Self::note_ticket(&mut ticket, t);
                };
                // Plain subscriptions: one delivery per session, overlapping subscriptions merged.
                let mut plain: Vec<&Subscriber> = targets
                    .iter()
                    .filter_map(|t| match t {
                        Target::Plain(s) => Some(*s),
                        Target::Shared(..) => None,
                    })
                    .filter(|s| !(s.options.no_local && publisher == Some(&*s.session.client_id)))
                    .collect();
                if plain.len() > 1 {
                    plain.sort_by_key(|s| Arc::as_ptr(&s.session) as usize);
                }
                let mut i = 0;
                while let Some(first) = plain.get(i) {
                    let mut qos = msg.qos.min(first.options.qos);
                    let mut rap = first.options.retain_as_published;
                    let mut sub_ids: Vec<u32> = first.id.into_iter().collect();
                    let mut j = i + 1;
                    while let Some(other) = plain.get(j) {
                        if !Arc::ptr_eq(&first.session, &other.session) {
                            break;
                        }
                        qos = qos.max(msg.qos.min(other.options.qos));
                        rap |= other.options.retain_as_published;
                        sub_ids.extend(other.id);
                        j += 1;
                    }
                    let d = Delivery {
                        msg: msg.clone(),
                        qos,
                        retain: rap && msg.retain,
                        sub_ids,
                        share: None,
                        seq: 0,
                    };
                    deliver(&first.session, d);
                    i = j;
                }
                // Shared groups: one member each.
                for t in targets {
                    if let Target::Shared(members, key, next) = t
                        && let Some(m) = pick_member(members, next, None)
                    {
                        let d = Delivery {
                            msg: msg.clone(),
                            qos: msg.qos.min(m.options.qos),
                            retain: m.options.retain_as_published && msg.retain,
                            sub_ids: m.id.into_iter().collect(),
                            share: Some((*key).clone()),
                            seq: 0,
                        };
                        deliver(&m.session, d);
                    }
                }
                (reached, ticket)
            });
        Self::note_ticket(&mut ticket, deliveries_ticket);
        Routed {
            reached,
            retained,
            ticket,
        }
    }

    /// Hands a delivery that came through a shared subscription to another member of its
    /// group (not `from`); if there is none, back to `from`'s queue.
    pub(super) fn redistribute(&self, d: Delivery, from: &Arc<Session>) {
        let Some(key) = d.share.clone() else { return };
        let mut target = None;
        self.router.for_each_match(d.msg.topic.as_bytes(), |t| {
            if let Target::Shared(members, k, next) = t
                && target.is_none()
                && **k == *key
            {
                target = pick_member(members, next, Some(from)).map(|m| m.session.clone());
            }
        });
        let to = target.unwrap_or_else(|| from.clone());
        let mut d = d;
        if Arc::ptr_eq(&to, from) {
            d.share = None;
        }
        to.deliver(d, &self.ctx());
    }
}

/// Picks the next member of a shared group in turn, preferring connected members and
/// skipping `exclude`.
fn pick_member<'a>(
    members: &'a [Subscriber],
    next: &std::sync::atomic::AtomicUsize,
    exclude: Option<&Arc<Session>>,
) -> Option<&'a Subscriber> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    let allowed = |m: &&Subscriber| exclude.is_none_or(|e| !Arc::ptr_eq(&m.session, e));
    (0..n)
        .filter_map(|k| members.get((start + k) % n))
        .filter(allowed)
        .find(|m| m.session.is_online())
        .or_else(|| {
            (0..n)
                .filter_map(|k| members.get((start + k) % n))
                .find(allowed)
        })
}
