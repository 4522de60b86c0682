//! Application messages as the router passes them around: one `Arc<Message>` per publish,
//! shared by every subscriber it reaches, and the per-subscriber `Delivery` that says at
//! which QoS and with which subscription identifiers it goes out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_proto::{Properties, Publish, QoS, TopicName};

/// A published message, immutable once routed.
#[derive(Debug)]
pub struct Message {
    /// Topic it was published to (aliases already resolved).
    pub topic: TopicName,
    /// Payload, shared with the read buffer it came from.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Properties forwarded to subscribers (topic alias, subscription identifiers and message
    /// expiry removed: those are set per delivery). Usually empty, which allocates nothing.
    pub properties: Properties,
    /// When the message expires (v5 Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local; `None` for broker-made messages.
    pub publisher: Option<Arc<str>>,
    /// When the broker received it (`None` for messages it made or restored): the start of
    /// the publish-to-deliver latency.
    pub received: Option<Instant>,
    /// Names the payload in the store, where the records of every persistent session the
    /// message is queued for share one copy of it.
    pub store_key: StoreKey,
    /// Names the message across the nodes of a cluster (0: not forwarded): the node that
    /// first hands it to a peer picks it, and every node it reaches keeps it, so that a
    /// session handed over between nodes takes a message once however many ways it came.
    pub cluster_id: ClusterId,
}

/// A message's name in a cluster; see [`Message::cluster_id`].
#[derive(Debug, Default)]
pub struct ClusterId(AtomicU64);

impl ClusterId {
    /// The id; 0 if it has none.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The id, taken from `make` now if the message has none yet (`make` must not give 0).
    pub fn get_or(&self, make: impl FnOnce() -> u64) -> u64 {
        let id = self.get();
        if id != 0 {
            return id;
        }
        let new = make();
        match self
            .0
            .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => new,
            Err(id) => id,
        }
    }

    /// Gives it the id it was forwarded with.
    pub fn set(&self, id: u64) {
        self.0.store(id, Ordering::Relaxed);
    }
}

/// A number that names one message's payload for as long as the process runs: taken from a
/// process-wide counter the first time the message is stored, never given to another message
/// (an address would be reused once the message is freed, while the store may still hold
/// records under it).
#[derive(Debug, Default)]
pub struct StoreKey(AtomicU64);

/// The next [`StoreKey`]; 0 means "none yet".
static NEXT_STORE_KEY: AtomicU64 = AtomicU64::new(1);

impl StoreKey {
    /// The key, taken now if the message has none yet.
    pub fn get(&self) -> u64 {
        let k = self.0.load(Ordering::Relaxed);
        if k != 0 {
            return k;
        }
        let new = NEXT_STORE_KEY.fetch_add(1, Ordering::Relaxed);
        match self
            .0
            .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => new,
            // Another thread named it first.
            Err(k) => k,
        }
    }
}

impl Message {
    /// Builds the message for a received PUBLISH.
    pub fn from_publish(mut publish: Publish, publisher: Option<Arc<str>>, now: Instant) -> Self {
        let mut expires_at = None;
        // Only touch the values if there are some: reading through `DerefMut` would allocate.
        if let Some(v) = publish.properties.values_mut() {
            v.topic_alias = None;
            v.subscription_identifiers.clear();
            expires_at = v
                .message_expiry_interval
                .take()
                .and_then(|s| now.checked_add(Duration::from_secs(u64::from(s))));
        }
        let properties = if publish.properties.is_empty() {
            Properties::default()
        } else {
            publish.properties
        };
        Self {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            publisher,
            received: Some(now),
            store_key: StoreKey::default(),
            cluster_id: ClusterId::default(),
        }
    }

    /// A message made by the broker itself (e.g. `$SYS`).
    pub fn internal(topic: TopicName, payload: Bytes, retain: bool) -> Self {
        Self {
            topic,
            payload,
            qos: QoS::AtMostOnce,
            retain,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
            received: None,
            store_key: StoreKey::default(),
            cluster_id: ClusterId::default(),
        }
    }

    /// The same message with its topic, payload and correlation data in allocations of their
    /// own. A received message's bytes are slices of the read buffer they arrived in (up to
    /// 16 KiB, shared by every message of one read), and a slice keeps the whole buffer alive:
    /// a copy kept for long (a retained message, one queued for a session nobody is
    /// connected to) must not, or a retained message published among a stream of others
    /// would hold a read buffer each. It is the same message to the store (same key).
    pub fn detached(&self) -> Self {
        let mut properties = self.properties.clone();
        if let Some(v) = properties.values_mut()
            && let Some(data) = &mut v.correlation_data
        {
            *data = Bytes::copy_from_slice(data);
        }
        Self {
            topic: self.topic.detached(),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties,
            expires_at: self.expires_at,
            publisher: self.publisher.clone(),
            received: self.received,
            // The same key: the store keeps one copy of the payload for both.
            store_key: StoreKey(AtomicU64::new(self.store_key.get())),
            cluster_id: ClusterId(AtomicU64::new(self.cluster_id.get())),
        }
    }

    /// True once the message's expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds of expiry left, rounded up, for the Message Expiry Interval sent onwards.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }

    /// Bytes this message accounts for in a queue: its topic, payload and the properties it
    /// carries (user properties, correlation data...: up to a packet's worth, which a client
    /// could otherwise queue beyond `max_queued_bytes` behind an empty payload).
    #[inline]
    pub fn cost(&self) -> usize {
        // Inline and out of line: every delivery is counted into and out of its queue, and
        // nearly no message has properties.
        let properties = if self.properties.is_unset() {
            0
        } else {
            self.properties_cost()
        };
        self.payload.len() + self.topic.len() + properties
    }

