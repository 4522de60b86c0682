//! Bridges: `connection NAME` starts one, and the bridge directives after it (in the same
//! file) configure it, as mosquitto reads them. Each becomes a `[[bridge]]` table with its
//! `[[bridge.topic]]`s, mosquitto's defaults made explicit where Starling's differ (protocol
//! MQTT 3.1.1, reconnect delays 5 to 30 s).
//!
//! A bridge is left out rather than connected with less protection (TLS-PSK, OCSP required),
//! or when Starling refuses it (its name, a file it names that cannot be read here); what
//! Starling's bridges do not do (notifications, lazy start, the local connection's identity)
//! is listed.

use super::conf::{Directive, Loc};
use super::map::{At, PlannedBridge, Setting, State, Val, invalid, parse_bool, parse_int, string};
use super::{Finding, FindingKind, ImportError};
use crate::config::bridge::{BridgeConfig, MAX_BRIDGES};

// The second half, finishing what was read, in a file of its own.
#[path = "bridge_plan.rs"]
mod plan;

/// Bridge directives other than `connection`.
const DIRECTIVES: &[&str] = &[
    "address",
    "addresses",
    "bridge_alpn",
    "bridge_attempt_unsubscribe",
    "bridge_bind_address",
    "bridge_cafile",
    "bridge_capath",
    "bridge_certfile",
    "bridge_identity",
    "bridge_insecure",
    "bridge_keyfile",
    "bridge_max_packet_size",
    "bridge_outgoing_retain",
    "bridge_protocol_version",
    "bridge_psk",
    "bridge_require_ocsp",
    "bridge_tls_version",
    "cleansession",
    "clientid",
    "idle_timeout",
    "keepalive_interval",
    "local_cleansession",
    "local_clientid",
    "local_password",
    "local_username",
    "notification_topic",
    "notifications",
    "notifications_local_only",
    "password",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "restart_timeout",
    "round_robin",
    "start_type",
    "threshold",
    "topic",
    "try_private",
    "username",
];

const NO_TLS: &str = "the bridge has no bridge_cafile or bridge_capath, so mosquitto does not \
                      use TLS for it";
const NO_NOTIFICATIONS: &str = "Starling publishes no $SYS/broker/connection/<client id>/state \
                                messages (bridge notifications) yet";
const LAZY_ONLY: &str = "only for start_type lazy: Starling bridges always start with the broker";
const LOCAL_CONNECTION: &str = "Starling's bridge connects to the local broker in-process as \
                                $bridge/<name>, without authentication or ACL checks (its \
                                topics decide what it reads and writes)";

/// One `topic` line.
#[derive(Debug, Clone)]
pub(super) struct Topic {
    loc: Loc,
    pattern: String,
    direction: &'static str,
    qos: i64,
    local_prefix: String,
    remote_prefix: String,
}

/// A mosquitto bridge as configured.
#[derive(Debug, Clone)]
pub(super) struct Bridge {
    /// The `connection` line.
    loc: Loc,
    name: String,
    /// The `host:port`s and the directive as written.
    addresses: At<(Vec<String>, String)>,
    protocol: At<&'static str>,
    client_id: At<String>,
    username: At<String>,
    password: At<String>,
    clean_start: At<bool>,
    keepalive: At<i64>,
    try_private: At<bool>,
    restart: Option<(i64, Option<i64>, Directive)>,
    round_robin: Option<Directive>,
    cafile: At<String>,
    capath: At<String>,
    certfile: At<String>,
    keyfile: At<String>,
    insecure: At<bool>,
    /// TLS options with what to say about them when the bridge has TLS (`None`: nothing,
    /// carried over); with no TLS each is listed as unused.
    tls_notes: Vec<(Directive, Option<String>)>,
    /// `bridge_require_ocsp true`.
    ocsp: Option<Directive>,
    notifications: Option<(bool, Loc)>,
    topics: Vec<Topic>,
    /// Why the bridge cannot be carried over without weakening it (it is left out).
    left_out: Vec<(Loc, String, String)>,
}

