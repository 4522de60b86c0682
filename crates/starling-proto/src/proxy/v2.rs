//! Version 2, the binary header: the 12-byte signature, version and command, family and
//! transport, the length of what follows (big-endian), the addresses, then TLVs (type,
//! 16-bit big-endian length, value) up to that length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Header, ProxyError, Ssl, Tlvs, V2_MAX_LEN};

/// The signature, version/command, family/transport and length bytes.
const FIXED: usize = 16;

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;

const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;

const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;

/// The longest unique id the specification allows.
const UNIQUE_ID_MAX: usize = 128;

/// `buf` starts with the signature (or a prefix of it).
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(fixed) = buf.get(..FIXED) else {
        return Ok(None);
    };
    let [.., ver_cmd, fam, l0, l1] = *fixed else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2: version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        CMD_LOCAL => true,
        CMD_PROXY => false,
        _ => return Err(ProxyError::Malformed("v2: unknown command")),
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let total = FIXED + len;
    if total > V2_MAX_LEN {
        return Err(ProxyError::Oversize);
    }
    let Some(body) = buf.get(FIXED..total) else {
        return Ok(None);
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if transport > 2 {
        return Err(ProxyError::Malformed("v2: unknown transport"));
    }
    let addr_len = match family {
        AF_UNSPEC => 0,
        AF_INET => 12,
        AF_INET6 => 36,
        AF_UNIX => 216,
        _ => return Err(ProxyError::Malformed("v2: unknown address family")),
    };
    let Some(addrs) = body.get(..addr_len) else {
        return Err(ProxyError::Malformed(
            "v2: addresses longer than the header",
        ));
    };
    let tlvs = parse_tlvs(body.get(addr_len..).unwrap_or_default())?;
    // LOCAL: the addresses (if any) are to be ignored. UNSPEC and Unix sockets: no IP
    // address to take.
    let addresses = match family {
        _ if local => None,
        AF_INET => Some(inet(addrs)?),
        AF_INET6 => Some(inet6(addrs)?),
        _ => None,
    };
    Ok(Some((
        Header {
            addresses,
            local,
            tlvs,
        },
        total,
    )))
}

fn inet(a: &[u8]) -> Result<Addresses, ProxyError> {
    let bad = || ProxyError::Malformed("v2: short IPv4 addresses");
    let src: [u8; 4] = a
        .get(0..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let dst: [u8; 4] = a
        .get(4..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let (sport, dport) = ports(a.get(8..12).ok_or_else(bad)?);
    Ok(Addresses {
        source: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(src)), sport),
        destination: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(dst)), dport),
    })
}

fn inet6(a: &[u8]) -> Result<Addresses, ProxyError> {
    let bad = || ProxyError::Malformed("v2: short IPv6 addresses");
    let src: [u8; 16] = a
        .get(0..16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let dst: [u8; 16] = a
        .get(16..32)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let (sport, dport) = ports(a.get(32..36).ok_or_else(bad)?);
    Ok(Addresses {
        source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), sport),
        destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(dst)), dport),
    })
}

fn ports(p: &[u8]) -> (u16, u16) {
    match *p {
        [a, b, c, d] => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
        _ => (0, 0),
    }
}

/// Splits `bytes` into TLVs: `(type, value)`, each within `bytes`.
fn tlv_iter(mut bytes: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), ProxyError>> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let Some((&[kind, l0, l1], rest)) = bytes.split_first_chunk::<3>() else {
            bytes = &[];
            return Some(Err(ProxyError::Malformed("v2: truncated TLV")));
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let Some(value) = rest.get(..len) else {
            bytes = &[];
            return Some(Err(ProxyError::Malformed("v2: TLV longer than the header")));
        };
        bytes = rest.get(len..).unwrap_or_default();
        Some(Ok((kind, value)))
    })
}

fn parse_tlvs(bytes: &[u8]) -> Result<Tlvs, ProxyError> {
    let mut tlvs = Tlvs::default();
    for tlv in tlv_iter(bytes) {
        let (kind, value) = tlv?;
        match kind {
            PP2_TYPE_ALPN => tlvs.alpn = Some(value.to_vec()),
            PP2_TYPE_AUTHORITY => tlvs.authority = Some(text(value, "v2: authority")?),
            PP2_TYPE_UNIQUE_ID => {
                if value.len() > UNIQUE_ID_MAX {
                    return Err(ProxyError::Malformed("v2: unique id over 128 bytes"));
                }
                tlvs.unique_id = Some(value.to_vec());
            }
            PP2_TYPE_SSL => tlvs.ssl = Some(ssl(value)?),
            // CRC32C, NOOP, NETNS, and the ranges left to applications and vendors (a cloud
            // load balancer's endpoint id): not needed here.
            _ => {}
        }
    }
    Ok(tlvs)
}

fn ssl(value: &[u8]) -> Result<Ssl, ProxyError> {
    let Some((&[client, v0, v1, v2, v3], subs)) = value.split_first_chunk::<5>() else {
        return Err(ProxyError::Malformed("v2: SSL TLV shorter than 5 bytes"));
    };
    let mut ssl = Ssl {
        client,
        verify: u32::from_be_bytes([v0, v1, v2, v3]),
        ..Ssl::default()
    };
    for sub in tlv_iter(subs) {
        let (kind, value) = sub?;
        match kind {
            PP2_SUBTYPE_SSL_VERSION => ssl.version = Some(text(value, "v2: SSL version")?),
            PP2_SUBTYPE_SSL_CN => ssl.cn = Some(text(value, "v2: SSL CN")?),
            PP2_SUBTYPE_SSL_CIPHER => ssl.cipher = Some(text(value, "v2: SSL cipher")?),
            _ => {}
        }
    }
    Ok(ssl)
}

/// A TLV that holds UTF-8 text, without control characters (it ends up in logs and as a
/// username).
fn text(value: &[u8], what: &'static str) -> Result<String, ProxyError> {
    match std::str::from_utf8(value) {
        Ok(s) if !s.chars().any(char::is_control) => Ok(s.to_owned()),
        _ => Err(ProxyError::Malformed(what)),
    }
}
