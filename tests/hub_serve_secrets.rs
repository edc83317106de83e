//! `hub serve` never writes a connection string to a log stream: on a pipe (a pod log, a
//! CI log) stdout says where to get it instead; `--connection-string-file` writes it to a
//! file only its owner can read, and a client connects with what the file holds.

use ringmaster::client::Hub as _;
use ringmaster::client::azure::{AzureHub, AzureHubOptions};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `hub serve` with `extra` flags (stdout and stderr piped) and returns it with its
/// stdout lines up to the one that says where the connection string is.
fn start(extra: &[&str]) -> (Killed, Vec<String>) {
    // Killed at once, so that a panic below does not leave the process behind.
    let mut child = Killed(
        Command::new(BIN)
            .args(["hub", "serve", "--in-memory", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("hub serve said where its connection string is: {lines:?}"));
        let done = line.starts_with("connection string: ");
        lines.push(line);
        if done {
            return (child, lines);
        }
    }
}

fn stderr_of(mut p: Killed) -> String {
    let _ = p.0.kill();
    let _ = p.0.wait();
    let mut err = String::new();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    err
}

#[test]
fn on_a_pipe_the_connection_string_is_not_printed() {
    let (p, lines) = start(&[]);
    let out = lines.join("\n");
    assert!(!out.contains("SharedAccessKey="), "stdout: {out}");
    assert!(out.contains("--connection-string-file"), "says how: {out}");
    let err = stderr_of(p);
    assert!(!err.contains("SharedAccessKey="), "stderr: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_string_file_is_private_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.cs");
    // An existing, world-readable file is replaced by a private one.
    std::fs::write(&file, "old").unwrap();
    let (p, lines) = start(&["--connection-string-file", file.to_str().unwrap()]);
    let out = lines.join("\n");
    assert!(!out.contains("SharedAccessKey="), "stdout: {out}");
    assert!(
        out.contains(file.to_str().unwrap()),
        "names the file: {out}"
    );
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("ringmaster hub listening on "))
        .unwrap()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let cs = text.lines().next().unwrap();
    assert!(cs.starts_with("HostName=") && cs.contains("SharedAccessKeyName=iothubowner"));
    let hub = AzureHub::new(
        cs,
        AzureHubOptions {
            base_url: Some(url),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(hub.count("*").await.unwrap(), 0);
    let err = stderr_of(p);
    assert!(!err.contains("SharedAccessKey="), "stderr: {err}");
}
