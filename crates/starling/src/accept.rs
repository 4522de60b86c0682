//! Accepting connections: one accept loop per listener (the per-address limiter, then the
//! global and per-listener connection permits), the plain TCP connection task, and the TLS /
//! WebSocket handshakes (bounded by `connect_timeout_secs`, abandoned at shutdown) before a
//! connection is served.
//!
//! Behind a proxy (`proxy_protocol`, or a WebSocket listener's trusted `X-Forwarded-For`)
//! the client's address is known only once the PROXY header or the WebSocket handshake has
//! been read: a connection from a trusted proxy takes its permits at accept, and the ban and
//! rate-limit checks are made on the forwarded address. That address is the peer address
//! of everything after (`PeerInfo::addr`: logs, authentication, the admin API, `$SYS`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_broker::{Broker, PeerInfo};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::Protocol;
use crate::connection::{Client, Stop, StreamOptions};
use crate::limiter::{AddressLimiter, Verdict};
use crate::listener::ListenerRuntime;
use crate::proxy_protocol::{self, Reject};

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
                    // A trusted proxy's connection is admitted on the address it forwards.
                    let forwarded = rt.forwarding.as_ref().is_some_and(|f| f.trusts(peer.ip()));
                    if !forwarded {
                        if rt.forwarding.as_ref().is_some_and(|f| f.versions.is_some()) {
                            let detail = "PROXY protocol header from an address not in proxy_protocol_trusted";
                            proxy_protocol::rejected(&broker, Reject::Untrusted, peer, &rt.access.name, detail);
                            drop(stream);
                            continue;
                        }
                        if !admit(peer, &broker, &limiter) {
                            drop(stream);
                            continue;
                        }
                    }
                    let Some(permits) = take_permits(&permits, &rt, &broker) else {
                        drop(stream);
                        continue;
                    };
                    rt.accepted.inc();
                    // Detached: the global permit each holds is how shutdown waits for them.
                    if forwarded {
                        tokio::spawn(proxied(
                            stream,
                            peer,
                            rt.clone(),
                            broker.clone(),
                            limiter.clone(),
                            stop.clone(),
                            permits,
                        ));
                    } else if rt.protocol == Protocol::Tcp {
                        tokio::spawn(tcp_connection(stream, peer, &rt, &broker, &stop, permits, None));
                    } else {
                        let ctx = Handshake { rt: rt.clone(), broker: broker.clone(), stop: stop.clone(), limiter: None };
                        tokio::spawn(handle(stream, peer, ctx, permits, None));
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

/// The ban and the per-address limits, for a connection from `peer`: false if it is to be
/// closed (counted and logged here).
pub(crate) fn admit(peer: SocketAddr, broker: &Broker, limiter: &AddressLimiter) -> bool {
    let now = Instant::now();
    if broker.bans.address_banned(peer.ip(), now) {
        broker.metrics.connections_banned.inc();
        info!(%peer, "connection refused at accept: address banned by an operator");
        return false;
    }
    match limiter.check(peer.ip(), now, &broker.metrics) {
        Verdict::Allow => true,
        verdict => {
            debug!(%peer, ?verdict, "connection refused at accept");
            false
        }
    }
}

/// A connection's permits: one of the global `max_connections` and, on a listener with a
/// limit of its own, one of the listener's; given back when dropped. Every connection's task
/// holds this: 16 bytes, where two `OwnedSemaphorePermit`s would be 32.
#[derive(Debug)]
pub(crate) struct Permits {
    global: Arc<Semaphore>,
    listener: Option<Arc<Semaphore>>,
}

impl Permits {
    /// One permit of `global` and one of `listener`, or `None` (counted in
    /// `connections_refused`) when either is exhausted.
    pub(crate) fn take(
        global: &Arc<Semaphore>,
        listener: Option<&Arc<Semaphore>>,
        broker: &Broker,
    ) -> Option<Self> {
        let Ok(permit) = global.try_acquire() else {
            broker.metrics.connections_refused.inc();
            return None;
        };
        if let Some(l) = listener {
            let Ok(p) = l.try_acquire() else {
                broker.metrics.connections_refused.inc();
                return None;
            };
            p.forget();
        }
        permit.forget();
        Some(Self {
            global: global.clone(),
            listener: listener.cloned(),
        })
    }
}

impl Drop for Permits {
    fn drop(&mut self) {
        self.global.add_permits(1);
        if let Some(l) = &self.listener {
            l.add_permits(1);
        }
    }
}

/// The global and the listener's connection permits, or `None` (counted) when either is
/// exhausted.
pub(crate) fn take_permits(
    permits: &Arc<Semaphore>,
    rt: &ListenerRuntime,
    broker: &Broker,
) -> Option<Permits> {
    Permits::take(permits, rt.permits.as_ref(), broker)
}

/// A connection from a trusted proxy: its PROXY header (if the listener requires one) gives
/// the client's address, which is then admitted; a WebSocket handshake may still forward
/// one (see [`handle`]).
async fn proxied(
    stream: TcpStream,
    socket_peer: SocketAddr,
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    limiter: Arc<AddressLimiter>,
    stop: Arc<Stop>,
    permits: Permits,
) {
    let Some(fwd) = rt.forwarding.clone() else {
        return;
    };
    let mut peer = socket_peer;
    let mut identity = None;
    if let Some(versions) = fwd.versions {
        let read = tokio::select! {
            r = proxy_protocol::read_header(&stream, versions, fwd.timeout) => r,
            () = stop.wait() => return,
        };
        let header = match read {
            Ok(h) => h,
            Err((reason, detail)) => {
                proxy_protocol::rejected(&broker, reason, socket_peer, &rt.access.name, &detail);
                return;
            }
        };
        // LOCAL (the proxy's own connection) and addresses the header does not give: the
        // socket's peer.
        if let Some(a) = header.addresses {
            peer = a.source;
        }
        if fwd.identity {
            identity = (header.tlvs.ssl.as_ref())
                .and_then(|s| s.verified_cn())
                .map(str::to_owned);
        }
        debug!(%socket_peer, %peer, local = header.local, "PROXY protocol header read");
    }
    if rt.protocol == Protocol::Tcp {
        if admit(peer, &broker, &limiter) {
            tcp_connection(stream, peer, &rt, &broker, &stop, permits, identity).await;
        }
        return;
    }
    // TLS: admitted before the handshake. WebSocket: once its headers are read.
    let limiter = if rt.protocol.is_websocket() {
        Some(limiter)
    } else if admit(peer, &broker, &limiter) {
        None
    } else {
        return;
    };
    let ctx = Handshake {
        rt: rt.clone(),
        broker: broker.clone(),
        stop: stop.clone(),
        limiter,
    };
    handle(stream, peer, ctx, permits, identity).await;
}

/// The task of a plain TCP connection: no handshake, so it is the connection loop alone
/// (every idle client holds one; see `connection::serve`). `identity`: the CN a proxy that
/// ended TLS vouched for.
fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    rt: &ListenerRuntime,
    broker: &Arc<Broker>,
    stop: &Arc<Stop>,
    permits: Permits,
    identity: Option<String>,
) -> impl Future<Output = ()> + use<> {
    let _ = stream.set_nodelay(true);
    let info = PeerInfo {
        addr: Some(peer),
        certificate_identity: identity,
        unix_uid: None,
    };
    let client = Client::new(Some(peer), Instant::now(), rt.access.clone(), info, stop);
    crate::connection::serve_tcp(stream, client, broker.clone(), permits)
}

