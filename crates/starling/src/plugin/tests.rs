//! The `[[plugin]]` sections: common keys, kinds, names, and the guard's deadline.

#![allow(clippy::unwrap_used)]

use super::*;

fn tables(s: &str) -> Vec<toml::Table> {
    let doc: toml::Table = s.parse().unwrap();
    match doc.get("plugin") {
        Some(toml::Value::Array(a)) => a.iter().map(|v| v.as_table().unwrap().clone()).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn sections_are_checked_with_the_key_at_fault() {
    let err = |s: &str| format!("{:#}", validate(&tables(s)).unwrap_err());
    assert!(err("[[plugin]]\nkind = \"nope\"").contains("plugin[0].kind: unknown plugin kind"));
    assert!(err("[[plugin]]\nname = \"x\"").contains("plugin[0]"));
    assert!(err("[[plugin]]\nkind = \"delayed\"\ntimeout_ms = 0").contains("plugin[0].timeout_ms"));
    assert!(err("[[plugin]]\nkind = \"delayed\"\non_failure = \"maybe\"").contains("on_failure"));
    assert!(
        err("[[plugin]]\nkind = \"delayed\"\n[[plugin]]\nkind = \"delayed\"")
            .contains("two plugins are named \"delayed\"")
    );
    assert!(err("[[plugin]]\nkind = \"delayed\"\nbogus = 1").contains("bogus"));
    validate(&tables(
        "[[plugin]]\nkind = \"delayed\"\n[[plugin]]\nkind = \"delayed\"\nname = \"d2\"\non_failure = \"deny\"\ntimeout_ms = 100",
    ))
    .unwrap();
}

#[derive(Debug)]
struct Slow;

impl Hook for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn events(&self) -> Events {
        Events::ALL
    }
    fn on_publish(&self, _: &ClientRef<'_>, _: &Publish) -> Answer<PublishVerdict> {
        Answer::Later(Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            PublishVerdict::Pass
        }))
    }
}

#[tokio::test]
async fn a_late_decision_is_the_plugins_failure_choice() {
    for (on_failure, want_drop) in [(OnFailure::Allow, false), (OnFailure::Deny, true)] {
        let stats = Arc::new(PluginStats::default());
        let g = Guarded {
            inner: Arc::new(Slow),
            ctx: PluginCtx {
                name: "slow".into(),
                on_failure,
                timeout: Duration::from_millis(50),
                stats: stats.clone(),
                data_dir: None,
            },
        };
        let client = ClientRef {
            client_id: "c",
            username: None,
            peer: None,
            listener: "",
            protocol: starling_proto::ProtocolVersion::V5,
        };
        let p = Publish {
            dup: false,
            qos: starling_proto::QoS::AtMostOnce,
            retain: false,
            topic: starling_proto::TopicName::try_from_str("t").unwrap(),
            packet_id: 0,
            properties: Default::default(),
            payload: bytes::Bytes::new(),
        };
        let Answer::Later(f) = g.on_publish(&client, &p) else {
            panic!("the slow hook answers later");
        };
        let verdict = f.await;
        assert_eq!(
            matches!(verdict, PublishVerdict::Drop(_)),
            want_drop,
            "{verdict:?}"
        );
        assert_eq!(stats.timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(stats.calls.load(Ordering::Relaxed), 1);
    }
}
