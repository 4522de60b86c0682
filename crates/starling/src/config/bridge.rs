//! `[[bridge]]` tables: connections to other brokers, with mosquitto's topic remapping
//! (`[[bridge.topic]]`: pattern, direction, QoS, local and remote prefixes). Checked at start:
//! an unknown key or direction, a topic that cannot be mapped, topic lines whose prefixes make
//! a loop (what one line sends out another takes back in under another local topic, which a
//! line sends out again), or missing TLS files refuse the config with the keys named.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The protocol a bridge speaks to its remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BridgeProtocol {
    /// MQTT 5.
    #[default]
    Mqttv5,
    /// MQTT 3.1.1.
    Mqttv311,
    /// MQTT 3.1.
    Mqttv31,
}

/// Which way a topic's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local to remote.
    #[default]
    Out,
    /// Remote to local.
    In,
    /// Both.
    Both,
}

impl Direction {
    /// Messages go out.
    pub fn out(self) -> bool {
        matches!(self, Self::Out | Self::Both)
    }

    /// Messages come in.
    pub fn inbound(self) -> bool {
        matches!(self, Self::In | Self::Both)
    }
}

/// `[[bridge.topic]]`: mosquitto's `topic pattern [direction [qos [local-prefix
/// remote-prefix]]]`. Locally the bridge subscribes to `local_prefix + pattern` (out), remotely
/// to `remote_prefix + pattern` (in); a message's topic has the one prefix swapped for the other.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// Topic filter, without the prefixes.
    pub pattern: String,
    /// `out` (default), `in` or `both`.
    #[serde(default)]
    pub direction: Direction,
    /// The QoS used on the bridge (a message goes at the lower of this and its own).
    #[serde(default)]
    pub qos: u8,
    /// Prefix of the local topics.
    #[serde(default)]
    pub local_prefix: String,
    /// Prefix of the remote topics.
    #[serde(default)]
    pub remote_prefix: String,
}

/// `[[bridge]]`: one remote broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Name: in logs, metrics and the default client id.
    pub name: String,
    /// `host:port`; with several, tried in order (failover).
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// `mqttv5` (default), `mqttv311` or `mqttv31`.
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// Client id at the remote; default `<hostname>.<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username at the remote.
    #[serde(default)]
    pub username: Option<String>,
    /// Password at the remote (or `password_file`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the remote.
    #[serde(default)]
    pub tls: bool,
    /// CA certificates to verify the remote (default: the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the remote's certificate must carry (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Skip the host name check (the chain is still verified).
    #[serde(default)]
    pub insecure: bool,
    /// Clean start at the remote (default false: a persistent remote session, so that what
    /// comes in while the bridge is away waits there, and what either side resends after a
    /// failure is recognised: QoS 2 exactly once). Without it the bridge still starts clean
    /// once when its own local session is new (its packet ids start afresh).
    #[serde(default)]
    pub clean_start: bool,
    /// Keep-alive with the remote, seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u16,
    /// First reconnect delay, seconds (doubling, with jitter, up to `reconnect_max_secs`).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_secs: u64,
    /// Longest reconnect delay, seconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
    /// Messages held for the remote while it is away (in the bridge's local session, on
    /// disk); when full, the oldest is dropped and counted.
    #[serde(default = "default_queue_messages")]
    pub queue_max_messages: usize,
    /// Bytes held for the remote at most.
    #[serde(default = "default_queue_bytes")]
    pub queue_max_bytes: usize,
    /// Announce a bridge to the remote (protocol level | 0x80, as mosquitto does) with MQTT
    /// 3.x, so that it does not send our own messages back; MQTT 5 uses No Local instead.
    #[serde(default = "default_true")]
    pub try_private: bool,
    /// QoS 1 and 2 messages unanswered at the remote at once, at most (1 to 64). Default 64,
    /// or less when an MQTT 5 remote's Receive Maximum says so; 20 with MQTT 3.x, which has no
    /// way to say: mosquitto's default `max_inflight_messages`, beyond which mosquitto drops a
    /// QoS 2 message with a PUBREC that 3.x cannot tell from a success.
    #[serde(default)]
    pub max_inflight: Option<u16>,
    /// Topics.
    #[serde(default, rename = "topic")]
    pub topics: Vec<BridgeTopic>,
}

