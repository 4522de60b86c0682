//! Routing a published message: the retained copy, then one delivery per matching session
//! (overlapping subscriptions merged) and one member per shared group; and handing a shared
//! delivery over to another member when its session goes away.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use starling_proto::Publish;

use starling_store::Op;

use super::Broker;
use crate::forward::NodeId;
use crate::message::{Delivery, Message};
use crate::persist::{Ops, retained_record};
use crate::retain::RetainOutcome;
use crate::router::RouteTable;
use crate::router::{Subscriber, Target};
use crate::session::{Ctx, Session};

/// Where a message being routed comes from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// Published on this node.
    Here,
    /// Forwarded by another node, which picked this node for these shared groups (full
    /// filters).
    Peer(&'a [Arc<str>]),
}

/// What became of a publish.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    /// Sessions on this node that accepted a delivery.
    pub reached: usize,
    /// Other nodes the message was handed to.
    pub forwarded: usize,
    /// What became of the retained copy, if RETAIN was set.
    pub retained: Option<RetainOutcome>,
    /// What the forwarder asked the publisher's acknowledgement to wait for (the other nodes
    /// storing the message).
    pub awaiting: Vec<Arc<crate::retain::Replication>>,
}

impl Broker {
    /// Routes a message: stores or clears it as retained if RETAIN is set, then queues it for
    /// every matching session (one delivery per session, overlapping subscriptions merged:
    /// highest QoS, every subscription identifier), one member of each matching shared group,
    /// and hands it once to each other node with subscribers. What it stores goes into `ops`
    /// (the caller persists them, then acknowledges).
    pub fn publish(&self, msg: Arc<Message>, ops: &mut Ops<'_>) -> Routed {
        self.route_message(msg, ops, Origin::Here)
    }

    /// Routes a message another node of the cluster forwarded: to this node's subscribers
    /// only. It is not forwarded again (the publishing node handed it to every node with
    /// subscribers) and not stored as retained here (the publishing node did that). It goes
    /// to one member of each shared group in `groups` (full filters) and of no other group:
    /// the publishing node picked which node serves each group. Persists what it queued.
    pub fn publish_from_peer(&self, msg: Arc<Message>, groups: &[Arc<str>]) -> Routed {
        let mut ops = self.ops();
        let routed = self.route_message(msg, &mut ops, Origin::Peer(groups));
        self.persist(&mut ops);
        routed
    }

    /// Routes the messages of a batch another node forwarded (each with its groups), as
    /// `publish_from_peer` does, and persists what they queued together: the journal ticket
    /// to wait for before the batch is confirmed (`None`: nothing stored). `mark`, a setting
    /// naming the batch, is stored in the same commit when anything is, so that after a
    /// restart the node knows the batch was taken.
    pub fn publish_batch_from_peer(
        &self,
        msgs: Vec<(Arc<Message>, Vec<Arc<str>>)>,
        mark: Option<(String, Vec<u8>)>,
    ) -> Option<u64> {
        let mut ops = self.ops();
        for (msg, groups) in msgs {
            self.route_message(msg, &mut ops, Origin::Peer(&groups));
        }
        if let Some((name, value)) = mark.filter(|_| !ops.is_empty()) {
            ops.push(|_| Op::PutSetting(name, value));
        }
        self.persist(&mut ops)
    }

