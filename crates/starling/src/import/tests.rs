//! Tests of the mosquitto.conf import: reading, mosquitto's semantics, what is refused, and
//! the configs Debian's mosquitto package ships (read from the system when installed).

use std::path::Path;

use super::*;
use crate::config::bridge::{BridgeProtocol, Direction};
use crate::config::{Durability, IdentityField, Protocol};

/// Imports `text` written as `mosquitto.conf` in a temporary directory.
fn import(text: &str) -> Imported {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mosquitto.conf");
    std::fs::write(&path, text).unwrap();
    import_file(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn import_err(text: &str) -> ImportError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mosquitto.conf");
    std::fs::write(&path, text).unwrap();
    import_file(&path).unwrap_err()
}

/// The finding about the directive starting with `start`.
fn finding<'a>(i: &'a Imported, start: &str) -> &'a Finding {
    i.findings
        .iter()
        .find(|f| f.directive.starts_with(start))
        .unwrap_or_else(|| panic!("no finding for {start}: {:#?}", i.findings))
}

#[test]
fn parse_skips_comments_and_blank_lines_and_keeps_line_numbers() {
    let d = conf::parse(
        Path::new("m.conf"),
        "# comment\n\n  \t\nlistener 1883 127.0.0.1\r\n  # indented comment\nacl_file /etc/a b\n",
    );
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].name.as_str(), d[0].value.as_str()),
        ("listener", "1883 127.0.0.1")
    );
    assert_eq!(d[0].loc.line, 4);
    assert_eq!(
        (d[1].name.as_str(), d[1].value.as_str()),
        ("acl_file", "/etc/a b")
    );
    assert_eq!(d[1].loc.to_string(), "m.conf:6");
}

#[test]
fn include_dir_files_are_read_in_mosquittos_order() {
    let mut names = vec!["b.conf", "A.conf", "01.conf", "a.conf", "B.conf", "00.conf"];
    names.sort_by(|a, b| conf::mosquitto_order(a, b));
    assert_eq!(
        names,
        ["00.conf", "01.conf", "A.conf", "a.conf", "B.conf", "b.conf"]
    );
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("conf.d");
    std::fs::create_dir(&inc).unwrap();
    // Read in order: the later file's value wins.
    std::fs::write(inc.join("b.conf"), "max_inflight_messages 30\n").unwrap();
    std::fs::write(
        inc.join("A.conf"),
        "max_inflight_messages 10\nlistener 1884\n",
    )
    .unwrap();
    std::fs::write(inc.join("ignored.txt"), "max_inflight_messages 99\n").unwrap();
    // In an included file, listener options before a `listener` line go to the default
    // listener, whatever the includer's current listener was.
    std::fs::write(
        inc.join("c.conf"),
        "max_connections 5\ninclude_dir /nowhere\n",
    )
    .unwrap();
    let main = dir.path().join("mosquitto.conf");
    std::fs::write(
        &main,
        format!(
            "listener 1883\ninclude_dir {}\nmax_connections 7\n",
            inc.display()
        ),
    )
    .unwrap();
    let i = import_file(&main).unwrap();
    assert_eq!(i.config.limits.max_inflight, 30);
    let binds: Vec<String> = i
        .config
        .listeners
        .iter()
        .map(|l| l.bind.to_string())
        .collect();
    assert_eq!(binds, ["0.0.0.0:1883", "0.0.0.0:1884", "0.0.0.0:1883"]);
    // max_connections 7 follows the include: back to the main file's listener 1883.
    assert_eq!(i.config.listeners[0].max_connections, Some(7));
    assert_eq!(i.config.listeners[1].max_connections, None);
    // The default listener (port 1883) got c.conf's max_connections.
    assert_eq!(i.config.listeners[2].max_connections, Some(5));
    let f = finding(&i, "include_dir /nowhere");
    assert!(f.reason.contains("main file only"), "{f}");
    assert!(f.loc.to_string().ends_with("c.conf:2"), "{f}");
}

#[test]
fn no_listener_is_local_only_with_anonymous_clients() {
    let i = import("password_file /etc/mosquitto/passwd\nacl_file /etc/mosquitto/acl\n");
    assert_eq!(i.config.listeners.len(), 1);
    let l = &i.config.listeners[0];
    assert_eq!(l.bind.to_string(), "127.0.0.1:1883");
    assert_eq!(l.allow_anonymous, Some(true));
    assert_eq!(
        l.password_file.as_deref(),
        Some(Path::new("/etc/mosquitto/passwd"))
    );
    assert_eq!(l.acl_file.as_deref(), Some(Path::new("/etc/mosquitto/acl")));
    assert!(finding(&i, "(no listener)").reason.contains("[::1]:1883"));
    // With per_listener_settings, the local-only listeners have security options of their
    // own: the ones given are unused, and said so.
    let i = import("per_listener_settings true\npassword_file /p\n");
    assert_eq!(i.config.listeners[0].password_file, None);
    assert!(i.config.listeners[0].allows_anonymous());
    assert!(
        finding(&i, "password_file /p")
            .reason
            .contains("local-only")
    );
}

