//! A plugin written in Rust (the `shout_plugin` example, compiled in here) in a server
//! started in-process, with `rumqttc` clients: the config's `[[plugin]]` section builds it,
//! its connect hook refuses a client, its publish hook changes a payload, and its delivery
//! notifications are counted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

#[path = "../examples/shout_plugin.rs"]
mod shout;

use std::time::Duration;

use common::rumqtt::v5::{Client, options};
use common::start_server_config;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Filter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_plugin_refuses_changes_and_counts() {
    shout::register();
    let server = start_server_config(|c| {
        c.limits.sys_interval_secs = 0;
        c.plugins
            .push("kind = \"shout\"\nprefix = \"loud/\"\n".parse().unwrap());
    })
    .await;
    let addr = server.addr;
    let mut blocked = Client::start(options(addr, "blocked-1"));
    assert_eq!(blocked.expect_refused().await, ConnectReturnCode::Banned);

    let mut sub = Client::plain(addr, "sub").await;
    sub.subscribe(Filter::new("#", QoS::AtLeastOnce), None)
        .await;
    let publisher = Client::plain(addr, "pub").await;
    for topic in ["loud/x", "quiet/x"] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, false, "hello")
            .await
            .unwrap();
        let p = sub.publish().await;
        let want: &[u8] = if topic == "loud/x" {
            b"HELLO"
        } else {
            b"hello"
        };
        assert_eq!((&p.topic[..], &p.payload[..]), (topic.as_bytes(), want));
    }
    sub.no_publish(Duration::from_millis(200)).await;
    let delivered = shout::DELIVERED.load(std::sync::atomic::Ordering::Relaxed);
    // (Another test of this file may deliver through its own shout plugin meanwhile.)
    assert!(delivered >= 2, "each delivery is told");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_authenticates_and_authorizes_in_a_listeners_chains() {
    shout::register();
    let server = start_server_config(|c| {
        c.limits.sys_interval_secs = 0;
        c.plugins
            .push("kind = \"shout\"\nprefix = \"loud/\"\n".parse().unwrap());
        let l = &mut c.listeners[0];
        l.allow_anonymous = Some(false);
        l.auth = Some(vec!["plugin:shout".into()]);
        l.acl = Some(vec!["plugin:shout".into()]);
        // What the plugin has no opinion on is allowed.
        l.acl_no_match = Some(starling::config::NoMatch::Allow);
    })
    .await;
    let addr = server.addr;
    let creds = |user: &str, password: &str| {
        let (user, password) = (user.to_string(), password.to_string());
        move |o: &mut rumqttc::v5::MqttOptions| {
            o.set_credentials(user, password);
        }
    };
    let mut wrong = Client::start({
        let mut o = options(addr, "w");
        creds("shouter", "quiet")(&mut o);
        o
    });
    assert_eq!(
        wrong.expect_refused().await,
        ConnectReturnCode::BadUserNamePassword
    );
    let mut anonymous = Client::start(options(addr, "a"));
    assert_eq!(
        anonymous.expect_refused().await,
        ConnectReturnCode::NotAuthorized
    );
    let (mut c, ack) = Client::connect(addr, "ok", creds("shouter", "LOUD")).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    c.subscribe(Filter::new("loud/#", QoS::AtLeastOnce), None)
        .await;
    c.client
        .publish("loud/secret/x", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    c.client
        .publish("loud/open", QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let p = c.publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        (&b"loud/open"[..], &b"YES"[..])
    );
    c.no_publish(Duration::from_millis(200)).await;
    server.shutdown().await;
}

#[test]
fn an_unknown_or_misconfigured_kind_is_a_config_error() {
    shout::register();
    let tables = |s: &str| -> Vec<toml::Table> { vec![s.parse().unwrap()] };
    let err = starling::plugin::validate(&tables("kind = \"whisper\"")).unwrap_err();
    assert!(
        format!("{err:#}").contains("one of topic_rewrite"),
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("shout"), "{err:#}");
    let err = starling::plugin::validate(&tables("kind = \"shout\"")).unwrap_err();
    assert!(format!("{err:#}").contains("prefix"), "{err:#}");
    starling::plugin::validate(&tables("kind = \"shout\"\nprefix = \"a/\"")).unwrap();
}
