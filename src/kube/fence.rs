//! Fencing: a replica that is not (or no longer) the leader never writes to a hub.
//!
//! [`FencedHub`] wraps every hub client of `run --kube` (through
//! [`Resolver::with_wrapper`](crate::resolver::Resolver::with_wrapper)). Reads pass
//! through. Each write (create, update and delete of a configuration, a twin patch):
//! - starts only while this replica leads ([`Leadership::valid_until`]); otherwise it
//!   fails at once with `ServiceUnavailable` and a message saying so, and nothing is sent;
//! - is abandoned, retries and all, the moment this replica's leadership lapses (the
//!   Lease not renewed within [`RENEW_DEADLINE`](super::leader::RENEW_DEADLINE)), and in
//!   any case after [`WRITE_BOUND`], below the Lease's duration: a write begun just
//!   before the Lease was lost cannot go on retrying while a new leader writes.
//!
//! A request already on the wire when the write is abandoned may still reach the hub
//! (nothing can recall it); every write the driver makes is idempotent (derived ids,
//! etags), so the new leader's next reconcile converges either way.

use super::leader::{LEASE_DURATION_SECS, Leadership, RENEW_DEADLINE};
use crate::client::{Hub, QueryPage, TestQueriesResult};
use crate::iothub::configuration::Configuration;
use crate::iothub::error::{ErrorCode, HubError};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest one hub write (its retries included) may take when leadership is elected:
/// below the Lease's duration ([`LEASE_DURATION_SECS`]).
pub const WRITE_BOUND: Duration = RENEW_DEADLINE;
const _: () = assert!(WRITE_BOUND.as_secs() < LEASE_DURATION_SECS);

/// A hub whose writes go through only while this replica leads.
pub struct FencedHub {
    inner: Arc<dyn Hub>,
    leader: Leadership,
}

impl FencedHub {
    /// Fences `inner` with `leader`.
    pub fn new(inner: Arc<dyn Hub>, leader: Leadership) -> FencedHub {
        FencedHub { inner, leader }
    }

    /// A wrapper for [`crate::resolver::Resolver::with_wrapper`].
    pub fn wrapper(leader: Leadership) -> crate::resolver::HubWrapper {
        Arc::new(move |inner| Arc::new(FencedHub::new(inner, leader.clone())) as Arc<dyn Hub>)
    }

