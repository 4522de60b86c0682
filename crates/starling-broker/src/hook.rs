//! Hooks: the plugin seam of the core. A [`Hook`] is told of events at one place each and
//! may decide some of them: refuse a client, pass, change, drop or take a message, change or
//! refuse a subscription filter, add subscriptions to a session that starts.
//!
//! | Event | Called | Decides |
//! | --- | --- | --- |
//! | `Connect` | after authentication, before the session is claimed | accept, or refuse with a reason code |
//! | `Publish` | after the publish authorization, before routing | pass, change, drop (with the publisher's reason code), take |
//! | `Subscribe` / `Unsubscribe` | per filter, after the authorization | pass, change the filter, refuse |
//! | `Session` | created or resumed (on CONNACK), taken over, expired | subscriptions to add (created, resumed) |
//! | `Delivered` | a message encoded for a subscriber | — |
//! | `Acked` | PUBACK / PUBCOMP from a subscriber | — |
//! | `Dropped` | a message not routed or not delivered, with the reason | — |
//! | `Disconnected` | a connected client's connection closed, with the reason | — |
//!
//! Hooks run in their configured order; the first that refuses or drops decides, and a hook
//! sees what the hooks before it changed. The decisions may come later
//! ([`Answer::Later`]): the packet is parked as for an authorization answered later (see
//! `connection/access.rs`), so a slow hook holds only its own client's connection. The
//! notifications are synchronous and must not block: a hook that does I/O for them queues
//! the event (bounded) and returns. Which events a hook wants is fixed when it is added; the
//! core tests one bit per event, so an event nobody wants costs a branch.
//!
//! The core runs no timers: a deadline on a later answer and what a failing hook decides
//! (fail open or closed) are the I/O layer's, which wraps the hooks it configures.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

pub use starling_auth::{Answer, Pending};
use starling_proto::{ProtocolVersion, Publish, QoS, ReasonCode, SubscriptionOptions, TopicFilter};

use crate::message::Message;

/// An event a hook may want.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Event {
    /// A client's CONNECT, authenticated.
    Connect = 0,
    /// A client's PUBLISH, authorized.
    Publish,
    /// One filter of a SUBSCRIBE, authorized.
    Subscribe,
    /// One filter of an UNSUBSCRIBE.
    Unsubscribe,
    /// A message sent to a subscriber.
    Delivered,
    /// A subscriber acknowledged a QoS 1 / 2 message.
    Acked,
    /// A message was dropped.
    Dropped,
    /// A session was created, resumed, taken over or expired.
    Session,
    /// A connected client's connection closed.
    Disconnected,
}

impl Event {
    /// Every event, in order.
    pub const ALL: [Event; 9] = [
        Event::Connect,
        Event::Publish,
        Event::Subscribe,
        Event::Unsubscribe,
        Event::Delivered,
        Event::Acked,
        Event::Dropped,
        Event::Session,
        Event::Disconnected,
    ];

    /// The event's name in configuration and in events sent out (`message.published`, …).
    pub fn name(self) -> &'static str {
        match self {
            Event::Connect => "client.connect",
            Event::Publish => "message.publish",
            Event::Subscribe => "client.subscribe",
            Event::Unsubscribe => "client.unsubscribe",
            Event::Delivered => "message.delivered",
            Event::Acked => "message.acked",
            Event::Dropped => "message.dropped",
            Event::Session => "session",
            Event::Disconnected => "client.disconnected",
        }
    }

    /// The event named `name` (see [`Event::name`]).
    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A set of events.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Events(u16);

impl Events {
    /// No event.
    pub const NONE: Events = Events(0);
    /// Every event.
    pub const ALL: Events = Events((1 << Event::ALL.len()) - 1);

    /// This set with `e`.
    pub const fn with(self, e: Event) -> Events {
        Events(self.0 | 1 << e as u8)
    }

    /// Whether `e` is in the set.
    #[inline]
    pub const fn has(self, e: Event) -> bool {
        self.0 & (1 << e as u8) != 0
    }

