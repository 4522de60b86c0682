//! `starling rr`: request/response like mosquitto_rr. Connects with MQTT 5, subscribes to the
//! response topic (`-e`), publishes the request to `-t` with that Response Topic (and any `-D
//! publish` properties, such as correlation data), prints the first response as `sub` would,
//! and exits 0; at the `-W` timeout it prints "Timed out" and exits 27.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use starling_proto::{
    Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions, TopicFilter,
    TopicName,
};
use tokio::time::Instant;

use super::client::{Client, ClientError, Event};
use super::opts::{ConnectOpts, UsageError};
use super::subc::Printer;
use super::{EXIT_TIMEOUT, error, exit_for, interrupted, open_session, strings};

/// `starling rr` arguments.
#[derive(Debug, Clone, Args)]
pub struct RrArgs {
    #[command(flatten)]
    conn: ConnectOpts,
    /// Topic to publish the request to.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// Response topic: subscribed to, and sent as the request's Response Topic.
    #[arg(short = 'e', value_name = "TOPIC")]
    response_topic: Option<String>,
    /// Request payload.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send the contents of a file as the request.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Send an empty request.
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// QoS of the request and of the response subscription.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the request.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Seconds to wait for the response (exit 27 when it does not come).
    #[arg(short = 'W', value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    timeout: Option<u32>,
    /// Print the topic before the payload.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Do not add a newline after the payload.
    #[arg(short = 'N')]
    no_eol: bool,
    /// Output format (as for `sub -F`).
    #[arg(short = 'F', value_name = "FORMAT")]
    format: Option<String>,
    /// Pretty-print the JSON of %j and %J.
    #[arg(long = "pretty")]
    pretty: bool,
}

struct Plan {
    topic: TopicName,
    response: TopicFilter,
    payload: Bytes,
    printer: Printer,
}

fn prepare(args: &RrArgs) -> Result<Plan, UsageError> {
    if args.conn.version.is_some_and(|v| v != ProtocolVersion::V5) {
        return Err(UsageError(
            "Error: starling rr only supports MQTT v5.".into(),
        ));
    }
    args.conn.check(ProtocolVersion::V5)?;
    let ep = args.conn.endpoint()?;
    let modes = [args.message.is_some(), args.file.is_some(), args.null];
    if modes.iter().filter(|m| **m).count() > 1 {
        return Err(UsageError(
            "Error: Only one type of message can be sent at once.".into(),
        ));
    }
    let topic = args.topic.clone().or(ep.url_topic);
    let (Some(topic), Some(response), true) =
        (topic, args.response_topic.clone(), modes.contains(&true))
    else {
        return Err(UsageError(
            "Error: All of topic, message, and response topic must be supplied.".into(),
        ));
    };
    let topic_name = TopicName::new(Bytes::from(topic.clone()), usize::MAX).map_err(|_| {
        UsageError(format!(
            "Error: Invalid publish topic '{topic}', does it contain '+' or '#'?"
        ))
    })?;
    let response_filter = TopicName::new(Bytes::from(response.clone()), usize::MAX)
        .ok()
        .and_then(|_| TopicFilter::new(Bytes::from(response.clone()), usize::MAX).ok())
        .ok_or_else(|| {
            UsageError(format!(
                "Error: Invalid response topic '{response}', does it contain '+' or '#'?"
            ))
        })?;
    let payload = match (&args.message, &args.file) {
        (Some(m), _) => Bytes::from(m.clone()),
        (None, Some(path)) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|_| UsageError(format!("Error loading input file \"{}\".", path.display())))?,
        (None, None) => Bytes::new(),
    };
    Ok(Plan {
        topic: topic_name,
        response: response_filter,
        payload,
        printer: Printer::new(
            args.format.as_deref(),
            args.verbose,
            args.no_eol,
            args.pretty,
        )?,
    })
}

/// Runs `starling rr`; returns the exit status.
pub fn run(args: RrArgs) -> i32 {
    match prepare(&args) {
        Ok(plan) => super::block_on(request(args, plan)).unwrap_or_else(|e| {
            eprintln!("Error: {e}");
            1
        }),
        Err(e) => {
            eprintln!("{e}\n\nUse 'starling rr --help' to see usage.");
            1
        }
    }
}

enum Outcome {
    Answered,
    TimedOut,
    Signal,
}

async fn request(args: RrArgs, plan: Plan) -> i32 {
    let conn = &args.conn;
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s.into()));
    let (mut client, props) = match open_session(conn, ProtocolVersion::V5).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut publish_props = props.publish.clone();
    publish_props.response_topic = Some(plan.response.as_str().to_string());
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce);
    let outcome = tokio::select! {
        r = exchange(&mut client, &plan, qos, args.retain, props.subscribe.clone().into(), publish_props.into(), deadline) => r,
        () = interrupted() => Ok(Outcome::Signal),
    };
    let disconnect: Properties = props.disconnect.into();
    match outcome {
        Ok(Outcome::Answered | Outcome::Signal) => {
            let _ = client.disconnect(disconnect).await;
            0
        }
        Ok(Outcome::TimedOut) => {
            let _ = client.disconnect(disconnect).await;
            error(conn.quiet, "Timed out");
            EXIT_TIMEOUT
        }
        Err(e) => {
            error(conn.quiet, &e);
            exit_for(&e)
        }
    }
}

async fn exchange(
    client: &mut Client,
    plan: &Plan,
    qos: QoS,
    retain: bool,
    sub_props: Properties,
    publish_props: Properties,
    deadline: Option<Instant>,
) -> Result<Outcome, ClientError> {
    let sub_id = client.next_packet_id();
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    client
        .send(&Packet::Subscribe(Subscribe {
            packet_id: sub_id,
            filters: vec![(plan.response.clone(), options)],
            properties: sub_props,
        }))
        .await?;
    loop {
        match client.next_event(deadline).await? {
            Event::Timeout => return Ok(Outcome::TimedOut),
            Event::Packet(Packet::SubAck(ack)) if ack.packet_id == sub_id => {
                if let Some(r) = ack.reasons.first().filter(|r| r.as_u8() >= 0x80) {
                    return Err(ClientError::Protocol(strings::reason(*r).to_string()));
                }
                // Subscribed: now the request, so the response cannot come before it.
                let packet_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    client.next_packet_id()
                };
                client
                    .send(&Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain,
                        topic: plan.topic.clone(),
                        packet_id,
                        properties: publish_props.clone(),
                        payload: plan.payload.clone(),
                    }))
                    .await?;
            }
            Event::Message(msg) if plan.response.matches(&msg.topic) => {
                plan.printer.print(&msg);
                return Ok(Outcome::Answered);
            }
            Event::Packet(Packet::Disconnect(d)) => {
                return Err(ClientError::Protocol(format!(
                    "disconnected by the broker: {}",
                    strings::reason(d.reason)
                )));
            }
            Event::Message(_)
            | Event::Acked(..)
            | Event::Packet(_)
            | Event::Received(..)
            | Event::Released(_) => {}
        }
    }
}
