//! The records the core writes and reads back: the PUBLISH a stored message keeps (its payload
//! apart when it is worth sharing between sessions), a will's and a retained message's, and the
//! wall clock that turns the core's `Instant`s into absolute times a restart can read.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use starling_proto::{Packet, ProtocolVersion, Publish, QoS};
use starling_store::{MessagePhase, MessageRecord, SharedPayload};

use crate::message::{Delivery, Message};

/// Converts between the monotonic clock the core runs on and the wall clock records keep
/// (absolute times survive a restart; `Instant`s do not).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    base: Instant,
    base_unix_ms: u64,
}

impl WallClock {
    /// `now` is `unix_ms` milliseconds after the Unix epoch.
    pub fn new(now: Instant, unix_ms: u64) -> Self {
        Self {
            base: now,
            base_unix_ms: unix_ms,
        }
    }

    /// The wall-clock time of `t`.
    pub fn to_unix_ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_unix_ms.saturating_add(d.as_millis() as u64),
            None => self
                .base_unix_ms
                .saturating_sub(self.base.duration_since(t).as_millis() as u64),
        }
    }

    /// The `Instant` of a wall-clock time, as seen from `now`; times before the process
    /// started map to `now` minus the difference, or `now` if that is not representable.
    /// `None` for a future time the clock cannot represent (a damaged record can say
    /// anything): whatever it bounds never comes.
    pub fn from_unix_ms(&self, ms: u64, now: Instant) -> Option<Instant> {
        let now_ms = self.to_unix_ms(now);
        if ms >= now_ms {
            now.checked_add(Duration::from_millis(ms - now_ms))
        } else {
            Some(
                now.checked_sub(Duration::from_millis(now_ms - ms))
                    .unwrap_or(now),
            )
        }
    }
}

/// Encodes a message as the MQTT 5 PUBLISH a record keeps.
pub fn encode_message(msg: &Message, qos: QoS, retain: bool, sub_ids: &[u32]) -> Vec<u8> {
    encode_record_publish(msg, qos, retain, sub_ids, false)
}

