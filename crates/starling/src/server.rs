//! The server: binds the listeners, accepts connections (bounded by a semaphore), runs the
//! housekeeping tick, and shuts everything down on SIGINT/SIGTERM: stop accepting, tell
//! connected clients (v5: DISCONNECT 0x8B), wait for the connection tasks, then return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use starling_broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::storage;

/// Connections beyond `max_connections` still get a socket long enough to be refused with a
/// CONNACK; past this many more, new sockets are closed at once.
const ACCEPT_SLACK: usize = 64;
/// How long shutdown waits for connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running broker: its listeners, tick task and connections.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
    addrs: Vec<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Commits journaled changes; flushed at shutdown.
    committer: Option<storage::Committer>,
}

impl Server {
    /// Opens the store (restoring what it holds), binds every listener and starts serving.
    /// Fails if the store cannot be opened or a listener cannot be bound.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let opened = storage::open(config)?;
        Self::start_with(config, opened).await
    }

    /// Like [`Server::start`] on an already-open store (`None`: in memory).
    pub async fn start_with(
        config: &Config,
        opened: Option<storage::Opened>,
    ) -> anyhow::Result<Self> {
        let broker =
            Broker::with_features(config.limits.clone(), config.mqtt.clone(), Instant::now());
        let (broker, committer) = match opened {
            Some(o) => {
                let (b, c) = storage::attach(broker, o)?;
                (b, Some(c))
            }
            None => (Arc::new(broker), None),
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(config.limits.max_connections + ACCEPT_SLACK));
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let listener = TcpListener::bind(l.bind)
                .await
                .with_context(|| format!("cannot bind listener {}", l.bind))?;
            let addr = listener.local_addr().unwrap_or(l.bind);
            info!(%addr, protocol = %l.protocol, "listening");
            addrs.push(addr);
            tasks.spawn(accept_loop(
                listener,
                addr,
                broker.clone(),
                permits.clone(),
                shutdown_rx.clone(),
            ));
        }
        tasks.spawn(tick_loop(broker.clone(), shutdown_rx));
        Ok(Self {
            broker,
            addrs,
            shutdown_tx,
            tasks,
            committer,
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

    /// Stops accepting, disconnects every client (v5: DISCONNECT 0x8B) and waits for the
    /// connection tasks, at most `SHUTDOWN_GRACE`.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = self.tasks.join_next() => if r.is_none() { break },
                _ = &mut deadline => {
                    warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
                    self.tasks.abort_all();
                    break;
                }
            }
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
    stop.await;
    server.shutdown().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    broker: Arc<Broker>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            // Reap finished connection tasks so the set stays as large as the live ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        broker.metrics.connections_refused.inc();
                        drop(stream);
                        continue;
                    };
                    let broker = broker.clone();
                    let shutdown = shutdown.clone();
                    conns.spawn(async move {
                        crate::connection::serve(stream, broker, shutdown).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    while conns.join_next().await.is_some() {}
}

async fn tick_loop(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = interval.tick() => broker.tick(Instant::now()),
        }
    }
}
