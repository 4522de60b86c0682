//! Broker limits and timers: every bound the core enforces, with its default and the range
//! of values it accepts ([`Bound`], [`bounds`]). The binary fills this from the `[limits]` and
//! `[mqtt]` tables of the config file.

use serde::{Deserialize, Serialize};

/// Queue bounds of one session, replacing `max_queued_messages` and `max_queued_bytes` of
/// [`Limits`] for the clients of a listener that sets them (a bridge holds more while its
/// remote is away).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBounds {
    /// Messages queued at most.
    pub messages: usize,
    /// Bytes queued at most.
    pub bytes: usize,
}

/// What happens when a session's message queue is full and QoS 0 messages have already been
/// dropped to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the oldest queued message to make room for the new one.
    #[default]
    DropOldest,
    /// Keep the queue as it is and drop the new message.
    RefuseNewest,
}

/// Which buffer a session's undelivered messages wait in (`[limits] queue_scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueScope {
    /// One queue per session, bounded by `max_queued_messages` and `max_queued_bytes`.
    #[default]
    Session,
    /// One buffer per subscription of a session, bounded by
    /// `max_queued_messages_per_subscription` and `max_queued_bytes_per_subscription`; the
    /// session's bounds still cap the total.
    Subscription,
}

/// A queue priority for the messages whose topic a filter matches
/// (`[[limits.queue_priority]]`): when a buffer is full, lower priorities are dropped first;
/// when draining, higher priorities go first.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawPriority", into = "RawPriority")]
pub struct QueuePriority {
    /// The topic filter (no `$share/`).
    pub filter: starling_proto::TopicFilter,
    /// The priority, 0 (that of every other message) to 255.
    pub priority: u8,
}

/// `[[limits.queue_priority]]` as written in the file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPriority {
    filter: String,
    priority: u8,
}

impl TryFrom<RawPriority> for QueuePriority {
    type Error = String;

    fn try_from(raw: RawPriority) -> Result<Self, String> {
        let filter = starling_proto::TopicFilter::try_from_str(&raw.filter)
            .map_err(|e| format!("queue_priority filter {:?}: {e}", raw.filter))?;
        if filter.share_group().is_some() {
            return Err(format!(
                "queue_priority filter {:?}: a priority applies to topics, not to a shared group",
                raw.filter
            ));
        }
        Ok(Self {
            filter,
            priority: raw.priority,
        })
    }
}

impl From<QueuePriority> for RawPriority {
    fn from(p: QueuePriority) -> Self {
        Self {
            filter: p.filter.as_str().to_owned(),
            priority: p.priority,
        }
    }
}

