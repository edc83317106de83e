//! `ringmaster demo`: the whole picture in one process, in virtual time.
//!
//! An in-memory embedded hub, a simulated fleet on it, and the example rollouts, each
//! reconciled by the same [`Driver`] the controller uses. Time is a [`ManualClock`] that
//! the demo loop moves in steps: step the clock, let the fleet report, run the hub's
//! configuration cycle, reconcile every rollout whose requeue is due. `--speed` paces the
//! steps against the wall (virtual seconds per wall second); a step that takes longer to
//! compute than its share of wall time simply makes the run slower, never different.
//!
//! The flow is parse → validate → run, as elsewhere: flags and files are read and checked
//! into a [`Setup`] before the hub is built. What the user sees is in [`view`].
//!
//! Choices worth knowing:
//! - The examples are compiled into the binary, so `ringmaster demo` works from any
//!   directory (and in the container image); `--rollouts` and `--fleet` read other files.
//! - `Hub` documents are listed but every rollout runs against the one embedded hub.
//! - A ring with `approval: true` is approved by the demo itself (an `Operation` of kind
//!   `promote`, as `ringmaster promote` sends), and the log says so.
//! - The expected outcome, and so the exit code: `chiller-fw` ends Healthy and
//!   `chiller-fw-rc` RolledBack. Rollouts without an expectation are shown, not judged;
//!   with `--rollouts` and neither of those names, every rollout must end Healthy or
//!   RolledBack.
//! - Gates judge the Wilson lower bound of a share, so a small ring cannot pass a strict
//!   gate: `lowerBound(n of n) >= 0.90` needs n >= 35. With the examples' 2% canary ring
//!   (and 1% of devices offline) that takes about 5,000 devices; the demo warns below.

mod console;
mod view;

use crate::client::Hub;
use crate::clock::{Clock, ManualClock};
use crate::driver::{Driver, ReconcileInput};
use crate::hub::EmbeddedHub;
use crate::hub::fleet::{FleetAgent, FleetSpec};
use crate::manifest::{Document, load_manifests};
use crate::resources::{
    DeviceRollout, DeviceRolloutStatus, Operation, OperationKind, Phase, RingState,
};
use anyhow::{Context, Result, bail};
use jiff::{SignedDuration, Timestamp};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use view::View;

/// The examples shipped in the binary: (file name, text).
const EXAMPLE_ROLLOUTS: [(&str, &str); 5] = [
    (
        "examples/rollouts/01-hub.yaml",
        include_str!("../../examples/rollouts/01-hub.yaml"),
    ),
    (
        "examples/rollouts/10-baseline.yaml",
        include_str!("../../examples/rollouts/10-baseline.yaml"),
    ),
    (
        "examples/rollouts/20-chiller-firmware.yaml",
        include_str!("../../examples/rollouts/20-chiller-firmware.yaml"),
    ),
    (
        "examples/rollouts/30-chiller-firmware-rc.yaml",
        include_str!("../../examples/rollouts/30-chiller-firmware-rc.yaml"),
    ),
    (
        "examples/rollouts/40-network.yaml",
        include_str!("../../examples/rollouts/40-network.yaml"),
    ),
];
const EXAMPLE_FLEET: (&str, &str) = (
    "examples/fleet/fleet.yaml",
    include_str!("../../examples/fleet/fleet.yaml"),
);

/// What the demo expects of the example rollouts: (name, final phase).
const EXPECTED: [(&str, Phase); 2] = [
    ("chiller-fw", Phase::Healthy),
    ("chiller-fw-rc", Phase::RolledBack),
];

/// Below this many devices the examples' canary rings are too small to pass their gates.
const SMALL_FLEET: usize = 5000;

/// Flags of `ringmaster demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of simulated devices (default: the fleet file's, 10,000 for the example).
    #[arg(long)]
    pub devices: Option<usize>,
    /// Virtual seconds per wall second. The examples settle after about 7 virtual
    /// minutes, so the default takes about 20 s; a large value runs as fast as the
    /// machine allows.
    #[arg(long, default_value_t = 20.0)]
    pub speed: f64,
    /// Virtual time per step of the loop (fleet tick, hub cycle, due reconciles).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_signed_duration)]
    pub step: SignedDuration,
    /// Give up (exit 1) if the rollouts have not settled after this much virtual time.
    #[arg(long, default_value = "3h", value_parser = crate::duration::parse_signed_duration)]
    pub timeout: SignedDuration,
    /// A directory (or file) of DeviceRollout manifests instead of the built-in examples.
    #[arg(long)]
    pub rollouts: Option<PathBuf>,
    /// A fleet spec instead of the built-in `examples/fleet/fleet.yaml`.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// After the demo, serve the hub over its REST API (Azure IoT Hub compatible) and keep
    /// the fleet and the rollouts running in real time until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Where `--keep-running` listens (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// With `--keep-running`: write the hub's connection string to this file (mode
    /// 0600). It is printed only when stdout is a terminal, never to a log stream.
    #[arg(long)]
    pub connection_string_file: Option<PathBuf>,
    /// One line per event even on a terminal (no redrawing).
    #[arg(long)]
    pub plain: bool,
    /// Where `--keep-running` serves the operator console (`/console/`; port 0 picks a
    /// free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub console_listen: SocketAddr,
    /// With `--keep-running`: write the console's sign-in token to this file (mode 0600).
    /// It is printed only when stdout is a terminal.
    #[arg(long)]
    pub console_token_file: Option<PathBuf>,
}

