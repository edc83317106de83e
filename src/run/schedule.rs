//! When rollouts are due: the loop reconciles in rounds, and [`Due`] lets polls that
//! fall close together share one.

use std::time::Duration;
use tokio::time::Instant;

/// How many rollouts one round reconciles at once.
pub(crate) const ROUND_CONCURRENCY: usize = 16;

/// When a rollout is due: at `at`, and at the latest by `latest`. The loop wakes for the
/// earliest `latest` and reconciles every rollout whose `at` has come, so polls that fall
/// close together share a round (and one listing of their hub's configurations).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Due {
    pub(crate) at: Instant,
    pub(crate) latest: Instant,
}

impl Due {
    pub(crate) fn now(now: Instant) -> Due {
        Due {
            at: now,
            latest: now,
        }
    }

    /// A poll `wait` from now may run a tenth of `wait` late, at most 5 s.
    pub(crate) fn after(now: Instant, wait: Duration) -> Due {
        let at = now + wait;
        Due {
            at,
            latest: at + (wait / 10).min(Duration::from_secs(5)),
        }
    }
}
