//! The client address a proxy forwards: the PROXY protocol header read in the accept layer
//! (before TLS), bounded in size ([`starling_proto::proxy`]) and in time, from trusted
//! addresses only; the `X-Forwarded-For` / `Forwarded` headers of a WebSocket handshake from
//! a trusted proxy; and the count and log line of every connection closed over a header
//! (`starling_proxy_protocol_rejected_total{reason}`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use starling_broker::Broker;
use starling_proto::proxy::{self, Header, ProxyError, Versions};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::config::ListenerConfig;
use crate::config::transport::{Cidr, trusted};

/// A listener's forwarding settings.
#[derive(Debug, Clone)]
pub(crate) struct Forwarding {
    /// The PROXY header required, if any.
    pub(crate) versions: Option<Versions>,
    /// Who may send it (and, on WebSocket listeners, `X-Forwarded-For` / `Forwarded`).
    pub(crate) trusted: Vec<Cidr>,
    /// How long the header may take.
    pub(crate) timeout: Duration,
    /// The username is the CN of the SSL TLV (`use_identity_as_username` without TLS).
    pub(crate) identity: bool,
}

impl Forwarding {
    /// The settings of `l`; `None` when it neither requires a header nor trusts anyone.
    pub(crate) fn of(l: &ListenerConfig) -> Option<Self> {
        if l.proxy_protocol.is_none() && l.proxy_protocol_trusted.is_empty() {
            return None;
        }
        Some(Self {
            versions: l.proxy_protocol.map(|p| p.versions()),
            trusted: l.proxy_protocol_trusted.clone(),
            timeout: l.proxy_timeout(),
            identity: l.identity_from_proxy(),
        })
    }

    /// Whether `ip` may tell the client's address.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        trusted(&self.trusted, ip)
    }
}

/// Why a connection was closed over its PROXY header (the `reason` label; the index is
/// that of `starling_broker::metrics::PROXY_REJECT_REASONS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    Missing = 0,
    Malformed = 1,
    Oversize = 2,
    Timeout = 3,
    Untrusted = 4,
    WrongVersion = 5,
    Unexpected = 6,
}

impl Reject {
    fn label(self) -> &'static str {
        starling_broker::metrics::PROXY_REJECT_REASONS
            .get(self as usize)
            .copied()
            .unwrap_or("unknown")
    }
}

/// Counts the closed connection and logs why.
pub(crate) fn rejected(
    broker: &Broker,
    reason: Reject,
    peer: SocketAddr,
    listener: &str,
    detail: &str,
) {
    if let Some(c) = broker.metrics.proxy_rejected.get(reason as usize) {
        c.inc();
    }
    if detail == CLOSED_EMPTY {
        // A load balancer's TCP health check does this every few seconds: counted, and
        // logged only at debug level.
        debug!(%peer, %listener, reason = %reason.label(), "connection closed at accept: {detail}");
    } else {
        info!(%peer, %listener, reason = %reason.label(), "connection closed at accept: {detail}");
    }
}

/// The detail of a connection closed by its peer before sending anything.
const CLOSED_EMPTY: &str = "closed by the peer before sending anything (a TCP health check?)";

/// Counts and logs a PROXY header that came on a plain TCP listener that expects none (the
/// MQTT codec then closes the connection).
pub(crate) fn unexpected(broker: &Broker, peer: Option<SocketAddr>, detail: &str) {
    if let Some(c) = broker
        .metrics
        .proxy_rejected
        .get(Reject::Unexpected as usize)
    {
        c.inc();
    }
    let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    info!(%peer, reason = %Reject::Unexpected.label(), "connection closed: {detail}");
}

/// Whether a connection's first bytes are a PROXY header (or its start): what a listener
/// that expects none sees when a proxy is set to send one. Neither an MQTT CONNECT, a TLS
/// ClientHello nor an HTTP request starts like this.
/// Five bytes are needed to tell (`POST ` is not `PROXY`).
pub(crate) fn looks_like_header(first: &[u8]) -> bool {
    let Some(start) = first.get(..5) else {
        return false;
    };
    start == proxy::V1_PREFIX.get(..5).unwrap_or_default()
        || start == proxy::V2_SIGNATURE.get(..5).unwrap_or_default()
}

/// Reads the PROXY header of `stream`, and nothing after it: what follows is the client's
/// (TLS, MQTT). Bytes are peeked, and consumed only once they are known to belong to the
/// header, so a slow header costs no busy loop and a fast one no extra read.
pub(crate) async fn read_header(
    stream: &TcpStream,
    versions: Versions,
    timeout: Duration,
) -> Result<Header, (Reject, String)> {
    match tokio::time::timeout(timeout, read(stream, versions)).await {
        Ok(r) => r,
        Err(_) => Err((
            Reject::Timeout,
            format!("PROXY protocol header not complete within {timeout:?}"),
        )),
    }
}

