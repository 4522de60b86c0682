//! A session as store records: rebuilt from them at start-up (and when another node of a
//! cluster hands a session over, `Broker::adopt`), taken out as them for such a handover
//! (`Broker::hand_over`), and the subscription options byte records keep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::{ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, Will};
use starling_store::{LoadedSession, MessagePhase, MessageRecord, Op};

use super::{Inflight, Locked, PendingWill, Phase, Session, Subscription};
use crate::broker::Restored;
use crate::message::Delivery;
use crate::persist::{Ops, WallClock, decode_message, delivery_record};

/// Most message ids a session adopted from another node remembers while it waits for that
/// node's last messages; beyond it they are not remembered (such a late message may then
/// come twice: counted in [`SeenIds::full`]).
const MAX_SEEN_IDS: usize = 65_536;

/// The cluster ids of the messages delivered to a session since it was adopted.
#[derive(Clone, Debug, Default)]
pub struct SeenIds {
    ids: std::collections::HashSet<u64>,
    /// Ids were left out for the bound.
    pub full: bool,
}

impl SeenIds {
    pub(super) fn insert(&mut self, id: u64) {
        if id == 0 {
            return;
        }
        if self.ids.len() >= MAX_SEEN_IDS {
            self.full = true;
            return;
        }
        self.ids.insert(id);
    }

    /// Whether a message with cluster id `id` was delivered.
    pub fn contains(&self, id: u64) -> bool {
        id != 0 && self.ids.contains(&id)
    }
}

/// What a session hands over besides its record: its messages as records, numbered from 1
/// (inflight first, in send order, then the queue), and the inbound QoS 2 ids awaiting
/// PUBREL.
#[derive(Debug, Default)]
pub struct TakenMessages {
    /// The messages, each with its whole PUBLISH in `packet` (no payload kept apart).
    pub messages: Vec<(u64, MessageRecord)>,
    /// Each message's cluster id (0: none), in the same order.
    pub ids: Vec<u64>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub awaiting: Vec<u16>,
}

/// A session rebuilt from the store, with the subscriptions to add to the route table.
#[derive(Debug)]
pub struct Restoring {
    /// The session, disconnected.
    pub session: Arc<Session>,
    /// Its subscriptions, for `Broker::subscribe`.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
}

impl Session {
    /// Rebuilds a persistent session (disconnected, with its subscriptions, queued and
    /// inflight messages and awaiting QoS 2 ids). `None` if it expired while the broker was
    /// down (its record is then deleted). What expired or cannot be decoded is left out,
    /// counted in `report`.
    pub fn restore(
        loaded: LoadedSession,
        clock: &WallClock,
        now: Instant,
        ops: &mut Ops<'_>,
        report: &mut Restored,
    ) -> Option<Restoring> {
        let rec = loaded.record;
        let client_id: Arc<str> = loaded.client_id.as_str().into();
        let disconnected_at = (rec.disconnected_at_ms)
            .and_then(|ms| clock.from_unix_ms(ms, now))
            .unwrap_or(now);
        let gone = now.saturating_duration_since(disconnected_at);
        if rec.expiry_secs != u32::MAX && gone >= Duration::from_secs(u64::from(rec.expiry_secs)) {
            ops.push(|_| Op::DeleteSession(client_id));
            report.expired_sessions += 1;
            return None;
        }
        let protocol = match rec.protocol {
            3 => ProtocolVersion::V31,
            4 => ProtocolVersion::V311,
            _ => ProtocolVersion::V5,
        };
        let session = Arc::new(Session::new(client_id, protocol));
        let mut subscriptions = Vec::with_capacity(rec.subscriptions.len());
        {
            let mut s = session.lock();
            s.st.persisted = true;
            s.st.expiry_secs = rec.expiry_secs;
            s.st.disconnected_at = Some(disconnected_at);
            s.st.will = rec
                .will
                .as_ref()
                .and_then(|w| restore_will(&w.packet, w.delay_secs, clock, now));
            for sub in &rec.subscriptions {
                let Ok(filter) = TopicFilter::try_from_str(&sub.filter) else {
                    report.skipped += 1;
                    continue;
                };
                let options = options_from_byte(sub.options);
                let sub = Subscription {
                    options,
                    id: sub.id,
                };
                s.st.subscriptions.insert(filter.clone(), sub.clone());
                subscriptions.push((filter, sub));
            }
            for (seq, m) in loaded.messages {
                s.restore_message(seq, &m, clock, now, ops, report);
            }
            for pid in loaded.awaiting {
                s.st.awaiting_rel.insert(pid, now);
            }
            // Offline until its client connects.
            s.st.inflight.release_index();
        }
        Some(Restoring {
            session,
            subscriptions,
        })
    }
}

fn restore_will(
    packet: &[u8],
    delay_secs: u32,
    clock: &WallClock,
    now: Instant,
) -> Option<Box<PendingWill>> {
    let rec = MessageRecord {
        packet: packet.to_vec(),
        payload: None,
        expires_at_ms: None,
        phase: MessagePhase::Queued,
        packet_id: 0,
    };
    let (msg, qos, retain, _) = decode_message(&rec, clock, now)?;
    let will = Will {
        topic: msg.topic,
        payload: msg.payload,
        qos,
        retain,
        properties: msg.properties,
    };
    Some(Box::new(PendingWill { will, delay_secs }))
}

