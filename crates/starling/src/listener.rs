//! Each listener's runtime, loaded from its config: the password and ACL files (each file
//! loaded once however many listeners name it, so one reload serves them all), the TLS
//! certificates, the enhanced authentication methods, and the access policy built from them,
//! with warnings about risky or useless combinations.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use starling_auth::{
    AclAuthorizer, AclBackend, AclChain, AuthBackend, AuthChain, Authorizer, CertificateBackend,
    EnhancedAuth, PasswordAuthenticator, ScramSha256,
};
use starling_broker::ListenerAccess;
use starling_broker::metrics::Counter;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::authn::{AuthCounters, Backends};
use crate::config::{Config, ListenerConfig, NoMatch, Protocol, bounds};
use crate::reload::Reloadable;
use crate::tls::TlsListener;

/// Everything a listener needs to serve a connection.
#[derive(Debug)]
pub(crate) struct ListenerRuntime {
    pub(crate) protocol: Protocol,
    /// Authentication and authorization applied to each connection.
    pub(crate) access: Arc<ListenerAccess>,
    /// TLS settings and the current acceptor (`tls`, `wss`).
    pub(crate) tls: Option<Arc<TlsListener>>,
    /// WebSocket path (`ws`, `wss`).
    pub(crate) ws_path: String,
    /// QUIC: 0-RTT data accepted (`quic_0rtt`).
    pub(crate) quic_0rtt: bool,
    /// This listener's own connection cap, if set.
    pub(crate) permits: Option<Arc<Semaphore>>,
    /// Connections accepted since start.
    pub(crate) accepted: Arc<Counter>,
    /// The PROXY header it requires and the proxies it trusts, if any.
    pub(crate) forwarding: Option<crate::proxy_protocol::Forwarding>,
}

/// Every listener's loaded files and certificates, ready to serve.
pub(crate) struct Listeners {
    pub(crate) runtimes: Vec<Arc<ListenerRuntime>>,
    pub(crate) reloadable: Reloadable,
    /// The HTTP listener's basic auth users (`[http] password_file`).
    pub(crate) http_passwords: Option<Arc<PasswordAuthenticator>>,
    /// The ACL of the first listener that has one: what the admin API checks a publish
    /// made on a user's behalf against.
    pub(crate) first_acl: Option<Arc<AclAuthorizer>>,
    /// What the authentication chains' backends answered, for `/metrics`.
    pub(crate) auth_counters: Arc<AuthCounters>,
    /// The `[auth]` backends (their counters, the admin API's dynamic security); set by the
    /// server.
    pub(crate) backends: Backends,
}

impl Listeners {
    /// Loads every listener's files and certificates, and builds its chains over `backends`
    /// (answers counted in `counters`); errors name the listener and the file.
    pub(crate) fn load(
        config: &Config,
        backends: &Backends,
        counters: &Arc<AuthCounters>,
    ) -> anyhow::Result<Self> {
        let mut files = FileCache::default();
        let mut reloadable = Reloadable::default();
        let mut runtimes = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let shared = Shared {
                files: &mut files,
                reloadable: &mut reloadable,
                backends,
                counters,
            };
            runtimes.push(Arc::new(listener_runtime(l, i, shared)?));
        }
        let first_acl = config
            .listeners
            .iter()
            .find_map(|l| l.acl_file.as_ref())
            .and_then(|p| files.acls.get(p).cloned());
        let http_passwords = match &config.http.password_file {
            Some(p) if config.http.enabled => Some(
                files
                    .passwords(p)
                    .with_context(|| format!("http.password_file {}", p.display()))?,
            ),
            _ => None,
        };
        reloadable.passwords = files.passwords.into_values().collect();
        reloadable.acls = files.acls.into_values().collect();
        Ok(Self {
            runtimes,
            reloadable,
            http_passwords,
            first_acl,
            auth_counters: counters.clone(),
            backends: Backends::default(),
        })
    }
}

/// Loads each file once, however many listeners name it, so one reload serves them all.
#[derive(Debug, Default)]
struct FileCache {
    passwords: HashMap<PathBuf, Arc<PasswordAuthenticator>>,
    acls: HashMap<PathBuf, Arc<AclAuthorizer>>,
}

