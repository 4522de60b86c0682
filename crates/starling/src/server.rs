//! The server's lifecycle: opens the store, loads the listeners (`listener.rs`), binds them
//! and starts one accept loop each (`accept.rs`) and the housekeeping tick; reloads password
//! files, ACL files and certificates on request (SIGHUP, `reload.rs`); and shuts everything
//! down on SIGINT/SIGTERM: stop accepting, tell connected clients (v5: DISCONNECT 0x8B), wait
//! for the connection tasks (at most `SHUTDOWN_GRACE`), commit what the store still holds,
//! then return (`signals.rs` bounds the whole and ends the process on a second signal). `run`
//! also keeps the service manager informed (`notify.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use starling_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::accept::{accept_loop, permit_count};
use crate::config::{Config, Protocol};
use crate::connection::Stop;
use crate::http::{self, AppState, ListenerStatus};
use crate::limiter::AddressLimiter;
use crate::listener::{ListenerRuntime, Listeners};
use crate::notify::Notifier;
use crate::reload::Reloadable;
use crate::storage;

/// How long shutdown waits for connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running broker: its listeners, tick task and connections.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    addrs: Vec<SocketAddr>,
    stop: Arc<Stop>,
    /// Accept loops and the tick loop.
    tasks: JoinSet<()>,
    /// Every connection task holds one of these until it ends: all of them back means every
    /// connection is done (cheaper per connection than a `JoinSet` entry).
    permits: Arc<Semaphore>,
    permit_count: u32,
    /// Commits journaled changes; flushed at shutdown.
    committer: Option<storage::Committer>,
    reloadable: Arc<Reloadable>,
    /// The HTTP listener's address, when it runs.
    http_addr: Option<SocketAddr>,
    /// Cleared when shutdown begins (`/readyz`).
    ready: Arc<AtomicBool>,
}

