//! How often a long transaction gives the core back. A batch of a few thousand operations
//! takes milliseconds of CPU, all inside one transaction; the kernel moves a thread that was
//! given the core at a timer tick off it only at the next tick (4 ms at 250 Hz), however low
//! its priority, so a client thread that lost the core to the committer at a tick could wait
//! that long. Giving the core back every few dozen operations (`sched_yield`, which returns
//! at once when no other thread wants the core) bounds that wait to a fraction of a
//! millisecond (`bench/RESULTS.md`, "Mixed load").

/// Counts operations and yields the thread every `every` of them (never if 0).
#[derive(Debug)]
pub(crate) struct Pace {
    every: usize,
    since: usize,
}

impl Pace {
    pub(crate) fn new(every: usize) -> Self {
        Self { every, since: 0 }
    }

    /// Counts `n` operations done, yielding once the count reaches the period.
    pub(crate) fn done(&mut self, n: usize) {
        if self.every == 0 {
            return;
        }
        self.since = self.since.saturating_add(n);
        if self.since >= self.every {
            self.since = 0;
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn counts_to_the_period_and_starts_again() {
        let mut p = Pace::new(3);
        p.done(1);
        p.done(1);
        assert_eq!(p.since, 2);
        p.done(1);
        assert_eq!(p.since, 0, "yielded at the period");
        p.done(5);
        assert_eq!(p.since, 0, "a step past the period yields too");
        let mut never = Pace::new(0);
        never.done(1_000);
        assert_eq!(never.since, 0);
    }
}
