//! Time as a dependency.
//!
//! Everything that waits (the hub's configuration cycle, the simulated devices, gate bake
//! times) reads time from a [`Clock`], so tests and the demo can run in virtual time: a
//! [`ManualClock`] only moves when told to, and [`ScaledClock`] runs faster than the wall.

use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;
use std::sync::Arc;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when [`ManualClock::advance`] or [`ManualClock::set`] is called.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }
    /// A clock starting at a fixed, readable instant (2026-01-01T00:00:00Z).
    pub fn at_epoch() -> Self {
        Self::new("2026-01-01T00:00:00Z".parse().expect("valid timestamp"))
    }
    /// Moves the clock forward by `by` (backward if negative). Panics on overflow.
    pub fn advance(&self, by: SignedDuration) {
        let mut t = self.0.lock();
        *t = t.checked_add(by).expect("clock overflow");
    }
    /// Moves the clock to `to`, forward or backward.
    pub fn set(&self, to: Timestamp) {
        *self.0.lock() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock()
    }
}

/// Wall time sped up by a factor from a starting instant: `--speed 60` runs an hour a minute.
#[derive(Clone, Debug)]
pub struct ScaledClock {
    origin_wall: std::time::Instant,
    origin: Timestamp,
    speed: f64,
}

impl ScaledClock {
    /// A clock starting at the wall time now and running `speed` times as fast
    /// (negative speeds count as 0: the clock stands still).
    pub fn new(speed: f64) -> Self {
        ScaledClock {
            origin_wall: std::time::Instant::now(),
            origin: Timestamp::now(),
            speed: speed.max(0.0),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.origin_wall.elapsed().as_secs_f64() * self.speed;
        self.origin
            .checked_add(SignedDuration::from_secs_f64(elapsed))
            .unwrap_or(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_epoch();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(SignedDuration::from_secs(90));
        assert_eq!(c.now().duration_since(t0), SignedDuration::from_secs(90));
    }
}
