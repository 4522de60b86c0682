//! How the core asks the I/O layer to run a connection again: a [`Wake`] handle per
//! connection, called when its session has new deliveries, when another connection asks for
//! the session or takes it over, or when a commit it waits for has finished.
//!
//! The core never blocks and never owns a task: the I/O layer implements [`Wake`] with
//! whatever it runs connections on (a tokio `Notify` in the server, a flag in the in-memory
//! test harness) and, once woken, calls the connection's `poll_transmit`.

use std::fmt;
use std::sync::Arc;

/// Something that can be told that its connection has work. Implementations must be cheap,
/// must not block, and must keep a wake-up that arrives while nobody waits (one stored permit
/// is enough: wake-ups coalesce, but none is lost).
pub trait Wake: Send + Sync + fmt::Debug {
    /// The connection has work: run it again soon.
    fn wake(&self);

    /// The connection has work from a message routed to many subscribers at once
    /// ([`crate::session::FAN_OUT`] or more): the I/O layer may let other work run first, so
    /// that the same publisher's next messages, routed meanwhile, go out in the same write.
    /// By default the same as [`Wake::wake`].
    fn wake_in_fan_out(&self) {
        self.wake();
    }
}

/// A shared wake handle, as the session and the journal keep it.
pub type Waker = Arc<dyn Wake>;

/// A [`Wake`] that only remembers that it was woken, and whether by a fan-out, for callers
/// that poll (the in-memory harness, tests, a committer that checks between waits).
#[derive(Debug, Default)]
pub struct Flag {
    woken: std::sync::atomic::AtomicBool,
    fanned: std::sync::atomic::AtomicBool,
}

impl Flag {
    /// A new flag, not woken.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether it was woken since the last call, clearing it.
    pub fn take(&self) -> bool {
        self.woken.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Whether it was woken by [`Wake::wake_in_fan_out`] since the last call, clearing that.
    pub fn take_fanned(&self) -> bool {
        self.fanned.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

impl Wake for Flag {
    fn wake_in_fan_out(&self) {
        self.fanned
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A [`Wake`] that remembers it fired and passes the wake-up on to the waker it wraps: for a
/// connection that waits for one particular event (a session handed over to it) among the
/// wake-ups its task gets for other reasons.
#[derive(Debug)]
pub struct Relay {
    fired: std::sync::atomic::AtomicBool,
    to: Waker,
}

impl Relay {
    /// A relay to `to`, not fired.
    pub fn new(to: Waker) -> Arc<Self> {
        Arc::new(Self {
            fired: std::sync::atomic::AtomicBool::new(false),
            to,
        })
    }

    /// Whether it fired (it stays fired).
    pub fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Wake for Relay {
    fn wake(&self) {
        self.fired.store(true, std::sync::atomic::Ordering::Release);
        self.to.wake();
    }
}
