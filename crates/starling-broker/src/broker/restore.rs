//! Rebuilding the broker from a store snapshot at start-up: persistent sessions (into the
//! registry and the route table) and retained messages.

use std::sync::Arc;
use std::time::Instant;

use starling_store::Op;

use super::Broker;
use crate::persist::decode_message;
use crate::router::Subscriber;
use crate::session::Session;

/// What [`Broker::restore`] brought back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Sessions restored.
    pub sessions: usize,
    /// Queued and inflight messages restored.
    pub messages: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Sessions that expired while the broker was down.
    pub expired_sessions: usize,
    /// Messages that expired while the broker was down.
    pub expired_messages: usize,
    /// Records that could not be decoded and were left out.
    pub skipped: usize,
}

impl Broker {
    /// Rebuilds the state a store held: persistent sessions (disconnected, with their
    /// subscriptions, queued and inflight messages and awaiting QoS 2 ids), and retained
    /// messages. What expired while the broker was down is dropped (and deleted from the
    /// store). Call before any client connects.
    pub fn restore(&self, mut snap: starling_store::Snapshot, now: Instant) -> Restored {
        let mut report = Restored::default();
        let Some(p) = self.persist.as_ref() else {
            return report;
        };
        let clock = p.clock;
        let mut ops = self.ops();
        for loaded in snap.sessions {
            let Some(r) = Session::restore(loaded, &clock, now, &mut ops, &mut report) else {
                continue;
            };
            for (filter, sub) in &r.subscriptions {
                let routes = self.seams.routes.table();
                routes.subscribe(filter, Subscriber::new(&r.session, sub));
            }
            // Into buffers per subscription, if the limits ask for them (the store keeps no
            // buffer: a message goes back to the one its topic matches now).
            r.session.lock().arrange_queue(&self.limits);
            // The store has one record per client id, so nothing is there to compare with.
            if self.seams.registry.claim(&r.session, None).is_some() {
                report.sessions += 1;
            }
        }
        if self.seams.retained.replicated() && !snap.retained.is_empty() {
            // The cluster's replica is the truth; what this store kept from before is not
            // proposed again (it could undo newer writes of other nodes).
            tracing::warn!(
                count = snap.retained.len(),
                "retained messages in this node's store are not served: the cluster's replicated ones are"
            );
            report.skipped += snap.retained.len();
            snap.retained.clear();
        }
        for (topic, m) in snap.retained {
            let Some((mut msg, _, _, _)) = decode_message(&m, &clock, now) else {
                report.skipped += 1;
                continue;
            };
            if msg.is_expired(now) {
                ops.push(|_| Op::DeleteRetained(topic));
                report.expired_messages += 1;
                continue;
            }
            msg.retain = true;
            self.seams.retained.set(Arc::new(msg), usize::MAX);
            report.retained += 1;
        }
        self.persist(&mut ops);
        report
    }
}