fn default_keepalive() -> u16 {
    60
}
fn default_reconnect_min() -> u64 {
    1
}
fn default_reconnect_max() -> u64 {
    60
}
fn default_queue_messages() -> usize {
    100_000
}
fn default_queue_bytes() -> usize {
    256 << 20
}
fn default_true() -> bool {
    true
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Bridges at most (each is a task and two connections).
pub const MAX_BRIDGES: usize = 64;
/// Topics per bridge at most.
pub const MAX_TOPICS: usize = 256;

fn valid_filter(f: &str) -> bool {
    starling_proto::TopicFilter::new(bytes::Bytes::from(f.to_owned()), usize::MAX).is_ok()
}

impl BridgeConfig {
    /// The client id used at the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "starling".to_owned());
            format!("{host}.{}", self.name)
        })
    }

    /// Checks one `[[bridge]]` (index `i`), naming the key at fault.
    pub fn validate(&self, i: usize) -> anyhow::Result<()> {
        let at = format!("bridge[{i}]");
        if self.name.is_empty() || self.name.len() > 64 || self.name.contains(['/', '+', '#']) {
            bail!("{at}.name: 1 to 64 characters, without '/', '+' or '#'");
        }
        if self.address.is_empty() {
            bail!("{at}.address: at least one host:port");
        }
        for a in &self.address {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                bail!("{at}.address: {a:?} is not host:port");
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            bail!("{at}.password_file: give password or password_file, not both");
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("{at}.cert_file: cert_file and key_file go together");
        }
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("password_file", &self.password_file),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                bail!("{at}.{key}: {} is not a readable file", f.display());
            }
        }
        if self.keepalive_secs != 0 && self.keepalive_secs < 5 {
            bail!("{at}.keepalive_secs: 0 or at least 5");
        }
        if self.reconnect_min_secs == 0 || self.reconnect_max_secs < self.reconnect_min_secs {
            bail!("{at}.reconnect_max_secs: need 0 < reconnect_min_secs <= reconnect_max_secs");
        }
        if self.reconnect_max_secs > 86_400 {
            bail!("{at}.reconnect_max_secs: at most 86400");
        }
        if self.queue_max_messages == 0 || self.queue_max_messages > 10_000_000 {
            bail!("{at}.queue_max_messages: 1 to 10000000");
        }
        if self.queue_max_bytes < 1024 || self.queue_max_bytes > 64 << 30 {
            bail!("{at}.queue_max_bytes: 1 KiB to 64 GiB");
        }
        if self.max_inflight.is_some_and(|n| n == 0 || n > 64) {
            bail!("{at}.max_inflight: 1 to 64");
        }
        if self.topics.is_empty() {
            bail!("{at}.topic: at least one [[bridge.topic]]");
        }
        if self.topics.len() > MAX_TOPICS {
            bail!("{at}.topic: at most {MAX_TOPICS}");
        }
        for (j, t) in self.topics.iter().enumerate() {
            let at = format!("{at}.topic[{j}]");
            if t.qos > 2 {
                bail!("{at}.qos: 0, 1 or 2");
            }
            for (key, prefix) in [
                ("local_prefix", &t.local_prefix),
                ("remote_prefix", &t.remote_prefix),
            ] {
                if prefix.contains(['+', '#']) {
                    bail!("{at}.{key}: a prefix cannot hold wildcards");
                }
                if !valid_filter(&format!("{prefix}{}", t.pattern)) {
                    bail!(
                        "{at}.pattern: {:?} with {key} {prefix:?} is not a valid topic filter",
                        t.pattern
                    );
                }
            }
            if t.pattern.is_empty() && (t.local_prefix.is_empty() || t.remote_prefix.is_empty()) {
                bail!("{at}.pattern: empty only with both prefixes (the topic is the prefix)");
            }
        }
        self.check_loops(&at)
    }

    /// Refuses lines that would send a message back and forth through the bridge's own
    /// remapping: a local message that an `out` line sends as remote topic R, which an `in`
    /// line takes back as a different local topic, which an `out` line sends again. No Local
    /// (MQTT 5, or mosquitto's bridge flag for 3.x) keeps the remote from echoing what the
    /// bridge published, but not every remote honours it (a 3.x broker that ignores the flag,
    /// `try_private = false`), and retained messages come back on a new subscription whatever
    /// it says; an echo that lands on the topic it left from is the plain echo, but one that
    /// lands elsewhere in what the bridge sends is a copy under a new name, which only No
    /// Local on the bridge's own local subscription keeps from going round again with one
    /// more prefix each time. So the mapping itself must not close that circle. Lines are taken
    /// one pair at a time, as if each were the first to match: precise for the usual lines,
    /// which do not overlap on one side.
    fn check_loops(&self, at: &str) -> anyhow::Result<()> {
        let out: Vec<(usize, &BridgeTopic, Lang)> = (self.topics.iter().enumerate())
            .filter(|(_, t)| t.direction.out())
            .map(|(j, t)| (j, t, Lang::of(&format!("{}{}", t.local_prefix, t.pattern))))
            .collect();
        let inbound: Vec<(usize, &BridgeTopic, Lang)> = (self.topics.iter().enumerate())
            .filter(|(_, t)| t.direction.inbound())
            .map(|(k, t)| (k, t, Lang::of(&format!("{}{}", t.remote_prefix, t.pattern))))
            .collect();
        let sent_out: Vec<&Lang> = out.iter().map(|(_, _, l)| l).collect();
        let alphabet = alphabet(&self.topics);
        for (j, o, local) in &out {
            for (k, i, remote) in &inbound {
                // The remote topic of a message sent out by `o` is remote_prefix(o) + x. For
                // `i` to take it back, one remote prefix must begin the other; the local topic
                // it comes back as is then local_prefix(i) + what follows remote_prefix(i).
                let (a, b, c) = if let Some(d) = o.remote_prefix.strip_prefix(&i.remote_prefix) {
                    (
                        o.local_prefix.clone(),
                        o.remote_prefix.clone(),
                        format!("{}{d}", i.local_prefix),
                    )
                } else if let Some(e) = i.remote_prefix.strip_prefix(&o.remote_prefix) {
                    (
                        format!("{}{e}", o.local_prefix),
                        i.remote_prefix.clone(),
                        i.local_prefix.clone(),
                    )
                } else {
                    continue;
                };
                // The same local topic back: the plain echo, not a loop.
                if a == c {
                    continue;
                }
                let Some(x) = common_suffix(&alphabet, [(&a, local), (&b, remote)], &c, &sent_out)
                else {
                    continue;
                };
                let x = String::from_utf8_lossy(&x);
                bail!(
                    "{at}.topic[{j}] and {at}.topic[{k}]: a loop: the local topic {:?} goes out \
                     as {:?}, comes back in as {:?} and goes out again; narrow the patterns or \
                     prefixes so that the `in` line does not take what the `out` line sends",
                    format!("{a}{x}"),
                    format!("{b}{x}"),
                    format!("{c}{x}")
                );
            }
        }
        Ok(())
    }
}

