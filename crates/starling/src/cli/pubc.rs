//! `starling pub`: mosquitto_pub's flags and behaviour. One message from `-m`, `-f`, `-s` or
//! `-n` (repeated with `--repeat`/`--repeat-delay`), or one message per line of stdin with `-l`;
//! at QoS 1 and 2 every message is acknowledged before the command disconnects and exits 0.

use std::collections::HashSet;
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use starling_proto::{Packet, Properties, ProtocolVersion, Publish, QoS, TopicName};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::{Client, ClientError, Event};
use super::opts::{ConnectOpts, UsageError};
use super::{error, exit_for, open_session, strings};

/// Largest payload MQTT can carry.
const MAX_PAYLOAD: usize = 268_435_455;
/// QoS 1 and 2 messages in flight at once (mosquitto's default `max_inflight_messages`),
/// lowered to the broker's Receive Maximum when it gives one.
const MAX_INFLIGHT: usize = 20;
/// Lines of stdin read ahead of the connection with `-l`; when full, reading waits.
const LINE_QUEUE: usize = 64;

/// `starling pub` arguments.
#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    #[command(flatten)]
    conn: ConnectOpts,
    /// Topic to publish to.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// Message payload.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Read the message from stdin, sending the whole input as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Read messages from stdin, sending one message per line.
    #[arg(short = 'l', long = "stdin-line")]
    stdin_line: bool,
    /// Send a zero-length message.
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// QoS of the message.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Publish the message this many times (-m, -f, -s, -n).
    #[arg(long = "repeat", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Seconds between repeated publishes.
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    repeat_delay: f64,
}

enum Source {
    Once(Bytes),
    Lines,
}

/// Runs `starling pub`; returns the exit status.
pub fn run(args: PubArgs) -> i32 {
    match prepare(&args) {
        Ok((source, topic)) => super::block_on(publish(args, source, topic)).unwrap_or_else(|e| {
            eprintln!("Error: {e}");
            1
        }),
        Err(e) => {
            eprintln!("{e}\n\nUse 'starling pub --help' to see usage.");
            1
        }
    }
}

fn prepare(args: &PubArgs) -> Result<(Source, TopicName), UsageError> {
    let version = args.conn.version_or(ProtocolVersion::V311);
    args.conn.check(version)?;
    let ep = args.conn.endpoint()?;
    let modes = [
        args.message.is_some(),
        args.file.is_some(),
        args.stdin_file,
        args.stdin_line,
        args.null,
    ];
    if modes.iter().filter(|m| **m).count() > 1 {
        return Err(UsageError(
            "Error: Only one type of message can be sent at once.".into(),
        ));
    }
    let topic = args.topic.clone().or(ep.url_topic.clone());
    let (Some(topic), true) = (topic, modes.contains(&true)) else {
        return Err(UsageError(
            "Error: Both topic and message must be supplied.".into(),
        ));
    };
    let topic_name = TopicName::new(Bytes::from(topic.clone()), usize::MAX).map_err(|_| {
        UsageError(format!(
            "Error: Invalid publish topic '{topic}', does it contain '+' or '#'?"
        ))
    })?;
    if !args.repeat_delay.is_finite() || args.repeat_delay < 0.0 {
        return Err(UsageError("Error: Invalid repeat delay.".into()));
    }
    let source = if let Some(m) = &args.message {
        Source::Once(Bytes::from(m.clone()))
    } else if let Some(path) = &args.file {
        Source::Once(
            read_bounded(std::fs::File::open(path).map_err(|_| {
                UsageError(format!("Error loading input file \"{}\".", path.display()))
            })?)
            .map_err(|_| UsageError(format!("Error loading input file \"{}\".", path.display())))?,
        )
    } else if args.stdin_file {
        Source::Once(
            read_bounded(std::io::stdin().lock())
                .map_err(|_| UsageError("Error loading input from stdin.".into()))?,
        )
    } else if args.stdin_line {
        Source::Lines
    } else {
        Source::Once(Bytes::new())
    };
    Ok((source, topic_name))
}