impl FileCache {
    fn passwords(&mut self, path: &PathBuf) -> anyhow::Result<Arc<PasswordAuthenticator>> {
        if let Some(p) = self.passwords.get(path) {
            return Ok(p.clone());
        }
        let p = Arc::new(PasswordAuthenticator::load(path)?);
        self.passwords.insert(path.clone(), p.clone());
        Ok(p)
    }

    fn acl(&mut self, path: &PathBuf) -> anyhow::Result<Arc<AclAuthorizer>> {
        if let Some(a) = self.acls.get(path) {
            return Ok(a.clone());
        }
        let a = Arc::new(AclAuthorizer::load(path)?);
        self.acls.insert(path.clone(), a.clone());
        Ok(a)
    }
}

/// What listeners share while they are loaded.
struct Shared<'a> {
    files: &'a mut FileCache,
    reloadable: &'a mut Reloadable,
    backends: &'a Backends,
    counters: &'a Arc<AuthCounters>,
}

fn listener_runtime(
    l: &ListenerConfig,
    i: usize,
    shared: Shared<'_>,
) -> anyhow::Result<ListenerRuntime> {
    let Shared {
        files,
        reloadable,
        backends,
        counters,
    } = shared;
    let protocol = l.protocol();
    let name: Arc<str> = format!("{protocol} {}", l.endpoint()).into();
    let context = || format!("listener[{i}] ({name})");
    let passwords = match &l.password_file {
        Some(path) => Some(files.passwords(path).with_context(context)?),
        None => None,
    };
    let acl_file = match &l.acl_file {
        Some(path) => Some(files.acl(path).with_context(context)?),
        None => None,
    };
    let tls = if protocol.is_tls() {
        let t = Arc::new(TlsListener::load(l).with_context(context)?);
        reloadable.tls.push((l.bind, t.clone()));
        Some(t)
    } else {
        None
    };
    let allow_anonymous = l.allows_anonymous();
    let identity = l.use_identity_as_username.is_some();
    let chain = auth_chain(l, passwords.as_ref(), backends).with_context(context)?;
    let loopback = l.is_local();
    if allow_anonymous && !loopback {
        warn!(listener = %name, "anonymous clients are allowed on a non-loopback listener (allow_anonymous = true)");
    }
    if !allow_anonymous && chain.backends.is_empty() {
        warn!(
            listener = %name,
            "this listener refuses every client: anonymous clients are not allowed{} and its \
             authentication chain is empty",
            if loopback { "" } else { " on a non-loopback address" }
        );
    }
    if !chain.backends.is_empty() && !protocol.is_tls() && !loopback && !identity {
        warn!(listener = %name, "passwords and tokens cross the network in clear text on this listener: use protocol \"tls\" or \"wss\"");
    }
    let enhanced =
        enhanced_methods(l, passwords.as_ref(), chain.scram, backends).with_context(context)?;
    let authorizer = acl_chain(l, acl_file, backends).with_context(context)?;
    Ok(ListenerRuntime {
        protocol,
        access: Arc::new(ListenerAccess {
            name,
            authenticator: Arc::new(
                AuthChain::new(chain.backends, allow_anonymous).observed(counters.clone()),
            ),
            authorizer,
            enhanced,
            session_queue: None,
            internal: false,
        }),
        tls,
        ws_path: l.ws_path().to_owned(),
        quic_0rtt: l.quic_0rtt,
        permits: l.max_connections.map(listener_permits),
        accepted: Arc::default(),
        forwarding: crate::proxy_protocol::Forwarding::of(l),
    })
}

/// A listener's authentication chain, resolved.
struct Chain {
    backends: Vec<Arc<dyn AuthBackend>>,
    /// SCRAM-SHA-256 is listed (an enhanced method, not a CONNECT check).
    scram: bool,
    /// Passwords are hashed (the password file, dynamic security): CONNECT is slow to check.
    password_file: bool,
}

