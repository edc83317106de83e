//! Knobs for testing clients: IoT Hub's throttles and injected faults. All off by default.
//!
//! `--throttle` shapes traffic like one S1 unit ([`crate::iothub::throttle`]): configuration
//! operations 20/min, queries 20/min, identity-registry operations 100/min (a bulk call
//! costs one per device), twin reads 100/s, twin updates 50/s. Over a limit the answer is
//! 429 `ThrottlingException` with no `Retry-After` (the real hub documents none).
//! Buckets refill continuously, so a client that paces itself never sees a 429.
//!
//! `--fault-rate` answers that share of authorized requests with 500 `ServerError` or 503
//! `ServiceUnavailable` *before* the operation runs (nothing is written, so a retry is
//! safe), and `--latency-ms` delays every request.

use super::error::ApiError;
use crate::clock::{Clock, SystemClock};
use crate::iothub::error::ErrorCode;
use crate::iothub::throttle::{Buckets, Rates};
use std::sync::Arc;
use std::time::Duration;

/// The hub's throttle classes.
pub use crate::iothub::throttle::Class;

/// Per-class limits (the `--throttle` rates).
pub type ThrottleLimits = Rates;

/// The hub-wide throttle.
#[derive(Debug)]
pub struct Throttle {
    buckets: Buckets,
}

impl Throttle {
    /// A throttle on the wall clock.
    pub fn new(l: &ThrottleLimits) -> Throttle {
        Throttle::with_clock(l, Arc::new(SystemClock))
    }

    /// A throttle whose buckets refill on `clock`.
    pub fn with_clock(l: &ThrottleLimits, clock: Arc<dyn Clock>) -> Throttle {
        Throttle {
            buckets: Buckets::new(l, clock),
        }
    }

    /// Takes `cost` operations of `class`, or answers 429.
    pub fn admit(&self, class: Class, cost: u32) -> Result<(), ApiError> {
        match self.buckets.get(class) {
            None => Ok(()),
            Some(b) if b.try_take(f64::from(cost)) => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorCode::ThrottlingException,
                format!("{class:?} operations are over this hub's limit; back off and retry"),
            )),
        }
    }
}

/// Injected faults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of requests answered with a 5xx, between 0 and 1.
    pub rate: f64,
    /// Delay added to every request.
    pub latency: Duration,
}

impl Faults {
    /// A 5xx answer for this request, drawn at `rate`.
    pub fn draw(&self) -> Option<ApiError> {
        if self.rate <= 0.0 || rand::random::<f64>() >= self.rate {
            return None;
        }
        Some(if rand::random::<bool>() {
            ApiError::new(
                ErrorCode::ServerError,
                "injected fault (--fault-rate); nothing was changed, retry",
            )
        } else {
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "injected fault (--fault-rate); nothing was changed, retry",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use jiff::SignedDuration;

    #[test]
    fn buckets_refill_continuously() {
        let clock = ManualClock::at_epoch();
        let t = Throttle::with_clock(&ThrottleLimits::s1(1), Arc::new(clock.clone()));
        for _ in 0..20 {
            t.admit(Class::Configurations, 1).unwrap();
        }
        t.admit(Class::Configurations, 1).unwrap_err();
        clock.advance(SignedDuration::from_secs(2));
        t.admit(Class::Configurations, 1).unwrap_err();
        clock.advance(SignedDuration::from_secs(1));
        t.admit(Class::Configurations, 1).unwrap();
        clock.advance(SignedDuration::from_secs(3600));
        assert!(
            t.admit(Class::Configurations, 100).is_err(),
            "cost above capacity never passes"
        );
    }

    #[test]
    fn throttle_answers_429_per_class() {
        let t = Throttle::new(&ThrottleLimits::s1(1));
        for _ in 0..20 {
            t.admit(Class::Configurations, 1).unwrap();
        }
        let e = t.admit(Class::Configurations, 1).unwrap_err();
        assert_eq!(e.status, 429);
        assert_eq!(e.name, "ThrottlingException");
        t.admit(Class::Queries, 1).unwrap();
        t.admit(Class::Free, 1000).unwrap();
    }

    #[test]
    fn faults_follow_the_rate() {
        assert!(Faults::default().draw().is_none());
        let f = Faults {
            rate: 1.0,
            latency: Duration::ZERO,
        };
        let e = f.draw().unwrap();
        assert!(e.status == 500 || e.status == 503);
    }
}