/// Limits and timers of the broker core. Every field has a bound and a documented reaction.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted from a client (advertised in v5 CONNACK); larger: 0x95 and close.
    pub max_packet_size: u32,
    /// Largest packet accepted before CONNECT has been processed.
    pub max_connect_packet_size: u32,
    /// Most levels in a topic name or filter; more: DISCONNECT 0x97 (v5) and close, or on
    /// CONNECT (the will topic) CONNACK 0x97 (v5) / 0x03 (3.x).
    pub max_topic_levels: usize,
    /// Most user properties in one property list; more: as `max_topic_levels`.
    pub max_user_properties: usize,
    /// Accept control characters (U+0001..U+001F, U+007F..U+009F) in client ids, user names,
    /// topic names and filters; refused by default as a malformed packet (v5 reason 0x81).
    pub allow_control_characters: bool,
    /// Most subscriptions per session; more: SUBACK 0x97 (v5) / 0x80 (v3).
    pub max_subscriptions_per_client: usize,
    /// Most messages queued per session (not yet sent); full: QoS 0 dropped first, then
    /// `queue_full_policy`. Every drop is counted.
    pub max_queued_messages: usize,
    /// Most bytes queued per session (each message's payload, topic and properties, see
    /// `Message::cost`); same reaction as `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// What to drop when the queue is full.
    pub queue_full_policy: QueueFullPolicy,
    /// One queue per session (the default) or one buffer per subscription.
    pub queue_scope: QueueScope,
    /// With `queue_scope = "subscription"`: most messages in one subscription's buffer; full:
    /// lower priorities first, then `queue_full_policy` within that buffer. Counted.
    pub max_queued_messages_per_subscription: usize,
    /// With `queue_scope = "subscription"`: most bytes (as `max_queued_bytes` counts them) in
    /// one subscription's buffer; same reaction.
    pub max_queued_bytes_per_subscription: usize,
    /// Priorities by topic filter (at most `bounds::QUEUE_PRIORITIES` entries); a message
    /// takes the highest of the filters its topic matches, 0 if none. Empty: no priorities,
    /// and the session scope costs nothing more than a plain queue.
    pub queue_priority: Vec<QueuePriority>,
    /// Queue QoS 0 messages for disconnected persistent sessions (the spec allows either).
    pub queue_qos0_offline: bool,
    /// Most unacknowledged QoS 1/2 messages the broker has out to one client (v3 clients;
    /// v5 clients get min(this, their Receive Maximum)).
    pub max_inflight: u16,
    /// Receive Maximum the broker advertises: most QoS 1/2 publishes a client may have
    /// unacknowledged towards the broker; exceeded: DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// Topic Alias Maximum the broker advertises to v5 clients (0 = none accepted).
    pub topic_alias_maximum: u16,
    /// Most retained messages; more: a new retained topic is not stored (v5 PUBACK 0x97).
    pub max_retained_messages: usize,
    /// Most connections at once; more: CONNACK 0x97 (v5) / 0x03 (v3) and close.
    pub max_connections: usize,
    /// Highest keep-alive accepted, seconds. A v5 client asking for more (or for 0) is told
    /// this value as Server Keep Alive; a 3.x client asking for more is refused with CONNACK
    /// 0x02, as mosquitto does, since 3.x has no way to tell it the maximum.
    pub max_keep_alive: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Highest session expiry interval honoured, seconds (v5 requests are capped).
    pub max_session_expiry_secs: u32,
    /// Session expiry for 3.1.1 clients with clean session 0, seconds (0 = never expire).
    pub v3_session_expiry_secs: u32,
    /// Seconds an inbound QoS 2 packet id may await its PUBREL before it is forgotten.
    pub awaiting_rel_timeout_secs: u64,
    /// Inbound publishes per second per client before reading pauses (0 = unlimited).
    pub max_publish_rate: u32,
    /// Seconds between `$SYS` updates (0 = no `$SYS` tree).
    pub sys_interval_secs: u64,
    /// Seconds without messages either way after which an idle plain TCP connection is
    /// parked: its task and its socket's registration with the runtime are given up until
    /// something happens for it (one without messages since it was opened or last resumed
    /// is parked at once; control packets do not count). 0 = never parked.
    pub park_idle_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_connect_packet_size: 64 * 1024,
            max_topic_levels: 1024,
            max_user_properties: 65_535,
            allow_control_characters: false,
            max_subscriptions_per_client: 1000,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_full_policy: QueueFullPolicy::DropOldest,
            queue_scope: QueueScope::Session,
            max_queued_messages_per_subscription: 5000,
            max_queued_bytes_per_subscription: 16 * 1024 * 1024,
            queue_priority: Vec::new(),
            queue_qos0_offline: false,
            max_inflight: 64,
            receive_maximum: 128,
            topic_alias_maximum: 64,
            max_retained_messages: 1_000_000,
            max_connections: 100_000,
            max_keep_alive: 3600,
            connect_timeout_secs: 10,
            max_session_expiry_secs: 7 * 24 * 3600,
            v3_session_expiry_secs: 0,
            awaiting_rel_timeout_secs: 300,
            max_publish_rate: 0,
            sys_interval_secs: 10,
            park_idle_after_secs: 10,
        }
    }
}

