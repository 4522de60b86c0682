//! Tests of the mosquitto.conf import of bridges: mosquitto's defaults, topics, addresses,
//! options carried over or listed, TLS, and what is left out or refused.

use super::*;

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
