//! A session moving between the nodes of a cluster. When a CONNECT on another node claims a
//! client id this node owns, the connection here is asked to close ([`Broker::moving_elsewhere`],
//! DISCONNECT 0x8E) and the session stays, still subscribed, until the new owner asks for
//! it: [`Broker::hand_over`] takes out its record and messages (as store records) while the
//! session keeps queueing what arrives meanwhile, and a second call takes that too and ends
//! the session. On the new owner [`Broker::adopt`] rebuilds the session from the records
//! (subscriptions into the route table, messages into the queue and the inflight window,
//! everything into the store) before its connection resumes it, and
//! [`Broker::adopt_messages`] appends the late ones.

use std::sync::Arc;
use std::time::Instant;

use starling_store::{LoadedSession, MessageRecord, Op};

use super::{Broker, Restored};
use crate::message::Delivery;
use crate::persist::{WallClock, decode_message};
use crate::router::Subscriber;
use crate::session::{Kick, Session};

/// What [`Broker::hand_over`] found.
#[derive(Debug)]
pub enum HandOver {
    /// No session of that client id here.
    Absent,
    /// A connection still holds it: it was asked to close (DISCONNECT 0x8E); ask again
    /// once it has.
    Connected,
    /// The session's record and what it held (the session ended if the call finished it),
    /// with each message's cluster id (0: none) in the order of `session.messages`.
    Taken {
        /// The session as store records.
        session: LoadedSession,
        /// The messages' cluster ids.
        ids: Vec<u64>,
        /// Queued messages beyond the call's byte budget stayed in the session, in order,
        /// for the next call (a finishing call that leaves some does not end the session).
        more: bool,
    },
}

impl Broker {
    /// Another node claimed `client_id`: its connection here, if any, closes with DISCONNECT
    /// 0x8E. The session stays (still routed to, still queueing) for the new owner to take
    /// with [`Broker::hand_over`]; the caller ends it with
    /// [`Broker::taken_over_elsewhere`] if nobody does. Whether there was a session.
    pub fn moving_elsewhere(&self, client_id: &str) -> bool {
        let Some(s) = self.seams.registry.get(client_id) else {
            return false;
        };
        s.lock().kick_for(Kick::TakenOver);
        true
    }

