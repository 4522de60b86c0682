//! The per-connection protocol machine, sans-IO: everything one client connection does,
//! without the socket and without a clock.
//!
//! ```text
//!              CONNECT accepted            DISCONNECT, protocol error, keep-alive, takeover,
//!  Connecting ─────────────────▶ Active ─────────────────────────────────────────────▶ Closed
//!      │      │                  ▲ ▲      shutdown, or the transport lost
//!      │      │ another          │ │ handed over,
//!      │      │ connection owns  │ │ or waited long enough
//!      │      └─▶ the session ───┼─┴─ Waiting
//!      │ CONNECT names an        │
//!      ▼ authentication method   │ exchange succeeds (and, as above, may wait)
//!  Authenticating ───────────────┘        (a refusal or failure goes to Closed from any state)
//! ```
//!
//! Each state is its own type and handles only what can reach it: `Connecting` takes the
//! CONNECT (`connecting.rs`), `Authenticating` the AUTH exchange (`enhanced.rs`), `Waiting`
//! the session's handover from its current owner (`handover.rs`), `Active` everything after
//! CONNACK (`active.rs`, with the QoS flows in `publish.rs`, held acknowledgements in
//! `held.rs`, SUBSCRIBE in `subscribe.rs`, outbound delivery in `deliver.rs`). The
//! [`Connection`] dispatches once on its state.
//!
//! The I/O layer drives it with inputs and takes outputs as values:
//! - `handle_input` (bytes read: decodes every whole packet), `handle_packet`,
//!   `handle_timeout`, `handle_shutdown`, `handle_connection_lost`;
//! - `poll_transmit` (bytes to write: answers, acknowledgements whose commit finished, queued
//!   deliveries within the inflight window), `poll_timeout` (when to call `handle_timeout`),
//!   `wants_input` (whether to read the client now), `is_closed` (flush what is left, then
//!   close the transport);
//! - `hand_over_asked` / `handle_hand_over`: another connection wants the session, and the
//!   I/O layer has read what the client already sent;
//! - `take_check` / `handle_check`: a packet waits for an authentication or authorization
//!   answer that comes later (`access.rs`); the I/O layer runs the check and brings it back.
//!
//! The current time comes in as an argument; the broker core ([`Broker`]) is passed in, not
//! held. When the session has new deliveries, is taken over, or a commit it waits for
//! finishes, the connection's [`Waker`] is called: the I/O layer then calls `poll_transmit`.

use std::fmt;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_proto::ReasonCode;
use starling_proto::{ConnAck, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion};
use tracing::{debug, warn};

use crate::broker::{Broker, Ending};
use crate::metrics::Metrics;
use crate::wake::Waker;

mod access;
mod active;
mod connecting;
mod deliver;
mod enhanced;
mod handover;
mod held;
mod hooked;
mod publish;
mod run;
mod subscribe;
mod turn;

pub use access::{CheckAnswer, ListenerAccess, PeerInfo};
pub use connecting::{BRIDGE_PROPERTY, NODE_PROPERTY};
pub use enhanced::MAX_AUTH_STEPS;
pub use held::HELD_LIMIT;
pub use hooked::HookAnswer;
pub use turn::{MAX_TURN_SHIFT, QUIET, TURN_DELIVERIES, Turns};

/// `poll_transmit` stops adding queued deliveries once the caller's buffer holds this many
/// bytes; the I/O layer writes them out and polls again. Bounds the per-connection write
/// buffer (answers to what the client sent are always added; reading stops at this mark too).
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Why a connection closed. Whatever CONNACK or DISCONNECT the client is owed is already in
/// the output when the connection reaches `Closed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The reason (for logs; sent to v5 clients where the spec says so).
    pub reason: ReasonCode,
    /// Human-readable detail for the log line.
    pub detail: String,
}

