//! Session behaviour on the simulated clock: keep-alive, the CONNECT timeout, will delay,
//! session and message expiry, takeover, resending on resume, flow control and the publish
//! rate, exactly at the times the specification gives, in microseconds of real time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use std::time::Duration;

use sim::*;
use starling_broker::Limits;
use starling_proto::{Packet, QoS, ReasonCode};

#[test]
fn keep_alive_closes_at_one_and_a_half_times_the_interval() {
    let mut sim = Sim::new(Limits::default());
    let (watcher, _) = sim.connected(connect(V5, "watcher"));
    sim.send(watcher, subscribe(1, "will/#", QoS::AtMostOnce));
    sim.take(watcher);
    let mut c = connect(V5, "ka");
    c.keep_alive = 10;
    c.will = Some(will("will/ka", None));
    let (ka, _) = sim.connected(c);
    // PINGREQ at 14 s resets the timer.
    sim.advance(Duration::from_secs(14));
    sim.send(ka, Packet::PingReq);
    assert_eq!(sim.take(ka), [Packet::PingResp]);
    sim.advance(Duration::from_millis(14_999));
    assert!(!sim.is_gone(ka), "closed before 1.5 x keep-alive");
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_gone(ka));
    match &sim.take(ka)[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    assert_eq!(sim.closed(ka).unwrap().reason, ReasonCode::KeepAliveTimeout);
    // An abnormal end: the will goes out.
    let got = sim.take(watcher);
    assert_eq!(publishes(&got).len(), 1, "{got:?}");
}

#[test]
fn a_connection_without_connect_is_closed_at_the_connect_timeout() {
    let limits = Limits {
        connect_timeout_secs: 5,
        ..Limits::default()
    };
    let mut sim = Sim::new(limits);
    let c = sim.connect(connect(V311, "x"));
    sim.take(c);
    // A second connection that never sends anything.
    let silent = sim.connect_silent();
    sim.advance(Duration::from_millis(4_999));
    assert!(!sim.is_gone(silent));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_gone(silent));
    assert_eq!(
        sim.closed(silent).unwrap().reason,
        ReasonCode::MaximumConnectTime
    );
    assert!(!sim.is_gone(c), "the connected client stays");
}

#[test]
fn a_delayed_will_waits_for_its_delay_and_a_resume_cancels_it() {
    let mut sim = Sim::new(Limits::default());
    let (watcher, _) = sim.connected(connect(V5, "watcher"));
    sim.send(watcher, subscribe(1, "w/#", QoS::AtMostOnce));
    sim.take(watcher);

    let mut c = persistent(V5, "delayed", 60);
    c.will = Some(will("w/delayed", Some(5)));
    let (delayed, _) = sim.connected(c);
    sim.drop_connection(delayed);
    sim.advance(Duration::from_millis(4_999));
    assert!(publishes(&sim.take(watcher)).is_empty(), "before the delay");
    sim.advance(Duration::from_secs(1));
    let got = sim.take(watcher);
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].topic.as_str(), "w/delayed");
    assert_eq!(
        p[0].properties.will_delay_interval, None,
        "the delay is not sent on"
    );

    // Resumed within the delay: no will.
    let mut c = persistent(V5, "resumed", 60);
    c.will = Some(will("w/resumed", Some(5)));
    let (resumed, _) = sim.connected(c);
    sim.drop_connection(resumed);
    sim.advance(Duration::from_secs(3));
    let (_again, ack) = sim.connected(persistent(V5, "resumed", 60));
    assert!(ack.session_present);
    sim.advance(Duration::from_secs(10));
    assert!(
        publishes(&sim.take(watcher)).is_empty(),
        "the resume cancelled the will"
    );

    // A session that expires before the will delay: the will goes out when it ends.
    let mut c = persistent(V5, "short", 2);
    c.will = Some(will("w/short", Some(30)));
    let (short, _) = sim.connected(c);
    sim.drop_connection(short);
    sim.advance(Duration::from_secs(3));
    let got = sim.take(watcher);
    assert_eq!(publishes(&got).len(), 1, "sent at session end: {got:?}");
}

