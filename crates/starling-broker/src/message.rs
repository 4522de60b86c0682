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
    pub fn cost(&self) -> usize {
        let properties = if self.properties.is_empty() {
            0
        } else {
            starling_proto::properties_len(&self.properties)
        };
        self.payload.len() + self.topic.len() + properties
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

/// One message on its way to one session.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS to send with: min(published, granted).
    pub qos: QoS,
    /// RETAIN flag to send with.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (v5).
    pub sub_ids: Vec<u32>,
    /// Set when the message reached this session through a shared subscription.
    pub share: Option<Arc<ShareKey>>,
    /// Key of its record in the store (per session, increasing); 0 when not stored.
    pub seq: u64,
}
