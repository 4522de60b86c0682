//! The config file (TOML): listeners (transport, TLS, authentication and ACL per listener),
//! abuse limits, limits and timers, logging. Every key is optional; an unknown key, a wrong
//! type or an invalid value is an error naming the file and the key, and the broker does not
//! start. Every number has a bound ([`bounds`] here, `starling_broker::config::bounds` for
//! `[limits]`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use starling_broker::config::{Bound, OutOfBounds};
use starling_broker::{Features, Limits};

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the broker keeps its data.
    pub data_dir: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
    /// Listeners; `[[listener]]` tables.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Limits and timers of the broker core.
    pub limits: Limits,
    /// MQTT 5 features shaped by configuration.
    pub mqtt: Features,
    /// Where and how state is kept.
    pub storage: StorageConfig,
    /// Connection rate limit and reconnect-loop bans.
    pub security: SecurityConfig,
    /// The HTTP listener: metrics, health checks, admin API, dashboard.
    pub http: HttpConfig,
    /// Log lines as `text` (default) or `json`.
    pub log_format: LogFormat,
    /// Bridges to other brokers; `[[bridge]]` tables.
    #[serde(rename = "bridge", skip_serializing_if = "Vec::is_empty")]
    pub bridges: Vec<bridge::BridgeConfig>,
    /// Authentication and authorization backends for the listeners' chains.
    pub auth: auth::AuthConfig,
    /// Plugins, in the order their hooks run; `[[plugin]]` tables (see `crate::plugin`).
    #[serde(rename = "plugin", skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<toml::Table>,
    /// This node's part in a cluster (off: a single node).
    pub cluster: cluster::ClusterConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How durable acknowledged messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A QoS 1/2 message is acknowledged once committed to disk (group commit: one fsync for
    /// every message that arrived meanwhile).
    #[default]
    Sync,
    /// Changes are committed to disk every `commit_interval_ms`; a crash loses at most that
    /// window, acknowledged or not.
    Periodic,
    /// Nothing is written to disk; a restart loses every session and retained message.
    Memory,
}

/// What the broker does with durable work while the store cannot commit (a full disk, an I/O
/// error), until it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreUnavailable {
    /// Refuse it at once: QoS 1/2 PUBLISH gets 0x97 Quota exceeded (full disk) or 0x80 (other
    /// failures); a 3.x publisher, which cannot be told, is disconnected unacknowledged.
    #[default]
    Refuse,
    /// Hold it until the store is back: acknowledgements wait (durability `sync`), and once
    /// the uncommitted bound is reached the clients that feed the store are not read
    /// (backpressure); nothing is refused.
    Block,
}

/// The scheduling priority of the thread that writes to the store, beside the threads that
/// serve clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CommitPriority {
    /// The lowest (nice 19, and a transaction gives the core back every 64 operations):
    /// clients' messages do not wait behind a commit for a core; commits take the time the
    /// client threads leave.
    #[default]
    Low,
    /// The broker's own: commits share the cores equally with the client threads (for a host
    /// whose cores other processes keep busy, where `low` would leave commits little time).
    Normal,
}

/// The `[storage]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Durability mode.
    pub durability: Durability,
    /// Commit interval of `periodic`, milliseconds.
    pub commit_interval_ms: u64,
    /// Bound on the state changes waiting to be committed, MiB. At half of it `periodic`
    /// commits without waiting for its interval; at the bound clients are not read until a
    /// commit finishes (counted in `$SYS/broker/store/paused`).
    pub max_uncommitted_mib: u64,
    /// Start even if some records are damaged, leaving them out (each is logged).
    pub recover: bool,
    /// While the store cannot commit: refuse durable work, or hold it.
    pub on_store_unavailable: OnStoreUnavailable,
    /// Below this many free bytes on the data directory's filesystem the store is treated as
    /// full before it is: new durable work is refused (or held) while acknowledgements and
    /// deletions, which free space, still commit; above a quarter more it resumes. 0: off.
    pub min_free_bytes: u64,
    /// The store's page cache, MiB: the memory it may keep of the file.
    pub cache_mib: u64,
    /// The committer thread's scheduling priority.
    pub commit_priority: CommitPriority,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            commit_interval_ms: 100,
            max_uncommitted_mib: 64,
            recover: false,
            on_store_unavailable: OnStoreUnavailable::Refuse,
            min_free_bytes: 64 << 20,
            cache_mib: 32,
            commit_priority: CommitPriority::Low,
        }
    }
}

