//! The model of the broker and the clients, and what every step is checked against.

use super::*;

/// A session as the broker should hold it.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// Which session of its client id this is (a new session, a new generation).
    pub(crate) generation: u64,
    /// Session expiry in seconds (`u32::MAX`: never; 0: ends with its connection).
    pub(crate) expiry: u32,
    pub(crate) connected: bool,
    /// Seconds since the start, while disconnected.
    pub(crate) disconnected_at: Option<u64>,
    /// Restored from a record stored while it was connected, and not stored since: the store
    /// still says connected, so the next restart starts its expiry again.
    pub(crate) stored_connected: bool,
    /// By topic.
    pub(crate) subs: BTreeMap<usize, Sub>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Sub {
    /// QoS of the last SUBSCRIBE the broker processed.
    pub(crate) live: QoS,
    /// QoS of the last SUBACK the subscriber received, if any.
    pub(crate) acked: Option<QoS>,
}

impl Sub {
    /// The QoS a message published at `qos` is owed at: only once acknowledged, and at no
    /// more than any SUBSCRIBE since asked for.
    pub(crate) fn owed(self, qos: QoS) -> Option<QoS> {
        self.acked.map(|a| a.min(self.live).min(qos))
    }
}

/// An outgoing QoS 1/2 message of a publisher, not yet completed.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) pid: u16,
    pub(crate) seq: u32,
    pub(crate) topic: usize,
    pub(crate) qos: QoS,
    /// PUBREC received, PUBREL sent.
    pub(crate) released: bool,
    /// The broker has routed it (a QoS 2 resend is then not routed again)...
    pub(crate) routed: bool,
    /// ...while commits were held, and there was no commit since.
    pub(crate) uncommitted: bool,
    /// PUBREL sent again after reconnecting: the broker may have completed the flow already,
    /// its PUBCOMP lost with the connection, and answer 0x92 ("not an error during
    /// recovery", v5 3.7.2.1).
    pub(crate) recovering: bool,
    /// Subscriber sessions (client, generation) subscribed at every send so far, with the
    /// QoS they are owed the message at; `None` before the first send.
    pub(crate) reach: Option<BTreeMap<(usize, u64), QoS>>,
}

#[derive(Debug, Default)]
pub(crate) struct Publisher {
    pub(crate) next_seq: u32,
    pub(crate) next_pid: u16,
    pub(crate) inflight: Vec<Outgoing>,
}

/// An acknowledgement a subscriber owes: PUBACK, PUBREC (of a message), PUBCOMP.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ack {
    Qos1(u16),
    Received(u16, MsgId),
    Complete(u16),
}

#[derive(Debug)]
pub(crate) struct Subscriber {
    /// False while acknowledgements are withheld.
    pub(crate) acking: bool,
    pub(crate) withheld: Vec<Ack>,
    /// Inbound QoS 2 packet ids from PUBLISH until PUBCOMP sent (session state).
    pub(crate) awaiting_rel: BTreeMap<u16, MsgId>,
    /// QoS 2 messages the subscriber sent PUBREC for.
    pub(crate) pubrec_sent: BTreeSet<MsgId>,
    /// Messages delivered to the application, with how often.
    pub(crate) receipts: BTreeMap<MsgId, u32>,
    /// SUBSCRIBE packet ids awaiting SUBACK on the current connection.
    pub(crate) subacks: BTreeMap<u16, (usize, QoS)>,
    pub(crate) next_pid: u16,
    /// Per (publisher, topic, published QoS, delivered QoS): how far into the broker's
    /// receive order the deliveries so far reach.
    pub(crate) order: BTreeMap<(usize, usize, QoS, QoS), usize>,
}

impl Default for Subscriber {
    fn default() -> Self {
        Self {
            acking: true,
            withheld: Vec::new(),
            awaiting_rel: BTreeMap::new(),
            pubrec_sent: BTreeSet::new(),
            receipts: BTreeMap::new(),
            subacks: BTreeMap::new(),
            next_pid: 0,
            order: BTreeMap::new(),
        }
    }
}

/// A connection waiting for its CONNACK.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    /// The Session Present it must say.
    pub(crate) expected: bool,
}

/// A message a subscriber session must receive (promise 1).
#[derive(Debug)]
pub(crate) struct Owed {
    pub(crate) client: usize,
    pub(crate) generation: u64,
    pub(crate) id: MsgId,
    pub(crate) qos: QoS,
}

