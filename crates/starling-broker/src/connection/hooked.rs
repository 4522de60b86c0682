//! The broker's hooks as one connection meets them: CONNECT, PUBLISH, SUBSCRIBE and
//! UNSUBSCRIBE decisions (answered now, or later like an authorization: the packet parks
//! and each hook's answer is found again by its index and the point it was asked at), the
//! subscriptions hooks add to a session that starts, and the notifications a connection
//! gives (delivered, acknowledged, taken over, disconnected).

use std::sync::Arc;

use starling_auth::{Answer, AuthDecision, Authenticator, ConnectInfo, Grant};
use starling_proto::{
    Connect, Properties, Publish, QoS, ReasonCode, SubscriptionOptions, TopicFilter,
};

use super::access::{Asked, CheckAnswer, CheckKey, ConnAccess, Halt, ListenerAccess};
use super::active::Active;
use super::{Cx, Link};
use crate::hook::{
    AckEvent, ClientRef, ConnectEvent, ConnectVerdict, DeliveryEvent, DisconnectEvent, DropEvent,
    DropReason, Event, FilterVerdict, PublishVerdict, SessionActions, SessionChange, SessionEvent,
};
use crate::message::Delivery;

/// A hook's decision, kept for a parked packet.
#[derive(Clone, Debug)]
pub enum HookAnswer {
    /// On a CONNECT.
    Connect(ConnectVerdict),
    /// On a PUBLISH.
    Publish(PublishVerdict),
    /// On a SUBSCRIBE or UNSUBSCRIBE filter.
    Filter(FilterVerdict),
}

/// Where in a packet a hook was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookAt {
    Connect,
    Publish,
    /// The filter at this position of the SUBSCRIBE.
    Subscribe(usize),
    /// The filter at this position of the UNSUBSCRIBE.
    Unsubscribe(usize),
    /// What the hooks before the one that parked the packet came to at this point (the
    /// key's index is that hook's; `usize::MAX`: all of them). Kept only when a packet
    /// parks, so that handling it again neither asks them twice nor needs their answers.
    Progress(&'static str, usize),
}

/// The progress point of CONNECT, PUBLISH, and of each filter.
const CONNECT: HookAt = HookAt::Progress("connect", 0);
const PUBLISH: HookAt = HookAt::Progress("publish", 0);

fn filter_point(event: Event, n: usize) -> HookAt {
    match event {
        Event::Subscribe => HookAt::Progress("subscribe", n),
        _ => HookAt::Progress("unsubscribe", n),
    }
}

/// Where the hooks of `at` stand for the parked packet: the index of the first hook to ask,
/// and what the ones before it came to.
fn progress(link: &Link, at: HookAt) -> Option<(usize, HookAnswer)> {
    let access = link.access.as_ref()?;
    match access.recall(|k| matches!(k, CheckKey::Hook(_, a) if *a == at))? {
        (CheckKey::Hook(i, _), CheckAnswer::Hook(a)) => Some((*i, a.clone())),
        _ => None,
    }
}

/// Keeps where the hooks of `at` stand: hook `index` is the next to ask.
fn save_progress(link: &mut Link, at: HookAt, index: usize, answer: HookAnswer) {
    // One progress per point: the newest.
    access(link).remember(
        CheckKey::Hook(index, at),
        CheckAnswer::Hook(answer),
        |k| matches!(k, CheckKey::Hook(_, a) if *a == at),
    );
}

/// What the publish hooks made of a PUBLISH.
pub(super) enum Published {
    /// Route this (the original, or what a hook changed it to).
    Route(Publish),
    /// Not routed: acknowledge with this reason (`Success` when a hook took it).
    Stopped(ReasonCode),
    /// A hook answers later: the original PUBLISH is parked.
    Parked,
}

/// Lets everything pass: the access of a connection without a listener's, made only when a
/// hook's answer must be waited for (the wait lives in the access state).
#[derive(Debug)]
struct Open;

impl Authenticator for Open {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> Answer<AuthDecision> {
        Answer::Now(AuthDecision::Allow(Grant::user(
            info.username.map(str::to_owned),
        )))
    }
}

/// The connection's access state, made open if it has none.
fn access(link: &mut Link) -> &mut ConnAccess {
    link.access.get_or_insert_with(|| {
        ConnAccess::new(Arc::new(ListenerAccess {
            name: Arc::from(""),
            authenticator: Arc::new(Open),
            authorizer: None,
            enhanced: Vec::new(),
            session_queue: None,
            internal: false,
        }))
    })
}

/// The listener's name, for events.
fn listener_name(link: &Link) -> Arc<str> {
    (link.access.as_ref()).map_or_else(|| Arc::from(""), |a| a.listener.name.clone())
}