impl Limits {
    /// Every numeric key with its value and its bound, in declaration order.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 22] {
        use bounds::*;
        [
            ("max_packet_size", self.max_packet_size.into(), PACKET_SIZE),
            (
                "max_connect_packet_size",
                self.max_connect_packet_size.into(),
                PACKET_SIZE,
            ),
            (
                "max_topic_levels",
                wide(self.max_topic_levels),
                TOPIC_LEVELS,
            ),
            (
                "max_user_properties",
                wide(self.max_user_properties),
                USER_PROPERTIES,
            ),
            (
                "max_subscriptions_per_client",
                wide(self.max_subscriptions_per_client),
                SUBSCRIPTIONS,
            ),
            (
                "max_queued_messages",
                wide(self.max_queued_messages),
                QUEUED_MESSAGES,
            ),
            (
                "max_queued_bytes",
                wide(self.max_queued_bytes),
                QUEUED_BYTES,
            ),
            (
                "max_queued_messages_per_subscription",
                wide(self.max_queued_messages_per_subscription),
                QUEUED_MESSAGES,
            ),
            (
                "max_queued_bytes_per_subscription",
                wide(self.max_queued_bytes_per_subscription),
                QUEUED_BYTES,
            ),
            ("max_inflight", self.max_inflight.into(), INFLIGHT),
            ("receive_maximum", self.receive_maximum.into(), INFLIGHT),
            (
                "topic_alias_maximum",
                self.topic_alias_maximum.into(),
                TOPIC_ALIASES,
            ),
            (
                "max_retained_messages",
                wide(self.max_retained_messages),
                RETAINED_MESSAGES,
            ),
            ("max_connections", wide(self.max_connections), CONNECTIONS),
            ("max_keep_alive", self.max_keep_alive.into(), KEEP_ALIVE),
            (
                "connect_timeout_secs",
                self.connect_timeout_secs,
                CONNECT_TIMEOUT_SECS,
            ),
            (
                "max_session_expiry_secs",
                self.max_session_expiry_secs.into(),
                SESSION_EXPIRY_SECS,
            ),
            (
                "v3_session_expiry_secs",
                self.v3_session_expiry_secs.into(),
                SESSION_EXPIRY_SECS,
            ),
            (
                "awaiting_rel_timeout_secs",
                self.awaiting_rel_timeout_secs,
                AWAITING_REL_TIMEOUT_SECS,
            ),
            (
                "max_publish_rate",
                self.max_publish_rate.into(),
                PUBLISH_RATE,
            ),
            (
                "sys_interval_secs",
                self.sys_interval_secs,
                SYS_INTERVAL_SECS,
            ),
            (
                "park_idle_after_secs",
                self.park_idle_after_secs,
                PARK_IDLE_AFTER_SECS,
            ),
        ]
    }

    /// Whether sessions queue in buffers (per subscription, or with priorities) rather than
    /// in one plain queue.
    #[inline]
    pub fn buffered_queue(&self) -> bool {
        self.queue_scope == QueueScope::Subscription || !self.queue_priority.is_empty()
    }

    /// The queue priority of a message on `topic`: the highest of the `queue_priority`
    /// filters it matches, 0 if none.
    pub fn priority_of(&self, topic: &starling_proto::TopicName) -> u8 {
        self.queue_priority
            .iter()
            .filter(|p| p.filter.matches(topic))
            .map(|p| p.priority)
            .max()
            .unwrap_or(0)
    }

    /// Checks every numeric key against its bound, and the number of `queue_priority`
    /// entries; the error names the first key out of bounds.
    pub fn validate(&self) -> Result<(), OutOfBounds> {
        self.bounded()
            .into_iter()
            .try_for_each(|(key, value, bound)| bound.check(key, value))?;
        let priorities = wide(self.queue_priority.len());
        bounds::QUEUE_PRIORITIES.check("queue_priority", priorities)
    }
}

/// A count as `u64` (exact wherever `usize` is at most 64 bits; saturates otherwise, which a
/// bound then refuses).
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The accepted range of a numeric config key, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
    /// What the largest value is, in words (shown beside it when a value is refused).
    pub max_is: &'static str,
}

impl Bound {
    /// `min..=max`; `max_is` says what `max` is.
    pub const fn new(min: u64, max: u64, max_is: &'static str) -> Self {
        Self { min, max, max_is }
    }

    /// Whether `value` of `key` is within the bound; the error names the key.
    pub fn check(&self, key: &'static str, value: u64) -> Result<(), OutOfBounds> {
        if value < self.min {
            return Err(OutOfBounds::TooSmall {
                key,
                min: self.min,
                value,
            });
        }
        if value > self.max {
            return Err(OutOfBounds::TooLarge {
                key,
                max: self.max,
                max_is: self.max_is,
                value,
            });
        }
        Ok(())
    }
}

/// A config value outside its [`Bound`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutOfBounds {
    /// Below the bound's minimum.
    #[error("{key}: must be at least {min}, got {value}")]
    TooSmall {
        /// The key, without its table.
        key: &'static str,
        /// The smallest accepted value.
        min: u64,
        /// The value given.
        value: u64,
    },
    /// Above the bound's maximum.
    #[error("{key}: must be at most {max} ({max_is}), got {value}")]
    TooLarge {
        /// The key, without its table.
        key: &'static str,
        /// The largest accepted value.
        max: u64,
        /// What the largest value is, in words.
        max_is: &'static str,
        /// The value given.
        value: u64,
    },
}

/// The bounds of the `[limits]` keys. Sizes and counts stop where memory or the protocol
/// would; timers stop where a longer one would only hide a mistake.
pub mod bounds {
    use super::Bound;

