//! The `$SYS/broker/...` tree (mosquitto's names, so existing dashboards keep working):
//! retained messages refreshed every `sys_interval_secs`, including 1/5/15-minute load
//! averages computed from counter deltas.

use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_proto::TopicName;

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;

/// Load averages of one rate, over 1, 5 and 15 minutes (per minute, like mosquitto).
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    avg: [f64; 3],
    last: u64,
}

impl Load {
    fn update(&mut self, value: u64, interval: Duration) {
        let delta = value.saturating_sub(self.last) as f64;
        self.last = value;
        let secs = interval.as_secs_f64().max(0.001);
        let per_minute = delta * 60.0 / secs;
        for (avg, window) in self.avg.iter_mut().zip([60.0, 300.0, 900.0]) {
            let k = (-secs / window).exp();
            *avg = *avg * k + per_minute * (1.0 - k);
        }
    }
}

/// The rates `$SYS/broker/load/...` reports.
#[derive(Clone, Debug, Default)]
pub struct Loads {
    entries: [(&'static str, Load); 7],
}

/// When `$SYS` was last refreshed and the running load averages.
#[derive(Debug)]
pub struct SysState {
    /// Last refresh; `None` until the first, which happens at the first tick.
    last: Option<Instant>,
    loads: Loads,
}

impl Default for SysState {
    fn default() -> Self {
        Self::new()
    }
}

impl SysState {
    /// Nothing published yet: the first tick publishes.
    pub fn new() -> Self {
        Self {
            last: None,
            loads: Loads {
                entries: [
                    ("messages/received", Load::default()),
                    ("messages/sent", Load::default()),
                    ("publish/received", Load::default()),
                    ("publish/sent", Load::default()),
                    ("publish/dropped", Load::default()),
                    ("bytes/received", Load::default()),
                    ("bytes/sent", Load::default()),
                ],
            },
        }
    }

    /// If an update is due, folds the counters into the averages and returns them.
    pub fn due(&mut self, now: Instant, interval_secs: u64, m: &Metrics) -> Option<Loads> {
        if interval_secs == 0 {
            return None;
        }
        let elapsed = match self.last {
            Some(last) => now.saturating_duration_since(last),
            None => Duration::from_secs(interval_secs),
        };
        if self.last.is_some() && elapsed < Duration::from_secs(interval_secs) {
            return None;
        }
        self.last = Some(now);
        let values = [
            m.messages_received.get(),
            m.messages_sent.get(),
            m.publish_received.get(),
            m.publish_sent.get(),
            m.publish_dropped.get(),
            m.bytes_received.get(),
            m.bytes_sent.get(),
        ];
        for ((_, load), v) in self.loads.entries.iter_mut().zip(values) {
            load.update(v, elapsed);
        }
        Some(self.loads.clone())
    }
}

/// The `$SYS` messages for one refresh.
pub fn messages(b: &Broker, disconnected: u64, loads: &Loads, now: Instant) -> Vec<Message> {
    let mut items = vec![
        ("version".to_string(), b.version().to_string()),
        (
            "uptime".to_string(),
            format!(
                "{} seconds",
                now.saturating_duration_since(b.started()).as_secs()
            ),
        ),
    ];
    items.extend(
        counters(b, disconnected)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    for (name, load) in &loads.entries {
        for (avg, window) in load.avg.iter().zip(["1min", "5min", "15min"]) {
            items.push((format!("load/{name}/{window}"), format!("{avg:.2}")));
        }
    }
    items
        .into_iter()
        .filter_map(|(name, value)| {
            let topic = TopicName::try_from_str(&format!("$SYS/broker/{name}")).ok()?;
            Some(Message::internal(topic, Bytes::from(value), true))
        })
        .collect()
}

/// Every counter `$SYS` reports, by its name under `$SYS/broker/`.
fn counters(b: &Broker, disconnected: u64) -> Vec<(&'static str, u64)> {
    let m = &b.metrics;
    let connected = m.clients_connected.get();
    vec![
        ("clients/connected", connected),
        ("clients/active", connected),
        ("clients/disconnected", disconnected),
        ("clients/inactive", disconnected),
        ("clients/total", connected + disconnected),
        ("clients/maximum", m.clients_maximum.get()),
        ("clients/expired", m.sessions_expired.get()),
        ("messages/received", m.messages_received.get()),
        ("messages/sent", m.messages_sent.get()),
        ("publish/messages/received", m.publish_received.get()),
        ("publish/messages/sent", m.publish_sent.get()),
        ("publish/messages/dropped", m.publish_dropped.get()),
        ("bytes/received", m.bytes_received.get()),
        ("bytes/sent", m.bytes_sent.get()),
        ("subscriptions/count", b.subscription_count() as u64),
        (
            "shared_subscriptions/count",
            b.shared_subscription_count() as u64,
        ),
        ("retained messages/count", b.retained_count() as u64),
        ("security/auth/refused", m.auth_refused.get()),
        ("security/acl/denied", m.acl_denied.get()),
        ("security/auth/expired", m.credentials_expired.get()),
        ("store/commits", m.store_commits.get()),
        ("store/commit_failures", m.store_commit_failures.get()),
        ("store/paused", m.store_paused.get()),
        ("store/available", m.store_available.get()),
        ("store/batches_refused", m.store_batches_refused.get()),
        ("store/recoveries", m.store_recoveries.get()),
        ("store/free_bytes", m.store_free_bytes.get()),
        ("store/low_space", m.store_low_space.get()),
        (
            "store/low_space_refused",
            m.publishes_refused_low_space.get(),
        ),
        (
            "security/connections/rate_limited",
            m.connections_rate_limited.get(),
        ),
        ("security/connections/banned", m.connections_banned.get()),
        ("security/addresses/banned", m.addresses_banned.get()),
        ("connections/over_limits", m.connect_limits_exceeded.get()),
    ]
}
