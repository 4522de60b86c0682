//! A bridge's topic mapping, with mosquitto's semantics: an `out` topic line subscribes
//! locally to `local_prefix + pattern`, and a message's topic has `local_prefix` replaced by
//! `remote_prefix`; an `in` line the other way round. The first line that matches decides.
//! Also the SUBSCRIBE the bridge sends for its filters on either side.

use bytes::Bytes;
use starling_proto::{
    Properties, QoS, RetainHandling, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
};

use crate::config::bridge::BridgeTopic;

/// One topic line, its filters parsed.
#[derive(Debug, Clone)]
struct Route {
    line: BridgeTopic,
    local: TopicFilter,
    remote: TopicFilter,
}

/// Every topic line of a bridge.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
}

fn filter(s: String) -> Option<TopicFilter> {
    TopicFilter::new(Bytes::from(s), usize::MAX).ok()
}

fn name(s: String) -> Option<TopicName> {
    TopicName::new(Bytes::from(s), usize::MAX).ok()
}

impl Routes {
    /// The routes of checked topic lines (lines that do not parse are left out; the config
    /// check refuses them first).
    pub fn new(lines: &[BridgeTopic]) -> Self {
        let routes = lines
            .iter()
            .filter_map(|l| {
                Some(Route {
                    local: filter(format!("{}{}", l.local_prefix, l.pattern))?,
                    remote: filter(format!("{}{}", l.remote_prefix, l.pattern))?,
                    line: l.clone(),
                })
            })
            .collect();
        Self { routes }
    }

    /// Local subscriptions: (filter, QoS) of every `out` and `both` line.
    pub fn local_filters(&self) -> Vec<(TopicFilter, QoS)> {
        self.routes
            .iter()
            .filter(|r| r.line.direction.out())
            .map(|r| (r.local.clone(), qos(r.line.qos)))
            .collect()
    }

    /// Remote subscriptions: (filter, QoS) of every `in` and `both` line.
    pub fn remote_filters(&self) -> Vec<(TopicFilter, QoS)> {
        self.routes
            .iter()
            .filter(|r| r.line.direction.inbound())
            .map(|r| (r.remote.clone(), qos(r.line.qos)))
            .collect()
    }

    /// The remote topic and QoS of a local message going out, if a line sends it.
    pub fn outbound(&self, topic: &TopicName, msg_qos: QoS) -> Option<(TopicName, QoS)> {
        let r = self
            .routes
            .iter()
            .find(|r| r.line.direction.out() && r.local.matches(topic))?;
        let rest = topic.as_str().strip_prefix(r.line.local_prefix.as_str())?;
        let t = name(format!("{}{rest}", r.line.remote_prefix))?;
        Some((t, msg_qos.min(qos(r.line.qos))))
    }

    /// The local topic and QoS of a remote message coming in, if a line takes it.
    pub fn inbound(&self, topic: &TopicName, msg_qos: QoS) -> Option<(TopicName, QoS)> {
        let r = self
            .routes
            .iter()
            .find(|r| r.line.direction.inbound() && r.remote.matches(topic))?;
        let rest = topic.as_str().strip_prefix(r.line.remote_prefix.as_str())?;
        let t = name(format!("{}{rest}", r.line.local_prefix))?;
        Some((t, msg_qos.min(qos(r.line.qos))))
    }
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

/// A SUBSCRIBE for `filters`; with MQTT 5 options, No Local (what the bridge publishes on a
/// side never comes back to it there), Retain As Published, and retained messages only for a
/// new subscription.
pub(super) fn subscribe(packet_id: u16, filters: Vec<(TopicFilter, QoS)>, v5: bool) -> Subscribe {
    Subscribe {
        packet_id,
        filters: filters
            .into_iter()
            .map(|(f, qos)| {
                let options = if v5 {
                    SubscriptionOptions {
                        qos,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::SendIfNew,
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                };
                (f, options)
            })
            .collect(),
        properties: Properties::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bridge::Direction;

    fn line(pattern: &str, direction: Direction, q: u8, local: &str, remote: &str) -> BridgeTopic {
        BridgeTopic {
            pattern: pattern.into(),
            direction,
            qos: q,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    fn t(s: &str) -> TopicName {
        name(s.into()).unwrap()
    }

    #[test]
    fn prefixes_are_swapped_both_ways() {
        let r = Routes::new(&[
            line("sensors/#", Direction::Out, 1, "", "site-1/"),
            line("cmd/#", Direction::In, 2, "local/", "site-1/"),
            line("both/+", Direction::Both, 0, "l/", "r/"),
        ]);
        let (topic, q) = r.outbound(&t("sensors/a/temp"), QoS::ExactlyOnce).unwrap();
        assert_eq!(
            (topic.as_str(), q),
            ("site-1/sensors/a/temp", QoS::AtLeastOnce)
        );
        assert!(r.outbound(&t("cmd/x"), QoS::AtMostOnce).is_none());
        let (topic, q) = r
            .inbound(&t("site-1/cmd/reboot"), QoS::AtLeastOnce)
            .unwrap();
        assert_eq!((topic.as_str(), q), ("local/cmd/reboot", QoS::AtLeastOnce));
        assert!(r.inbound(&t("site-1/sensors/a"), QoS::AtMostOnce).is_none());
        assert_eq!(
            r.outbound(&t("l/both/x"), QoS::AtLeastOnce)
                .unwrap()
                .0
                .as_str(),
            "r/both/x"
        );
        assert_eq!(
            r.inbound(&t("r/both/x"), QoS::AtLeastOnce)
                .unwrap()
                .0
                .as_str(),
            "l/both/x"
        );
        let local: Vec<String> = r
            .local_filters()
            .iter()
            .map(|(f, _)| f.as_str().to_owned())
            .collect();
        assert_eq!(local, ["sensors/#", "l/both/+"]);
        let remote: Vec<String> = r
            .remote_filters()
            .iter()
            .map(|(f, _)| f.as_str().to_owned())
            .collect();
        assert_eq!(remote, ["site-1/cmd/#", "r/both/+"]);
    }

    #[test]
    fn an_empty_pattern_is_the_prefix_itself() {
        let r = Routes::new(&[line("", Direction::Out, 0, "a/b", "x/y")]);
        assert_eq!(
            r.outbound(&t("a/b"), QoS::AtMostOnce).unwrap().0.as_str(),
            "x/y"
        );
        assert!(r.outbound(&t("a/b/c"), QoS::AtMostOnce).is_none());
    }
}
