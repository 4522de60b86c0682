//! Authentication and authorization backends that need the network or the binary's
//! dependencies (HTTP services, key servers), built from `[auth.*]` configuration and plugged
//! into a listener's chains (`starling_auth::chain`). Each answers at once when it can (from
//! its cache) and otherwise with a bounded future that the connection's task runs.

pub mod dynamic;
pub mod http;
pub mod introspect;
pub mod jwt;
pub mod jwt_method;
pub mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use starling_auth::{AclBackend, AuthBackend, AuthObserver, Verdict};

/// The backends configured under `[auth]`, by the name a listener's chain gives them, shared
/// by every listener that lists them, with their counters for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Backends {
    /// Authentication backends (`jwt`, `http`, `introspection`, `dynamic`, and
    /// `plugin:{name}` for each plugin that authenticates).
    pub auth: HashMap<String, Arc<dyn AuthBackend>>,
    /// Authorization backends (`http`, `dynamic`, `plugin:{name}`).
    pub acl: HashMap<String, Arc<dyn AclBackend>>,
    /// The JWT backend, for its enhanced-authentication method and counters.
    pub jwt: Option<Arc<jwt::JwtBackend>>,
    /// The HTTP backend's counters.
    pub http_stats: Option<Arc<remote::HttpAuthStats>>,
    /// The introspection backend's counters.
    pub introspection_stats: Option<Arc<remote::HttpAuthStats>>,
    /// Dynamic security: the server gives it the store's document, and the admin API.
    pub dynamic: Option<Arc<dynamic::DynamicSecurity>>,
}

impl Backends {
    /// Builds the backends `[auth]` configures. With `stop`, those that refresh in the
    /// background (a JWKS) start their tasks, which end with it; without (`check-config`),
    /// they are only loaded and checked.
    pub fn build(
        config: &crate::config::Config,
        stop: Option<&Arc<crate::connection::Stop>>,
    ) -> anyhow::Result<Self> {
        let mut b = Self::default();
        let a = &config.auth;
        if let Some(cfg) = &a.jwt {
            let j = jwt::JwtBackend::build_at(cfg, "auth.jwt", stop.cloned())?;
            b.auth.insert("jwt".into(), j.clone());
            b.jwt = Some(j);
        }
        if let Some(cfg) = &a.http {
            let h = http::HttpBackend::build(cfg)?;
            b.http_stats = Some(h.stats());
            if h.authenticates() {
                b.auth.insert("http".into(), h.clone());
            }
            if h.authorizes() {
                b.acl.insert("http".into(), h);
            }
        }
        if let Some(cfg) = &a.introspection {
            let i = introspect::IntrospectionBackend::build(cfg)?;
            b.introspection_stats = Some(i.stats());
            b.auth.insert("introspection".into(), i);
        }
        if let Some(cfg) = &a.dynamic {
            // Reads and checks `init_file`, so `check-config` does too.
            let d = dynamic::DynamicSecurity::build(cfg)?;
            b.auth.insert("dynamic".into(), d.clone());
            b.acl.insert("dynamic".into(), d.clone());
            b.dynamic = Some(d);
        }
        Ok(b)
    }

    /// Adds the authentication and authorization backends of plugins, as `plugin:{name}`.
    pub fn add_plugins(&mut self, plugins: &crate::plugin::Plugins) {
        for (name, auth) in &plugins.auth {
            self.auth.insert(format!("plugin:{name}"), auth.clone());
        }
        for (name, acl) in &plugins.acl {
            self.acl.insert(format!("plugin:{name}"), acl.clone());
        }
    }
}

/// The backend kinds counted by [`AuthCounters`], in order; the last is "none" (no backend
/// claimed the client and the anonymous rules answered).
pub const COUNTED_KINDS: [&str; 9] = [
    "password_file",
    "certificate",
    "jwt",
    "http",
    "introspection",
    "dynamic",
    "scram",
    "other",
    "none",
];

/// The answers a chain's backend can give, in the order counted.
pub const OUTCOMES: [&str; 3] = ["allow", "deny", "pass"];

/// How often each backend answered what, for `/metrics`
/// (`starling_auth_backend_answers_total{backend, result}`), and the denials in the log.
#[derive(Debug, Default)]
pub struct AuthCounters {
    counts: [[AtomicU64; OUTCOMES.len()]; COUNTED_KINDS.len()],
}

impl AuthCounters {
    /// Every (backend, result, count), in a fixed order.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(COUNTED_KINDS.len() * OUTCOMES.len());
        for (k, row) in COUNTED_KINDS.iter().zip(&self.counts) {
            for (o, n) in OUTCOMES.iter().zip(row) {
                out.push((*k, *o, n.load(Ordering::Relaxed)));
            }
        }
        out
    }
}

impl AuthObserver for AuthCounters {
    fn answered(&self, backend: Option<&'static str>, client_id: &str, verdict: &Verdict) {
        let kind = backend.unwrap_or("none");
        let k = COUNTED_KINDS
            .iter()
            .position(|x| *x == kind)
            .unwrap_or(COUNTED_KINDS.len() - 2);
        let o = match verdict {
            Verdict::Allow(_) => 0,
            Verdict::Deny(reason) => {
                tracing::info!(backend = kind, client_id, ?reason, "authentication denied");
                1
            }
            Verdict::Pass => 2,
        };
        if let Some(n) = self.counts.get(k).and_then(|row| row.get(o)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}