/// Asks hook `index` at `at`, or finds its earlier answer for the parked packet.
fn ask(
    link: &mut Link,
    index: usize,
    at: HookAt,
    question: impl FnOnce() -> Answer<HookAnswer>,
) -> Asked<HookAnswer> {
    let key = CheckKey::Hook(index, at);
    match access(link).consult(key, || question().map(CheckAnswer::Hook)) {
        Asked::Now(CheckAnswer::Hook(a)) => Asked::Now(a),
        // Another kind of answer under a hook's key cannot happen; pass.
        Asked::Now(_) => Asked::Now(HookAnswer::Filter(FilterVerdict::Pass)),
        Asked::Parked => Asked::Parked,
    }
}

/// Keeps the results of the filters the hooks finished before one parked the packet.
fn finished(
    link: &mut Link,
    event: Event,
    out: &[Result<(TopicFilter, SubscriptionOptions), ReasonCode>],
) {
    for (n, result) in out.iter().enumerate() {
        let verdict = match result {
            Ok((f, o)) => FilterVerdict::Change(f.clone(), *o),
            Err(reason) => FilterVerdict::Refuse(*reason),
        };
        let answer = HookAnswer::Filter(verdict);
        save_progress(link, filter_point(event, n), usize::MAX, answer);
    }
}

impl Cx<'_> {
    /// The connect hooks for an authenticated CONNECT. `Err(Refused)` once the refusal is in
    /// the output; `Err(Parked)` when a hook answers later and `may_wait` (the last step of
    /// an enhanced authentication exchange cannot be repeated: a later answer there
    /// refuses with 0x83).
    pub(super) fn connect_hooks(
        &mut self,
        c: &Connect,
        client_id: &str,
        username: Option<&str>,
        keep_alive: u16,
        may_wait: bool,
    ) -> Result<(), Halt> {
        let hooks = self.broker.hooks();
        if !hooks.wants(Event::Connect) {
            return Ok(());
        }
        let listener = listener_name(self.link);
        let e = ConnectEvent {
            client: ClientRef {
                client_id,
                username,
                peer: self.link.peer,
                listener: &listener,
                protocol: c.protocol,
            },
            clean_start: c.clean_start,
            keep_alive,
        };
        let start = progress(self.link, CONNECT).map_or(0, |(i, _)| i);
        for (i, h) in hooks.wanting(Event::Connect) {
            if i < start {
                continue;
            }
            let answer = ask(self.link, i, HookAt::Connect, || {
                h.on_connect(&e).map(HookAnswer::Connect)
            });
            let (reason, detail) = match answer {
                Asked::Now(HookAnswer::Connect(ConnectVerdict::Refuse(reason))) => {
                    (reason, format!("refused by hook {}", h.name()))
                }
                Asked::Now(_) => continue,
                Asked::Parked if may_wait => {
                    let accept = HookAnswer::Connect(ConnectVerdict::Accept);
                    save_progress(self.link, CONNECT, i, accept);
                    return Err(Halt::Parked);
                }
                Asked::Parked => {
                    access(self.link).drop_checks();
                    let detail = format!("hook {} cannot answer at once here", h.name());
                    (ReasonCode::ImplementationSpecificError, detail)
                }
            };
            self.broker.metrics.hook_refused.inc();
            let detail = format!("{detail} (client id {client_id:?})");
            let close = self.refuse_connect(c.protocol, reason, Properties::default(), &detail);
            return Err(Halt::Refused(close));
        }
        Ok(())
    }
}

impl Active {
    /// This connection's client, for hook events.
    pub(super) fn client_ref<'a>(&'a self, link: &Link, listener: &'a str) -> ClientRef<'a> {
        ClientRef {
            client_id: self.client_id(),
            username: self.username(),
            peer: link.peer,
            listener,
            protocol: self.version,
        }
    }

