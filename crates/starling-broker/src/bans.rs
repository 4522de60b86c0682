//! Bans set by an operator (admin API): a client id, a username or an address that may not
//! connect, for a while or until lifted. A banned CONNECT is refused with CONNACK 0x8A
//! (Banned; 3.x: return code 5, not authorized); a banned address is closed at accept.
//!
//! The automatic bans of addresses that reconnect in a tight loop are the listener's
//! business (`starling::limiter`); these are the ones a person decided. They are not
//! persisted: a restart lifts them (a permanent ban belongs in the ACL or password file).
//! Time is passed in; an expired ban is ignored at once and removed at the next tick.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most bans held at once; adding one more is refused.
pub const MAX_BANS: usize = 100_000;

/// What a ban applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BanKind {
    /// A client identifier.
    ClientId,
    /// A username.
    Username,
    /// A client address (IPv4 or IPv6).
    Address,
}

impl BanKind {
    /// Its name in the API: `clientid`, `username`, `address`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientId => "clientid",
            Self::Username => "username",
            Self::Address => "address",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "clientid" => Some(Self::ClientId),
            "username" => Some(Self::Username),
            "address" => Some(Self::Address),
            _ => None,
        }
    }
}

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// What it applies to.
    pub kind: BanKind,
    /// The client id, username or address (an address in its canonical text form).
    pub value: String,
    /// Why, as the operator said.
    pub reason: String,
    /// When it was set.
    pub since: Instant,
    /// How long it lasts; `None`: until lifted.
    pub duration: Option<Duration>,
}

impl Ban {
    /// Whether it still applies at `now`.
    pub fn active(&self, now: Instant) -> bool {
        self.duration
            .is_none_or(|d| now.saturating_duration_since(self.since) < d)
    }
}

/// Why a ban could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BanError {
    /// [`MAX_BANS`] are held.
    #[error("too many bans (at most {MAX_BANS})")]
    Full,
    /// An address ban whose value is not an IP address.
    #[error("not an IP address: {0:?}")]
    BadAddress(String),
    /// An empty client id or username.
    #[error("the value is empty")]
    Empty,
}

/// The operator's bans. Checking is one atomic load while there are none.
#[derive(Debug, Default)]
pub struct Bans {
    map: RwLock<HashMap<(BanKind, String), Ban>>,
    /// Mirrors the map's length, so the CONNECT path skips the lock when nobody is banned.
    len: AtomicUsize,
}

impl Bans {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(BanKind, String), Ban>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(BanKind, String), Ban>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or replaces) a ban. Addresses are normalised (`::ffff:1.2.3.4` is `1.2.3.4`).
    pub fn add(&self, mut ban: Ban) -> Result<Ban, BanError> {
        if ban.value.is_empty() {
            return Err(BanError::Empty);
        }
        if ban.kind == BanKind::Address {
            let ip: IpAddr = ban
                .value
                .parse()
                .map_err(|_| BanError::BadAddress(ban.value.clone()))?;
            ban.value = canonical(ip).to_string();
        }
        let mut map = self.write();
        let key = (ban.kind, ban.value.clone());
        if !map.contains_key(&key) && map.len() >= MAX_BANS {
            return Err(BanError::Full);
        }
        map.insert(key, ban.clone());
        self.len.store(map.len(), Ordering::Relaxed);
        Ok(ban)
    }

    /// Lifts a ban; whether there was one.
    pub fn remove(&self, kind: BanKind, value: &str) -> bool {
        let value = match kind {
            BanKind::Address => match value.parse::<IpAddr>() {
                Ok(ip) => canonical(ip).to_string(),
                Err(_) => return false,
            },
            _ => value.to_owned(),
        };
        let mut map = self.write();
        let had = map.remove(&(kind, value)).is_some();
        self.len.store(map.len(), Ordering::Relaxed);
        had
    }

    /// Every ban still in force, ordered by kind and value.
    pub fn list(&self, now: Instant) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .read()
            .values()
            .filter(|b| b.active(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
        v
    }

    /// Number of bans held (expired ones until the next [`Bans::prune`]).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ban that stops a client with this id and username, if any.
    pub fn connect_banned(
        &self,
        client_id: &str,
        username: Option<&str>,
        now: Instant,
    ) -> Option<BanKind> {
        if self.is_empty() {
            return None;
        }
        let map = self.read();
        let hit = |kind, value: &str| {
            map.get(&(kind, value.to_owned()))
                .is_some_and(|b| b.active(now))
        };
        if hit(BanKind::ClientId, client_id) {
            return Some(BanKind::ClientId);
        }
        username
            .filter(|u| hit(BanKind::Username, u))
            .map(|_| BanKind::Username)
    }

    /// Whether connections from `ip` are banned.
    pub fn address_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.is_empty() {
            return false;
        }
        let key = (BanKind::Address, canonical(ip).to_string());
        self.read().get(&key).is_some_and(|b| b.active(now))
    }

    /// Removes expired bans.
    pub fn prune(&self, now: Instant) {
        if self.is_empty() {
            return;
        }
        let mut map = self.write();
        map.retain(|_, b| b.active(now));
        self.len.store(map.len(), Ordering::Relaxed);
    }
}

/// An IPv4-mapped IPv6 address as IPv4, others as they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(kind: BanKind, value: &str, now: Instant, secs: Option<u64>) -> Ban {
        Ban {
            kind,
            value: value.into(),
            reason: String::new(),
            since: now,
            duration: secs.map(Duration::from_secs),
        }
    }

    #[test]
    fn client_id_username_and_address_bans_apply_until_they_expire() {
        let t = Instant::now();
        let bans = Bans::default();
        assert_eq!(bans.connect_banned("a", Some("u"), t), None);
        bans.add(ban(BanKind::ClientId, "a", t, Some(10))).unwrap();
        bans.add(ban(BanKind::Username, "u", t, None)).unwrap();
        bans.add(ban(BanKind::Address, "::ffff:10.0.0.1", t, None))
            .unwrap();
        assert_eq!(bans.connect_banned("a", None, t), Some(BanKind::ClientId));
        assert_eq!(
            bans.connect_banned("b", Some("u"), t),
            Some(BanKind::Username)
        );
        assert_eq!(bans.connect_banned("b", Some("v"), t), None);
        assert!(bans.address_banned("10.0.0.1".parse().unwrap(), t));
        assert!(!bans.address_banned("10.0.0.2".parse().unwrap(), t));
        let later = t + Duration::from_secs(10);
        assert_eq!(bans.connect_banned("a", None, later), None);
        assert_eq!(bans.list(later).len(), 2);
        bans.prune(later);
        assert_eq!(bans.len(), 2);
        assert!(bans.remove(BanKind::Address, "10.0.0.1"));
        assert!(!bans.remove(BanKind::Address, "10.0.0.1"));
        assert!(!bans.address_banned("10.0.0.1".parse().unwrap(), later));
    }

    #[test]
    fn bad_values_are_refused() {
        let t = Instant::now();
        let bans = Bans::default();
        assert_eq!(
            bans.add(ban(BanKind::Address, "nope", t, None)),
            Err(BanError::BadAddress("nope".into()))
        );
        assert_eq!(
            bans.add(ban(BanKind::ClientId, "", t, None)),
            Err(BanError::Empty)
        );
        assert!(bans.is_empty());
    }
}