#[test]
fn disconnect_with_will_sends_it_and_a_normal_disconnect_does_not() {
    let mut sim = Sim::new(Limits::default());
    let (watcher, _) = sim.connected(connect(V5, "watcher"));
    sim.send(watcher, subscribe(1, "w/#", QoS::AtMostOnce));
    let mut c = connect(V5, "a");
    c.will = Some(will("w/a", None));
    let (a, _) = sim.connected(c);
    sim.send(
        a,
        Packet::Disconnect(starling_proto::Disconnect::new(ReasonCode::Success)),
    );
    let mut c = connect(V5, "b");
    c.will = Some(will("w/b", None));
    let (b, _) = sim.connected(c);
    let with_will = starling_proto::Disconnect::new(ReasonCode::DisconnectWithWill);
    sim.send(b, Packet::Disconnect(with_will));
    let got = sim.take(watcher);
    let topics: Vec<_> = publishes(&got)
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(topics, ["w/b"]);
    assert!(sim.is_gone(a) && sim.is_gone(b));
    assert_eq!(
        sim.closed(a).unwrap().reason,
        ReasonCode::Success,
        "not an error"
    );
}

#[test]
fn a_session_lasts_its_expiry_interval_and_no_longer() {
    let mut sim = Sim::new(Limits::default());
    let (s, ack) = sim.connected(persistent(V5, "s", 10));
    assert!(!ack.session_present);
    sim.send(s, subscribe(1, "exp/#", QoS::AtLeastOnce));
    sim.send(
        s,
        Packet::Disconnect(starling_proto::Disconnect::new(ReasonCode::Success)),
    );
    let (p, _) = sim.connected(connect(V5, "pub"));
    sim.send(p, publish("exp/1", QoS::AtLeastOnce, 1, b"queued"));
    sim.advance(Duration::from_secs(9));
    let (s, ack) = sim.connected(persistent(V5, "s", 10));
    assert!(ack.session_present, "within the expiry");
    let got = sim.take(s);
    assert_eq!(&publishes(&got)[0].payload[..], b"queued");
    sim.drop_connection(s);
    sim.advance(Duration::from_millis(9_999));
    assert_eq!(sim.broker.session_count(), 2);
    sim.advance(Duration::from_secs(1));
    assert_eq!(
        sim.broker.session_count(),
        1,
        "expired (only pub's session is left)"
    );
    assert_eq!(sim.broker.metrics.sessions_expired.get(), 1);
    let (_s, ack) = sim.connected(persistent(V5, "s", 10));
    assert!(!ack.session_present);
    assert_eq!(
        sim.broker.subscription_count(),
        0,
        "its subscriptions went with it"
    );
}

#[test]
fn queued_messages_expire_and_the_rest_of_the_interval_is_sent_on() {
    let mut sim = Sim::new(Limits::default());
    let (s, _) = sim.connected(persistent(V5, "offline", 600));
    sim.send(s, subscribe(1, "exp/#", QoS::AtLeastOnce));
    sim.drop_connection(s);
    let (p, _) = sim.connected(connect(V5, "pub"));
    for (i, (topic, secs)) in [("exp/short", 5), ("exp/long", 60)].into_iter().enumerate() {
        let mut msg = publish(topic, QoS::AtLeastOnce, i as u16 + 1, b"m");
        if let Packet::Publish(p) = &mut msg {
            p.properties.message_expiry_interval = Some(secs);
        }
        sim.send(p, msg);
    }
    sim.advance(Duration::from_secs(7));
    let (s, _) = sim.connected(persistent(V5, "offline", 600));
    let got = sim.take(s);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(p[0].topic.as_str(), "exp/long");
    assert_eq!(p[0].properties.message_expiry_interval, Some(53));
    assert_eq!(sim.broker.metrics.dropped_expired.get(), 1);
}

