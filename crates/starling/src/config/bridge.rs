//! `[[bridge]]` tables: connections to other brokers, with mosquitto's topic remapping
//! (`[[bridge.topic]]`: pattern, direction, QoS, local and remote prefixes). Checked at start:
//! an unknown key or direction, a topic that cannot be mapped, prefixes that would send a
//! message straight back where it came from, or missing TLS files refuse the config with the
//! key named.

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
    /// comes in while the bridge is away waits there).
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
        Ok(())
    }
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
}
