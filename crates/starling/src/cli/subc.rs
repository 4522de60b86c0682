//! `starling sub`: mosquitto_sub's flags, output and exit codes. Subscribes to every `-t`
//! filter in one SUBSCRIBE (then unsubscribes `-U`), prints each message (plain, `-v` or
//! `-F`), and stops after `-C` messages, on the first non-retained message with
//! `--retained-only`, after the SUBACK with `-E`, at the `-W` timeout (exit 27, "Timed out"),
//! or on SIGINT/SIGTERM (DISCONNECT with reason 0x04 in MQTT 5, so that the will is sent, as
//! mosquitto_sub does).

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::Args;
use starling_proto::{
    Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, Unsubscribe,
};
use tokio::time::Instant;

use super::client::{Client, ClientError, Event};
use super::format::{self, Format};
use super::opts::{ConnectOpts, UsageError};
use super::{EXIT_TIMEOUT, error, exit_for, interrupted, open_session};

/// `starling sub` arguments.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub(crate) conn: ConnectOpts,
    /// Topic filter to subscribe to; may be repeated.
    #[arg(short = 't', long = "topic")]
    pub(crate) topics: Vec<String>,
    /// Topic filter whose messages are not printed; may be repeated.
    #[arg(short = 'T', long = "filter-out")]
    filter_out: Vec<String>,
    /// Unsubscribe from this filter after subscribing; may be repeated.
    #[arg(short = 'U', long = "unsubscribe")]
    unsubscribe: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// Disconnect and exit after this many messages.
    #[arg(short = 'C', value_name = "COUNT", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) count: Option<u32>,
    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E')]
    exit_after_sub: bool,
    /// Do not print retained messages.
    #[arg(short = 'R')]
    pub(crate) no_retain: bool,
    /// Only handle retained messages; exit at the first message that is not.
    #[arg(long = "retained-only")]
    retained_only: bool,
    /// Clear the retained messages received (publish an empty retained message to each).
    #[arg(long = "remove-retained")]
    remove_retained: bool,
    /// Seconds after which to stop waiting for messages (exit 27).
    #[arg(short = 'W', value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) timeout: Option<u32>,
    /// Print the topic before each payload.
    #[arg(short = 'v', long = "verbose")]
    pub(crate) verbose: bool,
    /// Do not add a newline after each payload.
    #[arg(short = 'N')]
    pub(crate) no_eol: bool,
    /// Output format (mosquitto_sub's %, @ and \ fields).
    #[arg(short = 'F', value_name = "FORMAT")]
    pub(crate) format: Option<String>,
    /// Pretty-print the JSON of %j and %J.
    #[arg(long = "pretty")]
    pub(crate) pretty: bool,
    /// Print only this percentage of the messages received, chosen at random.
    #[arg(long = "random-filter", value_name = "PERCENT")]
    random_filter: Option<f64>,
    /// MQTT 5 subscription option: do not receive our own messages.
    #[arg(long = "nl")]
    no_local: bool,
    /// MQTT 5 subscription option: keep the retain flag as published.
    #[arg(long = "rap", alias = "retain-as-published")]
    retain_as_published: bool,
    /// MQTT 5 subscription option: retain handling (0 send, 1 send if new, 2 do not send).
    #[arg(long = "rh", value_parser = clap::value_parser!(u8).range(0..=2))]
    retain_handling: Option<u8>,
}

/// How a received message is printed.
#[derive(Debug, Clone)]
pub(crate) struct Printer {
    format: Option<Format>,
    verbose: bool,
    eol: bool,
    pretty: bool,
}

impl Printer {
    pub(crate) fn new(
        format: Option<&str>,
        verbose: bool,
        no_eol: bool,
        pretty: bool,
    ) -> Result<Self, UsageError> {
        Ok(Self {
            format: format.map(Format::parse).transpose()?,
            verbose,
            eol: !no_eol,
            pretty,
        })
    }

    /// Prints one message; false if stdout is gone (the command then stops, as mosquitto_sub).
    pub(crate) fn print(&self, msg: &Publish) -> bool {
        let mut out = Vec::with_capacity(msg.payload.len() + 64);
        match &self.format {
            Some(f) => {
                f.render(msg, SystemTime::now(), self.pretty, &mut out);
                if self.eol {
                    out.push(b'\n');
                }
            }
            None => format::plain(msg, self.verbose, self.eol, &mut out),
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&out).and_then(|()| stdout.flush()).is_ok()
    }
}

fn filter(s: &str, what: &str) -> Result<TopicFilter, UsageError> {
    TopicFilter::new(Bytes::from(s.to_string()), usize::MAX).map_err(|_| {
        UsageError(format!(
            "Error: Invalid {what} topic '{s}', are all '+' and '#' wildcards correct?"
        ))
    })
}