/// The PUBLISH of a record; `header_only`: without the payload's bytes (which follow it when
/// the record is read back).
fn encode_record_publish(
    msg: &Message,
    qos: QoS,
    retain: bool,
    sub_ids: &[u32],
    header_only: bool,
) -> Vec<u8> {
    let mut properties = msg.properties.clone();
    if !sub_ids.is_empty() {
        // Written only when there are some: a write would allocate the property values.
        properties.subscription_identifiers = sub_ids.to_vec();
    }
    let publish = Publish {
        dup: false,
        qos,
        retain,
        topic: msg.topic.clone(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: msg.payload.clone(),
    };
    if header_only {
        let mut buf = BytesMut::new();
        // Empty if it cannot be encoded (then the caller does not share the payload).
        if starling_proto::encode_publish_header(&publish, ProtocolVersion::V5, &mut buf).is_err() {
            return Vec::new();
        }
        return Vec::from(buf);
    }
    let packet = Packet::Publish(publish);
    // One allocation of the exact size, handed over as the record's Vec without a copy.
    let len = starling_proto::encoded_len(&packet, ProtocolVersion::V5).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(len);
    // A message that was decoded can always be encoded again; if not, the record is empty and
    // is skipped on load.
    let _ = starling_proto::encode(&packet, ProtocolVersion::V5, &mut buf);
    Vec::from(buf)
}

/// Encodes a will as the MQTT 5 PUBLISH a session record keeps (its delay is kept apart).
pub fn encode_will(will: &starling_proto::Will) -> Vec<u8> {
    let mut properties = will.properties.clone();
    if let Some(v) = properties.values_mut() {
        v.will_delay_interval = None;
    }
    let msg = Message {
        topic: will.topic.clone(),
        payload: will.payload.clone(),
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at: None,
        publisher: None,
        received: None,
        store_key: crate::message::StoreKey::default(),
        cluster_id: crate::message::ClusterId::default(),
    };
    encode_message(&msg, will.qos, will.retain, &[])
}

/// The record of a retained message.
pub fn retained_record(msg: &Message, clock: &WallClock) -> MessageRecord {
    MessageRecord {
        packet: encode_message(msg, msg.qos, true, &[]),
        payload: None,
        expires_at_ms: msg.expires_at.map(|t| clock.to_unix_ms(t)),
        phase: MessagePhase::Queued,
        packet_id: 0,
    }
}

/// Payloads of at least this many bytes are stored once, shared by the records of every
/// session a message is queued for; smaller ones are written into each record (a reference
/// costs about as much).
pub const SHARED_PAYLOAD_MIN: usize = 64;

/// The record of a delivery queued or inflight for a session.
pub fn delivery_record(
    d: &Delivery,
    phase: MessagePhase,
    packet_id: u16,
    clock: &WallClock,
) -> MessageRecord {
    let expires_at_ms = d.msg.expires_at.map(|t| clock.to_unix_ms(t));
    delivery_record_expiring(d, phase, packet_id, expires_at_ms)
}

/// As [`delivery_record`], with the expiry already in wall-clock time.
pub(super) fn delivery_record_expiring(
    d: &Delivery,
    phase: MessagePhase,
    packet_id: u16,
    expires_at_ms: Option<u64>,
) -> MessageRecord {
    // A payload worth sharing is kept apart: the store writes it once for every session the
    // message is queued for.
    let mut shared = d.msg.payload.len() >= SHARED_PAYLOAD_MIN;
    let mut packet = Vec::new();
    if shared {
        packet = encode_record_publish(&d.msg, d.qos, d.retain, d.sub_ids(), true);
        // A header that cannot be encoded: written whole instead, which fails the same way
        // and leaves the record empty (skipped on load), never a payload without its header.
        shared = !packet.is_empty();
    }
    if !shared {
        packet = encode_record_publish(&d.msg, d.qos, d.retain, d.sub_ids(), false);
    }
    MessageRecord {
        packet,
        payload: shared.then(|| SharedPayload {
            key: d.msg.store_key.get(),
            bytes: d.msg.payload.clone(),
        }),
        expires_at_ms,
        phase,
        packet_id,
    }
}

/// Decodes a record's PUBLISH back into a message and its delivery QoS, RETAIN flag and
/// subscription identifiers. `None` for an undecodable record.
pub fn decode_message(
    rec: &MessageRecord,
    clock: &WallClock,
    now: Instant,
) -> Option<(Message, QoS, bool, Vec<u32>)> {
    let mut buf = BytesMut::from(Bytes::from(rec.whole_packet()));
    let limits = starling_proto::DecodeLimits::default();
    let Ok(Some(Packet::Publish(mut p))) =
        starling_proto::decode(&mut buf, ProtocolVersion::V5, &limits)
    else {
        return None;
    };
    if !buf.is_empty() {
        // More than one packet's worth: not a record this code wrote.
        return None;
    }
    let sub_ids = std::mem::take(&mut p.properties.subscription_identifiers);
    let (qos, retain) = (p.qos, p.retain);
    let mut msg = Message::from_publish(p, None, now);
    msg.expires_at = rec.expires_at_ms.and_then(|ms| clock.from_unix_ms(ms, now));
    Some((msg, qos, retain, sub_ids))
}

/// A QoS 1 message to `a/b` with `payload`, received at `now` (for the tests here and in
/// `entry.rs`).
#[cfg(test)]
pub(super) fn test_message(payload: Vec<u8>, now: Instant) -> Message {
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: starling_proto::TopicName::try_from_str("a/b").unwrap(),
        packet_id: 1,
        properties: Default::default(),
        payload: payload.into(),
    };
    Message::from_publish(publish, None, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A large payload is kept apart under the message's store key, the same for every
    /// delivery of the message and never another message's; read back, the record gives the
    /// message whole.
    #[test]
    fn large_payloads_are_shared_and_read_back_whole() {
        let now = Instant::now();
        let clock = WallClock::new(now, 1_700_000_000_000);
        let delivery = |msg: &Arc<Message>, sub_ids: Vec<u32>| {
            Delivery::new(msg.clone(), QoS::AtLeastOnce, false).with_sub_ids(sub_ids)
        };
        let big = Arc::new(test_message(vec![9; 500], now));
        let other = Arc::new(test_message(vec![9; 500], now));
        let small = Arc::new(test_message(vec![1; 10], now));
        let r1 = delivery_record(&delivery(&big, vec![]), MessagePhase::Queued, 0, &clock);
        let r2 = delivery_record(&delivery(&big, vec![7]), MessagePhase::Queued, 0, &clock);
        let r3 = delivery_record(&delivery(&other, vec![]), MessagePhase::Queued, 0, &clock);
        let (p1, p2, p3) = (
            r1.payload.as_ref().unwrap(),
            r2.payload.as_ref().unwrap(),
            r3.payload.as_ref().unwrap(),
        );
        assert_eq!(p1.key, p2.key, "one message, one key");
        assert_ne!(p1.key, p3.key, "another message, another key");
        assert!(r1.packet.len() < 20, "the record holds the header only");
        let (msg, qos, _, sub_ids) = decode_message(&r2, &clock, now).unwrap();
        assert_eq!(
            (msg.payload.as_ref(), qos, sub_ids),
            (&[9u8; 500][..], QoS::AtLeastOnce, vec![7])
        );
        // Written whole (as a store without shared payloads does), it reads the same.
        let whole = MessageRecord::decode(&r2.encode()).unwrap();
        assert_eq!(
            decode_message(&whole, &clock, now).unwrap().0.payload,
            msg.payload
        );
        let r4 = delivery_record(&delivery(&small, vec![]), MessagePhase::Queued, 0, &clock);
        assert!(r4.payload.is_none(), "small payloads stay in the record");
        // A record whose header is missing or has bytes after its packet is refused.
        let headless = MessageRecord {
            packet: Vec::new(),
            ..r2.clone()
        };
        assert!(decode_message(&headless, &clock, now).is_none());
        let longer = MessageRecord {
            packet: [r2.whole_packet(), vec![0]].concat(),
            payload: None,
            ..r2.clone()
        };
        assert!(decode_message(&longer, &clock, now).is_none());
    }

    #[test]
    fn a_time_beyond_the_clock_from_a_damaged_record_never_comes() {
        let now = Instant::now();
        let c = WallClock::new(now, 1_000_000);
        // Far future, or (where the clock cannot say it) never: not a panic either way.
        assert!(c.from_unix_ms(u64::MAX, now).is_none_or(|t| t > now));
        assert_eq!(
            c.from_unix_ms(0, now),
            Some(now - Duration::from_secs(1000))
        );
    }

    #[test]
    fn wall_clock_round_trip() {
        let now = Instant::now();
        let c = WallClock::new(now, 1_000_000);
        let later = now + Duration::from_millis(1500);
        assert_eq!(c.to_unix_ms(later), 1_001_500);
        let back = c.from_unix_ms(1_001_500, now).unwrap();
        assert_eq!(back.duration_since(now), Duration::from_millis(1500));
        assert_eq!(
            c.from_unix_ms(1_009_000, now + Duration::from_secs(10)),
            Some(now + Duration::from_secs(9))
        );
    }
}
