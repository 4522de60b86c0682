//! Parked connections: an idle plain TCP connection gives up its task and its socket's
//! registration with the runtime's reactor, and waits in the [`Lot`] instead, where it costs
//! its protocol state and a pointer.
//!
//! Most of what an idle connection costs on tokio is not MQTT state: the task's cell (384
//! bytes) and the socket's registration with the reactor (256) are 640 of its 1,400-odd
//! bytes. A connection without messages either way for `limits.park_idle_after_secs` (or
//! since it was opened or last resumed: control packets such as SUBSCRIBE and PINGREQ do not
//! count) that holds nothing a task must keep (`Task::parks`) is parked: its socket is taken
//! out of the reactor and filed, under the key its task has in the stop's registry, in the
//! lot's own poller (one `epoll` instance, itself one registration with the reactor);
//! its state (the sans-IO connection, the stream, the permits) is boxed in the lot; its task
//! ends.
//!
//! It is resumed (the socket registered with the reactor again and a new task spawned, which
//! goes on as the old one would have) by whatever would have woken its task: the socket
//! readable (bytes, or the client gone), the core (deliveries, a takeover, a finished
//! commit), the deadline wheel (the keep-alive), the stop. The last three all wake the task's
//! [`TaskWaker`], which while its connection is parked holds a waker that asks the lot to
//! resume it. At shutdown the lot resumes every parked connection (their tasks see the stop
//! and close them as any other) and parks no more.
//!
//! Only plain TCP connections are parked: a TLS or WebSocket stream keeps state of its own
//! around the socket that would have to be parked with it, and QUIC has no socket per
//! connection.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::warn;

use super::{Flags, Guard, Park, Permits, Task, run};
use crate::wakeup::Stop;

/// Readiness events taken from the lot's poller at once.
const EVENTS: usize = 256;
/// A connection resumed this soon after it was parked, twice in a row (a client that sends
/// control packets, which do not keep it out of the lot, one after another), keeps its task
/// for `limits.park_idle_after_secs` as if it had messages: parking and resuming cost more
/// than handling a small packet, and a client must not be able to make the broker do that
/// more than a few times every `park_idle_after_secs`.
pub(super) const QUICK_MS: u32 = 1_000;

/// Where parked connections wait: their boxed state by key, and the poller their sockets
/// are registered with. One per [`Stop`] (made on the first park), served by one task.
#[derive(Debug)]
pub(crate) struct Lot {
    /// The lot's poller, to register and deregister sockets from any thread (the task owns
    /// the poller itself).
    registry: mio::Registry,
    slots: Mutex<Slots>,
    /// Keys of parked connections woken by the core, the wheel or the stop. At most one a
    /// parked connection (its first wake-up takes the waker that asks), so bounded by the
    /// connection limit; taken by the lot's task at each of its turns.
    requests: Mutex<Vec<u32>>,
    /// Wakes the lot's task: requests to take.
    notify: Notify,
}

#[derive(Debug, Default)]
struct Slots {
    /// Parked connections by their task's key in the stop's registry (a slab's keys: dense,
    /// so a vector, one pointer a key up to the largest key in use).
    parked: Vec<Option<Box<Parked>>>,
    /// The broker is stopping: every parked connection was resumed, and none is parked.
    closed: bool,
}

/// What a parked connection keeps: what its task held, less what an idle task holds empty.
#[derive(Debug)]
struct Parked {
    stream: std::net::TcpStream,
    g: Guard,
    permits: Permits,
    /// When it was parked, in the stop's milliseconds (wrapping).
    parked_at: u32,
    /// Its last resume was quick (`QUICK_MS`).
    quick: bool,
}