    /// Takes the session of `client_id` out for the node whose claim of `epoch` now owns the
    /// client id: its record (subscriptions, will, expiry) and its queued and inflight
    /// messages and inbound QoS 2 ids as records. Without `finish` the session stays,
    /// subscribed, and queues what arrives until a second call; with it, what it queued
    /// since, and the session ends here (its will does not go out: the new owner resumes
    /// it), unless `keep`: then its subscriptions leave the route table (this node stops
    /// telling its peers of them) for the relays, which messages forwarded by peers still
    /// match, and a last call without `keep` takes what they brought and ends it. A second
    /// call for another epoch than the first's (a later move of the client took the session
    /// since) finds nothing. `unix_ms` is the wall-clock time of `now`.
    ///
    /// The messages taken stop at `max_bytes` of packets, the inflight window always whole
    /// (its packet ids and phases travel with it) and at least one message: the queued ones
    /// beyond stay in the session, in order, ahead of what arrives meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn hand_over(
        &self,
        client_id: &str,
        epoch: u64,
        finish: bool,
        keep: bool,
        max_bytes: usize,
        now: Instant,
        unix_ms: u64,
    ) -> HandOver {
        let Some(session) = self.seams.registry.get(client_id) else {
            return HandOver::Absent;
        };
        let clock = WallClock::new(now, unix_ms);
        let mut s = session.lock();
        if s.is_ended() {
            return HandOver::Absent;
        }
        if finish && s.handed() != epoch {
            return HandOver::Absent;
        }
        if s.kick_for(Kick::TakenOver) {
            return HandOver::Connected;
        }
        if !finish {
            s.handed_for(epoch);
        }
        s.handover_step(now);
        let record = s.record(&clock);
        let mut taken = s.take_messages(&clock);
        drop(s);
        let beyond = over_budget(&mut taken.messages, &mut taken.ids, max_bytes);
        let more = !beyond.is_empty();
        if more {
            self.append(client_id, beyond, now, unix_ms, None);
        }
        if finish && !more && keep {
            self.relay(&session);
        } else if finish && !more {
            let mut ops = self.ops();
            let ended = session.lock().end(&mut ops);
            self.persist(&mut ops);
            if let Some(ended) = ended {
                self.unroute(&session, &ended.filters);
                self.seams.registry.release(&session);
                session.lock().wake_successor();
            }
            self.metrics.sessions_handed_over.inc();
        }
        HandOver::Taken {
            session: LoadedSession {
                client_id: client_id.to_owned(),
                record,
                messages: taken.messages,
                awaiting: taken.awaiting,
            },
            ids: taken.ids,
            more,
        }
    }

    /// Makes a session another node handed over this node's own, before the connection that
    /// claimed its client id resumes it: its subscriptions into the route table, its messages
    /// into its queue and inflight window, all of it into the store. `ids` are the cluster
    /// ids of its messages. A session of the same client id left here from before (handed
    /// over from here, then the client came back) is replaced: what it queued since is
    /// added, unless the handed-over session brings the same message (same cluster id); its
    /// will does not go out. False if that one still has a connection, or the handed-over
    /// one expired (nothing adopted).
    pub fn adopt(&self, loaded: LoadedSession, ids: &[u64], now: Instant, unix_ms: u64) -> bool {
        let clock = WallClock::new(now, unix_ms);
        let mut left: Vec<(MessageRecord, u64)> = Vec::new();
        if let Some(old) = self.seams.registry.get(&loaded.client_id) {
            if old.is_online() {
                return false;
            }
            let mut ops = self.ops();
            let ended = {
                let mut s = old.lock();
                let taken = s.take_messages(&clock);
                left = (taken.messages.into_iter().map(|(_, m)| m))
                    .zip(taken.ids)
                    .filter(|(_, id)| *id == 0 || !ids.contains(id))
                    .collect();
                s.end(&mut ops)
            };
            self.persist(&mut ops);
            if let Some(ended) = ended {
                self.unroute(&old, &ended.filters);
                self.seams.registry.release(&old);
            }
        }
        let mut ops = self.ops();
        let id: Arc<str> = loaded.client_id.as_str().into();
        // The records as they came, into this node's store: the same numbers, the same
        // phases, so that a restart here restores what the session is now.
        if ops.enabled() && loaded.record.expiry_secs != 0 {
            let record = loaded.record.clone();
            ops.push(|_| Op::PutSession(id.clone(), record));
            for (seq, m) in &loaded.messages {
                let m = m.clone();
                ops.push(|_| Op::PutMessage(id.clone(), *seq, m));
            }
            for pid in &loaded.awaiting {
                ops.push(|_| Op::PutAwaiting(id.clone(), *pid));
            }
        }
        let mut report = Restored::default();
        let Some(r) = Session::restore(loaded, &clock, now, &mut ops, &mut report) else {
            self.persist(&mut ops);
            return false;
        };
        self.persist(&mut ops);
        for (filter, sub) in &r.subscriptions {
            let routes = self.seams.routes.table();
            routes.subscribe(filter, Subscriber::new(&r.session, sub));
        }
        {
            let mut s = r.session.lock();
            s.arrange_queue(&self.limits);
            // What reaches it from now on may also be among the previous owner's last
            // messages for it (`adopt_messages`).
            s.remember_ids();
        }
        if self.seams.registry.claim(&r.session, None).is_none() {
            // A connection here claimed the client id meanwhile (it cannot: the cluster's
            // claim for it is the caller's); undo the routes rather than leave them dangling.
            let mut ops = self.ops();
            if let Some(ended) = r.session.lock().end(&mut ops) {
                self.unroute(&r.session, &ended.filters);
            }
            self.persist(&mut ops);
            return false;
        }
        self.metrics.sessions_adopted.inc();
        if !left.is_empty() {
            let id = r.session.client_id().clone();
            self.append(&id, left, now, unix_ms, None);
        }
        true
    }

    /// When a step of a handover last took from the session of `client_id` (its owner
    /// keeps a session whose parts are still being taken).
    pub fn last_handover_step(&self, client_id: &str) -> Option<Instant> {
        let session = self.seams.registry.get(client_id)?;
        session.lock().last_handover_step()
    }

    /// Appends messages the previous owner queued after it handed the session over (a
    /// second [`Broker::hand_over`]), each with its cluster id, to the adopted session of
    /// `client_id`, through the queue's bounds, and wakes its connection; a message that
    /// also reached the session here directly (the same cluster id) is not taken twice.
    /// With the last part (`more` false) it ends the remembering of ids (call it with nothing
    /// if the previous owner did not answer). How many were taken.
    pub fn adopt_messages(
        &self,
        client_id: &str,
        messages: Vec<(MessageRecord, u64)>,
        more: bool,
        now: Instant,
        unix_ms: u64,
    ) -> usize {
        let Some(session) = self.seams.registry.get(client_id) else {
            return 0;
        };
        // The ids seen are kept while more is to come, and dropped with the last part.
        let seen = if more {
            session.lock().seen_copy()
        } else {
            session.lock().take_seen()
        };
        let seen = seen.unwrap_or_default();
        if seen.full {
            tracing::warn!(
                client_id,
                "too many messages during a handover to tell them all apart; some may come twice"
            );
        }
        self.append(client_id, messages, now, unix_ms, Some(&seen))
    }

    /// Queues `messages` (records, each with its cluster id) in the session of `client_id`,
    /// but those `seen` there already, and wakes its connection; how many were taken.
    fn append(
        &self,
        client_id: &str,
        messages: Vec<(MessageRecord, u64)>,
        now: Instant,
        unix_ms: u64,
        seen: Option<&crate::session::SeenIds>,
    ) -> usize {
        let Some(session) = self.seams.registry.get(client_id) else {
            return 0;
        };
        let clock = WallClock::new(now, unix_ms);
        let ctx = self.ctx();
        let mut ops = self.ops();
        let mut taken = 0;
        for (m, id) in messages {
            if seen.is_some_and(|s| s.contains(id)) {
                continue;
            }
            let Some((msg, qos, retain, sub_ids)) = decode_message(&m, &clock, now) else {
                continue;
            };
            // It keeps its name in the cluster (a later move tells it apart again).
            msg.cluster_id.set(id);
            let d = Delivery::new(Arc::new(msg), qos, retain).with_sub_ids(sub_ids);
            taken += usize::from(session.deliver(d, &ctx, &mut ops));
        }
        self.persist(&mut ops);
        taken
    }
}

/// Splits off the queued messages beyond `max_bytes` of packets (with their ids), keeping
/// every inflight one (its phase and packet id must travel) and at least one message.
fn over_budget(
    messages: &mut Vec<(u64, MessageRecord)>,
    ids: &mut Vec<u64>,
    max_bytes: usize,
) -> Vec<(MessageRecord, u64)> {
    let mut bytes = 0usize;
    let cut = messages.iter().enumerate().position(|(i, (_, m))| {
        bytes = bytes.saturating_add(m.packet.len());
        i > 0 && m.phase == starling_store::MessagePhase::Queued && bytes > max_bytes
    });
    let Some(cut) = cut else {
        return Vec::new();
    };
    let beyond_ids = ids.split_off(cut.min(ids.len()));
    messages
        .split_off(cut)
        .into_iter()
        .map(|(_, m)| m)
        .zip(beyond_ids.into_iter().chain(std::iter::repeat(0)))
        .collect()
}