impl Locked<'_> {
    /// Takes out everything the session holds for its client, as records, for another node
    /// that took the client id over: the inflight window, the queue (or its buffers), the
    /// inbound QoS 2 ids and the will (which the record the caller took before carries; the
    /// new owner decides about it). The subscriptions stay, so that what arrives meanwhile
    /// is queued here for a second call. What the session held in the store stays until the
    /// session ends.
    pub fn take_messages(&mut self, clock: &WallClock) -> TakenMessages {
        let mut out = TakenMessages::default();
        let mut seq = 0u64;
        let mut push = |rec: MessageRecord, id: u64| {
            seq += 1;
            out.ids.push(id);
            let packet = rec.whole_packet();
            let whole = MessageRecord {
                packet,
                payload: None,
                ..rec
            };
            out.messages.push((seq, whole));
        };
        for f in self.st.inflight.extract(|_| true) {
            let phase = match f.phase {
                Phase::Published => MessagePhase::Published,
                Phase::Released => MessagePhase::Released,
            };
            let id = f.delivery.msg.cluster_id.get();
            push(delivery_record(&f.delivery, phase, f.packet_id, clock), id);
        }
        let queued = match self.st.buffers.as_deref_mut() {
            Some(b) => b.extract(|_| true),
            None => {
                self.st.queued_bytes = 0;
                self.st.queued_qos0 = 0;
                self.st.queue.drain(..).collect()
            }
        };
        for d in &queued {
            push(
                delivery_record(d, MessagePhase::Queued, 0, clock),
                d.msg.cluster_id.get(),
            );
        }
        out.awaiting = self.st.awaiting_rel.keys().copied().collect();
        self.st.awaiting_rel.clear();
        self.st.will = None;
        out
    }

    /// Starts remembering the cluster ids of the messages delivered (a session adopted from
    /// another node, until that node's last messages for it come).
    pub fn remember_ids(&mut self) {
        self.st.rare.get_or_insert_with(Box::default).seen = Some(SeenIds::default());
    }

    /// Notes that the session was handed over (its first step) for the claim of `epoch`.
    pub fn handed_for(&mut self, epoch: u64) {
        self.st.rare.get_or_insert_with(Box::default).handed = epoch;
    }

    /// A step of a handover took from the session `now`.
    pub fn handover_step(&mut self, now: Instant) {
        self.st.rare.get_or_insert_with(Box::default).handed_at = Some(now);
    }

    /// When a step of a handover last took from the session.
    pub fn last_handover_step(&self) -> Option<Instant> {
        self.st.rare.as_deref().and_then(|r| r.handed_at)
    }

    /// The epoch of the claim the session was last handed over for (0: never).
    pub fn handed(&self) -> u64 {
        self.st.rare.as_deref().map_or(0, |r| r.handed)
    }

    /// Stops remembering, and gives what was remembered.
    pub fn take_seen(&mut self) -> Option<SeenIds> {
        self.st.rare.as_deref_mut().and_then(|r| r.seen.take())
    }

    /// A copy of the ids remembered, which stay remembered (more of a handover is to come).
    pub fn seen_copy(&self) -> Option<SeenIds> {
        self.st.rare.as_deref().and_then(|r| r.seen.clone())
    }

    /// Puts a stored message back in the queue or the inflight window.
    fn restore_message(
        &mut self,
        seq: u64,
        m: &MessageRecord,
        clock: &WallClock,
        now: Instant,
        ops: &mut Ops<'_>,
        report: &mut Restored,
    ) {
        self.st.next_seq = self.st.next_seq.max(seq.saturating_add(1));
        let Some((msg, qos, retain, sub_ids)) = decode_message(m, clock, now) else {
            report.skipped += 1;
            return;
        };
        if m.phase == MessagePhase::Queued && msg.is_expired(now) {
            let id = self.client_id().clone();
            ops.push(|_| Op::DeleteMessage(id, seq));
            report.expired_messages += 1;
            return;
        }
        let delivery = Delivery::new(Arc::new(msg), qos, retain)
            .with_sub_ids(sub_ids)
            .with_seq(seq);
        report.messages += 1;
        // Packet ids are unique in a window; a record breaking that (a damaged store) is sent
        // again as a new message rather than confuse the acks.
        let queued = m.phase == MessagePhase::Queued
            || m.packet_id == 0
            || self.st.inflight.contains(m.packet_id);
        if queued {
            self.push_queued(delivery);
            return;
        }
        let next = self
            .st
            .next_packet_id
            .max(m.packet_id.wrapping_add(1))
            .max(1);
        self.st.next_packet_id = next;
        self.st.inflight.push_back(Inflight {
            packet_id: m.packet_id,
            delivery,
            phase: if m.phase == MessagePhase::Released {
                Phase::Released
            } else {
                Phase::Published
            },
        });
    }
}

/// The subscription options byte as MQTT 5 encodes it.
pub(super) fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

/// Subscription options from the MQTT 5 options byte.
fn options_from_byte(b: u8) -> SubscriptionOptions {
    use starling_proto::RetainHandling as RH;
    SubscriptionOptions {
        qos: QoS::from_u8(b & 0x03).unwrap_or(QoS::AtMostOnce),
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            0 => RH::SendAtSubscribe,
            1 => RH::SendIfNew,
            _ => RH::DoNotSend,
        },
    }
}
