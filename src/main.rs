//! The `ringmaster` command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ringmaster", version, about = "Declarative phased rollouts of IoT Hub automatic device configurations")]
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
}

#[derive(Subcommand)]
enum HubCommand {
    /// Measure the embedded hub's engine against SQLite on generated twins and print figures.
    Bench(ringmaster::bench::BenchArgs),
    /// Serve the embedded hub over an Azure IoT Hub compatible REST API.
    Serve(Box<ringmaster::server::ServeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hub(HubCommand::Bench(args)) => ringmaster::bench::run(args),
        Command::Hub(HubCommand::Serve(args)) => serve(*args),
        Command::Crd => ringmaster::cli::crd(),
        Command::Validate(args) => ringmaster::cli::validate(args),
        Command::Demo(args) => ringmaster::demo::run(args),
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
fn serve(args: ringmaster::server::ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Runtime::new()?.block_on(ringmaster::server::run(args))?;
    Ok(ExitCode::SUCCESS)
}
