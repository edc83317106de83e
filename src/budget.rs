//! One token bucket for every traffic budget, on the [`Clock`].
//!
//! Three places pace traffic to a hub: the driver (how many queries and configuration
//! operations the decision core may plan), the Azure REST client (a request waits for its
//! slot rather than be throttled), and the embedded hub's `--throttle` (a request over the
//! limit gets a 429). All three are the same bucket: `capacity` tokens, refilled
//! continuously at `capacity` per `period` (IoT Hub states its throttles as operations per
//! minute or per second), never above `capacity`.
//!
//! A [`TokenBucket`] is told the time; a [`SharedBucket`] reads it from a [`Clock`] and can
//! be shared between tasks. With a [`ManualClock`](crate::clock::ManualClock) a test moves
//! time by hand.

use crate::clock::Clock;
use jiff::Timestamp;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// `capacity` tokens, refilled continuously at `capacity` per `period`.
///
/// Time that runs backwards (a wall clock set back) refills nothing; the bucket waits until
/// the clock has caught up with the last time it was told.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    period_secs: f64,
    tokens: f64,
    at: Timestamp,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens that refills from empty in `period`.
    /// `f64::INFINITY` is a bucket that never runs out.
    pub fn new(capacity: f64, period: Duration, now: Timestamp) -> TokenBucket {
        let capacity = if capacity.is_nan() {
            0.0
        } else {
            capacity.max(0.0)
        };
        TokenBucket {
            capacity,
            period_secs: period.as_secs_f64(),
            tokens: capacity,
            at: now,
        }
    }

    /// `n` operations a minute, `n` at once.
    pub fn per_minute(n: f64, now: Timestamp) -> TokenBucket {
        TokenBucket::new(n, Duration::from_secs(60), now)
    }

    /// `n` operations a second, `n` at once.
    pub fn per_second(n: f64, now: Timestamp) -> TokenBucket {
        TokenBucket::new(n, Duration::from_secs(1), now)
    }

    /// The most tokens the bucket holds.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        let added = if self.period_secs > 0.0 {
            elapsed * self.capacity / self.period_secs
        } else {
            f64::INFINITY
        };
        self.tokens = (self.tokens + added).min(self.capacity);
        self.at = now;
    }

    /// The tokens there are at `now` (negative while reservations are still owed).
    pub fn available(&mut self, now: Timestamp) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `cost` tokens if there are that many at `now`; `false` leaves the bucket as
    /// it was. A cost above the capacity never passes.
    pub fn try_take(&mut self, cost: f64, now: Timestamp) -> bool {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Takes `cost` tokens at `now` even if they are not there yet, and answers how long to
    /// wait until they are: callers that wait their turn are served in order.
    pub fn reserve(&mut self, cost: f64, now: Timestamp) -> Duration {
        self.refill(now);
        self.tokens -= cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            self.time_for(-self.tokens)
        }
    }

    /// How long until the count of whole tokens grows by one, from the last time the
    /// bucket was told (a full bucket answers as if it could grow).
    pub fn next_token_in(&self) -> Duration {
        self.time_for((1.0 - self.tokens.fract()).max(0.0))
    }

    /// How long refilling `tokens` takes; `Duration::MAX` for never.
    fn time_for(&self, tokens: f64) -> Duration {
        if tokens <= 0.0 || self.capacity.is_infinite() {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(tokens * self.period_secs / self.capacity)
            .unwrap_or(Duration::MAX)
    }
}

/// A [`TokenBucket`] that reads the time from a [`Clock`], shared between tasks.
pub struct SharedBucket {
    clock: Arc<dyn Clock>,
    bucket: Mutex<TokenBucket>,
}

impl std::fmt::Debug for SharedBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedBucket")
            .field(&*self.bucket.lock())
            .finish()
    }
}

impl SharedBucket {
    /// A full bucket of `capacity` tokens that refills from empty in `period`, on `clock`.
    pub fn new(clock: Arc<dyn Clock>, capacity: f64, period: Duration) -> SharedBucket {
        let bucket = Mutex::new(TokenBucket::new(capacity, period, clock.now()));
        SharedBucket { clock, bucket }
    }

    /// `n` operations a minute, `n` at once.
    pub fn per_minute(clock: Arc<dyn Clock>, n: f64) -> SharedBucket {
        SharedBucket::new(clock, n, Duration::from_secs(60))
    }

    /// `n` operations a second, `n` at once.
    pub fn per_second(clock: Arc<dyn Clock>, n: f64) -> SharedBucket {
        SharedBucket::new(clock, n, Duration::from_secs(1))
    }

    /// [`TokenBucket::try_take`] now.
    pub fn try_take(&self, cost: f64) -> bool {
        let now = self.clock.now();
        self.bucket.lock().try_take(cost, now)
    }

