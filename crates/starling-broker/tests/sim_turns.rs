//! Fairness between connections on the simulated clock: a client's burst of messages to many
//! subscribers is routed a turn at a time (`TURN_DELIVERIES`), so that other clients' input
//! is handled in between, and nothing of the burst is lost or reordered; the turns of a burst
//! that nobody else's messages come between for `QUIET` grow (`MAX_TURN_SHIFT`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use sim::*;
use starling_broker::Limits;
use starling_broker::connection::{MAX_TURN_SHIFT, QUIET, TURN_DELIVERIES};
use starling_proto::QoS;

/// Subscribers of the burst's topic.
const FAN_OUT: usize = 40;
/// Messages in the burst.
const BURST: usize = 100;

/// The payloads of the publishes `c` received, in order.
fn payloads(sim: &mut Sim, c: C) -> Vec<Vec<u8>> {
    let packets = sim.take(c);
    publishes(&packets)
        .into_iter()
        .map(|p| p.payload.to_vec())
        .collect()
}

/// A simulation with `FAN_OUT` subscribers of `burst`, one of `steady`, and the two
/// publishers: (sim, burst subscribers, steady subscriber, burst publisher, steady publisher).
fn setup(qos: QoS) -> (Sim, Vec<C>, C, C, C) {
    let mut sim = Sim::new(Limits::default());
    let subscribers: Vec<C> = (0..FAN_OUT)
        .map(|i| {
            let (c, _) = sim.connected(connect(V5, &format!("sub-{i}")));
            sim.send(c, subscribe(1, "burst", qos));
            sim.take(c);
            c
        })
        .collect();
    let (steady_sub, _) = sim.connected(connect(V5, "steady-sub"));
    sim.send(steady_sub, subscribe(1, "steady", qos));
    sim.take(steady_sub);
    let (flooder, _) = sim.connected(connect(V5, "flooder"));
    let (steady, _) = sim.connected(connect(V5, "steady"));
    // The broker's first tick, due at start, out of the way of `Sim::elapse`.
    sim.advance(std::time::Duration::from_millis(1));
    (sim, subscribers, steady_sub, flooder, steady)
}

/// The burst's bytes: `BURST` publishes, payload = their number.
fn burst(qos: QoS) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..BURST {
        let id = u16::try_from(i + 1).unwrap();
        let id = if qos == QoS::AtMostOnce { 0 } else { id };
        let p = publish("burst", qos, id, &[u8::try_from(i).unwrap()]);
        bytes.extend_from_slice(&encode(&p, V5));
    }
    bytes
}

#[test]
fn a_burst_to_many_subscribers_is_routed_a_turn_at_a_time() {
    let (mut sim, subscribers, steady_sub, flooder, steady) = setup(QoS::AtMostOnce);
    // The whole burst and the steady client's message arrive together.
    sim.queue_raw(flooder, &burst(QoS::AtMostOnce));
    sim.queue_raw(
        steady,
        &encode(&publish("steady", QoS::AtMostOnce, 0, b"s"), V5),
    );
    // Two rounds: in each, every client's turn once, in the order they connected (the
    // subscribers first, so what the publishers sent in one round reaches them in the next).
    sim.step();
    sim.step();
    // The steady message went through in the first round, beside the first turn's worth of
    // the burst: the messages whose deliveries reach TURN_DELIVERIES, and no more.
    assert_eq!(payloads(&mut sim, steady_sub), vec![b"s".to_vec()]);
    let turn = (TURN_DELIVERIES as usize).div_ceil(FAN_OUT);
    assert!(
        turn < BURST,
        "the test's burst must be longer than one turn"
    );
    for &c in &subscribers {
        let got = payloads(&mut sim, c);
        let expected: Vec<Vec<u8>> = (0..turn).map(|i| vec![i as u8]).collect();
        assert_eq!(got, expected, "first turn of {c:?}");
    }
    // The rest follows in later turns, in order, none lost.
    sim.settle();
    for &c in &subscribers {
        let got = payloads(&mut sim, c);
        let expected: Vec<Vec<u8>> = (turn..BURST).map(|i| vec![i as u8]).collect();
        assert_eq!(got, expected, "the rest for {c:?}");
    }
}

#[test]
fn every_message_of_a_qos1_burst_is_acknowledged_in_order() {
    let (mut sim, subscribers, _, flooder, _) = setup(QoS::AtLeastOnce);
    sim.queue_raw(flooder, &burst(QoS::AtLeastOnce));
    sim.settle();
    let packets = sim.take(flooder);
    let acks: Vec<u16> = pubacks(&packets).iter().map(|a| a.packet_id).collect();
    let expected: Vec<u16> = (1..=u16::try_from(BURST).unwrap()).collect();
    assert_eq!(acks, expected);
    // Each subscriber has a window of inflight messages: acknowledged as they come.
    for &c in &subscribers {
        let mut got = Vec::new();
        for _ in 0..BURST {
            let packets = sim.take(c);
            if packets.is_empty() {
                break;
            }
            for p in publishes(&packets) {
                got.push(p.payload[0]);
                sim.send(c, puback(p.packet_id));
            }
        }
        let expected: Vec<u8> = (0..BURST).map(|i| i as u8).collect();
        assert_eq!(got, expected, "{c:?}");
    }
}

