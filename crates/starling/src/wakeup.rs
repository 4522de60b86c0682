//! How connection tasks are woken, with as little as possible held by each idle one: the
//! task's [`TaskWaker`] (the core's wake-ups, the stop, a near deadline), the broker-wide
//! [`Stop`] with the registry of live connection tasks it wakes, and the deadline wheel.
//!
//! An idle connection waits for three things besides its socket: the core (new deliveries, a
//! takeover, a finished commit), the stop, and its next deadline (keep-alive, the CONNECT
//! timeout). A tokio `Notified` for each signal and a `Sleep` for the deadline would be some
//! 240 bytes kept inside every idle connection's task. Instead the core and the stop both set
//! the task's one flag and wake it through one stored waker, and a deadline more than
//! [`NEAR`] away is left to the wheel: one entry per task, in a table shared by all of them,
//! which wakes the task shortly before the deadline. Only then does the task arm a precise
//! timer of its own. What a deadline means is not decided here: the connection task asks the
//! sans-IO connection (`poll_timeout`) on every turn.
//!
//! A publisher's burst also holds back the wake-ups it makes ([`hold`]): while a connection
//! gives way in the middle of a burst (`Connection::gives_way`), the subscribers it delivered
//! to are not scheduled until the burst is routed (the stop keeps their wakers meanwhile).
//! The other connections get their turns between the burst's pieces, and the burst's
//! subscribers still take its messages in one write each, not one per piece.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use slab::Slab;
use starling_broker::Wake;
use tokio::sync::Notify;

use crate::connection::Lot;

/// A deadline at most this far away gets the task's own timer; a later one goes to the wheel.
pub const NEAR: Duration = Duration::from_secs(1);
/// The wheel's resolution: it wakes a task between `NEAR + TICK` and `NEAR` before its
/// deadline, so that the tasks whose deadlines fall within one tick are woken together.
const TICK_MS: u64 = 250;
/// [`TICK_MS`] as a duration.
pub const TICK: Duration = Duration::from_millis(TICK_MS);
const NEAR_MS: u64 = 1_000;
/// No deadline, or no wheel entry.
const NONE: u64 = u64::MAX;

/// A connection task's wake-up. The core calls [`Wake::wake`] (new deliveries, a takeover, a
/// finished commit), and so do the stop and the wheel; the task polls [`TaskWaker::poll_woken`].
/// The flag keeps a wake-up that comes while the task is busy, so none is lost.
#[derive(Debug)]
pub struct TaskWaker {
    /// The registry this task is in (kept here, in the waker's allocation, not in every idle
    /// connection's task).
    stop: Arc<Stop>,
    /// [`WOKEN`], and [`FANNED`] with it when a wake-up came from a wide fan-out.
    woken: AtomicU8,
    task: AtomicWaker,
    /// The task's far deadline, in milliseconds since the wheel's epoch ([`NONE`]: none).
    /// Written by the task without the lock, read by the wheel: a stale read only wakes the
    /// task early, and a deadline that moves earlier is re-filed under the lock.
    due: AtomicU64,
    /// The tick of this task's entry in the wheel ([`NONE`]: none). Changed only under the
    /// registry's lock; read without it by the task, which re-checks under the lock.
    filed: AtomicU64,
    /// The task's key in the stop's registry ([`UNREGISTERED`]: none).
    key: AtomicU32,
}

/// The key of a task not in the registry.
const UNREGISTERED: u32 = u32::MAX;
/// `TaskWaker::woken`: a wake-up the task has not taken yet.
const WOKEN: u8 = 1;
/// `TaskWaker::woken`: one of the wake-ups was [`Wake::wake_in_fan_out`].
const FANNED: u8 = 2;