    /// Runs the publish hooks over an authorized PUBLISH, in order: each sees what the ones
    /// before it changed; the first that drops or takes it decides.
    pub(super) fn publish_hooks(&mut self, cx: &mut Cx<'_>, p: Publish) -> Published {
        let hooks = cx.broker.hooks();
        let listener = listener_name(cx.link);
        // The PUBLISH as the client sent it, kept (for a park) only once a hook changes it:
        // until then `p` is that PUBLISH. A progress of `Pass` means "unchanged so far".
        let mut original = None;
        let (start, mut p) = match progress(cx.link, PUBLISH) {
            Some((i, HookAnswer::Publish(PublishVerdict::Change(so_far)))) => {
                original = Some(p);
                (i, *so_far)
            }
            Some((i, _)) => (i, p),
            None => (0, p),
        };
        for (i, h) in hooks.wanting(Event::Publish) {
            if i < start {
                continue;
            }
            let client = self.client_ref(cx.link, &listener);
            let answer = ask(cx.link, i, HookAt::Publish, || {
                h.on_publish(&client, &p).map(HookAnswer::Publish)
            });
            match answer {
                Asked::Now(HookAnswer::Publish(v)) => match v {
                    PublishVerdict::Pass => {}
                    PublishVerdict::Change(mut changed) => {
                        (changed.dup, changed.packet_id) = (p.dup, p.packet_id);
                        let before = std::mem::replace(&mut p, *changed);
                        original.get_or_insert(before);
                    }
                    PublishVerdict::Drop(reason) => {
                        let m = &cx.broker.metrics;
                        m.publish_dropped.inc();
                        m.dropped_by_hook.inc();
                        if hooks.wants(Event::Dropped) {
                            hooks.dropped(&DropEvent {
                                client_id: Some(self.client_id()),
                                topic: p.topic.as_str(),
                                qos: p.qos,
                                payload_len: p.payload.len(),
                                reason: DropReason::Hook,
                            });
                        }
                        return Published::Stopped(reason);
                    }
                    PublishVerdict::Taken => return Published::Stopped(ReasonCode::Success),
                },
                Asked::Now(_) => {}
                Asked::Parked => {
                    let (so_far, sent) = match original {
                        Some(sent) => (PublishVerdict::Change(Box::new(p)), sent),
                        None => (PublishVerdict::Pass, p),
                    };
                    save_progress(cx.link, PUBLISH, i, HookAnswer::Publish(so_far));
                    cx.park(starling_proto::Packet::Publish(sent));
                    return Published::Parked;
                }
            }
        }
        Published::Route(p)
    }

    /// Runs the subscribe hooks over the filters of a SUBSCRIBE that the authorizer allowed
    /// (`allowed`): per filter, the filter and options to go on with, or the refusal (a
    /// filter the authorizer refused is passed through untouched, for the caller to refuse).
    /// `None` when a hook answers later (the caller parks the packet).
    pub(super) fn subscribe_hooks(
        &mut self,
        cx: &mut Cx<'_>,
        filters: &[(TopicFilter, SubscriptionOptions)],
        allowed: &[bool],
    ) -> Option<Vec<Result<(TopicFilter, SubscriptionOptions), ReasonCode>>> {
        let mut out = Vec::with_capacity(filters.len());
        for (n, ((filter, options), go)) in filters.iter().zip(allowed).enumerate() {
            let one = (filter.clone(), *options);
            let result = match go {
                true => self.filter_chain(cx, Event::Subscribe, n, one),
                false => Some(Ok(one)),
            };
            let Some(result) = result else {
                finished(cx.link, Event::Subscribe, &out);
                return None;
            };
            out.push(result);
        }
        Some(out)
    }

    /// Runs the unsubscribe hooks over the filters of an UNSUBSCRIBE, like
    /// [`Active::subscribe_hooks`].
    pub(super) fn unsubscribe_hooks(
        &mut self,
        cx: &mut Cx<'_>,
        filters: &[TopicFilter],
    ) -> Option<Vec<Result<TopicFilter, ReasonCode>>> {
        let mut out = Vec::with_capacity(filters.len());
        for (n, filter) in filters.iter().enumerate() {
            let one = (filter.clone(), SubscriptionOptions::default());
            let Some(result) = self.filter_chain(cx, Event::Unsubscribe, n, one) else {
                finished(cx.link, Event::Unsubscribe, &out);
                return None;
            };
            out.push(result);
        }
        Some(out.into_iter().map(|r| r.map(|(f, _)| f)).collect())
    }

