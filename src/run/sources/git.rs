//! The git source: a branch of a repository, fetched into a bare cache repository.
//!
//! Files are read from the fetched commit's tree, never from a worktree, so there is no
//! checkout state to corrupt, and the commit id goes into the snapshot (and the status).
//! The refspec forces the update, so a force-push is followed like any other commit.
//! git2 blocks: [`GitSource::fetch`] runs on the blocking pool (docs/design.md, "Implementation notes").
//!
//! Auth: a token (from an environment variable or a file, never from the repository) is
//! sent as HTTP basic auth with user `x-access-token` (GitHub's convention; GitLab and
//! Azure DevOps accept any user with a token). SSH URLs use a private key (from an
//! environment variable or a file, with an optional passphrase) or else the ssh agent, and
//! check the server's host key against a known_hosts file when one is given. Each
//! credential is offered once per fetch: a server that refuses it (or wants one when none
//! is configured) fails the fetch with "authentication failed" at once, where libgit2
//! would otherwise ask again and replay the refused credential up to 15 times. Secrets
//! stay in memory: the remote is anonymous, so nothing of them reaches the cache's config,
//! and neither errors nor `Debug` show them.

use super::Snapshot;
use git2::{
    Cred, ErrorClass, ErrorCode, FetchOptions, ObjectType, RemoteCallbacks, Repository,
    TreeWalkMode, TreeWalkResult,
};
use std::path::PathBuf;

/// An SSH private key (OpenSSH or PEM text) and its passphrase.
#[derive(Clone, Default)]
pub struct SshKey {
    pub private_key: String,
    pub passphrase: Option<String>,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SshKey(<redacted>)")
    }
}

/// Where and what to fetch.
#[derive(Clone, Default)]
pub struct GitSource {
    pub url: String,
    pub branch: String,
    /// A folder inside the repository; the whole tree when `None`.
    pub path: Option<String>,
    /// The bare cache repository (created on first fetch).
    pub cache: PathBuf,
    /// A token for HTTPS.
    pub token: Option<String>,
    /// A private key for SSH (the ssh agent when `None`).
    pub ssh_key: Option<SshKey>,
    /// known_hosts text the SSH server's host key must be in (`host` or `[host]:port`
    /// entries, not hashed); libgit2's own check (`~/.ssh/known_hosts`) when `None`.
    pub known_hosts: Option<String>,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &self.url)
            .field("branch", &self.branch)
            .field("path", &self.path)
            .field("cache", &self.cache)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ssh_key", &self.ssh_key)
            .field("known_hosts", &self.known_hosts.is_some())
            .finish()
    }
}

/// Whether `known_hosts` text holds `key` (the raw host key blob) for `host` (plain, or
/// `[host]:port` with any port).
pub fn known_host(known_hosts: &str, host: &str, key: &[u8]) -> bool {
    use base64::Engine;
    known_hosts
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|line| {
            let mut parts = line.split_whitespace();
            let (Some(hosts), Some(_kind), Some(blob)) = (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            let host_matches = hosts.split(',').any(|h| {
                h == host
                    || h.strip_prefix(&format!("[{host}]:"))
                        .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
            });
            host_matches
                && base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .is_ok_and(|b| b == key)
        })
}

/// Errors of the git source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    // Not `source`: the message already carries it, and `{:#}` would print it twice.
    #[error("git {url} (branch {branch}): {error}")]
    Git {
        url: String,
        branch: String,
        error: git2::Error,
    },
    #[error("git: --path {0} is not a folder at commit {1}")]
    NoPath(String, String),
}

