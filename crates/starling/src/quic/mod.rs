//! MQTT over QUIC: a listener on a UDP socket (quinn, rustls with ring as the TLS listeners),
//! ALPN `mqtt`, and one bidirectional stream per connection carrying the MQTT byte stream, the
//! single-stream mode of EMQX's, NanoSDK's and the `mqtt5` crate's clients. The stream is served
//! by the same connection task as TCP (`connection::serve`); this module owns everything QUIC
//! adds around it: the endpoint and its bounds, admission (bans, the per-address limiter,
//! connection permits), the handshake (0-RTT only when configured), the wait for the stream,
//! closing the QUIC connection once the MQTT connection is over, and closing the endpoint at
//! shutdown. The client side (`starling pub`/`sub`) is in [`client`].

pub mod client;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, IdleTimeout, Incoming, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;
use starling_broker::{Broker, PeerInfo};
use tracing::{debug, info, warn};

use crate::connection::{Client, Stop, StreamOptions};
use crate::limiter::{AddressLimiter, Verdict};
use crate::listener::ListenerRuntime;
use crate::tls::TlsListener;

/// The ALPN protocol a QUIC client must offer.
pub const ALPN: &[u8] = b"mqtt";

/// Flow-control window of the MQTT stream and of the whole connection (it has one stream):
/// what quinn buffers of a client that the connection task is not reading (paused by the
/// store, the publish rate, or a full output) before the client is flow-controlled.
const RECEIVE_WINDOW: u32 = 256 * 1024;
/// What quinn holds of the broker's output not yet acknowledged by the client; a connection
/// task's writes wait beyond it (as on a TCP socket whose send buffer is full).
const SEND_WINDOW: u64 = 512 * 1024;
/// Connection attempts waiting for the accept loop, and the bytes they may buffer: beyond
/// either, new attempts are refused by quinn.
const MAX_INCOMING: usize = 4096;
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;
/// The QUIC idle timeout is 1.5 × `limits.max_keep_alive` (what MQTT allows the longest
/// keep-alive), within these bounds. The MQTT keep-alive itself is enforced by the connection
/// (1.5 × the client's keep-alive of silence closes it, and with it the QUIC connection); the
/// QUIC timeout is what ends a connection whose keep-alive is 0 or whose path has vanished.
const MIN_IDLE: Duration = Duration::from_secs(30);
const MAX_IDLE: Duration = Duration::from_secs(24 * 3600);
/// After the MQTT connection has ended: how long its last bytes have to be acknowledged
/// before the QUIC connection is closed.
const FINAL_ACK: Duration = Duration::from_secs(2);
/// At shutdown: how long the endpoint waits for its connections to close before it closes
/// whatever is left.
const DRAIN: Duration = Duration::from_secs(3);

/// QUIC application error codes sent when the broker closes a connection.
const CLOSE_DONE: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_NO_STREAM: u32 = 2;
const CLOSE_SHUTDOWN: u32 = 3;

/// A QUIC listener: its endpoint and the configuration new connections get.
#[derive(Debug)]
pub(crate) struct QuicListener {
    endpoint: Endpoint,
    configs: Configs,
}

/// The quinn server configuration, rebuilt when the TLS listener's certificates are reloaded.
#[derive(Debug)]
struct Configs {
    tls: Arc<TlsListener>,
    transport: Arc<TransportConfig>,
    zero_rtt: bool,
    /// The rustls configuration the cached quinn one was built from, and that one.
    current: Mutex<(Arc<rustls::ServerConfig>, Arc<quinn::ServerConfig>)>,
}

impl Configs {
    fn new(tls: Arc<TlsListener>, broker: &Broker, zero_rtt: bool) -> anyhow::Result<Self> {
        let transport = Arc::new(transport_config(broker.limits.max_keep_alive)?);
        let rustls = tls.current();
        let quinn = Arc::new(server_config(&rustls, &transport, zero_rtt)?);
        Ok(Self {
            tls,
            transport,
            zero_rtt,
            current: Mutex::new((rustls, quinn)),
        })
    }

