//! Outbound delivery: moving queued messages into the output within the inflight window and
//! the output high-water mark, encoded straight from the shared message (subscription
//! identifiers, remaining expiry and topic aliases per connection).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Instant;

use bytes::BytesMut;
use starling_proto::{Packet, ProtocolVersion, PubAck, QoS, ReasonCode, TopicName};
use tracing::debug;

use super::active::Active;
use super::{Close, Cx, Flow, access};
use crate::hook::DropReason;
use crate::message::Delivery;
use crate::metrics::SentTally;
use crate::session::{Kick, Phase};

impl Active {
    /// Moves queued messages into the output, as far as the inflight window and `room`
    /// bytes allow. Detects a takeover (answered with DISCONNECT 0x8E for v5) and a request
    /// to hand the session over.
    pub(super) fn pump(&mut self, cx: &mut Cx<'_>, room: usize) -> Flow {
        let broker = cx.broker;
        let session = self.session.clone();
        let mut ops = broker.ops();
        let from = cx.link.out.len();
        // A QoS 2 message's packet id must be stored before the client sees it, or after a
        // crash it would come again under another id and be delivered twice.
        let mut shows_stored_id = false;
        let mut st = session.lock();
        st.take_wake();
        if !st.is_owned_by(self.epoch) {
            drop(st);
            self.taken_over_event(cx);
            let reason = ReasonCode::SessionTakenOver;
            self.send_disconnect(cx, reason, "session taken over");
            return ControlFlow::Break(Close::new(reason, "session taken over"));
        }
        if let Some(why) = st.kicked() {
            drop(st);
            let (reason, text) = match why {
                Kick::Operator => {
                    cx.broker.metrics.clients_kicked.inc();
                    (
                        ReasonCode::AdministrativeAction,
                        "disconnected by an operator",
                    )
                }
                Kick::UseAnotherServer => {
                    cx.broker.metrics.clients_sent_elsewhere.inc();
                    let text = "this node lost its cluster's majority; use another node";
                    (ReasonCode::UseAnotherServer, text)
                }
                Kick::TakenOver => {
                    self.taken_over_event(cx);
                    (ReasonCode::SessionTakenOver, "session taken over")
                }
            };
            self.send_disconnect(cx, reason, text);
            return ControlFlow::Break(Close::new(reason, text));
        }
        if st.hand_over_asked() {
            self.hand_over_asked = true;
            self.hand_over_waits = st.hand_over_waits_for_input();
        }
        let mut tally = SentTally::new(&broker.metrics);
        while cx.link.out.len() < room {
            let Some(d) = st.next_delivery(usize::from(self.window)) else {
                break;
            };
            reserve_for(&mut cx.link.out, &d, st.queued(), room);
            match self.send_delivery(cx, &d, &mut tally, || st.allocate_packet_id()) {
                Ok(packet_id) => {
                    self.delivered_event(cx, &d, packet_id);
                    shows_stored_id |= d.qos == QoS::ExactlyOnce && d.seq != 0;
                    st.sent(d, packet_id, &mut ops);
                }
                Err(reason) => {
                    self.dropped_event(cx, &d, reason);
                    st.discard(d, &mut ops);
                }
            }
        }
        drop(st);
        if cx.link.out.is_empty() {
            // Grown for deliveries that were then dropped (expired, refused by the ACL, too
            // large for the client): nothing to write, so nothing is kept.
            cx.link.out = BytesMut::new();
        }
        tally.add_to(&broker.metrics);
        let (sent, bytes) = tally.totals();
        if sent != 0 {
            self.info.counters.sent_many(sent, bytes);
            cx.link.traffic = true;
        }
        let ticket = self.persisted(cx, &mut ops);
        self.deliveries_from(cx, from, ticket, shows_stored_id);
        ControlFlow::Continue(())
    }

    /// Encodes one delivery into the output; the packet id it was sent with (0 for QoS 0),
    /// or why it is not sent: expired, refused by the ACL, or too large for the client
    /// (spec 3.1.2.11.4). Each is counted (what is sent in `tally`, added to the metrics by
    /// the caller).
    fn send_delivery(
        &mut self,
        cx: &mut Cx<'_>,
        d: &Delivery,
        tally: &mut SentTally<'_>,
        allocate: impl FnOnce() -> u16,
    ) -> Result<u16, DropReason> {
        let metrics = &cx.broker.metrics;
        if d.msg.is_expired(cx.now) {
            metrics.publish_dropped.inc();
            metrics.dropped_expired.inc();
            return Err(DropReason::Expired);
        }
        if !access::may_read(cx.link.access.as_mut(), self, &d.msg.topic) {
            metrics.acl_denied.inc();
            return Err(DropReason::NotAuthorized);
        }
        let packet_id = if d.qos == QoS::AtMostOnce {
            0
        } else {
            allocate()
        };
        let alias = outbound_alias(self, &d.msg.topic);
        let out = &mut cx.link.out;
        let max = self.max_packet_out as usize;
        match encode_delivery(out, self.version, d, packet_id, false, alias, cx.now, max) {
            Ok(true) => {
                if let Some((alias, false)) = alias {
                    (self.aliases.get_or_insert_default().outbound)
                        .insert(d.msg.topic.clone(), alias);
                }
            }
            Ok(false) => {
                metrics.publish_dropped.inc();
                metrics.dropped_too_large.inc();
                return Err(DropReason::TooLarge);
            }
            Err(e) => {
                debug!(error = %e, "dropping unencodable message");
                metrics.publish_dropped.inc();
                return Err(DropReason::TooLarge);
            }
        }
        tally.sent(d.qos, d.msg.payload.len(), d.msg.received, cx.now);
        Ok(packet_id)
    }