    /// The events of both sets.
    pub const fn union(self, other: Events) -> Events {
        Events(self.0 | other.0)
    }
}

impl FromIterator<Event> for Events {
    fn from_iter<I: IntoIterator<Item = Event>>(iter: I) -> Self {
        iter.into_iter().fold(Events::NONE, Events::with)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = Event::ALL.into_iter().filter(|e| self.has(*e));
        f.debug_set().entries(names.map(Event::name)).finish()
    }
}

/// The client an event is about.
#[derive(Clone, Copy, Debug)]
pub struct ClientRef<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// Username, as authenticated.
    pub username: Option<&'a str>,
    /// The client's address, when it has one.
    pub peer: Option<SocketAddr>,
    /// The listener's name.
    pub listener: &'a str,
    /// Protocol level.
    pub protocol: ProtocolVersion,
}

/// A CONNECT about to be accepted.
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent<'a> {
    /// Who connects.
    pub client: ClientRef<'a>,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Keep-alive in seconds, as negotiated.
    pub keep_alive: u16,
}

/// A hook's decision on a CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Go on.
    Accept,
    /// Refuse with this reason code (v5 CONNACK; 3.x gets the nearest return code).
    Refuse(ReasonCode),
}

/// A hook's decision on a PUBLISH.
#[derive(Clone, Debug)]
pub enum PublishVerdict {
    /// Route it as it is.
    Pass,
    /// Route this instead: topic, payload, QoS, retain and properties may differ (the packet
    /// id and DUP are the publisher's and are kept).
    Change(Box<Publish>),
    /// Do not route it; acknowledge with this reason code (v5; 3.x is acknowledged as usual).
    /// Counted as dropped by a hook.
    Drop(ReasonCode),
    /// The hook took the message (to publish it later, to store it elsewhere): acknowledged
    /// as a success, not routed, not counted as dropped.
    Taken,
}

/// A hook's decision on a subscription filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterVerdict {
    /// Go on with the filter as it is.
    Pass,
    /// Use this filter instead (and these options, for SUBSCRIBE).
    Change(TopicFilter, SubscriptionOptions),
    /// Refuse the filter with this reason code (SUBACK / UNSUBACK; 3.x SUBACK 0x80).
    Refuse(ReasonCode),
}

/// A message sent to a subscriber.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryEvent<'a> {
    /// The subscriber's client id.
    pub client_id: &'a str,
    /// The message.
    pub msg: &'a Message,
    /// QoS it went out with.
    pub qos: QoS,
    /// Packet id it went out under (0 at QoS 0).
    pub packet_id: u16,
}

/// A subscriber's acknowledgement of a QoS 1 (PUBACK) or QoS 2 (PUBCOMP) message.
#[derive(Clone, Copy, Debug)]
pub struct AckEvent<'a> {
    /// The subscriber's client id.
    pub client_id: &'a str,
    /// The packet id acknowledged.
    pub packet_id: u16,
    /// QoS of the message.
    pub qos: QoS,
}

/// Why a message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Published, and no subscription matched.
    NoSubscriber,
    /// A subscriber's queue was full.
    QueueFull,
    /// Its Message Expiry Interval passed before it could be sent.
    Expired,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
    /// The ACL refused it (publish or read).
    NotAuthorized,
    /// A hook dropped it.
    Hook,
}

impl DropReason {
    /// The reason's name in events sent out.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoSubscriber => "no_subscriber",
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::NotAuthorized => "not_authorized",
            DropReason::Hook => "hook",
        }
    }
}

/// A message dropped.
#[derive(Clone, Copy, Debug)]
pub struct DropEvent<'a> {
    /// The subscriber it was for, or the publisher for a message not routed.
    pub client_id: Option<&'a str>,
    /// Topic.
    pub topic: &'a str,
    /// QoS it was published with.
    pub qos: QoS,
    /// Payload size in bytes.
    pub payload_len: usize,
    /// Why.
    pub reason: DropReason,
}

/// What happened to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// A new session (Clean Start, or none existed).
    Created,
    /// An existing session was resumed.
    Resumed,
    /// Another connection took the session (or started a new one for the client id).
    TakenOver,
    /// The session expired and was removed.
    Expired,
}

