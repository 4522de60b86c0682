//! The per-connection protocol machine: everything one client connection does, without the
//! socket. The network layer feeds it decoded packets (`handle_packet`), decode errors
//! (`handle_decode_error`) and the time (`check_timeouts`), calls `pump` when the session's
//! waker fires, and writes out whatever `output` holds.
//!
//! It owns the connection-scoped state (protocol level, keep-alive, topic aliases, the
//! client's limits) and drives the session, the router and the retained store through the
//! shared [`Broker`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_proto::{
    ConnAck, Connect, DecodeError, DecodeLimits, Disconnect, Packet, Properties, ProtocolVersion,
    PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe, TopicName, UnsubAck, Unsubscribe,
};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::broker::{Broker, ConnectRequest, Ending};
use crate::message::{Delivery, Message};
use crate::persist::TicketStatus;
use crate::retain::RetainOutcome;
use crate::session::{Inflight, PendingWill, Phase, Session, Subscription};
use starling_store::{MessagePhase, Op};

mod access;
mod enhanced;
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
    /// Inbound topic aliases; bounded by the advertised Topic Alias Maximum.
    aliases_in: HashMap<u16, TopicName>,
    /// Outbound topic aliases the broker assigned; at most the client's Topic Alias Maximum.
    aliases_out: HashMap<TopicName, u16>,
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
    peer: String,
    waker: Arc<Notify>,
    stage: Stage,
    out: BytesMut,
    opened_at: Instant,
    last_packet: Instant,
    shutting_down: bool,
    /// Inbound publish rate limit (`max_publish_rate`), if any.
    rate: Option<TokenBucket>,
    /// Acknowledgements waiting for the store to commit what they acknowledge (durability
    /// `sync`), in order, with their journal tickets. Bounded: at `HELD_LIMIT` the network layer
    /// stops reading from the client until commits catch up.
    held: VecDeque<(u64, Packet)>,
    /// The listener's authentication and authorization; `None`: everything allowed.
    access: Option<Box<access::ConnAccess>>,
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
    pub fn new(broker: Arc<Broker>, peer: String, now: Instant) -> Self {
        let id = broker.connection_id();
        Self {
            broker,
            id,
            peer,
            waker: Arc::new(Notify::new()),
            stage: Stage::AwaitingConnect,
            out: BytesMut::new(),
            opened_at: now,
            last_packet: now,
            shutting_down: false,
            rate: None,
            held: VecDeque::new(),
            access: None,
        }
        .with_rate_limit(now)
    }

    fn with_rate_limit(mut self, now: Instant) -> Self {
        let rate = self.broker.limits.max_publish_rate;
        if rate > 0 {
            self.rate = Some(TokenBucket {
                rate: f64::from(rate),
                tokens: f64::from(rate),
                updated: now,
            });
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

    /// Fires when the session has messages to send or was taken over: call [`Self::pump`].
    pub fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
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
                warn!(peer = %self.peer, error = %e, "could not encode {:?}", packet.packet_type())
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

    fn refuse_connect(
        &mut self,
        version: ProtocolVersion,
        reason: ReasonCode,
        detail: &str,
    ) -> Result<(), Closing> {
        self.refuse_connect_with(version, reason, Properties::default(), detail)
    }

    fn refuse_connect_with(
        &mut self,
        version: ProtocolVersion,
        reason: ReasonCode,
        properties: Properties,
        detail: &str,
    ) -> Result<(), Closing> {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties,
        });
        if starling_proto::encode(&connack, version, &mut self.out).is_ok() {
            self.broker.metrics.messages_sent.inc();
        }
        info!(peer = %self.peer, protocol = version.level(), %reason, "connection refused: {detail}");
        Err(Closing::new(reason, detail))
    }

    fn on_connect(&mut self, c: Box<Connect>, now: Instant) -> Result<(), Closing> {
        let broker = self.broker.clone();
        let limits = &broker.limits;
        let version = c.protocol;
        let v5 = version.is_v5();
        let props = &c.properties;

        let mut assigned = None;
        let client_id: Arc<str> = if c.client_id.is_empty() {
            // v5 gets an assigned id; 3.1.1 only with clean session (MQTT-3.1.3-8); 3.1 never.
            let may_assign = v5 || (version == ProtocolVersion::V311 && c.clean_start);
            if !may_assign {
                return self.refuse_connect(
                    version,
                    ReasonCode::ClientIdentifierNotValid,
                    "empty client id",
                );
            }
            let id = broker.assign_client_id();
            if v5 {
                assigned = Some(id.clone());
            }
            id.into()
        } else {
            c.client_id.as_str().into()
        };

        let max_ka = limits.max_keep_alive;
        let mut server_keep_alive = None;
        let keep_alive = if v5 {
            if c.keep_alive == 0 || c.keep_alive > max_ka {
                server_keep_alive = Some(max_ka);
                max_ka
            } else {
                c.keep_alive
            }
        } else if c.keep_alive > max_ka {
            return self.refuse_connect(
                version,
                ReasonCode::ClientIdentifierNotValid,
                "keep-alive above max_keep_alive",
            );
        } else {
            c.keep_alive
        };

        if v5 && let Some(method) = &props.authentication_method {
            if self.enhanced_method(method).is_none() {
                return self.refuse_connect(
                    version,
                    ReasonCode::BadAuthenticationMethod,
                    "unknown authentication method",
                );
            }
        } else if props.authentication_data.is_some() {
            return self.refuse_connect(
                version,
                ReasonCode::ProtocolError,
                "authentication data without an authentication method",
            );
        }
        if let Some(reference) = &broker.features.server_reference {
            if !v5 {
                return self.refuse_connect(
                    version,
                    ReasonCode::ServerUnavailable,
                    "server redirection configured",
                );
            }
            let reason = if broker.features.server_moved {
                ReasonCode::ServerMoved
            } else {
                ReasonCode::UseAnotherServer
            };
            let mut props = Properties::default();
            props.server_reference = Some(reference.clone());
            return self.refuse_connect_with(version, reason, props, "redirected");
        }
        if broker.metrics.clients_connected.get() >= limits.max_connections as u64 {
            broker.metrics.connections_refused.inc();
            let reason = if v5 {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::ServerUnavailable
            };
            return self.refuse_connect(version, reason, "max_connections reached");
        }
        let negotiated = Negotiated {
            client_id,
            assigned,
            keep_alive,
            server_keep_alive,
        };
        if let Some(method) = props
            .authentication_method
            .as_deref()
            .and_then(|m| self.enhanced_method(m))
        {
            return self.begin_enhanced_auth(c, negotiated, method, now);
        }
        let username = self.authenticate(&c, &negotiated.client_id)?;
        self.accept_connect(c, negotiated, username, None, now)
    }

    /// Attaches the session of an authenticated CONNECT and sends CONNACK 0x00 (with the
    /// enhanced authentication method and its final data, if one was used). The CONNECT stays
    /// in the box it was decoded into: unboxing it would only copy it.
    #[allow(clippy::boxed_local)]
    fn accept_connect(
        &mut self,
        c: Box<Connect>,
        negotiated: Negotiated,
        username: Option<Arc<str>>,
        enhanced: Option<enhanced::Accepted>,
        now: Instant,
    ) -> Result<(), Closing> {
        let broker = self.broker.clone();
        let limits = &broker.limits;
        let version = c.protocol;
        let v5 = version.is_v5();
        let props = &c.properties;
        let Negotiated {
            client_id,
            assigned,
            keep_alive,
            server_keep_alive,
        } = negotiated;

        let requested_expiry = props.session_expiry_interval.unwrap_or(0);
        let expiry_secs = if v5 {
            requested_expiry.min(limits.max_session_expiry_secs)
        } else if c.clean_start {
            0
        } else if limits.v3_session_expiry_secs == 0 {
            u32::MAX
        } else {
            limits.v3_session_expiry_secs
        };
        let window = if v5 {
            usize::from(
                props
                    .receive_maximum
                    .unwrap_or(u16::MAX)
                    .min(limits.max_inflight),
            )
        } else {
            usize::from(limits.max_inflight)
        };
        let max_packet_out = props.maximum_packet_size.map_or(usize::MAX, |m| m as usize);
        let connect_expiry_zero = v5 && requested_expiry == 0;
        let will = c.will.clone().map(|w| PendingWill {
            delay_secs: w.properties.will_delay_interval.unwrap_or(0),
            will: w,
        });

        let attached = broker.connect(
            self.id,
            self.waker.clone(),
            ConnectRequest {
                client_id: client_id.clone(),
                clean_start: c.clean_start,
                protocol: version,
                expiry_secs,
                will,
            },
            now,
        );
        let m = &broker.metrics;
        m.clients_connected.inc();
        m.connections_total.inc();
        if m.clients_connected.get() > m.clients_maximum.get() {
            m.clients_maximum.set(m.clients_connected.get());
        }

        self.stage = Stage::Active(Box::new(Active {
            session: attached.session.clone(),
            client_id: client_id.clone(),
            username,
            version,
            keep_alive: (keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            window: window.max(1),
            max_packet_out,
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            alias_out_max: if v5 {
                props.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            connect_expiry_zero,
            problem_info: props.request_problem_information != Some(0),
            ending: Ending::Abnormal,
            enhanced: enhanced.as_ref().map(enhanced::Accepted::session),
        }));

        let mut ack_props = Properties::default();
        if v5 {
            ack_props.assigned_client_identifier = assigned;
            ack_props.server_keep_alive = server_keep_alive;
            if expiry_secs != requested_expiry {
                ack_props.session_expiry_interval = Some(expiry_secs);
            }
            ack_props.receive_maximum = Some(limits.receive_maximum);
            let prefix = &broker.features.response_information_prefix;
            if props.request_response_information == Some(1) && !prefix.is_empty() {
                ack_props.response_information = Some(format!("{prefix}{client_id}"));
            }
            ack_props.maximum_packet_size = Some(limits.max_packet_size);
            if limits.topic_alias_maximum > 0 {
                ack_props.topic_alias_maximum = Some(limits.topic_alias_maximum);
            }
            if let Some(e) = enhanced {
                e.add_to(&mut ack_props);
            }
        }
        self.encode(&Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            reason: ReasonCode::Success,
            properties: ack_props,
        }));
        info!(
            client_id = %client_id,
            peer = %self.peer,
            protocol = version.level(),
            clean_start = c.clean_start,
            keep_alive,
            session_present = attached.session_present,
            "client connected"
        );
        if attached.session_present {
            self.resend_inflight(now);
        }
        Ok(())
    }

    /// Resends, in order, every unacknowledged outbound message of a resumed session: PUBLISH
    /// with DUP for those awaiting PUBACK/PUBREC, PUBREL for those awaiting PUBCOMP.
    fn resend_inflight(&mut self, now: Instant) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let st = a.session.lock();
        for f in &st.inflight {
            match f.phase {
                Phase::Published => {
                    // Aliases belong to the old connection: the topic is sent in full.
                    let sent = encode_delivery(
                        &mut self.out,
                        a.version,
                        &f.delivery,
                        f.packet_id,
                        true,
                        None,
                        now,
                        usize::MAX,
                    );
                    if sent.is_ok_and(|s| s) {
                        self.broker.metrics.publish_sent.inc();
                    }
                }
                Phase::Released => {
                    let _ = starling_proto::encode(
                        &Packet::PubRel(PubAck::new(f.packet_id)),
                        a.version,
                        &mut self.out,
                    );
                }
            }
        }
    }

    fn on_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Closing> {
        let broker = self.broker.clone();
        broker.metrics.publish_received.inc();
        if let Some(bucket) = &mut self.rate {
            bucket.refill(now);
            bucket.tokens -= 1.0;
        }
        let Stage::Active(a) = &mut self.stage else {
            return Ok(());
        };
        if a.version.is_v5()
            && let Some(alias) = p.properties.topic_alias
        {
            if alias == 0 || alias > broker.limits.topic_alias_maximum {
                return self.fail(ReasonCode::TopicAliasInvalid, "topic alias out of range");
            }
            if p.topic.is_empty() {
                match a.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.protocol_error("unknown topic alias"),
                }
            } else {
                a.aliases_in.insert(alias, p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return self.protocol_error("empty topic");
        }
        let pid = p.packet_id;
        let qos = p.qos;
        let retain = p.retain;
        let mut ticket = None;
        if qos == QoS::ExactlyOnce {
            let mut st = a.session.lock();
            if st.awaiting_rel.contains_key(&pid) {
                // A resend of a message already received: acknowledge, do not route again.
                drop(st);
                self.send_ack(Packet::PubRec(PubAck::new(pid)), None);
                return Ok(());
            }
            if st.awaiting_rel.len() >= usize::from(broker.limits.receive_maximum) {
                drop(st);
                broker.metrics.receive_maximum_exceeded.inc();
                return self.fail(
                    ReasonCode::ReceiveMaximumExceeded,
                    "receive maximum exceeded",
                );
            }
            st.awaiting_rel.insert(pid, now);
            if let Some(p) = broker.persistence()
                && st.persisted
            {
                ticket = Some(
                    p.journal
                        .push(Op::PutAwaiting(a.client_id.to_string(), pid)),
                );
            }
        }
        let v5 = a.version.is_v5();
        let reason = if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            ReasonCode::PayloadFormatInvalid
        } else if p.topic.as_bytes().starts_with(b"$SYS") {
            ReasonCode::NotAuthorized
        } else if !access::may_publish(self.access.as_deref(), a, &p.topic) {
            // 3.x: acknowledged as usual and dropped (the spec allows nothing else).
            broker.metrics.acl_denied.inc();
            ReasonCode::NotAuthorized
        } else {
            let msg = Arc::new(Message::from_publish(p, Some(a.client_id.clone()), now));
            let routed = broker.publish(msg);
            if routed.ticket.is_some() {
                ticket = routed.ticket;
            }
            if routed.retained == Some(RetainOutcome::Full) {
                ReasonCode::QuotaExceeded
            } else if routed.reached == 0 && !retain && qos != QoS::AtMostOnce {
                ReasonCode::NoMatchingSubscribers
            } else {
                ReasonCode::Success
            }
        };
        let reason = if v5 { reason } else { ReasonCode::Success };
        match qos {
            QoS::AtMostOnce if reason == ReasonCode::PayloadFormatInvalid => {
                return self.fail(reason, "payload is not valid UTF-8");
            }
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let ack = self.ack_with_reason(pid, reason);
                self.send_ack(Packet::PubAck(ack), ticket);
            }
            QoS::ExactlyOnce => {
                if reason.is_error()
                    && let Stage::Active(a) = &self.stage
                {
                    a.session.lock().awaiting_rel.remove(&pid);
                }
                let ack = self.ack_with_reason(pid, reason);
                self.send_ack(Packet::PubRec(ack), ticket);
            }
        }
        Ok(())
    }

    /// A PUBACK/PUBREC; failures carry a Reason String when the client allows it.
    fn ack_with_reason(&self, pid: u16, reason: ReasonCode) -> PubAck {
        let mut ack = PubAck::with_reason(pid, reason);
        if let Stage::Active(a) = &self.stage
            && a.problem_info
            && reason.is_error()
        {
            ack.properties.reason_string = Some(
                match reason {
                    ReasonCode::PayloadFormatInvalid => "payload is not valid UTF-8",
                    ReasonCode::NotAuthorized => "not authorized to publish to this topic",
                    ReasonCode::QuotaExceeded => "retained message store is full",
                    _ => "publish refused",
                }
                .to_string(),
            );
        }
        ack
    }

    /// Sends an acknowledgement, or holds it (in order) until journal `ticket` is durable.
    fn send_ack(&mut self, packet: Packet, ticket: Option<u64>) {
        let hold = match self.broker.persistence() {
            // Held even if already failed: `release_held` turns it into a failure answer.
            Some(p) if p.journal.hold_acks() => {
                !self.held.is_empty()
                    || ticket.is_some_and(|t| p.journal.status(t) != TicketStatus::Durable)
            }
            _ => false,
        };
        if hold {
            self.held.push_back((ticket.unwrap_or(0), packet));
        } else {
            self.encode(&packet);
        }
    }

    /// True while acknowledgements wait for the store.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// True when so many acknowledgements wait that the client must not be read further.
    pub fn backpressured(&self) -> bool {
        self.held.len() >= HELD_LIMIT
    }

    /// Sends the held acknowledgements whose commits finished. A failed commit is not
    /// acknowledged as a success: v5 clients get reason 0x80 (Unspecified error), 3.x clients,
    /// which have no way to hear it, are disconnected so they resend.
    pub fn release_held(&mut self) -> Result<(), Closing> {
        let Some(journal) = self.broker.persistence().map(|p| p.journal.clone()) else {
            return Ok(());
        };
        while let Some(&(ticket, _)) = self.held.front() {
            let status = if ticket == 0 {
                TicketStatus::Durable
            } else {
                journal.status(ticket)
            };
            if status == TicketStatus::Pending {
                break;
            }
            let Some((_, mut packet)) = self.held.pop_front() else {
                break;
            };
            if status == TicketStatus::Failed {
                self.broker.metrics.store_failures_answered.inc();
                let v5 = self.version().is_v5();
                match &mut packet {
                    Packet::PubAck(a) | Packet::PubRec(a) if v5 => {
                        a.reason = ReasonCode::UnspecifiedError;
                        a.properties.reason_string = Some("could not store the message".into());
                    }
                    Packet::SubAck(s) => {
                        s.reasons
                            .iter_mut()
                            .for_each(|r| *r = ReasonCode::UnspecifiedError);
                    }
                    Packet::UnsubAck(u) if v5 => {
                        u.reasons
                            .iter_mut()
                            .for_each(|r| *r = ReasonCode::UnspecifiedError);
                    }
                    _ => {
                        return Err(Closing::new(
                            ReasonCode::UnspecifiedError,
                            "store commit failed",
                        ));
                    }
                }
                if let (Packet::PubRec(a), Stage::Active(act)) = (&packet, &self.stage) {
                    act.session.lock().awaiting_rel.remove(&a.packet_id);
                }
            }
            self.encode(&packet);
        }
        Ok(())
    }

    /// Journals `op` if the broker has a store and the session is persistent.
    fn journal_op(&self, persisted: bool, op: impl FnOnce() -> Op) -> Option<u64> {
        let p = self.broker.persistence()?;
        persisted.then(|| p.journal.push(op()))
    }

    fn on_puback(&mut self, pid: u16) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let (persisted, seq) =
            {
                let mut st = a.session.lock();
                let Some(i) = st.inflight_position(pid) else {
                    return;
                };
                if !st.inflight.get(i).is_some_and(|f| {
                    f.phase == Phase::Published && f.delivery.qos == QoS::AtLeastOnce
                }) {
                    return;
                }
                let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
                (st.persisted, seq)
            };
        let id = a.client_id.to_string();
        self.journal_op(persisted && seq != 0, || Op::DeleteMessage(id, seq));
    }

    fn on_pubrec(&mut self, ack: PubAck) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let id = a.client_id.to_string();
        let (found, persisted, seq) = {
            let mut st = a.session.lock();
            let persisted = st.persisted;
            match st.inflight_position(ack.packet_id) {
                Some(i) if ack.reason.is_error() => {
                    let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
                    drop(st);
                    self.journal_op(persisted && seq != 0, || Op::DeleteMessage(id, seq));
                    return;
                }
                Some(i) => match st.inflight.get_mut(i) {
                    Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                        f.phase = Phase::Released;
                        (true, persisted, f.delivery.seq)
                    }
                    _ => (false, persisted, 0),
                },
                None => (false, persisted, 0),
            }
        };
        let pid = ack.packet_id;
        let ticket = self.journal_op(found && persisted && seq != 0, || {
            Op::SetPhase(id, seq, MessagePhase::Released, pid)
        });
        let reason = if found {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        // PUBREL only once the phase is stored: after a restart the broker must not send the
        // PUBLISH again for a message the client already has.
        self.send_ack(Packet::PubRel(PubAck::with_reason(pid, reason)), ticket);
    }

    fn on_pubcomp(&mut self, pid: u16) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let (persisted, seq) = {
            let mut st = a.session.lock();
            let Some(i) = st.inflight_position(pid) else {
                return;
            };
            if !st
                .inflight
                .get(i)
                .is_some_and(|f| f.phase == Phase::Released)
            {
                return;
            }
            let seq = st.inflight.remove(i).map_or(0, |f| f.delivery.seq);
            (st.persisted, seq)
        };
        let id = a.client_id.to_string();
        self.journal_op(persisted && seq != 0, || Op::DeleteMessage(id, seq));
    }

    fn on_pubrel(&mut self, pid: u16) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let (known, persisted) = {
            let mut st = a.session.lock();
            (st.awaiting_rel.remove(&pid).is_some(), st.persisted)
        };
        let id = a.client_id.to_string();
        // PUBCOMP only once the id is forgotten on disk too, or a restart would take the
        // client's next message with this id for a resend and drop it.
        let ticket = self.journal_op(known && persisted, || Op::DeleteAwaiting(id, pid));
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send_ack(Packet::PubComp(PubAck::with_reason(pid, reason)), ticket);
    }

    fn on_subscribe(&mut self, s: Subscribe, now: Instant) -> Result<(), Closing> {
        let broker = self.broker.clone();
        let Stage::Active(a) = &self.stage else {
            return Ok(());
        };
        if s.properties.subscription_identifiers.len() > 1 {
            return self.protocol_error("more than one subscription identifier");
        }
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let session = a.session.clone();
        let mut reasons = Vec::with_capacity(s.filters.len().min(64));
        let mut retained = Vec::new();
        for (filter, options) in s.filters {
            if !access::may_subscribe(self.access.as_deref(), a, &filter) {
                broker.metrics.acl_denied.inc();
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let (exists, count) = {
                let st = session.lock();
                (
                    st.subscriptions.contains_key(&filter),
                    st.subscriptions.len(),
                )
            };
            if !exists && count >= broker.limits.max_subscriptions_per_client {
                broker.metrics.subscriptions_refused.inc();
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let existed = broker.router.subscribe(&filter, &session, options, sub_id);
            session.lock().subscriptions.insert(
                filter.clone(),
                Subscription {
                    options,
                    id: sub_id,
                },
            );
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            use starling_proto::RetainHandling as RH;
            let send_retained = filter.share_group().is_none()
                && match options.retain_handling {
                    RH::SendAtSubscribe => true,
                    RH::SendIfNew => !existed,
                    RH::DoNotSend => false,
                };
            if send_retained {
                for msg in broker.retained.matching(filter.match_filter(), now) {
                    retained.push(Delivery {
                        qos: msg.qos.min(options.qos),
                        msg,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        share: None,
                        seq: 0,
                    });
                }
            }
        }
        // The subscriptions of a persistent session are stored before SUBACK says so.
        let ticket = {
            let mut st = session.lock();
            if st.persisted {
                broker.persist_session(&session, &mut st)
            } else {
                None
            }
        };
        let suback = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.send_ack(suback, ticket);
        let ctx = broker.ctx();
        for d in retained {
            session.deliver(d, &ctx);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let broker = self.broker.clone();
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let session = a.session.clone();
        let reasons = u
            .filters
            .iter()
            .map(|f| {
                let had = session.lock().subscriptions.remove(f).is_some();
                broker.router.unsubscribe(f, &session);
                if had {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        let ticket = {
            let mut st = session.lock();
            if st.persisted {
                broker.persist_session(&session, &mut st)
            } else {
                None
            }
        };
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.send_ack(unsuback, ticket);
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

    /// Moves queued messages into the output, as far as the inflight window and the output
    /// high-water mark allow. Detects a takeover (answered with DISCONNECT 0x8E for v5).
    pub fn pump(&mut self, now: Instant) -> Result<(), Closing> {
        let Stage::Active(a) = &mut self.stage else {
            return Ok(());
        };
        let metrics = &self.broker.metrics;
        let session = a.session.clone();
        let mut st = session.lock();
        if st.owner != Some(self.id) || st.ended {
            drop(st);
            self.send_disconnect(ReasonCode::SessionTakenOver, "session taken over");
            return Err(Closing::new(
                ReasonCode::SessionTakenOver,
                "session taken over",
            ));
        }
        while self.out.len() < OUTPUT_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= a.window {
                break;
            }
            let Some(d) = st.pop_queued() else { break };
            if d.msg.is_expired(now) {
                metrics.publish_dropped.inc();
                metrics.dropped_expired.inc();
                continue;
            }
            if !access::may_read(self.access.as_deref(), a, &d.msg.topic) {
                metrics.acl_denied.inc();
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                st.allocate_packet_id()
            };
            let alias = outbound_alias(a, &d.msg.topic);
            match encode_delivery(
                &mut self.out,
                a.version,
                &d,
                packet_id,
                false,
                alias,
                now,
                a.max_packet_out,
            ) {
                Ok(true) => {
                    if let Some((alias, false)) = alias {
                        a.aliases_out.insert(d.msg.topic.clone(), alias);
                    }
                }
                Ok(false) => {
                    // Larger than the client accepts: not sent (spec 3.1.2.11.4), counted.
                    metrics.publish_dropped.inc();
                    metrics.dropped_too_large.inc();
                    continue;
                }
                Err(e) => {
                    debug!(error = %e, "dropping unencodable message");
                    metrics.publish_dropped.inc();
                    continue;
                }
            }
            metrics.publish_sent.inc();
            metrics.messages_sent.inc();
            if d.seq != 0
                && st.persisted
                && let Some(p) = self.broker.persistence()
            {
                let op = Op::SetPhase(
                    session.client_id.to_string(),
                    d.seq,
                    MessagePhase::Published,
                    packet_id,
                );
                p.journal.push(op);
            }
            if d.qos != QoS::AtMostOnce {
                st.inflight.push_back(Inflight {
                    packet_id,
                    delivery: d,
                    phase: Phase::Published,
                });
            }
        }
        let more = !st.queue.is_empty()
            && (st.queue.front().is_some_and(|f| f.qos == QoS::AtMostOnce)
                || st.inflight.len() < a.window);
        drop(st);
        if more {
            // Still work to do once the output drains: make sure the next pump happens.
            self.waker.notify_one();
        }
        Ok(())
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
                debug!(peer = %self.peer, reason = %c.reason, "connection closed before CONNECT: {}", c.detail);
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
            peer = %self.peer,
            protocol = a.version.level(),
            %reason,
            "client disconnected: {detail}"
        );
    }
}

/// The outbound topic alias for `topic`: `Some((alias, known))`, where `known` means the
/// client already has it (send the alias alone), or `None` when the client allows no more
/// aliases. A new alias is proposed while the client's Topic Alias Maximum allows.
fn outbound_alias(a: &mut Active, topic: &TopicName) -> Option<(u16, bool)> {
    if a.alias_out_max == 0 {
        return None;
    }
    if let Some(&alias) = a.aliases_out.get(topic) {
        return Some((alias, true));
    }
    if a.aliases_out.len() >= usize::from(a.alias_out_max) {
        return None;
    }
    // Proposed only: the caller records it once the message is actually sent, since a message
    // dropped for the client's Maximum Packet Size must not define an alias.
    let alias = u16::try_from(a.aliases_out.len() + 1).ok()?;
    Some((alias, false))
}

/// Encodes the PUBLISH of a delivery: per-subscriber QoS, RETAIN, packet id, subscription
/// identifiers, remaining expiry and topic alias (v5 only), straight from the shared message
/// without copying it into a packet value. `Ok(false)`: larger than `max_len`, not written.
#[allow(clippy::too_many_arguments)]
fn encode_delivery(
    out: &mut BytesMut,
    version: ProtocolVersion,
    d: &Delivery,
    packet_id: u16,
    dup: bool,
    alias: Option<(u16, bool)>,
    now: Instant,
    max_len: usize,
) -> Result<bool, starling_proto::EncodeError> {
    let v5 = version.is_v5();
    let topic = match alias {
        Some((_, true)) => &[][..],
        _ => d.msg.topic.as_bytes(),
    };
    let parts = starling_proto::PublishParts {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic,
        packet_id,
        properties: &d.msg.properties,
        message_expiry_interval: if v5 {
            d.msg.remaining_expiry(now)
        } else {
            None
        },
        subscription_identifiers: if v5 { &d.sub_ids } else { &[] },
        topic_alias: alias.map(|(a, _)| a),
        payload: &d.msg.payload,
    };
    starling_proto::encode_publish_parts(out, version, &parts, max_len)
}