impl TaskWaker {
    /// A new waker for a connection task, registered with `stop` (which wakes it) until
    /// [`TaskWaker::unregister`]; to hand to `Connection::new` (as a `Waker`) and to the
    /// task. The task must check [`TaskWaker::is_stopping`] after this: a stop before it did
    /// not wake the task.
    pub fn new(stop: &Arc<Stop>) -> Arc<Self> {
        let w = Arc::new(Self {
            stop: stop.clone(),
            woken: AtomicU8::new(0),
            task: AtomicWaker::new(),
            due: AtomicU64::new(NONE),
            filed: AtomicU64::new(NONE),
            key: AtomicU32::new(UNREGISTERED),
        });
        stop.register(&w);
        w
    }

    /// The stop this task is registered with.
    pub fn stop(&self) -> &Arc<Stop> {
        &self.stop
    }

    /// Whether the broker is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_stopping()
    }

    /// Takes the task out of the stop's registry and its deadline out of the wheel: the
    /// task has ended.
    pub fn unregister(&self) {
        self.stop.unregister(self);
        // A parked connection's waker refers to this waker: dropped with it.
        drop(self.task.take());
    }

    /// Keeps the wake-ups this task held back while it gives way in the middle of a burst,
    /// until [`TaskWaker::release`] (or the task ends).
    pub fn keep(&self, held: Held) {
        self.stop.keep(self, held);
    }

    /// Makes the wake-ups this task kept: its burst is routed.
    pub fn release(&self) {
        let key = self.key.load(Ordering::Acquire);
        if key != UNREGISTERED {
            self.stop.release(key);
        }
    }

    /// Files the task's deadline: see [`Stop::file`].
    pub fn file(&self, deadline: Option<Instant>, now: Instant) -> bool {
        self.stop.file(self, deadline, now)
    }

    /// Ready once woken since the last ready poll (clearing the flag), with whether a
    /// wake-up among those taken came from a wide fan-out ([`Wake::wake_in_fan_out`]). The
    /// task is registered only when it was not woken: while it works through a wake-up, later
    /// ones only set the flag (its next poll takes them) instead of scheduling it again.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let woken = self.woken.swap(0, Ordering::AcqRel);
        if woken & WOKEN != 0 {
            return Poll::Ready(woken & FANNED != 0);
        }
        self.task.register(cx.waker());
        // A wake-up between the check and the registration found no waker to call.
        let woken = self.woken.swap(0, Ordering::AcqRel);
        if woken & WOKEN != 0 {
            Poll::Ready(woken & FANNED != 0)
        } else {
            Poll::Pending
        }
    }

    /// Whether a wake-up came that the task has not taken yet.
    pub fn is_woken(&self) -> bool {
        self.woken.load(Ordering::Acquire) & WOKEN != 0
    }

    /// The task's key in the stop's registry (`None`: not registered).
    pub(crate) fn key(&self) -> Option<u32> {
        Some(self.key.load(Ordering::Acquire)).filter(|&k| k != UNREGISTERED)
    }

    /// The task's connection is parked in the stop's lot: its wake-ups ask the lot to resume
    /// it, and one that came while it was being parked does so now.
    pub(crate) fn park(self: &Arc<Self>) {
        self.task.register(&Waker::from(self.clone()));
        // A wake-up that came before the registration found the ended task's waker.
        if self.is_woken() {
            self.task.wake();
        }
    }

    /// The task's connection is resumed: the waker that asks the lot is dropped (the new
    /// task registers its own; a wake-up meanwhile only sets the flag, which it reads).
    pub(crate) fn unpark(&self) {
        drop(self.task.take());
    }

    /// Registers the task without taking a wake-up (it stays for a later
    /// [`TaskWaker::poll_woken`]): a task that cannot take new work now can still be stopped.
    pub fn register(&self, cx: &mut Context<'_>) {
        self.task.register(cx.waker());
    }
}

/// The waker a parked connection's [`TaskWaker`] holds: it asks the lot to resume the
/// connection. (A reference to itself, dropped when the connection is resumed or its task
/// unregistered.)
impl std::task::Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        std::task::Wake::wake_by_ref(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let (Some(lot), Some(key)) = (self.stop.lot.get().and_then(Option::as_ref), self.key()) {
            lot.request(key);
        }
    }
}