    /// The configuration for a new connection: the cached one, or one built from the
    /// certificates a reload brought (if that fails, the cached one stays).
    fn get(&self) -> Arc<quinn::ServerConfig> {
        let rustls = self.tls.current();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current.0, &rustls) {
            match server_config(&rustls, &self.transport, self.zero_rtt) {
                Ok(q) => *current = (rustls, Arc::new(q)),
                Err(e) => warn!("QUIC: reloaded certificates not usable: {e:#}"),
            }
        }
        current.1.clone()
    }
}

/// The transport parameters of every connection: one bidirectional stream, no unidirectional
/// ones, no datagrams, bounded windows, the idle timeout from the keep-alive bound.
fn transport_config(max_keep_alive: u16) -> anyhow::Result<TransportConfig> {
    let idle = Duration::from_millis(u64::from(max_keep_alive) * 1500).clamp(MIN_IDLE, MAX_IDLE);
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(None)
        .max_idle_timeout(Some(
            IdleTimeout::try_from(idle).context("QUIC idle timeout")?,
        ));
    Ok(t)
}

/// quinn's server configuration over a copy of the listener's rustls one with ALPN `mqtt`
/// and 0-RTT as configured.
fn server_config(
    rustls: &rustls::ServerConfig,
    transport: &Arc<TransportConfig>,
    zero_rtt: bool,
) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // QUIC allows no other values: all (0-RTT on) or nothing.
    tls.max_early_data_size = if zero_rtt { u32::MAX } else { 0 };
    let crypto = QuicServerConfig::try_from(tls).context("QUIC needs TLS 1.3 cipher suites")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(transport.clone())
        .migration(true)
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

impl QuicListener {
    /// Binds the UDP socket of the QUIC listener `rt` (its certificates loaded) at `bind`.
    pub(crate) fn bind(
        bind: SocketAddr,
        rt: &ListenerRuntime,
        broker: &Broker,
    ) -> anyhow::Result<Self> {
        let Some(tls) = rt.tls.clone() else {
            anyhow::bail!("a QUIC listener needs cert_file and key_file");
        };
        let configs = Configs::new(tls, broker, rt.quic_0rtt)?;
        let endpoint = Endpoint::server((*configs.get()).clone(), bind)
            .with_context(|| format!("cannot bind UDP {bind}"))?;
        Ok(Self { endpoint, configs })
    }

