//! Password hashing off the threads that serve clients. Checking a password costs a deliberate
//! hash (argon2id with 46 MiB by default, about 40 ms of a core here): run on a connection's
//! I/O task it would stop every other client that thread serves for as long, and a few clients
//! sending wrong passwords could stall the broker. [`HashPool`] owns a few threads that do
//! nothing else, fed through a bounded queue; a check answers [`Answer::Later`] with a future
//! that the pool's reply completes. When the queue is full the check is not queued: the caller
//! answers "server busy" (v5 CONNACK 0x89, 3.1.1 return code 3), so a flood of CONNECTs costs
//! a bounded amount of memory and hashing time, and everything else keeps its threads.
//!
//! [`Answer::Later`]: crate::Answer::Later

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::Pending;

/// A job for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// Threads that check passwords, and their queue.
#[derive(Debug)]
pub struct HashPool {
    /// Bounded: when full, [`HashPool::run`] refuses the job instead of waiting.
    jobs: Option<SyncSender<Job>>,
}

/// Checks waiting for a thread at most, in the shared pool. Each holds a copy of a password
/// (at most 64 KiB, a CONNECT field), so the queue stays within a few MiB at worst.
pub const SHARED_QUEUE: usize = 256;

/// Threads of the shared pool at most: each argon2id check holds its memory cost (46 MiB by
/// default) while it runs, so more threads would cost memory, not just cores.
pub const SHARED_THREADS_MAX: usize = 4;

impl HashPool {
    /// A pool of `threads` threads with room for `queue` waiting jobs. With no thread (the
    /// system refused to start one), every job runs on the caller's thread instead.
    pub fn new(threads: usize, queue: usize) -> Self {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for _ in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name("starling-hash".into())
                .spawn(move || work(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a password hashing thread"),
            }
        }
        Self {
            jobs: (started > 0).then_some(tx),
        }
    }

    /// The pool every password check of the process shares: one thread per core, at most
    /// [`SHARED_THREADS_MAX`], and [`SHARED_QUEUE`] waiting checks. Its threads wait for work
    /// for the life of the process (they hold nothing while they wait).
    pub fn shared() -> &'static HashPool {
        static POOL: OnceLock<HashPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            HashPool::new(cores.min(SHARED_THREADS_MAX), SHARED_QUEUE)
        })
    }

    /// Runs `f` on a pool thread: its result later, or `None` when the queue is full (the
    /// caller answers busy). A pool without threads runs `f` now. Should the job be lost (its
    /// thread gone), the future gives `lost`.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
        lost: T,
    ) -> Option<Pending<T>> {
        let Some(jobs) = &self.jobs else {
            let value = f();
            return Some(Box::pin(async move { value }));
        };
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            waker: None,
            closed: false,
        }));
        let reply = Reply(slot.clone());
        let job: Job = Box::new(move || reply.send(f()));
        match jobs.try_send(job) {
            Ok(()) => Some(Box::pin(Answer {
                slot,
                lost: Some(lost),
            })),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

/// A hashing thread: runs jobs until the pool is gone.
fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting; the job runs without it.
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Where a job's result waits for its future.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The job is done or dropped: no value will come after this.
    closed: bool,
}

/// The job's end of a slot: sends the value, or (dropped unsent) closes it.
struct Reply<T>(Arc<Mutex<Slot<T>>>);

impl<T> Reply<T> {
    fn send(self, value: T) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.value = Some(value);
        // `Drop` closes and wakes.
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.closed = true;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

/// The future of a job's result.
struct Answer<T> {
    slot: Arc<Mutex<Slot<T>>>,
    /// Given if the job ends without a value.
    lost: Option<T>,
}

impl<T> Unpin for Answer<T> {}

impl<T> Future for Answer<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let mut slot = this.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = slot.value.take() {
            return Poll::Ready(v);
        }
        if slot.closed {
            drop(slot);
            if let Some(v) = this.lost.take() {
                return Poll::Ready(v);
            }
            return Poll::Pending;
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Blocks the calling thread until the future is ready (tests have no runtime).
#[cfg(test)]
pub(crate) fn block_on<T>(mut f: Pending<T>) -> T {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn runs_on_a_pool_thread() {
        let pool = HashPool::new(2, 4);
        let here = std::thread::current().id();
        let f = pool
            .run(move || std::thread::current().id() != here, false)
            .unwrap();
        assert!(block_on(f));
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned), None)
            .unwrap();
        assert_eq!(block_on(name).as_deref(), Some("starling-hash"));
    }

    #[test]
    fn a_full_queue_refuses_and_frees_up() {
        let pool = HashPool::new(1, 1);
        // The one thread is held by a job until the test lets it go.
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let first = pool
            .run(
                move || {
                    let _ = started_tx.send(());
                    let _ = held.recv();
                    1
                },
                0,
            )
            .unwrap();
        started.recv().unwrap();
        // One job fits in the queue; the next is refused.
        let second = pool.run(|| 2, 0).unwrap();
        assert!(pool.run(|| 3, 0).is_none());
        release.send(()).unwrap();
        assert_eq!(block_on(first), 1);
        assert_eq!(block_on(second), 2);
        // Room again.
        assert_eq!(block_on(pool.run(|| 4, 0).unwrap()), 4);
    }

    #[test]
    fn a_lost_job_gives_the_fallback() {
        let slot = Arc::new(Mutex::new(Slot::<u8> {
            value: None,
            waker: None,
            closed: false,
        }));
        drop(Reply(slot.clone()));
        let f: Pending<u8> = Box::pin(Answer {
            slot,
            lost: Some(9),
        });
        assert_eq!(block_on(f), 9);
    }
}
