//! The git source: a branch of a repository, fetched into a bare cache repository.
//!
//! Files are read from the fetched commit's tree, never from a worktree, so there is no
//! checkout state to corrupt, and the commit id goes into the snapshot (and the status).
//! The refspec forces the update, so a force-push is followed like any other commit.
//! git2 blocks: [`GitSource::fetch`] runs on the blocking pool (rust-stack trap 7).
//!
//! Auth: a token (from an environment variable or a file, never from the repository) is
//! sent as HTTP basic auth with user `x-access-token` (GitHub's convention; GitLab and
//! Azure DevOps accept any user with a token). SSH URLs use a private key (from an
//! environment variable or a file, with an optional passphrase) or else the ssh agent, and
//! check the server's host key against a known_hosts file when one is given. A credential
//! is offered once: a refused one fails the fetch instead of being retried forever.

use super::Snapshot;
use git2::{Cred, FetchOptions, ObjectType, RemoteCallbacks, Repository, TreeWalkMode, TreeWalkResult};
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
    known_hosts.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).any(|line| {
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(blob)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let host_matches = hosts.split(',').any(|h| h == host || h.strip_prefix(&format!("[{host}]:")).is_some_and(|p| p.chars().all(|c| c.is_ascii_digit())));
        host_matches && base64::engine::general_purpose::STANDARD.decode(blob).is_ok_and(|b| b == key)
    })
}

/// Errors of the git source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {url} (branch {branch}): {source}")]
    Git { url: String, branch: String, source: git2::Error },
    #[error("git: --path {0} is not a folder at commit {1}")]
    NoPath(String, String),
}

impl GitSource {
    /// Fetches the branch and reads the YAML files of its commit (blocking).
    pub fn fetch(&self) -> Result<Snapshot, GitError> {
        let wrap = |source| GitError::Git { url: self.url.clone(), branch: self.branch.clone(), source };
        let repo = match Repository::open_bare(&self.cache) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&self.cache).map_err(|e| wrap(git2::Error::from_str(&e.to_string())))?;
                Repository::init_bare(&self.cache).map_err(wrap)?
            }
        };
        let mut callbacks = RemoteCallbacks::new();
        let token = self.token.clone();
        let ssh_key = self.ssh_key.clone();
        // libgit2 asks again after a refusal; a second offer of the same credential would
        // loop, so each kind is offered once.
        let mut offered = (false, false, false);
        callbacks.credentials(move |_url, user, allowed| {
            if let Some(t) = &token
                && allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && !std::mem::replace(&mut offered.0, true)
            {
                return Cred::userpass_plaintext("x-access-token", t);
            }
            if allowed.contains(git2::CredentialType::SSH_KEY) {
                let user = user.unwrap_or("git");
                if let Some(k) = &ssh_key {
                    if !std::mem::replace(&mut offered.1, true) {
                        return Cred::ssh_key_from_memory(user, None, &k.private_key, k.passphrase.as_deref());
                    }
                } else if !std::mem::replace(&mut offered.2, true) {
                    return Cred::ssh_key_from_agent(user);
                }
            }
            Err(git2::Error::from_str("authentication failed: the credentials given were refused (or none fit)"))
        });
        if let Some(known) = self.known_hosts.clone() {
            callbacks.certificate_check(move |cert, host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    return Ok(git2::CertificateCheckStatus::CertificatePassthrough); // TLS: the system's roots
                };
                match hostkey.hostkey() {
                    Some(key) if known_host(&known, host, key) => Ok(git2::CertificateCheckStatus::CertificateOk),
                    _ => Err(git2::Error::from_str(&format!("the SSH host key of {host} is not in --git-known-hosts"))),
                }
            });
        }
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks);
        let local_ref = format!("refs/remotes/origin/{}", self.branch);
        let refspec = format!("+refs/heads/{}:{local_ref}", self.branch);
        let mut remote = repo.remote_anonymous(&self.url).map_err(wrap)?;
        remote.fetch(&[&refspec], Some(&mut opts), None).map_err(wrap)?;
        let commit = repo.find_reference(&local_ref).and_then(|r| r.peel_to_commit()).map_err(wrap)?;
        let id = commit.id().to_string();
        let mut tree = commit.tree().map_err(wrap)?;
        if let Some(p) = self.path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
            let entry = tree.get_path(std::path::Path::new(p)).map_err(|_| GitError::NoPath(p.into(), id.clone()))?;
            tree = entry.to_object(&repo).and_then(|o| o.peel_to_tree()).map_err(|_| GitError::NoPath(p.into(), id.clone()))?;
        }
        let mut snap = Snapshot { revision: Some(id), ..Default::default() };
        let mut failed = None;
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = entry.name().unwrap_or("");
            if name.starts_with('.') {
                return TreeWalkResult::Skip;
            }
            if entry.kind() == Some(ObjectType::Blob) && (name.ends_with(".yaml") || name.ends_with(".yml")) {
                match entry.to_object(&repo).and_then(|o| o.peel_to_blob()) {
                    Ok(blob) => {
                        snap.files.insert(format!("{dir}{name}"), blob.content().to_vec());
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
