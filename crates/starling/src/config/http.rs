//! The `[http]` table: the HTTP listener for metrics, health checks, the admin API and the
//! dashboard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};
use starling_broker::config::Bound;

use super::is_loopback;

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Whether the HTTP listener runs.
    pub enabled: bool,
    /// Address and port.
    pub bind: SocketAddr,
    /// TLS: certificate chain, PEM (with `key_file`: HTTPS).
    pub cert_file: Option<PathBuf>,
    /// TLS: private key, PEM.
    pub key_file: Option<PathBuf>,
    /// Whether requests without credentials are served (as an admin). Default: only when
    /// `bind` is a loopback address; elsewhere every request needs credentials, and with
    /// none configured every request is refused (fail closed).
    pub open: Option<bool>,
    /// API keys (`starling apikey` manages them). Default: `api-keys` in the data directory.
    pub api_keys_file: Option<PathBuf>,
    /// mosquitto-format password file for HTTP basic auth; only users named in `admins` or
    /// `viewers` may use it.
    pub password_file: Option<PathBuf>,
    /// Users of `password_file` who may read and change.
    pub admins: Vec<String>,
    /// Users of `password_file` who may only read.
    pub viewers: Vec<String>,
    /// Largest request body accepted, bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Requests served at once; more wait for a slot, up to `request_timeout_ms`.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, milliseconds (then 503 or the connection is closed).
    pub request_timeout_ms: u64,
    /// Open HTTP connections at once; more are closed at accept.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 18080)),
            cert_file: None,
            key_file: None,
            open: None,
            api_keys_file: None,
            password_file: None,
            admins: Vec::new(),
            viewers: Vec::new(),
            max_body_bytes: 64 * 1024,
            max_concurrent_requests: 64,
            request_timeout_ms: 10_000,
            max_connections: 256,
        }
    }
}

/// Bounds of the `[http]` numbers.
pub mod bounds {
    use starling_broker::config::Bound;

    /// `http.max_body_bytes`.
    pub const MAX_BODY_BYTES: Bound = Bound::new(1024, 64 << 20, "64 MiB");
    /// `http.max_concurrent_requests`.
    pub const CONCURRENT_REQUESTS: Bound = Bound::new(1, 10_000, "ten thousand");
    /// `http.request_timeout_ms`.
    pub const REQUEST_TIMEOUT_MS: Bound = Bound::new(100, 600_000, "ten minutes");
    /// `http.max_connections`.
    pub const CONNECTIONS: Bound = Bound::new(1, 100_000, "a hundred thousand");
}

impl HttpConfig {
    /// Whether requests without credentials are served.
    pub fn is_open(&self) -> bool {
        self.open.unwrap_or_else(|| is_loopback(self.bind.ip()))
    }

    /// The API key file, in `data_dir` unless configured.
    pub fn api_keys_path(&self, data_dir: &Path) -> PathBuf {
        self.api_keys_file
            .clone()
            .unwrap_or_else(|| data_dir.join("api-keys"))
    }

    /// Every numeric key with its value and its bound.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 4] {
        let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        [
            (
                "max_body_bytes",
                wide(self.max_body_bytes),
                bounds::MAX_BODY_BYTES,
            ),
            (
                "max_concurrent_requests",
                wide(self.max_concurrent_requests),
                bounds::CONCURRENT_REQUESTS,
            ),
            (
                "request_timeout_ms",
                self.request_timeout_ms,
                bounds::REQUEST_TIMEOUT_MS,
            ),
            (
                "max_connections",
                wide(self.max_connections),
                bounds::CONNECTIONS,
            ),
        ]
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("http.cert_file and http.key_file: set both for HTTPS, or neither");
        }
        if (!self.admins.is_empty() || !self.viewers.is_empty()) && self.password_file.is_none() {
            bail!("http.password_file: required when http.admins or http.viewers name users");
        }
        if let Some(u) = self.admins.iter().find(|u| self.viewers.contains(u)) {
            bail!("http.viewers: {u:?} is also in http.admins");
        }
        Ok(())
    }
}
