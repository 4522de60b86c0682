//! The harness of the cluster tests: `starling` processes on 127.0.0.N with a `[cluster]`
//! section each, reached by one another through the fault proxy, watched through their admin
//! API; and the client helpers the tests share.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::rumqtt::v5;
use crate::proxy::FaultProxy;

/// The `[cluster]` timing of the test nodes: quick elections, a lease that a loaded machine
/// does not run out (the partition test sets a shorter one).
pub(crate) const TIMING: &str =
    "heartbeat_ms = 100\nelection_timeout_ms = 600\npropose_timeout_ms = 2000\nlease_ms = 6000\n";

/// A free port on `ip`, below the kernel's ephemeral range (32768 and up): a node started
/// seconds after its ports were picked (a restart, a node started late) must not find one
/// taken by an outgoing connection's local port meanwhile, which the ephemeral range is for.
/// Ports are handed out in turn from a random start, each checked free when picked.
pub(crate) fn free_port(ip: Ipv4Addr) -> u16 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (RandomState::new().hash_one(std::process::id()) % u64::from(SPAN)) as u32,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} below 32768");
}

/// One node's addresses and files.
pub(crate) struct Spec {
    pub(crate) id: u64,
    pub(crate) mqtt: SocketAddr,
    pub(crate) http: SocketAddr,
    /// The inter-node listener.
    pub(crate) bind: SocketAddr,
    /// Where the other nodes reach it: its fault proxy.
    pub(crate) advertise: SocketAddr,
    pub(crate) dir: PathBuf,
}

/// A running node process, killed on drop.
pub(crate) struct Node {
    pub(crate) child: Child,
}

