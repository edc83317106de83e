//! The git source: a branch of a repository, fetched into a bare cache repository.
//!
//! Files are read from the fetched commit's tree, never from a worktree, so there is no
//! checkout state to corrupt, and the commit id goes into the snapshot (and the status).
//! The refspec forces the update, so a force-push is followed like any other commit.
//! git2 blocks: [`GitSource::fetch`] runs on the blocking pool, and is bounded by
//! [`FETCH_TIMEOUT`]: a server that accepts the connection and never answers, or answers
//! too slowly, fails the fetch with an error naming the URL, and the cache stays as it was
//! (libgit2 moves the branch's ref only after a complete fetch).
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
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a fetch may take. Connecting and each wait for the server fail at once when
/// they take longer (libgit2's connect and server timeouts, which cover `git://`, HTTP(S)
/// and SSH); a transfer still running at the deadline is given up at its next progress
/// report. Flux's `GitRepository` uses the same default
/// (https://fluxcd.io/flux/components/source/gitrepositories/#timeout).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// libgit2's timeouts are process-wide settings that libgit2 reads without
/// synchronization when it opens a connection: every fetch of the process sets them and
/// runs under this lock (the one source of `ringmaster run` fetches one at a time anyway).
/// Holds the timeout last set, in milliseconds.
static NETWORK: Mutex<i32> = Mutex::new(0);

/// An SSH private key (OpenSSH or PEM text) and its passphrase.
#[derive(Clone, Default)]
pub struct SshKey {
    /// The private key's text.
    pub private_key: String,
    /// Its passphrase; `None` for an unencrypted key.
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
    /// The repository URL (HTTPS or SSH).
    pub url: String,
    /// The branch to follow.
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
            .field("url", &shown_url(&self.url))
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

/// The URL as errors, logs and the API show it: a password or token written into it
/// (`https://user:TOKEN@host/repo`) is replaced by `***` (give tokens with
/// `--git-token-file` or `--git-token-env` instead).
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else if user.len() > 20 {
                "***".to_string() // a bare token as the user name
            } else {
                user.to_string()
            };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Errors of the git source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    // Not `source`: the message already carries it, and `{:#}` would print it twice.
    /// libgit2 failed (connect, auth, fetch, or reading the commit).
    #[error("git {url} (branch {branch}): {error}")]
    Git {
        /// The repository URL.
        url: String,
        /// The branch fetched.
        branch: String,
        /// libgit2's error.
        error: git2::Error,
    },
    /// The fetch did not finish within its timeout.
    #[error("git {url} (branch {branch}): timed out after {timeout:?}: {error}")]
    Timeout {
        /// The repository URL.
        url: String,
        /// The branch fetched.
        branch: String,
        /// The timeout that ran out.
        timeout: Duration,
        /// libgit2's error when it gave up.
        error: git2::Error,
    },
    /// The `--path` folder is not in the commit: the path, and the commit id.
    #[error("git: --path {0} is not a folder at commit {1}")]
    NoPath(String, String),
}

impl GitSource {
    /// Fetches the branch and reads the YAML files of its commit (blocking, at most
    /// [`FETCH_TIMEOUT`]).
    pub fn fetch(&self) -> Result<Snapshot, GitError> {
        self.fetch_within(FETCH_TIMEOUT)
    }

    /// [`GitSource::fetch`] with another timeout.
    pub fn fetch_within(&self, timeout: Duration) -> Result<Snapshot, GitError> {
        let mut set = NETWORK.lock().unwrap_or_else(|p| p.into_inner());
        let ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        if *set != ms {
            // SAFETY: libgit2 reads these settings when it opens a connection, and every
            // libgit2 connection of the process is opened under `NETWORK`, held here.
            unsafe {
                git2::opts::set_server_connect_timeout_in_milliseconds(ms)
                    .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
                    .map_err(|error| GitError::Git {
                        url: shown_url(&self.url),
                        branch: self.branch.clone(),
                        error,
                    })?;
            }
            *set = ms;
        }
        let deadline = Instant::now() + timeout;
        let result = self.fetch_until(deadline);
        drop(set);
        match result {
            Err(GitError::Git { url, branch, error })
                if error.code() == ErrorCode::Timeout || Instant::now() >= deadline =>
            {
                Err(GitError::Timeout {
                    url,
                    branch,
                    timeout,
                    error,
                })
            }
            other => other,
        }
    }

    fn fetch_until(&self, deadline: Instant) -> Result<Snapshot, GitError> {
        let wrap = |error| GitError::Git {
            url: shown_url(&self.url),
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
        // A transfer that is still running at the deadline is given up (a wait for the
        // server is bounded by libgit2's server timeout).
        callbacks.transfer_progress(move |_| Instant::now() < deadline);
        callbacks.sideband_progress(move |_| Instant::now() < deadline);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Fetches with a 2 s timeout on a thread; `None` when it has not ended after `within`
    /// (it hangs).
    fn fetch_on_thread(src: GitSource, within: Duration) -> Option<Result<Snapshot, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(
                src.fetch_within(Duration::from_secs(2))
                    .map_err(|e| e.to_string()),
            );
        });
        rx.recv_timeout(within).ok()
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        for (url, shown) in [
            (
                "https://u:s3cret@example.com/r.git",
                "https://u:***@example.com/r.git",
            ),
            (
                "https://ghp_0123456789abcdefghijklmnop@example.com/r",
                "https://***@example.com/r",
            ),
            ("ssh://git@example.com/r.git", "ssh://git@example.com/r.git"),
            ("git@example.com:r.git", "git@example.com:r.git"),
            ("https://example.com/a@b", "https://example.com/a@b"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
        let src = GitSource {
            url: "http://u:s3cret@127.0.0.1:1/r.git".into(),
            branch: "main".into(),
            cache: tempfile::tempdir().unwrap().path().join("c.git"),
            ..Default::default()
        };
        let err = src
            .fetch_within(Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret") && err.contains("u:***@"), "{err}");
        assert!(!format!("{src:?}").contains("s3cret"));
    }

    #[test]
    fn a_server_that_never_answers_fails_the_fetch_naming_the_url() {
        // Accepts every connection and never writes a byte.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        let cache = tempfile::tempdir().unwrap();
        for url in [
            format!("git://{addr}/origin.git"),
            format!("http://{addr}/origin.git"),
        ] {
            let src = GitSource {
                url: url.clone(),
                branch: "main".into(),
                cache: cache.path().join("cache.git"),
                ..Default::default()
            };
            let err = fetch_on_thread(src, Duration::from_secs(20))
                .expect("the fetch ends")
                .unwrap_err();
            assert!(err.contains(&url) && err.contains("timed out"), "{err}");
        }

        // The cache is still a good repository: a fetch into it from a reachable one works.
        let origin = tempfile::tempdir().unwrap();
        let repo = Repository::init(origin.path()).unwrap();
        std::fs::write(origin.path().join("a.yaml"), "kind: Hub\n").unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(std::path::Path::new("a.yaml")).unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let commit = repo
            .commit(Some("refs/heads/main"), &sig, &sig, "a", &tree, &[])
            .unwrap();
        let src = GitSource {
            url: format!("file://{}", origin.path().display()),
            branch: "main".into(),
            cache: cache.path().join("cache.git"),
            ..Default::default()
        };
        let snap = src.fetch_within(Duration::from_secs(30)).unwrap();
        assert_eq!(snap.revision, Some(commit.to_string()));
        assert_eq!(snap.files.keys().collect::<Vec<_>>(), ["a.yaml"]);
    }
}
