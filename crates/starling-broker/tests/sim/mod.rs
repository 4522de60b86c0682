//! An in-memory harness: a broker and any number of clients on one simulated clock, with no
//! sockets, threads or sleeps. Clients talk to their `Connection` through byte buffers (the
//! codec on both sides), time moves only when a test says so, and an optional in-memory store
//! is committed by the harness itself, so a test can hold commits back, fail them, or crash
//! the broker and restart it over the same store.
//!
//! `settle` runs everything that is ready until nothing changes: commits, input the broker is
//! willing to read, and output. `advance` moves the clock, firing each connection's timeouts
//! and the broker's once-a-second tick at their exact times. Every loop is bounded: a harness
//! that does not settle fails the test.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use starling_broker::connection::OUTPUT_HIGH_WATER;
use starling_broker::persist::{Journal, Persistence, WallClock};
use starling_broker::wake::Flag;
use starling_broker::{Broker, Close, Connection, Features, Limits};
use starling_proto::{
    Connect, DecodeLimits, Packet, ProtocolVersion, PubAck, Publish, QoS, Subscribe, TopicFilter,
    TopicName, Will,
};
use starling_store::{MemoryStore, Store};

/// The protocol levels, for short.
pub const V5: ProtocolVersion = ProtocolVersion::V5;
pub const V311: ProtocolVersion = ProtocolVersion::V311;

/// Most rounds `settle` runs before it declares the system stuck.
const SETTLE_ROUNDS: usize = 10_000;

/// Wall-clock time of the simulation's start, for store records.
const EPOCH_MS: u64 = 1_700_000_000_000;

/// How a simulated broker keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// No store.
    Memory,
    /// A store; acknowledgements wait for commits.
    Sync,
    /// A store; acknowledgements do not wait.
    Periodic,
}

/// One client: its connection, the bytes between it and the broker, and what it received.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    flag: Arc<Flag>,
    version: ProtocolVersion,
    /// Bytes the client sent that the broker has not read yet.
    to_broker: BytesMut,
    /// Bytes the broker sent that the client has not decoded yet.
    to_client: BytesMut,
    /// Packets received, oldest first.
    pub received: VecDeque<Packet>,
    /// The transport is gone (either side closed it).
    pub gone: bool,
    /// The connection's task is slow to read: what the client sends is read only when the
    /// connection is asked to hand its session over (see `stall`).
    stalled: bool,
    /// The connection's task does not run at all (see `freeze`).
    frozen: bool,
    /// Something happened that the I/O layer answers with `poll_transmit` (input, a timeout,
    /// the last poll filled the output to its mark); the waker is the other reason.
    poll: bool,
    /// The check a parked packet waits for, taken from the connection (see `resolve_check`).
    check: Option<Outstanding>,
    /// Wake-ups the core made with `Wake::wake_in_fan_out` (see `fanned_wakes`).
    fanned: usize,
}

/// A check's future, held for the test to resolve.
struct Outstanding(starling_auth::Pending<starling_broker::CheckAnswer>);

impl std::fmt::Debug for Outstanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outstanding(..)")
    }
}

/// A handle to a client of the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct C(usize);

/// The simulation.
#[derive(Debug)]
pub struct Sim {
    start: Instant,
    /// The simulated time.
    pub now: Instant,
    pub broker: Arc<Broker>,
    limits: Limits,
    durability: Durability,
    store: Option<Arc<MemoryStore>>,
    journal: Option<Arc<Journal>>,
    /// While true, the harness does not commit (a slow disk).
    pub hold_commits: bool,
    /// The journal's bound in bytes.
    journal_limit: usize,
    /// Deletions and phase changes of failed batches, committed with the next one (as the
    /// server's committer does).
    carried: Vec<starling_store::Op>,
    next_tick: Instant,
    clients: Vec<Client>,
}

impl Sim {
    /// A broker without a store.
    pub fn new(limits: Limits) -> Self {
        Self::with(limits, Durability::Memory)
    }

