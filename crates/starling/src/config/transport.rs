//! A listener's transport keys beyond the address: the PROXY protocol (`proxy_protocol`,
//! `proxy_protocol_trusted`, `proxy_protocol_timeout_ms`), which also says whose
//! `X-Forwarded-For` / `Forwarded` headers a WebSocket listener believes, and the Unix
//! domain socket listener (`protocol = "unix"`, `path`, `mode`). Their types and their
//! validation live here; `config.rs` holds the keys.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use starling_broker::config::Bound;
use starling_proto::proxy::Versions;

use super::{IdentityField, ListenerConfig, Protocol};

/// Which PROXY protocol header a listener requires before anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The text header.
    V1,
    /// The binary header (TLVs: the TLS details, the client certificate's CN).
    V2,
    /// Either.
    Any,
}

impl ProxyProtocol {
    /// The versions the parser accepts.
    pub fn versions(self) -> Versions {
        match self {
            Self::V1 => Versions::V1,
            Self::V2 => Versions::V2,
            Self::Any => Versions::Any,
        }
    }
}

/// `proxy_protocol_timeout_ms`: how long the header may take to arrive.
pub const PROXY_TIMEOUT_MS: Bound = Bound::new(10, 60_000, "one minute");

/// The default of `proxy_protocol_timeout_ms`.
pub const DEFAULT_PROXY_TIMEOUT_MS: u64 = 5_000;

/// A bind address that was not given (Unix socket listeners have a path instead). An
/// address listening on every interface at a port chosen by the system is no use to clients
/// and is refused as a TCP listener's address.
pub(super) fn no_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// An IP network, `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.as_str(), None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network (e.g. \"10.0.0.0/8\")"))?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { net, prefix })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `ip` is in any of `nets`.
pub fn trusted(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

impl ListenerConfig {
    /// How long the PROXY header may take to arrive.
    pub fn proxy_timeout(&self) -> Duration {
        Duration::from_millis(
            self.proxy_protocol_timeout_ms
                .unwrap_or(DEFAULT_PROXY_TIMEOUT_MS),
        )
    }

    /// The identity comes from the PROXY v2 SSL TLV (TLS ended at the proxy): a listener
    /// without TLS of its own that takes the username from the client certificate.
    pub fn identity_from_proxy(&self) -> bool {
        self.use_identity_as_username.is_some()
            && !self.protocol().is_tls()
            && self.proxy_protocol.is_some_and(|p| p != ProxyProtocol::V1)
    }

    /// The Unix socket file's permissions (`mode`, octal), if set.
    pub fn unix_mode(&self) -> Option<u32> {
        self.mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
    }

    /// Checks the transport keys of listener `i`.
    pub(super) fn validate_transport(&self, i: usize) -> anyhow::Result<()> {
        let key = |k: &str| format!("listener[{i}].{k}");
        let protocol = self.protocol();
        if protocol == Protocol::Unix {
            match self.path.as_deref() {
                None | Some("") => {
                    bail!(
                        "{}: required for protocol \"unix\" (the socket file)",
                        key("path")
                    )
                }
                Some(_) => {}
            }
            if self.bind != no_bind() {
                bail!(
                    "{}: not for protocol \"unix\", which listens on `path`",
                    key("bind")
                );
            }
            if let Some(m) = &self.mode {
                let ok = (1..=4).contains(&m.len())
                    && m.bytes().all(|b| (b'0'..=b'7').contains(&b))
                    && self.unix_mode().is_some_and(|v| v <= 0o777);
                if !ok {
                    bail!(
                        "{}: an octal file mode such as \"0660\" (at most 0777), got {m:?}",
                        key("mode")
                    );
                }
            }
        } else {
            if self.bind == no_bind() {
                bail!(
                    "{}: required (an address and port such as \"0.0.0.0:1883\")",
                    key("bind")
                );
            }
            if self.mode.is_some() {
                bail!("{}: only for protocol \"unix\"", key("mode"));
            }
        }
        match self.proxy_protocol {
            Some(_) if protocol == Protocol::Unix => {
                bail!("{}: not for protocol \"unix\"", key("proxy_protocol"))
            }
            Some(_) if self.proxy_protocol_trusted.is_empty() => bail!(
                "{}: proxy_protocol needs the proxies' addresses, e.g. [\"10.0.0.0/8\"]",
                key("proxy_protocol_trusted")
            ),
            None if !self.proxy_protocol_trusted.is_empty() && !protocol.is_websocket() => {
                bail!(
                    "{}: only with proxy_protocol (or on a \"ws\" / \"wss\" listener, for \
                     X-Forwarded-For)",
                    key("proxy_protocol_trusted")
                )
            }
            None if self.proxy_protocol_timeout_ms.is_some() => {
                bail!(
                    "{}: only with proxy_protocol",
                    key("proxy_protocol_timeout_ms")
                )
            }
            _ => {}
        }
        if let Some(ms) = self.proxy_protocol_timeout_ms {
            PROXY_TIMEOUT_MS
                .check("proxy_protocol_timeout_ms", ms)
                .map_err(|e| anyhow::anyhow!("listener[{i}].{e}"))?;
        }
        if self.use_identity_as_username.is_some() && !protocol.is_tls() {
            if !self.identity_from_proxy() {
                bail!(
                    "{}: only for protocol \"tls\" or \"wss\", or with proxy_protocol \"v2\" or \
                     \"any\" (the CN of the PROXY header's SSL TLV)",
                    key("use_identity_as_username")
                );
            }
            if self.use_identity_as_username != Some(IdentityField::Cn) {
                bail!(
                    "{}: the PROXY header carries the certificate's CN only: use \"cn\"",
                    key("use_identity_as_username")
                );
            }
        }
        Ok(())
    }
}
