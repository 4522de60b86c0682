//! CONNECT: negotiating the protocol level, client id, keep-alive, limits and session expiry,
//! refusing with the right CONNACK, attaching the session, and resending what a resumed
//! session had in flight.

use std::sync::Arc;
use std::time::Instant;

use super::deliver::encode_delivery;
use super::*;

impl Connection {
    pub(super) fn refuse_connect(
        &mut self,
        version: ProtocolVersion,
        reason: ReasonCode,
        detail: &str,
    ) -> Result<(), Closing> {
        self.refuse_connect_with(version, reason, Properties::default(), detail)
    }

    pub(super) fn refuse_connect_with(
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
        info!(peer = %self.peer(), protocol = version.level(), %reason, "connection refused: {detail}");
        Err(Closing::new(reason, detail))
    }

    pub(super) fn on_connect(&mut self, c: Box<Connect>, now: Instant) -> Result<(), Closing> {
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
    pub(super) fn accept_connect(
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
            aliases: None,
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
            peer = %self.peer(),
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
    pub(super) fn resend_inflight(&mut self, now: Instant) {
        let Stage::Active(a) = &self.stage else {
            return;
        };
        let st = a.session.lock();
        for f in st.inflight.iter() {
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
}
