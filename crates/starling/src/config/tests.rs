//! Tests of the configuration file: parsing, defaults, bounds and the messages for bad
//! values.

use super::*;

#[test]
fn empty_file_is_the_default() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert_eq!(c.limits.max_inflight, Limits::default().max_inflight);
}

#[test]
fn full_file() {
    let c = Config::parse(
        r#"
        data_dir = "/tmp/x"
        log_level = "debug"
        [[listener]]
        bind = "0.0.0.0:1884"
        [[listener]]
        bind = "[::1]:1885"
        protocol = "tcp"
        [limits]
        max_inflight = 10
        queue_full_policy = "refuse_newest"
        [mqtt]
        response_information_prefix = "replies/"
        [storage]
        durability = "periodic"
        commit_interval_ms = 50
        commit_priority = "normal"
        "#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.limits.max_inflight, 10);
    assert_eq!(c.mqtt.response_information_prefix, "replies/");
    assert_eq!(c.storage.durability, Durability::Periodic);
    assert_eq!(c.storage.commit_interval_ms, 50);
    assert_eq!(c.storage.max_uncommitted_mib, 64);
    let e = format!(
        "{:#}",
        Config::parse("[storage]\nmax_uncommitted_mib = 0").unwrap_err()
    );
    assert!(e.contains("max_uncommitted_mib"), "{e}");
    let e = format!(
        "{:#}",
        Config::parse("[storage]\ndurability = \"fast\"").unwrap_err()
    );
    assert!(e.contains("durability"), "{e}");
    assert_eq!(c.storage.commit_priority, CommitPriority::Normal);
    assert_eq!(
        Config::default().storage.commit_priority,
        CommitPriority::Low
    );
    let e = format!(
        "{:#}",
        Config::parse(
            "[storage]
commit_priority = \"idle\""
        )
        .unwrap_err()
    );
    assert!(e.contains("commit_priority"), "{e}");
    assert_eq!(
        c.limits.queue_full_policy,
        starling_broker::QueueFullPolicy::RefuseNewest
    );
}

#[test]
fn listeners_with_security() {
    let c = Config::parse(
        r#"
        [[listener]]
        bind = "0.0.0.0:8883"
        protocol = "tls"
        cert_file = "server.pem"
        key_file = "server.key"
        ca_file = "ca.pem"
        require_certificate = true
        use_identity_as_username = "cn"
        acl_file = "acl"
        [[listener]]
        bind = "127.0.0.1:8080"
        protocol = "ws"
        path = "/ws"
        [[listener]]
        bind = "10.0.0.1:1883"
        password_file = "passwd"
        auth_methods = ["SCRAM-SHA-256"]
        [security]
        max_connection_rate = 5
        "#,
    )
    .unwrap();
    assert_eq!(c.listeners[0].protocol(), Protocol::Tls);
    assert_eq!(
        c.listeners[0].use_identity_as_username,
        Some(IdentityField::Cn)
    );
    assert!(!c.listeners[0].allows_anonymous());
    assert_eq!(c.listeners[1].ws_path(), "/ws");
    assert!(c.listeners[1].allows_anonymous(), "loopback");
    assert!(!c.listeners[2].allows_anonymous(), "not loopback");
    assert_eq!(c.listeners[2].auth_methods, ["SCRAM-SHA-256"]);
    assert!(c.listeners[0].auth_methods.is_empty());
    assert_eq!(c.security.max_connection_rate, 5);
    assert_eq!(c.security.ban_secs, SecurityConfig::default().ban_secs);
    assert!(is_loopback("127.0.0.2".parse().unwrap()));
    assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!is_loopback("0.0.0.0".parse().unwrap()));
}

