//! `ringmaster plan FILES… --hub CONNECTION`: what each ring of each rollout would reach
//! on a hub, before anything is written.
//!
//! Per ring: the devices its target reaches (cumulative, rings 0..=i), the devices it
//! adds to the ring before, the higher-priority configurations writing the same paths
//! that would shadow it there, and the added devices no lower-priority configuration
//! covers (what a rollback would strip instead of restore). Read-only: it lists
//! configurations and runs count queries (each costs one query of the hub's budget).
//!
//! Exit codes: 0 nothing would change on the hub, 1 changes (a new rollout, new content,
//! or a target or priority that differs from the configuration there), 2 error.

use crate::client::Hub as _;
use crate::client::azure::{AzureHub, AzureHubOptions};
use crate::core::decide::paths_overlap;
use crate::core::plan::{Cond, Plan, any_configuration};
use crate::core::revision::{ConfigLabels, ConfigState, belongs_to};
use crate::iothub::configuration::Configuration;
use crate::manifest::{Document, load_manifests};
use crate::resources::DeviceRollout;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ringmaster plan`.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// Manifest files, or directories searched recursively.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The hub's service connection string.
    #[arg(long, env = "RINGMASTER_HUB_CONNECTION_STRING", hide_env_values = true)]
    pub hub: String,
    /// Send requests here instead of `https://<HostName>` (a plain `ringmaster hub serve`).
    #[arg(long)]
    pub hub_url: Option<String>,
}

fn paths_of(c: &Configuration) -> Vec<String> {
    c.content
        .device_content
        .iter()
        .flat_map(|m| m.keys().cloned())
        .collect()
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.iter().any(|y| paths_overlap(x, y)))
}

/// `ringmaster plan`.
pub fn plan(args: PlanArgs) -> Result<ExitCode> {
    let mut rollouts: Vec<DeviceRollout> = Vec::new();
    let mut bad = false;
    for p in &args.paths {
        for f in crate::manifest::yaml_files(p).with_context(|| format!("{}", p.display()))? {
            let name = f.display().to_string();
            let text = std::fs::read_to_string(&f).with_context(|| name.clone())?;
            match load_manifests(&name, &text) {
                Ok(docs) => rollouts.extend(docs.into_iter().filter_map(|d| match d {
                    Document::DeviceRollout(r) => Some(*r),
                    Document::Hub(_) | Document::DeviceRings(_) => None,
                })),
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    bad = true;
                }
            }
        }
    }
    if bad {
        return Ok(ExitCode::from(2));
    }
    let hub = AzureHub::new(
        &args.hub,
        AzureHubOptions {
            base_url: args.hub_url.clone(),
            max_attempts: 2,
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("--hub: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let changed = rt.block_on(async {
        let configs = hub
            .list_configurations()
            .await
            .map_err(|e| anyhow::anyhow!("listing configurations: {e}"))?;
        let mut changed = false;
        for ro in &rollouts {
            changed |= plan_one(&hub, &configs, ro).await?;
        }
        anyhow::Ok(changed)
    })?;
    Ok(ExitCode::from(u8::from(changed)))
}

/// The rollout's configurations on the hub, as their labels say (the labels the
/// controller writes, read the way it reads them).
fn configurations_of<'a>(plan: &Plan, configs: &'a [Configuration]) -> Vec<&'a Configuration> {
    configs
        .iter()
        .filter(|c| belongs_to(c, &plan.namespace, &plan.name))
        .collect()
}

/// The rollout's stable configurations of other revisions: they cover what a rollback of
/// the current one strips.
fn stable_ids(plan: &Plan, mine: &[&Configuration]) -> Vec<String> {
    mine.iter()
        .filter(|c| c.id != plan.id)
        .filter(|c| ConfigLabels::read(c).is_some_and(|l| l.state == ConfigState::Stable))
        .map(|c| c.id.clone())
        .collect()
}

/// Whether applying the rollout would change the hub, and why: `mine` are its
/// configurations there.
fn change(plan: &Plan, mine: &[&Configuration]) -> (bool, String) {
    let current = mine.iter().find(|c| c.id == plan.id);
    match current {
        None if mine.is_empty() => (
            true,
            "new rollout: its first configuration would be created".to_string(),
        ),
        None => (
            true,
            format!(
                "new content: revision {} would start at ring 0",
                plan.revision
            ),
        ),
        Some(c) => {
            // Labels that cannot be read (edited by hand): as a new configuration.
            let (ring, state) =
                ConfigLabels::read(c).map_or((0, ConfigState::Rolling), |l| (l.ring, l.state));
            let want = plan.target(ring);
            if c.priority != plan.priority {
                (
                    true,
                    format!("priority {} -> {}", c.priority, plan.priority),
                )
            } else if state != ConfigState::Held && c.target_condition != want.text() {
                (
                    true,
                    format!(
                        "ring {ring}'s target condition would change to: {}",
                        want.text()
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "no change (revision {}, ring {ring}, {})",
                        plan.revision,
                        state.label()
                    ),
                )
            }
        }
    }
}