impl SessionChange {
    /// The change's name in events sent out.
    pub fn name(self) -> &'static str {
        match self {
            SessionChange::Created => "session.created",
            SessionChange::Resumed => "session.resumed",
            SessionChange::TakenOver => "session.taken_over",
            SessionChange::Expired => "session.expired",
        }
    }
}

/// A session event. `client` is present when a connection is involved (created, resumed,
/// taken over); an expired session has only its id.
#[derive(Clone, Copy, Debug)]
pub struct SessionEvent<'a> {
    /// The session's client id.
    pub client_id: &'a str,
    /// The connection, for created and resumed sessions.
    pub client: Option<ClientRef<'a>>,
    /// What happened.
    pub change: SessionChange,
}

/// What hooks ask for a session that is created or resumed: subscriptions to add, as if
/// the client had subscribed (retained messages included), before it sends anything.
#[derive(Debug, Default)]
pub struct SessionActions {
    /// Filters to subscribe to, with their options.
    pub subscribe: Vec<(TopicFilter, SubscriptionOptions)>,
}

/// A connection that closed after CONNACK.
#[derive(Clone, Copy, Debug)]
pub struct DisconnectEvent<'a> {
    /// Who.
    pub client: ClientRef<'a>,
    /// The reason (from the client's DISCONNECT, or the broker's).
    pub reason: ReasonCode,
    /// A readable detail.
    pub detail: &'a str,
}

/// A plugin's hook. Every method has a default that passes or ignores; a hook implements
/// those of the events it declares in [`Hook::events`] (the others are never called).
pub trait Hook: Send + Sync + fmt::Debug {
    /// The hook's name, for logs and metrics.
    fn name(&self) -> &str;
    /// The events it wants; fixed for the hook's life.
    fn events(&self) -> Events;

