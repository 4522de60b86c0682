//! The server: binds the listeners (TCP, TLS, WebSocket, secure WebSocket), applies each
//! listener's authentication and ACL, limits connection rates per address, accepts
//! connections (bounded by semaphores), runs the housekeeping tick, reloads password files,
//! ACL files and certificates on request (SIGHUP), and shuts everything down on
//! SIGINT/SIGTERM: stop accepting, tell connected clients (v5: DISCONNECT 0x8B), wait for the
//! connection tasks, then return.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use starling_auth::{
    AclAuthorizer, Authorizer, EnhancedAuth, PasswordAuthenticator, ScramSha256,
    StandardAuthenticator,
};
use starling_broker::{Broker, ListenerAccess, PeerInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{Config, ListenerConfig, Protocol, is_loopback};
use crate::connection::{Client, Stop, StreamOptions};
use crate::limiter::{AddressLimiter, Verdict};
use crate::storage;
use crate::tls::TlsListener;

/// Connections beyond `max_connections` still get a socket long enough to be refused with a
/// CONNACK; past this many more, new sockets are closed at once.
const ACCEPT_SLACK: usize = 64;
/// How long shutdown waits for connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a listener needs to serve a connection.
#[derive(Debug)]
struct ListenerRuntime {
    protocol: Protocol,
    /// Authentication and authorization applied to each connection.
    access: Arc<ListenerAccess>,
    /// TLS settings and the current acceptor (`tls`, `wss`).
    tls: Option<Arc<TlsListener>>,
    /// WebSocket path (`ws`, `wss`).
    ws_path: String,
    /// CONNECT checks a password file (slow by design).
    slow_connect: bool,
    /// This listener's own connection cap, if set.
    permits: Option<Arc<Semaphore>>,
}

/// What SIGHUP reloads.
#[derive(Debug, Default)]
struct Reloadable {
    passwords: Vec<Arc<PasswordAuthenticator>>,
    acls: Vec<Arc<AclAuthorizer>>,
    tls: Vec<(SocketAddr, Arc<TlsListener>)>,
}

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
    reloadable: Reloadable,
}

/// Every listener's loaded files and certificates, ready to serve.
struct Listeners {
    runtimes: Vec<Arc<ListenerRuntime>>,
    reloadable: Reloadable,
}

impl Listeners {
    /// Loads every listener's files and certificates; errors name the listener and the file.
    fn load(config: &Config) -> anyhow::Result<Self> {
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
        reloadable.passwords = files.passwords.into_values().collect();
        reloadable.acls = files.acls.into_values().collect();
        Ok(Self {
            runtimes,
            reloadable,
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
        }),
        tls,
        ws_path: l.ws_path().to_owned(),
        permits: l.max_connections.map(|n| Arc::new(Semaphore::new(n))),
    })
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

