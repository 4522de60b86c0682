//! Each listener's runtime, loaded from its config: the password and ACL files (each file
//! loaded once however many listeners name it, so one reload serves them all), the TLS
//! certificates, the enhanced authentication methods, and the access policy built from them,
//! with warnings about risky or useless combinations.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use starling_auth::{
    AclAuthorizer, Authorizer, EnhancedAuth, PasswordAuthenticator, ScramSha256,
    StandardAuthenticator,
};
use starling_broker::ListenerAccess;
use starling_broker::metrics::Counter;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::config::{Config, ListenerConfig, Protocol, bounds, is_loopback};
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
    /// CONNECT checks a password file (slow by design).
    pub(crate) slow_connect: bool,
    /// This listener's own connection cap, if set.
    pub(crate) permits: Option<Arc<Semaphore>>,
    /// Connections accepted since start.
    pub(crate) accepted: Arc<Counter>,
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
}

impl Listeners {
    /// Loads every listener's files and certificates; errors name the listener and the file.
    pub(crate) fn load(config: &Config) -> anyhow::Result<Self> {
        let mut files = FileCache::default();
        let mut reloadable = Reloadable::default();
        let mut runtimes = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            runtimes.push(Arc::new(listener_runtime(
                l,
                i,
                &mut files,
                &mut reloadable,
            )?));
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

fn listener_runtime(
    l: &ListenerConfig,
    i: usize,
    files: &mut FileCache,
    reloadable: &mut Reloadable,
) -> anyhow::Result<ListenerRuntime> {
    let protocol = l.protocol();
    let name: Arc<str> = format!("{protocol} {}", l.bind).into();
    let context = || format!("listener[{i}] ({name})");
    let passwords = match &l.password_file {
        Some(path) => Some(files.passwords(path).with_context(context)?),
        None => None,
    };
    let authorizer: Option<Arc<dyn Authorizer>> = match &l.acl_file {
        Some(path) => {
            let acl = files.acl(path).with_context(context)?;
            Some(acl)
        }
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
    let loopback = is_loopback(l.bind.ip());
    if allow_anonymous && !loopback {
        warn!(listener = %name, "anonymous clients are allowed on a non-loopback listener (allow_anonymous = true)");
    }
    if !allow_anonymous && passwords.is_none() && !identity {
        warn!(
            listener = %name,
            "this listener refuses every client: anonymous clients are not allowed{} and there \
             is no password_file or certificate identity",
            if loopback { "" } else { " on a non-loopback address" }
        );
    }
    if passwords.is_some() && !protocol.is_tls() && !loopback {
        warn!(listener = %name, "passwords cross the network in clear text on this listener: use protocol \"tls\" or \"wss\"");
    }
    let enhanced = enhanced_methods(l, passwords.as_ref()).with_context(context)?;
    Ok(ListenerRuntime {
        protocol,
        slow_connect: passwords.is_some() && !identity,
        access: Arc::new(ListenerAccess {
            name,
            authenticator: Arc::new(StandardAuthenticator {
                allow_anonymous,
                passwords,
                identity_as_username: identity,
            }),
            authorizer,
            enhanced,
            session_queue: None,
            internal: false,
        }),
        tls,
        ws_path: l.ws_path().to_owned(),
        permits: l.max_connections.map(listener_permits),
        accepted: Arc::default(),
    })
}

// Every valid listener cap is a count a semaphore can hold.
const _: () = assert!(bounds::LISTENER_CONNECTIONS.max <= Semaphore::MAX_PERMITS as u64);

/// The semaphore of a listener's own connection cap. A config built in code, without
/// validation, may ask for more than a semaphore can count: it gets the most there is
/// rather than a panic.
fn listener_permits(max_connections: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)))
}

/// The listener's enhanced authentication methods, over its password file (config validation
/// makes sure there is one).
fn enhanced_methods(
    l: &ListenerConfig,
    passwords: Option<&Arc<PasswordAuthenticator>>,
) -> anyhow::Result<Vec<Arc<dyn EnhancedAuth>>> {
    let mut methods: Vec<Arc<dyn EnhancedAuth>> = Vec::new();
    for m in &l.auth_methods {
        let Some(passwords) = passwords else {
            anyhow::bail!("auth_methods needs a password_file");
        };
        match m.as_str() {
            starling_auth::scram::METHOD => {
                methods.push(Arc::new(ScramSha256::new(passwords.clone())));
            }
            other => anyhow::bail!("unsupported authentication method {other:?}"),
        }
    }
    Ok(methods)
}