impl Wake for TaskWaker {
    fn wake(&self) {
        self.woken.fetch_or(WOKEN, Ordering::Release);
        self.schedule();
    }

    fn wake_in_fan_out(&self) {
        self.woken.fetch_or(WOKEN | FANNED, Ordering::Release);
        self.schedule();
    }
}

impl TaskWaker {
    /// Schedules the task after a wake-up: at once, or, inside [`hold`], when the turn that
    /// made it ends.
    fn schedule(&self) {
        // Inside `hold`: the task's waker is taken and kept (once: a later wake-up finds it
        // taken), the flag already tells the task what it is for.
        let held = HELD.with(|h| match h.try_borrow_mut().as_deref_mut() {
            Ok(Some(held)) => {
                held.extend(self.task.take());
                true
            }
            _ => false,
        });
        if !held {
            self.task.wake();
        }
    }
}

thread_local! {
    /// The wake-ups held back by the [`hold`] running on this thread (`None`: none runs).
    static HELD: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Wake-ups held back from the scheduler; dropping them wakes their tasks, so none is lost.
#[derive(Debug, Default)]
#[must_use = "dropping them wakes their tasks now"]
pub struct Held(Vec<Waker>);

impl Held {
    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
    }
}

/// Runs `f` (a connection's turn) with the wake-ups of [`TaskWaker`]s it makes on this thread
/// held back: the tasks' flags are set, but the tasks are scheduled only when the returned
/// [`Held`] is dropped. Inside another `hold`, the outer one keeps them.
pub fn hold<R>(f: impl FnOnce() -> R) -> (R, Held) {
    let outer = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let outer = h.is_some();
        if !outer {
            *h = Some(Vec::new());
        }
        outer
    });
    let taken = Taken { outer };
    let r = f();
    let held = taken.take();
    (r, held)
}

/// Takes the wake-ups a [`hold`] kept off the thread, at its end or when it unwinds (dropped
/// then, they are made at once).
struct Taken {
    /// Inside another `hold`, which takes them.
    outer: bool,
}

