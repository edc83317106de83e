//! The flags of `ringmaster run --dir/--git` ([`RunArgs`]) and the secrets they name
//! ([`read_secret`]).
//!
//! `--kube` and its flags are the CLI's (`ringmaster::cli::RunCommand`): this controller
//! knows nothing of Kubernetes.

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `ringmaster run` without `--kube`. Exactly one source: `--dir` or `--git`.
/// (`--dir` is required unless `--git` or `--kube` is given: the CLI flattens these flags
/// beside `--kube`.)
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Read manifests from this directory (recursively), watching it for changes.
    #[arg(long, conflicts_with = "git", required_unless_present_any = ["git", "kube"])]
    pub dir: Option<PathBuf>,
    /// Read manifests from this git repository (https, ssh, git:// or file:// URL).
    #[arg(long)]
    pub git: Option<String>,
    /// The branch to follow (`--git`).
    #[arg(long, default_value = "main", requires = "git")]
    pub branch: String,
    /// A folder inside the repository (`--git`); the whole tree by default.
    #[arg(long, requires = "git")]
    pub path: Option<String>,
    /// How often to fetch (`--git`), e.g. `1m`, `30s`.
    #[arg(long, default_value = "1m", value_parser = crate::duration::parse_duration)]
    pub interval: Duration,
    /// How long a fetch may take before it fails (`--git`), e.g. `60s`. The fetch runs
    /// beside the controller's loop: rollouts already known keep reconciling meanwhile.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse_duration, requires = "git")]
    pub git_timeout: Duration,
    /// How often to rescan the directory even without file events (`--dir`).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse_duration)]
    pub rescan: Duration,
    /// Look at every rollout at least this often, so that drift on the hub (a
    /// configuration edited or deleted by someone else) is found and shown
    /// (`docs/rollouts.md`, "Drift"). Each look lists the hub's configurations once per round.
    /// Also a flag of `--kube`.
    #[arg(long, default_value = "3m", value_parser = crate::duration::parse_duration)]
    pub drift_interval: Duration,
    /// Let a read that finds no DeviceRollout delete every rollout. Without it such a read
    /// (an emptied or unmounted folder, a commit leaving `--path` without rollout files)
    /// changes nothing and is reported, when the last good read had rollouts.
    #[arg(long)]
    pub allow_empty: bool,
    /// The bare cache repository for `--git`.
    #[arg(long, default_value = "ringmaster-git-cache")]
    pub git_cache: PathBuf,
    /// Environment variable holding a token for HTTPS git (sent as `x-access-token`).
    #[arg(long)]
    pub git_token_env: Option<String>,
    /// File holding a token for HTTPS git.
    #[arg(long)]
    pub git_token_file: Option<PathBuf>,
    /// File holding an SSH private key for ssh:// and `user@host:path` URLs (the ssh agent
    /// otherwise).
    #[arg(long)]
    pub git_ssh_key_file: Option<PathBuf>,
    /// Environment variable holding an SSH private key.
    #[arg(long)]
    pub git_ssh_key_env: Option<String>,
    /// Environment variable holding the SSH key's passphrase.
    #[arg(long)]
    pub git_ssh_passphrase_env: Option<String>,
    /// known_hosts file the SSH server's host key must be in (libgit2 checks
    /// ~/.ssh/known_hosts otherwise).
    #[arg(long)]
    pub git_known_hosts: Option<PathBuf>,
    /// Environment variable holding the secret of `POST /webhook/git`.
    #[arg(long)]
    pub webhook_secret_env: Option<String>,
    /// File holding the secret of `POST /webhook/git`.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The local state store (SQLite): statuses, last good files, queued requests.
    #[arg(long, default_value = "ringmaster-state.db")]
    pub state: PathBuf,
    /// Where the HTTP API listens (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Environment variable holding the API's bearer token (writes are refused without one).
    #[arg(long)]
    pub api_token_env: Option<String>,
    /// File holding the API's bearer token.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Folder of hub connection strings: the file `<ns>/<name>` for Hub `<name>` in
    /// namespace `<ns>`.
    #[arg(long)]
    pub hub_secrets_dir: Option<PathBuf>,
    /// PEM CA bundle trusted for hubs at `https` URLs (e.g. the CA that
    /// `ringmaster hub serve --tls-self-signed` prints); the system roots otherwise.
    #[arg(long)]
    pub hub_ca: Option<PathBuf>,
    /// SQLite file of the in-process embedded hub; in memory when omitted.
    #[arg(long)]
    pub embedded_store: Option<PathBuf>,
}

/// Reads a secret from the environment variable `env` or the file `file`, trimmed.
/// `flag` is the flags' common stem (`--webhook-secret` for `--webhook-secret-env` and
/// `--webhook-secret-file`), which errors name. An unset variable, an unreadable file and
/// an empty value are refused: an empty secret would let anyone sign or authenticate.
pub fn read_secret(env: Option<&str>, file: Option<&Path>, flag: &str) -> Result<Option<String>> {
    let (value, given) = if let Some(name) = env {
        let v = std::env::var(name)
            .with_context(|| format!("{flag}-env {name}: the environment variable is not set"))?;
        (v, format!("{flag}-env {name}: the environment variable"))
    } else if let Some(f) = file {
        let v = std::fs::read_to_string(f)
            .with_context(|| format!("{flag}-file {}: cannot read", f.display()))?;
        (v, format!("{flag}-file {}: the file", f.display()))
    } else {
        return Ok(None);
    };
    let value = value.trim();
    if value.is_empty() {
        bail!("{given} is empty; a secret must not be empty (omit the flag to go without one)");
    }
    Ok(Some(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_secret_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = read_secret(None, Some(&empty), "--webhook-secret")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--webhook-secret-file") && e.contains("is empty"),
            "{e}"
        );
        let good = dir.path().join("good");
        std::fs::write(&good, "s3cret\n").unwrap();
        assert_eq!(
            read_secret(None, Some(&good), "--api-token").unwrap(),
            Some("s3cret".into())
        );
        assert_eq!(read_secret(None, None, "--api-token").unwrap(), None);
        // PATH is set and not empty wherever the tests run.
        assert!(
            read_secret(Some("PATH"), None, "--git-token")
                .unwrap()
                .is_some()
        );
        let e = read_secret(
            Some("RINGMASTER_TEST_SURELY_UNSET_VAR"),
            None,
            "--git-token",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--git-token-env RINGMASTER_TEST_SURELY_UNSET_VAR"),
            "{e}"
        );
    }
}
