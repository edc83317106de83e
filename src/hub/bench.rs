//! `ringmaster hub bench`: figures for the embedded hub's engine, measured in one run
//! against a baseline (SQLite evaluating the same condition with `json_extract` over the
//! same twins stored as JSON text). Nothing here is asserted: the figures are printed.
//!
//! Build with `--release`; debug builds measure the wrong thing.

use crate::clock::SystemClock;
use crate::hub::store::Durability;
use crate::hub::{EmbeddedHub, HubOptions};
use crate::iothub::configuration::{Configuration, ConfigurationContent};
use crate::iothub::device::Device;
use crate::iothub::query::Condition;
use crate::iothub::value::Row;
use anyhow::Context;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Flags of `ringmaster hub bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Number of generated twins.
    #[arg(long, default_value_t = 100_000)]
    pub twins: usize,
    /// Number of configurations for the cycle figures.
    #[arg(long, default_value_t = 100)]
    pub configurations: usize,
    /// Persist to a SQLite file in this directory (the widening figure then includes the
    /// commit); in memory when omitted.
    #[arg(long)]
    pub store_dir: Option<std::path::PathBuf>,
    /// Twins the widening step adds to one configuration.
    #[arg(long, default_value_t = 100_000)]
    pub widen: usize,
}

const CONDITION: &str = "tags.environment='prod' AND properties.reported.model='4000x' AND tags.ring IN ['canary','early']";
const SQL: &str = "SELECT count(*) FROM twins WHERE json_extract(doc,'$.tags.environment')='prod' AND json_extract(doc,'$.properties.reported.model')='4000x' AND json_extract(doc,'$.tags.ring') IN ('canary','early')";

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A typical twin: tags for ring, model, region, a few reported properties, firmware.
fn twin_doc(i: usize) -> (Value, Value) {
    let ring = match i % 100 {
        0..=1 => "canary",
        2..=19 => "early",
        _ => "broad",
    };
    let model = if i.is_multiple_of(3) {
        "5000x"
    } else {
        "4000x"
    };
    let tags = json!({
        "environment": if i % 10 == 9 { "test" } else { "prod" },
        "ring": ring, "model": model, "region": format!("region-{}", i % 10),
        "site": {"building": format!("b{}", i % 50), "floor": i % 7}
    });
    let reported = json!({
        "model": model, "serial": format!("SN{i:08}"),
        "firmware": {"version": "2.3.0", "status": "Current"},
        "network": {"mtu": 1500, "dhcp": true}
    });
    (tags, reported)
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

/// Runs the benchmark and prints the figures.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- hub bench` for real figures"
        );
    }
    let n = args.twins;
    let clock = Arc::new(SystemClock);
    let options = HubOptions {
        max_configurations: args.configurations.max(1) + 1,
        durability: Durability::Normal,
    };
    let hub = match &args.store_dir {
        Some(dir) => {
            let p = dir.join(format!("bench-{}.db", std::process::id()));
            EmbeddedHub::open(&p, clock, options)
                .with_context(|| format!("opening {}", p.display()))?
        }
        None => EmbeddedHub::in_memory_with(clock, options),
    };
    println!(
        "ringmaster hub bench: {n} twins, {} configurations",
        args.configurations
    );

    let rss0 = rss_bytes();
    let (_, load_s) = time(|| -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(10_000);
        let mut reported = Vec::with_capacity(10_000);
        for i in 0..n {
            let (tags, rep) = twin_doc(i);
            let id = format!("dev-{i:07}");
            batch.push((Device::new(&id), Some(json!({"tags": tags}))));
            reported.push((id, rep));
            if batch.len() == 10_000 || i + 1 == n {
                hub.create_devices(std::mem::take(&mut batch))?;
                for r in hub.patch_reported_many(&std::mem::take(&mut reported))? {
                    r?;
                }
            }
        }
        hub.run_cycle()?;
        Ok(())
    });
    let rss1 = rss_bytes();
    println!(
        "load: {load_s:.2} s ({:.0} twins/s); resident memory {:.0} MiB for the twins, {:.0} B per twin",
        n as f64 / load_s,
        (rss1.saturating_sub(rss0)) as f64 / 1048576.0,
        (rss1.saturating_sub(rss0)) as f64 / n.max(1) as f64
    );

    // 1. Condition evaluation: engine vs SQLite json_extract over the same twins.
    let cond = Condition::parse(CONDITION).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runs = 3;
    let mut engine_best = f64::MAX;
    let mut matched = 0;
    for _ in 0..runs {
        let (m, s) = time(|| {
            hub.read(|st| {
                let mut n = 0;
                st.scan(Some(&cond), |_, _| n += 1);
                n
            })
        });
        matched = m;
        engine_best = engine_best.min(s);
    }
    let sqlite = rusqlite::Connection::open_in_memory()?;
    sqlite.execute_batch("CREATE TABLE twins (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")?;
    {
        let tx = sqlite.unchecked_transaction()?;
        {
            let mut ins = tx.prepare("INSERT INTO twins VALUES (?1, ?2)")?;
            hub.read(|st| -> anyhow::Result<()> {
                for s in st.slots() {
                    ins.execute(rusqlite::params![
                        s.device.device_id,
                        s.row().to_json().to_string()
                    ])?;
                }
                Ok(())
            })?;
        }
        tx.commit()?;
    }
    let mut sqlite_best = f64::MAX;
    let mut sql_matched = 0i64;
    for _ in 0..runs {
        let (m, s) = time(|| sqlite.query_row(SQL, [], |r| r.get::<_, i64>(0)));
        sql_matched = m?;
        sqlite_best = sqlite_best.min(s);
    }
    anyhow::ensure!(
        sql_matched as usize == matched,
        "engine matched {matched} twins but SQLite matched {sql_matched}"
    );
    println!(
        "three-clause condition ({matched} matches): engine {:.1} M twins/s, SQLite json_extract {:.2} M twins/s: {:.1}x",
        n as f64 / engine_best / 1e6,
        n as f64 / sqlite_best / 1e6,
        sqlite_best / engine_best
    );

    // 2. A cycle with many configurations when nothing changed.
    let regions = 10;
    let (_, setup_s) = time(|| -> anyhow::Result<()> {
        for c in 0..args.configurations {
            let cfg = Configuration {
                id: format!("cfg-{c:03}"),
                target_condition: format!(
                    "tags.region='region-{}' AND tags.ring='broad'",
                    c % regions
                ),
                priority: c as i32,
                content: ConfigurationContent {
                    device_content: Some(
                        json!({ format!("properties.desired.setting{}", c % 7): {"value": c} })
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            };
            hub.create_configuration(&cfg)?;
        }
        Ok(())
    });
    println!(
        "created {} configurations (each applied at once) in {setup_s:.2} s",
        args.configurations
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        let (r, s) = time(|| hub.run_cycle());
        r?;
        idle.push(s);
    }
    idle.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    println!(
        "idle cycle with {} configurations over {n} twins: median {:.3} ms, max {:.3} ms",
        args.configurations,
        idle[idle.len() / 2] * 1e3,
        idle[idle.len() - 1] * 1e3
    );

    // 3. One configuration widens by `widen` twins (persistence included with --store-dir).
    let widen = args.widen.min(n);
    let rollout = Configuration {
        id: "rollout".into(),
        target_condition: "deviceId = 'none'".into(),
        priority: 1000,
        content: ConfigurationContent {
            device_content: Some(
                json!({"properties.desired.firmware": {"version": "2.4.0"}})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut created = hub.create_configuration(&rollout)?;
    let last = format!("dev-{:07}", widen);
    created.target_condition = format!("deviceId < '{last}'");
    let (r, widen_s) = time(|| hub.update_configuration(&created, None));
    let widened = r?;
    println!(
        "widen one configuration by {} twins{}: {widen_s:.3} s",
        widened
            .system_metrics
            .results
            .get("appliedCount")
            .copied()
            .unwrap_or(0),
        if args.store_dir.is_some() {
            " (SQLite commit included)"
        } else {
            " (in memory)"
        }
    );
    println!(
        "peak resident memory: {:.0} MiB",
        rss_bytes() as f64 / 1048576.0
    );
    Ok(ExitCode::SUCCESS)
}