    /// One filter through the hooks of `event` (the `n`th of its packet).
    fn filter_chain(
        &mut self,
        cx: &mut Cx<'_>,
        event: Event,
        n: usize,
        (mut filter, mut options): (TopicFilter, SubscriptionOptions),
    ) -> Option<Result<(TopicFilter, SubscriptionOptions), ReasonCode>> {
        let hooks = cx.broker.hooks();
        let listener = listener_name(cx.link);
        let point = filter_point(event, n);
        let start = match progress(cx.link, point) {
            Some((_, HookAnswer::Filter(FilterVerdict::Refuse(reason)))) => {
                return Some(Err(reason));
            }
            Some((i, HookAnswer::Filter(FilterVerdict::Change(f, o)))) => {
                (filter, options) = (f, o);
                i
            }
            _ => 0,
        };
        if start == usize::MAX {
            return Some(Ok((filter, options)));
        }
        for (i, h) in hooks.wanting(event) {
            if i < start {
                continue;
            }
            let client = self.client_ref(cx.link, &listener);
            let answer = if event == Event::Subscribe {
                ask(cx.link, i, HookAt::Subscribe(n), || {
                    h.on_subscribe(&client, &filter, &options)
                        .map(HookAnswer::Filter)
                })
            } else {
                ask(cx.link, i, HookAt::Unsubscribe(n), || {
                    h.on_unsubscribe(&client, &filter).map(HookAnswer::Filter)
                })
            };
            match answer {
                Asked::Now(HookAnswer::Filter(FilterVerdict::Change(f, o))) => {
                    filter = f;
                    options = o;
                }
                Asked::Now(HookAnswer::Filter(FilterVerdict::Refuse(reason))) => {
                    cx.broker.metrics.hook_refused.inc();
                    return Some(Err(reason));
                }
                Asked::Now(_) => {}
                Asked::Parked => {
                    let so_far = HookAnswer::Filter(FilterVerdict::Change(filter, options));
                    save_progress(cx.link, point, i, so_far);
                    return None;
                }
            }
        }
        Some(Ok((filter, options)))
    }

    /// Tells the hooks the session is created or resumed, and subscribes it to what they
    /// ask for (retained messages included); the subscriptions are stored like a client's.
    pub(super) fn session_started(&mut self, cx: &mut Cx<'_>, resumed: bool) {
        let hooks = cx.broker.hooks();
        if !hooks.wants(Event::Session) {
            return;
        }
        let listener = listener_name(cx.link);
        let mut actions = SessionActions::default();
        let e = SessionEvent {
            client_id: self.client_id(),
            client: Some(self.client_ref(cx.link, &listener)),
            change: if resumed {
                SessionChange::Resumed
            } else {
                SessionChange::Created
            },
        };
        hooks.session(&e, &mut actions);
        if actions.subscribe.is_empty() {
            return;
        }
        let mut retained: Vec<Delivery> = Vec::new();
        for (filter, options) in actions.subscribe {
            let _ = self.subscribe_one(cx, &filter, options, None, &mut retained);
        }
        let broker = cx.broker;
        let mut ops = broker.ops();
        self.session.lock().save_subscriptions(&mut ops);
        let ctx = broker.ctx();
        for d in retained {
            self.session.deliver(d, &ctx, &mut ops);
        }
        self.persisted(cx, &mut ops);
    }

    /// Tells the hooks the client acknowledged a message.
    #[inline]
    pub(super) fn acked_event(&self, cx: &Cx<'_>, packet_id: u16, qos: QoS) {
        let hooks = cx.broker.hooks();
        if hooks.wants(Event::Acked) {
            hooks.acked(&AckEvent {
                client_id: self.client_id(),
                packet_id,
                qos,
            });
        }
    }

    /// Tells the hooks a message went out to the client.
    #[inline]
    pub(super) fn delivered_event(&self, cx: &Cx<'_>, d: &Delivery, packet_id: u16) {
        let hooks = cx.broker.hooks();
        if hooks.wants(Event::Delivered) {
            hooks.delivered(&DeliveryEvent {
                client_id: self.client_id(),
                msg: &d.msg,
                qos: d.qos,
                packet_id,
            });
        }
    }

    /// Tells the hooks a message for the client was dropped.
    pub(super) fn dropped_event(&self, cx: &Cx<'_>, d: &Delivery, reason: DropReason) {
        let hooks = cx.broker.hooks();
        if hooks.wants(Event::Dropped) {
            hooks.dropped(&crate::hook::drop_event(
                Some(self.client_id()),
                &d.msg,
                reason,
            ));
        }
    }

    /// Tells the hooks another connection took this one's session.
    pub(super) fn taken_over_event(&self, cx: &Cx<'_>) {
        let hooks = cx.broker.hooks();
        if hooks.wants(Event::Session) {
            let listener = listener_name(cx.link);
            let e = SessionEvent {
                client_id: self.client_id(),
                client: Some(self.client_ref(cx.link, &listener)),
                change: SessionChange::TakenOver,
            };
            hooks.session(&e, &mut SessionActions::default());
        }
    }

    /// Tells the hooks this connection closed.
    pub(super) fn disconnected_event(&self, cx: &Cx<'_>, reason: ReasonCode, detail: &str) {
        let hooks = cx.broker.hooks();
        if hooks.wants(Event::Disconnected) {
            let listener = listener_name(cx.link);
            let e = DisconnectEvent {
                client: self.client_ref(cx.link, &listener),
                reason,
                detail,
            };
            hooks.disconnected(&e);
        }
    }
}
