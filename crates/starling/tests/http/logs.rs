//! Logs as JSON lines, the log level changed at runtime through the API, and ACL denials,
//! kicks and refused HTTP requests in the log with who and where (never the credential).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::Process;

/// Every JSON line of the log (a line that is not JSON fails the test).
fn lines(p: &Process) -> Vec<Value> {
    p.log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits for a log line whose message contains `text`.
async fn wait_line(p: &Process, text: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(l) = lines(p).into_iter().find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(text))
        }) {
            return l;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log line with {text:?}:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 3.1.1 CONNECT with a username, then a QoS 0 PUBLISH to `topic`.
async fn connect_and_publish(port: u16, id: &str, user: &str, topic: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 60];
    for f in [id, user] {
        body.extend_from_slice(&u16::try_from(f.len()).unwrap().to_be_bytes());
        body.extend_from_slice(f.as_bytes());
    }
    let mut connect = vec![0x10, u8::try_from(body.len()).unwrap()];
    connect.extend(body);
    s.write_all(&connect).await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    let mut publish = vec![0x30, u8::try_from(2 + topic.len() + 1).unwrap()];
    publish.extend_from_slice(&u16::try_from(topic.len()).unwrap().to_be_bytes());
    publish.extend_from_slice(topic.as_bytes());
    publish.push(b'x');
    s.write_all(&publish).await.unwrap();
    s
}

#[tokio::test]
async fn json_logs_name_who_and_where_and_the_level_changes_at_runtime() {
    let mut keys = starling::http::apikey::KeyFile::default();
    let key = keys
        .create("ops", starling::http::apikey::Role::Admin)
        .unwrap();
    let p = Process::start_with(
        "log_format = \"json\"\n\
         [[listener]]\nbind = \"127.0.0.1:1883\"\nacl_file = \"{dir}/acl\"\n\
         [http]\nopen = false\napi_keys_file = \"{dir}/keys\"\n",
        &[
            ("acl", "user dev\ntopic write allowed/#\n"),
            ("keys", &keys.to_text()),
        ],
    )
    .await;
    let http = reqwest::Client::new();

    let _c = connect_and_publish(p.mqtt, "dev-1", "dev", "forbidden/t").await;
    let denied = wait_line(&p, "publish denied by the ACL").await;
    assert_eq!(denied["fields"]["client_id"], "dev-1");
    assert_eq!(denied["fields"]["username"], "dev");
    assert_eq!(denied["fields"]["topic"], "forbidden/t");
    assert!(
        denied["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let connected = wait_line(&p, "client connected").await;
    assert_eq!(connected["fields"]["username"], "dev");

    // A refused request is logged without the key it carried.
    let r = http
        .get(format!("{}/metrics", p.base))
        .bearer_auth("stk_secret-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let refused = wait_line(&p, "HTTP request refused").await;
    assert!(!p.log().contains("stk_secret-value"));
    assert_eq!(refused["fields"]["path"], "/metrics");

    // Debug lines appear only after the level is raised.
    let level = |v: &str| json!({ "level": v });
    let before = lines(&p).iter().filter(|l| l["level"] == "DEBUG").count();
    assert_eq!(before, 0);
    let r = http
        .get(format!("{}/api/v1/log-level", p.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["level"], "info");
    let r = http
        .put(format!("{}/api/v1/log-level", p.base))
        .bearer_auth(&key)
        .json(&level("no such level!"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .put(format!("{}/api/v1/log-level", p.base))
        .bearer_auth(&key)
        .json(&level("debug"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let changed = wait_line(&p, "log level changed").await;
    assert_eq!(changed["fields"]["by"], "ops");
    // A connection closed before CONNECT is a debug line.
    drop(TcpStream::connect(("127.0.0.1", p.mqtt)).await.unwrap());
    let closed = wait_line(&p, "connection closed before CONNACK").await;
    assert_eq!(closed["level"], "DEBUG");
}
