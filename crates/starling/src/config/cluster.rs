//! The `[cluster]` table: this node's part in a cluster (docs/cluster.md). Off by default: a
//! broker without it is a single node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use starling_broker::config::Bound;

use super::is_loopback;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Whether this broker is a node of a cluster.
    pub enabled: bool,
    /// This node's id, unique in the cluster, at least 1.
    pub node_id: u64,
    /// Address and port of the inter-node listener.
    pub bind: SocketAddr,
    /// The address the other nodes reach this one at. Default: `bind`.
    pub advertise: Option<String>,
    /// The cluster's initial voters, `"<node_id>@<host>:<port>"` each, this node among them.
    /// Every node lists the same ones; the lowest id forms the cluster on its first start.
    pub seeds: Vec<String>,
    /// Where the cluster's log is kept. Default: `cluster` in the data directory.
    pub data_dir: Option<PathBuf>,
    /// Between the leader's heartbeats, milliseconds.
    pub heartbeat_ms: u64,
    /// A node that hears no leader for between this and twice this stands for election,
    /// milliseconds.
    pub election_timeout_ms: u64,
    /// Longest a change to the replicated state may take to commit, milliseconds.
    pub propose_timeout_ms: u64,
    /// A node that has not heard from a majority of the voters for this long refuses new
    /// CONNECTs at once and disconnects its clients (v5 0x9C Use another server) so that
    /// they move to the majority, milliseconds.
    pub lease_ms: u64,
    /// A member that has answered the leader nothing for this long is judged down through
    /// the log (`NodeDown`): every node forgets its filters until it answers again or
    /// restarts, milliseconds.
    pub down_after_ms: u64,
    /// The cluster's CA (PEM): with `cert_file` and `key_file`, inter-node streams are mutual
    /// TLS, and only nodes with a certificate this CA signed are peers.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate chain (PEM), signed by `ca_file`'s CA.
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Without TLS (`ca_file` and the rest) inter-node traffic is neither encrypted nor
    /// authenticated: a `bind` that is not a loopback address is refused unless this is set
    /// (for a private network only).
    pub allow_plaintext: bool,
    /// When a QoS 1/2 publish whose message goes to other nodes is acknowledged.
    pub forward_ack: ForwardAck,
}

/// `forward_ack`: when the PUBACK/PUBREC of a QoS 1/2 publish goes, if other nodes have
/// subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardAck {
    /// Once every node the message went to has stored it (or was given up on, unreachable
    /// for 10 s).
    #[default]
    Wait,
    /// Once it is queued for them (faster; a message the publishing node acknowledged can
    /// be lost if that node dies before sending it).
    Async,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: 0,
            bind: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            seeds: Vec::new(),
            data_dir: None,
            heartbeat_ms: 250,
            election_timeout_ms: 1_000,
            propose_timeout_ms: 5_000,
            lease_ms: 10_000,
            down_after_ms: 30_000,
            ca_file: None,
            cert_file: None,
            key_file: None,
            allow_plaintext: false,
            forward_ack: ForwardAck::Wait,
        }
    }
}

/// One entry of `seeds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The node's id.
    pub id: u64,
    /// Where it listens for other nodes.
    pub addr: String,
}

/// Parses `"<id>@<host>:<port>"`.
pub fn parse_seed(s: &str) -> anyhow::Result<Seed> {
    let (id, addr) = s
        .split_once('@')
        .with_context(|| format!("{s:?} is not <node_id>@<host>:<port>"))?;
    let id: u64 = id
        .parse()
        .with_context(|| format!("{s:?}: node id {id:?} is not a number"))?;
    if id == 0 {
        bail!("{s:?}: node ids start at 1");
    }
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{s:?}: the address has no port"))?;
    if host.is_empty() || port.parse::<u16>().ok().filter(|&p| p != 0).is_none() {
        bail!("{s:?}: the address is not <host>:<port>");
    }
    Ok(Seed {
        id,
        addr: addr.to_owned(),
    })
}

impl ClusterConfig {
    /// The numbers with their bounds.
    pub fn bounded(&self) -> [(&'static str, u64, Bound); 5] {
        [
            (
                "heartbeat_ms",
                self.heartbeat_ms,
                Bound::new(10, 60_000, "a minute"),
            ),
            (
                "election_timeout_ms",
                self.election_timeout_ms,
                Bound::new(50, 600_000, "ten minutes"),
            ),
            (
                "propose_timeout_ms",
                self.propose_timeout_ms,
                Bound::new(100, 600_000, "ten minutes"),
            ),
            // Every pair of nodes talks at least every 2 s (route keepalives): a shorter
            // lease would judge a quiet but healthy node cut off.
            (
                "lease_ms",
                self.lease_ms,
                Bound::new(3_000, 3_600_000, "an hour"),
            ),
            // Past the 10 s after which a silent peer is suspected (and its batches dropped).
            (
                "down_after_ms",
                self.down_after_ms,
                Bound::new(10_000, 86_400_000, "a day"),
            ),
        ]
    }

    /// The seeds, parsed.
    pub fn seeds(&self) -> anyhow::Result<Vec<Seed>> {
        self.seeds.iter().map(|s| parse_seed(s)).collect()
    }

    /// Where the cluster's log lives.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("cluster"))
    }

