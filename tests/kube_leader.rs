//! Leader election of `run --kube` on a real kube-apiserver, with two controller processes:
//! SIGTERM hands the Lease over at once, kill -9 makes the standby wait for the expiry,
//! and a leader that cannot reach the API server stops saying so (`/readyz`,
//! `ringmaster_leader`) before the Lease would have expired. Skips with one line when the
//! API server or etcd is absent (`scripts/kube-env`).

#[path = "common/kube_env.rs"]
mod kube_env;
#[path = "common/proc.rs"]
mod proc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_env::{KubeEnv, free_port, http_get, install_crds, poll};
use std::process::Command;
use std::time::Duration;

struct Replica {
    proc: proc::Proc,
    identity: String,
    metrics: u16,
}

impl Replica {
    fn start(env: &KubeEnv, identity: &str) -> Replica {
        let metrics = free_port();
        let proc = proc::Proc::spawn(env.ringmaster().args([
            "run",
            "--kube",
            "--leader-election",
            "--lease-namespace",
            "default",
            "--identity",
            identity,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
        ]));
        Replica {
            proc,
            identity: identity.to_string(),
            metrics,
        }
    }

    /// `Some(true/false)` from `ringmaster_leader`; `None` while it does not answer.
    async fn leads(&self) -> Option<bool> {
        let (_, body) = http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics)).await?;
        let line = body.lines().find(|l| l.starts_with("ringmaster_leader "))?;
        Some(line.ends_with(" 1"))
    }

    async fn readyz(&self) -> Option<String> {
        http_get(&format!("http://127.0.0.1:{}/readyz", self.metrics))
            .await
            .map(|(_, b)| b)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.proc.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

async fn holder(env: &KubeEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client().await, "default");
    leases
        .get("ringmaster-controller")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Starts two replicas and returns (leader, standby) once one leads.
async fn two_replicas(env: &KubeEnv) -> (Replica, Replica) {
    let a = Replica::start(env, "replica-a");
    poll(60, "replica-a leads", || async {
        a.leads().await.filter(|l| *l)
    })
    .await;
    let b = Replica::start(env, "replica-b");
    poll(60, "replica-b is a standby", || async {
        b.leads().await.filter(|l| !*l)
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_over_at_once_and_kill_9_waits_for_its_expiry() {
    let Some(env) = KubeEnv::start() else { return };
    install_crds(&env.client().await).await;

    // SIGTERM: the leader clears the Lease before it exits, and the standby leads at its
    // next read (every 2 s), long before the 15 s expiry.
    let (mut a, b) = two_replicas(&env).await;
    assert_eq!(holder(&env).await.as_deref(), Some("replica-a"));
    a.signal("-TERM");
    let status = a.proc.child.wait().unwrap();
    assert!(status.success(), "replica-a exited with {status}");
    assert_ne!(
        holder(&env).await.as_deref(),
        Some("replica-a"),
        "replica-a left the Lease held"
    );
    let start = tokio::time::Instant::now();
    poll(30, "replica-b leads", || async {
        b.leads().await.filter(|l| *l)
    })
    .await;
    let took = start.elapsed();
    eprintln!("after SIGTERM the standby led in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the standby took {took:?}: it waited for the expiry"
    );
    assert_eq!(holder(&env).await.as_deref(), Some("replica-b"));

    // kill -9: nothing releases the Lease; a new standby takes it after the expiry.
    let c = Replica::start(&env, "replica-c");
    poll(60, "replica-c is a standby", || async {
        c.leads().await.filter(|l| !*l)
    })
    .await;
    b.signal("-KILL");
    let killed = tokio::time::Instant::now();
    assert_eq!(holder(&env).await.as_deref(), Some("replica-b"));
    poll(60, "replica-c leads after the expiry", || async {
        c.leads().await.filter(|l| *l)
    })
    .await;
    eprintln!("after kill -9 the standby led in {:?}", killed.elapsed());
    assert_eq!(holder(&env).await.as_deref(), Some("replica-c"));
    let _ = b.identity;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_saying_leader_before_the_lease_expires() {
    let Some(env) = KubeEnv::start() else { return };
    install_crds(&env.client().await).await;
    let a = Replica::start(&env, "replica-a");
    poll(60, "replica-a leads", || async {
        a.leads().await.filter(|l| *l)
    })
    .await;
    // `/readyz` turns ready once the watch has listed, which may follow the Lease a moment.
    poll(30, "replica-a is ready as leader", || async {
        a.readyz().await.filter(|r| r.contains("(leader)"))
    })
    .await;

    // The API server stops answering (SIGSTOP: connections hang, as in a network outage).
    let pid = std::fs::read_to_string(env.dir.join("apiserver.pid")).unwrap();
    let stop = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, pid.trim()])
                .status()
                .unwrap()
                .success()
        )
    };
    stop("-STOP");
    let start = tokio::time::Instant::now();
    poll(30, "replica-a steps down", || async {
        a.leads().await.filter(|l| !*l)
    })
    .await;
    let took = start.elapsed();
    eprintln!("cut off from the API server, the leader stepped down after {took:?}");
    let readyz = a.readyz().await.unwrap();
    stop("-CONT");
    assert!(
        took < Duration::from_secs(15),
        "replica-a said leader for {took:?}, past the Lease's 15 s"
    );
    assert!(!readyz.contains("(leader)"), "{readyz}");

    // Back: it leads again (its own Lease, unchanged, or taken anew).
    poll(60, "replica-a leads again", || async {
        a.leads().await.filter(|l| *l)
    })
    .await;
}
