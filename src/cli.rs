//! Offline commands: `ringmaster crd` and `ringmaster validate`.
//!
//! Exit codes a CI pipeline can use: 0 valid, 1 invalid, 2 the command itself failed
//! (a file could not be read).

use crate::manifest::{Document, load_manifests};
use std::path::PathBuf;
use std::process::ExitCode;

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
        println!(
            "valid: {rollouts} DeviceRollout and {hubs} Hub documents in {} files",
            files.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("invalid: {problems} problems in {} files", files.len());
        Ok(ExitCode::from(1))
    }
}
