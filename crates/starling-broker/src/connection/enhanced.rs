//! MQTT 5 enhanced authentication on one connection (spec 4.12): the exchange of AUTH
//! packets between CONNECT and CONNACK, and re-authentication of a connected client.
//!
//! ```text
//! CONNECT (method M, data)  ─▶ exchange.start ─▶ Continue: AUTH 0x18 (M, data) ◀─┐
//! AUTH 0x18 (M, data)       ─▶ exchange.next  ─┘                                  │ at most
//!                                              ├▶ Success: CONNACK 0x00 (M, data) │ MAX_AUTH_STEPS
//!                                              └▶ Fail: CONNACK 0x86 / 0x87, close
//! AUTH 0x19 (M, data) after CONNACK ─▶ the same with AUTH 0x18 / AUTH 0x00, or DISCONNECT
//!                                      0x87; other packets keep flowing meanwhile
//! ```
//!
//! Until CONNACK the client may send only AUTH and DISCONNECT (MQTT-3.1.2-30), every AUTH
//! names the CONNECT's method (MQTT-4.12.0-5), and a client that named no method sends no
//! AUTH (MQTT-4.12.0-7): anything else is a protocol error. The CONNECT timeout bounds the
//! first exchange; a re-authentication gets as long.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_auth::{AuthExchange, AuthStep, DenyReason, EnhancedAuth, ExchangeInfo, Grant};
use starling_proto::{Auth, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
use tracing::info;

use super::access::Halt;
use super::active::Active;
use super::connecting::{self, Negotiated};
use super::{Close, Cx, Flow, State, closed};

/// Most AUTH packets a client may send in one exchange (SCRAM needs one, or two when the
/// client-first message does not come with CONNECT).
pub const MAX_AUTH_STEPS: u32 = 8;

/// The `Authenticating` state: a CONNECT waiting for its authentication exchange to finish.
#[derive(Debug)]
pub(super) struct Authenticating {
    connect: Box<Connect>,
    negotiated: Negotiated,
    method: Arc<dyn EnhancedAuth>,
    exchange: Box<dyn AuthExchange>,
    steps: u32,
}

/// A finished exchange, for CONNACK.
#[derive(Debug)]
pub(super) struct Accepted {
    method: Arc<dyn EnhancedAuth>,
    data: Option<Vec<u8>>,
}

impl Accepted {
    /// The connection's enhanced authentication state once it is active.
    pub(super) fn session(&self) -> Box<EnhancedSession> {
        Box::new(EnhancedSession {
            method: self.method.clone(),
            reauth: None,
        })
    }

    /// Adds the method and the final data to CONNACK's properties (MQTT-4.12.0-5).
    pub(super) fn add_to(self, props: &mut Properties) {
        props.authentication_method = Some(self.method.method().to_owned());
        props.authentication_data = self.data.filter(|d| !d.is_empty()).map(Bytes::from);
    }
}

/// The enhanced authentication of an active connection.
#[derive(Debug)]
pub(super) struct EnhancedSession {
    method: Arc<dyn EnhancedAuth>,
    /// A re-authentication under way.
    reauth: Option<Reauth>,
}

#[derive(Debug)]
struct Reauth {
    exchange: Box<dyn AuthExchange>,
    steps: u32,
    deadline: Option<Instant>,
}

fn auth_packet(reason: ReasonCode, method: &str, data: Option<Vec<u8>>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: starling_proto::PropertyValues {
            authentication_method: Some(method.to_owned()),
            authentication_data: data.filter(|d| !d.is_empty()).map(Bytes::from),
            ..starling_proto::PropertyValues::default()
        }
        .into(),
    })
}

/// What a re-authentication step leads to.
enum ReauthOutcome {
    Send(Packet),
    Done(Packet),
    Refused(ReasonCode, &'static str),
}

fn protocol_error(cx: &mut Cx<'_>, detail: &str) -> State {
    cx.broker.metrics.protocol_errors.inc();
    let v5 = ProtocolVersion::V5;
    closed(cx.refuse_connect(v5, ReasonCode::ProtocolError, Properties::default(), detail))
}

impl Authenticating {
    /// Starts the exchange of a CONNECT that named `method` (offered by this listener).
    pub(super) fn begin(
        cx: &mut Cx<'_>,
        c: Box<Connect>,
        negotiated: Negotiated,
        method: Arc<dyn EnhancedAuth>,
    ) -> State {
        let mut exchange = method.exchange();
        let step = {
            let info = ExchangeInfo {
                client_id: &negotiated.client_id,
                username: c.username.as_deref(),
                reauthentication: false,
                peer: cx.link.peer,
                listener: cx.link.access.as_ref().map_or("", |a| &a.listener.name),
            };
            exchange.start(&info, c.properties.authentication_data.as_deref())
        };
        let pending = Box::new(Self {
            connect: c,
            negotiated,
            method,
            exchange,
            steps: 0,
        });
        pending.step(cx, step)
    }

