//! What `ringmaster demo` shows.
//!
//! Two forms of the same content. On a terminal, a block per rollout (a progress bar per
//! ring with targeted / applied and the rollout's own metrics) is redrawn in place with
//! ANSI escapes, and events (each decision of the controller with the numbers behind it)
//! scroll above it. Anywhere else (a pipe, a file, a test, or `--plain`), one line per
//! event and nothing redrawn, so the output reads as a log.
//!
//! Ring counts are cumulative, as the hub computes them: the configuration of ring *i*
//! targets rings 0..=i. The ring being worked on shows the hub's live figures (the
//! configuration's `systemMetrics` and `metrics`); finished rings show what the controller
//! recorded when it judged them, and a rolled-back ring the numbers its gate failed on.

use super::Tracked;
use crate::core::gate::wilson_lower;
use crate::core::revision::label;
use crate::hub::EmbeddedHub;
use crate::hub::fleet::FleetSpec;
use crate::iothub::configuration::Configuration;
use crate::resources::{DeviceRollout, DeviceRolloutStatus, HistoryEntry, RingState};
use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

const BAR: usize = 24;
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// The demo's terminal output.
pub(crate) struct View {
    /// Redraw in place (a terminal, and not `--plain`).
    live: bool,
    start: Timestamp,
    /// Lines of the last drawn block, erased before anything else is printed.
    drawn: usize,
    out: std::io::Stdout,
}

impl View {
    pub fn new(plain: bool, start: Timestamp) -> View {
        let out = std::io::stdout();
        View {
            live: !plain && out.is_terminal(),
            start,
            drawn: 0,
            out,
        }
    }

