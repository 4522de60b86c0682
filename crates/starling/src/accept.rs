//! Accepting connections: one accept loop per listener (the per-address limiter, then the
//! global and per-listener connection permits), the plain TCP connection task, and the TLS /
//! WebSocket handshakes (bounded by `connect_timeout_secs`, abandoned at shutdown) before a
//! connection is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_broker::{Broker, PeerInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::Protocol;
use crate::connection::{Client, Stop, StreamOptions};
use crate::limiter::{AddressLimiter, Verdict};
use crate::listener::ListenerRuntime;

/// Connections beyond `max_connections` still get a socket long enough to be refused with a
/// CONNACK; past this many more, new sockets are closed at once.
const ACCEPT_SLACK: usize = 64;

/// How many global connection permits there are: `max_connections` and the slack, at most
/// `Semaphore::MAX_PERMITS` and a count `acquire_many` can ask for (so any `max_connections`,
/// validated or not, gives a count).
pub(crate) fn permit_count(max_connections: usize) -> u32 {
    u32::try_from(max_connections.saturating_add(ACCEPT_SLACK))
        .unwrap_or(u32::MAX)
        .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_loop(
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
                    let now = Instant::now();
                    if broker.bans.address_banned(peer.ip(), now) {
                        broker.metrics.connections_banned.inc();
                        info!(%peer, "connection refused at accept: address banned by an operator");
                        drop(stream);
                        continue;
                    }
                    match limiter.check(peer.ip(), now, &broker.metrics) {
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
                    rt.accepted.inc();
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
    // Any duration is safe here: past the clock's range, tokio's timeout never fires.
    let handshake_time = Duration::from_secs(broker.limits.connect_timeout_secs);
    let max_packet = usize::try_from(broker.limits.max_packet_size).unwrap_or(usize::MAX);
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
        // Served by `tcp_connection`; QUIC listeners have their own loop (`quic.rs`).
        (Protocol::Tcp | Protocol::Quic, _) => {}
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
