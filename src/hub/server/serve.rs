//! `ringmaster hub serve`: the embedded hub as a server.
//!
//! Flags are parsed, then checked and turned into a [`Plan`] before anything starts
//! (store opened, keys loaded or generated, TLS made), then the server runs until Ctrl-C
//! or SIGTERM. Every write commits to the store before it is answered, so stopping the
//! process at any time loses nothing that was acknowledged.
//!
//! The service connection string (with the `iothubowner` key) is printed once to stdout
//! only when stdout is a terminal (the user's own secret on their own screen); with
//! `--connection-string-file` it goes to a file only its owner can read. A pipe (a pod
//! log, a CI log) never gets it, and logs (stderr) never carry keys.

use super::IfMatchMode;
use super::api::{DEFAULT_MAX_BODY, ServerOptions, router};
use super::auth::{Authenticator, DEFAULT_POLICIES, Policy};
use super::limits::{Faults, ThrottleLimits};
use super::tls::{self, SelfSigned};
use crate::clock::SystemClock;
use crate::hub::fleet::{FleetAgent, FleetSpec};
use crate::hub::{EmbeddedHub, HubOptions};
use crate::iothub::sas::{ConnectionString, SasKey};
use crate::net::{self, Limits};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `ringmaster hub serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// SQLite file that keeps devices, twins, configurations and the policy keys.
    #[arg(long, default_value = "ringmaster-hub.db")]
    pub store: PathBuf,
    /// Keep the hub in memory only: nothing survives a restart, keys change every start.
    #[arg(long)]
    pub in_memory: bool,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a generated CA and server certificate (for localhost, 127.0.0.1
    /// and --host-name), kept beside the store; the CA's path is printed.
    #[arg(long)]
    pub tls_self_signed: bool,
    /// Where the generated certificates go (default: beside the store).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Create and run a simulated fleet from this YAML spec (ticks every second).
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// How often the configuration engine runs (`5s`, `500ms`, `1m`).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub cycle_interval: Duration,
    /// The HostName in the connection string, which clients connect to and sign tokens
    /// for (default: `localhost:<port>` with TLS, the listen address without).
    #[arg(long)]
    pub host_name: Option<String>,
    /// A policy key, `policy=<base64 key>`; repeat or separate with commas. Policies not
    /// given keep the key stored from an earlier start, or get a new one.
    #[arg(
        long = "key",
        env = "RINGMASTER_HUB_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub keys: Vec<String>,
    /// Print the connection string of every policy, not only iothubowner.
    #[arg(long)]
    pub print_all_keys: bool,
    /// Write the connection string(s) to this file, readable by its owner only (0600).
    /// They are printed only when stdout is a terminal, never to a log stream.
    #[arg(long)]
    pub connection_string_file: Option<PathBuf>,
    /// Throttle like one IoT Hub S1 unit (429 ThrottlingException over the limits).
    #[arg(long)]
    pub throttle: bool,
    /// Number of S1 units the throttle allows for (with --throttle).
    #[arg(long, default_value_t = 1)]
    pub throttle_units: u32,
    /// Share of requests answered with 500 or 503 before they run (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Delay added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// How a bare (unquoted) If-Match etag is treated: enforced (strict) or ignored as
    /// Azure IoT Hub does (azure).
    #[arg(long, value_enum, default_value_t)]
    pub if_match: IfMatchMode,
    /// Largest request body in bytes (413 MessageTooLarge beyond).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Time a client has to send a request's head, from connect (TLS handshake included)
    /// and after each answer on a kept-alive connection (`15s`, `500ms`).
    #[arg(long, default_value = "15s", value_parser = crate::duration::parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a connection may move no byte before it is closed; keep it above the slowest
    /// request (a configuration write over a large fleet).
    #[arg(long, default_value = "120s", value_parser = crate::duration::parse_duration)]
    pub idle_timeout: Duration,
    /// Most connections served at once; more wait until one ends.
    #[arg(long, default_value_t = Limits::DEFAULT.max_connections as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// Keys for the default policies: from flags, else from the store, else new (and stored).
fn policy_keys(hub: &EmbeddedHub, given: &[String]) -> Result<Vec<Policy>> {
    let mut flags = std::collections::BTreeMap::new();
    for g in given.iter().filter(|g| !g.trim().is_empty()) {
        let (name, key) = g.split_once('=').with_context(|| {
            "--key: expected policy=<base64 key> (the value is not shown)".to_string()
        })?;
        let name = name.trim();
        if !DEFAULT_POLICIES.iter().any(|(p, _)| *p == name) {
            bail!(
                "--key: '{name}' is not a policy of this hub; use one of {}",
                DEFAULT_POLICIES.map(|(p, _)| p).join(", ")
            );
        }
        let key = SasKey::from_base64(key)
            .with_context(|| format!("--key {name}=...: the key is not valid base64"))?;
        flags.insert(name.to_string(), key);
    }
    let mut out = Vec::new();
    for (name, rights) in DEFAULT_POLICIES {
        let meta = format!("sas.policy.{name}");
        let key = match flags.remove(name) {
            Some(k) => k,
            None => match hub.store_meta(&meta)? {
                Some(text) => SasKey::from_base64(&text)
                    .with_context(|| format!("the store's key for policy {name} is damaged"))?,
                None => {
                    let k = SasKey::generate();
                    hub.set_store_meta(&meta, k.expose())?;
                    k
                }
            },
        };
        out.push(Policy {
            name: name.to_string(),
            key,
            rights,
        });
    }
    Ok(out)
}

/// Runs `ringmaster hub serve` until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.fault_rate) {
        bail!(
            "--fault-rate {}: give a share between 0 and 1",
            args.fault_rate
        );
    }
    let clock = Arc::new(SystemClock);
    let hub = if args.in_memory {
        EmbeddedHub::in_memory(clock)
    } else {
        let path = args.store.clone();
        tokio::task::spawn_blocking(move || EmbeddedHub::open(&path, clock, HubOptions::default()))
            .await?
            .with_context(|| {
                format!(
                    "--store {}: cannot open the hub's store",
                    args.store.display()
                )
            })?
    };
    let policies = policy_keys(&hub, &args.keys)?;

    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let local = tcp.local_addr()?;
    let tls_on = args.tls_self_signed || args.tls_cert.is_some();
    let host_name = args.host_name.clone().unwrap_or_else(|| {
        if tls_on && local.ip().is_loopback() {
            format!("localhost:{}", local.port())
        } else {
            local.to_string()
        }
    });

    let mut ca_path = None;
    let tls_config = if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        Some(tls::from_files(cert, key)?)
    } else if args.tls_self_signed {
        let dir = match (&args.tls_dir, args.in_memory) {
            (Some(d), _) => d.clone(),
            (None, true) => {
                std::env::temp_dir().join(format!("ringmaster-hub-{}", std::process::id()))
            }
            (None, false) => args
                .store
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let stem = args
            .store
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ringmaster-hub".into());
        let files = SelfSigned::in_dir(&dir, &stem);
        let bare_host = host_name
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&host_name);
        let bare_host = bare_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let listen_ip = (!local.ip().is_unspecified()).then(|| local.ip().to_string());
        for n in std::iter::once(bare_host).chain(listen_ip) {
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
        let cfg = files.ensure(&names)?;
        ca_path = Some(std::fs::canonicalize(&files.ca_cert).unwrap_or(files.ca_cert.clone()));
        Some(cfg)
    } else {
        None
    };

    let opts = ServerOptions {
        auth: Authenticator::new(&host_name, policies.clone()),
        throttle: args
            .throttle
            .then(|| ThrottleLimits::s1(args.throttle_units)),
        faults: Faults {
            rate: args.fault_rate,
            latency: Duration::from_millis(args.latency_ms),
        },
        if_match: args.if_match,
        max_body_bytes: args.max_body_bytes,
    };
    let app = router(hub.clone(), opts);

    let cycles = hub.spawn_cycles(args.cycle_interval);
    let fleet = match &args.fleet {
        Some(path) => Some(start_fleet(&hub, path).await?),
        None => None,
    };

    // What the user needs, on stdout, once.
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ringmaster hub listening on {scheme}://{local}")?;
    if args.in_memory {
        writeln!(out, "store: in memory (nothing survives a restart)")?;
    } else {
        writeln!(out, "store: {}", args.store.display())?;
    }
    if let Some(ca) = &ca_path {
        writeln!(
            out,
            "CA certificate: {} (Python: REQUESTS_CA_BUNDLE={})",
            ca.display(),
            ca.display()
        )?;
    }
    let secrets: Vec<String> = policies
        .iter()
        .filter(|p| p.name == "iothubowner" || args.print_all_keys)
        .map(|p| {
            ConnectionString {
                host_name: host_name.clone(),
                key_name: p.name.clone(),
                key: p.key.clone(),
            }
            .expose()
        })
        .collect();
    hand_over_secrets(
        &secrets,
        args.connection_string_file.as_deref(),
        "--connection-string-file",
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        &mut out,
        "",
    )?;
    out.flush()?;
    drop(out);
    tracing::info!(address = %local, %host_name, tls = tls_config.is_some(), "hub serving");

    let limits = Limits {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections as usize,
    };
    let result = match tls_config {
        Some(cfg) => {
            let acceptor = tls::acceptor(cfg);
            net::serve_with(tcp, app, limits, shutdown(), move |io| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(io).await }
            })
            .await
        }
        None => net::serve(tcp, app, limits, shutdown()).await,
    };
    cycles.abort();
    if let Some(f) = fleet {
        f.abort();
    }
    result.context("the server stopped with an error")
}

/// Hands connection strings to the user, never to a log stream: written to `file` (mode
/// 0600, replaced atomically) when given, printed on `out` only when it is a terminal.
/// Otherwise `out` gets a line that says how to get them (`flag`). Printed strings follow
/// `prefix`; the line about the file or the flag starts with `connection string: `.
pub fn hand_over_secrets(
    secrets: &[String],
    file: Option<&std::path::Path>,
    flag: &str,
    out_is_terminal: bool,
    out: &mut impl Write,
    prefix: &str,
) -> Result<()> {
    if let Some(path) = file {
        write_private(path, &format!("{}\n", secrets.join("\n")))?;
    }
    if out_is_terminal {
        for s in secrets {
            writeln!(out, "{prefix}{s}")?;
        }
    }
    match file {
        Some(path) => writeln!(out, "connection string: written to {}", path.display())?,
        None if out_is_terminal => {}
        None => writeln!(
            out,
            "connection string: not printed, stdout is not a terminal; give {flag} PATH to have it written to a file only you can read"
        )?,
    }
    Ok(())
}

/// Writes `text` to `path` with mode 0600: into a new temporary file beside it, then
/// renamed over it, so the secret is never in a file others can read.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the fleet's devices and ticks it every second.
async fn start_fleet(
    hub: &EmbeddedHub,
    path: &std::path::Path,
) -> Result<tokio::task::JoinHandle<()>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--fleet {}: cannot read it", path.display()))?;
    let spec = FleetSpec::parse(&path.display().to_string(), &text).map_err(anyhow::Error::msg)?;
    let h = hub.clone();
    let n = spec.devices;
    let mut agent = tokio::task::spawn_blocking(move || FleetAgent::create(&h, spec))
        .await?
        .with_context(|| format!("--fleet {}: cannot create the devices", path.display()))?;
    tracing::info!(devices = n, "simulated fleet running");
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = tokio::task::spawn_blocking(move || {
                let r = agent.tick();
                (agent, r)
            })
            .await;
            match r {
                Ok((a, r)) => {
                    agent = a;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "fleet tick failed");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "fleet tick panicked; the fleet stops");
                    return;
                }
            }
        }
    }))
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_generated_once_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let open =
            || EmbeddedHub::open(&path, Arc::new(SystemClock), HubOptions::default()).unwrap();
        let first = policy_keys(&open(), &[]).unwrap();
        let again = policy_keys(&open(), &[]).unwrap();
        assert_eq!(first.len(), DEFAULT_POLICIES.len());
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.key, b.key, "{}", a.name);
        }
        let k = SasKey::generate();
        let given = policy_keys(&open(), &[format!("service={}", k.expose())]).unwrap();
        assert_eq!(given.iter().find(|p| p.name == "service").unwrap().key, k);
        let e = policy_keys(&open(), &["nobody=abcd".into()]).unwrap_err();
        assert!(e.to_string().contains("not a policy"));
        let e = policy_keys(&open(), &["service=%%%secret".into()]).unwrap_err();
        assert!(!format!("{e:#}").contains("secret"));
    }
}
