//! Opening the store, restoring the broker from it, and the committer: a thread that takes
//! the journal's ops in batches and commits each batch in one transaction (group commit), so
//! one fsync serves every message that arrived while the previous commit ran.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use starling_broker::persist::{Journal, Persistence, WallClock};
use starling_broker::{Broker, Wake};
use starling_store::{RedbStore, Snapshot, Store};
use tracing::{error, info, warn};

use crate::config::{Config, Durability, bounds};

/// How long the committer waits for work before checking for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// How the journal wakes the committer thread: a flag and a condition variable. The flag
/// keeps a wake-up that arrives while the committer is busy, so none is lost.
#[derive(Debug, Default)]
struct CommitSignal {
    woken: Mutex<bool>,
    ready: Condvar,
}

impl Wake for CommitSignal {
    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ready.notify_one();
    }
}

impl CommitSignal {
    /// Waits until woken or until `deadline`, whichever comes first, and clears the flag.
    fn wait_until(&self, deadline: Instant) {
        let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        while !*woken {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            woken = self
                .ready
                .wait_timeout(woken, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }
}

/// An open store and what was in it.
#[derive(Debug)]
pub struct Opened {
    store: Arc<dyn Store>,
    journal: Arc<Journal>,
    signal: Arc<CommitSignal>,
    snapshot: Snapshot,
    mode: Durability,
    interval: Duration,
}

/// Opens the store in the data directory, per the durability mode (`None` for `memory`).
/// A store that is damaged or written by a newer version is an error naming the file.
pub fn open(config: &Config) -> anyhow::Result<Option<Opened>> {
    if config.storage.durability == Durability::Memory {
        return Ok(None);
    }
    let store = RedbStore::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let snapshot = store.load(config.storage.recover).with_context(|| {
        format!(
            "cannot load {} (set storage.recover = true, or pass --recover, to start with what is readable)",
            store.path().display()
        )
    })?;
    for s in &snapshot.skipped {
        warn!("damaged record left out: {s}");
    }
    let signal = Arc::new(CommitSignal::default());
    Ok(Some(Opened {
        store: Arc::new(store),
        journal: Arc::new(Journal::new(
            config.storage.durability == Durability::Sync,
            uncommitted_limit(config.storage.max_uncommitted_mib),
            signal.clone(),
        )),
        signal,
        snapshot,
        mode: config.storage.durability,
        interval: commit_interval(config.storage.commit_interval_ms),
    }))
}

/// The `periodic` commit interval. The committer adds it to the clock, so a value beyond the
/// bound (possible only in a config built in code, without validation) is taken as the bound.
fn commit_interval(ms: u64) -> Duration {
    Duration::from_millis(ms.min(bounds::COMMIT_INTERVAL_MS.max))
}

fn uncommitted_limit(mib: u64) -> usize {
    usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// Opens a broker on an already-open store (used by tests to inject a failing store), with
/// `max_uncommitted` bytes as the journal's bound.
pub fn with_store(
    store: Arc<dyn Store>,
    mode: Durability,
    recover: bool,
    max_uncommitted: usize,
) -> anyhow::Result<Opened> {
    let snapshot = store.load(recover)?;
    let signal = Arc::new(CommitSignal::default());
    Ok(Opened {
        store,
        journal: Arc::new(Journal::new(
            mode == Durability::Sync,
            max_uncommitted,
            signal.clone(),
        )),
        signal,
        snapshot,
        mode,
        interval: Duration::from_millis(100),
    })
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The committer thread; joined at shutdown after the journal is closed.
#[derive(Debug)]
pub struct Committer {
    journal: Arc<Journal>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Closes the journal and waits until everything in it is committed.
    pub fn finish(mut self) {
        self.journal.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Attaches the store to `broker`, restores its state, and starts the committer.
pub fn attach(broker: Broker, opened: Opened) -> anyhow::Result<(Arc<Broker>, Committer)> {
    let now = Instant::now();
    let persistence = Persistence {
        journal: opened.journal.clone(),
        clock: WallClock::new(now, unix_ms_now()),
    };
    let broker = broker.with_persistence(persistence);
    let started = Instant::now();
    let restored = broker.restore(opened.snapshot, now);
    info!(
        sessions = restored.sessions,
        messages = restored.messages,
        retained = restored.retained,
        expired_sessions = restored.expired_sessions,
        expired_messages = restored.expired_messages,
        skipped = restored.skipped,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "state restored"
    );
    let broker = Arc::new(broker);
    let journal = opened.journal.clone();
    let store = opened.store;
    let signal = opened.signal;
    let (mode, interval) = (opened.mode, opened.interval);
    let thread = std::thread::Builder::new()
        .name("starling-commit".into())
        .spawn({
            let journal = journal.clone();
            let broker = broker.clone();
            move || commit_loop(&*store, &journal, &signal, &broker, mode, interval)
        })
        .context("cannot start the committer thread")?;
    Ok((
        broker,
        Committer {
            journal,
            thread: Some(thread),
        },
    ))
}

fn commit_loop(
    store: &dyn Store,
    journal: &Journal,
    signal: &CommitSignal,
    broker: &Broker,
    mode: Durability,
    interval: Duration,
) {
    let m = &broker.metrics;
    loop {
        if mode == Durability::Periodic {
            // The interval, or less once the journal holds half its bound (or is closed).
            // (`commit_interval_ms` is bounded by the config; saturate all the same.)
            let now = Instant::now();
            let deadline = now.checked_add(interval).unwrap_or(now + IDLE_WAIT);
            while !journal.arm_early_commit() && Instant::now() < deadline {
                signal.wait_until(deadline);
            }
        }
        match journal.take_batch() {
            Some((ops, upto)) => {
                // A message sent and acknowledged before this commit never reaches the disk.
                let ops = starling_store::compact(ops);
                match store.apply(&ops, true) {
                    Ok(()) => {
                        m.store_commits.inc();
                        m.store_ops.add(ops.len() as u64);
                        journal.finish(upto, true);
                    }
                    Err(e) => {
                        m.store_commit_failures.inc();
                        error!(ops = ops.len(), error = %e, "store commit failed; what it held is not acknowledged");
                        journal.finish(upto, false);
                    }
                }
            }
            None if journal.is_finished() => return,
            // Armed by `take_batch`: the next push (or closing) wakes this wait.
            None => signal.wait_until(Instant::now() + IDLE_WAIT),
        }
    }
}
