//! Hooks on the simulated clock: every event reaches the hooks that want it, at its one
//! place, and every decision (refuse a client, pass / change / drop / take a message,
//! change or refuse a filter, add subscriptions to a session) does what it says, answered
//! now or later; hooks run in order and see what the ones before them changed; an event no
//! hook wants is not asked about.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sim::*;
use starling_broker::hook::{
    AckEvent, Answer, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, DisconnectEvent,
    DropEvent, DropReason, Event, Events, FilterVerdict, Hook, Hooks, PublishVerdict,
    SessionActions, SessionChange, SessionEvent,
};
use starling_broker::{Broker, Limits};
use starling_proto::{
    Packet, Publish, QoS, ReasonCode, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};

/// What the recording hook decides.
#[derive(Clone, Debug, Default)]
struct Decisions {
    /// Refuse CONNECTs of this client id with this code.
    refuse_client: Option<(String, ReasonCode)>,
    /// Topic → what to do with a PUBLISH to it.
    publish: Vec<(String, PublishVerdict)>,
    /// Filter → what to do with a SUBSCRIBE / UNSUBSCRIBE of it.
    filter: Vec<(String, FilterVerdict)>,
    /// Subscriptions to add to every session that starts.
    auto: Vec<String>,
    /// Answer decisions later instead of now.
    later: bool,
}

/// A hook that records every event it is told of (as short strings) and decides as told.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    events: Events,
    decisions: Decisions,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(name: &'static str, events: Events, decisions: Decisions) -> Arc<Self> {
        Arc::new(Self {
            name,
            events,
            decisions,
            log: Arc::default(),
        })
    }

    fn log(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }

    fn seen(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn answer<T: Send + 'static>(&self, t: T) -> Answer<T> {
        if self.decisions.later {
            Answer::Later(Box::pin(async move { t }))
        } else {
            Answer::Now(t)
        }
    }
}

impl Hook for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn events(&self) -> Events {
        self.events
    }
    fn on_connect(&self, e: &ConnectEvent<'_>) -> Answer<ConnectVerdict> {
        self.log(format!(
            "{} connect {} user={:?} clean={}",
            self.name, e.client.client_id, e.client.username, e.clean_start
        ));
        let verdict = match &self.decisions.refuse_client {
            Some((id, code)) if id == e.client.client_id => ConnectVerdict::Refuse(*code),
            _ => ConnectVerdict::Accept,
        };
        self.answer(verdict)
    }
    fn on_publish(&self, c: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        self.log(format!(
            "{} publish {} {} {:?}",
            self.name,
            c.client_id,
            p.topic.as_str(),
            p.payload
        ));
        let verdict = (self.decisions.publish.iter())
            .find(|(t, _)| t == p.topic.as_str())
            .map_or(PublishVerdict::Pass, |(_, v)| v.clone());
        self.answer(verdict)
    }
    fn on_subscribe(
        &self,
        c: &ClientRef<'_>,
        f: &TopicFilter,
        o: &SubscriptionOptions,
    ) -> Answer<FilterVerdict> {
        self.log(format!(
            "{} subscribe {} {} q{}",
            self.name,
            c.client_id,
            f.as_str(),
            o.qos as u8
        ));
        self.answer(self.filter(f))
    }
    fn on_unsubscribe(&self, c: &ClientRef<'_>, f: &TopicFilter) -> Answer<FilterVerdict> {
        self.log(format!(
            "{} unsubscribe {} {}",
            self.name,
            c.client_id,
            f.as_str()
        ));
        self.answer(self.filter(f))
    }
    fn on_delivered(&self, e: &DeliveryEvent<'_>) {
        self.log(format!(
            "delivered {} {} q{} id{}",
            e.client_id,
            e.msg.topic.as_str(),
            e.qos as u8,
            e.packet_id
        ));
    }
    fn on_acked(&self, e: &AckEvent<'_>) {
        self.log(format!(
            "acked {} id{} q{}",
            e.client_id, e.packet_id, e.qos as u8
        ));
    }
    fn on_dropped(&self, e: &DropEvent<'_>) {
        self.log(format!(
            "dropped {:?} {} {:?}",
            e.client_id, e.topic, e.reason
        ));
    }
    fn on_session(&self, e: &SessionEvent<'_>, actions: &mut SessionActions) {
        self.log(format!("session {} {:?}", e.client_id, e.change));
        if matches!(e.change, SessionChange::Created | SessionChange::Resumed) {
            for f in &self.decisions.auto {
                let f = f.replace("%c", e.client_id);
                let options = SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                };
                actions
                    .subscribe
                    .push((TopicFilter::try_from_str(&f).unwrap(), options));
            }
        }
    }
    fn on_disconnected(&self, e: &DisconnectEvent<'_>) {
        self.log(format!(
            "disconnected {} {:?}",
            e.client.client_id, e.reason
        ));
    }
}