    /// The encoded size of the properties set (0 if none is).
    #[inline(never)]
    fn properties_cost(&self) -> usize {
        if self.properties.is_empty() {
            0
        } else {
            starling_proto::properties_len(&self.properties)
        }
    }
}

/// Identifies a shared-subscription group, so a message can be handed to another member.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShareKey {
    /// The group name.
    pub group: Arc<str>,
    /// The full filter, `$share/{group}/` included.
    pub filter: starling_proto::TopicFilter,
}

/// One message on its way to one session. Every subscriber's queue (and inflight window)
/// holds one per message, so in fan-out its size is memory traffic: what few deliveries have
/// (several subscription identifiers, a shared group) is boxed, and a delivery is 32 bytes.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS to send with: min(published, granted).
    pub qos: QoS,
    /// RETAIN flag to send with.
    pub retain: bool,
    /// Key of its record in the store (per session, increasing); 0 when not stored.
    pub seq: u64,
    /// The subscription identifier of the matching subscription (v5) when it is the only one
    /// (0: none, or several in `rare`; identifiers start at 1).
    sub_id: u32,
    /// Several subscription identifiers, or the shared group it came through.
    rare: Option<Box<RareDelivery>>,
}

/// See [`Delivery::rare`].
#[derive(Clone, Debug, Default)]
struct RareDelivery {
    /// Every subscription identifier, when there are several (empty otherwise).
    sub_ids: Vec<u32>,
    /// Set when the message reached this session through a shared subscription.
    share: Option<Arc<ShareKey>>,
}

impl Delivery {
    /// A delivery of `msg` with `qos` and `retain`, without subscription identifiers, not
    /// through a shared group and not stored.
    #[inline]
    pub fn new(msg: Arc<Message>, qos: QoS, retain: bool) -> Self {
        Self {
            msg,
            qos,
            retain,
            seq: 0,
            sub_id: 0,
            rare: None,
        }
    }

    /// With the subscription identifier of the one matching subscription, if it has one.
    #[must_use]
    #[inline]
    pub fn with_sub_id(mut self, id: Option<u32>) -> Self {
        match id {
            None => self,
            Some(0) => self.with_sub_ids(vec![0]),
            Some(id) => {
                self.sub_id = id;
                self
            }
        }
    }

    /// With the subscription identifiers of the matching subscriptions (v5).
    #[must_use]
    pub fn with_sub_ids(mut self, ids: Vec<u32>) -> Self {
        match ids.as_slice() {
            [] => {}
            &[one] if one != 0 => self.sub_id = one,
            _ => self.rare.get_or_insert_default().sub_ids = ids,
        }
        self
    }

    /// Through the shared subscription `key`.
    #[must_use]
    pub fn with_share(mut self, key: Arc<ShareKey>) -> Self {
        self.rare.get_or_insert_default().share = Some(key);
        self
    }

    /// With its store key.
    #[must_use]
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    /// Subscription identifiers of the matching subscriptions (v5).
    pub fn sub_ids(&self) -> &[u32] {
        match &self.rare {
            Some(r) if !r.sub_ids.is_empty() => &r.sub_ids,
            _ if self.sub_id != 0 => std::slice::from_ref(&self.sub_id),
            _ => &[],
        }
    }

    /// The shared subscription it came through, if it did.
    pub fn share(&self) -> Option<&Arc<ShareKey>> {
        self.rare.as_ref().and_then(|r| r.share.as_ref())
    }

    /// No longer counts as through a shared subscription.
    pub fn forget_share(&mut self) {
        if let Some(r) = &mut self.rare {
            r.share = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use starling_proto::{QoS, TopicFilter, TopicName};

    use super::*;

    /// A delivery is 32 bytes (it was 56 with its identifiers and group inline), and gives
    /// back exactly the subscription identifiers and group it was made with.
    #[test]
    fn a_delivery_stays_small_and_keeps_what_it_was_given() {
        let size = std::mem::size_of::<Delivery>();
        assert!(size <= 32, "a delivery grew to {size} bytes");
        let topic = TopicName::try_from_str("t").unwrap();
        let msg = Arc::new(Message::internal(topic, Bytes::from_static(b"x"), false));
        let key = Arc::new(ShareKey {
            group: "g".into(),
            filter: TopicFilter::try_from_str("$share/g/t").unwrap(),
        });
        for id in [None, Some(0), Some(1), Some(268_435_455)] {
            let d = Delivery::new(msg.clone(), QoS::AtMostOnce, false).with_sub_id(id);
            assert_eq!(d.sub_ids(), Vec::from_iter(id).as_slice());
        }
        for ids in [
            vec![],
            vec![5],
            vec![7, 9],
            vec![0],
            vec![268_435_455, 1, 1],
        ] {
            let d = Delivery::new(msg.clone(), QoS::AtLeastOnce, true).with_sub_ids(ids.clone());
            assert_eq!(d.sub_ids(), ids.as_slice());
            assert!(d.share().is_none());
            let mut d = d.with_share(key.clone()).with_seq(3);
            assert_eq!(d.sub_ids(), ids.as_slice());
            assert!(d.share().is_some_and(|k| Arc::ptr_eq(k, &key)));
            assert_eq!((d.seq, d.qos, d.retain), (3, QoS::AtLeastOnce, true));
            d.forget_share();
            assert!(d.share().is_none());
            assert_eq!(d.sub_ids(), ids.as_slice());
        }
    }
}
