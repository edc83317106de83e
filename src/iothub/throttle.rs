//! IoT Hub's throttles: the operation classes its quota page names, what one S1 unit
//! allows in each, and a token bucket per class.
//!
//! Per S1 unit: configuration operations 20/min, queries 20/min, identity-registry
//! operations 100/min; twin reads 100/s and twin updates 50/s (taken here as fixed, whatever
//! the units). See
//! <https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-quotas-throttling>.
//!
//! The embedded hub's `--throttle` refuses a request whose class's bucket is empty; the
//! REST client waits for its slot instead.

use crate::budget::SharedBucket;
use crate::clock::Clock;
use std::sync::Arc;

/// The throttle classes of IoT Hub's quota page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Configuration operations: list, get, create, update, delete.
    Configurations,
    /// Twin queries and query tests.
    Queries,
    /// Identity-registry operations (a bulk call costs one per device).
    Registry,
    /// Twin reads.
    TwinReads,
    /// Twin updates.
    TwinUpdates,
    /// Not throttled (statistics).
    Free,
}

/// Operations allowed per class. `f64::INFINITY` means no limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Configuration operations a minute.
    pub configurations_per_min: f64,
    /// Queries a minute.
    pub queries_per_min: f64,
    /// Identity-registry operations a minute.
    pub registry_per_min: f64,
    /// Twin reads a second.
    pub twin_reads_per_sec: f64,
    /// Twin updates a second.
    pub twin_updates_per_sec: f64,
}

impl Rates {
    /// What `units` S1 units allow.
    pub fn s1(units: u32) -> Rates {
        let u = units.max(1) as f64;
        Rates {
            configurations_per_min: 20.0 * u,
            queries_per_min: 20.0 * u,
            registry_per_min: 100.0 * u,
            twin_reads_per_sec: 100.0,
            twin_updates_per_sec: 50.0,
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Rates {
        Rates {
            configurations_per_min: f64::INFINITY,
            queries_per_min: f64::INFINITY,
            registry_per_min: f64::INFINITY,
            twin_reads_per_sec: f64::INFINITY,
            twin_updates_per_sec: f64::INFINITY,
        }
    }
}

impl Default for Rates {
    /// One S1 unit.
    fn default() -> Self {
        Self::s1(1)
    }
}

/// A full token bucket per class, each holding a minute's (or a second's) worth.
#[derive(Debug)]
pub struct Buckets {
    configurations: SharedBucket,
    queries: SharedBucket,
    registry: SharedBucket,
    twin_reads: SharedBucket,
    twin_updates: SharedBucket,
}

impl Buckets {
    /// Buckets at `rates`, refilled on `clock`.
    pub fn new(rates: &Rates, clock: Arc<dyn Clock>) -> Buckets {
        let per_min = |n| SharedBucket::per_minute(clock.clone(), n);
        let per_sec = |n| SharedBucket::per_second(clock.clone(), n);
        Buckets {
            configurations: per_min(rates.configurations_per_min),
            queries: per_min(rates.queries_per_min),
            registry: per_min(rates.registry_per_min),
            twin_reads: per_sec(rates.twin_reads_per_sec),
            twin_updates: per_sec(rates.twin_updates_per_sec),
        }
    }

    /// The bucket of `class`; `None` for [`Class::Free`].
    pub fn get(&self, class: Class) -> Option<&SharedBucket> {
        match class {
            Class::Configurations => Some(&self.configurations),
            Class::Queries => Some(&self.queries),
            Class::Registry => Some(&self.registry),
            Class::TwinReads => Some(&self.twin_reads),
            Class::TwinUpdates => Some(&self.twin_updates),
            Class::Free => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use jiff::SignedDuration;

    #[test]
    fn each_class_has_its_own_bucket_at_its_rate() {
        let clock = ManualClock::at_epoch();
        let b = Buckets::new(&Rates::s1(2), Arc::new(clock.clone()));
        let take = |c, n| b.get(c).unwrap().try_take(n);
        assert!(take(Class::Configurations, 40.0));
        assert!(!take(Class::Configurations, 1.0));
        assert!(take(Class::Queries, 40.0), "queries are another bucket");
        assert!(take(Class::Registry, 200.0));
        assert!(take(Class::TwinReads, 100.0));
        assert!(!take(Class::TwinReads, 1.0));
        clock.advance(SignedDuration::from_millis(20));
        assert!(take(Class::TwinReads, 1.0), "100 a second: two in 20 ms");
        assert!(take(Class::TwinUpdates, 50.0));
        assert!(b.get(Class::Free).is_none());
    }
}
