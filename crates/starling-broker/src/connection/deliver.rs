//! Outbound delivery: moving queued messages into the output within the inflight window and
//! the output high-water mark, encoded straight from the shared message (subscription
//! identifiers, remaining expiry and topic aliases per connection).

use std::time::Instant;

use super::*;

impl Connection {
    /// Moves queued messages into the output, as far as the inflight window and the output
    /// high-water mark allow. Detects a takeover (answered with DISCONNECT 0x8E for v5).
    pub fn pump(&mut self, now: Instant) -> Result<(), Closing> {
        let Stage::Active(a) = &mut self.stage else {
            return Ok(());
        };
        let metrics = &self.broker.metrics;
        let session = a.session.clone();
        let mut st = session.lock();
        if st.owner != Some(self.id) || st.ended {
            drop(st);
            self.send_disconnect(ReasonCode::SessionTakenOver, "session taken over");
            return Err(Closing::new(
                ReasonCode::SessionTakenOver,
                "session taken over",
            ));
        }
        while self.out.len() < OUTPUT_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= a.window {
                break;
            }
            let Some(d) = st.pop_queued() else { break };
            if d.msg.is_expired(now) {
                metrics.publish_dropped.inc();
                metrics.dropped_expired.inc();
                continue;
            }
            if !access::may_read(self.access.as_mut(), a, &d.msg.topic) {
                metrics.acl_denied.inc();
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                st.allocate_packet_id()
            };
            let alias = outbound_alias(a, &d.msg.topic);
            match encode_delivery(
                &mut self.out,
                a.version,
                &d,
                packet_id,
                false,
                alias,
                now,
                a.max_packet_out,
            ) {
                Ok(true) => {
                    if let Some((alias, false)) = alias {
                        (a.aliases.get_or_insert_default().outbound)
                            .insert(d.msg.topic.clone(), alias);
                    }
                }
                Ok(false) => {
                    // Larger than the client accepts: not sent (spec 3.1.2.11.4), counted.
                    metrics.publish_dropped.inc();
                    metrics.dropped_too_large.inc();
                    continue;
                }
                Err(e) => {
                    debug!(error = %e, "dropping unencodable message");
                    metrics.publish_dropped.inc();
                    continue;
                }
            }
            metrics.publish_sent.inc();
            metrics.messages_sent.inc();
            if d.seq != 0
                && st.persisted
                && let Some(p) = self.broker.persistence()
            {
                let op = Op::SetPhase(
                    session.client_id.clone(),
                    d.seq,
                    MessagePhase::Published,
                    packet_id,
                );
                p.journal.push(op);
            }
            if d.qos != QoS::AtMostOnce {
                st.inflight.push_back(Inflight {
                    packet_id,
                    delivery: d,
                    phase: Phase::Published,
                });
            }
        }
        let more = !st.queue.is_empty()
            && (st.queue.front().is_some_and(|f| f.qos == QoS::AtMostOnce)
                || st.inflight.len() < a.window);
        drop(st);
        if more {
            // Still work to do once the output drains: make sure the next pump happens.
            self.waker.wake();
        }
        Ok(())
    }
}

/// The outbound topic alias for `topic`: `Some((alias, known))`, where `known` means the
/// client already has it (send the alias alone), or `None` when the client allows no more
/// aliases. A new alias is proposed while the client's Topic Alias Maximum allows.
pub(super) fn outbound_alias(a: &mut Active, topic: &TopicName) -> Option<(u16, bool)> {
    if a.alias_out_max == 0 {
        return None;
    }
    let assigned = a.aliases.as_ref().map(|x| &x.outbound);
    if let Some(&alias) = assigned.and_then(|m| m.get(topic)) {
        return Some((alias, true));
    }
    let used = assigned.map_or(0, HashMap::len);
    if used >= usize::from(a.alias_out_max) {
        return None;
    }
    // Proposed only: the caller records it once the message is actually sent, since a message
    // dropped for the client's Maximum Packet Size must not define an alias.
    let alias = u16::try_from(used + 1).ok()?;
    Some((alias, false))
}

/// Encodes the PUBLISH of a delivery: per-subscriber QoS, RETAIN, packet id, subscription
/// identifiers, remaining expiry and topic alias (v5 only), straight from the shared message
/// without copying it into a packet value. `Ok(false)`: larger than `max_len`, not written.
#[allow(clippy::too_many_arguments)]
pub(super) fn encode_delivery(
    out: &mut BytesMut,
    version: ProtocolVersion,
    d: &Delivery,
    packet_id: u16,
    dup: bool,
    alias: Option<(u16, bool)>,
    now: Instant,
    max_len: usize,
) -> Result<bool, starling_proto::EncodeError> {
    let v5 = version.is_v5();
    let topic = match alias {
        Some((_, true)) => &[][..],
        _ => d.msg.topic.as_bytes(),
    };
    let parts = starling_proto::PublishParts {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic,
        packet_id,
        properties: &d.msg.properties,
        message_expiry_interval: if v5 {
            d.msg.remaining_expiry(now)
        } else {
            None
        },
        subscription_identifiers: if v5 { &d.sub_ids } else { &[] },
        topic_alias: alias.map(|(a, _)| a),
        payload: &d.msg.payload,
    };
    starling_proto::encode_publish_parts(out, version, &parts, max_len)
}