    async fn write<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, HubError>>,
    ) -> Result<T, HubError> {
        let refused = |why: &str| {
            HubError::new(
                ErrorCode::ServiceUnavailable,
                format!("{what}: not written: {why}; the leader replica makes this write"),
            )
        };
        let bounded = match self.leader.valid_until() {
            None => return Err(refused("this replica does not hold the leader Lease")),
            Some(None) => false,
            Some(Some(_)) => true,
        };
        if !bounded {
            return fut.await;
        }
        let cap = Instant::now() + WRITE_BOUND;
        let mut fut = std::pin::pin!(fut);
        loop {
            let until = match self.leader.valid_until() {
                None | Some(None) => {
                    return Err(refused(
                        "this replica lost the leader Lease during the write",
                    ));
                }
                Some(Some(t)) => t.min(cap),
            };
            tokio::select! {
                r = &mut fut => return r,
                () = tokio::time::sleep_until(until) => {
                    if Instant::now() >= cap {
                        return Err(refused(&format!(
                            "the write took over {}s, the bound below the Lease's duration",
                            WRITE_BOUND.as_secs()
                        )));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Hub for FencedHub {
    async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError> {
        self.inner.list_configurations().await
    }
    async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, HubError> {
        self.inner.get_configuration(id).await
    }
    async fn create_configuration(
        &self,
        config: &Configuration,
    ) -> Result<Configuration, HubError> {
        let what = format!("creating configuration {}", config.id);
        self.write(&what, self.inner.create_configuration(config))
            .await
    }
    async fn update_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, HubError> {
        let what = format!("updating configuration {}", config.id);
        self.write(&what, self.inner.update_configuration(config, etag))
            .await
    }
    async fn delete_configuration(&self, id: &str, etag: Option<&str>) -> Result<(), HubError> {
        let what = format!("deleting configuration {id}");
        self.write(&what, self.inner.delete_configuration(id, etag))
            .await
    }
    async fn query(
        &self,
        query: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<QueryPage, HubError> {
        self.inner.query(query, page_size, continuation).await
    }
    async fn test_queries(
        &self,
        target_condition: &str,
        metric_queries: &BTreeMap<String, String>,
    ) -> Result<TestQueriesResult, HubError> {
        self.inner
            .test_queries(target_condition, metric_queries)
            .await
    }
    async fn get_twin(&self, device_id: &str) -> Result<Option<serde_json::Value>, HubError> {
        self.inner.get_twin(device_id).await
    }
    async fn update_twin(
        &self,
        device_id: &str,
        patch: &serde_json::Value,
        etag: Option<&str>,
    ) -> Result<serde_json::Value, HubError> {
        let what = format!("patching the twin of {device_id}");
        self.write(&what, self.inner.update_twin(device_id, patch, etag))
            .await
    }
    async fn count(&self, condition: &str) -> Result<u64, HubError> {
        self.inner.count(condition).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A hub whose configuration writes take `write_takes` (forever when `None`) and
    /// whose reads answer at once; counts the writes started.
    struct Slow {
        write_takes: Option<Duration>,
        writes: AtomicUsize,
    }

    impl Slow {
        async fn take(&self) {
            self.writes.fetch_add(1, Ordering::SeqCst);
            match self.write_takes {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        }
    }

    #[async_trait]
    impl Hub for Slow {
        async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError> {
            Ok(vec![])
        }
        async fn get_configuration(&self, _: &str) -> Result<Option<Configuration>, HubError> {
            Ok(None)
        }
        async fn create_configuration(&self, c: &Configuration) -> Result<Configuration, HubError> {
            self.take().await;
            Ok(c.clone())
        }
        async fn update_configuration(
            &self,
            c: &Configuration,
            _: Option<&str>,
        ) -> Result<Configuration, HubError> {
            self.take().await;
            Ok(c.clone())
        }
        async fn delete_configuration(&self, _: &str, _: Option<&str>) -> Result<(), HubError> {
            self.take().await;
            Ok(())
        }
        async fn query(
            &self,
            _: &str,
            _: Option<usize>,
            _: Option<&str>,
        ) -> Result<QueryPage, HubError> {
            Ok(QueryPage {
                item_type: "raw".into(),
                items: vec![],
                continuation: None,
            })
        }
        async fn test_queries(
            &self,
            _: &str,
            _: &BTreeMap<String, String>,
        ) -> Result<TestQueriesResult, HubError> {
            unimplemented!()
        }
        async fn get_twin(&self, _: &str) -> Result<Option<Value>, HubError> {
            Ok(None)
        }
        async fn update_twin(
            &self,
            _: &str,
            _: &Value,
            _: Option<&str>,
        ) -> Result<Value, HubError> {
            self.take().await;
            Ok(Value::Null)
        }
    }

    fn slow(write_takes: Option<Duration>) -> Arc<Slow> {
        Arc::new(Slow {
            write_takes,
            writes: AtomicUsize::new(0),
        })
    }

    fn config() -> Configuration {
        Configuration {
            id: "fw-1".into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_writes_nothing_and_still_reads() {
        let inner = slow(Some(Duration::ZERO));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let hub = FencedHub::new(inner.clone(), Leadership::from_channel(rx));
        let err = hub.create_configuration(&config()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ServiceUnavailable);
        assert!(
            err.message.contains("does not hold the leader Lease"),
            "{}",
            err.message
        );
        assert!(hub.delete_configuration("fw-1", None).await.is_err());
        assert!(hub.update_twin("d1", &Value::Null, None).await.is_err());
        assert_eq!(inner.writes.load(Ordering::SeqCst), 0, "nothing was sent");
        assert!(hub.list_configurations().await.is_ok());
        assert_eq!(
            hub.count("*").await.ok(),
            None,
            "reads pass through to the hub"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_in_flight_is_abandoned_when_leadership_lapses() {
        let inner = slow(None);
        let leader = Leadership::elected_for_test(Some(Instant::now() + Duration::from_secs(3)));
        let hub = FencedHub::new(inner.clone(), leader.clone());
        let start = Instant::now();
        let err = hub.create_configuration(&config()).await.unwrap_err();
        assert_eq!(inner.writes.load(Ordering::SeqCst), 1);
        assert!(
            err.message.contains("lost the leader Lease"),
            "{}",
            err.message
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(!leader.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_keeps_renewing_still_bounds_each_write_below_the_lease_duration() {
        let leader = Leadership::elected_for_test(Some(Instant::now() + RENEW_DEADLINE));
        let renewer = leader.clone();
        let renewals = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                renewer.set_valid_until_for_test(Some(Instant::now() + RENEW_DEADLINE));
            }
        });
        // A write that takes 4 s while the lease is renewed succeeds.
        let hub = FencedHub::new(slow(Some(Duration::from_secs(4))), leader.clone());
        hub.create_configuration(&config()).await.unwrap();
        // One that never ends is cut at the bound, below the Lease's duration.
        let hub = FencedHub::new(slow(None), leader.clone());
        let start = Instant::now();
        let err = hub.delete_configuration("fw-1", None).await.unwrap_err();
        assert_eq!(start.elapsed(), WRITE_BOUND);
        assert!(start.elapsed() < Duration::from_secs(LEASE_DURATION_SECS));
        assert!(
            err.message.contains("the write took over"),
            "{}",
            err.message
        );
        renewals.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn without_leader_election_writes_are_not_bounded() {
        let hub = FencedHub::new(slow(Some(Duration::from_secs(60))), Leadership::always());
        hub.create_configuration(&config()).await.unwrap();
    }
}
