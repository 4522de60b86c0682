//! Tests of the environment overrides and of the key named by every config error.

use super::*;
use crate::config::{Config, Durability};

fn vars(list: &[(&str, &str)]) -> Overrides {
    Overrides::from_vars(list.iter().map(|&(k, v)| (k, v))).unwrap()
}

fn parse(text: &str, list: &[(&str, &str)]) -> anyhow::Result<Config> {
    Config::parse_with_env(text, &vars(list))
}

fn error(text: &str, list: &[(&str, &str)]) -> String {
    format!("{:#}", parse(text, list).unwrap_err())
}

#[test]
fn only_starling_variables_are_taken_and_not_the_reserved_ones() {
    let o = vars(&[
        ("PATH", "/bin"),
        ("STARLING_BIN", "/x/starling"),
        ("STARLING_GIT_COMMIT", "abc1234"),
        ("STARLING_LOG_LEVEL", "debug"),
        ("STARLING_DATA_DIR", "/d"),
    ]);
    assert_eq!(
        o.vars(),
        [
            ("STARLING_DATA_DIR".to_owned(), "/d".to_owned()),
            ("STARLING_LOG_LEVEL".to_owned(), "debug".to_owned())
        ]
    );
    assert!(vars(&[("HOME", "/root")]).is_empty());
}

#[cfg(unix)]
#[test]
fn a_value_that_is_not_utf8_is_an_error_naming_the_variable() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![0xff, 0xfe]);
    let e = Overrides::from_vars([(OsString::from("STARLING_LOG_LEVEL"), bad)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "environment variable STARLING_LOG_LEVEL: the value is not UTF-8"
    );
}

#[test]
fn the_examples_of_the_documentation() {
    let c = parse(
        "",
        &[
            ("STARLING_LISTENER_0_BIND", "0.0.0.0:1883"),
            ("STARLING_LIMITS_MAX_INFLIGHT", "100"),
            ("STARLING_HTTP_BIND", "0.0.0.0:18081"),
            ("STARLING_LOG_LEVEL", "debug"),
            ("STARLING_STORAGE_DURABILITY", "memory"),
            ("STARLING_DATA_DIR", "/var/lib/starling"),
        ],
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].bind.to_string(), "0.0.0.0:1883");
    assert_eq!(c.limits.max_inflight, 100);
    assert_eq!(c.http.bind.to_string(), "0.0.0.0:18081");
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.storage.durability, Durability::Memory);
    assert_eq!(c.data_dir.to_str(), Some("/var/lib/starling"));
    // Untouched keys keep their defaults.
    assert_eq!(c.limits.max_queued_messages, 1000);
    assert_eq!(c.storage.commit_interval_ms, 100);
}

#[test]
fn overrides_win_over_the_file_and_keep_the_rest_of_it() {
    let file = r#"
        log_level = "warn"
        [[listener]]
        bind = "127.0.0.1:1884"
        password_file = "/etc/passwd-a"
        [[listener]]
        bind = "127.0.0.1:1885"
        [limits]
        max_inflight = 7
        max_queued_messages = 50
    "#;
    let c = parse(
        file,
        &[
            ("STARLING_LISTENER_1_BIND", "10.0.0.1:1886"),
            ("STARLING_LISTENER_1_ALLOW_ANONYMOUS", "true"),
            ("STARLING_LIMITS_MAX_INFLIGHT", "9"),
        ],
    )
    .unwrap();
    assert_eq!(c.log_level, "warn");
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1884");
    assert_eq!(
        c.listeners[0].password_file.as_deref(),
        Some(std::path::Path::new("/etc/passwd-a"))
    );
    assert_eq!(c.listeners[1].bind.to_string(), "10.0.0.1:1886");
    assert_eq!(c.listeners[1].allow_anonymous, Some(true));
    assert_eq!(c.limits.max_inflight, 9);
    assert_eq!(c.limits.max_queued_messages, 50);
}

