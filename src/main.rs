//! The `ringmaster` command line.

use clap::{Parser, Subcommand};
use ringmaster::resources::OperationKind;
use std::process::ExitCode;

/// mimalloc: the hub's twins and the engine's per-twin work allocate many small objects,
/// and glibc's allocator was about 40% of a large configuration change's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringmaster",
    version,
    about = "Declarative phased rollouts of IoT Hub automatic device configurations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded IoT hub.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Print the CustomResourceDefinitions (DeviceRollout, Hub) as YAML.
    Crd,
    /// Check DeviceRollout and Hub manifests offline: exit 0 when valid, 1 when not.
    Validate(ringmaster::cli::ValidateArgs),
    /// Everything in one process: the embedded hub, a simulated fleet and the example
    /// rollouts, live in virtual time (a faulty one is rolled back).
    Demo(ringmaster::demo::DemoArgs),
    /// The controller: reconcile the DeviceRollouts of a directory, a git repository or Kubernetes (`--kube`).
    Run(Box<ringmaster::cli::RunCommand>),
    /// What each ring of each rollout would reach on a hub: exit 0 no change, 1 changes, 2 error.
    Plan(ringmaster::ops::plan::PlanArgs),
    /// Show rollouts from a running controller's API (`-w` to keep watching).
    Status(ringmaster::ops::StatusArgs),
    /// Approve an approval ring, or pass the current ring now.
    Promote(ringmaster::ops::OperationArgs),
    /// Hold a rollout where it is (no widening; rollbacks still happen).
    Pause(ringmaster::ops::OperationArgs),
    /// Lift a pause.
    Resume(ringmaster::ops::OperationArgs),
    /// Roll the current revision back now.
    Abort(ringmaster::ops::OperationArgs),
    /// Start a rolled-back revision again at ring 0, or judge a failed ring again.
    Retry(ringmaster::ops::OperationArgs),
}

#[derive(Subcommand)]
enum HubCommand {
    /// Measure the embedded hub's engine against SQLite on generated twins and print figures.
    Bench(ringmaster::hub::bench::BenchArgs),
    /// Serve the embedded hub over an Azure IoT Hub compatible REST API.
    Serve(Box<ringmaster::hub::server::ServeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hub(HubCommand::Bench(args)) => ringmaster::hub::bench::run(args),
        Command::Hub(HubCommand::Serve(args)) => serve(*args),
        Command::Crd => ringmaster::cli::crd(),
        Command::Validate(args) => ringmaster::cli::validate(args),
        Command::Demo(args) => ringmaster::demo::run(args),
        Command::Run(args) => run(*args),
        Command::Plan(args) => ringmaster::ops::plan::plan(args),
        Command::Status(args) => ringmaster::ops::status(args),
        Command::Promote(args) => ringmaster::ops::operation(OperationKind::Promote, args),
        Command::Pause(args) => ringmaster::ops::operation(OperationKind::Pause, args),
        Command::Resume(args) => ringmaster::ops::operation(OperationKind::Resume, args),
        Command::Abort(args) => ringmaster::ops::operation(OperationKind::Abort, args),
        Command::Retry(args) => ringmaster::ops::operation(OperationKind::Retry, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `hub serve`: logs to stderr (`RUST_LOG`, default info), the server on a tokio runtime.
fn serve(args: ringmaster::hub::server::ServeArgs) -> anyhow::Result<ExitCode> {
    init_logs();
    tokio::runtime::Runtime::new()?.block_on(ringmaster::hub::server::run(args))?;
    Ok(ExitCode::SUCCESS)
}

/// `run`: logs to stderr, the controller on a tokio runtime.
fn run(args: ringmaster::cli::RunCommand) -> anyhow::Result<ExitCode> {
    init_logs();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(ringmaster::cli::run(args));
    // A source read still running on the blocking pool (a git fetch waiting for its
    // timeout, a scan of a stuck mount) does not hold up the exit after SIGTERM.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr (`RUST_LOG`, default info).
fn init_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}