    /// A CONNECT, after authentication and before the session is claimed.
    fn on_connect(&self, _e: &ConnectEvent<'_>) -> Answer<ConnectVerdict> {
        Answer::Now(ConnectVerdict::Accept)
    }
    /// A PUBLISH, authorized, before routing.
    fn on_publish(&self, _client: &ClientRef<'_>, _p: &Publish) -> Answer<PublishVerdict> {
        Answer::Now(PublishVerdict::Pass)
    }
    /// One filter of a SUBSCRIBE, authorized.
    fn on_subscribe(
        &self,
        _client: &ClientRef<'_>,
        _filter: &TopicFilter,
        _options: &SubscriptionOptions,
    ) -> Answer<FilterVerdict> {
        Answer::Now(FilterVerdict::Pass)
    }
    /// One filter of an UNSUBSCRIBE.
    fn on_unsubscribe(
        &self,
        _client: &ClientRef<'_>,
        _filter: &TopicFilter,
    ) -> Answer<FilterVerdict> {
        Answer::Now(FilterVerdict::Pass)
    }
    /// A message sent to a subscriber. Must not block.
    fn on_delivered(&self, _e: &DeliveryEvent<'_>) {}
    /// A subscriber's acknowledgement. Must not block.
    fn on_acked(&self, _e: &AckEvent<'_>) {}
    /// A message dropped. Must not block.
    fn on_dropped(&self, _e: &DropEvent<'_>) {}
    /// A session event; for created and resumed sessions, `actions` takes subscriptions to
    /// add. Must not block.
    fn on_session(&self, _e: &SessionEvent<'_>, _actions: &mut SessionActions) {}
    /// A connected client's connection closed. Must not block.
    fn on_disconnected(&self, _e: &DisconnectEvent<'_>) {}
}

/// The broker's hooks, in order, with the union of the events they want.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    list: Vec<Arc<dyn Hook>>,
    wants: Events,
}

impl Hooks {
    /// Hooks called in the order given.
    pub fn new(list: Vec<Arc<dyn Hook>>) -> Self {
        let wants = list.iter().fold(Events::NONE, |w, h| w.union(h.events()));
        Self { list, wants }
    }

    /// Whether any hook wants `e`: the one test on every path.
    #[inline]
    pub fn wants(&self, e: Event) -> bool {
        self.wants.has(e)
    }

    /// Whether there are no hooks.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The hooks that want `e`, in order, with their index in the list (which names their
    /// answers to a parked packet).
    pub fn wanting(&self, e: Event) -> impl Iterator<Item = (usize, &Arc<dyn Hook>)> {
        let wanted = self.wants(e);
        (self.list.iter().enumerate()).filter(move |(_, h)| wanted && h.events().has(e))
    }

    /// Tells every hook that wants [`Event::Delivered`].
    #[inline]
    pub fn delivered(&self, e: &DeliveryEvent<'_>) {
        for (_, h) in self.wanting(Event::Delivered) {
            h.on_delivered(e);
        }
    }

    /// Tells every hook that wants [`Event::Acked`].
    pub fn acked(&self, e: &AckEvent<'_>) {
        for (_, h) in self.wanting(Event::Acked) {
            h.on_acked(e);
        }
    }

    /// Tells every hook that wants [`Event::Dropped`].
    pub fn dropped(&self, e: &DropEvent<'_>) {
        for (_, h) in self.wanting(Event::Dropped) {
            h.on_dropped(e);
        }
    }

    /// Tells every hook that wants [`Event::Session`]; what they ask for is in `actions`.
    pub fn session(&self, e: &SessionEvent<'_>, actions: &mut SessionActions) {
        for (_, h) in self.wanting(Event::Session) {
            h.on_session(e, actions);
        }
    }

    /// Tells every hook that wants [`Event::Disconnected`].
    pub fn disconnected(&self, e: &DisconnectEvent<'_>) {
        for (_, h) in self.wanting(Event::Disconnected) {
            h.on_disconnected(e);
        }
    }
}

/// A dropped message's event for `msg`.
pub(crate) fn drop_event<'a>(
    client_id: Option<&'a str>,
    msg: &'a Message,
    reason: DropReason,
) -> DropEvent<'a> {
    DropEvent {
        client_id,
        topic: msg.topic.as_str(),
        qos: msg.qos,
        payload_len: msg.payload.len(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_bits() {
        let e: Events = [Event::Publish, Event::Dropped].into_iter().collect();
        assert!(e.has(Event::Publish) && e.has(Event::Dropped));
        assert!(!e.has(Event::Connect) && !e.has(Event::Delivered));
        assert!(Event::ALL.into_iter().all(|x| Events::ALL.has(x)));
        assert!(Event::ALL.into_iter().all(|x| !Events::NONE.has(x)));
        assert_eq!(
            format!("{e:?}"),
            r#"{"message.publish", "message.dropped"}"#
        );
    }

    #[test]
    fn names_round_trip() {
        for e in Event::ALL {
            assert_eq!(Event::from_name(e.name()), Some(e));
        }
        assert_eq!(Event::from_name("nope"), None);
    }

    #[derive(Debug)]
    struct Counting(Events, std::sync::atomic::AtomicUsize);
    impl Hook for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn events(&self) -> Events {
            self.0
        }
        fn on_acked(&self, _e: &AckEvent<'_>) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn only_hooks_that_want_an_event_are_told() {
        let wants = Arc::new(Counting(Events::NONE.with(Event::Acked), 0.into()));
        let not = Arc::new(Counting(Events::NONE.with(Event::Dropped), 0.into()));
        let hooks = Hooks::new(vec![wants.clone(), not.clone()]);
        assert!(hooks.wants(Event::Acked) && hooks.wants(Event::Dropped));
        assert!(!hooks.wants(Event::Publish));
        let e = AckEvent {
            client_id: "c",
            packet_id: 1,
            qos: QoS::AtLeastOnce,
        };
        hooks.acked(&e);
        hooks.acked(&e);
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!((wants.1.load(Relaxed), not.1.load(Relaxed)), (2, 0));
        assert!(Hooks::default().is_empty());
        assert!(!Hooks::default().wants(Event::Acked));
    }
}
