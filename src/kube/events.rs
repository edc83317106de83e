//! Events about rollouts: each one a new `events.k8s.io/v1` Event with its own text.
//!
//! kube's `Recorder` keys its cache by type, reason and action, not by the note: a second
//! `RingStarted` (ring 1 after ring 0, or a new revision) became a repeat of the first,
//! its count raised and its text kept ("revision 5093a170: ring 0 'canary'", count 3), and
//! a `Progressing` after `Paused` read as the first one ever did ("phase none →
//! Progressing"). The controller publishes only on transitions, so there is nothing to
//! fold: every call here creates an Event. Its name is the rollout's name cut so that the
//! whole stays a valid object name (at most 253 characters), then a unique suffix.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use std::sync::atomic::{AtomicU64, Ordering};

/// The longest object name Kubernetes takes (a DNS subdomain).
const MAX_NAME: usize = 253;

/// Publishes Events about rollouts, one new Event per call.
pub struct Events {
    client: Client,
    reporter: Reporter,
    /// The last suffix handed out: names stay unique within the process even when two
    /// events are made in the same nanosecond.
    last: AtomicU64,
}

impl Events {
    /// Events reported as `reporter` through `client`.
    pub fn new(client: Client, reporter: Reporter) -> Events {
        Events {
            client,
            reporter,
            last: AtomicU64::new(0),
        }
    }

    /// Creates the Event `ev` about `regarding`, in its namespace.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = jiff::Timestamp::now();
        let nanos = u64::try_from(now.as_nanosecond()).unwrap_or(0);
        let stamp = self
            .last
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                Some(nanos.max(l.saturating_add(1)))
            })
            .map_or(nanos, |l| nanos.max(l.saturating_add(1)));
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(event_name(
                    regarding
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    stamp,
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.secondary.clone(),
            ..Default::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await?;
        Ok(())
    }
}

/// `<object name, cut to fit>.<stamp in hex>`: at most 253 characters, and still a DNS
/// subdomain (the cut never leaves a `.` or `-` before the suffix).
pub fn event_name(object: &str, stamp: u64) -> String {
    let suffix = format!(".{stamp:x}");
    let room = MAX_NAME - suffix.len();
    let mut prefix: &str = object;
    if prefix.len() > room {
        let mut cut = room;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix = &prefix[..cut];
    }
    let prefix = prefix.trim_end_matches(['.', '-']);
    format!("{prefix}{suffix}")
}
