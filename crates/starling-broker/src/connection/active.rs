//! The `Active` state: a connection whose CONNECT was accepted. It owns the
//! connection-scoped protocol state (level, keep-alive, window, topic aliases, the client's
//! limits, rate limit, held acknowledgements), dispatches every packet a client may send after
//! CONNACK, enforces keep-alive, and detaches the session when it ends.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use starling_proto::{Disconnect, Packet, ProtocolVersion, ReasonCode, TopicName};
use tracing::info;

use super::turn::Turn;
use super::{Close, Cx, Flow, Link, access, deadline, enhanced, held};
use crate::broker::{Broker, Ending};
use crate::bucket::TokenBucket;
use crate::session::{ClientInfo, Session};

/// A connection after CONNACK.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) session: Arc<Session>,
    /// About the connection as the admin API shows it (its username, its counters): the
    /// one the session was attached with.
    pub(super) info: Arc<ClientInfo>,
    /// The epoch of this connection's claim on the session: it owns the session while the
    /// session says so (`Locked::is_owned_by`).
    pub(super) epoch: u64,
    pub(super) version: ProtocolVersion,
    /// Keep-alive enforced, milliseconds: 1.5x the negotiated value; 0 when disabled. (Every
    /// idle connection holds its `Active`: fields are as small as their ranges allow.)
    pub(super) keep_alive_ms: u32,
    /// Most QoS 1/2 messages out to the client at once (at most a Receive Maximum).
    pub(super) window: u16,
    /// The client's Maximum Packet Size.
    pub(super) max_packet_out: u32,
    /// Topic aliases both ways, allocated when the first one is used (most clients use none,
    /// and every idle connection holds its `Active`).
    pub(super) aliases: Option<Box<Aliases>>,
    /// The client's Topic Alias Maximum (0: no outbound aliases).
    pub(super) alias_out_max: u16,
    /// Request Problem Information: reason strings may be sent on acks (v5; default true).
    pub(super) problem_info: bool,
    /// CONNECT's Session Expiry Interval was 0 (DISCONNECT may then not set one).
    pub(super) connect_expiry_zero: bool,
    /// An MQTT 3.x bridge that said so in CONNECT (its subscriptions get No Local and
    /// Retain As Published).
    pub(super) bridge: bool,
    /// What to do with the will when the connection ends.
    pub(super) ending: Ending,
    /// The enhanced authentication method of this connection (re-authentication), if any.
    pub(super) enhanced: Option<Box<enhanced::EnhancedSession>>,
    /// Inbound publish rate limit (`max_publish_rate`), if any.
    pub(super) rate: Option<Box<RateLimit>>,
    /// What the connection waits for from the store; allocated on first use, so idle
    /// connections and the other durability modes do not carry it.
    pub(super) held: Option<Box<held::HeldAcks>>,
    /// A new connection for the client id waits for this one to hand the session over
    /// (`handover.rs`): the I/O layer reads what the client already sent, then says so.
    pub(super) hand_over_asked: bool,
    /// ... and what its client may still be sending can change what that connection gets
    /// (`Locked::hand_over_waits_for_input`): the I/O layer waits a little for it.
    pub(super) hand_over_waits: bool,
    /// ACL denials of this connection logged so far; after [`DENIALS_LOGGED`] they are
    /// counted only (a client looping on a forbidden topic does not flood the log).
    pub(super) denials_logged: u8,
    /// Deliveries this connection's publishes made since it last gave way, and how many
    /// make a turn (`turn.rs`).
    pub(super) turn: Turn,
}

/// A connection's topic aliases.
#[derive(Debug, Default)]
pub(super) struct Aliases {
    /// Inbound; bounded by the advertised Topic Alias Maximum.
    pub(super) inbound: HashMap<u16, TopicName>,
    /// Outbound ones the broker assigned; at most the client's Topic Alias Maximum.
    pub(super) outbound: HashMap<TopicName, u16>,
}

/// The client's publish rate: reading pauses (TCP backpressure, not a disconnect) while the
/// bucket is empty, counted in `rate_limited`.
#[derive(Debug)]
pub(super) struct RateLimit {
    pub(super) bucket: TokenBucket,
    /// Reading is paused until then.
    pub(super) paused_until: Option<std::time::Instant>,
}

/// How many ACL denials of one connection are logged.
pub(super) const DENIALS_LOGGED: u8 = 10;