impl Recorder {
    fn filter(&self, f: &TopicFilter) -> FilterVerdict {
        (self.decisions.filter.iter())
            .find(|(t, _)| t == f.as_str())
            .map_or(FilterVerdict::Pass, |(_, v)| v.clone())
    }
}

fn sim_with(hooks: Vec<Arc<dyn Hook>>, limits: Limits) -> Sim {
    let broker = Broker::new(limits, Instant::now()).with_hooks(Hooks::new(hooks));
    Sim::on(broker)
}

fn topic(s: &str) -> TopicName {
    TopicName::try_from_str(s).unwrap()
}

fn changed(topic_name: &str, payload: &'static [u8], qos: QoS, retain: bool) -> PublishVerdict {
    let mut p = Publish::new(topic(topic_name), qos, 0, Bytes::from_static(payload));
    p.retain = retain;
    p.properties.content_type = Some("text/plain".into());
    PublishVerdict::Change(Box::new(p))
}

fn suback(packets: &[Packet]) -> Vec<ReasonCode> {
    match packets.iter().find(|p| matches!(p, Packet::SubAck(_))) {
        Some(Packet::SubAck(a)) => a.reasons.clone(),
        other => panic!("no SUBACK in {other:?}"),
    }
}

fn puback_reason(packets: &[Packet]) -> ReasonCode {
    match packets.iter().find(|p| matches!(p, Packet::PubAck(_))) {
        Some(Packet::PubAck(a)) => a.reason,
        other => panic!("no PUBACK in {other:?}"),
    }
}

#[test]
fn every_notification_reaches_the_hook_that_wants_it() {
    let rec = Recorder::new("r", Events::ALL, Decisions::default());
    let mut sim = sim_with(vec![rec.clone()], Limits::default());
    let (sub, _) = sim.connected(persistent(V5, "sub", 60));
    sim.send(sub, subscribe(1, "t/#", QoS::ExactlyOnce));
    sim.take(sub);
    let (publ, _) = sim.connected(connect(V5, "pub"));
    sim.send(publ, publish("t/1", QoS::AtLeastOnce, 1, b"a"));
    sim.send(publ, publish("t/2", QoS::ExactlyOnce, 2, b"b"));
    sim.send(publ, publish("nobody", QoS::AtMostOnce, 0, b"c"));
    sim.send(publ, pubrel(2));
    let got = sim.take(sub);
    let pubs = publishes(&got);
    assert_eq!(pubs.len(), 2);
    let (id1, id2) = (pubs[0].packet_id, pubs[1].packet_id);
    sim.send(sub, puback(id1));
    sim.send(sub, pubrec(id2));
    sim.send(sub, pubcomp(id2));
    // Another connection takes "sub" over; then it goes and its session expires.
    let (sub2, _) = sim.connected(persistent(V5, "sub", 1));
    sim.take(sub);
    sim.send(
        sub2,
        Packet::Disconnect(starling_proto::Disconnect::new(ReasonCode::Success)),
    );
    sim.advance(Duration::from_secs(3));
    let seen = rec.seen();
    let want = [
        "r connect sub user=None clean=false",
        "session sub Created",
        "r subscribe sub t/# q2",
        "r connect pub user=None clean=true",
        "session pub Created",
        "r publish pub t/1 b\"a\"",
        "r publish pub t/2 b\"b\"",
        "r publish pub nobody b\"c\"",
        "dropped Some(\"pub\") nobody NoSubscriber",
        &format!("delivered sub t/1 q1 id{id1}"),
        &format!("delivered sub t/2 q2 id{id2}"),
        &format!("acked sub id{id1} q1"),
        &format!("acked sub id{id2} q2"),
        "r connect sub user=None clean=false",
        "session sub Resumed",
        "session sub TakenOver",
        "disconnected sub SessionTakenOver",
        "disconnected sub Success",
        "session sub Expired",
    ];
    for w in want {
        assert!(seen.iter().any(|s| s == w), "missing {w:?} in {seen:#?}");
    }
    let pos = |w: &str| seen.iter().position(|s| s == w).unwrap();
    assert!(pos("r connect pub user=None clean=true") < pos("session pub Created"));
    assert!(pos("session sub Resumed") < pos("session sub Expired"));
}