#[test]
fn optional_keys_absent_from_file_and_defaults_can_be_set() {
    let c = parse(
        "",
        &[
            ("STARLING_LISTENER_0_PASSWORD_FILE", "/etc/starling/passwd"),
            ("STARLING_LISTENER_0_ALLOW_ANONYMOUS", "false"),
            ("STARLING_MQTT_SERVER_REFERENCE", "other:1883"),
            ("STARLING_HTTP_API_KEYS_FILE", "/keys"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.listeners[0].password_file.as_deref(),
        Some(std::path::Path::new("/etc/starling/passwd"))
    );
    assert_eq!(c.listeners[0].allow_anonymous, Some(false));
    assert_eq!(c.mqtt.server_reference.as_deref(), Some("other:1883"));
    assert_eq!(
        c.http.api_keys_file.as_deref(),
        Some(std::path::Path::new("/keys"))
    );
}

#[test]
fn a_new_array_element_is_appended() {
    let c = parse(
        "",
        &[
            ("STARLING_LISTENER_1_BIND", "127.0.0.1:8080"),
            ("STARLING_LISTENER_1_PROTOCOL", "ws"),
            ("STARLING_LISTENER_1_PATH", "/ws"),
            ("STARLING_HTTP_ADMINS_0", "alice"),
            ("STARLING_HTTP_PASSWORD_FILE", "/p"),
        ],
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1883");
    assert_eq!(c.listeners[1].ws_path(), "/ws");
    assert_eq!(c.http.admins, ["alice"]);
    let e = error("", &[("STARLING_LISTENER_3_BIND", "127.0.0.1:1")]);
    assert!(
        e.contains("STARLING_LISTENER_3_BIND") && e.contains("the next one is 1, got 3"),
        "{e}"
    );
    // A listener that has no `bind` (only a Unix socket listener may do without).
    let e = error("", &[("STARLING_LISTENER_1_PROTOCOL", "ws")]);
    assert!(e.contains("listener[1].bind: required"), "{e}");
    let e = error("", &[("STARLING_LISTENER_X_BIND", "127.0.0.1:1")]);
    assert!(
        e.contains("STARLING_LISTENER_X_BIND") && e.contains("element number"),
        "{e}"
    );
}

#[test]
fn values_are_toml_when_they_parse_and_strings_otherwise() {
    let c = parse(
        "",
        &[
            // A string key given something that reads as a number stays a string.
            ("STARLING_MQTT_RESPONSE_INFORMATION_PREFIX", "1"),
            ("STARLING_LOG_LEVEL", "true"),
            // An optional string key (absent from the defaults): retried as a string.
            ("STARLING_LISTENER_0_PASSWORD_FILE", "2024"),
            // Whole arrays and quoted strings.
            ("STARLING_HTTP_VIEWERS", r#"["bob", "carol"]"#),
            ("STARLING_HTTP_PASSWORD_FILE", r#""/quoted path""#),
            ("STARLING_LIMITS_QUEUE_QOS0_OFFLINE", "true"),
        ],
    )
    .unwrap();
    assert_eq!(c.mqtt.response_information_prefix, "1");
    assert_eq!(c.log_level, "true");
    assert_eq!(
        c.listeners[0].password_file.as_deref(),
        Some(std::path::Path::new("2024"))
    );
    assert_eq!(c.http.viewers, ["bob", "carol"]);
    assert_eq!(
        c.http.password_file.as_deref(),
        Some(std::path::Path::new("/quoted path"))
    );
    assert!(c.limits.queue_qos0_offline);
    // A value smuggling a second key stays one string.
    let c = parse("", &[("STARLING_LOG_LEVEL", "info\nlog_format = \"json\"")]).unwrap();
    assert_eq!(c.log_level, "info\nlog_format = \"json\"");
    assert_eq!(c.log_format, crate::config::LogFormat::Text);
}

#[test]
fn a_variable_that_names_no_key_is_an_error_naming_it() {
    for (var, value) in [
        ("STARLING_LIMITS_MAX_INFLIHGT", "5"),
        ("STARLING_LIMTS_MAX_INFLIGHT", "5"),
        ("STARLING_LISTENER_0_BIN", "x"),
        ("STARLING_DATA_DIR_X", "x"),
        ("STARLING_HTTP", "x"),
        ("STARLING_", "x"),
        ("STARLING_LIMITS__MAX_INFLIGHT", "5"),
    ] {
        let e = error("", &[(var, value), ("STARLING_LOG_LEVEL", "info")]);
        assert!(
            e.contains(&format!("environment variable {var}")),
            "{var}: {e}"
        );
    }
}

#[test]
fn a_refused_value_names_the_variable_and_the_key() {
    let e = error("", &[("STARLING_LIMITS_MAX_INFLIGHT", "lots")]);
    assert!(
        e.starts_with("environment variable STARLING_LIMITS_MAX_INFLIGHT (limits.max_inflight): "),
        "{e}"
    );
    let e = error("", &[("STARLING_LISTENER_0_BIND", "nowhere")]);
    assert!(
        e.contains("STARLING_LISTENER_0_BIND (listener[0].bind)"),
        "{e}"
    );
    // Out of its bound: the validation's message, with the variable.
    let e = error("", &[("STARLING_LIMITS_MAX_INFLIGHT", "0")]);
    assert_eq!(
        e,
        "set by environment variable STARLING_LIMITS_MAX_INFLIGHT: limits.max_inflight: must \
         be at least 1, got 0"
    );
    let e = error(
        "[[listener]]\nbind = \"127.0.0.1:1\"\n",
        &[("STARLING_LISTENER_0_PROTOCOL", "sctp")],
    );
    assert!(
        e.contains("STARLING_LISTENER_0_PROTOCOL") && e.contains("listener[0].protocol"),
        "{e}"
    );
}

#[test]
fn file_errors_still_name_the_file_line_and_key() {
    let e = error(
        "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"nope\"\n",
        &[("STARLING_LOG_LEVEL", "debug")],
    );
    assert!(e.starts_with("listener[1].bind: "), "{e}");
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn every_error_names_its_key() {
    let cases = [
        ("[[listener]]\nbind = \"nope\"", "listener[0].bind: "),
        (
            "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = 5",
            "listener[1].bind: ",
        ),
        (
            "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nprotocol = \"ws\"",
            "listener[1].bind: required",
        ),
        ("[limits]\nmax_inflight = \"x\"", "limits.max_inflight: "),
        ("[limits]\nmax_inflihgt = 3", "limits.max_inflihgt: "),
        ("[storage]\ndurability = \"fast\"", "storage.durability: "),
        ("log_format = 3", "log_format: "),
        ("listener = []", "listener: "),
        ("[http]\ncert_file = \"c\"", "http.cert_file"),
        ("[limits]\nmax_inflight = 0", "limits.max_inflight: "),
    ];
    for (text, start) in cases {
        let e = format!("{:#}", Config::parse(text).unwrap_err());
        assert!(e.starts_with(start), "{text:?}: {e}");
    }
    // Only a TOML syntax error has no key; it quotes the line instead.
    let e = format!("{:#}", Config::parse("[limits\nx = 1").unwrap_err());
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn the_defaults_serialize_to_a_tree_every_key_resolves_against() {
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for section in ["limits", "storage", "security", "http", "mqtt"] {
        assert!(
            matches!(defaults.get(section), Some(Value::Table(_))),
            "{section}"
        );
    }
    assert!(matches!(defaults.get("listener"), Some(Value::Array(a)) if a.len() == 1));
}

#[test]
fn an_integer_beyond_i64_in_the_file_is_still_named_with_overrides() {
    let e = error(
        "[security]\nban_secs = 18446744073709551615\n",
        &[("STARLING_LOG_LEVEL", "debug")],
    );
    assert_eq!(
        e,
        "security.ban_secs: must be at most 31536000 (one year), got 18446744073709551615"
    );
}
