//! The PROXY protocol header (HAProxy's specification, versions 1 and 2) that a load balancer
//! or proxy sends before anything else on a connection, saying whom the connection is for.
//! Sans-IO: [`parse`] looks at the bytes read so far and answers that the header is complete
//! (with its length), that more bytes are needed, or why these bytes are not an acceptable
//! header. It never asks for more than [`V1_MAX_LEN`] bytes (version 1) or
//! [`V2_MAX_LEN`] (version 2), so a reader holding at most [`max_len`] bytes is enough.
//!
//! While [`parse`] answers `Ok(None)`, every byte given is part of the header (its end lies
//! further): a reader may consume them all and read on, and when it answers `Ok(Some(..))`
//! exactly the header's bytes are to be consumed, whatever follows belonging to the protocol
//! after it.

use std::net::SocketAddr;

mod v1;
mod v2;

#[cfg(test)]
mod tests;

/// The longest version 1 header, `\r\n` included (the specification's bound).
pub const V1_MAX_LEN: usize = 107;

/// The longest version 2 header accepted: the 16 fixed bytes and at most 2032 bytes of
/// addresses and TLVs. The specification allows 65,535; what proxies send (addresses, ALPN,
/// authority, a unique id, the TLS details with the client certificate's CN) fits in far
/// less, and a longer header is refused as oversize.
pub const V2_MAX_LEN: usize = 2048;

/// The version 2 signature, the header's first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The version 1 header's first bytes.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// Which versions a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// The text header only.
    V1,
    /// The binary header only.
    V2,
    /// Either.
    Any,
}

impl Versions {
    fn allows(self, v: Version) -> bool {
        matches!(
            (self, v),
            (Self::Any, _) | (Self::V1, Version::V1) | (Self::V2, Version::V2)
        )
    }
}

/// The most bytes [`parse`] may need for a header of the accepted versions.
pub fn max_len(versions: Versions) -> usize {
    match versions {
        Versions::V1 => V1_MAX_LEN,
        Versions::V2 | Versions::Any => V2_MAX_LEN,
    }
}

/// A header's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// A complete header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The addresses the proxy forwarded; `None` when the connection is the proxy's own
    /// (version 2 `LOCAL`, e.g. a health check), or the proxy did not say (version 1
    /// `UNKNOWN`, version 2 `UNSPEC` or Unix socket addresses): the connection's own peer
    /// address applies then.
    pub addresses: Option<Addresses>,
    /// Version 2 `LOCAL` command (the proxy's own connection).
    pub local: bool,
    /// Version 2 TLVs understood here.
    pub tlvs: Tlvs,
}

/// The forwarded connection's two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The client, as the proxy saw it.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// The version 2 TLVs kept (others are skipped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// `PP2_TYPE_ALPN`: the protocol negotiated with the client.
    pub alpn: Option<Vec<u8>>,
    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (TLS SNI), UTF-8.
    pub authority: Option<String>,
    /// `PP2_TYPE_UNIQUE_ID`: the proxy's id for the connection (at most 128 bytes).
    pub unique_id: Option<Vec<u8>>,
    /// `PP2_TYPE_SSL`: the client's TLS connection to the proxy.
    pub ssl: Option<Ssl>,
}

/// `PP2_TYPE_SSL`: what the proxy that ended TLS knows about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ssl {
    /// `PP2_CLIENT_*` bits: TLS was used (`0x01`), a client certificate was presented on
    /// this connection (`0x02`) or in the TLS session (`0x04`).
    pub client: u8,
    /// 0 when the client certificate (if any) was verified, non-zero otherwise.
    pub verify: u32,
    /// `PP2_SUBTYPE_SSL_VERSION`, e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// `PP2_SUBTYPE_SSL_CN`: the client certificate's subject Common Name.
    pub cn: Option<String>,
    /// `PP2_SUBTYPE_SSL_CIPHER`.
    pub cipher: Option<String>,
}

/// `PP2_CLIENT_SSL`.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// `PP2_CLIENT_CERT_CONN`.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// `PP2_CLIENT_CERT_SESS`.
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

impl Ssl {
    /// The client presented a certificate, and the proxy verified it.
    pub fn certificate_verified(&self) -> bool {
        self.client & PP2_CLIENT_SSL != 0
            && self.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0
            && self.verify == 0
    }

    /// The CN of a verified client certificate.
    pub fn verified_cn(&self) -> Option<&str> {
        self.cn.as_deref().filter(|_| self.certificate_verified())
    }
}

/// Why bytes are not an acceptable header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes do not start with either version's signature: no header was sent.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header of a version the listener does not accept.
    #[error("PROXY protocol version {0:?} is not accepted here")]
    WrongVersion(Version),
    /// Longer than the bound of its version.
    #[error("PROXY protocol header longer than allowed")]
    Oversize,
    /// A header that breaks the specification.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Looks at the first bytes of a connection. `Ok(Some((header, len)))`: a complete header of
/// `len` bytes; `Ok(None)`: more bytes are needed, and all of `buf` belongs to the header;
/// `Err`: not an acceptable header (the connection should be closed).
pub fn parse(buf: &[u8], versions: Versions) -> Result<Option<(Header, usize)>, ProxyError> {
    let version = if is_prefix_of(buf, V1_PREFIX) {
        Version::V1
    } else if is_prefix_of(buf, &V2_SIGNATURE) {
        Version::V2
    } else {
        return Err(ProxyError::Missing);
    };
    // Too short to tell yet, and the prefixes share no first byte: decided at the first one.
    if buf.is_empty() {
        return Ok(None);
    }
    if !versions.allows(version) {
        return Err(ProxyError::WrongVersion(version));
    }
    match version {
        Version::V1 => v1::parse(buf),
        Version::V2 => v2::parse(buf),
    }
}

/// `a` and `b` agree on their common length (one is a prefix of the other).
fn is_prefix_of(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a.get(..n) == b.get(..n)
}
