//! Plugins: the `[[plugin]]` sections of the config, each built into one of the core's
//! hooks (`starling_broker::hook`), in the order written. This module owns what every
//! plugin shares: the section's common keys (`kind`, `name`, `timeout_ms`, `on_failure`),
//! the guard that puts a deadline on every decision answered later and turns a timeout into
//! the plugin's fail-open or fail-closed decision, the per-plugin counters, and the
//! background tasks plugins run (started once the broker exists, ended by the server's stop).
//!
//! The kinds: `topic_rewrite`, `auto_subscribe`, `delayed` (`$delayed/{seconds}/{topic}`),
//! `webhook` and `grpc` (an out-of-process plugin). See `docs/plugins.md`.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use starling_auth::{AclBackend, AuthBackend};
use starling_broker::Broker;
use starling_broker::hook::{
    AckEvent, Answer, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, DisconnectEvent,
    DropEvent, Events, FilterVerdict, Hook, Hooks, PublishVerdict, SessionActions, SessionEvent,
};
use starling_proto::{Publish, ReasonCode, SubscriptionOptions, TopicFilter};
use tracing::warn;

use crate::connection::Stop;

pub mod auto_subscribe;
pub mod delayed;
pub mod grpc;
pub mod rewrite;
pub mod webhook;

/// Longest `timeout_ms` (a decision that waits longer holds its client for that long).
const MAX_TIMEOUT_MS: u64 = 60_000;
/// `timeout_ms` when not set.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// What a plugin decides when it fails (an error, a crash, no answer in `timeout_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Fail open: accept, pass.
    #[default]
    Allow,
    /// Fail closed: refuse the client (0x88 Server unavailable), drop the message (0x80),
    /// refuse the filter (0x80).
    Deny,
}

impl OnFailure {
    /// The decision on a CONNECT.
    pub fn connect(self) -> ConnectVerdict {
        match self {
            OnFailure::Allow => ConnectVerdict::Accept,
            OnFailure::Deny => ConnectVerdict::Refuse(ReasonCode::ServerUnavailable),
        }
    }

    /// The decision on a PUBLISH.
    pub fn publish(self) -> PublishVerdict {
        match self {
            OnFailure::Allow => PublishVerdict::Pass,
            OnFailure::Deny => PublishVerdict::Drop(ReasonCode::UnspecifiedError),
        }
    }

    /// The decision on a filter.
    pub fn filter(self) -> FilterVerdict {
        match self {
            OnFailure::Allow => FilterVerdict::Pass,
            OnFailure::Deny => FilterVerdict::Refuse(ReasonCode::UnspecifiedError),
        }
    }
}

/// Counters of one plugin, exported per plugin in `/metrics`.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// The plugin's name (the metrics label).
    pub name: String,
    /// Decisions asked of it.
    pub calls: AtomicU64,
    /// Decisions it did not give within `timeout_ms`.
    pub timeouts: AtomicU64,
    /// Decisions or events it failed on (its own errors: a refused connection, an error
    /// status); each decided by `on_failure`.
    pub failures: AtomicU64,
}