#[test]
fn global_security_applies_to_every_listener_and_anonymous_defaults_to_false() {
    let i = import(
        "listener 1883 127.0.0.1\n\
         listener 8080 ::1\nprotocol websockets\n\
         password_file /p\nacl_file /a\n",
    );
    assert_eq!(i.config.listeners.len(), 2);
    for l in &i.config.listeners {
        // Explicit: Starling would let anonymous clients in on loopback by default.
        assert_eq!(l.allow_anonymous, Some(false), "{l:?}");
        assert!(!l.allows_anonymous());
        assert_eq!(l.password_file.as_deref(), Some(Path::new("/p")));
        assert_eq!(l.acl_file.as_deref(), Some(Path::new("/a")));
    }
    assert_eq!(i.config.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert_eq!(i.config.listeners[1].bind.to_string(), "[::1]:8080");
    assert_eq!(i.config.listeners[1].protocol(), Protocol::Ws);
    assert!(i.toml.contains("allow_anonymous = false\n"), "{}", i.toml);
}

#[test]
fn per_listener_settings_keep_security_with_its_listener() {
    let i = import(
        "password_file /ignored\n\
         per_listener_settings true\n\
         listener 1883 127.0.0.1\nallow_anonymous true\n\
         listener 1884 127.0.0.1\npassword_file /p2\nacl_file /a2\n",
    );
    let [a, b] = &i.config.listeners[..] else {
        panic!("{:?}", i.config.listeners)
    };
    assert_eq!(a.allow_anonymous, Some(true));
    assert_eq!(a.password_file, None);
    assert_eq!(b.allow_anonymous, Some(false));
    assert_eq!(b.password_file.as_deref(), Some(Path::new("/p2")));
    assert_eq!(b.acl_file.as_deref(), Some(Path::new("/a2")));
    let f = finding(&i, "password_file /ignored");
    assert_eq!(f.kind, FindingKind::NotCarried);
    assert!(f.reason.contains("per_listener_settings"), "{f}");
}

#[test]
fn the_default_listener_from_port_and_bind_address() {
    let i = import("port 1885\nbind_address 127.0.0.1\nmax_connections 10\n");
    assert_eq!(i.config.listeners.len(), 1);
    assert_eq!(i.config.listeners[0].bind.to_string(), "127.0.0.1:1885");
    assert_eq!(i.config.listeners[0].max_connections, Some(10));
    assert_eq!(i.config.listeners[0].allow_anonymous, Some(false));
    // A listener option before any `listener` line opens the default listener on 1883 too.
    let i = import("max_connections -1\nlistener 1884 localhost\n");
    let binds: Vec<String> = i
        .config
        .listeners
        .iter()
        .map(|l| l.bind.to_string())
        .collect();
    assert_eq!(binds, ["127.0.0.1:1884", "0.0.0.0:1883"]);
    assert_eq!(i.config.listeners[1].max_connections, None, "-1: unlimited");
    assert!(
        finding(&i, "listener 1883").reason.contains("[::]:1883"),
        "{:#?}",
        i.findings
    );
    let i = import("listener 1884\nsocket_domain ipv6\n");
    assert_eq!(i.config.listeners[0].bind.to_string(), "[::]:1884");
}

#[test]
fn tls_listeners() {
    let i = import(
        "listener 8883\n\
         certfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\n\
         require_certificate true\nuse_subject_as_username true\n\
         tls_version tlsv1.2\nciphers ECDHE-RSA-AES128-GCM-SHA256\n\
         listener 8884\ncertfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\n\
         require_certificate true\nuse_identity_as_username true\nuse_subject_as_username true\n\
         listener 8081\nprotocol websockets\ncertfile /c.pem\nkeyfile /k.pem\n\
         tls_version tlsv1.3\n",
    );
    let [a, b, c] = &i.config.listeners[..] else {
        panic!("{:?}", i.config.listeners)
    };
    assert_eq!(a.protocol(), Protocol::Tls);
    assert_eq!(a.cert_file.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(a.key_file.as_deref(), Some(Path::new("/k.pem")));
    assert_eq!(a.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    assert!(a.require_certificate);
    assert_eq!(a.use_identity_as_username, Some(IdentityField::Subject));
    // use_identity_as_username takes priority.
    assert_eq!(b.use_identity_as_username, Some(IdentityField::Cn));
    assert_eq!(c.protocol(), Protocol::Wss);
    assert!(!c.require_certificate);
    assert!(finding(&i, "ciphers").reason.contains("cipher suites"));
    assert!(
        finding(&i, "tls_version tlsv1.3")
            .reason
            .contains("minimum")
    );
    assert!(
        !i.findings
            .iter()
            .any(|f| f.directive == "tls_version tlsv1.2"),
        "TLS 1.2 as minimum is what Starling does: {:#?}",
        i.findings
    );
}

#[test]
fn listeners_that_would_be_weakened_are_left_out() {
    for (directive, reason) in [
        ("mount_point tenant-a/", "mount points"),
        ("crlfile /crl.pem", "revocation"),
        ("psk_hint hint", "TLS-PSK"),
        ("bind_interface eth0", "interface"),
        ("tls_keyform engine", "engines"),
    ] {
        let i = import(&format!(
            "listener 1883 127.0.0.1\nallow_anonymous true\nlistener 1884\n{directive}\n"
        ));
        assert_eq!(i.config.listeners.len(), 1, "{directive}");
        assert_eq!(i.config.listeners[0].bind.port(), 1883);
        let f = finding(&i, directive);
        assert_eq!(f.kind, FindingKind::NotCarried);
        assert!(f.reason.contains(reason), "{f}");
        assert!(f.reason.contains("left out"), "{f}");
    }
    // Client certificates required but only a CA directory: left out, not opened unverified.
    let i = import(
        "listener 1883\nlistener 8883\ncertfile /c\nkeyfile /k\ncapath /etc/ssl/certs\n\
         require_certificate true\n",
    );
    assert_eq!(i.config.listeners.len(), 1);
    assert!(finding(&i, "capath").reason.contains("left out"));
    // A certificate without its key.
    let i = import("listener 1883\nlistener 8883\ncertfile /c\n");
    assert_eq!(i.config.listeners.len(), 1);
    assert!(finding(&i, "certfile/keyfile").reason.contains("both"));
    // A Unix socket only: nothing to carry over.
    let e = import_err("listener 0 /run/mosquitto.sock\n");
    assert!(matches!(e, ImportError::NoListener), "{e}");
}

#[test]
fn limits_persistence_and_logging() {
    let i = import(
        "listener 1883\n\
         max_inflight_messages 10\nmax_queued_messages 0\nmax_queued_bytes 1048576\n\
         max_packet_size 20\nmax_keepalive 120\nsys_interval 0\nqueue_qos0_messages true\n\
         persistent_client_expiration 2d\n\
         persistence true\npersistence_location /var/lib/mosquitto/\n\
         log_type all\nlog_dest file /var/log/mosquitto.log\n\
         message_size_limit 1000\nretain_available false\nallow_zero_length_clientid true\n\
         autosave_interval 60\npid_file /run/m.pid\nuser mosquitto\n",
    );
    let l = &i.config.limits;
    assert_eq!(l.max_inflight, 10);
    assert_eq!(l.max_queued_messages, 10_000_000);
    assert_eq!(l.max_queued_bytes, 1_048_576);
    assert_eq!(
        l.max_packet_size, 64,
        "mosquitto allows 20; Starling's least is 64"
    );
    assert_eq!(l.max_keep_alive, 120);
    assert_eq!(l.sys_interval_secs, 0);
    let j = import("listener 1883\nsys_interval 100000\nmax_connections 200000000\n");
    assert_eq!(j.config.limits.sys_interval_secs, 86_400);
    assert_eq!(j.config.listeners[0].max_connections, Some(100_000_000));
    assert_eq!(finding(&j, "sys_interval").kind, FindingKind::Approximated);
    assert_eq!(
        finding(&j, "max_connections").kind,
        FindingKind::Approximated
    );
    assert!(l.queue_qos0_offline);
    assert_eq!(l.v3_session_expiry_secs, 2 * 86_400);
    assert_eq!(i.config.storage.durability, Durability::Sync);
    assert_eq!(i.config.data_dir, Path::new("/var/lib/mosquitto/"));
    assert_eq!(i.config.log_level, "debug");
    for (directive, kind) in [
        ("max_queued_messages 0", FindingKind::Approximated),
        ("max_packet_size 20", FindingKind::Approximated),
        ("log_dest file", FindingKind::NotCarried),
        ("message_size_limit", FindingKind::NotCarried),
        ("retain_available false", FindingKind::NotCarried),
        ("autosave_interval", FindingKind::NotCarried),
        ("pid_file", FindingKind::NotCarried),
        ("user mosquitto", FindingKind::NotCarried),
    ] {
        assert_eq!(finding(&i, directive).kind, kind, "{directive}");
    }
    assert!(
        !i.findings
            .iter()
            .any(|f| f.directive.starts_with("allow_zero_length_clientid")),
        "true is what Starling does"
    );
    let i = import("listener 1883\npersistence false\n");
    assert_eq!(i.config.storage.durability, Durability::Memory);
}

#[test]
fn unknown_directives_and_plugins_are_listed() {
    let i = import(
        "listener 1883\n\
         no_such_directive 1\nplugin /usr/lib/mosquitto_dynamic_security.so\n\
         plugin_opt_config_file /x.json\n",
    );
    assert_eq!(finding(&i, "no_such_directive").reason, "unknown directive");
    assert!(finding(&i, "plugin /usr").reason.contains("plugins"));
    assert!(
        finding(&i, "plugin_opt_config_file")
            .reason
            .contains("plugins")
    );
    // A finding names the file and line.
    let text = finding(&i, "no_such").to_string();
    assert!(
        text.contains("mosquitto.conf:2: `no_such_directive 1`: not carried over: "),
        "{text}"
    );
}

#[test]
fn a_bridge_with_mosquittos_defaults() {
    let i = import(
        "listener 1883\n\
         connection cloud\naddress broker.example.com\ntopic sensors/#\n",
    );
    let [b] = &i.config.bridges[..] else {
        panic!("{}", i.toml)
    };
    assert_eq!(b.name, "cloud");
    assert_eq!(b.address, ["broker.example.com:1883"]);
    // mosquitto's default, written explicitly: Starling's own is MQTT 5.
    assert_eq!(b.protocol, BridgeProtocol::Mqttv311);
    assert!(i.toml.contains("protocol = \"mqttv311\"\n"), "{}", i.toml);
    // "<hostname>.cloud", as mosquitto: Starling's default.
    assert_eq!(b.client_id, None);
    assert!(b.remote_client_id().ends_with(".cloud"));
    assert!(!b.clean_start && b.try_private && !b.tls);
    assert_eq!(b.keepalive_secs, 60);
    assert_eq!((b.reconnect_min_secs, b.reconnect_max_secs), (5, 30));
    let [t] = &b.topics[..] else {
        panic!("{:?}", b.topics)
    };
    assert_eq!(t.pattern, "sensors/#");
    assert_eq!((t.direction, t.qos), (Direction::Out, 0));
    assert_eq!(
        (t.local_prefix.as_str(), t.remote_prefix.as_str()),
        ("", "")
    );
    // mosquitto publishes notifications unless told not to; Starling does not.
    let f = finding(&i, "(notifications");
    assert_eq!(f.kind, FindingKind::NotCarried);
    assert_eq!(f.loc.line, 2);
    assert!(f.reason.starts_with("bridge cloud: "), "{f}");
    assert!(f.reason.contains("$SYS/broker/connection/"), "{f}");
    // Every key names its line.
    assert!(i.toml.contains("# connection cloud at "), "{}", i.toml);
    assert!(
        i.toml.contains("address = \"broker.example.com:1883\"  # "),
        "{}",
        i.toml
    );
}

#[test]
fn bridge_topics_directions_qos_and_prefixes() {
    let i = import(
        "listener 1883\n\
         connection c\naddress 10.0.0.1:1884\nnotifications false\n\
         topic sensors/# out 1 \"\" site-1/\n\
         topic cmd/# IN 2 local/ remote/\n\
         topic status/+ both 1 dev/ \"\"\n\
         topic \"\" both 0 local/one remote/one\n\
         topic # in\n\
         topic logs/# both 2 # a comment\n\
         topic a/b out 0 \"\" \"\"\n",
    );
    let b = &i.config.bridges[0];
    assert_eq!(b.address, ["10.0.0.1:1884"]);
    let got: Vec<(&str, Direction, u8, &str, &str)> = b
        .topics
        .iter()
        .map(|t| {
            (
                t.pattern.as_str(),
                t.direction,
                t.qos,
                t.local_prefix.as_str(),
                t.remote_prefix.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("sensors/#", Direction::Out, 1, "", "site-1/"),
            ("cmd/#", Direction::In, 2, "local/", "remote/"),
            ("status/+", Direction::Both, 1, "dev/", ""),
            ("", Direction::Both, 0, "local/one", "remote/one"),
            ("#", Direction::In, 0, "", ""),
            ("logs/#", Direction::Both, 2, "", ""),
            ("a/b", Direction::Out, 0, "", ""),
        ]
    );
    assert!(
        !i.findings.iter().any(|f| f.reason.contains("bridge c:")),
        "{:#?}",
        i.findings
    );
}

#[test]
fn bridge_addresses_are_a_failover_list() {
    let i = import(
        "listener 1883\n\
         connection c\naddresses a.example b.example:8883 ::1:1885\ntopic t\n\
         connection d\naddress x.example:1 y.example\nround_robin true\ntopic t\n",
    );
    let [c, d] = &i.config.bridges[..] else {
        panic!("{}", i.toml)
    };
    assert_eq!(
        c.address,
        ["a.example:1883", "b.example:8883", "[::1]:1885"]
    );
    let f = finding(&i, "addresses a.example");
    assert_eq!(f.kind, FindingKind::Approximated);
    assert!(f.reason.contains("in order from the first"), "{f}");
    assert_eq!(d.address, ["x.example:1", "y.example:1883"]);
    assert_eq!(finding(&i, "round_robin").kind, FindingKind::NotCarried);
}

#[test]
fn bridge_restart_timeout_forms() {
    let bridge = |extra: &str| {
        let i = import(&format!(
            "listener 1883\nconnection c\naddress h\ntopic t\n{extra}"
        ));
        let b = &i.config.bridges[0];
        ((b.reconnect_min_secs, b.reconnect_max_secs), i)
    };
    // mosquitto's default: 5 s, backing off up to 30 s.
    assert_eq!(bridge("").0, (5, 30));
    let (delays, i) = bridge("restart_timeout 20\n");
    assert_eq!(delays, (20, 20), "a constant");
    assert_eq!(
        finding(&i, "restart_timeout 20").kind,
        FindingKind::Approximated
    );
    let (delays, i) = bridge("restart_timeout 10 60\n");
    assert_eq!(delays, (10, 60), "base and cap");
    assert!(i.toml.contains("reconnect_max_secs = 60  # "), "{}", i.toml);
    assert_eq!(
        bridge("restart_timeout 0\n").0,
        (1, 1),
        "mosquitto uses 1 s at least"
    );
    let (delays, i) = bridge("restart_timeout 10 100000\n");
    assert_eq!(delays, (10, 86_400));
    assert!(
        finding(&i, "restart_timeout")
            .reason
            .contains("at most 86400")
    );
    let e = import_err("listener 1883\nconnection c\naddress h\ntopic t\nrestart_timeout 30 10\n");
    assert!(e.to_string().contains("lower than the base"), "{e}");
}

#[test]
fn bridge_options_carried_over() {
    let i = import(
        "listener 1883\n\
         connection c\naddress h\ntopic t\n\
         bridge_protocol_version mqttv50\nremote_clientid edge-1\n\
         remote_username u\nremote_password secret\ncleansession true\n\
         keepalive_interval 2\ntry_private false\nnotifications false\nstart_type automatic\n\
         bridge_attempt_unsubscribe false\nbridge_outgoing_retain true\n\
         bridge_max_packet_size 0\nlocal_cleansession false\n\
         connection d\naddress h\ntopic t\nclientid old-style\nusername u2\npassword p2\n\
         bridge_protocol_version mqttv31\n",
    );
    let [c, d] = &i.config.bridges[..] else {
        panic!("{}", i.toml)
    };
    assert_eq!(c.protocol, BridgeProtocol::Mqttv5);
    assert_eq!(c.client_id.as_deref(), Some("edge-1"));
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some("secret"));
    assert!(c.clean_start && !c.try_private);
    assert_eq!(c.keepalive_secs, 5, "mosquitto uses 5 s at least");
    assert_eq!(d.protocol, BridgeProtocol::Mqttv31);
    assert_eq!(d.client_id.as_deref(), Some("old-style"));
    assert_eq!(d.username.as_deref(), Some("u2"));
    assert_eq!(d.password.as_deref(), Some("p2"));
    // What Starling does too is not listed; clean_start at the remote only is said so.
    let about_c: Vec<&Finding> = i
        .findings
        .iter()
        .filter(|f| f.reason.starts_with("bridge c:"))
        .collect();
    assert_eq!(about_c.len(), 1, "{about_c:#?}");
    assert_eq!(about_c[0].directive, "cleansession true");
    assert_eq!(about_c[0].kind, FindingKind::Approximated);
    // A password without a username cannot be sent with MQTT 3.x.
    let i = import("listener 1883\nconnection c\naddress h\ntopic t\nremote_password s\n");
    assert_eq!(i.config.bridges[0].password, None);
    let f = finding(&i, "remote_password");
    assert_eq!(f.directive, "remote_password ****", "not repeated");
    assert!(f.reason.contains("only with a username"), "{f}");
}

#[test]
fn bridge_tls() {
    let pem = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let path = pem.path().join(name);
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    let i = import(&format!(
        "listener 1883\n\
         connection c\naddress h:8883\ntopic t\n\
         bridge_cafile {ca}\nbridge_certfile {cert}\nbridge_keyfile {key}\n\
         bridge_insecure true\nbridge_tls_version tlsv1.2\nbridge_alpn mqtt\n\
         connection d\naddress h:8883\ntopic t\nbridge_capath /etc/ssl/certs\n\
         bridge_tls_version tlsv1.3\n\
         connection e\naddress h\ntopic t\nbridge_certfile {cert}\nbridge_keyfile {key}\n\
         bridge_insecure true\n"
    ));
    let [c, d, e] = &i.config.bridges[..] else {
        panic!("{}", i.toml)
    };
    assert!(c.tls && c.insecure);
    assert_eq!(c.ca_file.as_deref(), Some(Path::new(&ca)));
    assert_eq!(c.cert_file.as_deref(), Some(Path::new(&cert)));
    assert_eq!(c.key_file.as_deref(), Some(Path::new(&key)));
    assert!(finding(&i, "bridge_alpn").reason.contains("ALPN"));
    assert!(
        !i.findings
            .iter()
            .any(|f| f.directive == "bridge_tls_version tlsv1.2"),
        "mosquitto's default: {:#?}",
        i.findings
    );
    // A CA directory: TLS, verified against the system's CAs.
    assert!(d.tls && d.ca_file.is_none());
    assert_eq!(finding(&i, "bridge_capath").kind, FindingKind::Approximated);
    assert!(
        finding(&i, "bridge_tls_version tlsv1.3")
            .reason
            .contains("minimum")
    );
    // No CA file or directory: mosquitto does not use TLS, and the TLS options are unused.
    assert!(!e.tls && e.cert_file.is_none() && !e.insecure);
    for directive in ["bridge_certfile", "bridge_keyfile", "bridge_insecure"] {
        let f = i
            .findings
            .iter()
            .find(|f| f.directive.starts_with(directive) && f.reason.starts_with("bridge e:"))
            .unwrap_or_else(|| panic!("{directive}: {:#?}", i.findings));
        assert!(f.reason.contains("does not use TLS"), "{f}");
    }
    // A file that is not there: Starling would refuse the config, so the bridge is left out.
    let i = import(
        "listener 1883\nconnection c\naddress h\ntopic t\nbridge_cafile /nonexistent/ca.pem\n",
    );
    assert!(i.config.bridges.is_empty());
    let f = finding(&i, "bridge_cafile /nonexistent/ca.pem");
    assert!(f.reason.contains("not a readable file"), "{f}");
    assert!(f.reason.ends_with("the bridge is left out"), "{f}");
}

#[test]
fn bridge_options_starling_lacks_are_listed() {
    let i = import(
        "listener 1883\n\
         connection c\naddress h\ntopic t\n\
         notifications true\nnotification_topic bridges/c\nnotifications_local_only true\n\
         start_type lazy\nidle_timeout 30\nthreshold 5\n\
         local_clientid local-c\nlocal_username lu\nlocal_password lp\n\
         local_cleansession true\nbridge_attempt_unsubscribe true\n\
         bridge_outgoing_retain false\nbridge_max_packet_size 1000\n\
         bridge_bind_address 192.168.1.10\n\
         connection d\naddress h\ntopic t\nstart_type once\n",
    );
    assert_eq!(i.config.bridges.len(), 2, "carried over without them");
    for (directive, reason) in [
        ("notifications true", "$SYS/broker/connection/"),
        ("notification_topic", "notifications"),
        ("notifications_local_only", "notifications"),
        ("start_type lazy", "always start"),
        ("idle_timeout", "start_type lazy"),
        ("threshold", "start_type lazy"),
        ("local_clientid", "$bridge/<name>"),
        ("local_username", "without authentication"),
        ("local_password ****", "without authentication"),
        ("local_cleansession true", "local session"),
        ("bridge_attempt_unsubscribe true", "UNSUBSCRIBE"),
        ("bridge_outgoing_retain false", "retain flag"),
        ("bridge_max_packet_size 1000", "size limit"),
        ("bridge_bind_address", "address the system chooses"),
        ("start_type once", "always start"),
    ] {
        let f = finding(&i, directive);
        assert_eq!(f.kind, FindingKind::NotCarried, "{f}");
        assert!(f.reason.contains(reason), "{f}");
    }
    assert!(
        !i.findings.iter().any(|f| f.directive.contains("lp")),
        "passwords are not repeated: {:#?}",
        i.findings
    );
}

#[test]
fn bridges_that_would_be_weakened_or_refused_are_left_out() {
    for (extra, directive, reason) in [
        (
            "bridge_identity id\nbridge_psk 0a0b\n",
            "bridge_identity id",
            "TLS-PSK",
        ),
        ("bridge_psk 0a0b\n", "bridge_psk ****", "TLS-PSK"),
        (
            "bridge_capath /etc/ssl/certs\nbridge_require_ocsp true\n",
            "bridge_require_ocsp true",
            "OCSP",
        ),
    ] {
        let i = import(&format!(
            "listener 1883\nconnection c\naddress h\ntopic t\n{extra}connection ok\naddress h\ntopic t\n"
        ));
        let names: Vec<&str> = i.config.bridges.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["ok"], "{extra}");
        let f = finding(&i, directive);
        assert!(f.reason.contains(reason), "{f}");
        assert!(f.reason.ends_with("the bridge is left out"), "{f}");
    }
    // A name Starling cannot use.
    let i = import("listener 1883\nconnection site/1\naddress h\ntopic t\n");
    assert!(i.config.bridges.is_empty());
    let f = finding(&i, "connection site/1");
    assert!(f.reason.contains("'/'"), "{f}");
    assert!(f.reason.ends_with("the bridge is left out"), "{f}");
    // A topic Starling cannot subscribe to (mosquitto only finds out when it subscribes).
    let i = import("listener 1883\nconnection c\naddress h\ntopic a/#/b\n");
    assert!(i.config.bridges.is_empty());
    assert!(finding(&i, "connection c").reason.contains("pattern"));
    // Without TLS, OCSP is unused and the bridge carried over.
    let i = import("listener 1883\nconnection c\naddress h\ntopic t\nbridge_require_ocsp true\n");
    assert_eq!(i.config.bridges.len(), 1);
    assert!(
        finding(&i, "bridge_require_ocsp")
            .reason
            .contains("does not use TLS")
    );
}

#[test]
fn bridge_options_follow_their_connection_across_includes() {
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("conf.d");
    std::fs::create_dir(&inc).unwrap();
    std::fs::write(inc.join("b.conf"), "connection b\naddress hb\ntopic b/#\n").unwrap();
    let main = dir.path().join("mosquitto.conf");
    std::fs::write(
        &main,
        format!(
            "listener 1883\nconnection a\naddress ha\ninclude_dir {}\ntopic a/#\n",
            inc.display()
        ),
    )
    .unwrap();
    let i = import_file(&main).unwrap();
    let [a, b] = &i.config.bridges[..] else {
        panic!("{}", i.toml)
    };
    assert_eq!(
        (a.name.as_str(), a.topics[0].pattern.as_str()),
        ("a", "a/#")
    );
    assert_eq!(
        (b.name.as_str(), b.topics[0].pattern.as_str()),
        ("b", "b/#")
    );
    // An included file starts with no current bridge: mosquitto refuses an option there.
    std::fs::write(inc.join("c.conf"), "topic c/#\n").unwrap();
    let e = import_file(&main).unwrap_err().to_string();
    assert!(
        e.contains("c.conf:1") && e.contains("no `connection`"),
        "{e}"
    );
}

#[test]
fn bridge_values_mosquitto_refuses_are_errors() {
    let base = "listener 1883\nconnection c\naddress h\n";
    for (text, needle) in [
        ("listener 1883\naddress h\n".to_owned(), "no `connection`"),
        (format!("{base}topic t\naddress h2\n"), "second address"),
        (
            "listener 1883\nconnection c\naddress h:0\ntopic t\n".into(),
            "invalid port",
        ),
        (format!("{base}topic t sideways\n"), "out, in or both"),
        (format!("{base}topic t out 3\n"), "0, 1 or 2"),
        (format!("{base}topic \"\" out 0 local/\n"), "empty pattern"),
        (format!("{base}topic t out 0 +/ r/\n"), "wildcards"),
        (
            format!("{base}topic t\nconnection c\naddress h\ntopic t\n"),
            "second bridge",
        ),
        (base.to_owned(), "no topic"),
        (
            "listener 1883\nconnection c\ntopic t\n".into(),
            "no address",
        ),
        (
            format!("{base}topic t\nstart_type manual\n"),
            "automatic, lazy or once",
        ),
        (
            format!("{base}topic t\nbridge_protocol_version mqttv5\n"),
            "mqttv50",
        ),
        (
            format!("{base}topic t\nremote_username a\nremote_username b\n"),
            "twice",
        ),
        (
            format!("{base}topic t\nkeepalive_interval 70000\n"),
            "65535",
        ),
        (
            format!("{base}topic t\ncleansession maybe\n"),
            "true or false",
        ),
    ] {
        let e = import_err(&text).to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
        assert!(e.contains("mosquitto refuses it too"), "{text:?}: {e}");
    }
}

#[test]
fn values_mosquitto_refuses_are_errors_naming_the_line() {
    for (text, needle) in [
        ("listener abc\n", "mosquitto.conf:1: `listener abc`"),
        ("listener 1883\nallow_anonymous yes\n", "mosquitto.conf:2"),
        (
            "listener 1883\nmax_inflight_messages many\n",
            "expected an integer",
        ),
        ("port 0\n", "expected a port"),
        ("listener 1883\nprotocol quic\n", "mqtt or websockets"),
        (
            "listener 1883\npersistent_client_expiration 3x\n",
            "h, d, w, m or y",
        ),
    ] {
        let e = import_err(text).to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
    let e = import_file(Path::new("/nonexistent/mosquitto.conf")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/mosquitto.conf"),
        "{e}"
    );
}

#[test]
fn the_generated_toml_is_what_config_parse_reads_and_names_its_sources() {
    let i = import("listener 1883 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 5\n");
    let again = crate::config::Config::parse(&i.toml).unwrap();
    assert_eq!(again.limits.max_inflight, 5);
    assert!(
        i.toml.contains("# listener 1883 127.0.0.1 at "),
        "{}",
        i.toml
    );
    assert!(i.toml.contains("max_inflight = 5  # "), "{}", i.toml);
    assert!(i.toml.contains("mosquitto.conf:3"), "{}", i.toml);
}

/// The configs of Debian's mosquitto package, when it is installed (scripts/install-test-deps.sh
/// installs it): the main config with its conf.d, and the fully commented example.
#[test]
fn debians_shipped_configs() {
    let main = Path::new("/etc/mosquitto/mosquitto.conf");
    let example = Path::new("/usr/share/doc/mosquitto/examples/mosquitto.conf");
    if !main.exists() && !example.exists() {
        eprintln!("mosquitto is not installed: Debian's configs are not checked");
        return;
    }
    if main.exists() {
        let i = import_file(main).unwrap();
        // persistence true, persistence_location /var/lib/mosquitto/, no listener.
        assert_eq!(i.config.storage.durability, Durability::Sync);
        assert_eq!(i.config.data_dir, Path::new("/var/lib/mosquitto/"));
        assert_eq!(i.config.listeners.len(), 1);
        assert_eq!(i.config.listeners[0].bind.to_string(), "127.0.0.1:1883");
        assert!(i.config.listeners[0].allows_anonymous());
        assert!(
            i.findings
                .iter()
                .any(|f| f.directive.starts_with("pid_file"))
        );
        assert!(
            i.findings
                .iter()
                .any(|f| f.directive.starts_with("log_dest file"))
        );
    }
    if example.exists() {
        // Every line is a comment: the result is mosquitto's defaults.
        let i = import_file(example).unwrap();
        assert_eq!(i.config.listeners.len(), 1);
        assert_eq!(i.config.listeners[0].bind.to_string(), "127.0.0.1:1883");
        // Uncommented, the example's directives (with its placeholders filled in) import:
        // every one is either carried over or listed.
        let text = std::fs::read_to_string(example).unwrap();
        let uncommented = uncomment_example(&text);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.conf");
        std::fs::write(&path, &uncommented).unwrap();
        let i = import_file(&path).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let listed: Vec<usize> = i.findings.iter().map(|f| f.loc.line).collect();
        assert!(listed.len() > 20, "{:#?}", i.findings);
        // Its bridge (with placeholders filled in) is carried over.
        assert_eq!(i.config.bridges.len(), 1, "{}", i.toml);
        assert_eq!(i.config.bridges[0].protocol, BridgeProtocol::Mqttv311);
        // Its one listener (8883, with certfile and keyfile) with the global security.
        assert_eq!(i.config.listeners.len(), 1, "{}", i.toml);
        let l = &i.config.listeners[0];
        assert_eq!(l.protocol(), Protocol::Tls);
        assert_eq!(l.bind.port(), 8883);
        assert_eq!(l.allow_anonymous, Some(false));
        assert!(l.password_file.is_some() && l.acl_file.is_some());
    }
}

/// The example's `#directive value` lines made directives, with values mosquitto would
/// accept in place of the empty ones.
fn uncomment_example(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(name) = words.next() else { continue };
        let is_directive = !rest.starts_with(' ')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c));
        if !is_directive {
            continue;
        }
        let value: Vec<&str> = words.collect();
        let value = match (name, value.is_empty()) {
            ("listener", _) => "8883".to_owned(),
            ("port", _) => "1883".to_owned(),
            ("address", _) => "broker.example.com:1883".to_owned(),
            ("topic", _) => "sensors/# out 1".to_owned(),
            (_, false) => value.join(" "),
            ("certfile" | "keyfile" | "cafile" | "capath" | "password_file" | "acl_file", true) => {
                format!("/etc/mosquitto/{name}")
            }
            (_, true) => continue,
        };
        out.push_str(&format!("{name} {value}\n"));
    }
    out
}
