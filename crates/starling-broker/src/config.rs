//! Broker limits and timers: every bound the core enforces, with its default. The binary fills
//! this from the `[limits]` and `[mqtt]` tables of the config file.

use serde::Deserialize;

/// What happens when a session's message queue is full and QoS 0 messages have already been
/// dropped to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the oldest queued message to make room for the new one.
    #[default]
    DropOldest,
    /// Keep the queue as it is and drop the new message.
    RefuseNewest,
}

/// Limits and timers of the broker core. Every field has a bound and a documented reaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted from a client (advertised in v5 CONNACK); larger: 0x95 and close.
    pub max_packet_size: u32,
    /// Largest packet accepted before CONNECT has been processed.
    pub max_connect_packet_size: u32,
    /// Most levels in a topic name or filter; more: DISCONNECT 0x83 (v5) and close.
    pub max_topic_levels: usize,
    /// Most user properties in one packet; more: protocol error.
    pub max_user_properties: usize,
    /// Most subscriptions per session; more: SUBACK 0x97 (v5) / 0x80 (v3).
    pub max_subscriptions_per_client: usize,
    /// Most messages queued per session (not yet sent); full: QoS 0 dropped first, then
    /// `queue_full_policy`. Every drop is counted.
    pub max_queued_messages: usize,
    /// Most payload bytes queued per session; same reaction as `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// What to drop when the queue is full.
    pub queue_full_policy: QueueFullPolicy,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_connect_packet_size: 64 * 1024,
            max_topic_levels: 128,
            max_user_properties: 64,
            max_subscriptions_per_client: 1000,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_full_policy: QueueFullPolicy::DropOldest,
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
        }
    }
}

impl Limits {
    /// Checks relations between fields; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_packet_size < 64 {
            return Err("max_packet_size must be at least 64".into());
        }
        if self.max_inflight == 0 {
            return Err("max_inflight must be at least 1".into());
        }
        if self.receive_maximum == 0 {
            return Err("receive_maximum must be at least 1".into());
        }
        if self.max_queued_messages == 0 {
            return Err("max_queued_messages must be at least 1".into());
        }
        if self.max_topic_levels == 0 || self.max_topic_levels > 1024 {
            return Err("max_topic_levels must be between 1 and 1024".into());
        }
        Ok(())
    }
}

/// MQTT 5 features that are switched or shaped by configuration (the `[mqtt]` table).
#[derive(Clone, Debug, Default, Deserialize)]
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