impl PluginStats {
    /// Counts a failure.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a plugin is built with besides its own settings.
#[derive(Debug, Clone)]
pub struct PluginCtx {
    /// The plugin's name.
    pub name: String,
    /// Its fail-open / fail-closed choice.
    pub on_failure: OnFailure,
    /// Its deadline for a decision.
    pub timeout: Duration,
    /// Its counters.
    pub stats: Arc<PluginStats>,
    /// The broker's data directory (`None`: durability `memory`, nothing is written).
    pub data_dir: Option<PathBuf>,
}

/// A plugin's background work: given the broker and the server's stop, a future the server
/// runs until it ends (it must end once `stop` is signalled).
pub type Task = Box<dyn FnOnce(Arc<Broker>, Arc<Stop>) -> BoxFuture + Send>;
/// A boxed future of a plugin task.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A built plugin: its hook and its background tasks.
pub struct Built {
    /// The hook the core calls.
    pub hook: Arc<dyn Hook>,
    /// Tasks to run beside the broker.
    pub tasks: Vec<Task>,
    /// A webhook target's counters.
    pub webhook: Option<Arc<webhook::TargetStats>>,
    /// An authentication backend: listeners name it `plugin:{name}` in their `auth` chain.
    pub auth: Option<Arc<dyn AuthBackend>>,
    /// An authorization backend: listeners name it `plugin:{name}` in their `acl` chain.
    pub acl: Option<Arc<dyn AclBackend>>,
}

impl Built {
    /// A plugin that is a hook and nothing else.
    pub fn hook(hook: Arc<dyn Hook>) -> Self {
        Self {
            hook,
            tasks: Vec::new(),
            webhook: None,
            auth: None,
            acl: None,
        }
    }
}

impl fmt::Debug for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Built")
            .field("hook", &self.hook)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// Every configured plugin, built.
#[derive(Default)]
pub struct Plugins {
    /// The hooks, in order, for `Broker::with_hooks`.
    pub hooks: Hooks,
    /// Per-plugin counters, for `/metrics`.
    pub stats: Vec<Arc<PluginStats>>,
    /// Webhook targets' counters, for `/metrics`.
    pub webhooks: Vec<Arc<webhook::TargetStats>>,
    /// Plugins' authentication backends, by plugin name.
    pub auth: Vec<(String, Arc<dyn AuthBackend>)>,
    /// Plugins' authorization backends, by plugin name.
    pub acl: Vec<(String, Arc<dyn AclBackend>)>,
    /// Background tasks, started by [`Plugins::start`].
    tasks: Vec<Task>,
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugins")
            .field("hooks", &self.hooks)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// The keys every `[[plugin]]` section has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    on_failure: OnFailure,
}

const COMMON_KEYS: [&str; 4] = ["kind", "name", "timeout_ms", "on_failure"];

/// The common keys and the kind's own settings of section `i`.
fn split(i: usize, table: &toml::Table) -> anyhow::Result<(Common, toml::Table)> {
    let mut common = toml::Table::new();
    let mut own = toml::Table::new();
    for (k, v) in table {
        if COMMON_KEYS.contains(&k.as_str()) {
            common.insert(k.clone(), v.clone());
        } else {
            own.insert(k.clone(), v.clone());
        }
    }
    let common: Common = de(common).with_context(|| format!("plugin[{i}]"))?;
    if let Some(t) = common.timeout_ms
        && !(1..=MAX_TIMEOUT_MS).contains(&t)
    {
        bail!("plugin[{i}].timeout_ms: {t} is out of bounds (1 ..= {MAX_TIMEOUT_MS})");
    }
    Ok((common, own))
}

/// Deserializes a table, naming the key at fault.
pub(crate) fn de<T: serde::de::DeserializeOwned>(table: toml::Table) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("{path}: {inner}")
        }
    })
}

/// A plugin kind's builder: its settings (validated) and context to the built plugin.
pub type Builder = fn(toml::Table, &PluginCtx) -> anyhow::Result<Built>;
/// A plugin kind's settings check, without building anything that runs.
pub type Checker = fn(toml::Table) -> anyhow::Result<()>;

/// A plugin kind compiled into the program: what `kind = "{name}"` builds.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The `kind` value that selects it.
    pub name: &'static str,
    /// Checks the section's own settings (config check, start).
    pub check: Checker,
    /// Builds the plugin.
    pub build: Builder,
}

/// The kinds that come with Starling.
const BUILT_IN: [Kind; 5] = [
    Kind {
        name: "topic_rewrite",
        check: rewrite::check,
        build: rewrite::build,
    },
    Kind {
        name: "auto_subscribe",
        check: auto_subscribe::check,
        build: auto_subscribe::build,
    },
    Kind {
        name: "delayed",
        check: delayed::check,
        build: delayed::build,
    },
    Kind {
        name: "webhook",
        check: webhook::check,
        build: webhook::build,
    },
    Kind {
        name: "grpc",
        check: grpc::check,
        build: grpc::build,
    },
];

/// Kinds added by a program that embeds Starling ([`register`]).
static REGISTERED: Mutex<Vec<Kind>> = Mutex::new(Vec::new());

/// Adds a plugin kind written in Rust to this program (before the server starts): a
/// `[[plugin]]` section with `kind = "{kind.name}"` then builds it. A kind registered twice,
/// or named like a built-in one, replaces the earlier one.
pub fn register(kind: Kind) {
    let mut kinds = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    kinds.retain(|k| k.name != kind.name);
    kinds.push(kind);
}

/// The kind named `name`: a registered one first, then a built-in one.
fn kind(name: &str) -> Option<Kind> {
    let registered = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    (registered.iter().chain(BUILT_IN.iter()))
        .find(|k| k.name == name)
        .copied()
}

/// Every kind's name, for error messages.
fn kind_names() -> String {
    let registered = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    let mut names: Vec<&str> = BUILT_IN.iter().map(|k| k.name).collect();
    names.extend(registered.iter().map(|k| k.name));
    names.dedup();
    names.join(", ")
}

/// Checks every `[[plugin]]` section without building anything that runs (config check).
pub fn validate(tables: &[toml::Table]) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, table) in tables.iter().enumerate() {
        let (common, own) = split(i, table)?;
        let Some(kind) = kind(&common.kind) else {
            bail!(
                "plugin[{i}].kind: unknown plugin kind {:?} (one of {})",
                common.kind,
                kind_names()
            );
        };
        let name = common.name.clone().unwrap_or_else(|| common.kind.clone());
        if !names.insert(name.clone()) {
            bail!("plugin[{i}].name: two plugins are named {name:?} (give each its own `name`)");
        }
        (kind.check)(own).with_context(|| format!("plugin[{i}] ({name})"))?;
    }
    Ok(())
}

