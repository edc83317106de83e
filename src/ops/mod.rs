//! CLI clients of a running controller's HTTP API: `ringmaster status [-w]` and
//! `ringmaster promote|pause|resume|abort|retry NAME`; and [`plan`], which asks a hub
//! what each ring would reach.
//!
//! Exit codes a CI pipeline can use: 0 done, 1 refused (no such rollout, the API said
//! no), 2 the command itself failed (the API unreachable, a bad answer).

pub mod plan;

use crate::resources::OperationKind;
use crate::run::store::StoredRollout;
use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the API is (shared flags).
#[derive(clap::Args, Debug, Clone)]
pub struct ApiFlags {
    /// The API of `ringmaster run`.
    #[arg(long, env = "RINGMASTER_API", default_value = "http://127.0.0.1:9090")]
    pub api: String,
    /// Namespace of NAME (when NAME is not `namespace/name` and is ambiguous).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Flags of `ringmaster status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// A rollout (`name` or `namespace/name`); every rollout when omitted.
    pub name: Option<String>,
    /// Keep watching: redraw the table whenever it changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often to poll with `-w`.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse_duration)]
    pub interval: Duration,
    /// `--api` and `-n`: where the API is and the namespace of NAME.
    #[command(flatten)]
    pub api: ApiFlags,
}

/// Flags of `ringmaster promote|pause|resume|abort|retry`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperationArgs {
    /// The rollout (`name` or `namespace/name`).
    pub name: String,
    /// Aim the request at this revision only (ignored by the controller for any other).
    #[arg(long)]
    pub revision: Option<String>,
    /// Aim the request at this ring only.
    #[arg(long)]
    pub ring: Option<String>,
    /// Environment variable holding the API's bearer token.
    #[arg(long, default_value = "RINGMASTER_API_TOKEN")]
    pub token_env: String,
    /// File holding the API's bearer token (instead of --token-env).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// `--api` and `-n`: where the API is and the namespace of NAME.
    #[command(flatten)]
    pub api: ApiFlags,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// What `GET /api/v1/rollouts` answers: the rollouts, and the source files that fail.
struct Listing {
    items: Vec<StoredRollout>,
    /// `path: problems` of each failing source file.
    failing_files: Vec<String>,
    /// Why the last read of the source failed, if it did.
    source_error: Option<String>,
}

