//! What mosquitto's directives mean, replayed in order as mosquitto reads them: the current
//! listener (the implicit default one until a `listener` line), `per_listener_settings`
//! deciding whether security options belong to that listener or to all, bridges, and the
//! defaults mosquitto applies at the end (local-only mode, `allow_anonymous false`). The
//! result is a [`Plan`]: Starling's listeners and keys, and a finding for every directive not
//! carried over exactly.

use std::path::Path;
use std::sync::Arc;

use super::bridge::Bridge;
use super::conf::{Directive, Item, Loc};
use super::{Finding, FindingKind, ImportError};

/// A value of the generated config.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A list of strings.
    List(Vec<String>),
    /// A boolean.
    Bool(bool),
}

/// A key of the generated config with where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The key within its table.
    pub key: &'static str,
    /// Its value.
    pub value: Val,
    /// The directive it comes from (`None`: a default of mosquitto's made explicit).
    pub from: Option<Loc>,
}

/// One `[[listener]]` of the generated config.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedListener {
    /// What it comes from, for a comment (`listener 8883 at mosquitto.conf:12`).
    pub origin: String,
    /// Its keys, `bind` first.
    pub settings: Vec<Setting>,
}

/// One `[[bridge]]` of the generated config.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBridge {
    /// What it comes from, for a comment (`connection cloud at mosquitto.conf:20`).
    pub origin: String,
    /// Its keys, `name` first.
    pub settings: Vec<Setting>,
    /// Its `[[bridge.topic]]` tables.
    pub topics: Vec<Vec<Setting>>,
}

/// The generated config, before it is written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Top-level keys (`data_dir`, `log_level`).
    pub top: Vec<Setting>,
    /// The listeners.
    pub listeners: Vec<PlannedListener>,
    /// `[limits]`.
    pub limits: Vec<Setting>,
    /// `[storage]`.
    pub storage: Vec<Setting>,
    /// The bridges.
    pub bridges: Vec<PlannedBridge>,
}

/// A value with the directive that set it.
pub(super) type At<T> = Option<(T, Loc)>;

/// Authentication and access options: global, or one listener's with
/// `per_listener_settings true`.
#[derive(Debug, Clone, Default)]
pub(super) struct Security {
    pub(super) password_file: At<String>,
    pub(super) acl_file: At<String>,
    pub(super) allow_anonymous: At<bool>,
}

impl Security {
    pub(super) fn is_empty(&self) -> bool {
        self.password_file.is_none() && self.acl_file.is_none() && self.allow_anonymous.is_none()
    }
}

/// A mosquitto listener as configured.
#[derive(Debug, Clone, Default)]
pub(super) struct Listener {
    /// The `listener` line (`None`: the default listener).
    pub(super) defined: Option<Loc>,
    pub(super) port: u16,
    pub(super) host: Option<String>,
    pub(super) websockets: bool,
    pub(super) socket_domain: Option<String>,
    pub(super) cafile: At<String>,
    pub(super) capath: At<String>,
    pub(super) certfile: At<String>,
    pub(super) keyfile: At<String>,
    pub(super) require_certificate: bool,
    pub(super) use_identity_as_username: At<bool>,
    pub(super) use_subject_as_username: At<bool>,
    pub(super) max_connections: At<i64>,
    pub(super) security: Security,
    /// Why the listener cannot be carried over without weakening it (it is left out).
    pub(super) unsafe_to_carry: Vec<(Loc, String, String)>,
    /// The default listener had an option set (mosquitto then opens it).
    pub(super) touched: bool,
}

const NO_PLUGINS: &str = "Starling does not load mosquitto plugins; access the plugin granted or \
                          denied is not carried over";