impl Plugins {
    /// Builds every `[[plugin]]` section, in order. `data_dir` is `None` when nothing is
    /// kept on disk.
    pub fn build(tables: &[toml::Table], data_dir: Option<&Path>) -> anyhow::Result<Self> {
        validate(tables)?;
        let mut plugins = Plugins::default();
        let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            let (common, own) = split(i, table)?;
            let name = common.name.clone().unwrap_or_else(|| common.kind.clone());
            let stats = Arc::new(PluginStats {
                name: name.clone(),
                ..PluginStats::default()
            });
            let ctx = PluginCtx {
                name: name.clone(),
                on_failure: common.on_failure,
                timeout: Duration::from_millis(common.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                stats: stats.clone(),
                data_dir: data_dir.map(Path::to_path_buf),
            };
            let Some(kind) = kind(&common.kind) else {
                bail!("plugin[{i}].kind: unknown plugin kind {:?}", common.kind);
            };
            let built = (kind.build)(own, &ctx).with_context(|| format!("plugin[{i}] ({name})"))?;
            plugins.webhooks.extend(built.webhook);
            plugins.auth.extend(built.auth.map(|a| (name.clone(), a)));
            plugins.acl.extend(built.acl.map(|a| (name.clone(), a)));
            hooks.push(Arc::new(Guarded {
                inner: built.hook,
                ctx,
            }));
            plugins.stats.push(stats);
            plugins.tasks.extend(built.tasks);
        }
        plugins.hooks = Hooks::new(hooks);
        Ok(plugins)
    }

    /// Starts the plugins' background tasks: each future is returned for the server to run.
    pub fn start(&mut self, broker: &Arc<Broker>, stop: &Arc<Stop>) -> Vec<BoxFuture> {
        std::mem::take(&mut self.tasks)
            .into_iter()
            .map(|t| t(broker.clone(), stop.clone()))
            .collect()
    }
}

/// A plugin's hook behind its deadline: a decision answered later that does not come within
/// `timeout` is the plugin's `on_failure` decision, counted and logged.
#[derive(Debug)]
struct Guarded {
    inner: Arc<dyn Hook>,
    ctx: PluginCtx,
}

impl Guarded {
    fn guard<T: Send + 'static>(&self, answer: Answer<T>, failed: T) -> Answer<T> {
        self.ctx.stats.calls.fetch_add(1, Ordering::Relaxed);
        match answer {
            Answer::Now(t) => Answer::Now(t),
            Answer::Later(future) => {
                let (timeout, stats) = (self.ctx.timeout, self.ctx.stats.clone());
                Answer::Later(Box::pin(async move {
                    match tokio::time::timeout(timeout, future).await {
                        Ok(t) => t,
                        Err(_) => {
                            stats.timeouts.fetch_add(1, Ordering::Relaxed);
                            warn!(plugin = %stats.name, "plugin did not answer in time; its on_failure decides");
                            failed
                        }
                    }
                }))
            }
        }
    }
}

impl Hook for Guarded {
    fn name(&self) -> &str {
        &self.ctx.name
    }
    fn events(&self) -> Events {
        self.inner.events()
    }
    fn on_connect(&self, e: &ConnectEvent<'_>) -> Answer<ConnectVerdict> {
        let failed = self.ctx.on_failure.connect();
        self.guard(self.inner.on_connect(e), failed)
    }
    fn on_publish(&self, client: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        let failed = self.ctx.on_failure.publish();
        self.guard(self.inner.on_publish(client, p), failed)
    }
    fn on_subscribe(
        &self,
        client: &ClientRef<'_>,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
    ) -> Answer<FilterVerdict> {
        let failed = self.ctx.on_failure.filter();
        self.guard(self.inner.on_subscribe(client, filter, options), failed)
    }
    fn on_unsubscribe(
        &self,
        client: &ClientRef<'_>,
        filter: &TopicFilter,
    ) -> Answer<FilterVerdict> {
        let failed = self.ctx.on_failure.filter();
        self.guard(self.inner.on_unsubscribe(client, filter), failed)
    }
    fn on_delivered(&self, e: &DeliveryEvent<'_>) {
        self.inner.on_delivered(e);
    }
    fn on_acked(&self, e: &AckEvent<'_>) {
        self.inner.on_acked(e);
    }
    fn on_dropped(&self, e: &DropEvent<'_>) {
        self.inner.on_dropped(e);
    }
    fn on_session(&self, e: &SessionEvent<'_>, actions: &mut SessionActions) {
        self.inner.on_session(e, actions);
    }
    fn on_disconnected(&self, e: &DisconnectEvent<'_>) {
        self.inner.on_disconnected(e);
    }
}

#[cfg(test)]
mod tests;
