//! The `grpc` plugin's settings, the checks on a plugin's answers, and its notification
//! queue (the calls themselves are tested against a Python plugin in
//! `tests/interop/test_plugin_grpc.py`).

#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use bytes::Bytes;
use starling_proto::{ProtocolVersion, QoS, ReasonCode, RetainHandling, TopicName};

fn table(s: &str) -> toml::Table {
    s.parse().unwrap()
}

#[test]
fn settings_are_checked() {
    let c = checked(table("endpoint = \"http://127.0.0.1:50051\"")).unwrap();
    assert_eq!(c.events, Events::ALL);
    assert_eq!((c.max_concurrency, c.queue_size), (64, 10_000));
    assert!(matches!(c.target, Target::Http(_)));
    let c = checked(table("endpoint = \"unix:/run/p.sock\"")).unwrap();
    assert!(matches!(c.target, Target::Unix(p) if p == std::path::Path::new("/run/p.sock")));
    let c = checked(table(
        "endpoint = \"http://localhost:1\"\nevents = [\"message.publish\", \"message.delivered\"]",
    ))
    .unwrap();
    assert!(c.events.has(Event::Publish) && c.events.has(Event::Delivered));
    assert!(!c.events.has(Event::Connect));
    for bad in [
        "endpoint = \"https://127.0.0.1:1\"",
        "endpoint = \"ftp://127.0.0.1:1\"",
        "endpoint = \"not a url\"",
        "endpoint = \"unix:\"",
        "endpoint = \"http://x:1\"\nevents = [\"nope\"]",
        "endpoint = \"http://x:1\"\nmax_concurrency = 0",
        "endpoint = \"http://x:1\"\nqueue_size = 0",
        "endpoint = \"http://x:1\"\nreconnect_ms = 500\nmax_reconnect_ms = 100",
        "endpoint = \"http://x:1\"\nbogus = 1",
        "events = []",
    ] {
        assert!(checked(table(bad)).is_err(), "{bad}");
    }
}

#[test]
fn the_kind_is_registered() {
    let doc: toml::Table = "[[plugin]]\nkind = \"grpc\"\nendpoint = \"http://127.0.0.1:1\""
        .parse()
        .unwrap();
    let Some(toml::Value::Array(a)) = doc.get("plugin") else {
        panic!("no plugin array");
    };
    let tables: Vec<toml::Table> = a.iter().map(|v| v.as_table().unwrap().clone()).collect();
    crate::plugin::validate(&tables).unwrap();
    let plugins = crate::plugin::Plugins::build(&tables, None).unwrap();
    assert!(plugins.hooks.wants(Event::Publish));
}

fn publish() -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from_str("a/b").unwrap(),
        packet_id: 7,
        properties: Default::default(),
        payload: Bytes::from_static(b"hello"),
    }
}

fn change(c: pb::Change) -> pb::PublishResponse {
    pb::PublishResponse {
        verdict: Some(pb::publish_response::Verdict::Change(c)),
    }
}

#[test]
fn a_publish_is_sent_and_changed() {
    let client = ClientRef {
        client_id: "c1",
        username: Some("u"),
        peer: None,
        listener: "tcp",
        protocol: ProtocolVersion::V5,
    };
    let mut p = publish();
    p.properties.user_properties.push(("k".into(), "v".into()));
    let req = convert::publish_request(&client, &p);
    assert_eq!(
        (req.topic.as_str(), req.qos, &req.payload[..]),
        ("a/b", 1, &b"hello"[..])
    );
    assert_eq!(req.user_properties.len(), 1);
    assert_eq!(
        req.client.as_ref().unwrap().protocol,
        pb::Protocol::Mqtt5 as i32
    );

    let v = convert::publish_verdict(
        change(pb::Change {
            topic: Some("x/y".into()),
            payload: Some(Bytes::from_static(b"HELLO")),
            qos: Some(0),
            retain: Some(true),
            user_properties: Some(pb::UserProperties {
                items: vec![pb::UserProperty {
                    key: "a".into(),
                    value: "b".into(),
                }],
            }),
            content_type: None,
        }),
        &p,
    )
    .unwrap();
    let PublishVerdict::Change(c) = v else {
        panic!("{v:?}");
    };
    assert_eq!((c.topic.as_str(), &c.payload[..]), ("x/y", &b"HELLO"[..]));
    assert_eq!((c.qos, c.retain, c.packet_id), (QoS::AtMostOnce, true, 7));
    assert_eq!(c.properties.user_properties, vec![("a".into(), "b".into())]);

    // Fields not set are kept.
    let v = convert::publish_verdict(change(pb::Change::default()), &p).unwrap();
    let PublishVerdict::Change(c) = v else {
        panic!("{v:?}");
    };
    assert_eq!((c.topic.as_str(), c.qos), ("a/b", QoS::AtLeastOnce));
    assert_eq!(c.properties.user_properties.len(), 1);
}