#[test]
fn a_connect_hook_refuses_with_its_reason_code_and_3x_gets_the_nearest() {
    let rec = Recorder::new(
        "r",
        Events::NONE.with(Event::Connect),
        Decisions {
            refuse_client: Some(("bad".into(), ReasonCode::Banned)),
            ..Decisions::default()
        },
    );
    for later in [false, true] {
        let rec = Recorder::new(
            "r",
            rec.events,
            Decisions {
                later,
                ..rec.decisions.clone()
            },
        );
        let mut sim = sim_with(vec![rec], Limits::default());
        let c = sim.connect(connect(V5, "bad"));
        if later {
            assert!(sim.is_checking(c), "the CONNECT waits for the hook");
            sim.resolve_check(c);
        }
        match sim.take(c).first() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::Banned),
            other => panic!("{other:?}"),
        }
        assert!(sim.closed(c).is_some());
        let c = sim.connect(connect(V311, "bad"));
        if later {
            sim.resolve_check(c);
        }
        match sim.take(c).first() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason.to_v3_connack(), 5),
            other => panic!("{other:?}"),
        }
        let good = sim.connect(connect(V5, "good"));
        if later {
            sim.resolve_check(good);
        }
        match sim.take(good).first() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::Success),
            other => panic!("{other:?}"),
        }
        assert_eq!(sim.broker.metrics.hook_refused.get(), 2);
    }
}

#[test]
fn publish_decisions_pass_change_drop_and_take() {
    for later in [false, true] {
        let rec = Recorder::new(
            "r",
            Events::NONE.with(Event::Publish).with(Event::Dropped),
            Decisions {
                publish: vec![
                    (
                        "in/change".into(),
                        changed("out/changed", b"NEW", QoS::AtMostOnce, true),
                    ),
                    (
                        "in/drop".into(),
                        PublishVerdict::Drop(ReasonCode::QuotaExceeded),
                    ),
                    ("in/take".into(), PublishVerdict::Taken),
                ],
                later,
                ..Decisions::default()
            },
        );
        let mut sim = sim_with(vec![rec.clone()], Limits::default());
        let (sub, _) = sim.connected(connect(V5, "sub"));
        sim.send(sub, subscribe(1, "#", QoS::AtLeastOnce));
        sim.take(sub);
        let (publ, _) = sim.connected(connect(V5, "pub"));
        let steps = [
            ("in/pass", ReasonCode::Success),
            ("in/change", ReasonCode::Success),
            ("in/drop", ReasonCode::QuotaExceeded),
            ("in/take", ReasonCode::Success),
        ];
        for (i, (t, want)) in steps.iter().enumerate() {
            let pid = i as u16 + 1;
            sim.send(publ, publish(t, QoS::AtLeastOnce, pid, b"old"));
            if later {
                assert!(sim.is_checking(publ), "{t}: the PUBLISH waits");
                sim.resolve_check(publ);
            }
            assert_eq!(puback_reason(&sim.take(publ)), *want, "{t}");
        }
        let got = sim.take(sub);
        let pubs = publishes(&got);
        let topics: Vec<&str> = pubs.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, ["in/pass", "out/changed"], "later={later}");
        let c = pubs[1];
        assert_eq!(&c.payload[..], b"NEW");
        assert_eq!(c.qos, QoS::AtMostOnce, "the hook's QoS");
        assert!(
            !c.retain,
            "retain as published is off: the flag is cleared on delivery"
        );
        assert_eq!(c.properties.content_type.as_deref(), Some("text/plain"));
        // The changed message was retained.
        let (late, _) = sim.connected(connect(V5, "late"));
        sim.send(late, subscribe(1, "out/#", QoS::AtMostOnce));
        let got = sim.take(late);
        assert_eq!(publishes(&got).len(), 1, "the change made it retained");
        assert!(
            rec.seen()
                .iter()
                .any(|s| s == "dropped Some(\"pub\") in/drop Hook")
        );
        assert_eq!(sim.broker.metrics.dropped_by_hook.get(), 1);
    }
}