    /// [`TokenBucket::reserve`] now.
    pub fn reserve(&self, cost: f64) -> Duration {
        let now = self.clock.now();
        self.bucket.lock().reserve(cost, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use jiff::SignedDuration;

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    #[test]
    fn a_full_bucket_allows_a_burst_of_its_capacity_then_refuses() {
        let clock = ManualClock::at_epoch();
        let mut b = TokenBucket::per_minute(20.0, clock.now());
        for _ in 0..20 {
            assert!(b.try_take(1.0, clock.now()));
        }
        assert!(!b.try_take(1.0, clock.now()));
        assert_eq!(b.available(clock.now()), 0.0);
    }

    #[test]
    fn tokens_come_back_continuously_at_the_rate() {
        let clock = ManualClock::at_epoch();
        let mut b = TokenBucket::per_minute(20.0, clock.now());
        assert!(b.try_take(20.0, clock.now()));
        assert_eq!(b.next_token_in(), Duration::from_secs(3));
        clock.advance(secs(2));
        assert!(
            !b.try_take(1.0, clock.now()),
            "two seconds bring 2/3 of a token"
        );
        clock.advance(secs(1));
        assert!(b.try_take(1.0, clock.now()), "three seconds bring one");
        clock.advance(secs(30));
        assert_eq!(b.available(clock.now()), 10.0);
    }

    #[test]
    fn refill_stops_at_the_capacity() {
        let clock = ManualClock::at_epoch();
        let mut b = TokenBucket::per_second(5.0, clock.now());
        assert!(b.try_take(5.0, clock.now()));
        clock.advance(secs(3600));
        assert_eq!(b.available(clock.now()), 5.0);
        assert!(
            !b.try_take(6.0, clock.now()),
            "a cost above the capacity never passes"
        );
        assert!(b.try_take(5.0, clock.now()));
    }

    #[test]
    fn huge_elapsed_times_and_tiny_rates_do_not_overflow() {
        let clock = ManualClock::at_epoch();
        let mut b = TokenBucket::per_minute(1e12, clock.now());
        assert!(b.try_take(1e12, clock.now()));
        clock.advance(SignedDuration::from_hours(24 * 365 * 5000));
        assert_eq!(b.available(clock.now()), 1e12);

        let mut slow = TokenBucket::new(1e-300, Duration::from_secs(u64::MAX), clock.now());
        assert_eq!(slow.reserve(1.0, clock.now()), Duration::MAX);
        clock.advance(SignedDuration::from_hours(24 * 365 * 1000));
        assert!(slow.available(clock.now()) < 0.0);

        let mut empty = TokenBucket::per_minute(0.0, clock.now());
        assert!(!empty.try_take(1.0, clock.now()));
        assert_eq!(empty.reserve(1.0, clock.now()), Duration::MAX);
    }

    #[test]
    fn an_unlimited_bucket_never_runs_out() {
        let clock = ManualClock::at_epoch();
        let mut b = TokenBucket::per_minute(f64::INFINITY, clock.now());
        for _ in 0..1000 {
            assert_eq!(b.reserve(1.0, clock.now()), Duration::ZERO);
            assert!(b.try_take(1.0, clock.now()));
        }
        clock.advance(secs(1));
        assert_eq!(b.available(clock.now()), f64::INFINITY);
    }

    #[test]
    fn reservations_queue_behind_each_other() {
        let clock = ManualClock::at_epoch();
        let mut b = TokenBucket::per_second(2.0, clock.now());
        assert_eq!(b.reserve(1.0, clock.now()), Duration::ZERO);
        assert_eq!(b.reserve(1.0, clock.now()), Duration::ZERO);
        assert_eq!(b.reserve(1.0, clock.now()), Duration::from_millis(500));
        assert_eq!(b.reserve(1.0, clock.now()), Duration::from_secs(1));
        clock.advance(secs(1));
        assert_eq!(b.available(clock.now()), 0.0, "the debt is paid back first");
    }

    #[test]
    fn time_running_backwards_refills_nothing() {
        let clock = ManualClock::at_epoch();
        let t0 = clock.now();
        let mut b = TokenBucket::per_second(1.0, t0);
        assert!(b.try_take(1.0, t0));
        clock.advance(secs(-10));
        assert!(!b.try_take(1.0, clock.now()));
        clock.set(t0 + secs(1));
        assert!(b.try_take(1.0, clock.now()));
    }

    #[test]
    fn a_shared_bucket_reads_its_clock() {
        let clock = ManualClock::at_epoch();
        let b = SharedBucket::per_minute(Arc::new(clock.clone()), 2.0);
        assert!(b.try_take(2.0));
        assert!(!b.try_take(1.0));
        assert_eq!(b.reserve(1.0), Duration::from_secs(30));
        clock.advance(secs(60));
        assert!(b.try_take(1.0));
        assert!(!b.try_take(1.0));
    }
}