#[test]
fn a_malicious_answer_is_refused_not_obeyed() {
    let p = publish();
    let bad_changes = [
        pb::Change {
            topic: Some("a/+/b".into()),
            ..Default::default()
        },
        pb::Change {
            topic: Some(String::new()),
            ..Default::default()
        },
        pb::Change {
            topic: Some("$SYS/broker/x".into()),
            ..Default::default()
        },
        pb::Change {
            qos: Some(3),
            ..Default::default()
        },
        pb::Change {
            qos: Some(u32::MAX),
            ..Default::default()
        },
        pb::Change {
            payload: Some(Bytes::from(vec![0u8; convert::MAX_PAYLOAD + 1])),
            ..Default::default()
        },
    ];
    for c in bad_changes {
        assert!(
            convert::publish_verdict(change(c.clone()), &p).is_err(),
            "{c:?}"
        );
    }
    use pb::publish_response::Verdict as P;
    let drop = |code| pb::PublishResponse {
        verdict: Some(P::Drop(code)),
    };
    assert!(matches!(
        convert::publish_verdict(drop(0x97), &p).unwrap(),
        PublishVerdict::Drop(ReasonCode::QuotaExceeded)
    ));
    for code in [0x02, 0x8E, 0x100, u32::MAX] {
        assert!(
            convert::publish_verdict(drop(code), &p).is_err(),
            "{code:#x}"
        );
    }
    assert!(convert::publish_verdict(pb::PublishResponse { verdict: None }, &p).is_err());

    use pb::connect_response::Verdict as C;
    let refuse = |code| pb::ConnectResponse {
        verdict: Some(C::Refuse(code)),
    };
    assert_eq!(
        convert::connect_verdict(refuse(0x87)).unwrap(),
        ConnectVerdict::Refuse(ReasonCode::NotAuthorized)
    );
    for code in [0x00, 0x10, 0x8E, 0x1_0087] {
        assert!(convert::connect_verdict(refuse(code)).is_err(), "{code:#x}");
    }
    assert!(convert::connect_verdict(pb::ConnectResponse { verdict: None }).is_err());
}

#[test]
fn filters_are_changed_or_refused() {
    use pb::filter_response::Verdict as F;
    let given = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    let refuse = |code| pb::FilterResponse {
        verdict: Some(F::Refuse(code)),
    };
    assert_eq!(
        convert::filter_verdict(refuse(0x87), Some(given)).unwrap(),
        FilterVerdict::Refuse(ReasonCode::NotAuthorized)
    );
    assert!(convert::filter_verdict(refuse(0x02), Some(given)).is_err());
    let to = |filter: &str, options| pb::FilterResponse {
        verdict: Some(F::Change(pb::FilterChange {
            filter: filter.into(),
            options,
        })),
    };
    let v = convert::filter_verdict(to("x/#", None), Some(given)).unwrap();
    assert_eq!(
        v,
        FilterVerdict::Change(TopicFilter::try_from_str("x/#").unwrap(), given)
    );
    let o = pb::SubscriptionOptions {
        qos: 2,
        no_local: true,
        retain_as_published: false,
        retain_handling: 2,
    };
    let FilterVerdict::Change(_, got) =
        convert::filter_verdict(to("x", Some(o)), Some(given)).unwrap()
    else {
        panic!("a change");
    };
    assert_eq!(
        (got.qos, got.no_local, got.retain_handling),
        (QoS::ExactlyOnce, true, RetainHandling::DoNotSend)
    );
    assert!(convert::filter_verdict(to("x/#/y", None), Some(given)).is_err());
    let bad = pb::SubscriptionOptions {
        retain_handling: 3,
        ..o
    };
    assert!(convert::filter_verdict(to("x", Some(bad)), Some(given)).is_err());
    assert!(convert::filter_verdict(pb::FilterResponse { verdict: None }, None).is_err());
}

#[test]
fn describe_narrows_the_configured_events() {
    let configured = Events::NONE.with(Event::Publish).with(Event::Delivered);
    let d = |events: Vec<i32>| pb::DescribeResponse { events };
    assert_eq!(convert::wanted(&d(vec![]), configured), configured);
    let w = convert::wanted(
        &d(vec![
            pb::Event::Publish as i32,
            pb::Event::Connect as i32,
            99,
        ]),
        configured,
    );
    assert!(w.has(Event::Publish) && !w.has(Event::Connect) && !w.has(Event::Delivered));
}

#[tokio::test]
async fn without_a_connection_decisions_fail_at_once_and_notifications_are_bounded() {
    let c = checked(table("endpoint = \"http://127.0.0.1:1\"\nqueue_size = 2")).unwrap();
    let stats = Arc::new(crate::plugin::PluginStats::default());
    let shared = Arc::new(Shared::new(
        "g".into(),
        c.target,
        c.events,
        Duration::from_millis(100),
        c.reconnect,
        c.max_reconnect,
        c.max_concurrency,
        c.queue_size,
        stats.clone(),
    ));
    let hook = Grpc {
        shared: shared.clone(),
        on_failure: OnFailure::Deny,
    };
    let client = ClientRef {
        client_id: "c1",
        username: None,
        peer: None,
        listener: "tcp",
        protocol: ProtocolVersion::V311,
    };
    let Answer::Now(PublishVerdict::Drop(_)) = hook.on_publish(&client, &publish()) else {
        panic!("no connection: on_failure deny at once");
    };
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.failures.load(Relaxed), 1);
    for id in 1..=3 {
        hook.on_acked(&AckEvent {
            client_id: "c1",
            packet_id: id,
            qos: QoS::AtLeastOnce,
        });
    }
    assert_eq!(shared.dropped.load(Relaxed), 1);
    let left: Vec<u32> = std::iter::from_fn(|| shared.pop_for_test())
        .filter_map(|n| match n.event {
            Some(pb::notification::Event::Acked(a)) => Some(a.packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(left, vec![2, 3], "the oldest went");
}
