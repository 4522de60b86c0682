//! The per-connection protocol machine: everything one client connection does, without the
//! socket. The network layer feeds it decoded packets (`handle_packet`), decode errors
//! (`handle_decode_error`) and the time (`check_timeouts`), calls `pump` when the session's
//! waker fires, and writes out whatever `output` holds.
//!
//! It owns the connection-scoped state (protocol level, keep-alive, topic aliases, the
//! client's limits) and drives the session, the router and the retained store through the
//! shared [`Broker`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_proto::{
    ConnAck, Connect, DecodeError, DecodeLimits, Disconnect, Packet, Properties, ProtocolVersion,
    PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, TopicName, UnsubAck, Unsubscribe,
};
use tracing::{debug, info, warn};

use crate::broker::{Broker, ConnectRequest, Ending};
use crate::message::{Delivery, Message};
use crate::persist::TicketStatus;
use crate::retain::RetainOutcome;
use crate::session::{Inflight, PendingWill, Phase, Session, Subscription};
use crate::wake::Waker;
use starling_store::{MessagePhase, Op};

mod access;
mod connect;
mod deliver;
mod enhanced;
mod qos;
mod subscribe;
pub use access::{ListenerAccess, PeerInfo};
pub use enhanced::MAX_AUTH_STEPS;

/// Stop moving queued messages into the output once it holds this many bytes; the network
/// layer writes it out and pumps again. Bounds the per-connection write buffer.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Why a connection must close. Any CONNACK or DISCONNECT owed to the client is already in the
/// output when this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// The reason (for logs; sent to v5 clients where the spec says so).
    pub reason: ReasonCode,
    /// Human-readable detail for the log line.
    pub detail: String,
}

impl Closing {
    fn new(reason: ReasonCode, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// State of an accepted connection.
#[derive(Debug)]
struct Active {
    session: Arc<Session>,
    client_id: Arc<str>,
    /// Authenticated username (`None`: anonymous), for authorization.
    username: Option<Arc<str>>,
    version: ProtocolVersion,
    /// Keep-alive enforced: 1.5x the negotiated value; `None` when disabled.
    keep_alive: Option<Duration>,
    /// Most QoS 1/2 messages out to the client at once.
    window: usize,
    /// The client's Maximum Packet Size.
    max_packet_out: usize,
    /// Topic aliases both ways, allocated when the first one is used (most clients use none,
    /// and every idle connection holds its `Active`).
    aliases: Option<Box<Aliases>>,
    /// The client's Topic Alias Maximum (0: no outbound aliases).
    alias_out_max: u16,
    /// Request Problem Information: reason strings may be sent on acks (v5; default true).
    problem_info: bool,
    /// CONNECT's Session Expiry Interval was 0 (DISCONNECT may then not set one).
    connect_expiry_zero: bool,
    /// What to do with the will when the connection ends.
    ending: Ending,
    /// The enhanced authentication method of this connection (re-authentication), if any.
    enhanced: Option<Box<enhanced::EnhancedSession>>,
}

/// A connection's topic aliases.
#[derive(Debug, Default)]
struct Aliases {
    /// Inbound; bounded by the advertised Topic Alias Maximum.
    inbound: HashMap<u16, TopicName>,
    /// Outbound ones the broker assigned; at most the client's Topic Alias Maximum.
    outbound: HashMap<TopicName, u16>,
}

/// What CONNECT negotiated before authentication.
#[derive(Debug)]
struct Negotiated {
    client_id: Arc<str>,
    /// Assigned Client Identifier to send in CONNACK (v5, empty client id).
    assigned: Option<String>,
    keep_alive: u16,
    /// Server Keep Alive to send in CONNACK.
    server_keep_alive: Option<u16>,
}

#[derive(Debug)]
enum Stage {
    AwaitingConnect,
    /// CONNECT named an enhanced authentication method: AUTH packets until CONNACK.
    Authenticating(Box<enhanced::Pending>),
    Active(Box<Active>),
    Closed,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    broker: Arc<Broker>,
    id: u64,
    /// The client's address, when known (logs, authenticators).
    peer: Option<SocketAddr>,
    waker: Waker,
    stage: Stage,
    out: BytesMut,
    opened_at: Instant,
    last_packet: Instant,
    shutting_down: bool,
    /// Inbound publish rate limit (`max_publish_rate`), if any; boxed, as most have none.
    rate: Option<Box<TokenBucket>>,
    /// Acknowledgements waiting for the store (durability `sync`); allocated on first use, so
    /// idle connections and the other modes do not carry it.
    held: Option<Box<HeldAcks>>,
    /// The listener's authentication and authorization; `None`: everything allowed.
    access: Option<access::ConnAccess>,
}

/// A peer address for logs: the address, or `unknown`.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(Option<SocketAddr>);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// What a connection waits for from the store, allocated when it first journals or holds
/// something: acknowledgements waiting for the commit of what they acknowledge, in order, with
/// their journal tickets (bounded: at `HELD_LIMIT` the network layer stops reading from the
/// client until commits catch up), and its last journaled op (what a pause at the journal's
/// bound waits for).
#[derive(Debug)]
struct HeldAcks {
    queue: VecDeque<(u64, Packet)>,
    /// The journal's memo of the commit this connection waits for (`Journal::notify_when_done`).
    commit_generation: u64,
    /// Ticket of the last op this connection's work journaled (0: none).
    last_journaled: u64,
    /// The journal's memo for a pause at its bound (kept apart from `commit_generation` so
    /// each pause is counted even when held acknowledgements wait on the same commit).
    pause_generation: u64,
}

/// Held acknowledgements at which reading from the client pauses.
pub const HELD_LIMIT: usize = 1024;

/// A token bucket: `rate` tokens per second, holding at most one second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
    }
}

