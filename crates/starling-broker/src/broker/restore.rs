//! Persistence seen from the registry: writing a session's record, and rebuilding the broker
//! from a store snapshot at start-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::{ProtocolVersion, QoS, Will};
use starling_store::{Op, SessionRecord, SubscriptionRecord, WillRecord};

use super::Broker;
use crate::message::Delivery;
use crate::session::{PendingWill, Session, SessionState};

/// What [`Broker::restore`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Sessions restored.
    pub sessions: usize,
    /// Queued and inflight messages restored.
    pub messages: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Sessions that expired while the broker was down.
    pub expired_sessions: usize,
    /// Messages that expired while the broker was down.
    pub expired_messages: usize,
    /// Records that could not be decoded and were left out.
    pub skipped: usize,
}

impl Broker {
    /// Writes a session's record (or deletes it once its expiry is 0), if there is a store.
    /// Returns the journal ticket.
    pub fn persist_session(&self, session: &Session, st: &mut SessionState) -> Option<u64> {
        let p = self.persist.as_ref()?;
        let id = session.client_id.clone();
        if st.expiry_secs == 0 || st.ended {
            if !st.persisted {
                return None;
            }
            st.persisted = false;
            return Some(p.journal.push(Op::DeleteSession(id)));
        }
        st.persisted = true;
        let record = SessionRecord {
            protocol: st.protocol.level(),
            expiry_secs: st.expiry_secs,
            disconnected_at_ms: st.disconnected_at.map(|t| p.clock.to_unix_ms(t)),
            subscriptions: st
                .subscriptions
                .iter()
                .map(|(f, s)| SubscriptionRecord {
                    filter: f.as_str().to_string(),
                    options: options_byte(&s.options),
                    id: s.id,
                })
                .collect(),
            will: st.will.as_ref().map(|w| WillRecord {
                packet: crate::persist::encode_will(&w.will),
                delay_secs: w.delay_secs,
            }),
        };
        Some(p.journal.push(Op::PutSession(id, record)))
    }

    /// Rebuilds the state a store held: persistent sessions (disconnected, with their
    /// subscriptions, queued and inflight messages and awaiting QoS 2 ids), and retained
    /// messages. What expired while the broker was down is dropped (and deleted from the
    /// store). Call before any client connects.
    pub fn restore(&self, snap: starling_store::Snapshot, now: Instant) -> Restored {
        let mut report = Restored::default();
        let Some(p) = self.persist.clone() else {
            return report;
        };
        let clock = p.clock;
        for loaded in snap.sessions {
            let rec = loaded.record;
            let disconnected_at = rec
                .disconnected_at_ms
                .map_or(now, |ms| clock.from_unix_ms(ms, now));
            let gone = now.saturating_duration_since(disconnected_at);
            if rec.expiry_secs != u32::MAX
                && gone >= Duration::from_secs(u64::from(rec.expiry_secs))
            {
                p.journal.push(Op::DeleteSession(loaded.client_id.into()));
                report.expired_sessions += 1;
                continue;
            }
            let protocol = match rec.protocol {
                3 => ProtocolVersion::V31,
                4 => ProtocolVersion::V311,
                _ => ProtocolVersion::V5,
            };
            let client_id: Arc<str> = loaded.client_id.as_str().into();
            let session = Arc::new(Session::new(client_id.clone(), protocol));
            {
                let mut st = session.lock();
                st.persisted = true;
                st.expiry_secs = rec.expiry_secs;
                st.disconnected_at = Some(disconnected_at);
                st.will = rec.will.as_ref().and_then(|w| {
                    let (msg, qos, retain, _) = crate::persist::decode_message(
                        &starling_store::MessageRecord {
                            packet: w.packet.clone(),
                            expires_at_ms: None,
                            phase: starling_store::MessagePhase::Queued,
                            packet_id: 0,
                        },
                        &clock,
                        now,
                    )?;
                    Some(Box::new(PendingWill {
                        will: Will {
                            topic: msg.topic,
                            payload: msg.payload,
                            qos,
                            retain,
                            properties: msg.properties,
                        },
                        delay_secs: w.delay_secs,
                    }))
                });
                for sub in &rec.subscriptions {
                    let Ok(filter) = starling_proto::TopicFilter::try_from_str(&sub.filter) else {
                        report.skipped += 1;
                        continue;
                    };
                    let options = options_from_byte(sub.options);
                    self.router.subscribe(&filter, &session, options, sub.id);
                    st.subscriptions.insert(
                        filter,
                        crate::session::Subscription {
                            options,
                            id: sub.id,
                        },
                    );
                }
                for (seq, m) in loaded.messages {
                    st.next_seq = st.next_seq.max(seq + 1);
                    let Some((msg, qos, retain, sub_ids)) =
                        crate::persist::decode_message(&m, &clock, now)
                    else {
                        report.skipped += 1;
                        continue;
                    };
                    if m.phase == starling_store::MessagePhase::Queued && msg.is_expired(now) {
                        p.journal
                            .push(Op::DeleteMessage(loaded.client_id.as_str().into(), seq));
                        report.expired_messages += 1;
                        continue;
                    }
                    let delivery = Delivery {
                        msg: Arc::new(msg),
                        qos,
                        retain,
                        sub_ids,
                        share: None,
                        seq,
                    };
                    report.messages += 1;
                    // Packet ids are unique in a window; a record breaking that (a damaged
                    // store) is sent again as a new message rather than confuse the acks.
                    let queued = m.phase == starling_store::MessagePhase::Queued
                        || m.packet_id == 0
                        || st.inflight.contains(m.packet_id);
                    match m.phase {
                        _ if queued => {
                            st.queued_bytes += delivery.msg.cost();
                            st.queue.push_back(delivery);
                        }
                        phase => {
                            st.next_packet_id =
                                st.next_packet_id.max(m.packet_id.wrapping_add(1)).max(1);
                            st.inflight.push_back(crate::session::Inflight {
                                packet_id: m.packet_id,
                                delivery,
                                phase: if phase == starling_store::MessagePhase::Released {
                                    crate::session::Phase::Released
                                } else {
                                    crate::session::Phase::Published
                                },
                            });
                        }
                    }
                }
                for pid in loaded.awaiting {
                    st.awaiting_rel.insert(pid, now);
                }
                // Offline until its client connects.
                st.inflight.release_index();
            }
            self.sessions().insert(client_id, session);
            report.sessions += 1;
        }
        for (topic, m) in snap.retained {
            let Some((msg, _, _, _)) = crate::persist::decode_message(&m, &clock, now) else {
                report.skipped += 1;
                continue;
            };
            if msg.is_expired(now) {
                p.journal.push(Op::DeleteRetained(topic));
                report.expired_messages += 1;
                continue;
            }
            let mut msg = msg;
            msg.retain = true;
            self.retained.set(Arc::new(msg), usize::MAX);
            report.retained += 1;
        }
        report
    }
}

/// The subscription options byte as MQTT 5 encodes it.
fn options_byte(o: &starling_proto::SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

/// Subscription options from the MQTT 5 options byte.
fn options_from_byte(b: u8) -> starling_proto::SubscriptionOptions {
    use starling_proto::RetainHandling as RH;
    starling_proto::SubscriptionOptions {
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
