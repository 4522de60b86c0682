//! The PROXY header parser: examples from the specification and HAProxy, each way a header
//! can be refused, and properties over generated headers and arbitrary bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

/// A version 2 header: command, family/transport byte, address bytes and TLVs.
fn v2(cmd: u8, fam: u8, addrs: &[u8], tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = addrs.to_vec();
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | cmd);
    out.push(fam);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn inet_addrs(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&dst);
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&dport.to_be_bytes());
    a
}

/// An SSL TLV value: client bits, verify, sub-TLVs.
fn ssl_value(client: u8, verify: u32, subs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut v = vec![client];
    v.extend_from_slice(&verify.to_be_bytes());
    for (kind, value) in subs {
        v.push(*kind);
        v.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        v.extend_from_slice(value);
    }
    v
}

#[test]
fn v1_tcp4_and_tcp6() {
    let text = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
    let (h, len) = parse(text, Versions::V1).unwrap().unwrap();
    assert_eq!(len, text.len() - 5);
    let a = h.addresses.unwrap();
    assert_eq!(a.source, v4([192, 168, 0, 1], 56324));
    assert_eq!(a.destination, v4([192, 168, 0, 11], 443));
    assert!(!h.local);

    let text = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
    let (h, len) = parse(text, Versions::Any).unwrap().unwrap();
    assert_eq!(len, text.len());
    let a = h.addresses.unwrap();
    let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(a.source, SocketAddr::new(IpAddr::V6(src), 65535));
    assert_eq!(a.destination.port(), 0);
}

#[test]
fn v1_unknown_has_no_addresses() {
    for text in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
    ] {
        let (h, len) = parse(text, Versions::V1).unwrap().unwrap();
        assert_eq!(len, text.len());
        assert_eq!(h.addresses, None);
    }
}

#[test]
fn v1_refusals() {
    let malformed = [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.\xc3\xa9 5.6.7.8 1 2",
        b"PROXY \r\n",
    ];
    for text in malformed {
        assert!(
            matches!(parse(text, Versions::V1), Err(ProxyError::Malformed(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(text),
            parse(text, Versions::V1)
        );
    }
    let long = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 100]].concat();
    assert_eq!(parse(&long, Versions::V1), Err(ProxyError::Oversize));
    // 105 bytes and CRLF: 107, the most allowed; one more is too many.
    let fits = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 91], b"\r\n"].concat();
    assert_eq!(fits.len(), V1_MAX_LEN);
    assert!(parse(&fits, Versions::V1).unwrap().is_some());
    let over = [b"PROXY UNKNOWN ".as_slice(), &[b'a'; 92], b"\r\n"].concat();
    assert_eq!(parse(&over, Versions::V1), Err(ProxyError::Oversize));
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Versions::V2),
        Err(ProxyError::WrongVersion(Version::V1))
    );
}

#[test]
fn missing_and_incomplete() {
    // An MQTT CONNECT, a TLS ClientHello, an HTTP request: no header.
    for other in [
        &[0x10u8, 0x0c, 0, 4][..],
        &[0x16, 3, 1],
        b"GET /mqtt",
        b"PROXZ",
    ] {
        assert_eq!(parse(other, Versions::Any), Err(ProxyError::Missing));
    }
    for partial in [&b""[..], b"P", b"PROXY TCP4 1.2", &V2_SIGNATURE[..5]] {
        assert_eq!(parse(partial, Versions::Any), Ok(None));
    }
}

