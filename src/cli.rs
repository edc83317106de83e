//! Offline commands: `ringmaster crd` and `ringmaster validate`; and the flags of
//! `ringmaster run`, which picks the controller (`--kube`, or `--dir`/`--git`).
//!
//! Exit codes a CI pipeline can use: 0 valid, 1 invalid, 2 the command itself failed
//! (a file could not be read).

use crate::manifest::{Document, load_manifests};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `ringmaster run`: `--kube` and its flags, or a directory or git source.
#[derive(clap::Args, Debug, Clone)]
pub struct RunCommand {
    /// Watch DeviceRollout and Hub resources on Kubernetes (in cluster, or the kubeconfig's
    /// context) instead of reading files: see `docs/kube.md`.
    #[arg(long, conflicts_with_all = ["dir", "git"])]
    pub kube: bool,
    /// Flags of `--kube`.
    #[command(flatten)]
    pub kube_args: crate::kube::KubeArgs,
    /// Flags of `--dir` and `--git`.
    #[command(flatten)]
    pub run: crate::run::RunArgs,
}

/// `ringmaster run`: the Kubernetes controller with `--kube`, else the directory or git
/// controller, until SIGINT/SIGTERM.
pub async fn run(cmd: RunCommand) -> anyhow::Result<()> {
    // `--drift-interval` is one flag of both controllers.
    crate::driver::set_drift_interval(cmd.run.drift_interval);
    if cmd.kube {
        crate::kube::run(cmd.kube_args).await
    } else {
        crate::run::run(cmd.run).await
    }
}

/// Flags of `ringmaster validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Manifest files, or directories searched recursively for `*.yaml` / `*.yml`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `ringmaster crd`: prints the CustomResourceDefinitions as multi-document YAML.
pub fn crd() -> anyhow::Result<ExitCode> {
    print!("{}", crate::resources::crds_yaml());
    Ok(ExitCode::SUCCESS)
}

/// `ringmaster validate FILES…`: checks every document offline and lists every problem.
pub fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for p in &args.paths {
        match crate::manifest::yaml_files(p) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return Ok(ExitCode::from(2));
            }
        }
    }
    let (mut rollouts, mut hubs, mut problems) = (0, 0, 0);
    let mut rings = 0;
    for f in &files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        match load_manifests(&name, &text) {
            Ok(docs) => {
                for d in docs {
                    match d {
                        Document::DeviceRollout(_) => rollouts += 1,
                        Document::Hub(_) => hubs += 1,
                        Document::DeviceRings(_) => rings += 1,
                    }
                }
            }
            Err(errors) => {
                for e in &errors {
                    println!("{e}");
                }
                problems += errors.len();
            }
        }
    }
    if problems == 0 {
        let rings = if rings > 0 {
            format!(", {rings} DeviceRings")
        } else {
            String::new()
        };
        println!(
            "valid: {rollouts} DeviceRollout and {hubs} Hub documents{rings} in {} files",
            files.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("invalid: {problems} problems in {} files", files.len());
        Ok(ExitCode::from(1))
    }
}
