//! The bridges read from mosquitto's files, finished: each checked for what it needs (an
//! address, TLS, topics), its topics and options mapped to a `[[bridge]]` table, the table
//! checked by Starling's own validation, and put in the plan or left out with the reasons.

use serde::Deserialize;

use super::*;

impl State {
    /// The bridges mosquitto would start, into the plan (or left out, with the reasons).
    pub(in crate::import) fn finish_bridges(&mut self) -> Result<(), ImportError> {
        for b in std::mem::take(&mut self.bridges) {
            self.finish_bridge(b)?;
        }
        Ok(())
    }

    fn note(&mut self, loc: &Loc, directive: String, kind: FindingKind, reason: String) {
        self.findings.push(Finding {
            loc: loc.clone(),
            directive,
            kind,
            reason,
        });
    }

    fn finish_bridge(&mut self, mut b: Bridge) -> Result<(), ImportError> {
        let connection = format!("connection {}", b.name);
        let Some(((addresses, address_text), address_loc)) = b.addresses.clone() else {
            return Err(ImportError::Invalid {
                loc: b.loc.clone(),
                directive: connection,
                reason: "the bridge has no address".into(),
            });
        };
        if b.topics.is_empty() {
            return Err(ImportError::Invalid {
                loc: b.loc.clone(),
                directive: connection,
                reason: "the bridge has no topic".into(),
            });
        }
        let who = format!("bridge {}", b.name);
        if b.name.len() > 64 || b.name.contains(['/', '+', '#']) {
            b.left_out.insert(
                0,
                (
                    b.loc.clone(),
                    connection.clone(),
                    "Starling's bridge names are 1 to 64 bytes without '/', '+' or '#'".into(),
                ),
            );
        }
        let tls = b.tls();
        if let Some(d) = &b.ocsp {
            if tls {
                b.left_out.push((
                    d.loc.clone(),
                    d.text(),
                    "Starling does not check OCSP; connecting without the check would accept a \
                     revoked certificate"
                        .into(),
                ));
            } else {
                self.note(
                    &d.loc,
                    d.text(),
                    FindingKind::NotCarried,
                    format!("{who}: {NO_TLS}"),
                );
            }
        }
        if tls {
            for (name, file) in [
                ("bridge_cafile", &b.cafile),
                ("bridge_certfile", &b.certfile),
                ("bridge_keyfile", &b.keyfile),
            ] {
                if let Some((path, loc)) = file
                    && !std::path::Path::new(path).is_file()
                {
                    b.left_out.push((
                        loc.clone(),
                        format!("{name} {path}"),
                        "not a readable file here, and Starling checks the files a bridge \
                         names when it starts; import again where the file is, or add the \
                         bridge by hand"
                            .into(),
                    ));
                }
            }
        }
        if self.plan.bridges.len() >= MAX_BRIDGES {
            b.left_out.push((
                b.loc.clone(),
                connection.clone(),
                format!("Starling runs at most {MAX_BRIDGES} bridges"),
            ));
        }
        let leave_out = |s: &mut Self, left: &[(Loc, String, String)]| {
            for (loc, directive, reason) in left {
                s.note(
                    loc,
                    directive.clone(),
                    FindingKind::NotCarried,
                    format!("{who}: {reason}; the bridge is left out"),
                );
            }
        };
        if !b.left_out.is_empty() {
            leave_out(self, &b.left_out);
            return Ok(());
        }

        // Findings about what is carried over are dropped if Starling refuses the bridge.
        let mark = self.findings.len();
        let from = |loc: &Loc| Some(loc.clone());
        let mut settings = vec![
            Setting {
                key: "name",
                value: Val::Str(b.name.clone()),
                from: from(&b.loc),
            },
            Setting {
                key: "address",
                value: match &addresses[..] {
                    [one] => Val::Str(one.clone()),
                    _ => Val::List(addresses.clone()),
                },
                from: from(&address_loc),
            },
        ];
        match &b.round_robin {
            Some(d) => self.note(
                &d.loc,
                d.text(),
                FindingKind::NotCarried,
                format!(
                    "{who}: Starling tries the addresses in order from the first at every \
                     connection, and stays on the one it reached"
                ),
            ),
            None if addresses.len() > 1 => self.note(
                &address_loc,
                address_text,
                FindingKind::Approximated,
                format!(
                    "{who}: mosquitto goes back to the first address while connected to \
                     another; Starling tries the addresses in order from the first at every \
                     connection and stays on the one it reached"
                ),
            ),
            None => {}
        }
        // mosquitto's default is MQTT 3.1.1, Starling's MQTT 5: always written.
        let protocol = match &b.protocol {
            Some((v, loc)) => (*v, from(loc)),
            None => ("mqttv311", None),
        };
        settings.push(Setting {
            key: "protocol",
            value: Val::Str(protocol.0.into()),
            from: protocol.1,
        });
        for (key, value) in [("client_id", &b.client_id), ("username", &b.username)] {
            if let Some((v, loc)) = value {
                settings.push(Setting {
                    key,
                    value: Val::Str(v.clone()),
                    from: from(loc),
                });
            }
        }
        if let Some((v, loc)) = &b.password {
            if b.username.is_none() && protocol.0 != "mqttv5" {
                self.note(
                    loc,
                    "remote_password ****".into(),
                    FindingKind::NotCarried,
                    format!(
                        "{who}: MQTT 3.x sends a password only with a username \
                         (remote_username); mosquitto's bridge cannot connect so"
                    ),
                );
            } else {
                settings.push(Setting {
                    key: "password",
                    value: Val::Str(v.clone()),
                    from: from(loc),
                });
            }
        }
        if tls {
            settings.push(Setting {
                key: "tls",
                value: Val::Bool(true),
                from: b
                    .cafile
                    .as_ref()
                    .or(b.capath.as_ref())
                    .map(|(_, l)| l.clone()),
            });
            for (key, value) in [
                ("ca_file", &b.cafile),
                ("cert_file", &b.certfile),
                ("key_file", &b.keyfile),
            ] {
                if let Some((v, loc)) = value {
                    settings.push(Setting {
                        key,
                        value: Val::Str(v.clone()),
                        from: from(loc),
                    });
                }
            }
            if let Some((v, loc)) = &b.insecure {
                settings.push(Setting {
                    key: "insecure",
                    value: Val::Bool(*v),
                    from: from(loc),
                });
            }
            if let Some((dir, loc)) = &b.capath {
                let (kind, reason) = if b.cafile.is_some() {
                    (
                        FindingKind::NotCarried,
                        "Starling bridges read CA certificates from one file (bridge_cafile \
                         is carried over); add the directory's certificates to it if needed",
                    )
                } else {
                    (
                        FindingKind::Approximated,
                        "Starling bridges read CA certificates from one file: the remote is \
                         verified against the system's CA certificates; concatenate the \
                         directory's certificates into one file and set ca_file if they \
                         differ",
                    )
                };
                self.note(
                    loc,
                    format!("bridge_capath {dir}"),
                    kind,
                    format!("{who}: {reason}"),
                );
            }
            for (d, reason) in std::mem::take(&mut b.tls_notes) {
                if let Some(reason) = reason {
                    self.note(
                        &d.loc,
                        d.text(),
                        FindingKind::NotCarried,
                        format!("{who}: {reason}"),
                    );
                }
            }
        } else {
            for (d, _) in std::mem::take(&mut b.tls_notes) {
                self.note(
                    &d.loc,
                    d.text(),
                    FindingKind::NotCarried,
                    format!("{who}: {NO_TLS}"),
                );
            }
        }
        if let Some((v, loc)) = &b.clean_start {
            settings.push(Setting {
                key: "clean_start",
                value: Val::Bool(*v),
                from: from(loc),
            });
        }
        if let Some((n, loc)) = &b.keepalive {
            settings.push(Setting {
                key: "keepalive_secs",
                value: Val::Int(*n),
                from: from(loc),
            });
        }
        // mosquitto's default: a delay from 5 s up to 30 s.
        let (min, max, restart_from) = match &b.restart {
            None => (5, 30, None),
            Some((base, cap, d)) => {
                const MAX: i64 = 86_400;
                let (min, max) = (*base, cap.unwrap_or(*base));
                let reason = if max > MAX {
                    format!("{who}: Starling waits at most {MAX} s between attempts")
                } else if cap.is_some() {
                    format!(
                        "{who}: reconnect_min_secs {min}, reconnect_max_secs {max}: Starling \
                         doubles the delay from the one to the other, each drawn between half \
                         and all of it (mosquitto: decorrelated jitter)"
                    )
                } else {
                    format!(
                        "{who}: reconnect_min_secs = reconnect_max_secs = {min}: Starling \
                         draws each delay between half and all of it"
                    )
                };
                self.note(&d.loc, d.text(), FindingKind::Approximated, reason);
                (min.min(MAX), max.min(MAX), from(&d.loc))
            }
        };
        settings.push(Setting {
            key: "reconnect_min_secs",
            value: Val::Int(min),
            from: restart_from.clone(),
        });
        settings.push(Setting {
            key: "reconnect_max_secs",
            value: Val::Int(max),
            from: restart_from,
        });
        if let Some((v, loc)) = &b.try_private {
            settings.push(Setting {
                key: "try_private",
                value: Val::Bool(*v),
                from: from(loc),
            });
        }
        if b.notifications.is_none() {
            self.note(
                &b.loc,
                "(notifications: mosquitto's default true)".into(),
                FindingKind::NotCarried,
                format!("{who}: {NO_NOTIFICATIONS}"),
            );
        }
        let topics = b
            .topics
            .iter()
            .map(|t| {
                let mut s = vec![
                    Setting {
                        key: "pattern",
                        value: Val::Str(t.pattern.clone()),
                        from: from(&t.loc),
                    },
                    Setting {
                        key: "direction",
                        value: Val::Str(t.direction.into()),
                        from: None,
                    },
                    Setting {
                        key: "qos",
                        value: Val::Int(t.qos),
                        from: None,
                    },
                ];
                for (key, prefix) in [
                    ("local_prefix", &t.local_prefix),
                    ("remote_prefix", &t.remote_prefix),
                ] {
                    if !prefix.is_empty() {
                        s.push(Setting {
                            key,
                            value: Val::Str(prefix.clone()),
                            from: None,
                        });
                    }
                }
                s
            })
            .collect();
        let planned = PlannedBridge {
            origin: format!("connection {} at {}", b.name, b.loc),
            settings,
            topics,
        };
        // What Starling checks at start (the files it names exist, topics it can map): a
        // bridge it would refuse is left out, with its reason.
        if let Err(reason) = self.check_bridge(&planned) {
            self.findings.truncate(mark);
            leave_out(
                self,
                &[(
                    b.loc.clone(),
                    connection,
                    format!("Starling refuses it: {reason}"),
                )],
            );
            return Ok(());
        }
        self.plan.bridges.push(planned);
        Ok(())
    }

    fn check_bridge(&self, planned: &PlannedBridge) -> Result<(), String> {
        #[derive(Deserialize)]
        struct One {
            bridge: Vec<BridgeConfig>,
        }
        let text = crate::import::emit::bridge(planned);
        let one: One = toml::from_str(&text).map_err(|e| e.to_string())?;
        for b in &one.bridge {
            b.validate(self.plan.bridges.len())
                .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }
}