    /// The bound UDP address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

/// What the accept loop shares with every connection it starts.
struct Shared {
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    limiter: Arc<AddressLimiter>,
    stop: Arc<Stop>,
}

/// Accepts QUIC connections until `stop`, then refuses new ones, gives the open ones
/// [`DRAIN`] to finish (each is told by `stop`, as on every listener) and closes the endpoint.
pub(crate) async fn accept_loop(
    listener: QuicListener,
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    permits: Arc<tokio::sync::Semaphore>,
    limiter: Arc<AddressLimiter>,
    stop: Arc<Stop>,
) {
    let QuicListener { endpoint, configs } = listener;
    let shared = Arc::new(Shared {
        rt,
        broker,
        limiter,
        stop,
    });
    loop {
        let incoming = tokio::select! {
            () = shared.stop.wait() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let Some(permits) = admit(&incoming, &shared, &permits) else {
            incoming.refuse();
            continue;
        };
        let config = configs.get();
        // Detached: the global permit it holds is how shutdown waits for it.
        tokio::spawn(connection(incoming, config, shared.clone(), permits));
    }
    endpoint.set_server_config(None);
    if tokio::time::timeout(DRAIN, endpoint.wait_idle())
        .await
        .is_err()
    {
        debug!(
            open = endpoint.open_connections(),
            "QUIC connections still open at shutdown; closing them"
        );
    }
    endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
}

/// What every listener checks before a connection costs anything: operator bans, and the
/// global and per-listener connection permits. (The per-address rate limit and flapping bans
/// count a connection once its handshake has proved the address: a UDP source address can be
/// forged, and should not get someone else banned.)
fn admit(
    incoming: &Incoming,
    shared: &Shared,
    permits: &Arc<tokio::sync::Semaphore>,
) -> Option<crate::accept::Permits> {
    let peer = incoming.remote_address();
    let broker = &shared.broker;
    if broker.bans.address_banned(peer.ip(), Instant::now()) {
        broker.metrics.connections_banned.inc();
        info!(%peer, "QUIC connection refused: address banned by an operator");
        return None;
    }
    crate::accept::Permits::take(permits, shared.rt.permits.as_ref(), broker)
}

/// One QUIC connection: the handshake and the wait for the MQTT stream (together bounded by
/// `connect_timeout_secs`, abandoned at shutdown), then the connection task over the stream,
/// then the QUIC connection closed once its last bytes are acknowledged.
async fn connection(
    incoming: Incoming,
    config: Arc<quinn::ServerConfig>,
    shared: Arc<Shared>,
    permits: crate::accept::Permits,
) {
    let Shared {
        rt,
        broker,
        limiter,
        stop,
    } = &*shared;
    let opened = Instant::now();
    let peer = incoming.remote_address();
    let listener = &rt.access.name;
    // Any duration is safe here: past the clock's range, tokio's timeout never fires.
    let connect_time = Duration::from_secs(broker.limits.connect_timeout_secs);
    let setup = async {
        let connecting = incoming.accept_with(config).map_err(|e| e.to_string())?;
        let conn = if rt.quic_0rtt {
            // A server's conversion always succeeds: the connection is usable at once, and the
            // stream below may carry the client's 0-RTT data.
            match connecting.into_0rtt() {
                Ok((conn, _accepted)) => conn,
                Err(connecting) => connecting.await.map_err(|e| e.to_string())?,
            }
        } else {
            connecting.await.map_err(|e| e.to_string())?
        };
        Ok::<_, String>(conn)
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(connect_time, setup) => match r {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                debug!(%peer, %listener, "QUIC handshake failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%peer, %listener, "QUIC handshake timed out");
                return;
            }
        },
        () = stop.wait() => return,
    };
    let peer = conn.remote_address();
    match limiter.check(peer.ip(), Instant::now(), &broker.metrics) {
        Verdict::Allow => {}
        verdict => {
            debug!(%peer, ?verdict, "QUIC connection refused after its handshake");
            conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return;
        }
    }
    rt.accepted.inc();
    let left = connect_time.saturating_sub(opened.elapsed());
    let stream = tokio::select! {
        r = tokio::time::timeout(left, conn.accept_bi()) => r,
        () = stop.wait() => {
            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
            return;
        }
    };
    let (mut send, recv) = match stream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, %listener, "QUIC connection closed before its stream: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, %listener, "no MQTT stream within the CONNECT timeout");
            conn.close(VarInt::from_u32(CLOSE_NO_STREAM), b"no stream");
            return;
        }
    };
    let info = PeerInfo {
        addr: Some(peer),
        certificate_identity: certificate_identity(&conn, rt),
        unix_uid: None,
    };
    let client = Client::new(Some(peer), opened, rt.access.clone(), info, stop);
    let options = StreamOptions {
        // quinn sends what is written without a flush.
        flush: false,
    };
    // The task's state is larger than a TCP connection's; boxed, it is one allocation.
    // The stream's two directions are two quinn streams, read and written as one.
    Box::pin(crate::connection::serve(
        tokio::io::join(recv, &mut send),
        client,
        broker.clone(),
        options,
        permits,
    ))
    .await;
    // `serve` finished the stream; its last bytes (a DISCONNECT, say) are delivered before
    // the connection closes, which would discard them.
    let _ = tokio::time::timeout(FINAL_ACK, send.stopped()).await;
    conn.close(VarInt::from_u32(CLOSE_DONE), b"");
}

/// The client certificate's identity (CN or subject), when the listener verifies client
/// certificates and takes the username from them.
fn certificate_identity(conn: &quinn::Connection, rt: &ListenerRuntime) -> Option<String> {
    let tls = rt.tls.as_ref()?;
    let source = tls.identity_source()?;
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let cert = certs.first()?;
    starling_auth::cert::certificate_identity(cert.as_ref(), source)
}
