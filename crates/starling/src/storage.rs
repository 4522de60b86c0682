//! Opening the store, restoring the broker from it, and the committer: a thread that takes
//! the journal's ops in batches and commits each batch in one transaction (group commit), so
//! one fsync serves every message that arrived while the previous commit ran.
//!
//! The committer also owns the store's health. When a commit fails (a full disk, an I/O
//! error, a failed fsync, a read-only remount) the store is *unavailable*: what that batch
//! held is never acknowledged, and the committer reopens the store and tries again after a
//! backoff (100 ms doubling to 5 s) until a commit succeeds. Meanwhile `on_store_unavailable`
//! decides what happens to new durable work: `refuse` answers it at once (0x97 for a full
//! disk, else 0x80; 3.x publishers are disconnected), `block` holds it (acknowledgements wait,
//! and clients that feed the store stop being read at the uncommitted bound). Deletions and
//! phase changes of refused batches are carried into the next commit, so space is freed and
//! delivered messages are not restored by a later restart. Each change of state is logged
//! once, with its cause.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use starling_broker::persist::{Journal, Persistence, WallClock};
use starling_broker::{Broker, Wake};
use starling_store::{Op, RedbStore, Snapshot, Store, StoreError};
use tracing::{error, info, warn};

use crate::config::{CommitPriority, Config, Durability, OnStoreUnavailable, bounds};

/// How long the committer waits for work before checking for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// The first wait before an unavailable store is tried again; it doubles up to
/// [`RETRY_MAX`], the longest a store that has come back stays unused.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Most ops carried over from refused batches (deletions and phase changes). At the bound
/// `refuse` stops taking batches until the store is back: new work stays in the journal,
/// whose own bound then pauses the clients that feed it (as `block` does).
const MAX_CARRIED: usize = 1 << 20;
/// How often free space is checked (`storage.min_free_bytes`), and how often a store low on
/// space is compacted to give back to the filesystem what deliveries freed inside it.
const SPACE_CHECK: Duration = Duration::from_millis(100);
const COMPACT_EVERY: Duration = Duration::from_secs(2);

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
    on_unavailable: OnStoreUnavailable,
    min_free: u64,
    priority: CommitPriority,
}