/// A listener's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// MQTT over QUIC (UDP, TLS 1.3 inside): one bidirectional stream per connection.
    Quic,
    /// MQTT over a Unix domain socket.
    Unix,
}

impl Protocol {
    /// Whether the transport is TLS, and so has certificates (`tls`, `wss`, and `quic`, whose
    /// handshake is TLS 1.3).
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss | Self::Quic)
    }

    /// Whether the transport is WebSocket (`ws`, `wss`).
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
            Self::Quic => "quic",
            Self::Unix => "unix",
        })
    }
}

/// Which part of a client certificate becomes the username.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityField {
    /// The subject's Common Name (mosquitto's `use_identity_as_username`).
    Cn,
    /// The whole subject, RFC 2253 (mosquitto's `use_subject_as_username`).
    Subject,
}

/// One listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port to bind, e.g. `127.0.0.1:1883` or `[::]:1883` (required, except for
    /// protocol `unix`, which listens on `path`).
    #[serde(default = "transport::no_bind")]
    pub bind: SocketAddr,
    /// Transport: `tcp` (default), `tls`, `ws`, `wss`, `quic` (UDP) or `unix`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Whether clients without a username may connect. Default: true only when the listener
    /// binds a loopback address (127.0.0.0/8, ::1).
    pub allow_anonymous: Option<bool>,
    /// mosquitto-format password file (`starling passwd` manages it).
    pub password_file: Option<PathBuf>,
    /// mosquitto-format ACL file; without one, every client may do everything.
    pub acl_file: Option<PathBuf>,
    /// Most clients connected through this listener (on top of `limits.max_connections`).
    pub max_connections: Option<usize>,
    /// TLS: server certificate chain, PEM (`tls`, `wss`, `quic`).
    pub cert_file: Option<PathBuf>,
    /// TLS: private key, PEM.
    pub key_file: Option<PathBuf>,
    /// TLS: CA certificates (PEM) that client certificates are verified against.
    pub ca_file: Option<PathBuf>,
    /// TLS: refuse clients without a valid certificate (needs `ca_file`).
    #[serde(default)]
    pub require_certificate: bool,
    /// TLS: take the username from the client certificate (`"cn"` or `"subject"`); the
    /// password file is then not consulted. Needs `require_certificate`. Without TLS of its
    /// own, with `proxy_protocol` `"v2"` or `"any"`: `"cn"` takes the CN of a certificate the
    /// proxy verified (the PROXY header's SSL TLV).
    pub use_identity_as_username: Option<IdentityField>,
    /// WebSocket: the HTTP path clients connect to (default `/mqtt`). Unix socket: the
    /// socket file.
    pub path: Option<String>,
    /// Unix socket: the socket file's permissions, octal (e.g. `"0660"`); default: as the
    /// process's umask leaves them.
    pub mode: Option<String>,
    /// A PROXY protocol header (`"v1"`, `"v2"` or `"any"`) must come first on every
    /// connection, from an address in `proxy_protocol_trusted`; its source address is the
    /// client's. Default: none.
    pub proxy_protocol: Option<transport::ProxyProtocol>,
    /// Addresses or networks (`"10.0.0.0/8"`) of the proxies trusted to send the PROXY
    /// header, and, on `ws` / `wss` listeners, `X-Forwarded-For` / `Forwarded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_protocol_trusted: Vec<transport::Cidr>,
    /// How long the PROXY header may take to arrive, milliseconds (default 5000).
    pub proxy_protocol_timeout_ms: Option<u64>,
    /// MQTT 5 enhanced authentication methods offered: `"SCRAM-SHA-256"` (checked against
    /// this listener's `password_file`) and `"JWT"` (a token checked by `[auth.jwt]`, which
    /// also lets a client re-authenticate with a fresh token before its token expires). A
    /// client naming another method gets CONNACK 0x8C.
    #[serde(default)]
    pub auth_methods: Vec<String>,
    /// The authentication chain: backends asked in order ([`AUTH_BACKENDS`]); the first
    /// definite answer wins, and a client none of them claims gets the anonymous rules.
    /// Default: `["certificate"]` with `use_identity_as_username`, else `["password_file"]`
    /// with a password file, else none.
    pub auth: Option<Vec<String>>,
    /// The authorization chain, asked after any rules the authentication granted the session
    /// ([`ACL_BACKENDS`]). Default: `["acl_file"]` with an ACL file, else none (everything
    /// allowed).
    pub acl: Option<Vec<String>>,
    /// What the authorization chain answers when every backend passes: `"deny"` (default)
    /// or `"allow"`.
    pub acl_no_match: Option<NoMatch>,
    /// QUIC: accept 0-RTT data (CONNECT and the packets after it in the client's first
    /// flight, on a resumed TLS session). Off by default: 0-RTT data can be replayed by
    /// anyone who captured it, so a replayed PUBLISH would be delivered again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quic_0rtt: bool,
}