struct Plan {
    subscribe: Vec<(TopicFilter, SubscriptionOptions)>,
    unsubscribe: Vec<TopicFilter>,
    filter_out: Vec<TopicFilter>,
    printer: Printer,
    /// Out of 10,000.
    random: Option<u32>,
}

fn prepare(args: &SubArgs) -> Result<Plan, UsageError> {
    let version = args.conn.version_or(ProtocolVersion::V311);
    args.conn.check(version)?;
    let ep = args.conn.endpoint()?;
    if args.no_retain && args.retained_only {
        return Err(UsageError(
            "Error: Combining '-R' and '--retained-only' makes no sense.".into(),
        ));
    }
    let mut topics = args.topics.clone();
    if let Some(t) = ep.url_topic {
        topics.push(t);
    }
    if topics.is_empty() {
        return Err(UsageError(
            "Error: You must specify a topic to subscribe to.".into(),
        ));
    }
    let v5_options = args.no_local || args.retain_as_published || args.retain_handling.is_some();
    if v5_options && version != ProtocolVersion::V5 {
        return Err(UsageError(
            "Error: --nl, --rap and --rh need MQTT v5 (-V mqttv5).".into(),
        ));
    }
    let options = SubscriptionOptions {
        qos: QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce),
        no_local: args.no_local,
        retain_as_published: args.retain_as_published,
        retain_handling: match args.retain_handling {
            Some(1) => starling_proto::RetainHandling::SendIfNew,
            Some(2) => starling_proto::RetainHandling::DoNotSend,
            _ => starling_proto::RetainHandling::SendAtSubscribe,
        },
    };
    let subscribe = topics
        .iter()
        .map(|t| filter(t, "subscription").map(|f| (f, options)))
        .collect::<Result<Vec<_>, _>>()?;
    let unsubscribe = args
        .unsubscribe
        .iter()
        .map(|t| filter(t, "unsubscribe"))
        .collect::<Result<Vec<_>, _>>()?;
    let filter_out = args
        .filter_out
        .iter()
        .map(|t| filter(t, "filter"))
        .collect::<Result<Vec<_>, _>>()?;
    let random = match args.random_filter {
        None => None,
        Some(p) if (0.0..=100.0).contains(&p) => Some((p * 100.0) as u32),
        Some(_) => {
            return Err(UsageError(
                "Error: --random-filter must be between 0 and 100.".into(),
            ));
        }
    };
    let printer = Printer::new(
        args.format.as_deref(),
        args.verbose,
        args.no_eol,
        args.pretty,
    )?;
    Ok(Plan {
        subscribe,
        unsubscribe,
        filter_out,
        printer,
        random,
    })
}

/// Runs `starling sub`; returns the exit status.
pub fn run(args: SubArgs) -> i32 {
    match prepare(&args) {
        Ok(plan) => super::block_on(subscribe(args, plan)).unwrap_or_else(|e| {
            eprintln!("Error: {e}");
            1
        }),
        Err(e) => {
            eprintln!("{e}\n\nUse 'starling sub --help' to see usage.");
            1
        }
    }
}

/// A small xorshift generator for `--random-filter` (no cryptographic use).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        Self(seed | 1)
    }

    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

enum Stop {
    Done,
    Signal,
    TimedOut,
}

async fn subscribe(args: SubArgs, plan: Plan) -> i32 {
    let conn = &args.conn;
    let version = conn.version_or(ProtocolVersion::V311);
    // mosquitto_sub's -W alarm starts before the connection is made.
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s.into()));
    let (client, props) = match open_session(conn, version).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut s = Session {
        client,
        args: &args,
        plan,
        received: 0,
        rng: Rng::new(),
    };
    let sub_props: Properties = props.subscribe.clone().into();
    let outcome = tokio::select! {
        r = s.run(deadline, sub_props, props.unsubscribe.clone().into()) => r,
        () = interrupted() => Ok(Stop::Signal),
    };
    let disconnect_props: Properties = props.disconnect.into();
    match outcome {
        Ok(Stop::Done) => {
            let _ = s.client.disconnect(disconnect_props).await;
            0
        }
        Ok(Stop::Signal) => {
            let mut d = starling_proto::Disconnect::new(if version == ProtocolVersion::V5 {
                ReasonCode::DisconnectWithWill
            } else {
                ReasonCode::Success
            });
            d.properties = disconnect_props;
            let _ = s.client.send(&Packet::Disconnect(d)).await;
            0
        }
        Ok(Stop::TimedOut) => {
            let _ = s.client.disconnect(disconnect_props).await;
            error(conn.quiet, "Timed out");
            EXIT_TIMEOUT
        }
        Err(e) => {
            error(conn.quiet, &e);
            exit_for(&e)
        }
    }
}

struct Session<'a> {
    client: Client,
    args: &'a SubArgs,
    plan: Plan,
    received: u32,
    rng: Rng,
}