impl Opened {
    /// Sets the free-space limit (`storage.min_free_bytes`; 0: off).
    pub fn with_min_free_bytes(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Sets what happens to durable work while the store is unavailable.
    pub fn with_on_store_unavailable(mut self, on_unavailable: OnStoreUnavailable) -> Self {
        self.on_unavailable = on_unavailable;
        self
    }

    /// Every setting whose name starts with `prefix`, as the store held it when opened.
    pub fn settings_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.snapshot
            .settings
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The value of the named setting (`Op::PutSetting`) as the store held it when opened:
    /// what the server reads before the broker is restored (the dynamic security document).
    pub fn setting(&self, key: &str) -> Option<&[u8]> {
        self.snapshot
            .settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Opens the store in the data directory, per the durability mode (`None` for `memory`).
/// A store that is damaged or written by a newer version is an error naming the file.
pub fn open(config: &Config) -> anyhow::Result<Option<Opened>> {
    if config.storage.durability == Durability::Memory {
        return Ok(None);
    }
    let cache =
        usize::try_from(config.storage.cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let mut store = RedbStore::open_with_cache(&config.data_dir, cache)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    store.set_yield_every(crate::priority::yield_every(config.storage.commit_priority));
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
        on_unavailable: config.storage.on_store_unavailable,
        min_free: config.storage.min_free_bytes,
        priority: config.storage.commit_priority,
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
        on_unavailable: OnStoreUnavailable::Refuse,
        min_free: 0,
        priority: CommitPriority::default(),
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
    let on_unavailable = opened.on_unavailable;
    let min_free = opened.min_free;
    let priority = opened.priority;
    broker.metrics.store_available.set(1);
    let thread = std::thread::Builder::new()
        .name("starling-commit".into())
        .spawn({
            let journal = journal.clone();
            let broker = broker.clone();
            move || {
                crate::priority::set_commit_priority(priority);
                let mut c = Commits {
                    store: &*store,
                    journal: &journal,
                    broker: &broker,
                    on_unavailable,
                    carried: Vec::new(),
                    failing: None,
                    held: None,
                    space: Space::new(min_free),
                };
                c.run(&signal, mode, interval);
            }
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

/// The store is unavailable: since when, why, and when to try again.
#[derive(Debug)]
struct Failing {
    since: Instant,
    /// The last failure was a full disk.
    full: bool,
    /// Attempts since it became unavailable.
    attempts: u32,
    next_try: Instant,
    /// Batches refused without being tried meanwhile.
    refused: u64,
}

impl Failing {
    fn backoff(attempts: u32) -> Duration {
        RETRY_FIRST
            .saturating_mul(1 << attempts.min(16))
            .min(RETRY_MAX)
    }
}

/// The free-space limit and what was last seen of it.
#[derive(Debug)]
struct Space {
    /// `storage.min_free_bytes` (0: off).
    min: u64,
    /// A store low on space takes durable work again above this.
    resume: u64,
    checked: Option<Instant>,
    low: bool,
    compacted: Option<Instant>,
}

impl Space {
    fn new(min: u64) -> Self {
        Self {
            min,
            resume: min.saturating_add(min / 4),
            checked: None,
            low: false,
            compacted: None,
        }
    }
}

/// The committer's state.
struct Commits<'a> {
    store: &'a dyn Store,
    journal: &'a Journal,
    broker: &'a Broker,
    on_unavailable: OnStoreUnavailable,
    /// Deletions and phase changes of refused batches, applied before the next commit.
    carried: Vec<Op>,
    /// `Some` while the store is unavailable.
    failing: Option<Failing>,
    /// With `block`: the batch that failed, tried again until it commits.
    held: Option<(Vec<Op>, u64)>,
    space: Space,
}

impl Commits<'_> {
    fn run(&mut self, signal: &CommitSignal, mode: Durability, interval: Duration) {
        loop {
            self.watch_space();
            if self.failing.is_some() {
                if self.unavailable_turn(signal) {
                    return;
                }
                continue;
            }
            if mode == Durability::Periodic {
                // The interval, or less once the journal holds half its bound (or is
                // closed). (`commit_interval_ms` is bounded by the config; saturate all the
                // same.)
                let now = Instant::now();
                let deadline = now.checked_add(interval).unwrap_or(now + IDLE_WAIT);
                while !self.journal.arm_early_commit() && Instant::now() < deadline {
                    signal.wait_until(deadline);
                }
            }
            match self.journal.take_batch() {
                // A message sent and acknowledged before this commit never reaches the disk.
                Some((ops, upto)) => self.commit_batch(starling_store::compact(ops), upto),
                None if self.journal.is_finished() => return,
                // Armed by `take_batch`: the next push (or closing) wakes this wait.
                None => signal.wait_until(Instant::now() + IDLE_WAIT),
            }
        }
    }

    /// Commits a batch (after what was carried over); on failure the store becomes
    /// unavailable and the batch is refused or held.
    fn commit_batch(&mut self, ops: Vec<Op>, upto: u64) {
        if ops.is_empty() && self.carried.is_empty() {
            // Everything in it was undone before it was taken (messages delivered and
            // acknowledged within the cycle): nothing to write, nothing to wait for.
            self.journal.finish(upto, true);
            return;
        }
        let started = Instant::now();
        match self.commit(&ops) {
            Ok(()) => {
                let m = &self.broker.metrics;
                m.store_commits.inc();
                m.store_ops.add(ops.len() as u64);
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                m.store_commit_us.observe(took);
                m.store_batch_ops.observe(ops.len() as u64);
                // Marked available before the acknowledgements it releases go out.
                self.recovered();
                self.journal.finish(upto, true);
            }
            Err(e) => {
                self.failed(&e);
                self.set_aside(ops, upto, e.is_full());
            }
        }
    }

    /// Applies the carried-over ops and `ops` in one durable transaction.
    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if self.carried.is_empty() {
            return self.store.apply(ops, true);
        }
        let carried = self.carried.len();
        self.carried.extend_from_slice(ops);
        let r = self.store.apply(&self.carried, true);
        match r {
            Ok(()) => {
                self.carried.clear();
                // What waited on the carried changes (a QoS 2 delivery's packet id, PUBREL,
                // PUBCOMP) may go out now.
                self.journal.carried_committed();
            }
            Err(_) => self.carried.truncate(carried),
        }
        r
    }

    /// A batch that did not commit: refused to its clients (its deletions carried over), or,
    /// with `block`, held to be tried again.
    fn set_aside(&mut self, ops: Vec<Op>, upto: u64, full: bool) {
        match self.on_unavailable {
            OnStoreUnavailable::Block if self.held.is_none() => self.held = Some((ops, upto)),
            _ => {
                self.carry(&ops);
                self.journal.refuse(upto, full);
            }
        }
    }

    fn carry(&mut self, ops: &[Op]) {
        self.carried.extend(
            ops.iter()
                .filter(|op| starling_store::carried_over(op))
                .cloned(),
        );
    }

    /// Whether free space is below the limit (above it again only past `resume`). Checked at
    /// most every [`SPACE_CHECK`]; while low, the store is compacted every
    /// [`COMPACT_EVERY`] so that what deliveries freed inside it counts on the filesystem.
    fn low_on_space(&mut self) -> bool {
        if self.space.min == 0 {
            return false;
        }
        let now = Instant::now();
        if self
            .space
            .checked
            .is_some_and(|t| now.duration_since(t) < SPACE_CHECK)
        {
            return self.space.low;
        }
        self.space.checked = Some(now);
        let Some(mut free) = self.store.free_bytes() else {
            return false;
        };
        let compact_due = self
            .space
            .compacted
            .is_none_or(|t| now.duration_since(t) >= COMPACT_EVERY);
        if self.space.low && free < self.space.resume && compact_due {
            self.space.compacted = Some(now);
            if matches!(self.store.compact(), Ok(true)) {
                free = self.store.free_bytes().unwrap_or(free);
            }
        }
        self.broker.metrics.store_free_bytes.set(free);
        let threshold = if self.space.low {
            self.space.resume
        } else {
            self.space.min
        };
        self.space.low = free < threshold;
        self.space.low
    }

    /// Checks free space against the limit and tells the broker when that changes: below it
    /// the broker refuses new QoS 1/2 messages at once (`Journal::set_low_on_space`), and
    /// everything else, acknowledgements and deletions included, still commits.
    fn watch_space(&mut self) {
        let was = self.space.low;
        let low = self.low_on_space();
        if low == was {
            return;
        }
        let m = &self.broker.metrics;
        m.store_low_space.set(u64::from(low));
        self.journal.set_low_on_space(low);
        let free = m.store_free_bytes.get();
        if low {
            warn!(
                free_bytes = free,
                min_free_bytes = self.space.min,
                "store low on space: refusing new QoS 1/2 messages until {} bytes are free",
                self.space.resume
            );
        } else {
            info!(
                free_bytes = free,
                "store has space again: taking QoS 1/2 messages"
            );
        }
    }

    /// A commit (or retry) failed: the store is, or stays, unavailable.
    fn failed(&mut self, e: &StoreError) {
        let m = &self.broker.metrics;
        m.store_commit_failures.inc();
        let now = Instant::now();
        match &mut self.failing {
            Some(f) => {
                f.attempts = f.attempts.saturating_add(1);
                f.full = e.is_full();
                f.next_try = now + Failing::backoff(f.attempts);
            }
            None => {
                m.store_available.set(0);
                let action = match self.on_unavailable {
                    OnStoreUnavailable::Refuse => "refusing durable work",
                    OnStoreUnavailable::Block => "holding durable work",
                };
                error!(
                    error = %e,
                    "store unavailable: {action} until it recovers (retried every {} s at most)",
                    RETRY_MAX.as_secs()
                );
                self.failing = Some(Failing {
                    since: now,
                    full: e.is_full(),
                    attempts: 0,
                    next_try: now + Failing::backoff(0),
                    refused: 0,
                });
            }
        }
    }

    /// A commit succeeded: if the store was unavailable, it is back.
    fn recovered(&mut self) {
        if let Some(f) = self.failing.take() {
            // Every commit applies what was carried over first, so nothing is left of it:
            // what waited on it (PUBREL, PUBCOMP, a delivery's packet id) may go out, also
            // when the store came back through a probe with nothing carried.
            self.journal.carried_committed();
            let m = &self.broker.metrics;
            m.store_available.set(1);
            m.store_recoveries.inc();
            info!(
                unavailable_ms = u64::try_from(f.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                attempts = f.attempts + 1,
                refused_batches = f.refused,
                "store available again"
            );
        }
    }

    /// One turn while the store is unavailable: refuses (or leaves waiting) what comes in
    /// until the next try, then reopens the store and tries the held batch, the next batch
    /// or a probe. True when the committer is done (closed, and nothing is left to try).
    fn unavailable_turn(&mut self, signal: &CommitSignal) -> bool {
        let Some(f) = &mut self.failing else {
            return false;
        };
        let closing = self.journal.is_closed();
        if Instant::now() < f.next_try && !closing {
            if self.on_unavailable == OnStoreUnavailable::Refuse
                && self.carried.len() < MAX_CARRIED
                && let Some((ops, upto)) = self.journal.take_batch()
            {
                f.refused += 1;
                let full = f.full;
                self.broker.metrics.store_batches_refused.inc();
                self.carry(&starling_store::compact(ops));
                self.journal.refuse(upto, full);
                return false;
            }
            let next_try = f.next_try;
            signal.wait_until(next_try);
            return false;
        }
        // Closed and failing: one last try, then whatever is left is refused.
        let last = closing;
        if let Err(e) = self.store.reopen() {
            self.failed(&e);
            return last && self.give_up();
        }
        // What frees space first, on its own: on a full disk the next batch may not fit.
        if !self.carried.is_empty()
            && let Err(e) = self.commit(&[])
        {
            self.failed(&e);
            return last && self.give_up();
        }
        if let Some((ops, upto)) = self.held.take() {
            match self.commit(&ops) {
                Ok(()) => {
                    self.recovered();
                    self.journal.finish(upto, true);
                }
                Err(e) => {
                    self.failed(&e);
                    self.held = Some((ops, upto));
                    return last && self.give_up();
                }
            }
            return false;
        }
        match self.journal.take_batch() {
            Some((ops, upto)) => self.commit_batch(starling_store::compact(ops), upto),
            None => match if self.carried.is_empty() {
                self.store.probe()
            } else {
                self.commit(&[])
            } {
                Ok(()) => self.recovered(),
                Err(e) => self.failed(&e),
            },
        }
        last && self.failing.is_some() && self.give_up()
    }

    /// Shutting down with the store unavailable: what is held and waiting is refused.
    fn give_up(&mut self) -> bool {
        let full = self.failing.as_ref().is_some_and(|f| f.full);
        if let Some((_, upto)) = self.held.take() {
            self.journal.refuse(upto, full);
        }
        while let Some((_, upto)) = self.journal.take_batch() {
            self.journal.refuse(upto, full);
        }
        warn!("stopping with the store unavailable: what was not committed is lost");
        true
    }
}
