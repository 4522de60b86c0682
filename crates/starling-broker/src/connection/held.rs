//! "Persist, then show it to the client", written once. In durability `sync` nothing the client
//! could act on goes out before the state it reflects is committed: acknowledgements (PUBACK,
//! PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK), CONNACK (a session started, resumed or ended),
//! a QoS 2 PUBLISH of a persistent session (its packet id), and what a resumed session
//! resends. They wait here, in order, with the ticket of what they reflect; a failed commit is
//! never presented as a success. In a cluster, the acknowledgement of a publish also waits
//! here for the cluster's work on it (its retained copy committed, the other nodes storing
//! the message), whatever the durability, and the acknowledgements after it wait behind it.
//! Also: pausing a client that feeds a store at its bound.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use starling_proto::{Packet, Properties, ReasonCode};

use super::active::Active;
use super::{Close, Cx, Flow};
use crate::broker::{Broker, Ending};
use crate::persist::{Journal, Ops, TicketStatus};
use crate::retain::{Replicated, Replication};

/// Held acknowledgements at which reading from the client pauses.
pub const HELD_LIMIT: usize = 1024;

/// What a connection waits for from the store, allocated when it first journals or holds
/// something: acknowledgements waiting for the commit of what they acknowledge, in order, with
/// their journal tickets (bounded: at `HELD_LIMIT` the client is not read until commits catch
/// up), and its last journaled op (what a pause at the journal's bound waits for).
#[derive(Debug)]
pub(super) struct HeldAcks {
    queue: VecDeque<(u64, Held)>,
    /// How many of `queue` are deliveries: while any waits, later deliveries wait behind them
    /// (messages of one QoS leave in the order they were queued).
    deliveries: usize,
    /// Their bytes: counted against the output's mark, so that a stuck store stops moving
    /// messages out of the session's (bounded) queue instead of piling them up here.
    delivery_bytes: usize,
    /// The journal's memo of the commit this connection waits for (`Journal::notify_when_done`).
    commit_generation: u64,
    /// Ticket of the last op this connection's work journaled (0: none).
    last_journaled: u64,
    /// The journal's memo for a pause at its bound (kept apart from `commit_generation` so
    /// each pause is counted even when held acknowledgements wait on the same commit).
    pause_generation: u64,
}

/// Output waiting for a commit.
#[derive(Debug)]
enum Held {
    /// A packet to encode when released.
    Packet(Packet),
    /// Deliveries already encoded (PUBLISH, or PUBREL resent on resume).
    Deliveries(Bytes),
    /// A PUBACK whose ticket is its publish's group (`Journal::append`): it may also go
    /// once the group is absorbed, before any commit.
    PubAck(Packet),
    /// A PUBACK/PUBREC of a publish some of whose work a cluster does later (its retained
    /// copy committed, the other nodes storing it): it goes once all of it is decided (and
    /// its ticket is done).
    Replicated(Vec<Arc<Replication>>, Packet),
}

impl Active {
    /// Sends a packet that acknowledges no stored state (PINGRESP, AUTH): at once, unless
    /// CONNACK itself still waits (nothing may go before it).
    pub(super) fn send(&mut self, cx: &mut Cx<'_>, packet: &Packet) {
        let connack_waits = self.held.as_ref().is_some_and(|h| connack_first(h));
        if connack_waits {
            self.hold(0, Held::Packet(packet.clone()));
        } else {
            self.send_now(cx, packet);
        }
    }

    /// Encodes `packet` into the output now, whatever waits (DISCONNECT, released packets),
    /// within the client's Maximum Packet Size (see `Link::send_within`).
    pub(super) fn send_now(&self, cx: &mut Cx<'_>, packet: &Packet) {
        let max = self.max_packet_out;
        cx.link
            .send_within(&cx.broker.metrics, self.version, packet, max);
    }

    /// Whether durability `sync` makes output wait for commits.
    fn holds_output(cx: &Cx<'_>) -> bool {
        cx.broker
            .persistence()
            .is_some_and(|p| p.journal.hold_acks())
    }

