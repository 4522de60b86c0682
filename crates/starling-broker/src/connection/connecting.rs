//! The `Connecting` state: the first packet must be CONNECT. Negotiates the protocol level,
//! client id, keep-alive, limits and session expiry; refuses with the right CONNACK;
//! authenticates (or starts an enhanced authentication exchange); claims the session (waiting
//! for its current owner to hand it over, `handover.rs`), attaches it and sends CONNACK;
//! resends what a resumed session had in flight.

use std::sync::Arc;

use starling_proto::{ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
use tracing::info;

use super::access::Halt;
use super::active::{Active, RateLimit};
use super::{Close, Cx, State, closed, enhanced, handover};
use crate::broker::{Acquire, Attached, Claim, ConnectRequest, Ending};
use crate::bucket::TokenBucket;
use crate::config::Limits;
use crate::session::{ClientInfo, PendingWill};
use crate::wake::{Relay, Waker};

/// What CONNECT negotiated before authentication.
#[derive(Debug)]
pub(super) struct Negotiated {
    pub(super) client_id: Arc<str>,
    /// Assigned Client Identifier to send in CONNACK (v5, empty client id).
    assigned: Option<String>,
    keep_alive: u16,
    /// Server Keep Alive to send in CONNACK.
    server_keep_alive: Option<u16>,
}

/// The first packet: CONNECT, or a protocol error.
pub(super) fn on_packet(cx: &mut Cx<'_>, packet: Packet) -> State {
    match packet {
        Packet::Connect(c) => on_connect(cx, c),
        other => {
            cx.broker.metrics.protocol_errors.inc();
            closed(Close::new(
                ReasonCode::ProtocolError,
                format!("first packet was {:?}, not CONNECT", other.packet_type()),
            ))
        }
    }
}

fn refuse(cx: &mut Cx<'_>, version: ProtocolVersion, reason: ReasonCode, detail: &str) -> State {
    closed(cx.refuse_connect(version, reason, Properties::default(), detail))
}

fn on_connect(cx: &mut Cx<'_>, c: Box<Connect>) -> State {
    let negotiated = match negotiate(cx, &c) {
        Ok(n) => n,
        Err(state) => return state,
    };
    if let Some(state) = check_server(cx, &c) {
        return state;
    }
    if let Some(method) = c
        .properties
        .authentication_method
        .as_deref()
        .and_then(|m| cx.enhanced_method(m))
    {
        return enhanced::Authenticating::begin(cx, c, negotiated, method);
    }
    match cx.authenticate(&c, &negotiated.client_id) {
        Ok(username) => accept(cx, c, negotiated, username, None),
        Err(Halt::Refused(close)) => closed(close),
        Err(Halt::Parked) => {
            // Handled again from the start once the answer is in: nothing above has an
            // effect that a second pass would repeat (an assigned client id is drawn anew).
            cx.park(Packet::Connect(c));
            State::Connecting
        }
    }
}

/// Client ids starting with this belong to the broker's own connections (bridges).
const RESERVED_PREFIX: &str = "$bridge/";

/// Client id, keep-alive and the authentication properties; `Err` once refused.
fn negotiate(cx: &mut Cx<'_>, c: &Connect) -> Result<Negotiated, State> {
    let version = c.protocol;
    let v5 = version.is_v5();
    let mut assigned = None;
    let client_id: Arc<str> = if c.client_id.is_empty() {
        // v5 gets an assigned id; 3.1.1 only with clean session (MQTT-3.1.3-8); 3.1 never.
        let may_assign = v5 || (version == ProtocolVersion::V311 && c.clean_start);
        if !may_assign {
            let reason = ReasonCode::ClientIdentifierNotValid;
            return Err(refuse(cx, version, reason, "empty client id"));
        }
        let id = cx.broker.assign_client_id();
        if v5 {
            assigned = Some(id.clone());
        }
        id.into()
    } else {
        c.client_id.as_str().into()
    };
    // `$bridge/...` names the sessions of the broker's own bridges: a client from a listener
    // may not take one over.
    if client_id.starts_with(RESERVED_PREFIX)
        && cx
            .link
            .access
            .as_ref()
            .is_some_and(|a| !a.listener.internal)
    {
        let reason = ReasonCode::ClientIdentifierNotValid;
        return Err(refuse(
            cx,
            version,
            reason,
            "client id reserved for bridges",
        ));
    }

    let max_ka = cx.broker.limits.max_keep_alive;
    let mut server_keep_alive = None;
    let keep_alive = if v5 && (c.keep_alive == 0 || c.keep_alive > max_ka) {
        server_keep_alive = Some(max_ka);
        max_ka
    } else if !v5 && c.keep_alive > max_ka {
        let reason = ReasonCode::ClientIdentifierNotValid;
        return Err(refuse(
            cx,
            version,
            reason,
            "keep-alive above max_keep_alive",
        ));
    } else {
        c.keep_alive
    };

    let props = &c.properties;
    if v5 && let Some(method) = &props.authentication_method {
        if cx.enhanced_method(method).is_none() {
            let reason = ReasonCode::BadAuthenticationMethod;
            return Err(refuse(cx, version, reason, "unknown authentication method"));
        }
    } else if props.authentication_data.is_some() {
        let detail = "authentication data without an authentication method";
        return Err(refuse(cx, version, ReasonCode::ProtocolError, detail));
    }
    Ok(Negotiated {
        client_id,
        assigned,
        keep_alive,
        server_keep_alive,
    })
}

/// Refusals that depend on the server, not the client: redirection and `max_connections`.
fn check_server(cx: &mut Cx<'_>, c: &Connect) -> Option<State> {
    let version = c.protocol;
    let v5 = version.is_v5();
    let broker = cx.broker;
    if let Some(reference) = &broker.features.server_reference {
        if !v5 {
            let reason = ReasonCode::ServerUnavailable;
            return Some(refuse(cx, version, reason, "server redirection configured"));
        }
        let reason = if broker.features.server_moved {
            ReasonCode::ServerMoved
        } else {
            ReasonCode::UseAnotherServer
        };
        let mut props = Properties::default();
        props.server_reference = Some(reference.clone());
        return Some(closed(cx.refuse_connect(
            version,
            reason,
            props,
            "redirected",
        )));
    }
    if broker.metrics.clients_connected.get() >= broker.limits.max_connections as u64 {
        broker.metrics.connections_refused.inc();
        let reason = if v5 {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::ServerUnavailable
        };
        return Some(refuse(cx, version, reason, "max_connections reached"));
    }
    None
}

/// What CONNECT asked for and the broker granted, beyond the negotiation.
struct Terms {
    requested_expiry: u32,
    expiry_secs: u32,
    window: u16,
}

fn terms(c: &Connect, limits: &Limits) -> Terms {
    let v5 = c.protocol.is_v5();
    let requested_expiry = c.properties.session_expiry_interval.unwrap_or(0);
    let expiry_secs = if v5 {
        requested_expiry.min(limits.max_session_expiry_secs)
    } else if c.clean_start {
        0
    } else if limits.v3_session_expiry_secs == 0 {
        u32::MAX
    } else {
        limits.v3_session_expiry_secs
    };
    let receive_maximum = if v5 {
        c.properties.receive_maximum.unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    Terms {
        requested_expiry,
        expiry_secs,
        window: receive_maximum.min(limits.max_inflight).max(1),
    }
}

/// An authenticated CONNECT, ready to get its session.
#[derive(Debug)]
pub(super) struct Accepted {
    /// The CONNECT, in the box it was decoded into (unboxing it would only copy it).
    pub(super) connect: Box<Connect>,
    pub(super) negotiated: Negotiated,
    pub(super) username: Option<Arc<str>>,
    pub(super) enhanced: Option<enhanced::Accepted>,
}

/// Attaches the session of an authenticated CONNECT and sends CONNACK 0x00 (with the
/// enhanced authentication method and its final data, if one was used), or waits for the
/// connection that owns the session to hand it over (see `handover.rs`).
pub(super) fn accept(
    cx: &mut Cx<'_>,
    c: Box<Connect>,
    negotiated: Negotiated,
    username: Option<Arc<str>>,
    enhanced: Option<enhanced::Accepted>,
) -> State {
    if let Some(kind) =
        (cx.broker.bans).connect_banned(&negotiated.client_id, username.as_deref(), cx.now)
    {
        cx.broker.metrics.connects_banned.inc();
        let detail = format!(
            "{} banned (client id {:?}, username {:?})",
            kind.name(),
            &*negotiated.client_id,
            username.as_deref().unwrap_or("")
        );
        let reason = if c.protocol.is_v5() {
            ReasonCode::Banned
        } else {
            ReasonCode::NotAuthorized
        };
        return refuse(cx, c.protocol, reason, &detail);
    }
    // The plugins' hooks last; a later answer parks the CONNECT (not at the end of an
    // enhanced authentication exchange, which cannot be repeated).
    let may_wait = enhanced.is_none();
    let (id, keep_alive) = (negotiated.client_id.clone(), negotiated.keep_alive);
    match cx.connect_hooks(&c, &id, username.as_deref(), keep_alive, may_wait) {
        Ok(()) => {}
        Err(Halt::Refused(close)) => return closed(close),
        Err(Halt::Parked) => {
            cx.park(Packet::Connect(c));
            return State::Connecting;
        }
    }
    let accepted = Accepted {
        connect: c,
        negotiated,
        username,
        enhanced,
    };
    // In a cluster the client id is claimed through the cluster first.
    let id = accepted.negotiated.client_id.clone();
    let resume = !accepted.connect.clean_start;
    match (cx.broker.ownership()).acquire(&id, resume, cx.link.waker.clone()) {
        Acquire::Now => {}
        Acquire::Later(grant) => {
            return State::Waiting(Box::new(handover::Waiting::for_grant(cx, accepted, grant)));
        }
        Acquire::Busy => return busy(cx, accepted.connect.protocol),
    }
    let relay = Relay::new(cx.link.waker.clone());
    match claim(cx, accepted, Some(relay.clone()), 0) {
        Ok(state) => state,
        Err(accepted) => State::Waiting(Box::new(handover::Waiting::new(cx, accepted, relay, 0))),
    }
}

/// Claims the session for an authenticated CONNECT: the `Active` state with CONNACK sent, or
/// a refusal; `Err` (with the CONNECT back) if the owner was asked to hand the session over
/// to `handover` first. `epoch` is the cluster's grant of the client id (0: no cluster).
pub(super) fn claim(
    cx: &mut Cx<'_>,
    accepted: Accepted,
    handover: Option<Arc<Relay>>,
    epoch: u64,
) -> Result<State, Accepted> {
    let broker = cx.broker;
    let limits = &broker.limits;
    let c = &accepted.connect;
    let version = c.protocol;
    let terms = terms(c, limits);
    let will = c.will.clone().map(|w| PendingWill {
        delay_secs: w.properties.will_delay_interval.unwrap_or(0),
        will: w,
    });
    let info = Arc::new(ClientInfo {
        peer: cx.link.peer,
        listener: cx
            .link
            .access
            .as_ref()
            .map_or_else(|| Arc::from(""), |a| a.listener.name.clone()),
        username: accepted.username.clone(),
        keep_alive: accepted.negotiated.keep_alive,
        connected_at: cx.now,
        counters: Default::default(),
    });
    let request = ConnectRequest {
        client_id: accepted.negotiated.client_id.clone(),
        clean_start: c.clean_start,
        protocol: version,
        expiry_secs: terms.expiry_secs,
        will,
        info: Some(info.clone()),
        queue_bounds: cx
            .link
            .access
            .as_ref()
            .and_then(|a| a.listener.session_queue),
    };
    let handover = handover.map(|r| r as Waker);
    let attached = match broker.connect(cx.link.waker.clone(), request, cx.now, handover) {
        Claim::Attached(attached) => attached,
        Claim::Waiting => return Err(accepted),
        Claim::Busy => return Ok(busy(cx, version)),
    };
    // A claim on another node may have committed after the grant and before this session
    // was attached (too early for the cluster to end it): the connection then finds itself
    // taken over at once.
    if epoch != 0
        && !broker
            .ownership()
            .confirm(&accepted.negotiated.client_id, epoch)
    {
        broker.taken_over_elsewhere(&accepted.negotiated.client_id, cx.now);
    }
    Ok(attach(cx, accepted, &terms, attached, info))
}

/// Refuses a CONNECT whose client id the cluster did not grant this node (no majority in
/// time): Server unavailable, so that the client tries another node.
pub(super) fn unavailable(cx: &mut Cx<'_>, version: ProtocolVersion) -> State {
    cx.broker.metrics.connections_refused.inc();
    refuse(
        cx,
        version,
        ReasonCode::ServerUnavailable,
        "the cluster did not grant the client id",
    )
}

/// Refuses a CONNECT whose client id other connections kept claiming meanwhile.
pub(super) fn busy(cx: &mut Cx<'_>, version: ProtocolVersion) -> State {
    let reason = if version.is_v5() {
        ReasonCode::ServerBusy
    } else {
        ReasonCode::ServerUnavailable
    };
    refuse(
        cx,
        version,
        reason,
        "client id claimed concurrently, try again",
    )
}

/// The session is attached: CONNACK, and what a resumed session had in flight.
fn attach(
    cx: &mut Cx<'_>,
    accepted: Accepted,
    terms: &Terms,
    attached: Attached,
    info: Arc<ClientInfo>,
) -> State {
    let Accepted {
        connect: c,
        negotiated,
        enhanced,
        ..
    } = accepted;
    let broker = cx.broker;
    let version = c.protocol;
    let v5 = version.is_v5();
    count_connected(&broker.metrics, version);
    // Keep-alive runs from the CONNECT's acceptance.
    cx.link.since = cx.now;
    broker.metrics.auth_succeeded.of(cx.auth_method(&c)).inc();
    let mut active = activate(cx, &c, &negotiated, info, terms, &attached);
    active.enhanced = enhanced.as_ref().map(enhanced::Accepted::session);
    let properties = if v5 {
        connack_properties(cx, &c, &negotiated, terms, enhanced)
    } else {
        Properties::default()
    };
    let connack = Packet::ConnAck(ConnAck {
        session_present: attached.session_present,
        reason: ReasonCode::Success,
        properties,
    });
    // Shown to the client only once the session it reports is stored.
    active.journaled(attached.ticket);
    active.send_ack(cx, connack, attached.ticket);
    info!(
        client_id = %negotiated.client_id,
        username = active.username().unwrap_or(""),
        peer = %cx.link.peer(),
        protocol = version.level(),
        clean_start = c.clean_start,
        keep_alive = negotiated.keep_alive,
        session_present = attached.session_present,
        "client connected"
    );
    if attached.session_present {
        active.resend_inflight(cx);
    }
    active.session_started(cx, attached.session_present);
    State::Active(active)
}

fn count_connected(m: &crate::metrics::Metrics, version: ProtocolVersion) {
    m.clients_connected.inc();
    m.connected_by_protocol.of(version).inc();
    m.connects_by_protocol.of(version).inc();
    m.connections_total.inc();
    if m.clients_connected.get() > m.clients_maximum.get() {
        m.clients_maximum.set(m.clients_connected.get());
    }
}

/// The `Active` state of an accepted CONNECT.
fn activate(
    cx: &Cx<'_>,
    c: &Connect,
    negotiated: &Negotiated,
    info: Arc<ClientInfo>,
    terms: &Terms,
    attached: &Attached,
) -> Box<Active> {
    let v5 = c.protocol.is_v5();
    let rate = cx.broker.limits.max_publish_rate;
    Box::new(Active {
        session: attached.session.clone(),
        info,
        epoch: attached.epoch,
        version: c.protocol,
        // At most 65,535 x 1,500.
        keep_alive_ms: u32::from(negotiated.keep_alive).saturating_mul(1500),
        window: terms.window,
        max_packet_out: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
        aliases: None,
        alias_out_max: if v5 {
            c.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        connect_expiry_zero: v5 && terms.requested_expiry == 0,
        bridge: c.bridge && !v5,
        problem_info: c.properties.request_problem_information != Some(0),
        ending: Ending::Abnormal,
        enhanced: None,
        rate: (rate > 0).then(|| {
            Box::new(RateLimit {
                bucket: TokenBucket::full(rate, cx.now),
                paused_until: None,
            })
        }),
        held: None,
        hand_over_asked: false,
        hand_over_waits: false,
        denials_logged: 0,
        turn: super::turn::Turn::new(&cx.broker.turns, cx.now),
    })
}

/// CONNACK's properties for a v5 client.
fn connack_properties(
    cx: &Cx<'_>,
    c: &Connect,
    negotiated: &Negotiated,
    terms: &Terms,
    enhanced: Option<enhanced::Accepted>,
) -> Properties {
    let broker = cx.broker;
    let limits = &broker.limits;
    let mut props = Properties::default();
    props.assigned_client_identifier = negotiated.assigned.clone();
    props.server_keep_alive = negotiated.server_keep_alive;
    if terms.expiry_secs != terms.requested_expiry {
        props.session_expiry_interval = Some(terms.expiry_secs);
    }
    props.receive_maximum = Some(limits.receive_maximum);
    let prefix = &broker.features.response_information_prefix;
    if c.properties.request_response_information == Some(1) && !prefix.is_empty() {
        props.response_information = Some(format!("{prefix}{}", negotiated.client_id));
    }
    props.maximum_packet_size = Some(limits.max_packet_size);
    if limits.topic_alias_maximum > 0 {
        props.topic_alias_maximum = Some(limits.topic_alias_maximum);
    }
    if let Some(e) = enhanced {
        e.add_to(&mut props);
    }
    // A Starling bridge asks for this broker's name (its loop guard).
    let node = broker.node_id();
    if !node.is_empty()
        && (c.properties.user_properties)
            .iter()
            .any(|(k, _)| k == BRIDGE_PROPERTY)
    {
        (props.user_properties).push((NODE_PROPERTY.to_owned(), node.to_owned()));
    }
    props
}

/// User property of a CONNECT from a Starling bridge (value: the bridging broker's name).
pub const BRIDGE_PROPERTY: &str = "starling-bridge";
/// User property of the CONNACK answering it: this broker's name.
pub const NODE_PROPERTY: &str = "starling-node";
