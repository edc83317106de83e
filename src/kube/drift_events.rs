//! The Events drift on the hub deserves (`docs/rollouts.md`, "Drift"): a Warning when a
//! rollout's `Drifted` or `Shadowed` condition turns True or names something new, a
//! Normal event when it is back in sync.

use crate::core::decide::{DRIFTED, SHADOWED};
use crate::core::status;
use crate::resources::DeviceRolloutStatus;
use kube::runtime::events::{Event, EventType};

/// The drift events between two statuses of a rollout.
pub fn drift_events(last: &DeviceRolloutStatus, next: &DeviceRolloutStatus) -> Vec<Event> {
    let mut events = Vec::new();
    for (type_, healed) in [(DRIFTED, "DriftHealed"), (SHADOWED, "ShadowEnded")] {
        let active = |s: &DeviceRolloutStatus| {
            status::condition(s, type_)
                .filter(|c| c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone()))
        };
        match (active(last), active(next)) {
            (before, Some((reason, message)))
                if before.as_ref().map(|b| &b.1) != Some(&message) =>
            {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: type_.to_string(),
                    note: Some(truncate(format!("{reason}: {message}"), 1024)),
                    action: "Drift".into(),
                    secondary: None,
                })
            }
            (Some(_), None) => events.push(Event {
                type_: EventType::Normal,
                reason: healed.into(),
                note: Some(format!("{type_} is over: the hub matches the rollout")),
                action: "Drift".into(),
                secondary: None,
            }),
            _ => {}
        }
    }
    events
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(type_: &str, value: bool, message: &str) -> DeviceRolloutStatus {
        let mut st = DeviceRolloutStatus::default();
        let now = jiff::Timestamp::UNIX_EPOCH;
        status::set_condition(&mut st, type_, value, "Healing", message, None, now);
        st
    }

    #[test]
    fn drift_is_announced_once_and_its_end_too() {
        let clean = DeviceRolloutStatus::default();
        let drifted = with(DRIFTED, true, "configuration x: priority is 1, should be 5");
        let e = drift_events(&clean, &drifted);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, "Drifted");
        assert_eq!(e[0].type_, EventType::Warning);
        assert!(drift_events(&drifted, &drifted).is_empty(), "once");
        let healed = with(DRIFTED, false, "");
        let e = drift_events(&drifted, &healed);
        assert_eq!(e[0].reason, "DriftHealed");
        assert!(drift_events(&healed, &healed).is_empty());
    }
}