/// The topics a topic filter matches, as a small automaton over the bytes of a topic:
/// `+` is any bytes but `/`; `#` alone anything; a trailing `/#` nothing (the parent level),
/// or `/` and then anything. (The `$` rule, that wildcards do not match a first level
/// starting with `$`, is left out: it only makes the check refuse a little more.)
#[derive(Debug)]
struct Lang {
    toks: Vec<Tok>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    /// `+`.
    Level,
    /// `#` as the whole filter.
    Rest,
    /// `/#` after a level.
    Tail,
}

/// The state after a trailing `/#` has read its `/`: anything follows.
const ANY: usize = usize::MAX;

/// A set of automaton states.
type States = BTreeSet<usize>;

impl Lang {
    fn of(filter: &str) -> Self {
        let mut toks = Vec::new();
        for (n, level) in filter.split('/').enumerate() {
            match level {
                "#" if n > 0 => toks.push(Tok::Tail),
                "#" => toks.push(Tok::Rest),
                _ => {
                    if n > 0 {
                        toks.push(Tok::Byte(b'/'));
                    }
                    if level == "+" {
                        toks.push(Tok::Level);
                    } else {
                        toks.extend(level.bytes().map(Tok::Byte));
                    }
                }
            }
        }
        Self { toks }
    }