impl Connection {
    /// A new connection from `peer`, awaiting CONNECT.
    pub fn new(broker: Arc<Broker>, waker: Waker, peer: Option<SocketAddr>, now: Instant) -> Self {
        let id = broker.connection_id();
        Self {
            broker,
            id,
            peer,
            waker,
            stage: Stage::AwaitingConnect,
            out: BytesMut::new(),
            opened_at: now,
            last_packet: now,
            shutting_down: false,
            rate: None,
            held: None,
            access: None,
        }
        .with_rate_limit(now)
    }

    /// The peer address, for log lines.
    fn peer(&self) -> PeerAddr {
        PeerAddr(self.peer)
    }

    fn with_rate_limit(mut self, now: Instant) -> Self {
        let rate = self.broker.limits.max_publish_rate;
        if rate > 0 {
            self.rate = Some(Box::new(TokenBucket {
                rate: f64::from(rate),
                tokens: f64::from(rate),
                updated: now,
            }));
        }
        self
    }

    /// If the client has used up its publish rate, the time until it may publish again: the
    /// network layer stops reading from the socket until then (the client is slowed down by
    /// TCP flow control, not disconnected). Counted in `rate_limited`.
    pub fn throttled_until(&mut self, now: Instant) -> Option<Instant> {
        let bucket = self.rate.as_mut()?;
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            return None;
        }
        self.broker.metrics.rate_limited.inc();
        let wait = (1.0 - bucket.tokens) / bucket.rate;
        Some(now + Duration::from_secs_f64(wait))
    }

    /// The protocol level to decode incoming packets with.
    pub fn version(&self) -> ProtocolVersion {
        match &self.stage {
            Stage::Active(a) => a.version,
            Stage::Authenticating(_) => ProtocolVersion::V5,
            _ => ProtocolVersion::V311,
        }
    }

    /// Limits for decoding the next packet: tighter before CONNECT.
    pub fn decode_limits(&self) -> DecodeLimits {
        let l = &self.broker.limits;
        DecodeLimits {
            max_packet_size: match self.stage {
                Stage::Active(_) => l.max_packet_size,
                _ => l.max_connect_packet_size,
            },
            max_topic_levels: l.max_topic_levels,
            max_user_properties: l.max_user_properties,
        }
    }

    /// Encoded bytes waiting to be written. The caller writes and clears them.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// True once CONNECT was accepted.
    pub fn is_active(&self) -> bool {
        matches!(self.stage, Stage::Active(_))
    }

    /// When `check_timeouts` must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.stage {
            Stage::AwaitingConnect | Stage::Authenticating(_) => {
                Some(self.opened_at + Duration::from_secs(self.broker.limits.connect_timeout_secs))
            }
            Stage::Active(a) => {
                let keep_alive = a.keep_alive.map(|k| self.last_packet + k);
                match (keep_alive, enhanced::reauth_deadline(a)) {
                    (Some(k), Some(r)) => Some(k.min(r)),
                    (k, r) => k.or(r),
                }
            }
            Stage::Closed => None,
        }
    }

    /// Enforces the CONNECT timeout and keep-alive (1.5x, spec 3.1.2.10).
    pub fn check_timeouts(&mut self, now: Instant) -> Result<(), Closing> {
        match self.deadline() {
            Some(d) if now >= d => {}
            _ => return Ok(()),
        }
        self.check_reauth_timeout(now)?;
        if self.is_active() && self.reading_held_back() {
            // The broker is not reading this client (the store is behind, or too many
            // acknowledgements wait), so its PINGREQs sit unread: not the client's silence.
            self.last_packet = now;
            return Ok(());
        }
        if matches!(self.stage, Stage::Authenticating(_)) {
            return Err(Closing::new(
                ReasonCode::MaximumConnectTime,
                "authentication not completed in time",
            ));
        }
        if self.is_active() {
            self.send_disconnect(ReasonCode::KeepAliveTimeout, "keep-alive timeout");
            Err(Closing::new(
                ReasonCode::KeepAliveTimeout,
                "keep-alive timeout",
            ))
        } else {
            Err(Closing::new(
                ReasonCode::MaximumConnectTime,
                "no CONNECT in time",
            ))
        }
    }

    /// Handles bytes that could not be decoded: answers as the spec says and closes.
    pub fn handle_decode_error(&mut self, err: &DecodeError) -> Closing {
        self.broker.metrics.protocol_errors.inc();
        let reason = err.reason_code();
        match &self.stage {
            Stage::AwaitingConnect => {
                if let Some(code) = err.v3_connack_code() {
                    // Unsupported protocol level: a 3.1.1-format CONNACK 0x01 (what every
                    // client version can read), then close.
                    let reason = ReasonCode::from_v3_connack(code).unwrap_or(reason);
                    self.encode(&Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason,
                        properties: Properties::default(),
                    }));
                }
            }
            Stage::Authenticating(_) => {
                let _ = self.refuse_connect(ProtocolVersion::V5, reason, &err.to_string());
            }
            Stage::Active(_) => self.send_disconnect(reason, &err.to_string()),
            Stage::Closed => {}
        }
        Closing::new(reason, err.to_string())
    }

    /// Handles one packet from the client.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Result<(), Closing> {
        self.last_packet = now;
        self.broker.metrics.messages_received.inc();
        if let Stage::Authenticating(_) = self.stage {
            return self.on_packet_while_authenticating(packet, now);
        }
        if let Stage::AwaitingConnect = self.stage {
            return match packet {
                Packet::Connect(c) => self.on_connect(c, now),
                other => {
                    self.broker.metrics.protocol_errors.inc();
                    Err(Closing::new(
                        ReasonCode::ProtocolError,
                        format!("first packet was {:?}, not CONNECT", other.packet_type()),
                    ))
                }
            };
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p, now),
            Packet::PubAck(a) => {
                self.on_puback(a.packet_id);
                Ok(())
            }
            Packet::PubRec(a) => {
                self.on_pubrec(a);
                Ok(())
            }
            Packet::PubRel(a) => {
                self.on_pubrel(a.packet_id);
                Ok(())
            }
            Packet::PubComp(a) => {
                self.on_pubcomp(a.packet_id);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s, now),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.encode(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => self.protocol_error("second CONNECT"),
            Packet::Auth(a) => self.on_reauth(a, now),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_error("client sent a server-only packet")
            }
        }
    }

    fn protocol_error(&mut self, detail: &str) -> Result<(), Closing> {
        self.broker.metrics.protocol_errors.inc();
        self.send_disconnect(ReasonCode::ProtocolError, detail);
        Err(Closing::new(ReasonCode::ProtocolError, detail))
    }

    fn fail(&mut self, reason: ReasonCode, detail: &str) -> Result<(), Closing> {
        self.send_disconnect(reason, detail);
        Err(Closing::new(reason, detail))
    }

    fn encode(&mut self, packet: &Packet) {
        let version = self.version_for_output(packet);
        match starling_proto::encode(packet, version, &mut self.out) {
            Ok(()) => self.broker.metrics.messages_sent.inc(),
            Err(e) => {
                warn!(peer = %self.peer(), error = %e, "could not encode {:?}", packet.packet_type())
            }
        }
    }

    fn version_for_output(&self, packet: &Packet) -> ProtocolVersion {
        match (&self.stage, packet) {
            (Stage::Active(a), _) => a.version,
            (Stage::Authenticating(_), _) => ProtocolVersion::V5,
            (_, Packet::ConnAck(_)) => ProtocolVersion::V311,
            _ => ProtocolVersion::V311,
        }
    }

    /// Sends DISCONNECT with `reason` to a v5 client (3.x has no server DISCONNECT).
    fn send_disconnect(&mut self, reason: ReasonCode, detail: &str) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        if !a.version.is_v5() {
            return;
        }
        // A Reason String is allowed on DISCONNECT whatever Request Problem Information says,
        // but never if it would make the packet larger than the client accepts.
        let mut d = Disconnect::new(reason);
        d.properties.reason_string = Some(detail.to_string());
        let fits = starling_proto::encoded_len(&Packet::Disconnect(d.clone()), a.version)
            .is_ok_and(|len| len <= a.max_packet_out);
        if !fits {
            d.properties.reason_string = None;
        }
        self.encode(&Packet::Disconnect(d));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Closing> {
        let max_expiry = self.broker.limits.max_session_expiry_secs;
        let Stage::Active(a) = &mut self.stage else {
            return Ok(());
        };
        if let Some(expiry) = d.properties.session_expiry_interval {
            if a.connect_expiry_zero && expiry != 0 {
                return self.protocol_error("session expiry set on DISCONNECT after 0 in CONNECT");
            }
            a.session.lock().expiry_secs = expiry.min(max_expiry);
        }
        a.ending = if d.reason == ReasonCode::DisconnectWithWill {
            Ending::WithWill
        } else {
            Ending::Normal
        };
        Err(Closing::new(d.reason, "client disconnected"))
    }

    /// The broker is shutting down: tells a v5 client (DISCONNECT 0x8B) and closes.
    pub fn shutdown(&mut self) -> Closing {
        self.shutting_down = true;
        self.send_disconnect(ReasonCode::ServerShuttingDown, "server shutting down");
        Closing::new(ReasonCode::ServerShuttingDown, "server shutting down")
    }

    /// The connection is gone (socket closed, error, or a `Closing` was returned): detaches
    /// the session, handles the will, logs the line. Call exactly once.
    pub fn close(&mut self, closing: Option<&Closing>, now: Instant) {
        let stage = std::mem::replace(&mut self.stage, Stage::Closed);
        let Stage::Active(a) = stage else {
            if let Some(c) = closing {
                debug!(peer = %self.peer(), reason = %c.reason, "connection closed before CONNECT: {}", c.detail);
            }
            return;
        };
        let ending = if self.shutting_down {
            Ending::Shutdown
        } else {
            a.ending
        };
        self.broker.disconnect(&a.session, self.id, ending, now);
        self.broker.metrics.clients_connected.dec();
        let (reason, detail) = match closing {
            Some(c) => (c.reason, c.detail.as_str()),
            None => (ReasonCode::UnspecifiedError, "connection lost"),
        };
        info!(
            client_id = %a.client_id,
            peer = %self.peer(),
            protocol = a.version.level(),
            %reason,
            "client disconnected: {detail}"
        );
    }
}