#[test]
fn listener_errors_name_the_key() {
    let cases = [
        ("protocol = \"tls\"", "listener[0].cert_file"),
        (
            "protocol = \"tls\"\ncert_file = \"c\"",
            "listener[0].key_file",
        ),
        ("cert_file = \"c\"", "listener[0].cert_file"),
        ("path = \"/mqtt\"", "listener[0].path"),
        ("protocol = \"ws\"\npath = \"mqtt\"", "listener[0].path"),
        (
            "protocol = \"tls\"\ncert_file = \"c\"\nkey_file = \"k\"\nrequire_certificate = true",
            "listener[0].ca_file",
        ),
        (
            "protocol = \"tls\"\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"a\"\nuse_identity_as_username = \"cn\"",
            "listener[0].require_certificate",
        ),
        (
            "use_identity_as_username = \"dn\"",
            "use_identity_as_username",
        ),
        ("allow_anonymous = \"yes\"", "allow_anonymous"),
        (
            "password_file = \"p\"\nauth_methods = [\"SCRAM-SHA-1\"]",
            "listener[0].auth_methods: unsupported authentication method \"SCRAM-SHA-1\"",
        ),
        (
            "password_file = \"p\"\nauth_methods = [\"SCRAM-SHA-256\", \"SCRAM-SHA-256\"]",
            "listed twice",
        ),
        (
            "auth_methods = [\"SCRAM-SHA-256\"]",
            "listener[0].password_file",
        ),
    ];
    for (keys, needle) in cases {
        let text = format!("[[listener]]\nbind = \"127.0.0.1:1\"\n{keys}\n");
        let e = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(e.contains(needle), "{keys}: {e}");
    }
}

#[test]
fn errors_name_the_key() {
    let e = format!(
        "{:#}",
        Config::parse("[limits]\nmax_inflihgt = 3").unwrap_err()
    );
    assert!(e.contains("max_inflihgt"), "{e}");
    let e = format!(
        "{:#}",
        Config::parse("[limits]\nmax_inflight = \"x\"").unwrap_err()
    );
    assert!(e.contains("max_inflight"), "{e}");
    let e = format!(
        "{:#}",
        Config::parse("[limits]\nmax_inflight = 0").unwrap_err()
    );
    assert!(e.contains("limits.max_inflight"), "{e}");
    let e = format!(
        "{:#}",
        Config::parse("[[listener]]\nbind = \"nope\"").unwrap_err()
    );
    assert!(e.contains("bind"), "{e}");
    let e = format!(
        "{:#}",
        Config::parse("[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"sctp\"").unwrap_err()
    );
    assert!(e.contains("listener[0].protocol"), "{e}");
}

#[test]
fn quic_listeners_need_certificates_and_only_they_take_quic_keys() {
    let quic = "[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"quic\"\n";
    let e = format!("{:#}", Config::parse(quic).unwrap_err());
    assert!(
        e.contains("listener[0].cert_file: required for protocol quic"),
        "{e}"
    );
    let ok = format!("{quic}cert_file = \"c\"\nkey_file = \"k\"\nquic_0rtt = true\n");
    let c = Config::parse(&ok).unwrap();
    assert_eq!(c.listeners[0].protocol(), Protocol::Quic);
    assert!(c.listeners[0].quic_0rtt);
    let tcp = "[[listener]]\nbind = \"127.0.0.1:1\"\nquic_0rtt = true\n";
    let e = format!("{:#}", Config::parse(tcp).unwrap_err());
    assert!(
        e.contains("listener[0].quic_0rtt: only for protocol \"quic\""),
        "{e}"
    );
    let certs = format!("{ok}ca_file = \"ca\"\n");
    let e = format!("{:#}", Config::parse(&certs).unwrap_err());
    assert!(
        e.contains("cannot be combined with client certificates"),
        "{e}"
    );
}

