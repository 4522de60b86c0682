//! The `topic_rewrite` plugin: rules that rewrite the topic of a PUBLISH and the filter of a
//! SUBSCRIBE or UNSUBSCRIBE, with captures. A rule's `source` is a topic filter; each of its
//! wildcards captures what it matched (`+` one level, `#` the rest), and `dest` names the
//! captures `$1` to `$9` in order. The first rule whose action and source match applies; a
//! rewrite whose result is not a valid topic (or filter) is not applied, and counted as a
//! failure of the plugin.
//!
//! A subscription filter is matched level by level as text, so `+` and `#` in the client's
//! filter are captured like any level: with `source = "old/#"` and `dest = "new/$1"`, a
//! subscription to `old/+/temp` becomes `new/+/temp`.

use std::sync::Arc;

use serde::Deserialize;
use starling_broker::hook::{
    Answer, ClientRef, Event, Events, FilterVerdict, Hook, PublishVerdict,
};
use starling_proto::{Publish, SubscriptionOptions, TopicFilter, TopicName};
use tracing::debug;

use super::{Built, PluginCtx, PluginStats, de};

/// Most rules one plugin may have.
const MAX_RULES: usize = 1_000;

/// Which packets a rule rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// PUBLISH topics.
    Publish,
    /// SUBSCRIBE and UNSUBSCRIBE filters.
    Subscribe,
    /// Both.
    All,
}

/// One rule as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    action: RuleAction,
    source: String,
    dest: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    rule: Vec<RuleConfig>,
}

/// A rule, checked.
#[derive(Clone, Debug)]
pub struct Rule {
    action: RuleAction,
    source: Vec<Level>,
    dest: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Exact(String),
    Plus,
    Hash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// Capture number, from 1.
    Capture(usize),
}

impl Rule {
    /// A rule from its source filter and destination template.
    pub fn new(action: RuleAction, source: &str, dest: &str) -> anyhow::Result<Rule> {
        if TopicFilter::try_from_str(source).is_err() {
            anyhow::bail!("source {source:?} is not a valid topic filter");
        }
        let source: Vec<Level> = source
            .split('/')
            .map(|l| match l {
                "+" => Level::Plus,
                "#" => Level::Hash,
                other => Level::Exact(other.to_string()),
            })
            .collect();
        let captures = source
            .iter()
            .filter(|l| !matches!(l, Level::Exact(_)))
            .count();
        let dest = parse_dest(dest)?;
        for part in &dest {
            if let Part::Capture(n) = part
                && *n > captures
            {
                anyhow::bail!("dest names ${n} but source has {captures} wildcard(s)");
            }
        }
        Ok(Rule {
            action,
            source,
            dest,
        })
    }

    /// The rewrite of `topic` (a topic name, or a filter taken as text), if the rule
    /// matches it.
    fn apply(&self, topic: &str) -> Option<String> {
        // Each level with where it starts in `topic`.
        let mut levels = Vec::new();
        let mut start = 0;
        for level in topic.split('/') {
            levels.push((start, level));
            start += level.len() + 1;
        }
        let mut captures: Vec<&str> = Vec::new();
        let mut matched_all = false;
        for (i, level) in self.source.iter().enumerate() {
            match level {
                Level::Hash => {
                    // The rest, or nothing: `a/#` matches `a` too.
                    let rest = levels.get(i).and_then(|(at, _)| topic.get(*at..));
                    let rest = rest.unwrap_or("");
                    captures.push(rest);
                    matched_all = true;
                    break;
                }
                Level::Plus => captures.push(levels.get(i)?.1),
                Level::Exact(e) if levels.get(i)?.1 == e => {}
                Level::Exact(_) => return None,
            }
        }
        if !matched_all && levels.len() != self.source.len() {
            return None;
        }
        let mut out = String::with_capacity(topic.len());
        for part in &self.dest {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Capture(n) => out.push_str(captures.get(n - 1).copied().unwrap_or("")),
            }
        }
        Some(out)
    }
}

/// Splits a destination template into text and `$1`..`$9` captures.
fn parse_dest(dest: &str) -> anyhow::Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = dest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$'
            && let Some(d) = chars.peek().and_then(|d| d.to_digit(10))
            && d > 0
        {
            chars.next();
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Capture(d as usize));
        } else {
            text.push(c);
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    if parts.is_empty() {
        anyhow::bail!("dest is empty");
    }
    Ok(parts)
}

fn rules(own: toml::Table) -> anyhow::Result<Vec<Rule>> {
    let settings: Settings = de(own)?;
    if settings.rule.is_empty() {
        anyhow::bail!("rule: at least one [[plugin.rule]] is required");
    }
    if settings.rule.len() > MAX_RULES {
        anyhow::bail!("rule: {} rules, at most {MAX_RULES}", settings.rule.len());
    }
    (settings.rule.iter().enumerate())
        .map(|(i, r)| {
            Rule::new(r.action, &r.source, &r.dest).map_err(|e| anyhow::anyhow!("rule[{i}]: {e}"))
        })
        .collect()
}

/// Checks the settings.
pub fn check(own: toml::Table) -> anyhow::Result<()> {
    rules(own).map(|_| ())
}

/// Builds the plugin.
pub fn build(own: toml::Table, ctx: &PluginCtx) -> anyhow::Result<Built> {
    Ok(Built::hook(Arc::new(TopicRewrite::new(
        rules(own)?,
        ctx.stats.clone(),
    ))))
}

/// The hook.
#[derive(Debug)]
pub struct TopicRewrite {
    rules: Vec<Rule>,
    stats: Arc<PluginStats>,
}

