//! Tests of the mosquitto.conf import: reading, mosquitto's semantics, what is refused, and
//! the configs Debian's mosquitto package ships (read from the system when installed). The
//! bridges' directives are in `bridges.rs`.

mod bridges;

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