    /// Adds the states reachable without reading (wildcards may match nothing).
    fn close(&self, states: &mut States) {
        let mut stack: Vec<usize> = states.iter().copied().collect();
        while let Some(s) = stack.pop() {
            if let Some(Tok::Level | Tok::Rest | Tok::Tail) = self.toks.get(s)
                && states.insert(s + 1)
            {
                stack.push(s + 1);
            }
        }
    }

    /// The states after reading `bytes` from the start.
    fn after(&self, bytes: &[u8]) -> States {
        let mut states = States::from([0]);
        self.close(&mut states);
        for &b in bytes {
            states = self.step(&states, b);
        }
        states
    }

    fn step(&self, states: &States, b: u8) -> States {
        let mut next = States::new();
        for &s in states {
            match self.toks.get(s) {
                _ if s == ANY => {
                    next.insert(ANY);
                }
                Some(Tok::Byte(c)) if *c == b => {
                    next.insert(s + 1);
                }
                Some(Tok::Level) if b != b'/' => {
                    next.insert(s);
                }
                Some(Tok::Rest) => {
                    next.insert(s);
                }
                Some(Tok::Tail) if b == b'/' => {
                    next.insert(ANY);
                }
                _ => {}
            }
        }
        self.close(&mut next);
        next
    }

    fn accepts(&self, states: &States) -> bool {
        states.contains(&self.toks.len()) || states.contains(&ANY)
    }
}

/// The bytes that tell topics apart for these lines: one byte none of them uses (standing for
/// all the others, and tried first so that examples read like topics), every byte of their
/// prefixes and patterns, and `/`.
fn alphabet(topics: &[BridgeTopic]) -> Vec<u8> {
    let mut used: BTreeSet<u8> = (topics.iter())
        .flat_map(|t| [&t.pattern, &t.local_prefix, &t.remote_prefix])
        .flat_map(|s| s.bytes())
        .filter(|b| !matches!(b, b'+' | b'#'))
        .collect();
    used.insert(b'/');
    let other = (b'x'..=b'z')
        .chain(b'a'..=b'w')
        .chain(b'0'..=b'9')
        .find(|b| !used.contains(b));
    other.into_iter().chain(used).collect()
}

/// Product states searched per pair of lines at most (ordinary lines need a few dozen).
const LOOP_SEARCH_MAX: usize = 100_000;

/// The shortest `x` for which, for each `(prefix, lang)` of `each`, `prefix + x` is a topic
/// `lang` matches, and `c + x` is one some lang of `any` matches; `None` if there is none.
fn common_suffix(
    alphabet: &[u8],
    each: [(&str, &Lang); 2],
    c: &str,
    any: &[&Lang],
) -> Option<Vec<u8>> {
    type Product = ([States; 2], Vec<States>);
    let first: Product = (
        each.map(|(p, l)| l.after(p.as_bytes())),
        any.iter().map(|l| l.after(c.as_bytes())).collect(),
    );
    let alive =
        |p: &Product| p.0.iter().all(|s| !s.is_empty()) && p.1.iter().any(|s| !s.is_empty());
    let accepted = |p: &Product, x: &[u8]| {
        // Topics are never empty.
        let topics = [each[0].0, each[1].0, c];
        topics.iter().all(|t| !t.is_empty() || !x.is_empty())
            && each.iter().zip(&p.0).all(|((_, l), s)| l.accepts(s))
            && any.iter().zip(&p.1).any(|(l, s)| l.accepts(s))
    };
    if !alive(&first) {
        return None;
    }
    // Keyed with whether `x` is empty: the state `x = ""` stands at may be one a longer `x`
    // reaches too, and only that one may make a valid topic of an empty prefix.
    let mut seen: HashSet<(Product, bool)> = HashSet::from([(first.clone(), false)]);
    let mut queue: VecDeque<(Product, Vec<u8>)> = VecDeque::from([(first, Vec::new())]);
    while let Some((p, x)) = queue.pop_front() {
        if accepted(&p, &x) {
            return Some(x);
        }
        for &b in alphabet {
            let next: Product = (
                [each[0].1.step(&p.0[0], b), each[1].1.step(&p.0[1], b)],
                any.iter().zip(&p.1).map(|(l, s)| l.step(s, b)).collect(),
            );
            if !alive(&next) || seen.len() >= LOOP_SEARCH_MAX || !seen.insert((next.clone(), true))
            {
                continue;
            }
            let mut y = x.clone();
            y.push(b);
            queue.push_back((next, y));
        }
    }
    None
}

