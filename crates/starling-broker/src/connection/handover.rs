//! Handing a session over from the connection that owns it to a new connection for the same
//! client id.
//!
//! A client that sends DISCONNECT and reconnects at once can have its new CONNECT handled
//! before its old connection has read the DISCONNECT. Taking the session over then would
//! resume a session the client had just ended (v5: Session Expiry Interval 0 in DISCONNECT),
//! or publish the will its DISCONNECT cancelled. So the new connection waits ([`Waiting`])
//! while the owner reads what its client has already sent, without waiting for more, and then
//! hands the session over ([`Active::hand_over`]); the new connection then claims the session
//! as it would have at once. The wait is bounded by [`HANDOVER_WAIT`]: an owner whose task
//! cannot run (its client stopped reading and its output is full) is taken over without it.
//!
//! In a cluster the connection first waits for the cluster to grant this node the client id
//! (`crate::broker::ownership`): the claim commits through the cluster's log. Granted, it goes
//! on as above; refused (no majority in time), or not decided within [`GRANT_WAIT`], the
//! CONNECT is refused with Server unavailable (v5 0x88, 3.x return code 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::ProtocolVersion;

use super::active::Active;
use super::connecting::{self, Accepted};
use super::{Cx, State, deadline};
use crate::broker::Grant;
use crate::wake::Relay;

/// How long a new connection waits for the owner of its session to hand it over.
pub(super) const HANDOVER_WAIT: Duration = Duration::from_millis(500);

/// How long a new connection waits for the cluster to grant its client id (the cluster
/// refuses sooner, after its `propose_timeout_ms`; this bounds a cluster that never answers).
pub(super) const GRANT_WAIT: Duration = Duration::from_secs(60);

/// The state of an authenticated CONNECT whose session another connection still owns.
#[derive(Debug)]
pub(super) struct Waiting {
    accepted: Accepted,
    /// Fires when the owner hands the session over or lets go of it.
    relay: Arc<Relay>,
    /// When to claim the session without the owner, or to give up on the grant (`None`:
    /// the clock cannot say).
    until: Option<Instant>,
    /// The cluster's grant this connection waits for first (`None`: granted, or no cluster).
    grant: Option<Arc<Grant>>,
    /// The cluster epoch of the grant (0: no cluster).
    epoch: u64,
}

impl Waiting {
    pub(super) fn new(cx: &Cx<'_>, accepted: Accepted, relay: Arc<Relay>, epoch: u64) -> Self {
        Self {
            accepted,
            relay,
            until: deadline(cx.now, HANDOVER_WAIT),
            grant: None,
            epoch,
        }
    }

    /// Waits for the cluster to grant the client id.
    pub(super) fn for_grant(cx: &Cx<'_>, accepted: Accepted, grant: Arc<Grant>) -> Self {
        Self {
            accepted,
            relay: Relay::new(cx.link.waker.clone()),
            until: deadline(cx.now, GRANT_WAIT),
            grant: Some(grant),
            epoch: 0,
        }
    }

    pub(super) fn version(&self) -> ProtocolVersion {
        self.accepted.connect.protocol
    }

    /// When to stop waiting.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.until
    }

    /// Whether to go on now: granted or refused by the cluster, handed over, or waited long
    /// enough.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        let event = match &self.grant {
            Some(g) => g.is_decided(),
            None => self.relay.fired(),
        };
        event || self.until.is_none_or(|t| now >= t)
    }

    /// Goes on: with the client id granted, claims the session (which may wait for its
    /// handover in turn); refused, or not granted in time, refuses the CONNECT. After a
    /// handover (or the wait for one), claims the session, taking it over from whoever owns
    /// it now.
    pub(super) fn claim(self, cx: &mut Cx<'_>) -> State {
        if let Some(grant) = self.grant {
            let Some(epoch) = grant.epoch() else {
                return connecting::unavailable(cx, self.accepted.connect.protocol);
            };
            let relay = Relay::new(cx.link.waker.clone());
            return match connecting::claim(cx, self.accepted, Some(relay.clone()), epoch) {
                Ok(state) => state,
                Err(accepted) => State::Waiting(Box::new(Waiting::new(cx, accepted, relay, epoch))),
            };
        }
        match connecting::claim(cx, self.accepted, None, self.epoch) {
            Ok(state) => state,
            // Only a claim with a handover waker waits; refused as busy if one ever did.
            Err(accepted) => connecting::busy(cx, accepted.connect.protocol),
        }
    }
}

impl Active {
    /// The I/O layer has read what the client had sent (and this connection still owns the
    /// session): the connection waiting for it is woken to take it over.
    pub(super) fn hand_over(&mut self) {
        self.hand_over_asked = false;
        self.hand_over_waits = false;
        self.session.lock().hand_over(self.epoch);
    }
}