    /// Routes a run of messages one client published one after another to the same topic,
    /// none of them retained, as [`Broker::publish`] would route each in turn, but matching
    /// the topic once and taking each subscriber's lock once for the whole run: in a wide
    /// fan-out, locking and waking every subscriber per message is most of the routing's
    /// cost. `reached[k]` gets the sessions that accepted the `k`-th message (`reached` is as
    /// long as `msgs`); returns the number of other nodes each was handed to.
    pub fn publish_run(
        &self,
        msgs: &[Arc<Message>],
        ops: &mut Ops<'_>,
        reached: &mut [usize],
    ) -> usize {
        let same_topic = msgs
            .first()
            .is_some_and(|first| msgs.iter().all(|m| m.topic == first.topic));
        if !same_topic || msgs.iter().any(|m| m.retain) || reached.len() != msgs.len() {
            // Not a run: one by one (every message, whatever `reached` has room for).
            let mut forwarded = 0;
            for (k, msg) in msgs.iter().enumerate() {
                let routed = self.publish(msg.clone(), ops);
                if let Some(r) = reached.get_mut(k) {
                    *r = routed.reached;
                }
                forwarded = routed.forwarded;
            }
            return forwarded;
        }
        let (forwarded, _) = self.route_run(msgs, ops, Origin::Here, reached);
        forwarded
    }

    /// [`Broker::publish`]; `origin`: published on this node (its retained copy is kept, and
    /// other nodes with subscribers are handed it), or forwarded by another node.
    fn route_message(&self, msg: Arc<Message>, ops: &mut Ops<'_>, origin: Origin<'_>) -> Routed {
        let from_here = matches!(origin, Origin::Here);
        let retained = (from_here && msg.retain).then(|| self.retain(&msg, ops));
        let mut reached = [0];
        let (forwarded, awaiting) =
            self.route_run(std::slice::from_ref(&msg), ops, origin, &mut reached);
        Routed {
            reached: reached[0],
            forwarded,
            retained,
            awaiting,
        }
    }

