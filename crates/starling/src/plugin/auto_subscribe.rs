//! The `auto_subscribe` plugin: subscribes every client to configured filters when its
//! session is created or resumed, before it sends anything, as if it had subscribed itself
//! (retained messages included, the subscription stored with a persistent session).
//!
//! `%c` in a filter stands for the client id and `%u` for the username. A client id or
//! username that contains `/`, `+` or `#` is not substituted (it would widen the filter
//! beyond the client's own topics): that filter is skipped for that client, counted as a
//! failure of the plugin. A filter with `%u` is skipped for clients without a username.

use std::sync::Arc;

use serde::Deserialize;
use starling_broker::hook::{Event, Events, Hook, SessionActions, SessionChange, SessionEvent};
use starling_proto::{QoS, RetainHandling, SubscriptionOptions, TopicFilter};
use tracing::debug;

use super::{Built, PluginCtx, PluginStats, de};

/// Most filters one plugin may add.
const MAX_TOPICS: usize = 100;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicConfig {
    filter: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    no_local: bool,
    #[serde(default)]
    retain_as_published: bool,
    #[serde(default)]
    retain_handling: u8,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    topic: Vec<TopicConfig>,
}

/// One filter to subscribe to, with its options.
#[derive(Clone, Debug)]
pub struct AutoTopic {
    template: String,
    options: SubscriptionOptions,
}

fn topics(own: toml::Table) -> anyhow::Result<Vec<AutoTopic>> {
    let settings: Settings = de(own)?;
    if settings.topic.is_empty() {
        anyhow::bail!("topic: at least one [[plugin.topic]] is required");
    }
    if settings.topic.len() > MAX_TOPICS {
        anyhow::bail!(
            "topic: {} filters, at most {MAX_TOPICS}",
            settings.topic.len()
        );
    }
    let mut out = Vec::new();
    for (i, t) in settings.topic.into_iter().enumerate() {
        let qos = QoS::from_u8(t.qos)
            .ok_or_else(|| anyhow::anyhow!("topic[{i}].qos: {} is not 0, 1 or 2", t.qos))?;
        let retain_handling = match t.retain_handling {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            n => anyhow::bail!("topic[{i}].retain_handling: {n} is not 0, 1 or 2"),
        };
        // A filter with placeholders is checked with a harmless stand-in.
        let sample = t.filter.replace("%c", "c").replace("%u", "u");
        if TopicFilter::try_from_str(&sample).is_err() {
            anyhow::bail!(
                "topic[{i}].filter: {:?} is not a valid topic filter",
                t.filter
            );
        }
        out.push(AutoTopic {
            template: t.filter,
            options: SubscriptionOptions {
                qos,
                no_local: t.no_local,
                retain_as_published: t.retain_as_published,
                retain_handling,
            },
        });
    }
    Ok(out)
}

/// Checks the settings.
pub fn check(own: toml::Table) -> anyhow::Result<()> {
    topics(own).map(|_| ())
}

/// Builds the plugin.
pub fn build(own: toml::Table, ctx: &PluginCtx) -> anyhow::Result<Built> {
    Ok(Built::hook(Arc::new(AutoSubscribe {
        topics: topics(own)?,
        stats: ctx.stats.clone(),
    })))
}

/// The hook.
#[derive(Debug)]
pub struct AutoSubscribe {
    topics: Vec<AutoTopic>,
    stats: Arc<PluginStats>,
}

/// Whether `value` may stand in a filter level: nothing that widens it.
fn safe(value: &str) -> bool {
    !value.is_empty() && !value.contains(['/', '+', '#'])
}

impl AutoSubscribe {
    /// The filter of `t` for a client, if it can be made.
    fn filter_for(
        &self,
        t: &AutoTopic,
        client_id: &str,
        username: Option<&str>,
    ) -> Option<TopicFilter> {
        let mut f = t.template.clone();
        if f.contains("%c") {
            if !safe(client_id) {
                return None;
            }
            f = f.replace("%c", client_id);
        }
        if f.contains("%u") {
            match username {
                Some(u) if safe(u) => f = f.replace("%u", u),
                _ => return None,
            }
        }
        TopicFilter::try_from_str(&f).ok()
    }
}

impl Hook for AutoSubscribe {
    fn name(&self) -> &str {
        "auto_subscribe"
    }

    fn events(&self) -> Events {
        Events::NONE.with(Event::Session)
    }

    fn on_session(&self, e: &SessionEvent<'_>, actions: &mut SessionActions) {
        if !matches!(e.change, SessionChange::Created | SessionChange::Resumed) {
            return;
        }
        let username = e.client.and_then(|c| c.username);
        for t in &self.topics {
            match self.filter_for(t, e.client_id, username) {
                Some(f) => actions.subscribe.push((f, t.options)),
                None => {
                    debug!(client_id = e.client_id, filter = %t.template, "auto-subscription skipped");
                    self.stats.failed();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn placeholders_are_substituted_only_with_safe_values() {
        let topics = topics(table(
            "[[topic]]\nfilter = \"cmd/%c\"\nqos = 1\n[[topic]]\nfilter = \"users/%u/#\"\n",
        ))
        .unwrap();
        let hook = AutoSubscribe {
            topics,
            stats: Arc::default(),
        };
        let f = |c: &str, u: Option<&str>, i: usize| {
            hook.filter_for(&hook.topics[i], c, u)
                .map(|f| f.as_str().to_string())
        };
        assert_eq!(f("dev1", None, 0).as_deref(), Some("cmd/dev1"));
        assert_eq!(
            f("a/#", None, 0),
            None,
            "a client id must not widen the filter"
        );
        assert_eq!(f("a+", None, 0), None);
        assert_eq!(f("dev1", Some("ann"), 1).as_deref(), Some("users/ann/#"));
        assert_eq!(f("dev1", None, 1), None, "no username");
        assert_eq!(hook.topics[0].options.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(topics(table("")).is_err());
        assert!(topics(table("[[topic]]\nfilter = \"a/#/b\"\n")).is_err());
        assert!(topics(table("[[topic]]\nfilter = \"a\"\nqos = 3\n")).is_err());
        assert!(topics(table("[[topic]]\nfilter = \"a\"\nbogus = 1\n")).is_err());
    }
}
