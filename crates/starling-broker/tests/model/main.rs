//! The broker against a model of MQTT: random interleavings of two publishers (`p0`, `p1`) and
//! two subscribers (`s0`, `s1`) on two topics, over a store with durability `sync`, checked
//! against what the specification promises (MQTT 3.1.1 section 4, MQTT 5.0 sections 4.1 to 4.6).
//!
//! Each case draws a protocol level for every client (3.1.1 or 5) and, for 5, a Session Expiry
//! Interval (0, 5 s or 600 s), then runs up to `MAX_STEPS` steps: connect (clean or resume, an
//! open connection is taken over), subscribe, publish at QoS 0/1/2, a subscriber's
//! acknowledgements withheld or sent, DISCONNECT, a network drop, a broker crash and restart
//! over its store, time moving a few seconds, commits held or released. After every step the
//! clients answer everything they received, as correct clients do; after the last, everything
//! is driven to quiescence (commits released, every client connected with its session resumed,
//! every acknowledgement sent) and the promises are checked.
//!
//! # The clients
//!
//! Publishers keep their unacknowledged QoS 1/2 messages (session state, MQTT-4.4.0-1) and send
//! them again, with DUP and the same packet id, on a connection whose CONNACK says Session
//! Present; a PUBREC makes them send PUBREL, and they send it again after reconnecting until
//! PUBCOMP comes. A CONNACK without Session Present discards that state (v5 3.2.2.1.2).
//! Subscribers follow method B of 4.3.3 for QoS 2: a packet id stays "awaiting PUBREL" from the
//! PUBLISH until their PUBCOMP is sent; a PUBLISH with such an id is the same message again and
//! is not delivered twice. A subscriber may withhold its PUBACK/PUBREC/PUBCOMP for a while;
//! withheld acknowledgements are lost with their connection (the broker resends on resume).
//! Each payload names its publisher and a sequence number, so a receipt names its message.
//!
//! # The model of the broker
//!
//! Per client id: whether a session exists, the generation of that session (a new session is a
//! new generation), its expiry, whether a connection owns it and since when it is disconnected,
//! and per topic the QoS of the last SUBSCRIBE the broker processed and the QoS of the last
//! SUBACK the subscriber received. The harness processes a packet as soon as it is sent, so the
//! broker's state is known after every step.
//!
//! Durability: with durability `sync` an acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP,
//! SUBACK) waits until what it acknowledges is committed, and the journal is committed in
//! order. While commits are not held the harness commits everything at once, so the committed
//! state is the model's state at the end of the last step taken with commits flowing. A crash
//! brings back exactly that (sessions with a zero expiry are never stored), every session
//! disconnected: one stored while connected counts as disconnected at the restart (and, as
//! its record is not written again until it is resumed, at the next restart too), and one
//! whose expiry passed is gone. The specification says nothing about crashes; this is the
//! broker's reading, and the model follows it (the weaker reading: a session may outlive its
//! expiry, which a client learns from Session Present). Session expiry runs on the broker's
//! one-second tick and the clock only moves in whole seconds, so a session ends exactly when
//! its interval has passed.
//!
//! # The promises
//!
//! 1. No acknowledged message is lost (MQTT-4.3.2/4.3.3, 4.1: the session keeps QoS 1/2
//!    messages for a disconnected client). A message whose PUBACK or PUBREC its publisher
//!    received reaches every subscriber that had a SUBACK for its topic at each time it was
//!    sent, at a QoS of at least 1, unless that subscriber's session ended since. The SUBACK
//!    and the publisher's acknowledgement each mean "committed", so a crash cannot take either
//!    back. When a message was sent more than once (a resend after reconnecting), only the
//!    subscribers subscribed at every send count: a QoS 2 resend is not routed again, so the
//!    weaker reading is the safe one.
//! 2. QoS 2 is delivered at most once (4.3.3): once a subscriber has sent PUBREC for a message,
//!    a PUBLISH of it is allowed only as a resend with the packet id still awaiting PUBREL;
//!    with a new id, or after PUBCOMP, it is delivered twice. A PUBLISH reusing an id that
//!    awaits PUBREL for another message is a violation too (2.2.1: the id is still in use; a
//!    QoS 2 one would be dropped by the client as a duplicate).
//! 3. Order (4.6): the PUBLISH packets a subscriber gets from one publisher on one topic, at one
//!    QoS of at least 1, come in the order the broker received them. Resends by the publisher
//!    after reconnecting are received again, so the check is that first deliveries (DUP
//!    clear) follow the broker's receive order as a subsequence. The specification says
//!    nothing about crashes; after one the broker may deliver again what it had sent before
//!    the send was committed, so the order is checked again from the start after each crash
//!    (the weaker reading).
//! 4. Session Present (3.2.2.2, MQTT-3.2.2-2/3) is set iff the client resumed (clean start off)
//!    a session that exists: not expired, not ended by a clean start or by the end of a
//!    connection with expiry 0, and stored before a crash. Once a CONNACK has said Session
//!    Present 0 the client has discarded its state, so the session it had may not come back,
//!    not even from the store after a crash.
//! 5. A session is owned by one connection (MQTT-3.1.4-2/3): once a CONNECT for a client id
//!    is handled, every earlier connection of that client id is closed. More strictly, after
//!    every step exactly the connections the model holds open are open.
//!
//! Besides, a subscriber only gets messages on topics its session subscribed to, after
//! quiescence every QoS 1/2 flow in either direction has completed (on both sides: nothing is
//! left queued or in flight in the broker), and the broker holds exactly the sessions the
//! model holds.
//!
//! # Found by this test
//!
//! Four ways durability `sync` showed a client state before it was committed, each now a
//! plain test in `sim_store.rs`: a QoS 2 PUBLISH sent before its packet id was stored, a
//! PUBREL resent on resume before its PUBREC was stored, a PUBREC for a resent QoS 2 PUBLISH
//! before the original was stored, and a CONNACK before the session change it reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use sim::*;
use starling_broker::Limits;
use starling_proto::{Disconnect, Packet, ProtocolVersion, Publish, QoS, ReasonCode};