impl Server {
    /// Opens the store (restoring what it holds), loads every listener's files and
    /// certificates, binds every listener and starts serving. Fails, naming the file or the
    /// listener, if anything cannot be opened, loaded or bound.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        // Listener files first: a broken password file is reported before the store is opened.
        let stop = Arc::new(Stop::default());
        let (listeners, plugins) = Self::load_listeners(config, &stop)?;
        let opened = storage::open(config)?;
        Self::launch(config, listeners, plugins, opened, stop).await
    }

    /// The plugins, the `[auth]` backends (their background tasks end with `stop`; plugins
    /// that authenticate or authorize among them) and every listener.
    fn load_listeners(
        config: &Config,
        stop: &Arc<Stop>,
    ) -> anyhow::Result<(Listeners, crate::plugin::Plugins)> {
        let data_dir = (config.storage.durability != crate::config::Durability::Memory)
            .then_some(config.data_dir.as_path());
        let plugins = crate::plugin::Plugins::build(&config.plugins, data_dir)?;
        let mut backends = crate::authn::Backends::build(config, Some(stop))?;
        backends.add_plugins(&plugins);
        let mut listeners = Listeners::load(config, &backends, &Arc::default())?;
        listeners.backends = backends;
        Ok((listeners, plugins))
    }

    /// Like [`Server::start`] on an already-open store (`None`: in memory).
    pub async fn start_with(
        config: &Config,
        opened: Option<storage::Opened>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(Stop::default());
        let (listeners, plugins) = Self::load_listeners(config, &stop)?;
        Self::launch(config, listeners, plugins, opened, stop).await
    }

    async fn launch(
        config: &Config,
        listeners: Listeners,
        mut plugins: crate::plugin::Plugins,
        opened: Option<storage::Opened>,
        stop: Arc<Stop>,
    ) -> anyhow::Result<Self> {
        let Listeners {
            runtimes,
            reloadable,
            http_passwords,
            first_acl,
            auth_counters,
            backends,
        } = listeners;
        let mut extras = Extras {
            http_passwords,
            first_acl,
            auth_counters,
            backends,
            stop,
            plugins: crate::plugin::Plugins::default(),
            plugin_tasks: Vec::new(),
            cluster: None,
        };
        let l = &config.limits;
        if l.queue_scope == starling_broker::QueueScope::Subscription
            && l.max_queued_messages < l.max_queued_messages_per_subscription
        {
            warn!(
                "queue_scope = \"subscription\": a session's total (max_queued_messages = {}) is \
                 below one subscription's buffer (max_queued_messages_per_subscription = {}); \
                 the total decides",
                l.max_queued_messages, l.max_queued_messages_per_subscription
            );
        }
        // A name drawn at each start: what bridges between brokers use to stop loops.
        let node_id = format!(
            "{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        );
        // Plugins' hooks are part of the broker; their tasks start once it exists.
        let mut broker =
            Broker::with_features(config.limits.clone(), config.mqtt.clone(), Instant::now())
                .with_node_id(node_id)
                .with_hooks(plugins.hooks.clone());
        // A node of a cluster claims client ids through the cluster.
        if config.cluster.enabled {
            let mut started = crate::cluster::start(config).await?;
            if let Some(o) = &opened {
                started
                    .restore_taken(o.settings_with_prefix(starling_cluster::forward::MARK_PREFIX));
            }
            if let Some(seams) = started.take_seams() {
                broker = broker
                    .with_ownership(seams.ownership)
                    .with_routes(seams.routes)
                    .with_forwarder(seams.forwarder)
                    .with_retained(seams.retained);
            }
            extras.cluster = Some(started);
        }
        // Dynamic security's document, as the store holds it, before anything is served.
        if let Some(d) = &extras.backends.dynamic {
            let stored = opened
                .as_ref()
                .and_then(|o| o.setting(crate::authn::dynamic::SETTING_KEY));
            d.restore(stored)?;
        }
        let (broker, committer) = match opened {
            Some(o) => {
                let (b, c) = storage::attach(broker, o)?;
                (b, Some(c))
            }
            None => (Arc::new(broker), None),
        };
        extras.plugin_tasks = plugins.start(&broker, &extras.stop);
        extras.plugins = plugins;
        match Self::serve(config, runtimes, broker, reloadable, committer, extras).await {
            Ok(s) => Ok(s),
            Err((e, committer)) => {
                // Nothing was served: stop the committer cleanly before reporting.
                if let Some(c) = committer {
                    let _ = tokio::task::spawn_blocking(move || c.finish()).await;
                }
                Err(e)
            }
        }
    }

    async fn serve(
        config: &Config,
        runtimes: Vec<Arc<ListenerRuntime>>,
        broker: Arc<Broker>,
        reloadable: Reloadable,
        committer: Option<storage::Committer>,
        extras: Extras,
    ) -> Result<Self, (anyhow::Error, Option<storage::Committer>)> {
        let reloadable = Arc::new(reloadable);
        let limiter = Arc::new(AddressLimiter::new(config.security.clone(), Instant::now()));
        let stop = extras.stop.clone();
        let permit_count = permit_count(config.limits.max_connections);
        let permits = Arc::new(Semaphore::new(
            usize::try_from(permit_count).unwrap_or(Semaphore::MAX_PERMITS),
        ));
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let mut statuses = Vec::new();
        for (l, rt) in config.listeners.iter().zip(runtimes) {
            if rt.protocol == Protocol::Quic {
                let listener = match crate::quic::QuicListener::bind(l.bind, &rt, &broker) {
                    Ok(listener) => listener,
                    Err(e) => return Err((e.context(format!("listener {}", l.bind)), committer)),
                };
                let addr = listener.local_addr().unwrap_or(l.bind);
                info!(%addr, protocol = %l.protocol, "listening");
                addrs.push(addr);
                statuses.push(ListenerStatus {
                    name: rt.access.name.clone(),
                    protocol: l.protocol.clone(),
                    addr,
                    endpoint: addr.to_string(),
                    accepted: rt.accepted.clone(),
                });
                tasks.spawn(crate::quic::accept_loop(
                    listener,
                    rt,
                    broker.clone(),
                    permits.clone(),
                    limiter.clone(),
                    stop.clone(),
                ));
                continue;
            }
            if rt.protocol == Protocol::Unix {
                let path = PathBuf::from(l.path.clone().unwrap_or_default());
                let listener = match crate::unix::bind(&path, l.unix_mode()) {
                    Ok(listener) => listener,
                    Err(e) => return Err((e, committer)),
                };
                info!(path = %path.display(), protocol = %l.protocol, "listening");
                // Listener order is kept: a Unix socket has no address.
                addrs.push(l.bind);
                statuses.push(ListenerStatus {
                    name: rt.access.name.clone(),
                    protocol: l.protocol.clone(),
                    addr: l.bind,
                    endpoint: l.endpoint(),
                    accepted: rt.accepted.clone(),
                });
                tasks.spawn(crate::unix::accept_loop(
                    listener,
                    path,
                    rt,
                    broker.clone(),
                    permits.clone(),
                    stop.clone(),
                ));
                continue;
            }
            let listener = match TcpListener::bind(l.bind).await {
                Ok(listener) => listener,
                Err(e) => {
                    let e =
                        anyhow::Error::new(e).context(format!("cannot bind listener {}", l.bind));
                    return Err((e, committer));
                }
            };
            let addr = listener.local_addr().unwrap_or(l.bind);
            info!(%addr, protocol = %l.protocol, "listening");
            addrs.push(addr);
            statuses.push(ListenerStatus {
                name: rt.access.name.clone(),
                protocol: l.protocol.clone(),
                addr,
                endpoint: addr.to_string(),
                accepted: rt.accepted.clone(),
            });
            tasks.spawn(accept_loop(
                listener,
                addr,
                rt,
                broker.clone(),
                permits.clone(),
                limiter.clone(),
                stop.clone(),
            ));
        }
        tasks.spawn(tick_loop(broker.clone(), stop.clone()));
        let mut cluster = None;
        if let Some(started) = extras.cluster {
            let (handle, cluster_tasks) = started.attach(broker.clone(), &stop);
            for t in cluster_tasks {
                tasks.spawn(t);
            }
            cluster = Some(Arc::new(handle));
        }
        for t in extras.plugin_tasks {
            tasks.spawn(t);
        }
        let mut bridges = Vec::new();
        for b in &config.bridges {
            let stats = crate::bridge::BridgeStats::new(&b.name);
            bridges.push(stats.clone());
            tasks.spawn(crate::bridge::run(
                b.clone(),
                broker.clone(),
                stop.clone(),
                stats,
            ));
        }
        let ready = Arc::new(AtomicBool::new(false));
        let mut http_addr = None;
        if config.http.enabled {
            let acl = extras
                .first_acl
                .map(|a| a as Arc<dyn starling_auth::Authorizer>);
            let started = AppState::new(
                config,
                broker.clone(),
                statuses,
                reloadable.clone(),
                acl,
                extras.http_passwords,
                ready.clone(),
            );
            let bound = match started {
                Ok(mut state) => {
                    state.bridges = bridges;
                    state.auth_counters = extras.auth_counters;
                    state.dynsec = extras.backends.dynamic.clone();
                    state.auth_backends = extras.backends;
                    state.plugins = extras.plugins.stats.clone();
                    state.webhooks = extras.plugins.webhooks.clone();
                    state.cluster = cluster.clone();
                    http::bind(&config.http, Arc::new(state), stop.clone()).await
                }
                Err(e) => Err(e),
            };
            match bound {
                Ok((addr, serve)) => {
                    http_addr = Some(addr);
                    tasks.spawn(serve);
                }
                Err(e) => {
                    stop.stop();
                    while tasks.join_next().await.is_some() {}
                    return Err((e, committer));
                }
            }
        }
        ready.store(true, Ordering::Release);
        Ok(Self {
            broker,
            addrs,
            stop,
            tasks,
            permits,
            permit_count,
            committer,
            reloadable,
            http_addr,
            ready,
        })
    }

    /// The HTTP listener's address (useful with port 0), when it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound addresses, in listener order (useful with port 0); a Unix socket listener's
    /// is `0.0.0.0:0`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// One line for the service manager's status: what is listening where.
    pub fn status(&self) -> String {
        let mqtt: Vec<String> = (self.addrs.iter())
            .filter(|a| a.port() != 0)
            .map(ToString::to_string)
            .collect();
        let mut s = format!("ready: MQTT on {}", mqtt.join(", "));
        if let Some(h) = self.http_addr {
            s.push_str(&format!("; HTTP on {h}"));
        }
        s
    }

    /// The broker core.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Reads every password file, ACL file and TLS certificate again (what SIGHUP does).
    /// Whatever fails to load keeps its previous contents; the errors are logged and
    /// returned. Connections stay open; new ACL rules apply to them at once.
    pub fn reload(&self) -> Vec<anyhow::Error> {
        self.reloadable.reload()
    }

    /// Stops accepting, disconnects every client (v5: DISCONNECT 0x8B) and waits for the
    /// connection tasks, at most `SHUTDOWN_GRACE`.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        self.ready.store(false, Ordering::Release);
        self.stop.stop();
        let all_done = async {
            while self.tasks.join_next().await.is_some() {}
            // Every connection's permit back: every connection task has finished.
            let _ = self.permits.acquire_many(self.permit_count).await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all_done)
            .await
            .is_err()
        {
            warn!("connections still open after {SHUTDOWN_GRACE:?}; not waiting for them");
            self.tasks.abort_all();
        }
        if let Some(c) = self.committer.take() {
            // Commit what is left, off the async threads.
            let _ = tokio::task::spawn_blocking(move || c.finish()).await;
            info!("store flushed");
        }
        info!("stopped");
    }
}

