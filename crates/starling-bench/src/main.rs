//! `starling-bench`: a load generator for MQTT brokers on Starling's codec, and a trivial
//! forwarding server to check that the generator is not the bottleneck, and a minimal gRPC
//! plugin (passes every publish) for the broker's `grpc` plugin benchmark.
//!
//! Runs one scenario against one broker and prints one JSON line. Everything runs on one
//! thread (a current-thread tokio runtime): the generator is meant to be pinned to one core.

mod churn;
mod client;
mod forwarder;
mod grpc_plugin;
mod hist;
mod load;
mod mixed;
mod procstat;
mod scale;
mod scale_flow;
mod scale_store;
mod special;
mod takeover;
mod transport;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use starling_proto::QoS;

use load::{LoadSpec, Topology};

/// Load generator for MQTT brokers: one scenario, one JSON line on stdout.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A trivial MQTT forwarding server (exact topics only) for checking the generator.
    Forwarder {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 1883)]
        port: u16,
    },
    /// Connect rate or p2p QoS 1 over TLS or QUIC (to compare the transports).
    Transport(transport::TransportArgs),
    /// One point of a scale curve (bench/scale.sh): clients, subscriptions, retained
    /// messages, a full store, the loopback copy limit.
    Scale(scale::ScaleArgs),
    /// A gRPC plugin that passes every publish at once, for a broker's `grpc` plugin section.
    GrpcPlugin {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 50051)]
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 10 publishers to 10 subscribers, a topic per pair, QoS 0, 64-byte payload, max rate.
    P2pQos0,
    /// The same at QoS 1 both ways, 64 unacknowledged per publisher.
    P2pQos1,
    /// 10 publishers to 1 subscriber on a `+` wildcard, QoS 0.
    FanIn,
    /// 1 publisher to 100 subscribers on one topic, QoS 0, 1,000 undelivered at most.
    FanOutQos0,
    /// The same at QoS 1.
    FanOutQos1,
    /// 10 to 10 at 10,000 msg/s in total, QoS 1: latency percentiles.
    Latency,
    /// Idle connections (keep-alive 60 s): connect rate and broker RSS per connection.
    Connections,
    /// Retained topics, then one subscriber to `#`: time to receive them all.
    Retained,
    /// 1 MiB payloads, 10 to 10, QoS 1: MB/s.
    Large,
    /// A steady QoS 1 stream (10 to 10, 1,000 msg/s each) while clients churn around it:
    /// its latency, delivery ratio, the broker's CPU and RSS over time.
    Mixed,
    /// Only the churn of `mixed`, to run as a process of its own beside `mixed
    /// --episodes-per-s 0` (bench/mixed.sh does, at a lower priority).
    Churn,
    /// `--movers` clients, each with its own client id, CONNECT (5.0, clean start) again and
    /// again, alternately to `--host`/`--port` and `--alt-addr`, each CONNECT taking the id over
    /// from the mover's previous connection: CONNACK latency, connects/s, refusals.
    Takeover,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Subscribers connect here (`host:port`) instead: another node of a cluster.
    #[arg(long)]
    sub_addr: Option<String>,
    /// takeover: every other CONNECT goes here (`host:port`; default: `--host`/`--port`, a
    /// takeover on one node).
    #[arg(long)]
    alt_addr: Option<String>,
    /// takeover: clients moving at once, each with its own client id.
    #[arg(long, default_value_t = 16)]
    movers: usize,
    #[arg(long, value_enum, default_value = "p2p-qos0")]
    scenario: Scenario,
    /// Name of the broker, copied into the output.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Free text copied into the output (e.g. "unpinned").
    #[arg(long)]
    tag: Option<String>,
    /// Round number, copied into the output.
    #[arg(long)]
    round: Option<u32>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// The broker's process id, to sample its CPU time and RSS from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Payload bytes (at least 12: timestamp and publisher index).
    #[arg(long)]
    payload: Option<usize>,
    /// 0 or 1.
    #[arg(long)]
    qos: Option<u8>,
    #[arg(long)]
    publishers: Option<usize>,
    #[arg(long)]
    subscribers: Option<usize>,
    /// Total messages per second over all publishers (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// QoS 1: PUBLISH packets a publisher may have unacknowledged.
    #[arg(long)]
    inflight: Option<usize>,
    /// Messages a publisher may have sent and not yet delivered to every subscriber.
    #[arg(long)]
    window: Option<usize>,
    /// Throughput runs qualify only if the broker was at least this busy (CPU s per s).
    #[arg(long, default_value_t = 0.95)]
    min_broker_util: f64,
    /// Runs qualify only if the generator was at most this busy.
    #[arg(long, default_value_t = 0.90)]
    max_gen_util: f64,
    /// connections: how many.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// connections: handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// connections: each connection also subscribes (QoS 1) to a topic of its own once
    /// connected, as most clients do, before it goes idle.
    #[arg(long)]
    subscribe: bool,
    /// connections: after connecting (with --subscribe), messages to their topics for this
    /// many seconds, then quiet for --quiet-secs, and the broker's RSS read again: what a
    /// connection costs once traffic has come and gone (0: none).
    #[arg(long, default_value_t = 0)]
    traffic_secs: u64,
    /// connections with --traffic-secs: messages per second in all (64 B, QoS 0).
    #[arg(long, default_value_t = 1000)]
    traffic_rate: u32,
    /// connections with --traffic-secs: seconds of quiet before the RSS is read.
    #[arg(long, default_value_t = 15)]
    quiet_secs: u64,
    /// retained: how many topics.
    #[arg(long, default_value_t = 100_000)]
    retained: usize,
    /// Subscribers keep persistent sessions (clean session 0), so a durable broker stores
    /// what is queued and in flight for them; takeover: the movers resume a persistent
    /// session (Clean Start 0, expiry 300 s), which moves with them.
    #[arg(long)]
    persistent: bool,
    /// mixed: churn episodes started per second.
    #[arg(long, default_value_t = 40.0)]
    episodes_per_s: f64,
    /// mixed: most churn episodes at once.
    #[arg(long, default_value_t = 400)]
    max_episodes: usize,
    /// mixed: size of the churn's pool of client ids.
    #[arg(long, default_value_t = 400)]
    client_ids: usize,
    /// mixed: percent of churn episodes speaking MQTT 5.0 (the rest 3.1.1).
    #[arg(long, default_value_t = 50)]
    v5_percent: usize,
    /// mixed: percent of churn episodes with a persistent session.
    #[arg(long, default_value_t = 40)]
    persistent_percent: usize,
    /// mixed: the filters churn clients subscribe to, comma-separated.
    #[arg(long, default_value = "churn/#,churn/+/x,$SYS/#")]
    churn_filters: String,
    /// mixed: largest payload of the churn's bursts, bytes.
    #[arg(long, default_value_t = 2048)]
    churn_max_payload: usize,
    /// mixed: seed of the churn.
    #[arg(long, default_value_t = 0x5EED_CAFE_F00D_0001)]
    seed: u64,
    /// mixed: seconds the steady stream goes on after the churn stops, for the last RSS sample.
    #[arg(long, default_value_t = 0)]
    cooldown: u64,
    /// The User Name every client sends.
    #[arg(long)]
    username: Option<String>,
    /// The Password every client sends (e.g. a JWT).
    #[arg(long)]
    password: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let local = tokio::task::LocalSet::new();
    match cli.command {
        Some(Command::Forwarder { host, port }) => {
            local.block_on(&runtime, forwarder::serve(&format!("{host}:{port}")))
        }
        Some(Command::Transport(args)) => {
            let line = local.block_on(&runtime, transport::run(&args))?;
            println!("{line}");
            Ok(())
        }
        Some(Command::Scale(args)) => {
            if let Some(line) = local.block_on(&runtime, scale::run(args))? {
                println!("{line}");
            }
            Ok(())
        }
        Some(Command::GrpcPlugin { host, port }) => {
            local.block_on(&runtime, grpc_plugin::serve(&format!("{host}:{port}")))
        }
        None => {
            let line = local.block_on(&runtime, run(&cli.run))?;
            println!("{line}");
            Ok(())
        }
    }
}