/// What the handshakes of a TLS or WebSocket connection need.
struct Handshake {
    rt: Arc<ListenerRuntime>,
    broker: Arc<Broker>,
    stop: Arc<Stop>,
    /// A trusted proxy's WebSocket connection, not admitted yet: admitted on the address
    /// its `Forwarded` / `X-Forwarded-For` header gives (or the one known so far).
    limiter: Option<Arc<AddressLimiter>>,
}

/// Runs the transport handshakes of a TLS or WebSocket listener (bounded by the CONNECT
/// timeout, and abandoned at shutdown), then serves the connection. `identity`: the CN a
/// proxy that ended TLS vouched for.
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Handshake,
    _permits: Permits,
    identity: Option<String>,
) {
    let Handshake {
        rt,
        broker,
        stop,
        limiter,
    } = ctx;
    let _ = stream.set_nodelay(true);
    let opened = Instant::now();
    // Any duration is safe here: past the clock's range, tokio's timeout never fires.
    let handshake_time = Duration::from_secs(broker.limits.connect_timeout_secs);
    let max_packet = usize::try_from(broker.limits.max_packet_size).unwrap_or(usize::MAX);
    let mut info = PeerInfo {
        addr: Some(peer),
        certificate_identity: identity,
        unix_uid: None,
    };
    let options = StreamOptions {
        flush: rt.protocol != Protocol::Tcp,
    };
    let conn = |info: PeerInfo| Client::new(info.addr, opened, rt.access.clone(), info, &stop);
    // The address a trusted proxy's WebSocket headers forward, admitted; `None`: refused.
    let forwarded = |info: &mut PeerInfo, headers: &crate::ws::Forwarded| -> Option<()> {
        let limiter = limiter.as_deref()?;
        let fwd = rt.forwarding.as_ref()?;
        let mut addr = info.addr?;
        if fwd.trusts(addr.ip()) {
            let client = proxy_protocol::forwarded_client(
                headers.forwarded.as_deref(),
                headers.x_forwarded_for.as_deref(),
                &fwd.trusted,
            );
            if let Some(ip) = client {
                debug!(proxy = %addr, client = %ip, "client address from the WebSocket headers");
                // The headers give no port.
                addr = SocketAddr::new(ip, 0);
            }
        }
        info.addr = Some(addr);
        admit(addr, &broker, limiter).then_some(())
    };
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
    // A PROXY header where none is expected would only fail the handshake: said and counted.
    if rt.forwarding.as_ref().is_none_or(|f| f.versions.is_none()) {
        let mut first = [0u8; 5];
        let n = handshake!("first bytes", stream.peek(&mut first));
        if proxy_protocol::looks_like_header(first.get(..n).unwrap_or_default()) {
            let detail =
                "a PROXY protocol header on a listener that expects none (proxy_protocol is off)";
            proxy_protocol::rejected(&broker, Reject::Unexpected, peer, &rt.access.name, detail);
            return;
        }
    }
    match (rt.protocol, &rt.tls) {
        // Served by `tcp_connection`; Unix sockets by `unix`, QUIC listeners by their own
        // loop (`quic.rs`).
        (Protocol::Tcp | Protocol::Unix | Protocol::Quic, _) => {}
        // TLS and WebSocket handshake state is large; boxed, it is freed once done.
        (Protocol::Ws, _) => {
            Box::pin(async {
                let (ws, headers) = handshake!(
                    "WebSocket",
                    crate::ws::accept_forwarded(stream, &rt.ws_path, max_packet)
                );
                if limiter.is_some() && forwarded(&mut info, &headers).is_none() {
                    return;
                }
                crate::connection::serve(ws, conn(info), broker.clone(), options, ()).await;
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
                    crate::connection::serve(tls_stream, conn(info), broker.clone(), options, ())
                        .await;
                } else {
                    let (ws, headers) = handshake!(
                        "WebSocket",
                        crate::ws::accept_forwarded(tls_stream, &rt.ws_path, max_packet)
                    );
                    if limiter.is_some() && forwarded(&mut info, &headers).is_none() {
                        return;
                    }
                    crate::connection::serve(ws, conn(info), broker.clone(), options, ()).await;
                }
            })
            .await
        }
        (Protocol::Tls | Protocol::Wss, None) => {}
    }
}
