//! The client side of MQTT over QUIC, for `starling pub`, `sub` and `rr`: a quinn endpoint
//! on an ephemeral UDP port, the handshake with ALPN `mqtt` over the caller's rustls
//! configuration, and the one bidirectional stream the MQTT connection runs on, as a byte
//! stream ([`QuicStream`]) like the TCP, TLS and WebSocket ones.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ALPN;

/// How long closing the stream waits for the broker to close the connection after it has
/// read everything (so that the last packets, a DISCONNECT, are not discarded with it).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Why a QUIC connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The TLS settings cannot be used for QUIC (it needs TLS 1.3).
    #[error("QUIC: {0}")]
    Setup(String),
    /// The UDP socket could not be opened.
    #[error("QUIC: {0}")]
    Io(#[from] io::Error),
    /// The handshake or the stream failed.
    #[error("QUIC: {0}")]
    Handshake(String),
}

/// The MQTT byte stream of one QUIC connection. Shutting it down finishes the stream and
/// waits (at most [`CLOSE_WAIT`]) for the broker to close the connection.
pub struct QuicStream {
    recv: RecvStream,
    send: SendStream,
    conn: Connection,
    /// Kept for the connection's life: the endpoint's UDP socket.
    endpoint: Endpoint,
    closing: Option<Pin<Box<tokio::time::Timeout<ClosedOwned>>>>,
}

impl std::fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicStream")
            .field("remote", &self.conn.remote_address())
            .field("closing", &self.closing.is_some())
            .finish_non_exhaustive()
    }
}

/// `Connection::closed` on an owned handle.
type ClosedOwned = Pin<Box<dyn Future<Output = ()> + Send>>;

impl QuicStream {
    /// The QUIC connection (its address, statistics).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The client's endpoint (to move it to another UDP socket: `Endpoint::rebind`).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Connects to `addr`, verifying its certificate for `server_name` with `tls` (whose ALPN is
/// set here), from `bind` (or any local address), and opens the MQTT stream.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    mut tls: rustls::ClientConfig,
    bind: Option<IpAddr>,
) -> Result<QuicStream, QuicError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    // The broker's idle timeout applies; MQTT's PINGREQ keeps the connection alive.
    transport
        .max_idle_timeout(None)
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(transport));
    let local = match (bind, addr) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (None, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let endpoint = Endpoint::client(local)?;
    let conn = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| QuicError::Handshake(e.to_string()))?
        .await
        .map_err(|e| QuicError::Handshake(e.to_string()))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| QuicError::Handshake(e.to_string()))?;
    Ok(QuicStream {
        recv,
        send,
        conn,
        endpoint,
        closing: None,
    })
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_none() {
            match Pin::new(&mut this.send).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let conn = this.conn.clone();
            let closed: ClosedOwned = Box::pin(async move {
                conn.closed().await;
            });
            this.closing = Some(Box::pin(tokio::time::timeout(CLOSE_WAIT, closed)));
        }
        match this.closing.as_mut() {
            Some(closing) => closing.as_mut().poll(cx).map(|_| Ok(())),
            None => Poll::Ready(Ok(())),
        }
    }
}