async fn read(stream: &TcpStream, versions: Versions) -> Result<Header, (Reject, String)> {
    let max = proxy::max_len(versions);
    // What was consumed so far (all header bytes), then what was peeked after it.
    let mut buf = Vec::with_capacity(max.min(256));
    let mut peeked = vec![0u8; max];
    loop {
        let room = peeked
            .get_mut(..max.saturating_sub(buf.len()))
            .unwrap_or_default();
        let n = stream
            .peek(room)
            .await
            .map_err(|e| (Reject::Missing, format!("read failed: {e}")))?;
        let fresh = peeked.get(..n).unwrap_or_default();
        if n == 0 {
            return Err(if buf.is_empty() {
                (Reject::Missing, CLOSED_EMPTY.into())
            } else {
                let detail = "connection closed before the PROXY protocol header was complete";
                (Reject::Malformed, detail.into())
            });
        }
        let consumed = buf.len();
        buf.extend_from_slice(fresh);
        match proxy::parse(&buf, versions) {
            Ok(Some((header, len))) => {
                // Exactly the header's bytes: they were peeked, so this does not wait.
                let rest = len.saturating_sub(consumed);
                consume(stream, rest).await?;
                return Ok(header);
            }
            Ok(None) => consume(stream, n).await?,
            Err(e) => return Err((reason(&e), e.to_string())),
        }
    }
}

/// Reads and drops `n` bytes already peeked.
async fn consume(stream: &TcpStream, mut n: usize) -> Result<(), (Reject, String)> {
    let mut sink = [0u8; 256];
    while n > 0 {
        stream
            .readable()
            .await
            .map_err(|e| (Reject::Malformed, format!("read failed: {e}")))?;
        let want = n.min(sink.len());
        match stream.try_read(sink.get_mut(..want).unwrap_or_default()) {
            Ok(0) => return Err((Reject::Malformed, "connection closed in the header".into())),
            Ok(k) => n = n.saturating_sub(k),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err((Reject::Malformed, format!("read failed: {e}"))),
        }
    }
    Ok(())
}

fn reason(e: &ProxyError) -> Reject {
    match e {
        ProxyError::Missing => Reject::Missing,
        ProxyError::WrongVersion(_) => Reject::WrongVersion,
        ProxyError::Oversize => Reject::Oversize,
        ProxyError::Malformed(_) => Reject::Malformed,
    }
}

/// The client's address from a WebSocket handshake's `Forwarded` (RFC 7239, its `for=`
/// parameters) or else `X-Forwarded-For` header: walking from the nearest hop, the first
/// address not in `trusted` (each trusted proxy appends the address it saw). `None` when
/// the headers are absent or hold no valid address.
pub(crate) fn forwarded_client(
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
    trusted_nets: &[Cidr],
) -> Option<IpAddr> {
    let hops: Vec<IpAddr> = match (forwarded, x_forwarded_for) {
        (Some(f), _) => f
            .split(',')
            .flat_map(|element| element.split(';'))
            .filter_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| node_ip(v.trim()))?
            })
            .collect(),
        (None, Some(x)) => x.split(',').filter_map(|h| node_ip(h.trim())).collect(),
        (None, None) => return None,
    };
    hops.iter()
        .rev()
        .find(|ip| !trusted(trusted_nets, **ip))
        .or_else(|| hops.first())
        .copied()
}

/// An address from a header: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`,
/// `[2001:db8::1]`, `2001:db8::1`.
fn node_ip(v: &str) -> Option<IpAddr> {
    let v = v.trim_matches('"');
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = v.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|s| Cidr::try_from((*s).to_owned()).unwrap())
            .collect()
    }

    #[test]
    fn x_forwarded_for_takes_the_nearest_untrusted_hop() {
        let t = nets(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            forwarded_client(None, Some("203.0.113.9"), &t),
            Some(ip("203.0.113.9"))
        );
        // A client cannot pass itself off as another by sending its own header.
        assert_eq!(
            forwarded_client(None, Some("198.51.100.1, 203.0.113.9, 10.1.2.3"), &t),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            forwarded_client(None, Some("10.0.0.1"), &t),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(forwarded_client(None, Some("junk"), &t), None);
        assert_eq!(forwarded_client(None, None, &t), None);
    }

    #[test]
    fn forwarded_for_parameters() {
        let t = nets(&["127.0.0.1"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            forwarded_client(Some("for=192.0.2.60;proto=http;by=203.0.113.43"), None, &t),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(
            forwarded_client(
                Some("For=\"[2001:db8:cafe::17]:4711\", for=127.0.0.1"),
                Some("198.51.100.7"),
                &t
            ),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(forwarded_client(Some("for=unknown"), None, &t), None);
    }

    #[test]
    fn header_starts() {
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(!looks_like_header(b"PRO"));
        assert!(!looks_like_header(b"POST /mqtt"));
        assert!(looks_like_header(&proxy::V2_SIGNATURE));
        assert!(!looks_like_header(&[0x10, 0x0c]));
        assert!(!looks_like_header(b""));
        assert!(!looks_like_header(b"GET / HTTP/1.1"));
    }

    #[test]
    fn cidr_matching() {
        let t = nets(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "0.0.0.0/0"]);
        assert!(t[0].contains("10.200.1.1".parse().unwrap()));
        assert!(!t[0].contains("11.0.0.1".parse().unwrap()));
        assert!(t[0].contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(t[1].contains("2001:db8:1::1".parse().unwrap()));
        assert!(!t[1].contains("10.0.0.1".parse().unwrap()));
        assert!(t[2].contains("192.0.2.7".parse().unwrap()));
        assert!(!t[2].contains("192.0.2.8".parse().unwrap()));
        assert!(t[3].contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8", "host", "::/129"] {
            assert!(Cidr::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