#[test]
fn a_takeover_closes_the_old_connection_and_resumes_the_session() {
    let mut sim = Sim::new(Limits::default());
    let (old, _) = sim.connected(persistent(V5, "same", 60));
    sim.send(old, subscribe(1, "t", QoS::AtLeastOnce));
    sim.take(old);
    let (new, ack) = sim.connected(persistent(V5, "same", 60));
    assert!(ack.session_present);
    assert!(sim.is_gone(old));
    match &sim.take(old)[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    // The subscription moved with the session.
    let (p, _) = sim.connected(connect(V5, "p"));
    sim.send(p, publish("t", QoS::AtMostOnce, 0, b"x"));
    assert_eq!(publishes(&sim.take(new)).len(), 1);
    // Clean start ends the old session: its subscription is gone.
    let (clean, ack) = sim.connected(connect(V5, "same"));
    assert!(!ack.session_present);
    assert!(sim.is_gone(new));
    sim.send(p, publish("t", QoS::AtMostOnce, 0, b"y"));
    assert!(publishes(&sim.take(clean)).is_empty());
    assert_eq!(sim.broker.subscription_count(), 0);
}

/// A DISCONNECT the old connection has received but not yet read (its task had not run) is
/// handled before a new connection for the same client id takes the session: the session it
/// ended is not resumed, and the will it cancelled is not sent.
#[test]
fn a_disconnect_already_received_is_handled_before_the_takeover() {
    let mut sim = Sim::new(Limits::default());
    let (watcher, _) = sim.connected(connect(V5, "watcher"));
    sim.send(watcher, subscribe(1, "will/#", QoS::AtMostOnce));
    sim.take(watcher);

    // v5: expiry 60 at CONNECT, 0 in DISCONNECT.
    let mut c = persistent(V5, "same", 60);
    c.will = Some(will("will/v5", None));
    let (old, _) = sim.connected(c);
    sim.send(old, subscribe(1, "t", QoS::AtLeastOnce));
    sim.take(old);
    sim.stall(old);
    let mut bye = starling_proto::Disconnect::new(ReasonCode::Success);
    bye.properties.session_expiry_interval = Some(0);
    sim.send(old, Packet::Disconnect(bye));
    assert!(!sim.is_gone(old), "the DISCONNECT is not read yet");
    let (_new, ack) = sim.connected(persistent(V5, "same", 60));
    assert!(
        !ack.session_present,
        "the session ended with the DISCONNECT"
    );
    assert_eq!(sim.closed(old).unwrap().reason, ReasonCode::Success);
    assert!(
        sim.take(old).is_empty(),
        "no DISCONNECT 0x8E to a client that left"
    );
    assert_eq!(sim.broker.subscription_count(), 1, "only the watcher's");

    // 3.1.1: a clean session's will, cancelled by DISCONNECT, is not sent by the takeover.
    let mut c = connect(V311, "same311");
    c.will = Some(will("will/v311", None));
    let (old, _) = sim.connected(c);
    sim.stall(old);
    sim.send(
        old,
        Packet::Disconnect(starling_proto::Disconnect::new(ReasonCode::Success)),
    );
    let (_new, ack) = sim.connected(connect(V311, "same311"));
    assert!(!ack.session_present);
    assert!(sim.is_gone(old));
    assert!(
        publishes(&sim.take(watcher)).is_empty(),
        "no will after a DISCONNECT"
    );

    // Without a DISCONNECT the takeover is as before: 0x8E, and the session resumed.
    let (old, _) = sim.connected(persistent(V5, "again", 60));
    sim.stall(old);
    let (_new, ack) = sim.connected(persistent(V5, "again", 60));
    assert!(ack.session_present);
    match &sim.take(old)[..] {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
}

/// An owner whose task does not run cannot hold a new connection back: after half a second
/// the session is taken over without it, and what the new client sent after CONNECT is
/// handled then, in order.
#[test]
fn an_owner_that_does_not_hand_over_is_taken_over_after_the_wait() {
    let mut sim = Sim::new(Limits::default());
    let (old, _) = sim.connected(persistent(V5, "stuck", 60));
    sim.send(old, subscribe(1, "a", QoS::AtLeastOnce));
    sim.take(old);
    sim.freeze(old);
    let new = sim.connect(persistent(V5, "stuck", 60));
    sim.send(new, subscribe(2, "b", QoS::AtLeastOnce));
    assert!(sim.take(new).is_empty(), "waiting for the handover");
    sim.advance(Duration::from_millis(499));
    assert!(sim.take(new).is_empty(), "still waiting");
    sim.advance(Duration::from_millis(1));
    match &sim.take(new)[..] {
        [Packet::ConnAck(ack), Packet::SubAck(sub)] => {
            assert!(ack.session_present);
            assert_eq!(sub.packet_id, 2);
        }
        other => panic!("expected CONNACK then SUBACK, got {other:?}"),
    }
    assert_eq!(sim.broker.subscription_count(), 2, "a from before, b now");

    // Two new connections at once: the first stops waiting when the second comes, and the
    // later claim wins, as without a handover.
    let first = sim.connect(persistent(V5, "stuck", 60));
    let second = sim.connect(persistent(V5, "stuck", 60));
    let got = sim.take(first);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a), Packet::Disconnect(d)]
            if a.session_present && d.reason == ReasonCode::SessionTakenOver),
        "{got:?}"
    );
    match sim.take_one(second) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn unacknowledged_messages_are_resent_on_resume_in_order() {
    let mut sim = Sim::new(Limits::default());
    let (s, _) = sim.connected(persistent(V311, "s", 0));
    sim.send(s, subscribe(1, "t", QoS::ExactlyOnce));
    sim.take(s);
    let (p, _) = sim.connected(connect(V311, "p"));
    sim.send(p, publish("t", QoS::AtLeastOnce, 1, b"one"));
    sim.send(p, publish("t", QoS::ExactlyOnce, 2, b"two"));
    sim.send(p, pubrel(2));
    let got = sim.take(s);
    let first = publishes(&got)
        .iter()
        .map(|p| p.packet_id)
        .collect::<Vec<_>>();
    assert_eq!(first.len(), 2);
    // The QoS 2 message gets as far as PUBREC, then the connection drops.
    sim.send(s, pubrec(first[1]));
    assert!(matches!(&sim.take(s)[..], [Packet::PubRel(r)] if r.packet_id == first[1]));
    sim.drop_connection(s);
    let (s, ack) = sim.connected(persistent(V311, "s", 0));
    assert!(ack.session_present);
    let got = sim.take(s);
    match &got[..] {
        [Packet::Publish(one), Packet::PubRel(rel)] => {
            assert!(one.dup, "resent with DUP");
            assert_eq!(one.packet_id, first[0]);
            assert_eq!(rel.packet_id, first[1]);
        }
        other => panic!("expected PUBLISH (DUP) then PUBREL, got {other:?}"),
    }
}

