//! Members changing while the cluster runs, through `starling ctl cluster join|leave` (the
//! binary itself): a node joins as a learner, serves clients, becomes a voter, and leaves.

use std::process::Command;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::Filter;
use serde_json::Value;

use crate::common::rumqtt::v5;
use crate::harness::*;

/// Runs `starling ctl --url <node's API> ARGS...` off the runtime: (status, stdout, stderr).
async fn ctl(c: &Cluster, node: u64, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", c.specs[(node - 1) as usize].http);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("ctl")
            .arg("--url")
            .arg(&url)
            .arg("--json")
            .args(&args)
            .env_remove("STARLING_API_KEY")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Node `id` as `status` lists it among the members.
fn member(status: &Value, id: u64) -> Option<&Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))
}

/// A fourth node started beside a three-node cluster joins it as a learner (through node
/// 2's API, which need not lead): it gets the log, announces its incarnation, and serves
/// clients both ways (a subscriber on it gets a publish from node 1, a subscriber on node 1
/// one from it); then it becomes a voter. It leaves again: three members, the others no
/// longer count it or keep its filters, and a publish on node 1 no longer reaches its
/// subscriber. Joining a node that is already a voter changes nothing; removing one that is
/// not a member is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_learner_becomes_a_voter_and_leaves() {
    let mut c = Cluster::start_founded(4, 3, TIMING, &[1, 2, 3]);
    c.settled(&[1, 2, 3], "the three founders").await;
    c.start_joiner(4);
    let addr4 = c.specs[3].advertise.to_string();

    let (code, out, err) = ctl(&c, 2, &["cluster", "join", "4", &addr4, "--learner"]).await;
    assert_eq!(code, 0, "join: {out} {err}\n{}", c.logs());
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(member(&status, 4).unwrap()["voter"], false, "{status:#}");
    let s4 = status_until(&c, 4, "node 4 follows the log", |s| {
        s["announced"] == true && s["members"].as_array().is_some_and(|m| m.len() == 4)
    })
    .await;
    assert_eq!(s4["role"], "learner", "{s4:#}");

    // A learner serves clients: both ways across nodes.
    let mut on4 = v5::Client::plain(c.mqtt(4), "on4").await;
    on4.subscribe(Filter::new("joined/#", QoS5::AtLeastOnce), None)
        .await;
    let mut on1 = v5::Client::plain(c.mqtt(1), "on1").await;
    on1.subscribe(Filter::new("back/#", QoS5::AtLeastOnce), None)
        .await;
    c.routes_known(1, 1).await;
    c.routes_known(4, 1).await;
    on1.client
        .publish("joined/a", QoS5::AtLeastOnce, false, "to the learner")
        .await
        .unwrap();
    assert_eq!(&on4.publish().await.payload[..], b"to the learner");
    on4.client
        .publish("back/a", QoS5::AtLeastOnce, false, "from the learner")
        .await
        .unwrap();
    assert_eq!(&on1.publish().await.payload[..], b"from the learner");

    // A voter now; asked again, nothing changes.
    for _ in 0..2 {
        let (code, out, err) = ctl(&c, 3, &["cluster", "join", "4", &addr4]).await;
        assert_eq!(code, 0, "promote: {out} {err}");
    }
    let (_, statuses) = c.settled(&[1, 2, 3, 4], "four voters").await;
    for s in &statuses {
        let voters = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"] == true)
            .count();
        assert_eq!(voters, 4, "{s:#}");
    }

    // Leaving.
    let (code, out, err) = ctl(&c, 1, &["cluster", "leave", "4"]).await;
    assert_eq!(code, 0, "leave: {out} {err}\n{}", c.logs());
    for id in [1, 2, 3] {
        let s = status_until(&c, id, "three members again", |s| {
            s["members"].as_array().is_some_and(|m| m.len() == 3)
                && s["peers"].as_array().is_some_and(|p| p.len() == 2)
        })
        .await;
        assert!(member(&s, 4).is_none(), "{s:#}");
    }
    // Node 1 forgets node 4's filter and stops handing it messages.
    c.routes_known(1, 0).await;
    on1.client
        .publish("joined/b", QoS5::AtLeastOnce, false, "after it left")
        .await
        .unwrap();
    on4.no_publish(Duration::from_millis(500)).await;
    c.settled(&[1, 2, 3], "after node 4 left").await;

    let (code, _, err) = ctl(&c, 1, &["cluster", "leave", "9"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not a member"), "{err}");
    assert!(c.all_running(), "{}", c.logs());
}