    /// Queues each of `msgs` (one topic, in order) for every matching session on this node
    /// and hands it to every other node with subscribers (if published here); `reached[k]`
    /// counts the sessions that accepted `msgs[k]`. Returns the number of other nodes each
    /// message was handed to, and what the forwarder asked acknowledgements to wait for.
    fn route_run(
        &self,
        msgs: &[Arc<Message>],
        ops: &mut Ops<'_>,
        origin: Origin<'_>,
        reached: &mut [usize],
    ) -> (usize, Vec<Arc<crate::retain::Replication>>) {
        let Some(msg) = msgs.first() else {
            return (0, Vec::new());
        };
        let from_here = matches!(origin, Origin::Here);
        let publisher = msg.publisher.as_deref();
        // Other nodes to hand it to, each with the shared groups it was picked for.
        let mut remote: Vec<(NodeId, Vec<Arc<str>>)> = Vec::new();
        // The copies for sessions nobody is connected to (see `kept_for`), one per message,
        // made once if needed.
        let mut detached: Vec<Option<Arc<Message>>> = Vec::new();
        let mut matches = |targets: &[Target<'_>]| {
            let ctx = Ctx {
                fan_out: targets.len() >= crate::session::FAN_OUT,
                ..self.ctx()
            };
            // Plain subscriptions: one delivery per session, overlapping subscriptions merged.
            let mut plain: Vec<&Subscriber> = targets
                .iter()
                .filter_map(|t| match t {
                    Target::Plain(s) => Some(*s),
                    Target::Shared(..) | Target::Remote(_) | Target::RemoteGroup(..) => None,
                })
                .filter(|s| !(s.options.no_local && publisher == Some(&**s.session.client_id())))
                .collect();
            let address = |s: &&Subscriber| Arc::as_ptr(&s.session) as usize;
            // One filter's subscribers come sorted (the route table keeps them so); only
            // several filters' need sorting. Only grouping matters (merged deliveries take
            // every match of a session), so the unstable sort, which allocates nothing.
            if !plain.is_sorted_by_key(address) {
                plain.sort_unstable_by_key(address);
            }
            let mut i = 0;
            while let Some(first) = plain.get(i) {
                let same = plain.get(i..).unwrap_or_default();
                let n = same
                    .iter()
                    .take_while(|o| Arc::ptr_eq(&o.session, &first.session))
                    .count();
                let subs = same.get(..n).unwrap_or_default();
                let session = &first.session;
                if let [m] = msgs {
                    // One message (every publish but a run's).
                    let d = merged(kept_for(session, m, 0, &mut detached, 1), subs);
                    if session.deliver(d, &ctx, ops)
                        && let Some(r) = reached.first_mut()
                    {
                        *r += 1;
                    }
                    i += n.max(1);
                    continue;
                }
                session.deliver_each(
                    msgs.len(),
                    |k| {
                        let m = msgs.get(k)?;
                        Some(merged(
                            kept_for(session, m, k, &mut detached, msgs.len()),
                            subs,
                        ))
                    },
                    &ctx,
                    ops,
                    |k| {
                        if let Some(r) = reached.get_mut(k) {
                            *r += 1;
                        }
                    },
                );
                i += n.max(1);
            }
            for t in targets {
                match t {
                    // From a peer: only the groups it picked this node for.
                    Target::Shared(_, key, _)
                        if matches!(origin, Origin::Peer(groups)
                                if !groups.iter().any(|g| **g == *key.filter.as_str())) => {}
                    // Shared groups: one member each, taken in turn message by message.
                    Target::Shared(members, key, next) => {
                        for (k, m) in msgs.iter().enumerate() {
                            let Some(member) = pick_member(members, next, None) else {
                                break;
                            };
                            let d = Delivery::new(
                                kept_for(&member.session, m, k, &mut detached, msgs.len()).clone(),
                                m.qos.min(member.options.qos),
                                member.options.retain_as_published && m.retain,
                            )
                            .with_sub_ids(member.id.into_iter().collect())
                            .with_share((*key).clone());
                            if member.session.deliver(d, &ctx, ops)
                                && let Some(r) = reached.get_mut(k)
                            {
                                *r += 1;
                            }
                        }
                    }
                    Target::Remote(node) if from_here => {
                        if !remote.iter().any(|(n, _)| n == node) {
                            remote.push((*node, Vec::new()));
                        }
                    }
                    Target::RemoteGroup(node, group) if from_here => {
                        match remote.iter_mut().find(|(n, _)| n == node) {
                            Some((_, groups)) => groups.push((*group).clone()),
                            None => remote.push((*node, vec![(*group).clone()])),
                        }
                    }
                    Target::Plain(_) | Target::Remote(_) | Target::RemoteGroup(..) => {}
                }
            }
        };
        let topic = msg.topic.as_bytes();
        match origin {
            Origin::Here => self.seams.routes.route(topic, &mut matches),
            Origin::Peer(_) => {
                self.seams.routes.route_here(topic, &mut matches);
                // Sessions handed over from here that still take what peers forward late.
                if self.relays.count() > 0 {
                    self.relays.with_matches(topic, &mut matches);
                }
            }
        }
        // Outside the route table's lock: forwarding is the forwarder's business.
        let mut awaiting = Vec::new();
        for (node, groups) in &remote {
            for m in msgs {
                awaiting.extend(self.seams.forwarder.forward(*node, m, groups));
            }
        }
        for (m, copy) in msgs.iter().zip(&detached) {
            if let Some(copy) = copy {
                // Named when first handed to a peer (just now, if it was): the copy is the
                // same message to a session moved between nodes.
                copy.cluster_id.set(m.cluster_id.get());
            }
        }
        (remote.len(), awaiting)
    }

    /// Routes a message made outside any client (a plugin's delayed publish, for one) as
    /// the broker's own: no publisher, no authorization, no hooks. Persists what it stored
    /// and returns the journal ticket of that (`None`: nothing stored), which
    /// [`Broker::is_committed`] tells about.
    pub fn publish_message(&self, publish: Publish, now: Instant) -> (Routed, Option<u64>) {
        let msg = Arc::new(Message::from_publish(publish, None, now));
        let mut ops = self.ops();
        let routed = self.publish(msg, &mut ops);
        (routed, self.persist(&mut ops))
    }