    /// `max_packet_size`, `max_connect_packet_size`: the largest remaining length MQTT can
    /// encode; below 64 bytes not even an ordinary CONNECT fits.
    pub const PACKET_SIZE: Bound = Bound::new(64, 268_435_455, "the largest MQTT packet");
    /// `max_topic_levels`.
    pub const TOPIC_LEVELS: Bound = Bound::new(1, 1024, "1024 levels");
    /// `max_user_properties` (0: no user properties accepted).
    pub const USER_PROPERTIES: Bound = Bound::new(0, 65_535, "65535 properties");
    /// `max_subscriptions_per_client` (0: no subscriptions accepted).
    pub const SUBSCRIPTIONS: Bound = Bound::new(0, 10_000_000, "ten million");
    /// `max_queued_messages`.
    pub const QUEUED_MESSAGES: Bound = Bound::new(1, 10_000_000, "ten million");
    /// `max_queued_bytes`.
    pub const QUEUED_BYTES: Bound = Bound::new(1, 1 << 40, "1 TiB");
    /// Entries of `queue_priority` (each costs a filter match per message queued).
    pub const QUEUE_PRIORITIES: Bound = Bound::new(0, 64, "64 filters");
    /// `max_inflight`, `receive_maximum`: MQTT's largest Receive Maximum.
    pub const INFLIGHT: Bound = Bound::new(1, 65_535, "MQTT's largest Receive Maximum");
    /// `topic_alias_maximum` (0: no topic aliases accepted).
    pub const TOPIC_ALIASES: Bound = Bound::new(0, 65_535, "MQTT's largest Topic Alias Maximum");
    /// `max_retained_messages` (0: no retained messages stored).
    pub const RETAINED_MESSAGES: Bound = Bound::new(0, 100_000_000, "a hundred million");
    /// `max_connections`, and a listener's `max_connections`.
    pub const CONNECTIONS: Bound = Bound::new(1, 100_000_000, "a hundred million");
    /// `max_keep_alive`: MQTT's largest keep-alive (0 would refuse every 3.x client that
    /// asks for one).
    pub const KEEP_ALIVE: Bound = Bound::new(1, 65_535, "MQTT's largest keep-alive");
    /// `connect_timeout_secs`.
    pub const CONNECT_TIMEOUT_SECS: Bound = Bound::new(1, 3600, "one hour");
    /// `max_session_expiry_secs`, `v3_session_expiry_secs`: MQTT's largest Session Expiry
    /// Interval, which means never.
    pub const SESSION_EXPIRY_SECS: Bound =
        Bound::new(0, u32::MAX as u64, "MQTT's largest Session Expiry Interval");
    /// `awaiting_rel_timeout_secs`.
    pub const AWAITING_REL_TIMEOUT_SECS: Bound = Bound::new(1, 31_536_000, "one year");
    /// `max_publish_rate`, publishes per second (0: unlimited).
    pub const PUBLISH_RATE: Bound = Bound::new(0, 10_000_000, "ten million per second");
    /// `sys_interval_secs` (0: no `$SYS` tree).
    pub const SYS_INTERVAL_SECS: Bound = Bound::new(0, 86_400, "one day");
    /// `park_idle_after_secs` (0: never parked).
    pub const PARK_IDLE_AFTER_SECS: Bound = Bound::new(0, 86_400, "one day");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_within_bounds() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn out_of_bounds_names_the_key() {
        let mut l = Limits {
            connect_timeout_secs: u64::MAX,
            ..Limits::default()
        };
        assert_eq!(
            l.validate().unwrap_err().to_string(),
            "connect_timeout_secs: must be at most 3600 (one hour), got 18446744073709551615"
        );
        l.connect_timeout_secs = 0;
        assert_eq!(
            l.validate().unwrap_err().to_string(),
            "connect_timeout_secs: must be at least 1, got 0"
        );
    }
}

/// MQTT 5 features that are switched or shaped by configuration (the `[mqtt]` table).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Features {
    /// Prefix of the Response Information returned to v5 clients that ask for it (Request
    /// Response Information = 1): the client gets `{prefix}{client id}` to build response topics
    /// under. Empty: no Response Information is returned.
    pub response_information_prefix: String,
    /// Server redirection: when set, every v5 client is refused with this Server Reference and
    /// reason 0x9C (Use another server), or 0x9D (Server moved) if `server_moved`. 3.x clients,
    /// which cannot be redirected, get CONNACK 0x03 (server unavailable).
    pub server_reference: Option<String>,
    /// Redirect permanently (0x9D) rather than temporarily (0x9C).
    pub server_moved: bool,
}
