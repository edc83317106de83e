//! A child process killed on drop, with its stdout lines on a channel: for the tests that
//! run the `ringmaster` binary and read what it prints.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// A started process; killed (and waited for) when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` with stdout piped into [`Proc::lines`] and stderr inherited.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ringmaster");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first line that `f` accepts (60 s at most).
    /// For `ringmaster hub serve … --connection-string-file CS_FILE`: waits until it says
    /// where it listens and that it wrote the connection string; returns the URL and the
    /// connection string (the file's first line).
    pub fn hub_serve_ready(&self, cs_file: &std::path::Path) -> (String, String) {
        let url = self.wait_for(|l| {
            l.strip_prefix("ringmaster hub listening on ")
                .map(str::to_string)
        });
        self.wait_for(|l| {
            l.starts_with("connection string: written to ")
                .then_some(())
        });
        let cs = std::fs::read_to_string(cs_file).unwrap();
        (url, cs.lines().next().unwrap().to_string())
    }

    pub fn wait_for<T>(&self, mut f: impl FnMut(&str) -> Option<T>) -> T {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the process printed what was expected");
            if let Some(v) = f(&line) {
                return v;
            }
        }
    }
}
