//! The git source over SSH against a real `sshd` on loopback (apt package
//! openssh-server, which `.ci/run` installs): a private key from memory, the host key
//! checked against a known_hosts file, and the refusals (wrong key, unknown host key)
//! failing the fetch with a clear error instead of retrying forever.

use ringmaster::run::sources::git::{GitSource, SshKey};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn run(cwd: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run(
        dir,
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            name,
            "-f",
            path.to_str().unwrap(),
        ],
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

/// `sshd` on 127.0.0.1 serving a bare repository to one authorized key.
struct Server {
    sshd: Child,
    port: u16,
    host_public: String,
    client_key: PathBuf,
    repo: PathBuf,
    user: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

fn sshd_binary() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("sshd is installed (apt package openssh-server; .ci/run installs it)")
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (host_key, host_public) = keygen(d, "host_key");
        let (client_key, client_public) = keygen(d, "client_key");
        std::fs::write(d.join("authorized_keys"), format!("{client_public}\n")).unwrap();

        // A bare repository with one commit.
        run(
            d,
            "git",
            &["init", "--bare", "-q", "-b", "main", "origin.git"],
        );
        let work = d.join("work");
        std::fs::create_dir(&work).unwrap();
        run(&work, "git", &["init", "-q", "-b", "main"]);
        std::fs::create_dir(work.join("rollouts")).unwrap();
        std::fs::write(work.join("rollouts/hub.yaml"), "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {name: h, namespace: fleet}\nspec: {type: embedded}\n").unwrap();
        run(&work, "git", &["add", "-A"]);
        run(&work, "git", &["commit", "-q", "-m", "first"]);
        run(
            &work,
            "git",
            &["push", "-q", d.join("origin.git").to_str().unwrap(), "main"],
        );

        // Root needs the privilege separation directory; any other user can run sshd for
        // itself on a high port.
        if Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
        {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n",
                host_key.display(),
                d.join("authorized_keys").display()
            ),
        )
        .unwrap();
        let sshd = Command::new(sshd_binary())
            .args(["-D", "-e", "-f", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            sshd,
            port,
            host_public,
            client_key,
            repo: d.join("origin.git"),
            user,
            dir,
        }
    }

    fn url(&self) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            self.repo.display()
        )
    }

    fn known_hosts(&self) -> String {
        let mut parts = self.host_public.split_whitespace();
        let (kind, blob) = (parts.next().unwrap(), parts.next().unwrap());
        format!("# test\n[127.0.0.1]:{} {kind} {blob}\n", self.port)
    }

    fn source(&self, key: &Path, known_hosts: String, cache: &str) -> GitSource {
        GitSource {
            url: self.url(),
            branch: "main".into(),
            path: Some("rollouts".into()),
            cache: self.dir.path().join(cache),
            ssh_key: Some(SshKey {
                private_key: std::fs::read_to_string(key).unwrap(),
                passphrase: None,
            }),
            known_hosts: Some(known_hosts),
            ..Default::default()
        }
    }
}

#[test]
fn a_key_from_memory_fetches_over_ssh_with_the_host_key_checked() {
    let server = Server::start();
    let snap = server
        .source(&server.client_key, server.known_hosts(), "ok.git")
        .fetch()
        .expect("the authorized key fetches");
    assert!(
        snap.files.contains_key("hub.yaml"),
        "{:?}",
        snap.files.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        snap.revision.as_deref().map(str::len),
        Some(40),
        "the commit id is the revision"
    );
}

#[test]
fn a_wrong_key_or_an_unknown_host_key_fails_the_fetch_and_says_why() {
    let server = Server::start();
    let (stranger, _) = keygen(server.dir.path(), "stranger_key");
    let start = Instant::now();
    let e = server
        .source(&stranger, server.known_hosts(), "wrong-key.git")
        .fetch()
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "a refused key is not retried forever"
    );
    assert!(e.contains(&server.url()), "the error names the URL: {e}");
    assert!(
        e.to_lowercase().contains("auth"),
        "the error says authentication failed: {e}"
    );
    assert!(!e.contains("PRIVATE KEY"), "no key material in errors: {e}");

    // A known_hosts that holds another key for this host: the fetch stops before auth.
    let (_, other_public) = keygen(server.dir.path(), "other_host_key");
    let mut parts = other_public.split_whitespace();
    let other = format!(
        "[127.0.0.1]:{} {} {}\n",
        server.port,
        parts.next().unwrap(),
        parts.next().unwrap()
    );
    let e = server
        .source(&server.client_key, other, "wrong-host.git")
        .fetch()
        .unwrap_err()
        .to_string();
    // libgit2 words it "invalid or unknown remote ssh hostkey".
    assert!(
        e.replace(' ', "").to_lowercase().contains("hostkey") && e.contains("127.0.0.1"),
        "the error names the host key check: {e}"
    );
}

#[test]
fn known_hosts_entries_match_by_host_and_key() {
    use base64::Engine;
    let key = b"raw-key-blob";
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let text = format!(
        "# comment\nexample.com,10.0.0.1 ssh-ed25519 {b64}\n[127.0.0.1]:2222 ssh-ed25519 {b64}\n"
    );
    let known =
        |host: &str, key: &[u8]| ringmaster::run::sources::git::known_host(&text, host, key);
    assert!(known("example.com", key));
    assert!(known("10.0.0.1", key));
    assert!(known("127.0.0.1", key));
    assert!(!known("example.org", key));
    assert!(!known("example.com", b"another-key"));
}