#[test]
fn a_resent_message_larger_than_the_new_maximum_packet_size_is_dropped() {
    let mut sim = Sim::new(Limits::default());
    let (s, _) = sim.connected(persistent(V5, "s", 60));
    sim.send(s, subscribe(1, "t", QoS::AtLeastOnce));
    let (p, _) = sim.connected(connect(V5, "p"));
    sim.send(p, publish("t", QoS::AtLeastOnce, 1, &[7; 500]));
    sim.send(p, publish("t", QoS::AtLeastOnce, 2, b"small"));
    sim.take(s);
    sim.drop_connection(s);
    // The client comes back accepting packets of at most 100 bytes.
    let mut c = persistent(V5, "s", 60);
    c.properties.maximum_packet_size = Some(100);
    let (s, _) = sim.connected(c);
    let got = sim.take(s);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(&p[0].payload[..], b"small");
    assert!(p[0].dup);
    assert_eq!(sim.broker.metrics.dropped_too_large.get(), 1);
    // It was discarded as delivered: not sent again on the next resume either.
    sim.drop_connection(s);
    let (s, _) = sim.connected(persistent(V5, "s", 60));
    assert_eq!(publishes(&sim.take(s)).len(), 1);
}

/// Deliveries dropped while filling the output (too large for the client, here) leave the
/// connection's output without memory: an idle connection holds none for them.
#[test]
fn dropped_deliveries_leave_no_output_memory_behind() {
    let mut sim = Sim::new(Limits::default());
    let mut c = connect(V5, "s");
    c.properties.maximum_packet_size = Some(100);
    let (s, _) = sim.connected(c);
    sim.send(s, subscribe(1, "t", QoS::AtMostOnce));
    sim.take(s);
    let (p, _) = sim.connected(connect(V5, "p"));
    for _ in 0..10 {
        sim.send(p, publish("t", QoS::AtMostOnce, 0, &[7; 5_000]));
    }
    assert!(publishes(&sim.take(s)).is_empty());
    assert_eq!(sim.broker.metrics.dropped_too_large.get(), 10);
    assert_eq!(sim.output_capacity(s), 0);
}