    /// A broker with the given durability (an in-memory store unless `Memory`).
    pub fn with(limits: Limits, durability: Durability) -> Self {
        let start = Instant::now();
        let store = (durability != Durability::Memory).then(|| Arc::new(MemoryStore::new()));
        let broker = Broker::new(limits, start);
        let mut sim = Self::unstarted(broker, durability, store, start);
        sim.boot();
        sim
    }

    /// The simulation around `broker`, before anything has run.
    fn unstarted(
        broker: Broker,
        durability: Durability,
        store: Option<Arc<MemoryStore>>,
        start: Instant,
    ) -> Self {
        Self {
            start,
            now: start,
            limits: broker.limits.clone(),
            broker: Arc::new(broker),
            durability,
            store,
            journal: None,
            hold_commits: false,
            journal_limit: 64 << 20,
            carried: Vec::new(),
            next_tick: start,
            clients: Vec::new(),
        }
    }

    /// A broker with a store whose journal holds at most `limit` bytes of changes.
    pub fn with_journal_limit(limits: Limits, durability: Durability, limit: usize) -> Self {
        let mut sim = Self::with(limits, durability);
        sim.journal_limit = limit;
        sim.crash_and_restart();
        sim
    }

    /// A simulation of a broker made by the caller (its own seams, no store).
    pub fn on(broker: Broker) -> Self {
        let mut sim = Self::unstarted(broker, Durability::Memory, None, Instant::now());
        sim.settle();
        sim
    }

    /// Builds the broker over the store (restoring what it holds), as a start does.
    fn boot(&mut self) {
        let mut broker = Broker::with_features(self.limits.clone(), Features::default(), self.now);
        if let Some(store) = &self.store {
            let journal = Arc::new(Journal::new(
                self.durability == Durability::Sync,
                self.journal_limit,
                Flag::new(),
            ));
            let elapsed = self.now.duration_since(self.start).as_millis() as u64;
            let clock = WallClock::new(self.now, EPOCH_MS + elapsed);
            broker = broker.with_persistence(Persistence {
                journal: journal.clone(),
                clock,
            });
            let snapshot = store.load(false).expect("the store loads");
            broker.restore(snapshot, self.now);
            self.journal = Some(journal);
        }
        self.broker = Arc::new(broker);
        self.next_tick = self.now;
        self.settle();
    }

    /// The store, if there is one.
    pub fn store(&self) -> Option<&Arc<MemoryStore>> {
        self.store.as_ref()
    }

    /// The broker crashes (nothing that was not committed survives, no client is told) and
    /// starts again over the same store.
    pub fn crash_and_restart(&mut self) {
        for c in &mut self.clients {
            c.gone = true;
        }
        self.journal = None;
        self.boot();
    }

    // -----------------------------------------------------------------------------------------
    // Clients

    /// Opens a connection and sends `connect` on it. The CONNACK (or refusal) is in the
    /// client's `received` after this returns.
    pub fn connect(&mut self, connect: Connect) -> C {
        let flag = Flag::new();
        let client = Client {
            conn: Connection::new(flag.clone(), None, self.now),
            flag,
            version: connect.protocol,
            to_broker: BytesMut::new(),
            to_client: BytesMut::new(),
            received: VecDeque::new(),
            gone: false,
            stalled: false,
            frozen: false,
            poll: true,
            check: None,
            fanned: 0,
        };
        self.clients.push(client);
        let c = C(self.clients.len() - 1);
        self.send(c, Packet::Connect(Box::new(connect)));
        c
    }

    /// As `connect`, on a listener with `access` (its authentication and authorization).
    pub fn connect_to(
        &mut self,
        access: Arc<starling_broker::ListenerAccess>,
        connect: Connect,
    ) -> C {
        let c = self.connect_silent();
        let client = &mut self.clients[c.0];
        let conn = std::mem::replace(
            &mut client.conn,
            Connection::new(client.flag.clone(), None, self.now),
        );
        client.conn = conn.with_access(access, starling_broker::PeerInfo::default());
        client.version = connect.protocol;
        self.send(c, Packet::Connect(Box::new(connect)));
        c
    }