impl Node {
    pub(crate) fn start(spec: &Spec, seeds: &str, timing: &str) -> Self {
        let config = spec.dir.join("starling.toml");
        std::fs::create_dir_all(&spec.dir).unwrap();
        std::fs::write(
            &config,
            format!(
                "[cluster]\nenabled = true\nnode_id = {}\nbind = \"{}\"\nadvertise = \"{}\"\n\
                 seeds = [{seeds}]\n{}",
                spec.id,
                spec.bind,
                spec.advertise,
                timing.replace("{id}", &spec.id.to_string())
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.join("node.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(spec.dir.join("data"))
            .args(["--bind", &spec.mqtt.to_string()])
            .args(["--http-bind", &spec.http.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Node { child }
    }

    /// SIGKILL: no shutdown, no flush.
    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Cluster {
    pub(crate) specs: Vec<Spec>,
    pub(crate) seeds: String,
    pub(crate) timing: String,
    pub(crate) nodes: Vec<Option<Node>>,
    pub(crate) proxy: FaultProxy,
    pub(crate) http: reqwest::Client,
    pub(crate) _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes, node N on 127.0.0.N, each reached by the others through the fault
    /// proxy.
    pub(crate) fn start(n: u64) -> Self {
        Self::start_with(n, TIMING)
    }

    /// As `start`, with `timing` as the `[cluster]` timing keys (and any other; `{id}` in
    /// it is each node's id).
    pub(crate) fn start_with(n: u64, timing: &str) -> Self {
        let all: Vec<u64> = (1..=n).collect();
        Self::start_some(n, timing, &all)
    }

    /// A cluster of `n` nodes of which only those in `live` are started now (the others with
    /// [`Cluster::restart`] later).
    pub(crate) fn start_some(n: u64, timing: &str, live: &[u64]) -> Self {
        Self::start_founded(n, n, timing, live)
    }

    /// `n` nodes' addresses, of which the first `founders` are the seeds (the cluster's first
    /// members) and those in `live` are started now; a node beyond the founders is started
    /// with [`Cluster::start_joiner`] and joins with `starling ctl cluster join`.
    pub(crate) fn start_founded(n: u64, founders: u64, timing: &str, live: &[u64]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ips: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(127, 0, 0, i as u8)).collect();
        let binds: Vec<SocketAddr> = ips
            .iter()
            .map(|ip| SocketAddr::from((*ip, free_port(*ip))))
            .collect();
        let (proxy, advertised) = FaultProxy::start(&binds);
        let seeds = advertised
            .iter()
            .take(founders as usize)
            .enumerate()
            .map(|(i, a)| format!("\"{}@{a}\"", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let specs: Vec<Spec> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Spec {
                id: i as u64 + 1,
                mqtt: SocketAddr::from((*ip, free_port(*ip))),
                http: SocketAddr::from((*ip, free_port(*ip))),
                bind: binds[i],
                advertise: advertised[i],
                dir: dir.path().join(format!("n{}", i + 1)),
            })
            .collect();
        let nodes = specs
            .iter()
            .map(|s| live.contains(&s.id).then(|| Node::start(s, &seeds, timing)))
            .collect();
        Cluster {
            specs,
            seeds,
            timing: timing.to_owned(),
            nodes,
            proxy,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// Starts `n` nodes and waits until they have a leader and every incarnation announced.
    pub(crate) async fn formed(n: u64) -> Self {
        let c = Self::start(n);
        let all: Vec<u64> = (1..=n).collect();
        c.settled(&all, "first start").await;
        c
    }

    pub(crate) async fn status(&self, id: u64) -> Option<Value> {
        let url = format!(
            "http://{}/api/v1/cluster",
            self.specs[(id - 1) as usize].http
        );
        let r = self.http.get(url).send().await.ok()?;
        r.json().await.ok()
    }

    pub(crate) fn mqtt(&self, id: u64) -> SocketAddr {
        self.specs[(id - 1) as usize].mqtt
    }

    /// Waits until node `id` knows `n` routes of other nodes.
    pub(crate) async fn routes_known(&self, id: u64, n: u64) {
        let mut last = Value::Null;
        for _ in 0..100 {
            if let Some(v) = self.status(id).await {
                if v["remote_routes"].as_u64() == Some(n) {
                    return;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {id} does not know {n} remote routes: {last:#}\n{}",
            self.logs()
        );
    }

    pub(crate) fn kill9(&mut self, id: u64) {
        if let Some(n) = self.nodes[(id - 1) as usize].take() {
            n.kill9();
        }
    }

    /// Whether every node started is still running (none exited on its own).
    pub(crate) fn all_running(&mut self) -> bool {
        self.nodes
            .iter_mut()
            .flatten()
            .all(|n| n.child.try_wait().ok().flatten().is_none())
    }

    /// Starts node `id`, not among the seeds: its own seeds are the founders and itself (it
    /// initializes nothing, and waits to be added).
    pub(crate) fn start_joiner(&mut self, id: u64) {
        let spec = &self.specs[(id - 1) as usize];
        let seeds = format!("{}, \"{id}@{}\"", self.seeds, spec.advertise);
        self.nodes[(id - 1) as usize] = Some(Node::start(spec, &seeds, &self.timing));
    }

    pub(crate) fn restart(&mut self, id: u64) {
        let spec = &self.specs[(id - 1) as usize];
        self.nodes[(id - 1) as usize] = Some(Node::start(spec, &self.seeds, &self.timing));
    }

    pub(crate) fn logs(&self) -> String {
        self.specs
            .iter()
            .map(|s| {
                let log = std::fs::read_to_string(s.dir.join("node.log")).unwrap_or_default();
                // A panic or the error the node stopped with first (what a backtrace would
                // push out of the tail), then the tail.
                let panic: Vec<&str> = log
                    .lines()
                    .skip_while(|l| !(l.contains("panicked") || l.starts_with("Error")))
                    .take(4)
                    .collect();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node {} ---\n{}{}",
                    s.id,
                    panic.iter().map(|l| format!("{l}\n")).collect::<String>(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every node in `live` names the same leader (one of `live`) and has applied
    /// every live node's current incarnation; returns the leader and the statuses.
    pub(crate) async fn settled(&self, live: &[u64], what: &str) -> (u64, Vec<Value>) {
        let mut last = Vec::new();
        for _ in 0..300 {
            let mut all = Vec::new();
            for &id in live {
                if let Some(v) = self.status(id).await {
                    all.push(v);
                }
            }
            if all.len() == live.len() {
                let leaders: Vec<Option<u64>> = all.iter().map(|v| v["leader"].as_u64()).collect();
                let announced = all.iter().all(|v| v["announced"] == true);
                // Every node sees every live node's incarnation.
                let agreed = all.iter().all(|v| {
                    live.iter().all(|id| {
                        let inc = all
                            .iter()
                            .find(|s| s["node_id"].as_u64() == Some(*id))
                            .and_then(|s| s["incarnation"].as_u64());
                        v["members"].as_array().is_some_and(|ms| {
                            ms.iter().any(|m| {
                                m["id"].as_u64() == Some(*id) && m["incarnation"].as_u64() == inc
                            })
                        })
                    })
                });
                if let Some(Some(l)) = leaders.first()
                    && leaders.iter().all(|x| *x == Some(*l))
                    && live.contains(l)
                    && announced
                    && agreed
                {
                    return (*l, all);
                }
            }
            last = all;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{what}: the cluster did not settle; last statuses {last:#?}\n{}",
            self.logs()
        );
    }
}

/// A persistent v5 session: clean start 0, expiry 600 s.
pub(crate) fn persistent(o: &mut rumqttc::v5::MqttOptions) {
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(600),
        ..Default::default()
    });
}

/// The error that ends a rumqttc v5 client's connection.
pub(crate) async fn end_of(client: &mut v5::Client) -> String {
    loop {
        if let Err(e) = client.next().await {
            return format!("{e:?}");
        }
    }
}

/// The error that ends a rumqttc event loop (polled by `$events`), within the node's propose
/// timeout and some.
macro_rules! first_error {
    ($events:expr) => {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = $events.poll().await {
                    break format!("{e:?}");
                }
            }
        })
        .await
        .expect("the node answers CONNECT within its propose timeout")
    };
}

/// Polls node `id`'s status until `pred` holds (bounded), and returns it.
pub(crate) async fn status_until(
    c: &Cluster,
    id: u64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    status_within(c, id, what, Duration::from_secs(10), pred).await
}

/// As [`status_until`], waiting up to `within` (a judgement that takes its own time, such
/// as a peer silent for 10 s).
pub(crate) async fn status_within(
    c: &Cluster,
    id: u64,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(v) = c.status(id).await {
            if pred(&v) {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {id}: {what}; last status {last:#}\n{}", c.logs());
}

/// The sum of `key` (`messages_sent`, `messages_dropped`) over the peers of `status`.
pub(crate) fn peers_total(status: &Value, key: &str) -> u64 {
    status["peers"]
        .as_array()
        .map_or(0, |ps| ps.iter().filter_map(|p| p[key].as_u64()).sum())
}

/// Every PUBLISH the clients get until none has come for 400 ms: (which client, payload).
pub(crate) async fn take_until_quiet(clients: &mut [v5::Client]) -> Vec<(usize, String)> {
    let mut got = Vec::new();
    let mut quiet = 0;
    while quiet < 4 {
        let mut progress = false;
        for (k, m) in clients.iter_mut().enumerate() {
            while let Ok(p) = tokio::time::timeout(Duration::from_millis(100), m.publish()).await {
                got.push((k, String::from_utf8_lossy(&p.payload).into_owned()));
                progress = true;
            }
        }
        quiet = if progress { 0 } else { quiet + 1 };
    }
    got
}

/// The value of metric `name` (a line `name value`) in node `id`'s /metrics.
pub(crate) async fn metric(c: &Cluster, id: u64, name: &str) -> u64 {
    let url = format!("http://{}/metrics", c.specs[(id - 1) as usize].http);
    let text = c.http.get(url).send().await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The next PUBACK `client` gets, skipping other packets.
pub(crate) async fn puback(client: &mut v5::Client) -> rumqttc::v5::mqttbytes::v5::PubAck {
    client
        .expect("PUBACK", |p| match p {
            rumqttc::v5::mqttbytes::v5::Packet::PubAck(a) => Some(a),
            _ => None,
        })
        .await
}