#[test]
fn the_clients_receive_maximum_bounds_what_is_in_flight() {
    let mut sim = Sim::new(Limits::default());
    let mut c = connect(V5, "s");
    c.properties.receive_maximum = Some(2);
    let (s, _) = sim.connected(c);
    sim.send(s, subscribe(1, "t", QoS::AtLeastOnce));
    sim.take(s);
    let (p, _) = sim.connected(connect(V5, "p"));
    for i in 1..=5u16 {
        sim.send(p, publish("t", QoS::AtLeastOnce, i, &[i as u8]));
    }
    let mut seen = Vec::new();
    loop {
        let got = sim.take(s);
        let ids: Vec<u16> = publishes(&got).iter().map(|p| p.packet_id).collect();
        seen.extend(publishes(&got).iter().map(|p| p.payload[0]));
        assert!(
            ids.len() <= 2,
            "more than the Receive Maximum in flight: {ids:?}"
        );
        if ids.is_empty() {
            break;
        }
        for id in ids {
            sim.send(s, puback(id));
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5], "all of them, in order");
}

#[test]
fn the_publish_rate_pauses_reading_instead_of_disconnecting() {
    let limits = Limits {
        max_publish_rate: 10,
        ..Limits::default()
    };
    let mut sim = Sim::new(limits);
    let (s, _) = sim.connected(connect(V5, "s"));
    sim.send(s, subscribe(1, "r", QoS::AtMostOnce));
    sim.take(s);
    let (p, _) = sim.connected(connect(V5, "p"));
    let mut burst = Vec::new();
    for i in 0..30u8 {
        burst.extend_from_slice(&encode(&publish("r", QoS::AtMostOnce, 0, &[i]), V5));
    }
    sim.send_raw(p, &burst);
    assert_eq!(publishes(&sim.take(s)).len(), 10, "a one-second burst");
    sim.advance(Duration::from_millis(1_000));
    assert_eq!(publishes(&sim.take(s)).len(), 10, "ten more per second");
    sim.advance(Duration::from_millis(1_000));
    assert_eq!(publishes(&sim.take(s)).len(), 10);
    assert!(!sim.is_gone(p));
    assert!(sim.broker.metrics.rate_limited.get() >= 2);
}

/// An owner paused by its publish rate has packets read but not handled; a DISCONNECT among
/// them still comes before the takeover.
#[test]
fn a_disconnect_behind_a_publish_rate_pause_comes_before_the_takeover() {
    let limits = Limits {
        max_publish_rate: 2,
        ..Limits::default()
    };
    let mut sim = Sim::new(limits);
    let (old, _) = sim.connected(persistent(V5, "paused", 60));
    let mut bytes = Vec::new();
    for i in 0..5u8 {
        bytes.extend_from_slice(&encode(&publish("r", QoS::AtMostOnce, 0, &[i]), V5));
    }
    let mut bye = starling_proto::Disconnect::new(ReasonCode::Success);
    bye.properties.session_expiry_interval = Some(0);
    bytes.extend_from_slice(&encode(&Packet::Disconnect(bye), V5));
    sim.send_raw(old, &bytes);
    assert!(!sim.is_gone(old), "paused before the DISCONNECT");
    let (_new, ack) = sim.connected(persistent(V5, "paused", 60));
    assert!(
        !ack.session_present,
        "the session ended with the DISCONNECT"
    );
    assert_eq!(sim.closed(old).unwrap().reason, ReasonCode::Success);
}