    /// Whether a packet of `c` waits for a check answered later.
    pub fn is_checking(&self, c: C) -> bool {
        self.clients[c.0].check.is_some()
    }

    /// Runs the check `c` waits for, as the server's task does, once its future can finish
    /// (tests decide when: the future must be ready when this is called), then settles.
    pub fn resolve_check(&mut self, c: C) {
        let broker = self.broker.clone();
        let now = self.now;
        let client = &mut self.clients[c.0];
        let Outstanding(mut future) = client.check.take().expect("no check outstanding");
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let std::task::Poll::Ready(answer) = future.as_mut().poll(&mut cx) else {
            panic!("the check's future is not ready");
        };
        client.conn.handle_check(&broker, now, answer);
        client
            .conn
            .handle_input(&broker, now, &mut client.to_broker);
        client.poll = true;
        self.settle();
    }

    /// Connects with `connect` and takes the CONNACK, which must accept it (what came after
    /// it stays for `take`).
    pub fn connected(&mut self, connect: Connect) -> (C, starling_proto::ConnAck) {
        let c = self.connect(connect);
        match self.take_one(c) {
            Some(Packet::ConnAck(ack)) if ack.reason == starling_proto::ReasonCode::Success => {
                (c, ack)
            }
            other => panic!("expected CONNACK 0x00 first, got {other:?}"),
        }
    }

    /// Opens a connection that sends nothing.
    pub fn connect_silent(&mut self) -> C {
        let flag = Flag::new();
        self.clients.push(Client {
            conn: Connection::new(flag.clone(), None, self.now),
            flag,
            version: ProtocolVersion::V311,
            to_broker: BytesMut::new(),
            to_client: BytesMut::new(),
            received: VecDeque::new(),
            gone: false,
            stalled: false,
            frozen: false,
            poll: true,
            check: None,
            fanned: 0,
        });
        C(self.clients.len() - 1)
    }

    /// Sends a packet from a client (encoded at its protocol level), then settles.
    pub fn send(&mut self, c: C, packet: Packet) {
        self.send_raw(c, &encode(&packet, self.clients[c.0].version));
    }

    /// Sends bytes from a client, then settles.
    pub fn send_raw(&mut self, c: C, bytes: &[u8]) {
        self.queue_raw(c, bytes);
        self.settle();
    }

    /// Bytes from a client that wait, unread, for the next `step` or `settle` (several
    /// clients' input arriving together).
    pub fn queue_raw(&mut self, c: C, bytes: &[u8]) {
        let client = &mut self.clients[c.0];
        assert!(!client.gone, "client {c:?} sends on a closed connection");
        client.to_broker.extend_from_slice(bytes);
    }

    /// One round of `settle`: a commit, then each client's turn (its input, then its output)
    /// once, in the order they connected. True if anything moved.
    pub fn step(&mut self) -> bool {
        let mut progressed = self.commit();
        for i in 0..self.clients.len() {
            progressed |= self.step_client(i);
        }
        progressed
    }

    /// From now on what `c` sends stays unread, as in a socket buffer whose task has not run
    /// yet, until the connection is asked to hand its session over (which reads it).
    pub fn stall(&mut self, c: C) {
        self.clients[c.0].stalled = true;
    }

    /// From now on the task of `c` does not run at all: nothing is read, written or handed
    /// over (a task stuck behind a client that stopped reading).
    pub fn freeze(&mut self, c: C) {
        self.clients[c.0].frozen = true;
    }

    /// The client's network connection drops (no DISCONNECT).
    pub fn drop_connection(&mut self, c: C) {
        let client = &mut self.clients[c.0];
        if !client.gone {
            client.conn.handle_connection_lost(&self.broker, self.now);
            client.gone = true;
        }
        self.settle();
    }

    /// Takes the oldest packet the client has received, if any.
    pub fn take_one(&mut self, c: C) -> Option<Packet> {
        self.clients[c.0].received.pop_front()
    }

    /// How many times the core woke the client's connection for a message routed to many
    /// subscribers at once (`Wake::wake_in_fan_out`).
    pub fn fanned_wakes(&self, c: C) -> usize {
        self.clients[c.0].fanned
    }

