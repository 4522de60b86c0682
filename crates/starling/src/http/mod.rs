//! The HTTP listener (`[http]`, on by default at 127.0.0.1:18080): Prometheus metrics
//! (`/metrics`), health checks (`/healthz`, `/readyz`), the admin API (`/api/v1`, described by
//! `/api/v1/openapi.json`) and the dashboard (`/`).
//!
//! - `auth.rs`: API keys, basic auth and roles; `apikey.rs`: the key file and `starling
//!   apikey`.
//! - `metrics.rs`: the Prometheus exposition, read from the broker's counters at each scrape.
//! - `api.rs`: the admin endpoints; `error.rs`: their JSON errors.
//!
//! Bounded like the MQTT listeners: open connections (`max_connections`, more are closed at
//! accept), requests served at once (`max_concurrent_requests`; the others wait for a slot
//! within the request timeout, then get 503), request bodies (`max_body_bytes`, else 413),
//! the time to send request headers and the time a request may take (`request_timeout_ms`).
//! Health checks and the dashboard's page need no credentials; the metrics and the API go
//! through `auth.rs` (the page asks for an API key when the API answers 401).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use starling_broker::Broker;
use starling_broker::metrics::Counter;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{Config, HttpConfig};
use crate::connection::Stop;
use crate::reload::Reloadable;

mod api;
pub mod apikey;
mod auth;
mod dashboard;
mod error;
mod metrics;

pub use auth::{HttpAuth, Identity};
pub use error::ApiError;

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One MQTT listener as the API shows it.
#[derive(Debug)]
pub struct ListenerStatus {
    /// Its name (`tcp 127.0.0.1:1883`), as connections report it.
    pub name: Arc<str>,
    /// Transport.
    pub protocol: String,
    /// The bound address (`0.0.0.0:0` for a Unix socket).
    pub addr: SocketAddr,
    /// Where it listens, as the admin API shows it: the bound address, or the socket file.
    pub endpoint: String,
    /// Connections accepted since start.
    pub accepted: Arc<Counter>,
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The broker core.
    pub broker: Arc<Broker>,
    /// Credentials.
    pub auth: HttpAuth,
    /// The MQTT listeners.
    pub listeners: Vec<ListenerStatus>,
    /// What `reload` reloads.
    pub(crate) reloadable: Arc<Reloadable>,
    /// What a publish made on a user's behalf is checked against.
    pub(crate) acl: Option<Arc<dyn starling_auth::Authorizer>>,
    /// The running configuration, secrets redacted.
    pub config: serde_json::Value,
    /// Set once every listener is open and the store restored; cleared at shutdown.
    pub ready: Arc<AtomicBool>,
    /// When the broker started, on the wall clock and on the monotonic one.
    pub started_wall: SystemTime,
    /// The same moment as [`Broker::started`].
    pub started: Instant,
    /// Requests refused for their credentials or role.
    pub http_refused: Counter,
    /// The bridges, in config order (set by the server after construction).
    pub bridges: Vec<Arc<crate::bridge::BridgeStats>>,
    /// The plugins' counters, in config order (set by the server).
    pub plugins: Vec<Arc<crate::plugin::PluginStats>>,
    /// The webhook targets' counters (set by the server).
    pub webhooks: Vec<Arc<crate::plugin::webhook::TargetStats>>,
    /// What the authentication chains' backends answered (set by the server).
    pub auth_counters: Arc<crate::authn::AuthCounters>,
    /// The `[auth]` backends, for their counters (set by the server).
    pub auth_backends: crate::authn::Backends,
    /// This node of the cluster, when `[cluster]` is on (set by the server).
    pub cluster: Option<Arc<crate::cluster::Handle>>,
    /// Dynamic security, when `[auth.dynamic]` enables it (set by the server): what
    /// `/api/v1/dynsec` manages.
    pub dynsec: Option<Arc<crate::authn::dynamic::DynamicSecurity>>,
    /// Slots for requests served at once.
    requests: Semaphore,
    request_timeout: Duration,
}

