//! SUBSCRIBE and UNSUBSCRIBE: quotas, retained messages on subscribe (Retain Handling), and
//! the stored subscriptions of persistent sessions.

use std::ops::ControlFlow;

use starling_proto::{
    Packet, Properties, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

use super::active::Active;
use super::{Cx, Flow, access};
use crate::broker::Broker;
use crate::message::Delivery;
use crate::session::{Session, Subscription};

impl Active {
    pub(super) fn on_subscribe(&mut self, cx: &mut Cx<'_>, s: Subscribe) -> Flow {
        let broker = cx.broker;
        let now = cx.now;
        if s.properties.subscription_identifiers.len() > 1 {
            return self.protocol_error(cx, "more than one subscription identifier");
        }
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let session = self.session.clone();
        let mut reasons = Vec::with_capacity(s.filters.len().min(64));
        let mut retained = Vec::new();
        for (filter, options) in s.filters {
            if !access::may_subscribe(cx.link.access.as_ref(), self, &filter) {
                broker.metrics.acl_denied.inc();
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let (exists, count) = {
                let st = session.lock();
                (
                    st.subscriptions.contains_key(&filter),
                    st.subscriptions.len(),
                )
            };
            if !exists && count >= broker.limits.max_subscriptions_per_client {
                broker.metrics.subscriptions_refused.inc();
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let existed = broker.router.subscribe(&filter, &session, options, sub_id);
            session.lock().subscriptions.insert(
                filter.clone(),
                Subscription {
                    options,
                    id: sub_id,
                },
            );
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            use starling_proto::RetainHandling as RH;
            let send_retained = filter.share_group().is_none()
                && match options.retain_handling {
                    RH::SendAtSubscribe => true,
                    RH::SendIfNew => !existed,
                    RH::DoNotSend => false,
                };
            if send_retained {
                for msg in broker.retained.matching(filter.match_filter(), now) {
                    retained.push(Delivery {
                        qos: msg.qos.min(options.qos),
                        msg,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        share: None,
                        seq: 0,
                    });
                }
            }
        }
        let ticket = store_subscriptions(broker, &session);
        self.journaled(ticket);
        let suback = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.send_ack(cx, suback, ticket);
        let ctx = broker.ctx();
        for d in retained {
            session.deliver(d, &ctx);
        }
        ControlFlow::Continue(())
    }

    pub(super) fn on_unsubscribe(&mut self, cx: &mut Cx<'_>, u: Unsubscribe) {
        let broker = cx.broker;
        let session = self.session.clone();
        let reasons = u
            .filters
            .iter()
            .map(|f| {
                let had = session.lock().subscriptions.remove(f).is_some();
                broker.router.unsubscribe(f, &session);
                if had {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        let ticket = store_subscriptions(broker, &session);
        self.journaled(ticket);
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.send_ack(cx, unsuback, ticket);
    }
}

/// Writes a persistent session's subscriptions to the store: the SUBACK / UNSUBACK that
/// reports them waits for the returned ticket.
fn store_subscriptions(broker: &Broker, session: &Session) -> Option<u64> {
    let mut st = session.lock();
    if st.persisted {
        broker.persist_session(session, &mut st)
    } else {
        None
    }
}