#[test]
fn hooks_run_in_order_and_see_what_the_ones_before_changed() {
    let first = Recorder::new(
        "first",
        Events::NONE.with(Event::Publish),
        Decisions {
            publish: vec![("a".into(), changed("b", b"1", QoS::AtLeastOnce, false))],
            later: true,
            ..Decisions::default()
        },
    );
    let second = Recorder::new(
        "second",
        Events::NONE.with(Event::Publish),
        Decisions {
            publish: vec![("b".into(), changed("c", b"2", QoS::AtLeastOnce, false))],
            ..Decisions::default()
        },
    );
    let third = Recorder::new(
        "third",
        Events::NONE.with(Event::Publish),
        Decisions {
            publish: vec![("c".into(), PublishVerdict::Drop(ReasonCode::NotAuthorized))],
            later: true,
            ..Decisions::default()
        },
    );
    let mut sim = sim_with(
        vec![first.clone(), second.clone(), third.clone()],
        Limits::default(),
    );
    let (publ, _) = sim.connected(connect(V5, "p"));
    sim.send(publ, publish("a", QoS::AtLeastOnce, 1, b"0"));
    sim.resolve_check(publ); // first
    sim.resolve_check(publ); // third
    assert_eq!(puback_reason(&sim.take(publ)), ReasonCode::NotAuthorized);
    assert_eq!(first.seen(), ["first publish p a b\"0\""]);
    assert_eq!(second.seen(), ["second publish p b b\"1\""]);
    assert_eq!(third.seen(), ["third publish p c b\"2\""]);
}

#[test]
fn a_qos2_resend_is_not_shown_to_the_hooks_again() {
    let rec = Recorder::new(
        "r",
        Events::NONE.with(Event::Publish),
        Decisions {
            publish: vec![("t".into(), PublishVerdict::Taken)],
            ..Decisions::default()
        },
    );
    let mut sim = sim_with(vec![rec.clone()], Limits::default());
    let (publ, _) = sim.connected(connect(V5, "p"));
    sim.send(publ, publish("t", QoS::ExactlyOnce, 7, b"x"));
    sim.send(publ, publish("t", QoS::ExactlyOnce, 7, b"x"));
    let got = sim.take(publ);
    assert_eq!(
        got.iter()
            .filter(|p| matches!(p, Packet::PubRec(_)))
            .count(),
        2
    );
    assert_eq!(rec.seen().len(), 1, "{:?}", rec.seen());
}