    fn step(self: Box<Self>, cx: &mut Cx<'_>, step: AuthStep) -> State {
        match step {
            AuthStep::Continue(data) => {
                let reason = ReasonCode::ContinueAuthentication;
                let packet = auth_packet(reason, self.method.method(), Some(data));
                cx.link
                    .send(&cx.broker.metrics, ProtocolVersion::V5, &packet);
                State::Authenticating(self)
            }
            AuthStep::Success {
                username,
                data,
                acl,
                valid_for,
            } => {
                let Self {
                    connect,
                    negotiated,
                    method,
                    ..
                } = *self;
                cx.keep_grant(Grant {
                    username: None,
                    acl,
                    valid_for,
                });
                let username = Some(Arc::from(username));
                match cx.admit(&connect, &negotiated.client_id, username, false) {
                    Ok(username) => {
                        let accepted = Accepted { method, data };
                        connecting::accept(cx, connect, negotiated, username, Some(accepted))
                    }
                    Err(Halt::Refused(close)) => closed(close),
                    // `admit` refuses rather than park here.
                    Err(Halt::Parked) => closed(Close::new(
                        ReasonCode::NotAuthorized,
                        "will topic check could not be answered",
                    )),
                }
            }
            AuthStep::Fail(reason) => {
                let client_id = &self.negotiated.client_id;
                closed(cx.refuse_authentication(&self.connect, client_id, reason))
            }
        }
    }

    /// A packet between CONNECT and CONNACK of an enhanced authentication: AUTH 0x18 with the
    /// same method goes on with the exchange, DISCONNECT ends it, anything else is a protocol
    /// error answered with CONNACK 0x82.
    pub(super) fn on_packet(mut self: Box<Self>, cx: &mut Cx<'_>, packet: Packet) -> State {
        let auth = match packet {
            Packet::Auth(a) => a,
            Packet::Disconnect(d) => {
                return closed(Close::new(
                    d.reason,
                    "client disconnected during authentication",
                ));
            }
            other => {
                let detail = format!(
                    "{:?} before CONNACK of an enhanced authentication (only AUTH and DISCONNECT \
                     are allowed)",
                    other.packet_type()
                );
                return protocol_error(cx, &detail);
            }
        };
        if auth.reason != ReasonCode::ContinueAuthentication {
            return protocol_error(
                cx,
                "AUTH during authentication must have reason 0x18 (continue authentication)",
            );
        }
        if auth.properties.authentication_method.as_deref() != Some(self.method.method()) {
            return protocol_error(cx, "AUTH with another authentication method");
        }
        self.steps += 1;
        if self.steps > MAX_AUTH_STEPS {
            return closed(cx.refuse_auth_with(
                &self.connect,
                &self.negotiated.client_id,
                ReasonCode::NotAuthorized,
                "authentication exchange too long",
            ));
        }
        let data = auth.properties.authentication_data.as_deref();
        let step = self.exchange.next(data);
        self.step(cx, step)
    }
}

impl Active {
    /// When a re-authentication under way runs out of time.
    pub(super) fn reauth_deadline(&self) -> Option<Instant> {
        self.enhanced.as_ref()?.reauth.as_ref()?.deadline
    }