/// Client ids: two publishers, then two subscribers.
const NAMES: [&str; 4] = ["p0", "p1", "s0", "s1"];
/// The topics published and subscribed to.
const TOPICS: [&str; 2] = ["t/0", "t/1"];
/// Keep-alive of every client: far beyond the time a case spans, so it never fires.
const KEEP_ALIVE: u16 = 1000;
/// Most steps in a case.
const MAX_STEPS: usize = 60;
/// Cases per run, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 128;
/// The seed of the case generator, unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0x5354_4152_4c49_4e47;

/// A message: its publisher (client index) and sequence number.
type MsgId = (usize, u32);

fn is_publisher(client: usize) -> bool {
    client < 2
}

/// The steps taken, one a line.
fn show(trace: &[String]) -> String {
    format!("steps:\n  {}", trace.join("\n  "))
}

fn payload(id: MsgId) -> Vec<u8> {
    format!("{}/{}", id.0, id.1).into_bytes()
}

fn parse_payload(payload: &[u8]) -> MsgId {
    let s = std::str::from_utf8(payload).expect("a payload the test wrote");
    let (p, seq) = s.split_once('/').expect("publisher/seq");
    (p.parse().expect("publisher"), seq.parse().expect("seq"))
}

// ---------------------------------------------------------------------------------------------
// Tests

fn config() -> Config {
    // `Config::default` reads the PROPTEST_* environment variables.
    let base = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            CASES
        },
        rng_seed: match base.rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            fixed => fixed,
        },
        failure_persistence: None,
        max_shrink_time: 120_000,
        ..base
    }
}

#[test]
fn the_broker_keeps_the_promises_of_the_model() {
    let mut runner = TestRunner::new(config());
    let result = runner.run(&case(), |(profiles, steps)| {
        run(profiles, &steps);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

mod cases;
mod clients;
#[path = "../sim/mod.rs"]
mod sim;
mod steps;
mod world;

use cases::*;
use world::*;
