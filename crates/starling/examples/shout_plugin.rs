//! A plugin written in Rust, compiled into a broker of your own: kind `shout` upper-cases
//! the payload of every message published under its `prefix`, refuses clients whose id
//! starts with `blocked-`, and counts the messages delivered to subscribers. It also
//! authenticates (user `shouter`, password `LOUD`) and authorizes (nobody publishes under
//! `{prefix}secret`) for listeners that put `plugin:shout` in their `auth` and `acl` chains.
//!
//! ```text
//! cargo run -p starling --example shout_plugin -- starling.toml
//! ```
//!
//! with a config file holding
//!
//! ```toml
//! [[plugin]]
//! kind = "shout"
//! prefix = "loud/"
//!
//! [[listener]]
//! bind = "127.0.0.1:1883"
//! auth = ["plugin:shout"]          # optional: the plugin's authentication
//! acl = ["plugin:shout"]           # optional: the plugin's authorization
//! ```
//!
//! Everything else in the file is Starling's own config; without a file the broker runs
//! with its defaults and a `shout` plugin on `loud/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use starling::config::Config;
use starling::plugin::{Built, Kind, PluginCtx};
use starling_auth::{
    AclBackend, Action, AuthBackend, Client, ConnectInfo, DenyReason, Grant, Verdict,
};
use starling_broker::hook::{
    Answer, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, Event, Events, Hook,
    PublishVerdict,
};
use starling_proto::{Publish, ReasonCode};

/// The plugin's own keys in its `[[plugin]]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    prefix: String,
}

/// Messages sent to subscribers so far, by every `shout` plugin of the program.
pub(crate) static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// The hook: what it wants, and what it does at each of those events.
#[derive(Debug)]
pub(crate) struct Shout {
    prefix: String,
}

impl Hook for Shout {
    fn name(&self) -> &str {
        "shout"
    }

    fn events(&self) -> Events {
        Events::NONE
            .with(Event::Connect)
            .with(Event::Publish)
            .with(Event::Delivered)
    }

    fn on_connect(&self, e: &ConnectEvent<'_>) -> Answer<ConnectVerdict> {
        Answer::Now(if e.client.client_id.starts_with("blocked-") {
            ConnectVerdict::Refuse(ReasonCode::Banned)
        } else {
            ConnectVerdict::Accept
        })
    }

    fn on_publish(&self, _client: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        if !p.topic.as_str().starts_with(&self.prefix) {
            return Answer::Now(PublishVerdict::Pass);
        }
        let mut loud = p.clone();
        loud.payload = p.payload.to_ascii_uppercase().into();
        Answer::Now(PublishVerdict::Change(Box::new(loud)))
    }

    fn on_delivered(&self, _e: &DeliveryEvent<'_>) {
        // Notifications must not block: count, and return.
        DELIVERED.fetch_add(1, Ordering::Relaxed);
    }
}

fn settings(own: toml::Table) -> anyhow::Result<Settings> {
    Ok(toml::Value::Table(own).try_into()?)
}

fn check(own: toml::Table) -> anyhow::Result<()> {
    settings(own).map(|_| ())
}

/// The plugin's authentication: one user of its own; anyone else is left to the rest of
/// the listener's chain.
#[derive(Debug)]
struct ShoutAuth;

impl AuthBackend for ShoutAuth {
    fn kind(&self) -> &'static str {
        "plugin"
    }

    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<Verdict> {
        Answer::Now(match (info.username, info.password) {
            (Some("shouter"), Some(b"LOUD")) => Verdict::Allow(Grant::user(Some("shouter".into()))),
            (Some("shouter"), _) => Verdict::Deny(DenyReason::BadUserNameOrPassword),
            _ => Verdict::Pass,
        })
    }
}

/// The plugin's authorization: nobody publishes under `{prefix}secret`; it has no opinion
/// on anything else.
#[derive(Debug)]
struct ShoutAcl {
    secret: String,
}

impl AclBackend for ShoutAcl {
    fn kind(&self) -> &'static str {
        "plugin"
    }

    fn check(&self, _client: &Client<'_>, action: Action, topic: &str) -> Answer<Option<bool>> {
        let refused = action == Action::Publish && topic.starts_with(&self.secret);
        Answer::Now(refused.then_some(false))
    }
}

fn build(own: toml::Table, _ctx: &PluginCtx) -> anyhow::Result<Built> {
    let s = settings(own)?;
    Ok(Built {
        auth: Some(Arc::new(ShoutAuth)),
        acl: Some(Arc::new(ShoutAcl {
            secret: format!("{}secret", s.prefix),
        })),
        ..Built::hook(Arc::new(Shout { prefix: s.prefix }))
    })
}

/// Makes `kind = "shout"` known to this program's config.
pub(crate) fn register() {
    starling::plugin::register(Kind {
        name: "shout",
        check,
        build,
    });
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    register();
    let mut config = match std::env::args().nth(1) {
        Some(path) => Config::load(std::path::Path::new(&path))?,
        None => Config::default(),
    };
    if config.plugins.is_empty() {
        let section = "kind = \"shout\"\nprefix = \"loud/\"\n".parse()?;
        config.plugins.push(section);
    }
    tokio::runtime::Runtime::new()?.block_on(starling::server::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
}
