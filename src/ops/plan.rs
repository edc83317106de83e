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
use crate::core::revision::label;
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
                    Document::Hub(_) => None,
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

async fn plan_one(hub: &AzureHub, configs: &[Configuration], ro: &DeviceRollout) -> Result<bool> {
    let plan = Plan::new(ro);
    let ours = |c: &&Configuration| {
        c.labels.get(label::NAMESPACE) == Some(&plan.namespace)
            && c.labels.get(label::ROLLOUT) == Some(&plan.name)
    };
    let mine: Vec<&Configuration> = configs.iter().filter(ours).collect();
    let current = mine.iter().find(|c| c.id == plan.id);
    let (change, why) = match current {
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
            let ring: usize = c
                .labels
                .get(label::RING)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let state = c
                .labels
                .get(label::STATE)
                .map(String::as_str)
                .unwrap_or("rolling");
            let want = plan.target(ring);
            if c.priority != plan.priority {
                (
                    true,
                    format!("priority {} -> {}", c.priority, plan.priority),
                )
            } else if state != "held" && c.target_condition != want.text() {
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
                        "no change (revision {}, ring {ring}, {state})",
                        plan.revision
                    ),
                )
            }
        }
    };
    println!("{}/{}: {why}", plan.namespace, plan.name);
    let my_paths: Vec<String> = ro.spec.content.device.keys().cloned().collect();
    let stable: Vec<String> = mine
        .iter()
        .filter(|c| c.labels.get(label::STATE).is_some_and(|s| s == "stable") && c.id != plan.id)
        .map(|c| c.id.clone())
        .collect();
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
