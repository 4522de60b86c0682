//! The steps: what each does to the broker and to the model.

use super::*;

impl World {
    pub(crate) fn connect(&mut self, client: usize, clean: bool) {
        let profile = self.profiles[client];
        let expiry = profile.session_expiry(clean);
        let expected = !clean && self.live.get(&client).is_some_and(|s| s.expiry != 0);
        let mut packet = connect(profile.version(), NAMES[client]);
        packet.clean_start = clean;
        packet.keep_alive = KEEP_ALIVE;
        if profile.v5 && profile.expiry > 0 {
            packet.properties.session_expiry_interval = Some(profile.expiry);
        }
        // A client reconnecting gives up its old connection and what arrives on it.
        let old = self.conn[client].take();
        self.forget_connection(client);
        self.pending[client] = None;
        let c = self.sim.connect(packet);
        if let Some(old) = old {
            self.sim.take(old);
        }
        for &earlier in &self.history[client] {
            assert!(
                self.sim.is_gone(earlier),
                "promise 5: {} connected again and its connection {earlier:?} is still open\n{}",
                NAMES[client],
                self.trace()
            );
        }
        self.history[client].push(c);
        self.conn[client] = Some(c);
        // The broker's own state changes with the CONNECT, whatever the client has heard.
        if expected {
            let s = self.live.get_mut(&client).expect("resumed");
            s.connected = true;
            s.disconnected_at = None;
            s.stored_connected = false;
            s.expiry = expiry;
        } else {
            let generation = self.next_generation;
            self.next_generation += 1;
            let s = Session {
                generation,
                expiry,
                connected: true,
                disconnected_at: None,
                stored_connected: false,
                subs: BTreeMap::new(),
            };
            self.live.insert(client, s);
        }
        self.pending[client] = Some(Pending { expected });
        self.connack(client);
    }

    /// Takes the CONNACK of a client's new connection, if it came: checks Session Present,
    /// and the client acts on it (resends what it has in flight, or discards its state).
    pub(crate) fn connack(&mut self, client: usize) {
        let (Some(pending), Some(c)) = (self.pending[client], self.conn[client]) else {
            return;
        };
        let ack = match self.sim.take_one(c) {
            Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success => ack,
            None if self.sim.hold_commits => return,
            other => panic!(
                "{} expected CONNACK 0x00, got {other:?}\n{}",
                NAMES[client],
                self.trace()
            ),
        };
        self.pending[client] = None;
        let expected = pending.expected;
        assert_eq!(
            ack.session_present,
            expected,
            "promise 4: Session Present for {} (session {:?})\n{}",
            NAMES[client],
            self.live.get(&client),
            self.trace()
        );
        if !expected {
            // The client discards its session state now: a session the broker had is gone
            // for good (MQTT-3.1.2-4); the CONNACK came after its end was committed.
            self.durable.remove(&client);
        }
        if is_publisher(client) {
            if expected {
                // Resend what is unacknowledged, in order (MQTT-4.4.0-1).
                for i in 0..self.pubs[client].inflight.len() {
                    let o = &mut self.pubs[client].inflight[i];
                    if o.released {
                        o.recovering = true;
                        let pid = o.pid;
                        self.send(client, pubrel(pid));
                    } else {
                        self.send_publish(client, i, true);
                    }
                }
            } else {
                self.pubs[client].inflight.clear();
            }
        } else if !expected {
            self.sub(client).awaiting_rel.clear();
        }
    }

    pub(crate) fn subscribe(&mut self, client: usize, topic: usize, qos: QoS) {
        if self.conn[client].is_none() || self.pending[client].is_some() {
            return;
        }
        let s = self.sub(client);
        s.next_pid = s.next_pid.wrapping_add(1).max(1);
        let pid = s.next_pid;
        s.subacks.insert(pid, (topic, qos));
        let session = self
            .live
            .get_mut(&client)
            .expect("a connected client has a session");
        (session.subs.entry(topic))
            .and_modify(|s| s.live = qos)
            .or_insert(Sub {
                live: qos,
                acked: None,
            });
        self.send(client, subscribe(pid, TOPICS[topic], qos));
    }

