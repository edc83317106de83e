//! Offline commands: `ringmaster crd` and `ringmaster validate`.
//!
//! Exit codes a CI pipeline can use: 0 valid, 1 invalid, 2 the command itself failed
//! (a file could not be read).

use crate::resources::manifest::{Document, load_manifests};
use std::path::{Path, PathBuf};
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

/// Every YAML file under `path` (or `path` itself), in a stable order.
pub fn yaml_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            out.extend(yaml_files(&p)?);
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(p);
        }
    }
    Ok(out)
}

/// `ringmaster validate FILES…`: checks every document offline and lists every problem.
pub fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for p in &args.paths {
        match yaml_files(p) {
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
