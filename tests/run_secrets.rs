//! Secrets at rest and at start, with the built binary: an empty secret is refused before
//! anything starts, naming the flag; the state store is readable by its owner only.

use assert_cmd::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

#[test]
fn an_empty_secret_is_refused_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let state = dir.path().join("state.db");
    let empty_s = empty.to_str().unwrap();
    let src_s = src.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--dir", src_s, "--webhook-secret-file", empty_s],
            "--webhook-secret-file",
        ),
        (
            &["--dir", src_s, "--api-token-env", "RM_TEST_EMPTY"],
            "--api-token-env RM_TEST_EMPTY",
        ),
        (
            &["--dir", src_s, "--api-token-file", empty_s],
            "--api-token-file",
        ),
        (
            &[
                "--git",
                "file:///nonexistent/repo.git",
                "--git-token-file",
                empty_s,
            ],
            "--git-token-file",
        ),
    ];
    for (args, flag) in cases {
        let out = Command::new(BIN)
            .arg("run")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--state"])
            .arg(&state)
            .env("RM_TEST_EMPTY", "")
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("is empty"),
            "{args:?}: the error names {flag}: {stderr}"
        );
        assert!(
            !state.exists(),
            "nothing is created before the secrets are read"
        );
    }
}