impl Close {
    fn new(reason: ReasonCode, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What a handler of an active connection leads to: go on, or close.
type Flow = ControlFlow<Close>;

/// A peer address for logs: the address, a Unix socket client's user id (`unix:uid=1000`),
/// or `unknown`.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(Option<SocketAddr>, Option<u32>);

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(a), _) => a.fmt(f),
            (None, Some(uid)) => write!(f, "unix:uid={uid}"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

/// What a connection has in every state.
#[derive(Debug)]
struct Link {
    /// The client's address, when known (logs, authenticators).
    peer: Option<SocketAddr>,
    /// Called when the session has work for this connection (see the module docs).
    waker: Waker,
    /// Encoded packets not yet handed to the I/O layer.
    out: BytesMut,
    /// Until CONNECT is accepted, when the connection was opened (the CONNECT timeout runs
    /// from it, whatever the client sends meanwhile); from then on, when the last packet
    /// arrived (keep-alive). One field for both: every idle connection holds it.
    since: Instant,
    /// The listener's authentication and authorization; `None`: everything allowed.
    access: Option<access::ConnAccess>,
    /// An answer did not fit the client's Maximum Packet Size even without its optional
    /// properties: it was not sent, and the connection closes.
    unsendable: bool,
    /// A message (a PUBLISH or one of its acknowledgements) went either way since the I/O
    /// layer last asked ([`Connection::take_traffic`]).
    traffic: bool,
}

impl Link {
    fn peer(&self) -> PeerAddr {
        let uid = self.access.as_ref().and_then(access::ConnAccess::unix_uid);
        PeerAddr(self.peer, uid)
    }

    /// Encodes `packet` into the output, counted in `messages_sent`.
    fn send(&mut self, metrics: &Metrics, version: ProtocolVersion, packet: &Packet) {
        if self.encode(version, packet) {
            metrics.messages_sent.inc();
        }
    }

    /// Like [`Link::send`] for a client that accepts packets of at most `max` bytes: a packet
    /// too large goes without its Reason String and User Properties, which the spec lets the
    /// sender leave out to fit (MQTT-3.2.2-19, -20 and the like for every answer); if it is
    /// still too large it is not sent and `unsendable` is set.
    fn send_within(
        &mut self,
        metrics: &Metrics,
        version: ProtocolVersion,
        packet: &Packet,
        max: u32,
    ) {
        let max = max as usize;
        let from = self.out.len();
        if !self.encode(version, packet) {
            return;
        }
        if self.out.len() - from > max {
            self.out.truncate(from);
            let mut slim = packet.clone();
            if let Some(v) = slim.properties_mut().and_then(Properties::values_mut) {
                v.reason_string = None;
                v.user_properties.clear();
            }
            if !self.encode(version, &slim) {
                return;
            }
            if self.out.len() - from > max {
                self.out.truncate(from);
                self.unsendable = true;
                return;
            }
        }
        metrics.messages_sent.inc();
    }

    /// Encodes `packet` into the output; false (logged) if it cannot be encoded.
    fn encode(&mut self, version: ProtocolVersion, packet: &Packet) -> bool {
        match starling_proto::encode(packet, version, &mut self.out) {
            Ok(()) => true,
            Err(e) => {
                warn!(peer = %self.peer(), error = %e, "could not encode {:?}", packet.packet_type());
                false
            }
        }
    }
}

/// What every handler needs besides its state: the broker core, the connection-wide parts,
/// and the current time.
struct Cx<'a> {
    broker: &'a Broker,
    link: &'a mut Link,
    now: Instant,
    /// QoS 0 messages of this read not yet routed (`run.rs`); `None` outside a read, where
    /// each message is routed as it comes.
    run: Option<&'a mut run::Run>,
}

impl Cx<'_> {
    /// Refuses a CONNECT: CONNACK with `reason` (and `properties`), logged. The caller goes to
    /// `Closed` with the returned [`Close`].
    fn refuse_connect(
        &mut self,
        version: ProtocolVersion,
        reason: ReasonCode,
        properties: Properties,
        detail: &str,
    ) -> Close {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties,
        });
        self.link.send(&self.broker.metrics, version, &connack);
        if let Some(c) = self.broker.metrics.connects_refused_by_reason.of(reason) {
            c.inc();
        }
        tracing::info!(peer = %self.link.peer(), protocol = version.level(), %reason, "connection refused: {detail}");
        Close::new(reason, detail)
    }
}