async fn run(a: &RunArgs) -> Result<String> {
    let addr = format!("{}:{}", a.host, a.port);
    let credentials = (
        a.username.clone(),
        a.password.clone().map(bytes::Bytes::from),
    );
    let _ = client::CREDENTIALS.set(credentials);
    let qos = match a.qos {
        None => None,
        Some(0) => Some(QoS::AtMostOnce),
        Some(1) => Some(QoS::AtLeastOnce),
        Some(q) => bail!("--qos {q}: only 0 and 1"),
    };
    let mut head = Map::new();
    head.insert("scenario".into(), json!(name(a.scenario)));
    head.insert("broker".into(), json!(a.label));
    if let Some(t) = &a.tag {
        head.insert("tag".into(), json!(t));
    }
    if let Some(r) = a.round {
        head.insert("round".into(), json!(r));
    }
    let body = match a.scenario {
        Scenario::Connections => {
            head.insert("keep_alive_s".into(), json!(60));
            head.insert("subscribed".into(), json!(a.subscribe));
            special::connections(
                &addr,
                a.connections,
                a.concurrency,
                a.subscribe,
                Duration::from_secs(2),
                (a.traffic_secs > 0).then(|| special::Traffic {
                    duration: Duration::from_secs(a.traffic_secs),
                    rate: a.traffic_rate,
                    quiet: Duration::from_secs(a.quiet_secs),
                }),
                a.broker_pid,
            )
            .await?
        }
        Scenario::Retained => {
            let payload = a.payload.unwrap_or(64);
            head.insert("payload".into(), json!(payload));
            special::retained(
                &addr,
                a.retained,
                payload,
                a.inflight.unwrap_or(1000),
                Duration::from_secs(120),
                a.broker_pid,
            )
            .await?
        }
        Scenario::Mixed | Scenario::Churn => {
            let spec = mixed::MixedSpec {
                addr: addr.clone(),
                pairs: a.publishers.unwrap_or(10),
                rate: a.rate.unwrap_or(1000.0),
                payload: a.payload.unwrap_or(64),
                inflight: a.inflight.unwrap_or(64),
                episodes_per_s: a.episodes_per_s,
                max_episodes: a.max_episodes,
                churn: churn::ChurnSpec {
                    addr,
                    ids: a.client_ids,
                    v5_percent: a.v5_percent,
                    persistent_percent: a.persistent_percent,
                    filters: a.churn_filters.split(',').map(str::to_owned).collect(),
                    max_payload: a.churn_max_payload,
                },
                seed: a.seed,
                warmup: a.warmup,
                duration: a.duration,
                cooldown: a.cooldown,
                broker_pid: a.broker_pid,
            };
            if a.scenario == Scenario::Churn {
                mixed::churn_only(spec).await?
            } else {
                mixed::run(spec).await?
            }
        }
        Scenario::Takeover => {
            takeover::run(takeover::TakeoverSpec {
                alt_addr: a.alt_addr.clone().unwrap_or_else(|| addr.clone()),
                addr,
                movers: a.movers,
                persistent: a.persistent,
                warmup: a.warmup,
                duration: a.duration,
            })
            .await?
        }
        s => {
            let spec = load_spec(s, a, addr, qos);
            if let Some(s) = &spec.sub_addr {
                head.insert("sub_addr".into(), json!(s));
            }
            head.insert("qos".into(), json!(spec.qos.as_u8()));
            head.insert("payload".into(), json!(spec.payload));
            head.insert("publishers".into(), json!(spec.publishers));
            head.insert("subscribers".into(), json!(spec.subscribers));
            head.insert("inflight".into(), json!(spec.inflight));
            head.insert("window".into(), json!(spec.window));
            head.insert("rate".into(), json!(spec.rate));
            head.insert("warmup_s".into(), json!(spec.warmup));
            head.insert("duration_s".into(), json!(spec.duration));
            load::run(spec).await?
        }
    };
    head.extend(body);
    Ok(Value::Object(head).to_string())
}

