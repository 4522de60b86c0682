//! Checks answered later, on the simulated clock: a CONNECT, PUBLISH or SUBSCRIBE whose
//! authentication or authorization needs a backend's future waits for it, reads nothing more
//! meanwhile, and goes on with the answer; what a grant gives the session (its own rules, the
//! end of its credentials) is enforced.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sim;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sim::*;
use starling_auth::{
    AclFile, Answer, AuthDecision, Authenticator, Authorizer, Client, ConnectInfo, DenyReason,
    Grant,
};
use starling_broker::{Limits, ListenerAccess};
use starling_proto::{Packet, QoS, ReasonCode};

/// An authenticator that answers later with what the test put in `answer` (asked once per
/// CONNECT; counted).
#[derive(Debug, Default)]
struct LaterAuth {
    answer: Arc<Mutex<Option<AuthDecision>>>,
    asked: AtomicUsize,
}

impl Authenticator for LaterAuth {
    fn authenticate(&self, _: &ConnectInfo<'_>) -> Answer<AuthDecision> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let answer = self.answer.clone();
        Answer::Later(Box::pin(async move {
            answer
                .lock()
                .unwrap()
                .clone()
                .expect("the test answers before resolving")
        }))
    }
}

/// An authenticator that allows at once with a fixed grant.
#[derive(Debug)]
struct Granting(Grant);

impl Authenticator for Granting {
    fn authenticate(&self, _: &ConnectInfo<'_>) -> Answer<AuthDecision> {
        Answer::Now(AuthDecision::Allow(self.0.clone()))
    }
}

/// An authorizer that answers publish and subscribe later: allowed when the topic starts with
/// `ok/`; counts the questions.
#[derive(Debug, Default)]
struct LaterAcl {
    asked: AtomicUsize,
}

impl LaterAcl {
    fn later(&self, topic: &str) -> Answer<bool> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let allowed = topic.starts_with("ok/");
        Answer::Later(Box::pin(async move { allowed }))
    }
}

impl Authorizer for LaterAcl {
    fn can_publish(&self, _: &Client<'_>, topic: &str) -> Answer<bool> {
        self.later(topic)
    }
    fn can_subscribe(&self, _: &Client<'_>, filter: &str) -> Answer<bool> {
        self.later(filter)
    }
    fn can_read(&self, _: &Client<'_>, _: &str) -> bool {
        true
    }
}

fn listener(
    authenticator: Arc<dyn Authenticator>,
    authorizer: Option<Arc<dyn Authorizer>>,
) -> Arc<ListenerAccess> {
    Arc::new(ListenerAccess {
        name: Arc::from("test"),
        authenticator,
        authorizer,
        enhanced: Vec::new(),
        session_queue: None,
        internal: false,
    })
}

fn open() -> Arc<dyn Authenticator> {
    Arc::new(Granting(Grant::default()))
}