impl Lot {
    /// A lot for the connections of `stop`, and its task (spawned on the current runtime).
    pub(crate) fn start(stop: &Arc<Stop>) -> std::io::Result<Arc<Self>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        #[allow(unsafe_code)]
        // SAFETY: the poller owns its file descriptor, which stays open and the same for as
        // long as the `AsyncFd` owns the poller (it never gives it back).
        let poll = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }?;
        let lot = Arc::new(Self {
            registry,
            slots: Mutex::new(Slots::default()),
            requests: Mutex::new(Vec::new()),
            notify: Notify::new(),
        });
        tokio::spawn(serve(lot.clone(), poll, stop.clone()));
        Ok(lot)
    }

    /// Asks the lot's task to resume the connection parked under `key` (a wake-up for it).
    pub(crate) fn request(&self, key: u32) {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(key);
        self.notify.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Nothing under this lock can panic half-way (vector and registry calls only).
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the connection parked under `key` out of the lot and the poller, with its
    /// task's waker back to its own (none until the new task registers).
    fn take(&self, slots: &mut Slots, key: u32) -> Option<Box<Parked>> {
        let i = key as usize;
        let p = slots.parked.get_mut(i)?.take()?;
        // Keys are reused lowest-free first: trailing empty places are given back.
        while slots.parked.last().is_some_and(Option::is_none) {
            slots.parked.pop();
        }
        // The socket is closed if this fails (never seen: it is registered), so the new
        // task's registration finds it open and not in two pollers.
        if let Err(e) = self
            .registry
            .deregister(&mut SourceFd(&p.stream.as_raw_fd()))
        {
            warn!(error = %e, "a parked connection's socket could not be taken out of the lot");
        }
        p.g.waker.unpark();
        Some(p)
    }

    /// Resumes the connection parked under `key`, if one is (a request or an event can
    /// outlive the park it was for).
    fn resume(&self, key: u32) {
        let p = self.take(&mut self.lock(), key);
        if let Some(p) = p {
            p.g.broker.metrics.connections_resumed.inc();
            spawn(*p);
        }
    }

    /// The broker stops: every parked connection is resumed (its task closes it), and none
    /// is parked from now on.
    fn close(&self) {
        for p in self.take_all() {
            p.g.broker.metrics.connections_resumed.inc();
            spawn(p);
        }
    }

    /// Every parked connection, taken out; none is parked from now on.
    fn take_all(&self) -> Vec<Parked> {
        let mut slots = self.lock();
        slots.closed = true;
        let keys: Vec<_> = (0..slots.parked.len()).collect();
        keys.into_iter()
            .filter_map(|k| u32::try_from(k).ok())
            .filter_map(|k| self.take(&mut slots, k))
            .map(|p| *p)
            .collect()
    }
}

/// Held by the lot's task: if the task is dropped without having closed the lot (its runtime
/// shut down without the stop, or a bug), the parked connections are dropped with it, as
/// their tasks would have been, so that their sessions are released (`Guard`).
struct Abandon(Arc<Lot>);

impl Drop for Abandon {
    fn drop(&mut self) {
        let all = self.0.take_all();
        for p in &all {
            p.g.broker.metrics.connections_resumed.inc();
        }
        drop(all);
    }
}

/// Plain TCP connections, parked in their stop's lot.
pub(super) enum Tcp {}

impl Park<TcpStream, Permits> for Tcp {
    fn park(
        task: Task<TcpStream>,
        permits: Permits,
    ) -> Result<(), (Box<Task<TcpStream>>, Permits)> {
        park(task, permits)
    }
}

/// Parks the connection of `task` (which `Task::parks` found idle) in its stop's lot, and
/// gives the task back, served on, where it cannot be parked (the broker is stopping, or the
/// lot or the socket refused).
#[allow(clippy::type_complexity)]
fn park(task: Task<TcpStream>, permits: Permits) -> Result<(), (Box<Task<TcpStream>>, Permits)> {
    let stop = task.g.waker.stop().clone();
    let (Some(lot), Some(key)) = (stop.lot(), task.g.waker.key()) else {
        return Err((Box::new(task), permits));
    };
    // What else the task holds is empty while it is idle (`Task::parks`).
    let quick = task.flags.get(Flags::QUICK);
    let Task { io, g, .. } = task;
    let stream = match io.into_std() {
        Ok(s) => s,
        Err(e) => {
            // The socket is gone with the error: so is the connection.
            warn!(error = %e, "an idle connection's socket could not be parked; closed");
            lost(g);
            return Ok(());
        }
    };
    let mut slots = lot.lock();
    let fd = stream.as_raw_fd();
    let filed = !slots.closed
        && lot
            .registry
            .register(&mut SourceFd(&fd), Token(key as usize), Interest::READABLE)
            .is_ok();
    if !filed {
        drop(slots);
        return match TcpStream::from_std(stream) {
            // Tried again once it has been idle for `park_idle_after_secs` more.
            Ok(io) => {
                let since = g.waker.stop().ms32(Instant::now());
                Err((Box::new(Task::with(io, g, false, true, since)), permits))
            }
            Err(e) => {
                warn!(error = %e, "an idle connection's socket could not be served on; closed");
                lost(g);
                Ok(())
            }
        };
    }
    g.broker.metrics.connections_parked.inc();
    let i = key as usize;
    if slots.parked.len() <= i {
        slots.parked.resize_with(i + 1, || None);
    }
    let waker = g.waker.clone();
    if let Some(place) = slots.parked.get_mut(i) {
        let parked_at = stop.ms32(Instant::now());
        *place = Some(Box::new(Parked {
            stream,
            g,
            permits,
            parked_at,
            quick,
        }));
    }
    // Under the lock, so that the lot resumes it only once its wake-ups reach the lot: a
    // wake-up from now on asks the lot, and one that came while it was being parked does too.
    waker.park();
    Ok(())
}