#[test]
fn filter_decisions_change_and_refuse_subscriptions_and_unsubscriptions() {
    for later in [false, true] {
        let rec = Recorder::new(
            "r",
            Events::NONE.with(Event::Subscribe).with(Event::Unsubscribe),
            Decisions {
                filter: vec![
                    (
                        "old/+".into(),
                        FilterVerdict::Change(
                            TopicFilter::try_from_str("new/+").unwrap(),
                            SubscriptionOptions::default(),
                        ),
                    ),
                    (
                        "secret/#".into(),
                        FilterVerdict::Refuse(ReasonCode::NotAuthorized),
                    ),
                    (
                        "keep".into(),
                        FilterVerdict::Refuse(ReasonCode::ImplementationSpecificError),
                    ),
                ],
                later,
                ..Decisions::default()
            },
        );
        let mut sim = sim_with(vec![rec], Limits::default());
        let (c, _) = sim.connected(connect(V5, "c"));
        let filters = ["old/+", "secret/#", "keep"].map(|f| {
            (
                TopicFilter::try_from_str(f).unwrap(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            )
        });
        sim.send(
            c,
            Packet::Subscribe(starling_proto::Subscribe {
                packet_id: 1,
                filters: filters.to_vec(),
                properties: Default::default(),
            }),
        );
        while sim.is_checking(c) {
            sim.resolve_check(c);
        }
        assert_eq!(
            suback(&sim.take(c)),
            [
                ReasonCode::Success, // changed to QoS 0 options by the hook
                ReasonCode::NotAuthorized,
                ReasonCode::ImplementationSpecificError
            ]
        );
        let (p, _) = sim.connected(connect(V5, "p"));
        sim.send(p, publish("new/x", QoS::AtMostOnce, 0, b"1"));
        sim.send(p, publish("old/x", QoS::AtMostOnce, 0, b"2"));
        let got = sim.take(c);
        let topics: Vec<&str> = publishes(&got).iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, ["new/x"], "subscribed to the changed filter");
        // UNSUBSCRIBE of the old filter is changed too, and removes the new one.
        sim.send(
            c,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: vec![
                    TopicFilter::try_from_str("old/+").unwrap(),
                    TopicFilter::try_from_str("keep").unwrap(),
                ],
                properties: Default::default(),
            }),
        );
        while sim.is_checking(c) {
            sim.resolve_check(c);
        }
        match sim.take(c).first() {
            Some(Packet::UnsubAck(a)) => assert_eq!(
                a.reasons,
                [ReasonCode::Success, ReasonCode::ImplementationSpecificError]
            ),
            other => panic!("{other:?}"),
        }
        sim.send(p, publish("new/x", QoS::AtMostOnce, 0, b"3"));
        assert!(publishes(&sim.take(c)).is_empty(), "unsubscribed");
    }
}

#[test]
fn a_session_hook_adds_subscriptions_that_persist_with_the_session() {
    let rec = Recorder::new(
        "r",
        Events::NONE.with(Event::Session),
        Decisions {
            auto: vec!["cmd/%c".into()],
            ..Decisions::default()
        },
    );
    let mut sim = sim_with(vec![rec], Limits::default());
    let (p, _) = sim.connected(connect(V5, "p"));
    sim.send(p, {
        let mut pk = publish("cmd/dev", QoS::AtLeastOnce, 1, b"retained");
        if let Packet::Publish(x) = &mut pk {
            x.retain = true;
        }
        pk
    });
    sim.take(p);
    let (dev, _) = sim.connected(persistent(V5, "dev", 60));
    let got = sim.take(dev);
    assert_eq!(
        publishes(&got).len(),
        1,
        "the retained message comes with the subscription"
    );
    sim.send(p, publish("cmd/dev", QoS::AtLeastOnce, 2, b"live"));
    let got = sim.take(dev);
    assert_eq!(&publishes(&got)[0].payload[..], b"live");
    let sessions = sim.broker.sessions_snapshot();
    let s = sessions.iter().find(|s| &**s.client_id() == "dev").unwrap();
    assert!(
        s.lock()
            .has_subscription(&TopicFilter::try_from_str("cmd/dev").unwrap())
    );
}