impl AppState {
    /// The state of an HTTP listener configured by `config`.
    pub(crate) fn new(
        config: &Config,
        broker: Arc<Broker>,
        listeners: Vec<ListenerStatus>,
        reloadable: Arc<Reloadable>,
        acl: Option<Arc<dyn starling_auth::Authorizer>>,
        basic: Option<Arc<starling_auth::PasswordAuthenticator>>,
        ready: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let h = &config.http;
        let keys = apikey::KeyCache::open(h.api_keys_path(&config.data_dir))?;
        let started = broker.started();
        Ok(Self {
            auth: HttpAuth {
                open: h.is_open(),
                keys,
                basic,
                admins: h.admins.clone(),
                viewers: h.viewers.clone(),
            },
            broker,
            listeners,
            reloadable,
            acl,
            config: api::redacted_config(config),
            ready,
            started_wall: SystemTime::now() - started.elapsed(),
            started,
            http_refused: Counter::default(),
            bridges: Vec::new(),
            plugins: Vec::new(),
            webhooks: Vec::new(),
            auth_counters: Arc::default(),
            auth_backends: crate::authn::Backends::default(),
            cluster: None,
            dynsec: None,
            requests: Semaphore::new(h.max_concurrent_requests.max(1)),
            request_timeout: Duration::from_millis(h.request_timeout_ms),
        })
    }

    /// The wall-clock time of a broker instant, in milliseconds since the Unix epoch.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        let wall = self.started_wall + at.saturating_duration_since(self.started);
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Every route.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics::render))
        .nest("/api/v1", api::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The page holds no data: it asks the API, with the user's credentials.
        .merge(dashboard::routes())
        .merge(guarded)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), bounded))
        .with_state(state)
}

/// Serves at most `max_concurrent_requests` at once, each within the request timeout.
async fn bounded(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = state.request_timeout;
    let work = async {
        let Ok(_slot) = state.requests.acquire().await else {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            )
            .into_response();
        };
        next.run(req).await
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// The process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Every listener is open, the store was restored and commits, and the broker is not
/// shutting down.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or stopping\n",
        )
            .into_response();
    }
    let m = &state.broker.metrics;
    if state.broker.persistence().is_some() && m.store_available.get() == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store cannot commit\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Binds the HTTP listener; its accept loop runs until `stop`.
pub async fn bind(
    h: &HttpConfig,
    state: Arc<AppState>,
    stop: Arc<Stop>,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()> + use<>)> {
    let tls = match (&h.cert_file, &h.key_file) {
        (Some(cert), Some(key)) => {
            let mut l = crate::config::ListenerConfig::tcp(h.bind);
            l.cert_file = Some(cert.clone());
            l.key_file = Some(key.clone());
            let config = crate::tls::server_config(&l).context("http: cannot load TLS")?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        }
        _ => None,
    };
    let listener = TcpListener::bind(h.bind)
        .await
        .with_context(|| format!("cannot bind the HTTP listener {}", h.bind))?;
    let addr = listener.local_addr().unwrap_or(h.bind);
    if !h.is_open() && state.auth.keys.current().is_empty() && state.auth.basic.is_none() {
        warn!(%addr, "HTTP listener needs credentials and none are configured: every request except /healthz and /readyz is refused (create a key with `starling apikey create`)");
    }
    info!(%addr, tls = tls.is_some(), open = h.is_open(), "HTTP listening");
    let app = router(state, h.max_body_bytes);
    let connections = Arc::new(Semaphore::new(h.max_connections.max(1)));
    let header_timeout = Duration::from_millis(h.request_timeout_ms);
    let serve = accept_loop(listener, app, tls, connections, header_timeout, stop);
    Ok((addr, serve))
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<Semaphore>,
    header_timeout: Duration,
    stop: Arc<Stop>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP connection refused: max_connections reached");
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper_util::service::TowerToHyperService::new(
                app.layer(axum::Extension(axum::extract::ConnectInfo(peer))),
            );
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(s)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        debug!(%peer, "HTTPS handshake failed or timed out");
                        return;
                    };
                    serve_one(TokioIo::new(s), service, header_timeout, &stop).await;
                }
                None => serve_one(TokioIo::new(stream), service, header_timeout, &stop).await,
            }
        });
    }
}

async fn serve_one<I, S>(io: I, service: S, header_timeout: Duration, stop: &Stop)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = stop.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