impl Server {
    /// Opens the store (restoring what it holds), loads every listener's files and
    /// certificates, binds every listener and starts serving. Fails, naming the file or the
    /// listener, if anything cannot be opened, loaded or bound.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        // Listener files first: a broken password file is reported before the store is opened.
        let listeners = Listeners::load(config)?;
        let opened = storage::open(config)?;
        Self::launch(config, listeners, opened).await
    }

    /// Like [`Server::start`] on an already-open store (`None`: in memory).
    pub async fn start_with(
        config: &Config,
        opened: Option<storage::Opened>,
    ) -> anyhow::Result<Self> {
        let listeners = Listeners::load(config)?;
        Self::launch(config, listeners, opened).await
    }

    async fn launch(
        config: &Config,
        listeners: Listeners,
        opened: Option<storage::Opened>,
    ) -> anyhow::Result<Self> {
        let Listeners {
            runtimes,
            reloadable,
        } = listeners;
        let broker =
            Broker::with_features(config.limits.clone(), config.mqtt.clone(), Instant::now());
        let (broker, committer) = match opened {
            Some(o) => {
                let (b, c) = storage::attach(broker, o)?;
                (b, Some(c))
            }
            None => (Arc::new(broker), None),
        };
        match Self::serve(config, runtimes, broker, reloadable, committer).await {
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
    ) -> Result<Self, (anyhow::Error, Option<storage::Committer>)> {
        let limiter = Arc::new(AddressLimiter::new(config.security.clone(), Instant::now()));
        let stop = Arc::new(Stop::default());
        // At most `Semaphore::MAX_PERMITS`, and a count `acquire_many` can ask for.
        let permit_count = u32::try_from(config.limits.max_connections + ACCEPT_SLACK)
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        let permits = Arc::new(Semaphore::new(permit_count as usize));
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for (l, rt) in config.listeners.iter().zip(runtimes) {
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
        Ok(Self {
            broker,
            addrs,
            stop,
            tasks,
            permits,
            permit_count,
            committer,
            reloadable,
        })
    }

    /// The bound addresses, in listener order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The broker core.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Reads every password file, ACL file and TLS certificate again (what SIGHUP does).
    /// Whatever fails to load keeps its previous contents; the errors are logged and
    /// returned. Connections stay open; new ACL rules apply to them at once.
    pub fn reload(&self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for p in &self.reloadable.passwords {
            match p.reload() {
                Ok(n) => info!(path = %p.path().display(), users = n, "password file reloaded"),
                Err(e) => {
                    warn!("password file not reloaded, keeping the previous one: {e}");
                    errors.push(e.into());
                }
            }
        }
        for a in &self.reloadable.acls {
            match a.reload() {
                Ok(n) => info!(path = %a.path().display(), rules = n, "ACL file reloaded"),
                Err(e) => {
                    warn!("ACL file not reloaded, keeping the previous rules: {e}");
                    errors.push(e.into());
                }
            }
        }
        for (addr, t) in &self.reloadable.tls {
            match t.reload() {
                Ok(()) => info!(listener = %addr, "TLS certificates reloaded"),
                Err(e) => {
                    warn!(listener = %addr, "TLS certificates not reloaded, keeping the previous ones: {e:#}");
                    errors.push(e);
                }
            }
        }
        errors
    }
    /// Stops accepting, disconnects every client (v5: DISCONNECT 0x8B) and waits for the
    /// connection tasks, at most `SHUTDOWN_GRACE`.
    pub async fn shutdown(mut self) {
        info!("shutting down");
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

/// Runs the broker until `stop` resolves, then shuts it down.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = Server::start(&config).await?;
    {
        let reload_on_hup = async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::hangup()) {
                    Ok(mut hup) => {
                        while hup.recv().await.is_some() {
                            info!("SIGHUP: reloading password files, ACL files and certificates");
                            server.reload();
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
    server.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    permits: Arc<Semaphore>,
    limiter: Arc<AddressLimiter>,
    stop: Arc<Stop>,
) {
    loop {
        tokio::select! {
            () = stop.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    match limiter.check(peer.ip(), Instant::now(), &broker.metrics) {
                        Verdict::Allow => {}
                        verdict => {
                            debug!(%peer, ?verdict, "connection refused at accept");
                            drop(stream);
                            continue;
                        }
                    }
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        broker.metrics.connections_refused.inc();
                        drop(stream);
                        continue;
                    };
                    let listener_permit = match &rt.permits {
                        Some(p) => match p.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                broker.metrics.connections_refused.inc();
                                drop(stream);
                                continue;
                            }
                        },
                        None => None,
                    };
                    let permits = (permit, listener_permit);
                    // Detached: the global permit each holds is how shutdown waits for them.
                    if rt.protocol == Protocol::Tcp {
                        tokio::spawn(tcp_connection(stream, peer, &rt, &broker, &stop, permits));
                    } else {
                        tokio::spawn(handle(
                            stream,
                            peer,
                            rt.clone(),
                            broker.clone(),
                            stop.clone(),
                            permits,
                        ));
                    }
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The task of a plain TCP connection: no handshake, so it is the connection loop alone
/// (every idle client holds one; see `connection::serve`).
fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    rt: &ListenerRuntime,
    broker: &Arc<Broker>,
    stop: &Arc<Stop>,
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) -> impl Future<Output = ()> + use<> {
    let _ = stream.set_nodelay(true);
    let info = PeerInfo {
        addr: Some(peer),
        certificate_identity: None,
    };
    let client = Client::new(peer, Instant::now(), rt.access.clone(), info);
    let options = StreamOptions {
        flush: false,
        slow_connect: rt.slow_connect,
    };
    let (rd, wr) = stream.into_split();
    crate::connection::serve(
        rd,
        wr,
        client,
        broker.clone(),
        options,
        stop.clone(),
        permits,
    )
}

/// Runs the transport handshakes of a TLS or WebSocket listener (bounded by the CONNECT
/// timeout, and abandoned at shutdown), then serves the connection.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    stop: Arc<Stop>,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
) {
    let _ = stream.set_nodelay(true);
    let opened = Instant::now();
    let handshake_time = Duration::from_secs(broker.limits.connect_timeout_secs);
    let max_packet = broker.limits.max_packet_size as usize;
    let mut info = PeerInfo {
        addr: Some(peer),
        certificate_identity: None,
    };
    let options = StreamOptions {
        flush: rt.protocol != Protocol::Tcp,
        slow_connect: rt.slow_connect,
    };
    let conn = |info: PeerInfo| Client::new(peer, opened, rt.access.clone(), info);
    macro_rules! handshake {
        ($what:literal, $fut:expr) => {{
            let result = tokio::select! {
                r = tokio::time::timeout(handshake_time, $fut) => r,
                () = stop.wait() => return,
            };
            match result {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, listener = %rt.access.name, "{} handshake failed: {e}", $what);
                    return;
                }
                Err(_) => {
                    debug!(%peer, listener = %rt.access.name, "{} handshake timed out", $what);
                    return;
                }
            }
        }};
    }
    match (rt.protocol, &rt.tls) {
        // Served by `tcp_connection`.
        (Protocol::Tcp, _) => {}
        // TLS and WebSocket handshake state is large; boxed, it is freed once done.
        (Protocol::Ws, _) => {
            Box::pin(async {
                let ws = handshake!(
                    "WebSocket",
                    crate::ws::accept(stream, &rt.ws_path, max_packet)
                );
                run_split(ws, conn(info), &broker, options, stop).await;
            })
            .await
        }
        (Protocol::Tls | Protocol::Wss, Some(tls)) => {
            Box::pin(async {
                let acceptor = tls.acceptor();
                let tls_stream = handshake!("TLS", acceptor.accept(stream));
                info.certificate_identity =
                    crate::tls::peer_identity(tls_stream.get_ref().1, tls.identity_source());
                if rt.protocol == Protocol::Tls {
                    run_split(tls_stream, conn(info), &broker, options, stop).await;
                } else {
                    let ws = handshake!(
                        "WebSocket",
                        crate::ws::accept(tls_stream, &rt.ws_path, max_packet)
                    );
                    run_split(ws, conn(info), &broker, options, stop).await;
                }
            })
            .await
        }
        (Protocol::Tls | Protocol::Wss, None) => {}
    }
}

async fn run_split<S>(
    stream: S,
    client: Client,
    broker: &Arc<Broker>,
    options: StreamOptions,
    stop: Arc<Stop>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (rd, wr) = tokio::io::split(stream);
    crate::connection::serve(rd, wr, client, broker.clone(), options, stop, ()).await;
}

async fn tick_loop(broker: Arc<Broker>, stop: Arc<Stop>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = interval.tick() => broker.tick(Instant::now()),
        }
    }
}
