//! One pass of a `DeviceRings` against a hub (`docs/rings.md`): read the devices its
//! target matches, assign rings ([`crate::core::rings`]), and write the tags that differ,
//! each on the etag the twin was read with, within the hub's twin-update budget.
//!
//! A pass reads every matching twin (`SELECT deviceId, etag, tags`, pages of
//! [`PAGE_SIZE`], one query each from the query budget) and queues the writes; the writes
//! go out as the twin-update bucket (`Hub.spec.limits.twinUpdatesPerSecond`, 50 a second
//! per S1 unit) allows, over as many passes as that takes, without reading again until the
//! queue is done or [`REREAD`] has passed. A write refused because the twin changed
//! (`PreconditionFailed`) is a conflict: counted, and the next read decides again.

use crate::budget::TokenBucket;
use crate::client::Hub;
use crate::clock::Clock;
use crate::core::rings::{self, Assignment, Member, OWNER_TAG};
use crate::core::status::{READY, RECONCILING, STALLED};
use crate::iothub::error::{ErrorCode, HubError};
use crate::resources::{DeviceRings, DeviceRingsStatus, HubLimits};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Twins per query page.
pub const PAGE_SIZE: usize = 1000;
/// Longest a queue of writes is worked through before the devices are read again.
pub const REREAD: Duration = Duration::from_secs(300);
/// Requeue when every device has its tag: new devices get theirs within this long.
pub const IDLE: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Clone, Debug)]
pub struct RingsOutcome {
    /// The status to record.
    pub status: DeviceRingsStatus,
    /// When to pass again.
    pub requeue_after: Duration,
    /// Query pages read by this pass.
    pub queries: u64,
    /// Twin updates sent by this pass.
    pub updates: u64,
}

struct Queue {
    spec: String,
    read_at: Timestamp,
    writes: VecDeque<(String, String, Option<String>)>,
    assignment: Assignment,
    devices: u64,
    conflicts: u64,
}

/// Runs `DeviceRings` passes against one hub, with its twin-update and query budgets.
pub struct RingsDriver {
    hub: Arc<dyn Hub>,
    clock: Arc<dyn Clock>,
    updates: Mutex<TokenBucket>,
    queries: Mutex<TokenBucket>,
    queues: Mutex<HashMap<String, Queue>>,
    /// Pages the last read of each `DeviceRings` took: a read starts only when the query
    /// budget holds that many, so that reads cut short by the budget do not repeat forever.
    pages: Mutex<HashMap<String, u64>>,
}

fn key(r: &DeviceRings) -> String {
    format!(
        "{}/{}",
        r.metadata.namespace.as_deref().unwrap_or("default"),
        r.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The value at a dotted path (`tags.location.region`) of a query row, as text.
fn at_path<'a>(row: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.')
        .try_fold(row, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

fn text(v: Option<&serde_json::Value>) -> Option<String> {
    v.map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    g: Option<i64>,
    now: Timestamp,
) {
    let status = if value { "True" } else { "False" }.to_string();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = g;
        }
        None => conds.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: g,
            last_transition_time: Time(now),
        }),
    }
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
}

impl RingsDriver {
    /// A driver for `hub` with the limits of its `Hub` resource.
    pub fn new(hub: Arc<dyn Hub>, clock: Arc<dyn Clock>, limits: &HubLimits) -> RingsDriver {
        let now = clock.now();
        RingsDriver {
            hub,
            updates: Mutex::new(TokenBucket::per_second(
                f64::from(limits.twin_updates_per_second.max(1)),
                now,
            )),
            queries: Mutex::new(TokenBucket::per_minute(
                f64::from(limits.queries_per_minute.max(1)),
                now,
            )),
            clock,
            queues: Mutex::new(HashMap::new()),
            pages: Mutex::new(HashMap::new()),
        }
    }

    /// Drops what is queued for the `DeviceRings` `namespace/name` (it is gone: no pass
    /// writes its tags any more; the tags already written stay).
    pub fn forget(&self, namespace: &str, name: &str) {
        let k = format!("{namespace}/{name}");
        self.queues.lock().remove(&k);
        self.pages.lock().remove(&k);
    }