    /// The ticket of everything journaled so far: what a connection waits for when it cannot
    /// know the ticket of the state it shows (set by an earlier connection of the session).
    pub(super) fn everything_so_far(cx: &Cx<'_>) -> Option<u64> {
        cx.broker.persistence().map(|p| p.journal.last_ticket())
    }

    /// Deliveries encoded at `from..` of the output: sent now, or held (with `ticket`, or
    /// behind deliveries already held) so that they leave only once what they reflect is
    /// committed. `must_wait`: they show state the client could act on (a QoS 2 packet id, a
    /// resend).
    pub(super) fn deliveries_from(
        &mut self,
        cx: &mut Cx<'_>,
        from: usize,
        ticket: Option<u64>,
        must_wait: bool,
    ) {
        if cx.link.out.len() <= from || !Self::holds_output(cx) {
            return;
        }
        let behind = self
            .held
            .as_ref()
            .is_some_and(|h| h.deliveries > 0 || connack_first(h));
        let pending = ticket.is_some_and(|t| {
            cx.broker
                .persistence()
                .is_some_and(|p| p.journal.status(t) != TicketStatus::Durable)
        });
        if behind || (must_wait && pending) {
            let bytes = cx.link.out.split_off(from).freeze();
            self.hold(ticket.unwrap_or(0), Held::Deliveries(bytes));
        }
    }

    fn hold(&mut self, ticket: u64, item: Held) {
        let held = self.held_acks();
        if let Held::Deliveries(bytes) = &item {
            held.deliveries += 1;
            held.delivery_bytes += bytes.len();
        }
        held.queue.push_back((ticket, item));
    }

