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

/// The three-clause count of docs/design.md's bench table (issue 13's first row).
const COUNT_QUERY: &str = "SELECT COUNT() AS n FROM devices WHERE tags.env='prod' AND tags.ring IN ['canary','early'] AND properties.desired.firmware.version != '2.4.0'";
const COUNT_SQL: &str = "SELECT count(*) FROM twins WHERE json_extract(doc,'$.tags.env')='prod' AND json_extract(doc,'$.tags.ring') IN ('canary','early') AND json_extract(doc,'$.properties.desired.firmware.version') != '2.4.0'";
/// Sites per generated fleet: a configuration that targets 4 of them reaches 8% of the
/// twins (16,000 of 200,000).
const SITES: usize = 50;

/// `write()` bytes this process has issued so far (`wchar` of /proc/self/io): the WAL,
/// its checkpoints and the database file alike.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("wchar:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The fastest of `runs` timings of `f`, and its last result.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (T, f64) {
    let mut out = None;
    let mut best = f64::MAX;
    for _ in 0..runs.max(1) {
        let (r, s) = time(&mut f);
        best = best.min(s);
        out = Some(r);
    }
    (out.expect("at least one run"), best)
}

fn count_of(page: &crate::iothub::page::QueryPage) -> i64 {
    page.items
        .first()
        .and_then(|r| r["n"].as_i64())
        .unwrap_or(0)
}

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