    /// Reads the devices `r` organizes; `Ok(None)` when the query budget ran out first.
    async fn read(
        &self,
        r: &DeviceRings,
        queries: &mut u64,
    ) -> Result<Option<Vec<(Member, Option<String>)>>, HubError> {
        let t = r.spec.target.trim();
        let q = if t == "*" {
            "SELECT deviceId, etag, tags FROM devices".to_string()
        } else {
            format!("SELECT deviceId, etag, tags FROM devices WHERE {t}")
        };
        let tag = r.spec.tag.as_str();
        let mut out = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            if !self.queries.lock().try_take(1.0, self.clock.now()) {
                return Ok(None);
            }
            let page = self
                .hub
                .query(&q, Some(PAGE_SIZE), continuation.as_deref())
                .await?;
            *queries += 1;
            for row in &page.items {
                let Some(id) = row.get("deviceId").and_then(|v| v.as_str()) else {
                    continue;
                };
                let stratum = r
                    .spec
                    .spread_by
                    .iter()
                    .map(|p| text(at_path(row, p)).unwrap_or_else(|| "(none)".into()))
                    .collect::<Vec<_>>()
                    .join("/");
                let member = Member {
                    id: id.to_string(),
                    stratum,
                    tag: text(at_path(row, &format!("tags.{tag}"))),
                    owned: text(at_path(row, &format!("tags.{OWNER_TAG}.{tag}"))),
                };
                let etag = row.get("etag").and_then(|v| v.as_str()).map(str::to_string);
                out.push((member, etag));
            }
            match page.continuation {
                Some(c) => continuation = Some(c),
                None => return Ok(Some(out)),
            }
        }
    }

    /// One pass of `r`.
    pub async fn reconcile(&self, r: &DeviceRings, last: &DeviceRingsStatus) -> RingsOutcome {
        let now = self.clock.now();
        let g = r.metadata.generation;
        let mut st = last.clone();
        st.observed_generation = g;
        let mut outcome = RingsOutcome {
            status: st,
            requeue_after: IDLE,
            queries: 0,
            updates: 0,
        };
        let errors = rings::validate::validate_rings(r);
        if !errors.is_empty() {
            let msg = errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            let st = &mut outcome.status;
            st.message = Some(format!("invalid spec: {msg}"));
            set(
                &mut st.conditions,
                STALLED,
                true,
                "InvalidSpec",
                &msg,
                g,
                now,
            );
            set(
                &mut st.conditions,
                READY,
                false,
                "InvalidSpec",
                &msg,
                g,
                now,
            );
            set(
                &mut st.conditions,
                RECONCILING,
                false,
                "InvalidSpec",
                &msg,
                g,
                now,
            );
            return outcome;
        }
        let k = key(r);
        let spec = serde_json::to_string(&r.spec).unwrap_or_default();
        let fresh = self.queues.lock().get(&k).is_some_and(|q| {
            q.spec == spec
                && !q.writes.is_empty()
                && now.duration_since(q.read_at).as_secs() < REREAD.as_secs() as i64
        });
        if !fresh {
            let need = self.pages.lock().get(&k).copied().unwrap_or(1) as f64;
            let enough = {
                let mut b = self.queries.lock();
                b.available(now) >= need.min(b.capacity())
            };
            if !enough {
                outcome.status.message =
                    Some("reading the devices: waiting for the hub's query budget".into());
                outcome.requeue_after = Duration::from_secs(5);
                return outcome;
            }
            let read = self.read(r, &mut outcome.queries).await;
            self.pages.lock().insert(k.clone(), outcome.queries.max(1));
            let members = match read {
                Ok(Some(m)) => m,
                Ok(None) => {
                    outcome.status.message =
                        Some("reading the devices: waiting for the hub's query budget".into());
                    outcome.requeue_after = self
                        .queries
                        .lock()
                        .next_token_in()
                        .max(Duration::from_secs(1));
                    return outcome;
                }
                Err(e) => return self.failed(outcome, e, g, now),
            };
            let etags: HashMap<&str, Option<&String>> = members
                .iter()
                .map(|(m, e)| (m.id.as_str(), e.as_ref()))
                .collect();
            let list: Vec<Member> = members.iter().map(|(m, _)| m.clone()).collect();
            let assignment = rings::assign(&r.spec, &list);
            let writes = if r.spec.suspend {
                VecDeque::new()
            } else {
                assignment
                    .writes
                    .iter()
                    .map(|(id, ring)| {
                        (
                            id.clone(),
                            ring.clone(),
                            etags.get(id.as_str()).copied().flatten().cloned(),
                        )
                    })
                    .collect()
            };
            self.queues.lock().insert(
                k.clone(),
                Queue {
                    spec,
                    read_at: now,
                    writes,
                    devices: list.len() as u64,
                    assignment,
                    conflicts: 0,
                },
            );
        }
        // Write within the twin-update budget.
        let tag = r.spec.tag.clone();
        loop {
            let next = {
                let mut queues = self.queues.lock();
                let q = queues.get_mut(&k).expect("queued");
                if q.writes.is_empty() || !self.updates.lock().try_take(1.0, self.clock.now()) {
                    None
                } else {
                    q.writes.pop_front()
                }
            };
            let Some((id, ring, etag)) = next else { break };
            let patch =
                serde_json::json!({"tags": {tag.as_str(): ring, OWNER_TAG: {tag.as_str(): ring}}});
            let etag = etag.map(|e| {
                if e.starts_with('"') {
                    e
                } else {
                    format!("\"{e}\"")
                }
            });
            let sent = self.hub.update_twin(&id, &patch, etag.as_deref()).await;
            outcome.updates += 1;
            match sent {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::PreconditionFailed | ErrorCode::DeviceNotFound
                    ) =>
                {
                    if let Some(q) = self.queues.lock().get_mut(&k) {
                        q.conflicts += 1;
                    }
                }
                Err(e) => return self.failed(outcome, e, g, now),
            }
        }
        let queues = self.queues.lock();
        let q = queues.get(&k).expect("queued");
        let st = &mut outcome.status;
        let a = &q.assignment;
        st.devices = q.devices;
        st.rings = a.per_ring.clone();
        st.strata = if r.spec.spread_by.is_empty() {
            Default::default()
        } else {
            a.per_stratum.clone()
        };
        st.pending_writes = q.writes.len() as u64;
        st.written = outcome.updates;
        st.conflicts = q.conflicts;
        st.hand_set_count = a.hand_set.len() as u64;
        st.hand_set = a
            .hand_set
            .iter()
            .take(20)
            .map(|(id, v)| format!("{id}={v}"))
            .collect();
        st.problems = a.problems.clone();
        let rings_text = a
            .per_ring
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let pending = q.writes.len();
        let message = if r.spec.suspend {
            format!(
                "suspended: {} tag writes not made; {rings_text}",
                a.writes.len()
            )
        } else if pending > 0 {
            format!("{pending} tag writes pending (twin-update budget); {rings_text}")
        } else {
            format!("{} devices: {rings_text}", q.devices)
        };
        let (ready, reason) = match (r.spec.suspend, pending > 0 || q.conflicts > 0) {
            (true, _) => (false, "Suspended"),
            (false, true) => (false, "Tagging"),
            (false, false) => (true, "Tagged"),
        };
        set(&mut st.conditions, READY, ready, reason, &message, g, now);
        set(
            &mut st.conditions,
            RECONCILING,
            !ready && !r.spec.suspend,
            reason,
            &message,
            g,
            now,
        );
        let stalled = !a.problems.is_empty();
        set(
            &mut st.conditions,
            STALLED,
            stalled,
            if stalled { "MinDevices" } else { reason },
            &a.problems.join("; "),
            g,
            now,
        );
        st.message = Some(message);
        outcome.requeue_after = if pending > 0 {
            self.updates
                .lock()
                .next_token_in()
                .max(Duration::from_secs(1))
        } else if q.conflicts > 0 {
            Duration::from_secs(5)
        } else {
            IDLE
        };
        drop(queues);
        if pending == 0 {
            // Done: the next pass reads again (new devices, someone else's tags).
            self.queues.lock().remove(&k);
        }
        outcome
    }

    fn failed(
        &self,
        mut outcome: RingsOutcome,
        e: HubError,
        g: Option<i64>,
        now: Timestamp,
    ) -> RingsOutcome {
        let msg = format!("the hub refused: {e}");
        let st = &mut outcome.status;
        set(
            &mut st.conditions,
            RECONCILING,
            true,
            "HubError",
            &msg,
            g,
            now,
        );
        set(&mut st.conditions, READY, false, "HubError", &msg, g, now);
        st.message = Some(msg);
        outcome.requeue_after = Duration::from_secs(30);
        outcome
    }
}

#[cfg(test)]
mod tests;