pub(crate) struct World {
    pub(crate) sim: Sim,
    pub(crate) profiles: [Profile; 4],
    /// Seconds since the start.
    pub(crate) now: u64,
    /// The open connection of each client.
    pub(crate) conn: [Option<C>; 4],
    /// Every connection each client opened.
    pub(crate) history: [Vec<C>; 4],
    /// The broker's sessions by client, now.
    pub(crate) live: BTreeMap<usize, Session>,
    /// The sessions as last committed.
    pub(crate) durable: BTreeMap<usize, Session>,
    pub(crate) next_generation: u64,
    pub(crate) pubs: [Publisher; 2],
    pub(crate) subs: [Subscriber; 2],
    /// Every message published: topic and QoS.
    pub(crate) messages: BTreeMap<MsgId, (usize, QoS)>,
    /// Per (publisher, topic, QoS): sequence numbers in the order the broker received them
    /// (resends included).
    pub(crate) received_order: BTreeMap<(usize, usize, QoS), Vec<u32>>,
    pub(crate) owed: Vec<Owed>,
    /// Connections whose CONNACK has not come yet (in durability `sync` it waits for the
    /// commit of the session change it reports): the client sends nothing else meanwhile.
    pub(crate) pending: [Option<Pending>; 4],
    /// The steps so far, for failure messages.
    pub(crate) trace: Vec<String>,
}

impl World {
    pub(crate) fn new(profiles: [Profile; 4]) -> Self {
        Self {
            sim: Sim::with(Limits::default(), Durability::Sync),
            profiles,
            now: 0,
            conn: [None; 4],
            history: Default::default(),
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            next_generation: 1,
            pubs: Default::default(),
            subs: Default::default(),
            messages: BTreeMap::new(),
            received_order: BTreeMap::new(),
            owed: Vec::new(),
            pending: [None; 4],
            trace: Vec::new(),
        }
    }

    pub(crate) fn sub(&mut self, client: usize) -> &mut Subscriber {
        &mut self.subs[client - 2]
    }

    /// Everyone connected (resuming), both subscribers on both topics at QoS 2.
    pub(crate) fn setup(&mut self) {
        for client in 0..4 {
            self.connect(client, false);
        }
        for client in 2..4 {
            for topic in 0..TOPICS.len() {
                self.subscribe(client, topic, QoS::ExactlyOnce);
            }
        }
        self.after_step();
    }

    pub(crate) fn step(&mut self, step: Step) {
        match step {
            Step::Connect { client, clean } => self.connect(client, clean),
            Step::Subscribe { client, topic, qos } => self.subscribe(client, topic, qos),
            Step::Publish { client, topic, qos } => self.publish(client, topic, qos),
            Step::Acks { client, on } => self.set_acking(client, on),
            Step::Disconnect { client } => self.end_connection(client, false),
            Step::Drop { client } => self.end_connection(client, true),
            Step::Crash => self.crash(),
            Step::Advance { secs } => self.advance(secs),
            Step::Hold(on) => {
                self.sim.hold_commits = on;
                self.sim.settle();
            }
        }
    }

    /// After a step: CONNACKs that came are taken, the clients answer everything; what the
    /// broker holds is committed unless commits are held; connections and sessions are as the
    /// model says.
    pub(crate) fn after_step(&mut self) {
        for client in 0..4 {
            self.connack(client);
        }
        self.pump();
        if !self.sim.hold_commits {
            for p in &mut self.pubs {
                for o in &mut p.inflight {
                    o.uncommitted = false;
                }
            }
            self.durable = (self.live.iter())
                .filter(|(_, s)| s.expiry != 0)
                .map(|(c, s)| {
                    let mut stored = s.clone();
                    if s.stored_connected {
                        stored.disconnected_at = None;
                    }
                    (*c, stored)
                })
                .collect();
        }
        for (client, history) in self.history.iter().enumerate() {
            for &c in history {
                let open = self.conn[client] == Some(c);
                assert_eq!(
                    !self.sim.is_gone(c),
                    open,
                    "promise 5: connection {c:?} of {} should be {} (closed: {:?})\n{}",
                    NAMES[client],
                    if open { "open" } else { "closed" },
                    self.sim.closed(c),
                    self.trace()
                );
            }
        }
        assert_eq!(
            self.sim.broker.session_count(),
            self.live.len(),
            "promise 4: the broker holds other sessions than the model: {:?}\n{}",
            self.live,
            self.trace()
        );
    }

    pub(crate) fn trace(&self) -> String {
        show(&self.trace)
    }

    /// Sends on the client's open connection, if it has one that is still open and its
    /// CONNACK came.
    pub(crate) fn send(&mut self, client: usize, packet: Packet) {
        if let Some(c) = self.conn[client]
            && !self.sim.is_gone(c)
            && self.pending[client].is_none()
        {
            self.sim.send(c, packet);
        }
    }

    /// What a client forgets with its connection.
    pub(crate) fn forget_connection(&mut self, client: usize) {
        if !is_publisher(client) {
            let s = self.sub(client);
            s.withheld.clear();
            s.subacks.clear();
        }
    }
}
