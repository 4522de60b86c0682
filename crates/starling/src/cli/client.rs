//! The MQTT client behind the client commands and the bridges, on the broker's own codec:
//! CONNECT and CONNACK, packet identifiers, keep-alive pings, both QoS flows (answering PUBACK,
//! PUBREC and PUBCOMP to the broker's PUBLISHes, delivering a QoS 2 message once; sending
//! PUBREL for its own), the broker's topic aliases, and `-d` debug lines. In manual mode
//! ([`Client::set_manual_flows`], a bridge's) none of those answers is automatic: every
//! PUBLISH, PUBREC and PUBREL is an [`Event`] and the caller answers it. One task drives it:
//! the caller asks for the next [`Event`] with a deadline; every await point is cancel-safe, so
//! the caller may race it against stdin or a signal.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use starling_proto::{
    ConnAck, Connect, DecodeError, DecodeLimits, Disconnect, EncodeError, Packet, Properties,
    ProtocolVersion, PubAck, Publish, QoS, ReasonCode, decode, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::net::{Stream, io_message};

/// Most packet bytes buffered from the broker before a whole packet must be there; larger
/// packets are refused by the decoder's `max_packet_size` first.
const MAX_PACKET: u32 = 268_435_460;

/// What went wrong on the connection; the message is what the command prints.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket error.
    #[error("Error: {}", io_message(.0))]
    Io(#[from] std::io::Error),
    /// The broker sent bytes that are not MQTT.
    #[error("Error: Protocol error when communicating with broker ({0}).")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (too large, an invalid field).
    #[error("Error: {0}")]
    Encode(#[from] EncodeError),
    /// The broker broke the protocol.
    #[error("Error: Protocol error when communicating with broker ({0}).")]
    Protocol(String),
    /// The connection closed.
    #[error("Error: The connection was lost.")]
    Closed,
    /// No PINGRESP within the keep-alive.
    #[error("Error: The connection was lost (keep-alive timeout).")]
    KeepAlive,
}

/// Something the caller should see.
#[derive(Debug)]
pub enum Event {
    /// A message from the broker (already acknowledged as its QoS requires, except in manual
    /// mode).
    Message(Publish),
    /// One of our QoS 1 or 2 publishes finished (PUBACK, PUBCOMP, or a PUBREC with an error
    /// reason outside manual mode), with the broker's reason code.
    Acked(u16, ReasonCode),
    /// Manual mode: PUBREC for one of our QoS 2 publishes, with its reason code; the caller
    /// sends the PUBREL (or, after an error reason, nothing).
    Received(u16, ReasonCode),
    /// Manual mode: PUBREL for a QoS 2 message from the broker; the caller sends the PUBCOMP.
    Released(u16),
    /// SUBACK, UNSUBACK, DISCONNECT or AUTH.
    Packet(Packet),
    /// The deadline passed.
    Timeout,
}

/// A connected client.
pub struct Client {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The protocol of the connection.
    pub version: ProtocolVersion,
    limits: DecodeLimits,
    next_id: u16,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    debug: bool,
    /// The client id (the assigned one if the broker chose it).
    pub client_id: String,
    aliases: HashMap<u16, starling_proto::TopicName>,
    /// QoS 2 messages received and not yet released.
    incoming_qos2: HashSet<u16>,
    /// The caller answers every step of the QoS 1 and 2 flows ([`Self::set_manual_flows`]).
    manual: bool,
    /// The broker's Receive Maximum: QoS 1 and 2 PUBLISHes it takes at once.
    pub receive_maximum: u16,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Sends CONNECT and waits (up to `timeout`) for CONNACK, which is returned whatever its
    /// reason code.
    pub async fn connect(
        stream: Box<dyn Stream>,
        connect: Connect,
        debug: bool,
        timeout: Duration,
    ) -> Result<(Self, ConnAck), ClientError> {
        Self::connect_as(stream, connect, debug, timeout, false).await
    }

    /// Like [`Self::connect`]; with `bridge`, an MQTT 3.x CONNECT announces a bridge the way
    /// mosquitto's `try_private` does (protocol level | 0x80), so that a broker that knows the
    /// convention does not send the bridge's own messages back to it.
    pub async fn connect_as(
        stream: Box<dyn Stream>,
        connect: Connect,
        debug: bool,
        timeout: Duration,
        bridge: bool,
    ) -> Result<(Self, ConnAck), ClientError> {
        let version = connect.protocol;
        let keep_alive =
            (connect.keep_alive > 0).then(|| Duration::from_secs(connect.keep_alive.into()));
        let client_id = connect.client_id.clone();
        let mut client = Self {
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            version,
            limits: DecodeLimits {
                max_packet_size: MAX_PACKET,
                allow_control_characters: true,
                ..DecodeLimits::default()
            },
            next_id: 0,
            keep_alive,
            last_sent: Instant::now(),
            ping_sent: None,
            debug,
            client_id,
            aliases: HashMap::new(),
            incoming_qos2: HashSet::new(),
            manual: false,
            receive_maximum: u16::MAX,
        };
        let mut connect = connect;
        connect.bridge = bridge && version != ProtocolVersion::V5;
        client.send(&Packet::Connect(Box::new(connect))).await?;
        let deadline = Instant::now() + timeout;
        let ack = match client.read_packet(Some(deadline)).await? {
            Some(Packet::ConnAck(ack)) => ack,
            Some(Packet::Auth(_)) => {
                return Err(ClientError::Protocol(
                    "enhanced authentication is not supported by this client".into(),
                ));
            }
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected CONNACK, got {:?}",
                    other.packet_type()
                )));
            }
            None => return Err(ClientError::Protocol("no CONNACK in time".into())),
        };
        if let Some(id) = &ack.properties.assigned_client_identifier {
            client.client_id = id.clone();
        }
        if let Some(max) = ack.properties.receive_maximum {
            client.receive_maximum = max;
        }
        if let Some(ka) = ack.properties.server_keep_alive {
            client.keep_alive = (ka > 0).then(|| Duration::from_secs(ka.into()));
        }
        Ok((client, ack))
    }

    /// Leaves every answer of the QoS flows to the caller: a QoS 1 or 2 PUBLISH from the broker
    /// is an [`Event::Message`] whatever its packet id (duplicates included), a PUBREC an
    /// [`Event::Received`] and a PUBREL an [`Event::Released`], and the caller sends the PUBACK,
    /// PUBREC, PUBREL and PUBCOMP ([`Self::send_all`]). A bridge chains the flows of its two
    /// connections this way, so that each step on one side follows the same step on the other.
    pub fn set_manual_flows(&mut self) {
        self.manual = true;
    }

    /// A fresh non-zero packet identifier.
    pub fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.queue(packet)?;
        self.flush_pending().await
    }

    /// Encodes packets and writes them together (one flush for all of them).
    pub async fn send_all(&mut self, packets: &[Packet]) -> Result<(), ClientError> {
        for p in packets {
            self.queue(p)?;
        }
        self.flush_pending().await
    }

    /// Encodes a packet into the write buffer, to go out with the next flush.
    fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        if self.debug {
            println!("Client {} sending {}", self.display_id(), describe(packet));
        }
        encode(packet, self.version, &mut self.wbuf)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Writes what is buffered. Cancel-safe: bytes are dropped from the buffer only once
    /// written, so a caller racing this against something else (stdin, a signal) loses
    /// nothing and the next call goes on where this one stopped.
    async fn flush_pending(&mut self) -> Result<(), ClientError> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write(&self.wbuf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.wbuf.advance(n);
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends DISCONNECT (with the reason and properties for MQTT 5) and closes the stream.
    pub async fn disconnect(&mut self, properties: Properties) -> Result<(), ClientError> {
        let mut d = Disconnect::new(ReasonCode::Success);
        d.properties = properties;
        self.send(&Packet::Disconnect(d)).await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    fn display_id(&self) -> &str {
        if self.client_id.is_empty() {
            "(null)"
        } else {
            &self.client_id
        }
    }

    /// The next event, or [`Event::Timeout`] at `deadline`.
    pub async fn next_event(&mut self, deadline: Option<Instant>) -> Result<Event, ClientError> {
        self.flush_pending().await?;
        loop {
            let Some(packet) = self.read_packet(deadline).await? else {
                return Ok(Event::Timeout);
            };
            match packet {
                Packet::Publish(p) => {
                    if let Some(p) = self.incoming(p)? {
                        return Ok(Event::Message(p));
                    }
                }
                Packet::PubAck(a) | Packet::PubComp(a) => {
                    return Ok(Event::Acked(a.packet_id, a.reason));
                }
                Packet::PubRec(a) if self.manual => {
                    return Ok(Event::Received(a.packet_id, a.reason));
                }
                Packet::PubRel(a) if self.manual => return Ok(Event::Released(a.packet_id)),
                Packet::PubRec(a) => {
                    if a.reason.as_u8() >= 0x80 {
                        return Ok(Event::Acked(a.packet_id, a.reason));
                    }
                    let rel = PubAck {
                        packet_id: a.packet_id,
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    };
                    self.queue(&Packet::PubRel(rel))?;
                }
                Packet::PubRel(a) => {
                    self.incoming_qos2.remove(&a.packet_id);
                    let comp = PubAck {
                        packet_id: a.packet_id,
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    };
                    self.queue(&Packet::PubComp(comp))?;
                }
                Packet::PingResp => {}
                other @ (Packet::SubAck(_)
                | Packet::UnsubAck(_)
                | Packet::Disconnect(_)
                | Packet::Auth(_)) => return Ok(Event::Packet(other)),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected {:?} from the broker",
                        other.packet_type()
                    )));
                }
            }
        }
    }

    /// Acknowledges a PUBLISH from the broker (except in manual mode); `None` for a QoS 2
    /// duplicate.
    fn incoming(&mut self, mut p: Publish) -> Result<Option<Publish>, ClientError> {
        if let Some(alias) = p.properties.topic_alias {
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => p.topic = topic.clone(),
                    None => {
                        return Err(ClientError::Protocol(format!(
                            "unknown topic alias {alias}"
                        )));
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if self.manual {
            return Ok(Some(p));
        }
        let ack = PubAck {
            packet_id: p.packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        };
        match p.qos {
            QoS::AtMostOnce => Ok(Some(p)),
            QoS::AtLeastOnce => {
                self.queue(&Packet::PubAck(ack))?;
                Ok(Some(p))
            }
            QoS::ExactlyOnce => {
                let new = self.incoming_qos2.insert(p.packet_id);
                self.queue(&Packet::PubRec(ack))?;
                Ok(new.then_some(p))
            }
        }
    }

    /// Reads one packet, pinging as the keep-alive requires; `None` at `deadline`.
    async fn read_packet(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Packet>, ClientError> {
        loop {
            if let Some(packet) = decode(&mut self.rbuf, self.version, &self.limits)? {
                if self.debug {
                    println!(
                        "Client {} received {}",
                        self.display_id(),
                        describe(&packet)
                    );
                }
                if matches!(packet, Packet::PingResp) {
                    self.ping_sent = None;
                }
                return Ok(Some(packet));
            }
            let now = Instant::now();
            if let (Some(sent), Some(ka)) = (self.ping_sent, self.keep_alive)
                && now >= sent + ka
            {
                return Err(ClientError::KeepAlive);
            }
            let ping_at = match (self.keep_alive, self.ping_sent) {
                (Some(ka), None) => Some(self.last_sent + ka),
                (Some(ka), Some(sent)) => Some(sent + ka),
                (None, _) => None,
            };
            if let Some(at) = ping_at
                && self.ping_sent.is_none()
                && now >= at
            {
                self.queue(&Packet::PingReq)?;
                self.ping_sent = Some(Instant::now());
                continue;
            }
            if let Some(d) = deadline
                && now >= d
            {
                return Ok(None);
            }
            let wake = match (ping_at, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Acknowledgements and pings queued above go out before waiting for more.
            self.flush_pending().await?;
            self.rbuf.reserve(8 * 1024);
            let read = self.stream.read_buf(&mut self.rbuf);
            let n = match wake {
                Some(at) => match tokio::time::timeout_at(at, read).await {
                    Ok(r) => r?,
                    Err(_) => continue,
                },
                None => read.await?,
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

/// One debug line for a packet, in the manner of mosquitto's `-d`.
fn describe(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!(
            "CONNECT (u{}, p{}, wr{}, wq{}, wf{}, c{}, k{})",
            u8::from(c.username.is_some()),
            u8::from(c.password.is_some()),
            u8::from(c.will.as_ref().is_some_and(|w| w.retain)),
            c.will.as_ref().map_or(0, |w| w.qos as u8),
            u8::from(c.will.is_some()),
            u8::from(c.clean_start),
            c.keep_alive
        ),
        Packet::ConnAck(a) => format!("CONNACK ({})", a.reason.as_u8()),
        Packet::Publish(p) => format!(
            "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            p.qos as u8,
            u8::from(p.retain),
            p.packet_id,
            p.topic.as_str(),
            p.payload.len()
        ),
        Packet::PubAck(a) => format!("PUBACK (m{}, rc{})", a.packet_id, a.reason.as_u8()),
        Packet::PubRec(a) => format!("PUBREC (m{}, rc{})", a.packet_id, a.reason.as_u8()),
        Packet::PubRel(a) => format!("PUBREL (m{})", a.packet_id),
        Packet::PubComp(a) => format!("PUBCOMP (m{})", a.packet_id),
        Packet::Subscribe(s) => {
            let mut line = format!("SUBSCRIBE (Mid: {})", s.packet_id);
            for (f, o) in &s.filters {
                line.push_str(&format!(" {} (QoS {})", f.as_str(), o.qos as u8));
            }
            line
        }
        Packet::SubAck(_) => "SUBACK".into(),
        Packet::Unsubscribe(u) => format!("UNSUBSCRIBE (Mid: {})", u.packet_id),
        Packet::UnsubAck(_) => "UNSUBACK".into(),
        Packet::PingReq => "PINGREQ".into(),
        Packet::PingResp => "PINGRESP".into(),
        Packet::Disconnect(d) => format!("DISCONNECT ({})", d.reason.as_u8()),
        Packet::Auth(_) => "AUTH".into(),
    }
}
