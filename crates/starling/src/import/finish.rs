//! The end of the replay: the listeners mosquitto would open (explicit ones, the default one,
//! or local-only mode) turned into Starling listeners with their address, transport, TLS and
//! security, or left out with the reason; security options mosquitto would ignore are listed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use super::conf::Loc;
use super::map::{Listener, Plan, PlannedListener, Security, Setting, State, Val, listener_words};
use super::{Finding, FindingKind, ImportError};

impl State {
    pub(super) fn finish(mut self) -> Result<(Plan, Vec<Finding>), ImportError> {
        let mut listeners = std::mem::take(&mut self.listeners);
        let default = std::mem::take(&mut self.default);
        if self.local_only {
            // No listener, port or bind_address: mosquitto listens on localhost only and lets
            // anonymous clients in; listener options of the default listener are unused.
            self.ignore_default_listener(&default);
            if self.per_listener_settings {
                self.ignore_security(
                    &default.security,
                    "mosquitto runs in local-only mode (no listener, port or bind_address), \
                     whose listeners do not use it",
                );
            }
            let security = if self.per_listener_settings {
                Security::default()
            } else {
                self.global.clone()
            };
            let origin = "mosquitto's local-only mode (no listener in its config)".to_owned();
            let mut settings = vec![
                Setting {
                    key: "bind",
                    value: Val::Str("127.0.0.1:1883".into()),
                    from: None,
                },
                Setting {
                    key: "allow_anonymous",
                    value: Val::Bool(true),
                    from: None,
                },
            ];
            self.security_settings(&security, &mut settings, false);
            self.plan
                .listeners
                .push(PlannedListener { origin, settings });
            self.findings.push(Finding {
                loc: self.main.clone(),
                directive: "(no listener)".into(),
                kind: FindingKind::Approximated,
                reason: "mosquitto also listens on [::1]:1883 in local-only mode; add a \
                         listener on it if wanted"
                    .into(),
            });
        } else {
            if default.touched {
                let mut d = default;
                if d.port == 0 {
                    d.port = 1883;
                }
                listeners.push(d);
            } else if !default.security.is_empty() && self.per_listener_settings {
                self.ignore_security(
                    &default.security,
                    "it applies to the default listener, \
                                                          which the config does not open",
                );
            }
            if self.per_listener_settings && !self.global.is_empty() {
                let global = self.global.clone();
                self.ignore_security(
                    &global,
                    "set before per_listener_settings true: mosquitto ignores it",
                );
            }
            for l in &listeners {
                self.carry_listener(l)?;
            }
        }
        self.finish_bridges()?;
        if self.plan.listeners.is_empty() {
            return Err(ImportError::NoListener);
        }
        Ok((self.plan, self.findings))
    }

    fn ignore_default_listener(&mut self, default: &Listener) {
        let options = [
            ("cafile", &default.cafile),
            ("capath", &default.capath),
            ("certfile", &default.certfile),
            ("keyfile", &default.keyfile),
        ];
        for (name, (value, loc)) in options
            .into_iter()
            .filter_map(|(name, v)| v.as_ref().map(|v| (name, v)))
        {
            self.findings.push(Finding {
                loc: loc.clone(),
                directive: format!("{name} {value}"),
                kind: FindingKind::NotCarried,
                reason: "mosquitto runs in local-only mode (no listener, port or bind_address) \
                         and does not use it"
                    .into(),
            });
        }
    }

    fn ignore_security(&mut self, security: &Security, reason: &str) {
        let mut found = Vec::new();
        if let Some((v, loc)) = &security.password_file {
            found.push((loc.clone(), format!("password_file {v}")));
        }
        if let Some((v, loc)) = &security.acl_file {
            found.push((loc.clone(), format!("acl_file {v}")));
        }
        if let Some((v, loc)) = &security.allow_anonymous {
            found.push((loc.clone(), format!("allow_anonymous {v}")));
        }
        for (loc, directive) in found {
            self.findings.push(Finding {
                loc,
                directive,
                kind: FindingKind::NotCarried,
                reason: reason.to_owned(),
            });
        }
    }