/// The messages of each turn of the burst, as the subscribers receive them: one `step` a
/// round, with `between` run before each (another client's publish, say).
fn turn_sizes(sim: &mut Sim, subscribers: &[C], mut between: impl FnMut(&mut Sim)) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut total = 0;
    for _ in 0..BURST {
        between(sim);
        sim.step();
        let got: Vec<usize> = subscribers
            .iter()
            .map(|&c| payloads(sim, c).len())
            .collect();
        assert!(
            got.iter().all(|&n| n == got[0]),
            "every subscriber alike: {got:?}"
        );
        if got[0] > 0 {
            sizes.push(got[0]);
        }
        total += got[0];
        if total == BURST {
            return sizes;
        }
    }
    panic!("the burst did not end: {sizes:?}");
}

#[test]
fn a_burst_nobody_else_comes_between_is_routed_in_growing_turns() {
    let (mut sim, subscribers, _, flooder, _) = setup(QoS::AtMostOnce);
    sim.queue_raw(flooder, &burst(QoS::AtMostOnce));
    // Each round takes the quiet period: from the second turn on, each turn's deliveries
    // double (up to the bound), a whole message at a time.
    let sizes = turn_sizes(&mut sim, &subscribers, |sim| sim.elapse(QUIET));
    let mut expected = Vec::new();
    let mut left = BURST;
    for shift in 0.. {
        let limit = (TURN_DELIVERIES as usize) << shift.min(MAX_TURN_SHIFT);
        let n = limit.div_ceil(FAN_OUT).min(left);
        expected.push(n);
        left -= n;
        if left == 0 {
            break;
        }
    }
    assert!(
        expected.len() > 2,
        "the test's burst must span several turns"
    );
    assert_eq!(sizes, expected);
}

#[test]
fn a_burst_among_other_publishers_keeps_its_turns_short() {
    let (mut sim, subscribers, steady_sub, flooder, steady) = setup(QoS::AtMostOnce);
    sim.queue_raw(flooder, &burst(QoS::AtMostOnce));
    let mut sent = 0;
    let sizes = turn_sizes(&mut sim, &subscribers, |sim| {
        sim.elapse(QUIET);
        sim.queue_raw(
            steady,
            &encode(&publish("steady", QoS::AtMostOnce, 0, b"s"), V5),
        );
        sent += 1;
    });
    let turn = (TURN_DELIVERIES as usize).div_ceil(FAN_OUT);
    let (last, full) = sizes.split_last().unwrap();
    assert!(full.len() > 2, "the test's burst must span several turns");
    assert!(full.iter().all(|&n| n == turn), "{sizes:?}");
    assert!(*last <= turn);
    // And every steady message went through on its own round.
    sim.settle();
    assert_eq!(payloads(&mut sim, steady_sub).len(), sent);
}

/// A message routed to `session::FAN_OUT` subscribers or more wakes them with the fan-out
/// hint (`Wake::wake_in_fan_out`: the server's tasks then gather the publisher's next
/// messages before writing); one to fewer wakes them plainly. Either way all of it arrives.
#[test]
fn a_message_to_many_subscribers_wakes_them_as_a_fan_out() {
    use starling_broker::session::FAN_OUT as WIDE;
    let mut sim = Sim::new(Limits::default());
    let subscriber = |sim: &mut Sim, id: String, filter: &str| {
        let (c, _) = sim.connected(connect(V5, &id));
        sim.send(c, subscribe(1, filter, QoS::AtLeastOnce));
        sim.take(c);
        c
    };
    let wide: Vec<C> = (0..WIDE)
        .map(|i| subscriber(&mut sim, format!("wide-{i}"), "wide"))
        .collect();
    let narrow: Vec<C> = (0..WIDE - 1)
        .map(|i| subscriber(&mut sim, format!("narrow-{i}"), "narrow"))
        .collect();
    let (publisher, _) = sim.connected(connect(V5, "publisher"));
    for (topic, qos, id) in [
        ("wide", QoS::AtMostOnce, 0),
        ("narrow", QoS::AtLeastOnce, 1),
    ] {
        sim.send(publisher, publish(topic, qos, id, b"m"));
    }
    sim.settle();
    for &c in &wide {
        assert_eq!(sim.fanned_wakes(c), 1, "a subscriber of the wide topic");
        assert_eq!(payloads(&mut sim, c), vec![b"m".to_vec()]);
    }
    for &c in &narrow {
        assert_eq!(sim.fanned_wakes(c), 0, "a subscriber of the narrow topic");
        assert_eq!(payloads(&mut sim, c), vec![b"m".to_vec()]);
    }
}