impl Taken {
    fn take(&self) -> Held {
        if self.outer {
            return Held::default();
        }
        Held(HELD.with(|h| h.borrow_mut().take()).unwrap_or_default())
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// The broker-wide stop signal, set once at shutdown, and the connection tasks it must
/// reach. Other tasks wait on [`Stop::wait`]; a connection task registers its
/// [`TaskWaker`] ([`Stop::register`]), is woken by [`Stop::stop`], and checks
/// [`Stop::is_stopping`] on every turn. The registry also keeps the deadline wheel.
#[derive(Debug)]
pub struct Stop {
    stopping: AtomicBool,
    notify: Notify,
    /// Time zero of the wheel's millisecond ticks.
    epoch: Instant,
    tasks: Mutex<Tasks>,
    /// Wakes the wheel's task when an entry earlier than every other is filed.
    ticker: Notify,
    /// The wheel's task was spawned (on the first filing, on the runtime that made it).
    ticking: AtomicBool,
    /// Wake-ups held back by tasks that gave way in the middle of a burst, by task key:
    /// as many entries as tasks giving way at once (few), each at most one waker per task.
    held: Mutex<Vec<(u32, Held)>>,
    /// Where idle plain TCP connections are parked (made on the first park; `None` if the
    /// system refused it a poller, and then none is parked).
    lot: OnceLock<Option<Arc<Lot>>>,
}

/// The live connection tasks and their wheel entries: one entry at most per task, so the
/// wheel is as large as the number of tasks with a far deadline, never larger.
#[derive(Debug, Default)]
struct Tasks {
    live: Slab<Weak<TaskWaker>>,
    /// One [`entry`] per task with a far deadline: its tick and its key in `live`.
    wheel: BTreeSet<u64>,
}

impl Default for Stop {
    fn default() -> Self {
        Self {
            stopping: AtomicBool::new(false),
            notify: Notify::new(),
            epoch: Instant::now(),
            tasks: Mutex::new(Tasks::default()),
            ticker: Notify::new(),
            ticking: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            lot: OnceLock::new(),
        }
    }
}

impl Stop {
    /// Tells everything waiting (and everything that starts waiting later) to stop, and
    /// wakes every registered connection task.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.ticker.notify_one();
        let wakers: Vec<_> = self
            .lock()
            .live
            .iter()
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once [`Stop::stop`] is called (at once if it was).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a `stop` after this wakes `notified`.
        notified.as_mut().enable();
        if !self.is_stopping() {
            notified.await;
        }
    }

    /// Registers a connection task, to be woken by [`Stop::stop`], until
    /// [`Stop::unregister`].
    fn register(&self, waker: &Arc<TaskWaker>) {
        let mut tasks = self.lock();
        let entry = tasks.live.vacant_entry();
        // More than 4 billion tasks at once: this one is not registered (not reached: every
        // task holds a connection permit).
        let Ok(key) = u32::try_from(entry.key()) else {
            return;
        };
        entry.insert(Arc::downgrade(waker));
        waker.key.store(key, Ordering::Release);
    }

    /// Keeps the wake-ups a task held back until its burst is routed ([`Stop::release`]).
    /// An unregistered task's are made at once.
    fn keep(&self, waker: &TaskWaker, mut more: Held) {
        let key = waker.key.load(Ordering::Acquire);
        if key == UNREGISTERED || more.is_empty() {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.iter_mut().find(|(k, _)| *k == key) {
            Some((_, h)) => h.0.append(&mut more.0),
            None => held.push((key, more)),
        }
    }

    /// Makes the wake-ups a task kept (outside the lock).
    fn release(&self, key: u32) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let i = held.iter().position(|(k, _)| *k == key);
        let taken = i.map(|i| held.swap_remove(i));
        drop(held);
        drop(taken);
    }

    /// Forgets a task, its wheel entry and the wake-ups it kept (made now).
    fn unregister(&self, waker: &TaskWaker) {
        let key = waker.key.swap(UNREGISTERED, Ordering::AcqRel);
        if key == UNREGISTERED {
            return;
        }
        self.release(key);
        let mut tasks = self.lock();
        let filed = waker.filed.swap(NONE, Ordering::AcqRel);
        if filed != NONE {
            tasks.wheel.remove(&entry(filed, key));
        }
        tasks.live.try_remove(key as usize);
    }

    /// The task has no deadline, or one of at most [`NEAR`] (it keeps a
    /// timer of its own for that): `false`. Otherwise its deadline is filed in the wheel,
    /// which wakes it at most `NEAR` plus a tick before it, and `true`. Without the lock
    /// unless the deadline moved earlier than its entry (or it had none).
    fn file(self: &Arc<Self>, waker: &TaskWaker, deadline: Option<Instant>, now: Instant) -> bool {
        let key = waker.key.load(Ordering::Acquire);
        let Some(deadline) = deadline.filter(|_| key != UNREGISTERED) else {
            waker.due.store(NONE, Ordering::Release);
            return false;
        };
        let due = self.ms(deadline);
        let tick = tick_of(due);
        if tick <= self.ms(now) {
            return false;
        }
        waker.due.store(due, Ordering::Release);
        if waker.filed.load(Ordering::Acquire) <= tick {
            // An entry at or before this tick: the wheel re-files it when it comes.
            return true;
        }
        let earliest = {
            let mut tasks = self.lock();
            let filed = waker.filed.load(Ordering::Acquire);
            if filed <= tick {
                return true;
            }
            if filed != NONE {
                tasks.wheel.remove(&entry(filed, key));
            }
            let earliest = tasks.wheel.first().is_none_or(|&e| tick < parts(e).0);
            tasks.wheel.insert(entry(tick, key));
            waker.filed.store(tick, Ordering::Release);
            earliest
        };
        if !self.ticking.swap(true, Ordering::AcqRel) {
            tokio::spawn(tick_loop(self.clone()));
        } else if earliest {
            self.ticker.notify_one();
        }
        true
    }

    /// Wakes the tasks whose deadlines are near, files again those whose deadlines moved
    /// later, and says when the next entry is due.
    fn turn(&self, now: Instant) -> Option<Instant> {
        let now_ms = self.ms(now);
        let mut near = Vec::new();
        let next = {
            let mut tasks = self.lock();
            while let Some(&e) = tasks.wheel.first() {
                let (tick, key) = parts(e);
                if tick > now_ms {
                    break;
                }
                tasks.wheel.pop_first();
                let Some(w) = tasks.live.get(key as usize).and_then(Weak::upgrade) else {
                    continue;
                };
                let due = w.due.load(Ordering::Acquire);
                let again = if due == NONE { NONE } else { tick_of(due) };
                if again <= now_ms || again == NONE {
                    w.filed.store(NONE, Ordering::Release);
                    if again != NONE {
                        near.push(w);
                    }
                } else {
                    tasks.wheel.insert(entry(again, key));
                    w.filed.store(again, Ordering::Release);
                }
            }
            tasks
                .wheel
                .first()
                .map(|&e| self.epoch + Duration::from_millis(parts(e).0))
        };
        for w in near {
            w.wake();
        }
        next
    }

    /// The lot where this stop's idle plain TCP connections are parked, made (with its
    /// task, on the current runtime) on the first call.
    pub(crate) fn lot(self: &Arc<Self>) -> Option<&Arc<Lot>> {
        self.lot
            .get_or_init(|| match Lot::start(self) {
                Ok(lot) => Some(lot),
                Err(e) => {
                    tracing::warn!(error = %e, "no poller for idle connections: none is parked");
                    None
                }
            })
            .as_ref()
    }

    /// Milliseconds from the epoch to `t`, wrapping every 49 days: for spans shorter than
    /// that (`wrapping_sub`).
    pub(crate) fn ms32(&self, t: Instant) -> u32 {
        // Truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let ms = self.ms(t) as u32;
        ms
    }

    /// Milliseconds from the epoch to `t` (0 before it).
    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(NONE - 1)
    }