    /// The address peers dial.
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.bind.to_string())
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.node_id == 0 {
            bail!("cluster.node_id: set it to this node's id (1 or more)");
        }
        let seeds = self
            .seeds()
            .map_err(|e| anyhow::anyhow!("cluster.seeds: {e:#}"))?;
        if seeds.is_empty() {
            bail!("cluster.seeds: list the cluster's initial voters, this node among them");
        }
        let mut ids: Vec<u64> = seeds.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w.first() == w.get(1)) {
            bail!("cluster.seeds: a node id is listed twice");
        }
        if !ids.contains(&self.node_id) {
            bail!(
                "cluster.seeds: node {} is not among them (joining a running cluster is not supported yet)",
                self.node_id
            );
        }
        if self.heartbeat_ms.saturating_mul(3) > self.election_timeout_ms {
            bail!(
                "cluster.election_timeout_ms: must be at least three heartbeats ({} ms)",
                self.heartbeat_ms.saturating_mul(3)
            );
        }
        let tls = [&self.ca_file, &self.cert_file, &self.key_file];
        let set = tls.iter().filter(|f| f.is_some()).count();
        if set != 0 && set != 3 {
            bail!(
                "cluster.ca_file, cert_file and key_file: set all three (TLS between nodes), or none"
            );
        }
        if set == 0 && !is_loopback(self.bind.ip()) && !self.allow_plaintext {
            bail!(
                "cluster.bind: {} is not a loopback address, and without ca_file, cert_file and key_file inter-node traffic is neither encrypted nor authenticated; set them (TLS between nodes), or allow_plaintext = true only on a private network",
                self.bind
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_or_say_what_is_wrong() {
        let ok = parse_seed("2@127.0.0.2:7946").unwrap();
        assert_eq!(
            ok,
            Seed {
                id: 2,
                addr: "127.0.0.2:7946".into()
            }
        );
        assert_eq!(parse_seed("3@node-c.example:7946").unwrap().id, 3);
        for (bad, says) in [
            ("127.0.0.1:7946", "not <node_id>@"),
            ("x@127.0.0.1:7946", "not a number"),
            ("0@127.0.0.1:7946", "start at 1"),
            ("1@127.0.0.1", "no port"),
            ("1@:7946", "not <host>:<port>"),
            ("1@h:0", "not <host>:<port>"),
        ] {
            let e = format!("{:#}", parse_seed(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn an_enabled_cluster_is_checked_whole() {
        let mut c = ClusterConfig {
            enabled: true,
            node_id: 1,
            seeds: vec!["1@127.0.0.1:7946".into(), "2@127.0.0.2:7946".into()],
            ..Default::default()
        };
        c.validate().unwrap();
        let check = |c: &ClusterConfig, says: &str| {
            let e = format!("{:#}", c.validate().unwrap_err());
            assert!(e.contains(says), "{e}");
        };
        check(
            &ClusterConfig {
                node_id: 3,
                ..c.clone()
            },
            "not among them",
        );
        check(
            &ClusterConfig {
                node_id: 0,
                ..c.clone()
            },
            "cluster.node_id",
        );
        check(
            &ClusterConfig {
                seeds: vec!["1@a:1".into(), "1@b:2".into()],
                ..c.clone()
            },
            "listed twice",
        );
        check(
            &ClusterConfig {
                election_timeout_ms: 500,
                ..c.clone()
            },
            "three heartbeats",
        );
        c.bind = SocketAddr::from(([10, 0, 0, 1], 7946));
        check(&c, "neither encrypted nor authenticated");
        check(
            &ClusterConfig {
                ca_file: Some("ca.pem".into()),
                ..c.clone()
            },
            "set all three",
        );
        let tls = ClusterConfig {
            ca_file: Some("ca.pem".into()),
            cert_file: Some("node.pem".into()),
            key_file: Some("node.key".into()),
            ..c.clone()
        };
        tls.validate().unwrap();
        c.allow_plaintext = true;
        c.validate().unwrap();
    }
}
