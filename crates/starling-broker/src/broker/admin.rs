//! What an operator may do to a running broker (the admin API's core): look sessions up and
//! page through them, disconnect a client, discard an offline session, subscribe and
//! unsubscribe on a client's behalf, clear a retained message, publish. Each change goes
//! through the same methods (and the same [`Broker::persist`]) as a client's would.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use starling_proto::TopicFilter;
use starling_store::Op;

use super::Broker;
use crate::message::Message;
use crate::retain::RetainOutcome;
use crate::session::{Session, Subscription};

/// Why an operator's change was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// No session has that client id.
    #[error("no session for client id {0:?}")]
    NoSession(String),
    /// The session is connected (disconnect the client first).
    #[error("client {0:?} is connected")]
    Connected(String),
    /// The session ended meanwhile (taken over or expired).
    #[error("the session of {0:?} ended meanwhile")]
    Ended(String),
}

/// A page of sessions, ordered by client id.
#[derive(Debug)]
pub struct Page {
    /// The sessions, at most the limit asked for.
    pub sessions: Vec<Arc<Session>>,
    /// The client id to continue after, if there may be more.
    pub next: Option<String>,
}

/// Orders sessions by client id in the page heap (largest on top, so it is the one to evict).
struct ById(Arc<Session>);

impl PartialEq for ById {
    fn eq(&self, o: &Self) -> bool {
        self.0.client_id() == o.0.client_id()
    }
}
impl Eq for ById {}
impl PartialOrd for ById {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ById {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.client_id().cmp(o.0.client_id())
    }
}

impl Broker {
    /// The session of `client_id`, connected or not.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.seams.registry.get(client_id)
    }

    /// Up to `limit` sessions whose client id sorts after `after`, in client id order, that
    /// `keep` accepts. One pass over the registry keeping the `limit` smallest ids (no sort of
    /// everything), so a page costs O(n log limit) whatever the number of sessions.
    pub fn sessions_page(
        &self,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&Session) -> bool,
    ) -> Page {
        let limit = limit.max(1);
        let mut heap: BinaryHeap<ById> = BinaryHeap::with_capacity(limit + 1);
        for s in self.seams.registry.sessions() {
            if after.is_some_and(|a| &**s.client_id() <= a) {
                continue;
            }
            if heap.len() == limit
                && heap
                    .peek()
                    .is_some_and(|top| s.client_id() >= top.0.client_id())
            {
                continue;
            }
            if !keep(&s) {
                continue;
            }
            heap.push(ById(s));
            if heap.len() > limit {
                heap.pop();
            }
        }
        let full = heap.len() == limit;
        let sessions: Vec<Arc<Session>> = heap.into_sorted_vec().into_iter().map(|b| b.0).collect();
        let next = if full {
            sessions.last().map(|s| s.client_id().to_string())
        } else {
            None
        };
        Page { sessions, next }
    }

    /// Disconnects the client connected with `client_id` (v5: DISCONNECT 0x98). Its session
    /// stays as its expiry says; its will goes out as for any connection that did not say
    /// goodbye.
    pub fn kick(&self, client_id: &str) -> Result<(), AdminError> {
        let s = self
            .session(client_id)
            .ok_or_else(|| AdminError::NoSession(client_id.into()))?;
        if s.lock().kick() {
            Ok(())
        } else {
            Err(AdminError::NoSession(client_id.into()))
        }
    }

    /// Discards the offline session of `client_id` now, as if it had expired (a pending
    /// will goes out). A connected client's session is not discarded: kick it first.
    pub fn discard_session(&self, client_id: &str, now: Instant) -> Result<(), AdminError> {
        let s = self
            .session(client_id)
            .ok_or_else(|| AdminError::NoSession(client_id.into()))?;
        if s.is_online() {
            return Err(AdminError::Connected(client_id.into()));
        }
        self.end_session(&s, now);
        Ok(())
    }

    /// Subscribes the session of `client_id` to `filter` on its behalf, stored like a
    /// client's own SUBSCRIBE. Returns whether the subscription existed (it is replaced).
    /// Retained messages are not sent for it.
    pub fn subscribe_for(
        &self,
        client_id: &str,
        filter: &TopicFilter,
        sub: Subscription,
    ) -> Result<bool, AdminError> {
        let s = self
            .session(client_id)
            .ok_or_else(|| AdminError::NoSession(client_id.into()))?;
        let existed = self.subscribe(&s, filter, sub);
        if !s.lock().has_subscription(filter) {
            return Err(AdminError::Ended(client_id.into()));
        }
        let mut ops = self.ops();
        s.lock().save_subscriptions(&mut ops);
        self.persist(&mut ops);
        Ok(existed)
    }

    /// Removes the subscription of `client_id` to `filter`; whether it existed.
    pub fn unsubscribe_for(
        &self,
        client_id: &str,
        filter: &TopicFilter,
    ) -> Result<bool, AdminError> {
        let s = self
            .session(client_id)
            .ok_or_else(|| AdminError::NoSession(client_id.into()))?;
        let had = self.unsubscribe(&s, filter);
        let mut ops = self.ops();
        s.lock().save_subscriptions(&mut ops);
        self.persist(&mut ops);
        Ok(had)
    }

    /// Clears the retained message of `topic` without publishing anything; whether there
    /// was one.
    pub fn clear_retained(&self, topic: starling_proto::TopicName, now: Instant) -> bool {
        let had = !self.retained_matching(topic.as_bytes(), now).is_empty();
        let key = topic.as_str().to_string();
        let msg = Message::internal(topic, bytes::Bytes::new(), true);
        if matches!(
            self.seams.retained.set(Arc::new(msg), 0),
            RetainOutcome::Cleared
        ) && had
        {
            let mut ops = self.ops();
            ops.push(|_| Op::DeleteRetained(key));
            self.persist(&mut ops);
        }
        had
    }

    /// Routes a message an operator published (as a client's PUBLISH would be, persisted)
    /// and returns how many sessions it reached.
    pub fn publish_admin(&self, msg: Message) -> super::Routed {
        self.publish_and_persist(Arc::new(msg))
    }
}
