//! Per-address abuse limits, checked when a socket is accepted, before any TLS or MQTT work:
//! a connection rate (token bucket per address) and a ban for addresses that reconnect in a
//! tight loop (more than `flapping_max_connects` connections within `flapping_window_secs`).
//! Refused sockets are closed at once and counted in the broker's metrics.
//!
//! Memory is bounded by `max_tracked_addresses`: idle entries are pruned (at most once a
//! second); when the table is still full, new addresses go unlimited until room frees up.
//!
//! No time here is computed by adding a configured duration to an instant: a ban is kept as
//! when it started and compared by elapsed time, so no `ban_secs` can overflow a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use starling_broker::Metrics;
use starling_broker::bucket::TokenBucket;
use tracing::{info, warn};

use crate::config::{SecurityConfig, is_loopback};

/// The outcome of [`AddressLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Over the connection rate: close this socket.
    RateLimited,
    /// The address is banned: close this socket.
    Banned,
}

#[derive(Debug)]
struct Entry {
    /// The connection rate (`max_connection_rate`).
    bucket: TokenBucket,
    window_start: Instant,
    count: u32,
    /// When the current ban started; it lasts `ban_secs` from then.
    banned_since: Option<Instant>,
}

#[derive(Debug)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    next_prune: Instant,
    warned_full: bool,
}

/// How often idle entries may be pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Connection rate limits and bans by client address.
#[derive(Debug)]
pub struct AddressLimiter {
    config: SecurityConfig,
    /// `ban_secs`.
    ban: Duration,
    table: Mutex<Table>,
}