/// The connection's state; see the module docs.
#[derive(Debug)]
enum State {
    /// Waiting for CONNECT.
    Connecting,
    /// CONNECT named an enhanced authentication method: AUTH packets until CONNACK.
    Authenticating(Box<enhanced::Authenticating>),
    /// CONNECT accepted; the connection that owns its session is handing it over.
    Waiting(Box<handover::Waiting>),
    /// CONNECT accepted: the session is attached.
    Active(Box<active::Active>),
    /// Done: flush the output and close the transport.
    Closed(Box<Close>),
}

fn closed(close: Close) -> State {
    State::Closed(Box::new(close))
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Connection {
    link: Link,
    state: State,
}

/// `t + d`, or `None` if that is not representable (a deadline that never comes).
fn deadline(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

impl Connection {
    /// A new connection from `peer`, awaiting CONNECT. `waker` is how the broker asks the I/O
    /// layer to call [`Connection::poll_transmit`].
    pub fn new(waker: Waker, peer: Option<SocketAddr>, now: Instant) -> Self {
        Self {
            link: Link {
                peer,
                waker,
                out: BytesMut::new(),
                since: now,
                access: None,
                unsendable: false,
                traffic: false,
            },
            state: State::Connecting,
        }
    }

    /// The client's address, when the transport has one.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.link.peer
    }

    /// True when this connection's publishes have made their turn's deliveries (see
    /// `turn.rs`), so that `handle_input` handled no more: the I/O layer lets other
    /// connections run, then calls `handle_input` again (a new turn) with what is left in the
    /// buffer before it reads more.
    pub fn gives_way(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.turn.spent())
    }

    /// True once CONNECT was accepted (and until the connection closes).
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// True once the connection is done: the I/O layer flushes what `poll_transmit` still
    /// gives and closes the transport.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&Close> {
        match &self.state {
            State::Closed(c) => Some(c),
            _ => None,
        }
    }

    /// The protocol level incoming packets are decoded with.
    fn version(&self) -> ProtocolVersion {
        match &self.state {
            State::Active(a) => a.version(),
            State::Authenticating(_) => ProtocolVersion::V5,
            State::Waiting(w) => w.version(),
            State::Connecting | State::Closed(_) => ProtocolVersion::V311,
        }
    }

    /// Limits for decoding the next packet: tighter before CONNECT.
    fn decode_limits(&self, broker: &Broker) -> DecodeLimits {
        let l = &broker.limits;
        DecodeLimits {
            max_packet_size: match self.state {
                State::Active(_) => l.max_packet_size,
                _ => l.max_connect_packet_size,
            },
            max_topic_levels: l.max_topic_levels,
            max_user_properties: l.max_user_properties,
            allow_control_characters: l.allow_control_characters,
        }
    }

    /// Decodes and handles every whole packet in `buf` (bytes read from the client), leaving
    /// a partial packet in place. Stops early when the client's publish rate says to wait
    /// (`wants_input` is then false until `poll_timeout`), when the connection closes, or
    /// when its publishes have made a turn's worth of deliveries (`gives_way`).
    pub fn handle_input(&mut self, broker: &Broker, now: Instant, buf: &mut BytesMut) {
        // A connection that gave way starts a new turn.
        let before = match &mut self.state {
            State::Active(a) => a.turn.begin(&broker.turns, now),
            _ => 0,
        };
        self.input(broker, now, buf, true);
        if let State::Active(a) = &mut self.state {
            a.turn.end(&broker.turns, now, before);
        }
    }

    /// `handle_input`, pausing for the publish rate only if `throttle`.
    fn input(&mut self, broker: &Broker, now: Instant, buf: &mut BytesMut, throttle: bool) {
        // Counted once per read, not per packet (a subscriber's read holds many PUBACKs).
        let mut received = 0;
        let mut run = run::Run::default();
        self.read_packets(broker, now, buf, throttle, &mut received, &mut run);
        self.route_run(broker, &mut run);
        if received != 0 {
            broker.metrics.messages_received.add(received);
        }
    }

    /// `input`'s loop; `received` counts the packets handled.
    fn read_packets(
        &mut self,
        broker: &Broker,
        now: Instant,
        buf: &mut BytesMut,
        throttle: bool,
        received: &mut u64,
        run: &mut run::Run,
    ) {
        loop {
            if self.is_checking() {
                // The rest waits for the parked packet's answer (`handle_check`).
                return;
            }
            match &mut self.state {
                // Left for the session's new owner to read once it is active.
                State::Closed(_) | State::Waiting(_) => return,
                State::Active(a) => {
                    if throttle && a.turn.spent() {
                        // The rest after the others had their turn (a single message's
                        // fan-out is never split).
                        return;
                    }
                    if throttle && a.throttled(broker, now) {
                        return;
                    }
                }
                State::Connecting | State::Authenticating(_) => {}
            }
            let limits = self.decode_limits(broker);
            // Before CONNECT: the version the client speaks, to refuse it in that version.
            let connecting = matches!(self.state, State::Connecting);
            let version = connecting.then(|| starling_proto::connect_version(buf));
            match starling_proto::decode(buf, self.version(), &limits) {
                Ok(Some(packet)) => {
                    *received += 1;
                    if !matches!(packet, Packet::Publish(_)) {
                        // Whatever the client sends after its messages comes after them.
                        self.route_run(broker, run);
                    }
                    self.take_packet(broker, now, packet, Some(run));
                }
                Ok(None) => return,
                Err(e) => {
                    self.route_run(broker, run);
                    return self.handle_decode_error(broker, now, &e, version.flatten());
                }
            }
        }
    }

    /// Handles one packet from the client.
    pub fn handle_packet(&mut self, broker: &Broker, now: Instant, packet: Packet) {
        broker.metrics.messages_received.inc();
        self.take_packet(broker, now, packet, None);
    }

    /// `handle_packet` but for the count, which the caller keeps; a QoS 0 message may join
    /// `run` instead of being routed now.
    fn take_packet(
        &mut self,
        broker: &Broker,
        now: Instant,
        packet: Packet,
        run: Option<&mut run::Run>,
    ) {
        if self.is_active() {
            self.link.since = now;
        }
        self.dispatch(broker, now, packet, run);
    }

    /// Routes the messages of `run` now (`run.rs`).
    fn route_run(&mut self, broker: &Broker, run: &mut run::Run) {
        if run.is_empty() {
            return;
        }
        let made = run.route(broker);
        if let State::Active(a) = &mut self.state {
            a.turn.count(made);
        }
    }

    /// Handles a packet in the current state (again, for one parked for a check); a QoS 0
    /// message may join `run` instead of being routed now.
    fn dispatch(
        &mut self,
        broker: &Broker,
        now: Instant,
        packet: Packet,
        mut run: Option<&mut run::Run>,
    ) {
        let mut cx = Cx {
            broker,
            link: &mut self.link,
            now,
            run: run.as_deref_mut(),
        };
        match &mut self.state {
            State::Active(a) => {
                if let ControlFlow::Break(close) = a.on_packet(&mut cx, packet) {
                    // The will, and whatever closing sends, after the client's messages.
                    if let Some(run) = run {
                        self.route_run(broker, run);
                    }
                    self.close(broker, now, close, None);
                    return self.close_if_unsendable(broker, now);
                }
            }
            State::Closed(_) => {}
            State::Waiting(_) => {
                debug!(peer = %self.link.peer(), "{:?} before CONNACK ignored", packet.packet_type());
            }
            State::Connecting | State::Authenticating(_) => {
                let state = std::mem::replace(&mut self.state, State::Connecting);
                self.state = match state {
                    State::Connecting => connecting::on_packet(&mut cx, packet),
                    State::Authenticating(a) => a.on_packet(&mut cx, packet),
                    other => other,
                };
            }
        }
        if self.link.unsendable
            && let Some(run) = run
        {
            self.route_run(broker, run);
        }
        self.close_if_unsendable(broker, now);
    }

    /// Closes the connection if an answer could not be sent within the client's Maximum
    /// Packet Size (nothing more is sent: a DISCONNECT could be what did not fit, or come
    /// before the CONNACK that did not).
    fn close_if_unsendable(&mut self, broker: &Broker, now: Instant) {
        if std::mem::take(&mut self.link.unsendable) {
            let detail = "an answer exceeds the client's Maximum Packet Size";
            self.close(
                broker,
                now,
                Close::new(ReasonCode::PacketTooLarge, detail),
                None,
            );
        }
    }

    /// Bytes that cannot be decoded: answered as the spec says, then closed. `connect` is the
    /// protocol version of a CONNECT that could not be decoded, if its header got that far.
    fn handle_decode_error(
        &mut self,
        broker: &Broker,
        now: Instant,
        err: &DecodeError,
        connect: Option<ProtocolVersion>,
    ) {
        broker.metrics.protocol_errors.inc();
        let reason = err.reason_code();
        let close = Close::new(reason, err.to_string());
        let mut cx = Cx {
            broker,
            link: &mut self.link,
            now,
            run: None,
        };
        match &mut self.state {
            State::Connecting => {
                if let Some(code) = err.v3_connack_code() {
                    // Unsupported protocol level: a 3.1.1-format CONNACK 0x01 (what every
                    // client version can read), then close.
                    let reason = ReasonCode::from_v3_connack(code).unwrap_or(reason);
                    let version = ProtocolVersion::V311;
                    cx.refuse_connect(version, reason, Properties::default(), &close.detail);
                } else if let Some(version) = connect
                    && let Some(reason) = err.connect_refusal(version)
                {
                    if err.is_limit() {
                        broker.metrics.connect_limits_exceeded.inc();
                    }
                    cx.refuse_connect(version, reason, Properties::default(), &close.detail);
                }
            }
            State::Authenticating(_) => {
                let v5 = ProtocolVersion::V5;
                cx.refuse_connect(v5, reason, Properties::default(), &close.detail);
            }
            State::Active(a) => a.send_disconnect(&mut cx, reason, &close.detail),
            // Nothing is decoded while waiting; closed without an answer if it ever were.
            State::Waiting(_) => {}
            State::Closed(_) => return,
        }
        self.close(broker, now, close, None);
    }

    /// When [`Connection::handle_timeout`] must next be called: the CONNECT timeout, the
    /// keep-alive, a re-authentication's deadline, the end of a publish-rate pause, or the
    /// end of the wait for a session's handover.
    pub fn poll_timeout(&self, broker: &Broker) -> Option<Instant> {
        match &self.state {
            State::Connecting | State::Authenticating(_) => {
                let limit = Duration::from_secs(broker.limits.connect_timeout_secs);
                deadline(self.link.since, limit)
            }
            State::Waiting(w) => w.poll_timeout(),
            State::Active(a) => a.poll_timeout(&self.link),
            State::Closed(_) => None,
        }
    }

    /// Enforces the CONNECT timeout, keep-alive (1.5x, spec 3.1.2.10) and re-authentication
    /// deadline, ends a publish-rate pause that is over, and claims a session whose owner did
    /// not hand it over in time.
    pub fn handle_timeout(&mut self, broker: &Broker, now: Instant) {
        if matches!(&self.state, State::Waiting(w) if w.is_over(now)) {
            self.end_wait(broker, now);
            return self.close_if_unsendable(broker, now);
        }
        let mut cx = Cx {
            broker,
            link: &mut self.link,
            now,
            run: None,
        };
        let close = match &mut self.state {
            State::Active(a) => match a.on_timeout(&mut cx) {
                ControlFlow::Break(close) => close,
                ControlFlow::Continue(()) => return self.close_if_unsendable(broker, now),
            },
            State::Closed(_) | State::Waiting(_) => return,
            State::Connecting | State::Authenticating(_) => {
                let limit = Duration::from_secs(broker.limits.connect_timeout_secs);
                if deadline(self.link.since, limit).is_none_or(|d| now < d) {
                    return;
                }
                let detail = match self.state {
                    State::Authenticating(_) => "authentication not completed in time",
                    _ => "no CONNECT in time",
                };
                Close::new(ReasonCode::MaximumConnectTime, detail)
            }
        };
        self.close(broker, now, close, None);
    }

    /// Whether the I/O layer should read from the client now. False while the client's
    /// publish rate pauses it (until `poll_timeout`), while too many acknowledgements wait
    /// for the store, or while the store is behind and this client feeds it; in the last two
    /// cases the waker fires once reading may go on. False too while the connection waits for
    /// its session's handover (what the client sent after CONNECT is read once it is active).
    /// Ask once per wait: the committer changes the answer concurrently.
    pub fn wants_input(&mut self, broker: &Broker, now: Instant) -> bool {
        if self.is_checking() {
            return false;
        }
        let mut cx = Cx {
            broker,
            link: &mut self.link,
            now,
            run: None,
        };
        match &mut self.state {
            State::Active(a) => a.wants_input(&mut cx),
            State::Connecting | State::Authenticating(_) => true,
            State::Waiting(_) | State::Closed(_) => false,
        }
    }

    /// Whether the connection waits for its session's handover. Input left in the buffer
    /// while it waited is for `handle_input` once it no longer does.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting(_))
    }

    /// Whether a new connection for this client id waits for this one to hand the session
    /// over (noticed by `poll_transmit`). The I/O layer then reads what the client has
    /// already sent, without waiting for more, passes it to `handle_input`, and calls
    /// [`Connection::handle_hand_over`].
    pub fn hand_over_asked(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.hand_over_asked)
    }

    /// Whether, asked to hand the session over, the connection should wait a little for
    /// bytes still on their way from its client (for at most the I/O layer's bound): what
    /// the client sent can change what the new connection gets (it resumes the session, or
    /// the session has a will). Otherwise reading what has arrived is enough.
    pub fn hand_over_waits_for_input(&self) -> bool {
        matches!(&self.state, State::Active(a) if a.hand_over_asked && a.hand_over_waits)
    }

    /// What the client had sent is read: `buf` holds what was read and not yet handled (a
    /// publish-rate pause leaves packets there), which is handled now whatever the pause, so
    /// that a DISCONNECT among it counts. A connection that still owns its session then lets
    /// the waiting one take it over.
    pub fn handle_hand_over(&mut self, broker: &Broker, now: Instant, buf: &mut BytesMut) {
        if !matches!(self.state, State::Active(_)) {
            return;
        }
        self.input(broker, now, buf, false);
        if let State::Active(a) = &mut self.state {
            a.hand_over();
        }
    }

    /// Leaves `Waiting`: claims the session, taking it over from whoever owns it now.
    fn end_wait(&mut self, broker: &Broker, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Connecting);
        let State::Waiting(w) = state else {
            self.state = state;
            return;
        };
        let mut cx = Cx {
            broker,
            link: &mut self.link,
            now,
            run: None,
        };
        self.state = w.claim(&mut cx);
    }

    /// Appends what there is to send to `buf`: answers to what the client sent,
    /// acknowledgements whose commit finished, then queued deliveries within the inflight
    /// window until `buf` holds [`OUTPUT_HIGH_WATER`] bytes. Call it whenever the waker fires
    /// and after every input while `buf` is below the mark. Detects a takeover (closing with
    /// DISCONNECT 0x8E for v5), and a handover the connection waited for (sending CONNACK).
    pub fn poll_transmit(&mut self, broker: &Broker, now: Instant, buf: &mut BytesMut) {
        self.fill(broker, now, OUTPUT_HIGH_WATER.saturating_sub(buf.len()));
        let out = &mut self.link.out;
        if out.is_empty() {
            return;
        }
        if buf.is_empty() {
            std::mem::swap(buf, out);
        } else {
            buf.extend_from_slice(out);
            out.clear();
        }
    }

    /// What [`Connection::poll_transmit`] does, for an I/O layer that writes from the
    /// connection's own output ([`Connection::output`]) instead of a buffer of its own: what
    /// is due is added to it, deliveries while it holds less than [`OUTPUT_HIGH_WATER`].
    pub fn transmit(&mut self, broker: &Broker, now: Instant) {
        self.fill(broker, now, OUTPUT_HIGH_WATER);
    }

    /// Whether a message (a PUBLISH either way, or one of its acknowledgements from the
    /// client) was handled or sent since the last call. Control packets (CONNECT, SUBSCRIBE,
    /// PINGREQ and their answers) are not counted: the I/O layer uses it to tell a client
    /// with message traffic from an idle one (it parks idle connections).
    pub fn take_traffic(&mut self) -> bool {
        std::mem::take(&mut self.link.traffic)
    }

    /// The encoded packets not yet written, for the I/O layer: it writes from the front and
    /// advances past what was written (and may release the buffer once it is empty).
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.link.out
    }

    /// Adds to the output what is due, deliveries while it holds less than `room` bytes.
    fn fill(&mut self, broker: &Broker, now: Instant, room: usize) {
        if matches!(&self.state, State::Waiting(w) if w.is_over(now)) {
            self.end_wait(broker, now);
        }
        let mut cx = Cx {
            broker,
            link: &mut self.link,
            now,
            run: None,
        };
        if let State::Active(a) = &mut self.state {
            if let ControlFlow::Break(close) = a.transmit(&mut cx, room) {
                self.close(broker, now, close, None);
            }
            self.close_if_unsendable(broker, now);
        }
    }

    /// The broker is shutting down: a v5 client is told (DISCONNECT 0x8B); the session is
    /// kept and the will is not sent.
    pub fn handle_shutdown(&mut self, broker: &Broker, now: Instant) {
        let close = Close::new(ReasonCode::ServerShuttingDown, "server shutting down");
        if let State::Active(a) = &mut self.state {
            let mut cx = Cx {
                broker,
                link: &mut self.link,
                now,
                run: None,
            };
            a.send_disconnect(&mut cx, close.reason, &close.detail);
        }
        self.close(broker, now, close, Some(Ending::Shutdown));
    }

    /// The transport is gone (closed by the peer, an I/O error, or the task ended without
    /// the connection closing): an active connection ends abnormally (its will goes out).
    pub fn handle_connection_lost(&mut self, broker: &Broker, now: Instant) {
        let close = Close::new(ReasonCode::UnspecifiedError, "connection lost");
        self.close(broker, now, close, None);
    }

    /// Goes to `Closed`: an active connection detaches its session (will, expiry, shared
    /// hand-over per `ending`, or what the client's DISCONNECT said) and logs the line.
    fn close(&mut self, broker: &Broker, now: Instant, close: Close, ending: Option<Ending>) {
        let state = std::mem::replace(&mut self.state, State::Connecting);
        match state {
            State::Active(mut a) => {
                let mut cx = Cx {
                    broker,
                    link: &mut self.link,
                    now,
                    run: None,
                };
                a.end(&mut cx, &close, ending);
            }
            State::Connecting | State::Authenticating(_) | State::Waiting(_) => {
                debug!(peer = %self.link.peer(), reason = %close.reason, "connection closed before CONNACK: {}", close.detail);
            }
            State::Closed(done) => {
                self.state = State::Closed(done);
                return;
            }
        }
        self.state = closed(close);
    }
}