/// The answer of an authorization chain whose backends all passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoMatch {
    /// Refused (the default: fail closed).
    #[default]
    Deny,
    /// Allowed.
    Allow,
}

/// Backends an authentication chain (`auth`) may list.
pub const AUTH_BACKENDS: &[&str] = &[
    "password_file",
    "certificate",
    "jwt",
    "http",
    "introspection",
    "dynamic",
    "scram",
];

/// Backends an authorization chain (`acl`) may list.
pub const ACL_BACKENDS: &[&str] = &["acl_file", "http", "dynamic"];

/// Enhanced authentication methods the broker implements.
pub const AUTH_METHODS: &[&str] = &[
    starling_auth::scram::METHOD,
    crate::authn::jwt_method::METHOD,
];

fn default_protocol() -> String {
    "tcp".into()
}

impl ListenerConfig {
    /// A plain TCP listener on `bind` with every other setting at its default.
    pub fn tcp(bind: SocketAddr) -> Self {
        Self {
            bind,
            protocol: default_protocol(),
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            max_connections: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_certificate: false,
            use_identity_as_username: None,
            path: None,
            mode: None,
            proxy_protocol: None,
            proxy_protocol_trusted: Vec::new(),
            proxy_protocol_timeout_ms: None,
            auth_methods: Vec::new(),
            auth: None,
            acl: None,
            acl_no_match: None,
            quic_0rtt: false,
        }
    }

    /// The transport (validated by [`Config::parse`]; unknown values read as `tcp`).
    pub fn protocol(&self) -> Protocol {
        match self.protocol.as_str() {
            "tls" => Protocol::Tls,
            "ws" => Protocol::Ws,
            "wss" => Protocol::Wss,
            "quic" => Protocol::Quic,
            "unix" => Protocol::Unix,
            _ => Protocol::Tcp,
        }
    }