impl AddressLimiter {
    /// A limiter with `config`'s limits.
    pub fn new(config: SecurityConfig, now: Instant) -> Self {
        Self {
            ban: Duration::from_secs(config.ban_secs),
            config,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                next_prune: now,
                warned_full: false,
            }),
        }
    }

    /// Whether a ban that started at `since` still holds at `now`.
    fn banned(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) < self.ban
    }

    fn disabled(&self) -> bool {
        self.config.max_connection_rate == 0 && self.config.flapping_max_connects == 0
    }

    /// Whether `ip` is, or can be, tracked: at the bound, idle entries are pruned (at most
    /// once a second) and a full table is reported once.
    fn has_room(&self, table: &mut Table, ip: IpAddr, now: Instant, window: Duration) -> bool {
        let max = self.config.max_tracked_addresses;
        if table.entries.contains_key(&ip) || table.entries.len() < max {
            return true;
        }
        if now >= table.next_prune {
            // An instant a second from now always exists in practice; if it did not, pruning
            // would merely be tried again on the next check.
            table.next_prune = now.checked_add(PRUNE_EVERY).unwrap_or(now);
            let idle = window.max(PRUNE_EVERY);
            table.entries.retain(|_, e| {
                e.banned_since.is_some_and(|t| self.banned(t, now))
                    || now.saturating_duration_since(e.window_start) < idle
                    || now.saturating_duration_since(e.bucket.updated()) < PRUNE_EVERY
            });
        }
        if table.entries.len() >= max {
            if !table.warned_full {
                table.warned_full = true;
                warn!(
                    max,
                    "address table full: new addresses are not rate limited until entries age out"
                );
            }
            return false;
        }
        table.warned_full = false;
        true
    }

    /// Records a new connection from `ip` and says whether to serve it; refusals are counted
    /// in `metrics`.
    pub fn check(&self, ip: IpAddr, now: Instant, metrics: &Metrics) -> Verdict {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.disabled() || (self.config.exempt_loopback && is_loopback(ip)) {
            return Verdict::Allow;
        }
        let c = &self.config;
        let window = Duration::from_secs(c.flapping_window_secs);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !self.has_room(&mut table, ip, now, window) {
            return Verdict::Allow;
        }
        let e = table.entries.entry(ip).or_insert(Entry {
            bucket: TokenBucket::full(c.max_connection_rate, now),
            window_start: now,
            count: 0,
            banned_since: None,
        });
        if let Some(since) = e.banned_since {
            if self.banned(since, now) {
                metrics.connections_banned.inc();
                return Verdict::Banned;
            }
            e.banned_since = None;
            e.window_start = now;
            e.count = 0;
        }
        if c.flapping_max_connects > 0 {
            if now.saturating_duration_since(e.window_start) >= window {
                e.window_start = now;
                e.count = 0;
            }
            e.count = e.count.saturating_add(1);
            if e.count > c.flapping_max_connects {
                e.banned_since = Some(now);
                metrics.addresses_banned.inc();
                metrics.connections_banned.inc();
                info!(
                    address = %ip,
                    connects = e.count,
                    window_secs = c.flapping_window_secs,
                    ban_secs = c.ban_secs,
                    "address banned: reconnecting in a tight loop"
                );
                return Verdict::Banned;
            }
        }
        if c.max_connection_rate > 0 && !e.bucket.try_take(now) {
            metrics.connections_rate_limited.inc();
            return Verdict::RateLimited;
        }
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: u32, flapping: u32) -> SecurityConfig {
        SecurityConfig {
            max_connection_rate: rate,
            flapping_max_connects: flapping,
            flapping_window_secs: 60,
            ban_secs: 300,
            exempt_loopback: false,
            max_tracked_addresses: 2,
        }
    }

    #[test]
    fn rate_limit_refills() {
        let t0 = Instant::now();
        let m = Metrics::default();
        let l = AddressLimiter::new(config(2, 0), t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.check(ip, t0, &m), Verdict::Allow);
        assert_eq!(l.check(ip, t0, &m), Verdict::Allow);
        assert_eq!(l.check(ip, t0, &m), Verdict::RateLimited);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(l.check(other, t0, &m), Verdict::Allow);
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!(l.check(ip, t1, &m), Verdict::Allow);
        assert_eq!(m.connections_rate_limited.get(), 1);
    }

    #[test]
    fn flapping_bans_then_expires() {
        let t0 = Instant::now();
        let m = Metrics::default();
        let l = AddressLimiter::new(config(0, 3), t0);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check(ip, t0, &m), Verdict::Allow);
        }
        assert_eq!(l.check(ip, t0, &m), Verdict::Banned);
        assert_eq!(m.addresses_banned.get(), 1);
        let later = t0 + Duration::from_secs(200);
        assert_eq!(l.check(ip, later, &m), Verdict::Banned);
        let after = t0 + Duration::from_secs(301);
        assert_eq!(l.check(ip, after, &m), Verdict::Allow);
        assert_eq!(m.connections_banned.get(), 2);
    }

    #[test]
    fn the_longest_ban_does_not_overflow_the_clock() {
        let t0 = Instant::now();
        let m = Metrics::default();
        let mut cfg = config(0, 1);
        cfg.ban_secs = u64::MAX;
        let l = AddressLimiter::new(cfg, t0);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(l.check(ip, t0, &m), Verdict::Allow);
        assert_eq!(l.check(ip, t0, &m), Verdict::Banned);
        let much_later = t0 + Duration::from_secs(10 * 365 * 24 * 3600);
        assert_eq!(l.check(ip, much_later, &m), Verdict::Banned);
    }

    #[test]
    fn table_is_bounded_and_loopback_exempt() {
        let t0 = Instant::now();
        let m = Metrics::default();
        let l = AddressLimiter::new(config(1, 0), t0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        l.check(a, t0, &m);
        l.check(b, t0, &m);
        // Full: c is not tracked, so not limited.
        assert_eq!(l.check(c, t0, &m), Verdict::Allow);
        assert_eq!(l.check(c, t0, &m), Verdict::Allow);
        // Once a and b are idle they are pruned and c is tracked.
        let later = t0 + Duration::from_secs(120);
        assert_eq!(l.check(c, later, &m), Verdict::Allow);
        assert_eq!(l.check(c, later, &m), Verdict::RateLimited);

        let mut cfg = config(1, 1);
        cfg.exempt_loopback = true;
        let l = AddressLimiter::new(cfg, t0);
        let lo: IpAddr = "127.0.0.5".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(l.check(lo, t0, &m), Verdict::Allow);
        }
    }
}