    /// The capacity of the connection's own output buffer (what an I/O layer that writes
    /// from it, as the server's does, would hold while the output is empty).
    pub fn output_capacity(&mut self, c: C) -> usize {
        self.clients[c.0].conn.output().capacity()
    }

    /// Takes every packet the client has received so far.
    pub fn take(&mut self, c: C) -> Vec<Packet> {
        self.clients[c.0].received.drain(..).collect()
    }

    /// The client's connection is closed, and why (the broker's reason), if the broker closed it.
    pub fn closed(&self, c: C) -> Option<&Close> {
        self.clients[c.0].conn.close_reason()
    }

    /// Whether the transport of `c` is gone.
    pub fn is_gone(&self, c: C) -> bool {
        self.clients[c.0].gone
    }

    // -----------------------------------------------------------------------------------------
    // Running

    /// Runs everything that is ready until nothing changes: commits (unless held), input the
    /// broker is willing to read, output, and closes.
    pub fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            if !self.step() {
                return;
            }
        }
        panic!("the simulation did not settle in {SETTLE_ROUNDS} rounds");
    }

    /// Commits what the journal holds, as the committer thread would. True if it did.
    fn commit(&mut self) -> bool {
        if self.hold_commits {
            return false;
        }
        let (Some(journal), Some(store)) = (&self.journal, &self.store) else {
            return false;
        };
        let Some((ops, upto)) = journal.take_batch() else {
            return false;
        };
        let ops = starling_store::compact(ops);
        let carried = self.carried.len();
        self.carried.extend(ops);
        match store.apply(&self.carried, true) {
            Ok(()) => {
                self.carried.clear();
                if carried > 0 {
                    journal.carried_committed();
                }
                journal.finish(upto, true);
            }
            Err(e) => {
                let failed = self.carried.split_off(carried);
                self.carried
                    .extend(failed.into_iter().filter(starling_store::carried_over));
                journal.refuse(upto, e.is_full());
            }
        }
        true
    }

    fn step_client(&mut self, i: usize) -> bool {
        let broker = self.broker.clone();
        let now = self.now;
        let client = &mut self.clients[i];
        if client.gone || client.frozen {
            return false;
        }
        let mut progressed = false;
        if !client.to_broker.is_empty() && !client.stalled && client.conn.wants_input(&broker, now)
        {
            let before = client.to_broker.len();
            client
                .conn
                .handle_input(&broker, now, &mut client.to_broker);
            progressed |= client.to_broker.len() != before;
            client.poll |= progressed;
        }
        if client.check.is_none()
            && let Some(check) = client.conn.take_check()
        {
            client.check = Some(Outstanding(check));
            progressed = true;
        }
        // Like the server's connection task, the harness polls for output only after an event:
        // a wake-up the core forgot to give shows as output that never comes.
        client.fanned += usize::from(client.flag.take_fanned());
        let woken = client.flag.take();
        if !(woken || std::mem::take(&mut client.poll)) {
            return progressed;
        }
        let mut out = BytesMut::new();
        // Input that came after CONNECT while the session was being handed over.
        let waiting = client.conn.is_waiting();
        client.conn.poll_transmit(&broker, now, &mut out);
        if client.conn.hand_over_asked() {
            // As the server's task does: what the client already sent is handled first.
            client
                .conn
                .handle_hand_over(&broker, now, &mut client.to_broker);
            client.conn.poll_transmit(&broker, now, &mut out);
            // The waiting connection was woken: another round.
            progressed = true;
        }
        if waiting && !client.conn.is_waiting() {
            // Claimed (its CONNACK may wait for a commit), and the owner woken.
            client.poll = true;
            progressed = true;
        }
        // A full output is written, and then the task polls again.
        client.poll |= out.len() >= OUTPUT_HIGH_WATER;
        if !out.is_empty() {
            progressed = true;
            client.to_client.extend_from_slice(&out);
            let limits = DecodeLimits {
                max_packet_size: u32::MAX,
                ..DecodeLimits::default()
            };
            while let Some(p) =
                starling_proto::decode(&mut client.to_client, client.version, &limits)
                    .expect("the broker sends well-formed packets")
            {
                client.received.push_back(p);
            }
        }
        if client.conn.is_closed() {
            client.gone = true;
            progressed = true;
        }
        progressed
    }

    /// Moves the clock forward by `d` without running anyone, as a busy core's turns take
    /// time; nothing may fall due meanwhile (use `advance` for that).
    pub fn elapse(&mut self, d: Duration) {
        let to = self.now + d;
        let due = self
            .clients
            .iter()
            .filter(|c| !c.gone && !c.frozen)
            .filter_map(|c| c.conn.poll_timeout(&self.broker))
            .chain([self.next_tick])
            .min();
        assert!(
            due.is_none_or(|t| t > to),
            "something falls due within {d:?}"
        );
        self.now = to;
    }

    /// Moves the clock forward by `d`, firing timeouts and the broker's tick (once a second)
    /// at their exact times, settling after each.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next_timeout = self
                .clients
                .iter()
                .filter(|c| !c.gone && !c.frozen)
                .filter_map(|c| c.conn.poll_timeout(&self.broker))
                .min();
            let next = [Some(target), next_timeout, Some(self.next_tick)]
                .into_iter()
                .flatten()
                .filter(|t| *t >= self.now)
                .min()
                .unwrap_or(target)
                .min(target);
            self.now = next;
            let broker = self.broker.clone();
            for c in self.clients.iter_mut().filter(|c| !c.gone && !c.frozen) {
                if c.conn.poll_timeout(&broker).is_some_and(|t| t <= next) {
                    c.conn.handle_timeout(&broker, next);
                    // After a timer the task also handles input a rate pause left unread.
                    c.poll = true;
                }
            }
            if self.next_tick <= next {
                broker.tick(next);
                self.next_tick = next + Duration::from_secs(1);
            }
            self.settle();
            if next >= target {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

/// Encodes a packet as a client at `version` would send it.
pub fn encode(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    starling_proto::encode(packet, version, &mut buf).expect("encodable");
    buf.freeze()
}

/// A CONNECT with clean start, keep-alive 60 and nothing else.
pub fn connect(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect::new(version, client_id)
}

/// A CONNECT for a persistent session: clean start off, and for v5 a session expiry.
pub fn persistent(version: ProtocolVersion, client_id: &str, expiry_secs: u32) -> Connect {
    let mut c = connect(version, client_id);
    c.clean_start = false;
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(expiry_secs);
    }
    c
}