/// The interpreter's state.
#[derive(Debug)]
pub(super) struct State {
    pub(super) per_listener_settings: bool,
    pub(super) global: Security,
    pub(super) listeners: Vec<Listener>,
    pub(super) default: Listener,
    /// The listener options apply to (`None`: the default listener).
    pub(super) current: Option<usize>,
    /// The includer's current listener and bridge, while an included file is read.
    pub(super) stack: Vec<(Option<usize>, Option<usize>)>,
    /// The bridges, in order.
    pub(super) bridges: Vec<Bridge>,
    /// The bridge bridge options apply to (index in `bridges`).
    pub(super) bridge: Option<usize>,
    /// No `listener`, `port` or `bind_address`: mosquitto listens on localhost only.
    pub(super) local_only: bool,
    /// The main config file, for findings about the config as a whole.
    pub(super) main: Loc,
    pub(super) plan: Plan,
    pub(super) findings: Vec<Finding>,
}

/// Replays `items` (read from `main` and its includes) and returns the plan and the
/// findings.
pub fn plan(items: &[Item], main: &Path) -> Result<(Plan, Vec<Finding>), ImportError> {
    let mut s = State {
        per_listener_settings: false,
        global: Security::default(),
        listeners: Vec::new(),
        default: Listener::default(),
        current: None,
        stack: Vec::new(),
        bridges: Vec::new(),
        bridge: None,
        local_only: true,
        main: Loc {
            file: Arc::from(main),
            line: 0,
        },
        plan: Plan::default(),
        findings: Vec::new(),
    };
    for item in items {
        match item {
            Item::Enter => {
                s.stack.push((s.current, s.bridge.take()));
                s.current = None;
            }
            Item::Leave => {
                if let Some((current, bridge)) = s.stack.pop() {
                    s.current = current;
                    s.bridge = bridge;
                }
            }
            Item::Directive(d) => s.directive(d)?,
        }
    }
    s.finish()
}

pub(super) fn parse_bool(d: &Directive) -> Result<bool, ImportError> {
    match d.value.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(d, "expected true or false")),
    }
}

pub(super) fn parse_int(d: &Directive) -> Result<i64, ImportError> {
    d.value
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid(d, "expected an integer"))
}

pub(super) fn invalid(d: &Directive, reason: &str) -> ImportError {
    ImportError::Invalid {
        loc: d.loc.clone(),
        directive: d.text(),
        reason: reason.to_owned(),
    }
}

pub(super) fn string(d: &Directive) -> Result<At<String>, ImportError> {
    if d.value.is_empty() {
        return Err(invalid(d, "expected a value"));
    }
    Ok(Some((d.value.clone(), d.loc.clone())))
}

impl State {
    fn skip(&mut self, d: &Directive, reason: impl Into<String>) {
        self.findings.push(Finding {
            loc: d.loc.clone(),
            directive: d.text(),
            kind: FindingKind::NotCarried,
            reason: reason.into(),
        });
    }

    fn approximate(&mut self, d: &Directive, reason: impl Into<String>) {
        self.findings.push(Finding {
            loc: d.loc.clone(),
            directive: d.text(),
            kind: FindingKind::Approximated,
            reason: reason.into(),
        });
    }

    fn listener(&mut self) -> &mut Listener {
        match self.current.and_then(|i| self.listeners.get_mut(i)) {
            Some(l) => l,
            None => &mut self.default,
        }
    }

    /// The listener an option applies to, marked as configured.
    fn listener_option(&mut self) -> &mut Listener {
        let l = self.listener();
        l.touched = true;
        l
    }

    fn security(&mut self) -> &mut Security {
        if self.per_listener_settings {
            &mut self.listener().security
        } else {
            &mut self.global
        }
    }

    /// Leaves the current listener out, for a reason.
    fn unsafe_listener_option(&mut self, d: &Directive, reason: &str) {
        let l = self.listener_option();
        l.unsafe_to_carry
            .push((d.loc.clone(), d.text(), reason.to_owned()));
    }

    fn set(&mut self, table: Table, key: &'static str, value: Val, d: &Directive) {
        let settings = match table {
            Table::Top => &mut self.plan.top,
            Table::Limits => &mut self.plan.limits,
            Table::Storage => &mut self.plan.storage,
        };
        settings.retain(|s| s.key != key);
        settings.push(Setting {
            key,
            value,
            from: Some(d.loc.clone()),
        });
    }

