//! A run: QoS 0 messages that one read of a client brought, one after another, to one topic,
//! routed together ([`Broker::publish_run`]) once the run ends. A sensor stream or a burst to
//! a wide fan-out arrives like this, and routing the run as one matches the topic once and
//! takes each subscriber's lock and wakes it once, not once per message.
//!
//! A run lives for one call of `handle_input` and is routed before anything that could tell
//! the difference: before the client's next packet that is not a QoS 0 PUBLISH to the same
//! topic, before the connection closes (its will comes after its messages), before the turn
//! would be spent, and at the end of the read. QoS 0 messages are acknowledged to nobody, so
//! nothing is answered before they are routed.

use std::sync::Arc;

use starling_proto::TopicName;

use crate::broker::Broker;
use crate::message::Message;

/// Most messages in one run: its routing is one piece of the connection's turn
/// (`turn.rs`), and the longest wait it makes other clients' messages take.
pub(super) const RUN_MAX: usize = 32;

/// The messages of a run, in the order they arrived.
#[derive(Debug, Default)]
pub(super) struct Run {
    msgs: Vec<Arc<Message>>,
    /// The topic of the last run (or lone message) routed, and the sessions each of its
    /// messages reached: how many deliveries a message of the next run to that topic is
    /// expected to make. A message to another topic is routed alone to learn it, so that no
    /// run makes a turn much longer than it should be.
    reach: Option<(TopicName, usize)>,
    /// Per message, the sessions it reached (kept for the next run's routing).
    reached: Vec<usize>,
}

impl Run {
    /// Whether `msg` can join the run (it is empty, or `msg` goes to its topic).
    pub(super) fn takes(&self, msg: &Message) -> bool {
        self.msgs.first().is_none_or(|m| m.topic == msg.topic)
    }

    /// Whether what a message to `topic` reaches is known: the last run or message routed
    /// went to it. A message to a topic not known is routed alone, and [`Run::learn`]s.
    pub(super) fn knows(&self, topic: &TopicName) -> bool {
        self.reach.as_ref().is_some_and(|(t, _)| t == topic)
    }

    /// A message to `topic`, routed alone, reached `reach` sessions.
    pub(super) fn learn(&mut self, topic: TopicName, reach: usize) {
        self.reach = Some((topic, reach));
    }

    /// Adds a message (one that [`Run::takes`], to a topic it [`Run::knows`]).
    pub(super) fn push(&mut self, msg: Arc<Message>) {
        if self.msgs.capacity() == 0 {
            self.msgs.reserve_exact(RUN_MAX);
        }
        self.msgs.push(msg);
    }

    /// Whether the run must be routed now: it holds [`RUN_MAX`] messages, or its expected
    /// deliveries reach the `room` left in the connection's turn.
    pub(super) fn is_full(&self, room: u32) -> bool {
        let reach = self.reach.as_ref().map_or(1, |(_, r)| (*r).max(1));
        let expected = self.msgs.len().saturating_mul(reach);
        self.msgs.len() >= RUN_MAX || expected >= room as usize
    }

    /// Whether there is nothing to route.
    pub(super) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Routes the run and empties it: the deliveries it made (for the turn). Counts the
    /// messages that reached nobody.
    pub(super) fn route(&mut self, broker: &Broker) -> usize {
        if self.msgs.is_empty() {
            return 0;
        }
        self.reached.clear();
        self.reached.resize(self.msgs.len(), 0);
        let mut ops = broker.ops();
        let forwarded = broker.publish_run(&self.msgs, &mut ops, &mut self.reached);
        // QoS 0 deliveries store nothing; whatever a store wanted is stored all the same.
        broker.persist(&mut ops);
        let total: usize = self.reached.iter().sum();
        if forwarded == 0 {
            let nobody = self.reached.iter().filter(|r| **r == 0).count();
            if nobody > 0 {
                broker.metrics.dropped_no_subscriber.add(nobody as u64);
            }
        }
        let reach = total.div_ceil(self.msgs.len());
        self.reach = self.msgs.first().map(|m| (m.topic.clone(), reach));
        self.msgs.clear();
        total
    }
}