impl Active {
    /// Logs an ACL denial of a publish or subscribe (the first [`DENIALS_LOGGED`] of the
    /// connection; all are counted in `acl_denied`).
    pub(super) fn log_denial(&mut self, cx: &Cx<'_>, what: &str, topic: &str) {
        if self.denials_logged >= DENIALS_LOGGED {
            return;
        }
        self.denials_logged += 1;
        let last = if self.denials_logged == DENIALS_LOGGED {
            " (further denials of this connection are counted, not logged)"
        } else {
            ""
        };
        info!(
            client_id = %self.session.client_id(),
            username = self.username().unwrap_or(""),
            peer = %cx.link.peer(),
            %topic,
            "{what} denied by the ACL{last}"
        );
    }

    /// The authenticated username (`None`: anonymous), for authorization and logs.
    pub(super) fn username(&self) -> Option<&str> {
        self.info.username.as_deref()
    }

    pub(super) fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The keep-alive enforced, if any.
    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(u64::from(self.keep_alive_ms)))
    }

    /// The client's id.
    pub(super) fn client_id(&self) -> &Arc<str> {
        self.session.client_id()
    }

    /// Handles one packet from the client.
    pub(super) fn on_packet(&mut self, cx: &mut Cx<'_>, packet: Packet) -> Flow {
        cx.link.traffic |= matches!(
            packet,
            Packet::Publish(_)
                | Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)
        );
        match packet {
            Packet::Publish(p) => return self.on_publish(cx, p),
            Packet::PubAck(a) => return self.on_puback(cx, a.packet_id),
            Packet::PubRec(a) => return self.on_pubrec(cx, a),
            Packet::PubRel(a) => self.on_pubrel(cx, a.packet_id),
            Packet::PubComp(a) => return self.on_pubcomp(cx, a.packet_id),
            Packet::Subscribe(s) => return self.on_subscribe(cx, s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(cx, u),
            Packet::PingReq => self.send(cx, &Packet::PingResp),
            Packet::Disconnect(d) => return self.on_disconnect(cx, d),
            Packet::Connect(_) => return self.protocol_error(cx, "second CONNECT"),
            Packet::Auth(a) => return self.on_reauth(cx, a),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return self.protocol_error(cx, "client sent a server-only packet");
            }
        }
        ControlFlow::Continue(())
    }

    /// A protocol violation: DISCONNECT 0x82 (v5), counted, close.
    pub(super) fn protocol_error(&self, cx: &mut Cx<'_>, detail: &str) -> Flow {
        cx.broker.metrics.protocol_errors.inc();
        self.fail(cx, ReasonCode::ProtocolError, detail)
    }

    /// DISCONNECT with `reason` (v5), then close.
    pub(super) fn fail(&self, cx: &mut Cx<'_>, reason: ReasonCode, detail: &str) -> Flow {
        self.send_disconnect(cx, reason, detail);
        ControlFlow::Break(Close::new(reason, detail))
    }

    /// Sends DISCONNECT with `reason` to a v5 client (3.x has no server DISCONNECT).
    pub(super) fn send_disconnect(&self, cx: &mut Cx<'_>, reason: ReasonCode, detail: &str) {
        if !self.version.is_v5() {
            return;
        }
        // A Reason String is allowed on DISCONNECT whatever Request Problem Information says
        // (`send_now` leaves it out if the client would not accept the packet with it).
        let mut d = Disconnect::new(reason);
        d.properties.reason_string = Some(detail.to_string());
        self.send_now(cx, &Packet::Disconnect(d));
    }

    /// The client's DISCONNECT: a normal close (the will is dropped unless the reason is
    /// 0x04), possibly with a new Session Expiry Interval.
    fn on_disconnect(&mut self, cx: &mut Cx<'_>, d: Disconnect) -> Flow {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry_zero && expiry != 0 {
                return self
                    .protocol_error(cx, "session expiry set on DISCONNECT after 0 in CONNECT");
            }
            let max = cx.broker.limits.max_session_expiry_secs;
            self.session.lock().set_expiry(expiry.min(max));
        }
        self.ending = if d.reason == ReasonCode::DisconnectWithWill {
            Ending::WithWill
        } else {
            Ending::Normal
        };
        ControlFlow::Break(Close::new(d.reason, "client disconnected"))
    }

    /// Before each packet: whether the publish rate says to stop reading for now.
    pub(super) fn throttled(&mut self, broker: &Broker, now: std::time::Instant) -> bool {
        let Some(rate) = self.rate.as_mut() else {
            return false;
        };
        if rate.paused_until.is_some() {
            return true;
        }
        let Some(wait) = rate.bucket.wait(now) else {
            return false;
        };
        broker.metrics.rate_limited.inc();
        rate.paused_until = Some(now.checked_add(wait).unwrap_or(now));
        true
    }

    /// Whether to read from the client now (see `Connection::wants_input`).
    pub(super) fn wants_input(&mut self, cx: &mut Cx<'_>) -> bool {
        let rate_paused = self.rate.as_ref().is_some_and(|r| r.paused_until.is_some());
        !rate_paused && !self.backpressured() && !self.paused_for_store(cx)
    }

    /// The earliest of the keep-alive, re-authentication and rate-pause deadlines.
    pub(super) fn poll_timeout(&self, link: &Link) -> Option<std::time::Instant> {
        let keep_alive = self.keep_alive().and_then(|k| deadline(link.since, k));
        let rate = self.rate.as_ref().and_then(|r| r.paused_until);
        let credentials = access::credentials_end(link);
        [keep_alive, self.reauth_deadline(), rate, credentials]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ends a rate pause that is over, and enforces the re-authentication deadline and the
    /// keep-alive.
    pub(super) fn on_timeout(&mut self, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now;
        if let Some(rate) = self.rate.as_mut()
            && rate.paused_until.is_some_and(|t| now >= t)
        {
            rate.paused_until = None;
        }
        self.check_reauth_timeout(cx)?;
        if access::credentials_end(cx.link).is_some_and(|end| now >= end) {
            // MQTT 5: DISCONNECT 0xA0 (Maximum connect time); 3.x: closed.
            cx.broker.metrics.credentials_expired.inc();
            return self.fail(
                cx,
                ReasonCode::MaximumConnectTime,
                "credentials expired (re-authenticate before the token's exp)",
            );
        }
        let Some(expires) = self.keep_alive().and_then(|k| deadline(cx.link.since, k)) else {
            return ControlFlow::Continue(());
        };
        if now < expires {
            return ControlFlow::Continue(());
        }
        if self.reading_held_back(cx.broker) || access::checking(cx.link) {
            // The broker is not reading this client (the store is behind, too many
            // acknowledgements wait, or a packet waits for an ACL answer), so its PINGREQs
            // sit unread: not the client's silence.
            cx.link.since = now;
            return ControlFlow::Continue(());
        }
        self.fail(cx, ReasonCode::KeepAliveTimeout, "keep-alive timeout")
    }

    /// What `poll_transmit` does for an active connection: queued deliveries (within `room`
    /// bytes), then what waited for commits that have finished (and, for what still waits, a
    /// wake-up at its commit).
    pub(super) fn transmit(&mut self, cx: &mut Cx<'_>, room: usize) -> Flow {
        let room = room.saturating_sub(self.held_delivery_bytes());
        self.pump(cx, room)?;
        self.release_held(cx)
    }

    /// Detaches the session (will, expiry and shared hand-over per `ending`, or per what the
    /// client's DISCONNECT said), counts and logs the end of the connection.
    pub(super) fn end(&mut self, cx: &mut Cx<'_>, close: &Close, ending: Option<Ending>) {
        self.turn.leave(&cx.broker.turns);
        let ending = ending.unwrap_or(self.ending);
        self.disconnected_event(cx, close.reason, &close.detail);
        cx.broker
            .disconnect(&self.session, self.epoch, ending, cx.now);
        cx.broker.metrics.clients_connected.dec();
        cx.broker
            .metrics
            .connected_by_protocol
            .of(self.version)
            .dec();
        info!(
            client_id = %self.session.client_id(),
            username = self.username().unwrap_or(""),
            peer = %cx.link.peer(),
            protocol = self.version.level(),
            reason = %close.reason,
            "client disconnected: {}",
            close.detail
        );
    }
}

#[cfg(test)]
mod size {
    /// Every connected client holds its `Active` and its `Connection` (inside the I/O task's
    /// future, which `starling`'s `the_connection_task_stays_small` bounds): what only some
    /// connections use is boxed. 88 and 136 bytes when this was written.
    #[test]
    fn the_connection_state_stays_small() {
        let active = std::mem::size_of::<super::Active>();
        assert!(active <= 88, "Active grew to {active} bytes");
        let conn = std::mem::size_of::<super::super::Connection>();
        assert!(conn <= 136, "Connection grew to {conn} bytes");
    }
}