    pub(crate) fn publish(&mut self, client: usize, topic: usize, qos: QoS) {
        if self.conn[client].is_none() || self.pending[client].is_some() {
            return;
        }
        let p = &mut self.pubs[client];
        let seq = p.next_seq;
        p.next_seq += 1;
        self.messages.insert((client, seq), (topic, qos));
        if qos == QoS::AtMostOnce {
            let payload = payload((client, seq));
            self.send(client, publish(TOPICS[topic], qos, 0, &payload));
            return;
        }
        let pid = loop {
            p.next_pid = p.next_pid.wrapping_add(1).max(1);
            let pid = p.next_pid;
            if !p.inflight.iter().any(|o| o.pid == pid) {
                break pid;
            }
        };
        p.inflight.push(Outgoing {
            pid,
            seq,
            topic,
            qos,
            released: false,
            routed: false,
            uncommitted: false,
            recovering: false,
            reach: None,
        });
        let i = p.inflight.len() - 1;
        self.send_publish(client, i, false);
    }

    /// Sends (or resends) a publisher's outgoing message, noting whom it can reach now.
    pub(crate) fn send_publish(&mut self, client: usize, i: usize, dup: bool) {
        let (pid, seq, topic, qos) = {
            let o = &self.pubs[client].inflight[i];
            (o.pid, o.seq, o.topic, o.qos)
        };
        let now: BTreeMap<(usize, u64), QoS> = (2..4)
            .filter_map(|s| {
                let session = self.live.get(&s)?;
                let owed = session.subs.get(&topic)?.owed(qos)?;
                Some(((s, session.generation), owed))
            })
            .collect();
        let o = &mut self.pubs[client].inflight[i];
        if !o.routed || o.qos == QoS::AtLeastOnce {
            o.routed = true;
            o.uncommitted = self.sim.hold_commits;
        }
        o.reach = Some(match o.reach.take() {
            None => now,
            Some(before) => (before.into_iter())
                .filter_map(|(k, q)| now.get(&k).map(|n| (k, q.min(*n))))
                .collect(),
        });
        (self.received_order.entry((client, topic, qos)).or_default()).push(seq);
        let mut packet = publish(TOPICS[topic], qos, pid, &payload((client, seq)));
        if let Packet::Publish(p) = &mut packet {
            p.dup = dup;
        }
        self.send(client, packet);
    }

    pub(crate) fn set_acking(&mut self, client: usize, on: bool) {
        self.sub(client).acking = on;
        if on {
            let withheld = std::mem::take(&mut self.sub(client).withheld);
            for ack in withheld {
                self.send_ack(client, ack);
            }
        }
    }

    /// DISCONNECT, or the network connection drops.
    pub(crate) fn end_connection(&mut self, client: usize, drop: bool) {
        let Some(c) = self.conn[client].take() else {
            return;
        };
        self.pending[client] = None;
        if drop {
            self.sim.drop_connection(c);
        } else {
            let d = Disconnect::new(ReasonCode::Success);
            self.sim.send(c, Packet::Disconnect(d));
        }
        self.sim.take(c);
        self.forget_connection(client);
        let now = self.now;
        let s = self
            .live
            .get_mut(&client)
            .expect("a connected client has a session");
        s.connected = false;
        s.disconnected_at = Some(now);
        if s.expiry == 0 {
            self.live.remove(&client);
        }
    }

    pub(crate) fn crash(&mut self) {
        self.sim.crash_and_restart();
        for client in 0..4 {
            if let Some(c) = self.conn[client].take() {
                self.sim.take(c);
            }
            self.forget_connection(client);
        }
        self.pending = [None; 4];
        for p in &mut self.pubs {
            for o in p.inflight.iter_mut().filter(|o| o.uncommitted) {
                // The routing is lost: the next send is routed again.
                o.routed = false;
                o.uncommitted = false;
            }
        }
        let now = self.now;
        self.live = self.durable.clone();
        for s in self.live.values_mut() {
            s.connected = false;
            if s.disconnected_at.is_none() {
                s.disconnected_at = Some(now);
                s.stored_connected = true;
            }
        }
        self.expire();
        for s in &mut self.subs {
            s.order.clear();
        }
    }

    pub(crate) fn advance(&mut self, secs: u64) {
        self.sim.advance(Duration::from_secs(secs));
        self.now += secs;
        self.expire();
    }

    /// Ends the disconnected sessions whose expiry has passed.
    pub(crate) fn expire(&mut self) {
        let now = self.now;
        self.live.retain(|_, s| match s.disconnected_at {
            Some(at) if !s.connected && s.expiry != u32::MAX => now - at < u64::from(s.expiry),
            _ => true,
        });
    }
}
