//! Version 1, the text header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`, or
//! `UNKNOWN` followed by anything), at most 107 bytes, single spaces, decimal ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Addresses, Header, ProxyError, V1_MAX_LEN};

/// `buf` starts with `PROXY ` (or a prefix of it).
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let window = buf.get(..buf.len().min(V1_MAX_LEN)).unwrap_or(buf);
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        check_text(window)?;
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::Oversize)
        } else {
            Ok(None)
        };
    };
    let line = window.get(..cr).unwrap_or_default();
    check_text(line)?;
    match window.get(cr + 1) {
        None if cr + 1 >= V1_MAX_LEN => return Err(ProxyError::Oversize),
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::Malformed("v1: CR not followed by LF")),
    }
    let header = parse_line(line)?;
    Ok(Some((header, cr + 2)))
}

/// Printable US-ASCII only before the CRLF.
fn check_text(bytes: &[u8]) -> Result<(), ProxyError> {
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        Ok(())
    } else {
        Err(ProxyError::Malformed(
            "v1: a byte that is not printable ASCII",
        ))
    }
}

fn parse_line(line: &[u8]) -> Result<Header, ProxyError> {
    // Printable ASCII was checked: this is UTF-8.
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1: not ASCII"))?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyError::Malformed("v1: no PROXY keyword"));
    }
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest is to be ignored (the specification says so).
        return Ok(Header::default());
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::Malformed("v1: unknown protocol family")),
    };
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts.as_slice() else {
        return Err(ProxyError::Malformed(
            "v1: not four fields after the family",
        ));
    };
    let source = SocketAddr::new(ip(src, v6)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst, v6)?, port(dport)?);
    Ok(Header {
        addresses: Some(Addresses {
            source,
            destination,
        }),
        ..Header::default()
    })
}

fn ip(s: &str, v6: bool) -> Result<IpAddr, ProxyError> {
    let bad = |_| ProxyError::Malformed("v1: invalid address for its family");
    if v6 {
        s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(bad)
    } else {
        s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(bad)
    }
}

/// A decimal port: digits only, no leading zero (but `0` itself), at most 65535.
fn port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::Malformed("v1: invalid port");
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}