#[test]
fn drops_of_queued_and_expired_messages_are_told() {
    let rec = Recorder::new("r", Events::NONE.with(Event::Dropped), Decisions::default());
    let limits = Limits {
        max_queued_messages: 1,
        ..Limits::default()
    };
    let mut sim = sim_with(vec![rec.clone()], limits);
    let (sub, _) = sim.connected(persistent(V5, "sub", 600));
    sim.send(sub, subscribe(1, "q/#", QoS::AtLeastOnce));
    sim.take(sub);
    sim.drop_connection(sub);
    let (p, _) = sim.connected(connect(V5, "p"));
    sim.send(p, publish("q/1", QoS::AtLeastOnce, 1, b"1"));
    sim.send(p, publish("q/2", QoS::AtLeastOnce, 2, b"2"));
    let mut expiring = publish("q/3", QoS::AtLeastOnce, 3, b"3");
    if let Packet::Publish(x) = &mut expiring {
        x.properties.message_expiry_interval = Some(1);
    }
    sim.send(p, expiring);
    sim.advance(Duration::from_secs(2));
    let (_sub, _) = sim.connected(persistent(V5, "sub", 600));
    let seen = rec.seen();
    assert!(
        seen.iter()
            .any(|s| s == "dropped Some(\"sub\") q/1 QueueFull"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s == "dropped Some(\"sub\") q/2 QueueFull"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s == "dropped Some(\"sub\") q/3 Expired"),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|s| s.contains("NoSubscriber")));
    let _ = DropReason::TooLarge;
}

#[test]
fn an_event_no_hook_wants_is_not_asked() {
    let rec = Recorder::new(
        "r",
        Events::NONE.with(Event::Acked),
        Decisions {
            publish: vec![("t".into(), PublishVerdict::Drop(ReasonCode::NotAuthorized))],
            refuse_client: Some(("c".into(), ReasonCode::Banned)),
            ..Decisions::default()
        },
    );
    let mut sim = sim_with(vec![rec.clone()], Limits::default());
    let (c, _) = sim.connected(connect(V5, "c"));
    sim.send(c, subscribe(1, "t", QoS::AtLeastOnce));
    sim.take(c);
    sim.send(c, publish("t", QoS::AtLeastOnce, 1, b"x"));
    let got = sim.take(c);
    assert_eq!(puback_reason(&got), ReasonCode::Success);
    let id = publishes(&got)[0].packet_id;
    sim.send(c, puback(id));
    assert_eq!(rec.seen(), [format!("acked c id{id} q1")]);
}

#[test]
fn a_later_answer_on_one_filter_does_not_ask_the_others_twice() {
    let now = Recorder::new(
        "now",
        Events::NONE.with(Event::Subscribe),
        Decisions {
            filter: vec![("x".into(), FilterVerdict::Refuse(ReasonCode::QuotaExceeded))],
            ..Decisions::default()
        },
    );
    let later = Recorder::new(
        "later",
        Events::NONE.with(Event::Subscribe),
        Decisions {
            later: true,
            ..Decisions::default()
        },
    );
    let mut sim = sim_with(vec![now.clone(), later.clone()], Limits::default());
    let (c, _) = sim.connected(connect(V5, "c"));
    let filters = ["x", "y", "z"].map(|f| {
        (
            TopicFilter::try_from_str(f).unwrap(),
            SubscriptionOptions::default(),
        )
    });
    sim.send(
        c,
        Packet::Subscribe(starling_proto::Subscribe {
            packet_id: 1,
            filters: filters.to_vec(),
            properties: Default::default(),
        }),
    );
    let mut parks = 0;
    while sim.is_checking(c) {
        sim.resolve_check(c);
        parks += 1;
    }
    assert_eq!(
        parks, 2,
        "y and z each wait for the later hook (x was refused first)"
    );
    assert_eq!(
        suback(&sim.take(c)),
        [
            ReasonCode::QuotaExceeded,
            ReasonCode::Success,
            ReasonCode::Success
        ]
    );
    assert_eq!(
        now.seen(),
        [
            "now subscribe c x q0",
            "now subscribe c y q0",
            "now subscribe c z q0"
        ],
        "each filter asked once"
    );
    assert_eq!(
        later.seen(),
        ["later subscribe c y q0", "later subscribe c z q0"]
    );
    assert_eq!(sim.broker.metrics.hook_refused.get(), 1);
}