#[test]
fn v2_proxy_inet_with_tlvs() {
    let ssl = ssl_value(
        PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
        0,
        &[
            (0x21, b"TLSv1.3"),
            (0x22, b"device-7"),
            (0x23, b"TLS_AES_128_GCM_SHA256"),
        ],
    );
    let bytes = v2(
        1,
        0x11,
        &inet_addrs([10, 0, 0, 7], [10, 0, 0, 1], 40000, 1883),
        &[
            (0x01, b"mqtt".to_vec()),
            (0x02, b"broker.example".to_vec()),
            (0x04, vec![0; 3]),
            (0x20, ssl),
            (0xea, vec![1, 2, 3]),
        ],
    );
    let mut with_data = bytes.clone();
    with_data.extend_from_slice(&[0x10, 0x0c]);
    let (h, len) = parse(&with_data, Versions::V2).unwrap().unwrap();
    assert_eq!(len, bytes.len());
    let a = h.addresses.unwrap();
    assert_eq!(a.source, v4([10, 0, 0, 7], 40000));
    assert_eq!(a.destination, v4([10, 0, 0, 1], 1883));
    assert_eq!(h.tlvs.alpn.as_deref(), Some(&b"mqtt"[..]));
    assert_eq!(h.tlvs.authority.as_deref(), Some("broker.example"));
    let ssl = h.tlvs.ssl.unwrap();
    assert_eq!(ssl.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(ssl.verified_cn(), Some("device-7"));
    assert_eq!(ssl.cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
}

#[test]
fn v2_unverified_or_absent_certificate_gives_no_cn() {
    for (client, verify) in [
        (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 1),
        (PP2_CLIENT_SSL, 0),
    ] {
        let ssl = ssl_value(client, verify, &[(0x22, b"mallory")]);
        let bytes = v2(1, 0x11, &inet_addrs([1; 4], [2; 4], 1, 2), &[(0x20, ssl)]);
        let (h, _) = parse(&bytes, Versions::Any).unwrap().unwrap();
        let ssl = h.tlvs.ssl.unwrap();
        assert_eq!(ssl.cn.as_deref(), Some("mallory"));
        assert_eq!(ssl.verified_cn(), None);
    }
}

#[test]
fn v2_local_unspec_and_unix_have_no_addresses() {
    let local = v2(0, 0x11, &inet_addrs([1; 4], [2; 4], 1, 2), &[]);
    let (h, len) = parse(&local, Versions::V2).unwrap().unwrap();
    assert!(h.local);
    assert_eq!(h.addresses, None);
    assert_eq!(len, local.len());
    let local_unspec = v2(0, 0x00, &[], &[]);
    assert_eq!(local_unspec.len(), 16);
    assert!(
        parse(&local_unspec, Versions::Any)
            .unwrap()
            .unwrap()
            .0
            .local
    );
    let unspec = v2(1, 0x00, &[], &[]);
    assert_eq!(
        parse(&unspec, Versions::V2).unwrap().unwrap().0.addresses,
        None
    );
    let unix = v2(1, 0x31, &[0; 216], &[]);
    assert_eq!(
        parse(&unix, Versions::V2).unwrap().unwrap().0.addresses,
        None
    );
}

#[test]
fn v2_inet6() {
    let mut addrs = Ipv6Addr::LOCALHOST.octets().to_vec();
    addrs.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
    addrs.extend_from_slice(&[0, 80, 0, 81]);
    let bytes = v2(1, 0x21, &addrs, &[]);
    let a = parse(&bytes, Versions::Any)
        .unwrap()
        .unwrap()
        .0
        .addresses
        .unwrap();
    assert_eq!(
        a.source,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 80)
    );
    assert_eq!(a.destination.port(), 81);
}

#[test]
fn v2_refusals() {
    let ok = v2(1, 0x11, &inet_addrs([1; 4], [2; 4], 1, 2), &[]);
    let with = |i: usize, b: u8| {
        let mut x = ok.clone();
        x[i] = b;
        x
    };
    let malformed = [
        with(12, 0x11),             // version 1 in a binary header
        with(12, 0x22),             // command 2
        with(13, 0x41),             // family 4
        with(13, 0x13),             // transport 3
        v2(1, 0x21, &[0; 12], &[]), // IPv6 with IPv4-sized addresses
    ];
    for bytes in &malformed {
        assert!(
            matches!(parse(bytes, Versions::V2), Err(ProxyError::Malformed(_))),
            "{bytes:?}: {:?}",
            parse(bytes, Versions::V2)
        );
    }
    // A TLV running past the header's length, a truncated TLV, a short SSL TLV, a CN with a
    // control character.
    let mut tlv_past = inet_addrs([1; 4], [2; 4], 1, 2);
    tlv_past.extend_from_slice(&[0x02, 0, 9, b'a']);
    let cases = [
        v2(1, 0x11, &tlv_past, &[]),
        v2(
            1,
            0x11,
            &[inet_addrs([1; 4], [2; 4], 1, 2), vec![0x02, 0]].concat(),
            &[],
        ),
        v2(
            1,
            0x11,
            &inet_addrs([1; 4], [2; 4], 1, 2),
            &[(0x20, vec![1, 0, 0])],
        ),
        v2(
            1,
            0x11,
            &inet_addrs([1; 4], [2; 4], 1, 2),
            &[(0x20, ssl_value(7, 0, &[(0x22, b"a\nb")]))],
        ),
        v2(
            1,
            0x11,
            &inet_addrs([1; 4], [2; 4], 1, 2),
            &[(0x05, vec![0; 129])],
        ),
    ];
    for bytes in &cases {
        assert!(
            matches!(parse(bytes, Versions::Any), Err(ProxyError::Malformed(_))),
            "{bytes:?}: {:?}",
            parse(bytes, Versions::Any)
        );
    }
    // The length field alone makes it oversize: no need to wait for the bytes.
    let mut huge = ok[..16].to_vec();
    huge[14..16].copy_from_slice(&u16::try_from(V2_MAX_LEN - 15).unwrap().to_be_bytes());
    assert_eq!(parse(&huge, Versions::V2), Err(ProxyError::Oversize));
    huge[14..16].copy_from_slice(&u16::try_from(V2_MAX_LEN - 16).unwrap().to_be_bytes());
    assert_eq!(parse(&huge, Versions::V2), Ok(None));
    assert_eq!(
        parse(&ok, Versions::V1),
        Err(ProxyError::WrongVersion(Version::V2))
    );
}

fn arb_tlvs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    // Types the parser skips, so any value is acceptable.
    prop::collection::vec(
        (0xe0u8..=0xef, prop::collection::vec(any::<u8>(), 0..40)),
        0..5,
    )
}

