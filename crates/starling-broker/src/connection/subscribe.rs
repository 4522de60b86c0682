//! SUBSCRIBE and UNSUBSCRIBE: authorization and quotas per filter, retained messages on
//! subscribe (Retain Handling), and the stored subscriptions of persistent sessions (SUBACK and
//! UNSUBACK wait for them).

use std::ops::ControlFlow;

use starling_proto::{
    Packet, Properties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
    TopicFilter, UnsubAck, Unsubscribe,
};

use super::active::Active;
use super::{Cx, Flow, access};
use crate::hook::Event;
use crate::message::Delivery;
use crate::session::Subscription;

impl Active {
    pub(super) fn on_subscribe(&mut self, cx: &mut Cx<'_>, s: Subscribe) -> Flow {
        if s.properties.subscription_identifiers.len() > 1 {
            return self.protocol_error(cx, "more than one subscription identifier");
        }
        let sub_id = s.properties.subscription_identifiers.first().copied();
        // Every filter is authorized before anything is subscribed: a check answered later
        // parks the SUBSCRIBE, which is then handled again from here.
        let mut allowed = Vec::with_capacity(s.filters.len().min(64));
        for (filter, _) in &s.filters {
            match access::may_subscribe(cx.link.access.as_mut(), self, filter) {
                access::Asked::Now(a) => allowed.push(a),
                access::Asked::Parked => {
                    cx.park(Packet::Subscribe(s));
                    return ControlFlow::Continue(());
                }
            }
        }
        // Then the hooks, which may change or refuse each allowed filter (and may park the
        // SUBSCRIBE the same way).
        let hooked = if cx.broker.hooks().wants(Event::Subscribe) {
            match self.subscribe_hooks(cx, &s.filters, &allowed) {
                Some(hooked) => Some(hooked),
                None => {
                    cx.park(Packet::Subscribe(s));
                    return ControlFlow::Continue(());
                }
            }
        } else {
            None
        };
        let filters: Vec<Result<(TopicFilter, SubscriptionOptions), ReasonCode>> = match hooked {
            Some(hooked) => hooked,
            None => s.filters.into_iter().map(Ok).collect(),
        };
        let mut reasons = Vec::with_capacity(filters.len().min(64));
        let mut retained = Vec::new();
        for (one, allowed) in filters.into_iter().zip(allowed) {
            let (filter, mut options) = match one {
                Ok(one) => one,
                Err(reason) => {
                    reasons.push(reason);
                    continue;
                }
            };
            if self.bridge {
                // A 3.x bridge that announced itself (mosquitto's try_private): its own
                // messages are not sent back to it, and retained flags go as published.
                options.no_local = true;
                options.retain_as_published = true;
            }
            let reason = if allowed {
                self.subscribe_one(cx, &filter, options, sub_id, &mut retained)
            } else {
                cx.broker.metrics.acl_denied.inc();
                self.log_denial(cx, "subscription", filter.as_str());
                ReasonCode::NotAuthorized
            };
            reasons.push(reason);
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.store_subscriptions_then(cx, suback);
        let broker = cx.broker;
        let mut ops = broker.ops();
        let ctx = broker.ctx();
        for d in retained {
            self.session.deliver(d, &ctx, &mut ops);
        }
        self.persisted(cx, &mut ops);
        ControlFlow::Continue(())
    }

    /// One authorized filter of a SUBSCRIBE: its SUBACK reason code. The retained messages it should get
    /// are added to `retained`.
    pub(super) fn subscribe_one(
        &mut self,
        cx: &mut Cx<'_>,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
        retained: &mut Vec<Delivery>,
    ) -> ReasonCode {
        let broker = cx.broker;
        let (exists, count) = {
            let st = self.session.lock();
            (st.has_subscription(filter), st.subscription_count())
        };
        if !exists && count >= broker.limits.max_subscriptions_per_client {
            broker.metrics.subscriptions_refused.inc();
            return ReasonCode::QuotaExceeded;
        }
        let existed = broker.subscribe(&self.session, filter, Subscription { options, id });
        let send_retained = filter.share_group().is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            for msg in broker.retained_matching(filter.match_filter(), cx.now) {
                let qos = msg.qos.min(options.qos);
                retained.push(Delivery::new(msg, qos, true).with_sub_ids(id.into_iter().collect()));
            }
        }
        match options.qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    pub(super) fn on_unsubscribe(&mut self, cx: &mut Cx<'_>, u: Unsubscribe) {
        let filters: Vec<Result<TopicFilter, ReasonCode>> =
            if cx.broker.hooks().wants(Event::Unsubscribe) {
                match self.unsubscribe_hooks(cx, &u.filters) {
                    Some(hooked) => hooked,
                    None => {
                        cx.park(Packet::Unsubscribe(u));
                        return;
                    }
                }
            } else {
                u.filters.into_iter().map(Ok).collect()
            };
        let broker = cx.broker;
        let reasons = filters
            .iter()
            .map(|f| match f {
                Ok(f) if broker.unsubscribe(&self.session, f) => ReasonCode::Success,
                Ok(_) => ReasonCode::NoSubscriptionExisted,
                Err(reason) => *reason,
            })
            .collect();
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.store_subscriptions_then(cx, unsuback);
    }

    /// Stores a persistent session's subscriptions, then sends `ack` (SUBACK, UNSUBACK) once
    /// they are stored.
    fn store_subscriptions_then(&mut self, cx: &mut Cx<'_>, ack: Packet) {
        let mut ops = cx.broker.ops();
        self.session.lock().save_subscriptions(&mut ops);
        let ticket = self.persisted(cx, &mut ops);
        self.send_ack(cx, ack, ticket);
    }
}