impl Bridge {
    fn new(name: String, loc: Loc) -> Self {
        Self {
            loc,
            name,
            addresses: None,
            protocol: None,
            client_id: None,
            username: None,
            password: None,
            clean_start: None,
            keepalive: None,
            try_private: None,
            restart: None,
            round_robin: None,
            cafile: None,
            capath: None,
            certfile: None,
            keyfile: None,
            insecure: None,
            tls_notes: Vec::new(),
            ocsp: None,
            notifications: None,
            topics: Vec::new(),
            left_out: Vec::new(),
        }
    }

    /// mosquitto uses TLS with a CA file or directory, or with a pre-shared key (which leaves
    /// the bridge out).
    fn tls(&self) -> bool {
        self.cafile.is_some() || self.capath.is_some()
    }
}

/// The directive as listed: secrets (passwords, a pre-shared key) are not repeated.
fn shown(d: &Directive) -> String {
    if d.name.contains("password") || d.name == "bridge_psk" {
        format!("{} ****", d.name)
    } else {
        d.text()
    }
}

/// C's `atoi`: an optional sign and the digits that follow, 0 without any.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits
        .get(..end)
        .and_then(|d| d.parse::<i64>().ok())
        .map_or(0, |n| sign * n)
}

/// A string that must not be given twice for one bridge (mosquitto refuses it).
fn once(slot: &At<String>, d: &Directive) -> Result<At<String>, ImportError> {
    if slot.is_some() {
        return Err(invalid(d, "given twice for this bridge"));
    }
    string(d)
}

fn valid_filter(f: &str) -> bool {
    starling_proto::TopicFilter::new(bytes::Bytes::from(f.to_owned()), usize::MAX).is_ok()
}

impl State {
    /// Handles `d` if it is a bridge directive.
    pub(super) fn bridge_directive(&mut self, d: &Directive) -> Option<Result<(), ImportError>> {
        if d.name == "connection" {
            return Some(self.connection(d));
        }
        if !DIRECTIVES.contains(&d.name.as_str()) {
            return None;
        }
        Some(self.bridge_option(d))
    }

    fn connection(&mut self, d: &Directive) -> Result<(), ImportError> {
        let name = d
            .value
            .split_whitespace()
            .next()
            .ok_or_else(|| invalid(d, "expected a name"))?;
        if self.bridges.iter().any(|b| b.name == name) {
            return Err(invalid(d, "a second bridge with this name"));
        }
        self.bridges
            .push(Bridge::new(name.to_owned(), d.loc.clone()));
        self.bridge = Some(self.bridges.len() - 1);
        Ok(())
    }

