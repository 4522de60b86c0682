//! The clients' side: what each client does with what it receives, and the end of a case.

use super::*;

impl World {
    /// Every client handles what it received until nothing more arrives.
    pub(crate) fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut any = false;
            for client in 0..4 {
                let Some(c) = self.conn[client] else {
                    continue;
                };
                if self.pending[client].is_some() {
                    continue;
                }
                for packet in self.sim.take(c) {
                    any = true;
                    self.on_packet(client, packet);
                }
            }
            if !any {
                return;
            }
        }
        panic!("the clients did not quiesce\n{}", self.trace());
    }

    /// The publisher's outgoing message a PUBACK (QoS 1) or PUBREC (QoS 2) answers: one it
    /// waits for, acknowledged with success.
    fn awaited(&self, client: usize, a: &starling_proto::PubAck, qos: QoS) -> usize {
        let name = NAMES[client];
        let found = (self.pubs[client].inflight.iter())
            .position(|o| o.pid == a.packet_id && o.qos == qos && !o.released);
        let Some(i) = found else {
            panic!(
                "{name} got {a:?}, which it did not wait for\n{}",
                self.trace()
            );
        };
        assert!(!a.reason.is_error(), "{name} got {a:?}\n{}", self.trace());
        i
    }

    pub(crate) fn on_packet(&mut self, client: usize, packet: Packet) {
        let name = NAMES[client];
        match (is_publisher(client), packet) {
            (true, Packet::PubAck(a)) => {
                let i = self.awaited(client, &a, QoS::AtLeastOnce);
                let o = self.pubs[client].inflight.remove(i);
                let owed = self.owed_by(client, &o);
                self.owed.extend(owed);
            }
            (true, Packet::PubRec(a)) => {
                let i = self.awaited(client, &a, QoS::ExactlyOnce);
                self.pubs[client].inflight[i].released = true;
                let o = &self.pubs[client].inflight[i];
                let owed = self.owed_by(client, o);
                self.owed.extend(owed);
                self.send(client, pubrel(a.packet_id));
            }
            (true, Packet::PubComp(a)) => {
                let found = (self.pubs[client].inflight.iter())
                    .position(|o| o.pid == a.packet_id && o.released);
                let Some(i) = found else {
                    panic!(
                        "{name} got PUBCOMP {} it did not wait for\n{}",
                        a.packet_id,
                        self.trace()
                    );
                };
                let o = self.pubs[client].inflight.remove(i);
                assert!(
                    a.reason == ReasonCode::Success
                        || (o.recovering && a.reason == ReasonCode::PacketIdentifierNotFound),
                    "{name} got {a:?} for {:?}\n{}",
                    (client, o.seq),
                    self.trace()
                );
            }
            (false, Packet::Publish(p)) => self.on_publish(client, p),
            (false, Packet::PubRel(a)) => self.owe_ack(client, Ack::Complete(a.packet_id)),
            (false, Packet::SubAck(a)) => {
                let Some((topic, qos)) = self.sub(client).subacks.remove(&a.packet_id) else {
                    panic!(
                        "{name} got SUBACK {} it did not wait for\n{}",
                        a.packet_id,
                        self.trace()
                    );
                };
                let granted = match qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                };
                assert_eq!(a.reasons, [granted], "{name}\n{}", self.trace());
                let session = self
                    .live
                    .get_mut(&client)
                    .expect("a connected client has a session");
                let sub = session.subs.get_mut(&topic).expect("subscribed");
                sub.acked = Some(qos);
            }
            (_, other) => panic!("{name} got {other:?}\n{}", self.trace()),
        }
    }

    /// What an acknowledged outgoing message is owed to (promise 1).
    pub(crate) fn owed_by(&self, client: usize, o: &Outgoing) -> Vec<Owed> {
        let reach = o.reach.as_ref().expect("acknowledged after a send");
        (reach.iter())
            .filter(|(_, q)| **q >= QoS::AtLeastOnce)
            .map(|(&(s, generation), &qos)| Owed {
                client: s,
                generation,
                id: (client, o.seq),
                qos,
            })
            .collect()
    }

    pub(crate) fn on_publish(&mut self, client: usize, p: Publish) {
        let name = NAMES[client];
        let id = parse_payload(&p.payload);
        let Some(&(topic, published)) = self.messages.get(&id) else {
            panic!(
                "{name} got a message nobody published: {p:?}\n{}",
                self.trace()
            );
        };
        assert_eq!(
            p.topic.as_str(),
            TOPICS[topic],
            "{name}: {p:?}\n{}",
            self.trace()
        );
        assert!(
            p.qos <= published,
            "{name}: QoS raised: {p:?}\n{}",
            self.trace()
        );
        // Subscriptions are never removed but with their session, and a session's messages
        // go with it.
        let subscribed = (self.live.get(&client)).is_some_and(|s| s.subs.contains_key(&topic));
        assert!(
            subscribed,
            "{name} got {id:?} on {}, which its session is not subscribed to\n{}",
            TOPICS[topic],
            self.trace()
        );
        let trace = &self.trace;
        let s = &mut self.subs[client - 2];
        let new = match p.qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                let before = s.awaiting_rel.get(&p.packet_id);
                assert!(
                    before.is_none(),
                    "promise 2: {name} got message {id:?} at QoS 1 with packet id {} while \
                     that id awaits PUBREL for message {before:?}\n{}",
                    p.packet_id,
                    show(trace)
                );
                true
            }
            QoS::ExactlyOnce => match s.awaiting_rel.get(&p.packet_id) {
                Some(&before) => {
                    assert_eq!(
                        before,
                        id,
                        "promise 2: {name} got message {id:?} with packet id {} while that id \
                         awaits PUBREL for message {before:?}\n{}",
                        p.packet_id,
                        show(trace)
                    );
                    false
                }
                None => {
                    assert!(
                        !s.pubrec_sent.contains(&id),
                        "promise 2: {name} got QoS 2 message {id:?} again (packet id {}, dup \
                         {}) after it had sent PUBREC for it\n{}",
                        p.packet_id,
                        p.dup,
                        show(trace)
                    );
                    s.awaiting_rel.insert(p.packet_id, id);
                    true
                }
            },
        };
        if new {
            *s.receipts.entry(id).or_default() += 1;
        }
        if new && !p.dup && p.qos != QoS::AtMostOnce {
            let order = &self.received_order[&(id.0, topic, published)];
            let pos = s.order.entry((id.0, topic, published, p.qos)).or_default();
            match order
                .get(*pos..)
                .and_then(|rest| rest.iter().position(|&q| q == id.1))
            {
                Some(i) => *pos += i + 1,
                None => panic!(
                    "promise 3: {name} got {id:?} on {} at QoS {} out of order: the broker \
                     received {order:?} and earlier deliveries reached position {pos}\n{}",
                    TOPICS[topic],
                    p.qos as u8,
                    show(trace)
                ),
            }
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.owe_ack(client, Ack::Qos1(p.packet_id)),
            QoS::ExactlyOnce => self.owe_ack(client, Ack::Received(p.packet_id, id)),
        }
    }

    /// Sends an acknowledgement, or keeps it while the subscriber withholds them.
    pub(crate) fn owe_ack(&mut self, client: usize, ack: Ack) {
        if self.sub(client).acking {
            self.send_ack(client, ack);
        } else {
            self.sub(client).withheld.push(ack);
        }
    }

    pub(crate) fn send_ack(&mut self, client: usize, ack: Ack) {
        let packet = match ack {
            Ack::Qos1(pid) => puback(pid),
            Ack::Received(pid, id) => {
                self.sub(client).pubrec_sent.insert(id);
                pubrec(pid)
            }
            Ack::Complete(pid) => {
                self.sub(client).awaiting_rel.remove(&pid);
                pubcomp(pid)
            }
        };
        self.send(client, packet);
    }

    /// Drives everything to quiescence, then checks what must have arrived.
    pub(crate) fn finish(&mut self) {
        self.trace
            .push("end: commits released, everyone resumes and acknowledges".into());
        self.sim.hold_commits = false;
        self.sim.settle();
        for client in 2..4 {
            self.set_acking(client, true);
        }
        self.after_step();
        for client in 0..4 {
            if self.conn[client].is_none() {
                self.connect(client, false);
                self.after_step();
            }
        }
        for (client, p) in self.pubs.iter().enumerate() {
            let left = &p.inflight;
            assert!(
                left.is_empty(),
                "{} still waits for acknowledgements: {left:?}\n{}",
                NAMES[client],
                self.trace()
            );
        }
        for (i, s) in self.subs.iter().enumerate() {
            let left = &s.awaiting_rel;
            assert!(
                left.is_empty(),
                "{} still waits for PUBREL: {left:?}\n{}",
                NAMES[i + 2],
                self.trace()
            );
        }
        for session in self.sim.broker.sessions_snapshot() {
            let st = session.lock();
            let inflight: Vec<_> = st.inflight().map(|f| (f.packet_id, f.phase)).collect();
            assert!(
                st.queued() == 0 && inflight.is_empty(),
                "the broker still has {} queued and {inflight:?} in flight for {}\n{}",
                st.queued(),
                st.client_id(),
                self.trace()
            );
        }
        for o in &self.owed {
            let same_session = self
                .live
                .get(&o.client)
                .is_some_and(|s| s.generation == o.generation);
            if !same_session {
                continue;
            }
            let got = self.subs[o.client - 2]
                .receipts
                .get(&o.id)
                .copied()
                .unwrap_or(0);
            assert!(
                got > 0,
                "promise 1: {} (session {}) never got {:?} (QoS {}), acknowledged to its \
                 publisher\n{}",
                NAMES[o.client],
                o.generation,
                o.id,
                o.qos as u8,
                self.trace()
            );
        }
    }
}