    /// `allow_anonymous` (explicit: Starling's default differs on loopback), `password_file`
    /// and `acl_file`.
    fn security_settings(&self, security: &Security, settings: &mut Vec<Setting>, anonymous: bool) {
        if anonymous {
            let (value, from) = match &security.allow_anonymous {
                Some((v, loc)) => (*v, Some(loc.clone())),
                // mosquitto 2's default once a listener is defined.
                None => (false, None),
            };
            settings.push(Setting {
                key: "allow_anonymous",
                value: Val::Bool(value),
                from,
            });
        }
        for (key, value) in [
            ("password_file", &security.password_file),
            ("acl_file", &security.acl_file),
        ] {
            if let Some((v, loc)) = value {
                settings.push(Setting {
                    key,
                    value: Val::Str(v.clone()),
                    from: Some(loc.clone()),
                });
            }
        }
    }

    fn carry_listener(&mut self, l: &Listener) -> Result<(), ImportError> {
        let origin = match &l.defined {
            Some(loc) => format!("listener {} at {loc}", listener_words(l)),
            None => format!("mosquitto's default listener (port {})", l.port),
        };
        let leave_out = |s: &mut Self, loc: &Loc, directive: String, reason: String| {
            s.findings.push(Finding {
                loc: loc.clone(),
                directive,
                kind: FindingKind::NotCarried,
                reason: format!("{reason}; the listener ({origin}) is left out"),
            });
        };
        if !l.unsafe_to_carry.is_empty() {
            for (loc, directive, reason) in &l.unsafe_to_carry {
                leave_out(self, loc, directive.clone(), reason.clone());
            }
            return Ok(());
        }
        let loc = l.defined.clone().unwrap_or_else(|| self.main.clone());
        let bind = match self.bind_address(l, &loc) {
            Ok(bind) => bind,
            Err(reason) => {
                leave_out(
                    self,
                    &loc,
                    format!("listener {}", listener_words(l)),
                    reason,
                );
                return Ok(());
            }
        };
        let tls = match (&l.certfile, &l.keyfile) {
            (Some(_), Some(_)) => true,
            (None, None) => false,
            (Some((_, at)), None) | (None, Some((_, at))) => {
                leave_out(
                    self,
                    at,
                    "certfile/keyfile".into(),
                    "TLS needs both certfile and keyfile (mosquitto refuses one alone)".into(),
                );
                return Ok(());
            }
        };
        let protocol = match (l.websockets, tls) {
            (false, false) => "tcp",
            (false, true) => "tls",
            (true, false) => "ws",
            (true, true) => "wss",
        };
        let mut settings = vec![
            Setting {
                key: "bind",
                value: Val::Str(bind.to_string()),
                from: l.defined.clone(),
            },
            Setting {
                key: "protocol",
                value: Val::Str(protocol.into()),
                from: None,
            },
        ];
        let security = if self.per_listener_settings {
            l.security.clone()
        } else {
            self.global.clone()
        };
        self.security_settings(&security, &mut settings, true);
        if let Some((n, at)) = &l.max_connections
            && *n > 0
        {
            // A listener's bound (crate::config::bounds::LISTENER_CONNECTIONS).
            const MAX: i64 = 100_000_000;
            if *n > MAX {
                self.findings.push(Finding {
                    loc: at.clone(),
                    directive: format!("max_connections {n}"),
                    kind: FindingKind::Approximated,
                    reason: format!("a listener's max_connections is at most {MAX}"),
                });
            }
            settings.push(Setting {
                key: "max_connections",
                value: Val::Int((*n).min(MAX)),
                from: Some(at.clone()),
            });
        }
        if tls {
            if !self.tls_settings(l, &origin, &mut settings) {
                return Ok(());
            }
        } else {
            let tls_only = [("cafile", &l.cafile), ("capath", &l.capath)];
            for (name, (value, at)) in tls_only
                .into_iter()
                .filter_map(|(name, v)| v.as_ref().map(|v| (name, v)))
            {
                self.findings.push(Finding {
                    loc: at.clone(),
                    directive: format!("{name} {value}"),
                    kind: FindingKind::NotCarried,
                    reason: "the listener has no certfile and keyfile, so no TLS".into(),
                });
            }
            if l.require_certificate {
                self.findings.push(Finding {
                    loc: loc.clone(),
                    directive: "require_certificate true".into(),
                    kind: FindingKind::NotCarried,
                    reason: "the listener has no certfile and keyfile, so no TLS".into(),
                });
            }
        }
        if l.websockets {
            self.findings.push(Finding {
                loc: loc.clone(),
                directive: "protocol websockets".into(),
                kind: FindingKind::Approximated,
                reason: "Starling serves MQTT over WebSocket on one path, /mqtt (the \
                         listener's `path` changes it)"
                    .into(),
            });
        }
        self.plan
            .listeners
            .push(PlannedListener { origin, settings });
        Ok(())
    }