    fn paint(&self, color: &'static str) -> &'static str {
        if self.live { color } else { "" }
    }

    fn clock(&self, now: Timestamp) -> String {
        elapsed(now.duration_since(self.start))
    }

    /// Erases the live block so that the next lines land where it was.
    fn erase(&mut self) {
        if self.live && self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    fn line(&mut self, text: &str) {
        self.erase();
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    pub fn intro(
        &mut self,
        fleet: &FleetSpec,
        rollouts: &[DeviceRollout],
        hubs: &[String],
        speed: f64,
    ) {
        let (b, r) = (self.paint(BOLD), self.paint(RESET));
        self.line(&format!("{b}ringmaster demo{r}: an embedded IoT hub, {} simulated devices, {} rollouts, in virtual time ({speed}x)", fleet.devices, rollouts.len()));
        let shares = |m: &BTreeMap<String, f64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {:.0}%", v * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.line(&format!(
            "  fleet: rings {}; models {}; firmware {}",
            shares(&fleet.rings),
            shares(&fleet.models),
            fleet.firmware.initial
        ));
        for ro in rollouts {
            let s = &ro.spec;
            let rings = s
                .rings
                .iter()
                .map(|r| {
                    if r.approval {
                        format!("{} (approval)", r.name)
                    } else {
                        r.name.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" -> ");
            self.line(&format!(
                "  rollout {} (priority {}): {}; rings {}",
                name(ro),
                s.priority,
                s.target,
                rings
            ));
        }
        if !hubs.is_empty() {
            self.line(&format!(
                "  hubs {}: the demo runs every rollout on its embedded hub",
                hubs.join(", ")
            ));
        }
    }

    /// A line of the demo's own (approvals, hub errors).
    pub fn note(&mut self, now: Timestamp, rollout: &str, text: &str) {
        let (d, r) = (self.paint(DIM), self.paint(RESET));
        self.line(&format!("{d}+{}{r}  {rollout:<15} {text}", self.clock(now)));
    }

    /// The decisions of one reconcile (new history entries) and a phase change.
    pub fn changes(
        &mut self,
        now: Timestamp,
        rollout: &str,
        before: &DeviceRolloutStatus,
        after: &DeviceRolloutStatus,
    ) {
        let fresh = match before
            .history
            .last()
            .and_then(|last| after.history.iter().rposition(|h| h == last))
        {
            Some(i) => &after.history[i + 1..],
            None => &after.history[..],
        };
        for h in fresh {
            let text = self.decision(rollout, h);
            self.line(&text);
        }
        if before.phase != after.phase
            && let Some(p) = after.phase
        {
            let color = match p {
                crate::resources::Phase::Healthy => GREEN,
                crate::resources::Phase::RolledBack | crate::resources::Phase::Failed => RED,
                _ => YELLOW,
            };
            let (c, r) = (self.paint(color), self.paint(RESET));
            let from = before
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "new".into());
            let (d, rr) = (self.paint(DIM), self.paint(RESET));
            self.line(&format!(
                "{d}+{}{rr}  {rollout:<15} phase {from} -> {c}{p:?}{r}",
                self.clock(now)
            ));
        }
    }

    /// One decision with its numbers: for gate verdicts, each metric with the lower bound
    /// of its share (the Wilson score interval the gates use).
    fn decision(&self, rollout: &str, h: &HistoryEntry) -> String {
        let color = match h.decision.as_str() {
            "Fail" | "Rollback" | "RolledBack" | "Deadline" | "Hold" => RED,
            "Pass" | "Complete" => GREEN,
            _ => "",
        };
        let (c, r, d) = (self.paint(color), self.paint(RESET), self.paint(DIM));
        let ring = h.ring.as_deref().unwrap_or("-");
        let mut numbers = Vec::new();
        if let Some(t) = h.targeted {
            numbers.push(format!("targeted {t}"));
        }
        if let Some(a) = h.applied {
            numbers.push(format!("applied {a}"));
        }
        let verdict = matches!(h.decision.as_str(), "Pass" | "Fail" | "Deadline" | "Hold");
        for (m, n) in &h.metrics {
            match h.applied {
                Some(a) if verdict && a > 0 => numbers.push(format!(
                    "{m} {n} (lowerBound {:.1}%)",
                    100.0 * wilson_lower(*n as f64, a as f64)
                )),
                _ => numbers.push(format!("{m} {n}")),
            }
        }
        let numbers = if numbers.is_empty() {
            String::new()
        } else {
            format!("[{}] ", numbers.join(", "))
        };
        let time = elapsed(h.time.0.duration_since(self.start));
        format!(
            "{d}+{time}{r}  {rollout:<15} {ring:<8} {c}{:<10}{r} {numbers}{}",
            h.decision, h.message
        )
    }

    /// Redraws the live block (terminal only).
    pub fn frame(&mut self, hub: &EmbeddedHub, tracked: &[Tracked], now: Timestamp) {
        if !self.live {
            return;
        }
        let configs = hub.list_configurations();
        let mut lines = vec![format!(
            "{}virtual time +{}{}",
            self.paint(BOLD),
            self.clock(now),
            self.paint(RESET)
        )];
        for t in tracked {
            lines.extend(self.block(t, &configs));
        }
        self.erase();
        // Auto-wrap off while drawing: a line wider than the terminal is cut, not wrapped,
        // so the block is exactly `lines.len()` rows and erasing it stays exact.
        let _ = write!(self.out, "\x1b[?7l");
        for l in &lines {
            let _ = writeln!(self.out, "{l}");
        }
        let _ = write!(self.out, "\x1b[?7h");
        let _ = self.out.flush();
        self.drawn = lines.len();
    }

    fn block(&self, t: &Tracked, configs: &[Configuration]) -> Vec<String> {
        let st = &t.status;
        let phase = st
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Pending".into());
        let at = st
            .ring
            .as_ref()
            .map(|r| format!("ring {}: {:?}", r.name, r.state))
            .unwrap_or_default();
        let rev = st.revision.as_deref().unwrap_or("-");
        let mut out = vec![format!(
            "{}{:<15}{} {phase:<12} rev {rev}  {at}",
            self.paint(BOLD),
            t.name(),
            self.paint(RESET)
        )];
        let live = st.revision.as_deref().and_then(|rev| {
            configs.iter().find(|c| {
                c.labels.get(label::ROLLOUT).map(String::as_str) == Some(t.name())
                    && c.labels.get(label::REVISION).map(String::as_str) == Some(rev)
            })
        });
        for (i, ring) in t.ro.spec.rings.iter().enumerate() {
            let record = st.rings.iter().find(|r| r.name == ring.name);
            let current = st.ring.as_ref().filter(|r| r.index as usize == i);
            let working = current.is_some_and(|r| {
                matches!(
                    r.state,
                    RingState::Applying | RingState::Baking | RingState::Analyzing
                )
            });
            // A rolled-back ring reaches no device any more: show the numbers it failed on.
            let failed_on = current
                .filter(|r| matches!(r.state, RingState::RollingBack | RingState::RolledBack))
                .and_then(|_| {
                    st.history.iter().rev().find(|h| {
                        h.ring.as_deref() == Some(&ring.name)
                            && matches!(h.decision.as_str(), "Fail" | "Deadline")
                    })
                });
            let (targeted, applied, metrics) = match (working, live, record) {
                _ if failed_on.is_some() => {
                    let h = failed_on.expect("checked");
                    (h.targeted, h.applied, h.metrics.clone())
                }
                (true, Some(c), _) => (
                    c.system_metrics
                        .results
                        .get("targetedCount")
                        .map(|n| *n as u64),
                    c.system_metrics
                        .results
                        .get("appliedCount")
                        .map(|n| *n as u64),
                    c.metrics
                        .results
                        .iter()
                        .map(|(k, v)| (k.clone(), *v as u64))
                        .collect(),
                ),
                (_, _, Some(r)) => (r.targeted, r.applied, r.metrics.clone()),
                _ => (None, None, BTreeMap::new()),
            };
            let state = match (current, record.and_then(|r| r.verdict)) {
                (Some(c), _) => format!("{:?}", c.state),
                (None, Some(v)) => format!("{v:?}"),
                (None, None) => String::new(),
            };
            let bar = bar(
                applied.unwrap_or(0),
                targeted.unwrap_or(0),
                targeted.is_some(),
            );
            let counts = match (targeted, applied) {
                (Some(tg), Some(ap)) => format!("{ap:>6}/{tg:<6} applied"),
                _ => " ".repeat(21),
            };
            let metrics = metrics
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("  ");
            let color = match state.as_str() {
                "Pass" | "Passed" => GREEN,
                "Fail" | "Failed" | "RollingBack" | "RolledBack" => RED,
                _ => "",
            };
            out.push(format!(
                "  {:<8} [{bar}] {counts}  {metrics:<28} {}{state}{}",
                ring.name,
                self.paint(color),
                self.paint(RESET)
            ));
        }
        out
    }

    /// The end: each rollout's phase and virtual time, devices per firmware version.
    pub fn summary(
        &mut self,
        hub: &EmbeddedHub,
        tracked: &[Tracked],
        start: Timestamp,
        end: Timestamp,
        wall: std::time::Duration,
        ok: bool,
    ) {
        // The last frame stays on screen above the summary.
        self.drawn = 0;
        let (b, r) = (self.paint(BOLD), self.paint(RESET));
        self.line("");
        self.line(&format!(
            "{b}summary{r} after +{} virtual time ({:.1}s wall)",
            elapsed(end.duration_since(start)),
            wall.as_secs_f64()
        ));
        for t in tracked {
            let took = t
                .settled_at
                .map(|at| format!("settled at +{}", elapsed(at.duration_since(start))))
                .unwrap_or_else(|| "not settled".into());
            let phase = t
                .status
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Pending".into());
            let msg = t.status.message.as_deref().unwrap_or("");
            self.line(&format!("  {:<15} {phase:<12} {took:<22} {msg}", t.name()));
        }
        self.line("  devices per reported firmware version:");
        let q = "SELECT properties.reported.firmware.version AS version, properties.reported.firmware.status AS status, COUNT() AS devices FROM devices GROUP BY properties.reported.firmware.version, properties.reported.firmware.status";
        match hub.query(q, Some(1000), None) {
            Ok(page) => {
                let mut rows: Vec<(String, String, u64)> = page
                    .items
                    .iter()
                    .map(|i| {
                        (
                            text(&i["version"]),
                            text(&i["status"]),
                            i["devices"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect();
                rows.sort();
                for (v, s, n) in rows {
                    self.line(&format!("    {v:<12} {s:<12} {n:>7}"));
                }
            }
            Err(e) => self.line(&format!("    (query failed: {e})")),
        }
        let verdict = if ok {
            format!(
                "{}expected outcome: the healthy rollout is Healthy and the faulty one RolledBack{r}",
                self.paint(GREEN)
            )
        } else {
            format!(
                "{}unexpected outcome: see the phases above{r}",
                self.paint(RED)
            )
        };
        self.line(&verdict);
    }

    /// `--keep-running`: where the hub is, and the lines about its connection string
    /// (the string itself only on a terminal).
    pub fn serving(&mut self, url: &str, connection_string_lines: &str) {
        self.line("");
        self.line(&format!(
            "the hub keeps running in real time at {url} (Ctrl-C to stop)"
        ));
        for l in connection_string_lines.lines() {
            self.line(l);
        }
    }
}

fn name(ro: &DeviceRollout) -> &str {
    ro.metadata.name.as_deref().unwrap_or("")
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `hh:mm:ss`.
fn elapsed(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A bar of `BAR` cells, `done` of `total` filled.
fn bar(done: u64, total: u64, known: bool) -> String {
    if !known {
        return " ".repeat(BAR);
    }
    let filled = (done.min(total) * BAR as u64)
        .checked_div(total)
        .unwrap_or(0) as usize;
    format!("{}{}", "#".repeat(filled), "-".repeat(BAR - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_clocks() {
        assert_eq!(bar(0, 0, false), " ".repeat(BAR));
        assert_eq!(
            bar(5, 10, true),
            format!("{}{}", "#".repeat(12), "-".repeat(12))
        );
        assert_eq!(bar(20, 10, true), "#".repeat(BAR));
        assert_eq!(elapsed(SignedDuration::from_secs(3725)), "01:02:05");
    }
}