    /// Whether anonymous clients may connect: as configured, else only on loopback binds
    /// and Unix sockets.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous.unwrap_or_else(|| self.is_local())
    }

    /// Only clients on this machine reach the listener: a loopback bind, or a Unix socket.
    pub fn is_local(&self) -> bool {
        self.protocol() == Protocol::Unix || is_loopback(self.bind.ip())
    }

    /// Where the listener listens, for names and logs: the address, or the socket file.
    pub fn endpoint(&self) -> String {
        match self.protocol() {
            Protocol::Unix => self.path.clone().unwrap_or_default(),
            _ => self.bind.to_string(),
        }
    }

    /// The WebSocket path.
    pub fn ws_path(&self) -> &str {
        self.path.as_deref().unwrap_or("/mqtt")
    }

    fn validate(&self, i: usize) -> anyhow::Result<()> {
        let key = |k: &str| format!("listener[{i}].{k}");
        let protocol = match self.protocol.as_str() {
            "tcp" | "tls" | "ws" | "wss" | "quic" | "unix" => self.protocol(),
            other => bail!(
                "{}: unsupported protocol {other:?} (supported: \"tcp\", \"tls\", \"ws\", \"wss\", \"quic\", \"unix\")",
                key("protocol")
            ),
        };
        let tls_keys = [
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("require_certificate", self.require_certificate),
        ];
        if protocol.is_tls() {
            if self.cert_file.is_none() {
                bail!("{}: required for protocol {protocol}", key("cert_file"));
            }
            if self.key_file.is_none() {
                bail!("{}: required for protocol {protocol}", key("key_file"));
            }
            if self.require_certificate && self.ca_file.is_none() {
                bail!(
                    "{}: require_certificate needs a ca_file to verify client certificates against",
                    key("ca_file")
                );
            }
            if self.use_identity_as_username.is_some() && !self.require_certificate {
                bail!(
                    "{}: use_identity_as_username needs require_certificate = true",
                    key("require_certificate")
                );
            }
        } else if let Some((k, _)) = tls_keys.iter().find(|(_, set)| *set) {
            bail!("{}: only for protocol \"tls\", \"wss\" or \"quic\"", key(k));
        }
        if self.quic_0rtt && protocol != Protocol::Quic {
            bail!("{}: only for protocol \"quic\"", key("quic_0rtt"));
        }
        if self.quic_0rtt && self.ca_file.is_some() {
            // 0-RTT serves the client before its certificate is verified.
            bail!(
                "{}: 0-RTT cannot be combined with client certificates (ca_file)",
                key("quic_0rtt")
            );
        }
        match (&self.path, protocol.is_websocket()) {
            (Some(p), true) if !p.starts_with('/') => {
                bail!("{}: must start with '/', got {p:?}", key("path"))
            }
            (Some(_), false) if protocol != Protocol::Unix => bail!(
                "{}: only for protocol \"ws\", \"wss\" or \"unix\"",
                key("path")
            ),
            _ => {}
        }
        self.validate_transport(i)?;
        if let Some(n) = self.max_connections {
            bounds::LISTENER_CONNECTIONS
                .check("max_connections", wide(n))
                .map_err(|e| anyhow::anyhow!("listener[{i}].{e}"))?;
        }
        for (n, m) in self.auth_methods.iter().enumerate() {
            if !AUTH_METHODS.contains(&m.as_str()) {
                bail!(
                    "{}: unsupported authentication method {m:?} (supported: {})",
                    key("auth_methods"),
                    AUTH_METHODS
                        .iter()
                        .map(|m| format!("{m:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if self.auth_methods.iter().take(n).any(|x| x == m) {
                bail!("{}: {m:?} is listed twice", key("auth_methods"));
            }
        }
        for (list, known, chain) in [
            ("auth", AUTH_BACKENDS, &self.auth),
            ("acl", ACL_BACKENDS, &self.acl),
        ] {
            for (n, b) in chain.iter().flatten().enumerate() {
                if !known.contains(&b.as_str()) {
                    bail!(
                        "{}: unknown backend {b:?} (known: {})",
                        key(list),
                        known
                            .iter()
                            .map(|m| format!("{m:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                if chain.iter().flatten().take(n).any(|x| x == b) {
                    bail!("{}: {b:?} is listed twice", key(list));
                }
            }
        }
        let lists = |list: &Option<Vec<String>>, b: &str| list.iter().flatten().any(|x| x == b);
        if lists(&self.auth, "password_file") && self.password_file.is_none() {
            bail!(
                "{}: the chain lists \"password_file\", which this listener does not have",
                key("password_file")
            );
        }
        if lists(&self.auth, "scram") && self.password_file.is_none() {
            bail!(
                "{}: \"scram\" checks users against the password_file, which this listener \
                 does not have",
                key("password_file")
            );
        }
        if lists(&self.auth, "certificate") && self.use_identity_as_username.is_none() {
            bail!(
                "{}: the chain lists \"certificate\", which takes the username from the field \
                 this key names (\"cn\" or \"subject\")",
                key("use_identity_as_username")
            );
        }
        if lists(&self.acl, "acl_file") && self.acl_file.is_none() {
            bail!(
                "{}: the chain lists \"acl_file\", which this listener does not have",
                key("acl_file")
            );
        }
        let scram = self
            .auth_methods
            .iter()
            .any(|m| m == starling_auth::scram::METHOD);
        if scram && self.password_file.is_none() {
            bail!(
                "{}: SCRAM-SHA-256 checks users against the password_file, which this \
                 listener does not have",
                key("password_file")
            );
        }
        Ok(())
    }
}

/// Loopback: 127.0.0.0/8, ::1, and IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// `[security]`: limits on how fast one address may connect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// New connections per second from one address (burst: the same number); more are
    /// closed at accept. 0: unlimited.
    pub max_connection_rate: u32,
    /// An address that opens this many connections within `flapping_window_secs` is banned
    /// for `ban_secs`. 0: no bans.
    pub flapping_max_connects: u32,
    /// Window for `flapping_max_connects`, seconds.
    pub flapping_window_secs: u64,
    /// How long a ban lasts, seconds.
    pub ban_secs: u64,
    /// Whether loopback addresses are exempt (a local proxy or test client would otherwise
    /// be banned for everyone behind it).
    pub exempt_loopback: bool,
    /// Most addresses tracked at once; beyond it, new addresses are not limited until old
    /// entries age out (memory stays bounded).
    pub max_tracked_addresses: usize,
}

impl SecurityConfig {
    /// Every numeric key with its value and its bound.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 5] {
        [
            (
                "max_connection_rate",
                self.max_connection_rate.into(),
                bounds::CONNECTION_RATE,
            ),
            (
                "flapping_max_connects",
                self.flapping_max_connects.into(),
                bounds::FLAPPING_MAX_CONNECTS,
            ),
            (
                "flapping_window_secs",
                self.flapping_window_secs,
                bounds::FLAPPING_WINDOW_SECS,
            ),
            ("ban_secs", self.ban_secs, bounds::BAN_SECS),
            (
                "max_tracked_addresses",
                wide(self.max_tracked_addresses),
                bounds::TRACKED_ADDRESSES,
            ),
        ]
    }
}

impl StorageConfig {
    /// Every numeric key with its value and its bound.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 4] {
        [
            (
                "commit_interval_ms",
                self.commit_interval_ms,
                bounds::COMMIT_INTERVAL_MS,
            ),
            (
                "max_uncommitted_mib",
                self.max_uncommitted_mib,
                bounds::MAX_UNCOMMITTED_MIB,
            ),
            (
                "min_free_bytes",
                self.min_free_bytes,
                bounds::MIN_FREE_BYTES,
            ),
            ("cache_mib", self.cache_mib, bounds::CACHE_MIB),
        ]
    }
}

/// The bounds of the `[security]` and `[storage]` keys and of a listener's `max_connections`
/// (those of `[limits]` are in `starling_broker::config::bounds`).
pub mod bounds {
    use starling_broker::config::Bound;

    /// `security.max_connection_rate`, connections per second (0: unlimited).
    pub const CONNECTION_RATE: Bound = Bound::new(0, 1_000_000, "a million per second");
    /// `security.flapping_max_connects` (0: no bans).
    pub const FLAPPING_MAX_CONNECTS: Bound = Bound::new(0, 1_000_000, "a million");
    /// `security.flapping_window_secs`.
    pub const FLAPPING_WINDOW_SECS: Bound = Bound::new(1, 86_400, "one day");
    /// `security.ban_secs` (to ban no one, set `flapping_max_connects = 0`).
    pub const BAN_SECS: Bound = Bound::new(1, 31_536_000, "one year");
    /// `security.max_tracked_addresses`.
    pub const TRACKED_ADDRESSES: Bound = Bound::new(1, 10_000_000, "ten million");
    /// `storage.commit_interval_ms`.
    pub const COMMIT_INTERVAL_MS: Bound = Bound::new(1, 3_600_000, "one hour");
    /// `storage.max_uncommitted_mib`.
    pub const MAX_UNCOMMITTED_MIB: Bound = Bound::new(1, 1 << 20, "1 TiB");
    /// `storage.min_free_bytes` (0: no limit).
    pub const MIN_FREE_BYTES: Bound = Bound::new(0, 1 << 50, "1 PiB");
    /// `storage.cache_mib`.
    pub const CACHE_MIB: Bound = Bound::new(1, 1 << 20, "1 TiB");
    /// A listener's `max_connections`: as `limits.max_connections` (well within what a
    /// semaphore can count).
    pub const LISTENER_CONNECTIONS: Bound = starling_broker::config::bounds::CONNECTIONS;
}

/// A count as `u64` (exact wherever `usize` is at most 64 bits; saturates otherwise, which a
/// bound then refuses).
fn wide(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Checks every `(key, value, bound)` of the table `table`; the error names `table.key`.
fn check_table<const N: usize>(
    table: &str,
    keys: [(&'static str, u64, Bound); N],
) -> anyhow::Result<()> {
    keys.into_iter()
        .try_for_each(|(key, value, bound)| bound.check(key, value))
        .map_err(|e: OutOfBounds| anyhow::anyhow!("{table}.{e}"))
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            max_connection_rate: 20,
            flapping_max_connects: 60,
            flapping_window_secs: 60,
            ban_secs: 300,
            exempt_loopback: true,
            max_tracked_addresses: 100_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("starling-data"),
            log_level: "info".into(),
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                1883,
            )))],
            limits: Limits::default(),
            mqtt: Features::default(),
            storage: StorageConfig::default(),
            security: SecurityConfig::default(),
            http: HttpConfig::default(),
            log_format: LogFormat::default(),
            bridges: Vec::new(),
            auth: auth::AuthConfig::default(),
            plugins: Vec::new(),
            cluster: cluster::ClusterConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_with_env(text, &env::Overrides::none())
    }

    /// Reads a config file (or starts from the defaults without one), applies the
    /// environment overrides (see [`env`]) and validates the result.
    pub fn load_with_env(path: Option<&Path>, overrides: &env::Overrides) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Self::parse_with_env("", overrides)
                .context("invalid configuration from the environment");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse_with_env(&text, overrides)
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses config text, applies the environment overrides and validates the result. Every
    /// error names the key (`listener[1].bind: ...`), and the variable when one set it.
    pub fn parse_with_env(text: &str, overrides: &env::Overrides) -> anyhow::Result<Self> {
        let config: Config = env::from_text(text)?;
        if overrides.is_empty() {
            config.validate()?;
            return Ok(config);
        }
        // A tree holds integers as i64: a larger one, which the config refuses anyway, is
        // reported as the validation reports it.
        let tree: toml::Table = match env::from_text(text) {
            Ok(tree) => tree,
            Err(e) => {
                config.validate()?;
                return Err(e.into());
            }
        };
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| anyhow::anyhow!("cannot serialize the default config: {e}"))?;
        let (config, applied): (Config, _) = env::apply(&tree, &defaults, overrides)?;
        if let Err(e) = config.validate() {
            let message = format!("{e:#}");
            if let Some(a) = applied.iter().find(|a| {
                message
                    .strip_prefix(a.key.as_str())
                    .is_some_and(|rest| rest.starts_with(':'))
            }) {
                return Err(e.context(format!("set by environment variable {}", a.var)));
            }
            return Err(e);
        }
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.listeners.is_empty() {
            bail!("listener: at least one [[listener]] is required");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(i)?;
        }
        check_table("security", self.security.bounded())?;
        self.limits
            .validate()
            .map_err(|e| anyhow::anyhow!("limits.{e}"))?;
        check_table("storage", self.storage.bounded())?;
        check_table("http", self.http.bounded())?;
        self.http.validate()?;
        bridge::validate_all(&self.bridges)?;
        self.auth.validate(&self.listeners)?;
        crate::plugin::validate(&self.plugins)?;
        check_table("cluster", self.cluster.bounded())?;
        self.cluster.validate()?;
        Ok(())
    }
}

pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod env;
pub mod http;
pub mod transport;
pub use http::HttpConfig;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod transport_tests;