    /// Resends, in order, every unacknowledged outbound message of a resumed session: PUBLISH
    /// with DUP for those awaiting PUBACK/PUBREC, PUBREL for those awaiting PUBCOMP. A
    /// message now larger than the client's Maximum Packet Size is discarded as if it had been
    /// delivered (MQTT-3.1.2-25), counted in `dropped_too_large`.
    pub(super) fn resend_inflight(&mut self, cx: &mut Cx<'_>) {
        let metrics = &cx.broker.metrics;
        let mut ops = cx.broker.ops();
        let from = cx.link.out.len();
        let mut st = self.session.lock();
        let mut too_large = Vec::new();
        for f in st.inflight() {
            match f.phase {
                Phase::Published => {
                    // Aliases belong to the old connection: the topic is sent in full.
                    let (out, d, max) =
                        (&mut cx.link.out, &f.delivery, self.max_packet_out as usize);
                    let pid = f.packet_id;
                    match encode_delivery(out, self.version, d, pid, true, None, cx.now, max) {
                        Ok(true) => metrics.publish_sent.inc(),
                        Ok(false) | Err(_) => too_large.push(pid),
                    }
                }
                Phase::Released => {
                    let rel = Packet::PubRel(PubAck::new(f.packet_id));
                    cx.link.send(metrics, self.version, &rel);
                }
            }
        }
        for pid in too_large {
            metrics.publish_dropped.inc();
            metrics.dropped_too_large.inc();
            st.forget_inflight(pid, &mut ops);
        }
        drop(st);
        self.persisted(cx, &mut ops);
        // What is resent shows state an earlier connection stored (a packet id, a PUBREC):
        // once everything journaled so far is committed.
        let ticket = Self::everything_so_far(cx);
        self.deliveries_from(cx, from, ticket, true);
    }
}

/// The outbound topic alias for `topic`: `Some((alias, known))`, where `known` means the
/// client already has it (send the alias alone), or `None` when the client allows no more
/// aliases. A new alias is proposed while the client's Topic Alias Maximum allows.
fn outbound_alias(a: &mut Active, topic: &TopicName) -> Option<(u16, bool)> {
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

/// Grows the output, when `d` may not fit, to hold what is queued after it too (as far as
/// `room` goes, guessed from `d`'s size: a fan-out's messages are alike), so that a fill of
/// many deliveries allocates once rather than copying the output at every doubling. Only
/// with a delivery in hand; a fill that ends with the output empty (every delivery dropped)
/// releases it, so an idle connection's output holds no memory.
fn reserve_for(out: &mut BytesMut, d: &Delivery, queued: usize, room: usize) {
    // Fixed header, remaining length, topic length, packet id and a v5 property length.
    let each = d.msg.cost() + 16;
    if out.capacity() - out.len() >= each {
        return;
    }
    let rest = each.saturating_mul(queued.saturating_add(1));
    out.reserve(rest.min(room.saturating_sub(out.len())).max(each));
}

/// Encodes the PUBLISH of a delivery: per-subscriber QoS, RETAIN, packet id, subscription
/// identifiers, remaining expiry and topic alias (v5 only), straight from the shared message
/// without copying it into a packet value. `Ok(false)`: larger than `max_len`, not written.
#[allow(clippy::too_many_arguments)]
fn encode_delivery(
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
        subscription_identifiers: if v5 { d.sub_ids() } else { &[] },
        topic_alias: alias.map(|(a, _)| a),
        payload: &d.msg.payload,
    };
    starling_proto::encode_publish_parts(out, version, &parts, max_len)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::{BufMut, Bytes, BytesMut};
    use starling_proto::{QoS, TopicName};

    use super::reserve_for;
    use crate::message::{Delivery, Message};

    fn delivery(payload: usize) -> Delivery {
        let topic = TopicName::try_from_str("a/b").unwrap();
        let msg = Message::internal(topic, Bytes::from(vec![0; payload]), false);
        Delivery::new(Arc::new(msg), QoS::AtMostOnce, false)
    }

    /// The output grows once for what is queued, within the room, and only when the next
    /// delivery may not fit.
    #[test]
    fn the_output_grows_once_for_what_is_queued() {
        let d = delivery(61);
        let each = 61 + 3 + 16;
        let mut out = BytesMut::new();
        reserve_for(&mut out, &d, 9, 64 * 1024);
        assert!(out.capacity() >= 10 * each, "{}", out.capacity());
        // Room for the next one: left as it is.
        out.put_bytes(0, 8 * each);
        let cap = out.capacity();
        reserve_for(&mut out, &d, 1_000, 64 * 1024);
        assert_eq!(out.capacity(), cap);
        // Never beyond the room, but always enough for the delivery in hand.
        let mut out = BytesMut::new();
        reserve_for(&mut out, &d, 1_000_000, 1024);
        assert!(
            (each..4 * 1024).contains(&out.capacity()),
            "{}",
            out.capacity()
        );
        let mut out = BytesMut::new();
        reserve_for(&mut out, &d, 0, 10);
        assert!(out.capacity() >= each);
    }
}