    /// The TLS keys; false when the listener must be left out.
    fn tls_settings(&mut self, l: &Listener, origin: &str, settings: &mut Vec<Setting>) -> bool {
        for (key, value) in [
            ("cert_file", &l.certfile),
            ("key_file", &l.keyfile),
            ("ca_file", &l.cafile),
        ] {
            if let Some((v, at)) = value {
                settings.push(Setting {
                    key,
                    value: Val::Str(v.clone()),
                    from: Some(at.clone()),
                });
            }
        }
        if let Some((dir, at)) = &l.capath {
            let needed = l.require_certificate && l.cafile.is_none();
            let reason = "Starling reads CA certificates from one PEM file (cafile); \
                          concatenate the certificates of the directory into one";
            self.findings.push(Finding {
                loc: at.clone(),
                directive: format!("capath {dir}"),
                kind: FindingKind::NotCarried,
                reason: if needed {
                    format!("{reason}; the listener ({origin}) is left out")
                } else {
                    reason.into()
                },
            });
            if needed {
                return false;
            }
        }
        if l.require_certificate {
            if l.cafile.is_none() {
                // Neither cafile nor capath: mosquitto cannot verify clients either.
                self.findings.push(Finding {
                    loc: l.defined.clone().unwrap_or_else(|| self.main.clone()),
                    directive: "require_certificate true".into(),
                    kind: FindingKind::NotCarried,
                    reason: format!(
                        "no cafile to verify client certificates against; the listener \
                         ({origin}) is left out"
                    ),
                });
                return false;
            }
            settings.push(Setting {
                key: "require_certificate",
                value: Val::Bool(true),
                from: None,
            });
            let identity = l.use_identity_as_username.as_ref().filter(|(v, _)| *v);
            let subject = l.use_subject_as_username.as_ref().filter(|(v, _)| *v);
            if let Some((_, at)) = identity {
                settings.push(Setting {
                    key: "use_identity_as_username",
                    value: Val::Str("cn".into()),
                    from: Some(at.clone()),
                });
            } else if let Some((_, at)) = subject {
                settings.push(Setting {
                    key: "use_identity_as_username",
                    value: Val::Str("subject".into()),
                    from: Some(at.clone()),
                });
            }
        } else {
            let unused = [&l.use_identity_as_username, &l.use_subject_as_username];
            for (_, at) in unused.into_iter().flatten() {
                self.findings.push(Finding {
                    loc: at.clone(),
                    directive: "use_identity_as_username / use_subject_as_username".into(),
                    kind: FindingKind::NotCarried,
                    reason: "has no effect without require_certificate true".into(),
                });
            }
        }
        true
    }

    /// The address to bind, or why there is none.
    fn bind_address(&mut self, l: &Listener, loc: &Loc) -> Result<SocketAddr, String> {
        let ipv6 = l.socket_domain.as_deref() == Some("ipv6");
        let Some(host) = &l.host else {
            if l.socket_domain.is_none() {
                self.findings.push(Finding {
                    loc: loc.clone(),
                    directive: format!("listener {}", listener_words(l)),
                    kind: FindingKind::Approximated,
                    reason: format!(
                        "mosquitto listens on every IPv4 and IPv6 address; the listener binds \
                         0.0.0.0:{} (add one on [::]:{} for IPv6)",
                        l.port, l.port
                    ),
                });
            }
            let any: IpAddr = if ipv6 {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            return Ok(SocketAddr::new(any, l.port));
        };
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, l.port));
        }
        if host == "localhost" {
            let ip: IpAddr = if ipv6 {
                Ipv6Addr::LOCALHOST.into()
            } else {
                Ipv4Addr::LOCALHOST.into()
            };
            return Ok(SocketAddr::new(ip, l.port));
        }
        let resolved = (host.as_str(), l.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .find(|a| a.is_ipv6() == ipv6)
            .ok_or_else(|| format!("{host} has no address of the listener's family"))?;
        self.findings.push(Finding {
            loc: loc.clone(),
            directive: format!("listener {}", listener_words(l)),
            kind: FindingKind::Approximated,
            reason: format!(
                "{host} resolved now to {}; Starling binds addresses",
                resolved.ip()
            ),
        });
        Ok(resolved)
    }
}