impl Session<'_> {
    async fn run(
        &mut self,
        deadline: Option<Instant>,
        sub_props: Properties,
        unsub_props: Properties,
    ) -> Result<Stop, ClientError> {
        let sub_id = self.client.next_packet_id();
        let subscribe = Subscribe {
            packet_id: sub_id,
            filters: self.plan.subscribe.clone(),
            properties: sub_props,
        };
        self.client.send(&Packet::Subscribe(subscribe)).await?;
        if !self.plan.unsubscribe.is_empty() {
            let unsub = Unsubscribe {
                packet_id: self.client.next_packet_id(),
                filters: self.plan.unsubscribe.clone(),
                properties: unsub_props,
            };
            self.client.send(&Packet::Unsubscribe(unsub)).await?;
        }
        loop {
            match self.client.next_event(deadline).await? {
                Event::Timeout => return Ok(Stop::TimedOut),
                Event::Packet(Packet::SubAck(ack)) if ack.packet_id == sub_id => {
                    if self.args.conn.debug && !self.args.conn.quiet {
                        let codes: Vec<String> =
                            ack.reasons.iter().map(|r| r.as_u8().to_string()).collect();
                        println!("Subscribed (mid: {sub_id}): {}", codes.join(", "));
                    }
                    if ack.reasons.iter().all(|r| r.as_u8() >= 0x80) {
                        error(
                            self.args.conn.quiet,
                            "All subscription requests were denied.",
                        );
                        return Ok(Stop::Done);
                    }
                    if self.args.exit_after_sub {
                        return Ok(Stop::Done);
                    }
                }
                Event::Packet(Packet::Disconnect(d)) => {
                    error(
                        self.args.conn.quiet,
                        format!(
                            "Disconnected by the broker: {}",
                            super::strings::reason(d.reason)
                        ),
                    );
                    return Err(ClientError::Closed);
                }
                Event::Message(msg) => {
                    if let Some(stop) = self.message(msg).await? {
                        return Ok(stop);
                    }
                }
                Event::Acked(..) | Event::Packet(_) | Event::Received(..) | Event::Released(_) => {}
            }
        }
    }

    /// Handles a message; `Some` when the command should stop.
    async fn message(&mut self, msg: Publish) -> Result<Option<Stop>, ClientError> {
        let args = self.args;
        if args.retained_only && !msg.retain {
            return Ok(Some(Stop::Done));
        }
        if msg.retain && args.no_retain {
            return Ok(None);
        }
        if self.plan.filter_out.iter().any(|f| f.matches(&msg.topic)) {
            return Ok(None);
        }
        if args.remove_retained && msg.retain {
            let clear = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: TopicName::new(
                    Bytes::copy_from_slice(msg.topic.as_str().as_bytes()),
                    usize::MAX,
                )
                .unwrap_or_else(|_| msg.topic.clone()),
                packet_id: self.client.next_packet_id(),
                properties: Properties::default(),
                payload: Bytes::new(),
            };
            self.client.send(&Packet::Publish(clear)).await?;
        }
        if let Some(keep) = self.plan.random
            && self.rng.below(10_000) >= keep
        {
            return Ok(None);
        }
        if !self.plan.printer.print(&msg) {
            return Ok(Some(Stop::Done));
        }
        if let Some(count) = args.count {
            self.received += 1;
            if self.received >= count {
                return Ok(Some(Stop::Done));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(disable_help_flag = true)]
    struct T {
        #[command(flatten)]
        a: SubArgs,
    }

    fn args(list: &[&str]) -> SubArgs {
        T::try_parse_from(std::iter::once("sub").chain(list.iter().copied()))
            .map(|t| t.a)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn usage_errors_use_mosquittos_words() {
        let e = prepare(&args(&[])).err().unwrap();
        assert_eq!(e.0, "Error: You must specify a topic to subscribe to.");
        let e = prepare(&args(&["-t", "a", "-R", "--retained-only"]))
            .err()
            .unwrap();
        assert_eq!(
            e.0,
            "Error: Combining '-R' and '--retained-only' makes no sense."
        );
        let e = prepare(&args(&["-t", "a/#/b"])).err().unwrap();
        assert_eq!(
            e.0,
            "Error: Invalid subscription topic 'a/#/b', are all '+' and '#' wildcards correct?"
        );
        let e = prepare(&args(&["-t", "a", "-F", "%c"])).err().unwrap();
        assert_eq!(e.0, "Error: Invalid format specifier 'c'.");
        assert!(prepare(&args(&["-t", "a", "--nl"])).is_err());
        let plan = prepare(&args(&["-t", "a", "-t", "b/+", "-T", "b/x", "-q", "1"])).unwrap();
        assert_eq!(plan.subscribe.len(), 2);
        assert_eq!(plan.filter_out.len(), 1);
    }
}