    /// Bytes of deliveries waiting for commits.
    pub(super) fn held_delivery_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.delivery_bytes)
    }

    /// Sends an acknowledgement, or holds it (in order) until journal `ticket` is durable.
    pub(super) fn send_ack(&mut self, cx: &mut Cx<'_>, packet: Packet, ticket: Option<u64>) {
        self.send_ack_grouped(cx, packet, ticket, false);
    }

    /// As `send_ack`; `grouped`: `ticket` is the group of the publish this PUBACK answers
    /// (`Journal::append`), so it may also go once that group is absorbed.
    pub(super) fn send_ack_grouped(
        &mut self,
        cx: &mut Cx<'_>,
        packet: Packet,
        ticket: Option<u64>,
        grouped: bool,
    ) {
        let (hold, ticket) = match cx.broker.persistence() {
            // Held even if already failed: `release_held` turns it into a failure answer.
            Some(p) if p.journal.hold_acks() => {
                let pending = ticket.is_some_and(|t| p.journal.status(t) != TicketStatus::Durable);
                (self.has_held() || pending, ticket)
            }
            // Behind a cluster's acknowledgement (acknowledgements go in order), but waiting
            // for no commit: the durability does not make acknowledgements wait.
            _ => (self.has_held(), None),
        };
        if hold {
            let item = if grouped && ticket.is_some() {
                Held::PubAck(packet)
            } else {
                Held::Packet(packet)
            };
            self.hold(ticket.unwrap_or(0), item);
        } else {
            self.send_now(cx, &packet);
        }
    }

    /// Holds the acknowledgement of a publish until the cluster's work on it (`replication`)
    /// is decided and its `ticket` is done; later acknowledgements wait behind it.
    pub(super) fn send_ack_replicated(
        &mut self,
        cx: &mut Cx<'_>,
        packet: Packet,
        ticket: Option<u64>,
        replication: Vec<Arc<Replication>>,
    ) {
        let ticket = ticket.filter(|_| Self::holds_output(cx)).unwrap_or(0);
        self.hold(ticket, Held::Replicated(replication, packet));
    }

    /// True while acknowledgements wait for the store.
    fn has_held(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.queue.is_empty())
    }

    fn held_acks(&mut self) -> &mut HeldAcks {
        self.held.get_or_insert_with(|| {
            Box::new(HeldAcks {
                queue: VecDeque::new(),
                deliveries: 0,
                delivery_bytes: 0,
                commit_generation: u64::MAX,
                last_journaled: 0,
                pause_generation: u64::MAX,
            })
        })
    }

    /// True when so many acknowledgements wait that the client must not be read further.
    pub(super) fn backpressured(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.queue.len() >= HELD_LIMIT)
    }

    /// Whether the broker is holding back reading this client: `backpressured`, or the
    /// condition `paused_for_store` reports (without registering anything).
    pub(super) fn reading_held_back(&self, broker: &Broker) -> bool {
        self.backpressured() || self.store_pause_ticket(broker).is_some()
    }

    /// While the journal is at its bound: this connection's last journaled op, if it is not
    /// committed yet (what a pause waits for). `None`: no reason to pause for the store.
    fn store_pause_ticket(&self, broker: &Broker) -> Option<u64> {
        let journal = &broker.persistence()?.journal;
        let t = self.held.as_ref()?.last_journaled;
        (t > 0 && journal.congested() && !journal.is_done(t)).then_some(t)
    }

    /// True when the client must not be read because the journal is at its bound and this
    /// connection has journaled something not committed yet (the store is behind and this
    /// client adds to it; see `persist`). Clients that journal nothing meanwhile are still
    /// served. When true, the connection's waker is registered for the commit of its last op
    /// (at once if that has just finished); the pause is counted (once per commit) in
    /// `store_paused`.
    pub(super) fn paused_for_store(&mut self, cx: &mut Cx<'_>) -> bool {
        let Some(t) = self.store_pause_ticket(cx.broker) else {
            return false;
        };
        let Some(p) = cx.broker.persistence() else {
            return false;
        };
        let memo = &mut self.held_acks().pause_generation;
        if p.journal.notify_when_done(t, &cx.link.waker, memo) {
            cx.broker.metrics.store_paused.inc();
        }
        true
    }

    /// Sends the held acknowledgements whose commits finished. A failed commit is not
    /// acknowledged as a success: v5 clients get reason 0x80 (Unspecified error), 3.x clients,
    /// which have no way to hear it, are disconnected so they resend.
    pub(super) fn release_held(&mut self, cx: &mut Cx<'_>) -> Flow {
        let Some(mut held) = self.held.take() else {
            return ControlFlow::Continue(());
        };
        let journal = cx.broker.persistence().map(|p| &*p.journal);
        let flow = self.release_from(cx, &mut held, journal);
        if let Some((ticket, front)) = held.queue.front() {
            let (ticket, waker) = (*ticket, &cx.link.waker);
            if let Held::Replicated(all, _) = front
                && let Some(r) = all.iter().find(|r| r.decided().is_none())
            {
                if !r.notify(waker) {
                    // Decided since `release_from` looked: run again.
                    waker.wake();
                }
            } else if let Some(journal) = journal.filter(|_| ticket != 0) {
                if matches!(front, Held::PubAck(_)) && journal.watch_absorbed(ticket, waker) {
                    // Absorbed since `release_from` looked: run again.
                    waker.wake();
                }
                if journal.status(ticket).is_failed() {
                    // Waits for the carried-over changes to be committed (see `release_from`).
                    journal.notify_when_committed(ticket, waker, &mut held.commit_generation);
                } else {
                    journal.notify_when_done(ticket, waker, &mut held.commit_generation);
                }
            }
        }
        self.held = Some(held);
        flow
    }

    fn release_from(
        &mut self,
        cx: &mut Cx<'_>,
        held: &mut HeldAcks,
        journal: Option<&Journal>,
    ) -> Flow {
        while let Some((ticket, front)) = held.queue.front() {
            let ticket = *ticket;
            if let Held::Replicated(all, _) = front
                && all.iter().any(|r| r.decided().is_none())
            {
                break;
            }
            let journal = journal.filter(|_| ticket != 0);
            let mut status = journal.map_or(TicketStatus::Durable, |j| j.status(ticket));
            if let Some(journal) = journal
                && status == TicketStatus::Pending
            {
                if !(matches!(front, Held::PubAck(_)) && journal.take_absorbed(ticket)) {
                    break;
                }
                // Nothing of its publish is left to store.
                status = TicketStatus::Durable;
            }
            if let Some(journal) = journal
                && status.is_failed()
                && shows_carried_state(front)
            {
                // What it shows (a delivery's packet id, a Released phase, a forgotten QoS 2
                // id) is a change the committer carries over from a refused batch into its
                // next successful commit: it waits for that instead of failing. The client is
                // not dropped for a store that is down; it waits until the store is back.
                if !journal.committed_through(ticket) {
                    break;
                }
                status = TicketStatus::Durable;
            }
            let Some((_, item)) = held.queue.pop_front() else {
                break;
            };
            let mut packet = match item {
                Held::Deliveries(bytes) => {
                    held.deliveries = held.deliveries.saturating_sub(1);
                    held.delivery_bytes = held.delivery_bytes.saturating_sub(bytes.len());
                    cx.link.out.extend_from_slice(&bytes);
                    continue;
                }
                Held::Replicated(all, mut packet) if !status.is_failed() => {
                    // The worst outcome answers (none is undecided here).
                    let worst =
                        all.iter()
                            .filter_map(|r| r.decided())
                            .max_by_key(|how| match how {
                                Replicated::Committed => 0,
                                Replicated::Full => 1,
                                Replicated::Failed => 2,
                            });
                    match worst {
                        Some(Replicated::Committed) | None => {}
                        Some(how) => {
                            if !self.answer_replication(cx, &mut packet, how) {
                                let reason = ReasonCode::UnspecifiedError;
                                let why = "the cluster did not commit the retained message";
                                return ControlFlow::Break(Close::new(reason, why));
                            }
                            if let Packet::PubRec(a) = &packet
                                && a.reason.is_error()
                            {
                                // Refused: the client may reuse the id for a new message.
                                let mut ops = cx.broker.ops();
                                self.session.lock().refuse_qos2(a.packet_id, &mut ops);
                                self.persisted(cx, &mut ops);
                            }
                        }
                    }
                    packet
                }
                Held::Packet(packet) | Held::PubAck(packet) | Held::Replicated(_, packet) => packet,
            };
            if status.is_failed() {
                cx.broker.metrics.store_failures_answered.inc();
                if let Packet::ConnAck(c) = &mut packet {
                    // The session it would report is not stored: refused (v5 0x97 for a full
                    // disk, else 0x80; 3.x 0x03) and closed, will and all, as if it had not
                    // connected.
                    c.reason = match (self.version.is_v5(), status == TicketStatus::Full) {
                        (true, true) => ReasonCode::QuotaExceeded,
                        (true, false) => ReasonCode::UnspecifiedError,
                        (false, _) => ReasonCode::ServerUnavailable,
                    };
                    c.session_present = false;
                    c.properties = Properties::default();
                    let reason = c.reason;
                    self.send_now(cx, &packet);
                    self.ending = Ending::Normal;
                    return ControlFlow::Break(Close::new(reason, "could not store the session"));
                }
                if let Packet::PubRec(a) = &packet {
                    // The client may reuse the id for a new message.
                    let mut ops = cx.broker.ops();
                    self.session.lock().refuse_qos2(a.packet_id, &mut ops);
                    self.persisted(cx, &mut ops);
                }
                if !self.answer_failure(&mut packet, status == TicketStatus::Full) {
                    let reason = ReasonCode::UnspecifiedError;
                    return ControlFlow::Break(Close::new(reason, "store commit failed"));
                }
            }
            self.send_now(cx, &packet);
        }
        ControlFlow::Continue(())
    }

    /// Turns the acknowledgement of a retained publish the cluster did not commit into a
    /// failure answer: v5 0x97 (Quota exceeded) when the cluster's bounds refused it, 0x80
    /// when it could not commit; false for a 3.x client that cannot be told (it is
    /// disconnected, and resends). A refusal for the bounds is acknowledged to 3.x as a
    /// single node's full store is.
    fn answer_replication(&self, cx: &Cx<'_>, packet: &mut Packet, how: Replicated) -> bool {
        let full = how == Replicated::Full;
        if full {
            cx.broker.metrics.retained_refused.inc();
        }
        if !self.version.is_v5() {
            return full;
        }
        let (reason, why) = if full {
            (
                ReasonCode::QuotaExceeded,
                "the cluster's retained messages are full",
            )
        } else {
            (
                ReasonCode::UnspecifiedError,
                "the cluster did not commit the retained message",
            )
        };
        if let Packet::PubAck(a) | Packet::PubRec(a) = packet
            && !a.reason.is_error()
        {
            a.reason = reason;
            if self.problem_info {
                a.properties.reason_string = Some(why.into());
            }
        }
        true
    }

    /// Turns a held acknowledgement whose commit failed into a failure answer (0x97 Quota
    /// exceeded if the disk is `full`, else 0x80); false when the client cannot be told (3.x
    /// PUBACK/PUBREC/UNSUBACK, any PUBREL/PUBCOMP).
    fn answer_failure(&self, packet: &mut Packet, full: bool) -> bool {
        let v5 = self.version.is_v5();
        let (reason, why) = if full {
            (ReasonCode::QuotaExceeded, "the broker's disk is full")
        } else {
            (ReasonCode::UnspecifiedError, "could not store the message")
        };
        match packet {
            Packet::PubAck(a) | Packet::PubRec(a) if v5 => {
                a.reason = reason;
                a.properties.reason_string = Some(why.into());
            }
            Packet::SubAck(s) => {
                // 3.1.1 has one failure code (0x80) for SUBACK.
                let reason = if v5 {
                    reason
                } else {
                    ReasonCode::UnspecifiedError
                };
                s.reasons.iter_mut().for_each(|r| *r = reason);
            }
            Packet::UnsubAck(u) if v5 => {
                u.reasons.iter_mut().for_each(|r| *r = reason);
            }
            _ => return false,
        }
        true
    }

    /// Hands what this connection's work changed to the store (`Broker::persist`) and notes
    /// its ticket; returns it, for an acknowledgement to wait on.
    pub(super) fn persisted(&mut self, cx: &Cx<'_>, ops: &mut Ops<'_>) -> Option<u64> {
        self.persisted_publish(cx, ops).0
    }

    /// As `persisted`, for a publish's ops: also whether they form a group
    /// (`Broker::persist_publish`).
    pub(super) fn persisted_publish(
        &mut self,
        cx: &Cx<'_>,
        ops: &mut Ops<'_>,
    ) -> (Option<u64>, bool) {
        let r = cx.broker.persist_publish(ops);
        let ticket = r.map(|(t, _)| t);
        self.journaled(ticket);
        (ticket, r.is_some_and(|(_, grouped)| grouped))
    }

    /// Notes that this connection's work journaled up to `ticket`: while that is not
    /// committed and the journal is at its bound, the client is not read.
    pub(super) fn journaled(&mut self, ticket: Option<u64>) {
        if let Some(t) = ticket {
            let held = self.held_acks();
            held.last_journaled = held.last_journaled.max(t);
        }
    }
}

/// Whether what `held` shows the client depends only on changes the committer carries over
/// from a refused batch (`starling_store::carried_over`): phase changes and deletions.
fn shows_carried_state(held: &Held) -> bool {
    match held {
        // A QoS 2 delivery's packet id (or PUBRELs resent on resume): phase changes.
        Held::Deliveries(_) => true,
        // The Released phase; the forgotten inbound id.
        Held::Packet(p) => matches!(p, Packet::PubRel(_) | Packet::PubComp(_)),
        Held::PubAck(_) | Held::Replicated(..) => false,
    }
}

/// Whether CONNACK is the first thing waiting (then nothing may overtake it).
fn connack_first(held: &HeldAcks) -> bool {
    matches!(
        held.queue.front(),
        Some((_, Held::Packet(Packet::ConnAck(_))))
    )
}