/// Reads all of `r`, refusing more than MQTT can carry.
fn read_bounded(r: impl Read) -> std::io::Result<Bytes> {
    let mut buf = Vec::new();
    r.take(MAX_PAYLOAD as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > MAX_PAYLOAD {
        return Err(std::io::Error::other("too large"));
    }
    Ok(Bytes::from(buf))
}

struct Publisher {
    client: Client,
    qos: QoS,
    retain: bool,
    topic: TopicName,
    props: Properties,
    inflight: HashSet<u16>,
    window: usize,
    quiet: bool,
}

impl Publisher {
    async fn publish(&mut self, payload: Bytes) -> Result<(), ClientError> {
        while self.inflight.len() >= self.window {
            self.wait_one(None).await?;
        }
        let packet_id = if self.qos == QoS::AtMostOnce {
            0
        } else {
            let id = self.client.next_packet_id();
            self.inflight.insert(id);
            id
        };
        let p = Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            packet_id,
            properties: self.props.clone(),
            payload,
        };
        self.client.send(&Packet::Publish(p)).await
    }

    /// Handles one event; `false` at the deadline.
    async fn wait_one(&mut self, deadline: Option<Instant>) -> Result<bool, ClientError> {
        match self.client.next_event(deadline).await? {
            Event::Acked(id, reason) => {
                self.inflight.remove(&id);
                if reason.as_u8() >= 0x80 {
                    error(
                        self.quiet,
                        format!("Warning: Publish {id} failed: {}.", strings::reason(reason)),
                    );
                }
            }
            Event::Packet(Packet::Disconnect(d)) => {
                error(
                    self.quiet,
                    format!("Disconnected by the broker: {}", strings::reason(d.reason)),
                );
                return Err(ClientError::Closed);
            }
            Event::Timeout => return Ok(false),
            Event::Message(_) | Event::Packet(_) | Event::Received(..) | Event::Released(_) => {}
        }
        Ok(true)
    }

    async fn drain(&mut self) -> Result<(), ClientError> {
        while !self.inflight.is_empty() {
            self.wait_one(None).await?;
        }
        Ok(())
    }
}

async fn publish(args: PubArgs, source: Source, topic: TopicName) -> i32 {
    let conn = &args.conn;
    let version = conn.version_or(ProtocolVersion::V311);
    let (client, props) = match open_session(conn, version).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut p = Publisher {
        client,
        qos: QoS::from_u8(args.qos).unwrap_or(QoS::AtMostOnce),
        retain: args.retain,
        topic,
        props: props.publish.clone().into(),
        inflight: HashSet::new(),
        window: MAX_INFLIGHT,
        quiet: conn.quiet,
    };
    let result = match source {
        Source::Once(payload) => repeat(&mut p, payload, args.repeat, args.repeat_delay).await,
        Source::Lines => lines(&mut p).await,
    };
    let result = match result {
        Ok(()) => p.drain().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            let _ = p.client.disconnect(props.disconnect.into()).await;
            0
        }
        Err(e) => {
            error(conn.quiet, &e);
            exit_for(&e)
        }
    }
}

async fn repeat(
    p: &mut Publisher,
    payload: Bytes,
    times: u32,
    delay: f64,
) -> Result<(), ClientError> {
    let delay = Duration::from_secs_f64(delay);
    for i in 0..times {
        if i > 0 && !delay.is_zero() {
            // Acknowledgements and pings are handled while waiting.
            let until = Instant::now() + delay;
            while p.wait_one(Some(until)).await? {}
        }
        p.publish(payload.clone()).await?;
    }
    Ok(())
}

async fn lines(p: &mut Publisher) -> Result<(), ClientError> {
    // A thread reads stdin (blocking) into a bounded queue; it waits when the queue is full.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(LINE_QUEUE);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => p.publish(Bytes::from(line)).await?,
                None => return Ok(()),
            },
            more = p.wait_one(None) => {
                more?;
            }
        }
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
        a: PubArgs,
    }

    fn args(list: &[&str]) -> PubArgs {
        T::try_parse_from(std::iter::once("pub").chain(list.iter().copied()))
            .map(|t| t.a)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn usage_errors_use_mosquittos_words() {
        let e = prepare(&args(&["-t", "a", "-m", "x", "-n"])).err().unwrap();
        assert_eq!(e.0, "Error: Only one type of message can be sent at once.");
        let e = prepare(&args(&["-t", "a"])).err().unwrap();
        assert_eq!(e.0, "Error: Both topic and message must be supplied.");
        let e = prepare(&args(&["-t", "a/#", "-m", "x"])).err().unwrap();
        assert_eq!(
            e.0,
            "Error: Invalid publish topic 'a/#', does it contain '+' or '#'?"
        );
        assert!(prepare(&args(&["-L", "mqtt://h/t", "-n"])).is_ok());
    }
}