    /// Whether everything journaled up to `ticket` is in the store (always, without one).
    pub fn is_committed(&self, ticket: u64) -> bool {
        self.persist
            .as_ref()
            .is_none_or(|p| p.journal.committed_through(ticket))
    }

    /// Routes a message the broker made itself (a will, `$SYS`) and persists what it stored.
    pub(super) fn publish_and_persist(&self, msg: Arc<Message>) -> Routed {
        let mut ops = self.ops();
        let routed = self.publish(msg, &mut ops);
        self.persist(&mut ops);
        routed
    }

    /// Sets, replaces or clears the retained copy of a message, and records it for the store.
    fn retain(&self, msg: &Arc<Message>, ops: &mut Ops<'_>) -> RetainOutcome {
        let max = self.limits.max_retained_messages;
        // The copy kept has bytes of its own (see `Message::detached`); what is routed now
        // goes on sharing the read buffer.
        let kept = if msg.payload.is_empty() {
            msg.clone()
        } else {
            Arc::new(msg.detached())
        };
        let outcome = self.seams.retained.set(kept, max);
        match &outcome {
            // The replicated store keeps it (and counts its refusals).
            RetainOutcome::Pending(_) => {}
            RetainOutcome::Full => self.metrics.retained_refused.inc(),
            RetainOutcome::Cleared => {
                ops.push(|_| Op::DeleteRetained(msg.topic.as_str().to_string()));
            }
            RetainOutcome::Stored => {
                let topic = msg.topic.as_str().to_string();
                ops.push(|clock| Op::PutRetained(topic, retained_record(msg, clock)));
            }
        }
        outcome
    }

    /// Hands a delivery that came through a shared subscription to another member of its
    /// group (not `from`); if there is none, back to `from`'s queue.
    pub(super) fn redistribute(&self, d: Delivery, from: &Arc<Session>) {
        let Some(key) = d.share().cloned() else {
            return;
        };
        let mut target = None;
        self.seams
            .routes
            .route(d.msg.topic.as_bytes(), |targets: &[Target<'_>]| {
                for t in targets {
                    if let Target::Shared(members, k, next) = t
                        && target.is_none()
                        && ***k == *key
                    {
                        target = pick_member(members, next, Some(from)).map(|m| m.session.clone());
                    }
                }
            });
        let to = target.unwrap_or_else(|| from.clone());
        let mut d = d;
        if Arc::ptr_eq(&to, from) {
            d.forget_share();
        }
        let mut ops = self.ops();
        to.deliver(d, &self.ctx(), &mut ops);
        self.persist(&mut ops);
    }
}

/// The message (`msg`, the `k`-th of a run of `n`) as `session` keeps it. A session nobody is
/// connected to may keep it for long (until its client comes back or the session expires), so
/// it gets the copy with bytes of its own ([`Message::detached`]), made the first time such a
/// session is reached and shared by all of them (`detached[k]`; `detached` is filled in when
/// first needed); a connected session, which sends it soon, shares the read buffer it came in.
fn kept_for<'a>(
    session: &Session,
    msg: &'a Arc<Message>,
    k: usize,
    detached: &'a mut Vec<Option<Arc<Message>>>,
    n: usize,
) -> &'a Arc<Message> {
    if session.is_online() {
        return msg;
    }
    if detached.len() < n {
        detached.resize(n, None);
    }
    match detached.get_mut(k) {
        Some(slot) => slot.get_or_insert_with(|| Arc::new(msg.detached())),
        None => msg,
    }
}

