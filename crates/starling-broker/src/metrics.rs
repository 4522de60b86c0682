//! Broker-wide counters: lock-free atomics bumped on the hot path, read by `$SYS` and the
//! metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing or current-value counter, alone on its cache line so that
/// connections bumping different counters on different cores do not slow each other down.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one (for gauges), never below zero.
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// Sets the value (for gauges).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter the broker keeps. Names follow mosquitto's `$SYS` tree where one exists.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Clients connected now.
    pub clients_connected: Counter,
    /// Most clients connected at once since start.
    pub clients_maximum: Counter,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Sessions that expired.
    pub sessions_expired: Counter,
    /// Packets received.
    pub messages_received: Counter,
    /// Packets sent.
    pub messages_sent: Counter,
    /// PUBLISH packets received.
    pub publish_received: Counter,
    /// PUBLISH packets sent.
    pub publish_sent: Counter,
    /// Messages dropped: queue full, expired, too large for the receiver, or refused.
    pub publish_dropped: Counter,
    /// Of `publish_dropped`: because a session queue was full.
    pub dropped_queue_full: Counter,
    /// Of `publish_dropped`: because the message expired while waiting.
    pub dropped_expired: Counter,
    /// Of `publish_dropped`: because it exceeded the receiver's maximum packet size.
    pub dropped_too_large: Counter,
    /// Bytes read from clients.
    pub bytes_received: Counter,
    /// Bytes written to clients.
    pub bytes_sent: Counter,
    /// Connection tasks that ended without their connection closing (a panic, or dropped at
    /// shutdown); their sessions were released as if the transport had been lost.
    pub connection_tasks_aborted: Counter,
    /// Connections closed because of a protocol violation or malformed packet.
    pub protocol_errors: Counter,
    /// Connections refused because `max_connections` was reached.
    pub connections_refused: Counter,
    /// CONNECTs refused with a CONNACK because they exceed a limit: `max_connect_packet_size`,
    /// `max_user_properties` or `max_topic_levels` (the will topic).
    pub connect_limits_exceeded: Counter,
    /// Subscriptions refused because of `max_subscriptions_per_client`.
    pub subscriptions_refused: Counter,
    /// Retained messages refused because of `max_retained_messages`.
    pub retained_refused: Counter,
    /// Clients disconnected for exceeding the broker's Receive Maximum.
    pub receive_maximum_exceeded: Counter,
    /// Times a client's reading was paused by the publish rate limit.
    pub rate_limited: Counter,
    /// Store batches committed.
    pub store_commits: Counter,
    /// Ops written by those batches.
    pub store_ops: Counter,
    /// Store batches that failed to commit (logged, and what waited on them not acknowledged).
    pub store_commit_failures: Counter,
    /// Acknowledgements answered with a failure (or a disconnect) because their commit failed.
    pub store_failures_answered: Counter,
    /// Times a connection stopped reading its client until a commit finished, because the
    /// journal was at its bound (`storage.max_uncommitted_mib`).
    pub store_paused: Counter,
    /// 1 while the store commits, 0 while it is failing (full disk, I/O error) and being
    /// retried; set by the committer.
    pub store_available: Counter,
    /// Store batches refused without being tried, because the store was failing.
    pub store_batches_refused: Counter,
    /// Times the store went from failing to available again without a restart.
    pub store_recoveries: Counter,
    /// Bytes free on the store's filesystem at the last check (with `min_free_bytes` set).
    pub store_free_bytes: Counter,
    /// 1 while free space is below `min_free_bytes` (new QoS 1/2 messages are refused).
    pub store_low_space: Counter,
    /// QoS 1/2 PUBLISHes refused because the store was low on space.
    pub publishes_refused_low_space: Counter,
    /// CONNECTs refused by authentication (bad credentials, anonymous not allowed, will
    /// topic not authorized).
    pub auth_refused: Counter,
    /// Publishes, subscriptions and deliveries refused by the authorizer (ACL).
    pub acl_denied: Counter,
    /// Connections closed at accept by the per-address connection rate limit.
    pub connections_rate_limited: Counter,
    /// Addresses banned for reconnecting in a tight loop.
    pub addresses_banned: Counter,
    /// Connections closed at accept because their address was banned.
    pub connections_banned: Counter,
}