/// A generated twin as issue 13 describes the fleet: tags env/ring/model/location
/// (region, site), desired firmware and network sections.
pub fn twin_doc(i: usize) -> Value {
    let ring = match i % 100 {
        0..=1 => "canary",
        2..=19 => "early",
        _ => "broad",
    };
    let model = ["4000x", "5000x", "6000x"][i % 3];
    json!({
        "tags": {
            "env": if i % 10 == 9 { "test" } else { "prod" },
            "ring": ring, "model": model,
            "location": {"region": format!("region-{}", i % 10), "site": format!("site-{:02}", (i / 7) % SITES)}
        },
        "properties": {"desired": {
            "firmware": {"version": if i.is_multiple_of(5) { "2.4.0" } else { "2.3.0" }, "url": format!("https://fw.example.com/{model}/2.3.0.bin"), "checksum": format!("{:016x}", i as u64 * 2654435761)},
            "network": {"mtu": 1500, "dhcp": true, "ntp": "pool.ntp.org"}
        }}
    })
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
        max_configurations: args.configurations.max(1) + 12,
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
    // 1. Bulk load, 100 twins per call (what `POST /devices` with a 100-device body does,
    // without HTTP).
    let (r, load_s) = time(|| -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(100);
        for i in 0..n {
            batch.push((Device::new(&format!("dev-{i:07}")), Some(twin_doc(i))));
            if batch.len() == 100 || i + 1 == n {
                hub.create_devices(std::mem::take(&mut batch))?;
            }
        }
        hub.run_cycle()?;
        Ok(())
    });
    r?;
    let rss1 = rss_bytes();
    println!(
        "bulk load, 100 twins per call{}: {load_s:.2} s, {:.0} twins/s",
        if args.store_dir.is_some() {
            " (store on)"
        } else {
            " (in memory)"
        },
        n as f64 / load_s,
    );
    println!(
        "resident memory for the twins: {:.0} MiB, {:.0} B per twin",
        (rss1.saturating_sub(rss0)) as f64 / 1048576.0,
        (rss1.saturating_sub(rss0)) as f64 / n.max(1) as f64
    );

    // The baseline: SQLite over the same twins as JSON text.
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

    // 2. The three-clause count, through the query API.
    let runs = 5;
    let (page, engine_s) = best(runs, || hub.query(COUNT_QUERY, None, None));
    let matched = count_of(&page?);
    let (m, sqlite_s) = best(runs, || {
        sqlite.query_row(COUNT_SQL, [], |r| r.get::<_, i64>(0))
    });
    let sql_matched = m?;
    anyhow::ensure!(
        sql_matched == matched,
        "the hub counted {matched} twins but SQLite counted {sql_matched}"
    );
    println!(
        "three-clause COUNT() ({matched} matches): hub {:.2} ms, SQLite json_extract {:.1} ms: hub {:.1}x faster",
        engine_s * 1e3,
        sqlite_s * 1e3,
        sqlite_s / engine_s
    );

    // 3. deviceId = '...'.
    let probe = format!("dev-{:07}", (n * 2 / 3).min(n.saturating_sub(1)));
    let q = format!("SELECT COUNT() AS n FROM devices WHERE deviceId = '{probe}'");
    let (page, key_s) = best(runs, || hub.query(&q, None, None));
    anyhow::ensure!(count_of(&page?) == 1, "{q} did not count 1");
    let (r, sql_key_s) = best(runs, || {
        sqlite.query_row("SELECT count(*) FROM twins WHERE id = ?1", [&probe], |r| {
            r.get::<_, i64>(0)
        })
    });
    r?;
    let (r, sql_scan_s) = best(runs.min(3), || {
        sqlite.query_row(
            "SELECT count(*) FROM twins WHERE json_extract(doc,'$.deviceId') = ?1",
            [&probe],
            |r| r.get::<_, i64>(0),
        )
    });
    r?;
    println!(
        "COUNT() WHERE deviceId = '{probe}': hub {:.3} ms; SQLite primary key {:.3} ms, SQLite json_extract scan {:.1} ms: hub {:.1}x faster than the scan",
        key_s * 1e3,
        sql_key_s * 1e3,
        sql_scan_s * 1e3,
        sql_scan_s / key_s
    );

    // 4. Configurations that each reach 4 of the 50 sites (8% of the twins): time until
    // targetedCount shows, and what the process wrote to disk for them.
    let mut create_s = Vec::new();
    let mut targeted = Vec::new();
    let mut content_bytes = 0usize;
    let w0 = written_bytes();
    for c in 0..10 {
        let sites: Vec<String> = (0..4)
            .map(|k| format!("'site-{:02}'", (c * 4 + k) % SITES))
            .collect();
        let cfg = Configuration {
            id: format!("site-rollout-{c}"),
            target_condition: format!("tags.location.site IN [{}]", sites.join(",")),
            priority: 10 + c as i32,
            content: ConfigurationContent {
                device_content: Some(
                    json!({"properties.desired.firmware": {"version": "2.5.0", "url": "https://fw.example.com/2.5.0.bin"}})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let (r, s) = time(|| -> anyhow::Result<i64> {
            hub.create_configuration(&cfg)?;
            let got = hub.get_configuration(&cfg.id)?;
            Ok(got
                .system_metrics
                .results
                .get("targetedCount")
                .copied()
                .unwrap_or(0))
        });
        targeted.push(r?);
        create_s.push(s);
        // What changed: the twins it reached, as JSON.
        let cond = Condition::parse(&cfg.target_condition).map_err(|e| anyhow::anyhow!("{e}"))?;
        content_bytes += hub.read(|st| {
            let mut b = 0;
            st.scan(Some(&cond), |_, s| b += s.row().to_json().to_string().len());
            b
        });
    }
    let written = written_bytes().saturating_sub(w0);
    println!(
        "create one configuration targeting {} twins, until targetedCount shows{}: median {:.1} ms (min {:.1}, max {:.1})",
        targeted.first().copied().unwrap_or(0),
        if args.store_dir.is_some() {
            " (store on)"
        } else {
            " (in memory)"
        },
        median(create_s.clone()) * 1e3,
        create_s.iter().cloned().fold(f64::MAX, f64::min) * 1e3,
        create_s.iter().cloned().fold(0.0, f64::max) * 1e3,
    );
    println!(
        "bytes written for those 10 configurations: {:.1} MB, for {:.1} MB of changed twins: {:.1}x the content",
        written as f64 / 1e6,
        content_bytes as f64 / 1e6,
        written as f64 / content_bytes.max(1) as f64
    );

    // 2. A cycle with many configurations when nothing changed.
    let regions = 10;
    let (_, setup_s) = time(|| -> anyhow::Result<()> {
        for c in 0..args.configurations {
            let cfg = Configuration {
                id: format!("cfg-{c:03}"),
                target_condition: format!(
                    "tags.location.region='region-{}' AND tags.ring='broad'",
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