/// Every bounded key: `(table, key, min, max)`, written out rather than read from the
/// bounds so that a changed bound shows up here.
const BOUNDED: &[(&str, &str, u64, u64)] = &[
    ("limits", "max_packet_size", 64, 268_435_455),
    ("limits", "max_connect_packet_size", 64, 268_435_455),
    ("limits", "max_topic_levels", 1, 1024),
    ("limits", "max_user_properties", 0, 65_535),
    ("limits", "max_subscriptions_per_client", 0, 10_000_000),
    ("limits", "max_queued_messages", 1, 10_000_000),
    ("limits", "max_queued_bytes", 1, 1 << 40),
    (
        "limits",
        "max_queued_messages_per_subscription",
        1,
        10_000_000,
    ),
    ("limits", "max_queued_bytes_per_subscription", 1, 1 << 40),
    ("limits", "max_inflight", 1, 65_535),
    ("limits", "receive_maximum", 1, 65_535),
    ("limits", "topic_alias_maximum", 0, 65_535),
    ("limits", "max_retained_messages", 0, 100_000_000),
    ("limits", "max_connections", 1, 100_000_000),
    ("limits", "max_keep_alive", 1, 65_535),
    ("limits", "connect_timeout_secs", 1, 3600),
    ("limits", "max_session_expiry_secs", 0, 4_294_967_295),
    ("limits", "v3_session_expiry_secs", 0, 4_294_967_295),
    ("limits", "awaiting_rel_timeout_secs", 1, 31_536_000),
    ("limits", "max_publish_rate", 0, 10_000_000),
    ("limits", "sys_interval_secs", 0, 86_400),
    ("limits", "park_idle_after_secs", 0, 86_400),
    ("security", "max_connection_rate", 0, 1_000_000),
    ("security", "flapping_max_connects", 0, 1_000_000),
    ("security", "flapping_window_secs", 1, 86_400),
    ("security", "ban_secs", 1, 31_536_000),
    ("security", "max_tracked_addresses", 1, 10_000_000),
    ("storage", "commit_interval_ms", 1, 3_600_000),
    ("storage", "max_uncommitted_mib", 1, 1 << 20),
    ("storage", "min_free_bytes", 0, 1 << 50),
    ("storage", "cache_mib", 1, 1 << 20),
    ("cluster", "heartbeat_ms", 10, 60_000),
    ("cluster", "election_timeout_ms", 50, 600_000),
    ("cluster", "propose_timeout_ms", 100, 600_000),
    ("cluster", "lease_ms", 3_000, 3_600_000),
    ("cluster", "down_after_ms", 10_000, 86_400_000),
    ("listener", "max_connections", 1, 100_000_000),
];

fn with_key(table: &str, key: &str, value: u64) -> String {
    match table {
        "listener" => format!("[[listener]]\nbind = \"127.0.0.1:1\"\n{key} = {value}\n"),
        _ => format!("[{table}]\n{key} = {value}\n"),
    }
}

#[test]
fn every_bounded_key_is_checked_at_its_bounds() {
    for &(table, key, min, max) in BOUNDED {
        let named = match table {
            "listener" => format!("listener[0].{key}"),
            _ => format!("{table}.{key}"),
        };
        for ok in [min, max] {
            let text = with_key(table, key, ok);
            if let Err(e) = Config::parse(&text) {
                panic!("{named} = {ok} refused: {e:#}");
            }
        }
        let mut refused = vec![max + 1];
        if min > 0 {
            refused.push(min - 1);
        }
        for bad in refused {
            let e = format!(
                "{:#}",
                Config::parse(&with_key(table, key, bad)).unwrap_err()
            );
            // Beyond the field's type, the parser refuses it, quoting the line.
            let beyond_type = e.contains(&format!("{key} = {bad}"));
            assert!(e.contains(&named) || beyond_type, "{named} = {bad}: {e}");
            if !beyond_type {
                assert!(e.contains(&format!("got {bad}")), "{named} = {bad}: {e}");
            }
        }
    }
}