impl TopicRewrite {
    /// A hook applying `rules`.
    pub fn new(rules: Vec<Rule>, stats: Arc<PluginStats>) -> Self {
        Self { rules, stats }
    }

    fn rewrite(&self, publish: bool, topic: &str) -> Option<String> {
        let rule = self.rules.iter().find(|r| {
            let applies = match r.action {
                RuleAction::All => true,
                RuleAction::Publish => publish,
                RuleAction::Subscribe => !publish,
            };
            applies && r.apply(topic).is_some()
        })?;
        rule.apply(topic)
    }

    fn filter(&self, filter: &TopicFilter, options: &SubscriptionOptions) -> FilterVerdict {
        // A shared subscription keeps its group; its filter is rewritten.
        let (prefix, text) = match filter.share_group() {
            Some(group) => {
                let f = std::str::from_utf8(filter.match_filter()).unwrap_or("");
                (format!("$share/{group}/"), f)
            }
            None => (String::new(), filter.as_str()),
        };
        let Some(new) = self.rewrite(false, text) else {
            return FilterVerdict::Pass;
        };
        match TopicFilter::try_from_str(&format!("{prefix}{new}")) {
            Ok(f) => FilterVerdict::Change(f, *options),
            Err(_) => {
                debug!(filter = %filter.as_str(), "rewritten filter is not valid; kept");
                self.stats.failed();
                FilterVerdict::Pass
            }
        }
    }
}

impl Hook for TopicRewrite {
    fn name(&self) -> &str {
        "topic_rewrite"
    }

    fn events(&self) -> Events {
        let publish = self.rules.iter().any(|r| r.action != RuleAction::Subscribe);
        let subscribe = self.rules.iter().any(|r| r.action != RuleAction::Publish);
        let mut e = Events::NONE;
        if publish {
            e = e.with(Event::Publish);
        }
        if subscribe {
            e = e.with(Event::Subscribe).with(Event::Unsubscribe);
        }
        e
    }

    fn on_publish(&self, _: &ClientRef<'_>, p: &Publish) -> Answer<PublishVerdict> {
        let Some(new) = self.rewrite(true, p.topic.as_str()) else {
            return Answer::Now(PublishVerdict::Pass);
        };
        match TopicName::try_from_str(&new) {
            Ok(topic) => {
                let mut changed = p.clone();
                changed.topic = topic;
                Answer::Now(PublishVerdict::Change(Box::new(changed)))
            }
            Err(_) => {
                debug!(topic = %p.topic.as_str(), "rewritten topic is not valid; kept");
                self.stats.failed();
                Answer::Now(PublishVerdict::Pass)
            }
        }
    }

    fn on_subscribe(
        &self,
        _: &ClientRef<'_>,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
    ) -> Answer<FilterVerdict> {
        Answer::Now(self.filter(filter, options))
    }

    fn on_unsubscribe(&self, _: &ClientRef<'_>, filter: &TopicFilter) -> Answer<FilterVerdict> {
        Answer::Now(self.filter(filter, &SubscriptionOptions::default()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(source: &str, dest: &str) -> Rule {
        Rule::new(RuleAction::All, source, dest).unwrap()
    }

    #[test]
    fn captures_wildcards_in_order() {
        let rule = r("x/+/y/#", "z/$1/$2");
        assert_eq!(rule.apply("x/a/y/b/c").as_deref(), Some("z/a/b/c"));
        assert_eq!(
            rule.apply("x/a/y").as_deref(),
            Some("z/a/"),
            "# matches the parent"
        );
        assert_eq!(rule.apply("x/a/q/b"), None);
        assert_eq!(rule.apply("x/a"), None);
        let exact = r("a/b", "c");
        assert_eq!(exact.apply("a/b").as_deref(), Some("c"));
        assert_eq!(exact.apply("a/b/c"), None);
        assert_eq!(exact.apply("a"), None);
        let plus = r("dev/+/temp", "temp/$1");
        assert_eq!(plus.apply("dev/7/temp").as_deref(), Some("temp/7"));
        assert_eq!(plus.apply("dev//temp").as_deref(), Some("temp/"));
        let all = r("#", "all/$1");
        assert_eq!(all.apply("q/w").as_deref(), Some("all/q/w"));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(Rule::new(RuleAction::All, "a/#/b", "c").is_err());
        assert!(Rule::new(RuleAction::All, "a/+", "c/$2").is_err());
        assert!(Rule::new(RuleAction::All, "a/+", "").is_err());
        assert!(rules(toml::Table::new()).is_err());
    }

    #[test]
    fn first_matching_rule_of_the_right_action_applies() {
        let hook = TopicRewrite::new(
            vec![
                Rule::new(RuleAction::Subscribe, "a/#", "sub/$1").unwrap(),
                Rule::new(RuleAction::Publish, "a/#", "pub/$1").unwrap(),
                Rule::new(RuleAction::All, "a/#", "never/$1").unwrap(),
            ],
            Arc::default(),
        );
        assert_eq!(hook.rewrite(true, "a/b").as_deref(), Some("pub/b"));
        assert_eq!(hook.rewrite(false, "a/b").as_deref(), Some("sub/b"));
        let f = TopicFilter::try_from_str("$share/g/a/+/x").unwrap();
        match hook.filter(&f, &SubscriptionOptions::default()) {
            FilterVerdict::Change(f, _) => assert_eq!(f.as_str(), "$share/g/sub/+/x"),
            other => panic!("{other:?}"),
        }
    }
}
