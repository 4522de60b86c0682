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

use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_proto::ProtocolVersion;

use super::active::Active;
use super::connecting::{self, Accepted};
use super::{Cx, State, deadline};
use crate::wake::Relay;

/// How long a new connection waits for the owner of its session to hand it over.
pub(super) const HANDOVER_WAIT: Duration = Duration::from_millis(500);

/// The state of an authenticated CONNECT whose session another connection still owns.
#[derive(Debug)]
pub(super) struct Waiting {
    accepted: Accepted,
    /// Fires when the owner hands the session over or lets go of it.
    relay: Arc<Relay>,
    /// When to claim the session without the owner (`None`: the clock cannot say).
    until: Option<Instant>,
}

impl Waiting {
    pub(super) fn new(cx: &Cx<'_>, accepted: Accepted, relay: Arc<Relay>) -> Self {
        Self {
            accepted,
            relay,
            until: deadline(cx.now, HANDOVER_WAIT),
        }
    }

    pub(super) fn version(&self) -> ProtocolVersion {
        self.accepted.connect.protocol
    }

    /// When to stop waiting.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.until
    }

    /// Whether to claim the session now: handed over, or waited long enough.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        self.relay.fired() || self.until.is_none_or(|t| now >= t)
    }

    /// Claims the session, taking it over from whoever owns it now.
    pub(super) fn claim(self, cx: &mut Cx<'_>) -> State {
        match connecting::claim(cx, self.accepted, None) {
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
        self.session.lock().hand_over(self.epoch);
    }
}