/// Checks every bridge and that their names differ.
pub fn validate_all(bridges: &[BridgeConfig]) -> anyhow::Result<()> {
    if bridges.len() > MAX_BRIDGES {
        bail!("bridge: at most {MAX_BRIDGES}");
    }
    for (i, b) in bridges.iter().enumerate() {
        b.validate(i)?;
        if bridges.iter().take(i).any(|o| o.name == b.name) {
            bail!("bridge[{i}].name: {:?} is used twice", b.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<Vec<BridgeConfig>> {
        #[derive(Deserialize)]
        struct W {
            bridge: Vec<BridgeConfig>,
        }
        let w: W = toml::from_str(s)?;
        validate_all(&w.bridge)?;
        Ok(w.bridge)
    }

    #[test]
    fn a_full_bridge_parses() {
        let b = parse(
            r#"
[[bridge]]
name = "cloud"
address = ["a.example:1883", "b.example:1883"]
protocol = "mqttv311"
[[bridge.topic]]
pattern = "sensors/#"
direction = "both"
qos = 1
remote_prefix = "site-1/"
"#,
        )
        .unwrap();
        assert_eq!(b[0].address.len(), 2);
        assert_eq!(b[0].topics[0].direction, Direction::Both);
        assert_eq!(b[0].keepalive_secs, 60);
        assert!(!b[0].clean_start && b[0].try_private);
        assert!(b[0].remote_client_id().ends_with(".cloud"));
    }

    #[test]
    fn bad_bridges_name_the_key() {
        let base = "[[bridge]]\nname = \"x\"\naddress = \"h:1\"\n";
        let cases = [
            (
                "[[bridge.topic]]\npattern = \"a\"\ndirection = \"sideways\"\n",
                "direction",
            ),
            (
                "[[bridge.topic]]\npattern = \"a\"\nqos = 3\n",
                "bridge[0].topic[0].qos",
            ),
            (
                "[[bridge.topic]]\npattern = \"a/#/b\"\n",
                "bridge[0].topic[0].pattern",
            ),
            (
                "[[bridge.topic]]\npattern = \"a\"\nlocal_prefix = \"+/\"\n",
                "local_prefix",
            ),
            ("", "bridge[0].topic"),
            (
                "cert_file = \"/nonexistent\"\nkey_file = \"/nonexistent\"\n[[bridge.topic]]\npattern = \"a\"\n",
                "bridge[0].cert_file",
            ),
            (
                "reconnect_min_secs = 0\n[[bridge.topic]]\npattern = \"a\"\n",
                "reconnect",
            ),
            (
                "max_inflight = 65\n[[bridge.topic]]\npattern = \"a\"\n",
                "bridge[0].max_inflight",
            ),
        ];
        for (extra, key) in cases {
            let e = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains(key), "{extra:?}: {e}");
        }
        let e = parse(
            "[[bridge]]\nname = \"x\"\naddress = \"nohost\"\n[[bridge.topic]]\npattern = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bridge[0].address"), "{e}");
        let twice = format!(
            "{base}[[bridge.topic]]\npattern = \"a\"\n{base}[[bridge.topic]]\npattern = \"a\"\n"
        );
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
    }

    /// A topic line: `(pattern, direction, local_prefix, remote_prefix)`.
    type Line<'a> = (&'a str, &'a str, &'a str, &'a str);

    /// A bridge with these topic lines.
    fn lines(lines: &[Line<'_>]) -> anyhow::Result<Vec<BridgeConfig>> {
        let mut t = String::from("[[bridge]]\nname = \"x\"\naddress = \"h:1\"\n");
        for (pattern, direction, local, remote) in lines {
            t.push_str(&format!(
                "[[bridge.topic]]\npattern = {pattern:?}\ndirection = {direction:?}\n\
                 local_prefix = {local:?}\nremote_prefix = {remote:?}\n"
            ));
        }
        parse(&t)
    }

    #[test]
    fn usual_lines_are_no_loop() {
        let fine: &[&[Line<'_>]] = &[
            // A two-way line, with or without prefixes: what comes back is the same topic.
            &[("#", "both", "", "")],
            &[("data/#", "both", "site/", "hq/")],
            // Site and cloud: sensors up, commands down, under the site's prefix.
            &[
                ("sensors/#", "out", "", "site-1/"),
                ("commands/#", "in", "local/", "site-1/"),
            ],
            // Everything from the cloud under cloud/, only sensors sent up.
            &[
                ("sensors/#", "both", "", "site-1/"),
                ("#", "in", "cloud/", ""),
            ],
            // The test suite's lines.
            &[
                ("sensors/#", "out", "", "site-1/"),
                ("cmd/#", "in", "local/", "site-1/"),
                ("both/#", "both", "", ""),
            ],
            // Re-imported under a new name, but nothing sends that name out again.
            &[
                ("sensors/#", "out", "", "site-1/"),
                ("site-1/sensors/#", "in", "", ""),
            ],
            // Remote prefixes apart: nothing one line sends the other takes.
            &[("x/#", "both", "", "r1/"), ("x/#", "both", "", "r2/")],
            // A prefix that is the whole topic.
            &[("", "out", "a/b", "c/d"), ("", "in", "e/f", "c/d")],
        ];
        for l in fine {
            assert!(lines(l).is_ok(), "{l:?}: {:?}", lines(l).err());
        }
    }

    #[test]
    fn lines_that_loop_are_refused_naming_both() {
        let refused: &[(&[Line<'_>], &str)] = &[
            // Everything up under site-1/, everything down under cloud/: site-1/x comes back
            // as cloud/site-1/x, goes up as site-1/cloud/site-1/x, and so on.
            (
                &[("#", "out", "", "site-1/"), ("#", "in", "cloud/", "")],
                "bridge[0].topic[0] and bridge[0].topic[1]: a loop: the local topic",
            ),
            // Two two-way lines whose remote spaces overlap with different prefixes.
            (
                &[("sensors/#", "both", "", "site-1/"), ("#", "both", "", "")],
                "bridge[0].topic[0] and bridge[0].topic[1]",
            ),
            // The remote prefix of the `in` line is longer: the overlap is one level down.
            (
                &[("+/#", "out", "l/", "r/"), ("#", "in", "l/x/", "r/a/")],
                "\"l/a/\" goes out as \"r/a/\", comes back in as \"l/x/\"",
            ),
        ];
        for (l, want) in refused {
            let e = lines(l).unwrap_err().to_string();
            assert!(e.contains(want), "{l:?}: {e}");
        }
    }

    #[test]
    fn filter_languages_follow_mqtt_matching() {
        let accepts = |f: &str, t: &str| {
            let l = Lang::of(f);
            l.accepts(&l.after(t.as_bytes()))
        };
        assert!(accepts("a/#", "a") && accepts("a/#", "a/b/c") && !accepts("a/#", "ab"));
        assert!(
            accepts("a/+/c", "a/b/c") && accepts("a/+/c", "a//c") && !accepts("a/+/c", "a/b/d/c")
        );
        assert!(accepts("#", "x/y") && accepts("pre/fix", "pre/fix") && !accepts("+", "a/b"));
    }
}