async fn plan_one(hub: &AzureHub, configs: &[Configuration], ro: &DeviceRollout) -> Result<bool> {
    let plan = Plan::new(ro);
    let mine = configurations_of(&plan, configs);
    let ours = |c: &&Configuration| belongs_to(c, &plan.namespace, &plan.name);
    let (change, why) = change(&plan, &mine);
    println!("{}/{}: {why}", plan.namespace, plan.name);
    let my_paths: Vec<String> = ro.spec.content.device.keys().cloned().collect();
    let stable = stable_ids(&plan, &mine);
    let others = configs
        .iter()
        .filter(|c| !ours(c) && overlaps(&paths_of(c), &my_paths));
    let higher: Vec<&Configuration> = others
        .clone()
        .filter(|c| c.priority > plan.priority)
        .collect();
    let mut lower: Vec<String> = others
        .filter(|c| c.priority < plan.priority)
        .map(|c| c.id.clone())
        .collect();
    lower.extend(stable);
    let count = async |c: &Cond| {
        hub.count(c.text())
            .await
            .map_err(|e| anyhow::anyhow!("count {}: {e}", c.text()))
    };
    println!(
        "  {:<12} {:>8} {:>8} {:>10}  SHADOWED BY",
        "RING", "REACHED", "ADDED", "UNCOVERED"
    );
    for (i, ring) in ro.spec.rings.iter().enumerate() {
        let reached = count(&plan.target(i)).await?;
        let added_cond = plan.new_devices(i.checked_sub(1), i);
        let added = match &added_cond {
            Some(c) => count(c).await?,
            None => 0,
        };
        let uncovered = match (&added_cond, any_configuration(&lower)) {
            (None, _) => "0".to_string(),
            (Some(c), Some(cover)) => match c.and_not(&cover) {
                Some(q) => count(&q).await?.to_string(),
                None => "0".to_string(),
            },
            (Some(_), None) => added.to_string(),
        };
        let mut shadow = Vec::new();
        for h in &higher {
            let q = plan.target(i).and(&Cond::Expr(format!(
                "IS_DEFINED(configurations.[[{}]])",
                h.id
            )));
            let n = count(&q).await?;
            if n > 0 {
                shadow.push(format!("{} (priority {}, {n} devices)", h.id, h.priority));
            }
        }
        let shadow = if shadow.is_empty() {
            "-".to_string()
        } else {
            shadow.join(", ")
        };
        println!(
            "  {:<12} {reached:>8} {added:>8} {uncovered:>10}  {shadow}",
            ring.name
        );
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures;

    fn plan_of(namespace: &str, name: &str) -> Plan {
        let mut ro = fixtures::rollout();
        ro.metadata.namespace = Some(namespace.to_string());
        ro.metadata.name = Some(name.to_string());
        Plan::new(&ro)
    }

    #[test]
    fn a_rollout_finds_its_configuration_however_long_its_name() {
        // Label values longer than IoT Hub allows are shortened with a hash; the plan
        // must read them as the controller writes them.
        for name in ["fw", &"long-name-".repeat(20)] {
            let plan = plan_of("fleet", name);
            let on_hub = plan.new_configuration(1, ConfigState::Rolling);
            let configs = [on_hub];
            let mine = configurations_of(&plan, &configs);
            assert_eq!(mine.len(), 1, "{name}");
            let (changed, why) = change(&plan, &mine);
            assert!(!changed, "{name}: {why}");
            assert_eq!(
                why,
                format!("no change (revision {}, ring 1, rolling)", plan.revision)
            );
        }
    }

    #[test]
    fn stable_and_held_configurations_are_read_from_their_labels() {
        let plan = plan_of("fleet", "fw");
        let mut held = plan.new_configuration(2, ConfigState::Held);
        let (changed, why) = change(&plan, &[&held]);
        assert!(
            !changed,
            "a held configuration's target is not compared: {why}"
        );
        assert!(why.ends_with("ring 2, held)"), "{why}");
        held.priority += 1;
        assert!(change(&plan, &[&held]).0, "a priority change is a change");

        let mut other = plan.new_configuration(0, ConfigState::Stable);
        other.id = "older".into();
        let configs = [other];
        let mine = configurations_of(&plan, &configs);
        assert_eq!(stable_ids(&plan, &mine), ["older"]);
    }
}