impl GitSource {
    /// Fetches the branch and reads the YAML files of its commit (blocking).
    pub fn fetch(&self) -> Result<Snapshot, GitError> {
        let wrap = |error| GitError::Git {
            url: self.url.clone(),
            branch: self.branch.clone(),
            error,
        };
        let repo = match Repository::open_bare(&self.cache) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&self.cache)
                    .map_err(|e| wrap(git2::Error::from_str(&e.to_string())))?;
                Repository::init_bare(&self.cache).map_err(wrap)?
            }
        };
        let mut callbacks = RemoteCallbacks::new();
        let token = self.token.clone();
        let ssh_key = self.ssh_key.clone();
        // (token, ssh key, ssh agent) offered yet.
        let mut offered = (false, false, false);
        let refused = |why: &str| {
            Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                format!("authentication failed: {why}"),
            ))
        };
        let ssh_refused = |why: &str| {
            Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Ssh,
                format!("authentication failed: {why}"),
            ))
        };
        callbacks.credentials(move |_url, user, allowed| {
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
                match &token {
                    // Asked again: the server refused the token (it would refuse it again).
                    Some(_) if offered.0 => return refused("the server refused the token (sent as user x-access-token)"),
                    Some(t) => {
                        offered.0 = true;
                        return Cred::userpass_plaintext("x-access-token", t);
                    }
                    None if !allowed.contains(git2::CredentialType::SSH_KEY) => {
                        return refused("the server wants credentials and no token is configured (--git-token-env or --git-token-file)");
                    }
                    None => {}
                }
            }
            if allowed.contains(git2::CredentialType::SSH_KEY) {
                let user = user.unwrap_or("git");
                if let Some(k) = &ssh_key {
                    if !std::mem::replace(&mut offered.1, true) {
                        return Cred::ssh_key_from_memory(user, None, &k.private_key, k.passphrase.as_deref());
                    }
                    return ssh_refused("the server refused the SSH key (--git-ssh-key-env or --git-ssh-key-file)");
                } else if !std::mem::replace(&mut offered.2, true) {
                    return Cred::ssh_key_from_agent(user);
                }
                return ssh_refused("the ssh agent's keys were refused (or there is no agent); give a key with --git-ssh-key-file");
            }
            refused("the server asks for a kind of credentials ringmaster does not have")
        });
        if let Some(known) = self.known_hosts.clone() {
            callbacks.certificate_check(move |cert, host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    return Ok(git2::CertificateCheckStatus::CertificatePassthrough); // TLS: the system's roots
                };
                match hostkey.hostkey() {
                    Some(key) if known_host(&known, host, key) => {
                        Ok(git2::CertificateCheckStatus::CertificateOk)
                    }
                    _ => Err(git2::Error::from_str(&format!(
                        "the SSH host key of {host} is not in --git-known-hosts"
                    ))),
                }
            });
        }
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks);
        let local_ref = format!("refs/remotes/origin/{}", self.branch);
        let refspec = format!("+refs/heads/{}:{local_ref}", self.branch);
        let mut remote = repo.remote_anonymous(&self.url).map_err(wrap)?;
        remote
            .fetch(&[&refspec], Some(&mut opts), None)
            .map_err(wrap)?;
        let commit = repo
            .find_reference(&local_ref)
            .and_then(|r| r.peel_to_commit())
            .map_err(wrap)?;
        let id = commit.id().to_string();
        let mut tree = commit.tree().map_err(wrap)?;
        if let Some(p) = self
            .path
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
        {
            let entry = tree
                .get_path(std::path::Path::new(p))
                .map_err(|_| GitError::NoPath(p.into(), id.clone()))?;
            tree = entry
                .to_object(&repo)
                .and_then(|o| o.peel_to_tree())
                .map_err(|_| GitError::NoPath(p.into(), id.clone()))?;
        }
        let mut snap = Snapshot {
            revision: Some(id),
            ..Default::default()
        };
        let mut failed = None;
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = entry.name().unwrap_or("");
            if name.starts_with('.') {
                return TreeWalkResult::Skip;
            }
            if entry.kind() == Some(ObjectType::Blob)
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
            {
                match entry.to_object(&repo).and_then(|o| o.peel_to_blob()) {
                    Ok(blob) => {
                        snap.files
                            .insert(format!("{dir}{name}"), blob.content().to_vec());
                    }
                    Err(e) => {
                        failed = Some(e);
                        return TreeWalkResult::Abort;
                    }
                }
            }
            TreeWalkResult::Ok
        })
        .map_err(wrap)?;
        if let Some(e) = failed {
            return Err(wrap(e));
        }
        Ok(snap)
    }
}