/// The `auth` chain, or the one the older keys imply: the certificate identity, or the
/// password file. Names were checked by config validation; a backend without its `[auth]`
/// section is an error here.
fn auth_chain(
    l: &ListenerConfig,
    passwords: Option<&Arc<PasswordAuthenticator>>,
    backends: &Backends,
) -> anyhow::Result<Chain> {
    let explicit = l.auth.is_some();
    let names: Vec<String> = match &l.auth {
        Some(names) => names.clone(),
        None if l.use_identity_as_username.is_some() => vec!["certificate".into()],
        None if passwords.is_some() => vec!["password_file".into()],
        None => Vec::new(),
    };
    let mut chain = Chain {
        backends: Vec::new(),
        scram: false,
        password_file: false,
    };
    for name in &names {
        match name.as_str() {
            "password_file" => {
                let Some(p) = passwords else {
                    anyhow::bail!("auth: \"password_file\" needs this listener's password_file");
                };
                chain.password_file = true;
                chain.backends.push(p.clone());
            }
            // Implied by `use_identity_as_username`, a client without a certificate identity
            // is refused, as mosquitto does; listed, it is left to the rest of the chain.
            "certificate" => chain.backends.push(Arc::new(CertificateBackend {
                required: !explicit,
            })),
            "scram" => chain.scram = true,
            other => match backends.auth.get(other) {
                Some(b) => {
                    // Dynamic security checks argon2id hashes: CONNECT is slow to check.
                    chain.password_file |= other == "dynamic";
                    chain.backends.push(b.clone());
                }
                None => anyhow::bail!("auth: {other:?} {}", missing(other)),
            },
        }
    }
    Ok(chain)
}

/// What a backend name the chain cannot find needs.
fn missing(name: &str) -> String {
    match name.strip_prefix("plugin:") {
        Some(p) => format!("needs a [[plugin]] named {p:?} that authenticates or authorizes"),
        None => format!("needs an [auth.{name}] section"),
    }
}

/// The `acl` chain, or the ACL file alone (`None`: everything allowed).
fn acl_chain(
    l: &ListenerConfig,
    acl_file: Option<Arc<AclAuthorizer>>,
    backends: &Backends,
) -> anyhow::Result<Option<Arc<dyn Authorizer>>> {
    let Some(names) = &l.acl else {
        return Ok(acl_file.map(|a| a as Arc<dyn Authorizer>));
    };
    let mut chain: Vec<Arc<dyn AclBackend>> = Vec::new();
    for name in names {
        match name.as_str() {
            "acl_file" => match &acl_file {
                Some(a) => chain.push(a.clone()),
                None => anyhow::bail!("acl: \"acl_file\" needs this listener's acl_file"),
            },
            other => match backends.acl.get(other) {
                Some(b) => chain.push(b.clone()),
                None => anyhow::bail!("acl: {other:?} {}", missing(other)),
            },
        }
    }
    if chain.is_empty() {
        return Ok(None);
    }
    let no_match = l.acl_no_match.unwrap_or_default() == NoMatch::Allow;
    Ok(Some(Arc::new(AclChain::new(chain, no_match))))
}

// Every valid listener cap is a count a semaphore can hold.
const _: () = assert!(bounds::LISTENER_CONNECTIONS.max <= Semaphore::MAX_PERMITS as u64);

/// The semaphore of a listener's own connection cap. A config built in code, without
/// validation, may ask for more than a semaphore can count: it gets the most there is
/// rather than a panic.
fn listener_permits(max_connections: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)))
}

/// The listener's enhanced authentication methods (`auth_methods`, and `"scram"` in the
/// chain): SCRAM over its password file, JWT over `[auth.jwt]` (config validation makes sure
/// each exists).
fn enhanced_methods(
    l: &ListenerConfig,
    passwords: Option<&Arc<PasswordAuthenticator>>,
    scram: bool,
    backends: &Backends,
) -> anyhow::Result<Vec<Arc<dyn EnhancedAuth>>> {
    let mut methods: Vec<Arc<dyn EnhancedAuth>> = Vec::new();
    let mut names: Vec<&str> = l.auth_methods.iter().map(String::as_str).collect();
    if scram && !names.contains(&starling_auth::scram::METHOD) {
        names.push(starling_auth::scram::METHOD);
    }
    for m in names {
        match m {
            starling_auth::scram::METHOD => {
                let Some(passwords) = passwords else {
                    anyhow::bail!("SCRAM-SHA-256 needs a password_file");
                };
                methods.push(Arc::new(ScramSha256::new(passwords.clone())));
            }
            crate::authn::jwt_method::METHOD => {
                let Some(jwt) = &backends.jwt else {
                    anyhow::bail!("JWT needs an [auth.jwt] section");
                };
                methods.push(Arc::new(crate::authn::jwt_method::JwtMethod(jwt.clone())));
            }
            other => anyhow::bail!("unsupported authentication method {other:?}"),
        }
    }
    Ok(methods)
}
