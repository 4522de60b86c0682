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

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_auth::{AuthExchange, AuthStep, DenyReason, EnhancedAuth, ExchangeInfo};
use starling_proto::{Auth, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
use tracing::info;

use super::{Active, Closing, Connection, Negotiated, Stage};

/// Most AUTH packets a client may send in one exchange (SCRAM needs one, or two when the
/// client-first message does not come with CONNECT).
pub const MAX_AUTH_STEPS: u32 = 8;

/// A CONNECT waiting for its authentication exchange to finish.
#[derive(Debug)]
pub(super) struct Pending {
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
    deadline: Instant,
}

/// When a re-authentication under way runs out of time.
pub(super) fn reauth_deadline(a: &Active) -> Option<Instant> {
    a.enhanced.as_ref()?.reauth.as_ref().map(|r| r.deadline)
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
    Done(Packet, Arc<str>),
    Refused(ReasonCode, &'static str),
}

impl Connection {
    /// Starts the exchange of a CONNECT that named `method` (offered by this listener).
    pub(super) fn begin_enhanced_auth(
        &mut self,
        c: Box<Connect>,
        negotiated: Negotiated,
        method: Arc<dyn EnhancedAuth>,
        now: Instant,
    ) -> Result<(), Closing> {
        let mut exchange = method.exchange();
        let step = {
            let info = self.connect_info(&negotiated.client_id, c.username.as_deref());
            exchange.start(&info, c.properties.authentication_data.as_deref())
        };
        let pending = Box::new(Pending {
            connect: c,
            negotiated,
            method,
            exchange,
            steps: 0,
        });
        self.connect_step(pending, step, now)
    }

    fn connect_info<'a>(
        &'a self,
        client_id: &'a str,
        username: Option<&'a str>,
    ) -> ExchangeInfo<'a> {
        ExchangeInfo {
            client_id,
            username,
            reauthentication: false,
            peer: self.peer,
            listener: self.access.as_ref().map_or("", |a| &a.listener.name),
        }
    }

    fn connect_step(
        &mut self,
        p: Box<Pending>,
        step: AuthStep,
        now: Instant,
    ) -> Result<(), Closing> {
        match step {
            AuthStep::Continue(data) => {
                let packet = auth_packet(
                    ReasonCode::ContinueAuthentication,
                    p.method.method(),
                    Some(data),
                );
                self.stage = Stage::Authenticating(p);
                self.encode(&packet);
                Ok(())
            }
            AuthStep::Success { username, data } => {
                let Pending {
                    connect,
                    negotiated,
                    method,
                    ..
                } = *p;
                let username =
                    self.admit(&connect, &negotiated.client_id, Some(Arc::from(username)))?;
                let accepted = Accepted { method, data };
                self.accept_connect(connect, negotiated, username, Some(accepted), now)
            }
            AuthStep::Fail(reason) => {
                Err(self.refuse_authentication(&p.connect, &p.negotiated.client_id, reason))
            }
        }
    }

    /// A packet between CONNECT and CONNACK of an enhanced authentication: AUTH 0x18 with the
    /// same method goes on with the exchange, DISCONNECT ends it, anything else is a protocol
    /// error answered with CONNACK 0x82.
    pub(super) fn on_packet_while_authenticating(
        &mut self,
        packet: Packet,
        now: Instant,
    ) -> Result<(), Closing> {
        let Stage::Authenticating(mut p) =
            std::mem::replace(&mut self.stage, Stage::AwaitingConnect)
        else {
            return Ok(());
        };
        let auth = match packet {
            Packet::Auth(a) => a,
            Packet::Disconnect(d) => {
                return Err(Closing::new(
                    d.reason,
                    "client disconnected during authentication",
                ));
            }
            other => {
                return self.connect_protocol_error(&format!(
                    "{:?} before CONNACK of an enhanced authentication (only AUTH and DISCONNECT \
                     are allowed)",
                    other.packet_type()
                ));
            }
        };
        if auth.reason != ReasonCode::ContinueAuthentication {
            return self.connect_protocol_error(
                "AUTH during authentication must have reason 0x18 (continue authentication)",
            );
        }
        if auth.properties.authentication_method.as_deref() != Some(p.method.method()) {
            return self.connect_protocol_error("AUTH with another authentication method");
        }
        p.steps += 1;
        if p.steps > MAX_AUTH_STEPS {
            return Err(self.refuse_auth_with(
                &p.connect,
                &p.negotiated.client_id,
                ReasonCode::NotAuthorized,
                "authentication exchange too long",
            ));
        }
        let step = p
            .exchange
            .next(auth.properties.authentication_data.as_deref());
        self.connect_step(p, step, now)
    }

    fn connect_protocol_error(&mut self, detail: &str) -> Result<(), Closing> {
        self.broker.metrics.protocol_errors.inc();
        self.refuse_connect(ProtocolVersion::V5, ReasonCode::ProtocolError, detail)
    }

    /// AUTH from an active client: starts or continues a re-authentication.
    pub(super) fn on_reauth(&mut self, auth: Auth, now: Instant) -> Result<(), Closing> {
        let timeout = Duration::from_secs(self.broker.limits.connect_timeout_secs);
        let listener = self.access.as_ref().map_or("", |a| &*a.listener.name);
        let peer = self.peer;
        let Stage::Active(a) = &mut self.stage else {
            return Ok(());
        };
        let Some(session) = a.enhanced.as_mut() else {
            return self.protocol_error("AUTH on a connection without an authentication method");
        };
        if auth.properties.authentication_method.as_deref() != Some(session.method.method()) {
            return self.protocol_error("AUTH with another authentication method");
        }
        let data = auth.properties.authentication_data.as_deref();
        let step = match (auth.reason, session.reauth.as_mut()) {
            (ReasonCode::ReAuthenticate, None) => {
                let mut exchange = session.method.exchange();
                let info = ExchangeInfo {
                    client_id: &a.client_id,
                    username: a.username.as_deref(),
                    reauthentication: true,
                    peer,
                    listener,
                };
                let step = exchange.start(&info, data);
                session.reauth = Some(Reauth {
                    exchange,
                    steps: 1,
                    deadline: now + timeout,
                });
                step
            }
            (ReasonCode::ContinueAuthentication, Some(r)) => {
                r.steps += 1;
                if r.steps > MAX_AUTH_STEPS {
                    AuthStep::Fail(DenyReason::NotAuthorized)
                } else {
                    r.exchange.next(data)
                }
            }
            (ReasonCode::ReAuthenticate, Some(_)) => {
                return self.protocol_error("re-authentication already under way");
            }
            (ReasonCode::ContinueAuthentication, None) => {
                return self.protocol_error("AUTH 0x18 without an authentication exchange");
            }
            _ => return self.protocol_error("a client's AUTH must have reason 0x18 or 0x19"),
        };
        let method = session.method.method();
        let outcome = match step {
            AuthStep::Continue(d) => ReauthOutcome::Send(auth_packet(
                ReasonCode::ContinueAuthentication,
                method,
                Some(d),
            )),
            AuthStep::Success { username, data } => {
                session.reauth = None;
                if a.username.as_deref() == Some(username.as_str()) {
                    ReauthOutcome::Done(
                        auth_packet(ReasonCode::Success, method, data),
                        a.client_id.clone(),
                    )
                } else {
                    ReauthOutcome::Refused(
                        ReasonCode::NotAuthorized,
                        "re-authenticated as another user",
                    )
                }
            }
            AuthStep::Fail(reason) => {
                session.reauth = None;
                // DISCONNECT has no 0x86 (spec 3.14.2.1): a failed re-authentication is 0x87.
                ReauthOutcome::Refused(
                    ReasonCode::NotAuthorized,
                    match reason {
                        DenyReason::BadUserNameOrPassword => {
                            "re-authentication failed: bad user name or password"
                        }
                        DenyReason::NotAuthorized => "re-authentication failed: not authorized",
                    },
                )
            }
        };
        match outcome {
            ReauthOutcome::Send(packet) => {
                self.encode(&packet);
                Ok(())
            }
            ReauthOutcome::Done(packet, client_id) => {
                self.encode(&packet);
                info!(client_id = %client_id, peer = %self.peer(), "client re-authenticated");
                Ok(())
            }
            ReauthOutcome::Refused(reason, detail) => {
                self.broker.metrics.auth_refused.inc();
                self.fail(reason, detail)
            }
        }
    }

    /// Closes a connection whose re-authentication did not finish within the CONNECT timeout
    /// (DISCONNECT 0x87).
    pub(super) fn check_reauth_timeout(&mut self, now: Instant) -> Result<(), Closing> {
        let Stage::Active(a) = &self.stage else {
            return Ok(());
        };
        if reauth_deadline(a).is_some_and(|d| now >= d) {
            self.broker.metrics.auth_refused.inc();
            return self.fail(
                ReasonCode::NotAuthorized,
                "re-authentication not completed in time",
            );
        }
        Ok(())
    }
}