fn connack(packets: &[Packet]) -> ReasonCode {
    match packets.first() {
        Some(Packet::ConnAck(a)) => a.reason,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn a_connect_waits_for_its_answer_and_what_follows_it_waits_too() {
    let mut sim = Sim::new(Limits::default());
    let (sub, _) = sim.connected(connect(V5, "sub"));
    sim.send(sub, subscribe(1, "t", QoS::AtLeastOnce));
    sim.take(sub);

    let auth = Arc::new(LaterAuth::default());
    let access = listener(auth.clone(), None);
    let c = sim.connect_to(access, connect(V5, "dev"));
    // Sent before CONNACK, as clients may: it must not be handled before the answer.
    sim.send(c, publish("t", QoS::AtLeastOnce, 1, b"early"));
    assert!(sim.is_checking(c));
    assert!(sim.take(c).is_empty(), "no CONNACK before the answer");
    assert!(sim.take(sub).is_empty(), "nothing routed before the answer");

    *auth.answer.lock().unwrap() = Some(AuthDecision::Allow(Grant::user(Some("dev".into()))));
    sim.resolve_check(c);
    let got = sim.take(c);
    assert_eq!(connack(&got), ReasonCode::Success);
    assert!(
        matches!(got.get(1), Some(Packet::PubAck(a)) if a.packet_id == 1),
        "the PUBLISH that waited is handled after CONNACK: {got:?}"
    );
    assert_eq!(publishes(&sim.take(sub)).len(), 1);
    assert_eq!(auth.asked.load(Ordering::Relaxed), 1, "asked once");
}

#[test]
fn a_refusal_that_comes_later_refuses_the_connect() {
    let mut sim = Sim::new(Limits::default());
    let auth = Arc::new(LaterAuth::default());
    let c = sim.connect_to(listener(auth.clone(), None), connect(V311, "dev"));
    *auth.answer.lock().unwrap() = Some(AuthDecision::Deny(DenyReason::BadUserNameOrPassword));
    sim.resolve_check(c);
    assert_eq!(
        connack(&sim.take(c)),
        ReasonCode::BadUserNameOrPassword,
        "3.1.1 return code 4"
    );
    assert!(sim.is_gone(c));
}

#[test]
fn a_check_that_could_not_be_made_is_server_busy() {
    // The password hashing queue was full: the client may come back.
    for (version, code, note) in [
        (V5, ReasonCode::ServerBusy, "v5 0x89"),
        (V311, ReasonCode::ServerUnavailable, "3.1.1 return code 3"),
    ] {
        let mut sim = Sim::new(Limits::default());
        let auth = Arc::new(LaterAuth::default());
        let c = sim.connect_to(listener(auth.clone(), None), connect(version, "dev"));
        *auth.answer.lock().unwrap() = Some(AuthDecision::Deny(DenyReason::Busy));
        sim.resolve_check(c);
        assert_eq!(connack(&sim.take(c)), code, "{note}");
        assert!(sim.is_gone(c));
    }
}

#[test]
fn a_connect_still_waiting_at_the_connect_timeout_is_closed() {
    let mut sim = Sim::new(Limits {
        connect_timeout_secs: 5,
        ..Limits::default()
    });
    let auth = Arc::new(LaterAuth::default());
    let c = sim.connect_to(listener(auth, None), connect(V5, "dev"));
    sim.advance(Duration::from_secs(6));
    assert!(sim.is_gone(c));
    assert_eq!(
        sim.closed(c).map(|c| c.reason),
        Some(ReasonCode::MaximumConnectTime)
    );
}

#[test]
fn a_publish_waits_for_its_acl_answer_and_is_refused_or_routed_by_it() {
    let mut sim = Sim::new(Limits::default());
    let (sub, _) = sim.connected(connect(V5, "sub"));
    sim.send(sub, subscribe(1, "#", QoS::AtLeastOnce));
    sim.take(sub);
    let acl = Arc::new(LaterAcl::default());
    let c = sim.connect_to(listener(open(), Some(acl.clone())), connect(V5, "dev"));
    assert_eq!(connack(&sim.take(c)), ReasonCode::Success);

    sim.send(c, publish("no/x", QoS::AtLeastOnce, 1, b"a"));
    // Behind it in the same read: waits for the first one's answer.
    sim.send(c, publish("ok/x", QoS::AtLeastOnce, 2, b"b"));
    assert!(sim.take(c).is_empty());
    sim.resolve_check(c);
    let got = sim.take(c);
    assert!(
        matches!(got.first(), Some(Packet::PubAck(a)) if a.packet_id == 1 && a.reason == ReasonCode::NotAuthorized),
        "{got:?}"
    );
    assert!(sim.is_checking(c), "the second PUBLISH asks in its turn");
    sim.resolve_check(c);
    let got = sim.take(c);
    assert!(
        matches!(got.first(), Some(Packet::PubAck(a)) if a.packet_id == 2 && a.reason == ReasonCode::Success),
        "{got:?}"
    );
    let delivered = sim.take(sub);
    let topics: Vec<_> = publishes(&delivered)
        .iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect();
    assert_eq!(topics, ["ok/x"]);
    assert_eq!(acl.asked.load(Ordering::Relaxed), 2, "each asked once");
}

#[test]
fn every_filter_of_a_subscribe_is_answered_before_anything_is_subscribed() {
    let mut sim = Sim::new(Limits::default());
    let acl = Arc::new(LaterAcl::default());
    let c = sim.connect_to(listener(open(), Some(acl.clone())), connect(V5, "dev"));
    sim.take(c);
    let mut s = match subscribe(7, "ok/a", QoS::AtLeastOnce) {
        Packet::Subscribe(s) => s,
        _ => unreachable!(),
    };
    let (_, options) = s.filters[0].clone();
    s.filters.push((
        starling_proto::TopicFilter::try_from_str("no/b").unwrap(),
        options,
    ));
    sim.send(c, Packet::Subscribe(s));
    sim.resolve_check(c);
    assert!(sim.take(c).is_empty(), "no SUBACK after the first answer");
    sim.resolve_check(c);
    let got = sim.take(c);
    match got.first() {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.packet_id, 7);
            assert_eq!(
                a.reasons,
                [ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(
        acl.asked.load(Ordering::Relaxed),
        2,
        "each filter asked once"
    );
}

#[test]
fn rules_granted_to_the_session_decide_its_publishes_and_reads() {
    let mut sim = Sim::new(Limits::default());
    let acl = AclFile::from_patterns([
        (starling_auth::acl::Access::Write, "devices/%c/up"),
        (starling_auth::acl::Access::Read, "devices/%c/down"),
    ])
    .unwrap();
    let grant = Grant {
        username: Some("u".into()),
        acl: Some(Arc::new(acl)),
        valid_for: None,
    };
    let access = listener(Arc::new(Granting(grant)), None);
    let c = sim.connect_to(access, connect(V5, "d1"));
    assert_eq!(connack(&sim.take(c)), ReasonCode::Success);
    sim.send(c, publish("devices/d1/up", QoS::AtLeastOnce, 1, b"x"));
    sim.send(c, publish("devices/d2/up", QoS::AtLeastOnce, 2, b"x"));
    let packets = sim.take(c);
    let reasons: Vec<_> = pubacks(&packets)
        .iter()
        .map(|a| (a.packet_id, a.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (1, ReasonCode::NoMatchingSubscribers),
            (2, ReasonCode::NotAuthorized)
        ]
    );
    sim.send(c, subscribe(3, "devices/d1/down", QoS::AtMostOnce));
    sim.send(c, subscribe(4, "devices/#", QoS::AtMostOnce));
    let reasons: Vec<_> = sim
        .take(c)
        .into_iter()
        .filter_map(|p| match p {
            Packet::SubAck(a) => Some(a.reasons[0]),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [ReasonCode::Success, ReasonCode::NotAuthorized]);
}

#[test]
fn a_connection_whose_credentials_expire_is_closed_with_0xa0() {
    let mut sim = Sim::new(Limits::default());
    let grant = Grant {
        username: Some("u".into()),
        acl: None,
        valid_for: Some(Duration::from_secs(30)),
    };
    let access = listener(Arc::new(Granting(grant)), None);
    let mut cn = connect(V5, "d1");
    cn.keep_alive = 0;
    let c = sim.connect_to(access, cn);
    assert_eq!(connack(&sim.take(c)), ReasonCode::Success);
    sim.advance(Duration::from_secs(29));
    assert!(!sim.is_gone(c));
    sim.advance(Duration::from_secs(2));
    assert!(sim.is_gone(c));
    let got = sim.take(c);
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::MaximumConnectTime),
        "{got:?}"
    );
    assert_eq!(sim.broker.metrics.credentials_expired.get(), 1);
}