async fn list(client: &reqwest::Client, api: &str) -> Result<Listing> {
    let url = format!("{}/api/v1/rollouts", api.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    let body: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("{url}: not JSON"))?;
    let items = serde_json::from_value(body["items"].clone())
        .with_context(|| format!("{url}: unexpected answer"))?;
    let failing_files = body["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| Some(format!("{}: {}", f["path"].as_str()?, f["error"].as_str()?)))
        .collect();
    let source_error = body["sourceError"].as_str().map(str::to_string);
    Ok(Listing {
        items,
        failing_files,
        source_error,
    })
}

/// The `DeviceRings` lines of `ringmaster status` (`GET /api/v1/devicerings`), one per
/// resource in `namespace` (all without one): devices per ring, pending writes,
/// conflicts, hand-set tags, and a hub or file problem. Empty when the controller has none
/// or does not serve the route (Kubernetes mode: `kubectl get drg`).
async fn rings_lines(client: &reqwest::Client, api: &str, namespace: Option<&str>) -> String {
    let url = format!("{}/api/v1/devicerings", api.trim_end_matches('/'));
    let Ok(resp) = client.get(&url).send().await else {
        return String::new();
    };
    if !resp.status().is_success() {
        return String::new();
    }
    let Ok(body) = resp.json::<serde_json::Value>().await else {
        return String::new();
    };
    let mut out = String::new();
    for r in body["items"].as_array().into_iter().flatten() {
        let ns = r["namespace"].as_str().unwrap_or_default();
        if namespace.is_some_and(|n| n != ns) {
            continue;
        }
        let st = &r["status"];
        let rings: Vec<String> = r["spec"]["rings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .map(|n| format!("{n} {}", st["rings"][n].as_u64().unwrap_or(0)))
            .collect();
        out.push_str(&format!(
            "devicerings {ns}/{}: {} devices ({}), {} writes pending, {} conflicts, {} hand-set\n",
            r["name"].as_str().unwrap_or_default(),
            st["devices"].as_u64().unwrap_or(0),
            rings.join(", "),
            st["pendingWrites"].as_u64().unwrap_or(0),
            st["conflicts"].as_u64().unwrap_or(0),
            st["handSetCount"].as_u64().unwrap_or(0),
        ));
        for e in [&r["sourceError"], &r["hubError"]] {
            if let Some(e) = e.as_str() {
                out.push_str(&format!(
                    "devicerings {ns}/{}: {e}\n",
                    r["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// Picks the rollouts NAME means.
fn select<'a>(
    items: &'a [StoredRollout],
    name: Option<&str>,
    namespace: Option<&str>,
) -> Vec<&'a StoredRollout> {
    items
        .iter()
        .filter(|r| match name.map(|n| n.split_once('/')) {
            None => namespace.is_none_or(|ns| r.namespace == ns),
            Some(Some((ns, n))) => r.namespace == ns && r.name == n,
            Some(None) => {
                r.name == name.unwrap_or_default() && namespace.is_none_or(|ns| r.namespace == ns)
            }
        })
        .collect()
}

/// `kubectl get`-style age: `45s`, `12m`, `3h`, `5d`.
pub fn age(created: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = created.parse::<jiff::Timestamp>() else {
        return "?".into();
    };
    let s = now.duration_since(t).as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The status table: NAMESPACE NAME PHASE RING STATE APPLIED REVISION AGE.
pub fn table(items: &[&StoredRollout], now: jiff::Timestamp) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "PHASE",
            "RING",
            "STATE",
            "APPLIED",
            "REVISION",
            "AGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in items {
        let st = &r.status;
        let phase = if r.deleting {
            "Deleting".to_string()
        } else {
            st.phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Pending".into())
        };
        let ring = st.ring.as_ref();
        let applied = match ring.and_then(|g| g.applied) {
            Some(a) => format!("{a}/{}", ring.and_then(|g| g.targeted).unwrap_or(0)),
            None => "-".into(),
        };
        let mut revision = st.revision.clone().unwrap_or_else(|| "-".into());
        if r.error.is_some() {
            revision.push_str(" (!)");
        }
        rows.push(vec![
            r.namespace.clone(),
            r.name.clone(),
            phase,
            ring.map(|g| g.name.clone()).unwrap_or_else(|| "-".into()),
            ring.map(|g| format!("{:?}", g.state))
                .unwrap_or_else(|| "-".into()),
            applied,
            revision,
            age(&r.created, now),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `ringmaster status [NAME] [-w]`.
pub fn status(args: StatusArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let client = http()?;
        let mut last = String::new();
        loop {
            let listing = list(&client, &args.api.api).await?;
            let chosen = select(
                &listing.items,
                args.name.as_deref(),
                args.api.namespace.as_deref(),
            );
            if let Some(n) = &args.name
                && chosen.is_empty()
                && !args.watch
            {
                eprintln!("no DeviceRollout {n}");
                return Ok(ExitCode::from(1));
            }
            let mut text = table(&chosen, jiff::Timestamp::now());
            for r in &chosen {
                if let Some(e) = &r.error {
                    text.push_str(&format!("{}/{}: {e}\n", r.namespace, r.name));
                }
            }
            if args.name.is_none() {
                text.push_str(
                    &rings_lines(&client, &args.api.api, args.api.namespace.as_deref()).await,
                );
                for f in &listing.failing_files {
                    text.push_str(&format!("source file {f}\n"));
                }
            }
            if let Some(e) = &listing.source_error {
                text.push_str(&format!(
                    "source: the last read failed, what was applied stays as it is: {e}\n"
                ));
            }
            if !args.watch {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            // Redraw only when something other than the age changed.
            let key: String = text
                .lines()
                .map(|l| l.rsplit_once("   ").map_or(l, |(a, _)| a))
                .collect::<Vec<_>>()
                .join("\n");
            if key != last {
                let mut out = std::io::stdout().lock();
                if out.is_terminal() {
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                write!(out, "{text}")?;
                if !out.is_terminal() {
                    writeln!(out)?;
                }
                out.flush()?;
                last = key;
            }
            tokio::time::sleep(args.interval).await;
        }
    })
}

/// `ringmaster promote|pause|resume|abort|retry NAME`.
pub fn operation(kind: OperationKind, args: OperationArgs) -> Result<ExitCode> {
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var(&args.token_env)
            .ok()
            .map(|t| t.trim().to_string()),
    };
    runtime()?.block_on(async {
        let client = http()?;
        let (ns, name) = match args.name.split_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => match &args.api.namespace {
                Some(ns) => (ns.clone(), args.name.clone()),
                None => {
                    let listing = list(&client, &args.api.api).await?;
                    let found = select(&listing.items, Some(&args.name), None);
                    match found.as_slice() {
                        [one] => (one.namespace.clone(), one.name.clone()),
                        [] => {
                            eprintln!("no DeviceRollout {}", args.name);
                            return Ok(ExitCode::from(1));
                        }
                        _ => {
                            eprintln!(
                                "{} is in several namespaces: give -n NAMESPACE or namespace/name",
                                args.name
                            );
                            return Ok(ExitCode::from(1));
                        }
                    }
                }
            },
        };
        let url = format!(
            "{}/api/v1/rollouts/{ns}/{name}/{}",
            args.api.api.trim_end_matches('/'),
            kind.name()
        );
        let mut req = client
            .post(&url)
            .json(&serde_json::json!({"revision": args.revision, "ring": args.ring}));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.is_success() {
            println!(
                "{} queued for {ns}/{name} (request {})",
                kind.name(),
                body["operation"]["id"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!(
                "{} {ns}/{name}: {status}: {}",
                kind.name(),
                body["error"].as_str().unwrap_or("")
            );
            Ok(ExitCode::from(if status.is_client_error() { 1 } else { 2 }))
        }
    })
}