    fn bridge_option(&mut self, d: &Directive) -> Result<(), ImportError> {
        let Some(b) = self.bridge.and_then(|i| self.bridges.get_mut(i)) else {
            return Err(invalid(
                d,
                "a bridge option with no `connection` before it in this file",
            ));
        };
        let mut notes: Vec<(FindingKind, String)> = Vec::new();
        let at = || d.loc.clone();
        match d.name.as_str() {
            "address" | "addresses" => {
                if b.addresses.is_some() {
                    return Err(invalid(d, "a second address line for this bridge"));
                }
                let mut list = Vec::new();
                for word in d.value.split_whitespace() {
                    if word.starts_with('#') {
                        break;
                    }
                    let (host, port) = match word.rsplit_once(':') {
                        Some((host, port)) => (host, atoi(port)),
                        None => (word, 1883),
                    };
                    if !(1..=65_535).contains(&port) {
                        return Err(invalid(d, &format!("invalid port in {word:?}")));
                    }
                    list.push(if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    });
                }
                if list.is_empty() {
                    return Err(invalid(d, "expected an address"));
                }
                b.addresses = Some(((list, d.text()), at()));
            }
            "topic" => {
                let topic = parse_topic(d)?;
                b.topics.push(topic);
            }
            "bridge_protocol_version" => {
                let v = match d.value.as_str() {
                    "mqttv50" => "mqttv5",
                    "mqttv311" => "mqttv311",
                    "mqttv31" => "mqttv31",
                    _ => return Err(invalid(d, "expected mqttv50, mqttv311 or mqttv31")),
                };
                b.protocol = Some((v, at()));
            }
            "remote_clientid" | "clientid" => b.client_id = once(&b.client_id, d)?,
            "remote_username" | "username" => b.username = once(&b.username, d)?,
            "remote_password" | "password" => b.password = once(&b.password, d)?,
            "cleansession" => {
                let v = parse_bool(d)?;
                if v {
                    notes.push((
                        FindingKind::Approximated,
                        "clean_start at the remote; the bridge's local session in Starling \
                         stays (what goes out waits there while the remote is away), as with \
                         mosquitto's local_cleansession false"
                            .into(),
                    ));
                }
                b.clean_start = Some((v, at()));
            }
            "local_cleansession" => {
                if parse_bool(d)? {
                    notes.push((
                        FindingKind::NotCarried,
                        "Starling keeps the bridge's local session: what goes out waits there \
                         while the remote is away"
                            .into(),
                    ));
                }
            }
            "keepalive_interval" => {
                let n = parse_int(d)?;
                if n > 65_535 {
                    return Err(invalid(d, "at most 65535"));
                }
                // mosquitto uses 5 s for less.
                b.keepalive = Some((n.max(5), at()));
            }
            "try_private" => {
                let v = parse_bool(d)?;
                b.try_private = Some((v, at()));
            }
            "restart_timeout" => {
                let mut words = d.value.split_whitespace();
                let base = words
                    .next()
                    .map(atoi)
                    .ok_or_else(|| invalid(d, "expected a value"))?
                    .max(1);
                let cap = words.next().map(atoi);
                if cap.is_some_and(|c| c < base) {
                    return Err(invalid(d, "the cap is lower than the base"));
                }
                b.restart = Some((base, cap, d.clone()));
            }
            "round_robin" => {
                if parse_bool(d)? {
                    b.round_robin = Some(d.clone());
                }
            }
            "bridge_cafile" => b.cafile = once(&b.cafile, d)?,
            "bridge_capath" => b.capath = once(&b.capath, d)?,
            "bridge_certfile" => {
                b.certfile = once(&b.certfile, d)?;
                b.tls_notes.push((d.clone(), None));
            }
            "bridge_keyfile" => {
                b.keyfile = once(&b.keyfile, d)?;
                b.tls_notes.push((d.clone(), None));
            }
            "bridge_insecure" => {
                let v = parse_bool(d)?;
                b.insecure = Some((v, at()));
                b.tls_notes.push((d.clone(), None));
            }
            "bridge_tls_version" => {
                let reason = match d.value.as_str() {
                    // mosquitto's default: 1.2 or later.
                    "tlsv1.2" => None,
                    "tlsv1.3" => Some(
                        "Starling bridges connect with TLS 1.2 or 1.3 and have no \
                         minimum-version setting",
                    ),
                    "tlsv1.1" => Some(
                        "Starling bridges connect with TLS 1.2 or 1.3 only; a remote that \
                         offers only TLS 1.1 cannot be reached",
                    ),
                    _ => Some(
                        "mosquitto refuses this version when the bridge connects; Starling \
                         connects with TLS 1.2 or 1.3",
                    ),
                };
                b.tls_notes.push((d.clone(), reason.map(str::to_owned)));
            }
            "bridge_alpn" => b.tls_notes.push((
                d.clone(),
                Some("Starling bridges offer no ALPN protocol".into()),
            )),
            "bridge_require_ocsp" => {
                if parse_bool(d)? {
                    b.ocsp = Some(d.clone());
                }
            }
            "bridge_identity" | "bridge_psk" => b.left_out.push((
                at(),
                shown(d),
                "TLS-PSK is not supported; connecting without it would send the bridge's \
                 traffic unencrypted"
                    .into(),
            )),
            "bridge_attempt_unsubscribe" => {
                if parse_bool(d)? {
                    notes.push((
                        FindingKind::NotCarried,
                        "Starling bridges send no UNSUBSCRIBE to the remote for out topics; \
                         with clean_start false a remote subscription of an earlier in topic \
                         stays"
                            .into(),
                    ));
                }
            }
            "bridge_outgoing_retain" => {
                if !parse_bool(d)? {
                    notes.push((
                        FindingKind::NotCarried,
                        "Starling bridges keep the retain flag of what they send".into(),
                    ));
                }
            }
            "bridge_max_packet_size" => {
                if parse_int(d)? != 0 {
                    notes.push((
                        FindingKind::NotCarried,
                        "Starling bridges have no size limit of their own for what they send"
                            .into(),
                    ));
                }
            }
            "bridge_bind_address" => notes.push((
                FindingKind::NotCarried,
                "Starling bridges connect from the address the system chooses".into(),
            )),
            "notifications" => {
                let v = parse_bool(d)?;
                b.notifications = Some((v, at()));
                if v {
                    notes.push((FindingKind::NotCarried, NO_NOTIFICATIONS.into()));
                }
            }
            "notification_topic" | "notifications_local_only" => {
                notes.push((FindingKind::NotCarried, NO_NOTIFICATIONS.into()))
            }
            "start_type" => match d.value.as_str() {
                "automatic" => {}
                "lazy" | "once" => notes.push((
                    FindingKind::NotCarried,
                    "Starling bridges always start with the broker and reconnect when the \
                     connection is lost (start_type automatic)"
                        .into(),
                )),
                _ => return Err(invalid(d, "expected automatic, lazy or once")),
            },
            "idle_timeout" | "threshold" => notes.push((FindingKind::NotCarried, LAZY_ONLY.into())),
            "local_clientid" | "local_username" | "local_password" => {
                notes.push((FindingKind::NotCarried, LOCAL_CONNECTION.into()))
            }
            _ => notes.push((FindingKind::NotCarried, "unknown directive".into())),
        }
        let name = b.name.clone();
        for (kind, reason) in notes {
            self.findings.push(Finding {
                loc: d.loc.clone(),
                directive: shown(d),
                kind,
                reason: format!("bridge {name}: {reason}"),
            });
        }
        Ok(())
    }
}