proptest! {
    /// A v1 header made from any addresses parses back to them; every strict prefix asks
    /// for more; what follows it is left alone.
    #[test]
    fn v1_round_trip(
        src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sport: u16, dport: u16,
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let (s, d) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
        let text = format!("PROXY TCP4 {s} {d} {sport} {dport}\r\n").into_bytes();
        for k in 0..text.len() {
            prop_assert_eq!(parse(&text[..k], Versions::Any), Ok(None));
        }
        let input = [text.as_slice(), &tail].concat();
        let (h, len) = parse(&input, Versions::V1).unwrap().unwrap();
        prop_assert_eq!(len, text.len());
        prop_assert_eq!(h.addresses, Some(Addresses {
            source: v4(src, sport),
            destination: v4(dst, dport),
        }));
    }

    /// The same for version 2, IPv6 addresses, with TLVs.
    #[test]
    fn v2_round_trip(
        src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), sport: u16, dport: u16,
        tlvs in arb_tlvs(),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut addrs = src.to_vec();
        addrs.extend_from_slice(&dst);
        addrs.extend_from_slice(&sport.to_be_bytes());
        addrs.extend_from_slice(&dport.to_be_bytes());
        let bytes = v2(1, 0x21, &addrs, &tlvs);
        for k in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..k], Versions::V2), Ok(None));
        }
        let input = [bytes.as_slice(), &tail].concat();
        let (h, len) = parse(&input, Versions::Any).unwrap().unwrap();
        prop_assert_eq!(len, bytes.len());
        let a = h.addresses.unwrap();
        prop_assert_eq!(a.source, SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), sport));
        prop_assert_eq!(a.destination, SocketAddr::new(IpAddr::V6(Ipv6Addr::from(dst)), dport));
    }

    /// Any bytes: no panic; a complete header is within the bound and the input, and gives
    /// the same answer alone, while its strict prefixes ask for more; asking for more only
    /// happens below the bound.
    #[test]
    fn arbitrary_bytes(
        start in prop_oneof![
            Just(V1_PREFIX.to_vec()),
            Just(V2_SIGNATURE.to_vec()),
            Just(Vec::new()),
        ],
        rest in prop::collection::vec(any::<u8>(), 0..300),
        versions in prop_oneof![Just(Versions::V1), Just(Versions::V2), Just(Versions::Any)],
    ) {
        let input = [start.as_slice(), &rest].concat();
        match parse(&input, versions) {
            Ok(Some((h, len))) => {
                prop_assert!(len <= input.len() && len <= max_len(versions));
                prop_assert_eq!(parse(&input[..len], versions), Ok(Some((h, len))));
                for k in 0..len {
                    prop_assert_eq!(parse(&input[..k], versions), Ok(None));
                }
            }
            Ok(None) => prop_assert!(input.len() < max_len(versions)),
            Err(_) => {}
        }
    }
}