/// A resumed connection's task state: parked again as soon as it is idle, unless messages
/// go either way meanwhile (`Task::parks`), or unless this is its second quick resume in a
/// row (`QUICK_MS`): then it keeps its task as if it had messages.
fn resumed(io: TcpStream, g: Guard, parked_at: u32, was_quick: bool) -> Task<TcpStream> {
    let now = g.waker.stop().ms32(Instant::now());
    let quick = now.wrapping_sub(parked_at) < QUICK_MS;
    if quick && was_quick {
        return Task::with(io, g, false, true, now);
    }
    let mut task = Task::with(io, g, false, true, super::FRESH);
    task.flags.set(Flags::QUICK, quick);
    task
}

/// Serves a resumed connection in a new task.
fn spawn(p: Parked) {
    let Parked {
        stream,
        g,
        permits,
        parked_at,
        quick,
    } = p;
    match TcpStream::from_std(stream) {
        Ok(io) => {
            let task = resumed(io, g, parked_at, quick);
            tokio::spawn(run::<_, _, Tcp>(task, permits));
        }
        Err(e) => {
            warn!(error = %e, "a parked connection could not be resumed; closed");
            lost(g);
        }
    }
}

/// A connection whose socket is lost outside its task: the session is released as if the
/// transport had been lost.
fn lost(mut g: Guard) {
    g.conn.handle_connection_lost(&g.broker, Instant::now());
}

/// The lot's task: resumes the connections whose sockets turn readable and those asked for,
/// until the stop, then resumes them all.
async fn serve(lot: Arc<Lot>, mut poll: AsyncFd<Poll>, stop: Arc<Stop>) {
    let _abandon = Abandon(lot.clone());
    let mut events = Events::with_capacity(EVENTS);
    let mut keys = Vec::with_capacity(EVENTS);
    loop {
        tokio::select! {
            biased;
            () = stop.wait() => break,
            ready = poll.readable_mut() => {
                let Ok(mut ready) = ready else {
                    warn!("the lot of parked connections lost its poller; none is parked");
                    break;
                };
                match ready.get_inner_mut().poll(&mut events, Some(std::time::Duration::ZERO)) {
                    // All taken: wait for the next event.
                    Ok(()) if events.iter().count() < EVENTS => ready.clear_ready(),
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!(error = %e, "the lot of parked connections lost its poller; none is parked");
                        break;
                    }
                }
                keys.extend(events.iter().filter_map(|e| u32::try_from(e.token().0).ok()));
            }
            () = lot.notify.notified() => {}
        }
        // Taken whole: after a burst the request list keeps no room for it.
        let asked = std::mem::take(
            &mut *lot
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        keys.extend(asked);
        // A burst (a message to thousands of parked subscribers) is resumed in pieces, with
        // the other tasks run between them.
        while !keys.is_empty() {
            for key in keys.drain(..keys.len().min(EVENTS)) {
                lot.resume(key);
            }
            if !keys.is_empty() {
                tokio::task::yield_now().await;
            }
        }
        // Nor does the task's own list, beyond one turn's worth.
        keys.shrink_to(EVENTS);
    }
    lot.close();
}