/// Everything read and checked before the demo starts.
#[derive(Debug)]
struct Setup {
    fleet: FleetSpec,
    rollouts: Vec<DeviceRollout>,
    /// Hub documents seen (name, type), listed and otherwise ignored.
    hubs: Vec<String>,
}

/// One rollout as the demo loop tracks it.
pub(crate) struct Tracked {
    pub ro: DeviceRollout,
    pub status: DeviceRolloutStatus,
    /// When the driver wants to look again.
    pub due: Timestamp,
    /// When it first reached a settled phase (virtual time).
    pub settled_at: Option<Timestamp>,
    /// Operator requests from the console, for its next reconcile.
    pub ops: Vec<Operation>,
}

impl Tracked {
    fn name(&self) -> &str {
        self.ro.metadata.name.as_deref().unwrap_or("")
    }
    /// Healthy, RolledBack, Failed, or held at a failed ring: nothing more will happen
    /// without a human.
    fn settled(&self) -> bool {
        matches!(
            self.status.phase,
            Some(Phase::Healthy | Phase::RolledBack | Phase::Failed)
        ) || self
            .status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::Failed)
    }
}

/// Runs `ringmaster demo`.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let setup = prepare(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(play(args, setup))
}

/// Reads the fleet and the rollouts (files or the built-in examples) and checks the flags.
fn prepare(args: &DemoArgs) -> Result<Setup> {
    if args.speed.is_nan() || args.speed <= 0.0 {
        bail!(
            "--speed {}: give the virtual seconds per wall second, a number above 0",
            args.speed
        );
    }
    let (fleet_name, fleet_text) = match &args.fleet {
        Some(p) => (p.display().to_string(), read(p)?),
        None => (EXAMPLE_FLEET.0.to_string(), EXAMPLE_FLEET.1.to_string()),
    };
    let mut fleet = FleetSpec::parse(&fleet_name, &fleet_text).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.devices {
        if n == 0 {
            bail!("--devices 0: give at least one device");
        }
        fleet.devices = n;
    }
    let files: Vec<(String, String)> = match &args.rollouts {
        None => EXAMPLE_ROLLOUTS
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect(),
        Some(p) if p.is_dir() => {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("--rollouts {}: cannot list it", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            paths.sort();
            paths
                .iter()
                .map(|p| Ok((p.display().to_string(), read(p)?)))
                .collect::<Result<_>>()?
        }
        Some(p) => vec![(p.display().to_string(), read(p)?)],
    };
    let mut rollouts = Vec::new();
    let mut hubs = Vec::new();
    for (name, text) in &files {
        let docs = load_manifests(name, text).map_err(|errs| {
            anyhow::anyhow!(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        for d in docs {
            match d {
                Document::DeviceRollout(ro) => rollouts.push(*ro),
                Document::Hub(h) => hubs.push(format!(
                    "{} ({:?})",
                    h.metadata.name.as_deref().unwrap_or(""),
                    h.spec.type_
                )),
                // The demo's fleet is tagged by its fleet file.
                Document::DeviceRings(_) => {}
            }
        }
    }
    if rollouts.is_empty() {
        bail!(
            "no DeviceRollout found in {}",
            files
                .iter()
                .map(|f| f.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(Setup {
        fleet,
        rollouts,
        hubs,
    })
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("{}: cannot read it", p.display()))
}

/// The demo loop, then the summary, then (with `--keep-running`) the served hub.
async fn play(args: DemoArgs, setup: Setup) -> Result<ExitCode> {
    let clock = ManualClock::at_epoch();
    let start = clock.now();
    let hub = EmbeddedHub::in_memory(Arc::new(clock.clone()));
    let mut view = View::new(args.plain, start);
    view.intro(&setup.fleet, &setup.rollouts, &setup.hubs, args.speed);
    if args.rollouts.is_none() && setup.fleet.devices < SMALL_FLEET {
        view.note(start, "demo", &format!("{} devices: the canary rings are too small for the examples' gates to pass (lowerBound >= 0.90 needs 35 devices); expect deadlines, use about {SMALL_FLEET} or more", setup.fleet.devices));
    }
    let mut agent = FleetAgent::create(&hub, setup.fleet.clone())
        .context("cannot create the simulated fleet")?;
    hub.run_cycle()?;
    let driver = Driver::new(
        Arc::new(hub.clone()) as Arc<dyn Hub>,
        Arc::new(clock.clone()),
    );
    let mut tracked: Vec<Tracked> = setup
        .rollouts
        .into_iter()
        .map(|ro| Tracked {
            ro,
            status: DeviceRolloutStatus::default(),
            due: start,
            settled_at: None,
            ops: Vec::new(),
        })
        .collect();

    let wall_start = Instant::now();
    let deadline = start + args.timeout;
    let mut last_frame = Instant::now() - Duration::from_secs(1);
    loop {
        let now = clock.now();
        reconcile_due(&driver, &mut tracked, now, args.step, &mut view).await;
        if tracked.iter().all(Tracked::settled) || now >= deadline {
            break;
        }
        if last_frame.elapsed() >= Duration::from_millis(100) {
            view.frame(&hub, &tracked, now);
            last_frame = Instant::now();
        }
        // Pace: virtual time elapsed / speed is where the wall clock should be.
        let virtual_elapsed = now.duration_since(start).as_secs_f64();
        let wall_target = Duration::from_secs_f64(virtual_elapsed / args.speed);
        if let Some(wait) = wall_target.checked_sub(wall_start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        clock.advance(args.step);
        agent.tick().context("the simulated fleet failed")?;
        hub.run_cycle()
            .context("the hub's configuration cycle failed")?;
    }
    let end = clock.now();
    view.frame(&hub, &tracked, end);
    let ok = outcome_ok(&tracked);
    view.summary(&hub, &tracked, start, end, wall_start.elapsed(), ok);

    if args.keep_running {
        keep_running(&args, hub, clock, agent, driver, tracked, view).await?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reconciles every rollout whose requeue is due, reporting what changed.
async fn reconcile_due(
    driver: &Driver,
    tracked: &mut [Tracked],
    now: Timestamp,
    step: SignedDuration,
    view: &mut View,
) {
    for t in tracked
        .iter_mut()
        .filter(|t| t.due <= now || !t.ops.is_empty())
    {
        let mut operations = std::mem::take(&mut t.ops);
        let auto = auto_approval(&t.status);
        operations.extend(auto.clone());
        let input = ReconcileInput {
            operations,
            ..Default::default()
        };
        if let Some(op) = &auto {
            view.note(
                now,
                t.name(),
                &format!(
                    "ring {} needs approval: the demo promotes it ({})",
                    op.ring.as_deref().unwrap_or("?"),
                    op.id
                ),
            );
        }
        let out = driver.reconcile_with(&t.ro, &t.status, &input).await;
        if let Some(e) = &out.error {
            view.note(now, t.name(), &format!("the hub refused: {e}"));
        }
        let before = std::mem::replace(&mut t.status, out.status);
        view.changes(now, t.name(), &before, &t.status);
        let requeue = SignedDuration::try_from(out.requeue_after).unwrap_or(step);
        t.due = now + requeue;
        // Approvals are the demo's own: look again at the next step, not in 5 minutes.
        if auto_approval(&t.status).is_some() {
            t.due = now + step;
        }
        if t.settled() {
            t.settled_at.get_or_insert(now);
        } else {
            t.settled_at = None;
        }
    }
}

/// The promote request a human would send for a ring waiting for approval.
fn auto_approval(status: &DeviceRolloutStatus) -> Option<Operation> {
    let ring = status
        .ring
        .as_ref()
        .filter(|r| r.state == RingState::AwaitingApproval)?;
    let revision = status.revision.clone();
    Some(Operation {
        id: format!(
            "demo-approve-{}-{}",
            revision.as_deref().unwrap_or("x"),
            ring.name
        ),
        kind: OperationKind::Promote,
        revision,
        ring: Some(ring.name.clone()),
    })
}

/// The expected outcome: see the module docs.
fn outcome_ok(tracked: &[Tracked]) -> bool {
    let expected: Vec<(&Tracked, Phase)> = tracked
        .iter()
        .filter_map(|t| {
            EXPECTED
                .iter()
                .find(|(n, _)| *n == t.name())
                .map(|(_, p)| (t, *p))
        })
        .collect();
    if expected.is_empty() {
        return tracked
            .iter()
            .all(|t| matches!(t.status.phase, Some(Phase::Healthy | Phase::RolledBack)));
    }
    expected.iter().all(|(t, p)| t.status.phase == Some(*p))
}

/// `--keep-running`: the hub over HTTP (the same router as `hub serve`), the fleet and the
/// rollouts in real time, until Ctrl-C.
async fn keep_running(
    args: &DemoArgs,
    hub: EmbeddedHub,
    clock: ManualClock,
    mut agent: FleetAgent,
    driver: Driver,
    mut tracked: Vec<Tracked>,
    mut view: View,
) -> Result<()> {
    use crate::hub::server::auth::{Authenticator, DEFAULT_POLICIES, Policy};
    use crate::hub::server::{ServerOptions, router};
    use crate::iothub::sas::{ConnectionString, SasKey};

    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let local = tcp.local_addr()?;
    let host_name = local.to_string();
    let policies: Vec<Policy> = DEFAULT_POLICIES
        .iter()
        .map(|(name, rights)| Policy {
            name: name.to_string(),
            key: SasKey::generate(),
            rights: *rights,
        })
        .collect();
    let owner = policies
        .iter()
        .find(|p| p.name == "iothubowner")
        .expect("iothubowner is a default policy");
    let cs = ConnectionString {
        host_name: host_name.clone(),
        key_name: owner.name.clone(),
        key: owner.key.clone(),
    };
    let app = router(
        hub.clone(),
        ServerOptions::new(Authenticator::new(&host_name, policies.clone())),
    );
    let server = tokio::spawn(crate::net::serve(
        tcp,
        app,
        crate::net::Limits::default(),
        std::future::pending(),
    ));
    let mut note = Vec::new();
    crate::hub::server::serve::hand_over_secrets(
        &[cs.expose()],
        args.connection_string_file.as_deref(),
        "--connection-string-file",
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        &mut note,
        "connection string: ",
    )?;
    // The operator console, on its own address.
    let driver = Arc::new(driver);
    let console_tcp = tokio::net::TcpListener::bind(args.console_listen)
        .await
        .with_context(|| {
            format!(
                "--console-listen {}: cannot listen there",
                args.console_listen
            )
        })?;
    let token = crate::console::new_token();
    let backend = Arc::new(console::DemoConsole::new(
        driver.clone(),
        token.clone(),
        clock.clone(),
        clock.now(),
    ));
    backend.publish(&tracked);
    let console_url = format!("http://{}/console/", console_tcp.local_addr()?);
    let console_server = tokio::spawn(crate::net::serve(
        console_tcp,
        crate::console::router(backend.clone()),
        crate::net::Limits::default(),
        std::future::pending(),
    ));
    note.extend_from_slice(format!("operator console: {console_url}\n").as_bytes());
    crate::console::hand_over_token(
        &token,
        args.console_token_file.as_deref(),
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        &mut note,
    )?;
    view.serving(&format!("http://{local}"), &String::from_utf8_lossy(&note));

    // Real time from here: one virtual second per wall second.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {
                clock.advance(SignedDuration::from_secs(1));
                agent.tick().context("the simulated fleet failed")?;
                hub.run_cycle().context("the hub's configuration cycle failed")?;
                let now = clock.now();
                backend.deliver(&mut tracked);
                reconcile_due(&driver, &mut tracked, now, SignedDuration::from_secs(1), &mut view).await;
                backend.publish(&tracked);
            }
        }
    }
    server.abort();
    console_server.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_examples_load_and_the_fleet_can_be_resized() {
        let args = DemoArgs {
            devices: Some(100),
            speed: 60.0,
            step: SignedDuration::from_secs(5),
            timeout: SignedDuration::from_hours(3),
            rollouts: None,
            fleet: None,
            keep_running: false,
            connection_string_file: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            plain: true,
            console_listen: "127.0.0.1:0".parse().unwrap(),
            console_token_file: None,
        };
        let s = prepare(&args).unwrap();
        assert_eq!(s.fleet.devices, 100);
        let names: Vec<_> = s
            .rollouts
            .iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["fleet-baseline", "chiller-fw", "chiller-fw-rc", "jumbo-mtu"]
        );
        assert_eq!(s.hubs.len(), 2);
        let bad = DemoArgs { speed: 0.0, ..args };
        assert!(prepare(&bad).unwrap_err().to_string().contains("--speed"));
    }

    #[test]
    fn an_approval_ring_gets_one_promote_per_revision_and_ring() {
        let mut st = DeviceRolloutStatus {
            revision: Some("abcd1234".into()),
            ..Default::default()
        };
        assert!(auto_approval(&st).is_none());
        st.ring = Some(crate::resources::RingStatus {
            index: 1,
            name: "early".into(),
            state: RingState::AwaitingApproval,
            since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
            applied_at: None,
            targeted: None,
            applied: None,
            shielded: None,
        });
        let op = auto_approval(&st).unwrap();
        assert_eq!(op.kind, OperationKind::Promote);
        assert_eq!(op.ring.as_deref(), Some("early"));
        assert_eq!(op.revision.as_deref(), Some("abcd1234"));
        assert_eq!(op.id, "demo-approve-abcd1234-early");
    }
}
