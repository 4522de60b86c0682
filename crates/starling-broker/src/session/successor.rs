//! A new connection waiting for the connection that owns a session to hand it over (see
//! `Broker::connect`): the successor's waker, kept in the session's rare part, how the owner
//! learns of it and when it should wait for its own client's last packets, and waking it.

use super::Locked;
use crate::wake::Waker;

impl Locked<'_> {
    /// Asks the connection that owns the session to hand it over to `successor` once it has
    /// read what its client already sent (a DISCONNECT among it changes what the successor
    /// gets). `resumes`: the successor asked to resume the session (Clean Start 0). False if
    /// no connection owns the session: take it now.
    pub fn ask_to_hand_over(&mut self, successor: Waker, resumes: bool) -> bool {
        if self.st.ended {
            return false;
        }
        let Some(owner) = &self.st.owner else {
            return false;
        };
        owner.wake();
        let rare = self.st.rare.get_or_insert_with(Box::default);
        rare.successor_resumes = resumes;
        if let Some(earlier) = rare.successor.replace(successor) {
            earlier.wake();
        }
        true
    }

    /// Whether what the owner's client may still be sending can change what the waiting
    /// successor gets, so that the owner should wait a little for it (a DISCONNECT on its
    /// way): when the successor resumes the session (a DISCONNECT may end it, or change its
    /// expiry) or the session has a will (a DISCONNECT cancels it, where a takeover publishes
    /// it). A successor that starts clean, taking a session without a will, gets the same
    /// whatever the owner's client sent: the owner hands over once it has read what has
    /// arrived.
    pub fn hand_over_waits_for_input(&self) -> bool {
        let Some(rare) = self.st.rare.as_deref() else {
            return false;
        };
        rare.successor.is_some() && (rare.successor_resumes || self.st.will.is_some())
    }

    /// Whether a new connection waits for the owner to hand the session over.
    pub fn hand_over_asked(&self) -> bool {
        self.st
            .rare
            .as_deref()
            .is_some_and(|r| r.successor.is_some())
    }

    /// The connection that claimed `epoch` has read what its client sent and still owns the
    /// session: the waiting successor is woken to take it over.
    pub fn hand_over(&mut self, epoch: u64) {
        if self.is_owned_by(epoch)
            && let Some(successor) = self.take_successor()
        {
            successor.wake();
        }
    }

    /// Wakes a connection waiting for this session's handover: the owner let go of it (or
    /// another claim took it). Called once what that changed is journaled, so that the
    /// successor's own changes to the session are stored after it.
    pub fn wake_successor(&mut self) {
        if let Some(successor) = self.take_successor() {
            successor.wake();
        }
    }

    fn take_successor(&mut self) -> Option<Waker> {
        self.st.rare.as_deref_mut()?.successor.take()
    }
}

#[cfg(test)]
mod tests {
    use starling_proto::{ProtocolVersion, QoS, TopicName, Will};

    use crate::persist::Ops;
    use crate::session::{PendingWill, Session, Terms};
    use crate::wake::Flag;

    /// A session owned by a connection, with a will or not.
    fn owned(will: bool) -> Session {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let will = will.then(|| PendingWill {
            will: Will {
                topic: TopicName::try_from_str("gone").expect("a valid topic"),
                payload: bytes::Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            },
            delay_secs: 0,
        });
        let terms = Terms {
            expiry_secs: 300,
            will,
            ..crate::session::test_terms()
        };
        assert!(s.lock().attach(1, Flag::new(), terms, &mut Ops::new(None)));
        s
    }

    #[test]
    fn the_owner_waits_for_its_clients_last_packets_only_where_they_can_change_the_outcome() {
        // A successor that starts clean, taking a session without a will: nothing the old
        // client still sends changes what it gets.
        let s = owned(false);
        assert!(s.lock().ask_to_hand_over(Flag::new(), false));
        assert!(s.lock().hand_over_asked());
        assert!(!s.lock().hand_over_waits_for_input());
        // One that resumes it: a DISCONNECT on its way may end the session.
        let s = owned(false);
        assert!(s.lock().ask_to_hand_over(Flag::new(), true));
        assert!(s.lock().hand_over_waits_for_input());
        // A will: a DISCONNECT on its way cancels it, where a takeover publishes it.
        let s = owned(true);
        assert!(s.lock().ask_to_hand_over(Flag::new(), false));
        assert!(s.lock().hand_over_waits_for_input());
        // A later successor replaces the first, and its own start decides.
        let s = owned(false);
        assert!(s.lock().ask_to_hand_over(Flag::new(), true));
        assert!(s.lock().ask_to_hand_over(Flag::new(), false));
        assert!(!s.lock().hand_over_waits_for_input());
        // Nobody asked: nothing to wait for.
        assert!(!owned(true).lock().hand_over_waits_for_input());
    }
}
