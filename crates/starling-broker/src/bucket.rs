//! A token bucket: `rate` tokens per second, holding at most one second's worth. Used for a
//! client's publish rate (reading pauses while it is empty) and, in the server, for the
//! connection rate of one address.

use std::time::{Duration, Instant};

/// Tokens refilled continuously at `rate` per second, up to `rate`.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (`rate` must be above 0).
    pub fn full(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    /// Adds what `rate` earned since the last refill, up to one second's worth.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
    }

    /// When the bucket was last refilled (its last use).
    pub fn updated(&self) -> Instant {
        self.updated
    }

    /// Takes a token if there is one (after refilling); false if the bucket is empty.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Takes a token even if there is none: the debt is paid back before the next one.
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// How long until a token is there (after refilling); `None` if one is there now.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_its_rate_up_to_one_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert_eq!(b.wait(t0), Some(Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        // Idle for long: still one second's worth at most.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.wait(later), None);
        b.take(later);
        b.take(later);
        b.take(later);
        assert_eq!(b.wait(later), Some(Duration::from_secs(1)), "a debt of one");
    }
}