/// `topic pattern [[[out | in | both] qos] local-prefix remote-prefix]`, `""` for an empty
/// pattern or prefix.
fn parse_topic(d: &Directive) -> Result<Topic, ImportError> {
    let mut words = d.value.split_whitespace();
    let empty = |w: &str| {
        if w == "\"\"" {
            String::new()
        } else {
            w.to_owned()
        }
    };
    let pattern = words
        .next()
        .map(empty)
        .ok_or_else(|| invalid(d, "expected a topic pattern"))?;
    let mut topic = Topic {
        loc: d.loc.clone(),
        pattern,
        direction: "out",
        qos: 0,
        local_prefix: String::new(),
        remote_prefix: String::new(),
    };
    if let Some(dir) = words.next() {
        topic.direction = match dir.to_ascii_lowercase().as_str() {
            "out" => "out",
            "in" => "in",
            "both" => "both",
            _ => return Err(invalid(d, "expected the direction out, in or both")),
        };
        if let Some(qos) = words.next() {
            let commented = qos.starts_with('#');
            topic.qos = atoi(qos);
            if !(0..=2).contains(&topic.qos) {
                return Err(invalid(d, "expected the QoS 0, 1 or 2"));
            }
            // A `#` starts a comment in the place of a prefix (not of the pattern).
            let mut prefix = || {
                if commented {
                    return String::new();
                }
                match words.next() {
                    Some(w) if w.starts_with('#') => {
                        words.by_ref().for_each(drop);
                        String::new()
                    }
                    Some(w) => empty(w),
                    None => String::new(),
                }
            };
            topic.local_prefix = prefix();
            topic.remote_prefix = prefix();
        }
    }
    if topic.pattern.is_empty() && (topic.local_prefix.is_empty() || topic.remote_prefix.is_empty())
    {
        return Err(invalid(
            d,
            "an empty pattern (\"\") needs both a local and a remote prefix",
        ));
    }
    for prefix in [&topic.local_prefix, &topic.remote_prefix] {
        if prefix.is_empty() {
            continue;
        }
        if prefix.contains(['+', '#']) {
            return Err(invalid(d, "a prefix cannot hold wildcards"));
        }
        if !valid_filter(&format!("{prefix}{}", topic.pattern)) {
            return Err(invalid(d, "prefix and pattern do not make a topic filter"));
        }
    }
    Ok(topic)
}
