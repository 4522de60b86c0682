//! Tests of the transport keys: the PROXY protocol's and the Unix socket listener's.

use super::transport::{Cidr, ProxyProtocol};
use super::*;

fn listener(extra: &str) -> anyhow::Result<Config> {
    Config::parse(&format!("[[listener]]\n{extra}"))
}

fn error(extra: &str) -> String {
    format!("{:#}", listener(extra).unwrap_err())
}

#[test]
fn proxy_protocol_keys() {
    let c = listener(
        "bind = \"0.0.0.0:1883\"\nproxy_protocol = \"v2\"\n\
         proxy_protocol_trusted = [\"10.0.0.0/8\", \"2001:db8::1\"]\nproxy_protocol_timeout_ms = 250",
    )
    .unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.proxy_protocol, Some(ProxyProtocol::V2));
    assert_eq!(l.proxy_timeout().as_millis(), 250);
    assert!(l.proxy_protocol_trusted[0].contains("10.9.8.7".parse().unwrap()));
    assert!(l.proxy_protocol_trusted[1].contains("2001:db8::1".parse().unwrap()));
    assert!(!l.proxy_protocol_trusted[1].contains("2001:db8::2".parse().unwrap()));
    // The default: off, 5 s when on.
    let c = listener("bind = \"127.0.0.1:1\"").unwrap();
    assert_eq!(c.listeners[0].proxy_protocol, None);
    assert_eq!(c.listeners[0].proxy_timeout().as_millis(), 5000);
    // A CN from the SSL TLV as the username, on a listener without TLS of its own.
    let c = listener(
        "bind = \"0.0.0.0:1883\"\nproxy_protocol = \"any\"\nproxy_protocol_trusted = [\"10.0.0.1\"]\n\
         use_identity_as_username = \"cn\"",
    )
    .unwrap();
    assert!(c.listeners[0].identity_from_proxy());
    // X-Forwarded-For on a WebSocket listener, without a PROXY header.
    listener("bind = \"0.0.0.0:80\"\nprotocol = \"ws\"\nproxy_protocol_trusted = [\"10.0.0.1\"]")
        .unwrap();
}

#[test]
fn proxy_protocol_errors_name_the_key() {
    let bind = "bind = \"0.0.0.0:1883\"\n";
    let cases = [
        ("proxy_protocol = \"v3\"", "listener[0].proxy_protocol"),
        (
            "proxy_protocol = \"v1\"",
            "listener[0].proxy_protocol_trusted: proxy_protocol needs",
        ),
        (
            "proxy_protocol_trusted = [\"10.0.0.1\"]",
            "listener[0].proxy_protocol_trusted: only with",
        ),
        (
            "proxy_protocol = \"v1\"\nproxy_protocol_trusted = [\"10.0.0.0/33\"]",
            "listener[0].proxy_protocol_trusted",
        ),
        (
            "proxy_protocol = \"v1\"\nproxy_protocol_trusted = [\"host\"]",
            "listener[0].proxy_protocol_trusted",
        ),
        (
            "proxy_protocol = \"v1\"\nproxy_protocol_trusted = [\"10.0.0.1\"]\nproxy_protocol_timeout_ms = 0",
            "listener[0].proxy_protocol_timeout_ms",
        ),
        (
            "proxy_protocol_timeout_ms = 100",
            "listener[0].proxy_protocol_timeout_ms: only with",
        ),
        (
            "use_identity_as_username = \"cn\"",
            "listener[0].use_identity_as_username",
        ),
        (
            "proxy_protocol = \"v1\"\nproxy_protocol_trusted = [\"10.0.0.1\"]\nuse_identity_as_username = \"cn\"",
            "listener[0].use_identity_as_username",
        ),
        (
            "proxy_protocol = \"v2\"\nproxy_protocol_trusted = [\"10.0.0.1\"]\nuse_identity_as_username = \"subject\"",
            "listener[0].use_identity_as_username: the PROXY header carries the certificate's CN only",
        ),
        (
            "mode = \"0600\"",
            "listener[0].mode: only for protocol \"unix\"",
        ),
    ];
    for (extra, start) in cases {
        let e = error(&format!("{bind}{extra}"));
        assert!(e.starts_with(start), "{extra:?}: {e}");
    }
}

#[test]
fn unix_listener_keys() {
    let c = listener("protocol = \"unix\"\npath = \"/run/starling/mqtt.sock\"\nmode = \"0660\"")
        .unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.protocol(), Protocol::Unix);
    assert_eq!(l.unix_mode(), Some(0o660));
    assert_eq!(l.endpoint(), "/run/starling/mqtt.sock");
    // Only local processes reach it: anonymous clients are let in unless said otherwise.
    assert!(l.allows_anonymous());
    let cases = [
        ("protocol = \"unix\"", "listener[0].path: required"),
        (
            "protocol = \"unix\"\npath = \"\"",
            "listener[0].path: required",
        ),
        (
            "protocol = \"unix\"\npath = \"/s\"\nbind = \"127.0.0.1:1883\"",
            "listener[0].bind: not for protocol \"unix\"",
        ),
        (
            "protocol = \"unix\"\npath = \"/s\"\nmode = \"999\"",
            "listener[0].mode",
        ),
        (
            "protocol = \"unix\"\npath = \"/s\"\nmode = \"01777\"",
            "listener[0].mode",
        ),
        (
            "protocol = \"unix\"\npath = \"/s\"\nmode = \"rw\"",
            "listener[0].mode",
        ),
        (
            "protocol = \"unix\"\npath = \"/s\"\nproxy_protocol = \"v1\"\nproxy_protocol_trusted = [\"10.0.0.1\"]",
            "listener[0].proxy_protocol: not for protocol \"unix\"",
        ),
        (
            "protocol = \"unix\"\npath = \"/s\"\ncert_file = \"c\"",
            "listener[0].cert_file",
        ),
        (
            "protocol = \"tcp\"\npath = \"/s\"",
            "listener[0].path: only for",
        ),
    ];
    for (extra, start) in cases {
        let e = error(extra);
        assert!(e.starts_with(start), "{extra:?}: {e}");
    }
}

#[test]
fn cidr_display_and_mapped_addresses() {
    let c = Cidr::try_from("::ffff:10.0.0.0/8".to_owned());
    // An IPv4-mapped network is read as IPv4; its prefix then counts IPv4 bits.
    assert!(c.is_ok());
    let c = Cidr::try_from("192.0.2.0/24".to_owned()).unwrap();
    assert_eq!(c.to_string(), "192.0.2.0/24");
    assert!(c.contains("::ffff:192.0.2.9".parse().unwrap()));
}