    /// A count where mosquitto's 0 means "no maximum": Starling's largest value instead.
    fn count(
        &mut self,
        d: &Directive,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Result<(), ImportError> {
        let n = parse_int(d)?;
        let value = if n <= 0 {
            self.approximate(
                d,
                format!("no maximum in mosquitto; Starling has one: limits.{key} = {max}"),
            );
            max
        } else if n > max || n < min {
            let clamped = n.clamp(min, max);
            self.approximate(
                d,
                format!("limits.{key} must be within {min} ..= {max}: {clamped}"),
            );
            clamped
        } else {
            n
        };
        self.set(Table::Limits, key, Val::Int(value), d);
        Ok(())
    }

    fn directive(&mut self, d: &Directive) -> Result<(), ImportError> {
        let name = d.name.as_str();
        if let Some(result) = self.bridge_directive(d) {
            return result;
        }
        match name {
            // Security, global or per listener.
            "per_listener_settings" => self.per_listener_settings = parse_bool(d)?,
            "password_file" => {
                let v = string(d)?;
                if self.per_listener_settings {
                    self.listener().touched = true;
                }
                self.security().password_file = v;
            }
            "acl_file" => {
                let v = string(d)?;
                self.security().acl_file = v;
            }
            "allow_anonymous" => {
                let v = parse_bool(d)?;
                self.security().allow_anonymous = Some((v, d.loc.clone()));
            }
            "psk_file" => self.skip(d, "TLS-PSK is not supported (certificates are)"),
            "allow_zero_length_clientid" => {
                if !parse_bool(d)? {
                    self.skip(
                        d,
                        "Starling always assigns an identifier to a client that connects \
                         with an empty one where MQTT allows it",
                    );
                }
            }
            "auto_id_prefix" => self.skip(d, "Starling chooses the identifiers it assigns"),
            "plugin" | "auth_plugin" | "global_plugin" => self.skip(d, NO_PLUGINS),
            n if n.starts_with("plugin_opt_") || n.starts_with("auth_opt_") => {
                self.skip(d, NO_PLUGINS)
            }
            "auth_plugin_deny_special_chars" => self.skip(d, NO_PLUGINS),

            // Listeners.
            "listener" => self.new_listener(d)?,
            "port" => {
                self.local_only = false;
                let port = parse_int(d)?;
                let port = u16::try_from(port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid(d, "expected a port, 1 ..= 65535"))?;
                self.default.port = port;
                self.default.touched = true;
            }
            "bind_address" => {
                self.local_only = false;
                self.default.host = Some(d.value.clone());
                self.default.touched = true;
            }
            "protocol" => match d.value.as_str() {
                "mqtt" => self.listener_option().websockets = false,
                "websockets" => self.listener_option().websockets = true,
                _ => return Err(invalid(d, "expected mqtt or websockets")),
            },
            "socket_domain" => match d.value.as_str() {
                "ipv4" | "ipv6" => self.listener_option().socket_domain = Some(d.value.clone()),
                _ => return Err(invalid(d, "expected ipv4 or ipv6")),
            },
            "max_connections" => {
                let n = parse_int(d)?;
                if n == 0 {
                    self.skip(d, "0 connections: Starling needs at least 1");
                } else {
                    self.listener_option().max_connections = Some((n, d.loc.clone()));
                }
            }
            "bind_interface" => self.unsafe_listener_option(
                d,
                "Starling cannot bind to an interface; binding every address instead would \
                 expose the listener more widely",
            ),
            "mount_point" => self.unsafe_listener_option(
                d,
                "Starling has no mount points; without one its clients would share the whole \
                 topic tree",
            ),
            "http_dir" => self.skip(d, "Starling's WebSocket listeners serve no files"),
            "max_qos" => self.skip(d, "Starling has no per-listener QoS limit"),
            "max_topic_alias" => self.skip(
                d,
                "Starling's limit is global: set limits.topic_alias_maximum",
            ),
            "use_username_as_clientid" => self.skip(
                d,
                "Starling does not replace client identifiers with usernames",
            ),
            "enable_proxy_protocol" => {
                self.unsafe_listener_option(d, "Starling does not read PROXY protocol headers")
            }

            // TLS.
            "cafile" => self.listener_option().cafile = string(d)?,
            "capath" => self.listener_option().capath = string(d)?,
            "certfile" => self.listener_option().certfile = string(d)?,
            "keyfile" => self.listener_option().keyfile = string(d)?,
            "require_certificate" => {
                let v = parse_bool(d)?;
                self.listener_option().require_certificate = v;
            }
            "use_identity_as_username" => {
                let v = parse_bool(d)?;
                self.listener_option().use_identity_as_username = Some((v, d.loc.clone()));
            }
            "use_subject_as_username" => {
                let v = parse_bool(d)?;
                self.listener_option().use_subject_as_username = Some((v, d.loc.clone()));
            }
            "tls_version" => {
                self.listener_option();
                match d.value.as_str() {
                    "tlsv1.2" => {}
                    "tlsv1.3" => self.skip(
                        d,
                        "Starling accepts TLS 1.2 and 1.3 and has no minimum-version setting",
                    ),
                    _ => self.skip(
                        d,
                        "Starling accepts TLS 1.2 and 1.3 only; older clients cannot connect",
                    ),
                }
            }
            "ciphers" | "ciphers_tls1.3" => {
                self.listener_option();
                self.skip(
                    d,
                    "Starling (rustls) offers a fixed set of modern cipher suites",
                );
            }
            "dhparamfile" => {
                self.listener_option();
                self.skip(
                    d,
                    "not needed: Starling (rustls) uses ECDHE key exchange only",
                );
            }
            "crlfile" => self.unsafe_listener_option(
                d,
                "Starling does not check certificate revocation lists; revoked client \
                 certificates would be accepted",
            ),
            "psk_hint" => self.unsafe_listener_option(d, "TLS-PSK is not supported"),
            "tls_engine" | "tls_engine_kpass_sha1" => self.unsafe_listener_option(
                d,
                "Starling reads keys from PEM files only, not from OpenSSL engines",
            ),
            "tls_keyform" => {
                if d.value != "pem" {
                    self.unsafe_listener_option(
                        d,
                        "Starling reads keys from PEM files only, not from OpenSSL engines",
                    );
                }
            }

            // Limits.
            "max_inflight_messages" => self.count(d, "max_inflight", 1, 65_535)?,
            "max_queued_messages" => self.count(d, "max_queued_messages", 1, 10_000_000)?,
            "max_queued_bytes" => self.count(d, "max_queued_bytes", 1, 1 << 40)?,
            "max_packet_size" => self.count(d, "max_packet_size", 64, 268_435_455)?,
            "max_keepalive" => self.count(d, "max_keep_alive", 1, 65_535)?,
            "sys_interval" => {
                let n = parse_int(d)?;
                let clamped = n.clamp(0, 86_400);
                if clamped != n {
                    self.approximate(d, format!("limits.sys_interval_secs: {clamped}"));
                }
                self.set(Table::Limits, "sys_interval_secs", Val::Int(clamped), d);
            }
            "queue_qos0_messages" => {
                let v = parse_bool(d)?;
                self.set(Table::Limits, "queue_qos0_offline", Val::Bool(v), d);
            }
            "persistent_client_expiration" => {
                let secs = expiration(&d.value)
                    .ok_or_else(|| invalid(d, "expected a number followed by h, d, w, m or y"))?;
                self.set(
                    Table::Limits,
                    "v3_session_expiry_secs",
                    Val::Int(secs.min(i64::from(u32::MAX))),
                    d,
                );
                self.approximate(
                    d,
                    "applies to MQTT 3.x persistent sessions (v5 clients choose their expiry, \
                     capped by limits.max_session_expiry_secs)",
                );
            }
            "message_size_limit" => {
                if parse_int(d)? != 0 {
                    self.skip(
                        d,
                        "Starling bounds whole packets (limits.max_packet_size: a larger one \
                         closes the connection) rather than dropping large payloads",
                    );
                }
            }
            "retain_available" => {
                if !parse_bool(d)? {
                    self.skip(d, "Starling always supports retained messages");
                }
            }
            "max_inflight_bytes" => {
                if parse_int(d)? != 0 {
                    self.skip(
                        d,
                        "Starling bounds messages in flight by count (limits.max_inflight)",
                    );
                }
            }
            "memory_limit" => self.skip(
                d,
                "Starling bounds memory through its queue, inflight and connection limits",
            ),
            "upgrade_outgoing_qos" => {
                if parse_bool(d)? {
                    self.skip(
                        d,
                        "Starling follows the specification: QoS is never upgraded",
                    );
                }
            }
            "allow_duplicate_messages" | "check_retain_source" | "set_tcp_nodelay" => {
                self.skip(d, "no equivalent setting in Starling")
            }
            "clientid_prefixes" => self.skip(
                d,
                "Starling does not restrict client identifiers by prefix; use an ACL",
            ),

            // Persistence.
            "persistence" => {
                let durability = if parse_bool(d)? { "sync" } else { "memory" };
                self.set(Table::Storage, "durability", Val::Str(durability.into()), d);
            }
            "persistence_location" => {
                let v = d.value.clone();
                self.set(Table::Top, "data_dir", Val::Str(v), d);
            }
            "persistence_file" => self.skip(
                d,
                "Starling keeps its own store in data_dir; mosquitto.db is not read",
            ),
            "autosave_interval" | "autosave_on_changes" => self.skip(
                d,
                "Starling commits every acknowledged message (durability sync), or every \
                 storage.commit_interval_ms with durability periodic",
            ),

            // Logging and process.
            "log_type" => {
                if matches!(d.value.as_str(), "debug" | "all") {
                    self.set(Table::Top, "log_level", Val::Str("debug".into()), d);
                } else {
                    self.skip(
                        d,
                        "Starling's log_level chooses what is logged (default info)",
                    );
                }
            }
            "log_dest" => {
                if !matches!(d.value.as_str(), "stderr" | "stdout") {
                    self.skip(
                        d,
                        "Starling logs to standard error (to the journal under systemd)",
                    );
                }
            }
            "log_timestamp"
            | "log_timestamp_format"
            | "log_facility"
            | "connection_messages"
            | "websockets_log_level"
            | "websockets_headers_size" => {
                self.skip(d, "no equivalent setting in Starling's logging")
            }
            "pid_file" => self.skip(
                d,
                "Starling writes no pid file; the service manager knows it",
            ),
            "user" => self.skip(
                d,
                "Starling does not change user; start it as the user wanted (the systemd unit \
                 does)",
            ),
            "include_dir" => self.skip(d, "mosquitto reads include_dir from the main file only"),
            _ => self.skip(d, "unknown directive"),
        }
        Ok(())
    }

    fn new_listener(&mut self, d: &Directive) -> Result<(), ImportError> {
        self.local_only = false;
        let mut parts = d.value.split_whitespace();
        let port = parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| invalid(d, "expected a port, 0 ..= 65535"))?;
        let host = parts
            .next()
            .filter(|h| !h.starts_with('#'))
            .map(str::to_owned);
        let mut l = Listener {
            defined: Some(d.loc.clone()),
            port,
            host,
            ..Listener::default()
        };
        if port == 0 {
            l.unsafe_to_carry.push((
                d.loc.clone(),
                d.text(),
                "Starling has no Unix socket listeners".into(),
            ));
        }
        self.listeners.push(l);
        self.current = Some(self.listeners.len() - 1);
        Ok(())
    }
}

/// Which table a setting goes to.
#[derive(Debug, Clone, Copy)]
enum Table {
    Top,
    Limits,
    Storage,
}

pub(super) fn listener_words(l: &Listener) -> String {
    match &l.host {
        Some(h) => format!("{} {h}", l.port),
        None => l.port.to_string(),
    }
}

/// `persistent_client_expiration`: a number and h, d, w, m (30 days) or y (365 days).
fn expiration(value: &str) -> Option<i64> {
    let value = value.trim();
    let unit = value.chars().last()?;
    let number: i64 = value.get(..value.len() - unit.len_utf8())?.parse().ok()?;
    let per = match unit {
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'm' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    number.checked_mul(per).filter(|s| *s > 0)
}