/// What the listeners' files gave the HTTP listener, and the stop signal the `[auth]`
/// backends' tasks already wait on.
struct Extras {
    http_passwords: Option<Arc<starling_auth::PasswordAuthenticator>>,
    first_acl: Option<Arc<starling_auth::AclAuthorizer>>,
    auth_counters: Arc<crate::authn::AuthCounters>,
    backends: crate::authn::Backends,
    stop: Arc<Stop>,
    /// The plugins (their counters, for `/metrics`) and their tasks, to run.
    plugins: crate::plugin::Plugins,
    plugin_tasks: Vec<crate::plugin::BoxFuture>,
    /// This node of the cluster, when `[cluster]` is on, until the broker exists.
    cluster: Option<crate::cluster::Started>,
}

/// Runs the broker until `stop` resolves, then shuts it down. Tells the service manager
/// (`$NOTIFY_SOCKET`, see `notify.rs`) `READY=1` once the store is restored and every
/// listener is open (when `/readyz` turns ready), `RELOADING=1` and `READY=1` around each
/// SIGHUP reload, `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half of
/// `$WATCHDOG_USEC` until the shutdown has finished.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    info!(version = crate::version::LONG_VERSION, "starting");
    let notifier = Arc::new(Notifier::from_env().unwrap_or_else(|e| {
        warn!("{e}; the service manager will not be told when the broker is ready");
        Notifier::disabled()
    }));
    let server = Server::start(&config).await?;
    let status = server.status();
    notified(notifier.ready(&status));
    let watchdog = spawn_watchdog(&notifier);
    {
        let reload_on_hup = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::hangup()) {
                    Ok(mut hup) => {
                        while hup.recv().await.is_some() {
                            info!("SIGHUP: reloading password files, ACL files and certificates");
                            notified(notifier.reloading());
                            server.reload();
                            notified(notifier.ready(&status));
                        }
                    }
                    Err(e) => warn!("cannot listen for SIGHUP: {e}"),
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = stop => {}
            () = reload_on_hup => {}
        }
    }
    notified(notifier.stopping());
    server.shutdown().await;
    if let Some(w) = watchdog {
        w.abort();
    }
    Ok(())
}

/// Logs a failed notification; the broker serves on regardless.
fn notified(r: Result<(), crate::notify::NotifyError>) {
    if let Err(e) = r {
        warn!("{e}");
    }
}

/// Sends `WATCHDOG=1` at half of `$WATCHDOG_USEC`, when the service manager asked for it,
/// from a task the caller aborts once the shutdown has finished.
fn spawn_watchdog(notifier: &Arc<Notifier>) -> Option<tokio::task::JoinHandle<()>> {
    if !notifier.is_enabled() {
        return None;
    }
    let every = crate::notify::watchdog_interval_from_env()?;
    info!("watchdog: WATCHDOG=1 every {every:?}");
    let notifier = notifier.clone();
    Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            notified(notifier.watchdog());
        }
    }))
}

async fn tick_loop(broker: Arc<Broker>, stop: Arc<Stop>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed = Instant::now();
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = interval.tick() => {
                let now = Instant::now();
                broker.tick(now);
                if now.duration_since(trimmed) >= crate::trim::TRIM_EVERY {
                    crate::trim::release_free_memory();
                    trimmed = now;
                }
            }
        }
    }
}