    fn lock(&self) -> MutexGuard<'_, Tasks> {
        // Nothing under this lock can panic half-way (slab and B-tree operations only).
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A wheel entry: the tick `tick` (ms, a multiple of [`TICK_MS`]) counted in ticks, above
/// the task's key, so that entries order by tick and the wheel holds 8 bytes a task (a
/// `(u64, usize)` pair took 16, twice as much of every B-tree node). Ticks past 2^32 (34
/// years) are filed at the last one: such an entry is never reached.
fn entry(tick: u64, key: u32) -> u64 {
    ((tick / TICK_MS).min(u64::from(u32::MAX)) << 32) | u64::from(key)
}

/// The tick (ms) and the task's key of a wheel [`entry`].
fn parts(entry: u64) -> (u64, u32) {
    let key = u32::try_from(entry & u64::from(u32::MAX)).unwrap_or(UNREGISTERED);
    ((entry >> 32) * TICK_MS, key)
}

/// The wheel's tick for a deadline `due` (ms): `NEAR` before it, rounded down to a tick.
fn tick_of(due: u64) -> u64 {
    due.saturating_sub(NEAR_MS) / TICK_MS * TICK_MS
}

/// The wheel's task: sleeps until the first entry's tick (or a new earlier one), wakes the
/// tasks it is due for; ends at the stop.
async fn tick_loop(stop: Arc<Stop>) {
    let far = Duration::from_secs(3600);
    loop {
        if stop.is_stopping() {
            return;
        }
        let now = Instant::now();
        let next = stop.turn(now).unwrap_or(now + far);
        tokio::select! {
            () = stop.ticker.notified() => {}
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_is_kept_until_taken_and_taken_once() {
        let w = TaskWaker::new(&Arc::new(Stop::default()));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(w.poll_woken(&mut cx).is_pending());
        w.wake();
        w.wake();
        assert_eq!(w.poll_woken(&mut cx), Poll::Ready(false));
        assert!(w.poll_woken(&mut cx).is_pending());
    }

    /// A wake-up from a wide fan-out is told apart when taken, also among plain ones (once),
    /// and schedules the task as a plain one does.
    #[test]
    fn a_fan_out_wake_up_is_told_apart_once() {
        let (w, count) = registered(&Arc::new(Stop::default()));
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        w.wake_in_fan_out();
        assert_eq!(count.get(), 1);
        assert!(w.is_woken());
        assert_eq!(w.poll_woken(cx), Poll::Ready(true));
        assert!(!w.is_woken());
        assert!(w.poll_woken(cx).is_pending());
        w.wake();
        w.wake_in_fan_out();
        w.wake();
        assert_eq!(w.poll_woken(cx), Poll::Ready(true));
        w.wake();
        assert_eq!(w.poll_woken(cx), Poll::Ready(false));
        assert!(w.poll_woken(cx).is_pending());
    }

    /// A task waker that counts the times it was woken.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A registered `TaskWaker` and the count of its task's wake-ups.
    fn registered(stop: &Arc<Stop>) -> (Arc<TaskWaker>, Arc<Count>) {
        let w = TaskWaker::new(stop);
        let count = Arc::new(Count::default());
        let waker = std::task::Waker::from(count.clone());
        assert!(w.poll_woken(&mut Context::from_waker(&waker)).is_pending());
        (w, count)
    }

    #[test]
    fn wake_ups_held_back_by_a_turn_are_made_when_it_lets_them_go() {
        let stop = Arc::new(Stop::default());
        let (a, count_a) = registered(&stop);
        let (b, count_b) = registered(&stop);
        let ((), held) = hold(|| {
            a.wake();
            a.wake();
            b.wake();
            // Nested: the outer turn keeps them.
            let ((), inner) = hold(|| b.wake());
            assert!(inner.is_empty());
        });
        // Flagged, not scheduled; one waker each however often they were woken.
        assert_eq!((count_a.get(), count_b.get()), (0, 0));
        assert_eq!(held.0.len(), 2);
        drop(held);
        assert_eq!((count_a.get(), count_b.get()), (1, 1));
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        assert!(a.poll_woken(cx).is_ready());
        assert!(b.poll_woken(cx).is_ready());
        // Outside a turn a wake-up is made at once.
        let (c, count_c) = registered(&stop);
        c.wake();
        assert_eq!(count_c.get(), 1);
    }

    #[test]
    fn wake_ups_kept_across_a_give_way_are_made_on_release_or_when_the_task_ends() {
        let stop = Arc::new(Stop::default());
        let (publisher, _) = registered(&stop);
        let (sub, count) = registered(&stop);
        let ((), held) = hold(|| sub.wake());
        publisher.keep(held);
        assert_eq!(count.get(), 0);
        // A later piece of the same burst adds to what is kept.
        let (other, other_count) = registered(&stop);
        let ((), held) = hold(|| other.wake());
        publisher.keep(held);
        assert_eq!(stop.held.lock().unwrap().len(), 1);
        publisher.release();
        assert_eq!((count.get(), other_count.get()), (1, 1));
        assert!(stop.held.lock().unwrap().is_empty());
        // A task that ends while it keeps some lets them go.
        let waker = std::task::Waker::from(count.clone());
        assert!(sub.poll_woken(&mut Context::from_waker(&waker)).is_ready());
        assert!(
            sub.poll_woken(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let ((), held) = hold(|| sub.wake());
        publisher.keep(held);
        publisher.unregister();
        assert_eq!(count.get(), 2);
        assert!(stop.held.lock().unwrap().is_empty());
    }

    #[test]
    fn a_turn_that_unwinds_still_makes_its_wake_ups() {
        let stop = Arc::new(Stop::default());
        let (a, count) = registered(&stop);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hold(|| {
                a.wake();
                panic!("a bug in a turn");
            })
        }));
        assert!(r.is_err());
        assert_eq!(count.get(), 1);
        // And the thread holds nothing back afterwards.
        let (b, count_b) = registered(&stop);
        b.wake();
        assert_eq!(count_b.get(), 1);
    }

    #[test]
    fn a_near_deadline_is_not_filed() {
        let stop = Arc::new(Stop::default());
        let w = TaskWaker::new(&stop);
        let now = Instant::now();
        assert!(!w.file(None, now));
        assert!(!w.file(Some(now + Duration::from_millis(900)), now));
        assert_eq!(w.filed.load(Ordering::Acquire), NONE);
        assert!(stop.lock().wheel.is_empty());
    }

    #[test]
    fn wheel_entries_order_by_tick_then_key_and_give_both_back() {
        let tick = 7 * TICK_MS;
        assert_eq!(parts(entry(tick, 42)), (tick, 42));
        assert_eq!(parts(entry(0, u32::MAX - 1)), (0, u32::MAX - 1));
        assert!(entry(tick, u32::MAX - 1) < entry(tick + TICK_MS, 0));
        assert!(entry(tick, 1) < entry(tick, 2));
        // A deadline past the wheel's range is filed at its last tick, never reached.
        let far = tick_of(u64::MAX - 1);
        assert_eq!(parts(entry(far, 3)), (u64::from(u32::MAX) * TICK_MS, 3));
        assert!(entry(far, 3) > entry(tick, 3));
    }

    #[tokio::test]
    async fn the_wheel_wakes_a_task_shortly_before_its_deadline_and_no_sooner() {
        let stop = Arc::new(Stop::default());
        let w = TaskWaker::new(&stop);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        assert!(w.file(Some(deadline), start));
        // Moving the deadline later takes no lock and leaves the entry where it is.
        let later = start + Duration::from_secs(60);
        assert!(w.file(Some(later), start));
        assert_eq!(stop.lock().wheel.len(), 1);
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        // At the first entry's tick the wheel files it again for the later deadline.
        assert_eq!(
            stop.turn(start + Duration::from_secs(29)),
            Some(stop.epoch + Duration::from_millis(tick_of(stop.ms(later))))
        );
        assert!(w.poll_woken(cx).is_pending());
        // Just before its tick: nothing; at it: woken, entry gone.
        let tick = stop.epoch + Duration::from_millis(tick_of(stop.ms(later)));
        assert!(later - tick >= NEAR && later - tick <= NEAR + Duration::from_millis(TICK_MS));
        assert!(stop.turn(tick - Duration::from_millis(1)).is_some());
        assert!(w.poll_woken(cx).is_pending());
        assert_eq!(stop.turn(tick), None);
        assert!(w.poll_woken(cx).is_ready());
        assert_eq!(w.filed.load(Ordering::Acquire), NONE);
        // Moving a deadline earlier re-files it under the lock: still one entry.
        assert!(w.file(Some(start + Duration::from_secs(90)), start));
        assert!(w.file(Some(start + Duration::from_secs(20)), start));
        assert_eq!(stop.lock().wheel.len(), 1);
        w.unregister();
        assert!(stop.lock().wheel.is_empty());
        assert!(stop.lock().live.is_empty());
    }

    #[tokio::test]
    async fn stop_wakes_every_registered_task() {
        let stop = Arc::new(Stop::default());
        let a = TaskWaker::new(&stop);
        let b = TaskWaker::new(&stop);
        a.unregister();
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        stop.stop();
        assert!(stop.is_stopping());
        assert!(a.poll_woken(cx).is_pending(), "unregistered: not woken");
        assert!(b.poll_woken(cx).is_ready());
        // Waiting after the stop returns at once.
        tokio::time::timeout(Duration::from_secs(5), stop.wait())
            .await
            .unwrap();
    }
}