/// A PUBLISH without properties.
pub fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &[u8]) -> Packet {
    let topic = TopicName::try_from_str(topic).expect("valid topic");
    let payload = Bytes::copy_from_slice(payload);
    Packet::Publish(Publish::new(topic, qos, packet_id, payload))
}

/// A QoS 1 will on `topic`, payload "bye", with a Will Delay Interval if given.
pub fn will(topic: &str, delay_secs: Option<u32>) -> Will {
    let mut w = Will {
        topic: TopicName::try_from_str(topic).expect("valid topic"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    w.properties.will_delay_interval = delay_secs;
    w
}

/// A SUBSCRIBE with one filter.
pub fn subscribe(packet_id: u16, filter: &str, qos: QoS) -> Packet {
    let filter = TopicFilter::try_from_str(filter).expect("valid filter");
    Packet::Subscribe(Subscribe::one(packet_id, filter, qos))
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP.
pub fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(PubAck::new(packet_id))
}

pub fn pubrec(packet_id: u16) -> Packet {
    Packet::PubRec(PubAck::new(packet_id))
}

pub fn pubrel(packet_id: u16) -> Packet {
    Packet::PubRel(PubAck::new(packet_id))
}

pub fn pubcomp(packet_id: u16) -> Packet {
    Packet::PubComp(PubAck::new(packet_id))
}

/// The PUBLISH packets among `packets`.
pub fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// The PUBACK packets among `packets`.
pub fn pubacks(packets: &[Packet]) -> Vec<&PubAck> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a),
            _ => None,
        })
        .collect()
}