/// One delivery for a session that several matching subscriptions (`subs`, all of that
/// session) reach: the highest granted QoS, Retain As Published if any asks for it, and every
/// subscription identifier.
#[inline]
fn merged(msg: &Arc<Message>, subs: &[&Subscriber]) -> Delivery {
    if let [one] = subs {
        let qos = msg.qos.min(one.options.qos);
        let retain = one.options.retain_as_published && msg.retain;
        return Delivery::new(msg.clone(), qos, retain).with_sub_id(one.id);
    }
    let mut qos = starling_proto::QoS::AtMostOnce;
    let mut rap = false;
    let mut sub_ids = Vec::new();
    for s in subs {
        qos = qos.max(msg.qos.min(s.options.qos));
        rap |= s.options.retain_as_published;
        sub_ids.extend(s.id);
    }
    Delivery::new(msg.clone(), qos, rap && msg.retain).with_sub_ids(sub_ids)
}

/// Picks the next member of a shared group in turn, preferring connected members and
/// skipping `exclude`.
fn pick_member<'a>(
    members: &'a [Subscriber],
    next: &std::sync::atomic::AtomicUsize,
    exclude: Option<&Arc<Session>>,
) -> Option<&'a Subscriber> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    let allowed = |m: &&Subscriber| exclude.is_none_or(|e| !Arc::ptr_eq(&m.session, e));
    (0..n)
        .filter_map(|k| members.get((start + k) % n))
        .filter(allowed)
        .find(|m| m.session.is_online())
        .or_else(|| {
            (0..n)
                .filter_map(|k| members.get((start + k) % n))
                .find(allowed)
        })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use starling_proto::{
        Properties, PropertyValues, ProtocolVersion, Publish, QoS, SubscriptionOptions,
        TopicFilter, TopicName,
    };

    use crate::Limits;
    use crate::session::Subscription;

    use super::*;

    /// A received message's topic and payload are slices of the read buffer they came in. The
    /// retained copy has bytes of its own: kept for long, it must not keep a whole read buffer
    /// alive (a retained message among a stream of others would hold one each).
    #[test]
    fn a_retained_message_does_not_keep_its_read_buffer() {
        let now = Instant::now();
        let broker = Broker::new(Limits::default(), now);
        let buffer = Bytes::from(b"....a/b....payload....correlation....".to_vec());
        let values = PropertyValues {
            correlation_data: Some(buffer.slice(22..33)),
            ..PropertyValues::default()
        };
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: TopicName::new(buffer.slice(4..7), 16).unwrap(),
            packet_id: 0,
            properties: Properties::from_values(values),
            payload: buffer.slice(11..18),
        };
        broker.publish_message(publish, now);
        let kept = broker.retained_matching(b"a/b", now);
        let [msg] = kept.as_slice() else {
            panic!("retained: {kept:?}")
        };
        assert_eq!(msg.topic.as_str(), "a/b");
        assert_eq!(&msg.payload[..], b"payload");
        let data = msg.properties.correlation_data.as_deref();
        assert_eq!(data, Some(b"correlation".as_slice()));
        // Nothing but the test's own handle is left on the buffer.
        assert!(buffer.is_unique());
    }

    /// A subscription is kept for long: the session and the route table keep their own copy
    /// of its filter, not a slice of the SUBSCRIBE's read buffer.
    #[test]
    fn a_subscription_does_not_keep_its_read_buffer() {
        let now = Instant::now();
        let broker = Broker::new(Limits::default(), now);
        let session = Arc::new(Session::new("s".into(), ProtocolVersion::V5));
        let buffer = Bytes::from(b"..a/+..$share/g/b/#..".to_vec());
        for range in [2..5, 7..19] {
            let filter = TopicFilter::new(buffer.slice(range), 16).unwrap();
            let sub = Subscription {
                options: SubscriptionOptions::default(),
                id: None,
            };
            broker.subscribe(&session, &filter, sub);
        }
        assert!(buffer.is_unique(), "a subscription holds the read buffer");
        let st = session.lock();
        let mut filters: Vec<_> = st.subscriptions().map(|(f, _)| f.as_str()).collect();
        filters.sort_unstable();
        assert_eq!(filters, ["$share/g/b/#", "a/+"]);
    }

    /// A message queued for a session nobody is connected to may wait there for long: it is
    /// queued with bytes of its own. A connected session's delivery shares the read buffer.
    #[test]
    fn a_message_queued_for_an_offline_session_does_not_keep_its_read_buffer() {
        let now = Instant::now();
        let broker = Broker::new(Limits::default(), now);
        let session = Arc::new(Session::new("away".into(), ProtocolVersion::V311));
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        };
        let filter = TopicFilter::try_from_str("a/#").unwrap();
        broker.subscribe(&session, &filter, Subscription { options, id: None });
        assert!(!session.is_online());
        let buffer = Bytes::from(b"....a/b....payload....".to_vec());
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::new(buffer.slice(4..7), 16).unwrap(),
            packet_id: 1,
            properties: Properties::default(),
            payload: buffer.slice(11..18),
        };
        broker.publish_message(publish, now);
        assert!(
            buffer.is_unique(),
            "the queued message holds the read buffer"
        );
        let d = session.lock().next_delivery(10).unwrap();
        assert_eq!(
            (d.msg.topic.as_str(), &d.msg.payload[..]),
            ("a/b", b"payload".as_slice())
        );
        assert_eq!(d.qos, QoS::AtLeastOnce);
    }
    /// A run of messages reaches every session as routing them one by one would: in order,
    /// overlapping subscriptions merged, a shared group's members in turn message by
    /// message, No Local honoured; each message counted for the sessions it reached.
    #[test]
    fn a_run_reaches_what_its_messages_would_one_by_one() {
        let now = Instant::now();
        let broker = Broker::new(Limits::default(), now);
        let session = |id: &str| Arc::new(Session::new(id.into(), ProtocolVersion::V5));
        let sub = |s: &Arc<Session>, filter: &str, qos: QoS, no_local: bool| {
            let options = SubscriptionOptions {
                qos,
                no_local,
                ..SubscriptionOptions::default()
            };
            let filter = TopicFilter::try_from_str(filter).unwrap();
            broker.subscribe(s, &filter, Subscription { options, id: None });
        };
        let (all, b, c, publisher) = (session("all"), session("b"), session("c"), session("pub"));
        sub(&all, "r/#", QoS::AtLeastOnce, false);
        sub(&all, "r/x", QoS::AtMostOnce, false);
        sub(&b, "$share/g/r/x", QoS::AtLeastOnce, false);
        sub(&c, "$share/g/r/x", QoS::AtLeastOnce, false);
        sub(&publisher, "r/x", QoS::AtLeastOnce, true);
        let msgs: Vec<Arc<Message>> = (0u8..4)
            .map(|i| {
                let topic = TopicName::try_from_str("r/x").unwrap();
                let p = Publish::new(topic, QoS::AtLeastOnce, 1, Bytes::from(vec![i]));
                Arc::new(Message::from_publish(p, Some("pub".into()), now))
            })
            .collect();
        let mut ops = broker.ops();
        let mut reached = [0; 4];
        assert_eq!(broker.publish_run(&msgs, &mut ops, &mut reached), 0);
        assert_eq!(reached, [2, 2, 2, 2]);
        let queued = |s: &Arc<Session>| {
            let mut st = s.lock();
            std::iter::from_fn(|| st.next_delivery(10))
                .map(|d| (d.msg.payload[0], d.qos))
                .collect::<Vec<_>>()
        };
        let one = QoS::AtLeastOnce;
        assert_eq!(queued(&all), [(0, one), (1, one), (2, one), (3, one)]);
        let (in_b, in_c) = (queued(&b), queued(&c));
        assert_eq!((in_b.len(), in_c.len()), (2, 2), "{in_b:?} {in_c:?}");
        let mut shared: Vec<u8> = in_b.iter().chain(&in_c).map(|(p, _)| *p).collect();
        shared.sort_unstable();
        assert_eq!(shared, [0, 1, 2, 3]);
        assert!(queued(&publisher).is_empty(), "No Local");
    }
}