#[test]
fn the_bounds_table_covers_every_bounded_key() {
    let c = Config::default();
    let tables = [
        ("limits", c.limits.bounded().map(|(k, ..)| k).to_vec()),
        ("security", c.security.bounded().map(|(k, ..)| k).to_vec()),
        ("storage", c.storage.bounded().map(|(k, ..)| k).to_vec()),
        ("cluster", c.cluster.bounded().map(|(k, ..)| k).to_vec()),
        ("listener", vec!["max_connections"]),
    ];
    let mut n = 0;
    for (table, keys) in tables {
        for key in keys {
            n += 1;
            assert!(
                BOUNDED.iter().any(|&(t, k, ..)| t == table && k == key),
                "{table}.{key} has no case in BOUNDED"
            );
        }
    }
    assert_eq!(n, BOUNDED.len());
}

#[test]
fn the_readme_lists_every_bound() {
    let readme = include_str!("../../../../README.md");
    for &(table, key, min, max) in BOUNDED {
        let row = format!("| `{table}.{key}` | {min} ..= {max} |");
        assert!(readme.contains(&row), "README.md has no row {row}");
    }
}

#[test]
fn the_largest_integers_are_refused_naming_the_key() {
    let e = Config::parse("[security]\nban_secs = 18446744073709551615").unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "security.ban_secs: must be at most 31536000 (one year), got 18446744073709551615"
    );
    let e = Config::parse("[limits]\nconnect_timeout_secs = 18446744073709551615").unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "limits.connect_timeout_secs: must be at most 3600 (one hour), got \
         18446744073709551615"
    );
    let e = format!(
        "{:#}",
        Config::parse("[storage]\ncommit_interval_ms = 18446744073709551615").unwrap_err()
    );
    assert!(e.contains("storage.commit_interval_ms"), "{e}");
    let e = format!(
        "{:#}",
        Config::parse("[security]\nban_secs = 18446744073709551616").unwrap_err()
    );
    assert!(e.contains("ban_secs"), "{e}");
}

#[test]
fn queue_scope_and_priorities() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.limits.queue_scope, starling_broker::QueueScope::Session);
    assert!(!c.limits.buffered_queue());
    let c = Config::parse(
        r#"
        [limits]
        queue_scope = "subscription"
        max_queued_messages_per_subscription = 100
        [[limits.queue_priority]]
        filter = "alarms/#"
        priority = 10
        [[limits.queue_priority]]
        filter = "alarms/fire"
        priority = 20
        "#,
    )
    .unwrap();
    assert_eq!(
        c.limits.queue_scope,
        starling_broker::QueueScope::Subscription
    );
    assert_eq!(c.limits.max_queued_messages_per_subscription, 100);
    let topic = |t| starling_proto::TopicName::try_from_str(t).unwrap();
    assert_eq!(c.limits.priority_of(&topic("alarms/fire")), 20);
    assert_eq!(c.limits.priority_of(&topic("alarms/water")), 10);
    assert_eq!(c.limits.priority_of(&topic("data")), 0);
    for (bad, says) in [
        ("queue_scope = \"client\"", "queue_scope"),
        (
            "[[limits.queue_priority]]\nfilter = \"a/#/b\"\npriority = 1",
            "a/#/b",
        ),
        (
            "[[limits.queue_priority]]\nfilter = \"$share/g/a\"\npriority = 1",
            "shared",
        ),
        (
            "[[limits.queue_priority]]\nfilter = \"a\"\npriority = 256",
            "priority",
        ),
        (
            "[[limits.queue_priority]]\nfilter = \"a\"\nprio = 1",
            "prio",
        ),
    ] {
        let text = format!("[limits]\n{bad}\n");
        let e = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(e.contains(says), "{bad}: {e}");
    }
    let many: String = (0..65)
        .map(|n| format!("[[limits.queue_priority]]\nfilter = \"t/{n}\"\npriority = 1\n"))
        .collect();
    let e = format!("{:#}", Config::parse(&many).unwrap_err());
    assert!(
        e.contains("limits.queue_priority: must be at most 64"),
        "{e}"
    );
}
