//! The `ringmaster` command line.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ringmaster", version, about = "Phased rollouts of IoT Hub automatic device configurations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The embedded IoT hub.
    #[command(subcommand)]
    Hub(HubCommand),
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Serve the embedded hub over an Azure IoT Hub compatible REST API.
    Serve(ringmaster::server::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Hub(HubCommand::Serve(args)) => rt.block_on(ringmaster::server::run(args)),
    }
}