    /// AUTH from an active client: starts or continues a re-authentication.
    pub(super) fn on_reauth(&mut self, cx: &mut Cx<'_>, auth: Auth) -> Flow {
        let step = match self.reauth_step(cx, &auth) {
            Ok(step) => step,
            Err(detail) => return self.protocol_error(cx, detail),
        };
        let Some(session) = self.enhanced.as_mut() else {
            return ControlFlow::Continue(());
        };
        let method = session.method.method();
        let outcome = match step {
            AuthStep::Continue(d) => {
                let reason = ReasonCode::ContinueAuthentication;
                ReauthOutcome::Send(auth_packet(reason, method, Some(d)))
            }
            AuthStep::Success {
                username,
                data,
                acl,
                valid_for,
            } => {
                session.reauth = None;
                if self.info.username.as_deref() == Some(username.as_str()) {
                    // The new credentials' rules and end replace the old ones.
                    cx.keep_grant(Grant {
                        username: None,
                        acl,
                        valid_for,
                    });
                    ReauthOutcome::Done(auth_packet(ReasonCode::Success, method, data))
                } else {
                    let detail = "re-authenticated as another user";
                    ReauthOutcome::Refused(ReasonCode::NotAuthorized, detail)
                }
            }
            AuthStep::Fail(reason) => {
                session.reauth = None;
                // DISCONNECT has no 0x86 (spec 3.14.2.1): a failed re-authentication is 0x87.
                let (code, detail) = match reason {
                    DenyReason::BadUserNameOrPassword => (
                        ReasonCode::NotAuthorized,
                        "re-authentication failed: bad user name or password",
                    ),
                    DenyReason::NotAuthorized => (
                        ReasonCode::NotAuthorized,
                        "re-authentication failed: not authorized",
                    ),
                    DenyReason::Busy => (
                        ReasonCode::ServerBusy,
                        "re-authentication not checked: server busy",
                    ),
                };
                ReauthOutcome::Refused(code, detail)
            }
        };
        match outcome {
            ReauthOutcome::Send(packet) => self.send(cx, &packet),
            ReauthOutcome::Done(packet) => {
                self.send(cx, &packet);
                info!(client_id = %self.client_id(), peer = %cx.link.peer(), "client re-authenticated");
            }
            ReauthOutcome::Refused(reason, detail) => {
                cx.broker.metrics.auth_refused.inc();
                return self.fail(cx, reason, detail);
            }
        }
        ControlFlow::Continue(())
    }

    /// The exchange step an AUTH packet leads to, or the protocol error it is.
    fn reauth_step(&mut self, cx: &Cx<'_>, auth: &Auth) -> Result<AuthStep, &'static str> {
        let timeout = Duration::from_secs(cx.broker.limits.connect_timeout_secs);
        let Some(session) = self.enhanced.as_mut() else {
            return Err("AUTH on a connection without an authentication method");
        };
        if auth.properties.authentication_method.as_deref() != Some(session.method.method()) {
            return Err("AUTH with another authentication method");
        }
        let data = auth.properties.authentication_data.as_deref();
        match (auth.reason, session.reauth.as_mut()) {
            (ReasonCode::ReAuthenticate, None) => {
                let mut exchange = session.method.exchange();
                let info = ExchangeInfo {
                    client_id: self.session.client_id(),
                    username: self.info.username.as_deref(),
                    reauthentication: true,
                    peer: cx.link.peer,
                    listener: cx.link.access.as_ref().map_or("", |a| &*a.listener.name),
                };
                let step = exchange.start(&info, data);
                session.reauth = Some(Reauth {
                    exchange,
                    steps: 1,
                    deadline: cx.now.checked_add(timeout),
                });
                Ok(step)
            }
            (ReasonCode::ContinueAuthentication, Some(r)) => {
                r.steps += 1;
                if r.steps > MAX_AUTH_STEPS {
                    Ok(AuthStep::Fail(DenyReason::NotAuthorized))
                } else {
                    Ok(r.exchange.next(data))
                }
            }
            (ReasonCode::ReAuthenticate, Some(_)) => Err("re-authentication already under way"),
            (ReasonCode::ContinueAuthentication, None) => {
                Err("AUTH 0x18 without an authentication exchange")
            }
            _ => Err("a client's AUTH must have reason 0x18 or 0x19"),
        }
    }

    /// Closes a connection whose re-authentication did not finish within the CONNECT timeout
    /// (DISCONNECT 0x87).
    pub(super) fn check_reauth_timeout(&mut self, cx: &mut Cx<'_>) -> Flow {
        if self.reauth_deadline().is_some_and(|d| cx.now >= d) {
            cx.broker.metrics.auth_refused.inc();
            let detail = "re-authentication not completed in time";
            return self.fail(cx, ReasonCode::NotAuthorized, detail);
        }
        ControlFlow::Continue(())
    }
}
