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

impl SysState {
    /// Starts the clock.
    pub fn new(now: Instant) -> Self {
        let _ = now;
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
    let m = &b.metrics;
    let connected = m.clients_connected.get();
    let mut items: Vec<(String, String)> = vec![
        ("version".into(), b.version().to_string()),
        (
            "uptime".into(),
            format!(
                "{} seconds",
                now.saturating_duration_since(b.started()).as_secs()
            ),
        ),
        ("clients/connected".into(), connected.to_string()),
        ("clients/active".into(), connected.to_string()),
        ("clients/disconnected".into(), disconnected.to_string()),
        ("clients/inactive".into(), disconnected.to_string()),
        (
            "clients/total".into(),
            (connected + disconnected).to_string(),
        ),
        (
            "clients/maximum".into(),
            m.clients_maximum.get().to_string(),
        ),
        (
            "clients/expired".into(),
            m.sessions_expired.get().to_string(),
        ),
        (
            "messages/received".into(),
            m.messages_received.get().to_string(),
        ),
        ("messages/sent".into(), m.messages_sent.get().to_string()),
        (
            "publish/messages/received".into(),
            m.publish_received.get().to_string(),
        ),
        (
            "publish/messages/sent".into(),
            m.publish_sent.get().to_string(),
        ),
        (
            "publish/messages/dropped".into(),
            m.publish_dropped.get().to_string(),
        ),
        ("bytes/received".into(), m.bytes_received.get().to_string()),
        ("bytes/sent".into(), m.bytes_sent.get().to_string()),
        (
            "subscriptions/count".into(),
            b.subscription_count().to_string(),
        ),
        (
            "shared_subscriptions/count".into(),
            b.shared_subscription_count().to_string(),
        ),
        (
            "retained messages/count".into(),
            b.retained_count().to_string(),
        ),
        (
            "security/auth/refused".into(),
            m.auth_refused.get().to_string(),
        ),
        ("security/acl/denied".into(), m.acl_denied.get().to_string()),
        ("store/commits".into(), m.store_commits.get().to_string()),
        (
            "store/commit_failures".into(),
            m.store_commit_failures.get().to_string(),
        ),
        ("store/paused".into(), m.store_paused.get().to_string()),
        (
            "security/connections/rate_limited".into(),
            m.connections_rate_limited.get().to_string(),
        ),
        (
            "security/connections/banned".into(),
            m.connections_banned.get().to_string(),
        ),
        (
            "security/addresses/banned".into(),
            m.addresses_banned.get().to_string(),
        ),
    ];
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