/// The scenario's preset, with the command line's overrides.
fn load_spec(s: Scenario, a: &RunArgs, addr: String, qos: Option<QoS>) -> LoadSpec {
    let q0 = QoS::AtMostOnce;
    let q1 = QoS::AtLeastOnce;
    // (topology, publishers, subscribers, qos, payload, inflight, window, rate)
    let (topology, publishers, subscribers, dqos, payload, inflight, window, rate) = match s {
        Scenario::P2pQos1 => (Topology::P2p, 10, 10, q1, 64, 64, 1000, None),
        Scenario::FanIn => (Topology::FanIn, 10, 1, q0, 64, 64, 1000, None),
        Scenario::FanOutQos0 => (Topology::FanOut, 1, 100, q0, 64, 1000, 1000, None),
        Scenario::FanOutQos1 => (Topology::FanOut, 1, 100, q1, 64, 1000, 1000, None),
        Scenario::Latency => (Topology::P2p, 10, 10, q1, 64, 64, 1000, Some(10_000.0)),
        Scenario::Large => (Topology::P2p, 10, 10, q1, 1 << 20, 4, 4, None),
        Scenario::P2pQos0
        | Scenario::Connections
        | Scenario::Retained
        | Scenario::Mixed
        | Scenario::Churn
        | Scenario::Takeover => (Topology::P2p, 10, 10, q0, 64, 64, 1000, None),
    };
    LoadSpec {
        addr,
        sub_addr: a.sub_addr.clone(),
        topology,
        publishers: a.publishers.unwrap_or(publishers),
        subscribers: a.subscribers.unwrap_or(subscribers),
        qos: qos.unwrap_or(dqos),
        payload: a.payload.unwrap_or(payload),
        inflight: a.inflight.unwrap_or(inflight),
        window: a.window.unwrap_or(window),
        rate: a.rate.or(rate),
        warmup: a.warmup,
        duration: a.duration,
        broker_pid: a.broker_pid,
        min_broker_util: a.min_broker_util,
        max_gen_util: a.max_gen_util,
        persistent: a.persistent,
    }
}

fn name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}
