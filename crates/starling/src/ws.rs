//! MQTT over WebSocket (spec 6.0): the handshake (path, `mqtt` / `mqttv3.1` subprotocol) and
//! an adapter that turns the WebSocket into a byte stream for the connection task.
//!
//! MQTT packets may be split across binary frames or share one, so the adapter simply
//! concatenates binary message payloads; a text frame is an error that closes the connection
//! (MQTT-6.0.0-1). Each write goes out as one binary message. Frames and messages are limited
//! to the broker's maximum packet size.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Subprotocols accepted, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Accepts the WebSocket handshake on `stream`: the request must be for `path` and offer the
/// `mqtt` (or `mqttv3.1`) subprotocol; otherwise the client gets 404 or 400.
pub async fn accept<S>(stream: S, path: &str, max_packet_size: usize) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_forwarded(stream, path, max_packet_size)
        .await
        .map(|(ws, _)| ws)
}

/// The handshake request's headers that say whom a proxy forwarded the connection for
/// (several header lines of one name are joined with `,`, as HTTP allows).
#[derive(Debug, Default)]
pub struct Forwarded {
    /// `Forwarded` (RFC 7239).
    pub forwarded: Option<String>,
    /// `X-Forwarded-For`.
    pub x_forwarded_for: Option<String>,
}

/// [`accept`], also giving the request's [`Forwarded`] headers (believed only from a
/// trusted proxy: the caller decides).
pub async fn accept_forwarded<S>(
    stream: S,
    path: &str,
    max_packet_size: usize,
) -> io::Result<(WsStream<S>, Forwarded)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut forwarded = Forwarded::default();
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_packet_size))
        .max_frame_size(Some(max_packet_size))
        .write_buffer_size(0)
        .max_write_buffer_size(max_packet_size.saturating_mul(2).max(1 << 20));
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "no MQTT endpoint here",
            ));
        }
        let offered: Vec<&str> = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .collect();
        let joined = |name: &str| {
            let values: Vec<&str> = (req.headers().get_all(name).iter())
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        forwarded.forwarded = joined("Forwarded");
        forwarded.x_forwarded_for = joined("X-Forwarded-For");
        let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "the WebSocket subprotocol must be mqtt (or mqttv3.1)",
            ));
        };
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(ws_to_io)?;
    Ok((WsStream::new(ws), forwarded))
}

fn error_response(status: StatusCode, body: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_string()));
    *resp.status_mut() = status;
    resp
}

fn ws_to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::ConnectionAborted, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// A WebSocket as a byte stream: binary message payloads in, one binary message per write
/// out.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary message read.
    pending: Bytes,
    /// The peer closed the WebSocket.
    eof: bool,
}

impl<S> WsStream<S> {
    /// Wraps a WebSocket whose handshake is done (either side: the client commands use it too).
    pub fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                if let Some(chunk) = self.pending.get(..n) {
                    buf.put_slice(chunk);
                }
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket frame (MQTT allows binary frames only)",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                // Pings are answered by the WebSocket layer on the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(ws_to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(ws_to_io)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_to_io(e))),
        }
    }
}
